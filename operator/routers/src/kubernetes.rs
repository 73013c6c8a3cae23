//! Provider `kubernetes`: no mesh, no weights. Blue/green by pointing the apex Service
//! at the primary pods (100/0) or at the canary pods (0/100); any split in between is
//! impossible with one Service and is an error.

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Service;
use kube::Client;

use super::services::{self, ApexTarget, PodSelector, TargetPods};
use super::{RouterError, RouterMemory, TrafficRouter, Weights, namespace_of, unsupported};
use petrel_api::Canary;

const PROVIDER: &str = "kubernetes";

/// Where the apex must point for these weights.
pub fn apex_target_for(weights: Weights) -> Result<ApexTarget, RouterError> {
    if weights.mirror() {
        return Err(unsupported(PROVIDER, "mirror traffic (a Service has no mirroring)"));
    }
    match (weights.primary(), weights.canary()) {
        (100, 0) => Ok(ApexTarget::Primary),
        (0, 100) => Ok(ApexTarget::Canary),
        _ => Err(unsupported(
            PROVIDER,
            format!("split traffic {weights}: a Service sends everything to the primary or everything to the canary"),
        )),
    }
}

/// The apex Service for these weights.
pub fn build_apex(canary: &Canary, pods: &TargetPods, weights: Weights) -> Result<Service, RouterError> {
    if !super::ab_matches(canary).is_empty() {
        return Err(unsupported(PROVIDER, "route by header or cookie (A/B testing)"));
    }
    services::build_apex_service(canary, pods, apex_target_for(weights)?)
}

/// The weights an apex Service carries.
pub fn weights_of(apex: &Service, selector: &PodSelector) -> Result<Weights, RouterError> {
    Ok(match services::apex_target_of(apex, selector)? {
        ApexTarget::Primary => Weights::primary_only(),
        ApexTarget::Canary => Weights::canary_only(),
    })
}

pub struct KubernetesRouter {
    client: Client,
    memory: RouterMemory,
}

impl KubernetesRouter {
    pub fn new(client: Client, memory: RouterMemory) -> Self {
        KubernetesRouter { client, memory }
    }
}

impl TrafficRouter for KubernetesRouter {
    fn reconcile<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<(), RouterError>> {
        Box::pin(async move {
            if !super::ab_matches(canary).is_empty() {
                return Err(unsupported(PROVIDER, "route by header or cookie (A/B testing)"));
            }
            services::ensure_services(&self.client, &self.memory, canary).await.map(|_| ())
        })
    }

    fn set_routes<'a>(&'a self, canary: &'a Canary, weights: Weights) -> BoxFuture<'a, Result<(), RouterError>> {
        Box::pin(async move {
            let pods = services::target_pods(&self.client, &self.memory, canary).await?;
            services::apply_service(&self.client, &self.memory, &build_apex(canary, &pods, weights)?).await
        })
    }

    fn finalize<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<(), RouterError>> {
        Box::pin(async move {
            namespace_of(canary)?;
            // Leaving the apex on the canary pods would strand clients once the canary is
            // scaled to zero; the primary is the safe place.
            let pods = services::target_pods(&self.client, &self.memory, canary).await?;
            if services::read_apex(&self.client, &self.memory, canary).await?.is_some() {
                let apex = services::build_apex_service(canary, &pods, ApexTarget::Primary)?;
                services::apply_service(&self.client, &self.memory, &apex).await?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testing::{ab_canary, assert_manifest, canary, weights};
    use super::*;

    fn selector() -> PodSelector {
        PodSelector { key: "app".into(), value: "podinfo".into() }
    }

    fn pods() -> TargetPods {
        TargetPods::without_ports(selector())
    }

    #[test]
    fn all_primary_and_all_canary_match_their_manifests() {
        assert_manifest(&build_apex(&canary(), &pods(), weights(100, 0, false)).unwrap(), "kubernetes_100_0");
        assert_manifest(&build_apex(&canary(), &pods(), weights(0, 100, false)).unwrap(), "kubernetes_0_100");
    }

    #[test]
    fn a_split_is_rejected() {
        let err = build_apex(&canary(), &pods(), weights(90, 10, false)).unwrap_err();
        assert!(matches!(err, RouterError::Unsupported { provider: "kubernetes", .. }), "{err}");
        assert!(err.to_string().contains("90%"), "{err}");
    }

    #[test]
    fn mirroring_and_ab_are_rejected() {
        assert!(build_apex(&canary(), &pods(), weights(100, 0, true)).is_err());
        assert!(build_apex(&ab_canary(), &pods(), weights(0, 100, false)).is_err());
    }

    proptest! {
        #[test]
        fn weights_round_trip_or_are_rejected(canary_weight in 0u8..=100, mirror in any::<bool>()) {
            let w = weights(100 - canary_weight, canary_weight, mirror);
            match build_apex(&canary(), &pods(), w) {
                Ok(apex) => {
                    prop_assert!(!mirror && (canary_weight == 0 || canary_weight == 100));
                    prop_assert_eq!(weights_of(&apex, &selector()).unwrap(), w);
                }
                Err(_) => prop_assert!(mirror || (canary_weight != 0 && canary_weight != 100)),
            }
        }
    }
}
