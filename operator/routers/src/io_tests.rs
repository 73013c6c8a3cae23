//! Tests of the thin I/O layer against a scripted API server: which requests a router
//! makes, in what order, with which field manager, and that reconcile keeps weights.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

use super::testing::{canary, weights};
use super::{RouterError, RouterMemory, Weights, kubernetes, nginx, router_with, services, smi};
use petrel_api::Canary;
use petrel_api::common::ObjectRef;
use petrel_core::Provider;

/// One request the scripted API server answered.
#[derive(Clone, Debug)]
pub(crate) struct Call {
    method: String,
    uri: String,
    body: Option<Value>,
}

impl Call {
    fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or_default()
    }
}

/// The answer to a request: an object, or a 404 Status.
enum Reply {
    Object(Value),
    NotFound,
    /// Echo the applied object back, as the API server does.
    Echo,
    /// The API server's answer for an API group it does not serve: text, not a Status.
    PageNotFound,
}

/// A client whose API server answers with `respond(method, path)` and records every call.
fn scripted_client(respond: impl Fn(&str, &str) -> Reply + Send + 'static) -> (Client, Arc<Mutex<Vec<Call>>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = calls.clone();
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let method = request.method().to_string();
            let uri = request.uri().to_string();
            let bytes = request.into_body().collect_bytes().await.expect("request body");
            let body: Option<Value> = (!bytes.is_empty()).then(|| serde_json::from_slice(&bytes).expect("JSON body"));
            let call = Call { method, uri, body };
            let (status, reply) = match respond(&call.method, call.path()) {
                Reply::PageNotFound => {
                    seen.lock().expect("calls lock").push(call);
                    let response = Response::builder().status(404).body(Body::from(b"404 page not found\n".to_vec()));
                    send.send_response(response.expect("valid response"));
                    continue;
                }
                Reply::Object(obj) => (200, obj),
                Reply::Echo => (200, call.body.clone().expect("an applied object")),
                Reply::NotFound => (
                    404,
                    json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found" }),
                ),
            };
            seen.lock().expect("calls lock").push(call);
            let response =
                Response::builder().status(status).body(Body::from(serde_json::to_vec(&reply).expect("JSON")));
            send.send_response(response.expect("valid response"));
        }
    });
    (Client::new(service, "default"), calls)
}

/// A client whose API server answers 404 to everything, for tests that build a router
/// without calling it.
pub(crate) fn offline_client() -> (Client, Arc<Mutex<Vec<Call>>>) {
    scripted_client(|_, _| Reply::NotFound)
}

fn deployment() -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "podinfo", "namespace": "test" },
        "spec": { "selector": { "matchLabels": { "app": "podinfo" } }, "template": {} },
    })
}

const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/test/deployments/podinfo";
const SERVICES: &str = "/api/v1/namespaces/test/services";
const SPLIT: &str = "/apis/split.smi-spec.io/v1alpha2/namespaces/test/trafficsplits/podinfo";

fn applies(calls: &[Call]) -> Vec<(String, Value)> {
    calls
        .iter()
        .filter(|c| c.method == "PATCH")
        .map(|c| (c.path().to_string(), c.body.clone().unwrap_or_default()))
        .collect()
}

async fn finish<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), future).await.expect("router call finished")
}

