//! Issue 11, defects 6 and 8, against a real control plane: petrel and its API server.
//!
//! - The API server is SIGKILLed mid-release and started again: the release ends
//!   correctly, no transition is applied twice (each Event once, each weight once), and
//!   `/readyz` says not ready while petrel's caches are not kept.
//! - An idle Canary costs the API server nothing, and MetricTemplates come from a cache:
//!   counted from the API server's audit log by petrel's user agent.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kube::api::{Patch, PatchParams};
use petrel::api::MetricTemplate;
use petrel::api::canary::Phase;
use petrel_e2e::fleet::tally;
use petrel_e2e::scenario::{APP, CanaryOptions, IMAGE_V1, NAMESPACE, ReadyzProbe, TestEnv, canary_weights};
use petrel_e2e::simulator::Provider;
use serde_json::json;

const SETUP: Duration = Duration::from_secs(60);
const RELEASE: Duration = Duration::from_secs(150);
/// How long the API server stays down: longer than an analysis interval and than
/// petrel's readiness grace, short against the progress deadline.
const OUTAGE: Duration = Duration::from_secs(12);

/// `(reason, message) -> count` of the Canary's Events.
async fn event_counts(env: &TestEnv) -> BTreeMap<(String, String), i32> {
    let mut counts = BTreeMap::new();
    for (reason, message, count) in env.canary_event_counts().await.unwrap() {
        *counts.entry((reason, message)).or_insert(0) += count;
    }
    counts
}

