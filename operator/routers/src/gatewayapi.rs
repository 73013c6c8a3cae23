//! Provider `gatewayapi`: an HTTPRoute `<svc>` (gateway.networking.k8s.io `v1`, or
//! `v1beta1` for provider `gatewayapi:v1beta1`) whose first rule splits traffic between
//! `<svc>-primary` and `<svc>-canary` by `backendRefs[].weight`.
//!
//! A/B: the first rule carries the Canary's `analysis.match` conditions and the weights; a
//! second rule sends everything else to the primary. Mirroring: a `RequestMirror` filter
//! on the first rule copies requests to the canary.
//!
//! Session affinity (`analysis.sessionAffinity`, see [`super::affinity`]): sticky rules
//! matching the `Cookie` header come before the weighted rule, whose backendRefs carry a
//! `ResponseHeaderModifier` adding `Set-Cookie`; [`weights_of`] skips the sticky rules.

use std::collections::BTreeMap;

use kube::core::ApiResource;
use serde_json::{Map, Value, json};

use super::affinity::{self, Cookie, Sticky};
use super::{
    MeshRoutes, RouteObject, RouterError, ServiceNames, Weights, ab_matches, api_resource, canary_key, malformed,
    manifest, mirror_percent, regex_escape, service_port, weight_field,
};
use petrel_api::Canary;
use petrel_api::canary::{HttpMatch, StringMatch};
use petrel_api::route_options::{HeaderOperations, HttpMatchRequest, IstioStringMatch};

const PROVIDER: &str = "gatewayapi";
const GROUP: &str = "gateway.networking.k8s.io";
const KIND: &str = "HTTPRoute";

/// The HTTPRoute version: `v1beta1` only when the Canary says `gatewayapi:v1beta1`.
pub fn http_route_resource(canary: &Canary) -> ApiResource {
    let version = match canary.spec.provider.as_deref() {
        Some("gatewayapi:v1beta1") => "v1beta1",
        _ => "v1",
    };
    api_resource(GROUP, version, KIND, "httproutes")
}

fn invalid(canary: &Canary, reason: String) -> RouterError {
    RouterError::InvalidCanary { canary: canary_key(canary), reason }
}

/// An Istio-style string match as a Gateway API `(type, value)`. Gateway API has no
/// prefix or suffix match for headers, so those become anchored regular expressions.
fn string_match(canary: &Canary, what: &str, m: &StringMatch) -> Result<(&'static str, String), RouterError> {
    match (&m.exact, &m.prefix, &m.suffix, &m.regex) {
        (Some(exact), None, None, None) => Ok(("Exact", exact.clone())),
        (None, Some(prefix), None, None) => Ok(("RegularExpression", format!("^{}.*", regex_escape(prefix)))),
        (None, None, Some(suffix), None) => Ok(("RegularExpression", format!(".*{}$", regex_escape(suffix)))),
        (None, None, None, Some(regex)) => Ok(("RegularExpression", regex.clone())),
        _ => Err(invalid(canary, format!("{what} must set exactly one of exact, prefix, suffix or regex"))),
    }
}

fn named_matches(
    canary: &Canary,
    field: &str,
    what: &str,
    conditions: &BTreeMap<String, StringMatch>,
) -> Result<Vec<Value>, RouterError> {
    conditions
        .iter()
        .map(|(name, m)| {
            let (kind, value) = string_match(canary, &format!("{field} {what} {name:?}"), m)?;
            Ok(json!({ "type": kind, "name": name, "value": value }))
        })
        .collect()
}

/// One condition of `field` (`analysis.match` or `spec.service.match`) as an HTTPRouteMatch
/// (conditions inside a match are ANDed, matches ORed, as in Istio).
fn route_match(canary: &Canary, field: &str, m: &HttpMatch) -> Result<Value, RouterError> {
    let mut out = Map::new();
    if let Some(uri) = &m.uri {
        let path = match (&uri.exact, &uri.prefix) {
            (Some(exact), None) if uri.suffix.is_none() && uri.regex.is_none() => {
                json!({ "type": "Exact", "value": exact })
            }
            (None, Some(prefix)) if uri.suffix.is_none() && uri.regex.is_none() => {
                json!({ "type": "PathPrefix", "value": prefix })
            }
            _ => {
                let (_, value) = string_match(canary, &format!("{field} uri"), uri)?;
                json!({ "type": "RegularExpression", "value": value })
            }
        };
        out.insert("path".into(), path);
    }
    if !m.headers.is_empty() {
        out.insert("headers".into(), Value::Array(named_matches(canary, field, "header", &m.headers)?));
    }
    if !m.query_params.is_empty() {
        out.insert(
            "queryParams".into(),
            Value::Array(named_matches(canary, field, "query parameter", &m.query_params)?),
        );
    }
    if let Some(method) = &m.method {
        match method {
            StringMatch { exact: Some(exact), prefix: None, suffix: None, regex: None } => {
                out.insert("method".into(), Value::String(exact.to_ascii_uppercase()));
            }
            _ => {
                return Err(super::unsupported(PROVIDER, "match a method other than exactly"));
            }
        }
    }
    if m.source_labels.is_some() {
        return Err(super::unsupported(PROVIDER, "match on sourceLabels"));
    }
    Ok(Value::Object(out))
}

