//! Scaling the target (the canary) between releases.
//!
//! petrel scales the user's Deployment to 0 while no analysis runs and back up when a
//! release starts. The count to scale up to is not read from the target (it is 0 by
//! then) but from a stable record: the primary's replicas, which petrel only changes at
//! promotion, or the primary HPA's `minReplicas` when an HPA scales the workload.

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{Patch, PatchParams};

use super::{FIELD_MANAGER, WorkloadError};

/// Whether a Deployment asks for no pods (`spec.replicas` 0; an absent field is 1).
pub fn is_at_zero(deployment: &Deployment) -> bool {
    deployment.spec.as_ref().and_then(|spec| spec.replicas) == Some(0)
}

/// Replicas to give the canary when a release starts.
pub fn scale_up_replicas(primary: Option<&Deployment>, hpa_min_replicas: Option<i32>) -> i32 {
    if let Some(min) = hpa_min_replicas {
        return min.max(1);
    }
    primary
        .and_then(|primary| primary.spec.as_ref())
        .and_then(|spec| spec.replicas)
        .filter(|replicas| *replicas > 0)
        .unwrap_or(1)
}

/// Replicas to write into the primary at creation or promotion: `None` when an HPA
/// scales it; otherwise the target's own count when it has one (the user's, or the count
/// petrel scaled the canary up to), else what the primary runs now, else 1.
pub fn primary_replicas(target: &Deployment, current_primary: Option<&Deployment>, hpa_managed: bool) -> Option<i32> {
    if hpa_managed {
        return None;
    }
    let positive = |deployment: &Deployment| deployment.spec.as_ref().and_then(|spec| spec.replicas).filter(|r| *r > 0);
    Some(positive(target).or_else(|| current_primary.and_then(positive)).unwrap_or(1))
}

/// Sets `spec.replicas` of the target with a merge patch (not an apply: the Deployment
/// belongs to the user, petrel only touches this one field).
/// Returns the Deployment as the API server answered.
pub async fn scale_target(api: &Api<Deployment>, name: &str, replicas: i32) -> Result<Deployment, WorkloadError> {
    let patch = serde_json::json!({ "spec": { "replicas": replicas } });
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_string()), ..Default::default() };
    api.patch(name, &params, &Patch::Merge(&patch))
        .await
        .map_err(|e| WorkloadError::kube(format!("scaling Deployment {name} to {replicas}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::test_support::deployment;

    fn with_replicas(replicas: Option<i32>) -> Deployment {
        let mut d = deployment("podinfo", &[("app", "podinfo")], "i");
        d.spec.as_mut().unwrap().replicas = replicas;
        d
    }

    #[test]
    fn scale_up_prefers_hpa_minimum_then_primary_then_one() {
        let primary = with_replicas(Some(4));
        assert_eq!(scale_up_replicas(Some(&primary), Some(2)), 2);
        assert_eq!(scale_up_replicas(Some(&primary), Some(0)), 1);
        assert_eq!(scale_up_replicas(Some(&primary), None), 4);
        assert_eq!(scale_up_replicas(Some(&with_replicas(Some(0))), None), 1);
        assert_eq!(scale_up_replicas(Some(&with_replicas(None)), None), 1);
        assert_eq!(scale_up_replicas(None, None), 1);
    }

    #[test]
    fn primary_replicas_follow_the_target_unless_an_hpa_scales() {
        let primary = with_replicas(Some(5));
        assert_eq!(primary_replicas(&with_replicas(Some(3)), Some(&primary), false), Some(3));
        assert_eq!(primary_replicas(&with_replicas(Some(0)), Some(&primary), false), Some(5));
        assert_eq!(primary_replicas(&with_replicas(Some(0)), None, false), Some(1));
        assert_eq!(primary_replicas(&with_replicas(Some(3)), Some(&primary), true), None);
    }
}
