//! The hub's Rollout controller: the I/O shell around [`crate::fleet`].
//!
//! Each reconcile reads the selected Clusters (from the hub's Cluster watch while it
//! keeps its cache, by a LIST otherwise) and their member Canaries (from the member
//! watches' caches while fresh, [`super::watches`], by a GET otherwise),
//! decides with [`decide_waves`], writes the hub's annotations on the member Canaries
//! (server-side apply of the annotations only, field manager [`HUB_FIELD_MANAGER`]),
//! rolls members back when the policy says so, writes the Rollout status once and
//! publishes Events. A change of a watched member Canary, or of a member's
//! reachability, wakes the reconciles of the Rollouts that select that member; a slower
//! safety requeue catches anything else.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{info, warn};

use super::clusters;
use super::decisions::{
    MemberRead, SAFETY_REQUEUE, annotation_patch, blocked_status, choose_release, explain_unreachable, hub_annotations,
    hub_events, observe_member, requeue_after, rollout_key, status_worth_writing, with_approvals,
};
use super::input::{
    CANARY_NOT_FOUND, CLUSTERS_SHARE_IDENTITY, INVALID_SPEC, InputProblem, canary_problem, overlap_problem,
    problem_events, release_started, set_condition, shared_identity_problem, sort_problems, traffic_share_problem,
    transition_events, unassigned_problem, valid_condition,
};
use super::members::MemberClients;
use super::watches::{CacheVerdict, MANAGE_INTERVAL, MemberWatches, WantedWatch, WatchKey, rollouts_selecting};
use crate::api::rollout::RolloutStatus;
use crate::api::{Canary, Cluster, Rollout};
use crate::controller::watches::{kept, objects_only};
use crate::fleet::identity::{ExpectedIdentity, IdentityVerdict, verify_identity};
use crate::fleet::inventory::{HubRollback, with_inventory};
use crate::fleet::{Membership, RolloutPlan, assign_waves, build_status, decide_waves, history_for_release};
use crate::shutdown::Shutdown;
use crate::telemetry::Metrics;
use crate::workloads;

/// Field manager of every write the hub makes (annotations on member Canaries, the
/// Rollout and Cluster statuses): distinct from the member controller's `petrel`.
pub const HUB_FIELD_MANAGER: &str = "petrel-hub";

/// `controller` label of the hub's metrics (reconcile durations and errors).
pub const ROLLOUT_CONTROLLER: &str = "rollout";

/// How long reading one member's Canary may take before the member counts as unreachable.
pub const MEMBER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the hub controller shares between reconciles.
pub struct HubContext {
    pub client: Client,
    pub members: MemberClients,
    pub recorder: Recorder,
    pub watches: MemberWatches,
    pub metrics: Arc<Metrics>,
    /// Health of the hub's own watches (Rollouts, Clusters), for `/readyz`.
    pub health: crate::telemetry::WatchHealth,
    /// The hub's Cluster watch, once [`run`] starts it (a reconcile outside `run` LISTs).
    clusters: OnceLock<Store<Cluster>>,
}

impl HubContext {
    /// A context with its own metrics registry (tests, tools).
    pub fn new(client: Client, instance: Option<String>) -> Self {
        Self::with_metrics(client, instance, Arc::new(Metrics::default()))
    }

    /// A context recording into `metrics` (the registry `/metrics` serves).
    pub fn with_metrics(client: Client, instance: Option<String>, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter { controller: "petrel-hub".into(), instance };
        Self {
            members: MemberClients::new(client.clone()),
            recorder: Recorder::new(client.clone(), reporter),
            watches: MemberWatches::new(),
            metrics,
            health: Default::default(),
            clusters: OnceLock::new(),
            client,
        }
    }

