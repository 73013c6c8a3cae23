//! Steps of the reconcile that keep traffic on analysed pods when something around a
//! Canary is deleted or edited mid-release (DESIGN rule 10; issue 11, defects 4, 5, 10):
//!
//! - [`finalizer_step`]: every Canary carries [`FINALIZER`]; a deleted one is handed over
//!   (see [`crate::workloads::handover`]) before its generated objects go.
//! - [`restore_primary`]: a deleted primary is rebuilt from the promoted template, never
//!   from the canary.
//! - [`retire_previous_router`]: when `spec.provider` changes, the routes the previous
//!   provider's router wrote are removed before the new router writes its own.
//!
//! Each is one call at the top of the reconcile; the decisions are pure functions in
//! `workloads`.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::{Api, Resource, ResourceExt};
use tracing::{debug, info};

use super::{Context, Error, provider_of};
use crate::api::Canary;
use crate::api::canary::{CanaryStatus, Phase};
use crate::core::Provider;
use crate::core::strategy::progress_deadline;
use crate::routers::services::{self, ApexTarget};
use crate::routers::{RouterError, ServiceNames, Weights, router_with};
use crate::workloads::daemonset::{self, DaemonSetSnapshot};
use crate::workloads::handover::{
    self, FINALIZER, HandoverPlan, HandoverView, Names, RouteObjects, Side, Step, Then, WorkloadView,
};
use crate::workloads::{self, ConfigReads, DeploymentCache, WorkloadError, WorkloadSnapshot};

/// How soon a hand-over waiting for the target's pods looks again (the Deployment watch
/// usually wakes it sooner).
const HANDOVER_RECHECK: Duration = Duration::from_secs(2);

/// The first step of every reconcile. A Canary being deleted is handed over and, once
/// done, its finalizer removed; any other Canary gets the finalizer. `Some`: the reconcile
/// ends here.
pub(super) async fn finalizer_step(ctx: &Context, canary: &Canary) -> Result<Option<Requeue>, Error> {
    let has_finalizer = canary.finalizers().iter().any(|f| f == FINALIZER);
    if canary.meta().deletion_timestamp.is_some() {
        if !has_finalizer {
            return Ok(Some(Requeue::await_change()));
        }
        return hand_over(ctx, canary).await.map(Some);
    }
    if has_finalizer {
        return Ok(None);
    }
    patch_finalizers(ctx, canary, add_finalizer_patch(canary)).await?;
    // The patch changed the Canary (its resourceVersion too): the watch brings it back.
    Ok(Some(Requeue::await_change()))
}

/// The finalizers with [`FINALIZER`] added, as a merge patch conditional on the
/// resourceVersion they were read at (a concurrent change is a 409, and a retry).
fn add_finalizer_patch(canary: &Canary) -> serde_json::Value {
    let mut finalizers = canary.finalizers().to_vec();
    finalizers.push(FINALIZER.to_string());
    finalizers_patch(canary, finalizers)
}

/// The finalizers without [`FINALIZER`], conditional likewise; `None` when it is not there.
fn remove_finalizer_patch(canary: &Canary) -> Option<serde_json::Value> {
    let finalizers = canary.finalizers();
    let kept: Vec<String> = finalizers.iter().filter(|f| *f != FINALIZER).cloned().collect();
    (kept.len() != finalizers.len()).then(|| finalizers_patch(canary, kept))
}

fn finalizers_patch(canary: &Canary, finalizers: Vec<String>) -> serde_json::Value {
    serde_json::json!({
        "metadata": { "finalizers": finalizers, "resourceVersion": canary.meta().resource_version }
    })
}

async fn patch_finalizers(ctx: &Context, canary: &Canary, patch: serde_json::Value) -> Result<(), Error> {
    let namespace = canary.namespace().ok_or(Error::MissingNamespace)?;
    let api: Api<Canary> = Api::namespaced(ctx.client.clone(), &namespace);
    let params = PatchParams { field_manager: Some(crate::FIELD_MANAGER.to_string()), ..Default::default() };
    match api.patch(&canary.name_any(), &params, &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        // Gone already: nothing holds it.
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(Error::kube("updating the Canary's finalizers")(e)),
    }
}

