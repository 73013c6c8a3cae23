//! Provider `linkerd`: Linkerd routes by Gateway API (GAMMA) or by SMI.
//!
//! When every `spec.service.gatewayRefs` entry is of kind `Service` (the apex Service, as
//! GAMMA attaches a route to a Service), petrel writes an HTTPRoute `<svc>`
//! (gateway.networking.k8s.io/v1) with those parentRefs, split between `<svc>-primary` and
//! `<svc>-canary` by `backendRefs[].weight`, and A/B conditions as in provider
//! `gatewayapi`. Linkerd's proxies apply it to every meshed client of the Service. Without
//! gatewayRefs it writes an SMI TrafficSplit (Linkerd's SMI extension), as Flagger does for
//! provider `linkerd`. Linkerd has no request mirroring; asking for it is an error.

use futures::future::BoxFuture;
use kube::Client;
use kube::core::ApiResource;
use serde_json::Value;

use super::{
    MeshRouter, MeshRoutes, RouteObject, RouterError, RouterMemory, ServiceNames, TrafficRouter, Weights, canary_key,
    gatewayapi, smi, unsupported,
};
use petrel_api::Canary;

const PROVIDER: &str = "linkerd";
/// The kind a GAMMA parentRef names.
const SERVICE_KIND: &str = "Service";

pub use crate::options::linkerd_uses_gateway_api as uses_gateway_api;

/// The HTTPRoute `<svc>` Linkerd applies to the clients of the apex Service.
pub fn build_gamma_route(canary: &Canary, weights: Weights) -> Result<Value, RouterError> {
    if let Some(other) = canary.spec.service.gateway_refs.iter().find(|r| r.kind.as_deref() != Some(SERVICE_KIND)) {
        return Err(RouterError::InvalidCanary {
            canary: canary_key(canary),
            reason: format!(
                "provider linkerd attaches its HTTPRoute to Services (GAMMA): spec.service.gatewayRefs entry {:?} must have kind Service (a Gateway parent is provider gatewayapi)",
                other.name
            ),
        });
    }
    if weights.mirror() {
        return Err(unsupported(PROVIDER, "mirror traffic (Linkerd's HTTPRoute has no RequestMirror filter)"));
    }
    let mut route = gatewayapi::build_http_route(canary, weights)?;
    // A route attached to a Service matches the Service's own traffic: host names do not apply.
    if let Some(spec) = route.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("hostnames");
    }
    Ok(route)
}

/// Linkerd through Gateway API.
pub(crate) struct LinkerdGamma;

impl MeshRoutes for LinkerdGamma {
    fn build(canary: &Canary, weights: Weights) -> Result<Vec<RouteObject>, RouterError> {
        Ok(vec![RouteObject {
            resource: gatewayapi::http_route_resource(canary),
            manifest: build_gamma_route(canary, weights)?,
        }])
    }

    fn weighted_object(canary: &Canary) -> (ApiResource, String) {
        (gatewayapi::http_route_resource(canary), ServiceNames::of(canary).apex)
    }

    fn weights_of(obj: &Value) -> Result<Weights, RouterError> {
        gatewayapi::weights_of(obj)
    }
}

/// Chooses Gateway API or SMI per Canary.
pub struct LinkerdRouter {
    gamma: MeshRouter<LinkerdGamma>,
    smi: MeshRouter<smi::Smi>,
}

impl LinkerdRouter {
    pub fn new(client: Client, memory: RouterMemory) -> Self {
        LinkerdRouter { gamma: MeshRouter::new(client.clone(), memory.clone()), smi: MeshRouter::new(client, memory) }
    }

    fn pick(&self, canary: &Canary) -> &dyn TrafficRouter {
        if uses_gateway_api(canary) { &self.gamma } else { &self.smi }
    }
}

impl TrafficRouter for LinkerdRouter {
    fn reconcile<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<(), RouterError>> {
        self.pick(canary).reconcile(canary)
    }

    fn set_routes<'a>(&'a self, canary: &'a Canary, weights: Weights) -> BoxFuture<'a, Result<(), RouterError>> {
        self.pick(canary).set_routes(canary, weights)
    }

    fn finalize<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<(), RouterError>> {
        self.pick(canary).finalize(canary)
    }

    fn required_kinds(&self, canary: &Canary) -> Vec<ApiResource> {
        self.pick(canary).required_kinds(canary)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testing::{ab_canary, any_weights, assert_manifest, canary, weights};
    use super::*;
    use petrel_api::canary::GatewayRef;

    /// The Canary of Flagger's Linkerd tutorial: the HTTPRoute attaches to the apex Service.
    fn gamma(mut canary: Canary) -> Canary {
        canary.spec.provider = Some("linkerd".into());
        canary.spec.service.gateway_refs = vec![GatewayRef {
            name: "podinfo".into(),
            namespace: Some("test".into()),
            group: Some("core".into()),
            kind: Some("Service".into()),
            port: Some(9898),
            ..GatewayRef::default()
        }];
        canary
    }

    #[test]
    fn gamma_routes_match_their_manifests() {
        assert_manifest(&build_gamma_route(&gamma(canary()), weights(100, 0, false)).unwrap(), "linkerd_gamma_100_0");
        assert_manifest(&build_gamma_route(&gamma(canary()), weights(80, 20, false)).unwrap(), "linkerd_gamma_80_20");
        assert_manifest(&build_gamma_route(&gamma(ab_canary()), weights(0, 100, false)).unwrap(), "linkerd_gamma_ab");
    }

    #[test]
    fn a_gateway_parent_or_mirroring_is_refused() {
        let mut with_gateway = gamma(canary());
        with_gateway.spec.service.gateway_refs[0].kind = Some("Gateway".into());
        let err = build_gamma_route(&with_gateway, weights(100, 0, false)).unwrap_err();
        assert!(matches!(err, RouterError::InvalidCanary { .. }) && err.to_string().contains("kind Service"), "{err}");
        assert!(matches!(
            build_gamma_route(&gamma(canary()), weights(100, 0, true)),
            Err(RouterError::Unsupported { .. })
        ));
    }

    #[test]
    fn gateway_refs_choose_gateway_api_over_smi() {
        let mut smi_canary = canary();
        smi_canary.spec.service.gateway_refs.clear();
        assert!(!uses_gateway_api(&smi_canary));
        assert!(uses_gateway_api(&gamma(canary())));
        assert_eq!(LinkerdGamma::weighted_object(&gamma(canary())).0.kind, "HTTPRoute");
    }

    #[tokio::test]
    async fn the_router_needs_the_kind_of_the_api_it_uses() {
        let (client, _) = super::super::io_tests::offline_client();
        let router = LinkerdRouter::new(client, RouterMemory::default());
        let mut smi_canary = canary();
        smi_canary.spec.service.gateway_refs.clear();
        let kinds = |c: &Canary| router.required_kinds(c).into_iter().map(|r| r.kind).collect::<Vec<_>>();
        assert_eq!(kinds(&smi_canary), ["TrafficSplit"]);
        assert_eq!(kinds(&gamma(canary())), ["HTTPRoute"]);
    }

    proptest! {
        #[test]
        fn weights_round_trip(w in any_weights(false), ab in any::<bool>()) {
            let canary = gamma(if ab { ab_canary() } else { canary() });
            let route = build_gamma_route(&canary, w).unwrap();
            prop_assert!(route["spec"].get("hostnames").is_none());
            prop_assert_eq!(gatewayapi::weights_of(&route).unwrap(), w);
        }
    }
}
