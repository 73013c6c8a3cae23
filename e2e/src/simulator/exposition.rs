//! Request statistics and their Prometheus text exposition, shaped like
//! each provider's own metrics so that petrel's builtin queries select them.
//!
//! Label values follow what the builtin PromQL of each mesh selects (see
//! `metrics-providers/src/builtin.rs`):
//! - istio: `istio_requests_total` / `istio_request_duration_milliseconds`
//!   with `reporter="destination"`, `destination_workload_namespace`,
//!   `destination_workload`, `response_code`;
//! - linkerd, smi: `response_total` / `response_latency_ms` with
//!   `namespace`, `deployment`, `direction="inbound"`, `classification`,
//!   `status_code`;
//! - nginx: `nginx_ingress_controller_requests` /
//!   `nginx_ingress_controller_response_duration_seconds` with `namespace`,
//!   `ingress` (the Canary's `ingressRef`), `canary` (the canary upstream,
//!   empty for the primary), `status`;
//! - contour: `envoy_cluster_upstream_rq` / `envoy_cluster_upstream_rq_time`
//!   with `envoy_cluster_name="<ns>_<service>-<side>_<port>"`,
//!   `envoy_response_code`;
//! - traefik: `traefik_service_request_duration_seconds` with
//!   `service="<ns>-<target>-<side>-<port>@kubernetescrd"`, `code`;
//! - every app, whatever the provider (gatewayapi and kubernetes use it):
//!   its own `http_request_duration_seconds` with `kubernetes_namespace`,
//!   `kubernetes_pod_name` (the real Pod names), `status`.
//!
//! Every request of a version takes exactly its configured latency, so the
//! mean is exact and a P99 from the histogram lands within one bucket of
//! it; the bucket bounds include the round values tests use (50, 100, 200,
//! 250, 500, 1000 ms …), for which the P99 is within 1% of the value.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode_registry;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::routes::Provider;
use super::split::Side;

/// Histogram upper bounds in microseconds: mantissas 1–9 per decade from
/// 1 ms to 10 s, so any latency lies within about 20% of a bound.
const MANTISSAS: [u64; 14] = [10, 12, 15, 20, 25, 30, 35, 40, 45, 50, 60, 70, 80, 90];

static BUCKET_BOUNDS_US: LazyLock<Vec<u64>> = LazyLock::new(|| {
    let mut bounds = vec![500];
    for decade in [100, 1_000, 10_000, 100_000, 1_000_000] {
        bounds.extend(MANTISSAS.iter().map(|m| m * decade));
    }
    bounds.push(100_000_000);
    bounds
});

fn bucket_bounds_us() -> &'static [u64] {
    &BUCKET_BOUNDS_US
}

/// A latency histogram (the last bucket is `+Inf`).
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Requests per bucket, not cumulative; one more than the bounds.
    per_bucket: Vec<u64>,
    /// Requests.
    pub count: u64,
    /// Sum of latencies in milliseconds.
    pub sum_ms: f64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { per_bucket: vec![0; bucket_bounds_us().len() + 1], count: 0, sum_ms: 0.0 }
    }
}

impl Histogram {
    /// Records `requests` requests that each took `latency_ms`.
    pub fn observe(&mut self, requests: u64, latency_ms: f64) {
        let latency_us = (latency_ms.max(0.0) * 1000.0).round() as u64;
        let bounds = bucket_bounds_us();
        let index = bounds.iter().position(|&b| latency_us <= b).unwrap_or(bounds.len());
        self.per_bucket[index] += requests;
        self.count += requests;
        self.sum_ms += requests as f64 * latency_ms.max(0.0);
    }

    fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.per_bucket.iter_mut().zip(&other.per_bucket) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum_ms += other.sum_ms;
    }
}

/// Where a group of requests was served and how it was answered.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SeriesKey {
    /// The side of the Canary.
    pub side: Side,
    /// Pod that served them.
    pub pod: String,
    /// HTTP status code.
    pub code: u16,
}

