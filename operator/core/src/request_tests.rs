//! Example-based tests of the verb requests (`kubectl petrel abort|promote|retry`) in the
//! state machine: each acted on, each ignored with its reason, none acted on twice.

use std::time::Duration;

use crate::machine::{Action, Decision, FleetGate};
use crate::machine_tests::{Sim, analysis, reasons, routes_of};
use crate::provider::Provider;
use petrel_api::canary::{CanaryAnalysis, Phase};
use petrel_api::verbs::{ABORT_ANNOTATION, PROMOTE_ANNOTATION, RETRY_ANNOTATION};

fn has(decision: &Decision, action: &Action) -> bool {
    decision.actions.contains(action)
}

/// The messages of the events with `reason`.
fn messages(decision: &Decision, wanted: &str) -> Vec<String> {
    decision
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Event { reason, message, .. } if *reason == wanted => Some(message.clone()),
            _ => None,
        })
        .collect()
}

fn is_warning(decision: &Decision, wanted: &str) -> bool {
    decision.actions.iter().any(|a| matches!(a, Action::Event { reason, warning: true, .. } if *reason == wanted))
}

fn request(sim: &mut Sim, annotation: &str, value: &str) {
    sim.annotations.insert(annotation.to_string(), value.to_string());
}

fn handled<'a>(decision: &'a Decision, annotation: &str) -> Option<&'a str> {
    decision.status.handled_requests.get(annotation).map(String::as_str)
}

/// r1 under analysis at canary weight 20 of a 10-step canary (max 50).
fn at_weight_20() -> Sim {
    let mut sim = Sim::new(
        analysis(CanaryAnalysis { step_weight: Some(10), max_weight: Some(50), ..Default::default() }),
        Provider::Istio,
    );
    sim.initialized_then_release("r1");
    sim.next_tick();
    sim.next_tick();
    assert_eq!((sim.status.phase, sim.status.canary_weight), (Phase::Progressing, 20));
    sim
}

/// r1 rolled back after failed checks reached the threshold (2).
fn failed_r1(fleet: FleetGate) -> Sim {
    let mut sim = Sim::new(
        analysis(CanaryAnalysis { step_weight: Some(10), threshold: Some(2), ..Default::default() }),
        Provider::GatewayApi,
    );
    sim.fleet = fleet;
    sim.initialized_then_release("r1");
    sim.next_tick();
    sim.metrics_pass = false;
    sim.next_tick();
    let failed = sim.next_tick();
    assert_eq!(failed.status.phase, Phase::Failed);
    assert_eq!(failed.status.failed_checks, 2);
    sim
}

#[test]
fn abort_rolls_the_revision_under_analysis_back_once() {
    let mut sim = at_weight_20();
    request(&mut sim, ABORT_ANNOTATION, "r1@1");
    let aborted = sim.after(Duration::from_secs(1));
    assert_eq!(aborted.status.phase, Phase::Failed);
    assert_eq!(aborted.status.canary_weight, 0);
    assert_eq!(routes_of(&aborted), vec![(100, 0, false)]);
    assert!(has(&aborted, &Action::ScaleCanaryToZero));
    assert_eq!(reasons(&aborted), vec!["Aborted"]);
    assert!(is_warning(&aborted, "Aborted"));
    assert!(messages(&aborted, "Aborted")[0].contains("petrel.dev/abort=r1@1"), "{:?}", aborted.actions);
    assert_eq!(handled(&aborted, ABORT_ANNOTATION), Some("r1@1"));

    // The annotation stays on the object: it is handled, so nothing happens again.
    let later = sim.after(Duration::from_secs(60));
    assert!(later.actions.is_empty(), "{:?}", later.actions);
    assert_eq!(later.status.phase, Phase::Failed);
}

#[test]
fn abort_wins_over_a_promote_of_the_same_revision() {
    let mut sim = at_weight_20();
    request(&mut sim, PROMOTE_ANNOTATION, "r1@1");
    request(&mut sim, ABORT_ANNOTATION, "r1@1");
    let decision = sim.after(Duration::from_secs(1));
    assert_eq!(decision.status.phase, Phase::Failed);
    assert!(!has(&decision, &Action::PromoteCanaryToPrimary));
    assert_eq!(reasons(&decision), vec!["Aborted", "RequestIgnored"]);
    assert!(messages(&decision, "RequestIgnored")[0].contains("the abort request for revision r1 acted instead"));
    assert_eq!(handled(&decision, ABORT_ANNOTATION), Some("r1@1"));
    assert_eq!(handled(&decision, PROMOTE_ANNOTATION), Some("r1@1"));
}

