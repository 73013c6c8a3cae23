//! `kubectl petrel`: see and steer Canaries.
//!
//! Every verb is one merge patch on the Canary (printed with `--dry-run` as the equivalent
//! kubectl command); the decisions and the rendering live in `petrel::plugin`.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use chrono::Utc;
use clap::{Args, CommandFactory, Parser, Subcommand};
use futures::{StreamExt, TryStreamExt};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use petrel::api::Canary;
use petrel::plugin::{Command, plan_command, render_canary, render_table};

/// Field manager of the plugin's patches, so `managedFields` shows who paused or aborted.
const FIELD_MANAGER: &str = "kubectl-petrel";
/// Clears the terminal and moves the cursor home before a redraw.
const CLEAR_SCREEN: &str = "\x1b[H\x1b[2J";

/// See and steer petrel Canaries.
#[derive(Parser, Debug)]
#[command(name = "kubectl-petrel", version, about)]
struct Cli {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: Verb,
}

#[derive(Args, Debug)]
struct Connection {
    /// Path of the kubeconfig (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, global = true, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    /// Namespace (default: the context's namespace).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Verb {
    /// Show Canaries: a tree for one, a table for many.
    Get {
        #[command(subcommand)]
        kind: GetKind,
    },
    /// Promote the revision under analysis now, skipping the remaining steps.
    Promote(Target),
    /// Roll the revision under analysis back now.
    Abort(Target),
    /// Analyse a Failed revision again.
    Retry(Target),
    /// Freeze a Canary: petrel leaves traffic, replicas and status as they are.
    Pause(Target),
    /// Unfreeze a paused Canary.
    Resume(Target),
    /// Print a shell completion script.
    Completion { shell: clap_complete::Shell },
}

#[derive(Subcommand, Debug)]
enum GetKind {
    /// Canaries.
    #[command(visible_alias = "canaries", alias = "cnry")]
    Canary(GetArgs),
}

#[derive(Args, Debug)]
struct GetArgs {
    /// A Canary's name; all Canaries of the namespace when omitted.
    name: Option<String>,
    /// Canaries of every namespace.
    #[arg(short = 'A', long, conflicts_with = "name")]
    all_namespaces: bool,
    /// Redraw whenever a Canary changes.
    #[arg(short = 'w', long)]
    watch: bool,
}

#[derive(Args, Debug)]
struct Target {
    /// The Canary's name.
    name: String,
    /// Print the patch and the equivalent kubectl command without applying it.
    #[arg(long)]
    dry_run: bool,
}

async fn connect(connection: &Connection) -> anyhow::Result<(Client, String)> {
    let options = kube::config::KubeConfigOptions { context: connection.context.clone(), ..Default::default() };
    let config = match &connection.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))?
        }
        None => match kube::Config::from_kubeconfig(&options).await {
            Ok(config) => config,
            Err(kubeconfig_error) => {
                kube::Config::incluster().map_err(|_| kubeconfig_error).context("finding a Kubernetes configuration")?
            }
        },
    };
    let namespace = connection.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).context("creating the Kubernetes client")?;
    Ok((client, namespace))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line a person reads (with its causes), not a backtrace.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let command = match cli.command {
        Verb::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "kubectl-petrel", &mut std::io::stdout());
            return Ok(());
        }
        Verb::Get { kind: GetKind::Canary(args) } => {
            let (client, namespace) = connect(&cli.connection).await?;
            return get(client, &namespace, args).await;
        }
        Verb::Promote(t) => (Command::Promote, t),
        Verb::Abort(t) => (Command::Abort, t),
        Verb::Retry(t) => (Command::Retry, t),
        Verb::Pause(t) => (Command::Pause, t),
        Verb::Resume(t) => (Command::Resume, t),
    };
    let (client, namespace) = connect(&cli.connection).await?;
    run_verb(client, &namespace, command.0, &command.1).await
}

async fn run_verb(client: Client, namespace: &str, command: Command, target: &Target) -> anyhow::Result<()> {
    let api: Api<Canary> = Api::namespaced(client, namespace);
    let canary = api.get(&target.name).await.map_err(|e| read_error(e, namespace, &target.name))?;
    let planned = match plan_command(command, &canary, Utc::now()) {
        Ok(planned) => planned,
        Err(refusal) => bail!("{refusal}"),
    };
    if target.dry_run {
        println!("{}", planned.kubectl);
        return Ok(());
    }
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_string()), ..Default::default() };
    api.patch(&target.name, &params, &Patch::Merge(&planned.patch))
        .await
        .with_context(|| format!("patching Canary {namespace}/{} to {}", target.name, command.as_str()))?;
    println!("{}", planned.summary);
    Ok(())
}

async fn get(client: Client, namespace: &str, args: GetArgs) -> anyhow::Result<()> {
    let api: Api<Canary> = if args.all_namespaces { Api::all(client) } else { Api::namespaced(client, namespace) };
    if !args.watch {
        let text = match &args.name {
            Some(name) => {
                let canary = api.get(name).await.map_err(|e| read_error(e, namespace, name))?;
                render_canary(&canary, Utc::now())
            }
            None => {
                let mut canaries = api.list(&ListParams::default()).await.context("listing Canaries")?.items;
                sort(&mut canaries);
                render_table(&canaries, args.all_namespaces, Utc::now())
            }
        };
        print!("{text}");
        return Ok(());
    }
    watch(api, namespace, args).await
}

/// Redraws on every change of the watched Canaries until interrupted.
async fn watch(api: Api<Canary>, namespace: &str, args: GetArgs) -> anyhow::Result<()> {
    let config = match &args.name {
        Some(name) => watcher::Config::default().fields(&format!("metadata.name={name}")),
        None => watcher::Config::default(),
    };
    let (store, writer) = reflector::store();
    let mut events = reflector::reflector(writer, watcher(api, config)).default_backoff().boxed();
    let mut shown = String::new();
    let mut listed = false;
    loop {
        let event = tokio::select! {
            event = events.try_next() => event.context("watching Canaries")?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        match event {
            None => return Ok(()),
            // Nothing to draw until the first full list has arrived; a re-list keeps
            // showing the previous state until it completes.
            Some(watcher::Event::InitDone) => listed = true,
            Some(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
            Some(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {}
        }
        if !listed {
            continue;
        }
        let now = Utc::now();
        let text = match &args.name {
            Some(name) => match store.get(&ObjectRef::new(name).within(namespace)) {
                Some(canary) => render_canary(&canary, now),
                None => format!("Canary {namespace}/{name} not found (waiting for it to appear)\n"),
            },
            None => {
                let mut canaries: Vec<Canary> = store.state().iter().map(|c| c.as_ref().clone()).collect();
                sort(&mut canaries);
                render_table(&canaries, args.all_namespaces, now)
            }
        };
        if text != shown {
            print!("{CLEAR_SCREEN}{text}");
            std::io::stdout().flush().context("writing to the terminal")?;
            shown = text;
        }
    }
}

fn sort(canaries: &mut [Canary]) {
    canaries.sort_by_key(|c| (c.namespace(), c.name_any()));
}

/// A failed read of one Canary, said plainly when it does not exist.
fn read_error(error: kube::Error, namespace: &str, name: &str) -> anyhow::Error {
    match &error {
        kube::Error::Api(status) if status.code == 404 => anyhow::anyhow!("Canary {namespace}/{name} not found"),
        _ => anyhow::Error::new(error).context(format!("reading Canary {namespace}/{name}")),
    }
}