fn as_string_match(m: &IstioStringMatch) -> StringMatch {
    StringMatch { exact: m.exact.clone(), prefix: m.prefix.clone(), suffix: None, regex: m.regex.clone() }
}

fn as_string_matches(conditions: &Option<BTreeMap<String, IstioStringMatch>>) -> BTreeMap<String, StringMatch> {
    conditions.iter().flatten().map(|(name, m)| (name.clone(), as_string_match(m))).collect()
}

/// The `spec.service.match` conditions as HTTPRouteMatches, as Flagger's gatewayapi router
/// maps them (uri, method, headers, queryParams; a header or query prefix becomes an
/// anchored regular expression). A condition that sets nothing is left out, as Flagger
/// does. The Istio-only fields, which Flagger drops on an HTTPRoute, are refused.
fn service_matches(canary: &Canary) -> Result<Vec<Value>, RouterError> {
    let mut out = Vec::new();
    for m in canary.spec.service.match_.iter().flatten() {
        let istio_only: Vec<&str> = [
            ("scheme", m.scheme.is_some()),
            ("authority", m.authority.is_some()),
            ("ignoreUriCase", m.ignore_uri_case.is_some()),
            ("withoutHeaders", m.without_headers.is_some()),
            ("sourceLabels", m.source_labels.is_some()),
            ("port", m.port.is_some()),
            ("gateways", m.gateways.is_some()),
            ("sourceNamespace", m.source_namespace.is_some()),
        ]
        .into_iter()
        .filter_map(|(field, is_set)| is_set.then_some(field))
        .collect();
        if !istio_only.is_empty() {
            return Err(invalid(
                canary,
                format!(
                    "spec.service.match {} cannot be written on a Gateway API HTTPRoute (Flagger's gatewayapi router drops them): remove them or use provider istio",
                    istio_only.join(", ")
                ),
            ));
        }
        let HttpMatchRequest { uri, method, headers, query_params, .. } = m;
        let condition = HttpMatch {
            headers: as_string_matches(headers),
            query_params: as_string_matches(query_params),
            uri: uri.as_ref().map(as_string_match),
            method: method.as_ref().map(as_string_match),
            source_labels: None,
        };
        if condition != HttpMatch::default() {
            out.push(route_match(canary, "spec.service.match", &condition)?);
        }
    }
    Ok(out)
}

/// Each A/B condition combined with each route-wide condition: the A/B condition wins
/// where both set the same field (headers and query parameters replace the route-wide
/// ones, as in Flagger's `mergeMatchConditions`).
fn merge_matches(ab: &[Value], service: &[Value]) -> Vec<Value> {
    if service.is_empty() {
        return ab.to_vec();
    }
    let mut merged = Vec::new();
    for a in ab {
        for s in service {
            let mut m = s.clone();
            if let (Value::Object(m), Value::Object(a)) = (&mut m, a) {
                m.extend(a.clone());
            }
            merged.push(m);
        }
    }
    merged
}

/// A header modifier filter of `spec.service.headers` (names sorted, as Flagger writes them).
fn header_filter(kind: &str, field: &str, ops: &HeaderOperations) -> Value {
    let headers = |map: &Option<BTreeMap<String, String>>| -> Vec<Value> {
        map.iter().flatten().map(|(name, value)| json!({ "name": name, "value": value })).collect()
    };
    let mut modifier = Map::new();
    for (key, list) in [("add", headers(&ops.add)), ("set", headers(&ops.set))] {
        if !list.is_empty() {
            modifier.insert(key.into(), Value::Array(list));
        }
    }
    if let Some(remove) = ops.remove.as_ref().filter(|r| !r.is_empty()) {
        modifier.insert("remove".into(), json!(remove));
    }
    let mut filter = Map::new();
    filter.insert("type".into(), Value::String(kind.into()));
    filter.insert(field.into(), Value::Object(modifier));
    Value::Object(filter)
}

