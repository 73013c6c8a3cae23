//! Benchmark (not a test) of whole hub reconciles: the real `petrel::hub::reconcile`
//! with its member clients, member watches and probes, against a fake Kubernetes API on
//! loopback that plays the hub and N member clusters. The fake runs in a child process
//! (this binary with `--fake-api N`), so the resident memory measured is the hub's.
//!
//! For each fleet size it measures
//! - a release: reconciles from "every member waits at the gate" until the Rollout
//!   succeeded (a fake member promotes as soon as the hub approves it);
//! - steady reconciles that change nothing (what a member's status change or the
//!   safety requeue costs once the release is out), with the watch caches warm;
//! - the same without member watches (every member read is a GET);
//! - the requests one steady reconcile sends, and the resident memory the hub side
//!   (member clients, watches, caches) adds.
//!
//! Run: `cargo run --release -p petrel-bench --bin hub-bench [-- --members 100,1000 --steady 200]`

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::Utc;
use futures::StreamExt;
use kube::config::{AuthInfo, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext};
use kube::runtime::watcher;
use kube::{Api, Client, Config};
use petrel::api::rollout::RolloutPhase;
use petrel::api::{Cluster, Rollout};
use petrel::fleet::APPROVED_REVISION_ANNOTATION;
use petrel::hub::{CLUSTERS_WATCH, HubContext, clusters, reconcile};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use petrel_bench::figures::{fmt, proc_status_kib};

const OLD: &str = "ghcr.io/stefanprodan/podinfo:6.4.0";
const NEW: &str = "ghcr.io/stefanprodan/podinfo:6.5.0";
const REGIONS: [&str; 4] = ["eu-west", "eu-central", "us-east", "ap-south"];
const GROUP: &str = "/apis/petrel.dev/v1alpha1";
const CANARY: &str = "/apis/petrel.dev/v1alpha1/namespaces/podinfo/canaries/podinfo";
const CANARIES: &str = "/apis/petrel.dev/v1alpha1/namespaces/podinfo/canaries";
const ROLLOUT_STATUS: &str = "/apis/petrel.dev/v1alpha1/namespaces/fleet/rollouts/podinfo/status";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| args.iter().skip_while(|a| *a != flag).nth(1).cloned();
    let sizes: Vec<usize> = value("--members")
        .unwrap_or_else(|| "100,1000".into())
        .split(',')
        .map(|n| n.trim().parse().context("--members takes numbers separated by commas"))
        .collect::<Result<_>>()?;
    let steady: usize = value("--steady").map_or(Ok(200), |n| n.parse()).context("--steady takes a number")?;
    let protocol = MemberProtocol::parse(value("--member-protocol").as_deref().unwrap_or("plain"))?;

    // Quiet unless RUST_LOG asks (logging would be part of what is measured).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if let Some(members) = value("--fake-api") {
        let members = members.parse().context("--fake-api takes a number of members")?;
        return runtime.block_on(serve_fake(members, protocol));
    }
    println!(
        "hub-bench: whole hub reconciles against a fake API in a child process (hub + members on 127.0.0.1); members speak {}",
        protocol.describe()
    );
    for members in sizes {
        runtime.block_on(bench(members, steady, protocol))?;
    }
    if let Some(kib) = proc_status_kib("VmHWM:") {
        println!("\npeak resident memory of the hub process (VmHWM): {:.1} MiB", kib as f64 / 1024.0);
    }
    Ok(())
}

/// How the fake members answer the hub. Kubernetes API servers speak HTTPS and offer
/// HTTP/2; `plain` (the default, and what the earlier figures in docs/benchmarks.md used)
/// leaves TLS out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MemberProtocol {
    /// Plain HTTP/1.1.
    Plain,
    /// HTTPS offering only HTTP/1.1 (ALPN `http/1.1`).
    Http1,
    /// HTTPS offering HTTP/2 and HTTP/1.1 (ALPN `h2`, `http/1.1`), as an API server does.
    H2,
}

