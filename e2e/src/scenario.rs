//! Shared helpers of the release scenarios (`e2e/tests/scenarios.rs`): one real
//! control plane, petrel's and the meshes' CRDs, the podinfo app, the traffic
//! simulator with a real Prometheus scraping it, and the real `petrel` binary
//! as a child process.
//!
//! Every [`TestEnv`] has its own work dir, fleet, ports and operator process,
//! so scenarios can run in parallel. When a test panics, dropping the
//! [`TestEnv`] prints the operator's log, the last Canary status seen and every
//! weight the route recorder saw, so a failure explains itself.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Service};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use petrel::api::Canary;
use petrel::api::canary::{CanaryStatus, Phase};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::fleet::{Fleet, FleetOptions};
use crate::prometheus::Prometheus;
use crate::simulator::{
    App, AppCoords, AppSnapshot, Provider, RecordedSplit, RouteRecorder, Side, Simulator, SimulatorConfig,
    TrafficProfile,
};
/// The e2e wait helper, where the tests find the scenarios' other helpers.
pub use crate::wait::eventually;
use crate::wait::poll;

/// Namespace of every scenario's app.
pub const NAMESPACE: &str = "test";
/// Name of the Canary, its target Deployment and its Service.
pub const APP: &str = "podinfo";
/// The ConfigMap the target uses through `envFrom`.
pub const CONFIG_MAP: &str = "podinfo-config";
/// Image the app starts on.
pub const IMAGE_V0: &str = "ghcr.io/stefanprodan/podinfo:6.0.0";
/// The first release.
pub const IMAGE_V1: &str = "ghcr.io/stefanprodan/podinfo:6.0.1";
/// A second release (a new revision during a run).
pub const IMAGE_V2: &str = "ghcr.io/stefanprodan/podinfo:6.0.2";
/// Field manager of the objects the test writes (the "Git" side).
const TEST_MANAGER: &str = "e2e-test";

/// The workspace root (`e2e/..`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

/// Builds the `petrel` binary once per test process and returns its path.
/// `PETREL_OPERATOR_BIN` points at a prebuilt binary instead.
pub fn petrel_binary() -> Result<PathBuf> {
    static BINARY: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    workspace_binary(&BINARY, "petrel", "PETREL_OPERATOR_BIN")
}

/// Builds the `kubectl-petrel` plugin once per test process and returns its path.
/// `PETREL_PLUGIN_BIN` points at a prebuilt binary instead.
pub fn plugin_binary() -> Result<PathBuf> {
    static BINARY: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    workspace_binary(&BINARY, "kubectl-petrel", "PETREL_PLUGIN_BIN")
}

