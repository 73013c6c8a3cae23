//! `canary-bench`: petrel and Flagger side by side on one local control plane. A
//! benchmark, not a test: no CI step runs it.
//!
//! For each workload (variant × N) it runs every operator in turn (the order alternates
//! from one workload to the next) over the same objects: N Deployments, a Canary each,
//! then a release of all N at once. It prints and, with `--write`, puts in
//! docs/benchmarks.md: the time to initialize all N, idle requests per minute and
//! operator CPU, the time from each image change to its Canary leaving idle (p50, p99),
//! the time until all Succeeded, the requests, API server CPU, operator CPU and peak
//! memory of the release, the operator's memory at the end of the idle window, requests
//! by verb and resource (from the API server's audit log, by user agent), and the ratios
//! to Flagger. With `--secrets N`, N unused Secrets sit in the cluster while it runs;
//! with `--other-deployments N`, N Deployments that no Canary names.
//!
//! ```sh
//! cargo run --release -p petrel-e2e --bin canary-bench -- --sizes 10,100 --write
//! # compare builds: any number of petrel binaries, each with its own label
//! cargo run --release -p petrel-e2e --bin canary-bench -- \
//!     --petrel "petrel (main)=/tmp/petrel-main" --petrel "petrel=target/release/petrel"
//! # the member's memory with 5,000 unused Secrets of 10 KiB in the cluster
//! cargo run --release -p petrel-e2e --bin canary-bench -- --no-flagger --sizes 10 \
//!     --petrel before=/tmp/petrel-before --petrel after=/tmp/petrel-after --secrets 5000 --secret-kib 10
//! ```
//!
//! Flagger is built from the Go module proxy by `e2e/scripts/build-flagger.sh` into
//! `~/.cache/petrel/bin/flagger-<version>/` (with its CRDs), once.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use petrel_e2e::bench::report::{self, RoundFigures, RunInfo};
use petrel_e2e::bench::run::{BenchEnv, BenchOptions, OperatorSpec};
use petrel_e2e::bench::stats::load_average;
use petrel_e2e::bench::workload::{Analysis, OperatorKind, Variant};
use petrel_e2e::scenario::workspace_root;

/// Flagger's version, also the name of its cache directory.
const FLAGGER_VERSION: &str = "v1.41.0";

#[derive(Parser, Debug)]
#[command(name = "canary-bench", about = "petrel and Flagger side by side on one local control plane")]
struct Cli {
    /// Numbers of Canaries, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10,100")]
    sizes: Vec<usize>,
    /// Workloads: kubernetes, gatewayapi, bad-input (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "kubernetes")]
    variants: Vec<String>,
    /// A petrel binary as LABEL=PATH (repeatable); default: `petrel=` this workspace's
    /// release build (built now).
    #[arg(long = "petrel")]
    petrels: Vec<String>,
    /// Leave Flagger out.
    #[arg(long)]
    no_flagger: bool,
    /// A Flagger binary instead of the one built from the module proxy (its CRDs are
    /// then read from `--flagger-crds`).
    #[arg(long, requires = "flagger_crds")]
    flagger_bin: Option<PathBuf>,
    #[arg(long)]
    flagger_crds: Option<PathBuf>,
    /// Analysis interval of every Canary.
    #[arg(long, default_value = "10s")]
    interval: String,
    /// Iterations (provider kubernetes).
    #[arg(long, default_value_t = 3)]
    iterations: u32,
    /// Replicas of every app.
    #[arg(long, default_value_t = 1)]
    replicas: u32,
    /// Seconds of quiet after the initialization, before the idle window.
    #[arg(long, default_value_t = 15)]
    settle: u64,
    /// Seconds of the idle window.
    #[arg(long, default_value_t = 60)]
    idle: u64,
    /// Seconds to wait for all Canaries to initialize.
    #[arg(long, default_value_t = 900)]
    init_timeout: u64,
    /// Seconds to wait for all Canaries to succeed after the release.
    #[arg(long, default_value_t = 900)]
    release_timeout: u64,
    /// Requests in flight when the benchmark creates or patches objects.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Fake nodes, and pods each takes.
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    #[arg(long, default_value_t = 2000)]
    pods_per_node: u32,
    /// Secrets in the cluster before each operator starts, used by nothing: half in the
    /// round's namespace (created with it), the rest in namespace `bench-secrets`.
    #[arg(long, default_value_t = 0)]
    secrets: usize,
    /// KiB of data in each of those Secrets.
    #[arg(long, default_value_t = 10)]
    secret_kib: usize,
    /// Deployments of no replicas in the cluster, named by no Canary (the rest of a
    /// cluster's apps), in namespace `bench-other`, applied once before the first round.
    #[arg(long, default_value_t = 0)]
    other_deployments: usize,
    /// Work dir (control plane, operator logs).
    #[arg(long, default_value = "/tmp/canary-bench")]
    dir: PathBuf,
    /// Write the report into docs/benchmarks.md (between its canary-bench marks).
    #[arg(long)]
    write: bool,
}

