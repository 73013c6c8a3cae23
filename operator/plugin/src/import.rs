//! `kubectl petrel import`: Flagger's Canaries, MetricTemplates and AlertProviders
//! (`flagger.app/v1beta1`) as petrel ones (`petrel.dev/v1alpha1`), with a report of
//! everything a person must look at. Pure: the binary reads the objects (from the cluster
//! or from files) and applies or prints what [`import`] returns.
//!
//! What changes on the way: the apiVersion; the object's metadata keeps its name,
//! namespace, labels and annotations (not kubectl's last-applied configuration, not what
//! the API server writes); `status` goes. Fields petrel refuses (App Mesh's
//! `service.meshName` and `service.backends`) and fields petrel's CRD does not have (a
//! newer Flagger's) are dropped and reported. An object petrel cannot take at all (a
//! Canary with a retired provider, a MetricTemplate of type `externalmetrics`) is not
//! written and is reported. Secrets referenced are reported: petrel reads them with the
//! same keys, but a person must check they exist where petrel looks for them.

use kube::CustomResourceExt;
use serde_json::{Map, Value};

use petrel_api::canary::{APP_MESH_FIELDS_MESSAGE, RETIRED_PROVIDER_MESSAGE, RETIRED_PROVIDERS};
use petrel_api::{AlertProvider, Canary, MetricTemplate};

/// Flagger's API version, the one `import` reads.
pub const FLAGGER_API_VERSION: &str = "flagger.app/v1beta1";
/// petrel's API version, the one `import` writes.
pub const PETREL_API_VERSION: &str = "petrel.dev/v1alpha1";
/// The kinds `import` converts, in the order they are applied (a Canary last, once the
/// templates and providers it names exist).
pub const KINDS: [&str; 3] = ["MetricTemplate", "AlertProvider", "Canary"];

/// Labels and annotations that describe the Flagger object, not the petrel one.
const DROPPED_ANNOTATIONS: &[&str] = &["kubectl.kubernetes.io/last-applied-configuration"];

/// Something about one object that needs a person's attention.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// `Kind namespace/name` of the Flagger object.
    pub object: String,
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.object, self.message)
    }
}

/// The result of an import: the petrel objects to write, in [`KINDS`] order, and the
/// findings about all the objects read (written or not).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Imported {
    pub objects: Vec<Value>,
    pub findings: Vec<Finding>,
}

impl Imported {
    /// The findings, one per line, for a person.
    pub fn report(&self) -> String {
        if self.findings.is_empty() {
            return "nothing needs attention\n".to_string();
        }
        self.findings.iter().map(|f| format!("- {f}\n")).collect()
    }
}

/// Converts every Flagger object of `objects`; anything else (a Deployment in the same
/// file, say) is skipped with a finding.
pub fn import(objects: &[Value]) -> Imported {
    let mut out = Imported::default();
    let mut converted = Vec::new();
    for object in objects {
        let (written, findings) = convert(object);
        out.findings.extend(findings);
        converted.extend(written);
    }
    converted.sort_by_key(|o| KINDS.iter().position(|k| o["kind"] == *k).unwrap_or(KINDS.len()));
    out.objects = converted;
    out
}

