//! Provider `skipper`: a clone of the user's Ingress (`spec.ingressRef`) named
//! `<ingress>-canary`, as Flagger writes it for Zalando's Skipper.
//!
//! Every path of the clone that sends to the apex Service is pointed at `<svc>-primary`,
//! and a copy of it at `<svc>-canary`; the annotation `zalando.org/backend-weights` holds
//! the weights of both. The predicate `Weight(100)` (first in
//! `zalando.org/skipper-predicate`, before the user's own) makes Skipper prefer the clone's
//! routes over the user's Ingress; at canary weight 0 it is `False()` instead, which turns
//! the clone's routes off so the user's Ingress (the apex Service, the primary's pods)
//! serves everything. The user's Ingress is only read. No header matching, no mirroring.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams};
use kube::{Client, ResourceExt};

use super::nginx::{self, copied_label, gitops_tracking};
use super::{
    RouterError, ServiceNames, TrafficRouter, Weights, ab_matches, canary_key, generated_metadata, services,
    unsupported,
};
use petrel_api::Canary;

const PROVIDER: &str = "skipper";
pub const BACKEND_WEIGHTS: &str = "zalando.org/backend-weights";
pub const PREDICATE: &str = "zalando.org/skipper-predicate";
/// Prefer the clone's routes over the user's Ingress.
const PREFER: &str = "Weight(100)";
/// Turn the clone's routes off.
const DISABLE: &str = "False()";

/// The name of the clone of `ingress`.
pub fn canary_ingress_name(ingress: &str) -> String {
    format!("{ingress}-canary")
}

/// `first` followed by the user's predicates, without petrel's own.
fn predicate_with(user: Option<&str>, first: &str) -> String {
    let mut predicates = vec![first.to_string()];
    predicates.extend(
        user.unwrap_or_default()
            .split("&&")
            .map(str::trim)
            .filter(|p| !p.is_empty() && *p != PREFER && *p != DISABLE)
            .map(String::from),
    );
    predicates.join(" && ")
}

