//! What the reconciler calls: read a Canary's workloads once per reconcile, and apply
//! the workload actions of the state machine (`ScaleCanaryUp`, `ScaleCanaryToZero`,
//! `PromoteCanaryToPrimary`) from that reading.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::{Api, Client};

use super::configs::{ConfigReads, TrackedConfigs, read_tracked_configs};
use super::health::{deployment_health, primary_runs_revision};
use super::history::{list_primary_revisions, stored_release, stored_replicas, stored_revision, stored_template_of};
use super::hpa::{check_autoscaler_ref, ensure_primary_hpa};
use super::keda::{
    TargetScaler, is_paused, is_scaled_object, min_replicas as keda_min_replicas, read_target_scaled_object, set_paused,
};
use super::primary::{ensure_primary, primary_name, promote, rebuild_primary};
use super::revision::{release_identity, revision};
use super::scaling::{primary_replicas, scale_target, scale_up_replicas};
use super::selector::{PodSelector, pod_selector};
use super::{DeploymentCache, REVISION_ANNOTATION, WorkloadError, canary_namespace, is_not_found};
use crate::api::Canary;
use crate::core::WorkloadHealth;
use crate::core::strategy::progress_deadline;

/// Default share of pods that must be available, for canary and primary alike.
const DEFAULT_READY_THRESHOLD_PERCENT: i32 = 100;

/// A Canary's workloads as read at the start of a reconcile.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadSnapshot {
    /// The user's Deployment (the canary), shared with the watch cache.
    pub target: Arc<Deployment>,
    pub selector: PodSelector,
    /// The ConfigMaps and Secrets the target's pods use (opted-out ones excluded).
    pub tracked: TrackedConfigs,
    /// The target's revision: its pod template and the tracked configs' checksums.
    pub revision: String,
    /// The target's release identity (its images).
    pub release: String,
    /// The `-primary` Deployment, once created; shared with the watch cache.
    pub primary: Option<Arc<Deployment>>,
    /// `minReplicas` of the target's HPA when `spec.autoscalerRef` names one (a KEDA
    /// ScaledObject's `minReplicaCount` when it is at least 1).
    pub target_hpa_min_replicas: Option<i32>,
    /// The target's KEDA ScaledObject, when `spec.autoscalerRef` names one: paused while
    /// the target is scaled to zero.
    pub target_scaler: Option<TargetScaler>,
}

impl WorkloadSnapshot {
    /// Checksums of the tracked configs, for `status.trackedConfigs`.
    pub fn tracked_checksums(&self) -> BTreeMap<String, String> {
        self.tracked.checksums()
    }

    /// Health of the canary (the target) under the Canary's `canaryReadyThreshold`.
    pub fn canary_health(&self, canary: &Canary, now: DateTime<Utc>) -> WorkloadHealth {
        let threshold = canary
            .spec
            .analysis
            .as_ref()
            .and_then(|analysis| analysis.canary_ready_threshold)
            .unwrap_or(DEFAULT_READY_THRESHOLD_PERCENT);
        deployment_health(&self.target, threshold, progress_deadline(&canary.spec), now)
    }

    /// Health of the primary under the Canary's `primaryReadyThreshold`.
    pub fn primary_health(&self, canary: &Canary, now: DateTime<Utc>) -> WorkloadHealth {
        let Some(primary) = &self.primary else {
            return WorkloadHealth::NotReady {
                reason: format!("Deployment {} not created yet", primary_name(&canary.spec.target_ref.name)),
            };
        };
        let threshold = canary
            .spec
            .analysis
            .as_ref()
            .and_then(|analysis| analysis.primary_ready_threshold)
            .unwrap_or(DEFAULT_READY_THRESHOLD_PERCENT);
        deployment_health(primary, threshold, progress_deadline(&canary.spec), now)
    }

    /// Revision (the annotation petrel writes) and release identity of the primary's
    /// template, when the primary exists and petrel wrote it.
    pub fn primary_template(&self) -> Option<(String, String)> {
        let template = &self.primary.as_ref()?.spec.as_ref()?.template;
        let revision = template.metadata.as_ref()?.annotations.as_ref()?.get(REVISION_ANNOTATION)?.clone();
        Some((revision, release_identity(template)))
    }

    /// Whether the primary runs `promoted_revision` (normally `status.lastPromotedSpec`)
    /// and finished rolling it out.
    pub fn primary_runs(&self, promoted_revision: &str) -> bool {
        self.primary.as_ref().is_some_and(|primary| primary_runs_revision(primary, promoted_revision))
    }
}

fn hpa_managed(canary: &Canary) -> bool {
    canary.spec.autoscaler_ref.is_some()
}

/// Reads the target, its selector label, tracked configs, primary and (when the Canary
/// names one) the target's HPA; the Deployments through `deployments` (see
/// [`crate::cache`]). Errors that need a person's fix report [`WorkloadError::is_stalled`].
pub async fn read_workloads(
    client: &Client,
    deployments: &DeploymentCache,
    configs: &ConfigReads,
    canary: &Canary,
) -> Result<WorkloadSnapshot, WorkloadError> {
    let namespace = canary_namespace(canary)?;
    let target_name = canary.spec.target_ref.name.clone();
    let target = deployments
        .get(client, &namespace, &target_name)
        .await
        .map_err(|e| WorkloadError::kube(format!("reading Deployment {namespace}/{target_name}"), e))?
        .ok_or_else(|| WorkloadError::TargetNotFound { namespace: namespace.clone(), name: target_name.clone() })?;
    let selector = pod_selector(&target)?;
    let tracked = read_tracked_configs(client, configs, &target).await?;
    let template = target.spec.as_ref().map(|spec| spec.template.clone()).unwrap_or_default();
    let revision = revision(&template, &tracked.checksums());
    let release = release_identity(&template);
    let primary_name = primary_name(&target_name);
    let primary = deployments
        .get(client, &namespace, &primary_name)
        .await
        .map_err(|e| WorkloadError::kube(format!("reading Deployment {namespace}/{primary_name}"), e))?;
    let mut target_scaler = None;
    let target_hpa_min_replicas = match &canary.spec.autoscaler_ref {
        None => None,
        Some(autoscaler) if is_scaled_object(autoscaler) => {
            let scaled_object = read_target_scaled_object(client, canary, &autoscaler.name).await?;
            target_scaler = Some(TargetScaler {
                namespace: namespace.clone(),
                name: autoscaler.name.clone(),
                paused: is_paused(&scaled_object),
            });
            keda_min_replicas(&scaled_object)
        }
        Some(autoscaler) => {
            check_autoscaler_ref(autoscaler)?;
            let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &namespace);
            let hpa = match hpas.get(&autoscaler.name).await {
                Ok(hpa) => hpa,
                Err(e) if is_not_found(&e) => {
                    return Err(WorkloadError::AutoscalerNotFound {
                        kind: "HorizontalPodAutoscaler",
                        namespace,
                        name: autoscaler.name.clone(),
                        hint: "",
                    });
                }
                Err(e) => {
                    return Err(WorkloadError::kube(
                        format!("reading HorizontalPodAutoscaler {namespace}/{}", autoscaler.name),
                        e,
                    ));
                }
            };
            // The API server defaults minReplicas to 1.
            Some(hpa.spec.min_replicas.unwrap_or(1))
        }
    };
    Ok(WorkloadSnapshot {
        target,
        selector,
        tracked,
        revision,
        release,
        primary,
        target_hpa_min_replicas,
        target_scaler,
    })
}

