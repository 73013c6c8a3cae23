//! The three ClusterIP Services every provider routes through (Flagger's "kubernetes
//! default router"): `<svc>` (apex, what clients call), `<svc>-primary` and `<svc>-canary`.
//!
//! Pods are told apart by one label of the target's selector (`app`, `name` or
//! `app.kubernetes.io/name`): the canary (the user's Deployment) has `value`, the primary
//! clone has `value-primary`.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};

use super::{
    FIELD_MANAGER, RouterError, RouterMemory, ServiceNames, canary_key, generated_metadata, ledger_key, namespace_of,
};
use crate::api::Canary;
use crate::api::common::{CustomMetadata, IntOrString};

/// Selector label keys, in the order they are looked for in the target's selector.
pub const SELECTOR_LABEL_KEYS: [&str; 3] = ["app", "name", "app.kubernetes.io/name"];

/// The label that tells primary pods from canary pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSelector {
    pub key: String,
    /// The value on the canary (target) pods; primary pods carry `<value>-primary`.
    pub value: String,
}

impl PodSelector {
    /// Picks the first of [`SELECTOR_LABEL_KEYS`] present in the target's `matchLabels`.
    pub fn from_match_labels(target: &str, match_labels: &BTreeMap<String, String>) -> Result<Self, RouterError> {
        SELECTOR_LABEL_KEYS
            .iter()
            .find_map(|key| {
                match_labels.get(*key).map(|value| PodSelector { key: key.to_string(), value: value.clone() })
            })
            .ok_or_else(|| RouterError::Malformed {
                kind: "Deployment".into(),
                namespace: String::new(),
                name: target.to_string(),
                reason: format!(
                    "spec.selector.matchLabels has none of the labels {} that tell primary pods from canary pods",
                    SELECTOR_LABEL_KEYS.join(", ")
                ),
            })
    }

    /// Reads the selector of the target Deployment.
    pub fn of_deployment(deployment: &Deployment) -> Result<Self, RouterError> {
        let empty = BTreeMap::new();
        let match_labels =
            deployment.spec.as_ref().and_then(|spec| spec.selector.match_labels.as_ref()).unwrap_or(&empty);
        PodSelector::from_match_labels(&deployment.name_any(), match_labels).map_err(|err| match err {
            RouterError::Malformed { kind, name, reason, .. } => {
                RouterError::Malformed { kind, namespace: deployment.namespace().unwrap_or_default(), name, reason }
            }
            other => other,
        })
    }

    pub fn canary_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(self.key.clone(), self.value.clone())])
    }

    pub fn primary_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(self.key.clone(), format!("{}-primary", self.value))])
    }
}

/// Which pods the apex Service sends traffic to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApexTarget {
    Primary,
    Canary,
}

