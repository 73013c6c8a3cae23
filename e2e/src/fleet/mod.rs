//! A fleet of real Kubernetes control planes on loopback.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use petrel_e2e::fleet::{Fleet, FleetOptions};
//! let fleet = Fleet::start(FleetOptions::new(
//!     "/tmp/petrel-fleet",
//!     ["hub", "member-1", "member-2", "member-3"],
//! ))
//! .await?;
//! let hub = fleet.cluster("hub")?;
//! let client: kube::Client = hub.client().await?;
//! println!("kubectl --kubeconfig {}", hub.kubeconfig_path.display());
//! fleet.stop_cluster("member-2")?; // e.g. a member goes away mid-run
//! drop(fleet); // or fleet.shutdown().await: everything is stopped
//! # let _ = client; Ok(()) }
//! ```
//!
//! What runs:
//! - one shared **etcd** (`--unsafe-no-fsync`, data under `<dir>/etcd/`);
//! - per cluster, **kube-apiserver** (`--etcd-prefix=/<cluster>`, own loopback
//!   port, serving cert and admin client cert from a per-cluster CA, RBAC,
//!   service-account keys), **kube-controller-manager** (all default
//!   controllers: Deployments → ReplicaSets → Pods, GC, namespaces, service
//!   accounts), **kube-scheduler**, and **kwok**, which fakes the kubelet of
//!   `nodes_per_cluster` `v1.Node`s the harness creates (annotation
//!   `kwok.x-k8s.io/node=fake`, label `type=kwok`, no taint), so any
//!   Deployment's pods get scheduled and become Running/Ready without
//!   containers (the image is never pulled).
//!
//! Files under the work dir: `<dir>/<cluster>.kubeconfig` (admin, embedded
//! certs, `https://127.0.0.1:<port>`), `<dir>/<cluster>/pki/`,
//! `<dir>/<cluster>/logs/<component>.log`, `<dir>/etcd/`, `<dir>/logs/etcd.log`.
//!
//! Teardown: every child runs in its own process group and is stopped
//! (SIGTERM, then SIGKILL after a short grace) when the [`Fleet`] is dropped,
//! including during a panic's unwinding; and with `PR_SET_PDEATHSIG` it is
//! SIGKILLed by the kernel if the harness process dies without unwinding.
//! All methods on [`Fleet`] take `&self`, so it can be shared in an `Arc`.

mod audit;
mod binaries;
mod pki;
mod process;

pub use process::spawn_tied_to_process;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use futures::future::try_join_all;
use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info, warn};

use audit::{AUDIT_LOG, AUDIT_POLICY};
pub use audit::{AuditRecord, parse_audit_log, read_audit_log, requests_between, tally};
pub use binaries::{Binaries, Versions, e2e_dir, ensure_binaries, ensure_helm};
pub use process::ProcSpec;
use process::{Proc, Spawner, stop_all};

use crate::wait::poll;

/// Grace between SIGTERM and SIGKILL when stopping components.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Annotation kwok selects the nodes it manages by.
pub const KWOK_NODE_ANNOTATION: (&str, &str) = ("kwok.x-k8s.io/node", "fake");

/// The service CIDR of every cluster; the `kubernetes` Service gets `.1`.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);

/// One process of a cluster. (etcd is shared by the fleet, see
/// [`Fleet::kill_etcd`].)
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    KubeApiserver,
    KubeControllerManager,
    KubeScheduler,
    Kwok,
}

impl Component {
    pub const ALL: [Component; 4] =
        [Component::KubeApiserver, Component::KubeControllerManager, Component::KubeScheduler, Component::Kwok];
    /// Binary (and log file) name.
    pub fn binary(self) -> &'static str {
        match self {
            Component::KubeApiserver => "kube-apiserver",
            Component::KubeControllerManager => "kube-controller-manager",
            Component::KubeScheduler => "kube-scheduler",
            Component::Kwok => "kwok",
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.binary())
    }
}

