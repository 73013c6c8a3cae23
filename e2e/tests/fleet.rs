//! Fleet end to end: a hub and three real member control planes, each member running
//! the real `petrel` with its own simulator and Prometheus, the hub running
//! `petrel --mode hub` over `Cluster` objects and a `Rollout`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use petrel::api::canary::Phase;
use petrel::api::rollout::{MemberState, MemberStatus, RolloutPhase, RolloutStatus, WavePhase, WaveStatus};
use petrel_e2e::fleet_scenario::{
    CANARY_SOAK, FleetEnv, HubEvent, MEMBER_A, MEMBER_B, MEMBER_CANARY, Member, approved_revision, rollout_with,
    three_waves, wave,
};
use petrel_e2e::scenario::{IMAGE_V0, IMAGE_V1, IMAGE_V2, eventually};
use petrel_e2e::simulator::VersionBehaviour;
use petrel_e2e::wait::poll;
use serde_json::json;

const ALL: [&str; 3] = [MEMBER_CANARY, MEMBER_A, MEMBER_B];
const PROD: [&str; 2] = [MEMBER_A, MEMBER_B];
/// What the simulator matches the first release's image by.
const V1_TAG: &str = "podinfo:6.0.1";

/// Phases in which a member's Canary sends traffic to (or promotes) the new release.
fn releasing(phase: Phase) -> bool {
    matches!(phase, Phase::Progressing | Phase::WaitingPromotion | Phase::Promoting | Phase::Finalising)
}

/// Every member's (phase, hub approval annotation) at one sample.
type Sample = BTreeMap<String, (Phase, Option<String>)>;

/// What the test saw of every member, sampled every 200 ms after the release.
struct Timeline {
    release: Instant,
    /// Per member: (time since the release, phase), consecutive duplicates removed.
    phases: BTreeMap<String, Vec<(Duration, Phase)>>,
    /// Per member: the hub's approval annotation, consecutive duplicates removed.
    approvals: BTreeMap<String, Vec<Option<String>>>,
    /// Per member: (when, state) as the Rollout status said, consecutive duplicates removed.
    states: BTreeMap<String, Vec<(DateTime<Utc>, MemberState)>>,
    /// Samples where both prod members were releasing at once.
    concurrent_prod: Vec<Duration>,
    last_rollout: Option<RolloutStatus>,
}

impl Timeline {
    fn new(release: Instant) -> Self {
        Timeline {
            release,
            phases: BTreeMap::new(),
            approvals: BTreeMap::new(),
            states: BTreeMap::new(),
            concurrent_prod: Vec::new(),
            last_rollout: None,
        }
    }

    fn first(&self, member: &str, mut pred: impl FnMut(Phase) -> bool) -> Option<Duration> {
        self.phases.get(member)?.iter().find(|(_, p)| pred(*p)).map(|(t, _)| *t)
    }

    fn seen(&self, member: &str) -> Vec<Phase> {
        self.phases.get(member).map(|v| v.iter().map(|(_, p)| *p).collect()).unwrap_or_default()
    }

    /// When the Rollout status first showed `member` in `state`.
    fn first_state(&self, member: &str, state: MemberState) -> Option<DateTime<Utc>> {
        self.states.get(member)?.iter().find(|(_, s)| *s == state).map(|(t, _)| *t)
    }

    fn status(&self) -> &RolloutStatus {
        self.last_rollout.as_ref().expect("a Rollout status")
    }

    fn record(&mut self, sample: &Sample) {
        let at = self.release.elapsed();
        for (name, (phase, approval)) in sample {
            let phases = self.phases.entry(name.clone()).or_default();
            if phases.last().map(|(_, p)| p) != Some(phase) {
                phases.push((at, *phase));
            }
            let approvals = self.approvals.entry(name.clone()).or_default();
            if approvals.last() != Some(approval) {
                approvals.push(approval.clone());
            }
        }
        if PROD.iter().all(|m| sample.get(*m).is_some_and(|(p, _)| releasing(*p))) {
            self.concurrent_prod.push(at);
        }
        let now = Utc::now();
        for member in self.last_rollout.iter().flat_map(|r| &r.members) {
            let states = self.states.entry(member.cluster.clone()).or_default();
            if states.last().map(|(_, s)| *s) != Some(member.state) {
                states.push((now, member.state));
            }
        }
    }
}

/// Samples every member (phase, approval) and the Rollout status every 200 ms until
/// `done` holds (true) or `timeout` passes (false). Panics if an operator exits.
async fn follow_until(
    env: &mut FleetEnv,
    timeline: &mut Timeline,
    timeout: Duration,
    done: impl Fn(&Sample, Option<&RolloutStatus>) -> bool,
) -> bool {
    let reached = poll(Instant::now() + timeout, Duration::from_millis(200), async || {
        let mut sample = Sample::new();
        for member in &env.members {
            if let Ok(canary) = member.canary().await {
                let phase = canary.status.as_ref().map(|s| s.phase).unwrap_or_default();
                sample.insert(member.name.clone(), (phase, approved_revision(&canary)));
            }
        }
        if let Ok(rollout) = env.rollout().await {
            timeline.last_rollout = rollout.status;
        }
        timeline.record(&sample);
        if done(&sample, timeline.last_rollout.as_ref()) {
            return Ok::<_, Infallible>(Some(()));
        }
        assert!(env.operators_running(), "an operator exited\n{}", env.dump());
        Ok(None)
    })
    .await;
    reached == Ok(Some(()))
}

/// [`follow_until`], failing the test on timeout.
async fn follow(
    env: &mut FleetEnv,
    timeline: &mut Timeline,
    what: &str,
    timeout: Duration,
    done: impl Fn(&Sample, Option<&RolloutStatus>) -> bool,
) {
    if !follow_until(env, timeline, timeout, done).await {
        panic!(
            "timed out after {timeout:?} waiting for {what}; phases seen: {:?}\nrollout: {:#?}",
            timeline.phases, timeline.last_rollout
        );
    }
}

/// Watches for `quiet` and fails the test if one of `members` starts releasing: gives a
/// wave that wrongly opens time to show itself.
async fn assert_never_release(env: &mut FleetEnv, timeline: &mut Timeline, members: &[&str], quiet: Duration) {
    let released = follow_until(env, timeline, quiet, |now, _| {
        members.iter().any(|m| now.get(*m).is_some_and(|(p, _)| releasing(*p)))
    })
    .await;
    assert!(!released, "one of {members:?} released: {:?}", timeline.phases);
}

/// Releases `image` everywhere; the timeline starts with each member's approval
/// annotation from before the release.
async fn release_everywhere(env: &FleetEnv, image: &str) -> Timeline {
    let mut approvals = BTreeMap::new();
    for member in &env.members {
        let canary = member.canary().await.expect("the Canary before the release");
        approvals.insert(member.name.clone(), vec![approved_revision(&canary)]);
    }
    // As GitOps would: every member gets the new template at (nearly) the same time.
    let writes = env.members.iter().map(|m: &Member| m.set_image(image));
    futures::future::try_join_all(writes).await.expect("releasing the new image");
    Timeline { approvals, ..Timeline::new(Instant::now()) }
}

fn phase_is(sample: &Sample, member: &str, phase: Phase) -> bool {
    sample.get(member).is_some_and(|(p, _)| *p == phase)
}