/// The weights the route object of `provider` carries in the cluster, `None` when there is
/// no route object: read by the test as a person would with kubectl, not by a router.
async fn weights_in_cluster(client: &Client, provider: Provider, canary: &Canary) -> Option<Weights> {
    async fn mesh<R: super::MeshRoutes>(client: &Client, canary: &Canary) -> Option<Weights> {
        let (resource, name) = R::weighted_object(canary);
        let namespace = canary.metadata.namespace.as_deref().expect("a namespaced Canary");
        let found = super::read_dynamic(client, namespace, &resource, &name).await.expect("read the route object")?;
        Some(R::weights_of(&found).expect("the route object carries weights"))
    }
    let namespace = canary.metadata.namespace.as_deref().expect("a namespaced Canary");
    match provider {
        Provider::GatewayApi => mesh::<super::gatewayapi::GatewayApi>(client, canary).await,
        Provider::Istio => mesh::<super::istio::Istio>(client, canary).await,
        Provider::Linkerd if super::linkerd::uses_gateway_api(canary) => {
            mesh::<super::linkerd::LinkerdGamma>(client, canary).await
        }
        Provider::Linkerd | Provider::Smi => mesh::<smi::Smi>(client, canary).await,
        Provider::Traefik => mesh::<super::traefik::Traefik>(client, canary).await,
        Provider::Contour => mesh::<super::contour::Contour>(client, canary).await,
        Provider::Kuma => mesh::<super::kuma::Kuma>(client, canary).await,
        Provider::Nginx => {
            let user = &canary.spec.ingress_ref.as_ref().expect("nginx needs an ingressRef").name;
            let ingresses: kube::Api<k8s_openapi::api::networking::v1::Ingress> =
                kube::Api::namespaced(client.clone(), namespace);
            let clone = ingresses.get_opt(&nginx::canary_ingress_name(user)).await.expect("read the canary Ingress")?;
            Some(nginx::weights_of(&clone).expect("the canary Ingress carries weights"))
        }
        Provider::Kubernetes => {
            let services_api: kube::Api<k8s_openapi::api::core::v1::Service> =
                kube::Api::namespaced(client.clone(), namespace);
            let apex = services_api.get_opt(&super::ServiceNames::of(canary).apex).await.expect("read the apex")?;
            let pods = services::target_pods(client, &RouterMemory::default(), canary).await.expect("target");
            Some(kubernetes::weights_of(&apex, &pods.selector).expect("the apex selects primary or canary pods"))
        }
        other => panic!("the tests read no route object of provider {other}"),
    }
}

#[tokio::test]
async fn reconcile_creates_services_then_a_primary_only_route() {
    let (client, calls) = scripted_client(|method, path| match (method, path) {
        ("GET", DEPLOYMENT) => Reply::Object(deployment()),
        ("GET", _) => Reply::NotFound,
        _ => Reply::Echo,
    });
    finish(router_with(Provider::Smi, client, RouterMemory::default()).reconcile(&canary())).await.unwrap();

    let calls = calls.lock().unwrap().clone();
    let applied = applies(&calls);
    let paths: Vec<&str> = applied.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            &format!("{SERVICES}/podinfo-primary"),
            &format!("{SERVICES}/podinfo-canary"),
            &format!("{SERVICES}/podinfo"),
            SPLIT
        ]
    );
    assert_eq!(applied[3].1, smi::build_traffic_split(&canary(), Weights::primary_only()).unwrap());
    assert_eq!(applied[2].1["spec"]["selector"], json!({ "app": "podinfo-primary" }));
    for call in calls.iter().filter(|c| c.method == "PATCH") {
        assert!(call.uri.contains("fieldManager=petrel") && call.uri.contains("force=true"), "{}", call.uri);
    }
}

#[tokio::test]
async fn kinds_of_an_unserved_group_or_version_are_reported_unserved() {
    let (client, calls) = scripted_client(|method, path| match (method, path) {
        ("GET", "/apis/gateway.networking.k8s.io/v1") => Reply::Object(json!({
            "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "gateway.networking.k8s.io/v1",
            "resources": [{ "name": "httproutes", "singularName": "httproute", "namespaced": true, "kind": "HTTPRoute", "verbs": ["get"] }],
        })),
        _ => Reply::PageNotFound,
    });
    let kinds = [
        super::gatewayapi::http_route_resource(&canary()),
        super::kuma::mesh_http_route_resource(),
        super::gloo::route_table_resource(),
        super::gloo::upstream_resource(),
    ];
    let served = super::ServedKinds::default();
    let unserved = finish(super::unserved_kinds(&client, &served, &kinds)).await.unwrap();
    let names: Vec<&str> = unserved.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(names, ["MeshHTTPRoute", "RouteTable", "Upstream"]);
    assert_eq!(calls.lock().unwrap().len(), 4, "one discovery request per group version");
    // A served group version is not asked again for a while; missing ones are.
    finish(super::unserved_kinds(&client, &served, &kinds)).await.unwrap();
    assert_eq!(calls.lock().unwrap().len(), 7, "only the three unserved group versions are asked again");
    let message = super::unserved_message(Provider::Gloo, &unserved[1..]);
    assert!(message.contains("RouteTable (gateway.solo.io/v1), Upstream (gloo.solo.io/v1)"), "{message}");
}

