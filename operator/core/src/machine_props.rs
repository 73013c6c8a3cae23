//! Property tests of the state machine's safety invariants (DESIGN.md rule 4).
//!
//! Each case generates a spec within the API's validated ranges and a sequence of
//! observations (time passing, new revisions, pod health, fleet approvals, webhook and
//! metric outcomes), then drives `plan` → run what it asks → `decide`, feeding every
//! decision's status into the next reconcile.

use std::collections::BTreeMap;

use chrono::Duration as Span;
use proptest::prelude::*;

use crate::machine::{Action, Decision, FleetGate, GateResults, Observation, WorkloadHealth, decide, plan};
use crate::machine_tests::start;
use crate::provider::Provider;
use crate::requests::is_pending;
use crate::strategy::{longest_metric_window, strategy_of, threshold_of};
use petrel_api::canary::{
    CanaryAnalysis, CanaryMetric, CanarySpec, CanaryStatus, CanaryWebhook, HookType, HttpMatch, MetricOutcome,
    MetricResult, Phase,
};
use petrel_api::verbs::{Verb, VerbRequest, verb_requests};

pub(super) const REVISIONS: [&str; 4] = ["r0", "r1", "r2", "r3"];
const HOOK_TYPES: [HookType; 7] = [
    HookType::ConfirmRollout,
    HookType::PreRollout,
    HookType::Rollout,
    HookType::ConfirmTrafficIncrease,
    HookType::ConfirmPromotion,
    HookType::PostRollout,
    HookType::Rollback,
];

pub(super) fn provider() -> impl Strategy<Value = Provider> {
    prop_oneof![
        Just(Provider::GatewayApi),
        Just(Provider::Istio),
        Just(Provider::Linkerd),
        Just(Provider::Smi),
        Just(Provider::Nginx),
        Just(Provider::Traefik),
        Just(Provider::Contour),
        Just(Provider::Kubernetes),
    ]
}

/// Traffic settings of the four shapes the API accepts (validated ranges).
pub(super) fn traffic() -> impl Strategy<Value = CanaryAnalysis> {
    prop_oneof![
        (0..=100i32).prop_flat_map(|max| (Just(max), 0..=max)).prop_map(|(max, step)| CanaryAnalysis {
            max_weight: Some(max),
            step_weight: Some(step),
            ..Default::default()
        }),
        proptest::collection::vec(0..=100i32, 0..5)
            .prop_map(|weights| CanaryAnalysis { step_weights: Some(weights), ..Default::default() }),
        (1..5i32).prop_map(|n| CanaryAnalysis {
            iterations: Some(n),
            match_: Some(vec![HttpMatch::default()]),
            ..Default::default()
        }),
        (1..5i32).prop_map(|n| CanaryAnalysis { iterations: Some(n), ..Default::default() }),
        Just(CanaryAnalysis::default()),
    ]
}

fn spec() -> impl Strategy<Value = CanarySpec> {
    (
        traffic(),
        prop_oneof![Just("1s"), Just("10s"), Just("30s"), Just("1m")],
        1..5i32,
        any::<bool>(),
        proptest::option::of(0..=100i32),
        proptest::collection::vec(any::<bool>(), HOOK_TYPES.len()),
        0..3usize,
        prop_oneof![9 => Just(false), 1 => Just(true)],
        prop_oneof![19 => Just(false), 1 => Just(true)],
        prop_oneof![Just(None), Just(Some("90s")), Just(Some("5m"))],
    )
        .prop_map(|(traffic, interval, threshold, mirror, promotion, hooks, metrics, skip, suspend, window)| {
            CanarySpec {
                analysis: Some(CanaryAnalysis {
                    interval: Some(interval.into()),
                    threshold: Some(threshold),
                    mirror,
                    step_weight_promotion: promotion,
                    webhooks: HOOK_TYPES
                        .iter()
                        .zip(hooks)
                        .filter(|(_, on)| *on)
                        .map(|(type_, _)| CanaryWebhook {
                            name: format!("{type_:?}"),
                            type_: *type_,
                            url: "http://h".into(),
                            ..Default::default()
                        })
                        .collect(),
                    metrics: (0..metrics)
                        .map(|i| CanaryMetric {
                            name: format!("metric-{i}"),
                            interval: window.map(str::to_string),
                            ..Default::default()
                        })
                        .collect(),
                    ..traffic
                }),
                skip_analysis: skip,
                suspend,
                ..Default::default()
            }
        })
}

