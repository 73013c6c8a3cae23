//! The wave decision: which members get the release now.
//!
//! [`decide_waves`] is a pure function of (plan, release, wave history, member
//! observations, now), modelled on Open Cluster Management's `GetRolloutCluster` but
//! with petrel's rules:
//! - a member belongs to the first wave that selects it; one no wave selects is
//!   reported as unassigned;
//! - a wave opens only when every earlier wave succeeded and soaked (`soak` measured
//!   from when the wave succeeded), and, for `Manual` waves, once `approvedAt` is set;
//! - within an open wave at most `maxConcurrency` members are in flight (approved or
//!   progressing, not finished); members are approved in name order;
//! - failed, timed-out, and unreachable-past-deadline members count against
//!   `maxFailures`; a breached budget fails the wave for good (until a person retries),
//!   approves nothing more and, with `RollbackAll`, lists every member that promoted the
//!   release for rollback;
//! - a member is done only when its Canary reports this release promoted (phase
//!   Succeeded — or Initialized, its first deployment — with the promoted revision equal
//!   to its current revision); stale or other-release status never counts, and a
//!   member at another release is shown as `OtherRelease`, never approved;
//! - an unreachable member is its own state and counts as failed once
//!   `progressDeadline` has passed since its last contact (or since its wave opened,
//!   or its own deadline from its approval, whichever comes first); what it reported
//!   before dropping off (promoted, failed) still stands;
//! - a member that does not finish within `progressDeadline` of its approval, or never
//!   reports the release within it after its wave opened, times out (counts as failed);
//! - a member whose identity does not match its `Cluster` (see [`super::identity`]) is
//!   `IdentityMismatch`: never approved, and counted against `maxFailures` in an open
//!   wave; one whose identity is not verified yet is never approved either, and times
//!   out like a member that never reports the release;
//! - `paused` approves nothing and opens no wave; observation and the status go on.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use kube_core::ResourceExt;

use super::APPROVED_REVISION_ANNOTATION;
use super::identity::IdentityVerdict;
use super::plan::{ClusterName, Membership, RolloutPlan, WavePlan, assign_waves};
use super::status::ReleaseHistory;
use petrel_api::canary::Phase;
use petrel_api::rollout::{Approval, FailurePolicy, MemberState, RolloutPhase, WavePhase, WaveStatus};
use petrel_api::{Canary, Cluster};

/// What the hub knows of one member cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberObservation {
    /// Name of the `Cluster` object.
    pub cluster: ClusterName,
    /// Labels of the `Cluster` object: what waves select.
    pub labels: BTreeMap<String, String>,
    /// Whether the hub reached the member at its last attempt.
    pub reachable: bool,
    /// When the hub last reached the member.
    pub last_contact: Option<DateTime<Utc>>,
    /// When the hub approved this member for the current release (from the Rollout's
    /// status; see [`super::history_for_release`]).
    pub approved_at: Option<DateTime<Utc>>,
    /// The member's Canary as last read (`None` when it does not exist there). When the
    /// member is unreachable this is the last observation made while it was reachable.
    pub canary: Option<CanaryObservation>,
    /// Whether the member is the cluster its `Cluster` object describes (see
    /// [`super::identity`]): only a verified member is ever approved.
    pub identity: IdentityVerdict,
}

impl MemberObservation {
    /// What the hub knows of a member from its `Cluster` object, its Canary (`None`
    /// when the Canary is missing there; the last one read while reachable otherwise)
    /// and the Rollout's recorded history for the current release.
    pub fn from_objects(
        cluster: &Cluster,
        canary: Option<&Canary>,
        history: &ReleaseHistory,
        identity: IdentityVerdict,
    ) -> Self {
        let name = cluster.name_any();
        let status = cluster.status.as_ref();
        Self {
            approved_at: history.approvals.get(&name).copied(),
            cluster: name,
            labels: cluster.labels().clone(),
            reachable: status.is_some_and(|s| s.is_reachable()),
            last_contact: status.and_then(|s| s.last_contact_time),
            canary: canary.map(CanaryObservation::from_canary),
            identity,
        }
    }
}

