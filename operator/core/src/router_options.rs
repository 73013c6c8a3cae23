//! Which router writes which `spec.service` route option.
//!
//! Flagger's Canary carries route options (`match`, `retries`, `timeout`, `headers`,
//! `corsPolicy`, ...) that most of its routers never read: a Canary for nginx with
//! `retries` is accepted by Flagger and routed without them. petrel refuses such a Canary
//! instead (Stalled, `InvalidRouting`, before any route is touched): every option set is
//! written by the provider's router, or the Canary says which option the provider does not
//! write and which providers do. The table below is the single place that knows.

use crate::Provider;
use petrel_api::Canary;
use petrel_api::canary::{CanaryService, GatewayRef};

/// A route option of `spec.service`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteOption {
    Match,
    Retries,
    Timeout,
    BackendTimeout,
    Headers,
    CorsPolicy,
    TrafficPolicy,
    Rewrite,
    Mirror,
    Gateways,
    Hosts,
    Delegation,
    GatewayRefs,
}

impl RouteOption {
    pub const ALL: [RouteOption; 13] = [
        RouteOption::Match,
        RouteOption::Retries,
        RouteOption::Timeout,
        RouteOption::BackendTimeout,
        RouteOption::Headers,
        RouteOption::CorsPolicy,
        RouteOption::TrafficPolicy,
        RouteOption::Rewrite,
        RouteOption::Mirror,
        RouteOption::Gateways,
        RouteOption::Hosts,
        RouteOption::Delegation,
        RouteOption::GatewayRefs,
    ];

    /// The field as a user writes it.
    pub fn field(self) -> &'static str {
        match self {
            RouteOption::Match => "spec.service.match",
            RouteOption::Retries => "spec.service.retries",
            RouteOption::Timeout => "spec.service.timeout",
            RouteOption::BackendTimeout => "spec.service.backendTimeout",
            RouteOption::Headers => "spec.service.headers",
            RouteOption::CorsPolicy => "spec.service.corsPolicy",
            RouteOption::TrafficPolicy => "spec.service.trafficPolicy",
            RouteOption::Rewrite => "spec.service.rewrite",
            RouteOption::Mirror => "spec.service.mirror",
            RouteOption::Gateways => "spec.service.gateways",
            RouteOption::Hosts => "spec.service.hosts",
            RouteOption::Delegation => "spec.service.delegation",
            RouteOption::GatewayRefs => "spec.service.gatewayRefs",
        }
    }

    /// Whether the Canary sets it (an empty list or `false` is not set).
    pub fn is_set(self, service: &CanaryService) -> bool {
        match self {
            RouteOption::Match => service.match_.as_ref().is_some_and(|m| !m.is_empty()),
            RouteOption::Retries => service.retries.is_some(),
            RouteOption::Timeout => service.timeout.is_some(),
            RouteOption::BackendTimeout => service.backend_timeout.is_some(),
            RouteOption::Headers => service.headers.is_some(),
            RouteOption::CorsPolicy => service.cors_policy.is_some(),
            RouteOption::TrafficPolicy => service.traffic_policy.is_some(),
            RouteOption::Rewrite => service.rewrite.is_some(),
            RouteOption::Mirror => service.mirror.as_ref().is_some_and(|m| !m.is_empty()),
            RouteOption::Gateways => !service.gateways.is_empty(),
            RouteOption::Hosts => !service.hosts.is_empty(),
            RouteOption::Delegation => service.delegation,
            RouteOption::GatewayRefs => !service.gateway_refs.is_empty(),
        }
    }
}

/// Whether a linkerd Canary routes through Gateway API (GAMMA): it names parentRefs,
/// which must all be of kind Service. Without them, linkerd routes through SMI.
pub fn linkerd_uses_gateway_api(canary: &Canary) -> bool {
    !canary.spec.service.gateway_refs.is_empty()
}

/// The route options `provider`'s router writes for this Canary. Linkerd depends on the
/// Canary: through Gateway API (GAMMA, `gatewayRefs` of kind Service) it writes what the
/// gatewayapi router writes on an HTTPRoute, except host names (a route attached to a
/// Service has none) and mirroring (Linkerd has no RequestMirror filter); through SMI it
/// writes none.
pub fn written_by(provider: Provider, canary: &Canary) -> &'static [RouteOption] {
    use RouteOption::*;
    match provider {
        Provider::Istio => {
            &[Match, Retries, Timeout, Headers, CorsPolicy, TrafficPolicy, Rewrite, Gateways, Hosts, Delegation]
        }
        Provider::GatewayApi => &[Match, Timeout, BackendTimeout, Headers, Rewrite, Mirror, Hosts, GatewayRefs],
        Provider::Linkerd if linkerd_uses_gateway_api(canary) => {
            &[Match, Timeout, BackendTimeout, Headers, Rewrite, GatewayRefs]
        }
        // Flagger's contour router: the route's path prefix (`match[0].uri.prefix`), the
        // response timeout and the retry policy.
        Provider::Contour => &[Match, Retries, Timeout],
        Provider::Linkerd
        | Provider::Smi
        | Provider::Nginx
        | Provider::Traefik
        | Provider::Kubernetes
        | Provider::Apisix
        | Provider::Gloo
        | Provider::Skipper
        | Provider::Kuma
        | Provider::Knative => &[],
    }
}