pub(super) fn health() -> impl Strategy<Value = WorkloadHealth> {
    prop_oneof![
        16 => Just(WorkloadHealth::Ready),
        2 => Just(WorkloadHealth::NotReady { reason: "pods starting".into() }),
        1 => Just(WorkloadHealth::DeadlineExceeded { reason: "ProgressDeadlineExceeded".into() }),
    ]
}

/// One step of the world between two reconciles.
#[derive(Clone, Debug)]
struct World {
    wait_secs: i64,
    new_revision: Option<usize>,
    canary: WorkloadHealth,
    /// The canary is at zero (its scale-up did not land, or someone scaled it down).
    canary_scaled_down: bool,
    primary: WorkloadHealth,
    primary_updated: bool,
    /// Only used when the Canary belongs to a fleet.
    fleet_approves: bool,
    /// Per hook type: does it answer 2xx (rollback hooks rarely do).
    hooks_pass: Vec<bool>,
    rollback_requested: bool,
    metrics_pass: bool,
    /// A person annotates the Canary with a verb request before this reconcile.
    request: Option<Request>,
}

/// A verb request as `kubectl petrel` (or a person with `kubectl annotate`) writes it.
#[derive(Clone, Debug)]
struct Request {
    verb: Verb,
    /// `None`: the revision in `status.lastAppliedSpec`, as the plugin names it.
    revision: Option<usize>,
    /// Few ids, so the same value is written again after it was handled.
    id: u8,
}

fn request() -> impl Strategy<Value = Option<Request>> {
    prop_oneof![
        11 => Just(None),
        1 => (
            (0..Verb::ALL.len()).prop_map(|i| Verb::ALL[i]),
            prop_oneof![3 => Just(None), 1 => (0..REVISIONS.len()).prop_map(Some)],
            0..3u8,
        )
            .prop_map(|(verb, revision, id)| Some(Request { verb, revision, id })),
    ]
}

fn world() -> impl Strategy<Value = World> {
    (
        prop_oneof![Just(1i64), Just(2), 0..120i64],
        prop_oneof![9 => Just(None), 1 => (0..REVISIONS.len()).prop_map(Some)],
        (health(), prop_oneof![14 => Just(false), 1 => Just(true)]),
        health(),
        prop_oneof![3 => Just(true), 1 => Just(false)],
        prop_oneof![3 => Just(true), 1 => Just(false)],
        proptest::collection::vec(prop_oneof![5 => Just(true), 1 => Just(false)], HOOK_TYPES.len()),
        prop_oneof![29 => Just(false), 1 => Just(true)],
        prop_oneof![5 => Just(true), 1 => Just(false)],
        request(),
    )
        .prop_map(
            |(
                wait_secs,
                new_revision,
                (canary, canary_scaled_down),
                primary,
                primary_updated,
                fleet_approves,
                hooks_pass,
                rollback_requested,
                metrics_pass,
                request,
            )| World {
                wait_secs,
                new_revision,
                canary,
                canary_scaled_down,
                primary,
                primary_updated,
                fleet_approves,
                hooks_pass,
                rollback_requested,
                metrics_pass,
                request,
            },
        )
}

fn revision() -> impl Strategy<Value = Option<String>> {
    proptest::option::of((0..REVISIONS.len()).prop_map(|i| REVISIONS[i].to_string()))
}

