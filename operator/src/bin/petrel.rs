//! The petrel operator.

use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use metrics_providers::{EgressClient, EgressPolicy};
use petrel::controller::{self, Context, EventSink, Settings};
use petrel::leader::{self, LeaderElection};
use petrel::shard;
use petrel::shutdown::{self, Shutdown};
use petrel::telemetry::{self, Metrics, Readiness};

/// What this process runs.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// The per-cluster Canary controller (every cluster of a fleet runs it).
    Member,
    /// The fleet hub: orders Rollouts across the member Clusters declared here.
    Hub,
}

/// Progressive delivery for Kubernetes: the per-cluster Canary controller, or the fleet hub.
#[derive(Parser, Debug)]
#[command(version = petrel::version::LONG, about)]
struct Args {
    /// `member` runs the Canary controller; `hub` runs the fleet Rollout controller.
    #[arg(long, env = "PETREL_MODE", value_enum, default_value = "member")]
    mode: Mode,
    /// Traffic provider for Canaries that name none.
    #[arg(long, env = "PETREL_PROVIDER", default_value = "kubernetes")]
    provider: String,
    /// Prometheus address for the builtin metrics.
    #[arg(long, env = "PETREL_METRICS_SERVER", default_value = "http://prometheus:9090")]
    metrics_server: String,
    /// Name of this cluster, shown in alerts and events, and published in its
    /// ClusterIdentity for the fleet hub to check against its Cluster object.
    #[arg(long, env = "PETREL_CLUSTER_NAME", default_value = "cluster")]
    cluster_name: String,
    /// The ConfigMap the platform team keeps this cluster's identity labels in (env,
    /// region, compliance zone …), as NAME (in $POD_NAMESPACE, else petrel-system) or
    /// NAMESPACE/NAME. Each key is a label the hub compares with the Cluster's labels.
    #[arg(long, env = "PETREL_IDENTITY_CONFIGMAP", default_value = "petrel-cluster-identity")]
    identity_configmap: String,
    /// PromQL that gives this cluster's requests per second, such as
    /// `sum(rate(http_requests_total[2m]))`: evaluated against --metrics-server every
    /// minute and published in the ClusterIdentity's status, where the fleet hub reads
    /// this member's share of the fleet's traffic when its Cluster has no
    /// petrel.dev/traffic-share label. Unset: not measured.
    #[arg(long, env = "PETREL_TRAFFIC_RATE_QUERY")]
    traffic_rate_query: Option<String>,
    /// Watch Canaries in this namespace only (all namespaces when unset).
    #[arg(long, env = "PETREL_NAMESPACE")]
    namespace: Option<String>,
    /// Log as JSON lines.
    #[arg(long, env = "PETREL_LOG_JSON")]
    log_json: bool,
    /// Path of a kubeconfig (default: in-cluster, then $KUBECONFIG, then ~/.kube/config).
    #[arg(long, env = "PETREL_KUBECONFIG")]
    kubeconfig: Option<std::path::PathBuf>,
    /// Address of the metrics and health server (`/metrics`, `/livez`, `/readyz`).
    #[arg(long, env = "PETREL_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: String,
    /// Run only while holding a Lease, so that several replicas can run with one active.
    #[arg(long, env = "PETREL_LEADER_ELECT")]
    leader_elect: bool,
    /// Namespace of the leader election Lease (default: $POD_NAMESPACE, else `default`).
    #[arg(long, env = "PETREL_LEADER_ELECTION_NAMESPACE")]
    leader_election_namespace: Option<String>,
    /// Name of the leader election Lease (default: `petrel-member` or `petrel-hub`).
    #[arg(long, env = "PETREL_LEADER_ELECTION_LEASE_NAME")]
    leader_election_lease_name: Option<String>,
    /// Seconds a leader's Lease stays valid without renewal: how soon a standby takes
    /// over from a leader that died.
    #[arg(long, env = "PETREL_LEADER_ELECTION_LEASE_DURATION", default_value_t = 15)]
    leader_election_lease_duration: u64,
    /// Seconds before expiry at which the leader renews its Lease.
    #[arg(long, env = "PETREL_LEADER_ELECTION_RENEW_BEFORE", default_value_t = 5)]
    leader_election_renew_before: u64,
    /// Also let webhooks, alert receivers and metric backends be reached at addresses in
    /// this range (CIDR or single address; repeat the flag for several). By default
    /// loopback and link-local addresses (where cloud metadata answers) are refused.
    #[arg(long = "egress-allow-cidr", env = "PETREL_EGRESS_ALLOW_CIDRS", value_delimiter = ',', value_parser = metrics_providers::outbound::parse_cidr)]
    egress_allow_cidrs: Vec<metrics_providers::outbound::IpNet>,
    /// Also let webhooks, alert receivers and metric backends be reached on loopback
    /// addresses (this host; the operator's own ports among them).
    #[arg(long, env = "PETREL_EGRESS_ALLOW_LOOPBACK")]
    egress_allow_loopback: bool,
    /// Seconds the controllers get after SIGTERM to finish the reconciles in flight; then
    /// petrel stops anyway and releases its Lease. Keep it, plus a few seconds for the
    /// release, below the Pod's terminationGracePeriodSeconds.
    #[arg(long, env = "PETREL_SHUTDOWN_GRACE_SECONDS", default_value_t = 5)]
    shutdown_grace_seconds: u64,
    /// At most this many Canary reconciles run at once; the others wait their turn in the
    /// queue. Each one in flight holds memory and an API server connection; 0: no bound.
    #[arg(long, env = "PETREL_MAX_CONCURRENT_RECONCILES", default_value_t = controller::DEFAULT_MAX_CONCURRENT_RECONCILES)]
    max_concurrent_reconciles: u16,
    /// At most this many reconciles of Canaries not yet initialized run at once (Git
    /// applying many Canaries together); Canaries already initialized never wait for them.
    /// 0: no bound.
    #[arg(long, env = "PETREL_MAX_CONCURRENT_INITIALIZATIONS", default_value_t = controller::DEFAULT_MAX_CONCURRENT_INITIALIZATIONS)]
    max_concurrent_initializations: u16,
    /// Split the Canaries over this many shards, by a stable hash of namespace/name: each
    /// replica holds the Lease `<lease-name>-shard-<i>` of one shard (or more, when
    /// replicas are missing) and reconciles only its Canaries. Run as many replicas as
    /// shards; needs --leader-elect. 1: one Lease, one active replica.
    #[arg(long, env = "PETREL_SHARDS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    shards: u32,
    /// The shard this replica campaigns for first (default: the ordinal of a StatefulSet
    /// Pod's name, `petrel-2` → 2; none for a Deployment's Pod, which then takes the
    /// shards nobody holds). Taken modulo --shards.
    #[arg(long, env = "PETREL_SHARD_INDEX")]
    shard_index: Option<u32>,
    /// HTTP/2 connections to the API server: the watches keep the first, the other
    /// requests are dealt over the rest. kube-apiserver takes at most 100 requests at once
    /// on one connection, so a release of many Canaries queues inside petrel below about
    /// 100 per connection. 1: everything on one connection.
    #[arg(long, env = "PETREL_API_CONNECTIONS", default_value_t = petrel::client::DEFAULT_API_CONNECTIONS)]
    api_connections: std::num::NonZeroUsize,
}

