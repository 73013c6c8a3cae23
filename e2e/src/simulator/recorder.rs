//! Watching a route object and keeping every split it ever had, so a
//! scenario can assert over a whole release ("weights always summed to
//! 100", "the failed release never got more than the step at which it
//! failed") rather than over samples.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DynamicObject, ListParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde::Serialize;
use tokio::task::JoinHandle;

use super::kube_source::{discover_route_resource, route_groups, split_for_service};
use super::routes::{Provider, parse_route};
use super::split::{Side, Split, Weights};
use super::{AppCoords, SimError, lock};
use crate::wait::poll;
// Retries a failed watch within a few seconds, as petrel does: after an API server
// restart the recorder must be back before petrel writes the next weight.
use petrel::controller::watches::RetryBackoff;

/// One distinct state of the route object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedSplit {
    /// When the watch delivered it.
    pub at: SystemTime,
    /// The object's resourceVersion (`None` for a deletion).
    pub resource_version: Option<String>,
    /// The split; `None`: the object was deleted.
    pub split: Option<Split>,
}

impl RecordedSplit {
    /// Weights of the default rule (all zero for a deletion).
    pub fn weights(&self) -> Weights {
        self.split.as_ref().map_or(Weights::default(), |s| s.default)
    }

    /// Primary weight of the default rule.
    pub fn primary(&self) -> u32 {
        self.weights().primary
    }

    /// Canary weight of the default rule.
    pub fn canary(&self) -> u32 {
        self.weights().canary
    }

    /// Mirror percent of the default rule.
    pub fn mirror(&self) -> Option<u32> {
        self.split.as_ref().and_then(|s| s.mirror_percent)
    }

    /// Largest canary weight in any rule (header rules included).
    pub fn max_canary(&self) -> u32 {
        self.split.as_ref().map_or(0, |s| s.all_weights().map(|w| w.canary).max().unwrap_or(0))
    }
}

/// Records the splits of one app's route object (for the `kubernetes`
/// provider: of its apex Service's selector). Stops when dropped.
pub struct RouteRecorder {
    history: Arc<Mutex<Vec<RecordedSplit>>>,
    errors: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
    poll: Option<JoinHandle<()>>,
}

/// How often the recorder also reads the route object: a watch that failed (its API
/// server restarted) comes back with the object's state then, and a poll catches the
/// writes made while it was away.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

