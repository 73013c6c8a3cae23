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
                "{} is stale: run `cargo run -p petrel-api --bin crdgen`",
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
    assert_rejected(
        with(base(), "/spec/analysis/interval", "soon".into()),
        "analysis.interval must be a duration such as 30s, 1m or 1m30s",
    );
}

fn accepted(manifest: Value) {
    let errors = server_side_errors(&manifest);
    assert!(errors.is_empty(), "expected {manifest} to be accepted, got {errors:#?}");
}

#[test]
fn durations_say_what_is_wrong_and_are_bounded() {
    // Malformed: one message naming the field and the expected form, never CEL's
    // "type conversion error".
    for bad in ["1y", "abc", "1m30", "-5s", "1h 30m", "30s1m", "", "99999999h"] {
        let errors = server_side_errors(&with(base(), "/spec/analysis/interval", bad.into()));
        assert!(
            errors.iter().any(|e| e.contains("analysis.interval must be a duration such as 30s, 1m or 1m30s"))
                && !errors.iter().any(|e| e.contains("conversion")),
            "{bad}: {errors:#?}"
        );
    }
    assert_rejected(
        with(base(), "/spec/analysis/interval", "100000h".into()),
        "analysis.interval must be at least 1s and at most 24h",
    );
    assert_rejected(with(base(), "/spec/analysis/interval", "25h".into()), "at most 24h");
    for good in ["1s", "30s", "1m30s", "1.5h", "24h", "1500ms"] {
        accepted(with(base(), "/spec/analysis/interval", good.into()));
    }
    let metric_interval = |interval: &str| {
        with(
            base(),
            "/spec/analysis/metrics",
            serde_json::json!([{ "name": "request-success-rate", "interval": interval, "thresholdRange": { "min": 99 } }]),
        )
    };
    assert_rejected(metric_interval("1d"), "metrics[].interval must be a duration such as 30s");
    assert_rejected(metric_interval("48h"), "metrics[].interval must be at least 1s and at most 24h");
    accepted(metric_interval("2m30s"));
}

fn webhook(fields: Value) -> Value {
    let mut hook = serde_json::json!({ "name": "gate", "url": "http://flagger-loadtester.test/" });
    hook.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
    with(base(), "/spec/analysis/webhooks", serde_json::json!([hook]))
}

#[test]
fn webhooks_need_a_url_and_a_bounded_timeout() {
    assert_rejected(
        webhook(serde_json::json!({ "timeout": "0s" })),
        "webhooks[].timeout must be at least 1ms and at most 10m",
    );
    assert_rejected(
        webhook(serde_json::json!({ "timeout": "1h" })),
        "webhooks[].timeout must be at least 1ms and at most 10m",
    );
    assert_rejected(webhook(serde_json::json!({ "timeout": "soon" })), "webhooks[].timeout must be a duration");
    // Issue 13: what the analysis interval accepts, the webhook timeout accepts too.
    accepted(webhook(serde_json::json!({ "timeout": "1m30s" })));
    for url in ["not a url", "flagger-loadtester.test/", "/relative/path", "ftp://host/file", "http://"] {
        assert_rejected(
            webhook(serde_json::json!({ "url": url })),
            "webhooks[].url must be an absolute http:// or https:// URL",
        );
    }
    accepted(webhook(serde_json::json!({ "url": "https://hooks.example.com:8443/gate?x=1" })));
}

#[test]
fn empty_webhook_type_and_alert_severity_are_flaggers_defaults() {
    let manifest = webhook(serde_json::json!({ "type": "" }));
    accepted(manifest.clone());
    let canary: Canary = serde_json::from_value(manifest).unwrap();
    assert_eq!(canary.spec.analysis.unwrap().webhooks[0].type_, petrel::api::canary::HookType::Rollout);

    let manifest = with(
        base(),
        "/spec/analysis/alerts",
        serde_json::json!([{ "name": "on-call", "severity": "", "providerRef": { "name": "slack" } }]),
    );
    accepted(manifest.clone());
    let canary: Canary = serde_json::from_value(manifest).unwrap();
    assert_eq!(canary.spec.analysis.unwrap().alerts[0].severity, petrel::api::canary::AlertSeverity::Info);
    assert_rejected(
        with(
            base(),
            "/spec/analysis/alerts",
            serde_json::json!([{ "name": "a", "severity": "fatal", "providerRef": { "name": "s" } }]),
        ),
        "\"fatal\" is not one of",
    );
}