fn rollout_phase_is(rollout: Option<&RolloutStatus>, phase: RolloutPhase) -> bool {
    rollout.is_some_and(|r| r.phase == Some(phase))
}

fn member_status<'a>(status: &'a RolloutStatus, name: &str) -> &'a MemberStatus {
    status.members.iter().find(|m| m.cluster == name).unwrap_or_else(|| panic!("{name} missing in {status:#?}"))
}

fn wave_status<'a>(status: &'a RolloutStatus, name: &str) -> &'a WaveStatus {
    status.waves.iter().find(|w| w.name == name).unwrap_or_else(|| panic!("wave {name} missing in {status:#?}"))
}

fn condition_true(status: &RolloutStatus, type_: &str) -> bool {
    status.conditions.iter().any(|c| c.type_ == type_ && c.status == "True")
}

/// How many times the hub published `reason` with a note containing `needle`.
fn occurrences(events: &[HubEvent], reason: &str, needle: &str) -> i32 {
    events.iter().filter(|e| e.reason == reason && e.note.contains(needle)).map(|e| e.count).sum()
}

/// A member that never took part in the release: no approval, no canary traffic, the
/// primary on the old image, still waiting at the gate.
async fn assert_untouched(member: &Member, timeline: &Timeline) {
    let name = &member.name;
    let canary = member.canary().await.expect("the Canary");
    assert_eq!(canary.status.as_ref().map(|s| s.phase), Some(Phase::Waiting), "{name} left Waiting");
    assert_eq!(approved_revision(&canary), None, "{name} was approved");
    let weights = member.canary_weights();
    assert!(weights.iter().all(|w| *w == 0), "{name} sent canary traffic: {weights:?}");
    assert!(timeline.first(name, releasing).is_none(), "{name} released: {:?}", timeline.seen(name));
    assert_eq!(member.image_of("podinfo-primary").await.expect("primary image"), IMAGE_V0, "{name}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn healthy_release_goes_canary_cluster_first_then_waves() {
    let t0 = Instant::now();
    let mut env = FleetEnv::start("healthy").await.expect("starting the fleet");
    let setup = t0.elapsed();

    let mut timeline = release_everywhere(&env, IMAGE_V1).await;
    follow(
        &mut env,
        &mut timeline,
        "every member and the Rollout to succeed",
        Duration::from_secs(240),
        |now, rollout| {
            ALL.iter().all(|m| phase_is(now, m, Phase::Succeeded)) && rollout_phase_is(rollout, RolloutPhase::Succeeded)
        },
    )
    .await;
    let run = timeline.release.elapsed();
    eprintln!("phases since the release: {:?}", timeline.phases);

    // The canary cluster succeeded before either prod member started releasing.
    let canary_done = timeline.first(MEMBER_CANARY, |p| p == Phase::Succeeded).expect("member-canary Succeeded");
    for prod in PROD {
        let seen = timeline.seen(prod);
        assert!(seen.contains(&Phase::Waiting), "{prod} never waited for the hub's approval: {seen:?}");
        let started = timeline.first(prod, releasing).unwrap_or_else(|| panic!("{prod} never released: {seen:?}"));
        assert!(
            started > canary_done,
            "{prod} released at {started:?}, before member-canary succeeded at {canary_done:?}"
        );
    }
    assert!(
        timeline.concurrent_prod.is_empty(),
        "both prod members released at once at {:?}",
        timeline.concurrent_prod
    );

    // The Rollout status: every member with its wave and state, the soak, one prod at a time.
    let status = timeline.status().clone();
    let member = |name: &str| member_status(&status, name);
    for (name, wave) in [(MEMBER_CANARY, "canary"), (MEMBER_A, "prod"), (MEMBER_B, "prod")] {
        let m = member(name);
        assert_eq!(m.wave.as_deref(), Some(wave), "{name}: {m:#?}");
        assert_eq!(m.state, MemberState::Succeeded, "{name}: {m:#?}");
        assert!(m.approved_at.is_some(), "{name} has no approval time: {m:#?}");
    }
    assert_eq!(status.members.len(), 3, "{status:#?}");
    let canary_wave = wave_status(&status, "canary");
    let canary_succeeded = canary_wave.succeeded_at.expect("canary wave succeededAt");
    let mut prod_approvals: Vec<_> = PROD.iter().map(|p| member(p).approved_at.expect("prod approval")).collect();
    prod_approvals.sort();
    let soak = chrono::Duration::from_std(CANARY_SOAK).expect("a small duration");
    assert!(
        prod_approvals[0] >= canary_succeeded + soak,
        "prod approved at {} before the soak ended (canary wave succeeded at {canary_succeeded})",
        prod_approvals[0]
    );
    assert!(prod_approvals[1] > prod_approvals[0], "prod approvals at the same time: {prod_approvals:?}");

    for name in ALL {
        let m = env.member(name);
        assert_eq!(m.image_of("podinfo-primary").await.expect("primary image"), IMAGE_V1, "{name}");
        let weights = m.canary_weights();
        assert!(weights.contains(&50), "{name} never sent 50% to the canary: {weights:?}");
        assert!(m.recorder.splits_not_summing_to(100).is_empty(), "{name}: splits not summing to 100");
    }
    eprintln!(
        "healthy fleet release: setup {setup:.1?}, release to all Succeeded {run:.1?}, total {:.1?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_release_in_the_canary_cluster_halts_the_fleet() {
    let t0 = Instant::now();
    let mut env = FleetEnv::start("failing").await.expect("starting the fleet");
    let setup = t0.elapsed();
    env.member(MEMBER_CANARY)
        .simulator
        .set_version(V1_TAG, VersionBehaviour::new(0.2, 20.0))
        .expect("making 6.0.1 fail on member-canary");

    let mut timeline = release_everywhere(&env, IMAGE_V1).await;
    follow(
        &mut env,
        &mut timeline,
        "member-canary and the Rollout to fail",
        Duration::from_secs(180),
        |now, rollout| phase_is(now, MEMBER_CANARY, Phase::Failed) && rollout_phase_is(rollout, RolloutPhase::Failed),
    )
    .await;
    assert_never_release(&mut env, &mut timeline, &PROD, Duration::from_secs(8)).await;
    let run = timeline.release.elapsed();
    eprintln!("phases since the release: {:?}", timeline.phases);

    let canary = env.member(MEMBER_CANARY);
    assert_eq!(canary.image_of("podinfo-primary").await.expect("primary image"), IMAGE_V0, "rolled back");
    let status = env.rollout().await.expect("the Rollout").status.expect("a Rollout status");
    let prod_wave = wave_status(&status, "prod");
    assert!(prod_wave.opened_at.is_none(), "the prod wave opened: {status:#?}");
    for prod in PROD {
        assert_untouched(env.member(prod), &timeline).await;
        let st = member_status(&status, prod);
        assert_eq!(st.state, MemberState::Pending, "{prod}: {st:#?}");
    }
    eprintln!("failing fleet release: setup {setup:.1?}, release to halted {run:.1?}, total {:.1?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollback_all_after_a_failure_in_wave_2_puts_every_member_back() {
    let t0 = Instant::now();
    let waves = three_waves(json!({"soak": "2s"}), json!({}), json!({}));
    let rollout = rollout_with(waves, json!({"onFailure": "RollbackAll"}));
    let mut env = FleetEnv::start_with("rollback-all", rollout).await.expect("starting the fleet");
    let setup = t0.elapsed();
    env.member(MEMBER_A)
        .simulator
        .set_version(V1_TAG, VersionBehaviour::new(0.2, 20.0))
        .expect("making 6.0.1 fail on member-a");

    let mut timeline = release_everywhere(&env, IMAGE_V1).await;
    follow(&mut env, &mut timeline, "member-a and the Rollout to fail", Duration::from_secs(180), |now, rollout| {
        phase_is(now, MEMBER_A, Phase::Failed) && rollout_phase_is(rollout, RolloutPhase::Failed)
    })
    .await;
    // member-canary promoted the release in wave 1; RollbackAll takes it back.
    let canary = env.member(MEMBER_CANARY);
    eventually("member-canary's primary to be back on the old image", Duration::from_secs(60), async || {
        (canary.image_of("podinfo-primary").await.ok()? == IMAGE_V0).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.dump()));
    assert_never_release(&mut env, &mut timeline, &[MEMBER_B], Duration::from_secs(8)).await;
    let run = timeline.release.elapsed();
    eprintln!("phases since the release: {:?}", timeline.phases);

    // The release really went out before the failure: member-canary promoted it, member-a
    // analysed it with live traffic.
    let canary_done = timeline.first(MEMBER_CANARY, |p| p == Phase::Succeeded).expect("member-canary Succeeded");
    let a_started = timeline.first(MEMBER_A, releasing).expect("member-a released");
    assert!(a_started > canary_done, "member-a released at {a_started:?}, before member-canary succeeded");
    assert!(env.member(MEMBER_A).canary_weights().iter().any(|w| *w > 0), "member-a sent no canary traffic");

    // Every member's primary runs the previous version.
    for name in ALL {
        let image = env.member(name).image_of("podinfo-primary").await.expect("primary image");
        assert_eq!(image, IMAGE_V0, "{name}'s primary is not on the previous version");
    }
    // wave-3 never opened: member-b never sent traffic to the failed release.
    assert_untouched(env.member(MEMBER_B), &timeline).await;

    let status = env.rollout().await.expect("the Rollout").status.expect("a Rollout status");
    assert_eq!(status.phase, Some(RolloutPhase::Failed), "{status:#?}");
    assert_eq!(status.release.as_deref(), Some(IMAGE_V1), "{status:#?}");
    assert!(condition_true(&status, "Degraded"), "no Degraded condition: {status:#?}");
    assert_eq!(wave_status(&status, "canary").phase, WavePhase::Succeeded, "{status:#?}");
    let wave_2 = wave_status(&status, "wave-2");
    assert_eq!((wave_2.phase, wave_2.failed), (WavePhase::Failed, 1), "{wave_2:#?}");
    let wave_3 = wave_status(&status, "wave-3");
    assert!(wave_3.opened_at.is_none() && wave_3.phase == WavePhase::Pending, "wave-3 opened: {wave_3:#?}");
    let rolled_back = member_status(&status, MEMBER_CANARY);
    assert!(
        rolled_back.message.contains("rolled back"),
        "status does not say member-canary was rolled back: {rolled_back:#?}"
    );
    assert!(!rolled_back.message.contains("rollback failed"), "{rolled_back:#?}");
    assert_eq!(member_status(&status, MEMBER_A).state, MemberState::Failed, "{status:#?}");
    assert_eq!(member_status(&status, MEMBER_B).state, MemberState::Pending, "{status:#?}");

    // Hub Events: the failure, and a rollback for each member that promoted (only
    // member-canary: member-a rolled itself back, member-b never got the release).
    let events = env.hub_events().await.expect("the hub's Events");
    let wave_failed = events.iter().find(|e| e.reason == "WaveFailed" && e.note.contains("wave-2"));
    assert!(wave_failed.is_some_and(|e| e.warning), "no WaveFailed warning for wave-2: {events:#?}");
    // Once: a primary the member's petrel put back on the release would be rolled back again.
    let rollbacks = occurrences(&events, "MemberRolledBack", &format!("cluster {MEMBER_CANARY}:"));
    assert_eq!(rollbacks, 1, "member-canary rolled back {rollbacks} times: {events:#?}");
    for name in PROD {
        assert_eq!(occurrences(&events, "MemberRolledBack", &format!("cluster {name}:")), 0, "{events:#?}");
    }
    assert_eq!(occurrences(&events, "MemberApproved", &format!("on cluster {MEMBER_B} ")), 0, "{events:#?}");
    eprintln!(
        "rollback-all fleet release: setup {setup:.1?}, release to rolled back {run:.1?}, total {:.1?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_release_mid_run_restarts_the_plan_from_the_canary_cluster() {
    let t0 = Instant::now();
    let rollout = rollout_with(three_waves(json!({"soak": "2s"}), json!({}), json!({})), json!({}));
    let mut env = FleetEnv::start_with("superseded", rollout).await.expect("starting the fleet");
    let setup = t0.elapsed();

    // 6.0.1 passes the canary cluster and reaches member-a in wave-2...
    let mut first = release_everywhere(&env, IMAGE_V1).await;
    follow(&mut env, &mut first, "member-a to release 6.0.1", Duration::from_secs(150), |now, _| {
        now.get(MEMBER_A).is_some_and(|(p, _)| releasing(*p))
    })
    .await;
    // ...when Git moves on to 6.0.2 on every member.
    let mut second = release_everywhere(&env, IMAGE_V2).await;
    follow(
        &mut env,
        &mut second,
        "every member and the Rollout to succeed with 6.0.2",
        Duration::from_secs(240),
        |now, rollout| {
            ALL.iter().all(|m| phase_is(now, m, Phase::Succeeded))
                && rollout_phase_is(rollout, RolloutPhase::Succeeded)
                && rollout.is_some_and(|r| r.release.as_deref() == Some(IMAGE_V2))
        },
    )
    .await;
    let run = second.release.elapsed();
    eprintln!("phases before 6.0.2: {:?}\nphases since 6.0.2: {:?}", first.phases, second.phases);

    // member-a dropped 6.0.1 at once: back at its gate, no canary traffic, never promoted.
    let a_seen = second.seen(MEMBER_A);
    let back_at_gate = a_seen.iter().position(|p| *p == Phase::Waiting);
    let before_gate =
        &a_seen[..back_at_gate.unwrap_or_else(|| panic!("member-a never went back to its gate: {a_seen:?}"))];
    assert!(before_gate.iter().all(|p| *p == Phase::Progressing), "member-a went on with 6.0.1: {a_seen:?}");
    // The plan started again from the canary cluster: each prod member released 6.0.2
    // only after member-canary succeeded with it. (A member's first samples after the
    // write may still show 6.0.1's run; 6.0.2's starts at the member's gate.)
    let after_gate = |member: &str, pred: fn(Phase) -> bool| {
        let phases = second.phases.get(member)?;
        let gate = phases.iter().position(|(_, p)| *p == Phase::Waiting)?;
        phases[gate..].iter().find(|(_, p)| pred(*p)).map(|(t, _)| *t)
    };
    let canary_done = after_gate(MEMBER_CANARY, |p| p == Phase::Succeeded).expect("member-canary Succeeded with 6.0.2");
    for prod in PROD {
        let seen = second.seen(prod);
        let started = after_gate(prod, releasing).unwrap_or_else(|| panic!("{prod} never released: {seen:?}"));
        assert!(started > canary_done, "{prod} released 6.0.2 at {started:?}, before member-canary at {canary_done:?}");
    }
    // member-b (wave-3) never received 6.0.1.
    assert!(first.first(MEMBER_B, releasing).is_none(), "member-b released 6.0.1: {:?}", first.seen(MEMBER_B));

    // Every primary runs 6.0.2; only member-canary ever promoted 6.0.1.
    for name in ALL {
        let member = env.member(name);
        assert_eq!(member.image_of("podinfo-primary").await.expect("primary image"), IMAGE_V2, "{name}");
        let canary = member.canary().await.expect("the Canary");
        let revisions = petrel::workloads::list_primary_revisions(&member.client, &canary).await.expect("revisions");
        let stored: Vec<&str> = revisions.iter().filter_map(petrel::workloads::stored_release).collect();
        assert_eq!(stored.contains(&IMAGE_V1), name == MEMBER_CANARY, "{name}'s stored primary releases: {stored:?}");
        assert!(member.recorder.splits_not_summing_to(100).is_empty(), "{name}: splits not summing to 100");
    }

    let status = env.rollout().await.expect("the Rollout").status.expect("a Rollout status");
    assert_eq!(status.release.as_deref(), Some(IMAGE_V2), "{status:#?}");
    for name in ALL {
        assert_eq!(member_status(&status, name).state, MemberState::Succeeded, "{status:#?}");
    }
    let events = env.hub_events().await.expect("the hub's Events");
    let superseded = format!("release {IMAGE_V2} supersedes {IMAGE_V1} mid-run");
    assert_eq!(occurrences(&events, "ReleaseStarted", &superseded), 1, "{events:#?}");
    let approved_b = occurrences(&events, "MemberApproved", &format!("on cluster {MEMBER_B} (release {IMAGE_V1})"));
    assert_eq!(approved_b, 0, "member-b was approved for 6.0.1: {events:#?}");
    eprintln!(
        "superseded fleet release: setup {setup:.1?}, 6.0.2 to all Succeeded {run:.1?}, total {:.1?}",
        t0.elapsed()
    );
}

/// member-a's progressDeadline in the unreachable scenarios.
const UNREACHABLE_DEADLINE: Duration = Duration::from_secs(20);

/// An unreachable-member run: member-a (alone in wave-2, `maxFailures` as given) had its
/// control plane stopped as soon as the hub approved it.
struct UnreachableRun {
    env: FleetEnv,
    timeline: Timeline,
    setup: Duration,
    /// When member-a's API server was gone.
    stopped_at: DateTime<Utc>,
    /// member-a's entry in the Rollout status when it was first reported Unreachable.
    seen_unreachable: MemberStatus,
}

/// Runs the scenario until the Rollout reaches `settles_as`, then checks what holds
/// whatever the budget: member-a reported Unreachable with its last contact, counted as
/// failed (TimedOut) only after its progressDeadline, and the hub reaching the others.
async fn stop_member_a_during_wave_2(name: &str, max_failures: u32, settles_as: RolloutPhase) -> UnreachableRun {
    let t0 = Instant::now();
    let wave_2 =
        json!({"progressDeadline": format!("{}s", UNREACHABLE_DEADLINE.as_secs()), "maxFailures": max_failures});
    let rollout = rollout_with(three_waves(json!({"soak": "2s"}), wave_2, json!({})), json!({}));
    let mut env = FleetEnv::start_with(name, rollout).await.expect("starting the fleet");
    let setup = t0.elapsed();

    let mut timeline = release_everywhere(&env, IMAGE_V1).await;
    follow(&mut env, &mut timeline, "the hub to approve member-a", Duration::from_secs(120), |now, _| {
        now.get(MEMBER_A).is_some_and(|(p, approval)| approval.is_some() || releasing(*p))
    })
    .await;
    env.stop_member_cluster(MEMBER_A).expect("stopping member-a's control plane");
    // Taken once the API server is gone: it answers while it shuts down.
    let stopped_at = Utc::now();
    eprintln!("[{name}] stopped member-a's control plane {:.1?} after the release", timeline.release.elapsed());

    let unreachable = |rollout: Option<&RolloutStatus>| {
        rollout.is_some_and(|r| r.members.iter().any(|m| m.cluster == MEMBER_A && m.state == MemberState::Unreachable))
    };
    follow(&mut env, &mut timeline, "member-a to be reported Unreachable", Duration::from_secs(60), |_, rollout| {
        unreachable(rollout)
    })
    .await;
    let seen_unreachable = member_status(timeline.status(), MEMBER_A).clone();
    follow(
        &mut env,
        &mut timeline,
        &format!("the Rollout to end {settles_as:?}"),
        Duration::from_secs(120),
        |_, rollout| rollout_phase_is(rollout, settles_as),
    )
    .await;
    eprintln!("[{name}] member-a states in the Rollout status: {:?}", timeline.states.get(MEMBER_A));

    // Unreachable, with the last time the hub reached it (before the stop).
    let last_contact = seen_unreachable.last_contact.expect("an Unreachable member shows its last contact");
    assert!(last_contact <= stopped_at, "last contact {last_contact} is after the stop at {stopped_at}");
    assert!(seen_unreachable.message.contains("unreachable"), "{seen_unreachable:#?}");

    // After its deadline (not before) it counts as failed.
    let status = timeline.status().clone();
    let a = member_status(&status, MEMBER_A);
    assert_eq!(a.state, MemberState::TimedOut, "{a:#?}");
    assert!(a.message.contains("progressDeadline"), "{a:#?}");
    let deadline = member_a_deadline(&status);
    let timed_out = timeline.first_state(MEMBER_A, MemberState::TimedOut).expect("member-a TimedOut");
    assert!(timed_out >= deadline, "member-a timed out at {timed_out}, before its deadline {deadline}");
    let wave_2 = wave_status(&status, "wave-2");
    assert_eq!(wave_2.failed, 1, "{wave_2:#?}");
    assert_eq!(member_status(&status, MEMBER_CANARY).state, MemberState::Succeeded, "{status:#?}");

    // The hub kept reaching the other members while member-a was down.
    for other in [MEMBER_CANARY, MEMBER_B] {
        let m = member_status(&status, other);
        assert!(m.last_contact.is_some_and(|t| t > stopped_at), "hub stopped reaching {other}: {m:#?}");
    }
    UnreachableRun { env, timeline, setup, stopped_at, seen_unreachable }
}

/// When member-a (approved in wave-2) counts as failed if it never finishes.
fn member_a_deadline(status: &RolloutStatus) -> DateTime<Utc> {
    let approved_at = member_status(status, MEMBER_A).approved_at.expect("member-a's approval time");
    approved_at + chrono::Duration::from_std(UNREACHABLE_DEADLINE).expect("a small duration")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_stopped_mid_run_times_out_and_max_failures_0_fails_its_wave() {
    let t0 = Instant::now();
    let run = stop_member_a_during_wave_2("unreachable-0", 0, RolloutPhase::Failed).await;
    let UnreachableRun { mut env, mut timeline, setup, .. } = run;
    assert_never_release(&mut env, &mut timeline, &[MEMBER_B], Duration::from_secs(8)).await;
    let elapsed = timeline.release.elapsed();

    // maxFailures 0: the timed-out member fails wave-2; wave-3 never opens.
    let status = timeline.status().clone();
    let wave_2 = wave_status(&status, "wave-2");
    assert_eq!(wave_2.phase, WavePhase::Failed, "{wave_2:#?}");
    assert!(wave_2.failed_at.is_some_and(|t| t >= member_a_deadline(&status)), "{wave_2:#?}");
    assert!(condition_true(&status, "Degraded"), "{status:#?}");
    let wave_3 = wave_status(&status, "wave-3");
    assert!(wave_3.opened_at.is_none(), "wave-3 opened: {wave_3:#?}");
    assert_untouched(env.member(MEMBER_B), &timeline).await;
    let events = env.hub_events().await.expect("the hub's Events");
    assert!(occurrences(&events, "WaveFailed", "wave-2") >= 1, "no WaveFailed Event: {events:#?}");
    eprintln!(
        "unreachable, maxFailures 0: setup {setup:.1?}, release to wave failed {elapsed:.1?}, total {:.1?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_stopped_mid_run_times_out_within_max_failures_1_and_the_release_goes_on() {
    let t0 = Instant::now();
    let run = stop_member_a_during_wave_2("unreachable-1", 1, RolloutPhase::Succeeded).await;
    let UnreachableRun { env, timeline, setup, stopped_at, seen_unreachable } = run;
    let elapsed = timeline.release.elapsed();

    // maxFailures 1: wave-2 succeeds with its one failure; wave-3 opens only then, and
    // member-b gets the release while member-a is still down.
    let status = timeline.status().clone();
    let deadline = member_a_deadline(&status);
    let wave_2 = wave_status(&status, "wave-2");
    assert_eq!(wave_2.phase, WavePhase::Succeeded, "{wave_2:#?}");
    assert!(
        wave_2.succeeded_at.is_some_and(|t| t >= deadline),
        "wave-2 succeeded before member-a's deadline: {wave_2:#?}"
    );
    let wave_3 = wave_status(&status, "wave-3");
    assert!(wave_3.opened_at.is_some_and(|t| t >= deadline), "wave-3 opened before member-a's deadline: {wave_3:#?}");
    assert!(!condition_true(&status, "Degraded"), "{status:#?}");
    let b = member_status(&status, MEMBER_B);
    assert_eq!(b.state, MemberState::Succeeded, "{b:#?}");
    assert!(b.last_contact.is_some_and(|t| t > stopped_at), "{b:#?}");
    assert_eq!(env.member(MEMBER_B).image_of("podinfo-primary").await.expect("primary image"), IMAGE_V1);
    assert!(timeline.first(MEMBER_B, releasing).is_some(), "member-b never released: {:?}", timeline.seen(MEMBER_B));
    // member-a stays counted as failed; it is not shown as a pass.
    assert_eq!(member_status(&status, MEMBER_A).state, MemberState::TimedOut, "{status:#?}");
    assert_eq!(status.summary.failed, 1, "{:#?}", status.summary);
    eprintln!("member-a when first unreachable: {seen_unreachable:?}");
    eprintln!(
        "unreachable, maxFailures 1: setup {setup:.1?}, release to all waves done {elapsed:.1?}, total {:.1?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_hub_killed_mid_run_resumes_without_repeating_or_skipping() {
    const SOAK: Duration = Duration::from_secs(10);
    // How long the hub stays down after each SIGKILL.
    const DOWN: Duration = Duration::from_secs(6);
    let t0 = Instant::now();
    let rollout = rollout_with(
        vec![
            wave("canary", ("role", "canary"), json!({"soak": format!("{}s", SOAK.as_secs())})),
            wave("prod", ("env", "prod"), json!({"maxConcurrency": 1})),
        ],
        json!({}),
    );
    let mut env = FleetEnv::start_with("hub-restart", rollout).await.expect("starting the fleet");
    let setup = t0.elapsed();

    let mut timeline = release_everywhere(&env, IMAGE_V1).await;
    // 1. Killed while the canary wave soaks.
    follow(&mut env, &mut timeline, "the canary wave to soak", Duration::from_secs(120), |_, rollout| {
        rollout_phase_is(rollout, RolloutPhase::Soaking)
    })
    .await;
    let soak_started = wave_status(timeline.status(), "canary").succeeded_at.expect("canary wave succeededAt");
    env.kill_hub();
    tokio::time::sleep(DOWN).await;
    let first_restart = Utc::now();
    env.restart_hub().expect("restarting the hub");
    eprintln!("hub SIGKILLed while soaking and restarted {:.1?} after the release", timeline.release.elapsed());

    // 2. Killed while the first prod member releases.
    follow(&mut env, &mut timeline, "a prod member to release", Duration::from_secs(90), |now, _| {
        PROD.iter().any(|m| now.get(*m).is_some_and(|(p, _)| releasing(*p)))
    })
    .await;
    let before_second_kill = timeline.status().clone();
    env.kill_hub();
    tokio::time::sleep(DOWN).await;
    env.restart_hub().expect("restarting the hub");
    eprintln!("hub SIGKILLed during the prod wave and restarted {:.1?} after the release", timeline.release.elapsed());

    follow(
        &mut env,
        &mut timeline,
        "every member and the Rollout to succeed",
        Duration::from_secs(150),
        |now, rollout| {
            ALL.iter().all(|m| phase_is(now, m, Phase::Succeeded)) && rollout_phase_is(rollout, RolloutPhase::Succeeded)
        },
    )
    .await;
    let run = timeline.release.elapsed();
    eprintln!("phases since the release: {:?}\napprovals: {:?}", timeline.phases, timeline.approvals);
    let status = timeline.status().clone();

    // The soak was neither restarted nor skipped.
    let canary_wave = wave_status(&status, "canary");
    assert_eq!(canary_wave.succeeded_at, Some(soak_started), "the soak restarted: {canary_wave:#?}");
    let soak = chrono::Duration::from_std(SOAK).expect("a small duration");
    let first_prod_approval =
        PROD.iter().filter_map(|p| member_status(&status, p).approved_at).min().expect("prod approved");
    assert!(
        first_prod_approval >= soak_started + soak,
        "prod approved at {first_prod_approval}, before the soak from {soak_started} ended"
    );
    assert!(
        first_prod_approval < first_restart + soak,
        "prod approved at {first_prod_approval}: the soak restarted with the hub at {first_restart}"
    );

    // Each member approved once, for the revision it released; approvals recorded before
    // the second kill kept their time.
    let events = env.hub_events().await.expect("the hub's Events");
    for name in ALL {
        let canary = env.member(name).canary().await.expect("the Canary");
        let revision = canary.status.as_ref().and_then(|s| s.last_applied_spec.clone()).expect("a released revision");
        // The first entry is the annotation from before the release.
        let seen = timeline.approvals.get(name).cloned().unwrap_or_default();
        assert_eq!(seen.get(1..), Some(&[Some(revision.clone())][..]), "{name}: approval annotations seen {seen:?}");
        let approved = occurrences(&events, "MemberApproved", &format!("on cluster {name} (release {IMAGE_V1})"));
        assert_eq!(approved, 1, "{name} approved {approved} times: {events:#?}");
        let m = member_status(&status, name);
        assert_eq!(m.revision.as_ref(), Some(&revision), "{m:#?}");
        if let Some(before) = member_status(&before_second_kill, name).approved_at {
            assert_eq!(m.approved_at, Some(before), "{name}'s approval time changed across the restart");
        }
        assert_eq!(env.member(name).image_of("podinfo-primary").await.expect("primary image"), IMAGE_V1, "{name}");
    }
    assert!(
        timeline.concurrent_prod.is_empty(),
        "both prod members released at once at {:?}",
        timeline.concurrent_prod
    );
    eprintln!("hub restarts: setup {setup:.1?}, release to all Succeeded {run:.1?}, total {:.1?}", t0.elapsed());
}

/// Runs the real `kubectl petrel` against the hub; panics with its output when it fails.
async fn plugin_on_hub(env: &FleetEnv, args: &[&str]) -> String {
    let binary = tokio::task::spawn_blocking(petrel_e2e::scenario::plugin_binary).await.unwrap().unwrap();
    let hub = env.fleet.cluster(petrel_e2e::fleet_scenario::HUB).unwrap();
    let out = tokio::process::Command::new(binary)
        .arg("--kubeconfig")
        .arg(&hub.kubeconfig_path)
        .args(["-n", petrel_e2e::fleet_scenario::HUB_NAMESPACE])
        .args(args)
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "kubectl petrel {args:?} failed: {stdout}{stderr}");
    stdout.into_owned()
}

/// The member's identity ConfigMap (in petrel's default namespace there).
async fn state_identity(member: &Member, labels: serde_json::Value) {
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
    use kube::api::{Api, Patch, PatchParams};
    let ssa = PatchParams::apply("e2e-test").force();
    Api::<Namespace>::all(member.client.clone())
        .patch(
            "petrel-system",
            &ssa,
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "petrel-system"}})),
        )
        .await
        .unwrap();
    Api::<ConfigMap>::namespaced(member.client.clone(), "petrel-system")
        .patch(
            "petrel-cluster-identity",
            &ssa,
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "petrel-cluster-identity"}, "data": labels})),
        )
        .await
        .unwrap();
}

