//! Provider `apisix`: a weighted clone of the user's ApisixRoute (apisix.apache.org/v2,
//! `spec.routeRef`), named `<route>-<svc>-canary`, as Flagger writes it.
//!
//! The clone holds the first `http` rule of the user's route whose single backend is the
//! apex Service, with priority 10000 (so APISIX prefers it over the user's route for the
//! same requests) and two backends: `<svc>-primary` and `<svc>-canary`, weighted. The
//! user's route is only read. No header matching and no mirroring here.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use kube::Client;
use kube::core::ApiResource;
use serde_json::{Map, Value, json};

use super::nginx::{copied_label, gitops_tracking};
use super::{
    Observed, RouteObject, RouterError, RouterMemory, ServiceNames, TrafficRouter, Weights, ab_matches, api_resource,
    apply_dynamic, canary_key, delete_dynamic, generated_metadata, ledger_key, malformed, namespace_of,
    observed_version, read_dynamic, services, unsupported, weight_field,
};
use petrel_api::Canary;

const PROVIDER: &str = "apisix";
const KIND: &str = "ApisixRoute";
/// The priority of the canary rule: above any the user sets (Flagger uses the same).
pub const CANARY_PRIORITY: i64 = 10_000;

pub fn apisix_route_resource() -> ApiResource {
    api_resource("apisix.apache.org", "v2", KIND, "apisixroutes")
}

/// The name of the user's ApisixRoute.
fn route_ref_name(canary: &Canary) -> Result<String, RouterError> {
    canary.spec.route_ref.as_ref().map(|r| r.name.clone()).filter(|n| !n.is_empty()).ok_or_else(|| {
        RouterError::InvalidCanary {
            canary: canary_key(canary),
            reason: "provider apisix needs spec.routeRef, the ApisixRoute to clone".into(),
        }
    })
}

/// `<route>-<svc>-canary`, the ApisixRoute petrel writes.
pub fn canary_route_name(canary: &Canary) -> Result<String, RouterError> {
    Ok(format!("{}-{}-canary", route_ref_name(canary)?, ServiceNames::of(canary).apex))
}

/// Whether a backend of an http rule sends to `service`.
fn sends_to(backend: &Value, service: &str) -> bool {
    backend.get("serviceName").and_then(Value::as_str) == Some(service)
}

/// The canary ApisixRoute for these weights, cloned from the user's route.
pub fn build_canary_route(canary: &Canary, user_route: &Value, weights: Weights) -> Result<Value, RouterError> {
    if weights.mirror() {
        return Err(unsupported(PROVIDER, "mirror traffic"));
    }
    if !ab_matches(canary).is_empty() {
        return Err(unsupported(PROVIDER, "route by header or cookie (A/B testing); use weights instead"));
    }
    let names = ServiceNames::of(canary);
    let bad = |reason: String| malformed(KIND, user_route, reason);
    let rules =
        user_route.pointer("/spec/http").and_then(Value::as_array).ok_or_else(|| bad("spec.http is empty".into()))?;
    let rule = rules
        .iter()
        .find(|rule| {
            rule.get("backends").and_then(Value::as_array).is_some_and(|b| b.iter().any(|b| sends_to(b, &names.apex)))
        })
        .ok_or_else(|| bad(format!("no http rule has a backend to Service {}", names.apex)))?;
    let Some([backend]) = rule.get("backends").and_then(Value::as_array).map(Vec::as_slice) else {
        return Err(bad(format!(
            "http rule {} has more than one backend; petrel splits a rule whose only backend is Service {}",
            rule.get("name").and_then(Value::as_str).unwrap_or("?"),
            names.apex
        )));
    };
    let mut clone = rule.as_object().cloned().unwrap_or_default();
    clone.insert("priority".into(), json!(CANARY_PRIORITY));
    let side = |service: &str, weight: u8| {
        let mut side = Map::new();
        side.insert("serviceName".into(), json!(service));
        for key in ["servicePort", "resolveGranularity", "subset"] {
            if let Some(value) = backend.get(key) {
                side.insert(key.into(), value.clone());
            }
        }
        side.insert("weight".into(), json!(weight));
        Value::Object(side)
    };
    clone.insert(
        "backends".into(),
        json!([side(&names.primary, weights.primary()), side(&names.canary, weights.canary())]),
    );
    let mut spec = user_route.get("spec").and_then(Value::as_object).cloned().unwrap_or_default();
    spec.insert("http".into(), json!([clone]));

    let copied = |field: &str, keep: &dyn Fn(&str) -> bool| -> BTreeMap<String, String> {
        user_route
            .pointer(&format!("/metadata/{field}"))
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter(|(k, _)| keep(k))
            .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
            .collect()
    };
    let labels = copied("labels", &copied_label);
    let annotations = copied("annotations", &|k: &str| {
        k != "kubectl.kubernetes.io/last-applied-configuration" && !gitops_tracking(k)
    });
    let metadata = generated_metadata(canary, &canary_route_name(canary)?, &labels, &annotations)?;
    let resource = apisix_route_resource();
    Ok(json!({
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": serde_json::to_value(metadata).map_err(|source| RouterError::Json { kind: KIND.into(), name: canary_key(canary), source })?,
        "spec": spec,
    }))
}

