//! Evaluating a Canary's `analysis.metrics[]` at one analysis tick.
//!
//! Which query a metric runs, in order of precedence:
//! 1. `templateRef`: the MetricTemplate's query (namespace defaults to the Canary's),
//!    rendered with the [`QueryVars`] of [`query_vars`], against the template's backend;
//! 2. the deprecated inline `query`: sent as written (not templated, as in Flagger) to
//!    the Prometheus of the builtin metrics;
//! 3. the builtin `request-success-rate` (percent) and `request-duration` (milliseconds)
//!    for the Canary's traffic provider, against `spec.metricsServer` or the operator's
//!    `--metrics-server`;
//! 4. anything else is a failed check saying the metric is unknown.
//!
//! Every way a metric can fail to produce a passing value (no data, NaN, a query or HTTP
//! error, a missing MetricTemplate or Secret, an unsupported backend, an unknown builtin)
//! is a [`MetricResult`] with outcome `Failed` and a message for the Event; never a pass.
//! Among them is "no data" for the builtin success rate before any traffic reaches the
//! canary, exactly as Flagger counts it.
//!
//! A metric with a `comparison` also queries the primary (`<target>-primary`) with the
//! same query and returns both values. The statistical verdict over the whole run is
//! [`judge_comparison`]: passed, failed, or *pending* while either side has fewer than
//! `minSamples` values; [`fold_comparisons`] records this tick's values and applies it.
//! A pending comparison is neither a pass nor a failed check: the state machine takes
//! no step past the last one while any metric is pending (see `core::machine`).

use std::collections::BTreeMap;
use std::time::Duration;

use metrics_providers::outbound::{scrub, secret_fragments};
use metrics_providers::{
    BuiltinMetric, CompareConfig, Credentials, Direction, EgressPolicy, Mesh, MetricProvider, ProviderConfig,
    ProviderKind, QueryError, QueryLanguage, QueryVars, ThresholdRange, Verdict, build_provider, builtin_query,
    builtin_query_primary, compare, describe_failure,
};

use super::keptn::KeptnProvider;
use super::render::render_off_runtime;
use super::{MetricSource, SecretData};
use crate::api::Canary;
use crate::api::canary::{
    CanaryMetric, ComparisonDirection, ComparisonSamples, MetricComparison, MetricOutcome, MetricResult,
};
use crate::api::metric_template::MetricProviderSpec;
use crate::core::Provider;
use crate::core::strategy::{metric_interval_text, parse_duration};

/// Range window of a query when neither the metric nor the analysis sets an interval.
pub const DEFAULT_METRIC_INTERVAL: &str = "1m";
/// Significance level of a comparison, when the metric does not say.
pub const DEFAULT_ALPHA: f64 = 0.05;

/// What [`run_metrics`] needs besides the Canary.
#[derive(Clone, Debug)]
pub struct MetricDeps<S> {
    /// Reads MetricTemplates and their Secrets.
    pub source: S,
    /// Prometheus for builtin metrics and inline queries when the Canary sets no
    /// `metricsServer` (the operator's `--metrics-server`).
    pub default_metrics_server: Option<String>,
    /// Per-query HTTP timeout.
    pub query_timeout: Duration,
    /// Which addresses a Canary's `metricsServer` and a MetricTemplate's address may
    /// point at. The operator's own `--metrics-server` is not subject to it: its
    /// administrator chose it.
    pub egress: EgressPolicy,
}

/// Evaluates every metric of the Canary's analysis, concurrently, in declaration order.
///
/// `provider` is the Canary's traffic provider (it selects the builtin queries).
pub async fn run_metrics<S: MetricSource>(
    deps: &MetricDeps<S>,
    canary: &Canary,
    provider: Provider,
) -> Vec<MetricResult> {
    let metrics = canary.spec.analysis.iter().flat_map(|analysis| &analysis.metrics);
    // Reading a template and its Secret comes before the query, and a comparison's two
    // queries run side by side: three timeouts bound one metric even if the API hangs.
    let budget = deps.query_timeout.saturating_mul(3);
    let evaluations = metrics.map(|metric| async move {
        match tokio::time::timeout(budget, evaluate(deps, canary, provider, metric)).await {
            Ok(result) => result,
            Err(_) => failed(metric, format!("the check did not finish within {budget:?}")),
        }
    });
    futures::future::join_all(evaluations).await
}

fn failed(metric: &CanaryMetric, message: String) -> MetricResult {
    MetricResult {
        name: metric.name.clone(),
        value: None,
        primary_value: None,
        outcome: MetricOutcome::Failed,
        message,
    }
}

/// The query (or queries) one metric runs, and where.
#[derive(Clone, Debug, PartialEq)]
struct PlannedQuery {
    config: ProviderConfig,
    canary: String,
    /// Present when the metric compares against the primary.
    primary: Option<String>,
    /// What to scrub from the check's message: the parts of the MetricTemplate's Secret
    /// (a backend answering an error may echo them).
    secrets: Vec<String>,
}

async fn evaluate<S: MetricSource>(
    deps: &MetricDeps<S>,
    canary: &Canary,
    provider: Provider,
    metric: &CanaryMetric,
) -> MetricResult {
    let planned = match plan_query(deps, canary, provider, metric).await {
        Ok(planned) => planned,
        Err(message) => return failed(metric, message),
    };
    let mut result = query_planned(deps, metric, &planned).await;
    result.message = scrub(&result.message, planned.secrets.iter().map(String::as_str));
    result
}

async fn query_planned<S: MetricSource>(
    deps: &MetricDeps<S>,
    metric: &CanaryMetric,
    planned: &PlannedQuery,
) -> MetricResult {
    let kind = planned.config.kind;
    let describe = |error: QueryError| describe_failure(kind, &error);
    let (canary_value, primary_value) = match kind {
        ProviderKind::Keptn => query_values(&KeptnProvider::new(&deps.source), planned).await,
        _ => match build_provider(&planned.config) {
            Ok(backend) => query_values(&backend, planned).await,
            Err(error) => return failed(metric, describe(error)),
        },
    };
    judge_values(metric, canary_value.map_err(describe), primary_value.map(|v| v.map_err(describe)))
}

/// The canary's value and, for a comparison, the primary's, queried side by side.
async fn query_values(
    backend: &impl MetricProvider,
    planned: &PlannedQuery,
) -> (Result<f64, QueryError>, Option<Result<f64, QueryError>>) {
    match &planned.primary {
        None => (backend.query(&planned.canary).await, None),
        Some(primary) => {
            let (canary_value, primary_value) =
                futures::future::join(backend.query(&planned.canary), backend.query(primary)).await;
            (canary_value, Some(primary_value))
        }
    }
}

/// The tick's result from the queried values: the threshold check on the canary value,
/// and for a comparison metric, a primary value that must have been read too.
fn judge_values(
    metric: &CanaryMetric,
    canary_value: Result<f64, String>,
    primary_value: Option<Result<f64, String>>,
) -> MetricResult {
    let value = match canary_value {
        Ok(value) => value,
        Err(message) => return failed(metric, message),
    };
    let (passed, mut message) = check_threshold(metric, value);
    let primary_value = match primary_value {
        None => None,
        Some(Ok(primary)) => Some(primary),
        Some(Err(error)) => {
            return MetricResult {
                name: metric.name.clone(),
                value: Some(value),
                primary_value: None,
                outcome: MetricOutcome::Failed,
                message: format!("the primary's value for the comparison could not be read: {error}"),
            };
        }
    };
    if let Some(primary) = primary_value {
        message.push_str(&format!(" (primary {primary})"));
    }
    MetricResult {
        name: metric.name.clone(),
        value: Some(value),
        primary_value,
        outcome: MetricOutcome::from_passed(passed),
        message,
    }
}

/// The accepted range of a metric: `thresholdRange`, or the deprecated `threshold` as
/// its maximum. `None` when the metric sets neither (it is then judged by its comparison
/// alone, or only recorded).
pub fn threshold_range(metric: &CanaryMetric) -> Option<ThresholdRange> {
    match (&metric.threshold_range, metric.threshold) {
        (Some(range), _) => Some(ThresholdRange { min: range.min, max: range.max }),
        (None, Some(max)) => Some(ThresholdRange { min: None, max: Some(max) }),
        (None, None) => None,
    }
}

/// Checks `value` against the metric's threshold; `(passed, message)`.
pub fn check_threshold(metric: &CanaryMetric, value: f64) -> (bool, String) {
    if !value.is_finite() {
        return (false, format!("value {value} is not a number"));
    }
    let Some(range) = threshold_range(metric) else {
        return (true, format!("value {value} (no threshold set)"));
    };
    match range.check(value) {
        Verdict::Pass => (true, format!("value {value} within {}", describe_range(&range))),
        Verdict::Fail(reason) | Verdict::Pending(reason) | Verdict::Inconclusive(reason) => (false, reason),
    }
}

fn describe_range(range: &ThresholdRange) -> String {
    let bound = |b: Option<f64>| b.map_or("-".to_string(), |b| b.to_string());
    format!("[{}, {}]", bound(range.min), bound(range.max))
}

