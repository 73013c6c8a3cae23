//! One reconcile against fake API servers (the hub and two members).

use std::sync::Arc;

use serde_json::{Value, json};

use super::controller::{HubContext, reconcile};
use super::members::{MemberClients, kubeconfig_fingerprint};
use super::watches::{ProbeResult, WatchKey};
use crate::api::Rollout;
use crate::api::cluster_identity::ClusterIdentitySpec;
use crate::fleet::identity::ObservedIdentity;
use crate::fleet::{APPROVED_REVISION_ANNOTATION, FLEET_ROLLOUT_ANNOTATION};

// A second copy of the workloads' fake API server: its module is private to
// `workloads`, which this module does not own.
#[allow(dead_code, clippy::duplicate_mod)]
#[path = "../workloads/fake_api.rs"]
mod fake_api;
use fake_api::FakeApi;

const NEW: &str = "podinfo:6.1.0";
const OLD: &str = "podinfo:6.0.0";
const CANARY_PATH: &str = "/apis/petrel.dev/v1alpha1/namespaces/test/canaries/podinfo";
const STATUS_PATH: &str = "/apis/petrel.dev/v1alpha1/namespaces/fleet/rollouts/podinfo/status";

fn cluster(name: &str, role: &str) -> Value {
    json!({
        "apiVersion": "petrel.dev/v1alpha1", "kind": "Cluster",
        "metadata": {"name": name, "labels": {"role": role}},
        "spec": {"kubeconfigSecretRef": {"name": name, "namespace": "petrel-system"}},
        "status": {"identity": {"pinnedUID": format!("uid-{name}")}}
    })
}

/// A member client, and a probe through the same kubeconfig that found the member to
/// be who its Cluster says (kube-system UID `uid-<name>`, as pinned by [`cluster`]).
fn connect(ctx: &HubContext, name: &str, kubeconfig: &str, client: kube::Client) {
    connect_as(ctx, name, kubeconfig, client, &format!("uid-{name}"));
}

/// As [`connect`], with the member's kube-system UID.
fn connect_as(ctx: &HubContext, name: &str, kubeconfig: &str, client: kube::Client, uid: &str) {
    ctx.members.insert_for_test(name, kubeconfig, client);
    let identity = ObservedIdentity {
        kubeconfig: kubeconfig_fingerprint(kubeconfig),
        kube_system_uid: Ok(uid.to_string()),
        stated: Ok(Some(ClusterIdentitySpec {
            cluster_name: name.into(),
            kube_system_uid: uid.to_string(),
            ..Default::default()
        })),
    };
    let probe = ProbeResult::Reached { server_version: "v1.36.4".into(), canary_api: true, identity };
    ctx.watches.record_probe(name, probe, chrono::Utc::now());
}

fn secret(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": "petrel-system"},
        // "kubeconfig" base64-encoded: the fake client is cached under its fingerprint.
        "data": {"kubeconfig": "a3ViZWNvbmZpZw=="}
    })
}

fn member_canary(phase: &str, release: &str, revision: &str, promoted: &str) -> Value {
    json!({
        "apiVersion": "petrel.dev/v1alpha1", "kind": "Canary",
        "metadata": {"name": "podinfo", "namespace": "test"},
        "spec": {"targetRef": {"kind": "Deployment", "name": "podinfo"}, "service": {"port": 9898}},
        "status": {"phase": phase, "release": release, "lastAppliedSpec": revision, "lastPromotedSpec": promoted}
    })
}

fn rollout() -> Rollout {
    serde_json::from_value(json!({
        "apiVersion": "petrel.dev/v1alpha1", "kind": "Rollout",
        "metadata": {"name": "podinfo", "namespace": "fleet", "generation": 1},
        "spec": {
            "canaryRef": {"namespace": "test", "name": "podinfo"},
            "waves": [
                {"name": "canary", "clusterSelector": {"matchLabels": {"role": "canary"}}},
                {"name": "rest"}
            ]
        }
    }))
    .unwrap()
}

fn applied_annotations(member: &FakeApi) -> Vec<Value> {
    member
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" && r.path == CANARY_PATH)
        .map(|r| {
            let body = r.body.unwrap();
            assert!(body.get("spec").is_none(), "only annotations are applied: {body}");
            assert!(r.query.contains("fieldManager=petrel-hub"), "{}", r.query);
            body["metadata"]["annotations"].clone()
        })
        .collect()
}

#[tokio::test]
async fn the_first_wave_is_opened_and_its_member_approved() {
    let hub = FakeApi::new();
    hub.insert(
        "/apis/petrel.dev/v1alpha1/clusters",
        json!({"apiVersion": "petrel.dev/v1alpha1", "kind": "ClusterList", "metadata": {}, "items": [
            cluster("canary-1", "canary"), cluster("prod-1", "prod"), cluster("prod-2", "prod")
        ]}),
    );
    hub.insert("/api/v1/namespaces/petrel-system/secrets/canary-1", secret("canary-1"));
    hub.insert("/api/v1/namespaces/petrel-system/secrets/prod-1", secret("prod-1"));
    // prod-2's Secret is missing: it is unreachable, and the status says why.
    let canary_member = FakeApi::new();
    canary_member.insert(CANARY_PATH, member_canary("Waiting", NEW, "rev-new", "rev-old"));
    let prod_member = FakeApi::new();
    prod_member.insert(CANARY_PATH, member_canary("Succeeded", OLD, "rev-old", "rev-old"));

    let ctx = HubContext::new(hub.client(), None);
    connect(&ctx, "canary-1", "kubeconfig", canary_member.client());
    connect(&ctx, "prod-1", "kubeconfig", prod_member.client());
    reconcile(Arc::new(rollout()), Arc::new(ctx)).await.unwrap();

    assert_eq!(
        applied_annotations(&canary_member),
        [json!({FLEET_ROLLOUT_ANNOTATION: "fleet/podinfo", APPROVED_REVISION_ANNOTATION: "rev-new"})]
    );
    assert_eq!(applied_annotations(&prod_member), [json!({FLEET_ROLLOUT_ANNOTATION: "fleet/podinfo"})]);

    let status_write = hub.requests().into_iter().find(|r| r.path == STATUS_PATH).expect("the status is written");
    assert!(status_write.query.contains("fieldManager=petrel-hub"), "{}", status_write.query);
    let status = &status_write.body.unwrap()["status"];
    assert_eq!(status["release"], NEW);
    assert_eq!(status["phase"], "Progressing");
    assert_eq!(status["currentWave"], "canary");
    let member =
        |name: &str| status["members"].as_array().unwrap().iter().find(|m| m["cluster"] == name).unwrap().clone();
    // Approved in this very reconcile: the verdict was made before the approval, the
    // approval time is recorded (the next reconcile shows it Approved).
    assert_eq!(member("canary-1")["state"], "Pending");
    assert!(member("canary-1")["approvedAt"].is_string());
    assert_eq!(member("prod-1")["state"], "OtherRelease");
    assert_eq!(member("prod-2")["state"], "Unreachable");
    let message = member("prod-2")["message"].as_str().unwrap().to_string();
    assert!(message.contains("Secret petrel-system/prod-2 does not exist on the hub"), "{message}");

    assert_eq!(
        events(&hub),
        ["ReleaseStarted", "WaveOpened", "MemberApproved", "KubeconfigSecretMissing", "MemberUnreachable"]
    );
    let valid = condition(status, "Valid");
    assert_eq!((valid["status"].as_str(), valid["reason"].as_str()), (Some("False"), Some("KubeconfigSecretMissing")));
    assert!(valid["message"].as_str().unwrap().contains("cluster prod-2"), "{valid}");
}

