//! The Prometheus metrics petrel exports, and how a reconcile records them.
//!
//! Per-Canary series carry `namespace` and `name`, like Flagger's `flagger_canary_*`, so
//! a Flagger dashboard moves over by renaming the prefix. Every series of a Canary is
//! removed when the Canary goes away ([`Metrics::retain_canaries`]), so a deleted Canary
//! does not linger on dashboards at its last weight.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use kube::ResourceExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::api::Canary;
use crate::api::canary::{CanaryStatus, Phase};
use crate::core::strategy::strategy_of;
use crate::core::{Provider, Strategy};

/// `controller` label of the per-cluster Canary controller.
pub const CANARY_CONTROLLER: &str = "canary";

/// Buckets of one reconcile: most are API round trips (milliseconds); a reconcile that
/// runs the analysis waits on metric queries and webhooks (seconds).
const RECONCILE_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Buckets of one analysis tick: queries and webhooks have timeouts of about ten seconds.
const ANALYSIS_BUCKETS: [f64; 10] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct CanaryLabels {
    namespace: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    namespace: String,
    name: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WeightLabels {
    namespace: String,
    name: String,
    workload: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MetricLabels {
    namespace: String,
    name: String,
    metric: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    namespace: String,
    name: String,
    strategy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    controller: String,
    error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiErrorLabels {
    controller: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn reconcile_histogram() -> Histogram {
    Histogram::new(RECONCILE_BUCKETS)
}

fn analysis_histogram() -> Histogram {
    Histogram::new(ANALYSIS_BUCKETS)
}

/// Series a Canary owns besides the fixed ones, so they can be removed with it.
#[derive(Default)]
struct CanarySeries {
    /// Metric names with a `petrel_canary_metric_analysis` series.
    analysis_metrics: BTreeSet<String>,
    /// Strategies with success/failure counters.
    strategies: BTreeSet<String>,
}

/// Every metric petrel exports, registered once at start-up.
pub struct Metrics {
    registry: Registry,
    canary_status: Family<CanaryLabels, Gauge>,
    canary_phase: Family<PhaseLabels, Gauge>,
    canary_weight: Family<WeightLabels, Gauge>,
    canary_failed_checks: Family<CanaryLabels, Gauge>,
    canary_metric_analysis: Family<MetricLabels, Gauge<f64, AtomicU64>>,
    canary_analysis_duration: HistogramFamily<CanaryLabels>,
    canary_successes: Family<OutcomeLabels, Counter>,
    canary_failures: Family<OutcomeLabels, Counter>,
    reconcile_duration: HistogramFamily<ControllerLabels>,
    reconcile_errors: Family<ErrorLabels, Counter>,
    api_errors: Family<ApiErrorLabels, Counter>,
    /// Per Canary, the label values of its variable series. A `Mutex` is enough: it is
    /// held for a few map operations per reconcile, never across an await.
    series: Mutex<BTreeMap<CanaryLabels, CanarySeries>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(env!("CARGO_PKG_VERSION"))
    }
}

impl Metrics {
    /// Registers every metric; `version` goes into `petrel_info`.
    pub fn new(version: &str) -> Self {
        let mut registry = Registry::default();
        let canary_status = Family::<CanaryLabels, Gauge>::default();
        let canary_phase = Family::<PhaseLabels, Gauge>::default();
        let canary_weight = Family::<WeightLabels, Gauge>::default();
        let canary_failed_checks = Family::<CanaryLabels, Gauge>::default();
        let canary_metric_analysis = Family::<MetricLabels, Gauge<f64, AtomicU64>>::default();
        let canary_analysis_duration: HistogramFamily<CanaryLabels> = Family::new_with_constructor(analysis_histogram);
        let canary_successes = Family::<OutcomeLabels, Counter>::default();
        let canary_failures = Family::<OutcomeLabels, Counter>::default();
        let reconcile_duration: HistogramFamily<ControllerLabels> = Family::new_with_constructor(reconcile_histogram);
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let api_errors = Family::<ApiErrorLabels, Counter>::default();

        registry.register(
            "petrel",
            "Version of the running petrel",
            Info::new(VersionLabels { version: version.to_string() }),
        );
        registry.register(
            "petrel_canary_status",
            "Status of a Canary: 0 running, 1 succeeded, 2 failed (Flagger's encoding)",
            canary_status.clone(),
        );
        registry.register(
            "petrel_canary_phase",
            "Phase of a Canary: 1 for the current phase, 0 for the others",
            canary_phase.clone(),
        );
        registry.register(
            "petrel_canary_weight",
            "Percentage of traffic routed to the primary and to the canary",
            canary_weight.clone(),
        );
        registry.register(
            "petrel_canary_failed_checks",
            "Failed checks of the current analysis run",
            canary_failed_checks.clone(),
        );
        registry.register(
            "petrel_canary_metric_analysis",
            "Value of each analysis metric at the last analysis tick",
            canary_metric_analysis.clone(),
        );
        registry.register_with_unit(
            "petrel_canary_analysis_duration",
            "Time one analysis tick took (webhooks and metric queries)",
            Unit::Seconds,
            canary_analysis_duration.clone(),
        );
        registry.register("petrel_canary_successes", "Releases promoted", canary_successes.clone());
        registry.register("petrel_canary_failures", "Releases rolled back", canary_failures.clone());
        registry.register_with_unit(
            "petrel_reconcile_duration",
            "Time one reconcile took",
            Unit::Seconds,
            reconcile_duration.clone(),
        );
        registry.register(
            "petrel_reconcile_errors",
            "Reconciles that failed, by kind of error",
            reconcile_errors.clone(),
        );
        registry.register(
            "petrel_kubernetes_api_errors",
            "Failed Kubernetes API calls that failed a reconcile, by the API server's reason",
            api_errors.clone(),
        );

        Self {
            registry,
            canary_status,
            canary_phase,
            canary_weight,
            canary_failed_checks,
            canary_metric_analysis,
            canary_analysis_duration,
            canary_successes,
            canary_failures,
            reconcile_duration,
            reconcile_errors,
            api_errors,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    /// The registry in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail; an error here could only come from a
        // metric's own encoder, and an empty scrape is the honest answer to that.
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }

    /// Records where a Canary stands after a reconcile wrote `next` over `previous`.
    /// `analysis_time` is the time the analysis tick took, when one ran.
    pub fn observe_canary(
        &self,
        canary: &Canary,
        previous: &CanaryStatus,
        next: &CanaryStatus,
        provider: Provider,
        analysis_time: Option<Duration>,
    ) {
        let key = canary_key(canary);
        let namespace = key.namespace.clone();
        let name = key.name.clone();

        self.canary_status.get_or_create(&key).set(status_code(next.phase));
        for phase in Phase::ALL {
            let labels = PhaseLabels { namespace: namespace.clone(), name: name.clone(), phase: phase.to_string() };
            self.canary_phase.get_or_create(&labels).set(i64::from(phase == next.phase));
        }
        let canary_weight = i64::from(next.canary_weight.clamp(0, 100));
        for (workload, weight) in [("primary", 100 - canary_weight), ("canary", canary_weight)] {
            let labels = WeightLabels { namespace: namespace.clone(), name: name.clone(), workload: workload.into() };
            self.canary_weight.get_or_create(&labels).set(weight);
        }
        self.canary_failed_checks.get_or_create(&key).set(i64::from(next.failed_checks));
        if let Some(elapsed) = analysis_time {
            self.canary_analysis_duration.get_or_create(&key).observe(elapsed.as_secs_f64());
        }

        let strategy = strategy_label(&strategy_of(&canary.spec, provider)).to_string();
        let entered = |phase: Phase| next.phase == phase && previous.phase != phase;
        let outcome = OutcomeLabels { namespace: namespace.clone(), name: name.clone(), strategy: strategy.clone() };
        if entered(Phase::Succeeded) {
            self.canary_successes.get_or_create(&outcome).inc();
        }
        if entered(Phase::Failed) {
            self.canary_failures.get_or_create(&outcome).inc();
        }

        let mut series = self.series.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let owned = series.entry(key).or_default();
        if entered(Phase::Succeeded) || entered(Phase::Failed) {
            owned.strategies.insert(strategy);
        }
        // The series mirror the last tick's results: a metric that returned no value, or
        // that left the spec, has no series rather than a stale one.
        let current: BTreeMap<&str, f64> = next
            .analysis_results
            .iter()
            .filter_map(|r| r.value.filter(|v| v.is_finite()).map(|v| (r.name.as_str(), v)))
            .collect();
        for stale in owned.analysis_metrics.iter().filter(|m| !current.contains_key(m.as_str())) {
            self.canary_metric_analysis.remove(&MetricLabels {
                namespace: namespace.clone(),
                name: name.clone(),
                metric: stale.clone(),
            });
        }
        owned.analysis_metrics.clear();
        for (metric, value) in current {
            let labels = MetricLabels { namespace: namespace.clone(), name: name.clone(), metric: metric.to_string() };
            self.canary_metric_analysis.get_or_create(&labels).set(value);
            owned.analysis_metrics.insert(metric.to_string());
        }
    }

    /// Removes every series of the Canaries not in `live` (namespace, name).
    pub fn retain_canaries<'a>(&self, live: impl IntoIterator<Item = (&'a str, &'a str)>) {
        let live: BTreeSet<(&str, &str)> = live.into_iter().collect();
        let gone: Vec<CanaryLabels> = {
            let series = self.series.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            series.keys().filter(|k| !live.contains(&(k.namespace.as_str(), k.name.as_str()))).cloned().collect()
        };
        for key in gone {
            self.forget_canary(&key.namespace, &key.name);
        }
    }

    /// Removes every series of one Canary.
    pub fn forget_canary(&self, namespace: &str, name: &str) {
        let key = CanaryLabels { namespace: namespace.to_string(), name: name.to_string() };
        let owned = self.series.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&key);
        self.canary_status.remove(&key);
        self.canary_failed_checks.remove(&key);
        self.canary_analysis_duration.remove(&key);
        for phase in Phase::ALL {
            self.canary_phase.remove(&PhaseLabels {
                namespace: namespace.to_string(),
                name: name.to_string(),
                phase: phase.to_string(),
            });
        }
        for workload in ["primary", "canary"] {
            self.canary_weight.remove(&WeightLabels {
                namespace: namespace.to_string(),
                name: name.to_string(),
                workload: workload.to_string(),
            });
        }
        let Some(owned) = owned else { return };
        for metric in owned.analysis_metrics {
            self.canary_metric_analysis.remove(&MetricLabels {
                namespace: namespace.to_string(),
                name: name.to_string(),
                metric,
            });
        }
        for strategy in owned.strategies {
            let labels = OutcomeLabels { namespace: namespace.to_string(), name: name.to_string(), strategy };
            self.canary_successes.remove(&labels);
            self.canary_failures.remove(&labels);
        }
    }

    /// Starts timing one reconcile of `controller`; the time is recorded when the guard
    /// drops, so every return path (including `?`) is measured.
    pub fn time_reconcile(&self, controller: &str) -> ReconcileTimer<'_> {
        ReconcileTimer { metrics: self, controller: controller.to_string(), started: Instant::now() }
    }

    /// Records a failed reconcile of `controller`.
    pub fn record_reconcile_error(&self, controller: &str, error: &crate::controller::Error) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels { controller: controller.to_string(), error: error.kind().to_string() })
            .inc();
        if let crate::controller::Error::Kube { source, .. } = error {
            self.record_api_error(controller, source);
        }
    }

    /// Records a failed Kubernetes API call.
    pub fn record_api_error(&self, controller: &str, error: &kube::Error) {
        self.api_errors
            .get_or_create(&ApiErrorLabels { controller: controller.to_string(), reason: api_error_reason(error) })
            .inc();
    }
}