/// How to start a fleet.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Work dir: kubeconfigs, PKI, etcd data, logs. Created if missing; it is
    /// *not* removed on teardown (keep logs for post-mortems).
    pub dir: PathBuf,
    /// Cluster names (also their etcd prefix and kubeconfig file name). The
    /// first is conventionally the hub.
    pub clusters: Vec<String>,
    /// Fake kwok nodes per cluster (default 3).
    pub nodes_per_cluster: usize,
    /// Pods each fake node takes (default 110, the kubelet's default); a benchmark with
    /// thousands of pods raises it rather than adding nodes.
    pub pods_per_node: u32,
    /// Binary dir; `None` runs [`ensure_binaries`].
    pub bin_dir: Option<PathBuf>,
    /// Deadline for the whole start (default 3 min).
    pub start_timeout: Duration,
    /// Write an audit log of every request each API server answers (metadata only:
    /// user, user agent, verb, resource, stage) to `<dir>/<cluster>/logs/audit.log`;
    /// see [`Cluster::audit_events`]. Off by default: it costs the API server time.
    pub audit_log: bool,
}

impl FleetOptions {
    pub fn new<S: Into<String>>(dir: impl Into<PathBuf>, clusters: impl IntoIterator<Item = S>) -> Self {
        Self {
            dir: dir.into(),
            clusters: clusters.into_iter().map(Into::into).collect(),
            nodes_per_cluster: 3,
            pods_per_node: 110,
            bin_dir: None,
            start_timeout: Duration::from_secs(180),
            audit_log: false,
        }
    }
}

/// The `User-Agent` of the harness's own Kubernetes clients ([`Cluster::client`]).
pub const HARNESS_USER_AGENT: &str = "petrel-e2e";

