//! The metric provider abstraction: one trait, one error type, one config
//! type and one constructor.
//!
//! The operator builds a [`Provider`] from a [`ProviderConfig`] with
//! [`build_provider`] and calls [`MetricProvider::query`]. Every failure is a
//! [`QueryError`] whose `Display` text is written for a person reading a
//! Kubernetes Event, so the operator can put it there verbatim.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use crate::http_json::HttpJsonProvider;
use crate::outbound::EgressPolicy;
use crate::prometheus::PrometheusProvider;

/// Longest query text quoted in an error message. Queries can be long; an
/// Event message is only useful if the reason is still visible.
const MAX_QUOTED_QUERY: usize = 200;
/// Longest response body quoted in an error message.
const MAX_QUOTED_BODY: usize = 300;

/// Default per-request timeout, as in Flagger.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a metric query produced no usable number.
///
/// Every variant counts as a failed check in an analysis: none of them is
/// ever treated as a pass (see DESIGN.md, "No silent fallbacks").
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    /// The query succeeded but returned no series (often: no traffic yet, or
    /// a label selector that matches nothing).
    #[error("query returned no data (no traffic yet, or the selector matches no series): {query}")]
    NoData {
        /// The query, truncated.
        query: String,
    },
    /// The query returned a NaN or infinite sample, e.g. a ratio over zero
    /// requests.
    #[error("query returned {value}, not a number (a ratio over zero requests?): {query}")]
    NotANumber {
        /// The raw sample value as the backend sent it.
        value: String,
        /// The query, truncated.
        query: String,
    },
    /// The query returned more than one series. petrel refuses to pick one:
    /// the query must aggregate (e.g. `sum(...)`) to a single value.
    #[error(
        "query returned {count} series but exactly one is needed; fix the query so it aggregates to a single value (e.g. wrap it in sum(...)): {query}"
    )]
    MultipleSeries {
        /// How many series came back.
        count: usize,
        /// The query, truncated.
        query: String,
    },
    /// The backend answered with a non-success HTTP status.
    #[error("metrics server answered HTTP {status}: {body}")]
    Http {
        /// HTTP status code.
        status: u16,
        /// Response body, truncated.
        body: String,
    },
    /// The backend evaluated the query and reported an error (Prometheus
    /// `status: "error"`), e.g. a PromQL syntax error.
    #[error("metrics server rejected the query ({error_type}: {message}): {query}")]
    QueryFailed {
        /// Backend error class, e.g. Prometheus `bad_data`.
        error_type: String,
        /// Backend error message.
        message: String,
        /// The query, truncated.
        query: String,
    },
    /// The request could not be sent or the response not read (DNS,
    /// connection refused, TLS...).
    #[error("cannot reach metrics server: {0}")]
    Transport(String),
    /// No complete answer within the configured timeout.
    #[error("metrics server did not answer within {0:?}")]
    Timeout(Duration),
    /// The backend answered, but not in the shape its API documents.
    #[error("unexpected response from metrics server: {0}")]
    BadResponse(String),
    /// The provider kind is known but petrel cannot query it (yet).
    #[error("metric provider type {0:?} is not supported by petrel; supported types: prometheus, http-json")]
    Unsupported(String),
    /// The provider configuration cannot work (bad address, header, secret).
    #[error("invalid metric provider configuration: {0}")]
    InvalidConfig(String),
}

/// Shortens `text` to at most `max` characters (on a char boundary), marking
/// the cut so a reader knows the text goes on.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}…", &text[..cut]),
    }
}

/// A query shortened for an error message, with whitespace runs folded so a
/// multi-line template reads on one line.
pub(crate) fn quote_query(query: &str) -> String {
    let folded = query.split_whitespace().collect::<Vec<_>>().join(" ");
    truncate(&folded, MAX_QUOTED_QUERY)
}

/// A response body shortened for an error message.
pub(crate) fn quote_body(body: &str) -> String {
    truncate(body.trim(), MAX_QUOTED_BODY)
}

