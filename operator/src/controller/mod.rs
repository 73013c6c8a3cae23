//! The I/O shell of the per-cluster Canary controller: watches, reconcile, status, events.
//!
//! A reconcile reads the world, asks the pure core what to do ([`crate::core::plan`],
//! [`crate::core::decide`]), applies the actions and writes the status once.

mod canary;
mod claim_index;
mod claims;
mod events;
pub mod freshness;
pub mod identity;
mod lifecycle;
pub mod wakes;
pub mod watches;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::DynamicObject;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{info, warn};

use crate::analysis::{ALERT_PROVIDER_WATCH, METRIC_TEMPLATE_WATCH, SECRET_WATCH, SourceCaches, SourceWriters};
use crate::api::{AlertProvider, Canary, MetricTemplate};
use crate::cache::{ReadsAtVersion, WatchCache};
use crate::core::Provider;
use crate::routers::{RouterMemory, WriteLedger};
use crate::shutdown::Shutdown;
use crate::telemetry::WatchHealth;
use crate::workloads::{ConfigReads, DeploymentCache};
use claim_index::ClaimIndex;
use watches::{drop_unread_fields, kept, objects_only};

pub use canary::reconcile;
pub use events::EventSink;
pub use freshness::StatusVersions;

/// Settings of the operator that apply to every Canary.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Provider used when a Canary names none.
    pub default_provider: String,
    /// Prometheus address for the builtin metrics when a Canary names none.
    pub metrics_server: String,
    /// Name of this cluster, in alerts and events, and in the identity it publishes.
    pub cluster_name: String,
    /// Namespace and name of the ConfigMap holding this cluster's identity labels.
    pub identity_config_map: (String, String),
    /// PromQL giving this cluster's requests per second (`--traffic-rate-query`),
    /// evaluated against `metrics_server` every minute and published in the
    /// ClusterIdentity's status for the fleet hub's blast radius; `None`: not measured.
    pub traffic_rate_query: Option<String>,
    /// At most this many reconciles run at once (`--max-concurrent-reconciles`); the
    /// others wait in the controller's queue, each held there as a key, not as a future
    /// with its reads and connections. 0: no bound.
    pub max_concurrent_reconciles: u16,
}

/// How many reconciles run at once unless `--max-concurrent-reconciles` says otherwise:
/// 0, no bound. A bound trades detection for memory: without one each Canary woken at
/// once holds its reconcile's future, buffers and an HTTP connection at the same time;
/// with 32, a release of 300 Canaries peaked 16 MiB lower, but a release of 1,000 waited
/// its turn (detection p99 14.6 s, against the 5 s). Measured again with four
/// API connections at 1,000: 100 and 300 took 27–32 MiB off the peak, but detection was
/// 18.5 s p99 with 100 and 3.28 s p50 with 300 (2.27 s with none), and initializing took
/// 1.3–1.5 times as long. None is the default (docs/benchmarks.md, issue 15).
pub const DEFAULT_MAX_CONCURRENT_RECONCILES: u16 = 0;

/// How many reconciles of Canaries not yet initialized (phase `Initializing`) run at once
/// unless `--max-concurrent-initializations` says otherwise. When Git applies 1,000
/// Canaries at once, each one's initialization (the primary, the Services, the routes)
/// waits on a loaded API server, and all of them in flight together made the peak of
/// the process's memory, which a busy allocator then keeps (docs/benchmarks.md). Unlike
/// `--max-concurrent-reconciles`, this bound never delays a Canary already initialized:
/// the detection of a new revision, an analysis, a rollback do not wait behind it.
pub const DEFAULT_MAX_CONCURRENT_INITIALIZATIONS: u16 = 64;

/// At most so many reconciles of one kind in flight, the others waiting for a permit
/// before their reconcile exists. Cheap to clone; clones share the permits.
#[derive(Clone, Debug)]
pub struct ReconcileGate {
    /// `None`: no bound.
    permits: Option<Arc<tokio::sync::Semaphore>>,
}

impl ReconcileGate {
    /// A gate letting `bound` reconciles through at once; 0: all of them.
    pub fn new(bound: u16) -> Self {
        ReconcileGate { permits: (bound > 0).then(|| Arc::new(tokio::sync::Semaphore::new(usize::from(bound)))) }
    }

    /// Starts the reconcile `start` makes once a permit is free, as a task of its own (see
    /// [`as_task`]) that keeps the permit until it ends. The reconcile is made only then, so
    /// one waiting here holds its Canary and context, not a reconcile's state.
    fn start<S, F>(&self, start: S) -> impl Future<Output = Result<Action, Error>> + Send + 'static + use<S, F>
    where
        S: FnOnce() -> F + Send + 'static,
        F: Future<Output = Result<Action, Error>> + Send + 'static,
    {
        let permits = self.permits.clone();
        async move {
            let permit = match permits {
                Some(permits) => {
                    Some(permits.acquire_owned().await.map_err(|e| Error::Stopped { message: e.to_string() })?)
                }
                None => None,
            };
            let reconcile = start();
            as_task(async move {
                let _permit = permit;
                reconcile.await
            })
            .await
        }
    }
}

/// The gate a reconcile of `canary` passes: `initializations` when the reconcile
/// initializes it (no status yet, or `Initializing`), none otherwise.
fn gate_for(canary: &Canary, initializations: &ReconcileGate) -> ReconcileGate {
    let initializing = canary.status.as_ref().is_none_or(|status| status.phase == crate::api::Phase::Initializing);
    if initializing { initializations.clone() } else { ReconcileGate::new(0) }
}

