//! Issue 3's release scenarios against a real control plane, a real Prometheus
//! scraping the traffic simulator, and the real `petrel` binary. Every test has its
//! own fleet, ports and operator (`--test-threads=2` is safe); every weight the
//! operator writes is recorded from a watch on the route object.

use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use petrel::api::canary::{MetricOutcome, Phase};
use petrel_e2e::scenario::{
    APP, CONFIG_MAP, CanaryOptions, IMAGE_V0, IMAGE_V1, IMAGE_V2, NAMESPACE, TestEnv, canary_weights,
};
use petrel_e2e::simulator::{Provider, TrafficProfile, VersionBehaviour};
use serde_json::json;

const SETUP: Duration = Duration::from_secs(60);
const RELEASE: Duration = Duration::from_secs(90);

fn primary() -> String {
    format!("{APP}-primary")
}

/// Healthy release: 20/40/60, promotion, everything back on the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_release_steps_weights_and_promotes() {
    let t0 = Instant::now();
    let env = TestEnv::start("healthy", Provider::GatewayApi).await.unwrap();
    env.apply_canary(&CanaryOptions::canary(Provider::GatewayApi)).await.unwrap();
    env.wait_phase(Phase::Initialized, SETUP).await.unwrap();
    assert_eq!(env.image_of(&primary()).await.unwrap(), IMAGE_V0);
    assert_eq!(env.replicas_of(APP).await.unwrap(), 0, "the target is scaled to 0 once initialized");

    let patched_at = chrono::Utc::now();
    env.set_image(IMAGE_V1).await.unwrap();
    env.wait_phase(Phase::Progressing, SETUP).await.unwrap();
    // A figure, not an assertion: how long from the change of the target to the run
    // starting (petrel stamps lastTransitionTime when it decides; same machine clock).
    if let Some(started) =
        env.statuses().iter().find(|s| s.phase == Phase::Progressing).and_then(|s| s.last_transition_time)
    {
        eprintln!("[healthy] new revision to Progressing: {} ms", (started - patched_at).num_milliseconds());
    }
    env.wait_phase(Phase::Succeeded, RELEASE).await.unwrap();

    let history =
        env.wait_weights("route back to 100/0", SETUP, |h| h.last().is_some_and(|r| r.canary() == 0)).await.unwrap();
    env.assert_weights_sum_to_100();
    let steps = canary_weights(&history);
    assert_eq!(steps, vec![0, 20, 40, 60, 0], "canary weights over the release");

    assert_eq!(env.image_of(&primary()).await.unwrap(), IMAGE_V1, "primary promoted");
    assert_eq!(env.replicas_of(APP).await.unwrap(), 0, "target scaled to 0 after promotion");
    let revisions = env.controller_revisions().await.unwrap();
    let holds_v0 = revisions.iter().any(|r| r.data.as_ref().is_some_and(|d| d.0.to_string().contains(IMAGE_V0)));
    assert!(holds_v0, "a ControllerRevision holds the previous primary template; got {revisions:?}");
    let status = env.canary_status().await.unwrap();
    assert_eq!(status.canary_weight, 0);
    assert_eq!(status.last_promoted_spec, status.last_applied_spec, "the released revision is the promoted one");
    assert_phases_in_order(&env, &[Phase::Initialized, Phase::Progressing, Phase::Promoting, Phase::Succeeded]);
    assert_only_no_data_failures(&env).await;
    eprintln!("[healthy] passed in {:.1?}", t0.elapsed());
}

/// `expected` appears, in this order, among the phases the Canary went through.
fn assert_phases_in_order(env: &TestEnv, expected: &[Phase]) {
    let seen = env.phases();
    let mut rest = seen.iter();
    for phase in expected {
        assert!(rest.any(|p| p == phase), "phases {expected:?} not seen in this order; seen {seen:?}");
    }
}

/// A healthy version never fails a check on its values. The only failure tolerated
/// (below the threshold) is the first tick after the canary first gets traffic, when
/// Prometheus has not scraped two samples of its series yet: no data.
async fn assert_only_no_data_failures(env: &TestEnv) {
    let events = env.canary_events().await.unwrap();
    let value_failures: Vec<_> =
        events.iter().filter(|(reason, message)| reason == "CheckFailed" && !message.contains("no data")).collect();
    assert!(value_failures.is_empty(), "a healthy version failed checks: {value_failures:?}");
}

/// Every increase of the canary weight is at most one step: no jump past the next step,
/// whatever happened in between (restarts, new revisions).
fn assert_no_jumps(env: &TestEnv, step: u32) {
    let weights = canary_weights(&env.recorder.history());
    for pair in weights.windows(2) {
        assert!(pair[1] <= pair[0] + step, "canary weight jumped {} → {} in {weights:?}", pair[0], pair[1]);
    }
}

