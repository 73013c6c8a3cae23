//! Provider `knative`: the `spec.traffic` block of the target Knative Service
//! (serving.knative.dev/v1). The Service's revisions are the primary and the canary; petrel
//! creates no Services and no route objects of its own.
//!
//! The primary is the revision named by the Service's annotation
//! [`PRIMARY_REVISION_ANNOTATION`] (written by `workloads::knative` on initialisation and
//! promotion); the canary is the revision under analysis, `status.lastAppliedSpec` of the
//! Canary. Each traffic target is tagged `primary` or `canary`, so Knative also serves
//! `primary-<svc>` and `canary-<svc>` URLs, and so the split reads back without knowing
//! which revision is which. Flagger writes `latestRevision: true` for the canary instead,
//! which sends the canary's share to whatever revision Knative created last, analysed or
//! not; petrel names the analysed revision. No header matching, no mirroring.

use futures::future::BoxFuture;
use kube::api::{Patch, PatchParams};
use kube::core::ApiResource;
use kube::{Api, Client};
use serde_json::{Value, json};

use super::{
    FIELD_MANAGER, Observed, RouterError, RouterMemory, TrafficRouter, Weights, ab_matches, api_resource, canary_key,
    ledger_key, malformed, namespace_of, observed_version, read_dynamic, unsupported, weight_field,
};
use petrel_api::Canary;

const PROVIDER: &str = "knative";
const KIND: &str = "Service";
/// Annotation on the Knative Service naming its primary revision.
pub const PRIMARY_REVISION_ANNOTATION: &str = "petrel.dev/primary-revision";
/// Traffic target tags.
pub const PRIMARY_TAG: &str = "primary";
pub const CANARY_TAG: &str = "canary";

pub fn service_resource() -> ApiResource {
    api_resource("serving.knative.dev", "v1", KIND, "services")
}

pub fn revision_resource() -> ApiResource {
    api_resource("serving.knative.dev", "v1", "Revision", "revisions")
}

/// The traffic block for these weights: the primary revision tagged `primary`, and, when a
/// revision other than the primary is under analysis, that revision tagged `canary`.
pub fn build_traffic(
    canary: &Canary,
    primary_revision: &str,
    canary_revision: Option<&str>,
    weights: Weights,
) -> Result<Value, RouterError> {
    if weights.mirror() {
        return Err(unsupported(PROVIDER, "mirror traffic"));
    }
    if !ab_matches(canary).is_empty() {
        return Err(unsupported(PROVIDER, "route by header or cookie (A/B testing); use weights instead"));
    }
    let under_analysis = canary_revision.filter(|r| *r != primary_revision);
    match under_analysis {
        None if weights.canary() > 0 => Err(RouterError::InvalidCanary {
            canary: canary_key(canary),
            reason: format!(
                "cannot send {}% to a canary revision: no revision other than the primary {primary_revision} is under analysis",
                weights.canary()
            ),
        }),
        None => Ok(json!([{ "revisionName": primary_revision, "percent": 100, "tag": PRIMARY_TAG }])),
        Some(revision) => Ok(json!([
            { "revisionName": primary_revision, "percent": weights.primary(), "tag": PRIMARY_TAG },
            { "revisionName": revision, "percent": weights.canary(), "tag": CANARY_TAG },
        ])),
    }
}

/// The server-side apply body that sets only the Knative Service's traffic block.
pub fn build_traffic_patch(canary: &Canary, traffic: Value) -> Result<Value, RouterError> {
    let resource = service_resource();
    Ok(json!({
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": { "name": canary.spec.target_ref.name, "namespace": namespace_of(canary)? },
        "spec": { "traffic": traffic },
    }))
}

