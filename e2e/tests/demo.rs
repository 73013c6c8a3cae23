//! The demo's main flow end to end, in a fast mode: one member (the staging
//! canary cluster), short analysis intervals. The healthy release must be
//! promoted and the bad one rolled back by petrel itself.

use std::time::{Duration, Instant};

use petrel_e2e::demo::plan::AnalysisTuning;
use petrel_e2e::demo::{Demo, DemoOptions, Output, repo_root};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_promotes_the_healthy_release_and_rolls_back_the_bad_one() {
    let t0 = Instant::now();
    let work_dir = std::env::temp_dir().join(format!("petrel-e2e-demo-{}", std::process::id()));
    let petrel =
        tokio::task::spawn_blocking(petrel_e2e::scenario::petrel_binary).await.unwrap().expect("building petrel");
    let mut opts = DemoOptions::new(work_dir.clone(), repo_root(), petrel);
    opts.members = Some(1);
    opts.output = Output::Quiet;
    opts.release_timeout = Duration::from_secs(90);
    opts.tuning = AnalysisTuning {
        interval: Some("2s".into()),
        step_weight: Some(25),
        max_weight: Some(50),
        // The first check after a weight change can find no data yet (one
        // scrape after 2s), which counts as failed: leave room for one.
        threshold: Some(3),
        metric_interval: Some("10s".into()),
    };

    let mut demo = Demo::start(opts).await.expect("demo setup");
    let outcome = demo.run_flow().await.expect("demo flow");

    assert_eq!(outcome.healthy_waves.len(), 1, "one member is one wave: {outcome:?}");
    let (wave, _) = &outcome.healthy_waves[0];
    let [healthy] = wave.as_slice() else { panic!("one cluster in the wave: {wave:?}") };
    assert_eq!((healthy.member.as_str(), healthy.phase.as_str()), ("staging-eu-west-1", "Succeeded"));
    assert_eq!(healthy.primary_release, "ghcr.io/stefanprodan/podinfo:6.7.1", "the primary was promoted");
    assert!(healthy.failed_checks < 3, "{healthy:?}");
    let [bad] = outcome.bad.as_slice() else { panic!("one cluster got the bad release: {outcome:?}") };
    assert_eq!((bad.member.as_str(), bad.phase.as_str()), ("staging-eu-west-1", "Failed"));
    assert!(bad.failed_checks >= 3, "rolled back only after the threshold of failed checks: {bad:?}");
    assert_eq!(bad.primary_release, "ghcr.io/stefanprodan/podinfo:6.7.1", "the primary kept the healthy release");
    assert!(outcome.untouched.is_empty());
    demo.shutdown().await.unwrap();
    eprintln!("demo flow took {:.0}s in all", t0.elapsed().as_secs_f64());
    let _ = std::fs::remove_dir_all(&work_dir);
}