/// A binary of the `petrel` package, built once per test process (cached in `cell`), or
/// the prebuilt one `override_var` names.
fn workspace_binary(
    cell: &OnceLock<std::result::Result<PathBuf, String>>,
    name: &str,
    override_var: &str,
) -> Result<PathBuf> {
    cell.get_or_init(|| {
        if let Some(path) = std::env::var_os(override_var) {
            return Ok(PathBuf::from(path));
        }
        let root = workspace_root();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "-p", "petrel", "--bin", name])
            .current_dir(&root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .map_err(|e| format!("running cargo build -p petrel --bin {name}: {e}"))?;
        if !out.success() {
            return Err(format!("cargo build -p petrel --bin {name} failed ({out})"));
        }
        let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
        let bin = target.join("debug").join(name);
        if bin.is_file() { Ok(bin) } else { Err(format!("{} missing after the build", bin.display())) }
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// The operator under test, as a child process with its log in a file.
pub struct Operator {
    binary: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Mutex<Option<Child>>,
    starts: usize,
}

impl Operator {
    pub fn start(binary: PathBuf, args: Vec<String>, log: PathBuf) -> Result<Operator> {
        let mut operator = Operator { binary, args, log, child: Mutex::new(None), starts: 0 };
        operator.spawn()?;
        Ok(operator)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut command = Command::new(&self.binary);
        command
            .args(&self.args)
            .env("RUST_LOG", "info,petrel=debug,kube=warn,tower=warn,hyper=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log handle")?)
            .stderr(log);
        self.starts += 1;
        let child = crate::fleet::spawn_tied_to_process(command)
            .with_context(|| format!("starting {}", self.binary.display()))?;
        *self.child.get_mut().unwrap_or_else(|e| e.into_inner()) = Some(child);
        Ok(())
    }

    /// SIGKILLs the operator (no graceful shutdown) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again with the same arguments, appending to the same log.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        std::fs::write(&self.log, format!("{}\n===== restart #{} =====\n", self.log_text(), self.starts))
            .context("marking the restart in the log")?;
        self.spawn()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(Child::id)
    }

    /// Its resident memory now, in bytes (0 when not running).
    pub fn rss_bytes(&self) -> u64 {
        self.pid().map_or(0, crate::fleet::rss_bytes)
    }

    /// Whether the process is still running.
    pub fn is_running(&self) -> bool {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The whole log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A knob set for the Canary of a scenario; [`CanaryOptions::manifest`] turns it
/// into the object.
#[derive(Debug, Clone)]
pub struct CanaryOptions {
    pub provider: Provider,
    pub interval: String,
    pub threshold: i32,
    pub step_weight: Option<i32>,
    pub max_weight: Option<i32>,
    pub iterations: Option<i32>,
    /// `analysis.match`, e.g. `[{"headers": {"x-canary": {"exact": "insider"}}}]`.
    pub match_: Option<Value>,
    /// The builtin success-rate check, with this `min` and metric interval.
    pub success_rate_min: Option<f64>,
    pub metric_interval: String,
    pub progress_deadline_seconds: i32,
    pub target: String,
    /// `autoscalerRef` to the HPA [`TestEnv::apply_hpa`] creates.
    pub autoscaler: bool,
}

impl CanaryOptions {
    /// Canary analysis (weights 20/40/60) with a success-rate check at 99%.
    pub fn canary(provider: Provider) -> Self {
        CanaryOptions {
            provider,
            interval: "3s".into(),
            threshold: 2,
            step_weight: Some(20),
            max_weight: Some(60),
            iterations: None,
            match_: None,
            success_rate_min: Some(99.0),
            metric_interval: "10s".into(),
            progress_deadline_seconds: 120,
            target: APP.into(),
            autoscaler: false,
        }
    }

    /// `iterations` ticks without weights (blue/green, or A/B with a match).
    pub fn iterations(provider: Provider, iterations: i32) -> Self {
        CanaryOptions { step_weight: None, max_weight: None, iterations: Some(iterations), ..Self::canary(provider) }
    }

    pub fn manifest(&self) -> Value {
        let mut analysis = json!({
            "interval": self.interval,
            "threshold": self.threshold,
        });
        if let Some(w) = self.step_weight {
            analysis["stepWeight"] = json!(w);
        }
        if let Some(w) = self.max_weight {
            analysis["maxWeight"] = json!(w);
        }
        if let Some(i) = self.iterations {
            analysis["iterations"] = json!(i);
        }
        if let Some(m) = &self.match_ {
            analysis["match"] = m.clone();
        }
        if let Some(min) = self.success_rate_min {
            analysis["metrics"] = json!([{
                "name": "request-success-rate",
                "interval": self.metric_interval,
                "thresholdRange": {"min": min},
            }]);
        }
        let mut service = json!({"port": 9898, "targetPort": 9898});
        match self.provider {
            Provider::GatewayApi => {
                service["gatewayRefs"] = json!([{"name": "gateway", "namespace": NAMESPACE}]);
                service["hosts"] = json!(["podinfo.example.com"]);
            }
            Provider::Istio => {
                service["gateways"] = json!(["public-gateway"]);
                service["hosts"] = json!(["podinfo.example.com"]);
            }
            _ => {}
        }
        let mut canary = json!({
            "apiVersion": "petrel.dev/v1alpha1",
            "kind": "Canary",
            "metadata": {"name": APP, "namespace": NAMESPACE},
            "spec": {
                "provider": self.provider.as_str(),
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": self.target},
                "progressDeadlineSeconds": self.progress_deadline_seconds,
                "service": service,
                "analysis": analysis,
            }
        });
        if self.autoscaler {
            canary["spec"]["autoscalerRef"] =
                json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "name": APP});
        }
        canary
    }
}

/// The podinfo Deployment (the canary target), using [`CONFIG_MAP`] through envFrom.
pub fn podinfo_deployment(image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": APP, "namespace": NAMESPACE, "labels": {"app": APP}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": APP}},
            "template": {
                "metadata": {"labels": {"app": APP}},
                "spec": {"containers": [{
                    "name": "podinfo",
                    "image": image,
                    "ports": [{"name": "http", "containerPort": 9898}],
                    "envFrom": [{"configMapRef": {"name": CONFIG_MAP}}],
                }]}
            }
        }
    })
}

fn config_map(message: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": CONFIG_MAP, "namespace": NAMESPACE},
        "data": {"PODINFO_UI_MESSAGE": message},
    })
}