fn service(
    canary: &Canary,
    name: &str,
    custom: Option<&CustomMetadata>,
    selector: BTreeMap<String, String>,
    headless: bool,
) -> Result<Service, RouterError> {
    let spec = &canary.spec.service;
    let empty = CustomMetadata::default();
    let custom = custom.unwrap_or(&empty);
    let port = ServicePort {
        name: Some(spec.port_name.clone().unwrap_or_else(|| "http".into())),
        port: spec.port,
        target_port: Some(spec.target_port.clone().unwrap_or(IntOrString::Int(spec.port))),
        protocol: Some("TCP".into()),
        app_protocol: spec.app_protocol.clone(),
        ..ServicePort::default()
    };
    Ok(Service {
        metadata: generated_metadata(canary, name, &custom.labels, &custom.annotations)?,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: headless.then(|| "None".to_string()),
            selector: Some(selector),
            ports: Some(vec![port]),
            traffic_distribution: spec.traffic_distribution.clone(),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

/// The apex Service `<svc>`, pointing at the primary or (blue/green with provider
/// `kubernetes`) the canary pods.
pub fn build_apex_service(canary: &Canary, selector: &PodSelector, target: ApexTarget) -> Result<Service, RouterError> {
    let labels = match target {
        ApexTarget::Primary => selector.primary_labels(),
        ApexTarget::Canary => selector.canary_labels(),
    };
    // The apex is what clients resolve; it is never headless so it keeps one stable address.
    service(canary, &ServiceNames::of(canary).apex, canary.spec.service.apex.as_ref(), labels, false)
}

/// `<svc>-primary`, selecting the primary pods.
pub fn build_primary_service(canary: &Canary, selector: &PodSelector) -> Result<Service, RouterError> {
    let spec = &canary.spec.service;
    service(canary, &ServiceNames::of(canary).primary, spec.primary.as_ref(), selector.primary_labels(), spec.headless)
}

/// `<svc>-canary`, selecting the canary pods.
pub fn build_canary_service(canary: &Canary, selector: &PodSelector) -> Result<Service, RouterError> {
    let spec = &canary.spec.service;
    service(canary, &ServiceNames::of(canary).canary, spec.canary.as_ref(), selector.canary_labels(), spec.headless)
}

/// Which pods an existing apex Service selects.
pub fn apex_target_of(apex: &Service, selector: &PodSelector) -> Result<ApexTarget, RouterError> {
    let current = apex.spec.as_ref().and_then(|spec| spec.selector.as_ref());
    match current {
        Some(current) if *current == selector.primary_labels() => Ok(ApexTarget::Primary),
        Some(current) if *current == selector.canary_labels() => Ok(ApexTarget::Canary),
        other => Err(RouterError::Malformed {
            kind: "Service".into(),
            namespace: apex.namespace().unwrap_or_default(),
            name: apex.name_any(),
            reason: format!(
                "selector {other:?} selects neither the primary ({:?}) nor the canary ({:?}) pods",
                selector.primary_labels(),
                selector.canary_labels()
            ),
        }),
    }
}

/// Where the apex should point on reconcile: where it points now if that is one of the
/// two valid places (a blue/green switch must survive reconciles), the primary otherwise.
pub fn apex_target_to_keep(existing: Option<&Service>, selector: &PodSelector) -> ApexTarget {
    existing.and_then(|apex| apex_target_of(apex, selector).ok()).unwrap_or(ApexTarget::Primary)
}

// ---------------------------------------------------------------------------------------
// I/O

/// Reads the target's pod selector (a Deployment's, or a DaemonSet's).
pub async fn target_selector(client: &Client, canary: &Canary) -> Result<PodSelector, RouterError> {
    let namespace = namespace_of(canary)?;
    let name = &canary.spec.target_ref.name;
    if canary.spec.target_ref.is_daemon_set() {
        let daemon_sets: Api<DaemonSet> = Api::namespaced(client.clone(), &namespace);
        let daemon_set = daemon_sets
            .get_opt(name)
            .await
            .map_err(|source| RouterError::Api {
                verb: "read",
                kind: "DaemonSet".into(),
                namespace: namespace.clone(),
                name: name.clone(),
                source: Box::new(source),
            })?
            .ok_or_else(|| RouterError::NotFound {
                kind: "DaemonSet".into(),
                namespace: namespace.clone(),
                name: name.clone(),
                reason: format!("it is the targetRef of Canary {}", canary_key(canary)),
            })?;
        let empty = BTreeMap::new();
        let match_labels = daemon_set.spec.as_ref().and_then(|s| s.selector.match_labels.as_ref()).unwrap_or(&empty);
        return PodSelector::from_match_labels(name, match_labels).map_err(|err| match err {
            RouterError::Malformed { name, reason, .. } => {
                RouterError::Malformed { kind: "DaemonSet".into(), namespace: namespace.clone(), name, reason }
            }
            other => other,
        });
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let deployment = deployments
        .get_opt(name)
        .await
        .map_err(|source| RouterError::Api {
            verb: "read",
            kind: "Deployment".into(),
            namespace: namespace.clone(),
            name: name.clone(),
            source: Box::new(source),
        })?
        .ok_or_else(|| RouterError::NotFound {
            kind: "Deployment".into(),
            namespace: namespace.clone(),
            name: name.clone(),
            reason: format!("it is the targetRef of Canary {}", canary_key(canary)),
        })?;
    PodSelector::of_deployment(&deployment)
}

pub(crate) async fn read_apex(client: &Client, canary: &Canary) -> Result<Option<Service>, RouterError> {
    let namespace = namespace_of(canary)?;
    let name = ServiceNames::of(canary).apex;
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    services.get_opt(&name).await.map_err(|source| RouterError::Api {
        verb: "read",
        kind: "Service".into(),
        namespace,
        name,
        source: Box::new(source),
    })
}

/// Applies a Service unless the ledger of `memory` shows petrel already wrote exactly
/// this and nobody changed it since.
pub(crate) async fn apply_service(
    client: &Client,
    memory: &RouterMemory,
    service: &Service,
) -> Result<(), RouterError> {
    let namespace = service.namespace().unwrap_or_default();
    let name = service.name_any();
    let manifest = serde_json::to_value(service).map_err(|source| RouterError::Json {
        kind: "Service".into(),
        name: name.clone(),
        source,
    })?;
    let key = ledger_key("Service", &namespace, &name);
    if memory.ledger.unchanged(&key, &manifest, &memory.observed_service(&namespace, &name)) {
        return Ok(());
    }
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    match services.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(service)).await {
        Ok(applied) => {
            memory.ledger.record(key, &manifest, applied.metadata.resource_version);
            Ok(())
        }
        Err(source) => {
            memory.ledger.forget(&key);
            Err(RouterError::Api { verb: "apply", kind: "Service".into(), namespace, name, source: Box::new(source) })
        }
    }
}

/// Creates or updates the three Services (only those that differ from what petrel last
/// wrote, see [`apply_service`]). The apex keeps pointing where it points (see
/// [`apex_target_to_keep`]); a new apex points at the primary.
pub async fn ensure_services(
    client: &Client,
    memory: &RouterMemory,
    canary: &Canary,
) -> Result<PodSelector, RouterError> {
    let selector = target_selector(client, canary).await?;
    let existing_apex = read_apex(client, canary).await?;
    let apex_target = apex_target_to_keep(existing_apex.as_ref(), &selector);
    apply_service(client, memory, &build_primary_service(canary, &selector)?).await?;
    apply_service(client, memory, &build_canary_service(canary, &selector)?).await?;
    apply_service(client, memory, &build_apex_service(canary, &selector, apex_target)?).await?;
    Ok(selector)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_manifest, canary};
    use super::*;

    fn app_selector() -> PodSelector {
        PodSelector { key: "app".into(), value: "podinfo".into() }
    }

    #[test]
    fn selector_prefers_app_then_name_then_kubernetes_name() {
        let labels = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let picked = PodSelector::from_match_labels("d", &labels(&[("app.kubernetes.io/name", "x"), ("name", "y")]));
        assert_eq!(picked.unwrap(), PodSelector { key: "name".into(), value: "y".into() });
        let picked = PodSelector::from_match_labels("d", &labels(&[("name", "y"), ("app", "z")]));
        assert_eq!(picked.unwrap(), PodSelector { key: "app".into(), value: "z".into() });
        let picked = PodSelector::from_match_labels("d", &labels(&[("app.kubernetes.io/name", "x"), ("tier", "web")]));
        assert_eq!(picked.unwrap(), PodSelector { key: "app.kubernetes.io/name".into(), value: "x".into() });
        let missing = PodSelector::from_match_labels("d", &labels(&[("tier", "web")]));
        assert!(matches!(missing, Err(RouterError::Malformed { .. })));
    }

    #[test]
    fn the_three_services_match_their_manifests() {
        let canary = canary();
        let selector = app_selector();
        assert_manifest(&build_apex_service(&canary, &selector, ApexTarget::Primary).unwrap(), "service_apex.yaml");
        assert_manifest(&build_primary_service(&canary, &selector).unwrap(), "service_primary.yaml");
        assert_manifest(&build_canary_service(&canary, &selector).unwrap(), "service_canary.yaml");
    }

    #[test]
    fn service_options_reach_the_services() {
        let mut canary = canary();
        canary.spec.service.name = Some("web".into());
        canary.spec.service.port_name = Some("grpc".into());
        canary.spec.service.target_port = Some(IntOrString::String("grpc-port".into()));
        canary.spec.service.app_protocol = Some("kubernetes.io/h2c".into());
        canary.spec.service.headless = true;
        canary.spec.service.primary = Some(CustomMetadata {
            labels: BTreeMap::from([("team".to_string(), "payments".to_string())]),
            annotations: BTreeMap::from([("note".to_string(), "stable".to_string())]),
        });
        let selector = PodSelector { key: "app.kubernetes.io/name".into(), value: "web".into() };
        assert_manifest(&build_primary_service(&canary, &selector).unwrap(), "service_primary_options.yaml");
        // The apex stays addressable even when the others are headless.
        let apex = build_apex_service(&canary, &selector, ApexTarget::Canary).unwrap();
        assert_eq!(apex.spec.as_ref().unwrap().cluster_ip, None);
        assert_eq!(apex.metadata.name.as_deref(), Some("web"));
    }

    #[test]
    fn custom_metadata_never_overrides_petrels_own() {
        let mut canary = canary();
        canary.spec.service.apex = Some(CustomMetadata {
            labels: BTreeMap::from([(super::super::MANAGED_BY_LABEL.to_string(), "helm".to_string())]),
            annotations: BTreeMap::new(),
        });
        let apex = build_apex_service(&canary, &app_selector(), ApexTarget::Primary).unwrap();
        assert_eq!(apex.labels().get(super::super::MANAGED_BY_LABEL).map(String::as_str), Some("petrel"));
    }

    #[test]
    fn apex_target_reads_back_what_was_built() {
        let canary = canary();
        let selector = app_selector();
        for target in [ApexTarget::Primary, ApexTarget::Canary] {
            let apex = build_apex_service(&canary, &selector, target).unwrap();
            assert_eq!(apex_target_of(&apex, &selector).unwrap(), target);
            assert_eq!(apex_target_to_keep(Some(&apex), &selector), target);
        }
    }

    #[test]
    fn a_foreign_apex_selector_is_reset_to_the_primary() {
        let canary = canary();
        let selector = app_selector();
        let mut apex = build_apex_service(&canary, &selector, ApexTarget::Canary).unwrap();
        apex.spec.as_mut().unwrap().selector = Some(BTreeMap::from([("app".to_string(), "other".to_string())]));
        assert!(apex_target_of(&apex, &selector).is_err());
        assert_eq!(apex_target_to_keep(Some(&apex), &selector), ApexTarget::Primary);
        assert_eq!(apex_target_to_keep(None, &selector), ApexTarget::Primary);
    }
}
