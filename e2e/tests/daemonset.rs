//! DaemonSet targets (issue 13), as Flagger runs them: the canary DaemonSet runs beside
//! a `-primary` DaemonSet during a blue/green analysis (iterations, never weights), and
//! between releases it is scaled down by the node selector `flagger.app/scale-to-zero`
//! (no node has that label). A real control plane runs the DaemonSet controller; its two
//! kwok nodes (no taints) run one pod of each DaemonSet and make it ready.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use kube::api::{Api, Patch, PatchParams};
use petrel::api::canary::Phase;
use petrel_e2e::scenario::{APP, IMAGE_V0, IMAGE_V1, IMAGE_V2, NAMESPACE, TestEnv, eventually};
use petrel_e2e::simulator::Provider;
use serde_json::{Value, json};

const SETUP: Duration = Duration::from_secs(60);
const RELEASE: Duration = Duration::from_secs(120);
const TARGET: &str = "podinfo-ds";
const PRIMARY: &str = "podinfo-ds-primary";
const SCALE_DOWN: &str = "flagger.app/scale-to-zero";

/// The DaemonSet as Git would apply it (Flagger's test workload, trimmed).
fn daemon_set(image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": TARGET, "namespace": NAMESPACE, "labels": {"app.kubernetes.io/name": TARGET}},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": TARGET}},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": TARGET}},
                "spec": {"containers": [{
                    "name": "podinfod",
                    "image": image,
                    "ports": [{"name": "http", "containerPort": 9898}],
                }]}
            }
        }
    })
}