/// One round of the hand-over of a deleted Canary: observe, plan, act; release the
/// Canary when the plan says so. Past the deadline, a failing step releases it too (with
/// a Warning), so a deletion is never held forever.
async fn hand_over(ctx: &Context, canary: &Canary) -> Result<Requeue, Error> {
    let observed = observe(ctx, canary).await?;
    if let Some(refusal) = refusal(ctx, canary, observed.snapshot.as_ref()).await? {
        // What it claims is another Canary's (or petrel's own): handing anything over
        // would take it from its holder.
        let message = format!(
            "Canary deleted while refused ({}): petrel took nothing over for it and touches nothing",
            refusal.reason
        );
        return release(ctx, canary, "Released", &message, false).await;
    }
    let plan = handover::plan(&observed.view, &observed.names);
    debug!(?plan, "hand-over of a deleted Canary");
    match execute(ctx, canary, &observed, &plan).await {
        Ok(()) => {}
        Err(e) if observed.view.deadline_passed => {
            let message = format!(
                "Canary deleted; handing traffic over failed until the deadline (progressDeadlineSeconds) and petrel lets it go as it is: {e}"
            );
            return release(ctx, canary, "HandoverFailed", &message, true).await;
        }
        Err(e) => return Err(e),
    }
    match plan.then {
        Then::Wait(why) => {
            info!(canary = %canary.name_any(), %why, "hand-over waiting");
            Ok(Requeue::requeue(HANDOVER_RECHECK))
        }
        Then::Release { reason, message, warning } => release(ctx, canary, reason, &message, warning).await,
    }
}

async fn release(ctx: &Context, canary: &Canary, reason: &str, message: &str, warning: bool) -> Result<Requeue, Error> {
    // Published while the Canary still exists, so the Event names a live object.
    ctx.events.publish(canary, reason, message, warning);
    if let Some(patch) = remove_finalizer_patch(canary) {
        patch_finalizers(ctx, canary, patch).await?;
    }
    Ok(Requeue::await_change())
}

/// What the hand-over plan was made from, and what its steps need.
struct Observed {
    view: HandoverView,
    names: Names,
    snapshot: Option<WorkloadSnapshot>,
    /// The DaemonSet target's reading, when the target is a DaemonSet.
    daemon_set: Option<DaemonSetSnapshot>,
    provider: Option<Provider>,
}

async fn observe(ctx: &Context, canary: &Canary) -> Result<Observed, Error> {
    if canary.spec.target_ref.is_daemon_set() {
        return observe_daemon_set(ctx, canary).await;
    }
    let namespace = canary.namespace().ok_or(Error::MissingNamespace)?;
    let status = canary.status.clone().unwrap_or_default();
    let now = Utc::now();
    let deadline = progress_deadline(&canary.spec);
    // Read from the API server, not the cache: what a deletion hands traffic to is
    // decided once, from the newest state.
    let snapshot = match workloads::read_workloads(
        &ctx.client,
        &DeploymentCache::default(),
        &ConfigReads::default(),
        canary,
    )
    .await
    {
        Ok(snapshot) => Some(snapshot),
        // A target that is gone, or that cannot be read as a release (a config it uses is
        // gone): not something to hand traffic to.
        Err(e) if e.is_stalled() => None,
        Err(e) => return Err(workload_error("reading the workloads", e)),
    };
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let target_name = canary.spec.target_ref.name.clone();
    let primary_name = workloads::primary_name(&target_name);
    let (target, primary) = match &snapshot {
        Some(s) => (Some(s.target.clone()), s.primary.clone()),
        None => (None, get_deployment(&deployments, &primary_name).await?.map(Arc::new)),
    };
    let live = |d: Option<Arc<Deployment>>| d.filter(|d| d.meta().deletion_timestamp.is_none());
    let view_of = |d: &Deployment, revision: Option<String>| WorkloadView {
        revision,
        replicas: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        ready: workloads::deployment_health(d, 100, deadline, now) == crate::core::WorkloadHealth::Ready,
    };
    let target = live(target);
    let primary = live(primary).filter(|p| workloads::primary::is_this_canarys(canary, p.as_ref()));
    let target_view = target.as_ref().map(|t| view_of(t, snapshot.as_ref().map(|s| s.revision.clone())));
    let primary_view = primary.as_ref().map(|p| view_of(p, None));
    let primary_restorable = match (&snapshot, &primary, &target) {
        (Some(snapshot), None, Some(_)) => {
            let stored = workloads::list_primary_revisions(&ctx.client, canary)
                .await
                .map_err(|e| workload_error("listing the stored primary templates", e))?;
            let source = workloads::missing_primary_source(
                &primary_name,
                revision_of_the_primary(&status),
                &snapshot.revision,
                &stored,
            );
            source.is_ok()
        }
        _ => false,
    };
    let provider = provider_of(canary, &ctx.settings).ok();
    let target_replicas =
        workloads::scale_up_replicas(primary.as_deref(), snapshot.as_ref().and_then(|s| s.target_hpa_min_replicas));
    let deleted_at = canary.meta().deletion_timestamp.as_ref().map(|t| t.0);
    let deadline_passed = deleted_at.is_some_and(|at| {
        let elapsed = jiff_elapsed(at, now);
        elapsed > deadline
    });
    let view = HandoverView {
        revert_on_deletion: canary.spec.revert_on_deletion,
        promoted_revision: status.last_promoted_spec.clone(),
        target: target_view,
        primary: primary_view,
        primary_restorable,
        target_replicas,
        routes: provider
            .map(|p| if p == Provider::Kubernetes { RouteObjects::ApexOnly } else { RouteObjects::Separate }),
        namespace_terminating: namespace_terminating(ctx, &namespace).await,
        deadline_passed,
    };
    let names =
        Names { kind: "Deployment", target: target_name, primary: primary_name, apex: ServiceNames::of(canary).apex };
    Ok(Observed { view, names, snapshot, daemon_set: None, provider })
}

