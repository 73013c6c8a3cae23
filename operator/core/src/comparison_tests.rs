//! Example tests of a comparison that is still pending: steps before the last one go on,
//! the last one holds (or fails), and nothing is promoted unjudged.

use std::time::Duration;

use crate::machine::Action;
use crate::machine_tests::{Sim, analysis, event_message, reasons, routes_of};
use crate::provider::Provider;
use crate::strategy::{comparison_shortfall, strategy_of};
use petrel_api::canary::{
    CanaryAnalysis, CanaryMetric, CanarySpec, ComparisonDirection, InsufficientSamples, MetricComparison, Phase,
};

const COMPARED: &str = "latency-vs-primary";

/// `traffic` with one success-rate check and one comparison metric.
fn compared(traffic: CanaryAnalysis, on_insufficient: Option<InsufficientSamples>) -> CanarySpec {
    let mut spec = analysis(traffic);
    let analysis = spec.analysis.as_mut().unwrap();
    analysis.metrics.push(CanaryMetric {
        name: COMPARED.into(),
        comparison: Some(MetricComparison {
            direction: ComparisonDirection::Increase,
            min_samples: Some(2),
            on_insufficient_samples: on_insufficient,
            ..Default::default()
        }),
        ..Default::default()
    });
    spec.progress_deadline_seconds = Some(90);
    spec
}

fn step_20_40(on_insufficient: Option<InsufficientSamples>) -> CanarySpec {
    compared(CanaryAnalysis { step_weight: Some(20), max_weight: Some(40), ..Default::default() }, on_insufficient)
}

/// A release of `spec` started, with the comparison's result pending at every tick.
fn pending_release(spec: CanarySpec) -> Sim {
    let mut sim = Sim::new(spec, Provider::Istio);
    sim.pending_metrics = vec![COMPARED.into()];
    sim.initialized_then_release("r1");
    sim
}

/// The 20/40 release at weight 40, its last step: the next tick would promote.
fn at_last_step() -> Sim {
    let mut sim = pending_release(step_20_40(None));
    sim.next_tick();
    sim.next_tick();
    assert_eq!(sim.status.canary_weight, 40);
    sim
}

fn condition_reason(sim: &Sim, type_: &str) -> String {
    sim.status.conditions.iter().find(|c| c.type_ == type_).map(|c| c.reason.clone()).unwrap_or_default()
}

#[test]
fn pending_before_the_last_step_advances_and_says_so() {
    let mut sim = pending_release(step_20_40(None));
    let first = sim.next_tick();
    assert_eq!(routes_of(&first), vec![(80, 20, false)], "the first tick runs no metrics and is not the last step");
    let second = sim.next_tick();
    assert_eq!(routes_of(&second), vec![(60, 40, false)], "pending is not a failure: {:?}", second.actions);
    assert_eq!(second.status.failed_checks, 0);
    let message = event_message(&second, "WeightIncreased");
    assert!(message.contains("pending") && message.contains(COMPARED), "{message}");
    assert_eq!(second.status.comparison_pending_since, None, "no hold before the last step");
}

#[test]
fn pending_at_the_last_step_holds_then_fails_at_the_progress_deadline() {
    let mut sim = at_last_step();
    let held = sim.next_tick();
    let since = sim.now;
    assert_eq!(held.status.phase, Phase::Progressing);
    assert!(routes_of(&held).is_empty(), "the last step is held: {:?}", held.actions);
    assert!(!held.actions.contains(&Action::PromoteCanaryToPrimary));
    assert_eq!(held.status.comparison_pending_since, Some(since));
    let message = event_message(&held, "ComparisonPending");
    assert!(message.contains(COMPARED) && message.contains("progressDeadlineSeconds 1m30s"), "{message}");
    assert_eq!(condition_reason(&sim, "Progressing"), "ComparisonPending");

    // Every tick within the deadline holds, keeps the start of the hold and says so.
    let mut ticks = 0;
    while sim.now + chrono::Duration::seconds(30) - since < chrono::Duration::seconds(90) {
        let again = sim.next_tick();
        ticks += 1;
        assert_eq!(again.status.phase, Phase::Progressing);
        assert_eq!(again.status.comparison_pending_since, Some(since));
        assert_eq!(reasons(&again), vec!["ComparisonPending"]);
    }
    assert_eq!(ticks, 2, "30s ticks within a 90s deadline");

    let failed = sim.next_tick();
    assert_eq!(failed.status.phase, Phase::Failed);
    assert_eq!(routes_of(&failed), vec![(100, 0, false)]);
    assert!(failed.actions.contains(&Action::ScaleCanaryToZero));
    let message = event_message(&failed, "InsufficientSamples");
    assert!(message.contains("progressDeadlineSeconds") && message.contains(COMPARED), "{message}");
    assert_eq!(failed.status.comparison_pending_since, None, "the hold ends with the run");
    assert_eq!(condition_reason(&sim, "Progressing"), "Failed");
}

