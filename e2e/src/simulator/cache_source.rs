//! A [`RouteSource`] for many apps in one namespace that reads watch caches instead of
//! the API server: one watch each of the namespace's Deployments, Pods and route objects
//! (or Services, for provider `kubernetes`) serves every app, so simulating 1,000 apps
//! costs the API server three watches rather than thousands of GETs a second
//! ([`super::KubeRouteSource`] reads per app per tick, fine for a few apps).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::Value;
use tokio::task::JoinHandle;

use super::kube_source::{discover_route_resource, first_image, label_selector_map, pod_ready, split_for_service};
use super::routes::{Provider, parse_route};
use super::split::{Side, effective_split};
use super::{AppCoords, Observation, RouteSource, SimError, WorkloadState};

/// How long a grouping of the Pods by label serves every app before it is rebuilt.
const POD_INDEX_TTL: Duration = Duration::from_millis(250);

/// Names of ready Pods by their `app` label.
type PodIndex = Arc<HashMap<String, Vec<String>>>;

/// Watch caches of one namespace, shared by the apps simulated in it.
pub struct NamespaceCache {
    namespace: String,
    deployments: Store<Deployment>,
    pods: Store<Pod>,
    services: Store<Service>,
    routes: Option<(Store<DynamicObject>, ApiResource)>,
    /// Ready Pods by their `app` label, rebuilt at most every [`POD_INDEX_TTL`].
    pod_index: Mutex<Option<(Instant, PodIndex)>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for NamespaceCache {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn keep<K>(tasks: &mut Vec<JoinHandle<()>>, api: Api<K>, writer: reflector::store::Writer<K>)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()).default_backoff());
    tasks.push(tokio::spawn(stream.for_each(|_| futures::future::ready(()))));
}

impl NamespaceCache {
    /// Starts the watches of `namespace` for apps of `provider` and waits until they
    /// have listed once.
    pub async fn start(client: Client, namespace: &str, provider: Provider) -> Result<Arc<Self>, SimError> {
        let mut tasks = Vec::new();
        let (deployments, writer) = reflector::store();
        keep(&mut tasks, Api::<Deployment>::namespaced(client.clone(), namespace), writer);
        let (pods, writer) = reflector::store();
        keep(&mut tasks, Api::<Pod>::namespaced(client.clone(), namespace), writer);
        let (services, writer) = reflector::store();
        keep(&mut tasks, Api::<Service>::namespaced(client.clone(), namespace), writer);
        let routes = match provider {
            Provider::Kubernetes => None,
            _ => {
                let resource = discover_route_resource(&client, provider).await?.ok_or_else(|| {
                    let kind = provider.route_kind();
                    SimError::KindNotServed { group: kind.group.into(), kind: kind.kind.into() }
                })?;
                let writer = reflector::store::Writer::<DynamicObject>::new(resource.clone());
                let store = writer.as_reader();
                let api = Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &resource);
                let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()).default_backoff());
                tasks.push(tokio::spawn(stream.for_each(|_| futures::future::ready(()))));
                Some((store, resource))
            }
        };
        let cache = NamespaceCache {
            namespace: namespace.to_owned(),
            deployments,
            pods,
            services,
            routes,
            pod_index: Mutex::new(None),
            tasks,
        };
        let waited = async {
            cache.deployments.wait_until_ready().await.ok();
            cache.pods.wait_until_ready().await.ok();
            cache.services.wait_until_ready().await.ok();
            if let Some((routes, _)) = &cache.routes {
                routes.wait_until_ready().await.ok();
            }
        };
        let timeout = Duration::from_secs(60);
        tokio::time::timeout(timeout, waited)
            .await
            .map_err(|_| SimError::Timeout(timeout, format!("the watch caches of namespace {namespace}")))?;
        Ok(Arc::new(cache))
    }

    /// A source for one app of this namespace.
    pub fn source(self: &Arc<Self>, coords: AppCoords) -> Arc<dyn RouteSource> {
        Arc::new(CachedApp { cache: self.clone(), coords })
    }

    fn ready_pods_by_app(&self) -> Arc<HashMap<String, Vec<String>>> {
        let mut index = self.pod_index.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((built, pods)) = index.as_ref()
            && built.elapsed() < POD_INDEX_TTL
        {
            return pods.clone();
        }
        let mut by_app: HashMap<String, Vec<String>> = HashMap::new();
        for pod in self.pods.state() {
            if pod.metadata.deletion_timestamp.is_some() || !pod_ready(&pod) {
                continue;
            }
            if let Some(app) = pod.labels().get("app") {
                by_app.entry(app.clone()).or_default().push(pod.name_any());
            }
        }
        for names in by_app.values_mut() {
            names.sort();
        }
        let by_app = Arc::new(by_app);
        *index = Some((Instant::now(), by_app.clone()));
        by_app
    }

    /// The ready Pods a Deployment selects. Deployments selecting by `app` alone (what
    /// both operators generate from such targets) use the index; others are matched
    /// against every Pod.
    fn ready_pods(&self, deployment: &Deployment) -> Vec<String> {
        let Some(selector) = label_selector_map(deployment) else {
            return Vec::new();
        };
        if selector.len() == 1
            && let Some(app) = selector.get("app")
        {
            return self.ready_pods_by_app().get(app).cloned().unwrap_or_default();
        }
        let mut names: Vec<String> = self
            .pods
            .state()
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && pod_ready(p))
            .filter(|p| selector.iter().all(|(k, v)| p.labels().get(k) == Some(v)))
            .map(|p| p.name_any())
            .collect();
        names.sort();
        names
    }
}

struct CachedApp {
    cache: Arc<NamespaceCache>,
    coords: AppCoords,
}

impl CachedApp {
    fn observe_now(&self) -> Result<Observation, SimError> {
        let cache = &self.cache;
        let mut found = BTreeMap::new();
        for side in Side::BOTH {
            let name = side.workload(&self.coords.target);
            if let Some(d) = cache.deployments.get(&ObjectRef::new(&name).within(&cache.namespace)) {
                let pods = cache.ready_pods(&d);
                found.insert(side, ((*d).clone(), pods));
            }
        }
        let route = match (&cache.routes, self.coords.provider) {
            (_, Provider::Kubernetes) | (None, _) => cache
                .services
                .get(&ObjectRef::new(&self.coords.service).within(&cache.namespace))
                .map(|service| split_for_service(&service, &found)),
            (Some((routes, resource)), provider) => {
                let name = self.coords.route_name();
                match routes.get(&ObjectRef::new_with(&name, resource.clone()).within(&cache.namespace)) {
                    None => None,
                    Some(object) => {
                        let json = serde_json::to_value(object.as_ref()).unwrap_or(Value::Null);
                        let kind = provider.route_kind().kind;
                        Some(parse_route(provider, &json, &self.coords.service).map_err(|source| SimError::Route {
                            object: format!("{kind} {}/{name}", cache.namespace),
                            source,
                        })?)
                    }
                }
            }
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
}

impl RouteSource for CachedApp {
    fn observe(&self) -> BoxFuture<'_, Result<Observation, SimError>> {
        let observed = self.observe_now();
        Box::pin(async move { observed })
    }
}