/// What a DaemonSet's view is made of: a DaemonSet has no replica count, so it counts
/// as 1 when it runs pods and 0 when petrel scaled it down by its node selector.
fn daemon_set_view(daemon_set: &DaemonSet, revision: Option<String>, now: chrono::DateTime<Utc>) -> WorkloadView {
    let health = daemonset::daemon_set_health(daemon_set, 100, Duration::MAX, None, now);
    WorkloadView {
        revision,
        replicas: if daemonset::is_scaled_down(daemon_set) { 0 } else { 1 },
        ready: health == crate::core::WorkloadHealth::Ready,
    }
}

/// [`observe`] for a DaemonSet target. Its primary is never rebuilt from history (none
/// is kept for DaemonSets): only from a target that runs the promoted revision.
async fn observe_daemon_set(ctx: &Context, canary: &Canary) -> Result<Observed, Error> {
    let namespace = canary.namespace().ok_or(Error::MissingNamespace)?;
    let status = canary.status.clone().unwrap_or_default();
    let now = Utc::now();
    let snapshot = match daemonset::read_daemon_sets(&ctx.client, &ConfigReads::default(), canary).await {
        Ok(snapshot) => Some(snapshot),
        Err(e) if e.is_stalled() => None,
        Err(e) => return Err(workload_error("reading the DaemonSets", e)),
    };
    let target_name = canary.spec.target_ref.name.clone();
    let primary_name = workloads::primary_name(&target_name);
    let primary = match &snapshot {
        Some(s) => s.primary.clone(),
        None => Api::<DaemonSet>::namespaced(ctx.client.clone(), &namespace)
            .get_opt(&primary_name)
            .await
            .map_err(Error::kube(format!("reading DaemonSet {primary_name}")))?,
    };
    let live = |d: &DaemonSet| d.meta().deletion_timestamp.is_none();
    let target = snapshot.as_ref().map(|s| &s.target).filter(|t| live(t));
    let primary = primary.filter(|p| live(p) && workloads::primary::is_this_canarys(canary, p));
    let target_view = target.map(|t| daemon_set_view(t, snapshot.as_ref().map(|s| s.revision.clone()), now));
    let primary_restorable = primary.is_none()
        && snapshot.as_ref().is_some_and(|s| {
            workloads::missing_primary_source(&primary_name, revision_of_the_primary(&status), &s.revision, &[]).is_ok()
        });
    let provider = provider_of(canary, &ctx.settings).ok();
    let deadline = progress_deadline(&canary.spec);
    let deleted_at = canary.meta().deletion_timestamp.as_ref().map(|t| t.0);
    let view = HandoverView {
        revert_on_deletion: canary.spec.revert_on_deletion,
        promoted_revision: status.last_promoted_spec.clone(),
        target: target_view,
        primary: primary.as_ref().map(|p| daemon_set_view(p, None, now)),
        primary_restorable,
        target_replicas: 1,
        routes: provider
            .map(|p| if p == Provider::Kubernetes { RouteObjects::ApexOnly } else { RouteObjects::Separate }),
        namespace_terminating: namespace_terminating(ctx, &namespace).await,
        deadline_passed: deleted_at.is_some_and(|at| jiff_elapsed(at, now) > deadline),
    };
    let names =
        Names { kind: "DaemonSet", target: target_name, primary: primary_name, apex: ServiceNames::of(canary).apex };
    Ok(Observed { view, names, snapshot: None, daemon_set: snapshot, provider })
}

