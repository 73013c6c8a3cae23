//! The hub controller's pure steps around [`crate::fleet::decide_waves`]: turning what
//! was read from the members into observations, choosing the release, and deciding
//! which annotations, events and status to write. No I/O here.
//!
//! A reconcile calls two of them: [`decide_rollout`] (what was read → blocked, or the
//! writes to make and the status they go with) and, once the writes' outcomes are known,
//! [`record`] (→ the status to write and the Events to publish after it). Their
//! properties are tested in `decide_props`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use kube_core::ResourceExt;

use super::input::{
    CANARY_NOT_FOUND, CLUSTERS_SHARE_IDENTITY, INVALID_SPEC, InputProblem, canary_problem, overlap_problem,
    problem_events, release_started, shared_identity_problem, sort_problems, traffic_share_problem, transition_events,
    unassigned_problem, valid_condition,
};
use crate::fleet::identity::IdentityVerdict;
use crate::fleet::inventory::{HubRollback, with_inventory};
use crate::fleet::{
    APPROVED_REVISION_ANNOTATION, CanaryObservation, FLEET_ROLLOUT_ANNOTATION, MemberObservation, Membership,
    PlanError, ReleaseHistory, RolloutPlan, WaveDecision, assign_waves, build_status, decide_waves,
    history_for_release,
};
use petrel_api::canary::Phase;
use petrel_api::common::Condition;
use petrel_api::rollout::{
    CONDITION_PROGRESSING, FailurePolicy, MemberState, MemberStatus, RolloutPhase, RolloutStatus, WavePhase,
};
use petrel_api::{Canary, Cluster, Rollout};

/// How often the hub looks at a Rollout when nothing else is due. Member changes wake
/// the reconcile through the member watches (the runtime's `hub::watches`); this is the safety
/// net for a change a watch missed.
pub const SAFETY_REQUEUE: Duration = Duration::from_secs(30);

/// The value of [`FLEET_ROLLOUT_ANNOTATION`]: `<namespace>/<name>` of the Rollout.
pub fn rollout_key(rollout: &Rollout) -> String {
    format!("{}/{}", rollout.namespace().unwrap_or_default(), rollout.name_any())
}

/// What reading one member gave.
#[derive(Clone, Debug)]
pub enum MemberRead {
    /// The member answered; its Canary (`None` when it does not exist there).
    Reached(Option<Box<Canary>>),
    /// No answer, or no client: why, for the status.
    Unreachable(String),
}

/// What the hub knows of a member after reading it now. An unreachable member keeps
/// its last contact and its Canary as the previous status recorded them, so facts it
/// reported before dropping off (promoted, failed) still count.
pub fn observe_member(
    cluster: &Cluster,
    read: &MemberRead,
    previous: Option<&MemberStatus>,
    identity: IdentityVerdict,
    now: DateTime<Utc>,
) -> MemberObservation {
    let (reachable, last_contact, canary) = match read {
        MemberRead::Reached(canary) => (true, Some(now), canary.as_deref().map(CanaryObservation::from_canary)),
        MemberRead::Unreachable(_) => {
            (false, previous.and_then(|p| p.last_contact), previous.and_then(last_seen_canary))
        }
    };
    MemberObservation {
        cluster: cluster.name_any(),
        labels: cluster.labels().clone(),
        reachable,
        last_contact,
        approved_at: None,
        canary,
        identity,
    }
}

/// The member's Canary as the previous status recorded it. A member recorded as
/// Succeeded had its revision promoted; that is the one fact the status cannot carry
/// directly.
pub fn last_seen_canary(previous: &MemberStatus) -> Option<CanaryObservation> {
    let phase = previous.phase?;
    Some(CanaryObservation {
        phase,
        release: previous.release.clone(),
        revision: previous.revision.clone(),
        promoted_revision: (previous.state == MemberState::Succeeded).then(|| previous.revision.clone()).flatten(),
        approved_revision: None,
        failed_checks: previous.failed_checks,
        weight: previous.weight,
        last_transition: None,
        promoted_release: None,
        max_weight: previous.max_weight,
    })
}

/// Sets each member's approval time from the history of the chosen release.
pub fn with_approvals(members: &mut [MemberObservation], history: &ReleaseHistory) {
    for member in members {
        member.approved_at = history.approvals.get(&member.cluster).copied();
    }
}

/// Records, at `now`, an approval a verified member holds that the history lacks: the
/// hub's approval of the very revision the member's Canary releases at `release`, written
/// by a reconcile whose status write was then refused or failed. Without it that approval
/// would never be recorded (no approval time, no `MemberApproved` Event).
pub fn with_delivered_approvals(members: &mut [MemberObservation], release: &str, now: DateTime<Utc>) {
    for member in members.iter_mut().filter(|m| m.approved_at.is_none() && m.identity.is_verified()) {
        let delivered = member.canary.as_ref().is_some_and(|c| c.is_at(release) && c.approval_delivered());
        if delivered {
            member.approved_at = Some(now);
        }
    }
}

/// Keeps on each member of `status` when the hub withdrew its approval, as `previous`
/// recorded it for the same release; a new release, or a member approved again now
/// (`approved_now`), starts without one.
pub fn with_withdrawals(status: &mut RolloutStatus, previous: Option<&RolloutStatus>, approved_now: &BTreeSet<&str>) {
    let same = previous.filter(|p| p.release.is_some() && p.release == status.release);
    for member in &mut status.members {
        member.approval_withdrawn_at = same
            .and_then(|p| p.members.iter().find(|m| m.cluster == member.cluster))
            .and_then(|m| m.approval_withdrawn_at)
            .filter(|_| !approved_now.contains(member.cluster.as_str()));
    }
}

/// Records `now` as when the hub withdrew the approval of each of `withdrawn` that has
/// no withdrawal recorded yet.
pub fn mark_withdrawn(status: &mut RolloutStatus, withdrawn: &BTreeSet<&str>, now: DateTime<Utc>) {
    for member in status.members.iter_mut().filter(|m| withdrawn.contains(m.cluster.as_str())) {
        member.approval_withdrawn_at.get_or_insert(now);
    }
}

/// The members whose approval the hub withdrew before this reconcile: the decision
/// withdraws it, or (a breached budget with `onFailure: RollbackAll` withdrawing every
/// approval) the status records approving the member, which has moved on since (failed,
/// promoted, timed out); and its Canary, read now, no longer carries the hub's approval.
/// A withdrawal written by a reconcile whose status write was then refused or failed is
/// so recorded by the retry, as [`with_delivered_approvals`] records an approval: without
/// it, it would never be (no `approvalWithdrawnAt`, no `ApprovalWithdrawn` Event).
pub fn withdrawn_before<'a>(
    input: &RolloutInput,
    plan: &RolloutPlan,
    decision: &WaveDecision,
    observations: &'a [MemberObservation],
) -> BTreeSet<&'a str> {
    let withdrawing = decision.budget_breached.is_some() && plan.on_failure == FailurePolicy::RollbackAll;
    let approval_gone = |cluster: &str| {
        input.canary_of(cluster).is_some_and(|c| !c.annotations().contains_key(APPROVED_REVISION_ANNOTATION))
    };
    observations
        .iter()
        .filter(|m| decision.withdraw.contains(&m.cluster) || (withdrawing && m.approved_at.is_some()))
        .filter(|m| approval_gone(&m.cluster))
        .map(|m| m.cluster.as_str())
        .collect()
}

/// Whether the previous status describes a release still moving through the fleet.
fn in_flight(status: &RolloutStatus) -> bool {
    matches!(
        status.phase,
        Some(RolloutPhase::Progressing | RolloutPhase::Soaking | RolloutPhase::WaitingApproval | RolloutPhase::Paused)
    )
}

/// The release to roll out, newest by the Canary's last transition among the members
/// of the first wave that has members (ties broken by name, so the choice is stable).
///
/// While a release is in flight, a first-wave member held at the gate for another
/// release since that run began is a new commit in Git: the plan restarts with it
/// (canary wave first), as a new revision restarts a Canary's analysis. Members that
/// were releasing the old one are already back at their gates (a new revision the hub
/// has not approved withdraws their canary traffic). A first-wave member that merely
/// still reports an older release (not synced yet, or held since before this run) does
/// not interrupt the run. `None` when nothing reports a release yet.
pub fn choose_release(
    plan: &RolloutPlan,
    previous: Option<&RolloutStatus>,
    members: &[MemberObservation],
) -> Option<String> {
    let previous_release = previous.and_then(|s| s.release.clone());
    let memberships = assign_waves(plan, members.iter().map(|m| &m.labels));
    let first_wave = memberships
        .iter()
        .filter_map(|m| match m {
            Membership::Wave(w) => Some(*w),
            _ => None,
        })
        .min();
    let first_wave_canaries: Vec<(&str, &CanaryObservation)> = members
        .iter()
        .zip(&memberships)
        .filter(|(_, m)| first_wave.is_some_and(|first| **m == Membership::Wave(first)))
        .filter_map(|(member, _)| Some((member.cluster.as_str(), member.canary.as_ref()?)))
        .collect();
    if let (Some(status), Some(current)) = (previous.filter(|s| in_flight(s)), previous_release.as_deref()) {
        // The run began when its first wave opened; before that nothing was approved.
        let run_began = status.waves.iter().filter_map(|w| w.opened_at).min();
        let superseding = first_wave_canaries.iter().copied().filter(|(_, c)| {
            c.phase == Phase::Waiting
                && c.release.as_deref().is_some_and(|r| r != current)
                && run_began.is_none_or(|began| c.last_transition.is_some_and(|t| t > began))
        });
        return newest_release(superseding).or(previous_release);
    }
    newest_release(first_wave_canaries.into_iter()).or(previous_release)
}