    /// Reconciles read Clusters from `store` while the watch [`CLUSTERS_WATCH`] keeps it,
    /// as under [`run`] (for tests and benchmarks that call [`reconcile`] themselves). Set
    /// once; a second store is ignored.
    pub fn read_clusters_from(&self, store: Store<Cluster>) {
        let _ = self.clusters.set(store);
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

impl HubError {
    /// The `error` label of `petrel_reconcile_errors`.
    pub fn kind(&self) -> &'static str {
        match self {
            HubError::MissingNamespace => "MissingNamespace",
            HubError::ListClusters(_) => "ListClusters",
            HubError::WriteStatus { .. } => "WriteStatus",
        }
    }

    /// The Kubernetes API error behind this one, if any.
    pub fn api_error(&self) -> Option<&kube::Error> {
        match self {
            HubError::MissingNamespace => None,
            HubError::ListClusters(source) | HubError::WriteStatus { source, .. } => Some(source),
        }
    }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(HUB_FIELD_MANAGER).force()
}

/// A member's client (when the hub has one) and what reading its Canary gave.
struct Reading {
    cluster: Cluster,
    client: Option<Client>,
    read: MemberRead,
    /// When a Canary read from the watch cache was last confirmed by the member; `None`
    /// for a direct read (the member answered now).
    contact: Option<DateTime<Utc>>,
    /// Why the hub has no client: a problem with the input (Secret, kubeconfig).
    client_problem: Option<InputProblem>,
    /// The member's watch, when the hub has a client.
    watch: Option<(WatchKey, WantedWatch)>,
    /// Whether the member is the cluster its Cluster describes, as the last probe
    /// through the kubeconfig in use found.
    identity: IdentityVerdict,
}

async fn read_member(ctx: &HubContext, rollout: &Rollout, cluster: Cluster, now: DateTime<Utc>) -> Reading {
    let connection = match ctx.members.connect(&cluster).await {
        Ok(connection) => connection,
        Err(e) => {
            let problem = InputProblem::new(e.reason(), e.to_string());
            return Reading {
                cluster,
                client: None,
                read: MemberRead::Unreachable(e.to_string()),
                contact: None,
                client_problem: Some(problem),
                watch: None,
                identity: IdentityVerdict::Unverified("the hub has no client for the member".into()),
            };
        }
    };
    let name = cluster.name_any();
    let pinned = cluster.status.as_ref().and_then(|s| s.identity.as_ref()).and_then(|i| i.pinned_uid.as_deref());
    let observed = ctx.watches.probe(&name).and_then(|probe| probe.identity);
    let identity = verify_identity(
        ExpectedIdentity {
            cluster: &name,
            labels: cluster.labels(),
            pinned_uid: pinned,
            kubeconfig: &connection.fingerprint,
        },
        observed.as_ref(),
    );
    let canary_ref = &rollout.spec.canary_ref;
    let key = WatchKey {
        cluster: cluster.name_any(),
        namespace: canary_ref.namespace.clone(),
        name: canary_ref.name.clone(),
    };
    let (read, contact) = match ctx.watches.read(&key, &connection.fingerprint, now) {
        CacheVerdict::Fresh(canary, contact) => {
            (MemberRead::Reached(canary.map(|c| Box::new(Canary::clone(&c)))), Some(contact))
        }
        CacheVerdict::Failed(error) => (
            MemberRead::Unreachable(format!("watching Canary {}/{}: {error}", canary_ref.namespace, canary_ref.name)),
            None,
        ),
        CacheVerdict::Stale => (get_canary(&connection.client, rollout).await, None),
    };
    let watch = WantedWatch { fingerprint: connection.fingerprint, client: connection.client.clone() };
    Reading {
        cluster,
        client: Some(connection.client),
        read,
        contact,
        client_problem: None,
        watch: Some((key, watch)),
        identity,
    }
}

/// Reads a member Canary directly, for when no fresh watch cache stands for it.
async fn get_canary(client: &Client, rollout: &Rollout) -> MemberRead {
    let canary_ref = &rollout.spec.canary_ref;
    let canaries: Api<Canary> = Api::namespaced(client.clone(), &canary_ref.namespace);
    match tokio::time::timeout(MEMBER_READ_TIMEOUT, canaries.get_opt(&canary_ref.name)).await {
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
    }
}

/// The problems with what the hub was given, most serious first. Pure.
fn input_problems(rollout: &Rollout, plan: &RolloutPlan, readings: &[Reading]) -> Vec<InputProblem> {
    let mut problems: Vec<InputProblem> = readings.iter().filter_map(|r| r.client_problem.clone()).collect();
    let labels: Vec<(String, &BTreeMap<String, String>)> =
        readings.iter().map(|r| (r.cluster.name_any(), r.cluster.labels())).collect();
    problems.extend(overlap_problem(plan, labels.iter().map(|(name, labels)| (name.as_str(), *labels))));
    let memberships = assign_waves(plan, labels.iter().map(|(_, labels)| *labels));
    let unassigned: Vec<String> = labels
        .iter()
        .zip(&memberships)
        .filter(|(_, m)| **m == Membership::Unassigned)
        .map(|((name, _), _)| name.clone())
        .collect();
    problems.extend(unassigned_problem(&unassigned));
    // Only members in a wave need the Canary.
    let in_waves = readings.iter().zip(&memberships).filter(|(_, m)| matches!(m, Membership::Wave(_)));
    let mut missing = Vec::new();
    let mut present = 0;
    for (reading, _) in in_waves {
        match &reading.read {
            MemberRead::Reached(None) => missing.push(reading.cluster.name_any()),
            MemberRead::Reached(Some(_)) => present += 1,
            MemberRead::Unreachable(_) => {}
        }
    }
    let canary_ref = &rollout.spec.canary_ref;
    problems.extend(canary_problem(&format!("{}/{}", canary_ref.namespace, canary_ref.name), &missing, present));
    problems.extend(traffic_share_problem(labels.iter().map(|(name, labels)| (name.as_str(), *labels))));
    sort_problems(&mut problems);
    problems
}

/// The newest phase transition any reached member Canary reports.
fn latest_member_change(readings: &[Reading]) -> Option<DateTime<Utc>> {
    readings
        .iter()
        .filter_map(|r| match &r.read {
            MemberRead::Reached(Some(canary)) => canary.status.as_ref().and_then(|s| s.last_transition_time),
            _ => None,
        })
        .max()
}

/// Adds the `Valid` condition for `problems` to `status`.
fn with_validity(
    status: &mut RolloutStatus,
    previous: Option<&RolloutStatus>,
    problems: &[InputProblem],
    now: DateTime<Utc>,
) {
    let previous_conditions = previous.map_or(&[][..], |s| &s.conditions);
    let condition = valid_condition(previous_conditions, problems, status.observed_generation, now);
    set_condition(&mut status.conditions, condition);
}

async fn publish(ctx: &HubContext, rollout: &Rollout, reason: &str, message: &str, warning: bool) {
    publish_on(ctx, &rollout.object_ref(&()), reason, message, warning).await;
}

/// Records an Event on a hub object (a Rollout or a Cluster) and logs it.
pub(crate) async fn publish_on(
    ctx: &HubContext,
    object: &k8s_openapi::api::core::v1::ObjectReference,
    reason: &str,
    message: &str,
    warning: bool,
) {
    let (kind, name) = (object.kind.as_deref().unwrap_or_default(), object.name.as_deref().unwrap_or_default());
    if warning {
        warn!(kind, name, reason, message, "event");
    } else {
        info!(kind, name, reason, message, "event");
    }
    let event = Event {
        type_: if warning { EventType::Warning } else { EventType::Normal },
        reason: reason.to_string(),
        note: Some(message.chars().take(1000).collect()),
        action: event_action(reason, message),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, object).await {
        warn!(kind, name, reason, error = %e, "could not record event");
    }
}

/// kube's `Recorder` folds Events with the same reason and action into one series that
/// keeps the first note; a digest of the note in the action folds only true repeats.
fn event_action(reason: &str, note: &str) -> String {
    use sha2::Digest as _;
    format!("{reason}-{}", hex::encode(&sha2::Sha256::digest(note.as_bytes())[..4]))
}

/// An Event the hub publishes once the status it goes with is written.
type PendingEvent = (String, String, bool);

/// Publishes Events after the status write they go with: a reconcile whose write was
/// refused (409) decides again from the newer Rollout and does not repeat them.
async fn publish_all(ctx: &HubContext, rollout: &Rollout, events: Vec<PendingEvent>) {
    for (reason, message, warning) in events {
        publish(ctx, rollout, &reason, &message, warning).await;
    }
}

/// How soon a reconcile whose status write met a newer Rollout (409) runs again.
const CONFLICT_RETRY: Duration = Duration::from_millis(200);

/// Writes the status unless only contact times moved (see [`status_worth_writing`]):
/// every write triggers the next reconcile through the Rollout watch. The write carries
/// the resourceVersion the status was decided from: `Ok(false)` when the Rollout changed
/// since (409), and nothing was written.
async fn write_status_if_changed(rollout: &Rollout, status: &RolloutStatus, client: &Client) -> Result<bool, HubError> {
    if !status_worth_writing(rollout.status.as_ref(), status) {
        return Ok(true);
    }
    let namespace = rollout.namespace().ok_or(HubError::MissingNamespace)?;
    // Dynamic: the answer is not needed, and a typed one would have to parse the spec.
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &ApiResource::erase::<Rollout>(&()));
    // Approvals of manual waves belong to whoever approved (kubectl-petrel's field
    // manager); applying them as the hub would take ownership and fight that manager.
    let mut owned = status.clone();
    for wave in &mut owned.waves {
        wave.approved_at = None;
        wave.approved_release = None;
        wave.approved_by = None;
    }
    let body = serde_json::json!({
        "apiVersion": Rollout::api_version(&()),
        "kind": Rollout::kind(&()),
        "metadata": {"name": rollout.name_any(), "resourceVersion": rollout.resource_version()},
        "status": owned,
    });
    match api.patch_status(&rollout.name_any(), &apply_params(), &Patch::Apply(&body)).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            info!(rollout = %rollout_key(rollout), "the Rollout changed since it was read; deciding again");
            Ok(false)
        }
        Err(source) => Err(HubError::WriteStatus { rollout: rollout_key(rollout), source }),
    }
}

