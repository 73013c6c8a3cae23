//! Readable examples of the wave decision: one story per test.

use chrono::{DateTime, TimeDelta, Utc};

use super::decision::{CanaryObservation, MemberApproval, MemberObservation, WaveDecision, decide_waves};
use super::identity::IdentityVerdict;
use super::plan::{RolloutPlan, Share, WavePlan};
use super::status::{build_status, history_for_release};
use petrel_api::canary::Phase;
use petrel_api::rollout::{Approval, ClusterSelector, FailurePolicy, MemberState, RolloutPhase, WavePhase, WaveStatus};

pub(super) const RELEASE: &str = "podinfo:6.5.0";
const OLD_RELEASE: &str = "podinfo:6.4.0";

pub(super) fn at(minutes: i64) -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH + TimeDelta::days(20_000) + TimeDelta::minutes(minutes)
}

pub(super) fn wave(name: &str, role: &str) -> WavePlan {
    WavePlan {
        name: name.into(),
        selector: ClusterSelector {
            match_labels: [("wave".to_string(), role.to_string())].into(),
            match_expressions: vec![],
        },
        max_concurrency: Share::Percent(100),
        max_failures: Share::Count(0),
        soak: TimeDelta::zero(),
        approval: Approval::Automatic,
        progress_deadline: TimeDelta::minutes(30),
    }
}

pub(super) fn plan(waves: Vec<WavePlan>) -> RolloutPlan {
    RolloutPlan { clusters: ClusterSelector::default(), waves, on_failure: FailurePolicy::Halt, paused: false }
}

/// A reachable member whose Canary waits at RELEASE for approval.
fn member(name: &str, wave: &str) -> MemberObservation {
    MemberObservation {
        cluster: name.into(),
        labels: [("wave".to_string(), wave.to_string())].into(),
        reachable: true,
        last_contact: Some(at(0)),
        approved_at: None,
        canary: Some(CanaryObservation {
            phase: Phase::Waiting,
            release: Some(RELEASE.into()),
            revision: Some(format!("rev-{name}")),
            promoted_revision: Some(format!("old-{name}")),
            ..CanaryObservation::default()
        }),
        identity: IdentityVerdict::Verified,
    }
}

fn canary(m: &mut MemberObservation) -> &mut CanaryObservation {
    m.canary.as_mut().unwrap()
}

fn approve(m: &mut MemberObservation, now: DateTime<Utc>) {
    m.approved_at = Some(now);
    let c = canary(m);
    c.approved_revision = c.revision.clone();
}

fn progress(m: &mut MemberObservation, now: DateTime<Utc>) {
    approve(m, now);
    canary(m).phase = Phase::Progressing;
    canary(m).weight = 10;
}

fn succeed(m: &mut MemberObservation, now: DateTime<Utc>) {
    if m.approved_at.is_none() {
        approve(m, now);
    }
    let c = canary(m);
    c.phase = Phase::Succeeded;
    c.promoted_revision = c.revision.clone();
}

fn fail(m: &mut MemberObservation, now: DateTime<Utc>) {
    if m.approved_at.is_none() {
        approve(m, now);
    }
    canary(m).phase = Phase::Failed;
    canary(m).failed_checks = 2;
}

fn approved_names(d: &WaveDecision) -> Vec<&str> {
    d.approve.iter().map(|a| a.cluster.as_str()).collect()
}

fn state_of(d: &WaveDecision, members: &[MemberObservation], name: &str) -> MemberState {
    d.members
        .iter()
        .find(|v| members[v.index].cluster == name)
        .map(|v| v.state)
        .unwrap_or_else(|| panic!("no verdict for {name}"))
}

fn fleet() -> (RolloutPlan, Vec<MemberObservation>) {
    let plan = plan(vec![wave("canary", "canary"), wave("eu", "eu"), wave("us", "us")]);
    let members = vec![member("us-1", "us"), member("eu-2", "eu"), member("canary-1", "canary"), member("eu-1", "eu")];
    (plan, members)
}