async fn cluster_identity_condition(env: &FleetEnv, name: &str) -> Option<(String, String)> {
    let cluster = kube::Api::<petrel::api::Cluster>::all(env.hub.clone()).get(name).await.ok()?;
    let condition = cluster.status?.conditions.into_iter().find(|c| c.type_ == "IdentityVerified")?;
    Some((condition.reason, condition.message))
}

async fn member_state(env: &FleetEnv, name: &str) -> Option<(MemberState, String)> {
    let status = env.rollout().await.ok()?.status?;
    status.members.into_iter().find(|m| m.cluster == name).map(|m| (m.state, m.message))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_that_is_not_who_its_cluster_says_is_never_approved() {
    use k8s_openapi::api::events::v1::Event;
    use kube::api::{Api, ListParams, Patch, PatchParams};
    use petrel::api::Cluster;

    let waves = |wave_3: serde_json::Value| three_waves(json!({"soak": "1s"}), json!({}), wave_3);
    let mut env = FleetEnv::start_with("identity", rollout_with(waves(json!({})), json!({}))).await.unwrap();
    let clusters: Api<Cluster> = Api::all(env.hub.clone());
    let hub_ssa = PatchParams::apply("e2e-test").force();
    // From now on member-b's wave is Manual, so the test decides when it opens.
    let manual = rollout_with(waves(json!({"approval": "Manual", "maxFailures": 0})), json!({}));
    Api::<petrel::api::Rollout>::namespaced(env.hub.clone(), petrel_e2e::fleet_scenario::HUB_NAMESPACE)
        .patch(petrel_e2e::fleet_scenario::ROLLOUT, &hub_ssa, &Patch::Apply(manual))
        .await
        .unwrap();

    // Every member starts verified: petrel there publishes its --cluster-name and the
    // kube-system UID, which the hub pinned on first contact.
    for name in ALL {
        eventually(&format!("{name} verified"), Duration::from_secs(60), async || {
            (cluster_identity_condition(&env, name).await?.0 == "Verified").then_some(())
        })
        .await
        .unwrap();
    }

    // member-b's Cluster says eu-west; the platform team's ConfigMap there says us-east.
    clusters
        .patch(MEMBER_B, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"region": "eu-west"}}})))
        .await
        .unwrap();
    state_identity(env.member(MEMBER_B), json!({"region": "us-east", "env": "prod"})).await;
    let (_, message) = eventually("member-b's identity mismatch", Duration::from_secs(60), async || {
        cluster_identity_condition(&env, MEMBER_B).await.filter(|(reason, _)| reason == "IdentityMismatch")
    })
    .await
    .unwrap();
    assert!(message.contains("region: the member says \"us-east\", the Cluster says \"eu-west\""), "{message}");

    // A release: the canary cluster and member-a take it; member-b is shown why not.
    for member in &env.members {
        member.set_image(IMAGE_V1).await.unwrap();
    }
    let (state, message) = eventually("member-b shown as IdentityMismatch", Duration::from_secs(120), async || {
        let status = env.rollout().await.ok()?.status?;
        let done = [MEMBER_CANARY, MEMBER_A]
            .iter()
            .all(|m| status.members.iter().any(|s| s.cluster == *m && s.state == MemberState::Succeeded));
        let b = status.members.iter().find(|m| m.cluster == MEMBER_B)?;
        (done && b.state == MemberState::IdentityMismatch).then(|| (b.state, b.message.clone()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.dump()));
    assert_eq!(state, MemberState::IdentityMismatch);
    assert!(message.contains("region"), "{message}");
    // Opening its wave does not approve it: it counts against maxFailures 0.
    plugin_on_hub(&env, &["approve", "podinfo", "wave-3"]).await;
    eventually("the Rollout to fail on the mismatch", Duration::from_secs(60), async || {
        (env.rollout().await.ok()?.status?.phase == Some(RolloutPhase::Failed)).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.dump()));
    let b = env.member(MEMBER_B).canary().await.unwrap();
    assert_eq!(b.status.as_ref().map(|s| s.phase), Some(Phase::Waiting), "member-b never started the release");
    let waiting = b.status.as_ref().and_then(|s| s.waiting_revision.clone());
    assert!(
        waiting.is_some() && approved_revision(&b) != waiting,
        "member-b was approved: {:?}",
        approved_revision(&b)
    );
    let cluster_events: Vec<String> = Api::<Event>::namespaced(env.hub.clone(), "default")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().is_some_and(|r| r.kind.as_deref() == Some("Cluster")))
        .filter_map(|e| e.reason)
        .collect();
    assert!(cluster_events.iter().any(|r| r == "IdentityMismatch"), "{cluster_events:?}");

    // The ConfigMap is fixed, but member-b's pinned UID no longer matches (edited by hand,
    // as if the cluster had been rebuilt since): still never approved, until re-pinned.
    state_identity(env.member(MEMBER_B), json!({"region": "eu-west", "env": "prod"})).await;
    let status_ssa = PatchParams::apply("e2e-hand-edit").force();
    clusters
        .patch_status(
            MEMBER_B,
            &status_ssa,
            &Patch::Apply(json!({"apiVersion": "petrel.dev/v1alpha1", "kind": "Cluster",
            "status": {"identity": {"pinnedUID": "uid-before-the-rebuild"}}})),
        )
        .await
        .unwrap();
    let (_, message) = eventually("member-b's UID mismatch", Duration::from_secs(60), async || {
        cluster_identity_condition(&env, MEMBER_B).await.filter(|(_, m)| m.contains("pinned uid-before-the-rebuild"))
    })
    .await
    .unwrap();
    assert!(message.contains("kubectl petrel repin member-b"), "{message}");
    for member in &env.members {
        member.set_image(IMAGE_V2).await.unwrap();
    }
    eventually("V2 up to the Manual wave, member-b mismatched", Duration::from_secs(120), async || {
        let status = env.rollout().await.ok()?.status?;
        (status.release.as_deref() == Some(IMAGE_V2) && status.phase == Some(RolloutPhase::WaitingApproval))
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.dump()));
    assert_eq!(member_state(&env, MEMBER_B).await.map(|s| s.0), Some(MemberState::IdentityMismatch));

    let said = plugin_on_hub(&env, &["repin", MEMBER_B]).await;
    assert!(said.contains("asked the hub to pin kube-system UID"), "{said}");
    eventually("member-b verified again", Duration::from_secs(60), async || {
        (cluster_identity_condition(&env, MEMBER_B).await?.0 == "Verified").then_some(())
    })
    .await
    .unwrap();
    plugin_on_hub(&env, &["approve", "podinfo", "wave-3"]).await;
    eventually("member-b to take V2 once re-pinned", Duration::from_secs(120), async || {
        (member_state(&env, MEMBER_B).await?.0 == MemberState::Succeeded).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.dump()));

    // Two Clusters whose kubeconfigs reach one member make the Rollout invalid.
    clusters
        .patch(
            "member-a-again",
            &hub_ssa,
            &Patch::Apply(json!({"apiVersion": "petrel.dev/v1alpha1", "kind": "Cluster",
            "metadata": {"name": "member-a-again", "labels": {"copy": "yes"}},
            "spec": {"kubeconfigSecretRef": {"name": "member-a-kubeconfig", "namespace": "petrel-system"}}})),
        )
        .await
        .unwrap();
    let valid = eventually("the Rollout invalid", Duration::from_secs(60), async || {
        let status = env.rollout().await.ok()?.status?;
        status.conditions.into_iter().find(|c| c.type_ == "Valid" && c.reason == "ClustersShareIdentity")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.dump()));
    assert!(valid.message.contains("member-a and member-a-again"), "{}", valid.message);
    assert!(env.operators_running(), "an operator exited:\n{}", env.dump());
}