/// The template variables of `metric` for `canary` (the canary side).
pub fn query_vars(canary: &Canary, metric: &CanaryMetric) -> QueryVars {
    let spec = &canary.spec;
    let target = spec.target_ref.name.clone();
    let interval = metric_interval_text(spec, metric).unwrap_or(DEFAULT_METRIC_INTERVAL).to_string();
    QueryVars {
        name: canary.metadata.name.clone().unwrap_or_default(),
        namespace: canary.metadata.namespace.clone().unwrap_or_default(),
        service: spec.service.name.clone().unwrap_or_else(|| target.clone()),
        target,
        ingress: spec.ingress_ref.as_ref().map(|r| r.name.clone()),
        route: spec.route_ref.as_ref().map(|r| r.name.clone()),
        interval,
        variables: metric.template_variables.clone(),
    }
}

/// The same variables with the primary as the target, for comparison queries.
fn primary_vars(vars: &QueryVars) -> QueryVars {
    QueryVars { target: format!("{}-primary", vars.target), ..vars.clone() }
}

/// For a Knative target the revisions are the workloads, and `route` names one (as in
/// Flagger's Knative query): the revision under analysis, or the promoted one for the
/// primary side. Other targets keep their variables.
fn with_knative_revisions(
    canary: &Canary,
    provider: Provider,
    canary_vars: QueryVars,
    primary: QueryVars,
) -> (QueryVars, QueryVars) {
    if provider != Provider::Knative {
        return (canary_vars, primary);
    }
    let status = canary.status.as_ref();
    let analysed = status.and_then(|s| s.last_applied_spec.clone());
    let promoted = status.and_then(|s| s.last_promoted_spec.clone());
    (QueryVars { route: analysed, ..canary_vars }, QueryVars { route: promoted, ..primary })
}

/// The Prometheus of the builtin metrics and inline queries.
fn builtin_prometheus<S>(deps: &MetricDeps<S>, canary: &Canary) -> Result<ProviderConfig, String> {
    let address =
        canary.spec.metrics_server.clone().or_else(|| deps.default_metrics_server.clone()).ok_or_else(|| {
            "no Prometheus to query: set spec.metricsServer or the operator's --metrics-server".to_string()
        })?;
    let mut config = ProviderConfig::new(ProviderKind::Prometheus, address);
    config.timeout = Some(deps.query_timeout);
    config.egress = egress_for(deps, &config.address);
    Ok(config)
}

/// The egress policy for a backend at `address`: none for the operator's own
/// `--metrics-server`, whoever names it, the operator's policy for anything else.
fn egress_for<S>(deps: &MetricDeps<S>, address: &str) -> EgressPolicy {
    if deps.default_metrics_server.as_deref() == Some(address) {
        EgressPolicy::unrestricted()
    } else {
        deps.egress.clone()
    }
}

async fn plan_query<S: MetricSource>(
    deps: &MetricDeps<S>,
    canary: &Canary,
    provider: Provider,
    metric: &CanaryMetric,
) -> Result<PlannedQuery, String> {
    let base = query_vars(canary, metric);
    let (vars, primary_side) = with_knative_revisions(canary, provider, base.clone(), primary_vars(&base));
    let compares = metric.comparison.is_some();

    if let Some(template_ref) = &metric.template_ref {
        let namespace = template_ref.namespace.clone().unwrap_or_else(|| vars.namespace.clone());
        let template = deps
            .source
            .metric_template(&namespace, &template_ref.name)
            .await
            .map_err(|error| format!("cannot use MetricTemplate: {error}"))?;
        let secret = match &template.spec.provider.secret_ref {
            None => None,
            Some(secret_ref) => Some(deps.source.secret(&namespace, &secret_ref.name).await.map_err(|error| {
                format!("cannot read the Secret of MetricTemplate {namespace}/{}: {error}", template_ref.name)
            })?),
        };
        let fallback = builtin_prometheus(deps, canary).ok().map(|config| config.address);
        let interval = parse_duration(&vars.interval).map_err(|error| format!("metric interval: {error}"))?;
        let mut config =
            template_provider_config(&template.spec.provider, secret.as_ref(), fallback, deps.query_timeout, interval)
                .map_err(|error| format!("MetricTemplate {namespace}/{}: {error}", template_ref.name))?;
        config.egress = egress_for(deps, &config.address);
        let language = QueryLanguage::of(config.kind);
        let render = async |vars: &QueryVars| {
            render_off_runtime(&template.spec.query, vars, language)
                .await
                .map_err(|error| format!("MetricTemplate {namespace}/{}: {error}", template_ref.name))
        };
        let primary = if compares { Some(render(&primary_side).await?) } else { None };
        let secrets = secret
            .iter()
            .flat_map(|data| data.values())
            .flat_map(|value| secret_fragments(&String::from_utf8_lossy(value)))
            .collect();
        return Ok(PlannedQuery { config, canary: render(&vars).await?, primary, secrets });
    }

    if let Some(query) = &metric.query {
        if compares {
            return Err("a comparison needs a templateRef or a builtin metric: an inline query names no primary".into());
        }
        return Ok(PlannedQuery {
            config: builtin_prometheus(deps, canary)?,
            canary: query.clone(),
            primary: None,
            secrets: Vec::new(),
        });
    }

    let builtin = BuiltinMetric::from_name(&metric.name).map_err(|error| error.to_string())?;
    let mesh: Mesh = provider.as_str().parse().map_err(|error: metrics_providers::BuiltinError| error.to_string())?;
    let canary_query = builtin_query(mesh, builtin, &vars).map_err(|error| error.to_string())?;
    let primary = if compares {
        // Knative selects a side by its revision (in `route`), not by a `-primary` name.
        let primary = if provider == Provider::Knative {
            builtin_query(mesh, builtin, &primary_side)
        } else {
            builtin_query_primary(mesh, builtin, &vars)
        };
        Some(primary.map_err(|error| error.to_string())?)
    } else {
        None
    };
    Ok(PlannedQuery { config: builtin_prometheus(deps, canary)?, canary: canary_query, primary, secrets: Vec::new() })
}

/// How to reach a MetricTemplate's backend.
///
/// The Secret's `address` key overrides `spec.provider.address`; with neither, a
/// `prometheus` template uses the Prometheus of the builtin metrics (`fallback_address`),
/// and the backends with a default address (Datadog, New Relic, CloudWatch, Google Cloud
/// Monitoring) use it. The whole Secret goes to the backend, which reads its own keys;
/// for the backends that take a bearer token or basic authentication (prometheus, http,
/// graphite) they are also resolved here from `token`, or `username` and `password`.
pub fn template_provider_config(
    spec: &MetricProviderSpec,
    secret: Option<&SecretData>,
    fallback_address: Option<String>,
    timeout: Duration,
    interval: Duration,
) -> Result<ProviderConfig, String> {
    // The CRD spells the generic JSON backend `http`, the provider crate `http-json`.
    let kind: ProviderKind = match spec.type_.as_str() {
        "http" => ProviderKind::HttpJson,
        other => other.parse().map_err(|error: metrics_providers::UnknownProviderKind| error.to_string())?,
    };
    let secret_address = match secret.and_then(|data| data.get("address")) {
        None => None,
        Some(bytes) => Some(
            String::from_utf8(bytes.clone()).map_err(|_| "the Secret's \"address\" is not UTF-8 text".to_string())?,
        ),
    };
    let address = secret_address.or_else(|| spec.address.clone()).or(if kind == ProviderKind::Prometheus {
        fallback_address
    } else {
        None
    });
    let address = match (address, kind) {
        (Some(address), _) => address,
        (None, ProviderKind::Prometheus | ProviderKind::HttpJson) => {
            return Err(format!(
                "provider {} has no address (spec.provider.address or the Secret's \"address\")",
                spec.type_
            ));
        }
        // The backend uses its default address, or says that it needs one.
        (None, _) => String::new(),
    };
    let takes_http_credentials =
        matches!(kind, ProviderKind::Prometheus | ProviderKind::HttpJson | ProviderKind::Graphite);
    let credentials = match secret {
        Some(data)
            if takes_http_credentials
                && ["token", "username", "password"].iter().any(|key| data.contains_key(*key)) =>
        {
            Credentials::from_secret_data(data).map_err(|error| error.to_string())?
        }
        _ => Credentials::None,
    };
    let headers: BTreeMap<String, String> =
        spec.headers.iter().map(|(name, values)| (name.clone(), values.join(", "))).collect();
    Ok(ProviderConfig {
        kind,
        address,
        credentials,
        secret: secret.map(|data| metrics_providers::SecretData::from(data.clone())),
        region: spec.region.clone(),
        interval,
        headers,
        timeout: Some(timeout),
        insecure_skip_verify: spec.insecure_skip_verify,
        // The caller decides, knowing which address is the operator's own.
        egress: EgressPolicy::strict(),
    })
}

