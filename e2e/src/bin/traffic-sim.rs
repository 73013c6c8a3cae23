//! `traffic-sim`: the traffic simulator as a standalone process, for the
//! demo. It reads each app's route from its cluster, generates requests as
//! the route splits them, and serves provider-shaped metrics on
//! `http://<listen>/metrics` for Prometheus to scrape.
//!
//! ```text
//! traffic-sim --listen 127.0.0.1:9100 \
//!   --app kubeconfig=/tmp/fleet/member-1/kubeconfig,namespace=test,name=podinfo,provider=istio \
//!   --app kubeconfig=/tmp/fleet/member-2/kubeconfig,namespace=test,name=podinfo,provider=nginx,ingress=podinfo \
//!   --version podinfo:6.0.1=0.2,500
//! # change a version's behaviour while it runs:
//! curl -X PUT localhost:9100/versions/podinfo:6.0.1 -d '{"errorRate": 0, "latencyMs": 50}'
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use kube::config::{KubeConfigOptions, Kubeconfig};
use petrel_e2e::simulator::{App, AppCoords, Provider, Simulator, SimulatorConfig, TrafficProfile, VersionBehaviour};

#[derive(Debug, Parser)]
#[command(about = "Simulated traffic that follows petrel's routes, with Prometheus metrics per provider")]
struct Cli {
    /// Address for /metrics and the control endpoints.
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
    /// An app: comma-separated key=value with `namespace`, `name` (the
    /// Canary), `provider`, and optionally `kubeconfig`, `target`,
    /// `service`, `ingress`, `port`. Repeat for several apps.
    #[arg(long = "app", required = true)]
    apps: Vec<String>,
    /// Kubeconfig for apps that do not name one.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Requests per second per app.
    #[arg(long, default_value_t = 50.0)]
    rps: f64,
    /// Fraction (0–1) of requests carrying the --match-header headers.
    #[arg(long, default_value_t = 0.0)]
    header_fraction: f64,
    /// A header (`name=value`) carried by the --header-fraction of requests,
    /// e.g. the A/B header of a Canary's `analysis.match`.
    #[arg(long = "match-header")]
    match_headers: Vec<String>,
    /// A version's behaviour: `<image>=<errorRate 0-1>,<latencyMs>`.
    #[arg(long = "version")]
    versions: Vec<String>,
    /// Milliseconds between route reads.
    #[arg(long, default_value_t = 500)]
    tick_ms: u64,
}

fn key_values(spec: &str) -> Result<BTreeMap<String, String>> {
    spec.split(',')
        .filter(|part| !part.trim().is_empty())
        .map(|part| {
            part.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| anyhow!("{part:?} is not key=value"))
        })
        .collect()
}

fn parse_version(spec: &str) -> Result<(String, VersionBehaviour)> {
    let (image, behaviour) =
        spec.rsplit_once('=').ok_or_else(|| anyhow!("--version {spec:?}: expected <image>=<errorRate>,<latencyMs>"))?;
    let (rate, latency) = behaviour
        .split_once(',')
        .ok_or_else(|| anyhow!("--version {spec:?}: expected <errorRate>,<latencyMs> after '='"))?;
    Ok((
        image.to_owned(),
        VersionBehaviour::new(
            rate.parse().with_context(|| format!("--version {spec:?}: error rate"))?,
            latency.parse().with_context(|| format!("--version {spec:?}: latency"))?,
        ),
    ))
}

async fn client_for(kubeconfig: &PathBuf) -> Result<kube::Client> {
    let kc = Kubeconfig::read_from(kubeconfig).with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading {}", kubeconfig.display()))?;
    kube::Client::try_from(config).context("building a Kubernetes client")
}

async fn app(spec: &str, cli: &Cli, profile: &TrafficProfile) -> Result<App> {
    let mut kv = key_values(spec).with_context(|| format!("--app {spec:?}"))?;
    let mut take = |key: &str| kv.remove(key);
    let namespace = take("namespace").ok_or_else(|| anyhow!("--app {spec:?}: namespace= is required"))?;
    let name = take("name").ok_or_else(|| anyhow!("--app {spec:?}: name= is required"))?;
    let provider: Provider =
        take("provider").ok_or_else(|| anyhow!("--app {spec:?}: provider= is required"))?.parse()?;
    let mut coords = AppCoords::new(&namespace, &name, provider);
    if let Some(target) = take("target") {
        coords.service.clone_from(&target);
        coords.target = target;
    }
    if let Some(service) = take("service") {
        coords.service = service;
    }
    coords.ingress = take("ingress");
    if let Some(port) = take("port") {
        coords.port = port.parse().with_context(|| format!("--app {spec:?}: port"))?;
    }
    let kubeconfig = take("kubeconfig")
        .map(PathBuf::from)
        .or_else(|| cli.kubeconfig.clone())
        .ok_or_else(|| anyhow!("--app {spec:?}: no kubeconfig= and no --kubeconfig"))?;
    if let Some(unknown) = kv.keys().next() {
        bail!("--app {spec:?}: unknown key {unknown:?}");
    }
    Ok(App::from_cluster(client_for(&kubeconfig).await?, coords).profile(profile.clone()))
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let cli = Cli::parse();
    let mut match_headers = BTreeMap::new();
    for header in &cli.match_headers {
        let (name, value) =
            header.split_once('=').ok_or_else(|| anyhow!("--match-header {header:?} is not name=value"))?;
        match_headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    let profile = TrafficProfile { requests_per_second: cli.rps, header_fraction: cli.header_fraction, match_headers };
    let mut apps = Vec::new();
    for spec in &cli.apps {
        apps.push(app(spec, &cli, &profile).await?);
    }
    let sim = Simulator::start(
        SimulatorConfig { listen: cli.listen, tick: Duration::from_millis(cli.tick_ms), ..SimulatorConfig::default() },
        apps,
    )
    .await?;
    for version in &cli.versions {
        let (image, behaviour) = parse_version(version)?;
        sim.set_version(&image, behaviour)?;
    }
    tracing::info!(addr = %sim.addr(), "traffic simulator serving /metrics");
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_app_and_version_specs() {
        let kv = key_values("namespace=test, name=podinfo,provider=istio").unwrap();
        assert_eq!(kv["name"], "podinfo");
        assert!(key_values("namespace").is_err());
        let (image, b) = parse_version("ghcr.io/x/podinfo:6.0.1=0.2,500").unwrap();
        assert_eq!(image, "ghcr.io/x/podinfo:6.0.1");
        assert_eq!(b, VersionBehaviour::new(0.2, 500.0));
        assert!(parse_version("podinfo:1=0.2").is_err());
    }
}