/// The hub's `/metrics` lines starting with `prefix`.
async fn hub_metrics(env: &FleetEnv, prefix: &str) -> Vec<String> {
    let addr = petrel_e2e::scenario::metrics_addr_in_log(&env.hub_log()).expect("the hub's metrics address");
    let text = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
    text.lines().filter(|l| l.starts_with(prefix)).map(String::from).collect()
}

/// Issue 17, parts 2 and 3 on one fleet: the release inventory after two releases with
/// member-b held back (it failed the second within its wave's budget), who approved
/// the manual wave, the metrics; then the blast radius of a bad release: the canary
/// cluster (5% of the fleet's traffic) rolls it back, the fleet halts, and no member of
/// a wave that never opened answered a single request with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fleet_inventory_shows_who_drifted_and_a_bad_release_stays_in_the_canary_cluster() {
    use kube::api::{Api, Patch, PatchParams};
    use petrel::api::rollout::ReleaseOutcome;
    use petrel_e2e::blast::BlastRadius;

    let t0 = Instant::now();
    let waves = |wave_2: serde_json::Value| three_waves(json!({"soak": "1s"}), wave_2, json!({"maxFailures": 1}));
    let mut env = FleetEnv::start_with("inventory", rollout_with(waves(json!({})), json!({}))).await.unwrap();
    let setup = t0.elapsed();
    // From now on wave-2 waits for a person; member-b fails 6.0.1 (within wave-3's budget).
    let manual = rollout_with(waves(json!({"approval": "Manual"})), json!({}));
    Api::<petrel::api::Rollout>::namespaced(env.hub.clone(), petrel_e2e::fleet_scenario::HUB_NAMESPACE)
        .patch(petrel_e2e::fleet_scenario::ROLLOUT, &PatchParams::apply("e2e-test").force(), &Patch::Apply(manual))
        .await
        .unwrap();
    env.member(MEMBER_B).simulator.set_version(V1_TAG, VersionBehaviour::new(0.2, 20.0)).unwrap();

    let mut timeline = release_everywhere(&env, IMAGE_V1).await;
    follow(&mut env, &mut timeline, "wave-2 to wait for its approval", Duration::from_secs(120), |_, rollout| {
        rollout_phase_is(rollout, RolloutPhase::WaitingApproval)
            && rollout.is_some_and(|r| r.current_wave.as_deref() == Some("wave-2"))
    })
    .await;
    let said = plugin_on_hub(&env, &["approve", "podinfo", "wave-2"]).await;
    assert!(said.contains("recorded as approved by petrel-e2e-admin"), "{said}");
    follow(
        &mut env,
        &mut timeline,
        "6.0.1 to succeed with member-b held back",
        Duration::from_secs(180),
        |_, rollout| {
            rollout.is_some_and(|r| r.release.as_deref() == Some(IMAGE_V1) && r.phase == Some(RolloutPhase::Succeeded))
        },
    )
    .await;
    let status = timeline.status().clone();
    assert_eq!(member_status(&status, MEMBER_B).state, MemberState::Failed, "{status:#?}");
    let record = &status.history[0];
    assert_eq!((record.release.as_str(), record.outcome), (IMAGE_V1, ReleaseOutcome::Succeeded), "{status:#?}");
    assert_eq!((status.history[1].release.as_str(), status.history[1].outcome), (IMAGE_V0, ReleaseOutcome::Succeeded));
    let wave_2 = record.waves.iter().find(|w| w.name == "wave-2").unwrap();
    assert_eq!(wave_2.approved_by.as_deref(), Some("petrel-e2e-admin"), "{record:#?}");
    assert!(wave_2.opened_at.is_some() && wave_2.finished_at >= wave_2.opened_at, "{record:#?}");
    let entry =
        |status: &RolloutStatus, name: &str| status.inventory.iter().find(|e| e.cluster == name).cloned().unwrap();
    for name in [MEMBER_CANARY, MEMBER_A] {
        let e = entry(&status, name);
        assert_eq!((e.release.as_deref(), e.previous_release.as_deref()), (Some(IMAGE_V1), Some(IMAGE_V0)), "{e:#?}");
    }
    assert_eq!(entry(&status, MEMBER_B).release.as_deref(), Some(IMAGE_V0), "member-b rolled itself back");

    // A moment later, `kubectl petrel fleet` shows member-b drifted, with its age.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fleet = plugin_on_hub(&env, &["fleet", "podinfo"]).await;
    eprintln!("kubectl petrel fleet podinfo:\n{fleet}");
    let row = |name: &str| fleet.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_default().to_string();
    assert!(row(MEMBER_B).contains("podinfo:6.0.0") && row(MEMBER_B).contains("*drifted "), "{fleet}");
    for name in [MEMBER_CANARY, MEMBER_A] {
        assert!(row(name).contains("podinfo:6.0.1") && !row(name).contains("drifted"), "{fleet}");
    }
    assert!(fleet.contains(&format!("drifted                 {MEMBER_B} runs {IMAGE_V0}")), "{fleet}");
    assert!(fleet.contains("approved by petrel-e2e-admin"), "{fleet}");
    let releases = hub_metrics(&env, "petrel_fleet_member_release{").await;
    let b_runs = format!(r#"cluster="{MEMBER_B}",release="{IMAGE_V0}"}} 1"#);
    assert!(releases.iter().any(|l| l.ends_with(&b_runs)), "{releases:#?}");
    let drift = hub_metrics(&env, "petrel_fleet_member_drift_seconds{").await;
    let b_drift: f64 = drift
        .iter()
        .find(|l| l.contains(&format!(r#"cluster="{MEMBER_B}""#)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no drift series for member-b: {drift:#?}"));
    assert!(b_drift > 0.0, "{drift:#?}");

    // The plan's worst case: the canary cluster's 5% × its Canary's maxWeight 50%.
    let plan = plugin_on_hub(&env, &["plan", "podinfo"]).await;
    let worst = plan.lines().find(|l| l.contains("worst case")).unwrap_or_default();
    assert!(
        worst.contains(&format!("2.5% of the fleet's traffic served by a bad release before the first wave fails ({MEMBER_CANARY} 5% × maxWeight 50%)")),
        "{plan}"
    );

    // The bad release: 6.0.2 fails 20% in the canary cluster.
    env.member(MEMBER_CANARY).simulator.set_version("podinfo:6.0.2", VersionBehaviour::new(0.2, 20.0)).unwrap();
    let before = env.traffic_counts().unwrap();
    let mut timeline = release_everywhere(&env, IMAGE_V2).await;
    follow(&mut env, &mut timeline, "the fleet to halt 6.0.2", Duration::from_secs(120), |_, rollout| {
        rollout.is_some_and(|r| r.release.as_deref() == Some(IMAGE_V2) && r.phase == Some(RolloutPhase::Failed))
    })
    .await;
    let halted = env.traffic_counts().unwrap();
    let took = timeline.release.elapsed();
    // Watch a little longer: a wave opening late would show here.
    assert_never_release(&mut env, &mut timeline, &PROD, Duration::from_secs(6)).await;
    let radius = BlastRadius::between(&before, &halted, "podinfo:6.0.2");
    eprintln!("{radius}(from the release to the halt: {took:.1?})");
    for name in PROD {
        assert_eq!(radius.bad_in(name), Some(0), "{name} answered requests with the bad release:\n{radius}");
    }
    let later = BlastRadius::between(&before, &env.traffic_counts().unwrap(), "podinfo:6.0.2");
    assert_eq!(later.fleet_bad(), radius.fleet_bad(), "the bad release answered requests after the halt:\n{later}");
    assert!(radius.bad_in(MEMBER_CANARY).unwrap() > 0, "the canary cluster never tried the release:\n{radius}");
    let status = env.rollout().await.unwrap().status.unwrap();
    assert_eq!(status.history[0].outcome, ReleaseOutcome::Failed, "{status:#?}");
    assert_eq!(entry(&status, MEMBER_CANARY).release.as_deref(), Some(IMAGE_V1), "the canary cluster rolled back");
    eprintln!(
        "fleet inventory and blast radius: setup {setup:.1?}, bad release to halt {took:.1?}, total {:.1?}; \
         {:.3}% of fleet requests answered by the bad release",
        t0.elapsed(),
        radius.fraction() * 100.0
    );
}

/// Members measure their own request rate (`--traffic-rate-query` against their
/// Prometheus, which scrapes their simulator: 5/30/65% of 2,000 requests/s); the hub
/// copies it into the Clusters' status; with the prod members' labels taken away,
/// `kubectl petrel plan` shares the fleet by the measured rates and names the sources.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_measure_their_traffic_and_the_plan_shares_the_fleet_by_it() {
    use kube::api::{Api, Patch, PatchParams};
    use petrel::fleet::traffic::{MemberShare, ShareSource, StatedTraffic, TRAFFIC_SHARE_LABEL, member_shares};
    let t0 = Instant::now();
    let env = FleetEnv::start_measuring_traffic("measured").await.expect("fleet");
    let setup = t0.elapsed();
    let clusters: Api<petrel::api::Cluster> = Api::all(env.hub.clone());
    for name in PROD {
        let unlabel = json!({"metadata": {"labels": {TRAFFIC_SHARE_LABEL: null}}});
        clusters.patch(name, &PatchParams::default(), &Patch::Merge(&unlabel)).await.unwrap();
    }
    // Each member's rate, as the hub copied it. A member publishes every 60 s, and its
    // first measurements cover the time before its routes carried traffic, so the wait is
    // for the measurements to reach the simulator's rate (the last ones seen are printed if
    // they never do).
    let since = Utc::now();
    let expected_rate = |name: &str| {
        petrel_e2e::fleet_scenario::FLEET_REQUESTS_PER_SECOND
            * f64::from(petrel_e2e::fleet_scenario::traffic_share(name))
            / 100.0
    };
    let mut last_seen = BTreeMap::new();
    let measured =
        eventually("every Cluster's measured request rate within 10%", Duration::from_secs(240), async || {
            let mut rates = BTreeMap::new();
            for name in ALL {
                let traffic = clusters.get(name).await.ok()?.status?.traffic?;
                last_seen.insert(name, traffic.clone());
                let rps = traffic.requests_per_second?;
                (traffic.measured_at? > since && (rps - expected_rate(name)).abs() <= expected_rate(name) * 0.1)
                    .then_some(())?;
                rates.insert(name, traffic);
            }
            Some(rates)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}; last seen {last_seen:?}\n{}", env.dump()));
    let waited = t0.elapsed() - setup;
    for (name, rate) in &measured {
        let rps = rate.requests_per_second.unwrap_or_default();
        eprintln!("{name}: measured {rps:.1} requests/s (simulator sends {})", expected_rate(name));
        assert!(rate.error.is_none(), "{name}: {rate:?}");
    }

    let listed = clusters.list(&Default::default()).await.unwrap().items;
    let stated: Vec<(&str, StatedTraffic<'_>)> = ALL
        .iter()
        .map(|name| {
            let c = listed.iter().find(|c| c.metadata.name.as_deref() == Some(*name)).unwrap();
            let rate = c.status.as_ref().and_then(|s| s.traffic.as_ref());
            (*name, StatedTraffic { labels: c.metadata.labels.as_ref().unwrap(), rate })
        })
        .collect();
    let (shares, problems) = member_shares(&stated, Utc::now());
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(shares[0], MemberShare::Known { percent: 5.0, source: ShareSource::Label }, "the label wins");
    for (share, expected) in shares[1..].iter().zip([30.0, 65.0]) {
        let MemberShare::Known { percent, source: ShareSource::Metric } = share else { panic!("{shares:?}") };
        assert!((percent - expected).abs() <= 3.0, "{shares:?}");
    }

    let plan = plugin_on_hub(&env, &["plan", "podinfo"]).await;
    eprintln!("{plan}");
    assert!(plan.contains("member-canary  5% (label)"), "{plan}");
    for name in PROD {
        assert!(plan.lines().any(|l| l.contains(name) && l.contains("% (metric, ")), "{name}: {plan}");
    }
    let worst = plan.lines().find(|l| l.contains("worst case")).unwrap_or_else(|| panic!("{plan}"));
    assert!(!worst.contains("unknown"), "{plan}");
    eprintln!(
        "measured shares: {:?}; setup {setup:.1?}, rates published and copied {waited:.1?}, total {:.1?}",
        shares.iter().map(|s| s.percent().map(petrel::fleet::traffic::percent)).collect::<Vec<_>>(),
        t0.elapsed()
    );
}
