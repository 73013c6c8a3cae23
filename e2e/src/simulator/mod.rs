//! A traffic simulator: an independent witness of the routing petrel
//! writes, and the source of the metrics its analysis judges.
//!
//! For each app under test it reads, every tick, the route object petrel
//! writes (through a [`RouteSource`]: the cluster, or a fixed split in
//! tests), deals a fixed request rate out between the primary and canary
//! Deployments exactly as the route says, answers each request with the
//! error rate and latency configured for the *version* (container image)
//! the Deployment runs, and serves the resulting counts on `/metrics` in the
//! shape of the app's provider (see [`exposition`]), for Prometheus to
//! scrape. [`RouteRecorder`] watches a route object and keeps every split
//! it ever had, for assertions over a whole release.
//!
//! HTTP endpoints (on [`Simulator::addr`]):
//! - `GET /metrics`: Prometheus text format;
//! - `PUT /versions/<image>` with `{"errorRate": 0.2, "latencyMs": 500}`
//!   (and optional `"errorStatus": 503`): how that version behaves;
//!   `DELETE /versions/<image>` forgets it; `GET /versions` lists them;
//! - `GET /apps`: each app's current split, images and request totals.
//!
//! Besides its anonymous traffic (a [`TrafficProfile`], which keeps no cookies), an app
//! may have a pool of cookie-keeping clients ([`App::sessions`], see [`sessions`]), whose
//! requests follow session affinity's cookies; [`SimulatorHandle::sessions`] gives their
//! logs.

mod cache_source;
pub mod exposition;
mod kube_source;
mod recorder;
pub mod routes;
mod server;
pub mod sessions;
pub mod split;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::wait::poll;

pub use cache_source::NamespaceCache;
pub use exposition::{AppLabels, AppStats};
pub use kube_source::KubeRouteSource;
pub use recorder::{RecordedSplit, RouteRecorder};
pub use routes::Provider;
pub use sessions::{AffinityReport, CookieJar, SessionLog, SessionProfile, SessionRequest};
pub use split::{
    Dispatch, Dispatcher, HeaderMatch, HeaderRule, HeaderValueMatch, Routed, SetCookies, Side, Split, TrafficProfile,
    Weights,
};

/// Why the simulator could not do something.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A Kubernetes API call failed.
    #[error("{action}: {source}")]
    Kube {
        /// What the simulator was doing.
        action: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A route object could not be understood.
    #[error("reading {object}: {source}")]
    Route {
        /// `<kind> <namespace>/<name>`.
        object: String,
        /// What is wrong with it.
        #[source]
        source: routes::RouteShapeError,
    },
    /// The route kind is not served by the cluster.
    #[error("{kind} ({group}) is not served by the API server; install its CRD before watching it")]
    KindNotServed {
        /// API group.
        group: String,
        /// Kind.
        kind: String,
    },
    /// The control endpoint could not listen.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// Address asked for.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// No app with this name.
    #[error("no simulated app {0:?}")]
    UnknownApp(String),
    /// Two apps with the same namespace and Canary name.
    #[error(
        "app {0} is simulated twice; petrel's queries do not select by cluster, so run one Simulator (and one Prometheus) per cluster"
    )]
    DuplicateApp(String),
    /// A behaviour outside its range.
    #[error("invalid version behaviour: {0}")]
    InvalidBehaviour(String),
    /// A wait ran out of time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
}

/// How a version (a container image) answers requests.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionBehaviour {
    /// Fraction (0–1) of requests answered with `error_status`.
    #[serde(default)]
    pub error_rate: f64,
    /// Latency of every request, milliseconds.
    #[serde(default = "default_latency_ms")]
    pub latency_ms: f64,
    /// Status code of failed requests.
    #[serde(default = "default_error_status")]
    pub error_status: u16,
}

fn default_latency_ms() -> f64 {
    20.0
}

fn default_error_status() -> u16 {
    500
}

impl Default for VersionBehaviour {
    fn default() -> Self {
        VersionBehaviour { error_rate: 0.0, latency_ms: default_latency_ms(), error_status: default_error_status() }
    }
}

