//! Metric backends and analysis judges for petrel.
//!
//! Backends, one module each: [`prometheus`], [`datadog`], [`newrelic`],
//! [`graphite`], [`influxdb`], [`cloudwatch`], [`stackdriver`],
//! [`dynatrace`], [`splunk`] and the generic [`http_json`]. Keptn and the
//! Kubernetes external metrics API read the Kubernetes API, so the operator
//! queries them.
//!
//! This crate knows nothing about Kubernetes: the operator resolves
//! Secrets and Canary fields and passes plain values in.
//!
//! The operator's path through it, for one metric check:
//! 1. the query: [`builtin_query`] for `request-success-rate` /
//!    `request-duration`, or [`render_query`] for a MetricTemplate;
//! 2. the backend: [`build_provider`] from a [`ProviderConfig`], then
//!    [`MetricProvider::query`];
//! 3. the judgement: [`ThresholdRange::check`] on the value, or
//!    [`compare`] on canary and primary samples.
//!
//! Every failure is an error value with a message meant for a Kubernetes
//! Event; none of them is ever a silent pass.
//!
//! Requests to backends go through [`outbound`], which the operator also uses
//! for webhooks and alert receivers: the egress policy, the 1 MiB body cap,
//! and URLs shown without their credentials.
//!
//! ```
//! use metrics_providers::*;
//!
//! let vars = QueryVars {
//!     name: "podinfo".into(),
//!     namespace: "test".into(),
//!     target: "podinfo".into(),
//!     service: "podinfo".into(),
//!     interval: "1m".into(),
//!     ..QueryVars::default()
//! };
//! // A builtin metric for the Canary's provider...
//! let mesh: Mesh = "istio".parse()?;
//! let metric = BuiltinMetric::from_name("request-success-rate")?;
//! let query = builtin_query(mesh, metric, &vars)?;
//! assert!(query.contains(r#"destination_workload="podinfo""#));
//! // ...or a MetricTemplate written for Flagger.
//! let query = render_query(r#"sum(rate(errors{ns="{{ namespace }}"}[{{ interval }}]))"#, &vars, QueryLanguage::PromQl)?;
//! assert_eq!(query, r#"sum(rate(errors{ns="test"}[1m]))"#);
//!
//! // Judge one value against a thresholdRange...
//! let range = ThresholdRange { min: Some(99.0), max: None };
//! assert_eq!(range.check(99.5), Verdict::Pass);
//! // ...or canary samples against primary samples.
//! let primary = [101.0, 99.0, 100.0, 102.0, 98.0, 100.0];
//! let canary = [151.0, 149.0, 150.0, 152.0, 148.0, 150.0];
//! let latency = CompareConfig { direction: Direction::Increase, ..CompareConfig::default() };
//! assert!(matches!(compare(&canary, &primary, &latency).verdict, Verdict::Fail(_)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Querying (inside the operator's async runtime):
//!
//! ```no_run
//! use metrics_providers::*;
//!
//! # async fn check(token: String) -> Result<(), QueryError> {
//! let mut config = ProviderConfig::new(ProviderKind::Prometheus, "http://prometheus.monitoring:9090");
//! config.credentials = Credentials::Bearer(token);
//! let prometheus = build_provider(&config)?;
//! let value = prometheus.query("sum(rate(http_requests_total[1m]))").await?;
//! # let _ = value;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod builtin;
mod cache;
pub mod cloudwatch;
pub mod datadog;
pub mod dynatrace;
pub mod graphite;
mod http;
pub mod http_json;
pub mod influxdb;
pub mod judge;
pub mod newrelic;
pub mod outbound;
pub mod prometheus;
pub mod provider;
pub mod secret;
pub mod splunk;
pub mod stackdriver;
pub mod template;

pub use builtin::{BuiltinError, BuiltinMetric, Mesh, builtin_query, builtin_query_primary};
pub use cloudwatch::CloudWatchProvider;
pub use datadog::DatadogProvider;
pub use dynatrace::DynatraceProvider;
pub use graphite::GraphiteProvider;
pub use http_json::HttpJsonProvider;
pub use influxdb::InfluxDbProvider;
pub use judge::{CompareConfig, Comparison, Direction, ThresholdRange, Verdict, compare};
pub use newrelic::NewRelicProvider;
pub use outbound::{EgressClient, EgressPolicy, RedactedUrl};
pub use prometheus::PrometheusProvider;
pub use provider::{
    Credentials, DEFAULT_INTERVAL, DEFAULT_TIMEOUT, MetricProvider, Provider, ProviderConfig, ProviderKind, QueryError,
    UnknownProviderKind, build_provider, describe_failure,
};
pub use secret::{Redactor, SecretData};
pub use splunk::SplunkProvider;
pub use stackdriver::StackdriverProvider;
pub use template::{QueryLanguage, QueryVars, TemplateError, render_query};
