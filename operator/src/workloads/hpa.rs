//! Mirroring the target's HorizontalPodAutoscaler onto the primary.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Patch;
use kube::{Api, Client};

use super::primary::{copyable_metadata, primary_name};
use super::{
    CANARY_LABEL, MANAGED_BY_LABEL, PRIMARY_SUFFIX, WorkloadError, apply_params, canary_name, canary_namespace,
    canary_owner_reference,
};
use crate::api::Canary;
use crate::api::canary::AutoscalerRef;

const HPA_KIND: &str = "HorizontalPodAutoscaler";
const HPA_API_VERSION: &str = "autoscaling/v2";

/// Name of the primary's HPA.
pub fn primary_hpa_name(hpa_name: &str) -> String {
    format!("{hpa_name}{PRIMARY_SUFFIX}")
}

/// Checks that the autoscaler reference is one petrel mirrors (an `autoscaling/v2` HPA or
/// a KEDA ScaledObject).
pub fn check_autoscaler_ref(autoscaler: &AutoscalerRef) -> Result<(), WorkloadError> {
    let api_version = autoscaler.api_version.as_deref().unwrap_or(HPA_API_VERSION);
    if (autoscaler.kind == HPA_KIND && api_version == HPA_API_VERSION) || super::keda::is_scaled_object(autoscaler) {
        Ok(())
    } else {
        Err(WorkloadError::UnsupportedAutoscaler {
            kind: autoscaler.kind.clone(),
            api_version: api_version.to_string(),
        })
    }
}

/// The primary's HPA: the target's HPA pointed at the primary Deployment, with replica
/// bounds overridden by `primaryScalerReplicas`.
pub fn build_primary_hpa(
    hpa: &HorizontalPodAutoscaler,
    canary: &Canary,
    autoscaler: &AutoscalerRef,
) -> Result<HorizontalPodAutoscaler, WorkloadError> {
    let spec = hpa.spec.clone();
    let overrides = autoscaler.primary_scaler_replicas.clone().unwrap_or_default();
    let (mut labels, annotations) = copyable_metadata(&hpa.metadata);
    labels.insert(MANAGED_BY_LABEL.to_string(), "petrel".to_string());
    labels.insert(CANARY_LABEL.to_string(), canary_name(canary)?);
    Ok(HorizontalPodAutoscaler {
        metadata: ObjectMeta {
            name: Some(primary_hpa_name(&autoscaler.name)),
            namespace: Some(canary_namespace(canary)?),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references: Some(vec![canary_owner_reference(canary)?]),
            ..Default::default()
        },
        spec: HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".to_string()),
                kind: "Deployment".to_string(),
                name: primary_name(&canary.spec.target_ref.name),
            },
            min_replicas: overrides.min_replicas.or(spec.min_replicas),
            max_replicas: overrides.max_replicas.unwrap_or(spec.max_replicas),
            metrics: spec.metrics,
            behavior: spec.behavior,
        },
        status: None,
    })
}

