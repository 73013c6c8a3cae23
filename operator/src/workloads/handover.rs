//! What a deleted Canary leaves traffic on (DESIGN rule 10: traffic always ends on
//! analysed pods, never on nothing).
//!
//! A Canary carries the finalizer [`FINALIZER`]. When it is deleted, petrel hands the app
//! over before the garbage collector removes what the Canary owns, in one of two ways:
//!
//! - **keep the primary** (the default, and whenever the target runs a version that never
//!   passed analysis): all traffic to the primary, the target scaled to zero, and every
//!   object the Canary owns (the primary, its autoscaler and config copies, the Services,
//!   the route objects) released from it, so they outlive it and keep serving the
//!   promoted version. Nothing of the user's Deployment template is touched, so nothing
//!   fights the GitOps tool that owns it. A Canary created again with the same name adopts
//!   them.
//! - **back to the target** (`revertOnDeletion: true`, Flagger's revert, when the target
//!   runs the promoted revision; and before anything was promoted, when the target is the
//!   only version): the target is scaled to the primary's replicas, and once it is ready
//!   the routes and the apex Service point at it. The apex Service (what clients call) is
//!   released and stays; the rest goes with the Canary.
//!
//! The plan is a pure function of what was observed ([`plan`]); the finalizer re-plans on
//! every reconcile, so every step is idempotent. Waiting for the target is bounded by a
//! deadline, after which the primary is kept instead; a namespace being deleted releases
//! the Canary at once.

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Client, Resource};

use super::{FIELD_MANAGER, WorkloadError, canary_namespace, is_not_found};
use crate::api::Canary;

/// The finalizer petrel puts on every Canary.
pub const FINALIZER: &str = "petrel.dev/handover";

/// A workload as the finalizer sees it; absent (`None` in [`HandoverView`]) when it does
/// not exist or is being deleted itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadView {
    /// The petrel revision it runs (for the target: its template and tracked configs;
    /// `None` when that cannot be computed, e.g. a config it needs is gone).
    pub revision: Option<String>,
    /// `spec.replicas`.
    pub replicas: i32,
    /// Ready under a 100% threshold.
    pub ready: bool,
}

/// Everything the hand-over depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandoverView {
    pub revert_on_deletion: bool,
    /// `status.lastPromotedSpec`: `None` while nothing was promoted (initialisation).
    pub promoted_revision: Option<String>,
    pub target: Option<WorkloadView>,
    /// This Canary's primary (owned by it, or left behind by a deleted Canary of its name):
    /// another Canary's is none of its business.
    pub primary: Option<WorkloadView>,
    /// A missing primary can be rebuilt from the promoted template.
    pub primary_restorable: bool,
    /// Replicas the target needs to carry the primary's traffic.
    pub target_replicas: i32,
    /// The router writes route objects besides the Services (every provider but
    /// `kubernetes`); `None`: the provider is unknown, so routes cannot be written.
    pub routes: Option<RouteObjects>,
    pub namespace_terminating: bool,
    /// The deadline for handing over (deletion + `progressDeadlineSeconds`) has passed.
    pub deadline_passed: bool,
}

/// What the Canary's router writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteObjects {
    /// Route objects (VirtualService, HTTPRoute, ...) besides the Services.
    Separate,
    /// The apex Service is the route (provider `kubernetes`).
    ApexOnly,
}

/// Which workload ends up with the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Primary,
    Target,
}

/// One idempotent step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Rebuild the missing primary from the promoted template.
    RebuildPrimary,
    /// Route all traffic to one side.
    RouteAllTo(Side),
    /// Set the target's replicas.
    ScaleTarget(i32),
    /// Point the apex Service at the target's pods and release it, so it stays.
    KeepApexOnTarget,
    /// Delete the route objects (the mesh then routes by the apex Service).
    RemoveRoutes,
    /// Release every object the Canary owns (except its history) so it outlives it.
    ReleaseOwned,
}

/// What to do after the steps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Then {
    /// Look again shortly (waiting for the target's pods).
    Wait(String),
    /// Remove the finalizer; the Event says where traffic ends.
    Release { reason: &'static str, message: String, warning: bool },
}

/// The hand-over's next steps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandoverPlan {
    pub steps: Vec<Step>,
    pub then: Then,
}