/// The canary Ingress for these weights, cloned from the user's Ingress.
pub fn build_canary_ingress(canary: &Canary, ingress: &Ingress, weights: Weights) -> Result<Ingress, RouterError> {
    if weights.mirror() {
        return Err(unsupported(PROVIDER, "mirror traffic"));
    }
    if !ab_matches(canary).is_empty() {
        return Err(unsupported(PROVIDER, "route by header or cookie (A/B testing); use weights instead"));
    }
    let names = ServiceNames::of(canary);
    let mut spec = ingress.spec.clone().unwrap_or_default();
    let mut retargeted = 0;
    for rule in spec.rules.iter_mut().flatten() {
        for http in rule.http.iter_mut() {
            let mut paths = Vec::new();
            for path in &http.paths {
                let mut path = path.clone();
                match path.backend.service.as_mut() {
                    Some(service) if service.name == names.apex => {
                        service.name = names.primary.clone();
                        let mut canary_path = path.clone();
                        if let Some(service) = canary_path.backend.service.as_mut() {
                            service.name = names.canary.clone();
                        }
                        paths.push(path);
                        paths.push(canary_path);
                        retargeted += 1;
                    }
                    _ => paths.push(path),
                }
            }
            http.paths = paths;
        }
    }
    if retargeted == 0 {
        return Err(RouterError::Malformed {
            kind: "Ingress".into(),
            namespace: ingress.namespace().unwrap_or_default(),
            name: ingress.name_any(),
            reason: format!("no path sends to Service {}, so a canary clone could not route anything", names.apex),
        });
    }

    let user = ingress.annotations();
    let mut annotations: BTreeMap<String, String> = user
        .iter()
        .filter(|(k, _)| {
            k.as_str() != "kubectl.kubernetes.io/last-applied-configuration"
                && !gitops_tracking(k)
                && k.as_str() != BACKEND_WEIGHTS
                && k.as_str() != PREDICATE
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let backend_weights =
        BTreeMap::from([(names.primary.clone(), weights.primary()), (names.canary, weights.canary())]);
    annotations.insert(
        BACKEND_WEIGHTS.into(),
        serde_json::to_string(&backend_weights).map_err(|source| RouterError::Json {
            kind: "Ingress".into(),
            name: canary_key(canary),
            source,
        })?,
    );
    let first = if weights.canary() == 0 { DISABLE } else { PREFER };
    annotations.insert(PREDICATE.into(), predicate_with(user.get(PREDICATE).map(String::as_str), first));
    let labels: BTreeMap<String, String> =
        ingress.labels().iter().filter(|(k, _)| copied_label(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
    Ok(Ingress {
        metadata: generated_metadata(canary, &canary_ingress_name(&ingress.name_any()), &labels, &annotations)?,
        spec: Some(spec),
        status: None,
    })
}

/// The weights a canary Ingress built by [`build_canary_ingress`] carries.
pub fn weights_of(ingress: &Ingress, names: &ServiceNames) -> Result<Weights, RouterError> {
    let bad = |reason: String| RouterError::Malformed {
        kind: "Ingress".into(),
        namespace: ingress.namespace().unwrap_or_default(),
        name: ingress.name_any(),
        reason,
    };
    let text = ingress.annotations().get(BACKEND_WEIGHTS).ok_or_else(|| bad(format!("it lacks {BACKEND_WEIGHTS}")))?;
    let parsed: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| bad(format!("{BACKEND_WEIGHTS} is not a JSON object: {e}")))?;
    let weight_of = |service: &str| super::weight_field(parsed.get(service), bad);
    Weights::new(weight_of(&names.primary)?, weight_of(&names.canary)?, false)
}

pub struct SkipperRouter {
    client: Client,
    memory: super::RouterMemory,
}

impl SkipperRouter {
    pub fn new(client: Client, memory: super::RouterMemory) -> Self {
        SkipperRouter { client, memory }
    }

    fn ingresses(&self, canary: &Canary) -> Result<Api<Ingress>, RouterError> {
        nginx::ingresses(&self.client, canary)
    }

    fn ingress_name(canary: &Canary) -> Result<String, RouterError> {
        canary.spec.ingress_ref.as_ref().map(|r| r.name.clone()).filter(|n| !n.is_empty()).ok_or_else(|| {
            RouterError::InvalidCanary {
                canary: canary_key(canary),
                reason: "provider skipper needs spec.ingressRef, the Ingress to clone".into(),
            }
        })
    }

    async fn read(&self, canary: &Canary, name: &str) -> Result<Option<Ingress>, RouterError> {
        nginx::read_ingress(&self.client, canary, name).await
    }

    async fn user_ingress(&self, canary: &Canary) -> Result<Ingress, RouterError> {
        nginx::referenced_ingress(&self.client, canary, Self::ingress_name(canary)?).await
    }

    async fn apply(&self, canary: &Canary, weights: Weights) -> Result<(), RouterError> {
        let built = build_canary_ingress(canary, &self.user_ingress(canary).await?, weights)?;
        nginx::apply_ingress(&self.client, canary, &built).await
    }
}

impl TrafficRouter for SkipperRouter {
    fn reconcile<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<(), RouterError>> {
        Box::pin(async move {
            // A missing ingressRef or Ingress fails before anything is written.
            self.user_ingress(canary).await?;
            let clone = canary_ingress_name(&Self::ingress_name(canary)?);
            services::ensure_services(&self.client, &self.memory, canary).await?;
            // Reconcile runs on every tick, also mid-release: keep the weights in place.
            let weights = match self.read(canary, &clone).await? {
                Some(existing) => weights_of(&existing, &ServiceNames::of(canary))?,
                None => Weights::primary_only(),
            };
            self.apply(canary, weights).await
        })
    }

    fn set_routes<'a>(&'a self, canary: &'a Canary, weights: Weights) -> BoxFuture<'a, Result<(), RouterError>> {
        Box::pin(self.apply(canary, weights))
    }

    fn finalize<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<(), RouterError>> {
        Box::pin(async move {
            let clone = canary_ingress_name(&Self::ingress_name(canary)?);
            match self.ingresses(canary)?.delete(&clone, &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
                Err(source) => Err(RouterError::Api {
                    verb: "delete",
                    kind: "Ingress".into(),
                    namespace: canary.namespace().unwrap_or_default(),
                    name: clone,
                    source: Box::new(source),
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::networking::v1::{
        HTTPIngressPath, HTTPIngressRuleValue, IngressBackend, IngressRule, IngressServiceBackend, IngressSpec,
        ServiceBackendPort,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use proptest::prelude::*;

    use super::super::testing::{ab_canary, any_weights, assert_manifest, canary, weights};
    use super::*;

    fn path(path: &str, service: &str) -> HTTPIngressPath {
        HTTPIngressPath {
            path: Some(path.into()),
            path_type: "Prefix".into(),
            backend: IngressBackend {
                service: Some(IngressServiceBackend {
                    name: service.into(),
                    port: Some(ServiceBackendPort { number: Some(9898), ..ServiceBackendPort::default() }),
                }),
                ..IngressBackend::default()
            },
        }
    }

    /// The user's Ingress: `/` to the apex Service, `/static` elsewhere, a predicate of its own.
    fn user_ingress() -> Ingress {
        Ingress {
            metadata: ObjectMeta {
                name: Some("podinfo".into()),
                namespace: Some("test".into()),
                labels: Some(BTreeMap::from([("app".to_string(), "podinfo".to_string())])),
                annotations: Some(BTreeMap::from([
                    ("kubernetes.io/ingress.class".to_string(), "skipper".to_string()),
                    (PREDICATE.to_string(), "Method(\"GET\")".to_string()),
                    ("kubectl.kubernetes.io/last-applied-configuration".to_string(), "{}".to_string()),
                ])),
                ..ObjectMeta::default()
            },
            spec: Some(IngressSpec {
                rules: Some(vec![IngressRule {
                    host: Some("app.example.com".into()),
                    http: Some(HTTPIngressRuleValue { paths: vec![path("/", "podinfo"), path("/static", "assets")] }),
                }]),
                ..IngressSpec::default()
            }),
            status: None,
        }
    }

    #[test]
    fn clones_match_their_manifests() {
        assert_manifest(
            &build_canary_ingress(&canary(), &user_ingress(), weights(100, 0, false)).unwrap(),
            "skipper_100_0",
        );
        assert_manifest(
            &build_canary_ingress(&canary(), &user_ingress(), weights(90, 10, false)).unwrap(),
            "skipper_90_10",
        );
    }

    #[test]
    fn the_clone_is_off_at_weight_zero_and_preferred_otherwise() {
        let off = build_canary_ingress(&canary(), &user_ingress(), weights(100, 0, false)).unwrap();
        assert_eq!(off.annotations()[PREDICATE], "False() && Method(\"GET\")");
        let on = build_canary_ingress(&canary(), &user_ingress(), weights(60, 40, false)).unwrap();
        assert_eq!(on.annotations()[PREDICATE], "Weight(100) && Method(\"GET\")");
        // Written by petrel and read back: nothing of petrel's own accumulates.
        assert_eq!(predicate_with(Some(&on.annotations()[PREDICATE]), DISABLE), "False() && Method(\"GET\")");
    }

    #[test]
    fn ab_mirroring_and_an_ingress_without_the_apex_are_refused() {
        assert!(build_canary_ingress(&ab_canary(), &user_ingress(), weights(0, 100, false)).is_err());
        assert!(build_canary_ingress(&canary(), &user_ingress(), weights(100, 0, true)).is_err());
        let mut elsewhere = user_ingress();
        elsewhere.spec.as_mut().unwrap().rules.as_mut().unwrap()[0].http.as_mut().unwrap().paths.remove(0);
        assert!(matches!(
            build_canary_ingress(&canary(), &elsewhere, weights(100, 0, false)),
            Err(RouterError::Malformed { .. })
        ));
    }

    proptest! {
        #[test]
        fn weights_round_trip(w in any_weights(false)) {
            let built = build_canary_ingress(&canary(), &user_ingress(), w).unwrap();
            let parsed: BTreeMap<String, u64> = serde_json::from_str(&built.annotations()[BACKEND_WEIGHTS]).unwrap();
            prop_assert_eq!(parsed.values().sum::<u64>(), 100);
            prop_assert_eq!(weights_of(&built, &ServiceNames::of(&canary())).unwrap(), w);
        }
    }
}