/// One scenario's world. Drop stops everything (and dumps diagnostics if the test
/// is panicking).
pub struct TestEnv {
    pub name: String,
    pub dir: PathBuf,
    pub client: Client,
    pub coords: AppCoords,
    pub operator: Operator,
    pub recorder: RouteRecorder,
    pub prometheus: Prometheus,
    pub simulator: Simulator,
    pub fleet: Fleet,
    kubectl: PathBuf,
    kubeconfig: PathBuf,
    started: Instant,
    last_status: Mutex<Option<CanaryStatus>>,
    statuses: Arc<Mutex<Vec<CanaryStatus>>>,
    status_errors: Arc<Mutex<Vec<String>>>,
    status_watch: JoinHandle<()>,
}

/// Applies every YAML manifest of `dir` server-side with the harness's kubectl.
/// Runs kubectl against `kubeconfig` and returns its output; a failure carries its stderr.
pub fn kubectl(kubectl: &Path, kubeconfig: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running kubectl {args:?}"))?;
    ensure!(out.status.success(), "kubectl {args:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ssa() -> PatchParams {
    PatchParams::apply(TEST_MANAGER).force()
}

impl TestEnv {
    /// Starts a one-cluster fleet with the CRDs and the app (without its Canary),
    /// the simulator, Prometheus and the operator.
    pub async fn start(name: &str, provider: Provider) -> Result<TestEnv> {
        Self::start_with(name, provider, TrafficProfile { requests_per_second: 100.0, ..TrafficProfile::default() })
            .await
    }

    /// As [`TestEnv::start`], with a traffic profile (e.g. A/B headers).
    pub async fn start_with(name: &str, provider: Provider, profile: TrafficProfile) -> Result<TestEnv> {
        Self::start_inner(name, provider, profile, false).await
    }

    /// As [`TestEnv::start`], with the API server's audit log on, so the test can count
    /// the requests petrel made ([`TestEnv::petrel_requests`]).
    pub async fn start_audited(name: &str, provider: Provider) -> Result<TestEnv> {
        let profile = TrafficProfile { requests_per_second: 100.0, ..TrafficProfile::default() };
        Self::start_inner(name, provider, profile, true).await
    }

    async fn start_inner(name: &str, provider: Provider, profile: TrafficProfile, audit_log: bool) -> Result<TestEnv> {
        let started = Instant::now();
        let dir = std::env::temp_dir().join(format!("petrel-e2e-scenario-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let bin_dir = tokio::task::spawn_blocking(crate::fleet::ensure_binaries).await??;
        let operator_binary = tokio::task::spawn_blocking(petrel_binary).await??;

        let mut opts = FleetOptions::new(dir.join("fleet"), ["member"]);
        opts.bin_dir = Some(bin_dir);
        opts.nodes_per_cluster = 2;
        opts.audit_log = audit_log;
        let fleet = Fleet::start(opts).await.context("starting the control plane")?;
        let cluster = fleet.cluster("member")?;
        let client = cluster.client().await?;
        let kubeconfig = cluster.kubeconfig_path.clone();
        let kubectl_bin = fleet.binaries().path("kubectl");

        // CRDs: petrel's own and the meshes' route kinds.
        let root = workspace_root();
        // Every generated CRD, the hub's included: a CRD the API server refuses (a CEL rule
        // over its cost budget, say) fails every scenario here rather than in a user's cluster.
        let crds = ["crds", "e2e/crds/third-party"];
        for crds in crds.map(|c| root.join(c)) {
            let crds = crds.to_string_lossy().into_owned();
            kubectl(
                &kubectl_bin,
                &kubeconfig,
                &["apply", "--server-side", "--field-manager", TEST_MANAGER, "-f", &crds],
            )?;
        }
        kubectl(&kubectl_bin, &kubeconfig, &["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"])?;

        // The app, as Git would apply it.
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?)
            .await
            .context("creating the namespace")?;
        Api::<ConfigMap>::namespaced(client.clone(), NAMESPACE)
            .patch(CONFIG_MAP, &ssa(), &Patch::Apply(config_map("hello from v0")))
            .await
            .context("applying the ConfigMap")?;
        Api::<Deployment>::namespaced(client.clone(), NAMESPACE)
            .patch(APP, &ssa(), &Patch::Apply(podinfo_deployment(IMAGE_V0)))
            .await
            .context("applying the Deployment")?;

        // Traffic, its metrics, and the recorder of every weight written.
        let coords = AppCoords::new(NAMESPACE, APP, provider);
        let simulator = Simulator::start(
            SimulatorConfig::default(),
            vec![App::from_cluster(client.clone(), coords.clone()).profile(profile)],
        )
        .await?;
        let prometheus = Prometheus::start(&dir, &[simulator.addr()]).await?;
        let recorder = eventually("the route kind to be served", Duration::from_secs(30), async || {
            RouteRecorder::start(client.clone(), &coords).await.ok()
        })
        .await?;

        let args = vec![
            "--kubeconfig".to_string(),
            kubeconfig.to_string_lossy().into_owned(),
            "--provider".into(),
            provider.as_str().into(),
            "--metrics-server".into(),
            prometheus.url(),
            "--cluster-name".into(),
            name.into(),
            // Scenarios run side by side: each operator serves its own telemetry port.
            "--metrics-addr".into(),
            "127.0.0.1:0".into(),
            // The webhook and alert receivers of the scenarios listen on 127.0.0.1, which
            // petrel's egress policy refuses by default; the rest of loopback (127.0.0.2,
            // the scenario that checks the policy) stays refused.
            "--egress-allow-cidr".into(),
            "127.0.0.1/32".into(),
        ];
        // Every status from the first one on: the watch must be running before the Canary exists.
        let statuses = Arc::new(Mutex::new(Vec::new()));
        let status_errors = Arc::new(Mutex::new(Vec::new()));
        let (synced_tx, mut synced) = tokio::sync::watch::channel(false);
        let status_watch =
            tokio::spawn(record_statuses(client.clone(), statuses.clone(), status_errors.clone(), synced_tx));
        tokio::time::timeout(Duration::from_secs(30), synced.wait_for(|s| *s))
            .await
            .context("the Canary watch did not sync in 30s")?
            .context("the Canary watch stopped")?;
        let operator = Operator::start(operator_binary, args, dir.join("petrel.log"))?;
        eprintln!("[{name}] environment ready in {:.1?} (work dir {})", started.elapsed(), dir.display());
        Ok(TestEnv {
            name: name.into(),
            dir,
            client,
            coords,
            operator,
            recorder,
            prometheus,
            simulator,
            fleet,
            kubectl: kubectl_bin,
            kubeconfig,
            started,
            last_status: Mutex::new(None),
            statuses,
            status_errors,
            status_watch,
        })
    }

    /// Runs the harness's kubectl against this cluster.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        kubectl(&self.kubectl, &self.kubeconfig, args)
    }

    pub fn canaries(&self) -> Api<Canary> {
        Api::namespaced(self.client.clone(), NAMESPACE)
    }

    pub fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), NAMESPACE)
    }

    pub fn services(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), NAMESPACE)
    }

    pub fn config_maps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), NAMESPACE)
    }

    /// Applies the Canary (server-side, as Git would).
    pub async fn apply_canary(&self, options: &CanaryOptions) -> Result<()> {
        self.apply_canary_manifest(options.manifest()).await
    }

    /// Applies a Canary manifest (server-side, as Git would), e.g. one built by
    /// [`CanaryOptions::manifest`] with a field added.
    pub async fn apply_canary_manifest(&self, manifest: Value) -> Result<()> {
        self.canaries().patch(APP, &ssa(), &Patch::Apply(manifest)).await.context("applying the Canary")?;
        Ok(())
    }

    /// Creates a Canary manifest as is, returning the API server's answer.
    pub async fn create_raw_canary(&self, manifest: Value) -> std::result::Result<Canary, kube::Error> {
        let canary: Canary = serde_json::from_value(manifest).map_err(kube::Error::SerdeError)?;
        self.canaries().create(&PostParams::default(), &canary).await
    }

    /// The Canary's status now (default when it has none yet).
    pub async fn canary_status(&self) -> Result<CanaryStatus> {
        let canary = self.canaries().get(APP).await.context("reading the Canary")?;
        let status = canary.status.unwrap_or_default();
        *self.last_status.lock().unwrap_or_else(|e| e.into_inner()) = Some(status.clone());
        Ok(status)
    }

    /// Waits until the status satisfies `condition`; returns that status.
    pub async fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        condition: impl Fn(&CanaryStatus) -> bool,
    ) -> Result<CanaryStatus> {
        let status = poll(Instant::now() + timeout, Duration::from_millis(100), async || {
            if let Ok(status) = self.canary_status().await
                && condition(&status)
            {
                return Ok(Some(status));
            }
            ensure!(self.operator.is_running(), "[{}] the operator exited while waiting for {what}", self.name);
            Ok(None)
        })
        .await?;
        status.with_context(|| format!("[{}] timed out after {timeout:?} waiting for {what}", self.name))
    }

    /// Waits for `phase`.
    pub async fn wait_phase(&self, phase: Phase, timeout: Duration) -> Result<CanaryStatus> {
        let t0 = Instant::now();
        let status = self.wait_status(&format!("phase {phase}"), timeout, |s| s.phase == phase).await?;
        eprintln!("[{}] {phase} after {:.1?} (t={:.1?})", self.name, t0.elapsed(), self.started.elapsed());
        Ok(status)
    }

    /// Sets the target's image (a new revision), as a Git change would.
    pub async fn set_image(&self, image: &str) -> Result<()> {
        self.deployments()
            .patch(APP, &ssa(), &Patch::Apply(podinfo_deployment(image)))
            .await
            .with_context(|| format!("setting the image to {image}"))?;
        Ok(())
    }

    /// Applies an `autoscaling/v2` HPA `podinfo` (2–4 replicas) on the target.
    pub async fn apply_hpa(&self) -> Result<()> {
        let hpa = json!({
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": APP, "namespace": NAMESPACE},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": APP},
                "minReplicas": 2,
                "maxReplicas": 4,
                "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}],
            }
        });
        Api::<HorizontalPodAutoscaler>::namespaced(self.client.clone(), NAMESPACE)
            .patch(APP, &ssa(), &Patch::Apply(hpa))
            .await
            .context("applying the HPA")?;
        Ok(())
    }

    /// An HPA of the namespace, if it exists.
    pub async fn hpa(&self, name: &str) -> Result<Option<HorizontalPodAutoscaler>> {
        Ok(Api::<HorizontalPodAutoscaler>::namespaced(self.client.clone(), NAMESPACE).get_opt(name).await?)
    }

    /// Changes the data of the target's ConfigMap.
    pub async fn set_config_message(&self, message: &str) -> Result<()> {
        self.config_maps().patch(CONFIG_MAP, &ssa(), &Patch::Apply(config_map(message))).await?;
        Ok(())
    }

    /// Image of the first container of a Deployment.
    pub async fn image_of(&self, deployment: &str) -> Result<String> {
        let d = self.deployments().get(deployment).await.with_context(|| format!("reading {deployment}"))?;
        first_container(&d)
            .and_then(|c| c.image.clone())
            .with_context(|| format!("{deployment} has no container image"))
    }

    /// `spec.replicas` of a Deployment.
    pub async fn replicas_of(&self, deployment: &str) -> Result<i32> {
        let d = self.deployments().get(deployment).await.with_context(|| format!("reading {deployment}"))?;
        Ok(d.spec.and_then(|s| s.replicas).unwrap_or(1))
    }

    /// Sets a Deployment's replicas through its scale subresource, as `kubectl scale` does.
    pub async fn scale(&self, deployment: &str, replicas: i32) -> Result<()> {
        let patch = json!({"spec": {"replicas": replicas}});
        self.deployments()
            .patch_scale(deployment, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("scaling {deployment} to {replicas}"))?;
        Ok(())
    }

    /// ControllerRevisions of the namespace (petrel keeps previous primary templates).
    pub async fn controller_revisions(&self) -> Result<Vec<ControllerRevision>> {
        Ok(Api::<ControllerRevision>::namespaced(self.client.clone(), NAMESPACE)
            .list(&ListParams::default())
            .await?
            .items)
    }

    /// Events about the Canary, oldest first, as `(reason, message)`.
    pub async fn canary_events(&self) -> Result<Vec<(String, String)>> {
        let events = Api::<Event>::namespaced(self.client.clone(), NAMESPACE)
            .list(&ListParams::default().fields(&format!("involvedObject.name={APP},involvedObject.kind=Canary")))
            .await?;
        let mut items = events.items;
        items.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0).or(e.last_timestamp.as_ref().map(|t| t.0)));
        Ok(items.into_iter().map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default())).collect())
    }

    /// How many times each Event about the Canary happened, as `(reason, message, count)`:
    /// kube's recorder folds a repeated Event into one object with `series.count`.
    pub async fn canary_event_counts(&self) -> Result<Vec<(String, String, i32)>> {
        let events = Api::<Event>::namespaced(self.client.clone(), NAMESPACE)
            .list(&ListParams::default().fields(&format!("involvedObject.name={APP},involvedObject.kind=Canary")))
            .await?;
        let mut items = events.items;
        items.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0).or(e.last_timestamp.as_ref().map(|t| t.0)));
        Ok(items
            .into_iter()
            .map(|e| {
                let count = e.series.as_ref().and_then(|s| s.count).or(e.count).unwrap_or(1).max(1);
                (e.reason.unwrap_or_default(), e.message.unwrap_or_default(), count)
            })
            .collect())
    }

    /// The requests petrel (user agent `petrel/…`) made to the API server between `from`
    /// and `to`, from its audit log (see [`TestEnv::start_audited`]).
    pub fn petrel_requests(
        &self,
        from: chrono::DateTime<chrono::Utc>,
        to: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<crate::fleet::AuditRecord>> {
        let records = self.fleet.cluster("member")?.audit_events()?;
        // Every other client of the cluster names itself (the harness, kubectl, the
        // control plane); a petrel built before it set its user agent sends none.
        Ok(crate::fleet::requests_between(&records, "", from, to)
            .into_iter()
            .filter(|r| r.user_agent.starts_with("petrel/") || r.user_agent.is_empty())
            .cloned()
            .collect())
    }

    /// Kills the API server (SIGKILL, reaped), as a crash would.
    pub fn kill_apiserver(&self) -> Result<()> {
        self.fleet.kill_component("member", crate::fleet::Component::KubeApiserver, libc::SIGKILL)
    }

    /// Starts the API server again and waits until it serves.
    pub async fn restart_apiserver(&self, timeout: Duration) -> Result<()> {
        self.fleet.restart_apiserver("member", timeout).await
    }

    /// Waits for an Event with `reason` whose message satisfies `message`.
    pub async fn wait_event(
        &self,
        reason: &str,
        timeout: Duration,
        message: impl Fn(&str) -> bool,
    ) -> Result<(String, String)> {
        eventually(&format!("an Event {reason}"), timeout, async || {
            self.canary_events().await.ok()?.into_iter().find(|(r, m)| r == reason && message(m))
        })
        .await
    }

    /// Every distinct status the Canary had, oldest first (from a watch).
    pub fn statuses(&self) -> Vec<CanaryStatus> {
        self.statuses.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The phases the Canary went through, consecutive duplicates removed.
    pub fn phases(&self) -> Vec<Phase> {
        let mut out: Vec<Phase> = Vec::new();
        for phase in self.statuses().iter().map(|s| s.phase) {
            if out.last() != Some(&phase) {
                out.push(phase);
            }
        }
        out
    }

    /// Every split recorded so far.
    pub fn weights(&self) -> Vec<(u32, u32)> {
        self.recorder.history().iter().map(|r| (r.primary(), r.canary())).collect()
    }

    /// Waits until the recorded history satisfies `condition`.
    pub async fn wait_weights(
        &self,
        what: &str,
        timeout: Duration,
        condition: impl Fn(&[RecordedSplit]) -> bool,
    ) -> Result<Vec<RecordedSplit>> {
        Ok(self.recorder.wait_until(what, timeout, condition).await?)
    }

    /// The safety invariant every scenario checks: every weight ever written summed to
    /// 100, and the route was never unreadable.
    pub fn assert_weights_sum_to_100(&self) {
        let bad = self.recorder.splits_not_summing_to(100);
        assert!(bad.is_empty(), "[{}] splits not summing to 100: {bad:?}", self.name);
        let errors = self.recorder.errors();
        assert!(errors.is_empty(), "[{}] route recorder errors: {errors:?}", self.name);
    }

    /// Diagnostics: the operator's log tail, the last status, the weights, the Events.
    pub fn dump(&self) -> String {
        let log = self.operator.log_text();
        let tail: Vec<&str> = log.lines().rev().take(150).collect();
        let status = self
            .statuses()
            .last()
            .cloned()
            .or_else(|| self.last_status.lock().unwrap_or_else(|e| e.into_inner()).clone());
        format!(
            "===== [{name}] petrel log ({path}, last 150 lines) =====\n{log}\n\
             ===== [{name}] last Canary status =====\n{status}\n\
             ===== [{name}] phases seen (watch errors: {watch_errors:?}) =====\n{phases:?}\n\
             ===== [{name}] recorded weights (primary, canary) =====\n{weights:?}\n\
             ===== [{name}] work dir {dir} (kept) =====",
            name = self.name,
            path = self.operator.log_path().display(),
            log = tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            status = status.map(|s| format!("{s:#?}")).unwrap_or_else(|| "none seen".into()),
            weights = self.weights(),
            phases = self.phases(),
            watch_errors = self.status_errors.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            dir = self.dir.display(),
        )
    }

    /// How long since the environment started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Deletes a Deployment (e.g. to test a missing target).
    pub async fn delete_deployment(&self, name: &str) -> Result<()> {
        self.deployments().delete(name, &DeleteParams::default()).await?;
        Ok(())
    }

    /// Deletes the Canary, as `kubectl delete canary` would (background propagation).
    pub async fn delete_canary(&self) -> Result<()> {
        self.canaries().delete(APP, &DeleteParams::background()).await.context("deleting the Canary")?;
        Ok(())
    }

    /// Waits until the Canary is gone from the API server (its finalizer done).
    pub async fn wait_canary_gone(&self, timeout: Duration) -> Result<()> {
        let t0 = Instant::now();
        eventually("the Canary to be gone", timeout, async || {
            matches!(self.canaries().get_opt(APP).await, Ok(None)).then_some(())
        })
        .await?;
        eprintln!("[{}] Canary gone {:.1?} after the delete call", self.name, t0.elapsed());
        Ok(())
    }

    /// Waits until, over a window of `TRAFFIC_WINDOW`, every request the simulator sent
    /// reached ready pods of a Deployment running `image`: requests were served, none was
    /// lost (no route, no pods) and none reached a Deployment running another image. This
    /// is what a client sees, read from the route objects and Services as they are.
    pub async fn wait_traffic_only_on(&self, image: &str, timeout: Duration) -> Result<TrafficWindow> {
        let key = self.coords.key();
        let mut last = String::new();
        // Each step watches a window: no pause between them.
        let window = poll(Instant::now() + timeout, Duration::ZERO, async || {
            let before = self.simulator.snapshot(&key)?;
            tokio::time::sleep(TRAFFIC_WINDOW).await;
            let after = self.simulator.snapshot(&key)?;
            let window = TrafficWindow::between(&before, &after);
            last = format!("{window:?}");
            Ok::<_, anyhow::Error>(window.only_on(image).then_some(window))
        })
        .await?;
        let window = window.with_context(|| {
            format!(
                "[{}] timed out after {timeout:?} waiting for all traffic on {image}; last window {last}",
                self.name
            )
        })?;
        eprintln!("[{}] traffic only on {image}: {window:?}", self.name);
        Ok(window)
    }
}

/// How long [`TestEnv::wait_traffic_only_on`] watches the simulator's counters.
const TRAFFIC_WINDOW: Duration = Duration::from_secs(2);

/// Requests the simulator sent over a window, by where they ended, and the images of the
/// two Deployments at the end of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrafficWindow {
    /// Requests served by `<target>-primary` and the image it runs (with its ready pods).
    pub primary: (u64, Option<String>, usize),
    /// Requests served by `<target>` and the image it runs (with its ready pods).
    pub canary: (u64, Option<String>, usize),
    /// Requests that reached no pod.
    pub unrouted: u64,
}

