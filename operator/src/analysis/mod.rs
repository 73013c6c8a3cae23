//! The gates and checks of an analysis: the I/O that produces
//! [`GateResults`](crate::core::GateResults) for the state machine, and the alerts sent
//! about a Canary.
//!
//! - [`webhooks`]: calls a Canary's webhooks of one type (gates, hooks, events);
//! - [`metrics`]: evaluates a Canary's `analysis.metrics[]` against their backends;
//! - [`alerts`]: notifies chat and webhook receivers ([`AlertProvider`]s).
//!
//! Everything that can be decided without I/O (payloads, query variables, threshold
//! and comparison verdicts, severity filters) is a pure function next to the I/O that
//! uses it. Objects the checks need (MetricTemplates, AlertProviders, Secrets) are read
//! through the small traits [`MetricSource`] and [`AlertSource`], so tests feed them
//! without an API server; [`KubeSource`] is the real implementation, reading from the
//! controller's watch caches ([`SourceCaches`]) once they have synced.

pub mod alerts;
pub mod keptn;
pub mod metrics;
pub mod render;
pub mod webhooks;

#[cfg(test)]
mod calibration_tests;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store, store};

use crate::telemetry::WatchHealth;

use crate::api::{AlertProvider, MetricTemplate};

pub use alerts::{Alert, AlertError, send_alert, send_alerts, severity_selected};
pub use metrics::{MetricDeps, apply_comparisons, fold_comparisons, judge_comparison, run_metrics};
pub use webhooks::{HookContext, HookEvent, run_hooks};