impl VersionBehaviour {
    /// A version failing `error_rate` (0–1) of requests with 500 and taking
    /// `latency_ms` per request.
    pub fn new(error_rate: f64, latency_ms: f64) -> Self {
        VersionBehaviour { error_rate, latency_ms, ..VersionBehaviour::default() }
    }

    fn validate(&self) -> Result<(), SimError> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(SimError::InvalidBehaviour(format!(
                "errorRate {} is not a fraction between 0 and 1",
                self.error_rate
            )));
        }
        if !(self.latency_ms.is_finite() && self.latency_ms >= 0.0) {
            return Err(SimError::InvalidBehaviour(format!(
                "latencyMs {} is not a non-negative number",
                self.latency_ms
            )));
        }
        if !(100..=599).contains(&self.error_status) {
            return Err(SimError::InvalidBehaviour(format!("errorStatus {} is not an HTTP status", self.error_status)));
        }
        Ok(())
    }
}

/// Behaviour per image, with a default for images not listed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VersionTable {
    /// Keyed by image reference, or a suffix of one after a `/`
    /// (`podinfo:6.0.1` matches `ghcr.io/stefanprodan/podinfo:6.0.1`).
    pub versions: BTreeMap<String, VersionBehaviour>,
    /// For images matching no key.
    pub default: VersionBehaviour,
}

impl VersionTable {
    /// How `image` behaves: the longest matching key wins.
    pub fn behaviour_for(&self, image: &str) -> VersionBehaviour {
        self.versions
            .iter()
            .filter(|(key, _)| image_matches(image, key))
            .max_by_key(|(key, _)| key.len())
            .map_or(self.default, |(_, b)| *b)
    }
}

/// Whether `key` names `image`: the whole reference, or a suffix of it after a `/`
/// (`podinfo:6.0.1` names `ghcr.io/stefanprodan/podinfo:6.0.1`).
pub fn image_matches(image: &str, key: &str) -> bool {
    image == key || image.strip_suffix(key).is_some_and(|registry| registry.ends_with('/'))
}

/// Identity of one app under test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppCoords {
    /// Namespace of the Canary and its objects.
    pub namespace: String,
    /// Name of the Canary.
    pub canary: String,
    /// Target Deployment (`spec.targetRef.name`).
    pub target: String,
    /// Service name (`spec.service.name`).
    pub service: String,
    /// `spec.provider`.
    pub provider: Provider,
    /// `spec.ingressRef.name` (NGINX, Skipper).
    pub ingress: Option<String>,
    /// `spec.routeRef.name` (APISIX).
    pub route: Option<String>,
    /// `spec.service.port`.
    pub port: u16,
}

impl AppCoords {
    /// An app whose Canary, target and Service all have `name`, on port
    /// 9898 (podinfo's).
    pub fn new(namespace: &str, name: &str, provider: Provider) -> Self {
        AppCoords {
            namespace: namespace.to_owned(),
            canary: name.to_owned(),
            target: name.to_owned(),
            service: name.to_owned(),
            provider,
            ingress: None,
            route: None,
            port: 9898,
        }
    }

    /// `namespace/canary`, the app's name in the simulator.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.canary)
    }

    /// Name of the route object petrel writes.
    pub fn route_name(&self) -> String {
        match self.provider {
            Provider::Apisix => {
                format!("{}-{}-canary", self.route.as_deref().unwrap_or(&self.service), self.service)
            }
            // The Knative Service itself carries the split.
            Provider::Knative => self.target.clone(),
            _ => routes::route_object_name(self.provider, &self.service, self.ingress.as_deref()),
        }
    }

    fn labels(&self) -> AppLabels {
        AppLabels {
            namespace: self.namespace.clone(),
            target: self.target.clone(),
            service: self.service.clone(),
            ingress: self.ingress.clone(),
            route: self.route.clone(),
            port: self.port,
            provider: self.provider,
        }
    }
}

