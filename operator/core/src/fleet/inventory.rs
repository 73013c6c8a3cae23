//! The fleet's state across releases: the last releases of a Rollout
//! ([`record_release`]) and what each member runs ([`update_inventory`]), both kept in
//! the Rollout's status so a restarted hub continues; and which members drifted from the
//! fleet's last successful release ([`drift_of`]). Pure.
//!
//! What a member runs is its own word: the Canary's `promotedRelease` (what its primary
//! serves), read by the hub through the watch it already keeps. One correction only the
//! hub can make: a member it rolled back (`onFailure: RollbackAll`) still reports the
//! release promoted (its target holds it), but its primary runs the previous one again.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};

use super::decision::MemberObservation;
use super::plan::ClusterName;
use petrel_api::canary::Phase;
use petrel_api::rollout::{
    MemberInventory, RELEASE_HISTORY_LIMIT, ReleaseOutcome, ReleaseRecord, RolloutPhase, RolloutStatus, WaveRecord,
};

/// The release history after a reconcile that wrote `status`: the record of its release
/// updated (or started, closing the one it supersedes), newest first, at most
/// [`RELEASE_HISTORY_LIMIT`] records.
pub fn record_release(previous: &[ReleaseRecord], status: &RolloutStatus, now: DateTime<Utc>) -> Vec<ReleaseRecord> {
    let Some(release) = status.release.as_deref() else {
        return previous.to_vec();
    };
    let mut history = previous.to_vec();
    let same_run = history.first().is_some_and(|newest| newest.release == release);
    if !same_run {
        if let Some(newest) = history.first_mut().filter(|r| r.outcome == ReleaseOutcome::InProgress) {
            newest.outcome = ReleaseOutcome::Superseded;
            newest.finished_at = Some(now);
        }
        history.insert(
            0,
            ReleaseRecord {
                release: release.to_string(),
                started_at: None,
                finished_at: None,
                outcome: ReleaseOutcome::InProgress,
                waves: Vec::new(),
            },
        );
    }
    let record = &mut history[0];
    let outcome = match status.phase {
        Some(RolloutPhase::Succeeded) => ReleaseOutcome::Succeeded,
        Some(RolloutPhase::Failed) => ReleaseOutcome::Failed,
        _ => ReleaseOutcome::InProgress,
    };
    record.finished_at = match outcome {
        _ if outcome == record.outcome && record.finished_at.is_some() => record.finished_at,
        ReleaseOutcome::Failed => status.waves.iter().filter_map(|w| w.failed_at).min().or(Some(now)),
        ReleaseOutcome::Succeeded => Some(now),
        ReleaseOutcome::InProgress | ReleaseOutcome::Superseded => None,
    };
    record.outcome = outcome;
    record.waves = status
        .waves
        .iter()
        .map(|w| WaveRecord {
            name: w.name.clone(),
            phase: w.phase,
            opened_at: w.opened_at,
            finished_at: w.succeeded_at.or(w.failed_at),
            approved_at: w.approved_at,
            approved_by: w.approved_by.clone(),
        })
        .collect();
    record.started_at = record.started_at.or_else(|| record.waves.iter().filter_map(|w| w.opened_at).min());
    history.truncate(RELEASE_HISTORY_LIMIT);
    history
}

/// A rollback the hub made on a member: from the release it promoted to the release of
/// the primary template it put back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubRollback {
    pub from: String,
    pub to: String,
}

/// What each member runs after a reconcile, one entry per member (by cluster name).
///
/// A member that answered now and is not mid-promotion runs what its Canary reports
/// promoted; `rollbacks` are the members the hub rolled back in this reconcile (or found
/// already rolled back). A member that did not answer keeps its entry.
pub fn update_inventory(
    previous: &[MemberInventory],
    members: &[MemberObservation],
    rollbacks: &BTreeMap<ClusterName, HubRollback>,
    now: DateTime<Utc>,
) -> Vec<MemberInventory> {
    let mut inventory: Vec<MemberInventory> =
        members
            .iter()
            .map(|member| {
                let before = previous.iter().find(|e| e.cluster == member.cluster).cloned().unwrap_or_else(|| {
                    MemberInventory { cluster: member.cluster.clone(), ..MemberInventory::default() }
                });
                if let Some(rollback) = rollbacks.get(&member.cluster) {
                    return rolled_back(before, rollback, now);
                }
                match member.canary.as_ref().filter(|_| member.reachable) {
                    Some(canary) if !matches!(canary.phase, Phase::Promoting | Phase::Finalising) => {
                        let since = matches!(canary.phase, Phase::Succeeded | Phase::Initialized)
                            .then_some(canary.last_transition)
                            .flatten()
                            .filter(|t| *t <= now)
                            .unwrap_or(now);
                        reported(before, canary.promoted_release.as_deref(), since)
                    }
                    _ => before,
                }
            })
            .collect();
    inventory.sort_by(|a, b| a.cluster.cmp(&b.cluster));
    inventory
}

