//! Provider `kuma`: a MeshHTTPRoute `<svc>` (kuma.io/v1alpha1, in the Canary's namespace,
//! labelled with its mesh) for traffic to the apex Service, whose rule splits requests
//! between the `<svc>-primary` and `<svc>-canary` MeshServices by `backendRefs[].weight`.
//!
//! Flagger writes a TrafficRoute, Kuma's legacy policy: new meshes stopped getting one in
//! Kuma 2.6, it no longer shapes traffic where MeshHTTPRoute is used and Kuma 3.0 removes
//! it. petrel writes the MeshHTTPRoute Kuma documents instead, selecting the MeshServices
//! Kuma makes of the three Kubernetes Services by their labels (`kuma.io/display-name`,
//! `k8s.kuma.io/namespace`) and the service port, the form Kuma 3.0 keeps. The mesh comes
//! from the Canary's `kuma.io/mesh` annotation (Flagger's), `default` otherwise.
//!
//! A/B: one rule per `analysis.match` condition with the weights (Kuma prefers the most
//! specific match), then a rule for every path sending to the primary. No mirroring.

use kube::ResourceExt;
use kube::core::ApiResource;
use serde_json::{Map, Value, json};

use super::{
    MeshRoutes, RouteObject, RouterError, ServiceNames, Weights, ab_matches, api_resource, canary_key,
    generated_metadata, malformed, namespace_of, regex_escape, service_port, unsupported, weight_field,
};
use petrel_api::Canary;
use petrel_api::canary::{HttpMatch, StringMatch};

const PROVIDER: &str = "kuma";
const KIND: &str = "MeshHTTPRoute";
/// The Canary annotation naming the mesh (Flagger's), and the label Kuma reads on policies.
pub const MESH_ANNOTATION: &str = "kuma.io/mesh";
const DEFAULT_MESH: &str = "default";

pub fn mesh_http_route_resource() -> ApiResource {
    api_resource("kuma.io", "v1alpha1", KIND, "meshhttproutes")
}

/// The label Kuma gives a MeshService: the name of the Kubernetes Service it stands for.
pub const DISPLAY_NAME_LABEL: &str = "kuma.io/display-name";
/// The label Kuma gives a MeshService: the namespace of that Service.
pub const NAMESPACE_LABEL: &str = "k8s.kuma.io/namespace";

/// The labels that select the MeshService of Kubernetes Service `service`.
fn mesh_service_labels(canary: &Canary, service: &str) -> Value {
    json!({ DISPLAY_NAME_LABEL: service, NAMESPACE_LABEL: canary.namespace().unwrap_or_default() })
}

fn header_match(name: &str, m: &StringMatch) -> Result<Value, RouterError> {
    let (kind, value) = match m {
        StringMatch { exact: Some(exact), prefix: None, suffix: None, regex: None } => ("Exact", exact.clone()),
        StringMatch { prefix: Some(prefix), exact: None, suffix: None, regex: None } => ("Prefix", prefix.clone()),
        StringMatch { regex: Some(regex), exact: None, prefix: None, suffix: None } => {
            ("RegularExpression", regex.clone())
        }
        StringMatch { suffix: Some(suffix), exact: None, prefix: None, regex: None } => {
            ("RegularExpression", format!(".*{}$", regex_escape(suffix)))
        }
        _ => {
            return Err(unsupported(
                PROVIDER,
                format!("match header {name:?} unless it sets exactly one of exact, prefix, suffix or regex"),
            ));
        }
    };
    Ok(json!({ "type": kind, "name": name, "value": value }))
}

fn rule_match(m: &HttpMatch) -> Result<Value, RouterError> {
    if !m.query_params.is_empty() || m.uri.is_some() || m.source_labels.is_some() {
        return Err(unsupported(PROVIDER, "match on anything but headers and the method in an A/B route"));
    }
    let mut out = Map::new();
    out.insert("path".into(), json!({ "type": "PathPrefix", "value": "/" }));
    if let Some(method) = &m.method {
        let Some(exact) = &method.exact else {
            return Err(unsupported(PROVIDER, "match a method other than exactly"));
        };
        out.insert("method".into(), json!(exact.to_ascii_uppercase()));
    }
    let headers = m.headers.iter().map(|(name, value)| header_match(name, value)).collect::<Result<Vec<_>, _>>()?;
    if !headers.is_empty() {
        out.insert("headers".into(), Value::Array(headers));
    }
    Ok(Value::Object(out))
}

fn rule(canary: &Canary, matches: Vec<Value>, primary: u8, canary_weight: u8) -> Value {
    let names = ServiceNames::of(canary);
    json!({
        "matches": matches,
        "default": {
            "backendRefs": [
                { "kind": "MeshService", "labels": mesh_service_labels(canary, &names.primary), "port": service_port(canary), "weight": primary },
                { "kind": "MeshService", "labels": mesh_service_labels(canary, &names.canary), "port": service_port(canary), "weight": canary_weight },
            ],
        },
    })
}

