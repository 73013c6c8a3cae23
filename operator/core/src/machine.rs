//! The Canary state machine: a pure function of (spec, status, observation, now).
//!
//! A reconcile runs in two pure steps around the I/O:
//! 1. [`plan`] says which gates (webhooks) and checks (metrics) the reconciler must run now;
//! 2. the reconciler runs exactly those and fills an [`Observation`];
//! 3. [`decide`] returns the new status and the actions to apply (route weights, scaling,
//!    promotion, events), and when to look again.
//!
//! Phases change only through the table in [`super::transitions`]: `decide` classifies the
//! situation into one `Event`, looks up `(phase, event) -> (phase, effect)` and applies the effect.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::provider::Provider;
use crate::requests::{Triage, triage};
use crate::strategy::{
    NextStep, Routes, StepKind, Strategy, analysis_interval, longest_metric_window, progress_deadline, promotion_step,
    strategy_of, threshold_of, weight_after_promotion_step,
};
use crate::transitions::{Effect, Event, is_idle, transition};
use petrel_api::canary::Phase;
use petrel_api::canary::{
    CanarySpec, CanaryStatus, HookType, InsufficientSamples, MAX_COMPARISON_SAMPLES, MetricResult,
};
use petrel_api::common::set_condition;
use petrel_api::verbs::VerbRequest;

/// Health of a workload (the canary = target Deployment, or the primary).
#[derive(Clone, Debug, PartialEq)]
pub enum WorkloadHealth {
    /// Enough pods are available (the spec's ready threshold).
    Ready,
    /// Still rolling out or waiting for pods; not a failure yet.
    NotReady { reason: String },
    /// Kubernetes reports the rollout stuck for longer than `progressDeadlineSeconds`.
    DeadlineExceeded { reason: String },
}

/// How a fleet Rollout gates this Canary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FleetGate {
    /// The Canary belongs to no fleet Rollout: no gate.
    NotInFleet,
    /// The hub approved exactly this revision.
    Approved { revision: String },
    /// The Canary belongs to a fleet Rollout whose hub has approved another revision or none.
    Pending { approved: Option<String> },
}

/// What the reconciler must run before calling [`decide`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Webhooks to call now, in this order (gates and pre-rollout/rollout hooks).
    pub hooks: Vec<HookType>,
    /// Run the analysis metrics now.
    pub run_metrics: bool,
}

/// Outcome of the gates and checks the reconciler ran because [`plan`] asked for them.
/// A hook type absent from the map was not run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GateResults {
    /// Per hook type: `Ok(())` when every webhook of that type answered 2xx,
    /// `Err(message)` naming the first that did not.
    pub hooks: std::collections::BTreeMap<HookType, Result<(), String>>,
    /// Hook types whose failing webhook has `muteAlert`: the Event saying that webhook
    /// holds the release sends no alert.
    pub muted: std::collections::BTreeSet<HookType>,
    /// Metric results, present when metrics ran. A metric that could not be evaluated
    /// (no data, NaN, query error, missing template) is a result with `passed: false`.
    pub metrics: Option<Vec<MetricResult>>,
}

/// Everything the reconciler observed this time.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub now: DateTime<Utc>,
    /// Revision of the target now: hash of its pod template and tracked ConfigMaps/Secrets.
    pub target_revision: String,
    /// Release identity of the target now (its container images).
    pub target_release: String,
    /// Health of the canary (the target Deployment).
    pub canary: WorkloadHealth,
    /// The canary is scaled down (a Deployment at zero replicas, a DaemonSet on no node):
    /// between runs that is petrel's own doing; during one, its pods are missing.
    pub canary_scaled_down: bool,
    /// Health of the `-primary` Deployment.
    pub primary: WorkloadHealth,
    /// Whether the primary runs the template last promoted (its rollout finished).
    pub primary_updated: bool,
    /// Revision and release of the primary's template when the primary exists already at
    /// initialisation (adopted from a deleted Canary of the same name): that is what was
    /// promoted, and a target on anything else is a release to analyse.
    pub primary_template: Option<(String, String)>,
    pub fleet: FleetGate,
    pub gates: GateResults,
    /// Pending verb requests (see [`super::requests::pending_requests`]). [`decide`] skips
    /// any already recorded in `status.handledRequests` as well, so none acts twice.
    pub requests: Vec<VerbRequest>,
}

/// A side effect the reconciler applies, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Write route weights. `primary + canary == 100` always.
    SetRoutes { primary: u8, canary: u8, mirror: bool },
    /// Scale the target (canary) up to its desired replicas. `after_status`: applied once
    /// the status write of its reconcile succeeded, not before it as the other changes.
    /// The scale-up that starts a run is: the run is on record (Progressing) one request
    /// sooner, and a status write that loses a conflict leaves no canary scaled up outside
    /// a run. A scale-up that does not land then is seen as [`Observation::canary_scaled_down`]
    /// during the run, and done again (before the status write, so a refused one stalls
    /// the Canary without clearing and setting `Stalled` at every reconcile).
    ScaleCanaryUp { after_status: bool },
    /// Scale the target (canary) to zero.
    ScaleCanaryToZero,
    /// Copy the target's pod template (and tracked configs) into the primary.
    PromoteCanaryToPrimary,
    /// Call the webhooks of this type; their outcome does not change the decision
    /// (post-rollout).
    FireHooks(HookType),
    /// Record a Kubernetes Event (and forward it to event webhooks and, unless
    /// `mute_alert`, to alerts).
    Event { reason: &'static str, message: String, warning: bool, mute_alert: bool },
}

/// The result of [`decide`].
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub status: CanaryStatus,
    pub actions: Vec<Action>,
    /// When to reconcile again even if nothing changes.
    pub requeue_after: Duration,
    /// Nothing is due until something petrel watches changes (the Canary, its target,
    /// the target's configs): an idle Canary needs no tick, and costs no API call.
    pub idle: bool,
}

/// Requeue between two promotion phases that need no wait (Promoting → Finalising).
const PROMPTLY: Duration = Duration::from_secs(1);
/// Shortest requeue, so a tick due "now" is not retried in a busy loop.
const MIN_REQUEUE: Duration = Duration::from_secs(1);