/// The Clusters come from the hub's Cluster watch while it keeps its cache: no LIST of
/// the fleet per reconcile. Until the watch has synced, they are listed.
#[tokio::test]
async fn clusters_are_read_from_the_kept_watch_and_listed_only_without_it() {
    use kube::runtime::watcher::Event;
    let clusters_path = "/apis/petrel.dev/v1alpha1/clusters";
    let setup = || {
        let hub = FakeApi::new();
        hub.insert("/api/v1/namespaces/petrel-system/secrets/canary-1", secret("canary-1"));
        let member = FakeApi::new();
        member.insert(CANARY_PATH, member_canary("Waiting", NEW, "rev-new", "rev-old"));
        let ctx = HubContext::new(hub.client(), None);
        connect(&ctx, "canary-1", "kubeconfig", member.client());
        let (store, mut writer) = kube::runtime::reflector::store::<crate::api::Cluster>();
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitApply(serde_json::from_value(cluster("canary-1", "canary")).unwrap()));
        writer.apply_watcher_event(&Event::InitDone);
        ctx.read_clusters_from(store);
        (hub, member, ctx)
    };
    let lists = |hub: &FakeApi| hub.requests().iter().filter(|r| r.path == clusters_path).count();

    // Kept: the store is the fleet; the API server (which holds no Cluster) is not asked.
    let (hub, member, ctx) = setup();
    ctx.health.register(super::controller::CLUSTERS_WATCH);
    for event in [Event::Init, Event::InitDone] {
        ctx.health.observe::<crate::api::Cluster>(super::controller::CLUSTERS_WATCH, &Ok(event));
    }
    reconcile(Arc::new(rollout()), Arc::new(ctx)).await.unwrap();
    assert_eq!(lists(&hub), 0, "no LIST while the watch keeps its cache");
    assert_eq!(last_status(&hub)["members"][0]["cluster"], "canary-1");
    assert_eq!(applied_annotations(&member).len(), 1, "the member is approved from the cached Cluster");

    // Not yet synced: the store may be partial, so the API server is asked.
    let (hub, _member, ctx) = setup();
    ctx.health.register(super::controller::CLUSTERS_WATCH);
    hub.insert(clusters_path, cluster_list(vec![cluster("canary-1", "canary")]));
    reconcile(Arc::new(rollout()), Arc::new(ctx)).await.unwrap();
    assert_eq!(lists(&hub), 1, "listed while the watch has not synced");
}

fn condition(status: &Value, type_: &str) -> Value {
    status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == type_).cloned().unwrap_or_default()
}

fn last_status(hub: &FakeApi) -> Value {
    hub.requests().into_iter().rfind(|r| r.path == STATUS_PATH).expect("a status write").body.unwrap()["status"].clone()
}

fn cluster_list(clusters: Vec<Value>) -> Value {
    json!({"apiVersion": "petrel.dev/v1alpha1", "kind": "ClusterList", "metadata": {}, "items": clusters})
}

/// The smallest fleet: the hub lists `canary_cluster` (a Cluster `canary-1`) and holds its
/// kubeconfig Secret; its member holds the Canary waiting for release `NEW`; the hub's
/// context is connected to it (see [`connect`]). Returns the hub, the member, the context.
fn one_member_fleet(canary_cluster: Value) -> (FakeApi, FakeApi, Arc<HubContext>) {
    let hub = FakeApi::new();
    hub.insert("/apis/petrel.dev/v1alpha1/clusters", cluster_list(vec![canary_cluster]));
    hub.insert("/api/v1/namespaces/petrel-system/secrets/canary-1", secret("canary-1"));
    let member = FakeApi::new();
    member.insert(CANARY_PATH, member_canary("Waiting", NEW, "rev-new", "rev-old"));
    let ctx = Arc::new(HubContext::new(hub.client(), None));
    connect(&ctx, "canary-1", "kubeconfig", member.client());
    (hub, member, ctx)
}

fn labelled(name: &str, labels: Value) -> Value {
    let mut c = cluster(name, "none");
    c["metadata"]["labels"] = labels;
    c
}

#[tokio::test]
async fn a_canary_that_exists_in_no_member_blocks_the_rollout_once() {
    let hub = FakeApi::new();
    hub.insert(
        "/apis/petrel.dev/v1alpha1/clusters",
        cluster_list(vec![cluster("canary-1", "canary"), cluster("prod-1", "prod")]),
    );
    hub.insert("/api/v1/namespaces/petrel-system/secrets/canary-1", secret("canary-1"));
    hub.insert("/api/v1/namespaces/petrel-system/secrets/prod-1", secret("prod-1"));
    let (canary_member, prod_member) = (FakeApi::new(), FakeApi::new());
    let ctx = Arc::new(HubContext::new(hub.client(), None));
    connect(&ctx, "canary-1", "kubeconfig", canary_member.client());
    connect(&ctx, "prod-1", "kubeconfig", prod_member.client());
    reconcile(Arc::new(rollout()), ctx.clone()).await.unwrap();

    assert!(canary_member.writes().is_empty() && prod_member.writes().is_empty(), "nothing is approved");
    let status = last_status(&hub);
    let progressing = condition(&status, "Progressing");
    assert_eq!(
        (progressing["status"].as_str(), progressing["reason"].as_str()),
        (Some("False"), Some("CanaryNotFound"))
    );
    let valid = condition(&status, "Valid");
    assert_eq!(valid["reason"], "CanaryNotFound");
    let message = valid["message"].as_str().unwrap();
    assert!(message.contains("Canary test/podinfo exists in none of the 2 cluster(s) that answered"), "{message}");
    assert_eq!(events(&hub), ["CanaryNotFound"]);

    let mut again = rollout();
    again.status = Some(serde_json::from_value(status).unwrap());
    reconcile(Arc::new(again), ctx).await.unwrap();
    assert_eq!(events(&hub), ["CanaryNotFound"], "announced once");
}

