//! The workloads petrel manages around a Canary's target Deployment.
//!
//! Flagger's copy model: the user's Deployment is the canary; petrel keeps a
//! `<target>-primary` clone that serves stable traffic, `-primary` copies of the
//! ConfigMaps and Secrets the pods use (so the primary keeps the old configuration until
//! promotion), a `<hpa>-primary` autoscaler, and the previous primary templates as
//! `ControllerRevision`s so a promoted cluster can be rolled back.
//!
//! Every object is built by a pure function (unit-tested here); the `async` functions are
//! a thin I/O layer that reads with `Api::get` and writes with server-side apply under
//! the field manager `petrel`.

pub mod actions;
pub mod configs;
pub mod daemonset;
pub mod handover;
pub mod health;
pub mod history;
pub mod hpa;
pub mod keda;
pub mod knative;
pub mod primary;
pub mod revision;
pub mod scaling;
pub mod selector;
pub mod target;

pub use actions::{
    PrimarySource, WorkloadSnapshot, initialize_primary, missing_primary_source, promote_canary_to_primary,
    read_workloads, restore_missing_primary, scale_canary_to_zero, scale_canary_up,
};
pub use configs::{
    ConfigNames, ConfigReads, ConfigRefs, Need, TrackedConfigs, build_primary_config_map, build_primary_secret,
    config_map_checksum, copy_configs_to_primary, read_tracked_configs, referenced_configs, resolve_tracked_configs,
    rewrite_config_refs, secret_checksum, tracking_disabled,
};
pub use health::{deployment_health, primary_runs_revision, primary_runs_template, primary_template_is_revision};
pub use history::{
    build_controller_revision, controller_revision_name, list_primary_revisions, next_revision_number,
    previous_release_revision, record_primary_revision, revisions_to_prune, rollback_primary_to, stored_release,
    stored_replicas, stored_revision, stored_template_of, template_from_revision,
};
pub use hpa::{build_primary_hpa, check_autoscaler_ref, ensure_primary_hpa, primary_hpa_name};
pub use primary::{build_primary, ensure_primary, primary_name, promote, rebuild_primary};
pub use revision::{release_identity, revision};
pub use scaling::{is_at_zero, primary_replicas, scale_target, scale_up_replicas};
pub use selector::{PodSelector, pod_selector, primary_value};
pub use target::{TargetSnapshot, read_target};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;

use crate::api::Canary;

pub use crate::{FIELD_MANAGER, MANAGED_BY_LABEL};

/// Deployments as the controller's watch keeps them (see [`crate::cache`]).
pub type DeploymentCache = crate::cache::WatchCache<k8s_openapi::api::apps::v1::Deployment>;

/// Label on generated objects naming the Canary they belong to.
pub const CANARY_LABEL: &str = "petrel.dev/canary";

/// Pod-template annotation on the primary naming the revision it runs, so that a
/// promotion that only changed ConfigMaps/Secrets still rolls the primary's pods, and
/// so that "does the primary run revision X" is a lookup rather than a guess.
pub const REVISION_ANNOTATION: &str = "petrel.dev/revision";

pub use crate::api::PRIMARY_SUFFIX;

/// Why a workload operation failed. Each message names the object involved so that it
/// can be shown as-is in a condition or Event.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error(
        "Deployment {deployment} has none of the selector labels {candidates:?} in spec.selector.matchLabels; petrel needs one of them to tell primary pods from canary pods"
    )]
    NoSelectorLabel { deployment: String, candidates: &'static [&'static str] },

    #[error("Deployment {namespace}/{name} not found")]
    TargetNotFound { namespace: String, name: String },

    #[error("DaemonSet {namespace}/{name} not found")]
    DaemonSetNotFound { namespace: String, name: String },

    #[error(
        "spec.autoscalerRef {name}: a DaemonSet runs one pod per node and has no replicas to scale; remove autoscalerRef"
    )]
    DaemonSetAutoscaler { name: String },

    #[error("DaemonSet {name} cannot be released: {reason}")]
    InvalidDaemonSet { name: String, reason: String },

    #[error("Knative Service {namespace}/{name} not found (serving.knative.dev/v1)")]
    KnativeServiceNotFound { namespace: String, name: String },

    #[error("Knative Service {namespace}/{name} has no revision yet: Knative has not reconciled it")]
    KnativeNotReconciled { namespace: String, name: String },

    #[error(
        "spec.autoscalerRef {name}: a Knative Service target scales its revisions itself (Knative's autoscaler); remove autoscalerRef"
    )]
    KnativeAutoscaler { name: String },

    #[error("Deployment {namespace}/{name} has no spec")]
    TargetWithoutSpec { namespace: String, name: String },

    #[error("{kind} {namespace}/{name} is used by the pods of {deployment} but does not exist")]
    MissingConfig { kind: &'static str, namespace: String, name: String, deployment: String },

    #[error("Canary has no {field} in its metadata (was it read from the API server?)")]
    CanaryIdentity { field: &'static str },

    #[error("{kind} {namespace}/{name} named by spec.autoscalerRef does not exist{hint}")]
    AutoscalerNotFound { kind: &'static str, namespace: String, name: String, hint: &'static str },

    #[error(
        "spec.autoscalerRef kind {kind} ({api_version}) is not supported: petrel mirrors autoscaling/v2 HorizontalPodAutoscalers and KEDA ScaledObjects (keda.sh/v1alpha1)"
    )]
    UnsupportedAutoscaler { kind: String, api_version: String },

    #[error(
        "Deployment {primary} is missing and petrel has no stored template of the promoted revision {revision} to rebuild it from; it is never rebuilt from the canary. Revert the target to the promoted template, or recreate the Canary"
    )]
    NoPromotedTemplate { primary: String, revision: String },

    #[error("ControllerRevision {name} cannot be used: {reason}")]
    InvalidControllerRevision { name: String, reason: String },

    #[error("cannot serialise {what}: {source}")]
    Serialize { what: String, source: serde_json::Error },

    #[error("{action}: {source}")]
    Kube { action: String, source: kube::Error },
}