/// Any status a Canary could be found in (after a restart, an upgrade, a manual edit).
pub(super) fn status() -> impl Strategy<Value = CanaryStatus> {
    (
        (0..Phase::ALL.len()).prop_map(|i| Phase::ALL[i]),
        0..6i32,
        0..=100i32,
        0..12i32,
        revision(),
        revision(),
        proptest::option::of(0..300i64),
        proptest::option::of(0..400i64),
    )
        .prop_map(
            |(phase, failed_checks, canary_weight, iterations, applied, promoted, analysed_ago, left_ago)| {
                CanaryStatus {
                    phase,
                    failed_checks,
                    canary_weight,
                    iterations,
                    last_applied_spec: applied,
                    last_promoted_spec: promoted,
                    last_analysis_time: analysed_ago.map(|ago| start() - Span::seconds(ago)),
                    previous_revision_traffic_until: left_ago.map(|ago| start() - Span::seconds(ago)),
                    ..Default::default()
                }
            },
        )
}

fn observe(
    spec: &CanarySpec,
    status: &CanaryStatus,
    provider: Provider,
    world: &World,
    revision: &str,
    now: chrono::DateTime<chrono::Utc>,
    fleet: FleetGate,
) -> (Observation, bool) {
    let plan = plan(spec, status, provider, revision, &fleet, now);
    let hooks: BTreeMap<_, _> = plan
        .hooks
        .iter()
        .map(|hook| {
            let pass = match hook {
                HookType::Rollback => world.rollback_requested,
                other => world.hooks_pass[HOOK_TYPES.iter().position(|h| h == other).unwrap_or(0)],
            };
            (*hook, if pass { Ok(()) } else { Err("no".to_string()) })
        })
        .collect();
    let rollout_passed = hooks.get(&HookType::Rollout).is_none_or(|r| r.is_ok());
    let metrics: Option<Vec<MetricResult>> = plan.run_metrics.then(|| {
        spec.analysis
            .iter()
            .flat_map(|a| &a.metrics)
            .map(|m| MetricResult {
                name: m.name.clone(),
                value: Some(1.0),
                outcome: MetricOutcome::from_passed(world.metrics_pass),
                ..Default::default()
            })
            .collect()
    });
    let passing_tick = plan.run_metrics && rollout_passed && metrics.iter().flatten().all(|m| m.passed());
    let obs = Observation {
        now,
        target_revision: revision.to_string(),
        target_release: format!("app:{revision}"),
        canary: world.canary.clone(),
        canary_scaled_down: world.canary_scaled_down,
        primary: world.primary.clone(),
        primary_updated: world.primary_updated,
        primary_template: None,
        fleet,
        gates: GateResults { hooks, metrics, ..GateResults::default() },
        requests: Vec::new(),
    };
    (obs, passing_tick)
}

fn set_routes(decision: &Decision) -> impl Iterator<Item = (u8, u8)> + '_ {
    decision.actions.iter().filter_map(|a| match a {
        Action::SetRoutes { primary, canary, .. } => Some((*primary, *canary)),
        _ => None,
    })
}

/// Whether the decision scales the canary up, to start a run or again during one.
fn scales_up(decision: &Decision) -> bool {
    decision.actions.iter().any(|a| matches!(a, Action::ScaleCanaryUp { .. }))
}

fn reasons(decision: &Decision) -> Vec<&'static str> {
    decision
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Event { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}

fn analysing(phase: Phase) -> bool {
    matches!(phase, Phase::Progressing | Phase::WaitingPromotion)
}

/// The Event reason of a request of `verb` that acted.
fn acted_reason(verb: Verb) -> &'static str {
    match verb {
        Verb::Abort => "Aborted",
        Verb::Promote => "PromotedByRequest",
        Verb::Retry => "Retrying",
    }
}

/// Requests a driven run saw handled, so a guard can tell the generators reach them.
#[derive(Debug, Default)]
struct Handled {
    acted: BTreeMap<Verb, usize>,
    ignored: usize,
    /// Reconciles that found the canary scaled down during its run (invariant (j)).
    scaled_up_again: usize,
}

