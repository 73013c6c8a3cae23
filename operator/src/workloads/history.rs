//! History of the primary's templates as `apps/v1` ControllerRevisions.
//!
//! Every template petrel writes into the primary (at creation, promotion and rollback)
//! is stored as `<target>-primary-<revision>` with an increasing `revision` number, so
//! the newest stored revision is the template the primary runs: a deleted primary is
//! rebuilt from it (never from the canary), and the fleet hub can roll a promoted
//! cluster back to an older one. The template the primary ran before is stored again
//! before it is replaced, for primaries created before the current one was kept. The
//! newest [`KEPT_REVISIONS`] are kept.
//!
//! A stored revision holds the pod template only: the `-primary` ConfigMap/Secret copies
//! it refers to hold the configuration of the latest promotion, not of that revision.

use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{DeleteParams, ListParams, Patch};
use kube::{Api, Client};

use super::revision::{canonical_json, release_identity, short_hash};
use super::{
    CANARY_LABEL, MANAGED_BY_LABEL, REVISION_ANNOTATION, WorkloadError, apply_params, canary_name, canary_namespace,
    canary_owner_reference, is_not_found,
};
use crate::api::Canary;

/// How many ControllerRevisions are kept per Canary.
pub const KEPT_REVISIONS: usize = 10;

/// Annotation of a stored revision: the primary's `spec.replicas` when it was stored.
pub const REPLICAS_ANNOTATION: &str = "petrel.dev/replicas";

/// The revision a primary template runs: its revision annotation, or (for a template
/// petrel did not write) a hash of the template itself.
pub(crate) fn template_revision(template: &PodTemplateSpec) -> String {
    template
        .metadata
        .as_ref()
        .and_then(|meta| meta.annotations.as_ref())
        .and_then(|annotations| annotations.get(REVISION_ANNOTATION))
        .cloned()
        .unwrap_or_else(|| {
            // Plain data: serialisation cannot fail.
            let value = serde_json::to_value(template).unwrap_or_default();
            short_hash(canonical_json(&value).as_bytes())
        })
}

/// Name of the ControllerRevision holding a primary template.
pub fn controller_revision_name(primary_name: &str, template: &PodTemplateSpec) -> String {
    format!("{primary_name}-{}", template_revision(template))
}

/// The number the next stored revision gets: one more than the highest stored.
pub fn next_revision_number(existing: &[ControllerRevision]) -> i64 {
    existing.iter().map(|revision| revision.revision).max().unwrap_or(0) + 1
}

/// Names of the revisions to delete so that the newest `keep` remain (highest numbers;
/// equal numbers are ordered by name so the choice is deterministic).
pub fn revisions_to_prune(existing: &[ControllerRevision], keep: usize) -> Vec<String> {
    let mut ordered: Vec<(i64, String)> = existing
        .iter()
        .map(|revision| (revision.revision, revision.metadata.name.clone().unwrap_or_default()))
        .collect();
    ordered.sort_by(|a, b| b.cmp(a));
    ordered.into_iter().skip(keep).map(|(_, name)| name).collect()
}

/// The ControllerRevision storing the primary's current template.
pub fn build_controller_revision(
    canary: &Canary,
    primary: &Deployment,
    number: i64,
) -> Result<ControllerRevision, WorkloadError> {
    let primary_name = primary.metadata.name.clone().unwrap_or_default();
    let template = primary.spec.as_ref().map(|spec| spec.template.clone()).ok_or_else(|| {
        WorkloadError::InvalidControllerRevision {
            name: primary_name.clone(),
            reason: "the primary Deployment has no spec to store".to_string(),
        }
    })?;
    let template_json = serde_json::to_value(&template)
        .map_err(|source| WorkloadError::Serialize { what: format!("template of {primary_name}"), source })?;
    let data = serde_json::json!({
        "template": template_json,
        "release": release_identity(&template),
        "revision": template_revision(&template),
    });
    // `data` is immutable once stored; the replica count changes, so it is an annotation.
    let annotations = primary
        .spec
        .as_ref()
        .and_then(|spec| spec.replicas)
        .map(|replicas| [(REPLICAS_ANNOTATION.to_string(), replicas.to_string())].into());
    Ok(ControllerRevision {
        metadata: ObjectMeta {
            name: Some(controller_revision_name(&primary_name, &template)),
            namespace: Some(canary_namespace(canary)?),
            labels: Some(
                [
                    (CANARY_LABEL.to_string(), canary_name(canary)?),
                    (MANAGED_BY_LABEL.to_string(), "petrel".to_string()),
                ]
                .into(),
            ),
            annotations,
            owner_references: Some(vec![canary_owner_reference(canary)?]),
            ..Default::default()
        },
        data: Some(RawExtension(data)),
        revision: number,
    })
}

