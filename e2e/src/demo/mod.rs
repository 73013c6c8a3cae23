//! `petrel-demo`: a local fleet releasing the example app with petrel,
//! shown live.
//!
//! [`Demo::start`] brings up a hub and one member per GitOps overlay of
//! `examples/podinfo/clusters/<env>/<region>` (real control planes, see
//! [`crate::fleet`]), installs the CRDs, applies the overlay with
//! `kubectl apply -k`, and runs per member a traffic simulator, a real
//! Prometheus scraping it and a real `petrel` process. [`Demo::run_flow`]
//! then releases a healthy version wave by wave (canary cluster first) and
//! a bad one to the canary cluster only, which petrel rolls back. Until
//! petrel's hub orders waves (the fleet issue), the demo driver does.
//!
//! Everything is torn down when the [`Demo`] is dropped.

pub mod plan;
pub mod process;
pub mod view;

use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures::future::try_join_all;
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, ListParams};
use petrel::api::{Canary, CanaryStatus, Phase};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;

use crate::fleet::{Cluster, Fleet, FleetOptions};
use crate::prometheus::Prometheus;
use crate::simulator::{App, AppCoords, Provider, Simulator, SimulatorConfig, TrafficProfile, VersionBehaviour};
use plan::{AnalysisTuning, MemberSpec};
use process::ChildProcess;
use view::{EventView, MemberView, ResultView, Screen};

/// The example app's image repository.
pub const APP_REPOSITORY: &str = "ghcr.io/stefanprodan/podinfo";
/// Namespace and name of the example's Canary (and Deployment, Service).
pub const APP_NAMESPACE: &str = "podinfo";
pub const APP_NAME: &str = "podinfo";
/// The example's overlays, relative to `examples/podinfo/`.
pub const OVERLAYS: [&str; 3] =
    ["clusters/staging/eu-west-1", "clusters/production/eu-west-1", "clusters/production/us-east-1"];
/// petrel's CRDs a member cluster needs, in `crds/`.
pub const MEMBER_CRDS: [&str; 3] = ["canaries.yaml", "metrictemplates.yaml", "alertproviders.yaml"];
/// Name of the hub cluster.
pub const HUB: &str = "hub";

/// How the demo shows progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// A table redrawn in place every second.
    Terminal,
    /// One line per change (CI logs, pipes).
    Lines,
    /// Nothing (tests).
    Quiet,
}

impl Output {
    /// `Terminal` when stdout is a terminal, `Lines` otherwise.
    pub fn detect() -> Output {
        if std::io::stdout().is_terminal() { Output::Terminal } else { Output::Lines }
    }
}

/// How to run the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Kubeconfigs, logs, Prometheus data. Created if missing, kept afterwards.
    pub work_dir: PathBuf,
    /// The repository root (holds `crds/`, `e2e/crds/third-party/`, `examples/podinfo/`).
    pub repo_root: PathBuf,
    /// Keep the first `n` members (canary cluster first); all three by default.
    pub members: Option<usize>,
    /// Analysis numbers changed on the rendered Canary (fast test mode).
    pub tuning: AnalysisTuning,
    pub output: Output,
    /// The `petrel` operator binary.
    pub petrel_bin: PathBuf,
    /// The healthy release's tag (the example runs 6.7.0).
    pub healthy_tag: String,
    /// The bad release's tag.
    pub bad_tag: String,
    /// Fraction of the bad release's requests that fail.
    pub bad_error_rate: f64,
    /// Requests per second the simulator sends each member's app.
    pub requests_per_second: f64,
    /// How long one cluster may take to finish a release.
    pub release_timeout: Duration,
}

impl DemoOptions {
    /// The demo as the README runs it: three members, the GitOps tree's
    /// own analysis numbers.
    pub fn new(work_dir: PathBuf, repo_root: PathBuf, petrel_bin: PathBuf) -> DemoOptions {
        DemoOptions {
            work_dir,
            repo_root,
            members: None,
            tuning: AnalysisTuning::default(),
            output: Output::detect(),
            petrel_bin,
            healthy_tag: "6.7.1".into(),
            bad_tag: "6.7.2".into(),
            bad_error_rate: 0.2,
            requests_per_second: 100.0,
            release_timeout: Duration::from_secs(300),
        }
    }