/// Initialisation: mirrors the HPA and creates the primary (with its config copies)
/// when missing. An existing primary (as the snapshot read it) is left as it is. Returns
/// the primary.
pub async fn initialize_primary(
    client: &Client,
    deployments: &DeploymentCache,
    configs: &ConfigReads,
    canary: &Canary,
    snapshot: &WorkloadSnapshot,
) -> Result<Deployment, WorkloadError> {
    ensure_primary_hpa(client, canary).await?;
    let replicas = primary_replicas(&snapshot.target, snapshot.primary.as_deref(), hpa_managed(canary));
    let primary = ensure_primary(client, configs, canary, snapshot, replicas).await?;
    deployments.wrote(&primary);
    Ok(primary)
}

/// Where a missing primary comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PrimarySource<'a> {
    /// The target: nothing was promoted yet (first initialisation: the target is the only
    /// version and no traffic was shifted), or the target runs the promoted revision.
    Target,
    /// The stored template of the promoted revision.
    Stored(&'a ControllerRevision),
}

/// Decides what a missing primary is rebuilt from: never from a target running anything
/// but the promoted revision (mid-release, that is the unanalysed version).
pub fn missing_primary_source<'a>(
    primary: &str,
    promoted_revision: Option<&str>,
    target_revision: &str,
    stored: &'a [ControllerRevision],
) -> Result<PrimarySource<'a>, WorkloadError> {
    let Some(promoted) = promoted_revision else {
        return Ok(PrimarySource::Target);
    };
    if let Some(revision) = stored_template_of(stored, promoted) {
        return Ok(PrimarySource::Stored(revision));
    }
    if promoted == target_revision {
        return Ok(PrimarySource::Target);
    }
    Err(WorkloadError::NoPromotedTemplate { primary: primary.to_string(), revision: promoted.to_string() })
}

/// Rebuilds a deleted primary from the stored template of `promoted_revision` (normally
/// `status.lastPromotedSpec`). Returns a message for an Event when it did; `None` when
/// the primary exists or the target is what [`initialize_primary`] creates it from.
pub async fn restore_missing_primary(
    client: &Client,
    canary: &Canary,
    snapshot: &WorkloadSnapshot,
    promoted_revision: Option<&str>,
) -> Result<Option<String>, WorkloadError> {
    if snapshot.primary.is_some() || promoted_revision.is_none() {
        return Ok(None);
    }
    let name = primary_name(&target_name(snapshot));
    let stored = list_primary_revisions(client, canary).await?;
    let source = missing_primary_source(&name, promoted_revision, &snapshot.revision, &stored)?;
    let PrimarySource::Stored(revision) = source else {
        return Ok(None);
    };
    ensure_primary_hpa(client, canary).await?;
    let replicas = (!hpa_managed(canary)).then(|| {
        let target = snapshot.target.spec.as_ref().and_then(|spec| spec.replicas).filter(|r| *r > 0);
        target.or_else(|| stored_replicas(revision)).unwrap_or(1)
    });
    rebuild_primary(client, canary, &snapshot.target, &snapshot.selector, &snapshot.tracked, revision, replicas)
        .await?;
    Ok(Some(format!(
        "Deployment {name} was missing; rebuilt from the promoted template {} ({}), not from the canary",
        stored_revision(revision).unwrap_or("?"),
        stored_release(revision).unwrap_or("unknown release"),
    )))
}

fn target_api(client: &Client, snapshot: &WorkloadSnapshot) -> Api<Deployment> {
    let namespace = snapshot.target.metadata.namespace.clone().unwrap_or_default();
    Api::namespaced(client.clone(), &namespace)
}

fn target_name(snapshot: &WorkloadSnapshot) -> String {
    snapshot.target.metadata.name.clone().unwrap_or_default()
}

/// `Action::ScaleCanaryUp`: scales the target to the primary's replicas (or the target
/// HPA's `minReplicas`). Returns the count written.
pub async fn scale_canary_up(
    client: &Client,
    deployments: &DeploymentCache,
    snapshot: &WorkloadSnapshot,
) -> Result<i32, WorkloadError> {
    let replicas = scale_up_replicas(snapshot.primary.as_deref(), snapshot.target_hpa_min_replicas);
    if let Some(scaler) = &snapshot.target_scaler {
        set_paused(client, scaler, false).await?;
    }
    let scaled = scale_target(&target_api(client, snapshot), &target_name(snapshot), replicas).await?;
    deployments.wrote(&scaled);
    Ok(replicas)
}

/// `Action::ScaleCanaryToZero`. A KEDA ScaledObject on the target is paused first, so
/// that KEDA does not scale it back up.
pub async fn scale_canary_to_zero(
    client: &Client,
    deployments: &DeploymentCache,
    snapshot: &WorkloadSnapshot,
) -> Result<(), WorkloadError> {
    if let Some(scaler) = &snapshot.target_scaler {
        set_paused(client, scaler, true).await?;
    }
    let scaled = scale_target(&target_api(client, snapshot), &target_name(snapshot), 0).await?;
    deployments.wrote(&scaled);
    Ok(())
}