impl TrafficWindow {
    fn between(before: &AppSnapshot, after: &AppSnapshot) -> Self {
        let side = |side: Side, served: fn(&AppSnapshot) -> u64| {
            let workload = after.observation.as_ref().and_then(|o| o.workload(side));
            (
                served(after).saturating_sub(served(before)),
                workload.map(|w| w.image.clone()),
                workload.map_or(0, |w| w.pods.len()),
            )
        };
        TrafficWindow {
            primary: side(Side::Primary, |s| s.primary_requests.0),
            canary: side(Side::Canary, |s| s.canary_requests.0),
            unrouted: after.unrouted_requests.saturating_sub(before.unrouted_requests),
        }
    }

    /// Requests were served, all by ready pods running `image`.
    pub fn only_on(&self, image: &str) -> bool {
        let served_right = |(served, running, pods): &(u64, Option<String>, usize)| {
            *served == 0 || (running.as_deref() == Some(image) && *pods > 0)
        };
        self.unrouted == 0
            && self.primary.0 + self.canary.0 > 0
            && served_right(&self.primary)
            && served_right(&self.canary)
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.status_watch.abort();
        if std::thread::panicking() {
            eprintln!("{}", self.dump());
        } else if std::env::var_os("PETREL_E2E_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Keeps every distinct status of the scenario's Canary.
async fn record_statuses(
    client: Client,
    statuses: Arc<Mutex<Vec<CanaryStatus>>>,
    errors: Arc<Mutex<Vec<String>>>,
    synced: tokio::sync::watch::Sender<bool>,
) {
    let api: Api<Canary> = Api::namespaced(client, NAMESPACE);
    let events = watcher(api, watcher::Config::default().fields(&format!("metadata.name={APP}")))
        .backoff(petrel::controller::watches::RetryBackoff::default());
    futures::pin_mut!(events);
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(canary) | watcher::Event::InitApply(canary)) => {
                if let Some(status) = canary.status {
                    let mut statuses = statuses.lock().unwrap_or_else(|e| e.into_inner());
                    if statuses.last() != Some(&status) {
                        statuses.push(status);
                    }
                }
            }
            Ok(watcher::Event::InitDone) => {
                let _ = synced.send(true);
            }
            Ok(_) => {}
            Err(e) => errors.lock().unwrap_or_else(|e| e.into_inner()).push(e.to_string()),
        }
    }
}

