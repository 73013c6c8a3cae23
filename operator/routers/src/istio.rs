//! Provider `istio`: a VirtualService `<svc>` (networking.istio.io/v1) whose first HTTP
//! route splits traffic between `<svc>-primary` and `<svc>-canary`, plus DestinationRules
//! `<svc>-primary` and `<svc>-canary` carrying `spec.service.trafficPolicy`.
//!
//! A/B: the first HTTP route carries the `analysis.match` conditions (each combined with
//! `spec.service.match`) and the weights; a second route sends the rest to the primary.
//! Mirroring: `mirror` and `mirrorPercentage` on the first route.
//!
//! Session affinity (`analysis.sessionAffinity`, see [`super::affinity`]): HTTP routes
//! named `sticky-route` (and `sticky-route-primary`) matching the `Cookie` header come
//! before the weighted route, whose destinations add `Set-Cookie` to their responses;
//! [`weights_of`] skips them.
//!
//! Delegation (`spec.service.delegation`, as Flagger writes it): the VirtualService has no
//! hosts and no gateways, so that a root VirtualService owned by someone else can delegate
//! to it (`http[].delegate`). Without such a root no request would reach the Canary's
//! routes, so petrel writes nothing and the Canary is Stalled naming the missing piece.

use kube::core::ApiResource;
use serde_json::{Map, Value, json};

use super::affinity::{self, Cookie, Sticky};
use super::{
    MeshRoutes, RequiredReferrer, RouteObject, RouterError, ServiceNames, Weights, ab_matches, api_resource,
    canary_key, malformed, manifest, mirror_percent, service_port, unsupported, weight_field,
};
use petrel_api::Canary;

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

/// `value` (a typed field of the Canary) as the JSON petrel writes.
fn json_of(canary: &Canary, field: &str, value: &impl serde::Serialize) -> Result<Value, RouterError> {
    serde_json::to_value(value).map_err(|source| RouterError::Json {
        kind: field.into(),
        name: canary_key(canary),
        source,
    })
}

/// Fields of `spec.service` copied into every HTTP route.
fn with_route_options(canary: &Canary, mut route: Map<String, Value>) -> Result<Value, RouterError> {
    let service = &canary.spec.service;
    if let Some(timeout) = &service.timeout {
        route.insert("timeout".into(), Value::String(timeout.clone()));
    }
    if let Some(retries) = &service.retries {
        route.insert("retries".into(), json_of(canary, "service.retries", retries)?);
    }
    if let Some(headers) = &service.headers {
        route.insert("headers".into(), json_of(canary, "service.headers", headers)?);
    }
    if let Some(cors) = &service.cors_policy {
        route.insert("corsPolicy".into(), json_of(canary, "service.corsPolicy", cors)?);
    }
    if let Some(rewrite) = &service.rewrite {
        route.insert("rewrite".into(), json_of(canary, "service.rewrite", rewrite)?);
    }
    Ok(Value::Object(route))
}

/// Each A/B condition combined with each of the route-wide `spec.service.match`
/// conditions (the A/B condition wins where both set the same field).
fn ab_match_conditions(canary: &Canary) -> Result<Vec<Value>, RouterError> {
    let service_matches = canary.spec.service.match_.as_deref().unwrap_or(&[]);
    let mut out = Vec::new();
    for ab in ab_matches(canary) {
        let Value::Object(extra) = json_of(canary, "analysis.match", ab)? else {
            return Err(RouterError::InvalidCanary {
                canary: canary_key(canary),
                reason: "every analysis.match entry must be an object".into(),
            });
        };
        if service_matches.is_empty() {
            out.push(Value::Object(extra));
            continue;
        }
        for base in service_matches {
            let Value::Object(mut merged) = json_of(canary, "service.match", base)? else {
                return Err(RouterError::InvalidCanary {
                    canary: canary_key(canary),
                    reason: "every spec.service.match entry must be an object".into(),
                });
            };
            merged.extend(extra.clone());
            out.push(Value::Object(merged));
        }
    }
    Ok(out)
}

/// Name of the HTTP routes petrel writes for session affinity (Flagger's is `sticky-route`).
pub const STICKY_ROUTE: &str = "sticky-route";
const STICKY_PRIMARY_ROUTE: &str = "sticky-route-primary";

/// Destination headers adding one `Set-Cookie` header to responses.
fn set_cookie_headers(set_cookie: &str) -> Value {
    json!({ "response": { "add": { affinity::SET_COOKIE_HEADER: set_cookie } } })
}