/// The release of the Canary with the newest last transition, ties broken by cluster name.
fn newest_release<'a>(candidates: impl Iterator<Item = (&'a str, &'a CanaryObservation)>) -> Option<String> {
    candidates
        .filter_map(|(cluster, c)| Some((c.last_transition, cluster, c.release.as_deref()?)))
        .max()
        .map(|(_, _, release)| release.to_string())
}

/// The annotations the hub owns on a member Canary (applied together: with server-side
/// apply, an owned annotation left out of an apply is removed). `None` when the Canary
/// already carries exactly these.
///
/// The approval is the new one when there is one; it is dropped when the approval is
/// withdrawn; otherwise the current one is kept as it is.
pub fn hub_annotations(
    rollout_key: &str,
    current: &BTreeMap<String, String>,
    approval: Option<&str>,
    withdraw: bool,
) -> Option<BTreeMap<String, String>> {
    let mut desired = BTreeMap::from([(FLEET_ROLLOUT_ANNOTATION.to_string(), rollout_key.to_string())]);
    let approved =
        if withdraw { None } else { approval.or(current.get(APPROVED_REVISION_ANNOTATION).map(String::as_str)) };
    if let Some(revision) = approved {
        desired.insert(APPROVED_REVISION_ANNOTATION.to_string(), revision.to_string());
    }
    let unchanged = [FLEET_ROLLOUT_ANNOTATION, APPROVED_REVISION_ANNOTATION]
        .iter()
        .all(|key| current.get(*key) == desired.get(*key));
    (!unchanged).then_some(desired)
}

/// The server-side apply body carrying only the hub's annotations: no spec, so a GitOps
/// tool owning the Canary's spec is never fought.
pub fn annotation_patch(namespace: &str, name: &str, annotations: &BTreeMap<String, String>) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "petrel.dev/v1alpha1",
        "kind": "Canary",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
    })
}

/// An Event the hub publishes on the Rollout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubEvent {
    pub reason: &'static str,
    pub message: String,
    pub warning: bool,
}

/// The Events of the decision a status records, from the stored status `old` to the
/// status `new` about to be written: the release started, waves opened, members approved
/// (their `approvedAt` set), a failure budget breached. A status of another release
/// counts as none. Keyed by the two statuses alone: a reconcile whose status write was
/// refused derives them again from the unchanged stored status, and one after a written
/// status derives none.
pub fn decision_events(old: Option<&RolloutStatus>, new: &RolloutStatus) -> Vec<HubEvent> {
    let Some(release) = new.release.as_deref() else { return Vec::new() };
    let before = old.filter(|o| o.release.as_deref() == Some(release));
    let wave_before = |name: &str| before.and_then(|b| b.waves.iter().find(|w| w.name == name));
    let mut events: Vec<HubEvent> = release_started(old, release).into_iter().collect();
    for wave in &new.waves {
        if wave.opened_at.is_some() && wave_before(&wave.name).is_none_or(|w| w.opened_at.is_none()) {
            events.push(HubEvent {
                reason: "WaveOpened",
                message: format!("wave {} opened for release {release} ({} clusters)", wave.name, wave.members),
                warning: false,
            });
        }
    }
    // An approval the stored status records already is being re-sent (the annotation did
    // not arrive yet); it was announced when it was recorded.
    for member in new.members.iter().filter(|m| m.approved_at.is_some()) {
        let recorded = before
            .and_then(|b| b.members.iter().find(|m| m.cluster == member.cluster))
            .is_some_and(|m| m.approved_at.is_some());
        if !recorded {
            events.push(HubEvent {
                reason: "MemberApproved",
                message: format!(
                    "approved revision {} on cluster {} (release {release})",
                    member.revision.as_deref().unwrap_or("unknown"),
                    member.cluster
                ),
                warning: false,
            });
        }
    }
    for wave in new.waves.iter().filter(|w| w.phase == WavePhase::Failed) {
        if wave_before(&wave.name).is_none_or(|w| w.phase != WavePhase::Failed) {
            events.push(HubEvent {
                reason: "WaveFailed",
                message: format!(
                    "wave {} breached its failure budget for release {release} ({} cluster(s) failed or timed out)",
                    wave.name, wave.failed
                ),
                warning: true,
            });
        }
    }
    events
}

/// What a status records only as text, or not at all, that its Events announce: the
/// problems its `Valid` condition lists, the rollbacks that failed (on the members'
/// messages) and what the rollbacks done now did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Notices {
    /// Every problem with the input, most serious first.
    pub problems: Vec<InputProblem>,
    /// Why a member's rollback failed, by member (its message says so).
    pub rollback_failures: BTreeMap<String, String>,
    /// What a rollback made now did, by member: the wording of its `MemberRolledBack`
    /// (the inventory records that it happened).
    pub rollbacks_done: BTreeMap<String, String>,
}

/// Every Event of the change from the stored status `old` to the status `new` about to
/// be written, published once `new` is written: [`decision_events`], then
/// [`events_after_decision`]. Pure.
pub fn events_between(old: Option<&RolloutStatus>, new: &RolloutStatus, notices: &Notices) -> Vec<HubEvent> {
    let mut events = decision_events(old, new);
    events.extend(events_after_decision(old, new, notices));
    events
}

/// The Events of a status change after those of the decision: approvals withdrawn
/// (a member's `approvalWithdrawnAt` newly set), members rolled back (now, or an
/// inventory entry newly `rolledBackFrom` a release), rollbacks failed (a failure the
/// stored member message does not say yet), new problems (not in the stored `Valid`
/// condition), and member, wave and release transitions.
///
/// Every one is keyed by the statuses (and the notices the status records as text): a
/// withdrawal whose status write was refused is recorded, and announced, by the retry
/// (see [`withdrawn_before`]).
pub fn events_after_decision(old: Option<&RolloutStatus>, new: &RolloutStatus, notices: &Notices) -> Vec<HubEvent> {
    let release = new.release.as_deref().unwrap_or("unknown");
    let stored = |cluster: &str| {
        old.filter(|o| o.release == new.release).and_then(|o| o.members.iter().find(|m| m.cluster == cluster))
    };
    let mut events: Vec<HubEvent> = new
        .members
        .iter()
        .filter(|m| m.approval_withdrawn_at.is_some())
        .filter(|m| stored(&m.cluster).is_none_or(|before| before.approval_withdrawn_at.is_none()))
        .map(|m| HubEvent {
            reason: "ApprovalWithdrawn",
            message: format!("withdrew the approval of cluster {} (release {release}): its Canary aborts", m.cluster),
            warning: true,
        })
        .collect();
    // Rolled back: by this reconcile, or by one whose status write was refused (the
    // retry finds the primary rolled back already, and the inventory records it now).
    let mut rolled_back: BTreeMap<&str, String> =
        notices.rollbacks_done.iter().map(|(cluster, done)| (cluster.as_str(), done.clone())).collect();
    for entry in &new.inventory {
        let Some(from) = &entry.rolled_back_from else { continue };
        let before = old.and_then(|o| o.inventory.iter().find(|e| e.cluster == entry.cluster));
        if before.and_then(|b| b.rolled_back_from.as_ref()) != Some(from) {
            rolled_back.entry(entry.cluster.as_str()).or_insert_with(|| {
                format!("rolled back from release {from} to {}", entry.release.as_deref().unwrap_or("unknown"))
            });
        }
    }
    for (cluster, done) in rolled_back {
        let message = format!("cluster {cluster}: {done}");
        events.push(HubEvent { reason: "MemberRolledBack", message, warning: false });
    }
    let stored_message = |cluster: &str| stored(cluster).map_or("", |m| m.message.as_str());
    for (cluster, failure) in &notices.rollback_failures {
        if !stored_message(cluster).contains(failure.as_str()) {
            let message = format!("cluster {cluster}: {failure}");
            events.push(HubEvent { reason: "RollbackFailed", message, warning: true });
        }
    }
    events.extend(problem_events(old.map_or(&[][..], |o| &o.conditions), &notices.problems));
    events.extend(transition_events(old, new));
    events
}