/// A release failing 20% of its requests is rolled back after `threshold` failed checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_release_is_rolled_back_after_threshold() {
    let t0 = Instant::now();
    let env = TestEnv::start("failing", Provider::GatewayApi).await.unwrap();
    env.simulator.set_version("podinfo:6.0.1", VersionBehaviour::new(0.2, 20.0)).unwrap();
    let options = CanaryOptions::canary(Provider::GatewayApi);
    env.apply_canary(&options).await.unwrap();
    env.wait_phase(Phase::Initialized, SETUP).await.unwrap();

    env.set_image(IMAGE_V1).await.unwrap();
    env.wait_phase(Phase::Progressing, SETUP).await.unwrap();
    let failed = env.wait_phase(Phase::Failed, RELEASE).await.unwrap();
    assert_eq!(failed.failed_checks, options.threshold, "rolled back after exactly threshold failed checks");
    env.wait_weights("route back to 100/0", SETUP, |h| h.last().is_some_and(|r| r.canary() == 0)).await.unwrap();
    env.assert_weights_sum_to_100();

    // It failed at the first step and never got more traffic than that step.
    assert_eq!(env.recorder.max_canary_weight(), 20, "weights: {:?}", env.weights());
    let status = env.canary_status().await.unwrap();
    assert_eq!(status.canary_weight, 0);
    assert_eq!(env.replicas_of(APP).await.unwrap(), 0, "canary scaled to 0");
    assert_eq!(env.image_of(&primary()).await.unwrap(), IMAGE_V0, "primary stays on the old image");
    assert!(!env.phases().contains(&Phase::Promoting), "phases: {:?}", env.phases());
    // The rollback's Events go out just after the Failed status write the wait above saw.
    env.wait_event("RolledBack", SETUP, |_| true).await.unwrap();
    let events = env.canary_events().await.unwrap();
    assert!(
        events.iter().any(|(r, m)| r == "CheckFailed" && m.contains("request-success-rate") && !m.contains("no data")),
        "a CheckFailed Event names the failing metric's value; events: {events:?}"
    );
    // It stays rolled back: no traffic comes back while nothing changes.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(env.canary_status().await.unwrap().phase, Phase::Failed);
    assert_eq!(env.recorder.history().last().map(|r| r.canary()), Some(0));
    assert_eq!(env.recorder.max_canary_weight(), 20, "the failed revision got no traffic again");

    // A fixed revision is released normally after the failed one.
    env.set_image(IMAGE_V2).await.unwrap();
    env.wait_phase(Phase::Succeeded, RELEASE).await.unwrap();
    let history =
        env.wait_weights("route back to 100/0", SETUP, |h| h.last().is_some_and(|r| r.canary() == 0)).await.unwrap();
    env.assert_weights_sum_to_100();
    assert_eq!(canary_weights(&history), vec![0, 20, 0, 20, 40, 60, 0]);
    assert_eq!(env.image_of(&primary()).await.unwrap(), IMAGE_V2);
    eprintln!("[failing] passed in {:.1?}", t0.elapsed());
}

/// A/B testing: requests with the header go to the canary during the analysis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ab_testing_routes_matched_requests_to_the_canary() {
    let t0 = Instant::now();
    let profile = TrafficProfile {
        requests_per_second: 100.0,
        header_fraction: 0.3,
        match_headers: BTreeMap::from([("x-canary".to_string(), "insider".to_string())]),
    };
    let env = TestEnv::start_with("ab", Provider::GatewayApi, profile).await.unwrap();
    let mut options = CanaryOptions::iterations(Provider::GatewayApi, 3);
    options.match_ = Some(json!([{"headers": {"x-canary": {"exact": "insider"}}}]));
    env.apply_canary(&options).await.unwrap();
    env.wait_phase(Phase::Initialized, SETUP).await.unwrap();

    env.set_image(IMAGE_V1).await.unwrap();
    env.wait_phase(Phase::Progressing, SETUP).await.unwrap();
    // The route gets a header rule sending matched requests to the canary, while
    // everything else stays on the primary.
    let history = env
        .wait_weights("a header rule to the canary", SETUP, |h| {
            h.iter()
                .any(|r| r.split.as_ref().is_some_and(|s| s.header_rules.iter().any(|rule| rule.weights.canary == 100)))
        })
        .await
        .unwrap();
    let ab = history.iter().filter_map(|r| r.split.as_ref()).find(|s| !s.header_rules.is_empty()).unwrap().clone();
    assert_eq!(ab.default.canary, 0, "unmatched requests stay on the primary: {ab:?}");
    let rule = &ab.header_rules[0];
    assert!(rule.matches.iter().any(|m| m.name == "x-canary"), "{ab:?}");
    env.wait_phase(Phase::Succeeded, RELEASE).await.unwrap();
    env.wait_weights("route back to the primary", SETUP, |h| {
        h.last().and_then(|r| r.split.as_ref()).is_some_and(|s| s.all_weights().all(|w| w.canary == 0))
    })
    .await
    .unwrap();
    env.assert_weights_sum_to_100();
    let canary_served = env.simulator.snapshot(&env.coords.key()).unwrap().canary_requests;
    assert!(canary_served.0 > 0, "the canary served matched requests: {canary_served:?}");
    assert_eq!(env.image_of(&primary()).await.unwrap(), IMAGE_V1);
    assert_only_no_data_failures(&env).await;
    eprintln!("[ab] passed in {:.1?}", t0.elapsed());
}