/// Everything a reconcile needs, shared across reconciles.
pub struct Context {
    pub client: Client,
    /// Webhooks, alert receivers; its egress policy also goes to the metric backends.
    pub http: metrics_providers::EgressClient,
    pub events: EventSink,
    pub settings: Settings,
    /// Prometheus metrics, recorded by every reconcile.
    pub metrics: Arc<crate::telemetry::Metrics>,
    /// Turns ready once the Canary cache has synced (`/readyz`).
    pub readiness: crate::telemetry::Readiness,
    /// Watch caches and what petrel last wrote ([`Caches::new`] with the readiness' watches).
    pub caches: Caches,
    /// The controller's Canary cache, to compare a Canary with its neighbours.
    pub canaries: CanaryCache,
    /// The shards this replica holds (`--shards N`); a reconcile of a Canary of another
    /// shard returns without reading or writing. `HeldShards::new(1)`: every Canary.
    pub shards: crate::shard::HeldShards,
    /// Bounds the reconciles of Canaries being initialized
    /// (`--max-concurrent-initializations`, [`DEFAULT_MAX_CONCURRENT_INITIALIZATIONS`]).
    pub initializations: ReconcileGate,
}

/// What the controller keeps between reconciles; all of it is rebuilt from the API
/// server after a restart (state lives in `.status`, DESIGN rule 2).
pub struct Caches {
    /// MetricTemplates, AlertProviders and the metadata of Secrets, for analysis.
    pub sources: SourceCaches,
    /// The Services petrel generates: their versions, owners and selectors, all the routers read of them.
    pub services: WatchCache<Service>,
    /// Deployments, read by the reconciles instead of the API server (see [`crate::cache`]);
    /// those no Canary reads are held by their metadata only.
    pub deployments: DeploymentCache,
    /// The ConfigMaps and Secrets targets use, read again only when their watch shows a change.
    pub configs: ConfigReads,
    /// The newest resourceVersion petrel knows of each Canary.
    pub status_versions: StatusVersions,
    /// What petrel last wrote: the routers' objects and the `-primary` config copies.
    pub ledger: WriteLedger,
    /// When a watch event last woke each Canary, for `petrel_reconcile_wait_seconds`.
    pub wakes: wakes::WakeTimes,
    /// What discovery last said each provider's group version serves.
    pub served_kinds: crate::routers::ServedKinds,
    writers: Mutex<Option<WatchWriters>>,
}

/// The ends of [`Caches`] that the watches of [`run`] fill.
struct WatchWriters {
    sources: SourceWriters,
    services: Writer<Service>,
    deployments: Writer<Deployment>,
    config_maps: Writer<PartialObjectMeta<ConfigMap>>,
}

/// The watch that fills [`Caches::deployments`].
const DEPLOYMENT_WATCH: &str = "deployments";
/// The watch that fills [`Caches::services`].
const SERVICE_WATCH: &str = "services";
/// The metadata-only watch of ConfigMaps: it wakes the Canaries whose targets use one, and
/// [`Caches::configs`] compares with its versions.
const CONFIG_MAP_WATCH: &str = "configmaps";

impl Caches {
    /// Empty caches whose watches report into `health` (the `/readyz` of the process).
    pub fn new(health: &WatchHealth) -> Self {
        let (sources, source_writers) = SourceCaches::new(health.clone());
        let (services, service_writer) = reflector::store();
        let (deployments, deployment_writer) = reflector::store();
        let (config_maps, config_map_writer) = reflector::store();
        // One ledger for every object petrel writes: the routers' and the config copies'.
        let ledger = WriteLedger::default();
        let configs = ConfigReads {
            config_maps: ReadsAtVersion::kept_by(config_maps, health.clone(), CONFIG_MAP_WATCH),
            secrets: ReadsAtVersion::kept_by(sources.secrets.clone(), health.clone(), SECRET_WATCH),
            ledger: ledger.clone(),
        };
        Caches {
            configs,
            sources,
            services: WatchCache::kept_by(services, health.clone(), SERVICE_WATCH),
            deployments: WatchCache::kept_by(deployments, health.clone(), DEPLOYMENT_WATCH)
                .partly_kept(is_whole_deployment),
            status_versions: StatusVersions::default(),
            ledger,
            wakes: wakes::WakeTimes::default(),
            served_kinds: crate::routers::ServedKinds::default(),
            writers: Mutex::new(Some(WatchWriters {
                sources: source_writers,
                services: service_writer,
                deployments: deployment_writer,
                config_maps: config_map_writer,
            })),
        }
    }

    /// The routers' memory: the ledger and the caches they read.
    pub fn router_memory(&self) -> RouterMemory {
        RouterMemory {
            ledger: self.ledger.clone(),
            services: self.services.clone(),
            deployments: self.deployments.clone(),
        }
    }

    fn take_writers(&self) -> Option<WatchWriters> {
        self.writers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }
}

/// The Canaries the controller's cache holds, for the checks that compare a Canary with
/// the others of its namespace (two Canaries claiming one Deployment), and the index of
/// what each claims (`claim_index::ClaimIndex`) that narrows those checks to the Canaries that
/// could conflict. [`run`] fills both.
#[derive(Clone, Default)]
pub struct CanaryCache {
    store: Arc<OnceLock<Store<Canary>>>,
    index: Arc<Mutex<ClaimIndex>>,
}

