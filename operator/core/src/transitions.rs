//! The Canary transition table: the single place where phases change.
//!
//! [`machine::decide`](super::machine::decide) classifies (status, observation) into one
//! [`Event`], looks up `(phase, event)` here, and applies the row's [`Effect`]. A pair that
//! is not in the table is a bug in the classifier; `decide` keeps the status unchanged and
//! records an `InvalidTransition` warning (the property tests assert it never happens).

use petrel_api::canary::Phase;

/// What happened, as seen from the current phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// `spec.suspend` is set: touch nothing.
    Suspended,
    /// Initializing: the `-primary` Deployment is Ready.
    PrimaryReady,
    /// Nothing to do now (no new revision, tick not due, pods not ready yet, gates not run).
    NothingToDo,
    /// A revision that is neither the one last applied nor the promoted one.
    NewRevision,
    /// The new revision belongs to a fleet Rollout that has not approved it.
    FleetNotApproved,
    /// A confirm-rollout webhook did not answer 2xx.
    ConfirmRolloutRejected,
    /// The target went back to the promoted template: nothing left to release.
    RevertedToPromoted,
    /// The target changed during a run: start the analysis again for the new revision.
    RevisionChangedMidRun,
    /// The target changed during a run to a revision the fleet has not approved.
    RevisionChangedNotApproved,
    /// The canary's pods are not ready yet (not a failed check).
    CanaryNotReady,
    /// The canary is scaled down while its revision is analysed: the scale-up that
    /// started the run did not land, or someone scaled it down since.
    CanaryScaledDown,
    /// The canary stayed unavailable past `progressDeadlineSeconds`.
    ProgressDeadlineExceeded,
    /// `skipAnalysis`: promote without analysis.
    SkipAnalysis,
    /// A rollback webhook answered 2xx.
    RollbackRequested,
    /// Failed checks reached the threshold.
    ThresholdReached,
    /// A metric or a pre-rollout/rollout hook failed, below the threshold.
    CheckFailed,
    /// Checks passed; a confirm-traffic-increase webhook held the next step.
    TrafficIncreaseRejected,
    /// A tick whose metrics would be judged on a window that still holds requests of
    /// another revision the canary served: its hooks ran, no metric is judged, the step
    /// stays.
    MetricWindowHeld,
    /// Checks passed, or some comparison is still pending while the next step is not one
    /// that waits for judged comparisons: take the strategy's next step.
    StepPassed,
    /// Nothing failed, but a comparison is still pending and the next step waits for
    /// judged comparisons (promotion, or all traffic on the canary); its
    /// `onInsufficientSamples` is `Hold` and the hold's deadline has not passed.
    ComparisonPending,
    /// As `ComparisonPending`, but a pending comparison says `onInsufficientSamples:
    /// Fail`, or the hold began `progressDeadlineSeconds` ago: the run fails.
    InsufficientSamples,
    /// Checks passed at the last step and confirm-promotion agreed.
    AnalysisComplete,
    /// Checks passed at the last step; confirm-promotion said not yet.
    PromotionRejected,
    /// Promoting: the primary still rolls out the new template.
    PrimaryRollingOut,
    /// Promoting: the primary's rollout is stuck past its deadline.
    PrimaryStuck,
    /// Promoting: one `stepWeightPromotion` step back to the primary, more to go.
    PromotionStepDone,
    /// Promoting: the primary runs the new template and now gets all traffic.
    PrimaryRolledOut,
    /// Finalising: the canary can be scaled down.
    Finalised,
    /// `kubectl petrel abort` for the revision under release: roll it back now.
    AbortRequested,
    /// `kubectl petrel promote` for the revision under release: skip the remaining steps.
    PromoteRequested,
    /// `kubectl petrel retry` for the failed revision: run its analysis again.
    RetryRequested,
    /// A retry request while the fleet Rollout has not approved the revision: the run
    /// starts again at the fleet gate.
    RetryAwaitingFleet,
}

