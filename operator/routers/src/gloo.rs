//! Provider `gloo` (Gloo Edge): a RouteTable `<svc>` (gateway.solo.io/v1) whose first route
//! splits traffic between two Upstreams petrel generates (gloo.solo.io/v1),
//! `<ns>-<svc>-primaryupstream-<port>` and `<ns>-<svc>-canaryupstream-<port>`, one per
//! generated Service. The user's VirtualService delegates to the RouteTable.
//!
//! As in Flagger, the Upstreams copy the connection settings of the Upstream named by
//! `spec.upstreamRef` (TLS, circuit breakers, load balancing, HTTP/2...), so Gloo's upstream
//! discovery need not run. A/B: the first route carries one matcher per `analysis.match`
//! entry (Gloo ORs matchers, ANDs the headers of one) and the weights; a second route sends
//! everything else to the primary (Flagger writes only the first: unmatched requests find no
//! route). No mirroring.

use futures::future::BoxFuture;
use kube::core::ApiResource;
use kube::{Client, ResourceExt};
use serde_json::{Map, Value, json};

use super::services::PodSelector;
use super::{
    Observed, RouteObject, RouterError, RouterMemory, ServiceNames, Weights, ab_matches, api_resource, apply_dynamic,
    canary_key, delete_dynamic, ledger_key, malformed, manifest, namespace_of, observed_version, read_dynamic,
    regex_escape, service_port, services, unsupported, weight_field,
};
use petrel_api::Canary;
use petrel_api::canary::{HttpMatch, StringMatch};

const PROVIDER: &str = "gloo";

pub fn route_table_resource() -> ApiResource {
    api_resource("gateway.solo.io", "v1", "RouteTable", "routetables")
}

pub fn upstream_resource() -> ApiResource {
    api_resource("gloo.solo.io", "v1", "Upstream", "upstreams")
}

/// Settings of the `upstreamRef` Upstream the generated Upstreams copy (Flagger's list).
const COPIED_UPSTREAM_SETTINGS: [&str; 9] = [
    "labels",
    "sslConfig",
    "circuitBreakers",
    "connectionConfig",
    "loadBalancerConfig",
    "useHttp2",
    "initialStreamWindowSize",
    "initialConnectionWindowSize",
    "httpProxyHostname",
];

/// Which generated Service an Upstream points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Primary,
    Canary,
}

/// `<ns>-<svc>-<side>upstream-<port>`.
pub fn upstream_name(canary: &Canary, side: Side) -> String {
    let side = match side {
        Side::Primary => "primary",
        Side::Canary => "canary",
    };
    format!(
        "{}-{}-{side}upstream-{}",
        canary.namespace().unwrap_or_default(),
        ServiceNames::of(canary).apex,
        service_port(canary)
    )
}

/// The Upstream for one side: the template's settings plus the kube Service it reaches.
pub fn build_upstream(
    canary: &Canary,
    side: Side,
    selector: &PodSelector,
    template: Option<&Value>,
) -> Result<Value, RouterError> {
    let names = ServiceNames::of(canary);
    let (service, labels) = match side {
        Side::Primary => (names.primary, selector.primary_labels()),
        Side::Canary => (names.canary, selector.canary_labels()),
    };
    let mut spec = Map::new();
    if let Some(template) = template.and_then(|t| t.get("spec")) {
        for key in COPIED_UPSTREAM_SETTINGS {
            if let Some(value) = template.get(key) {
                spec.insert(key.into(), value.clone());
            }
        }
    }
    spec.insert(
        "kube".into(),
        json!({
            "serviceName": service,
            "serviceNamespace": namespace_of(canary)?,
            "servicePort": service_port(canary),
            "selector": labels,
        }),
    );
    manifest(&upstream_resource(), canary, &upstream_name(canary, side), Value::Object(spec))
}

fn header_matcher(name: &str, m: &StringMatch) -> Result<Value, RouterError> {
    let (value, regex) = match m {
        StringMatch { exact: Some(exact), prefix: None, suffix: None, regex: None } => (exact.clone(), false),
        StringMatch { regex: Some(regex), exact: None, prefix: None, suffix: None } => (regex.clone(), true),
        StringMatch { prefix: Some(prefix), exact: None, suffix: None, regex: None } => {
            (format!("{}.*", regex_escape(prefix)), true)
        }
        StringMatch { suffix: Some(suffix), exact: None, prefix: None, regex: None } => {
            (format!(".*{}", regex_escape(suffix)), true)
        }
        _ => {
            return Err(unsupported(
                PROVIDER,
                format!("match header {name:?} unless it sets exactly one of exact, prefix, suffix or regex"),
            ));
        }
    };
    let mut header = json!({ "name": name, "value": value });
    if regex {
        header["regex"] = json!(true);
    }
    Ok(header)
}