/// One Deployment as the simulator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadState {
    /// Image of its first container: the version.
    pub image: String,
    /// Ready, not terminating Pods; requests are spread over them. None:
    /// requests routed here are lost, as a proxy would answer 503 itself.
    pub pods: Vec<String>,
}

/// What a [`RouteSource`] reports each tick.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Observation {
    /// The split to apply (already defaulted when there is no route).
    pub split: Split,
    /// `<target>-primary`, if it exists.
    pub primary: Option<WorkloadState>,
    /// `<target>`, if it exists.
    pub canary: Option<WorkloadState>,
}

impl Observation {
    /// The state of `side`'s Deployment.
    pub fn workload(&self, side: Side) -> Option<&WorkloadState> {
        match side {
            Side::Primary => self.primary.as_ref(),
            Side::Canary => self.canary.as_ref(),
        }
    }
}

/// Where the simulator learns the split and the versions each tick.
pub trait RouteSource: Send + Sync + 'static {
    /// The current split and Deployments.
    fn observe(&self) -> BoxFuture<'_, Result<Observation, SimError>>;
}

/// A source that reports whatever it was last given: for tests that need
/// no cluster.
#[derive(Debug, Default)]
pub struct StaticSource {
    observation: Mutex<Observation>,
}

impl StaticSource {
    /// A source reporting `observation` until told otherwise.
    pub fn new(observation: Observation) -> Arc<Self> {
        Arc::new(StaticSource { observation: Mutex::new(observation) })
    }

    /// A source for `coords` with the given split, images and `pods` fake
    /// Pod names per Deployment (named like ReplicaSet Pods).
    pub fn fixed(coords: &AppCoords, split: Split, primary_image: &str, canary_image: &str, pods: usize) -> Arc<Self> {
        let workload = |side: Side, image: &str| WorkloadState {
            image: image.to_owned(),
            pods: (0..pods).map(|i| format!("{}-5f6d7c8b9-sim{i}", side.workload(&coords.target))).collect(),
        };
        StaticSource::new(Observation {
            split,
            primary: Some(workload(Side::Primary, primary_image)),
            canary: Some(workload(Side::Canary, canary_image)),
        })
    }

    /// Replaces the split.
    pub fn set_split(&self, split: Split) {
        lock(&self.observation).split = split;
    }

    /// Replaces the whole observation.
    pub fn set_observation(&self, observation: Observation) {
        *lock(&self.observation) = observation;
    }
}

impl RouteSource for StaticSource {
    fn observe(&self) -> BoxFuture<'_, Result<Observation, SimError>> {
        let observation = lock(&self.observation).clone();
        Box::pin(async move { Ok(observation) })
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked
/// (counters and snapshots, each updated in one assignment).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One app to simulate.
pub struct App {
    /// Who it is.
    pub coords: AppCoords,
    /// The requests it receives.
    pub profile: TrafficProfile,
    /// Where its split comes from.
    pub source: Arc<dyn RouteSource>,
    /// Cookie-keeping clients, besides the profile's anonymous requests.
    pub sessions: Option<SessionProfile>,
}

impl App {
    /// An app reading its route and Deployments from a cluster.
    pub fn from_cluster(client: kube::Client, coords: AppCoords) -> Self {
        App {
            source: Arc::new(KubeRouteSource::new(client, coords.clone())),
            coords,
            profile: TrafficProfile::default(),
            sessions: None,
        }
    }

    /// An app with any source, e.g. a [`StaticSource`].
    pub fn with_source(coords: AppCoords, source: Arc<dyn RouteSource>) -> Self {
        App { coords, profile: TrafficProfile::default(), source, sessions: None }
    }

    /// Sets the request profile.
    pub fn profile(mut self, profile: TrafficProfile) -> Self {
        self.profile = profile;
        self
    }

