//! Issue 11, defects 4, 5 and 10, and `revertOnDeletion` (issue 13): whatever is deleted
//! or edited mid-release (the primary, the Canary, the provider), traffic ends on ready
//! pods of a version that passed analysis, never on nothing and never on the unanalysed
//! one (DESIGN rule 10). Each test runs a real control plane (with its garbage
//! collector), the real `petrel` binary, Prometheus and the traffic simulator, which
//! reads the route objects and Services as they are and tells which version answered.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::Resource;
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use petrel::api::canary::Phase;
use petrel_e2e::scenario::{APP, CanaryOptions, IMAGE_V0, IMAGE_V1, NAMESPACE, TestEnv, eventually};
use petrel_e2e::simulator::{Provider, VersionBehaviour, routes};
use serde_json::json;

const SETUP: Duration = Duration::from_secs(60);
const RELEASE: Duration = Duration::from_secs(120);

fn primary() -> String {
    format!("{APP}-primary")
}

fn has_owner(deployment: &Deployment) -> bool {
    !deployment.meta().owner_references.clone().unwrap_or_default().is_empty()
}

/// An environment whose Canary (`revertOnDeletion` as given) is initialized on 6.0.0 and
/// has just been given 6.0.1 to release.
async fn releasing_v1(name: &str, revert_on_deletion: bool) -> TestEnv {
    let env = TestEnv::start(name, Provider::GatewayApi).await.unwrap();
    let mut manifest = CanaryOptions::canary(Provider::GatewayApi).manifest();
    manifest["spec"]["revertOnDeletion"] = json!(revert_on_deletion);
    env.apply_canary_manifest(manifest).await.unwrap();
    env.wait_phase(Phase::Initialized, SETUP).await.unwrap();
    env.set_image(IMAGE_V1).await.unwrap();
    env
}

/// Defect 4: `kubectl delete deploy podinfo-primary` during a failing analysis. The
/// primary comes back with the last promoted template (from petrel's ControllerRevision),
/// never the canary's, and the rollback ends with all traffic on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_primary_mid_release_rebuilds_the_promoted_version() {
    let t0 = Instant::now();
    let env = TestEnv::start("primary-deleted", Provider::GatewayApi).await.unwrap();
    env.simulator.set_version("podinfo:6.0.1", VersionBehaviour::new(0.2, 20.0)).unwrap();
    let options = CanaryOptions { threshold: 5, ..CanaryOptions::canary(Provider::GatewayApi) };
    env.apply_canary(&options).await.unwrap();
    env.wait_phase(Phase::Initialized, SETUP).await.unwrap();
    env.wait_traffic_only_on(IMAGE_V0, SETUP).await.unwrap();

    env.set_image(IMAGE_V1).await.unwrap();
    env.wait_status("a failing analysis", RELEASE, |s| s.phase == Phase::Progressing && s.failed_checks >= 1)
        .await
        .unwrap();
    let before = env.deployments().get(&primary()).await.unwrap();
    env.delete_deployment(&primary()).await.unwrap();
    let rebuilt = eventually("the primary to be rebuilt", SETUP, async || {
        env.deployments().get_opt(&primary()).await.ok().flatten().filter(|d| d.meta().uid != before.meta().uid)
    })
    .await
    .unwrap();
    let image = petrel_e2e::scenario::first_container(&rebuilt).and_then(|c| c.image.clone());
    assert_eq!(image.as_deref(), Some(IMAGE_V0), "rebuilt from the promoted template, never from the canary");

    env.wait_phase(Phase::Failed, RELEASE).await.unwrap();
    assert_eq!(env.image_of(&primary()).await.unwrap(), IMAGE_V0, "the primary still runs the promoted version");
    env.wait_traffic_only_on(IMAGE_V0, SETUP).await.unwrap();
    env.assert_weights_sum_to_100();
    env.wait_event("PrimaryRestored", SETUP, |m| m.contains(&primary())).await.unwrap();
    eprintln!("[primary-deleted] passed in {:.1?}", t0.elapsed());
}

