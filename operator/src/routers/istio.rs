//! Provider `istio`: a VirtualService `<svc>` (networking.istio.io/v1) whose first HTTP
//! route splits traffic between `<svc>-primary` and `<svc>-canary`, plus DestinationRules
//! `<svc>-primary` and `<svc>-canary` carrying `spec.service.trafficPolicy`.
//!
//! A/B: the first HTTP route carries the `analysis.match` conditions (each combined with
//! `spec.service.match`) and the weights; a second route sends the rest to the primary.
//! Mirroring: `mirror` and `mirrorPercentage` on the first route.

use kube::core::ApiResource;
use serde_json::{Map, Value, json};

use super::{
    MeshRoutes, RouteObject, RouterError, ServiceNames, Weights, ab_matches, api_resource, canary_key, malformed,
    manifest, mirror_percent, service_port, unsupported, weight_field,
};
use crate::api::Canary;

const PROVIDER: &str = "istio";
const GROUP: &str = "networking.istio.io";
const VERSION: &str = "v1";

pub fn virtual_service_resource() -> ApiResource {
    api_resource(GROUP, VERSION, "VirtualService", "virtualservices")
}

pub fn destination_rule_resource() -> ApiResource {
    api_resource(GROUP, VERSION, "DestinationRule", "destinationrules")
}

fn destination(host: &str, port: i32, weight: u8) -> Value {
    json!({ "destination": { "host": host, "port": { "number": port } }, "weight": weight })
}

/// Fields of `spec.service` copied into every HTTP route.
fn with_route_options(canary: &Canary, mut route: Map<String, Value>) -> Value {
    let service = &canary.spec.service;
    if let Some(timeout) = &service.timeout {
        route.insert("timeout".into(), Value::String(timeout.clone()));
    }
    for (key, value) in [
        ("retries", &service.retries),
        ("headers", &service.headers),
        ("corsPolicy", &service.cors_policy),
        ("rewrite", &service.rewrite),
    ] {
        if let Some(value) = value {
            route.insert(key.into(), value.clone());
        }
    }
    Value::Object(route)
}

/// Each A/B condition combined with each of the route-wide `spec.service.match`
/// conditions (the A/B condition wins where both set the same field).
fn ab_match_conditions(canary: &Canary) -> Result<Vec<Value>, RouterError> {
    let service_matches = canary.spec.service.match_.as_deref().unwrap_or(&[]);
    let mut out = Vec::new();
    for ab in ab_matches(canary) {
        let ab = serde_json::to_value(ab).map_err(|source| RouterError::Json {
            kind: "analysis.match".into(),
            name: canary_key(canary),
            source,
        })?;
        if service_matches.is_empty() {
            out.push(ab);
            continue;
        }
        for base in service_matches {
            let (Value::Object(base), Value::Object(extra)) = (base, &ab) else {
                return Err(RouterError::InvalidCanary {
                    canary: canary_key(canary),
                    reason: "every spec.service.match entry must be an object".into(),
                });
            };
            let mut merged = base.clone();
            merged.extend(extra.clone());
            out.push(Value::Object(merged));
        }
    }
    Ok(out)
}

/// The VirtualService `<svc>` for these weights.
pub fn build_virtual_service(canary: &Canary, weights: Weights) -> Result<Value, RouterError> {
    if canary.spec.service.app_protocol.as_deref() == Some("tcp") {
        return Err(unsupported(PROVIDER, "route appProtocol tcp yet (petrel writes HTTP routes only)"));
    }
    let names = ServiceNames::of(canary);
    let port = service_port(canary);
    let service_match = canary.spec.service.match_.clone().filter(|m| !m.is_empty());
    let split = |primary: u8, canary_weight: u8| {
        json!([destination(&names.primary, port, primary), destination(&names.canary, port, canary_weight)])
    };

    let mut routes = Vec::new();
    let ab = !ab_matches(canary).is_empty();
    let mut weighted = Map::new();
    if ab {
        weighted.insert("match".into(), Value::Array(ab_match_conditions(canary)?));
    } else if let Some(m) = &service_match {
        weighted.insert("match".into(), Value::Array(m.clone()));
    }
    weighted.insert("route".into(), split(weights.primary(), weights.canary()));
    if weights.mirror() {
        weighted.insert("mirror".into(), json!({ "host": names.canary, "port": { "number": port } }));
        weighted.insert("mirrorPercentage".into(), json!({ "value": f64::from(mirror_percent(canary)) }));
    }
    routes.push(with_route_options(canary, weighted));
    if ab {
        let mut default = Map::new();
        if let Some(m) = &service_match {
            default.insert("match".into(), Value::Array(m.clone()));
        }
        default.insert("route".into(), split(100, 0));
        routes.push(with_route_options(canary, default));
    }

    let mut hosts = vec![names.apex.clone()];
    for host in &canary.spec.service.hosts {
        if !hosts.contains(host) {
            hosts.push(host.clone());
        }
    }
    let mut spec = Map::new();
    spec.insert("hosts".into(), json!(hosts));
    if !canary.spec.service.gateways.is_empty() {
        spec.insert("gateways".into(), json!(canary.spec.service.gateways));
    }
    spec.insert("http".into(), Value::Array(routes));
    manifest(&virtual_service_resource(), canary, &names.apex, Value::Object(spec))
}