/// The filters Flagger's `makeFilters` writes on every rule: request and response header
/// modifiers from `spec.service.headers`, then a URLRewrite from `spec.service.rewrite`
/// (`authority` as the hostname; `uri` replacing the full path, or the matched prefix when
/// `type` is `ReplacePrefixMatch`), then a RequestMirror filter per `spec.service.mirror`.
fn route_filters(canary: &Canary) -> Vec<Value> {
    let service = &canary.spec.service;
    let mut filters = Vec::new();
    if let Some(headers) = &service.headers {
        if let Some(request) = &headers.request {
            filters.push(header_filter("RequestHeaderModifier", "requestHeaderModifier", request));
        }
        if let Some(response) = &headers.response {
            filters.push(header_filter("ResponseHeaderModifier", "responseHeaderModifier", response));
        }
    }
    if let Some(rewrite) = &service.rewrite {
        let mut url_rewrite = Map::new();
        if let Some(authority) = rewrite.authority.as_ref().filter(|a| !a.is_empty()) {
            url_rewrite.insert("hostname".into(), Value::String(authority.clone()));
        }
        if let Some(uri) = rewrite.uri.as_ref().filter(|u| !u.is_empty()) {
            let path = if rewrite.type_.as_deref() == Some("ReplacePrefixMatch") {
                json!({ "type": "ReplacePrefixMatch", "replacePrefixMatch": uri })
            } else {
                json!({ "type": "ReplaceFullPath", "replaceFullPath": uri })
            };
            url_rewrite.insert("path".into(), path);
        }
        filters.push(json!({ "type": "URLRewrite", "urlRewrite": url_rewrite }));
    }
    for mirror in service.mirror.iter().flatten() {
        let b = &mirror.backend_ref;
        let mut backend = Map::new();
        for (key, value) in [("group", &b.group), ("kind", &b.kind), ("namespace", &b.namespace)] {
            if let Some(value) = value {
                backend.insert(key.into(), Value::String(value.clone()));
            }
        }
        backend.insert("name".into(), Value::String(b.name.clone()));
        if let Some(port) = b.port {
            backend.insert("port".into(), json!(port));
        }
        filters.push(json!({ "type": "RequestMirror", "requestMirror": { "backendRef": backend } }));
    }
    filters
}

fn backend_refs(names: &ServiceNames, port: i32, primary: u8, canary: u8) -> Value {
    json!([
        { "name": names.primary, "port": port, "weight": primary },
        { "name": names.canary, "port": port, "weight": canary },
    ])
}

fn timeouts(canary: &Canary) -> Option<Value> {
    let service = &canary.spec.service;
    let mut timeouts = Map::new();
    if let Some(request) = &service.timeout {
        timeouts.insert("request".into(), Value::String(request.clone()));
    }
    if let Some(backend) = &service.backend_timeout {
        timeouts.insert("backendRequest".into(), Value::String(backend.clone()));
    }
    (!timeouts.is_empty()).then_some(Value::Object(timeouts))
}

fn parent_refs(canary: &Canary) -> Value {
    let refs = canary.spec.service.gateway_refs.iter().map(|g| {
        let mut parent = Map::new();
        if let Some(group) = &g.group {
            parent.insert("group".into(), Value::String(group.clone()));
        }
        if let Some(kind) = &g.kind {
            parent.insert("kind".into(), Value::String(kind.clone()));
        }
        if let Some(namespace) = &g.namespace {
            parent.insert("namespace".into(), Value::String(namespace.clone()));
        }
        parent.insert("name".into(), Value::String(g.name.clone()));
        if let Some(section) = &g.section_name {
            parent.insert("sectionName".into(), Value::String(section.clone()));
        }
        if let Some(port) = g.port {
            parent.insert("port".into(), json!(port));
        }
        Value::Object(parent)
    });
    Value::Array(refs.collect())
}

/// The HTTPRoute `<svc>` for these weights.
pub fn build_http_route(canary: &Canary, weights: Weights) -> Result<Value, RouterError> {
    let names = ServiceNames::of(canary);
    let port = service_port(canary);
    let timeouts = timeouts(canary);
    let service_matches = service_matches(canary)?;
    let filters = route_filters(canary);

    let mut weighted = Map::new();
    let ab = ab_matches(canary);
    if !ab.is_empty() {
        let ab = ab.iter().map(|m| route_match(canary, "analysis.match", m)).collect::<Result<Vec<_>, _>>()?;
        weighted.insert("matches".into(), Value::Array(merge_matches(&ab, &service_matches)));
    } else if !service_matches.is_empty() {
        weighted.insert("matches".into(), Value::Array(service_matches.clone()));
    }
    let mut weighted_filters = filters.clone();
    if weights.mirror() {
        let mut mirror = json!({ "backendRef": { "name": names.canary, "port": port } });
        let percent = mirror_percent(canary);
        if percent != 100 {
            mirror["percent"] = json!(percent);
        }
        weighted_filters.push(json!({ "type": "RequestMirror", "requestMirror": mirror }));
    }
    if !weighted_filters.is_empty() {
        weighted.insert("filters".into(), Value::Array(weighted_filters));
    }
    let mut weighted_backends = backend_refs(&names, port, weights.primary(), weights.canary());
    let sticky = affinity::sticky(canary, weights);
    if let Sticky::Pin { canary_set_cookie, primary, .. } = &sticky {
        weighted_backends[1]["filters"] = json!([set_cookie_filter(canary_set_cookie)]);
        if let Some((_, primary_set_cookie)) = primary {
            weighted_backends[0]["filters"] = json!([set_cookie_filter(primary_set_cookie)]);
        }
    }
    weighted.insert("backendRefs".into(), weighted_backends);
    if let Some(timeouts) = &timeouts {
        weighted.insert("timeouts".into(), timeouts.clone());
    }

    let mut rules = sticky_rules(&sticky, &names, port, weights, &service_matches, &filters, timeouts.as_ref());
    rules.push(Value::Object(weighted));
    if !ab.is_empty() {
        let mut default = Map::new();
        if !service_matches.is_empty() {
            default.insert("matches".into(), Value::Array(service_matches));
        }
        if !filters.is_empty() {
            default.insert("filters".into(), Value::Array(filters));
        }
        default.insert("backendRefs".into(), backend_refs(&names, port, 100, 0));
        if let Some(timeouts) = timeouts {
            default.insert("timeouts".into(), timeouts);
        }
        rules.push(Value::Object(default));
    }

    let mut spec = Map::new();
    spec.insert("parentRefs".into(), parent_refs(canary));
    if !canary.spec.service.hosts.is_empty() {
        spec.insert("hostnames".into(), json!(canary.spec.service.hosts));
    }
    spec.insert("rules".into(), Value::Array(rules));
    manifest(&http_route_resource(canary), canary, &names.apex, Value::Object(spec))
}

