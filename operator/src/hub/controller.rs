//! The hub's Rollout controller: the I/O shell around [`super::decisions`] and
//! [`crate::fleet`].
//!
//! Each reconcile runs in this order:
//! 1. **read** (`read_rollout`): the plan, the selected Clusters (from the hub's Cluster
//!    watch while it keeps its cache, by a LIST otherwise) and their member Canaries (from
//!    the member watches' caches while fresh, [`super::watches`], by a GET otherwise),
//!    with each member's identity as its last probe found it: one [`RolloutInput`];
//! 2. **decide** ([`decide_rollout`], pure): blocked and why, or the annotation writes,
//!    the rollbacks and the status they go with;
//! 3. **apply** (`apply`): the hub's annotations on the member Canaries (server-side
//!    apply of the annotations only, field manager [`HUB_FIELD_MANAGER`]) and the
//!    rollbacks, each outcome collected;
//! 4. **record** ([`record`], pure): the status, from the decision and the outcomes, and
//!    the Events of the change from the stored status to it
//!    ([`super::decisions::events_between`]);
//! 5. the status write (conditional on the resourceVersion decided from), and only once
//!    it succeeded, the Events. Keyed by the two statuses, they are derived again by a
//!    reconcile after a refused write (the stored status did not change) and by none
//!    after a written one.
//!
//! The member writes come before the status write, not after: the status records their
//! outcomes (write errors on the members, the release a rollback put back in the
//! inventory), and both are idempotent (an apply of the same annotations; a rollback
//! that finds the primary's template already put back does nothing). A write whose
//! status was refused is found done by the retry, which records it then: an approval
//! on the member is recorded with its Event
//! ([`super::decisions::with_delivered_approvals`]), an approval gone from the member
//! likewise (`approvalWithdrawnAt`, [`super::decisions::withdrawn_before`]), a rollback
//! in the inventory.
//!
//! A change of a watched member Canary, or of a member's reachability, wakes the
//! reconciles of the Rollouts that select that member; a slower safety requeue catches
//! anything else.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{info, warn};

