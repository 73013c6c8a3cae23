//! The `<target>-primary` Deployment: a clone of the target that serves stable traffic.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource};

use super::actions::WorkloadSnapshot;
use super::configs::{ConfigNames, ConfigReads, TrackedConfigs, copy_configs_to_primary, rewrite_config_refs};
use super::history::{
    PrimaryHistory, record_primary_revision, stored_revision, template_from_revision, template_revision,
};
use super::selector::{PodSelector, primary_value};
use super::{
    CANARY_LABEL, FIELD_MANAGER, MANAGED_BY_LABEL, PRIMARY_SUFFIX, REVISION_ANNOTATION, WorkloadError, apply_params,
    canary_name, canary_owner_reference, is_not_found,
};
use crate::api::Canary;

/// Annotations never copied to generated objects: client-side apply state (kubectl would
/// think the copy was applied from that manifest) and the Deployment controller's own
/// bookkeeping.
const DROPPED_ANNOTATIONS: &[&str] =
    &["kubectl.kubernetes.io/last-applied-configuration", "deployment.kubernetes.io/revision"];

/// Labels never copied to generated objects: Argo CD's default tracking label (a copy
/// would make Argo CD see the generated object as part of the app, and prune it).
const DROPPED_LABELS: &[&str] = &["app.kubernetes.io/instance"];

/// Prefixes of labels and annotations by which Flux, Helm and Argo CD track the objects
/// they apply. Generated objects must not carry them, or the GitOps tool would adopt
/// (and prune or revert) them.
const GITOPS_PREFIXES: &[&str] =
    &["kustomize.toolkit.fluxcd.io/", "helm.toolkit.fluxcd.io/", "argocd.argoproj.io/", "meta.helm.sh/"];

fn is_gitops_key(key: &str) -> bool {
    GITOPS_PREFIXES.iter().any(|prefix| key.starts_with(prefix))
}