#[test]
fn the_canary_cluster_goes_first_then_each_wave_in_order() {
    let (plan, mut members) = fleet();
    let d = decide_waves(&plan, RELEASE, &[], &members, at(0));
    assert_eq!(approved_names(&d), ["canary-1"]);
    assert_eq!(d.approve[0], MemberApproval { cluster: "canary-1".into(), revision: "rev-canary-1".into() });
    assert_eq!(d.current_wave, Some(0));
    assert_eq!(d.waves[1].phase, WavePhase::Pending);
    assert_eq!(state_of(&d, &members, "eu-1"), MemberState::Pending);

    progress(&mut members[2], at(0));
    let d = decide_waves(&plan, RELEASE, &d.waves, &members, at(5));
    assert!(d.approve.is_empty(), "the canary cluster is still progressing");
    assert_eq!(d.phase, RolloutPhase::Progressing);

    succeed(&mut members[2], at(0));
    let d = decide_waves(&plan, RELEASE, &d.waves, &members, at(10));
    assert_eq!(d.waves[0].phase, WavePhase::Succeeded);
    assert_eq!(d.waves[0].succeeded_at, Some(at(10)));
    assert_eq!(approved_names(&d), ["eu-1", "eu-2"], "the whole eu wave, in name order");
    assert_eq!(d.current_wave, Some(1));

    succeed(&mut members[1], at(10));
    succeed(&mut members[3], at(10));
    let d = decide_waves(&plan, RELEASE, &d.waves, &members, at(20));
    assert_eq!(approved_names(&d), ["us-1"]);

    succeed(&mut members[0], at(20));
    let d = decide_waves(&plan, RELEASE, &d.waves, &members, at(30));
    assert_eq!(d.phase, RolloutPhase::Succeeded);
    assert_eq!(d.current_wave, None);
    assert!(d.waves.iter().all(|w| w.phase == WavePhase::Succeeded));
    assert_eq!(d.recheck_after, None);
}

#[test]
fn the_next_wave_waits_for_the_soak_measured_from_when_the_wave_succeeded() {
    let (mut plan, mut members) = fleet();
    plan.waves[0].soak = TimeDelta::hours(1);
    let d = decide_waves(&plan, RELEASE, &[], &members, at(0));
    succeed(&mut members[2], at(0));

    let d = decide_waves(&plan, RELEASE, &d.waves, &members, at(10));
    assert_eq!(d.waves[0].phase, WavePhase::Soaking);
    assert_eq!(d.phase, RolloutPhase::Soaking);
    assert!(d.approve.is_empty());
    assert_eq!(d.recheck_after, Some(std::time::Duration::from_secs(3600)));

    let d = decide_waves(&plan, RELEASE, &d.waves, &members, at(69));
    assert!(d.approve.is_empty(), "one minute of soak left");
    assert_eq!(d.recheck_after, Some(std::time::Duration::from_secs(60)));
    assert_eq!(d.waves[0].succeeded_at, Some(at(10)), "the soak clock never restarts");

    let d = decide_waves(&plan, RELEASE, &d.waves, &members, at(70));
    assert_eq!(approved_names(&d), ["eu-1", "eu-2"]);
    assert_eq!(d.waves[1].opened_at, Some(at(70)));
}

#[test]
fn a_failure_in_the_first_wave_halts_the_rollout() {
    let (plan, mut members) = fleet();
    let d = decide_waves(&plan, RELEASE, &[], &members, at(0));
    fail(&mut members[2], at(0));

    let d = decide_waves(&plan, RELEASE, &d.waves, &members, at(10));
    assert_eq!(d.budget_breached.as_deref(), Some("canary"));
    assert_eq!(d.phase, RolloutPhase::Failed);
    assert_eq!(d.waves[0].phase, WavePhase::Failed);
    assert_eq!(d.waves[0].failed_at, Some(at(10)));
    assert!(d.approve.is_empty());
    assert!(d.rollback.is_empty(), "Halt rolls nothing back");
    assert_eq!(d.waves[1].phase, WavePhase::Pending);
    assert_eq!(d.waves[1].opened_at, None);

    // The failure is recorded: even if the member recovers, later waves stay closed
    // until a person retries (which clears the wave's status).
    succeed(&mut members[2], at(10));
    let d = decide_waves(&plan, RELEASE, &d.waves, &members, at(20));
    assert_eq!(d.phase, RolloutPhase::Failed);
    assert!(d.approve.is_empty());
    assert_eq!(d.waves[0].failed_at, Some(at(10)));
}