/// The pod template stored in a ControllerRevision.
pub fn template_from_revision(revision: &ControllerRevision) -> Result<PodTemplateSpec, WorkloadError> {
    let name = revision.metadata.name.clone().unwrap_or_default();
    let template = revision.data.as_ref().and_then(|RawExtension(data)| data.get("template")).ok_or_else(|| {
        WorkloadError::InvalidControllerRevision { name: name.clone(), reason: "it has no data.template".to_string() }
    })?;
    serde_json::from_value(template.clone()).map_err(|e| WorkloadError::InvalidControllerRevision {
        name,
        reason: format!("data.template is not a pod template: {e}"),
    })
}

/// The release identity stored in a ControllerRevision (`data.release`).
pub fn stored_release(revision: &ControllerRevision) -> Option<&str> {
    revision.data.as_ref()?.0.get("release")?.as_str()
}

/// The petrel revision stored in a ControllerRevision (`data.revision`).
pub fn stored_revision(revision: &ControllerRevision) -> Option<&str> {
    revision.data.as_ref()?.0.get("revision")?.as_str()
}

/// The primary's replica count when the template was last stored (absent when an HPA
/// scaled it).
pub fn stored_replicas(revision: &ControllerRevision) -> Option<i32> {
    revision.metadata.annotations.as_ref()?.get(REPLICAS_ANNOTATION)?.parse().ok()
}

/// The newest stored template of petrel revision `revision` (normally
/// `status.lastPromotedSpec`): what a deleted primary is rebuilt from.
pub fn stored_template_of<'a>(existing: &'a [ControllerRevision], revision: &str) -> Option<&'a ControllerRevision> {
    existing.iter().filter(|stored| stored_revision(stored) == Some(revision)).max_by_key(|stored| stored.revision)
}

/// The newest stored revision of another release than `current_release`: what a
/// rollback of the current release goes back to.
pub fn previous_release_revision<'a>(
    existing: &'a [ControllerRevision],
    current_release: &str,
) -> Option<&'a ControllerRevision> {
    existing
        .iter()
        .filter(|revision| stored_release(revision).is_some_and(|release| release != current_release))
        .max_by_key(|revision| revision.revision)
}

fn revision_api(client: &Client, canary: &Canary) -> Result<(Api<ControllerRevision>, String), WorkloadError> {
    let namespace = canary_namespace(canary)?;
    Ok((Api::namespaced(client.clone(), &namespace), namespace))
}

/// The ControllerRevisions stored for a Canary (any order).
pub async fn list_primary_revisions(
    client: &Client,
    canary: &Canary,
) -> Result<Vec<ControllerRevision>, WorkloadError> {
    let (api, namespace) = revision_api(client, canary)?;
    let selector = format!("{CANARY_LABEL}={}", canary_name(canary)?);
    api.list(&ListParams::default().labels(&selector))
        .await
        .map(|list| list.items)
        .map_err(|e| WorkloadError::kube(format!("listing ControllerRevisions in {namespace} ({selector})"), e))
}

/// Stores the primary's current template as the newest ControllerRevision. A template
/// stored before (same name) is renumbered as the newest, like Kubernetes does.
pub async fn record_primary_revision(
    client: &Client,
    canary: &Canary,
    primary: &Deployment,
) -> Result<ControllerRevision, WorkloadError> {
    PrimaryHistory::read(client, canary).await?.record(canary, primary).await
}

/// A Canary's ControllerRevisions, listed once for a change that stores and prunes
/// several (a promotion, a rollback) and kept up to date with its own writes. Listing
/// before each step made a promotion cost three lists of the namespace's revisions
/// (docs/benchmarks.md, issue 15). A Canary is reconciled by one task at a time, so its
/// own reconciles never write its revisions between the steps. The hub's fleet rollback
/// of the same Canary could, as it could between each list and its write before: a
/// rollback racing a promotion on one member is not guarded against, then or now.
pub struct PrimaryHistory {
    api: Api<ControllerRevision>,
    namespace: String,
    stored: Vec<ControllerRevision>,
}

impl PrimaryHistory {
    /// Lists the revisions stored for `canary`.
    pub async fn read(client: &Client, canary: &Canary) -> Result<PrimaryHistory, WorkloadError> {
        let (api, namespace) = revision_api(client, canary)?;
        let stored = list_primary_revisions(client, canary).await?;
        Ok(PrimaryHistory { api, namespace, stored })
    }