/// The parts of a member's Canary the hub decides on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CanaryObservation {
    pub phase: Phase,
    /// Release identity (the target's images) the Canary is releasing.
    pub release: Option<String>,
    /// The Canary's own revision being released (`lastAppliedSpec`).
    pub revision: Option<String>,
    /// The revision the primary runs (`lastPromotedSpec`).
    pub promoted_revision: Option<String>,
    /// The revision the hub approved on this Canary (its approval annotation).
    pub approved_revision: Option<String>,
    pub failed_checks: i32,
    pub weight: i32,
    pub last_transition: Option<DateTime<Utc>>,
    /// The release the member's primary serves (`promotedRelease`).
    pub promoted_release: Option<String>,
    /// The highest weight the Canary's analysis sends to a release (see
    /// [`super::traffic::worst_case_weight`]); `None` for a provider petrel does not know.
    pub max_weight: Option<i32>,
}

impl CanaryObservation {
    /// Reads a member's Canary as the hub sees it.
    pub fn from_canary(canary: &Canary) -> Self {
        let status = canary.status.clone().unwrap_or_default();
        // A Waiting Canary has not started its new revision: `lastAppliedSpec` and
        // `release` still name the previous run, the waiting fields the one to approve.
        let waiting = status.phase == Phase::Waiting && status.waiting_revision.is_some();
        let (release, revision) = if waiting {
            (status.waiting_release.or(status.release), status.waiting_revision)
        } else {
            (status.release, status.last_applied_spec)
        };
        Self {
            phase: status.phase,
            release,
            revision,
            promoted_revision: status.last_promoted_spec,
            approved_revision: canary.annotations().get(APPROVED_REVISION_ANNOTATION).cloned(),
            failed_checks: status.failed_checks,
            weight: status.canary_weight,
            last_transition: status.last_transition_time,
            promoted_release: status.promoted_release,
            max_weight: super::traffic::worst_case_weight(&canary.spec).map(i32::from),
        }
    }

    pub(crate) fn is_at(&self, release: &str) -> bool {
        self.release.as_deref() == Some(release)
    }

    /// True only when this Canary reports `release` promoted: its release is the one
    /// rolled out, its primary runs its current revision, and it finished. A Canary
    /// `Initialized` at that revision (its first deployment, where the target simply
    /// becomes the primary) counts as well.
    pub fn reports_promoted(&self, release: &str) -> bool {
        self.is_at(release)
            && matches!(self.phase, Phase::Succeeded | Phase::Initialized)
            && self.revision.is_some()
            && self.promoted_revision == self.revision
    }

    pub(crate) fn approval_delivered(&self) -> bool {
        self.approved_revision.is_some() && self.approved_revision == self.revision
    }
}

/// An approval to write: this member may release this revision (its own hash of the
/// release; per-cluster overlays make revisions differ between members).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberApproval {
    pub cluster: ClusterName,
    pub revision: String,
}

/// The hub's conclusion about one member.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberVerdict {
    /// Index of the member in the slice given to [`decide_waves`].
    pub index: usize,
    /// Index of its wave in the plan; `None` when unassigned.
    pub wave: Option<usize>,
    pub state: MemberState,
    pub message: String,
    /// When this member will time out if nothing changes.
    pub deadline: Option<DateTime<Utc>>,
}

