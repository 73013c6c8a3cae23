//! A DaemonSet target (`targetRef` kind `DaemonSet`, apps/v1), as Flagger's
//! `DaemonSetController` runs it.
//!
//! The user's DaemonSet is the canary; petrel keeps a `<name>-primary` DaemonSet clone
//! that serves stable traffic. A DaemonSet has no replica count: Flagger "scales it to
//! zero" by adding the node selector `flagger.app/scale-to-zero: "true"` to its pod
//! template (no node carries that label, so no pod is scheduled) and scales it up by
//! removing it again. petrel does the same, with the same key, so a DaemonSet Flagger
//! scaled down is recognised as scaled down. That key is never part of the revision and
//! never copied into the primary.
//!
//! During an analysis both DaemonSets run one pod per node side by side: traffic goes
//! to one or the other (blue/green iterations), never split by weight (refused at
//! admission, see `api::canary`).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};

use super::configs::{ConfigNames, ConfigReads, TrackedConfigs, copy_configs_to_primary, read_tracked_configs_of};
use super::primary::{adoption_patch, copyable_metadata, primary_name, primary_template};
use super::revision::{release_identity, revision};
use super::selector::{PodSelector, SELECTOR_LABELS, primary_value};
use super::{
    CANARY_LABEL, FIELD_MANAGER, MANAGED_BY_LABEL, REVISION_ANNOTATION, WorkloadError, apply_params, canary_name,
    canary_namespace, canary_owner_reference, is_not_found,
};
use crate::api::Canary;
use crate::core::WorkloadHealth;

/// The node selector that keeps a DaemonSet's pods off every node (Flagger's
/// `daemonSetScaleDownNodeSelector`).
pub const SCALE_DOWN_NODE_SELECTOR: (&str, &str) = ("flagger.app/scale-to-zero", "true");

/// A DaemonSet target as read at the start of a reconcile.
#[derive(Clone, Debug, PartialEq)]
pub struct DaemonSetSnapshot {
    /// The user's DaemonSet (the canary).
    pub target: DaemonSet,
    pub selector: PodSelector,
    pub tracked: TrackedConfigs,
    /// Revision of the target's template without the scale-down node selector.
    pub revision: String,
    pub release: String,
    /// The `-primary` DaemonSet, once created.
    pub primary: Option<DaemonSet>,
}

fn name_of(daemon_set: &DaemonSet) -> String {
    daemon_set.metadata.name.clone().unwrap_or_default()
}

/// The template without the scale-down node selector: what the user asked for.
pub fn unscaled_template(template: &PodTemplateSpec) -> PodTemplateSpec {
    let mut template = template.clone();
    if let Some(spec) = template.spec.as_mut() {
        if let Some(selector) = spec.node_selector.as_mut() {
            selector.remove(SCALE_DOWN_NODE_SELECTOR.0);
        }
        if spec.node_selector.as_ref().is_some_and(BTreeMap::is_empty) {
            spec.node_selector = None;
        }
    }
    template
}

/// Whether the DaemonSet carries the scale-down node selector.
pub fn is_scaled_down(daemon_set: &DaemonSet) -> bool {
    daemon_set
        .spec
        .as_ref()
        .and_then(|spec| spec.template.spec.as_ref())
        .and_then(|pod| pod.node_selector.as_ref())
        .is_some_and(|selector| selector.contains_key(SCALE_DOWN_NODE_SELECTOR.0))
}

/// The merge patch that scales the target down (adds the node selector) or up (removes
/// it; `null` deletes a key in a JSON merge patch). The rest of the template is the user's.
pub fn scale_patch(down: bool) -> serde_json::Value {
    let value = if down { serde_json::json!(SCALE_DOWN_NODE_SELECTOR.1) } else { serde_json::Value::Null };
    serde_json::json!({ "spec": { "template": { "spec": { "nodeSelector": { SCALE_DOWN_NODE_SELECTOR.0: value } } } } })
}

