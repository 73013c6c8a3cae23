//! The provider matrix: every traffic provider through the Canary scenarios (a healthy
//! promotion with exact weights, a rollback on errors, A/B where the provider routes by
//! header, blue/green), all in ONE shared environment.
//!
//! Starting a control plane costs 15-20 s, so unlike [`crate::scenario::TestEnv`] (one
//! control plane per scenario) a [`SharedEnv`] starts one control plane with every
//! provider's CRDs, one Prometheus, one traffic simulator to which each scenario adds its
//! app, one stand-in for Knative's controller and ONE `petrel` watching all namespaces.
//! Each (provider, scenario) runs in its own namespace with its own Canary, which names
//! its own `provider` and `metricsServer`; [`run_matrix`] runs a bounded number at once.
//!
//! Every scenario records each split its route object ever had (a watch) and asserts
//! the weights after every step, and that every split summed to 100.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Namespace};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use petrel::api::Canary;
use petrel::api::canary::{CanaryStatus, Phase};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::fleet::{Fleet, FleetOptions};
use crate::knative::FakeKnative;
use crate::prometheus::Prometheus;
use crate::scenario::{Operator, canary_weights, eventually, kubectl, petrel_binary, workspace_root};
use crate::simulator::{
    App, AppCoords, Provider, RecordedSplit, RouteRecorder, Simulator, SimulatorConfig, TrafficProfile,
    VersionBehaviour,
};
use crate::wait::poll;

/// Name of every scenario's Canary, target and Service.
pub const APP: &str = "podinfo";
/// The image the app starts on, the healthy release, and a release failing 90% of its
/// requests.
pub const IMAGE_V0: &str = "ghcr.io/stefanprodan/podinfo:6.0.0";
pub const IMAGE_V1: &str = "ghcr.io/stefanprodan/podinfo:6.0.1";
pub const IMAGE_BAD: &str = "ghcr.io/stefanprodan/podinfo:6.0.1-broken";
/// The A/B header.
pub const AB_HEADER: (&str, &str) = ("x-canary", "insider");
/// Canary weights of the healthy and rollback scenarios: steps of 30 up to 60.
pub const STEP: u32 = 30;
pub const MAX: u32 = 60;
const MANAGER: &str = "e2e-test";
/// How long one scenario may take, start to end.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(150);

/// The scenarios of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scenario {
    Healthy,
    Rollback,
    AbTesting,
    BlueGreen,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Healthy => "healthy",
            Scenario::Rollback => "rollback",
            Scenario::AbTesting => "ab",
            Scenario::BlueGreen => "bluegreen",
        }
    }
}

/// Whether petrel routes this provider by header (A/B testing).
pub fn routes_by_header(provider: Provider) -> bool {
    matches!(
        provider,
        Provider::Istio
            | Provider::Nginx
            | Provider::Contour
            | Provider::Gloo
            | Provider::Kuma
            | Provider::LinkerdGatewayApi
            | Provider::GatewayApi
    )
}

/// The providers of the matrix (gatewayapi and kubernetes run in `e2e/tests/scenarios.rs`).
pub const PROVIDERS: [Provider; 11] = [
    Provider::Istio,
    Provider::Linkerd,
    Provider::LinkerdGatewayApi,
    Provider::Nginx,
    Provider::Contour,
    Provider::Traefik,
    Provider::Apisix,
    Provider::Gloo,
    Provider::Skipper,
    Provider::Kuma,
    Provider::Knative,
];

/// Every (provider, scenario) the provider supports.
pub fn matrix() -> Vec<(Provider, Scenario)> {
    let mut cases = Vec::new();
    for provider in PROVIDERS {
        for scenario in [Scenario::Healthy, Scenario::Rollback, Scenario::AbTesting, Scenario::BlueGreen] {
            if scenario != Scenario::AbTesting || routes_by_header(provider) {
                cases.push((provider, scenario));
            }
        }
    }
    cases
}

fn ssa() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

