//! `kubectl petrel` against one real control plane acting as the hub: `plan`, `approve`
//! and `get rollout` (once and with `--watch`) on a fleet Rollout.
//!
//! No hub process runs: the Rollout status is written the way the hub writes it — built
//! by the hub's own pure functions (`decide_waves`, `build_status`) and server-side
//! applied on the status subresource with the hub's field manager — so the test can
//! check that the approval the plugin writes is exactly what the hub reads, and that
//! the hub's next status write (fresh or from a stale read) keeps it.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use petrel::api::canary::Phase;
use petrel::api::rollout::{RolloutPhase, RolloutStatus, WavePhase};
use petrel::api::{Cluster, Rollout};
use petrel::fleet::identity::IdentityVerdict;
use petrel::fleet::{
    CanaryObservation, MemberObservation, RolloutPlan, build_status, decide_waves, history_for_release,
};
use petrel::hub::HUB_FIELD_MANAGER;
use petrel_e2e::fleet::{Fleet, FleetOptions, spawn_tied_to_process};
use petrel_e2e::scenario::{eventually, plugin_binary};
use serde_json::json;

const NAMESPACE: &str = "fleet";
const ROLLOUT: &str = "podinfo";
const RELEASE: &str = "ghcr.io/stefanprodan/podinfo:6.0.1";
/// How long one plugin command may take on a loaded machine.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// One finished run of the plugin.
struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit ok: {}\n--- stdout\n{}--- stderr\n{}", self.success, self.stdout, self.stderr)
    }
}