/// The weights of a canary ApisixRoute built by [`build_canary_route`].
pub fn weights_of(route: &Value, names: &ServiceNames) -> Result<Weights, RouterError> {
    let bad = |reason: String| malformed(KIND, route, reason);
    let backends = route
        .pointer("/spec/http/0/backends")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("its first http rule has no backends".into()))?;
    let weight_of = |service: &str| -> Result<u8, RouterError> {
        let backend = backends
            .iter()
            .find(|b| sends_to(b, service))
            .ok_or_else(|| bad(format!("it has no backend {service}")))?;
        weight_field(backend.get("weight"), bad)
    };
    Weights::new(weight_of(&names.primary)?, weight_of(&names.canary)?, false)
}

pub struct ApisixRouter {
    client: Client,
    memory: RouterMemory,
}

impl ApisixRouter {
    pub fn new(client: Client, memory: RouterMemory) -> Self {
        ApisixRouter { client, memory }
    }

    async fn user_route(&self, canary: &Canary) -> Result<Value, RouterError> {
        let name = route_ref_name(canary)?;
        let namespace = namespace_of(canary)?;
        read_dynamic(&self.client, &namespace, &apisix_route_resource(), &name).await?.ok_or_else(|| {
            RouterError::NotFound {
                kind: KIND.into(),
                namespace,
                name,
                reason: format!("it is the routeRef of Canary {}", canary_key(canary)),
            }
        })
    }

    async fn current(&self, canary: &Canary) -> Result<Option<Value>, RouterError> {
        read_dynamic(&self.client, &namespace_of(canary)?, &apisix_route_resource(), &canary_route_name(canary)?).await
    }

    /// Applies the canary route unless the ledger shows it unchanged at `observed`.
    async fn apply(&self, canary: &Canary, weights: Weights, observed: Observed) -> Result<(), RouterError> {
        let manifest = build_canary_route(canary, &self.user_route(canary).await?, weights)?;
        let object = RouteObject { resource: apisix_route_resource(), manifest };
        apply_dynamic(&self.client, &self.memory.ledger, &namespace_of(canary)?, &object, &observed).await
    }
}

impl TrafficRouter for ApisixRouter {
    fn reconcile<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<(), RouterError>> {
        Box::pin(async move {
            // A missing routeRef or route fails before anything is written.
            self.user_route(canary).await?;
            services::ensure_services(&self.client, &self.memory, canary).await?;
            // Reconcile runs on every tick, also mid-release: keep the weights in place.
            let current = self.current(canary).await?;
            let weights = match &current {
                Some(existing) => weights_of(existing, &ServiceNames::of(canary))?,
                None => Weights::primary_only(),
            };
            self.apply(canary, weights, observed_version(current.as_ref())).await
        })
    }

    fn set_routes<'a>(&'a self, canary: &'a Canary, weights: Weights) -> BoxFuture<'a, Result<(), RouterError>> {
        Box::pin(self.apply(canary, weights, Observed::Unknown))
    }

    fn finalize<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<(), RouterError>> {
        Box::pin(async move {
            let (namespace, name) = (namespace_of(canary)?, canary_route_name(canary)?);
            self.memory.ledger.forget(&ledger_key(KIND, &namespace, &name));
            delete_dynamic(&self.client, &namespace, &apisix_route_resource(), &name).await
        })
    }