#[test]
fn promote_skips_the_remaining_steps_and_finishes_the_promotion() {
    let mut sim = at_weight_20();
    request(&mut sim, PROMOTE_ANNOTATION, "r1@1");
    sim.primary_updated = false;
    let promoting = sim.after(Duration::from_secs(1));
    assert_eq!(promoting.status.phase, Phase::Promoting);
    assert!(has(&promoting, &Action::PromoteCanaryToPrimary));
    assert_eq!(reasons(&promoting), vec!["PromotedByRequest"]);
    assert!(messages(&promoting, "PromotedByRequest")[0].contains("at weight 20"));
    assert_eq!(handled(&promoting, PROMOTE_ANNOTATION), Some("r1@1"));

    sim.primary_updated = true;
    let routed = sim.after(Duration::from_secs(2));
    assert_eq!(routed.status.phase, Phase::Finalising);
    assert_eq!(routes_of(&routed), vec![(100, 0, false)]);
    let done = sim.after(routed.requeue_after);
    assert_eq!(done.status.phase, Phase::Succeeded);
    assert_eq!(done.status.last_promoted_spec.as_deref(), Some("r1"));
    assert!(sim.after(Duration::from_secs(60)).actions.is_empty(), "the promote request does not fire again");
}

#[test]
fn promote_is_ignored_for_a_fleet_member_and_the_run_goes_on() {
    let mut sim = Sim::new(analysis(CanaryAnalysis { step_weight: Some(10), ..Default::default() }), Provider::Istio);
    sim.fleet = FleetGate::Approved { revision: "r1".into() };
    sim.initialized_then_release("r1");
    sim.next_tick();
    request(&mut sim, PROMOTE_ANNOTATION, "r1@1");
    let decision = sim.next_tick();
    assert_eq!(decision.status.phase, Phase::Progressing);
    assert!(!has(&decision, &Action::PromoteCanaryToPrimary));
    assert_eq!(routes_of(&decision), vec![(80, 20, false)], "the due tick still runs");
    assert!(is_warning(&decision, "RequestIgnored"));
    assert!(messages(&decision, "RequestIgnored")[0].contains("fleet Rollout"), "{:?}", decision.actions);
    assert_eq!(handled(&decision, PROMOTE_ANNOTATION), Some("r1@1"));
    assert!(!reasons(&sim.after(Duration::from_secs(1))).contains(&"RequestIgnored"), "reported once");
}

#[test]
fn requests_for_another_revision_or_in_the_wrong_phase_are_ignored_with_the_reason() {
    let mut sim = at_weight_20();
    request(&mut sim, ABORT_ANNOTATION, "r0@1");
    request(&mut sim, RETRY_ANNOTATION, "r1@1");
    let decision = sim.after(Duration::from_secs(1));
    assert_eq!(decision.status.phase, Phase::Progressing);
    assert_eq!(decision.status.canary_weight, 20);
    let ignored = messages(&decision, "RequestIgnored");
    assert_eq!(ignored.len(), 2, "{:?}", decision.actions);
    assert!(ignored[0].contains("abort request petrel.dev/abort=r0@1: it names revision r0"), "{}", ignored[0]);
    assert!(
        ignored[1].contains("retry applies only after a failed run, and the Canary is Progressing"),
        "{}",
        ignored[1]
    );

    // Finished releases cannot be aborted.
    let mut done = Sim::new(analysis(CanaryAnalysis::default()), Provider::Istio);
    done.reconcile();
    request(&mut done, ABORT_ANNOTATION, "r0@1");
    let decision = done.after(Duration::from_secs(1));
    assert_eq!(decision.status.phase, Phase::Initialized);
    assert!(messages(&decision, "RequestIgnored")[0].contains("the Canary is Initialized"));
}

