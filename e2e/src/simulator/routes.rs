//! Reading the traffic split out of the route objects petrel writes.
//!
//! These parsers are written from the proxies' documented semantics, not
//! from petrel's router code, so the simulator is an independent witness of
//! what petrel wrote. They take the object as JSON (as read from the API
//! server) and never fail on fields they do not know.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use serde_json::Value;

use super::split::{HeaderMatch, HeaderRule, HeaderValueMatch, SetCookies, Side, Split, Weights, classify_backend};

/// Default NGINX annotation prefix (the controller's `--annotations-prefix`).
pub const NGINX_ANNOTATION_PREFIX: &str = "nginx.ingress.kubernetes.io";

/// The mesh or ingress a Canary routes through (`spec.provider`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Gateway API HTTPRoute.
    GatewayApi,
    /// Istio VirtualService.
    Istio,
    /// SMI TrafficSplit, Linkerd's metrics.
    Linkerd,
    /// SMI TrafficSplit, Linkerd's metrics (as Flagger's SMI observer).
    Smi,
    /// NGINX canary Ingress.
    Nginx,
    /// Contour HTTPProxy.
    Contour,
    /// Traefik TraefikService.
    Traefik,
    /// Plain Services: the apex Service's selector picks the pods.
    Kubernetes,
    /// Linkerd through Gateway API: an HTTPRoute attached to the apex
    /// Service (the Canary names `provider: linkerd` and Service gatewayRefs),
    /// Linkerd's metrics.
    LinkerdGatewayApi,
    /// APISIX: the canary ApisixRoute `<route>-<service>-canary`.
    Apisix,
    /// Gloo Edge: a RouteTable over generated Upstreams.
    Gloo,
    /// Skipper: a canary Ingress with `zalando.org/backend-weights`.
    Skipper,
    /// Kuma: a MeshHTTPRoute.
    Kuma,
    /// Knative: the Knative Service's traffic block; revisions are the sides.
    Knative,
}

impl Provider {
    /// Every provider.
    pub const ALL: [Provider; 14] = [
        Provider::GatewayApi,
        Provider::Istio,
        Provider::Linkerd,
        Provider::Smi,
        Provider::Nginx,
        Provider::Contour,
        Provider::Traefik,
        Provider::Kubernetes,
        Provider::LinkerdGatewayApi,
        Provider::Apisix,
        Provider::Gloo,
        Provider::Skipper,
        Provider::Kuma,
        Provider::Knative,
    ];

    /// The name as written in a Canary's `spec.provider`.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::GatewayApi => "gatewayapi",
            Provider::Istio => "istio",
            Provider::Linkerd => "linkerd",
            Provider::Smi => "smi",
            Provider::Nginx => "nginx",
            Provider::Contour => "contour",
            Provider::Traefik => "traefik",
            Provider::Kubernetes => "kubernetes",
            Provider::LinkerdGatewayApi => "linkerd",
            Provider::Apisix => "apisix",
            Provider::Gloo => "gloo",
            Provider::Skipper => "skipper",
            Provider::Kuma => "kuma",
            Provider::Knative => "knative",
        }
    }

    /// A name that tells the simulated providers apart (Linkerd has two).
    pub fn label(self) -> &'static str {
        match self {
            Provider::LinkerdGatewayApi => "linkerd-gatewayapi",
            other => other.as_str(),
        }
    }

    /// API group and kind of the route object, and the version order to
    /// try when discovery is not available.
    pub fn route_kind(self) -> RouteKind {
        match self {
            Provider::GatewayApi => RouteKind::new("gateway.networking.k8s.io", "HTTPRoute"),
            Provider::Istio => RouteKind::new("networking.istio.io", "VirtualService"),
            Provider::Linkerd | Provider::Smi => RouteKind::new("split.smi-spec.io", "TrafficSplit"),
            Provider::Nginx => RouteKind::new("networking.k8s.io", "Ingress"),
            Provider::Contour => RouteKind::new("projectcontour.io", "HTTPProxy"),
            Provider::Traefik => RouteKind::new("traefik.io", "TraefikService"),
            Provider::Kubernetes => RouteKind::new("", "Service"),
            Provider::LinkerdGatewayApi => RouteKind::new("gateway.networking.k8s.io", "HTTPRoute"),
            Provider::Apisix => RouteKind::new("apisix.apache.org", "ApisixRoute"),
            Provider::Gloo => RouteKind::new("gateway.solo.io", "RouteTable"),
            Provider::Skipper => RouteKind::new("networking.k8s.io", "Ingress"),
            Provider::Kuma => RouteKind::new("kuma.io", "MeshHTTPRoute"),
            Provider::Knative => RouteKind::new("serving.knative.dev", "Service"),
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// A provider name the simulator does not model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "provider {0:?} is not simulated; known: gatewayapi, istio, linkerd, smi, nginx, contour, traefik, kubernetes, apisix, gloo, skipper, kuma, knative"
)]
pub struct UnknownProvider(pub String);

impl FromStr for Provider {
    type Err = UnknownProvider;

    /// Accepts a version suffix as Canaries write it (`gatewayapi:v1`).
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let base = name.split_once(':').map_or(name, |(base, _)| base);
        Provider::ALL.into_iter().find(|p| p.as_str() == base).ok_or_else(|| UnknownProvider(name.to_owned()))
    }
}

/// API group and kind of a route object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteKind {
    /// API group (`""` for the core group).
    pub group: &'static str,
    /// Kind.
    pub kind: &'static str,
}

impl RouteKind {
    const fn new(group: &'static str, kind: &'static str) -> Self {
        RouteKind { group, kind }
    }
}

/// The name of the route object petrel writes for a Canary whose Service is
/// `service` (and, for NGINX, whose `ingressRef` is `ingress`).
pub fn route_object_name(provider: Provider, service: &str, ingress: Option<&str>) -> String {
    match provider {
        Provider::Nginx | Provider::Skipper => format!("{}-canary", ingress.unwrap_or(service)),
        _ => service.to_owned(),
    }
}

/// A route object that does not have the shape its kind requires.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} has an unexpected shape: {problem}")]
pub struct RouteShapeError {
    /// Kind of the object.
    pub kind: &'static str,
    /// What is wrong.
    pub problem: String,
}

fn shape(kind: &'static str, problem: impl Into<String>) -> RouteShapeError {
    RouteShapeError { kind, problem: problem.into() }
}

