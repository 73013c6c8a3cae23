//! The demo's story end to end, in a fast mode: the staging canary cluster
//! and one production member, petrel's hub ordering the release from the
//! committed `examples/podinfo/hub` (soak shortened), short analysis
//! intervals. The demo driver only changes the image on every member; the
//! hub must open production only after the canary wave succeeded and
//! soaked, and must halt the bad release after the canary cluster rolled it
//! back.

use std::time::{Duration, Instant};

use petrel::api::canary::Phase;
use petrel::api::rollout::{MemberState, RolloutPhase, WavePhase};
use petrel_demo::{Demo, DemoOptions, Output, repo_root};

const SOAK: Duration = Duration::from_secs(5);
const STAGING: &str = "staging-eu-west-1";
const PRODUCTION: &str = "production-eu-west-1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_releases_canary_cluster_first_and_halts_the_bad_release() {
    let t0 = Instant::now();
    let work_dir = std::env::temp_dir().join(format!("petrel-e2e-demo-{}", std::process::id()));
    let petrel =
        tokio::task::spawn_blocking(petrel_e2e::scenario::petrel_binary).await.unwrap().expect("building petrel");
    let mut opts = DemoOptions::new(work_dir.clone(), repo_root(), petrel).fast();
    opts.members = Some(2);
    opts.output = Output::Quiet;
    opts.release_timeout = Duration::from_secs(120);
    assert_eq!(opts.soak.as_deref(), Some("5s"), "SOAK below is the fast mode's soak");

    let mut demo = Demo::start(opts).await.expect("demo setup");
    let logs = demo.petrel_logs();
    let outcome = demo.run_flow().await.unwrap_or_else(|e| panic!("demo flow: {e:#}; logs {logs:?}"));
    let checks: Vec<String> = outcome
        .checks()
        .map(|c| format!("{} {} ({})", if c.passed { "ok  " } else { "FAIL" }, c.what, c.detail))
        .collect();
    eprintln!("{}", checks.join("\n"));
    assert!(outcome.story_happened(), "the story did not happen:\n{}\nlogs {logs:?}", checks.join("\n"));

    // The hub's own record, checked here without the story module's help.
    let healthy = outcome.healthy.as_ref().expect("the healthy release ran");
    let status = &healthy.status;
    assert_eq!(status.phase, Some(RolloutPhase::Succeeded), "{status:#?}");
    let names: Vec<&str> = status.waves.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["canary", "production"], "the committed Rollout's waves");
    let [canary, production] = &status.waves[..] else { unreachable!("two waves, asserted above") };
    assert!(canary.phase == WavePhase::Succeeded && production.phase == WavePhase::Succeeded, "{status:#?}");
    let canary_soaked =
        canary.succeeded_at.expect("canary wave succeededAt") + chrono::Duration::from_std(SOAK).unwrap();
    let opened = production.opened_at.expect("production wave openedAt");
    assert!(opened >= canary_soaked, "production opened at {opened}, before the canary wave soaked ({canary_soaked})");
    let member = |name: &str| status.members.iter().find(|m| m.cluster == name).expect("member in the Rollout status");
    assert_eq!(member(STAGING).wave.as_deref(), Some("canary"));
    assert_eq!(member(PRODUCTION).wave.as_deref(), Some("production"));
    let approved = member(PRODUCTION).approved_at.expect("production approved");
    assert!(approved >= canary_soaked, "production approved at {approved}, before {canary_soaked}");
    // The member's own word: it waited at the gate and began only after the soak.
    assert!(healthy.timeline.waited(PRODUCTION, "6.7.1"), "{:#?}", healthy.timeline);
    let started = healthy.timeline.first_releasing(PRODUCTION, "6.7.1").expect("production released 6.7.1");
    assert!(
        started >= canary_soaked - chrono::Duration::seconds(1),
        "production started at {started}, before the canary wave soaked ({canary_soaked})"
    );

    let bad = outcome.bad.as_ref().expect("the bad release ran");
    let status = &bad.status;
    assert_eq!(status.phase, Some(RolloutPhase::Failed), "{status:#?}");
    assert_eq!(status.waves[0].phase, WavePhase::Failed, "{status:#?}");
    assert_eq!(status.waves[1].opened_at, None, "production opened for the bad release: {status:#?}");
    let bad_member = |name: &str| status.members.iter().find(|m| m.cluster == name).expect("member in the status");
    assert_eq!(bad_member(STAGING).state, MemberState::Failed);
    assert_eq!(bad_member(PRODUCTION).approved_at, None, "production approved for the bad release");
    let staging_end = bad.timeline.last(STAGING).expect("staging seen");
    assert_eq!(staging_end.phase, Phase::Failed);
    assert_eq!(staging_end.primary.as_deref(), Some("ghcr.io/stefanprodan/podinfo:6.7.1"), "rolled back");
    assert_eq!(bad.timeline.first_releasing(PRODUCTION, "6.7.2"), None, "production released 6.7.2");
    let production_end = bad.timeline.last(PRODUCTION).expect("production seen");
    assert_eq!(production_end.primary.as_deref(), Some("ghcr.io/stefanprodan/podinfo:6.7.1"));
    // The blast radius, counted by the simulators: production never answered with 6.7.2.
    let radius = bad.blast.as_ref().expect("the bad release's blast radius");
    eprintln!("{radius}");
    assert_eq!(radius.bad_in(PRODUCTION), Some(0), "{radius}");
    assert!(radius.bad_in(STAGING).unwrap_or_default() > 0, "staging never tried 6.7.2: {radius}");
    let fraction = bad.blast_fraction.expect("every Cluster of the demo states its traffic share");
    eprintln!("with the Clusters' traffic shares: {:.3}% of the fleet's requests answered by 6.7.2", fraction * 100.0);

    demo.shutdown().await.unwrap();
    eprintln!(
        "demo flow took {:.0}s in all (fleet {:.0}s, setup {:.0}s, hub ready {:.0}s, healthy {:.0}s, bad {:.0}s)",
        t0.elapsed().as_secs_f64(),
        outcome.fleet_start.as_secs_f64(),
        outcome.setup.as_secs_f64(),
        outcome.hub_ready.as_secs_f64(),
        healthy.took.as_secs_f64(),
        bad.took.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&work_dir);
}