    /// Adds a pool of cookie-keeping clients (see [`sessions`]); their requests are
    /// served and counted like the profile's.
    pub fn sessions(mut self, sessions: SessionProfile) -> Self {
        self.sessions = Some(sessions);
        self
    }
}

/// Simulator settings.
#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    /// Where to serve `/metrics` and the control endpoints; port 0 picks
    /// a free port.
    pub listen: SocketAddr,
    /// How often each app's route is read and requests are generated
    /// (250–500 ms keeps a 1 s scrape smooth).
    pub tick: Duration,
    /// Behaviour of versions not configured.
    pub default_behaviour: VersionBehaviour,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tick: Duration::from_millis(500),
            default_behaviour: VersionBehaviour::default(),
        }
    }
}

/// What the simulator knows about one app right now.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppSnapshot {
    /// Identity.
    pub coords: AppCoords,
    /// Last successful observation (`None` before the first).
    pub observation: Option<Observation>,
    /// Requests served by the primary: (all, 5xx).
    pub primary_requests: (u64, u64),
    /// Requests served by the canary, mirrored included: (all, 5xx).
    pub canary_requests: (u64, u64),
    /// Requests no pod served.
    pub unrouted_requests: u64,
    /// Requests served per version (image): (all, 5xx).
    pub requests_by_version: BTreeMap<String, (u64, u64)>,
    /// Failed observations so far.
    pub observe_failures: u64,
    /// The last failure's message.
    pub last_observe_error: Option<String>,
}

impl AppSnapshot {
    /// Every request the app received: served by either side, or by no pod.
    pub fn total_requests(&self) -> u64 {
        self.primary_requests.0 + self.canary_requests.0 + self.unrouted_requests
    }

    /// Requests served by the versions `image` names (see [`image_matches`]).
    pub fn requests_served_by(&self, image: &str) -> u64 {
        self.requests_by_version.iter().filter(|(served, _)| image_matches(served, image)).map(|(_, c)| c.0).sum()
    }
}

struct AppRuntime {
    profile: TrafficProfile,
    sessions: Option<sessions::SessionPool>,
    stats: AppStats,
    observation: Option<Observation>,
    observe_failures: u64,
    last_observe_error: Option<String>,
}

struct AppShared {
    coords: AppCoords,
    labels: AppLabels,
    runtime: Mutex<AppRuntime>,
}

struct Shared {
    versions: Mutex<VersionTable>,
    /// The apps simulated now; [`Simulator::add_app`] and [`Simulator::remove_app`]
    /// change them while the simulator runs.
    apps: Mutex<Vec<Arc<AppShared>>>,
    /// How often each app's route is read.
    tick: Duration,
}

impl Shared {
    fn apps(&self) -> Vec<Arc<AppShared>> {
        lock(&self.apps).clone()
    }

    fn app(&self, key: &str) -> Result<Arc<AppShared>, SimError> {
        self.apps()
            .into_iter()
            .find(|a| a.coords.key() == key || a.coords.canary == key)
            .ok_or_else(|| SimError::UnknownApp(key.to_owned()))
    }

    fn metrics_text(&self) -> String {
        let apps = self.apps();
        let runtimes: Vec<_> = apps.iter().map(|a| (a, lock(&a.runtime).stats.clone())).collect();
        let pairs: Vec<(&AppLabels, &AppStats)> = runtimes.iter().map(|(a, s)| (&a.labels, s)).collect();
        exposition::render(&pairs)
    }

    fn snapshots(&self) -> Vec<AppSnapshot> {
        self.apps()
            .iter()
            .map(|a| {
                let rt = lock(&a.runtime);
                AppSnapshot {
                    coords: a.coords.clone(),
                    observation: rt.observation.clone(),
                    primary_requests: rt.stats.totals(Side::Primary),
                    canary_requests: rt.stats.totals(Side::Canary),
                    unrouted_requests: rt.stats.unrouted,
                    requests_by_version: rt.stats.by_version.clone(),
                    observe_failures: rt.observe_failures,
                    last_observe_error: rt.last_observe_error.clone(),
                }
            })
            .collect()
    }

    fn set_version(&self, image: &str, behaviour: VersionBehaviour) -> Result<(), SimError> {
        behaviour.validate()?;
        lock(&self.versions).versions.insert(image.to_owned(), behaviour);
        Ok(())
    }
}