impl From<Output> for Run {
    fn from(out: Output) -> Self {
        Run {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Runs a command to completion, killing it past [`COMMAND_TIMEOUT`].
async fn run(mut command: tokio::process::Command) -> Result<Run> {
    command.stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(COMMAND_TIMEOUT, command.output())
        .await
        .with_context(|| format!("{command:?} did not finish within {COMMAND_TIMEOUT:?}"))?
        .with_context(|| format!("running {command:?}"))?;
    Ok(out.into())
}

struct Plugin {
    binary: PathBuf,
    kubeconfig: PathBuf,
}

impl Plugin {
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.binary);
        command.arg("--kubeconfig").arg(&self.kubeconfig).args(["-n", NAMESPACE]).args(args);
        command
    }

    async fn run(&self, args: &[&str]) -> Result<Run> {
        run(self.command(args)).await
    }
}

fn cluster(name: &str, labels: &[(&str, &str)]) -> Cluster {
    let mut cluster: Cluster = serde_json::from_value(json!({
        "apiVersion": "petrel.dev/v1alpha1",
        "kind": "Cluster",
        "metadata": { "name": name },
        "spec": { "kubeconfigSecretRef": { "name": name, "namespace": "petrel-system" } }
    }))
    .expect("a valid Cluster");
    cluster.labels_mut().extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    cluster
}

fn clusters() -> Vec<Cluster> {
    vec![
        cluster("canary-1", &[("env", "prod"), ("role", "canary"), ("region", "eu")]),
        cluster("eu-1", &[("env", "prod"), ("region", "eu")]),
        cluster("eu-2", &[("env", "prod"), ("region", "eu")]),
        cluster("us-1", &[("env", "prod"), ("region", "us")]),
        cluster("asia-1", &[("env", "prod"), ("region", "asia")]),
        cluster("staging-1", &[("env", "staging"), ("region", "eu")]),
    ]
}

fn rollout() -> Rollout {
    serde_json::from_value(json!({
        "apiVersion": "petrel.dev/v1alpha1",
        "kind": "Rollout",
        "metadata": { "name": ROLLOUT, "namespace": NAMESPACE },
        "spec": {
            "canaryRef": { "namespace": "test", "name": "podinfo" },
            "clusters": { "matchLabels": { "env": "prod" } },
            "waves": [
                { "name": "canary", "clusterSelector": { "matchLabels": { "role": "canary" } } },
                { "name": "eu", "clusterSelector": { "matchLabels": { "region": "eu" } }, "approval": "Manual" },
                { "name": "us", "clusterSelector": { "matchLabels": { "region": "us" } }, "approval": "Manual" }
            ]
        }
    }))
    .expect("a valid Rollout")
}

/// What each member's Canary reports: the canary cluster promoted the release, every
/// other member waits at the gate with it.
fn canary_of(cluster: &str) -> CanaryObservation {
    let promoted = cluster == "canary-1";
    CanaryObservation {
        phase: if promoted { Phase::Succeeded } else { Phase::Waiting },
        release: Some(RELEASE.to_string()),
        revision: Some(format!("{cluster}-rev-2")),
        promoted_revision: Some(format!("{cluster}-rev-{}", if promoted { 2 } else { 1 })),
        approved_revision: promoted.then(|| format!("{cluster}-rev-2")),
        ..CanaryObservation::default()
    }
}

/// The status the hub would write after reading `rollout` at `now`: the hub's own
/// decision and status builder over the Clusters the Rollout selects.
fn hub_status(rollout: &Rollout, clusters: &[Cluster], now: DateTime<Utc>) -> Result<RolloutStatus> {
    let plan = RolloutPlan::from_spec(&rollout.spec)?;
    let history = history_for_release(rollout.status.as_ref(), RELEASE);
    let members: Vec<MemberObservation> = clusters
        .iter()
        .filter(|c| rollout.spec.clusters.matches(c.labels()))
        .map(|c| MemberObservation {
            cluster: c.name_any(),
            labels: c.labels().clone(),
            reachable: true,
            last_contact: Some(now),
            approved_at: history.approvals.get(&c.name_any()).copied(),
            canary: Some(canary_of(&c.name_any())),
            identity: IdentityVerdict::Verified,
        })
        .collect();
    let decision = decide_waves(&plan, RELEASE, &history.waves, &members, now);
    let previous = rollout.status.as_ref().map_or(&[][..], |s| &s.conditions[..]);
    Ok(build_status(&plan, RELEASE, rollout.metadata.generation, &members, &decision, previous, now))
}

/// Writes a status the way the hub does (server-side apply, `petrel-hub`, forced).
async fn write_as_hub(api: &Api<Rollout>, status: &RolloutStatus) -> Result<Rollout> {
    let body = json!({
        "apiVersion": "petrel.dev/v1alpha1",
        "kind": "Rollout",
        "metadata": { "name": ROLLOUT, "namespace": NAMESPACE },
        "status": status,
    });
    api.patch_status(ROLLOUT, &PatchParams::apply(HUB_FIELD_MANAGER).force(), &Patch::Apply(&body))
        .await
        .context("writing the Rollout status as the hub")
}

fn kubectl(kubectl: &Path, kubeconfig: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(kubectl).arg("--kubeconfig").arg(kubeconfig).args(args).stdin(Stdio::null()).output()?;
    ensure!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The lines of `text` from the one starting with `header` up to the next blank line.
fn section<'a>(text: &'a str, header: &str) -> Vec<&'a str> {
    text.lines().skip_while(|l| !l.starts_with(header)).skip(1).take_while(|l| !l.is_empty()).collect()
}

/// Cluster names (first word after the branch) of a plan section.
fn names_in(lines: &[&str]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| l.trim_start_matches(['├', '└', '─', ' ']).split_whitespace().next())
        .map(String::from)
        .collect()
}

fn approval_of(rollout: &Rollout, wave: &str) -> (Option<DateTime<Utc>>, Option<String>) {
    let entry = rollout.status.as_ref().and_then(|s| s.waves.iter().find(|w| w.name == wave));
    (entry.and_then(|w| w.approved_at), entry.and_then(|w| w.approved_release.clone()))
}