/// Names used in the messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// The workload kind of the target and primary: Deployment or DaemonSet.
    pub kind: &'static str,
    pub target: String,
    pub primary: String,
    pub apex: String,
}

fn short(revision: Option<&str>) -> &str {
    revision.map_or("?", |r| r.get(..8).unwrap_or(r))
}

/// Decides the hand-over of a deleted Canary.
pub fn plan(view: &HandoverView, names: &Names) -> HandoverPlan {
    let kind = names.kind;
    if view.namespace_terminating {
        return HandoverPlan {
            steps: vec![],
            then: Then::Release {
                reason: "Released",
                message: "the namespace is being deleted: nothing to hand traffic to".into(),
                warning: false,
            },
        };
    }
    let promoted = view.promoted_revision.as_deref();
    if promoted.is_none() && view.primary.is_none() {
        return HandoverPlan {
            steps: vec![],
            then: Then::Release {
                reason: "Released",
                message: format!(
                    "Canary deleted before petrel took any traffic over (no {kind} {}): nothing to hand back",
                    names.primary
                ),
                warning: false,
            },
        };
    }
    let target_runs_promoted = |t: &WorkloadView| promoted.is_some() && t.revision.as_deref() == promoted;
    let to_target =
        view.target.as_ref().filter(|t| promoted.is_none() || (view.revert_on_deletion && target_runs_promoted(t)));
    if let Some(target) = to_target {
        let scaled = target.replicas == view.target_replicas;
        if scaled && target.ready {
            return hand_to_target(view, names, promoted);
        }
        if view.deadline_passed {
            let why = format!(
                "{kind} {} was not ready with {} replicas within progressDeadlineSeconds of the deletion",
                names.target, view.target_replicas
            );
            return keep_primary(view, names, Some(why));
        }
        let steps = if scaled { vec![] } else { vec![Step::ScaleTarget(view.target_replicas)] };
        return wait(steps, format!("waiting for {kind} {} to be ready", names.target));
    }
    let why = match (&view.target, view.revert_on_deletion) {
        (Some(target), true) => Some(format!(
            "revertOnDeletion: {kind} {} runs revision {}, which never passed analysis (the promoted one is {})",
            names.target,
            short(target.revision.as_deref()),
            short(promoted)
        )),
        (None, true) => Some(format!("revertOnDeletion: {kind} {} is gone", names.target)),
        (_, false) => None,
    };
    keep_primary(view, names, why)
}

fn wait(steps: Vec<Step>, why: String) -> HandoverPlan {
    HandoverPlan { steps, then: Then::Wait(why) }
}

fn hand_to_target(view: &HandoverView, names: &Names, promoted: Option<&str>) -> HandoverPlan {
    let kind = names.kind;
    let mut steps = Vec::new();
    if view.routes.is_some() {
        steps.push(Step::RouteAllTo(Side::Target));
    }
    steps.push(Step::KeepApexOnTarget);
    if view.routes == Some(RouteObjects::Separate) {
        steps.push(Step::RemoveRoutes);
    }
    let version = match promoted {
        Some(revision) => format!("the promoted revision {}", short(Some(revision))),
        None => "the only version (nothing was promoted yet)".to_string(),
    };
    HandoverPlan {
        steps,
        then: Then::Release {
            reason: "Reverted",
            message: format!(
                "Canary deleted: all traffic handed back to {kind} {} ({version}, {} ready replicas) through Service {}, which stays; petrel's generated objects go with the Canary",
                names.target, view.target_replicas, names.apex
            ),
            warning: false,
        },
    }
}

