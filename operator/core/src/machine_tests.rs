//! Example-based tests of the state machine: one release per test, step by step.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use crate::machine::{Action, Decision, FleetGate, GateResults, Observation, Plan, WorkloadHealth, decide, plan};
use crate::provider::Provider;
use petrel_api::canary::{
    CanaryAnalysis, CanaryMetric, CanarySpec, CanaryStatus, CanaryWebhook, HookType, HttpMatch, MetricOutcome,
    MetricResult, Phase,
};
use petrel_api::verbs::verb_requests;

/// A Canary and the world around it, driven one reconcile at a time.
pub(crate) struct Sim {
    pub spec: CanarySpec,
    pub provider: Provider,
    pub status: CanaryStatus,
    pub now: DateTime<Utc>,
    pub revision: String,
    pub canary: WorkloadHealth,
    /// `Observation::canary_scaled_down`.
    pub canary_scaled_down: bool,
    pub primary: WorkloadHealth,
    pub primary_updated: bool,
    /// `Observation::primary_template`.
    pub primary_template: Option<(String, String)>,
    pub fleet: FleetGate,
    /// Hook types that answer with an error.
    pub failing_hooks: Vec<HookType>,
    pub metrics_pass: bool,
    /// Metrics whose result says pending (a comparison still collecting values).
    pub pending_metrics: Vec<String>,
    pub last_plan: Plan,
    /// The Canary's annotations (verb requests).
    pub annotations: BTreeMap<String, String>,
}

pub(crate) fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().unwrap()
}

impl Sim {
    pub fn new(spec: CanarySpec, provider: Provider) -> Self {
        Sim {
            spec,
            provider,
            status: CanaryStatus::default(),
            now: start(),
            revision: "r0".into(),
            canary: WorkloadHealth::Ready,
            canary_scaled_down: false,
            primary: WorkloadHealth::Ready,
            primary_updated: true,
            primary_template: None,
            fleet: FleetGate::NotInFleet,
            failing_hooks: Vec::new(),
            metrics_pass: true,
            pending_metrics: Vec::new(),
            last_plan: Plan::default(),
            annotations: BTreeMap::new(),
        }
    }

    /// One reconcile now: plan, run what it asks for, decide, keep the new status.
    pub fn reconcile(&mut self) -> Decision {
        let plan = plan(&self.spec, &self.status, self.provider, &self.revision, &self.fleet, self.now);
        let hooks: BTreeMap<_, _> = plan
            .hooks
            .iter()
            .map(|hook| {
                let outcome = if self.failing_hooks.contains(hook) { Err(format!("{hook:?} said no")) } else { Ok(()) };
                (*hook, outcome)
            })
            .collect();
        let metrics = plan.run_metrics.then(|| {
            self.spec
                .analysis
                .iter()
                .flat_map(|a| &a.metrics)
                .map(|m| MetricResult {
                    name: m.name.clone(),
                    value: Some(if self.metrics_pass { 99.5 } else { 80.0 }),
                    primary_value: None,
                    outcome: if self.pending_metrics.contains(&m.name) {
                        MetricOutcome::Pending
                    } else {
                        MetricOutcome::from_passed(self.metrics_pass)
                    },
                    message: String::new(),
                })
                .collect()
        });
        let obs = Observation {
            now: self.now,
            target_revision: self.revision.clone(),
            target_release: format!("app:{}", self.revision),
            canary: self.canary.clone(),
            canary_scaled_down: self.canary_scaled_down,
            primary: self.primary.clone(),
            primary_updated: self.primary_updated,
            primary_template: self.primary_template.clone(),
            fleet: self.fleet.clone(),
            gates: GateResults { muted: self.muted(&hooks), hooks, metrics },
            // Every request on the object, handled or not: `decide` must skip handled ones.
            requests: verb_requests(&self.annotations),
        };
        let decision = decide(&self.spec, &self.status, self.provider, &obs);
        self.status = decision.status.clone();
        self.last_plan = plan;
        decision
    }

    /// The failing hook types whose webhook has `muteAlert` (as the reconciler finds them).
    fn muted(&self, hooks: &BTreeMap<HookType, Result<(), String>>) -> std::collections::BTreeSet<HookType> {
        let webhooks = self.spec.analysis.iter().flat_map(|a| &a.webhooks);
        let muted: Vec<HookType> = webhooks.filter(|w| w.mute_alert).map(|w| w.type_).collect();
        hooks.iter().filter(|(hook, outcome)| outcome.is_err() && muted.contains(hook)).map(|(hook, _)| *hook).collect()
    }

    /// Waits for the decision's requeue, then reconciles.
    pub fn after(&mut self, wait: Duration) -> Decision {
        self.now += chrono::Duration::from_std(wait).unwrap();
        self.reconcile()
    }

    /// Reconciles once the next analysis tick is due.
    pub fn next_tick(&mut self) -> Decision {
        self.after(interval(&self.spec))
    }

    /// From Initializing to Initialized on `r0`, then a new revision `r1` starts.
    pub fn initialized_then_release(&mut self, revision: &str) -> Decision {
        self.reconcile();
        assert_eq!(self.status.phase, Phase::Initialized);
        self.revision = revision.into();
        self.after(Duration::from_secs(1))
    }
}

fn interval(spec: &CanarySpec) -> Duration {
    crate::strategy::analysis_interval(spec)
}

pub(crate) fn analysis(a: CanaryAnalysis) -> CanarySpec {
    CanarySpec {
        analysis: Some(CanaryAnalysis {
            interval: Some("30s".into()),
            metrics: vec![CanaryMetric { name: "request-success-rate".into(), ..Default::default() }],
            ..a
        }),
        ..Default::default()
    }
}

