//! `petrel-image-bench`: how big petrel's image is and how soon `petrel` from it serves
//! `/readyz` 200 against a reachable API server. `scripts/image` runs it after a build.
//!
//! ```text
//! petrel-image-bench --archive ~/.cache/petrel/image/petrel-<hash>.oci.tar --reference ghcr.io/petrel-dev/petrel:v0.1.0 [--runs 5]
//! ```
//! Starts one real control plane on loopback with petrel's CRDs, then runs `petrel` (member
//! mode, the admin kubeconfig mounted read-only) from the image `--runs` times with podman
//! and prints each start-to-ready time and the median and worst.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::Parser;
use petrel_e2e::fleet::{Fleet, FleetOptions, ensure_binaries};
use petrel_e2e::image::{PetrelImage, measure_start_to_ready, podman_output};
use petrel_e2e::scenario::workspace_root;

#[derive(Parser)]
#[command(name = "petrel-image-bench", about = "Image size and petrel's start-to-ready time from the image")]
struct Cli {
    /// The OCI archive scripts/image wrote.
    #[arg(long)]
    archive: PathBuf,
    /// The image reference in it.
    #[arg(long)]
    reference: String,
    /// How many starts to time.
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    ensure!(cli.runs > 0, "--runs must be at least 1");
    let image = PetrelImage { archive: cli.archive.clone(), reference: cli.reference.clone() };
    let archive = cli.archive.to_string_lossy().into_owned();
    podman_output(&["load", "--quiet", "--input", &archive]).context("loading the image")?;
    let size: u64 = podman_output(&["image", "inspect", "--format", "{{.Size}}", &cli.reference])?.trim().parse()?;
    println!("image {}: {:.1} MiB (uncompressed)", cli.reference, size as f64 / 1_048_576.0);

    let t0 = Instant::now();
    let dir = std::env::temp_dir().join(format!("petrel-image-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let bin_dir = tokio::task::spawn_blocking(ensure_binaries).await??;
    let mut opts = FleetOptions::new(dir.join("fleet"), ["bench"]);
    opts.bin_dir = Some(bin_dir);
    opts.nodes_per_cluster = 1;
    let fleet = Fleet::start(opts).await.context("starting the control plane")?;
    let cluster = fleet.cluster("bench")?;
    let crds = workspace_root().join("crds").to_string_lossy().into_owned();
    let kubectl = fleet.binaries().path("kubectl");
    petrel_e2e::chart::run_ok(
        &kubectl,
        &["--kubeconfig", &cluster.kubeconfig_path.to_string_lossy(), "apply", "--server-side", "-f", &crds],
    )?;
    petrel_e2e::chart::run_ok(
        &kubectl,
        &[
            "--kubeconfig",
            &cluster.kubeconfig_path.to_string_lossy(),
            "wait",
            "--for=condition=Established",
            "crd",
            "--all",
            "--timeout=60s",
        ],
    )?;
    eprintln!("control plane up in {:.1?}", t0.elapsed());

    let args = vec![format!("--kubeconfig={}", cluster.kubeconfig_path.display())];
    let (mut from_run, mut from_start) = (Vec::new(), Vec::new());
    for run in 1..=cli.runs {
        let log = dir.join(format!("petrel-{run}.log"));
        let time = measure_start_to_ready(&image, &args, &[], &log).await?;
        println!(
            "run {run}: /readyz 200 {:.0} ms after podman run, {:.0} ms after the process started",
            time.from_run.as_secs_f64() * 1000.0,
            time.from_process_start.as_secs_f64() * 1000.0
        );
        from_run.push(time.from_run);
        from_start.push(time.from_process_start);
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "start to ready over {} runs: median {:.0} ms (worst {:.0} ms) after the process started; median {:.0} ms (worst {:.0} ms) after podman run",
        cli.runs,
        ms(median(from_start.clone())),
        ms(from_start.iter().copied().max().unwrap_or_default()),
        ms(median(from_run.clone())),
        ms(from_run.iter().copied().max().unwrap_or_default()),
    );
    drop(fleet);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
