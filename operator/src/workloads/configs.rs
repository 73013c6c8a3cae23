//! Tracking of the ConfigMaps and Secrets a target's pods use.
//!
//! Like Flagger, a change to a referenced ConfigMap or Secret is a new revision, and the
//! primary keeps the old configuration until promotion: promotion copies each tracked
//! object to `<name>-primary` and the primary's pod template refers to those copies.
//! A ConfigMap or Secret annotated `petrel.dev/config-tracking: disabled` (or Flagger's
//! `flagger.app/config-tracking: disabled`) is neither tracked nor copied: both
//! Deployments use it as it is.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Api, Client, api::Patch};

use super::revision::{canonical_json, short_hash};
use super::{
    CANARY_LABEL, MANAGED_BY_LABEL, PRIMARY_SUFFIX, WorkloadError, apply_params, canary_name, canary_namespace,
    canary_owner_reference, primary::copyable_metadata,
};
use crate::api::Canary;
use crate::cache::ReadsAtVersion;
use crate::routers::{Observed, WriteLedger, ledger_key};

/// Annotations that opt a ConfigMap or Secret out of tracking.
pub const TRACKING_OPT_OUT_ANNOTATIONS: &[&str] = &["petrel.dev/config-tracking", "flagger.app/config-tracking"];

/// Whether a reference may point at an object that does not exist (`optional: true`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Need {
    Optional,
    Required,
}

impl Need {
    fn from_optional(optional: Option<bool>) -> Self {
        if optional == Some(true) { Need::Optional } else { Need::Required }
    }
}

/// The ConfigMaps and Secrets a pod spec refers to, by name. A name referenced both
/// optionally and as required is required.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigRefs {
    pub config_maps: BTreeMap<String, Need>,
    pub secrets: BTreeMap<String, Need>,
}

impl ConfigRefs {
    fn add(map: &mut BTreeMap<String, Need>, name: &str, need: Need) {
        if name.is_empty() {
            return;
        }
        let entry = map.entry(name.to_string()).or_insert(need);
        *entry = (*entry).max(need);
    }
}

/// Names of tracked ConfigMaps and Secrets (those whose references the primary rewrites).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigNames {
    pub config_maps: BTreeSet<String>,
    pub secrets: BTreeSet<String>,
}

/// The tracked ConfigMaps and Secrets of a target, as read from the API server.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrackedConfigs {
    pub config_maps: Vec<Arc<ConfigMap>>,
    pub secrets: Vec<Arc<Secret>>,
}

impl TrackedConfigs {
    /// Checksums keyed `configmap/<name>` and `secret/<name>` (the status's `trackedConfigs`).
    pub fn checksums(&self) -> BTreeMap<String, String> {
        let config_maps = self
            .config_maps
            .iter()
            .map(|cm| (format!("configmap/{}", object_name(&cm.metadata)), config_map_checksum(cm)));
        let secrets = self
            .secrets
            .iter()
            .map(|secret| (format!("secret/{}", object_name(&secret.metadata)), secret_checksum(secret)));
        config_maps.chain(secrets).collect()
    }

    pub fn names(&self) -> ConfigNames {
        ConfigNames {
            config_maps: self.config_maps.iter().map(|cm| object_name(&cm.metadata)).collect(),
            secrets: self.secrets.iter().map(|secret| object_name(&secret.metadata)).collect(),
        }
    }
}