/// Mirrors the Canary's HPA (or KEDA ScaledObject) onto the primary. Returns the primary
/// HPA, or `None` when the Canary names no HPA. A missing autoscaler or an unsupported kind
/// is an error.
pub async fn ensure_primary_hpa(
    client: &Client,
    canary: &Canary,
) -> Result<Option<HorizontalPodAutoscaler>, WorkloadError> {
    let Some(autoscaler) = canary.spec.autoscaler_ref.as_ref() else {
        return Ok(None);
    };
    check_autoscaler_ref(autoscaler)?;
    if super::keda::is_scaled_object(autoscaler) {
        super::keda::ensure_primary_scaled_object(client, canary, autoscaler).await?;
        return Ok(None);
    }
    let namespace = canary_namespace(canary)?;
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &namespace);
    let hpa = api
        .get_opt(&autoscaler.name)
        .await
        .map_err(|e| {
            WorkloadError::kube(format!("reading HorizontalPodAutoscaler {namespace}/{}", autoscaler.name), e)
        })?
        .ok_or_else(|| WorkloadError::AutoscalerNotFound {
            kind: HPA_KIND,
            hint: "",
            namespace: namespace.clone(),
            name: autoscaler.name.clone(),
        })?;
    let primary = build_primary_hpa(&hpa, canary, autoscaler)?;
    let name = primary_hpa_name(&autoscaler.name);
    api.patch(&name, &apply_params(), &Patch::Apply(&primary))
        .await
        .map(Some)
        .map_err(|e| WorkloadError::kube(format!("applying HorizontalPodAutoscaler {namespace}/{name}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::canary::ScalerReplicas;
    use crate::workloads::test_support::{canary, labels};
    use k8s_openapi::api::autoscaling::v2::{
        HPAScalingRules, HorizontalPodAutoscalerBehavior, MetricSpec, MetricTarget, ResourceMetricSource,
    };

    fn autoscaler(kind: &str, api_version: Option<&str>) -> AutoscalerRef {
        AutoscalerRef {
            api_version: api_version.map(String::from),
            kind: kind.into(),
            name: "podinfo".into(),
            ..Default::default()
        }
    }

    fn hpa() -> HorizontalPodAutoscaler {
        HorizontalPodAutoscaler {
            metadata: ObjectMeta {
                name: Some("podinfo".into()),
                namespace: Some("apps".into()),
                labels: Some(labels(&[("team", "web"), ("helm.toolkit.fluxcd.io/name", "podinfo")])),
                ..Default::default()
            },
            spec: HorizontalPodAutoscalerSpec {
                scale_target_ref: CrossVersionObjectReference {
                    api_version: Some("apps/v1".into()),
                    kind: "Deployment".into(),
                    name: "podinfo".into(),
                },
                min_replicas: Some(2),
                max_replicas: 10,
                metrics: Some(vec![MetricSpec {
                    type_: "Resource".into(),
                    resource: Some(ResourceMetricSource {
                        name: "cpu".into(),
                        target: MetricTarget {
                            type_: "Utilization".into(),
                            average_utilization: Some(80),
                            ..Default::default()
                        },
                    }),
                    ..Default::default()
                }]),
                behavior: Some(HorizontalPodAutoscalerBehavior {
                    scale_down: Some(HPAScalingRules { stabilization_window_seconds: Some(300), ..Default::default() }),
                    ..Default::default()
                }),
            },
            status: None,
        }
    }

    #[test]
    fn only_autoscaling_v2_hpas_are_supported() {
        assert!(check_autoscaler_ref(&autoscaler("HorizontalPodAutoscaler", None)).is_ok());
        assert!(check_autoscaler_ref(&autoscaler("HorizontalPodAutoscaler", Some("autoscaling/v2"))).is_ok());
        assert!(check_autoscaler_ref(&autoscaler("HorizontalPodAutoscaler", Some("autoscaling/v1"))).is_err());
        assert!(check_autoscaler_ref(&autoscaler("ScaledObject", Some("keda.sh/v1alpha1"))).is_ok());
        let other = check_autoscaler_ref(&autoscaler("ScaledObject", Some("example.com/v1"))).unwrap_err();
        assert!(other.to_string().contains("KEDA ScaledObjects (keda.sh/v1alpha1)"), "{other}");
        assert!(other.to_string().contains("not supported"), "{other}");
        assert!(other.is_stalled());
    }

    #[test]
    fn primary_hpa_targets_the_primary_with_the_same_policy() {
        let primary =
            build_primary_hpa(&hpa(), &canary("podinfo"), &autoscaler("HorizontalPodAutoscaler", None)).unwrap();
        assert_eq!(primary.metadata.name.as_deref(), Some("podinfo-primary"));
        assert_eq!(primary.metadata.owner_references.as_ref().unwrap()[0].name, "podinfo");
        let labels_out = primary.metadata.labels.clone().unwrap();
        assert!(!labels_out.contains_key("helm.toolkit.fluxcd.io/name"));
        assert_eq!(labels_out["team"], "web");
        let spec = primary.spec;
        let original = hpa().spec;
        assert_eq!(spec.scale_target_ref.name, "podinfo-primary");
        assert_eq!(spec.scale_target_ref.kind, "Deployment");
        assert_eq!((spec.min_replicas, spec.max_replicas), (Some(2), 10));
        assert_eq!(spec.metrics, original.metrics);
        assert_eq!(spec.behavior, original.behavior);
    }

    #[test]
    fn primary_scaler_replicas_override_the_bounds() {
        let mut reference = autoscaler("HorizontalPodAutoscaler", None);
        reference.primary_scaler_replicas = Some(ScalerReplicas { min_replicas: Some(4), max_replicas: Some(20) });
        let spec = build_primary_hpa(&hpa(), &canary("podinfo"), &reference).unwrap().spec;
        assert_eq!((spec.min_replicas, spec.max_replicas), (Some(4), 20));
        reference.primary_scaler_replicas = Some(ScalerReplicas { min_replicas: None, max_replicas: Some(6) });
        let spec = build_primary_hpa(&hpa(), &canary("podinfo"), &reference).unwrap().spec;
        assert_eq!((spec.min_replicas, spec.max_replicas), (Some(2), 6));
    }
}