/// What a rollback of a member did: the release its primary runs now, and what
/// happened for an Event (`None` when the primary already ran it).
struct RolledBack {
    release: String,
    done: Option<String>,
}

/// Rolls a member's primary back to the newest stored template of another release.
async fn roll_back_member(client: &Client, canary: &Canary, release: &str) -> Result<RolledBack, String> {
    let revisions = workloads::list_primary_revisions(client, canary).await.map_err(|e| e.to_string())?;
    let Some(target) = workloads::previous_release_revision(&revisions, release) else {
        return Err(format!("no stored primary template of a release other than {release} to go back to"));
    };
    // `previous_release_revision` only picks revisions that store a release.
    let target_release = workloads::stored_release(target).unwrap_or_default().to_string();
    let target_revision = workloads::stored_revision(target).unwrap_or_default().to_string();
    let primary_name = workloads::primary_name(&canary.spec.target_ref.name);
    let namespace = canary.namespace().unwrap_or_default();
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client.clone(), &namespace);
    // The template, not the finished rollout: while the old pods come back, each
    // reconcile would otherwise announce the same rollback again.
    if let Ok(primary) = deployments.get(&primary_name).await
        && workloads::primary_template_is_revision(&primary, &target_revision)
    {
        return Ok(RolledBack { release: target_release, done: None });
    }
    workloads::rollback_primary_to(client, canary, &primary_name, target).await.map_err(|e| e.to_string())?;
    let done = format!("rolled {namespace}/{primary_name} back to revision {target_revision} ({target_release})");
    Ok(RolledBack { release: target_release, done: Some(done) })
}