impl CanaryCache {
    /// The Canaries that may claim something `canary` claims, and those named by
    /// `owners` (the owner references of the Deployments read for it), `canary` among
    /// them: from the cache and its index once the controller runs, else (a reconcile
    /// called outside [`run`]) every Canary of the namespace, read from the API server.
    pub(crate) async fn neighbours(
        &self,
        client: &Client,
        canary: &Canary,
        owners: &[String],
    ) -> Result<Vec<Arc<Canary>>, Error> {
        let namespace = canary.metadata.namespace.as_deref().ok_or(Error::MissingNamespace)?;
        if let Some(store) = self.store.get() {
            let mut references = self.index().claim_neighbours(canary);
            references.extend(owners.iter().map(|owner| ObjectRef::new(owner).within(namespace)));
            references.sort_by(|a, b| a.name.cmp(&b.name));
            references.dedup();
            return Ok(references.iter().filter_map(|reference| store.get(reference)).collect());
        }
        let list = Api::<Canary>::namespaced(client.clone(), namespace)
            .list(&kube::api::ListParams::default())
            .await
            .map_err(Error::kube("listing the namespace's Canaries"))?;
        Ok(list.items.into_iter().map(Arc::new).collect())
    }

    fn index(&self) -> std::sync::MutexGuard<'_, ClaimIndex> {
        // Nothing under this lock panics but an allocation failure, which aborts the
        // process: a poisoned lock cannot hold a half-updated index.
        self.index.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Feeds the index with one event of the Canary watch: called before the cache sees it.
    fn follow(&self, event: &watcher::Result<watcher::Event<Canary>>) {
        if let Ok(event) = event {
            self.index().apply(event);
        }
    }

    /// The Canaries whose target is `name` in `namespace`, from the cache.
    fn targeting(&self, namespace: Option<&str>, name: &str) -> Vec<Arc<Canary>> {
        let Some(store) = self.store.get() else { return Vec::new() };
        let references = self.index().targeting(namespace, name);
        references
            .iter()
            .filter_map(|reference| store.get(reference))
            .filter(|canary| canary.metadata.namespace.as_deref() == namespace && canary.spec.target_ref.name == name)
            .collect()
    }

    /// For `.modify` on the Deployment watch: a Deployment no Canary reads is kept by its
    /// metadata only ([`is_whole_deployment`] tells it apart), which is what its watch
    /// needs to wake Canaries. A Canary reads its target, `<target>-primary` and the
    /// Deployments it owns; in a cluster of 5,000 Deployments and 100 Canaries the other
    /// 4,800 held whole were about 40 MB (issue 15). One read anyway (a Canary created
    /// after the Deployment's last change) is read whole from the API server
    /// ([`crate::cache::WatchCache::partly_kept`]), once per version of it.
    fn keep_unread_by_metadata(&self, deployment: &mut Deployment) {
        if self.may_read(deployment) {
            return;
        }
        let metadata = crate::cache::identifying_metadata(std::mem::take(&mut deployment.metadata));
        *deployment = Deployment { metadata, spec: None, status: None };
    }

    /// Whether any Canary may read `deployment` (a superset: see [`ClaimIndex`]).
    fn may_read(&self, deployment: &Deployment) -> bool {
        let owned = deployment.owner_references().iter().any(is_canary);
        let namespace = deployment.metadata.namespace.as_deref();
        let name = deployment.metadata.name.as_deref().unwrap_or_default();
        let index = self.index();
        owned
            || index.may_target(namespace, name)
            || name
                .strip_suffix(crate::workloads::PRIMARY_SUFFIX)
                .is_some_and(|target| index.may_target(namespace, target))
    }

    fn fill(&self, store: Store<Canary>) {
        // Set once per process; a second controller on the same Context keeps the first cache.
        let _ = self.store.set(store);
    }
}

/// Errors of one reconcile. Bad input is not an error here: it becomes a `Stalled`
/// condition and an Event, and the reconcile succeeds.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API call failed while {context}: {source}")]
    Kube {
        context: String,
        #[source]
        source: kube::Error,
    },
    #[error("traffic router failed while {context}: {message}")]
    Router { context: String, message: String },
    #[error("workload update failed while {context}: {message}")]
    Workload { context: String, message: String },
    /// The Canary asks for something that cannot be done until a person changes it: the
    /// API server refused an object built from it (a name too long for a label, say), or
    /// a router cannot route it. Never retried in a loop: the reconcile reports it as a
    /// `Stalled` condition and an Event.
    #[error("{message}")]
    Refused { reason: &'static str, message: String },
    #[error("Canary has no namespace")]
    MissingNamespace,
    /// The reconcile's task panicked or was cancelled (`reconcile_as_task`): retried
    /// like any failed reconcile, while the other Canaries go on.
    #[error("the reconcile stopped before it finished: {message}")]
    Stopped { message: String },
}

impl Error {
    pub(crate) fn kube(context: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let context = context.into();
        move |source| Error::Kube { context, source }
    }

    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube",
            Error::Router { .. } => "router",
            Error::Workload { .. } => "workload",
            Error::Refused { .. } => "refused",
            Error::MissingNamespace => "invalid",
            Error::Stopped { .. } => "stopped",
        }
    }
}

