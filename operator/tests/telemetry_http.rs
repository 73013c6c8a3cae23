//! The health and metrics server over real HTTP on 127.0.0.1, and readiness following a
//! Canary cache.

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::reflector;
use kube::runtime::watcher;
use petrel::api::Canary;
use petrel::api::canary::{CanaryStatus, Phase};
use petrel::core::Provider;
use petrel::telemetry::{self, Metrics, OPENMETRICS_CONTENT_TYPE, Readiness};
use serde_json::json;

fn canary(name: &str) -> Canary {
    serde_json::from_value(json!({
        "apiVersion": "petrel.dev/v1alpha1",
        "kind": "Canary",
        "metadata": { "name": name, "namespace": "test" },
        "spec": {
            "targetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": name },
            "service": { "port": 9898 }
        }
    }))
    .expect("a valid Canary")
}

/// Polls `condition` every 10 ms for at most two seconds.
async fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}

#[tokio::test]
async fn livez_readyz_and_metrics_over_http() {
    let metrics = Arc::new(Metrics::new("9.9.9"));
    let readiness = Readiness::new();
    let listener = telemetry::bind("127.0.0.1:0").await.expect("bind on loopback");
    let base = format!("http://{}", listener.local_addr().expect("bound address"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(telemetry::serve(listener, metrics.clone(), readiness.clone(), async {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("an HTTP client");
    let get = |path: &str| http.get(format!("{base}{path}")).send();

    let live = get("/livez").await.expect("GET /livez");
    assert_eq!(live.status(), 200);

    let not_ready = get("/readyz").await.expect("GET /readyz");
    assert_eq!(not_ready.status(), 503);
    assert!(not_ready.text().await.expect("body").contains("not synced"));

    readiness.mark_ready();
    assert_eq!(get("/readyz").await.expect("GET /readyz").status(), 200);

    let previous = CanaryStatus { phase: Phase::Progressing, ..Default::default() };
    let next = CanaryStatus { phase: Phase::Progressing, canary_weight: 40, ..Default::default() };
    metrics.observe_canary(&canary("podinfo"), &previous, &next, Provider::Istio, None);
    let scrape = get("/metrics").await.expect("GET /metrics");
    assert_eq!(scrape.status(), 200);
    assert_eq!(scrape.headers().get("content-type").and_then(|v| v.to_str().ok()), Some(OPENMETRICS_CONTENT_TYPE));
    let body = scrape.text().await.expect("body");
    assert!(body.contains("petrel_info{version=\"9.9.9\"} 1\n"), "{body}");
    assert!(
        body.contains("petrel_canary_weight{namespace=\"test\",name=\"podinfo\",workload=\"canary\"} 40\n"),
        "{body}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");

    assert_eq!(get("/nothing").await.expect("GET /nothing").status(), 404);

    stop.send(()).expect("the server is running");
    server.await.expect("the server task").expect("a clean shutdown");
}

#[tokio::test]
async fn ready_after_the_canary_cache_syncs_and_deleted_canaries_are_swept() {
    let metrics = Arc::new(Metrics::new("9.9.9"));
    let readiness = Readiness::new();
    let status = CanaryStatus { phase: Phase::Progressing, canary_weight: 10, ..Default::default() };
    metrics.observe_canary(&canary("deleted"), &status, &status, Provider::Istio, None);
    metrics.observe_canary(&canary("kept"), &status, &status, Provider::Istio, None);

    let (store, mut writer) = reflector::store::<Canary>();
    let tracker = tokio::spawn(telemetry::track_canary_store(store.clone(), readiness.clone(), metrics.clone()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The controller waits on the same store after the tracker started; kube-runtime
    // wakes only the latest waiter, which must not leave petrel unready forever.
    let controller = tokio::spawn(async move { store.wait_until_ready().await.is_ok() });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(readiness.not_ready_because().is_some(), "ready before the cache listed anything");

    writer.apply_watcher_event(&watcher::Event::Init);
    writer.apply_watcher_event(&watcher::Event::InitApply(canary("kept")));
    writer.apply_watcher_event(&watcher::Event::InitDone);

    assert!(controller.await.expect("the controller's wait"), "the store never turned ready");
    assert!(eventually(|| readiness.not_ready_because().is_none()).await, "not ready after the cache synced");
    assert!(
        eventually(|| !metrics.render().contains("name=\"deleted\"")).await,
        "the deleted Canary's series are still exported"
    );
    assert!(metrics.render().contains("petrel_canary_status{namespace=\"test\",name=\"kept\"} 0\n"));
    tracker.abort();
}

#[tokio::test]
async fn a_taken_port_fails_with_what_to_do() {
    let taken = telemetry::bind("127.0.0.1:0").await.expect("bind on loopback");
    let addr = taken.local_addr().expect("bound address").to_string();
    let error = telemetry::bind(&addr).await.expect_err("the port is taken").to_string();
    assert!(error.contains(&format!("cannot listen for metrics and health checks on {addr}")), "{error}");
    assert!(error.contains("--metrics-addr 127.0.0.1:0"), "{error}");
}