/// Where a Canary stands before any gate or check runs: what [`plan`] asks for and what
/// [`decide`] judges. Computed the same way by both, so they never disagree.
#[derive(Clone, Debug, PartialEq)]
enum Situation {
    Suspended,
    Initializing,
    /// Initialized, Succeeded or Failed with no new revision.
    Idle,
    /// A new revision waits to start: fleet gate, then confirm-rollout.
    /// `due` paces confirm-rollout retries while Waiting.
    Gate {
        approved: bool,
        due: bool,
    },
    /// The target went back to the promoted template during a run or while Waiting.
    RevertedToPromoted,
    /// The target changed during a run.
    RevisionChanged {
        approved: bool,
    },
    /// The fleet withdrew its approval of the revision under analysis.
    ApprovalWithdrawn,
    /// A run under analysis; `tick` when an analysis tick is due.
    Analysis {
        tick: Option<Tick>,
    },
    Promoting,
    Finalising,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Tick {
    /// First tick of the run: pre-rollout hooks instead of the checks.
    first: bool,
    /// Until when the metrics' window still reaches back to requests of another revision
    /// the canary served (see [`window_clear_at`]): the hooks run, no metric is judged.
    held_until: Option<DateTime<Utc>>,
    step: NextStep,
}

fn approved_for(fleet: &FleetGate, revision: &str) -> bool {
    match fleet {
        FleetGate::NotInFleet => true,
        FleetGate::Approved { revision: approved } => approved == revision,
        FleetGate::Pending { .. } => false,
    }
}

/// Time left until the next analysis tick (zero when due).
fn time_to_tick(spec: &CanarySpec, status: &CanaryStatus, now: DateTime<Utc>) -> Duration {
    let Some(last) = status.last_analysis_time else {
        return Duration::ZERO;
    };
    let next = last + chrono::Duration::from_std(analysis_interval(spec)).unwrap_or(chrono::Duration::MAX);
    (next - now).to_std().unwrap_or(Duration::ZERO)
}

fn is_due(spec: &CanarySpec, status: &CanaryStatus, now: DateTime<Utc>) -> bool {
    time_to_tick(spec, status, now).is_zero()
}

/// When the canary's metrics stop holding requests of the revision it served before this
/// run (`status.previousRevisionTrafficUntil`): one metric window after it. Flagger judges
/// the first check of a release pushed right after a rollback on the rolled-back version's
/// errors (and one after a promotion on the promoted version's successes); petrel does not
/// judge a check before this. `None` when nothing is held (no such revision, no metrics,
/// or Knative, whose queries select the revision itself).
fn window_clear_at(spec: &CanarySpec, status: &CanaryStatus, provider: Provider) -> Option<DateTime<Utc>> {
    if provider == Provider::Knative {
        return None;
    }
    let until = status.previous_revision_traffic_until?;
    let window = longest_metric_window(spec);
    if window.is_zero() {
        return None;
    }
    // An overflowing window (validation bypassed) holds for ever rather than not at all.
    Some(
        chrono::Duration::from_std(window)
            .ok()
            .and_then(|w| until.checked_add_signed(w))
            .unwrap_or(DateTime::<Utc>::MAX_UTC),
    )
}

fn assess(
    spec: &CanarySpec,
    status: &CanaryStatus,
    provider: Provider,
    strategy: &Strategy,
    target_revision: &str,
    fleet: &FleetGate,
    now: DateTime<Utc>,
) -> Situation {
    if spec.suspend {
        return Situation::Suspended;
    }
    let applied = status.last_applied_spec.as_deref() == Some(target_revision);
    let promoted = status.last_promoted_spec.as_deref() == Some(target_revision);
    let approved = approved_for(fleet, target_revision);
    match status.phase {
        Phase::Initializing => Situation::Initializing,
        // Reverting to the promoted template is not a release (Flagger's manual rollback).
        phase if is_idle(phase) && (applied || promoted) => Situation::Idle,
        phase if is_idle(phase) => Situation::Gate { approved, due: true },
        // Waiting holds a revision that never started, so anything not promoted is pending.
        Phase::Waiting if promoted => Situation::RevertedToPromoted,
        Phase::Waiting => Situation::Gate { approved, due: is_due(spec, status, now) },
        Phase::Progressing | Phase::WaitingPromotion if promoted && !applied => Situation::RevertedToPromoted,
        Phase::Progressing | Phase::WaitingPromotion if !applied => Situation::RevisionChanged { approved },
        Phase::Progressing | Phase::WaitingPromotion if !approved => Situation::ApprovalWithdrawn,
        Phase::Progressing | Phase::WaitingPromotion => {
            let tick = is_due(spec, status, now).then(|| {
                let weight = clamp_weight(status.canary_weight);
                let iterations = status.iterations.max(0) as u32;
                let first = weight == 0 && iterations == 0;
                Tick {
                    first,
                    held_until: window_clear_at(spec, status, provider).filter(|clear| !first && now < *clear),
                    step: strategy.next_step(weight, iterations),
                }
            });
            Situation::Analysis { tick }
        }
        Phase::Promoting => Situation::Promoting,
        Phase::Finalising => Situation::Finalising,
        // Every phase is matched above; the compiler cannot see through the guards.
        Phase::Initialized | Phase::Succeeded | Phase::Failed => Situation::Idle,
    }
}

fn clamp_weight(weight: i32) -> u8 {
    // The clamp makes the narrowing cast lossless.
    weight.clamp(0, 100) as u8
}

fn has_hooks(spec: &CanarySpec, hook: HookType) -> bool {
    spec.analysis.as_ref().is_some_and(|a| a.webhooks.iter().any(|w| w.type_ == hook))
}

fn plan_for(spec: &CanarySpec, status: &CanaryStatus, situation: &Situation) -> Plan {
    let mut hooks = Vec::new();
    let mut run_metrics = false;
    match situation {
        Situation::Gate { approved: true, due: true } => {
            if status.phase == Phase::Waiting {
                hooks.push(HookType::Rollback);
            }
            hooks.push(HookType::ConfirmRollout);
        }
        Situation::Analysis { tick: Some(tick) } if !spec.skip_analysis => {
            hooks.push(HookType::Rollback);
            if tick.first {
                hooks.push(HookType::PreRollout);
            } else {
                // Rollout hooks (load tests) run while the window is held, so it fills
                // with this revision's requests.
                hooks.push(HookType::Rollout);
                run_metrics = tick.held_until.is_none();
            }
            // Gates are asked on every due tick that can pass; their answer only counts
            // when the checks pass.
            match tick.step {
                _ if tick.held_until.is_some() => {}
                NextStep::Advance { kind, .. } if kind.increases_traffic() => {
                    hooks.push(HookType::ConfirmTrafficIncrease)
                }
                NextStep::Advance { .. } => {}
                NextStep::Promote => hooks.push(HookType::ConfirmPromotion),
            }
        }
        _ => {}
    }
    hooks.retain(|hook| has_hooks(spec, *hook));
    Plan { hooks, run_metrics }
}

/// Which webhooks and checks the reconciler must run now, before calling [`decide`].
///
/// `provider` is needed because it decides the strategy (the `kubernetes` provider forces
/// blue/green), and with it which gate comes next.
pub fn plan(
    spec: &CanarySpec,
    status: &CanaryStatus,
    provider: Provider,
    target_revision: &str,
    fleet: &FleetGate,
    now: DateTime<Utc>,
) -> Plan {
    let strategy = strategy_of(spec, provider);
    let situation = assess(spec, status, provider, &strategy, target_revision, fleet, now);
    plan_for(spec, status, &situation)
}

/// Outcome of one hook type this reconcile.
enum HookOutcome<'a> {
    Passed,
    Failed(&'a str),
    /// Planned but absent from the results: the reconciler did not run it.
    NotRun,
}

fn hook_outcome<'a>(plan: &Plan, gates: &'a GateResults, hook: HookType) -> HookOutcome<'a> {
    if !plan.hooks.contains(&hook) {
        // Not configured (or not asked for now): nothing can object.
        return HookOutcome::Passed;
    }
    match gates.hooks.get(&hook) {
        Some(Ok(())) => HookOutcome::Passed,
        Some(Err(message)) => HookOutcome::Failed(message),
        None => HookOutcome::NotRun,
    }
}