/// Defect 5, `revertOnDeletion` off (the default): the Canary is deleted at 20% canary
/// traffic. petrel routes everything back to the primary, scales the target down and
/// lets go of the primary, its Services and routes, which keep serving the promoted
/// version after the garbage collector has run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_canary_mid_release_keeps_the_promoted_primary_serving() {
    let t0 = Instant::now();
    let env = releasing_v1("canary-deleted", false).await;
    env.wait_weights("canary traffic", RELEASE, |h| h.iter().any(|r| r.canary() >= 20)).await.unwrap();

    env.delete_canary().await.unwrap();
    env.wait_canary_gone(SETUP).await.unwrap();
    // Give the garbage collector time to remove whatever still names the Canary as owner.
    tokio::time::sleep(Duration::from_secs(5)).await;
    env.wait_traffic_only_on(IMAGE_V0, SETUP).await.unwrap();

    let kept = env.deployments().get(&primary()).await.unwrap();
    assert!(!has_owner(&kept), "the primary no longer belongs to the deleted Canary: {:?}", kept.meta());
    assert_eq!(env.image_of(APP).await.unwrap(), IMAGE_V1, "the target keeps Git's template");
    assert_eq!(env.replicas_of(APP).await.unwrap(), 0, "the unanalysed target is scaled down");
    let last = env.recorder.history().last().cloned().unwrap();
    assert_eq!((last.primary(), last.canary()), (100, 0), "the route stays, all on the primary: {last:?}");
    env.assert_weights_sum_to_100();
    env.wait_event("Released", SETUP, |m| m.contains(&format!("{APP}-primary"))).await.unwrap();

    // Applying the Canary again adopts what was left, and the target's 6.0.1, which never
    // passed analysis, is released as a new revision rather than taken as promoted.
    env.apply_canary(&CanaryOptions::canary(Provider::GatewayApi)).await.unwrap();
    let uid = env.canaries().get(APP).await.unwrap().meta().uid.clone();
    let released = env.wait_phase(Phase::Succeeded, RELEASE).await.unwrap();
    assert_eq!(released.last_promoted_spec, released.last_applied_spec);
    let adopted = env.deployments().get(&primary()).await.unwrap();
    let owners = adopted.meta().owner_references.clone().unwrap_or_default();
    assert_eq!(owners.first().map(|o| Some(o.uid.clone())), Some(uid), "adopted by the new Canary");
    assert_eq!(env.image_of(&primary()).await.unwrap(), IMAGE_V1, "6.0.1 promoted after its analysis");
    env.wait_traffic_only_on(IMAGE_V1, SETUP).await.unwrap();
    env.assert_weights_sum_to_100();
    eprintln!("[canary-deleted] passed in {:.1?}", t0.elapsed());
}