/// Checks what petrel needs of a target DaemonSet and finds its selector label: one of
/// [`SELECTOR_LABELS`] in `spec.selector.matchLabels`, and the RollingUpdate strategy
/// (Flagger refuses OnDelete too: the primary would never roll its pods at promotion).
pub fn check_target(target: &DaemonSet) -> Result<PodSelector, WorkloadError> {
    let name = name_of(target);
    let invalid = |reason: String| WorkloadError::InvalidDaemonSet { name: name.clone(), reason };
    let spec = target.spec.as_ref().ok_or_else(|| invalid("it has no spec".into()))?;
    if let Some(strategy) = spec.update_strategy.as_ref().and_then(|s| s.type_.as_deref())
        && strategy != "RollingUpdate"
    {
        return Err(invalid(format!(
            "spec.updateStrategy.type is {strategy}; petrel (like Flagger) needs RollingUpdate so that the primary's pods roll at promotion"
        )));
    }
    let match_labels = spec.selector.match_labels.as_ref();
    SELECTOR_LABELS
        .iter()
        .find_map(|key| {
            match_labels?.get(*key).map(|value| PodSelector { key: key.to_string(), value: value.clone() })
        })
        .ok_or_else(|| {
            invalid(format!(
                "spec.selector.matchLabels has none of the labels {SELECTOR_LABELS:?}; petrel needs one of them to tell primary pods from canary pods"
            ))
        })
}

/// The primary DaemonSet of a target: its template (without the scale-down node
/// selector) with the selector label suffixed, config references pointing at the
/// `-primary` copies and the revision recorded; the target's update settings.
pub fn build_primary(
    target: &DaemonSet,
    canary: &Canary,
    selector: &PodSelector,
    configs: &ConfigNames,
    revision: &str,
) -> Result<DaemonSet, WorkloadError> {
    let spec = target
        .spec
        .as_ref()
        .ok_or_else(|| WorkloadError::InvalidDaemonSet { name: name_of(target), reason: "it has no spec".into() })?;
    let (mut labels, annotations) = copyable_metadata(&target.metadata);
    labels.insert(MANAGED_BY_LABEL.to_string(), "petrel".to_string());
    labels.insert(CANARY_LABEL.to_string(), canary_name(canary)?);
    let template = primary_template(&unscaled_template(&spec.template), selector, configs, revision);
    Ok(DaemonSet {
        metadata: ObjectMeta {
            name: Some(primary_name(&name_of(target))),
            namespace: target.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references: Some(vec![canary_owner_reference(canary)?]),
            ..Default::default()
        },
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(BTreeMap::from([(selector.key.clone(), primary_value(selector))])),
                match_expressions: None,
            },
            template,
            update_strategy: spec.update_strategy.clone(),
            min_ready_seconds: spec.min_ready_seconds,
            revision_history_limit: spec.revision_history_limit,
        }),
        status: None,
    })
}

/// Why the DaemonSet is not ready yet, or `None` when it is (Flagger's
/// `isDaemonSetReady`): its generation observed, every scheduled pod updated and at
/// least `ready_threshold_percent` of them (rounded up) available.
fn readiness_gap(daemon_set: &DaemonSet, ready_threshold_percent: i32) -> Option<String> {
    let name = name_of(daemon_set);
    let status = daemon_set.status.clone().unwrap_or_default();
    let generation = daemon_set.metadata.generation.unwrap_or(0);
    let observed = status.observed_generation.unwrap_or(0);
    if observed < generation {
        return Some(format!(
            "DaemonSet {name}: generation {generation} not yet observed by the controller (observed {observed})"
        ));
    }
    let desired = status.desired_number_scheduled;
    let updated = status.updated_number_scheduled.unwrap_or(0);
    if updated < desired {
        return Some(format!("DaemonSet {name}: {updated} of {desired} pods updated"));
    }
    let threshold = i64::from(ready_threshold_percent.clamp(0, 100));
    let required = (i64::from(desired) * threshold + 99) / 100;
    let available = status.number_available.unwrap_or(0);
    (i64::from(available) < required).then(|| {
        format!("DaemonSet {name}: {available} of {desired} pods available, {required} required ({threshold}%)")
    })
}