/// The first MetricTemplate metric whose backend cannot work as configured, as a message
/// for a Stalled condition: what can be seen before any query (a Secret or a key of it
/// that is missing, an address that is not a URL, an unknown region, a provider petrel
/// cannot query). Missing MetricTemplates are left to the caller's own check.
pub async fn invalid_metric_provider<S: MetricSource>(deps: &MetricDeps<S>, canary: &Canary) -> Option<String> {
    let metrics = canary.spec.analysis.iter().flat_map(|analysis| &analysis.metrics);
    for metric in metrics.filter(|metric| metric.template_ref.is_some()) {
        let template_exists = match &metric.template_ref {
            Some(template_ref) => {
                let namespace = template_ref.namespace.clone().unwrap_or_else(|| query_vars(canary, metric).namespace);
                deps.source.metric_template(&namespace, &template_ref.name).await.is_ok()
            }
            None => false,
        };
        if !template_exists {
            continue;
        }
        let message = match plan_query(deps, canary, Provider::Kubernetes, metric).await {
            Err(message) => Some(message),
            Ok(planned) if planned.config.kind == ProviderKind::Keptn => None,
            Ok(planned) => {
                build_provider(&planned.config).err().map(|error| describe_failure(planned.config.kind, &error))
            }
        };
        if let Some(message) = message {
            return Some(format!("metric {}: {message}", metric.name));
        }
    }
    None
}

/// The statistical verdict of a comparison metric over the samples of the run so far,
/// with a message for the Event.
///
/// Pending until both sides have `minSamples` finite values (NaN and infinite values,
/// such as a ratio over no requests, do not count); then failed when the canary is
/// significantly worse than the primary in `direction` (Mann-Whitney U at `alpha`),
/// passed otherwise. Never passed while values are missing.
pub fn judge_comparison(samples: &ComparisonSamples, cfg: &MetricComparison) -> (MetricOutcome, String) {
    let config = CompareConfig {
        direction: match cfg.direction {
            ComparisonDirection::Increase => Direction::Increase,
            ComparisonDirection::Decrease => Direction::Decrease,
            ComparisonDirection::Either => Direction::Either,
        },
        alpha: cfg.alpha.unwrap_or(DEFAULT_ALPHA),
        min_samples: cfg.min_samples(),
        min_shift: 0.0,
    };
    let comparison = compare(&samples.canary, &samples.primary, &config);
    let counts = format!("{} canary and {} primary values", comparison.canary_samples, comparison.baseline_samples);
    match comparison.verdict {
        Verdict::Pass => (
            MetricOutcome::Passed,
            format!(
                "canary not significantly worse than the primary (Mann-Whitney p={:.4}, {counts})",
                comparison.p_value.unwrap_or(1.0)
            ),
        ),
        Verdict::Fail(reason) => (MetricOutcome::Failed, format!("{reason}, {counts}")),
        Verdict::Pending(_) => (
            MetricOutcome::Pending,
            format!("comparison with the primary pending: {counts}, {} needed each", config.min_samples),
        ),
        // Only a configuration problem (alpha) gets here: it cannot get better.
        Verdict::Inconclusive(reason) => (MetricOutcome::Failed, format!("comparison could not be judged: {reason}")),
    }
}

/// Applies the comparison verdicts to this tick's `results` without storing anything:
/// each comparison metric is judged over `recorded` (the samples of the run so far, as
/// in `status.comparisonSamples`) plus this tick's values.
///
/// For a caller whose state machine records the samples itself; otherwise see
/// [`fold_comparisons`].
pub fn apply_comparisons(metrics: &[CanaryMetric], results: &mut [MetricResult], recorded: &[ComparisonSamples]) {
    fold_comparisons(metrics, results, recorded, usize::MAX);
}