/// One app's identity as its metrics label it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppLabels {
    /// Namespace of the Canary.
    pub namespace: String,
    /// Target Deployment (`spec.targetRef.name`).
    pub target: String,
    /// Service name (`spec.service.name`, defaults to the target).
    pub service: String,
    /// Ingress name for NGINX (`spec.ingressRef.name`); defaults to the
    /// service name.
    pub ingress: Option<String>,
    /// ApisixRoute name for APISIX (`spec.routeRef.name`); defaults to the
    /// service name.
    pub route: Option<String>,
    /// Service port (`spec.service.port`).
    pub port: u16,
    /// Provider whose series to export.
    pub provider: Provider,
}

/// Counts of one app's requests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppStats {
    /// Latency histograms per (side, pod, code).
    pub series: BTreeMap<SeriesKey, Histogram>,
    /// Requests no pod served.
    pub unrouted: u64,
    /// Requests served per version (the image of the Deployment that served them):
    /// (all, 5xx). What a blast-radius measurement counts.
    pub by_version: BTreeMap<String, (u64, u64)>,
}

impl AppStats {
    /// Records `requests` requests, `errors` of them 5xx, served by version `image`.
    pub fn record_version(&mut self, image: &str, requests: u64, errors: u64) {
        if requests == 0 {
            return;
        }
        let counts = self.by_version.entry(image.to_owned()).or_default();
        counts.0 += requests;
        counts.1 += errors;
    }

    /// Records `requests` requests served by `pod` of `side`.
    pub fn record(&mut self, side: Side, pod: &str, code: u16, requests: u64, latency_ms: f64) {
        if requests == 0 {
            return;
        }
        self.series.entry(SeriesKey { side, pod: pod.to_owned(), code }).or_default().observe(requests, latency_ms);
    }

    /// Requests served by `side` in total, and of those with a 5xx code.
    pub fn totals(&self, side: Side) -> (u64, u64) {
        self.series
            .iter()
            .filter(|(k, _)| k.side == side)
            .fold((0, 0), |(all, errors), (k, h)| (all + h.count, errors + if k.code >= 500 { h.count } else { 0 }))
    }

    /// Histograms merged over pods, per (side, code).
    fn by_side_and_code(&self) -> BTreeMap<(Side, u16), Histogram> {
        let mut merged: BTreeMap<(Side, u16), Histogram> = BTreeMap::new();
        for (key, h) in &self.series {
            merged.entry((key.side, key.code)).or_default().merge(h);
        }
        merged
    }
}

/// One series of a family: its labels (in the order the real exporter writes them) and
/// its value.
#[derive(Debug)]
enum Series {
    Counter {
        labels: Vec<(&'static str, String)>,
        value: u64,
    },
    /// Buckets as prometheus-client takes them: (upper bound, requests in that bucket,
    /// not cumulative), the last bound `+Inf`.
    Histogram {
        labels: Vec<(&'static str, String)>,
        buckets: Vec<(f64, u64)>,
        sum: f64,
        count: u64,
    },
}

/// A metric family being assembled; families must be contiguous in the
/// text format, so samples of all apps are collected before writing.
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    series: Vec<Series>,
}

/// The families of one scrape, written by prometheus-client's text encoder (a
/// [`Collector`] of values counted elsewhere).
#[derive(Debug, Default)]
struct Exposition {
    families: Vec<Family>,
}

type Labels<'a> = [(&'static str, String)];