#[tokio::test]
async fn overlapping_waves_and_left_out_members_are_reported_and_never_approved_wrongly() {
    let hub = FakeApi::new();
    hub.insert(
        "/apis/petrel.dev/v1alpha1/clusters",
        cluster_list(vec![
            labelled("canary-1", json!({"role": "canary", "region": "eu"})),
            labelled("eu-1", json!({"region": "eu"})),
            labelled("lab-1", json!({"region": "lab"})),
        ]),
    );
    let members: Vec<(&str, FakeApi)> =
        ["canary-1", "eu-1", "lab-1"].into_iter().map(|n| (n, FakeApi::new())).collect();
    let ctx = Arc::new(HubContext::new(hub.client(), None));
    for (name, member) in &members {
        hub.insert(&format!("/api/v1/namespaces/petrel-system/secrets/{name}"), secret(name));
        member.insert(CANARY_PATH, member_canary("Waiting", NEW, "rev-new", "rev-old"));
        connect(&ctx, name, "kubeconfig", member.client());
    }
    let mut spec = rollout();
    spec.spec.waves = serde_json::from_value(json!([
        {"name": "canary", "clusterSelector": {"matchLabels": {"role": "canary"}}},
        {"name": "eu", "clusterSelector": {"matchLabels": {"region": "eu"}}}
    ]))
    .unwrap();
    reconcile(Arc::new(spec), ctx).await.unwrap();

    // The first wave wins: only canary-1 is approved; eu-1 waits, lab-1 never gets it.
    let approved: Vec<&str> = members
        .iter()
        .filter(|(_, m)| applied_annotations(m).iter().any(|a| a.get(APPROVED_REVISION_ANNOTATION).is_some()))
        .map(|(name, _)| *name)
        .collect();
    assert_eq!(approved, ["canary-1"]);
    let status = last_status(&hub);
    let valid = condition(&status, "Valid");
    assert_eq!((valid["status"].as_str(), valid["reason"].as_str()), (Some("False"), Some("WavesOverlap")));
    let message = valid["message"].as_str().unwrap();
    assert!(message.contains("canary-1 (waves canary, eu: goes to canary)"), "{message}");
    assert!(message.contains("will not get the release: lab-1"), "{message}");
    assert_eq!(events(&hub), ["ReleaseStarted", "WaveOpened", "MemberApproved", "WavesOverlap", "ClustersUnassigned"]);
}

#[tokio::test]
async fn a_broken_kubeconfig_names_the_cluster_and_leaves_it_unreachable() {
    let hub = FakeApi::new();
    hub.insert(
        "/apis/petrel.dev/v1alpha1/clusters",
        cluster_list(vec![cluster("canary-1", "canary"), cluster("prod-1", "prod")]),
    );
    hub.insert("/api/v1/namespaces/petrel-system/secrets/canary-1", secret("canary-1"));
    let mut broken = secret("prod-1");
    // "clusters: [" base64-encoded: not YAML.
    broken["data"]["kubeconfig"] = json!("Y2x1c3RlcnM6IFs=");
    hub.insert("/api/v1/namespaces/petrel-system/secrets/prod-1", broken);
    let member = FakeApi::new();
    member.insert(CANARY_PATH, member_canary("Waiting", NEW, "rev-new", "rev-old"));
    let ctx = Arc::new(HubContext::new(hub.client(), None));
    connect(&ctx, "canary-1", "kubeconfig", member.client());
    reconcile(Arc::new(rollout()), ctx).await.unwrap();

    let status = last_status(&hub);
    let prod = status["members"].as_array().unwrap().iter().find(|m| m["cluster"] == "prod-1").unwrap().clone();
    assert_eq!(prod["state"], "Unreachable");
    let valid = condition(&status, "Valid");
    assert_eq!(valid["reason"], "KubeconfigInvalid");
    assert!(valid["message"].as_str().unwrap().starts_with("cluster prod-1: the kubeconfig is invalid"), "{valid}");
    assert!(events(&hub).contains(&"KubeconfigInvalid".to_string()), "{:?}", events(&hub));
}

fn watch_key(cluster: &str) -> WatchKey {
    WatchKey { cluster: cluster.into(), namespace: "test".into(), name: "podinfo".into() }
}

#[tokio::test]
async fn a_fresh_watch_cache_replaces_the_get_and_a_failed_watch_is_unreachable() {
    let hub = FakeApi::new();
    hub.insert(
        "/apis/petrel.dev/v1alpha1/clusters",
        cluster_list(vec![cluster("canary-1", "canary"), cluster("prod-1", "prod")]),
    );
    hub.insert("/api/v1/namespaces/petrel-system/secrets/canary-1", secret("canary-1"));
    hub.insert("/api/v1/namespaces/petrel-system/secrets/prod-1", secret("prod-1"));
    let (canary_member, prod_member) = (FakeApi::new(), FakeApi::new());
    // The member's copy (for the apply); the cache says Waiting at rev-new.
    canary_member.insert(CANARY_PATH, member_canary("Waiting", NEW, "rev-new", "rev-old"));
    let ctx = Arc::new(HubContext::new(hub.client(), None));
    connect(&ctx, "canary-1", "kubeconfig", canary_member.client());
    connect(&ctx, "prod-1", "kubeconfig", prod_member.client());
    let fingerprint = kubeconfig_fingerprint("kubeconfig");
    let cached: crate::api::Canary =
        serde_json::from_value(member_canary("Waiting", NEW, "rev-new", "rev-old")).unwrap();
    let now = chrono::Utc::now();
    ctx.watches.insert_cache_for_test(watch_key("canary-1"), &fingerprint, Some(cached), None, now);
    ctx.watches.insert_cache_for_test(watch_key("prod-1"), &fingerprint, None, Some("connection refused"), now);
    reconcile(Arc::new(rollout()), ctx.clone()).await.unwrap();

    assert!(
        canary_member.requests().iter().all(|r| r.method != "GET"),
        "read from the cache: {:?}",
        canary_member.calls()
    );
    assert!(prod_member.requests().is_empty(), "a failed watch is not read around");
    assert_eq!(
        applied_annotations(&canary_member),
        [json!({FLEET_ROLLOUT_ANNOTATION: "fleet/podinfo", APPROVED_REVISION_ANNOTATION: "rev-new"})]
    );
    let status = last_status(&hub);
    let prod = status["members"].as_array().unwrap().iter().find(|m| m["cluster"] == "prod-1").unwrap().clone();
    assert_eq!(prod["state"], "Unreachable");
    assert!(prod["message"].as_str().unwrap().contains("watching Canary test/podinfo: connection refused"), "{prod}");
    // The reconcile asked for both watches (the manager would start them).
    assert_eq!(ctx.watches.wanted(), [watch_key("canary-1"), watch_key("prod-1")].into());
}