/// Why the flags cannot run together.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
enum FlagError {
    #[error(
        "--shards {0} needs --leader-elect: each replica holds one shard's Lease, and without Leases every replica would reconcile every Canary"
    )]
    ShardsWithoutLeaderElection(u32),
    #[error("--shards and --shard-index apply to --mode member only; the hub runs one active replica")]
    ShardsInHub,
}

impl Args {
    /// The egress policy of the flags: strict, plus what they allow.
    fn egress_policy(&self) -> EgressPolicy {
        let policy = if self.egress_allow_loopback {
            EgressPolicy::strict().allowing_loopback()
        } else {
            EgressPolicy::strict()
        };
        self.egress_allow_cidrs.iter().fold(policy, |policy, net| policy.allowing(*net))
    }

    /// Refuses combinations of flags that cannot work. Pure.
    fn check(&self) -> Result<(), FlagError> {
        if self.shards > 1 && self.mode == Mode::Hub {
            return Err(FlagError::ShardsInHub);
        }
        if self.shards > 1 && !self.leader_elect {
            return Err(FlagError::ShardsWithoutLeaderElection(self.shards));
        }
        Ok(())
    }

    /// With --shards N > 1: the shard this replica prefers and the (empty) set it holds.
    fn sharding(&self, pod_name: Option<&str>) -> Option<leader::Sharding> {
        (self.shards > 1).then(|| leader::Sharding {
            preferred: shard::preferred_shard(self.shard_index, pod_name, self.shards),
            held: shard::HeldShards::new(self.shards),
        })
    }