#[test]
fn counts_have_upper_bounds() {
    assert_rejected(with(base(), "/spec/analysis/threshold", 2147483647.into()), "is greater than the maximum of 1000");
    assert_rejected(with(base(), "/spec/analysis/iterations", 100000.into()), "is greater than the maximum of 1000");
    assert_rejected(
        with(base(), "/spec/progressDeadlineSeconds", 864000.into()),
        "is greater than the maximum of 86400",
    );
}

#[test]
fn weights_that_would_be_reinterpreted_are_refused() {
    let no_step = without(base(), "/spec/analysis/stepWeight");
    assert_rejected(with(base(), "/spec/analysis/stepWeight", 0.into()), "analysis.stepWeight 0 never moves traffic");
    assert_rejected(with(base(), "/spec/analysis/maxWeight", 0.into()), "analysis.maxWeight 0 would promote");
    for weights in [serde_json::json!([50, 10, 20]), serde_json::json!([100, 0]), serde_json::json!([10, 10, 20])] {
        let errors = server_side_errors(&with(no_step.clone(), "/spec/analysis/stepWeights", weights.clone()));
        assert!(!errors.is_empty(), "{weights} accepted");
        assert!(
            errors
                .iter()
                .any(|e| e.contains("analysis.stepWeights must increase") || e.contains("less than the minimum of 1")),
            "{weights}: {errors:#?}"
        );
    }
    accepted(with(no_step.clone(), "/spec/analysis/stepWeights", serde_json::json!([1, 2, 10, 80])));
    accepted(with(no_step, "/spec/analysis/stepWeights", serde_json::json!([100])));
    // With iterations the weights are not used: Flagger's blue/green manifests may carry them.
    let blue_green = fixture("flagger/kubernetes-bluegreen.yaml");
    accepted(with(with(blue_green, "/spec/analysis/maxWeight", 0.into()), "/spec/analysis/stepWeight", 0.into()));
}

#[test]
fn names_petrel_writes_into_labels_and_services_are_checked() {
    let long = "a".repeat(253);
    let mut manifest = base();
    manifest["metadata"]["name"] = long.clone().into();
    assert_rejected(manifest, "metadata.name of a Canary must be at most 63 characters");
    assert_rejected(with(base(), "/spec/service/name", "Podinfo_API".into()), "service.name must be a DNS-1035 label");
    assert_rejected(
        with(base(), "/spec/service/name", "a".repeat(56).into()),
        "service.name must be a DNS-1035 label of at most 55",
    );
    accepted(with(base(), "/spec/service/name", "a".repeat(55).into()));
    assert_rejected(with(base(), "/spec/service/portName", "HTTP".into()), "service.portName must be a port name");
    // Without service.name, the Services are named after the target.
    let unnamed = without(base(), "/spec/service/name");
    assert_rejected(
        with(unnamed.clone(), "/spec/targetRef/name", "my.app".into()),
        "without service.name the Services are named after targetRef.name",
    );
    accepted(with(with(base(), "/spec/service/name", "app".into()), "/spec/targetRef/name", "my.app".into()));
    assert_rejected(with(base(), "/spec/targetRef/name", "a".repeat(246).into()), "is longer than 245 characters");
}

#[test]
fn nginx_needs_its_ingress_and_matches_need_one_condition() {
    let nginx = fixture("flagger/nginx-canary.yaml");
    assert_rejected(without(nginx, "/spec/ingressRef"), "provider nginx needs spec.ingressRef");
    let ab = fixture("flagger/gatewayapi-ab.yaml");
    let both = serde_json::json!([{ "headers": { "x-canary": { "exact": "insider", "regex": ".*" } } }]);
    assert_rejected(
        with(ab.clone(), "/spec/analysis/match", both),
        "must set exactly one of exact, prefix, suffix or regex",
    );
    let none = serde_json::json!([{ "headers": { "x-canary": {} } }]);
    assert_rejected(with(ab, "/spec/analysis/match", none), "must set exactly one of exact, prefix, suffix or regex");
}