fn object_name(meta: &ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

/// Every ConfigMap and Secret the pod spec refers to: volumes (`configMap`, `secret`,
/// projected sources), and `envFrom` / `env[].valueFrom` of containers and init containers.
pub fn referenced_configs(pod_spec: &PodSpec) -> ConfigRefs {
    let mut refs = ConfigRefs::default();
    for volume in pod_spec.volumes.iter().flatten() {
        if let Some(cm) = &volume.config_map {
            ConfigRefs::add(&mut refs.config_maps, &cm.name, Need::from_optional(cm.optional));
        }
        if let Some(secret) = &volume.secret
            && let Some(name) = &secret.secret_name
        {
            ConfigRefs::add(&mut refs.secrets, name, Need::from_optional(secret.optional));
        }
        let projections = volume.projected.iter().flat_map(|projected| projected.sources.iter().flatten());
        for source in projections {
            if let Some(cm) = &source.config_map {
                ConfigRefs::add(&mut refs.config_maps, &cm.name, Need::from_optional(cm.optional));
            }
            if let Some(secret) = &source.secret {
                ConfigRefs::add(&mut refs.secrets, &secret.name, Need::from_optional(secret.optional));
            }
        }
    }
    for container in all_containers(pod_spec) {
        for env_from in container.env_from.iter().flatten() {
            if let Some(cm) = &env_from.config_map_ref {
                ConfigRefs::add(&mut refs.config_maps, &cm.name, Need::from_optional(cm.optional));
            }
            if let Some(secret) = &env_from.secret_ref {
                ConfigRefs::add(&mut refs.secrets, &secret.name, Need::from_optional(secret.optional));
            }
        }
        for value_from in container.env.iter().flatten().filter_map(|env| env.value_from.as_ref()) {
            if let Some(cm) = &value_from.config_map_key_ref {
                ConfigRefs::add(&mut refs.config_maps, &cm.name, Need::from_optional(cm.optional));
            }
            if let Some(secret) = &value_from.secret_key_ref {
                ConfigRefs::add(&mut refs.secrets, &secret.name, Need::from_optional(secret.optional));
            }
        }
    }
    refs
}

fn all_containers(pod_spec: &PodSpec) -> impl Iterator<Item = &Container> {
    pod_spec.containers.iter().chain(pod_spec.init_containers.iter().flatten())
}

fn all_containers_mut(pod_spec: &mut PodSpec) -> impl Iterator<Item = &mut Container> {
    pod_spec.containers.iter_mut().chain(pod_spec.init_containers.iter_mut().flatten())
}

/// True when the object opted out of config tracking.
pub fn tracking_disabled(meta: &ObjectMeta) -> bool {
    meta.annotations.as_ref().is_some_and(|annotations| {
        TRACKING_OPT_OUT_ANNOTATIONS
            .iter()
            .any(|key| annotations.get(*key).is_some_and(|value| value.eq_ignore_ascii_case("disabled")))
    })
}

/// Checksum of a ConfigMap's content (`data` and `binaryData`, key order irrelevant).
pub fn config_map_checksum(config_map: &ConfigMap) -> String {
    let content = serde_json::json!({
        "data": config_map.data,
        "binaryData": config_map.binary_data,
    });
    short_hash(canonical_json(&content).as_bytes())
}

/// Checksum of a Secret's content (`data`; `stringData` is write-only and never read back).
pub fn secret_checksum(secret: &Secret) -> String {
    let content = serde_json::json!({ "data": secret.data });
    short_hash(canonical_json(&content).as_bytes())
}

/// Picks the tracked objects among those found: a required reference to a missing object
/// is an error (the Canary is Stalled), an optional one is skipped, and opted-out objects
/// are left out.
pub fn resolve_tracked_configs(
    refs: &ConfigRefs,
    found_config_maps: Vec<Arc<ConfigMap>>,
    found_secrets: Vec<Arc<Secret>>,
    namespace: &str,
    deployment: &str,
) -> Result<TrackedConfigs, WorkloadError> {
    let missing = |kind: &'static str, name: &str| WorkloadError::MissingConfig {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
        deployment: deployment.to_string(),
    };
    let mut config_maps: BTreeMap<String, Arc<ConfigMap>> =
        found_config_maps.into_iter().map(|cm| (object_name(&cm.metadata), cm)).collect();
    let mut secrets: BTreeMap<String, Arc<Secret>> =
        found_secrets.into_iter().map(|secret| (object_name(&secret.metadata), secret)).collect();

    let mut tracked = TrackedConfigs::default();
    for (name, need) in &refs.config_maps {
        match config_maps.remove(name) {
            Some(cm) if tracking_disabled(&cm.metadata) => {}
            Some(cm) => tracked.config_maps.push(cm),
            None if *need == Need::Optional => {}
            None => return Err(missing("ConfigMap", name)),
        }
    }
    for (name, need) in &refs.secrets {
        match secrets.remove(name) {
            Some(secret) if tracking_disabled(&secret.metadata) => {}
            Some(secret) => tracked.secrets.push(secret),
            None if *need == Need::Optional => {}
            None => return Err(missing("Secret", name)),
        }
    }
    Ok(tracked)
}

fn primary_config_name(name: &str) -> String {
    format!("{name}{PRIMARY_SUFFIX}")
}

