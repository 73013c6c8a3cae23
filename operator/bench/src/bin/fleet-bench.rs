//! Benchmark (not a test) of the fleet hub's pure core: how long one reconcile's
//! decision (`decide_waves`) plus status construction (`build_status`) takes for a
//! fleet of simulated members, and the process's peak resident memory.
//!
//! Run: `cargo run --release -p petrel-bench --bin fleet-bench [-- --runs N]`

use std::collections::BTreeMap;
use std::time::Instant;

use chrono::{DateTime, TimeDelta, Utc};
use petrel::api::canary::Phase;
use petrel::api::rollout::{Approval, ClusterSelector, FailurePolicy, LabelOperator, LabelRequirement};
use petrel::fleet::identity::IdentityVerdict;
use petrel::fleet::{CanaryObservation, MemberObservation, RolloutPlan, Share, WavePlan, build_status, decide_waves};

use petrel_bench::figures::{fmt, proc_status_kib};

const RELEASE: &str = "ghcr.io/stefanprodan/podinfo:6.5.0";
const REGIONS: [&str; 4] = ["eu-west", "eu-central", "us-east", "ap-south"];

fn main() {
    let runs = std::env::args().skip_while(|a| a != "--runs").nth(1).and_then(|n| n.parse().ok()).unwrap_or(2_000usize);

    println!(
        "fleet-bench: decide_waves + build_status per call, {runs} runs per row ({} for 10,000 members)",
        (runs / 10).max(100)
    );
    println!("{:>8} {:>6} {:<34} {:>12} {:>12} {:>12}", "members", "waves", "scenario", "median", "p99", "max");
    // 10,000 members shows how the cost grows past the CPU caches; fewer runs keep it short.
    for members in [100usize, 1_000, 10_000] {
        let runs = if members > 1_000 { (runs / 10).max(100) } else { runs };
        for waves in [3usize, 4] {
            for scenario in [Scenario::FirstWaveOpens, Scenario::MidRollout] {
                let (plan, observations, (history, now)) = fleet(members, waves, scenario);
                let mut samples = Vec::with_capacity(runs);
                let mut checksum = 0usize;
                for _ in 0..runs {
                    let start = Instant::now();
                    let decision = decide_waves(&plan, RELEASE, &history, &observations, now);
                    let status = build_status(&plan, RELEASE, Some(1), &observations, &decision, &[], now);
                    samples.push(start.elapsed());
                    // Keeps the optimiser from dropping the work.
                    checksum = checksum.wrapping_add(decision.approve.len() + status.members.len());
                }
                samples.sort();
                println!(
                    "{:>8} {:>6} {:<34} {:>12} {:>12} {:>12}",
                    members,
                    waves,
                    scenario.describe(),
                    fmt(samples[samples.len() / 2]),
                    fmt(samples[(samples.len() * 99 / 100).min(samples.len() - 1)]),
                    fmt(samples[samples.len() - 1]),
                );
                assert!(checksum > 0, "the decision produced nothing to measure");
            }
        }
    }
    match proc_status_kib("VmHWM:") {
        Some(kib) => println!("peak resident memory (VmHWM): {:.1} MiB", kib as f64 / 1024.0),
        None => println!("peak resident memory: unavailable (no /proc/self/status)"),
    }
}

#[derive(Clone, Copy)]
enum Scenario {
    /// A new release: nothing approved yet, the canary wave opens.
    FirstWaveOpens,
    /// Earlier waves done, the last wave half through, some members failing or unreachable.
    MidRollout,
}

impl Scenario {
    fn describe(self) -> &'static str {
        match self {
            Scenario::FirstWaveOpens => "new release (canary wave opens)",
            Scenario::MidRollout => "mid-rollout (last wave, mixed)",
        }
    }
}

fn at(minutes: i64) -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH + TimeDelta::days(20_000) + TimeDelta::minutes(minutes)
}

fn selector(key: &str, values: &[&str]) -> ClusterSelector {
    ClusterSelector {
        match_labels: BTreeMap::new(),
        match_expressions: vec![LabelRequirement {
            key: key.into(),
            operator: LabelOperator::In,
            values: values.iter().map(|v| v.to_string()).collect(),
        }],
    }
}

