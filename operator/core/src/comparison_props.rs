//! Property test of DESIGN.md rule 4 for comparisons: no run is promoted, and no step
//! gives the canary all the traffic, while any metric of the run is pending.
//!
//! Specs carry comparison metrics (with either `onInsufficientSamples`) next to plain
//! ones; every tick each metric's result is drawn as passed, failed or pending, or left
//! out. The machine is driven `plan` → results → `decide` from a fresh Canary or from
//! any status, with gates, health, new revisions and verb requests drawn as well.

use std::collections::BTreeMap;

use chrono::Duration as Span;
use proptest::prelude::*;

use crate::machine::{Action, FleetGate, GateResults, Observation, WorkloadHealth, decide, plan};
use crate::machine_props::{REVISIONS, health, provider, status, traffic};
use crate::machine_tests::{hook, reasons, start};
use crate::provider::Provider;
use crate::strategy::{Strategy as Steps, progress_deadline, strategy_of};
use petrel_api::canary::{
    CanaryAnalysis, CanaryMetric, CanarySpec, CanaryStatus, ComparisonDirection, HookType, InsufficientSamples,
    MetricComparison, MetricOutcome, MetricResult, Phase,
};
use petrel_api::verbs::{Verb, VerbRequest, verb_requests};

/// Gates that may hold or fail a tick; the rollback hook rarely answers 2xx.
const HOOKS: [HookType; 5] = [
    HookType::PreRollout,
    HookType::Rollout,
    HookType::ConfirmTrafficIncrease,
    HookType::ConfirmPromotion,
    HookType::Rollback,
];

fn policy() -> impl Strategy<Value = Option<InsufficientSamples>> {
    prop_oneof![Just(None), Just(Some(InsufficientSamples::Hold)), Just(Some(InsufficientSamples::Fail))]
}

fn spec() -> impl Strategy<Value = CanarySpec> {
    (
        traffic(),
        1..4i32,
        any::<bool>(),
        0..2usize,
        proptest::collection::vec(policy(), 1..3),
        proptest::collection::vec(any::<bool>(), HOOKS.len()),
        prop_oneof![Just(30i32), Just(60), Just(120), Just(600)],
        prop_oneof![19 => Just(false), 1 => Just(true)],
    )
        .prop_map(|(traffic, threshold, mirror, plain, compared, hooks, deadline, skip)| {
            let plain = (0..plain).map(|i| CanaryMetric { name: format!("plain-{i}"), ..Default::default() });
            let compared = compared.into_iter().enumerate().map(|(i, on_insufficient_samples)| CanaryMetric {
                name: format!("compared-{i}"),
                comparison: Some(MetricComparison {
                    direction: ComparisonDirection::Increase,
                    on_insufficient_samples,
                    ..Default::default()
                }),
                ..Default::default()
            });
            CanarySpec {
                analysis: Some(CanaryAnalysis {
                    interval: Some("10s".into()),
                    threshold: Some(threshold),
                    mirror,
                    metrics: plain.chain(compared).collect(),
                    webhooks: HOOKS.iter().zip(hooks).filter(|(_, on)| *on).map(|(type_, _)| hook(*type_)).collect(),
                    ..traffic
                }),
                progress_deadline_seconds: Some(deadline),
                skip_analysis: skip,
                ..Default::default()
            }
        })
}

/// One metric's result at one tick: `None` leaves it out of the results.
fn outcome() -> impl Strategy<Value = Option<MetricOutcome>> {
    prop_oneof![
        6 => Just(Some(MetricOutcome::Passed)),
        1 => Just(Some(MetricOutcome::Failed)),
        4 => Just(Some(MetricOutcome::Pending)),
        1 => Just(None),
    ]
}

#[derive(Clone, Debug)]
struct World {
    wait_secs: i64,
    new_revision: Option<usize>,
    canary: WorkloadHealth,
    primary: WorkloadHealth,
    hooks_pass: Vec<bool>,
    /// Per metric of the spec, in order (extra entries unused).
    outcomes: Vec<Option<MetricOutcome>>,
    request: Option<(Verb, u8)>,
}

fn world() -> impl Strategy<Value = World> {
    (
        prop_oneof![Just(10i64), Just(1), 0..40i64],
        prop_oneof![19 => Just(None), 1 => (0..REVISIONS.len()).prop_map(Some)],
        health(),
        health(),
        proptest::collection::vec(prop_oneof![6 => Just(true), 1 => Just(false)], HOOKS.len()),
        proptest::collection::vec(outcome(), 4),
        prop_oneof![
            15 => Just(None),
            1 => ((0..Verb::ALL.len()).prop_map(|i| Verb::ALL[i]), 0..3u8).prop_map(Some),
        ],
    )
        .prop_map(|(wait_secs, new_revision, canary, primary, hooks_pass, outcomes, request)| World {
            wait_secs,
            new_revision,
            canary,
            primary,
            hooks_pass,
            outcomes,
            request,
        })
}

