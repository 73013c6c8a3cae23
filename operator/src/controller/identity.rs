//! The member's published identity: one cluster-scoped `ClusterIdentity` that says who
//! this cluster is, for the fleet hub to verify before it approves a release here.
//!
//! It is made from `--cluster-name`, the labels of an identity ConfigMap the platform
//! team owns, and the UID of the kube-system Namespace; it is written again whenever
//! the ConfigMap changes (and only when the identity differs from the one published).

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use tracing::{info, warn};

use crate::api::ClusterIdentity;
use crate::api::cluster_identity::{CLUSTER_IDENTITY_NAME, ClusterIdentitySpec};
use crate::fleet::identity::stated_labels;
use crate::shutdown::Shutdown;

/// Where the platform team keeps this cluster's identity labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentitySource {
    pub cluster_name: String,
    pub config_map_namespace: String,
    pub config_map_name: String,
}

/// Wait before trying again after a failed read or write.
const RETRY: Duration = Duration::from_secs(10);

/// The identity to publish. Pure.
pub fn identity_spec(
    source: &IdentitySource,
    config_map: Option<&ConfigMap>,
    kube_system_uid: &str,
) -> ClusterIdentitySpec {
    let data: BTreeMap<String, String> = config_map.and_then(|cm| cm.data.clone()).unwrap_or_default();
    let (labels, mut problems) = stated_labels(&data);
    if config_map.is_some_and(|cm| cm.binary_data.as_ref().is_some_and(|b| !b.is_empty())) {
        problems.push("binaryData is not read: identity labels are text".to_string());
    }
    ClusterIdentitySpec {
        cluster_name: source.cluster_name.clone(),
        labels,
        kube_system_uid: kube_system_uid.to_string(),
        problems,
        petrel_version: Some(env!("CARGO_PKG_VERSION").to_string()),
    }
}

/// Publishes the identity now and after every change of the ConfigMap, until `shutdown`.
pub async fn publish(client: Client, source: IdentitySource, shutdown: Shutdown) {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &source.config_map_namespace);
    let by_name = watcher::Config::default().fields(&format!("metadata.name={}", source.config_map_name));
    let mut changes = std::pin::pin!(watcher(config_maps, by_name).default_backoff().applied_objects());
    let mut published: Option<ClusterIdentitySpec> = None;
    // The ConfigMap as last seen; None until the first event, or when there is none.
    let mut current: Option<ConfigMap> = None;
    loop {
        match publish_once(&client, &source, current.as_ref(), &published).await {
            Ok(spec) => published = Some(spec),
            Err(e) => warn!(error = %e, "could not publish this cluster's identity; retrying"),
        }
        let retry = published.is_none();
        tokio::select! {
            () = shutdown.requested() => return,
            () = tokio::time::sleep(RETRY), if retry => {}
            event = changes.next() => match event {
                Some(Ok(config_map)) => current = Some(config_map),
                Some(Err(e)) => warn!(error = %e, "watching the identity ConfigMap"),
                None => return,
            },
        }
    }
}

async fn publish_once(
    client: &Client,
    source: &IdentitySource,
    config_map: Option<&ConfigMap>,
    published: &Option<ClusterIdentitySpec>,
) -> Result<ClusterIdentitySpec, kube::Error> {
    let kube_system = Api::<Namespace>::all(client.clone()).get("kube-system").await?;
    let uid = kube_system.metadata.uid.unwrap_or_default();
    let spec = identity_spec(source, config_map, &uid);
    if published.as_ref() == Some(&spec) {
        return Ok(spec);
    }
    let body = serde_json::json!({
        "apiVersion": ClusterIdentity::api_version(&()),
        "kind": ClusterIdentity::kind(&()),
        "metadata": {"name": CLUSTER_IDENTITY_NAME},
        "spec": spec,
    });
    Api::<ClusterIdentity>::all(client.clone())
        .patch(CLUSTER_IDENTITY_NAME, &PatchParams::apply(crate::FIELD_MANAGER).force(), &Patch::Apply(&body))
        .await?;
    info!(cluster = %spec.cluster_name, labels = ?spec.labels, problems = ?spec.problems, "published this cluster's identity");
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> IdentitySource {
        IdentitySource {
            cluster_name: "prod-eu-1".into(),
            config_map_namespace: "petrel-system".into(),
            config_map_name: "petrel-cluster-identity".into(),
        }
    }

    #[test]
    fn the_identity_states_the_config_maps_labels_and_what_is_wrong_with_it() {
        let config_map: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "petrel-cluster-identity"},
            "data": {"env": "production", "region": "eu-west-1", "not a key": "x"},
            "binaryData": {"blob": "AAEC"}
        }))
        .unwrap();
        let spec = identity_spec(&source(), Some(&config_map), "uid-1");
        assert_eq!((spec.cluster_name.as_str(), spec.kube_system_uid.as_str()), ("prod-eu-1", "uid-1"));
        assert_eq!(
            spec.labels,
            BTreeMap::from([("env".to_string(), "production".to_string()), ("region".into(), "eu-west-1".into())])
        );
        assert_eq!(spec.problems.len(), 2, "{:?}", spec.problems);
    }

    #[test]
    fn without_a_config_map_the_identity_has_no_labels_and_no_problems() {
        let spec = identity_spec(&source(), None, "uid-1");
        assert!(spec.labels.is_empty() && spec.problems.is_empty());
    }
}