/// One Gloo matcher per A/B condition: its headers (ANDed) and method.
fn matcher(m: &HttpMatch) -> Result<Value, RouterError> {
    if !m.query_params.is_empty() || m.uri.is_some() || m.source_labels.is_some() {
        return Err(unsupported(PROVIDER, "match on anything but headers and the method in an A/B route"));
    }
    let mut out = Map::new();
    let headers = m.headers.iter().map(|(name, value)| header_matcher(name, value)).collect::<Result<Vec<_>, _>>()?;
    if !headers.is_empty() {
        out.insert("headers".into(), Value::Array(headers));
    }
    if let Some(method) = &m.method {
        let Some(exact) = &method.exact else {
            return Err(unsupported(PROVIDER, "match a method other than exactly"));
        };
        out.insert("methods".into(), json!([exact.to_ascii_uppercase()]));
    }
    Ok(Value::Object(out))
}

fn route(canary: &Canary, matchers: Option<Vec<Value>>, primary: u8, canary_weight: u8) -> Result<Value, RouterError> {
    let namespace = namespace_of(canary)?;
    let destination = |side: Side, weight: u8| json!({ "destination": { "upstream": { "name": upstream_name(canary, side), "namespace": namespace } }, "weight": weight });
    let mut route = Map::new();
    if let Some(matchers) = matchers {
        route.insert("matchers".into(), Value::Array(matchers));
    }
    route.insert("inheritablePathMatchers".into(), json!(true));
    route.insert(
        "routeAction".into(),
        json!({ "multi": { "destinations": [destination(Side::Primary, primary), destination(Side::Canary, canary_weight)] } }),
    );
    Ok(Value::Object(route))
}

/// The RouteTable `<svc>` for these weights.
pub fn build_route_table(canary: &Canary, weights: Weights) -> Result<Value, RouterError> {
    if weights.mirror() {
        return Err(unsupported(PROVIDER, "mirror traffic"));
    }
    let matches = ab_matches(canary);
    let mut routes = Vec::new();
    if matches.is_empty() {
        routes.push(route(canary, None, weights.primary(), weights.canary())?);
    } else {
        let matchers = matches.iter().map(matcher).collect::<Result<Vec<_>, _>>()?;
        routes.push(route(canary, Some(matchers), weights.primary(), weights.canary())?);
        routes.push(route(canary, None, 100, 0)?);
    }
    manifest(&route_table_resource(), canary, &ServiceNames::of(canary).apex, json!({ "routes": routes }))
}

/// The weights of a RouteTable built by [`build_route_table`]: those of its first route.
pub fn weights_of(table: &Value, canary: &Canary) -> Result<Weights, RouterError> {
    let bad = |reason: String| malformed("RouteTable", table, reason);
    let destinations = table
        .pointer("/spec/routes/0/routeAction/multi/destinations")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("its first route has no routeAction.multi.destinations".into()))?;
    let weight_of = |side: Side| -> Result<u8, RouterError> {
        let name = upstream_name(canary, side);
        let found = destinations
            .iter()
            .find(|d| d.pointer("/destination/upstream/name").and_then(Value::as_str) == Some(name.as_str()))
            .ok_or_else(|| bad(format!("its first route does not send to Upstream {name}")))?;
        weight_field(found.get("weight"), bad)
    };
    Weights::new(weight_of(Side::Primary)?, weight_of(Side::Canary)?, false)
}

pub struct GlooRouter {
    client: Client,
    memory: RouterMemory,
}

impl GlooRouter {
    pub fn new(client: Client, memory: RouterMemory) -> Self {
        GlooRouter { client, memory }
    }

    /// The Upstream named by `spec.upstreamRef`, when the Canary names one.
    async fn template(&self, canary: &Canary) -> Result<Option<Value>, RouterError> {
        let Some(reference) = &canary.spec.upstream_ref else { return Ok(None) };
        let namespace = reference.namespace.clone().unwrap_or(namespace_of(canary)?);
        let found = read_dynamic(&self.client, &namespace, &upstream_resource(), &reference.name).await?;
        found.map(Some).ok_or_else(|| RouterError::NotFound {
            kind: "Upstream".into(),
            namespace,
            name: reference.name.clone(),
            reason: format!("it is the upstreamRef of Canary {}", canary_key(canary)),
        })
    }

    async fn current(&self, canary: &Canary) -> Result<Option<Value>, RouterError> {
        read_dynamic(&self.client, &namespace_of(canary)?, &route_table_resource(), &ServiceNames::of(canary).apex)
            .await
    }

    /// Applies the RouteTable unless the ledger shows it unchanged at `observed`.
    async fn apply_table(&self, canary: &Canary, weights: Weights, observed: Observed) -> Result<(), RouterError> {
        let object = RouteObject { resource: route_table_resource(), manifest: build_route_table(canary, weights)? };
        apply_dynamic(&self.client, &self.memory.ledger, &namespace_of(canary)?, &object, &observed).await
    }
}