impl Exposition {
    fn family(&mut self, name: &'static str, kind: MetricType, help: &'static str) -> &mut Family {
        let index = match self.families.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                self.families.push(Family { name, help, kind, series: Vec::new() });
                self.families.len() - 1
            }
        };
        &mut self.families[index]
    }

    fn counter(&mut self, name: &'static str, help: &'static str, labels: &Labels<'_>, value: u64) {
        self.family(name, MetricType::Counter, help).series.push(Series::Counter { labels: labels.to_vec(), value });
    }

    /// A histogram family `name` in `unit_per_ms` units per millisecond
    /// (1 for ms, 0.001 for seconds).
    fn histogram(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &Labels<'_>,
        h: &Histogram,
        unit_per_ms: f64,
    ) {
        let bounds = bucket_bounds_us().iter().map(|us| without_float_noise(*us as f64 / 1000.0 * unit_per_ms));
        let buckets = bounds.chain([f64::INFINITY]).zip(h.per_bucket.iter().copied()).collect();
        let sum = without_float_noise(h.sum_ms * unit_per_ms);
        let series = Series::Histogram { labels: labels.to_vec(), buckets, sum, count: h.count };
        self.family(name, MetricType::Histogram, help).series.push(series);
    }

    /// The Prometheus text format (0.0.4, which Prometheus reads from the simulator's
    /// `/metrics`): OpenMetrics' text without its `# EOF` line.
    fn render(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        // Writing to a String cannot fail, nor can the collector.
        let _ = encode_registry(&mut out, &registry);
        out
    }
}

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        for family in &self.families {
            let mut metric = encoder.encode_descriptor(family.name, family.help, None, family.kind)?;
            for series in &family.series {
                match series {
                    // The simulated exporters' counters keep their own names, some without
                    // `_total` (`envoy_cluster_upstream_rq`, `apisix_http_status`), which
                    // the builtin queries select; prometheus-client's counter encoding
                    // would append `_total`, so the sample is written as it is named.
                    Series::Counter { labels, value } => metric.encode_family(labels)?.encode_gauge(value)?,
                    Series::Histogram { labels, buckets, sum, count } => {
                        metric.encode_family(labels)?.encode_histogram::<NoLabelSet>(*sum, *count, buckets, None)?
                    }
                }
            }
        }
        Ok(())
    }
}

/// Floats without float noise for values that are exact in decimal (bounds are
/// integer microseconds divided down).
fn without_float_noise(v: f64) -> f64 {
    (v * 1e9).round() / 1e9
}

fn s(v: impl Into<String>) -> String {
    v.into()
}

/// The exposition of every app's requests, plus the simulator's own
/// bookkeeping (`traffic_sim_*`).
pub fn render(apps: &[(&AppLabels, &AppStats)]) -> String {
    let mut out = Exposition::default();
    for (app, stats) in apps {
        render_app(&mut out, app, stats);
    }
    for (app, stats) in apps {
        let labels = [("namespace", s(&app.namespace)), ("target", s(&app.target))];
        out.counter(
            "traffic_sim_unrouted_requests_total",
            "Simulated requests that no pod served (no backend, or no ready pod).",
            &labels,
            stats.unrouted,
        );
    }
    out.render()
}

