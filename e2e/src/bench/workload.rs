//! The objects a benchmark round applies, for petrel and for Flagger alike: N
//! Deployments, a Canary each (the same spec in each API), the bad-input targets, and
//! the Secrets that only sit in the cluster (`--secrets`). Pure: manifests as JSON.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

/// Image every app starts on.
pub const IMAGE_V0: &str = "ghcr.io/stefanprodan/podinfo:6.0.0";
/// The image of the release.
pub const IMAGE_V1: &str = "ghcr.io/stefanprodan/podinfo:6.0.1";
/// Port of every app and its Service.
pub const PORT: u16 = 9898;
/// The Gateway the `gatewayapi` variant's routes attach to (never created: neither
/// operator reads it, and the simulator plays the data plane).
pub const GATEWAY: &str = "bench-gateway";

/// Which operator a round runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OperatorKind {
    Petrel,
    Flagger,
}

impl OperatorKind {
    /// The Canary kind this operator reconciles.
    pub fn canary_resource(self) -> ApiResource {
        let gvk = match self {
            OperatorKind::Petrel => GroupVersionKind::gvk("petrel.dev", "v1alpha1", "Canary"),
            OperatorKind::Flagger => GroupVersionKind::gvk("flagger.app", "v1beta1", "Canary"),
        };
        ApiResource::from_gvk_with_plural(&gvk, "canaries")
    }

    /// The phases in which a Canary has no release in flight.
    pub fn is_idle_phase(self, phase: &str) -> bool {
        matches!(phase, "Initialized" | "Succeeded")
    }
}

/// The traffic setup of a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Variant {
    /// Provider `kubernetes`: blue/green, `iterations` checks without metrics.
    Kubernetes,
    /// Provider `gatewayapi`: HTTPRoute weights 20/40/60, the builtin success-rate and
    /// duration checks against Prometheus scraping the traffic simulator.
    GatewayApi,
    /// As [`Variant::Kubernetes`], plus three Canaries with hostile targets (1,000
    /// replicas, 200 ConfigMaps, a 1 MiB pod template), released with the others; the
    /// figures are the others'.
    BadInput,
}

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Variant::Kubernetes => "kubernetes",
            Variant::GatewayApi => "gatewayapi",
            Variant::BadInput => "bad-input",
        }
    }

    pub fn parse(text: &str) -> Option<Variant> {
        [Variant::Kubernetes, Variant::GatewayApi, Variant::BadInput].into_iter().find(|v| v.name() == text)
    }

    /// What the Canaries of this variant do, in one line (for the report).
    pub fn describe(self, analysis: &Analysis) -> String {
        match self {
            Variant::Kubernetes => format!(
                "provider kubernetes, interval {}, {} iterations, no metrics",
                analysis.interval, analysis.iterations
            ),
            Variant::GatewayApi => format!(
                "provider gatewayapi (HTTPRoute), interval {}, weights {}..{} by {}, builtin request-success-rate and request-duration from Prometheus scraping the traffic simulator",
                analysis.interval, analysis.step_weight, analysis.max_weight, analysis.step_weight
            ),
            Variant::BadInput => "as kubernetes, plus 3 Canaries whose targets have 1,000 replicas, 200 ConfigMaps and a 1 MiB pod template, released at the same time; figures of the N others".to_string(),
        }
    }
}

/// The analysis every Canary of a round declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    pub interval: String,
    pub iterations: u32,
    pub threshold: u32,
    pub step_weight: u32,
    pub max_weight: u32,
}

impl Default for Analysis {
    fn default() -> Self {
        Analysis { interval: "10s".into(), iterations: 3, threshold: 2, step_weight: 20, max_weight: 60 }
    }
}

/// Name of the i-th app (its Deployment, Canary and Service).
pub fn app_name(index: usize) -> String {
    format!("app-{index:04}")
}

/// A Deployment of one app with `replicas` pods of `image`.
pub fn deployment(namespace: &str, name: &str, image: &str, replicas: u32) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": "app",
                    "image": image,
                    "ports": [{"name": "http", "containerPort": PORT}],
                }]}
            }
        }
    })
}