/// When to look again: when the decision says something falls due (a soak ends, a
/// deadline passes), and at least every [`SAFETY_REQUEUE`].
pub fn requeue_after(recheck_after: Option<Duration>) -> Duration {
    recheck_after.map_or(SAFETY_REQUEUE, |d| d.clamp(Duration::from_secs(1), SAFETY_REQUEUE))
}

/// How stale a recorded last contact may get before the status is rewritten for it
/// alone. Deadlines of unreachable members run from the recorded contact, so it must
/// stay close; rewriting it at every reconcile would make every reconcile trigger the next.
pub const CONTACT_REFRESH: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// Whether `next` is worth a write: something other than contact times changed, or a
/// recorded contact is [`CONTACT_REFRESH`] old.
pub fn status_worth_writing(previous: Option<&RolloutStatus>, next: &RolloutStatus) -> bool {
    let Some(previous) = previous else { return true };
    let without_contacts = |status: &RolloutStatus| {
        let mut status = status.clone();
        for member in &mut status.members {
            member.last_contact = None;
        }
        status
    };
    if without_contacts(previous) != without_contacts(next) {
        return true;
    }
    next.members.iter().any(|member| {
        let recorded = previous.members.iter().find(|p| p.cluster == member.cluster).and_then(|p| p.last_contact);
        match (recorded, member.last_contact) {
            (Some(recorded), Some(seen)) => seen - recorded >= CONTACT_REFRESH,
            (None, Some(_)) => true,
            _ => false,
        }
    })
}

/// Adds why the hub could not reach a member to that member's message.
pub fn explain_unreachable(status: &mut RolloutStatus, errors: &BTreeMap<String, String>) {
    for member in &mut status.members {
        if let Some(error) = errors.get(&member.cluster) {
            member.message =
                if member.message.is_empty() { error.clone() } else { format!("{}: {error}", member.message) };
        }
    }
}

/// The previous status with `Progressing=False` for a reason the hub cannot go on
/// (an invalid spec, no release reported yet). Everything else — wave history,
/// approvals — is kept, so nothing restarts once the reason is gone.
pub fn blocked_status(
    previous: Option<&RolloutStatus>,
    generation: Option<i64>,
    reason: &str,
    message: String,
    now: DateTime<Utc>,
) -> RolloutStatus {
    let mut status = previous.cloned().unwrap_or_default();
    status.observed_generation = generation;
    let last_transition_time = status
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_PROGRESSING && c.status == "False")
        .map_or(now, |c| c.last_transition_time);
    status.conditions.retain(|c| c.type_ != CONDITION_PROGRESSING);
    status.conditions.push(Condition {
        type_: CONDITION_PROGRESSING.to_string(),
        status: "False".to_string(),
        reason: reason.to_string(),
        message,
        last_transition_time,
        observed_generation: generation,
    });
    status
}

/// How soon a Rollout whose spec cannot be rolled out is looked at again (a spec change
/// wakes it sooner).
pub const INVALID_SPEC_REQUEUE: Duration = Duration::from_secs(60);

/// One member as a reconcile read it: everything [`decide_rollout`] needs of it, no client.
#[derive(Clone, Debug)]
pub struct MemberReading {
    pub cluster: Cluster,
    pub read: MemberRead,
    /// When a Canary read from the watch cache was last confirmed by the member; `None`
    /// for a direct read (the member answered now).
    pub contact: Option<DateTime<Utc>>,
    /// Why the hub has no client: a problem with the input (Secret, kubeconfig).
    pub client_problem: Option<InputProblem>,
    /// Whether the member is the cluster its Cluster describes, as the last probe
    /// through the kubeconfig in use found.
    pub identity: IdentityVerdict,
    /// The kube-system UID the member's last probe read (two Clusters reaching one
    /// member share it).
    pub observed_uid: Option<String>,
}

/// Everything one reconcile of a Rollout decides from: what the controller read.
#[derive(Debug)]
pub struct RolloutInput<'a> {
    pub rollout: &'a Rollout,
    /// The spec, parsed once (members are not read when it cannot be).
    pub plan: Result<RolloutPlan, PlanError>,
    /// The selected members, as read now.
    pub members: Vec<MemberReading>,
    pub now: DateTime<Utc>,
}

impl RolloutInput<'_> {
    /// The Canary a member answered with, if it answered with one.
    pub fn canary_of(&self, cluster: &str) -> Option<&Canary> {
        self.members.iter().find(|m| m.cluster.name_any() == cluster).and_then(|m| match &m.read {
            MemberRead::Reached(Some(canary)) => Some(canary.as_ref()),
            _ => None,
        })
    }

    /// The newest phase transition any reached member Canary reports.
    pub fn latest_member_change(&self) -> Option<DateTime<Utc>> {
        self.members
            .iter()
            .filter_map(|m| match &m.read {
                MemberRead::Reached(Some(canary)) => canary.status.as_ref().and_then(|s| s.last_transition_time),
                _ => None,
            })
            .max()
    }
}

/// The hub's annotations to apply on one member Canary (see [`hub_annotations`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnotationWrite {
    pub cluster: String,
    pub namespace: String,
    /// The Canary's name.
    pub name: String,
    pub annotations: BTreeMap<String, String>,
    /// The revision this write approves, when it approves one.
    pub approval: Option<String>,
    /// Whether this write removes an approval the Canary carries (its Canary aborts).
    pub withdraws: bool,
}

/// A Rollout the hub cannot go on with: `reason` on `Progressing=False`.
#[derive(Clone, Debug, PartialEq)]
pub struct Blocked {
    pub reason: &'static str,
    pub message: String,
    /// Every problem with the input, most serious first (the `Valid` condition).
    pub problems: Vec<InputProblem>,
    pub requeue: Duration,
}

/// The writes a Rollout's release needs now, and the status they go with.
#[derive(Clone, Debug, PartialEq)]
pub struct Proceed {
    pub release: String,
    /// Annotation writes, in member order; a member whose Canary already carries the
    /// hub's annotations has none.
    pub annotations: Vec<AnnotationWrite>,
    /// Members to roll back (they answered with their Canary), in decision order.
    pub rollbacks: Vec<String>,
    /// Members to roll back that did not answer: the rollback waits for them.
    pub rollbacks_pending: Vec<String>,
    /// What was observed of each member (for the inventory).
    pub observations: Vec<MemberObservation>,
    /// Every problem with the input, most serious first (the `Valid` condition).
    pub problems: Vec<InputProblem>,
    /// The status before the writes' outcomes are known (no write errors, no
    /// inventory, no `Valid` condition yet).
    pub draft: RolloutStatus,
    /// The Events of the decision itself (release started, waves opened, approvals,
    /// budget breached: [`decision_events`] from the previous status to `draft`), before
    /// those of the writes' outcomes.
    pub events: Vec<HubEvent>,
    pub requeue: Duration,
}

/// What [`decide_rollout`] concluded.
#[derive(Clone, Debug, PartialEq)]
pub enum RolloutDecision {
    Blocked(Blocked),
    Proceed(Box<Proceed>),
}

/// What a rollback of a member did: the release its primary runs now, and what
/// happened for an Event (`None` when the primary already ran it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolledBack {
    pub release: String,
    pub done: Option<String>,
}

/// What the writes a decision planned gave, by member.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WriteOutcomes {
    /// Each attempted annotation write: the error when it failed.
    pub annotations: BTreeMap<String, Result<(), String>>,
    /// Each attempted rollback: what it did, or why it failed.
    pub rollbacks: BTreeMap<String, Result<RolledBack, String>>,
}

/// The status to write and the Events to publish once it is written.
#[derive(Clone, Debug, PartialEq)]
pub struct Recorded {
    pub status: RolloutStatus,
    pub events: Vec<HubEvent>,
    /// When to look again (after a successful write).
    pub requeue: Duration,
}