/// Blue/green with plain Services: the apex selects the canary's pods at the end of
/// the analysis, then the promoted primary's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_flips_the_apex_service() {
    let t0 = Instant::now();
    let env = TestEnv::start("bluegreen", Provider::Kubernetes).await.unwrap();
    let mut options = CanaryOptions::iterations(Provider::Kubernetes, 3);
    // Only the apex Service carries traffic here, and it selects the primary during
    // the analysis: the canary has no requests to judge.
    options.success_rate_min = None;
    env.apply_canary(&options).await.unwrap();
    env.wait_phase(Phase::Initialized, SETUP).await.unwrap();

    env.set_image(IMAGE_V1).await.unwrap();
    env.wait_phase(Phase::Progressing, SETUP).await.unwrap();
    env.wait_phase(Phase::Succeeded, RELEASE).await.unwrap();
    let history = env
        .wait_weights("apex on the canary, then back on the primary", SETUP, |h| {
            let w = canary_weights(h);
            w.contains(&100) && w.last() == Some(&0)
        })
        .await
        .unwrap();
    env.assert_weights_sum_to_100();
    let weights = canary_weights(&history);
    assert_eq!(weights, vec![0, 100, 0], "apex selector: primary, canary, promoted primary");
    assert_eq!(env.image_of(&primary()).await.unwrap(), IMAGE_V1);
    assert_eq!(env.replicas_of(APP).await.unwrap(), 0);
    eprintln!("[bluegreen] passed in {:.1?}", t0.elapsed());
}

/// A new revision during the analysis restarts the run for the newest revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_revision_during_analysis_restarts_the_run() {
    let t0 = Instant::now();
    let env = TestEnv::start("restart", Provider::GatewayApi).await.unwrap();
    env.apply_canary(&CanaryOptions::canary(Provider::GatewayApi)).await.unwrap();
    env.wait_phase(Phase::Initialized, SETUP).await.unwrap();

    env.set_image(IMAGE_V1).await.unwrap();
    let first = env
        .wait_status("progressing at weight 40", RELEASE, |s| s.phase == Phase::Progressing && s.canary_weight >= 40)
        .await
        .unwrap();
    let first_revision = first.last_applied_spec.clone().expect("a run has a revision");
    env.set_image(IMAGE_V2).await.unwrap();
    let restarted = env
        .wait_status("a run of the newest revision", SETUP, |s| {
            s.last_applied_spec.as_ref().is_some_and(|r| *r != first_revision)
        })
        .await
        .unwrap();
    let second_revision = restarted.last_applied_spec.clone().unwrap();
    env.wait_phase(Phase::Succeeded, RELEASE).await.unwrap();
    let history =
        env.wait_weights("route back to 100/0", SETUP, |h| h.last().is_some_and(|r| r.canary() == 0)).await.unwrap();
    env.assert_weights_sum_to_100();
    assert_no_jumps(&env, 20);

    // Weights went back to 0 for the new revision and stepped again from there.
    let weights = canary_weights(&history);
    let peak = weights.iter().position(|w| *w >= 40).expect("first run reached 40");
    let after: Vec<u32> = weights[peak..].to_vec();
    assert!(after.len() >= 5 && after[1] == 0, "weights back to 0 after the new revision: {weights:?}");
    assert_eq!(&after[after.len() - 4..], &[20, 40, 60, 0], "stepped again: {weights:?}");

    // The new run started from zero counters; the newest revision was promoted.
    let statuses = env.statuses();
    let first_of_second_run =
        statuses.iter().find(|s| s.last_applied_spec.as_deref() == Some(second_revision.as_str())).unwrap();
    assert_eq!(first_of_second_run.failed_checks, 0, "{first_of_second_run:#?}");
    assert_eq!(first_of_second_run.iterations, 0, "{first_of_second_run:#?}");
    let status = env.canary_status().await.unwrap();
    assert_eq!(status.last_applied_spec.as_deref(), Some(second_revision.as_str()));
    assert_eq!(status.last_promoted_spec.as_deref(), Some(second_revision.as_str()));
    assert_eq!(env.image_of(&primary()).await.unwrap(), IMAGE_V2);
    eprintln!("[restart] passed in {:.1?}", t0.elapsed());
}