fn describe(object: &Value) -> String {
    let kind = object["kind"].as_str().unwrap_or("object");
    let name = object["metadata"]["name"].as_str().unwrap_or("<unnamed>");
    match object["metadata"]["namespace"].as_str() {
        Some(namespace) => format!("{kind} {namespace}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// One Flagger object as a petrel one (`None` when petrel cannot take it), with its findings.
pub fn convert(object: &Value) -> (Option<Value>, Vec<Finding>) {
    let what = describe(object);
    let mut findings = Vec::new();
    let mut note = |message: String| findings.push(Finding { object: what.clone(), message });
    let kind = object["kind"].as_str().unwrap_or_default();
    if object["apiVersion"] != FLAGGER_API_VERSION || !KINDS.contains(&kind) {
        note(format!(
            "skipped: not a Flagger Canary, MetricTemplate or AlertProvider ({} {kind})",
            object["apiVersion"].as_str().unwrap_or("no apiVersion")
        ));
        return (None, findings);
    }
    let mut spec = object["spec"].clone();
    if !spec.is_object() {
        note("skipped: it has no spec".to_string());
        return (None, findings);
    }

    match kind {
        "Canary" => {
            if let Some(provider) = spec["provider"].as_str().filter(|p| RETIRED_PROVIDERS.contains(p)) {
                note(format!("not imported: provider {provider}: {RETIRED_PROVIDER_MESSAGE}"));
                return (None, findings);
            }
            if let Some(service) = spec.get_mut("service").and_then(Value::as_object_mut) {
                for field in ["meshName", "backends"] {
                    if service.remove(field).is_some() {
                        note(format!("dropped spec.service.{field}: {APP_MESH_FIELDS_MESSAGE}"));
                    }
                }
            }
            if let Some(reference) = spec.get_mut("ingressRef").and_then(Value::as_object_mut) {
                let old = reference.get("apiVersion").and_then(Value::as_str).map(str::to_string);
                if let Some(old) = old.filter(|v| v != "networking.k8s.io/v1") {
                    reference.insert("apiVersion".into(), Value::String("networking.k8s.io/v1".into()));
                    note(format!(
                        "changed spec.ingressRef.apiVersion from {old} to networking.k8s.io/v1, the version petrel reads Ingresses through"
                    ));
                }
            }
            note(format!(
                "hand-over: where Flagger runs this Canary it owns {}-primary, its Services and routes, and petrel leaves them alone (Stalled, PrimaryNameTaken) until they are handed over (docs/flagger.md, Migration)",
                spec["targetRef"]["name"].as_str().unwrap_or("<target>")
            ));
        }
        "MetricTemplate" => {
            if spec["provider"]["type"] == "externalmetrics" {
                note("not imported: provider type externalmetrics (the Kubernetes external metrics API) is not supported by petrel; query the metric's own backend instead (prometheus, datadog, cloudwatch, ...)".to_string());
                return (None, findings);
            }
            if let Some(secret) = spec["provider"]["secretRef"]["name"].as_str() {
                note(format!(
                    "reads Secret {secret}: petrel expects Flagger's keys for {} (docs/metrics.md); check them, and that petrel may read the Secret",
                    spec["provider"]["type"].as_str().unwrap_or("this provider")
                ));
            }
        }
        _ => {
            if let Some(secret) = spec["secretRef"]["name"].as_str() {
                note(format!(
                    "reads Secret {secret}: petrel reads its address (and token) keys as Flagger does; check that petrel may read the Secret"
                ));
            }
        }
    }

    let schema = spec_schema(kind);
    let mut dropped = Vec::new();
    prune(&schema, &mut spec, "spec", &mut dropped);
    for path in dropped {
        note(format!("dropped {path}: petrel's {kind} has no such field"));
    }

    let mut metadata = Map::new();
    for key in ["name", "namespace", "labels"] {
        if let Some(value) = object["metadata"].get(key) {
            metadata.insert(key.into(), value.clone());
        }
    }
    if let Some(annotations) = object["metadata"]["annotations"].as_object() {
        let kept: Map<String, Value> = annotations
            .iter()
            .filter(|(k, _)| !DROPPED_ANNOTATIONS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !kept.is_empty() {
            metadata.insert("annotations".into(), Value::Object(kept));
        }
    }
    let converted = serde_json::json!({
        "apiVersion": PETREL_API_VERSION,
        "kind": kind,
        "metadata": metadata,
        "spec": spec,
    });
    if kind == "Canary"
        && let Some(refusal) = routing_refusal(&converted)
    {
        note(format!("petrel will stall this Canary (InvalidRouting) until it is changed: {refusal}"));
    }
    (Some(converted), findings)
}

/// Why petrel's controller would refuse to route this converted Canary (route options or
/// session affinity its provider's router does not write). A Canary without a provider
/// takes the operator's default, unknown here, so it is not judged.
fn routing_refusal(converted: &Value) -> Option<String> {
    let canary: Canary = serde_json::from_value(converted.clone()).ok()?;
    let provider = petrel_core::Provider::parse(canary.spec.provider.as_deref()?).ok()?;
    petrel_core::router_options::routing_refusal(&canary, provider)
}

/// The `spec` schema of petrel's CRD for `kind`.
fn spec_schema(kind: &str) -> Value {
    let crd = match kind {
        "Canary" => Canary::crd(),
        "MetricTemplate" => MetricTemplate::crd(),
        _ => AlertProvider::crd(),
    };
    let schema = crd.spec.versions.first().and_then(|v| v.schema.as_ref()).and_then(|s| s.open_api_v3_schema.as_ref());
    serde_json::to_value(schema).map(|s| s["properties"]["spec"].clone()).unwrap_or(Value::Null)
}

/// Removes what `schema` does not declare (where it keeps no unknown fields), recording
/// the dropped paths.
fn prune(schema: &Value, value: &mut Value, path: &str, dropped: &mut Vec<String>) {
    if schema.is_null() || schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match value {
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let child_path = format!("{path}.{key}");
                let child_schema = properties.and_then(|p| p.get(&key)).or(additional);
                match (child_schema, map.get_mut(&key)) {
                    (Some(child_schema), Some(child)) => prune(child_schema, child, &child_path, dropped),
                    _ => {
                        map.remove(&key);
                        dropped.push(child_path);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(item_schema, item, &format!("{path}[{i}]"), dropped);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn flagger_canary(spec: Value) -> Value {
        json!({
            "apiVersion": "flagger.app/v1beta1",
            "kind": "Canary",
            "metadata": {
                "name": "podinfo", "namespace": "test", "uid": "u-1", "resourceVersion": "7",
                "labels": {"team": "web"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "owner": "web"},
                "managedFields": [{"manager": "kubectl"}],
            },
            "spec": spec,
            "status": {"phase": "Succeeded"},
        })
    }

    fn base_spec() -> Value {
        json!({
            "provider": "istio",
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
            "service": {"port": 9898, "retries": {"attempts": 3}},
            "analysis": {"interval": "1m", "threshold": 5, "stepWeight": 10, "maxWeight": 50,
                "metrics": [{"name": "request-success-rate", "thresholdRange": {"min": 99}, "interval": "1m"}]},
        })
    }

    #[test]
    fn a_canary_changes_only_its_api_version_and_loses_what_the_server_wrote() {
        let imported = import(&[flagger_canary(base_spec())]);
        let [canary] = &imported.objects[..] else { panic!("one object: {imported:?}") };
        assert_eq!(canary["apiVersion"], PETREL_API_VERSION);
        assert_eq!(canary["kind"], "Canary");
        assert_eq!(canary["spec"], base_spec());
        assert_eq!(
            canary["metadata"],
            json!({"name": "podinfo", "namespace": "test", "labels": {"team": "web"}, "annotations": {"owner": "web"}})
        );
        assert!(canary.get("status").is_none());
        // It deserializes as petrel's Canary.
        let typed: Canary = serde_json::from_value(canary.clone()).expect("a petrel Canary");
        assert_eq!(typed.spec.service.port, 9898);
        // The only finding is the hand-over.
        let messages: Vec<&str> = imported.findings.iter().map(|f| f.message.as_str()).collect();
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert!(
            messages[0].starts_with("hand-over: where Flagger runs this Canary it owns podinfo-primary"),
            "{messages:?}"
        );
        assert_eq!(imported.findings[0].object, "Canary test/podinfo");
    }

    #[test]
    fn refused_and_unknown_fields_are_dropped_and_reported() {
        let mut spec = base_spec();
        spec["service"]["meshName"] = json!("global");
        spec["service"]["backends"] = json!(["backend.test"]);
        spec["service"]["newerFlaggerField"] = json!(true);
        spec["analysis"]["metrics"][0]["mystery"] = json!(1);
        spec["ingressRef"] = json!({"apiVersion": "extensions/v1beta1", "kind": "Ingress", "name": "podinfo"});
        let imported = import(&[flagger_canary(spec)]);
        let canary = &imported.objects[0];
        let service = canary["spec"]["service"].as_object().unwrap();
        assert!(!service.contains_key("meshName") && !service.contains_key("backends"));
        assert!(!service.contains_key("newerFlaggerField"));
        assert_eq!(canary["spec"]["service"]["retries"], json!({"attempts": 3}), "free-form blocks are kept");
        assert!(canary["spec"]["analysis"]["metrics"][0].get("mystery").is_none());
        assert_eq!(canary["spec"]["ingressRef"]["apiVersion"], "networking.k8s.io/v1");
        let report = imported.report();
        for expected in [
            "dropped spec.service.meshName: service.meshName and service.backends are AWS App Mesh settings",
            "dropped spec.service.backends: ",
            "dropped spec.service.newerFlaggerField: petrel's Canary has no such field",
            "dropped spec.analysis.metrics[0].mystery: petrel's Canary has no such field",
            "changed spec.ingressRef.apiVersion from extensions/v1beta1 to networking.k8s.io/v1",
        ] {
            assert!(report.contains(expected), "{expected:?} not in\n{report}");
        }
        // What is written is accepted by petrel's own schema checks.
        let typed: Canary = serde_json::from_value(canary.clone()).expect("a petrel Canary");
        typed.validate_cel().expect("petrel's CEL rules accept it");
    }

    #[test]
    fn what_petrel_cannot_take_is_not_written_and_reported() {
        let mut mesh = base_spec();
        mesh["provider"] = json!("appmesh:v1beta2");
        let external = json!({
            "apiVersion": "flagger.app/v1beta1", "kind": "MetricTemplate",
            "metadata": {"name": "ext", "namespace": "test"},
            "spec": {"provider": {"type": "externalmetrics"}, "query": "app_requests"},
        });
        let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "podinfo"}});
        let imported = import(&[flagger_canary(mesh), external, deployment]);
        assert!(imported.objects.is_empty(), "{:?}", imported.objects);
        let report = imported.report();
        assert!(
            report.contains(
                "Canary test/podinfo: not imported: provider appmesh:v1beta2: provider appmesh (AWS App Mesh)"
            ),
            "{report}"
        );
        assert!(report.contains("MetricTemplate test/ext: not imported: provider type externalmetrics"), "{report}");
        assert!(report.contains("Deployment podinfo: skipped: not a Flagger"), "{report}");
    }

    /// A Flagger Canary whose provider ignores a route option it sets imports, with a
    /// finding that says petrel will stall it and why.
    #[test]
    fn route_options_the_provider_does_not_write_are_reported() {
        let mut spec = base_spec();
        spec["provider"] = json!("nginx");
        spec["service"]["retries"] = json!({ "attempts": 3 });
        let (written, findings) = convert(&flagger_canary(spec.clone()));
        assert!(written.is_some());
        let stalled: Vec<_> = findings.iter().filter(|f| f.message.contains("will stall")).collect();
        assert_eq!(stalled.len(), 1, "{findings:?}");
        assert!(stalled[0].message.contains("spec.service.retries is not written by provider nginx"), "{findings:?}");
        spec["provider"] = json!("istio");
        let (_, findings) = convert(&flagger_canary(spec));
        assert!(findings.iter().all(|f| !f.message.contains("will stall")), "{findings:?}");
    }

    #[test]
    fn templates_and_providers_come_first_and_their_secrets_are_reported() {
        let template = json!({
            "apiVersion": "flagger.app/v1beta1", "kind": "MetricTemplate",
            "metadata": {"name": "latency", "namespace": "test"},
            "spec": {"provider": {"type": "datadog", "address": "https://api.datadoghq.eu", "secretRef": {"name": "datadog"}},
                     "query": "avg:latency{service:podinfo}"},
        });
        let provider = json!({
            "apiVersion": "flagger.app/v1beta1", "kind": "AlertProvider",
            "metadata": {"name": "on-call", "namespace": "test"},
            "spec": {"type": "slack", "channel": "alerts", "secretRef": {"name": "slack-url"}},
        });
        let imported = import(&[flagger_canary(base_spec()), provider.clone(), template.clone()]);
        let kinds: Vec<&str> = imported.objects.iter().map(|o| o["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["MetricTemplate", "AlertProvider", "Canary"]);
        assert_eq!(imported.objects[0]["spec"], template["spec"]);
        assert_eq!(imported.objects[1]["spec"], provider["spec"]);
        let report = imported.report();
        assert!(
            report.contains(
                "MetricTemplate test/latency: reads Secret datadog: petrel expects Flagger's keys for datadog"
            ),
            "{report}"
        );
        assert!(report.contains("AlertProvider test/on-call: reads Secret slack-url"), "{report}");
        let _: MetricTemplate = serde_json::from_value(imported.objects[0].clone()).expect("a petrel MetricTemplate");
        let _: AlertProvider = serde_json::from_value(imported.objects[1].clone()).expect("a petrel AlertProvider");
    }

    #[test]
    fn the_corpus_imports_without_losing_a_field() {
        // e2e/corpus/flagger/accepted.yaml, back to Flagger's apiVersion: every field
        // Flagger documents and petrel acts on goes through unchanged.
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../e2e/corpus/flagger/accepted.yaml");
        let text = std::fs::read_to_string(&path).expect("the corpus");
        let objects: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
            .map(|d| {
                let mut v: Value = serde::Deserialize::deserialize(d).expect("YAML");
                v["apiVersion"] = json!(FLAGGER_API_VERSION);
                v
            })
            .collect();
        let imported = import(&objects);
        assert_eq!(imported.objects.len(), objects.len());
        for object in &objects {
            let written =
                imported.objects.iter().find(|o| o["metadata"]["name"] == object["metadata"]["name"]).unwrap();
            assert_eq!(written["spec"], object["spec"], "{}", object["metadata"]["name"]);
        }
        assert!(imported.findings.iter().all(|f| !f.message.starts_with("dropped")), "{}", imported.report());
    }
}