/// The Canary of one app, in `kind`'s API. Both operators get the same spec; only the
/// API group and Flagger's name of the Gateway API provider differ.
pub fn canary(kind: OperatorKind, variant: Variant, namespace: &str, name: &str, analysis: &Analysis) -> Value {
    let resource = kind.canary_resource();
    let mut service = json!({"port": PORT, "targetPort": PORT});
    let mut spec_analysis = json!({"interval": analysis.interval, "threshold": analysis.threshold});
    let provider = match variant {
        Variant::Kubernetes | Variant::BadInput => {
            spec_analysis["iterations"] = json!(analysis.iterations);
            "kubernetes"
        }
        Variant::GatewayApi => {
            service["gatewayRefs"] = json!([{"name": GATEWAY, "namespace": namespace}]);
            service["hosts"] = json!([format!("{name}.example.com")]);
            spec_analysis["stepWeight"] = json!(analysis.step_weight);
            spec_analysis["maxWeight"] = json!(analysis.max_weight);
            spec_analysis["metrics"] = json!([
                {"name": "request-success-rate", "interval": "30s", "thresholdRange": {"min": 99}},
                {"name": "request-duration", "interval": "30s", "thresholdRange": {"max": 500}},
            ]);
            match kind {
                OperatorKind::Petrel => "gatewayapi",
                OperatorKind::Flagger => "gatewayapi:v1",
            }
        }
    };
    json!({
        "apiVersion": resource.api_version,
        "kind": "Canary",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "provider": provider,
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "progressDeadlineSeconds": 600,
            "service": service,
            "analysis": spec_analysis,
        }
    })
}

/// One hostile target of the bad-input variant.
#[derive(Debug, Clone, PartialEq)]
pub struct BadTarget {
    pub name: String,
    /// The Deployment (its image is set like every other app's).
    pub deployment: Value,
    /// ConfigMaps the Deployment uses, created before it.
    pub config_maps: Vec<Value>,
}

/// Number of ConfigMaps the ConfigMap-heavy bad target uses.
pub const BAD_CONFIG_MAPS: usize = 200;
/// Replicas of the replica-heavy bad target.
pub const BAD_REPLICAS: u32 = 1000;
/// Bytes of the environment variable that makes the big pod template.
pub const BAD_TEMPLATE_BYTES: usize = 1024 * 1024;

/// The three hostile targets: 1,000 replicas, 200 ConfigMaps (each through `envFrom`), a
/// 1 MiB pod template (one environment variable; annotations are limited to 256 KiB).
pub fn bad_targets(namespace: &str, image: &str) -> Vec<BadTarget> {
    let many_replicas = deployment(namespace, "bad-replicas", image, BAD_REPLICAS);

    let mut many_configs = deployment(namespace, "bad-configmaps", image, 1);
    let names: Vec<String> = (0..BAD_CONFIG_MAPS).map(|i| format!("bad-config-{i:03}")).collect();
    many_configs["spec"]["template"]["spec"]["containers"][0]["envFrom"] =
        names.iter().map(|n| json!({"configMapRef": {"name": n}})).collect();
    let config_maps = names
        .iter()
        .map(|n| {
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": n, "namespace": namespace},
                   "data": {format!("KEY_{}", n.replace('-', "_").to_uppercase()): "value"}})
        })
        .collect();

    let mut big_template = deployment(namespace, "bad-template", image, 1);
    big_template["spec"]["template"]["spec"]["containers"][0]["env"] =
        json!([{"name": "BIG", "value": "x".repeat(BAD_TEMPLATE_BYTES)}]);

    vec![
        BadTarget { name: "bad-replicas".into(), deployment: many_replicas, config_maps: Vec::new() },
        BadTarget { name: "bad-configmaps".into(), deployment: many_configs, config_maps },
        BadTarget { name: "bad-template".into(), deployment: big_template, config_maps: Vec::new() },
    ]
}

/// The namespace that holds the Secrets not in a round's namespace (`--secrets`); it
/// lives as long as the control plane.
pub const SECRETS_NAMESPACE: &str = "bench-secrets";

/// How `total` Secrets are spread: (in each round's namespace, in [`SECRETS_NAMESPACE`]).
/// Half (rounded down) sit with the Canaries, the rest elsewhere: a member operator
/// watching the whole cluster sees both.
pub fn secret_split(total: usize) -> (usize, usize) {
    (total / 2, total - total / 2)
}

/// The namespace of the Deployments no Canary names (`--other-deployments`); it lives
/// as long as the control plane.
pub const OTHER_DEPLOYMENTS_NAMESPACE: &str = "bench-other";