/// A cheap, cloneable handle to a running simulator's controls.
#[derive(Clone)]
pub struct SimulatorHandle {
    shared: Arc<Shared>,
}

impl SimulatorHandle {
    /// Sets how `image` behaves (see [`VersionTable`] for matching).
    pub fn set_version(&self, image: &str, behaviour: VersionBehaviour) -> Result<(), SimError> {
        self.shared.set_version(image, behaviour)
    }

    /// Forgets `image`'s behaviour; it behaves as the default again.
    pub fn clear_version(&self, image: &str) {
        lock(&self.shared.versions).versions.remove(image);
    }

    /// Sets the request profile of app `key` (`namespace/canary`, or the
    /// Canary name alone).
    pub fn set_profile(&self, key: &str, profile: TrafficProfile) -> Result<(), SimError> {
        lock(&self.shared.app(key)?.runtime).profile = profile;
        Ok(())
    }

    /// The current `/metrics` text.
    pub fn metrics_text(&self) -> String {
        self.shared.metrics_text()
    }

    /// The logs of app `key`'s cookie-keeping clients (empty without [`App::sessions`]),
    /// with the split they were last routed by (taken together, so that every request
    /// logged after this call is routed by that split or a newer one).
    pub fn sessions(&self, key: &str) -> Result<(Option<Split>, Vec<SessionLog>), SimError> {
        let app = self.shared.app(key)?;
        let mut rt = lock(&app.runtime);
        let split = rt.observation.as_ref().map(|o| o.split.clone());
        Ok((split, rt.sessions.as_mut().map(sessions::SessionPool::logs).unwrap_or_default()))
    }

    /// Every app's state.
    pub fn snapshots(&self) -> Vec<AppSnapshot> {
        self.shared.snapshots()
    }

    /// App `key`'s state.
    pub fn snapshot(&self, key: &str) -> Result<AppSnapshot, SimError> {
        let key = self.shared.app(key)?.coords.key();
        self.snapshots().into_iter().find(|s| s.coords.key() == key).ok_or(SimError::UnknownApp(key))
    }
}

/// A running simulator; stops when dropped.
pub struct Simulator {
    handle: SimulatorHandle,
    addr: SocketAddr,
    server: JoinHandle<()>,
    /// Each app's request generation, by app key.
    app_tasks: Mutex<BTreeMap<String, JoinHandle<()>>>,
}