/// A metrics backend that evaluates a query to a single number.
///
/// The futures are `Send` so the operator can run queries on a
/// multi-threaded runtime.
pub trait MetricProvider {
    /// Evaluates `query` (already rendered, see
    /// [`render_query`](crate::template::render_query)) at the current time
    /// and returns its single value.
    fn query(&self, query: &str) -> impl Future<Output = Result<f64, QueryError>> + Send;

    /// Evaluates `query` over the `window` ending at `end`, one value every
    /// `step`, and returns the values of its single series, oldest first.
    /// Feeds [`compare`](crate::judge::compare). NaN/Inf samples are kept
    /// (the judge drops and counts them).
    fn query_range(
        &self,
        query: &str,
        end: SystemTime,
        window: Duration,
        step: Duration,
    ) -> impl Future<Output = Result<Vec<f64>, QueryError>> + Send;

    /// Checks that the backend is reachable and answers queries.
    fn is_online(&self) -> impl Future<Output = Result<(), QueryError>> + Send;
}

/// Metric backend types a MetricTemplate may name (`spec.provider.type`).
///
/// All of Flagger's types parse, so a template written for Flagger gets a
/// clear "not supported" error rather than a parse error; only
/// [`ProviderKind::Prometheus`] and [`ProviderKind::HttpJson`] can be built
/// today.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    /// Prometheus HTTP API (also Thanos, Cortex, Mimir, VictoriaMetrics).
    Prometheus,
    /// Datadog.
    Datadog,
    /// New Relic.
    NewRelic,
    /// Graphite.
    Graphite,
    /// InfluxDB.
    InfluxDb,
    /// AWS CloudWatch.
    CloudWatch,
    /// Google Cloud Monitoring.
    Stackdriver,
    /// Dynatrace.
    Dynatrace,
    /// Keptn.
    Keptn,
    /// Splunk.
    Splunk,
    /// Kubernetes external metrics API.
    ExternalMetrics,
    /// A generic HTTP endpoint returning JSON; see [`crate::http_json`].
    HttpJson,
}

impl ProviderKind {
    /// Every kind, for listing in messages and tests.
    pub const ALL: [ProviderKind; 12] = [
        Self::Prometheus,
        Self::Datadog,
        Self::NewRelic,
        Self::Graphite,
        Self::InfluxDb,
        Self::CloudWatch,
        Self::Stackdriver,
        Self::Dynatrace,
        Self::Keptn,
        Self::Splunk,
        Self::ExternalMetrics,
        Self::HttpJson,
    ];

    /// The name used in MetricTemplate `spec.provider.type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prometheus => "prometheus",
            Self::Datadog => "datadog",
            Self::NewRelic => "newrelic",
            Self::Graphite => "graphite",
            Self::InfluxDb => "influxdb",
            Self::CloudWatch => "cloudwatch",
            Self::Stackdriver => "stackdriver",
            Self::Dynatrace => "dynatrace",
            Self::Keptn => "keptn",
            Self::Splunk => "splunk",
            Self::ExternalMetrics => "externalmetrics",
            Self::HttpJson => "http-json",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown provider type name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown metric provider type {0:?}; known types: prometheus, datadog, newrelic, graphite, influxdb, cloudwatch, stackdriver, dynatrace, keptn, splunk, externalmetrics, http-json"
)]
pub struct UnknownProviderKind(pub String);

impl FromStr for ProviderKind {
    type Err = UnknownProviderKind;

    /// Parses a `spec.provider.type` value (exact, lower case, as Flagger's
    /// CRD enum spells it).
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name).ok_or_else(|| UnknownProviderKind(name.to_owned()))
    }
}

/// Credentials for the metrics backend, already read from the Kubernetes
/// Secret by the operator.
///
/// `Debug` never prints the secret values.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    /// No authentication.
    #[default]
    None,
    /// `Authorization: Bearer <token>` (Secret key `token`).
    Bearer(String),
    /// HTTP basic authentication (Secret keys `username` and `password`).
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            Self::Basic { username, .. } => {
                f.debug_struct("Basic").field("username", username).field("password", &"<redacted>").finish()
            }
        }
    }
}