fn keep_primary(view: &HandoverView, names: &Names, revert_skipped: Option<String>) -> HandoverPlan {
    let kind = names.kind;
    let can_keep = view.primary.is_some() || view.primary_restorable;
    if !can_keep {
        return HandoverPlan {
            steps: vec![],
            then: Then::Release {
                reason: "HandoverImpossible",
                message: format!(
                    "Canary deleted, but neither {kind} {} (missing, or not the promoted version) nor a promoted {kind} {} can take the traffic; nothing was changed",
                    names.target, names.primary
                ),
                warning: true,
            },
        };
    }
    let mut steps = Vec::new();
    if view.primary.is_none() {
        steps.push(Step::RebuildPrimary);
    }
    if view.routes.is_some() {
        steps.push(Step::RouteAllTo(Side::Primary));
    }
    if view.target.as_ref().is_some_and(|t| t.replicas > 0) {
        steps.push(Step::ScaleTarget(0));
    }
    steps.push(Step::ReleaseOwned);
    let kept = format!(
        "all traffic stays on {kind} {} (revision {}); it, its Services and routes are released from the Canary and keep serving (delete them when you no longer need them, or apply the Canary again to adopt them)",
        names.primary,
        short(view.promoted_revision.as_deref())
    );
    let then = match revert_skipped {
        Some(why) => Then::Release {
            reason: "RevertSkipped",
            message: format!("Canary deleted; not reverted to the target: {why}. Instead {kept}"),
            warning: true,
        },
        None => Then::Release { reason: "Released", message: format!("Canary deleted: {kept}"), warning: false },
    };
    HandoverPlan { steps, then }
}

// ---------------------------------------------------------------------------------------
// I/O

/// The merge patch that releases an object from the Canary with uid `uid`: its owner
/// references without that one, conditional on the resourceVersion it was read at.
/// `None` when the Canary does not own it.
pub fn release_patch(meta: &kube::core::ObjectMeta, uid: &str) -> Option<serde_json::Value> {
    let owners = meta.owner_references.clone().unwrap_or_default();
    let kept: Vec<_> = owners.iter().filter(|owner| owner.uid != uid).cloned().collect();
    if kept.len() == owners.len() {
        return None;
    }
    let kept = if kept.is_empty() { serde_json::Value::Null } else { serde_json::json!(kept) };
    Some(serde_json::json!({ "metadata": { "ownerReferences": kept, "resourceVersion": meta.resource_version } }))
}

/// The kinds a Canary can own (what the workloads and routers generate), except its
/// ControllerRevisions, which are history rather than serving objects.
pub fn owned_kinds() -> Vec<ApiResource> {
    use k8s_openapi::api::{apps, autoscaling, core, networking};
    let mut kinds = vec![
        ApiResource::erase::<apps::v1::Deployment>(&()),
        ApiResource::erase::<apps::v1::DaemonSet>(&()),
        ApiResource::erase::<autoscaling::v2::HorizontalPodAutoscaler>(&()),
        ApiResource::erase::<core::v1::ConfigMap>(&()),
        ApiResource::erase::<core::v1::Secret>(&()),
        ApiResource::erase::<core::v1::Service>(&()),
        ApiResource::erase::<networking::v1::Ingress>(&()),
    ];
    // One version of each kind: an object served in two versions (HTTPRoute v1 and
    // v1beta1) is one object, and releasing it twice at once would conflict with itself.
    for kind in crate::routers::third_party_resources() {
        if !kinds.iter().any(|k| k.group == kind.group && k.kind == kind.kind) {
            kinds.push(kind);
        }
    }
    kinds
}

/// Releases every object of `kinds` the Canary owns, so the garbage collector leaves it
/// when the Canary goes. Reads metadata only (no Secret data). A kind the API server does
/// not serve (a mesh not installed) is skipped. Returns `Kind/name` of what was released.
pub async fn release_owned(
    client: &Client,
    canary: &Canary,
    kinds: &[ApiResource],
) -> Result<Vec<String>, WorkloadError> {
    let namespace = canary_namespace(canary)?;
    let uid = canary.meta().uid.clone().ok_or(WorkloadError::CanaryIdentity { field: "uid" })?;
    // One kind after another would take seconds on a busy API server; they are independent.
    let per_kind = kinds.iter().map(|kind| release_owned_of_kind(client, &namespace, &uid, kind));
    let released = futures::future::try_join_all(per_kind).await?;
    Ok(released.into_iter().flatten().collect())
}