/// The DestinationRules `<svc>-primary` and `<svc>-canary`.
pub fn build_destination_rules(canary: &Canary) -> Result<[Value; 2], RouterError> {
    let names = ServiceNames::of(canary);
    let rule = |host: &str| {
        let mut spec = Map::new();
        spec.insert("host".into(), Value::String(host.to_string()));
        if let Some(policy) = &canary.spec.service.traffic_policy {
            spec.insert("trafficPolicy".into(), policy.clone());
        }
        manifest(&destination_rule_resource(), canary, host, Value::Object(spec))
    };
    Ok([rule(&names.primary)?, rule(&names.canary)?])
}

/// The weights of a VirtualService built by [`build_virtual_service`]: those of its first
/// HTTP route.
pub fn weights_of(vs: &Value) -> Result<Weights, RouterError> {
    let bad = |reason: String| malformed("VirtualService", vs, reason);
    let apex = vs.pointer("/metadata/name").and_then(Value::as_str).ok_or_else(|| bad("it has no name".into()))?;
    let first = vs.pointer("/spec/http/0").ok_or_else(|| bad("it has no HTTP routes".into()))?;
    let destinations = first
        .get("route")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("its first HTTP route has no destinations".into()))?;
    let weight_of = |host: String| -> Result<u8, RouterError> {
        let found = destinations
            .iter()
            .find(|d| d.pointer("/destination/host").and_then(Value::as_str) == Some(host.as_str()))
            .ok_or_else(|| bad(format!("its first HTTP route has no destination {host}")))?;
        weight_field(found.get("weight"), bad)
    };
    let primary = weight_of(format!("{apex}-primary"))?;
    let canary = weight_of(format!("{apex}-canary"))?;
    Weights::new(primary, canary, first.get("mirror").is_some_and(|m| !m.is_null()))
}

pub(crate) struct Istio;

impl MeshRoutes for Istio {
    const PROVIDER: &'static str = PROVIDER;

    fn build(canary: &Canary, weights: Weights) -> Result<Vec<RouteObject>, RouterError> {
        let [primary_rule, canary_rule] = build_destination_rules(canary)?;
        // DestinationRules first: a VirtualService naming hosts without rules is fine, but
        // the rules must exist before a traffic policy is expected to apply.
        Ok(vec![
            RouteObject { resource: destination_rule_resource(), manifest: primary_rule },
            RouteObject { resource: destination_rule_resource(), manifest: canary_rule },
            RouteObject { resource: virtual_service_resource(), manifest: build_virtual_service(canary, weights)? },
        ])
    }

    fn weighted_object(canary: &Canary) -> (ApiResource, String) {
        (virtual_service_resource(), ServiceNames::of(canary).apex)
    }

    fn all_objects(canary: &Canary) -> Vec<(ApiResource, String)> {
        let names = ServiceNames::of(canary);
        vec![
            (virtual_service_resource(), names.apex),
            (destination_rule_resource(), names.primary),
            (destination_rule_resource(), names.canary),
        ]
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
    fn virtual_services_match_their_manifests() {
        assert_manifest(&build_virtual_service(&canary(), weights(100, 0, false)).unwrap(), "istio_100_0.yaml");
        assert_manifest(&build_virtual_service(&canary(), weights(90, 10, false)).unwrap(), "istio_90_10.yaml");
        assert_manifest(&build_virtual_service(&ab_canary(), weights(0, 100, false)).unwrap(), "istio_ab.yaml");
        assert_manifest(&build_virtual_service(&canary(), weights(100, 0, true)).unwrap(), "istio_mirror.yaml");
    }

    #[test]
    fn destination_rules_carry_the_traffic_policy() {
        let mut canary = canary();
        canary.spec.service.traffic_policy = Some(json!({ "tls": { "mode": "ISTIO_MUTUAL" } }));
        let [primary, canary_rule] = build_destination_rules(&canary).unwrap();
        assert_manifest(&primary, "istio_destinationrule_primary.yaml");
        assert_eq!(canary_rule.pointer("/spec/host"), Some(&json!("podinfo-canary")));
        assert_eq!(canary_rule.pointer("/spec/trafficPolicy/tls/mode"), Some(&json!("ISTIO_MUTUAL")));
    }

    #[test]
    fn route_options_and_service_match_reach_every_route() {
        let mut canary = ab_canary();
        canary.spec.service.timeout = Some("5s".into());
        canary.spec.service.retries = Some(json!({ "attempts": 3, "perTryTimeout": "1s" }));
        canary.spec.service.match_ = Some(vec![json!({ "uri": { "prefix": "/api" } })]);
        let vs = build_virtual_service(&canary, weights(0, 100, false)).unwrap();
        for route in vs["spec"]["http"].as_array().unwrap() {
            assert_eq!(route["timeout"], "5s");
            assert_eq!(route["retries"]["attempts"], 3);
        }
        // Both A/B conditions are narrowed to /api, and the default route keeps /api too.
        let ab = vs.pointer("/spec/http/0/match").unwrap().as_array().unwrap();
        assert_eq!(ab.len(), 2);
        assert!(ab.iter().all(|m| m["uri"]["prefix"] == "/api" && m.get("headers").is_some()));
        assert_eq!(vs.pointer("/spec/http/1/match"), Some(&json!([{ "uri": { "prefix": "/api" } }])));
    }

    #[test]
    fn tcp_is_refused_rather_than_routed_as_http() {
        let mut canary = canary();
        canary.spec.service.app_protocol = Some("tcp".into());
        assert!(matches!(build_virtual_service(&canary, weights(100, 0, false)), Err(RouterError::Unsupported { .. })));
    }

    proptest! {
        #[test]
        fn weights_round_trip(w in any_weights(true), ab in any::<bool>()) {
            let canary = if ab { ab_canary() } else { canary() };
            prop_assert_eq!(weights_of(&build_virtual_service(&canary, w).unwrap()).unwrap(), w);
        }
    }
}
