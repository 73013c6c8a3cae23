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
//! without an API server; [`KubeSource`] is the real implementation.

pub mod alerts;
pub mod metrics;
pub mod render;
pub mod webhooks;

use std::collections::BTreeMap;
use std::future::Future;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

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

/// [`MetricSource`] and [`AlertSource`] backed by the Kubernetes API.
#[derive(Clone)]
pub struct KubeSource {
    client: kube::Client,
}

impl KubeSource {
    pub fn new(client: kube::Client) -> Self {
        Self { client }
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
        let secret: Secret = self.get("Secret", namespace, name).await?;
        Ok(secret_data(&secret))
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
        self.get("MetricTemplate", namespace, name).await
    }

    async fn secret(&self, namespace: &str, name: &str) -> Result<SecretData, SourceError> {
        self.secret_data(namespace, name).await
    }
}

impl AlertSource for KubeSource {
    async fn alert_provider(&self, namespace: &str, name: &str) -> Result<AlertProvider, SourceError> {
        self.get("AlertProvider", namespace, name).await
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
}