/// Runs one reconcile as a task of its own. kube-runtime's controller polls every
/// reconcile in flight from the one task that also drives its watches and its queue, so
/// without this all of petrel's reconciling (and the decoding of watch events) shares one
/// core, and a release of many Canaries waits its turn on it (docs/benchmarks.md). The
/// handle aborts the task when dropped: a controller stopped hard cancels its reconciles,
/// as it did when they were polled in place.
fn reconcile_as_task(
    canary: Arc<Canary>,
    ctx: Arc<Context>,
) -> impl Future<Output = Result<Action, Error>> + Send + 'static {
    // Only initializations wait for a permit: a Canary already initialized (a release to
    // detect, an analysis to run) never waits behind the Canaries Git just applied.
    gate_for(&canary, &ctx.initializations).start(move || async move {
        // Measured at the task's first poll, so the wait for a worker thread (and for a
        // permit) counts too.
        if let Some(waited) = ctx.caches.wakes.served(&ObjectRef::from_obj(canary.as_ref())) {
            ctx.metrics.record_reconcile_wait(crate::telemetry::CANARY_CONTROLLER, waited);
        }
        reconcile(canary, ctx).await
    })
}

/// Spawns `reconcile` now and returns a future that holds only its task's handle. An
/// `async fn` taking the reconcile would keep room for it in its own future, which
/// kube-runtime holds for every reconcile in flight: the reconcile's state twice, about
/// 8.8 MB at the peak of a release of 1,000 (heaptrack, docs/benchmarks.md).
fn as_task(
    reconcile: impl Future<Output = Result<Action, Error>> + Send + 'static,
) -> impl Future<Output = Result<Action, Error>> + Send + 'static {
    let task = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(reconcile));
    async move { task.await.map_err(|e| Error::Stopped { message: e.to_string() })? }
}

fn error_policy(canary: Arc<Canary>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(canary = %canary.name_any(), namespace = ?canary.namespace(), %error, "reconcile failed");
    ctx.metrics.record_reconcile_error(crate::telemetry::CANARY_CONTROLLER, error);
    Action::requeue(Duration::from_secs(5))
}

/// The Canaries whose target is this Deployment (or DaemonSet), or that own it (the primary).
fn canaries_for_deployment(canaries: &CanaryCache, deployment: &impl Resource) -> Vec<ObjectRef<Canary>> {
    let namespace = deployment.namespace();
    let name = deployment.name_any();
    let mut refs: Vec<ObjectRef<Canary>> =
        canaries.targeting(namespace.as_deref(), &name).iter().map(|c| ObjectRef::from_obj(c.as_ref())).collect();
    for owner in deployment.owner_references().iter().filter(|owner| is_canary(owner)) {
        let mut r = ObjectRef::<Canary>::new(&owner.name);
        if let Some(ns) = &namespace {
            r = r.within(ns);
        }
        refs.push(r);
    }
    refs
}

/// Whether an owner reference names a petrel Canary.
fn is_canary(owner: &OwnerReference) -> bool {
    owner.kind == Canary::kind(&()) && owner.api_version == Canary::api_version(&())
}

/// Whether the Deployment cache holds `deployment` whole, not by its metadata only
/// ([`CanaryCache::keep_unread_by_metadata`]): the API server never serves one without a spec.
fn is_whole_deployment(deployment: &Deployment) -> bool {
    deployment.spec.is_some()
}

/// The watch of Knative Service targets (when the cluster serves them).
const KNATIVE_SERVICE_WATCH: &str = "knative services";