/// What the hub should do now, and the wave states to record.
#[derive(Clone, Debug, PartialEq)]
pub struct WaveDecision {
    /// Members to approve now (new approvals, and in-flight members whose approval
    /// annotation does not match their revision yet).
    pub approve: Vec<MemberApproval>,
    /// Members that missed their wave's progressDeadline (stalled or unreachable).
    pub timed_out: Vec<ClusterName>,
    /// The wave whose failure budget is breached, if any.
    pub budget_breached: Option<String>,
    /// With `RollbackAll` and a breached budget: members that promoted this release.
    pub rollback: Vec<ClusterName>,
    /// With `RollbackAll` and a breached budget: in-flight members whose approval
    /// should be withdrawn (their Canary then aborts).
    pub withdraw: Vec<ClusterName>,
    /// Members the Rollout selects that no wave selects.
    pub unassigned: Vec<ClusterName>,
    /// Index of the wave being worked on or waited on; `None` when all are done.
    pub current_wave: Option<usize>,
    pub phase: RolloutPhase,
    /// Every wave of the plan, in order, as it should be recorded in the status.
    pub waves: Vec<WaveStatus>,
    /// One verdict per member the Rollout selects, in input order.
    pub members: Vec<MemberVerdict>,
    /// Look again after this long even if nothing changes (a soak ends, a deadline passes).
    pub recheck_after: Option<std::time::Duration>,
}

