//! Reading an app's route object and Deployments from a cluster.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::{Client, ResourceExt};
use serde_json::Value;
use tokio::sync::Mutex;

use super::routes::{Provider, parse_route, split_from_service_selector};
use super::split::{Side, Split, effective_split};

use super::{AppCoords, Observation, RouteSource, SimError, WorkloadState};

/// API groups to try for a provider's route kind, preferred first (Traefik
/// moved from `traefik.containo.us` to `traefik.io`).
pub(super) fn route_groups(provider: Provider) -> Vec<&'static str> {
    match provider {
        Provider::Traefik => vec!["traefik.io", "traefik.containo.us"],
        other => vec![other.route_kind().group],
    }
}

/// Finds the served version of `provider`'s route kind by discovery.
/// `Ok(None)`: the cluster does not serve it (its CRD is not installed).
pub(super) async fn discover_route_resource(
    client: &Client,
    provider: Provider,
) -> Result<Option<ApiResource>, SimError> {
    let kind = provider.route_kind().kind;
    for group in route_groups(provider) {
        match kube::discovery::group(client, group).await {
            Ok(api_group) => {
                if let Some((resource, _caps)) = api_group.recommended_kind(kind) {
                    return Ok(Some(resource));
                }
            }
            Err(kube::Error::Discovery(_)) => {}
            Err(source) => {
                return Err(SimError::Kube { action: format!("discovering API group {group:?}"), source });
            }
        }
    }
    Ok(None)
}

/// A [`RouteSource`] reading the cluster: the route object petrel writes
/// for the app, and the `<target>-primary` and `<target>` Deployments with
/// their ready Pods.
pub struct KubeRouteSource {
    client: Client,
    coords: AppCoords,
    /// The route kind's resource, once discovered.
    resource: Mutex<Option<ApiResource>>,
}

impl KubeRouteSource {
    /// A source for `coords` in the cluster of `client`.
    pub fn new(client: Client, coords: AppCoords) -> Self {
        KubeRouteSource { client, coords, resource: Mutex::new(None) }
    }

    fn kube_err(action: String) -> impl FnOnce(kube::Error) -> SimError {
        move |source| SimError::Kube { action, source }
    }

    async fn observe_now(&self) -> Result<Observation, SimError> {
        if self.coords.provider == Provider::Knative {
            return self.observe_knative().await;
        }
        let ns = &self.coords.namespace;
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), ns);
        let mut found = BTreeMap::new();
        for side in Side::BOTH {
            let name = side.workload(&self.coords.target);
            let deployment =
                deployments.get_opt(&name).await.map_err(Self::kube_err(format!("reading Deployment {ns}/{name}")))?;
            if let Some(d) = deployment {
                let pods = self.ready_pods(&d).await?;
                found.insert(side, (d, pods));
            }
        }
        let route = match self.coords.provider {
            Provider::Kubernetes => self.service_split(&found).await?,
            // Without a route object, a mesh sends requests where the Service clients call
            // selects (a Canary deleted with its routes, or a provider switched away).
            _ => match self.route_split().await? {
                Some(split) => Some(split),
                None => self.service_split(&found).await?,
            },
        };
        let state = |side: Side| {
            found
                .get(&side)
                .map(|(d, pods)| WorkloadState { image: first_image(d).unwrap_or_default(), pods: pods.clone() })
        };
        Ok(Observation {
            split: effective_split(route, found.contains_key(&Side::Primary)),
            primary: state(Side::Primary),
            canary: state(Side::Canary),
        })
    }

    /// A Knative Service: the revisions its traffic block tags `primary` and `canary`
    /// are the sides, each served by the pods of its Deployment `<revision>-deployment`.
    /// Before petrel writes a traffic block, Knative sends everything to the latest ready
    /// revision, which is the primary's side.
    async fn observe_knative(&self) -> Result<Observation, SimError> {
        let ns = &self.coords.namespace;
        let Some(service) = self.route_object().await? else {
            return Ok(Observation::default());
        };
        let object = format!("Knative Service {ns}/{}", self.coords.target);
        let petrel_split = super::routes::knative_revision(&service, Side::Primary).is_some();
        let split = if petrel_split {
            parse_route(Provider::Knative, &service, &self.coords.service)
                .map_err(|source| SimError::Route { object, source })?
        } else {
            Split::all_to(Side::Primary)
        };
        let latest_ready = service.pointer("/status/latestReadyRevisionName").and_then(Value::as_str).map(String::from);
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), ns);
        let mut state = BTreeMap::new();
        for side in Side::BOTH {
            let revision = super::routes::knative_revision(&service, side)
                .or_else(|| (side == Side::Primary && !petrel_split).then(|| latest_ready.clone()).flatten());
            let Some(revision) = revision else { continue };
            let name = format!("{revision}-deployment");
            let found =
                deployments.get_opt(&name).await.map_err(Self::kube_err(format!("reading Deployment {ns}/{name}")))?;
            if let Some(d) = found {
                let pods = self.ready_pods(&d).await?;
                state.insert(side, WorkloadState { image: first_image(&d).unwrap_or_default(), pods });
            }
        }
        Ok(Observation { split, primary: state.remove(&Side::Primary), canary: state.remove(&Side::Canary) })
    }

    /// The route object petrel writes for the app, as JSON; `None` when it (or its kind)
    /// does not exist.
    async fn route_object(&self) -> Result<Option<Value>, SimError> {
        let mut cached = self.resource.lock().await;
        if cached.is_none() {
            *cached = discover_route_resource(&self.client, self.coords.provider).await?;
        }
        let Some(resource) = cached.clone() else { return Ok(None) };
        drop(cached);
        let name = self.coords.route_name();
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &self.coords.namespace, &resource);
        let object_name = format!("{} {}/{}", resource.kind, self.coords.namespace, name);
        let found = api.get_opt(&name).await.map_err(Self::kube_err(format!("reading {object_name}")))?;
        Ok(found.map(|object| serde_json::to_value(&object).unwrap_or(Value::Null)))
    }

    async fn ready_pods(&self, deployment: &Deployment) -> Result<Vec<String>, SimError> {
        let Some(selector) = label_selector(deployment) else {
            return Ok(Vec::new());
        };
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.coords.namespace);
        let list = pods.list(&ListParams::default().labels(&selector)).await.map_err(Self::kube_err(format!(
            "listing Pods of Deployment {}/{}",
            self.coords.namespace,
            deployment.name_any()
        )))?;
        let mut names: Vec<String> = list
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && pod_ready(p))
            .map(|p| p.name_any())
            .collect();
        names.sort();
        Ok(names)
    }

    async fn route_split(&self) -> Result<Option<Split>, SimError> {
        let mut cached = self.resource.lock().await;
        if cached.is_none() {
            *cached = discover_route_resource(&self.client, self.coords.provider).await?;
        }
        let Some(resource) = cached.clone() else {
            // The kind is not served, so there is no route (yet).
            return Ok(None);
        };
        drop(cached);
        let name = self.coords.route_name();
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &self.coords.namespace, &resource);
        let object_name = format!("{} {}/{}", resource.kind, self.coords.namespace, name);
        let Some(object) = api.get_opt(&name).await.map_err(Self::kube_err(format!("reading {object_name}")))? else {
            return Ok(None);
        };
        let json = serde_json::to_value(&object).unwrap_or(Value::Null);
        parse_route(self.coords.provider, &json, &self.coords.service)
            .map(Some)
            .map_err(|source| SimError::Route { object: object_name, source })
    }

    async fn service_split(
        &self,
        found: &BTreeMap<Side, (Deployment, Vec<String>)>,
    ) -> Result<Option<Split>, SimError> {
        let services: Api<Service> = Api::namespaced(self.client.clone(), &self.coords.namespace);
        let name = &self.coords.service;
        let Some(service) = services
            .get_opt(name)
            .await
            .map_err(Self::kube_err(format!("reading Service {}/{name}", self.coords.namespace)))?
        else {
            return Ok(None);
        };
        Ok(Some(split_for_service(&service, found)))
    }
}

