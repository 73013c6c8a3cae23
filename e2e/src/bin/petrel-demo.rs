//! `petrel-demo`: a local fleet (a hub and one member per GitOps overlay of
//! `examples/podinfo`), petrel releasing podinfo 6.7.1 canary cluster first,
//! then a bad 6.7.2 that petrel rolls back; progress shown live.
//!
//! Run it through `./scripts/demo`, which installs what it needs and builds
//! the binaries first. Ctrl-C or SIGTERM tears everything down.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use petrel_e2e::demo::{Demo, DemoOptions, DemoOutcome, Output, print_line, repo_root};
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
            "  setup (CRDs, app, simulators, Prometheus, petrel, Initialized): {:.1}s",
            outcome.setup.as_secs_f64()
        ),
    ];
    for (i, (results, took)) in outcome.healthy_waves.iter().enumerate() {
        let clusters: Vec<String> = results.iter().map(|r| format!("{} {}", r.member, r.phase)).collect();
        lines.push(format!("  healthy release, wave {}: {:.0}s ({})", i + 1, took.as_secs_f64(), clusters.join(", ")));
    }
    let bad: Vec<String> = outcome.bad.iter().map(|r| format!("{} {}", r.member, r.phase)).collect();
    lines.push(format!(
        "  bad release, canary wave: rolled back in {:.0}s ({})",
        outcome.bad_took.as_secs_f64(),
        bad.join(", ")
    ));
    for (member, release) in &outcome.untouched {
        lines.push(format!("  {member} kept {release}"));
    }
    lines.push(format!("  total: {:.0}s", outcome.total.as_secs_f64()));
    lines
}

async fn run(cli: Cli) -> Result<()> {
    let work_dir = std::path::absolute(&cli.work_dir).context("resolving --work-dir")?;
    // A previous run's etcd data and Prometheus TSDB would confuse this one.
    for sub in ["fleet", "members"] {
        let _ = std::fs::remove_dir_all(work_dir.join(sub));
    }
    let mut opts = DemoOptions::new(
        work_dir,
        cli.repo_root.unwrap_or_else(repo_root),
        cli.petrel_bin.unwrap_or_else(default_petrel_bin),
    );
    opts.members = cli.members.map(usize::from);
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
            print_line(&format!(
                "  {} --kubeconfig {} get canaries -A   # {name}",
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
    print_line("tearing down: petrel, Prometheus, simulators, then the fleet");
    let t = Instant::now();
    demo.shutdown().await?;
    print_line(&format!("every process stopped in {:.1}s", t.elapsed().as_secs_f64()));
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
