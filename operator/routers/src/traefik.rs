//! Provider `traefik`: a TraefikService `<svc>` (traefik.io/v1alpha1) of kind weighted,
//! splitting traffic between the `<svc>-primary` and `<svc>-canary` Services. The user's
//! IngressRoute points at this TraefikService. No header matching, no mirroring here.

use kube::core::ApiResource;
use serde_json::{Value, json};

use super::{
    MeshRoutes, RouteObject, RouterError, ServiceNames, Weights, ab_matches, api_resource, malformed, manifest,
    service_port, unsupported, weight_field,
};
use petrel_api::Canary;

const PROVIDER: &str = "traefik";

pub fn traefik_service_resource() -> ApiResource {
    api_resource("traefik.io", "v1alpha1", "TraefikService", "traefikservices")
}

/// The TraefikService `<svc>` for these weights.
pub fn build_traefik_service(canary: &Canary, weights: Weights) -> Result<Value, RouterError> {
    if weights.mirror() {
        return Err(unsupported(PROVIDER, "mirror traffic from a weighted TraefikService"));
    }
    if !ab_matches(canary).is_empty() {
        return Err(unsupported(PROVIDER, "route by header or cookie (A/B testing); use weights instead"));
    }
    let names = ServiceNames::of(canary);
    let port = service_port(canary);
    let spec = json!({
        "weighted": {
            "services": [
                { "name": names.primary, "port": port, "weight": weights.primary() },
                { "name": names.canary, "port": port, "weight": weights.canary() },
            ],
        },
    });
    manifest(&traefik_service_resource(), canary, &names.apex, spec)
}

/// The weights of a TraefikService built by [`build_traefik_service`].
pub fn weights_of(service: &Value) -> Result<Weights, RouterError> {
    let bad = |reason: String| malformed("TraefikService", service, reason);
    let apex = service.pointer("/metadata/name").and_then(Value::as_str).ok_or_else(|| bad("it has no name".into()))?;
    let services = service
        .pointer("/spec/weighted/services")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("it has no spec.weighted.services".into()))?;
    let weight_of = |name: String| -> Result<u8, RouterError> {
        let found = services
            .iter()
            .find(|s| s.get("name").and_then(Value::as_str) == Some(name.as_str()))
            .ok_or_else(|| bad(format!("it does not weigh service {name}")))?;
        weight_field(found.get("weight"), bad)
    };
    let names = ServiceNames::from_apex(apex);
    Weights::new(weight_of(names.primary)?, weight_of(names.canary)?, false)
}

pub(crate) struct Traefik;

impl MeshRoutes for Traefik {
    fn build(canary: &Canary, weights: Weights) -> Result<Vec<RouteObject>, RouterError> {
        Ok(vec![RouteObject {
            resource: traefik_service_resource(),
            manifest: build_traefik_service(canary, weights)?,
        }])
    }

    fn weighted_object(canary: &Canary) -> (ApiResource, String) {
        (traefik_service_resource(), ServiceNames::of(canary).apex)
    }

    fn weights_of(obj: &Value) -> Result<Weights, RouterError> {
        weights_of(obj)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testing::{ab_canary, any_weights, assert_manifest, canary, weights};
    use super::*;

    #[test]
    fn services_match_their_manifests() {
        assert_manifest(&build_traefik_service(&canary(), weights(100, 0, false)).unwrap(), "traefik_100_0");
        assert_manifest(&build_traefik_service(&canary(), weights(90, 10, false)).unwrap(), "traefik_90_10");
    }

    #[test]
    fn ab_and_mirroring_are_refused() {
        assert!(matches!(
            build_traefik_service(&ab_canary(), weights(0, 100, false)),
            Err(RouterError::Unsupported { .. })
        ));
        assert!(matches!(
            build_traefik_service(&canary(), weights(100, 0, true)),
            Err(RouterError::Unsupported { .. })
        ));
    }

    proptest! {
        #[test]
        fn weights_round_trip(w in any_weights(false)) {
            prop_assert_eq!(weights_of(&build_traefik_service(&canary(), w).unwrap()).unwrap(), w);
        }
    }
}