/// An entry after the member reported `promoted` (what its primary serves).
fn reported(before: MemberInventory, promoted: Option<&str>, since: DateTime<Utc>) -> MemberInventory {
    let Some(promoted) = promoted else { return before };
    if before.rolled_back_from.as_deref() == Some(promoted) {
        // The Canary still names the release the hub took back; the primary does not run it.
        return before;
    }
    if before.release.as_deref() == Some(promoted) {
        return MemberInventory { rolled_back_from: None, ..before };
    }
    MemberInventory {
        cluster: before.cluster,
        previous_release: before.release.or(before.previous_release),
        release: Some(promoted.to_string()),
        since: Some(since),
        rolled_back_from: None,
    }
}

/// An entry after the hub rolled the member back.
fn rolled_back(before: MemberInventory, rollback: &HubRollback, now: DateTime<Utc>) -> MemberInventory {
    if before.release.as_deref() == Some(rollback.to.as_str()) {
        return MemberInventory { rolled_back_from: Some(rollback.from.clone()), ..before };
    }
    MemberInventory {
        cluster: before.cluster,
        previous_release: before.release.or(Some(rollback.from.clone())),
        release: Some(rollback.to.clone()),
        since: Some(now),
        rolled_back_from: Some(rollback.from.clone()),
    }
}

/// Adds the history and the inventory to a status built for this reconcile, from the
/// previous status (what the hub recorded before) and what it observed now.
pub fn with_inventory(
    status: &mut RolloutStatus,
    previous: Option<&RolloutStatus>,
    members: &[MemberObservation],
    rollbacks: &BTreeMap<ClusterName, HubRollback>,
    now: DateTime<Utc>,
) {
    status.history = record_release(previous.map_or(&[][..], |p| &p.history), status, now);
    status.inventory = update_inventory(previous.map_or(&[][..], |p| &p.inventory), members, rollbacks, now);
}

/// The newest release that succeeded across the fleet, if any.
pub fn last_successful(history: &[ReleaseRecord]) -> Option<&ReleaseRecord> {
    history.iter().find(|r| r.outcome == ReleaseOutcome::Succeeded)
}

/// Whether a member runs what the fleet last released successfully.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Drift {
    /// It runs the fleet's last successful release.
    InSync,
    /// It runs the release being rolled out now (ahead of the last successful one).
    Ahead,
    /// It runs another release, since `since` (when it changed release or the fleet
    /// succeeded with another, whichever came last).
    Drifted { since: Option<DateTime<Utc>> },
    /// Nothing to compare: no successful release yet, or the member's release unknown.
    Unknown,
}

impl Drift {
    /// How long the member has been drifted at `now` (zero when it is not).
    pub fn seconds(&self, now: DateTime<Utc>) -> f64 {
        match self {
            Drift::Drifted { since: Some(since) } => {
                (now - *since).max(TimeDelta::zero()).num_milliseconds() as f64 / 1000.0
            }
            _ => 0.0,
        }
    }
}