/// The labels and annotations of a user object that a generated copy may carry.
pub(crate) fn copyable_metadata(meta: &ObjectMeta) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let labels = meta
        .labels
        .iter()
        .flatten()
        .filter(|(key, _)| !is_gitops_key(key) && !DROPPED_LABELS.contains(&key.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let annotations = meta
        .annotations
        .iter()
        .flatten()
        .filter(|(key, _)| !is_gitops_key(key) && !DROPPED_ANNOTATIONS.contains(&key.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (labels, annotations)
}

/// Name of the primary Deployment of a target.
pub fn primary_name(target_name: &str) -> String {
    format!("{target_name}{PRIMARY_SUFFIX}")
}

/// Replaces the canary selector value by the primary's in a label selector that selects
/// on the selector label (topology spread and anti-affinity must count primary pods).
fn suffix_label_selector(selector: &mut LabelSelector, pod_selector: &PodSelector) {
    let suffixed = primary_value(pod_selector);
    if let Some(value) = selector.match_labels.as_mut().and_then(|labels| labels.get_mut(&pod_selector.key))
        && *value == pod_selector.value
    {
        *value = suffixed.clone();
    }
    for expression in selector.match_expressions.iter_mut().flatten() {
        if expression.key != pod_selector.key {
            continue;
        }
        for value in expression.values.iter_mut().flatten() {
            if *value == pod_selector.value {
                *value = suffixed.clone();
            }
        }
    }
}

fn suffix_scheduling_selectors(pod_spec: &mut PodSpec, pod_selector: &PodSelector) {
    for constraint in pod_spec.topology_spread_constraints.iter_mut().flatten() {
        if let Some(selector) = &mut constraint.label_selector {
            suffix_label_selector(selector, pod_selector);
        }
    }
    let Some(anti_affinity) = pod_spec.affinity.as_mut().and_then(|affinity| affinity.pod_anti_affinity.as_mut())
    else {
        return;
    };
    let required = anti_affinity.required_during_scheduling_ignored_during_execution.iter_mut().flatten();
    let preferred = anti_affinity
        .preferred_during_scheduling_ignored_during_execution
        .iter_mut()
        .flatten()
        .map(|weighted| &mut weighted.pod_affinity_term);
    for term in required.chain(preferred) {
        if let Some(selector) = &mut term.label_selector {
            suffix_label_selector(selector, pod_selector);
        }
    }
}

/// The primary's pod template for a target template: selector label suffixed,
/// config references pointing at the `-primary` copies, scheduling selectors suffixed,
/// and the revision recorded (which also rolls the pods when only configs changed).
pub(crate) fn primary_template(
    template: &PodTemplateSpec,
    selector: &PodSelector,
    configs: &ConfigNames,
    revision: &str,
) -> PodTemplateSpec {
    let mut metadata = template.metadata.clone().unwrap_or_default();
    metadata.labels.get_or_insert_with(BTreeMap::new).insert(selector.key.clone(), primary_value(selector));
    metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(REVISION_ANNOTATION.to_string(), revision.to_string());
    let spec = template.spec.as_ref().map(|pod_spec| {
        let mut pod_spec = rewrite_config_refs(pod_spec, configs);
        suffix_scheduling_selectors(&mut pod_spec, selector);
        pod_spec
    });
    PodTemplateSpec { metadata: Some(metadata), spec }
}

/// The primary Deployment for a target.
///
/// `revision` is the target's revision (see [`super::revision`]); `replicas` is `None`
/// when an HPA scales the primary (petrel then leaves the field to it).
pub fn build_primary(
    target: &Deployment,
    canary: &Canary,
    selector: &PodSelector,
    configs: &ConfigNames,
    revision: &str,
    replicas: Option<i32>,
) -> Result<Deployment, WorkloadError> {
    let target_name = target.metadata.name.clone().unwrap_or_default();
    let target_spec = target.spec.as_ref().ok_or_else(|| WorkloadError::TargetWithoutSpec {
        namespace: target.metadata.namespace.clone().unwrap_or_default(),
        name: target_name.clone(),
    })?;
    let (mut labels, annotations) = copyable_metadata(&target.metadata);
    labels.insert(MANAGED_BY_LABEL.to_string(), "petrel".to_string());
    labels.insert(CANARY_LABEL.to_string(), canary_name(canary)?);
    Ok(Deployment {
        metadata: ObjectMeta {
            name: Some(primary_name(&target_name)),
            namespace: target.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references: Some(vec![canary_owner_reference(canary)?]),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas,
            selector: LabelSelector {
                match_labels: Some(BTreeMap::from([(selector.key.clone(), primary_value(selector))])),
                match_expressions: None,
            },
            template: primary_template(&target_spec.template, selector, configs, revision),
            strategy: target_spec.strategy.clone(),
            min_ready_seconds: target_spec.min_ready_seconds,
            revision_history_limit: target_spec.revision_history_limit,
            progress_deadline_seconds: target_spec.progress_deadline_seconds,
            paused: None,
        }),
        status: None,
    })
}

fn deployment_api(client: &Client, target: &Deployment) -> (Api<Deployment>, String) {
    let namespace = target.metadata.namespace.clone().unwrap_or_default();
    (Api::namespaced(client.clone(), &namespace), namespace)
}

/// Whether a `<target>-primary` is this Canary's: owned by it, or owned by no Canary and
/// labelled with its name (left behind by a deleted Canary of the same name).
pub fn is_this_canarys(canary: &Canary, primary: &impl Resource) -> bool {
    let owners = primary.meta().owner_references.clone().unwrap_or_default();
    let canary_owners: Vec<_> = owners.iter().filter(|owner| owner.kind == Canary::kind(&())).collect();
    match canary_owners.as_slice() {
        [] => {
            let label = primary.meta().labels.as_ref().and_then(|labels| labels.get(CANARY_LABEL));
            label.is_some() && label == canary.meta().name.as_ref()
        }
        owners => owners.iter().any(|owner| Some(&owner.uid) == canary.meta().uid.as_ref()),
    }
}

/// The merge patch that makes this Canary the owner of a primary nobody owns: one left
/// behind by a deleted Canary of the same name (released rather than deleted), so that
/// it goes with this Canary in turn. `None` when the primary has a Canary owner already or
/// is not this Canary's by its label. The resourceVersion makes it conditional.
pub(crate) fn adoption_patch(
    canary: &Canary,
    primary: &impl Resource,
) -> Result<Option<serde_json::Value>, WorkloadError> {
    let meta = primary.meta();
    let owners = meta.owner_references.clone().unwrap_or_default();
    let owned_by_a_canary = owners.iter().any(|owner| owner.kind == Canary::kind(&()));
    let labelled_ours = meta.labels.as_ref().and_then(|labels| labels.get(CANARY_LABEL)) == Some(&canary_name(canary)?);
    if owned_by_a_canary || !labelled_ours {
        return Ok(None);
    }
    let mut owners = owners;
    owners.push(canary_owner_reference(canary)?);
    Ok(Some(serde_json::json!({
        "metadata": { "ownerReferences": owners, "resourceVersion": meta.resource_version }
    })))
}

/// Creates the primary (and its config copies) from the target `snapshot` read when it
/// does not exist (`snapshot.primary` is `None`); returns it.
///
/// An existing primary is returned untouched (adopted when a deleted Canary of the same
/// name left it behind): its template only changes through [`promote`] (or a rollback),
/// never because the target changed. The template of a new primary is stored as the
/// first ControllerRevision, so the primary can be rebuilt from it.
pub async fn ensure_primary(
    client: &Client,
    configs: &ConfigReads,
    canary: &Canary,
    snapshot: &WorkloadSnapshot,
    replicas: Option<i32>,
) -> Result<Deployment, WorkloadError> {
    let WorkloadSnapshot { target, selector, tracked, revision, .. } = snapshot;
    let (api, namespace) = deployment_api(client, target);
    let name = primary_name(&target.metadata.name.clone().unwrap_or_default());
    if let Some(existing) = snapshot.primary.as_deref() {
        if let Some(patch) = adoption_patch(canary, existing)? {
            // Its template is the promoted one from now on: kept, so it can be rebuilt.
            record_primary_revision(client, canary, existing).await?;
            let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_string()), ..Default::default() };
            return api
                .patch(&name, &params, &Patch::Merge(&patch))
                .await
                .map_err(|e| WorkloadError::kube(format!("adopting Deployment {namespace}/{name}"), e));
        }
        return Ok(existing.clone());
    }
    copy_configs_to_primary(client, configs, canary, tracked).await?;
    let primary = build_primary(target, canary, selector, &tracked.names(), revision, replicas)?;
    record_primary_revision(client, canary, &primary).await?;
    create_primary(&api, &namespace, &primary).await
}