impl MemberProtocol {
    fn parse(text: &str) -> Result<Self> {
        match text {
            "plain" => Ok(Self::Plain),
            "http1" => Ok(Self::Http1),
            "h2" => Ok(Self::H2),
            other => bail!("--member-protocol takes plain, http1 or h2, not {other:?}"),
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Http1 => "http1",
            Self::H2 => "h2",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Plain => "plain HTTP/1.1",
            Self::Http1 => "HTTPS offering HTTP/1.1 only",
            Self::H2 => "HTTPS offering HTTP/2 and HTTP/1.1",
        }
    }
}

/// The child process: serves the fake API and prints its address on the first line.
async fn serve_fake(members: usize, protocol: MemberProtocol) -> Result<()> {
    let fake = Fake::start(members, protocol).await?;
    // The parent reads the plain address (its own view, /bench/) and the one the hub uses.
    println!("{} {}", fake.addr, fake.hub_url);
    // Until the parent closes our stdin (or dies).
    tokio::task::spawn_blocking(|| std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new())).await??;
    Ok(())
}

/// The parent's handle on the fake API child.
struct FakeApi {
    child: tokio::process::Child,
    addr: SocketAddr,
    /// The URL the hub's client uses ([`Fake::hub_url`]).
    hub_url: String,
    http: reqwest::Client,
}