fn everything_planned_ran(plan: &Plan, gates: &GateResults) -> bool {
    plan.hooks.iter().all(|hook| gates.hooks.contains_key(hook)) && (!plan.run_metrics || gates.metrics.is_some())
}

/// Why a tick failed, for the event message.
fn failed_check(plan: &Plan, gates: &GateResults) -> Option<String> {
    for hook in [HookType::PreRollout, HookType::Rollout] {
        if let HookOutcome::Failed(message) = hook_outcome(plan, gates, hook) {
            return Some(format!("{} webhook failed: {message}", hook.as_str()));
        }
    }
    if !plan.run_metrics {
        return None;
    }
    let failed: Vec<String> = gates.metrics.iter().flatten().filter(|m| m.failed()).map(describe_metric).collect();
    (!failed.is_empty()).then(|| failed.join("; "))
}

/// The metrics of the run not judged yet at this tick, and whether any of them asks to
/// fail at once at the last step.
struct Pending {
    /// One line per pending metric, for the Event.
    notes: Vec<String>,
    fail_at_last_step: bool,
}

/// Which metrics are pending at this tick. A comparison metric is pending unless this
/// tick's results judged it (passed or failed): with no metrics run (the first tick of a
/// run) or no result for it, it is pending, never passed. Any other result that says
/// pending counts too.
fn pending_metrics(spec: &CanarySpec, plan: &Plan, gates: &GateResults) -> Pending {
    let results: &[MetricResult] = match (&gates.metrics, plan.run_metrics) {
        (Some(results), true) => results,
        _ => &[],
    };
    let mut pending = Pending { notes: Vec::new(), fail_at_last_step: false };
    for metric in spec.analysis.iter().flat_map(|a| &a.metrics) {
        let result = results.iter().find(|r| r.name == metric.name);
        let is_pending = match result {
            Some(result) => result.pending(),
            None => metric.comparison.is_some(),
        };
        if !is_pending {
            continue;
        }
        if let Some(comparison) = &metric.comparison {
            pending.fail_at_last_step |= comparison.on_insufficient_samples() == InsufficientSamples::Fail;
        }
        pending.notes.push(match result {
            Some(result) => describe_metric(result),
            None => format!("metric {} has no comparison result yet", metric.name),
        });
    }
    pending
}

fn describe_metric(metric: &MetricResult) -> String {
    let value = metric.value.map_or_else(|| "no value".to_string(), |v| format!("{v}"));
    if metric.message.is_empty() {
        format!("metric {} = {value}", metric.name)
    } else {
        format!("metric {} = {value} ({})", metric.name, metric.message)
    }
}

/// The event of this reconcile, and whether it consumed the gate and check results
/// (so the analysis clock restarts and the results are recorded).
struct Classified {
    event: Event,
    consumed: bool,
    /// Why the event happened, for messages (a failed check, a webhook's answer).
    detail: Option<String>,
}

impl Classified {
    fn just(event: Event) -> Self {
        Classified { event, consumed: false, detail: None }
    }
    fn consumed(event: Event, detail: Option<String>) -> Self {
        Classified { event, consumed: true, detail }
    }
}