/// The Canary (named like every scenario's, so the harness records its statuses).
fn canary(webhooks: Value) -> Value {
    json!({
        "apiVersion": "petrel.dev/v1alpha1",
        "kind": "Canary",
        "metadata": {"name": APP, "namespace": NAMESPACE},
        "spec": {
            "provider": "kubernetes",
            "targetRef": {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": TARGET},
            "progressDeadlineSeconds": 60,
            "service": {"port": 80, "targetPort": 9898, "name": TARGET},
            "analysis": {"interval": "3s", "threshold": 2, "iterations": 3, "webhooks": webhooks},
        }
    })
}

fn ssa() -> PatchParams {
    PatchParams::apply("e2e-test").force()
}

fn image(d: &DaemonSet) -> Option<String> {
    d.spec.as_ref()?.template.spec.as_ref()?.containers.first()?.image.clone()
}

fn scaled_down(d: &DaemonSet) -> bool {
    let selector = d.spec.as_ref().and_then(|s| s.template.spec.as_ref()).and_then(|p| p.node_selector.as_ref());
    selector.is_some_and(|s| s.get(SCALE_DOWN).map(String::as_str) == Some("true"))
}

/// Pods scheduled and ready, once the controller has seen the latest spec.
fn ready_pods(d: &DaemonSet) -> Option<i32> {
    let status = d.status.as_ref()?;
    (status.observed_generation >= d.metadata.generation
        && status.updated_number_scheduled.unwrap_or(0) >= status.desired_number_scheduled)
        .then_some(status.number_ready)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_set_is_initialized_promoted_and_rolled_back() {
    let t0 = Instant::now();
    let env = TestEnv::start("daemonset", Provider::Kubernetes).await.unwrap();
    let daemon_sets: Api<DaemonSet> = Api::namespaced(env.client.clone(), NAMESPACE);
    daemon_sets.patch(TARGET, &ssa(), &Patch::Apply(daemon_set(IMAGE_V0))).await.unwrap();
    env.apply_canary_manifest(canary(json!([]))).await.unwrap();

    // Initialisation: the primary DaemonSet runs a pod on each node, the target none.
    env.wait_phase(Phase::Initialized, SETUP).await.unwrap();
    let primary = eventually("the primary's pods on both nodes", SETUP, async || {
        daemon_sets.get(PRIMARY).await.ok().filter(|d| ready_pods(d) == Some(2))
    })
    .await
    .unwrap();
    assert_eq!(image(&primary).as_deref(), Some(IMAGE_V0));
    let labels = primary.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels.clone().unwrap();
    assert_eq!(labels.get("app.kubernetes.io/name").map(String::as_str), Some(PRIMARY));
    assert!(!scaled_down(&primary), "the primary never carries the scale-down selector");
    let target = eventually("the target scaled down", SETUP, async || {
        daemon_sets.get(TARGET).await.ok().filter(|d| scaled_down(d) && ready_pods(d) == Some(0))
    })
    .await
    .unwrap();
    assert_eq!(target.status.as_ref().unwrap().desired_number_scheduled, 0, "no node runs the target");
    let apex = env.services().get(TARGET).await.unwrap();
    let selector = apex.spec.and_then(|s| s.selector).unwrap_or_default();
    assert_eq!(selector.get("app.kubernetes.io/name").map(String::as_str), Some(PRIMARY));
    eprintln!("[daemonset] initialized after {:.1?}", t0.elapsed());

    // A new revision (applied as Git would: without petrel's node selector, which petrel
    // owns and keeps) is analysed with both DaemonSets running, then promoted.
    daemon_sets.patch(TARGET, &ssa(), &Patch::Apply(daemon_set(IMAGE_V1))).await.unwrap();
    eventually("both DaemonSets running side by side", RELEASE, async || {
        let target = daemon_sets.get(TARGET).await.ok()?;
        let primary = daemon_sets.get(PRIMARY).await.ok()?;
        (!scaled_down(&target) && ready_pods(&target) == Some(2) && ready_pods(&primary) == Some(2)).then_some(())
    })
    .await
    .unwrap();
    let promoted = env.wait_phase(Phase::Succeeded, RELEASE).await.unwrap();
    assert_eq!(promoted.last_promoted_spec, promoted.last_applied_spec);
    let primary = eventually("the primary rolled to 6.0.1", SETUP, async || {
        daemon_sets
            .get(PRIMARY)
            .await
            .ok()
            .filter(|d| image(d).as_deref() == Some(IMAGE_V1) && ready_pods(d) == Some(2))
    })
    .await
    .unwrap();
    assert!(!scaled_down(&primary));
    eventually("the target scaled down after promotion", SETUP, async || {
        daemon_sets.get(TARGET).await.ok().filter(|d| scaled_down(d) && ready_pods(d) == Some(0))
    })
    .await
    .unwrap();
    assert_eq!(image(&daemon_sets.get(TARGET).await.unwrap()).as_deref(), Some(IMAGE_V1), "Git's template is kept");
    eprintln!("[daemonset] promoted after {:.1?}", t0.elapsed());

    // A failing revision: its rollout check fails every tick, so it is rolled back and the
    // primary keeps 6.0.1.
    let failing = json!([{"name": "always-fails", "type": "rollout", "url": "http://127.0.0.1:1/", "timeout": "1s"}]);
    env.apply_canary_manifest(canary(failing)).await.unwrap();
    daemon_sets.patch(TARGET, &ssa(), &Patch::Apply(daemon_set(IMAGE_V2))).await.unwrap();
    let failed = env.wait_phase(Phase::Failed, RELEASE).await.unwrap();
    assert_eq!(failed.last_promoted_spec, promoted.last_promoted_spec, "nothing new was promoted");
    assert_eq!(image(&daemon_sets.get(PRIMARY).await.unwrap()).as_deref(), Some(IMAGE_V1));
    eventually("the failed target scaled down", SETUP, async || {
        daemon_sets.get(TARGET).await.ok().filter(|d| scaled_down(d) && ready_pods(d) == Some(0))
    })
    .await
    .unwrap();
    let apex = env.services().get(TARGET).await.unwrap();
    let selector = apex.spec.and_then(|s| s.selector).unwrap_or_default();
    assert_eq!(selector.get("app.kubernetes.io/name").map(String::as_str), Some(PRIMARY), "traffic on the primary");
    eprintln!("[daemonset] passed in {:.1?}", t0.elapsed());
}

/// Bad input: a DaemonSet without a selector label petrel can tell primary from canary
/// pods by, and one with the OnDelete strategy: Stalled, an Event, nothing created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreleasable_daemon_set_stalls_and_nothing_is_touched() {
    let env = TestEnv::start("daemonset-bad", Provider::Kubernetes).await.unwrap();
    let daemon_sets: Api<DaemonSet> = Api::namespaced(env.client.clone(), NAMESPACE);
    let mut unlabelled = daemon_set(IMAGE_V0);
    unlabelled["spec"]["selector"]["matchLabels"] = json!({"tier": "agent"});
    unlabelled["spec"]["template"]["metadata"]["labels"] = json!({"tier": "agent"});
    daemon_sets.patch(TARGET, &ssa(), &Patch::Apply(unlabelled)).await.unwrap();
    env.apply_canary_manifest(canary(json!([]))).await.unwrap();
    env.wait_status("Stalled on the selector", SETUP, |s| {
        s.conditions.iter().any(|c| c.type_ == "Stalled" && c.is_true() && c.reason == "TargetInvalid")
    })
    .await
    .unwrap();
    env.wait_event("TargetInvalid", SETUP, |m| m.contains("DaemonSet podinfo-ds") && m.contains("matchLabels"))
        .await
        .unwrap();
    assert!(daemon_sets.get_opt(PRIMARY).await.unwrap().is_none(), "no primary created");
    assert!(!scaled_down(&daemon_sets.get(TARGET).await.unwrap()), "the target is untouched");
    assert!(env.services().get_opt(TARGET).await.unwrap().is_none(), "no Service created");
}

/// `revertOnDeletion: true` after a promotion: deleting the Canary scales the target
/// DaemonSet back up (its scale-down node selector removed), waits for its pods and
/// points the apex Service at them: traffic never ends on a scaled-down DaemonSet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_daemon_set_canary_hands_traffic_back_to_a_running_target() {
    let t0 = Instant::now();
    let env = TestEnv::start("daemonset-revert", Provider::Kubernetes).await.unwrap();
    let daemon_sets: Api<DaemonSet> = Api::namespaced(env.client.clone(), NAMESPACE);
    daemon_sets.patch(TARGET, &ssa(), &Patch::Apply(daemon_set(IMAGE_V0))).await.unwrap();
    let mut manifest = canary(json!([]));
    manifest["spec"]["revertOnDeletion"] = json!(true);
    env.apply_canary_manifest(manifest).await.unwrap();
    env.wait_phase(Phase::Initialized, SETUP).await.unwrap();
    daemon_sets.patch(TARGET, &ssa(), &Patch::Apply(daemon_set(IMAGE_V1))).await.unwrap();
    env.wait_phase(Phase::Succeeded, RELEASE).await.unwrap();
    eventually("the target scaled down after promotion", SETUP, async || {
        daemon_sets.get(TARGET).await.ok().filter(|d| scaled_down(d) && ready_pods(d) == Some(0))
    })
    .await
    .unwrap();

    env.delete_canary().await.unwrap();
    env.wait_canary_gone(SETUP).await.unwrap();
    let target = daemon_sets.get(TARGET).await.unwrap();
    assert!(!scaled_down(&target), "the target runs pods again: {:?}", target.spec);
    assert_eq!(ready_pods(&target), Some(2), "its pods were ready before traffic went to them");
    let apex = env.services().get(TARGET).await.unwrap();
    let selector = apex.spec.as_ref().and_then(|s| s.selector.clone()).unwrap_or_default();
    assert_eq!(selector.get("app.kubernetes.io/name").map(String::as_str), Some(TARGET), "apex on the target");
    env.wait_event("Reverted", SETUP, |m| m.contains("handed back to DaemonSet podinfo-ds")).await.unwrap();
    eprintln!("[daemonset-revert] passed in {:.1?}", t0.elapsed());
}