impl FakeApi {
    async fn spawn(members: usize, protocol: MemberProtocol) -> Result<FakeApi> {
        use tokio::io::AsyncBufReadExt as _;
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .args(["--fake-api", &members.to_string(), "--member-protocol", protocol.flag()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the fake API child")?;
        let stdout = child.stdout.take().context("the child's stdout")?;
        let mut line = String::new();
        tokio::io::BufReader::new(stdout).read_line(&mut line).await?;
        let (addr, hub_url) =
            line.trim().split_once(' ').with_context(|| format!("the fake API's addresses, got {line:?}"))?;
        let addr = addr.parse().with_context(|| format!("the fake API's address, got {line:?}"))?;
        Ok(FakeApi { child, addr, hub_url: hub_url.to_string(), http: reqwest::Client::new() })
    }

    fn client(&self) -> Result<Client> {
        // The hub's own client, built as `petrel --mode hub` builds it; over TLS the fake's
        // made-up certificate is not verified.
        let mut config = Config::new(self.hub_url.parse().context("the fake API's address")?);
        config.accept_invalid_certs = self.hub_url.starts_with("https://");
        let answer_timeout = config.read_timeout;
        Ok(petrel::client::build(config, answer_timeout, petrel::client::DEFAULT_API_CONNECTIONS)?)
    }

    async fn bench_state(&self) -> Result<Value> {
        Ok(self.http.get(format!("http://{}/bench/state", self.addr)).send().await?.json().await?)
    }

    async fn rollout(&self) -> Result<Rollout> {
        Ok(serde_json::from_value(self.bench_state().await?["rollout"].take())?)
    }

    async fn wait_for_watches(&self, members: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let open = self.bench_state().await?["openWatches"].as_u64().unwrap_or(0) as usize;
            if open >= members {
                break;
            }
            if Instant::now() > deadline {
                bail!("only {open} of {members} member watches started");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The initial lists' events reach the caches.
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(())
    }

    /// Waits until no member changed for `quiet` (the promotions the last reconcile's
    /// approvals set off have reached the watches).
    async fn wait_for_quiet(&self, quiet: Duration, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let since = self.bench_state().await?["msSinceLastChange"].as_u64().unwrap_or(u64::MAX);
            if since >= quiet.as_millis() as u64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }

    async fn take_counts(&self) -> Result<BTreeMap<String, u64>> {
        let counts = self.http.post(format!("http://{}/bench/take-counts", self.addr)).send().await?.json().await?;
        Ok(counts)
    }

    async fn stop(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait().await;
    }
}

async fn bench(members: usize, steady: usize, protocol: MemberProtocol) -> Result<()> {
    println!("\n== {members} members ==");
    let fake = FakeApi::spawn(members, protocol).await?;
    let rss_before = proc_status_kib("VmRSS:").unwrap_or(0);

    // The hub as `petrel --mode hub` runs it, minus the Controller's scheduling: the
    // member watches' manager and the probes run; the bench calls reconcile itself.
    let ctx = Arc::new(HubContext::new(fake.client()?, Some("bench".into())));
    let manager = tokio::spawn(ctx.watches.clone().manage());
    let probes = tokio::spawn(clusters::run_probes(ctx.clone()));

    // The release: until the Rollout succeeded.
    let mut release = Samples::default();
    let started = Instant::now();
    loop {
        let rollout = fake.rollout().await?;
        if rollout.status.as_ref().and_then(|s| s.phase) == Some(RolloutPhase::Succeeded) {
            break;
        }
        if release.len() > 200 {
            bail!(
                "the release did not finish in 200 reconciles: {:#}",
                rollout.status.map_or(json!(null), |s| json!(s))
            );
        }
        let start = Instant::now();
        reconcile(Arc::new(rollout), ctx.clone()).await.context("a reconcile during the release")?;
        release.push(start.elapsed());
        // What the Controller does after the first reconcile: the watches start; then
        // member changes arrive as watch events before the next reconcile.
        if release.len() == 1 {
            fake.wait_for_watches(members, Duration::from_secs(60)).await?;
        } else {
            fake.wait_for_quiet(Duration::from_millis(20), Duration::from_secs(10)).await?;
        }
    }
    let release_time = started.elapsed();
    println!(
        "release to Succeeded: {} reconciles in {:.2} s; per reconcile {} (the first builds every member's clients)",
        release.len(),
        release_time.as_secs_f64(),
        release.summary(),
    );

    // Steady, warm caches.
    fake.take_counts().await?;
    let warm = run_steady(&fake, &ctx, steady).await?;
    let counts = fake.take_counts().await?;
    let rss_hub = proc_status_kib("VmRSS:").unwrap_or(0);
    println!("steady reconcile, member watches warm ({steady} runs): {}", warm.summary());
    print_counts(&counts, steady);
    println!(
        "hub resident memory with {members} members watched and probed: {:.1} MiB (+{:.1} MiB over the process before the hub started, {:.0} KiB per member)",
        rss_hub as f64 / 1024.0,
        rss_hub.saturating_sub(rss_before) as f64 / 1024.0,
        rss_hub.saturating_sub(rss_before) as f64 / members as f64,
    );

    // Steady, warm member watches, and the Clusters read from a store the hub's Cluster
    // watch would fill (as `petrel --mode hub` does) instead of a LIST per reconcile.
    let (store, mut writer) = kube::runtime::reflector::store::<Cluster>();
    writer.apply_watcher_event(&watcher::Event::Init);
    for cluster in Api::<Cluster>::all(fake.client()?).list(&Default::default()).await?.items {
        writer.apply_watcher_event(&watcher::Event::InitApply(cluster));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    ctx.read_clusters_from(store);
    ctx.health.register(CLUSTERS_WATCH);
    for event in [watcher::Event::Init, watcher::Event::InitDone] {
        ctx.health.observe::<Cluster>(CLUSTERS_WATCH, &Ok(event));
    }
    fake.take_counts().await?;
    let cached = run_steady(&fake, &ctx, steady).await?;
    let cached_counts = fake.take_counts().await?;
    println!(
        "steady reconcile, member watches warm, Clusters from the watch's store ({steady} runs): {}",
        cached.summary()
    );
    print_counts(&cached_counts, steady);

    // Steady, no watches: every member read is a GET.
    manager.abort();
    probes.abort();
    ctx.watches.stop_all();
    drop(ctx);
    let cold_ctx = Arc::new(HubContext::new(fake.client()?, Some("bench-cold".into())));
    let cold_runs = (steady / 4).max(10);
    run_steady(&fake, &cold_ctx, 1).await?; // builds the member clients once
    fake.take_counts().await?;
    let cold = run_steady(&fake, &cold_ctx, cold_runs).await?;
    let cold_counts = fake.take_counts().await?;
    println!("steady reconcile, no watches ({cold_runs} runs): {}", cold.summary());
    print_counts(&cold_counts, cold_runs);
    fake.stop().await;
    Ok(())
}

async fn run_steady(fake: &FakeApi, ctx: &Arc<HubContext>, runs: usize) -> Result<Samples> {
    let mut samples = Samples::default();
    for _ in 0..runs {
        let rollout = fake.rollout().await?;
        let start = Instant::now();
        reconcile(Arc::new(rollout), ctx.clone()).await.context("a steady reconcile")?;
        samples.push(start.elapsed());
    }
    Ok(samples)
}

fn print_counts(counts: &BTreeMap<String, u64>, runs: usize) {
    let per_run: Vec<String> =
        counts.iter().map(|(kind, n)| format!("{kind} {:.1}", *n as f64 / runs.max(1) as f64)).collect();
    println!("  requests per reconcile: {}", if per_run.is_empty() { "none".into() } else { per_run.join(", ") });
}

#[derive(Default)]
struct Samples(Vec<Duration>);

impl Samples {
    fn push(&mut self, d: Duration) {
        self.0.push(d);
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.0.clone();
        sorted.sort();
        sorted
            .get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    }
    fn max(&self) -> Duration {
        self.0.iter().max().copied().unwrap_or_default()
    }
    /// `median … p99 … max …`.
    fn summary(&self) -> String {
        format!("median {} p99 {} max {}", fmt(self.quantile(0.5)), fmt(self.quantile(0.99)), fmt(self.max()))
    }
}

// ---------------------------------------------------------------------------------------
// The fake API: just enough of the Kubernetes API for the hub's requests.

/// One simulated member: its Canary and the watches on it.
struct FakeMember {
    canary: Value,
    events: broadcast::Sender<Bytes>,
}

struct World {
    rollout: Value,
    clusters: Vec<Value>,
    members: HashMap<String, FakeMember>,
    resource_version: u64,
    counts: BTreeMap<&'static str, u64>,
    open_watches: usize,
    last_change: Instant,
}

struct Fake {
    addr: SocketAddr,
    /// Where the hub reaches the fake: the TLS listener when the members speak TLS (an
    /// API server answers its own operator as it answers the hub), else `addr`.
    hub_url: String,
    _server: tokio::task::JoinHandle<()>,
}

fn lock(world: &Mutex<World>) -> MutexGuard<'_, World> {
    // A handler that panicked leaves a consistent map (single updates); go on.
    world.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn cluster_name(i: usize) -> String {
    format!("cluster-{i:05}")
}

fn waves() -> Value {
    let wave = |name: &str, selector: Value, concurrency: Value| {
        json!({"name": name, "clusterSelector": selector, "maxConcurrency": concurrency,
               "maxFailures": "10%", "soak": "0s", "progressDeadline": "30m"})
    };
    let region_in =
        |values: &[&str]| json!({"matchExpressions": [{"key": "region", "operator": "In", "values": values}]});
    json!([
        wave("canary", json!({"matchLabels": {"role": "canary"}}), json!(1)),
        wave("eu", region_in(&["eu-west", "eu-central"]), json!("25%")),
        wave("us", region_in(&["us-east"]), json!("25%")),
        wave("rest", region_in(&["ap-south"]), json!("20%")),
    ])
}

impl Fake {
    async fn start(members: usize, protocol: MemberProtocol) -> Result<Fake> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        // The members' endpoint: the same server, or a TLS listener beside it.
        let member_tls = match protocol {
            MemberProtocol::Plain => None,
            MemberProtocol::Http1 | MemberProtocol::H2 => {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                Some((listener.local_addr()?, listener))
            }
        };
        let members_url: Arc<str> = match &member_tls {
            None => format!("http://{addr}").into(),
            Some((tls_addr, _)) => format!("https://{tls_addr}").into(),
        };
        let gate_time = Utc::now().to_rfc3339();
        let mut clusters = Vec::with_capacity(members);
        let mut fake_members = HashMap::with_capacity(members);
        for i in 0..members {
            let name = cluster_name(i);
            // 1% canary clusters; the rest spread over regions (disjoint waves: a
            // member in two waves would be a `WavesOverlap` problem).
            let labels = if i % 100 == 0 {
                json!({"env": "staging", "role": "canary"})
            } else {
                json!({"env": "prod", "region": REGIONS[i % REGIONS.len()]})
            };
            clusters.push(json!({
                "apiVersion": "petrel.dev/v1alpha1", "kind": "Cluster",
                "metadata": {"name": name, "labels": labels, "resourceVersion": "1", "generation": 1},
                "spec": {"kubeconfigSecretRef": {"name": name, "namespace": "petrel-system", "key": "kubeconfig"}}
            }));
            let canary = json!({
                "apiVersion": "petrel.dev/v1alpha1", "kind": "Canary",
                "metadata": {"name": "podinfo", "namespace": "podinfo", "resourceVersion": "1", "generation": 1,
                             "annotations": {"petrel.dev/rollout": "fleet/podinfo"}},
                "spec": {"targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
                         "service": {"port": 9898}},
                "status": {"phase": "Waiting", "release": OLD, "lastAppliedSpec": "rev-old", "lastPromotedSpec": "rev-old",
                           "waitingRevision": format!("rev-{i:05}"), "waitingRelease": NEW,
                           "lastTransitionTime": gate_time}
            });
            let (events, _) = broadcast::channel(16);
            fake_members.insert(name, FakeMember { canary, events });
        }
        let rollout = json!({
            "apiVersion": "petrel.dev/v1alpha1", "kind": "Rollout",
            "metadata": {"name": "podinfo", "namespace": "fleet", "resourceVersion": "1", "generation": 1,
                         "uid": "00000000-0000-0000-0000-000000000001"},
            "spec": {"canaryRef": {"namespace": "podinfo", "name": "podinfo"}, "waves": waves()}
        });
        let world = Arc::new(Mutex::new(World {
            rollout,
            clusters,
            members: fake_members,
            resource_version: 1,
            counts: BTreeMap::new(),
            open_watches: 0,
            last_change: Instant::now(),
        }));
        let app = axum::Router::new().fallback(handle).with_state((world.clone(), members_url.clone()));
        if let Some((_, tls_listener)) = member_tls {
            tokio::spawn(serve_tls(tls_listener, app.clone(), protocol == MemberProtocol::H2)?);
        }
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("fake API stopped: {e}");
            }
        });
        Ok(Fake { addr, hub_url: members_url.to_string(), _server: server })
    }
}

