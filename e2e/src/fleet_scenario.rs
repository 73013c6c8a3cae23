//! A fleet scenario (`e2e/tests/fleet.rs`): a hub and three member control planes,
//! each member with the podinfo app, its Canary, a traffic simulator, Prometheus and
//! a real `petrel` (member mode); the hub with a `Cluster` per member (kubeconfig
//! Secret in [`HUB_NAMESPACE`]), a `Rollout` over them and a real `petrel --mode hub`.
//!
//! With [`Install::Chart`] every cluster gets the Helm chart instead (member mode on the
//! members, hub mode on the hub) and petrel runs from its container image, with the
//! arguments of the chart's Deployment and only the chart's ServiceAccount token.
//!
//! Dropping a [`FleetEnv`] while a test panics prints every operator's log tail and
//! the Rollout status, so a failure explains itself.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};
use petrel::api::canary::{APPROVED_REVISION_ANNOTATION, FLEET_ROLLOUT_ANNOTATION, Phase};
use petrel::api::rollout::RolloutPhase;
use petrel::api::{Canary, Cluster, Rollout};
use petrel::fleet::traffic::TRAFFIC_SHARE_LABEL;
use serde_json::{Value, json};

use crate::chart::{ChartCluster, chart_dir};
use crate::fleet::{Fleet, FleetOptions};
use crate::image::{Container, Launcher, PetrelImage};
use crate::prometheus::Prometheus;
use crate::scenario::{APP, CONFIG_MAP, CanaryOptions, IMAGE_V0, NAMESPACE, eventually, kubectl, podinfo_deployment};
use crate::simulator::{App, AppCoords, Provider, RouteRecorder, Simulator, SimulatorConfig, TrafficProfile};

/// Name of the hub cluster.
pub const HUB: &str = "hub";
/// The canary cluster (first wave).
pub const MEMBER_CANARY: &str = "member-canary";
/// Production members (second wave).
pub const MEMBER_A: &str = "member-a";
pub const MEMBER_B: &str = "member-b";
/// Namespace of the hub's kubeconfig Secrets and the Rollout.
pub const HUB_NAMESPACE: &str = "petrel-system";
/// Name of the Rollout.
pub const ROLLOUT: &str = "podinfo";
/// Soak of the canary wave.
pub const CANARY_SOAK: Duration = Duration::from_secs(5);
/// The label that puts each prod member in a wave of its own (see [`member_labels`]).
pub const RING_LABEL: &str = "ring";
/// Requests per second the whole fleet receives; each member's simulator sends its
/// [`traffic_share`] of them. Enough that the canary cluster's 5% (100/s) gives its
/// 2 s analysis steps data at once: a quiet canary cluster's first error series can
/// still be a lone sample that `rate()` ignores.
pub const FLEET_REQUESTS_PER_SECOND: f64 = 2000.0;
/// The requests per second a member's app answers, from the simulator's own
/// `http_request_duration_seconds` (every provider's app exports it): what a member's
/// petrel measures with `--traffic-rate-query` in [`FleetEnv::start_measuring_traffic`].
pub const TRAFFIC_RATE_QUERY: &str =
    r#"sum(rate(http_request_duration_seconds_count{kubernetes_namespace="test"}[30s]))"#;
const TEST_MANAGER: &str = "e2e-test";

fn ssa() -> PatchParams {
    PatchParams::apply(TEST_MANAGER).force()
}

/// A child process with its log in a file, SIGKILLed when dropped or when the test dies
/// (petrel from the image: its container removed).
pub struct Process {
    child: Option<Child>,
    container: Option<Container>,
    log: PathBuf,
}