/// A `ResponseHeaderModifier` filter adding one `Set-Cookie` header.
fn set_cookie_filter(set_cookie: &str) -> Value {
    json!({ "type": "ResponseHeaderModifier", "responseHeaderModifier": {
        "add": [{ "name": affinity::SET_COOKIE_HEADER, "value": set_cookie }] } })
}

/// The route-wide conditions with their headers replaced by a match of `cookie` in the
/// `Cookie` header (Flagger's `mergeMatchConditions` with the cookie condition); just the
/// cookie condition when there are none.
fn cookie_matches(cookie: &Cookie, service_matches: &[Value]) -> Value {
    let header =
        json!([{ "type": "RegularExpression", "name": affinity::COOKIE_HEADER, "value": cookie.header_regex() }]);
    if service_matches.is_empty() {
        return json!([{ "headers": header }]);
    }
    Value::Array(
        service_matches
            .iter()
            .map(|m| {
                let mut m = m.clone();
                m["headers"] = header.clone();
                m
            })
            .collect(),
    )
}

/// The rules before the weighted one for session affinity (see [`affinity`]): sticky
/// rules sending requests with the canary (or primary) cookie to the canary (or primary)
/// while the canary has weight; afterwards one rule that expires the last canary cookie.
fn sticky_rules(
    sticky: &Sticky,
    names: &ServiceNames,
    port: i32,
    weights: Weights,
    service_matches: &[Value],
    filters: &[Value],
    timeouts: Option<&Value>,
) -> Vec<Value> {
    let rule = |cookie: &Cookie, filters: Vec<Value>, backends: Value| {
        let mut rule = Map::new();
        rule.insert("matches".into(), cookie_matches(cookie, service_matches));
        if !filters.is_empty() {
            rule.insert("filters".into(), Value::Array(filters));
        }
        rule.insert("backendRefs".into(), backends);
        if let Some(timeouts) = timeouts {
            rule.insert("timeouts".into(), timeouts.clone());
        }
        Value::Object(rule)
    };
    match sticky {
        Sticky::Off => Vec::new(),
        Sticky::Pin { canary, primary, .. } => {
            let mut rules = vec![rule(canary, filters.to_vec(), backend_refs(names, port, 0, 100))];
            if let Some((primary, _)) = primary {
                rules.push(rule(primary, filters.to_vec(), backend_refs(names, port, 100, 0)));
            }
            rules
        }
        Sticky::Expire { cookie, set_cookie } => {
            // One ResponseHeaderModifier per rule: the Set-Cookie joins spec.service.headers' one.
            let mut filters = filters.to_vec();
            let added = json!({ "name": affinity::SET_COOKIE_HEADER, "value": set_cookie });
            match filters.iter_mut().find(|f| f["type"] == "ResponseHeaderModifier") {
                Some(existing) => {
                    let modifier = &mut existing["responseHeaderModifier"];
                    match modifier.get_mut("add").and_then(Value::as_array_mut) {
                        Some(add) => add.push(added),
                        None => modifier["add"] = json!([added]),
                    }
                }
                None => filters.push(set_cookie_filter(set_cookie)),
            }
            vec![rule(cookie, filters, backend_refs(names, port, weights.primary(), weights.canary()))]
        }
    }
}

/// Whether a rule is one of [`sticky_rules`]: each of its matches is a `Cookie` header
/// match of the shape petrel writes for a generated cookie.
fn is_sticky_rule(rule: &Value) -> bool {
    let Some(matches) = rule.get("matches").and_then(Value::as_array).filter(|m| !m.is_empty()) else {
        return false;
    };
    matches.iter().all(|m| {
        m.get("headers").and_then(Value::as_array).is_some_and(|headers| {
            headers.iter().any(|h| {
                h["type"] == "RegularExpression"
                    && h["name"] == affinity::COOKIE_HEADER
                    && h["value"].as_str().is_some_and(affinity::is_sticky_regex)
            })
        })
    })
}

