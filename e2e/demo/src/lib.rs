//! `petrel-demo`: a local fleet releasing the example app with petrel's
//! hub, shown live.
//!
//! [`Demo::start`] brings up a hub and one member per GitOps overlay of
//! `examples/podinfo/clusters/<env>/<region>` (real control planes, see
//! [`petrel_e2e::fleet`]). Each member gets petrel's CRDs, its overlay
//! (`kubectl apply -k`), a traffic simulator, a real Prometheus and a real
//! `petrel`. The hub gets the hub CRDs, `examples/podinfo/hub` (the
//! Clusters and the Rollout, `kubectl apply -k`), a kubeconfig Secret per
//! member where its Cluster points, and a real `petrel --mode hub`.
//!
//! [`Demo::run_flow`] then only does what Git and Flux would: it gives
//! every member the same new image at once. The hub decides who releases
//! when (canary cluster first, production after the canary wave soaked),
//! and each member's petrel runs its own analysis. The demo watches and
//! checks afterwards that the story happened ([`story`]).
//!
//! Everything is torn down when the [`Demo`] is dropped.

pub mod live;
pub mod plan;
pub mod process;
pub mod story;
pub mod view;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::Utc;
use futures::future::try_join_all;
use kube::Client;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use petrel::api::Canary;
use petrel::api::canary::{FLEET_ROLLOUT_ANNOTATION, Phase};
use petrel::api::rollout::{Rollout, RolloutPhase, RolloutStatus};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;

use petrel_e2e::blast::BlastRadius;
use petrel_e2e::fleet::{Cluster, Fleet, FleetOptions};
use petrel_e2e::prometheus::Prometheus;
use petrel_e2e::simulator::{
    App, AppCoords, AppSnapshot, Provider, Simulator, SimulatorConfig, TrafficProfile, VersionBehaviour,
};
use petrel_e2e::wait::poll;
use plan::{AnalysisTuning, MemberSpec};
use process::ChildProcess;
use story::{Check, MemberSample, Timeline, WaveSpec};

/// The example app's image repository.
pub const APP_REPOSITORY: &str = "ghcr.io/stefanprodan/podinfo";
/// Namespace and name of the example's Canary (and Deployment, Service).
pub const APP_NAMESPACE: &str = "podinfo";
pub const APP_NAME: &str = "podinfo";
/// The example's overlays, relative to `examples/podinfo/`.
pub const OVERLAYS: [&str; 4] = [
    "clusters/staging/eu-west-1",
    "clusters/production/eu-west-1",
    "clusters/production/us-east-1",
    "clusters/production/ap-southeast-1",
];
/// The hub's manifests (Clusters, Rollout), relative to `examples/podinfo/`.
pub const HUB_MANIFESTS: &str = "hub";
/// petrel's CRDs a member cluster needs, in `crds/`.
pub const MEMBER_CRDS: [&str; 4] =
    ["canaries.yaml", "metrictemplates.yaml", "alertproviders.yaml", "clusteridentities.yaml"];
/// petrel's CRDs the hub needs, in `crds/`.
pub const HUB_CRDS: [&str; 2] = ["clusters.yaml", "rollouts.yaml"];
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
    /// Keep the first `n` members (canary cluster first); all four by default.
    pub members: Option<usize>,
    /// Analysis numbers changed on the rendered Canary (fast test mode).
    pub tuning: AnalysisTuning,
    /// Soak of every wave that soaks, instead of the committed one (fast test mode).
    pub soak: Option<String>,
    pub output: Output,
    /// The `petrel` operator binary (member and hub mode).
    pub petrel_bin: PathBuf,
    /// Run petrel from this image (podman) instead of `petrel_bin`.
    pub image: Option<petrel_e2e::image::PetrelImage>,
    /// The healthy release's tag (the example runs 6.7.0).
    pub healthy_tag: String,
    /// The bad release's tag.
    pub bad_tag: String,
    /// Fraction of the bad release's requests that fail.
    pub bad_error_rate: f64,
    /// Requests per second the simulator sends each member's app.
    pub requests_per_second: f64,
    /// How long the fleet may take to finish (or halt) one release.
    pub release_timeout: Duration,
    /// How long to keep watching after the hub halted the bad release: a
    /// later wave wrongly opening would show in this time.
    pub hold_after_halt: Duration,
}