/// The pod spec with every reference to a tracked ConfigMap/Secret pointing at its
/// `-primary` copy. References to untracked objects are left alone.
pub fn rewrite_config_refs(pod_spec: &PodSpec, names: &ConfigNames) -> PodSpec {
    let rename = |name: &mut String, tracked: &BTreeSet<String>| {
        if tracked.contains(name.as_str()) {
            *name = primary_config_name(name);
        }
    };
    let mut spec = pod_spec.clone();
    for volume in spec.volumes.iter_mut().flatten() {
        if let Some(cm) = &mut volume.config_map {
            rename(&mut cm.name, &names.config_maps);
        }
        if let Some(name) = volume.secret.as_mut().and_then(|secret| secret.secret_name.as_mut()) {
            rename(name, &names.secrets);
        }
        let projections = volume.projected.iter_mut().flat_map(|projected| projected.sources.iter_mut().flatten());
        for source in projections {
            if let Some(cm) = &mut source.config_map {
                rename(&mut cm.name, &names.config_maps);
            }
            if let Some(secret) = &mut source.secret {
                rename(&mut secret.name, &names.secrets);
            }
        }
    }
    for container in all_containers_mut(&mut spec) {
        for env_from in container.env_from.iter_mut().flatten() {
            if let Some(cm) = &mut env_from.config_map_ref {
                rename(&mut cm.name, &names.config_maps);
            }
            if let Some(secret) = &mut env_from.secret_ref {
                rename(&mut secret.name, &names.secrets);
            }
        }
        for value_from in container.env.iter_mut().flatten().filter_map(|env| env.value_from.as_mut()) {
            if let Some(cm) = &mut value_from.config_map_key_ref {
                rename(&mut cm.name, &names.config_maps);
            }
            if let Some(secret) = &mut value_from.secret_key_ref {
                rename(&mut secret.name, &names.secrets);
            }
        }
    }
    spec
}

/// Metadata of a `-primary` copy: the source's labels/annotations (minus GitOps tracking
/// and opt-out annotations), petrel's labels, owned by the Canary.
fn primary_copy_metadata(source: &ObjectMeta, canary: &Canary) -> Result<ObjectMeta, WorkloadError> {
    let (mut labels, annotations) = copyable_metadata(source);
    labels.insert(MANAGED_BY_LABEL.to_string(), "petrel".to_string());
    labels.insert(CANARY_LABEL.to_string(), canary_name(canary)?);
    Ok(ObjectMeta {
        name: Some(primary_config_name(&object_name(source))),
        namespace: Some(canary_namespace(canary)?),
        labels: Some(labels),
        annotations: (!annotations.is_empty()).then_some(annotations),
        owner_references: Some(vec![canary_owner_reference(canary)?]),
        ..Default::default()
    })
}

/// The `-primary` copy of a tracked ConfigMap. `immutable` is not copied: the copy is
/// rewritten at every promotion.
pub fn build_primary_config_map(config_map: &ConfigMap, canary: &Canary) -> Result<ConfigMap, WorkloadError> {
    Ok(ConfigMap {
        metadata: primary_copy_metadata(&config_map.metadata, canary)?,
        data: config_map.data.clone(),
        binary_data: config_map.binary_data.clone(),
        immutable: None,
    })
}

/// The `-primary` copy of a tracked Secret (same type; `immutable` not copied).
pub fn build_primary_secret(secret: &Secret, canary: &Canary) -> Result<Secret, WorkloadError> {
    Ok(Secret {
        metadata: primary_copy_metadata(&secret.metadata, canary)?,
        data: secret.data.clone(),
        type_: secret.type_.clone(),
        immutable: None,
        string_data: None,
    })
}

/// The ConfigMaps and Secrets the reconciles read, kept while the controller's
/// metadata-only watches show them unchanged ([`ReadsAtVersion`]), and the ledger of the
/// `-primary` copies petrel writes. The default reads every object from the API server
/// and writes every copy.
#[derive(Clone, Default)]
pub struct ConfigReads {
    pub config_maps: ReadsAtVersion<ConfigMap>,
    pub secrets: ReadsAtVersion<Secret>,
    /// The controller's write ledger (shared with the routers).
    pub ledger: WriteLedger,
}