/// Field managers owning `status.waves[name=<wave>].approvedAt`.
fn approval_owners(rollout: &Rollout, wave: &str) -> Vec<String> {
    let key = format!(r#"k:{{"name":"{wave}"}}"#);
    rollout
        .managed_fields()
        .iter()
        .filter(|m| {
            m.fields_v1.as_ref().is_some_and(|f| {
                f.0.get("f:status")
                    .and_then(|s| s.get("f:waves"))
                    .and_then(|w| w.get(&key))
                    .is_some_and(|entry| entry.get("f:approvedAt").is_some())
            })
        })
        .filter_map(|m| m.manager.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_plans_approves_and_shows_a_fleet_rollout() -> Result<()> {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("petrel-e2e-plugin-fleet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let bin_dir = tokio::task::spawn_blocking(petrel_e2e::fleet::ensure_binaries).await??;
    let binary = tokio::task::spawn_blocking(plugin_binary).await??;
    let mut opts = FleetOptions::new(dir.join("fleet"), ["hub"]);
    opts.bin_dir = Some(bin_dir);
    opts.nodes_per_cluster = 1;
    let fleet = Fleet::start(opts).await.context("starting the control plane")?;
    let hub = fleet.cluster("hub")?;
    let kubectl_bin = fleet.binaries().path("kubectl");
    let crds = petrel_e2e::scenario::workspace_root().join("crds");
    kubectl(&kubectl_bin, &hub.kubeconfig_path, &["apply", "--server-side", "-f", &crds.to_string_lossy()])?;
    kubectl(
        &kubectl_bin,
        &hub.kubeconfig_path,
        &["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"],
    )?;
    eprintln!("control plane and CRDs ready after {:.1?}", started.elapsed());

    let client: Client = hub.client().await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?)
        .await?;
    let cluster_api: Api<Cluster> = Api::all(client.clone());
    for c in clusters() {
        cluster_api.create(&PostParams::default(), &c).await.with_context(|| format!("creating {}", c.name_any()))?;
    }
    let rollouts: Api<Rollout> = Api::namespaced(client.clone(), NAMESPACE);
    let created = rollouts.create(&PostParams::default(), &rollout()).await?;
    let plugin = Plugin { binary, kubeconfig: hub.kubeconfig_path.clone() };

    // get rollout before the hub wrote anything: the spec's waves, no release.
    let fresh = plugin.run(&["get", "rollout", ROLLOUT]).await?;
    ensure!(fresh.success && fresh.stdout.contains("not reconciled by the hub yet"), "get before the hub:\n{fresh}");
    // approve with no release yet is refused.
    let early = plugin.run(&["approve", ROLLOUT, "eu"]).await?;
    ensure!(!early.success && early.stderr.contains("has no release yet"), "approve without a release:\n{early}");

    // plan: which wave each Cluster falls in, and why.
    let plan = plugin.run(&["plan", ROLLOUT]).await?;
    ensure!(plan.success, "plan:\n{plan}");
    let text = &plan.stdout;
    eprintln!("kubectl petrel plan {ROLLOUT}:\n{text}");
    assert_eq!(names_in(&section(text, "Wave 1/3 canary")), ["canary-1"], "{text}");
    assert_eq!(names_in(&section(text, "Wave 2/3 eu: Manual")), ["eu-1", "eu-2"], "{text}");
    assert_eq!(names_in(&section(text, "Wave 3/3 us: Manual")), ["us-1"], "{text}");
    assert_eq!(names_in(&section(text, "In no wave")), ["asia-1"], "{text}");
    assert_eq!(names_in(&section(text, "Not in this Rollout")), ["staging-1"], "{text}");
    assert!(text.contains("canary-1  role=canary; also matches eu (the first matching wave wins)"), "{text}");
    assert!(text.contains("staging-1  needs env=prod, env is staging"), "{text}");
    let missing = plugin.run(&["plan", "nope"]).await?;
    ensure!(!missing.success && missing.stderr.contains("Rollout fleet/nope not found"), "plan of nothing:\n{missing}");

    // The hub's first write: the canary wave succeeded, eu waits for its approval.
    let t0 = Utc::now();
    let waiting = hub_status(&created, &clusters(), t0)?;
    ensure!(waiting.phase == Some(RolloutPhase::WaitingApproval), "hub status: {waiting:?}");
    let before_approval = write_as_hub(&rollouts, &waiting).await?;

    // kubectl's plugin completion (kubectl_complete-petrel) offers the Manual waves.
    let mut complete = tokio::process::Command::new(&plugin.binary);
    complete.arg("__complete").arg("--kubeconfig").arg(&plugin.kubeconfig);
    complete.args(["-n", NAMESPACE, "approve", ROLLOUT, ""]);
    let waves = run(complete).await?;
    ensure!(
        waves.success && waves.stdout == "eu\twaiting for approval\nus\tManual wave\n:4\n",
        "completion of the waves:\n{waves}"
    );

    // The same through kubectl itself, as `kubectl petrel approve podinfo <TAB>` asks it.
    let plugin_dir = dir.join("plugins");
    std::fs::create_dir_all(&plugin_dir)?;
    std::os::unix::fs::symlink(&plugin.binary, plugin_dir.join("kubectl-petrel"))?;
    let script = plugin_dir.join("kubectl_complete-petrel");
    std::fs::write(&script, "#!/bin/sh\nexec kubectl-petrel __complete \"$@\"\n")?;
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let kubectl_dir = kubectl_bin.parent().context("kubectl dir")?;
    let path = format!("{}:{}:{}", plugin_dir.display(), kubectl_dir.display(), std::env::var("PATH")?);
    let mut through_kubectl = tokio::process::Command::new(&kubectl_bin);
    through_kubectl.args(["__complete", "petrel", "-n", NAMESPACE, "approve", ROLLOUT, ""]);
    through_kubectl.env("PATH", &path).env("KUBECONFIG", &hub.kubeconfig_path);
    let by_kubectl = run(through_kubectl).await?;
    ensure!(
        by_kubectl.success && by_kubectl.stdout.starts_with("eu\twaiting for approval\nus\tManual wave\n:4"),
        "kubectl's plugin completion:\n{by_kubectl}"
    );

    // approve refuses an automatic wave and a wave further ahead, with the reason.
    let automatic = plugin.run(&["approve", ROLLOUT, "canary"]).await?;
    ensure!(!automatic.success, "approving an automatic wave succeeded:\n{automatic}");
    ensure!(automatic.stderr.contains("wave canary is Automatic"), "{automatic}");
    let ahead = plugin.run(&["approve", ROLLOUT, "us"]).await?;
    ensure!(!ahead.success && ahead.stderr.contains("add --ahead"), "approving a later wave:\n{ahead}");
    assert_eq!(approval_of(&rollouts.get(ROLLOUT).await?, "us"), (None, None), "a refusal writes nothing");

    // approve the waiting wave: approvedAt and approvedRelease = the current release.
    let approve = plugin.run(&["approve", ROLLOUT, "eu"]).await?;
    ensure!(approve.success && approve.stdout.contains("approved wave eu of podinfo"), "approve:\n{approve}");
    let approved = rollouts.get(ROLLOUT).await?;
    let (at, release) = approval_of(&approved, "eu");
    let at = at.context("approvedAt missing after approve")?;
    ensure!((at - Utc::now()).num_seconds().abs() < 120, "approvedAt {at} is not now");
    assert_eq!(release.as_deref(), Some(RELEASE));
    assert_eq!(approval_owners(&approved, "eu"), ["kubectl-petrel"]);
    let status = approved.status.clone().context("status")?;
    let canary_wave = status.waves.iter().find(|w| w.name == "canary").context("canary wave")?;
    ensure!(
        canary_wave.phase == WavePhase::Succeeded && canary_wave.opened_at.is_some(),
        "the approval must leave the hub's record of the other waves alone: {canary_wave:?}"
    );
    let again = plugin.run(&["approve", ROLLOUT, "eu"]).await?;
    ensure!(!again.success && again.stderr.contains("already approved"), "approving twice:\n{again}");

    // A hub write made from a read before the approval does not own approvedAt, so the
    // approval survives it.
    let stale = hub_status(&before_approval, &clusters(), t0 + chrono::Duration::seconds(30))?;
    let after_stale = write_as_hub(&rollouts, &stale).await?;
    assert_eq!(approval_of(&after_stale, "eu"), (Some(at), Some(RELEASE.to_string())), "a stale hub write wiped it");

    // The hub reads the approval: the wave opens and its members are approved.
    let open = hub_status(&after_stale, &clusters(), t0 + chrono::Duration::seconds(60))?;
    let eu = open.waves.iter().find(|w| w.name == "eu").context("eu wave")?;
    ensure!(eu.phase == WavePhase::Progressing && eu.approved_at == Some(at), "the hub did not open eu: {eu:?}");
    let opened = write_as_hub(&rollouts, &open).await?;
    assert_eq!(approval_of(&opened, "eu"), (Some(at), Some(RELEASE.to_string())));

    // get rollout: the tree, with each member under its wave.
    let get = plugin.run(&["get", "rollout", ROLLOUT]).await?;
    ensure!(get.success, "get rollout:\n{get}");
    eprintln!("kubectl petrel get rollout {ROLLOUT}:\n{}", get.stdout);
    let lines: Vec<&str> = get.stdout.lines().collect();
    let eu_line = lines.iter().position(|l| l.contains(" eu ") && l.contains("manual, approved"));
    let eu_line = eu_line.with_context(|| format!("no approved eu wave in\n{get}"))?;
    ensure!(lines[eu_line + 1].contains("eu-1") && lines[eu_line + 2].contains("eu-2"), "{get}");
    ensure!(get.stdout.contains("Phase:           ◌ Progressing\n"), "{get}");
    ensure!(get.stdout.contains(&format!("Release:         {RELEASE}\n")), "{get}");
    ensure!(lines.iter().any(|l| l.contains("asia-1") && l.contains("Unassigned")), "{get}");

    // approve --dry-run prints a plain kubectl command that does the same write.
    let dry = plugin.run(&["approve", ROLLOUT, "us", "--ahead", "--dry-run"]).await?;
    ensure!(dry.success && dry.stdout.contains("kubectl apply --server-side --subresource=status"), "{dry}");
    assert_eq!(approval_of(&rollouts.get(ROLLOUT).await?, "us"), (None, None), "--dry-run writes nothing");
    let mut shell = tokio::process::Command::new("sh");
    shell.args(["-c", dry.stdout.trim()]).env("PATH", &path).env("KUBECONFIG", &hub.kubeconfig_path);
    let by_kubectl = run(shell).await?;
    ensure!(by_kubectl.success, "the printed kubectl command failed:\n{by_kubectl}");
    let approved_us = rollouts.get(ROLLOUT).await?;
    assert_eq!(approval_of(&approved_us, "us").1.as_deref(), Some(RELEASE));
    assert_eq!(approval_of(&approved_us, "eu"), (Some(at), Some(RELEASE.to_string())), "one approval per wave");

    // get rollout --watch redraws when the Rollout changes (paused by the plugin).
    watch_redraws(&plugin).await?;
    ensure!(rollouts.get(ROLLOUT).await?.spec.paused, "pause rollout/ did not set spec.paused");
    let twice = plugin.run(&["pause", &format!("rollout/{ROLLOUT}")]).await?;
    ensure!(!twice.success && twice.stderr.contains("already paused"), "pausing twice:\n{twice}");
    let promote = plugin.run(&["promote", &format!("rollout/{ROLLOUT}")]).await?;
    ensure!(!promote.success && promote.stderr.contains("kubectl petrel approve"), "promote rollout:\n{promote}");

    eprintln!("plugin fleet test done in {:.1?}", started.elapsed());
    fleet.shutdown().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn watch_redraws(plugin: &Plugin) -> Result<()> {
    let mut command = Command::new(&plugin.binary);
    command
        .arg("--kubeconfig")
        .arg(&plugin.kubeconfig)
        .args(["-n", NAMESPACE, "get", "rollout", ROLLOUT, "--watch"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = spawn_tied_to_process(command).context("starting get --watch")?;
    let mut stdout = child.stdout.take().context("no stdout")?;
    let shown = Arc::new(Mutex::new(String::new()));
    let reader = {
        let shown = shown.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n @ 1..) = stdout.read(&mut buffer) {
                shown.lock().unwrap().push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        })
    };
    let frames = |shown: &Arc<Mutex<String>>| shown.lock().unwrap().matches("\x1b[H\x1b[2J").count();
    let result = async {
        eventually("the first frame", COMMAND_TIMEOUT, async || {
            (frames(&shown) >= 1 && shown.lock().unwrap().contains("Name:")).then_some(())
        })
        .await?;
        ensure!(!shown.lock().unwrap().contains("Paused:"), "paused before the patch");
        let pause = plugin.run(&["pause", &format!("rollout/{ROLLOUT}")]).await?;
        ensure!(pause.success && pause.stdout.contains("Rollout podinfo paused"), "pause rollout:\n{pause}");
        eventually("a redraw showing the pause", COMMAND_TIMEOUT, async || {
            shown.lock().unwrap().contains("Paused:          yes").then_some(())
        })
        .await?;
        ensure!(frames(&shown) >= 2, "the pause was not a new frame:\n{}", shown.lock().unwrap());
        Ok(())
    }
    .await;
    // Our own child, stopped by its handle.
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    result.with_context(|| format!("get rollout --watch printed:\n{}", shown.lock().unwrap()))
}
