//! `kubectl petrel`: see and steer Canaries and fleet Rollouts (the program; the
//! `kubectl-petrel` binary and `petrel` run by that name call [`main`]).
//!
//! Every verb is one write (printed with `--dry-run` as the equivalent kubectl command):
//! a merge patch on a Canary, or for `approve` a server-side apply of one wave entry on a
//! Rollout's status. `plan` and `get` only read. The decisions and the rendering live in
//! the rest of this crate.

use std::io::Write as _;
use std::path::PathBuf;

use crate::{
    Command, PLUGIN_FIELD_MANAGER, VerbPatch, plan_approval, plan_command, plan_repin, plan_rollout_command,
    render_canary, render_fleet, render_plan, render_rollout, render_rollout_table, render_table,
};
use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use clap::{Args, CommandFactory, FromArgMatches as _, Parser, Subcommand};
use futures::{StreamExt, TryStreamExt};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::core::NamespaceResourceScope;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use petrel_api::{Canary, Cluster, Rollout};
use serde::de::DeserializeOwned;

/// Field manager of the plugin's writes, so `managedFields` shows who paused, aborted or
/// approved.
const FIELD_MANAGER: &str = PLUGIN_FIELD_MANAGER;
/// Clears the terminal and moves the cursor home before a redraw.
const CLEAR_SCREEN: &str = "\x1b[H\x1b[2J";

/// See and steer petrel Canaries and fleet Rollouts.
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
    /// Show Canaries or fleet Rollouts: a tree for one, a table for many.
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
    /// Freeze a Canary: petrel leaves traffic, replicas and status as they are. With
    /// rollout/NAME, a fleet Rollout: the hub approves no more members (spec.paused).
    Pause(Target),
    /// Unfreeze a paused Canary (or, with rollout/NAME, a paused fleet Rollout).
    Resume(Target),
    /// Approve a Manual wave of a fleet Rollout for the release being rolled out.
    #[command(after_help = APPROVE_HELP)]
    Approve(ApproveArgs),
    /// Dry run of a fleet Rollout: which Clusters fall in which wave, and why, each
    /// wave's traffic share and the worst case a bad release reaches. Writes nothing.
    Plan(PlanArgs),
    /// What every member of the fleet runs, app by app (one per Rollout), since when,
    /// and who drifted from the last successful release; with ROLLOUT, its last releases.
    Fleet(FleetArgs),
    /// After a planned rebuild of a member cluster: have the hub pin the kube-system UID
    /// it now observes there (until then the member is IdentityMismatch, never approved).
    Repin(RepinArgs),
    /// Convert Flagger's Canaries, MetricTemplates and AlertProviders (flagger.app/v1beta1),
    /// from the cluster or from files, into petrel's, and report what needs a person.
    #[command(after_help = IMPORT_HELP)]
    Import(ImportArgs),
    /// Print a shell completion script for `kubectl-petrel`.
    #[command(after_help = COMPLETION_HELP)]
    Completion { shell: clap_complete::Shell },
    /// Print the plugin's version and the git revision it was built from.
    Version,
}

#[derive(Subcommand, Debug)]
enum GetKind {
    /// Canaries.
    #[command(visible_alias = "canaries", alias = "cnry")]
    Canary(GetArgs),
    /// Fleet Rollouts (on the hub): phase, waves with their approvals, every member.
    #[command(visible_alias = "rollouts", alias = "fro")]
    Rollout(GetArgs),
}

const COMPLETION_HELP: &str = "\
For `kubectl petrel <TAB>` (kubectl 1.26 or later), put an executable named
kubectl_complete-petrel on your PATH that runs:

  #!/bin/sh
  exec kubectl-petrel __complete \"$@\"

It completes verbs and flags, and the names of Canaries, Rollouts and Manual waves
from the cluster.";

const APPROVE_HELP: &str = "\
The hub opens a Manual wave once status.waves[<wave>].approvedAt is set and
approvedRelease equals status.release. The plugin writes exactly that, by server-side
apply of that one wave entry on the status subresource (field manager kubectl-petrel):
status.waves is a list keyed by name, so the entry merges into the hub's and a hub
status write that does not carry the approval leaves it in place. The same with kubectl
(--dry-run prints it with the values filled in):

  echo '{\"apiVersion\":\"petrel.dev/v1alpha1\",\"kind\":\"Rollout\",
         \"metadata\":{\"name\":\"<rollout>\",\"namespace\":\"<ns>\"},
         \"status\":{\"waves\":[{\"name\":\"<wave>\",\"approvedAt\":\"<now, RFC 3339>\",
                              \"approvedRelease\":\"<status.release>\"}]}}' |
    kubectl apply --server-side --subresource=status --field-manager=kubectl-petrel \\
      --force-conflicts -f -