/// A canary scaled to zero in the middle of its analysis (by a person, or petrel's own
/// scale-up, which follows the status write that starts the run, did not land): petrel
/// scales it up again to the primary's replicas, judges nothing while it has no pods, and
/// the release goes on to its promotion. Before, a Deployment at zero replicas counted as
/// ready, so the analysis went on judging a canary with no pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_scaled_to_zero_mid_release_is_scaled_up_again() {
    let t0 = Instant::now();
    let env = TestEnv::start("canary-scaled-down", Provider::GatewayApi).await.unwrap();
    env.apply_canary(&CanaryOptions::canary(Provider::GatewayApi)).await.unwrap();
    env.wait_phase(Phase::Initialized, SETUP).await.unwrap();
    let replicas = env.replicas_of(&primary()).await.unwrap();
    env.set_image(IMAGE_V1).await.unwrap();
    env.wait_weights("canary traffic", RELEASE, |h| h.iter().any(|r| r.canary() >= 20)).await.unwrap();
    assert_eq!(env.replicas_of(APP).await.unwrap(), replicas, "the run scaled the canary up");

    env.scale(APP, 0).await.unwrap();
    eventually("the canary to be scaled up again", SETUP, async || {
        env.replicas_of(APP).await.ok().filter(|r| *r == replicas)
    })
    .await
    .unwrap();
    env.wait_event("CanaryScaledUpAgain", SETUP, |m| m.contains("runs no pods")).await.unwrap();

    let done = env.wait_phase(Phase::Succeeded, RELEASE).await.unwrap();
    assert_eq!(done.last_promoted_spec, done.last_applied_spec);
    assert_eq!(env.image_of(&primary()).await.unwrap(), IMAGE_V1);
    env.wait_traffic_only_on(IMAGE_V1, SETUP).await.unwrap();
    env.assert_weights_sum_to_100();
    eprintln!("[canary-scaled-down] passed in {:.1?}", t0.elapsed());
}

/// `revertOnDeletion: true` after a promotion: as Flagger documents it, the target is
/// scaled back up to the primary's replicas, the routes and the apex Service point at
/// it, and what petrel generated goes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revert_on_deletion_hands_the_app_back_to_the_target() {
    let t0 = Instant::now();
    let env = releasing_v1("revert", true).await;
    env.wait_phase(Phase::Succeeded, RELEASE).await.unwrap();
    env.wait_traffic_only_on(IMAGE_V1, SETUP).await.unwrap();
    let primary_replicas = env.replicas_of(&primary()).await.unwrap();

    env.delete_canary().await.unwrap();
    env.wait_canary_gone(SETUP).await.unwrap();
    assert_eq!(env.replicas_of(APP).await.unwrap(), primary_replicas, "the target is scaled to the primary's count");
    let apex = env.services().get(APP).await.unwrap();
    let selector = apex.spec.as_ref().and_then(|s| s.selector.clone()).unwrap_or_default();
    assert_eq!(selector.get("app").map(String::as_str), Some(APP), "the apex Service selects the target: {apex:?}");
    assert!(apex.meta().owner_references.clone().unwrap_or_default().is_empty(), "the apex Service stays");
    let history = env.recorder.history();
    assert!(history.iter().any(|r| r.canary() == 100), "the route pointed at the target before it went: {history:?}");
    eventually("the generated primary to be garbage-collected", SETUP, async || {
        matches!(env.deployments().get_opt(&primary()).await, Ok(None)).then_some(())
    })
    .await
    .unwrap();
    env.wait_traffic_only_on(IMAGE_V1, SETUP).await.unwrap();
    env.assert_weights_sum_to_100();
    eprintln!("[revert] passed in {:.1?}", t0.elapsed());
}

/// `revertOnDeletion: true` mid-release: the target runs a version that never passed its
/// analysis, so petrel does not hand traffic to it; the primary keeps serving as with the
/// flag off, and an Event says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revert_on_deletion_never_hands_traffic_to_an_unanalysed_target() {
    let t0 = Instant::now();
    let env = releasing_v1("revert-mid-release", true).await;
    env.wait_weights("canary traffic", RELEASE, |h| h.iter().any(|r| r.canary() >= 20)).await.unwrap();

    env.delete_canary().await.unwrap();
    env.wait_canary_gone(SETUP).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    env.wait_traffic_only_on(IMAGE_V0, SETUP).await.unwrap();
    assert_eq!(env.replicas_of(APP).await.unwrap(), 0, "the unanalysed target is scaled down");
    env.wait_event("RevertSkipped", SETUP, |m| m.contains("never passed")).await.unwrap();
    env.assert_weights_sum_to_100();
    eprintln!("[revert-mid-release] passed in {:.1?}", t0.elapsed());
}