/// Decides which members of `release` to approve now. Pure: same inputs, same answer.
///
/// `history` is the wave status recorded for this same release (empty when it starts);
/// waves are matched by name.
pub fn decide_waves(
    plan: &RolloutPlan,
    release: &str,
    history: &[WaveStatus],
    members: &[MemberObservation],
    now: DateTime<Utc>,
) -> WaveDecision {
    let memberships = assign_waves(plan, members.iter().map(|m| &m.labels));
    let mut by_wave: Vec<Vec<usize>> = vec![Vec::new(); plan.waves.len()];
    let mut verdicts: Vec<Option<MemberVerdict>> = vec![None; members.len()];
    let mut unassigned = Vec::new();
    for (index, membership) in memberships.iter().enumerate() {
        match membership {
            Membership::Wave(w) => by_wave[*w].push(index),
            Membership::Unassigned => {
                unassigned.push(members[index].cluster.clone());
                verdicts[index] = Some(MemberVerdict {
                    index,
                    wave: None,
                    state: MemberState::Unassigned,
                    message: "no wave selects this cluster; it will not get the release".into(),
                    deadline: None,
                });
            }
            Membership::Excluded => {}
        }
    }
    // Approvals go out in name order, so the order is stable across reconciles.
    for indices in &mut by_wave {
        indices.sort_by(|a, b| members[*a].cluster.cmp(&members[*b].cluster));
    }

    let mut decision = WaveDecision {
        approve: Vec::new(),
        timed_out: Vec::new(),
        budget_breached: None,
        rollback: Vec::new(),
        withdraw: Vec::new(),
        unassigned,
        current_wave: None,
        phase: RolloutPhase::Succeeded,
        waves: Vec::with_capacity(plan.waves.len()),
        members: Vec::new(),
        recheck_after: None,
    };
    let mut recheck_at: Option<DateTime<Utc>> = None;
    // Once a wave is unfinished, unsoaked, unapproved or failed, no later wave opens.
    let mut closed = false;

    for (w, wave) in plan.waves.iter().enumerate() {
        let previous = history.iter().find(|s| s.name == wave.name);
        let mut status = WaveStatus::pending(&wave.name);
        // A manual approval counts only for the release it names.
        if let Some(p) = previous.filter(|p| p.approved_at.is_some() && p.approved_release.as_deref() == Some(release))
        {
            status.approved_at = p.approved_at;
            status.approved_release = p.approved_release.clone();
            status.approved_by = p.approved_by.clone();
        }
        status.members = count(by_wave[w].len());
        let previously_opened = previous.and_then(|p| p.opened_at);

        let shut = if closed {
            Some(Shut::BehindAnEarlierWave)
        } else if previously_opened.is_some() {
            None
        } else if wave.approval == Approval::Manual && status.approved_at.is_none() {
            Some(Shut::WaitingApproval)
        } else if plan.paused {
            Some(Shut::Paused)
        } else {
            None
        };
        if let Some(shut) = shut {
            // Not open: members are shown as they are, nothing is approved or timed out.
            status.opened_at = previously_opened;
            for &index in &by_wave[w] {
                let verdict = classify(index, &members[index], release, wave, w, None, now);
                status.succeeded += i32::from(verdict.state == MemberState::Succeeded);
                verdicts[index] = Some(verdict);
            }
            let waits_here = match shut {
                Shut::BehindAnEarlierWave => None,
                Shut::WaitingApproval => Some(RolloutPhase::WaitingApproval),
                Shut::Paused => Some(RolloutPhase::Paused),
            };
            if let Some(phase) = waits_here {
                decision.current_wave = Some(w);
                decision.phase = phase;
            }
            closed = true;
            decision.waves.push(status);
            continue;
        }

        let opened_at = previously_opened.unwrap_or(now);
        status.opened_at = Some(opened_at);
        let wave_verdicts: Vec<MemberVerdict> = by_wave[w]
            .iter()
            .map(|&index| classify(index, &members[index], release, wave, w, Some(opened_at), now))
            .collect();
        let failures = wave_verdicts.iter().filter(|v| counts_as_failure(v.state)).count();
        status.failed = count(failures);
        status.succeeded = count(wave_verdicts.iter().filter(|v| v.state == MemberState::Succeeded).count());
        decision.timed_out.extend(
            wave_verdicts.iter().filter(|v| v.state == MemberState::TimedOut).map(|v| members[v.index].cluster.clone()),
        );

        let previously_failed = previous.is_some_and(|p| p.phase == WavePhase::Failed);
        let breached = failures > wave.max_failures.of(by_wave[w].len());
        if previously_failed || breached {
            status.phase = WavePhase::Failed;
            status.failed_at = previous.and_then(|p| p.failed_at).or(Some(now));
            decision.budget_breached = Some(wave.name.clone());
            decision.current_wave = Some(w);
            decision.phase = RolloutPhase::Failed;
            closed = true;
        } else {
            let settled = wave_verdicts.iter().all(|v| is_settled(v.state));
            let previously_succeeded = previous.and_then(|p| p.succeeded_at);
            if settled || previously_succeeded.is_some() {
                // Success is recorded once: the soak clock never restarts.
                let succeeded_at = previously_succeeded.unwrap_or(now);
                status.succeeded_at = Some(succeeded_at);
                let soaked_at = succeeded_at + wave.soak;
                if now < soaked_at {
                    status.phase = WavePhase::Soaking;
                    decision.current_wave = Some(w);
                    decision.phase = RolloutPhase::Soaking;
                    recheck_at = earliest(recheck_at, Some(soaked_at));
                    closed = true;
                } else {
                    status.phase = WavePhase::Succeeded;
                }
            } else {
                status.phase = WavePhase::Progressing;
                decision.current_wave = Some(w);
                decision.phase = if plan.paused { RolloutPhase::Paused } else { RolloutPhase::Progressing };
                if !plan.paused {
                    decision.approve = approvals(wave, &wave_verdicts, members, release);
                }
                for v in &wave_verdicts {
                    recheck_at = earliest(recheck_at, v.deadline.filter(|d| *d > now));
                }
                closed = true;
            }
        }
        for verdict in wave_verdicts {
            let index = verdict.index;
            verdicts[index] = Some(verdict);
        }
        decision.waves.push(status);
    }

    let mut verdicts: Vec<MemberVerdict> = verdicts.into_iter().flatten().collect();
    if decision.budget_breached.is_some() && plan.on_failure == FailurePolicy::RollbackAll {
        // The member's own Canary keeps reporting the release promoted (its target still
        // holds it); only the verdict can tell a reader the hub took it back.
        for v in &mut verdicts {
            let cluster = &members[v.index].cluster;
            match v.state {
                MemberState::Succeeded => {
                    decision.rollback.push(cluster.clone());
                    v.message = with_note(
                        &v.message,
                        "promoted, then rolled back to the previous release (onFailure: RollbackAll)",
                    );
                }
                MemberState::Approved | MemberState::Progressing => {
                    decision.withdraw.push(cluster.clone());
                    v.message = with_note(&v.message, "approval withdrawn (onFailure: RollbackAll)");
                }
                _ => {}
            }
        }
    }
    decision.members = verdicts;
    decision.recheck_after = recheck_at.and_then(|at| (at - now).to_std().ok());
    decision
}