Not `kubectl patch --type=merge`: a merge patch replaces the whole waves list and erases
when the other waves opened and succeeded.

Refused, with the reason: an Automatic wave, a Rollout without a release yet, a wave
already approved for this release or already open, a wave after a failed one, and a
wave that is not the next to open unless --ahead is given.";

const IMPORT_HELP: &str = "\
Reads flagger.app/v1beta1 Canaries, MetricTemplates and AlertProviders from the namespace
(-n, or every namespace with -A), or from files (-f, `-` for stdin), and server-side applies
their petrel.dev/v1alpha1 counterparts (field manager kubectl-petrel): MetricTemplates and
AlertProviders first, Canaries last. Fields petrel refuses or does not have are dropped;
objects petrel cannot take (a retired provider, externalmetrics) are not written. Every such
change, and every Secret referenced, is listed in the report on stderr.

With --dry-run nothing is written: the petrel objects are printed as YAML on stdout (pipe
them to `kubectl apply -f -` once reviewed) and the report goes to stderr.

The hand-over of a live Canary from Flagger to petrel is in docs/flagger.md (Migration).";

#[derive(Args, Debug)]
struct ImportArgs {
    /// Read Flagger objects from these files (YAML, several documents or a List; `-` for
    /// stdin) instead of the cluster.
    #[arg(short = 'f', long = "filename")]
    files: Vec<PathBuf>,
    /// Read the Flagger objects of every namespace.
    #[arg(short = 'A', long, conflicts_with = "files")]
    all_namespaces: bool,
    /// Print the petrel objects as YAML and the report, without writing anything.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args, Debug)]
struct GetArgs {
    /// The object's name; all of the namespace when omitted.
    name: Option<String>,
    /// Objects of every namespace.
    #[arg(short = 'A', long, conflicts_with = "name")]
    all_namespaces: bool,
    /// Redraw whenever the object (or one of the listed objects) changes.
    #[arg(short = 'w', long)]
    watch: bool,
}

#[derive(Args, Debug)]
struct ApproveArgs {
    /// The Rollout's name (on the hub).
    rollout: String,
    /// The Manual wave to approve.
    wave: String,
    /// Approve a wave that is not the next to open: it then opens, for this release only,
    /// as soon as every earlier wave succeeded and soaked, with no further look.
    #[arg(long)]
    ahead: bool,
    /// Print the equivalent kubectl command without applying it.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args, Debug)]
struct RepinArgs {
    /// The Cluster's name (on the hub).
    cluster: String,
    /// Print the equivalent kubectl command without applying it.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args, Debug)]
struct FleetArgs {
    /// One Rollout (on the hub), with its release history; every Rollout of the
    /// namespace when omitted.
    rollout: Option<String>,
    /// Rollouts of every namespace.
    #[arg(short = 'A', long, conflicts_with = "rollout")]
    all_namespaces: bool,
}

#[derive(Args, Debug)]
struct PlanArgs {
    /// The Rollout's name (on the hub).
    rollout: String,
}

#[derive(Args, Debug)]
struct Target {
    /// The Canary: NAME or canary/NAME; rollout/NAME for a fleet Rollout (pause, resume).
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

/// Runs the plugin with the process's arguments. `version` is what `--version` and
/// `kubectl petrel version` print: the build of the binary that carries the plugin.
pub fn main(version: &'static str) -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(run_with_args(version))
}

async fn run_with_args(version: &'static str) -> std::process::ExitCode {
    // kubectl's protocol for plugin completion (`kubectl_complete-petrel`), answered
    // before clap parses: the words are a partial command line, not one to run.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(COMPLETE) {
        complete(&args[2..]).await;
        return std::process::ExitCode::SUCCESS;
    }
    let matches = Cli::command().version(version).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match run(cli, version).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line a person reads (with its causes), not a backtrace.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, version: &str) -> anyhow::Result<()> {
    let command = match cli.command {
        Verb::Version => {
            println!("kubectl-petrel {version}");
            return Ok(());
        }
        Verb::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "kubectl-petrel", &mut std::io::stdout());
            return Ok(());
        }
        Verb::Get { kind: GetKind::Canary(args) } => {
            let (client, namespace) = connect(&cli.connection).await?;
            return get_canaries(client, &namespace, args).await;
        }
        Verb::Get { kind: GetKind::Rollout(args) } => {
            let (client, namespace) = connect(&cli.connection).await?;
            return get_rollouts(client, &namespace, args).await;
        }
        Verb::Approve(args) => {
            let (client, namespace) = connect(&cli.connection).await?;
            return approve(client, &namespace, &args).await;
        }
        Verb::Plan(args) => {
            let (client, namespace) = connect(&cli.connection).await?;
            return plan(client, &namespace, &args).await;
        }
        Verb::Fleet(args) => {
            let (client, namespace) = connect(&cli.connection).await?;
            return fleet(client, &namespace, &args).await;
        }
        Verb::Repin(args) => {
            let (client, _) = connect(&cli.connection).await?;
            return repin(client, &args).await;
        }
        Verb::Import(args) => return import(&cli.connection, &args).await,
        Verb::Promote(t) => (Command::Promote, t),
        Verb::Abort(t) => (Command::Abort, t),
        Verb::Retry(t) => (Command::Retry, t),
        Verb::Pause(t) => (Command::Pause, t),
        Verb::Resume(t) => (Command::Resume, t),
    };
    let (client, namespace) = connect(&cli.connection).await?;
    run_verb(client, &namespace, command.0, &command.1).await
}

/// What a verb acts on.
#[derive(Debug, PartialEq, Eq)]
enum Object<'a> {
    Canary(&'a str),
    Rollout(&'a str),
}

/// `NAME` and `canary/NAME` name a Canary, `rollout/NAME` a fleet Rollout (kubectl's
/// `TYPE/NAME` form, with the same short names).
fn parse_target(target: &str) -> anyhow::Result<Object<'_>> {
    let (kind, name) = match target.split_once('/') {
        None => ("canary", target),
        Some((kind, name)) => (kind, name),
    };
    if name.is_empty() || name.contains('/') {
        bail!("{target:?} is not NAME, canary/NAME or rollout/NAME");
    }
    match kind {
        "canary" | "canaries" | "cnry" | "canary.petrel.dev" | "canaries.petrel.dev" => Ok(Object::Canary(name)),
        "rollout" | "rollouts" | "fro" | "rollout.petrel.dev" | "rollouts.petrel.dev" => Ok(Object::Rollout(name)),
        other => bail!("kubectl petrel acts on canary/NAME or rollout/NAME, not {other}/{name}"),
    }
}

async fn run_verb(client: Client, namespace: &str, command: Command, target: &Target) -> anyhow::Result<()> {
    match parse_target(&target.name)? {
        Object::Canary(name) => {
            let api: Api<Canary> = Api::namespaced(client, namespace);
            let canary = api.get(name).await.map_err(|e| read_error(e, "Canary", namespace, name))?;
            let planned = plan_command(command, &canary, Utc::now()).map_err(|refusal| anyhow::anyhow!("{refusal}"))?;
            merge_patch(&api, &format!("Canary {namespace}/{name}"), name, command, &planned, target.dry_run).await
        }
        Object::Rollout(name) => {
            let api: Api<Rollout> = Api::namespaced(client, namespace);
            let rollout = api.get(name).await.map_err(|e| read_error(e, "Rollout", namespace, name))?;
            let planned = plan_rollout_command(command, &rollout).map_err(|refusal| anyhow::anyhow!("{refusal}"))?;
            merge_patch(&api, &format!("Rollout {namespace}/{name}"), name, command, &planned, target.dry_run).await
        }
    }
}

/// Applies a verb's merge patch (or prints it as a kubectl command with `--dry-run`).
async fn merge_patch<K>(
    api: &Api<K>,
    what: &str,
    name: &str,
    command: Command,
    planned: &VerbPatch,
    dry_run: bool,
) -> anyhow::Result<()>
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
{
    if dry_run {
        println!("{}", planned.kubectl);
        return Ok(());
    }
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_string()), ..Default::default() };
    api.patch(name, &params, &Patch::Merge(&planned.patch))
        .await
        .with_context(|| format!("patching {what} to {}", command.as_str()))?;
    println!("{}", planned.summary);
    Ok(())
}