/// One control plane, one Prometheus, one simulator, one petrel for many scenarios.
pub struct SharedEnv {
    pub dir: PathBuf,
    pub client: Client,
    pub simulator: Simulator,
    pub prometheus: Prometheus,
    pub operator: Operator,
    pub fleet: Fleet,
    _knative: FakeKnative,
    started: Instant,
}

impl SharedEnv {
    /// Starts the control plane with petrel's and every provider's CRDs, the simulator
    /// (no apps yet), Prometheus scraping it, Knative's stand-in and the operator.
    pub async fn start(name: &str) -> Result<SharedEnv> {
        let started = Instant::now();
        let dir = std::env::temp_dir().join(format!("petrel-e2e-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let bin_dir = tokio::task::spawn_blocking(crate::fleet::ensure_binaries).await??;
        let operator_binary = tokio::task::spawn_blocking(petrel_binary).await??;
        let mut opts = FleetOptions::new(dir.join("fleet"), ["member"]);
        opts.bin_dir = Some(bin_dir);
        opts.nodes_per_cluster = 2;
        let fleet = Fleet::start(opts).await.context("starting the control plane")?;
        let cluster = fleet.cluster("member")?;
        let client = cluster.client().await?;
        let kubeconfig = cluster.kubeconfig_path.clone();
        let kubectl_bin = fleet.binaries().path("kubectl");
        for crds in ["crds", "e2e/crds/third-party"].map(|c| workspace_root().join(c)) {
            let crds = crds.to_string_lossy().into_owned();
            kubectl(&kubectl_bin, &kubeconfig, &["apply", "--server-side", "--field-manager", MANAGER, "-f", &crds])?;
        }
        kubectl(&kubectl_bin, &kubeconfig, &["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"])?;

        let simulator = Simulator::start(
            // One tick a second for each of the few apps running at a time: the simulator's
            // reads stay a small load on the shared API server.
            SimulatorConfig { tick: Duration::from_millis(1000), ..SimulatorConfig::default() },
            Vec::new(),
        )
        .await?;
        simulator.set_version(IMAGE_BAD, VersionBehaviour::new(0.9, 20.0))?;
        let prometheus = Prometheus::start(&dir, &[simulator.addr()]).await?;
        let knative = FakeKnative::start(client.clone());
        let args = vec![
            "--kubeconfig".to_string(),
            kubeconfig.to_string_lossy().into_owned(),
            // Every Canary names its provider; the default is never used.
            "--provider".into(),
            "kubernetes".into(),
            "--metrics-server".into(),
            prometheus.url(),
            "--cluster-name".into(),
            name.into(),
            "--metrics-addr".into(),
            "127.0.0.1:0".into(),
        ];
        let operator = Operator::start(operator_binary, args, dir.join("petrel.log"))?;
        eprintln!("[{name}] shared environment ready in {:.1?} (work dir {})", started.elapsed(), dir.display());
        Ok(SharedEnv { dir, client, simulator, prometheus, operator, fleet, _knative: knative, started })
    }

    /// How long since the environment started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Runs kubectl against the shared control plane (as a person or another controller
    /// would), returning its stdout.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let cluster = self.fleet.cluster("member")?;
        kubectl(&self.fleet.binaries().path("kubectl"), &cluster.kubeconfig_path, args)
    }
}

/// The Knative Service resource.
fn knative_service() -> ApiResource {
    crate::knative::service_resource()
}

fn dynamic(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// The target Deployment.
fn deployment(namespace: &str, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": APP, "namespace": namespace, "labels": { "app": APP } },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": APP } },
            "template": {
                "metadata": { "labels": { "app": APP } },
                "spec": { "containers": [{ "name": "podinfo", "image": image, "ports": [{ "name": "http", "containerPort": 9898 }] }] },
            },
        },
    })
}

/// The target Knative Service.
fn knative_target(namespace: &str, image: &str) -> Value {
    json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": { "name": APP, "namespace": namespace },
        "spec": { "template": { "spec": { "containers": [{
            "name": "podinfo", "image": image, "ports": [{ "containerPort": 9898 }],
        }] } } },
    })
}