impl DemoOptions {
    /// How petrel runs: from the image when one is set, else the binary.
    pub fn launcher(&self) -> petrel_e2e::image::Launcher {
        match &self.image {
            Some(image) => petrel_e2e::image::Launcher::Image(image.clone()),
            None => petrel_e2e::image::Launcher::Binary(self.petrel_bin.clone()),
        }
    }

    /// The demo as the README runs it: four members, the GitOps tree's
    /// own analysis numbers and soak.
    pub fn new(work_dir: PathBuf, repo_root: PathBuf, petrel_bin: PathBuf) -> DemoOptions {
        DemoOptions {
            work_dir,
            repo_root,
            members: None,
            tuning: AnalysisTuning::default(),
            soak: None,
            output: Output::detect(),
            petrel_bin,
            image: None,
            healthy_tag: "6.7.1".into(),
            bad_tag: "6.7.2".into(),
            bad_error_rate: 0.2,
            requests_per_second: 100.0,
            release_timeout: Duration::from_secs(420),
            hold_after_halt: Duration::from_secs(10),
        }
    }

    /// Fast mode (`--fast`, the e2e test): short analysis steps and a 5s soak.
    pub fn fast(mut self) -> DemoOptions {
        self.tuning = AnalysisTuning {
            interval: Some("2s".into()),
            step_weight: Some(25),
            max_weight: Some(50),
            // The first check after a weight change can find no data yet (one
            // scrape after 2s), which counts as failed: leave room for one.
            threshold: Some(3),
            metric_interval: Some("10s".into()),
        };
        self.soak = Some("5s".into());
        self.release_timeout = Duration::from_secs(180);
        self.hold_after_halt = Duration::from_secs(6);
        self
    }

    fn example_dir(&self) -> PathBuf {
        self.repo_root.join("examples/podinfo")
    }
}

/// The repository root this crate was built from.
pub use petrel_e2e::scenario::workspace_root as repo_root;

/// One release across the fleet as the demo saw it.
#[derive(Debug, Clone)]
pub struct ReleaseRecord {
    pub tag: String,
    /// From the Git change to the end (or the timeout).
    pub took: Duration,
    /// The Rollout's waves as declared.
    pub waves: Vec<WaveSpec>,
    /// The hub's Rollout status at the end.
    pub status: RolloutStatus,
    /// Every member's Canary over the release.
    pub timeline: Timeline,
    /// Whether the story of this release happened.
    pub checks: Vec<Check>,
    /// For a release the fleet halted: the requests it answered from the Git change to
    /// the halt, member by member, as the simulators counted them.
    pub blast: Option<BlastRadius>,
    /// [`BlastRadius::weighted_fraction`] by the Clusters' `petrel.dev/traffic-share`
    /// labels (the simulators send every member the same rate).
    pub blast_fraction: Option<f64>,
}

/// What happened, for the summary and for tests.
#[derive(Debug, Clone, Default)]
pub struct DemoOutcome {
    pub fleet_start: Duration,
    /// Members installed and Initialized, hub manifests applied.
    pub setup: Duration,
    /// From starting the hub until it marked every member and rolled out the running release.
    pub hub_ready: Duration,
    pub healthy: Option<ReleaseRecord>,
    pub bad: Option<ReleaseRecord>,
    pub total: Duration,
}

impl DemoOutcome {
    /// Every check of both releases.
    pub fn checks(&self) -> impl Iterator<Item = &Check> {
        self.healthy.iter().chain(&self.bad).flat_map(|r| &r.checks)
    }

    /// Whether the whole story happened: both releases ran and every check passed.
    pub fn story_happened(&self) -> bool {
        self.healthy.is_some() && self.bad.is_some() && self.checks().all(|c| c.passed)
    }
}

/// The stage line and the driver's narration, shared with the live view.
pub struct Board {
    output: Output,
    started: Instant,
    state: Mutex<BoardState>,
}

