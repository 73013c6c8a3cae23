//! The builtin metrics, `request-success-rate` and `request-duration`,
//! written in PromQL for each mesh provider petrel supports.
//!
//! Every query aggregates to a single value, as a metric check needs:
//! - `request-success-rate`: percent (0–100) of requests over `interval`
//!   that were not server errors (5xx, or Linkerd's `failure`
//!   classification);
//! - `request-duration`: milliseconds, the 99th percentile from the mesh's
//!   histogram, except for NGINX whose controller only exports a usable
//!   sum/count pair: there it is the mean.
//!
//! The selectors follow Flagger's observers, so a Flagger user's dashboards
//! and alerts line up. Where Flagger matches a whole workload name with a
//! regex, petrel matches it exactly (`=`), and every name put inside a regex
//! is regex-escaped, so a name containing `.` cannot match its neighbours.
//!
//! [`builtin_query`] selects the canary workload; [`builtin_query_primary`]
//! selects the primary (`<target>-primary`) with the same query shape, for
//! canary-vs-primary comparison and dashboards.

use std::fmt;
use std::str::FromStr;

use crate::template::QueryVars;

/// A mesh or ingress provider (`spec.provider` of a Canary) petrel has
/// builtin queries for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mesh {
    /// Gateway API: the application's own `http_request_duration_seconds`
    /// histogram, as for [`Mesh::Kubernetes`].
    GatewayApi,
    /// Plain Kubernetes Services (blue/green): the application's own
    /// `http_request_duration_seconds` histogram.
    Kubernetes,
    /// Istio's standard metrics, reported by the destination sidecar.
    Istio,
    /// Linkerd proxy metrics, inbound side.
    Linkerd,
    /// SMI TrafficSplit; metrics as for [`Mesh::Linkerd`].
    Smi,
    /// NGINX ingress controller.
    Nginx,
    /// Contour (Envoy cluster statistics).
    Contour,
    /// Traefik service metrics.
    Traefik,
    /// Apache APISIX's prometheus plugin, per route: the canary ApisixRoute carries both
    /// backends, so its series cover primary and canary requests together (as Flagger's).
    Apisix,
    /// Gloo Edge (Envoy cluster statistics of the generated Upstreams).
    Gloo,
    /// Skipper route metrics.
    Skipper,
    /// Kuma (Envoy cluster statistics, by `kuma.io/service`).
    Kuma,
    /// Knative Serving (Envoy cluster statistics per revision, `<namespace>/<revision>`).
    Knative,
}

impl Mesh {
    /// Every supported mesh.
    pub const ALL: [Mesh; 13] = [
        Self::GatewayApi,
        Self::Kubernetes,
        Self::Istio,
        Self::Linkerd,
        Self::Smi,
        Self::Nginx,
        Self::Contour,
        Self::Traefik,
        Self::Apisix,
        Self::Gloo,
        Self::Skipper,
        Self::Kuma,
        Self::Knative,
    ];

    /// The provider name as written in a Canary.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GatewayApi => "gatewayapi",
            Self::Kubernetes => "kubernetes",
            Self::Istio => "istio",
            Self::Linkerd => "linkerd",
            Self::Smi => "smi",
            Self::Nginx => "nginx",
            Self::Contour => "contour",
            Self::Traefik => "traefik",
            Self::Apisix => "apisix",
            Self::Gloo => "gloo",
            Self::Skipper => "skipper",
            Self::Kuma => "kuma",
            Self::Knative => "knative",
        }
    }
}

impl fmt::Display for Mesh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mesh {
    type Err = BuiltinError;

    /// Parses a Canary `spec.provider`. A version suffix as Flagger writes
    /// it (`gatewayapi:v1`, `smi:v1alpha3`) is accepted; unknown or
    /// unsupported providers are an error, never a fallback to another mesh.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let base = name.split_once(':').map_or(name, |(base, _version)| base);
        Self::ALL
            .into_iter()
            .find(|mesh| mesh.as_str() == base)
            .ok_or_else(|| BuiltinError::UnsupportedMesh(name.to_owned()))
    }
}

/// One of the builtin metrics a Canary can name without a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuiltinMetric {
    /// `request-success-rate`: percent of non-5xx requests, 0–100.
    RequestSuccessRate,
    /// `request-duration`: P99 request duration in milliseconds (mean for
    /// NGINX).
    RequestDuration,
}

