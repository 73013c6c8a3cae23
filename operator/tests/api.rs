//! Tests of the petrel API: generated CRDs are current, Flagger manifests are accepted,
//! and nonsense is rejected with a message a person understands.
//!
//! The schema checks here mirror what the API server does (OpenAPI validation, unknown
//! fields rejected as `kubectl apply` does by default, CEL rules evaluated client-side);
//! the end-to-end suite repeats the important cases against a real API server.

use std::path::PathBuf;

use kube::CustomResourceExt;
use petrel::api::{Canary, crd_yaml, crds};
use serde_json::Value;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn canary_schema() -> Value {
    let crd = Canary::crd();
    let schema = crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap();
    serde_json::to_value(schema).unwrap()
}

/// Every field of `value` must be declared by `schema`, unless the schema preserves unknown
/// fields there: this is what server-side field validation does for `kubectl apply`.
fn unknown_fields(schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            for (key, child) in map {
                let child_path = format!("{path}.{key}");
                if let Some(child_schema) = props.and_then(|p| p.get(key)) {
                    unknown_fields(child_schema, child, &child_path, out);
                } else if let Some(additional) = additional.filter(|a| a.is_object()) {
                    unknown_fields(additional, child, &child_path, out);
                } else if path.is_empty() && (key == "apiVersion" || key == "kind" || key == "metadata") {
                    // Top-level object metadata is validated by the API server itself.
                } else {
                    out.push(child_path);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    unknown_fields(item_schema, item, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// Validates a manifest the way the API server would, returning every error message.
fn server_side_errors(manifest: &Value) -> Vec<String> {
    let schema = canary_schema();
    let mut errors = Vec::new();
    let mut unknown = Vec::new();
    unknown_fields(&schema, manifest, "", &mut unknown);
    errors.extend(unknown.into_iter().map(|p| format!("unknown field {p}")));

    // OpenAPI validation (types, required, enums, ranges, patterns). `nullable` is an
    // OpenAPI keyword that JSON Schema ignores, which matches how we use it (optional fields).
    let validator = jsonschema::options().build(&schema).expect("the CRD schema is a valid JSON schema");
    errors.extend(validator.iter_errors(manifest).map(|e| format!("{} at {}", e, e.instance_path())));

    if errors.is_empty() {
        match serde_json::from_value::<Canary>(manifest.clone()) {
            Ok(canary) => {
                if let Err(e) = canary.validate_cel() {
                    errors.push(e.to_string());
                }
            }
            Err(e) => errors.push(format!("does not deserialize: {e}")),
        }
    }
    errors
}

#[test]
fn generated_crds_match_the_checked_in_files() {
    for (file, crd) in crds() {
        // The Helm chart installs its own copy from charts/petrel/crds.
        for dir in ["crds", "charts/petrel/crds"] {
            let path = repo_root().join(dir).join(file);
            let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                on_disk == crd_yaml(&crd).unwrap(),
                "{} is stale: run `cargo run -p petrel --bin crdgen`",
                path.display()
            );
        }
    }
}

#[test]
fn flagger_manifests_are_accepted_with_only_the_api_version_changed() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/flagger");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = format!("flagger/{}", path.file_name().unwrap().to_string_lossy());
        let manifest = fixture(&name);
        let errors = server_side_errors(&manifest);
        assert!(errors.is_empty(), "{name} rejected: {errors:#?}");
        // Nothing the user wrote is lost on the way through petrel's types.
        let canary: Canary = serde_json::from_value(manifest.clone()).unwrap();
        let round_trip = serde_json::to_value(&canary.spec).unwrap();
        assert_json_subset(&manifest["spec"], &round_trip, &name);
        seen += 1;
    }
    assert!(seen >= 5, "expected the Flagger fixtures in {}", dir.display());
}

fn assert_json_subset(expected: &Value, actual: &Value, ctx: &str) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, v) in e {
                let got = a.get(k).unwrap_or_else(|| panic!("{ctx}: field {k} dropped"));
                assert_json_subset(v, got, &format!("{ctx}.{k}"));
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            assert_eq!(e.len(), a.len(), "{ctx}");
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                assert_json_subset(ev, av, &format!("{ctx}[{i}]"));
            }
        }
        (Value::Number(e), Value::Number(a)) => {
            assert_eq!(e.as_f64(), a.as_f64(), "{ctx}");
        }
        _ => assert_eq!(expected, actual, "{ctx}"),
    }
}

fn base() -> Value {
    fixture("flagger/istio-canary.yaml")
}

fn with(mut manifest: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    manifest.pointer_mut(parent).unwrap().as_object_mut().unwrap().insert(key.to_string(), value);
    manifest
}