/// Creates a missing primary from a stored template (normally the last promoted one),
/// with the target's other Deployment settings. Its `-primary` config copies are not
/// touched: they hold the configuration of the last promotion, which that template uses.
pub async fn rebuild_primary(
    client: &Client,
    canary: &Canary,
    target: &Deployment,
    selector: &PodSelector,
    tracked: &TrackedConfigs,
    stored: &ControllerRevision,
    replicas: Option<i32>,
) -> Result<Deployment, WorkloadError> {
    let (api, namespace) = deployment_api(client, target);
    let template = template_from_revision(stored)?;
    let revision = stored_revision(stored).map_or_else(|| template_revision(&template), str::to_string);
    let mut primary = build_primary(target, canary, selector, &tracked.names(), &revision, replicas)?;
    if let Some(spec) = primary.spec.as_mut() {
        spec.template = template;
    }
    create_primary(&api, &namespace, &primary).await
}

async fn create_primary(
    api: &Api<Deployment>,
    namespace: &str,
    primary: &Deployment,
) -> Result<Deployment, WorkloadError> {
    let name = primary.metadata.name.clone().unwrap_or_default();
    // Created with a plain POST so that `spec.replicas` is owned by an Update entry of
    // `petrel`: later applies that leave replicas to an HPA then do not delete it.
    let params = PostParams { field_manager: Some(FIELD_MANAGER.to_string()), ..Default::default() };
    match api.create(&params, primary).await {
        Ok(created) => Ok(created),
        // Another reconcile created it meanwhile: use theirs.
        Err(kube::Error::Api(status)) if status.code == 409 => {
            api.get(&name).await.map_err(|e| WorkloadError::kube(format!("reading Deployment {namespace}/{name}"), e))
        }
        Err(e) => Err(WorkloadError::kube(format!("creating Deployment {namespace}/{name}"), e)),
    }
}