#[tokio::test]
async fn reconcile_keeps_the_weights_of_a_release_in_progress() {
    let (client, calls) = scripted_client(|method, path| match (method, path) {
        ("GET", DEPLOYMENT) => Reply::Object(deployment()),
        ("GET", SPLIT) => Reply::Object(smi::build_traffic_split(&canary(), weights(70, 30, false)).unwrap()),
        ("GET", _) => Reply::NotFound,
        _ => Reply::Echo,
    });
    // Linkerd without gatewayRefs: SMI.
    let mut linkerd = canary();
    linkerd.spec.service.gateway_refs.clear();
    let router = router_with(Provider::Linkerd, client.clone(), RouterMemory::default());
    finish(router.reconcile(&linkerd)).await.unwrap();
    assert_eq!(finish(weights_in_cluster(&client, Provider::Linkerd, &linkerd)).await, Some(weights(70, 30, false)));

    let applied = applies(&calls.lock().unwrap());
    let (_, split) = applied.iter().find(|(p, _)| p == SPLIT).expect("the split was applied");
    assert_eq!(smi::weights_of(split).unwrap(), weights(70, 30, false));
}

#[tokio::test]
async fn reconcile_keeps_a_blue_green_switch() {
    let pods =
        services::TargetPods::without_ports(services::PodSelector { key: "app".into(), value: "podinfo".into() });
    let on_canary = kubernetes::build_apex(&canary(), &pods, Weights::canary_only()).unwrap();
    let apex_path = format!("{SERVICES}/podinfo");
    let (client, calls) = scripted_client(move |method, path| match (method, path) {
        ("GET", DEPLOYMENT) => Reply::Object(deployment()),
        ("GET", p) if p == apex_path => Reply::Object(serde_json::to_value(&on_canary).unwrap()),
        ("GET", _) => Reply::NotFound,
        _ => Reply::Echo,
    });
    let router = router_with(Provider::Kubernetes, client, RouterMemory::default());
    finish(router.reconcile(&canary())).await.unwrap();
    let applied = applies(&calls.lock().unwrap());
    let (_, apex) = applied.iter().find(|(p, _)| p == &format!("{SERVICES}/podinfo")).expect("apex applied");
    assert_eq!(apex["spec"]["selector"], json!({ "app": "podinfo" }));
}

#[tokio::test]
async fn kubernetes_router_refuses_a_split_before_touching_the_apex() {
    let (client, calls) = scripted_client(|method, path| match (method, path) {
        ("GET", DEPLOYMENT) => Reply::Object(deployment()),
        ("GET", _) => Reply::NotFound,
        _ => Reply::Echo,
    });
    let router = router_with(Provider::Kubernetes, client, RouterMemory::default());
    let err = finish(router.set_routes(&canary(), weights(90, 10, false))).await.unwrap_err();
    assert!(matches!(err, RouterError::Unsupported { .. }), "{err}");
    assert!(applies(&calls.lock().unwrap()).is_empty());

    finish(router.set_routes(&canary(), Weights::canary_only())).await.unwrap();
    let applied = applies(&calls.lock().unwrap());
    assert_eq!(applied.len(), 1);
    assert_eq!(applied[0].1["spec"]["selector"], json!({ "app": "podinfo" }));
}

