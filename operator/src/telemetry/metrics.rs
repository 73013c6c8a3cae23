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
use crate::api::rollout::{MemberState, RolloutPhase, RolloutStatus, WavePhase};
use crate::core::strategy::strategy_of;
use crate::core::{Provider, Strategy};
use crate::fleet::inventory::drift_of;
use chrono::{DateTime, Utc};

/// `controller` label of the per-cluster Canary controller.
pub const CANARY_CONTROLLER: &str = "canary";

/// Every phase of a wave, for one-hot series.
const WAVE_PHASES: [WavePhase; 5] =
    [WavePhase::Pending, WavePhase::Progressing, WavePhase::Soaking, WavePhase::Succeeded, WavePhase::Failed];
/// Every state of a member, for one-hot series.
const MEMBER_STATES: [MemberState; 10] = [
    MemberState::Pending,
    MemberState::Approved,
    MemberState::Progressing,
    MemberState::Succeeded,
    MemberState::Failed,
    MemberState::Unreachable,
    MemberState::TimedOut,
    MemberState::OtherRelease,
    MemberState::Unassigned,
    MemberState::IdentityMismatch,
];

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
struct AlertFailureLabels {
    namespace: String,
    name: String,
    alert: String,
    reason: String,
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RolloutInfoLabels {
    namespace: String,
    name: String,
    release: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WaveLabels {
    namespace: String,
    name: String,
    wave: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabels {
    namespace: String,
    name: String,
    cluster: String,
    wave: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberWeightLabels {
    namespace: String,
    name: String,
    cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabels {
    shard: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabels {
    cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FleetReleaseLabels {
    namespace: String,
    rollout: String,
    cluster: String,
    release: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FleetMemberLabels {
    namespace: String,
    rollout: String,
    cluster: String,
}

/// Series a Rollout owns whose label values come from its status, so they can be
/// removed when they leave it.
#[derive(Default)]
struct RolloutSeries {
    release: Option<String>,
    waves: BTreeSet<String>,
    /// (cluster, wave label) of every member series.
    members: BTreeSet<(String, String)>,
    /// (cluster, release) of every `petrel_fleet_member_release` series.
    running: BTreeSet<(String, String)>,
    /// Clusters with a drift series.
    drift: BTreeSet<String>,
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
    /// (alert, reason) pairs with an alert-failure counter.
    alert_failures: BTreeSet<(String, String)>,
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
    alert_failures: Family<AlertFailureLabels, Counter>,
    reconcile_duration: HistogramFamily<ControllerLabels>,
    reconcile_wait: HistogramFamily<ControllerLabels>,
    reconcile_errors: Family<ErrorLabels, Counter>,
    api_errors: Family<ApiErrorLabels, Counter>,
    rollout_info: Family<RolloutInfoLabels, Gauge>,
    rollout_phase: Family<PhaseLabels, Gauge>,
    rollout_wave: Family<WaveLabels, Gauge>,
    rollout_member: Family<MemberLabels, Gauge>,
    rollout_member_weight: Family<MemberWeightLabels, Gauge>,
    cluster_reachable: Family<ClusterLabels, Gauge>,
    fleet_member_release: Family<FleetReleaseLabels, Gauge>,
    fleet_member_drift: Family<FleetMemberLabels, Gauge<f64, AtomicU64>>,
    shard_held: Family<ShardLabels, Gauge>,
    /// Per Rollout, the label values of its status-driven series.
    rollout_series: Mutex<BTreeMap<CanaryLabels, RolloutSeries>>,
    /// Clusters with a `petrel_cluster_reachable` series.
    clusters_seen: Mutex<BTreeSet<String>>,
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
        let alert_failures = Family::<AlertFailureLabels, Counter>::default();
        let reconcile_duration: HistogramFamily<ControllerLabels> = Family::new_with_constructor(reconcile_histogram);
        let reconcile_wait: HistogramFamily<ControllerLabels> = Family::new_with_constructor(reconcile_histogram);
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let api_errors = Family::<ApiErrorLabels, Counter>::default();
        let rollout_info = Family::<RolloutInfoLabels, Gauge>::default();
        let rollout_phase = Family::<PhaseLabels, Gauge>::default();
        let rollout_wave = Family::<WaveLabels, Gauge>::default();
        let rollout_member = Family::<MemberLabels, Gauge>::default();
        let rollout_member_weight = Family::<MemberWeightLabels, Gauge>::default();
        let cluster_reachable = Family::<ClusterLabels, Gauge>::default();
        let fleet_member_release = Family::<FleetReleaseLabels, Gauge>::default();
        let fleet_member_drift = Family::<FleetMemberLabels, Gauge<f64, AtomicU64>>::default();
        let shard_held = Family::<ShardLabels, Gauge>::default();

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
        registry.register(
            "petrel_alert_failures",
            "Alerts of a Canary that could not be delivered, by alert and reason",
            alert_failures.clone(),
        );
        registry.register_with_unit(
            "petrel_reconcile_duration",
            "Time one reconcile took",
            Unit::Seconds,
            reconcile_duration.clone(),
        );
        registry.register_with_unit(
            "petrel_reconcile_wait",
            "Time from a watch event that concerns an object to the start of its reconcile: the controller's queue (with its 100 ms debounce) and the wait for a worker thread",
            Unit::Seconds,
            reconcile_wait.clone(),
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
        registry.register(
            "petrel_rollout_info",
            "The release a fleet Rollout is rolling out (hub); always 1",
            rollout_info.clone(),
        );
        registry.register(
            "petrel_rollout_phase",
            "Phase of a fleet Rollout (hub): 1 for the current phase, 0 for the others",
            rollout_phase.clone(),
        );
        registry.register(
            "petrel_rollout_wave",
            "Phase of each wave of a fleet Rollout (hub): 1 for the current phase, 0 for the others",
            rollout_wave.clone(),
        );
        registry.register(
            "petrel_rollout_member",
            "State of each member cluster of a fleet Rollout (hub): 1 for the current state, 0 for the others",
            rollout_member.clone(),
        );
        registry.register(
            "petrel_rollout_member_weight",
            "Percentage of traffic each member cluster routes to its canary, as the hub last saw it",
            rollout_member_weight.clone(),
        );
        registry.register(
            "petrel_cluster_reachable",
            "Whether the hub's last probe reached the member cluster (1) or not (0)",
            cluster_reachable.clone(),
        );
        registry.register(
            "petrel_fleet_member_release",
            "The release each member of a fleet Rollout runs (its primary), as the hub last learned it; always 1",
            fleet_member_release.clone(),
        );
        registry.register_with_unit(
            "petrel_fleet_member_drift",
            "How long a member has not run its fleet's last successful release (0 when it does, or runs the release in flight)",
            Unit::Seconds,
            fleet_member_drift.clone(),
        );
        registry.register(
            "petrel_shard_held",
            "With --shards N: whether this replica holds the shard's Lease and reconciles its Canaries (1) or not (0)",
            shard_held.clone(),
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
            alert_failures,
            reconcile_duration,
            reconcile_wait,
            reconcile_errors,
            api_errors,
            rollout_info,
            rollout_phase,
            rollout_wave,
            rollout_member,
            rollout_member_weight,
            cluster_reachable,
            fleet_member_release,
            fleet_member_drift,
            shard_held,
            rollout_series: Mutex::new(BTreeMap::new()),
            clusters_seen: Mutex::new(BTreeSet::new()),
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
        for (alert, reason) in owned.alert_failures {
            self.alert_failures.remove(&AlertFailureLabels {
                namespace: namespace.to_string(),
                name: name.to_string(),
                alert,
                reason,
            });
        }
    }

    /// Counts one alert of a Canary that could not be delivered (`reason`: a short kind
    /// of failure, such as `status` or `transport`).
    pub fn record_alert_failure(&self, canary: &Canary, alert: &str, reason: &str) {
        let key = canary_key(canary);
        let labels = AlertFailureLabels {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            alert: alert.to_string(),
            reason: reason.to_string(),
        };
        self.alert_failures.get_or_create(&labels).inc();
        let mut series = self.series.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        series.entry(key).or_default().alert_failures.insert((alert.to_string(), reason.to_string()));
    }

    /// Starts timing one reconcile of `controller`; the time is recorded when the guard
    /// drops, so every return path (including `?`) is measured.
    pub fn time_reconcile(&self, controller: &str) -> ReconcileTimer<'_> {
        ReconcileTimer { metrics: self, controller: controller.to_string(), started: Instant::now() }
    }

    /// Records how long a reconcile of `controller` waited after the watch event that woke it.
    pub fn record_reconcile_wait(&self, controller: &str, waited: std::time::Duration) {
        let labels = ControllerLabels { controller: controller.to_string() };
        self.reconcile_wait.get_or_create(&labels).observe(waited.as_secs_f64());
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

/// The hub's metrics: Rollouts, their waves and members, and member reachability.
impl Metrics {
    /// Records where a Rollout stands after a reconcile computed `status` for it.
    pub fn observe_rollout(&self, namespace: &str, name: &str, status: &RolloutStatus) {
        self.observe_rollout_at(namespace, name, status, chrono::Utc::now());
    }

    /// [`Metrics::observe_rollout`] with drift measured at `now`.
    pub fn observe_rollout_at(&self, namespace: &str, name: &str, status: &RolloutStatus, now: DateTime<Utc>) {
        let key = CanaryLabels { namespace: namespace.to_string(), name: name.to_string() };
        let mut all = self.rollout_series.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let owned = all.entry(key).or_default();

        if owned.release != status.release {
            if let Some(old) = owned.release.take() {
                self.rollout_info.remove(&RolloutInfoLabels {
                    namespace: namespace.into(),
                    name: name.into(),
                    release: old,
                });
            }
            if let Some(release) = &status.release {
                let labels =
                    RolloutInfoLabels { namespace: namespace.into(), name: name.into(), release: release.clone() };
                self.rollout_info.get_or_create(&labels).set(1);
            }
            owned.release = status.release.clone();
        }
        for phase in RolloutPhase::ALL {
            let labels = PhaseLabels { namespace: namespace.into(), name: name.into(), phase: label_of(&phase) };
            self.rollout_phase.get_or_create(&labels).set(i64::from(status.phase == Some(phase)));
        }

        let waves: BTreeSet<String> = status.waves.iter().map(|w| w.name.clone()).collect();
        for gone in owned.waves.difference(&waves) {
            for phase in WAVE_PHASES {
                self.rollout_wave.remove(&wave_labels(namespace, name, gone, phase));
            }
        }
        for wave in &status.waves {
            for phase in WAVE_PHASES {
                self.rollout_wave
                    .get_or_create(&wave_labels(namespace, name, &wave.name, phase))
                    .set(i64::from(wave.phase == phase));
            }
        }
        owned.waves = waves;

        let members: BTreeSet<(String, String)> =
            status.members.iter().map(|m| (m.cluster.clone(), m.wave.clone().unwrap_or_default())).collect();
        for (cluster, wave) in owned.members.difference(&members) {
            for state in MEMBER_STATES {
                self.rollout_member.remove(&member_labels(namespace, name, cluster, wave, state));
            }
            if !members.iter().any(|(c, _)| c == cluster) {
                self.rollout_member_weight.remove(&MemberWeightLabels {
                    namespace: namespace.into(),
                    name: name.into(),
                    cluster: cluster.clone(),
                });
            }
        }
        for member in &status.members {
            let wave = member.wave.clone().unwrap_or_default();
            for state in MEMBER_STATES {
                self.rollout_member
                    .get_or_create(&member_labels(namespace, name, &member.cluster, &wave, state))
                    .set(i64::from(member.state == state));
            }
            let labels =
                MemberWeightLabels { namespace: namespace.into(), name: name.into(), cluster: member.cluster.clone() };
            self.rollout_member_weight.get_or_create(&labels).set(i64::from(member.weight.clamp(0, 100)));
        }
        owned.members = members;

        let running: BTreeSet<(String, String)> =
            status.inventory.iter().filter_map(|e| Some((e.cluster.clone(), e.release.clone()?))).collect();
        for (cluster, release) in owned.running.difference(&running) {
            self.fleet_member_release.remove(&fleet_release_labels(namespace, name, cluster, release));
        }
        for (cluster, release) in &running {
            self.fleet_member_release.get_or_create(&fleet_release_labels(namespace, name, cluster, release)).set(1);
        }
        owned.running = running;
        let drift: BTreeSet<String> = status.inventory.iter().map(|e| e.cluster.clone()).collect();
        for gone in owned.drift.difference(&drift) {
            self.fleet_member_drift.remove(&fleet_member_labels(namespace, name, gone));
        }
        for member in &status.inventory {
            let seconds = drift_of(member, status).seconds(now);
            self.fleet_member_drift.get_or_create(&fleet_member_labels(namespace, name, &member.cluster)).set(seconds);
        }
        owned.drift = drift;
    }

    /// Removes every series of one Rollout.
    pub fn forget_rollout(&self, namespace: &str, name: &str) {
        let key = CanaryLabels { namespace: namespace.to_string(), name: name.to_string() };
        let owned = self.rollout_series.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&key);
        for phase in RolloutPhase::ALL {
            self.rollout_phase.remove(&PhaseLabels {
                namespace: namespace.into(),
                name: name.into(),
                phase: label_of(&phase),
            });
        }
        let Some(owned) = owned else { return };
        if let Some(release) = owned.release {
            self.rollout_info.remove(&RolloutInfoLabels { namespace: namespace.into(), name: name.into(), release });
        }
        for wave in &owned.waves {
            for phase in WAVE_PHASES {
                self.rollout_wave.remove(&wave_labels(namespace, name, wave, phase));
            }
        }
        for (cluster, wave) in &owned.members {
            for state in MEMBER_STATES {
                self.rollout_member.remove(&member_labels(namespace, name, cluster, wave, state));
            }
            self.rollout_member_weight.remove(&MemberWeightLabels {
                namespace: namespace.into(),
                name: name.into(),
                cluster: cluster.clone(),
            });
        }
        for (cluster, release) in &owned.running {
            self.fleet_member_release.remove(&fleet_release_labels(namespace, name, cluster, release));
        }
        for cluster in &owned.drift {
            self.fleet_member_drift.remove(&fleet_member_labels(namespace, name, cluster));
        }
    }

    /// Removes every series of the Rollouts not in `live` (namespace, name).
    pub fn retain_rollouts<'a>(&self, live: impl IntoIterator<Item = (&'a str, &'a str)>) {
        let live: BTreeSet<(&str, &str)> = live.into_iter().collect();
        let gone: Vec<CanaryLabels> = {
            let series = self.rollout_series.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            series.keys().filter(|k| !live.contains(&(k.namespace.as_str(), k.name.as_str()))).cloned().collect()
        };
        for key in gone {
            self.forget_rollout(&key.namespace, &key.name);
        }
    }

    /// Records whether this replica holds shard `index` (`--shards N`).
    pub fn observe_shard(&self, index: u32, held: bool) {
        self.shard_held.get_or_create(&ShardLabels { shard: index.to_string() }).set(i64::from(held));
    }

    /// Records whether the hub's last probe reached a member.
    pub fn observe_cluster(&self, cluster: &str, reachable: bool) {
        self.cluster_reachable.get_or_create(&ClusterLabels { cluster: cluster.to_string() }).set(i64::from(reachable));
        // prometheus-client cannot list a family's label sets: remember them to remove.
        self.clusters_seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(cluster.to_string());
    }

    /// Removes the series of Clusters not in `live`.
    pub fn retain_clusters<'a>(&self, live: impl IntoIterator<Item = &'a str>) {
        let live: BTreeSet<&str> = live.into_iter().collect();
        let mut seen = self.clusters_seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        seen.retain(|cluster| {
            let keep = live.contains(cluster.as_str());
            if !keep {
                self.cluster_reachable.remove(&ClusterLabels { cluster: cluster.clone() });
            }
            keep
        });
    }

    /// Records a failed reconcile of a controller whose errors are not
    /// [`crate::controller::Error`]s: `kind` is the error's kind, `api_error` the
    /// Kubernetes API error behind it, if any.
    pub fn record_reconcile_failure(&self, controller: &str, kind: &str, api_error: Option<&kube::Error>) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels { controller: controller.to_string(), error: kind.to_string() })
            .inc();
        if let Some(error) = api_error {
            self.record_api_error(controller, error);
        }
    }
}

/// The label value of an API enum: its serialized name (what `kubectl` shows).
fn label_of<T: serde::Serialize + std::fmt::Debug>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => format!("{value:?}"),
    }
}

fn wave_labels(namespace: &str, name: &str, wave: &str, phase: WavePhase) -> WaveLabels {
    WaveLabels { namespace: namespace.into(), name: name.into(), wave: wave.into(), phase: label_of(&phase) }
}

fn fleet_release_labels(namespace: &str, rollout: &str, cluster: &str, release: &str) -> FleetReleaseLabels {
    FleetReleaseLabels {
        namespace: namespace.into(),
        rollout: rollout.into(),
        cluster: cluster.into(),
        release: release.into(),
    }
}

fn fleet_member_labels(namespace: &str, rollout: &str, cluster: &str) -> FleetMemberLabels {
    FleetMemberLabels { namespace: namespace.into(), rollout: rollout.into(), cluster: cluster.into() }
}

fn member_labels(namespace: &str, name: &str, cluster: &str, wave: &str, state: MemberState) -> MemberLabels {
    MemberLabels {
        namespace: namespace.into(),
        name: name.into(),
        cluster: cluster.into(),
        wave: wave.into(),
        state: label_of(&state),
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

#[cfg(test)]
mod hub_tests {
    use std::collections::BTreeSet;

    use serde_json::json;

    use super::*;

    fn series(metrics: &Metrics, prefix: &str) -> BTreeSet<String> {
        metrics.render().lines().filter(|l| l.starts_with(prefix)).map(String::from).collect()
    }

    fn ones(metrics: &Metrics, prefix: &str) -> BTreeSet<String> {
        series(metrics, prefix).into_iter().filter(|l| l.ends_with(" 1")).collect()
    }

    fn set(lines: &[&str]) -> BTreeSet<String> {
        lines.iter().map(|l| l.to_string()).collect()
    }

    fn status(value: serde_json::Value) -> RolloutStatus {
        serde_json::from_value(value).unwrap()
    }

    fn progressing() -> RolloutStatus {
        status(json!({
            "release": "podinfo:6.1.0",
            "phase": "Progressing",
            "currentWave": "prod",
            "waves": [{"name": "canary", "phase": "Succeeded"}, {"name": "prod", "phase": "Progressing"}],
            "members": [
                {"cluster": "canary-1", "wave": "canary", "state": "Succeeded", "weight": 0},
                {"cluster": "prod-1", "wave": "prod", "state": "Progressing", "weight": 50},
                {"cluster": "lab-1", "state": "Unassigned"}
            ]
        }))
    }

    #[test]
    fn a_rollout_exports_its_release_phase_waves_and_members() {
        let metrics = Metrics::new("1.2.3");
        metrics.observe_rollout("fleet", "podinfo", &progressing());
        assert_eq!(
            series(&metrics, "petrel_rollout_info"),
            set(&[r#"petrel_rollout_info{namespace="fleet",name="podinfo",release="podinfo:6.1.0"} 1"#])
        );
        assert_eq!(series(&metrics, "petrel_rollout_phase").len(), 6, "one series per phase");
        assert_eq!(
            ones(&metrics, "petrel_rollout_phase"),
            set(&[r#"petrel_rollout_phase{namespace="fleet",name="podinfo",phase="Progressing"} 1"#])
        );
        assert_eq!(series(&metrics, "petrel_rollout_wave").len(), 10, "two waves, five phases each");
        assert_eq!(
            ones(&metrics, "petrel_rollout_wave"),
            set(&[
                r#"petrel_rollout_wave{namespace="fleet",name="podinfo",wave="canary",phase="Succeeded"} 1"#,
                r#"petrel_rollout_wave{namespace="fleet",name="podinfo",wave="prod",phase="Progressing"} 1"#,
            ])
        );
        assert_eq!(series(&metrics, "petrel_rollout_member{").len(), 30, "three members, ten states each");
        assert_eq!(
            ones(&metrics, "petrel_rollout_member{"),
            set(&[
                r#"petrel_rollout_member{namespace="fleet",name="podinfo",cluster="canary-1",wave="canary",state="Succeeded"} 1"#,
                r#"petrel_rollout_member{namespace="fleet",name="podinfo",cluster="prod-1",wave="prod",state="Progressing"} 1"#,
                r#"petrel_rollout_member{namespace="fleet",name="podinfo",cluster="lab-1",wave="",state="Unassigned"} 1"#,
            ])
        );
        assert_eq!(
            series(&metrics, "petrel_rollout_member_weight"),
            set(&[
                r#"petrel_rollout_member_weight{namespace="fleet",name="podinfo",cluster="canary-1"} 0"#,
                r#"petrel_rollout_member_weight{namespace="fleet",name="podinfo",cluster="prod-1"} 50"#,
                r#"petrel_rollout_member_weight{namespace="fleet",name="podinfo",cluster="lab-1"} 0"#,
            ])
        );
    }

    #[test]
    fn series_that_leave_the_status_leave_the_scrape() {
        let metrics = Metrics::new("1.2.3");
        metrics.observe_rollout("fleet", "podinfo", &progressing());
        // A new release, the lab cluster removed, prod-1 moved to another wave.
        metrics.observe_rollout(
            "fleet",
            "podinfo",
            &status(json!({
                "release": "podinfo:6.2.0",
                "phase": "Progressing",
                "waves": [{"name": "canary", "phase": "Progressing"}],
                "members": [
                    {"cluster": "canary-1", "wave": "canary", "state": "Approved"},
                    {"cluster": "prod-1", "wave": "canary", "state": "Pending"}
                ]
            })),
        );
        let info = series(&metrics, "petrel_rollout_info");
        assert_eq!(info, set(&[r#"petrel_rollout_info{namespace="fleet",name="podinfo",release="podinfo:6.2.0"} 1"#]));
        assert!(series(&metrics, "petrel_rollout_wave").iter().all(|l| l.contains(r#"wave="canary""#)));
        let members = series(&metrics, "petrel_rollout_member{");
        assert_eq!(members.len(), 20, "two members, ten states each");
        assert!(members.iter().all(|l| !l.contains("lab-1") && !l.contains(r#"wave="prod""#)), "{members:?}");
        assert_eq!(series(&metrics, "petrel_rollout_member_weight").len(), 2);

        metrics.retain_rollouts([("fleet", "other")]);
        assert!(series(&metrics, "petrel_rollout_").is_empty(), "a deleted Rollout leaves nothing behind");
    }

    #[test]
    fn each_member_exports_the_release_it_runs_and_how_long_it_drifted() {
        let metrics = Metrics::new("1.2.3");
        let fleet = |inventory: serde_json::Value| {
            status(json!({
                "release": "podinfo:2",
                "phase": "Succeeded",
                "history": [
                    {"release": "podinfo:2", "outcome": "Succeeded", "finishedAt": "2026-11-22T05:10:00Z"},
                    {"release": "podinfo:1", "outcome": "Succeeded", "finishedAt": "2026-11-22T05:00:00Z"}
                ],
                "inventory": inventory
            }))
        };
        let now = "2026-11-22T05:12:30Z".parse().unwrap();
        metrics.observe_rollout_at(
            "fleet",
            "podinfo",
            &fleet(json!([
                {"cluster": "canary-1", "release": "podinfo:2", "since": "2026-11-22T05:02:00Z"},
                {"cluster": "prod-1", "release": "podinfo:1", "since": "2026-11-22T04:00:00Z"},
                {"cluster": "new-1"}
            ])),
            now,
        );
        assert_eq!(
            series(&metrics, "petrel_fleet_member_release"),
            set(&[
                r#"petrel_fleet_member_release{namespace="fleet",rollout="podinfo",cluster="canary-1",release="podinfo:2"} 1"#,
                r#"petrel_fleet_member_release{namespace="fleet",rollout="podinfo",cluster="prod-1",release="podinfo:1"} 1"#,
            ])
        );
        assert_eq!(
            series(&metrics, "petrel_fleet_member_drift_seconds"),
            set(&[
                r#"petrel_fleet_member_drift_seconds{namespace="fleet",rollout="podinfo",cluster="canary-1"} 0.0"#,
                r#"petrel_fleet_member_drift_seconds{namespace="fleet",rollout="podinfo",cluster="prod-1"} 150.0"#,
                r#"petrel_fleet_member_drift_seconds{namespace="fleet",rollout="podinfo",cluster="new-1"} 0.0"#,
            ]),
            "prod-1 drifted when podinfo:2 succeeded, 2m30s ago"
        );
        // prod-1 catches up; new-1 leaves the Rollout.
        metrics.observe_rollout_at(
            "fleet",
            "podinfo",
            &fleet(json!([
                {"cluster": "canary-1", "release": "podinfo:2", "since": "2026-11-22T05:02:00Z"},
                {"cluster": "prod-1", "release": "podinfo:2", "since": "2026-11-22T05:12:00Z"}
            ])),
            now,
        );
        let releases = series(&metrics, "petrel_fleet_member_release");
        assert_eq!(releases.len(), 2);
        assert!(releases.iter().all(|l| l.contains(r#"release="podinfo:2""#)), "{releases:?}");
        assert_eq!(ones(&metrics, "petrel_fleet_member_drift_seconds"), set(&[]));
        assert_eq!(series(&metrics, "petrel_fleet_member_drift_seconds").len(), 2);
        metrics.retain_rollouts([]);
        assert!(series(&metrics, "petrel_fleet_").is_empty(), "a deleted Rollout leaves nothing behind");
    }

    #[test]
    fn cluster_reachability_is_exported_until_the_cluster_goes() {
        let metrics = Metrics::new("1.2.3");
        metrics.observe_cluster("eu-1", true);
        metrics.observe_cluster("eu-2", false);
        assert_eq!(
            series(&metrics, "petrel_cluster_reachable"),
            set(&[r#"petrel_cluster_reachable{cluster="eu-1"} 1"#, r#"petrel_cluster_reachable{cluster="eu-2"} 0"#])
        );
        metrics.retain_clusters(["eu-1"]);
        assert_eq!(
            series(&metrics, "petrel_cluster_reachable"),
            set(&[r#"petrel_cluster_reachable{cluster="eu-1"} 1"#])
        );
    }

    #[test]
    fn hub_reconciles_are_timed_and_their_failures_counted() {
        let metrics = Metrics::new("1.2.3");
        drop(metrics.time_reconcile("rollout"));
        metrics.record_reconcile_failure("rollout", "WriteStatus", None);
        let text = metrics.render();
        assert!(text.contains(r#"petrel_reconcile_duration_seconds_count{controller="rollout"} 1"#), "{text}");
        assert!(
            text.contains(r#"petrel_reconcile_errors_total{controller="rollout",error="WriteStatus"} 1"#),
            "{text}"
        );
    }
}
