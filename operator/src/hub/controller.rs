//! The hub's Rollout controller: the I/O shell around [`crate::fleet`].
//!
//! Each reconcile reads the selected Clusters and their member Canaries, decides with
//! [`decide_waves`], writes the hub's annotations on the member Canaries (server-side
//! apply of the annotations only, field manager [`HUB_FIELD_MANAGER`]), rolls members
//! back when the policy says so, writes the Rollout status once and publishes Events.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{info, warn};

use super::decisions::{
    MemberRead, annotation_patch, blocked_status, choose_release, explain_unreachable, hub_annotations, hub_events,
    observe_member, requeue_after, rollout_key, status_worth_writing, with_approvals,
};
use super::members::MemberClients;
use crate::api::rollout::RolloutStatus;
use crate::api::{Canary, Cluster, Rollout};
use crate::fleet::{RolloutPlan, build_status, decide_waves, history_for_release};
use crate::workloads;

/// Field manager of every write the hub makes (annotations on member Canaries, the
/// Rollout status): distinct from the member controller's `petrel`.
pub const HUB_FIELD_MANAGER: &str = "petrel-hub";

/// How long reading one member's Canary may take before the member counts as unreachable.
pub const MEMBER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the hub controller shares between reconciles.
pub struct HubContext {
    pub client: Client,
    pub members: MemberClients,
    pub recorder: Recorder,
}

impl HubContext {
    pub fn new(client: Client, instance: Option<String>) -> Self {
        let reporter = Reporter { controller: "petrel-hub".into(), instance };
        Self { members: MemberClients::new(client.clone()), recorder: Recorder::new(client.clone(), reporter), client }
    }
}

/// Why a reconcile of a Rollout failed (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("Rollout has no namespace")]
    MissingNamespace,
    #[error("listing Clusters: {0}")]
    ListClusters(#[source] kube::Error),
    #[error("writing the status of Rollout {rollout}: {source}")]
    WriteStatus {
        rollout: String,
        #[source]
        source: kube::Error,
    },
}

fn apply_params() -> PatchParams {
    PatchParams::apply(HUB_FIELD_MANAGER).force()
}

/// A member's client (when the hub has one) and what reading its Canary gave.
struct Reading {
    cluster: Cluster,
    client: Option<Client>,
    read: MemberRead,
}

async fn read_member(ctx: &HubContext, rollout: &Rollout, cluster: Cluster) -> Reading {
    let client = match ctx.members.client_for(&cluster).await {
        Ok(client) => client,
        Err(e) => return Reading { cluster, client: None, read: MemberRead::Unreachable(e.to_string()) },
    };
    let canary_ref = &rollout.spec.canary_ref;
    let canaries: Api<Canary> = Api::namespaced(client.clone(), &canary_ref.namespace);
    let read = match tokio::time::timeout(MEMBER_READ_TIMEOUT, canaries.get_opt(&canary_ref.name)).await {
        Ok(Ok(canary)) => MemberRead::Reached(canary.map(Box::new)),
        Ok(Err(e)) => {
            MemberRead::Unreachable(format!("reading Canary {}/{}: {e}", canary_ref.namespace, canary_ref.name))
        }
        Err(_) => MemberRead::Unreachable(format!(
            "reading Canary {}/{}: no answer within {}s",
            canary_ref.namespace,
            canary_ref.name,
            MEMBER_READ_TIMEOUT.as_secs()
        )),
    };
    Reading { cluster, client: Some(client), read }
}

async fn publish(ctx: &HubContext, rollout: &Rollout, reason: &str, message: &str, warning: bool) {
    if warning {
        warn!(rollout = %rollout.name_any(), reason, message, "event");
    } else {
        info!(rollout = %rollout.name_any(), reason, message, "event");
    }
    let event = Event {
        type_: if warning { EventType::Warning } else { EventType::Normal },
        reason: reason.to_string(),
        note: Some(message.chars().take(1000).collect()),
        action: event_action(reason, message),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &rollout.object_ref(&())).await {
        warn!(rollout = %rollout.name_any(), reason, error = %e, "could not record event");
    }
}

/// kube's `Recorder` folds Events with the same reason and action into one series that
/// keeps the first note; a digest of the note in the action folds only true repeats.
fn event_action(reason: &str, note: &str) -> String {
    use sha2::Digest as _;
    format!("{reason}-{}", hex::encode(&sha2::Sha256::digest(note.as_bytes())[..4]))
}

