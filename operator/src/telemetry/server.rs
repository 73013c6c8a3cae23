//! The health and metrics HTTP server: `/metrics`, `/livez`, `/readyz`.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use super::{Metrics, Readiness};

/// Content type of the OpenMetrics text format, which Prometheus negotiates.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    readiness: Readiness,
}

/// The routes of the server, for [`serve`] and for tests.
pub fn router(metrics: Arc<Metrics>, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(Shared { metrics, readiness })
}

async fn metrics_handler(State(shared): State<Shared>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], shared.metrics.render())
}

/// Alive while the process answers: a restart would not help anything else.
async fn livez() -> &'static str {
    "ok\n"
}

async fn readyz(State(shared): State<Shared>) -> (StatusCode, String) {
    if shared.readiness.is_standby() {
        return (StatusCode::OK, "standby: another replica holds the leader election lease\n".to_string());
    }
    match shared.readiness.not_ready_because() {
        None => (StatusCode::OK, "ok\n".to_string()),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

/// Errors of the health and metrics server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen for metrics and health checks on {addr}: {source}{hint}")]
    Bind {
        addr: String,
        /// What to do about it, when there is something obvious.
        hint: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the metrics and health server stopped: {0}")]
    Serve(#[source] std::io::Error),
}

/// Binds the listener (`--metrics-addr`); port 0 picks a free port.
pub async fn bind(addr: &str) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).await.map_err(|source| {
        let hint = if source.kind() == std::io::ErrorKind::AddrInUse {
            " (another process holds the port; pass --metrics-addr 127.0.0.1:0 to pick a free one, as tests that run several petrels do)"
        } else {
            ""
        };
        ServeError::Bind { addr: addr.to_string(), hint, source }
    })
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    axum::serve(listener, router(metrics, readiness)).with_graceful_shutdown(shutdown).await.map_err(ServeError::Serve)
}
