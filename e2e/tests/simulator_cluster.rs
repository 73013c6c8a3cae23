//! The simulator and the route recorder against a real control plane: they
//! read route objects, Deployments and Pods as a scenario will (written
//! here by the test, standing in for petrel's routers).

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use petrel_e2e::fleet::{Fleet, FleetOptions};
use petrel_e2e::simulator::{
    App, AppCoords, Provider, RouteRecorder, Side, Simulator, SimulatorConfig, Split, TrafficProfile, VersionBehaviour,
};
use petrel_e2e::wait::eventually;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

fn deployment(name: &str, image: &str) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "podinfo", "image": image}]}
            }
        }
    }))
    .unwrap()
}

/// A minimal HTTPRoute CRD (schema-less): the simulator only needs the
/// kind to be served.
fn http_route_crd() -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "metadata": {
            "name": "httproutes.gateway.networking.k8s.io",
            // *.k8s.io groups are protected; the upstream CRDs carry this.
            "annotations": {"api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/gateway-api/pull/2466"}
        },
        "spec": {
            "group": "gateway.networking.k8s.io",
            "scope": "Namespaced",
            "names": {"plural": "httproutes", "singular": "httproute", "kind": "HTTPRoute", "listKind": "HTTPRouteList"},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}
            }]
        }
    }))
    .unwrap()
}

fn http_route(primary: u32, canary: u32) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "podinfo"},
        "spec": {"rules": [{"backendRefs": [
            {"name": "podinfo-primary", "port": 9898, "weight": primary},
            {"name": "podinfo-canary", "port": 9898, "weight": canary}
        ]}]}
    }))
    .unwrap()
}

async fn setup_namespace(client: &Client, ns: &str) {
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap())
        .await
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    for (name, image) in [("podinfo-primary", "podinfo:6.0.0"), ("podinfo", "podinfo:6.0.1")] {
        deployments.create(&PostParams::default(), &deployment(name, image)).await.unwrap();
    }
}

