//! Provider `contour`: an HTTPProxy `<svc>` (projectcontour.io/v1) whose first route
//! splits traffic between `<svc>-primary` and `<svc>-canary` by `services[].weight`.
//!
//! As in Flagger the proxy has no `virtualhost`: a root HTTPProxy owned by the user
//! includes it. Every route matches the path prefix `spec.service.match[0].uri.prefix`
//! (`/` without one), as Flagger's contour router does; any other `spec.service.match`
//! content is refused, where Flagger drops it. A/B: one route per `analysis.match` condition (Contour ANDs the conditions
//! of a route), each with the weights, then a default route to the primary. Contour header
//! conditions compare exactly, so only `exact` header matches are accepted.

use kube::core::ApiResource;
use serde_json::{Map, Value, json};

use super::{
    MeshRoutes, RouteObject, RouterError, ServiceNames, Weights, ab_matches, api_resource, canary_key, malformed,
    manifest, service_port, unsupported, weight_field,
};
use petrel_api::Canary;
use petrel_api::canary::{HttpMatch, StringMatch};
use petrel_api::route_options::{HttpMatchRequest, IstioStringMatch};

const PROVIDER: &str = "contour";

pub fn http_proxy_resource() -> ApiResource {
    api_resource("projectcontour.io", "v1", "HTTPProxy", "httpproxies")
}

/// The path prefix every route matches: `spec.service.match[0].uri.prefix`, as Flagger
/// writes it. A match Contour's HTTPProxy would not express that way is refused.
fn path_prefix(canary: &Canary) -> Result<String, RouterError> {
    let matches = canary.spec.service.match_.as_deref().unwrap_or_default();
    let prefix = match matches {
        [] => return Ok("/".into()),
        [only] => {
            let uri_only = HttpMatchRequest { uri: only.uri.clone(), name: only.name.clone(), ..Default::default() };
            match &only.uri {
                Some(IstioStringMatch { prefix: Some(prefix), exact: None, regex: None }) if *only == uri_only => {
                    Some(prefix)
                }
                _ => None,
            }
        }
        _ => None,
    };
    match prefix {
        Some(prefix) if prefix.starts_with('/') => Ok(prefix.clone()),
        _ => Err(RouterError::InvalidCanary {
            canary: canary_key(canary),
            reason: "provider contour writes spec.service.match only as one path prefix (a single entry with just uri.prefix, starting with '/'), as Flagger's contour router reads it: use that form, or provider istio or gatewayapi for other conditions".into(),
        }),
    }
}

/// The conditions of one A/B route: everything under the path prefix, plus one exact
/// header condition per header of the match.
fn conditions(m: &HttpMatch, prefix: &str) -> Result<Vec<Value>, RouterError> {
    if !m.query_params.is_empty() || m.uri.is_some() || m.method.is_some() || m.source_labels.is_some() {
        return Err(unsupported(PROVIDER, "match on anything but headers in an A/B route"));
    }
    let mut out = vec![json!({ "prefix": prefix })];
    for (name, value) in &m.headers {
        match value {
            StringMatch { exact: Some(exact), prefix: None, suffix: None, regex: None } => {
                out.push(json!({ "header": { "name": name, "exact": exact } }));
            }
            _ => {
                return Err(unsupported(
                    PROVIDER,
                    format!(
                        "match header {name:?} except by exact value (Contour has no prefix, suffix or regex header match)"
                    ),
                ));
            }
        }
    }
    Ok(out)
}

fn route(canary: &Canary, conditions: Vec<Value>, primary: u8, canary_weight: u8) -> Value {
    let names = ServiceNames::of(canary);
    let port = service_port(canary);
    let mut route = Map::new();
    route.insert("conditions".into(), Value::Array(conditions));
    route.insert(
        "services".into(),
        json!([
            { "name": names.primary, "port": port, "weight": primary },
            { "name": names.canary, "port": port, "weight": canary_weight },
        ]),
    );
    if let Some(timeout) = &canary.spec.service.timeout {
        route.insert("timeoutPolicy".into(), json!({ "response": timeout }));
    }
    if let Some(retries) = &canary.spec.service.retries {
        // Istio's retry shape is what the Canary carries; Flagger maps it to Contour's
        // count, perTryTimeout and retryOn (the comma-separated conditions as a list).
        let mut policy = Map::new();
        if let Some(attempts) = retries.attempts {
            policy.insert("count".into(), attempts.into());
        }
        if let Some(per_try) = &retries.per_try_timeout {
            policy.insert("perTryTimeout".into(), per_try.clone().into());
        }
        if let Some(retry_on) = &retries.retry_on {
            policy.insert("retryOn".into(), retry_on.split(',').map(|c| Value::String(c.trim().to_string())).collect());
        }
        if !policy.is_empty() {
            route.insert("retryPolicy".into(), Value::Object(policy));
        }
    }
    Value::Object(route)
}

/// The HTTPProxy `<svc>` for these weights.
pub fn build_http_proxy(canary: &Canary, weights: Weights) -> Result<Value, RouterError> {
    if weights.mirror() {
        return Err(unsupported(PROVIDER, "mirror traffic"));
    }
    let names = ServiceNames::of(canary);
    let prefix = path_prefix(canary)?;
    let everything = || vec![json!({ "prefix": prefix })];
    let matches = ab_matches(canary);
    let mut routes = Vec::new();
    for m in matches {
        routes.push(route(canary, conditions(m, &prefix)?, weights.primary(), weights.canary()));
    }
    if matches.is_empty() {
        routes.push(route(canary, everything(), weights.primary(), weights.canary()));
    } else {
        routes.push(route(canary, everything(), 100, 0));
    }
    manifest(&http_proxy_resource(), canary, &names.apex, json!({ "routes": routes }))
}

