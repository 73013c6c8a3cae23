//! `petrel-fleet`: run a local fleet of real Kubernetes control planes.
//!
//! ```text
//! petrel-fleet build-binaries
//! petrel-fleet up --clusters hub,member-1,member-2,member-3 --dir /tmp/fleet
//! ```
//! `up` prints one `<cluster> <kubeconfig> <api-url>` line per cluster once
//! all are ready, then waits for Ctrl-C / SIGTERM and tears everything down.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use petrel_e2e::fleet::{Fleet, FleetOptions, ensure_binaries};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(name = "petrel-fleet", about = "Local fleet of real Kubernetes control planes on loopback")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build (or find cached) kube-apiserver, kube-controller-manager,
    /// kube-scheduler, kubectl, kwok and etcd; print their directory.
    BuildBinaries,
    /// Start the clusters, print their kubeconfigs, run until Ctrl-C/SIGTERM.
    Up {
        /// Comma-separated cluster names.
        #[arg(long, value_delimiter = ',', default_value = "hub,member-1,member-2,member-3")]
        clusters: Vec<String>,
        /// Work dir (kubeconfigs, PKI, etcd data, logs).
        #[arg(long)]
        dir: PathBuf,
        /// Fake kwok nodes per cluster.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Start timeout in seconds.
        #[arg(long, default_value_t = 180)]
        timeout: u64,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "petrel_e2e=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().cmd {
        Cmd::BuildBinaries => {
            let dir = tokio::task::spawn_blocking(ensure_binaries).await??;
            println!("{}", dir.display());
        }
        Cmd::Up { clusters, dir, nodes, timeout } => {
            let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
            let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
            let mut opts = FleetOptions::new(dir, clusters);
            opts.nodes_per_cluster = nodes;
            opts.start_timeout = Duration::from_secs(timeout);
            let t0 = Instant::now();
            let fleet = tokio::select! {
                f = Fleet::start(opts) => f?,
                _ = sigterm.recv() => return Ok(()),
                _ = sigint.recv() => return Ok(()),
            };
            eprintln!(
                "fleet of {} clusters ready in {:.1}s (children RSS {} MiB); Ctrl-C to stop",
                fleet.clusters().len(),
                t0.elapsed().as_secs_f64(),
                fleet.rss_bytes() / (1024 * 1024)
            );
            for c in fleet.clusters() {
                println!("{} {} {}", c.name, c.kubeconfig_path.display(), c.api_url);
            }
            tokio::select! {
                _ = sigterm.recv() => {}
                _ = sigint.recv() => {}
            }
            eprintln!("stopping the fleet");
            fleet.shutdown().await?;
        }
    }
    Ok(())
}