fn classify(
    spec: &CanarySpec,
    status: &CanaryStatus,
    strategy: &Strategy,
    situation: &Situation,
    plan: &Plan,
    obs: &Observation,
) -> Classified {
    let gates = &obs.gates;
    let threshold = threshold_of(spec);
    let failed_checks = status.failed_checks.max(0) as u32;
    match situation {
        Situation::Suspended => Classified::just(Event::Suspended),
        Situation::Idle => Classified::just(Event::NothingToDo),
        Situation::Initializing if obs.primary == WorkloadHealth::Ready => Classified::just(Event::PrimaryReady),
        Situation::Initializing => Classified::just(Event::NothingToDo),
        Situation::RevertedToPromoted => Classified::just(Event::RevertedToPromoted),
        Situation::RevisionChanged { approved: true } => Classified::just(Event::RevisionChangedMidRun),
        Situation::RevisionChanged { approved: false } => Classified::just(Event::RevisionChangedNotApproved),
        Situation::ApprovalWithdrawn => Classified::just(Event::FleetNotApproved),
        Situation::Gate { approved: false, .. } => Classified::just(Event::FleetNotApproved),
        Situation::Gate { due: false, .. } => Classified::just(Event::NothingToDo),
        Situation::Gate { .. } if !everything_planned_ran(plan, gates) => Classified::just(Event::NothingToDo),
        Situation::Gate { .. } => {
            if let HookOutcome::Passed = hook_outcome(plan, gates, HookType::Rollback)
                && plan.hooks.contains(&HookType::Rollback)
            {
                return Classified::consumed(Event::RollbackRequested, Some("a rollback webhook answered 2xx".into()));
            }
            match hook_outcome(plan, gates, HookType::ConfirmRollout) {
                HookOutcome::Failed(message) => {
                    Classified::consumed(Event::ConfirmRolloutRejected, Some(message.to_string()))
                }
                _ => Classified::consumed(Event::NewRevision, None),
            }
        }
        Situation::Analysis { tick } => {
            if failed_checks >= threshold {
                return Classified::just(Event::ThresholdReached);
            }
            if let WorkloadHealth::DeadlineExceeded { reason } = &obs.canary {
                return Classified {
                    event: Event::ProgressDeadlineExceeded,
                    consumed: false,
                    detail: Some(reason.clone()),
                };
            }
            // No pods to analyse or to send traffic to (a Deployment at zero counts as
            // ready): nothing is judged until they are back.
            if obs.canary_scaled_down {
                return Classified::just(Event::CanaryScaledDown);
            }
            if let WorkloadHealth::NotReady { reason } = &obs.canary {
                return Classified { event: Event::CanaryNotReady, consumed: false, detail: Some(reason.clone()) };
            }
            if spec.skip_analysis {
                return Classified::just(Event::SkipAnalysis);
            }
            let Some(tick) = tick else {
                return Classified::just(Event::NothingToDo);
            };
            if !everything_planned_ran(plan, gates) {
                return Classified::just(Event::NothingToDo);
            }
            if plan.hooks.contains(&HookType::Rollback)
                && let HookOutcome::Passed = hook_outcome(plan, gates, HookType::Rollback)
            {
                return Classified::consumed(Event::RollbackRequested, Some("a rollback webhook answered 2xx".into()));
            }
            if let Some(why) = failed_check(plan, gates) {
                let event = if failed_checks + 1 >= threshold { Event::ThresholdReached } else { Event::CheckFailed };
                return Classified::consumed(event, Some(why));
            }
            if let Some(clear) = tick.held_until {
                let until = status.previous_revision_traffic_until.unwrap_or(obs.now);
                return Classified::consumed(
                    Event::MetricWindowHeld,
                    Some(format!(
                        "the canary served another revision until {} and the metrics reach back {}: no metric is judged before {}",
                        until.format("%Y-%m-%dT%H:%M:%SZ"),
                        human(longest_metric_window(spec)),
                        clear.format("%Y-%m-%dT%H:%M:%SZ"),
                    )),
                );
            }
            let pending = pending_metrics(spec, plan, gates);
            let pending_note = (!pending.notes.is_empty()).then(|| format!("pending: {}", pending.notes.join("; ")));
            if let Some(note) = &pending_note
                && tick.step.needs_judged_comparisons()
            {
                // The last step: hold for more values, or fail, never a pass.
                let held_since = status.comparison_pending_since;
                let deadline = progress_deadline(spec);
                return if pending.fail_at_last_step {
                    Classified::consumed(
                        Event::InsufficientSamples,
                        Some(format!("onInsufficientSamples is Fail and the run reached its last step; {note}")),
                    )
                } else if let Some(since) = held_since
                    && obs.now - since >= chrono::Duration::from_std(deadline).unwrap_or(chrono::Duration::MAX)
                {
                    Classified::consumed(
                        Event::InsufficientSamples,
                        Some(format!(
                            "held at the last step since {} for progressDeadlineSeconds ({}) without every comparison judged; {note}",
                            since.format("%Y-%m-%dT%H:%M:%SZ"),
                            human(deadline)
                        )),
                    )
                } else {
                    Classified::consumed(Event::ComparisonPending, Some(note.clone()))
                };
            }
            match tick.step {
                NextStep::Advance { kind, .. } if kind.increases_traffic() => {
                    match hook_outcome(plan, gates, HookType::ConfirmTrafficIncrease) {
                        HookOutcome::Failed(message) => {
                            Classified::consumed(Event::TrafficIncreaseRejected, Some(message.to_string()))
                        }
                        _ => Classified::consumed(Event::StepPassed, pending_note),
                    }
                }
                NextStep::Advance { .. } => Classified::consumed(Event::StepPassed, pending_note),
                NextStep::Promote => match hook_outcome(plan, gates, HookType::ConfirmPromotion) {
                    HookOutcome::Failed(message) => {
                        Classified::consumed(Event::PromotionRejected, Some(message.to_string()))
                    }
                    _ => Classified::consumed(Event::AnalysisComplete, None),
                },
            }
        }
        Situation::Promoting => match &obs.primary {
            WorkloadHealth::DeadlineExceeded { reason } => {
                Classified { event: Event::PrimaryStuck, consumed: false, detail: Some(reason.clone()) }
            }
            WorkloadHealth::NotReady { reason } => {
                Classified { event: Event::PrimaryRollingOut, consumed: false, detail: Some(reason.clone()) }
            }
            WorkloadHealth::Ready if !obs.primary_updated => Classified::just(Event::PrimaryRollingOut),
            WorkloadHealth::Ready => {
                let step = promotion_step(spec).filter(|_| strategy.steps_promotion());
                let weight = clamp_weight(status.canary_weight);
                match step {
                    None => Classified::just(Event::PrimaryRolledOut),
                    Some(_) if !is_due(spec, status, obs.now) => Classified::just(Event::NothingToDo),
                    Some(_) if weight_after_promotion_step(weight, step) > 0 => {
                        Classified::consumed(Event::PromotionStepDone, None)
                    }
                    Some(_) => Classified::consumed(Event::PrimaryRolledOut, None),
                }
            }
        },
        Situation::Finalising => Classified::just(Event::Finalised),
    }
}