/// What applying a row does (actions and status fields, see `machine::apply`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Effect {
    /// No actions, status unchanged apart from bookkeeping.
    Hold,
    /// Record the primary's revision as applied and promoted; all traffic to the primary.
    Initialize,
    /// Scale the canary up and reset the run's counters.
    StartRun,
    /// Scale the canary up again; the run and its counters stay.
    ScaleUpAgain,
    /// Withdraw canary traffic (if any) and wait at the gate.
    Wait,
    /// Route all traffic to the primary and reset the run for the new revision.
    Restart,
    /// Route all traffic to the primary and scale the canary down; release withdrawn.
    Withdraw,
    /// One failed check more.
    CountFailure,
    /// All traffic to the primary, canary to zero, post-rollout hooks.
    Rollback,
    /// Promote at once, without analysis.
    PromoteNow,
    /// Apply the strategy's next step.
    Advance,
    /// Keep the step and its ticks; record when the hold began (its deadline).
    HoldForSamples,
    /// Copy the canary's template into the primary.
    StartPromotion,
    /// Move `stepWeightPromotion` back to the primary.
    ShiftToPrimary,
    /// All traffic to the primary.
    RouteAllToPrimary,
    /// Canary to zero, post-rollout hooks, the revision is promoted.
    Finalise,
    /// Report a stuck primary rollout; keep traffic where it is.
    ReportStuck,
}

/// Phase after a transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    Stay,
    To(Phase),
}

use Effect as F;
use Event as E;
use Next::{Stay, To};
use Phase as P;

const ANY: &[Phase] = &Phase::ALL;
const IDLE: &[Phase] = &[P::Initialized, P::Succeeded, P::Failed];
const GATED: &[Phase] = &[P::Initialized, P::Succeeded, P::Failed, P::Waiting];
const ANALYSING: &[Phase] = &[P::Progressing, P::WaitingPromotion];
const ANALYSING_OR_WAITING: &[Phase] = &[P::Progressing, P::WaitingPromotion, P::Waiting];

/// `(from, event) -> (to, effect)`. The first matching row wins.
#[rustfmt::skip]
pub const TRANSITIONS: &[(&[Phase], Event, Next, Effect)] = &[
    // from                     event                          to                       effect
    (ANY,                       E::Suspended,                  Stay,                    F::Hold),
    (ANY,                       E::NothingToDo,                Stay,                    F::Hold),
    (&[P::Initializing],        E::PrimaryReady,               To(P::Initialized),      F::Initialize),
    (GATED,                     E::NewRevision,                To(P::Progressing),      F::StartRun),
    (GATED,                     E::FleetNotApproved,           To(P::Waiting),          F::Wait),
    (GATED,                     E::ConfirmRolloutRejected,     To(P::Waiting),          F::Wait),
    (&[P::Waiting],             E::RevertedToPromoted,         To(P::Succeeded),        F::Withdraw),
    (ANALYSING,                 E::RevertedToPromoted,         To(P::Succeeded),        F::Withdraw),
    (ANALYSING,                 E::RevisionChangedMidRun,      To(P::Progressing),      F::Restart),
    (ANALYSING,                 E::RevisionChangedNotApproved, To(P::Waiting),          F::Wait),
    (ANALYSING,                 E::CanaryScaledDown,           Stay,                    F::ScaleUpAgain),
    (ANALYSING,                 E::CanaryNotReady,             Stay,                    F::Hold),
    (ANALYSING,                 E::ProgressDeadlineExceeded,   To(P::Failed),           F::Rollback),
    (ANALYSING,                 E::SkipAnalysis,               To(P::Succeeded),        F::PromoteNow),
    (ANALYSING_OR_WAITING,      E::RollbackRequested,          To(P::Failed),           F::Rollback),
    (ANALYSING,                 E::ThresholdReached,           To(P::Failed),           F::Rollback),
    (ANALYSING,                 E::CheckFailed,                Stay,                    F::CountFailure),
    (ANALYSING,                 E::ComparisonPending,          Stay,                    F::HoldForSamples),
    (ANALYSING,                 E::InsufficientSamples,        To(P::Failed),           F::Rollback),
    (ANALYSING,                 E::FleetNotApproved,           To(P::Waiting),          F::Wait),
    (ANALYSING,                 E::TrafficIncreaseRejected,    Stay,                    F::Hold),
    (ANALYSING,                 E::MetricWindowHeld,           Stay,                    F::Hold),
    (ANALYSING,                 E::StepPassed,                 To(P::Progressing),      F::Advance),
    (ANALYSING,                 E::AnalysisComplete,           To(P::Promoting),        F::StartPromotion),
    (ANALYSING,                 E::PromotionRejected,          To(P::WaitingPromotion), F::Hold),
    (&[P::Promoting],           E::PrimaryRollingOut,          Stay,                    F::Hold),
    (&[P::Promoting],           E::PrimaryStuck,               Stay,                    F::ReportStuck),
    (&[P::Promoting],           E::PromotionStepDone,          Stay,                    F::ShiftToPrimary),
    (&[P::Promoting],           E::PrimaryRolledOut,           To(P::Finalising),       F::RouteAllToPrimary),
    (&[P::Finalising],          E::Finalised,                  To(P::Succeeded),        F::Finalise),
    // Requests a person made with `kubectl petrel` (see `super::requests`).
    (ANALYSING_OR_WAITING,      E::AbortRequested,             To(P::Failed),           F::Rollback),
    (ANALYSING_OR_WAITING,      E::PromoteRequested,           To(P::Promoting),        F::StartPromotion),
    (&[P::Failed],              E::RetryRequested,             To(P::Progressing),      F::StartRun),
    (&[P::Failed],              E::RetryAwaitingFleet,         To(P::Waiting),          F::Wait),
];