#[derive(Default)]
struct BoardState {
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

/// The hub cluster and what the demo put on it.
struct HubSide {
    client: Client,
    kubeconfig: PathBuf,
    /// `(namespace, name)` of the Rollout from `examples/podinfo/hub`.
    rollout: (String, String),
    /// `petrel --mode hub`, once started.
    petrel: Option<ChildProcess>,
}

/// A running demo. Dropping it stops the live view, the hub's and every
/// member's petrel, Prometheus and the simulators, then the fleet.
pub struct Demo {
    view: Option<JoinHandle<()>>,
    hub: HubSide,
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
        if let Some(hub) = self.hub.petrel.as_mut() {
            hub.terminate();
        }
        for m in &mut self.members {
            m.petrel.terminate();
        }
        self.hub.petrel = None;
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

async fn install_crds(kubectl: &Path, kubeconfig: &Path, paths: &[PathBuf], who: &str) -> Result<()> {
    for path in paths {
        run_kubectl(kubectl, kubeconfig, &["apply", "--server-side", "-f", &path.display().to_string()], None)
            .await
            .with_context(|| format!("{who}: installing the CRDs in {}", path.display()))?;
    }
    run_kubectl(kubectl, kubeconfig, &["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"], None)
        .await?;
    Ok(())
}

async fn canary_api_ready(client: &Client, deadline: Instant) -> Result<()> {
    let canaries: Api<Canary> = Api::namespaced(client.clone(), APP_NAMESPACE);
    let mut last = String::new();
    let served = poll(deadline, Duration::from_millis(250), async || {
        match canaries.list(&ListParams::default().limit(1)).await {
            Ok(_) => Ok::<_, anyhow::Error>(Some(())),
            Err(e) => {
                last = e.to_string();
                Ok(None)
            }
        }
    })
    .await?;
    served.with_context(|| format!("the Canary CRD is not served: {last}"))
}

/// The tag of the app's image in rendered manifests (`6.7.0`).
fn tag_of(rendered: &str) -> Result<String> {
    let image = plan::image_of(rendered, APP_REPOSITORY)?;
    Ok(plan::split_image(&image).1.unwrap_or("latest").to_owned())
}

impl Demo {
    /// Brings the fleet up, installs the members and the hub, starts the
    /// hub; returns once the hub has taken every member's Canary into its
    /// Rollout and rolled out the release they run.
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
        if !example.join(HUB_MANIFESTS).join("kustomization.yaml").is_file() {
            bail!("hub manifests {} not found (is --repo-root right?)", example.join(HUB_MANIFESTS).display());
        }
        if opts.image.is_none() && !opts.petrel_bin.is_file() {
            bail!("petrel binary {} not found; build it with: cargo build -p petrel", opts.petrel_bin.display());
        }
        let names: Vec<String> = std::iter::once(HUB.to_owned()).chain(specs.iter().map(|s| s.name.clone())).collect();
        board.stage(format!("starting a local fleet: {}", names.join(", ")));
        board.say("real kube-apiserver, kube-controller-manager, kube-scheduler and kwok per cluster, one shared etcd");
        let t0 = Instant::now();
        let mut fleet_opts = FleetOptions::new(opts.work_dir.join("fleet"), names);
        fleet_opts.nodes_per_cluster = 2;
        fleet_opts.bin_dir = Some(tokio::task::spawn_blocking(petrel_e2e::fleet::ensure_binaries).await??);
        let fleet = Fleet::start(fleet_opts).await.context("starting the fleet")?;
        let fleet_start = t0.elapsed();
        board.say(format!("fleet of {} clusters ready in {:.1}s", fleet.clusters().len(), fleet_start.as_secs_f64()));
        for c in fleet.clusters() {
            let labels = specs.iter().find(|s| s.name == c.name).map_or("fleet hub".into(), MemberSpec::labels_text);
            board.say(format!("  {:<22} {}  ({labels})", c.name, c.api_url));
        }
        let kubectl = fleet.binaries().path("kubectl");
        let hub_cluster = fleet.cluster(HUB)?.clone();

