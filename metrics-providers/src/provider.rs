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
use std::time::Duration;

use crate::cloudwatch::CloudWatchProvider;
use crate::datadog::DatadogProvider;
use crate::dynatrace::DynatraceProvider;
use crate::graphite::GraphiteProvider;
use crate::http_json::HttpJsonProvider;
use crate::influxdb::InfluxDbProvider;
use crate::newrelic::NewRelicProvider;
use crate::outbound::EgressPolicy;
use crate::prometheus::PrometheusProvider;
use crate::secret::{Redactor, SecretData};
use crate::splunk::SplunkProvider;
use crate::stackdriver::StackdriverProvider;

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
        /// Response body (or the error the vendor's body holds), truncated.
        body: String,
    },
    /// The backend refused the request for its rate limit (HTTP 429). The
    /// check fails; the next analysis tick asks again.
    #[error("metrics server is rate limiting requests (HTTP 429{}): {body}", .retry_after.as_ref().map(|after| format!(", retry after {after}")).unwrap_or_default())]
    RateLimited {
        /// The `Retry-After` header, as sent (seconds or an HTTP date).
        retry_after: Option<String>,
        /// Response body (or the error the vendor's body holds), truncated.
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
    /// The provider kind is known but this library cannot query it: it
    /// reads the Kubernetes API, which the operator does itself.
    #[error("metric provider type {0:?} reads the Kubernetes API; this library cannot query it")]
    Unsupported(String),
    /// The provider configuration cannot work (bad address, header, secret).
    #[error("invalid metric provider configuration: {0}")]
    InvalidConfig(String),
}

impl QueryError {
    /// The same error with `f` applied to every text it carries (to scrub
    /// secret values, see [`Redactor`](crate::Redactor)).
    pub fn map_text(self, f: impl Fn(String) -> String) -> Self {
        match self {
            Self::NoData { query } => Self::NoData { query: f(query) },
            Self::NotANumber { value, query } => Self::NotANumber { value: f(value), query: f(query) },
            Self::MultipleSeries { count, query } => Self::MultipleSeries { count, query: f(query) },
            Self::Http { status, body } => Self::Http { status, body: f(body) },
            Self::RateLimited { retry_after, body } => {
                Self::RateLimited { retry_after: retry_after.map(&f), body: f(body) }
            }
            Self::QueryFailed { error_type, message, query } => {
                Self::QueryFailed { error_type: f(error_type), message: f(message), query: f(query) }
            }
            Self::Transport(text) => Self::Transport(f(text)),
            Self::Timeout(after) => Self::Timeout(after),
            Self::BadResponse(text) => Self::BadResponse(f(text)),
            Self::Unsupported(text) => Self::Unsupported(f(text)),
            Self::InvalidConfig(text) => Self::InvalidConfig(f(text)),
        }
    }
}

/// The message of a failed check: the backend, then its error.
pub fn describe_failure(kind: ProviderKind, error: &QueryError) -> String {
    format!("{kind} provider: {error}")
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
}

/// Metric backend types a MetricTemplate may name (`spec.provider.type`).
///
/// All of Flagger's types parse. [`build_provider`] builds every kind except
/// [`ProviderKind::Keptn`] and [`ProviderKind::ExternalMetrics`], which read
/// the Kubernetes API and are queried by the operator.
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
    /// Empty means the backend's default where it has one (Datadog, New
    /// Relic, CloudWatch, Google Cloud Monitoring).
    pub address: String,
    /// Authentication for the backends that take a bearer token or basic
    /// authentication (Prometheus, http-json, Graphite), already resolved
    /// from the Secret.
    pub credentials: Credentials,
    /// The MetricTemplate's Secret (`spec.provider.secretRef`), for the
    /// backends that read their own keys from it; `None` when the template
    /// names no Secret.
    pub secret: Option<SecretData>,
    /// Cloud region (`spec.provider.region`; CloudWatch).
    pub region: Option<String>,
    /// The metric's interval. Backends that query a time window (Datadog,
    /// New Relic, CloudWatch, Dynatrace, Splunk) size it from this, as
    /// Flagger does.
    pub interval: Duration,
    /// Extra HTTP headers sent with every request (e.g. `X-Scope-OrgID`).
    pub headers: BTreeMap<String, String>,
    /// Per-request timeout; `None` means [`DEFAULT_TIMEOUT`].
    pub timeout: Option<Duration>,
    /// Accept any TLS certificate (`insecureSkipVerify`).
    pub insecure_skip_verify: bool,
    /// Which addresses the backend may be reached at; strict by default.
    pub egress: EgressPolicy,
}

