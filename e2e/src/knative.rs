//! A stand-in for Knative Serving's controller in the e2e clusters, as kwok stands in
//! for the kubelets: the clusters serve Knative's real CRDs
//! (`e2e/crds/third-party/serving.knative.dev_*.yaml`) but run no Knative.
//!
//! For every Knative Service whose template has no Revision yet it creates one,
//! `<service>-<generation, 5 digits>` as Knative names them, with the template's spec and
//! a `Ready` condition, and a Deployment `<revision>-deployment` whose pods (made Ready by
//! kwok) serve it; then it records the revision in the Service's status
//! (`latestCreatedRevisionName`, `latestReadyRevisionName`, `observedGeneration`). A
//! change of the traffic block alone (what petrel writes) creates no revision, as in
//! Knative, where only a new template does.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// Field manager of what the stand-in writes.
const MANAGER: &str = "fake-knative-serving";
/// Annotation on a Revision: the hash of the template it was made from.
const TEMPLATE_HASH: &str = "e2e.petrel.dev/template-hash";

pub fn service_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("serving.knative.dev", "v1", "Service"), "services")
}

pub fn revision_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("serving.knative.dev", "v1", "Revision"), "revisions")
}

/// Knative's name of the revision of a Service's generation.
pub fn revision_name(service: &str, generation: i64) -> String {
    format!("{service}-{generation:05}")
}

/// A stable hash of a template (its canonical JSON).
fn template_hash(template: &Value) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    canonical(template).hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

fn canonical(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<&String, &Value> = map.iter().collect();
            let inner: Vec<String> = sorted.into_iter().map(|(k, v)| format!("{k:?}:{}", canonical(v))).collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(items) => format!("[{}]", items.iter().map(canonical).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

/// The running stand-in; stops when dropped.
pub struct FakeKnative {
    task: JoinHandle<()>,
}

impl FakeKnative {
    /// Starts reconciling every Knative Service of the cluster.
    pub fn start(client: Client) -> FakeKnative {
        FakeKnative { task: tokio::spawn(run(client)) }
    }
}

impl Drop for FakeKnative {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(client: Client) {
    let services: Api<DynamicObject> = Api::all_with(client.clone(), &service_resource());
    let events = watcher(services, watcher::Config::default()).default_backoff().applied_objects();
    futures::pin_mut!(events);
    while let Some(event) = events.next().await {
        let Ok(service) = event else { continue };
        if let Err(e) = reconcile(&client, &service).await {
            tracing::warn!(service = %service.name_any(), error = %format!("{e:#}"), "fake Knative reconcile failed");
        }
    }
}

async fn reconcile(client: &Client, service: &DynamicObject) -> Result<()> {
    let namespace = service.namespace().context("a Knative Service is namespaced")?;
    let name = service.name_any();
    let generation = service.metadata.generation.unwrap_or(1);
    let json = serde_json::to_value(service)?;
    let observed = json.pointer("/status/observedGeneration").and_then(Value::as_i64).unwrap_or(0);
    if observed >= generation {
        return Ok(());
    }
    let template = json.pointer("/spec/template").cloned().unwrap_or(Value::Null);
    let hash = template_hash(&template);
    let revisions: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &revision_resource());
    let latest = json.pointer("/status/latestCreatedRevisionName").and_then(Value::as_str).map(String::from);
    let latest_hash = match &latest {
        Some(revision) => revisions.get_opt(revision).await?.and_then(|r| r.annotations().get(TEMPLATE_HASH).cloned()),
        None => None,
    };
    let revision = if latest.is_some() && latest_hash.as_deref() == Some(hash.as_str()) {
        latest.clone().unwrap_or_default()
    } else {
        let revision = revision_name(&name, generation);
        create_revision(client, &namespace, service, &revision, &template, &hash).await?;
        revision
    };
    let status = json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "status": {
            "observedGeneration": generation,
            "latestCreatedRevisionName": revision,
            "latestReadyRevisionName": revision,
            "url": format!("http://{name}.{namespace}.example.com"),
            "conditions": [
                { "type": "Ready", "status": "True", "lastTransitionTime": now() },
                { "type": "ConfigurationsReady", "status": "True", "lastTransitionTime": now() },
                { "type": "RoutesReady", "status": "True", "lastTransitionTime": now() },
            ],
        },
    });
    let services: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &service_resource());
    services.patch_status(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&status)).await.with_context(
        || format!("recording revision {revision} in the status of Knative Service {namespace}/{name}"),
    )?;
    Ok(())
}

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

async fn create_revision(
    client: &Client,
    namespace: &str,
    service: &DynamicObject,
    revision: &str,
    template: &Value,
    hash: &str,
) -> Result<()> {
    let name = service.name_any();
    let owner = json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": name,
        "uid": service.metadata.uid.clone().unwrap_or_default(), "controller": true,
    });
    let labels = json!({
        "serving.knative.dev/service": name,
        "serving.knative.dev/configuration": name,
        "serving.knative.dev/revision": revision,
    });
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Revision",
        "metadata": {
            "name": revision, "namespace": namespace, "labels": labels,
            "annotations": { TEMPLATE_HASH: hash }, "ownerReferences": [owner],
        },
        "spec": template.get("spec").cloned().unwrap_or_else(|| json!({})),
    }))?;
    let revisions: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &revision_resource());
    let created = match revisions.create(&PostParams::default(), &object).await {
        Ok(created) => created,
        Err(kube::Error::Api(status)) if status.code == 409 => revisions.get(revision).await?,
        Err(e) => return Err(e).with_context(|| format!("creating Knative Revision {namespace}/{revision}")),
    };
    let ready = json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Revision",
        "status": {
            "observedGeneration": 1,
            "conditions": [{ "type": "Ready", "status": "True", "lastTransitionTime": now() }],
        },
    });
    revisions
        .patch_status(revision, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&ready))
        .await
        .with_context(|| format!("marking Knative Revision {namespace}/{revision} ready"))?;

    // The revision's pods, as Knative's Deployment `<revision>-deployment`.
    let containers = template.pointer("/spec/containers").cloned().unwrap_or_else(|| json!([]));
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {
            "name": format!("{revision}-deployment"), "namespace": namespace, "labels": labels,
            "ownerReferences": [{
                "apiVersion": "serving.knative.dev/v1", "kind": "Revision", "name": revision,
                "uid": created.metadata.uid.clone().unwrap_or_default(), "controller": true,
            }],
        },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "serving.knative.dev/revision": revision } },
            "template": { "metadata": { "labels": labels }, "spec": { "containers": containers } },
        },
    });
    Api::<Deployment>::namespaced(client.clone(), namespace)
        .patch(&format!("{revision}-deployment"), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&deployment))
        .await
        .with_context(|| format!("creating the Deployment of Knative Revision {namespace}/{revision}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_are_named_as_knative_names_them() {
        assert_eq!(revision_name("podinfo", 1), "podinfo-00001");
        assert_eq!(revision_name("podinfo", 12), "podinfo-00012");
    }

    #[test]
    fn the_template_hash_ignores_key_order() {
        let a = json!({ "spec": { "containers": [{ "image": "a", "name": "x" }] } });
        let b = json!({ "spec": { "containers": [{ "name": "x", "image": "a" }] } });
        assert_eq!(template_hash(&a), template_hash(&b));
        assert_ne!(template_hash(&a), template_hash(&json!({ "spec": { "containers": [{ "image": "b" }] } })));
    }
}