#[tokio::test]
async fn nginx_writes_only_the_clone() {
    let user_ingress = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": { "name": "web", "namespace": "test" },
        "spec": { "rules": [{ "http": { "paths": [{ "path": "/", "pathType": "Prefix",
            "backend": { "service": { "name": "podinfo", "port": { "number": 9898 } } } }] } }] },
    });
    let (client, calls) = scripted_client(move |method, path| match (method, path) {
        ("GET", DEPLOYMENT) => Reply::Object(deployment()),
        ("GET", "/apis/networking.k8s.io/v1/namespaces/test/ingresses/web") => Reply::Object(user_ingress.clone()),
        ("GET", _) => Reply::NotFound,
        _ => Reply::Echo,
    });
    let router = router_with(Provider::Nginx, client, RouterMemory::default());

    let err = finish(router.reconcile(&canary())).await.unwrap_err();
    assert!(matches!(err, RouterError::InvalidCanary { .. }), "a Canary without ingressRef: {err}");

    let mut with_ingress = canary();
    with_ingress.spec.ingress_ref = Some(ObjectRef { name: "web".into(), ..ObjectRef::default() });
    finish(router.set_routes(&with_ingress, weights(80, 20, false))).await.unwrap();
    let applied = applies(&calls.lock().unwrap());
    assert_eq!(applied.len(), 1, "only the clone is written: {applied:?}");
    assert_eq!(applied[0].0, "/apis/networking.k8s.io/v1/namespaces/test/ingresses/web-canary");
    let clone: k8s_openapi::api::networking::v1::Ingress = serde_json::from_value(applied[0].1.clone()).unwrap();
    assert_eq!(nginx::weights_of(&clone).unwrap(), weights(80, 20, false));
}

#[tokio::test]
async fn finalize_deletes_route_objects_and_tolerates_missing_ones() {
    let (client, calls) = scripted_client(|method, _| match method {
        "DELETE" => Reply::NotFound,
        _ => Reply::Echo,
    });
    finish(router_with(Provider::Istio, client, RouterMemory::default()).finalize(&canary())).await.unwrap();
    let calls = calls.lock().unwrap().clone();
    let deleted: Vec<&str> = calls.iter().filter(|c| c.method == "DELETE").map(Call::path).collect();
    assert_eq!(
        deleted,
        [
            "/apis/networking.istio.io/v1/namespaces/test/virtualservices/podinfo",
            "/apis/networking.istio.io/v1/namespaces/test/destinationrules/podinfo-primary",
            "/apis/networking.istio.io/v1/namespaces/test/destinationrules/podinfo-canary",
        ]
    );
    assert_eq!(calls.len(), 3, "finalize leaves the Services alone");
}

/// The routers against a real API server: `KUBECONFIG` must point at a cluster with the
/// CRDs of `crds/` and `e2e/crds/third-party/` installed. Run deliberately with
/// `cargo test -p petrel --lib routers::io_tests::live -- --ignored`.
mod live {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Namespace;
    use k8s_openapi::api::networking::v1::Ingress;
    use kube::Api;
    use kube::api::{Patch, PatchParams};

    use super::*;

    const NAMESPACE: &str = "petrel-router-live";