fn count_of(counts: &BTreeMap<(String, String), i32>, reason: &str) -> i32 {
    counts.iter().filter(|((r, _), _)| r == reason).map(|(_, n)| n).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_killed_mid_release_applies_no_transition_twice() {
    let t0 = Instant::now();
    let env = TestEnv::start_audited("apiserver-restart", Provider::GatewayApi).await.unwrap();
    let options = CanaryOptions {
        step_weight: Some(10),
        max_weight: Some(50),
        progress_deadline_seconds: 300,
        ..CanaryOptions::canary(Provider::GatewayApi)
    };
    env.apply_canary(&options).await.unwrap();
    env.wait_phase(Phase::Initialized, SETUP).await.unwrap();
    let readyz = ReadyzProbe::start(env.operator_metrics_addr(SETUP).await.unwrap());
    readyz.wait_for(true, t0, SETUP).await.unwrap();

    env.set_image(IMAGE_V1).await.unwrap();
    env.wait_status("progressing at weight 20", RELEASE, |s| s.phase == Phase::Progressing && s.canary_weight >= 20)
        .await
        .unwrap();
    let killed_at = Instant::now();
    env.kill_apiserver().unwrap();
    eprintln!("[apiserver-restart] API server killed at t={:.1?}", env.elapsed());
    let not_ready_at = readyz.wait_for(false, killed_at, OUTAGE).await.unwrap();
    eprintln!("[apiserver-restart] /readyz not ready {:.1?} after the kill", not_ready_at - killed_at);
    tokio::time::sleep(OUTAGE.saturating_sub(killed_at.elapsed())).await;
    let restarted_at = Instant::now();
    env.restart_apiserver(SETUP).await.unwrap();
    eprintln!("[apiserver-restart] API server serving again after {:.1?} down", killed_at.elapsed());
    let ready_at = readyz.wait_for(true, restarted_at, SETUP).await.unwrap();
    eprintln!("[apiserver-restart] /readyz ready {:.1?} after the restart", ready_at - restarted_at);
    let unready_while_down = readyz.samples().iter().any(|(at, r)| !r && *at >= killed_at && *at < restarted_at);
    assert!(unready_while_down, "/readyz never answered not ready while the API server was down");

    env.wait_phase(Phase::Succeeded, RELEASE).await.unwrap();
    let history =
        env.wait_weights("route back to 100/0", SETUP, |h| h.last().is_some_and(|r| r.canary() == 0)).await.unwrap();
    let bad = env.recorder.splits_not_summing_to(100);
    assert!(bad.is_empty(), "splits not summing to 100: {bad:?}");
    assert_eq!(canary_weights(&history), vec![0, 10, 20, 30, 40, 50, 0], "each weight written once, in order");
    assert!(!env.phases().contains(&Phase::Failed), "the release failed: {:?}", env.phases());

    // Each transition once: a stale decision that was applied again would repeat its Event.
    // The last Event (Promoted) goes out just after the Succeeded status write that the wait
    // above saw, so it is awaited rather than read once.
    env.wait_event("Promoted", SETUP, |_| true).await.unwrap();
    let counts = event_counts(&env).await;
    let repeated: Vec<_> = counts
        .iter()
        .filter(|((reason, _), n)| {
            **n > 1 && !matches!(reason.as_str(), "CheckFailed" | "TrafficIncreaseHeld" | "WaitingForPromotion")
        })
        .collect();
    assert!(repeated.is_empty(), "transitions applied more than once: {repeated:?}");
    let increases: Vec<&String> =
        counts.keys().filter(|(reason, _)| reason == "WeightIncreased").map(|(_, message)| message).collect();
    assert_eq!(increases.len(), 5, "one WeightIncreased per step: {increases:?}");
    for reason in ["NewRevision", "AnalysisStarted", "PromotionStarted", "Promoted"] {
        assert_eq!(count_of(&counts, reason), 1, "{reason} once; events: {counts:?}");
    }
    // The API server's own count of route writes (one per weight, unless a write's answer
    // was lost with the API server and it went out again).
    let route_writes = env
        .petrel_requests(chrono::DateTime::<chrono::Utc>::MIN_UTC, chrono::Utc::now())
        .unwrap()
        .into_iter()
        .filter(|r| r.resource == "httproutes" && matches!(r.verb.as_str(), "patch" | "create" | "update"))
        .count();
    eprintln!("[apiserver-restart] route writes by petrel: {route_writes} for 7 weights (0, 10 … 50, 0)");
    let status = env.canary_status().await.unwrap();
    assert_eq!(status.canary_weight, 0);
    assert_eq!(status.last_promoted_spec, status.last_applied_spec);
    assert_eq!(env.image_of(&format!("{APP}-primary")).await.unwrap(), IMAGE_V1);
    eprintln!("[apiserver-restart] passed in {:.1?}", t0.elapsed());
}

/// A MetricTemplate whose query always answers 100 (a Prometheus constant), on the
/// Prometheus of the builtin metrics.
fn constant_template() -> serde_json::Value {
    json!({
        "apiVersion": "petrel.dev/v1alpha1",
        "kind": "MetricTemplate",
        "metadata": {"name": "constant", "namespace": NAMESPACE},
        "spec": {"provider": {"type": "prometheus"}, "query": "vector(100)"},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_canary_costs_no_api_requests() {
    const TEMPLATE_METRICS: usize = 20;
    const IDLE_WINDOW: Duration = Duration::from_secs(30);
    let t0 = Instant::now();
    let env = TestEnv::start_audited("idle-cost", Provider::GatewayApi).await.unwrap();
    kube::Api::<MetricTemplate>::namespaced(env.client.clone(), NAMESPACE)
        .patch("constant", &PatchParams::apply("e2e-test").force(), &Patch::Apply(constant_template()))
        .await
        .unwrap();
    let mut canary = CanaryOptions { success_rate_min: None, ..CanaryOptions::canary(Provider::GatewayApi) }.manifest();
    canary["spec"]["analysis"]["metrics"] = (0..TEMPLATE_METRICS)
        .map(|i| json!({"name": format!("constant-{i}"), "templateRef": {"name": "constant"}, "thresholdRange": {"min": 99}}))
        .collect();
    env.canaries().patch(APP, &PatchParams::apply("e2e-test").force(), &Patch::Apply(canary)).await.unwrap();
    env.wait_phase(Phase::Initialized, SETUP).await.unwrap();

    let release_started = chrono::Utc::now();
    env.set_image(IMAGE_V1).await.unwrap();
    env.wait_phase(Phase::Succeeded, RELEASE).await.unwrap();
    let release_ended = chrono::Utc::now();
    let release = env.petrel_requests(release_started, release_ended).unwrap();
    let minutes = (release_ended - release_started).num_milliseconds() as f64 / 60_000.0;
    eprintln!(
        "[idle-cost] release ({TEMPLATE_METRICS} template metrics): {} requests in {:.1} s, {:.0} a minute: {:?}",
        release.len(),
        minutes * 60.0,
        release.len() as f64 / minutes,
        tally(&release)
    );
    let template_gets = release.iter().filter(|r| r.resource == "metrictemplates" && r.verb == "get").count();

    // Let the last status write's own watch event come back and be reconciled.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_from = chrono::Utc::now();
    tokio::time::sleep(IDLE_WINDOW).await;
    let idle = env.petrel_requests(idle_from, chrono::Utc::now()).unwrap();
    let idle: Vec<_> = idle.into_iter().filter(|r| r.verb != "watch").collect();
    eprintln!("[idle-cost] idle Succeeded Canary: {} requests in {IDLE_WINDOW:?}: {:?}", idle.len(), tally(&idle));
    assert_eq!(template_gets, 0, "MetricTemplates read one by one during the release, not from the cache");
    assert!(idle.is_empty(), "an idle Canary made requests: {:?}", tally(&idle));
    assert_eq!(env.canary_status().await.unwrap().phase, Phase::Succeeded);
    eprintln!("[idle-cost] passed in {:.1?}", t0.elapsed());
}

/// petrel's Event recorder against a real API server: the Event it creates and the
/// series patch of a repeat are accepted (`events.k8s.io/v1` validates both), a repeat
/// after the object changed (another resourceVersion, as after a Canary's status write)
/// folds into the first Event's series, another note is another Event, and a repeat of
/// an Event that is gone creates it again.
///
/// `cargo test -p petrel-e2e --test api_server events_fold -- --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_fold_repeats_into_series_across_status_writes() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::api::events::v1::Event;
    use kube::Resource as _;
    use kube::api::{Api, DeleteParams, ListParams, PostParams};
    use petrel_e2e::fleet::{Fleet, FleetOptions, ensure_binaries};

    let t0 = Instant::now();
    let dir = std::env::temp_dir().join(format!("petrel-e2e-events-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut options = FleetOptions::new(dir.join("fleet"), ["events"]);
    options.bin_dir = Some(tokio::task::spawn_blocking(ensure_binaries).await.unwrap().unwrap());
    options.nodes_per_cluster = 0;
    let fleet = Fleet::start(options).await.unwrap();
    let client = fleet.cluster("events").unwrap().client().await.unwrap();

    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let subject =
        json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "subject" }, "data": { "v": "1" } });
    let created = config_maps.create(&PostParams::default(), &serde_json::from_value(subject).unwrap()).await.unwrap();
    let recorder = petrel::events::EventRecorder::new(client.clone(), "petrel-e2e", Some("replica-0".into()));
    // Queued, and written in order by the object's lane; drained before each look.
    let drained = std::time::Duration::from_secs(20);
    assert!(recorder.publish(&created.object_ref(&()), "Waiting", "podinfo is not ready", false));
    assert!(recorder.drain(drained).await);
    let changed = config_maps
        .patch("subject", &PatchParams::default(), &Patch::Merge(json!({ "data": { "v": "2" } })))
        .await
        .unwrap();
    assert_ne!(changed.metadata.resource_version, created.metadata.resource_version);
    assert!(recorder.publish(&changed.object_ref(&()), "Waiting", "podinfo is not ready", false));
    assert!(recorder.publish(&changed.object_ref(&()), "Waiting", "podinfo is not ready", false));
    assert!(recorder.publish(&changed.object_ref(&()), "Waiting", "podinfo-primary is not ready", true));
    assert!(recorder.drain(drained).await);

    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let of_subject = async || -> Vec<Event> {
        let mut list = events.list(&ListParams::default()).await.unwrap().items;
        list.retain(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("subject"));
        list.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
        list
    };
    let list = of_subject().await;
    let summary: Vec<_> = list
        .iter()
        .map(|e| (e.note.clone().unwrap_or_default(), e.type_.clone(), e.series.as_ref().map(|s| s.count)))
        .collect();
    assert_eq!(
        summary,
        [
            ("podinfo is not ready".to_string(), Some("Normal".to_string()), Some(3)),
            ("podinfo-primary is not ready".to_string(), Some("Warning".to_string()), None),
        ],
        "{list:#?}"
    );
    let first = &list[0];
    assert_eq!(first.reporting_controller.as_deref(), Some("petrel-e2e"));
    assert_eq!(first.reporting_instance.as_deref(), Some("replica-0"));
    assert_eq!(first.regarding.as_ref().and_then(|r| r.uid.clone()), created.metadata.uid);

    // The Event is gone (the API server's TTL, or someone deleted it): a repeat is new.
    events.delete(first.metadata.name.as_deref().unwrap(), &DeleteParams::default()).await.unwrap();
    assert!(recorder.publish(&changed.object_ref(&()), "Waiting", "podinfo is not ready", false));
    assert!(recorder.drain(drained).await);
    let list = of_subject().await;
    let again: Vec<_> =
        list.iter().filter(|e| e.note.as_deref() == Some("podinfo is not ready")).map(|e| e.series.clone()).collect();
    assert_eq!(again, [None], "{list:#?}");
    eprintln!("[events] passed in {:.1?}", t0.elapsed());
}