/// Decides what to do with a Canary given what the reconciler observed, after it ran the
/// gates and checks [`plan`] asked for.
pub fn decide(spec: &CanarySpec, status: &CanaryStatus, provider: Provider, obs: &Observation) -> Decision {
    let strategy = strategy_of(spec, provider);
    let situation = assess(spec, status, provider, &strategy, &obs.target_revision, &obs.fleet, obs.now);
    let plan = plan_for(spec, status, &situation);
    // Suspended means touch nothing: requests wait, unhandled, until it resumes.
    let requests = if situation == Situation::Suspended {
        Triage::default()
    } else {
        triage(&obs.requests, status, &obs.target_revision, &obs.fleet)
    };
    let classified = match &requests.acting {
        // A person's request overrides this reconcile's gates and checks.
        Some((request, event)) => Classified {
            event: *event,
            consumed: false,
            detail: Some(format!("{}={}", request.verb.annotation(), request.value)),
        },
        None => classify(spec, status, &strategy, &situation, &plan, obs),
    };
    let Some((to, effect)) = transition(status.phase, classified.event) else {
        // The classifier produced a pair the table does not allow: keep everything as it
        // is and say so loudly rather than guess.
        return Decision {
            status: status.clone(),
            actions: vec![Action::Event {
                reason: "InvalidTransition",
                message: format!(
                    "petrel bug: no transition from {} on {:?}; nothing changed",
                    status.phase, classified.event
                ),
                warning: true,
                mute_alert: false,
            }],
            requeue_after: analysis_interval(spec),
            idle: false,
        };
    };
    let mut decision =
        Apply { spec, status, strategy: &strategy, obs, situation: &situation, plan: &plan, classified: &classified }
            .apply(to, effect);
    for request in requests.handled() {
        decision.status.handled_requests.insert(request.verb.annotation().to_string(), request.value.clone());
    }
    for (request, reason) in requests.ignored {
        decision.actions.push(warn(
            "RequestIgnored",
            format!("Ignored the {} request {}={}: {reason}", request.verb, request.verb.annotation(), request.value),
        ));
    }
    set_conditions(spec, &mut decision.status, obs.now);
    decision
}

/// Everything an [`Effect`] needs to build the new status and the actions.
struct Apply<'a> {
    spec: &'a CanarySpec,
    status: &'a CanaryStatus,
    strategy: &'a Strategy,
    obs: &'a Observation,
    situation: &'a Situation,
    plan: &'a Plan,
    classified: &'a Classified,
}

fn routes(routes: Routes) -> Action {
    Action::SetRoutes { primary: routes.primary, canary: routes.canary, mirror: routes.mirror }
}

fn info(reason: &'static str, message: String) -> Action {
    Action::Event { reason, message, warning: false, mute_alert: false }
}

fn warn(reason: &'static str, message: String) -> Action {
    Action::Event { reason, message, warning: true, mute_alert: false }
}

/// An Event saying a confirm webhook of type `hook` holds the release: Flagger alerts
/// about it unless that webhook has `muteAlert`.
fn held_by(hook: HookType, gates: &GateResults, reason: &'static str, message: String) -> Action {
    Action::Event { reason, message, warning: false, mute_alert: gates.muted.contains(&hook) }
}

fn reset_run(status: &mut CanaryStatus) {
    status.failed_checks = 0;
    status.iterations = 0;
    status.canary_weight = 0;
    status.analysis_results.clear();
    status.comparison_samples.clear();
    status.comparison_pending_since = None;
}

/// Shortens a revision hash for messages.
/// A revision for messages: a template hash shortened to 12 characters; a name (a Knative
/// revision, `podinfo-00002`) whole, as shortening would cut its number off.
fn short(revision: &str) -> &str {
    if !revision.chars().all(|c| c.is_ascii_hexdigit()) {
        return revision;
    }
    revision.get(..revision.len().min(12)).unwrap_or(revision)
}