/// The claims refusal of a deleted Canary (see [`super::claims`]): with its target read,
/// every check the reconcile makes; without it, the claims of older Canaries.
async fn refusal(
    ctx: &Context,
    canary: &Canary,
    snapshot: Option<&WorkloadSnapshot>,
) -> Result<Option<super::claims::Refusal>, Error> {
    match snapshot {
        Some(snapshot) => {
            super::canary::refusal_by_claims(ctx, canary, Some(&snapshot.target), snapshot.primary.as_deref()).await
        }
        None => {
            let neighbours = ctx.canaries.neighbours(&ctx.client, canary, &[]).await?;
            Ok(super::claims::conflict(canary, neighbours.iter().map(AsRef::as_ref), &[]))
        }
    }
}

/// Time from a `metadata.deletionTimestamp` to `now`.
fn jiff_elapsed(at: k8s_openapi::jiff::Timestamp, now: chrono::DateTime<Utc>) -> Duration {
    let now_ms = now.timestamp_millis();
    let at_ms = at.as_millisecond();
    Duration::from_millis(u64::try_from(now_ms.saturating_sub(at_ms)).unwrap_or(0))
}

async fn get_deployment(api: &Api<Deployment>, name: &str) -> Result<Option<Deployment>, Error> {
    api.get_opt(name).await.map_err(Error::kube(format!("reading Deployment {name}")))
}

/// Whether the namespace is being deleted. petrel may not be allowed to read Namespaces
/// (a Role limited to one namespace): then this is false, and the hand-over still ends
/// as the namespace controller deletes the workloads (they count as gone once deleting).
async fn namespace_terminating(ctx: &Context, namespace: &str) -> bool {
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    match api.get_opt(namespace).await {
        Ok(Some(ns)) => {
            ns.meta().deletion_timestamp.is_some()
                || ns.status.and_then(|s| s.phase).is_some_and(|phase| phase == "Terminating")
        }
        Ok(None) => true,
        Err(e) => {
            debug!(error = %e, "cannot read the namespace; relying on the workloads' own deletion");
            false
        }
    }
}