        let t1 = Instant::now();
        board.stage(
            "installing: per member the CRDs, the example app (kubectl apply -k), a traffic simulator, Prometheus \
             and petrel; on the hub examples/podinfo/hub and the members' kubeconfig Secrets",
        );
        let setups = specs.iter().map(|spec| {
            let cluster = fleet.cluster(&spec.name).cloned();
            let (opts, kubectl, board) = (&opts, &kubectl, &board);
            async move { setup_member(opts, kubectl, board, cluster?, spec.clone()).await }
        });
        let (members, rollout) =
            tokio::try_join!(try_join_all(setups), setup_hub(&opts, &kubectl, &board, &fleet, &specs))?;
        let hub = HubSide {
            client: hub_cluster.client().await?,
            kubeconfig: hub_cluster.kubeconfig_path.clone(),
            rollout,
            petrel: None,
        };
        let mut demo = Demo {
            view: None,
            hub,
            members,
            board: board.clone(),
            opts,
            kubectl,
            outcome: DemoOutcome { fleet_start, ..DemoOutcome::default() },
            fleet,
        };
        demo.board.stage("waiting for petrel to initialize every member's Canary (primary, Services, HTTPRoute)");
        demo.wait_initialized(Instant::now() + Duration::from_secs(120)).await?;
        demo.outcome.setup = t1.elapsed();
        demo.board.say(format!("every member initialized; setup took {:.1}s", demo.outcome.setup.as_secs_f64()));

        let t2 = Instant::now();
        demo.start_hub()?;
        demo.start_view();
        demo.wait_hub_ready(Instant::now() + Duration::from_secs(120)).await?;
        demo.outcome.hub_ready = t2.elapsed();
        Ok(demo)
    }

    async fn wait_initialized(&mut self, deadline: Instant) -> Result<()> {
        for i in 0..self.members.len() {
            let member = &mut self.members[i];
            let canaries: Api<Canary> = Api::namespaced(member.client.clone(), APP_NAMESPACE);
            let mut phase = None;
            let initialized = poll(deadline, Duration::from_millis(500), async || {
                member.petrel.check_alive()?;
                phase = canaries.get_opt(APP_NAME).await.ok().flatten().and_then(|c| c.status).map(|s| s.phase);
                Ok::<_, anyhow::Error>((phase == Some(Phase::Initialized)).then_some(()))
            })
            .await?;
            if initialized.is_none() {
                bail!(
                    "{}: the Canary is not Initialized in time (phase {phase:?}); petrel log {}",
                    member.spec.name,
                    member.petrel.log.display()
                );
            }
        }
        Ok(())
    }

    fn start_hub(&mut self) -> Result<()> {
        let dir = self.opts.work_dir.join("hub");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let args = vec![
            "--mode=hub".to_owned(),
            format!("--kubeconfig={}", self.hub.kubeconfig.display()),
            "--metrics-addr=127.0.0.1:0".into(),
        ];
        let petrel = ChildProcess::launch("hub/petrel", &self.opts.launcher(), &args, &dir.join("petrel.log"))?;
        self.board.stage(format!(
            "petrel --mode hub (pid {}, log {}) takes the members' Canaries into Rollout {}/{}",
            petrel.pid().unwrap_or(0),
            petrel.log.display(),
            self.hub.rollout.0,
            self.hub.rollout.1
        ));
        self.hub.petrel = Some(petrel);
        Ok(())
    }

    /// The tag Git gives every member now (they all render the same base).
    fn running_tag(&self) -> Result<String> {
        let first = self.members.first().context("the demo has no member")?;
        tag_of(&first.rendered)
    }

    fn check_petrels(&mut self) -> Result<()> {
        if let Some(hub) = self.hub.petrel.as_mut() {
            hub.check_alive()?;
        }
        for m in &mut self.members {
            m.petrel.check_alive()?;
        }
        Ok(())
    }

    fn rollouts(&self) -> Api<Rollout> {
        Api::namespaced(self.hub.client.clone(), &self.hub.rollout.0)
    }