/// Who the API server says this client is (a SelfSubjectReview, allowed to every
/// authenticated user), or why that could not be learned.
async fn whoami(client: &Client) -> Result<String, String> {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let reviews: Api<SelfSubjectReview> = Api::all(client.clone());
    let review =
        reviews.create(&PostParams::default(), &SelfSubjectReview::default()).await.map_err(|e| e.to_string())?;
    review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .filter(|name| !name.is_empty())
        .ok_or_else(|| "the API server named no user".to_string())
}

/// Approves a Manual wave: one server-side apply of the wave's entry on the status.
async fn approve(client: Client, namespace: &str, args: &ApproveArgs) -> anyhow::Result<()> {
    let approver = match whoami(&client).await {
        Ok(user) => Some(user),
        Err(why) => {
            // The approval still counts; only who gave it goes unrecorded, and that is said.
            eprintln!("note: could not learn who you are from the API server ({why}); approvedBy is not recorded");
            None
        }
    };
    let api: Api<Rollout> = Api::namespaced(client, namespace);
    let rollout = api.get(&args.rollout).await.map_err(|e| read_error(e, "Rollout", namespace, &args.rollout))?;
    let planned = match plan_approval(&rollout, &args.wave, args.ahead, approver.as_deref(), Utc::now()) {
        Ok(planned) => planned,
        Err(refusal) => bail!("{refusal}"),
    };
    if args.dry_run {
        println!("{}", planned.kubectl);
        return Ok(());
    }
    // Forced: a conflict can only be an approval of an older release owned by another
    // manager (one for this release was refused above), which this one replaces.
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let written = api
        .patch_status(&args.rollout, &params, &Patch::Apply(&planned.apply))
        .await
        .with_context(|| format!("approving wave {} of Rollout {namespace}/{}", args.wave, args.rollout))?;
    let wanted = &planned.apply["status"]["waves"][0]["approvedRelease"];
    let kept = written
        .status
        .as_ref()
        .and_then(|s| s.waves.iter().find(|w| w.name == args.wave))
        .and_then(|w| w.approved_release.as_deref())
        .is_some_and(|release| wanted.as_str() == Some(release));
    if !kept {
        bail!("the API server answered without the approval of wave {} in the status; nothing was approved", args.wave);
    }
    println!("{}", planned.summary);
    Ok(())
}