/// The route-wide `spec.service.match` conditions with their headers replaced by a match
/// of `cookie` (Flagger's `mergeMatchConditions` with the cookie condition); just the
/// cookie condition when there are none.
fn cookie_match_conditions(canary: &Canary, cookie: &Cookie) -> Result<Value, RouterError> {
    let headers = json!({ affinity::COOKIE_HEADER: { "regex": cookie.header_regex() } });
    let service_matches = canary.spec.service.match_.as_deref().unwrap_or(&[]);
    if service_matches.is_empty() {
        return Ok(json!([{ "headers": headers }]));
    }
    let mut out = Vec::new();
    for base in service_matches {
        let mut m = json_of(canary, "service.match", base)?;
        m["headers"] = headers.clone();
        out.push(m);
    }
    Ok(Value::Array(out))
}

/// The HTTP routes before the weighted one for session affinity (see [`affinity`]):
/// `sticky-route` sends requests carrying the canary cookie to the canary (and
/// `sticky-route-primary` those carrying the primary cookie to the primary) while the
/// canary has weight; afterwards `sticky-route` expires the last canary cookie.
fn sticky_routes(
    canary: &Canary,
    sticky: &Sticky,
    weights: Weights,
    split: &dyn Fn(u8, u8) -> Value,
) -> Result<Vec<Value>, RouterError> {
    let route = |name: &str, cookie: &Cookie, destinations: Value| -> Result<Map<String, Value>, RouterError> {
        let mut route = Map::new();
        route.insert("name".into(), Value::String(name.into()));
        route.insert("match".into(), cookie_match_conditions(canary, cookie)?);
        route.insert("route".into(), destinations);
        Ok(route)
    };
    match sticky {
        Sticky::Off => Ok(Vec::new()),
        Sticky::Pin { canary: cookie, primary, .. } => {
            let mut routes = vec![with_route_options(canary, route(STICKY_ROUTE, cookie, split(0, 100))?)?];
            if let Some((primary, _)) = primary {
                routes.push(with_route_options(canary, route(STICKY_PRIMARY_ROUTE, primary, split(100, 0))?)?);
            }
            Ok(routes)
        }
        Sticky::Expire { cookie, set_cookie } => {
            let mut expire =
                with_route_options(canary, route(STICKY_ROUTE, cookie, split(weights.primary(), weights.canary()))?)?;
            // The Set-Cookie joins the response headers of spec.service.headers.
            let headers = &mut expire["headers"];
            if !headers.is_object() {
                *headers = json!({});
            }
            if !headers["response"].is_object() {
                headers["response"] = json!({});
            }
            if !headers["response"]["add"].is_object() {
                headers["response"]["add"] = json!({});
            }
            headers["response"]["add"][affinity::SET_COOKIE_HEADER] = Value::String(set_cookie.clone());
            Ok(vec![expire])
        }
    }
}

/// The VirtualService `<svc>` for these weights.
pub fn build_virtual_service(canary: &Canary, weights: Weights) -> Result<Value, RouterError> {
    if canary.spec.service.app_protocol.as_deref() == Some("tcp") {
        return Err(unsupported(PROVIDER, "route appProtocol tcp yet (petrel writes HTTP routes only)"));
    }
    let names = ServiceNames::of(canary);
    let port = service_port(canary);
    let service_match = match canary.spec.service.match_.as_ref().filter(|m| !m.is_empty()) {
        Some(m) => Some(json_of(canary, "service.match", m)?),
        None => None,
    };
    let split = |primary: u8, canary_weight: u8| {
        json!([destination(&names.primary, port, primary), destination(&names.canary, port, canary_weight)])
    };

    let mut routes = Vec::new();
    let ab = !ab_matches(canary).is_empty();
    let mut weighted = Map::new();
    if ab {
        weighted.insert("match".into(), Value::Array(ab_match_conditions(canary)?));
    } else if let Some(m) = &service_match {
        weighted.insert("match".into(), m.clone());
    }
    let sticky = affinity::sticky(canary, weights);
    let mut weighted_split = split(weights.primary(), weights.canary());
    if let Sticky::Pin { canary_set_cookie, primary, .. } = &sticky {
        weighted_split[1]["headers"] = set_cookie_headers(canary_set_cookie);
        if let Some((_, primary_set_cookie)) = primary {
            weighted_split[0]["headers"] = set_cookie_headers(primary_set_cookie);
        }
    }
    weighted.insert("route".into(), weighted_split);
    if weights.mirror() {
        weighted.insert("mirror".into(), json!({ "host": names.canary, "port": { "number": port } }));
        weighted.insert("mirrorPercentage".into(), json!({ "value": f64::from(mirror_percent(canary)) }));
    }
    routes.extend(sticky_routes(canary, &sticky, weights, &split)?);
    routes.push(with_route_options(canary, weighted)?);
    if ab {
        let mut default = Map::new();
        if let Some(m) = &service_match {
            default.insert("match".into(), m.clone());
        }
        default.insert("route".into(), split(100, 0));
        routes.push(with_route_options(canary, default)?);
    }

    let mut hosts = vec![names.apex.clone()];
    for host in &canary.spec.service.hosts {
        if !hosts.contains(host) {
            hosts.push(host.clone());
        }
    }
    let mut spec = Map::new();
    // A delegate VirtualService must name no hosts and no gateways: the root one does.
    if !canary.spec.service.delegation {
        spec.insert("hosts".into(), json!(hosts));
        if !canary.spec.service.gateways.is_empty() {
            spec.insert("gateways".into(), json!(canary.spec.service.gateways));
        }
    }
    spec.insert("http".into(), Value::Array(routes));
    manifest(&virtual_service_resource(), canary, &names.apex, Value::Object(spec))
}

