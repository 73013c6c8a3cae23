//! The three ClusterIP Services every provider routes through (Flagger's "kubernetes
//! default router"): `<svc>` (apex, what clients call), `<svc>-primary` and `<svc>-canary`.
//!
//! Pods are told apart by one label of the target's selector (`app`, `name` or
//! `app.kubernetes.io/name`): the canary (the user's Deployment) has `value`, the primary
//! clone has `value-primary`.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Container, Service, ServicePort, ServiceSpec};
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};

use super::{
    FIELD_MANAGER, RouterError, RouterMemory, ServiceNames, canary_key, generated_metadata, ledger_key, namespace_of,
};
use petrel_api::Canary;
use petrel_api::canary::CanaryService;
use petrel_api::common::{CustomMetadata, IntOrString};

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

/// Containers whose ports are never discovered: service-mesh proxies (Flagger's list).
pub const SIDECARS: [&str; 2] = ["istio-proxy", "envoy"];

/// What the generated Services take from the target's pod template: the label that tells
/// primary pods from canary pods, and the ports `service.portDiscovery` adds beside the
/// main one.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetPods {
    pub selector: PodSelector,
    pub discovered_ports: Vec<ServicePort>,
}

impl TargetPods {
    /// Reads both from the target Deployment (its template is the canary's).
    pub fn of_deployment(canary: &Canary, deployment: &Deployment) -> Result<Self, RouterError> {
        let selector = PodSelector::of_deployment(deployment)?;
        let containers = deployment
            .spec
            .as_ref()
            .and_then(|spec| spec.template.spec.as_ref())
            .map(|pod| pod.containers.as_slice())
            .unwrap_or_default();
        Ok(TargetPods { selector, discovered_ports: discovered_ports(&canary.spec.service, containers) })
    }

    /// Pods told apart by `selector`, with no discovered port.
    #[cfg(test)]
    pub fn without_ports(selector: PodSelector) -> Self {
        TargetPods { selector, discovered_ports: Vec::new() }
    }
}

