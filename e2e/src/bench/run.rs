//! The I/O shell of `canary-bench`: one local control plane, the operators as child
//! processes, one round per (variant, N, operator).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use chrono::Utc;
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::task::JoinHandle;

use super::audit::{AuditTail, Reaction, first_after_patches, made_by, most_in_flight};
use super::report::RoundFigures;
use super::stats::{
    cpu_time, histogram_buckets, histogram_count, histogram_quantile, load_average, quantile, status_bytes,
};
use super::workload::{self, Analysis, OperatorKind, Variant};
use crate::fleet::{Cluster, Component, Fleet, FleetOptions};
use crate::prometheus::Prometheus;
use crate::simulator::{App, AppCoords, NamespaceCache, Provider, Simulator, SimulatorConfig, TrafficProfile};
use crate::wait::poll;

/// The `User-Agent` of the benchmark's own requests, so the audit log tells them apart.
pub const BENCH_USER_AGENT: &str = "canary-bench";
/// Field manager of what the benchmark applies (the "Git" side).
const MANAGER: &str = "canary-bench";
/// Name of the one cluster.
const CLUSTER: &str = "bench";

/// One operator to compare.
#[derive(Debug, Clone)]
pub struct OperatorSpec {
    /// Column name in the report, e.g. `petrel` or `Flagger v1.41.0`.
    pub label: String,
    pub kind: OperatorKind,
    pub binary: PathBuf,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub dir: PathBuf,
    pub sizes: Vec<usize>,
    pub variants: Vec<Variant>,
    /// In the order of the first round; every other (variant, N) runs them in reverse.
    pub operators: Vec<OperatorSpec>,
    pub analysis: Analysis,
    /// Replicas of every app's Deployment.
    pub replicas: u32,
    /// Quiet time after the initialization before the idle window.
    pub settle: Duration,
    /// Length of the idle window.
    pub idle: Duration,
    pub init_timeout: Duration,
    pub release_timeout: Duration,
    /// Concurrent requests when the benchmark creates or patches objects.
    pub concurrency: usize,
    pub nodes: usize,
    pub pods_per_node: u32,
    /// Secrets in the cluster before the operator starts (none of them used): half in
    /// each round's namespace, the rest in [`workload::SECRETS_NAMESPACE`].
    pub secrets: usize,
    /// Bytes of data of each of them.
    pub secret_bytes: usize,
    /// Deployments of no replicas that no Canary names, in
    /// [`workload::OTHER_DEPLOYMENTS_NAMESPACE`]: the rest of a cluster's apps.
    pub other_deployments: usize,
}

/// The control plane and what every round shares.
pub struct BenchEnv {
    pub fleet: Fleet,
    pub client: Client,
    pub kubeconfig: PathBuf,
    pub dir: PathBuf,
    audit: AuditTail,
    rounds: usize,
}

fn ssa() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

/// A client whose requests carry [`BENCH_USER_AGENT`].
async fn bench_client(cluster: &Cluster) -> Result<Client> {
    let mut config = cluster.config().await?;
    config.headers.retain(|(name, _)| name != http::header::USER_AGENT);
    config.headers.push((http::header::USER_AGENT, http::HeaderValue::from_static(BENCH_USER_AGENT)));
    Client::try_from(config).context("building the benchmark's client")
}

