//! KEDA ScaledObjects as `spec.autoscalerRef`, handled as Flagger handles them:
//!
//! - the primary gets its own ScaledObject `<name>-primary`, a copy of the target's with
//!   `scaleTargetRef` pointing at the primary Deployment, the replica bounds overridden by
//!   `primaryScalerReplicas`, a `horizontalPodAutoscalerConfig.name` suffixed `-primary`,
//!   and the triggers' queries rewritten for the primary: with `primaryScalerQueries`, the
//!   query of each trigger named there is replaced; without it, every query naming the
//!   target (or `<target>-canary`) is made to name `<target>-primary`;
//! - while the target is scaled to zero its ScaledObject is paused
//!   (`autoscaling.keda.sh/paused-replicas: "0"`), so KEDA does not scale it back up;
//!   the pause is lifted when the target is scaled up for an analysis, and when the
//!   Canary is deleted.
//!
//! ScaledObjects are read and written as dynamic objects: petrel needs KEDA's CRD in the
//! cluster only when a Canary names a ScaledObject.

use std::collections::BTreeMap;

use kube::api::{DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use kube::{Api, Client};
use serde_json::{Map, Value, json};

use super::primary::primary_name;
use super::{
    CANARY_LABEL, FIELD_MANAGER, MANAGED_BY_LABEL, PRIMARY_SUFFIX, WorkloadError, apply_params, canary_name,
    canary_namespace, canary_owner_reference, is_not_found,
};
use crate::api::Canary;
use crate::api::canary::AutoscalerRef;

pub const SCALED_OBJECT_KIND: &str = "ScaledObject";
pub const KEDA_API_VERSION: &str = "keda.sh/v1alpha1";
/// KEDA keeps the scale target at this many replicas while the annotation is present.
pub const PAUSED_REPLICAS_ANNOTATION: &str = "autoscaling.keda.sh/paused-replicas";

pub fn scaled_object_resource() -> ApiResource {
    ApiResource {
        group: "keda.sh".into(),
        version: "v1alpha1".into(),
        api_version: KEDA_API_VERSION.into(),
        kind: SCALED_OBJECT_KIND.into(),
        plural: "scaledobjects".into(),
    }
}

/// Whether the autoscaler reference names a KEDA ScaledObject.
pub fn is_scaled_object(autoscaler: &AutoscalerRef) -> bool {
    autoscaler.kind == SCALED_OBJECT_KIND && autoscaler.api_version.as_deref().is_none_or(|v| v == KEDA_API_VERSION)
}

/// The query of every trigger, rewritten for the primary (Flagger's rule, see the module).
pub fn primary_trigger_queries(triggers: &mut [Value], target: &str, overrides: Option<&BTreeMap<String, String>>) {
    let primary = primary_name(target);
    let canary = format!("{target}-canary");
    for trigger in triggers {
        let name = trigger.get("name").and_then(Value::as_str).map(String::from);
        let Some(metadata) = trigger.get_mut("metadata").and_then(Value::as_object_mut) else {
            continue;
        };
        match overrides {
            Some(overrides) => {
                if let Some(query) = name.and_then(|n| overrides.get(&n)) {
                    metadata.insert("query".into(), Value::String(query.clone()));
                }
            }
            None => {
                if let Some(query) = metadata.get("query").and_then(Value::as_str) {
                    // `<target>-canary` first, so that it does not become `<target>-primary-canary`.
                    let rewritten =
                        query.split(canary.as_str()).map(|part| part.replace(target, &primary)).collect::<Vec<_>>();
                    metadata.insert("query".into(), Value::String(rewritten.join(&primary)));
                }
            }
        }
    }
}

/// The primary's ScaledObject, built from the target's (`target_scaled_object`, as read).
pub fn build_primary_scaled_object(
    target_scaled_object: &Value,
    canary: &Canary,
    autoscaler: &AutoscalerRef,
) -> Result<Value, WorkloadError> {
    let target = &canary.spec.target_ref.name;
    let mut spec = target_scaled_object.get("spec").and_then(Value::as_object).cloned().unwrap_or_default();
    let scale_target = spec.get("scaleTargetRef").and_then(Value::as_object).cloned().unwrap_or_default();
    let mut primary_target = Map::new();
    primary_target.insert("name".into(), Value::String(primary_name(target)));
    for key in ["kind", "apiVersion", "envSourceContainerName"] {
        if let Some(value) = scale_target.get(key) {
            primary_target.insert(key.into(), value.clone());
        }
    }
    spec.insert("scaleTargetRef".into(), Value::Object(primary_target));
    if let Some(triggers) = spec.get_mut("triggers").and_then(Value::as_array_mut) {
        primary_trigger_queries(triggers, target, autoscaler.primary_scaler_queries.as_ref());
    }
    // Two ScaledObjects may not own one HPA: a named one gets the primary suffix.
    if let Some(name) = spec
        .get_mut("advanced")
        .and_then(|advanced| advanced.pointer_mut("/horizontalPodAutoscalerConfig/name"))
        .filter(|name| name.as_str().is_some_and(|n| !n.is_empty()))
    {
        *name = Value::String(format!("{}{PRIMARY_SUFFIX}", name.as_str().unwrap_or_default()));
    }
    if let Some(replicas) = &autoscaler.primary_scaler_replicas {
        if let Some(min) = replicas.min_replicas {
            spec.insert("minReplicaCount".into(), json!(min));
        }
        if let Some(max) = replicas.max_replicas {
            spec.insert("maxReplicaCount".into(), json!(max));
        }
    }
    let mut labels = copyable(target_scaled_object.pointer("/metadata/labels"));
    labels.insert(MANAGED_BY_LABEL.into(), Value::String("petrel".into()));
    labels.insert(CANARY_LABEL.into(), Value::String(canary_name(canary)?));
    let mut annotations = copyable(target_scaled_object.pointer("/metadata/annotations"));
    annotations.remove(PAUSED_REPLICAS_ANNOTATION);
    let owner = serde_json::to_value(canary_owner_reference(canary)?)
        .map_err(|source| WorkloadError::Serialize { what: "an owner reference".into(), source })?;
    let mut metadata = json!({
        "name": primary_scaled_object_name(&autoscaler.name),
        "namespace": canary_namespace(canary)?,
        "labels": labels,
        "ownerReferences": [owner],
    });
    if !annotations.is_empty() {
        metadata["annotations"] = Value::Object(annotations);
    }
    Ok(json!({ "apiVersion": KEDA_API_VERSION, "kind": SCALED_OBJECT_KIND, "metadata": metadata, "spec": spec }))
}

pub fn primary_scaled_object_name(name: &str) -> String {
    format!("{name}{PRIMARY_SUFFIX}")
}

/// Labels or annotations worth copying: not the ones tools write for their own bookkeeping.
fn copyable(map: Option<&Value>) -> Map<String, Value> {
    let mut out = map.and_then(Value::as_object).cloned().unwrap_or_default();
    out.retain(|key, _| {
        !key.starts_with("kubectl.kubernetes.io/")
            && !key.starts_with("helm.toolkit.fluxcd.io/")
            && !key.starts_with("kustomize.toolkit.fluxcd.io/")
            && !key.starts_with("argocd.argoproj.io/")
    });
    out
}

/// The `minReplicaCount` of a ScaledObject, when it asks for at least one replica.
pub fn min_replicas(scaled_object: &Value) -> Option<i32> {
    scaled_object
        .pointer("/spec/minReplicaCount")
        .and_then(Value::as_i64)
        .and_then(|n| i32::try_from(n).ok())
        .filter(|n| *n > 0)
}

/// Whether `scaled_object` is paused at zero replicas.
pub fn is_paused(scaled_object: &Value) -> bool {
    scaled_object.pointer("/metadata/annotations").and_then(|a| a.get(PAUSED_REPLICAS_ANNOTATION)).is_some()
}

fn api(client: &Client, canary: &Canary) -> Result<Api<DynamicObject>, WorkloadError> {
    Ok(Api::namespaced_with(client.clone(), &canary_namespace(canary)?, &scaled_object_resource()))
}

/// Reads the ScaledObject the Canary names; a missing one (or KEDA's CRD not installed)
/// is [`WorkloadError::AutoscalerNotFound`].
pub async fn read_target_scaled_object(client: &Client, canary: &Canary, name: &str) -> Result<Value, WorkloadError> {
    let namespace = canary_namespace(canary)?;
    let found = api(client, canary)?.get_opt(name).await;
    let not_found = || WorkloadError::AutoscalerNotFound {
        kind: SCALED_OBJECT_KIND,
        namespace: namespace.clone(),
        name: name.to_string(),
        hint: " (is KEDA installed? petrel needs its ScaledObject CRD, keda.sh/v1alpha1)",
    };
    match found {
        Ok(Some(object)) => serde_json::to_value(object)
            .map_err(|source| WorkloadError::Serialize { what: format!("ScaledObject {namespace}/{name}"), source }),
        Ok(None) => Err(not_found()),
        Err(e) if is_not_found(&e) => Err(not_found()),
        Err(e) => Err(WorkloadError::kube(format!("reading ScaledObject {namespace}/{name}"), e)),
    }
}

/// Creates or updates the primary's ScaledObject.
pub async fn ensure_primary_scaled_object(
    client: &Client,
    canary: &Canary,
    autoscaler: &AutoscalerRef,
) -> Result<(), WorkloadError> {
    let target = read_target_scaled_object(client, canary, &autoscaler.name).await?;
    let primary = build_primary_scaled_object(&target, canary, autoscaler)?;
    let name = primary_scaled_object_name(&autoscaler.name);
    api(client, canary)?.patch(&name, &apply_params(), &Patch::Apply(&primary)).await.map(drop).map_err(|e| {
        WorkloadError::kube(format!("applying ScaledObject {}/{name}", canary_namespace(canary).unwrap_or_default()), e)
    })
}

/// The target's ScaledObject as read with the workloads: its name and whether it is paused.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetScaler {
    pub namespace: String,
    pub name: String,
    pub paused: bool,
}