#[test]
fn pending_at_the_last_step_with_fail_fails_at_once() {
    let mut sim = pending_release(step_20_40(Some(InsufficientSamples::Fail)));
    sim.next_tick();
    let advanced = sim.next_tick();
    assert_eq!(advanced.status.canary_weight, 40, "Fail does not hold the steps before the last one");
    let failed = sim.next_tick();
    assert_eq!(failed.status.phase, Phase::Failed);
    assert!(!failed.actions.contains(&Action::PromoteCanaryToPrimary));
    assert!(event_message(&failed, "InsufficientSamples").contains("onInsufficientSamples is Fail"));
}

#[test]
fn a_hold_ends_in_promotion_once_the_comparison_is_judged() {
    let mut sim = at_last_step();
    assert_eq!(reasons(&sim.next_tick()), vec!["ComparisonPending"]);
    sim.pending_metrics.clear();
    let judged = sim.next_tick();
    assert_eq!(judged.status.phase, Phase::Promoting, "{:?}", judged.actions);
    assert!(judged.actions.contains(&Action::PromoteCanaryToPrimary));
    assert_eq!(judged.status.comparison_pending_since, None);
}

#[test]
fn a_failure_wins_over_pending() {
    let mut spec = step_20_40(None);
    spec.analysis.as_mut().unwrap().threshold = Some(2);
    let mut sim = pending_release(spec);
    sim.next_tick();
    sim.metrics_pass = false;
    let failed = sim.next_tick();
    assert_eq!(reasons(&failed), vec!["CheckFailed"]);
    assert_eq!(failed.status.failed_checks, 1);
}

#[test]
fn pending_never_moves_all_traffic_to_the_canary() {
    // Weights 50, 100: the step to 100 leaves the primary without traffic.
    let mut sim = pending_release(compared(CanaryAnalysis { step_weight: Some(50), ..Default::default() }, None));
    assert_eq!(routes_of(&sim.next_tick()), vec![(50, 50, false)]);
    let held = sim.next_tick();
    assert!(routes_of(&held).is_empty(), "{:?}", held.actions);
    assert_eq!(reasons(&held), vec!["ComparisonPending"]);

    // Blue/green: the iterations go on, the switch to the canary waits.
    let mut sim = pending_release(compared(CanaryAnalysis { iterations: Some(2), ..Default::default() }, None));
    sim.next_tick();
    assert_eq!(sim.next_tick().status.iterations, 2);
    let held = sim.next_tick();
    assert!(routes_of(&held).is_empty(), "{:?}", held.actions);
    assert_eq!(reasons(&held), vec!["ComparisonPending"]);
    assert_eq!(held.status.canary_weight, 0);
}

#[test]
fn a_comparison_without_a_result_is_pending_not_passed() {
    // One step straight to 100: the first tick runs no metrics, so nothing is judged.
    let mut sim = Sim::new(compared(CanaryAnalysis::default(), None), Provider::Istio);
    sim.initialized_then_release("r1");
    let first = sim.next_tick();
    assert!(routes_of(&first).is_empty(), "{:?}", first.actions);
    assert_eq!(reasons(&first), vec!["ComparisonPending"]);
    assert!(event_message(&first, "ComparisonPending").contains("no comparison result yet"));
}

#[test]
fn steps_too_few_for_min_samples_are_reported_with_both_counts() {
    // The example: stepWeight 20 / maxWeight 40 against the default minSamples 5.
    let mut spec = step_20_40(None);
    spec.analysis.as_mut().unwrap().metrics[1].comparison.as_mut().unwrap().min_samples = None;
    let message = comparison_shortfall(&spec, Provider::Istio).expect("2 ticks < 5 samples");
    assert!(message.contains("2 tick(s)") && message.contains("needs minSamples 5"), "{message}");
    assert!(message.contains("[20, 40]"), "{message}");

    let mut enough = step_20_40(None);
    enough.analysis.as_mut().unwrap().metrics[1].comparison.as_mut().unwrap().min_samples = Some(2);
    assert_eq!(comparison_shortfall(&enough, Provider::Istio), None);

    // The provider decides the strategy: `kubernetes` is blue/green with 10 iterations.
    assert_eq!(comparison_shortfall(&spec, Provider::Kubernetes), None);
    assert_eq!(strategy_of(&spec, Provider::Kubernetes).comparison_ticks(), 10);

    // skipAnalysis runs no analysis: nothing to refuse.
    spec.skip_analysis = true;
    assert_eq!(comparison_shortfall(&spec, Provider::Istio), None);
}

#[test]
fn the_hold_requeues_at_the_next_tick() {
    let mut sim = at_last_step();
    let held = sim.next_tick();
    assert_eq!(held.requeue_after, Duration::from_secs(30));
}
