//! `kubectl petrel repin CLUSTER`: after a planned rebuild of a member cluster, ask the
//! hub to pin the kube-system UID the member has now. Pure planning; the binary writes.
//!
//! The request names the exact UID the hub last observed (the Cluster's
//! `status.identity.observedUID`), so it cannot pin a cluster that changed again
//! after the person looked.

use petrel_api::Cluster;
use petrel_api::cluster::REPIN_ANNOTATION;

/// The annotation to write, and what to tell the person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepinPlan {
    /// The kube-system UID the hub is asked to pin.
    pub uid: String,
    /// The merge patch: `metadata.annotations[petrel.dev/repin-uid] = uid`.
    pub patch: serde_json::Value,
    /// The same with plain kubectl.
    pub kubectl: String,
    pub summary: String,
}

/// Plans a re-pin of `cluster`, or says why there is nothing to re-pin.
pub fn plan_repin(cluster: &Cluster) -> Result<RepinPlan, String> {
    let name = cluster.metadata.name.clone().unwrap_or_default();
    let identity = cluster.status.as_ref().and_then(|s| s.identity.as_ref());
    let Some(observed) = identity.and_then(|i| i.observed_uid.clone()) else {
        return Err(format!(
            "the hub has not read cluster {name}'s kube-system UID yet (status.identity.observedUID is empty): is the member reachable?"
        ));
    };
    let pinned = identity.and_then(|i| i.pinned_uid.clone());
    if pinned.as_deref() == Some(observed.as_str()) {
        return Err(format!("cluster {name} is already pinned to kube-system UID {observed}: nothing to re-pin"));
    }
    let patch = serde_json::json!({"metadata": {"annotations": {REPIN_ANNOTATION: observed}}});
    let kubectl = format!("kubectl annotate clusters.petrel.dev/{name} --overwrite {REPIN_ANNOTATION}={observed}");
    let summary = format!(
        "cluster {name}: asked the hub to pin kube-system UID {observed} (pinned now: {}); it does at its next probe",
        pinned.as_deref().unwrap_or("none")
    );
    Ok(RepinPlan { uid: observed, patch, kubectl, summary })
}

#[cfg(test)]
mod tests {
    use super::*;
    use petrel_api::cluster::{ClusterIdentityStatus, ClusterStatus};

    fn cluster(pinned: Option<&str>, observed: Option<&str>) -> Cluster {
        let mut cluster = Cluster::new("prod-eu", Default::default());
        cluster.status = Some(ClusterStatus {
            identity: Some(ClusterIdentityStatus {
                pinned_uid: pinned.map(str::to_string),
                observed_uid: observed.map(str::to_string),
                ..Default::default()
            }),
            ..Default::default()
        });
        cluster
    }

    #[test]
    fn a_rebuilt_member_is_repinned_to_the_uid_the_hub_observed() {
        let plan = plan_repin(&cluster(Some("old"), Some("new"))).unwrap();
        assert_eq!(plan.uid, "new");
        assert_eq!(plan.patch, serde_json::json!({"metadata": {"annotations": {"petrel.dev/repin-uid": "new"}}}));
        assert!(plan.kubectl.contains("petrel.dev/repin-uid=new") && plan.summary.contains("pinned now: old"));
    }

    #[test]
    fn nothing_observed_or_nothing_changed_is_refused_with_the_reason() {
        assert!(plan_repin(&cluster(Some("u1"), None)).unwrap_err().contains("has not read"));
        assert!(plan_repin(&cluster(Some("u1"), Some("u1"))).unwrap_err().contains("already pinned"));
    }
}