impl super::TrafficRouter for GlooRouter {
    fn reconcile<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<(), RouterError>> {
        Box::pin(async move {
            // A missing upstreamRef Upstream fails before anything is written.
            let template = self.template(canary).await?;
            let selector = services::ensure_services(&self.client, &self.memory, canary).await?;
            let namespace = namespace_of(canary)?;
            for side in [Side::Primary, Side::Canary] {
                let manifest = build_upstream(canary, side, &selector, template.as_ref())?;
                let upstream = RouteObject { resource: upstream_resource(), manifest };
                apply_dynamic(&self.client, &self.memory.ledger, &namespace, &upstream, &Observed::Unknown).await?;
            }
            // Reconcile runs on every tick, also mid-release: keep the weights in place.
            let current = self.current(canary).await?;
            let weights = match &current {
                Some(existing) => weights_of(existing, canary)?,
                None => Weights::primary_only(),
            };
            self.apply_table(canary, weights, observed_version(current.as_ref())).await
        })
    }

    fn set_routes<'a>(&'a self, canary: &'a Canary, weights: Weights) -> BoxFuture<'a, Result<(), RouterError>> {
        Box::pin(self.apply_table(canary, weights, Observed::Unknown))
    }

    fn finalize<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<(), RouterError>> {
        Box::pin(async move {
            let namespace = namespace_of(canary)?;
            let apex = ServiceNames::of(canary).apex;
            self.memory.ledger.forget(&ledger_key("RouteTable", &namespace, &apex));
            delete_dynamic(&self.client, &namespace, &route_table_resource(), &apex).await?;
            for side in [Side::Primary, Side::Canary] {
                let name = upstream_name(canary, side);
                self.memory.ledger.forget(&ledger_key("Upstream", &namespace, &name));
                delete_dynamic(&self.client, &namespace, &upstream_resource(), &name).await?;
            }
            Ok(())
        })
    }

    fn required_kinds(&self, _canary: &Canary) -> Vec<ApiResource> {
        vec![route_table_resource(), upstream_resource()]
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testing::{ab_canary, any_weights, assert_manifest, canary, weights};
    use super::*;

    fn selector() -> PodSelector {
        PodSelector { key: "app".into(), value: "podinfo".into() }
    }

    #[test]
    fn route_tables_match_their_manifests() {
        assert_manifest(&build_route_table(&canary(), weights(100, 0, false)).unwrap(), "gloo_100_0");
        assert_manifest(&build_route_table(&canary(), weights(90, 10, false)).unwrap(), "gloo_90_10");
        assert_manifest(&build_route_table(&ab_canary(), weights(0, 100, false)).unwrap(), "gloo_ab");
    }

    #[test]
    fn upstreams_copy_the_template_settings_and_reach_their_service() {
        let template = json!({
            "apiVersion": "gloo.solo.io/v1", "kind": "Upstream",
            "metadata": { "name": "config-upstream", "namespace": "gloo-system" },
            "spec": {
                "connectionConfig": { "maxRequestsPerConnection": 100 },
                "loadBalancerConfig": { "roundRobin": {} },
                "kube": { "serviceName": "someone-else", "servicePort": 80 },
                "discoveryMetadata": { "labels": { "x": "y" } },
            },
        });
        let canary = canary();
        assert_manifest(
            &build_upstream(&canary, Side::Canary, &selector(), Some(&template)).unwrap(),
            "gloo_upstream_canary",
        );
        let primary = build_upstream(&canary, Side::Primary, &selector(), None).unwrap();
        assert_eq!(primary["metadata"]["name"], "test-podinfo-primaryupstream-9898");
        assert_eq!(
            primary["spec"],
            json!({ "kube": {
                "serviceName": "podinfo-primary", "serviceNamespace": "test", "servicePort": 9898,
                "selector": { "app": "podinfo-primary" },
            }})
        );
    }

    #[test]
    fn mirroring_and_unroutable_matches_are_refused() {
        assert!(matches!(build_route_table(&canary(), weights(100, 0, true)), Err(RouterError::Unsupported { .. })));
        let mut canary = ab_canary();
        canary.spec.analysis.as_mut().unwrap().match_.as_mut().unwrap()[0].uri =
            Some(StringMatch { prefix: Some("/api".into()), ..StringMatch::default() });
        assert!(matches!(build_route_table(&canary, weights(0, 100, false)), Err(RouterError::Unsupported { .. })));
    }

    proptest! {
        #[test]
        fn weights_round_trip(w in any_weights(false), ab in any::<bool>()) {
            let canary = if ab { ab_canary() } else { canary() };
            let table = build_route_table(&canary, w).unwrap();
            for route in table["spec"]["routes"].as_array().unwrap() {
                let destinations = route["routeAction"]["multi"]["destinations"].as_array().unwrap();
                prop_assert_eq!(destinations.iter().map(|d| d["weight"].as_u64().unwrap()).sum::<u64>(), 100);
            }
            prop_assert_eq!(weights_of(&table, &canary).unwrap(), w);
        }
    }
}
