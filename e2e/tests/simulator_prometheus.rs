//! A real Prometheus (Debian's package) scraping the traffic simulator fed
//! with a fixed split: the metrics petrel's analysis would read must come
//! out as the simulated versions behave.
//!
//! Needs the `prometheus` binary; as root it is installed with apt-get if
//! missing, otherwise the test fails saying how to install it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use metrics_providers::{BuiltinMetric, Mesh, QueryVars, builtin_query, builtin_query_primary};
use petrel_e2e::prometheus::Prometheus;
use petrel_e2e::simulator::{
    App, AppCoords, Provider, Simulator, SimulatorConfig, Split, StaticSource, TrafficProfile, VersionBehaviour,
};

const PRIMARY_IMAGE: &str = "ghcr.io/stefanprodan/podinfo:6.0.0";
const CANARY_IMAGE: &str = "ghcr.io/stefanprodan/podinfo:6.0.1";
/// Rate window of the queries; with a 1 s scrape, 10 s holds ~10 samples.
const WINDOW: &str = "10s";
/// How long a query may take to settle: the window must fill first.
const SETTLE: Duration = Duration::from_secs(60);

fn work_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("petrel-e2e-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn app(namespace: &str, provider: Provider, split: Split, rps: f64) -> (App, Arc<StaticSource>) {
    let mut coords = AppCoords::new(namespace, "podinfo", provider);
    coords.ingress = Some("podinfo-ingress".into());
    let source = StaticSource::fixed(&coords, split, PRIMARY_IMAGE, CANARY_IMAGE, 3);
    let app = App::with_source(coords, source.clone())
        .profile(TrafficProfile { requests_per_second: rps, ..TrafficProfile::default() });
    (app, source)
}