/// The fake's world, and the base URL of the members' endpoint (for their kubeconfigs).
type AppState = (Arc<Mutex<World>>, Arc<str>);

/// Serves `app` over TLS on `listener` with a self-signed certificate, offering HTTP/2
/// (when `h2`) and HTTP/1.1 by ALPN, as a Kubernetes API server does.
fn serve_tls(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    h2: bool,
) -> Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio_rustls::rustls;
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])?;
    let key = rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der())
        .map_err(|e| anyhow::anyhow!("the fake members' key: {e}"))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)?;
    tls.alpn_protocols = if h2 { vec![b"h2".to_vec(), b"http/1.1".to_vec()] } else { vec![b"http/1.1".to_vec()] };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    Ok(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            // As an API server does (Go sets TCP_NODELAY on every connection).
            let _ = tcp.set_nodelay(true);
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else { return };
                let negotiated_h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                let service = hyper_util::service::TowerToHyperService::new(app);
                let io = TokioIo::new(stream);
                let _ = if negotiated_h2 {
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .max_concurrent_streams(1000)
                        .serve_connection(io, service)
                        .await
                } else {
                    hyper::server::conn::http1::Builder::new().serve_connection(io, service).await
                };
            });
        }
    })
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert("content-type", axum::http::HeaderValue::from_static("application/json"));
    response
}