fn human(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0 => format!("{}ms", duration.as_millis()),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s if s > 60 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

impl Apply<'_> {
    fn apply(&self, to: Phase, effect: Effect) -> Decision {
        let (spec, old, obs) = (self.spec, self.status, self.obs);
        let now = obs.now;
        let revision = obs.target_revision.as_str();
        let threshold = threshold_of(spec);
        let interval = analysis_interval(spec);
        let detail = self.classified.detail.clone().unwrap_or_default();
        let event = self.classified.event;
        let mut new = old.clone();
        let mut actions = Vec::new();
        new.phase = to;
        if to != old.phase {
            new.last_transition_time = Some(now);
        }
        if self.classified.consumed {
            new.last_analysis_time = Some(now);
            if self.plan.run_metrics
                && let Some(metrics) = &obs.gates.metrics
            {
                new.analysis_results = metrics.clone();
                self.collect_samples(&mut new, metrics);
            }
        }

        match effect {
            Effect::Hold => match event {
                Event::TrafficIncreaseRejected => actions.push(held_by(
                    HookType::ConfirmTrafficIncrease,
                    &obs.gates,
                    "TrafficIncreaseHeld",
                    format!("Checks passed at weight {}; confirm-traffic-increase webhook held the next step ({detail})", old.canary_weight),
                )),
                Event::PromotionRejected => actions.push(held_by(
                    HookType::ConfirmPromotion,
                    &obs.gates,
                    "WaitingForPromotion",
                    format!("Analysis of {} complete at weight {}; confirm-promotion webhook said not yet ({detail}); checks keep running", short(revision), old.canary_weight),
                )),
                Event::MetricWindowHeld => actions.push(info(
                    "MetricWindowHeld",
                    format!("Revision {} holds at weight {}: {detail}", short(revision), old.canary_weight),
                )),
                _ => {}
            },
            Effect::Initialize => {
                let (promoted, promoted_release) =
                    obs.primary_template.clone().unwrap_or_else(|| (revision.to_string(), obs.target_release.clone()));
                new.last_applied_spec = Some(promoted.clone());
                new.last_promoted_spec = Some(promoted.clone());
                new.release = Some(promoted_release.clone());
                new.promoted_release = Some(promoted_release.clone());
                reset_run(&mut new);
                actions.push(routes(Routes::ALL_PRIMARY));
                actions.push(Action::ScaleCanaryToZero);
                actions.push(info(
                    "Initialized",
                    format!("Primary is ready and serves all traffic with revision {} ({promoted_release})", short(&promoted)),
                ));
            }
            Effect::StartRun => {
                new.last_applied_spec = Some(revision.to_string());
                new.release = Some(obs.target_release.clone());
                new.last_analysis_time = Some(now);
                if let FleetGate::Approved { revision: approved } = &obs.fleet {
                    new.fleet_approved_revision = Some(approved.clone());
                }
                reset_run(&mut new);
                actions.push(Action::ScaleCanaryUp { after_status: true });
                let how = if spec.skip_analysis {
                    "skipAnalysis is set: it will be promoted once its pods are ready".to_string()
                } else {
                    format!("{} analysis starts in {}", self.strategy.name(), human(interval))
                };
                if event == Event::RetryRequested {
                    actions.push(info(
                        "Retrying",
                        format!("Retry requested ({detail}): revision {} starts again with its counters reset, scaling the canary up; {how}", short(revision)),
                    ));
                } else {
                    actions.push(info(
                        "NewRevision",
                        format!("New revision {} ({}) detected, scaling the canary up; {how}", short(revision), obs.target_release),
                    ));
                }
            }
            Effect::ScaleUpAgain => {
                actions.push(Action::ScaleCanaryUp { after_status: false });
                actions.push(warn(
                    "CanaryScaledUpAgain",
                    format!(
                        "The canary of revision {} runs no pods during its analysis (its scale-up did not land, or it was scaled down since): scaling it up again; nothing is judged until its pods are ready",
                        short(revision)
                    ),
                ));
            }
            Effect::Wait => {
                // The hub cannot compute a member's revision (overlays differ per cluster):
                // it reads the one waiting here and approves exactly that.
                new.waiting_revision = Some(revision.to_string());
                new.waiting_release = Some(obs.target_release.clone());
                if old.phase != Phase::Waiting {
                    actions.push(routes(Routes::ALL_PRIMARY));
                }
                if old.phase.is_active() {
                    actions.push(Action::ScaleCanaryToZero);
                    reset_run(&mut new);
                }
                new.canary_weight = 0;
                if event == Event::RetryAwaitingFleet {
                    reset_run(&mut new);
                    // The failed run's last tick must not delay the start once the hub approves.
                    new.last_analysis_time = None;
                    actions.push(info(
                        "Retrying",
                        format!("Retry requested ({detail}): revision {} starts again with its counters reset, at the fleet gate", short(revision)),
                    ));
                }
                match event {
                    Event::ConfirmRolloutRejected => actions.push(held_by(
                        HookType::ConfirmRollout,
                        &obs.gates,
                        "WaitingForApproval",
                        format!("Revision {} waits: confirm-rollout webhook said no ({detail}); asking again in {}", short(revision), human(interval)),
                    )),
                    _ if old.phase == Phase::Waiting => {}
                    _ => {
                        let approved = match &obs.fleet {
                            FleetGate::Pending { approved: Some(a) } | FleetGate::Approved { revision: a } => format!("the hub approved {}", short(a)),
                            _ => "the hub approved no revision yet".to_string(),
                        };
                        actions.push(info(
                            "WaitingForFleetApproval",
                            format!("Revision {} waits for its fleet Rollout to approve it ({approved}); all traffic on the primary", short(revision)),
                        ));
                    }
                }
            }
            Effect::Restart => {
                new.last_applied_spec = Some(revision.to_string());
                new.release = Some(obs.target_release.clone());
                new.last_analysis_time = Some(now);
                reset_run(&mut new);
                actions.push(routes(Routes::ALL_PRIMARY));
                actions.push(info(
                    "RestartedAnalysis",
                    format!(
                        "Target changed to revision {} during the analysis of {}: all traffic back on the primary, analysis restarts in {}",
                        short(revision),
                        old.last_applied_spec.as_deref().map(short).unwrap_or("?"),
                        human(interval)
                    ),
                ));
            }
            Effect::Withdraw => {
                new.last_applied_spec = Some(revision.to_string());
                new.release = old.promoted_release.clone();
                reset_run(&mut new);
                actions.push(routes(Routes::ALL_PRIMARY));
                actions.push(Action::ScaleCanaryToZero);
                actions.push(info(
                    "RevertedToPromoted",
                    format!("Target is back on the promoted revision {}: release of {} withdrawn, all traffic on the primary", short(revision), old.last_applied_spec.as_deref().map(short).unwrap_or("?")),
                ));
            }
            Effect::CountFailure => {
                new.failed_checks = old.failed_checks.max(0) + 1;
                actions.push(warn(
                    "CheckFailed",
                    format!("Check failed at weight {} (failed checks {}/{threshold}): {detail}", old.canary_weight, new.failed_checks),
                ));
            }
            Effect::Rollback => {
                if self.classified.consumed && event == Event::ThresholdReached {
                    new.failed_checks = old.failed_checks.max(0) + 1;
                }
                new.last_applied_spec = Some(revision.to_string());
                new.canary_weight = 0;
                actions.push(routes(Routes::ALL_PRIMARY));
                actions.push(Action::ScaleCanaryToZero);
                actions.push(Action::FireHooks(HookType::PostRollout));
                let (reason, why) = match event {
                    Event::ThresholdReached => (
                        "RolledBack",
                        format!("failed checks {}/{threshold} reached the threshold{}", new.failed_checks, if detail.is_empty() { String::new() } else { format!(" (last: {detail})") }),
                    ),
                    Event::ProgressDeadlineExceeded => (
                        "DeadlineExceeded",
                        format!("canary not ready within progressDeadlineSeconds ({detail})"),
                    ),
                    Event::AbortRequested => ("Aborted", format!("abort requested ({detail})")),
                    Event::InsufficientSamples => ("InsufficientSamples", detail.clone()),
                    _ => ("RollbackRequested", detail.clone()),
                };
                actions.push(warn(
                    reason,
                    format!("Rolling back revision {} at weight {}: {why}; all traffic on the primary, canary scaled to zero", short(revision), old.canary_weight),
                ));
            }
            Effect::PromoteNow => {
                new.last_promoted_spec = Some(revision.to_string());
                new.promoted_release = new.release.clone();
                new.canary_weight = 0;
                actions.push(routes(Routes::ALL_PRIMARY));
                actions.push(Action::PromoteCanaryToPrimary);
                actions.push(Action::ScaleCanaryToZero);
                actions.push(Action::FireHooks(HookType::PostRollout));
                actions.push(info(
                    "Promoted",
                    format!("skipAnalysis is set: revision {} promoted to the primary without analysis", short(revision)),
                ));
            }
            Effect::Advance => self.advance(&mut new, &mut actions),
            Effect::HoldForSamples => {
                let since = old.comparison_pending_since.unwrap_or(now);
                new.comparison_pending_since = Some(since);
                let deadline = progress_deadline(spec);
                actions.push(warn(
                    "ComparisonPending",
                    format!(
                        "Revision {} holds at its last step (weight {}) until every comparison is judged ({detail}); held since {}, the run fails at {} (progressDeadlineSeconds {}) unless they are judged first",
                        short(revision),
                        old.canary_weight,
                        since.format("%Y-%m-%dT%H:%M:%SZ"),
                        (since + chrono::Duration::from_std(deadline).unwrap_or(chrono::Duration::zero())).format("%Y-%m-%dT%H:%M:%SZ"),
                        human(deadline)
                    ),
                ));
            }
            Effect::StartPromotion if event == Event::PromoteRequested => {
                actions.push(Action::PromoteCanaryToPrimary);
                actions.push(info(
                    "PromotedByRequest",
                    format!(
                        "Promotion requested ({detail}): revision {} skips its remaining analysis at weight {} (failed checks {}/{threshold}); copying the canary template to the primary",
                        short(revision),
                        old.canary_weight,
                        old.failed_checks
                    ),
                ));
            }
            Effect::StartPromotion => {
                actions.push(Action::PromoteCanaryToPrimary);
                actions.push(info(
                    "PromotionStarted",
                    format!(
                        "Analysis of {} passed ({} strategy, failed checks {}/{threshold}); copying the canary template to the primary",
                        short(revision),
                        self.strategy.name(),
                        old.failed_checks
                    ),
                ));
            }
            Effect::ShiftToPrimary => {
                let weight = weight_after_promotion_step(clamp_weight(old.canary_weight), promotion_step(spec));
                new.canary_weight = i32::from(weight);
                actions.push(routes(Routes::canary_weight(weight, false)));
                actions.push(info(
                    "PromotionStep",
                    format!("Primary runs the new template; canary weight {} → {weight}", old.canary_weight),
                ));
            }
            Effect::RouteAllToPrimary => {
                new.canary_weight = 0;
                actions.push(routes(Routes::ALL_PRIMARY));
                actions.push(info(
                    "TrafficRoutedToPrimary",
                    format!("Primary runs revision {} and is ready; all traffic on the primary", old.last_applied_spec.as_deref().map(short).unwrap_or("?")),
                ));
            }
            Effect::Finalise => {
                new.last_promoted_spec = old.last_applied_spec.clone();
                new.promoted_release = old.release.clone();
                new.canary_weight = 0;
                actions.push(Action::ScaleCanaryToZero);
                actions.push(Action::FireHooks(HookType::PostRollout));
                actions.push(info(
                    "Promoted",
                    format!(
                        "Revision {} ({}) promoted; canary scaled to zero",
                        old.last_applied_spec.as_deref().map(short).unwrap_or("?"),
                        old.release.as_deref().unwrap_or("?")
                    ),
                ));
            }
            Effect::ReportStuck => actions.push(warn(
                "PrimaryRolloutStuck",
                format!("Primary rollout of the promoted template is stuck ({detail}); traffic stays where it is"),
            )),
        }

        // The hold's clock belongs to one run under analysis.
        if !matches!(new.phase, Phase::Progressing | Phase::WaitingPromotion) {
            new.comparison_pending_since = None;
        }
        // The canary stops serving the revision of a run that ends or is replaced now.
        if old.phase.is_active() && (!new.phase.is_active() || new.last_applied_spec != old.last_applied_spec) {
            new.previous_revision_traffic_until = Some(now);
        }
        // A moment petrel cannot have recorded yet (an edited status, or a leader whose
        // clock ran ahead) is recorded as now: it holds one window from here, never for ever.
        if new.previous_revision_traffic_until.is_some_and(|until| until > now) {
            new.previous_revision_traffic_until = Some(now);
        }
        let requeue_after = self.requeue(&new);
        let target = Some(self.obs.target_revision.as_str());
        let at_target = new.last_applied_spec.as_deref() == target || new.last_promoted_spec.as_deref() == target;
        let idle = is_idle(new.phase) && at_target;
        Decision { status: new, actions, requeue_after, idle }
    }

    fn advance(&self, new: &mut CanaryStatus, actions: &mut Vec<Action>) {
        let old = self.status;
        let Situation::Analysis { tick: Some(tick) } = self.situation else {
            return;
        };
        let NextStep::Advance { kind, routes: next_routes, weight, iterations } = tick.step else {
            return;
        };
        new.canary_weight = i32::from(weight);
        new.iterations = iterations as i32;
        actions.push(routes(next_routes));
        if tick.first {
            actions.push(info(
                "AnalysisStarted",
                format!("Starting {} analysis of revision {}", self.strategy.name(), short(&self.obs.target_revision)),
            ));
        }
        let (reason, message) = match (kind, self.strategy) {
            (StepKind::Mirror, _) => {
                ("MirroringStarted", "Mirroring traffic to the canary before shifting weight".to_string())
            }
            (StepKind::Weight, strategy) => (
                "WeightIncreased",
                format!("Canary weight {} → {weight} (max {})", old.canary_weight, strategy.max_weight()),
            ),
            (StepKind::Iteration, Strategy::AbTesting { iterations: needed }) => {
                ("IterationPassed", format!("A/B iteration {iterations}/{needed}: matching requests go to the canary"))
            }
            (StepKind::Iteration, Strategy::BlueGreen { iterations: needed, mirror }) => (
                "IterationPassed",
                format!(
                    "Blue/green iteration {iterations}/{needed}{}",
                    if *mirror { " (mirroring traffic to the canary)" } else { "" }
                ),
            ),
            (StepKind::Iteration, _) => ("IterationPassed", format!("Iteration {iterations}")),
            (StepKind::SwitchToCanary, _) => (
                "TrafficSwitched",
                "All iterations passed: all traffic on the canary for one more check before promotion".to_string(),
            ),
        };
        // A comparison still collecting values does not hold a step before the last one;
        // the Event says so.
        let message = match &self.classified.detail {
            Some(pending) => format!("{message}; {pending}"),
            None => message,
        };
        actions.push(info(reason, message));
    }

    fn collect_samples(&self, new: &mut CanaryStatus, metrics: &[MetricResult]) {
        const MAX_SAMPLES: usize = MAX_COMPARISON_SAMPLES;
        let compared = self.spec.analysis.iter().flat_map(|a| &a.metrics).filter(|m| m.comparison.is_some());
        for metric in compared {
            let Some(result) = metrics.iter().find(|r| r.name == metric.name) else {
                continue;
            };
            let (Some(canary), Some(primary)) = (result.value, result.primary_value) else {
                continue;
            };
            let index = match new.comparison_samples.iter().position(|s| s.name == metric.name) {
                Some(index) => index,
                None => {
                    new.comparison_samples.push(petrel_api::canary::ComparisonSamples {
                        name: metric.name.clone(),
                        ..Default::default()
                    });
                    new.comparison_samples.len() - 1
                }
            };
            let samples = &mut new.comparison_samples[index];
            samples.canary.push(canary);
            samples.primary.push(primary);
            for side in [&mut samples.canary, &mut samples.primary] {
                if side.len() > MAX_SAMPLES {
                    side.drain(..side.len() - MAX_SAMPLES);
                }
            }
        }
    }

    fn requeue(&self, new: &CanaryStatus) -> Duration {
        let interval = analysis_interval(self.spec);
        let until_tick = time_to_tick(self.spec, new, self.obs.now).max(MIN_REQUEUE);
        match (self.classified.event, new.phase) {
            (Event::Suspended, _) => interval,
            // Waiting for pods: the watch of the target and of the primary (owned by the
            // Canary) wakes the reconcile at each change of their status, so the requeue is
            // only the analysis interval's check of the progress deadline, as Flagger's tick.
            // A poll every few seconds here was most of petrel's CPU in a release of 1,000.
            (Event::CanaryNotReady | Event::CanaryScaledDown | Event::PrimaryRollingOut, _) => interval,
            (_, Phase::Initializing) => interval,
            (_, Phase::Progressing | Phase::WaitingPromotion) => until_tick,
            (_, Phase::Waiting) if approved_for(&self.obs.fleet, &self.obs.target_revision) => until_tick,
            (_, Phase::Promoting) if promotion_step(self.spec).is_some() && self.strategy.steps_promotion() => {
                until_tick.min(interval)
            }
            (_, Phase::Promoting) => interval,
            (_, Phase::Finalising) => PROMPTLY,
            _ => interval,
        }
    }
}