pub(crate) fn hook(type_: HookType) -> CanaryWebhook {
    CanaryWebhook { name: format!("{type_:?}"), type_, url: "http://hooks".into(), ..Default::default() }
}

pub(crate) fn routes_of(decision: &Decision) -> Vec<(u8, u8, bool)> {
    decision
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::SetRoutes { primary, canary, mirror } => Some((*primary, *canary, *mirror)),
            _ => None,
        })
        .collect()
}

pub(crate) fn reasons(decision: &Decision) -> Vec<&'static str> {
    decision
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Event { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}

/// The message of the decision's Event with `reason`; panics when there is none.
pub(crate) fn event_message(decision: &Decision, reason: &str) -> String {
    decision
        .actions
        .iter()
        .find_map(|a| match a {
            Action::Event { reason: r, message, .. } if *r == reason => Some(message.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no {reason} Event in {:?}", decision.actions))
}

fn has(decision: &Decision, action: &Action) -> bool {
    decision.actions.contains(action)
}

#[test]
fn initializing_waits_for_the_primary_then_records_its_revision() {
    let mut sim = Sim::new(analysis(CanaryAnalysis::default()), Provider::Istio);
    sim.primary = WorkloadHealth::NotReady { reason: "0/2 ready".into() };
    let waiting = sim.reconcile();
    assert_eq!(waiting.status.phase, Phase::Initializing);
    // The primary's watch wakes the reconcile when it gets ready; the requeue is the interval.
    assert_eq!(waiting.requeue_after, Duration::from_secs(30));

    sim.primary = WorkloadHealth::Ready;
    let ready = sim.after(Duration::from_secs(2));
    assert_eq!(ready.status.phase, Phase::Initialized);
    assert_eq!(ready.status.last_applied_spec.as_deref(), Some("r0"));
    assert_eq!(ready.status.last_promoted_spec.as_deref(), Some("r0"));
    assert_eq!(routes_of(&ready), vec![(100, 0, false)]);
    assert_eq!(reasons(&ready), vec!["Initialized"]);
    let promoted = ready.status.conditions.iter().find(|c| c.type_ == "Promoted").unwrap();
    assert_eq!((promoted.status.as_str(), promoted.reason.as_str()), ("True", "Initialized"));

    let idle = sim.after(Duration::from_secs(30));
    assert!(idle.actions.is_empty(), "nothing changes without a new revision: {:?}", idle.actions);
}

/// The scale-up that starts a run follows the status write (`after_status`); when it did
/// not land, or someone scaled the canary down during its run, the next reconcile scales
/// it up again, before its status write, and judges nothing until its pods are back.
#[test]
fn a_canary_scaled_down_during_its_run_is_scaled_up_again_before_anything_is_judged() {
    let mut sim = Sim::new(
        analysis(CanaryAnalysis { step_weight: Some(20), max_weight: Some(50), ..Default::default() }),
        Provider::Istio,
    );
    let started = sim.initialized_then_release("r1");
    assert_eq!(started.status.phase, Phase::Progressing);
    let scale_ups: Vec<_> = started.actions.iter().filter(|a| matches!(a, Action::ScaleCanaryUp { .. })).collect();
    assert_eq!(scale_ups, vec![&Action::ScaleCanaryUp { after_status: true }]);

    // The scale-up did not land: the canary is still at zero (and a Deployment at zero
    // counts as ready).
    sim.canary_scaled_down = true;
    let again = sim.next_tick();
    assert_eq!(again.status.phase, Phase::Progressing);
    assert!(has(&again, &Action::ScaleCanaryUp { after_status: false }), "{:?}", again.actions);
    assert_eq!(reasons(&again), vec!["CanaryScaledUpAgain"]);
    assert!(routes_of(&again).is_empty(), "no step while no canary pod runs: {:?}", again.actions);
    assert_eq!(again.status.canary_weight, 0);
    assert_eq!(again.status.last_analysis_time, started.status.last_analysis_time, "the tick is not used up");
    assert_eq!(again.requeue_after, Duration::from_secs(30));

    // Back up: the run goes on from where it was.
    sim.canary_scaled_down = false;
    let first = sim.after(Duration::from_secs(1));
    assert_eq!(reasons(&first), vec!["AnalysisStarted", "WeightIncreased"]);
    assert_eq!(routes_of(&first), vec![(80, 20, false)]);

    // Scaled down in the middle of the run: scaled up again, the weight stays where it was.
    sim.canary_scaled_down = true;
    let mid = sim.next_tick();
    assert!(has(&mid, &Action::ScaleCanaryUp { after_status: false }));
    assert!(routes_of(&mid).is_empty());
    assert_eq!(mid.status.canary_weight, 20);
    assert_eq!(mid.status.failed_checks, 0);

    // The progress deadline still ends the run, scaled down or not.
    sim.canary = WorkloadHealth::DeadlineExceeded { reason: "stuck".into() };
    let failed = sim.next_tick();
    assert_eq!(failed.status.phase, Phase::Failed);
    assert!(!failed.actions.iter().any(|a| matches!(a, Action::ScaleCanaryUp { .. })));
}

#[test]
fn canary_walks_the_weights_then_promotes() {
    let mut sim = Sim::new(
        analysis(CanaryAnalysis { step_weight: Some(20), max_weight: Some(50), ..Default::default() }),
        Provider::Istio,
    );
    let started = sim.initialized_then_release("r1");
    assert_eq!(started.status.phase, Phase::Progressing);
    assert!(has(&started, &Action::ScaleCanaryUp { after_status: true }));
    assert_eq!(reasons(&started), vec!["NewRevision"]);
    assert_eq!(started.status.last_applied_spec.as_deref(), Some("r1"));
    assert_eq!(started.requeue_after, Duration::from_secs(30));

    // Not due yet: nothing to run, nothing to change.
    assert_eq!(plan(&sim.spec, &sim.status, sim.provider, "r1", &sim.fleet, sim.now), Plan::default());

    let first = sim.next_tick();
    assert_eq!(reasons(&first), vec!["AnalysisStarted", "WeightIncreased"]);
    assert_eq!(routes_of(&first), vec![(80, 20, false)]);
    assert!(!sim.last_plan.run_metrics, "the first tick only runs pre-rollout hooks");

    let second = sim.next_tick();
    assert!(sim.last_plan.run_metrics);
    assert_eq!(routes_of(&second), vec![(60, 40, false)]);
    let third = sim.next_tick();
    assert_eq!(routes_of(&third), vec![(50, 50, false)]);
    assert_eq!(third.status.canary_weight, 50);
    assert_eq!(third.status.analysis_results.len(), 1);

    sim.primary_updated = false;
    let promoting = sim.next_tick();
    assert_eq!(promoting.status.phase, Phase::Promoting);
    assert!(has(&promoting, &Action::PromoteCanaryToPrimary));
    assert_eq!(reasons(&promoting), vec!["PromotionStarted"]);

    let rolling = sim.after(Duration::from_secs(2));
    assert_eq!(rolling.status.phase, Phase::Promoting);
    assert!(rolling.actions.is_empty());
    assert_eq!(rolling.requeue_after, Duration::from_secs(30), "the primary's watch wakes it sooner");

    sim.primary_updated = true;
    let routed = sim.after(Duration::from_secs(2));
    assert_eq!(routed.status.phase, Phase::Finalising);
    assert_eq!(routes_of(&routed), vec![(100, 0, false)]);

    let done = sim.after(routed.requeue_after);
    assert_eq!(done.status.phase, Phase::Succeeded);
    assert_eq!(done.status.last_promoted_spec.as_deref(), Some("r1"));
    assert_eq!(done.status.promoted_release.as_deref(), Some("app:r1"));
    assert!(has(&done, &Action::ScaleCanaryToZero));
    assert!(has(&done, &Action::FireHooks(HookType::PostRollout)));
    assert_eq!(reasons(&done), vec!["Promoted"]);
}

/// Issue 11 (defect 8) / issue 15: only a release in flight needs ticks; Initialized,
/// Succeeded and Failed wait for a change of what petrel watches.
#[test]
fn only_a_release_in_flight_asks_for_ticks() {
    let mut sim = Sim::new(
        analysis(CanaryAnalysis { step_weight: Some(50), max_weight: Some(50), ..Default::default() }),
        Provider::GatewayApi,
    );
    let initialized = sim.reconcile();
    assert_eq!(initialized.status.phase, Phase::Initialized);
    assert!(initialized.idle);
    assert!(sim.after(Duration::from_secs(60)).idle, "nothing changed: still idle");
    sim.revision = "r1".into();
    let mut decision = sim.after(Duration::from_secs(1));
    let mut phases = vec![decision.status.phase];
    while decision.status.phase != Phase::Succeeded {
        assert!(!decision.idle, "{:?} is a release in flight", decision.status.phase);
        decision = sim.after(decision.requeue_after);
        phases.push(decision.status.phase);
        assert!(phases.len() < 20, "no promotion: {phases:?}");
    }
    assert!(decision.idle, "Succeeded at the promoted revision");

    sim.revision = "r2".into();
    sim.metrics_pass = false;
    let mut decision = sim.after(Duration::from_secs(1));
    while decision.status.phase != Phase::Failed {
        assert!(!decision.idle);
        decision = sim.after(decision.requeue_after);
    }
    assert!(decision.idle, "Failed at the failed revision: nothing to do until a new one");
    assert!(sim.after(Duration::from_secs(600)).idle);
}

#[test]
fn failed_checks_reaching_the_threshold_roll_back_and_stay_failed() {
    let mut sim = Sim::new(
        analysis(CanaryAnalysis { step_weight: Some(10), threshold: Some(2), ..Default::default() }),
        Provider::GatewayApi,
    );
    sim.initialized_then_release("r1");
    sim.next_tick();
    sim.next_tick();
    assert_eq!(sim.status.canary_weight, 20);

    sim.metrics_pass = false;
    let failed = sim.next_tick();
    assert_eq!(failed.status.phase, Phase::Progressing);
    assert_eq!(failed.status.failed_checks, 1);
    assert_eq!(failed.status.canary_weight, 20, "a failed check holds the weight");
    assert!(routes_of(&failed).is_empty());
    assert_eq!(reasons(&failed), vec!["CheckFailed"]);
    let Action::Event { message, warning, .. } = &failed.actions[0] else { panic!() };
    assert!(*warning);
    assert!(message.contains("1/2") && message.contains("request-success-rate = 80"), "{message}");

    let rolled_back = sim.next_tick();
    assert_eq!(rolled_back.status.phase, Phase::Failed);
    assert_eq!(rolled_back.status.failed_checks, 2);
    assert_eq!(rolled_back.status.canary_weight, 0);
    assert_eq!(routes_of(&rolled_back), vec![(100, 0, false)]);
    assert!(has(&rolled_back, &Action::ScaleCanaryToZero));
    assert!(has(&rolled_back, &Action::FireHooks(HookType::PostRollout)));
    assert_eq!(reasons(&rolled_back), vec!["RolledBack"]);

    sim.metrics_pass = true;
    let still_failed = sim.next_tick();
    assert_eq!(still_failed.status.phase, Phase::Failed);
    assert!(still_failed.actions.is_empty());

    sim.revision = "r2".into();
    let retried = sim.after(Duration::from_secs(1));
    assert_eq!(retried.status.phase, Phase::Progressing);
    assert_eq!(retried.status.failed_checks, 0);
}

#[test]
fn ab_testing_routes_matching_traffic_for_each_iteration() {
    let mut sim = Sim::new(
        analysis(CanaryAnalysis {
            iterations: Some(3),
            match_: Some(vec![HttpMatch::default()]),
            ..Default::default()
        }),
        Provider::Istio,
    );
    sim.initialized_then_release("r1");
    let mut iterations = Vec::new();
    for _ in 0..3 {
        let decision = sim.next_tick();
        assert_eq!(routes_of(&decision), vec![(0, 100, false)]);
        iterations.push(decision.status.iterations);
    }
    assert_eq!(iterations, vec![1, 2, 3]);
    let promoting = sim.next_tick();
    assert_eq!(promoting.status.phase, Phase::Promoting);
    let routed = sim.after(Duration::from_secs(1));
    assert_eq!(routes_of(&routed), vec![(100, 0, false)]);
}

#[test]
fn blue_green_mirrors_during_iterations_then_switches_for_one_tick() {
    let mut sim =
        Sim::new(analysis(CanaryAnalysis { iterations: Some(2), mirror: true, ..Default::default() }), Provider::Istio);
    sim.initialized_then_release("r1");
    let seen: Vec<_> = (0..3).map(|_| (routes_of(&sim.next_tick()), sim.status.phase)).collect();
    assert_eq!(
        seen,
        vec![
            (vec![(100, 0, true)], Phase::Progressing),
            (vec![(100, 0, true)], Phase::Progressing),
            (vec![(0, 100, false)], Phase::Progressing),
        ]
    );
    assert_eq!(sim.next_tick().status.phase, Phase::Promoting);
}

#[test]
fn a_new_revision_mid_run_restarts_the_analysis() {
    let mut sim = Sim::new(analysis(CanaryAnalysis { step_weight: Some(20), ..Default::default() }), Provider::Istio);
    sim.initialized_then_release("r1");
    sim.next_tick();
    sim.next_tick();
    assert_eq!(sim.status.canary_weight, 40);

    sim.revision = "r2".into();
    let restarted = sim.after(Duration::from_secs(1));
    assert_eq!(restarted.status.phase, Phase::Progressing);
    assert_eq!(routes_of(&restarted), vec![(100, 0, false)]);
    assert_eq!(reasons(&restarted), vec!["RestartedAnalysis"]);
    assert_eq!(restarted.status.canary_weight, 0);
    assert_eq!(restarted.status.last_applied_spec.as_deref(), Some("r2"));

    let first = sim.next_tick();
    assert_eq!(reasons(&first), vec!["AnalysisStarted", "WeightIncreased"]);
}

#[test]
fn reverting_to_the_promoted_template_withdraws_the_release() {
    let mut sim = Sim::new(analysis(CanaryAnalysis { step_weight: Some(20), ..Default::default() }), Provider::Istio);
    sim.initialized_then_release("r1");
    sim.next_tick();
    sim.revision = "r0".into();
    let withdrawn = sim.after(Duration::from_secs(1));
    assert_eq!(withdrawn.status.phase, Phase::Succeeded);
    assert_eq!(routes_of(&withdrawn), vec![(100, 0, false)]);
    assert!(has(&withdrawn, &Action::ScaleCanaryToZero));
    assert_eq!(reasons(&withdrawn), vec!["RevertedToPromoted"]);
    assert!(sim.after(Duration::from_secs(60)).actions.is_empty());
}

#[test]
fn confirm_promotion_holds_in_waiting_promotion_while_checks_keep_running() {
    let mut spec = analysis(CanaryAnalysis { step_weight: Some(50), threshold: Some(3), ..Default::default() });
    spec.analysis.as_mut().unwrap().webhooks = vec![hook(HookType::ConfirmPromotion)];
    let mut sim = Sim::new(spec, Provider::Istio);
    sim.failing_hooks = vec![HookType::ConfirmPromotion];
    sim.initialized_then_release("r1");
    sim.next_tick();
    sim.next_tick();
    assert_eq!(sim.status.canary_weight, 100);

    let waiting = sim.next_tick();
    assert_eq!(waiting.status.phase, Phase::WaitingPromotion);
    assert_eq!(reasons(&waiting), vec!["WaitingForPromotion"]);
    assert_eq!(sim.last_plan.hooks, vec![HookType::ConfirmPromotion]);

    sim.metrics_pass = false;
    let failed = sim.next_tick();
    assert!(sim.last_plan.run_metrics, "metrics keep running in WaitingPromotion");
    assert_eq!(failed.status.failed_checks, 1);
    assert_eq!(failed.status.phase, Phase::WaitingPromotion);

    sim.metrics_pass = true;
    sim.failing_hooks.clear();
    let promoting = sim.next_tick();
    assert_eq!(promoting.status.phase, Phase::Promoting);
    assert!(has(&promoting, &Action::PromoteCanaryToPrimary));
}

#[test]
fn confirm_traffic_increase_holds_the_weight() {
    let mut spec = analysis(CanaryAnalysis { step_weight: Some(50), ..Default::default() });
    spec.analysis.as_mut().unwrap().webhooks = vec![hook(HookType::ConfirmTrafficIncrease)];
    let mut sim = Sim::new(spec, Provider::Istio);
    sim.initialized_then_release("r1");
    sim.failing_hooks = vec![HookType::ConfirmTrafficIncrease];
    let held = sim.next_tick();
    assert_eq!(reasons(&held), vec!["TrafficIncreaseHeld"]);
    assert!(routes_of(&held).is_empty());
    sim.failing_hooks.clear();
    assert_eq!(routes_of(&sim.next_tick()), vec![(50, 50, false)]);
}

/// `(reason, mute_alert)` of each Event of a decision.
fn muted_events(decision: &Decision) -> Vec<(&'static str, bool)> {
    decision
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Event { reason, mute_alert, .. } => Some((*reason, *mute_alert)),
            _ => None,
        })
        .collect()
}

#[test]
fn mute_alert_mutes_the_event_of_the_confirm_webhook_that_holds_the_release() {
    for mute in [false, true] {
        let muted = |mut webhook: CanaryWebhook| {
            webhook.mute_alert = mute;
            webhook
        };
        // confirm-rollout
        let mut spec = analysis(CanaryAnalysis::default());
        spec.analysis.as_mut().unwrap().webhooks = vec![muted(hook(HookType::ConfirmRollout))];
        let mut sim = Sim::new(spec, Provider::Istio);
        sim.failing_hooks = vec![HookType::ConfirmRollout];
        assert_eq!(muted_events(&sim.initialized_then_release("r1")), vec![("WaitingForApproval", mute)]);

        // confirm-traffic-increase
        let mut spec = analysis(CanaryAnalysis { step_weight: Some(50), ..Default::default() });
        spec.analysis.as_mut().unwrap().webhooks = vec![muted(hook(HookType::ConfirmTrafficIncrease))];
        let mut sim = Sim::new(spec, Provider::Istio);
        sim.initialized_then_release("r1");
        sim.failing_hooks = vec![HookType::ConfirmTrafficIncrease];
        assert_eq!(muted_events(&sim.next_tick()), vec![("TrafficIncreaseHeld", mute)]);
        // Other Events of the run are never muted.
        sim.failing_hooks.clear();
        assert!(muted_events(&sim.next_tick()).iter().all(|(_, muted)| !muted));

        // confirm-promotion
        let mut spec = analysis(CanaryAnalysis { step_weight: Some(50), ..Default::default() });
        spec.analysis.as_mut().unwrap().webhooks = vec![muted(hook(HookType::ConfirmPromotion))];
        let mut sim = Sim::new(spec, Provider::Istio);
        sim.failing_hooks = vec![HookType::ConfirmPromotion];
        sim.initialized_then_release("r1");
        sim.next_tick();
        sim.next_tick();
        assert_eq!(muted_events(&sim.next_tick()), vec![("WaitingForPromotion", mute)]);
    }
}

#[test]
fn step_weight_promotion_walks_traffic_back_one_tick_at_a_time() {
    let mut sim = Sim::new(
        analysis(CanaryAnalysis {
            step_weight: Some(30),
            max_weight: Some(60),
            step_weight_promotion: Some(25),
            ..Default::default()
        }),
        Provider::GatewayApi,
    );
    sim.initialized_then_release("r1");
    sim.next_tick();
    sim.next_tick();
    assert_eq!(sim.status.canary_weight, 60);
    assert_eq!(sim.next_tick().status.phase, Phase::Promoting);
    let mut weights = Vec::new();
    while sim.status.phase == Phase::Promoting {
        let decision = sim.next_tick();
        weights.extend(routes_of(&decision).iter().map(|r| r.1));
    }
    assert_eq!(weights, vec![35, 10, 0]);
    assert_eq!(sim.status.phase, Phase::Finalising);
}

#[test]
fn kubernetes_provider_runs_blue_green_with_ten_iterations() {
    let mut sim =
        Sim::new(analysis(CanaryAnalysis { step_weight: Some(10), ..Default::default() }), Provider::Kubernetes);
    sim.initialized_then_release("r1");
    let mut ticks = 0;
    while sim.status.phase == Phase::Progressing {
        let decision = sim.next_tick();
        for (primary, canary, mirror) in routes_of(&decision) {
            assert!(!mirror);
            assert!((primary, canary) == (100, 0) || (primary, canary) == (0, 100));
        }
        ticks += 1;
        assert!(ticks < 50);
    }
    // Pre-rollout tick + 9 more iterations + the switch tick + the promotion tick.
    assert_eq!(ticks, 12);
    assert_eq!(sim.status.phase, Phase::Promoting);
}

#[test]
fn a_pending_fleet_gate_waits_without_traffic() {
    let mut sim = Sim::new(analysis(CanaryAnalysis::default()), Provider::Istio);
    sim.fleet = FleetGate::Pending { approved: Some("r0".into()) };
    let waiting = sim.initialized_then_release("r1");
    assert_eq!(waiting.status.phase, Phase::Waiting);
    assert!(!has(&waiting, &Action::ScaleCanaryUp { after_status: true }));
    assert_eq!(reasons(&waiting), vec!["WaitingForFleetApproval"]);
    // The hub reads what to approve from here; the run fields still name the last run.
    assert_eq!(waiting.status.waiting_revision.as_deref(), Some("r1"));
    assert!(waiting.status.waiting_release.is_some());
    assert_ne!(waiting.status.last_applied_spec.as_deref(), Some("r1"));
    assert!(sim.after(Duration::from_secs(60)).actions.is_empty(), "no event spam while waiting");

    sim.fleet = FleetGate::Approved { revision: "r1".into() };
    let started = sim.after(Duration::from_secs(1));
    assert_eq!(started.status.phase, Phase::Progressing);
    assert!(has(&started, &Action::ScaleCanaryUp { after_status: true }));
    assert_eq!(started.status.fleet_approved_revision.as_deref(), Some("r1"));
}

#[test]
fn confirm_rollout_rejection_waits_and_asks_again_each_interval() {
    let mut spec = analysis(CanaryAnalysis::default());
    spec.analysis.as_mut().unwrap().webhooks = vec![hook(HookType::ConfirmRollout)];
    let mut sim = Sim::new(spec, Provider::Istio);
    sim.failing_hooks = vec![HookType::ConfirmRollout];
    let waiting = sim.initialized_then_release("r1");
    assert_eq!(waiting.status.phase, Phase::Waiting);
    assert_eq!(reasons(&waiting), vec!["WaitingForApproval"]);
    assert_eq!(waiting.requeue_after, Duration::from_secs(30));
    assert_eq!(plan(&sim.spec, &sim.status, sim.provider, "r1", &sim.fleet, sim.now), Plan::default());

    sim.failing_hooks.clear();
    let started = sim.next_tick();
    assert_eq!(started.status.phase, Phase::Progressing);
}

#[test]
fn an_unready_canary_holds_and_a_stuck_one_rolls_back() {
    let mut sim = Sim::new(
        analysis(CanaryAnalysis { step_weight: Some(20), threshold: Some(5), ..Default::default() }),
        Provider::Istio,
    );
    sim.initialized_then_release("r1");
    sim.canary = WorkloadHealth::NotReady { reason: "1/3 available".into() };
    let held = sim.next_tick();
    assert_eq!(held.status.phase, Phase::Progressing);
    assert_eq!(held.status.failed_checks, 0, "pods not ready is not a failed check");
    assert!(held.actions.is_empty());
    assert_eq!(held.requeue_after, Duration::from_secs(30), "no poll for pods: their watch wakes the reconcile");

    sim.canary = WorkloadHealth::DeadlineExceeded { reason: "ProgressDeadlineExceeded".into() };
    let rolled_back = sim.after(Duration::from_secs(2));
    assert_eq!(rolled_back.status.phase, Phase::Failed);
    assert_eq!(routes_of(&rolled_back), vec![(100, 0, false)]);
    assert_eq!(reasons(&rolled_back), vec!["DeadlineExceeded"]);
}

#[test]
fn skip_analysis_promotes_once_the_canary_is_ready() {
    let mut spec = analysis(CanaryAnalysis::default());
    spec.skip_analysis = true;
    let mut sim = Sim::new(spec, Provider::Istio);
    sim.initialized_then_release("r1");
    let promoted = sim.after(Duration::from_secs(1));
    assert_eq!(promoted.status.phase, Phase::Succeeded);
    assert_eq!(
        promoted.actions[..4],
        [
            Action::SetRoutes { primary: 100, canary: 0, mirror: false },
            Action::PromoteCanaryToPrimary,
            Action::ScaleCanaryToZero,
            Action::FireHooks(HookType::PostRollout)
        ]
    );
    assert_eq!(promoted.status.last_promoted_spec.as_deref(), Some("r1"));
}

#[test]
fn a_rollback_webhook_answering_2xx_rolls_back() {
    let mut spec = analysis(CanaryAnalysis { step_weight: Some(20), ..Default::default() });
    spec.analysis.as_mut().unwrap().webhooks = vec![hook(HookType::Rollback)];
    let mut sim = Sim::new(spec, Provider::Istio);
    // A rollback hook "fails" (non-2xx) while nobody asks for a rollback.
    sim.failing_hooks = vec![HookType::Rollback];
    sim.initialized_then_release("r1");
    assert_eq!(routes_of(&sim.next_tick()), vec![(80, 20, false)]);
    sim.failing_hooks.clear();
    let rolled_back = sim.next_tick();
    assert_eq!(rolled_back.status.phase, Phase::Failed);
    assert_eq!(reasons(&rolled_back), vec!["RollbackRequested"]);
}

#[test]
fn suspend_touches_nothing() {
    let mut sim = Sim::new(analysis(CanaryAnalysis { step_weight: Some(20), ..Default::default() }), Provider::Istio);
    sim.initialized_then_release("r1");
    sim.spec.suspend = true;
    let before = sim.status.clone();
    let decision = sim.next_tick();
    assert!(decision.actions.is_empty());
    assert_eq!(decision.status.phase, before.phase);
    assert_eq!(decision.status.canary_weight, before.canary_weight);
}

#[test]
fn a_tick_whose_checks_did_not_run_changes_nothing() {
    let mut sim = Sim::new(analysis(CanaryAnalysis { step_weight: Some(20), ..Default::default() }), Provider::Istio);
    sim.initialized_then_release("r1");
    sim.next_tick();
    sim.now += chrono::Duration::seconds(30);
    let before = sim.status.clone();
    let planned = plan(&sim.spec, &sim.status, sim.provider, "r1", &sim.fleet, sim.now);
    assert!(planned.run_metrics);
    let obs = Observation {
        now: sim.now,
        target_revision: "r1".into(),
        target_release: "app:r1".into(),
        canary: WorkloadHealth::Ready,
        canary_scaled_down: false,
        primary: WorkloadHealth::Ready,
        primary_updated: true,
        primary_template: None,
        fleet: FleetGate::NotInFleet,
        gates: GateResults::default(),
        requests: Vec::new(),
    };
    let decision = decide(&sim.spec, &before, sim.provider, &obs);
    assert!(decision.actions.is_empty(), "{:?}", decision.actions);
    assert_eq!(decision.status.canary_weight, before.canary_weight);
    assert_eq!(decision.status.last_analysis_time, before.last_analysis_time, "the tick stays due");
    assert_eq!(decision.requeue_after, Duration::from_secs(1));
}

#[test]
fn comparison_samples_accumulate_during_a_run_and_reset_on_restart() {
    use petrel_api::canary::{ComparisonDirection, MetricComparison};
    let mut spec = analysis(CanaryAnalysis { step_weight: Some(10), ..Default::default() });
    spec.analysis.as_mut().unwrap().metrics[0].comparison =
        Some(MetricComparison { direction: ComparisonDirection::Decrease, ..Default::default() });
    let mut sim = Sim::new(spec, Provider::Istio);
    sim.initialized_then_release("r1");
    sim.next_tick();
    // The harness reports no primary value: nothing to compare, nothing stored.
    sim.next_tick();
    assert!(sim.status.comparison_samples.is_empty());

    let metrics = Some(vec![MetricResult {
        name: "request-success-rate".into(),
        value: Some(99.0),
        primary_value: Some(99.5),
        outcome: MetricOutcome::Passed,
        message: String::new(),
    }]);
    for _ in 0..2 {
        sim.now += chrono::Duration::seconds(30);
        let obs = Observation {
            now: sim.now,
            target_revision: "r1".into(),
            target_release: "app:r1".into(),
            canary: WorkloadHealth::Ready,
            canary_scaled_down: false,
            primary: WorkloadHealth::Ready,
            primary_updated: true,
            primary_template: None,
            fleet: FleetGate::NotInFleet,
            gates: GateResults { hooks: BTreeMap::new(), metrics: metrics.clone(), ..GateResults::default() },
            requests: Vec::new(),
        };
        sim.status = decide(&sim.spec, &sim.status, sim.provider, &obs).status;
    }
    assert_eq!(sim.status.comparison_samples.len(), 1);
    assert_eq!(sim.status.comparison_samples[0].canary, vec![99.0, 99.0]);
    assert_eq!(sim.status.comparison_samples[0].primary, vec![99.5, 99.5]);

    sim.revision = "r2".into();
    let restarted = sim.after(Duration::from_secs(1));
    assert!(restarted.status.comparison_samples.is_empty());
}

#[test]
fn conditions_follow_the_phase_and_keep_their_transition_time() {
    let mut sim = Sim::new(analysis(CanaryAnalysis { step_weight: Some(50), ..Default::default() }), Provider::Istio);
    sim.initialized_then_release("r1");
    let condition = |sim: &Sim, type_: &str| sim.status.conditions.iter().find(|c| c.type_ == type_).cloned().unwrap();
    let progressing = condition(&sim, "Progressing");
    assert_eq!((progressing.status.as_str(), progressing.reason.as_str()), ("True", "Progressing"));
    assert_eq!(condition(&sim, "Promoted").status, "Unknown");
    assert_eq!(condition(&sim, "Ready").status, "True");
    let since = progressing.last_transition_time;
    sim.next_tick();
    assert_eq!(condition(&sim, "Progressing").last_transition_time, since, "unchanged status keeps its time");
    assert_eq!(sim.status.last_transition_time, Some(since), "no phase change, no new lastTransitionTime");
}

/// A Canary created again over the primary a deleted one left behind (released, not
/// deleted) starts from what that primary runs: a target on anything else is a release,
/// analysed before it reaches the primary, not a version recorded as promoted.
#[test]
fn initialising_over_an_existing_primary_keeps_its_revision_as_the_promoted_one() {
    let mut sim = Sim::new(analysis(CanaryAnalysis { step_weight: Some(20), ..Default::default() }), Provider::Istio);
    sim.revision = "r1".into();
    sim.primary_template = Some(("r0".into(), "app:r0".into()));
    let initialized = sim.reconcile();
    assert_eq!(sim.status.phase, Phase::Initialized);
    assert_eq!(sim.status.last_promoted_spec.as_deref(), Some("r0"));
    assert_eq!(sim.status.promoted_release.as_deref(), Some("app:r0"));
    assert!(initialized.actions.iter().any(|a| matches!(a, Action::Event { reason, .. } if *reason == "Initialized")));
    sim.after(Duration::from_secs(1));
    assert_eq!(sim.status.phase, Phase::Progressing, "the target's r1 is released, not taken as promoted");
    assert_eq!(sim.status.last_applied_spec.as_deref(), Some("r1"));
}

/// Releases r1 and rolls it back at its first check (metrics fail, threshold 1); the
/// metrics pass again afterwards.
fn rolled_back_at_its_first_check(sim: &mut Sim) -> Decision {
    sim.initialized_then_release("r1");
    sim.next_tick();
    sim.metrics_pass = false;
    let rolled_back = sim.next_tick();
    assert_eq!(rolled_back.status.phase, Phase::Failed);
    sim.metrics_pass = true;
    rolled_back
}

/// A spec whose metric reaches back 2m while ticks come every 30s, with a rollout hook
/// (a load test) and a confirm-traffic-increase gate.
fn long_window() -> CanarySpec {
    let mut spec = analysis(CanaryAnalysis {
        step_weight: Some(20),
        max_weight: Some(40),
        webhooks: vec![hook(HookType::Rollout), hook(HookType::ConfirmTrafficIncrease)],
        ..Default::default()
    });
    if let Some(analysis) = spec.analysis.as_mut() {
        analysis.metrics[0].interval = Some("2m".into());
    }
    spec
}

/// The CI failure of stop 31 (dashboards): 6.0.2, pushed as 6.0.1 was rolled back, failed
/// on 6.0.1's errors, which its metric window still held. Flagger judges it the same way.
#[test]
fn a_release_right_after_a_rollback_is_not_judged_on_the_rolled_back_requests() {
    let mut sim = Sim::new(long_window(), Provider::Istio);
    let rolled_back = rolled_back_at_its_first_check(&mut sim);
    let rollback_at = sim.now;
    assert_eq!(rolled_back.status.previous_revision_traffic_until, Some(rollback_at));

    // r2 is healthy, but any check before rollback + 2m would read r1's errors.
    sim.revision = "r2".into();
    let started = sim.after(Duration::from_secs(1));
    assert_eq!(reasons(&started), vec!["NewRevision"]);
    let first = sim.next_tick();
    assert_eq!(routes_of(&first), vec![(80, 20, false)]);
    sim.metrics_pass = false; // what the window would say, were it queried
    let mut held = 0;
    while sim.now + chrono::Duration::seconds(30) < rollback_at + chrono::Duration::minutes(2) {
        let tick = sim.next_tick();
        assert_eq!(reasons(&tick), vec!["MetricWindowHeld"], "at {}", sim.now);
        assert!(!sim.last_plan.run_metrics, "a metric judged on r1's requests at {}", sim.now);
        assert_eq!(sim.last_plan.hooks, vec![HookType::Rollout], "the load test runs, no gate is asked");
        assert!(routes_of(&tick).is_empty() && tick.status.canary_weight == 20);
        assert_eq!(tick.status.failed_checks, 0);
        assert_eq!(tick.requeue_after, Duration::from_secs(30));
        let message = event_message(&tick, "MetricWindowHeld");
        assert!(message.contains("2m") && message.contains("2026-01-01T00:"), "{message}");
        held += 1;
    }
    assert_eq!(held, 2, "ticks at rollback + 62s and + 92s are held");

    sim.metrics_pass = true;
    let judged = sim.next_tick();
    assert!(sim.now >= rollback_at + chrono::Duration::minutes(2));
    assert!(sim.last_plan.run_metrics);
    assert_eq!(routes_of(&judged), vec![(60, 40, false)]);
}

#[test]
fn a_release_long_after_the_last_one_is_judged_at_its_second_tick() {
    let mut sim = Sim::new(long_window(), Provider::Istio);
    sim.initialized_then_release("r1");
    for _ in 0..2 {
        sim.next_tick();
    }
    let promoting = sim.next_tick();
    assert_eq!(promoting.status.phase, Phase::Promoting);
    assert_eq!(promoting.status.previous_revision_traffic_until, None, "r1 still runs");
    sim.after(Duration::from_secs(2));
    let done = sim.after(Duration::from_secs(1));
    assert_eq!(done.status.phase, Phase::Succeeded);
    assert_eq!(done.status.previous_revision_traffic_until, Some(sim.now), "the canary stopped serving r1");

    sim.revision = "r2".into();
    sim.after(Duration::from_secs(150));
    sim.next_tick();
    let second = sim.next_tick();
    assert!(sim.last_plan.run_metrics, "r1 left the window 2m after its promotion");
    assert_eq!(routes_of(&second), vec![(60, 40, false)]);
}

#[test]
fn a_target_changed_mid_run_holds_the_checks_of_the_new_revision() {
    let mut spec = long_window();
    if let Some(analysis) = spec.analysis.as_mut() {
        analysis.threshold = Some(2);
    }
    let mut sim = Sim::new(spec, Provider::Istio);
    sim.initialized_then_release("r1");
    sim.next_tick();
    sim.metrics_pass = false;
    let failed_once = sim.next_tick();
    assert_eq!(failed_once.status.failed_checks, 1);
    assert_eq!(failed_once.status.previous_revision_traffic_until, None, "a failed check ends nothing");

    sim.revision = "r2".into();
    let restarted = sim.after(Duration::from_secs(5));
    assert_eq!(reasons(&restarted), vec!["RestartedAnalysis"]);
    assert_eq!(restarted.status.previous_revision_traffic_until, Some(sim.now));
    sim.next_tick();
    let held = sim.next_tick();
    assert_eq!(reasons(&held), vec!["MetricWindowHeld"]);
    assert_eq!(held.status.failed_checks, 0);
}

/// Knative's queries select the revision by name, so another revision's requests are never
/// in them: nothing is held.
#[test]
fn knative_judges_a_release_right_after_a_rollback_at_once() {
    let mut sim = Sim::new(long_window(), Provider::Knative);
    rolled_back_at_its_first_check(&mut sim);
    sim.revision = "r2".into();
    sim.after(Duration::from_secs(1));
    sim.next_tick();
    let second = sim.next_tick();
    assert!(sim.last_plan.run_metrics);
    assert_eq!(second.status.canary_weight, 40);
}

/// A status edited to say the canary served another revision until next year holds the
/// checks for one window, not until then.
#[test]
fn a_moment_in_the_future_holds_one_window_not_until_then() {
    let mut sim = Sim::new(long_window(), Provider::Istio);
    sim.initialized_then_release("r1");
    sim.next_tick();
    sim.status.previous_revision_traffic_until = Some(sim.now + chrono::Duration::days(365));
    let edited_at = sim.now;
    let mut held = 0;
    loop {
        let tick = sim.next_tick();
        if sim.last_plan.run_metrics {
            assert_eq!(routes_of(&tick), vec![(60, 40, false)]);
            break;
        }
        held += 1;
        assert!(held < 10, "still held at {}", sim.now);
    }
    // The first reconcile after the edit records its own now (edit + 30s); the window
    // counts from there: held at + 30s, 60s, 90s and 120s, judged at + 150s.
    assert_eq!(held, 4);
    assert_eq!(sim.now, edited_at + chrono::Duration::seconds(150));
}