    fn leader_election(&self) -> Option<LeaderElection> {
        if !self.leader_elect {
            return None;
        }
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let mode = match self.mode {
            Mode::Member => "member",
            Mode::Hub => "hub",
        };
        let host = env("HOSTNAME");
        Some(LeaderElection {
            namespace: self
                .leader_election_namespace
                .clone()
                .or_else(|| env("POD_NAMESPACE"))
                .unwrap_or_else(|| "default".to_string()),
            lease_name: self.leader_election_lease_name.clone().unwrap_or_else(|| leader::default_lease_name(mode)),
            identity: leader::identity(env("POD_NAME").as_deref(), host.as_deref(), std::process::id()),
            lease_duration_seconds: self.leader_election_lease_duration,
            renew_before_seconds: self.leader_election_renew_before,
        })
    }
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn,tower=warn,hyper=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

/// The client, and the API server's URL for messages.
async fn client(
    kubeconfig: Option<&std::path::Path>,
    connections: std::num::NonZeroUsize,
) -> anyhow::Result<(kube::Client, String)> {
    let mut config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context("finding a Kubernetes configuration")?,
    };
    petrel::identify(&mut config);
    let server = config.cluster_url.to_string();
    // kube's read timeout bounds the wait for each answer; a watch's answer starts at once.
    let answer_timeout = config.read_timeout;
    Ok((petrel::client::build(config, answer_timeout, connections).context("creating the Kubernetes client")?, server))
}

/// One binary, two programs: run by the name `kubectl-petrel` (the image links that name
/// to this binary, so it carries the plugin's code once), it is the kubectl plugin.
fn main() -> std::process::ExitCode {
    if invoked_as_plugin(std::env::args_os().next().as_deref()) {
        return petrel::plugin::cli::main(petrel::version::LONG);
    }
    operator()
}

/// Whether argv[0] names the plugin (`kubectl-petrel`, by any path).
fn invoked_as_plugin(argv0: Option<&std::ffi::OsStr>) -> bool {
    argv0.map(std::path::Path::new).and_then(std::path::Path::file_name).is_some_and(|name| name == "kubectl-petrel")
}

/// Stack of each runtime thread. A reconcile is a deep chain of async fns, and an
/// unoptimised build polls it with frames far larger than a release build's: the main
/// thread's 8 MiB overflowed in the debug build the tests run. Untouched stack pages cost
/// no memory.
const RUNTIME_STACK_BYTES: usize = 64 << 20;

