//! Leader election on a real control plane: two `petrel --leader-elect` replicas, one
//! leads and reconciles, the other waits as a ready standby; a third standby stopped with
//! SIGTERM exits cleanly without touching the Lease; SIGKILL the leader and the standby
//! takes the Lease once it expires; SIGTERM the new leader and it stops its controllers,
//! hands the Lease back at once and exits cleanly.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use petrel_e2e::fleet::{Fleet, FleetOptions, ensure_binaries, spawn_tied_to_process};
use petrel_e2e::scenario::{eventually, petrel_binary, workspace_root};

const NAMESPACE: &str = "default";
const LEASE: &str = "petrel-member";
/// Short, so the test sees a takeover quickly; renewal every 2 s.
const LEASE_SECONDS: u64 = 6;

struct Replica {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Replica {
    fn start(binary: &Path, kubeconfig: &Path, dir: &Path, name: &'static str) -> Result<Replica> {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = Command::new(binary);
        command
            .args(["--kubeconfig", &kubeconfig.to_string_lossy(), "--metrics-addr", "127.0.0.1:0"])
            .args(["--leader-elect", "--leader-election-namespace", NAMESPACE])
            .args(["--leader-election-lease-duration", &LEASE_SECONDS.to_string()])
            .args(["--leader-election-renew-before", "2"])
            .args(["--metrics-server", "http://127.0.0.1:9", "--log-json"])
            .env("POD_NAME", name)
            .env("RUST_LOG", "info,kube=warn")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let child = spawn_tied_to_process(command).with_context(|| format!("starting {name}"))?;
        Ok(Replica { name, child, log })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The health server's address, from the start-up log line.
    fn health_addr(&self) -> Option<String> {
        self.log()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|entry| entry["message"].as_str().is_some_and(|m| m.starts_with("serving /metrics")))
            .and_then(|entry| entry["addr"].as_str().map(str::to_string))
    }