/// One control plane of the fleet.
pub struct Cluster {
    /// Cluster name (also the etcd prefix `/<name>`).
    pub name: String,
    /// This cluster's directory (`<dir>/<name>/`: `pki/`, `logs/`).
    pub dir: PathBuf,
    /// Admin kubeconfig (`<dir>/<name>.kubeconfig`), usable by kubectl and kube-rs.
    pub kubeconfig_path: PathBuf,
    /// `https://127.0.0.1:<port>`
    pub api_url: String,
    pub api_port: u16,
    /// Names of the fake nodes.
    pub node_names: Vec<String>,
    /// Pods each fake node takes.
    pods_per_node: u32,
    procs: Mutex<BTreeMap<Component, Proc>>,
    specs: BTreeMap<Component, ProcSpec>,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.name)
            .field("api_url", &self.api_url)
            .field("kubeconfig_path", &self.kubeconfig_path)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// kube-rs config from the admin kubeconfig.
    pub async fn config(&self) -> Result<Config> {
        let text = std::fs::read_to_string(&self.kubeconfig_path)
            .with_context(|| format!("reading {}", self.kubeconfig_path.display()))?;
        let kc = Kubeconfig::from_yaml(&text).with_context(|| format!("parsing {}", self.kubeconfig_path.display()))?;
        let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .with_context(|| format!("loading {}", self.kubeconfig_path.display()))?;
        // The API server's audit log tells the harness's requests from petrel's by this.
        config.headers.push((http::header::USER_AGENT, http::HeaderValue::from_static(HARNESS_USER_AGENT)));
        Ok(config)
    }

    /// A new admin `kube::Client` for this cluster.
    pub async fn client(&self) -> Result<Client> {
        Client::try_from(self.config().await?).context("building kube client")
    }

    /// The admin kubeconfig YAML (e.g. for a hub `Cluster` Secret). It
    /// points at 127.0.0.1, which is right for anything on this machine.
    pub fn kubeconfig_yaml(&self) -> Result<String> {
        std::fs::read_to_string(&self.kubeconfig_path)
            .with_context(|| format!("reading {}", self.kubeconfig_path.display()))
    }

    /// Log file of a component.
    pub fn log_path(&self, c: Component) -> PathBuf {
        self.dir.join("logs").join(format!("{}.log", c.binary()))
    }

    /// The requests this cluster's API server answered so far, from its audit log
    /// (empty unless the fleet started with `FleetOptions::audit_log`).
    pub fn audit_events(&self) -> Result<Vec<AuditRecord>> {
        read_audit_log(&self.audit_log_path())
    }

    /// Where this cluster's API server writes its audit log (see [`Cluster::audit_events`]).
    pub fn audit_log_path(&self) -> PathBuf {
        self.dir.join("logs").join(AUDIT_LOG)
    }

    /// Pid of a component if it is running.
    pub fn pid(&self, c: Component) -> Option<u32> {
        self.lock().get_mut(&c).and_then(|p| {
            p.poll_exit();
            p.pid()
        })
    }

    /// Whether a component is running.
    pub fn is_running(&self, c: Component) -> bool {
        self.pid(c).is_some()
    }

    /// Sends a signal (e.g. `libc::SIGKILL`, `libc::SIGSTOP`) to a component;
    /// does not wait. SIGKILL also reaps it.
    pub fn kill_component(&self, c: Component, signal: libc::c_int) {
        if let Some(p) = self.lock().get_mut(&c) {
            if signal == libc::SIGKILL {
                p.kill();
            } else {
                p.signal(signal);
            }
        }
    }

    /// Stops a component gracefully (SIGTERM, SIGKILL after [`STOP_GRACE`]).
    pub fn stop_component(&self, c: Component) {
        if let Some(p) = self.lock().get_mut(&c) {
            p.stop(STOP_GRACE);
        }
    }

    /// Stops the whole cluster (all its components; etcd data stays, so
    /// [`Fleet::start_cluster`] brings it back with its objects).
    pub fn stop(&self) {
        let mut procs = self.lock();
        // Apiserver last so the others do not spin on a dead endpoint.
        stop_all(procs.iter_mut().filter(|(c, _)| **c != Component::KubeApiserver).map(|(_, p)| p), STOP_GRACE);
        stop_all(procs.get_mut(&Component::KubeApiserver), STOP_GRACE);
    }

    /// Pids of running components.
    pub fn pids(&self) -> Vec<u32> {
        self.lock()
            .values_mut()
            .filter_map(|p| {
                p.poll_exit();
                p.pid()
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<Component, Proc>> {
        // A poisoned lock only means another thread panicked while holding it;
        // the map itself is still consistent (every mutation is one call).
        self.procs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn start_component(&self, spawner: &Spawner, c: Component) -> Result<()> {
        let spec = self.specs.get(&c).with_context(|| format!("{}: no spec for {c}", self.name))?;
        let mut procs = self.lock();
        match procs.get_mut(&c) {
            Some(p) => p.restart(spawner)?,
            None => {
                procs.insert(c, Proc::start(spawner, spec.clone())?);
            }
        }
        Ok(())
    }

    /// Error if the component exited, with its log tail.
    fn check_alive(&self, c: Component) -> Result<()> {
        let mut procs = self.lock();
        let p = procs.get_mut(&c).with_context(|| format!("{}/{c} was never started", self.name))?;
        if p.poll_exit().is_some() {
            bail!(
                "{}/{c} exited ({}); log {}:\n{}",
                self.name,
                p.describe_exit(),
                p.spec.log.display(),
                p.log_tail(30)
            );
        }
        Ok(())
    }

    async fn wait_apiserver_ready(&self, deadline: Instant) -> Result<Client> {
        let mut config = self.config().await?;
        config.connect_timeout = Some(Duration::from_secs(2));
        config.read_timeout = Some(Duration::from_secs(5));
        config.default_retry = false;
        let client = Client::try_from(config)?;
        let mut last = String::new();
        let ready = poll(deadline, Duration::from_millis(250), async || {
            self.check_alive(Component::KubeApiserver)?;
            let req = http::Request::get("/readyz").body(Vec::new())?;
            last = match client.request_text(req).await {
                Ok(body) if body.trim() == "ok" => return Ok(Some(())),
                Ok(body) => body,
                Err(e) => e.to_string(),
            };
            Ok::<_, anyhow::Error>(None)
        })
        .await?;
        if ready.is_none() {
            bail!(
                "{}: kube-apiserver not ready at {} (last: {last}); log {}",
                self.name,
                self.api_url,
                self.log_path(Component::KubeApiserver).display()
            );
        }
        Ok(client)
    }

    async fn create_nodes(&self, client: &Client) -> Result<()> {
        let nodes: Api<Node> = Api::all(client.clone());
        for name in &self.node_names {
            let node: Node = serde_json::from_value(fake_node(name, self.pods_per_node))?;
            match nodes.create(&PostParams::default(), &node).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {} // restart of an existing cluster
                Err(e) => {
                    return Err(e).with_context(|| format!("{}: creating node {name}", self.name));
                }
            }
        }
        Ok(())
    }

    async fn wait_workable(&self, client: &Client, deadline: Instant) -> Result<()> {
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        let nodes: Api<Node> = Api::all(client.clone());
        let (mut sa, mut ready) = (false, 0);
        let workable = poll(deadline, Duration::from_millis(250), async || {
            for c in Component::ALL {
                self.check_alive(c)?;
            }
            sa = sas.get_opt("default").await.ok().flatten().is_some();
            ready = match nodes.list(&Default::default()).await {
                Ok(list) => list.items.iter().filter(|n| node_ready(n)).count(),
                Err(_) => 0,
            };
            Ok::<_, anyhow::Error>((sa && ready >= self.node_names.len()).then_some(()))
        })
        .await?;
        if workable.is_none() {
            bail!(
                "{}: not workable in time (default ServiceAccount: {sa}, Ready nodes: {ready}/{}); logs in {}",
                self.name,
                self.node_names.len(),
                self.dir.join("logs").display()
            );
        }
        Ok(())
    }

    /// Starts the apiserver, waits for /readyz, starts the rest, creates the
    /// nodes and waits for the default ServiceAccount and Ready nodes.
    async fn boot(&self, spawner: &Spawner, deadline: Instant) -> Result<()> {
        let t0 = Instant::now();
        self.start_component(spawner, Component::KubeApiserver)?;
        let client = self.wait_apiserver_ready(deadline).await?;
        debug!(cluster = %self.name, elapsed = ?t0.elapsed(), "apiserver ready");
        for c in BOOT_SUPERVISED {
            self.start_component(spawner, c)?;
        }
        let mut spawned = Instant::now();
        self.create_nodes(&client).await?;
        let mut restarts = 0;
        loop {
            let settled = async {
                self.wait_workable(&client, deadline).await?;
                // On a restart the nodes are still Ready from before, so the cluster looks
                // workable the moment the components are spawned: give them the time a
                // startup failure takes to show before calling the cluster ready (a fresh
                // cluster has spent it already, waiting for kwok to make its nodes Ready).
                tokio::time::sleep_until((spawned + BOOT_SETTLE).into()).await;
                for c in Component::ALL {
                    self.check_alive(c)?;
                }
                Ok::<_, anyhow::Error>(())
            }
            .await;
            match settled {
                Ok(()) => break,
                Err(e) if restarts < BOOT_RESTARTS && Instant::now() < deadline => {
                    // What a kubelet does for a static pod that exits at start: start it
                    // again, and say why. The API server is not restarted here: its exit
                    // is never transient in this harness.
                    let exited: Vec<Component> =
                        BOOT_SUPERVISED.into_iter().filter(|&c| self.check_alive(c).is_err()).collect();
                    if exited.is_empty() {
                        return Err(e);
                    }
                    restarts += 1;
                    warn!(cluster = %self.name, error = %format!("{e:#}"), ?exited, restarts, "a component exited while the cluster booted; starting it again");
                    for c in exited {
                        self.start_component(spawner, c)?;
                    }
                    spawned = Instant::now();
                }
                Err(e) => return Err(e),
            }
        }
        info!(cluster = %self.name, url = %self.api_url, elapsed = ?t0.elapsed(), "cluster ready");
        Ok(())
    }
}

/// The components started after the API server answers, which boot starts again when
/// one exits before the cluster is ready.
const BOOT_SUPERVISED: [Component; 3] = [Component::KubeControllerManager, Component::KubeScheduler, Component::Kwok];
/// How often boot starts an exited component again before giving up with its log.
const BOOT_RESTARTS: u32 = 3;
/// How long every component must have stayed up before the cluster is called ready.
const BOOT_SETTLE: Duration = Duration::from_secs(2);

/// Handle of a running fleet. Dropping it stops every process (see module docs).
pub struct Fleet {
    dir: PathBuf,
    bins: Binaries,
    etcd: Mutex<Option<Proc>>,
    etcd_url: String,
    clusters: Vec<Arc<Cluster>>,
    spawner: Spawner,
}

impl fmt::Debug for Fleet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fleet")
            .field("dir", &self.dir)
            .field("etcd_url", &self.etcd_url)
            .field("clusters", &self.clusters)
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// Builds the binaries if needed, starts etcd and all clusters in
    /// parallel, and returns once every cluster serves `/readyz`, has its
    /// `default` ServiceAccount and all its nodes Ready. On error everything
    /// started so far is stopped; the error names the log to read.
    pub async fn start(opts: FleetOptions) -> Result<Fleet> {
        // Ports are checked free when picked, but another test process running beside
        // this one can bind one before the component does: start again on fresh ports.
        const ATTEMPTS: u32 = 3;
        let mut attempt = 1;
        loop {
            match Self::start_once(&opts).await {
                Err(e) if attempt < ATTEMPTS && is_port_taken(&e) => {
                    warn!(attempt, error = %format!("{e:#}"), "a port was taken before its component bound it; starting again");
                    // The failed start was stopped when it was dropped; its etcd data
                    // names the old ports.
                    let _ = std::fs::remove_dir_all(std::path::absolute(&opts.dir)?.join("etcd"));
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn start_once(opts: &FleetOptions) -> Result<Fleet> {
        let t0 = Instant::now();
        let deadline = t0 + opts.start_timeout;
        ensure!(!opts.clusters.is_empty(), "no clusters requested");
        let mut seen = HashSet::new();
        for name in &opts.clusters {
            ensure!(
                !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "cluster name {name:?} must be a DNS label"
            );
            ensure!(seen.insert(name), "cluster {name} listed twice");
        }
        let bin_dir = match opts.bin_dir.clone() {
            Some(d) => d,
            None => tokio::task::spawn_blocking(ensure_binaries).await??,
        };
        let bins = Binaries::new(bin_dir);
        let dir = std::path::absolute(&opts.dir)?;
        std::fs::create_dir_all(dir.join("logs")).with_context(|| format!("creating {}", dir.display()))?;

        let mut ports = PortAllocator::default();
        let (etcd_client, etcd_peer) = (ports.get()?, ports.get()?);
        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let etcd_spec = etcd_spec(&bins, &dir, etcd_client, etcd_peer);

        let mut clusters = Vec::new();
        for name in &opts.clusters {
            clusters.push(Arc::new(new_cluster(
                name,
                &dir,
                &bins,
                &etcd_url,
                ports.get()?,
                (opts.nodes_per_cluster, opts.pods_per_node),
                opts.audit_log,
            )?));
        }

        let fleet = Fleet { dir, bins, etcd: Mutex::new(None), etcd_url, clusters, spawner: Spawner::new()? };
        // From here on, an early return drops `fleet`, which stops everything.
        {
            let mut etcd = fleet.etcd_lock();
            *etcd = Some(Proc::start(&fleet.spawner, etcd_spec)?);
        }
        fleet.wait_etcd(deadline).await?;
        debug!(elapsed = ?t0.elapsed(), "etcd ready");

        try_join_all(fleet.clusters.iter().map(|c| c.boot(&fleet.spawner, deadline))).await?;
        info!(
            clusters = fleet.clusters.len(),
            elapsed = ?t0.elapsed(),
            "fleet ready"
        );
        Ok(fleet)
    }

    /// The work dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The binaries in use.
    pub fn binaries(&self) -> &Binaries {
        &self.bins
    }

    /// `http://127.0.0.1:<port>` of the shared etcd.
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// All clusters, in the order they were requested.
    pub fn clusters(&self) -> &[Arc<Cluster>] {
        &self.clusters
    }

    /// A cluster by name.
    pub fn cluster(&self, name: &str) -> Result<&Arc<Cluster>> {
        self.clusters.iter().find(|c| c.name == name).ok_or_else(|| anyhow!("no cluster named {name} in the fleet"))
    }

    /// Stops one cluster's processes (its etcd data stays).
    pub fn stop_cluster(&self, name: &str) -> Result<()> {
        self.cluster(name)?.stop();
        Ok(())
    }

    /// Starts a stopped cluster again (same port, certs and data) and waits
    /// until it is workable again.
    pub async fn start_cluster(&self, name: &str, timeout: Duration) -> Result<()> {
        let c = self.cluster(name)?;
        c.stop();
        c.boot(&self.spawner, Instant::now() + timeout).await
    }

    /// Sends `signal` to one component of one cluster (SIGKILL also reaps).
    pub fn kill_component(&self, cluster: &str, c: Component, signal: libc::c_int) -> Result<()> {
        self.cluster(cluster)?.kill_component(c, signal);
        Ok(())
    }

    /// Restarts one component of one cluster (e.g. after `kill_component`). For the
    /// API server prefer [`Fleet::restart_apiserver`], which also waits until it serves.
    pub fn restart_component(&self, cluster: &str, c: Component) -> Result<()> {
        self.cluster(cluster)?.start_component(&self.spawner, c)
    }

    /// Starts a cluster's kube-apiserver again (after `kill_component`, or to restart a
    /// running one: the old process is stopped and reaped first, so none is left behind
    /// as a zombie holding the port) and waits until it answers `/readyz` again. The
    /// other components keep running and reconnect on their own.
    pub async fn restart_apiserver(&self, cluster: &str, timeout: Duration) -> Result<()> {
        let c = self.cluster(cluster)?;
        c.start_component(&self.spawner, Component::KubeApiserver)?;
        c.wait_apiserver_ready(Instant::now() + timeout).await?;
        Ok(())
    }

    /// Sends `signal` to the shared etcd (every cluster loses its storage).
    pub fn kill_etcd(&self, signal: libc::c_int) {
        if let Some(p) = self.etcd_lock().as_mut() {
            if signal == libc::SIGKILL {
                p.kill();
            } else {
                p.signal(signal);
            }
        }
    }

    /// Pids of every running child (etcd and all components).
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.clusters.iter().flat_map(|c| c.pids()).collect();
        if let Some(p) = self.etcd_lock().as_mut() {
            p.poll_exit();
            pids.extend(p.pid());
        }
        pids
    }

    /// Sum of the resident set sizes of all children, in bytes (from /proc).
    pub fn rss_bytes(&self) -> u64 {
        self.pids().into_iter().map(rss_bytes).sum()
    }

    /// Stops everything (clusters in parallel, then etcd). Also done on drop;
    /// this variant does not block the async runtime.
    pub async fn shutdown(self) -> Result<()> {
        tokio::task::spawn_blocking(move || drop(self)).await.context("fleet teardown panicked")
    }

    fn stop_all_blocking(&self) {
        // Controllers, scheduler and kwok of every cluster first, then the
        // apiservers, then etcd: SIGTERM in parallel, SIGKILL after the grace.
        let mut guards: Vec<_> = self.clusters.iter().map(|c| c.lock()).collect();
        stop_all(
            guards
                .iter_mut()
                .flat_map(|g| g.iter_mut().filter(|(c, _)| **c != Component::KubeApiserver).map(|(_, p)| p)),
            STOP_GRACE,
        );
        stop_all(guards.iter_mut().filter_map(|g| g.get_mut(&Component::KubeApiserver)), STOP_GRACE);
        drop(guards);
        stop_all(self.etcd_lock().as_mut(), STOP_GRACE);
    }

    fn etcd_lock(&self) -> MutexGuard<'_, Option<Proc>> {
        // See Cluster::lock on poisoning.
        self.etcd.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn wait_etcd(&self, deadline: Instant) -> Result<()> {
        let addr = self.etcd_url.trim_start_matches("http://").to_string();
        let healthy = poll(deadline, Duration::from_millis(100), async || {
            {
                let mut etcd = self.etcd_lock();
                if let Some(p) = etcd.as_mut()
                    && p.poll_exit().is_some()
                {
                    bail!("etcd exited ({}); log {}:\n{}", p.describe_exit(), p.spec.log.display(), p.log_tail(30));
                }
            }
            let body = http_get(&addr, "/health").await;
            Ok(body.is_ok_and(|body| body.contains("\"health\":\"true\"")).then_some(()))
        })
        .await?;
        healthy.with_context(|| {
            format!("etcd not healthy at {}; log {}", self.etcd_url, self.dir.join("logs/etcd.log").display())
        })
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop_all_blocking();
        // `spawner` is dropped after this, ending its thread.
    }
}

/// Free loopback ports, never handing out the same one twice.
///
/// Ports are probed at random *below* the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`, usually from 32768), so the
/// outgoing connections of every process on the machine cannot take a port
/// between the probe and the component binding it.
#[derive(Default)]
struct PortAllocator {
    given: HashSet<u16>,
}

impl PortAllocator {
    const LOW: u16 = 10_000;

    fn get(&mut self) -> Result<u16> {
        let high = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse::<u16>().ok()))
            .filter(|&p| p > Self::LOW + 1000)
            .unwrap_or(32_768);
        for attempt in 0u64..1000 {
            let port = Self::LOW + (pseudo_random(attempt) % u64::from(high - Self::LOW)) as u16;
            if self.given.contains(&port) {
                continue;
            }
            if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
                self.given.insert(port);
                return Ok(port);
            }
        }
        bail!("no free loopback port in {}..{high}", Self::LOW)
    }
}

/// Whether a start failed because a component could not bind its port.
fn is_port_taken(error: &anyhow::Error) -> bool {
    format!("{error:#}").contains("address already in use")
}

fn pseudo_random(salt: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(salt);
    h.write_u32(std::process::id());
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(d.as_nanos());
    }
    h.finish()
}