impl Credentials {
    /// Reads credentials from a Secret's `data`, with Flagger's keys:
    /// `token` for a bearer token, or `username` and `password` for basic
    /// authentication.
    ///
    /// Other keys (e.g. `address`) are ignored. A Secret that has neither,
    /// has both kinds, has only one of `username`/`password`, or holds
    /// non-UTF-8 values is an error: a Secret was referenced, so silently
    /// sending no credentials would hide the mistake.
    pub fn from_secret_data(data: &BTreeMap<String, Vec<u8>>) -> Result<Self, QueryError> {
        let text = |key: &str| -> Result<Option<String>, QueryError> {
            data.get(key)
                .map(|bytes| {
                    String::from_utf8(bytes.clone())
                        .map_err(|_| QueryError::InvalidConfig(format!("secret key {key:?} is not UTF-8 text")))
                })
                .transpose()
        };
        match (text("token")?, text("username")?, text("password")?) {
            (Some(token), None, None) => Ok(Self::Bearer(token)),
            (None, Some(username), Some(password)) => Ok(Self::Basic { username, password }),
            (None, None, None) => Err(QueryError::InvalidConfig(
                "secret has neither key \"token\" nor keys \"username\" and \"password\"".into(),
            )),
            (Some(_), _, _) => Err(QueryError::InvalidConfig(
                "secret has both \"token\" and \"username\"/\"password\"; keep only one kind".into(),
            )),
            (None, Some(_), None) | (None, None, Some(_)) => Err(QueryError::InvalidConfig(
                "secret must have both \"username\" and \"password\" for basic authentication".into(),
            )),
        }
    }
}

/// How to reach one metrics backend (a MetricTemplate's `spec.provider`,
/// or the operator's global Prometheus for builtin metrics).
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    /// Backend type.
    pub kind: ProviderKind,
    /// Base URL, e.g. `http://prometheus.monitoring:9090` (a path prefix is
    /// kept: `http://host/prometheus` queries `http://host/prometheus/api/v1/query`).
    pub address: String,
    /// Authentication, already resolved from the Secret.
    pub credentials: Credentials,
    /// Extra HTTP headers sent with every request (e.g. `X-Scope-OrgID`).
    pub headers: BTreeMap<String, String>,
    /// Per-request timeout; `None` means [`DEFAULT_TIMEOUT`].
    pub timeout: Option<Duration>,
    /// Accept any TLS certificate (`insecureSkipVerify`).
    pub insecure_skip_verify: bool,
    /// Which addresses the backend may be reached at; strict by default.
    pub egress: EgressPolicy,
}

impl ProviderConfig {
    /// A config with no credentials, headers or timeout override, and the
    /// strict egress policy (no loopback or link-local address).
    pub fn new(kind: ProviderKind, address: impl Into<String>) -> Self {
        Self {
            kind,
            address: address.into(),
            credentials: Credentials::None,
            headers: BTreeMap::new(),
            timeout: None,
            insecure_skip_verify: false,
            egress: EgressPolicy::strict(),
        }
    }
}

/// A ready-to-query metrics backend. An enum rather than a trait object
/// because [`MetricProvider`] uses `impl Future` returns, which are not
/// object safe; a `match` is also easy to read.
#[derive(Debug, Clone)]
pub enum Provider {
    /// A Prometheus HTTP API client.
    Prometheus(PrometheusProvider),
    /// A generic HTTP JSON endpoint client.
    HttpJson(HttpJsonProvider),
}

impl MetricProvider for Provider {
    async fn query(&self, query: &str) -> Result<f64, QueryError> {
        match self {
            Self::Prometheus(p) => p.query(query).await,
            Self::HttpJson(p) => p.query(query).await,
        }
    }

    async fn query_range(
        &self,
        query: &str,
        end: SystemTime,
        window: Duration,
        step: Duration,
    ) -> Result<Vec<f64>, QueryError> {
        match self {
            Self::Prometheus(p) => p.query_range(query, end, window, step).await,
            Self::HttpJson(p) => p.query_range(query, end, window, step).await,
        }
    }