fn operator() -> std::process::ExitCode {
    let runtime =
        match tokio::runtime::Builder::new_multi_thread().enable_all().thread_stack_size(RUNTIME_STACK_BYTES).build() {
            Ok(runtime) => runtime,
            Err(e) => {
                eprintln!("petrel: cannot start the async runtime: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
    // Spawned, so that it runs on a runtime thread with the stack above rather than on
    // the main thread.
    match runtime.block_on(runtime.spawn(operator_main())) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("petrel: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn operator_main() -> std::process::ExitCode {
    let args = Args::parse();
    init_tracing(args.log_json);
    // One line that names the cause (with --log-json, one JSON line), and a failing exit.
    match run(args).await {
        Ok(()) => {
            tracing::info!("petrel stopped");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "petrel stopped with an error");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Before anything else: from here on a SIGTERM is a graceful stop, never the default
    // action that would kill petrel while it holds its Lease.
    let shutdown = Shutdown::on_signals().context("installing the SIGTERM and SIGINT handlers")?;
    let grace = std::time::Duration::from_secs(args.shutdown_grace_seconds);
    args.check()?;
    let election = args.leader_election();
    let sharding = args.sharding(std::env::var("POD_NAME").ok().as_deref());
    let shards = sharding.as_ref().map_or_else(|| shard::HeldShards::new(1), |s| s.held.clone());
    if let Some(election) = &election {
        election.validate()?;
    }
    let (client, server) = client(args.kubeconfig.as_deref(), args.api_connections).await?;
    // Unreachable, unauthenticated, not allowed, no CRDs: said now, in one line, rather
    // than by a pod that never turns ready.
    petrel::preflight::check(&client, &server, args.mode == Mode::Hub, args.namespace.as_deref()).await?;
    let egress = args.egress_policy();
    tracing::info!(policy = ?egress, "egress policy for webhooks, alert receivers and metric backends");
    let http = EgressClient::new(
        egress,
        reqwest::Client::builder().user_agent(format!("petrel/{}", petrel::version::VERSION)),
    )
    .context("creating the HTTP client")?;
    // Bound before anything else starts, so a taken port fails the start-up at once.
    let listener = telemetry::bind(&args.metrics_addr).await?;
    tracing::info!(addr = %listener.local_addr().context("reading the metrics address")?, "serving /metrics, /livez and /readyz");
    let metrics = Arc::new(Metrics::default());
    let shard_metrics = metrics.clone();
    let readiness = Readiness::new();
    let standby = readiness.clone();
    // The server runs from the start, also while a standby waits for the lease.
    let serve = telemetry::serve(listener, metrics.clone(), readiness.clone(), std::future::pending());
    let lease_client = client.clone();
    let controllers_shutdown = shutdown.clone();
    let identity_config_map = match args.identity_configmap.split_once('/') {
        Some((namespace, name)) => (namespace.to_string(), name.to_string()),
        None => (
            std::env::var("POD_NAMESPACE").ok().filter(|ns| !ns.is_empty()).unwrap_or_else(|| "petrel-system".into()),
            args.identity_configmap.clone(),
        ),
    };
    let controllers = async move {
        if args.mode == Mode::Hub {
            // The hub records its Rollout, wave, member and reconcile metrics into the
            // registry the server serves on /metrics.
            let mut hub =
                petrel::hub::HubContext::with_metrics(client, std::env::var("POD_NAME").ok(), metrics.clone());
            // Ready once it starts, and while its Rollout and Cluster watches keep their caches.
            hub.health = readiness.watches().clone();
            let hub = Arc::new(hub);
            readiness.mark_ready();
            return petrel::hub::run(hub, controllers_shutdown).await;
        }
        let ctx = Arc::new(Context {
            events: EventSink::new(client.clone(), std::env::var("POD_NAME").ok()),
            client,
            http,
            settings: Settings {
                default_provider: args.provider,
                metrics_server: args.metrics_server,
                cluster_name: args.cluster_name,
                identity_config_map,
                traffic_rate_query: args.traffic_rate_query.filter(|q| !q.trim().is_empty()),
                max_concurrent_reconciles: args.max_concurrent_reconciles,
            },
            metrics: metrics.clone(),
            caches: controller::Caches::new(readiness.watches()),
            readiness: readiness.clone(),
            canaries: Default::default(),
            shards,
            initializations: controller::ReconcileGate::new(args.max_concurrent_initializations),
        });
        controller::run(ctx, args.namespace, controllers_shutdown).await
    };
    // After a shutdown request the controllers get `grace` to finish; then they are
    // dropped, so the Lease release below never waits on a stuck reconcile.
    let work = async {
        match shutdown::stop_within(controllers, &shutdown, grace).await {
            Some(result) => result,
            None => Ok(()),
        }
    };
    let leading = async {
        match (&election, &sharding) {
            (None, _) => work.await,
            (Some(election), Some(sharding)) => {
                leader::run_sharded(lease_client, election, sharding, shard_metrics, work).await?
            }
            (Some(election), None) => {
                standby.set_standby(true);
                let work = async {
                    standby.set_standby(false);
                    work.await
                };
                match leader::run_while_leading(lease_client, election, &shutdown, work).await {
                    Err(leader::LeaderError::StoppedBeforeLeading { .. }) => Ok(()),
                    outcome => outcome?,
                }
            }
        }
    };
    // The server lives as long as the controller; it stops with it.
    tokio::select! {
        result = leading => result,
        result = serve => result.context("serving metrics and health checks"),
    }
}

#[cfg(test)]
mod tests {
    use super::invoked_as_plugin;
    use std::ffi::OsStr;

    #[test]
    fn the_plugin_is_this_binary_by_the_name_kubectl_petrel() {
        for plugin in ["kubectl-petrel", "/usr/local/bin/kubectl-petrel", "./kubectl-petrel"] {
            assert!(invoked_as_plugin(Some(OsStr::new(plugin))), "{plugin}");
        }
        for operator in ["petrel", "/usr/local/bin/petrel", "kubectl-petrel-old", "/kubectl-petrel/petrel"] {
            assert!(!invoked_as_plugin(Some(OsStr::new(operator))), "{operator}");
        }
        assert!(!invoked_as_plugin(None));
    }

    #[test]
    fn reconciles_are_bounded_unless_the_flag_says_otherwise() {
        use clap::Parser;
        let bound = |args: &[&str]| super::Args::try_parse_from(args).unwrap().max_concurrent_reconciles;
        assert_eq!(bound(&["petrel"]), petrel::controller::DEFAULT_MAX_CONCURRENT_RECONCILES);
        assert_eq!(bound(&["petrel", "--max-concurrent-reconciles", "0"]), 0, "0: no bound");
        assert!(super::Args::try_parse_from(["petrel", "--max-concurrent-reconciles", "-1"]).is_err());
    }

    #[test]
    fn initializations_are_bounded_unless_the_flag_says_otherwise() {
        use clap::Parser;
        let bound = |args: &[&str]| super::Args::try_parse_from(args).unwrap().max_concurrent_initializations;
        assert_eq!(bound(&["petrel"]), petrel::controller::DEFAULT_MAX_CONCURRENT_INITIALIZATIONS);
        assert_eq!(bound(&["petrel", "--max-concurrent-initializations", "0"]), 0, "0: no bound");
        assert_eq!(bound(&["petrel", "--max-concurrent-initializations=8"]), 8);
        assert!(super::Args::try_parse_from(["petrel", "--max-concurrent-initializations", "-1"]).is_err());
    }

    #[test]
    fn shards_need_leader_election_and_default_to_one() {
        use super::{Args, FlagError};
        use clap::Parser;
        let args = |argv: &[&str]| Args::try_parse_from(argv).unwrap();
        let single = args(&["petrel"]);
        assert_eq!((single.shards, single.check()), (1, Ok(())));
        assert!(single.sharding(Some("petrel-1")).is_none(), "one shard: today's single Lease");
        assert_eq!(args(&["petrel", "--shards", "3"]).check(), Err(FlagError::ShardsWithoutLeaderElection(3)));
        assert_eq!(
            args(&["petrel", "--shards", "3", "--leader-elect", "--mode", "hub"]).check(),
            Err(FlagError::ShardsInHub)
        );
        let sharded = args(&["petrel", "--shards", "3", "--leader-elect"]);
        assert_eq!(sharded.check(), Ok(()));
        let preferred = |args: &Args, pod| args.sharding(pod).map(|s| (s.preferred, s.held.shards()));
        assert_eq!(preferred(&sharded, Some("petrel-2")), Some((Some(2), 3)), "the StatefulSet ordinal");
        assert_eq!(preferred(&sharded, Some("petrel-6d9f-x7k2p")), Some((None, 3)), "a Deployment's Pod");
        let indexed = args(&["petrel", "--shards", "3", "--leader-elect", "--shard-index", "4"]);
        assert_eq!(preferred(&indexed, Some("petrel-2")), Some((Some(1), 3)), "--shard-index wins, modulo N");
        assert!(Args::try_parse_from(["petrel", "--shards", "0"]).is_err());
    }
}