/// Drives the machine through `worlds` and checks every invariant at every step.
/// `fresh` says the run history is known from the start (status starts Initializing).
fn drive(
    spec: CanarySpec,
    provider: Provider,
    mut status: CanaryStatus,
    in_fleet: bool,
    worlds: Vec<World>,
    fresh: bool,
) -> Result<Handled, TestCaseError> {
    let mut handled = Handled::default();
    let mut annotations = BTreeMap::new();
    let threshold = threshold_of(&spec) as i32;
    let needed = strategy_of(&spec, provider).steps_to_promotion();
    let mut now = start();
    let mut revision = status.last_applied_spec.clone().unwrap_or_else(|| "r0".to_string());
    // The run under analysis and its passing metric ticks (known only when `fresh`).
    let mut run: Option<String> = None;
    let mut passing_ticks = 0u32;
    let mut promoted_in_run = false;
    let mut failed_revision: Option<String> =
        (status.phase == Phase::Failed).then(|| status.last_applied_spec.clone()).flatten();
    // When the canary last stopped serving a revision, seen from the actions alone.
    let mut canary_left = status.previous_revision_traffic_until;
    let window = longest_metric_window(&spec);

    for world in worlds {
        now += Span::seconds(world.wait_secs);
        if let Some(i) = world.new_revision {
            revision = REVISIONS[i].to_string();
        }
        let fleet = match (in_fleet, world.fleet_approves) {
            (false, _) => FleetGate::NotInFleet,
            (true, true) => FleetGate::Approved { revision: revision.clone() },
            (true, false) => FleetGate::Pending { approved: Some("r0".into()) },
        };
        let approved = !matches!(fleet, FleetGate::Pending { .. });
        if let Some(request) = &world.request {
            let named = match request.revision {
                Some(i) => REVISIONS[i].to_string(),
                None => status.last_applied_spec.clone().unwrap_or_default(),
            };
            annotations
                .insert(request.verb.annotation().to_string(), VerbRequest::value_for(&named, &request.id.to_string()));
        }
        let planned = plan(&spec, &status, provider, &revision, &fleet, now);
        // (i) no metric is judged on a window reaching back to another revision's requests
        // (Knative's queries select the revision, not the workload: nothing to hold).
        if planned.run_metrics
            && provider != Provider::Knative
            && let Some(left) = canary_left
        {
            prop_assert!(now >= left + Span::from_std(window).unwrap(), "judged at {now}, canary left {left}");
        }
        let (mut obs, passing_tick) = observe(&spec, &status, provider, &world, &revision, now, fleet);
        // Every request on the object, handled or not: `decide` must skip the handled ones.
        obs.requests = verb_requests(&annotations);
        let old = status.clone();
        let decision = decide(&spec, &old, provider, &obs);
        let new = &decision.status;

        prop_assert!(!reasons(&decision).contains(&"InvalidTransition"), "{:?}", decision.actions);

        // (g) every pending request is handled exactly once: acted on or reported with a
        // reason, and recorded; a handled one never fires again; suspended, they wait.
        let pending: Vec<&VerbRequest> = obs.requests.iter().filter(|r| is_pending(r, &old)).collect();
        let acted: Vec<Verb> =
            Verb::ALL.into_iter().filter(|verb| reasons(&decision).contains(&acted_reason(*verb))).collect();
        let ignored = reasons(&decision).iter().filter(|reason| **reason == "RequestIgnored").count();
        if spec.suspend {
            prop_assert_eq!(&new.handled_requests, &old.handled_requests, "suspended: requests wait");
            prop_assert!(acted.is_empty() && ignored == 0, "{:?}", decision.actions);
        } else {
            prop_assert!(acted.len() <= 1, "{:?}", decision.actions);
            prop_assert_eq!(acted.len() + ignored, pending.len(), "{:?} for {:?}", decision.actions, pending);
            for request in &pending {
                prop_assert_eq!(new.handled_requests.get(request.verb.annotation()), Some(&request.value));
            }
        }
        // (h) a request acts only on the revision it names, which is both the one under
        // release and the target; promote never in a fleet (its hub approves releases).
        for verb in &acted {
            let request = pending.iter().find(|r| r.verb == *verb);
            prop_assert!(request.is_some_and(|r| r.is_for(&revision)), "{verb} acted on {revision}: {pending:?}");
            prop_assert_eq!(old.last_applied_spec.as_deref(), Some(revision.as_str()));
            prop_assert!(*verb != Verb::Promote || !in_fleet, "promoted a fleet member by request");
            *handled.acted.entry(*verb).or_default() += 1;
        }
        handled.ignored += ignored;
        let promoted_by_request = acted.contains(&Verb::Promote);
        // Exception to (c): a retry request sends traffic to the failed revision again.
        if acted.contains(&Verb::Retry) {
            failed_revision = None;
        }

        // (a) every SetRoutes sums to 100, weights within 0..=100.
        for (primary, canary) in set_routes(&decision) {
            prop_assert!(primary <= 100 && canary <= 100 && primary + canary == 100, "routes {primary}/{canary}");
        }
        prop_assert!((0..=100).contains(&new.canary_weight));

        // (c) a failed revision gets no traffic until another revision is observed.
        if failed_revision.as_deref().is_some_and(|r| r != revision) {
            failed_revision = None;
        }
        if let Some(failed) = &failed_revision {
            prop_assert!(
                set_routes(&decision).all(|(_, canary)| canary == 0),
                "failed {failed} got traffic: {:?}",
                decision.actions
            );
            prop_assert!(!scales_up(&decision), "failed {failed} scaled up");
        }

        // (d) failedChecks reaching the threshold rolls back; nothing keeps analysing past it.
        if !spec.suspend {
            prop_assert!(
                !analysing(new.phase) || new.failed_checks < threshold,
                "analysing with {}/{threshold} failed checks",
                new.failed_checks
            );
            if new.failed_checks >= threshold && new.failed_checks > old.failed_checks {
                prop_assert_eq!(new.phase, Phase::Failed);
                prop_assert!(set_routes(&decision).any(|r| r == (100, 0)));
            }
        }

        // (e) a canary past its deadline during an active run of this revision rolls back.
        let same_run = old.last_applied_spec.as_deref() == Some(revision.as_str());
        if !spec.suspend
            && analysing(old.phase)
            && same_run
            && approved
            && !promoted_by_request
            && matches!(obs.canary, WorkloadHealth::DeadlineExceeded { .. })
        {
            prop_assert_eq!(new.phase, Phase::Failed);
            prop_assert!(set_routes(&decision).any(|r| r == (100, 0)));
        }

        // (j) a canary scaled down during the analysis of its revision is scaled up again
        // before anything else: no step, no traffic to it, no promotion (a person's request,
        // the threshold and the progress deadline still end the run).
        if !spec.suspend
            && world.canary_scaled_down
            && analysing(old.phase)
            && same_run
            && approved
            && acted.is_empty()
            && old.failed_checks < threshold
            && !matches!(obs.canary, WorkloadHealth::DeadlineExceeded { .. })
        {
            prop_assert!(
                decision.actions.contains(&Action::ScaleCanaryUp { after_status: false }),
                "{:?}",
                decision.actions
            );
            prop_assert!(set_routes(&decision).all(|(_, canary)| canary == 0), "{:?}", decision.actions);
            prop_assert!(!decision.actions.contains(&Action::PromoteCanaryToPrimary));
            prop_assert_eq!(new.phase, old.phase);
            prop_assert_eq!(new.canary_weight, old.canary_weight);
            handled.scaled_up_again += 1;
        }

        // (f) a pending fleet gate never leads to canary traffic or a scale-up.
        if !approved && !matches!(old.phase, Phase::Promoting | Phase::Finalising) {
            prop_assert!(
                set_routes(&decision).all(|(_, canary)| canary == 0),
                "unapproved traffic: {:?}",
                decision.actions
            );
            prop_assert!(!scales_up(&decision));
        }

        // (b) promotion only after the declared analysis passed (or skipAnalysis).
        let run_started = decision.actions.contains(&Action::ScaleCanaryUp { after_status: true })
            || reasons(&decision).contains(&"RestartedAnalysis");
        if run_started {
            run = new.last_applied_spec.clone();
            passing_ticks = 0;
            promoted_in_run = false;
        } else if passing_tick && analysing(old.phase) && same_run && new.last_analysis_time == Some(now) {
            passing_ticks += 1;
        }
        if fresh && decision.actions.contains(&Action::PromoteCanaryToPrimary) {
            prop_assert_eq!(&run, &new.last_applied_spec, "promoted a revision whose run was not seen");
            prop_assert!(new.failed_checks < threshold);
            // Exception: a promote request skips the remaining analysis.
            prop_assert!(
                spec.skip_analysis || promoted_by_request || passing_ticks >= needed,
                "promoted after {passing_ticks} passing ticks, {needed} needed"
            );
            promoted_in_run = true;
        }
        if fresh && new.phase == Phase::Succeeded && new.last_promoted_spec != old.last_promoted_spec {
            prop_assert!(promoted_in_run, "Succeeded without promoting: {:?}", decision.actions);
            prop_assert_eq!(&new.last_promoted_spec, &run);
        }

        if new.phase == Phase::Failed && old.phase != Phase::Failed {
            failed_revision = new.last_applied_spec.clone();
        }
        if old.phase.is_active()
            && (decision.actions.contains(&Action::ScaleCanaryToZero)
                || reasons(&decision).contains(&"RestartedAnalysis"))
        {
            canary_left = Some(now);
        }
        status = decision.status;
    }
    Ok(handled)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_from_a_fresh_canary(
        spec in spec(),
        provider in provider(),
        in_fleet in any::<bool>(),
        worlds in proptest::collection::vec(world(), 1..80),
    ) {
        drive(spec, provider, CanaryStatus::default(), in_fleet, worlds, true)?;
    }

    #[test]
    fn invariants_hold_from_any_status(
        spec in spec(),
        provider in provider(),
        status in status(),
        in_fleet in any::<bool>(),
        worlds in proptest::collection::vec(world(), 1..40),
    ) {
        drive(spec, provider, status, in_fleet, worlds, false)?;
    }
}