/// Pauses (`true`) or resumes the target's ScaledObject, unless it already is.
pub async fn set_paused(client: &Client, scaler: &TargetScaler, paused: bool) -> Result<(), WorkloadError> {
    if scaler.paused == paused {
        return Ok(());
    }
    patch_paused(client, &scaler.namespace, &scaler.name, paused).await
}

async fn patch_paused(client: &Client, namespace: &str, name: &str, paused: bool) -> Result<(), WorkloadError> {
    let value = if paused { Value::String("0".into()) } else { Value::Null };
    let patch = json!({ "metadata": { "annotations": { PAUSED_REPLICAS_ANNOTATION: value } } });
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &scaled_object_resource());
    api.patch(name, &params, &Patch::Merge(&patch)).await.map(drop).map_err(|e| {
        let verb = if paused { "pausing" } else { "resuming" };
        WorkloadError::kube(format!("{verb} ScaledObject {namespace}/{name}"), e)
    })
}

/// Pauses (`true`) or resumes the target's ScaledObject, when the Canary names one and it
/// is not already so (reads it first).
pub async fn set_target_paused(client: &Client, canary: &Canary, paused: bool) -> Result<(), WorkloadError> {
    let Some(autoscaler) = canary.spec.autoscaler_ref.as_ref().filter(|a| is_scaled_object(a)) else {
        return Ok(());
    };
    let target = match read_target_scaled_object(client, canary, &autoscaler.name).await {
        Ok(target) => target,
        // Resuming one that is gone (a Canary deleted with its app) is nothing to do.
        Err(WorkloadError::AutoscalerNotFound { .. }) if !paused => return Ok(()),
        Err(e) => return Err(e),
    };
    if is_paused(&target) == paused {
        return Ok(());
    }
    patch_paused(client, &canary_namespace(canary)?, &autoscaler.name, paused).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The e2e clusters serve ScaledObjects, so the KEDA scenarios' writes reach them.
    #[test]
    fn the_e2e_crds_serve_scaled_objects() {
        let served = crate::routers::testing::e2e_third_party_served();
        let r = scaled_object_resource();
        let wanted = (r.group.clone(), r.version.clone(), r.kind.clone(), r.plural.clone());
        assert!(served.contains(&wanted), "no CRD in e2e/crds/third-party serves {wanted:?}");
    }
    use crate::api::canary::ScalerReplicas;
    use crate::workloads::test_support::canary;

    fn scaled_object() -> Value {
        json!({
            "apiVersion": KEDA_API_VERSION, "kind": SCALED_OBJECT_KIND,
            "metadata": { "name": "podinfo-so", "namespace": "apps",
                "labels": { "team": "web", "helm.toolkit.fluxcd.io/name": "podinfo" },
                "annotations": { PAUSED_REPLICAS_ANNOTATION: "0", "note": "kept" } },
            "spec": {
                "scaleTargetRef": { "name": "podinfo", "kind": "Deployment", "apiVersion": "apps/v1" },
                "pollingInterval": 10, "cooldownPeriod": 20, "minReplicaCount": 1, "maxReplicaCount": 4,
                "advanced": { "horizontalPodAutoscalerConfig": { "name": "podinfo-hpa" } },
                "triggers": [
                    { "type": "prometheus", "name": "rps", "metadata": {
                        "serverAddress": "http://prometheus:9090",
                        "query": "sum(rate(http_requests_total{deployment=\"podinfo\"}[1m])) + sum(rate(x{deployment=\"podinfo-canary\"}[1m]))",
                        "threshold": "10" } },
                    { "type": "cpu", "metadata": { "value": "50" } },
                ],
            },
        })
    }

    fn autoscaler() -> AutoscalerRef {
        AutoscalerRef {
            api_version: Some(KEDA_API_VERSION.into()),
            kind: SCALED_OBJECT_KIND.into(),
            name: "podinfo-so".into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_primary_scaled_object_scales_the_primary_with_rewritten_queries() {
        let canary = canary("podinfo");
        let primary = build_primary_scaled_object(&scaled_object(), &canary, &autoscaler()).unwrap();
        assert_eq!(primary["metadata"]["name"], "podinfo-so-primary");
        assert_eq!(
            primary["spec"]["scaleTargetRef"],
            json!({ "name": "podinfo-primary", "kind": "Deployment", "apiVersion": "apps/v1" })
        );
        assert_eq!(
            primary["spec"]["triggers"][0]["metadata"]["query"],
            "sum(rate(http_requests_total{deployment=\"podinfo-primary\"}[1m])) + sum(rate(x{deployment=\"podinfo-primary\"}[1m]))"
        );
        assert_eq!(primary["spec"]["triggers"][1], scaled_object()["spec"]["triggers"][1]);
        assert_eq!(primary["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["name"], "podinfo-hpa-primary");
        assert_eq!(primary["spec"]["minReplicaCount"], 1);
        // The target's pause is not copied: the primary always scales.
        assert_eq!(primary["metadata"]["annotations"], json!({ "note": "kept" }));
        assert_eq!(primary["metadata"]["labels"]["team"], "web");
        assert!(primary["metadata"]["labels"].get("helm.toolkit.fluxcd.io/name").is_none());
        assert_eq!(primary["metadata"]["ownerReferences"][0]["kind"], "Canary");
    }

    #[test]
    fn primary_scaler_queries_replace_only_the_triggers_they_name() {
        let mut autoscaler = autoscaler();
        autoscaler.primary_scaler_queries = Some(BTreeMap::from([("rps".to_string(), "sum(primary_rps)".to_string())]));
        autoscaler.primary_scaler_replicas = Some(ScalerReplicas { min_replicas: Some(2), max_replicas: Some(8) });
        let primary = build_primary_scaled_object(&scaled_object(), &canary("podinfo"), &autoscaler).unwrap();
        assert_eq!(primary["spec"]["triggers"][0]["metadata"]["query"], "sum(primary_rps)");
        assert_eq!(primary["spec"]["triggers"][1]["metadata"], json!({ "value": "50" }));
        assert_eq!(
            (primary["spec"]["minReplicaCount"].clone(), primary["spec"]["maxReplicaCount"].clone()),
            (json!(2), json!(8))
        );
    }

    #[test]
    fn a_target_named_inside_another_word_is_rewritten_like_flagger_does() {
        let mut triggers = vec![json!({ "name": "q", "metadata": { "query": "app-canary app app-primary" } })];
        primary_trigger_queries(&mut triggers, "app", None);
        // Flagger rewrites every occurrence of the target's name, including inside
        // `app-primary`: a query that already names the primary is left to the user.
        assert_eq!(triggers[0]["metadata"]["query"], "app-primary app-primary app-primary-primary");
    }

    #[test]
    fn kinds_and_pauses_are_recognised() {
        assert!(is_scaled_object(&autoscaler()));
        assert!(is_scaled_object(&AutoscalerRef { api_version: None, ..autoscaler() }));
        assert!(!is_scaled_object(&AutoscalerRef { kind: "HorizontalPodAutoscaler".into(), ..autoscaler() }));
        assert!(is_paused(&scaled_object()));
        assert!(!is_paused(&json!({ "metadata": {} })));
        assert_eq!(min_replicas(&scaled_object()), Some(1));
        assert_eq!(min_replicas(&json!({ "spec": { "minReplicaCount": 0 } })), None);
    }
}
