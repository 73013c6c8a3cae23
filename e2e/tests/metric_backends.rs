//! Metric backends on the real control plane with the real `petrel` binary: a keptn
//! MetricTemplate gates a release on a real KeptnMetric object's value; a Datadog
//! template whose Secret lacks a key stalls the Canary (MetricProviderInvalid) with an
//! Event naming the key and never the Secret's values; an `externalmetrics` template is
//! refused by the API server. (The HTTP backends are tested against fakes of their
//! vendors' APIs in metrics-providers/tests/backends.)

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use petrel::api::MetricTemplate;
use petrel::api::canary::Phase;
use petrel_e2e::scenario::{APP, CanaryOptions, IMAGE_V1, NAMESPACE, TestEnv};
use petrel_e2e::simulator::Provider;
use serde_json::json;

const SETUP: Duration = Duration::from_secs(60);
const RELEASE: Duration = Duration::from_secs(90);
const SECRET_VALUE: &str = "e2e-SECRET-datadog-api-key-7f3a";

fn ssa() -> PatchParams {
    PatchParams::apply("e2e-test").force()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keptn_metric_gates_a_release_and_a_broken_provider_stalls() {
    let t0 = Instant::now();
    let env = TestEnv::start("backends", Provider::GatewayApi).await.unwrap();
    let client = env.canaries().into_client();

    // A KeptnMetric as Keptn's metrics operator keeps it: the value in its status.
    let keptn_metrics: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), NAMESPACE, &petrel::analysis::keptn::keptn_metric_resource());
    let metric = json!({
        "apiVersion": "metrics.keptn.sh/v1beta1", "kind": "KeptnMetric",
        "metadata": {"name": "error-rate", "namespace": NAMESPACE},
        "spec": {"provider": {"name": "prometheus"}, "query": "sum(rate(errors[1m]))", "fetchIntervalSeconds": 30},
    });
    keptn_metrics.create(&PostParams::default(), &serde_json::from_value(metric).unwrap()).await.unwrap();
    let status =
        json!({"status": {"value": "0.5", "rawValue": "MC41", "lastUpdated": chrono::Utc::now().to_rfc3339()}});
    keptn_metrics.patch_status("error-rate", &PatchParams::default(), &Patch::Merge(status)).await.unwrap();

    let templates: Api<MetricTemplate> = Api::namespaced(client.clone(), NAMESPACE);
    let template = |name: &str, provider: serde_json::Value, query: &str| -> MetricTemplate {
        serde_json::from_value(json!({
            "apiVersion": "petrel.dev/v1alpha1", "kind": "MetricTemplate",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"provider": provider, "query": query},
        }))
        .unwrap()
    };
    templates
        .patch(
            "keptn-error-rate",
            &ssa(),
            &Patch::Apply(template(
                "keptn-error-rate",
                json!({"type": "keptn"}),
                "keptnmetric/{{ namespace }}/error-rate",
            )),
        )
        .await
        .unwrap();

    let mut canary = CanaryOptions::canary(Provider::GatewayApi).manifest();
    canary["spec"]["analysis"]["metrics"].as_array_mut().unwrap().push(
        json!({"name": "keptn-error-rate", "templateRef": {"name": "keptn-error-rate"}, "thresholdRange": {"max": 1}}),
    );
    env.canaries().patch(APP, &ssa(), &Patch::Apply(&canary)).await.unwrap();
    env.wait_phase(Phase::Initialized, SETUP).await.unwrap();
    env.set_image(IMAGE_V1).await.unwrap();
    env.wait_phase(Phase::Succeeded, RELEASE).await.unwrap();
    let keptn_failures: Vec<_> = env
        .canary_events()
        .await
        .unwrap()
        .into_iter()
        .filter(|(reason, message)| reason == "CheckFailed" && message.contains("keptn"))
        .collect();
    assert!(keptn_failures.is_empty(), "the keptn check passed every tick: {keptn_failures:?}");
    let read = env
        .statuses()
        .iter()
        .any(|s| s.analysis_results.iter().any(|r| r.name == "keptn-error-rate" && r.value == Some(0.5) && r.passed()));
    assert!(read, "an analysis tick read the KeptnMetric's 0.5");
    eprintln!("[backends] keptn-gated release promoted at {:.1?}", t0.elapsed());

    // A Datadog template whose Secret lacks datadog_application_key: Stalled, and said so.
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "datadog", "namespace": NAMESPACE},
        "stringData": {"datadog_api_key": SECRET_VALUE},
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), NAMESPACE).create(&PostParams::default(), &secret).await.unwrap();
    templates
        .patch(
            "datadog-errors",
            &ssa(),
            &Patch::Apply(template(
                "datadog-errors",
                json!({"type": "datadog", "secretRef": {"name": "datadog"}}),
                "sum:errors{*}",
            )),
        )
        .await
        .unwrap();
    canary["spec"]["analysis"]["metrics"].as_array_mut().unwrap().push(
        json!({"name": "datadog-errors", "templateRef": {"name": "datadog-errors"}, "thresholdRange": {"max": 1}}),
    );
    env.canaries().patch(APP, &ssa(), &Patch::Apply(&canary)).await.unwrap();
    let stalled = env
        .wait_status("Stalled/MetricProviderInvalid", SETUP, |s| {
            s.conditions.iter().any(|c| c.type_ == "Stalled" && c.is_true() && c.reason == "MetricProviderInvalid")
        })
        .await
        .unwrap();
    let condition = stalled.conditions.iter().find(|c| c.type_ == "Stalled").unwrap();
    assert!(
        condition.message.contains("metric datadog-errors")
            && condition.message.contains("\"datadog_application_key\""),
        "{}",
        condition.message
    );
    env.wait_event("MetricProviderInvalid", SETUP, |m| m.contains("datadog_application_key")).await.unwrap();

    // An externalmetrics template never gets in.
    let refused = templates
        .create(&PostParams::default(), &template("external", json!({"type": "externalmetrics"}), "test/queue-length"))
        .await;
    match refused {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            assert!(status.message.contains("not supported by petrel"), "{}", status.message);
        }
        other => panic!("the API server accepted an externalmetrics template: {other:?}"),
    }

    // The Secret's value is nowhere: not in the status, the Events or the operator's log.
    let status = serde_json::to_string(&env.canary_status().await.unwrap()).unwrap();
    assert!(!status.contains(SECRET_VALUE), "the status shows the Secret's value");
    let events = env.canary_events().await.unwrap();
    assert!(events.iter().all(|(_, m)| !m.contains(SECRET_VALUE)), "an Event shows the Secret's value");
    assert!(!env.operator.log_text().contains(SECRET_VALUE), "the operator's log shows the Secret's value");
    eprintln!("[backends] passed in {:.1?}", t0.elapsed());
}