fn render_app(out: &mut Exposition, app: &AppLabels, stats: &AppStats) {
    let ns = &app.namespace;
    let merged = stats.by_side_and_code();
    match app.provider {
        Provider::Istio => {
            for ((side, code), h) in &merged {
                let labels = [
                    ("reporter", s("destination")),
                    ("destination_workload_namespace", s(ns)),
                    ("destination_workload", side.workload(&app.target)),
                    ("destination_service_name", format!("{}-{}", app.service, side.suffix())),
                    ("response_code", code.to_string()),
                ];
                out.counter("istio_requests_total", "Requests (simulated Istio standard metric).", &labels, h.count);
                out.histogram(
                    "istio_request_duration_milliseconds",
                    "Request duration in ms (simulated Istio standard metric).",
                    &labels,
                    h,
                    1.0,
                );
            }
        }
        Provider::Linkerd | Provider::Smi => linkerd(out, app, &merged),
        Provider::Nginx => {
            let ingress = app.ingress.as_deref().unwrap_or(&app.service);
            for ((side, code), h) in &merged {
                let (upstream, canary) = match side {
                    Side::Primary => (format!("{ns}-{}-{}", app.service, app.port), String::new()),
                    Side::Canary => {
                        let upstream = format!("{ns}-{}-canary-{}", app.service, app.port);
                        (upstream.clone(), upstream)
                    }
                };
                let labels = [
                    ("namespace", s(ns)),
                    ("ingress", s(ingress)),
                    ("service", upstream),
                    ("canary", canary),
                    ("status", code.to_string()),
                ];
                out.counter(
                    "nginx_ingress_controller_requests",
                    "Client requests (simulated ingress-nginx metric).",
                    &labels,
                    h.count,
                );
                out.histogram(
                    "nginx_ingress_controller_response_duration_seconds",
                    "Upstream response time in seconds (simulated ingress-nginx metric).",
                    &labels,
                    h,
                    0.001,
                );
            }
        }
        Provider::Contour => {
            envoy_clusters(out, "envoy_cluster_name", by_cluster(&merged, |side| contour_cluster(app, side)));
        }
        Provider::Gloo => {
            // The Upstream petrel generates per side, in the Canary's namespace.
            let cluster = |side: Side| format!("{ns}-{}-{}upstream-{}_{ns}", app.service, side.suffix(), app.port);
            envoy_clusters(out, "envoy_cluster_name", by_cluster(&merged, cluster));
        }
        Provider::Kuma => {
            // `kuma.io/service` of the side's Service port.
            let service = |side: Side| format!("{}-{}_{ns}_svc_{}", app.service, side.suffix(), app.port);
            envoy_clusters(out, "service", by_cluster(&merged, service));
        }
        Provider::Knative => {
            // One Envoy cluster per revision, `<ns>/<revision>`: a side's pods may belong to
            // different revisions over a run (the primary moves at promotion).
            let mut by_revision: BTreeMap<(String, u16), Histogram> = BTreeMap::new();
            for (key, h) in &stats.series {
                let cluster = format!("{ns}/{}", knative_revision_of_pod(&key.pod));
                by_revision.entry((cluster, key.code)).or_default().merge(h);
            }
            envoy_clusters(out, "envoy_cluster_name", by_revision);
        }
        Provider::Apisix => {
            // Every request takes the canary ApisixRoute (both backends are in it), whose
            // rule petrel keeps from the user's route (the e2e apps name it `main`).
            let route = format!("{ns}_{}-{}-canary_main", app.route.as_deref().unwrap_or(&app.service), app.service);
            let mut by_code: BTreeMap<u16, Histogram> = BTreeMap::new();
            for ((_, code), h) in &merged {
                by_code.entry(*code).or_default().merge(h);
            }
            let mut latency = Histogram::default();
            for (code, h) in &by_code {
                let labels = [("route", route.clone()), ("code", code.to_string()), ("type", s("request"))];
                out.counter(
                    "apisix_http_status",
                    "HTTP status codes per route (simulated APISIX metric).",
                    &labels,
                    h.count,
                );
                latency.merge(h);
            }
            out.histogram(
                "apisix_http_latency",
                "Request latency in ms per route (simulated APISIX metric).",
                &[("type", s("request")), ("route", route)],
                &latency,
                1.0,
            );
        }
        Provider::Skipper => {
            let ingress = app.ingress.as_deref().unwrap_or(&app.service);
            for ((side, code), h) in &merged {
                // Route ids of the canary Ingress, non-word characters as `_`.
                let route = format!(
                    "kube_{}__{}_canary__{}_example_com____{}_{}",
                    skipper_word(ns),
                    skipper_word(ingress),
                    skipper_word(&app.service),
                    skipper_word(&app.service),
                    side.suffix()
                );
                let labels = [("route", route), ("code", code.to_string())];
                out.histogram(
                    "skipper_serve_route_duration_seconds",
                    "Time to serve a route in seconds (simulated Skipper metric).",
                    &labels,
                    h,
                    0.001,
                );
            }
        }
        Provider::Traefik => {
            for ((side, code), h) in &merged {
                let labels = [
                    ("service", format!("{ns}-{}-{}-{}@kubernetescrd", app.target, side.suffix(), app.port)),
                    ("code", code.to_string()),
                    ("method", s("GET")),
                    ("protocol", s("http")),
                ];
                out.counter(
                    "traefik_service_requests_total",
                    "Requests per service (simulated Traefik metric).",
                    &labels,
                    h.count,
                );
                out.histogram(
                    "traefik_service_request_duration_seconds",
                    "Request duration per service in seconds (simulated Traefik metric).",
                    &labels,
                    h,
                    0.001,
                );
            }
        }
        Provider::LinkerdGatewayApi => linkerd(out, app, &merged),
        // Only the app's own metrics, below.
        Provider::GatewayApi | Provider::Kubernetes => {}
    }
    // The application's own metrics (podinfo's), per pod.
    for (key, h) in &stats.series {
        let labels = [
            ("kubernetes_namespace", s(ns)),
            ("kubernetes_pod_name", s(&key.pod)),
            ("method", s("GET")),
            ("path", s("/")),
            ("status", key.code.to_string()),
        ];
        out.histogram(
            "http_request_duration_seconds",
            "Request duration in seconds (the simulated application's own metric).",
            &labels,
            h,
            0.001,
        );
    }
}