async fn execute(ctx: &Context, canary: &Canary, observed: &Observed, plan: &HandoverPlan) -> Result<(), Error> {
    let router = observed.provider.map(|p| router_with(p, ctx.client.clone(), ctx.caches.router_memory()));
    let status = canary.status.clone().unwrap_or_default();
    for step in &plan.steps {
        match step {
            Step::RebuildPrimary if canary.spec.target_ref.is_daemon_set() => {
                let snapshot = observed.daemon_set.as_ref().ok_or_else(|| Error::Workload {
                    context: "recreating the primary DaemonSet".into(),
                    message: "the target could not be read".into(),
                })?;
                daemonset::initialize(
                    &ctx.client,
                    &ctx.caches.configs,
                    canary,
                    snapshot,
                    revision_of_the_primary(&status),
                )
                .await
                .map_err(|e| workload_error("recreating the primary DaemonSet", e))?;
            }
            Step::RebuildPrimary => {
                let snapshot = observed.snapshot.as_ref().ok_or_else(|| Error::Workload {
                    context: "rebuilding the primary".into(),
                    message: "the target could not be read".into(),
                })?;
                let promoted = revision_of_the_primary(&status);
                workloads::restore_missing_primary(&ctx.client, canary, snapshot, promoted)
                    .await
                    .map_err(|e| workload_error("rebuilding the primary", e))?;
                workloads::initialize_primary(
                    &ctx.client,
                    &ctx.caches.deployments,
                    &ctx.caches.configs,
                    canary,
                    snapshot,
                )
                .await
                .map_err(|e| workload_error("rebuilding the primary", e))?;
            }
            Step::RouteAllTo(side) => {
                let weights = match side {
                    Side::Primary => Weights::primary_only(),
                    Side::Target => Weights::canary_only(),
                };
                if let Some(router) = &router {
                    router
                        .set_routes(canary, weights)
                        .await
                        .map_err(router_error(&format!("setting routes to {weights}")))?;
                }
            }
            Step::ScaleTarget(replicas) if canary.spec.target_ref.is_daemon_set() => {
                let namespace = canary.namespace().ok_or(Error::MissingNamespace)?;
                daemonset::scale(&ctx.client, &namespace, &canary.spec.target_ref.name, *replicas == 0)
                    .await
                    .map_err(|e| workload_error("scaling the target DaemonSet", e))?;
            }
            Step::ScaleTarget(replicas) => {
                let namespace = canary.namespace().ok_or(Error::MissingNamespace)?;
                let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
                // The target's KEDA ScaledObject, paused while the target was at zero, scales
                // it again once the Canary is gone (Flagger's finalizer does the same).
                if *replicas > 0 {
                    workloads::keda::set_target_paused(&ctx.client, canary, false)
                        .await
                        .map_err(|e| workload_error("resuming the target's ScaledObject", e))?;
                }
                let scaled = workloads::scale_target(&api, &canary.spec.target_ref.name, *replicas)
                    .await
                    .map_err(|e| workload_error("scaling the target", e))?;
                ctx.caches.deployments.wrote(&scaled);
            }
            Step::KeepApexOnTarget => {
                let pods = services::target_pods(&ctx.client, &ctx.caches.router_memory(), canary)
                    .await
                    .map_err(router_error("reading the target's selector and ports"))?;
                let apex = services::build_apex_service(canary, &pods, ApexTarget::Canary)
                    .map_err(router_error("building the apex Service"))?;
                services::apply_service(&ctx.client, &ctx.caches.router_memory(), &handover::released(apex))
                    .await
                    .map_err(router_error("pointing the apex Service at the target"))?;
            }
            Step::RemoveRoutes => {
                if let Some(router) = &router {
                    router.finalize(canary).await.map_err(router_error("removing the route objects"))?;
                }
            }
            Step::ReleaseOwned => {
                let released = handover::release_owned(&ctx.client, canary, &handover::owned_kinds())
                    .await
                    .map_err(|e| workload_error("releasing the generated objects", e))?;
                info!(canary = %canary.name_any(), ?released, "released from the deleted Canary");
            }
        }
    }
    Ok(())
}

// The hand-over's own errors are never `Error::Refused` (which would stall the Canary):
// a deleted Canary retries its hand-over until the deadline, then lets go.
fn workload_error(context: &str, e: WorkloadError) -> Error {
    Error::Workload { context: context.to_string(), message: e.to_string() }
}

fn router_error(context: &str) -> impl FnOnce(RouterError) -> Error {
    let context = context.to_string();
    move |e| Error::Router { context, message: e.to_string() }
}

/// A reason and message to stall the Canary with.
pub(super) struct Stall {
    pub reason: &'static str,
    pub message: String,
}

/// The revision the primary runs or is being given: the one being promoted once the
/// analysis passed (it is stored before it is written), else the last promoted one.
pub(super) fn revision_of_the_primary(status: &CanaryStatus) -> Option<&str> {
    match status.phase {
        Phase::Promoting | Phase::Finalising => status.last_applied_spec.as_deref(),
        _ => status.last_promoted_spec.as_deref(),
    }
    .or(status.last_promoted_spec.as_deref())
}