/// The first container of a Deployment's pod template.
pub fn first_container(d: &Deployment) -> Option<&k8s_openapi::api::core::v1::Container> {
    d.spec.as_ref()?.template.spec.as_ref()?.containers.first()
}

/// The canary weights of a history, consecutive duplicates removed.
pub fn canary_weights(history: &[RecordedSplit]) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::new();
    for w in history.iter().map(RecordedSplit::canary) {
        if out.last() != Some(&w) {
            out.push(w);
        }
    }
    out
}

impl TestEnv {
    /// Where the operator serves `/metrics` (it binds `127.0.0.1:0`; the address is in
    /// its start-up log line). Waits for that line.
    pub async fn operator_metrics_addr(&self, timeout: Duration) -> Result<std::net::SocketAddr> {
        eventually("the operator to log its metrics address", timeout, async || {
            metrics_addr_in_log(&self.operator.log_text())
        })
        .await
    }

    /// Makes Prometheus scrape the operator's `/metrics` too (besides the simulator), so
    /// `petrel_*` series can be queried next to the app's request metrics. Returns once
    /// Prometheus has scraped the operator: a reload restarts the scrapes of the job and
    /// Prometheus hands the targets over only every 5 s, which leaves a gap in every
    /// series of the simulator too.
    pub async fn scrape_operator(&mut self, timeout: Duration) -> Result<std::net::SocketAddr> {
        let operator = self.operator_metrics_addr(timeout).await?;
        let targets = [self.simulator.addr(), operator];
        self.prometheus.set_scrape_targets(&targets).await.context("adding the operator to Prometheus' targets")?;
        let scraped = format!("count(up{{instance=~\"{}|{operator}\"}} == 1)", self.simulator.addr());
        self.prometheus
            .wait_for_query(&scraped, "show both targets scraped", timeout, |v| v == 2.0)
            .await
            .context("waiting for Prometheus to scrape the operator")?;
        Ok(operator)
    }
}