/// Reconciles one Rollout, timed and with its failures counted.
pub async fn reconcile(rollout: Arc<Rollout>, ctx: Arc<HubContext>) -> Result<Action, HubError> {
    let _timer = ctx.metrics.time_reconcile(ROLLOUT_CONTROLLER);
    let result = reconcile_rollout(&rollout, &ctx).await;
    if let Err(e) = &result {
        ctx.metrics.record_reconcile_failure(ROLLOUT_CONTROLLER, e.kind(), e.api_error());
    }
    result
}

/// Publishes the Events, records the metrics and writes the status of a Rollout the
/// hub cannot go on with (`reason` on `Progressing`), keeping its history.
async fn block(
    ctx: &HubContext,
    rollout: &Rollout,
    reason: &str,
    message: String,
    problems: &[InputProblem],
    now: DateTime<Utc>,
) -> Result<bool, HubError> {
    let previous = rollout.status.as_ref();
    let mut status = blocked_status(previous, rollout.metadata.generation, reason, message, now);
    with_validity(&mut status, previous, problems, now);
    ctx.metrics.observe_rollout(&rollout.namespace().unwrap_or_default(), &rollout.name_any(), &status);
    if !write_status_if_changed(rollout, &status, &ctx.client).await? {
        return Ok(false);
    }
    for event in problem_events(previous.map_or(&[][..], |s| &s.conditions), problems) {
        publish(ctx, rollout, event.reason, &event.message, event.warning).await;
    }
    Ok(true)
}

