//! The demo's decisions, free of I/O: which members exist, how a release
//! changes the rendered GitOps manifests, and how the hub's manifests
//! (`examples/podinfo/hub`) are fitted to the members the demo runs. Which
//! member gets a release when is the hub's decision, not the demo's.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_yaml::Value;

/// Why the manifests could not be prepared for a release.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ManifestError {
    /// `kubectl kustomize` produced something that is not YAML.
    #[error("the rendered manifests are not valid YAML: {0}")]
    NotYaml(String),
    /// No container of any Deployment runs the app's image.
    #[error("no Deployment container runs an image of {repository} in the rendered manifests")]
    ImageNotFound {
        /// The image repository looked for.
        repository: String,
    },
    /// The rendered manifests hold no Canary to tune.
    #[error("no Canary in the rendered manifests")]
    NoCanary,
    /// The hub's manifests hold no Rollout.
    #[error("no Rollout in the hub's manifests")]
    NoRollout,
    /// A member of the demo has no Cluster in the hub's manifests: the hub would never
    /// release to it.
    #[error("no Cluster named {0} in the hub's manifests (examples/podinfo/hub/clusters.yaml)")]
    NoCluster(String),
    /// A Cluster lacks its `spec.kubeconfigSecretRef` name or namespace.
    #[error("Cluster {0} has no complete spec.kubeconfigSecretRef")]
    NoSecretRef(String),
}

/// One member cluster of the demo fleet, named after its GitOps overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSpec {
    /// `<env>-<region>`, e.g. `staging-eu-west-1`.
    pub name: String,
    /// The overlay under the example's root, e.g. `clusters/staging/eu-west-1`.
    pub overlay: String,
    /// `env`, `region` and, for staging, `role=canary`: what a hub's waves select on.
    pub labels: BTreeMap<String, String>,
}

impl MemberSpec {
    /// The member an overlay `clusters/<env>/<region>` describes. Staging
    /// members are the fleet's canary clusters.
    pub fn from_overlay(overlay: &str) -> Option<MemberSpec> {
        let parts: Vec<&str> = overlay.trim_matches('/').split('/').collect();
        let [.., env, region] = parts.as_slice() else {
            return None;
        };
        if env.is_empty() || region.is_empty() || parts.len() < 2 {
            return None;
        }
        let mut labels =
            BTreeMap::from([("env".to_owned(), (*env).to_owned()), ("region".to_owned(), (*region).to_owned())]);
        if *env == "staging" {
            labels.insert("role".into(), "canary".into());
        }
        Some(MemberSpec { name: format!("{env}-{region}"), overlay: parts.join("/"), labels })
    }

    /// Whether the member is a canary cluster (first wave).
    pub fn is_canary(&self) -> bool {
        self.labels.get("role").is_some_and(|r| r == "canary")
    }

    /// `env=staging,region=eu-west-1,role=canary`.
    pub fn labels_text(&self) -> String {
        self.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
    }
}

/// The members, in the order overlays are listed: the default demo uses the
/// example's overlays; `limit` keeps the first `n` after putting the
/// canary clusters first (so one member is the staging cluster).
pub fn members(overlays: &[&str], limit: Option<usize>) -> Vec<MemberSpec> {
    let mut members: Vec<MemberSpec> = overlays.iter().filter_map(|o| MemberSpec::from_overlay(o)).collect();
    // Stable: the overlays' own order is kept within canary and non-canary members.
    members.sort_by_key(|m| !m.is_canary());
    if let Some(n) = limit {
        members.truncate(n.max(1));
    }
    members
}

/// `ghcr.io/stefanprodan/podinfo:6.7.0` → (`ghcr.io/stefanprodan/podinfo`, `6.7.0`).
/// A port in the registry (`host:5000/app`) is not a tag.
pub fn split_image(image: &str) -> (&str, Option<&str>) {
    let name_start = image.rfind('/').map_or(0, |i| i + 1);
    match image[name_start..].rfind(':') {
        Some(i) => (&image[..name_start + i], Some(&image[name_start + i + 1..])),
        None => (image, None),
    }
}

/// Analysis numbers to set on the rendered Canary (the fast test mode); the
/// default demo keeps the GitOps tree's numbers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AnalysisTuning {
    /// `analysis.interval`, e.g. `2s`.
    pub interval: Option<String>,
    /// `analysis.stepWeight`.
    pub step_weight: Option<u32>,
    /// `analysis.maxWeight`.
    pub max_weight: Option<u32>,
    /// `analysis.threshold`.
    pub threshold: Option<u32>,
    /// `interval` (the query window) of every metric, e.g. `10s`.
    pub metric_interval: Option<String>,
}