    async fn apply<K>(api: &Api<K>, obj: Value) -> K
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let name = obj["metadata"]["name"].as_str().expect("named object").to_string();
        api.patch(&name, &PatchParams::apply("petrel-live-test").force(), &Patch::Apply(&obj)).await.expect("apply")
    }

    async fn setup(client: &Client) -> Canary {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        apply(&namespaces, json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": NAMESPACE } })).await;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
        apply(
            &deployments,
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": { "name": "podinfo", "namespace": NAMESPACE },
                "spec": { "replicas": 0, "selector": { "matchLabels": { "app": "podinfo" } },
                    "template": { "metadata": { "labels": { "app": "podinfo" } },
                        "spec": { "containers": [{ "name": "podinfo", "image": "podinfo:1" }] } } },
            }),
        )
        .await;
        let ingresses: Api<Ingress> = Api::namespaced(client.clone(), NAMESPACE);
        apply(&ingresses, json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": { "name": "podinfo", "namespace": NAMESPACE },
            "spec": { "rules": [{ "host": "app.example.com", "http": { "paths": [{ "path": "/", "pathType": "Prefix",
                "backend": { "service": { "name": "podinfo", "port": { "number": 9898 } } } }] } }] },
        }))
        .await;
        let mut desired = canary();
        desired.metadata.namespace = Some(NAMESPACE.into());
        desired.metadata.uid = None;
        desired.spec.ingress_ref = Some(ObjectRef { name: "podinfo".into(), ..ObjectRef::default() });
        let canaries: Api<Canary> = Api::namespaced(client.clone(), NAMESPACE);
        apply(&canaries, serde_json::to_value(&desired).expect("Canary serialises")).await
    }

    #[tokio::test]
    #[ignore = "needs a live API server (KUBECONFIG) with petrel's and e2e/crds/third-party CRDs"]
    async fn every_router_round_trips_through_a_real_api_server() {
        let client = Client::try_default().await.expect("KUBECONFIG points at a cluster");
        let stored = setup(&client).await;
        for (provider, name, split) in [
            (Provider::GatewayApi, "gatewayapi", weights(90, 10, false)),
            (Provider::GatewayApi, "gatewayapi:v1beta1", weights(60, 40, true)),
            (Provider::Istio, "istio", weights(90, 10, true)),
            (Provider::Linkerd, "linkerd", weights(75, 25, false)),
            (Provider::Traefik, "traefik", weights(90, 10, false)),
            (Provider::Contour, "contour", weights(50, 50, false)),
            (Provider::Nginx, "nginx", weights(80, 20, false)),
            (Provider::Kubernetes, "kubernetes", Weights::canary_only()),
        ] {
            let mut canary = stored.clone();
            canary.spec.provider = Some(name.into());
            let router = router_with(provider, client.clone(), RouterMemory::default());
            router.reconcile(&canary).await.unwrap_or_else(|e| panic!("{name} reconcile: {e}"));
            let routed = || weights_in_cluster(&client, provider, &canary);
            assert_eq!(routed().await, Some(Weights::primary_only()), "{name} starts on the primary");
            router.set_routes(&canary, split).await.unwrap_or_else(|e| panic!("{name} set_routes: {e}"));
            assert_eq!(routed().await, Some(split), "{name} reads back what it wrote");
            router.reconcile(&canary).await.unwrap_or_else(|e| panic!("{name} second reconcile: {e}"));
            assert_eq!(routed().await, Some(split), "{name} reconcile keeps the weights");
            router.finalize(&canary).await.unwrap_or_else(|e| panic!("{name} finalize: {e}"));
            match provider {
                Provider::Kubernetes => {
                    assert_eq!(routed().await, Some(Weights::primary_only()), "{name} finalize")
                }
                _ => assert_eq!(routed().await, None, "{name}: finalize removed the route"),
            }
        }
        let ingresses: Api<Ingress> = Api::namespaced(client.clone(), NAMESPACE);
        let user = ingresses.get("podinfo").await.expect("user Ingress");
        assert!(user.metadata.annotations.unwrap_or_default().is_empty(), "the user's Ingress was left alone");
    }
}