#[test]
fn a_failure_within_budget_lets_the_wave_finish() {
    let (mut plan, mut members) = fleet();
    plan.waves[1].max_failures = Share::Count(1);
    let d = decide_waves(&plan, RELEASE, &[], &members, at(0));
    succeed(&mut members[2], at(0));
    let d = decide_waves(&plan, RELEASE, &d.waves, &members, at(5));
    fail(&mut members[1], at(5));
    succeed(&mut members[3], at(5));
    let d = decide_waves(&plan, RELEASE, &d.waves, &members, at(10));
    assert_eq!(d.budget_breached, None);
    assert_eq!(d.waves[1].phase, WavePhase::Succeeded);
    assert_eq!(d.waves[1].failed, 1);
    assert_eq!(approved_names(&d), ["us-1"]);
}

#[test]
fn rollback_all_lists_every_member_that_promoted_the_release() {
    let (mut plan, mut members) = fleet();
    plan.on_failure = FailurePolicy::RollbackAll;
    members.push(member("eu-3", "eu"));
    let d = decide_waves(&plan, RELEASE, &[], &members, at(0));
    succeed(&mut members[2], at(0));
    let d = decide_waves(&plan, RELEASE, &d.waves, &members, at(5));
    succeed(&mut members[3], at(5)); // eu-1 promoted
    fail(&mut members[1], at(5)); // eu-2 failed: budget 0 breached
    progress(&mut members[4], at(5)); // eu-3 still analysing

    let d = decide_waves(&plan, RELEASE, &d.waves, &members, at(10));
    assert_eq!(d.budget_breached.as_deref(), Some("eu"));
    let mut rollback = d.rollback.clone();
    rollback.sort();
    assert_eq!(rollback, ["canary-1", "eu-1"]);
    assert_eq!(d.withdraw, ["eu-3"]);
    assert!(d.approve.is_empty());
    assert!(!d.rollback.contains(&"us-1".to_string()));
    // The status tells which members were taken back, not only the Events.
    let message = |name: &str| {
        let v = d.members.iter().find(|v| members[v.index].cluster == name).unwrap();
        v.message.clone()
    };
    assert!(message("eu-1").contains("rolled back"), "{}", message("eu-1"));
    assert!(message("eu-3").contains("withdrawn"), "{}", message("eu-3"));
    assert!(!message("eu-2").contains("rolled back"), "{}", message("eu-2"));
}

#[test]
fn an_unreachable_member_times_out_after_the_progress_deadline() {
    let (plan, mut members) = fleet();
    // The canary cluster dropped off before its wave opened at minute 0.
    members[2].reachable = false;
    members[2].last_contact = Some(at(-10));
    let d = decide_waves(&plan, RELEASE, &[], &members, at(0));
    assert!(d.approve.is_empty(), "an unreachable member cannot be approved");
    assert_eq!(state_of(&d, &members, "canary-1"), MemberState::Unreachable);

    let d = decide_waves(&plan, RELEASE, &d.waves, &members, at(29));
    assert_eq!(state_of(&d, &members, "canary-1"), MemberState::Unreachable);
    assert_eq!(d.budget_breached, None, "unreachable is not failed before the deadline");
    assert_eq!(d.recheck_after, Some(std::time::Duration::from_secs(60)));
    let verdict = d.members.iter().find(|v| v.state == MemberState::Unreachable).unwrap();
    assert!(verdict.message.contains("unreachable since"), "{}", verdict.message);

    let d = decide_waves(&plan, RELEASE, &d.waves, &members, at(30));
    assert_eq!(state_of(&d, &members, "canary-1"), MemberState::TimedOut);
    assert_eq!(d.timed_out, ["canary-1"]);
    assert_eq!(d.budget_breached.as_deref(), Some("canary"));
}

#[test]
fn an_approved_member_that_drops_off_keeps_its_own_deadline() {
    let (plan, mut members) = fleet();
    let d = decide_waves(&plan, RELEASE, &[], &members, at(0));
    progress(&mut members[2], at(0));
    members[2].reachable = false;
    members[2].last_contact = Some(at(20));
    let d = decide_waves(&plan, RELEASE, &d.waves, &members, at(25));
    assert_eq!(state_of(&d, &members, "canary-1"), MemberState::Unreachable);
    assert_eq!(d.recheck_after, Some(std::time::Duration::from_secs(5 * 60)), "approved at 0, deadline 30m");
    let d = decide_waves(&plan, RELEASE, &d.waves, &members, at(30));
    assert_eq!(d.timed_out, ["canary-1"]);
}