impl AnalysisTuning {
    /// Whether the tuning changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == AnalysisTuning::default()
    }
}

fn parse_documents(yaml: &str) -> Result<Vec<Value>, ManifestError> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value =
            <Value as serde::Deserialize>::deserialize(doc).map_err(|e| ManifestError::NotYaml(e.to_string()))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

fn render_documents(docs: &[Value]) -> Result<String, ManifestError> {
    let mut out = String::new();
    for doc in docs {
        let text = serde_yaml::to_string(doc).map_err(|e| ManifestError::NotYaml(e.to_string()))?;
        // Writing to a String cannot fail.
        let _ = write!(out, "---\n{text}");
    }
    Ok(out)
}

fn kind(doc: &Value) -> Option<&str> {
    doc.get("kind").and_then(Value::as_str)
}

/// The rendered manifests with every Deployment container running an image
/// of `repository` switched to `tag`: what a commit bumping the tag in Git
/// would render to.
pub fn set_image_tag(rendered: &str, repository: &str, tag: &str) -> Result<String, ManifestError> {
    let mut docs = parse_documents(rendered)?;
    let mut changed = 0;
    for doc in docs.iter_mut().filter(|d| kind(d) == Some("Deployment")) {
        let Some(containers) = doc
            .get_mut("spec")
            .and_then(|s| s.get_mut("template"))
            .and_then(|t| t.get_mut("spec"))
            .and_then(|s| s.get_mut("containers"))
            .and_then(Value::as_sequence_mut)
        else {
            continue;
        };
        for container in containers {
            let Some(image) = container.get("image").and_then(Value::as_str) else { continue };
            if split_image(image).0 == repository {
                container["image"] = Value::String(format!("{repository}:{tag}"));
                changed += 1;
            }
        }
    }
    if changed == 0 {
        return Err(ManifestError::ImageNotFound { repository: repository.to_owned() });
    }
    render_documents(&docs)
}

/// The image of `repository` the rendered manifests run (the current
/// release in Git), e.g. `ghcr.io/stefanprodan/podinfo:6.7.0`.
pub fn image_of(rendered: &str, repository: &str) -> Result<String, ManifestError> {
    let docs = parse_documents(rendered)?;
    docs.iter()
        .filter(|d| kind(d) == Some("Deployment"))
        .filter_map(|d| d.get("spec")?.get("template")?.get("spec")?.get("containers")?.as_sequence())
        .flatten()
        .filter_map(|c| c.get("image").and_then(Value::as_str))
        .find(|image| split_image(image).0 == repository)
        .map(str::to_owned)
        .ok_or_else(|| ManifestError::ImageNotFound { repository: repository.to_owned() })
}

/// The rendered manifests with the Canary's analysis numbers replaced.
pub fn tune_analysis(rendered: &str, tuning: &AnalysisTuning) -> Result<String, ManifestError> {
    if tuning.is_empty() {
        return Ok(rendered.to_owned());
    }
    let mut docs = parse_documents(rendered)?;
    let mut found = false;
    for doc in docs.iter_mut().filter(|d| kind(d) == Some("Canary")) {
        let Some(analysis) = doc.get_mut("spec").and_then(|s| s.get_mut("analysis")) else { continue };
        found = true;
        if let Some(interval) = &tuning.interval {
            analysis["interval"] = Value::String(interval.clone());
        }
        for (field, value) in
            [("stepWeight", tuning.step_weight), ("maxWeight", tuning.max_weight), ("threshold", tuning.threshold)]
        {
            if let Some(v) = value {
                analysis[field] = Value::Number(v.into());
            }
        }
        if let Some(window) = &tuning.metric_interval
            && let Some(metrics) = analysis.get_mut("metrics").and_then(Value::as_sequence_mut)
        {
            for metric in metrics {
                metric["interval"] = Value::String(window.clone());
            }
        }
    }
    if !found {
        return Err(ManifestError::NoCanary);
    }
    render_documents(&docs)
}

fn name(doc: &Value) -> Option<&str> {
    doc.get("metadata")?.get("name")?.as_str()
}