#[tokio::test]
async fn the_hub_exports_its_rollout_metrics_and_reconcile_time() {
    let (_hub, _member, ctx) = one_member_fleet(cluster("canary-1", "canary"));
    reconcile(Arc::new(rollout()), ctx.clone()).await.unwrap();
    let text = ctx.metrics.render();
    for line in [
        r#"petrel_rollout_phase{namespace="fleet",name="podinfo",phase="Progressing"} 1"#,
        r#"petrel_rollout_wave{namespace="fleet",name="podinfo",wave="canary",phase="Progressing"} 1"#,
        r#"petrel_rollout_member{namespace="fleet",name="podinfo",cluster="canary-1",wave="canary",state="Pending"} 1"#,
        r#"petrel_reconcile_duration_seconds_count{controller="rollout"} 1"#,
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
}

#[tokio::test]
async fn a_second_reconcile_reapplies_nothing_and_reports_progress() {
    let (hub, member, ctx) = one_member_fleet(cluster("canary-1", "canary"));
    reconcile(Arc::new(rollout()), ctx.clone()).await.unwrap();
    let written = hub.requests().into_iter().rfind(|r| r.path == STATUS_PATH).unwrap().body.unwrap();

    // The member took the approval and started its analysis.
    let mut canary = member_canary("Progressing", NEW, "rev-new", "rev-old");
    canary["metadata"]["annotations"] =
        json!({FLEET_ROLLOUT_ANNOTATION: "fleet/podinfo", APPROVED_REVISION_ANNOTATION: "rev-new"});
    member.insert(CANARY_PATH, canary);
    let mut again = rollout();
    again.status = Some(serde_json::from_value(written["status"].clone()).unwrap());
    let (member_writes, hub_events) = (applied_annotations(&member).len(), events(&hub).len());
    reconcile(Arc::new(again), ctx).await.unwrap();

    assert_eq!(applied_annotations(&member).len(), member_writes, "the annotations are in place already");
    assert_eq!(events(&hub).len(), hub_events, "the wave opened and the member was approved before");
    let status = hub.requests().into_iter().rfind(|r| r.path == STATUS_PATH).unwrap().body.unwrap()["status"].clone();
    assert_eq!(status["members"][0]["state"], "Progressing");
    assert_eq!(status["members"][0]["approvedAt"], written["status"]["members"][0]["approvedAt"]);
    assert_eq!(status["waves"][0]["openedAt"], written["status"]["waves"][0]["openedAt"]);
}

/// Issue 11 (defect 6) for the hub: a status decided from a Rollout that changed since
/// is refused (409), and then no Event goes out: the next reconcile decides again.
#[tokio::test]
async fn a_status_decided_from_an_old_rollout_is_refused_and_announces_nothing() {
    let hub = FakeApi::new();
    hub.insert("/apis/petrel.dev/v1alpha1/clusters", cluster_list(vec![cluster("canary-1", "canary")]));
    hub.insert("/api/v1/namespaces/petrel-system/secrets/canary-1", secret("canary-1"));
    // The API server holds a newer Rollout than the one reconciled.
    hub.insert(STATUS_PATH, json!({"metadata": {"name": "podinfo", "namespace": "fleet", "resourceVersion": "8"}}));
    let member = FakeApi::new();
    member.insert(CANARY_PATH, member_canary("Waiting", NEW, "rev-new", "rev-old"));
    let ctx = HubContext::new(hub.client(), None);
    ctx.members.insert_for_test("canary-1", "kubeconfig", member.client());
    let mut stale = rollout();
    stale.metadata.resource_version = Some("7".into());

    reconcile(Arc::new(stale), Arc::new(ctx)).await.expect("a conflict is no error: the reconcile runs again");
    let write = hub.requests().into_iter().find(|r| r.path == STATUS_PATH).expect("the status write was tried");
    assert_eq!(write.body.unwrap()["metadata"]["resourceVersion"], "7", "conditional on the version decided from");
    assert_eq!(events(&hub), Vec::<String>::new(), "nothing announced for a refused decision");
}

/// Issue 16: the Events of a reconcile wait for its status write. A refused write (409)
/// announces nothing, whether the Rollout goes on (waves) or is blocked; the reconcile
/// of the Rollout read again announces each once.
#[tokio::test]
async fn a_refused_status_write_publishes_no_event_and_the_next_one_publishes_each_once() {
    let (hub, member, ctx) = one_member_fleet(cluster("canary-1", "canary"));
    hub.insert(STATUS_PATH, json!({"metadata": {"name": "podinfo", "namespace": "fleet", "resourceVersion": "8"}}));
    let read_at = |version: &str| {
        let mut rollout = rollout();
        rollout.metadata.resource_version = Some(version.into());
        Arc::new(rollout)
    };

    reconcile(read_at("7"), ctx.clone()).await.unwrap();
    assert_eq!(applied_annotations(&member).len(), 1, "the member was approved before the status write");
    assert_eq!(events(&hub), Vec::<String>::new(), "nothing announced for a refused status");

    // The member holds the approval now; the Rollout is read again.
    let mut canary = member_canary("Waiting", NEW, "rev-new", "rev-old");
    canary["metadata"]["annotations"] =
        json!({FLEET_ROLLOUT_ANNOTATION: "fleet/podinfo", APPROVED_REVISION_ANNOTATION: "rev-new"});
    member.insert(CANARY_PATH, canary);
    reconcile(read_at("8"), ctx.clone()).await.unwrap();
    assert_eq!(last_status(&hub)["phase"], "Progressing");
    // `MemberApproved` too: the approval was written before the refused status (member
    // writes still precede the status write); this reconcile finds it delivered and
    // records it, and the Event goes with the status that records it.
    assert_eq!(events(&hub), ["ReleaseStarted", "WaveOpened", "MemberApproved"]);

    // Blocked: the Canary is gone from the only member.
    connect(&ctx, "canary-1", "kubeconfig", FakeApi::new().client());
    reconcile(read_at("7"), ctx.clone()).await.unwrap();
    assert_eq!(events(&hub), ["ReleaseStarted", "WaveOpened", "MemberApproved"], "a blocked refusal announces nothing");
    reconcile(read_at("8"), ctx).await.unwrap();
    assert_eq!(condition(&last_status(&hub), "Progressing")["reason"], "CanaryNotFound");
    assert_eq!(events(&hub), ["ReleaseStarted", "WaveOpened", "MemberApproved", "CanaryNotFound"]);
}

fn events(hub: &FakeApi) -> Vec<String> {
    hub.requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/events"))
        .map(|r| r.body.unwrap()["reason"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn template(image: &str, revision: &str) -> Value {
    json!({
        "metadata": {"labels": {"app": "podinfo-primary"}, "annotations": {"petrel.dev/revision": revision}},
        "spec": {"containers": [{"name": "podinfo", "image": image}]}
    })
}

#[tokio::test]
async fn a_breached_budget_with_rollback_all_rolls_promoted_members_back_once() {
    let hub = FakeApi::new();
    hub.insert(
        "/apis/petrel.dev/v1alpha1/clusters",
        json!({"apiVersion": "petrel.dev/v1alpha1", "kind": "ClusterList", "metadata": {}, "items": [
            cluster("eu-1", "prod"), cluster("eu-2", "prod")
        ]}),
    );
    hub.insert("/api/v1/namespaces/petrel-system/secrets/eu-1", secret("eu-1"));
    hub.insert("/api/v1/namespaces/petrel-system/secrets/eu-2", secret("eu-2"));
    let promoted = FakeApi::new();
    let mut canary = member_canary("Succeeded", NEW, "rev-new", "rev-new");
    canary["metadata"]["uid"] = json!("uid-1");
    canary["status"]["promotedRelease"] = json!(NEW);
    promoted.insert(CANARY_PATH, canary);
    const PRIMARY: &str = "/apis/apps/v1/namespaces/test/deployments/podinfo-primary";
    promoted.insert(
        PRIMARY,
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "podinfo-primary", "namespace": "test"},
            "spec": {"selector": {"matchLabels": {"app": "podinfo-primary"}}, "template": template(NEW, "rev-new")}
        }),
    );
    promoted.insert(
        "/apis/apps/v1/namespaces/test/controllerrevisions/podinfo-primary-rev-old",
        json!({
            "apiVersion": "apps/v1", "kind": "ControllerRevision",
            "metadata": {"name": "podinfo-primary-rev-old", "namespace": "test", "labels": {"petrel.dev/canary": "podinfo"}},
            "data": {"template": template(OLD, "rev-old"), "release": OLD, "revision": "rev-old"},
            "revision": 1
        }),
    );
    let failed = FakeApi::new();
    let mut canary = member_canary("Failed", NEW, "rev-new", "rev-old");
    canary["status"]["promotedRelease"] = json!(OLD);
    failed.insert(CANARY_PATH, canary);
    let ctx = Arc::new(HubContext::new(hub.client(), None));
    connect(&ctx, "eu-1", "kubeconfig", promoted.client());
    connect(&ctx, "eu-2", "kubeconfig", failed.client());
    let mut spec = rollout();
    spec.spec.waves = vec![serde_json::from_value(json!({"name": "prod"})).unwrap()];
    spec.spec.on_failure = crate::api::rollout::FailurePolicy::RollbackAll;
    // The release was in flight: both members were approved.
    spec.status = Some(serde_json::from_value(json!({"release": NEW, "phase": "Progressing"})).unwrap());

    reconcile(Arc::new(spec.clone()), ctx.clone()).await.unwrap();

    let rolled_back = promoted.get(PRIMARY).unwrap();
    assert_eq!(rolled_back["spec"]["template"]["spec"]["containers"][0]["image"], OLD);
    // eu-1 had promoted the release (and is rolled back), eu-2 failed it.
    let announced = ["WaveOpened", "WaveFailed", "MemberRolledBack", "MemberSucceeded", "MemberFailed"];
    assert_eq!(events(&hub), announced);
    let written = hub.requests().into_iter().rfind(|r| r.path == STATUS_PATH).unwrap().body.unwrap();
    assert_eq!(written["status"]["phase"], "Failed");
    // The inventory: eu-1's Canary still says NEW promoted, but the hub put OLD back.
    let inventory = &written["status"]["inventory"];
    assert_eq!(inventory[0]["cluster"], "eu-1");
    assert_eq!(
        (&inventory[0]["release"], &inventory[0]["previousRelease"], &inventory[0]["rolledBackFrom"]),
        (&json!(OLD), &json!(NEW), &json!(NEW))
    );
    assert_eq!((&inventory[1]["cluster"], &inventory[1]["release"]), (&json!("eu-2"), &json!(OLD)));
    let history = &written["status"]["history"];
    assert_eq!((history[0]["release"].as_str(), history[0]["outcome"].as_str()), (Some(NEW), Some("Failed")));

    // Next reconcile: the primary runs the old release already; nothing is rolled back again.
    let primary_writes = |api: &FakeApi| api.writes().iter().filter(|w| w.ends_with("podinfo-primary")).count();
    let before = primary_writes(&promoted);
    spec.status = Some(serde_json::from_value(written["status"].clone()).unwrap());
    reconcile(Arc::new(spec), ctx).await.unwrap();
    assert_eq!(primary_writes(&promoted), before);
    assert_eq!(events(&hub), announced, "nothing new to announce");
    let again = hub.requests().into_iter().rfind(|r| r.path == STATUS_PATH).unwrap().body.unwrap();
    assert_eq!(again["status"]["inventory"], *inventory, "still OLD, since the same time");
}

#[tokio::test]
async fn approvals_stay_the_approvers_and_unreadable_traffic_shares_are_reported() {
    let mut canary_cluster = cluster("canary-1", "canary");
    canary_cluster["metadata"]["labels"]["petrel.dev/traffic-share"] = json!("lots");
    let (hub, member, ctx) = one_member_fleet(canary_cluster);
    let mut manual = rollout();
    manual.spec.waves[0].approval = crate::api::rollout::Approval::Manual;
    manual.status = Some(
        serde_json::from_value(json!({"release": NEW, "phase": "WaitingApproval", "waves": [
            {"name": "canary", "approvedAt": "2026-11-22T10:00:00Z", "approvedRelease": NEW, "approvedBy": "alice"}
        ]}))
        .unwrap(),
    );
    reconcile(Arc::new(manual), ctx).await.unwrap();

    let written = last_status(&hub);
    let wave = &written["waves"][0];
    assert_eq!(wave["phase"], "Progressing", "the approval opened the wave: {wave}");
    for field in ["approvedAt", "approvedRelease", "approvedBy"] {
        assert!(wave.get(field).is_none(), "the hub applied {field}, which belongs to the approver: {wave}");
    }
    // The history keeps who approved.
    assert_eq!(written["history"][0]["waves"][0]["approvedBy"], "alice");
    let valid = condition(&written, "Valid");
    assert_eq!((valid["status"].as_str(), valid["reason"].as_str()), (Some("False"), Some("InvalidTrafficShare")));
    assert!(
        valid["message"]
            .as_str()
            .unwrap()
            .contains("cluster canary-1: petrel.dev/traffic-share=\"lots\" is not a number"),
        "{valid}"
    );
    assert!(events(&hub).contains(&"InvalidTrafficShare".to_string()), "{:?}", events(&hub));
    // Nothing is held back by it: the member is approved.
    assert_eq!(applied_annotations(&member)[0][APPROVED_REVISION_ANNOTATION], "rev-new");
}

fn version() -> Value {
    json!({
        "major": "1", "minor": "36", "gitVersion": "v1.36.0", "gitCommit": "abc", "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.25", "compiler": "gc", "platform": "linux/amd64"
    })
}

fn cluster_status_writes(hub: &FakeApi) -> Vec<(String, Value)> {
    hub.requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with("/status") && r.path.contains("/clusters/"))
        .map(|r| {
            assert!(r.query.contains("fieldManager=petrel-hub"), "{}", r.query);
            (r.path, r.body.unwrap()["status"].clone())
        })
        .collect()
}