/// Asks the hub to pin the kube-system UID it observes on a rebuilt member.
async fn repin(client: Client, args: &RepinArgs) -> anyhow::Result<()> {
    let clusters: Api<Cluster> = Api::all(client);
    let cluster = clusters.get(&args.cluster).await.with_context(|| format!("reading Cluster {}", args.cluster))?;
    let planned = plan_repin(&cluster).map_err(anyhow::Error::msg)?;
    if args.dry_run {
        println!("{}", planned.kubectl);
        return Ok(());
    }
    clusters
        .patch(&args.cluster, &PatchParams::default(), &Patch::Merge(&planned.patch))
        .await
        .with_context(|| format!("annotating Cluster {}", args.cluster))?;
    println!("{}", planned.summary);
    Ok(())
}

/// Prints which Clusters fall in which wave of a Rollout. Reads only.
async fn plan(client: Client, namespace: &str, args: &PlanArgs) -> anyhow::Result<()> {
    let rollouts: Api<Rollout> = Api::namespaced(client.clone(), namespace);
    let rollout = rollouts.get(&args.rollout).await.map_err(|e| read_error(e, "Rollout", namespace, &args.rollout))?;
    let clusters: Api<Cluster> = Api::all(client);
    let clusters = clusters.list(&ListParams::default()).await.context("listing the Clusters on the hub")?.items;
    let text = render_plan(&rollout, &clusters, chrono::Utc::now())
        .with_context(|| format!("Rollout {namespace}/{} cannot be planned", args.rollout))?;
    print!("{text}");
    Ok(())
}

/// Prints what every member runs, app by app. Reads only.
async fn fleet(client: Client, namespace: &str, args: &FleetArgs) -> anyhow::Result<()> {
    let rollouts: Api<Rollout> =
        if args.all_namespaces { Api::all(client) } else { Api::namespaced(client, namespace) };
    let listed = match &args.rollout {
        Some(name) => vec![rollouts.get(name).await.map_err(|e| read_error(e, "Rollout", namespace, name))?],
        None => sorted(rollouts.list(&ListParams::default()).await.context("listing Rollouts")?.items),
    };
    print!("{}", render_fleet(&listed, args.rollout.is_some(), Utc::now()));
    Ok(())
}

async fn get_canaries(client: Client, namespace: &str, args: GetArgs) -> anyhow::Result<()> {
    let view = View { kind: "Canary", one: render_canary, many: render_table };
    get(client, namespace, args, view).await
}

async fn get_rollouts(client: Client, namespace: &str, args: GetArgs) -> anyhow::Result<()> {
    let view =
        View { kind: "Rollout", one: render_rollout, many: |rollouts, all, _| render_rollout_table(rollouts, all) };
    get(client, namespace, args, view).await
}

/// How `get` shows one kind: one object as a tree, several as a table (with a namespace
/// column for `-A`).
struct View<K> {
    kind: &'static str,
    one: fn(&K, DateTime<Utc>) -> String,
    many: fn(&[K], bool, DateTime<Utc>) -> String,
}

async fn get<K>(client: Client, namespace: &str, args: GetArgs, view: View<K>) -> anyhow::Result<()>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let api: Api<K> = if args.all_namespaces { Api::all(client) } else { Api::namespaced(client, namespace) };
    if !args.watch {
        let text = match &args.name {
            Some(name) => {
                let object = api.get(name).await.map_err(|e| read_error(e, view.kind, namespace, name))?;
                (view.one)(&object, Utc::now())
            }
            None => {
                let objects =
                    api.list(&ListParams::default()).await.with_context(|| format!("listing {}s", view.kind))?;
                (view.many)(&sorted(objects.items), args.all_namespaces, Utc::now())
            }
        };
        print!("{text}");
        return Ok(());
    }
    watch(api, namespace, args, view).await
}