fn not_found(path: &str) -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                "message": format!("{path} not found")}),
    )
}

/// A self-signed CA certificate (public part only, made once with `openssl req -x509`):
/// a real member kubeconfig carries its API server's CA, and the client's TLS setup for
/// one CA costs far less than loading the system's roots, so the memory figure needs it.
const MEMBER_CA_PEM: &str = "-----BEGIN CERTIFICATE-----\n\
MIIBhjCCASugAwIBAgIUKuunZurylP6xoza5aCi9LlmCsGswCgYIKoZIzj0EAwIw\n\
FzEVMBMGA1UEAwwMaHViLWJlbmNoLWNhMCAXDTI2MTIwMTIwMTQzN1oYDzIxMjYx\n\
MTA3MjAxNDM3WjAXMRUwEwYDVQQDDAxodWItYmVuY2gtY2EwWTATBgcqhkjOPQIB\n\
BggqhkjOPQMBBwNCAAQld0EkQQ1zSMvRr0cUl38KH41w8Nz2dPb8A3TqyFyPUhg5\n\
r4+RfI+/10fq6Z5UBDQz8QeNy4mbaXCjBm+FrWpho1MwUTAdBgNVHQ4EFgQUfcJm\n\
24wGXDJPrZVyCY65oz2AWu8wHwYDVR0jBBgwFoAUfcJm24wGXDJPrZVyCY65oz2A\n\
Wu8wDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNJADBGAiEA9rc0X4ruIcpy\n\
wgaQ5WrgYIpln3oySzBUZqQTEofXNaoCIQChAQB6WuxT48h5SCTQtd/oExbRcJql\n\
l32ViEx8nbbPyg==\n\
-----END CERTIFICATE-----\n";