impl Process {
    /// Sends SIGKILL and reaps the process (no-op when it already exited).
    pub fn kill(&mut self) {
        if let Some(container) = self.container.as_ref() {
            container.remove();
        }
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn start(launcher: &Launcher, args: &[String], env: &[(&str, &str)], log: PathBuf) -> Result<Process> {
        let file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut env = env.to_vec();
        env.push(("RUST_LOG", "info,petrel=debug,kube=warn,tower=warn,hyper=warn"));
        let (mut command, container) = launcher.command(args, &env);
        command.stdin(Stdio::null()).stdout(file.try_clone().context("duplicating the log handle")?).stderr(file);
        let child = crate::fleet::spawn_tied_to_process(command)
            .with_context(|| format!("starting {}", launcher.describe()))?;
        Ok(Process { child: Some(child), container, log })
    }

    /// The container petrel runs in, when it runs from the image.
    pub fn container(&self) -> Option<&Container> {
        self.container.as_ref()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// The whole log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One member cluster of the scenario.
pub struct Member {
    pub name: String,
    pub client: Client,
    pub simulator: Simulator,
    pub recorder: RouteRecorder,
    pub operator: Process,
    _prometheus: Prometheus,
}

impl Member {
    pub fn canaries(&self) -> Api<Canary> {
        Api::namespaced(self.client.clone(), NAMESPACE)
    }

    /// The member's Canary now.
    pub async fn canary(&self) -> Result<Canary> {
        self.canaries().get(APP).await.with_context(|| format!("[{}] reading the Canary", self.name))
    }

    /// Sets the target's image, as a GitOps sync of a new release would.
    pub async fn set_image(&self, image: &str) -> Result<()> {
        Api::<Deployment>::namespaced(self.client.clone(), NAMESPACE)
            .patch(APP, &ssa(), &Patch::Apply(podinfo_deployment(image)))
            .await
            .with_context(|| format!("[{}] setting the image to {image}", self.name))?;
        Ok(())
    }

    /// Image of the first container of a Deployment of the app's namespace.
    pub async fn image_of(&self, deployment: &str) -> Result<String> {
        let d = Api::<Deployment>::namespaced(self.client.clone(), NAMESPACE)
            .get(deployment)
            .await
            .with_context(|| format!("[{}] reading {deployment}", self.name))?;
        crate::scenario::first_container(&d)
            .and_then(|c| c.image.clone())
            .with_context(|| format!("[{}] {deployment} has no container image", self.name))
    }

    /// The canary weights the route recorder saw, consecutive duplicates removed.
    pub fn canary_weights(&self) -> Vec<u32> {
        crate::scenario::canary_weights(&self.recorder.history())
    }
}

/// The scenario's world: the fleet, the members, the hub.
pub struct FleetEnv {
    pub name: String,
    pub dir: PathBuf,
    pub hub: Client,
    pub members: Vec<Member>,
    pub hub_operator: Process,
    /// How to start the hub again (see [`FleetEnv::restart_hub`]).
    hub_command: (Launcher, Vec<String>, Vec<(&'static str, String)>),
    /// Logs of hub processes killed before the current one, oldest first.
    earlier_hub_logs: Vec<PathBuf>,
    /// Members whose control plane the test stopped: their operator may exit.
    stopped: BTreeSet<String>,
    started: Instant,
    // Last: the control planes stop after the processes that talk to them.
    pub fleet: Fleet,
}

/// Labels of the members: what the Rollout's waves select. `role=canary` for the canary
/// cluster; `env=prod` for both prod members, which also carry [`RING_LABEL`] `2`
/// (member-a) or `3` (member-b) so a Rollout can give each a wave of its own.
/// Each also states its share of the fleet's traffic ([`traffic_share`]).
pub fn member_labels(name: &str) -> BTreeMap<String, String> {
    let labels: &[(&str, &str)] = match name {
        MEMBER_CANARY => &[("role", "canary")],
        MEMBER_A => &[("env", "prod"), (RING_LABEL, "2")],
        _ => &[("env", "prod"), (RING_LABEL, "3")],
    };
    let mut labels: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    labels.insert(TRAFFIC_SHARE_LABEL.to_string(), traffic_share(name).to_string());
    labels
}

/// A member's share of the fleet's traffic, in percent: the canary cluster takes a
/// small part, as canary clusters do.
pub fn traffic_share(name: &str) -> u32 {
    match name {
        MEMBER_CANARY => 5,
        MEMBER_A => 30,
        _ => 65,
    }
}

/// The Canary of every member: short steps (2s, one step to 50%), a threshold of 2 and
/// the builtin success-rate check.
pub fn member_canary() -> CanaryOptions {
    CanaryOptions {
        interval: "2s".into(),
        step_weight: Some(50),
        max_weight: Some(50),
        threshold: 2,
        metric_interval: "10s".into(),
        ..CanaryOptions::canary(Provider::GatewayApi)
    }
}

/// The Rollout: the canary cluster first (soak [`CANARY_SOAK`]), then prod one at a time.
pub fn rollout_manifest() -> Value {
    rollout_with(
        vec![
            wave("canary", ("role", "canary"), json!({"soak": format!("{}s", CANARY_SOAK.as_secs())})),
            wave("prod", ("env", "prod"), json!({"maxConcurrency": 1})),
        ],
        json!({}),
    )
}

/// A Rollout of the app over `waves`, with `spec` fields (`onFailure`, ...) merged in.
pub fn rollout_with(waves: Vec<Value>, spec: Value) -> Value {
    let mut manifest = json!({
        "apiVersion": "petrel.dev/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": ROLLOUT, "namespace": HUB_NAMESPACE},
        "spec": {"canaryRef": {"namespace": NAMESPACE, "name": APP}, "waves": waves},
    });
    merge(&mut manifest["spec"], spec);
    manifest
}

/// A wave selecting the Clusters labelled `key=value`, with `fields` (`soak`,
/// `maxFailures`, ...) merged in.
pub fn wave(name: &str, (key, value): (&str, &str), fields: Value) -> Value {
    let mut wave = json!({"name": name, "clusterSelector": {"matchLabels": {key: value}}});
    merge(&mut wave, fields);
    wave
}

/// Three waves, one member each: `canary` (member-canary), `wave-2` (member-a) and
/// `wave-3` (member-b), each with its `fields` merged in.
pub fn three_waves(canary: Value, wave_2: Value, wave_3: Value) -> Vec<Value> {
    vec![
        wave("canary", ("role", "canary"), canary),
        wave("wave-2", (RING_LABEL, "2"), wave_2),
        wave("wave-3", (RING_LABEL, "3"), wave_3),
    ]
}

fn merge(into: &mut Value, fields: Value) {
    if let (Some(into), Value::Object(fields)) = (into.as_object_mut(), fields) {
        into.extend(fields);
    }
}

/// How the clusters get petrel.
#[derive(Clone, Debug, Default)]
pub enum Install {
    /// The CRDs applied with kubectl; petrel is the host binary with the admin kubeconfig.
    #[default]
    Bare,
    /// The Helm chart in every cluster (release `petrel` in [`HUB_NAMESPACE`], member mode
    /// on the members and hub mode on the hub); petrel runs from `image` in a container,
    /// with the arguments of the release's Deployment and only its ServiceAccount's token.
    Chart { image: PetrelImage, helm: PathBuf },
}

/// The release name of the chart in every cluster ([`Install::Chart`]).
pub const CHART_RELEASE: &str = "petrel";

impl Install {
    fn launcher(&self, petrel: &Path) -> Launcher {
        match self {
            Install::Bare => Launcher::Binary(petrel.to_path_buf()),
            Install::Chart { image, .. } => Launcher::Image(image.clone()),
        }
    }
}

/// Installs the chart into `cluster` (`values` on top of the defaults) and returns petrel's
/// arguments and environment as the release's pod would have them.
async fn install_chart(
    helm: &Path,
    kubectl_bin: &Path,
    cluster: &crate::fleet::Cluster,
    dir: &Path,
    values: Vec<(&'static str, String)>,
) -> Result<(Vec<String>, Vec<(&'static str, String)>)> {
    let (helm, kubectl_bin, kubeconfig, dir) =
        (helm.to_path_buf(), kubectl_bin.to_path_buf(), cluster.kubeconfig_path.clone(), dir.to_path_buf());
    let pod = format!("petrel-{}", cluster.name);
    let name = cluster.name.clone();
    let args = tokio::task::spawn_blocking(move || {
        let chart = ChartCluster { helm: &helm, kubectl: &kubectl_bin, kubeconfig: &kubeconfig };
        let values: Vec<(&str, &str)> = values.iter().map(|(k, v)| (*k, v.as_str())).collect();
        chart.helm_install("install", CHART_RELEASE, &chart_dir(), HUB_NAMESPACE, &values)?;
        chart.petrel_args(CHART_RELEASE, HUB_NAMESPACE, CHART_RELEASE, &dir)
    })
    .await?
    .with_context(|| format!("[{name}] installing the chart"))?;
    // The Downward API's values in the pod: the Lease holder and the Events' reporter.
    Ok((args, vec![("POD_NAME", pod), ("POD_NAMESPACE", HUB_NAMESPACE.to_string())]))
}

/// One Event the hub recorded on the Rollout.
#[derive(Clone, Debug)]
pub struct HubEvent {
    pub reason: String,
    pub note: String,
    pub warning: bool,
    /// How many times it happened (an Event series counts its repeats).
    pub count: i32,
}

async fn setup_member(
    dir: &Path,
    kubectl_bin: &Path,
    install: &Install,
    petrel: &Path,
    cluster: &crate::fleet::Cluster,
    extra_args: &[String],
) -> Result<Member> {
    let name = cluster.name.clone();
    let client = cluster.client().await?;
    Api::<Namespace>::all(client.clone())
        .patch(
            NAMESPACE,
            &ssa(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})),
        )
        .await
        .with_context(|| format!("[{name}] creating the namespace"))?;
    let config = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": CONFIG_MAP, "namespace": NAMESPACE},
        "data": {"PODINFO_UI_MESSAGE": "hello from v0"},
    });
    Api::<ConfigMap>::namespaced(client.clone(), NAMESPACE).patch(CONFIG_MAP, &ssa(), &Patch::Apply(config)).await?;
    Api::<Deployment>::namespaced(client.clone(), NAMESPACE)
        .patch(APP, &ssa(), &Patch::Apply(podinfo_deployment(IMAGE_V0)))
        .await
        .with_context(|| format!("[{name}] applying the Deployment"))?;

    let coords = AppCoords::new(NAMESPACE, APP, Provider::GatewayApi);
    let requests_per_second = FLEET_REQUESTS_PER_SECOND * f64::from(traffic_share(&name)) / 100.0;
    let profile = TrafficProfile { requests_per_second, ..TrafficProfile::default() };
    let simulator = Simulator::start(
        SimulatorConfig::default(),
        vec![App::from_cluster(client.clone(), coords.clone()).profile(profile)],
    )
    .await?;
    let member_dir = dir.join(&name);
    std::fs::create_dir_all(&member_dir)?;
    let prometheus = Prometheus::start(&member_dir, &[simulator.addr()]).await?;
    let recorder = eventually("the route kind to be served", Duration::from_secs(30), async || {
        RouteRecorder::start(client.clone(), &coords).await.ok()
    })
    .await?;
    let (args, env) = match install {
        Install::Bare => {
            let args = vec![
                "--kubeconfig".to_string(),
                cluster.kubeconfig_path.to_string_lossy().into_owned(),
                "--provider".into(),
                "gatewayapi".into(),
                "--metrics-server".into(),
                prometheus.url(),
                "--cluster-name".into(),
                name.clone(),
                "--metrics-addr".into(),
                "127.0.0.1:0".into(),
            ];
            (args.into_iter().chain(extra_args.iter().cloned()).collect(), Vec::new())
        }
        Install::Chart { helm, .. } => {
            let values = vec![
                ("member.provider", "gatewayapi".to_string()),
                ("member.metricsServer", prometheus.url()),
                ("clusterName", name.clone()),
            ];
            install_chart(helm, kubectl_bin, cluster, &member_dir, values).await?
        }
    };
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let operator = Process::start(&install.launcher(petrel), &args, &env, member_dir.join("petrel.log"))?;
    Api::<Canary>::namespaced(client.clone(), NAMESPACE)
        .patch(APP, &ssa(), &Patch::Apply(member_canary().manifest()))
        .await
        .with_context(|| format!("[{name}] applying the Canary"))?;
    Ok(Member { name, client, simulator, recorder, operator, _prometheus: prometheus })
}

impl FleetEnv {
    /// Starts the fleet, the members (app, Canary Initialized, simulator, Prometheus,
    /// petrel) and the hub (Clusters, Rollout, `petrel --mode hub`); returns once the hub
    /// has marked every member's Canary with its Rollout.
    pub async fn start(name: &str) -> Result<FleetEnv> {
        Self::start_with(name, rollout_manifest()).await
    }

    /// [`FleetEnv::start`] with another Rollout manifest (see [`rollout_with`]).
    pub async fn start_with(name: &str, rollout: Value) -> Result<FleetEnv> {
        Self::start_installed(name, rollout, Install::Bare).await
    }

    /// [`FleetEnv::start_with`], the clusters getting petrel as `install` says.
    pub async fn start_installed(name: &str, rollout: Value, install: Install) -> Result<FleetEnv> {
        Self::start_full(name, rollout, install, &[]).await
    }

    /// [`FleetEnv::start`] with every member's petrel measuring its own request rate
    /// ([`TRAFFIC_RATE_QUERY`] against its Prometheus, which scrapes its simulator).
    pub async fn start_measuring_traffic(name: &str) -> Result<FleetEnv> {
        let args = ["--traffic-rate-query".to_string(), TRAFFIC_RATE_QUERY.to_string()];
        Self::start_full(name, rollout_manifest(), Install::Bare, &args).await
    }

    async fn start_full(name: &str, rollout: Value, install: Install, member_args: &[String]) -> Result<FleetEnv> {
        let started = Instant::now();
        let dir = std::env::temp_dir().join(format!("petrel-e2e-fleet-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let bin_dir = tokio::task::spawn_blocking(crate::fleet::ensure_binaries).await??;
        let petrel = tokio::task::spawn_blocking(crate::scenario::petrel_binary).await??;

        let mut opts = FleetOptions::new(dir.join("fleet"), [HUB, MEMBER_CANARY, MEMBER_A, MEMBER_B]);
        opts.bin_dir = Some(bin_dir);
        opts.nodes_per_cluster = 2;
        let fleet = Fleet::start(opts).await.context("starting the fleet")?;
        let kubectl_bin = fleet.binaries().path("kubectl");
        let root = crate::scenario::workspace_root();
        // The chart brings petrel's own CRDs (helm installs them from its crds/).
        let crd_dirs: &[&str] = match install {
            Install::Bare => &["crds", "e2e/crds/third-party"],
            Install::Chart { .. } => &["e2e/crds/third-party"],
        };
        for cluster in fleet.clusters() {
            for crds in crd_dirs.iter().map(|c| root.join(c)) {
                let crds = crds.to_string_lossy().into_owned();
                kubectl(
                    &kubectl_bin,
                    &cluster.kubeconfig_path,
                    &["apply", "--server-side", "--field-manager", TEST_MANAGER, "-f", &crds],
                )
                .with_context(|| format!("[{}] installing the CRDs", cluster.name))?;
            }
            kubectl(
                &kubectl_bin,
                &cluster.kubeconfig_path,
                &["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"],
            )?;
        }
        eprintln!("[{name}] fleet and CRDs ready after {:.1?}", started.elapsed());

        let member_setups = [MEMBER_CANARY, MEMBER_A, MEMBER_B].map(|m| {
            let (dir, kubectl_bin, install, petrel) = (&dir, &kubectl_bin, &install, &petrel);
            let cluster = fleet.cluster(m).cloned();
            async move { setup_member(dir, kubectl_bin, install, petrel, &*cluster?, member_args).await }
        });
        let members: Vec<Member> = futures::future::try_join_all(member_setups).await?;
        for member in &members {
            eventually(
                &format!("[{}] the Canary to be Initialized", member.name),
                Duration::from_secs(90),
                async || {
                    let canary = member.canary().await.ok()?;
                    (canary.status?.phase == Phase::Initialized).then_some(())
                },
            )
            .await?;
        }
        eprintln!("[{name}] members Initialized after {:.1?}", started.elapsed());

        // The hub: a kubeconfig Secret and a labelled Cluster per member, the Rollout, petrel.
        let hub_cluster = fleet.cluster(HUB)?;
        let hub = hub_cluster.client().await?;
        Api::<Namespace>::all(hub.clone())
            .patch(
                HUB_NAMESPACE,
                &ssa(),
                &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": HUB_NAMESPACE}})),
            )
            .await?;
        let (hub_args, hub_env) = match &install {
            Install::Bare => {
                let args = vec![
                    "--mode".to_string(),
                    "hub".into(),
                    "--kubeconfig".into(),
                    hub_cluster.kubeconfig_path.to_string_lossy().into_owned(),
                    "--metrics-addr".into(),
                    "127.0.0.1:0".into(),
                ];
                (args, Vec::new())
            }
            // The hub reads the kubeconfig Secrets of its release namespace (HUB_NAMESPACE);
            // the chart brings the Cluster and Rollout CRDs, so it goes first.
            Install::Chart { helm, .. } => {
                let hub_dir = dir.join(HUB);
                std::fs::create_dir_all(&hub_dir)?;
                install_chart(helm, &kubectl_bin, hub_cluster, &hub_dir, vec![("mode", "hub".to_string())]).await?
            }
        };
        for member in &members {
            let secret_name = format!("{}-kubeconfig", member.name);
            let secret = json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": secret_name, "namespace": HUB_NAMESPACE},
                "stringData": {"kubeconfig": fleet.cluster(&member.name)?.kubeconfig_yaml()?},
            });
            Api::<Secret>::namespaced(hub.clone(), HUB_NAMESPACE)
                .patch(&secret_name, &ssa(), &Patch::Apply(secret))
                .await
                .context("applying a kubeconfig Secret")?;
            let cluster = json!({
                "apiVersion": "petrel.dev/v1alpha1", "kind": "Cluster",
                "metadata": {"name": member.name, "labels": member_labels(&member.name)},
                "spec": {"kubeconfigSecretRef": {"name": secret_name, "namespace": HUB_NAMESPACE, "key": "kubeconfig"}},
            });
            Api::<Cluster>::all(hub.clone())
                .patch(&member.name, &ssa(), &Patch::Apply(cluster))
                .await
                .with_context(|| format!("registering Cluster {}", member.name))?;
        }
        Api::<Rollout>::namespaced(hub.clone(), HUB_NAMESPACE)
            .patch(ROLLOUT, &ssa(), &Patch::Apply(rollout))
            .await
            .context("applying the Rollout")?;
        let launcher = install.launcher(&petrel);
        let env: Vec<(&str, &str)> = hub_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let hub_operator = Process::start(&launcher, &hub_args, &env, dir.join("hub.log"))?;
        let env = FleetEnv {
            name: name.into(),
            dir,
            hub,
            members,
            hub_operator,
            hub_command: (launcher, hub_args, hub_env),
            earlier_hub_logs: Vec::new(),
            stopped: BTreeSet::new(),
            started,
            fleet,
        };
        for member in &env.members {
            eventually(
                &format!("[{}] the hub's Rollout annotation", member.name),
                Duration::from_secs(60),
                async || member.canary().await.ok()?.metadata.annotations?.get(FLEET_ROLLOUT_ANNOTATION).map(|_| ()),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n{}", env.dump()))?;
        }
        // A release lands on a settled fleet: the hub first rolls out what the members
        // were initialised with (every member already runs it).
        eventually("the Rollout of the initial release to succeed", Duration::from_secs(60), async || {
            let status = env.rollout().await.ok()?.status?;
            (status.release.as_deref() == Some(IMAGE_V0) && status.phase == Some(RolloutPhase::Succeeded)).then_some(())
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", env.dump()))?;
        eprintln!(
            "[{name}] hub marked every member and rolled out the initial release after {:.1?} (work dir {})",
            env.started.elapsed(),
            env.dir.display()
        );
        Ok(env)
    }

    pub fn member(&self, name: &str) -> &Member {
        // The names are this module's constants; a typo is a bug of the test.
        self.members.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("no member {name}"))
    }

    /// The Rollout on the hub.
    pub async fn rollout(&self) -> Result<Rollout> {
        Api::<Rollout>::namespaced(self.hub.clone(), HUB_NAMESPACE).get(ROLLOUT).await.context("reading the Rollout")
    }

    /// How long since the environment started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether every operator (members and hub) still runs; the operator of a member
    /// whose control plane the test stopped may have exited.
    pub fn operators_running(&mut self) -> bool {
        let stopped = &self.stopped;
        self.hub_operator.is_running()
            && self.members.iter_mut().filter(|m| !stopped.contains(&m.name)).all(|m| m.operator.is_running())
    }

    /// The hub's whole log, over every hub process the test started.
    pub fn hub_log(&self) -> String {
        let mut text: String = self
            .earlier_hub_logs
            .iter()
            .map(|log| std::fs::read_to_string(log).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n");
        text.push_str(&self.hub_operator.log_text());
        text
    }

    /// SIGKILLs the hub (no graceful shutdown, as a node loss would).
    pub fn kill_hub(&mut self) {
        self.hub_operator.kill();
    }

    /// Starts a new hub process with the same arguments, logging to a new file.
    pub fn restart_hub(&mut self) -> Result<()> {
        self.hub_operator.kill();
        let (launcher, args, env) = &self.hub_command;
        let log = self.dir.join(format!("hub-{}.log", self.earlier_hub_logs.len() + 1));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let next = Process::start(launcher, args, &env, log)?;
        let previous = std::mem::replace(&mut self.hub_operator, next);
        self.earlier_hub_logs.push(previous.log.clone());
        Ok(())
    }

    /// Stops a member's control plane (API server and all), as an outage would; the
    /// member's petrel, simulator and Prometheus keep running.
    pub fn stop_member_cluster(&mut self, name: &str) -> Result<()> {
        tokio::task::block_in_place(|| self.fleet.stop_cluster(name))?;
        self.stopped.insert(name.to_string());
        Ok(())
    }

    /// The Events the hub recorded on the Rollout, oldest first.
    pub async fn hub_events(&self) -> Result<Vec<HubEvent>> {
        let events = Api::<Event>::namespaced(self.hub.clone(), HUB_NAMESPACE)
            .list(&ListParams::default())
            .await
            .context("listing the hub's Events")?;
        let mut on_rollout: Vec<Event> = events
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().is_some_and(|r| r.kind.as_deref() == Some("Rollout")))
            .collect();
        on_rollout.sort_by(|a, b| a.event_time.cmp(&b.event_time));
        Ok(on_rollout
            .into_iter()
            .map(|e| HubEvent {
                reason: e.reason.unwrap_or_default(),
                note: e.note.unwrap_or_default(),
                warning: e.type_.as_deref() == Some("Warning"),
                count: e.series.as_ref().map_or(1, |s| s.count.max(1)),
            })
            .collect())
    }

    /// Every member's app as its traffic simulator counted it so far (see
    /// [`crate::blast::BlastRadius::between`]).
    pub fn traffic_counts(&self) -> Result<Vec<(String, crate::simulator::AppSnapshot)>> {
        self.members
            .iter()
            .map(|m| {
                Ok((m.name.clone(), m.simulator.snapshot(APP).with_context(|| format!("[{}] simulator", m.name))?))
            })
            .collect()
    }

    /// Diagnostics: every operator's log tail.
    pub fn dump(&self) -> String {
        let mut out =
            format!("===== [{}] hub log (last 80 lines) =====\n{}\n", self.name, self.hub_operator.log_tail(80));
        for member in &self.members {
            out.push_str(&format!(
                "===== [{}] {} petrel log (last 40 lines) =====\n{}\n===== {} weights {:?}\n",
                self.name,
                member.name,
                member.operator.log_tail(40),
                member.name,
                member.canary_weights()
            ));
        }
        out.push_str(&format!("===== [{}] work dir {} (kept) =====", self.name, self.dir.display()));
        out
    }
}

impl Drop for FleetEnv {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.dump());
        } else if std::env::var_os("PETREL_E2E_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The hub's approval on a Canary, if any.
pub fn approved_revision(canary: &Canary) -> Option<String> {
    canary.metadata.annotations.as_ref()?.get(APPROVED_REVISION_ANNOTATION).cloned()
}