/// Why a wave that never opened stays shut.
enum Shut {
    /// An earlier wave is unfinished, soaking, waiting or failed.
    BehindAnEarlierWave,
    /// A `Manual` wave without an approval for this release.
    WaitingApproval,
    /// `spec.paused`.
    Paused,
}

/// Members to approve in an open wave: first refresh approvals that have not reached
/// in-flight members, then fill free concurrency slots with pending members in order.
fn approvals(
    wave: &WavePlan,
    verdicts: &[MemberVerdict],
    members: &[MemberObservation],
    release: &str,
) -> Vec<MemberApproval> {
    let limit = wave.max_concurrency.concurrency_of(verdicts.len());
    let in_flight = verdicts.iter().filter(|v| occupies_slot(v, &members[v.index], release)).count();
    let refresh = verdicts.iter().filter(|v| is_in_flight(v.state)).filter_map(|v| {
        let canary = members[v.index].canary.as_ref()?;
        let revision = canary.revision.as_ref()?;
        let member = &members[v.index];
        (canary.is_at(release) && !canary.approval_delivered() && member.reachable && member.identity.is_verified())
            .then(|| MemberApproval { cluster: members[v.index].cluster.clone(), revision: revision.clone() })
    });
    let fresh = verdicts
        .iter()
        .filter(|v| v.state == MemberState::Pending)
        .filter_map(|v| approvable(&members[v.index], release))
        .take(limit.saturating_sub(in_flight));
    refresh.chain(fresh).collect()
}

/// A pending member can be approved when it waits at this release with a known revision.
fn approvable(member: &MemberObservation, release: &str) -> Option<MemberApproval> {
    let canary = member.canary.as_ref()?;
    if !member.reachable || !canary.is_at(release) || !member.identity.is_verified() {
        return None;
    }
    Some(MemberApproval { cluster: member.cluster.clone(), revision: canary.revision.clone()? })
}