/// The user's Ingress (NGINX, Skipper) to the apex Service.
fn ingress(namespace: &str, class: &str) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": { "name": APP, "namespace": namespace, "annotations": { "kubernetes.io/ingress.class": class } },
        "spec": { "rules": [{ "host": "podinfo.example.com", "http": { "paths": [{
            "path": "/", "pathType": "Prefix",
            "backend": { "service": { "name": APP, "port": { "number": 9898 } } },
        }] } }] },
    })
}

/// The user's ApisixRoute (APISIX's tutorial's shape) to the apex Service.
fn apisix_route(namespace: &str) -> Value {
    json!({
        "apiVersion": "apisix.apache.org/v2", "kind": "ApisixRoute",
        "metadata": { "name": APP, "namespace": namespace },
        "spec": { "http": [{
            "name": "main",
            "match": { "hosts": ["podinfo.example.com"], "paths": ["/*"] },
            "backends": [{ "serviceName": APP, "servicePort": 9898 }],
        }] },
    })
}

/// A Gloo Upstream whose settings the generated Upstreams copy (`upstreamRef`).
fn gloo_upstream(namespace: &str) -> Value {
    json!({
        "apiVersion": "gloo.solo.io/v1", "kind": "Upstream",
        "metadata": { "name": "podinfo-settings", "namespace": namespace },
        "spec": { "connectionConfig": { "maxRequestsPerConnection": 100 }, "kube": { "serviceName": APP, "serviceNamespace": namespace, "servicePort": 9898 } },
    })
}

/// The Canary of one case.
pub fn canary_manifest(namespace: &str, provider: Provider, scenario: Scenario, metrics_server: &str) -> Value {
    let mut analysis = json!({ "interval": "2s", "threshold": 3 });
    match scenario {
        Scenario::Healthy | Scenario::Rollback => {
            analysis["stepWeight"] = json!(STEP);
            analysis["maxWeight"] = json!(MAX);
        }
        Scenario::AbTesting => {
            analysis["iterations"] = json!(2);
            analysis["match"] = json!([{ "headers": { AB_HEADER.0: { "exact": AB_HEADER.1 } } }]);
        }
        Scenario::BlueGreen => analysis["iterations"] = json!(2),
    }
    // Blue/green gives the canary no user traffic during its iterations: nothing to judge.
    if scenario != Scenario::BlueGreen {
        analysis["metrics"] =
            json!([{ "name": "request-success-rate", "interval": "6s", "thresholdRange": { "min": 99 } }]);
    }
    let mut service = json!({ "port": 9898, "targetPort": 9898 });
    let mut spec = json!({
        "provider": provider.as_str(),
        "metricsServer": metrics_server,
        "targetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": APP },
        "progressDeadlineSeconds": 60,
        "analysis": analysis,
    });
    match provider {
        Provider::Istio => {
            service["gateways"] = json!(["public-gateway"]);
            service["hosts"] = json!(["podinfo.example.com"]);
        }
        Provider::LinkerdGatewayApi => {
            service["gatewayRefs"] =
                json!([{ "name": APP, "namespace": namespace, "group": "core", "kind": "Service", "port": 9898 }]);
        }
        Provider::Nginx | Provider::Skipper => {
            spec["ingressRef"] = json!({ "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "name": APP });
        }
        Provider::Apisix => {
            spec["routeRef"] = json!({ "apiVersion": "apisix.apache.org/v2", "kind": "ApisixRoute", "name": APP });
        }
        Provider::Gloo => {
            spec["upstreamRef"] =
                json!({ "apiVersion": "gloo.solo.io/v1", "kind": "Upstream", "name": "podinfo-settings" });
        }
        Provider::Knative => {
            spec["targetRef"] = json!({ "apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": APP });
        }
        _ => {}
    }
    spec["service"] = service;
    json!({
        "apiVersion": "petrel.dev/v1alpha1", "kind": "Canary",
        "metadata": { "name": APP, "namespace": namespace },
        "spec": spec,
    })
}

/// One (provider, scenario) in its own namespace of a [`SharedEnv`].
pub struct Case<'a> {
    pub env: &'a SharedEnv,
    pub provider: Provider,
    pub scenario: Scenario,
    pub namespace: String,
    pub coords: AppCoords,
    pub recorder: RouteRecorder,
    statuses: Arc<Mutex<Vec<CanaryStatus>>>,
    status_watch: JoinHandle<()>,
}