/// Redraws on every change of the watched objects until interrupted.
async fn watch<K>(api: Api<K>, namespace: &str, args: GetArgs, view: View<K>) -> anyhow::Result<()>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
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
            event = events.try_next() => event.with_context(|| format!("watching {}s", view.kind))?,
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
                Some(object) => (view.one)(&object, now),
                None => format!("{} {namespace}/{name} not found (waiting for it to appear)\n", view.kind),
            },
            None => {
                let objects: Vec<K> = store.state().iter().map(|o| o.as_ref().clone()).collect();
                (view.many)(&sorted(objects), args.all_namespaces, now)
            }
        };
        if text != shown {
            print!("{CLEAR_SCREEN}{text}");
            std::io::stdout().flush().context("writing to the terminal")?;
            shown = text;
        }
    }
}

fn sorted<K: ResourceExt>(mut objects: Vec<K>) -> Vec<K> {
    objects.sort_by_key(|o| (o.namespace(), o.name_any()));
    objects
}

/// A failed read of one object, said plainly when it does not exist.
/// `kubectl petrel import`: read, convert (crate::import), then print or apply.
async fn import(connection: &Connection, args: &ImportArgs) -> anyhow::Result<()> {
    use crate::import::{FLAGGER_API_VERSION, KINDS, PETREL_API_VERSION, import};
    let from_files = !args.files.is_empty();
    // Files with --dry-run need no cluster.
    let cluster = if from_files && args.dry_run { None } else { Some(connect(connection).await?) };
    let mut objects = Vec::new();
    if from_files {
        for path in &args.files {
            objects.extend(read_manifests(path)?);
        }
    } else if let Some((client, namespace)) = &cluster {
        for kind in KINDS {
            let resource = flagger_resource(FLAGGER_API_VERSION, kind);
            let api: Api<kube::api::DynamicObject> = if args.all_namespaces {
                Api::all_with(client.clone(), &resource)
            } else {
                Api::namespaced_with(client.clone(), namespace, &resource)
            };
            let list = api.list(&ListParams::default()).await.map_err(|e| match &e {
                kube::Error::Api(status) if status.code == 404 => {
                    anyhow::anyhow!(
                        "the cluster serves no {FLAGGER_API_VERSION} {kind} (are Flagger's CRDs installed?)"
                    )
                }
                _ => anyhow::Error::new(e).context(format!("listing Flagger {kind}s")),
            })?;
            for item in list.items {
                let mut value = serde_json::to_value(&item).context("reading a Flagger object")?;
                // A list's items carry no apiVersion and kind of their own.
                value["apiVersion"] = serde_json::json!(FLAGGER_API_VERSION);
                value["kind"] = serde_json::json!(kind);
                objects.push(value);
            }
        }
    }
    let imported = import(&objects);
    eprintln!(
        "{} Flagger object(s) read, {} petrel object(s) {}",
        objects.len(),
        imported.objects.len(),
        if args.dry_run { "printed" } else { "to write" }
    );
    eprint!("{}", imported.report());
    if args.dry_run {
        for object in &imported.objects {
            print!("---\n{}", serde_yaml::to_string(object).context("printing YAML")?);
        }
        return Ok(());
    }
    let Some((client, namespace)) = cluster else { bail!("no cluster to write to") };
    let params = PatchParams::apply(FIELD_MANAGER);
    let mut failed = 0;
    for object in &imported.objects {
        let kind = object["kind"].as_str().unwrap_or_default();
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let ns = object["metadata"]["namespace"].as_str().unwrap_or(&namespace);
        let resource = flagger_resource(PETREL_API_VERSION, kind);
        let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
        match api.patch(name, &params, &Patch::Apply(object)).await {
            Ok(_) => eprintln!("{kind} {ns}/{name} written"),
            Err(e) => {
                failed += 1;
                eprintln!("{kind} {ns}/{name} NOT written: {e}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} petrel object(s) were not written");
    }
    Ok(())
}

/// The resource of `kind` (Canary, MetricTemplate or AlertProvider) in `api_version`.
fn flagger_resource(api_version: &str, kind: &str) -> kube::api::ApiResource {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let plural = if kind == "Canary" { "canaries".to_string() } else { format!("{}s", kind.to_lowercase()) };
    kube::api::ApiResource::from_gvk_with_plural(&kube::api::GroupVersionKind::gvk(group, version, kind), &plural)
}

/// The objects of a YAML file (`-`: stdin): every document, a List's items flattened.
fn read_manifests(path: &std::path::Path) -> anyhow::Result<Vec<serde_json::Value>> {
    use std::io::Read as _;
    let mut text = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text).context("reading stdin")?;
    } else {
        text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    }
    let mut out = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value: serde_json::Value =
            serde::Deserialize::deserialize(document).with_context(|| format!("parsing {}", path.display()))?;
        match value["items"].as_array() {
            Some(items) if value["kind"].as_str().is_some_and(|k| k.ends_with("List")) => {
                out.extend(items.iter().cloned())
            }
            _ if value.is_null() => {}
            _ => out.push(value),
        }
    }
    Ok(out)
}