/// The metric interval when none is given, as in Flagger.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

impl ProviderConfig {
    /// A config with no credentials, Secret, region, headers or timeout
    /// override, the default interval, and the strict egress policy (no
    /// loopback or link-local address).
    pub fn new(kind: ProviderKind, address: impl Into<String>) -> Self {
        Self {
            kind,
            address: address.into(),
            credentials: Credentials::None,
            secret: None,
            region: None,
            interval: DEFAULT_INTERVAL,
            headers: BTreeMap::new(),
            timeout: None,
            insecure_skip_verify: false,
            egress: EgressPolicy::strict(),
        }
    }

    /// The Secret, or an error saying `kind` needs one.
    pub(crate) fn required_secret(&self) -> Result<&SecretData, QueryError> {
        self.secret.as_ref().ok_or_else(|| {
            QueryError::InvalidConfig(format!(
                "the {} provider needs a Secret (spec.provider.secretRef) with its credentials",
                self.kind
            ))
        })
    }

    /// Every value that must never appear in a message: the Secret's values
    /// and the credentials'.
    pub(crate) fn redactor(&self) -> Redactor {
        use base64::Engine;
        let credentials: Vec<String> = match &self.credentials {
            Credentials::None => vec![],
            Credentials::Bearer(token) => vec![token.clone()],
            Credentials::Basic { username, password } => {
                // The header form too: it is the password, merely encoded.
                let header = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
                vec![username.clone(), password.clone(), header]
            }
        };
        // An address from the Secret comes back in messages as its host alone.
        let secret_host = self
            .secret
            .as_ref()
            .and_then(|secret| secret.text("address").ok().flatten())
            .and_then(|address| reqwest::Url::parse(&address).ok())
            .and_then(|url| url.host_str().map(str::to_owned));
        Redactor::new(self.secret.as_ref(), credentials.iter().chain(&secret_host).map(String::as_str))
    }
}

/// The client of one backend type.
#[derive(Debug, Clone)]
enum Backend {
    Prometheus(PrometheusProvider),
    HttpJson(HttpJsonProvider),
    Datadog(DatadogProvider),
    NewRelic(NewRelicProvider),
    Graphite(GraphiteProvider),
    InfluxDb(InfluxDbProvider),
    CloudWatch(CloudWatchProvider),
    Stackdriver(StackdriverProvider),
    Dynatrace(DynatraceProvider),
    Splunk(SplunkProvider),
}

/// Calls the same method on whichever backend `$backend` holds. A `match`
/// rather than a trait object because [`MetricProvider`] uses `impl Future`
/// returns, which are not object safe.
macro_rules! on_backend {
    ($backend:expr, $client:ident => $call:expr) => {
        match $backend {
            Backend::Prometheus($client) => $call,
            Backend::HttpJson($client) => $call,
            Backend::Datadog($client) => $call,
            Backend::NewRelic($client) => $call,
            Backend::Graphite($client) => $call,
            Backend::InfluxDb($client) => $call,
            Backend::CloudWatch($client) => $call,
            Backend::Stackdriver($client) => $call,
            Backend::Dynatrace($client) => $call,
            Backend::Splunk($client) => $call,
        }
    };
}

/// A ready-to-query metrics backend, built by [`build_provider`]. Its errors
/// never carry a value of the Secret or credentials it was built from, and
/// its `Debug` shows only the backend type.
#[derive(Clone)]
pub struct Provider {
    kind: ProviderKind,
    backend: Backend,
    redactor: Redactor,
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Provider({})", self.kind)
    }
}

impl Provider {
    /// The backend type.
    pub fn kind(&self) -> ProviderKind {
        self.kind
    }
}

impl MetricProvider for Provider {
    async fn query(&self, query: &str) -> Result<f64, QueryError> {
        let result = on_backend!(&self.backend, client => client.query(query).await);
        result.map_err(|error| self.redactor.scrub_error(error))
    }
}