/// The hub's rendered manifests (`kubectl kustomize examples/podinfo/hub`) fitted
/// to the demo: only the Clusters of `members` (a Cluster whose kubeconfig
/// Secret never comes would be a broken Cluster the hub refuses to release
/// around), and every wave that soaks soaking `soak` instead (fast mode).
pub fn fit_hub_manifests(rendered: &str, members: &[String], soak: Option<&str>) -> Result<String, ManifestError> {
    let mut docs = parse_documents(rendered)?;
    for member in members {
        if !docs.iter().any(|d| kind(d) == Some("Cluster") && name(d) == Some(member)) {
            return Err(ManifestError::NoCluster(member.clone()));
        }
    }
    docs.retain(|d| kind(d) != Some("Cluster") || name(d).is_some_and(|n| members.iter().any(|m| m == n)));
    let mut rollouts = docs.iter_mut().filter(|d| kind(d) == Some("Rollout")).peekable();
    if rollouts.peek().is_none() {
        return Err(ManifestError::NoRollout);
    }
    if let Some(soak) = soak {
        for rollout in rollouts {
            let waves = rollout.get_mut("spec").and_then(|s| s.get_mut("waves")).and_then(Value::as_sequence_mut);
            for wave in waves.into_iter().flatten() {
                if wave.get("soak").is_some() {
                    wave["soak"] = Value::String(soak.to_owned());
                }
            }
        }
    }
    render_documents(&docs)
}

/// Where the hub expects one member's kubeconfig, as its Cluster says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeconfigSecretRef {
    pub cluster: String,
    pub namespace: String,
    pub name: String,
    pub key: String,
}

/// The kubeconfig Secret each Cluster of the hub's manifests refers to.
pub fn kubeconfig_secret_refs(rendered: &str) -> Result<Vec<KubeconfigSecretRef>, ManifestError> {
    let docs = parse_documents(rendered)?;
    let mut refs = Vec::new();
    for cluster in docs.iter().filter(|d| kind(d) == Some("Cluster")) {
        let cluster_name = name(cluster).unwrap_or_default().to_owned();
        let secret_ref = cluster.get("spec").and_then(|s| s.get("kubeconfigSecretRef"));
        let field = |f: &str| secret_ref.and_then(|r| r.get(f)).and_then(Value::as_str).map(str::to_owned);
        let (Some(namespace), Some(secret)) = (field("namespace"), field("name")) else {
            return Err(ManifestError::NoSecretRef(cluster_name));
        };
        // The API's default key, as the hub reads it.
        let key = field("key").unwrap_or_else(|| "kubeconfig".into());
        refs.push(KubeconfigSecretRef { cluster: cluster_name, namespace, name: secret, key });
    }
    Ok(refs)
}

/// The Secret holding a member's kubeconfig where its Cluster points.
pub fn kubeconfig_secret(secret_ref: &KubeconfigSecretRef, kubeconfig: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": secret_ref.name, "namespace": secret_ref.namespace},
        "stringData": {(secret_ref.key.clone()): kubeconfig},
    })
}