    /// Stores the primary's template as the newest revision (see [`record_primary_revision`]).
    pub async fn record(&mut self, canary: &Canary, primary: &Deployment) -> Result<ControllerRevision, WorkloadError> {
        let provisional = build_controller_revision(canary, primary, 0)?;
        let name = provisional.metadata.name.clone().unwrap_or_default();
        let newest = self.stored.iter().max_by_key(|revision| revision.revision);
        let number = match newest {
            // Stored already as the newest (a retried promotion): nothing to write.
            Some(newest)
                if newest.metadata.name.as_deref() == Some(name.as_str())
                    && stored_replicas(newest) == stored_replicas(&provisional) =>
            {
                return Ok(newest.clone());
            }
            Some(newest) if newest.metadata.name.as_deref() == Some(name.as_str()) => newest.revision,
            _ => next_revision_number(&self.stored),
        };
        let revision = ControllerRevision { revision: number, ..provisional };
        let written =
            self.api.patch(&name, &apply_params(), &Patch::Apply(&revision)).await.map_err(|e| {
                WorkloadError::kube(format!("applying ControllerRevision {}/{name}", self.namespace), e)
            })?;
        self.stored.retain(|revision| revision.metadata.name.as_deref() != Some(name.as_str()));
        self.stored.push(written.clone());
        Ok(written)
    }

    /// Deletes the revisions beyond the newest [`KEPT_REVISIONS`].
    pub async fn prune(&mut self) -> Result<(), WorkloadError> {
        for name in revisions_to_prune(&self.stored, KEPT_REVISIONS) {
            match self.api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    return Err(WorkloadError::kube(
                        format!("deleting ControllerRevision {}/{name}", self.namespace),
                        e,
                    ));
                }
            }
            self.stored.retain(|revision| revision.metadata.name.as_deref() != Some(name.as_str()));
        }
        Ok(())
    }
}