/// The weights of a Knative Service's traffic block, by tag (targets without petrel's tags
/// are not petrel's split).
pub fn weights_of(service: &Value) -> Result<Weights, RouterError> {
    let bad = |reason: String| malformed("Knative Service", service, reason);
    let traffic = service
        .pointer("/spec/traffic")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("it has no spec.traffic".into()))?;
    let weight_of = |tag: &str| -> Result<Option<u8>, RouterError> {
        traffic
            .iter()
            .find(|t| t.get("tag").and_then(Value::as_str) == Some(tag))
            .map(|t| weight_field(t.get("percent"), bad))
            .transpose()
    };
    let primary = weight_of(PRIMARY_TAG)?.ok_or_else(|| bad(format!("no traffic target is tagged {PRIMARY_TAG}")))?;
    Weights::new(primary, weight_of(CANARY_TAG)?.unwrap_or(0), false)
}

/// The primary revision a Knative Service's annotation names.
pub fn primary_revision_of(service: &Value) -> Option<&str> {
    service.pointer("/metadata/annotations").and_then(|a| a.get(PRIMARY_REVISION_ANNOTATION)).and_then(Value::as_str)
}

/// Writes the traffic block of the user's Knative Service, through the write ledger like
/// the other routers: a traffic block petrel already wrote is not written again.
pub struct KnativeRouter {
    client: Client,
    memory: RouterMemory,
}

/// The ledger key of a Knative Service's traffic block (not `Service/...`: that is the
/// key of the core Services petrel writes for other Canaries).
fn traffic_key(namespace: &str, name: &str) -> String {
    ledger_key("Service.serving.knative.dev", namespace, name)
}

impl KnativeRouter {
    pub fn new(client: Client, memory: RouterMemory) -> Self {
        KnativeRouter { client, memory }
    }

    async fn service(&self, canary: &Canary) -> Result<Value, RouterError> {
        let namespace = namespace_of(canary)?;
        let name = canary.spec.target_ref.name.clone();
        read_dynamic(&self.client, &namespace, &service_resource(), &name).await?.ok_or_else(|| RouterError::NotFound {
            kind: "Knative Service".into(),
            namespace,
            name,
            reason: format!("it is the targetRef of Canary {}", canary_key(canary)),
        })
    }

    fn primary_revision(canary: &Canary, service: &Value) -> Result<String, RouterError> {
        primary_revision_of(service).map(String::from).ok_or_else(|| {
            malformed(
                "Knative Service",
                service,
                format!(
                    "it has no {PRIMARY_REVISION_ANNOTATION} annotation yet (Canary {} has not initialised it)",
                    canary_key(canary)
                ),
            )
        })
    }

    /// Applies the traffic block for `weights` unless the ledger shows petrel wrote exactly
    /// this block and the Service is still at `observed`.
    async fn apply(
        &self,
        canary: &Canary,
        service: &Value,
        weights: Weights,
        observed: Observed,
    ) -> Result<(), RouterError> {
        let primary = Self::primary_revision(canary, service)?;
        let under_analysis = canary.status.as_ref().and_then(|s| s.last_applied_spec.as_deref());
        let body = build_traffic_patch(canary, build_traffic(canary, &primary, under_analysis, weights)?)?;
        let namespace = namespace_of(canary)?;
        let name = canary.spec.target_ref.name.clone();
        let key = traffic_key(&namespace, &name);
        let api: Api<kube::api::DynamicObject> =
            Api::namespaced_with(self.client.clone(), &namespace, &service_resource());
        let write = async {
            match api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body)).await {
                Ok(applied) => Ok(applied.metadata.resource_version),
                Err(source) => Err(RouterError::Api {
                    verb: "apply the traffic block of",
                    kind: "Knative Service".into(),
                    namespace: namespace.clone(),
                    name: name.clone(),
                    source: Box::new(source),
                }),
            }
        };
        self.memory.ledger.apply(key, &body, &observed, write).await
    }
}

impl TrafficRouter for KnativeRouter {
    fn reconcile<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<(), RouterError>> {
        Box::pin(async move {
            let service = self.service(canary).await?;
            // Reconcile runs on every tick, also mid-release: a split petrel wrote stays.
            if weights_of(&service).is_ok() {
                return Ok(());
            }
            self.apply(canary, &service, Weights::primary_only(), observed_version(Some(&service))).await
        })
    }

