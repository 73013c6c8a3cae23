//! The `Cluster` resource: one member cluster of a fleet, declared on the hub.
//!
//! A Cluster says how to reach the member (a kubeconfig in a Secret) and, through its
//! `metadata.labels` (`env`, `region`, `role: canary` …), which waves of a fleet
//! `Rollout` it falls into. The hub writes its reachability into the status.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use kube_derive::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::Condition;

/// Condition type: the hub reached the member's API server at its last attempt.
pub const CONDITION_REACHABLE: &str = "Reachable";
/// Condition type: the member is reachable and runs petrel in member mode.
pub const CONDITION_READY: &str = "Ready";
/// Condition type: the member is the cluster this object describes (its stated
/// identity matches the labels, the name and the pinned kube-system UID).
pub const CONDITION_IDENTITY_VERIFIED: &str = "IdentityVerified";
/// Annotation `kubectl petrel repin` sets: pin this kube-system UID (the one the member
/// has now, after a planned rebuild of the cluster).
pub const REPIN_ANNOTATION: &str = "petrel.dev/repin-uid";

/// Spec of a Cluster: how the hub reaches one member of the fleet. Waves select
/// Clusters by the labels on their metadata.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "petrel.dev",
    version = "v1alpha1",
    kind = "Cluster",
    cel,
    doc = "A member cluster of a petrel fleet, declared on the hub. Its labels are what fleet Rollout waves select.",
    status = "ClusterStatus",
    shortname = "pcluster",
    category = "petrel",
    printcolumn = r#"{"name":"Display","type":"string","jsonPath":".spec.displayName"}"#,
    printcolumn = r#"{"name":"Reachable","type":"string","jsonPath":".status.conditions[?(@.type==\"Reachable\")].status"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Identity","type":"string","jsonPath":".status.conditions[?(@.type==\"IdentityVerified\")].reason"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".status.serverVersion"}"#,
    printcolumn = r#"{"name":"LastContact","type":"date","jsonPath":".status.lastContactTime"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSpec {
    /// The Secret on the hub that holds the member's kubeconfig.
    pub kubeconfig_secret_ref: KubeconfigSecretRef,

    /// A human-friendly name shown by `kubectl get` and in dashboards; defaults to the
    /// object's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub display_name: Option<String>,
}

/// Where the member's kubeconfig lives on the hub.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KubeconfigSecretRef {
    /// Name of the Secret.
    #[x_kube(validation = kube_core::Rule::new("self != ''").message("kubeconfigSecretRef.name must name a Secret"))]
    pub name: String,
    /// Namespace of the Secret (a Cluster is cluster-scoped, so this is required).
    #[x_kube(validation = kube_core::Rule::new("self != ''").message("kubeconfigSecretRef.namespace must name the Secret's namespace"))]
    pub namespace: String,
    /// Key in the Secret's data that holds the kubeconfig. Default `kubeconfig`.
    #[serde(default = "default_kubeconfig_key")]
    #[schemars(length(min = 1))]
    pub key: String,
}

impl Default for KubeconfigSecretRef {
    fn default() -> Self {
        Self { name: String::new(), namespace: String::new(), key: default_kubeconfig_key() }
    }
}

fn default_kubeconfig_key() -> String {
    "kubeconfig".to_string()
}

/// What the hub last observed of the member.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// `Reachable` and `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// When the hub last got an answer from the member's API server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_contact_time: Option<DateTime<Utc>>,
    /// The member's Kubernetes version, as reported by its `/version` endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Who the member is: the kube-system UID pinned on first contact and what the
    /// member last stated about itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<ClusterIdentityStatus>,
    /// The request rate the member last measured and published in its
    /// `ClusterIdentity` (petrel there with `--traffic-rate-query`), as the last probe
    /// read it: the member's share of the fleet's traffic when the Cluster has no
    /// `petrel.dev/traffic-share` label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<crate::cluster_identity::TrafficRate>,
}

/// The member's identity as the hub pinned and last observed it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterIdentityStatus {
    /// UID of the member's kube-system Namespace, pinned on first contact: a member
    /// reached through this Cluster's kubeconfig later must have it. Changed only by
    /// `kubectl petrel repin` after a planned rebuild.
    #[serde(default, rename = "pinnedUID", skip_serializing_if = "Option::is_none")]
    pub pinned_uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_at: Option<DateTime<Utc>>,
    /// The kube-system UID the last probe found.
    #[serde(default, rename = "observedUID", skip_serializing_if = "Option::is_none")]
    pub observed_uid: Option<String>,
    /// The name the member states (its `--cluster-name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stated_name: Option<String>,
    /// The labels the member states (its identity ConfigMap).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stated_labels: BTreeMap<String, String>,
}

impl ClusterStatus {
    /// True when the last contact attempt succeeded (`Reachable=True`).
    pub fn is_reachable(&self) -> bool {
        self.conditions.iter().any(|c| c.type_ == CONDITION_REACHABLE && c.is_true())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube_core::CustomResourceExt;

    #[test]
    fn the_kubeconfig_key_defaults_to_kubeconfig() {
        let spec: ClusterSpec = serde_json::from_value(serde_json::json!({
            "kubeconfigSecretRef": {"name": "eu-1", "namespace": "petrel-system"}
        }))
        .unwrap();
        assert_eq!(spec.kubeconfig_secret_ref.key, "kubeconfig");
    }

    #[test]
    fn the_crd_is_cluster_scoped() {
        assert_eq!(Cluster::crd().spec.scope, "Cluster");
    }

    #[test]
    fn an_empty_secret_name_is_rejected() {
        let mut cluster = Cluster::new(
            "eu-1",
            ClusterSpec {
                kubeconfig_secret_ref: KubeconfigSecretRef {
                    name: "eu-1".into(),
                    namespace: "petrel-system".into(),
                    key: default_kubeconfig_key(),
                },
                display_name: None,
            },
        );
        assert!(cluster.validate_cel().is_ok());
        cluster.spec.kubeconfig_secret_ref.name = String::new();
        let error = cluster.validate_cel().unwrap_err().to_string();
        assert!(error.contains("must name a Secret"), "{error}");
    }

    #[test]
    fn reachability_comes_from_the_reachable_condition() {
        let mut status = ClusterStatus::default();
        assert!(!status.is_reachable());
        status.conditions.push(Condition {
            type_: CONDITION_REACHABLE.into(),
            status: "True".into(),
            reason: "Contacted".into(),
            message: String::new(),
            last_transition_time: DateTime::<Utc>::UNIX_EPOCH,
            observed_generation: None,
        });
        assert!(status.is_reachable());
    }
}