/// Measures one reconcile; see [`Metrics::time_reconcile`].
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    controller: String,
    started: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        let labels = ControllerLabels { controller: std::mem::take(&mut self.controller) };
        self.metrics.reconcile_duration.get_or_create(&labels).observe(self.started.elapsed().as_secs_f64());
    }
}

fn canary_key(canary: &Canary) -> CanaryLabels {
    CanaryLabels { namespace: canary.namespace().unwrap_or_default(), name: canary.name_any() }
}

/// Flagger's `flagger_canary_status` encoding, so its alerts carry over.
pub fn status_code(phase: Phase) -> i64 {
    match phase {
        Phase::Succeeded => 1,
        Phase::Failed => 2,
        _ => 0,
    }
}

/// The `strategy` label: Flagger's `deployment_strategy` values.
pub fn strategy_label(strategy: &Strategy) -> &'static str {
    match strategy {
        Strategy::Canary { .. } => "canary",
        Strategy::AbTesting { .. } => "ab-testing",
        Strategy::BlueGreen { .. } => "blue-green",
    }
}

/// The `reason` label of an API error: the API server's own reason (`Conflict`,
/// `NotFound`, `Forbidden`…), or the HTTP code when it gave none, or what went wrong on
/// the way there.
pub fn api_error_reason(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) if !status.reason.is_empty() => status.reason.clone(),
        kube::Error::Api(status) => format!("HTTP{}", status.code),
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::HttpError(_) => "Transport".into(),
        kube::Error::SerdeError(_) | kube::Error::FromUtf8(_) => "InvalidResponse".into(),
        _ => "Client".into(),
    }
}