#[test]
fn an_unreachable_member_in_a_closed_wave_is_shown_but_not_counted() {
    let (plan, mut members) = fleet();
    members[0].reachable = false;
    members[0].last_contact = None;
    let d = decide_waves(&plan, RELEASE, &[], &members, at(600));
    assert_eq!(state_of(&d, &members, "us-1"), MemberState::Unreachable);
    assert!(d.timed_out.is_empty());
}

#[test]
fn a_manual_wave_opens_only_once_approved_for_this_release() {
    let (mut plan, mut members) = fleet();
    plan.waves[1].approval = Approval::Manual;
    let d = decide_waves(&plan, RELEASE, &[], &members, at(0));
    succeed(&mut members[2], at(0));

    let d = decide_waves(&plan, RELEASE, &d.waves, &members, at(5));
    assert_eq!(d.phase, RolloutPhase::WaitingApproval);
    assert_eq!(d.current_wave, Some(1));
    assert!(d.approve.is_empty());
    assert_eq!(d.waves[1].opened_at, None);

    // An approval left over from the previous release does not count.
    let mut waves = d.waves.clone();
    waves[1].approved_at = Some(at(6));
    waves[1].approved_release = Some(OLD_RELEASE.into());
    let d = decide_waves(&plan, RELEASE, &waves, &members, at(7));
    assert!(d.approve.is_empty());

    waves[1].approved_release = Some(RELEASE.into());
    let d = decide_waves(&plan, RELEASE, &waves, &members, at(8));
    assert_eq!(approved_names(&d), ["eu-1", "eu-2"]);
    assert_eq!(d.waves[1].approved_at, Some(at(6)));
    assert_eq!(d.waves[1].opened_at, Some(at(8)));
}

#[test]
fn max_concurrency_limits_members_in_flight() {
    let mut plan = plan(vec![wave("all", "all")]);
    plan.waves[0].max_concurrency = Share::Count(2);
    let mut members: Vec<_> = ["e", "d", "c", "b", "a"].iter().map(|n| member(n, "all")).collect();
    let d = decide_waves(&plan, RELEASE, &[], &members, at(0));
    assert_eq!(approved_names(&d), ["a", "b"]);
    progress(&mut members[4], at(0));
    progress(&mut members[3], at(0));
    let d = decide_waves(&plan, RELEASE, &d.waves, &members, at(1));
    assert!(d.approve.is_empty());
    succeed(&mut members[4], at(1));
    let d = decide_waves(&plan, RELEASE, &d.waves, &members, at(2));
    assert_eq!(approved_names(&d), ["c"]);
}

#[test]
fn stale_or_other_release_status_never_counts_as_done() {
    let plan = plan(vec![wave("canary", "canary"), wave("rest", "rest")]);
    let mut members = vec![member("canary-1", "canary"), member("rest-1", "rest")];
    // Succeeded, but the primary still runs the previous revision: stale.
    canary(&mut members[0]).phase = Phase::Succeeded;
    let d = decide_waves(&plan, RELEASE, &[], &members, at(0));
    assert_ne!(state_of(&d, &members, "canary-1"), MemberState::Succeeded);
    assert_eq!(d.current_wave, Some(0));

    // Succeeded and promoted, but for another release.
    let c = canary(&mut members[0]);
    c.promoted_revision = c.revision.clone();
    c.release = Some(OLD_RELEASE.into());
    let d = decide_waves(&plan, RELEASE, &[], &members, at(0));
    assert_eq!(state_of(&d, &members, "canary-1"), MemberState::OtherRelease);
    assert!(d.approve.is_empty(), "a member at another release cannot be approved for this one");
    assert_eq!(d.waves[1].phase, WavePhase::Pending);

    // And it times out if it never picks the release up.
    let d = decide_waves(&plan, RELEASE, &d.waves, &members, at(30));
    assert_eq!(state_of(&d, &members, "canary-1"), MemberState::TimedOut);
}

#[test]
fn paused_approves_nothing_and_opens_nothing() {
    let (mut plan, mut members) = fleet();
    plan.paused = true;
    let d = decide_waves(&plan, RELEASE, &[], &members, at(0));
    assert!(d.approve.is_empty());
    assert_eq!(d.phase, RolloutPhase::Paused);
    assert!(d.waves.iter().all(|w| w.opened_at.is_none()));

    plan.paused = false;
    let d = decide_waves(&plan, RELEASE, &d.waves, &members, at(1));
    succeed(&mut members[2], at(1));
    plan.paused = true;
    let d = decide_waves(&plan, RELEASE, &d.waves, &members, at(2));
    assert!(d.approve.is_empty());
    assert_eq!(d.waves[0].phase, WavePhase::Succeeded, "observation continues while paused");
    assert_eq!(d.waves[1].opened_at, None);
}