/// The weights of an HTTPRoute built by [`build_http_route`]: those of its first rule
/// that is not a session affinity rule.
pub fn weights_of(route: &Value) -> Result<Weights, RouterError> {
    let bad = |reason: String| malformed(KIND, route, reason);
    let apex = route.pointer("/metadata/name").and_then(Value::as_str).ok_or_else(|| bad("it has no name".into()))?;
    let rules = route.pointer("/spec/rules").and_then(Value::as_array).ok_or_else(|| bad("it has no rules".into()))?;
    let rule = rules
        .iter()
        .find(|rule| !is_sticky_rule(rule))
        .or(rules.first())
        .ok_or_else(|| bad("it has no rules".into()))?;
    let refs = rule
        .get("backendRefs")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("its weighted rule has no backendRefs".into()))?;
    let weight_of = |service: String| -> Result<u8, RouterError> {
        let backend = refs
            .iter()
            .find(|r| r.get("name").and_then(Value::as_str) == Some(service.as_str()))
            .ok_or_else(|| bad(format!("its weighted rule has no backendRef to {service}")))?;
        weight_field(backend.get("weight"), bad)
    };
    let names = ServiceNames::from_apex(apex);
    // Only a mirror to the canary Service is the release's mirroring: `spec.service.mirror`
    // adds RequestMirror filters of its own (to shadows the user names), and taking those
    // for it would turn mirroring on at the next write.
    let mirror = rule.get("filters").and_then(Value::as_array).is_some_and(|filters| {
        filters.iter().any(|f| {
            f.get("type").and_then(Value::as_str) == Some("RequestMirror")
                && f.pointer("/requestMirror/backendRef/name").and_then(Value::as_str) == Some(names.canary.as_str())
                && f.pointer("/requestMirror/backendRef/namespace").is_none()
        })
    });
    let primary = weight_of(names.primary)?;
    let canary = weight_of(names.canary)?;
    Weights::new(primary, canary, mirror)
}

pub(crate) struct GatewayApi;

impl MeshRoutes for GatewayApi {
    fn build(canary: &Canary, weights: Weights) -> Result<Vec<RouteObject>, RouterError> {
        Ok(vec![RouteObject { resource: http_route_resource(canary), manifest: build_http_route(canary, weights)? }])
    }

    fn weighted_object(canary: &Canary) -> (ApiResource, String) {
        (http_route_resource(canary), ServiceNames::of(canary).apex)
    }