async fn reconcile_rollout(rollout: &Rollout, ctx: &HubContext) -> Result<Action, HubError> {
    let now = Utc::now();
    let generation = rollout.metadata.generation;
    let previous = rollout.status.as_ref();
    let key = rollout_key(rollout);
    let plan = match RolloutPlan::from_spec(&rollout.spec) {
        Ok(plan) => plan,
        Err(e) => {
            let message = format!("the spec cannot be rolled out: {e}");
            let problems = [InputProblem::new(INVALID_SPEC, message.clone())];
            if !block(ctx, rollout, INVALID_SPEC, message, &problems, now).await? {
                return Ok(Action::requeue(CONFLICT_RETRY));
            }
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
    };

    let selected = selected_clusters(ctx, rollout).await?;
    let readings: Vec<Reading> =
        futures::future::join_all(selected.into_iter().map(|c| read_member(ctx, rollout, c, now))).await;
    ctx.watches.want(&key, readings.iter().filter_map(|r| r.watch.clone()).collect());

    let mut problems = input_problems(rollout, &plan, &readings);
    let observed_uids: Vec<(String, String)> = readings
        .iter()
        .filter_map(|r| {
            let name = r.cluster.name_any();
            let uid = ctx.watches.probe(&name)?.identity?.kube_system_uid.ok()?;
            Some((name, uid))
        })
        .collect();
    problems.extend(shared_identity_problem(observed_uids.iter().map(|(n, u)| (n.as_str(), u.as_str()))));
    sort_problems(&mut problems);
    if let Some(blocking) =
        problems.iter().find(|p| p.reason == CANARY_NOT_FOUND || p.reason == CLUSTERS_SHARE_IDENTITY)
    {
        if !block(ctx, rollout, blocking.reason, blocking.message.clone(), &problems, now).await? {
            return Ok(Action::requeue(CONFLICT_RETRY));
        }
        return Ok(Action::requeue(SAFETY_REQUEUE));
    }

    let previous_member = |name: &str| previous.and_then(|s| s.members.iter().find(|m| m.cluster == name));
    let mut observations: Vec<_> = readings
        .iter()
        .map(|r| {
            let previous = previous_member(&r.cluster.name_any());
            // A cached read is as recent as its last confirmation, never older than
            // a contact already recorded.
            let contact = r.contact.map_or(now, |c| previous.and_then(|p| p.last_contact).map_or(c, |p| c.max(p)));
            observe_member(&r.cluster, &r.read, previous, r.identity.clone(), contact)
        })
        .collect();
    let unreachable: BTreeMap<String, String> = readings
        .iter()
        .filter_map(|r| match &r.read {
            MemberRead::Unreachable(why) => Some((r.cluster.name_any(), why.clone())),
            MemberRead::Reached(_) => None,
        })
        .collect();

    let Some(release) = choose_release(&plan, previous, &observations) else {
        let message = "no member of the first wave reports a release yet".to_string();
        if !block(ctx, rollout, "NoRelease", message, &problems, now).await? {
            return Ok(Action::requeue(CONFLICT_RETRY));
        }
        return Ok(Action::requeue(requeue_after(None)));
    };
    let history = history_for_release(previous, &release);
    with_approvals(&mut observations, &history);
    let decision = decide_waves(&plan, &release, &history.waves, &observations, now);

    // Annotations: the Rollout marker everywhere, approvals and withdrawals where decided.
    let mut write_errors: BTreeMap<String, String> = BTreeMap::new();
    let mut withdrawn = Vec::new();
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
        // Dynamic: a member's answer that does not parse as petrel's Canary (another
        // petrel version) must not turn a successful write into an error.
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &namespace, &ApiResource::erase::<Canary>(&()));
        let body = annotation_patch(&namespace, &canary.name_any(), &annotations);
        match api.patch(&canary.name_any(), &apply_params(), &Patch::Apply(&body)).await {
            Ok(written) => {
                if let Some(revision) = approval {
                    // How quickly the hub acts on the members: time from the newest member
                    // status change (the likely cause of this approval) to the write.
                    let since_latest_member_change_ms =
                        latest_member_change(&readings).map(|t| (Utc::now() - t).num_milliseconds());
                    info!(rollout = %key, cluster = %name, revision, ?since_latest_member_change_ms, "approval written");
                }
                if withdraw && canary.annotations().contains_key(crate::fleet::APPROVED_REVISION_ANNOTATION) {
                    withdrawn.push(name.clone());
                }
                if let (Some((key, _)), Ok(written)) = (&reading.watch, written.try_parse::<Canary>()) {
                    ctx.watches.wrote(key, written);
                }
            }
            Err(e) => {
                write_errors.insert(name, format!("annotating Canary {namespace}/{}: {e}", canary.name_any()));
            }
        }
    }

    // Events wait for the status write (see `publish_all`).
    let mut events: Vec<PendingEvent> = Vec::new();
    let started = release_started(previous, &release);
    for event in started.into_iter().chain(hub_events(&history, &decision, &release)) {
        events.push((event.reason.to_string(), event.message, event.warning));
    }
    for name in withdrawn {
        let message = format!("withdrew the approval of cluster {name} (release {release}): its Canary aborts");
        events.push(("ApprovalWithdrawn".to_string(), message, true));
    }

    // RollbackAll: best effort; what failed is shown on the member and as an Event.
    let mut rollbacks: BTreeMap<String, HubRollback> = BTreeMap::new();
    for name in &decision.rollback {
        let Some(reading) = readings.iter().find(|r| &r.cluster.name_any() == name) else { continue };
        let (Some(client), MemberRead::Reached(Some(canary))) = (&reading.client, &reading.read) else {
            write_errors.insert(name.clone(), "rollback pending: the member is unreachable".to_string());
            continue;
        };
        match roll_back_member(client, canary, &release).await {
            Ok(rolled_back) => {
                if let Some(done) = &rolled_back.done {
                    events.push(("MemberRolledBack".to_string(), format!("cluster {name}: {done}"), false));
                }
                rollbacks.insert(name.clone(), HubRollback { from: release.clone(), to: rolled_back.release });
            }
            Err(e) => {
                let message = format!("rollback failed: {e}");
                events.push(("RollbackFailed".to_string(), format!("cluster {name}: {message}"), true));
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
    with_inventory(&mut status, previous, &observations, &rollbacks, now);
    with_validity(&mut status, previous, &problems, now);
    let status_events = problem_events(previous.map_or(&[][..], |s| &s.conditions), &problems)
        .into_iter()
        .chain(transition_events(previous, &status));
    events.extend(status_events.map(|event| (event.reason.to_string(), event.message, event.warning)));
    ctx.metrics.observe_rollout(&rollout.namespace().unwrap_or_default(), &rollout.name_any(), &status);
    if !write_status_if_changed(rollout, &status, &ctx.client).await? {
        return Ok(Action::requeue(CONFLICT_RETRY));
    }
    publish_all(ctx, rollout, events).await;
    Ok(Action::requeue(requeue_after(decision.recheck_after)))
}

/// The watch of the hub's Clusters (its name in `/readyz` and [`crate::telemetry::WatchHealth`]).
pub const CLUSTERS_WATCH: &str = "clusters";

/// The Clusters `rollout` selects: from the hub's Cluster watch while it keeps its cache,
/// else from the API server. The store is as fresh as a decision needs: a Cluster change
/// reaches the store before it wakes the Rollouts, which then read it again. Reading it
/// spares every reconcile a LIST of the whole fleet (a member's probe alone writes its
/// Cluster's status, and wakes every Rollout).
async fn selected_clusters(ctx: &HubContext, rollout: &Rollout) -> Result<Vec<Cluster>, HubError> {
    let selects = |cluster: &Cluster| rollout.spec.clusters.matches(cluster.labels());
    if let Some(store) = ctx.clusters.get()
        && ctx.health.keeps(CLUSTERS_WATCH)
    {
        return Ok(store.state().iter().filter(|c| selects(c)).map(|c| c.as_ref().clone()).collect());
    }
    let clusters: Api<Cluster> = Api::all(ctx.client.clone());
    let listed = clusters.list(&Default::default()).await.map_err(HubError::ListClusters)?;
    Ok(listed.items.into_iter().filter(selects).collect())
}

fn error_policy(rollout: Arc<Rollout>, error: &HubError, _ctx: Arc<HubContext>) -> Action {
    warn!(rollout = %rollout_key(&rollout), %error, "reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

/// Aborts the hub's helper tasks when [`run`] ends or is dropped (a lost leader
/// lease drops it): a hub that no longer leads must not probe, watch or write.
struct AbortOnDrop(MemberWatches, Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.1 {
            task.abort();
        }
        self.0.stop_all();
    }
}

/// Runs the hub until `shutdown` is requested: the Rollout controller, the member watches'
/// manager, the member probes (and Cluster statuses), and a sweep that forgets the
/// watches and metrics of deleted Rollouts.
pub async fn run(ctx: Arc<HubContext>, shutdown: Shutdown) -> anyhow::Result<()> {
    let rollouts: Api<Rollout> = Api::all(ctx.client.clone());
    if let Err(e) = rollouts.list(&kube::api::ListParams::default().limit(1)).await {
        anyhow::bail!("cannot list Rollouts ({e}); are the CRDs installed? Apply them with: kubectl apply -f crds/");
    }
    let clusters: Api<Cluster> = Api::all(ctx.client.clone());
    // Each watch recovers on its own and reports to `/readyz` (see `controller::watches`).
    let (store, rollout_writer) = kube::runtime::reflector::store();
    let config = || watcher::Config::default().any_semantic();
    let rollout_events = kept("rollouts", watcher(rollouts, config()), &ctx.health).reflect(rollout_writer);
    let (cluster_store, cluster_writer) = kube::runtime::reflector::store();
    let cluster_events = kept(CLUSTERS_WATCH, watcher(clusters, config()), &ctx.health).reflect(cluster_writer);
    // Set once per process; a second `run` on the same context keeps the first store.
    let _ = ctx.clusters.set(cluster_store.clone());
    let _helpers = AbortOnDrop(
        ctx.watches.clone(),
        vec![
            tokio::spawn(ctx.watches.clone().manage()),
            tokio::spawn(clusters::run_probes(ctx.clone())),
            tokio::spawn({
                let (ctx, store) = (ctx.clone(), store.clone());
                async move {
                    if store.wait_until_ready().await.is_err() {
                        return;
                    }
                    loop {
                        let live: Vec<Arc<Rollout>> = store.state();
                        ctx.watches.retain_rollouts(&live.iter().map(|r| rollout_key(r)).collect());
                        let names: Vec<(String, String)> =
                            live.iter().map(|r| (r.namespace().unwrap_or_default(), r.name_any())).collect();
                        ctx.metrics.retain_rollouts(names.iter().map(|(ns, name)| (ns.as_str(), name.as_str())));
                        tokio::time::sleep(MANAGE_INTERVAL).await;
                    }
                }
            }),
        ],
    );
    info!("starting the hub Rollout controller");
    let rollout_store = store.clone();
    let ready_store = store.clone();
    let member_changes = ctx.watches.member_changes().flat_map({
        let store = store.clone();
        move |changed| futures::stream::iter(rollouts_selecting(&changed, &cluster_store.state(), &store.state()))
    });
    let controller = Controller::for_stream(objects_only(rollout_events.applied_objects()), rollout_store)
        .with_config(ControllerConfig::default().debounce(Duration::from_millis(200)))
        // Any Cluster change (labels, kubeconfig Secret) can change every Rollout's members.
        .watches_stream(objects_only(cluster_events.touched_objects()), move |_: Cluster| {
            store.state().iter().map(|r| ObjectRef::from_obj(r.as_ref())).collect::<Vec<_>>()
        })
        // A member Canary changed, or a member's reachability: the Rollouts that select
        // that member look again.
        .reconcile_on(member_changes)
        .graceful_shutdown_on(shutdown.requested())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "hub controller stream error");
            }
        });
    crate::shutdown::run_controller(controller, &ready_store, &shutdown).await;
    info!("hub Rollout controller stopped");
    Ok(())
}