/// Guards the generators: a property that never sees a promotion or a rollback proves little.
#[test]
fn generated_runs_reach_promotion_and_rollback() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut promotions, mut rollbacks) = (0, 0);
    for _ in 0..300 {
        let spec = spec().new_tree(&mut runner).unwrap().current();
        let provider = provider().new_tree(&mut runner).unwrap().current();
        let worlds = proptest::collection::vec(world(), 60..80).new_tree(&mut runner).unwrap().current();
        let mut status = CanaryStatus::default();
        let mut now = start();
        let mut revision = "r0".to_string();
        for world in worlds {
            now += Span::seconds(world.wait_secs);
            if let Some(i) = world.new_revision {
                revision = REVISIONS[i].to_string();
            }
            let (obs, _) = observe(&spec, &status, provider, &world, &revision, now, FleetGate::NotInFleet);
            let decision = decide(&spec, &status, provider, &obs);
            promotions += usize::from(decision.actions.contains(&Action::PromoteCanaryToPrimary));
            rollbacks += usize::from(decision.status.phase == Phase::Failed && status.phase != Phase::Failed);
            status = decision.status;
        }
    }
    assert!(promotions > 30 && rollbacks > 30, "promotions {promotions}, rollbacks {rollbacks}");
}

/// Guards the request generator: every verb must be seen acting and being ignored.
#[test]
fn generated_runs_act_on_and_ignore_requests() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut total = Handled::default();
    for _ in 0..300 {
        let spec = spec().new_tree(&mut runner).unwrap().current();
        let provider = provider().new_tree(&mut runner).unwrap().current();
        let in_fleet = any::<bool>().new_tree(&mut runner).unwrap().current();
        let worlds = proptest::collection::vec(world(), 60..80).new_tree(&mut runner).unwrap().current();
        let handled = drive(spec, provider, CanaryStatus::default(), in_fleet, worlds, true).unwrap();
        for (verb, count) in handled.acted {
            *total.acted.entry(verb).or_default() += count;
        }
        total.ignored += handled.ignored;
        total.scaled_up_again += handled.scaled_up_again;
    }
    for verb in Verb::ALL {
        assert!(total.acted.get(&verb).copied().unwrap_or(0) > 10, "{verb} acted too rarely: {total:?}");
    }
    assert!(total.ignored > 50, "{total:?}");
    assert!(total.scaled_up_again > 50, "{total:?}");
}