impl BuiltinMetric {
    /// Looks up a builtin metric by its Canary `metrics[].name`.
    pub fn from_name(name: &str) -> Result<Self, BuiltinError> {
        match name {
            "request-success-rate" => Ok(Self::RequestSuccessRate),
            "request-duration" => Ok(Self::RequestDuration),
            other => Err(BuiltinError::UnknownMetric(other.to_owned())),
        }
    }

    /// The name used in a Canary's `metrics[].name`.
    pub fn name(self) -> &'static str {
        match self {
            Self::RequestSuccessRate => "request-success-rate",
            Self::RequestDuration => "request-duration",
        }
    }

    /// Unit of the query's result, for messages and dashboards.
    pub fn unit(self) -> &'static str {
        match self {
            Self::RequestSuccessRate => "%",
            Self::RequestDuration => "ms",
        }
    }
}

impl fmt::Display for BuiltinMetric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why no builtin query could be produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuiltinError {
    /// The Canary's provider has no builtin queries in petrel.
    #[error(
        "provider {0:?} has no builtin metrics in petrel; supported: gatewayapi, kubernetes, istio, linkerd, smi, nginx, contour, traefik, apisix, gloo, skipper, kuma, knative (use a MetricTemplate instead)"
    )]
    UnsupportedMesh(String),
    /// The metric name is not a builtin one.
    #[error(
        "{0:?} is not a builtin metric (request-success-rate, request-duration); reference a MetricTemplate with templateRef instead"
    )]
    UnknownMetric(String),
    /// The mesh's metrics do not tell the primary's requests from the canary's.
    #[error(
        "builtin {metric} for {mesh} cannot select the primary: {mesh}'s metrics do not tell primary from canary requests (use a MetricTemplate for a comparison)"
    )]
    NoPrimarySeries {
        /// The mesh.
        mesh: Mesh,
        /// The metric.
        metric: BuiltinMetric,
    },
    /// The mesh's query needs a value the Canary does not set.
    #[error("builtin {metric} for {mesh} needs {needs}")]
    MissingVariable {
        /// The mesh.
        mesh: Mesh,
        /// The metric.
        metric: BuiltinMetric,
        /// What is missing, e.g. `spec.ingressRef (ingress)`.
        needs: &'static str,
    },
}

/// Which side of the release a query selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    Canary,
    Primary,
}

impl Workload {
    /// Suffix of generated object names for this side.
    fn suffix(self) -> &'static str {
        match self {
            Self::Canary => "canary",
            Self::Primary => "primary",
        }
    }

    /// The workload (Deployment) name for this side.
    fn workload_name(self, target: &str) -> String {
        match self {
            Self::Canary => target.to_owned(),
            Self::Primary => format!("{target}-primary"),
        }
    }
}

/// The builtin `metric` query for the canary workload of a Canary using
/// `mesh`, with `vars.interval` as the rate window.
pub fn builtin_query(mesh: Mesh, metric: BuiltinMetric, vars: &QueryVars) -> Result<String, BuiltinError> {
    query_for(mesh, metric, vars, Workload::Canary)
}

/// The same query as [`builtin_query`], selecting the primary workload
/// (`<target>-primary`, `<service>-primary`, or NGINX's non-canary
/// traffic), so canary and primary can be compared side by side.
pub fn builtin_query_primary(mesh: Mesh, metric: BuiltinMetric, vars: &QueryVars) -> Result<String, BuiltinError> {
    query_for(mesh, metric, vars, Workload::Primary)
}

/// How a mesh's requests are counted and timed.
struct MeshSeries<'a> {
    /// Label matchers selecting the workload's requests.
    selector: String,
    /// Counter (or histogram `_count`) of requests.
    requests: &'a str,
    /// Extra matcher keeping only successful requests.
    success: &'a str,
    duration: Duration<'a>,
}

enum Duration<'a> {
    /// A histogram's `_bucket` series; `to_ms` converts its unit.
    Histogram { bucket: &'a str, to_ms: &'a str },
    /// Only `_sum` and `_count` exist: the mean.
    Mean { sum: &'a str, count: &'a str, to_ms: &'a str },
}