/// `Promoted` (Flagger-compatible, reason = phase), `Ready` and `Progressing` (reason
/// `ComparisonPending` while the run holds at its last step for a comparison).
/// `Stalled` belongs to the reconciler and is left alone.
fn set_conditions(spec: &CanarySpec, new: &mut CanaryStatus, now: DateTime<Utc>) {
    let phase = new.phase;
    let revision = new.last_applied_spec.as_deref().map(short).unwrap_or("?").to_string();
    let (promoted, promoted_message) = match phase {
        Phase::Initialized => ("True", "Primary initialized".to_string()),
        Phase::Succeeded => ("True", format!("Revision {revision} promoted")),
        Phase::Failed => ("False", format!("Revision {revision} failed its analysis and was rolled back")),
        _ => ("Unknown", format!("Revision {revision} is {phase}")),
    };
    set_condition(&mut new.conditions, "Promoted", promoted, phase.as_str(), &promoted_message, now);
    let (ready, ready_reason, ready_message) = match phase {
        Phase::Initializing => ("False", "Initializing", "Waiting for the primary to become ready".to_string()),
        _ => ("True", "PrimaryServing", "The primary serves stable traffic".to_string()),
    };
    set_condition(&mut new.conditions, "Ready", ready, ready_reason, &ready_message, now);
    let (progressing, progressing_message) = match phase {
        Phase::Progressing => ("True", format!("Analysing revision {revision} at weight {}", new.canary_weight)),
        Phase::WaitingPromotion => ("True", format!("Revision {revision} waits for confirm-promotion")),
        Phase::Promoting | Phase::Finalising => ("True", format!("Promoting revision {revision}")),
        Phase::Waiting => ("Unknown", "A new revision waits for approval".to_string()),
        _ => ("False", "No release under way".to_string()),
    };
    let (progressing_reason, progressing_message) = match new.comparison_pending_since {
        Some(since) if phase.is_active() => {
            let deadline =
                since + chrono::Duration::from_std(progress_deadline(spec)).unwrap_or(chrono::Duration::zero());
            (
                "ComparisonPending",
                format!(
                    "Revision {revision} holds at its last step (weight {}) until every comparison is judged; it fails at {} (progressDeadlineSeconds after the hold began)",
                    new.canary_weight,
                    deadline.format("%Y-%m-%dT%H:%M:%SZ")
                ),
            )
        }
        _ => (phase.as_str(), progressing_message),
    };
    set_condition(&mut new.conditions, "Progressing", progressing, progressing_reason, &progressing_message, now);
}