/// The weights of an HTTPProxy built by [`build_http_proxy`]: those of its first route.
pub fn weights_of(proxy: &Value) -> Result<Weights, RouterError> {
    let bad = |reason: String| malformed("HTTPProxy", proxy, reason);
    let apex = proxy.pointer("/metadata/name").and_then(Value::as_str).ok_or_else(|| bad("it has no name".into()))?;
    let services = proxy
        .pointer("/spec/routes/0/services")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("its first route has no services".into()))?;
    let weight_of = |name: String| -> Result<u8, RouterError> {
        let found = services
            .iter()
            .find(|s| s.get("name").and_then(Value::as_str) == Some(name.as_str()))
            .ok_or_else(|| bad(format!("its first route does not send to {name}")))?;
        weight_field(found.get("weight"), bad)
    };
    let names = ServiceNames::from_apex(apex);
    Weights::new(weight_of(names.primary)?, weight_of(names.canary)?, false)
}

pub(crate) struct Contour;

impl MeshRoutes for Contour {
    fn build(canary: &Canary, weights: Weights) -> Result<Vec<RouteObject>, RouterError> {
        Ok(vec![RouteObject { resource: http_proxy_resource(), manifest: build_http_proxy(canary, weights)? }])
    }

    fn weighted_object(canary: &Canary) -> (ApiResource, String) {
        (http_proxy_resource(), ServiceNames::of(canary).apex)
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

    /// Contour can only match headers exactly: keep the header condition, drop the cookie regex.
    fn exact_ab_canary() -> Canary {
        let mut canary = ab_canary();
        canary.spec.analysis.as_mut().unwrap().match_.as_mut().unwrap().truncate(1);
        canary
    }

    #[test]
    fn proxies_match_their_manifests() {
        assert_manifest(&build_http_proxy(&canary(), weights(100, 0, false)).unwrap(), "contour_100_0");
        assert_manifest(&build_http_proxy(&canary(), weights(90, 10, false)).unwrap(), "contour_90_10");
        assert_manifest(&build_http_proxy(&exact_ab_canary(), weights(0, 100, false)).unwrap(), "contour_ab");
    }

    #[test]
    fn regex_matches_and_mirroring_are_refused() {
        let err = build_http_proxy(&ab_canary(), weights(0, 100, false)).unwrap_err();
        assert!(err.to_string().contains("cookie"), "{err}");
        assert!(matches!(build_http_proxy(&canary(), weights(100, 0, true)), Err(RouterError::Unsupported { .. })));
    }

    /// Flagger's contour router reads `service.match[0].uri.prefix` as every route's path
    /// prefix; petrel writes the same and refuses any other match rather than drop it.
    #[test]
    fn the_service_match_prefix_is_every_route_s_path_prefix() {
        let mut ab = exact_ab_canary();
        ab.spec.service.match_ =
            Some(serde_json::from_value(serde_json::json!([{ "uri": { "prefix": "/api" } }])).unwrap());
        let proxy = build_http_proxy(&ab, weights(0, 100, false)).unwrap();
        let prefixes: Vec<&str> = proxy["spec"]["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["conditions"][0]["prefix"].as_str().unwrap())
            .collect();
        assert_eq!(prefixes, ["/api", "/api"]);
        for refused in [
            serde_json::json!([{ "uri": { "exact": "/api" } }]),
            serde_json::json!([{ "uri": { "prefix": "/api" }, "method": { "exact": "GET" } }]),
            serde_json::json!([{ "uri": { "prefix": "/a" } }, { "uri": { "prefix": "/b" } }]),
            serde_json::json!([{ "uri": { "prefix": "api" } }]),
            serde_json::json!([{ "headers": { "x-a": { "exact": "b" } } }]),
        ] {
            let mut canary = canary();
            canary.spec.service.match_ = Some(serde_json::from_value(refused.clone()).unwrap());
            let err = build_http_proxy(&canary, weights(100, 0, false)).unwrap_err();
            assert!(matches!(err, RouterError::InvalidCanary { .. }), "{refused}: {err}");
            assert!(err.to_string().contains("only as one path prefix"), "{err}");
        }
        // An empty list is no match.
        let mut canary = canary();
        canary.spec.service.match_ = Some(Vec::new());
        assert_eq!(
            build_http_proxy(&canary, weights(100, 0, false)).unwrap(),
            build_http_proxy(&super::super::testing::canary(), weights(100, 0, false)).unwrap()
        );
    }

    #[test]
    fn timeouts_and_retries_are_translated() {
        let mut canary = canary();
        canary.spec.service.timeout = Some("15s".into());
        canary.spec.service.retries = Some(petrel_api::route_options::HttpRetry {
            attempts: Some(2),
            per_try_timeout: Some("3s".into()),
            retry_on: Some("5xx,gateway-error".into()),
        });
        let proxy = build_http_proxy(&canary, weights(100, 0, false)).unwrap();
        assert_eq!(proxy.pointer("/spec/routes/0/timeoutPolicy"), Some(&json!({ "response": "15s" })));
        assert_eq!(
            proxy.pointer("/spec/routes/0/retryPolicy"),
            Some(&json!({ "count": 2, "perTryTimeout": "3s", "retryOn": ["5xx", "gateway-error"] }))
        );
    }

    proptest! {
        #[test]
        fn weights_round_trip(w in any_weights(false), ab in any::<bool>()) {
            let canary = if ab { exact_ab_canary() } else { canary() };
            prop_assert_eq!(weights_of(&build_http_proxy(&canary, w).unwrap()).unwrap(), w);
        }
    }
}