fn query_for(mesh: Mesh, metric: BuiltinMetric, vars: &QueryVars, workload: Workload) -> Result<String, BuiltinError> {
    let ns = &vars.namespace;
    let route =
        |needs: &'static str| vars.route.as_deref().ok_or(BuiltinError::MissingVariable { mesh, metric, needs });
    let series = match mesh {
        Mesh::GatewayApi | Mesh::Kubernetes => MeshSeries {
            // Pods of Deployment `t` are `t-<rs hash>-<pod hash>`; the single
            // optional group keeps `t-primary-<rs>-<pod>` out of `t`'s match.
            selector: format!(
                "kubernetes_namespace=\"{}\",kubernetes_pod_name=~\"{}\"",
                label(ns),
                label(&format!("{}-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)", regex_quote(&workload.workload_name(&vars.target))))
            ),
            requests: "http_request_duration_seconds_count",
            success: "status!~\"5.*\"",
            duration: Duration::Histogram { bucket: "http_request_duration_seconds_bucket", to_ms: " * 1000" },
        },
        Mesh::Istio => MeshSeries {
            selector: format!(
                "reporter=\"destination\",destination_workload_namespace=\"{}\",destination_workload=\"{}\"",
                label(ns),
                label(&workload.workload_name(&vars.target))
            ),
            requests: "istio_requests_total",
            success: "response_code!~\"5.*\"",
            duration: Duration::Histogram { bucket: "istio_request_duration_milliseconds_bucket", to_ms: "" },
        },
        Mesh::Linkerd | Mesh::Smi => MeshSeries {
            selector: format!(
                "namespace=\"{}\",deployment=\"{}\",direction=\"inbound\"",
                label(ns),
                label(&workload.workload_name(&vars.target))
            ),
            requests: "response_total",
            success: "classification!=\"failure\"",
            duration: Duration::Histogram { bucket: "response_latency_ms_bucket", to_ms: "" },
        },
        Mesh::Nginx => {
            let ingress = vars.ingress.as_deref().ok_or(BuiltinError::MissingVariable {
                mesh,
                metric,
                needs: "spec.ingressRef (the ingress name)",
            })?;
            // The controller labels requests it sent to the canary backend
            // with `canary`; the rest went to the primary.
            let side = match workload {
                Workload::Canary => "canary!=\"\"",
                Workload::Primary => "canary=\"\"",
            };
            MeshSeries {
                selector: format!("namespace=\"{}\",ingress=\"{}\",{side}", label(ns), label(ingress)),
                requests: "nginx_ingress_controller_requests",
                success: "status!~\"5.*\"",
                duration: Duration::Mean {
                    sum: "nginx_ingress_controller_response_duration_seconds_sum",
                    count: "nginx_ingress_controller_response_duration_seconds_count",
                    to_ms: " * 1000",
                },
            }
        }
        Mesh::Contour => MeshSeries {
            // Envoy cluster `<ns>/<svc>-canary/<port>/<hash>` in stats form.
            selector: format!(
                "envoy_cluster_name=~\"{}\"",
                label(&format!(
                    "{}_{}-{}_[0-9a-zA-Z-]+",
                    regex_quote(ns),
                    regex_quote(&vars.service),
                    workload.suffix()
                ))
            ),
            requests: "envoy_cluster_upstream_rq",
            success: "envoy_response_code!~\"5.*\"",
            duration: Duration::Histogram { bucket: "envoy_cluster_upstream_rq_time_bucket", to_ms: "" },
        },
        Mesh::Traefik => MeshSeries {
            // Traefik service `<ns>-<target>-canary-<port>@kubernetescrd`.
            selector: format!(
                "service=~\"{}\"",
                label(&format!(
                    "{}-{}-{}-[0-9a-zA-Z-]+@kubernetescrd",
                    regex_quote(ns),
                    regex_quote(&vars.target),
                    workload.suffix()
                ))
            ),
            requests: "traefik_service_request_duration_seconds_count",
            success: "code!~\"5..\"",
            duration: Duration::Histogram {
                bucket: "traefik_service_request_duration_seconds_bucket",
                to_ms: " * 1000",
            },
        },
        Mesh::Apisix => {
            if workload == Workload::Primary {
                return Err(BuiltinError::NoPrimarySeries { mesh, metric });
            }
            // APISIX names a route `<ns>_<ApisixRoute>_<http rule>`; petrel's canary
            // ApisixRoute is `<routeRef>-<service>-canary`.
            let apisix_route = format!("{}-{}-canary", route("spec.routeRef (the ApisixRoute name)")?, vars.service);
            MeshSeries {
                selector: format!(
                    "route=~\"{}\"",
                    label(&format!("{}_{}_.+", regex_quote(ns), regex_quote(&apisix_route)))
                ),
                requests: "apisix_http_status",
                success: "code!~\"5..\"",
                duration: Duration::Histogram { bucket: "apisix_http_latency_bucket", to_ms: "" },
            }
        }
        Mesh::Gloo => MeshSeries {
            // Envoy cluster `<upstream>_<upstream namespace>` of the generated Upstream
            // `<ns>-<service>-<side>upstream-<port>` in the Canary's namespace.
            selector: format!(
                "envoy_cluster_name=~\"{}\"",
                label(&format!(
                    "{ns}-{svc}-{side}upstream-[0-9]+_{ns}",
                    ns = regex_quote(ns),
                    svc = regex_quote(&vars.service),
                    side = workload.suffix()
                ))
            ),
            requests: "envoy_cluster_upstream_rq",
            success: "envoy_response_code!~\"5.*\"",
            duration: Duration::Histogram { bucket: "envoy_cluster_upstream_rq_time_bucket", to_ms: "" },
        },
        Mesh::Skipper => {
            // Skipper's route ids replace every non-word character with `_`:
            // `kube_<ns>__<ingress>-canary__<host>__<path>__<service>-<side>`.
            let ingress = vars.ingress.as_deref().ok_or(BuiltinError::MissingVariable {
                mesh,
                metric,
                needs: "spec.ingressRef (the ingress name)",
            })?;
            let route_id = format!(
                "kube(ew)?_{}__{}_canary__.*__{}_{}(_[0-9]+)?",
                regex_quote(&skipper_word(ns)),
                regex_quote(&skipper_word(ingress)),
                regex_quote(&skipper_word(&vars.service)),
                workload.suffix()
            );
            MeshSeries {
                selector: format!("route=~\"{}\"", label(&route_id)),
                requests: "skipper_serve_route_duration_seconds_count",
                success: "code!~\"5..\"",
                duration: Duration::Mean {
                    sum: "skipper_serve_route_duration_seconds_sum",
                    count: "skipper_serve_route_duration_seconds_count",
                    to_ms: " * 1000",
                },
            }
        }
        Mesh::Kuma => MeshSeries {
            // `kuma.io/service` of a Kubernetes Service: `<name>_<namespace>_svc_<port>`.
            selector: format!(
                "service=~\"{}\"",
                label(&format!("{}-{}_{}_svc_[0-9]+", regex_quote(&vars.service), workload.suffix(), regex_quote(ns)))
            ),
            requests: "envoy_cluster_upstream_rq",
            success: "envoy_response_code!~\"5.*\"",
            duration: Duration::Histogram { bucket: "envoy_cluster_upstream_rq_time_bucket", to_ms: "" },
        },
        Mesh::Knative => {
            // The revision under analysis (or, for the primary query, the primary revision)
            // comes in `route`: Knative's Envoy clusters are `<namespace>/<revision>`.
            let revision = route("the Knative revision (status.lastAppliedSpec)")?;
            MeshSeries {
                selector: format!("envoy_cluster_name=\"{}\"", label(&format!("{ns}/{revision}"))),
                requests: "envoy_cluster_upstream_rq",
                success: "envoy_response_code!~\"5.*\"",
                duration: Duration::Histogram { bucket: "envoy_cluster_upstream_rq_time_bucket", to_ms: "" },
            }
        }
    };
    Ok(render(&series, metric, &vars.interval))
}