/// The address of the operator's "serving /metrics" log line (ANSI colours or not).
pub fn metrics_addr_in_log(log: &str) -> Option<std::net::SocketAddr> {
    log.lines()
        .rev()
        .filter(|line| line.contains("serving /metrics"))
        .filter_map(|line| {
            line.split(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':')).find_map(|token| token.parse().ok())
        })
        .next()
}

/// Samples the operator's `/readyz` every 200 ms in the background, from its start until
/// dropped, so a test can tell when it answered not ready and when ready again.
pub struct ReadyzProbe {
    samples: Arc<Mutex<Vec<(Instant, bool)>>>,
    task: JoinHandle<()>,
}

impl ReadyzProbe {
    pub fn start(addr: std::net::SocketAddr) -> ReadyzProbe {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let recorded = samples.clone();
        let task = tokio::spawn(async move {
            let http = reqwest::Client::builder().timeout(Duration::from_secs(1)).build().unwrap_or_default();
            let url = format!("http://{addr}/readyz");
            loop {
                let ready = http.get(&url).send().await.is_ok_and(|r| r.status().is_success());
                recorded.lock().unwrap_or_else(|e| e.into_inner()).push((Instant::now(), ready));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        ReadyzProbe { samples, task }
    }

    /// Every sample so far, oldest first.
    pub fn samples(&self) -> Vec<(Instant, bool)> {
        self.samples.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until a sample taken after `since` says `ready`; returns when it was taken.
    pub async fn wait_for(&self, ready: bool, since: Instant, timeout: Duration) -> Result<Instant> {
        let what = format!("/readyz to answer {}", if ready { "ready" } else { "not ready" });
        eventually(&what, timeout, async || {
            self.samples().into_iter().find(|(at, r)| *at >= since && *r == ready).map(|(at, _)| at)
        })
        .await
    }
}

impl Drop for ReadyzProbe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod metrics_addr_tests {
    use super::metrics_addr_in_log;

    #[test]
    fn finds_the_address_with_or_without_colours() {
        let plain = "2026-01-01T00:00:00Z  INFO petrel: serving /metrics, /livez and /readyz addr=127.0.0.1:43121";
        assert_eq!(metrics_addr_in_log(plain), Some("127.0.0.1:43121".parse().unwrap()));
        let coloured = "\x1b[32m INFO\x1b[0m \x1b[2mpetrel\x1b[0m: serving /metrics, /livez and /readyz \x1b[3maddr\x1b[0m\x1b[2m=\x1b[0m127.0.0.1:5001";
        assert_eq!(metrics_addr_in_log(coloured), Some("127.0.0.1:5001".parse().unwrap()));
        assert_eq!(metrics_addr_in_log("INFO petrel: starting\n"), None);
    }

    #[test]
    fn a_restart_logs_the_new_address_last() {
        let log =
            "serving /metrics addr=127.0.0.1:1000\n===== restart #1 =====\nserving /metrics addr=127.0.0.1:2000\n";
        assert_eq!(metrics_addr_in_log(log), Some("127.0.0.1:2000".parse().unwrap()));
    }
}