#[test]
fn members_no_wave_selects_are_reported() {
    let (plan, mut members) = fleet();
    members.push(member("asia-1", "asia"));
    let d = decide_waves(&plan, RELEASE, &[], &members, at(0));
    assert_eq!(d.unassigned, ["asia-1"]);
    assert_eq!(state_of(&d, &members, "asia-1"), MemberState::Unassigned);
}

#[test]
fn a_missing_canary_blocks_its_wave_until_the_deadline() {
    let (plan, mut members) = fleet();
    members[2].canary = None;
    let d = decide_waves(&plan, RELEASE, &[], &members, at(0));
    assert!(d.approve.is_empty());
    let verdict = d.members.iter().find(|v| members[v.index].cluster == "canary-1").unwrap();
    assert!(verdict.message.contains("does not exist"), "{}", verdict.message);
    let d = decide_waves(&plan, RELEASE, &d.waves, &members, at(30));
    assert_eq!(d.timed_out, ["canary-1"]);
}

#[test]
fn an_approval_that_did_not_reach_the_member_is_written_again() {
    let (plan, mut members) = fleet();
    let d = decide_waves(&plan, RELEASE, &[], &members, at(0));
    members[2].approved_at = Some(at(0)); // recorded in the status, annotation not seen yet
    let d = decide_waves(&plan, RELEASE, &d.waves, &members, at(1));
    assert_eq!(approved_names(&d), ["canary-1"]);
    assert_eq!(state_of(&d, &members, "canary-1"), MemberState::Approved);
}

#[test]
fn the_status_records_approvals_counts_and_conditions() {
    let (plan, mut members) = fleet();
    members.push(member("asia-1", "asia"));
    let d = decide_waves(&plan, RELEASE, &[], &members, at(0));
    let status = build_status(&plan, RELEASE, Some(3), &members, &d, &[], at(0));
    assert_eq!(status.release.as_deref(), Some(RELEASE));
    assert_eq!(status.observed_generation, Some(3));
    assert_eq!(status.current_wave.as_deref(), Some("canary"));
    assert_eq!(status.summary.total, 5);
    assert_eq!(status.summary.unassigned, 1);
    assert_eq!(status.summary.pending, 4);
    assert_eq!(status.summary.waves_done, "0/3");
    let names: Vec<&str> = status.members.iter().map(|m| m.cluster.as_str()).collect();
    assert_eq!(names, ["canary-1", "eu-1", "eu-2", "us-1", "asia-1"], "by wave, then name");
    assert_eq!(status.members[0].approved_at, Some(at(0)));
    assert_eq!(status.members[1].approved_at, None);
    let progressing = status.conditions.iter().find(|c| c.type_ == "Progressing").unwrap();
    assert!(progressing.is_true());
    assert!(progressing.message.contains("asia-1"), "{}", progressing.message);

    // The next reconcile reads its history back from the status.
    let history = history_for_release(Some(&status), RELEASE);
    assert_eq!(history.approvals.get("canary-1"), Some(&at(0)));
    assert_eq!(history.waves, d.waves);
    assert_eq!(history_for_release(Some(&status), OLD_RELEASE), Default::default());

    // Transition times move only when a condition's status changes.
    members[2].approved_at = Some(at(0));
    fail(&mut members[2], at(0));
    let d = decide_waves(&plan, RELEASE, &history.waves, &members, at(9));
    let next = build_status(&plan, RELEASE, Some(3), &members, &d, &status.conditions, at(9));
    let time_of = |s: &petrel_api::RolloutStatus, t: &str| {
        s.conditions.iter().find(|c| c.type_ == t).unwrap().last_transition_time
    };
    assert_eq!(time_of(&next, "Complete"), at(0));
    assert_eq!(time_of(&next, "Degraded"), at(9));
    assert_eq!(next.summary.failed, 1);
    assert_eq!(next.phase, Some(RolloutPhase::Failed));
}

#[test]
fn wave_status_history_is_matched_by_name() {
    let (plan, members) = fleet();
    let history = vec![WaveStatus { opened_at: Some(at(0)), ..WaveStatus::pending("canary") }];
    let d = decide_waves(&plan, RELEASE, &history, &members, at(3));
    assert_eq!(d.waves[0].opened_at, Some(at(0)));
    assert_eq!(d.waves[1].opened_at, None);
}