fn read_error(error: kube::Error, kind: &str, namespace: &str, name: &str) -> anyhow::Error {
    match &error {
        kube::Error::Api(status) if status.code == 404 => anyhow::anyhow!("{kind} {namespace}/{name} not found"),
        _ => anyhow::Error::new(error).context(format!("reading {kind} {namespace}/{name}")),
    }
}

/// The hidden verb kubectl's plugin completion calls (Cobra's name for it).
const COMPLETE: &str = "__complete";
/// Cobra's directive "complete no file names", the last line of every answer.
const NO_FILE_COMPLETION: &str = ":4";
/// How long completion may wait for the API server before offering nothing.
const COMPLETION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What to offer for the word being completed.
#[derive(Debug, PartialEq, Eq)]
enum Offer {
    /// Fixed words (verbs, flags, values), each with a description.
    Words(Vec<(String, String)>),
    /// Canary names; with `rollout/NAME` too for the verbs that act on Rollouts.
    Canaries {
        and_rollouts: bool,
    },
    Rollouts,
    /// Cluster names (on the hub).
    Clusters,
    /// The Manual waves of one Rollout.
    ManualWaves {
        rollout: String,
    },
}

/// A partial command line read for completion: what to offer, for which prefix, and
/// the connection flags typed so far.
#[derive(Debug, PartialEq, Eq)]
struct CompletionRequest {
    offer: Offer,
    prefix: String,
    flags: std::collections::BTreeMap<String, String>,
}

/// Reads `words` (everything after `kubectl petrel`, the last one being completed) along
/// the command tree.
fn completion_request(words: &[String]) -> CompletionRequest {
    let mut root = Cli::command();
    root.build();
    let (prefix, done) = match words.split_last() {
        Some((last, done)) => (last.clone(), done),
        None => (String::new(), &[][..]),
    };
    let mut command = &root;
    let mut path: Vec<&str> = Vec::new();
    let mut positionals: Vec<&str> = Vec::new();
    let mut flags = std::collections::BTreeMap::new();
    let mut rest = done.iter();
    while let Some(word) = rest.next() {
        let (arg, inline) = if let Some(long) = word.strip_prefix("--") {
            let (name, inline) = long.split_once('=').map_or((long, None), |(n, v)| (n, Some(v.to_string())));
            (command.get_arguments().find(|a| a.get_long() == Some(name)), inline)
        } else if let Some(short) = word.strip_prefix('-').filter(|s| !s.is_empty()) {
            let mut chars = short.chars();
            let letter = chars.next();
            let inline = Some(chars.as_str().to_string()).filter(|v| !v.is_empty());
            (command.get_arguments().find(|a| a.get_short() == letter), inline)
        } else if let Some(sub) = command.find_subcommand(word) {
            command = sub;
            path.push(sub.get_name());
            positionals.clear();
            continue;
        } else {
            positionals.push(word);
            continue;
        };
        if let Some(arg) = arg.filter(|a| a.get_action().takes_values())
            && let Some(value) = inline.or_else(|| rest.next().cloned())
        {
            flags.insert(arg.get_id().to_string(), value);
        }
    }

    let described = |name: String, about: Option<&clap::builder::StyledStr>| {
        (name, about.map(|a| a.to_string()).unwrap_or_default())
    };
    let offer = if prefix.starts_with('-') {
        Offer::Words(
            command
                .get_arguments()
                .filter(|a| !a.is_hide_set())
                .filter_map(|a| Some(described(format!("--{}", a.get_long()?), a.get_help())))
                .collect(),
        )
    } else if command.has_subcommands() {
        Offer::Words(
            command
                .get_subcommands()
                .filter(|c| !c.is_hide_set())
                .map(|c| described(c.get_name().to_string(), c.get_about()))
                .collect(),
        )
    } else if let Some(values) = command
        .get_positionals()
        .nth(positionals.len())
        .map(|a| a.get_possible_values())
        .filter(|values| !values.is_empty())
    {
        Offer::Words(values.iter().map(|v| described(v.get_name().to_string(), v.get_help())).collect())
    } else {
        match (path.as_slice(), positionals.as_slice()) {
            (["get", "canary"], []) | (["promote" | "abort" | "retry"], []) => Offer::Canaries { and_rollouts: false },
            (["pause" | "resume"], []) => Offer::Canaries { and_rollouts: true },
            (["get", "rollout"] | ["plan"] | ["approve"] | ["fleet"], []) => Offer::Rollouts,
            (["approve"], [rollout]) => Offer::ManualWaves { rollout: rollout.to_string() },
            (["repin"], []) => Offer::Clusters,
            _ => Offer::Words(Vec::new()),
        }
    };
    CompletionRequest { offer, prefix, flags }
}

