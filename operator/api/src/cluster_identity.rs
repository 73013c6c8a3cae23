//! The `ClusterIdentity` resource: who a member cluster says it is.
//!
//! petrel in member mode publishes one cluster-scoped `ClusterIdentity` named
//! [`CLUSTER_IDENTITY_NAME`] from its `--cluster-name`, the labels in a ConfigMap the
//! platform team owns (`env`, `region`, `compliance-zone` …) and the UID of the
//! member's `kube-system` Namespace. The hub reads it through the member's kubeconfig
//! and, before approving the member, checks it against the `Cluster` object's labels
//! and the kube-system UID pinned on first contact: a kubeconfig copied to the wrong
//! Cluster, or a bootstrap template that gave a cluster another region's labels, is
//! caught before a release lands there.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use kube_derive::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The one `ClusterIdentity` a member publishes.
pub const CLUSTER_IDENTITY_NAME: &str = "petrel";

/// What a member states about itself. Written by petrel in member mode only.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[kube(
    group = "petrel.dev",
    version = "v1alpha1",
    kind = "ClusterIdentity",
    doc = "Who a member cluster says it is, published by petrel in member mode and verified by the fleet hub before it approves a release there.",
    shortname = "pidentity",
    category = "petrel",
    status = "ClusterIdentityStatus",
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.clusterName"}"#,
    printcolumn = r#"{"name":"KubeSystemUID","type":"string","jsonPath":".spec.kubeSystemUID"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterIdentitySpec {
    /// The member's name (`--cluster-name`); the hub compares it with the name of the
    /// `Cluster` object that reaches this member.
    #[schemars(length(max = 253))]
    pub cluster_name: String,
    /// The labels the platform team gave this cluster (from the identity ConfigMap);
    /// each must equal the `Cluster` object's label of the same key where it has one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub labels: BTreeMap<String, String>,
    /// UID of the member's `kube-system` Namespace: it changes only when the cluster is
    /// rebuilt, and a kubeconfig copied elsewhere cannot carry it along.
    #[serde(rename = "kubeSystemUID")]
    #[schemars(length(max = 64))]
    pub kube_system_uid: String,
    /// What was wrong with the identity ConfigMap, if anything (unknown keys, values
    /// that are not label values): the hub approves no member whose identity has problems.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub problems: Vec<String>,
    /// The petrel version that published this identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub petrel_version: Option<String>,
}

/// What a member measured about itself, written by petrel in member mode.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterIdentityStatus {
    /// The member's request rate from its `--traffic-rate-query`, refreshed every
    /// minute; absent when petrel runs without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<TrafficRate>,
}

/// A member's own request rate, measured with its `--traffic-rate-query` against its
/// metrics server. The member publishes it; the hub copies it into the Cluster's status
/// (`status.traffic`), where `kubectl petrel plan` reads it to tell each member's share
/// of the fleet's traffic when the Cluster has no `petrel.dev/traffic-share` label.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrafficRate {
    /// Requests per second the query returned at `measuredAt`; absent when the last
    /// query failed (never a guessed number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<f64>,
    /// When the member measured (or tried to measure) the rate written here. It writes
    /// again only when the rate moves by more than 2%, the error changes, or 150 s have
    /// passed: an unchanged rate may be that old and still current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_at: Option<DateTime<Utc>>,
    /// Why the last query gave no rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube_core::CustomResourceExt;

    #[test]
    fn the_crd_is_cluster_scoped_and_spells_the_uid_in_capitals() {
        let crd = ClusterIdentity::crd();
        assert_eq!(crd.spec.scope, "Cluster");
        let spec = ClusterIdentitySpec { kube_system_uid: "u-1".into(), ..Default::default() };
        assert_eq!(serde_json::to_value(&spec).unwrap()["kubeSystemUID"], "u-1");
    }
}