impl Drop for Case<'_> {
    fn drop(&mut self) {
        self.status_watch.abort();
        let _ = self.env.simulator.remove_app(&self.coords.key());
    }
}

impl<'a> Case<'a> {
    /// Creates the namespace, the app (target and the provider's own objects), the
    /// simulator's app and the route recorder; the Canary is not applied yet.
    pub async fn start(env: &'a SharedEnv, provider: Provider, scenario: Scenario) -> Result<Case<'a>> {
        let namespace = format!("{}-{}", provider.label(), scenario.name());
        let client = env.client.clone();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &serde_json::from_value(json!({ "metadata": { "name": namespace } }))?)
            .await
            .with_context(|| format!("creating namespace {namespace}"))?;
        let apply_dynamic = async |resource: ApiResource, name: &str, object: Value| -> Result<()> {
            Api::<DynamicObject>::namespaced_with(client.clone(), &namespace, &resource)
                .patch(name, &ssa(), &Patch::Apply(object))
                .await
                .with_context(|| format!("applying {} {namespace}/{name}", resource.kind))?;
            Ok(())
        };
        if provider == Provider::Knative {
            apply_dynamic(knative_service(), APP, knative_target(&namespace, IMAGE_V0)).await?;
        } else {
            Api::<Deployment>::namespaced(client.clone(), &namespace)
                .patch(APP, &ssa(), &Patch::Apply(deployment(&namespace, IMAGE_V0)))
                .await
                .context("applying the target Deployment")?;
        }
        let ingresses = dynamic("networking.k8s.io", "v1", "Ingress", "ingresses");
        match provider {
            Provider::Nginx => apply_dynamic(ingresses, APP, ingress(&namespace, "nginx")).await?,
            Provider::Skipper => apply_dynamic(ingresses, APP, ingress(&namespace, "skipper")).await?,
            Provider::Apisix => {
                apply_dynamic(
                    dynamic("apisix.apache.org", "v2", "ApisixRoute", "apisixroutes"),
                    APP,
                    apisix_route(&namespace),
                )
                .await?
            }
            Provider::Gloo => {
                apply_dynamic(
                    dynamic("gloo.solo.io", "v1", "Upstream", "upstreams"),
                    "podinfo-settings",
                    gloo_upstream(&namespace),
                )
                .await?
            }
            _ => {}
        }

        let mut coords = AppCoords::new(&namespace, APP, provider);
        if matches!(provider, Provider::Nginx | Provider::Skipper) {
            coords.ingress = Some(APP.into());
        }
        if provider == Provider::Apisix {
            coords.route = Some(APP.into());
        }
        let recorder = eventually("the route kind to be served", Duration::from_secs(30), async || {
            RouteRecorder::start(client.clone(), &coords).await.ok()
        })
        .await?;
        let statuses = Arc::new(Mutex::new(Vec::new()));
        let status_watch = tokio::spawn(record_statuses(client.clone(), namespace.clone(), statuses.clone()));
        Ok(Case { env, provider, scenario, namespace, coords, recorder, statuses, status_watch })
    }

    fn canaries(&self) -> Api<Canary> {
        Api::namespaced(self.env.client.clone(), &self.namespace)
    }

    fn tag(&self) -> String {
        format!("{}/{}", self.provider.label(), self.scenario.name())
    }

    pub async fn apply_canary(&self) -> Result<()> {
        let manifest = canary_manifest(&self.namespace, self.provider, self.scenario, &self.env.prometheus.url());
        self.canaries().patch(APP, &ssa(), &Patch::Apply(manifest)).await.context("applying the Canary")?;
        Ok(())
    }