async fn wait_near(prometheus: &Prometheus, query: &str, expected: f64, tolerance: f64) -> f64 {
    prometheus
        .wait_for_query(query, &format!("be {expected} ± {tolerance}"), SETTLE, |v| (v - expected).abs() <= tolerance)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_success_rate_and_latency_follow_the_canary_version() {
    let (app, source) = app("test", Provider::Istio, Split::weighted(50, 50), 200.0);
    let sim = Simulator::start(SimulatorConfig::default(), vec![app]).await.unwrap();
    sim.set_version("podinfo:6.0.0", VersionBehaviour::new(0.0, 100.0)).unwrap();
    sim.set_version("podinfo:6.0.1", VersionBehaviour::new(0.2, 500.0)).unwrap();
    let dir = work_dir("istio");
    let mut prometheus = Prometheus::start(&dir, &[sim.addr()]).await.unwrap();

    let sel = |workload: &str| {
        format!(r#"reporter="destination",destination_workload_namespace="test",destination_workload="{workload}""#)
    };
    let success_rate = |workload: &str| {
        format!(
            r#"sum(rate(istio_requests_total{{{s},response_code!~"5.*"}}[{WINDOW}])) / sum(rate(istio_requests_total{{{s}}}[{WINDOW}])) * 100"#,
            s = sel(workload)
        )
    };
    let p99 = |workload: &str| {
        format!(
            "histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket{{{}}}[{WINDOW}])) by (le))",
            sel(workload)
        )
    };
    let rate = |workload: &str| format!("sum(rate(istio_requests_total{{{}}}[{WINDOW}]))", sel(workload));

    let canary_sr = wait_near(&prometheus, &success_rate("podinfo"), 80.0, 2.0).await;
    let primary_sr = wait_near(&prometheus, &success_rate("podinfo-primary"), 100.0, 0.001).await;
    let canary_p99 = wait_near(&prometheus, &p99("podinfo"), 500.0, 25.0).await;
    let primary_p99 = wait_near(&prometheus, &p99("podinfo-primary"), 100.0, 5.0).await;
    // Half of 200 req/s each.
    wait_near(&prometheus, &rate("podinfo"), 100.0, 10.0).await;
    wait_near(&prometheus, &rate("podinfo-primary"), 100.0, 10.0).await;
    eprintln!("canary {canary_sr}% {canary_p99} ms, primary {primary_sr}% {primary_p99} ms");

    // Route everything back to the primary: the canary stops receiving.
    source.set_split(Split::weighted(100, 0));
    wait_near(&prometheus, &rate("podinfo"), 0.0, 0.001).await;
    wait_near(&prometheus, &rate("podinfo-primary"), 200.0, 15.0).await;

    // Prometheus going away and coming back on the same URL, same data.
    let url = prometheus.url();
    prometheus.stop().await.unwrap();
    assert!(prometheus.query("up").await.is_err(), "stopped Prometheus still answers");
    prometheus.start_again().await.unwrap();
    assert_eq!(prometheus.url(), url);
    wait_near(&prometheus, r#"sum(up{job="traffic-sim"})"#, 1.0, 0.0).await;

    // A fixed version: the canary's errors go away.
    source.set_split(Split::weighted(0, 100));
    sim.set_version("podinfo:6.0.1", VersionBehaviour::new(0.0, 50.0)).unwrap();
    wait_near(&prometheus, &success_rate("podinfo"), 100.0, 0.001).await;
    wait_near(&prometheus, &p99("podinfo"), 50.0, 2.5).await;

    drop(prometheus);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every provider's builtin queries, as petrel's metrics-providers crate
/// writes them, select the simulator's series and read the behaviour of
/// the canary and of the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_queries_of_every_provider_read_the_simulated_versions() {
    let meshes = [
        (Provider::Istio, Mesh::Istio),
        (Provider::Linkerd, Mesh::Linkerd),
        (Provider::Smi, Mesh::Smi),
        (Provider::Nginx, Mesh::Nginx),
        (Provider::Contour, Mesh::Contour),
        (Provider::Traefik, Mesh::Traefik),
        (Provider::GatewayApi, Mesh::GatewayApi),
        (Provider::Kubernetes, Mesh::Kubernetes),
        (Provider::LinkerdGatewayApi, Mesh::Linkerd),
        (Provider::Gloo, Mesh::Gloo),
        (Provider::Kuma, Mesh::Kuma),
        (Provider::Skipper, Mesh::Skipper),
    ];
    let apps: Vec<App> = meshes
        .iter()
        .map(|(provider, _)| app(&format!("ns-{provider}"), *provider, Split::weighted(60, 40), 100.0).0)
        .collect();
    let sim = Simulator::start(SimulatorConfig::default(), apps).await.unwrap();
    sim.set_version("podinfo:6.0.0", VersionBehaviour::new(0.0, 100.0)).unwrap();
    sim.set_version("podinfo:6.0.1", VersionBehaviour::new(0.1, 250.0)).unwrap();
    let dir = work_dir("builtin");
    let prometheus = Prometheus::start(&dir, &[sim.addr()]).await.unwrap();

    for (provider, mesh) in meshes {
        let vars = QueryVars {
            name: "podinfo".into(),
            namespace: format!("ns-{provider}"),
            target: "podinfo".into(),
            service: "podinfo".into(),
            ingress: Some("podinfo-ingress".into()),
            route: None,
            interval: WINDOW.into(),
            variables: BTreeMap::new(),
        };
        let canary_sr = builtin_query(mesh, BuiltinMetric::RequestSuccessRate, &vars).unwrap();
        let primary_sr = builtin_query_primary(mesh, BuiltinMetric::RequestSuccessRate, &vars).unwrap();
        let canary_duration = builtin_query(mesh, BuiltinMetric::RequestDuration, &vars).unwrap();
        let primary_duration = builtin_query_primary(mesh, BuiltinMetric::RequestDuration, &vars).unwrap();
        eprintln!("{provider}: {canary_sr}");
        let sr = wait_near(&prometheus, &canary_sr, 90.0, 2.0).await;
        wait_near(&prometheus, &primary_sr, 100.0, 0.001).await;
        let duration = wait_near(&prometheus, &canary_duration, 250.0, 12.5).await;
        wait_near(&prometheus, &primary_duration, 100.0, 5.0).await;
        eprintln!("{provider}: canary success {sr}%, duration {duration} ms");
    }
    drop(prometheus);
    let _ = std::fs::remove_dir_all(&dir);
}