/// `Action::PromoteCanaryToPrimary`: copies the tracked configs and the target's template
/// into the primary (storing the primary's previous template as a ControllerRevision).
/// Returns the applied primary; its pods run `snapshot.revision` once rolled out.
pub async fn promote_canary_to_primary(
    client: &Client,
    deployments: &DeploymentCache,
    configs: &ConfigReads,
    canary: &Canary,
    snapshot: &WorkloadSnapshot,
) -> Result<Deployment, WorkloadError> {
    ensure_primary_hpa(client, canary).await?;
    let replicas = primary_replicas(&snapshot.target, snapshot.primary.as_deref(), hpa_managed(canary));
    let primary = promote(client, configs, canary, snapshot, replicas).await?;
    deployments.wrote(&primary);
    Ok(primary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::canary::AutoscalerRef;
    use crate::workloads::CANARY_LABEL;
    use crate::workloads::fake_api::FakeApi;
    use crate::workloads::history::{KEPT_REVISIONS, REPLICAS_ANNOTATION, rollback_primary_to};
    use crate::workloads::test_support::{canary, deployment};
    use k8s_openapi::api::apps::v1::ControllerRevision;
    use k8s_openapi::api::core::v1::{ConfigMapVolumeSource, SecretVolumeSource, Volume};
    use serde_json::{Value, json};

    const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/apps/deployments";
    const CONFIG_MAPS: &str = "/api/v1/namespaces/apps/configmaps";
    const REVISIONS: &str = "/apis/apps/v1/namespaces/apps/controllerrevisions";
    const HPAS: &str = "/apis/autoscaling/v2/namespaces/apps/horizontalpodautoscalers";

    /// Target `podinfo` mounting ConfigMap `settings` and the optional Secret `maybe`.
    fn target(image: &str) -> Value {
        let mut target = deployment("podinfo", &[("app", "podinfo")], image);
        target.spec.as_mut().unwrap().template.spec.as_mut().unwrap().volumes = Some(vec![
            Volume {
                name: "settings".into(),
                config_map: Some(ConfigMapVolumeSource { name: "settings".into(), ..Default::default() }),
                ..Default::default()
            },
            Volume {
                name: "maybe".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some("maybe".into()),
                    optional: Some(true),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ]);
        serde_json::to_value(target).unwrap()
    }

    fn settings(value: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": "settings", "namespace": "apps" },
            "data": { "greeting": value }
        })
    }

    fn world(image: &str, greeting: &str) -> FakeApi {
        let fake = FakeApi::new();
        fake.insert(&format!("{DEPLOYMENTS}/podinfo"), target(image));
        fake.insert(&format!("{CONFIG_MAPS}/settings"), settings(greeting));
        fake
    }

    /// A world with the primary created from podinfo:1: the fake, its client, the Canary
    /// and the first reading.
    async fn initialized() -> (FakeApi, Client, Canary, WorkloadSnapshot) {
        let fake = world("podinfo:1", "hello");
        let client = fake.client();
        let canary = canary("podinfo");
        let first =
            read_workloads(&client, &DeploymentCache::default(), &ConfigReads::default(), &canary).await.unwrap();
        initialize_primary(&client, &DeploymentCache::default(), &ConfigReads::default(), &canary, &first)
            .await
            .unwrap();
        (fake, client, canary, first)
    }

    fn primary_image(fake: &FakeApi) -> Value {
        fake.get(&format!("{DEPLOYMENTS}/podinfo-primary")).unwrap()["spec"]["template"]["spec"]["containers"][0]
            ["image"]
            .clone()
    }

    type ConfigMapMeta = kube::core::PartialObjectMeta<k8s_openapi::api::core::v1::ConfigMap>;

    fn config_map_meta(config_map: &Value) -> ConfigMapMeta {
        ConfigMapMeta {
            metadata: serde_json::from_value(config_map["metadata"].clone()).unwrap(),
            ..Default::default()
        }
    }

    /// ConfigReads compared with a synced metadata watch of ConfigMaps that shows `shown`;
    /// its writer shows more.
    fn config_reads_watching(shown: &[Value]) -> (ConfigReads, kube::runtime::reflector::store::Writer<ConfigMapMeta>) {
        use kube::runtime::{reflector, watcher};
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        for config_map in shown {
            writer.apply_watcher_event(&watcher::Event::InitApply(config_map_meta(config_map)));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let health = crate::telemetry::WatchHealth::default();
        health.observe::<()>("configmaps", &Ok(watcher::Event::Init));
        health.observe::<()>("configmaps", &Ok(watcher::Event::InitDone));
        let reads = ConfigReads {
            config_maps: crate::cache::ReadsAtVersion::kept_by(store, health, "configmaps"),
            secrets: Default::default(),
            ledger: Default::default(),
        };
        (reads, writer)
    }

    /// The bad-input benchmark's defect: a target using 200 ConfigMaps cost 200 GETs on
    /// every reconcile (8,600 in one release of 100 Canaries). A ConfigMap is read again
    /// only when its metadata watch shows a new resourceVersion.
    #[tokio::test]
    async fn a_tracked_config_is_read_again_only_when_its_watch_shows_a_change() {
        use kube::runtime::watcher;
        let at_version = |greeting: &str, version: &str| {
            let mut config_map = settings(greeting);
            config_map["metadata"]["resourceVersion"] = json!(version);
            config_map
        };
        let fake = world("podinfo:1", "hello");
        fake.insert(&format!("{CONFIG_MAPS}/settings"), at_version("hello", "5"));
        let (reads, mut writer) = config_reads_watching(&[at_version("hello", "5")]);
        let (client, canary) = (fake.client(), canary("podinfo"));
        let gets = || fake.calls().iter().filter(|c| *c == &format!("GET {CONFIG_MAPS}/settings")).count();

        let first = read_workloads(&client, &DeploymentCache::default(), &reads, &canary).await.unwrap();
        let again = read_workloads(&client, &DeploymentCache::default(), &reads, &canary).await.unwrap();
        assert_eq!(gets(), 1, "{:?}", fake.calls());
        assert_eq!(again.revision, first.revision);
        assert_eq!(again.tracked, first.tracked, "the same ConfigMap, for the primary's copy too");

        // Changed: the watch shows version 6, so the new content is read and it is a new revision.
        fake.insert(&format!("{CONFIG_MAPS}/settings"), at_version("bonjour", "6"));
        writer.apply_watcher_event(&watcher::Event::Apply(config_map_meta(&at_version("bonjour", "6"))));
        let changed = read_workloads(&client, &DeploymentCache::default(), &reads, &canary).await.unwrap();
        assert_eq!(gets(), 2);
        assert_ne!(changed.revision, first.revision);
        read_workloads(&client, &DeploymentCache::default(), &reads, &canary).await.unwrap();
        assert_eq!(gets(), 2);
    }

    /// The bad-input benchmark's 200-ConfigMap target: every promotion applied its 200
    /// `-primary` copies again, changed or not. A copy is written when its source changed
    /// or someone else changed the copy; a promotion of a new image alone writes none.
    #[tokio::test]
    async fn a_promotion_writes_a_config_copy_only_when_it_would_change() {
        use kube::runtime::watcher;
        let fake = FakeApi::with_resource_versions();
        fake.insert(&format!("{DEPLOYMENTS}/podinfo"), target("podinfo:1"));
        let mut source = settings("hello");
        source["metadata"]["resourceVersion"] = json!("5");
        fake.insert(&format!("{CONFIG_MAPS}/settings"), source.clone());
        let (reads, mut writer) = config_reads_watching(&[source]);
        let (client, canary) = (fake.client(), canary("podinfo"));
        let copy_path = format!("{CONFIG_MAPS}/settings-primary");
        let copy_writes = || fake.writes().iter().filter(|c| **c == format!("PATCH {copy_path}")).count();
        let mut show = |object: Value| writer.apply_watcher_event(&watcher::Event::Apply(config_map_meta(&object)));

        let first = read_workloads(&client, &DeploymentCache::default(), &reads, &canary).await.unwrap();
        initialize_primary(&client, &DeploymentCache::default(), &reads, &canary, &first).await.unwrap();
        assert_eq!(copy_writes(), 1);
        show(fake.get(&copy_path).unwrap());

        // A new image, the same configuration: the copy is as written, so it is not written.
        fake.insert(&format!("{DEPLOYMENTS}/podinfo"), target("podinfo:2"));
        let second = read_workloads(&client, &DeploymentCache::default(), &reads, &canary).await.unwrap();
        promote_canary_to_primary(&client, &DeploymentCache::default(), &reads, &canary, &second).await.unwrap();
        assert_eq!(copy_writes(), 1, "{:?}", fake.writes());
        assert_eq!(primary_image(&fake), "podinfo:2", "the primary itself is promoted");

        // Someone edited the copy (the watch shows a version petrel did not write): repaired.
        let mut edited = fake.get(&copy_path).unwrap();
        edited["data"]["greeting"] = json!("tampered");
        edited["metadata"]["resourceVersion"] = json!("900");
        fake.insert(&copy_path, edited.clone());
        show(edited);
        promote_canary_to_primary(&client, &DeploymentCache::default(), &reads, &canary, &second).await.unwrap();
        assert_eq!(copy_writes(), 2);
        assert_eq!(fake.get(&copy_path).unwrap()["data"]["greeting"], "hello");
        show(fake.get(&copy_path).unwrap());

        // The source changed: the copy is written with the new content.
        let mut changed = settings("bonjour");
        changed["metadata"]["resourceVersion"] = json!("6");
        fake.insert(&format!("{CONFIG_MAPS}/settings"), changed.clone());
        show(changed);
        let third = read_workloads(&client, &DeploymentCache::default(), &reads, &canary).await.unwrap();
        promote_canary_to_primary(&client, &DeploymentCache::default(), &reads, &canary, &third).await.unwrap();
        assert_eq!(copy_writes(), 3);
        assert_eq!(fake.get(&copy_path).unwrap()["data"]["greeting"], "bonjour");

        // Without a watch to compare with (the default), every promotion writes it, as before.
        promote_canary_to_primary(&client, &DeploymentCache::default(), &ConfigReads::default(), &canary, &third)
            .await
            .unwrap();
        assert_eq!(copy_writes(), 4);
    }

    #[tokio::test]
    async fn read_workloads_tracks_configs_and_computes_the_revision() {
        let fake = world("podinfo:1", "hello");
        let snapshot =
            read_workloads(&fake.client(), &DeploymentCache::default(), &ConfigReads::default(), &canary("podinfo"))
                .await
                .unwrap();
        assert_eq!(snapshot.selector, PodSelector { key: "app".into(), value: "podinfo".into() });
        assert_eq!(snapshot.release, "podinfo:1");
        assert_eq!(snapshot.primary, None);
        let checksums = snapshot.tracked_checksums();
        assert_eq!(checksums.keys().collect::<Vec<_>>(), vec!["configmap/settings"]);
        let template = snapshot.target.spec.as_ref().unwrap().template.clone();
        assert_eq!(snapshot.revision, revision(&template, &checksums));

        let changed = world("podinfo:1", "bonjour");
        let after =
            read_workloads(&changed.client(), &DeploymentCache::default(), &ConfigReads::default(), &canary("podinfo"))
                .await
                .unwrap();
        assert_ne!(after.revision, snapshot.revision, "a config change is a new revision");
        assert_eq!(after.release, snapshot.release, "but not a new release identity");
    }

    #[tokio::test]
    async fn missing_target_or_required_config_is_stalled() {
        let error = read_workloads(
            &FakeApi::new().client(),
            &DeploymentCache::default(),
            &ConfigReads::default(),
            &canary("podinfo"),
        )
        .await
        .unwrap_err();
        assert!(matches!(error, WorkloadError::TargetNotFound { .. }), "{error}");
        assert!(error.is_stalled());

        let fake = FakeApi::new();
        fake.insert(&format!("{DEPLOYMENTS}/podinfo"), target("podinfo:1"));
        let error =
            read_workloads(&fake.client(), &DeploymentCache::default(), &ConfigReads::default(), &canary("podinfo"))
                .await
                .unwrap_err();
        assert!(matches!(&error, WorkloadError::MissingConfig { name, .. } if name == "settings"), "{error}");
        assert!(error.is_stalled());
    }

    #[tokio::test]
    async fn initialize_creates_the_primary_and_its_configs_once() {
        let fake = world("podinfo:1", "hello");
        let client = fake.client();
        let canary = canary("podinfo");
        let snapshot =
            read_workloads(&client, &DeploymentCache::default(), &ConfigReads::default(), &canary).await.unwrap();
        initialize_primary(&client, &DeploymentCache::default(), &ConfigReads::default(), &canary, &snapshot)
            .await
            .unwrap();
        let revision_name = format!("podinfo-primary-{}", snapshot.revision);
        assert_eq!(
            fake.writes(),
            vec![
                format!("PATCH {CONFIG_MAPS}/settings-primary"),
                format!("PATCH {REVISIONS}/{revision_name}"),
                format!("POST {DEPLOYMENTS}")
            ]
        );
        // The first template is stored, so a deleted primary can be rebuilt from it.
        let stored = fake.get(&format!("{REVISIONS}/{revision_name}")).unwrap();
        assert_eq!(stored["revision"], 1);
        assert_eq!(stored["metadata"]["annotations"][REPLICAS_ANNOTATION], "3");
        let post = fake.requests().into_iter().find(|r| r.method == "POST").unwrap();
        assert!(post.query.contains("fieldManager=petrel"), "{}", post.query);
        let primary = fake.get(&format!("{DEPLOYMENTS}/podinfo-primary")).unwrap();
        assert_eq!(primary["spec"]["replicas"], 3);
        assert_eq!(primary["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"], "settings-primary");
        assert_eq!(primary["spec"]["template"]["spec"]["volumes"][1]["secret"]["secretName"], "maybe");
        assert_eq!(primary["spec"]["template"]["metadata"]["annotations"][REVISION_ANNOTATION], snapshot.revision);

        // Once it exists, the primary is not touched again, even if the target changed.
        fake.insert(&format!("{DEPLOYMENTS}/podinfo"), target("podinfo:2"));
        let snapshot =
            read_workloads(&client, &DeploymentCache::default(), &ConfigReads::default(), &canary).await.unwrap();
        let writes_before = fake.writes().len();
        initialize_primary(&client, &DeploymentCache::default(), &ConfigReads::default(), &canary, &snapshot)
            .await
            .unwrap();
        assert_eq!(fake.writes().len(), writes_before);
        assert_eq!(primary_image(&fake), "podinfo:1");
    }

    #[tokio::test]
    async fn scaling_patches_only_the_target_replicas() {
        let fake = world("podinfo:1", "hello");
        let client = fake.client();
        let canary = canary("podinfo");
        let snapshot =
            read_workloads(&client, &DeploymentCache::default(), &ConfigReads::default(), &canary).await.unwrap();
        initialize_primary(&client, &DeploymentCache::default(), &ConfigReads::default(), &canary, &snapshot)
            .await
            .unwrap();
        scale_canary_to_zero(&client, &DeploymentCache::default(), &snapshot).await.unwrap();
        assert_eq!(fake.get(&format!("{DEPLOYMENTS}/podinfo")).unwrap()["spec"]["replicas"], 0);
        let patch = fake.requests().into_iter().rev().find(|r| r.method == "PATCH").unwrap();
        assert!(patch.content_type.contains("merge-patch"), "{}", patch.content_type);
        assert_eq!(patch.body, Some(json!({ "spec": { "replicas": 0 } })));
        assert!(patch.query.contains("fieldManager=petrel"));

        // Scaling up uses the primary's replicas, not the target's (now 0).
        let snapshot =
            read_workloads(&client, &DeploymentCache::default(), &ConfigReads::default(), &canary).await.unwrap();
        assert_eq!(scale_canary_up(&client, &DeploymentCache::default(), &snapshot).await.unwrap(), 3);
        assert_eq!(fake.get(&format!("{DEPLOYMENTS}/podinfo")).unwrap()["spec"]["replicas"], 3);
    }

    #[tokio::test]
    async fn promotion_copies_configs_then_stores_the_new_template_then_replaces_it() {
        let (fake, client, canary, first) = initialized().await;

        fake.insert(&format!("{DEPLOYMENTS}/podinfo"), target("podinfo:2"));
        fake.insert(&format!("{CONFIG_MAPS}/settings"), settings("bonjour"));
        let second =
            read_workloads(&client, &DeploymentCache::default(), &ConfigReads::default(), &canary).await.unwrap();
        let writes_before = fake.writes().len();
        promote_canary_to_primary(&client, &DeploymentCache::default(), &ConfigReads::default(), &canary, &second)
            .await
            .unwrap();
        let first_name = format!("podinfo-primary-{}", first.revision);
        let second_name = format!("podinfo-primary-{}", second.revision);
        // The template the primary ran is stored (as the newest) already: only the new one is written.
        assert_eq!(
            fake.writes()[writes_before..].to_vec(),
            vec![
                format!("PATCH {CONFIG_MAPS}/settings-primary"),
                format!("PATCH {REVISIONS}/{second_name}"),
                format!("PATCH {DEPLOYMENTS}/podinfo-primary"),
            ]
        );
        assert_eq!(primary_image(&fake), "podinfo:2");
        assert_eq!(fake.get(&format!("{CONFIG_MAPS}/settings-primary")).unwrap()["data"]["greeting"], "bonjour");
        let stored = fake.get(&format!("{REVISIONS}/{first_name}")).unwrap();
        assert_eq!(stored["revision"], 1);
        assert_eq!(stored["metadata"]["labels"][CANARY_LABEL], "podinfo");
        assert_eq!(stored["data"]["release"], "podinfo:1");
        assert_eq!(stored["data"]["revision"], first.revision.as_str());
        let newest = fake.get(&format!("{REVISIONS}/{second_name}")).unwrap();
        assert_eq!((newest["revision"].clone(), newest["data"]["release"].clone()), (json!(2), json!("podinfo:2")));

        // The primary now runs the second revision (once its rollout finishes).
        let snapshot =
            read_workloads(&client, &DeploymentCache::default(), &ConfigReads::default(), &canary).await.unwrap();
        let primary = snapshot.primary.as_ref().unwrap();
        assert_eq!(
            primary.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().annotations.as_ref().unwrap()
                [REVISION_ANNOTATION],
            second.revision
        );
    }

    fn old_revision(fake: &FakeApi, n: i64) {
        fake.insert(
            &format!("{REVISIONS}/old-{n:02}"),
            json!({
                "apiVersion": "apps/v1", "kind": "ControllerRevision",
                "metadata": { "name": format!("old-{n:02}"), "namespace": "apps",
                              "labels": { CANARY_LABEL: "podinfo" } },
                "revision": n
            }),
        );
    }

    #[tokio::test]
    async fn history_keeps_the_newest_ten_and_rollback_restores_a_template() {
        let fake = world("podinfo:1", "hello");
        let client = fake.client();
        let canary = canary("podinfo");
        for n in 1..=KEPT_REVISIONS as i64 {
            old_revision(&fake, n);
        }
        let first =
            read_workloads(&client, &DeploymentCache::default(), &ConfigReads::default(), &canary).await.unwrap();
        initialize_primary(&client, &DeploymentCache::default(), &ConfigReads::default(), &canary, &first)
            .await
            .unwrap();
        fake.insert(&format!("{DEPLOYMENTS}/podinfo"), target("podinfo:2"));
        let second =
            read_workloads(&client, &DeploymentCache::default(), &ConfigReads::default(), &canary).await.unwrap();
        promote_canary_to_primary(&client, &DeploymentCache::default(), &ConfigReads::default(), &canary, &second)
            .await
            .unwrap();
        assert!(fake.calls().contains(&format!("DELETE {REVISIONS}/old-01")));
        assert!(fake.calls().contains(&format!("DELETE {REVISIONS}/old-02")));
        let revisions: Api<ControllerRevision> = Api::namespaced(client.clone(), "apps");
        let stored = revisions.list(&Default::default()).await.unwrap().items;
        assert_eq!(stored.len(), KEPT_REVISIONS);
        let newest = stored.iter().max_by_key(|r| r.revision).unwrap().clone();
        assert_eq!((newest.revision, newest.metadata.name), (12, Some(format!("podinfo-primary-{}", second.revision))));
        let previous = stored.iter().find(|r| r.revision == 11).unwrap().clone();
        assert_eq!(previous.metadata.name, Some(format!("podinfo-primary-{}", first.revision)));

        let restored = rollback_primary_to(&client, &canary, "podinfo-primary", &previous).await.unwrap();
        assert_eq!(primary_image(&fake), "podinfo:1");
        assert!(primary_runs_revision_annotation(&restored, &first.revision));
        // The template rolled back to is the newest now; the one rolled back from stays,
        // so the rollback can be undone.
        let after = revisions.list(&Default::default()).await.unwrap().items;
        let newest = after.iter().max_by_key(|r| r.revision).unwrap();
        assert_eq!((newest.revision, newest.metadata.name.clone()), (13, previous.metadata.name.clone()));
        assert!(after.iter().any(|r| r.metadata.name == Some(format!("podinfo-primary-{}", second.revision))));
        assert_eq!(after.len(), KEPT_REVISIONS);
    }

    #[tokio::test]
    async fn a_promotion_and_a_rollback_list_the_stored_revisions_once_each() {
        let (fake, client, canary, first) = initialized().await;
        let lists = |fake: &FakeApi| fake.calls().iter().filter(|call| **call == format!("GET {REVISIONS}")).count();
        fake.insert(&format!("{DEPLOYMENTS}/podinfo"), target("podinfo:2"));
        let second =
            read_workloads(&client, &DeploymentCache::default(), &ConfigReads::default(), &canary).await.unwrap();
        let before = lists(&fake);
        promote_canary_to_primary(&client, &DeploymentCache::default(), &ConfigReads::default(), &canary, &second)
            .await
            .unwrap();
        assert_eq!(lists(&fake) - before, 1, "{:#?}", fake.calls());

        let revisions: Api<ControllerRevision> = Api::namespaced(client.clone(), "apps");
        let stored = revisions.list(&Default::default()).await.unwrap().items;
        let numbered = |name: String| stored.iter().find(|r| r.metadata.name == Some(name.clone())).map(|r| r.revision);
        assert_eq!(numbered(format!("podinfo-primary-{}", first.revision)), Some(1));
        assert_eq!(numbered(format!("podinfo-primary-{}", second.revision)), Some(2));
        let old = stored.iter().find(|r| r.revision == 1).unwrap().clone();
        let before = lists(&fake);
        rollback_primary_to(&client, &canary, "podinfo-primary", &old).await.unwrap();
        assert_eq!(lists(&fake) - before, 1, "{:#?}", fake.calls());
        assert_eq!(primary_image(&fake), "podinfo:1");
        let after = revisions.list(&Default::default()).await.unwrap().items;
        let newest = after.iter().max_by_key(|r| r.revision).unwrap();
        assert_eq!((newest.revision, newest.metadata.name.clone()), (3, old.metadata.name.clone()));
    }

    #[tokio::test]
    async fn a_retried_promotion_or_rollback_to_the_current_template_writes_no_history() {
        let (fake, client, canary, _) = initialized().await;
        fake.insert(&format!("{DEPLOYMENTS}/podinfo"), target("podinfo:2"));
        let second =
            read_workloads(&client, &DeploymentCache::default(), &ConfigReads::default(), &canary).await.unwrap();
        let revision_writes =
            |fake: &FakeApi| fake.writes().into_iter().filter(|c| c.contains("controllerrevisions/")).count();
        promote_canary_to_primary(&client, &DeploymentCache::default(), &ConfigReads::default(), &canary, &second)
            .await
            .unwrap();
        assert_eq!(revision_writes(&fake), 2, "the first template at creation, the second at promotion");
        promote_canary_to_primary(&client, &DeploymentCache::default(), &ConfigReads::default(), &canary, &second)
            .await
            .unwrap();
        assert_eq!(revision_writes(&fake), 2, "a retried promotion stores nothing");

        let stored: Api<ControllerRevision> = Api::namespaced(client.clone(), "apps");
        let by_release = |release: &str| {
            let stored = stored.clone();
            let release = release.to_string();
            async move {
                stored
                    .list(&Default::default())
                    .await
                    .unwrap()
                    .items
                    .into_iter()
                    .find(|r| crate::workloads::stored_release(r) == Some(release.as_str()))
                    .unwrap()
            }
        };
        let old = by_release("podinfo:1").await;
        rollback_primary_to(&client, &canary, "podinfo-primary", &old).await.unwrap();
        assert_eq!(primary_image(&fake), "podinfo:1");
        assert_eq!(revision_writes(&fake), 3, "the template rolled back to is renumbered as the newest");
        let writes = fake.writes().len();
        rollback_primary_to(&client, &canary, "podinfo-primary", &old).await.unwrap();
        assert_eq!(fake.writes().len(), writes, "second rollback to the same template is a no-op");
        let new = by_release("podinfo:2").await;
        rollback_primary_to(&client, &canary, "podinfo-primary", &new).await.unwrap();
        assert_eq!(primary_image(&fake), "podinfo:2");
        let writes = fake.writes().len();
        rollback_primary_to(&client, &canary, "podinfo-primary", &new).await.unwrap();
        assert_eq!(fake.writes().len(), writes, "second rollback to the same template is a no-op");
    }

    #[test]
    fn a_missing_primary_comes_from_the_promoted_template_never_from_an_unanalysed_target() {
        let stored = |name: &str, number: i64, revision: &str| ControllerRevision {
            metadata: kube::core::ObjectMeta { name: Some(name.into()), ..Default::default() },
            data: Some(k8s_openapi::apimachinery::pkg::runtime::RawExtension(json!({ "revision": revision }))),
            revision: number,
        };
        let history = vec![stored("a", 1, "r1"), stored("b", 2, "r2"), stored("c", 3, "r3")];
        let source = |promoted: Option<&str>, target: &str, history: &[ControllerRevision]| {
            missing_primary_source("podinfo-primary", promoted, target, history)
                .map(|s| match s {
                    PrimarySource::Target => "target".to_string(),
                    PrimarySource::Stored(r) => r.metadata.name.clone().unwrap(),
                })
                .map_err(|e| e.to_string())
        };
        // Nothing promoted yet: the target is the only version.
        assert_eq!(source(None, "r9", &history), Ok("target".into()));
        // Mid-release: the promoted template, whatever is newer in history or on the target.
        assert_eq!(source(Some("r2"), "r9", &history), Ok("b".into()));
        // Promoted before its template was kept: only a target running it will do.
        assert_eq!(source(Some("r7"), "r7", &history), Ok("target".into()));
        let refused = source(Some("r7"), "r9", &history).unwrap_err();
        assert!(refused.contains("never rebuilt from the canary") && refused.contains("r7"), "{refused}");
        assert!(WorkloadError::NoPromotedTemplate { primary: "p".into(), revision: "r".into() }.is_stalled());
    }

    #[tokio::test]
    async fn a_deleted_primary_is_rebuilt_from_the_promoted_template() {
        let (fake, client, canary, first) = initialized().await;
        // A release of podinfo:2 is under analysis when the primary is deleted.
        fake.insert(&format!("{DEPLOYMENTS}/podinfo"), target("podinfo:2"));
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), "apps");
        deployments.delete("podinfo-primary", &Default::default()).await.unwrap();
        let mid_release =
            read_workloads(&client, &DeploymentCache::default(), &ConfigReads::default(), &canary).await.unwrap();
        assert!(mid_release.primary.is_none());

        let message = restore_missing_primary(&client, &canary, &mid_release, Some(&first.revision)).await.unwrap();
        assert!(message.unwrap().contains("podinfo:1"));
        assert_eq!(primary_image(&fake), "podinfo:1", "rebuilt from the promoted template, not the canary");
        let rebuilt = fake.get(&format!("{DEPLOYMENTS}/podinfo-primary")).unwrap();
        assert_eq!(rebuilt["spec"]["template"]["metadata"]["annotations"][REVISION_ANNOTATION], first.revision);
        assert_eq!(rebuilt["spec"]["replicas"], 3);
        assert_eq!(rebuilt["metadata"]["ownerReferences"][0]["uid"], "c0ffee-uid");
        // initialize_primary then finds it and leaves it alone.
        initialize_primary(&client, &DeploymentCache::default(), &ConfigReads::default(), &canary, &mid_release)
            .await
            .unwrap();
        assert_eq!(primary_image(&fake), "podinfo:1");
        // An existing primary is never rebuilt.
        let now = read_workloads(&client, &DeploymentCache::default(), &ConfigReads::default(), &canary).await.unwrap();
        assert_eq!(restore_missing_primary(&client, &canary, &now, Some(&first.revision)).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_primary_left_by_a_deleted_canary_is_adopted() {
        let fake = world("podinfo:1", "hello");
        let client = fake.client();
        let canary = canary("podinfo");
        let snapshot =
            read_workloads(&client, &DeploymentCache::default(), &ConfigReads::default(), &canary).await.unwrap();
        initialize_primary(&client, &DeploymentCache::default(), &ConfigReads::default(), &canary, &snapshot)
            .await
            .unwrap();
        let path = format!("{DEPLOYMENTS}/podinfo-primary");
        let mut released = fake.get(&path).unwrap();
        released["metadata"]["ownerReferences"] = Value::Null;
        released["metadata"]["resourceVersion"] = json!("5");
        fake.insert(&path, released);
        let mut recreated = canary.clone();
        recreated.metadata.uid = Some("new-uid".into());
        initialize_primary(
            &client,
            &DeploymentCache::default(),
            &ConfigReads::default(),
            &recreated,
            &read_workloads(&client, &DeploymentCache::default(), &ConfigReads::default(), &recreated).await.unwrap(),
        )
        .await
        .unwrap();
        let adopted = fake.get(&path).unwrap();
        assert_eq!(adopted["metadata"]["ownerReferences"][0]["uid"], "new-uid");
        let patch = fake.requests().into_iter().rev().find(|r| r.path == path && r.method == "PATCH").unwrap();
        assert_eq!(patch.body.unwrap()["metadata"]["resourceVersion"], "5", "adoption is conditional");
        // One owned by another Canary is not taken.
        let mut other = recreated.clone();
        other.metadata.uid = Some("other-uid".into());
        let current: Deployment = serde_json::from_value(fake.get(&path).unwrap()).unwrap();
        assert_eq!(crate::workloads::primary::adoption_patch(&other, &current).unwrap(), None);
    }

    fn primary_runs_revision_annotation(primary: &Deployment, revision: &str) -> bool {
        primary.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().annotations.as_ref().unwrap()
            [REVISION_ANNOTATION]
            == revision
    }

    fn with_hpa(mut canary: Canary) -> Canary {
        canary.spec.autoscaler_ref = Some(AutoscalerRef {
            api_version: Some("autoscaling/v2".into()),
            kind: "HorizontalPodAutoscaler".into(),
            name: "podinfo".into(),
            ..Default::default()
        });
        canary
    }

    #[tokio::test]
    async fn hpa_is_mirrored_and_leaves_replicas_alone() {
        let fake = world("podinfo:1", "hello");
        fake.insert(
            &format!("{HPAS}/podinfo"),
            json!({
                "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                "metadata": { "name": "podinfo", "namespace": "apps" },
                "spec": {
                    "scaleTargetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo" },
                    "minReplicas": 2, "maxReplicas": 6
                }
            }),
        );
        let client = fake.client();
        let canary = with_hpa(canary("podinfo"));
        let snapshot =
            read_workloads(&client, &DeploymentCache::default(), &ConfigReads::default(), &canary).await.unwrap();
        assert_eq!(snapshot.target_hpa_min_replicas, Some(2));
        let created =
            initialize_primary(&client, &DeploymentCache::default(), &ConfigReads::default(), &canary, &snapshot)
                .await
                .unwrap();
        assert_eq!(created.spec.unwrap().replicas, None);
        let mirrored = fake.get(&format!("{HPAS}/podinfo-primary")).unwrap();
        assert_eq!(mirrored["spec"]["scaleTargetRef"]["name"], "podinfo-primary");
        assert_eq!(mirrored["spec"]["maxReplicas"], 6);
        assert_eq!(scale_canary_up(&client, &DeploymentCache::default(), &snapshot).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn a_keda_scaled_object_is_mirrored_and_paused_while_the_target_is_at_zero() {
        const SCALED_OBJECTS: &str = "/apis/keda.sh/v1alpha1/namespaces/apps/scaledobjects";
        let fake = world("podinfo:1", "hello");
        fake.insert(
            &format!("{SCALED_OBJECTS}/podinfo"),
            json!({
                "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
                "metadata": { "name": "podinfo", "namespace": "apps" },
                "spec": {
                    "scaleTargetRef": { "name": "podinfo" }, "minReplicaCount": 2, "maxReplicaCount": 6,
                    "triggers": [{ "type": "prometheus", "name": "rps", "metadata": { "query": "rate(x{app=\"podinfo\"}[1m])" } }]
                }
            }),
        );
        let client = fake.client();
        let mut canary = canary("podinfo");
        canary.spec.autoscaler_ref = Some(AutoscalerRef {
            api_version: Some("keda.sh/v1alpha1".into()),
            kind: "ScaledObject".into(),
            name: "podinfo".into(),
            ..Default::default()
        });
        let snapshot =
            read_workloads(&client, &DeploymentCache::default(), &ConfigReads::default(), &canary).await.unwrap();
        assert_eq!(snapshot.target_hpa_min_replicas, Some(2));
        initialize_primary(&client, &DeploymentCache::default(), &ConfigReads::default(), &canary, &snapshot)
            .await
            .unwrap();
        let primary = fake.get(&format!("{SCALED_OBJECTS}/podinfo-primary")).unwrap();
        assert_eq!(primary["spec"]["scaleTargetRef"]["name"], "podinfo-primary");
        assert_eq!(primary["spec"]["triggers"][0]["metadata"]["query"], "rate(x{app=\"podinfo-primary\"}[1m])");

        scale_canary_to_zero(&client, &DeploymentCache::default(), &snapshot).await.unwrap();
        let target = fake.get(&format!("{SCALED_OBJECTS}/podinfo")).unwrap();
        assert_eq!(target["metadata"]["annotations"]["autoscaling.keda.sh/paused-replicas"], "0");
        let snapshot =
            read_workloads(&client, &DeploymentCache::default(), &ConfigReads::default(), &canary).await.unwrap();
        assert!(snapshot.target_scaler.as_ref().unwrap().paused);
        assert_eq!(scale_canary_up(&client, &DeploymentCache::default(), &snapshot).await.unwrap(), 2);
        let target = fake.get(&format!("{SCALED_OBJECTS}/podinfo")).unwrap();
        assert!(target["metadata"]["annotations"].get("autoscaling.keda.sh/paused-replicas").is_none(), "{target}");
    }

    #[tokio::test]
    async fn a_missing_scaled_object_names_keda() {
        let fake = world("podinfo:1", "hello");
        let mut canary = canary("podinfo");
        canary.spec.autoscaler_ref =
            Some(AutoscalerRef { kind: "ScaledObject".into(), name: "podinfo".into(), ..Default::default() });
        let error = read_workloads(&fake.client(), &DeploymentCache::default(), &ConfigReads::default(), &canary)
            .await
            .unwrap_err();
        assert!(matches!(error, WorkloadError::AutoscalerNotFound { .. }), "{error}");
        assert!(
            error.to_string().contains("ScaledObject apps/podinfo") && error.to_string().contains("KEDA"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn missing_hpa_is_stalled() {
        let fake = world("podinfo:1", "hello");
        let error = read_workloads(
            &fake.client(),
            &DeploymentCache::default(),
            &ConfigReads::default(),
            &with_hpa(canary("podinfo")),
        )
        .await
        .unwrap_err();
        assert!(matches!(error, WorkloadError::AutoscalerNotFound { .. }), "{error}");
        assert!(error.is_stalled());
        assert!(ensure_primary_hpa(&fake.client(), &with_hpa(canary("podinfo"))).await.is_err());
    }

    #[test]
    fn primary_health_before_creation_is_not_ready() {
        let snapshot = WorkloadSnapshot {
            target: Arc::new(serde_json::from_value(target("podinfo:1")).unwrap()),
            selector: PodSelector { key: "app".into(), value: "podinfo".into() },
            tracked: TrackedConfigs::default(),
            revision: "r".into(),
            release: "podinfo:1".into(),
            primary: None,
            target_hpa_min_replicas: None,
            target_scaler: None,
        };
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        assert!(matches!(
            snapshot.primary_health(&canary("podinfo"), now),
            WorkloadHealth::NotReady { reason } if reason.contains("podinfo-primary")
        ));
        assert!(!snapshot.primary_runs("r"));
    }
}