    /// Gives the target a new image (a new revision, as a Git change would).
    pub async fn set_image(&self, image: &str) -> Result<()> {
        let client = self.env.client.clone();
        if self.provider == Provider::Knative {
            Api::<DynamicObject>::namespaced_with(client, &self.namespace, &knative_service())
                .patch(APP, &ssa(), &Patch::Apply(knative_target(&self.namespace, image)))
                .await?;
        } else {
            Api::<Deployment>::namespaced(client, &self.namespace)
                .patch(APP, &ssa(), &Patch::Apply(deployment(&self.namespace, image)))
                .await?;
        }
        Ok(())
    }

    pub async fn status(&self) -> Result<CanaryStatus> {
        Ok(self.canaries().get(APP).await?.status.unwrap_or_default())
    }

    pub async fn wait_phase(&self, phase: Phase, timeout: Duration) -> Result<CanaryStatus> {
        let mut status = CanaryStatus::default();
        let reached = poll(Instant::now() + timeout, Duration::from_millis(200), async || {
            status = self.status().await.unwrap_or_default();
            if status.phase == phase {
                return Ok(Some(status.clone()));
            }
            ensure!(self.env.operator.is_running(), "the operator exited");
            Ok(None)
        })
        .await?;
        reached.with_context(|| {
            let stalled = status.conditions.iter().find(|c| c.type_ == "Stalled" && c.is_true());
            format!("[{}] no phase {phase} after {timeout:?}: phase {}, stalled {stalled:?}", self.tag(), status.phase)
        })
    }

    /// Waits until the recorded splits satisfy `condition`.
    pub async fn wait_weights(
        &self,
        what: &str,
        condition: impl Fn(&[RecordedSplit]) -> bool,
    ) -> Result<Vec<RecordedSplit>> {
        Ok(self.recorder.wait_until(what, Duration::from_secs(30), condition).await?)
    }