/// Whether `root` (a VirtualService) delegates one of its HTTP routes to the VirtualService
/// `namespace/name`. A delegate without a namespace is in the root's namespace (Istio's rule).
pub fn delegates_to(root: &Value, namespace: &str, name: &str) -> bool {
    let root_namespace = root.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default();
    let Some(routes) = root.pointer("/spec/http").and_then(Value::as_array) else {
        return false;
    };
    routes.iter().filter_map(|route| route.get("delegate")).any(|delegate| {
        delegate.get("name").and_then(Value::as_str) == Some(name)
            && delegate.get("namespace").and_then(Value::as_str).filter(|ns| !ns.is_empty()).unwrap_or(root_namespace)
                == namespace
    })
}

/// With `spec.service.delegation`: a root VirtualService delegating to the Canary's.
fn delegation_root(canary: &Canary) -> Option<RequiredReferrer> {
    if !canary.spec.service.delegation {
        return None;
    }
    let namespace = canary.metadata.namespace.clone().unwrap_or_default();
    let name = ServiceNames::of(canary).apex;
    let missing = format!(
        "spec.service.delegation is set, but no VirtualService delegates to {namespace}/{name} \
         (an http route with delegate: {{name: {name}, namespace: {namespace}}}); petrel writes no route until a root \
         VirtualService does"
    );
    let (ns, n) = (namespace.clone(), name.clone());
    Some(RequiredReferrer {
        resource: virtual_service_resource(),
        refers: Box::new(move |root| delegates_to(root, &ns, &n)),
        route: ("VirtualService".into(), namespace, name),
        missing,
    })
}

/// The DestinationRules `<svc>-primary` and `<svc>-canary`.
pub fn build_destination_rules(canary: &Canary) -> Result<[Value; 2], RouterError> {
    let names = ServiceNames::of(canary);
    let policy = match &canary.spec.service.traffic_policy {
        Some(policy) => Some(json_of(canary, "service.trafficPolicy", policy)?),
        None => None,
    };
    let rule = |host: &str| {
        let mut spec = Map::new();
        spec.insert("host".into(), Value::String(host.to_string()));
        if let Some(policy) = &policy {
            spec.insert("trafficPolicy".into(), policy.clone());
        }
        manifest(&destination_rule_resource(), canary, host, Value::Object(spec))
    };
    Ok([rule(&names.primary)?, rule(&names.canary)?])
}

/// The weights of a VirtualService built by [`build_virtual_service`]: those of its first
/// HTTP route that is not a session affinity route (`sticky-route*`).
pub fn weights_of(vs: &Value) -> Result<Weights, RouterError> {
    let bad = |reason: String| malformed("VirtualService", vs, reason);
    let apex = vs.pointer("/metadata/name").and_then(Value::as_str).ok_or_else(|| bad("it has no name".into()))?;
    let first = vs
        .pointer("/spec/http")
        .and_then(Value::as_array)
        .and_then(|routes| {
            routes.iter().find(|r| !r.get("name").and_then(Value::as_str).is_some_and(|n| n.starts_with(STICKY_ROUTE)))
        })
        .ok_or_else(|| bad("it has no HTTP routes".into()))?;
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
    let names = ServiceNames::from_apex(apex);
    let primary = weight_of(names.primary)?;
    let canary = weight_of(names.canary)?;
    Weights::new(primary, canary, first.get("mirror").is_some_and(|m| !m.is_null()))
}

