//! The `keptn` metric provider: the value of a KeptnMetric object
//! (`metrics.keptn.sh/v1beta1`, `status.value`), read from the Kubernetes API.
//!
//! The query names the object as Flagger's does: `keptnmetric/<namespace>/<name>`
//! (`keptnmetrics/...` too; case and surrounding whitespace do not matter, as in
//! Flagger). Flagger also accepts `analysis/<namespace>/<definition>/...`, which creates a
//! Keptn `Analysis` object and waits for its verdict; petrel does not write Keptn objects,
//! so such a query is a failed check that says so.
//!
//! Beyond Flagger, a KeptnMetric whose `status.errMsg` is set, or whose value was last
//! updated longer ago than three of its fetch intervals (at least a minute), is a failed
//! check: Keptn keeps the last value when it stops fetching, and a stale value must not
//! pass an analysis.

use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::core::ApiResource;
use metrics_providers::{MetricProvider, QueryError};
use serde_json::Value;

use super::{MetricSource, SourceError};

/// The KeptnMetric resource petrel reads (the version Flagger reads).
pub fn keptn_metric_resource() -> ApiResource {
    crate::routers::api_resource("metrics.keptn.sh", "v1beta1", "KeptnMetric", "keptnmetrics")
}

/// A value older than this many fetch intervals is stale.
const STALE_INTERVALS: u32 = 3;
/// The least age at which a value is stale, for metrics fetched every few seconds.
const MIN_STALE_AGE: Duration = Duration::from_secs(60);

/// What a keptn query names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptnQuery {
    pub namespace: String,
    pub name: String,
}

/// Parses a keptn query; see the [module docs](self).
pub fn parse_query(query: &str) -> Result<KeptnQuery, QueryError> {
    let normalized = query.trim().to_lowercase();
    let parts: Vec<&str> = normalized.split('/').map(str::trim).collect();
    let usage = "a keptn query is keptnmetric/<namespace>/<name>";
    match parts.as_slice() {
        ["keptnmetric" | "keptnmetrics", namespace, name] if !namespace.is_empty() && !name.is_empty() => {
            Ok(KeptnQuery { namespace: namespace.to_string(), name: name.to_string() })
        }
        ["analysis" | "analyses", ..] => Err(QueryError::Unsupported(format!(
            "keptn analysis queries (petrel does not create Keptn Analysis objects; {usage})"
        ))),
        _ => Err(QueryError::InvalidConfig(format!("{usage}, not {query:?}"))),
    }
}

/// The value of a KeptnMetric object (as JSON) at `now`.
pub fn metric_value(object: &Value, now: DateTime<Utc>) -> Result<f64, QueryError> {
    let status = object.get("status");
    if let Some(error) = status.and_then(|s| s.get("errMsg")).and_then(Value::as_str).filter(|e| !e.is_empty()) {
        return Err(QueryError::QueryFailed {
            error_type: "keptn".into(),
            message: error.to_string(),
            query: String::new(),
        });
    }
    let Some(raw) = status.and_then(|s| s.get("value")).and_then(Value::as_str).filter(|v| !v.trim().is_empty()) else {
        return Err(QueryError::NoData { query: "the KeptnMetric has no status.value yet".into() });
    };
    let updated = status
        .and_then(|s| s.get("lastUpdated"))
        .and_then(Value::as_str)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    let fetch_interval = object
        .pointer("/spec/fetchIntervalSeconds")
        .and_then(Value::as_u64)
        .map(Duration::from_secs)
        .unwrap_or(Duration::ZERO);
    if let Some(updated) = updated {
        let stale_after = fetch_interval.saturating_mul(STALE_INTERVALS).max(MIN_STALE_AGE);
        let age = (now - updated).to_std().unwrap_or(Duration::ZERO);
        if age > stale_after {
            return Err(QueryError::BadResponse(format!(
                "the KeptnMetric's value {raw:?} was last updated {}s ago, longer than {}s: Keptn stopped fetching it",
                age.as_secs(),
                stale_after.as_secs()
            )));
        }
    }
    match raw.trim().parse::<f64>() {
        Ok(value) if value.is_finite() => Ok(value),
        Ok(_) => Err(QueryError::NotANumber { value: raw.to_string(), query: String::new() }),
        Err(_) => Err(QueryError::BadResponse(format!("the KeptnMetric's status.value {raw:?} is not a number"))),
    }
}