/// Health of a DaemonSet. A DaemonSet has no progress condition: as in Flagger, the
/// deadline counts from `since` (the Canary's last transition).
pub fn daemon_set_health(
    daemon_set: &DaemonSet,
    ready_threshold_percent: i32,
    progress_deadline: Duration,
    since: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> WorkloadHealth {
    let Some(gap) = readiness_gap(daemon_set, ready_threshold_percent) else {
        return WorkloadHealth::Ready;
    };
    let deadline = TimeDelta::from_std(progress_deadline).unwrap_or(TimeDelta::MAX);
    match since {
        Some(since) if now.signed_duration_since(since) > deadline => WorkloadHealth::DeadlineExceeded {
            reason: format!("{gap}, not ready for more than {}s", progress_deadline.as_secs()),
        },
        _ => WorkloadHealth::NotReady { reason: gap },
    }
}

/// Whether the primary's template is `revision` and its pods all run it and are available.
pub fn primary_runs_revision(primary: &DaemonSet, revision: &str) -> bool {
    let annotated = primary
        .spec
        .as_ref()
        .and_then(|spec| spec.template.metadata.as_ref())
        .and_then(|meta| meta.annotations.as_ref())
        .and_then(|annotations| annotations.get(REVISION_ANNOTATION));
    annotated.is_some_and(|a| a == revision) && readiness_gap(primary, 100).is_none()
}

const DEFAULT_READY_THRESHOLD_PERCENT: i32 = 100;

impl DaemonSetSnapshot {
    fn threshold(canary: &Canary, primary: bool) -> i32 {
        let analysis = canary.spec.analysis.as_ref();
        let threshold = if primary {
            analysis.and_then(|a| a.primary_ready_threshold)
        } else {
            analysis.and_then(|a| a.canary_ready_threshold)
        };
        threshold.unwrap_or(DEFAULT_READY_THRESHOLD_PERCENT)
    }

    fn since(canary: &Canary) -> Option<DateTime<Utc>> {
        canary.status.as_ref().and_then(|s| s.last_transition_time)
    }

    pub fn canary_health(&self, canary: &Canary, now: DateTime<Utc>) -> WorkloadHealth {
        let deadline = crate::core::strategy::progress_deadline(&canary.spec);
        daemon_set_health(&self.target, Self::threshold(canary, false), deadline, Self::since(canary), now)
    }

    pub fn primary_health(&self, canary: &Canary, now: DateTime<Utc>) -> WorkloadHealth {
        let Some(primary) = &self.primary else {
            return WorkloadHealth::NotReady {
                reason: format!("DaemonSet {} not created yet", primary_name(&canary.spec.target_ref.name)),
            };
        };
        let deadline = crate::core::strategy::progress_deadline(&canary.spec);
        daemon_set_health(primary, Self::threshold(canary, true), deadline, Self::since(canary), now)
    }

    /// Revision and release of the primary's template, when petrel wrote it.
    pub fn primary_template(&self) -> Option<(String, String)> {
        let template = &self.primary.as_ref()?.spec.as_ref()?.template;
        let revision = template.metadata.as_ref()?.annotations.as_ref()?.get(REVISION_ANNOTATION)?.clone();
        Some((revision, release_identity(template)))
    }

    pub fn primary_runs(&self, revision: &str) -> bool {
        self.primary.as_ref().is_some_and(|primary| primary_runs_revision(primary, revision))
    }
}

fn api(client: &Client, namespace: &str) -> Api<DaemonSet> {
    Api::namespaced(client.clone(), namespace)
}

/// Reads the target DaemonSet, its tracked configs and its primary.
pub async fn read_daemon_sets(
    client: &Client,
    configs: &ConfigReads,
    canary: &Canary,
) -> Result<DaemonSetSnapshot, WorkloadError> {
    let namespace = canary_namespace(canary)?;
    let name = canary.spec.target_ref.name.clone();
    let daemon_sets = api(client, &namespace);
    let target = daemon_sets
        .get_opt(&name)
        .await
        .map_err(|e| WorkloadError::kube(format!("reading DaemonSet {namespace}/{name}"), e))?
        .ok_or_else(|| WorkloadError::DaemonSetNotFound { namespace: namespace.clone(), name: name.clone() })?;
    let selector = check_target(&target)?;
    let template = unscaled_template(&target.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default());
    let tracked = read_tracked_configs_of(client, configs, &target.metadata, template.spec.as_ref()).await?;
    let revision = revision(&template, &tracked.checksums());
    let release = release_identity(&template);
    let primary_name = primary_name(&name);
    let primary = daemon_sets
        .get_opt(&primary_name)
        .await
        .map_err(|e| WorkloadError::kube(format!("reading DaemonSet {namespace}/{primary_name}"), e))?;
    Ok(DaemonSetSnapshot { target, selector, tracked, revision, release, primary })
}

/// Initialisation: creates the primary (with its config copies) when missing; adopts one
/// left by a deleted Canary of the same name. A missing primary after a promotion is
/// only recreated from a target running the promoted revision (never from the canary):
/// DaemonSet primaries have no stored history.
pub async fn initialize(
    client: &Client,
    configs: &ConfigReads,
    canary: &Canary,
    snapshot: &DaemonSetSnapshot,
    promoted_revision: Option<&str>,
) -> Result<(), WorkloadError> {
    let namespace = canary_namespace(canary)?;
    let daemon_sets = api(client, &namespace);
    let name = primary_name(&name_of(&snapshot.target));
    if let Some(existing) = &snapshot.primary {
        if !super::primary::is_this_canarys(canary, existing) {
            return Err(WorkloadError::InvalidDaemonSet {
                name,
                reason:
                    "it exists and is not this Canary's (petrel did not create it for this Canary): rename or remove it"
                        .into(),
            });
        }
        if let Some(patch) = adoption_patch(canary, existing)? {
            let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_string()), ..Default::default() };
            daemon_sets
                .patch(&name, &params, &Patch::Merge(&patch))
                .await
                .map_err(|e| WorkloadError::kube(format!("adopting DaemonSet {namespace}/{name}"), e))?;
        }
        return Ok(());
    }
    super::actions::missing_primary_source(&name, promoted_revision, &snapshot.revision, &[])?;
    copy_configs_to_primary(client, configs, canary, &snapshot.tracked).await?;
    let primary =
        build_primary(&snapshot.target, canary, &snapshot.selector, &snapshot.tracked.names(), &snapshot.revision)?;
    let params = PostParams { field_manager: Some(FIELD_MANAGER.to_string()), ..Default::default() };
    match daemon_sets.create(&params, &primary).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => Err(WorkloadError::kube(format!("creating DaemonSet {namespace}/{name}"), e)),
    }
}

