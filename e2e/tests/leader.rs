//! Leader election on a real control plane: two `petrel --leader-elect` replicas, one
//! leads and reconciles, the other waits as a ready standby; a third standby stopped with
//! SIGTERM exits cleanly without touching the Lease; SIGKILL the leader and the standby
//! takes the Lease once it expires; SIGTERM the new leader and it stops its controllers,
//! hands the Lease back at once and exits cleanly.
//!
//! Sharding (`--shards 3`): three replicas each hold one shard's Lease and progress only
//! their shard's Canaries; SIGKILL one mid-release and a survivor takes its shard once
//! the Lease expires and finishes its Canaries' releases, no step applied twice; started
//! again, the replica asks for its shard and the survivor hands it back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use petrel::api::Canary;
use petrel::api::canary::Phase;
use petrel_e2e::bench::{run, workload};
use petrel_e2e::fleet::{Fleet, FleetOptions, ensure_binaries, spawn_tied_to_process};
use petrel_e2e::scenario::{eventually, petrel_binary, workspace_root};
use petrel_e2e::wait::poll;

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
        Replica::start_with(binary, kubeconfig, dir, name, &[])
    }

    /// A replica with `extra` flags after the common ones.
    fn start_with(binary: &Path, kubeconfig: &Path, dir: &Path, name: &'static str, extra: &[&str]) -> Result<Replica> {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = Command::new(binary);
        command
            .args(["--kubeconfig", &kubeconfig.to_string_lossy(), "--metrics-addr", "127.0.0.1:0"])
            .args(["--leader-elect", "--leader-election-namespace", NAMESPACE])
            .args(["--leader-election-lease-duration", &LEASE_SECONDS.to_string()])
            .args(["--leader-election-renew-before", "2"])
            .args(["--metrics-server", "http://127.0.0.1:9", "--log-json"])
            .args(extra)
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
    holder_of(leases, LEASE).await
}