/// The primary with its template replaced by `template`, ready to be applied by petrel:
/// server-generated metadata dropped, and `replicas` left out when an HPA owns it.
pub(crate) fn primary_with_template(current: &Deployment, template: PodTemplateSpec, hpa_managed: bool) -> Deployment {
    let meta = &current.metadata;
    let mut spec = current.spec.clone().unwrap_or_default();
    spec.template = template;
    if hpa_managed {
        spec.replicas = None;
    }
    Deployment {
        metadata: ObjectMeta {
            name: meta.name.clone(),
            namespace: meta.namespace.clone(),
            labels: meta.labels.clone(),
            annotations: meta.annotations.clone(),
            owner_references: meta.owner_references.clone(),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// Rolls the primary back to the template stored in `revision`, storing the template it
/// runs now first (so the rollback can itself be undone) and `revision` again as the
/// newest (the template the primary runs). Returns the applied primary.
pub async fn rollback_primary_to(
    client: &Client,
    canary: &Canary,
    primary_name: &str,
    revision: &ControllerRevision,
) -> Result<Deployment, WorkloadError> {
    let template = template_from_revision(revision)?;
    let namespace = canary_namespace(canary)?;
    let api: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let current = api
        .get(primary_name)
        .await
        .map_err(|e| WorkloadError::kube(format!("reading Deployment {namespace}/{primary_name}"), e))?;
    if current.spec.as_ref().map(|spec| &spec.template) == Some(&template) {
        return Ok(current);
    }
    let mut history = PrimaryHistory::read(client, canary).await?;
    history.record(canary, &current).await?;
    let hpa_managed = canary.spec.autoscaler_ref.is_some();
    let desired = primary_with_template(&current, template, hpa_managed);
    history.record(canary, &desired).await?;
    history.prune().await?;
    api.patch(primary_name, &apply_params(), &Patch::Apply(&desired))
        .await
        .map_err(|e| WorkloadError::kube(format!("applying Deployment {namespace}/{primary_name}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::test_support::{canary, deployment, labels};

    fn stored(name: &str, number: i64) -> ControllerRevision {
        ControllerRevision {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            data: None,
            revision: number,
        }
    }

    fn primary(image: &str, revision: &str) -> Deployment {
        let mut primary = deployment("podinfo-primary", &[("app", "podinfo-primary")], image);
        primary.spec.as_mut().unwrap().template.metadata.as_mut().unwrap().annotations =
            Some(labels(&[(REVISION_ANNOTATION, revision)]));
        primary
    }

    #[test]
    fn next_number_follows_the_highest() {
        assert_eq!(next_revision_number(&[]), 1);
        assert_eq!(next_revision_number(&[stored("a", 3), stored("b", 7), stored("c", 5)]), 8);
    }

    #[test]
    fn prune_keeps_the_newest() {
        let existing: Vec<_> = (1..=13).map(|n| stored(&format!("r{n}"), n)).collect();
        assert_eq!(revisions_to_prune(&existing, 10), vec!["r3", "r2", "r1"]);
        assert!(revisions_to_prune(&existing[..10], 10).is_empty());
        assert_eq!(revisions_to_prune(&[stored("x", 1), stored("y", 2)], 0), vec!["y", "x"]);
    }

    #[test]
    fn controller_revision_stores_template_release_and_revision() {
        let primary = primary("podinfo:1", "abc123");
        let revision = build_controller_revision(&canary("podinfo"), &primary, 4).unwrap();
        assert_eq!(revision.metadata.name.as_deref(), Some("podinfo-primary-abc123"));
        assert_eq!(revision.revision, 4);
        assert_eq!(revision.metadata.labels.as_ref().unwrap()[CANARY_LABEL], "podinfo");
        assert_eq!(revision.metadata.owner_references.as_ref().unwrap()[0].kind, "Canary");
        let RawExtension(data) = revision.data.as_ref().unwrap();
        assert_eq!(data["release"], "podinfo:1");
        assert_eq!(data["revision"], "abc123");
        assert_eq!(template_from_revision(&revision).unwrap(), primary.spec.unwrap().template);
    }

    #[test]
    fn revision_name_without_annotation_hashes_the_template() {
        let a = deployment("podinfo-primary", &[("app", "x")], "podinfo:1").spec.unwrap().template;
        let b = deployment("podinfo-primary", &[("app", "x")], "podinfo:2").spec.unwrap().template;
        let name_a = controller_revision_name("podinfo-primary", &a);
        assert!(name_a.starts_with("podinfo-primary-"));
        assert_ne!(name_a, controller_revision_name("podinfo-primary", &b));
        assert_eq!(name_a, controller_revision_name("podinfo-primary", &a.clone()));
    }

    fn stored_release_revision(name: &str, number: i64, release: &str) -> ControllerRevision {
        let mut revision = stored(name, number);
        revision.data = Some(RawExtension(serde_json::json!({ "release": release, "revision": name })));
        revision
    }

    #[test]
    fn previous_release_is_the_newest_other_release() {
        let existing = vec![
            stored_release_revision("a", 1, "app:1"),
            stored_release_revision("b", 2, "app:2"),
            stored_release_revision("c", 3, "app:3"),
            stored_release_revision("d", 4, "app:3"),
            stored("no-data", 5),
        ];
        let previous = previous_release_revision(&existing, "app:3").unwrap();
        assert_eq!(previous.metadata.name.as_deref(), Some("b"));
        assert_eq!((stored_release(previous), stored_revision(previous)), (Some("app:2"), Some("b")));
        assert_eq!(previous_release_revision(&existing, "app:9").unwrap().metadata.name.as_deref(), Some("d"));
        assert!(previous_release_revision(&existing[..1], "app:1").is_none());
    }

    #[test]
    fn bad_revision_data_is_reported() {
        let error = template_from_revision(&stored("podinfo-primary-1", 1)).unwrap_err();
        assert!(error.to_string().contains("podinfo-primary-1"), "{error}");
        let mut wrong = stored("podinfo-primary-2", 2);
        wrong.data = Some(RawExtension(serde_json::json!({ "template": "not an object" })));
        assert!(matches!(template_from_revision(&wrong), Err(WorkloadError::InvalidControllerRevision { .. })));
    }

    #[test]
    fn rollback_object_replaces_only_the_template() {
        let mut current = primary("podinfo:2", "new");
        current.metadata.resource_version = Some("42".into());
        current.metadata.uid = Some("uid".into());
        let old_template = primary("podinfo:1", "old").spec.unwrap().template;
        let desired = primary_with_template(&current, old_template.clone(), false);
        assert_eq!(desired.metadata.resource_version, None);
        assert_eq!(desired.metadata.uid, None);
        let spec = desired.spec.unwrap();
        assert_eq!(spec.template, old_template);
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.selector, current.spec.as_ref().unwrap().selector);
        let hpa_managed = primary_with_template(&current, old_template, true);
        assert_eq!(hpa_managed.spec.unwrap().replicas, None);
    }
}