fn kubectl(fleet: &Fleet, kubeconfig: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new(fleet.binaries().path("kubectl"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running kubectl {args:?}"))?;
    ensure!(out.status.success(), "kubectl {args:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    Ok(())
}

impl BenchEnv {
    /// Starts the control plane (with an audit log) and installs petrel's, Flagger's and
    /// the Gateway API CRDs.
    pub async fn start(options: &BenchOptions, flagger_crds: Option<&Path>) -> Result<BenchEnv> {
        let dir = std::path::absolute(&options.dir)?;
        let _ = std::fs::remove_dir_all(dir.join("fleet"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut fleet_options = FleetOptions::new(dir.join("fleet"), [CLUSTER]);
        fleet_options.nodes_per_cluster = options.nodes;
        fleet_options.pods_per_node = options.pods_per_node;
        fleet_options.audit_log = true;
        let fleet = Fleet::start(fleet_options).await.context("starting the control plane")?;
        let cluster = fleet.cluster(CLUSTER)?.clone();
        let client = bench_client(&cluster).await?;
        let kubeconfig = cluster.kubeconfig_path.clone();
        let root = crate::scenario::workspace_root();
        let mut crds =
            vec![root.join("crds"), root.join("e2e/crds/third-party/gateway.networking.k8s.io_httproutes.yaml")];
        crds.extend(flagger_crds.map(Path::to_path_buf));
        for path in crds {
            let path = path.to_string_lossy().into_owned();
            kubectl(&fleet, &kubeconfig, &["apply", "--server-side", "--field-manager", MANAGER, "-f", &path])?;
        }
        kubectl(&fleet, &kubeconfig, &["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"])?;
        let (_, elsewhere) = workload::secret_split(options.secrets);
        if elsewhere > 0 {
            create_namespace(&client, workload::SECRETS_NAMESPACE).await?;
            apply_secrets(&client, workload::SECRETS_NAMESPACE, elsewhere, options).await?;
        }
        if options.other_deployments > 0 {
            create_namespace(&client, workload::OTHER_DEPLOYMENTS_NAMESPACE).await?;
            apply_other_deployments(&client, options).await?;
        }
        let audit = AuditTail::new(cluster.audit_log_path());
        Ok(BenchEnv { fleet, client, kubeconfig, dir, audit, rounds: 0 })
    }

    fn apiserver_pid(&self) -> Result<u32> {
        self.fleet.cluster(CLUSTER)?.pid(Component::KubeApiserver).context("the API server is not running")
    }

    /// Runs one operator over one workload and measures it.
    pub async fn round(
        &mut self,
        options: &BenchOptions,
        operator: &OperatorSpec,
        variant: Variant,
        n: usize,
    ) -> Result<RoundFigures> {
        self.rounds += 1;
        let namespace = format!("bench-{}", self.rounds);
        let log_dir =
            self.dir.join("rounds").join(format!("{}-{}-{n}-{}", self.rounds, variant.name(), slug(&operator.label)));
        std::fs::create_dir_all(&log_dir)?;
        let load_start = load_average().map_or(0.0, |l| l[0]);
        eprintln!(
            "canary-bench: round {} — {} · {} · N={n} in namespace {namespace} (load {load_start:.1})",
            self.rounds,
            operator.label,
            variant.name()
        );
        let mut figures = RoundFigures { operator: operator.label.clone(), n, ..RoundFigures::default() };
        let apps: Vec<String> = (0..n).map(workload::app_name).collect();
        let bad = match variant {
            Variant::BadInput => workload::bad_targets(&namespace, workload::IMAGE_V0),
            _ => Vec::new(),
        };

        // The apps, as Git would apply them, ready before the operator starts.
        create_namespace(&self.client, &namespace).await?;
        apply_secrets(&self.client, &namespace, workload::secret_split(options.secrets).0, options).await?;
        let config_maps = Api::<ConfigMap>::namespaced(self.client.clone(), &namespace);
        let deployments = Api::<Deployment>::namespaced(self.client.clone(), &namespace);
        let all_config_maps: Vec<serde_json::Value> = bad.iter().flat_map(|b| b.config_maps.clone()).collect();
        for_each_concurrently(options.concurrency, all_config_maps, |cm| {
            let api = config_maps.clone();
            async move {
                let name = cm["metadata"]["name"].as_str().unwrap_or_default().to_string();
                api.patch(&name, &ssa(), &Patch::Apply(cm)).await.with_context(|| format!("applying ConfigMap {name}"))
            }
        })
        .await?;
        let mut manifests: Vec<(String, serde_json::Value)> = apps
            .iter()
            .map(|a| (a.clone(), workload::deployment(&namespace, a, workload::IMAGE_V0, options.replicas)))
            .collect();
        manifests.extend(bad.iter().map(|b| (b.name.clone(), b.deployment.clone())));
        for_each_concurrently(options.concurrency, manifests.clone(), |(name, manifest)| {
            let api = deployments.clone();
            async move {
                api.patch(&name, &ssa(), &Patch::Apply(manifest))
                    .await
                    .with_context(|| format!("applying Deployment {name}"))
            }
        })
        .await?;
        wait_deployments_available(&deployments, manifests.len(), options.init_timeout).await?;

        // Traffic for the gatewayapi variant: the simulator reads the routes from watch
        // caches, Prometheus scrapes it, both operators query that Prometheus.
        let traffic = match variant {
            Variant::GatewayApi => Some(Traffic::start(&self.client, &namespace, &apps, &log_dir).await?),
            _ => None,
        };
        let metrics_server = traffic.as_ref().map_or_else(|| "http://127.0.0.1:9".to_string(), |t| t.prometheus.url());

        let mut process = OperatorProcess::start(operator, variant, &self.kubeconfig, &metrics_server, &log_dir)?;
        let phases = PhaseRecorder::start(self.client.clone(), operator.kind, &namespace);
        process.wait_ready(Duration::from_secs(120)).await?;
        phases.wait_synced(Duration::from_secs(60)).await?;
        let pid = process.pid();
        self.audit.skip_to_end()?;

        // Initialization: every Canary at once.
        let canaries =
            Api::<DynamicObject>::namespaced_with(self.client.clone(), &namespace, &operator.kind.canary_resource());
        let mut canary_names = apps.clone();
        canary_names.extend(bad.iter().map(|b| b.name.clone()));
        let init_from = Utc::now();
        let init_started = Instant::now();
        for_each_concurrently(options.concurrency, canary_names.clone(), |name| {
            let api = canaries.clone();
            let manifest = workload::canary(operator.kind, variant, &namespace, &name, &options.analysis);
            async move {
                api.patch(&name, &ssa(), &Patch::Apply(manifest))
                    .await
                    .with_context(|| format!("applying Canary {name}"))
            }
        })
        .await?;
        let initialized = phases
            .wait_all_by_name(&apps, options.init_timeout, &mut process, |_, history| {
                history.iter().any(|(_, phase)| phase == "Initialized")
            })
            .await;
        let init_to = Utc::now();
        figures.init = initialized.then(|| init_started.elapsed());
        figures.init_requests = self.audit.requests(operator.kind, init_from, init_to).await?.len();
        figures.init_peak_rss_bytes = status_bytes(pid, "VmHWM:").unwrap_or(0);
        if !initialized {
            eprintln!("canary-bench:   not every Canary initialized within {:?}", options.init_timeout);
        }

        // Idle.
        tokio::time::sleep(options.settle).await;
        let idle_from = Utc::now();
        let idle_cpu = cpu_time(pid).unwrap_or_default();
        let idle_started = Instant::now();
        tokio::time::sleep(options.idle).await;
        let idle_elapsed = idle_started.elapsed();
        let idle_cpu = cpu_time(pid).unwrap_or_default().saturating_sub(idle_cpu);
        let idle_requests = self.audit.requests(operator.kind, idle_from, Utc::now()).await?;
        figures.idle_requests_per_minute = idle_requests.len() as f64 * 60.0 / idle_elapsed.as_secs_f64();
        figures.idle_cpu_percent = idle_cpu.as_secs_f64() * 100.0 / idle_elapsed.as_secs_f64();
        figures.idle_calls = super::audit::tally(&idle_requests);
        figures.idle_rss_bytes = status_bytes(pid, "VmRSS:").unwrap_or(0);
        figures.idle_rss_anon_bytes = status_bytes(pid, "RssAnon:").unwrap_or(0);
        figures.idle_rss_file_bytes = status_bytes(pid, "RssFile:").unwrap_or(0);

        // The release: every Deployment at once.
        let apiserver = self.apiserver_pid()?;
        let rss = RssSampler::start(pid);
        let (apiserver_cpu, operator_cpu) =
            (cpu_time(apiserver).unwrap_or_default(), cpu_time(pid).unwrap_or_default());
        let wait_buckets =
            |scrape: &str| histogram_buckets(scrape, "petrel_reconcile_wait_seconds", r#"controller="canary""#);
        let reconcile_buckets =
            |scrape: &str| histogram_buckets(scrape, "petrel_reconcile_duration_seconds", r#"controller="canary""#);
        let start_scrape = process.scrape_metrics(&log_dir.join("metrics-release-start.txt")).await;
        let (waits_before, reconciles_before) = (wait_buckets(&start_scrape), reconcile_buckets(&start_scrape));
        let release_from = Utc::now();
        let release_started = Instant::now();
        let patched: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        for_each_concurrently(options.concurrency, manifests.clone(), |(name, manifest)| {
            let api = deployments.clone();
            let patched = patched.clone();
            async move {
                let manifest = workload::with_image(manifest, workload::IMAGE_V1);
                api.patch(&name, &ssa(), &Patch::Apply(manifest)).await.with_context(|| format!("releasing {name}"))?;
                patched.lock().unwrap_or_else(|e| e.into_inner()).insert(name, Instant::now());
                Ok(())
            }
        })
        .await?;
        let patched = patched.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let finished = |history: &[(Instant, String)], since: Instant| {
            history.iter().any(|(at, phase)| *at >= since && (phase == "Succeeded" || phase == "Failed"))
        };
        let done = phases
            .wait_all_by_name(&apps, options.release_timeout, &mut process, |name, history| {
                patched.get(name).is_some_and(|since| finished(history, *since))
            })
            .await;
        let release_elapsed = release_started.elapsed();
        let release_to = Utc::now();
        figures.release_apiserver_cpu = cpu_time(apiserver).unwrap_or_default().saturating_sub(apiserver_cpu);
        figures.release_operator_cpu = cpu_time(pid).unwrap_or_default().saturating_sub(operator_cpu);
        figures.release_peak_rss_bytes = rss.stop().await;
        let end_scrape = process.scrape_metrics(&log_dir.join("metrics-release-end.txt")).await;
        let waits_after = wait_buckets(&end_scrape);
        figures.release_wait_p50 = histogram_quantile(&waits_before, &waits_after, 0.5);
        figures.release_wait_p99 = histogram_quantile(&waits_before, &waits_after, 0.99);
        figures.release_reconciles = histogram_count(&reconciles_before, &reconcile_buckets(&end_scrape));
        let release_answered = self.audit.answered(release_from, release_to).await?;
        let reactions = |reaction| first_after_patches(&release_answered, operator.kind, BENCH_USER_AGENT, reaction);
        let (scale_ups, api_detections) = (reactions(Reaction::TargetWrite), reactions(Reaction::StatusWrite));
        figures.api_detection_p50 = quantile(&api_detections, 0.5);
        figures.api_detection_p99 = quantile(&api_detections, 0.99);
        figures.scale_up_p50 = quantile(&scale_ups, 0.5);
        figures.scale_up_p99 = quantile(&scale_ups, 0.99);
        figures.release_most_in_flight = most_in_flight(&release_answered, operator.kind);
        let release_requests: Vec<_> =
            release_answered.into_iter().filter(|r| made_by(operator.kind, &r.user_agent)).collect();
        figures.release_requests = release_requests.len();
        figures.release_calls = super::audit::tally(&release_requests);
        let histories = phases.histories();
        let mut detections = Vec::new();
        let mut succeeded = 0;
        for app in &apps {
            let (Some(since), Some(history)) = (patched.get(app), histories.get(app)) else { continue };
            if let Some((at, _)) =
                history.iter().find(|(at, phase)| *at >= *since && !operator.kind.is_idle_phase(phase))
            {
                detections.push(at.saturating_duration_since(*since));
            }
            if history.iter().any(|(at, phase)| *at >= *since && phase == "Succeeded") {
                succeeded += 1;
            }
        }
        figures.detected = detections.len();
        figures.detection_p50 = quantile(&detections, 0.5);
        figures.detection_p99 = quantile(&detections, 0.99);
        figures.succeeded = succeeded;
        figures.all_succeeded = (done && succeeded == n).then_some(release_elapsed);
        figures.peak_rss_bytes = status_bytes(pid, "VmHWM:").unwrap_or(0);

        // Teardown, so the next round starts on a quiet API server.
        process.stop().await;
        drop(phases);
        drop(traffic);
        // petrel's Canaries carry a finalizer (the hand-over on deletion) that no stopped
        // operator removes; the namespace would wait for it forever.
        remove_canary_finalizers(&self.client, operator.kind, &namespace).await?;
        delete_namespace(&self.client, &namespace, Duration::from_secs(900)).await?;
        figures.load = (load_start, load_average().map_or(0.0, |l| l[0]));
        eprintln!(
            "canary-bench:   init {:?}, idle {:.0} req/min, detection p50 {:?} p99 {:?} (at the API server {:?} / {:?}), all Succeeded {:?}, release {} requests",
            figures.init,
            figures.idle_requests_per_minute,
            figures.detection_p50,
            figures.detection_p99,
            figures.api_detection_p50,
            figures.api_detection_p99,
            figures.all_succeeded,
            figures.release_requests
        );
        Ok(figures)
    }
}

fn slug(label: &str) -> String {
    label.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect()
}

/// Runs `work` over `items` with at most `limit` in flight; the first error wins.
async fn for_each_concurrently<T, F, Fut, R>(limit: usize, items: Vec<T>, work: F) -> Result<()>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = Result<R>>,
{
    stream::iter(items.into_iter().map(work)).buffer_unordered(limit.max(1)).try_for_each(|_| async { Ok(()) }).await
}

async fn create_namespace(client: &Client, namespace: &str) -> Result<()> {
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": namespace}}))?)
        .await
        .with_context(|| format!("creating namespace {namespace}"))?;
    Ok(())
}

/// Applies `count` Secrets of `options.secret_bytes` each in `namespace`,
/// `options.concurrency` at a time.
async fn apply_secrets(client: &Client, namespace: &str, count: usize, options: &BenchOptions) -> Result<()> {
    if count == 0 {
        return Ok(());
    }
    let started = Instant::now();
    let api = Api::<Secret>::namespaced(client.clone(), namespace);
    for_each_concurrently(options.concurrency, (0..count).map(workload::secret_name).collect(), |name| {
        let api = api.clone();
        let manifest = workload::secret(namespace, &name, options.secret_bytes);
        async move {
            api.patch(&name, &ssa(), &Patch::Apply(manifest)).await.with_context(|| format!("applying Secret {name}"))
        }
    })
    .await?;
    eprintln!(
        "canary-bench:   {count} Secrets of {} bytes in {namespace} ({:.1} s)",
        options.secret_bytes,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Applies the Deployments no Canary names ([`BenchOptions::other_deployments`]),
/// `options.concurrency` at a time.
async fn apply_other_deployments(client: &Client, options: &BenchOptions) -> Result<()> {
    let started = Instant::now();
    let namespace = workload::OTHER_DEPLOYMENTS_NAMESPACE;
    let api = Api::<Deployment>::namespaced(client.clone(), namespace);
    let names = (0..options.other_deployments).map(workload::other_deployment_name).collect();
    for_each_concurrently(options.concurrency, names, |name| {
        let api = api.clone();
        let manifest = workload::deployment(namespace, &name, workload::IMAGE_V0, 0);
        async move {
            api.patch(&name, &ssa(), &Patch::Apply(manifest))
                .await
                .with_context(|| format!("applying Deployment {name}"))
        }
    })
    .await?;
    eprintln!(
        "canary-bench:   {} Deployments no Canary names in {namespace} ({:.1} s)",
        options.other_deployments,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Waits until `expected` Deployments of `api` have all their replicas available.
pub async fn wait_deployments_available(api: &Api<Deployment>, expected: usize, timeout: Duration) -> Result<()> {
    let mut available = 0;
    let all = poll(Instant::now() + timeout, Duration::from_secs(1), async || {
        let list = api.list(&ListParams::default()).await.context("listing Deployments")?;
        available = list
            .items
            .iter()
            .filter(|d| {
                let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                d.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0) >= wanted
            })
            .count();
        Ok::<_, anyhow::Error>((available >= expected).then_some(()))
    })
    .await?;
    all.with_context(|| format!("only {available} of {expected} Deployments available after {timeout:?}"))
}

/// Drops the finalizers of every Canary of `namespace`, once its operator stopped.
async fn remove_canary_finalizers(client: &Client, kind: OperatorKind, namespace: &str) -> Result<()> {
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &kind.canary_resource());
    let canaries =
        api.list(&ListParams::default()).await.with_context(|| format!("listing the Canaries of {namespace}"))?;
    let patch = json!({ "metadata": { "finalizers": null } });
    for canary in canaries.items.iter().filter(|c| c.metadata.finalizers.as_ref().is_some_and(|f| !f.is_empty())) {
        let name = canary.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("removing the finalizers of Canary {namespace}/{name}"))?;
    }
    Ok(())
}

async fn delete_namespace(client: &Client, namespace: &str, timeout: Duration) -> Result<()> {
    let api = Api::<Namespace>::all(client.clone());
    api.delete(namespace, &DeleteParams::default()).await.with_context(|| format!("deleting namespace {namespace}"))?;
    let gone = poll(Instant::now() + timeout, Duration::from_secs(1), async || {
        Ok::<_, anyhow::Error>(api.get_opt(namespace).await?.is_none().then_some(()))
    })
    .await?;
    gone.with_context(|| format!("namespace {namespace} still there {timeout:?} after its deletion"))
}

/// The simulator and the Prometheus scraping it.
struct Traffic {
    prometheus: Prometheus,
    _simulator: Simulator,
    _cache: Arc<NamespaceCache>,
}

impl Traffic {
    async fn start(client: &Client, namespace: &str, apps: &[String], dir: &Path) -> Result<Traffic> {
        let cache = NamespaceCache::start(client.clone(), namespace, Provider::GatewayApi).await?;
        let profile = TrafficProfile { requests_per_second: 10.0, ..TrafficProfile::default() };
        let simulated = apps
            .iter()
            .map(|name| {
                let coords = AppCoords::new(namespace, name, Provider::GatewayApi);
                App::with_source(coords.clone(), cache.source(coords)).profile(profile.clone())
            })
            .collect();
        let config = SimulatorConfig { tick: Duration::from_secs(1), ..SimulatorConfig::default() };
        let simulator = Simulator::start(config, simulated).await?;
        let prometheus = Prometheus::start(dir, &[simulator.addr()]).await?;
        Ok(Traffic { prometheus, _simulator: simulator, _cache: cache })
    }
}

/// An operator as a child process with its log in a file.
struct OperatorProcess {
    child: Child,
    label: String,
    log: PathBuf,
    health: String,
    /// petrel's `/metrics` (Flagger's histograms are not comparable).
    metrics: Option<String>,
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

impl OperatorProcess {
    fn start(
        spec: &OperatorSpec,
        variant: Variant,
        kubeconfig: &Path,
        metrics_server: &str,
        dir: &Path,
    ) -> Result<OperatorProcess> {
        let port = free_port()?;
        let kubeconfig = kubeconfig.to_string_lossy().into_owned();
        let mut command = Command::new(&spec.binary);
        let (health, metrics) = match spec.kind {
            OperatorKind::Petrel => {
                let provider = match variant {
                    Variant::GatewayApi => "gatewayapi",
                    _ => "kubernetes",
                };
                command.args(["--kubeconfig", &kubeconfig, "--provider", provider, "--metrics-server", metrics_server]);
                command.args(["--cluster-name", CLUSTER, "--metrics-addr", &format!("127.0.0.1:{port}")]);
                command.env("RUST_LOG", "info,kube=warn,tower=warn,hyper=warn");
                (format!("http://127.0.0.1:{port}/readyz"), Some(format!("http://127.0.0.1:{port}/metrics")))
            }
            OperatorKind::Flagger => {
                let provider = match variant {
                    Variant::GatewayApi => "gatewayapi:v1",
                    _ => "kubernetes",
                };
                command.args([
                    &format!("-kubeconfig={kubeconfig}"),
                    &format!("-mesh-provider={provider}"),
                    &format!("-metrics-server={metrics_server}"),
                    &format!("-port={port}"),
                    "-log-level=info",
                    "-enable-leader-election=false",
                ]);
                (format!("http://127.0.0.1:{port}/healthz"), None)
            }
        };
        let log = dir.join("operator.log");
        let file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        command.stdin(Stdio::null()).stdout(file.try_clone()?).stderr(file);
        let child = crate::fleet::spawn_tied_to_process(command)
            .with_context(|| format!("starting {}", spec.binary.display()))?;
        Ok(OperatorProcess { child, label: spec.label.clone(), log, health, metrics })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// petrel's metrics now, also written to `save_as` (for figures the table does not
    /// hold); empty for Flagger, or when the scrape fails (the figures are then missing,
    /// not wrong).
    async fn scrape_metrics(&self, save_as: &Path) -> String {
        let Some(url) = &self.metrics else { return String::new() };
        let scrape = async {
            let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
            http.get(url).send().await?.error_for_status()?.text().await
        };
        match scrape.await {
            Ok(text) => {
                if let Err(error) = std::fs::write(save_as, &text) {
                    eprintln!("canary-bench:   writing {}: {error}", save_as.display());
                }
                text
            }
            Err(error) => {
                eprintln!("canary-bench:   scraping {url}: {error}");
                String::new()
            }
        }
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!("{} exited ({status}); log {}", self.label, self.log.display())),
            _ => None,
        }
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
        let ready = poll(Instant::now() + timeout, Duration::from_millis(200), async || {
            if let Some(exit) = self.exited() {
                bail!("{exit}");
            }
            Ok(http.get(&self.health).send().await.is_ok_and(|r| r.status().is_success()).then_some(()))
        })
        .await?;
        ready.with_context(|| {
            format!("{} not ready at {} after {timeout:?}; log {}", self.label, self.health, self.log.display())
        })
    }

    /// SIGTERM, then SIGKILL after 10 s.
    async fn stop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's pid; it is not reaped yet, so the pid is still ours.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let exited =
            poll(Instant::now() + Duration::from_secs(10), Duration::from_millis(100), async || self.child.try_wait())
                .await;
        if !matches!(exited, Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Samples a process's resident memory every 200 ms and keeps the largest.
struct RssSampler {
    task: JoinHandle<u64>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut peak = 0;
            loop {
                peak = peak.max(status_bytes(pid, "VmRSS:").unwrap_or(0));
                tokio::select! {
                    _ = stopped.changed() => return peak,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        });
        RssSampler { task, stop }
    }

    async fn stop(self) -> u64 {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or(0)
    }
}

type Histories = HashMap<String, Vec<(Instant, String)>>;

/// Watches the Canaries of a namespace and keeps, per Canary, every phase it had and
/// when the benchmark saw it.
struct PhaseRecorder {
    histories: Arc<Mutex<Histories>>,
    synced: tokio::sync::watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl PhaseRecorder {
    fn start(client: Client, kind: OperatorKind, namespace: &str) -> PhaseRecorder {
        let api = Api::<DynamicObject>::namespaced_with(client, namespace, &kind.canary_resource());
        let histories: Arc<Mutex<Histories>> = Arc::default();
        let (synced_tx, synced) = tokio::sync::watch::channel(false);
        let recorded = histories.clone();
        let task = tokio::spawn(async move {
            let events = watcher(api, watcher::Config::default()).default_backoff();
            futures::pin_mut!(events);
            while let Some(event) = events.next().await {
                let object = match event {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => o,
                    Ok(watcher::Event::InitDone) => {
                        let _ = synced_tx.send(true);
                        continue;
                    }
                    _ => continue,
                };
                let at = Instant::now();
                let name = object.metadata.name.clone().unwrap_or_default();
                let phase = object.data["status"]["phase"].as_str().unwrap_or_default().to_string();
                let mut histories = recorded.lock().unwrap_or_else(|e| e.into_inner());
                let history = histories.entry(name).or_default();
                if history.last().is_none_or(|(_, last)| *last != phase) {
                    history.push((at, phase));
                }
            }
        });
        PhaseRecorder { histories, synced, task }
    }

    async fn wait_synced(&self, timeout: Duration) -> Result<()> {
        let mut synced = self.synced.clone();
        tokio::time::timeout(timeout, synced.wait_for(|s| *s))
            .await
            .context("the Canary watch did not sync")?
            .context("the Canary watch stopped")?;
        Ok(())
    }

    fn histories(&self) -> Histories {
        self.histories.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until `done` holds for every one of `names`, the timeout passes or the
    /// operator exits; whether all were done.
    async fn wait_all_by_name(
        &self,
        names: &[String],
        timeout: Duration,
        process: &mut OperatorProcess,
        done: impl Fn(&str, &[(Instant, String)]) -> bool,
    ) -> bool {
        let all_done = poll(Instant::now() + timeout, Duration::from_millis(100), async || {
            {
                let histories = self.histories.lock().unwrap_or_else(|e| e.into_inner());
                if names.iter().all(|n| histories.get(n).is_some_and(|h| done(n, h))) {
                    return Ok(Some(()));
                }
            }
            match process.exited() {
                Some(exit) => Err(exit),
                None => Ok(None),
            }
        })
        .await;
        match all_done {
            Ok(done) => done.is_some(),
            Err(exit) => {
                eprintln!("canary-bench:   {exit}");
                false
            }
        }
    }
}

impl Drop for PhaseRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}