/// The Canaries whose target is this Knative Service.
fn canaries_for_knative_service(canaries: &CanaryCache, service: &DynamicObject) -> Vec<ObjectRef<Canary>> {
    canaries
        .targeting(service.namespace().as_deref(), &service.name_any())
        .iter()
        .filter(|c| c.spec.target_ref.is_knative_service())
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

/// The Canaries whose target uses this ConfigMap or Secret (as recorded in their status).
fn canaries_tracking(store: &Store<Canary>, namespace: Option<String>, key: String) -> Vec<ObjectRef<Canary>> {
    store
        .state()
        .iter()
        .filter(|c| {
            c.metadata.namespace == namespace && c.status.as_ref().is_some_and(|s| s.tracked_configs.contains_key(&key))
        })
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

/// The Canaries with a metric whose MetricTemplate is `namespace/name`.
fn canaries_using_template(store: &Store<Canary>, namespace: Option<String>, name: &str) -> Vec<ObjectRef<Canary>> {
    store
        .state()
        .iter()
        .filter(|c| {
            let metrics = c.spec.analysis.as_ref().map(|a| a.metrics.as_slice()).unwrap_or_default();
            metrics
                .iter()
                .filter_map(|m| m.template_ref.as_ref())
                .any(|t| t.name == name && t.namespace.clone().or_else(|| c.namespace()) == namespace)
        })
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

/// An `Api` in the watched namespace, or in all of them.
fn api_in<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// What of a Canary starts its reconcile: its spec (`generation`), labels, annotations
/// (approvals and requests), finalizers, deletion and identity, but not its status.
/// Each of petrel's own status writes would otherwise cost a second reconcile (reads of
/// the target, the primary and the Services) that finds nothing to do: the reconcile
/// that wrote the status has already requeued what is due (docs/benchmarks.md).
pub(crate) fn canary_trigger(canary: &Canary) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let meta = canary.meta();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let deletion = meta.deletion_timestamp.as_ref().map(|t| t.0.to_string());
    (&meta.uid, meta.generation, &meta.labels, &meta.annotations, &meta.finalizers, deletion).hash(&mut hasher);
    Some(hasher.finish())
}

/// The Canary events that start a reconcile: those that change its [`canary_trigger`].
fn canary_wakes(
    canaries: impl futures::Stream<Item = watcher::Result<Canary>> + Send,
) -> impl futures::Stream<Item = watcher::Result<Canary>> + Send {
    canaries.predicate_filter(canary_trigger, kube::runtime::PredicateConfig::default())
}

/// Runs the Canary controller until `shutdown` is requested; the reconciles in flight
/// finish first.
///
/// Every watch keeps its cache on its own (see [`watches`]) and reports its health to
/// `/readyz`. Deployments a Canary reads are cached whole (less what petrel never reads:
/// [`watches::drop_unread_fields`]), the others by their metadata
/// ([`CanaryCache::keep_unread_by_metadata`]), petrel's Services by what the routers read of them
/// ([`crate::routers::services::keep_what_is_read_of_a_generated_service`]): the
/// reconciles read them from there ([`crate::cache`]). DaemonSets,
/// ConfigMaps and Secrets are watched by their metadata only: which object changed is
/// all a trigger needs, and petrel holds no Secret data it does not use. Those a target
/// uses are read whole once, and again when their watch shows a new version
/// ([`Caches::configs`]).
pub async fn run(ctx: Arc<Context>, namespace: Option<String>, shutdown: Shutdown) -> anyhow::Result<()> {
    let client = ctx.client.clone();
    let canaries: Api<Canary> = api_in(&client, &namespace);
    if let Err(e) = canaries.list(&kube::api::ListParams::default().limit(1)).await {
        anyhow::bail!("cannot list Canaries ({e}); are the CRDs installed? Apply them with: kubectl apply -f crds/");
    }
    let writers = ctx.caches.take_writers().context("the Canary controller runs once per Context")?;
    let source_writers = writers.sources;
    let health = ctx.readiness.watches().clone();
    let config = || watcher::Config::default().any_semantic();

    let (store, canary_writer) = reflector::store();
    // The claims index follows each event before the cache does (see [`ClaimIndex`]).
    let claim_index = ctx.canaries.clone();
    let canary_events = kept("canaries", watcher(canaries, config()), &health)
        .modify(drop_unread_fields)
        .inspect(move |event| claim_index.follow(event))
        .reflect(canary_writer);
    // Whole Deployments where a Canary reads them: the reconciles read targets and
    // primaries from this cache. The rest by their metadata.
    let readers = ctx.canaries.clone();
    let deployments = kept(DEPLOYMENT_WATCH, watcher(api_in::<Deployment>(&client, &namespace), config()), &health)
        .modify(drop_unread_fields)
        .modify(move |deployment| readers.keep_unread_by_metadata(deployment))
        .reflect(writers.deployments);
    let daemon_sets =
        kept("daemonsets", watcher(api_in::<PartialObjectMeta<DaemonSet>>(&client, &namespace), config()), &health);
    let configmaps =
        kept(CONFIG_MAP_WATCH, watcher(api_in::<PartialObjectMeta<ConfigMap>>(&client, &namespace), config()), &health)
            .modify(drop_unread_fields)
            .reflect(writers.config_maps);
    let secrets =
        kept(SECRET_WATCH, watcher(api_in::<PartialObjectMeta<Secret>>(&client, &namespace), config()), &health)
            .modify(drop_unread_fields)
            .reflect(source_writers.secrets);
    let templates =
        kept(METRIC_TEMPLATE_WATCH, watcher(api_in::<MetricTemplate>(&client, &namespace), config()), &health)
            .modify(drop_unread_fields)
            .reflect(source_writers.templates);
    let generated = config().labels(&format!("{}={}", crate::MANAGED_BY_LABEL, crate::FIELD_MANAGER));
    let services = kept(SERVICE_WATCH, watcher(api_in::<Service>(&client, &namespace), generated), &health)
        .modify(crate::routers::services::keep_what_is_read_of_a_generated_service)
        .reflect(writers.services);
    // AlertProviders wake no Canary: their cache only has to be kept.
    let alert_providers =
        kept(ALERT_PROVIDER_WATCH, watcher(api_in::<AlertProvider>(&client, &namespace), config()), &health)
            .modify(drop_unread_fields)
            .reflect(source_writers.alert_providers)
            .for_each(|_| std::future::ready(()));
    let alert_providers = tokio::spawn(alert_providers);

    ctx.canaries.fill(store.clone());
    // Readiness and the sweep of deleted Canaries' metric series follow the cache.
    let telemetry =
        tokio::spawn(crate::telemetry::track_canary_store(store.clone(), ctx.readiness.clone(), ctx.metrics.clone()));
    // Who this cluster is, for the fleet hub to verify before it approves a release here.
    let (identity_namespace, identity_name) = ctx.settings.identity_config_map.clone();
    let identity = tokio::spawn(identity::publish(
        client.clone(),
        identity::IdentitySource {
            cluster_name: ctx.settings.cluster_name.clone(),
            config_map_namespace: identity_namespace,
            config_map_name: identity_name,
        },
        shutdown.clone(),
    ));
    // Its own request rate, for the hub's share of the fleet's traffic.
    let traffic = ctx.settings.traffic_rate_query.clone().map(|query| {
        tokio::spawn(identity::measure_traffic(
            client.clone(),
            ctx.settings.metrics_server.clone(),
            query,
            shutdown.clone(),
        ))
    });
    // What petrel remembers of deleted Canaries, ConfigMaps and Secrets goes with them.
    let forget = tokio::spawn({
        let (store, versions, configs, wakes, ledger, deployments) = (
            store.clone(),
            ctx.caches.status_versions.clone(),
            ctx.caches.configs.clone(),
            ctx.caches.wakes.clone(),
            ctx.caches.ledger.clone(),
            ctx.caches.deployments.clone(),
        );
        async move {
            loop {
                tokio::time::sleep(crate::telemetry::SWEEP_INTERVAL).await;
                let live = store
                    .state()
                    .iter()
                    .map(|c| format!("{}/{}", c.namespace().unwrap_or_default(), c.name_any()))
                    .collect();
                versions.retain(&live);
                wakes.retain(&live);
                ledger.retain_owned_by(&live);
                configs.forget_gone();
                deployments.forget_stale_copies();
            }
        }
    });
    let (s2, s3, s4) = (store.clone(), store.clone(), store.clone());
    let (by_deployment, by_daemon_set, by_knative_service) =
        (ctx.canaries.clone(), ctx.canaries.clone(), ctx.canaries.clone());
    let ready_store = store.clone();
    // Knative Service targets are watched when the cluster serves them at start (a watch of
    // an unserved kind fails forever); a Knative CRD installed later needs a restart.
    let knative = crate::routers::knative::service_resource();
    let knative_served =
        crate::routers::unserved_kinds(&client, &ctx.caches.served_kinds, std::slice::from_ref(&knative))
            .await
            .is_ok_and(|unserved| unserved.is_empty());
    let knative_services = knative_served.then(|| {
        let api: Api<DynamicObject> = match &namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &knative),
            None => Api::all_with(client.clone(), &knative),
        };
        kept(KNATIVE_SERVICE_WATCH, watcher(api, config()), &health)
    });
    info!(provider = %ctx.settings.default_provider, metrics_server = %ctx.settings.metrics_server, "starting the Canary controller");
    // Every watch event that names Canaries notes when it woke them (`wakes`).
    let wakes = ctx.caches.wakes.clone();
    let (w1, w2, w3, w4, w5, w6) = (wakes.clone(), wakes.clone(), wakes.clone(), wakes.clone(), wakes.clone(), wakes);
    let canaries_woken = canary_wakes(canary_events.applied_objects()).inspect(move |event| {
        if let Ok(canary) = event {
            w1.woke(vec![ObjectRef::from_obj(canary)]);
        }
    });
    let mut controller = Controller::for_stream(objects_only(canaries_woken), store)
        .with_config(
            ControllerConfig::default()
                .debounce(Duration::from_millis(100))
                .concurrency(ctx.settings.max_concurrent_reconciles),
        )
        .watches_stream(objects_only(deployments.touched_objects()), move |d: Deployment| {
            w2.woke(canaries_for_deployment(&by_deployment, &d))
        })
        .watches_stream(objects_only(daemon_sets.touched_objects()), move |d: PartialObjectMeta<DaemonSet>| {
            w3.woke(canaries_for_deployment(&by_daemon_set, &d))
        })
        .watches_stream(objects_only(configmaps.touched_objects()), move |cm: PartialObjectMeta<ConfigMap>| {
            w4.woke(canaries_tracking(&s2, cm.namespace(), format!("configmap/{}", cm.name_any())))
        })
        .watches_stream(objects_only(secrets.touched_objects()), move |s: PartialObjectMeta<Secret>| {
            w5.woke(canaries_tracking(&s3, s.namespace(), format!("secret/{}", s.name_any())))
        })
        .watches_stream(objects_only(templates.touched_objects()), move |t: MetricTemplate| {
            w6.woke(canaries_using_template(&s4, t.namespace(), &t.name_any()))
        })
        .owns_stream(objects_only(services.touched_objects()))
        // A shard taken over (its holder died or stopped): its Canaries now pass the
        // guard in reconcile, and are picked up at once rather than at their next change.
        .reconcile_all_on(ctx.shards.acquisitions());
    if let Some(knative_services) = knative_services {
        let wakes = ctx.caches.wakes.clone();
        controller = controller.watches_stream_with(
            objects_only(knative_services.touched_objects()),
            move |s| wakes.woke(canaries_for_knative_service(&by_knative_service, &s)),
            knative,
        );
    }
    let events = ctx.events.clone();
    let controller = controller
        .graceful_shutdown_on(shutdown.requested())
        .run(reconcile_as_task, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "controller stream error");
            }
        });
    crate::shutdown::run_controller(controller, &ready_store, &shutdown).await;
    telemetry.abort();
    identity.abort();
    if let Some(traffic) = traffic {
        traffic.abort();
    }
    forget.abort();
    alert_providers.abort();
    events.drain(crate::events::DRAIN_ON_SHUTDOWN).await;
    info!("Canary controller stopped");
    Ok(())
}