fn wave(name: &str, selector: ClusterSelector, concurrency: Share) -> WavePlan {
    WavePlan {
        name: name.into(),
        selector,
        max_concurrency: concurrency,
        max_failures: Share::Percent(10),
        soak: TimeDelta::minutes(30),
        approval: Approval::Automatic,
        progress_deadline: TimeDelta::minutes(30),
    }
}

type History = (Vec<petrel::api::rollout::WaveStatus>, DateTime<Utc>);

/// `size` members: 1% canary clusters, the rest spread over regions; waves canary →
/// eu → (us →) rest.
fn fleet(size: usize, waves: usize, scenario: Scenario) -> (RolloutPlan, Vec<MemberObservation>, History) {
    let mut plan_waves = vec![
        wave("canary", selector("role", &["canary"]), Share::Count(1)),
        wave("eu", selector("region", &["eu-west", "eu-central"]), Share::Percent(25)),
    ];
    if waves == 4 {
        plan_waves.push(wave("us", selector("region", &["us-east"]), Share::Percent(25)));
    }
    plan_waves.push(wave("rest", ClusterSelector::default(), Share::Percent(20)));
    let plan = RolloutPlan {
        clusters: ClusterSelector::default(),
        waves: plan_waves,
        on_failure: FailurePolicy::Halt,
        paused: false,
    };

    let last_wave = plan.waves.len() - 1;
    let members: Vec<MemberObservation> = (0..size)
        .map(|i| {
            let canary_cluster = i % 100 == 0;
            let region = REGIONS[i % REGIONS.len()];
            let mut labels: BTreeMap<String, String> =
                [("region".to_string(), region.to_string()), ("env".to_string(), "prod".to_string())].into();
            if canary_cluster {
                labels.insert("role".into(), "canary".into());
            }
            let wave = plan.waves.iter().position(|w| w.selector.matches(&labels)).unwrap_or(last_wave);
            let revision = format!("rev-{i:05}");
            let mut canary = CanaryObservation {
                phase: Phase::Waiting,
                release: Some(RELEASE.into()),
                revision: Some(revision.clone()),
                promoted_revision: Some("rev-old".into()),
                ..CanaryObservation::default()
            };
            let mut reachable = true;
            let mut approved_at = None;
            if let Scenario::MidRollout = scenario {
                if wave < last_wave {
                    canary.phase = Phase::Succeeded;
                    canary.promoted_revision = Some(revision.clone());
                    approved_at = Some(at(wave as i64 * 60));
                } else {
                    match i % 10 {
                        0..=3 => {
                            canary.phase = Phase::Succeeded;
                            canary.promoted_revision = Some(revision.clone());
                            approved_at = Some(at(300));
                        }
                        4 => {
                            canary.phase = Phase::Progressing;
                            canary.weight = 30;
                            approved_at = Some(at(320));
                        }
                        5 => reachable = i % 20 != 5,
                        _ => {}
                    }
                    if approved_at.is_some() {
                        canary.approved_revision = Some(revision.clone());
                    }
                }
            }
            MemberObservation {
                cluster: format!("cluster-{i:05}"),
                labels,
                reachable,
                last_contact: Some(at(if reachable { 330 } else { 310 })),
                approved_at,
                canary: Some(canary),
                identity: IdentityVerdict::Verified,
            }
        })
        .collect();

    let history = match scenario {
        Scenario::FirstWaveOpens => (Vec::new(), at(0)),
        Scenario::MidRollout => {
            let statuses = plan
                .waves
                .iter()
                .enumerate()
                .map(|(w, wave)| {
                    let mut status = petrel::api::rollout::WaveStatus::pending(&wave.name);
                    status.opened_at = Some(at(w as i64 * 60));
                    if w < last_wave {
                        status.phase = petrel::api::rollout::WavePhase::Succeeded;
                        status.succeeded_at = Some(at(w as i64 * 60 + 20));
                    } else {
                        status.phase = petrel::api::rollout::WavePhase::Progressing;
                    }
                    status
                })
                .collect();
            (statuses, at(330))
        }
    };
    (plan, members, history)
}
