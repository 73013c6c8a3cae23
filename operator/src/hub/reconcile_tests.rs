//! One reconcile against fake API servers (the hub and two members).

use std::sync::Arc;

use serde_json::{Value, json};

use super::controller::{HubContext, reconcile};
use crate::api::Rollout;
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
        "spec": {"kubeconfigSecretRef": {"name": name, "namespace": "petrel-system"}}
    })
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
    ctx.members.insert_for_test("canary-1", "kubeconfig", canary_member.client());
    ctx.members.insert_for_test("prod-1", "kubeconfig", prod_member.client());
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

    assert_eq!(events(&hub), ["WaveOpened", "MemberApproved"]);
}

#[tokio::test]
async fn a_second_reconcile_reapplies_nothing_and_reports_progress() {
    let hub = FakeApi::new();
    hub.insert(
        "/apis/petrel.dev/v1alpha1/clusters",
        json!({"apiVersion": "petrel.dev/v1alpha1", "kind": "ClusterList", "metadata": {}, "items": [
            cluster("canary-1", "canary")
        ]}),
    );
    hub.insert("/api/v1/namespaces/petrel-system/secrets/canary-1", secret("canary-1"));
    let member = FakeApi::new();
    member.insert(CANARY_PATH, member_canary("Waiting", NEW, "rev-new", "rev-old"));
    let ctx = Arc::new(HubContext::new(hub.client(), None));
    ctx.members.insert_for_test("canary-1", "kubeconfig", member.client());
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
    failed.insert(CANARY_PATH, member_canary("Failed", NEW, "rev-new", "rev-old"));
    let ctx = Arc::new(HubContext::new(hub.client(), None));
    ctx.members.insert_for_test("eu-1", "kubeconfig", promoted.client());
    ctx.members.insert_for_test("eu-2", "kubeconfig", failed.client());
    let mut spec = rollout();
    spec.spec.waves = vec![serde_json::from_value(json!({"name": "prod"})).unwrap()];
    spec.spec.on_failure = crate::api::rollout::FailurePolicy::RollbackAll;
    // The release was in flight: both members were approved.
    spec.status = Some(serde_json::from_value(json!({"release": NEW, "phase": "Progressing"})).unwrap());

    reconcile(Arc::new(spec.clone()), ctx.clone()).await.unwrap();

    let rolled_back = promoted.get(PRIMARY).unwrap();
    assert_eq!(rolled_back["spec"]["template"]["spec"]["containers"][0]["image"], OLD);
    assert_eq!(events(&hub), ["WaveOpened", "WaveFailed", "MemberRolledBack"]);
    let written = hub.requests().into_iter().rfind(|r| r.path == STATUS_PATH).unwrap().body.unwrap();
    assert_eq!(written["status"]["phase"], "Failed");

    // Next reconcile: the primary runs the old release already; nothing is rolled back again.
    let primary_writes = |api: &FakeApi| api.writes().iter().filter(|w| w.ends_with("podinfo-primary")).count();
    let before = primary_writes(&promoted);
    spec.status = Some(serde_json::from_value(written["status"].clone()).unwrap());
    reconcile(Arc::new(spec), ctx).await.unwrap();
    assert_eq!(primary_writes(&promoted), before);
    assert_eq!(events(&hub), ["WaveOpened", "WaveFailed", "MemberRolledBack"]);
}