/// `(namespace, name)` of the (first) Rollout in the hub's manifests.
pub fn rollout_ref(rendered: &str) -> Result<(String, String), ManifestError> {
    let docs = parse_documents(rendered)?;
    let rollout = docs.iter().find(|d| kind(d) == Some("Rollout")).ok_or(ManifestError::NoRollout)?;
    let namespace = rollout.get("metadata").and_then(|m| m.get("namespace")).and_then(Value::as_str);
    Ok((namespace.unwrap_or("default").to_owned(), name(rollout).unwrap_or_default().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RENDERED: &str = r#"apiVersion: v1
kind: Namespace
metadata:
  name: podinfo
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: podinfo
  namespace: podinfo
spec:
  replicas: 2
  template:
    spec:
      containers:
      - image: ghcr.io/stefanprodan/podinfo:6.7.0
        name: podinfo
      - image: docker.io/library/busybox:1.36
        name: sidecar
---
apiVersion: petrel.dev/v1alpha1
kind: Canary
metadata:
  name: podinfo
  namespace: podinfo
spec:
  analysis:
    interval: 5s
    maxWeight: 50
    metrics:
    - interval: 30s
      name: request-success-rate
    - interval: 30s
      name: request-duration
    stepWeight: 10
    threshold: 3
"#;
    const PODINFO: &str = "ghcr.io/stefanprodan/podinfo";

    #[test]
    fn overlays_name_members_and_staging_is_the_canary_cluster() {
        let m = MemberSpec::from_overlay("clusters/staging/eu-west-1/").unwrap();
        assert_eq!(m.name, "staging-eu-west-1");
        assert_eq!(m.overlay, "clusters/staging/eu-west-1");
        assert!(m.is_canary());
        assert_eq!(m.labels_text(), "env=staging,region=eu-west-1,role=canary");
        let p = MemberSpec::from_overlay("clusters/production/us-east-1").unwrap();
        assert_eq!(p.name, "production-us-east-1");
        assert!(!p.is_canary());
        assert_eq!(MemberSpec::from_overlay("staging"), None);
    }

    #[test]
    fn canary_clusters_come_first_and_limit_keeps_them() {
        let overlays = ["clusters/production/eu-west-1", "clusters/staging/eu-west-1", "clusters/production/us-east-1"];
        let all = members(&overlays, None);
        let names: Vec<&str> = all.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["staging-eu-west-1", "production-eu-west-1", "production-us-east-1"]);
        let one = members(&overlays, Some(1));
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].name, "staging-eu-west-1");
        assert_eq!(members(&overlays, Some(0)).len(), 1, "a fleet has at least one member");
    }

    #[test]
    fn images_split_into_repository_and_tag() {
        assert_eq!(split_image("ghcr.io/stefanprodan/podinfo:6.7.0"), ("ghcr.io/stefanprodan/podinfo", Some("6.7.0")));
        assert_eq!(split_image("localhost:5000/podinfo"), ("localhost:5000/podinfo", None));
        assert_eq!(split_image("podinfo"), ("podinfo", None));
    }

    #[test]
    fn a_release_changes_only_the_apps_image() {
        let out = set_image_tag(RENDERED, PODINFO, "6.7.1").unwrap();
        assert_eq!(image_of(&out, PODINFO).unwrap(), "ghcr.io/stefanprodan/podinfo:6.7.1");
        assert!(out.contains("docker.io/library/busybox:1.36"), "{out}");
        assert!(!out.contains("6.7.0"), "{out}");
        // Every other document survives.
        let docs = parse_documents(&out).unwrap();
        assert_eq!(docs.iter().filter_map(kind).collect::<Vec<_>>(), ["Namespace", "Deployment", "Canary"]);
        assert_eq!(image_of(RENDERED, PODINFO).unwrap(), "ghcr.io/stefanprodan/podinfo:6.7.0");
    }

    #[test]
    fn a_release_of_an_image_nobody_runs_is_an_error() {
        assert_eq!(
            set_image_tag(RENDERED, "ghcr.io/other/app", "1.0.0"),
            Err(ManifestError::ImageNotFound { repository: "ghcr.io/other/app".into() })
        );
        assert!(matches!(set_image_tag("a: [", PODINFO, "1"), Err(ManifestError::NotYaml(_))));
    }

    #[test]
    fn tuning_sets_the_analysis_numbers_and_empty_tuning_changes_nothing() {
        assert_eq!(tune_analysis(RENDERED, &AnalysisTuning::default()).unwrap(), RENDERED);
        let tuning = AnalysisTuning {
            interval: Some("2s".into()),
            step_weight: Some(25),
            max_weight: Some(50),
            threshold: Some(2),
            metric_interval: Some("10s".into()),
        };
        let out = tune_analysis(RENDERED, &tuning).unwrap();
        let canary = parse_documents(&out).unwrap().into_iter().find(|d| kind(d) == Some("Canary")).unwrap();
        let analysis = &canary["spec"]["analysis"];
        assert_eq!(analysis["interval"].as_str(), Some("2s"));
        assert_eq!(analysis["stepWeight"].as_u64(), Some(25));
        assert_eq!(analysis["threshold"].as_u64(), Some(2));
        let windows: Vec<_> =
            analysis["metrics"].as_sequence().unwrap().iter().map(|m| m["interval"].clone()).collect();
        assert_eq!(windows, vec![Value::String("10s".into()), Value::String("10s".into())]);
        let no_canary = "kind: Namespace\nmetadata: {name: x}\n";
        assert_eq!(tune_analysis(no_canary, &tuning), Err(ManifestError::NoCanary));
    }

    const HUB: &str = r#"apiVersion: v1
kind: Namespace
metadata:
  name: petrel-system
---
apiVersion: petrel.dev/v1alpha1
kind: Cluster
metadata:
  name: staging-eu-west-1
  labels: {env: staging, role: canary}
spec:
  kubeconfigSecretRef: {name: staging-kc, namespace: petrel-system, key: kubeconfig}
---
apiVersion: petrel.dev/v1alpha1
kind: Cluster
metadata:
  name: production-eu-west-1
  labels: {env: production}
spec:
  kubeconfigSecretRef: {name: prod-kc, namespace: petrel-system}
---
apiVersion: petrel.dev/v1alpha1
kind: Rollout
metadata:
  name: podinfo
  namespace: petrel-system
