//! The metrics as Prometheus scrapes them: render the registry and compare series.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::api::Canary;
use crate::api::canary::{CanaryStatus, MetricOutcome, MetricResult, Phase};
use crate::core::Provider;

fn canary(name: &str, iterations: Option<i32>) -> Canary {
    let mut analysis = json!({ "interval": "30s", "threshold": 5, "stepWeight": 10, "maxWeight": 50 });
    if let Some(n) = iterations {
        analysis["iterations"] = json!(n);
    }
    serde_json::from_value(json!({
        "apiVersion": "petrel.dev/v1alpha1",
        "kind": "Canary",
        "metadata": { "name": name, "namespace": "test" },
        "spec": {
            "targetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": name },
            "service": { "port": 9898 },
            "analysis": analysis
        }
    }))
    .expect("a valid Canary")
}

fn status(phase: Phase, weight: i32, failed: i32, results: &[(&str, Option<f64>)]) -> CanaryStatus {
    CanaryStatus {
        phase,
        canary_weight: weight,
        failed_checks: failed,
        analysis_results: results
            .iter()
            .map(|(name, value)| MetricResult {
                name: name.to_string(),
                value: *value,
                outcome: MetricOutcome::Passed,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// The sample lines (no comments) of the families whose names start with `prefix`.
fn series(metrics: &Metrics, prefix: &str) -> BTreeSet<String> {
    metrics.render().lines().filter(|l| l.starts_with(prefix)).map(String::from).collect()
}

fn set(lines: &[&str]) -> BTreeSet<String> {
    lines.iter().map(|l| l.to_string()).collect()
}

#[test]
fn a_progressing_canary_exports_phase_weight_checks_and_metric_values() {
    let metrics = Metrics::new("1.2.3");
    let previous = status(Phase::Progressing, 20, 0, &[]);
    let next = status(Phase::Progressing, 30, 1, &[("request-success-rate", Some(99.5)), ("request-duration", None)]);
    metrics.observe_canary(&canary("podinfo", None), &previous, &next, Provider::Istio, None);

    assert_eq!(
        series(&metrics, "petrel_canary_status"),
        set(&[r#"petrel_canary_status{namespace="test",name="podinfo"} 0"#])
    );
    assert_eq!(
        series(&metrics, "petrel_canary_weight"),
        set(&[
            r#"petrel_canary_weight{namespace="test",name="podinfo",workload="primary"} 70"#,
            r#"petrel_canary_weight{namespace="test",name="podinfo",workload="canary"} 30"#,
        ])
    );
    assert_eq!(
        series(&metrics, "petrel_canary_failed_checks"),
        set(&[r#"petrel_canary_failed_checks{namespace="test",name="podinfo"} 1"#])
    );
    // A metric without a value has no series: "no data" must not read as 0.
    assert_eq!(
        series(&metrics, "petrel_canary_metric_analysis"),
        set(&[r#"petrel_canary_metric_analysis{namespace="test",name="podinfo",metric="request-success-rate"} 99.5"#])
    );
    let phases = series(&metrics, "petrel_canary_phase");
    assert_eq!(phases.len(), Phase::ALL.len());
    assert!(phases.contains(r#"petrel_canary_phase{namespace="test",name="podinfo",phase="Progressing"} 1"#));
    assert!(phases.contains(r#"petrel_canary_phase{namespace="test",name="podinfo",phase="Succeeded"} 0"#));
    assert_eq!(phases.iter().filter(|l| l.ends_with(" 1")).count(), 1, "{phases:?}");
    // Nothing completed, no analysis tick timed.
    assert!(series(&metrics, "petrel_canary_successes").is_empty());
    assert!(series(&metrics, "petrel_canary_failures").is_empty());
    assert!(series(&metrics, "petrel_canary_analysis_duration").is_empty());
}

#[test]
fn entering_succeeded_or_failed_counts_once_per_transition() {
    let metrics = Metrics::new("1.2.3");
    let podinfo = canary("podinfo", None);
    let finalising = status(Phase::Finalising, 0, 0, &[]);
    let succeeded = status(Phase::Succeeded, 0, 0, &[]);
    metrics.observe_canary(&podinfo, &finalising, &succeeded, Provider::Istio, None);
    // The next reconcile stays Succeeded: not a second success.
    metrics.observe_canary(&podinfo, &succeeded, &succeeded, Provider::Istio, None);
    assert_eq!(
        series(&metrics, "petrel_canary_successes"),
        set(&[r#"petrel_canary_successes_total{namespace="test",name="podinfo",strategy="canary"} 1"#])
    );
    assert_eq!(
        series(&metrics, "petrel_canary_status"),
        set(&[r#"petrel_canary_status{namespace="test",name="podinfo"} 1"#])
    );

    let bluegreen = canary("backend", Some(10));
    let progressing = status(Phase::Progressing, 0, 4, &[]);
    let failed = status(Phase::Failed, 0, 5, &[]);
    metrics.observe_canary(&bluegreen, &progressing, &failed, Provider::Istio, None);
    assert_eq!(
        series(&metrics, "petrel_canary_failures"),
        set(&[r#"petrel_canary_failures_total{namespace="test",name="backend",strategy="blue-green"} 1"#])
    );
    assert!(
        series(&metrics, "petrel_canary_status").contains(r#"petrel_canary_status{namespace="test",name="backend"} 2"#)
    );
}

#[test]
fn an_analysis_tick_is_timed() {
    let metrics = Metrics::new("1.2.3");
    let tick = status(Phase::Progressing, 10, 0, &[]);
    metrics.observe_canary(&canary("podinfo", None), &tick, &tick, Provider::Istio, Some(Duration::from_millis(300)));
    let lines = series(&metrics, "petrel_canary_analysis_duration_seconds");
    assert!(
        lines.contains(r#"petrel_canary_analysis_duration_seconds_count{namespace="test",name="podinfo"} 1"#),
        "{lines:?}"
    );
    assert!(
        lines.contains(r#"petrel_canary_analysis_duration_seconds_sum{namespace="test",name="podinfo"} 0.3"#),
        "{lines:?}"
    );
    assert!(
        lines
            .contains(r#"petrel_canary_analysis_duration_seconds_bucket{le="0.25",namespace="test",name="podinfo"} 0"#),
        "{lines:?}"
    );
    assert!(
        lines.contains(r#"petrel_canary_analysis_duration_seconds_bucket{le="0.5",namespace="test",name="podinfo"} 1"#),
        "{lines:?}"
    );
    assert!(metrics.render().contains("# UNIT petrel_canary_analysis_duration_seconds seconds\n"));
}

#[test]
fn metric_series_follow_the_last_tick() {
    let metrics = Metrics::new("1.2.3");
    let podinfo = canary("podinfo", None);
    let first = status(Phase::Progressing, 10, 0, &[("latency", Some(120.0)), ("errors", Some(0.5))]);
    metrics.observe_canary(&podinfo, &first, &first, Provider::Istio, None);
    let second = status(Phase::Progressing, 20, 0, &[("latency", Some(130.0))]);
    metrics.observe_canary(&podinfo, &first, &second, Provider::Istio, None);
    assert_eq!(
        series(&metrics, "petrel_canary_metric_analysis"),
        set(&[r#"petrel_canary_metric_analysis{namespace="test",name="podinfo",metric="latency"} 130.0"#])
    );
}

#[test]
fn undelivered_alerts_are_counted_per_alert_and_reason_until_the_canary_goes() {
    let metrics = Metrics::new("1.2.3");
    let podinfo = canary("podinfo", None);
    metrics.record_alert_failure(&podinfo, "on-call", "status");
    metrics.record_alert_failure(&podinfo, "on-call", "status");
    metrics.record_alert_failure(&podinfo, "team", "transport");
    assert_eq!(
        series(&metrics, "petrel_alert_failures_total"),
        set(&[
            r#"petrel_alert_failures_total{namespace="test",name="podinfo",alert="on-call",reason="status"} 2"#,
            r#"petrel_alert_failures_total{namespace="test",name="podinfo",alert="team",reason="transport"} 1"#,
        ])
    );
    metrics.retain_canaries([("test", "other")]);
    assert!(series(&metrics, "petrel_alert_failures_total").is_empty());
}

#[test]
fn a_deleted_canary_loses_every_series() {
    let metrics = Metrics::new("1.2.3");
    let finalising = status(Phase::Finalising, 0, 0, &[("latency", Some(1.0))]);
    let succeeded = status(Phase::Succeeded, 0, 0, &[("latency", Some(1.0))]);
    metrics.observe_canary(
        &canary("gone", None),
        &finalising,
        &succeeded,
        Provider::Istio,
        Some(Duration::from_secs(1)),
    );
    metrics.observe_canary(&canary("kept", None), &finalising, &succeeded, Provider::Istio, None);

    metrics.retain_canaries([("test", "kept")]);

    let text = metrics.render();
    assert!(!text.contains(r#"name="gone""#), "{text}");
    assert!(text.contains(r#"petrel_canary_status{namespace="test",name="kept"} 1"#), "{text}");
    assert!(
        text.contains(r#"petrel_canary_successes_total{namespace="test",name="kept",strategy="canary"} 1"#),
        "{text}"
    );
}

#[test]
fn reconciles_and_their_errors_are_counted() {
    let metrics = Metrics::new("1.2.3");
    drop(metrics.time_reconcile(CANARY_CONTROLLER));
    let conflict =
        kube::Error::Api(Box::new(kube::core::Status { code: 409, reason: "Conflict".into(), ..Default::default() }));
    let error = crate::controller::Error::Kube { context: "writing the Canary status".into(), source: conflict };
    metrics.record_reconcile_error(CANARY_CONTROLLER, &error);
    metrics.record_reconcile_error(
        CANARY_CONTROLLER,
        &crate::controller::Error::Router { context: "setting routes".into(), message: "boom".into() },
    );

    let lines = series(&metrics, "petrel_reconcile_duration_seconds_count");
    assert_eq!(lines, set(&[r#"petrel_reconcile_duration_seconds_count{controller="canary"} 1"#]));
    assert_eq!(
        series(&metrics, "petrel_reconcile_errors"),
        set(&[
            r#"petrel_reconcile_errors_total{controller="canary",error="kube"} 1"#,
            r#"petrel_reconcile_errors_total{controller="canary",error="router"} 1"#,
        ])
    );
    assert_eq!(
        series(&metrics, "petrel_kubernetes_api_errors"),
        set(&[r#"petrel_kubernetes_api_errors_total{controller="canary",reason="Conflict"} 1"#])
    );
}

#[test]
fn the_version_is_exported_as_info() {
    let metrics = Metrics::new("1.2.3");
    assert_eq!(series(&metrics, "petrel_info"), set(&[r#"petrel_info{version="1.2.3"} 1"#]));
    assert!(metrics.render().ends_with("# EOF\n"));
}

#[test]
fn api_error_reasons_are_bounded_labels() {
    let status = |code, reason: &str| {
        kube::Error::Api(Box::new(kube::core::Status { code, reason: reason.into(), ..Default::default() }))
    };
    assert_eq!(api_error_reason(&status(404, "NotFound")), "NotFound");
    assert_eq!(api_error_reason(&status(500, "")), "HTTP500");
    assert_eq!(api_error_reason(&kube::Error::LinesCodecMaxLineLengthExceeded), "Client");
}

#[test]
fn flagger_status_codes() {
    assert_eq!(status_code(Phase::Succeeded), 1);
    assert_eq!(status_code(Phase::Failed), 2);
    for phase in Phase::ALL.into_iter().filter(|p| !matches!(p, Phase::Succeeded | Phase::Failed)) {
        assert_eq!(status_code(phase), 0, "{phase}");
    }
}

#[test]
fn held_shards_are_one_and_the_others_zero() {
    let metrics = Metrics::new("1.2.3");
    assert!(series(&metrics, "petrel_shard_held").is_empty(), "no series without --shards");
    for shard in 0..3 {
        metrics.observe_shard(shard, false);
    }
    metrics.observe_shard(1, true);
    assert_eq!(
        series(&metrics, "petrel_shard_held"),
        set(&[
            r#"petrel_shard_held{shard="0"} 0"#,
            r#"petrel_shard_held{shard="1"} 1"#,
            r#"petrel_shard_held{shard="2"} 0"#
        ])
    );
    metrics.observe_shard(1, false);
    assert!(series(&metrics, "petrel_shard_held").iter().all(|line| line.ends_with(" 0")));
}