    fn signal(&mut self, signal: libc::c_int) {
        // The pid of a child we have not reaped yet cannot have been reused.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }

    /// The exit status once the process ended.
    fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Messages of the JSON log lines, in order.
    fn messages(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter_map(|entry| entry["message"].as_str().map(str::to_string))
            .collect()
    }

    /// Index of the first log message starting with `prefix`.
    fn position(&self, prefix: &str) -> Option<usize> {
        self.messages().iter().position(|m| m.starts_with(prefix))
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases.get_opt(LEASE).await.ok().flatten()?.spec?.holder_identity.filter(|h| !h.is_empty())
}

async fn readyz(replica: &Replica) -> Result<(u16, String)> {
    let addr = replica.health_addr().with_context(|| format!("{} logged no health address", replica.name))?;
    let response = reqwest::get(format!("http://{addr}/readyz")).await?;
    Ok((response.status().as_u16(), response.text().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_and_a_standby_takes_over() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("petrel-e2e-leader-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let bin_dir = tokio::task::spawn_blocking(ensure_binaries).await??;
    let petrel = tokio::task::spawn_blocking(petrel_binary).await??;
    let mut options = FleetOptions::new(dir.join("fleet"), ["leader"]);
    options.bin_dir = Some(bin_dir);
    options.nodes_per_cluster = 1;
    let fleet = Fleet::start(options).await?;
    let cluster = fleet.cluster("leader")?;
    let kubectl = fleet.binaries().path("kubectl");
    let crds = workspace_root().join("crds");
    let applied = Command::new(&kubectl)
        .args(["--kubeconfig", &cluster.kubeconfig_path.to_string_lossy(), "apply", "--server-side", "-f"])
        .arg(&crds)
        .output()?;
    assert!(applied.status.success(), "applying the CRDs: {}", String::from_utf8_lossy(&applied.stderr));
    let leases: Api<Lease> = Api::namespaced(cluster.client().await?, NAMESPACE);

    let mut first = Replica::start(&petrel, &cluster.kubeconfig_path, &dir, "petrel-a")?;
    eventually("petrel-a to hold the lease", Duration::from_secs(60), async || {
        (holder(&leases).await.as_deref() == Some("petrel-a")).then_some(())
    })
    .await?;
    eventually("petrel-a to start the Canary controller", Duration::from_secs(30), async || {
        first.log().contains("starting the Canary controller").then_some(())
    })
    .await?;

    let mut second = Replica::start(&petrel, &cluster.kubeconfig_path, &dir, "petrel-b")?;
    eventually("petrel-b to wait for the lease", Duration::from_secs(30), async || {
        second.log().contains("waiting for leadership").then_some(())
    })
    .await?;
    // Several renewals of the leader pass; the standby must stay a standby.
    tokio::time::sleep(Duration::from_secs(LEASE_SECONDS)).await;
    assert_eq!(holder(&leases).await.as_deref(), Some("petrel-a"));
    assert!(!second.log().contains("starting the Canary controller"), "the standby reconciles:\n{}", second.log());
    let (status, body) = readyz(&second).await?;
    assert_eq!((status, body.starts_with("standby")), (200, true), "standby readiness: {body}");
    let (status, body) = readyz(&first).await?;
    assert_eq!((status, body.as_str()), (200, "ok\n"), "leader readiness");

    // A standby that is stopped leaves at once and cleanly, and never touches the Lease:
    // its SIGTERM handler is in place from the start, not only once a controller runs.
    let mut third = Replica::start(&petrel, &cluster.kubeconfig_path, &dir, "petrel-c")?;
    eventually("petrel-c to wait for the lease", Duration::from_secs(30), async || {
        third.log().contains("waiting for leadership").then_some(())
    })
    .await?;
    third.signal(libc::SIGTERM);
    let status = eventually("petrel-c to exit", Duration::from_secs(10), async || third.exit_status()).await?;
    assert!(status.success(), "a stopped standby exits cleanly, not by the signal ({status}):\n{}", third.log());
    assert!(third.position("shutdown signal received").is_some(), "{}", third.log());
    assert_eq!(holder(&leases).await.as_deref(), Some("petrel-a"), "the standby left the leader's Lease alone");

    // The leader dies without releasing: the standby waits for the lease to expire.
    let killed = Instant::now();
    first.signal(libc::SIGKILL);
    eventually("petrel-b to take the lease", Duration::from_secs(LEASE_SECONDS + 20), async || {
        (holder(&leases).await.as_deref() == Some("petrel-b")).then_some(())
    })
    .await?;
    let takeover = killed.elapsed();
    eventually("petrel-b to start the Canary controller", Duration::from_secs(30), async || {
        second.log().contains("starting the Canary controller").then_some(())
    })
    .await?;
    eprintln!("takeover after SIGKILL of the leader: {takeover:.1?} (lease {LEASE_SECONDS}s)");

    // A graceful stop hands the lease back at once instead of making the next replica wait.
    let stopped = Instant::now();
    second.signal(libc::SIGTERM);
    eventually("petrel-b to release the lease", Duration::from_secs(10), async || {
        holder(&leases).await.is_none().then_some(())
    })
    .await?;
    eprintln!("lease released {:.1?} after SIGTERM", stopped.elapsed());
    let status = eventually("petrel-b to exit", Duration::from_secs(10), async || second.exit_status()).await?;
    assert!(status.success(), "petrel-b exits cleanly after releasing ({status}):\n{}", second.log());
    // Each step of the stop is logged, in order: the Lease goes only after the controllers.
    let steps = ["shutdown signal received", "controllers stopped", "released the lease", "petrel stopped"]
        .map(|step| second.position(step));
    assert!(
        steps.iter().all(Option::is_some) && steps.windows(2).all(|w| w[0] < w[1]),
        "shutdown steps {steps:?} out of order or missing:\n{}",
        second.log()
    );
    fleet.shutdown().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
