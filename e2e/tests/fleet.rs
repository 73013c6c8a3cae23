//! Fleet end to end: a hub and three real member control planes, each member running
//! the real `petrel` with its own simulator and Prometheus, the hub running
//! `petrel --mode hub` over `Cluster` objects and a `Rollout`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use petrel::api::canary::Phase;
use petrel::api::rollout::{MemberState, RolloutPhase, RolloutStatus};
use petrel_e2e::fleet_scenario::{CANARY_SOAK, FleetEnv, MEMBER_A, MEMBER_B, MEMBER_CANARY, Member, approved_revision};
use petrel_e2e::scenario::{IMAGE_V0, IMAGE_V1};
use petrel_e2e::simulator::VersionBehaviour;

const ALL: [&str; 3] = [MEMBER_CANARY, MEMBER_A, MEMBER_B];
const PROD: [&str; 2] = [MEMBER_A, MEMBER_B];

/// Phases in which a member's Canary sends traffic to (or promotes) the new release.
fn releasing(phase: Phase) -> bool {
    matches!(phase, Phase::Progressing | Phase::WaitingPromotion | Phase::Promoting | Phase::Finalising)
}

/// What the test saw of every member, sampled every 200 ms after the release.
#[derive(Default)]
struct Timeline {
    /// Per member: (time since the release, phase), consecutive duplicates removed.
    phases: BTreeMap<String, Vec<(Duration, Phase)>>,
    /// Samples where both prod members were releasing at once.
    concurrent_prod: Vec<Duration>,
    last_rollout: Option<RolloutStatus>,
}

impl Timeline {
    fn first(&self, member: &str, mut pred: impl FnMut(Phase) -> bool) -> Option<Duration> {
        self.phases.get(member)?.iter().find(|(_, p)| pred(*p)).map(|(t, _)| *t)
    }

    fn seen(&self, member: &str) -> Vec<Phase> {
        self.phases.get(member).map(|v| v.iter().map(|(_, p)| *p).collect()).unwrap_or_default()
    }
}