    fn set_routes<'a>(&'a self, canary: &'a Canary, weights: Weights) -> BoxFuture<'a, Result<(), RouterError>> {
        Box::pin(async move {
            let service = self.service(canary).await?;
            self.apply(canary, &service, weights, Observed::Unknown).await
        })
    }

    fn finalize<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<(), RouterError>> {
        Box::pin(async move {
            // The Knative Service is the user's: traffic stays, all of it on the primary.
            match self.service(canary).await {
                Ok(service) if primary_revision_of(&service).is_some() => {
                    self.apply(canary, &service, Weights::primary_only(), observed_version(Some(&service))).await?;
                    let namespace = namespace_of(canary)?;
                    self.memory.ledger.forget(&traffic_key(&namespace, &canary.spec.target_ref.name));
                    Ok(())
                }
                Ok(_) => Ok(()),
                Err(RouterError::NotFound { .. }) => Ok(()),
                Err(other) => Err(other),
            }
        })
    }

    fn required_kinds(&self, _canary: &Canary) -> Vec<ApiResource> {
        vec![service_resource(), revision_resource()]
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testing::{ab_canary, any_weights, assert_manifest, canary, weights};
    use super::*;
    use petrel_api::canary::{CanaryStatus, TargetRef};

    fn knative_canary() -> Canary {
        let mut canary = canary();
        canary.spec.provider = Some("knative".into());
        canary.spec.target_ref =
            TargetRef { api_version: "serving.knative.dev/v1".into(), kind: "Service".into(), name: "podinfo".into() };
        canary.status =
            Some(CanaryStatus { last_applied_spec: Some("podinfo-00002".into()), ..CanaryStatus::default() });
        canary
    }

    fn patch(w: Weights) -> Value {
        let canary = knative_canary();
        build_traffic_patch(&canary, build_traffic(&canary, "podinfo-00001", Some("podinfo-00002"), w).unwrap())
            .unwrap()
    }

    #[test]
    fn traffic_blocks_match_their_manifests() {
        assert_manifest(&patch(weights(100, 0, false)), "knative_100_0");
        assert_manifest(&patch(weights(90, 10, false)), "knative_90_10");
        let canary = knative_canary();
        let settled = build_traffic(&canary, "podinfo-00002", Some("podinfo-00002"), weights(100, 0, false)).unwrap();
        assert_manifest(&settled, "knative_promoted");
    }

    #[test]
    fn no_canary_share_without_a_revision_under_analysis() {
        let canary = knative_canary();
        let err = build_traffic(&canary, "podinfo-00001", None, weights(80, 20, false)).unwrap_err();
        assert!(matches!(err, RouterError::InvalidCanary { .. }), "{err}");
        assert!(build_traffic(&canary, "podinfo-00001", Some("podinfo-00001"), weights(80, 20, false)).is_err());
        assert!(build_traffic(&ab_canary(), "a", Some("b"), weights(0, 100, false)).is_err());
        assert!(build_traffic(&canary, "a", Some("b"), weights(100, 0, true)).is_err());
    }

    #[test]
    fn weights_read_by_tag_not_by_revision() {
        // Promotion moves the annotation before the traffic: the tags still tell the sides.
        let service = json!({ "metadata": { "annotations": { PRIMARY_REVISION_ANNOTATION: "podinfo-00002" } }, "spec": patch(weights(40, 60, false))["spec"] });
        assert_eq!(weights_of(&service).unwrap(), weights(40, 60, false));
        assert!(weights_of(&json!({ "spec": { "traffic": [{ "latestRevision": true, "percent": 100 }] } })).is_err());
    }

    proptest! {
        #[test]
        fn weights_round_trip(w in any_weights(false)) {
            let body = patch(w);
            let traffic = body["spec"]["traffic"].as_array().unwrap();
            prop_assert_eq!(traffic.iter().map(|t| t["percent"].as_u64().unwrap()).sum::<u64>(), 100);
            prop_assert_eq!(weights_of(&body).unwrap(), w);
        }
    }
}
