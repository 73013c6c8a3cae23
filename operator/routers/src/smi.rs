//! Providers `linkerd` and `smi`: an SMI TrafficSplit `<svc>` (split.smi-spec.io/v1alpha2)
//! for the apex Service, with integer weights on `<svc>-primary` and `<svc>-canary`.
//! SMI has no header matching and no mirroring; asking for either is an error.

use kube::core::ApiResource;
use serde_json::{Value, json};

use super::{
    MeshRoutes, RouteObject, RouterError, ServiceNames, Weights, ab_matches, api_resource, malformed, manifest,
    unsupported, weight_field,
};
use petrel_api::Canary;

const PROVIDER: &str = "smi";

pub fn traffic_split_resource() -> ApiResource {
    api_resource("split.smi-spec.io", "v1alpha2", "TrafficSplit", "trafficsplits")
}

/// The TrafficSplit `<svc>` for these weights.
pub fn build_traffic_split(canary: &Canary, weights: Weights) -> Result<Value, RouterError> {
    if weights.mirror() {
        return Err(unsupported(PROVIDER, "mirror traffic (TrafficSplit has no mirroring)"));
    }
    if !ab_matches(canary).is_empty() {
        return Err(unsupported(PROVIDER, "route by header or cookie (A/B testing); use weights instead"));
    }
    let names = ServiceNames::of(canary);
    let spec = json!({
        "service": names.apex,
        "backends": [
            { "service": names.primary, "weight": weights.primary() },
            { "service": names.canary, "weight": weights.canary() },
        ],
    });
    manifest(&traffic_split_resource(), canary, &names.apex, spec)
}

/// The weights of a TrafficSplit built by [`build_traffic_split`].
pub fn weights_of(split: &Value) -> Result<Weights, RouterError> {
    let bad = |reason: String| malformed("TrafficSplit", split, reason);
    let apex = split.pointer("/metadata/name").and_then(Value::as_str).ok_or_else(|| bad("it has no name".into()))?;
    let backends =
        split.pointer("/spec/backends").and_then(Value::as_array).ok_or_else(|| bad("it has no backends".into()))?;
    let weight_of = |service: String| -> Result<u8, RouterError> {
        let backend = backends
            .iter()
            .find(|b| b.get("service").and_then(Value::as_str) == Some(service.as_str()))
            .ok_or_else(|| bad(format!("it has no backend {service}")))?;
        weight_field(backend.get("weight"), bad)
    };
    let names = ServiceNames::from_apex(apex);
    Weights::new(weight_of(names.primary)?, weight_of(names.canary)?, false)
}

pub(crate) struct Smi;

impl MeshRoutes for Smi {
    fn build(canary: &Canary, weights: Weights) -> Result<Vec<RouteObject>, RouterError> {
        Ok(vec![RouteObject { resource: traffic_split_resource(), manifest: build_traffic_split(canary, weights)? }])
    }

    fn weighted_object(canary: &Canary) -> (ApiResource, String) {
        (traffic_split_resource(), ServiceNames::of(canary).apex)
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
    fn splits_match_their_manifests() {
        assert_manifest(&build_traffic_split(&canary(), weights(100, 0, false)).unwrap(), "smi_100_0");
        assert_manifest(&build_traffic_split(&canary(), weights(90, 10, false)).unwrap(), "smi_90_10");
    }

    #[test]
    fn ab_and_mirroring_are_refused() {
        assert!(matches!(
            build_traffic_split(&ab_canary(), weights(0, 100, false)),
            Err(RouterError::Unsupported { .. })
        ));
        assert!(matches!(build_traffic_split(&canary(), weights(100, 0, true)), Err(RouterError::Unsupported { .. })));
    }

    #[test]
    fn weights_that_do_not_add_up_are_malformed_on_read() {
        let mut split = build_traffic_split(&canary(), weights(90, 10, false)).unwrap();
        split["spec"]["backends"][1]["weight"] = json!(20);
        assert!(matches!(weights_of(&split), Err(RouterError::InvalidWeights { primary: 90, canary: 20 })));
        split["spec"]["backends"][1]["weight"] = json!("10");
        assert!(matches!(weights_of(&split), Err(RouterError::Malformed { .. })));
    }

    proptest! {
        #[test]
        fn weights_round_trip(w in any_weights(false)) {
            prop_assert_eq!(weights_of(&build_traffic_split(&canary(), w).unwrap()).unwrap(), w);
        }
    }
}