    fn required_kinds(&self, _canary: &Canary) -> Vec<ApiResource> {
        vec![apisix_route_resource()]
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testing::{ab_canary, any_weights, assert_manifest, canary, weights};
    use super::*;
    use petrel_api::common::ObjectRef;

    fn with_route_ref(mut canary: Canary) -> Canary {
        canary.spec.provider = Some("apisix".into());
        canary.spec.route_ref = Some(ObjectRef {
            api_version: Some("apisix.apache.org/v2".into()),
            kind: Some("ApisixRoute".into()),
            name: "podinfo".into(),
            ..ObjectRef::default()
        });
        canary
    }

    /// The ApisixRoute of Flagger's APISIX tutorial, plus a second rule to another Service
    /// and GitOps metadata that must not be copied.
    fn user_route() -> Value {
        json!({
            "apiVersion": "apisix.apache.org/v2",
            "kind": "ApisixRoute",
            "metadata": {
                "name": "podinfo", "namespace": "test", "resourceVersion": "42",
                "labels": { "app": "podinfo", "app.kubernetes.io/instance": "podinfo-prod" },
                "annotations": { "kubectl.kubernetes.io/last-applied-configuration": "{}", "team": "web" },
            },
            "spec": {
                "http": [
                    {
                        "name": "static",
                        "match": { "hosts": ["app.example.com"], "paths": ["/static/*"] },
                        "backends": [{ "serviceName": "assets", "servicePort": 80 }],
                    },
                    {
                        "name": "method",
                        "match": { "hosts": ["app.example.com"], "methods": ["GET"], "paths": ["/*"] },
                        "backends": [{ "serviceName": "podinfo", "servicePort": 9898, "resolveGranularity": "service" }],
                        "plugins": [{ "name": "prometheus", "enable": true, "config": { "prefer_name": true } }],
                    },
                ],
            },
        })
    }

    #[test]
    fn routes_match_their_manifests() {
        let canary = with_route_ref(canary());
        assert_manifest(&build_canary_route(&canary, &user_route(), weights(100, 0, false)).unwrap(), "apisix_100_0");
        assert_manifest(&build_canary_route(&canary, &user_route(), weights(90, 10, false)).unwrap(), "apisix_90_10");
    }

    #[test]
    fn a_route_without_a_lone_apex_backend_is_malformed() {
        let canary = with_route_ref(canary());
        let mut route = user_route();
        route["spec"]["http"][1]["backends"][0]["serviceName"] = json!("elsewhere");
        let err = build_canary_route(&canary, &route, weights(100, 0, false)).unwrap_err();
        assert!(matches!(err, RouterError::Malformed { .. }) && err.to_string().contains("podinfo"), "{err}");
        let mut route = user_route();
        route["spec"]["http"][1]["backends"] = json!([{ "serviceName": "podinfo" }, { "serviceName": "other" }]);
        let err = build_canary_route(&canary, &route, weights(100, 0, false)).unwrap_err();
        assert!(err.to_string().contains("more than one backend"), "{err}");
    }

    #[test]
    fn ab_mirroring_and_a_missing_route_ref_are_refused() {
        let route = user_route();
        assert!(matches!(
            build_canary_route(&with_route_ref(ab_canary()), &route, weights(0, 100, false)),
            Err(RouterError::Unsupported { .. })
        ));
        assert!(matches!(
            build_canary_route(&with_route_ref(canary()), &route, weights(100, 0, true)),
            Err(RouterError::Unsupported { .. })
        ));
        let err = canary_route_name(&canary()).unwrap_err();
        assert!(matches!(err, RouterError::InvalidCanary { .. }) && err.to_string().contains("routeRef"), "{err}");
    }

    proptest! {
        #[test]
        fn weights_round_trip(w in any_weights(false)) {
            let canary = with_route_ref(canary());
            let built = build_canary_route(&canary, &user_route(), w).unwrap();
            let backends = built["spec"]["http"][0]["backends"].as_array().unwrap();
            prop_assert_eq!(backends.iter().map(|b| b["weight"].as_u64().unwrap()).sum::<u64>(), 100);
            prop_assert_eq!(weights_of(&built, &ServiceNames::of(&canary)).unwrap(), w);
        }
    }
}