/// SIGKILL of the operator mid-rollout: the restarted operator continues from the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_killed_mid_rollout_continues_from_the_status() {
    let t0 = Instant::now();
    let mut env = TestEnv::start("sigkill", Provider::GatewayApi).await.unwrap();
    env.apply_canary(&CanaryOptions::canary(Provider::GatewayApi)).await.unwrap();
    env.wait_phase(Phase::Initialized, SETUP).await.unwrap();

    env.set_image(IMAGE_V1).await.unwrap();
    env.wait_status("progressing at weight 20", RELEASE, |s| s.phase == Phase::Progressing && s.canary_weight >= 20)
        .await
        .unwrap();
    env.operator.kill();
    assert!(!env.operator.is_running());
    let status_at_kill = env.canary_status().await.unwrap();
    let routes_at_kill = env.recorder.history().len();
    // Longer than an analysis interval: nothing may move while no operator runs.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(env.canary_status().await.unwrap(), status_at_kill, "the status changed while the operator was dead");
    assert_eq!(env.recorder.history().len(), routes_at_kill, "the route changed while the operator was dead");
    eprintln!("[sigkill] killed at weight {}; restarting", status_at_kill.canary_weight);
    env.operator.restart().unwrap();

    env.wait_phase(Phase::Succeeded, RELEASE).await.unwrap();
    let history =
        env.wait_weights("route back to 100/0", SETUP, |h| h.last().is_some_and(|r| r.canary() == 0)).await.unwrap();
    env.assert_weights_sum_to_100();
    assert_no_jumps(&env, 20);
    let weights = canary_weights(&history);
    assert_eq!(weights, vec![0, 20, 40, 60, 0], "the run continued where it was");
    assert_eq!(env.image_of(&primary()).await.unwrap(), IMAGE_V1);
    assert_eq!(env.replicas_of(APP).await.unwrap(), 0);
    assert!(env.operator.is_running());
    eprintln!("[sigkill] passed in {:.1?}", t0.elapsed());
}

/// Prometheus going away mid-run gives failed checks (with the query error), never a
/// promotion, and a rollback at the threshold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_server_down_fails_checks_and_rolls_back() {
    let t0 = Instant::now();
    let mut env = TestEnv::start("promdown", Provider::GatewayApi).await.unwrap();
    let mut options = CanaryOptions::canary(Provider::GatewayApi);
    options.threshold = 3;
    env.apply_canary(&options).await.unwrap();
    env.wait_phase(Phase::Initialized, SETUP).await.unwrap();

    env.set_image(IMAGE_V1).await.unwrap();
    env.wait_status("progressing at weight 20", RELEASE, |s| s.phase == Phase::Progressing && s.canary_weight >= 20)
        .await
        .unwrap();
    env.prometheus.stop().await.unwrap();
    let weight_at_stop = env.canary_status().await.unwrap().canary_weight;
    let url = env.prometheus.url();
    let port = url.rsplit(':').next().unwrap().to_string();
    let (_, message) =
        env.wait_event("CheckFailed", RELEASE, |m| !m.contains("no data") && m.contains(&port)).await.unwrap();
    eprintln!("[promdown] CheckFailed: {message}");
    env.wait_status("failed checks counted", RELEASE, |s| s.failed_checks >= 1).await.unwrap();
    let failed = env.wait_phase(Phase::Failed, RELEASE).await.unwrap();
    assert_eq!(failed.failed_checks, options.threshold);
    env.wait_weights("route back to 100/0", SETUP, |h| h.last().is_some_and(|r| r.canary() == 0)).await.unwrap();
    env.assert_weights_sum_to_100();
    assert!(!env.phases().contains(&Phase::Promoting), "never promoted: {:?}", env.phases());
    // A tick already running when Prometheus stopped may have taken one more step.
    assert!(
        env.recorder.max_canary_weight() as i32 <= weight_at_stop + 20,
        "weight grew while checks failed: {:?}",
        env.weights()
    );
    assert_eq!(env.image_of(&primary()).await.unwrap(), IMAGE_V0);
    eprintln!("[promdown] passed in {:.1?}", t0.elapsed());
}