fn parse_petrel(text: &str) -> Result<OperatorSpec> {
    let (label, path) = text.split_once('=').context("--petrel takes LABEL=PATH")?;
    let binary = std::path::absolute(path)?;
    if !binary.is_file() {
        bail!("--petrel {label}: {} is not a file", binary.display());
    }
    Ok(OperatorSpec { label: label.to_string(), kind: OperatorKind::Petrel, binary })
}

/// Builds this workspace's petrel in release mode and returns the binary.
fn build_petrel() -> Result<PathBuf> {
    let root = workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "petrel", "--bin", "petrel"])
        .current_dir(&root)
        .stdin(Stdio::null())
        .status()
        .context("running cargo build --release -p petrel --bin petrel")?;
    if !status.success() {
        bail!("cargo build --release -p petrel --bin petrel failed ({status})");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    Ok(target.join("release").join("petrel"))
}

/// Builds (once, cached) Flagger and returns its directory (`flagger`, `crd.yaml`).
fn build_flagger() -> Result<PathBuf> {
    let script = workspace_root().join("e2e/scripts/build-flagger.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("FLAGGER_VERSION", FLAGGER_VERSION)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed ({})", script.display(), out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout.lines().rev().map(str::trim).find(|l| !l.is_empty()).context("build-flagger.sh printed no dir")?;
    Ok(PathBuf::from(dir))
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).current_dir(workspace_root()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_string())))
        .and_then(|kb| kb.trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or_else(String::new, |kb| format!(", {:.0} GiB memory", kb / 1024.0 / 1024.0));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{model}, {cores} cores{memory}, Linux {}; shared with other engineers' builds", kernel.trim())
}