fn etcd_spec(bins: &Binaries, dir: &Path, client: u16, peer: u16) -> ProcSpec {
    let data = dir.join("etcd");
    let c = format!("http://127.0.0.1:{client}");
    let p = format!("http://127.0.0.1:{peer}");
    ProcSpec {
        name: "etcd".into(),
        program: bins.path("etcd"),
        args: vec![
            "--name=petrel-e2e".into(),
            format!("--data-dir={}", data.display()),
            format!("--listen-client-urls={c}"),
            format!("--advertise-client-urls={c}"),
            format!("--listen-peer-urls={p}"),
            format!("--initial-advertise-peer-urls={p}"),
            format!("--initial-cluster=petrel-e2e={p}"),
            "--initial-cluster-state=new".into(),
            "--unsafe-no-fsync=true".into(),
            "--log-level=warn".into(),
            // Keep the database small across long demos.
            "--auto-compaction-mode=periodic".into(),
            "--auto-compaction-retention=5m".into(),
            "--quota-backend-bytes=4294967296".into(),
        ],
        log: dir.join("logs/etcd.log"),
    }
}

fn new_cluster(
    name: &str,
    fleet_dir: &Path,
    bins: &Binaries,
    etcd_url: &str,
    port: u16,
    (nodes, pods_per_node): (usize, u32),
    audit_log: bool,
) -> Result<Cluster> {
    let dir = fleet_dir.join(name);
    std::fs::create_dir_all(dir.join("logs")).with_context(|| format!("creating {}", dir.display()))?;
    let pki = pki::generate(name, &dir.join("pki"), IpAddr::V4(SERVICE_IP))?;
    let api_url = format!("https://127.0.0.1:{port}");
    let kubeconfig_path = fleet_dir.join(format!("{name}.kubeconfig"));
    std::fs::write(&kubeconfig_path, pki::admin_kubeconfig(name, &api_url, &pki)?)
        .with_context(|| format!("writing {}", kubeconfig_path.display()))?;
    let kc = kubeconfig_path.display().to_string();
    let p = |path: &PathBuf| path.display().to_string();

    let mut apiserver = vec![
        format!("--etcd-servers={etcd_url}"),
        format!("--etcd-prefix=/{name}"),
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        format!("--secure-port={port}"),
        format!("--tls-cert-file={}", p(&pki.serving_cert)),
        format!("--tls-private-key-file={}", p(&pki.serving_key)),
        format!("--client-ca-file={}", p(&pki.ca_cert)),
        "--authorization-mode=RBAC".into(),
        "--anonymous-auth=true".into(),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
        format!("--service-account-key-file={}", p(&pki.sa_pub)),
        format!("--service-account-signing-key-file={}", p(&pki.sa_key)),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        "--allow-privileged=true".into(),
        // The `kubernetes` Endpoints may not hold a loopback address.
        "--endpoint-reconciler-type=none".into(),
        format!("--cert-dir={}", p(&dir.join("pki"))),
        "--profiling=false".into(),
    ];
    if audit_log {
        let policy = dir.join("audit-policy.yaml");
        std::fs::write(&policy, AUDIT_POLICY).with_context(|| format!("writing {}", policy.display()))?;
        apiserver.extend([
            format!("--audit-policy-file={}", p(&policy)),
            format!("--audit-log-path={}", p(&dir.join("logs").join(AUDIT_LOG))),
            "--audit-log-format=json".into(),
            // Written as requests complete, so a test reads every request it caused.
            "--audit-log-mode=blocking".into(),
            // Never rotated (0 would mean lumberjack's 100 MB): a reader that tails the file
            // (canary-bench) lost the requests written after a rotation.
            "--audit-log-maxsize=1000000".into(),
        ]);
    }
    let common = |port_flag: bool| {
        let mut v = vec![
            format!("--kubeconfig={kc}"),
            format!("--authentication-kubeconfig={kc}"),
            format!("--authorization-kubeconfig={kc}"),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            "--profiling=false".into(),
        ];
        if port_flag {
            v.push("--secure-port=0".into());
        }
        v
    };
    let mut kcm = common(true);
    kcm.extend([
        format!("--service-account-private-key-file={}", p(&pki.sa_key)),
        format!("--root-ca-file={}", p(&pki.ca_cert)),
        "--use-service-account-credentials=false".into(),
        "--controllers=*".into(),
        format!("--cluster-name={name}"),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
    ]);
    let scheduler = common(true);
    let kwok = vec![
        format!("--kubeconfig={kc}"),
        format!("--config={}", p(&bins.path("kwok-stages.yaml"))),
        "--manage-all-nodes=false".into(),
        format!("--manage-nodes-with-annotation-selector={}={}", KWOK_NODE_ANNOTATION.0, KWOK_NODE_ANNOTATION.1),
        "--node-ip=127.0.0.1".into(),
        "--node-port=0".into(),
        "--server-address=".into(),
    ];

    let mut specs = BTreeMap::new();
    for (c, args) in [
        (Component::KubeApiserver, apiserver),
        (Component::KubeControllerManager, kcm),
        (Component::KubeScheduler, scheduler),
        (Component::Kwok, kwok),
    ] {
        specs.insert(
            c,
            ProcSpec {
                name: format!("{name}/{c}"),
                program: bins.path(c.binary()),
                args,
                log: dir.join("logs").join(format!("{}.log", c.binary())),
            },
        );
    }
    Ok(Cluster {
        name: name.to_string(),
        kubeconfig_path,
        api_url,
        api_port: port,
        node_names: (0..nodes).map(|i| format!("kwok-node-{i}")).collect(),
        pods_per_node,
        procs: Mutex::new(BTreeMap::new()),
        specs,
        dir,
    })
}

