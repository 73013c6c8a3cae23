//! The traffic provider named by a Canary.

use std::fmt;

/// A traffic provider petrel can drive. Parsing an unknown name is an error, never a fallback.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Provider {
    GatewayApi,
    Istio,
    /// Linkerd: an HTTPRoute attached to the apex Service (Gateway API's GAMMA) when the
    /// Canary's `service.gatewayRefs` name Services, an SMI TrafficSplit otherwise.
    Linkerd,
    /// Any SMI implementation (TrafficSplit).
    Smi,
    Nginx,
    Traefik,
    Contour,
    /// Plain Kubernetes Services: blue/green by switching the apex Service's selector.
    Kubernetes,
    /// Apache APISIX: a weighted clone of the user's ApisixRoute (`spec.routeRef`).
    Apisix,
    /// Gloo Edge: a RouteTable over two generated Upstreams.
    Gloo,
    /// Skipper: a canary Ingress carrying Skipper's backend-weights annotation.
    Skipper,
    /// Kuma: a MeshHTTPRoute.
    Kuma,
    /// Knative Serving: the traffic block of the target Knative Service; its revisions are
    /// the primary and the canary.
    Knative,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "unknown traffic provider {0:?}: expected one of gatewayapi, istio, linkerd, smi, nginx, traefik, contour, kubernetes, apisix, gloo, skipper, kuma, knative"
)]
pub struct UnknownProvider(pub String);

impl Provider {
    /// Parses a provider name, accepting Flagger's versioned spellings (`gatewayapi:v1`, `smi:v1alpha2`).
    pub fn parse(name: &str) -> Result<Self, UnknownProvider> {
        let base = name.split(':').next().unwrap_or(name);
        match (base, name) {
            ("gatewayapi", "gatewayapi" | "gatewayapi:v1" | "gatewayapi:v1beta1") => Ok(Provider::GatewayApi),
            ("istio", "istio") => Ok(Provider::Istio),
            ("linkerd", "linkerd") => Ok(Provider::Linkerd),
            ("smi", "smi" | "smi:v1alpha1" | "smi:v1alpha2" | "smi:v1alpha3") => Ok(Provider::Smi),
            ("nginx", "nginx") => Ok(Provider::Nginx),
            ("traefik", "traefik") => Ok(Provider::Traefik),
            ("contour", "contour") => Ok(Provider::Contour),
            ("kubernetes", "kubernetes") => Ok(Provider::Kubernetes),
            ("apisix", "apisix") => Ok(Provider::Apisix),
            ("gloo", "gloo") => Ok(Provider::Gloo),
            ("skipper", "skipper") => Ok(Provider::Skipper),
            ("kuma", "kuma") => Ok(Provider::Kuma),
            ("knative", "knative") => Ok(Provider::Knative),
            _ => Err(UnknownProvider(name.to_string())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::GatewayApi => "gatewayapi",
            Provider::Istio => "istio",
            Provider::Linkerd => "linkerd",
            Provider::Smi => "smi",
            Provider::Nginx => "nginx",
            Provider::Traefik => "traefik",
            Provider::Contour => "contour",
            Provider::Kubernetes => "kubernetes",
            Provider::Apisix => "apisix",
            Provider::Gloo => "gloo",
            Provider::Skipper => "skipper",
            Provider::Kuma => "kuma",
            Provider::Knative => "knative",
        }
    }

    /// Whether the provider can route by header or cookie (A/B testing). Linkerd can
    /// through Gateway API only: see `petrel::routers::supports_matching` for a Canary.
    pub fn supports_matching(self) -> bool {
        matches!(
            self,
            Provider::GatewayApi
                | Provider::Istio
                | Provider::Nginx
                | Provider::Contour
                | Provider::Gloo
                | Provider::Kuma
        )
    }

    /// Whether the provider can mirror traffic.
    pub fn supports_mirroring(self) -> bool {
        matches!(self, Provider::GatewayApi | Provider::Istio)
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_accepted_api_spelling_parses() {
        for name in petrel_api::canary::PROVIDERS {
            assert!(Provider::parse(name).is_ok(), "{name} is in the CRD enum but does not parse");
        }
    }

    #[test]
    fn unknown_provider_is_an_error() {
        assert_eq!(Provider::parse("appmesh"), Err(UnknownProvider("appmesh".into())));
        assert!(Provider::parse("gatewayapi:v2").is_err());
        assert!(Provider::parse("").is_err());
    }
}