/// The MeshHTTPRoute `<svc>` for these weights.
pub fn build_mesh_http_route(canary: &Canary, weights: Weights) -> Result<Value, RouterError> {
    if weights.mirror() {
        return Err(unsupported(PROVIDER, "mirror traffic"));
    }
    let names = ServiceNames::of(canary);
    let everything = || vec![json!({ "path": { "type": "PathPrefix", "value": "/" } })];
    let matches = ab_matches(canary);
    let mut rules = Vec::new();
    if matches.is_empty() {
        rules.push(rule(canary, everything(), weights.primary(), weights.canary()));
    } else {
        let conditions = matches.iter().map(rule_match).collect::<Result<Vec<_>, _>>()?;
        rules.push(rule(canary, conditions, weights.primary(), weights.canary()));
        rules.push(rule(canary, everything(), 100, 0));
    }
    let mesh = canary.annotations().get(MESH_ANNOTATION).cloned().unwrap_or_else(|| DEFAULT_MESH.into());
    let labels = std::collections::BTreeMap::from([(MESH_ANNOTATION.to_string(), mesh)]);
    let metadata = generated_metadata(canary, &names.apex, &labels, &Default::default())?;
    namespace_of(canary)?;
    let resource = mesh_http_route_resource();
    Ok(json!({
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": serde_json::to_value(metadata)
            .map_err(|source| RouterError::Json { kind: KIND.into(), name: canary_key(canary), source })?,
        "spec": {
            "targetRef": { "kind": "Mesh" },
            "to": [{
                "targetRef": { "kind": "MeshService", "labels": mesh_service_labels(canary, &names.apex) },
                "rules": rules,
            }],
        },
    }))
}

/// The weights of a MeshHTTPRoute built by [`build_mesh_http_route`]: those of its first rule.
pub fn weights_of(route: &Value) -> Result<Weights, RouterError> {
    let bad = |reason: String| malformed(KIND, route, reason);
    let display_name = |target: &Value| {
        target.pointer("/labels").and_then(|l| l.get(DISPLAY_NAME_LABEL)).and_then(Value::as_str).map(String::from)
    };
    let apex = route
        .pointer("/spec/to/0/targetRef")
        .and_then(display_name)
        .ok_or_else(|| bad(format!("its to[0].targetRef has no {DISPLAY_NAME_LABEL} label")))?;
    let refs = route
        .pointer("/spec/to/0/rules/0/default/backendRefs")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("its first rule has no backendRefs".into()))?;
    let weight_of = |side: &str| -> Result<u8, RouterError> {
        let name = format!("{apex}-{side}");
        let found = refs
            .iter()
            .find(|r| display_name(r).as_deref() == Some(name.as_str()))
            .ok_or_else(|| bad(format!("its first rule has no backendRef to MeshService {name}")))?;
        weight_field(found.get("weight"), bad)
    };
    Weights::new(weight_of("primary")?, weight_of("canary")?, false)
}

pub(crate) struct Kuma;

impl MeshRoutes for Kuma {
    fn build(canary: &Canary, weights: Weights) -> Result<Vec<RouteObject>, RouterError> {
        Ok(vec![RouteObject {
            resource: mesh_http_route_resource(),
            manifest: build_mesh_http_route(canary, weights)?,
        }])
    }

    fn weighted_object(canary: &Canary) -> (ApiResource, String) {
        (mesh_http_route_resource(), ServiceNames::of(canary).apex)
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
    fn routes_match_their_manifests() {
        assert_manifest(&build_mesh_http_route(&canary(), weights(100, 0, false)).unwrap(), "kuma_100_0");
        assert_manifest(&build_mesh_http_route(&canary(), weights(90, 10, false)).unwrap(), "kuma_90_10");
        assert_manifest(&build_mesh_http_route(&ab_canary(), weights(0, 100, false)).unwrap(), "kuma_ab");
    }

    #[test]
    fn the_mesh_comes_from_the_canary_annotation() {
        let mut canary = canary();
        canary.metadata.annotations = Some([(MESH_ANNOTATION.to_string(), "payments".to_string())].into());
        let route = build_mesh_http_route(&canary, weights(100, 0, false)).unwrap();
        assert_eq!(route["metadata"]["labels"][MESH_ANNOTATION], "payments");
    }

    #[test]
    fn mirroring_is_refused() {
        assert!(matches!(
            build_mesh_http_route(&canary(), weights(100, 0, true)),
            Err(RouterError::Unsupported { .. })
        ));
    }

    proptest! {
        #[test]
        fn weights_round_trip(w in any_weights(false), ab in any::<bool>()) {
            let canary = if ab { ab_canary() } else { canary() };
            let route = build_mesh_http_route(&canary, w).unwrap();
            for rule in route["spec"]["to"][0]["rules"].as_array().unwrap() {
                let refs = rule["default"]["backendRefs"].as_array().unwrap();
                prop_assert_eq!(refs.iter().map(|r| r["weight"].as_u64().unwrap()).sum::<u64>(), 100);
            }
            prop_assert_eq!(weights_of(&route).unwrap(), w);
        }
    }
}