/// A change of the data of a ConfigMap the target uses is a new revision; after
/// promotion the primary reads the `-primary` copy with the new data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_map_change_is_a_new_revision() {
    let t0 = Instant::now();
    let env = TestEnv::start("configmap", Provider::GatewayApi).await.unwrap();
    env.apply_canary(&CanaryOptions::canary(Provider::GatewayApi)).await.unwrap();
    let initialized = env.wait_phase(Phase::Initialized, SETUP).await.unwrap();
    let promoted_before = initialized.last_promoted_spec.clone();

    env.set_config_message("hello from v1").await.unwrap();
    env.wait_phase(Phase::Progressing, SETUP).await.unwrap();
    let done = env.wait_phase(Phase::Succeeded, RELEASE).await.unwrap();
    assert_ne!(done.last_promoted_spec, promoted_before, "a new revision was promoted");
    env.wait_weights("route back to 100/0", SETUP, |h| h.last().is_some_and(|r| r.canary() == 0)).await.unwrap();
    env.assert_weights_sum_to_100();
    assert_eq!(canary_weights(&env.recorder.history()), vec![0, 20, 40, 60, 0]);

    let primary_deployment = env.deployments().get(&primary()).await.unwrap();
    let container = petrel_e2e::scenario::first_container(&primary_deployment).unwrap();
    let config_refs: Vec<String> =
        container.env_from.iter().flatten().filter_map(|e| e.config_map_ref.as_ref().map(|c| c.name.clone())).collect();
    let primary_config = format!("{CONFIG_MAP}-primary");
    assert_eq!(config_refs, vec![primary_config.clone()], "the primary reads the -primary copy");
    let copy: ConfigMap = env.config_maps().get(&primary_config).await.unwrap();
    assert_eq!(
        copy.data.unwrap_or_default().get("PODINFO_UI_MESSAGE").map(String::as_str),
        Some("hello from v1"),
        "the copy has the new data"
    );
    assert_eq!(env.image_of(&primary()).await.unwrap(), IMAGE_V0, "only the config changed");
    eprintln!("[configmap] passed in {:.1?}", t0.elapsed());
}

/// Bad input: invalid Canaries are rejected by the API server with the validation
/// message; a valid Canary whose target is missing is Stalled with TargetNotFound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_or_stalled() {
    let t0 = Instant::now();
    let env = TestEnv::start("badinput", Provider::GatewayApi).await.unwrap();
    let base = CanaryOptions::canary(Provider::GatewayApi).manifest();
    let invalid = [
        (
            "stepWeight > maxWeight",
            json!({"analysis": {"stepWeight": 70, "maxWeight": 50}}),
            "stepWeight must not be larger than analysis.maxWeight",
        ),
        ("unknown provider", json!({"provider": "envoy-magic"}), "provider"),
        ("interval 500ms", json!({"analysis": {"interval": "500ms"}}), "interval must be at least 1s"),
    ];
    for (what, overlay, expected) in invalid {
        let mut manifest = base.clone();
        merge(&mut manifest["spec"], &overlay);
        manifest["metadata"]["name"] = json!("invalid");
        match env.create_raw_canary(manifest).await {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{what}: {status:?}");
                assert!(status.message.contains(expected), "{what}: message {:?} lacks {expected:?}", status.message);
                eprintln!("[badinput] {what}: rejected: {}", status.message);
            }
            other => panic!("{what}: the API server accepted it or failed otherwise: {other:?}"),
        }
    }

    let mut options = CanaryOptions::canary(Provider::GatewayApi);
    options.target = "missing".into();
    env.apply_canary(&options).await.unwrap();
    let stalled = env
        .wait_status("Stalled/TargetNotFound", SETUP, |s| {
            s.conditions.iter().any(|c| c.type_ == "Stalled" && c.is_true() && c.reason == "TargetNotFound")
        })
        .await
        .unwrap();
    eprintln!("[badinput] stalled: {:?}", stalled.conditions);
    env.wait_event("TargetNotFound", SETUP, |m| m.contains("missing")).await.unwrap();
    // Nothing was generated for it.
    let routes = env.kubectl(&["get", "httproutes", "-n", NAMESPACE, "-o", "name"]).unwrap();
    assert!(routes.trim().is_empty(), "no route object: {routes}");
    assert!(env.deployments().get_opt("missing-primary").await.unwrap().is_none(), "no primary");
    assert!(env.services().get_opt("missing").await.unwrap().is_none(), "no apex Service");
    assert!(env.recorder.history().is_empty(), "no route written: {:?}", env.weights());
    eprintln!("[badinput] passed in {:.1?}", t0.elapsed());
}

