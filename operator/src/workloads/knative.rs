//! A Knative Service target (`targetRef` kind `Service`, serving.knative.dev/v1).
//!
//! Knative keeps every revision of the Service's template, so petrel copies nothing: the
//! primary is the revision the Service's annotation [`PRIMARY_REVISION_ANNOTATION`] names,
//! the canary is the revision Knative created last (`status.latestCreatedRevisionName`),
//! which is also the Canary's revision (a new template is a new Knative revision). Knative
//! scales revisions by their traffic, so scaling the canary up or down does nothing;
//! promotion moves the annotation to the analysed revision. The traffic split itself is
//! the `knative` router's.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use super::revision::release_identity;
use super::{FIELD_MANAGER, WorkloadError, canary_namespace, is_not_found};
use crate::api::Canary;
use crate::core::WorkloadHealth;
pub use crate::routers::knative::PRIMARY_REVISION_ANNOTATION;
use crate::routers::knative::{revision_resource, service_resource};

/// How ready a revision is, per its `Ready` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RevisionState {
    Ready,
    /// `Ready` is Unknown or absent: Knative is still bringing it up.
    Pending(String),
    /// `Ready` is False: Knative gave up on it (image missing, crash loop...).
    Failed(String),
    /// No such Revision.
    Missing,
}

/// A Knative Service target as read at the start of a reconcile.
#[derive(Clone, Debug, PartialEq)]
pub struct KnativeSnapshot {
    pub namespace: String,
    /// The Knative Service's name.
    pub name: String,
    /// `status.latestCreatedRevisionName`: the canary, and the Canary's revision.
    pub latest_created: String,
    /// The images of the Service's template.
    pub release: String,
    /// The revision the primary annotation names, once initialised.
    pub primary_revision: Option<String>,
    pub canary_state: RevisionState,
    pub primary_state: RevisionState,
}

/// The state a Revision's conditions report.
pub fn revision_state(revision: Option<&Value>) -> RevisionState {
    let Some(revision) = revision else { return RevisionState::Missing };
    let ready = revision
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|conditions| conditions.iter().find(|c| c.get("type").and_then(Value::as_str) == Some("Ready")));
    let message = |c: &Value| {
        let reason = c.get("reason").and_then(Value::as_str).unwrap_or_default();
        let message = c.get("message").and_then(Value::as_str).unwrap_or_default();
        format!("{reason} {message}").trim().to_string()
    };
    match ready.and_then(|c| c.get("status").and_then(Value::as_str).map(|s| (s, c))) {
        Some(("True", _)) => RevisionState::Ready,
        Some(("False", c)) => RevisionState::Failed(message(c)),
        Some((_, c)) => RevisionState::Pending(message(c)),
        None => RevisionState::Pending("no Ready condition yet".into()),
    }
}

/// The snapshot of a Knative Service and the revisions it names (keyed by name).
pub fn snapshot_of(service: &Value, revisions: &BTreeMap<String, Value>) -> Result<KnativeSnapshot, WorkloadError> {
    let field = |pointer: &str| service.pointer(pointer).and_then(Value::as_str).map(String::from);
    let namespace = field("/metadata/namespace").unwrap_or_default();
    let name = field("/metadata/name").unwrap_or_default();
    let latest_created = field("/status/latestCreatedRevisionName")
        .ok_or_else(|| WorkloadError::KnativeNotReconciled { namespace: namespace.clone(), name: name.clone() })?;
    let template: PodTemplateSpec =
        serde_json::from_value(service.pointer("/spec/template").cloned().unwrap_or(Value::Null)).unwrap_or_default();
    let primary_revision = crate::routers::knative::primary_revision_of(service).map(String::from);
    let state_of = |revision: &str| revision_state(revisions.get(revision));
    Ok(KnativeSnapshot {
        canary_state: state_of(&latest_created),
        primary_state: primary_revision.as_deref().map(state_of).unwrap_or(RevisionState::Missing),
        release: release_identity(&template),
        primary_revision,
        latest_created,
        namespace,
        name,
    })
}