    /// Events about the Canary, as `(reason, message)`.
    pub async fn events(&self) -> Result<Vec<(String, String)>> {
        let events = Api::<Event>::namespaced(self.env.client.clone(), &self.namespace)
            .list(&ListParams::default().fields(&format!("involvedObject.name={APP},involvedObject.kind=Canary")))
            .await?;
        Ok(events.items.into_iter().map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default())).collect())
    }

    /// The invariant of every scenario: every split written summed to 100 and the route
    /// object was always readable.
    pub fn check_weights_sum_to_100(&self) -> Result<()> {
        let bad = self.recorder.splits_not_summing_to(100);
        ensure!(bad.is_empty(), "[{}] splits not summing to 100: {bad:?}", self.tag());
        let errors = self.recorder.errors();
        ensure!(errors.is_empty(), "[{}] route recorder errors: {errors:?}", self.tag());
        Ok(())
    }

    /// The phases the Canary went through, consecutive duplicates removed.
    pub fn phases(&self) -> Vec<Phase> {
        let mut out: Vec<Phase> = Vec::new();
        for status in self.statuses.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if out.last() != Some(&status.phase) {
                out.push(status.phase);
            }
        }
        out
    }

    /// What to print when the case fails.
    pub fn dump(&self) -> String {
        let weights: Vec<(u32, u32)> = self.recorder.history().iter().map(|r| (r.primary(), r.canary())).collect();
        format!("phases {:?}\nweights (primary, canary) {weights:?}", self.phases())
    }

    /// Starts the app's traffic. Only once the Canary is initialised: traffic to the
    /// target before its primary exists would leave success series of the canary's side
    /// in Prometheus, and a new revision's first check would then see its successes a
    /// scrape before its errors.
    fn start_traffic(&self) -> Result<()> {
        let profile = TrafficProfile {
            requests_per_second: 60.0,
            header_fraction: if self.scenario == Scenario::AbTesting { 0.5 } else { 0.0 },
            match_headers: BTreeMap::from([(AB_HEADER.0.to_string(), AB_HEADER.1.to_string())]),
        };
        let app = App::from_cluster(self.env.client.clone(), self.coords.clone()).profile(profile);
        Ok(self.env.simulator.add_app(app)?)
    }

    /// Runs the scenario to its end, asserting after every step.
    pub async fn run(&self) -> Result<()> {
        let setup = Duration::from_secs(60);
        let release = Duration::from_secs(90);
        self.apply_canary().await?;
        self.wait_phase(Phase::Initialized, setup).await?;
        self.start_traffic()?;
        self.wait_weights("the route at 100/0", |h| h.last().is_some_and(|r| r.canary() == 0 && r.primary() == 100))
            .await?;
        let image = if self.scenario == Scenario::Rollback { IMAGE_BAD } else { IMAGE_V1 };
        self.set_image(image).await?;
        match self.scenario {
            Scenario::Healthy => {
                self.wait_phase(Phase::Succeeded, release).await?;
                let history =
                    self.wait_weights("the route back at 100/0", |h| canary_weights(h).last() == Some(&0)).await?;
                let steps = canary_weights(&history);
                ensure!(
                    steps == vec![0, STEP, MAX, 0],
                    "[{}] canary weights {steps:?}, want [0, {STEP}, {MAX}, 0]",
                    self.tag()
                );
                self.check_only_no_data_failures().await?;
            }
            Scenario::Rollback => {
                let failed = self.wait_phase(Phase::Failed, release).await?;
                ensure!(
                    failed.canary_weight == 0,
                    "[{}] weight {} after the rollback",
                    self.tag(),
                    failed.canary_weight
                );
                self.wait_weights("the route back at 100/0", |h| h.last().is_some_and(|r| r.canary() == 0)).await?;
                let max = self.recorder.max_canary_weight();
                // APISIX counts a route's requests to both backends together (Flagger's query):
                // at the first step the canary's errors are diluted by the primary's requests of
                // the window, so the failure may show one step later. Never at promotion.
                let allowed = if self.provider == Provider::Apisix { MAX } else { STEP };
                ensure!(max <= allowed, "[{}] the failing revision got {max}%, more than {allowed}%", self.tag());
                ensure!(!self.phases().contains(&Phase::Promoting), "[{}] phases {:?}", self.tag(), self.phases());
                let events = self.events().await?;
                ensure!(
                    events.iter().any(|(r, m)| r == "CheckFailed"
                        && m.contains("request-success-rate")
                        && !m.contains("no value")),
                    "[{}] no CheckFailed Event on the success rate's value: {events:?}",
                    self.tag()
                );
            }
            Scenario::AbTesting => {
                self.wait_phase(Phase::Succeeded, release).await?;
                let history = self
                    .wait_weights("the route back on the primary", |h| {
                        h.last().and_then(|r| r.split.as_ref()).is_some_and(|s| s.all_weights().all(|w| w.canary == 0))
                    })
                    .await?;
                let splits: Vec<_> = history.iter().filter_map(|r| r.split.as_ref()).collect();
                let ab = splits.iter().find(|s| s.header_rules.iter().any(|rule| rule.weights.canary == 100));
                ensure!(
                    ab.is_some(),
                    "[{}] no header rule sent matched requests to the canary: {splits:?}",
                    self.tag()
                );
                ensure!(
                    splits.iter().all(|s| s.default.canary == 0),
                    "[{}] unmatched requests reached the canary: {splits:?}",
                    self.tag()
                );
                let served = self.env.simulator.snapshot(&self.coords.key())?.canary_requests;
                ensure!(served.0 > 0, "[{}] the canary served no matched request", self.tag());
                self.check_only_no_data_failures().await?;
            }
            Scenario::BlueGreen => {
                self.wait_phase(Phase::Succeeded, release).await?;
                let history = self
                    .wait_weights("all on the canary, then back on the primary", |h| {
                        let w = canary_weights(h);
                        w.contains(&100) && w.last() == Some(&0)
                    })
                    .await?;
                let steps = canary_weights(&history);
                ensure!(steps == vec![0, 100, 0], "[{}] canary weights {steps:?}, want [0, 100, 0]", self.tag());
            }
        }
        self.check_weights_sum_to_100()?;
        if self.scenario != Scenario::Rollback {
            self.check_promoted().await?;
        }
        Ok(())
    }

    /// A healthy version fails no check on its values (a tick with no value yet, before
    /// Prometheus has two samples of a new series, below the threshold, is tolerated).
    async fn check_only_no_data_failures(&self) -> Result<()> {
        let events = self.events().await?;
        let failures: Vec<_> = events.iter().filter(|(r, m)| r == "CheckFailed" && !m.contains("no value")).collect();
        ensure!(failures.is_empty(), "[{}] a healthy version failed checks: {failures:?}", self.tag());
        Ok(())
    }

    /// The new version serves as the primary.
    async fn check_promoted(&self) -> Result<()> {
        let client = self.env.client.clone();
        if self.provider == Provider::Knative {
            let service =
                Api::<DynamicObject>::namespaced_with(client, &self.namespace, &knative_service()).get(APP).await?;
            let json = serde_json::to_value(&service)?;
            let latest = json.pointer("/status/latestCreatedRevisionName").and_then(Value::as_str);
            let primary = service.annotations().get(petrel::routers::knative::PRIMARY_REVISION_ANNOTATION);
            ensure!(
                latest.is_some() && primary.map(String::as_str) == latest,
                "[{}] the primary revision {primary:?} is not the new one {latest:?}",
                self.tag()
            );
            return Ok(());
        }
        let primary = Api::<Deployment>::namespaced(client, &self.namespace).get(&format!("{APP}-primary")).await?;
        let image = crate::scenario::first_container(&primary).and_then(|c| c.image.clone());
        ensure!(image.as_deref() == Some(IMAGE_V1), "[{}] the primary runs {image:?}", self.tag());
        Ok(())
    }
}