/// The Manual waves of a Rollout, the one waiting for approval said so.
fn manual_waves(rollout: &Rollout) -> Vec<(String, String)> {
    let status = rollout.status.as_ref();
    let waiting = status
        .filter(|s| s.phase == Some(petrel_api::rollout::RolloutPhase::WaitingApproval))
        .and_then(|s| s.current_wave.as_deref());
    rollout
        .spec
        .waves
        .iter()
        .filter(|w| w.approval == petrel_api::rollout::Approval::Manual)
        .map(|w| {
            let about = if waiting == Some(w.name.as_str()) { "waiting for approval" } else { "Manual wave" };
            (w.name.clone(), about.to_string())
        })
        .collect()
}

/// Answers kubectl's completion request on stdout; offers nothing when the cluster
/// cannot be read (completion must never print errors into the command line).
async fn complete(words: &[String]) {
    let request = completion_request(words);
    let candidates = match request.offer {
        Offer::Words(words) => words,
        ref offer => {
            let connection = Connection {
                kubeconfig: request.flags.get("kubeconfig").map(PathBuf::from),
                context: request.flags.get("context").cloned(),
                namespace: request.flags.get("namespace").cloned(),
            };
            tokio::time::timeout(COMPLETION_TIMEOUT, names_for(offer, &connection))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default()
        }
    };
    for (word, about) in candidates.into_iter().filter(|(w, _)| w.starts_with(&request.prefix)) {
        // One line per candidate; Cobra shows what follows a tab as its description.
        match about.lines().next().filter(|a| !a.is_empty()) {
            Some(about) => println!("{word}\t{about}"),
            None => println!("{word}"),
        }
    }
    println!("{NO_FILE_COMPLETION}");
}

async fn names_for(offer: &Offer, connection: &Connection) -> anyhow::Result<Vec<(String, String)>> {
    let (client, namespace) = connect(connection).await?;
    let rollouts: Api<Rollout> = Api::namespaced(client.clone(), &namespace);
    let names = |objects: Vec<String>, about: &str| objects.into_iter().map(|n| (n, about.to_string())).collect();
    Ok(match offer {
        Offer::Words(words) => words.clone(),
        Offer::Rollouts => names(list_names(&rollouts).await?, "Rollout"),
        Offer::Clusters => names(list_names(&Api::<Cluster>::all(client)).await?, "Cluster"),
        Offer::ManualWaves { rollout } => manual_waves(&rollouts.get(rollout).await?),
        Offer::Canaries { and_rollouts } => {
            // A hub may serve no Canaries and a member no Rollouts: offer what there is.
            let canaries: Api<Canary> = Api::namespaced(client, &namespace);
            let mut offered: Vec<(String, String)> = names(list_names(&canaries).await.unwrap_or_default(), "Canary");
            if *and_rollouts {
                let fleet = list_names(&rollouts).await.unwrap_or_default();
                offered.extend(fleet.into_iter().map(|n| (format!("rollout/{n}"), "fleet Rollout".to_string())));
            }
            offered
        }
    })
}