fn metrics_of(spec: &CanarySpec) -> &[CanaryMetric] {
    spec.analysis.as_ref().map(|a| a.metrics.as_slice()).unwrap_or_default()
}

fn comparisons_judged(spec: &CanarySpec, results: Option<&[MetricResult]>) -> bool {
    let Some(results) = results else {
        return false;
    };
    results.iter().all(|r| !r.pending())
        && metrics_of(spec)
            .iter()
            .filter(|m| m.comparison.is_some())
            .all(|m| results.iter().any(|r| r.name == m.name && !r.pending()))
}

/// What a driven run saw, so a guard can tell the generators reach every path.
#[derive(Debug, Default)]
struct Seen {
    holds: usize,
    failed_at_once: usize,
    failed_at_deadline: usize,
    promoted_after_pending: usize,
}

fn drive(
    spec: &CanarySpec,
    provider: Provider,
    mut status: CanaryStatus,
    worlds: &[World],
) -> Result<Seen, TestCaseError> {
    let mut seen = Seen::default();
    let strategy = strategy_of(spec, provider);
    let deadline = Span::from_std(progress_deadline(spec)).unwrap_or(Span::MAX);
    let mut now = start();
    let mut revision = status.last_applied_spec.clone().unwrap_or_else(|| "r0".to_string());
    let mut annotations = BTreeMap::new();
    let mut pending_seen_in_run = false;
    for world in worlds {
        now += Span::seconds(world.wait_secs);
        if let Some(i) = world.new_revision {
            revision = REVISIONS[i].to_string();
        }
        if let Some((verb, id)) = world.request {
            let named = status.last_applied_spec.clone().unwrap_or_default();
            annotations.insert(verb.annotation().to_string(), VerbRequest::value_for(&named, &id.to_string()));
        }
        let plan = plan(spec, &status, provider, &revision, &FleetGate::NotInFleet, now);
        let hooks: BTreeMap<_, _> = plan
            .hooks
            .iter()
            .map(|hook| {
                let pass = HOOKS.iter().position(|h| h == hook).is_none_or(|i| world.hooks_pass[i]);
                let pass = if *hook == HookType::Rollback { !pass } else { pass };
                (*hook, if pass { Ok(()) } else { Err("no".to_string()) })
            })
            .collect();
        let results: Option<Vec<MetricResult>> = plan.run_metrics.then(|| {
            metrics_of(spec)
                .iter()
                .zip(&world.outcomes)
                .filter_map(|(metric, outcome)| {
                    // Plain metrics always have a result; only a comparison's may be missing.
                    let outcome = outcome.or(metric.comparison.is_none().then_some(MetricOutcome::Passed))?;
                    Some(MetricResult { name: metric.name.clone(), value: Some(1.0), outcome, ..Default::default() })
                })
                .collect()
        });
        let tick_failed = results.iter().flatten().any(|r| r.failed())
            || [HookType::PreRollout, HookType::Rollout].iter().any(|h| matches!(hooks.get(h), Some(Err(_))));
        let judged = comparisons_judged(spec, results.as_deref());
        let obs = Observation {
            now,
            target_revision: revision.clone(),
            target_release: format!("app:{revision}"),
            canary: world.canary.clone(),
            canary_scaled_down: false,
            primary: world.primary.clone(),
            primary_updated: true,
            primary_template: None,
            fleet: FleetGate::NotInFleet,
            gates: GateResults { hooks, metrics: results, ..GateResults::default() },
            requests: verb_requests(&annotations),
        };
        let old = status.clone();
        let decision = decide(spec, &old, provider, &obs);
        let new = &decision.status;
        let reasons = reasons(&decision);
        prop_assert!(!reasons.contains(&"InvalidTransition"), "{:?}", decision.actions);
        let by_request = reasons.contains(&"PromotedByRequest");

        // The rule: no promotion while any metric of the run is pending. Exceptions are
        // the two a person declares: skipAnalysis, and `kubectl petrel promote`.
        if decision.actions.contains(&Action::PromoteCanaryToPrimary) {
            prop_assert!(
                spec.skip_analysis || by_request || judged,
                "promoted with a metric pending: {:?} from {:?}",
                decision.actions,
                obs.gates.metrics
            );
            if judged && pending_seen_in_run {
                seen.promoted_after_pending += 1;
            }
        }
        // No step past the last one: all traffic never moves to an unjudged canary (A/B
        // routes every *matching* request to the canary at every step, by design).
        if !matches!(strategy, Steps::AbTesting { .. }) {
            for action in &decision.actions {
                if let Action::SetRoutes { primary: 0, .. } = action {
                    prop_assert!(judged, "all traffic on an unjudged canary: {:?}", decision.actions);
                }
            }
        }
        // Pending is not a failed check.
        if new.failed_checks > old.failed_checks {
            prop_assert!(tick_failed, "a failed check counted without a failure: {:?}", decision.actions);
        }
        // A hold says so, keeps its start, and never outlives its deadline; a comparison
        // that says Fail is never held.
        if reasons.contains(&"ComparisonPending") {
            let since = new.comparison_pending_since;
            prop_assert!(since.is_some_and(|since| now - since < deadline), "hold past its deadline: {since:?}");
            prop_assert!(old.comparison_pending_since.is_none_or(|o| Some(o) == since));
            prop_assert!(matches!(new.phase, Phase::Progressing | Phase::WaitingPromotion));
            prop_assert!(new.conditions.iter().any(|c| c.type_ == "Progressing" && c.reason == "ComparisonPending"));
            let fails_at_once = metrics_of(spec).iter().any(|m| {
                m.comparison.as_ref().is_some_and(|c| c.on_insufficient_samples() == InsufficientSamples::Fail)
                    && obs.gates.metrics.iter().flatten().find(|r| r.name == m.name).is_none_or(|r| r.pending())
            });
            prop_assert!(!fails_at_once, "held although a pending comparison says Fail");
            seen.holds += 1;
        }
        if reasons.contains(&"InsufficientSamples") {
            prop_assert_eq!(new.phase, Phase::Failed);
            let all_primary = Action::SetRoutes { primary: 100, canary: 0, mirror: false };
            prop_assert!(decision.actions.contains(&all_primary), "{:?}", decision.actions);
            match old.comparison_pending_since {
                Some(since) if now - since >= deadline => seen.failed_at_deadline += 1,
                _ => seen.failed_at_once += 1,
            }
        }
        if !matches!(new.phase, Phase::Progressing | Phase::WaitingPromotion) {
            prop_assert_eq!(new.comparison_pending_since, None, "the hold outlived its run");
        }

        let run_started = decision.actions.contains(&Action::ScaleCanaryUp { after_status: true })
            || reasons.contains(&"RestartedAnalysis")
            || new.last_applied_spec != old.last_applied_spec;
        if run_started {
            pending_seen_in_run = false;
        }
        pending_seen_in_run |= obs.gates.metrics.iter().flatten().any(|r| r.pending());
        status = decision.status;
    }
    Ok(seen)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn no_promotion_while_a_metric_is_pending_from_a_fresh_canary(
        spec in spec(),
        provider in provider(),
        worlds in proptest::collection::vec(world(), 1..80),
    ) {
        drive(&spec, provider, CanaryStatus::default(), &worlds)?;
    }

    #[test]
    fn no_promotion_while_a_metric_is_pending_from_any_status(
        spec in spec(),
        provider in provider(),
        status in status(),
        held_ago in proptest::option::of(0..900i64),
        worlds in proptest::collection::vec(world(), 1..40),
    ) {
        let status = CanaryStatus {
            comparison_pending_since: held_ago.map(|ago| start() - Span::seconds(ago)),
            ..status
        };
        drive(&spec, provider, status, &worlds)?;
    }
}

/// Guards the generators: a property that never sees a hold, both ways of failing, or a
/// promotion after a pending tick proves little.
#[test]
fn generated_runs_hold_fail_and_promote_after_pending() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut total = Seen::default();
    for _ in 0..300 {
        let spec = spec().new_tree(&mut runner).unwrap().current();
        let provider = provider().new_tree(&mut runner).unwrap().current();
        let worlds = proptest::collection::vec(world(), 60..80).new_tree(&mut runner).unwrap().current();
        let seen = drive(&spec, provider, CanaryStatus::default(), &worlds).unwrap();
        total.holds += seen.holds;
        total.failed_at_once += seen.failed_at_once;
        total.failed_at_deadline += seen.failed_at_deadline;
        total.promoted_after_pending += seen.promoted_after_pending;
    }
    eprintln!("generated runs: {total:?}");
    assert!(
        total.holds > 100
            && total.failed_at_once > 10
            && total.failed_at_deadline > 10
            && total.promoted_after_pending > 10,
        "{total:?}"
    );
}