impl RouteRecorder {
    /// Starts watching. The route kind must be served already (its CRD
    /// installed), the object need not exist yet.
    pub async fn start(client: Client, coords: &AppCoords) -> Result<RouteRecorder, SimError> {
        let history = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let recording = Recording { history: history.clone(), errors: errors.clone() };
        let name = coords.route_name();
        let fields = format!("metadata.name={name}");
        let mut poll = None;
        let task = match coords.provider {
            Provider::Kubernetes => {
                let api: Api<Service> = Api::namespaced(client.clone(), &coords.namespace);
                let coords = coords.clone();
                tokio::spawn(async move {
                    let events =
                        watcher(api, watcher::Config::default().fields(&fields)).backoff(RetryBackoff::default());
                    futures::pin_mut!(events);
                    while let Some(event) = events.next().await {
                        match event {
                            Ok(watcher::Event::Apply(svc) | watcher::Event::InitApply(svc)) => {
                                let split = service_split(&client, &coords, &svc).await;
                                recording.push(svc.resource_version(), split.map(Some));
                            }
                            Ok(watcher::Event::Delete(_)) => recording.push(None, Ok(None)),
                            Ok(_) => {}
                            Err(e) => recording.error(format!("watching Service: {e}")),
                        }
                    }
                })
            }
            provider => {
                let resource =
                    discover_route_resource(&client, provider).await?.ok_or_else(|| SimError::KindNotServed {
                        group: route_groups(provider).join(" or "),
                        kind: provider.route_kind().kind.to_owned(),
                    })?;
                let api: Api<DynamicObject> = Api::namespaced_with(client, &coords.namespace, &resource);
                let service = coords.service.clone();
                let kind = resource.kind.clone();
                poll = Some(tokio::spawn({
                    let (api, name, service) = (api.clone(), name.clone(), service.clone());
                    let recording = recording.clone();
                    async move {
                        loop {
                            // Errors are the watch's to report; a poll only adds states it missed.
                            // Bounded: the client's own retries of a 503 from an API server
                            // still starting would otherwise make the poll miss states.
                            let read = tokio::time::timeout(POLL_INTERVAL * 2, api.get_opt(&name)).await;
                            if let Ok(Ok(Some(obj))) = read {
                                let json = serde_json::to_value(&obj).unwrap_or_default();
                                if let Ok(split) = parse_route(provider, &json, &service) {
                                    recording.push(obj.resource_version(), Ok(Some(split)));
                                }
                            }
                            tokio::time::sleep(POLL_INTERVAL).await;
                        }
                    }
                }));
                tokio::spawn(async move {
                    let events =
                        watcher(api, watcher::Config::default().fields(&fields)).backoff(RetryBackoff::default());
                    futures::pin_mut!(events);
                    while let Some(event) = events.next().await {
                        match event {
                            Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) => {
                                let json = serde_json::to_value(&obj).unwrap_or_default();
                                let split = parse_route(provider, &json, &service)
                                    .map(Some)
                                    .map_err(|e| format!("{kind} {name}: {e}"));
                                recording.push(obj.resource_version(), split);
                            }
                            Ok(watcher::Event::Delete(_)) => recording.push(None, Ok(None)),
                            Ok(_) => {}
                            Err(e) => recording.error(format!("watching {kind} {name}: {e}")),
                        }
                    }
                })
            }
        };
        Ok(RouteRecorder { history, errors, task, poll })
    }

    /// Every distinct split seen, oldest first.
    pub fn history(&self) -> Vec<RecordedSplit> {
        lock(&self.history).clone()
    }

    /// Watch errors and objects that could not be parsed.
    pub fn errors(&self) -> Vec<String> {
        lock(&self.errors).clone()
    }

    /// The highest canary weight ever written, in any rule.
    pub fn max_canary_weight(&self) -> u32 {
        self.history().iter().map(RecordedSplit::max_canary).max().unwrap_or(0)
    }

    /// Recorded splits in which some rule's weights do not sum to `total`
    /// (deletions excluded).
    pub fn splits_not_summing_to(&self, total: u32) -> Vec<RecordedSplit> {
        self.history()
            .into_iter()
            .filter(|r| r.split.as_ref().is_some_and(|s| s.all_weights().any(|w| w.total() != total)))
            .collect()
    }

    /// Waits until `condition` holds for the history.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        condition: impl Fn(&[RecordedSplit]) -> bool,
    ) -> Result<Vec<RecordedSplit>, SimError> {
        let mut history = Vec::new();
        let held = poll(Instant::now() + timeout, Duration::from_millis(50), async || {
            history = self.history();
            Ok::<_, SimError>(condition(&history).then_some(()))
        })
        .await?;
        match held {
            Some(()) => Ok(history),
            None => Err(SimError::Timeout(
                timeout,
                format!("{what}; recorded: {:?}", history.iter().map(|r| r.weights()).collect::<Vec<_>>()),
            )),
        }
    }
}

impl Drop for RouteRecorder {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(poll) = &self.poll {
            poll.abort();
        }
    }
}

#[derive(Clone)]
struct Recording {
    history: Arc<Mutex<Vec<RecordedSplit>>>,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Recording {
    fn push(&self, resource_version: Option<String>, split: Result<Option<Split>, String>) {
        match split {
            Ok(split) => {
                let mut history = lock(&self.history);
                // The watch and the poll may deliver out of order: keep the newer state.
                // (resourceVersions are opaque to clients, but the harness knows its
                // etcd: they are revisions, and comparable.)
                let version = |v: Option<&String>| v.and_then(|v| v.parse::<u64>().ok());
                let last_version = history.last().and_then(|r| version(r.resource_version.as_ref()));
                if let (Some(new), Some(last)) = (version(resource_version.as_ref()), last_version)
                    && new <= last
                {
                    return;
                }
                // A resync or an unrelated field change repeats the split.
                if history.last().map(|r| &r.split) != Some(&split) {
                    history.push(RecordedSplit { at: SystemTime::now(), resource_version, split });
                }
            }
            Err(e) => self.error(e),
        }
    }

    fn error(&self, message: String) {
        tracing::warn!(%message, "route recorder");
        lock(&self.errors).push(message);
    }
}

async fn service_split(client: &Client, coords: &AppCoords, service: &Service) -> Result<Split, String> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &coords.namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &coords.namespace);
    let mut found = BTreeMap::new();
    for side in Side::BOTH {
        let name = side.workload(&coords.target);
        let Some(d) = deployments.get_opt(&name).await.map_err(|e| format!("reading Deployment {name}: {e}"))? else {
            continue;
        };
        let selector = d
            .spec
            .as_ref()
            .and_then(|s| s.selector.match_labels.as_ref())
            .map(|l| l.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
            .unwrap_or_default();
        let ready: Vec<String> = if selector.is_empty() {
            Vec::new()
        } else {
            pods.list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| format!("listing Pods of {name}: {e}"))?
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .map(|p| p.name_any())
                .collect()
        };
        found.insert(side, (d, ready));
    }
    Ok(split_for_service(service, &found))
}