#[tokio::test]
async fn probes_write_each_clusters_status_and_only_when_it_changed() {
    let hub = FakeApi::new();
    hub.insert(
        "/apis/petrel.dev/v1alpha1/clusters",
        cluster_list(vec![cluster("canary-1", "canary"), cluster("prod-1", "prod")]),
    );
    hub.insert("/api/v1/namespaces/petrel-system/secrets/canary-1", secret("canary-1"));
    // prod-1's Secret is missing.
    let member = FakeApi::new();
    member.insert("/version", version());
    member.insert(
        "/apis/petrel.dev/v1alpha1",
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "petrel.dev/v1alpha1", "resources": [
            {"name": "canaries", "singularName": "canary", "namespaced": true, "kind": "Canary", "verbs": ["get", "list", "watch"]}
        ]}),
    );
    let ctx = Arc::new(HubContext::new(hub.client(), None));
    connect(&ctx, "canary-1", "kubeconfig", member.client());
    super::clusters::probe_all(&ctx).await;

    let writes = cluster_status_writes(&hub);
    let status_of = |name: &str| {
        writes.iter().find(|(path, _)| path.ends_with(&format!("/clusters/{name}/status"))).unwrap().1.clone()
    };
    let canary = status_of("canary-1");
    assert_eq!(canary["serverVersion"], "v1.36.0");
    assert!(canary["lastContactTime"].is_string());
    let ready = canary["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap().clone();
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("True"), Some("CanaryAPIServed")));
    let prod = status_of("prod-1");
    let reachable = prod["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Reachable").unwrap().clone();
    assert_eq!(reachable["reason"], "KubeconfigSecretMissing");
    assert!(reachable["message"].as_str().unwrap().contains("petrel-system/prod-1"), "{reachable}");
    assert!(ctx.watches.probe("canary-1").unwrap().reached() && !ctx.watches.probe("prod-1").unwrap().reached());
    assert!(ctx.metrics.render().contains(r#"petrel_cluster_reachable{cluster="prod-1"} 0"#));

    // The next probe finds the same: the recorded statuses stand, nothing is written.
    let mut canary_cluster = cluster("canary-1", "canary");
    canary_cluster["status"] = canary;
    let mut prod_cluster = cluster("prod-1", "prod");
    prod_cluster["status"] = prod;
    hub.insert("/apis/petrel.dev/v1alpha1/clusters", cluster_list(vec![canary_cluster, prod_cluster]));
    super::clusters::probe_all(&ctx).await;
    assert_eq!(cluster_status_writes(&hub).len(), 2, "no write storm");
}

/// A member kubeconfig: API server `server`, token `abc`.
fn kubeconfig(server: &str) -> String {
    use kube::config::{AuthInfo, Cluster, Context, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext};
    let config = Kubeconfig {
        api_version: Some("v1".into()),
        kind: Some("Config".into()),
        clusters: vec![NamedCluster {
            name: "m".into(),
            cluster: Some(Cluster { server: Some(server.into()), ..Cluster::default() }),
            ..NamedCluster::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: "hub".into(),
            auth_info: Some(AuthInfo { token: Some("abc".to_string().into()), ..AuthInfo::default() }),
            ..NamedAuthInfo::default()
        }],
        contexts: vec![NamedContext {
            name: "m".into(),
            context: Some(Context { cluster: "m".into(), user: Some("hub".into()), ..Context::default() }),
            ..NamedContext::default()
        }],
        current_context: Some("m".into()),
        ..Kubeconfig::default()
    };
    serde_yaml::to_string(&config).expect("a kubeconfig serialises")
}

fn kubeconfig_secret(name: &str, kubeconfig: &str) -> Value {
    let data = serde_json::to_value(k8s_openapi::ByteString(kubeconfig.as_bytes().to_vec())).unwrap();
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": "petrel-system"},
        "data": {"kubeconfig": data}
    })
}