fn merge(target: &mut serde_json::Value, overlay: &serde_json::Value) {
    match (target, overlay) {
        (serde_json::Value::Object(t), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                merge(t.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        (t, o) => *t = o.clone(),
    }
}

/// A release of a target scaled by an HPA: petrel mirrors the HPA onto the primary and
/// the release goes through as without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_with_an_hpa_mirrors_it_onto_the_primary() {
    let t0 = Instant::now();
    let env = TestEnv::start("hpa", Provider::GatewayApi).await.unwrap();
    env.apply_hpa().await.unwrap();
    let mut options = CanaryOptions::canary(Provider::GatewayApi);
    options.autoscaler = true;
    env.apply_canary(&options).await.unwrap();
    env.wait_phase(Phase::Initialized, SETUP).await.unwrap();
    let primary_hpa = env.hpa(&primary()).await.unwrap().expect("a podinfo-primary HPA");
    let spec = primary_hpa.spec;
    assert_eq!(spec.scale_target_ref.name, primary(), "the primary HPA scales the primary");
    assert_eq!((spec.min_replicas, spec.max_replicas), (Some(2), 4));

    env.set_image(IMAGE_V1).await.unwrap();
    env.wait_phase(Phase::Progressing, SETUP).await.unwrap();
    env.wait_phase(Phase::Succeeded, RELEASE).await.unwrap();
    let history =
        env.wait_weights("route back to 100/0", SETUP, |h| h.last().is_some_and(|r| r.canary() == 0)).await.unwrap();
    env.assert_weights_sum_to_100();
    assert_eq!(canary_weights(&history), vec![0, 20, 40, 60, 0]);
    assert_eq!(env.image_of(&primary()).await.unwrap(), IMAGE_V1);
    assert_eq!(env.replicas_of(APP).await.unwrap(), 0, "target scaled to 0 after promotion");
    let target_hpa = env.hpa(APP).await.unwrap().expect("the user's HPA is left alone");
    assert_eq!(target_hpa.spec.scale_target_ref.name, APP);
    assert_only_no_data_failures(&env).await;
    eprintln!("[hpa] passed in {:.1?}", t0.elapsed());
}

/// Issue 5's bad input: an AlertProvider whose receiver is down and one whose Secret is
/// missing. The release still promotes; each failure is an `AlertFailed` Event and a
/// `petrel_alert_failures_total` series on the operator's `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeliverable_alerts_never_block_a_release() {
    let t0 = Instant::now();
    let env = TestEnv::start("alerts", Provider::GatewayApi).await.unwrap();
    // A port nothing listens on: bound, read, released.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let providers = json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "petrel.dev/v1alpha1",
                "kind": "AlertProvider",
                "metadata": {"name": "receiver-down", "namespace": NAMESPACE},
                "spec": {"type": "webhook", "address": format!("http://127.0.0.1:{closed_port}/hook")}
            },
            {
                "apiVersion": "petrel.dev/v1alpha1",
                "kind": "AlertProvider",
                "metadata": {"name": "secret-missing", "namespace": NAMESPACE},
                "spec": {"type": "slack", "channel": "releases", "secretRef": {"name": "no-such-secret"}}
            }
        ]
    });
    let file = std::env::temp_dir().join(format!("petrel-alert-providers-{}.json", std::process::id()));
    std::fs::write(&file, providers.to_string()).unwrap();
    env.kubectl(&["apply", "-f", file.to_str().unwrap()]).unwrap();
    let _ = std::fs::remove_file(&file);

    let mut canary = CanaryOptions::canary(Provider::GatewayApi).manifest();
    canary["spec"]["analysis"]["alerts"] = json!([
        {"name": "on-call", "severity": "info", "providerRef": {"name": "receiver-down"}},
        {"name": "team-chat", "severity": "info", "providerRef": {"name": "secret-missing"}},
    ]);
    env.create_raw_canary(canary).await.unwrap();
    env.wait_phase(Phase::Initialized, SETUP).await.unwrap();
    env.set_image(IMAGE_V1).await.unwrap();
    env.wait_phase(Phase::Succeeded, RELEASE).await.unwrap();
    assert_eq!(env.image_of(&primary()).await.unwrap(), IMAGE_V1, "the release promoted despite the alerts");

    let (_, down) = env.wait_event("AlertFailed", SETUP, |m| m.contains("on-call")).await.unwrap();
    assert!(down.contains(&format!("127.0.0.1:{closed_port}")), "names the receiver: {down}");
    let (_, missing) = env.wait_event("AlertFailed", SETUP, |m| m.contains("team-chat")).await.unwrap();
    assert!(missing.contains("no-such-secret") || missing.contains("Secret"), "names the Secret: {missing}");
    eprintln!("[alerts] events: {down} | {missing}");

    let metrics_addr = env.operator_metrics_addr(SETUP).await.unwrap();
    let scrape = reqwest::get(format!("http://{metrics_addr}/metrics")).await.unwrap().text().await.unwrap();
    let failures: Vec<&str> = scrape.lines().filter(|l| l.starts_with("petrel_alert_failures_total{")).collect();
    let count = |alert: &str, reason: &str| -> f64 {
        failures
            .iter()
            .filter(|l| l.contains(&format!("alert=\"{alert}\"")) && l.contains(&format!("reason=\"{reason}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(count("on-call", "transport") >= 1.0, "receiver down is counted: {failures:?}");
    assert!(count("team-chat", "secret") >= 1.0, "missing Secret is counted: {failures:?}");
    eprintln!("[alerts] passed in {:.1?}: {failures:?}", t0.elapsed());
}

/// Issue 12: a canary whose P99 latency is twice the primary's, still within every fixed
/// threshold of the Canary, is rolled back by the comparison (Mann-Whitney against the
/// primary); the next release, as fast as the primary, is promoted. Before that, a
/// Canary whose steps cannot collect `minSamples` is Stalled and touches nothing; after
/// it, a comparison added mid-run holds the last step until it is judged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comparison_rolls_back_a_slower_canary_and_promotes_an_equal_one() {
    let t0 = Instant::now();
    let env = TestEnv::start("comparison", Provider::GatewayApi).await.unwrap();
    // The primary (6.0.0) and 6.0.2 answer in 20 ms, 6.0.1 in 40 ms: P99 about 20 vs 40
    // ms from the histograms, far below the fixed maximum of 500 ms.
    env.simulator.set_version("podinfo:6.0.0", VersionBehaviour::new(0.0, 20.0)).unwrap();
    env.simulator.set_version("podinfo:6.0.1", VersionBehaviour::new(0.0, 40.0)).unwrap();
    env.simulator.set_version("podinfo:6.0.2", VersionBehaviour::new(0.0, 20.0)).unwrap();
    let manager = PatchParams::apply("e2e-comparison").force();
    // minSamples is left at its default, 5, unless `comparison` says otherwise.
    let manifest = |step_weight: i32, max_weight: i32, comparison: Option<serde_json::Value>| {
        let mut duration = json!({"name": "request-duration", "interval": "10s", "thresholdRange": {"max": 500}});
        if let Some(comparison) = comparison {
            duration["comparison"] = comparison;
        }
        let mut manifest = CanaryOptions::canary(Provider::GatewayApi).manifest();
        merge(
            &mut manifest["spec"]["analysis"],
            &json!({
                "stepWeight": step_weight,
                "maxWeight": max_weight,
                "metrics": [
                    {"name": "request-success-rate", "interval": "10s", "thresholdRange": {"min": 99}},
                    duration,
                ],
            }),
        );
        manifest
    };
    let increase = || Some(json!({"direction": "increase"}));

    // 20/40 gives two ticks with metrics before promotion: refused as Stalled.
    env.canaries().patch(APP, &manager, &Patch::Apply(manifest(20, 40, increase()))).await.unwrap();
    let stalled = env
        .wait_status("Stalled/TooFewTicksForComparison", SETUP, |s| {
            s.conditions.iter().any(|c| c.type_ == "Stalled" && c.is_true() && c.reason == "TooFewTicksForComparison")
        })
        .await
        .unwrap();
    let message = &stalled.conditions.iter().find(|c| c.type_ == "Stalled").unwrap().message;
    assert!(message.contains("2 tick(s)") && message.contains("needs minSamples 5"), "{message}");
    env.wait_event("TooFewTicksForComparison", SETUP, |m| m.contains("request-duration")).await.unwrap();
    assert!(env.deployments().get_opt(&primary()).await.unwrap().is_none(), "nothing generated while Stalled");
    eprintln!("[comparison] stalled: {message}");

    // 10..50 gives five.
    env.canaries().patch(APP, &manager, &Patch::Apply(manifest(10, 50, increase()))).await.unwrap();
    env.wait_phase(Phase::Initialized, SETUP).await.unwrap();

    env.set_image(IMAGE_V1).await.unwrap();
    env.wait_phase(Phase::Progressing, SETUP).await.unwrap();
    let failed = env.wait_phase(Phase::Failed, RELEASE).await.unwrap();
    env.wait_weights("route back to 100/0", SETUP, |h| h.last().is_some_and(|r| r.canary() == 0)).await.unwrap();
    env.assert_weights_sum_to_100();
    assert!(env.recorder.max_canary_weight() <= 50, "weights: {:?}", env.weights());
    assert_eq!(env.image_of(&primary()).await.unwrap(), IMAGE_V0, "the slower version was not promoted");
    assert!(!env.phases().contains(&Phase::Promoting), "phases: {:?}", env.phases());
    // The rollback's Events go out just after the Failed status write the wait above saw.
    env.wait_event("RolledBack", SETUP, |_| true).await.unwrap();
    let events = env.canary_events().await.unwrap();
    assert!(
        events.iter().any(|(r, m)| (r == "CheckFailed" || r == "RolledBack")
            && m.contains("request-duration")
            && m.contains("significantly higher")),
        "the comparison failed the slower canary; events: {events:?}"
    );
    // Every fixed threshold held: only the comparison (or a tick without data yet) failed.
    let fixed_failures: Vec<_> = events
        .iter()
        .filter(|(r, m)| r == "CheckFailed" && (m.contains("above the maximum") || m.contains("below the minimum")))
        .collect();
    assert!(fixed_failures.is_empty(), "a fixed threshold failed: {fixed_failures:?}");
    let samples = failed.comparison_samples.iter().find(|s| s.name == "request-duration").unwrap();
    let finite = |values: &[f64]| values.iter().copied().filter(|v| v.is_finite()).collect::<Vec<_>>();
    let (canary, primary_values) = (finite(&samples.canary), finite(&samples.primary));
    assert!(canary.len() >= 5 && primary_values.len() >= 5, "judged on minSamples values: {samples:?}");
    assert!(canary.iter().all(|v| (30.0..500.0).contains(v)), "canary P99 about 40 ms: {canary:?}");
    assert!(primary_values.iter().all(|v| *v < 25.0), "primary P99 about 20 ms: {primary_values:?}");
    let held = events.iter().filter(|(r, _)| r == "ComparisonPending").count();
    for (reason, message) in events.iter().filter(|(r, _)| r == "CheckFailed" || r == "RolledBack") {
        eprintln!("[comparison] {reason}: {message}");
    }
    eprintln!(
        "[comparison] slower canary rolled back after {} failed checks (canary P99 {canary:?} vs primary {primary_values:?}; {held} tick(s) held at the last step)",
        failed.failed_checks
    );

    // The next release is as fast as the primary: judged equal, promoted. It comes at
    // once: petrel judges none of its checks while the metric window (10s) still holds
    // requests the rolled-back version answered (the query selects the canary by name).
    env.set_image(IMAGE_V2).await.unwrap();
    let succeeded = env.wait_phase(Phase::Succeeded, RELEASE).await.unwrap();
    env.wait_weights("route back to 100/0", SETUP, |h| h.last().is_some_and(|r| r.canary() == 0)).await.unwrap();
    env.assert_weights_sum_to_100();
    assert_eq!(env.image_of(&primary()).await.unwrap(), IMAGE_V2);
    assert!(env.recorder.max_canary_weight() <= 50, "weights: {:?}", env.weights());
    let samples = succeeded.comparison_samples.iter().find(|s| s.name == "request-duration").unwrap();
    assert!(finite(&samples.canary).len() >= 5, "promoted only once judged: {samples:?}");
    let judged = succeeded.analysis_results.iter().find(|r| r.name == "request-duration").unwrap();
    assert_eq!(judged.outcome, MetricOutcome::Passed, "{judged:?}");
    assert!(judged.message.contains("not significantly worse than the primary"), "{judged:?}");
    eprintln!("[comparison] equal release promoted: {} (values {samples:?})", judged.message);

    // Git adds the comparison while a release is at weight 30: the two ticks left (at 40
    // and 50) cannot give minSamples 4, so the run holds at its last step, visibly, and
    // promotes once it has them (onInsufficientSamples defaults to Hold).
    env.simulator.set_version("podinfo:6.0.1", VersionBehaviour::new(0.0, 20.0)).unwrap();
    env.canaries().patch(APP, &manager, &Patch::Apply(manifest(10, 50, None))).await.unwrap();
    env.set_image(IMAGE_V1).await.unwrap();
    // The status, not the route: the route is written before the status, and a spec that
    // lands between the two makes that tick decide again with the comparison, which then
    // collects a third value and needs no hold.
    env.wait_status("canary weight 30", RELEASE, |s| s.canary_weight == 30).await.unwrap();
    let with_comparison = manifest(10, 50, Some(json!({"direction": "increase", "minSamples": 4})));
    env.canaries().patch(APP, &manager, &Patch::Apply(with_comparison)).await.unwrap();
    let (_, held) = env.wait_event("ComparisonPending", RELEASE, |m| m.contains("weight 50")).await.unwrap();
    assert!(held.contains("request-duration") && held.contains("progressDeadlineSeconds"), "{held}");
    let holding = env
        .wait_status("the ComparisonPending condition", RELEASE, |s| {
            s.comparison_pending_since.is_some()
                && s.conditions.iter().any(|c| c.type_ == "Progressing" && c.reason == "ComparisonPending")
        })
        .await
        .unwrap();
    assert_eq!(holding.canary_weight, 50, "held at the last step, never all traffic on the canary");
    eprintln!("[comparison] held: {held}");
    let succeeded = env.wait_phase(Phase::Succeeded, RELEASE).await.unwrap();
    assert_eq!(succeeded.comparison_pending_since, None);
    let samples = succeeded.comparison_samples.iter().find(|s| s.name == "request-duration").unwrap();
    assert!(finite(&samples.canary).len() >= 4, "promoted once judged: {samples:?}");
    assert!(env.recorder.max_canary_weight() <= 50, "weights: {:?}", env.weights());
    env.assert_weights_sum_to_100();
    assert_eq!(env.image_of(&primary()).await.unwrap(), IMAGE_V1);
    eprintln!("[comparison] passed in {:.1?}", t0.elapsed());
}
