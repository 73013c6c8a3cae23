//! `petrel-demo`: a local fleet (a hub and one member per GitOps overlay of
//! `examples/podinfo`); petrel's hub releases podinfo 6.7.1 canary cluster
//! first, production after the canary wave soaked, then halts a bad 6.7.2
//! the canary cluster rolled back; progress shown live. Exits 1 unless the
//! story happened as expected.
//!
//! Run it through `./scripts/demo`, which installs what it needs and builds
//! the binaries first. Ctrl-C or SIGTERM tears everything down.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use petrel_demo::{Demo, DemoOptions, DemoOutcome, Output, print_line, repo_root};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser, Debug)]
#[command(name = "petrel-demo", about = "petrel releasing an example app across a local fleet of real control planes")]
struct Cli {
    /// Keep the fleet running after the demo until Ctrl-C, printing kubeconfig paths.
    #[arg(long)]
    keep: bool,
    /// Number of member clusters (1 to 3; the staging canary cluster comes first).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=3))]
    members: Option<u8>,
    /// Work dir (kubeconfigs, logs, Prometheus data); its `fleet/` and `members/`
    /// are replaced at the start and kept afterwards for post-mortems.
    #[arg(long, default_value = "/tmp/petrel-demo")]
    work_dir: PathBuf,
    /// The `petrel` binary (default: next to this one).
    #[arg(long)]
    petrel_bin: Option<PathBuf>,
    /// Repository root (default: the one this binary was built from).
    #[arg(long)]
    repo_root: Option<PathBuf>,
    /// Print one line per change even on a terminal.
    #[arg(long)]
    plain: bool,
    /// Short analysis steps and a 5s soak (what the e2e test runs): the story in about a minute.
    #[arg(long)]
    fast: bool,
    /// Run every petrel (members and hub) from the container image (scripts/image builds
    /// it, or reuses it; podman runs it read-only with --network host).
    #[arg(long)]
    image: bool,
}

fn default_petrel_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("petrel")))
        .unwrap_or_else(|| PathBuf::from("target/debug/petrel"))
}

fn summary(outcome: &DemoOutcome) -> Vec<String> {
    let mut lines = vec![
        String::new(),
        "summary".into(),
        format!("  fleet start (hub + members, cached binaries): {:.1}s", outcome.fleet_start.as_secs_f64()),
        format!(
            "  setup (CRDs, app, simulators, Prometheus, petrel, hub manifests, Initialized): {:.1}s",
            outcome.setup.as_secs_f64()
        ),
        format!("  hub took the fleet into its Rollout in {:.1}s", outcome.hub_ready.as_secs_f64()),
    ];
    for record in outcome.healthy.iter().chain(&outcome.bad) {
        lines.push(format!("  release {} ({:.0}s):", record.tag, record.took.as_secs_f64()));
        for wave in &record.status.waves {
            let at = |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.format("%H:%M:%S").to_string());
            lines.push(format!(
                "    wave {:<11} {:<10} opened {:<8} succeeded {:<8} failed {}",
                wave.name,
                format!("{:?}", wave.phase),
                at(wave.opened_at).unwrap_or_else(|| "never".into()),
                at(wave.succeeded_at).unwrap_or_else(|| "-".into()),
                at(wave.failed_at).unwrap_or_else(|| "-".into()),
            ));
        }
        for check in &record.checks {
            lines.push(format!("    {} {} ({})", if check.passed { "ok  " } else { "FAIL" }, check.what, check.detail));
        }
    }
    lines.push(format!("  total: {:.0}s", outcome.total.as_secs_f64()));
    lines.push(if outcome.story_happened() {
        "the story happened: canary cluster first, production after the soak, the bad release halted".into()
    } else {
        "the story did NOT happen as expected (see FAIL above); exit code 1".into()
    });
    lines
}

async fn run(cli: Cli) -> Result<()> {
    let work_dir = std::path::absolute(&cli.work_dir).context("resolving --work-dir")?;
    // A previous run's etcd data and Prometheus TSDB would confuse this one.
    for sub in ["fleet", "members", "hub"] {
        let _ = std::fs::remove_dir_all(work_dir.join(sub));
    }
    let mut opts = DemoOptions::new(
        work_dir,
        cli.repo_root.unwrap_or_else(repo_root),
        cli.petrel_bin.unwrap_or_else(default_petrel_bin),
    );
    if cli.fast {
        opts = opts.fast();
    }
    opts.members = cli.members.map(usize::from);
    if cli.image {
        let image = tokio::task::spawn_blocking(petrel_e2e::image::ensure_image).await??;
        eprintln!("petrel runs from the image {} ({})", image.reference, image.archive.display());
        opts.image = Some(image);
    }
    if cli.plain && opts.output == Output::Terminal {
        opts.output = Output::Lines;
    }
    let mut demo = Demo::start(opts).await?;
    let outcome = demo.run_flow().await;
    demo.stop_view();
    let outcome = outcome?;
    for line in summary(&outcome) {
        print_line(&line);
    }
    if cli.keep {
        print_line("\nthe fleet keeps running; Ctrl-C to stop it");
        for (name, kubeconfig) in demo.kubeconfigs() {
            let what = if name == petrel_demo::HUB {
                "get rollouts.petrel.dev,clusters.petrel.dev -A"
            } else {
                "get canaries -A"
            };
            print_line(&format!(
                "  {} --kubeconfig {} {what}   # {name}",
                demo.kubectl().display(),
                kubeconfig.display()
            ));
        }
        for (name, log) in demo.petrel_logs() {
            print_line(&format!("  petrel log of {name}: {}", log.display()));
        }
        std::future::pending::<()>().await;
    }
    for (name, log) in demo.petrel_logs() {
        print_line(&format!("  petrel log of {name}: {}", log.display()));
    }
    let story_happened = outcome.story_happened();
    print_line("tearing down: petrel, Prometheus, simulators, then the fleet");
    let t = Instant::now();
    demo.shutdown().await?;
    print_line(&format!("every process stopped in {:.1}s", t.elapsed().as_secs_f64()));
    if !story_happened {
        anyhow::bail!("the story did not happen as expected");
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    if let Err(e) = run_until_signalled().await {
        eprintln!("petrel-demo failed: {e:#}");
        std::process::exit(1);
    }
}

async fn run_until_signalled() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,kube_client=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    // A closed terminal window: tear down like on Ctrl-C rather than die on the spot.
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let signalled = tokio::select! {
        result = run(cli) => return result,
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "Ctrl-C",
        _ = sighup.recv() => "SIGHUP",
    };
    // `run`'s future is dropped by now: its Demo stopped petrel, Prometheus,
    // the simulators and the fleet on the way out.
    eprintln!("\n{signalled}: stopped every process of the demo");
    // Give stdout's last frame a moment to reach the terminal.
    tokio::time::sleep(Duration::from_millis(50)).await;
    std::process::exit(130)
}