    fn weights_of(obj: &Value) -> Result<Weights, RouterError> {
        weights_of(obj)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    #[test]
    fn istio_only_match_fields_are_refused_rather_than_dropped() {
        // Istio-only match fields, dropped by Flagger on an HTTPRoute, are refused.
        let mut canary = super::super::testing::canary();
        canary.spec.service.match_ = Some(
            serde_json::from_value(json!([{ "uri": { "prefix": "/api" }, "authority": { "exact": "a" }, "port": 80 }]))
                .unwrap(),
        );
        let message = build_http_route(&canary, super::super::testing::weights(100, 0, false)).unwrap_err().to_string();
        assert!(
            message.contains("spec.service.match authority, port cannot be written on a Gateway API HTTPRoute"),
            "{message}"
        );
    }

    #[test]
    fn service_match_is_written_and_merged_with_the_ab_conditions() {
        let service_match = json!([{ "name": "api", "uri": { "prefix": "/api" }, "method": { "exact": "GET" },
            "headers": { "x-tenant": { "exact": "blue" }, "x-zone": { "prefix": "eu-" } },
            "queryParams": { "debug": { "regex": "^(true|1)$" } } }]);
        let mut canary = canary();
        canary.spec.service.match_ = Some(serde_json::from_value(service_match).unwrap());
        let written = json!({
            "path": { "type": "PathPrefix", "value": "/api" },
            "method": "GET",
            "headers": [
                { "type": "Exact", "name": "x-tenant", "value": "blue" },
                { "type": "RegularExpression", "name": "x-zone", "value": "^eu-.*" },
            ],
            "queryParams": [{ "type": "RegularExpression", "name": "debug", "value": "^(true|1)$" }],
        });
        let route = build_http_route(&canary, weights(90, 10, false)).unwrap();
        assert_eq!(route.pointer("/spec/rules/0/matches"), Some(&json!([written.clone()])));
        assert_eq!(route["spec"]["rules"].as_array().unwrap().len(), 1);

        // A/B: each A/B condition narrows the route-wide one, its headers replacing the
        // route-wide headers (Flagger's mergeMatchConditions); the default rule keeps the
        // route-wide condition.
        let mut ab = ab_canary();
        ab.spec.service.match_ = canary.spec.service.match_.clone();
        let route = build_http_route(&ab, weights(0, 100, false)).unwrap();
        let matches = route.pointer("/spec/rules/0/matches").unwrap().as_array().unwrap();
        assert_eq!(matches.len(), 2);
        assert_eq!(matches[0]["path"], written["path"]);
        assert_eq!(matches[0]["queryParams"], written["queryParams"]);
        assert_eq!(matches[0]["headers"], json!([{ "type": "Exact", "name": "x-canary", "value": "insider" }]));
        assert_eq!(route.pointer("/spec/rules/1/matches"), Some(&json!([written])));
    }

    #[test]
    fn headers_and_rewrite_become_filters_on_every_rule() {
        let mut canary = ab_canary();
        canary.spec.service.headers = Some(
            serde_json::from_value(json!({
                "request": { "set": { "x-b": "2", "x-a": "1" }, "add": { "x-c": "3" }, "remove": ["x-debug"] },
                "response": { "remove": ["server"] },
            }))
            .unwrap(),
        );
        canary.spec.service.rewrite =
            Some(serde_json::from_value(json!({ "uri": "/v2", "authority": "api.internal" })).unwrap());
        let filters = json!([
            { "type": "RequestHeaderModifier", "requestHeaderModifier": {
                "add": [{ "name": "x-c", "value": "3" }],
                "set": [{ "name": "x-a", "value": "1" }, { "name": "x-b", "value": "2" }],
                "remove": ["x-debug"] } },
            { "type": "ResponseHeaderModifier", "responseHeaderModifier": { "remove": ["server"] } },
            // Flagger's default rewrite type replaces the full path.
            { "type": "URLRewrite", "urlRewrite": { "hostname": "api.internal",
                "path": { "type": "ReplaceFullPath", "replaceFullPath": "/v2" } } },
        ]);
        let route = build_http_route(&canary, weights(0, 100, false)).unwrap();
        assert_eq!(route.pointer("/spec/rules/0/filters"), Some(&filters));
        assert_eq!(route.pointer("/spec/rules/1/filters"), Some(&filters));

        // Then one RequestMirror per service.mirror; the mirror of blue/green mirroring last.
        canary.spec.service.mirror = Some(
            serde_json::from_value(json!([{ "backendRef": { "name": "shadow", "namespace": "audit", "port": 8080 } }]))
                .unwrap(),
        );
        let route = build_http_route(&canary, weights(100, 0, true)).unwrap();
        let written = route.pointer("/spec/rules/0/filters").unwrap().as_array().unwrap();
        assert_eq!(written.len(), 5);
        assert_eq!(
            written[3],
            json!({ "type": "RequestMirror", "requestMirror": { "backendRef": { "namespace": "audit", "name": "shadow", "port": 8080 } } })
        );
        assert_eq!(written[4]["requestMirror"]["backendRef"]["name"], "podinfo-canary");
        assert_eq!(route.pointer("/spec/rules/1/filters").unwrap().as_array().unwrap().len(), 4);

        canary.spec.service.rewrite =
            Some(serde_json::from_value(json!({ "uri": "/v2", "type": "ReplacePrefixMatch" })).unwrap());
        let route = build_http_route(&canary, weights(0, 100, false)).unwrap();
        assert_eq!(
            route.pointer("/spec/rules/0/filters/2"),
            Some(
                &json!({ "type": "URLRewrite", "urlRewrite": { "path": { "type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2" } } })
            )
        );
    }

    use super::super::testing::{ab_canary, any_weights, assert_manifest, canary, weights};
    use super::*;

    #[test]
    fn routes_match_their_manifests() {
        assert_manifest(&build_http_route(&canary(), weights(100, 0, false)).unwrap(), "gatewayapi_100_0");
        assert_manifest(&build_http_route(&canary(), weights(90, 10, false)).unwrap(), "gatewayapi_90_10");
        assert_manifest(&build_http_route(&ab_canary(), weights(0, 100, false)).unwrap(), "gatewayapi_ab");
        assert_manifest(&build_http_route(&canary(), weights(100, 0, true)).unwrap(), "gatewayapi_mirror");
    }

    #[test]
    fn v1beta1_is_used_only_when_asked_for() {
        let mut canary = canary();
        canary.spec.provider = Some("gatewayapi:v1beta1".into());
        let route = build_http_route(&canary, weights(100, 0, false)).unwrap();
        assert_eq!(route["apiVersion"], "gateway.networking.k8s.io/v1beta1");
        for provider in [None, Some("gatewayapi"), Some("gatewayapi:v1")] {
            canary.spec.provider = provider.map(String::from);
            let route = build_http_route(&canary, weights(100, 0, false)).unwrap();
            assert_eq!(route["apiVersion"], "gateway.networking.k8s.io/v1");
        }
    }

    #[test]
    fn timeouts_and_partial_mirroring_are_written() {
        let mut canary = canary();
        canary.spec.service.timeout = Some("30s".into());
        canary.spec.service.backend_timeout = Some("10s".into());
        canary.spec.analysis.as_mut().unwrap().mirror_weight = Some(25);
        let route = build_http_route(&canary, weights(100, 0, true)).unwrap();
        assert_eq!(
            route.pointer("/spec/rules/0/timeouts"),
            Some(&json!({ "request": "30s", "backendRequest": "10s" }))
        );
        assert_eq!(route.pointer("/spec/rules/0/filters/0/requestMirror/percent"), Some(&json!(25)));
    }

    #[test]
    fn prefix_and_suffix_header_matches_become_anchored_regexes() {
        let mut canary = ab_canary();
        let m = &mut canary.spec.analysis.as_mut().unwrap().match_.as_mut().unwrap()[0];
        m.headers.insert("x-user".into(), StringMatch { prefix: Some("beta.".into()), ..StringMatch::default() });
        m.headers.insert("x-zone".into(), StringMatch { suffix: Some("-eu".into()), ..StringMatch::default() });
        let route = build_http_route(&canary, weights(0, 100, false)).unwrap();
        let headers = route.pointer("/spec/rules/0/matches/0/headers").unwrap();
        assert!(
            headers
                .as_array()
                .unwrap()
                .contains(&json!({ "type": "RegularExpression", "name": "x-user", "value": r"^beta\..*" }))
        );
        assert!(
            headers
                .as_array()
                .unwrap()
                .contains(&json!({ "type": "RegularExpression", "name": "x-zone", "value": ".*-eu$" }))
        );
    }

    #[test]
    fn an_ambiguous_string_match_is_rejected() {
        let mut canary = ab_canary();
        let m = &mut canary.spec.analysis.as_mut().unwrap().match_.as_mut().unwrap()[0];
        m.headers.insert(
            "x-both".into(),
            StringMatch { exact: Some("a".into()), regex: Some("b".into()), ..StringMatch::default() },
        );
        assert!(matches!(build_http_route(&canary, weights(0, 100, false)), Err(RouterError::InvalidCanary { .. })));
    }

    #[test]
    fn a_route_without_our_backends_is_malformed() {
        let mut route = build_http_route(&canary(), weights(90, 10, false)).unwrap();
        route["spec"]["rules"][0]["backendRefs"][1]["name"] = json!("someone-else");
        assert!(matches!(weights_of(&route), Err(RouterError::Malformed { .. })));
    }

    #[test]
    fn session_affinity_pins_sessions_while_the_canary_has_weight() {
        use super::super::testing::{expired_cookies, pinned_cookies, sticky_canary};
        let pinned = sticky_canary(true, pinned_cookies());
        let route = build_http_route(&pinned, weights(90, 10, false)).unwrap();
        assert_manifest(&route, "gatewayapi_sticky");
        let rules = route["spec"]["rules"].as_array().unwrap();
        assert_eq!(rules.len(), 3);
        // The sticky canary rule: the canary cookie to the canary.
        assert_eq!(
            rules[0]["matches"],
            json!([{ "headers": [{ "type": "RegularExpression", "name": "Cookie", "value": ".*canary-cookie=0123456789abcdef.*" }] }])
        );
        assert_eq!(rules[0]["backendRefs"][1]["weight"], 100);
        // The sticky primary rule: the primary cookie to the primary.
        assert_eq!(rules[1]["matches"][0]["headers"][0]["value"], ".*primary-cookie=fedcba9876543210.*");
        assert_eq!(rules[1]["backendRefs"][0]["weight"], 100);
        // The weighted rule sets both cookies; the primary's for one interval.
        assert_eq!(
            rules[2]["backendRefs"][1]["filters"][0]["responseHeaderModifier"]["add"][0]["value"],
            "canary-cookie=0123456789abcdef; Max-Age=600"
        );
        assert_eq!(
            rules[2]["backendRefs"][0]["filters"][0]["responseHeaderModifier"]["add"][0]["value"],
            "primary-cookie=fedcba9876543210; Max-Age=60"
        );
        assert_eq!(weights_of(&route).unwrap(), weights(90, 10, false));

        // Without primaryCookieName: one sticky rule, nothing on the primary.
        let canary_only = sticky_canary(false, pinned_cookies());
        let route = build_http_route(&canary_only, weights(70, 30, false)).unwrap();
        let rules = route["spec"]["rules"].as_array().unwrap();
        assert_eq!(rules.len(), 2);
        assert!(rules[1]["backendRefs"][0].get("filters").is_none());
        assert_eq!(weights_of(&route).unwrap(), weights(70, 30, false));

        // After promotion or rollback: the last canary cookie is expired, requests carrying
        // it go where everyone else goes.
        let expired = sticky_canary(true, expired_cookies());
        let route = build_http_route(&expired, weights(100, 0, false)).unwrap();
        assert_manifest(&route, "gatewayapi_sticky_expired");
        let rules = route["spec"]["rules"].as_array().unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(
            rules[0]["filters"],
            json!([{ "type": "ResponseHeaderModifier", "responseHeaderModifier": {
                "add": [{ "name": "Set-Cookie", "value": "canary-cookie=0123456789abcdef; Max-Age=-1" }] } }])
        );
        assert_eq!(rules[0]["backendRefs"], rules[1]["backendRefs"]);
        assert!(rules[1]["backendRefs"].as_array().unwrap().iter().all(|b| b.get("filters").is_none()));
        assert_eq!(weights_of(&route).unwrap(), weights(100, 0, false));
        // Nothing to expire: the plain route.
        let fresh = sticky_canary(true, super::super::affinity::Cookies::default());
        assert_eq!(
            build_http_route(&fresh, weights(100, 0, false)).unwrap(),
            build_http_route(&canary(), weights(100, 0, false)).unwrap()
        );
    }

    #[test]
    fn sticky_rules_keep_the_route_wide_conditions_and_filters() {
        use super::super::testing::{expired_cookies, pinned_cookies, sticky_canary};
        let mut pinned = sticky_canary(false, pinned_cookies());
        pinned.spec.service.match_ = Some(
            serde_json::from_value(
                json!([{ "uri": { "prefix": "/api" }, "headers": { "x-tenant": { "exact": "blue" } } }]),
            )
            .unwrap(),
        );
        pinned.spec.service.headers =
            Some(serde_json::from_value(json!({ "response": { "add": { "x-served-by": "petrel" } } })).unwrap());
        pinned.spec.service.timeout = Some("5s".into());
        let route = build_http_route(&pinned, weights(90, 10, false)).unwrap();
        let sticky = &route["spec"]["rules"][0];
        // The cookie replaces the route-wide headers (Flagger's mergeMatchConditions); the path stays.
        assert_eq!(
            sticky["matches"],
            json!([{ "path": { "type": "PathPrefix", "value": "/api" },
                "headers": [{ "type": "RegularExpression", "name": "Cookie", "value": ".*canary-cookie=0123456789abcdef.*" }] }])
        );
        assert_eq!(sticky["filters"], route["spec"]["rules"][1]["filters"]);
        assert_eq!(sticky["timeouts"], json!({ "request": "5s" }));
        assert_eq!(weights_of(&route).unwrap(), weights(90, 10, false));

        // Expiry joins the Set-Cookie to the one response header modifier of the rule.
        let mut expired = sticky_canary(false, expired_cookies());
        expired.spec.service.headers = pinned.spec.service.headers.clone();
        let route = build_http_route(&expired, weights(100, 0, false)).unwrap();
        assert_eq!(
            route.pointer("/spec/rules/0/filters"),
            Some(&json!([{ "type": "ResponseHeaderModifier", "responseHeaderModifier": { "add": [
                { "name": "x-served-by", "value": "petrel" },
                { "name": "Set-Cookie", "value": "canary-cookie=0123456789abcdef; Max-Age=-1" }] } }]))
        );
    }

    #[test]
    fn an_ab_cookie_condition_is_not_taken_for_a_sticky_rule() {
        // ab_canary's second condition is a Cookie regex: its rule is still the weighted one.
        let mut ab = ab_canary();
        let conditions = ab.spec.analysis.as_mut().unwrap().match_.as_mut().unwrap();
        conditions.remove(0);
        conditions[0].headers = BTreeMap::from([(
            "Cookie".to_string(),
            StringMatch { regex: Some(".*canary=always.*".into()), ..StringMatch::default() },
        )]);
        let route = build_http_route(&ab, weights(0, 100, false)).unwrap();
        assert_eq!(weights_of(&route).unwrap(), weights(0, 100, false));
    }

    proptest! {
        #[test]
        fn weights_round_trip(w in any_weights(true), ab in any::<bool>(), shadow in any::<bool>()) {
            let mut canary = if ab { ab_canary() } else { canary() };
            if shadow {
                // The user's own mirrors are not the release's mirroring.
                canary.spec.service.mirror = Some(serde_json::from_value(json!([
                    { "backendRef": { "name": "shadow", "port": 9898 } },
                    { "backendRef": { "name": "podinfo-canary", "namespace": "audit", "port": 9898 } },
                ])).unwrap());
            }
            prop_assert_eq!(weights_of(&build_http_route(&canary, w).unwrap()).unwrap(), w);
        }

        #[test]
        fn weights_round_trip_with_session_affinity(w in any_weights(false), primary in any::<bool>(), after in any::<bool>()) {
            use super::super::testing::{expired_cookies, pinned_cookies, sticky_canary};
            let canary = sticky_canary(primary, if after { expired_cookies() } else { pinned_cookies() });
            prop_assert_eq!(weights_of(&build_http_route(&canary, w).unwrap()).unwrap(), w);
        }
    }
}