/// Samples every member's phase (and the Rollout status) until `done` holds or `timeout`.
async fn follow(
    env: &mut FleetEnv,
    release: Instant,
    timeout: Duration,
    done: impl Fn(&BTreeMap<String, (Phase, Option<String>)>, Option<&RolloutStatus>) -> bool,
) -> Timeline {
    let mut timeline = Timeline::default();
    let deadline = Instant::now() + timeout;
    loop {
        let mut now: BTreeMap<String, (Phase, Option<String>)> = BTreeMap::new();
        for member in &env.members {
            if let Ok(canary) = member.canary().await {
                let phase = canary.status.as_ref().map(|s| s.phase).unwrap_or_default();
                now.insert(member.name.clone(), (phase, approved_revision(&canary)));
                let seen = timeline.phases.entry(member.name.clone()).or_default();
                if seen.last().map(|(_, p)| *p) != Some(phase) {
                    seen.push((release.elapsed(), phase));
                }
            }
        }
        if PROD.iter().all(|m| now.get(*m).is_some_and(|(p, _)| releasing(*p))) {
            timeline.concurrent_prod.push(release.elapsed());
        }
        if let Ok(rollout) = env.rollout().await {
            timeline.last_rollout = rollout.status;
        }
        if done(&now, timeline.last_rollout.as_ref()) {
            return timeline;
        }
        assert!(env.operators_running(), "an operator exited\n{}", env.dump());
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?}; phases seen: {:?}\nrollout: {:#?}",
                timeline.phases, timeline.last_rollout
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn release_everywhere(env: &FleetEnv, image: &str) -> Instant {
    // As GitOps would: every member gets the new template at (nearly) the same time.
    let writes = env.members.iter().map(|m: &Member| m.set_image(image));
    futures::future::try_join_all(writes).await.expect("releasing the new image");
    Instant::now()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn healthy_release_goes_canary_cluster_first_then_waves() {
    let t0 = Instant::now();
    let mut env = FleetEnv::start("healthy").await.expect("starting the fleet");
    let setup = t0.elapsed();

    let release = release_everywhere(&env, IMAGE_V1).await;
    let timeline = follow(&mut env, release, Duration::from_secs(240), |now, rollout| {
        ALL.iter().all(|m| now.get(*m).is_some_and(|(p, _)| *p == Phase::Succeeded))
            && rollout.is_some_and(|r| r.phase == Some(RolloutPhase::Succeeded))
    })
    .await;
    let run = release.elapsed();
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
    let status = timeline.last_rollout.clone().expect("a Rollout status");
    let member = |name: &str| {
        status.members.iter().find(|m| m.cluster == name).unwrap_or_else(|| panic!("{name} missing in {status:#?}"))
    };
    for (name, wave) in [(MEMBER_CANARY, "canary"), (MEMBER_A, "prod"), (MEMBER_B, "prod")] {
        let m = member(name);
        assert_eq!(m.wave.as_deref(), Some(wave), "{name}: {m:#?}");
        assert_eq!(m.state, MemberState::Succeeded, "{name}: {m:#?}");
        assert!(m.approved_at.is_some(), "{name} has no approval time: {m:#?}");
    }
    assert_eq!(status.members.len(), 3, "{status:#?}");
    let canary_wave = status.waves.iter().find(|w| w.name == "canary").expect("canary wave in the status");
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
        .set_version("podinfo:6.0.1", VersionBehaviour::new(0.2, 20.0))
        .expect("making 6.0.1 fail on member-canary");

    let release = release_everywhere(&env, IMAGE_V1).await;
    let timeline = follow(&mut env, release, Duration::from_secs(180), |now, rollout| {
        now.get(MEMBER_CANARY).is_some_and(|(p, _)| *p == Phase::Failed)
            && rollout.is_some_and(|r| r.phase == Some(RolloutPhase::Failed))
    })
    .await;
    // Give a wrongly opened prod wave time to show itself: a prod member releasing ends
    // this watch early, which fails the test.
    let watch = follow(&mut env, Instant::now(), Duration::from_secs(60), |now, _| {
        PROD.iter().any(|m| now.get(*m).is_some_and(|(p, _)| releasing(*p)))
    });
    let prod_released = tokio::time::timeout(Duration::from_secs(8), watch).await;
    if let Ok(late) = prod_released {
        panic!("a prod member released after the canary cluster failed: {:?}", late.phases);
    }
    let run = release.elapsed();
    eprintln!("phases since the release: {:?}", timeline.phases);

    let canary = env.member(MEMBER_CANARY);
    assert_eq!(canary.image_of("podinfo-primary").await.expect("primary image"), IMAGE_V0, "rolled back");
    let status = env.rollout().await.expect("the Rollout").status.expect("a Rollout status");
    let prod_wave = status.waves.iter().find(|w| w.name == "prod").expect("prod wave in the status");
    assert!(prod_wave.opened_at.is_none(), "the prod wave opened: {status:#?}");
    for prod in PROD {
        let m = env.member(prod);
        let c = m.canary().await.expect("prod Canary");
        assert_eq!(c.status.as_ref().map(|s| s.phase), Some(Phase::Waiting), "{prod} left Waiting");
        assert_eq!(approved_revision(&c), None, "{prod} was approved");
        let weights = m.canary_weights();
        assert!(weights.iter().all(|w| *w == 0), "{prod} sent canary traffic: {weights:?}");
        assert!(timeline.first(prod, releasing).is_none(), "{prod} released: {:?}", timeline.seen(prod));
        assert_eq!(m.image_of("podinfo-primary").await.expect("primary image"), IMAGE_V0, "{prod}");
        let st = status.members.iter().find(|s| s.cluster == prod).expect("prod member in the status");
        assert_eq!(st.state, MemberState::Pending, "{prod}: {st:#?}");
    }
    eprintln!("failing fleet release: setup {setup:.1?}, release to halted {run:.1?}, total {:.1?}", t0.elapsed());
}