/// Linkerd's proxy metrics (inbound side), for both of Linkerd's routing APIs.
fn linkerd(out: &mut Exposition, app: &AppLabels, merged: &BTreeMap<(Side, u16), Histogram>) {
    let ns = &app.namespace;
    let mut latency: BTreeMap<Side, Histogram> = BTreeMap::new();
    for ((side, code), h) in merged {
        let classification = if *code >= 500 { "failure" } else { "success" };
        let labels = [
            ("namespace", s(ns)),
            ("deployment", side.workload(&app.target)),
            ("direction", s("inbound")),
            ("classification", s(classification)),
            ("status_code", code.to_string()),
        ];
        out.counter("response_total", "Responses (simulated Linkerd proxy metric).", &labels, h.count);
        latency.entry(*side).or_default().merge(h);
    }
    for (side, h) in &latency {
        let labels = [("namespace", s(ns)), ("deployment", side.workload(&app.target)), ("direction", s("inbound"))];
        out.histogram(
            "response_latency_ms",
            "Response latency in ms (simulated Linkerd proxy metric).",
            &labels,
            h,
            1.0,
        );
    }
}

/// Histograms merged per (Envoy cluster name of the side, code).
fn by_cluster(
    merged: &BTreeMap<(Side, u16), Histogram>,
    cluster: impl Fn(Side) -> String,
) -> BTreeMap<(String, u16), Histogram> {
    merged.iter().map(|((side, code), h)| ((cluster(*side), *code), h.clone())).collect()
}

/// Envoy cluster statistics: requests by response code and the request time, per cluster,
/// the cluster named by label `key`.
fn envoy_clusters(out: &mut Exposition, key: &'static str, clusters: BTreeMap<(String, u16), Histogram>) {
    let mut latency: BTreeMap<String, Histogram> = BTreeMap::new();
    for ((cluster, code), h) in &clusters {
        let labels = [(key, cluster.clone()), ("envoy_response_code", code.to_string())];
        out.counter(
            "envoy_cluster_upstream_rq",
            "Upstream requests (simulated Envoy cluster statistic).",
            &labels,
            h.count,
        );
        latency.entry(cluster.clone()).or_default().merge(h);
    }
    for (cluster, h) in &latency {
        out.histogram(
            "envoy_cluster_upstream_rq_time",
            "Upstream request time in ms (simulated Envoy cluster statistic).",
            &[(key, cluster.clone())],
            h,
            1.0,
        );
    }
}

/// The Knative revision of a pod of its Deployment `<revision>-deployment`.
pub fn knative_revision_of_pod(pod: &str) -> &str {
    pod.split_once("-deployment-").map_or(pod, |(revision, _)| revision)
}