#[test]
fn retry_runs_the_failed_revision_again_with_fresh_counters() {
    let mut sim = failed_r1(FleetGate::NotInFleet);
    sim.metrics_pass = true;
    request(&mut sim, RETRY_ANNOTATION, "r1@1");
    let retrying = sim.after(Duration::from_secs(1));
    assert_eq!(retrying.status.phase, Phase::Progressing);
    assert!(has(&retrying, &Action::ScaleCanaryUp { after_status: true }));
    assert_eq!(reasons(&retrying), vec!["Retrying"]);
    assert_eq!((retrying.status.failed_checks, retrying.status.canary_weight), (0, 0));
    assert_eq!(handled(&retrying, RETRY_ANNOTATION), Some("r1@1"));

    let first = sim.next_tick();
    assert_eq!(routes_of(&first), vec![(90, 10, false)], "traffic goes to the retried revision again");
}

#[test]
fn a_handled_retry_does_not_fire_after_the_next_failure_but_a_new_one_does() {
    let mut sim = failed_r1(FleetGate::NotInFleet);
    request(&mut sim, RETRY_ANNOTATION, "r1@1");
    sim.after(Duration::from_secs(1));
    sim.next_tick();
    sim.next_tick();
    let failed_again = sim.next_tick();
    assert_eq!(failed_again.status.phase, Phase::Failed);

    let still = sim.after(Duration::from_secs(60));
    assert!(still.actions.is_empty(), "the handled retry stays handled: {:?}", still.actions);
    request(&mut sim, RETRY_ANNOTATION, "r1@2");
    let again = sim.after(Duration::from_secs(1));
    assert_eq!(again.status.phase, Phase::Progressing);
    assert_eq!(handled(&again, RETRY_ANNOTATION), Some("r1@2"));
}

#[test]
fn retry_under_a_pending_fleet_gate_waits_for_the_hub() {
    let mut sim = failed_r1(FleetGate::Approved { revision: "r1".into() });
    sim.fleet = FleetGate::Pending { approved: Some("r0".into()) };
    request(&mut sim, RETRY_ANNOTATION, "r1@1");
    let waiting = sim.after(Duration::from_secs(1));
    assert_eq!(waiting.status.phase, Phase::Waiting);
    assert!(!has(&waiting, &Action::ScaleCanaryUp { after_status: true }));
    assert!(routes_of(&waiting).iter().all(|(_, canary, _)| *canary == 0));
    assert_eq!(reasons(&waiting), vec!["Retrying", "WaitingForFleetApproval"]);
    assert_eq!(waiting.status.failed_checks, 0);

    sim.fleet = FleetGate::Approved { revision: "r1".into() };
    let started = sim.after(Duration::from_secs(1));
    assert_eq!(started.status.phase, Phase::Progressing);
    assert!(has(&started, &Action::ScaleCanaryUp { after_status: true }));
}

#[test]
fn retry_is_ignored_once_the_target_moved_on() {
    let mut sim = failed_r1(FleetGate::NotInFleet);
    sim.metrics_pass = true;
    sim.revision = "r2".into();
    request(&mut sim, RETRY_ANNOTATION, "r1@1");
    let decision = sim.after(Duration::from_secs(1));
    assert_eq!(decision.status.phase, Phase::Progressing);
    assert_eq!(decision.status.last_applied_spec.as_deref(), Some("r2"));
    assert_eq!(reasons(&decision), vec!["NewRevision", "RequestIgnored"]);
    assert!(messages(&decision, "RequestIgnored")[0].contains("the target moved on to revision r2"));
}

#[test]
fn a_suspended_canary_leaves_requests_pending() {
    let mut sim = at_weight_20();
    sim.spec.suspend = true;
    request(&mut sim, ABORT_ANNOTATION, "r1@1");
    let suspended = sim.after(Duration::from_secs(1));
    assert!(suspended.actions.is_empty());
    assert_eq!(handled(&suspended, ABORT_ANNOTATION), None);

    sim.spec.suspend = false;
    let resumed = sim.after(Duration::from_secs(1));
    assert_eq!(resumed.status.phase, Phase::Failed);
    assert_eq!(reasons(&resumed), vec!["Aborted"]);
}