/// Looks `(phase, event)` up in [`TRANSITIONS`].
pub fn transition(phase: Phase, event: Event) -> Option<(Phase, Effect)> {
    TRANSITIONS.iter().find(|(from, e, _, _)| *e == event && from.contains(&phase)).map(|(_, _, next, effect)| {
        let to = match next {
            Stay => phase,
            To(to) => *to,
        };
        (to, *effect)
    })
}

/// Idle phases in which only a new revision starts work.
pub fn is_idle(phase: Phase) -> bool {
    IDLE.contains(&phase)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_phase_can_be_suspended_and_hold() {
        for phase in Phase::ALL {
            assert_eq!(transition(phase, Event::Suspended), Some((phase, Effect::Hold)));
            assert_eq!(transition(phase, Event::NothingToDo), Some((phase, Effect::Hold)));
        }
    }

    #[test]
    fn failed_only_leaves_through_a_new_revision_its_gates_or_a_retry_request() {
        let exits: Vec<_> = TRANSITIONS
            .iter()
            .filter(|(from, _, next, _)| from.contains(&Phase::Failed) && *next != Stay)
            .map(|(_, event, _, _)| *event)
            .collect();
        assert_eq!(
            exits,
            vec![
                Event::NewRevision,
                Event::FleetNotApproved,
                Event::ConfirmRolloutRejected,
                Event::RetryRequested,
                Event::RetryAwaitingFleet
            ]
        );
    }

    #[test]
    fn requests_act_only_on_a_release_in_flight_or_a_failed_one() {
        for phase in Phase::ALL {
            let in_flight = matches!(phase, Phase::Waiting | Phase::Progressing | Phase::WaitingPromotion);
            assert_eq!(transition(phase, Event::AbortRequested).is_some(), in_flight, "abort from {phase:?}");
            assert_eq!(transition(phase, Event::PromoteRequested).is_some(), in_flight, "promote from {phase:?}");
            let failed = phase == Phase::Failed;
            assert_eq!(transition(phase, Event::RetryRequested).is_some(), failed, "retry from {phase:?}");
            assert_eq!(transition(phase, Event::RetryAwaitingFleet).is_some(), failed, "retry from {phase:?}");
        }
        assert_eq!(transition(Phase::Progressing, Event::AbortRequested), Some((Phase::Failed, Effect::Rollback)));
        assert_eq!(
            transition(Phase::WaitingPromotion, Event::PromoteRequested),
            Some((Phase::Promoting, Effect::StartPromotion))
        );
        assert_eq!(transition(Phase::Failed, Event::RetryAwaitingFleet), Some((Phase::Waiting, Effect::Wait)));
    }

    #[test]
    fn rows_are_not_shadowed() {
        for (i, (from, event, _, _)) in TRANSITIONS.iter().enumerate() {
            for phase in from.iter() {
                let first = TRANSITIONS.iter().position(|(f, e, _, _)| e == event && f.contains(phase));
                assert_eq!(first, Some(i), "row {i} ({phase:?}, {event:?}) is shadowed by an earlier row");
            }
        }
    }

    #[test]
    fn a_pending_comparison_never_leads_towards_promotion() {
        for phase in Phase::ALL {
            match transition(phase, Event::ComparisonPending) {
                Some((to, effect)) => {
                    assert!(ANALYSING.contains(&phase), "pending from {phase:?}");
                    assert_eq!((to, effect), (phase, Effect::HoldForSamples));
                }
                None => assert!(!ANALYSING.contains(&phase)),
            }
            if let Some((to, effect)) = transition(phase, Event::InsufficientSamples) {
                assert_eq!((to, effect), (Phase::Failed, Effect::Rollback), "from {phase:?}");
            }
        }
    }

    #[test]
    fn rollback_always_ends_failed() {
        for (from, event, next, effect) in TRANSITIONS {
            if *effect == Effect::Rollback {
                assert_eq!(*next, To(Phase::Failed), "{event:?} from {from:?}");
            }
        }
    }
}