async fn wait_split(sim: &Simulator, key: &str, expected: &Split) {
    eventually(&format!("{key} to be routed {expected:?}"), WAIT, async || {
        let snapshot = sim.snapshot(key).unwrap();
        (snapshot.observation.as_ref().map(|o| &o.split) == Some(expected)).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_and_recorder_follow_routes_in_a_real_cluster() {
    let dir = std::env::temp_dir().join(format!("petrel-e2e-simulator-cluster-{}", std::process::id()));
    let bin_dir = tokio::task::spawn_blocking(petrel_e2e::fleet::ensure_binaries)
        .await
        .unwrap()
        .expect("building the control-plane binaries");
    let mut opts = FleetOptions::new(&dir, ["sim"]);
    opts.bin_dir = Some(bin_dir);
    opts.nodes_per_cluster = 2;
    let fleet = Fleet::start(opts).await.expect("fleet start");
    let client = fleet.cluster("sim").unwrap().client().await.unwrap();

    Api::<CustomResourceDefinition>::all(client.clone())
        .create(&PostParams::default(), &http_route_crd())
        .await
        .unwrap();
    for ns in ["gw", "ng", "k8s"] {
        setup_namespace(&client, ns).await;
    }
    let gw = AppCoords::new("gw", "podinfo", Provider::GatewayApi);
    let mut ng = AppCoords::new("ng", "podinfo", Provider::Nginx);
    ng.ingress = Some("web".into());
    let k8s = AppCoords::new("k8s", "podinfo", Provider::Kubernetes);

    // The CRD must be served before its route can be watched.
    let gw_recorder =
        eventually("HTTPRoute to be served", WAIT, async || RouteRecorder::start(client.clone(), &gw).await.ok())
            .await
            .unwrap();
    let ng_recorder = RouteRecorder::start(client.clone(), &ng).await.unwrap();
    let k8s_recorder = RouteRecorder::start(client.clone(), &k8s).await.unwrap();

    let profile = TrafficProfile { requests_per_second: 100.0, ..TrafficProfile::default() };
    let sim = Simulator::start(
        SimulatorConfig::default(),
        [&gw, &ng, &k8s]
            .into_iter()
            .map(|c| App::from_cluster(client.clone(), c.clone()).profile(profile.clone()))
            .collect(),
    )
    .await
    .unwrap();
    sim.set_version("podinfo:6.0.1", VersionBehaviour::new(0.5, 300.0)).unwrap();

    // No route yet: everything to the primary, whose ready Pods are known.
    let observed = eventually("2 ready pods on each side", WAIT, async || {
        let o = sim.snapshot("gw/podinfo").unwrap().observation?;
        (o.workload(Side::Primary)?.pods.len() == 2 && o.workload(Side::Canary)?.pods.len() == 2).then_some(o)
    })
    .await
    .unwrap();
    assert_eq!(observed.split, Split::all_to(Side::Primary));
    assert_eq!(observed.canary.as_ref().unwrap().image, "podinfo:6.0.1");
    let canary_pod = observed.canary.as_ref().unwrap().pods[0].clone();
    assert!(canary_pod.starts_with("podinfo-") && !canary_pod.starts_with("podinfo-primary-"));

    // Gateway API: 90/10, then 50/50, then deleted.
    let resource =
        ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"));
    let routes: Api<DynamicObject> = Api::namespaced_with(client.clone(), "gw", &resource);
    routes.create(&PostParams::default(), &http_route(90, 10)).await.unwrap();
    wait_split(&sim, "gw/podinfo", &Split::weighted(90, 10)).await;
    let text = eventually("canary pod series", WAIT, async || {
        let text = sim.metrics_text();
        text.contains(&format!(r#"kubernetes_pod_name="{canary_pod}",method="GET",path="/",status="500"}}"#))
            .then_some(text)
    })
    .await
    .unwrap();
    assert!(text.contains(r#"kubernetes_namespace="gw""#));
    routes.patch("podinfo", &PatchParams::apply("test").force(), &Patch::Apply(http_route(50, 50))).await.unwrap();
    wait_split(&sim, "gw/podinfo", &Split::weighted(50, 50)).await;
    routes.delete("podinfo", &DeleteParams::default()).await.unwrap();
    wait_split(&sim, "gw/podinfo", &Split::all_to(Side::Primary)).await;
    let history = gw_recorder.wait_until("90/10, 50/50, deleted", WAIT, |h| h.len() >= 3).await.unwrap();
    let splits: Vec<Option<Split>> = history.iter().map(|r| r.split.clone()).collect();
    assert_eq!(splits, vec![Some(Split::weighted(90, 10)), Some(Split::weighted(50, 50)), None]);
    assert_eq!(gw_recorder.max_canary_weight(), 50);
    assert!(gw_recorder.splits_not_summing_to(100).is_empty());
    assert!(gw_recorder.errors().is_empty(), "{:?}", gw_recorder.errors());

    // NGINX: the canary Ingress `<ingress>-canary`.
    let ingress: Ingress = serde_json::from_value(json!({
        "metadata": {"name": "web-canary", "annotations": {
            "nginx.ingress.kubernetes.io/canary": "true",
            "nginx.ingress.kubernetes.io/canary-weight": "30"
        }},
        "spec": {"rules": [{"host": "podinfo.local", "http": {"paths": [{
            "path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": "podinfo-canary", "port": {"number": 9898}}}
        }]}}]}
    }))
    .unwrap();
    Api::<Ingress>::namespaced(client.clone(), "ng").create(&PostParams::default(), &ingress).await.unwrap();
    wait_split(&sim, "ng/podinfo", &Split::weighted(70, 30)).await;
    ng_recorder
        .wait_until("70/30", WAIT, |h| h.last().is_some_and(|r| r.split == Some(Split::weighted(70, 30))))
        .await
        .unwrap();

    // kubernetes: the apex Service's selector, primary then canary.
    let services: Api<Service> = Api::namespaced(client.clone(), "k8s");
    let service = |app: &str| -> Service {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "podinfo"},
            "spec": {"selector": {"app": app}, "ports": [{"port": 9898}]}
        }))
        .unwrap()
    };
    services.create(&PostParams::default(), &service("podinfo-primary")).await.unwrap();
    wait_split(&sim, "k8s/podinfo", &Split::all_to(Side::Primary)).await;
    services.patch("podinfo", &PatchParams::apply("test").force(), &Patch::Apply(service("podinfo"))).await.unwrap();
    wait_split(&sim, "k8s/podinfo", &Split::all_to(Side::Canary)).await;
    let history = k8s_recorder.wait_until("primary then canary", WAIT, |h| h.len() >= 2).await.unwrap();
    assert_eq!(
        history.iter().map(|r| r.split.clone()).collect::<Vec<_>>(),
        vec![Some(Split::all_to(Side::Primary)), Some(Split::all_to(Side::Canary))]
    );

    // Half the canary's requests failed, and they were really served.
    let canary = sim.snapshot("k8s/podinfo").unwrap().canary_requests;
    assert!(canary.0 > 0 && canary.1 * 2 <= canary.0 + 1 && canary.1 * 2 + 1 >= canary.0, "{canary:?}");

    drop(sim);
    drop(fleet);
    let _ = std::fs::remove_dir_all(&dir);
}