impl ConfigReads {
    /// Forgets what was read of objects since deleted.
    pub fn forget_gone(&self) {
        self.config_maps.forget_gone();
        self.secrets.forget_gone();
    }
}

/// Reads the ConfigMaps and Secrets the target's pods use and returns the tracked ones.
pub async fn read_tracked_configs(
    client: &Client,
    reads: &ConfigReads,
    target: &Deployment,
) -> Result<TrackedConfigs, WorkloadError> {
    let pod_spec = target.spec.as_ref().and_then(|spec| spec.template.spec.as_ref());
    read_tracked_configs_of(client, reads, &target.metadata, pod_spec).await
}

/// [`read_tracked_configs`] of any workload: its metadata and pod spec.
pub async fn read_tracked_configs_of(
    client: &Client,
    reads: &ConfigReads,
    target: &ObjectMeta,
    pod_spec: Option<&PodSpec>,
) -> Result<TrackedConfigs, WorkloadError> {
    let namespace = target.namespace.clone().unwrap_or_default();
    let deployment = target.name.clone().unwrap_or_default();
    let Some(pod_spec) = pod_spec else {
        return Ok(TrackedConfigs::default());
    };
    let refs = referenced_configs(pod_spec);
    let mut config_maps = Vec::new();
    for name in refs.config_maps.keys() {
        let found = reads
            .config_maps
            .get(client, &namespace, name)
            .await
            .map_err(|e| WorkloadError::kube(format!("reading ConfigMap {namespace}/{name}"), e))?;
        config_maps.extend(found);
    }
    let mut secrets = Vec::new();
    for name in refs.secrets.keys() {
        let found = reads
            .secrets
            .get(client, &namespace, name)
            .await
            .map_err(|e| WorkloadError::kube(format!("reading Secret {namespace}/{name}"), e))?;
        secrets.extend(found);
    }
    resolve_tracked_configs(&refs, config_maps, secrets, &namespace, &deployment)
}

/// Writes the `-primary` copy of every tracked ConfigMap and Secret (server-side apply).
/// Called before the primary's template is replaced so new pods find their configuration.
///
/// A copy is skipped when the write ledger in `reads` shows petrel applied exactly this
/// copy and the metadata watch shows it still at the version that write returned: a
/// promotion whose configs did not change writes nothing (a target using 200 ConfigMaps
/// made 200 patches at every promotion). A copy petrel has not written since it started,
/// one changed or deleted by anyone else, or one the watch cannot vouch for is written.
pub async fn copy_configs_to_primary(
    client: &Client,
    reads: &ConfigReads,
    canary: &Canary,
    tracked: &TrackedConfigs,
) -> Result<(), WorkloadError> {
    let namespace = canary_namespace(canary)?;
    for config_map in &tracked.config_maps {
        let copy = build_primary_config_map(config_map, canary)?;
        apply_copy(
            client,
            &reads.ledger,
            &namespace,
            &copy,
            reads.config_maps.observed(&namespace, &object_name(&copy.metadata)),
        )
        .await?;
    }
    for secret in &tracked.secrets {
        let copy = build_primary_secret(secret, canary)?;
        apply_copy(
            client,
            &reads.ledger,
            &namespace,
            &copy,
            reads.secrets.observed(&namespace, &object_name(&copy.metadata)),
        )
        .await?;
    }
    Ok(())
}