fn health(state: &RevisionState, what: &str) -> WorkloadHealth {
    match state {
        RevisionState::Ready => WorkloadHealth::Ready,
        RevisionState::Pending(why) => WorkloadHealth::NotReady { reason: format!("{what} is not ready yet: {why}") },
        RevisionState::Failed(why) => WorkloadHealth::DeadlineExceeded { reason: format!("{what} failed: {why}") },
        RevisionState::Missing => WorkloadHealth::NotReady { reason: format!("{what} does not exist (yet)") },
    }
}

impl KnativeSnapshot {
    /// The canary: the latest created revision. (A template Knative has not turned into
    /// a revision yet is not the canary yet: it becomes a new revision when Knative makes
    /// it, and that status change wakes the Canary up.)
    pub fn canary_health(&self) -> WorkloadHealth {
        health(&self.canary_state, &format!("Knative revision {}", self.latest_created))
    }

    /// The primary: the revision the annotation names.
    pub fn primary_health(&self) -> WorkloadHealth {
        match &self.primary_revision {
            None => WorkloadHealth::NotReady {
                reason: format!("Knative Service {} has no {PRIMARY_REVISION_ANNOTATION} yet", self.name),
            },
            Some(revision) => health(&self.primary_state, &format!("primary Knative revision {revision}")),
        }
    }

    /// Whether the primary is `revision` and ready.
    pub fn primary_runs(&self, revision: &str) -> bool {
        self.primary_revision.as_deref() == Some(revision) && self.primary_state == RevisionState::Ready
    }
}

async fn get_dynamic(
    client: &Client,
    namespace: &str,
    resource: &kube::core::ApiResource,
    name: &str,
) -> Result<Option<Value>, WorkloadError> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, resource);
    match api.get(name).await {
        Ok(object) => serde_json::to_value(object).map(Some).map_err(|source| WorkloadError::Serialize {
            what: format!("{} {namespace}/{name}", resource.kind),
            source,
        }),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(WorkloadError::kube(format!("reading {} {namespace}/{name}", resource.kind), e)),
    }
}

/// Reads the Knative Service the Canary targets and its primary and latest revisions.
pub async fn read_knative(client: &Client, canary: &Canary) -> Result<KnativeSnapshot, WorkloadError> {
    let namespace = canary_namespace(canary)?;
    let name = &canary.spec.target_ref.name;
    let service = get_dynamic(client, &namespace, &service_resource(), name)
        .await?
        .ok_or_else(|| WorkloadError::KnativeServiceNotFound { namespace: namespace.clone(), name: name.clone() })?;
    let mut revisions = BTreeMap::new();
    let wanted = [
        service.pointer("/status/latestCreatedRevisionName").and_then(Value::as_str),
        crate::routers::knative::primary_revision_of(&service),
    ];
    for revision in wanted.into_iter().flatten() {
        if !revisions.contains_key(revision)
            && let Some(found) = get_dynamic(client, &namespace, &revision_resource(), revision).await?
        {
            revisions.insert(revision.to_string(), found);
        }
    }
    snapshot_of(&service, &revisions)
}

/// Records `revision` as the primary (a merge patch of one annotation: the traffic block is
/// the router's server-side apply, and one manager's apply would drop the other's fields).
async fn set_primary(client: &Client, snapshot: &KnativeSnapshot, revision: &str) -> Result<(), WorkloadError> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &snapshot.namespace, &service_resource());
    let patch = json!({ "metadata": { "annotations": { PRIMARY_REVISION_ANNOTATION: revision } } });
    api.patch(
        &snapshot.name,
        &PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() },
        &Patch::Merge(&patch),
    )
    .await
    .map_err(|e| {
        WorkloadError::kube(
            format!(
                "recording revision {revision} as the primary of Knative Service {}/{}",
                snapshot.namespace, snapshot.name
            ),
            e,
        )
    })?;
    Ok(())
}