impl WorkloadError {
    /// True when the error needs a change by a person (the Canary is Stalled) rather than
    /// a retry: a missing or ill-formed object the user owns.
    pub fn is_stalled(&self) -> bool {
        !matches!(
            self,
            WorkloadError::Kube { .. } | WorkloadError::Serialize { .. } | WorkloadError::KnativeNotReconciled { .. }
        )
    }

    pub(crate) fn kube(action: impl Into<String>, source: kube::Error) -> Self {
        WorkloadError::Kube { action: action.into(), source }
    }
}

/// The owner reference that makes a generated object belong to the Canary (deleted with it).
pub fn canary_owner_reference(canary: &Canary) -> Result<OwnerReference, WorkloadError> {
    if canary.metadata.name.is_none() {
        return Err(WorkloadError::CanaryIdentity { field: "name" });
    }
    // `controller_owner_ref` only returns None when the name or uid is missing.
    let mut owner = canary.controller_owner_ref(&()).ok_or(WorkloadError::CanaryIdentity { field: "uid" })?;
    owner.block_owner_deletion = Some(true);
    Ok(owner)
}

/// Name of the Canary (the API server guarantees it; a missing one is an error, not "").
pub(crate) fn canary_name(canary: &Canary) -> Result<String, WorkloadError> {
    canary.metadata.name.clone().ok_or(WorkloadError::CanaryIdentity { field: "name" })
}

/// Namespace of the Canary; every object petrel manages for it lives there.
pub(crate) fn canary_namespace(canary: &Canary) -> Result<String, WorkloadError> {
    canary.metadata.namespace.clone().ok_or(WorkloadError::CanaryIdentity { field: "namespace" })
}

/// Server-side apply parameters for objects petrel generates: petrel owns them outright,
/// so conflicts with other managers are resolved in petrel's favour.
pub(crate) fn apply_params() -> kube::api::PatchParams {
    kube::api::PatchParams::apply(FIELD_MANAGER).force()
}

/// True when the API answered 404.
pub(crate) fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}

#[cfg(test)]
mod fake_api;

#[cfg(test)]
pub(crate) mod test_support {
    use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
    use std::collections::BTreeMap;

    use crate::api::Canary;

    pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    pub fn container(name: &str, image: &str) -> Container {
        Container { name: name.into(), image: Some(image.into()), ..Default::default() }
    }

    pub fn template(pod_labels: &[(&str, &str)], containers: Vec<Container>) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta { labels: Some(labels(pod_labels)), ..Default::default() }),
            spec: Some(PodSpec { containers, ..Default::default() }),
        }
    }

    pub fn deployment(name: &str, selector: &[(&str, &str)], image: &str) -> Deployment {
        Deployment {
            metadata: ObjectMeta { name: Some(name.into()), namespace: Some("apps".into()), ..Default::default() },
            spec: Some(DeploymentSpec {
                replicas: Some(3),
                selector: LabelSelector { match_labels: Some(labels(selector)), ..Default::default() },
                template: template(selector, vec![container("app", image)]),
                ..Default::default()
            }),
            status: None,
        }
    }

    pub fn canary(name: &str) -> Canary {
        let mut canary: Canary = serde_json::from_value(serde_json::json!({
            "apiVersion": "petrel.dev/v1alpha1",
            "kind": "Canary",
            "metadata": { "name": name, "namespace": "apps", "uid": "c0ffee-uid" },
            "spec": {
                "targetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo" },
                "service": { "port": 9898 }
            }
        }))
        .expect("test Canary is valid");
        canary.metadata.uid = Some("c0ffee-uid".into());
        canary
    }
}