fn fake_node(name: &str, pods: u32) -> serde_json::Value {
    let resources = serde_json::json!({"cpu": "32", "memory": "256Gi", "pods": pods.to_string()});
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {
                KWOK_NODE_ANNOTATION.0: KWOK_NODE_ANNOTATION.1,
                "node.alpha.kubernetes.io/ttl": "0",
            },
            "labels": {
                "type": "kwok",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/os": "linux",
                "kubernetes.io/hostname": name,
                "node-role.kubernetes.io/agent": "",
            },
        },
        "spec": {},
        "status": {
            "allocatable": resources,
            "capacity": resources,
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "fake",
                "kubeProxyVersion": "fake",
                "containerRuntimeVersion": "kwok",
            },
            "phase": "Running",
        },
    })
}

/// Whether a Node has condition Ready=True.
pub fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Resident memory of a process (`VmRSS`), 0 when it cannot be read.
pub fn rss_bytes(pid: u32) -> u64 {
    crate::bench::stats::status_bytes(pid, "VmRSS:").unwrap_or(0)
}

/// Minimal HTTP/1.0 GET over plain TCP (for etcd's /health).
async fn http_get(addr: &str, path: &str) -> Result<String> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).await?;
        anyhow::Ok(buf)
    };
    tokio::time::timeout(Duration::from_secs(2), fut).await.context("timeout")?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_taken_by_another_process_is_told_from_other_start_failures() {
        // As `wait_etcd` reports it: the exit, then the log's tail.
        let taken = anyhow::anyhow!(
            r#"{{"level":"fatal","msg":"discovery failed","error":"listen tcp 127.0.0.1:19259: bind: address already in use"}}"#
        )
        .context("etcd exited (exit code 1)")
        .context("starting the control plane");
        assert!(is_port_taken(&taken));
        let other = anyhow::anyhow!("etcd not healthy at http://127.0.0.1:19259").context("starting the control plane");
        assert!(!is_port_taken(&other));
    }
}