/// Initialisation: the latest revision becomes the primary, once.
pub async fn initialize(client: &Client, snapshot: &KnativeSnapshot) -> Result<(), WorkloadError> {
    if snapshot.primary_revision.is_some() {
        return Ok(());
    }
    set_primary(client, snapshot, &snapshot.latest_created).await
}

/// `Action::PromoteCanaryToPrimary`: the analysed revision becomes the primary.
pub async fn promote(client: &Client, snapshot: &KnativeSnapshot) -> Result<(), WorkloadError> {
    if snapshot.primary_revision.as_deref() == Some(snapshot.latest_created.as_str()) {
        return Ok(());
    }
    set_primary(client, snapshot, &snapshot.latest_created).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(primary: Option<&str>, latest: &str, generation: i64, observed: i64) -> Value {
        let mut annotations = serde_json::Map::new();
        if let Some(primary) = primary {
            annotations.insert(PRIMARY_REVISION_ANNOTATION.into(), json!(primary));
        }
        json!({
            "apiVersion": "serving.knative.dev/v1", "kind": "Service",
            "metadata": { "name": "podinfo", "namespace": "test", "generation": generation, "annotations": annotations },
            "spec": { "template": { "spec": { "containers": [{ "image": "ghcr.io/stefanprodan/podinfo:6.0.1" }] } } },
            "status": { "latestCreatedRevisionName": latest, "observedGeneration": observed },
        })
    }

    fn revision(status: &str) -> Value {
        json!({ "status": { "conditions": [{ "type": "Ready", "status": status, "reason": "RevisionFailed", "message": "image not found" }] } })
    }

    #[test]
    fn revisions_are_primary_and_canary() {
        let revisions = BTreeMap::from([
            ("podinfo-00001".to_string(), revision("True")),
            ("podinfo-00002".to_string(), revision("Unknown")),
        ]);
        let snapshot = snapshot_of(&service(Some("podinfo-00001"), "podinfo-00002", 2, 2), &revisions).unwrap();
        assert_eq!(snapshot.latest_created, "podinfo-00002");
        assert_eq!(snapshot.release, "ghcr.io/stefanprodan/podinfo:6.0.1");
        assert_eq!(snapshot.primary_health(), WorkloadHealth::Ready);
        assert!(matches!(snapshot.canary_health(), WorkloadHealth::NotReady { .. }));
        assert!(snapshot.primary_runs("podinfo-00001"));
        assert!(!snapshot.primary_runs("podinfo-00002"));
    }

    #[test]
    fn a_failed_revision_is_past_its_deadline() {
        let revisions = BTreeMap::from([("podinfo-00002".to_string(), revision("False"))]);
        let failed = snapshot_of(&service(Some("podinfo-00001"), "podinfo-00002", 2, 2), &revisions).unwrap();
        assert!(
            matches!(failed.canary_health(), WorkloadHealth::DeadlineExceeded { ref reason } if reason.contains("image not found"))
        );
        assert!(matches!(failed.primary_health(), WorkloadHealth::NotReady { .. }), "the primary revision is missing");
        let uninitialised = snapshot_of(&service(None, "podinfo-00002", 3, 2), &BTreeMap::new()).unwrap();
        assert!(
            matches!(uninitialised.primary_health(), WorkloadHealth::NotReady { ref reason } if reason.contains(PRIMARY_REVISION_ANNOTATION))
        );
    }

    #[test]
    fn a_service_knative_has_not_reconciled_is_not_stalled() {
        let mut unreconciled = service(None, "x", 1, 0);
        unreconciled["status"] = json!({});
        let err = snapshot_of(&unreconciled, &BTreeMap::new()).unwrap_err();
        assert!(matches!(err, WorkloadError::KnativeNotReconciled { .. }) && !err.is_stalled(), "{err}");
    }
}