fn kubeconfig(members_url: &str, cluster: &str) -> Result<String, serde_yaml::Error> {
    let tls = members_url.starts_with("https://");
    let kubeconfig = Kubeconfig {
        api_version: Some("v1".into()),
        kind: Some("Config".into()),
        clusters: vec![NamedCluster {
            name: cluster.into(),
            cluster: Some(kube::config::Cluster {
                server: Some(format!("{members_url}/members/{cluster}")),
                // Over TLS the fake's certificate is made up at its start: not verified.
                certificate_authority_data: (!tls).then(|| STANDARD.encode(MEMBER_CA_PEM)),
                insecure_skip_tls_verify: tls.then_some(true),
                ..Default::default()
            }),
            ..Default::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: "hub".into(),
            auth_info: Some(AuthInfo { token: Some("bench".into()), ..Default::default() }),
            ..Default::default()
        }],
        contexts: vec![NamedContext {
            name: cluster.into(),
            context: Some(kube::config::Context {
                cluster: cluster.into(),
                user: Some("hub".into()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        current_context: Some(cluster.into()),
        ..Default::default()
    };
    serde_yaml::to_string(&kubeconfig)
}

async fn handle(State((world, members_url)): State<AppState>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or_default().to_string();
    let body = axum::body::to_bytes(request.into_body(), usize::MAX).await.unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if let Some(rest) = path.strip_prefix("/members/") {
        let (cluster, member_path) =
            rest.split_once('/').map_or((rest, "/".to_string()), |(c, p)| (c, format!("/{p}")));
        return member_request(&world, cluster, &method, &member_path, &query, body);
    }
    if let Some(bench) = path.strip_prefix("/bench/") {
        return bench_request(&world, bench);
    }
    hub_request(&world, &members_url, &method, &path, body)
}

/// The bench's own view of the fake: the Rollout, the watches, the request counts.
fn bench_request(world: &Mutex<World>, what: &str) -> Response {
    let mut world = lock(world);
    match what {
        "state" => json_response(
            StatusCode::OK,
            &json!({"rollout": world.rollout, "openWatches": world.open_watches,
                    "msSinceLastChange": world.last_change.elapsed().as_millis() as u64}),
        ),
        "take-counts" => json_response(StatusCode::OK, &json!(std::mem::take(&mut world.counts))),
        _ => not_found(what),
    }
}

fn count(world: &mut World, kind: &'static str) {
    *world.counts.entry(kind).or_default() += 1;
}

fn hub_request(world: &Mutex<World>, members_url: &str, method: &Method, path: &str, body: Value) -> Response {
    let mut world = lock(world);
    match (method.as_str(), path) {
        ("GET", "/apis/petrel.dev/v1alpha1/clusters") => {
            count(&mut world, "hub LIST clusters");
            let items = world.clusters.clone();
            json_response(
                StatusCode::OK,
                &json!({"apiVersion": "petrel.dev/v1alpha1", "kind": "ClusterList",
                        "metadata": {"resourceVersion": world.resource_version.to_string()}, "items": items}),
            )
        }
        ("GET", p) if p.starts_with("/api/v1/namespaces/petrel-system/secrets/") => {
            count(&mut world, "hub GET secret");
            let name = p.rsplit('/').next().unwrap_or_default();
            match kubeconfig(members_url, name) {
                Ok(kubeconfig) => json_response(
                    StatusCode::OK,
                    &json!({"apiVersion": "v1", "kind": "Secret",
                            "metadata": {"name": name, "namespace": "petrel-system", "resourceVersion": "1"},
                            "data": {"kubeconfig": k8s_openapi::ByteString(kubeconfig.into_bytes())}}),
                ),
                Err(e) => json_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &json!({"kind": "Status", "code": 500, "message": format!("writing the kubeconfig: {e}")}),
                ),
            }
        }
        ("PATCH", ROLLOUT_STATUS) => {
            count(&mut world, "hub PATCH rollout status");
            world.resource_version += 1;
            let rv = world.resource_version.to_string();
            world.rollout["status"] = body["status"].clone();
            world.rollout["metadata"]["resourceVersion"] = json!(rv);
            json_response(StatusCode::OK, &world.rollout.clone())
        }
        ("PATCH", p) if p.starts_with("/apis/petrel.dev/v1alpha1/clusters/") && p.ends_with("/status") => {
            count(&mut world, "hub PATCH cluster status");
            let name = p.trim_end_matches("/status").rsplit('/').next().unwrap_or_default().to_string();
            let Some(cluster) = world.clusters.iter_mut().find(|c| c["metadata"]["name"] == name.as_str()) else {
                return not_found(p);
            };
            cluster["status"] = body["status"].clone();
            json_response(StatusCode::OK, &cluster.clone())
        }
        ("POST" | "PATCH", p) if p.starts_with("/apis/events.k8s.io/v1/") => {
            count(&mut world, "hub write event");
            json_response(if method == Method::POST { StatusCode::CREATED } else { StatusCode::OK }, &body)
        }
        _ => not_found(path),
    }
}

fn member_request(
    world_lock: &Arc<Mutex<World>>,
    cluster: &str,
    method: &Method,
    path: &str,
    query: &str,
    body: Value,
) -> Response {
    let mut world = lock(world_lock);
    if !world.members.contains_key(cluster) {
        return not_found(path);
    }
    match (method.as_str(), path) {
        ("GET", "/version") => {
            count(&mut world, "member GET version");
            json_response(
                StatusCode::OK,
                &json!({"major": "1", "minor": "36", "gitVersion": "v1.36.4", "gitCommit": "bench",
                        "gitTreeState": "clean", "buildDate": "2026-11-01T00:00:00Z", "goVersion": "go1.26.8",
                        "compiler": "gc", "platform": "linux/amd64"}),
            )
        }
        // Who the member is (the hub verifies it before it approves anything there).
        ("GET", "/api/v1/namespaces/kube-system") => {
            count(&mut world, "member GET kube-system");
            json_response(
                StatusCode::OK,
                &json!({"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": "kube-system", "uid": format!("uid-{cluster}")}}),
            )
        }
        ("GET", "/apis/petrel.dev/v1alpha1/clusteridentities/petrel") => {
            count(&mut world, "member GET clusteridentity");
            json_response(
                StatusCode::OK,
                &json!({"apiVersion": "petrel.dev/v1alpha1", "kind": "ClusterIdentity",
                        "metadata": {"name": "petrel"},
                        "spec": {"clusterName": cluster, "kubeSystemUID": format!("uid-{cluster}")}}),
            )
        }
        ("GET", GROUP) => {
            count(&mut world, "member GET api group");
            json_response(
                StatusCode::OK,
                &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "petrel.dev/v1alpha1",
                        "resources": [{"name": "canaries", "singularName": "canary", "namespaced": true,
                                       "kind": "Canary", "verbs": ["get", "list", "watch", "patch"]}]}),
            )
        }
        ("GET", CANARY) => {
            count(&mut world, "member GET canary");
            let canary = world.members[cluster].canary.clone();
            json_response(StatusCode::OK, &canary)
        }
        ("GET", CANARIES) if query.split('&').any(|p| p == "watch=true" || p == "watch=1") => {
            count(&mut world, "member WATCH canary");
            world.open_watches += 1;
            let receiver = world.members[cluster].events.subscribe();
            // As an API server does: what changed after the version the watch starts
            // from comes first (here the one object, when it is newer).
            let since: u64 = query
                .split('&')
                .find_map(|p| p.strip_prefix("resourceVersion="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let canary = &world.members[cluster].canary;
            let current: u64 = canary["metadata"]["resourceVersion"].as_str().and_then(|v| v.parse().ok()).unwrap_or(0);
            let missed = (current > since).then(|| {
                Ok::<_, std::convert::Infallible>(Bytes::from(format!(
                    "{}\n",
                    json!({"type": "MODIFIED", "object": canary})
                )))
            });
            let live = futures::stream::unfold(receiver, |mut receiver| async move {
                loop {
                    match receiver.recv().await {
                        Ok(line) => return Some((Ok::<_, std::convert::Infallible>(line), receiver)),
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            });
            let stream = futures::stream::iter(missed).chain(live);
            let mut response = Response::new(Body::from_stream(stream.boxed()));
            response.headers_mut().insert("content-type", axum::http::HeaderValue::from_static("application/json"));
            response
        }
        ("GET", CANARIES) => {
            count(&mut world, "member LIST canaries");
            let canary = world.members[cluster].canary.clone();
            let rv = world.resource_version.to_string();
            json_response(
                StatusCode::OK,
                &json!({"apiVersion": "petrel.dev/v1alpha1", "kind": "CanaryList",
                        "metadata": {"resourceVersion": rv}, "items": [canary]}),
            )
        }
        ("PATCH", CANARY) => {
            count(&mut world, "member PATCH canary");
            // Server-side apply of the hub's annotations: the hub's set replaces what it
            // applied before; other annotations stay.
            let applied = body["metadata"]["annotations"].as_object().cloned().unwrap_or_default();
            let mut canary = world.members[cluster].canary.clone();
            if let Some(annotations) = canary["metadata"]["annotations"].as_object_mut() {
                annotations.retain(|k, _| !k.starts_with("petrel.dev/"));
                annotations.extend(applied);
            }
            let approved = canary["metadata"]["annotations"][APPROVED_REVISION_ANNOTATION].as_str().map(String::from);
            let waiting = canary["status"]["waitingRevision"].as_str().map(String::from);
            let answer = store(&mut world, cluster, canary.clone());
            // The member's petrel: approved at its waiting revision, it releases and
            // promotes (here at once; the hub sees it through its watch).
            if approved.is_some() && approved == waiting && canary["status"]["phase"] == "Waiting" {
                let world = world_lock.clone();
                let cluster = cluster.to_string();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    let mut world = lock(&world);
                    let mut canary = world.members[&cluster].canary.clone();
                    let revision = canary["status"]["waitingRevision"].clone();
                    canary["status"] = json!({
                        "phase": "Succeeded", "release": NEW, "promotedRelease": NEW,
                        "lastAppliedSpec": revision, "lastPromotedSpec": revision,
                        "lastTransitionTime": Utc::now().to_rfc3339()
                    });
                    store(&mut world, &cluster, canary);
                });
            }
            json_response(StatusCode::OK, &answer)
        }
        _ => not_found(path),
    }
}

/// Stores a member's new Canary with a new resourceVersion and tells its watches.
fn store(world: &mut World, cluster: &str, mut canary: Value) -> Value {
    world.resource_version += 1;
    canary["metadata"]["resourceVersion"] = json!(world.resource_version.to_string());
    world.last_change = Instant::now();
    if let Some(member) = world.members.get_mut(cluster) {
        member.canary = canary.clone();
        let line = format!("{}\n", json!({"type": "MODIFIED", "object": canary}));
        // No watch yet is fine: the watch's initial list reads the stored Canary.
        let _ = member.events.send(Bytes::from(line));
    }
    canary
}
