//! The petrel operator.

use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use petrel::controller::{self, Context, EventSink, Settings};
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
#[command(version, about)]
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
    /// Name of this cluster, shown in alerts and events.
    #[arg(long, env = "PETREL_CLUSTER_NAME", default_value = "cluster")]
    cluster_name: String,
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

async fn client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context("finding a Kubernetes configuration")?,
    };
    kube::Client::try_from(config).context("creating the Kubernetes client")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(args.log_json);
    let client = client(args.kubeconfig.as_deref()).await?;
    let http = reqwest::Client::builder()
        .user_agent(concat!("petrel/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("creating the HTTP client")?;
    // Bound before anything else starts, so a taken port fails the start-up at once.
    let listener = telemetry::bind(&args.metrics_addr).await?;
    tracing::info!(addr = %listener.local_addr().context("reading the metrics address")?, "serving /metrics, /livez and /readyz");
    let metrics = Arc::new(Metrics::default());
    let readiness = Readiness::new();
    if args.mode == Mode::Hub {
        let hub = Arc::new(petrel::hub::HubContext::new(client, std::env::var("POD_NAME").ok()));
        // The hub has no cache to warm before it can serve: ready once it starts.
        readiness.mark_ready();
        return tokio::select! {
            result = petrel::hub::run(hub) => result,
            result = telemetry::serve(listener, metrics, readiness, std::future::pending()) => {
                result.context("serving metrics and health checks")
            }
        };
    }
    let ctx = Arc::new(Context {
        events: EventSink::new(client.clone(), std::env::var("POD_NAME").ok()),
        client,
        http,
        settings: Settings {
            default_provider: args.provider,
            metrics_server: args.metrics_server,
            cluster_name: args.cluster_name,
        },
        metrics: metrics.clone(),
        readiness: readiness.clone(),
    });
    // The server lives as long as the controller; it stops with it.
    tokio::select! {
        result = controller::run(ctx, args.namespace) => result,
        result = telemetry::serve(listener, metrics, readiness, std::future::pending()) => {
            result.context("serving metrics and health checks")
        }
    }
}