/// Writes the status unless only contact times moved (see [`status_worth_writing`]):
/// every write triggers the next reconcile through the Rollout watch.
async fn write_status_if_changed(rollout: &Rollout, status: &RolloutStatus, client: &Client) -> Result<(), HubError> {
    if !status_worth_writing(rollout.status.as_ref(), status) {
        return Ok(());
    }
    let namespace = rollout.namespace().ok_or(HubError::MissingNamespace)?;
    // Dynamic: the answer is not needed, and a typed one would have to parse the spec.
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &ApiResource::erase::<Rollout>(&()));
    let body = serde_json::json!({
        "apiVersion": Rollout::api_version(&()),
        "kind": Rollout::kind(&()),
        "status": status,
    });
    api.patch_status(&rollout.name_any(), &apply_params(), &Patch::Apply(&body))
        .await
        .map(|_| ())
        .map_err(|source| HubError::WriteStatus { rollout: rollout_key(rollout), source })
}

/// Rolls a member's primary back to the newest stored template of another release.
/// Returns what happened, for an Event; `Ok(None)` when the primary already runs it.
async fn roll_back_member(client: &Client, canary: &Canary, release: &str) -> Result<Option<String>, String> {
    let revisions = workloads::list_primary_revisions(client, canary).await.map_err(|e| e.to_string())?;
    let Some(target) = workloads::previous_release_revision(&revisions, release) else {
        return Err(format!("no stored primary template of a release other than {release} to go back to"));
    };
    let target_revision = workloads::stored_revision(target).unwrap_or_default().to_string();
    let primary_name = workloads::primary_name(&canary.spec.target_ref.name);
    let namespace = canary.namespace().unwrap_or_default();
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client.clone(), &namespace);
    if let Ok(primary) = deployments.get(&primary_name).await
        && workloads::primary_runs_revision(&primary, &target_revision)
    {
        return Ok(None);
    }
    workloads::rollback_primary_to(client, canary, &primary_name, target).await.map_err(|e| e.to_string())?;
    Ok(Some(format!(
        "rolled {namespace}/{primary_name} back to revision {target_revision} ({})",
        workloads::stored_release(target).unwrap_or("unknown release")
    )))
}