/// Where `member` stands against the fleet's last successful release, given the
/// Rollout's status (its history and the release in flight).
pub fn drift_of(member: &MemberInventory, status: &RolloutStatus) -> Drift {
    let Some(running) = member.release.as_deref() else { return Drift::Unknown };
    let last = last_successful(&status.history);
    if last.is_some_and(|last| running == last.release) {
        return Drift::InSync;
    }
    let in_flight = status.history.first().filter(|r| r.outcome == ReleaseOutcome::InProgress);
    if in_flight.is_some_and(|r| r.release == running) {
        return Drift::Ahead;
    }
    let Some(last) = last else { return Drift::Unknown };
    let since = match (member.since, last.finished_at) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    Drift::Drifted { since }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::CanaryObservation;
    use crate::fleet::identity::IdentityVerdict;
    use chrono::TimeZone;
    use petrel_api::rollout::{WavePhase, WaveStatus};

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 5, minute, 0).unwrap()
    }

    fn wave(name: &str, phase: WavePhase, opened: Option<u32>, done: Option<u32>) -> WaveStatus {
        let mut w = WaveStatus::pending(name);
        w.phase = phase;
        w.opened_at = opened.map(at);
        match phase {
            WavePhase::Failed => w.failed_at = done.map(at),
            _ => w.succeeded_at = done.map(at),
        }
        w
    }

    fn status(release: &str, phase: RolloutPhase, waves: Vec<WaveStatus>) -> RolloutStatus {
        RolloutStatus { release: Some(release.into()), phase: Some(phase), waves, ..RolloutStatus::default() }
    }

    #[test]
    fn a_release_is_recorded_from_its_first_wave_to_its_end() {
        let running = status(
            "r1",
            RolloutPhase::WaitingApproval,
            vec![wave("canary", WavePhase::Succeeded, Some(1), Some(3)), wave("prod", WavePhase::Pending, None, None)],
        );
        let history = record_release(&[], &running, at(4));
        assert_eq!(history.len(), 1);
        let r = &history[0];
        assert_eq!(
            (r.release.as_str(), r.outcome, r.started_at, r.finished_at),
            ("r1", ReleaseOutcome::InProgress, Some(at(1)), None)
        );
        assert_eq!(r.waves[0].finished_at, Some(at(3)));

        // The manual wave is approved by a person, opens, and the release succeeds.
        let mut prod = wave("prod", WavePhase::Succeeded, Some(6), Some(8));
        prod.approved_at = Some(at(5));
        prod.approved_by = Some("alice@example.com".into());
        let done =
            status("r1", RolloutPhase::Succeeded, vec![wave("canary", WavePhase::Succeeded, Some(1), Some(3)), prod]);
        let history = record_release(&history, &done, at(9));
        assert_eq!(history.len(), 1, "the same run is updated, not added");
        let r = &history[0];
        assert_eq!((r.outcome, r.finished_at), (ReleaseOutcome::Succeeded, Some(at(9))));
        assert_eq!(r.waves[1].approved_by.as_deref(), Some("alice@example.com"));
        assert_eq!(r.waves[1].approved_at, Some(at(5)));
        // Later reconciles of the finished release keep its end time.
        assert_eq!(record_release(&history, &done, at(30))[0].finished_at, Some(at(9)));
    }

    #[test]
    fn a_new_release_supersedes_one_in_flight_and_the_history_is_bounded() {
        let first = record_release(
            &[],
            &status("r1", RolloutPhase::Progressing, vec![wave("canary", WavePhase::Progressing, Some(1), None)]),
            at(1),
        );
        let second = record_release(&first, &status("r2", RolloutPhase::Progressing, vec![]), at(2));
        assert_eq!(second.len(), 2);
        assert_eq!(
            (second[1].release.as_str(), second[1].outcome, second[1].finished_at),
            ("r1", ReleaseOutcome::Superseded, Some(at(2)))
        );
        assert_eq!(second[0].outcome, ReleaseOutcome::InProgress);

        let failed = status("r2", RolloutPhase::Failed, vec![wave("canary", WavePhase::Failed, Some(3), Some(5))]);
        let after = record_release(&second, &failed, at(6));
        assert_eq!(
            (after[0].outcome, after[0].finished_at),
            (ReleaseOutcome::Failed, Some(at(5))),
            "ends when its wave failed"
        );
        let next = record_release(&after, &status("r3", RolloutPhase::Progressing, vec![]), at(7));
        assert_eq!(next[1].outcome, ReleaseOutcome::Failed, "a finished release is not superseded");

        let mut history = Vec::new();
        for i in 0..25 {
            history = record_release(&history, &status(&format!("r{i}"), RolloutPhase::Succeeded, vec![]), at(i));
        }
        assert_eq!(history.len(), RELEASE_HISTORY_LIMIT);
        assert_eq!(history[0].release, "r24", "newest first");
        // A status without a release leaves the history as it is.
        assert_eq!(record_release(&history, &RolloutStatus::default(), at(40)), history);
    }

    fn member(cluster: &str, phase: Phase, promoted: Option<&str>, transition: u32) -> MemberObservation {
        MemberObservation {
            cluster: cluster.into(),
            labels: BTreeMap::new(),
            reachable: true,
            last_contact: None,
            approved_at: None,
            canary: Some(CanaryObservation {
                phase,
                promoted_release: promoted.map(str::to_string),
                last_transition: Some(at(transition)),
                ..CanaryObservation::default()
            }),
            identity: IdentityVerdict::Verified,
        }
    }

    fn entry<'a>(inventory: &'a [MemberInventory], cluster: &str) -> &'a MemberInventory {
        inventory.iter().find(|e| e.cluster == cluster).unwrap()
    }

    #[test]
    fn a_member_runs_what_it_reports_promoted_since_its_promotion() {
        let none = BTreeMap::new();
        let first = update_inventory(
            &[],
            &[member("b", Phase::Initialized, Some("r0"), 1), member("a", Phase::Waiting, Some("r0"), 2)],
            &none,
            at(5),
        );
        assert_eq!(first.iter().map(|e| e.cluster.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!((entry(&first, "b").release.as_deref(), entry(&first, "b").since), (Some("r0"), Some(at(1))));
        assert_eq!(entry(&first, "a").since, Some(at(5)), "a Waiting Canary says nothing about when r0 was promoted");

        // b promotes r1: mid-promotion nothing changes, then r1 since its Succeeded transition.
        let promoting = update_inventory(&first, &[member("b", Phase::Promoting, Some("r1"), 6)], &none, at(6));
        assert_eq!(entry(&promoting, "b").release.as_deref(), Some("r0"));
        let done = update_inventory(&promoting, &[member("b", Phase::Succeeded, Some("r1"), 7)], &none, at(8));
        let b = entry(&done, "b");
        assert_eq!(
            (b.release.as_deref(), b.since, b.previous_release.as_deref()),
            (Some("r1"), Some(at(7)), Some("r0"))
        );
        // Reported again later: unchanged.
        assert_eq!(update_inventory(&done, &[member("b", Phase::Succeeded, Some("r1"), 7)], &none, at(20)), done);

        // Unreachable: the entry is kept as it was.
        let mut lost = member("b", Phase::Succeeded, Some("r9"), 9);
        lost.reachable = false;
        assert_eq!(update_inventory(&done, &[lost], &none, at(21)), done);
        // A member that left the Rollout leaves the inventory.
        assert!(update_inventory(&done, &[], &none, at(22)).is_empty());
    }

    #[test]
    fn a_member_the_hub_rolled_back_runs_the_previous_release_until_it_reports_another() {
        let none = BTreeMap::new();
        let inventory = update_inventory(&[], &[member("a", Phase::Initialized, Some("r0"), 1)], &none, at(1));
        let inventory = update_inventory(&inventory, &[member("a", Phase::Succeeded, Some("r1"), 3)], &none, at(3));
        let rollback = BTreeMap::from([("a".to_string(), HubRollback { from: "r1".into(), to: "r0".into() })]);
        let back = update_inventory(&inventory, &[member("a", Phase::Succeeded, Some("r1"), 3)], &rollback, at(5));
        let a = entry(&back, "a");
        assert_eq!(
            (a.release.as_deref(), a.since, a.previous_release.as_deref(), a.rolled_back_from.as_deref()),
            (Some("r0"), Some(at(5)), Some("r1"), Some("r1"))
        );
        // Found already rolled back at the next reconcile: nothing moves.
        assert_eq!(update_inventory(&back, &[member("a", Phase::Succeeded, Some("r1"), 3)], &rollback, at(6)), back);
        // The Canary keeps saying r1 once the hub no longer lists the rollback.
        assert_eq!(update_inventory(&back, &[member("a", Phase::Succeeded, Some("r1"), 3)], &none, at(7)), back);
        // A new release promoted there ends the correction.
        let next = update_inventory(&back, &[member("a", Phase::Succeeded, Some("r2"), 9)], &none, at(9));
        let a = entry(&next, "a");
        assert_eq!(
            (a.release.as_deref(), a.previous_release.as_deref(), a.rolled_back_from.as_deref()),
            (Some("r2"), Some("r0"), None)
        );
    }

    fn record(release: &str, outcome: ReleaseOutcome, finished: Option<u32>) -> ReleaseRecord {
        ReleaseRecord {
            release: release.into(),
            started_at: None,
            finished_at: finished.map(at),
            outcome,
            waves: vec![],
        }
    }

    fn running(release: &str, since: u32) -> MemberInventory {
        MemberInventory {
            cluster: "a".into(),
            release: Some(release.into()),
            since: Some(at(since)),
            ..MemberInventory::default()
        }
    }

    #[test]
    fn drift_is_measured_against_the_last_successful_release() {
        let status = RolloutStatus {
            history: vec![
                record("r3", ReleaseOutcome::InProgress, None),
                record("r2", ReleaseOutcome::Failed, Some(20)),
                record("r1", ReleaseOutcome::Succeeded, Some(10)),
                record("r0", ReleaseOutcome::Succeeded, Some(2)),
            ],
            ..RolloutStatus::default()
        };
        assert_eq!(drift_of(&running("r1", 8), &status), Drift::InSync);
        assert_eq!(drift_of(&running("r3", 25), &status), Drift::Ahead);
        // Held back on r0 since before r1 succeeded: drifted since r1 succeeded.
        let held = drift_of(&running("r0", 1), &status);
        assert_eq!(held, Drift::Drifted { since: Some(at(10)) });
        assert_eq!(held.seconds(at(12)), 120.0);
        // Promoted the failed r2 after r1 succeeded: drifted since it did.
        assert_eq!(drift_of(&running("r2", 15), &status), Drift::Drifted { since: Some(at(15)) });
        assert_eq!(drift_of(&MemberInventory::default(), &status), Drift::Unknown);
        assert_eq!(drift_of(&running("r0", 1), &RolloutStatus::default()), Drift::Unknown, "nothing succeeded yet");
        assert_eq!(Drift::InSync.seconds(at(50)), 0.0);
    }
}