fn loads() -> String {
    load_average().map_or_else(|| "unknown".into(), |l| format!("{:.1}, {:.1}, {:.1}", l[0], l[1], l[2]))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let variants: Vec<Variant> = cli
        .variants
        .iter()
        .map(|v| {
            Variant::parse(v).with_context(|| format!("unknown variant {v:?} (kubernetes, gatewayapi, bad-input)"))
        })
        .collect::<Result<_>>()?;

    let mut operators: Vec<OperatorSpec> = cli.petrels.iter().map(|p| parse_petrel(p)).collect::<Result<_>>()?;
    let mut origins = Vec::new();
    if operators.is_empty() {
        let binary = build_petrel()?;
        let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
        let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
        origins.push((
            "petrel".to_string(),
            format!(
                "this workspace at {commit}{}, release build",
                if dirty { " (with uncommitted changes)" } else { "" }
            ),
        ));
        operators.push(OperatorSpec { label: "petrel".into(), kind: OperatorKind::Petrel, binary });
    } else {
        for op in &operators {
            origins.push((op.label.clone(), format!("`{}`", op.binary.display())));
        }
    }
    let flagger_label = format!("Flagger {FLAGGER_VERSION}");
    let mut flagger_crds = None;
    if !cli.no_flagger {
        let (binary, crds) = match (&cli.flagger_bin, &cli.flagger_crds) {
            (Some(binary), Some(crds)) => (binary.clone(), crds.clone()),
            _ => {
                let dir = build_flagger()?;
                (dir.join("flagger"), dir.join("crd.yaml"))
            }
        };
        origins.push((
            flagger_label.clone(),
            format!("`go install github.com/fluxcd/flagger/cmd/flagger@{FLAGGER_VERSION}` (`e2e/scripts/build-flagger.sh`), its `artifacts/flagger/crd.yaml`, default flags (`-threadiness=2`, `-kubeconfig-qps=100`, `-kubeconfig-burst=250`) and `-log-level=info`"),
        ));
        flagger_crds = Some(crds);
        operators.push(OperatorSpec { label: flagger_label.clone(), kind: OperatorKind::Flagger, binary });
    }
    if operators.is_empty() {
        bail!("nothing to run");
    }

    let analysis = Analysis { interval: cli.interval.clone(), iterations: cli.iterations, ..Analysis::default() };
    let options = BenchOptions {
        dir: cli.dir.clone(),
        sizes: cli.sizes.clone(),
        variants: variants.clone(),
        operators: operators.clone(),
        analysis: analysis.clone(),
        replicas: cli.replicas,
        settle: Duration::from_secs(cli.settle),
        idle: Duration::from_secs(cli.idle),
        init_timeout: Duration::from_secs(cli.init_timeout),
        release_timeout: Duration::from_secs(cli.release_timeout),
        concurrency: cli.concurrency,
        nodes: cli.nodes,
        pods_per_node: cli.pods_per_node,
        secrets: cli.secrets,
        secret_bytes: cli.secret_kib * 1024,
        other_deployments: cli.other_deployments,
    };
    let command = std::iter::once("cargo run --release -p petrel-e2e --bin canary-bench --".to_string())
        .chain(std::env::args().skip(1).map(|a| if a.contains(' ') { format!("'{a}'") } else { a }))
        .collect::<Vec<_>>()
        .join(" ");
    let started_at = chrono::Utc::now();
    let load_at_start = loads();
    let started = Instant::now();

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let rounds = runtime.block_on(async {
        let mut env = BenchEnv::start(&options, flagger_crds.as_deref()).await?;
        let mut rounds: Vec<(Variant, RoundFigures)> = Vec::new();
        let mut workload = 0;
        for variant in &variants {
            for n in &options.sizes {
                // Alternate who goes first, so neither always meets a warmer (or busier) machine.
                let mut order = operators.clone();
                if workload % 2 == 1 {
                    order.reverse();
                }
                workload += 1;
                for operator in &order {
                    let figures = env.round(&options, operator, *variant, *n).await?;
                    rounds.push((*variant, figures));
                }
                // Report in the declared order whatever the running order was.
                let start = rounds.len() - order.len();
                rounds[start..].sort_by_key(|(_, f)| operators.iter().position(|o| o.label == f.operator));
            }
        }
        env.fleet.shutdown().await?;
        anyhow::Ok(rounds)
    })?;

    let (with_canaries, elsewhere) = petrel_e2e::bench::workload::secret_split(cli.secrets);
    let mut setup = vec![
        format!(
            "One control plane (kube-apiserver, kube-controller-manager, kube-scheduler {} from e2e/versions.env, one etcd, kwok with {} fake nodes), its audit log on (metadata level, every request) for the request counts; each operator runs as a process with the admin kubeconfig",
            petrel_e2e::fleet::Versions::load().map(|v| v.kubernetes).unwrap_or_default(),
            cli.nodes
        ),
        format!(
            "Per round: a fresh namespace, N Deployments of {} replica(s), available before the operator starts; the Canaries are applied {} at a time; {} s of quiet, then a {} s idle window; then every Deployment's image is changed ({} patches in flight); the namespace is deleted before the next round",
            cli.replicas, cli.concurrency, cli.settle, cli.idle, cli.concurrency
        ),
        "Detection: from the response to a Deployment's patch to the benchmark's watch seeing its Canary in a phase other than Initialized or Succeeded. API server and operator CPU: user + system time from /proc over the window. Requests: audit log lines of the operator's user agent. Idle RSS: VmRSS at the end of the idle window".to_string(),
    ];
    if cli.secrets > 0 {
        setup.push(format!(
            "Secrets: {} Secrets of {} KiB of data each in the cluster before every operator starts, used by no workload: {with_canaries} in the round's namespace (applied {} at a time after the namespace), {elsewhere} in namespace `{}` (applied once, before the first round)",
            cli.secrets,
            cli.secret_kib,
            cli.concurrency,
            petrel_e2e::bench::workload::SECRETS_NAMESPACE
        ));
    }
    if cli.other_deployments > 0 {
        setup.push(format!(
            "Other apps: {} Deployments of 0 replicas that no Canary names, in namespace `{}` (applied once, before the first round)",
            cli.other_deployments,
            petrel_e2e::bench::workload::OTHER_DEPLOYMENTS_NAMESPACE
        ));
    }
    let info = RunInfo {
        command,
        machine: machine(),
        when: format!("{} UTC, {:.0} min", started_at.format("%Y-%m-%d %H:%M"), started.elapsed().as_secs_f64() / 60.0),
        load: format!("{load_at_start} → {}", loads()),
        operators: origins,
        variants: variants.iter().map(|v| (*v, v.describe(&analysis))).collect(),
        setup,
    };
    let section = report::document(&info, &rounds, &flagger_label);
    println!("{section}");
    if cli.write {
        let path = workspace_root().join("docs/benchmarks.md");
        let doc = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        std::fs::write(&path, report::replace_section(&doc, &section))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("canary-bench: wrote {}", path.display());
    }
    Ok(())
}