/// Records this tick's values of the comparison metrics and applies their verdicts.
///
/// Returns the new `status.comparisonSamples`: one entry per comparison metric, the
/// previous values plus this tick's (when both sides were read), keeping the last
/// `max_samples` per side. Each comparison metric's outcome becomes its threshold
/// outcome together with the comparison's ([`MetricOutcome::and`]): a failure wins,
/// then pending; the comparison's note is added to the message.
pub fn fold_comparisons(
    metrics: &[CanaryMetric],
    results: &mut [MetricResult],
    previous: &[ComparisonSamples],
    max_samples: usize,
) -> Vec<ComparisonSamples> {
    let mut next = Vec::new();
    for metric in metrics {
        let Some(comparison) = &metric.comparison else {
            continue;
        };
        let mut samples = previous
            .iter()
            .find(|s| s.name == metric.name)
            .cloned()
            .unwrap_or_else(|| ComparisonSamples { name: metric.name.clone(), ..Default::default() });
        if let Some(result) = results.iter_mut().find(|r| r.name == metric.name) {
            if let (Some(canary), Some(primary)) = (result.value, result.primary_value) {
                samples.canary.push(canary);
                samples.primary.push(primary);
                let keep_last = |values: &mut Vec<f64>| {
                    let excess = values.len().saturating_sub(max_samples);
                    values.drain(..excess);
                };
                keep_last(&mut samples.canary);
                keep_last(&mut samples.primary);
            }
            let (outcome, message) = judge_comparison(&samples, comparison);
            result.outcome = result.outcome.and(outcome);
            result.message = if result.message.is_empty() { message } else { format!("{}; {message}", result.message) };
        }
        next.push(samples);
    }
    next
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::extract::{Query, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::get;
    use serde_json::{Value, json};

    use super::*;
    use crate::analysis::SourceError;
    use crate::api::MetricTemplate;
    use crate::api::canary::{CanaryAnalysis, CanarySpec, TargetRef, TemplateRef, ThresholdRangeSpec};
    use crate::api::common::SecretRef;
    use crate::api::metric_template::MetricTemplateSpec;

    // ---- pure parts ----

    fn metric(name: &str) -> CanaryMetric {
        CanaryMetric { name: name.into(), ..Default::default() }
    }

    fn range(min: Option<f64>, max: Option<f64>) -> Option<ThresholdRangeSpec> {
        Some(ThresholdRangeSpec { min, max })
    }

    fn canary(metrics: Vec<CanaryMetric>) -> Canary {
        let mut canary = Canary::new(
            "podinfo",
            CanarySpec {
                target_ref: TargetRef {
                    api_version: "apps/v1".into(),
                    kind: "Deployment".into(),
                    name: "podinfo".into(),
                },
                analysis: Some(CanaryAnalysis { interval: Some("30s".into()), metrics, ..Default::default() }),
                ..Default::default()
            },
        );
        canary.metadata.namespace = Some("test".into());
        canary
    }

    #[test]
    fn threshold_range_wins_over_the_deprecated_threshold() {
        let mut m = metric("x");
        m.threshold = Some(10.0);
        assert_eq!(threshold_range(&m), Some(ThresholdRange { min: None, max: Some(10.0) }));
        m.threshold_range = range(Some(1.0), None);
        assert_eq!(threshold_range(&m), Some(ThresholdRange { min: Some(1.0), max: None }));
        assert_eq!(threshold_range(&metric("x")), None);
    }

    #[test]
    fn threshold_check_is_inclusive_and_never_passes_nan() {
        let mut m = metric("request-success-rate");
        m.threshold_range = range(Some(99.0), None);
        assert!(check_threshold(&m, 99.0).0);
        let (passed, message) = check_threshold(&m, 98.9);
        assert!(!passed);
        assert!(message.contains("98.9") && message.contains("99"), "{message}");
        assert!(!check_threshold(&m, f64::NAN).0);
        assert!(!check_threshold(&metric("no-threshold"), f64::INFINITY).0);
        assert!(check_threshold(&metric("no-threshold"), 3.0).0);
    }

    #[test]
    fn query_vars_follow_the_canary() {
        let mut m = metric("x");
        m.template_variables = BTreeMap::from([("region".to_string(), "eu".to_string())]);
        let mut c = canary(vec![]);
        c.spec.service.name = Some("frontend".into());
        c.spec.ingress_ref = Some(crate::api::common::ObjectRef { name: "web".into(), ..Default::default() });
        let vars = query_vars(&c, &m);
        assert_eq!(
            vars,
            QueryVars {
                name: "podinfo".into(),
                namespace: "test".into(),
                target: "podinfo".into(),
                service: "frontend".into(),
                ingress: Some("web".into()),
                route: None,
                interval: "30s".into(),
                variables: m.template_variables.clone(),
            }
        );
        m.interval = Some("2m".into());
        assert_eq!(query_vars(&c, &m).interval, "2m", "the metric's interval wins");
        c.spec.analysis = None;
        c.spec.service.name = None;
        assert_eq!(query_vars(&c, &metric("x")).interval, DEFAULT_METRIC_INTERVAL);
        assert_eq!(query_vars(&c, &metric("x")).service, "podinfo", "service defaults to the target");
    }

    #[test]
    fn knative_queries_name_the_revisions() {
        let mut c = canary(vec![]);
        c.status = Some(crate::api::canary::CanaryStatus {
            last_applied_spec: Some("podinfo-00002".into()),
            last_promoted_spec: Some("podinfo-00001".into()),
            ..Default::default()
        });
        let base = query_vars(&c, &metric("request-success-rate"));
        let (analysed, primary) = with_knative_revisions(&c, Provider::Knative, base.clone(), primary_vars(&base));
        assert_eq!(
            (analysed.route.as_deref(), primary.route.as_deref()),
            (Some("podinfo-00002"), Some("podinfo-00001"))
        );
        let (kept, _) = with_knative_revisions(&c, Provider::Istio, base.clone(), primary_vars(&base));
        assert_eq!(kept, base, "other providers keep their variables");
    }

    fn secret(pairs: &[(&str, &str)]) -> SecretData {
        pairs.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect()
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn template_config_takes_address_and_credentials_from_the_secret() {
        let spec = MetricProviderSpec {
            type_: "prometheus".into(),
            address: Some("http://spec:9090".into()),
            headers: BTreeMap::from([("X-Scope-OrgID".to_string(), vec!["a".to_string(), "b".to_string()])]),
            ..Default::default()
        };
        let timeout = Duration::from_secs(3);
        let config = template_provider_config(
            &spec,
            Some(&secret(&[("address", "http://secret:9090"), ("token", "t")])),
            None,
            timeout,
            MINUTE,
        )
        .unwrap();
        assert_eq!(config.address, "http://secret:9090");
        assert_eq!(config.credentials, Credentials::Bearer("t".into()));
        assert_eq!(config.headers["X-Scope-OrgID"], "a, b");
        assert_eq!(config.timeout, Some(timeout));

        let only_address =
            template_provider_config(&spec, Some(&secret(&[("address", "http://s")])), None, timeout, MINUTE).unwrap();
        assert_eq!(only_address.credentials, Credentials::None);
        let no_secret = template_provider_config(&spec, None, None, timeout, MINUTE).unwrap();
        assert_eq!(no_secret.address, "http://spec:9090");
        let half_basic = template_provider_config(&spec, Some(&secret(&[("username", "u")])), None, timeout, MINUTE);
        assert!(half_basic.unwrap_err().contains("password"));
    }

    #[test]
    fn template_config_address_fallback_is_for_prometheus_only() {
        let timeout = Duration::from_secs(1);
        let prometheus = MetricProviderSpec { type_: "prometheus".into(), ..Default::default() };
        assert_eq!(
            template_provider_config(&prometheus, None, Some("http://default".into()), timeout, MINUTE)
                .unwrap()
                .address,
            "http://default"
        );
        assert!(template_provider_config(&prometheus, None, None, timeout, MINUTE).unwrap_err().contains("no address"));
        // Other backends get no Prometheus address: their own default, or their error.
        let datadog = MetricProviderSpec { type_: "datadog".into(), ..Default::default() };
        let config = template_provider_config(&datadog, None, Some("http://default".into()), timeout, MINUTE).unwrap();
        assert_eq!(config.address, "");
        let http = MetricProviderSpec { type_: "http".into(), address: Some("http://x".into()), ..Default::default() };
        assert_eq!(template_provider_config(&http, None, None, timeout, MINUTE).unwrap().kind, ProviderKind::HttpJson);
        let unknown =
            MetricProviderSpec { type_: "carrier-pigeon".into(), address: Some("x".into()), ..Default::default() };
        assert!(
            template_provider_config(&unknown, None, None, timeout, MINUTE).unwrap_err().contains("carrier-pigeon")
        );
    }

    #[test]
    fn template_config_hands_the_secret_and_region_to_the_backend() {
        let cloudwatch =
            MetricProviderSpec { type_: "cloudwatch".into(), region: Some("eu-west-1".into()), ..Default::default() };
        let data = secret(&[("aws_access_key_id", "AKIA"), ("aws_secret_access_key", "s"), ("token", "not-bearer")]);
        let config = template_provider_config(&cloudwatch, Some(&data), None, Duration::from_secs(1), MINUTE).unwrap();
        assert_eq!(config.region.as_deref(), Some("eu-west-1"));
        assert_eq!(config.secret, Some(metrics_providers::SecretData::from(data)));
        assert_eq!(config.credentials, Credentials::None, "only prometheus, http and graphite take token/basic auth");
        let graphite =
            MetricProviderSpec { type_: "graphite".into(), address: Some("http://g".into()), ..Default::default() };
        let basic = secret(&[("username", "u"), ("password", "p")]);
        let config = template_provider_config(&graphite, Some(&basic), None, Duration::from_secs(1), MINUTE).unwrap();
        assert_eq!(config.credentials, Credentials::Basic { username: "u".into(), password: "p".into() });
    }

    fn samples(canary: &[f64], primary: &[f64]) -> ComparisonSamples {
        ComparisonSamples { name: "request-duration".into(), canary: canary.to_vec(), primary: primary.to_vec() }
    }

    fn increase() -> MetricComparison {
        MetricComparison { direction: ComparisonDirection::Increase, min_samples: Some(5), ..Default::default() }
    }

    #[test]
    fn comparison_is_pending_not_passed_before_min_samples() {
        let (outcome, message) = judge_comparison(&samples(&[900.0; 4], &[10.0; 9]), &increase());
        assert_eq!(outcome, MetricOutcome::Pending, "{message}");
        assert!(
            message.contains("pending") && message.contains("4 canary") && message.contains("5 needed"),
            "{message}"
        );
        let (outcome, _) = judge_comparison(&samples(&[900.0, 901.0, 902.0, 903.0, f64::NAN], &[10.0; 9]), &increase());
        assert_eq!(outcome, MetricOutcome::Pending, "NaN samples do not count towards minSamples");
        let (outcome, _) = judge_comparison(&samples(&[100.0; 9], &[100.0; 4]), &increase());
        assert_eq!(outcome, MetricOutcome::Pending, "the primary needs minSamples too");
        let (outcome, _) = judge_comparison(&samples(&[], &[]), &MetricComparison::default());
        assert_eq!(outcome, MetricOutcome::Pending, "no values at all");
    }

    #[test]
    fn comparison_fails_a_clearly_worse_canary_in_the_bad_direction_only() {
        let slow = [200.0, 210.0, 205.0, 220.0, 215.0, 208.0, 212.0];
        let fast = [100.0, 102.0, 98.0, 101.0, 99.0, 103.0, 100.5];
        let (outcome, message) = judge_comparison(&samples(&slow, &fast), &increase());
        assert_eq!(outcome, MetricOutcome::Failed, "{message}");
        assert!(message.contains("higher") && message.contains("7 canary"), "{message}");

        let (outcome, message) = judge_comparison(&samples(&fast, &slow), &increase());
        assert_eq!(outcome, MetricOutcome::Passed, "a faster canary is not a regression: {message}");

        let decrease = MetricComparison { direction: ComparisonDirection::Decrease, ..increase() };
        assert_eq!(judge_comparison(&samples(&fast, &slow), &decrease).0, MetricOutcome::Failed);
        let either = MetricComparison { direction: ComparisonDirection::Either, ..increase() };
        assert_eq!(judge_comparison(&samples(&fast, &slow), &either).0, MetricOutcome::Failed);
    }

    #[test]
    fn comparison_passes_similar_samples() {
        let a = [100.0, 102.0, 98.0, 101.0, 99.0, 103.0];
        let b = [101.0, 99.5, 100.0, 102.5, 98.5, 100.5];
        let (outcome, message) = judge_comparison(&samples(&a, &b), &increase());
        assert_eq!(outcome, MetricOutcome::Passed, "{message}");
        assert!(message.contains("p="), "{message}");
        // Equal histograms as Prometheus answered for them in an end-to-end run.
        let (outcome, message) = judge_comparison(&samples(&[19.950000000000003; 5], &[19.95; 5]), &increase());
        assert_eq!(outcome, MetricOutcome::Passed, "equal but for float noise: {message}");
    }

    #[test]
    fn fold_comparisons_appends_bounds_and_judges() {
        let mut m = metric("request-duration");
        m.comparison = Some(MetricComparison { min_samples: Some(3), ..increase() });
        let metrics = vec![m, metric("plain")];
        let previous = vec![samples(&[200.0, 210.0, 205.0, 220.0], &[100.0, 101.0, 99.0, 100.0])];
        let mut results = vec![
            MetricResult {
                name: "request-duration".into(),
                value: Some(230.0),
                primary_value: Some(102.0),
                outcome: MetricOutcome::Passed,
                message: "value 230".into(),
            },
            MetricResult {
                name: "plain".into(),
                value: Some(1.0),
                outcome: MetricOutcome::Passed,
                ..Default::default()
            },
        ];

        let next = fold_comparisons(&metrics, &mut results, &previous, 4);

        assert_eq!(next, vec![samples(&[210.0, 205.0, 220.0, 230.0], &[101.0, 99.0, 100.0, 102.0])]);
        assert!(results[0].failed(), "{}", results[0].message);
        assert!(results[0].message.starts_with("value 230; "), "{}", results[0].message);
        assert!(results[1].passed(), "metrics without comparison are untouched");
    }

    #[test]
    fn apply_comparisons_judges_recorded_plus_this_tick_and_leaves_no_state() {
        let mut m = metric("request-duration");
        m.comparison = Some(MetricComparison { min_samples: Some(5), ..increase() });
        let recorded = vec![samples(&[200.0, 210.0, 205.0, 220.0], &[100.0, 101.0, 99.0, 100.0])];
        let tick = |value| MetricResult {
            name: "request-duration".into(),
            value: Some(value),
            primary_value: Some(100.5),
            outcome: MetricOutcome::Passed,
            message: String::new(),
        };

        let mut results = vec![tick(230.0)];
        apply_comparisons(std::slice::from_ref(&m), &mut results, &recorded);
        assert!(results[0].failed(), "5th sample reaches minSamples: {}", results[0].message);

        let mut results = vec![tick(230.0)];
        apply_comparisons(std::slice::from_ref(&m), &mut results, &[]);
        assert!(results[0].pending(), "one sample is pending, not passed: {}", results[0].message);
        assert!(results[0].message.contains("pending"), "{}", results[0].message);

        // A failed threshold stays failed while the comparison is pending.
        let mut results = vec![MetricResult { outcome: MetricOutcome::Failed, ..tick(230.0) }];
        apply_comparisons(std::slice::from_ref(&m), &mut results, &[]);
        assert!(results[0].failed(), "{}", results[0].message);
    }

    #[test]
    fn fold_comparisons_skips_ticks_without_both_values() {
        let mut m = metric("request-duration");
        m.comparison = Some(increase());
        let mut results = vec![MetricResult {
            name: "request-duration".into(),
            outcome: MetricOutcome::Failed,
            ..Default::default()
        }];
        let next = fold_comparisons(&[m], &mut results, &[], 10);
        assert_eq!(next, vec![ComparisonSamples { name: "request-duration".into(), ..Default::default() }]);
        assert!(results[0].failed(), "a pending comparison never turns a failed tick into a pass or pending");
    }

    // ---- against a fake Prometheus ----

    /// Per request: the query and the Authorization header.
    type Queries = Arc<Mutex<Vec<(String, Option<String>)>>>;

    /// Queries received, and the answer per query substring (first match wins).
    #[derive(Clone, Default)]
    struct FakePrometheus {
        queries: Queries,
        answers: Arc<Vec<(&'static str, StatusCode, Value)>>,
        /// How long every answer takes.
        delay: Duration,
    }

    async fn prometheus_query(
        State(fake): State<FakePrometheus>,
        headers: HeaderMap,
        Query(params): Query<HashMap<String, String>>,
    ) -> (StatusCode, axum::Json<Value>) {
        let query = params.get("query").cloned().unwrap_or_default();
        let auth = headers.get("authorization").map(|v| v.to_str().unwrap_or_default().to_string());
        fake.queries.lock().unwrap().push((query.clone(), auth));
        tokio::time::sleep(fake.delay).await;
        for (needle, status, body) in fake.answers.iter() {
            if query.contains(needle) {
                return (*status, axum::Json(body.clone()));
            }
        }
        (StatusCode::OK, axum::Json(vector(&[])))
    }

    fn vector(values: &[&str]) -> Value {
        let result: Vec<Value> = values.iter().map(|v| json!({"metric": {}, "value": [1_700_000_000.0, v]})).collect();
        json!({"status": "success", "data": {"resultType": "vector", "result": result}})
    }

    async fn serve(fake: FakePrometheus) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let app = Router::new().route("/api/v1/query", get(prometheus_query)).with_state(fake);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{address}")
    }

    #[derive(Clone, Default)]
    struct FakeSource {
        templates: BTreeMap<(String, String), MetricTemplate>,
        secrets: BTreeMap<(String, String), SecretData>,
        keptn_metrics: BTreeMap<(String, String), Value>,
    }

    impl MetricSource for FakeSource {
        async fn metric_template(&self, namespace: &str, name: &str) -> Result<MetricTemplate, SourceError> {
            self.templates.get(&(namespace.into(), name.into())).cloned().ok_or(SourceError::NotFound {
                kind: "MetricTemplate",
                namespace: namespace.into(),
                name: name.into(),
            })
        }

        async fn secret(&self, namespace: &str, name: &str) -> Result<SecretData, SourceError> {
            self.secrets.get(&(namespace.into(), name.into())).cloned().ok_or(SourceError::NotFound {
                kind: "Secret",
                namespace: namespace.into(),
                name: name.into(),
            })
        }

        async fn keptn_metric(&self, namespace: &str, name: &str) -> Result<Value, SourceError> {
            self.keptn_metrics.get(&(namespace.into(), name.into())).cloned().ok_or(SourceError::NotFound {
                kind: "KeptnMetric",
                namespace: namespace.into(),
                name: name.into(),
            })
        }
    }

    fn provider_template(type_: &str, address: Option<&str>, secret: Option<&str>, query: &str) -> MetricTemplateSpec {
        MetricTemplateSpec {
            provider: MetricProviderSpec {
                type_: type_.into(),
                address: address.map(String::from),
                secret_ref: secret.map(|name| SecretRef { name: name.into() }),
                region: (type_ == "cloudwatch").then(|| "us-east-1".to_string()),
                ..Default::default()
            },
            query: query.into(),
        }
    }

    /// A fake Datadog that answers one series when both keys arrive.
    async fn serve_datadog() -> (String, Queries) {
        async fn query(
            State(seen): State<Queries>,
            headers: HeaderMap,
            Query(params): Query<HashMap<String, String>>,
        ) -> (StatusCode, axum::Json<Value>) {
            let key = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(String::from);
            seen.lock().unwrap().push((params.get("query").cloned().unwrap_or_default(), key("dd-api-key")));
            if key("dd-api-key").as_deref() != Some("dd-api-key-value")
                || key("dd-application-key").as_deref() != Some("dd-app-key-value")
            {
                return (StatusCode::FORBIDDEN, axum::Json(json!({"errors": ["Forbidden"]})));
            }
            let value = if params["query"].contains("podinfo-primary") { 1.0 } else { 0.5 };
            let body = json!({"status": "ok", "series": [{"pointlist": [[1_700_000_000_000.0_f64, value]]}]});
            (StatusCode::OK, axum::Json(body))
        }
        let seen = Queries::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let app = Router::new().route("/api/v1/query", get(query)).with_state(seen.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{address}"), seen)
    }

    fn template(namespace: &str, name: &str, spec: MetricTemplateSpec) -> ((String, String), MetricTemplate) {
        let mut template = MetricTemplate::new(name, spec);
        template.metadata.namespace = Some(namespace.into());
        ((namespace.into(), name.into()), template)
    }

    fn deps(source: FakeSource, prometheus: Option<String>) -> MetricDeps<FakeSource> {
        MetricDeps {
            source,
            default_metrics_server: prometheus,
            query_timeout: Duration::from_secs(2),
            egress: EgressPolicy::strict().allowing_loopback(),
        }
    }

    fn template_metric(name: &str, template: &str, namespace: Option<&str>) -> CanaryMetric {
        CanaryMetric {
            name: name.into(),
            template_ref: Some(TemplateRef { name: template.into(), namespace: namespace.map(String::from) }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn builtin_metrics_query_the_mesh_series_and_check_thresholds() {
        let fake = FakePrometheus {
            answers: Arc::new(vec![
                ("histogram_quantile", StatusCode::OK, vector(&["250"])),
                ("istio_requests_total", StatusCode::OK, vector(&["99.5"])),
            ]),
            ..Default::default()
        };
        let url = serve(fake.clone()).await;
        let mut success = metric("request-success-rate");
        success.threshold_range = range(Some(99.0), None);
        let mut duration = metric("request-duration");
        duration.threshold_range = range(None, Some(200.0));

        let results =
            run_metrics(&deps(FakeSource::default(), Some(url)), &canary(vec![success, duration]), Provider::Istio)
                .await;

        assert_eq!(results.len(), 2);
        assert_eq!(
            (results[0].name.as_str(), results[0].value, results[0].passed()),
            ("request-success-rate", Some(99.5), true)
        );
        assert_eq!(
            (results[1].name.as_str(), results[1].value, results[1].passed()),
            ("request-duration", Some(250.0), false)
        );
        assert!(results[1].message.contains("250") && results[1].message.contains("200"), "{}", results[1].message);
        let queries = fake.queries.lock().unwrap();
        assert!(
            queries.iter().all(|(q, _)| q.contains("destination_workload=\"podinfo\"") && q.contains("[30s]")),
            "{queries:?}"
        );
    }

    #[tokio::test]
    async fn no_traffic_yet_is_a_failed_check() {
        let url = serve(FakePrometheus::default()).await;
        let mut success = metric("request-success-rate");
        success.threshold_range = range(Some(99.0), None);

        let results =
            run_metrics(&deps(FakeSource::default(), Some(url)), &canary(vec![success]), Provider::Linkerd).await;

        assert!(results[0].failed());
        assert_eq!(results[0].value, None);
        assert!(results[0].message.contains("no data"), "{}", results[0].message);
    }

    #[tokio::test]
    async fn nan_and_server_errors_are_failed_checks() {
        let fake = FakePrometheus {
            answers: Arc::new(vec![
                ("istio_requests_total", StatusCode::OK, vector(&["NaN"])),
                ("histogram_quantile", StatusCode::SERVICE_UNAVAILABLE, json!("upstream overloaded")),
            ]),
            ..Default::default()
        };
        let url = serve(fake).await;
        let results = run_metrics(
            &deps(FakeSource::default(), Some(url)),
            &canary(vec![metric("request-success-rate"), metric("request-duration")]),
            Provider::Istio,
        )
        .await;
        assert!(results[0].failed() && results[0].message.contains("NaN"), "{}", results[0].message);
        assert!(results[1].failed() && results[1].message.contains("503"), "{}", results[1].message);
    }

    #[tokio::test]
    async fn unknown_builtin_and_missing_prometheus_are_failed_checks() {
        let results = run_metrics(
            &deps(FakeSource::default(), None),
            &canary(vec![metric("error-budget"), metric("request-duration")]),
            Provider::Istio,
        )
        .await;
        assert!(results[0].failed() && results[0].message.contains("not a builtin metric"), "{}", results[0].message);
        assert!(results[1].failed() && results[1].message.contains("--metrics-server"), "{}", results[1].message);
    }

    #[tokio::test]
    async fn the_canary_metrics_server_overrides_the_default() {
        let fake = FakePrometheus {
            answers: Arc::new(vec![("istio_requests_total", StatusCode::OK, vector(&["100"]))]),
            ..Default::default()
        };
        let url = serve(fake.clone()).await;
        let mut c = canary(vec![metric("request-success-rate")]);
        c.spec.metrics_server = Some(url);
        let results =
            run_metrics(&deps(FakeSource::default(), Some("http://127.0.0.1:1".into())), &c, Provider::Istio).await;
        assert!(results[0].passed(), "{}", results[0].message);
        assert_eq!(fake.queries.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn templates_render_variables_and_use_secret_credentials() {
        let fake = FakePrometheus {
            answers: Arc::new(vec![("errors_total", StatusCode::OK, vector(&["0.5"]))]),
            ..Default::default()
        };
        let url = serve(fake.clone()).await;
        let spec = MetricTemplateSpec {
            provider: MetricProviderSpec {
                type_: "prometheus".into(),
                address: Some("http://127.0.0.1:1".into()),
                secret_ref: Some(SecretRef { name: "prom-auth".into() }),
                ..Default::default()
            },
            query: "sum(rate(errors_total{namespace=\"{{ namespace }}\",app=\"{{ target }}\",region=\"{{ variables.region }}\"}[{{ interval }}]))".into(),
        };
        let source = FakeSource {
            templates: BTreeMap::from([template("monitoring", "errors", spec)]),
            secrets: BTreeMap::from([(
                ("monitoring".to_string(), "prom-auth".to_string()),
                secret(&[("address", &url), ("token", "s3cret")]),
            )]),
            ..Default::default()
        };
        let mut m = template_metric("errors", "errors", Some("monitoring"));
        m.template_variables = BTreeMap::from([("region".to_string(), "eu".to_string())]);
        m.threshold_range = range(None, Some(1.0));

        let results = run_metrics(&deps(source, None), &canary(vec![m]), Provider::Istio).await;

        assert!(results[0].passed(), "{}", results[0].message);
        assert_eq!(results[0].value, Some(0.5));
        let queries = fake.queries.lock().unwrap();
        assert_eq!(
            *queries,
            vec![(
                "sum(rate(errors_total{namespace=\"test\",app=\"podinfo\",region=\"eu\"}[30s]))".to_string(),
                Some("Bearer s3cret".to_string())
            )]
        );
    }

    #[tokio::test]
    async fn missing_template_secret_and_misconfigured_provider_are_failed_checks() {
        let datadog = MetricTemplateSpec {
            provider: MetricProviderSpec {
                type_: "datadog".into(),
                address: Some("https://api.datadoghq.com".into()),
                ..Default::default()
            },
            query: "avg:trace.http.request.errors{*}".into(),
        };
        let needs_secret = MetricTemplateSpec {
            provider: MetricProviderSpec {
                type_: "prometheus".into(),
                address: Some("http://127.0.0.1:1".into()),
                secret_ref: Some(SecretRef { name: "absent".into() }),
                ..Default::default()
            },
            query: "up".into(),
        };
        let source = FakeSource {
            templates: BTreeMap::from([template("test", "dd", datadog), template("test", "auth", needs_secret)]),
            ..Default::default()
        };
        let results = run_metrics(
            &deps(source, None),
            &canary(vec![
                template_metric("gone", "not-there", None),
                template_metric("dd", "dd", None),
                template_metric("auth", "auth", None),
            ]),
            Provider::Istio,
        )
        .await;
        assert!(results.iter().all(|r| r.failed() && r.value.is_none()), "{results:?}");
        assert!(results[0].message.contains("MetricTemplate test/not-there not found"), "{}", results[0].message);
        assert!(
            results[1].message.starts_with("datadog provider: ") && results[1].message.contains("needs a Secret"),
            "{}",
            results[1].message
        );
        assert!(results[2].message.contains("Secret test/absent not found"), "{}", results[2].message);
    }

    #[tokio::test]
    async fn a_template_using_an_unset_variable_is_a_failed_check() {
        let spec = MetricTemplateSpec {
            provider: MetricProviderSpec {
                type_: "prometheus".into(),
                address: Some("http://127.0.0.1:1".into()),
                ..Default::default()
            },
            query: "up{ingress=\"{{ ingress }}\"}".into(),
        };
        let source = FakeSource { templates: BTreeMap::from([template("test", "t", spec)]), ..Default::default() };
        let results =
            run_metrics(&deps(source, None), &canary(vec![template_metric("t", "t", None)]), Provider::Istio).await;
        assert!(results[0].failed() && results[0].message.contains("ingress"), "{}", results[0].message);
    }

    #[tokio::test]
    async fn inline_queries_go_to_prometheus_as_written() {
        let fake = FakePrometheus {
            answers: Arc::new(vec![("my_metric", StatusCode::OK, vector(&["3"]))]),
            ..Default::default()
        };
        let url = serve(fake.clone()).await;
        let mut m = metric("custom");
        m.query = Some("sum(my_metric{a=\"b\"})".into());
        m.threshold = Some(5.0);
        let results = run_metrics(&deps(FakeSource::default(), Some(url)), &canary(vec![m]), Provider::Istio).await;
        assert!(results[0].passed(), "{}", results[0].message);
        assert_eq!(fake.queries.lock().unwrap()[0].0, "sum(my_metric{a=\"b\"})");
    }

    #[tokio::test]
    async fn comparison_queries_the_primary_too() {
        let fake = FakePrometheus {
            answers: Arc::new(vec![
                ("destination_workload=\"podinfo-primary\"", StatusCode::OK, vector(&["120"])),
                ("destination_workload=\"podinfo\"", StatusCode::OK, vector(&["150"])),
            ]),
            ..Default::default()
        };
        let url = serve(fake.clone()).await;
        let mut m = metric("request-duration");
        m.comparison = Some(increase());
        let results = run_metrics(&deps(FakeSource::default(), Some(url)), &canary(vec![m]), Provider::Istio).await;
        assert_eq!((results[0].value, results[0].primary_value, results[0].passed()), (Some(150.0), Some(120.0), true));
        assert_eq!(fake.queries.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn comparison_with_an_unreadable_primary_is_a_failed_check() {
        let fake = FakePrometheus {
            answers: Arc::new(vec![
                ("destination_workload=\"podinfo-primary\"", StatusCode::OK, vector(&[])),
                ("destination_workload=\"podinfo\"", StatusCode::OK, vector(&["150"])),
            ]),
            ..Default::default()
        };
        let url = serve(fake).await;
        let mut m = metric("request-duration");
        m.comparison = Some(increase());
        let results = run_metrics(&deps(FakeSource::default(), Some(url)), &canary(vec![m]), Provider::Istio).await;
        assert!(results[0].failed() && results[0].message.contains("primary"), "{}", results[0].message);
        assert_eq!(results[0].value, Some(150.0));
    }

    #[tokio::test]
    async fn template_comparison_renders_the_primary_as_target() {
        let fake = FakePrometheus {
            answers: Arc::new(vec![
                ("app=\"podinfo-primary\"", StatusCode::OK, vector(&["1"])),
                ("app=\"podinfo\"", StatusCode::OK, vector(&["2"])),
            ]),
            ..Default::default()
        };
        let url = serve(fake).await;
        let spec = MetricTemplateSpec {
            provider: MetricProviderSpec { type_: "prometheus".into(), address: Some(url), ..Default::default() },
            query: "sum(x{app=\"{{ target }}\"})".into(),
        };
        let source = FakeSource { templates: BTreeMap::from([template("test", "x", spec)]), ..Default::default() };
        let mut m = template_metric("x", "x", None);
        m.comparison = Some(increase());
        let results = run_metrics(&deps(source, None), &canary(vec![m]), Provider::Istio).await;
        assert_eq!((results[0].value, results[0].primary_value), (Some(2.0), Some(1.0)), "{}", results[0].message);
    }

    #[tokio::test]
    async fn metrics_of_one_tick_run_concurrently() {
        let fake = FakePrometheus {
            answers: Arc::new(vec![("my_metric", StatusCode::OK, vector(&["1"]))]),
            delay: Duration::from_millis(500),
            ..Default::default()
        };
        let url = serve(fake.clone()).await;
        let metrics = (0..4)
            .map(|i| CanaryMetric {
                name: format!("m{i}"),
                query: Some(format!("sum(my_metric{{i=\"{i}\"}})")),
                ..Default::default()
            })
            .collect();

        let started = std::time::Instant::now();
        let results = run_metrics(&deps(FakeSource::default(), Some(url)), &canary(metrics), Provider::Istio).await;

        assert!(results.iter().all(|r| r.passed()), "{results:?}");
        let names: Vec<&str> = results.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["m0", "m1", "m2", "m3"], "results keep the declaration order");
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "four 500 ms queries one after the other would take 2 s; took {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_slow_metrics_server_is_a_failed_check_after_the_query_timeout() {
        let fake = FakePrometheus {
            answers: Arc::new(vec![("istio_requests_total", StatusCode::OK, vector(&["100"]))]),
            delay: Duration::from_secs(5),
            ..Default::default()
        };
        let url = serve(fake).await;
        let deps = MetricDeps { query_timeout: Duration::from_millis(300), ..deps(FakeSource::default(), Some(url)) };

        let started = std::time::Instant::now();
        let results = run_metrics(&deps, &canary(vec![metric("request-success-rate")]), Provider::Istio).await;

        assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
        assert!(results[0].failed());
        assert!(results[0].message.contains("did not answer within 300ms"), "{}", results[0].message);
    }

    #[tokio::test]
    async fn a_datadog_template_reads_its_keys_from_the_secret_and_compares_with_the_primary() {
        let (address, seen) = serve_datadog().await;
        let spec = provider_template(
            "datadog",
            Some(&address),
            Some("datadog"),
            "sum:trace.http.request.errors{service:{{ target }}}.as_count()",
        );
        let source = FakeSource {
            templates: BTreeMap::from([template("test", "errors", spec)]),
            secrets: BTreeMap::from([(
                ("test".to_string(), "datadog".to_string()),
                secret(&[("datadog_api_key", "dd-api-key-value"), ("datadog_application_key", "dd-app-key-value")]),
            )]),
            ..Default::default()
        };
        let mut m = template_metric("errors", "errors", None);
        m.threshold_range = range(None, Some(1.0));
        m.comparison = Some(increase());

        let results = run_metrics(&deps(source, None), &canary(vec![m]), Provider::Istio).await;

        assert!(results[0].passed(), "{}", results[0].message);
        assert_eq!((results[0].value, results[0].primary_value), (Some(0.5), Some(1.0)));
        let queries: Vec<String> = seen.lock().unwrap().iter().map(|(q, _)| q.clone()).collect();
        assert!(
            queries.contains(&"sum:trace.http.request.errors{service:podinfo}.as_count()".to_string()),
            "{queries:?}"
        );
        assert!(queries.contains(&"sum:trace.http.request.errors{service:podinfo-primary}.as_count()".to_string()));
    }

    fn keptn_metric(value: &str) -> Value {
        json!({
            "apiVersion": "metrics.keptn.sh/v1beta1", "kind": "KeptnMetric",
            "metadata": {"name": "error-rate", "namespace": "keptn-system"},
            "spec": {"provider": {"name": "prometheus"}, "query": "x", "fetchIntervalSeconds": 10},
            "status": {"value": value, "lastUpdated": chrono::Utc::now().to_rfc3339()},
        })
    }

    #[tokio::test]
    async fn a_keptn_template_reads_the_keptn_metric_it_names() {
        let spec = provider_template("keptn", None, None, "keptnmetric/keptn-system/{{ variables.metric }}");
        let source = FakeSource {
            templates: BTreeMap::from([template("test", "keptn", spec)]),
            keptn_metrics: BTreeMap::from([(
                ("keptn-system".to_string(), "error-rate".to_string()),
                keptn_metric("0.5"),
            )]),
            ..Default::default()
        };
        let metric = |name: &str| {
            let mut m = template_metric(name, "keptn", None);
            m.template_variables = BTreeMap::from([("metric".to_string(), name.to_string())]);
            m.threshold_range = range(None, Some(1.0));
            m
        };

        let results =
            run_metrics(&deps(source, None), &canary(vec![metric("error-rate"), metric("absent")]), Provider::Istio)
                .await;

        assert!(results[0].passed(), "{}", results[0].message);
        assert_eq!(results[0].value, Some(0.5));
        assert!(!results[1].passed());
        assert!(
            results[1].message.starts_with("keptn provider: ")
                && results[1].message.contains("keptn-system/absent not found"),
            "{}",
            results[1].message
        );
    }

    #[tokio::test]
    async fn what_a_backend_refuses_before_a_query_is_reported_for_a_stalled_condition() {
        let source = FakeSource {
            templates: BTreeMap::from([
                template("test", "dd", provider_template("datadog", None, Some("dd"), "q")),
                template("test", "cw", provider_template("cloudwatch", None, Some("aws"), "[]")),
                template("test", "mars", {
                    let mut spec = provider_template("cloudwatch", None, Some("aws"), "[]");
                    spec.provider.region = Some("mars-north-1".into());
                    spec
                }),
                template("test", "badurl", provider_template("dynatrace", Some("dynatrace.example"), Some("dt"), "q")),
                template(
                    "test",
                    "nosecret",
                    provider_template("splunk", Some("https://api.us1.signalfx.com"), Some("absent"), "q"),
                ),
                template("test", "keptn", provider_template("keptn", None, None, "keptnmetric/a/b")),
                template("test", "prom", provider_template("prometheus", Some("http://prom:9090"), None, "up")),
                template("test", "external", provider_template("externalmetrics", None, None, "x")),
            ]),
            secrets: BTreeMap::from([
                (("test".to_string(), "dd".to_string()), secret(&[("datadog_api_key", "VERY-SECRET-DD-KEY")])),
                (("test".to_string(), "aws".to_string()), secret(&[("aws_access_key_id", "AKIA-VERY-SECRET")])),
                (("test".to_string(), "dt".to_string()), secret(&[("dynatrace_token", "dt0c01.VERY-SECRET")])),
            ]),
            ..Default::default()
        };
        let deps = deps(source, None);
        let check = |name: &'static str| {
            let deps = deps.clone();
            async move { invalid_metric_provider(&deps, &canary(vec![template_metric(name, name, None)])).await }
        };
        let expectations = [
            (
                "dd",
                "datadog provider: invalid metric provider configuration: the Secret has no key \"datadog_application_key\"",
            ),
            ("cw", "\"aws_secret_access_key\""),
            ("mars", "unknown AWS region \"mars-north-1\""),
            ("badurl", "address"),
            ("nosecret", "Secret test/absent not found"),
            ("external", "externalmetrics"),
        ];
        for (name, expected) in expectations {
            let message = check(name).await.unwrap_or_else(|| panic!("{name}: should be refused"));
            assert!(message.starts_with(&format!("metric {name}: ")), "{message}");
            assert!(message.contains(expected), "{message:?} should contain {expected:?}");
            assert!(!message.contains("VERY-SECRET"), "{message:?} shows a Secret value");
        }
        assert_eq!(check("keptn").await, None);
        assert_eq!(check("prom").await, None);
        assert_eq!(check("missing-template").await, None, "left to the MetricTemplateNotFound check");
    }

    /// Whatever goes wrong, no message of a check shows a value of the template's Secret.
    #[tokio::test]
    async fn secret_values_appear_in_no_check_message() {
        const SECRET_VALUES: [&str; 4] =
            ["Zq9-SECRET-VALUE-one", "Zq9-SECRET-VALUE-two", "Zq9-SECRET-VALUE-three", "Zq9-SECRET-VALUE-four"];
        let service_account_key = json!({
            "client_email": "petrel@podinfo-project.iam.gserviceaccount.com",
            "private_key": include_str!("../../../metrics-providers/tests/fixtures/test-only-rsa-key.pem"),
            "token_uri": "http://127.0.0.1:1/token",
        })
        .to_string();
        let all_keys = [
            ("datadog_api_key", SECRET_VALUES[0]),
            ("datadog_application_key", SECRET_VALUES[1]),
            ("newrelic_account_id", "987654321"),
            ("newrelic_query_key", SECRET_VALUES[2]),
            ("dynatrace_token", SECRET_VALUES[0]),
            ("sf_token_key", SECRET_VALUES[1]),
            ("token", SECRET_VALUES[2]),
            ("org", SECRET_VALUES[3]),
            ("aws_access_key_id", SECRET_VALUES[0]),
            ("aws_secret_access_key", SECRET_VALUES[1]),
            ("project", "podinfo-project"),
            // A key whose token endpoint is nothing listening: no test reaches Google.
            ("serviceAccountKey", &service_account_key),
        ];
        // A Secret without a key each backend needs, and one whose address (a host name
        // /etc/hosts resolves, so no DNS query leaves the machine) has nothing listening.
        let secret_host = "LocalHost";
        let broken_address = format!("http://{secret_host}:1");
        let mut templates = BTreeMap::new();
        let mut metrics = Vec::new();
        for (i, type_) in [
            "datadog",
            "newrelic",
            "graphite",
            "influxdb",
            "cloudwatch",
            "dynatrace",
            "splunk",
            "prometheus",
            "stackdriver",
        ]
        .into_iter()
        .enumerate()
        {
            for (variant, address, secret_name) in [
                ("down", "http://127.0.0.1:1", "full"),
                ("partial", "http://127.0.0.1:1", "partial"),
                ("address", "", "with-address"),
            ] {
                let name = format!("{type_}-{variant}");
                let address = (!address.is_empty()).then_some(address);
                templates.insert(
                    ("test".to_string(), name.clone()),
                    MetricTemplate::new(&name, provider_template(type_, address, Some(secret_name), "up")),
                );
                let mut metric = template_metric(&name, &name, None);
                metric.threshold_range = range(None, Some(i as f64));
                metrics.push(metric);
            }
        }
        let mut with_address = all_keys.to_vec();
        with_address.push(("address", &broken_address));
        let source = FakeSource {
            templates,
            secrets: BTreeMap::from([
                (("test".to_string(), "full".to_string()), secret(&all_keys)),
                (
                    ("test".to_string(), "partial".to_string()),
                    secret(&[("username", SECRET_VALUES[0]), ("dynatrace", SECRET_VALUES[1])]),
                ),
                (("test".to_string(), "with-address".to_string()), secret(&with_address)),
            ]),
            ..Default::default()
        };
        let deps = MetricDeps { query_timeout: Duration::from_millis(500), ..deps(source, None) };
        let canary = canary(metrics);

        let results = run_metrics(&deps, &canary, Provider::Istio).await;
        let stalled = invalid_metric_provider(&deps, &canary).await;

        assert_eq!(results.len(), 27);
        for result in &results {
            assert!(!result.passed(), "{}: {}", result.name, result.message);
        }
        let messages = results.iter().map(|r| r.message.clone()).chain(stalled);
        for message in messages {
            for value in SECRET_VALUES.iter().chain([&secret_host]) {
                // Case-blind: a host comes back lower-cased.
                assert!(!message.to_lowercase().contains(&value.to_lowercase()), "{message:?} shows {value:?}");
            }
        }
    }

    // ---- issue 11 ----

    fn prometheus_template(address: Option<String>, secret: Option<&str>, query: &str) -> MetricTemplateSpec {
        MetricTemplateSpec {
            provider: MetricProviderSpec {
                type_: "prometheus".into(),
                address,
                secret_ref: secret.map(|name| SecretRef { name: name.into() }),
                ..Default::default()
            },
            query: query.into(),
        }
    }

    /// Defect 2: a password in the address a MetricTemplate's Secret holds never reaches
    /// the check's message (which becomes the CheckFailed Event and analysisResults).
    #[tokio::test]
    async fn a_password_in_a_secret_address_never_reaches_the_message() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let address = format!("http://prom-user:pw-5e4d3c2b@127.0.0.1:{closed}/tenant-3f2e1d");
        let bad_address = "http://prom-user:pw-5e4d3c2b@pro m/".to_string();
        // A backend that answers errors by echoing the request (path and credentials).
        async fn echo(uri: axum::http::Uri, headers: HeaderMap) -> (StatusCode, String) {
            let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
            (StatusCode::BAD_GATEWAY, format!("no route for {uri} ({auth})"))
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echoing = format!("http://prom-user:pw-5e4d3c2b@{}/tenant-3f2e1d", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, Router::new().fallback(echo)).await.unwrap() });
        let source = FakeSource {
            templates: BTreeMap::from([
                template("test", "down", prometheus_template(None, Some("auth"), "up")),
                template("test", "bad", prometheus_template(None, Some("bad"), "up")),
                template("test", "echo", prometheus_template(None, Some("echo"), "up")),
            ]),
            secrets: BTreeMap::from([
                (("test".to_string(), "auth".to_string()), secret(&[("address", &address), ("token", "tok-0a9b8c")])),
                (("test".to_string(), "bad".to_string()), secret(&[("address", &bad_address)])),
                (("test".to_string(), "echo".to_string()), secret(&[("address", &echoing), ("token", "tok-0a9b8c")])),
            ]),
            ..Default::default()
        };
        let results = run_metrics(
            &deps(source, None),
            &canary(vec![
                template_metric("down", "down", None),
                template_metric("bad", "bad", None),
                template_metric("echo", "echo", None),
            ]),
            Provider::Istio,
        )
        .await;
        assert!(results.iter().all(|r| !r.passed()), "{results:?}");
        assert!(results[0].message.contains("cannot reach"), "{}", results[0].message);
        assert!(results[2].message.contains("HTTP 502") && results[2].message.contains("<redacted>"), "{results:?}");
        for secret in ["prom-user", "pw-5e4d3c2b", "tenant-3f2e1d", "tok-0a9b8c"] {
            assert!(results.iter().all(|r| !r.message.contains(secret)), "{secret} in {results:?}");
        }
    }

    /// Defect 12: a Canary's own metricsServer and a MetricTemplate's address are held to
    /// the egress policy; the operator's --metrics-server is not, whoever names it.
    #[tokio::test]
    async fn the_egress_policy_applies_to_tenant_addresses_only() {
        let fake =
            FakePrometheus { answers: Arc::new(vec![("up", StatusCode::OK, vector(&["1"]))]), ..Default::default() };
        let operator_prometheus = serve(fake.clone()).await;
        let tenant_prometheus = serve(fake.clone()).await;
        let source = FakeSource {
            templates: BTreeMap::from([
                template("test", "own", prometheus_template(Some(operator_prometheus.clone()), None, "up")),
                template("test", "fallback", prometheus_template(None, None, "up")),
                template("test", "tenant", prometheus_template(Some(tenant_prometheus.clone()), None, "up")),
                template("test", "metadata", prometheus_template(Some("http://169.254.169.254".into()), None, "up")),
            ]),
            ..Default::default()
        };
        let strict = MetricDeps { egress: EgressPolicy::strict(), ..deps(source, Some(operator_prometheus)) };
        let mut inline = metric("inline");
        inline.query = Some("up".into());
        let results = run_metrics(
            &strict,
            &canary(vec![
                template_metric("own", "own", None),
                template_metric("fallback", "fallback", None),
                template_metric("tenant", "tenant", None),
                template_metric("metadata", "metadata", None),
                inline.clone(),
            ]),
            Provider::Istio,
        )
        .await;
        let outcome: Vec<(bool, bool)> =
            results.iter().map(|r| (r.passed(), r.message.contains("egress policy"))).collect();
        assert_eq!(outcome, [(true, false), (true, false), (false, true), (false, true), (true, false)], "{results:?}");

        let mut own_server = canary(vec![inline]);
        own_server.spec.metrics_server = Some(tenant_prometheus);
        let results = run_metrics(&strict, &own_server, Provider::Istio).await;
        assert!(!results[0].passed() && results[0].message.contains("egress policy"), "{results:?}");
    }

    /// Defect 1: the freezing template of the issue, and a loop over a long variable, are
    /// failed checks saying why, quickly; the other metrics of the tick are unaffected.
    #[tokio::test]
    async fn hostile_templates_are_failed_checks_with_a_reason() {
        let fake =
            FakePrometheus { answers: Arc::new(vec![("up", StatusCode::OK, vector(&["1"]))]), ..Default::default() };
        let url = serve(fake).await;
        let freeze = r#"{% set s = "x" * 10000 %}{% for a in s %}{% for b in s %}{% for c in s %}{% endfor %}{% endfor %}{% endfor %}1"#;
        let loops = "{% for a in variables.s %}{% for b in variables.s %}{% for c in variables.s %}{% endfor %}{% endfor %}{% endfor %}up";
        let source = FakeSource {
            templates: BTreeMap::from([
                template("test", "freeze", prometheus_template(Some(url.clone()), None, freeze)),
                template("test", "loops", prometheus_template(Some(url.clone()), None, loops)),
                template("test", "fine", prometheus_template(Some(url.clone()), None, "up")),
            ]),
            ..Default::default()
        };
        let mut looping = template_metric("loops", "loops", None);
        looping.template_variables = BTreeMap::from([("s".to_string(), "x".repeat(10_000))]);
        let started = std::time::Instant::now();
        let results = run_metrics(
            &deps(source, None),
            &canary(vec![template_metric("freeze", "freeze", None), looping, template_metric("fine", "fine", None)]),
            Provider::Istio,
        )
        .await;
        assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
        assert!(!results[0].passed() && results[0].message.contains("the operator `*`"), "{}", results[0].message);
        assert!(!results[1].passed() && results[1].message.contains("steps"), "{}", results[1].message);
        assert!(results[2].passed(), "{}", results[2].message);
    }
}
