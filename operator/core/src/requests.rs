//! Verb requests (`kubectl petrel abort|promote|retry`) as the state machine sees them:
//! which are still pending, and which one acts this reconcile.
//!
//! A request acts only on the revision it names, and only when that revision is both the
//! one in `status.lastAppliedSpec` (what the plugin read when the person asked) and the
//! target now: promoting or aborting anything else would act on a revision nobody named.
//! A request that does not act is reported with the reason; either way it is recorded as
//! handled, so it never fires later when the situation happens to change.

use std::collections::BTreeMap;

use crate::machine::FleetGate;
use crate::transitions::{Event, transition};
use petrel_api::canary::CanaryStatus;
use petrel_api::verbs::{Verb, VerbRequest, verb_requests};

/// The verb requests on `annotations` that `status` has not handled yet.
pub fn pending_requests(annotations: &BTreeMap<String, String>, status: &CanaryStatus) -> Vec<VerbRequest> {
    verb_requests(annotations).into_iter().filter(|request| is_pending(request, status)).collect()
}

/// Whether `request` differs from the last value handled for its annotation.
pub fn is_pending(request: &VerbRequest, status: &CanaryStatus) -> bool {
    status.handled_requests.get(request.verb.annotation()) != Some(&request.value)
}

/// What the pending requests amount to this reconcile.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Triage {
    /// The request that acts, and the event it raises.
    pub acting: Option<(VerbRequest, Event)>,
    /// The requests that do not act, each with the reason a person reads.
    pub ignored: Vec<(VerbRequest, String)>,
}

impl Triage {
    /// Every request handled this reconcile, acted on or not.
    pub fn handled(&self) -> impl Iterator<Item = &VerbRequest> {
        self.acting.iter().map(|(request, _)| request).chain(self.ignored.iter().map(|(request, _)| request))
    }
}

/// Sorts the pending ones among `requests` into the one that acts and those ignored.
/// Abort is looked at first, so it wins over a promote of the same revision.
pub(crate) fn triage(
    requests: &[VerbRequest],
    status: &CanaryStatus,
    target_revision: &str,
    fleet: &FleetGate,
) -> Triage {
    let mut pending: Vec<&VerbRequest> = requests.iter().filter(|request| is_pending(request, status)).collect();
    pending.sort_by_key(|request| request.verb);
    let mut triage = Triage::default();
    for request in pending {
        if let Some((winner, _)) = &triage.acting {
            let reason = format!("the {} request for revision {} acted instead", winner.verb, winner.revision);
            triage.ignored.push((request.clone(), reason));
            continue;
        }
        match event_of(request, status, target_revision, fleet) {
            Ok(event) => triage.acting = Some((request.clone(), event)),
            Err(reason) => triage.ignored.push((request.clone(), reason)),
        }
    }
    triage
}

fn event_of(
    request: &VerbRequest,
    status: &CanaryStatus,
    target_revision: &str,
    fleet: &FleetGate,
) -> Result<Event, String> {
    let fleet_pending = matches!(fleet, FleetGate::Pending { .. });
    let event = match request.verb {
        Verb::Abort => Event::AbortRequested,
        Verb::Promote => Event::PromoteRequested,
        Verb::Retry if fleet_pending => Event::RetryAwaitingFleet,
        Verb::Retry => Event::RetryRequested,
    };
    let phase = status.phase;
    // The table says in which phases a verb can act, so the two never disagree.
    if transition(phase, event).is_none() {
        let applies = match request.verb {
            Verb::Abort | Verb::Promote => "while a revision waits or is under analysis",
            Verb::Retry => "only after a failed run",
        };
        return Err(format!("{} applies {applies}, and the Canary is {phase}", request.verb));
    }
    let applied = status.last_applied_spec.as_deref().unwrap_or("(none)");
    if !request.is_for(applied) {
        return Err(format!(
            "it names revision {}, but the revision in status.lastAppliedSpec is {applied}",
            request.revision
        ));
    }
    if !request.is_for(target_revision) {
        return Err(format!("the target moved on to revision {target_revision}, which gets a run of its own"));
    }
    // A Canary that waits at a new revision from an idle phase still records the promoted
    // revision as applied: aborting or promoting "it" would act on what already runs.
    if request.verb != Verb::Retry && status.last_promoted_spec.as_deref() == Some(applied) {
        return Err(format!("revision {applied} is already promoted: no release is under way to {}", request.verb));
    }
    if request.verb == Verb::Promote && *fleet != FleetGate::NotInFleet {
        return Err("the Canary belongs to a fleet Rollout, whose hub approves releases; promote it there".to_string());
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use petrel_api::verbs::{ABORT_ANNOTATION, RETRY_ANNOTATION};

    #[test]
    fn a_request_is_pending_until_its_exact_value_was_handled() {
        let annotations = BTreeMap::from([
            (ABORT_ANNOTATION.to_string(), "r1@1".to_string()),
            (RETRY_ANNOTATION.to_string(), "r1@2".to_string()),
        ]);
        let mut status = CanaryStatus::default();
        assert_eq!(pending_requests(&annotations, &status).len(), 2);
        status.handled_requests.insert(ABORT_ANNOTATION.to_string(), "r1@1".to_string());
        status.handled_requests.insert(RETRY_ANNOTATION.to_string(), "r1@1".to_string());
        let pending = pending_requests(&annotations, &status);
        assert_eq!(pending.len(), 1);
        assert_eq!((pending[0].verb, pending[0].value.as_str()), (Verb::Retry, "r1@2"));
    }
}