/// Rebuilds a deleted primary from the promoted template (defect 4). `Some`: it cannot
/// be rebuilt without the canary's template, and the Canary stalls instead.
pub(super) async fn restore_primary(
    ctx: &Context,
    canary: &Canary,
    snapshot: &WorkloadSnapshot,
    status: &CanaryStatus,
) -> Result<Option<Stall>, Error> {
    match workloads::restore_missing_primary(&ctx.client, canary, snapshot, revision_of_the_primary(status)).await {
        Ok(Some(message)) => {
            ctx.events.publish(canary, "PrimaryRestored", &message, true);
            Ok(None)
        }
        Ok(None) => Ok(None),
        Err(e) if e.is_stalled() => Ok(Some(Stall { reason: "PrimaryNotRestorable", message: e.to_string() })),
        Err(e) => Err(super::canary::workload_error("restoring the primary", e)),
    }
}

/// The provider string a Canary routes with (its own, or the operator's default), as
/// recorded in `status.routedBy`.
pub(super) fn provider_name(canary: &Canary, ctx: &Context) -> String {
    canary.spec.provider.clone().unwrap_or_else(|| ctx.settings.default_provider.clone())
}

/// Whether two providers use the same router (and so the same route objects).
fn same_router(a: Provider, b: Provider) -> bool {
    let router = |p: Provider| match p {
        Provider::Linkerd | Provider::Smi => Provider::Smi,
        other => other,
    };
    router(a) == router(b)
}

/// Before the router of `provider` writes anything (defect 10): when another provider's
/// router last wrote this Canary's routes (`status.routedBy`), its route objects are
/// removed, so no stale split (say 80/20 to a canary scaled to zero later) is left behind.
/// A failure stops the reconcile (retried), so the new routes wait for it; a previous
/// router that cannot even name its objects from this spec (say `ingressRef` removed
/// with nginx) gets a Warning Event and is left.
pub(super) async fn retire_previous_router(
    ctx: &Context,
    canary: &Canary,
    status: &CanaryStatus,
    provider: Provider,
) -> Result<(), Error> {
    let Some(previous_name) = status.routed_by.as_deref() else {
        return Ok(());
    };
    let Ok(previous) = Provider::parse(previous_name) else {
        return Ok(());
    };
    if same_router(previous, provider) {
        return Ok(());
    }
    // The previous router names its objects from the spec it wrote them with.
    let mut as_written = canary.clone();
    as_written.spec.provider = Some(previous_name.to_string());
    let router = router_with(previous, ctx.client.clone(), ctx.caches.router_memory());
    match router.finalize(&as_written).await {
        Ok(()) => {
            let message = format!(
                "spec.provider changed from {previous_name} to {provider}: the {previous_name} routes were removed before the {provider} routes are written"
            );
            ctx.events.publish(canary, "ProviderChanged", &message, false);
            Ok(())
        }
        Err(e @ RouterError::InvalidCanary { .. }) => {
            let message = format!(
                "spec.provider changed from {previous_name} to {provider}, but the {previous_name} routes cannot be found from this spec ({e}); remove them by hand"
            );
            ctx.events.publish(canary, "PreviousRoutesLeft", &message, true);
            Ok(())
        }
        Err(e) => {
            Err(super::canary::router_error(format!("removing the routes of the previous provider {previous_name}"), e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canary(finalizers: &[&str]) -> Canary {
        let mut canary = crate::workloads::test_support::canary("podinfo");
        canary.metadata.resource_version = Some("7".into());
        canary.metadata.finalizers = Some(finalizers.iter().map(|f| f.to_string()).collect());
        canary
    }

    #[test]
    fn finalizer_patches_keep_the_others_and_are_conditional() {
        let added = add_finalizer_patch(&canary(&["other"]));
        assert_eq!(added["metadata"]["finalizers"], serde_json::json!(["other", FINALIZER]));
        assert_eq!(added["metadata"]["resourceVersion"], "7");
        let removed = remove_finalizer_patch(&canary(&["a", FINALIZER, "b"])).unwrap();
        assert_eq!(removed["metadata"]["finalizers"], serde_json::json!(["a", "b"]));
        assert_eq!(removed["metadata"]["resourceVersion"], "7");
        assert_eq!(remove_finalizer_patch(&canary(&["a"])), None);
    }

    #[test]
    fn linkerd_and_smi_share_a_router() {
        assert!(same_router(Provider::Linkerd, Provider::Smi));
        assert!(same_router(Provider::GatewayApi, Provider::GatewayApi));
        assert!(!same_router(Provider::GatewayApi, Provider::Istio));
        assert!(!same_router(Provider::Kubernetes, Provider::Nginx));
    }
}