/// The split of the `kubernetes` provider: the Service selector against the
/// Deployments' pod template labels, weighted by ready Pods.
pub(super) fn split_for_service(service: &Service, found: &BTreeMap<Side, (Deployment, Vec<String>)>) -> Split {
    let selector = service.spec.as_ref().and_then(|s| s.selector.clone()).unwrap_or_default();
    let labels: BTreeMap<Side, (BTreeMap<String, String>, u32)> =
        found.iter().map(|(side, (d, pods))| (*side, (template_labels(d), pods.len() as u32))).collect();
    let view = |side: Side| labels.get(&side).map(|(l, ready)| (l, *ready));
    split_from_service_selector(&selector, view(Side::Primary), view(Side::Canary))
}

impl RouteSource for KubeRouteSource {
    fn observe(&self) -> BoxFuture<'_, Result<Observation, SimError>> {
        Box::pin(self.observe_now())
    }
}

/// The image of a Deployment's first container: what the simulator calls
/// its version.
pub(super) fn first_image(deployment: &Deployment) -> Option<String> {
    deployment.spec.as_ref()?.template.spec.as_ref()?.containers.first()?.image.clone()
}

pub(super) fn template_labels(deployment: &Deployment) -> BTreeMap<String, String> {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

/// `matchLabels` as a label selector string; `None` when the Deployment
/// selects by expressions only (not used by petrel or its tests).
fn label_selector(deployment: &Deployment) -> Option<String> {
    let labels = label_selector_map(deployment)?;
    Some(labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
}

/// `matchLabels`; `None` when empty or absent.
pub(super) fn label_selector_map(deployment: &Deployment) -> Option<BTreeMap<String, String>> {
    let labels = deployment.spec.as_ref()?.selector.match_labels.as_ref()?;
    (!labels.is_empty()).then(|| labels.clone())
}

pub(super) fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(name: &str, image: &str) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "app", "image": image}, {"name": "sidecar", "image": "envoy"}]}
                }
            }
        }))
        .unwrap()
    }

    #[test]
    fn version_is_first_container_image_and_selector_from_match_labels() {
        let d = deployment("podinfo", "podinfo:6.0.1");
        assert_eq!(first_image(&d).as_deref(), Some("podinfo:6.0.1"));
        assert_eq!(label_selector(&d).as_deref(), Some("app=podinfo"));
    }

    #[test]
    fn service_selector_split_uses_template_labels() {
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": "podinfo"},
            "spec": {"selector": {"app": "podinfo-primary"}}
        }))
        .unwrap();
        let found = BTreeMap::from([
            (Side::Primary, (deployment("podinfo-primary", "a"), vec!["p1".to_owned()])),
            (Side::Canary, (deployment("podinfo", "b"), vec!["c1".to_owned()])),
        ]);
        assert_eq!(split_for_service(&service, &found), Split::all_to(Side::Primary));
    }

    #[test]
    fn traefik_groups_include_the_old_one() {
        assert_eq!(route_groups(Provider::Traefik), vec!["traefik.io", "traefik.containo.us"]);
        assert_eq!(route_groups(Provider::Istio), vec!["networking.istio.io"]);
    }
}