spec:
  canaryRef: {namespace: podinfo, name: podinfo}
  waves:
  - name: canary
    clusterSelector: {matchLabels: {role: canary}}
    soak: 20s
  - name: production
    clusterSelector: {matchLabels: {env: production}}
"#;

    #[test]
    fn the_hub_keeps_only_the_demos_clusters_and_takes_the_fast_soak() {
        let fitted = fit_hub_manifests(HUB, &["staging-eu-west-1".into()], Some("3s")).unwrap();
        let docs = parse_documents(&fitted).unwrap();
        let clusters: Vec<_> = docs.iter().filter(|d| kind(d) == Some("Cluster")).filter_map(name).collect();
        assert_eq!(clusters, ["staging-eu-west-1"]);
        let rollout = docs.iter().find(|d| kind(d) == Some("Rollout")).unwrap();
        let waves = rollout["spec"]["waves"].as_sequence().unwrap();
        assert_eq!(waves[0]["soak"].as_str(), Some("3s"));
        assert!(waves[1].get("soak").is_none(), "a wave without soak stays without: {fitted}");
        assert_eq!(docs.iter().filter_map(kind).collect::<Vec<_>>(), ["Namespace", "Cluster", "Rollout"]);
        // Without a fast soak the committed soak stays.
        let kept = fit_hub_manifests(HUB, &["staging-eu-west-1".into()], None).unwrap();
        assert!(kept.contains("soak: 20s"), "{kept}");
    }

    #[test]
    fn a_member_without_a_cluster_or_a_hub_without_rollout_is_an_error() {
        assert_eq!(
            fit_hub_manifests(HUB, &["production-us-east-1".into()], None),
            Err(ManifestError::NoCluster("production-us-east-1".into()))
        );
        let no_rollout = &HUB[..HUB.rfind("---").unwrap()];
        assert_eq!(fit_hub_manifests(no_rollout, &[], None), Err(ManifestError::NoRollout));
        assert_eq!(rollout_ref(no_rollout), Err(ManifestError::NoRollout));
        assert_eq!(rollout_ref(HUB).unwrap(), ("petrel-system".to_owned(), "podinfo".to_owned()));
    }

    #[test]
    fn secrets_go_where_the_clusters_point() {
        let refs = kubeconfig_secret_refs(HUB).unwrap();
        assert_eq!(
            refs[1],
            KubeconfigSecretRef {
                cluster: "production-eu-west-1".into(),
                namespace: "petrel-system".into(),
                name: "prod-kc".into(),
                key: "kubeconfig".into(),
            }
        );
        let secret = kubeconfig_secret(&refs[0], "apiVersion: v1\nkind: Config\n");
        assert_eq!(secret["metadata"]["name"], "staging-kc");
        assert_eq!(secret["stringData"]["kubeconfig"], "apiVersion: v1\nkind: Config\n");
        let broken = HUB.replace("{name: prod-kc, namespace: petrel-system}", "{name: prod-kc}");
        assert_eq!(kubeconfig_secret_refs(&broken), Err(ManifestError::NoSecretRef("production-eu-west-1".into())));
    }

    /// The committed hub manifests name exactly the members the overlays make,
    /// with the labels the waves select and a Secret per Cluster.
    #[test]
    fn the_committed_hub_manifests_match_the_overlays() {
        let root = crate::repo_root().join("examples/podinfo/hub");
        let files = ["namespace.yaml", "clusters.yaml", "rollout.yaml"];
        let text: Vec<String> = files.iter().map(|f| std::fs::read_to_string(root.join(f)).unwrap()).collect();
        let rendered = text.join("\n---\n");
        let docs = parse_documents(&rendered).unwrap();
        for member in members(&super::super::OVERLAYS, None) {
            let cluster = docs
                .iter()
                .find(|d| kind(d) == Some("Cluster") && name(d) == Some(&member.name))
                .unwrap_or_else(|| panic!("no Cluster {} in examples/podinfo/hub", member.name));
            for (k, v) in &member.labels {
                assert_eq!(cluster["metadata"]["labels"][k.as_str()].as_str(), Some(v.as_str()), "{}", member.name);
            }
        }
        assert_eq!(kubeconfig_secret_refs(&rendered).unwrap().len(), super::super::OVERLAYS.len());
        assert_eq!(rollout_ref(&rendered).unwrap(), ("petrel-system".to_owned(), "podinfo".to_owned()));
        let kustomization = std::fs::read_to_string(root.join("kustomization.yaml")).unwrap();
        assert!(files.iter().all(|f| kustomization.contains(f)), "{kustomization}");
    }
}