use super::clusters;
use super::decisions::{
    AnnotationWrite, HubEvent, MemberRead, MemberReading, Proceed, RolledBack, RolloutDecision, RolloutInput,
    WriteOutcomes, annotation_patch, decide_rollout, record, rollout_key, status_worth_writing,
};
use super::input::InputProblem;
use super::members::MemberClients;
use super::watches::{
    CacheVerdict, MANAGE_INTERVAL, MemberWatches, WantedWatch, WatchKey, rollouts_concerning_cluster,
    rollouts_selecting,
};
use crate::api::rollout::RolloutStatus;
use crate::api::{Canary, Cluster, Rollout};
use crate::controller::watches::{kept, objects_only};
use crate::fleet::RolloutPlan;
use crate::fleet::identity::{ExpectedIdentity, IdentityVerdict, verify_identity};
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
    pub recorder: crate::events::EventRecorder,
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
        Self {
            members: MemberClients::new(client.clone()),
            recorder: crate::events::EventRecorder::new(client.clone(), "petrel-hub", instance),
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

/// What reading one member gave, and the member's watch when the hub has a client for it.
struct Reading {
    member: MemberReading,
    watch: Option<(WatchKey, WantedWatch)>,
}

async fn read_member(ctx: &HubContext, rollout: &Rollout, cluster: Cluster, now: DateTime<Utc>) -> Reading {
    let name = cluster.name_any();
    let observed = ctx.watches.probe(&name).and_then(|probe| probe.identity);
    let observed_uid = observed.as_ref().and_then(|identity| identity.kube_system_uid.clone().ok());
    let connection = match ctx.members.connect(&cluster).await {
        Ok(connection) => connection,
        Err(e) => {
            let problem = InputProblem::new(e.reason(), e.to_string());
            let member = MemberReading {
                cluster,
                read: MemberRead::Unreachable(e.to_string()),
                contact: None,
                client_problem: Some(problem),
                identity: IdentityVerdict::Unverified("the hub has no client for the member".into()),
                observed_uid,
            };
            return Reading { member, watch: None };
        }
    };
    let pinned = cluster.status.as_ref().and_then(|s| s.identity.as_ref()).and_then(|i| i.pinned_uid.as_deref());
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
    let key = WatchKey { cluster: name, namespace: canary_ref.namespace.clone(), name: canary_ref.name.clone() };
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
    let watch = WantedWatch { fingerprint: connection.fingerprint, client: connection.client };
    let member = MemberReading { cluster, read, contact, client_problem: None, identity, observed_uid };
    Reading { member, watch: Some((key, watch)) }
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
    if let Err(e) = ctx.recorder.write_now(object, reason, message, warning).await {
        warn!(kind, name, reason, error = %e, "could not record event");
    }
}

/// Publishes Events after the status write they go with: a reconcile whose write was
/// refused (409) publishes none, and the next one derives them again from the stored
/// status, which did not change.
async fn publish_all(ctx: &HubContext, rollout: &Rollout, events: Vec<HubEvent>) {
    for event in events {
        publish(ctx, rollout, event.reason, &event.message, event.warning).await;
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

/// Reconciles one Rollout: read, decide, apply the member writes, record, write the
/// status, and only once it is written publish the Events.
async fn reconcile_rollout(rollout: &Rollout, ctx: &HubContext) -> Result<Action, HubError> {
    let (input, members) = read_rollout(ctx, rollout).await?;
    let decision = decide_rollout(&input);
    let outcomes = match &decision {
        RolloutDecision::Proceed(planned) => apply(ctx, &input, planned, &members).await,
        RolloutDecision::Blocked(_) => WriteOutcomes::default(),
    };
    let recorded = record(&input, decision, &outcomes);
    ctx.metrics.observe_rollout(&rollout.namespace().unwrap_or_default(), &rollout.name_any(), &recorded.status);
    if !write_status_if_changed(rollout, &recorded.status, &ctx.client).await? {
        return Ok(Action::requeue(CONFLICT_RETRY));
    }
    publish_all(ctx, rollout, recorded.events).await;
    Ok(Action::requeue(recorded.requeue))
}

/// The watch (and client) of each member the hub has a client for, by cluster name.
type MemberHandles = BTreeMap<String, (WatchKey, WantedWatch)>;

/// Reads what a reconcile decides from: the plan and, when the spec can be rolled out,
/// the members the Rollout selects (and tells the member watches which it needs).
async fn read_rollout<'a>(
    ctx: &HubContext,
    rollout: &'a Rollout,
) -> Result<(RolloutInput<'a>, MemberHandles), HubError> {
    let now = Utc::now();
    let mut input = RolloutInput { rollout, plan: RolloutPlan::from_spec(&rollout.spec), members: Vec::new(), now };
    let mut handles = MemberHandles::new();
    if input.plan.is_err() {
        return Ok((input, handles));
    }
    let selected = selected_clusters(ctx, rollout).await?;
    let readings: Vec<Reading> =
        futures::future::join_all(selected.into_iter().map(|c| read_member(ctx, rollout, c, now))).await;
    ctx.watches.want(&rollout_key(rollout), readings.iter().filter_map(|r| r.watch.clone()).collect());
    for reading in readings {
        if let Some(watch) = reading.watch {
            handles.insert(reading.member.cluster.name_any(), watch);
        }
        input.members.push(reading.member);
    }
    Ok((input, handles))
}

/// Makes the member writes `planned` asks for (annotations, then rollbacks), and says
/// how each went.
async fn apply(
    ctx: &HubContext,
    input: &RolloutInput<'_>,
    planned: &Proceed,
    handles: &MemberHandles,
) -> WriteOutcomes {
    let mut outcomes = WriteOutcomes::default();
    for write in &planned.annotations {
        // Planned only for members that answered, so through a client the hub has.
        let result = match handles.get(&write.cluster) {
            Some((key, watch)) => annotate(ctx, key, &watch.client, write).await,
            None => Err("the hub has no client for the member".to_string()),
        };
        if let (Ok(()), Some(revision)) = (&result, &write.approval) {
            // How quickly the hub acts on the members: time from the newest member
            // status change (the likely cause of this approval) to the write.
            let since_latest_member_change_ms =
                input.latest_member_change().map(|t| (Utc::now() - t).num_milliseconds());
            let rollout = rollout_key(input.rollout);
            info!(%rollout, cluster = %write.cluster, revision, ?since_latest_member_change_ms, "approval written");
        }
        outcomes.annotations.insert(write.cluster.clone(), result);
    }
    // RollbackAll: best effort; what failed is shown on the member and as an Event.
    for name in &planned.rollbacks {
        let result = match (handles.get(name), input.canary_of(name)) {
            (Some((_, watch)), Some(canary)) => roll_back_member(&watch.client, canary, &planned.release).await,
            _ => Err("the hub has no client for the member".to_string()),
        };
        outcomes.rollbacks.insert(name.clone(), result);
    }
    outcomes
}

/// Applies the hub's annotations on a member Canary, and keeps what was written in the
/// member's watch cache.
async fn annotate(ctx: &HubContext, key: &WatchKey, client: &Client, write: &AnnotationWrite) -> Result<(), String> {
    // Dynamic: a member's answer that does not parse as petrel's Canary (another
    // petrel version) must not turn a successful write into an error.
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &write.namespace, &ApiResource::erase::<Canary>(&()));
    let body = annotation_patch(&write.namespace, &write.name, &write.annotations);
    let written = api.patch(&write.name, &apply_params(), &Patch::Apply(&body)).await.map_err(|e| e.to_string())?;
    if let Ok(written) = written.try_parse::<Canary>() {
        ctx.watches.wrote(key, written);
    }
    Ok(())
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
        // A Cluster change (labels, kubeconfig Secret, probe status, deletion): the
        // Rollouts that select it or list it look again.
        .watches_stream(objects_only(cluster_events.touched_objects()), move |cluster: Cluster| {
            rollouts_concerning_cluster(&cluster, &store.state())
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
