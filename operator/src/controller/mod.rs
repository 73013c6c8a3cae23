//! The I/O shell of the per-cluster Canary controller: watches, reconcile, status, events.
//!
//! A reconcile reads the world, asks the pure core what to do ([`crate::core::plan`],
//! [`crate::core::decide`]), applies the actions and writes the status once.

mod canary;
mod conditions;
mod events;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{info, warn};

use crate::api::Canary;
use crate::core::Provider;
use crate::shutdown::Shutdown;

pub use canary::reconcile;
pub use events::EventSink;

/// Settings of the operator that apply to every Canary.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Provider used when a Canary names none.
    pub default_provider: String,
    /// Prometheus address for the builtin metrics when a Canary names none.
    pub metrics_server: String,
    /// Name of this cluster, in alerts and events.
    pub cluster_name: String,
}

/// Everything a reconcile needs, shared across reconciles.
pub struct Context {
    pub client: Client,
    /// Webhooks, alert receivers; its egress policy also goes to the metric backends.
    pub http: metrics_providers::EgressClient,
    pub events: EventSink,
    pub settings: Settings,
    /// Prometheus metrics, recorded by every reconcile.
    pub metrics: Arc<crate::telemetry::Metrics>,
    /// Turns ready once the Canary cache has synced (`/readyz`).
    pub readiness: crate::telemetry::Readiness,
}

/// Errors of one reconcile. Bad input is not an error here: it becomes a `Stalled`
/// condition and an Event, and the reconcile succeeds.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API call failed while {context}: {source}")]
    Kube {
        context: String,
        #[source]
        source: kube::Error,
    },
    #[error("traffic router failed while {context}: {message}")]
    Router { context: String, message: String },
    #[error("workload update failed while {context}: {message}")]
    Workload { context: String, message: String },
    #[error("Canary has no namespace")]
    MissingNamespace,
}

impl Error {
    pub(crate) fn kube(context: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let context = context.into();
        move |source| Error::Kube { context, source }
    }

    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube",
            Error::Router { .. } => "router",
            Error::Workload { .. } => "workload",
            Error::MissingNamespace => "invalid",
        }
    }
}

fn error_policy(canary: Arc<Canary>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(canary = %canary.name_any(), namespace = ?canary.namespace(), %error, "reconcile failed");
    ctx.metrics.record_reconcile_error(crate::telemetry::CANARY_CONTROLLER, error);
    Action::requeue(Duration::from_secs(5))
}

/// The Canaries whose target is this Deployment, or that own it (the primary).
fn canaries_for_deployment(store: &Store<Canary>, deployment: &Deployment) -> Vec<ObjectRef<Canary>> {
    let namespace = deployment.namespace();
    let name = deployment.name_any();
    let mut refs: Vec<ObjectRef<Canary>> = store
        .state()
        .iter()
        .filter(|c| c.namespace() == namespace && c.spec.target_ref.name == name)
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect();
    for owner in deployment.owner_references() {
        if owner.kind == Canary::kind(&()) && owner.api_version == Canary::api_version(&()) {
            let mut r = ObjectRef::<Canary>::new(&owner.name);
            if let Some(ns) = &namespace {
                r = r.within(ns);
            }
            refs.push(r);
        }
    }
    refs
}

/// The Canaries whose target uses this ConfigMap or Secret (as recorded in their status).
fn canaries_tracking(store: &Store<Canary>, namespace: Option<String>, key: String) -> Vec<ObjectRef<Canary>> {
    store
        .state()
        .iter()
        .filter(|c| {
            c.namespace() == namespace && c.status.as_ref().is_some_and(|s| s.tracked_configs.contains_key(&key))
        })
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

/// Runs the Canary controller until `shutdown` is requested; the reconciles in flight
/// finish first.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>, shutdown: Shutdown) -> anyhow::Result<()> {
    let client = ctx.client.clone();
    let canaries: Api<Canary> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    if let Err(e) = canaries.list(&kube::api::ListParams::default().limit(1)).await {
        anyhow::bail!("cannot list Canaries ({e}); are the CRDs installed? Apply them with: kubectl apply -f crds/");
    }
    let api_for = |c: &Client| -> (Api<Deployment>, Api<ConfigMap>, Api<Secret>) {
        match &namespace {
            Some(ns) => {
                (Api::namespaced(c.clone(), ns), Api::namespaced(c.clone(), ns), Api::namespaced(c.clone(), ns))
            }
            None => (Api::all(c.clone()), Api::all(c.clone()), Api::all(c.clone())),
        }
    };
    let (deployments, configmaps, secrets) = api_for(&client);

    let controller = Controller::new(canaries, watcher::Config::default().any_semantic());
    let store = controller.store();
    // Readiness and the sweep of deleted Canaries' metric series follow the cache.
    let telemetry =
        tokio::spawn(crate::telemetry::track_canary_store(store.clone(), ctx.readiness.clone(), ctx.metrics.clone()));
    let (s1, s2, s3) = (store.clone(), store.clone(), store);
    info!(provider = %ctx.settings.default_provider, metrics_server = %ctx.settings.metrics_server, "starting the Canary controller");
    controller
        .with_config(ControllerConfig::default().debounce(Duration::from_millis(100)))
        .watches(deployments, watcher::Config::default().any_semantic(), move |d| canaries_for_deployment(&s1, &d))
        .watches(configmaps, watcher::Config::default().any_semantic(), move |cm: ConfigMap| {
            canaries_tracking(&s2, cm.namespace(), format!("configmap/{}", cm.name_any()))
        })
        .watches(secrets, watcher::Config::default().any_semantic(), move |s: Secret| {
            canaries_tracking(&s3, s.namespace(), format!("secret/{}", s.name_any()))
        })
        .graceful_shutdown_on(shutdown.requested())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "controller stream error");
            }
        })
        .await;
    telemetry.abort();
    info!("Canary controller stopped");
    Ok(())
}

/// The provider a Canary uses: its own, or the operator's default.
pub(crate) fn provider_of(
    canary: &Canary,
    settings: &Settings,
) -> Result<Provider, crate::core::provider::UnknownProvider> {
    Provider::parse(canary.spec.provider.as_deref().unwrap_or(&settings.default_provider))
}