/// Reconciles one Rollout.
pub async fn reconcile(rollout: Arc<Rollout>, ctx: Arc<HubContext>) -> Result<Action, HubError> {
    let now = Utc::now();
    let generation = rollout.metadata.generation;
    let previous = rollout.status.as_ref();
    let plan = match RolloutPlan::from_spec(&rollout.spec) {
        Ok(plan) => plan,
        Err(e) => {
            let message = format!("the spec cannot be rolled out: {e}");
            publish(&ctx, &rollout, "InvalidSpec", &message, true).await;
            let status = blocked_status(previous, generation, "InvalidSpec", message, now);
            write_status_if_changed(&rollout, &status, &ctx.client).await?;
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
    };

    let clusters: Api<Cluster> = Api::all(ctx.client.clone());
    let selected: Vec<Cluster> = clusters
        .list(&Default::default())
        .await
        .map_err(HubError::ListClusters)?
        .items
        .into_iter()
        .filter(|c| rollout.spec.clusters.matches(c.labels()))
        .collect();
    let readings: Vec<Reading> =
        futures::future::join_all(selected.into_iter().map(|c| read_member(&ctx, &rollout, c))).await;

    let previous_member = |name: &str| previous.and_then(|s| s.members.iter().find(|m| m.cluster == name));
    let mut observations: Vec<_> = readings
        .iter()
        .map(|r| observe_member(&r.cluster, &r.read, previous_member(&r.cluster.name_any()), now))
        .collect();
    let unreachable: BTreeMap<String, String> = readings
        .iter()
        .filter_map(|r| match &r.read {
            MemberRead::Unreachable(why) => Some((r.cluster.name_any(), why.clone())),
            MemberRead::Reached(_) => None,
        })
        .collect();

    let Some(release) = choose_release(&plan, previous, &observations) else {
        let status = blocked_status(
            previous,
            generation,
            "NoRelease",
            "no member of the first wave reports a release yet".to_string(),
            now,
        );
        write_status_if_changed(&rollout, &status, &ctx.client).await?;
        return Ok(Action::requeue(requeue_after(None)));
    };
    let history = history_for_release(previous, &release);
    with_approvals(&mut observations, &history);
    let decision = decide_waves(&plan, &release, &history.waves, &observations, now);

    // Annotations: the Rollout marker everywhere, approvals and withdrawals where decided.
    let key = rollout_key(&rollout);
    let mut write_errors: BTreeMap<String, String> = BTreeMap::new();
    for reading in &readings {
        let (Some(client), MemberRead::Reached(Some(canary))) = (&reading.client, &reading.read) else {
            continue;
        };
        let name = reading.cluster.name_any();
        let approval = decision.approve.iter().find(|a| a.cluster == name).map(|a| a.revision.as_str());
        let withdraw = decision.withdraw.contains(&name);
        let Some(annotations) = hub_annotations(&key, canary.annotations(), approval, withdraw) else {
            continue;
        };
        let namespace = canary.namespace().unwrap_or_default();
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &namespace, &ApiResource::erase::<Canary>(&()));
        let body = annotation_patch(&namespace, &canary.name_any(), &annotations);
        if let Err(e) = api.patch(&canary.name_any(), &apply_params(), &Patch::Apply(&body)).await {
            write_errors.insert(name, format!("annotating Canary {namespace}/{}: {e}", canary.name_any()));
        }
    }

    for event in hub_events(&history, &decision, &release) {
        publish(&ctx, &rollout, event.reason, &event.message, event.warning).await;
    }

    // RollbackAll: best effort; what failed is shown on the member and as an Event.
    for name in &decision.rollback {
        let Some(reading) = readings.iter().find(|r| &r.cluster.name_any() == name) else { continue };
        let (Some(client), MemberRead::Reached(Some(canary))) = (&reading.client, &reading.read) else {
            write_errors.insert(name.clone(), "rollback pending: the member is unreachable".to_string());
            continue;
        };
        match roll_back_member(client, canary, &release).await {
            Ok(Some(done)) => {
                publish(&ctx, &rollout, "MemberRolledBack", &format!("cluster {name}: {done}"), false).await
            }
            Ok(None) => {}
            Err(e) => {
                let message = format!("rollback failed: {e}");
                publish(&ctx, &rollout, "RollbackFailed", &format!("cluster {name}: {message}"), true).await;
                write_errors.insert(name.clone(), message);
            }
        }
    }

    let mut status = build_status(
        &plan,
        &release,
        generation,
        &observations,
        &decision,
        previous.map_or(&[][..], |s| &s.conditions),
        now,
    );
    explain_unreachable(&mut status, &unreachable);
    explain_unreachable(&mut status, &write_errors);
    write_status_if_changed(&rollout, &status, &ctx.client).await?;
    Ok(Action::requeue(requeue_after(decision.recheck_after)))
}

fn error_policy(rollout: Arc<Rollout>, error: &HubError, _ctx: Arc<HubContext>) -> Action {
    warn!(rollout = %rollout_key(&rollout), %error, "reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

/// Runs the hub's Rollout controller until a shutdown signal.
pub async fn run(ctx: Arc<HubContext>) -> anyhow::Result<()> {
    let rollouts: Api<Rollout> = Api::all(ctx.client.clone());
    if let Err(e) = rollouts.list(&kube::api::ListParams::default().limit(1)).await {
        anyhow::bail!("cannot list Rollouts ({e}); are the CRDs installed? Apply them with: kubectl apply -f crds/");
    }
    let clusters: Api<Cluster> = Api::all(ctx.client.clone());
    let controller = Controller::new(rollouts, watcher::Config::default().any_semantic());
    let store = controller.store();
    info!("starting the hub Rollout controller");
    controller
        .with_config(ControllerConfig::default().debounce(Duration::from_millis(200)))
        // Any Cluster change (labels, kubeconfig Secret) can change every Rollout's members.
        .watches(clusters, watcher::Config::default().any_semantic(), move |_: Cluster| {
            store.state().iter().map(|r| ObjectRef::from_obj(r.as_ref())).collect::<Vec<_>>()
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "hub controller stream error");
            }
        })
        .await;
    info!("hub Rollout controller stopped");
    Ok(())
}