fn secret_reads(hub: &FakeApi, name: &str) -> usize {
    let path = format!("/api/v1/namespaces/petrel-system/secrets/{name}");
    hub.requests().iter().filter(|r| r.method == "GET" && r.path == path).count()
}

#[tokio::test]
async fn a_kubeconfig_secret_is_read_again_only_once_due() {
    let hub = FakeApi::new();
    let path = "/api/v1/namespaces/petrel-system/secrets/eu-1";
    let first_config = kubeconfig("https://10.0.0.1:6443");
    hub.insert(path, kubeconfig_secret("eu-1", &first_config));
    let eu_1: crate::api::Cluster = serde_json::from_value(cluster("eu-1", "prod")).unwrap();
    let clients = MemberClients::new(hub.client());

    let first = clients.connect(&eu_1).await.unwrap();
    assert_eq!(first.fingerprint, kubeconfig_fingerprint(&first_config));
    // Reconciles and probes within the refresh time reuse the connection unread.
    hub.insert(path, kubeconfig_secret("eu-1", &kubeconfig("https://10.0.0.2:6443")));
    for _ in 0..5 {
        assert_eq!(clients.connect(&eu_1).await.unwrap().fingerprint, first.fingerprint);
    }
    assert_eq!(secret_reads(&hub, "eu-1"), 1);

    // A Cluster naming another Secret has it read at once.
    let mut moved = eu_1.clone();
    moved.spec.kubeconfig_secret_ref.name = "eu-1-v2".into();
    let moved_config = kubeconfig("https://10.0.0.3:6443");
    hub.insert("/api/v1/namespaces/petrel-system/secrets/eu-1-v2", kubeconfig_secret("eu-1-v2", &moved_config));
    assert_eq!(clients.connect(&moved).await.unwrap().fingerprint, kubeconfig_fingerprint(&moved_config));
    assert_eq!(secret_reads(&hub, "eu-1-v2"), 1);
}

#[tokio::test]
async fn once_due_a_rotated_secret_gets_new_clients_and_an_unchanged_one_keeps_them() {
    let hub = FakeApi::new();
    let path = "/api/v1/namespaces/petrel-system/secrets/eu-1";
    hub.insert(path, kubeconfig_secret("eu-1", &kubeconfig("https://10.0.0.1:6443")));
    let eu_1: crate::api::Cluster = serde_json::from_value(cluster("eu-1", "prod")).unwrap();
    // Every connect is due.
    let clients = MemberClients::with_refresh(hub.client(), std::time::Duration::ZERO);

    let first = clients.connect(&eu_1).await.unwrap();
    let same = clients.connect(&eu_1).await.unwrap();
    assert_eq!(same.fingerprint, first.fingerprint);
    let rotated_config = kubeconfig("https://10.0.0.2:6443");
    hub.insert(path, kubeconfig_secret("eu-1", &rotated_config));
    let rotated = clients.connect(&eu_1).await.unwrap();
    assert_eq!(rotated.fingerprint, kubeconfig_fingerprint(&rotated_config));
    assert_eq!(secret_reads(&hub, "eu-1"), 3);
}