async fn holder_of(leases: &Api<Lease>, lease: &str) -> Option<String> {
    leases.get_opt(lease).await.ok().flatten()?.spec?.holder_identity.filter(|h| !h.is_empty())
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

/// Shards of the sharding test, one replica each.
const SHARDS: u32 = 3;
/// Canaries of the sharding test: about eight per shard.
const CANARIES: usize = 24;
/// The replicas: StatefulSet-style names, so each prefers the shard of its ordinal.
const SHARD_REPLICAS: [&str; 3] = ["petrel-0", "petrel-1", "petrel-2"];

/// Who wrote a Canary's Events: `(reporting instance, reason, message, count, time)`.
type CanaryEvents = BTreeMap<String, Vec<(String, String, String, i32, chrono::DateTime<chrono::Utc>)>>;

async fn canary_events(events: &Api<Event>) -> Result<CanaryEvents> {
    let list = events.list(&ListParams::default().fields("involvedObject.kind=Canary")).await?;
    let mut by_canary = CanaryEvents::new();
    for e in list.items {
        let at = e
            .event_time
            .as_ref()
            .map(|t| t.0)
            .or(e.last_timestamp.as_ref().map(|t| t.0))
            .and_then(|t| {
                chrono::DateTime::from_timestamp(t.as_second(), u32::try_from(t.subsec_nanosecond()).unwrap_or(0))
            })
            .unwrap_or_default();
        let count = e.series.as_ref().and_then(|s| s.count).or(e.count).unwrap_or(1).max(1);
        by_canary.entry(e.involved_object.name.unwrap_or_default()).or_default().push((
            e.reporting_instance.unwrap_or_default(),
            e.reason.unwrap_or_default(),
            e.message.unwrap_or_default(),
            count,
            at,
        ));
    }
    for events in by_canary.values_mut() {
        events.sort_by_key(|e| e.4);
    }
    Ok(by_canary)
}

/// The phase of every Canary, by name.
async fn phases(canaries: &Api<Canary>) -> Result<BTreeMap<String, Phase>> {
    let list = canaries.list(&ListParams::default()).await?;
    Ok(list
        .items
        .into_iter()
        .map(|c| (c.metadata.name.clone().unwrap_or_default(), c.status.map(|s| s.phase).unwrap_or_default()))
        .collect())
}

/// Polls `check` every half second (24 Canaries listed at 10 Hz would cost the shared
/// machine for nothing).
async fn within<T>(what: &str, timeout: Duration, check: impl AsyncFnMut() -> Result<Option<T>>) -> Result<T> {
    poll(Instant::now() + timeout, Duration::from_millis(500), check)
        .await?
        .with_context(|| format!("timed out after {timeout:?} waiting for {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_shards_split_the_canaries_and_survivors_finish_a_dead_ones() -> Result<()> {
    let t0 = Instant::now();
    let dir = std::env::temp_dir().join(format!("petrel-e2e-shards-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let bin_dir = tokio::task::spawn_blocking(ensure_binaries).await??;
    let petrel = tokio::task::spawn_blocking(petrel_binary).await??;
    let mut options = FleetOptions::new(dir.join("fleet"), ["shards"]);
    options.bin_dir = Some(bin_dir);
    options.nodes_per_cluster = 1;
    let fleet = Fleet::start(options).await?;
    let cluster = fleet.cluster("shards")?;
    let kubectl = fleet.binaries().path("kubectl");
    let applied = Command::new(&kubectl)
        .args(["--kubeconfig", &cluster.kubeconfig_path.to_string_lossy(), "apply", "--server-side", "-f"])
        .arg(workspace_root().join("crds"))
        .output()?;
    assert!(applied.status.success(), "applying the CRDs: {}", String::from_utf8_lossy(&applied.stderr));
    let client = cluster.client().await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let canaries: Api<Canary> = Api::namespaced(client.clone(), NAMESPACE);
    let events: Api<Event> = Api::namespaced(client.clone(), NAMESPACE);
    let apply = PatchParams::apply("petrel-e2e").force();

    let apps: Vec<String> = (0..CANARIES).map(workload::app_name).collect();
    let shard_of = |app: &str| petrel::shard::shard_of(NAMESPACE, app, SHARDS);
    for shard in 0..SHARDS {
        let count = apps.iter().filter(|a| shard_of(a) == shard).count();
        assert!(count >= 3, "shard {shard} gets {count} of the {CANARIES} Canaries");
    }
    for app in &apps {
        let manifest = workload::deployment(NAMESPACE, app, workload::IMAGE_V0, 1);
        deployments.patch(app, &apply, &Patch::Apply(manifest)).await?;
    }
    run::wait_deployments_available(&deployments, CANARIES, Duration::from_secs(120)).await?;

    let shard_flags = ["--shards", "3"];
    let mut replicas = Vec::new();
    for name in SHARD_REPLICAS {
        replicas.push(Replica::start_with(&petrel, &cluster.kubeconfig_path, &dir, name, &shard_flags)?);
    }
    // Each replica takes the shard of its ordinal, and only that one.
    within("each replica to hold its own shard", Duration::from_secs(60), async || {
        for (shard, name) in SHARD_REPLICAS.iter().enumerate() {
            let lease = petrel::shard::lease_name(LEASE, shard as u32);
            if holder_of(&leases, &lease).await.as_deref() != Some(*name) {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await?;
    eprintln!("[shards] every replica holds its own shard at t={:.1?}", t0.elapsed());
    // Holding a Lease comes before the caches' first list: readiness follows within moments.
    for replica in &replicas {
        let ready = within(&format!("{} to be ready", replica.name), Duration::from_secs(30), async || {
            let (status, body) = readyz(replica).await?;
            Ok((status == 200).then_some(body))
        })
        .await;
        let (status, body) = readyz(replica).await?;
        assert!(ready.is_ok(), "{} readiness: {status} {body}", replica.name);
    }

    let analysis = workload::Analysis { interval: "3s".into(), iterations: 5, ..workload::Analysis::default() };
    for app in &apps {
        let manifest =
            workload::canary(workload::OperatorKind::Petrel, workload::Variant::Kubernetes, NAMESPACE, app, &analysis);
        canaries.patch(app, &apply, &Patch::Apply(manifest)).await?;
    }
    within("every Canary to be Initialized", Duration::from_secs(120), async || {
        let phases = phases(&canaries).await?;
        Ok((phases.len() == CANARIES && phases.values().all(|p| *p == Phase::Initialized)).then_some(()))
    })
    .await?;
    eprintln!("[shards] {CANARIES} Canaries initialized at t={:.1?}", t0.elapsed());

    // The release of every app at once; petrel-1 dies while its Canaries are mid-release.
    for app in &apps {
        let manifest =
            workload::with_image(workload::deployment(NAMESPACE, app, workload::IMAGE_V0, 1), workload::IMAGE_V1);
        deployments.patch(app, &apply, &Patch::Apply(manifest)).await?;
    }
    let victim = 1usize;
    let orphans: Vec<&String> = apps.iter().filter(|a| shard_of(a) == victim as u32).collect();
    within("petrel-1's Canaries to be progressing", Duration::from_secs(120), async || {
        let phases = phases(&canaries).await?;
        Ok(orphans.iter().all(|a| phases.get(*a) == Some(&Phase::Progressing)).then_some(()))
    })
    .await?;
    let killed = Instant::now();
    let killed_at = chrono::Utc::now();
    replicas[victim].signal(libc::SIGKILL);
    let at_kill = phases(&canaries).await?;
    let mid_release = orphans.iter().filter(|a| at_kill.get(**a) == Some(&Phase::Progressing)).count();
    eprintln!(
        "[shards] petrel-1 killed at t={:.1?}; {mid_release} of its {} Canaries mid-release",
        t0.elapsed(),
        orphans.len()
    );
    assert!(mid_release * 2 >= orphans.len(), "most of petrel-1's Canaries were still progressing: {at_kill:?}");

    let victim_lease = petrel::shard::lease_name(LEASE, victim as u32);
    let taker = within("a survivor to take petrel-1's shard", Duration::from_secs(LEASE_SECONDS + 15), async || {
        Ok(holder_of(&leases, &victim_lease).await.filter(|h| h != SHARD_REPLICAS[victim]))
    })
    .await?;
    let takeover = killed.elapsed();
    eprintln!("[shards] {taker} holds shard 1 {takeover:.1?} after the kill (lease {LEASE_SECONDS}s)");
    assert!(takeover <= Duration::from_secs(LEASE_SECONDS + 10), "takeover took {takeover:?}");
    let survivor = replicas.iter().find(|r| r.name == taker).context("the taker is one of the replicas")?;
    let addr = survivor.health_addr().context("the taker's health address")?;
    let metrics = reqwest::get(format!("http://{addr}/metrics")).await?.text().await?;
    for shard in 0..SHARDS {
        let line = format!("petrel_shard_held{{shard=\"{shard}\"}} ");
        let value = metrics.lines().find_map(|l| l.strip_prefix(&line)).unwrap_or("missing");
        let expected = if shard == 1 || survivor.name == SHARD_REPLICAS[shard as usize] { "1" } else { "0" };
        assert_eq!(value, expected, "{taker}'s petrel_shard_held of shard {shard}");
    }

    // The orphans go on from where petrel-1 left them, on the survivor.
    let finished = within("every Canary to succeed", Duration::from_secs(180), async || {
        let phases = phases(&canaries).await?;
        if let Some((name, _)) = phases.iter().find(|(_, p)| **p == Phase::Failed) {
            anyhow::bail!("Canary {name} failed: {phases:?}");
        }
        Ok((phases.len() == CANARIES && phases.values().all(|p| *p == Phase::Succeeded)).then_some(()))
    })
    .await;
    if let Err(e) = &finished {
        for replica in &replicas {
            eprintln!("--- {} ---\n{}", replica.name, replica.log());
        }
        anyhow::bail!("{e:#}");
    }
    eprintln!("[shards] every Canary succeeded {:.1?} after the kill", killed.elapsed());

    // Every step once, each Canary progressed by its shard's holder: petrel-1's Canaries by
    // petrel-1 until the kill, then by the taker only.
    let by_canary = within("every Canary's Promoted Event", Duration::from_secs(30), async || {
        let by_canary = canary_events(&events).await?;
        let promoted =
            apps.iter().all(|a| by_canary.get(a).is_some_and(|events| events.iter().any(|e| e.1 == "Promoted")));
        Ok(promoted.then_some(by_canary))
    })
    .await?;
    let mut resumed_after_kill = Vec::new();
    let mut slowest_resume = Duration::ZERO;
    for app in &apps {
        let events = &by_canary[app];
        let shard = shard_of(app) as usize;
        let mut counts: BTreeMap<(&str, &str), i32> = BTreeMap::new();
        for (_, reason, message, count, _) in events {
            *counts.entry((reason, message)).or_default() += count;
        }
        let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
        assert!(repeated.is_empty(), "{app}: steps applied more than once: {repeated:?}");
        for reason in ["NewRevision", "PromotionStarted", "Promoted"] {
            assert_eq!(counts.keys().filter(|(r, _)| *r == reason).count(), 1, "{app}: one {reason}: {events:?}");
        }
        let iterations = counts.keys().filter(|(r, _)| *r == "IterationPassed").count();
        assert_eq!(iterations, analysis.iterations as usize, "{app}: each iteration once: {events:?}");
        let writers: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
        if shard == victim {
            // Before the kill petrel-1, after it the taker (one second of slack for the
            // Events' whole-second times).
            let after = events.iter().filter(|e| e.0 != SHARD_REPLICAS[victim]).collect::<Vec<_>>();
            assert!(after.iter().all(|e| e.0 == taker), "{app}: written by {writers:?}, taker {taker}");
            assert!(
                after.iter().all(|e| e.4 >= killed_at - chrono::Duration::seconds(1)),
                "{app}: the taker wrote before the kill: {events:?}"
            );
            if !after.is_empty() && events.iter().any(|e| e.0 == SHARD_REPLICAS[victim]) {
                resumed_after_kill.push(app.clone());
            }
            // It went on within the lease duration and a few intervals, not at some
            // later change: its next step's Event came soon after the takeover.
            if let Some(first) = after.first() {
                let resumed = (first.4 - killed_at).to_std().unwrap_or_default();
                assert!(
                    resumed <= Duration::from_secs(LEASE_SECONDS + 10),
                    "{app}: resumed {resumed:?} after the kill"
                );
                slowest_resume = slowest_resume.max(resumed);
            }
        } else {
            assert!(
                writers.iter().all(|w| *w == SHARD_REPLICAS[shard]),
                "{app} of shard {shard}: written by {writers:?}"
            );
        }
    }
    eprintln!(
        "[shards] {} of petrel-1's Canaries were started by petrel-1 and finished by {taker}; the last resumed {slowest_resume:.1?} after the kill",
        resumed_after_kill.len()
    );
    assert!(!resumed_after_kill.is_empty(), "no release was handed over mid-way");

    // petrel-1 comes back: it asks for its shard on the Lease, the taker hands it back.
    let restarted = Instant::now();
    replicas[victim] =
        Replica::start_with(&petrel, &cluster.kubeconfig_path, &dir, SHARD_REPLICAS[victim], &shard_flags)?;
    within("petrel-1 to get its shard back", Duration::from_secs(LEASE_SECONDS + 30), async || {
        Ok((holder_of(&leases, &victim_lease).await.as_deref() == Some(SHARD_REPLICAS[victim])).then_some(()))
    })
    .await?;
    eprintln!("[shards] petrel-1 restarted and holds shard 1 again {:.1?} later", restarted.elapsed());
    let survivor = replicas.iter().find(|r| r.name == taker).context("the taker")?;
    let metrics = reqwest::get(format!("http://{addr}/metrics")).await?.text().await?;
    assert!(
        metrics.lines().any(|l| l == "petrel_shard_held{shard=\"1\"} 0"),
        "{} still reports shard 1 held:\n{}",
        survivor.name,
        survivor.log()
    );
    for (shard, name) in SHARD_REPLICAS.iter().enumerate() {
        let lease = petrel::shard::lease_name(LEASE, shard as u32);
        assert_eq!(holder_of(&leases, &lease).await.as_deref(), Some(*name), "one shard each again");
    }

    // A graceful stop hands the shards back at once.
    for replica in replicas.iter_mut() {
        replica.signal(libc::SIGTERM);
    }
    for (shard, _) in SHARD_REPLICAS.iter().enumerate() {
        let lease = petrel::shard::lease_name(LEASE, shard as u32);
        eventually("the shard Leases to be released", Duration::from_secs(15), async || {
            holder_of(&leases, &lease).await.is_none().then_some(())
        })
        .await?;
    }
    for replica in replicas.iter_mut() {
        let status = eventually("a replica to exit", Duration::from_secs(15), async || replica.exit_status()).await?;
        assert!(status.success(), "{} exits cleanly ({status}):\n{}", replica.name, replica.log());
    }
    eprintln!("[shards] passed in {:.1?}", t0.elapsed());
    fleet.shutdown().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