/// The provider a Canary uses: its own, or the operator's default.
pub(crate) fn provider_of(
    canary: &Canary,
    settings: &Settings,
) -> Result<Provider, crate::core::provider::UnknownProvider> {
    Provider::parse(canary.spec.provider.as_deref().unwrap_or(&settings.default_provider))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::test_support::canary;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A Deployment as the API server serves it, with what the cache may drop.
    fn served_deployment(name: &str, owner: Option<&str>) -> Deployment {
        let mut deployment: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "apps", "resourceVersion": "42", "uid": format!("uid-{name}"),
                "labels": {"app": name}, "annotations": {"team": "web"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "app", "image": "podinfo:6.0.0"}]}}},
            "status": {"replicas": 2, "readyReplicas": 2},
        }))
        .unwrap();
        if let Some(owner) = owner {
            deployment.metadata.owner_references = Some(vec![OwnerReference {
                api_version: Canary::api_version(&()).into(),
                kind: Canary::kind(&()).into(),
                name: owner.into(),
                uid: format!("uid-{owner}"),
                controller: Some(true),
                ..Default::default()
            }]);
        }
        deployment
    }

    /// The Deployment watch keeps whole what a Canary reads (its target, `<target>-primary`,
    /// what a Canary owns), a re-list of the Canaries in progress included, and the rest
    /// by the metadata that wakes Canaries.
    #[test]
    fn deployments_no_canary_reads_are_kept_by_their_metadata() {
        let canaries = CanaryCache::default();
        let kept = |canaries: &CanaryCache, name: &str, owner: Option<&str>| {
            let mut deployment = served_deployment(name, owner);
            canaries.keep_unread_by_metadata(&mut deployment);
            deployment
        };
        assert!(!is_whole_deployment(&kept(&canaries, "podinfo", None)), "no Canary yet");

        canaries.follow(&Ok(watcher::Event::Apply(canary("podinfo"))));
        for name in ["podinfo", "podinfo-primary"] {
            assert_eq!(kept(&canaries, name, None), served_deployment(name, None), "{name} is read: whole");
        }
        assert_eq!(kept(&canaries, "sidecar", Some("podinfo")), served_deployment("sidecar", Some("podinfo")), "owned");

        let unread = kept(&canaries, "frontend", None);
        assert!(!is_whole_deployment(&unread));
        assert_eq!(unread.status, None);
        let served = served_deployment("frontend", None);
        assert_eq!(
            (
                &unread.metadata.name,
                &unread.metadata.namespace,
                &unread.metadata.resource_version,
                &unread.metadata.uid
            ),
            (
                &served.metadata.name,
                &served.metadata.namespace,
                &served.metadata.resource_version,
                &served.metadata.uid
            )
        );
        assert_eq!((unread.metadata.labels, unread.metadata.annotations), (None, None));
        assert!(kept(&canaries, "podinfo-canary", None).spec.is_none(), "only the primary's suffix counts");
        let elsewhere = {
            let mut deployment = served_deployment("podinfo", None);
            deployment.metadata.namespace = Some("other".into());
            canaries.keep_unread_by_metadata(&mut deployment);
            deployment
        };
        assert!(!is_whole_deployment(&elsewhere), "a target is named within the Canary's namespace");

        // A re-list after a restart of the watch: the Canaries listed so far count before it ends.
        let relisting = CanaryCache::default();
        relisting.follow(&Ok(watcher::Event::Init));
        relisting.follow(&Ok(watcher::Event::InitApply(canary("podinfo"))));
        assert!(is_whole_deployment(&kept(&relisting, "podinfo", None)));
        relisting.follow(&Ok(watcher::Event::InitDone));
        assert!(is_whole_deployment(&kept(&relisting, "podinfo", None)));
        relisting.follow(&Ok(watcher::Event::Delete(canary("podinfo"))));
        assert!(!is_whole_deployment(&kept(&relisting, "podinfo", None)), "its Canary deleted");
    }

    /// Two reconciles polled from one task (as kube-runtime's controller polls them) run
    /// on both worker threads at once: each blocks its thread until the other has
    /// started, which polled in place never happens (the first gives up after its wait).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reconciles_polled_from_one_task_run_in_parallel() {
        let started = Arc::new(AtomicUsize::new(0));
        let busy_until_both_started = |started: Arc<AtomicUsize>| async move {
            started.fetch_add(1, Ordering::SeqCst);
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while started.load(Ordering::SeqCst) < 2 && std::time::Instant::now() < deadline {
                std::hint::spin_loop();
            }
            let both = started.load(Ordering::SeqCst) == 2;
            Ok(if both { Action::await_change() } else { Action::requeue(Duration::from_secs(1)) })
        };
        let (a, b) = futures::join!(
            as_task(busy_until_both_started(started.clone())),
            as_task(busy_until_both_started(started.clone()))
        );
        assert_eq!((a.unwrap(), b.unwrap()), (Action::await_change(), Action::await_change()));
    }

    /// What kube-runtime holds for a reconcile in flight is the task's handle, not the
    /// reconcile's state again (an `async fn` taking the reconcile kept room for it).
    #[tokio::test]
    async fn a_reconcile_in_flight_is_held_once() {
        let large = async {
            let state = [1u8; 16 << 10];
            tokio::task::yield_now().await;
            Ok(if state.iter().all(|b| *b == 1) { Action::await_change() } else { Action::requeue(Duration::ZERO) })
        };
        let held = as_task(large);
        let bytes = std::mem::size_of_val(&held);
        assert!(bytes <= 64, "the future kube-runtime holds is {bytes} bytes");
        assert_eq!(held.await.unwrap(), Action::await_change());
    }

    /// With a bound of 1 the second initialization is not even made until the first ends,
    /// so what waits is a few hundred bytes, not a reconcile; without a bound both start.
    #[tokio::test]
    async fn an_initialization_waits_for_a_permit_before_its_reconcile_exists() {
        let made = Arc::new(AtomicUsize::new(0));
        let (release_first, first_released) = tokio::sync::oneshot::channel::<()>();
        let gate = ReconcileGate::new(1);
        let first = gate.start({
            let made = made.clone();
            move || {
                made.fetch_add(1, Ordering::SeqCst);
                async move {
                    let _ = first_released.await;
                    Ok(Action::await_change())
                }
            }
        });
        let second = gate.start({
            let made = made.clone();
            move || {
                made.fetch_add(1, Ordering::SeqCst);
                async move {
                    let state = [1u8; 16 << 10];
                    tokio::task::yield_now().await;
                    Ok(if state.iter().all(|b| *b == 1) {
                        Action::requeue(Duration::from_secs(1))
                    } else {
                        Action::await_change()
                    })
                }
            }
        });
        let bytes = std::mem::size_of_val(&second);
        assert!(bytes <= 256, "a waiting reconcile is held in {bytes} bytes");
        let (first, mut second) = (tokio::spawn(first), tokio::spawn(second));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(made.load(Ordering::SeqCst), 1, "the second waits for the first's permit");
        assert!(tokio::time::timeout(Duration::from_millis(20), &mut second).await.is_err());
        release_first.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), Action::await_change());
        assert_eq!(second.await.unwrap().unwrap(), Action::requeue(Duration::from_secs(1)));
        assert_eq!(made.load(Ordering::SeqCst), 2);

        let unbounded = ReconcileGate::new(0);
        let (hold, held) = tokio::sync::oneshot::channel::<()>();
        let waiting = tokio::spawn(unbounded.start(move || async move {
            let _ = held.await;
            Ok(Action::await_change())
        }));
        let other = unbounded.start(|| async { Ok(Action::requeue(Duration::ZERO)) });
        assert_eq!(other.await.unwrap(), Action::requeue(Duration::ZERO), "no bound: nothing waits");
        hold.send(()).unwrap();
        waiting.await.unwrap().unwrap();
    }

    /// Only Canaries not yet initialized pass the initialization gate: a full gate never
    /// holds up the detection of a release or an analysis.
    #[tokio::test]
    async fn only_initializations_wait_at_the_initialization_gate() {
        use crate::api::{CanaryStatus, Phase};
        let full = ReconcileGate::new(1);
        let _taken = full.permits.clone().unwrap().acquire_owned().await.unwrap();
        let with_phase = |phase: Option<Phase>| {
            let mut c = canary("podinfo");
            c.status = phase.map(|phase| CanaryStatus { phase, ..CanaryStatus::default() });
            c
        };
        for phase in [None, Some(Phase::Initializing)] {
            let waits = gate_for(&with_phase(phase), &full).start(|| async { Ok(Action::await_change()) });
            assert!(tokio::time::timeout(Duration::from_millis(20), waits).await.is_err(), "{phase:?} waits");
        }
        for phase in Phase::ALL.into_iter().filter(|p| *p != Phase::Initializing) {
            let passes = gate_for(&with_phase(Some(phase)), &full).start(|| async { Ok(Action::await_change()) });
            let done = tokio::time::timeout(Duration::from_secs(5), passes).await;
            assert_eq!(done.unwrap_or_else(|_| panic!("{phase:?} waited")).unwrap(), Action::await_change());
        }
    }

    /// A reconcile that panics fails like any other (retried by the error policy), and
    /// one dropped (the controller stopped hard) is cancelled, not left running.
    #[tokio::test]
    async fn a_panicking_reconcile_is_an_error_and_a_dropped_one_stops() {
        let panicked = as_task(async { panic!("a bug") }).await;
        assert!(matches!(&panicked, Err(Error::Stopped { message }) if message.contains("panicked")), "{panicked:?}");

        struct Dropped(Arc<AtomicUsize>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicUsize::new(0));
        let guard = Dropped(dropped.clone());
        let pending = as_task(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            Ok(Action::await_change())
        });
        assert!(tokio::time::timeout(Duration::from_millis(50), pending).await.is_err());
        for _ in 0..100 {
            if dropped.load(Ordering::SeqCst) == 1 {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the reconcile's task still runs after its handle was dropped");
    }

    fn at(generation: i64) -> Canary {
        let mut canary = canary("podinfo");
        canary.metadata.uid = Some("6f1c".into());
        canary.metadata.generation = Some(generation);
        canary
    }

    /// petrel's own status write must not wake the Canary again: that reconcile read the
    /// target, the primary and the Services for nothing (half of a release's requests).
    #[tokio::test]
    async fn a_status_change_wakes_no_reconcile_but_spec_and_annotations_do() {
        let initial = at(1);
        let mut status_written = at(1);
        status_written.metadata.resource_version = Some("2".into());
        status_written.status = Some(crate::api::CanaryStatus { failed_checks: 1, ..Default::default() });
        let mut approved = status_written.clone();
        approved.metadata.annotations = Some([("petrel.dev/approved".to_string(), "r2".to_string())].into());
        let mut edited = approved.clone();
        edited.metadata.generation = Some(2);
        let mut deleted = edited.clone();
        deleted.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        let mut recreated = at(1);
        recreated.metadata.uid = Some("90ab".into());

        let events = [initial, status_written, approved, edited, deleted, recreated];
        let woken: Vec<Canary> =
            canary_wakes(futures::stream::iter(events.map(Ok))).map(Result::unwrap).collect().await;
        let seen: Vec<(Option<i64>, bool, bool, Option<String>)> = woken
            .iter()
            .map(|c| {
                let m = &c.metadata;
                (m.generation, m.annotations.is_some(), m.deletion_timestamp.is_some(), m.uid.clone())
            })
            .collect();
        let uid = |u: &str| Some(u.to_string());
        assert_eq!(
            seen,
            [
                (Some(1), false, false, uid("6f1c")),
                (Some(1), true, false, uid("6f1c")),
                (Some(2), true, false, uid("6f1c")),
                (Some(2), true, true, uid("6f1c")),
                (Some(1), false, false, uid("90ab")),
            ],
            "the status-only change is the one event left out"
        );
    }
}