/// The new routers write through the ledger like the mesh routers: `set_routes` with the
/// weights petrel last wrote sends nothing, other weights go out, and after `finalize`
/// (which forgets) the same weights go out again.
#[tokio::test]
async fn apisix_gloo_and_knative_write_the_same_weights_once() {
    const USER_ROUTE: &str = "/apis/apisix.apache.org/v2/namespaces/test/apisixroutes/podinfo";
    const KNATIVE: &str = "/apis/serving.knative.dev/v1/namespaces/test/services/podinfo";
    let user_route = json!({
        "apiVersion": "apisix.apache.org/v2", "kind": "ApisixRoute",
        "metadata": { "name": "podinfo", "namespace": "test" },
        "spec": { "http": [{ "name": "main", "match": { "paths": ["/*"] },
                             "backends": [{ "serviceName": "podinfo", "servicePort": 9898 }] }] },
    });
    let knative_service = json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": { "name": "podinfo", "namespace": "test", "resourceVersion": "7",
                      "annotations": { super::knative::PRIMARY_REVISION_ANNOTATION: "podinfo-00001" } },
    });
    let (client, calls) = scripted_client(move |method, path| match (method, path) {
        ("GET", USER_ROUTE) => Reply::Object(user_route.clone()),
        ("GET", KNATIVE) => Reply::Object(knative_service.clone()),
        ("GET", _) => Reply::NotFound,
        ("DELETE", _) => Reply::NotFound,
        _ => Reply::Echo,
    });
    let mut apisix = canary();
    apisix.spec.provider = Some("apisix".into());
    apisix.spec.route_ref = Some(ObjectRef {
        api_version: Some("apisix.apache.org/v2".into()),
        kind: Some("ApisixRoute".into()),
        name: "podinfo".into(),
        ..ObjectRef::default()
    });
    let mut gloo = canary();
    gloo.spec.provider = Some("gloo".into());
    let mut knative = canary();
    knative.spec.provider = Some("knative".into());
    knative.spec.target_ref.api_version = "serving.knative.dev/v1".into();
    knative.spec.target_ref.kind = "Service".into();
    knative.status = Some(petrel_api::canary::CanaryStatus {
        last_applied_spec: Some("podinfo-00002".into()),
        ..Default::default()
    });

    for (provider, canary) in [(Provider::Apisix, apisix), (Provider::Gloo, gloo), (Provider::Knative, knative)] {
        let router = router_with(provider, client.clone(), RouterMemory::default());
        let patches = || applies(&calls.lock().unwrap()).len();
        let before = patches();
        finish(router.set_routes(&canary, weights(90, 10, false))).await.unwrap();
        assert_eq!(patches(), before + 1, "{provider}: the first write goes out");
        finish(router.set_routes(&canary, weights(90, 10, false))).await.unwrap();
        assert_eq!(patches(), before + 1, "{provider}: the same weights again write nothing");
        finish(router.set_routes(&canary, weights(80, 20, false))).await.unwrap();
        assert_eq!(patches(), before + 2, "{provider}: new weights go out");
        finish(router.finalize(&canary)).await.unwrap();
        let after_finalize = patches();
        finish(router.set_routes(&canary, weights(80, 20, false))).await.unwrap();
        assert_eq!(patches(), after_finalize + 1, "{provider}: finalize forgets what was written");
    }
}

/// Every write of a generated Service (reconcile, a blue/green switch, finalize) carries
/// the discovered ports: one that left them out would make server-side apply remove them.
#[tokio::test]
async fn every_service_write_keeps_the_discovered_ports() {
    let mut target = deployment();
    target["spec"]["template"] = json!({ "spec": { "containers": [{ "name": "podinfo", "image": "podinfo",
        "ports": [{ "name": "http", "containerPort": 9898 }, { "name": "grpc", "containerPort": 9999 }] }] } });
    let apex_path = format!("{SERVICES}/podinfo");
    let existing_apex = serde_json::to_value(
        kubernetes::build_apex(
            &canary(),
            &services::TargetPods::without_ports(services::PodSelector { key: "app".into(), value: "podinfo".into() }),
            Weights::primary_only(),
        )
        .unwrap(),
    )
    .unwrap();
    let (client, calls) = scripted_client(move |method, path| match (method, path) {
        ("GET", DEPLOYMENT) => Reply::Object(target.clone()),
        ("GET", p) if p == apex_path => Reply::Object(existing_apex.clone()),
        ("GET", _) => Reply::NotFound,
        _ => Reply::Echo,
    });
    let mut discovering = canary();
    discovering.spec.service.port_discovery = true;
    let router = router_with(Provider::Kubernetes, client, RouterMemory::default());
    finish(router.reconcile(&discovering)).await.unwrap();
    finish(router.set_routes(&discovering, Weights::canary_only())).await.unwrap();
    finish(router.finalize(&discovering)).await.unwrap();
    let applied = applies(&calls.lock().unwrap());
    let service_writes: Vec<_> = applied.iter().filter(|(path, _)| path.starts_with(SERVICES)).collect();
    assert_eq!(service_writes.len(), 5, "three Services, the switch and the finalize: {service_writes:?}");
    for (path, service) in service_writes {
        assert_eq!(
            service["spec"]["ports"],
            json!([
                { "name": "http", "port": 9898, "protocol": "TCP", "targetPort": 9898 },
                { "name": "grpc", "port": 9999, "protocol": "TCP", "targetPort": 9999 },
            ]),
            "{path}"
        );
    }
}