fn without(mut manifest: Value, pointer: &str) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    manifest.pointer_mut(parent).unwrap().as_object_mut().unwrap().remove(key);
    manifest
}

fn assert_rejected(manifest: Value, expected_message: &str) {
    let errors = server_side_errors(&manifest);
    assert!(
        errors.iter().any(|e| e.contains(expected_message)),
        "expected an error containing {expected_message:?}, got {errors:#?}"
    );
}

#[test]
fn step_weight_above_max_weight_is_rejected() {
    let m = with(base(), "/spec/analysis/stepWeight", 60.into());
    assert_rejected(m, "analysis.stepWeight must not be larger than analysis.maxWeight");
}

#[test]
fn weights_outside_0_to_100_are_rejected() {
    assert_rejected(with(base(), "/spec/analysis/maxWeight", 101.into()), "101 is greater than the maximum of 100");
    assert_rejected(with(base(), "/spec/analysis/stepWeight", (-5).into()), "-5 is less than the minimum of 0");
    assert_rejected(
        with(without(base(), "/spec/analysis/stepWeight"), "/spec/analysis/stepWeights", serde_json::json!([5, 150])),
        "150 is greater than the maximum of 100",
    );
}

#[test]
fn interval_under_one_second_is_rejected() {
    assert_rejected(with(base(), "/spec/analysis/interval", "500ms".into()), "analysis.interval must be at least 1s");
    assert_rejected(with(base(), "/spec/analysis/interval", "soon".into()), "does not match");
}

#[test]
fn unknown_provider_is_rejected() {
    assert_rejected(with(base(), "/spec/provider", "linkerd2".into()), "\"linkerd2\" is not one of");
}

#[test]
fn retired_providers_are_rejected_with_the_reason() {
    for provider in ["appmesh", "appmesh:v1beta2", "osm"] {
        assert_rejected(with(base(), "/spec/provider", provider.into()), petrel::api::canary::RETIRED_PROVIDER_MESSAGE);
    }
}

#[test]
fn a_knative_target_goes_with_provider_knative() {
    let knative = serde_json::json!({ "apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "podinfo" });
    let both = with(with(base(), "/spec/targetRef", knative.clone()), "/spec/provider", "knative".into());
    assert!(server_side_errors(&both).is_empty(), "{:?}", server_side_errors(&both));
    let message = "provider knative and targetRef kind Service (a Knative Service) go together";
    assert_rejected(with(with(base(), "/spec/targetRef", knative), "/spec/provider", "istio".into()), message);
    assert_rejected(with(base(), "/spec/provider", "knative".into()), message);
    let core_service = serde_json::json!({ "apiVersion": "v1", "kind": "Service", "name": "podinfo" });
    let wrong = with(with(base(), "/spec/targetRef", core_service), "/spec/provider", "knative".into());
    assert_rejected(wrong, "targetRef kind Service must be a Knative Service");
}

#[test]
fn missing_target_ref_or_service_port_is_rejected() {
    assert_rejected(without(base(), "/spec/targetRef"), "\"targetRef\" is a required property");
    assert_rejected(without(base(), "/spec/service/port"), "\"port\" is a required property");
    assert_rejected(with(base(), "/spec/service/port", 70000.into()), "70000 is greater than the maximum of 65535");
    assert_rejected(
        with(base(), "/spec/targetRef/name", "".into()),
        "targetRef.name must name the Deployment to release",
    );
}

#[test]
fn ab_testing_without_iterations_is_rejected() {
    let m = without(fixture("flagger/gatewayapi-ab.yaml"), "/spec/analysis/iterations");
    assert_rejected(m, "analysis.match (A/B testing) needs analysis.iterations greater than 0");
}

#[test]
fn custom_metric_without_template_is_rejected() {
    let m = with(
        base(),
        "/spec/analysis/metrics",
        serde_json::json!([{ "name": "error-budget", "thresholdRange": { "max": 1 } }]),
    );
    assert_rejected(m, "a metric needs templateRef");
}

#[test]
fn inverted_threshold_range_is_rejected() {
    let m = with(
        base(),
        "/spec/analysis/metrics",
        serde_json::json!([{ "name": "request-success-rate", "thresholdRange": { "min": 99, "max": 90 } }]),
    );
    assert_rejected(m, "thresholdRange.min must not be larger than thresholdRange.max");
}

#[test]
fn misspelt_fields_are_rejected_not_ignored() {
    let m = with(base(), "/spec/analysis/stepWieght", 10.into());
    assert_rejected(m, "unknown field .spec.analysis.stepWieght");
}