/// Flagger's port discovery (`getPorts`): every port of every container but the mesh
/// proxies ([`SIDECARS`]), except the main one (the container port `targetPort` names
/// by number or name; `port` when there is no `targetPort`). Each is named after its
/// container port, `tcp-<container>-<index>` when unnamed, TCP whatever the container
/// says, with the same number outside and in; of two with the same name the later wins.
/// None when `portDiscovery` is off.
///
/// Beyond Flagger, which would have the API server refuse the Service: a port whose name
/// or number the main port (or an earlier discovered port) already has is left out.
/// Sorted by number, then name, so the Service does not change from one read to the next.
pub fn discovered_ports(service: &CanaryService, containers: &[Container]) -> Vec<ServicePort> {
    if !service.port_discovery {
        return Vec::new();
    }
    let is_main = |port: &k8s_openapi::api::core::v1::ContainerPort| match &service.target_port {
        None => port.container_port == service.port,
        Some(IntOrString::Int(number)) => port.container_port == *number,
        Some(IntOrString::String(name)) => port.name.as_deref() == Some(name.as_str()),
    };
    let mut by_name: BTreeMap<String, i32> = BTreeMap::new();
    for container in containers.iter().filter(|c| !SIDECARS.contains(&c.name.as_str())) {
        for (index, port) in container.ports.iter().flatten().enumerate() {
            if is_main(port) {
                continue;
            }
            let name = match port.name.as_deref() {
                Some(name) if !name.is_empty() => name.to_string(),
                _ => format!("tcp-{}-{index}", container.name),
            };
            by_name.insert(name, port.container_port);
        }
    }
    let mut ports: Vec<(i32, String)> = by_name.into_iter().map(|(name, number)| (number, name)).collect();
    ports.sort();
    let main_name = service.port_name.clone().unwrap_or_else(|| "http".into());
    let mut taken_names = vec![main_name];
    let mut taken_numbers = vec![service.port];
    let mut discovered = Vec::new();
    for (number, name) in ports {
        if taken_names.contains(&name) || taken_numbers.contains(&number) {
            continue;
        }
        taken_names.push(name.clone());
        taken_numbers.push(number);
        discovered.push(ServicePort {
            name: Some(name),
            port: number,
            target_port: Some(IntOrString::Int(number)),
            protocol: Some("TCP".into()),
            ..ServicePort::default()
        });
    }
    discovered
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
    discovered_ports: &[ServicePort],
    headless: bool,
) -> Result<Service, RouterError> {
    let spec = &canary.spec.service;
    let empty = CustomMetadata::default();
    let custom = custom.unwrap_or(&empty);
    // Keys another controller owns are not in what petrel applies: server-side apply then
    // neither overwrites nor removes what that controller set.
    let custom = match &spec.unmanaged_metadata {
        Some(unmanaged) => unmanaged.strip(custom),
        None => custom.clone(),
    };
    let main_port = ServicePort {
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
            ports: Some(std::iter::once(main_port).chain(discovered_ports.iter().cloned()).collect()),
            traffic_distribution: spec.traffic_distribution.clone(),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

/// The apex Service `<svc>`, pointing at the primary or (blue/green with provider
/// `kubernetes`) the canary pods.
pub fn build_apex_service(canary: &Canary, pods: &TargetPods, target: ApexTarget) -> Result<Service, RouterError> {
    let labels = match target {
        ApexTarget::Primary => pods.selector.primary_labels(),
        ApexTarget::Canary => pods.selector.canary_labels(),
    };
    let name = ServiceNames::of(canary).apex;
    // The apex is what clients resolve; it is never headless so it keeps one stable address.
    service(canary, &name, canary.spec.service.apex.as_ref(), labels, &pods.discovered_ports, false)
}

/// `<svc>-primary`, selecting the primary pods.
pub fn build_primary_service(canary: &Canary, pods: &TargetPods) -> Result<Service, RouterError> {
    let spec = &canary.spec.service;
    let name = ServiceNames::of(canary).primary;
    let labels = pods.selector.primary_labels();
    service(canary, &name, spec.primary.as_ref(), labels, &pods.discovered_ports, spec.headless)
}

/// `<svc>-canary`, selecting the canary pods.
pub fn build_canary_service(canary: &Canary, pods: &TargetPods) -> Result<Service, RouterError> {
    let spec = &canary.spec.service;
    let name = ServiceNames::of(canary).canary;
    let labels = pods.selector.canary_labels();
    service(canary, &name, spec.canary.as_ref(), labels, &pods.discovered_ports, spec.headless)
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

/// Reads what the generated Services take from the target (see [`TargetPods`]): every
/// writer of a generated Service builds it from this, so none drops a discovered port.
/// A Deployment comes from the cache of `memory` (see [`crate::cache`]).
pub async fn target_pods(client: &Client, memory: &RouterMemory, canary: &Canary) -> Result<TargetPods, RouterError> {
    let namespace = namespace_of(canary)?;
    let name = &canary.spec.target_ref.name;
    let read_error = |kind: &str, source: kube::Error| RouterError::Api {
        verb: "read",
        kind: kind.into(),
        namespace: namespace.clone(),
        name: name.clone(),
        source: Box::new(source),
    };
    let not_found = |kind: &str| RouterError::NotFound {
        kind: kind.into(),
        namespace: namespace.clone(),
        name: name.clone(),
        reason: format!("it is the targetRef of Canary {}", canary_key(canary)),
    };
    if canary.spec.target_ref.is_daemon_set() {
        let daemon_sets: Api<DaemonSet> = Api::namespaced(client.clone(), &namespace);
        let daemon_set = daemon_sets
            .get_opt(name)
            .await
            .map_err(|source| read_error("DaemonSet", source))?
            .ok_or_else(|| not_found("DaemonSet"))?;
        let empty = BTreeMap::new();
        let match_labels = daemon_set.spec.as_ref().and_then(|s| s.selector.match_labels.as_ref()).unwrap_or(&empty);
        let selector = PodSelector::from_match_labels(name, match_labels).map_err(|err| match err {
            RouterError::Malformed { name, reason, .. } => {
                RouterError::Malformed { kind: "DaemonSet".into(), namespace: namespace.clone(), name, reason }
            }
            other => other,
        })?;
        let containers = daemon_set
            .spec
            .as_ref()
            .and_then(|spec| spec.template.spec.as_ref())
            .map(|pod| pod.containers.as_slice())
            .unwrap_or_default();
        return Ok(TargetPods { selector, discovered_ports: discovered_ports(&canary.spec.service, containers) });
    }
    let deployment = memory
        .deployments
        .get(client, &namespace, name)
        .await
        .map_err(|source| read_error("Deployment", source))?
        .ok_or_else(|| not_found("Deployment"))?;
    TargetPods::of_deployment(canary, &deployment)
}

/// For `.modify` on the watch that fills [`RouterMemory::services`]: what any reader of
/// that cache uses, nothing more. The reads are [`read_apex`] (whether the apex exists and
/// its selector, [`apex_target_of`]) and [`RouterMemory::observed_service`] (each
/// Service's resourceVersion); kube-runtime maps a change back to its Canary by the owner
/// references. Ports, cluster IPs, labels and status are never read from the cache:
/// writes go through the ledger, which compares what petrel last wrote. At 1,000 Canaries
/// the cache holds 3,000 Services; this keeps about 1.9 KB of each instead of 3.2 KB
/// (issue 15). Nothing is written back from the cache, so what goes is only forgotten.
pub fn keep_what_is_read_of_a_generated_service(service: &mut Service) {
    let selector = service.spec.take().and_then(|spec| spec.selector);
    *service = Service {
        metadata: crate::cache::identifying_metadata(std::mem::take(&mut service.metadata)),
        spec: selector.map(|selector| ServiceSpec { selector: Some(selector), ..Default::default() }),
        status: None,
    };
}

pub(crate) async fn read_apex(
    client: &Client,
    memory: &RouterMemory,
    canary: &Canary,
) -> Result<Option<Arc<Service>>, RouterError> {
    let namespace = namespace_of(canary)?;
    let name = ServiceNames::of(canary).apex;
    memory.services.get(client, &namespace, &name).await.map_err(|source| RouterError::Api {
        verb: "read",
        kind: "Service".into(),
        namespace,
        name,
        source: Box::new(source),
    })
}

/// Applies a Service unless the ledger of `memory` shows petrel already wrote exactly
/// this and nobody changed it since.
pub async fn apply_service(client: &Client, memory: &RouterMemory, service: &Service) -> Result<(), RouterError> {
    let namespace = service.namespace().unwrap_or_default();
    let name = service.name_any();
    let manifest = serde_json::to_value(service).map_err(|source| RouterError::Json {
        kind: "Service".into(),
        name: name.clone(),
        source,
    })?;
    let key = ledger_key("Service", &namespace, &name);
    let observed = memory.observed_service(&namespace, &name);
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    let write = async {
        match services.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(service)).await {
            Ok(applied) => {
                memory.services.wrote(&applied);
                Ok(applied.metadata.resource_version)
            }
            Err(source) => Err(RouterError::Api {
                verb: "apply",
                kind: "Service".into(),
                namespace: namespace.clone(),
                name: name.clone(),
                source: Box::new(source),
            }),
        }
    };
    memory.ledger.apply(key, &manifest, &observed, write).await
}

/// Creates or updates the three Services (only those that differ from what petrel last
/// wrote, see [`apply_service`]). The apex keeps pointing where it points (see
/// [`apex_target_to_keep`]); a new apex points at the primary.
pub async fn ensure_services(
    client: &Client,
    memory: &RouterMemory,
    canary: &Canary,
) -> Result<PodSelector, RouterError> {
    let pods = target_pods(client, memory, canary).await?;
    let existing_apex = read_apex(client, memory, canary).await?;
    let apex_target = apex_target_to_keep(existing_apex.as_deref(), &pods.selector);
    apply_service(client, memory, &build_primary_service(canary, &pods)?).await?;
    apply_service(client, memory, &build_canary_service(canary, &pods)?).await?;
    apply_service(client, memory, &build_apex_service(canary, &pods, apex_target)?).await?;
    Ok(pods.selector)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_manifest, canary};
    use super::*;

    fn app_selector() -> PodSelector {
        PodSelector { key: "app".into(), value: "podinfo".into() }
    }

    fn app_pods() -> TargetPods {
        TargetPods::without_ports(app_selector())
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

    /// The cache keeps a Service pruned (see [`keep_what_is_read_of_a_generated_service`]):
    /// every answer read from it stays what the whole Service gives.
    #[test]
    fn a_pruned_service_answers_every_cache_read_as_the_whole_one() {
        let canary = canary();
        let pods = app_pods();
        for target in [ApexTarget::Primary, ApexTarget::Canary] {
            let mut whole = build_apex_service(&canary, &pods, target).unwrap();
            // What the API server adds.
            whole.metadata.resource_version = Some("4711".into());
            whole.metadata.uid = Some("0b9f3c1e-7d2a-4f4e-9c1a-3e5b6d7f8a90".into());
            let spec = whole.spec.as_mut().unwrap();
            spec.cluster_ip = Some("10.96.0.12".into());
            spec.cluster_ips = Some(vec!["10.96.0.12".into()]);
            spec.ip_families = Some(vec!["IPv4".into()]);
            whole.status = Some(Default::default());
            let mut pruned = whole.clone();
            keep_what_is_read_of_a_generated_service(&mut pruned);

            assert_eq!(apex_target_to_keep(Some(&pruned), &pods.selector), target);
            assert_eq!(
                apex_target_to_keep(Some(&pruned), &pods.selector),
                apex_target_to_keep(Some(&whole), &pods.selector)
            );
            assert_eq!(pruned.metadata.resource_version, whole.metadata.resource_version);
            assert_eq!((pruned.name_any(), pruned.namespace()), (whole.name_any(), whole.namespace()));
            assert!(whole.metadata.owner_references.as_ref().is_some_and(|owners| !owners.is_empty()));
            assert_eq!(
                pruned.metadata.owner_references, whole.metadata.owner_references,
                "kube-runtime maps a change to its Canary by these"
            );
            assert_eq!(pruned.metadata.uid, whole.metadata.uid);
            let (pruned_json, whole_json) =
                (serde_json::to_string(&pruned).unwrap(), serde_json::to_string(&whole).unwrap());
            assert!(!pruned_json.contains("9898") && !pruned_json.contains("10.96.0.12"), "{pruned_json}");
            assert!(pruned_json.len() < whole_json.len() / 2 + 200, "{pruned_json}");
        }
        let mut without_spec = Service::default();
        keep_what_is_read_of_a_generated_service(&mut without_spec);
        assert_eq!(without_spec.spec, None);
    }

    #[test]
    fn the_three_services_match_their_manifests() {
        let canary = canary();
        let pods = app_pods();
        assert_manifest(&build_apex_service(&canary, &pods, ApexTarget::Primary).unwrap(), "service_apex");
        assert_manifest(&build_primary_service(&canary, &pods).unwrap(), "service_primary");
        assert_manifest(&build_canary_service(&canary, &pods).unwrap(), "service_canary");
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
        let pods = TargetPods::without_ports(PodSelector { key: "app.kubernetes.io/name".into(), value: "web".into() });
        assert_manifest(&build_primary_service(&canary, &pods).unwrap(), "service_primary_options");
        // The apex stays addressable even when the others are headless.
        let apex = build_apex_service(&canary, &pods, ApexTarget::Canary).unwrap();
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
        let apex = build_apex_service(&canary, &app_pods(), ApexTarget::Primary).unwrap();
        assert_eq!(apex.labels().get(super::super::MANAGED_BY_LABEL).map(String::as_str), Some("petrel"));
    }

    #[test]
    fn apex_target_reads_back_what_was_built() {
        let canary = canary();
        let selector = app_selector();
        for target in [ApexTarget::Primary, ApexTarget::Canary] {
            let apex = build_apex_service(&canary, &app_pods(), target).unwrap();
            assert_eq!(apex_target_of(&apex, &selector).unwrap(), target);
            assert_eq!(apex_target_to_keep(Some(&apex), &selector), target);
        }
    }

    #[test]
    fn a_foreign_apex_selector_is_reset_to_the_primary() {
        let canary = canary();
        let selector = app_selector();
        let mut apex = build_apex_service(&canary, &app_pods(), ApexTarget::Canary).unwrap();
        apex.spec.as_mut().unwrap().selector = Some(BTreeMap::from([("app".to_string(), "other".to_string())]));
        assert!(apex_target_of(&apex, &selector).is_err());
        assert_eq!(apex_target_to_keep(Some(&apex), &selector), ApexTarget::Primary);
        assert_eq!(apex_target_to_keep(None, &selector), ApexTarget::Primary);
    }

    fn container(name: &str, ports: &[(Option<&str>, i32, &str)]) -> Container {
        Container {
            name: name.into(),
            ports: Some(
                ports
                    .iter()
                    .map(|(port_name, number, protocol)| k8s_openapi::api::core::v1::ContainerPort {
                        name: port_name.map(str::to_string),
                        container_port: *number,
                        protocol: Some(protocol.to_string()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Container::default()
        }
    }

    fn names_and_numbers(ports: &[ServicePort]) -> Vec<(String, i32)> {
        ports.iter().map(|p| (p.name.clone().unwrap_or_default(), p.port)).collect()
    }

    /// A podinfo-like pod: the app (http 9898, an unnamed gRPC port, metrics over UDP),
    /// a log shipper with an unnamed port, and an Istio proxy.
    fn pod() -> Vec<Container> {
        vec![
            container("podinfo", &[(Some("http"), 9898, "TCP"), (None, 9999, "TCP"), (Some("metrics"), 9797, "UDP")]),
            container("shipper", &[(None, 2020, "TCP")]),
            container("istio-proxy", &[(Some("http-envoy-prom"), 15090, "TCP")]),
        ]
    }

    #[test]
    fn port_discovery_adds_every_container_port_as_flagger_names_them() {
        let mut canary = canary();
        assert!(discovered_ports(&canary.spec.service, &pod()).is_empty(), "off unless portDiscovery is set");
        canary.spec.service.port_discovery = true;
        let ports = discovered_ports(&canary.spec.service, &pod());
        // The main port (9898) and the sidecar's are skipped; unnamed ports are
        // tcp-<container>-<index>; every port is TCP with targetPort = port.
        assert_eq!(
            names_and_numbers(&ports),
            vec![("tcp-shipper-0".into(), 2020), ("metrics".into(), 9797), ("tcp-podinfo-1".into(), 9999)]
        );
        assert!(ports.iter().all(|p| p.protocol.as_deref() == Some("TCP")));
        assert!(ports.iter().all(|p| p.target_port == Some(IntOrString::Int(p.port))));

        let pods = TargetPods { selector: app_selector(), discovered_ports: ports };
        assert_manifest(&build_apex_service(&canary, &pods, ApexTarget::Primary).unwrap(), "service_apex_ports");
        for service in [build_primary_service(&canary, &pods).unwrap(), build_canary_service(&canary, &pods).unwrap()] {
            let all = names_and_numbers(service.spec.as_ref().unwrap().ports.as_ref().unwrap());
            assert_eq!(all.len(), 4, "{all:?}");
            assert_eq!(all[0], ("http".into(), 9898), "the main port comes first");
        }
    }

    #[test]
    fn port_discovery_skips_the_target_port_by_number_or_name() {
        let mut canary = canary();
        canary.spec.service.port_discovery = true;
        canary.spec.service.port = 80;
        canary.spec.service.target_port = Some(IntOrString::Int(9999));
        let by_number = names_and_numbers(&discovered_ports(&canary.spec.service, &pod()));
        // 9898 is no longer the main port, but its name `http` is the main port's: a second
        // port of that name would be refused.
        assert_eq!(by_number, vec![("tcp-shipper-0".into(), 2020), ("metrics".into(), 9797)]);
        canary.spec.service.target_port = Some(IntOrString::String("metrics".into()));
        canary.spec.service.port_name = Some("web".into());
        let by_name = names_and_numbers(&discovered_ports(&canary.spec.service, &pod()));
        assert_eq!(
            by_name,
            vec![("tcp-shipper-0".into(), 2020), ("http".into(), 9898), ("tcp-podinfo-1".into(), 9999)]
        );
    }

    #[test]
    fn discovered_ports_never_clash_with_the_main_port() {
        let mut canary = canary();
        canary.spec.service.port_discovery = true;
        canary.spec.service.port = 80;
        canary.spec.service.target_port = Some(IntOrString::Int(8080));
        let containers = vec![container("app", &[(Some("admin"), 80, "TCP"), (Some("web"), 8080, "TCP")])];
        assert!(discovered_ports(&canary.spec.service, &containers).is_empty());
    }

    #[test]
    fn unmanaged_keys_are_left_out_of_what_petrel_applies() {
        use petrel_api::common::UnmanagedMetadata;
        let mut canary = canary();
        let custom = CustomMetadata {
            labels: BTreeMap::from([("team".to_string(), "a".to_string()), ("tier".to_string(), "web".to_string())]),
            annotations: BTreeMap::from([
                ("external-dns.alpha.kubernetes.io/hostname".to_string(), "a.example.com".to_string()),
                ("note".to_string(), "kept".to_string()),
            ]),
        };
        canary.spec.service.apex = Some(custom.clone());
        canary.spec.service.primary = Some(custom.clone());
        canary.spec.service.canary = Some(custom);
        canary.spec.service.unmanaged_metadata = Some(UnmanagedMetadata {
            labels: vec!["tier".into()],
            annotations: vec!["external-dns.alpha.kubernetes.io/hostname".into()],
        });
        let pods = app_pods();
        for service in [
            build_apex_service(&canary, &pods, ApexTarget::Primary).unwrap(),
            build_primary_service(&canary, &pods).unwrap(),
            build_canary_service(&canary, &pods).unwrap(),
        ] {
            let name = service.name_any();
            assert!(!service.labels().contains_key("tier"), "{name}");
            assert!(!service.annotations().contains_key("external-dns.alpha.kubernetes.io/hostname"), "{name}");
            // Keys not declared unmanaged are managed as before, petrel's own included.
            assert_eq!(service.labels().get("team").map(String::as_str), Some("a"), "{name}");
            assert_eq!(service.annotations().get("note").map(String::as_str), Some("kept"), "{name}");
            assert_eq!(service.labels().get(super::super::MANAGED_BY_LABEL).map(String::as_str), Some("petrel"));
        }
    }

    #[test]
    fn each_service_gets_its_own_metadata() {
        let mut canary = canary();
        let one = |key: &str| CustomMetadata {
            labels: BTreeMap::from([(key.to_string(), "yes".to_string())]),
            annotations: BTreeMap::from([(key.to_string(), "yes".to_string())]),
        };
        canary.spec.service.apex = Some(one("apex"));
        canary.spec.service.primary = Some(one("primary"));
        canary.spec.service.canary = Some(one("canary"));
        let pods = app_pods();
        let built = [
            ("apex", build_apex_service(&canary, &pods, ApexTarget::Primary).unwrap()),
            ("primary", build_primary_service(&canary, &pods).unwrap()),
            ("canary", build_canary_service(&canary, &pods).unwrap()),
        ];
        for (which, service) in &built {
            for key in ["apex", "primary", "canary"] {
                let expected = (key == *which).then_some("yes");
                assert_eq!(service.labels().get(key).map(String::as_str), expected, "{which}: label {key}");
                assert_eq!(service.annotations().get(key).map(String::as_str), expected, "{which}: annotation {key}");
            }
        }
    }
}