    fn example_dir(&self) -> PathBuf {
        self.repo_root.join("examples/podinfo")
    }
}

/// The repository root this crate was built from.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// How one cluster ended one release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterResult {
    pub member: String,
    /// The Canary's phase when the release ended.
    pub phase: String,
    /// `status.failedChecks` then.
    pub failed_checks: i32,
    /// `status.promotedRelease` then: what the primary serves.
    pub primary_release: String,
    pub took: Duration,
}

/// What happened, for the summary and for tests.
#[derive(Debug, Clone, Default)]
pub struct DemoOutcome {
    pub fleet_start: Duration,
    pub setup: Duration,
    /// Per wave of the healthy release: each cluster's end and the wave's time.
    pub healthy_waves: Vec<(Vec<ClusterResult>, Duration)>,
    /// The bad release on the canary wave.
    pub bad: Vec<ClusterResult>,
    pub bad_took: Duration,
    /// Members that never received the bad release, with the release they run.
    pub untouched: Vec<(String, String)>,
    pub total: Duration,
}

/// The stage line and the driver's narration, shared with the live view.
pub struct Board {
    output: Output,
    started: Instant,
    state: Mutex<BoardState>,
}

#[derive(Default)]
struct BoardState {
    note: String,
    stage: String,
    log: Vec<String>,
    live: bool,
}

impl Board {
    fn new(output: Output) -> Arc<Board> {
        Arc::new(Board { output, started: Instant::now(), state: Mutex::new(BoardState::default()) })
    }

    fn lock(&self) -> MutexGuard<'_, BoardState> {
        // The state is two strings and a flag, each replaced in one statement.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stamp(&self) -> String {
        let s = self.started.elapsed().as_secs();
        format!("[{:02}:{:02}]", s / 60, s % 60)
    }

    /// Narration: printed at once unless the live table shows it.
    pub fn say(&self, line: impl Into<String>) {
        let line = format!("{} {}", self.stamp(), line.into());
        let mut state = self.lock();
        let print = match self.output {
            Output::Quiet => false,
            Output::Lines => true,
            Output::Terminal => !state.live,
        };
        if print {
            print_line(&line);
        }
        state.log.push(line);
    }

    /// Sets the stage line (and narrates it).
    pub fn stage(&self, stage: impl Into<String>) {
        let stage = stage.into();
        self.lock().stage = stage.clone();
        self.say(format!("» {stage}"));
    }
}

struct Member {
    spec: MemberSpec,
    kubeconfig: PathBuf,
    client: Client,
    /// The overlay rendered by `kubectl kustomize` (tuned in fast mode): Git's content.
    rendered: String,
    petrel: ChildProcess,
    // Held so it runs (and is killed) with the member; petrel queries it by URL.
    _prometheus: Prometheus,
    simulator: Simulator,
}

/// A running demo. Dropping it stops the live view, every petrel,
/// Prometheus and simulator, then the fleet.
pub struct Demo {
    view: Option<JoinHandle<()>>,
    members: Vec<Member>,
    board: Arc<Board>,
    opts: DemoOptions,
    kubectl: PathBuf,
    outcome: DemoOutcome,
    // Declared last so it drops last: petrel, Prometheus and the simulators stop before
    // the API servers they talk to.
    fleet: Fleet,
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(view) = self.view.take() {
            view.abort();
        }
        // SIGTERM every petrel at once, then wait for each: teardown in parallel.
        for m in &mut self.members {
            m.petrel.terminate();
        }
        self.members.clear();
    }
}