/// Scales the target DaemonSet down (`true`) or up, by its node selector.
pub async fn scale(client: &Client, namespace: &str, name: &str, down: bool) -> Result<(), WorkloadError> {
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_string()), ..Default::default() };
    match api(client, namespace).patch(name, &params, &Patch::Merge(&scale_patch(down))).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => {
            Err(WorkloadError::DaemonSetNotFound { namespace: namespace.into(), name: name.into() })
        }
        Err(e) => Err(WorkloadError::kube(
            format!("scaling DaemonSet {namespace}/{name} {}", if down { "down" } else { "up" }),
            e,
        )),
    }
}

/// `Action::PromoteCanaryToPrimary`: the tracked configs and the target's template into
/// the primary (server-side apply).
pub async fn promote(
    client: &Client,
    configs: &ConfigReads,
    canary: &Canary,
    snapshot: &DaemonSetSnapshot,
) -> Result<(), WorkloadError> {
    let namespace = canary_namespace(canary)?;
    copy_configs_to_primary(client, configs, canary, &snapshot.tracked).await?;
    let primary =
        build_primary(&snapshot.target, canary, &snapshot.selector, &snapshot.tracked.names(), &snapshot.revision)?;
    let name = primary.metadata.name.clone().unwrap_or_default();
    api(client, &namespace)
        .patch(&name, &apply_params(), &Patch::Apply(&primary))
        .await
        .map(|_| ())
        .map_err(|e| WorkloadError::kube(format!("applying DaemonSet {namespace}/{name}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::test_support::canary;
    use k8s_openapi::api::apps::v1::DaemonSetStatus;
    use serde_json::json;

    fn daemon_set(match_labels: serde_json::Value, node_selector: serde_json::Value) -> DaemonSet {
        serde_json::from_value(json!({
            "metadata": {"name": "podinfo-ds", "namespace": "apps", "labels": {"app": "podinfo-ds"}},
            "spec": {
                "selector": {"matchLabels": match_labels},
                "template": {
                    "metadata": {"labels": {"app": "podinfo-ds"}},
                    "spec": {"nodeSelector": node_selector, "containers": [{"name": "app", "image": "podinfo:1"}]}
                }
            }
        }))
        .unwrap()
    }

    fn ds_canary() -> Canary {
        let mut canary = canary("podinfo-ds");
        canary.spec.target_ref.kind = "DaemonSet".into();
        canary.spec.target_ref.name = "podinfo-ds".into();
        canary
    }

    #[test]
    fn the_scale_down_node_selector_is_not_part_of_the_release() {
        let plain = daemon_set(json!({"app": "podinfo-ds"}), json!({"disk": "ssd"}));
        let down =
            daemon_set(json!({"app": "podinfo-ds"}), json!({"disk": "ssd", "flagger.app/scale-to-zero": "true"}));
        assert!(is_scaled_down(&down) && !is_scaled_down(&plain));
        let template = |d: &DaemonSet| d.spec.as_ref().unwrap().template.clone();
        assert_eq!(unscaled_template(&template(&down)), template(&plain));
        let empty = daemon_set(json!({"app": "podinfo-ds"}), json!({"flagger.app/scale-to-zero": "true"}));
        assert_eq!(unscaled_template(&template(&empty)).spec.unwrap().node_selector, None);
        let bare = daemon_set(json!({"app": "podinfo-ds"}), json!(null));
        assert_eq!(
            revision(&unscaled_template(&template(&empty)), &BTreeMap::new()),
            revision(&template(&bare), &BTreeMap::new())
        );
    }

    #[test]
    fn scaling_patches_only_the_scale_down_key() {
        assert_eq!(
            scale_patch(true),
            json!({"spec": {"template": {"spec": {"nodeSelector": {"flagger.app/scale-to-zero": "true"}}}}})
        );
        assert_eq!(
            scale_patch(false)["spec"]["template"]["spec"]["nodeSelector"]["flagger.app/scale-to-zero"],
            json!(null)
        );
    }

    #[test]
    fn a_daemon_set_without_a_selector_label_or_with_on_delete_is_refused() {
        let ok = daemon_set(json!({"app.kubernetes.io/name": "podinfo-ds"}), json!(null));
        assert_eq!(check_target(&ok).unwrap().key, "app.kubernetes.io/name");
        let unlabelled = daemon_set(json!({"tier": "web"}), json!(null));
        let err = check_target(&unlabelled).unwrap_err();
        assert!(
            err.is_stalled()
                && err.to_string().contains("DaemonSet podinfo-ds")
                && err.to_string().contains("matchLabels"),
            "{err}"
        );
        let mut on_delete = daemon_set(json!({"app": "podinfo-ds"}), json!(null));
        on_delete.spec.as_mut().unwrap().update_strategy = Some(k8s_openapi::api::apps::v1::DaemonSetUpdateStrategy {
            type_: Some("OnDelete".into()),
            rolling_update: None,
        });
        let err = check_target(&on_delete).unwrap_err();
        assert!(err.is_stalled() && err.to_string().contains("OnDelete"), "{err}");
    }

    #[test]
    fn the_primary_carries_the_template_without_the_scale_down_selector() {
        let target =
            daemon_set(json!({"app": "podinfo-ds"}), json!({"flagger.app/scale-to-zero": "true", "disk": "ssd"}));
        let selector = check_target(&target).unwrap();
        let primary = build_primary(&target, &ds_canary(), &selector, &ConfigNames::default(), "r1").unwrap();
        let value = serde_json::to_value(&primary).unwrap();
        assert_eq!(value["metadata"]["name"], "podinfo-ds-primary");
        assert_eq!(value["spec"]["selector"]["matchLabels"], json!({"app": "podinfo-ds-primary"}));
        assert_eq!(value["spec"]["template"]["metadata"]["labels"]["app"], "podinfo-ds-primary");
        assert_eq!(value["spec"]["template"]["metadata"]["annotations"][REVISION_ANNOTATION], "r1");
        assert_eq!(value["spec"]["template"]["spec"]["nodeSelector"], json!({"disk": "ssd"}));
        assert_eq!(value["metadata"]["ownerReferences"][0]["kind"], "Canary");
    }

    fn with_status(generation: i64, observed: i64, desired: i32, updated: i32, available: i32) -> DaemonSet {
        let mut d = daemon_set(json!({"app": "podinfo-ds"}), json!(null));
        d.metadata.generation = Some(generation);
        d.status = Some(DaemonSetStatus {
            observed_generation: Some(observed),
            desired_number_scheduled: desired,
            updated_number_scheduled: Some(updated),
            number_available: Some(available),
            ..Default::default()
        });
        d
    }

    #[test]
    fn health_follows_flaggers_rollout_check_and_the_canarys_deadline() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let deadline = Duration::from_secs(60);
        let recent = Some(now - TimeDelta::seconds(10));
        let old = Some(now - TimeDelta::seconds(120));
        assert_eq!(daemon_set_health(&with_status(2, 2, 3, 3, 3), 100, deadline, old, now), WorkloadHealth::Ready);
        assert!(matches!(
            daemon_set_health(&with_status(2, 1, 3, 3, 3), 100, deadline, recent, now),
            WorkloadHealth::NotReady { ref reason } if reason.contains("not yet observed")
        ));
        assert!(matches!(
            daemon_set_health(&with_status(2, 2, 3, 1, 1), 100, deadline, recent, now),
            WorkloadHealth::NotReady { ref reason } if reason.contains("1 of 3 pods updated")
        ));
        assert_eq!(daemon_set_health(&with_status(2, 2, 3, 3, 2), 50, deadline, old, now), WorkloadHealth::Ready);
        assert!(matches!(
            daemon_set_health(&with_status(2, 2, 3, 3, 2), 100, deadline, old, now),
            WorkloadHealth::DeadlineExceeded { .. }
        ));
        // Scaled down: no node runs a pod, nothing to wait for.
        assert_eq!(daemon_set_health(&with_status(3, 3, 0, 0, 0), 100, deadline, old, now), WorkloadHealth::Ready);
    }
}