/// Reads KeptnMetrics through a [`MetricSource`].
pub struct KeptnProvider<'a, S> {
    source: &'a S,
}

impl<'a, S: MetricSource> KeptnProvider<'a, S> {
    pub fn new(source: &'a S) -> Self {
        Self { source }
    }
}

impl<S: MetricSource> MetricProvider for KeptnProvider<'_, S> {
    async fn query(&self, query: &str) -> Result<f64, QueryError> {
        let target = parse_query(query)?;
        let object = self.source.keptn_metric(&target.namespace, &target.name).await.map_err(|error| match error {
            SourceError::NotFound { .. } => QueryError::InvalidConfig(format!(
                "{error} (is Keptn's metrics operator installed and the name right?)"
            )),
            SourceError::Unreadable { .. } => QueryError::Transport(error.to_string()),
        })?;
        metric_value(&object, Utc::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 1, 1, 12, 0, 0).unwrap()
    }

    fn metric(status: Value) -> Value {
        json!({
            "apiVersion": "metrics.keptn.sh/v1beta1", "kind": "KeptnMetric",
            "metadata": {"name": "error-rate", "namespace": "podinfo"},
            "spec": {"provider": {"name": "prometheus"}, "query": "sum(rate(errors[1m]))", "fetchIntervalSeconds": 10},
            "status": status,
        })
    }

    #[test]
    fn queries_name_a_keptn_metric_as_in_flagger() {
        let expected = KeptnQuery { namespace: "podinfo".into(), name: "error-rate".into() };
        assert_eq!(parse_query("keptnmetric/podinfo/error-rate"), Ok(expected.clone()));
        assert_eq!(parse_query("  KeptnMetrics/PodInfo/Error-Rate\n"), Ok(expected));
        assert!(
            matches!(parse_query("analysis/podinfo/slo/1m"), Err(QueryError::Unsupported(m)) if m.contains("Analysis"))
        );
        for bad in ["keptnmetric/podinfo", "keptnmetric//x", "podinfo/error-rate/x", "keptnmetric/a/b/c", ""] {
            assert!(matches!(parse_query(bad), Err(QueryError::InvalidConfig(_))), "{bad:?}");
        }
    }

    #[test]
    fn the_status_value_is_the_value_while_fresh() {
        let fresh = metric(json!({"value": "0.25", "rawValue": "MC4yNQ==", "lastUpdated": "2024-01-01T11:59:40Z"}));
        assert_eq!(metric_value(&fresh, now()), Ok(0.25));
        let stale = metric(json!({"value": "0.25", "lastUpdated": "2024-01-01T11:55:00Z"}));
        assert!(matches!(metric_value(&stale, now()), Err(QueryError::BadResponse(m)) if m.contains("300s ago")));
    }

    #[test]
    fn errors_missing_and_garbage_values_fail() {
        let failed = metric(json!({"value": "1", "errMsg": "client_error: 401 Unauthorized"}));
        assert!(
            matches!(metric_value(&failed, now()), Err(QueryError::QueryFailed { message, .. }) if message.contains("401"))
        );
        assert!(matches!(metric_value(&metric(json!({})), now()), Err(QueryError::NoData { .. })));
        assert!(matches!(metric_value(&metric(json!({"value": "many"})), now()), Err(QueryError::BadResponse(_))));
        assert!(matches!(metric_value(&metric(json!({"value": "NaN"})), now()), Err(QueryError::NotANumber { .. })));
    }
}