    /// Waits until the hub marked every member's Canary as part of its
    /// Rollout and rolled out what the members run already, so the first
    /// release lands on a settled fleet.
    async fn wait_hub_ready(&mut self, deadline: Instant) -> Result<()> {
        let running = self.running_tag()?;
        let mut last = String::from("no Rollout status yet");
        let mut unmarked = Vec::new();
        let settled = poll(deadline, Duration::from_millis(500), async || {
            self.check_petrels()?;
            unmarked.clear();
            for m in &self.members {
                let canary = Api::<Canary>::namespaced(m.client.clone(), APP_NAMESPACE).get_opt(APP_NAME).await;
                let marked = canary
                    .ok()
                    .flatten()
                    .and_then(|c| c.metadata.annotations)
                    .is_some_and(|a| a.contains_key(FLEET_ROLLOUT_ANNOTATION));
                if !marked {
                    unmarked.push(m.spec.name.clone());
                }
            }
            let status = self.rollouts().get_opt(&self.hub.rollout.1).await.ok().flatten().and_then(|r| r.status);
            if let Some(s) = &status {
                last = format!("{:?} for {}", s.phase, s.release.as_deref().unwrap_or("-"));
            }
            let settled = status.is_some_and(|s| {
                story::is_release(s.release.as_deref(), &running) && s.phase == Some(RolloutPhase::Succeeded)
            });
            Ok::<_, anyhow::Error>((unmarked.is_empty() && settled).then_some(()))
        })
        .await?;
        if settled.is_none() {
            let hub_log = self.hub.petrel.as_ref().map(|p| p.log.display().to_string()).unwrap_or_default();
            bail!("the hub did not take the fleet in time: unmarked {unmarked:?}, Rollout {last}; hub log {hub_log}");
        }
        self.board.say(format!(
            "hub: every member's Canary belongs to the Rollout ({FLEET_ROLLOUT_ANNOTATION}), \
             the running release {running} is Succeeded"
        ));
        Ok(())
    }

    fn start_view(&mut self) {
        let sources = live::Sources {
            hub: self.hub.client.clone(),
            rollout: self.hub.rollout.clone(),
            members: self.members.iter().map(|m| (m.spec.name.clone(), m.client.clone())).collect(),
        };
        self.board.lock().live = true;
        self.view = Some(tokio::spawn(live::run(self.board.clone(), sources)));
    }

    /// The story: a healthy release the hub takes through every wave, then
    /// a bad one it halts after the canary cluster rolled it back.
    pub async fn run_flow(&mut self) -> Result<DemoOutcome> {
        let healthy = self.opts.healthy_tag.clone();
        let bad = self.opts.bad_tag.clone();
        let healthy_record = self.release(&healthy, RolloutPhase::Succeeded).await?;
        self.report(&healthy_record);
        self.outcome.healthy = Some(healthy_record);

        let behaviour = VersionBehaviour::new(self.opts.bad_error_rate, 20.0);
        for m in &self.members {
            m.simulator.set_version(&format!("podinfo:{bad}"), behaviour)?;
        }
        self.board.say(format!(
            "the simulators answer {:.0}% of {bad}'s requests with errors, wherever it gets traffic",
            self.opts.bad_error_rate * 100.0
        ));
        let bad_record = self.release(&bad, RolloutPhase::Failed).await?;
        self.report(&bad_record);
        self.outcome.bad = Some(bad_record);

        self.outcome.total = self.board.started.elapsed();
        let failed = self.outcome.checks().filter(|c| !c.passed).count();
        self.board.stage(if failed == 0 {
            format!(
                "done: the hub released {healthy} canary cluster first, then production; it halted {bad} after the \
                 canary cluster rolled it back ({:.0}s in all)",
                self.outcome.total.as_secs_f64()
            )
        } else {
            format!("done, but {failed} check(s) of the story failed: see the summary")
        });
        // Let the view draw the last state before the caller prints below it.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        Ok(self.outcome.clone())
    }

    fn report(&self, record: &ReleaseRecord) {
        let failed: Vec<&Check> = record.checks.iter().filter(|c| !c.passed).collect();
        if failed.is_empty() {
            self.board.say(format!("release {}: all {} checks passed", record.tag, record.checks.len()));
        }
        for c in failed {
            self.board.say(format!("release {}: FAILED {} ({})", record.tag, c.what, c.detail));
        }
    }