/// Builds the provider `config` describes, checking everything that can be
/// checked before a query: the address, the Secret keys the backend needs,
/// the region. Kinds this library cannot query return
/// [`QueryError::Unsupported`]: never a fallback to another kind.
pub fn build_provider(config: &ProviderConfig) -> Result<Provider, QueryError> {
    let redactor = config.redactor();
    let backend = match config.kind {
        ProviderKind::Prometheus => PrometheusProvider::new(config).map(Backend::Prometheus),
        ProviderKind::HttpJson => HttpJsonProvider::new(config).map(Backend::HttpJson),
        ProviderKind::Datadog => DatadogProvider::new(config).map(Backend::Datadog),
        ProviderKind::NewRelic => NewRelicProvider::new(config).map(Backend::NewRelic),
        ProviderKind::Graphite => GraphiteProvider::new(config).map(Backend::Graphite),
        ProviderKind::InfluxDb => InfluxDbProvider::new(config).map(Backend::InfluxDb),
        ProviderKind::CloudWatch => CloudWatchProvider::new(config).map(Backend::CloudWatch),
        ProviderKind::Stackdriver => StackdriverProvider::new(config).map(Backend::Stackdriver),
        ProviderKind::Dynatrace => DynatraceProvider::new(config).map(Backend::Dynatrace),
        ProviderKind::Splunk => SplunkProvider::new(config).map(Backend::Splunk),
        ProviderKind::Keptn | ProviderKind::ExternalMetrics => {
            Err(QueryError::Unsupported(config.kind.as_str().to_owned()))
        }
    };
    match backend {
        Ok(backend) => Ok(Provider { kind: config.kind, backend, redactor }),
        Err(error) => Err(redactor.scrub_error(error)),
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
    fn kubernetes_kinds_are_unsupported_not_a_fallback() {
        for kind in [ProviderKind::Keptn, ProviderKind::ExternalMetrics] {
            let err = build_provider(&ProviderConfig::new(kind, "http://127.0.0.1:9090")).expect_err("needs kube");
            assert_eq!(err, QueryError::Unsupported(kind.as_str().into()));
            assert!(err.to_string().contains(kind.as_str()));
        }
    }

    #[test]
    fn failures_name_the_backend() {
        let message = describe_failure(ProviderKind::Datadog, &QueryError::Http { status: 500, body: "oops".into() });
        assert_eq!(message, "datadog provider: metrics server answered HTTP 500: oops");
        let limited = QueryError::RateLimited { retry_after: Some("30".into()), body: "slow down".into() };
        assert_eq!(
            limited.to_string(),
            "metrics server is rate limiting requests (HTTP 429, retry after 30): slow down"
        );
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
    fn debug_of_built_providers_never_prints_secrets() {
        let secret: SecretData = [
            ("datadog_api_key", "dd-key-SECRET1"),
            ("datadog_application_key", "dd-app-SECRET2"),
            ("newrelic_account_id", "7654321"),
            ("newrelic_query_key", "nr-SECRET3"),
            ("token", "influx-SECRET4"),
            ("org", "org-SECRET5"),
            ("dynatrace_token", "dt-SECRET6"),
            ("sf_token_key", "sf-SECRET7"),
            ("aws_access_key_id", "AKIA-SECRET8"),
            ("aws_secret_access_key", "aws-SECRET9"),
            ("project", "project-SECRET10"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect::<BTreeMap<_, _>>()
        .into();
        for kind in [
            ProviderKind::Datadog,
            ProviderKind::NewRelic,
            ProviderKind::InfluxDb,
            ProviderKind::Dynatrace,
            ProviderKind::Splunk,
            ProviderKind::CloudWatch,
            ProviderKind::Stackdriver,
        ] {
            let mut config = ProviderConfig::new(kind, "http://127.0.0.1:1");
            config.secret = Some(secret.clone());
            config.region = Some("us-east-1".into());
            let provider = build_provider(&config).unwrap_or_else(|e| panic!("{kind}: {e}"));
            let shown = format!("{provider:?} {config:?}");
            assert!(!shown.contains("SECRET") && !shown.contains("7654321"), "{kind}: {shown}");
        }
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