async fn release_owned_of_kind(
    client: &Client,
    namespace: &str,
    uid: &str,
    kind: &ApiResource,
) -> Result<Vec<String>, WorkloadError> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, kind);
    let objects = match api.list_metadata(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(e) if is_not_found(&e) => return Ok(Vec::new()),
        Err(e) => return Err(WorkloadError::kube(format!("listing {} in {namespace}", kind.plural), e)),
    };
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_string()), ..Default::default() };
    let mut released = Vec::new();
    for object in objects {
        let Some(patch) = release_patch(&object.metadata, uid) else { continue };
        let name = object.metadata.name.clone().unwrap_or_default();
        match api.patch(&name, &params, &Patch::Merge(&patch)).await {
            Ok(_) => released.push(format!("{}/{name}", kind.kind)),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(WorkloadError::kube(format!("releasing {} {namespace}/{name}", kind.kind), e)),
        }
    }
    Ok(released)
}

/// A Service petrel applies without owner references: server-side apply then drops the
/// owner reference petrel set before, and the Service outlives the Canary.
pub fn released(service: Service) -> Service {
    let mut service = service;
    service.metadata.owner_references = None;
    service
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use proptest::prelude::*;

    fn names() -> Names {
        Names {
            kind: "Deployment",
            target: "podinfo".into(),
            primary: "podinfo-primary".into(),
            apex: "podinfo".into(),
        }
    }

    fn workload(revision: &str, replicas: i32, ready: bool) -> WorkloadView {
        WorkloadView { revision: Some(revision.into()), replicas, ready }
    }

    /// Mid-release: the target runs the unanalysed revision `new` at 2 replicas.
    fn mid_release(revert: bool) -> HandoverView {
        HandoverView {
            revert_on_deletion: revert,
            promoted_revision: Some("old".into()),
            target: Some(workload("new", 2, true)),
            primary: Some(workload("old", 2, true)),
            primary_restorable: true,
            target_replicas: 2,
            routes: Some(RouteObjects::Separate),
            namespace_terminating: false,
            deadline_passed: false,
        }
    }

    /// After a promotion: the target runs the promoted revision, scaled to zero.
    fn promoted(revert: bool) -> HandoverView {
        HandoverView { target: Some(workload("old", 0, true)), ..mid_release(revert) }
    }

    fn released(plan: &HandoverPlan) -> Option<&'static str> {
        match plan.then {
            Then::Release { reason, .. } => Some(reason),
            Then::Wait(_) => None,
        }
    }

    #[test]
    fn by_default_the_primary_keeps_serving_and_is_released() {
        let plan = plan(&mid_release(false), &names());
        assert_eq!(plan.steps, vec![Step::RouteAllTo(Side::Primary), Step::ScaleTarget(0), Step::ReleaseOwned],);
        assert_eq!(released(&plan), Some("Released"));
        // After a promotion the target is at zero already.
        let plan = super::plan(&promoted(false), &names());
        assert_eq!(plan.steps, vec![Step::RouteAllTo(Side::Primary), Step::ReleaseOwned]);
    }

    #[test]
    fn revert_scales_the_target_waits_for_it_then_points_everything_at_it() {
        let mut view = promoted(true);
        let first = plan(&view, &names());
        assert_eq!(first.steps, vec![Step::ScaleTarget(2)]);
        assert!(matches!(first.then, Then::Wait(_)));
        view.target = Some(workload("old", 2, false));
        let waiting = plan(&view, &names());
        assert!(waiting.steps.is_empty() && matches!(waiting.then, Then::Wait(_)), "{waiting:?}");
        view.target = Some(workload("old", 2, true));
        let done = plan(&view, &names());
        assert_eq!(done.steps, vec![Step::RouteAllTo(Side::Target), Step::KeepApexOnTarget, Step::RemoveRoutes]);
        assert_eq!(released(&done), Some("Reverted"));
        // With the kubernetes provider the apex Service is the route.
        view.routes = Some(RouteObjects::ApexOnly);
        assert_eq!(plan(&view, &names()).steps, vec![Step::RouteAllTo(Side::Target), Step::KeepApexOnTarget]);
    }

    #[test]
    fn revert_never_hands_traffic_to_an_unanalysed_target() {
        let plan = plan(&mid_release(true), &names());
        assert_eq!(plan.steps, vec![Step::RouteAllTo(Side::Primary), Step::ScaleTarget(0), Step::ReleaseOwned]);
        let Then::Release { reason, message, warning } = &plan.then else { panic!("{plan:?}") };
        assert_eq!((*reason, *warning), ("RevertSkipped", true));
        assert!(message.contains("never passed analysis"), "{message}");
    }

    #[test]
    fn a_target_not_ready_by_the_deadline_leaves_traffic_on_the_primary() {
        let mut view = promoted(true);
        view.target = Some(workload("old", 2, false));
        view.deadline_passed = true;
        let plan = plan(&view, &names());
        assert_eq!(plan.steps, vec![Step::RouteAllTo(Side::Primary), Step::ScaleTarget(0), Step::ReleaseOwned]);
        assert_eq!(released(&plan), Some("RevertSkipped"));
    }

    #[test]
    fn a_missing_primary_is_rebuilt_first_or_nothing_is_touched() {
        let mut view = mid_release(false);
        view.primary = None;
        assert_eq!(plan(&view, &names()).steps[0], Step::RebuildPrimary);
        view.primary_restorable = false;
        let plan = plan(&view, &names());
        assert!(plan.steps.is_empty(), "{plan:?}");
        assert_eq!(released(&plan), Some("HandoverImpossible"));
    }

    #[test]
    fn before_any_promotion_the_target_is_the_only_version() {
        let view =
            HandoverView { promoted_revision: None, target: Some(workload("first", 0, false)), ..mid_release(false) };
        assert_eq!(plan(&view, &names()).steps, vec![Step::ScaleTarget(2)]);
        // A Canary whose target never existed, or that was refused before it created a
        // primary (say it named another Canary's primary as target), goes at once and
        // touches nothing.
        for target in [None, Some(workload("other", 3, true))] {
            let nothing = HandoverView { target, primary: None, primary_restorable: false, ..view.clone() };
            let plan = plan(&nothing, &names());
            assert!(plan.steps.is_empty(), "{plan:?}");
            assert_eq!(released(&plan), Some("Released"));
        }
    }

    #[test]
    fn a_namespace_being_deleted_releases_at_once() {
        let view = HandoverView { namespace_terminating: true, ..promoted(true) };
        let plan = plan(&view, &names());
        assert!(plan.steps.is_empty());
        assert_eq!(released(&plan), Some("Released"));
    }

    fn any_view() -> impl Strategy<Value = HandoverView> {
        let workload = (prop::option::of(prop::sample::select(vec!["old", "new"])), 0..3i32, any::<bool>()).prop_map(
            |(revision, replicas, ready)| WorkloadView { revision: revision.map(str::to_string), replicas, ready },
        );
        let routes = prop::option::of(prop::sample::select(vec![RouteObjects::Separate, RouteObjects::ApexOnly]));
        (
            (any::<bool>(), prop::option::of(Just("old".to_string())), prop::option::of(workload.clone())),
            (prop::option::of(workload), any::<bool>(), 1..3i32, routes),
            (any::<bool>(), any::<bool>()),
        )
            .prop_map(
                |((revert, promoted, target), (primary, restorable, replicas, routes), (terminating, late))| {
                    HandoverView {
                        revert_on_deletion: revert,
                        promoted_revision: promoted,
                        target,
                        primary,
                        primary_restorable: restorable,
                        target_replicas: replicas,
                        routes,
                        namespace_terminating: terminating,
                        deadline_passed: late,
                    }
                },
            )
    }

    proptest! {
        /// DESIGN rule 10, whatever was observed: traffic is only ever routed to the target
        /// when it is ready and runs the promoted revision (or nothing was promoted), it is
        /// only routed to a primary that exists or is rebuilt first, and past the deadline
        /// the finalizer never waits.
        #[test]
        fn traffic_only_goes_to_analysed_ready_pods(view in any_view()) {
            let plan = plan(&view, &names());
            for (index, step) in plan.steps.iter().enumerate() {
                match step {
                    Step::RouteAllTo(Side::Target) | Step::KeepApexOnTarget => {
                        let target = view.target.as_ref().expect("routes to a target that exists");
                        prop_assert!(target.ready && target.replicas == view.target_replicas);
                        let promoted = view.promoted_revision.is_none() || target.revision == view.promoted_revision;
                        prop_assert!(promoted, "unanalysed target gets traffic: {view:?}");
                    }
                    Step::RouteAllTo(Side::Primary) => {
                        prop_assert!(view.primary.is_some() || plan.steps[..index].contains(&Step::RebuildPrimary));
                    }
                    Step::RebuildPrimary => prop_assert!(view.primary_restorable),
                    _ => {}
                }
            }
            if view.deadline_passed {
                prop_assert!(matches!(plan.then, Then::Release { .. }), "waits past the deadline: {view:?}");
            }
        }
    }

    #[test]
    fn release_patch_drops_only_the_canarys_reference_and_is_conditional() {
        let reference = |uid: &str| OwnerReference { uid: uid.into(), kind: "Canary".into(), ..Default::default() };
        let mut meta = kube::core::ObjectMeta {
            owner_references: Some(vec![reference("mine"), reference("theirs")]),
            resource_version: Some("42".into()),
            ..Default::default()
        };
        let patch = release_patch(&meta, "mine").unwrap();
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        assert_eq!(patch["metadata"]["ownerReferences"].as_array().unwrap().len(), 1);
        assert_eq!(patch["metadata"]["ownerReferences"][0]["uid"], "theirs");
        assert_eq!(release_patch(&meta, "nobody"), None);
        meta.owner_references = Some(vec![reference("mine")]);
        assert_eq!(release_patch(&meta, "mine").unwrap()["metadata"]["ownerReferences"], serde_json::Value::Null);
    }

    #[tokio::test]
    async fn release_owned_drops_only_this_canarys_owner_references() {
        use crate::workloads::fake_api::FakeApi;
        use serde_json::json;
        let owner = |uid: &str| json!({"apiVersion": "petrel.dev/v1alpha1", "kind": "Canary", "name": "x", "uid": uid});
        let object = |kind: &str, name: &str, owners: serde_json::Value| {
            json!({"apiVersion": "v1", "kind": kind,
                   "metadata": {"name": name, "namespace": "apps", "resourceVersion": "3", "ownerReferences": owners}})
        };
        let fake = FakeApi::new();
        fake.insert(
            "/api/v1/namespaces/apps/services/podinfo",
            object("Service", "podinfo", json!([owner("c0ffee-uid")])),
        );
        fake.insert("/api/v1/namespaces/apps/services/other", object("Service", "other", json!([owner("someone")])));
        fake.insert(
            "/api/v1/namespaces/apps/configmaps/shared",
            object("ConfigMap", "shared", json!([owner("someone"), owner("c0ffee-uid")])),
        );
        let canary = crate::workloads::test_support::canary("podinfo");
        let kinds = [
            ApiResource::erase::<Service>(&()),
            ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&()),
            ApiResource::erase::<k8s_openapi::api::apps::v1::Deployment>(&()),
        ];
        let mut released = release_owned(&fake.client(), &canary, &kinds).await.unwrap();
        released.sort();
        assert_eq!(released, vec!["ConfigMap/shared", "Service/podinfo"]);
        let service = fake.get("/api/v1/namespaces/apps/services/podinfo").unwrap();
        assert_eq!(service["metadata"]["ownerReferences"], serde_json::Value::Null);
        let shared = fake.get("/api/v1/namespaces/apps/configmaps/shared").unwrap();
        assert_eq!(shared["metadata"]["ownerReferences"], json!([owner("someone")]));
        let other = fake.get("/api/v1/namespaces/apps/services/other").unwrap();
        assert_eq!(other["metadata"]["ownerReferences"], json!([owner("someone")]));
        assert!(fake.writes().iter().all(|w| !w.contains("/other")), "{:?}", fake.writes());
    }

    #[test]
    fn every_kind_petrel_generates_is_released() {
        let kinds: Vec<String> = owned_kinds().iter().map(|k| k.kind.clone()).collect();
        for kind in ["Deployment", "HorizontalPodAutoscaler", "ConfigMap", "Secret", "Service", "Ingress", "HTTPRoute"]
        {
            assert!(kinds.iter().any(|k| k == kind), "{kind} missing from {kinds:?}");
        }
        assert!(!kinds.iter().any(|k| k == "ControllerRevision"), "history goes with the Canary");
        let mut distinct: Vec<(String, String)> =
            owned_kinds().iter().map(|k| (k.group.clone(), k.kind.clone())).collect();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), kinds.len(), "one version of each kind: {kinds:?}");
    }
}