#[tokio::test]
async fn a_missing_or_broken_secret_is_never_cached() {
    let hub = FakeApi::new();
    let path = "/api/v1/namespaces/petrel-system/secrets/eu-1";
    let eu_1: crate::api::Cluster = serde_json::from_value(cluster("eu-1", "prod")).unwrap();
    let clients = MemberClients::new(hub.client());

    let missing = clients.connect(&eu_1).await.err().unwrap();
    assert_eq!(missing.reason(), "KubeconfigSecretMissing");
    hub.insert(path, kubeconfig_secret("eu-1", "clusters: ["));
    assert_eq!(clients.connect(&eu_1).await.err().unwrap().reason(), "KubeconfigInvalid");
    let fixed = kubeconfig("https://10.0.0.1:6443");
    hub.insert(path, kubeconfig_secret("eu-1", &fixed));
    assert_eq!(clients.connect(&eu_1).await.unwrap().fingerprint, kubeconfig_fingerprint(&fixed));
    assert_eq!(secret_reads(&hub, "eu-1"), 3, "each failure was read again at the next connect");
}

/// Three canary-wave members; `prod-eu`'s Cluster says region eu-west, `prod-us`'s
/// kubeconfig leads to the cluster pinned for `prod-eu` or to another one.
async fn identity_fleet(prod_us_uid: &str, prod_us_states_region: &str) -> (FakeApi, Vec<(&'static str, FakeApi)>) {
    let hub = FakeApi::new();
    hub.insert(
        "/apis/petrel.dev/v1alpha1/clusters",
        cluster_list(vec![
            labelled("canary-1", json!({"role": "canary"})),
            labelled("prod-eu", json!({"role": "canary", "region": "eu-west"})),
            labelled("prod-us", json!({"role": "canary", "region": "eu-west"})),
        ]),
    );
    let members: Vec<(&str, FakeApi)> =
        ["canary-1", "prod-eu", "prod-us"].into_iter().map(|n| (n, FakeApi::new())).collect();
    let ctx = Arc::new(HubContext::new(hub.client(), None));
    for (name, member) in &members {
        hub.insert(&format!("/api/v1/namespaces/petrel-system/secrets/{name}"), secret(name));
        member.insert(CANARY_PATH, member_canary("Waiting", NEW, "rev-new", "rev-old"));
        if *name == "prod-us" {
            ctx.members.insert_for_test(name, "kubeconfig", member.client());
            let identity = ObservedIdentity {
                kubeconfig: kubeconfig_fingerprint("kubeconfig"),
                kube_system_uid: Ok(prod_us_uid.to_string()),
                stated: Ok(Some(ClusterIdentitySpec {
                    cluster_name: "prod-us".into(),
                    kube_system_uid: prod_us_uid.to_string(),
                    labels: [("region".to_string(), prod_us_states_region.to_string())].into(),
                    ..Default::default()
                })),
            };
            let probe = ProbeResult::Reached { server_version: "v1.36.4".into(), canary_api: true, identity };
            ctx.watches.record_probe(name, probe, chrono::Utc::now());
        } else {
            connect(&ctx, name, "kubeconfig", member.client());
        }
    }
    let mut spec = rollout();
    spec.spec.waves = serde_json::from_value(json!([
        {"name": "canary", "clusterSelector": {"matchLabels": {"role": "canary"}}, "maxFailures": 1}
    ]))
    .unwrap();
    reconcile(Arc::new(spec), ctx).await.unwrap();
    (hub, members)
}

fn approved_members<'a>(members: &'a [(&'a str, FakeApi)]) -> Vec<&'a str> {
    members
        .iter()
        .filter(|(_, m)| applied_annotations(m).iter().any(|a| a.get(APPROVED_REVISION_ANNOTATION).is_some()))
        .map(|(name, _)| *name)
        .collect()
}

#[tokio::test]
async fn a_member_that_says_it_is_elsewhere_is_never_approved_and_counts_as_failed() {
    let (hub, members) = identity_fleet("uid-prod-us", "us-east").await;
    assert_eq!(approved_members(&members), ["canary-1", "prod-eu"], "the others go on");
    let status = last_status(&hub);
    let member = status["members"].as_array().unwrap().iter().find(|m| m["cluster"] == "prod-us").unwrap().clone();
    assert_eq!(member["state"], "IdentityMismatch");
    let message = member["message"].as_str().unwrap();
    assert!(message.contains("region: the member says \"us-east\", the Cluster says \"eu-west\""), "{message}");
    assert!(member["approvedAt"].is_null());
    assert_eq!(status["waves"][0]["failed"], 1, "counted against maxFailures");
    assert_eq!(status["summary"]["failed"], 1);
}

#[tokio::test]
async fn two_clusters_reaching_one_member_block_the_rollout() {
    // prod-us's kubeconfig reaches the cluster pinned for prod-eu.
    let (hub, members) = identity_fleet("uid-prod-eu", "eu-west").await;
    assert!(approved_members(&members).is_empty(), "nothing is approved while two Clusters are one");
    let status = last_status(&hub);
    let valid = condition(&status, "Valid");
    assert_eq!((valid["status"].as_str(), valid["reason"].as_str()), (Some("False"), Some("ClustersShareIdentity")));
    let message = valid["message"].as_str().unwrap();
    assert!(message.contains("prod-eu and prod-us (kube-system UID uid-prod-eu)"), "{message}");
    assert!(events(&hub).contains(&"ClustersShareIdentity".to_string()), "{:?}", events(&hub));
}

/// Issue 16: an approval written to a member by a reconcile whose status write was
/// refused (409) is announced by the retry, which records it in the status (its
/// `MemberApproved` Event is keyed by that status, not by the write this reconcile made);
/// a reconcile after it announces nothing again.
#[tokio::test]
async fn an_approval_written_before_a_refused_status_is_announced_once_by_the_retry() {
    let hub = FakeApi::new();
    hub.insert("/apis/petrel.dev/v1alpha1/clusters", cluster_list(vec![cluster("canary-1", "canary")]));
    hub.insert("/api/v1/namespaces/petrel-system/secrets/canary-1", secret("canary-1"));
    hub.insert(STATUS_PATH, json!({"metadata": {"name": "podinfo", "namespace": "fleet", "resourceVersion": "8"}}));
    let member = FakeApi::new();
    member.insert(CANARY_PATH, member_canary("Waiting", NEW, "rev-new", "rev-old"));
    let ctx = Arc::new(HubContext::new(hub.client(), None));
    connect(&ctx, "canary-1", "kubeconfig", member.client());
    let read_at = |version: &str, status: Option<Value>| {
        let mut rollout = rollout();
        rollout.metadata.resource_version = Some(version.into());
        rollout.status = status.map(|s| serde_json::from_value(s).unwrap());
        Arc::new(rollout)
    };

    // Refused: the approval reached the member, the status (and its Events) did not.
    reconcile(read_at("7", None), ctx.clone()).await.unwrap();
    assert_eq!(applied_annotations(&member).len(), 1);
    assert_eq!(events(&hub), Vec::<String>::new());

    // The retry finds the approval on the member: nothing to write there, but the status
    // records the approval, and its Event goes out with it.
    let mut canary = member_canary("Waiting", NEW, "rev-new", "rev-old");
    canary["metadata"]["annotations"] =
        json!({FLEET_ROLLOUT_ANNOTATION: "fleet/podinfo", APPROVED_REVISION_ANNOTATION: "rev-new"});
    member.insert(CANARY_PATH, canary);
    reconcile(read_at("8", None), ctx.clone()).await.unwrap();
    assert_eq!(applied_annotations(&member).len(), 1, "the approval is in place");
    assert_eq!(events(&hub), ["ReleaseStarted", "WaveOpened", "MemberApproved"]);
    let written = last_status(&hub);
    assert!(written["members"][0]["approvedAt"].is_string(), "the approval is recorded: {written}");

    // Once recorded, nothing is announced again.
    reconcile(read_at("8", Some(written)), ctx).await.unwrap();
    assert_eq!(events(&hub), ["ReleaseStarted", "WaveOpened", "MemberApproved"], "announced once");
}

/// Issue 16: an approval withdrawn from a member (a breached budget with RollbackAll)
/// by a reconcile whose status write was refused (409) is announced by the retry, which
/// finds it gone from the member and records it (`approvalWithdrawnAt`: the
/// `ApprovalWithdrawn` Event is keyed by that status, not by the write this reconcile
/// made); a reconcile after it announces nothing again.
#[tokio::test]
async fn an_approval_withdrawn_before_a_refused_status_is_announced_once_by_the_retry() {
    let hub = FakeApi::new();
    hub.insert(
        "/apis/petrel.dev/v1alpha1/clusters",
        cluster_list(vec![cluster("eu-1", "prod"), cluster("eu-2", "prod")]),
    );
    hub.insert("/api/v1/namespaces/petrel-system/secrets/eu-1", secret("eu-1"));
    hub.insert("/api/v1/namespaces/petrel-system/secrets/eu-2", secret("eu-2"));
    hub.insert(STATUS_PATH, json!({"metadata": {"name": "podinfo", "namespace": "fleet", "resourceVersion": "8"}}));
    let approved = json!({FLEET_ROLLOUT_ANNOTATION: "fleet/podinfo", APPROVED_REVISION_ANNOTATION: "rev-new"});
    let canary = |phase: &str, annotations: &Value| {
        let mut canary = member_canary(phase, NEW, "rev-new", "rev-old");
        canary["metadata"]["annotations"] = annotations.clone();
        canary
    };
    let (progressing, failed) = (FakeApi::new(), FakeApi::new());
    progressing.insert(CANARY_PATH, canary("Progressing", &approved));
    failed.insert(CANARY_PATH, canary("Failed", &approved));
    let ctx = Arc::new(HubContext::new(hub.client(), None));
    connect(&ctx, "eu-1", "kubeconfig", progressing.client());
    connect(&ctx, "eu-2", "kubeconfig", failed.client());
    // The release is in flight: both members were approved a minute ago, and both progressed.
    let minute_ago = (chrono::Utc::now() - chrono::TimeDelta::minutes(1)).to_rfc3339();
    let members: Vec<Value> = ["eu-1", "eu-2"]
        .map(|name| {
            json!({
                "cluster": name, "wave": "prod", "state": "Progressing", "phase": "Progressing", "release": NEW,
                "revision": "rev-new", "approvedAt": minute_ago
            })
        })
        .to_vec();
    let in_flight = json!({
        "release": NEW, "phase": "Progressing", "currentWave": "prod",
        "waves": [{"name": "prod", "phase": "Progressing", "openedAt": minute_ago, "members": 2}],
        "members": members
    });
    let read_at = |version: &str, status: &Value| {
        let mut rollout = rollout();
        rollout.spec.waves = vec![serde_json::from_value(json!({"name": "prod"})).unwrap()];
        rollout.spec.on_failure = crate::api::rollout::FailurePolicy::RollbackAll;
        rollout.metadata.resource_version = Some(version.into());
        rollout.status = Some(serde_json::from_value(status.clone()).unwrap());
        Arc::new(rollout)
    };
    let withdrawals = |hub: &FakeApi| events(hub).iter().filter(|e| *e == "ApprovalWithdrawn").count();

    // Refused: the withdrawal reached eu-1, the status (and its Events) did not.
    reconcile(read_at("7", &in_flight), ctx.clone()).await.unwrap();
    let applied = applied_annotations(&progressing);
    assert_eq!(applied, [json!({FLEET_ROLLOUT_ANNOTATION: "fleet/podinfo"})], "eu-1's approval is withdrawn");
    assert_eq!(applied_annotations(&failed), Vec::<Value>::new(), "eu-2 failed on its own: nothing to withdraw");
    assert_eq!(events(&hub), Vec::<String>::new());

    // The retry finds the approval gone from eu-1 (whose Canary went back to its gate):
    // nothing to write there, but the status records the withdrawal, and its Event goes
    // out with it.
    progressing.insert(CANARY_PATH, canary("Waiting", &json!({FLEET_ROLLOUT_ANNOTATION: "fleet/podinfo"})));
    reconcile(read_at("8", &in_flight), ctx.clone()).await.unwrap();
    assert_eq!(applied_annotations(&progressing).len(), 1, "nothing left to withdraw");
    assert_eq!(withdrawals(&hub), 1, "{:?}", events(&hub));
    let written = last_status(&hub);
    assert!(written["members"][0]["approvalWithdrawnAt"].is_string(), "the withdrawal is recorded: {written}");
    assert!(written["members"][1].get("approvalWithdrawnAt").is_none(), "{written}");

    // Once recorded, nothing is announced again.
    let announced = events(&hub);
    reconcile(read_at("8", &written), ctx).await.unwrap();
    assert_eq!(events(&hub), announced, "announced once");
    assert_eq!(last_status(&hub)["members"][0]["approvalWithdrawnAt"], written["members"][0]["approvalWithdrawnAt"]);
}