/// The state of one member. `opened_at` is when its wave opened (`None`: not open, so
/// no deadline runs).
fn classify(
    index: usize,
    member: &MemberObservation,
    release: &str,
    wave: &WavePlan,
    wave_index: usize,
    opened_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> MemberVerdict {
    let verdict =
        |state, message: String, deadline| MemberVerdict { index, wave: Some(wave_index), state, message, deadline };
    let limit = wave.progress_deadline;
    // A deadline starting at `start`: past it the member times out.
    let timed = |start: DateTime<Utc>| start + limit;
    let canary = member.canary.as_ref();

    // Facts observed at this release stand even if the member is unreachable now:
    // it promoted (or failed and rolled itself back) when last seen.
    if canary.is_some_and(|c| c.reports_promoted(release)) {
        let message = if member.reachable {
            String::new()
        } else {
            format!("promoted; {}", unreachable_since(member.last_contact))
        };
        return verdict(MemberState::Succeeded, message, None);
    }
    if let Some(c) = canary.filter(|c| c.is_at(release) && c.phase == Phase::Failed) {
        return verdict(
            MemberState::Failed,
            format!("Canary failed the release ({} failed checks) and rolled itself back", c.failed_checks),
            None,
        );
    }

    // A member that is not the cluster its Cluster describes is never approved, and in
    // an open wave it counts as failed; what it reported before (above) still stands.
    if let IdentityVerdict::Mismatch(_) = &member.identity {
        return verdict(MemberState::IdentityMismatch, member.identity.describe(), None);
    }

    // Where the member stands by its (last seen) Canary, and since when a deadline runs
    // for it in an open wave: from its approval, or from the wave opening when it never
    // could be approved. A pending member waiting for a free slot has no deadline,
    // unless its identity is unverified: then it cannot be approved, and times out.
    let (state, why, stall_from) = match canary {
        Some(c)
            if c.is_at(release)
                && !c.phase.is_active()
                && member.approved_at.is_none()
                && !c.approval_delivered()
                && !member.identity.is_verified() =>
        {
            (MemberState::Pending, member.identity.describe(), Some(opened_at))
        }
        None => (MemberState::Pending, "the Canary does not exist in this cluster".to_string(), Some(opened_at)),
        Some(c) if !c.is_at(release) => (
            MemberState::OtherRelease,
            match &c.release {
                Some(other) => format!("Canary reports release {other}"),
                None => "Canary reports no release yet".to_string(),
            },
            Some(opened_at),
        ),
        Some(c) if c.phase.is_active() => (
            MemberState::Progressing,
            format!("{} at weight {}", c.phase, c.weight),
            Some(member.approved_at.or(opened_at)),
        ),
        Some(c) if member.approved_at.is_some() || c.approval_delivered() => {
            (MemberState::Approved, format!("approved; Canary is {}", c.phase), Some(member.approved_at.or(opened_at)))
        }
        Some(_) => (MemberState::Pending, String::new(), None),
    };
    let Some(opened_at) = opened_at else {
        // Closed wave: shown as it is, no deadline runs.
        return if member.reachable {
            verdict(state, why, None)
        } else {
            verdict(MemberState::Unreachable, unreachable_since(member.last_contact), None)
        };
    };
    let stall_deadline = stall_from.map(|from| timed(from.unwrap_or(opened_at).max(opened_at)));

    if !member.reachable {
        // Unreachable for `progressDeadline` counts as failed; so does being unreachable
        // when the member's own deadline passes (it cannot finish in time either).
        let unreachable_deadline = timed(member.last_contact.map_or(opened_at, |c| c.max(opened_at)));
        let deadline = stall_deadline.map_or(unreachable_deadline, |d| d.min(unreachable_deadline));
        if now >= deadline {
            return verdict(
                MemberState::TimedOut,
                format!("{}; progressDeadline {} passed", unreachable_since(member.last_contact), human(limit)),
                None,
            );
        }
        return verdict(
            MemberState::Unreachable,
            format!("{}; counts as failed at {}", unreachable_since(member.last_contact), deadline.to_rfc3339()),
            Some(deadline),
        );
    }
    match stall_deadline {
        Some(deadline) if now >= deadline => {
            verdict(MemberState::TimedOut, format!("{why}; progressDeadline {} passed", human(limit)), None)
        }
        deadline => verdict(state, why, deadline),
    }
}

/// Finished within the wave: promoted, or failed in a way the budget counts.
fn is_settled(state: MemberState) -> bool {
    counts_as_failure(state) || state == MemberState::Succeeded
}

/// What `maxFailures` counts.
fn counts_as_failure(state: MemberState) -> bool {
    matches!(state, MemberState::Failed | MemberState::TimedOut | MemberState::IdentityMismatch)
}

/// Approved but not finished.
fn is_in_flight(state: MemberState) -> bool {
    matches!(state, MemberState::Approved | MemberState::Progressing)
}

/// What `maxConcurrency` limits: members approved but not finished. An approved member
/// that went unreachable keeps its slot until it times out, or it could come back and
/// progress next to the member that took its place.
pub(crate) fn occupies_slot(verdict: &MemberVerdict, member: &MemberObservation, release: &str) -> bool {
    is_in_flight(verdict.state)
        || (verdict.state == MemberState::Unreachable
            && (member.approved_at.is_some()
                || member
                    .canary
                    .as_ref()
                    .is_some_and(|c| c.is_at(release) && (c.phase.is_active() || c.approval_delivered()))))
}

fn with_note(message: &str, note: &str) -> String {
    if message.is_empty() { note.to_string() } else { format!("{note}; {message}") }
}

fn earliest(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn unreachable_since(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(|| "unreachable, never contacted".to_string(), |t| format!("unreachable since {}", t.to_rfc3339()))
}

/// A deadline as a person writes it (`30m`, `1h30m`, `45s`).
fn human(d: TimeDelta) -> String {
    let total = d.num_seconds();
    let (h, m, s) = (total / 3600, (total % 3600) / 60, total % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}