/// Applies one `-primary` copy unless `ledger` shows it unchanged at `observed`.
async fn apply_copy<K>(
    client: &Client,
    ledger: &WriteLedger,
    namespace: &str,
    copy: &K,
    observed: Observed,
) -> Result<(), WorkloadError>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let (kind, name) = (K::kind(&()), object_name(copy.meta()));
    let key = ledger_key(&kind, namespace, &name);
    // The digest covers everything applied (data, labels, annotations, owners); a copy
    // that cannot be serialised is written, never skipped.
    let manifest = serde_json::to_value(copy).unwrap_or(serde_json::Value::Null);
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let write = async {
        match api.patch(&name, &apply_params(), &Patch::Apply(copy)).await {
            Ok(written) => Ok(written.meta().resource_version.clone()),
            Err(error) => Err(WorkloadError::kube(format!("applying {kind} {namespace}/{name}"), error)),
        }
    };
    ledger.apply(key, &manifest, &observed, write).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::test_support::{canary, labels};

    fn names_of(refs: &BTreeMap<String, Need>) -> BTreeSet<String> {
        refs.keys().cloned().collect()
    }
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::{
        ConfigMapEnvSource, ConfigMapKeySelector, ConfigMapProjection, ConfigMapVolumeSource, EnvFromSource, EnvVar,
        EnvVarSource, ProjectedVolumeSource, SecretEnvSource, SecretKeySelector, SecretProjection, SecretVolumeSource,
        Volume, VolumeProjection,
    };

    fn config_map(name: &str, data: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta { name: Some(name.into()), namespace: Some("apps".into()), ..Default::default() },
            data: Some(labels(data)),
            ..Default::default()
        }
    }

    fn secret(name: &str, data: &[(&str, &[u8])]) -> Secret {
        Secret {
            metadata: ObjectMeta { name: Some(name.into()), namespace: Some("apps".into()), ..Default::default() },
            data: Some(data.iter().map(|(k, v)| (k.to_string(), ByteString(v.to_vec()))).collect()),
            type_: Some("Opaque".into()),
            ..Default::default()
        }
    }

    /// A pod spec that uses every kind of reference once.
    fn pod_spec_with_every_reference() -> PodSpec {
        let env_container = Container {
            name: "app".into(),
            env_from: Some(vec![
                EnvFromSource {
                    config_map_ref: Some(ConfigMapEnvSource { name: "env-cm".into(), optional: None }),
                    ..Default::default()
                },
                EnvFromSource {
                    secret_ref: Some(SecretEnvSource { name: "env-secret".into(), optional: Some(true) }),
                    ..Default::default()
                },
            ]),
            env: Some(vec![
                EnvVar {
                    name: "A".into(),
                    value_from: Some(EnvVarSource {
                        config_map_key_ref: Some(ConfigMapKeySelector {
                            name: "key-cm".into(),
                            key: "a".into(),
                            optional: None,
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                EnvVar { name: "PLAIN".into(), value: Some("x".into()), ..Default::default() },
            ]),
            ..Default::default()
        };
        let init_container = Container {
            name: "init".into(),
            env: Some(vec![EnvVar {
                name: "B".into(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: "init-secret".into(),
                        key: "b".into(),
                        optional: None,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        };
        PodSpec {
            containers: vec![env_container],
            init_containers: Some(vec![init_container]),
            volumes: Some(vec![
                Volume {
                    name: "cm".into(),
                    config_map: Some(ConfigMapVolumeSource { name: "vol-cm".into(), ..Default::default() }),
                    ..Default::default()
                },
                Volume {
                    name: "secret".into(),
                    secret: Some(SecretVolumeSource { secret_name: Some("vol-secret".into()), ..Default::default() }),
                    ..Default::default()
                },
                Volume {
                    name: "projected".into(),
                    projected: Some(ProjectedVolumeSource {
                        sources: Some(vec![
                            VolumeProjection {
                                config_map: Some(ConfigMapProjection {
                                    name: "proj-cm".into(),
                                    optional: Some(true),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            },
                            VolumeProjection {
                                secret: Some(SecretProjection { name: "proj-secret".into(), ..Default::default() }),
                                ..Default::default()
                            },
                        ]),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }
    }

    fn names(config_maps: &[&str], secrets: &[&str]) -> ConfigNames {
        ConfigNames {
            config_maps: config_maps.iter().map(|s| s.to_string()).collect(),
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn finds_every_kind_of_reference() {
        let refs = referenced_configs(&pod_spec_with_every_reference());
        assert_eq!(
            refs.config_maps,
            BTreeMap::from([
                ("env-cm".to_string(), Need::Required),
                ("key-cm".to_string(), Need::Required),
                ("proj-cm".to_string(), Need::Optional),
                ("vol-cm".to_string(), Need::Required),
            ])
        );
        assert_eq!(
            refs.secrets,
            BTreeMap::from([
                ("env-secret".to_string(), Need::Optional),
                ("init-secret".to_string(), Need::Required),
                ("proj-secret".to_string(), Need::Required),
                ("vol-secret".to_string(), Need::Required),
            ])
        );
    }

    #[test]
    fn a_name_required_anywhere_is_required() {
        let mut spec = pod_spec_with_every_reference();
        // Reference the optional projected ConfigMap again, this time as required.
        spec.containers[0].env_from.as_mut().unwrap().push(EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource { name: "proj-cm".into(), optional: Some(false) }),
            ..Default::default()
        });
        assert_eq!(referenced_configs(&spec).config_maps["proj-cm"], Need::Required);
    }

    #[test]
    fn checksum_ignores_order_and_sees_content() {
        let a = config_map("c", &[("a", "1"), ("b", "2")]);
        let b = config_map("other-name", &[("b", "2"), ("a", "1")]);
        assert_eq!(config_map_checksum(&a), config_map_checksum(&b));
        assert_ne!(config_map_checksum(&a), config_map_checksum(&config_map("c", &[("a", "1"), ("b", "3")])));
        let mut with_binary = a.clone();
        with_binary.binary_data = Some(BTreeMap::from([("bin".to_string(), ByteString(vec![1, 2]))]));
        assert_ne!(config_map_checksum(&a), config_map_checksum(&with_binary));

        let s = secret("s", &[("k", b"v1")]);
        assert_ne!(secret_checksum(&s), secret_checksum(&secret("s", &[("k", b"v2")])));
        assert_eq!(secret_checksum(&s), secret_checksum(&secret("t", &[("k", b"v1")])));
    }

    #[test]
    fn opt_out_annotations_are_honoured() {
        let mut meta = ObjectMeta::default();
        assert!(!tracking_disabled(&meta));
        meta.annotations = Some(labels(&[("petrel.dev/config-tracking", "disabled")]));
        assert!(tracking_disabled(&meta));
        meta.annotations = Some(labels(&[("flagger.app/config-tracking", "disabled")]));
        assert!(tracking_disabled(&meta));
        meta.annotations = Some(labels(&[("petrel.dev/config-tracking", "enabled")]));
        assert!(!tracking_disabled(&meta));
    }

    fn shared<K>(objects: Vec<K>) -> Vec<Arc<K>> {
        objects.into_iter().map(Arc::new).collect()
    }

    #[test]
    fn resolve_tracks_found_objects_and_skips_optional_and_opted_out() {
        let refs = referenced_configs(&pod_spec_with_every_reference());
        let mut opted_out = config_map("key-cm", &[("a", "1")]);
        opted_out.metadata.annotations = Some(labels(&[("flagger.app/config-tracking", "disabled")]));
        let tracked = resolve_tracked_configs(
            &refs,
            shared(vec![config_map("env-cm", &[("x", "1")]), opted_out, config_map("vol-cm", &[])]),
            shared(vec![secret("init-secret", &[]), secret("proj-secret", &[]), secret("vol-secret", &[])]),
            "apps",
            "podinfo",
        )
        .unwrap();
        assert_eq!(tracked.names(), names(&["env-cm", "vol-cm"], &["init-secret", "proj-secret", "vol-secret"]));
        let checksums = tracked.checksums();
        assert_eq!(
            checksums.keys().cloned().collect::<Vec<_>>(),
            vec![
                "configmap/env-cm",
                "configmap/vol-cm",
                "secret/init-secret",
                "secret/proj-secret",
                "secret/vol-secret"
            ]
        );
        assert_eq!(checksums["configmap/env-cm"], config_map_checksum(&config_map("env-cm", &[("x", "1")])));
    }

    #[test]
    fn resolve_fails_on_a_missing_required_object() {
        let refs = referenced_configs(&pod_spec_with_every_reference());
        let error = resolve_tracked_configs(
            &refs,
            shared(vec![config_map("env-cm", &[]), config_map("key-cm", &[]), config_map("vol-cm", &[])]),
            shared(vec![secret("init-secret", &[]), secret("proj-secret", &[])]),
            "apps",
            "podinfo",
        )
        .unwrap_err();
        assert!(matches!(&error, WorkloadError::MissingConfig { kind: "Secret", name, .. } if name == "vol-secret"));
        assert!(error.to_string().contains("apps/vol-secret"), "{error}");
        assert!(error.is_stalled());
    }

    #[test]
    fn rewrite_points_tracked_references_at_primary_copies() {
        let spec = pod_spec_with_every_reference();
        let rewritten = rewrite_config_refs(
            &spec,
            &names(&["env-cm", "vol-cm", "proj-cm", "key-cm"], &["env-secret", "init-secret", "vol-secret"]),
        );
        let refs = referenced_configs(&rewritten);
        assert_eq!(
            names_of(&refs.config_maps),
            ["env-cm-primary", "key-cm-primary", "proj-cm-primary", "vol-cm-primary"].map(String::from).into()
        );
        // proj-secret is not tracked (opted out): it keeps its name.
        assert_eq!(
            names_of(&refs.secrets),
            ["env-secret-primary", "init-secret-primary", "proj-secret", "vol-secret-primary"].map(String::from).into()
        );
        // Nothing else changed.
        assert_eq!(rewritten.containers[0].env.as_ref().unwrap()[1], spec.containers[0].env.as_ref().unwrap()[1]);
        assert_eq!(rewrite_config_refs(&spec, &ConfigNames::default()), spec);
    }

    #[test]
    fn primary_copies_are_owned_and_renamed() {
        let canary = canary("podinfo");
        let mut source = config_map("settings", &[("a", "1")]);
        source.immutable = Some(true);
        source.metadata.annotations =
            Some(labels(&[("kubectl.kubernetes.io/last-applied-configuration", "{}"), ("team", "x")]));
        let copy = build_primary_config_map(&source, &canary).unwrap();
        assert_eq!(copy.metadata.name.as_deref(), Some("settings-primary"));
        assert_eq!(copy.metadata.namespace.as_deref(), Some("apps"));
        assert_eq!(copy.data, source.data);
        assert_eq!(copy.immutable, None);
        assert_eq!(copy.metadata.annotations, Some(labels(&[("team", "x")])));
        let owner = &copy.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.controller), ("Canary", "podinfo", Some(true)));
        assert_eq!(copy.metadata.labels.as_ref().unwrap()[CANARY_LABEL], "podinfo");

        let s = build_primary_secret(&secret("token", &[("k", b"v")]), &canary).unwrap();
        assert_eq!(s.metadata.name.as_deref(), Some("token-primary"));
        assert_eq!(s.type_.as_deref(), Some("Opaque"));
        assert_eq!(s.data, secret("token", &[("k", b"v")]).data);
    }

    #[test]
    fn copies_need_a_canary_with_a_uid() {
        let mut canary = canary("podinfo");
        canary.metadata.uid = None;
        assert!(matches!(
            build_primary_config_map(&config_map("c", &[]), &canary),
            Err(WorkloadError::CanaryIdentity { field: "uid" })
        ));
    }

    fn pod_spec_referencing(config_maps: &[String], secrets: &[String]) -> PodSpec {
        let env_from = config_maps
            .iter()
            .map(|name| EnvFromSource {
                config_map_ref: Some(ConfigMapEnvSource { name: name.clone(), optional: None }),
                ..Default::default()
            })
            .chain(secrets.iter().map(|name| EnvFromSource {
                secret_ref: Some(SecretEnvSource { name: name.clone(), optional: None }),
                ..Default::default()
            }))
            .collect();
        PodSpec {
            containers: vec![Container { name: "app".into(), env_from: Some(env_from), ..Default::default() }],
            ..Default::default()
        }
    }

    proptest::proptest! {
        #[test]
        fn rewrite_renames_exactly_the_tracked_references(
            config_maps in proptest::collection::vec("[a-d]{1,2}", 0..5),
            secrets in proptest::collection::vec("[a-d]{1,2}", 0..5),
            tracked_config_maps in proptest::collection::btree_set("[a-d]{1,2}", 0..4),
            tracked_secrets in proptest::collection::btree_set("[a-d]{1,2}", 0..4),
        ) {
            let spec = pod_spec_referencing(&config_maps, &secrets);
            let names = ConfigNames { config_maps: tracked_config_maps.clone(), secrets: tracked_secrets.clone() };
            let renamed = |name: &String, tracked: &BTreeSet<String>| {
                if tracked.contains(name) { format!("{name}-primary") } else { name.clone() }
            };
            let refs = referenced_configs(&rewrite_config_refs(&spec, &names));
            let expected_config_maps: BTreeSet<String> =
                config_maps.iter().map(|n| renamed(n, &tracked_config_maps)).collect();
            let expected_secrets: BTreeSet<String> = secrets.iter().map(|n| renamed(n, &tracked_secrets)).collect();
            proptest::prop_assert_eq!(names_of(&refs.config_maps), expected_config_maps);
            proptest::prop_assert_eq!(names_of(&refs.secrets), expected_secrets);
        }
    }
}