pub(crate) struct Istio;

impl MeshRoutes for Istio {
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

    fn required_referrer(canary: &Canary) -> Option<RequiredReferrer> {
        delegation_root(canary)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testing::{ab_canary, any_weights, assert_manifest, canary, weights};
    use super::*;

    #[test]
    fn virtual_services_match_their_manifests() {
        assert_manifest(&build_virtual_service(&canary(), weights(100, 0, false)).unwrap(), "istio_100_0");
        assert_manifest(&build_virtual_service(&canary(), weights(90, 10, false)).unwrap(), "istio_90_10");
        assert_manifest(&build_virtual_service(&ab_canary(), weights(0, 100, false)).unwrap(), "istio_ab");
        assert_manifest(&build_virtual_service(&canary(), weights(100, 0, true)).unwrap(), "istio_mirror");
    }

    #[test]
    fn destination_rules_carry_the_traffic_policy() {
        let mut canary = canary();
        canary.spec.service.traffic_policy =
            Some(serde_json::from_value(json!({ "tls": { "mode": "ISTIO_MUTUAL" } })).unwrap());
        let [primary, canary_rule] = build_destination_rules(&canary).unwrap();
        assert_manifest(&primary, "istio_destinationrule_primary");
        assert_eq!(canary_rule.pointer("/spec/host"), Some(&json!("podinfo-canary")));
        assert_eq!(canary_rule.pointer("/spec/trafficPolicy/tls/mode"), Some(&json!("ISTIO_MUTUAL")));
    }

    #[test]
    fn route_options_and_service_match_reach_every_route() {
        let mut canary = ab_canary();
        canary.spec.service.timeout = Some("5s".into());
        canary.spec.service.retries =
            Some(serde_json::from_value(json!({ "attempts": 3, "perTryTimeout": "1s" })).unwrap());
        canary.spec.service.match_ = Some(serde_json::from_value(json!([{ "uri": { "prefix": "/api" } }])).unwrap());
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

    #[test]
    fn a_delegate_virtual_service_has_no_hosts_and_no_gateways() {
        let mut canary = canary();
        canary.spec.service.gateways = vec!["public-gateway".into()];
        canary.spec.service.hosts = vec!["app.example.com".into()];
        canary.spec.service.delegation = true;
        let vs = build_virtual_service(&canary, weights(90, 10, false)).unwrap();
        assert_manifest(&vs, "istio_delegate");
        assert_eq!(vs.pointer("/spec/hosts"), None);
        assert_eq!(vs.pointer("/spec/gateways"), None);
        assert_eq!(weights_of(&vs).unwrap(), weights(90, 10, false));
        canary.spec.service.delegation = false;
        let vs = build_virtual_service(&canary, weights(90, 10, false)).unwrap();
        assert_eq!(vs.pointer("/spec/gateways"), Some(&json!(["public-gateway"])));
    }

    #[test]
    fn only_a_root_naming_the_delegate_counts() {
        let root = |delegate: Value| {
            json!({
                "metadata": { "name": "root", "namespace": "gateways" },
                "spec": { "hosts": ["app.example.com"], "http": [
                    { "match": [{ "uri": { "prefix": "/other" } }], "route": [{ "destination": { "host": "other" } }] },
                    { "delegate": delegate },
                ] },
            })
        };
        assert!(delegates_to(&root(json!({ "name": "podinfo", "namespace": "test" })), "test", "podinfo"));
        assert!(!delegates_to(&root(json!({ "name": "podinfo", "namespace": "prod" })), "test", "podinfo"));
        assert!(!delegates_to(&root(json!({ "name": "other", "namespace": "test" })), "test", "podinfo"));
        // Istio's default: a delegate without a namespace is in the root's.
        assert!(delegates_to(&root(json!({ "name": "podinfo" })), "gateways", "podinfo"));
        assert!(!delegates_to(&root(json!({ "name": "podinfo" })), "test", "podinfo"));
        assert!(!delegates_to(&json!({ "metadata": { "name": "x" }, "spec": {} }), "test", "podinfo"));
    }

    #[test]
    fn delegation_asks_for_a_root_and_says_what_it_must_hold() {
        let mut canary = canary();
        assert!(delegation_root(&canary).is_none());
        canary.spec.service.delegation = true;
        let referrer = delegation_root(&canary).unwrap();
        assert_eq!(referrer.resource, virtual_service_resource());
        let ns = canary.metadata.namespace.clone().unwrap();
        assert!(
            referrer.missing.contains(&format!("no VirtualService delegates to {ns}/podinfo")),
            "{}",
            referrer.missing
        );
        let root = json!({ "metadata": { "name": "r", "namespace": "gw" }, "spec": { "http": [{ "delegate": { "name": "podinfo", "namespace": ns } }] } });
        assert!((referrer.refers)(&root));
        assert!(!(referrer.refers)(&json!({ "metadata": { "name": "r", "namespace": "gw" }, "spec": { "http": [] } })));
    }

    #[test]
    fn session_affinity_pins_sessions_while_the_canary_has_weight() {
        use super::super::testing::{expired_cookies, pinned_cookies, sticky_canary};
        let mut pinned = sticky_canary(true, pinned_cookies());
        pinned.spec.service.match_ = Some(
            serde_json::from_value(
                json!([{ "uri": { "prefix": "/api" }, "headers": { "x-tenant": { "exact": "blue" } } }]),
            )
            .unwrap(),
        );
        let vs = build_virtual_service(&pinned, weights(90, 10, false)).unwrap();
        assert_manifest(&vs, "istio_sticky");
        let routes = vs["spec"]["http"].as_array().unwrap();
        assert_eq!(routes.len(), 3);
        assert_eq!(routes[0]["name"], "sticky-route");
        // The cookie replaces the route-wide headers (Flagger's mergeMatchConditions).
        assert_eq!(
            routes[0]["match"],
            json!([{ "uri": { "prefix": "/api" }, "headers": { "Cookie": { "regex": ".*canary-cookie=0123456789abcdef.*" } } }])
        );
        assert_eq!(routes[0]["route"][1]["weight"], 100);
        assert_eq!(routes[1]["name"], "sticky-route-primary");
        assert_eq!(routes[1]["route"][0]["weight"], 100);
        assert_eq!(
            routes[2]["route"][1]["headers"]["response"]["add"]["Set-Cookie"],
            "canary-cookie=0123456789abcdef; Max-Age=600"
        );
        assert_eq!(
            routes[2]["route"][0]["headers"]["response"]["add"]["Set-Cookie"],
            "primary-cookie=fedcba9876543210; Max-Age=60"
        );
        assert_eq!(weights_of(&vs).unwrap(), weights(90, 10, false));

        // After the release: the last canary cookie is expired, next to the route's own headers.
        let mut expired = sticky_canary(false, expired_cookies());
        expired.spec.service.headers =
            Some(serde_json::from_value(json!({ "response": { "add": { "x-served-by": "petrel" } } })).unwrap());
        let vs = build_virtual_service(&expired, weights(100, 0, false)).unwrap();
        assert_manifest(&vs, "istio_sticky_expired");
        let routes = vs["spec"]["http"].as_array().unwrap();
        assert_eq!(routes.len(), 2);
        assert_eq!(
            routes[0]["headers"]["response"]["add"],
            json!({ "x-served-by": "petrel", "Set-Cookie": "canary-cookie=0123456789abcdef; Max-Age=-1" })
        );
        assert_eq!(routes[1]["headers"]["response"]["add"], json!({ "x-served-by": "petrel" }));
        assert_eq!(routes[0]["route"], routes[1]["route"]);
        assert_eq!(weights_of(&vs).unwrap(), weights(100, 0, false));
        // Nothing pinned or expired: the plain VirtualService.
        let fresh = sticky_canary(true, super::super::affinity::Cookies::default());
        assert_eq!(
            build_virtual_service(&fresh, weights(100, 0, false)).unwrap(),
            build_virtual_service(&canary(), weights(100, 0, false)).unwrap()
        );
    }

    proptest! {
        #[test]
        fn weights_round_trip(w in any_weights(true), ab in any::<bool>()) {
            let canary = if ab { ab_canary() } else { canary() };
            prop_assert_eq!(weights_of(&build_virtual_service(&canary, w).unwrap()).unwrap(), w);
        }

        #[test]
        fn weights_round_trip_with_session_affinity(w in any_weights(false), primary in any::<bool>(), after in any::<bool>()) {
            use super::super::testing::{expired_cookies, pinned_cookies, sticky_canary};
            let canary = sticky_canary(primary, if after { expired_cookies() } else { pinned_cookies() });
            prop_assert_eq!(weights_of(&build_virtual_service(&canary, w).unwrap()).unwrap(), w);
        }
    }
}