    async fn is_online(&self) -> Result<(), QueryError> {
        match self {
            Self::Prometheus(p) => p.is_online().await,
            Self::HttpJson(p) => p.is_online().await,
        }
    }
}

/// Builds the provider `config` describes.
///
/// Kinds petrel cannot query return [`QueryError::Unsupported`]: never a
/// fallback to another kind.
pub fn build_provider(config: &ProviderConfig) -> Result<Provider, QueryError> {
    match config.kind {
        ProviderKind::Prometheus => PrometheusProvider::new(config).map(Provider::Prometheus),
        ProviderKind::HttpJson => HttpJsonProvider::new(config).map(Provider::HttpJson),
        other => Err(QueryError::Unsupported(other.as_str().to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_names() {
        for kind in ProviderKind::ALL {
            assert_eq!(kind.as_str().parse::<ProviderKind>(), Ok(kind));
        }
        assert_eq!("Prometheus".parse::<ProviderKind>(), Err(UnknownProviderKind("Prometheus".into())));
    }

    #[test]
    fn unbuildable_kinds_are_unsupported_not_a_fallback() {
        for kind in ProviderKind::ALL {
            let result = build_provider(&ProviderConfig::new(kind, "http://127.0.0.1:9090"));
            if matches!(kind, ProviderKind::Prometheus | ProviderKind::HttpJson) {
                assert!(result.is_ok());
            } else {
                let err = result.expect_err("non-prometheus kinds must not build");
                assert_eq!(err, QueryError::Unsupported(kind.as_str().into()));
                assert!(err.to_string().contains(kind.as_str()));
            }
        }
    }

    #[test]
    fn credentials_from_secret_follow_flagger_keys() {
        let secret = |pairs: &[(&str, &str)]| -> BTreeMap<String, Vec<u8>> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect()
        };
        assert_eq!(
            Credentials::from_secret_data(&secret(&[("token", "t0k"), ("address", "x")])),
            Ok(Credentials::Bearer("t0k".into()))
        );
        assert_eq!(
            Credentials::from_secret_data(&secret(&[("username", "u"), ("password", "p")])),
            Ok(Credentials::Basic { username: "u".into(), password: "p".into() })
        );
        for bad in [
            secret(&[]),
            secret(&[("username", "u")]),
            secret(&[("password", "p")]),
            secret(&[("token", "t"), ("username", "u"), ("password", "p")]),
        ] {
            assert!(matches!(Credentials::from_secret_data(&bad), Err(QueryError::InvalidConfig(_))));
        }
        let mut not_utf8 = BTreeMap::new();
        not_utf8.insert("token".to_string(), vec![0xff, 0xfe]);
        assert!(matches!(
            Credentials::from_secret_data(&not_utf8),
            Err(QueryError::InvalidConfig(m)) if m.contains("token")
        ));
    }

    #[test]
    fn debug_never_prints_secrets() {
        let shown = format!(
            "{:?} {:?}",
            Credentials::Bearer("s3cret-token".into()),
            Credentials::Basic { username: "alice".into(), password: "hunter2".into() }
        );
        assert!(!shown.contains("s3cret-token"));
        assert!(!shown.contains("hunter2"));
        assert!(shown.contains("alice"));
    }

    #[test]
    fn long_queries_are_truncated_and_folded_in_messages() {
        let query = format!("sum(\n  rate({}[1m])\n)", "x".repeat(500));
        let err = QueryError::NoData { query: quote_query(&query) };
        let message = err.to_string();
        assert!(message.contains("sum( rate(xxx"));
        assert!(message.ends_with('…'));
        assert!(message.len() < 400);
        assert_eq!(truncate("héllo", 2), "hé…");
        assert_eq!(truncate("hi", 2), "hi");
    }

    #[test]
    fn multiple_series_message_tells_the_reader_to_fix_the_query() {
        let message = QueryError::MultipleSeries { count: 2, query: "up".into() }.to_string();
        assert!(message.contains("2 series"));
        assert!(message.contains("fix the query"));
        assert!(message.contains("up"));
    }
}