fn render(series: &MeshSeries<'_>, metric: BuiltinMetric, interval: &str) -> String {
    let sel = &series.selector;
    match metric {
        BuiltinMetric::RequestSuccessRate => format!(
            "sum(rate({req}{{{sel},{ok}}}[{interval}])) / sum(rate({req}{{{sel}}}[{interval}])) * 100",
            req = series.requests,
            ok = series.success,
        ),
        BuiltinMetric::RequestDuration => match &series.duration {
            Duration::Histogram { bucket, to_ms } => {
                format!("histogram_quantile(0.99, sum(rate({bucket}{{{sel}}}[{interval}])) by (le)){to_ms}")
            }
            Duration::Mean { sum, count, to_ms } => {
                format!("sum(rate({sum}{{{sel}}}[{interval}])) / sum(rate({count}{{{sel}}}[{interval}])){to_ms}")
            }
        },
    }
}

/// A name as Skipper writes it in route ids: every non-word character becomes `_`.
fn skipper_word(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

/// Escapes a value for a double-quoted PromQL string. Kubernetes names
/// cannot contain `"` or `\`, but the query must stay well-formed whatever
/// it is given.
fn label(value: &str) -> String {
    crate::template::escape_promql_string(value, '"')
}

/// Escapes regex metacharacters (RE2 syntax, as Prometheus uses) so a name
/// matches only itself inside a regex matcher.
fn regex_quote(value: &str) -> String {
    value.chars().fold(String::new(), |mut out, c| {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn vars() -> QueryVars {
        QueryVars {
            name: "podinfo".into(),
            namespace: "test".into(),
            target: "podinfo".into(),
            service: "podinfo".into(),
            ingress: Some("podinfo".into()),
            route: Some("podinfo".into()),
            interval: "1m".into(),
            variables: BTreeMap::new(),
        }
    }

    fn q(mesh: Mesh, metric: BuiltinMetric) -> String {
        builtin_query(mesh, metric, &vars()).unwrap()
    }

    fn qp(mesh: Mesh, metric: BuiltinMetric) -> String {
        builtin_query_primary(mesh, metric, &vars()).unwrap()
    }

    use BuiltinMetric::{RequestDuration as Dur, RequestSuccessRate as Sr};

    #[test]
    fn kubernetes_and_gatewayapi_golden() {
        let sr = r#"sum(rate(http_request_duration_seconds_count{kubernetes_namespace="test",kubernetes_pod_name=~"podinfo-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)",status!~"5.*"}[1m])) / sum(rate(http_request_duration_seconds_count{kubernetes_namespace="test",kubernetes_pod_name=~"podinfo-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)"}[1m])) * 100"#;
        let dur = r#"histogram_quantile(0.99, sum(rate(http_request_duration_seconds_bucket{kubernetes_namespace="test",kubernetes_pod_name=~"podinfo-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)"}[1m])) by (le)) * 1000"#;
        for mesh in [Mesh::Kubernetes, Mesh::GatewayApi] {
            assert_eq!(q(mesh, Sr), sr);
            assert_eq!(q(mesh, Dur), dur);
        }
        assert_eq!(
            qp(Mesh::Kubernetes, Dur),
            r#"histogram_quantile(0.99, sum(rate(http_request_duration_seconds_bucket{kubernetes_namespace="test",kubernetes_pod_name=~"podinfo-primary-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)"}[1m])) by (le)) * 1000"#
        );
    }

    #[test]
    fn istio_golden() {
        assert_eq!(
            q(Mesh::Istio, Sr),
            r#"sum(rate(istio_requests_total{reporter="destination",destination_workload_namespace="test",destination_workload="podinfo",response_code!~"5.*"}[1m])) / sum(rate(istio_requests_total{reporter="destination",destination_workload_namespace="test",destination_workload="podinfo"}[1m])) * 100"#
        );
        assert_eq!(
            q(Mesh::Istio, Dur),
            r#"histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket{reporter="destination",destination_workload_namespace="test",destination_workload="podinfo"}[1m])) by (le))"#
        );
        assert_eq!(
            qp(Mesh::Istio, Sr),
            r#"sum(rate(istio_requests_total{reporter="destination",destination_workload_namespace="test",destination_workload="podinfo-primary",response_code!~"5.*"}[1m])) / sum(rate(istio_requests_total{reporter="destination",destination_workload_namespace="test",destination_workload="podinfo-primary"}[1m])) * 100"#
        );
    }

    #[test]
    fn linkerd_and_smi_golden() {
        let sr = r#"sum(rate(response_total{namespace="test",deployment="podinfo",direction="inbound",classification!="failure"}[1m])) / sum(rate(response_total{namespace="test",deployment="podinfo",direction="inbound"}[1m])) * 100"#;
        let dur = r#"histogram_quantile(0.99, sum(rate(response_latency_ms_bucket{namespace="test",deployment="podinfo",direction="inbound"}[1m])) by (le))"#;
        for mesh in [Mesh::Linkerd, Mesh::Smi] {
            assert_eq!(q(mesh, Sr), sr);
            assert_eq!(q(mesh, Dur), dur);
        }
        assert_eq!(
            qp(Mesh::Linkerd, Dur),
            r#"histogram_quantile(0.99, sum(rate(response_latency_ms_bucket{namespace="test",deployment="podinfo-primary",direction="inbound"}[1m])) by (le))"#
        );
    }

    #[test]
    fn nginx_golden() {
        assert_eq!(
            q(Mesh::Nginx, Sr),
            r#"sum(rate(nginx_ingress_controller_requests{namespace="test",ingress="podinfo",canary!="",status!~"5.*"}[1m])) / sum(rate(nginx_ingress_controller_requests{namespace="test",ingress="podinfo",canary!=""}[1m])) * 100"#
        );
        assert_eq!(
            q(Mesh::Nginx, Dur),
            r#"sum(rate(nginx_ingress_controller_response_duration_seconds_sum{namespace="test",ingress="podinfo",canary!=""}[1m])) / sum(rate(nginx_ingress_controller_response_duration_seconds_count{namespace="test",ingress="podinfo",canary!=""}[1m])) * 1000"#
        );
        assert_eq!(
            qp(Mesh::Nginx, Sr),
            r#"sum(rate(nginx_ingress_controller_requests{namespace="test",ingress="podinfo",canary="",status!~"5.*"}[1m])) / sum(rate(nginx_ingress_controller_requests{namespace="test",ingress="podinfo",canary=""}[1m])) * 100"#
        );
    }

    #[test]
    fn nginx_without_ingress_is_an_error() {
        let mut v = vars();
        v.ingress = None;
        let err = builtin_query(Mesh::Nginx, Sr, &v).unwrap_err();
        assert!(matches!(err, BuiltinError::MissingVariable { .. }));
        assert!(err.to_string().contains("ingressRef"));
    }

    #[test]
    fn contour_golden() {
        assert_eq!(
            q(Mesh::Contour, Sr),
            r#"sum(rate(envoy_cluster_upstream_rq{envoy_cluster_name=~"test_podinfo-canary_[0-9a-zA-Z-]+",envoy_response_code!~"5.*"}[1m])) / sum(rate(envoy_cluster_upstream_rq{envoy_cluster_name=~"test_podinfo-canary_[0-9a-zA-Z-]+"}[1m])) * 100"#
        );
        assert_eq!(
            q(Mesh::Contour, Dur),
            r#"histogram_quantile(0.99, sum(rate(envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=~"test_podinfo-canary_[0-9a-zA-Z-]+"}[1m])) by (le))"#
        );
        assert_eq!(
            qp(Mesh::Contour, Dur),
            r#"histogram_quantile(0.99, sum(rate(envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=~"test_podinfo-primary_[0-9a-zA-Z-]+"}[1m])) by (le))"#
        );
    }

    #[test]
    fn traefik_golden() {
        assert_eq!(
            q(Mesh::Traefik, Sr),
            r#"sum(rate(traefik_service_request_duration_seconds_count{service=~"test-podinfo-canary-[0-9a-zA-Z-]+@kubernetescrd",code!~"5.."}[1m])) / sum(rate(traefik_service_request_duration_seconds_count{service=~"test-podinfo-canary-[0-9a-zA-Z-]+@kubernetescrd"}[1m])) * 100"#
        );
        assert_eq!(
            q(Mesh::Traefik, Dur),
            r#"histogram_quantile(0.99, sum(rate(traefik_service_request_duration_seconds_bucket{service=~"test-podinfo-canary-[0-9a-zA-Z-]+@kubernetescrd"}[1m])) by (le)) * 1000"#
        );
        assert_eq!(
            qp(Mesh::Traefik, Sr),
            r#"sum(rate(traefik_service_request_duration_seconds_count{service=~"test-podinfo-primary-[0-9a-zA-Z-]+@kubernetescrd",code!~"5.."}[1m])) / sum(rate(traefik_service_request_duration_seconds_count{service=~"test-podinfo-primary-[0-9a-zA-Z-]+@kubernetescrd"}[1m])) * 100"#
        );
    }

    #[test]
    fn apisix_golden() {
        assert_eq!(
            q(Mesh::Apisix, Sr),
            r#"sum(rate(apisix_http_status{route=~"test_podinfo-podinfo-canary_.+",code!~"5.."}[1m])) / sum(rate(apisix_http_status{route=~"test_podinfo-podinfo-canary_.+"}[1m])) * 100"#
        );
        assert_eq!(
            q(Mesh::Apisix, Dur),
            r#"histogram_quantile(0.99, sum(rate(apisix_http_latency_bucket{route=~"test_podinfo-podinfo-canary_.+"}[1m])) by (le))"#
        );
        let err = builtin_query_primary(Mesh::Apisix, Sr, &vars()).unwrap_err();
        assert!(matches!(err, BuiltinError::NoPrimarySeries { .. }), "{err}");
        let mut v = vars();
        v.route = None;
        assert!(builtin_query(Mesh::Apisix, Sr, &v).unwrap_err().to_string().contains("routeRef"));
    }

    #[test]
    fn gloo_golden() {
        assert_eq!(
            q(Mesh::Gloo, Sr),
            r#"sum(rate(envoy_cluster_upstream_rq{envoy_cluster_name=~"test-podinfo-canaryupstream-[0-9]+_test",envoy_response_code!~"5.*"}[1m])) / sum(rate(envoy_cluster_upstream_rq{envoy_cluster_name=~"test-podinfo-canaryupstream-[0-9]+_test"}[1m])) * 100"#
        );
        assert_eq!(
            qp(Mesh::Gloo, Dur),
            r#"histogram_quantile(0.99, sum(rate(envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=~"test-podinfo-primaryupstream-[0-9]+_test"}[1m])) by (le))"#
        );
    }

    #[test]
    fn skipper_golden() {
        assert_eq!(
            q(Mesh::Skipper, Sr),
            r#"sum(rate(skipper_serve_route_duration_seconds_count{route=~"kube(ew)?_test__podinfo_canary__.*__podinfo_canary(_[0-9]+)?",code!~"5.."}[1m])) / sum(rate(skipper_serve_route_duration_seconds_count{route=~"kube(ew)?_test__podinfo_canary__.*__podinfo_canary(_[0-9]+)?"}[1m])) * 100"#
        );
        assert_eq!(
            qp(Mesh::Skipper, Dur),
            r#"sum(rate(skipper_serve_route_duration_seconds_sum{route=~"kube(ew)?_test__podinfo_canary__.*__podinfo_primary(_[0-9]+)?"}[1m])) / sum(rate(skipper_serve_route_duration_seconds_count{route=~"kube(ew)?_test__podinfo_canary__.*__podinfo_primary(_[0-9]+)?"}[1m])) * 1000"#
        );
        let mut v = vars();
        v.namespace = "team-a".into();
        assert!(builtin_query(Mesh::Skipper, Sr, &v).unwrap().contains("kube(ew)?_team_a__"));
    }

    #[test]
    fn kuma_golden() {
        assert_eq!(
            q(Mesh::Kuma, Sr),
            r#"sum(rate(envoy_cluster_upstream_rq{service=~"podinfo-canary_test_svc_[0-9]+",envoy_response_code!~"5.*"}[1m])) / sum(rate(envoy_cluster_upstream_rq{service=~"podinfo-canary_test_svc_[0-9]+"}[1m])) * 100"#
        );
        assert_eq!(
            qp(Mesh::Kuma, Dur),
            r#"histogram_quantile(0.99, sum(rate(envoy_cluster_upstream_rq_time_bucket{service=~"podinfo-primary_test_svc_[0-9]+"}[1m])) by (le))"#
        );
    }

    #[test]
    fn knative_golden_selects_the_revision_it_is_given() {
        let mut v = vars();
        v.route = Some("podinfo-00002".into());
        assert_eq!(
            builtin_query(Mesh::Knative, Sr, &v).unwrap(),
            r#"sum(rate(envoy_cluster_upstream_rq{envoy_cluster_name="test/podinfo-00002",envoy_response_code!~"5.*"}[1m])) / sum(rate(envoy_cluster_upstream_rq{envoy_cluster_name="test/podinfo-00002"}[1m])) * 100"#
        );
        assert_eq!(
            builtin_query(Mesh::Knative, Dur, &v).unwrap(),
            r#"histogram_quantile(0.99, sum(rate(envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="test/podinfo-00002"}[1m])) by (le))"#
        );
        v.route = None;
        assert!(matches!(builtin_query(Mesh::Knative, Sr, &v), Err(BuiltinError::MissingVariable { .. })));
    }

    #[test]
    fn uses_service_and_interval_from_vars() {
        let mut v = vars();
        v.service = "front".into();
        v.interval = "30s".into();
        let query = builtin_query(Mesh::Contour, Sr, &v).unwrap();
        assert!(query.contains("test_front-canary_"));
        assert!(query.contains("[30s]"));
        assert!(!query.contains("[1m]"));
    }

    #[test]
    fn dotted_names_are_regex_escaped() {
        let mut v = vars();
        v.target = "web.v2".into();
        let query = builtin_query(Mesh::Kubernetes, Sr, &v).unwrap();
        // `\.` in the regex is written `\\.` inside the PromQL string.
        assert!(query.contains(r#"kubernetes_pod_name=~"web\\.v2-[0-9a-zA-Z]+"#), "{query}");
    }

    /// A light PromQL well-formedness check: brackets balance and nest,
    /// strings close, no template placeholders survive, and the query
    /// aggregates to one value.
    fn assert_plausible_promql(query: &str) {
        let mut stack = Vec::new();
        let mut chars = query.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => loop {
                    match chars.next() {
                        Some('\\') => {
                            chars.next();
                        }
                        Some('"') => break,
                        Some(_) => {}
                        None => panic!("unterminated string in {query}"),
                    }
                },
                '(' | '[' | '{' => stack.push(c),
                ')' | ']' | '}' => {
                    let open = stack.pop().unwrap_or_else(|| panic!("unbalanced {c} in {query}"));
                    let expected = match c {
                        ')' => '(',
                        ']' => '[',
                        _ => '{',
                    };
                    assert_eq!(open, expected, "mismatched {c} in {query}");
                }
                _ => {}
            }
        }
        assert!(stack.is_empty(), "unclosed {stack:?} in {query}");
        assert!(!query.contains("{{"), "{query}");
        assert!(query.starts_with("sum(") || query.starts_with("histogram_quantile(0.99, sum("), "{query}");
        assert!(query.contains("[1m]"), "{query}");
    }

    #[test]
    fn every_query_is_plausible_promql() {
        for mesh in Mesh::ALL {
            for metric in [Sr, Dur] {
                let canary = q(mesh, metric);
                assert_plausible_promql(&canary);
                // APISIX cannot select the primary; Knative selects the revision it is given.
                if matches!(mesh, Mesh::Apisix | Mesh::Knative) {
                    continue;
                }
                let primary = qp(mesh, metric);
                assert_plausible_promql(&primary);
                assert_ne!(canary, primary, "{mesh} {metric}");
            }
        }
    }

    #[test]
    fn the_checker_itself_rejects_broken_queries() {
        for broken in ["sum(rate(x[1m])", "sum(rate(x{a=\"b}[1m]))", "sum(rate(x[1m)])"] {
            assert!(std::panic::catch_unwind(|| assert_plausible_promql(broken)).is_err());
        }
    }

    #[test]
    fn names_parse_strictly() {
        assert_eq!("gatewayapi:v1".parse(), Ok(Mesh::GatewayApi));
        assert_eq!("smi:v1alpha3".parse(), Ok(Mesh::Smi));
        for mesh in Mesh::ALL {
            assert_eq!(mesh.as_str().parse(), Ok(mesh));
        }
        for unknown in ["appmesh", "osm", "Istio", ""] {
            assert_eq!(unknown.parse::<Mesh>(), Err(BuiltinError::UnsupportedMesh(unknown.into())));
        }
        assert_eq!(BuiltinMetric::from_name("request-duration"), Ok(Dur));
        assert_eq!(BuiltinMetric::from_name("request-success-rate"), Ok(Sr));
        let err = BuiltinMetric::from_name("error-rate").unwrap_err();
        assert_eq!(err, BuiltinError::UnknownMetric("error-rate".into()));
        assert!(err.to_string().contains("templateRef"));
    }

    proptest::proptest! {
        /// Any valid Kubernetes names give well-formed queries that name
        /// the workload, for every mesh, metric and side.
        #[test]
        fn any_valid_names_give_plausible_queries(
            target in "[a-z0-9]([a-z0-9.-]{0,30}[a-z0-9])?",
            namespace in "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?",
            interval in "[1-9][0-9]{0,2}(s|m|h)",
        ) {
            let v = QueryVars {
                target: target.clone(),
                service: target.clone(),
                ingress: Some(target.clone()),
                route: Some(target.clone()),
                namespace,
                interval: interval.clone(),
                ..QueryVars::default()
            };
            let escaped = regex_quote(&target).replace('\\', "\\\\");
            for mesh in Mesh::ALL {
                for metric in [Sr, Dur] {
                    let primary = (mesh != Mesh::Apisix).then(|| builtin_query_primary(mesh, metric, &v).unwrap());
                    for query in std::iter::once(builtin_query(mesh, metric, &v).unwrap()).chain(primary) {
                        assert_plausible_promql(&query.replace(&format!("[{interval}]"), "[1m]"));
                        proptest::prop_assert!(
                            query.contains(&target) || query.contains(&escaped) || query.contains(&skipper_word(&target)),
                            "{query}"
                        );
                    }
                }
            }
        }
    }
}
