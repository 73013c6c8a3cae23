//! The simulator's HTTP endpoint: `/metrics` and the controls.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};

use super::{Shared, VersionBehaviour, lock};

pub(super) async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/apps", get(apps))
        .route("/versions", get(versions))
        .route("/versions/{*image}", put(set_version).delete(clear_version))
        .with_state(shared);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "traffic simulator endpoint stopped");
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], shared.metrics_text()).into_response()
}

async fn apps(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.snapshots()).into_response()
}

async fn versions(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(lock(&shared.versions).clone()).into_response()
}

/// The body is parsed here rather than by axum's `Json` extractor so that
/// a bad body gets a 400 with the reason, in plain text.
async fn set_version(State(shared): State<Arc<Shared>>, Path(image): Path<String>, body: String) -> Response {
    let behaviour: VersionBehaviour = match serde_json::from_str(&body) {
        Ok(b) => b,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("body must be {{\"errorRate\": 0.2, \"latencyMs\": 500}}: {e}\n"),
            )
                .into_response();
        }
    };
    match shared.set_version(image.trim_start_matches('/'), behaviour) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

async fn clear_version(State(shared): State<Arc<Shared>>, Path(image): Path<String>) -> StatusCode {
    match lock(&shared.versions).versions.remove(image.trim_start_matches('/')) {
        Some(_) => StatusCode::NO_CONTENT,
        None => StatusCode::NOT_FOUND,
    }
}