/// The providers whose router writes `option` (to tell a user where it would be written);
/// Linkerd is named with its condition when it writes the option through Gateway API only.
fn providers_writing(option: RouteOption) -> Vec<&'static str> {
    let plain = Canary::new("any", Default::default());
    let mut gamma = plain.clone();
    gamma.spec.service.gateway_refs =
        vec![GatewayRef { name: "any".into(), kind: Some("Service".into()), ..GatewayRef::default() }];
    let mut out: Vec<&'static str> = Vec::new();
    for provider in petrel_api::canary::PROVIDERS.iter().filter_map(|name| Provider::parse(name).ok()) {
        let name = if written_by(provider, &plain).contains(&option) {
            provider.as_str()
        } else if written_by(provider, &gamma).contains(&option) {
            "linkerd (with gatewayRefs of kind Service)"
        } else {
            continue;
        };
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// The providers whose routers pin sessions (Flagger's too).
pub fn supports_session_affinity(provider: Provider) -> bool {
    matches!(provider, Provider::Istio | Provider::GatewayApi)
}

/// Why this Canary cannot be routed by `provider`: it asks for session affinity, which
/// only the istio and gatewayapi routers write.
pub fn session_affinity_refusal(canary: &Canary, provider: Provider) -> Option<String> {
    let asked = canary.spec.analysis.as_ref().is_some_and(|a| a.session_affinity.is_some());
    (asked && !supports_session_affinity(provider)).then(|| {
        format!(
            "analysis.sessionAffinity (cookie pinning) is written by the istio and gatewayapi routers only, not by provider {provider} (Flagger's {provider} router does not pin sessions either): use provider istio or gatewayapi, or remove analysis.sessionAffinity"
        )
    })
}

/// Why `provider` cannot route this Canary: it asks for session affinity, or sets route
/// options, that the provider's router does not write. The one check the controller and
/// `kubectl petrel import` both make.
pub fn routing_refusal(canary: &Canary, provider: Provider) -> Option<String> {
    session_affinity_refusal(canary, provider).or_else(|| refusal(canary, provider))
}

/// Why `provider` cannot route this Canary: it sets route options the provider's router
/// does not write. `None` when every option set is written.
pub fn refusal(canary: &Canary, provider: Provider) -> Option<String> {
    let written = written_by(provider, canary);
    let unwritten: Vec<RouteOption> = RouteOption::ALL
        .into_iter()
        .filter(|option| option.is_set(&canary.spec.service) && !written.contains(option))
        .collect();
    if unwritten.is_empty() {
        return None;
    }
    let fields: Vec<&str> = unwritten.iter().map(|o| o.field()).collect();
    let elsewhere: Vec<String> = unwritten
        .iter()
        .map(|o| {
            let providers = providers_writing(*o);
            if providers.is_empty() {
                format!("{}: no provider", o.field())
            } else {
                format!("{}: {}", o.field(), providers.join(", "))
            }
        })
        .collect();
    let (verb, pronoun) = if fields.len() == 1 { ("is", "it") } else { ("are", "them") };
    Some(format!(
        "{} {verb} not written by provider {provider}'s router, so petrel refuses the Canary rather than route without {pronoun}: remove {pronoun}, or use a provider that writes {pronoun} ({})",
        fields.join(", "),
        elsewhere.join("; "),
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing;

    /// The testing Canary with only its port and `service` set in `spec.service`.
    fn with_service(service: serde_json::Value) -> Canary {
        let mut canary = testing::canary();
        let mut merged = json!({ "port": 9898 });
        for (key, value) in service.as_object().unwrap() {
            merged[key] = value.clone();
        }
        canary.spec.service = serde_json::from_value(merged).unwrap();
        canary
    }

    /// One value for each option, as a Flagger manifest writes it.
    fn set(option: RouteOption) -> serde_json::Value {
        match option {
            RouteOption::Match => json!({ "match": [{ "uri": { "prefix": "/api" } }] }),
            RouteOption::Retries => json!({ "retries": { "attempts": 3, "perTryTimeout": "1s" } }),
            RouteOption::Timeout => json!({ "timeout": "30s" }),
            RouteOption::BackendTimeout => json!({ "backendTimeout": "10s" }),
            RouteOption::Headers => json!({ "headers": { "request": { "add": { "x-a": "b" } } } }),
            RouteOption::CorsPolicy => {
                json!({ "corsPolicy": { "allowOrigins": [{ "exact": "https://example.com" }] } })
            }
            RouteOption::TrafficPolicy => json!({ "trafficPolicy": { "tls": { "mode": "ISTIO_MUTUAL" } } }),
            RouteOption::Rewrite => json!({ "rewrite": { "uri": "/" } }),
            RouteOption::Mirror => json!({ "mirror": [{ "backendRef": { "name": "shadow", "port": 80 } }] }),
            RouteOption::Gateways => json!({ "gateways": ["public-gateway"] }),
            RouteOption::Hosts => json!({ "hosts": ["app.example.com"] }),
            RouteOption::Delegation => json!({ "delegation": true }),
            RouteOption::GatewayRefs => json!({ "gatewayRefs": [{ "name": "gw", "namespace": "gateway" }] }),
        }
    }

    #[test]
    fn every_option_parses_as_set_and_its_field_is_its_json_key() {
        for option in RouteOption::ALL {
            let value = set(option);
            let canary = with_service(value.clone());
            assert!(option.is_set(&canary.spec.service), "{option:?}");
            let key = value.as_object().unwrap().keys().next().unwrap().clone();
            assert_eq!(option.field(), format!("spec.service.{key}"), "{option:?}");
            for other in RouteOption::ALL.into_iter().filter(|o| *o != option) {
                assert!(!other.is_set(&canary.spec.service), "{option:?} also sets {other:?}");
            }
        }
    }

    #[test]
    fn empty_lists_and_false_are_not_set() {
        let canary =
            with_service(json!({ "match": [], "mirror": [], "gateways": [], "hosts": [], "delegation": false }));
        assert_eq!(refusal(&canary, Provider::Nginx), None);
        assert!(RouteOption::ALL.iter().all(|o| !o.is_set(&canary.spec.service)));
    }

    /// A provider refuses exactly the options its router does not write, for every
    /// provider and every option.
    #[test]
    fn each_provider_refuses_exactly_the_options_it_does_not_write() {
        for name in petrel_api::canary::PROVIDERS {
            let provider = Provider::parse(name).unwrap();
            for option in RouteOption::ALL {
                let canary = with_service(set(option));
                let written = written_by(provider, &canary).contains(&option);
                let refused = refusal(&canary, provider);
                assert_eq!(refused.is_none(), written, "{name} {option:?}: {refused:?}");
                if let Some(message) = refused {
                    assert!(message.contains(option.field()), "{message}");
                    assert!(message.contains(&format!("provider {provider}")), "{message}");
                }
            }
        }
    }

    #[test]
    fn the_istio_options_flagger_drops_elsewhere_are_refused_with_where_they_work() {
        let canary = with_service(json!({ "retries": { "attempts": 3 }, "hosts": ["app.example.com"] }));
        let message = refusal(&canary, Provider::Nginx).unwrap();
        assert!(
            message.starts_with("spec.service.retries, spec.service.hosts are not written by provider nginx's router"),
            "{message}"
        );
        assert!(message.contains("spec.service.retries: istio, contour"), "{message}");
        assert!(message.contains("spec.service.hosts: gatewayapi, istio"), "{message}");
        // On Gateway API: corsPolicy and retries are Istio's alone, as in Flagger.
        let canary = with_service(
            json!({ "corsPolicy": { "allowOrigins": [{ "exact": "https://a" }] }, "retries": { "attempts": 3 } }),
        );
        let message = refusal(&canary, Provider::GatewayApi).unwrap();
        assert!(
            message.starts_with("spec.service.retries, spec.service.corsPolicy are not written by provider gatewayapi"),
            "{message}"
        );
    }

    #[test]
    fn linkerd_writes_the_http_route_options_only_through_gateway_api() {
        let gamma = json!({ "gatewayRefs": [{ "name": "podinfo", "kind": "Service", "group": "core", "port": 9898 }] });
        let mut with_timeout = gamma.clone();
        with_timeout["timeout"] = json!("5s");
        assert_eq!(refusal(&with_service(with_timeout), Provider::Linkerd), None);
        // Through SMI the TrafficSplit has no timeout.
        let message = refusal(&with_service(json!({ "timeout": "5s" })), Provider::Linkerd).unwrap();
        assert!(message.contains("spec.service.timeout"), "{message}");
        assert!(message.contains("linkerd (with gatewayRefs of kind Service)"), "{message}");
        // Host names do not apply to a route attached to a Service; mirroring does not exist.
        let mut with_hosts = gamma;
        with_hosts["hosts"] = json!(["a.example.com"]);
        with_hosts["mirror"] = json!([{ "backendRef": { "name": "shadow", "port": 80 } }]);
        let message = refusal(&with_service(with_hosts), Provider::Linkerd).unwrap();
        assert!(message.starts_with("spec.service.mirror, spec.service.hosts are not written"), "{message}");
    }

    /// The table of docs/flagger.md: each option and the providers whose router writes it.
    fn markdown_table() -> String {
        let mut out = String::from("| route option | written by |\n|---|---|\n");
        for option in RouteOption::ALL {
            out.push_str(&format!("| `{}` | {} |\n", option.field(), providers_writing(option).join(", ")));
        }
        out
    }

    /// docs/flagger.md shows the table this module decides by.
    #[test]
    fn the_flagger_doc_shows_this_table() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/flagger.md")).unwrap();
        let table = markdown_table();
        assert!(doc.contains(&table), "docs/flagger.md lacks the route option table; paste this:\n{table}");
    }
}