/// The problems with what the hub was given, most serious first.
pub fn input_problems(rollout: &Rollout, plan: &RolloutPlan, members: &[MemberReading]) -> Vec<InputProblem> {
    let mut problems: Vec<InputProblem> = members.iter().filter_map(|m| m.client_problem.clone()).collect();
    let labels: Vec<(String, &BTreeMap<String, String>)> =
        members.iter().map(|m| (m.cluster.name_any(), m.cluster.labels())).collect();
    problems.extend(overlap_problem(plan, labels.iter().map(|(name, labels)| (name.as_str(), *labels))));
    let memberships = assign_waves(plan, labels.iter().map(|(_, labels)| *labels));
    let unassigned: Vec<String> = labels
        .iter()
        .zip(&memberships)
        .filter(|(_, m)| **m == Membership::Unassigned)
        .map(|((name, _), _)| name.clone())
        .collect();
    problems.extend(unassigned_problem(&unassigned));
    // Only members in a wave need the Canary.
    let in_waves = members.iter().zip(&memberships).filter(|(_, m)| matches!(m, Membership::Wave(_)));
    let mut missing = Vec::new();
    let mut present = 0;
    for (member, _) in in_waves {
        match &member.read {
            MemberRead::Reached(None) => missing.push(member.cluster.name_any()),
            MemberRead::Reached(Some(_)) => present += 1,
            MemberRead::Unreachable(_) => {}
        }
    }
    let canary_ref = &rollout.spec.canary_ref;
    problems.extend(canary_problem(&format!("{}/{}", canary_ref.namespace, canary_ref.name), &missing, present));
    problems.extend(traffic_share_problem(labels.iter().map(|(name, labels)| (name.as_str(), *labels))));
    let observed_uids: Vec<(String, &str)> =
        members.iter().filter_map(|m| Some((m.cluster.name_any(), m.observed_uid.as_deref()?))).collect();
    problems.extend(shared_identity_problem(observed_uids.iter().map(|(name, uid)| (name.as_str(), *uid))));
    sort_problems(&mut problems);
    problems
}

/// Decides one reconcile of a Rollout: whether it is blocked, and otherwise the release,
/// the annotation writes and rollbacks to make, and the status and Events they go with
/// (completed by [`record`] once the writes' outcomes are known). Pure.
pub fn decide_rollout(input: &RolloutInput) -> RolloutDecision {
    let (rollout, now) = (input.rollout, input.now);
    let previous = rollout.status.as_ref();
    let plan = match &input.plan {
        Ok(plan) => plan,
        Err(e) => {
            let message = format!("the spec cannot be rolled out: {e}");
            let problems = vec![InputProblem::new(INVALID_SPEC, message.clone())];
            let requeue = INVALID_SPEC_REQUEUE;
            return RolloutDecision::Blocked(Blocked { reason: INVALID_SPEC, message, problems, requeue });
        }
    };
    let problems = input_problems(rollout, plan, &input.members);
    if let Some(blocking) =
        problems.iter().find(|p| p.reason == CANARY_NOT_FOUND || p.reason == CLUSTERS_SHARE_IDENTITY)
    {
        let (reason, message) = (blocking.reason, blocking.message.clone());
        return RolloutDecision::Blocked(Blocked { reason, message, problems, requeue: SAFETY_REQUEUE });
    }

    let previous_member = |name: &str| previous.and_then(|s| s.members.iter().find(|m| m.cluster == name));
    let mut observations: Vec<MemberObservation> = input
        .members
        .iter()
        .map(|m| {
            let previous = previous_member(&m.cluster.name_any());
            // A cached read is as recent as its last confirmation, never older than
            // a contact already recorded.
            let contact = m.contact.map_or(now, |c| previous.and_then(|p| p.last_contact).map_or(c, |p| c.max(p)));
            observe_member(&m.cluster, &m.read, previous, m.identity.clone(), contact)
        })
        .collect();
    let Some(release) = choose_release(plan, previous, &observations) else {
        let message = "no member of the first wave reports a release yet".to_string();
        return RolloutDecision::Blocked(Blocked {
            reason: NO_RELEASE,
            message,
            problems,
            requeue: requeue_after(None),
        });
    };
    let history = history_for_release(previous, &release);
    with_approvals(&mut observations, &history);
    with_delivered_approvals(&mut observations, &release, now);
    let decision = decide_waves(plan, &release, &history.waves, &observations, now);

    // Annotations: the Rollout marker everywhere, approvals and withdrawals where decided.
    let key = rollout_key(rollout);
    let annotations = input
        .members
        .iter()
        .filter_map(|m| {
            let MemberRead::Reached(Some(canary)) = &m.read else { return None };
            let cluster = m.cluster.name_any();
            let approval = decision.approve.iter().find(|a| a.cluster == cluster).map(|a| a.revision.clone());
            let withdraw = decision.withdraw.contains(&cluster);
            let annotations = hub_annotations(&key, canary.annotations(), approval.as_deref(), withdraw)?;
            Some(AnnotationWrite {
                cluster,
                namespace: canary.namespace().unwrap_or_default(),
                name: canary.name_any(),
                annotations,
                approval,
                withdraws: withdraw && canary.annotations().contains_key(APPROVED_REVISION_ANNOTATION),
            })
        })
        .collect();
    // RollbackAll: best effort, on the members that answered.
    let (mut rollbacks, mut rollbacks_pending) = (Vec::new(), Vec::new());
    for name in &decision.rollback {
        match input.members.iter().find(|m| &m.cluster.name_any() == name).map(|m| &m.read) {
            None => {}
            Some(MemberRead::Reached(Some(_))) => rollbacks.push(name.clone()),
            Some(_) => rollbacks_pending.push(name.clone()),
        }
    }

    let mut draft = build_status(
        plan,
        &release,
        rollout.metadata.generation,
        &observations,
        &decision,
        previous.map_or(&[][..], |s| &s.conditions),
        now,
    );
    let unreachable: BTreeMap<String, String> = input
        .members
        .iter()
        .filter_map(|m| match &m.read {
            MemberRead::Unreachable(why) => Some((m.cluster.name_any(), why.clone())),
            MemberRead::Reached(_) => None,
        })
        .collect();
    explain_unreachable(&mut draft, &unreachable);
    let approved_now: BTreeSet<&str> = decision.approve.iter().map(|a| a.cluster.as_str()).collect();
    with_withdrawals(&mut draft, previous, &approved_now);
    let withdrawn = withdrawn_before(input, plan, &decision, &observations);
    mark_withdrawn(&mut draft, &withdrawn, now);
    let events = decision_events(previous, &draft);
    RolloutDecision::Proceed(Box::new(Proceed {
        release,
        annotations,
        rollbacks,
        rollbacks_pending,
        observations,
        problems,
        draft,
        events,
        requeue: requeue_after(decision.recheck_after),
    }))
}

/// `Progressing` reason of a Rollout no member of whose first wave reports a release.
pub const NO_RELEASE: &str = "NoRelease";

/// Adds the `Valid` condition for `problems` to `status`.
fn with_validity(
    status: &mut RolloutStatus,
    previous: Option<&RolloutStatus>,
    problems: &[InputProblem],
    now: DateTime<Utc>,
) {
    let previous_conditions = previous.map_or(&[][..], |s| &s.conditions);
    let condition = valid_condition(previous_conditions, problems, status.observed_generation, now);
    petrel_api::common::put_condition(&mut status.conditions, condition);
}