/// The split described by `route`, an object of `provider`'s route kind for
/// the Canary Service `service`. Not for [`Provider::Kubernetes`], whose
/// split needs the Deployments too (see [`split_from_service_selector`]).
pub fn parse_route(provider: Provider, route: &Value, service: &str) -> Result<Split, RouteShapeError> {
    match provider {
        Provider::GatewayApi => parse_http_route(route, service),
        Provider::Istio => parse_virtual_service(route, service),
        Provider::Linkerd | Provider::Smi => parse_traffic_split(route, service),
        Provider::Nginx => Ok(parse_canary_ingress(route, NGINX_ANNOTATION_PREFIX)),
        Provider::Contour => parse_http_proxy(route, service),
        Provider::Traefik => parse_traefik_service(route, service),
        Provider::LinkerdGatewayApi => parse_http_route(route, service),
        Provider::Apisix => parse_apisix_route(route, service),
        Provider::Gloo => parse_route_table(route, service),
        Provider::Skipper => parse_skipper_ingress(route, service),
        Provider::Kuma => parse_mesh_http_route(route, service),
        Provider::Knative => parse_knative_traffic(route),
        Provider::Kubernetes => Err(shape(
            "Service",
            "the kubernetes provider's split comes from the Service selector and the Deployments' labels",
        )),
    }
}

fn array<'a>(value: &'a Value, key: &str) -> &'a [Value] {
    value.get(key).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

fn string<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