async fn list_names<K>(api: &Api<K>) -> anyhow::Result<Vec<String>>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let list = api.list_metadata(&ListParams::default()).await?;
    Ok(list.items.iter().map(|o| o.name_any()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn shell_completion_offers_the_fleet_verbs() {
        for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "kubectl-petrel", &mut script);
            let script = String::from_utf8(script).unwrap();
            for word in ["approve", "plan", "rollout", "canary", "ahead", "watch"] {
                assert!(script.contains(word), "{shell} completion lacks {word}");
            }
        }
    }

    #[test]
    fn verbs_take_a_canary_or_a_rollout() {
        assert_eq!(parse_target("podinfo").unwrap(), Object::Canary("podinfo"));
        assert_eq!(parse_target("canary/podinfo").unwrap(), Object::Canary("podinfo"));
        assert_eq!(parse_target("rollout/podinfo").unwrap(), Object::Rollout("podinfo"));
        assert_eq!(parse_target("rollouts.petrel.dev/podinfo").unwrap(), Object::Rollout("podinfo"));
        let error = parse_target("deployment/podinfo").unwrap_err().to_string();
        assert_eq!(error, "kubectl petrel acts on canary/NAME or rollout/NAME, not deployment/podinfo");
        assert!(parse_target("rollout/").is_err());
        assert!(parse_target("rollout/a/b").is_err());
    }

    fn request(line: &str) -> CompletionRequest {
        let mut words: Vec<String> = line.split(' ').map(String::from).collect();
        if line.is_empty() {
            words = vec![String::new()];
        }
        completion_request(&words)
    }

    fn words(offer: &Offer) -> Vec<&str> {
        match offer {
            Offer::Words(words) => words.iter().map(|(w, _)| w.as_str()).collect(),
            other => panic!("not words: {other:?}"),
        }
    }

    #[test]
    fn completion_offers_the_verbs_then_the_kinds() {
        let verbs = request("");
        for verb in ["get", "approve", "plan", "pause", "completion"] {
            assert!(words(&verbs.offer).contains(&verb), "{verb} missing from {:?}", verbs.offer);
        }
        assert!(!words(&verbs.offer).contains(&COMPLETE), "the hidden verb is not offered");
        assert_eq!(request("ap").prefix, "ap");
        assert_eq!(words(&request("get ").offer), ["canary", "rollout", "help"]);
        assert_eq!(words(&request("completion ").offer), ["bash", "elvish", "fish", "powershell", "zsh"]);
        let flags = request("approve podinfo eu --");
        for flag in ["--ahead", "--dry-run", "--namespace", "--kubeconfig"] {
            assert!(words(&flags.offer).contains(&flag), "{flag} missing from {:?}", flags.offer);
        }
    }

    #[test]
    fn completion_offers_names_from_the_cluster_by_position() {
        assert_eq!(request("get rollout ").offer, Offer::Rollouts);
        assert_eq!(request("get rollouts p").offer, Offer::Rollouts, "aliases count");
        assert_eq!(request("plan ").offer, Offer::Rollouts);
        assert_eq!(request("fleet ").offer, Offer::Rollouts);
        assert_eq!(request("approve ").offer, Offer::Rollouts);
        assert_eq!(request("approve podinfo ").offer, Offer::ManualWaves { rollout: "podinfo".into() });
        assert_eq!(request("approve -n fleet podinfo e").offer, Offer::ManualWaves { rollout: "podinfo".into() });
        assert_eq!(request("abort ").offer, Offer::Canaries { and_rollouts: false });
        assert_eq!(request("pause ").offer, Offer::Canaries { and_rollouts: true });
        assert_eq!(request("approve podinfo eu ").offer, Offer::Words(vec![]));
        assert_eq!(request("repin ").offer, Offer::Clusters);
    }

    #[test]
    fn completion_reads_the_connection_flags() {
        let r = request("--kubeconfig /tmp/hub -n fleet --context=hub approve ");
        assert_eq!(r.flags.get("kubeconfig").map(String::as_str), Some("/tmp/hub"));
        assert_eq!(r.flags.get("namespace").map(String::as_str), Some("fleet"));
        assert_eq!(r.flags.get("context").map(String::as_str), Some("hub"));
        assert_eq!(r.offer, Offer::Rollouts);
        assert_eq!(request("-nfleet plan ").flags.get("namespace").map(String::as_str), Some("fleet"));
    }

    #[test]
    fn only_manual_waves_are_offered_for_approval() {
        let mut rollout: Rollout = serde_json::from_value(serde_json::json!({
            "apiVersion": "petrel.dev/v1alpha1",
            "kind": "Rollout",
            "metadata": { "name": "podinfo", "namespace": "fleet" },
            "spec": {
                "canaryRef": { "namespace": "test", "name": "podinfo" },
                "waves": [{ "name": "canary" }, { "name": "eu", "approval": "Manual" }, { "name": "us", "approval": "Manual" }]
            }
        }))
        .unwrap();
        rollout.status = Some(petrel_api::RolloutStatus {
            phase: Some(petrel_api::rollout::RolloutPhase::WaitingApproval),
            current_wave: Some("eu".into()),
            ..Default::default()
        });
        assert_eq!(
            manual_waves(&rollout),
            [("eu".to_string(), "waiting for approval".to_string()), ("us".to_string(), "Manual wave".to_string())]
        );
    }

    #[test]
    fn approve_takes_a_rollout_and_a_wave() {
        let cli =
            Cli::try_parse_from(["kubectl-petrel", "approve", "podinfo", "eu", "-n", "fleet", "--ahead"]).unwrap();
        let Verb::Approve(args) = cli.command else { panic!("not approve: {:?}", cli.command) };
        assert_eq!((args.rollout.as_str(), args.wave.as_str(), args.ahead), ("podinfo", "eu", true));
        assert_eq!(cli.connection.namespace.as_deref(), Some("fleet"));
        assert!(Cli::try_parse_from(["kubectl-petrel", "approve", "podinfo"]).is_err(), "the wave is required");
    }
}