    /// Git gets `tag` for every member at once (render the overlay, bump the
    /// image, apply: what Flux syncing one commit does); then the demo only
    /// watches until the Rollout of `tag` reaches `end` (or the other end,
    /// or the timeout) and checks the story against what it saw.
    async fn release(&mut self, tag: &str, end: RolloutPhase) -> Result<ReleaseRecord> {
        let running = self.running_tag()?;
        self.board.stage(match end {
            RolloutPhase::Failed => format!(
                "bad release {tag}: Git gets it for every cluster; the canary cluster should roll it back and the hub \
                 keep production shut"
            ),
            _ => format!(
                "release {tag}: Git gets it for every cluster; the hub approves the canary cluster first, production \
                 after the canary wave soaked"
            ),
        });
        let mut applies = Vec::new();
        for m in &self.members {
            let manifests = plan::set_image_tag(&m.rendered, APP_REPOSITORY, tag)?;
            let (kubectl, kubeconfig, name) = (&self.kubectl, &m.kubeconfig, &m.spec.name);
            applies.push(async move {
                run_kubectl(kubectl, kubeconfig, &["apply", "-f", "-"], Some(&manifests))
                    .await
                    .with_context(|| format!("{name}: applying release {tag}"))
            });
        }
        self.board.say(format!(
            "Git: podinfo {running} → {tag} in examples/podinfo/base; every member syncs it (kubectl kustomize, \
             image bumped, kubectl apply)"
        ));
        let before = self.traffic_counts()?;
        let mut halted = None;
        let t0 = Instant::now();
        try_join_all(applies).await?;
        self.board.say(format!("every member synced {tag} in {:.1}s", t0.elapsed().as_secs_f64()));

        let deadline = t0 + self.opts.release_timeout;
        let mut timeline = Timeline::default();
        let mut rollout: Option<Rollout> = None;
        let mut ended_at: Option<Instant> = None;
        let ended = poll(deadline, Duration::from_millis(300), async || {
            self.check_petrels()?;
            let now = Utc::now();
            for m in &self.members {
                let canary = Api::<Canary>::namespaced(m.client.clone(), APP_NAMESPACE).get_opt(APP_NAME).await;
                if let Ok(Some(Canary { status: Some(status), .. })) = canary {
                    timeline.record(&m.spec.name, MemberSample::new(now, &status));
                }
            }
            if let Ok(Some(r)) = self.rollouts().get_opt(&self.hub.rollout.1).await {
                rollout = Some(r);
            }
            let status = rollout.as_ref().and_then(|r| r.status.as_ref());
            let phase = status.filter(|s| story::is_release(s.release.as_deref(), tag)).and_then(|s| s.phase);
            // The hub says Succeeded once members report the release promoted; the demo
            // also waits to see it in each member's own Canary. A Failed Rollout is an
            // end whatever the members show.
            let settled = match phase {
                Some(RolloutPhase::Succeeded) => self.members.iter().all(|m| {
                    timeline
                        .last(&m.spec.name)
                        .is_some_and(|s| s.phase == Phase::Succeeded && story::is_release(s.primary.as_deref(), tag))
                }),
                Some(RolloutPhase::Failed) => true,
                _ => false,
            };
            if settled && ended_at.is_none() {
                ended_at = Some(Instant::now());
                if phase == Some(RolloutPhase::Failed) {
                    halted = Some(self.traffic_counts()?);
                    self.board.say(format!(
                        "hub: Rollout of {tag} Failed after {:.0}s; watching {:.0}s more to see no later wave open",
                        t0.elapsed().as_secs_f64(),
                        self.opts.hold_after_halt.as_secs_f64()
                    ));
                }
            }
            let hold = if phase == Some(RolloutPhase::Failed) { self.opts.hold_after_halt } else { Duration::ZERO };
            Ok::<_, anyhow::Error>(ended_at.is_some_and(|at| at.elapsed() >= hold).then_some(()))
        })
        .await?;
        let timed_out = ended.is_none();
        // Until the end, without the hold after a halt.
        let took = ended_at.map_or_else(|| t0.elapsed(), |end| end.duration_since(t0));
        let spec_waves = rollout.as_ref().map(|r| r.spec.waves.clone()).unwrap_or_default();
        let waves: Vec<WaveSpec> = spec_waves
            .iter()
            .map(|w| WaveSpec {
                name: w.name.clone(),
                soak: w
                    .soak
                    .as_deref()
                    .and_then(|s| petrel::core::strategy::parse_duration(s).ok())
                    .unwrap_or(Duration::ZERO),
            })
            .collect();
        let status = rollout.and_then(|r| r.status).unwrap_or_default();
        let mut checks = match end {
            RolloutPhase::Failed => story::halted_checks(tag, &running, &waves, &status, &timeline),
            _ => story::healthy_checks(tag, &waves, &status, &timeline),
        };
        checks.insert(
            0,
            Check {
                what: format!("the fleet finished {tag} within {:.0}s", self.opts.release_timeout.as_secs_f64()),
                passed: !timed_out,
                detail: format!("took {:.0}s", took.as_secs_f64()),
            },
        );
        let (blast, blast_fraction) = match halted {
            Some(halted) => {
                let (radius, fraction) = self.blast_radius(tag, &before, &halted, &mut checks).await?;
                (Some(radius), fraction)
            }
            None => (None, None),
        };
        for m in &mut self.members {
            m.rendered = plan::set_image_tag(&m.rendered, APP_REPOSITORY, tag)?;
        }
        // Git keeps what it was given: after a failed release the members'
        // targets still name the bad image (the primary serves the good one),
        // exactly as a real GitOps repository would until someone reverts.
        Ok(ReleaseRecord { tag: tag.to_owned(), took, waves, status, timeline, checks, blast, blast_fraction })
    }