/// A weight field: a JSON integer, float or a numeric string.
fn weight(value: Option<&Value>, kind: &'static str) -> Result<Option<u32>, RouteShapeError> {
    let Some(value) = value else { return Ok(None) };
    let number = match value {
        Value::Null => return Ok(None),
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match number {
        Some(n) if n >= 0.0 && n.fract() == 0.0 && n <= f64::from(u32::MAX) => Ok(Some(n as u32)),
        _ => Err(shape(kind, format!("weight {value} is not a non-negative integer"))),
    }
}

/// Sorts header rules most specific first, as Gateway API and Contour pick
/// the most specific match rather than the first.
fn most_specific_first(mut rules: Vec<HeaderRule>) -> Vec<HeaderRule> {
    rules.sort_by_key(|r| std::cmp::Reverse(r.matches.len()));
    rules
}

/// Gateway API HTTPRoute: `spec.rules[].backendRefs[].weight` (default 1),
/// header matches for A/B and session affinity, a `RequestMirror` filter, and the
/// `Set-Cookie` values of `ResponseHeaderModifier` filters (on the rule: every response;
/// on a backendRef: that backend's responses).
pub fn parse_http_route(route: &Value, service: &str) -> Result<Split, RouteShapeError> {
    const KIND: &str = "HTTPRoute";
    let spec = route.get("spec").ok_or_else(|| shape(KIND, "no spec"))?;
    let mut header_rules = Vec::new();
    let mut default: Option<(Weights, Option<u32>, SetCookies)> = None;
    for rule in array(spec, "rules") {
        let mut weights = Weights::default();
        let mut set_cookies = SetCookies::default();
        set_cookies.add(None, &http_route_set_cookies(array(rule, "filters")));
        for backend in array(rule, "backendRefs") {
            let name = string(backend, "name").ok_or_else(|| shape(KIND, "backendRef without name"))?;
            weights.add_backend(name, service, weight(backend.get("weight"), KIND)?.unwrap_or(1));
            if let Some(side) = classify_backend(name, service) {
                set_cookies.add(Some(side), &http_route_set_cookies(array(backend, "filters")));
            }
        }
        let mirror = array(rule, "filters")
            .iter()
            .filter(|f| string(f, "type") == Some("RequestMirror"))
            .filter_map(|f| f.get("requestMirror"))
            .find(|m| {
                m.get("backendRef").and_then(|b| string(b, "name")).and_then(|name| classify_backend(name, service))
                    == Some(Side::Canary)
            })
            .map(http_route_mirror_percent)
            .transpose()?;
        let matches = array(rule, "matches");
        // A rule without matches matches every request, as does a match
        // without header conditions (the simulator's requests are `GET /`).
        let mut catch_all = matches.is_empty();
        for m in matches {
            let headers = array(m, "headers")
                .iter()
                .map(|h| {
                    let name = string(h, "name").ok_or_else(|| shape(KIND, "header match without name"))?;
                    let value = string(h, "value").unwrap_or_default().to_owned();
                    Ok(HeaderMatch::new(
                        name,
                        match string(h, "type") {
                            Some("RegularExpression") => HeaderValueMatch::Regex(value),
                            _ => HeaderValueMatch::Exact(value),
                        },
                    ))
                })
                .collect::<Result<Vec<_>, RouteShapeError>>()?;
            if headers.is_empty() {
                catch_all = true;
            } else {
                header_rules.push(HeaderRule { matches: headers, weights, set_cookies: set_cookies.clone() });
            }
        }
        if catch_all && default.is_none() {
            default = Some((weights, mirror, set_cookies));
        }
    }
    let (default, mirror_percent, default_set_cookies) = default.unwrap_or_default();
    Ok(Split { header_rules: most_specific_first(header_rules), default, mirror_percent, default_set_cookies })
}

/// The response header whose values sessions keep.
const SET_COOKIE: &str = "set-cookie";

/// The `Set-Cookie` values Gateway API `ResponseHeaderModifier` filters add or set.
fn http_route_set_cookies(filters: &[Value]) -> Vec<String> {
    filters
        .iter()
        .filter(|f| string(f, "type") == Some("ResponseHeaderModifier"))
        .filter_map(|f| f.get("responseHeaderModifier"))
        .flat_map(|m| array(m, "add").iter().chain(array(m, "set")))
        .filter(|h| string(h, "name").is_some_and(|n| n.eq_ignore_ascii_case(SET_COOKIE)))
        .filter_map(|h| string(h, "value").map(str::to_owned))
        .collect()
}

/// The `Set-Cookie` values of an Istio `headers` block's `response.add` and
/// `response.set` (maps of header name to value).
fn istio_set_cookies(headers: Option<&Value>) -> Vec<String> {
    let response = headers.and_then(|h| h.get("response"));
    ["add", "set"]
        .into_iter()
        .filter_map(|op| response.and_then(|r| r.get(op)).and_then(Value::as_object))
        .flatten()
        .filter(|(name, _)| name.eq_ignore_ascii_case(SET_COOKIE))
        .filter_map(|(_, value)| value.as_str().map(str::to_owned))
        .collect()
}

/// `percent`, or `fraction` (numerator/denominator, default 100), or 100.
fn http_route_mirror_percent(mirror: &Value) -> Result<u32, RouteShapeError> {
    const KIND: &str = "HTTPRoute";
    if let Some(percent) = weight(mirror.get("percent"), KIND)? {
        return Ok(percent);
    }
    if let Some(fraction) = mirror.get("fraction") {
        let numerator = weight(fraction.get("numerator"), KIND)?.unwrap_or(0);
        let denominator = weight(fraction.get("denominator"), KIND)?.unwrap_or(100);
        if denominator == 0 {
            return Err(shape(KIND, "RequestMirror fraction with denominator 0"));
        }
        return Ok((f64::from(numerator) * 100.0 / f64::from(denominator)).round() as u32);
    }
    Ok(100)
}

/// Istio VirtualService: `spec.http[]` evaluated in order, first match
/// wins; `route[].weight` (a lone destination gets everything); `mirror`
/// with `mirrorPercentage.value` (or legacy `mirrorPercent`, default 100); the
/// `Set-Cookie` values of `headers.response.add`/`set` (on the HTTP route: every
/// response; on a `route[]` destination: that destination's responses).
pub fn parse_virtual_service(vs: &Value, service: &str) -> Result<Split, RouteShapeError> {
    const KIND: &str = "VirtualService";
    let spec = vs.get("spec").ok_or_else(|| shape(KIND, "no spec"))?;
    let mut header_rules = Vec::new();
    for http in array(spec, "http") {
        let routes = array(http, "route");
        let mut weights = Weights::default();
        let mut set_cookies = SetCookies::default();
        set_cookies.add(None, &istio_set_cookies(http.get("headers")));
        for route in routes {
            let host = route
                .get("destination")
                .and_then(|d| string(d, "host"))
                .ok_or_else(|| shape(KIND, "route without destination.host"))?;
            let w = match weight(route.get("weight"), KIND)? {
                Some(w) => w,
                None if routes.len() == 1 => 100,
                None => 0,
            };
            weights.add_backend(host, service, w);
            if let Some(side) = classify_backend(host, service) {
                set_cookies.add(Some(side), &istio_set_cookies(route.get("headers")));
            }
        }
        let mut header_matches = Vec::new();
        let mut catch_all = array(http, "match").is_empty();
        for m in array(http, "match") {
            let headers = m.get("headers").and_then(Value::as_object);
            let matches: Vec<HeaderMatch> = headers
                .into_iter()
                .flatten()
                .map(|(name, condition)| HeaderMatch::new(name, istio_string_match(condition)))
                .collect();
            if matches.is_empty() {
                catch_all = true;
            } else {
                header_matches.push(matches);
            }
        }
        if catch_all {
            let mirror = http
                .get("mirror")
                .and_then(|m| string(m, "host"))
                .filter(|host| classify_backend(host, service) == Some(Side::Canary))
                .map(|_| {
                    let percent = http
                        .get("mirrorPercentage")
                        .and_then(|p| p.get("value"))
                        .and_then(Value::as_f64)
                        .or_else(|| http.get("mirrorPercent").and_then(Value::as_f64))
                        .unwrap_or(100.0);
                    percent.round().clamp(0.0, 100.0) as u32
                });
            // Rules after a catch-all are never reached.
            return Ok(Split {
                header_rules,
                default: weights,
                mirror_percent: mirror,
                default_set_cookies: set_cookies,
            });
        }
        header_rules.extend(header_matches.into_iter().map(|matches| HeaderRule {
            matches,
            weights,
            set_cookies: set_cookies.clone(),
        }));
    }
    Ok(Split { header_rules, ..Split::default() })
}

fn istio_string_match(condition: &Value) -> HeaderValueMatch {
    if let Some(exact) = string(condition, "exact") {
        HeaderValueMatch::Exact(exact.to_owned())
    } else if let Some(prefix) = string(condition, "prefix") {
        HeaderValueMatch::Regex(format!("{}.*", regex::escape(prefix)))
    } else if let Some(re) = string(condition, "regex") {
        HeaderValueMatch::Regex(re.to_owned())
    } else {
        HeaderValueMatch::Present
    }
}

/// SMI TrafficSplit (any version): `spec.backends[].weight`, an integer or
/// (v1alpha1) a quantity such as `"500m"`.
pub fn parse_traffic_split(ts: &Value, service: &str) -> Result<Split, RouteShapeError> {
    const KIND: &str = "TrafficSplit";
    let spec = ts.get("spec").ok_or_else(|| shape(KIND, "no spec"))?;
    let mut weights = Weights::default();
    for backend in array(spec, "backends") {
        let name = string(backend, "service").ok_or_else(|| shape(KIND, "backend without service"))?;
        let w = match backend.get("weight") {
            Some(Value::String(q)) => {
                quantity(q).ok_or_else(|| shape(KIND, format!("weight {q:?} is not a quantity")))?
            }
            other => weight(other, KIND)?.unwrap_or(0),
        };
        weights.add_backend(name, service, w);
    }
    Ok(Split { default: weights, ..Split::default() })
}

/// A resource.Quantity weight (`"90"`, `"900m"`); milli-units are rounded
/// to whole units of a thousand, as v1alpha1 weights are proportions.
fn quantity(q: &str) -> Option<u32> {
    let q = q.trim();
    if let Some(milli) = q.strip_suffix('m') {
        let v: f64 = milli.parse().ok()?;
        return (v >= 0.0).then(|| (v / 1000.0).round() as u32);
    }
    let v: f64 = q.parse().ok()?;
    (v >= 0.0 && v.fract() == 0.0).then_some(v as u32)
}

/// NGINX canary Ingress (`<ingress>-canary`): `<prefix>/canary: "true"`,
/// `canary-weight` out of `canary-weight-total` (default 100), and
/// `canary-by-header` (+ `-value` / `-pattern`).
pub fn parse_canary_ingress(ingress: &Value, prefix: &str) -> Split {
    let annotations = ingress.get("metadata").and_then(|m| m.get("annotations")).and_then(Value::as_object);
    let annotation =
        |key: &str| annotations.and_then(|a| a.get(&format!("{prefix}/{key}"))).and_then(Value::as_str).map(str::trim);
    if annotation("canary") != Some("true") {
        // Not a canary Ingress: the controller ignores it for splitting.
        return Split::all_to(Side::Primary);
    }
    let total = annotation("canary-weight-total").and_then(|t| t.parse::<u32>().ok()).unwrap_or(100);
    let canary = annotation("canary-weight").and_then(|w| w.parse::<u32>().ok()).unwrap_or(0).min(total);
    let mut header_rules = Vec::new();
    if let Some(header) = annotation("canary-by-header").filter(|h| !h.is_empty()) {
        let mut to_canary =
            |value| header_rules.push(HeaderRule::new(vec![HeaderMatch::new(header, value)], Weights::ALL_CANARY));
        if let Some(value) = annotation("canary-by-header-value") {
            to_canary(HeaderValueMatch::Exact(value.to_owned()));
        } else if let Some(pattern) = annotation("canary-by-header-pattern") {
            to_canary(HeaderValueMatch::Regex(pattern.to_owned()));
        } else {
            to_canary(HeaderValueMatch::Exact("always".to_owned()));
            header_rules.push(HeaderRule::new(
                vec![HeaderMatch::new(header, HeaderValueMatch::Exact("never".to_owned()))],
                Weights::ALL_PRIMARY,
            ));
        }
    }
    Split { header_rules, default: Weights::new(total - canary, canary), ..Split::default() }
}

/// Traefik TraefikService: `spec.weighted.services[].weight` (default 1),
/// or `spec.mirroring` (main service plus `mirrors[].percent`).
pub fn parse_traefik_service(ts: &Value, service: &str) -> Result<Split, RouteShapeError> {
    const KIND: &str = "TraefikService";
    let spec = ts.get("spec").ok_or_else(|| shape(KIND, "no spec"))?;
    if let Some(weighted) = spec.get("weighted") {
        let mut weights = Weights::default();
        for s in array(weighted, "services") {
            let name = string(s, "name").ok_or_else(|| shape(KIND, "weighted service without name"))?;
            weights.add_backend(name, service, weight(s.get("weight"), KIND)?.unwrap_or(1));
        }
        return Ok(Split { default: weights, ..Split::default() });
    }
    if let Some(mirroring) = spec.get("mirroring") {
        let main = string(mirroring, "name").ok_or_else(|| shape(KIND, "mirroring without name"))?;
        let mut default = Weights::default();
        default.add_backend(main, service, 100);
        let mut mirror_percent = None;
        for m in array(mirroring, "mirrors") {
            let name = string(m, "name").unwrap_or_default();
            if classify_backend(name, service) == Some(Side::Canary) {
                mirror_percent = Some(weight(m.get("percent"), KIND)?.unwrap_or(0));
            }
        }
        return Ok(Split { default, mirror_percent, ..Split::default() });
    }
    Err(shape(KIND, "neither spec.weighted nor spec.mirroring"))
}

/// Contour HTTPProxy: `spec.routes[].services[].weight` (all unset: even
/// split; some set: unset ones get 0), header conditions for A/B, and
/// services marked `mirror: true`.
pub fn parse_http_proxy(proxy: &Value, service: &str) -> Result<Split, RouteShapeError> {
    const KIND: &str = "HTTPProxy";
    let spec = proxy.get("spec").ok_or_else(|| shape(KIND, "no spec"))?;
    let mut header_rules = Vec::new();
    let mut default = None;
    for route in array(spec, "routes") {
        let services = array(route, "services");
        let any_weight = services.iter().any(|s| s.get("weight").is_some_and(|w| !w.is_null()));
        let mut weights = Weights::default();
        let mut mirror = None;
        for s in services {
            let name = string(s, "name").ok_or_else(|| shape(KIND, "service without name"))?;
            if s.get("mirror").and_then(Value::as_bool) == Some(true) {
                if classify_backend(name, service) == Some(Side::Canary) {
                    mirror = Some(100);
                }
                continue;
            }
            let w = weight(s.get("weight"), KIND)?.unwrap_or(if any_weight { 0 } else { 1 });
            weights.add_backend(name, service, w);
        }
        let headers: Vec<HeaderMatch> = array(route, "conditions")
            .iter()
            .filter_map(|c| c.get("header"))
            .filter_map(|h| {
                let name = string(h, "name")?;
                let value = if let Some(exact) = string(h, "exact") {
                    HeaderValueMatch::Exact(exact.to_owned())
                } else if let Some(contains) = string(h, "contains") {
                    HeaderValueMatch::Regex(format!(".*{}.*", regex::escape(contains)))
                } else if h.get("present").and_then(Value::as_bool) == Some(true) {
                    HeaderValueMatch::Present
                } else {
                    // notpresent / notcontains never hold for the simulated
                    // A/B requests' headers in a way that matters here.
                    return None;
                };
                Some(HeaderMatch::new(name, value))
            })
            .collect();
        if headers.is_empty() {
            default.get_or_insert((weights, mirror));
        } else {
            header_rules.push(HeaderRule::new(headers, weights));
        }
    }
    let (default, mirror_percent) = default.unwrap_or_default();
    Ok(Split { header_rules: most_specific_first(header_rules), default, mirror_percent, ..Split::default() })
}

/// APISIX ApisixRoute: `spec.http[]`, each rule's `backends[].weight`
/// (default 100 per backend when unset, as the traffic-split plugin
/// treats them) and header `match.exprs` (`scope: Header`, `op: Equal` or
/// `RegexMatch`); a rule without header expressions takes every request.
pub fn parse_apisix_route(route: &Value, service: &str) -> Result<Split, RouteShapeError> {
    const KIND: &str = "ApisixRoute";
    let spec = route.get("spec").ok_or_else(|| shape(KIND, "no spec"))?;
    let mut header_rules = Vec::new();
    let mut default = None;
    for rule in array(spec, "http") {
        let mut weights = Weights::default();
        for backend in array(rule, "backends") {
            let name = string(backend, "serviceName").ok_or_else(|| shape(KIND, "backend without serviceName"))?;
            weights.add_backend(name, service, weight(backend.get("weight"), KIND)?.unwrap_or(100));
        }
        let headers: Vec<HeaderMatch> = rule
            .get("match")
            .map(|m| array(m, "exprs"))
            .unwrap_or_default()
            .iter()
            .filter(|e| e.pointer("/subject/scope").and_then(Value::as_str) == Some("Header"))
            .filter_map(|e| {
                let name = e.pointer("/subject/name").and_then(Value::as_str)?;
                let value = string(e, "value").unwrap_or_default().to_owned();
                let value = match string(e, "op") {
                    Some("RegexMatch") => HeaderValueMatch::Regex(value),
                    _ => HeaderValueMatch::Exact(value),
                };
                Some(HeaderMatch::new(name, value))
            })
            .collect();
        if headers.is_empty() {
            default.get_or_insert(weights);
        } else {
            header_rules.push(HeaderRule::new(headers, weights));
        }
    }
    Ok(Split { header_rules, default: default.unwrap_or_default(), ..Split::default() })
}

/// The side of a Gloo Upstream petrel generates,
/// `<ns>-<service>-<side>upstream-<port>`.
fn gloo_upstream_side(upstream: &str, service: &str) -> Option<Side> {
    Side::BOTH.into_iter().find(|side| upstream.contains(&format!("-{service}-{}upstream-", side.suffix())))
}

/// Gloo RouteTable: `spec.routes[]` in order; a route's `matchers` are
/// ORed and the headers of one matcher ANDed; `routeAction.multi`
/// destinations weighted by upstream; a route without header matchers
/// takes every request.
pub fn parse_route_table(table: &Value, service: &str) -> Result<Split, RouteShapeError> {
    const KIND: &str = "RouteTable";
    let spec = table.get("spec").ok_or_else(|| shape(KIND, "no spec"))?;
    let mut header_rules = Vec::new();
    let mut default = None;
    for route in array(spec, "routes") {
        let mut weights = Weights::default();
        let destinations = route.pointer("/routeAction/multi/destinations").and_then(Value::as_array);
        for d in destinations.map_or(&[][..], Vec::as_slice) {
            let name = d
                .pointer("/destination/upstream/name")
                .and_then(Value::as_str)
                .ok_or_else(|| shape(KIND, "destination without upstream name"))?;
            let w = weight(d.get("weight"), KIND)?.unwrap_or(0);
            match gloo_upstream_side(name, service) {
                Some(Side::Primary) => weights.primary += w,
                Some(Side::Canary) => weights.canary += w,
                None => weights.other += w,
            }
        }
        let matchers = array(route, "matchers");
        let mut catch_all = matchers.is_empty();
        for m in matchers {
            let headers: Vec<HeaderMatch> = array(m, "headers")
                .iter()
                .filter_map(|h| {
                    let name = string(h, "name")?;
                    let value = string(h, "value").unwrap_or_default().to_owned();
                    let regex = h.get("regex").and_then(Value::as_bool) == Some(true);
                    Some(HeaderMatch::new(
                        name,
                        if regex { HeaderValueMatch::Regex(value) } else { HeaderValueMatch::Exact(value) },
                    ))
                })
                .collect();
            if headers.is_empty() {
                catch_all = true;
            } else {
                header_rules.push(HeaderRule::new(headers, weights));
            }
        }
        if catch_all {
            default.get_or_insert(weights);
        }
    }
    Ok(Split { header_rules, default: default.unwrap_or_default(), ..Split::default() })
}

/// Skipper canary Ingress: `zalando.org/backend-weights` (a JSON object of
/// Service weights). A `False()` predicate turns the clone's routes off, so
/// every request takes the user's Ingress, to the apex Service (the primary).
pub fn parse_skipper_ingress(ingress: &Value, service: &str) -> Result<Split, RouteShapeError> {
    const KIND: &str = "Ingress";
    let annotations = ingress.pointer("/metadata/annotations").and_then(Value::as_object);
    let annotation = |key: &str| annotations.and_then(|a| a.get(key)).and_then(Value::as_str);
    let predicate = annotation("zalando.org/skipper-predicate").unwrap_or_default();
    if predicate.split("&&").any(|p| p.trim() == "False()") {
        return Ok(Split::all_to(Side::Primary));
    }
    let Some(text) = annotation("zalando.org/backend-weights") else {
        return Ok(Split::all_to(Side::Primary));
    };
    let parsed: serde_json::Map<String, Value> =
        serde_json::from_str(text).map_err(|e| shape(KIND, format!("backend-weights is not a JSON object: {e}")))?;
    let mut weights = Weights::default();
    for (name, w) in &parsed {
        weights.add_backend(name, service, weight(Some(w), KIND)?.unwrap_or(0));
    }
    Ok(Split { default: weights, ..Split::default() })
}

/// Kuma MeshHTTPRoute: `spec.to[].rules[]`; `matches` ORed, the headers of
/// one match ANDed (the most specific match wins); `default.backendRefs`
/// weighted, MeshServices named by their `kuma.io/display-name` label.
pub fn parse_mesh_http_route(route: &Value, service: &str) -> Result<Split, RouteShapeError> {
    const KIND: &str = "MeshHTTPRoute";
    let spec = route.get("spec").ok_or_else(|| shape(KIND, "no spec"))?;
    let mut header_rules = Vec::new();
    let mut default = None;
    for to in array(spec, "to") {
        for rule in array(to, "rules") {
            let mut weights = Weights::default();
            for backend in rule.pointer("/default/backendRefs").and_then(Value::as_array).map_or(&[][..], Vec::as_slice)
            {
                let name = backend
                    .pointer("/labels/kuma.io~1display-name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| shape(KIND, "backendRef without a kuma.io/display-name label"))?;
                weights.add_backend(name, service, weight(backend.get("weight"), KIND)?.unwrap_or(1));
            }
            for m in array(rule, "matches") {
                let headers: Vec<HeaderMatch> = array(m, "headers")
                    .iter()
                    .filter_map(|h| {
                        let name = string(h, "name")?;
                        let value = string(h, "value").unwrap_or_default().to_owned();
                        Some(HeaderMatch::new(
                            name,
                            match string(h, "type") {
                                Some("RegularExpression") => HeaderValueMatch::Regex(value),
                                Some("Prefix") => HeaderValueMatch::Regex(format!("{}.*", regex::escape(&value))),
                                Some("Present") => HeaderValueMatch::Present,
                                _ => HeaderValueMatch::Exact(value),
                            },
                        ))
                    })
                    .collect();
                if headers.is_empty() {
                    default.get_or_insert(weights);
                } else {
                    header_rules.push(HeaderRule::new(headers, weights));
                }
            }
        }
    }
    Ok(Split {
        header_rules: most_specific_first(header_rules),
        default: default.unwrap_or_default(),
        ..Split::default()
    })
}

/// The tag of the Knative traffic target that is each side.
pub fn knative_tag(side: Side) -> &'static str {
    side.suffix()
}

/// Knative Service `spec.traffic`: the targets tagged `primary` and
/// `canary` (petrel's); other targets go elsewhere. Without a traffic block
/// Knative sends everything to the latest ready revision: before petrel
/// writes one, that is the primary's.
pub fn parse_knative_traffic(service: &Value) -> Result<Split, RouteShapeError> {
    const KIND: &str = "Service";
    let spec = service.get("spec").ok_or_else(|| shape(KIND, "no spec"))?;
    if array(spec, "traffic").is_empty() {
        return Ok(Split::all_to(Side::Primary));
    }
    let mut weights = Weights::default();
    for target in array(spec, "traffic") {
        let percent = weight(target.get("percent"), KIND)?.unwrap_or(0);
        match string(target, "tag") {
            Some(tag) if tag == knative_tag(Side::Primary) => weights.primary += percent,
            Some(tag) if tag == knative_tag(Side::Canary) => weights.canary += percent,
            _ => weights.other += percent,
        }
    }
    Ok(Split { default: weights, ..Split::default() })
}

/// The revision a Knative traffic target tagged for `side` names.
pub fn knative_revision(service: &Value, side: Side) -> Option<String> {
    service
        .pointer("/spec/traffic")
        .and_then(Value::as_array)?
        .iter()
        .find(|t| string(t, "tag") == Some(knative_tag(side)))
        .and_then(|t| string(t, "revisionName"))
        .map(String::from)
}

/// For the `kubernetes` provider: where the apex Service's `selector`
/// sends traffic, given the pod template labels of the primary and canary
/// Deployments (`None`: the Deployment does not exist). When it selects
/// both, traffic is shared in proportion to their ready replicas.
pub fn split_from_service_selector(
    selector: &BTreeMap<String, String>,
    primary: Option<(&BTreeMap<String, String>, u32)>,
    canary: Option<(&BTreeMap<String, String>, u32)>,
) -> Split {
    let selects = |labels: &BTreeMap<String, String>| {
        !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    };
    let weight = |workload: Option<(&BTreeMap<String, String>, u32)>| {
        workload.filter(|(labels, _)| selects(labels)).map(|(_, ready)| ready)
    };
    match (weight(primary), weight(canary)) {
        (Some(_), None) => Split::all_to(Side::Primary),
        (None, Some(_)) => Split::all_to(Side::Canary),
        (Some(p), Some(c)) if p + c > 0 => Split::weighted(p, c),
        (Some(_), Some(_)) => Split::weighted(1, 1),
        (None, None) => Split::default(),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn provider_names_accept_version_suffix() {
        assert_eq!("gatewayapi:v1".parse::<Provider>(), Ok(Provider::GatewayApi));
        assert_eq!("smi:v1alpha3".parse::<Provider>(), Ok(Provider::Smi));
        assert!("appmesh".parse::<Provider>().is_err());
        for p in Provider::ALL {
            let parsed = p.as_str().parse::<Provider>().unwrap();
            assert_eq!(parsed.as_str(), p.as_str(), "{p}");
        }
        assert_eq!("linkerd".parse::<Provider>(), Ok(Provider::Linkerd), "a Canary's linkerd is SMI unless told");
    }

    #[test]
    fn http_route_weights_and_defaults() {
        let route = json!({"spec": {"rules": [{
            "backendRefs": [
                {"name": "podinfo-primary", "port": 9898, "weight": 90},
                {"name": "podinfo-canary", "port": 9898, "weight": 10}
            ]
        }]}});
        assert_eq!(parse_http_route(&route, "podinfo").unwrap(), Split::weighted(90, 10));

        // weight defaults to 1 per backendRef.
        let route = json!({"spec": {"rules": [{"backendRefs": [
            {"name": "podinfo-primary"}, {"name": "podinfo-canary"}
        ]}]}});
        assert_eq!(parse_http_route(&route, "podinfo").unwrap(), Split::weighted(1, 1));
    }

    #[test]
    fn http_route_ab_rule_and_mirror() {
        let route = json!({"spec": {"rules": [
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "backendRefs": [
                    {"name": "podinfo-primary", "weight": 100},
                    {"name": "podinfo-canary", "weight": 0}
                ],
                "filters": [{"type": "RequestMirror", "requestMirror": {
                    "backendRef": {"name": "podinfo-canary", "port": 9898}, "percent": 50
                }}]
            },
            {
                "matches": [{"headers": [
                    {"name": "X-Canary", "value": "insider"},
                    {"name": "cookie", "type": "RegularExpression", "value": ".*canary.*"}
                ]}],
                "backendRefs": [
                    {"name": "podinfo-primary", "weight": 0},
                    {"name": "podinfo-canary", "weight": 100}
                ]
            }
        ]}});
        let split = parse_http_route(&route, "podinfo").unwrap();
        assert_eq!(split.default, Weights::new(100, 0));
        assert_eq!(split.mirror_percent, Some(50));
        assert_eq!(
            split.header_rules,
            vec![HeaderRule::new(
                vec![
                    HeaderMatch::new("x-canary", HeaderValueMatch::Exact("insider".into())),
                    HeaderMatch::new("cookie", HeaderValueMatch::Regex(".*canary.*".into())),
                ],
                Weights::new(0, 100),
            )]
        );
    }

    #[test]
    fn http_route_mirror_fraction_and_unknown_backend() {
        let route = json!({"spec": {"rules": [{
            "backendRefs": [{"name": "podinfo-primary", "weight": 80}, {"name": "elsewhere", "weight": 20}],
            "filters": [{"type": "RequestMirror", "requestMirror": {
                "backendRef": {"name": "podinfo-canary"}, "fraction": {"numerator": 1, "denominator": 4}
            }}]
        }]}});
        let split = parse_http_route(&route, "podinfo").unwrap();
        assert_eq!(split.default, Weights { primary: 80, canary: 0, other: 20 });
        assert_eq!(split.mirror_percent, Some(25));
    }

    #[test]
    fn http_route_bad_weight_is_an_error() {
        let route = json!({"spec": {"rules": [{"backendRefs": [{"name": "podinfo-primary", "weight": -5}]}]}});
        let err = parse_http_route(&route, "podinfo").unwrap_err();
        assert!(err.to_string().contains("weight -5"), "{err}");
    }

    #[test]
    fn virtual_service_weights_match_and_mirror() {
        let vs = json!({"spec": {"hosts": ["podinfo"], "http": [
            {
                "match": [{"headers": {"x-canary": {"exact": "insider"}}}, {"headers": {"user-agent": {"regex": ".*Firefox.*"}}}],
                "route": [
                    {"destination": {"host": "podinfo-primary"}, "weight": 0},
                    {"destination": {"host": "podinfo-canary"}, "weight": 100}
                ]
            },
            {
                "route": [
                    {"destination": {"host": "podinfo-primary.test.svc.cluster.local"}, "weight": 70},
                    {"destination": {"host": "podinfo-canary"}, "weight": 30}
                ],
                "mirror": {"host": "podinfo-canary"},
                "mirrorPercentage": {"value": 100.0}
            },
            {"route": [{"destination": {"host": "unreachable"}}]}
        ]}});
        let split = parse_virtual_service(&vs, "podinfo").unwrap();
        assert_eq!(split.default, Weights::new(70, 30));
        assert_eq!(split.mirror_percent, Some(100));
        assert_eq!(split.header_rules.len(), 2);
        assert_eq!(split.header_rules[0].weights, Weights::new(0, 100));
        assert_eq!(
            split.header_rules[1].matches,
            vec![HeaderMatch::new("user-agent", HeaderValueMatch::Regex(".*Firefox.*".into()))]
        );
    }

    #[test]
    fn virtual_service_lone_destination_gets_everything() {
        let vs = json!({"spec": {"http": [{"route": [{"destination": {"host": "podinfo-primary"}}]}]}});
        assert_eq!(parse_virtual_service(&vs, "podinfo").unwrap(), Split::all_to(Side::Primary));
        let vs = json!({"spec": {"http": [{"route": [
            {"destination": {"host": "podinfo-primary"}},
            {"destination": {"host": "podinfo-canary"}, "weight": 100}
        ]}]}});
        assert_eq!(parse_virtual_service(&vs, "podinfo").unwrap(), Split::weighted(0, 100));
    }

    #[test]
    fn traffic_split_integer_and_quantity_weights() {
        let ts = json!({"spec": {"service": "podinfo", "backends": [
            {"service": "podinfo-primary", "weight": 95},
            {"service": "podinfo-canary", "weight": 5}
        ]}});
        assert_eq!(parse_traffic_split(&ts, "podinfo").unwrap(), Split::weighted(95, 5));
        let ts = json!({"spec": {"backends": [
            {"service": "podinfo-primary", "weight": "60"},
            {"service": "podinfo-canary", "weight": "40000m"}
        ]}});
        assert_eq!(parse_traffic_split(&ts, "podinfo").unwrap(), Split::weighted(60, 40));
    }

    #[test]
    fn canary_ingress_weight_and_header() {
        let p = NGINX_ANNOTATION_PREFIX;
        let ing = json!({"metadata": {"name": "podinfo-canary", "annotations": {
            format!("{p}/canary"): "true",
            format!("{p}/canary-weight"): "20"
        }}});
        assert_eq!(parse_canary_ingress(&ing, p), Split::weighted(80, 20));

        let ing = json!({"metadata": {"annotations": {
            format!("{p}/canary"): "true",
            format!("{p}/canary-weight"): "0",
            format!("{p}/canary-by-header"): "X-Canary",
            format!("{p}/canary-by-header-value"): "insider"
        }}});
        let split = parse_canary_ingress(&ing, p);
        assert_eq!(split.default, Weights::new(100, 0));
        assert_eq!(
            split.header_rules,
            vec![HeaderRule::new(
                vec![HeaderMatch::new("x-canary", HeaderValueMatch::Exact("insider".into()))],
                Weights::ALL_CANARY,
            )]
        );

        let ing = json!({"metadata": {"annotations": {
            format!("{p}/canary"): "true",
            format!("{p}/canary-by-header"): "x-canary"
        }}});
        let split = parse_canary_ingress(&ing, p);
        assert_eq!(split.header_rules.len(), 2, "always and never");
        assert_eq!(split.header_rules[1].weights, Weights::ALL_PRIMARY);

        // canary annotation off: the controller does not split.
        let ing = json!({"metadata": {"annotations": {format!("{p}/canary-weight"): "50"}}});
        assert_eq!(parse_canary_ingress(&ing, p), Split::all_to(Side::Primary));
    }

    #[test]
    fn canary_ingress_weight_total() {
        let p = NGINX_ANNOTATION_PREFIX;
        let ing = json!({"metadata": {"annotations": {
            format!("{p}/canary"): "true",
            format!("{p}/canary-weight"): "250",
            format!("{p}/canary-weight-total"): "1000"
        }}});
        assert_eq!(parse_canary_ingress(&ing, p), Split::weighted(750, 250));
    }

    #[test]
    fn traefik_weighted_and_mirroring() {
        let ts = json!({"spec": {"weighted": {"services": [
            {"name": "podinfo-primary", "port": 80, "weight": 60},
            {"name": "podinfo-canary", "port": 80, "weight": 40}
        ]}}});
        assert_eq!(parse_traefik_service(&ts, "podinfo").unwrap(), Split::weighted(60, 40));
        let ts = json!({"spec": {"mirroring": {"name": "podinfo-primary", "mirrors": [
            {"name": "podinfo-canary", "percent": 20}
        ]}}});
        let split = parse_traefik_service(&ts, "podinfo").unwrap();
        assert_eq!(split.default, Weights::ALL_PRIMARY);
        assert_eq!(split.mirror_percent, Some(20));
        assert!(parse_traefik_service(&json!({"spec": {}}), "podinfo").is_err());
    }

    #[test]
    fn http_proxy_weights_headers_and_mirror() {
        let proxy = json!({"spec": {"routes": [
            {
                "conditions": [{"prefix": "/"}],
                "services": [
                    {"name": "podinfo-primary", "port": 9898, "weight": 85},
                    {"name": "podinfo-canary", "port": 9898, "weight": 15},
                    {"name": "podinfo-canary", "port": 9898, "mirror": true}
                ]
            },
            {
                "conditions": [{"prefix": "/"}, {"header": {"name": "x-canary", "exact": "insider"}}],
                "services": [{"name": "podinfo-canary", "port": 9898}]
            }
        ]}});
        let split = parse_http_proxy(&proxy, "podinfo").unwrap();
        assert_eq!(split.default, Weights::new(85, 15));
        assert_eq!(split.mirror_percent, Some(100));
        assert_eq!(split.header_rules.len(), 1);
        // A lone unweighted service gets all the traffic.
        assert_eq!(split.header_rules[0].weights, Weights::new(0, 1));
    }

    #[test]
    fn service_selector_picks_pods() {
        let labels = |app: &str| BTreeMap::from([("app".to_owned(), app.to_owned())]);
        let primary = labels("podinfo-primary");
        let canary = labels("podinfo");
        assert_eq!(
            split_from_service_selector(&primary, Some((&primary, 2)), Some((&canary, 2))),
            Split::all_to(Side::Primary)
        );
        assert_eq!(
            split_from_service_selector(&canary, Some((&primary, 2)), Some((&canary, 2))),
            Split::all_to(Side::Canary)
        );
        assert_eq!(
            split_from_service_selector(&canary, Some((&primary, 2)), None),
            Split::default(),
            "selects nothing that exists"
        );
        let shared = BTreeMap::from([("tier".to_owned(), "web".to_owned())]);
        let mut p = primary.clone();
        p.insert("tier".into(), "web".into());
        let mut c = canary.clone();
        c.insert("tier".into(), "web".into());
        assert_eq!(split_from_service_selector(&shared, Some((&p, 3)), Some((&c, 1))), Split::weighted(3, 1));
    }

    /// What petrel's routers write (their checked-in manifests, the insta snapshots in
    /// `operator/routers/src/snapshots/`), read by the simulator's own parsers.
    pub(in crate::simulator) fn petrel_fixture(name: &str) -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../operator/routers/src/snapshots")
            .join(format!("{name}.snap"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // An insta snapshot: a `---` header of metadata, then the YAML.
        let yaml = text
            .strip_prefix("---\n")
            .and_then(|rest| rest.split_once("\n---\n"))
            .map(|(_, yaml)| yaml)
            .unwrap_or_else(|| panic!("{} has no insta header", path.display()));
        serde_yaml::from_str(yaml).unwrap()
    }

    fn insider() -> BTreeMap<String, String> {
        BTreeMap::from([("x-canary".to_string(), "insider".to_string())])
    }

    #[test]
    fn the_new_routers_manifests_read_as_their_weights() {
        let read = |provider, file: &str| parse_route(provider, &petrel_fixture(file), "podinfo").unwrap();
        assert_eq!(read(Provider::Apisix, "apisix_90_10"), Split::weighted(90, 10));
        assert_eq!(read(Provider::Gloo, "gloo_90_10"), Split::weighted(90, 10));
        assert_eq!(read(Provider::Kuma, "kuma_90_10"), Split::weighted(90, 10));
        assert_eq!(read(Provider::Skipper, "skipper_90_10"), Split::weighted(90, 10));
        assert_eq!(read(Provider::Knative, "knative_90_10"), Split::weighted(90, 10));
        assert_eq!(read(Provider::LinkerdGatewayApi, "linkerd_gamma_80_20"), Split::weighted(80, 20));
        // Skipper's clone is switched off at weight 0: the user's Ingress serves everything.
        assert_eq!(read(Provider::Skipper, "skipper_100_0"), Split::all_to(Side::Primary));
        let promoted = json!({"spec": {"traffic": petrel_fixture("knative_promoted")}});
        assert_eq!(parse_route(Provider::Knative, &promoted, "podinfo").unwrap(), Split::all_to(Side::Primary));
    }

    #[test]
    fn ab_manifests_send_only_matched_requests_to_the_canary() {
        for (provider, file) in [
            (Provider::Gloo, "gloo_ab"),
            (Provider::Kuma, "kuma_ab"),
            (Provider::LinkerdGatewayApi, "linkerd_gamma_ab"),
        ] {
            let split = parse_route(provider, &petrel_fixture(file), "podinfo").unwrap();
            assert_eq!(split.default, Weights::ALL_PRIMARY, "{provider}");
            assert_eq!(split.weights_for(&insider()), Weights::ALL_CANARY, "{provider}");
            let cookie = BTreeMap::from([("cookie".to_string(), "theme=dark;canary=always".to_string())]);
            assert_eq!(split.weights_for(&cookie), Weights::ALL_CANARY, "{provider} cookie");
            assert_eq!(split.weights_for(&BTreeMap::new()), Weights::ALL_PRIMARY, "{provider}");
        }
    }

    #[test]
    fn an_untagged_knative_traffic_block_is_not_petrels_split() {
        let service = json!({"spec": {"traffic": [{"latestRevision": true, "percent": 100}]}});
        assert_eq!(parse_knative_traffic(&service).unwrap().default, Weights { primary: 0, canary: 0, other: 100 });
        assert_eq!(parse_knative_traffic(&json!({"spec": {}})).unwrap(), Split::all_to(Side::Primary));
        let tagged = json!({"spec": {"traffic": [
            {"revisionName": "podinfo-00001", "percent": 70, "tag": "primary"},
            {"revisionName": "podinfo-00002", "percent": 30, "tag": "canary"}
        ]}});
        assert_eq!(knative_revision(&tagged, Side::Canary).as_deref(), Some("podinfo-00002"));
    }

    /// The sticky routes petrel writes for `analysis.sessionAffinity`: a rule per cookie
    /// matching the `Cookie` header, before the weighted rule whose destinations set the
    /// cookies; after the release, one rule that expires the canary cookie.
    #[test]
    fn sticky_manifests_read_as_cookie_rules_and_set_cookies() {
        let canary_cookie = "canary-cookie=0123456789abcdef";
        let cookie = |value: &str| BTreeMap::from([("cookie".to_string(), value.to_string())]);
        for (provider, file, base) in [
            // The Istio fixture's weighted route also matches `x-tenant: blue` (service.match).
            (Provider::Istio, "istio_sticky", BTreeMap::from([("x-tenant".to_string(), "blue".to_string())])),
            (Provider::GatewayApi, "gatewayapi_sticky", BTreeMap::new()),
        ] {
            let split = parse_route(provider, &petrel_fixture(file), "podinfo").unwrap();
            let with = |extra: BTreeMap<String, String>| {
                let mut headers = base.clone();
                headers.extend(extra);
                split.header_rule_for(&headers).cloned()
            };
            let weighted = with(BTreeMap::new()).map_or(split.default, |r| r.weights);
            assert_eq!(weighted, Weights::new(90, 10), "{provider}");
            let set_cookies = with(BTreeMap::new()).map_or(split.default_set_cookies.clone(), |r| r.set_cookies);
            assert_eq!(
                set_cookies,
                SetCookies {
                    primary: vec!["primary-cookie=fedcba9876543210; Max-Age=60".into()],
                    canary: vec!["canary-cookie=0123456789abcdef; Max-Age=600".into()],
                },
                "{provider}"
            );
            let pinned = with(cookie(&format!("theme=dark; {canary_cookie}; lang=en"))).unwrap();
            assert_eq!(pinned.weights, Weights::ALL_CANARY, "{provider}");
            assert!(pinned.set_cookies.is_empty(), "{provider}: the sticky rule sets nothing");
            let kept = with(cookie("primary-cookie=fedcba9876543210")).unwrap();
            assert_eq!(kept.weights, Weights::ALL_PRIMARY, "{provider}");
            // Another value of the cookie is not the release's.
            let other = with(cookie("canary-cookie=ffffffffffffffff"));
            assert_eq!(other.map_or(split.default, |r| r.weights), Weights::new(90, 10), "{provider}");
        }
        for (provider, file) in
            [(Provider::Istio, "istio_sticky_expired"), (Provider::GatewayApi, "gatewayapi_sticky_expired")]
        {
            let split = parse_route(provider, &petrel_fixture(file), "podinfo").unwrap();
            assert_eq!(split.default, Weights::ALL_PRIMARY, "{provider}");
            assert!(split.default_set_cookies.is_empty(), "{provider}");
            let expire = split.header_rule_for(&cookie(canary_cookie)).unwrap();
            assert_eq!(expire.weights, Weights::ALL_PRIMARY, "{provider}");
            // On the rule, not on one destination: every response expires it, and other
            // response headers (Istio's x-served-by) are not cookies.
            let expired = vec!["canary-cookie=0123456789abcdef; Max-Age=-1".to_string()];
            assert_eq!(expire.set_cookies, SetCookies { primary: expired.clone(), canary: expired }, "{provider}");
        }
    }

    #[test]
    fn set_cookie_modifiers_by_destination_and_rule() {
        let vs = json!({"spec": {"http": [{
            "headers": {"response": {"set": {"set-cookie": "a=1"}, "add": {"x-other": "no"}}},
            "route": [
                {"destination": {"host": "podinfo-primary"}, "weight": 50,
                 "headers": {"response": {"add": {"Set-Cookie": "p=1; Max-Age=5"}}}},
                {"destination": {"host": "elsewhere"}, "weight": 50,
                 "headers": {"response": {"add": {"Set-Cookie": "lost=1"}}}}
            ]
        }]}});
        let split = parse_virtual_service(&vs, "podinfo").unwrap();
        assert_eq!(split.default_set_cookies.primary, vec!["a=1".to_string(), "p=1; Max-Age=5".to_string()]);
        assert_eq!(split.default_set_cookies.canary, vec!["a=1".to_string()]);
        let route = json!({"spec": {"rules": [{
            "filters": [
                {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": [{"name": "SET-COOKIE", "value": "r=1"}]}},
                {"type": "RequestHeaderModifier", "requestHeaderModifier": {"add": [{"name": "Set-Cookie", "value": "no=1"}]}}
            ],
            "backendRefs": [
                {"name": "podinfo-primary", "weight": 1},
                {"name": "podinfo-canary", "weight": 1, "filters": [
                    {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"add": [{"name": "Set-Cookie", "value": "c=1"}]}}
                ]}
            ]
        }]}});
        let split = parse_http_route(&route, "podinfo").unwrap();
        assert_eq!(
            split.default_set_cookies,
            SetCookies { primary: vec!["r=1".into()], canary: vec!["r=1".into(), "c=1".into()] }
        );
    }

    #[test]
    fn route_names() {
        assert_eq!(route_object_name(Provider::Istio, "podinfo", None), "podinfo");
        assert_eq!(route_object_name(Provider::Nginx, "podinfo", Some("web")), "web-canary");
        assert_eq!(route_object_name(Provider::Nginx, "podinfo", None), "podinfo-canary");
    }
}