/// Keeps every distinct status of a namespace's Canary.
async fn record_statuses(client: Client, namespace: String, statuses: Arc<Mutex<Vec<CanaryStatus>>>) {
    let api: Api<Canary> = Api::namespaced(client, &namespace);
    let events = watcher(api, watcher::Config::default()).default_backoff().applied_objects();
    futures::pin_mut!(events);
    while let Some(event) = events.next().await {
        if let Ok(canary) = event
            && let Some(status) = canary.status
        {
            let mut statuses = statuses.lock().unwrap_or_else(|e| e.into_inner());
            if statuses.last() != Some(&status) {
                statuses.push(status);
            }
        }
    }
}

/// The outcome of one case.
#[derive(Debug)]
pub struct CaseResult {
    pub provider: Provider,
    pub scenario: Scenario,
    pub elapsed: Duration,
    pub outcome: Result<(), String>,
}

/// Runs `cases` in `env`, at most `parallel` at once; returns each outcome.
pub async fn run_matrix(env: &SharedEnv, cases: &[(Provider, Scenario)], parallel: usize) -> Vec<CaseResult> {
    futures::stream::iter(cases.iter().copied())
        .map(|(provider, scenario)| async move {
            let t0 = Instant::now();
            let outcome = match Case::start(env, provider, scenario).await {
                Err(e) => Err(format!("setup: {e:#}")),
                Ok(case) => match tokio::time::timeout(SCENARIO_TIMEOUT, case.run()).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(format!("{e:#}\n{}", case.dump())),
                    Err(_) => Err(format!("timed out after {SCENARIO_TIMEOUT:?}\n{}", case.dump())),
                },
            };
            let elapsed = t0.elapsed();
            eprintln!(
                "[{provider}/{}] {} in {elapsed:.1?} (t={:.1?})",
                scenario.name(),
                if outcome.is_ok() { "passed" } else { "FAILED" },
                env.elapsed()
            );
            CaseResult { provider, scenario, elapsed, outcome }
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await
}