impl Simulator {
    /// Binds the endpoint and starts simulating `apps`.
    ///
    /// One simulator (and one Prometheus) per cluster: each member's petrel
    /// queries its own Prometheus without a cluster selector, so apps of
    /// the same name in two clusters must not share an exposition.
    pub async fn start(config: SimulatorConfig, apps: Vec<App>) -> Result<Simulator, SimError> {
        config.default_behaviour.validate()?;
        let mut keys = std::collections::BTreeSet::new();
        if let Some(twice) = apps.iter().map(|a| a.coords.key()).find(|k| !keys.insert(k.clone())) {
            return Err(SimError::DuplicateApp(twice));
        }
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| SimError::Listen { addr: config.listen, source })?;
        let addr = listener.local_addr().map_err(|source| SimError::Listen { addr: config.listen, source })?;
        let shared = Arc::new(Shared {
            versions: Mutex::new(VersionTable { versions: BTreeMap::new(), default: config.default_behaviour }),
            apps: Mutex::new(Vec::new()),
            tick: config.tick,
        });
        let server = tokio::spawn(server::serve(listener, shared.clone()));
        let simulator =
            Simulator { handle: SimulatorHandle { shared }, addr, server, app_tasks: Mutex::new(BTreeMap::new()) };
        for app in apps {
            simulator.add_app(app)?;
        }
        Ok(simulator)
    }

    /// Where `/metrics` and the control endpoints are served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts simulating one more app (while the simulator runs).
    pub fn add_app(&self, app: App) -> Result<(), SimError> {
        let key = app.coords.key();
        let shared = &self.handle.shared;
        let state = {
            let mut apps = lock(&shared.apps);
            if apps.iter().any(|a| a.coords.key() == key) {
                return Err(SimError::DuplicateApp(key));
            }
            let state = Arc::new(AppShared {
                labels: app.coords.labels(),
                coords: app.coords,
                runtime: Mutex::new(AppRuntime {
                    profile: app.profile,
                    sessions: app.sessions.map(sessions::SessionPool::new),
                    stats: AppStats::default(),
                    observation: None,
                    observe_failures: 0,
                    last_observe_error: None,
                }),
            });
            apps.push(state.clone());
            state
        };
        let task = tokio::spawn(run_app(shared.clone(), state, app.source, shared.tick));
        lock(&self.app_tasks).insert(key, task);
        Ok(())
    }

    /// Stops simulating app `key` (`namespace/canary`); its series leave `/metrics`.
    pub fn remove_app(&self, key: &str) -> Result<(), SimError> {
        let shared = &self.handle.shared;
        let app = shared.app(key)?;
        let key = app.coords.key();
        lock(&shared.apps).retain(|a| a.coords.key() != key);
        if let Some(task) = lock(&self.app_tasks).remove(&key) {
            task.abort();
        }
        Ok(())
    }

    /// The controls.
    pub fn handle(&self) -> SimulatorHandle {
        self.handle.clone()
    }

    /// Sets how `image` behaves.
    pub fn set_version(&self, image: &str, behaviour: VersionBehaviour) -> Result<(), SimError> {
        self.handle.set_version(image, behaviour)
    }

    /// The current `/metrics` text.
    pub fn metrics_text(&self) -> String {
        self.handle.metrics_text()
    }

    /// App `key`'s state (`namespace/canary`, or the Canary name).
    pub fn snapshot(&self, key: &str) -> Result<AppSnapshot, SimError> {
        self.handle.snapshot(key)
    }

    /// App `key`'s cookie-keeping clients (see [`SimulatorHandle::sessions`]).
    pub fn sessions(&self, key: &str) -> Result<(Option<Split>, Vec<SessionLog>), SimError> {
        self.handle.sessions(key)
    }

    /// Waits until app `key` has made a first successful observation.
    pub async fn wait_observed(&self, key: &str, timeout: Duration) -> Result<AppSnapshot, SimError> {
        let mut why = None;
        let observed = poll(Instant::now() + timeout, Duration::from_millis(50), async || {
            let snapshot = self.snapshot(key)?;
            if snapshot.observation.is_some() {
                return Ok(Some(snapshot));
            }
            why = snapshot.last_observe_error;
            Ok(None)
        })
        .await?;
        observed.ok_or_else(|| {
            let why = why.unwrap_or_else(|| "no observation yet".into());
            SimError::Timeout(timeout, format!("a first observation of {key} ({why})"))
        })
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.server.abort();
        for task in lock(&self.app_tasks).values() {
            task.abort();
        }
    }
}

/// Per-app state of request generation that lives across ticks.
#[derive(Default)]
struct Generation {
    dispatcher: Dispatcher,
    /// Fractional errors owed per side, so a 20% error rate is exactly
    /// one request in five.
    errors_owed: BTreeMap<Side, f64>,
    /// Round-robin position over each side's Pods.
    next_pod: BTreeMap<Side, usize>,
}

async fn run_app(shared: Arc<Shared>, app: Arc<AppShared>, source: Arc<dyn RouteSource>, tick: Duration) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut generation = Generation::default();
    let mut last = Instant::now();
    loop {
        interval.tick().await;
        let observed = source.observe().await;
        let now = Instant::now();
        let elapsed = now - last;
        last = now;
        let versions = lock(&shared.versions).clone();
        let mut rt = lock(&app.runtime);
        match observed {
            Ok(observation) => rt.observation = Some(observation),
            Err(e) => {
                tracing::warn!(app = %app.coords.key(), error = %e, "traffic simulator could not read the route; keeping the last split");
                rt.observe_failures += 1;
                rt.last_observe_error = Some(e.to_string());
            }
        }
        let Some(observation) = rt.observation.clone() else {
            continue;
        };
        let profile = rt.profile.clone();
        let dispatch = generation.dispatcher.step(&observation.split, &profile, elapsed);
        let rt = &mut *rt;
        serve_requests(&mut rt.stats, &mut generation, &observation, &dispatch, &versions);
        if let Some(pool) = rt.sessions.as_mut() {
            let dispatch = pool.step(&observation.split, elapsed);
            serve_requests(&mut rt.stats, &mut generation, &observation, &dispatch, &versions);
        }
    }
}