#[test]
fn unknown_provider_is_rejected() {
    assert_rejected(with(base(), "/spec/provider", "linkerd2".into()), "\"linkerd2\" is not one of");
}

#[test]
fn app_mesh_service_fields_are_refused_with_the_reason() {
    let message = petrel::api::canary::APP_MESH_FIELDS_MESSAGE;
    assert_rejected(with(base(), "/spec/service/meshName", "global".into()), message);
    assert_rejected(with(base(), "/spec/service/backends", serde_json::json!(["backend.default"])), message);
}

#[test]
fn references_name_the_kind_petrel_reads() {
    use serde_json::json;
    let nginx = with(base(), "/spec/provider", "nginx".into());
    let ingress = |api_version: &str, kind: &str| {
        with(nginx.clone(), "/spec/ingressRef", json!({"apiVersion": api_version, "kind": kind, "name": "podinfo"}))
    };
    accepted(ingress("networking.k8s.io/v1", "Ingress"));
    accepted(with(nginx.clone(), "/spec/ingressRef", json!({"name": "podinfo"})));
    assert_rejected(ingress("extensions/v1beta1", "Ingress"), "ingressRef must name an Ingress");
    assert_rejected(ingress("networking.k8s.io/v1", "HTTPRoute"), "ingressRef must name an Ingress");
    let route = |api_version: &str| {
        with(base(), "/spec/routeRef", json!({"apiVersion": api_version, "kind": "ApisixRoute", "name": "podinfo"}))
    };
    accepted(route("apisix.apache.org/v2"));
    assert_rejected(route("apisix.apache.org/v1"), "routeRef must name an ApisixRoute");
    let upstream = |kind: &str| {
        with(base(), "/spec/upstreamRef", json!({"apiVersion": "gloo.solo.io/v1", "kind": kind, "name": "up"}))
    };
    accepted(upstream("Upstream"));
    assert_rejected(upstream("Service"), "upstreamRef must name an Upstream");
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
fn a_daemon_set_target_is_released_by_iterations_never_by_weights() {
    let ds = serde_json::json!({ "apiVersion": "apps/v1", "kind": "DaemonSet", "name": "podinfo" });
    let message = "a DaemonSet target runs one canary pod per node beside the primary's, so petrel does not shift its traffic by weight";
    let weighted = with(base(), "/spec/targetRef", ds.clone());
    assert_rejected(weighted.clone(), message);
    let only_max = without(weighted.clone(), "/spec/analysis/stepWeight");
    assert_rejected(only_max, message);
    let unweighted = without(without(weighted, "/spec/analysis/stepWeight"), "/spec/analysis/maxWeight");
    let step_weights = with(unweighted.clone(), "/spec/analysis/stepWeights", serde_json::json!([10, 50]));
    assert_rejected(step_weights, message);
    accepted(with(unweighted.clone(), "/spec/analysis/iterations", 5.into()));
    // The same analysis on a Deployment keeps its weights.
    let deployment = serde_json::json!({ "apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo" });
    accepted(with(
        with(unweighted, "/spec/targetRef", deployment),
        "/spec/analysis/stepWeights",
        serde_json::json!([10, 50]),
    ));
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
fn session_affinity_is_typed_and_bounded() {
    let sticky = fixture("flagger/gatewayapi-session-affinity.yaml");
    accepted(sticky.clone());
    accepted(with(sticky.clone(), "/spec/analysis/sessionAffinity", serde_json::json!({})));
    let affinity =
        |field: &str, value: Value| with(sticky.clone(), &format!("/spec/analysis/sessionAffinity/{field}"), value);
    assert_rejected(affinity("cookeName", "x".into()), "unknown field .spec.analysis.sessionAffinity.cookeName");
    // A cookie name is an RFC 6265 token: no separators, spaces or '='.
    for bad in ["my cookie", "a=b", "a;b", ""] {
        let errors = server_side_errors(&affinity("cookieName", bad.into()));
        assert!(!errors.is_empty(), "cookie name {bad:?} accepted");
    }
    assert_rejected(affinity("primaryCookieName", "a,b".into()), "does not match");
    accepted(affinity("cookieName", "__Host-canary.v2".into()));
    assert_rejected(affinity("maxAge", 0.into()), "0 is less than the minimum of 1");
    assert_rejected(affinity("maxAge", 34_560_001.into()), "is greater than the maximum of 34560000");
    let message = petrel::api::canary::SESSION_AFFINITY_NAMES_MESSAGE;
    assert_rejected(affinity("primaryCookieName", "flagger-cookie".into()), message);
    let default_name =
        without(affinity("primaryCookieName", "flagger-cookie".into()), "/spec/analysis/sessionAffinity/cookieName");
    assert_rejected(default_name, message);
    accepted(affinity("primaryCookieName", "flagger-cookie-primary".into()));
    // With A/B testing the sticky rules would fight the A/B conditions: refused.
    let ab = with(
        with(sticky, "/spec/analysis/iterations", 10.into()),
        "/spec/analysis/match",
        serde_json::json!([{ "headers": { "x-canary": { "exact": "insider" } } }]),
    );
    assert_rejected(ab, petrel::api::canary::SESSION_AFFINITY_AB_MESSAGE);
}

#[test]
fn misspelt_fields_are_rejected_not_ignored() {
    let m = with(base(), "/spec/analysis/stepWieght", 10.into());
    assert_rejected(m, "unknown field .spec.analysis.stepWieght");
}

#[test]
fn unmanaged_metadata_is_typed_and_keeps_petrels_own_keys() {
    let unmanaged = |value: Value| with(base(), "/spec/service/unmanagedMetadata", value);
    accepted(unmanaged(serde_json::json!({
        "labels": ["team"],
        "annotations": ["external-dns.alpha.kubernetes.io/hostname"],
    })));
    assert_rejected(
        unmanaged(serde_json::json!({ "label": ["team"] })),
        "unknown field .spec.service.unmanagedMetadata.label",
    );
    assert_rejected(unmanaged(serde_json::json!({ "labels": { "team": "a" } })), "is not of type \"array\"");
    assert_rejected(
        unmanaged(serde_json::json!({ "labels": ["app.kubernetes.io/managed-by"] })),
        "service.unmanagedMetadata.labels cannot hold app.kubernetes.io/managed-by",
    );
    assert_rejected(
        unmanaged(serde_json::json!({ "annotations": ["kustomize.toolkit.fluxcd.io/reconcile"] })),
        "service.unmanagedMetadata.annotations cannot hold",
    );
}

#[test]
fn istio_route_options_refuse_misspelt_keys() {
    let service = |key: &str, value: Value| with(base(), &format!("/spec/service/{key}"), value);
    use serde_json::json;
    // Each block, well spelt, is accepted.
    accepted(service(
        "match",
        json!([{ "uri": { "prefix": "/api" }, "headers": { "x-a": { "exact": "b" } }, "ignoreUriCase": true }]),
    ));
    accepted(service("retries", json!({ "attempts": 3, "perTryTimeout": "1s", "retryOn": "5xx" })));
    accepted(service("headers", json!({ "request": { "set": { "x-a": "b" } }, "response": { "remove": ["x-b"] } })));
    accepted(service("corsPolicy", json!({ "allowOrigins": [{ "exact": "https://a.example" }], "maxAge": "24h" })));
    accepted(service(
        "trafficPolicy",
        json!({ "tls": { "mode": "ISTIO_MUTUAL" }, "loadBalancer": { "simple": "RANDOM" } }),
    ));
    accepted(service("rewrite", json!({ "uri": "/" })));
    // One misspelt key in each block, at every depth, is refused.
    for (key, value, unknown) in [
        ("match", json!([{ "uri": { "prefx": "/api" } }]), ".spec.service.match[0].uri.prefx"),
        ("match", json!([{ "header": { "x-a": { "exact": "b" } } }]), ".spec.service.match[0].header"),
        ("match", json!([{ "headers": { "x-a": { "exakt": "b" } } }]), ".spec.service.match[0].headers.x-a.exakt"),
        ("retries", json!({ "attempt": 3 }), ".spec.service.retries.attempt"),
        ("retries", json!({ "perTryTimout": "1s" }), ".spec.service.retries.perTryTimout"),
        ("headers", json!({ "requests": { "set": { "x-a": "b" } } }), ".spec.service.headers.requests"),
        ("headers", json!({ "request": { "sett": { "x-a": "b" } } }), ".spec.service.headers.request.sett"),
        (
            "corsPolicy",
            json!({ "allowOrigins": [{ "exactly": "a" }] }),
            ".spec.service.corsPolicy.allowOrigins[0].exactly",
        ),
        ("corsPolicy", json!({ "allowMethod": ["GET"] }), ".spec.service.corsPolicy.allowMethod"),
        ("trafficPolicy", json!({ "tsl": { "mode": "ISTIO_MUTUAL" } }), ".spec.service.trafficPolicy.tsl"),
        (
            "trafficPolicy",
            json!({ "connectionPool": { "http": { "maxRequest": 1 } } }),
            ".spec.service.trafficPolicy.connectionPool.http.maxRequest",
        ),
        (
            "trafficPolicy",
            json!({ "loadBalancer": { "simple": "RANDOM", "localityLbSettings": {} } }),
            ".spec.service.trafficPolicy.loadBalancer.localityLbSettings",
        ),
        ("rewrite", json!({ "uril": "/" }), ".spec.service.rewrite.uril"),
    ] {
        assert_rejected(service(key, value), &format!("unknown field {unknown}"));
    }
    // Values are checked as Flagger's schema checks them.
    assert_rejected(service("match", json!([{ "uri": { "exact": "/a", "prefix": "/b" } }])), "more than 1 property");
    assert_rejected(service("corsPolicy", json!({ "allowOrigins": [{}] })), "less than 1 property");
    assert_rejected(service("trafficPolicy", json!({ "tls": { "mode": "STRICT" } })), "is not one of");
    assert_rejected(service("retries", json!({ "attempts": "3" })), "is not of type \"integer\"");
    let balancer = |lb: Value| service("trafficPolicy", json!({ "loadBalancer": lb }));
    let rule = "trafficPolicy.loadBalancer sets either simple or a consistentHash";
    assert_rejected(balancer(json!({ "simple": "RANDOM", "consistentHash": { "useSourceIp": true } })), rule);
    assert_rejected(balancer(json!({ "consistentHash": { "useSourceIp": true, "httpHeaderName": "x" } })), rule);
    assert_rejected(balancer(json!({ "warmupDurationSecs": "30s" })), rule);
    accepted(balancer(json!({ "consistentHash": { "httpCookie": { "name": "user", "ttl": "0s" } } })));
    // Flagger accepts simple beside a consistentHash that is not a valid one on its own.
    accepted(balancer(
        json!({ "simple": "LEAST_REQUEST", "consistentHash": { "useSourceIp": true, "httpHeaderName": "x" } }),
    ));
}

#[test]
fn gateway_api_route_options_go_with_provider_gatewayapi() {
    use serde_json::json;
    let options = |provider: Option<&str>| {
        let mut m = with(base(), "/spec/service/rewrite", json!({ "uri": "/", "type": "ReplacePrefixMatch" }));
        m = with(m, "/spec/service/mirror", json!([{ "backendRef": { "name": "shadow", "port": 9898 } }]));
        match provider {
            Some(p) => with(m, "/spec/provider", p.into()),
            None => without(m, "/spec/provider"),
        }
    };
    accepted(options(Some("gatewayapi")));
    accepted(options(Some("gatewayapi:v1beta1")));
    let refusal = "service.mirror and service.rewrite.type are Gateway API route options that petrel writes with provider gatewayapi only";
    for provider in [Some("istio"), Some("linkerd"), None] {
        assert_rejected(options(provider), refusal);
    }
    let gateway =
        |mirror: Value| with(with(base(), "/spec/provider", "gatewayapi".into()), "/spec/service/mirror", mirror);
    assert_rejected(gateway(json!([{ "backendRef": { "name": "shadow" } }])), "Must have port for Service reference");
    accepted(gateway(json!([{ "backendRef": { "name": "shadow", "group": "example.com", "kind": "Backend" } }])));
    assert_rejected(
        gateway(json!([{ "backendRef": { "nme": "shadow", "port": 1 } }])),
        "unknown field .spec.service.mirror[0].backendRef.nme",
    );
}