async fn run_kubectl(kubectl: &Path, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut cmd = tokio::process::Command::new(kubectl);
    cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(args)
        .stdin(if stdin.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().with_context(|| format!("starting {}", kubectl.display()))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).await.context("writing manifests to kubectl")?;
        drop(pipe);
    }
    let out = child.wait_with_output().await.context("waiting for kubectl")?;
    if !out.status.success() {
        bail!("kubectl {} failed ({}): {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn canary_api_ready(client: &Client, deadline: Instant) -> Result<()> {
    let canaries: Api<Canary> = Api::namespaced(client.clone(), APP_NAMESPACE);
    loop {
        match canaries.list(&ListParams::default().limit(1)).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e).context("the Canary CRD is not served"),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

async fn petrel_supports(petrel: &Path, flag: &str) -> bool {
    let out = tokio::process::Command::new(petrel).arg("--help").output().await;
    out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(flag))
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

impl Demo {
    /// Brings the fleet up and installs the app, the simulators, Prometheus
    /// and petrel on every member; returns once every Canary is Initialized.
    pub async fn start(opts: DemoOptions) -> Result<Demo> {
        let board = Board::new(opts.output);
        let example = opts.example_dir();
        let specs = plan::members(&OVERLAYS, opts.members);
        for s in &specs {
            let dir = example.join(&s.overlay);
            if !dir.join("kustomization.yaml").is_file() {
                bail!("overlay {} not found (is --repo-root right?)", dir.display());
            }
        }
        if !opts.petrel_bin.is_file() {
            bail!("petrel binary {} not found; build it with: cargo build -p petrel", opts.petrel_bin.display());
        }
        let names: Vec<String> = std::iter::once(HUB.to_owned()).chain(specs.iter().map(|s| s.name.clone())).collect();
        board.stage(format!("starting a local fleet: {}", names.join(", ")));
        board.say("real kube-apiserver, kube-controller-manager, kube-scheduler and kwok per cluster, one shared etcd");
        let t0 = Instant::now();
        let mut fleet_opts = FleetOptions::new(opts.work_dir.join("fleet"), names);
        fleet_opts.nodes_per_cluster = 2;
        fleet_opts.bin_dir = Some(tokio::task::spawn_blocking(crate::fleet::ensure_binaries).await??);
        let fleet = Fleet::start(fleet_opts).await.context("starting the fleet")?;
        let fleet_start = t0.elapsed();
        board.say(format!("fleet of {} clusters ready in {:.1}s", fleet.clusters().len(), fleet_start.as_secs_f64()));
        for c in fleet.clusters() {
            let labels = specs.iter().find(|s| s.name == c.name).map_or("fleet hub".into(), MemberSpec::labels_text);
            board.say(format!("  {:<22} {}  ({labels})", c.name, c.api_url));
        }
        let kubectl = fleet.binaries().path("kubectl");
        let mut demo = Demo {
            view: None,
            members: Vec::new(),
            board: board.clone(),
            opts,
            kubectl,
            outcome: DemoOutcome { fleet_start, ..DemoOutcome::default() },
            fleet,
        };

        let t1 = Instant::now();
        board.stage("installing CRDs, the example app (kubectl apply -k), a traffic simulator, Prometheus and petrel");
        let metrics_addr_flag = petrel_supports(&demo.opts.petrel_bin, "--metrics-addr").await;
        let setups = specs.iter().map(|spec| {
            let cluster = demo.fleet.cluster(&spec.name).cloned();
            let (opts, kubectl, board) = (&demo.opts, &demo.kubectl, &board);
            async move { setup_member(opts, kubectl, board, cluster?, spec.clone(), metrics_addr_flag).await }
        });
        let (members, ()) = tokio::try_join!(try_join_all(setups), demo.register_members_on_hub(&specs))?;
        demo.members = members;
        demo.start_view();
        demo.board.stage("waiting for petrel to initialize every Canary (primary Deployment, Services, HTTPRoute)");
        let deadline = Instant::now() + Duration::from_secs(120);
        for i in 0..demo.members.len() {
            demo.wait_phase(i, None, Phase::Initialized, deadline).await?;
        }
        demo.outcome.setup = t1.elapsed();
        demo.board.say(format!("every member initialized; setup took {:.1}s", demo.outcome.setup.as_secs_f64()));
        Ok(demo)
    }

    /// Declares the members as `Cluster`s on the hub with their labels. The
    /// hub controller that acts on them is the fleet issue's; until then this
    /// is what `kubectl get clusters` on the hub shows, and a failure here
    /// is reported but does not stop the demo.
    async fn register_members_on_hub(&self, specs: &[MemberSpec]) -> Result<()> {
        let result = async {
            let hub = self.fleet.cluster(HUB)?;
            let crd = self.opts.repo_root.join("crds/clusters.yaml");
            run_kubectl(
                &self.kubectl,
                &hub.kubeconfig_path,
                &["apply", "--server-side", "-f", &crd.display().to_string()],
                None,
            )
            .await?;
            run_kubectl(
                &self.kubectl,
                &hub.kubeconfig_path,
                &["wait", "--for=condition=Established", "crd/clusters.petrel.dev", "--timeout=30s"],
                None,
            )
            .await?;
            let mut members = Vec::new();
            for spec in specs {
                members.push((spec.clone(), self.fleet.cluster(&spec.name)?.kubeconfig_yaml()?));
            }
            let list = plan::hub_registration(&members).to_string();
            run_kubectl(&self.kubectl, &hub.kubeconfig_path, &["apply", "-f", "-"], Some(&list)).await?;
            anyhow::Ok(())
        }
        .await;
        match result {
            Ok(()) => self.board.say(format!(
                "hub: {} member Clusters registered with their labels (kubectl get clusters.petrel.dev --show-labels)",
                specs.len()
            )),
            Err(e) => self.board.say(format!("hub: could not register the member Clusters ({e:#}); continuing")),
        }
        Ok(())
    }

    fn start_view(&mut self) {
        let sources: Vec<(String, String, Client)> =
            self.members.iter().map(|m| (m.spec.name.clone(), m.spec.labels_text(), m.client.clone())).collect();
        self.board.lock().live = true;
        self.view = Some(tokio::spawn(live_view(self.board.clone(), sources)));
    }

    /// The healthy release wave by wave, then the bad one on the first
    /// wave only.
    pub async fn run_flow(&mut self) -> Result<DemoOutcome> {
        let members: Vec<MemberSpec> = self.members.iter().map(|m| m.spec.clone()).collect();
        let waves = plan::release_waves(&members);
        let healthy = self.opts.healthy_tag.clone();
        let bad = self.opts.bad_tag.clone();
        let current = plan::image_of(&self.members[0].rendered, APP_REPOSITORY)?;
        self.board.say(format!(
            "release {healthy}: {current} → {APP_REPOSITORY}:{healthy} in Git, in {} wave(s): {}",
            waves.len(),
            waves.iter().map(|w| w.join("+")).collect::<Vec<_>>().join(" then ")
        ));
        let note = format!(
            "waves ordered by the demo driver (canary cluster first); petrel's hub takes this over in the fleet issue (hub {} idle)",
            self.fleet.cluster(HUB).map_or_else(|_| "-".to_owned(), |c| c.api_url.clone())
        );
        self.board.lock().note = note.clone();
        self.board.say(note);
        for (i, wave) in waves.iter().enumerate() {
            self.board.stage(format!(
                "release {healthy}, wave {}/{}: {} (next wave opens only after this one Succeeded)",
                i + 1,
                waves.len(),
                wave.join(", ")
            ));
            let t = Instant::now();
            let results = self.release(wave, &healthy, Phase::Succeeded).await?;
            let took = t.elapsed();
            self.board.say(format!("wave {} Succeeded in {:.0}s", i + 1, took.as_secs_f64()));
            self.outcome.healthy_waves.push((results, took));
        }

        let first = waves.first().cloned().unwrap_or_default();
        self.board.stage(format!(
            "bad release {bad} ({:.0}% errors) to the canary wave only: {}",
            self.opts.bad_error_rate * 100.0,
            first.join(", ")
        ));
        let behaviour = VersionBehaviour::new(self.opts.bad_error_rate, 20.0);
        for m in &self.members {
            m.simulator.set_version(&format!("podinfo:{bad}"), behaviour)?;
        }
        let t = Instant::now();
        self.outcome.bad = self.release(&first, &bad, Phase::Failed).await?;
        self.outcome.bad_took = t.elapsed();
        self.board.say(format!(
            "petrel rolled {bad} back on its own after {:.0}s; the demo driver halts the release here",
            self.outcome.bad_took.as_secs_f64()
        ));
        for m in self.members.iter().filter(|m| !first.contains(&m.spec.name)) {
            let canaries: Api<Canary> = Api::namespaced(m.client.clone(), APP_NAMESPACE);
            let canary = canaries.get(APP_NAME).await?;
            let release = canary.status.and_then(|s| s.promoted_release).unwrap_or_default();
            if release.contains(&format!(":{bad}")) {
                bail!("{} runs the bad release {bad} although it never was released there", m.spec.name);
            }
            self.board.say(format!("{} never received {bad}: it serves {release}", m.spec.name));
            self.outcome.untouched.push((m.spec.name.clone(), release));
        }
        self.outcome.total = self.board.started.elapsed();
        self.board.stage(format!(
            "done: {healthy} released to every member, {bad} rolled back on the canary cluster ({:.0}s in all)",
            self.outcome.total.as_secs_f64()
        ));
        // Let the view draw the last state before the caller prints below it.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        Ok(self.outcome.clone())
    }

    /// Stops the live view (its last frame stays on screen).
    pub fn stop_view(&mut self) {
        if let Some(view) = self.view.take() {
            view.abort();
        }
        self.board.lock().live = false;
    }

    /// `(cluster, kubeconfig)` of the hub and every member.
    pub fn kubeconfigs(&self) -> Vec<(String, PathBuf)> {
        self.fleet.clusters().iter().map(|c| (c.name.clone(), c.kubeconfig_path.clone())).collect()
    }

    /// The harness's `kubectl` (kustomize built in).
    pub fn kubectl(&self) -> &Path {
        &self.kubectl
    }

    /// Log files of each member's petrel.
    pub fn petrel_logs(&self) -> Vec<(String, PathBuf)> {
        self.members.iter().map(|m| (m.spec.name.clone(), m.petrel.log.clone())).collect()
    }

    /// Git gets `tag` for the members of `wave`: render the overlay, bump
    /// the image, apply; then wait until each cluster ends the release in
    /// `expect`.
    async fn release(&mut self, wave: &[String], tag: &str, expect: Phase) -> Result<Vec<ClusterResult>> {
        let t0 = Instant::now();
        let mut indexes = Vec::new();
        let mut applies = Vec::new();
        for name in wave {
            let i =
                self.members.iter().position(|m| &m.spec.name == name).ok_or_else(|| anyhow!("no member {name}"))?;
            let m = &self.members[i];
            let manifests = plan::set_image_tag(&m.rendered, APP_REPOSITORY, tag)?;
            self.board.say(format!(
                "{name}: Git gets podinfo {tag}: kubectl kustomize {}, image bumped in memory, kubectl apply",
                m.spec.overlay
            ));
            let (kubectl, kubeconfig) = (&self.kubectl, &m.kubeconfig);
            applies.push(async move {
                run_kubectl(kubectl, kubeconfig, &["apply", "-f", "-"], Some(&manifests))
                    .await
                    .with_context(|| format!("{name}: applying release {tag}"))
            });
            indexes.push(i);
        }
        // A wave opens at once, as a hub would open it.
        try_join_all(applies).await?;
        let deadline = Instant::now() + self.opts.release_timeout;
        let mut results = Vec::new();
        for i in indexes {
            let status = self.wait_phase(i, Some(tag), expect, deadline).await?;
            let name = self.members[i].spec.name.clone();
            self.board.say(format!("{name}: {tag} {} after {:.0}s", status.phase, t0.elapsed().as_secs_f64()));
            results.push(ClusterResult {
                member: name,
                phase: status.phase.to_string(),
                failed_checks: status.failed_checks,
                primary_release: status.promoted_release.unwrap_or_default(),
                took: t0.elapsed(),
            });
        }
        Ok(results)
    }

    /// Waits until member `i`'s Canary is in `want` for release `tag` (any
    /// release when `None`). Fails early when it ends the other way or its
    /// petrel exits.
    async fn wait_phase(
        &mut self,
        i: usize,
        tag: Option<&str>,
        want: Phase,
        deadline: Instant,
    ) -> Result<CanaryStatus> {
        let canaries: Api<Canary> = Api::namespaced(self.members[i].client.clone(), APP_NAMESPACE);
        let name = self.members[i].spec.name.clone();
        let mut last = String::from("no status yet");
        loop {
            self.members[i].petrel.check_alive()?;
            if let Ok(Some(canary)) = canaries.get_opt(APP_NAME).await
                && let Some(status) = canary.status
            {
                let on_release =
                    tag.is_none_or(|t| status.release.as_deref().is_some_and(|r| r.contains(&format!(":{t}"))));
                last = format!(
                    "phase {}, release {}, weight {}%, failed checks {}",
                    status.phase,
                    status.release.as_deref().unwrap_or("-"),
                    status.canary_weight,
                    status.failed_checks
                );
                if on_release && status.phase == want {
                    return Ok(status);
                }
                let terminal = matches!(status.phase, Phase::Succeeded | Phase::Failed);
                if tag.is_some() && on_release && terminal {
                    bail!(
                        "{name}: release {} ended {} instead of {want}; petrel log {}",
                        tag.unwrap_or_default(),
                        status.phase,
                        self.members[i].petrel.log.display()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!("{name}: not {want} in time (last: {last}); petrel log {}", self.members[i].petrel.log.display());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Stops everything without blocking the runtime.
    pub async fn shutdown(self) -> Result<()> {
        tokio::task::spawn_blocking(move || drop(self)).await.context("teardown panicked")
    }
}

async fn setup_member(
    opts: &DemoOptions,
    kubectl: &Path,
    board: &Board,
    cluster: Arc<Cluster>,
    spec: MemberSpec,
    metrics_addr_flag: bool,
) -> Result<Member> {
    let name = spec.name.clone();
    let kc = cluster.kubeconfig_path.clone();
    let dir = opts.work_dir.join("members").join(&name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let client = cluster.client().await?;
    // A member runs the Canary controller only: the hub's CRDs (Cluster, Rollout) stay off it.
    let mut crds: Vec<PathBuf> = MEMBER_CRDS.iter().map(|f| opts.repo_root.join("crds").join(f)).collect();
    crds.push(opts.repo_root.join("e2e/crds/third-party"));
    for path in &crds {
        run_kubectl(kubectl, &kc, &["apply", "--server-side", "-f", &path.display().to_string()], None)
            .await
            .with_context(|| format!("{name}: installing the CRDs in {}", path.display()))?;
    }
    run_kubectl(kubectl, &kc, &["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"], None).await?;
    canary_api_ready(&client, Instant::now() + Duration::from_secs(30)).await?;

    let overlay = opts.example_dir().join(&spec.overlay);
    let overlay_arg = overlay.display().to_string();
    let rendered = run_kubectl(kubectl, &kc, &["kustomize", &overlay_arg], None).await?;
    let rendered = plan::tune_analysis(&rendered, &opts.tuning)?;
    if opts.tuning.is_empty() {
        run_kubectl(kubectl, &kc, &["apply", "-k", &overlay_arg], None).await?;
        board.say(format!("{name}: kubectl apply -k examples/podinfo/{}", spec.overlay));
    } else {
        run_kubectl(kubectl, &kc, &["apply", "-f", "-"], Some(&rendered)).await?;
        board.say(format!("{name}: applied examples/podinfo/{} with analysis tuned {:?}", spec.overlay, opts.tuning));
    }

    let coords = AppCoords::new(APP_NAMESPACE, APP_NAME, Provider::GatewayApi);
    let profile = TrafficProfile { requests_per_second: opts.requests_per_second, ..TrafficProfile::default() };
    let simulator =
        Simulator::start(SimulatorConfig::default(), vec![App::from_cluster(client.clone(), coords).profile(profile)])
            .await
            .with_context(|| format!("{name}: starting the traffic simulator"))?;
    let prometheus =
        Prometheus::start(&dir, &[simulator.addr()]).await.with_context(|| format!("{name}: starting Prometheus"))?;
    let mut args = vec![
        format!("--kubeconfig={}", kc.display()),
        "--provider=gatewayapi".into(),
        format!("--metrics-server={}", prometheus.url()),
        format!("--cluster-name={name}"),
    ];
    if metrics_addr_flag {
        args.push(format!("--metrics-addr=127.0.0.1:{}", free_port()?));
    }
    let petrel = ChildProcess::start(&format!("{name}/petrel"), &opts.petrel_bin, &args, &dir.join("petrel.log"))?;
    board.say(format!(
        "{name}: simulator {} ({} req/s), Prometheus {}, petrel pid {} (log {})",
        simulator.addr(),
        opts.requests_per_second,
        prometheus.url(),
        petrel.pid().unwrap_or(0),
        petrel.log.display()
    ));
    Ok(Member { spec, kubeconfig: kc, client, rendered, petrel, _prometheus: prometheus, simulator })
}

/// Prints a line to stdout; a closed pipe or terminal is not worth a panic
/// (the demo must still tear down).
pub fn print_line(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// Terminal (columns, rows), or 120x50 when unknown.
fn terminal_size() -> (usize, usize) {
    let mut size = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes a winsize into the pointer we pass, which is valid.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    let cols = if ok && size.ws_col > 0 { usize::from(size.ws_col) } else { 120 };
    let rows = if ok && size.ws_row > 0 { usize::from(size.ws_row) } else { 50 };
    (cols, rows)
}

fn hms(epoch_secs: i64) -> String {
    let s = epoch_secs.rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

fn event_view(e: &Event) -> EventView {
    let at = e
        .series
        .as_ref()
        .map(|s| s.last_observed_time.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.deprecated_last_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .map_or(0, |t| t.as_microsecond());
    EventView {
        at,
        time: hms(at.div_euclid(1_000_000)),
        warning: e.type_.as_deref() == Some("Warning"),
        reason: e.reason.clone().unwrap_or_default(),
        message: e.note.clone().unwrap_or_default().replace('\n', " "),
        count: e.series.as_ref().map_or(e.deprecated_count.unwrap_or(1), |s| s.count),
    }
}

/// Reads one member's Canary and its Events.
pub async fn read_member(name: &str, labels: &str, client: &Client) -> MemberView {
    let mut view = MemberView { name: name.to_owned(), labels: labels.to_owned(), ..MemberView::default() };
    let canaries: Api<Canary> = Api::namespaced(client.clone(), APP_NAMESPACE);
    match canaries.get_opt(APP_NAME).await {
        Ok(Some(canary)) => {
            view.threshold = canary.spec.analysis.as_ref().and_then(|a| a.threshold).unwrap_or(0);
            let status = canary.status.unwrap_or_default();
            view.phase = Some(status.phase.to_string());
            view.weight = status.canary_weight;
            view.failed_checks = status.failed_checks;
            view.results = status
                .analysis_results
                .iter()
                .map(|r| ResultView { name: r.name.clone(), value: r.value, passed: r.passed })
                .collect();
            view.release = status.release;
            view.primary_image = status.promoted_release;
        }
        Ok(None) => {}
        Err(e) => view.error = Some(format!("reading the Canary: {e}")),
    }
    let events: Api<Event> = Api::namespaced(client.clone(), APP_NAMESPACE);
    match events.list(&ListParams::default()).await {
        Ok(list) => {
            let mut evs: Vec<EventView> = list
                .items
                .iter()
                .filter(|e| e.regarding.as_ref().is_some_and(|r| r.kind.as_deref() == Some("Canary")))
                .map(event_view)
                .collect();
            evs.sort_by_key(|e| std::cmp::Reverse(e.at));
            evs.truncate(view::EVENTS_PER_MEMBER);
            view.events = evs;
        }
        Err(e) => view.error = Some(format!("listing Events: {e}")),
    }
    view
}

async fn snapshot(board: &Board, sources: &[(String, String, Client)]) -> Screen {
    let members = futures::future::join_all(sources.iter().map(|(n, l, c)| read_member(n, l, c))).await;
    let state = board.lock();
    Screen {
        title: "petrel demo: progressive delivery of podinfo across a local fleet".into(),
        note: state.note.clone(),
        stage: state.stage.clone(),
        elapsed_secs: board.started.elapsed().as_secs(),
        members,
        log: state.log.clone(),
    }
}

async fn live_view(board: Arc<Board>, sources: Vec<(String, String, Client)>) {
    let mut last = Screen::default();
    let mut first = true;
    loop {
        let screen = snapshot(&board, &sources).await;
        match board.output {
            Output::Terminal => {
                let mut out = String::new();
                if first {
                    out.push_str("\x1b[2J");
                }
                out.push_str("\x1b[H");
                let (cols, rows) = terminal_size();
                // One row spare: the cursor sits below the last line.
                for line in view::render_fitting(&screen, cols, rows.saturating_sub(1)) {
                    out.push_str(&line);
                    out.push_str("\x1b[K\n");
                }
                out.push_str("\x1b[J");
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(out.as_bytes());
                let _ = stdout.flush();
            }
            Output::Lines => {
                let stamp = board.stamp();
                for line in view::changes(&Screen { stage: screen.stage.clone(), ..last.clone() }, &screen) {
                    print_line(&format!("{stamp} {line}"));
                }
            }
            Output::Quiet => {}
        }
        first = false;
        last = screen;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