/// Name of the i-th Deployment no Canary names.
pub fn other_deployment_name(index: usize) -> String {
    format!("other-{index:05}")
}

/// Name of the i-th Secret of a namespace.
pub fn secret_name(index: usize) -> String {
    format!("bench-secret-{index:05}")
}

/// A Secret no workload uses, with one key of `bytes` bytes of data. The bytes vary
/// (not one repeated character) so nothing on the way compresses them into nothing.
pub fn secret(namespace: &str, name: &str, bytes: usize) -> Value {
    let data: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "Opaque",
        "data": {"payload": STANDARD.encode(data)},
    })
}

/// Sets the image of a Deployment manifest (every container: the apps have one).
pub fn with_image(mut deployment: Value, image: &str) -> Value {
    if let Some(containers) = deployment["spec"]["template"]["spec"]["containers"].as_array_mut() {
        for container in containers {
            container["image"] = json!(image);
        }
    }
    deployment
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_operators_get_the_same_spec_in_their_own_api() {
        let analysis = Analysis::default();
        let petrel = canary(OperatorKind::Petrel, Variant::Kubernetes, "ns", "app-0001", &analysis);
        let flagger = canary(OperatorKind::Flagger, Variant::Kubernetes, "ns", "app-0001", &analysis);
        assert_eq!(petrel["apiVersion"], "petrel.dev/v1alpha1");
        assert_eq!(flagger["apiVersion"], "flagger.app/v1beta1");
        assert_eq!(petrel["spec"], flagger["spec"]);
        assert_eq!(petrel["spec"]["analysis"]["iterations"], 3);
        assert_eq!(petrel["spec"]["analysis"]["interval"], "10s");
    }

    #[test]
    fn gateway_api_differs_only_in_flaggers_provider_name() {
        let analysis = Analysis::default();
        let mut petrel = canary(OperatorKind::Petrel, Variant::GatewayApi, "ns", "a", &analysis);
        let mut flagger = canary(OperatorKind::Flagger, Variant::GatewayApi, "ns", "a", &analysis);
        assert_eq!(petrel["spec"]["provider"], "gatewayapi");
        assert_eq!(flagger["spec"]["provider"], "gatewayapi:v1");
        assert_eq!(petrel["spec"]["analysis"]["metrics"].as_array().map(Vec::len), Some(2));
        petrel["spec"]["provider"] = json!(null);
        flagger["spec"]["provider"] = json!(null);
        assert_eq!(petrel["spec"], flagger["spec"]);
    }

    #[test]
    fn bad_targets_are_as_hostile_as_announced() {
        let bad = bad_targets("ns", IMAGE_V0);
        assert_eq!(bad.len(), 3);
        assert_eq!(bad[0].deployment["spec"]["replicas"], BAD_REPLICAS);
        assert_eq!(bad[1].config_maps.len(), BAD_CONFIG_MAPS);
        assert_eq!(
            bad[1].deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"].as_array().map(Vec::len),
            Some(BAD_CONFIG_MAPS)
        );
        let template = serde_json::to_string(&bad[2].deployment["spec"]["template"]).unwrap();
        assert!(template.len() > BAD_TEMPLATE_BYTES, "{}", template.len());
        let released = with_image(bad[2].deployment.clone(), IMAGE_V1);
        assert_eq!(released["spec"]["template"]["spec"]["containers"][0]["image"], IMAGE_V1);
    }

    #[test]
    fn secrets_carry_the_asked_bytes_and_are_split_without_loss() {
        let s = secret("ns", &secret_name(7), 10 * 1024);
        assert_eq!(s["metadata"]["name"], "bench-secret-00007");
        assert_eq!(s["metadata"]["namespace"], "ns");
        let payload = STANDARD.decode(s["data"]["payload"].as_str().unwrap()).unwrap();
        assert_eq!(payload.len(), 10 * 1024);
        assert_ne!(payload[0], payload[1]);
        assert_eq!(secret_split(5000), (2500, 2500));
        assert_eq!(secret_split(5), (2, 3));
        assert_eq!(secret_split(0), (0, 0));
    }

    #[test]
    fn variants_round_trip_their_names() {
        for v in [Variant::Kubernetes, Variant::GatewayApi, Variant::BadInput] {
            assert_eq!(Variant::parse(v.name()), Some(v));
        }
        assert_eq!(Variant::parse("istio"), None);
    }
}