    /// Every member's app as its simulator counted it so far.
    fn traffic_counts(&self) -> Result<Vec<(String, AppSnapshot)>> {
        self.members
            .iter()
            .map(|m| {
                let snapshot = m.simulator.snapshot(APP_NAME).with_context(|| format!("{}: simulator", m.spec.name))?;
                Ok((m.spec.name.clone(), snapshot))
            })
            .collect()
    }

    /// The blast radius of the halted release `tag` from `before` to `halted`: says it,
    /// checks that no production member answered a request with it and that it answered
    /// none after the halt, and weights it by the Clusters' traffic shares.
    async fn blast_radius(
        &self,
        tag: &str,
        before: &[(String, AppSnapshot)],
        halted: &[(String, AppSnapshot)],
        checks: &mut Vec<Check>,
    ) -> Result<(BlastRadius, Option<f64>)> {
        let release = format!("podinfo:{tag}");
        let radius = BlastRadius::between(before, halted, &release);
        let later = BlastRadius::between(before, &self.traffic_counts()?, &release);
        for m in self.members.iter().filter(|m| !m.spec.is_canary()) {
            let bad = radius.bad_in(&m.spec.name).unwrap_or_default();
            checks.push(Check {
                what: format!("{} answered no request with {tag}", m.spec.name),
                passed: bad == 0,
                detail: format!("{bad} request(s)"),
            });
        }
        checks.push(Check {
            what: format!("{tag} answered no request after the fleet halted"),
            passed: later.fleet_bad() == radius.fleet_bad(),
            detail: format!("{} before the halt, {} by the end of the hold", radius.fleet_bad(), later.fleet_bad()),
        });
        let clusters = Api::<petrel::api::Cluster>::all(self.hub.client.clone())
            .list(&ListParams::default())
            .await
            .context("listing the hub's Clusters")?;
        let shares: BTreeMap<String, f64> = clusters
            .items
            .iter()
            .filter_map(|c| Some((c.name_any(), petrel::fleet::traffic::traffic_share(c.labels())?.ok()?)))
            .collect();
        let fraction = radius.weighted_fraction(&shares);
        for line in radius.to_string().lines() {
            self.board.say(line.to_owned());
        }
        self.board.say(match fraction {
            Some(f) => format!(
                "with the Clusters' traffic shares ({}): {:.3}% of the fleet's requests answered by {tag}",
                shares.iter().map(|(c, s)| format!("{c} {s}%")).collect::<Vec<_>>().join(", "),
                f * 100.0
            ),
            None => "a Cluster states no petrel.dev/traffic-share: no fleet-weighted fraction".to_owned(),
        });
        Ok((radius, fraction))
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

    /// Log files of the hub's and each member's petrel.
    pub fn petrel_logs(&self) -> Vec<(String, PathBuf)> {
        let hub = self.hub.petrel.iter().map(|p| (HUB.to_owned(), p.log.clone()));
        hub.chain(self.members.iter().map(|m| (m.spec.name.clone(), m.petrel.log.clone()))).collect()
    }

    /// `namespace/name` of the hub's Rollout.
    pub fn rollout_name(&self) -> String {
        format!("{}/{}", self.hub.rollout.0, self.hub.rollout.1)
    }

    /// Stops everything without blocking the runtime.
    pub async fn shutdown(self) -> Result<()> {
        tokio::task::spawn_blocking(move || drop(self)).await.context("teardown panicked")
    }
}

/// The hub's side: CRDs, `examples/podinfo/hub` (fitted to the members the
/// demo runs, and to the fast soak when asked), and a kubeconfig Secret per
/// Cluster. Returns the Rollout's `(namespace, name)`.
async fn setup_hub(
    opts: &DemoOptions,
    kubectl: &Path,
    board: &Board,
    fleet: &Fleet,
    specs: &[MemberSpec],
) -> Result<(String, String)> {
    let hub = fleet.cluster(HUB)?;
    let kc = &hub.kubeconfig_path;
    let crds: Vec<PathBuf> = HUB_CRDS.iter().map(|f| opts.repo_root.join("crds").join(f)).collect();
    install_crds(kubectl, kc, &crds, HUB).await?;
    let dir = opts.example_dir().join(HUB_MANIFESTS);
    let dir_arg = dir.display().to_string();
    let rendered = run_kubectl(kubectl, kc, &["kustomize", &dir_arg], None).await?;
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    let fitted = plan::fit_hub_manifests(&rendered, &names, opts.soak.as_deref())?;
    let every_cluster = plan::kubeconfig_secret_refs(&rendered)?.len() == names.len();
    if every_cluster && opts.soak.is_none() {
        run_kubectl(kubectl, kc, &["apply", "-k", &dir_arg], None).await?;
        board.say("hub: kubectl apply -k examples/podinfo/hub (namespace, a Cluster per member, the Rollout)");
    } else {
        run_kubectl(kubectl, kc, &["apply", "-f", "-"], Some(&fitted)).await?;
        board.say(format!(
            "hub: applied examples/podinfo/hub with the Clusters of {} only{}",
            names.join(", "),
            opts.soak.as_ref().map(|s| format!(" and soak {s}")).unwrap_or_default()
        ));
    }
    let mut secrets = Vec::new();
    for secret_ref in plan::kubeconfig_secret_refs(&fitted)? {
        let kubeconfig = fleet.cluster(&secret_ref.cluster)?.kubeconfig_yaml()?;
        secrets.push(plan::kubeconfig_secret(&secret_ref, &kubeconfig));
    }
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": secrets}).to_string();
    run_kubectl(kubectl, kc, &["apply", "-f", "-"], Some(&list))
        .await
        .context("hub: applying the kubeconfig Secrets")?;
    board.say(format!("hub: {} kubeconfig Secret(s) generated where the Clusters point", secrets.len()));
    Ok(plan::rollout_ref(&fitted)?)
}

async fn setup_member(
    opts: &DemoOptions,
    kubectl: &Path,
    board: &Board,
    cluster: Arc<Cluster>,
    spec: MemberSpec,
) -> Result<Member> {
    let name = spec.name.clone();
    let kc = cluster.kubeconfig_path.clone();
    let dir = opts.work_dir.join("members").join(&name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let client = cluster.client().await?;
    // A member runs the Canary controller only: the hub's CRDs (Cluster, Rollout) stay off it.
    let mut crds: Vec<PathBuf> = MEMBER_CRDS.iter().map(|f| opts.repo_root.join("crds").join(f)).collect();
    crds.push(opts.repo_root.join("e2e/crds/third-party"));
    install_crds(kubectl, &kc, &crds, &name).await?;
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
    let args = vec![
        format!("--kubeconfig={}", kc.display()),
        "--provider=gatewayapi".into(),
        format!("--metrics-server={}", prometheus.url()),
        format!("--cluster-name={name}"),
        "--metrics-addr=127.0.0.1:0".into(),
    ];
    let petrel = ChildProcess::launch(&format!("{name}/petrel"), &opts.launcher(), &args, &dir.join("petrel.log"))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A CRD added to `crds/` and forgotten here leaves the demo's petrel without the
    /// resource it reads or publishes (a member without ClusterIdentity is never approved).
    #[test]
    fn every_crd_of_the_repository_is_installed_on_the_members_or_the_hub() {
        let root = repo_root();
        let mut files: Vec<String> = std::fs::read_dir(root.join("crds"))
            .expect("crds/ is readable")
            .map(|entry| entry.expect("a crds/ entry").file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".yaml"))
            .collect();
        files.sort();
        let mut installed: Vec<String> = MEMBER_CRDS.iter().chain(HUB_CRDS.iter()).map(|f| f.to_string()).collect();
        installed.sort();
        assert_eq!(files, installed);
    }
}