/// Copies the target's template (and its tracked configs) into the primary.
///
/// Order matters: the `-primary` config copies are written first so new primary pods
/// find their configuration, and the primary's current template and then the new one
/// are stored as `ControllerRevision`s before it is replaced.
pub async fn promote(
    client: &Client,
    configs: &ConfigReads,
    canary: &Canary,
    snapshot: &WorkloadSnapshot,
    replicas: Option<i32>,
) -> Result<Deployment, WorkloadError> {
    let WorkloadSnapshot { target, selector, tracked, revision, .. } = snapshot;
    let (api, namespace) = deployment_api(client, target);
    let name = primary_name(&target.metadata.name.clone().unwrap_or_default());
    copy_configs_to_primary(client, configs, canary, tracked).await?;
    let mut history = PrimaryHistory::read(client, canary).await?;
    match api.get(&name).await {
        // A retried promotion finds the primary already on `revision`: storing that
        // template would make history claim it was a previous one.
        Ok(current)
            if current.spec.as_ref().map(|spec| template_revision(&spec.template)).as_deref()
                != Some(revision.as_str()) =>
        {
            history.record(canary, &current).await?;
        }
        Ok(_) => {}
        Err(e) if is_not_found(&e) => {}
        Err(e) => {
            return Err(WorkloadError::kube(format!("reading Deployment {namespace}/{name}"), e));
        }
    }
    let primary = build_primary(target, canary, selector, &tracked.names(), revision, replicas)?;
    // Stored before it is written, so the newest stored template is always the one the
    // primary runs (or is about to run), whatever fails next.
    history.record(canary, &primary).await?;
    history.prune().await?;
    api.patch(&name, &apply_params(), &Patch::Apply(&primary))
        .await
        .map_err(|e| WorkloadError::kube(format!("applying Deployment {namespace}/{name}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::test_support::{canary, deployment, labels};
    use k8s_openapi::api::core::v1::{
        Affinity, ConfigMapVolumeSource, PodAffinityTerm, PodAntiAffinity, TopologySpreadConstraint, Volume,
        WeightedPodAffinityTerm,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn selector() -> PodSelector {
        PodSelector { key: "app".into(), value: "podinfo".into() }
    }

    fn target() -> Deployment {
        let mut target = deployment("podinfo", &[("app", "podinfo")], "podinfo:1");
        target.metadata.labels = Some(labels(&[
            ("app", "podinfo"),
            ("team", "web"),
            ("kustomize.toolkit.fluxcd.io/name", "apps"),
            ("app.kubernetes.io/instance", "argo-app"),
        ]));
        target.metadata.annotations = Some(labels(&[
            ("kubectl.kubernetes.io/last-applied-configuration", "{...}"),
            ("deployment.kubernetes.io/revision", "4"),
            ("argocd.argoproj.io/tracking-id", "x"),
            ("owner", "team-web"),
        ]));
        let spec = target.spec.as_mut().unwrap();
        spec.min_ready_seconds = Some(5);
        spec.template.metadata.as_mut().unwrap().labels.as_mut().unwrap().insert("version".into(), "1".into());
        target
    }

    #[test]
    fn primary_is_a_renamed_owned_clone_with_suffixed_selector() {
        let primary =
            build_primary(&target(), &canary("podinfo"), &selector(), &ConfigNames::default(), "rev1", Some(3))
                .unwrap();
        assert_eq!(primary.metadata.name.as_deref(), Some("podinfo-primary"));
        assert_eq!(primary.metadata.namespace.as_deref(), Some("apps"));
        assert_eq!(
            primary.metadata.labels,
            Some(labels(&[
                ("app", "podinfo"),
                ("team", "web"),
                ("app.kubernetes.io/managed-by", "petrel"),
                ("petrel.dev/canary", "podinfo"),
            ]))
        );
        assert_eq!(primary.metadata.annotations, Some(labels(&[("owner", "team-web")])));
        let owner = &primary.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.controller, Some(true));
        assert_eq!(owner.uid, "c0ffee-uid");

        let spec = primary.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.min_ready_seconds, Some(5));
        assert_eq!(spec.selector.match_labels, Some(labels(&[("app", "podinfo-primary")])));
        let pod_meta = spec.template.metadata.unwrap();
        assert_eq!(pod_meta.labels, Some(labels(&[("app", "podinfo-primary"), ("version", "1")])));
        assert_eq!(pod_meta.annotations, Some(labels(&[(REVISION_ANNOTATION, "rev1")])));
        assert_eq!(spec.template.spec, target().spec.unwrap().template.spec);
    }

    #[test]
    fn a_primary_is_this_canarys_when_it_owns_it_or_it_was_left_behind_under_its_name() {
        let canary = canary("podinfo");
        let mut primary =
            build_primary(&target(), &canary, &selector(), &ConfigNames::default(), "r", Some(1)).unwrap();
        assert!(is_this_canarys(&canary, &primary));
        let mut other = canary.clone();
        other.metadata.uid = Some("other-uid".into());
        assert!(!is_this_canarys(&other, &primary), "owned by a live Canary of another uid");
        primary.metadata.owner_references = None;
        assert!(is_this_canarys(&other, &primary), "left behind: adoptable by a Canary of the same name");
        let mut stranger = canary.clone();
        stranger.metadata.name = Some("web".into());
        assert!(!is_this_canarys(&stranger, &primary));
    }

    #[test]
    fn hpa_managed_primary_leaves_replicas_unset() {
        let primary =
            build_primary(&target(), &canary("podinfo"), &selector(), &ConfigNames::default(), "r", None).unwrap();
        assert_eq!(primary.spec.unwrap().replicas, None);
    }

    #[test]
    fn primary_template_uses_primary_config_copies() {
        let mut target = target();
        target.spec.as_mut().unwrap().template.spec.as_mut().unwrap().volumes = Some(vec![Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource { name: "settings".into(), ..Default::default() }),
            ..Default::default()
        }]);
        let configs = ConfigNames { config_maps: ["settings".to_string()].into(), secrets: Default::default() };
        let primary = build_primary(&target, &canary("podinfo"), &selector(), &configs, "r", Some(1)).unwrap();
        let volumes = primary.spec.unwrap().template.spec.unwrap().volumes.unwrap();
        assert_eq!(volumes[0].config_map.as_ref().unwrap().name, "settings-primary");
    }

    #[test]
    fn scheduling_selectors_on_the_selector_label_are_suffixed() {
        let own_app = || LabelSelector { match_labels: Some(labels(&[("app", "podinfo")])), match_expressions: None };
        let other_app = || LabelSelector { match_labels: Some(labels(&[("app", "redis")])), match_expressions: None };
        let mut target = target();
        let pod_spec = target.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
        pod_spec.topology_spread_constraints = Some(vec![
            TopologySpreadConstraint { label_selector: Some(own_app()), ..Default::default() },
            TopologySpreadConstraint { label_selector: Some(other_app()), ..Default::default() },
        ]);
        pod_spec.affinity = Some(Affinity {
            pod_anti_affinity: Some(PodAntiAffinity {
                required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                    label_selector: Some(LabelSelector {
                        match_labels: None,
                        match_expressions: Some(vec![LabelSelectorRequirement {
                            key: "app".into(),
                            operator: "In".into(),
                            values: Some(vec!["podinfo".into(), "other".into()]),
                        }]),
                    }),
                    topology_key: "kubernetes.io/hostname".into(),
                    ..Default::default()
                }]),
                preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
                    weight: 10,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(own_app()),
                        topology_key: "zone".into(),
                        ..Default::default()
                    },
                }]),
            }),
            ..Default::default()
        });
        let primary =
            build_primary(&target, &canary("podinfo"), &selector(), &ConfigNames::default(), "r", Some(1)).unwrap();
        let pod_spec = primary.spec.unwrap().template.spec.unwrap();
        let spreads = pod_spec.topology_spread_constraints.unwrap();
        assert_eq!(
            spreads[0].label_selector.as_ref().unwrap().match_labels,
            Some(labels(&[("app", "podinfo-primary")]))
        );
        assert_eq!(spreads[1].label_selector, Some(other_app()));
        let anti = pod_spec.affinity.unwrap().pod_anti_affinity.unwrap();
        let required = &anti.required_during_scheduling_ignored_during_execution.unwrap()[0];
        assert_eq!(
            required.label_selector.as_ref().unwrap().match_expressions.as_ref().unwrap()[0].values,
            Some(vec!["podinfo-primary".to_string(), "other".to_string()])
        );
        let preferred = &anti.preferred_during_scheduling_ignored_during_execution.unwrap()[0];
        assert_eq!(
            preferred.pod_affinity_term.label_selector.as_ref().unwrap().match_labels,
            Some(labels(&[("app", "podinfo-primary")]))
        );
    }

    #[test]
    fn target_without_spec_is_an_error() {
        let mut target = target();
        target.spec = None;
        assert!(build_primary(&target, &canary("podinfo"), &selector(), &ConfigNames::default(), "r", None).is_err());
    }
}