#[test]
fn observations_are_read_from_the_cluster_the_canary_and_the_history() {
    use crate::fleet::{APPROVED_REVISION_ANNOTATION, ReleaseHistory};
    use petrel_api::cluster::{CONDITION_REACHABLE, ClusterSpec, ClusterStatus};
    use petrel_api::common::Condition;
    use petrel_api::{Canary, CanaryStatus, Cluster};

    let mut cluster = Cluster::new("eu-1", ClusterSpec::default());
    cluster.metadata.labels = Some([("region".to_string(), "eu".to_string())].into());
    cluster.status = Some(ClusterStatus {
        conditions: vec![Condition {
            type_: CONDITION_REACHABLE.into(),
            status: "True".into(),
            reason: "Contacted".into(),
            message: String::new(),
            last_transition_time: at(0),
            observed_generation: None,
        }],
        last_contact_time: Some(at(4)),
        ..ClusterStatus::default()
    });
    let mut canary: Canary = serde_json::from_value(serde_json::json!({
        "apiVersion": "petrel.dev/v1alpha1",
        "kind": "Canary",
        "metadata": {"name": "podinfo", "namespace": "test",
                     "annotations": {APPROVED_REVISION_ANNOTATION: "rev-2"}},
        "spec": {"targetRef": {"kind": "Deployment", "name": "podinfo"}, "service": {"port": 9898}}
    }))
    .unwrap();
    canary.status = Some(CanaryStatus {
        phase: Phase::Progressing,
        release: Some(RELEASE.into()),
        last_applied_spec: Some("rev-2".into()),
        last_promoted_spec: Some("rev-1".into()),
        canary_weight: 20,
        failed_checks: 1,
        ..CanaryStatus::default()
    });
    let history = ReleaseHistory { waves: vec![], approvals: [("eu-1".to_string(), at(3))].into() };

    let m = MemberObservation::from_objects(&cluster, Some(&canary), &history, IdentityVerdict::Verified);
    assert_eq!(m.cluster, "eu-1");
    assert_eq!(m.labels.get("region").map(String::as_str), Some("eu"));
    assert!(m.reachable);
    assert_eq!(m.last_contact, Some(at(4)));
    assert_eq!(m.approved_at, Some(at(3)));
    let c = m.canary.unwrap();
    assert_eq!(c.approved_revision.as_deref(), Some("rev-2"));
    assert_eq!((c.revision.as_deref(), c.promoted_revision.as_deref()), (Some("rev-2"), Some("rev-1")));
    assert_eq!((c.weight, c.failed_checks), (20, 1));
    assert!(!c.reports_promoted(RELEASE));

    cluster.status = None;
    let m = MemberObservation::from_objects(&cluster, None, &ReleaseHistory::default(), IdentityVerdict::Verified);
    assert!(!m.reachable, "a Cluster the hub never contacted is not reachable");
    assert_eq!(m.approved_at, None);
}

#[test]
fn a_waiting_canary_is_read_at_the_revision_it_waits_with() {
    let canary: petrel_api::Canary = serde_json::from_value(serde_json::json!({
        "apiVersion": "petrel.dev/v1alpha1",
        "kind": "Canary",
        "metadata": {"name": "podinfo", "namespace": "test"},
        "spec": {
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
            "service": {"port": 9898},
        },
        "status": {
            "phase": "Waiting",
            "lastAppliedSpec": "rev-1", "lastPromotedSpec": "rev-1", "release": OLD_RELEASE,
            "waitingRevision": "rev-2", "waitingRelease": RELEASE,
        },
    }))
    .unwrap();
    let c = CanaryObservation::from_canary(&canary);
    assert_eq!((c.revision.as_deref(), c.release.as_deref()), (Some("rev-2"), Some(RELEASE)));

    // Once it runs, the run fields count again (the waiting ones are left behind).
    let mut running = canary.clone();
    let status = running.status.as_mut().unwrap();
    status.phase = Phase::Progressing;
    status.last_applied_spec = Some("rev-3".into());
    let c = CanaryObservation::from_canary(&running);
    assert_eq!((c.revision.as_deref(), c.release.as_deref()), (Some("rev-3"), Some(OLD_RELEASE)));
}