/// The finalizer never holds a deletion forever: a Canary with nothing to hand over (its
/// target never existed) goes at once, and deleting the namespace removes a healthy one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_canary_is_never_blocked() {
    let t0 = Instant::now();
    let env = TestEnv::start("unblocked", Provider::GatewayApi).await.unwrap();
    let stalled = CanaryOptions { target: "missing".into(), ..CanaryOptions::canary(Provider::GatewayApi) };
    env.apply_canary(&stalled).await.unwrap();
    env.wait_status("Stalled on the missing target", SETUP, |s| {
        s.conditions.iter().any(|c| c.type_ == "Stalled" && c.is_true() && c.reason == "TargetNotFound")
    })
    .await
    .unwrap();
    env.delete_canary().await.unwrap();
    env.wait_canary_gone(Duration::from_secs(20)).await.unwrap();

    env.apply_canary(&CanaryOptions::canary(Provider::GatewayApi)).await.unwrap();
    env.wait_phase(Phase::Initialized, SETUP).await.unwrap();
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(env.client.clone());
    namespaces.delete(NAMESPACE, &DeleteParams::background()).await.unwrap();
    let deleting = Instant::now();
    eventually("the namespace to be gone", Duration::from_secs(120), async || {
        matches!(namespaces.get_opt(NAMESPACE).await, Ok(None)).then_some(())
    })
    .await
    .unwrap();
    eprintln!("[unblocked] namespace gone {:.1?} after the delete call", deleting.elapsed());
    // The namespace can be created again (nothing of the old one lingers).
    namespaces
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": NAMESPACE}})).unwrap())
        .await
        .unwrap();
    eprintln!("[unblocked] passed in {:.1?}", t0.elapsed());
}

/// Defect 10: the provider changes from gatewayapi to istio at 20% canary traffic. The
/// HTTPRoute is cleaned up before the VirtualService is written, so when the run ends
/// (canary scaled to zero) no request goes through a stale 80/20 route to no pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_the_provider_mid_release_cleans_up_the_old_route() {
    let t0 = Instant::now();
    let env = releasing_v1("provider-switch", false).await;
    env.wait_weights("canary traffic", RELEASE, |h| h.iter().any(|r| r.canary() >= 20)).await.unwrap();

    env.apply_canary(&CanaryOptions::canary(Provider::Istio)).await.unwrap();
    env.wait_weights("the HTTPRoute back on the primary or removed", SETUP, |h| {
        h.last().is_some_and(|r| r.split.is_none() || r.canary() == 0)
    })
    .await
    .unwrap();
    let resource = petrel::routers::istio::virtual_service_resource();
    let virtual_services: Api<DynamicObject> = Api::namespaced_with(env.client.clone(), NAMESPACE, &resource);
    eventually("the VirtualService", SETUP, async || virtual_services.get_opt(APP).await.ok().flatten()).await.unwrap();

    // The simulator sees gateway traffic (the HTTPRoute's); istio's metrics have no data,
    // so the run fails, and its canary is scaled to zero.
    let ended = env
        .wait_status("the run to end", RELEASE, |s| matches!(s.phase, Phase::Failed | Phase::Succeeded))
        .await
        .unwrap();
    let served = if ended.phase == Phase::Failed { IMAGE_V0 } else { IMAGE_V1 };
    env.wait_traffic_only_on(served, SETUP).await.unwrap();
    let last = env.recorder.history().last().cloned().unwrap();
    assert!(last.split.is_none() || last.canary() == 0, "no stale canary weight on the HTTPRoute: {last:?}");
    let vs = virtual_services.get(APP).await.unwrap();
    let split = routes::parse_route(Provider::Istio, &serde_json::to_value(&vs).unwrap(), APP).unwrap();
    assert_eq!(split.default.canary, 0, "the new provider's route ends on the primary: {split:?}");
    env.assert_weights_sum_to_100();
    eprintln!("[provider-switch] passed in {:.1?}", t0.elapsed());
}