/// The status and the Events of a decision once its writes' `outcomes` are known: write
/// errors on the members' messages, rollbacks in the inventory, the `Valid` condition,
/// and the Events of the change from the stored status to this one ([`events_between`]:
/// the decision's, then those of the outcomes, the problems and the transitions). Pure.
pub fn record(input: &RolloutInput, decision: RolloutDecision, outcomes: &WriteOutcomes) -> Recorded {
    let (rollout, now) = (input.rollout, input.now);
    let previous = rollout.status.as_ref();
    let proceed = match decision {
        RolloutDecision::Blocked(blocked) => {
            let mut status =
                blocked_status(previous, rollout.metadata.generation, blocked.reason, blocked.message, now);
            with_validity(&mut status, previous, &blocked.problems, now);
            let notices = Notices { problems: blocked.problems, ..Notices::default() };
            let events = events_between(previous, &status, &notices);
            return Recorded { status, events, requeue: blocked.requeue };
        }
        RolloutDecision::Proceed(proceed) => *proceed,
    };
    let Proceed { release, annotations, rollbacks, rollbacks_pending, observations, problems, draft, events, requeue } =
        proceed;
    let mut notices = Notices { problems, ..Notices::default() };
    let mut write_errors: BTreeMap<String, String> = BTreeMap::new();
    let mut withdrawn_now: BTreeSet<&str> = BTreeSet::new();
    for write in &annotations {
        match outcomes.annotations.get(&write.cluster) {
            Some(Ok(())) if write.withdraws => {
                withdrawn_now.insert(write.cluster.as_str());
            }
            Some(Err(e)) => {
                let message = format!("annotating Canary {}/{}: {e}", write.namespace, write.name);
                write_errors.insert(write.cluster.clone(), message);
            }
            Some(Ok(())) | None => {}
        }
    }
    for name in rollbacks_pending {
        write_errors.insert(name, "rollback pending: the member is unreachable".to_string());
    }
    let mut rolled_back: BTreeMap<String, HubRollback> = BTreeMap::new();
    for name in rollbacks {
        match outcomes.rollbacks.get(&name) {
            Some(Ok(done)) => {
                if let Some(done) = &done.done {
                    notices.rollbacks_done.insert(name.clone(), done.clone());
                }
                rolled_back.insert(name, HubRollback { from: release.clone(), to: done.release.clone() });
            }
            Some(Err(e)) => {
                let message = format!("rollback failed: {e}");
                notices.rollback_failures.insert(name.clone(), message.clone());
                write_errors.insert(name, message);
            }
            None => {}
        }
    }
    let mut status = draft;
    mark_withdrawn(&mut status, &withdrawn_now, now);
    explain_unreachable(&mut status, &write_errors);
    with_inventory(&mut status, previous, &observations, &rolled_back, now);
    with_validity(&mut status, previous, &notices.problems, now);
    // The decision's Events are the same from the draft as from this status: the
    // outcomes change neither waves, approvals nor the release.
    let mut events = events;
    events.extend(events_after_decision(previous, &status, &notices));
    Recorded { status, events, requeue }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeDelta, TimeZone};
    use petrel_api::canary::{CanaryStatus, Phase};
    use petrel_api::cluster::{ClusterSpec, KubeconfigSecretRef};
    use petrel_api::rollout::{RolloutSpec, WaveStatus};
    use serde_json::json;

    const OLD: &str = "podinfo:6.0.0";
    const NEW: &str = "podinfo:6.1.0";

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 3, minute, 0).unwrap()
    }

    fn plan() -> RolloutPlan {
        let spec: RolloutSpec = serde_json::from_value(json!({
            "canaryRef": {"namespace": "test", "name": "podinfo"},
            "waves": [
                {"name": "canary", "clusterSelector": {"matchLabels": {"role": "canary"}}},
                {"name": "rest"},
            ]
        }))
        .unwrap();
        RolloutPlan::from_spec(&spec).unwrap()
    }

    fn cluster(name: &str, role: &str) -> Cluster {
        let mut cluster = Cluster::new(
            name,
            ClusterSpec {
                kubeconfig_secret_ref: KubeconfigSecretRef {
                    name: name.into(),
                    namespace: "petrel-system".into(),
                    key: "kubeconfig".into(),
                },
                display_name: None,
            },
        );
        cluster.metadata.labels = Some([("role".to_string(), role.to_string())].into());
        cluster
    }

    fn canary(phase: Phase, release: &str, revision: &str, promoted: &str) -> Canary {
        let mut canary: Canary = serde_json::from_value(json!({
            "apiVersion": "petrel.dev/v1alpha1",
            "kind": "Canary",
            "metadata": {"name": "podinfo", "namespace": "test"},
            "spec": {"targetRef": {"kind": "Deployment", "name": "podinfo"}, "service": {"port": 9898}}
        }))
        .unwrap();
        canary.status = Some(CanaryStatus {
            phase,
            release: Some(release.into()),
            last_applied_spec: Some(revision.into()),
            last_promoted_spec: Some(promoted.into()),
            canary_weight: 20,
            failed_checks: 1,
            ..CanaryStatus::default()
        });
        canary
    }

    fn member_status(cluster: &str, state: MemberState, phase: Option<Phase>) -> MemberStatus {
        MemberStatus {
            cluster: cluster.into(),
            wave: Some("canary".into()),
            state,
            phase,
            weight: 0,
            failed_checks: 2,
            release: Some(NEW.into()),
            revision: Some("rev-2".into()),
            approved_at: Some(at(1)),
            approval_withdrawn_at: None,
            last_contact: Some(at(2)),
            max_weight: None,
            message: String::new(),
        }
    }

    fn observed(cluster: &str, role: &str, release: &str, transition: u32) -> MemberObservation {
        MemberObservation {
            cluster: cluster.into(),
            labels: [("role".to_string(), role.to_string())].into(),
            reachable: true,
            last_contact: Some(at(0)),
            approved_at: None,
            canary: Some(CanaryObservation {
                phase: Phase::Waiting,
                release: Some(release.into()),
                revision: Some(format!("rev-{release}")),
                last_transition: Some(at(transition)),
                ..CanaryObservation::default()
            }),
            identity: IdentityVerdict::Verified,
        }
    }

    fn status(release: &str, phase: RolloutPhase) -> RolloutStatus {
        RolloutStatus { release: Some(release.into()), phase: Some(phase), ..RolloutStatus::default() }
    }

    #[test]
    fn a_reached_member_is_observed_as_read_now() {
        let read = MemberRead::Reached(Some(Box::new(canary(Phase::Progressing, NEW, "rev-2", "rev-1"))));
        let previous = member_status("eu-1", MemberState::Unreachable, Some(Phase::Waiting));
        let m = observe_member(&cluster("eu-1", "canary"), &read, Some(&previous), IdentityVerdict::Verified, at(9));
        assert!(m.reachable);
        assert_eq!(m.last_contact, Some(at(9)));
        assert_eq!(m.labels.get("role").map(String::as_str), Some("canary"));
        let c = m.canary.unwrap();
        assert_eq!((c.phase, c.weight), (Phase::Progressing, 20));
        assert_eq!(m.approved_at, None, "approvals come from the chosen release's history");

        let m = observe_member(
            &cluster("eu-1", "canary"),
            &MemberRead::Reached(None),
            Some(&previous),
            IdentityVerdict::Verified,
            at(9),
        );
        assert!(m.reachable && m.canary.is_none());
    }

    #[test]
    fn an_unreachable_member_keeps_what_it_last_reported() {
        let read = MemberRead::Unreachable("no answer".into());
        let promoted = member_status("eu-1", MemberState::Succeeded, Some(Phase::Succeeded));
        let m = observe_member(&cluster("eu-1", "canary"), &read, Some(&promoted), IdentityVerdict::Verified, at(9));
        assert!(!m.reachable);
        assert_eq!(m.last_contact, Some(at(2)));
        assert!(m.canary.as_ref().unwrap().reports_promoted(NEW), "a promotion seen before still counts");

        let progressing = member_status("eu-1", MemberState::Progressing, Some(Phase::Progressing));
        let m = observe_member(&cluster("eu-1", "canary"), &read, Some(&progressing), IdentityVerdict::Verified, at(9));
        let c = m.canary.unwrap();
        assert!(!c.reports_promoted(NEW));
        assert_eq!((c.phase, c.failed_checks, c.revision.as_deref()), (Phase::Progressing, 2, Some("rev-2")));

        let m = observe_member(&cluster("eu-1", "canary"), &read, None, IdentityVerdict::Verified, at(9));
        assert_eq!((m.last_contact, m.canary), (None, None), "never contacted: nothing is known");
    }

    #[test]
    fn a_member_without_a_recorded_phase_has_no_last_seen_canary() {
        assert_eq!(last_seen_canary(&member_status("eu-1", MemberState::Unreachable, None)), None);
    }

    #[test]
    fn approvals_come_from_the_history() {
        let mut members = vec![observed("a", "canary", NEW, 0), observed("b", "rest", NEW, 0)];
        let history = ReleaseHistory { waves: vec![], approvals: [("b".to_string(), at(5))].into() };
        with_approvals(&mut members, &history);
        assert_eq!((members[0].approved_at, members[1].approved_at), (None, Some(at(5))));
    }

    const IN_FLIGHT: [RolloutPhase; 4] =
        [RolloutPhase::Progressing, RolloutPhase::Soaking, RolloutPhase::WaitingApproval, RolloutPhase::Paused];

    /// A Rollout status of `release` in `phase` whose canary wave opened at minute `opened`.
    fn opened(release: &str, phase: RolloutPhase, opened: u32) -> RolloutStatus {
        let wave = WaveStatus { opened_at: Some(at(opened)), ..WaveStatus::pending("canary") };
        RolloutStatus { waves: vec![wave, WaveStatus::pending("rest")], ..status(release, phase) }
    }

    fn with_phase(mut member: MemberObservation, phase: Phase) -> MemberObservation {
        if let Some(canary) = member.canary.as_mut() {
            canary.phase = phase;
        }
        member
    }

    #[test]
    fn a_new_release_at_the_first_waves_gate_restarts_a_run_in_flight() {
        let members = vec![
            with_phase(observed("a", "canary", OLD, 3), Phase::Progressing),
            observed("b", "canary", NEW, 5),
            observed("c", "rest", OLD, 1),
        ];
        for phase in IN_FLIGHT {
            let status = opened(OLD, phase, 2);
            assert_eq!(choose_release(&plan(), Some(&status), &members).as_deref(), Some(NEW), "{phase:?}");
        }
        // Before any wave opened there is no run to protect either.
        for phase in IN_FLIGHT {
            assert_eq!(choose_release(&plan(), Some(&status(OLD, phase)), &members).as_deref(), Some(NEW), "{phase:?}");
        }
    }

    #[test]
    fn a_first_wave_member_still_at_an_older_release_does_not_interrupt_the_run() {
        // "a" has waited at the gate for OLD since before the run of NEW began (minute 4);
        // "b" never synced NEW and still reports OLD promoted, with a newer transition.
        let members = vec![
            observed("a", "canary", OLD, 1),
            with_phase(observed("b", "canary", OLD, 9), Phase::Succeeded),
            with_phase(observed("c", "canary", NEW, 6), Phase::Progressing),
        ];
        for phase in IN_FLIGHT {
            let status = opened(NEW, phase, 4);
            assert_eq!(choose_release(&plan(), Some(&status), &members).as_deref(), Some(NEW), "{phase:?}");
        }
    }

    #[test]
    fn a_new_release_in_a_later_wave_never_restarts_the_run() {
        let members = vec![
            with_phase(observed("a", "canary", OLD, 3), Phase::Succeeded),
            observed("c", "rest", "podinfo:9.9.9", 30),
        ];
        let status = opened(OLD, RolloutPhase::Progressing, 2);
        assert_eq!(choose_release(&plan(), Some(&status), &members).as_deref(), Some(OLD));
    }

    #[test]
    fn after_a_release_finished_the_newest_one_of_the_first_wave_starts() {
        let members = vec![observed("a", "canary", NEW, 5)];
        for phase in [RolloutPhase::Succeeded, RolloutPhase::Failed] {
            let status = opened(OLD, phase, 2);
            assert_eq!(choose_release(&plan(), Some(&status), &members).as_deref(), Some(NEW), "{phase:?}");
        }
    }

    mod choose_release_props {
        use super::*;
        use proptest::prelude::*;

        const RELEASES: [&str; 3] = ["podinfo:1", "podinfo:2", "podinfo:3"];
        const PHASES: [Phase; 4] = [Phase::Waiting, Phase::Progressing, Phase::Succeeded, Phase::Failed];

        fn member() -> impl Strategy<Value = MemberObservation> {
            (any::<bool>(), 0..3usize, 0..4usize, 0..20u32, any::<bool>()).prop_map(
                |(canary_role, release, phase, transition, has_canary)| {
                    let role = if canary_role { "canary" } else { "worker" };
                    let mut m = with_phase(observed("m", role, RELEASES[release], transition), PHASES[phase]);
                    if !has_canary {
                        m.canary = None;
                    }
                    m
                },
            )
        }

        fn previous() -> impl Strategy<Value = Option<RolloutStatus>> {
            proptest::option::of((0..3usize, 0..6usize, proptest::option::of(0..20u32))).prop_map(|p| {
                p.map(|(release, phase, opened_at)| match opened_at {
                    Some(minute) => opened(RELEASES[release], RolloutPhase::ALL[phase], minute),
                    None => status(RELEASES[release], RolloutPhase::ALL[phase]),
                })
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

            /// The release is the previous one or one a first-wave member reports; a run
            /// in flight only ever gives way to a release a first-wave member is held at
            /// the gate for, since that run began.
            #[test]
            fn a_release_changes_only_for_what_the_first_wave_reports(
                members in proptest::collection::vec(member(), 0..6),
                previous in previous(),
            ) {
                let members: Vec<MemberObservation> = members
                    .into_iter()
                    .enumerate()
                    .map(|(i, m)| MemberObservation { cluster: format!("m{i}"), ..m })
                    .collect();
                let first_wave_role = if members.iter().any(|m| m.labels["role"] == "canary") { "canary" } else { "worker" };
                let first_wave: Vec<&CanaryObservation> = members
                    .iter()
                    .filter(|m| m.labels["role"] == first_wave_role)
                    .filter_map(|m| m.canary.as_ref())
                    .collect();
                let previous_release = previous.as_ref().and_then(|p| p.release.clone());
                let chosen = choose_release(&plan(), previous.as_ref(), &members);

                match &chosen {
                    None => prop_assert!(previous_release.is_none() && first_wave.is_empty()),
                    Some(release) => prop_assert!(
                        previous_release.as_ref() == Some(release)
                            || first_wave.iter().any(|c| c.release.as_ref() == Some(release)),
                        "{release} comes from nowhere"
                    ),
                }
                if let Some(status) = previous.as_ref().filter(|s| in_flight(s))
                    && chosen != previous_release
                {
                    let began = status.waves.iter().filter_map(|w| w.opened_at).min();
                    let held = first_wave.iter().any(|c| {
                        c.phase == Phase::Waiting
                            && c.release == chosen
                            && began.is_none_or(|b| c.last_transition.is_some_and(|t| t > b))
                    });
                    prop_assert!(held, "the run of {previous_release:?} gave way to {chosen:?} with no member held for it");
                }
            }
        }
    }

    #[test]
    fn the_newest_release_of_the_first_wave_is_chosen() {
        let members = vec![
            observed("a", "canary", OLD, 1),
            observed("b", "canary", NEW, 7),
            observed("c", "canary", OLD, 3),
            // Later waves never choose the release, however new.
            observed("d", "worker", "podinfo:9.9.9", 30),
        ];
        assert_eq!(choose_release(&plan(), None, &members).as_deref(), Some(NEW));
        // With no canary-role member the first wave with members ("rest") decides.
        let members = vec![observed("d", "worker", OLD, 1), observed("e", "worker", NEW, 2)];
        assert_eq!(choose_release(&plan(), None, &members).as_deref(), Some(NEW));
    }

    #[test]
    fn without_any_reported_release_the_previous_one_stays() {
        let mut silent = observed("a", "canary", NEW, 0);
        silent.canary = None;
        let members = vec![silent];
        assert_eq!(choose_release(&plan(), None, &members), None);
        let done = status(OLD, RolloutPhase::Succeeded);
        assert_eq!(choose_release(&plan(), Some(&done), &members).as_deref(), Some(OLD));
    }

    fn annotations(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
        entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_rollout_marker_is_added_and_other_annotations_are_left_out() {
        let current = annotations(&[("team", "web")]);
        let desired = hub_annotations("fleet/podinfo", &current, None, false).unwrap();
        assert_eq!(desired, annotations(&[(FLEET_ROLLOUT_ANNOTATION, "fleet/podinfo")]));
    }

    #[test]
    fn an_approval_is_written_with_the_marker_and_kept_afterwards() {
        let marked = annotations(&[(FLEET_ROLLOUT_ANNOTATION, "fleet/podinfo")]);
        let desired = hub_annotations("fleet/podinfo", &marked, Some("rev-2"), false).unwrap();
        let approved =
            annotations(&[(FLEET_ROLLOUT_ANNOTATION, "fleet/podinfo"), (APPROVED_REVISION_ANNOTATION, "rev-2")]);
        assert_eq!(desired, approved);
        assert_eq!(hub_annotations("fleet/podinfo", &approved, None, false), None, "nothing to change");
        assert_eq!(hub_annotations("fleet/podinfo", &approved, Some("rev-2"), false), None, "already approved");
        let next = hub_annotations("fleet/podinfo", &approved, Some("rev-3"), false).unwrap();
        assert_eq!(next.get(APPROVED_REVISION_ANNOTATION).map(String::as_str), Some("rev-3"));
    }

    #[test]
    fn a_withdrawn_approval_is_left_out_of_the_apply() {
        let approved =
            annotations(&[(FLEET_ROLLOUT_ANNOTATION, "fleet/podinfo"), (APPROVED_REVISION_ANNOTATION, "rev-2")]);
        let desired = hub_annotations("fleet/podinfo", &approved, None, true).unwrap();
        assert_eq!(desired, annotations(&[(FLEET_ROLLOUT_ANNOTATION, "fleet/podinfo")]));
        let marked = annotations(&[(FLEET_ROLLOUT_ANNOTATION, "fleet/podinfo")]);
        assert_eq!(hub_annotations("fleet/podinfo", &marked, None, true), None);
    }

    #[test]
    fn the_annotation_patch_carries_no_spec() {
        let patch = annotation_patch("test", "podinfo", &annotations(&[(FLEET_ROLLOUT_ANNOTATION, "fleet/podinfo")]));
        assert_eq!(patch["kind"], "Canary");
        assert_eq!(patch["metadata"]["namespace"], "test");
        assert_eq!(patch["metadata"]["annotations"][FLEET_ROLLOUT_ANNOTATION], "fleet/podinfo");
        assert_eq!(patch.as_object().unwrap().keys().collect::<Vec<_>>(), ["apiVersion", "kind", "metadata"]);
    }

    fn wave(name: &str, phase: WavePhase, opened: Option<u32>) -> WaveStatus {
        WaveStatus { phase, opened_at: opened.map(at), members: 2, failed: 1, ..WaveStatus::pending(name) }
    }

    /// A status of release NEW with these waves and these members approved (at minute).
    fn recorded(waves: Vec<WaveStatus>, approvals: &[(&str, u32)]) -> RolloutStatus {
        let members = approvals
            .iter()
            .map(|(cluster, minute)| MemberStatus {
                approved_at: Some(at(*minute)),
                ..member_status(cluster, MemberState::Approved, Some(Phase::Waiting))
            })
            .collect();
        RolloutStatus { waves, members, ..status(NEW, RolloutPhase::Progressing) }
    }

    /// `status` with `cluster` approved at `revision`: an approval it records already
    /// keeps its time (the annotation is being sent again).
    fn approve(status: &mut RolloutStatus, cluster: &str, revision: &str) {
        match status.members.iter_mut().find(|m| m.cluster == cluster) {
            Some(member) => member.revision = Some(revision.into()),
            None => status.members.push(MemberStatus {
                revision: Some(revision.into()),
                approved_at: Some(at(9)),
                ..member_status(cluster, MemberState::Pending, Some(Phase::Waiting))
            }),
        }
    }

    #[test]
    fn events_report_what_changed_now() {
        let history = recorded(vec![wave("canary", WavePhase::Progressing, Some(1))], &[]);
        let mut d = recorded(
            vec![wave("canary", WavePhase::Progressing, Some(1)), wave("rest", WavePhase::Progressing, Some(4))],
            &[],
        );
        approve(&mut d, "eu-1", "rev-2");
        let events = decision_events(Some(&history), &d);
        let reasons: Vec<_> = events.iter().map(|e| e.reason).collect();
        assert_eq!(reasons, ["WaveOpened", "MemberApproved"]);
        assert_eq!(events[0].message, format!("wave rest opened for release {NEW} (2 clusters)"));
        assert!(events[1].message.contains("rev-2") && events[1].message.contains("eu-1"));
    }

    #[test]
    fn a_breached_budget_is_reported_once() {
        let d = recorded(vec![wave("canary", WavePhase::Failed, Some(1))], &[]);
        let open = recorded(vec![wave("canary", WavePhase::Progressing, Some(1))], &[]);
        let events = decision_events(Some(&open), &d);
        assert_eq!(events.len(), 1);
        assert!(events[0].warning && events[0].reason == "WaveFailed", "{events:?}");
        let failed = recorded(vec![wave("canary", WavePhase::Failed, Some(1))], &[]);
        assert_eq!(decision_events(Some(&failed), &d), vec![]);
    }

    #[test]
    fn an_approval_sent_again_is_not_announced_again() {
        let history = recorded(vec![], &[("eu-1", 1)]);
        let mut d = history.clone();
        approve(&mut d, "eu-1", "rev-2");
        approve(&mut d, "eu-2", "rev-2");
        let events = decision_events(Some(&history), &d);
        assert_eq!(events.len(), 1);
        assert!(events[0].message.contains("eu-2"), "{events:?}");
    }

    #[test]
    fn a_status_of_another_release_or_none_announces_the_release_and_all_it_records() {
        let mut next = recorded(vec![wave("canary", WavePhase::Progressing, Some(1))], &[("eu-1", 1)]);
        next.members[0].revision = Some("rev-2".into());
        let reasons = |old: Option<&RolloutStatus>| -> Vec<&str> {
            decision_events(old, &next).iter().map(|e| e.reason).collect()
        };
        assert_eq!(reasons(None), ["ReleaseStarted", "WaveOpened", "MemberApproved"]);
        let old = RolloutStatus { release: Some(OLD.into()), ..next.clone() };
        assert_eq!(reasons(Some(&old)), ["ReleaseStarted", "WaveOpened", "MemberApproved"]);
        assert_eq!(reasons(Some(&next)), Vec::<&str>::new(), "nothing changed");
        assert_eq!(decision_events(Some(&next), &RolloutStatus::default()), vec![], "no release, no Event");
    }

    /// Issue 16: an approval a member holds for the revision it releases, which the
    /// status does not record (its write was refused after the annotation went out), is
    /// recorded now; one for another revision, of another release, or on a member not
    /// verified is not.
    #[test]
    fn a_delivered_approval_the_history_lacks_is_recorded_now() {
        let held = |revision: &str, release: &str| {
            let mut m = observed("a", "canary", release, 0);
            m.canary.as_mut().unwrap().approved_revision = Some(revision.into());
            m
        };
        let mut members = vec![
            held(&format!("rev-{NEW}"), NEW),
            held("rev-other", NEW),
            held(&format!("rev-{OLD}"), OLD),
            MemberObservation {
                identity: IdentityVerdict::Unverified("no probe".into()),
                ..held(&format!("rev-{NEW}"), NEW)
            },
            MemberObservation { approved_at: Some(at(1)), ..held(&format!("rev-{NEW}"), NEW) },
        ];
        with_delivered_approvals(&mut members, NEW, at(7));
        let approved: Vec<_> = members.iter().map(|m| m.approved_at).collect();
        assert_eq!(approved, [Some(at(7)), None, None, None, Some(at(1))]);
    }

    /// A breached budget with `onFailure: RollbackAll` over a wave where eu-1 progresses
    /// (approved at minute 1, its Canary carrying the approval) and eu-2 failed: what a
    /// reconcile at `minute` reads when eu-1's Canary is in `phase`, with the hub's
    /// approval or without it, the stored status being `stored`.
    fn withdrawing(minute: u32, phase: Phase, approval: bool, stored: RolloutStatus) -> (Rollout, Vec<MemberReading>) {
        let mut rollout: Rollout = serde_json::from_value(json!({
            "apiVersion": "petrel.dev/v1alpha1", "kind": "Rollout",
            "metadata": {"name": "podinfo", "namespace": "fleet", "generation": 1},
            "spec": {
                "canaryRef": {"namespace": "test", "name": "podinfo"},
                "waves": [{"name": "prod", "maxFailures": 0}],
                "onFailure": "RollbackAll"
            }
        }))
        .unwrap();
        rollout.status = Some(stored);
        let mut progressing = canary(phase, NEW, "rev-2", "rev-1");
        let mut annotations = annotations(&[(FLEET_ROLLOUT_ANNOTATION, "fleet/podinfo")]);
        if approval {
            annotations.insert(APPROVED_REVISION_ANNOTATION.into(), "rev-2".into());
        }
        progressing.metadata.annotations = Some(annotations.clone());
        let mut failed = canary(Phase::Failed, NEW, "rev-2", "rev-1");
        annotations.insert(APPROVED_REVISION_ANNOTATION.into(), "rev-2".into());
        failed.metadata.annotations = Some(annotations);
        let reading = |name: &str, canary: Canary| MemberReading {
            cluster: cluster(name, "prod"),
            read: MemberRead::Reached(Some(Box::new(canary))),
            contact: Some(at(minute)),
            client_problem: None,
            identity: IdentityVerdict::Verified,
            observed_uid: Some(format!("uid-{name}")),
        };
        (rollout, vec![reading("eu-1", progressing), reading("eu-2", failed)])
    }

    /// Issue 16: an approval withdrawn by a reconcile whose status write is refused (409)
    /// is recorded (`approvalWithdrawnAt`) and announced by the retry, which finds it
    /// gone from the member, even when the member's Canary failed in between; once
    /// recorded it is not announced again, and it is kept.
    #[test]
    fn an_approval_withdrawn_before_a_refused_status_is_announced_once_by_the_retry() {
        let mut stored = status(NEW, RolloutPhase::Progressing);
        stored.waves = vec![WaveStatus { opened_at: Some(at(0)), ..WaveStatus::pending("prod") }];
        stored.members = ["eu-1", "eu-2"]
            .map(|name| MemberStatus {
                wave: Some("prod".into()),
                ..member_status(name, MemberState::Progressing, Some(Phase::Progressing))
            })
            .to_vec();
        let reconcile = |minute: u32, phase: Phase, approval: bool, stored: &RolloutStatus| {
            let (rollout, members) = withdrawing(minute, phase, approval, stored.clone());
            let input = RolloutInput {
                plan: RolloutPlan::from_spec(&rollout.spec),
                rollout: &rollout,
                members,
                now: at(minute),
            };
            let decision = decide_rollout(&input);
            let RolloutDecision::Proceed(planned) = &decision else { panic!("blocked: {decision:?}") };
            let outcomes = WriteOutcomes {
                annotations: planned.annotations.iter().map(|w| (w.cluster.clone(), Ok(()))).collect(),
                ..WriteOutcomes::default()
            };
            let withdraws: Vec<&str> =
                planned.annotations.iter().filter(|w| w.withdraws).map(|w| w.cluster.as_str()).collect();
            let withdraws = withdraws.join(",");
            (record(&input, decision, &outcomes), withdraws)
        };
        let withdrawn = |recorded: &Recorded| {
            let member = recorded.status.members.iter().find(|m| m.cluster == "eu-1").unwrap();
            let events = recorded.events.iter().filter(|e| e.reason == "ApprovalWithdrawn").count();
            (member.approval_withdrawn_at, events)
        };

        // The withdrawal is written; its status (and Event) would go with it, but is refused.
        let (refused, withdraws) = reconcile(10, Phase::Progressing, true, &stored);
        assert_eq!(withdraws, "eu-1");
        assert_eq!(withdrawn(&refused), (Some(at(10)), 1));

        // The retry finds the approval gone, whether eu-1 still progresses, went back to its
        // gate, failed or even promoted since.
        for phase in [Phase::Progressing, Phase::Waiting, Phase::Failed, Phase::Succeeded] {
            let (retry, withdraws) = reconcile(11, phase, false, &stored);
            assert_eq!(withdraws, "", "nothing left to withdraw");
            assert_eq!(withdrawn(&retry), (Some(at(11)), 1), "{phase}: recorded and announced by the retry");
            let message = &retry.events.iter().find(|e| e.reason == "ApprovalWithdrawn").unwrap().message;
            assert!(message.contains("cluster eu-1 (release podinfo:6.1.0)"), "{message}");

            // Written: announced once, kept.
            let (after, _) = reconcile(12, phase, false, &retry.status);
            assert_eq!(withdrawn(&after), (Some(at(11)), 0), "{phase}: announced once");
        }

        // Without a withdrawal, nothing is recorded: eu-2 failed with its approval in place.
        let eu2 = refused.status.members.iter().find(|m| m.cluster == "eu-2").unwrap();
        assert_eq!(eu2.approval_withdrawn_at, None);
    }

    /// `approvalWithdrawnAt` belongs to the release it was recorded for, and to the
    /// approval it withdrew: a new release, or a new approval, starts without it.
    #[test]
    fn a_withdrawal_is_kept_for_its_release_until_the_member_is_approved_again() {
        let mut previous = recorded(vec![], &[("eu-1", 1), ("eu-2", 1)]);
        for member in &mut previous.members {
            member.approval_withdrawn_at = Some(at(5));
        }
        let mut next = recorded(vec![], &[("eu-1", 1), ("eu-2", 1)]);
        with_withdrawals(&mut next, Some(&previous), &BTreeSet::from(["eu-2"]));
        let kept: Vec<_> = next.members.iter().map(|m| m.approval_withdrawn_at).collect();
        assert_eq!(kept, [Some(at(5)), None]);

        let mut other = RolloutStatus { release: Some(OLD.into()), ..next.clone() };
        with_withdrawals(&mut other, Some(&previous), &BTreeSet::new());
        assert!(other.members.iter().all(|m| m.approval_withdrawn_at.is_none()), "another release");

        mark_withdrawn(&mut next, &BTreeSet::from(["eu-1", "eu-2"]), at(9));
        let marked: Vec<_> = next.members.iter().map(|m| m.approval_withdrawn_at).collect();
        assert_eq!(marked, [Some(at(5)), Some(at(9))], "the first withdrawal time stays");
    }

    #[test]
    fn a_rollback_is_announced_when_the_inventory_records_it_and_a_failure_once() {
        let before = recorded(vec![], &[]);
        let mut after = before.clone();
        after.inventory = vec![petrel_api::rollout::MemberInventory {
            cluster: "eu-1".into(),
            release: Some(OLD.into()),
            rolled_back_from: Some(NEW.into()),
            ..Default::default()
        }];
        after.members = vec![MemberStatus {
            message: "promoted: rollback failed: no template".into(),
            ..member_status("eu-2", MemberState::Succeeded, Some(Phase::Succeeded))
        }];
        let failures: BTreeMap<String, String> =
            [("eu-2".to_string(), "rollback failed: no template".to_string())].into();
        let notices = Notices { rollback_failures: failures, ..Notices::default() };
        let events = events_after_decision(Some(&before), &after, &notices);
        let said: Vec<_> = events.iter().map(|e| (e.reason, e.message.as_str())).collect();
        assert_eq!(
            said[..2],
            [
                ("MemberRolledBack", format!("cluster eu-1: rolled back from release {NEW} to {OLD}").as_str()),
                ("RollbackFailed", "cluster eu-2: rollback failed: no template"),
            ]
        );
        // The rollback made now words it; once recorded, neither is said again.
        let done = Notices {
            rollbacks_done: [("eu-1".to_string(), "rolled test/podinfo-primary back".to_string())].into(),
            ..notices.clone()
        };
        assert_eq!(
            events_after_decision(Some(&before), &after, &done)[0].message,
            "cluster eu-1: rolled test/podinfo-primary back"
        );
        let again = events_after_decision(Some(&after), &after, &notices);
        assert!(again.iter().all(|e| e.reason != "MemberRolledBack" && e.reason != "RollbackFailed"), "{again:?}");
        // A primary rolled back now is said even when the inventory had it rolled back
        // from that release already (the release was retried and taken back again).
        let twice =
            events_after_decision(Some(&after), &after, &Notices { rollback_failures: BTreeMap::new(), ..done });
        assert_eq!(twice.iter().map(|e| e.reason).collect::<Vec<_>>(), ["MemberRolledBack"]);
    }

    #[test]
    fn requeues_are_bounded_by_the_safety_requeue() {
        assert_eq!(requeue_after(None), SAFETY_REQUEUE);
        assert_eq!(requeue_after(Some(Duration::from_secs(3))), Duration::from_secs(3));
        assert_eq!(requeue_after(Some(Duration::from_secs(3600))), SAFETY_REQUEUE);
        assert_eq!(requeue_after(Some(Duration::ZERO)), Duration::from_secs(1));
    }

    #[test]
    fn unreachable_reasons_are_added_to_member_messages() {
        let mut s = RolloutStatus {
            members: vec![
                MemberStatus {
                    message: "unreachable since x".into(),
                    ..member_status("a", MemberState::Unreachable, None)
                },
                MemberStatus { message: String::new(), ..member_status("b", MemberState::Unreachable, None) },
                member_status("c", MemberState::Succeeded, None),
            ],
            ..RolloutStatus::default()
        };
        let errors: BTreeMap<String, String> =
            [("a".to_string(), "Secret missing".to_string()), ("b".to_string(), "timeout".to_string())].into();
        explain_unreachable(&mut s, &errors);
        let messages: Vec<_> = s.members.iter().map(|m| m.message.as_str()).collect();
        assert_eq!(messages, ["unreachable since x: Secret missing", "timeout", ""]);
    }

    #[test]
    fn a_blocked_rollout_keeps_its_history() {
        let mut previous = status(OLD, RolloutPhase::Progressing);
        previous.waves = vec![wave("canary", WavePhase::Progressing, Some(1))];
        let s = blocked_status(Some(&previous), Some(3), "InvalidSpec", "bad soak".into(), at(5));
        assert_eq!((s.release.as_deref(), s.waves.len(), s.observed_generation), (Some(OLD), 1, Some(3)));
        let progressing: Vec<_> = s.conditions.iter().filter(|c| c.type_ == CONDITION_PROGRESSING).collect();
        assert_eq!(progressing.len(), 1);
        assert_eq!((progressing[0].status.as_str(), progressing[0].reason.as_str()), ("False", "InvalidSpec"));
        assert_eq!(progressing[0].last_transition_time, at(5));
        // Still blocked later: the transition time does not move.
        let again = blocked_status(Some(&s), Some(3), "InvalidSpec", "bad soak".into(), at(9));
        assert_eq!(again.conditions.len(), 1);
        assert_eq!(again.conditions[0].last_transition_time, at(5));
    }

    #[test]
    fn contact_times_alone_are_written_only_when_stale() {
        let mut previous = status(NEW, RolloutPhase::Progressing);
        previous.members = vec![member_status("a", MemberState::Progressing, Some(Phase::Progressing))];
        assert!(status_worth_writing(None, &previous));
        assert!(!status_worth_writing(Some(&previous), &previous));
        let mut next = previous.clone();
        next.members[0].last_contact = Some(at(2) + TimeDelta::seconds(59));
        assert!(!status_worth_writing(Some(&previous), &next), "a fresh contact alone is not worth a write");
        next.members[0].last_contact = Some(at(3));
        assert!(status_worth_writing(Some(&previous), &next), "a minute-old contact is refreshed");
        let mut changed = previous.clone();
        changed.members[0].weight = 40;
        assert!(status_worth_writing(Some(&previous), &changed));
        let mut first_contact = previous.clone();
        previous.members[0].last_contact = None;
        first_contact.members[0].last_contact = Some(at(2));
        assert!(status_worth_writing(Some(&previous), &first_contact));
    }

    #[test]
    fn the_rollout_key_is_namespace_slash_name() {
        let rollout: Rollout = serde_json::from_value(json!({
            "apiVersion": "petrel.dev/v1alpha1",
            "kind": "Rollout",
            "metadata": {"name": "podinfo", "namespace": "fleet"},
            "spec": {"canaryRef": {"namespace": "test", "name": "podinfo"}, "waves": [{"name": "all"}]}
        }))
        .unwrap();
        assert_eq!(rollout_key(&rollout), "fleet/podinfo");
    }
}