/// Why an object the analysis needs could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("{kind} {namespace}/{name} not found")]
    NotFound { kind: &'static str, namespace: String, name: String },
    #[error("cannot read {kind} {namespace}/{name}: {reason}")]
    Unreadable { kind: &'static str, namespace: String, name: String, reason: String },
}

/// Secret data as plain bytes (`data` merged with `stringData`).
pub type SecretData = BTreeMap<String, Vec<u8>>;

/// Reads the objects metric checks refer to.
pub trait MetricSource: Send + Sync {
    fn metric_template(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<MetricTemplate, SourceError>> + Send;

    fn secret(&self, namespace: &str, name: &str) -> impl Future<Output = Result<SecretData, SourceError>> + Send;

    /// A KeptnMetric object (`metrics.keptn.sh`), as JSON, for the `keptn` provider.
    /// Sources without a Kubernetes API (most test fakes) cannot read one.
    fn keptn_metric(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<serde_json::Value, SourceError>> + Send {
        let error = SourceError::Unreadable {
            kind: "KeptnMetric",
            namespace: namespace.into(),
            name: name.into(),
            reason: "this source has no Kubernetes API".into(),
        };
        async move { Err(error) }
    }
}

/// Reads the objects alerts refer to.
pub trait AlertSource: Send + Sync {
    fn alert_provider(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<AlertProvider, SourceError>> + Send;

    fn secret(&self, namespace: &str, name: &str) -> impl Future<Output = Result<SecretData, SourceError>> + Send;
}

/// Names of the watches behind [`SourceCaches`] (in `/readyz` and logs).
pub const METRIC_TEMPLATE_WATCH: &str = "metrictemplates";
pub const ALERT_PROVIDER_WATCH: &str = "alertproviders";
pub const SECRET_WATCH: &str = "secrets";

/// The objects analysis reads, as watch caches keep them: MetricTemplates and
/// AlertProviders whole (a Canary with 100 template metrics would otherwise GET 100
/// templates at every tick), Secrets by their metadata only. A Secret's data is read
/// once it is used, and again only when its resourceVersion in the metadata cache
/// moves: petrel never holds the data of Secrets it does not use. Cheap to clone.
#[derive(Clone)]
pub struct SourceCaches {
    pub templates: Store<crate::api::MetricTemplate>,
    pub alert_providers: Store<AlertProvider>,
    pub secrets: Store<PartialObjectMeta<Secret>>,
    /// Whether each watch has synced: before that a lookup reads from the API server.
    pub health: WatchHealth,
    /// The data of Secrets in use, with the resourceVersion it was read at.
    secret_data: Arc<Mutex<SecretDataCache>>,
}

/// `(namespace, name)` → (the resourceVersion it was read at, the data).
type SecretDataCache = HashMap<(String, String), (String, SecretData)>;

/// The writers of [`SourceCaches`]' stores, for the watches that fill them.
pub struct SourceWriters {
    pub templates: Writer<crate::api::MetricTemplate>,
    pub alert_providers: Writer<AlertProvider>,
    pub secrets: Writer<PartialObjectMeta<Secret>>,
}

impl SourceCaches {
    /// Empty caches and the writers that fill them; `health` tells when each synced.
    pub fn new(health: WatchHealth) -> (SourceCaches, SourceWriters) {
        let (templates, template_writer) = store();
        let (alert_providers, alert_provider_writer) = store();
        let (secrets, secret_writer) = store();
        let caches = SourceCaches { templates, alert_providers, secrets, health, secret_data: Default::default() };
        let writers = SourceWriters {
            templates: template_writer,
            alert_providers: alert_provider_writer,
            secrets: secret_writer,
        };
        (caches, writers)
    }

    fn secret_data_cache(&self) -> std::sync::MutexGuard<'_, SecretDataCache> {
        // A panic while holding the lock leaves a consistent map (every change is one call).
        self.secret_data.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A namespaced object from a synced cache: `Some(found)` answers (`found` is `None` when
/// it does not exist), `None` means the cache cannot answer yet.
fn from_cache<K>(store: &Store<K>, synced: bool, namespace: &str, name: &str) -> Option<Option<Arc<K>>>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    synced.then(|| store.get(&ObjectRef::new(name).within(namespace)))
}

/// [`MetricSource`] and [`AlertSource`] backed by the Kubernetes API: the controller's
/// caches when it has them ([`KubeSource::cached`]), GETs otherwise.
#[derive(Clone)]
pub struct KubeSource {
    client: kube::Client,
    caches: Option<SourceCaches>,
}

impl KubeSource {
    /// Reads every object from the API server.
    pub fn new(client: kube::Client) -> Self {
        Self { client, caches: None }
    }

    /// Reads from `caches` once their watches synced.
    pub fn cached(client: kube::Client, caches: SourceCaches) -> Self {
        Self { client, caches: Some(caches) }
    }

    fn not_found(kind: &'static str, namespace: &str, name: &str) -> SourceError {
        SourceError::NotFound { kind, namespace: namespace.into(), name: name.into() }
    }

    async fn get<K>(&self, kind: &'static str, namespace: &str, name: &str) -> Result<K, SourceError>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        match api.get_opt(name).await {
            Ok(Some(object)) => Ok(object),
            Ok(None) => Err(SourceError::NotFound { kind, namespace: namespace.into(), name: name.into() }),
            Err(error) => Err(SourceError::Unreadable {
                kind,
                namespace: namespace.into(),
                name: name.into(),
                reason: error.to_string(),
            }),
        }
    }

    async fn secret_data(&self, namespace: &str, name: &str) -> Result<SecretData, SourceError> {
        let Some(caches) = &self.caches else {
            let secret: Secret = self.get("Secret", namespace, name).await?;
            return Ok(secret_data(&secret));
        };
        let key = (namespace.to_string(), name.to_string());
        let meta = from_cache(&caches.secrets, caches.health.synced(SECRET_WATCH), namespace, name);
        let version = match meta {
            Some(None) => {
                caches.secret_data_cache().remove(&key);
                return Err(Self::not_found("Secret", namespace, name));
            }
            Some(Some(meta)) => meta.resource_version(),
            None => None,
        };
        if let Some(version) = &version
            && let Some((read_at, data)) = caches.secret_data_cache().get(&key)
            && read_at == version
        {
            return Ok(data.clone());
        }
        let secret: Secret = self.get("Secret", namespace, name).await?;
        let data = secret_data(&secret);
        if let Some(read_at) = secret.resource_version() {
            caches.secret_data_cache().insert(key, (read_at, data.clone()));
        }
        Ok(data)
    }

    async fn cached_or_get<K>(
        &self,
        kind: &'static str,
        watch: &'static str,
        store: impl Fn(&SourceCaches) -> &Store<K>,
        namespace: &str,
        name: &str,
    ) -> Result<K, SourceError>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug
            + 'static,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    {
        let cached = self.caches.as_ref().and_then(|c| from_cache(store(c), c.health.synced(watch), namespace, name));
        match cached {
            Some(Some(object)) => Ok(K::clone(&object)),
            Some(None) => Err(Self::not_found(kind, namespace, name)),
            None => self.get(kind, namespace, name).await,
        }
    }
}

/// A Secret's values; `stringData` wins over `data` as the API server would merge them
/// (it is normally empty on a read, but a fake or a dry-run may carry it).
pub fn secret_data(secret: &Secret) -> SecretData {
    let mut data: SecretData =
        secret.data.iter().flatten().map(|(key, value)| (key.clone(), value.0.clone())).collect();
    for (key, value) in secret.string_data.iter().flatten() {
        data.insert(key.clone(), value.clone().into_bytes());
    }
    data
}

impl MetricSource for KubeSource {
    async fn metric_template(&self, namespace: &str, name: &str) -> Result<MetricTemplate, SourceError> {
        self.cached_or_get("MetricTemplate", METRIC_TEMPLATE_WATCH, |c| &c.templates, namespace, name).await
    }

    async fn secret(&self, namespace: &str, name: &str) -> Result<SecretData, SourceError> {
        self.secret_data(namespace, name).await
    }

    async fn keptn_metric(&self, namespace: &str, name: &str) -> Result<serde_json::Value, SourceError> {
        let resource = keptn::keptn_metric_resource();
        let api: Api<kube::api::DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, &resource);
        let found = api.get_opt(name).await.map_err(|error| SourceError::Unreadable {
            kind: "KeptnMetric",
            namespace: namespace.into(),
            name: name.into(),
            reason: error.to_string(),
        })?;
        let object = found.ok_or_else(|| SourceError::NotFound {
            kind: "KeptnMetric",
            namespace: namespace.into(),
            name: name.into(),
        })?;
        serde_json::to_value(object).map_err(|error| SourceError::Unreadable {
            kind: "KeptnMetric",
            namespace: namespace.into(),
            name: name.into(),
            reason: error.to_string(),
        })
    }
}

impl AlertSource for KubeSource {
    async fn alert_provider(&self, namespace: &str, name: &str) -> Result<AlertProvider, SourceError> {
        self.cached_or_get("AlertProvider", ALERT_PROVIDER_WATCH, |c| &c.alert_providers, namespace, name).await
    }

    async fn secret(&self, namespace: &str, name: &str) -> Result<SecretData, SourceError> {
        self.secret_data(namespace, name).await
    }
}

/// The first `max` characters of `text` (trimmed), marked when cut, for error messages.
pub(crate) fn excerpt(text: &str, max: usize) -> String {
    let text = text.trim();
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((cut, _)) => format!("{}…", &text[..cut]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_string_data_overrides_data() {
        let secret = Secret {
            data: Some(BTreeMap::from([
                ("token".to_string(), k8s_openapi::ByteString(b"old".to_vec())),
                ("address".to_string(), k8s_openapi::ByteString(b"http://a".to_vec())),
            ])),
            string_data: Some(BTreeMap::from([("token".to_string(), "new".to_string())])),
            ..Default::default()
        };
        let data = secret_data(&secret);
        assert_eq!(data["token"], b"new");
        assert_eq!(data["address"], b"http://a");
    }

    #[test]
    fn excerpts_are_cut_on_char_boundaries() {
        assert_eq!(excerpt("  héllo ", 2), "hé…");
        assert_eq!(excerpt("ok", 2), "ok");
    }

    /// A Kubernetes API answering GETs from `objects` (by path), 404 otherwise, and 500
    /// for paths containing "broken".
    fn fake_api(objects: BTreeMap<String, serde_json::Value>) -> kube::Client {
        use http::{Request, Response};
        use kube::client::Body;

        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let path = request.uri().path().to_string();
                let (code, body) = match objects.get(&path) {
                    Some(object) => (200, object.clone()),
                    None if path.contains("broken") => (
                        500,
                        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                            "message": "etcd is on fire", "reason": "InternalError", "code": 500}),
                    ),
                    None => (
                        404,
                        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                            "message": format!("{path} not found"), "reason": "NotFound", "code": 404}),
                    ),
                };
                let response = Response::builder()
                    .status(code)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap();
                send.send_response(response);
            }
        });
        kube::Client::new(service, "default")
    }

    #[tokio::test]
    async fn kube_source_reads_objects_and_names_what_is_missing() {
        let template = serde_json::json!({
            "apiVersion": "petrel.dev/v1alpha1", "kind": "MetricTemplate",
            "metadata": {"name": "errors", "namespace": "monitoring"},
            "spec": {"provider": {"type": "prometheus", "address": "http://prom:9090"}, "query": "up"},
        });
        let secret = serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "auth", "namespace": "monitoring"},
            "data": {"token": "czNjcmV0"},
        });
        let source = KubeSource::new(fake_api(BTreeMap::from([
            ("/apis/petrel.dev/v1alpha1/namespaces/monitoring/metrictemplates/errors".to_string(), template),
            ("/api/v1/namespaces/monitoring/secrets/auth".to_string(), secret),
        ])));

        let found = source.metric_template("monitoring", "errors").await.unwrap();
        assert_eq!(found.spec.query, "up");
        let data = MetricSource::secret(&source, "monitoring", "auth").await.unwrap();
        assert_eq!(data["token"], b"s3cret");

        assert_eq!(
            source.metric_template("monitoring", "absent").await.unwrap_err(),
            SourceError::NotFound { kind: "MetricTemplate", namespace: "monitoring".into(), name: "absent".into() }
        );
        assert!(matches!(
            AlertSource::secret(&source, "test", "nope").await,
            Err(SourceError::NotFound { kind: "Secret", .. })
        ));
        let broken = source.alert_provider("broken", "slack").await.unwrap_err();
        assert!(
            matches!(&broken, SourceError::Unreadable { kind: "AlertProvider", reason, .. } if reason.contains("etcd is on fire")),
            "{broken}"
        );
    }

    #[tokio::test]
    async fn cached_source_reads_templates_from_the_cache_and_secret_data_once_per_version() {
        use kube::runtime::watcher::Event;
        let template = serde_json::json!({
            "apiVersion": "petrel.dev/v1alpha1", "kind": "MetricTemplate",
            "metadata": {"name": "errors", "namespace": "monitoring"},
            "spec": {"provider": {"type": "prometheus"}, "query": "up"},
        });
        let secret = |version: &str| {
            serde_json::json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "auth", "namespace": "monitoring", "resourceVersion": version},
                "data": {"token": "czNjcmV0"},
            })
        };
        // Only the Secret is on the API server: a template read would be a 404.
        let source_api =
            fake_api(BTreeMap::from([("/api/v1/namespaces/monitoring/secrets/auth".to_string(), secret("7"))]));
        let health = WatchHealth::default();
        let (caches, mut writers) = SourceCaches::new(health.clone());
        let synced = |name| {
            health.observe::<()>(name, &Ok(Event::Init));
            health.observe::<()>(name, &Ok(Event::InitDone));
        };
        writers.templates.apply_watcher_event(&Event::InitApply(serde_json::from_value(template).unwrap()));
        writers.templates.apply_watcher_event(&Event::InitDone);
        synced(METRIC_TEMPLATE_WATCH);
        let meta = |version: &str| -> PartialObjectMeta<Secret> {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                "metadata": {"name": "auth", "namespace": "monitoring", "resourceVersion": version},
            }))
            .unwrap()
        };
        writers.secrets.apply_watcher_event(&Event::InitApply(meta("7")));
        writers.secrets.apply_watcher_event(&Event::InitDone);
        synced(SECRET_WATCH);
        let source = KubeSource::cached(source_api, caches.clone());

        assert_eq!(source.metric_template("monitoring", "errors").await.unwrap().spec.query, "up");
        assert!(matches!(
            source.metric_template("monitoring", "absent").await,
            Err(SourceError::NotFound { kind: "MetricTemplate", .. })
        ));
        assert_eq!(MetricSource::secret(&source, "monitoring", "auth").await.unwrap()["token"], b"s3cret");
        assert_eq!(caches.secret_data_cache().len(), 1, "the data of a Secret in use is kept");
        assert!(matches!(
            MetricSource::secret(&source, "monitoring", "other").await,
            Err(SourceError::NotFound { kind: "Secret", .. })
        ));
        // Read again from the cache: no request (the fake would answer the same either
        // way, so the proof is that the cached copy is returned for the same version).
        caches.secret_data_cache().get_mut(&("monitoring".to_string(), "auth".to_string())).unwrap().1 =
            BTreeMap::from([("token".to_string(), b"cached".to_vec())]);
        assert_eq!(MetricSource::secret(&source, "monitoring", "auth").await.unwrap()["token"], b"cached");
        // A new version in the metadata cache: the data is read again.
        writers.secrets.apply_watcher_event(&Event::Apply(meta("8")));
        assert_eq!(MetricSource::secret(&source, "monitoring", "auth").await.unwrap()["token"], b"s3cret");
    }

    /// The keptn provider through the real source: the KeptnMetric is read from the
    /// Kubernetes API at the path of metrics.keptn.sh/v1beta1.
    #[tokio::test]
    async fn keptn_provider_reads_the_keptn_metric_from_the_api() {
        use metrics_providers::{MetricProvider, QueryError};

        let updated = chrono::Utc::now().to_rfc3339();
        let metric = serde_json::json!({
            "apiVersion": "metrics.keptn.sh/v1beta1", "kind": "KeptnMetric",
            "metadata": {"name": "error-rate", "namespace": "keptn-system"},
            "spec": {"provider": {"name": "prometheus"}, "query": "sum(rate(errors[1m]))", "fetchIntervalSeconds": 10},
            "status": {"value": "0.42", "rawValue": "MC40Mg==", "lastUpdated": updated},
        });
        let source = KubeSource::new(fake_api(BTreeMap::from([(
            "/apis/metrics.keptn.sh/v1beta1/namespaces/keptn-system/keptnmetrics/error-rate".to_string(),
            metric,
        )])));
        let keptn = keptn::KeptnProvider::new(&source);

        assert_eq!(keptn.query("keptnmetric/keptn-system/error-rate").await, Ok(0.42));
        let missing = keptn.query("keptnmetric/keptn-system/latency").await.unwrap_err();
        assert!(
            matches!(&missing, QueryError::InvalidConfig(m) if m.contains("KeptnMetric keptn-system/latency not found")),
            "{missing}"
        );
        let broken = keptn.query("keptnmetric/broken/error-rate").await.unwrap_err();
        assert!(matches!(&broken, QueryError::Transport(m) if m.contains("etcd is on fire")), "{broken}");
    }
}