/// Answers the dispatched requests: each side's version decides errors
/// and latency, and requests are spread over its Pods.
fn serve_requests(
    stats: &mut AppStats,
    generation: &mut Generation,
    observation: &Observation,
    dispatch: &Dispatch,
    versions: &VersionTable,
) {
    stats.unrouted += dispatch.unrouted;
    for side in Side::BOTH {
        let requests = dispatch.served_by(side);
        if requests == 0 {
            continue;
        }
        let Some(workload) = observation.workload(side).filter(|w| !w.pods.is_empty()) else {
            stats.unrouted += requests;
            continue;
        };
        let behaviour = versions.behaviour_for(&workload.image);
        let owed = generation.errors_owed.entry(side).or_insert(0.0);
        *owed += requests as f64 * behaviour.error_rate;
        let errors = (owed.floor() as u64).min(requests);
        *owed -= errors as f64;
        stats.record_version(&workload.image, requests, errors);
        let pods = workload.pods.len();
        let start = generation.next_pod.entry(side).or_insert(0);
        for (code, count) in [(200u16, requests - errors), (behaviour.error_status, errors)] {
            // Spread `count` over the pods, the remainder continuing where
            // the last batch stopped.
            let (each, extra) = (count / pods as u64, (count % pods as u64) as usize);
            for offset in 0..pods {
                let pod = &workload.pods[(*start + offset) % pods];
                let n = each + u64::from(offset < extra);
                stats.record(side, pod, code, n, behaviour.latency_ms);
            }
            *start = (*start + extra) % pods;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_lookup_by_reference_suffix() {
        let mut table = VersionTable::default();
        table.versions.insert("podinfo:6.0.1".into(), VersionBehaviour::new(0.2, 500.0));
        table.versions.insert("ghcr.io/stefanprodan/podinfo:6.0.1".into(), VersionBehaviour::new(0.5, 100.0));
        assert_eq!(table.behaviour_for("ghcr.io/stefanprodan/podinfo:6.0.1"), VersionBehaviour::new(0.5, 100.0));
        assert_eq!(table.behaviour_for("docker.io/podinfo:6.0.1"), VersionBehaviour::new(0.2, 500.0));
        assert_eq!(table.behaviour_for("podinfo:6.0.1"), VersionBehaviour::new(0.2, 500.0));
        assert_eq!(table.behaviour_for("mypodinfo:6.0.1"), VersionBehaviour::default());
        assert_eq!(table.behaviour_for("podinfo:6.0.10"), VersionBehaviour::default());
    }

    #[test]
    fn behaviour_json_and_validation() {
        let b: VersionBehaviour = serde_json::from_str(r#"{"errorRate": 0.2, "latencyMs": 500}"#).unwrap();
        assert_eq!(b, VersionBehaviour::new(0.2, 500.0));
        assert!(VersionBehaviour::new(20.0, 1.0).validate().is_err());
        assert!(VersionBehaviour::new(0.1, -1.0).validate().is_err());
    }

    #[test]
    fn serving_applies_error_rate_exactly_and_spreads_over_pods() {
        let coords = AppCoords::new("test", "podinfo", Provider::Istio);
        let mut observation = StaticSource::fixed(&coords, Split::weighted(50, 50), "podinfo:1", "podinfo:2", 2)
            .observation
            .lock()
            .unwrap()
            .clone();
        let mut versions = VersionTable::default();
        versions.versions.insert("podinfo:2".into(), VersionBehaviour::new(0.2, 300.0));
        let mut stats = AppStats::default();
        let mut generation = Generation::default();
        for _ in 0..10 {
            let dispatch = Dispatch { primary: 7, canary: 7, ..Dispatch::default() };
            serve_requests(&mut stats, &mut generation, &observation, &dispatch, &versions);
        }
        assert_eq!(stats.totals(Side::Canary), (70, 14));
        assert_eq!(stats.totals(Side::Primary), (70, 0));
        assert_eq!(stats.by_version, BTreeMap::from([("podinfo:1".into(), (70, 0)), ("podinfo:2".into(), (70, 14))]));
        let per_pod: Vec<u64> =
            stats.series.iter().filter(|(k, _)| k.side == Side::Primary).map(|(_, h)| h.count).collect();
        assert_eq!(per_pod, vec![35, 35]);

        // No ready pods: the requests are lost, not invented.
        observation.canary.as_mut().unwrap().pods.clear();
        let dispatch = Dispatch { canary: 5, ..Dispatch::default() };
        serve_requests(&mut stats, &mut generation, &observation, &dispatch, &versions);
        assert_eq!(stats.unrouted, 5);
        assert_eq!(stats.totals(Side::Canary), (70, 14));
    }

    #[tokio::test]
    async fn the_same_app_twice_is_refused() {
        let coords = AppCoords::new("test", "podinfo", Provider::Istio);
        let source = StaticSource::fixed(&coords, Split::default(), "a", "b", 1);
        let apps = vec![App::with_source(coords.clone(), source.clone()), App::with_source(coords, source)];
        let err = Simulator::start(SimulatorConfig::default(), apps).await.err().unwrap();
        assert!(matches!(err, SimError::DuplicateApp(ref k) if k == "test/podinfo"), "{err}");
    }

    #[tokio::test]
    async fn simulator_serves_metrics_and_takes_versions_over_http() {
        let coords = AppCoords::new("test", "podinfo", Provider::Istio);
        let source = StaticSource::fixed(&coords, Split::weighted(0, 100), "podinfo:1", "podinfo:2", 1);
        let sim = Simulator::start(
            SimulatorConfig { tick: Duration::from_millis(20), ..SimulatorConfig::default() },
            vec![
                App::with_source(coords, source)
                    .profile(TrafficProfile { requests_per_second: 1000.0, ..TrafficProfile::default() }),
            ],
        )
        .await
        .unwrap();
        let client = reqwest::Client::new();
        let base = format!("http://{}", sim.addr());
        let put = client
            .put(format!("{base}/versions/podinfo:2"))
            .json(&serde_json::json!({"errorRate": 1.0, "latencyMs": 250}))
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), reqwest::StatusCode::NO_CONTENT);
        let bad = client
            .put(format!("{base}/versions/podinfo:2"))
            .json(&serde_json::json!({"errorRate": 20}))
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), reqwest::StatusCode::BAD_REQUEST);
        let mut text = String::new();
        let series = poll(Instant::now() + Duration::from_secs(5), Duration::from_millis(50), async || {
            text = client.get(format!("{base}/metrics")).send().await?.text().await?;
            Ok::<_, reqwest::Error>(
                text.contains(
                    r#"destination_workload="podinfo",destination_service_name="podinfo-canary",response_code="500"} "#,
                )
                .then_some(()),
            )
        })
        .await
        .unwrap();
        assert!(series.is_some(), "no 5xx series for the canary in:\n{text}");
        let apps: serde_json::Value = client.get(format!("{base}/apps")).send().await.unwrap().json().await.unwrap();
        assert_eq!(apps[0]["coords"]["canary"], "podinfo");
        assert!(apps[0]["canaryRequests"][0].as_u64().unwrap() > 0);
        assert_eq!(apps[0]["primaryRequests"][0].as_u64(), Some(0));
        assert!(apps[0]["requestsByVersion"]["podinfo:2"][0].as_u64().unwrap() > 0);
        let snapshot = sim.snapshot("podinfo").unwrap();
        assert_eq!(snapshot.requests_served_by("podinfo:2"), snapshot.total_requests(), "all on the canary's version");
        assert_eq!(snapshot.requests_served_by("podinfo:1"), 0);
    }
}