/// A name as Skipper writes it in route ids: every non-word character becomes `_`.
fn skipper_word(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

/// Envoy's stats name of the Contour cluster for `<ns>/<service>-<side>/<port>`.
fn contour_cluster(app: &AppLabels, side: Side) -> String {
    format!("{}_{}-{}_{}", app.namespace, app.service, side.suffix(), app.port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(provider: Provider) -> AppLabels {
        AppLabels {
            namespace: "test".into(),
            target: "podinfo".into(),
            service: "podinfo".into(),
            ingress: Some("web".into()),
            route: Some("web".into()),
            port: 9898,
            provider,
        }
    }

    fn stats() -> AppStats {
        let mut st = AppStats::default();
        st.record(Side::Primary, "podinfo-primary-5d8f7c9b4-abcde", 200, 90, 100.0);
        st.record(Side::Canary, "podinfo-7f9c8d6b5-xyz12", 200, 8, 500.0);
        st.record(Side::Canary, "podinfo-7f9c8d6b5-xyz12", 500, 2, 500.0);
        st
    }

    fn text(provider: Provider) -> String {
        let a = app(provider);
        let s = stats();
        render(&[(&a, &s)])
    }

    /// (upper bound in ms, `None` for +Inf; cumulative count).
    fn cumulative(h: &Histogram) -> Vec<(Option<f64>, u64)> {
        let bounds = bucket_bounds_us();
        let mut running = 0;
        h.per_bucket
            .iter()
            .enumerate()
            .map(|(i, n)| {
                running += n;
                (bounds.get(i).map(|us| *us as f64 / 1000.0), running)
            })
            .collect()
    }

    fn assert_has(text: &str, line: &str) {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_include_round_bounds() {
        let mut h = Histogram::default();
        h.observe(3, 100.0);
        h.observe(1, 250.0);
        let c = cumulative(&h);
        let at = |ms: f64| c.iter().find(|(b, _)| *b == Some(ms)).map(|(_, n)| *n);
        assert_eq!(at(90.0), Some(0));
        assert_eq!(at(100.0), Some(3));
        assert_eq!(at(200.0), Some(3));
        assert_eq!(at(250.0), Some(4));
        assert_eq!(c.last(), Some(&(None, 4)));
        assert_eq!(h.sum_ms, 550.0);
    }

    #[test]
    fn istio_series() {
        let t = text(Provider::Istio);
        assert_has(&t, "# TYPE istio_requests_total counter");
        assert_has(
            &t,
            r#"istio_requests_total{reporter="destination",destination_workload_namespace="test",destination_workload="podinfo",destination_service_name="podinfo-canary",response_code="500"} 2"#,
        );
        assert_has(
            &t,
            r#"istio_requests_total{reporter="destination",destination_workload_namespace="test",destination_workload="podinfo-primary",destination_service_name="podinfo-primary",response_code="200"} 90"#,
        );
        assert_has(
            &t,
            r#"istio_request_duration_milliseconds_bucket{le="500.0",reporter="destination",destination_workload_namespace="test",destination_workload="podinfo",destination_service_name="podinfo-canary",response_code="200"} 8"#,
        );
        assert_has(
            &t,
            r#"istio_request_duration_milliseconds_bucket{le="450.0",reporter="destination",destination_workload_namespace="test",destination_workload="podinfo",destination_service_name="podinfo-canary",response_code="200"} 0"#,
        );
        assert_has(
            &t,
            r#"istio_request_duration_milliseconds_sum{reporter="destination",destination_workload_namespace="test",destination_workload="podinfo",destination_service_name="podinfo-canary",response_code="200"} 4000.0"#,
        );
        // Families are contiguous: one TYPE line each.
        assert_eq!(t.matches("# TYPE istio_request_duration_milliseconds ").count(), 1);
    }

    #[test]
    fn linkerd_series() {
        let t = text(Provider::Linkerd);
        assert_has(
            &t,
            r#"response_total{namespace="test",deployment="podinfo",direction="inbound",classification="failure",status_code="500"} 2"#,
        );
        assert_has(
            &t,
            r#"response_total{namespace="test",deployment="podinfo-primary",direction="inbound",classification="success",status_code="200"} 90"#,
        );
        assert_has(
            &t,
            r#"response_latency_ms_bucket{le="500.0",namespace="test",deployment="podinfo",direction="inbound"} 10"#,
        );
    }

    #[test]
    fn nginx_series() {
        let t = text(Provider::Nginx);
        assert_has(
            &t,
            r#"nginx_ingress_controller_requests{namespace="test",ingress="web",service="test-podinfo-canary-9898",canary="test-podinfo-canary-9898",status="500"} 2"#,
        );
        assert_has(
            &t,
            r#"nginx_ingress_controller_requests{namespace="test",ingress="web",service="test-podinfo-9898",canary="",status="200"} 90"#,
        );
        assert_has(
            &t,
            r#"nginx_ingress_controller_response_duration_seconds_sum{namespace="test",ingress="web",service="test-podinfo-canary-9898",canary="test-podinfo-canary-9898",status="200"} 4.0"#,
        );
        assert_has(
            &t,
            r#"nginx_ingress_controller_response_duration_seconds_count{namespace="test",ingress="web",service="test-podinfo-9898",canary="",status="200"} 90"#,
        );
    }

    #[test]
    fn contour_series() {
        let t = text(Provider::Contour);
        assert_has(
            &t,
            r#"envoy_cluster_upstream_rq{envoy_cluster_name="test_podinfo-canary_9898",envoy_response_code="500"} 2"#,
        );
        assert_has(
            &t,
            r#"envoy_cluster_upstream_rq_time_bucket{le="100.0",envoy_cluster_name="test_podinfo-primary_9898"} 90"#,
        );
    }

    #[test]
    fn traefik_series() {
        let t = text(Provider::Traefik);
        assert_has(
            &t,
            r#"traefik_service_request_duration_seconds_count{service="test-podinfo-canary-9898@kubernetescrd",code="500",method="GET",protocol="http"} 2"#,
        );
        assert_has(
            &t,
            r#"traefik_service_request_duration_seconds_bucket{le="0.1",service="test-podinfo-primary-9898@kubernetescrd",code="200",method="GET",protocol="http"} 90"#,
        );
    }

    #[test]
    fn app_level_series_for_every_provider() {
        for provider in [Provider::GatewayApi, Provider::Kubernetes, Provider::Istio] {
            let t = text(provider);
            assert_has(
                &t,
                r#"http_request_duration_seconds_count{kubernetes_namespace="test",kubernetes_pod_name="podinfo-7f9c8d6b5-xyz12",method="GET",path="/",status="500"} 2"#,
            );
            assert_has(
                &t,
                r#"http_request_duration_seconds_bucket{le="0.1",kubernetes_namespace="test",kubernetes_pod_name="podinfo-primary-5d8f7c9b4-abcde",method="GET",path="/",status="200"} 90"#,
            );
            assert_has(
                &t,
                r#"http_request_duration_seconds_bucket{le="0.09",kubernetes_namespace="test",kubernetes_pod_name="podinfo-primary-5d8f7c9b4-abcde",method="GET",path="/",status="200"} 0"#,
            );
        }
        // The mesh series of other providers are absent.
        assert!(!text(Provider::GatewayApi).contains("istio_requests_total"));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut a = app(Provider::Kubernetes);
        a.namespace = "x\"y\\z\n".into();
        let t = render(&[(&a, &AppStats::default())]);
        assert_has(&t, r#"traffic_sim_unrouted_requests_total{namespace="x\"y\\z\n",target="podinfo"} 0"#);
    }

    #[test]
    fn each_family_has_its_help_and_type_and_counters_keep_their_names() {
        let t = text(Provider::Contour);
        assert_has(&t, "# HELP envoy_cluster_upstream_rq Upstream requests (simulated Envoy cluster statistic).");
        assert_has(&t, "# TYPE envoy_cluster_upstream_rq counter");
        assert_has(&t, "# TYPE envoy_cluster_upstream_rq_time histogram");
        assert!(!t.contains("envoy_cluster_upstream_rq_total"), "{t}");
        assert!(!t.contains("# EOF"), "{t}");
    }

    #[test]
    fn totals_count_5xx() {
        assert_eq!(stats().totals(Side::Canary), (10, 2));
        assert_eq!(stats().totals(Side::Primary), (90, 0));
    }
}
