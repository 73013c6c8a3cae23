//! Every traffic provider through the Canary scenarios, on ONE real control plane
//! (`petrel_e2e::providers::SharedEnv`): a healthy promotion with its exact weights, a
//! rollback on errors, A/B testing where the provider routes by header, and blue/green,
//! each (provider, scenario) in its own namespace, a few at a time. Then bad input in the
//! same cluster: a provider whose CRDs are not installed, a Knative target that does not
//! exist, a routeRef naming nothing, and retired providers refused at admission.
//!
//! `cargo test -p petrel-e2e --test providers -- --nocapture` prints each case's time and
//! the matrix's wall time. `PETREL_E2E_PARALLEL` sets how many cases run at once (5).

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use petrel::api::Canary;
use petrel::api::canary::RETIRED_PROVIDER_MESSAGE;
use petrel_e2e::providers::{APP, IMAGE_BAD, SharedEnv, matrix, run_matrix};
use petrel_e2e::scenario::eventually;
use petrel_e2e::simulator::{
    AffinityReport, App, AppCoords, Provider as SimProvider, SessionProfile, SessionRequest, Side as SimSide,
    TrafficProfile,
};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_provider_runs_the_canary_scenarios() {
    let env = SharedEnv::start("providers").await.unwrap();
    let parallel = std::env::var("PETREL_E2E_PARALLEL").ok().and_then(|p| p.parse().ok()).unwrap_or(5);
    let cases = matrix();
    let t0 = Instant::now();
    let results = run_matrix(&env, &cases, parallel).await;
    let wall = t0.elapsed();
    let failed: Vec<_> = results.iter().filter(|r| r.outcome.is_err()).collect();
    eprintln!(
        "[providers] {} cases ({} providers), {parallel} at a time: matrix wall time {wall:.1?}, environment start {:.1?}, {} failed",
        results.len(),
        petrel_e2e::providers::PROVIDERS.len(),
        env.elapsed() - wall,
        failed.len()
    );
    for r in &failed {
        eprintln!(
            "===== [{}/{}] {:.1?}\n{}",
            r.provider,
            r.scenario.name(),
            r.elapsed,
            r.outcome.as_ref().unwrap_err()
        );
    }
    if !failed.is_empty() {
        let log = env.operator.log_text();
        let tail: Vec<&str> = log.lines().rev().take(80).collect();
        eprintln!("===== petrel log (last 80 lines)\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    assert!(failed.is_empty(), "{} of {} cases failed", failed.len(), results.len());

    bad_input_is_stalled_and_touches_no_traffic(&env).await;
    retired_providers_are_refused_with_a_reason(&env).await;
    a_keda_scaled_object_follows_the_release(&env).await;
}

/// Provider `kubernetes` with `service.portDiscovery` and `service.unmanagedMetadata`:
/// every container port is on the three Services, and through a blue/green release (two
/// writes of the apex Service) an annotation and a label another controller set under
/// unmanaged keys survive, while a key petrel manages is put back.
///
/// `cargo test -p petrel-e2e --test providers ports_and_unmanaged_metadata -- --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_and_unmanaged_metadata_with_provider_kubernetes() {
    let t0 = Instant::now();
    let env = SharedEnv::start("providers-ports").await.unwrap();
    let ns = "kubernetes-ports";
    namespace(&env, ns).await;
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(env.client.clone(), ns);
    let target = |image: &str| {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": APP, "namespace": ns },
            "spec": { "replicas": 1, "selector": { "matchLabels": { "app": APP } },
                "template": { "metadata": { "labels": { "app": APP } }, "spec": { "containers": [
                    { "name": "podinfo", "image": image,
                      "ports": [{ "name": "http", "containerPort": 9898 }, { "name": "grpc", "containerPort": 9999 }] },
                    { "name": "shipper", "image": "shipper:1", "ports": [{ "containerPort": 2020 }] },
                    { "name": "istio-proxy", "image": "proxyv2:1", "ports": [{ "name": "http-envoy-prom", "containerPort": 15090 }] },
                ] } } },
        })
    };
    deployments.patch(APP, &ssa(), &Patch::Apply(target("podinfo:1"))).await.unwrap();
    let manifest = canary(
        ns,
        json!({
            "provider": "kubernetes",
            "targetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": APP },
            "progressDeadlineSeconds": 60,
            "service": {
                "port": 9898, "portDiscovery": true,
                "apex": { "annotations": { "example.com/team": "payments", "example.com/dns": "from-the-canary" } },
                "unmanagedMetadata": { "labels": ["example.com/zone"], "annotations": ["example.com/dns"] },
            },
            "analysis": { "interval": "2s", "threshold": 2, "iterations": 2 },
        }),
    );
    let canaries: Api<Canary> = Api::namespaced(env.client.clone(), ns);
    canaries.patch(APP, &ssa(), &Patch::Apply(manifest)).await.unwrap();
    let phase = async |phase: petrel::api::canary::Phase| {
        eventually(&format!("{ns}: phase {phase}"), Duration::from_secs(60), async || {
            (canaries.get(APP).await.ok()?.status?.phase == phase).then_some(())
        })
        .await
        .unwrap()
    };
    phase(petrel::api::canary::Phase::Initialized).await;

    let services: Api<Service> = Api::namespaced(env.client.clone(), ns);
    for name in [APP.to_string(), format!("{APP}-primary"), format!("{APP}-canary")] {
        let service = services.get(&name).await.unwrap();
        let mut ports: Vec<(String, i32, String)> = service
            .spec
            .unwrap()
            .ports
            .unwrap()
            .into_iter()
            .map(|p| (p.name.unwrap_or_default(), p.port, p.protocol.unwrap_or_default()))
            .collect();
        ports.sort();
        let tcp = |name: &str, port| (name.to_string(), port, "TCP".to_string());
        assert_eq!(ports, vec![tcp("grpc", 9999), tcp("http", 9898), tcp("tcp-shipper-0", 2020)], "{ns}/{name}");
    }

    // Another controller (here a person with kubectl) writes the unmanaged keys; someone
    // also changes a key petrel manages.
    let apex = format!("service/{APP}");
    env.kubectl(&["-n", ns, "annotate", &apex, "example.com/dns=from-external-dns"]).unwrap();
    env.kubectl(&["-n", ns, "label", &apex, "example.com/zone=eu-west-1a"]).unwrap();
    env.kubectl(&["-n", ns, "annotate", "--overwrite", &apex, "example.com/team=hijacked"]).unwrap();

    // A release: petrel writes the apex twice (to the canary, then to the promoted primary).
    deployments.patch(APP, &ssa(), &Patch::Apply(target("podinfo:2"))).await.unwrap();
    phase(petrel::api::canary::Phase::Succeeded).await;
    let apex = eventually(&format!("{ns}: petrel's key put back"), Duration::from_secs(30), async || {
        let apex = services.get(APP).await.ok()?;
        (apex.metadata.annotations.as_ref()?.get("example.com/team")? == "payments").then_some(apex)
    })
    .await
    .unwrap();
    let annotations = apex.metadata.annotations.clone().unwrap_or_default();
    let labels = apex.metadata.labels.clone().unwrap_or_default();
    assert_eq!(annotations.get("example.com/dns").map(String::as_str), Some("from-external-dns"), "{annotations:?}");
    assert_eq!(labels.get("example.com/zone").map(String::as_str), Some("eu-west-1a"), "{labels:?}");
    assert_eq!(
        apex.spec.as_ref().and_then(|s| s.selector.clone()),
        Some([("app".to_string(), format!("{APP}-primary"))].into()),
        "the apex was written by the release"
    );
    eprintln!("[providers-ports] passed in {:.1?}", t0.elapsed());
}

/// Provider `gatewayapi` with Flagger's route options: `service.match`, `service.headers`,
/// `service.rewrite` (with `type`) and `service.mirror` reach the HTTPRoute as Flagger
/// writes them, and the API server (with Gateway API's CRDs and their CEL rules) takes it;
/// `service.corsPolicy`, which Flagger's gatewayapi router drops, leaves the Canary Stalled.
///
/// `cargo test -p petrel-e2e --test providers gateway_api_route_options -- --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_api_route_options_reach_the_http_route() {
    let t0 = Instant::now();
    let env = SharedEnv::start("providers-gateway-options").await.unwrap();
    let ns = "gatewayapi-options";
    namespace(&env, ns).await;
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(env.client.clone(), ns);
    deployments.patch(APP, &ssa(), &Patch::Apply(deployment(ns))).await.unwrap();
    let spec = json!({
        "provider": "gatewayapi",
        "targetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": APP },
        "progressDeadlineSeconds": 60,
        "service": {
            "port": 9898,
            "gatewayRefs": [{ "name": "public", "namespace": ns }],
            "match": [{ "uri": { "prefix": "/api" }, "headers": { "x-tenant": { "exact": "blue" } } }],
            "headers": { "request": { "set": { "x-release": "podinfo" } }, "response": { "remove": ["server"] } },
            "rewrite": { "uri": "/", "type": "ReplacePrefixMatch" },
            "mirror": [{ "backendRef": { "name": "shadow", "port": 9898 } }],
        },
        "analysis": { "interval": "2s", "threshold": 2, "iterations": 2 },
    });
    let canaries: Api<Canary> = Api::namespaced(env.client.clone(), ns);
    canaries.patch(APP, &ssa(), &Patch::Apply(canary(ns, spec.clone()))).await.unwrap();
    let resource = kube::api::ApiResource {
        group: "gateway.networking.k8s.io".into(),
        version: "v1".into(),
        api_version: "gateway.networking.k8s.io/v1".into(),
        kind: "HTTPRoute".into(),
        plural: "httproutes".into(),
    };
    let routes: Api<kube::api::DynamicObject> = Api::namespaced_with(env.client.clone(), ns, &resource);
    eventually(&format!("{ns}: Initialized"), Duration::from_secs(60), async || {
        (canaries.get(APP).await.ok()?.status?.phase == petrel::api::canary::Phase::Initialized).then_some(())
    })
    .await
    .unwrap();
    // Two analysis intervals on: each reconcile reads the route back, and the user's own
    // mirror must not be taken for the release's (which would add a mirror to the canary).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let route = routes.get(APP).await.unwrap();
    let rule = &route.data["spec"]["rules"][0];
    assert_eq!(rule["matches"][0]["path"], json!({ "type": "PathPrefix", "value": "/api" }), "{rule}");
    assert_eq!(rule["matches"][0]["headers"][0]["name"], "x-tenant", "{rule}");
    let filters: Vec<&str> = rule["filters"].as_array().unwrap().iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(filters, ["RequestHeaderModifier", "ResponseHeaderModifier", "URLRewrite", "RequestMirror"], "{rule}");
    assert_eq!(
        rule["filters"][0]["requestHeaderModifier"]["set"],
        json!([{ "name": "x-release", "value": "podinfo" }])
    );
    assert_eq!(
        rule["filters"][2]["urlRewrite"]["path"],
        json!({ "type": "ReplacePrefixMatch", "replacePrefixMatch": "/" })
    );
    assert_eq!(rule["filters"][3]["requestMirror"]["backendRef"]["name"], "shadow");

    // corsPolicy: Flagger's gatewayapi router drops it, so petrel refuses rather than ignores it.
    let mut cors = spec;
    cors["service"]["corsPolicy"] = json!({ "allowOrigins": [{ "exact": "https://example.com" }] });
    canaries.patch(APP, &ssa(), &Patch::Apply(canary(ns, cors))).await.unwrap();
    stalled(&env, ns, "InvalidRouting", |m| {
        m.contains("spec.service.corsPolicy is not written by provider gatewayapi")
    })
    .await;
    eprintln!("[providers-gateway-options] passed in {:.1?}", t0.elapsed());
}

/// `analysis.sessionAffinity` (Flagger's cookie pinning) on providers istio and
/// gatewayapi, each in its own namespace of one control plane, measured with 50
/// cookie-keeping sessions of the traffic simulator sending requests through the routes
/// petrel writes during a release (the simulator reads the VirtualService or HTTPRoute
/// like a proxy: the sticky rules match the `Cookie` header, the weighted rule's
/// destinations set the cookies).
///
/// During the release the route has a sticky rule per cookie before the weighted rule,
/// whose backends set the cookies; the canary cookie is chosen once for the release (kept
/// in the status across the steps); after promotion one rule expires it. Every session
/// given the canary cookie is served by the canary for every later request until the
/// cookie is expired, the sessions without a cookie are split by the weights, and after
/// the release no request reaches the canary and no session keeps the cookie: after a
/// promotion (istio, gatewayapi) and after a rollback on errors (istio, the pinned sessions
/// being served by the failing canary until then). On gatewayapi (with
/// `primaryCookieName`), a provider that does not pin sessions leaves the Canary Stalled,
/// naming it.
///
/// `cargo test -p petrel-e2e --test providers session_affinity -- --test-threads=1 --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_affinity_pins_sessions_until_the_cookie_expires() {
    let t0 = Instant::now();
    let env = SharedEnv::start("providers-session-affinity").await.unwrap();
    tokio::join!(
        session_affinity_case(&env, SimProvider::Istio, "istio-affinity", false),
        session_affinity_case(&env, SimProvider::GatewayApi, "gatewayapi-affinity", false),
        session_affinity_case(&env, SimProvider::Istio, "istio-affinity-rollback", true),
    );
    eprintln!("[providers-session-affinity] passed in {:.1?}", t0.elapsed());
}

/// Cookie-keeping sessions of the affinity cases, and their total rate (two requests a
/// second each).
const SESSIONS: usize = 50;
const SESSION_RPS: f64 = 100.0;

/// One release of a Canary with session affinity: promoted, or (`rollback`) a version
/// failing 90% of its requests, rolled back by its success rate.
async fn session_affinity_case(env: &SharedEnv, provider: SimProvider, ns: &str, rollback: bool) {
    use petrel::api::canary::Phase;
    let t0 = Instant::now();
    let istio = provider == SimProvider::Istio;
    namespace(env, ns).await;
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(env.client.clone(), ns);
    deployments.patch(APP, &ssa(), &Patch::Apply(deployment(ns))).await.unwrap();
    // Istio: the defaults (Flagger's cookie name and a day's Max-Age), no primary cookie.
    // Gateway API: named cookies and the primary cookie, which lasts one interval.
    let (service, affinity) = if istio {
        (json!({ "port": 9898 }), json!({}))
    } else {
        (
            json!({ "port": 9898, "gatewayRefs": [{ "name": "public", "namespace": ns }] }),
            json!({ "cookieName": "canary-cookie", "primaryCookieName": "primary-cookie", "maxAge": 600 }),
        )
    };
    let mut spec = json!({
        "provider": provider.as_str(),
        "targetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": APP },
        "progressDeadlineSeconds": 60,
        "service": service,
        "analysis": { "interval": "3s", "threshold": 2, "stepWeight": 25, "maxWeight": 50, "sessionAffinity": affinity },
    });
    if rollback {
        spec["metricsServer"] = json!(env.prometheus.url());
        spec["analysis"]["metrics"] =
            json!([{ "name": "request-success-rate", "interval": "6s", "thresholdRange": { "min": 99 } }]);
    }
    let (image, outcome) = if rollback { (IMAGE_BAD, Phase::Failed) } else { ("podinfo:2", Phase::Succeeded) };
    let canaries: Api<Canary> = Api::namespaced(env.client.clone(), ns);
    canaries.patch(APP, &ssa(), &Patch::Apply(canary(ns, spec.clone()))).await.unwrap();
    let resource = if istio {
        petrel::routers::istio::virtual_service_resource()
    } else {
        kube::api::ApiResource {
            group: "gateway.networking.k8s.io".into(),
            version: "v1".into(),
            api_version: "gateway.networking.k8s.io/v1".into(),
            kind: "HTTPRoute".into(),
            plural: "httproutes".into(),
        }
    };
    // The route's rules: Gateway API's `rules`, Istio's `http` routes.
    let rules_key = if istio { "http" } else { "rules" };
    let routes: Api<kube::api::DynamicObject> = Api::namespaced_with(env.client.clone(), ns, &resource);
    eventually(&format!("{ns}: Initialized"), Duration::from_secs(60), async || {
        (canaries.get(APP).await.ok()?.status?.phase == Phase::Initialized).then_some(())
    })
    .await
    .unwrap();
    // Before any release: one weighted rule, no cookie.
    let route = routes.get(APP).await.unwrap();
    assert_eq!(route.data["spec"][rules_key].as_array().unwrap().len(), 1, "{}", route.data);

    // The sessions, from now on.
    let coords = AppCoords::new(ns, APP, provider);
    let key = coords.key();
    let app = App::from_cluster(env.client.clone(), coords)
        .profile(TrafficProfile { requests_per_second: 0.0, ..TrafficProfile::default() })
        .sessions(SessionProfile::new(SESSIONS, SESSION_RPS));
    env.simulator.add_app(app).unwrap();
    env.simulator.wait_observed(&key, Duration::from_secs(30)).await.unwrap();

    // The release: watch the status and the route until the promotion.
    let mut release = deployment(ns);
    release["spec"]["template"]["spec"]["containers"][0]["image"] = json!(image);
    deployments.patch(APP, &ssa(), &Patch::Apply(release)).await.unwrap();
    let mut cookies = std::collections::BTreeSet::new();
    let mut primary_cookies = std::collections::BTreeSet::new();
    let mut pinned_route = None;
    let sticky_rules = if istio { 2 } else { 3 };
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        assert!(Instant::now() < deadline, "{ns}: no phase {outcome}; cookies seen {cookies:?}");
        let status = canaries.get(APP).await.unwrap().status.unwrap_or_default();
        if let Some(cookie) = &status.session_affinity_cookie {
            cookies.insert(cookie.clone());
            primary_cookies.extend(status.primary_session_affinity_cookie.clone());
            let route = routes.get(APP).await.unwrap();
            // Pinned: the first rule sends the cookie's requests to the canary (after the
            // release it has the weighted rule's weights).
            let backends = if istio { "route" } else { "backendRefs" };
            let rules = route.data["spec"][rules_key].as_array();
            if rules.is_some_and(|r| r.len() == sticky_rules && r[0][backends][1]["weight"] == 100) {
                pinned_route = Some(route.data.clone());
            }
        }
        if matches!(status.phase, Phase::Succeeded | Phase::Failed) {
            assert_eq!(status.phase, outcome, "{ns}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(cookies.len(), 1, "{ns}: one canary cookie per release, saw {cookies:?}");
    let cookie = cookies.pop_first().unwrap();
    let (name, value) = cookie.split_once('=').unwrap();
    let route = pinned_route.expect("the route was seen pinned");
    let rules = route["spec"][rules_key].as_array().unwrap();
    if istio {
        assert_eq!(name, "flagger-cookie");
        assert_eq!(rules[0]["name"], "sticky-route", "{route}");
        assert_eq!(
            rules[0]["match"][0]["headers"]["Cookie"],
            json!({ "regex": format!(".*flagger-cookie={value}.*") }),
            "{route}"
        );
        assert_eq!(rules[0]["route"][1]["weight"], 100, "{route}");
        assert_eq!(
            rules[1]["route"][1]["headers"]["response"]["add"]["Set-Cookie"],
            format!("{cookie}; Max-Age=86400"),
            "{route}"
        );
        assert!(primary_cookies.is_empty(), "{ns}: no primaryCookieName, yet {primary_cookies:?}");
    } else {
        assert_eq!(name, "canary-cookie");
        assert_eq!(
            rules[0]["matches"][0]["headers"][0],
            json!({ "type": "RegularExpression", "name": "Cookie", "value": format!(".*canary-cookie={value}.*") }),
            "{route}"
        );
        assert_eq!(rules[0]["backendRefs"][1]["weight"], 100, "{route}");
        assert_eq!(rules[1]["backendRefs"][0]["weight"], 100, "{route}");
        assert_eq!(
            rules[2]["backendRefs"][1]["filters"][0]["responseHeaderModifier"]["add"][0]["value"],
            format!("{cookie}; Max-Age=600"),
            "{route}"
        );
        let primary_set_cookie =
            rules[2]["backendRefs"][0]["filters"][0]["responseHeaderModifier"]["add"][0]["value"].as_str().unwrap();
        assert!(
            primary_set_cookie.starts_with("primary-cookie=") && primary_set_cookie.ends_with("; Max-Age=3"),
            "{route}"
        );
        assert_eq!(primary_cookies.len(), 1, "{ns}: one primary cookie per release, saw {primary_cookies:?}");
    }

    // After the promotion or rollback: the cookie is expired by the first rule, the
    // weighted rule is plain.
    let expired = eventually(&format!("{ns}: the cookie expired"), Duration::from_secs(30), async || {
        let route = routes.get(APP).await.ok()?;
        let rules = route.data["spec"][rules_key].as_array()?.clone();
        let back = if istio { &rules.get(1)?["route"][0] } else { &rules.get(1)?["backendRefs"][0] };
        (rules.len() == 2 && back["weight"] == 100).then_some(rules)
    })
    .await
    .unwrap();
    let expiring = format!("{cookie}; Max-Age=-1");
    if istio {
        assert_eq!(expired[0]["headers"], json!({ "response": { "add": { "Set-Cookie": expiring } } }));
    } else {
        assert_eq!(
            expired[0]["filters"],
            json!([{ "type": "ResponseHeaderModifier", "responseHeaderModifier": { "add": [{ "name": "Set-Cookie", "value": expiring }] } }])
        );
    }
    let status = canaries.get(APP).await.unwrap().status.unwrap();
    assert_eq!(status.previous_session_affinity_cookie.as_deref(), Some(cookie.as_str()));
    assert_eq!(status.session_affinity_cookie, None);

    // The sessions. Once the simulator routes by the route after the release (no canary
    // weight in any rule), every request it logs later is routed by it (or a newer route).
    // Whether that route expires the cookie is for the sessions to show.
    let (split, logs) = eventually(
        &format!("{ns}: the simulator on the route after the release"),
        Duration::from_secs(30),
        async || {
            let (split, logs) = env.simulator.sessions(&key).ok()?;
            let split = split?;
            let after_release = split.all_weights().all(|w| w.canary == 0);
            after_release.then_some((split, logs))
        },
    )
    .await
    .unwrap();
    let after: Vec<usize> = logs.iter().map(|l| l.requests.len()).collect();
    let primary_cookie = primary_cookies.first().map(String::as_str);
    // Every pinned session sends a few more requests: the first expires its cookie. (On
    // timeout the assertions below say what went wrong.)
    let expired_all = async || {
        let (_, logs) = env.simulator.sessions(&key).ok()?;
        let report = AffinityReport::of(&logs, &cookie, primary_cookie);
        let more = logs.iter().zip(&after).all(|(l, n)| l.requests.len() >= n + 4);
        (more && report.expired == report.pinned).then_some(())
    };
    let _ =
        eventually(&format!("{ns}: every pinned session's cookie expired"), Duration::from_secs(20), expired_all).await;
    let (_, logs) = env.simulator.sessions(&key).unwrap();
    let report = AffinityReport::of(&logs, &cookie, primary_cookie);
    let later: Vec<&SessionRequest> = logs.iter().zip(&after).flat_map(|(l, n)| &l.requests[*n..]).collect();
    let later_to_canary = later.iter().filter(|r| r.side != Some(SimSide::Primary)).count();
    let later_with_cookie = later.iter().filter(|r| r.carried(&cookie) && !r.expired(&cookie)).count();
    let kept = logs.iter().filter(|l| l.jar.contains(&cookie)).count();
    eprintln!(
        "[{ns}] {SESSIONS} sessions: {} pinned to the canary, {} requests after pinning of which {} elsewhere; \
         {} requests with the primary cookie of which {} elsewhere; {} unpinned requests at canary weight: {} on the \
         canary, {:.1} expected; after the release ({} requests): {} not on the primary, {} with a live canary cookie, \
         {} sessions keeping it",
        report.pinned,
        report.pinned_requests,
        report.pinned_elsewhere,
        report.primary_pinned_requests,
        report.primary_pinned_elsewhere,
        report.unpinned_requests,
        report.unpinned_to_canary,
        report.unpinned_expected_canary,
        later.len(),
        later_to_canary,
        later_with_cookie,
        kept,
    );
    assert!(report.pinned >= 5 && report.pinned_requests >= 50, "{ns}: too few sessions pinned to judge: {report:?}");
    assert_eq!(report.pinned_elsewhere, 0, "{ns}: pinned sessions left the canary: {report:?}");
    assert_eq!(report.expiring_elsewhere, 0, "{ns}: {report:?}");
    assert_eq!(report.carried_unexplained, 0, "{ns}: {report:?}");
    assert_eq!(report.expired, report.pinned, "{ns}: {report:?}");
    assert!(report.unpinned_requests >= 50, "{ns}: too few unpinned requests to judge the split: {report:?}");
    assert!(
        report.unpinned_follow_the_weights(4.0),
        "{ns}: the unpinned requests did not follow the weights: {report:?}"
    );
    if primary_cookie.is_some() {
        assert!(report.primary_pinned_requests > 0, "{ns}: {report:?}");
        assert_eq!(report.primary_pinned_elsewhere, 0, "{ns}: {report:?}");
    }
    assert_eq!((later_to_canary, later_with_cookie, kept), (0, 0, 0), "{ns}: after the release: {split:?}");
    env.simulator.remove_app(&key).unwrap();

    if !istio {
        // A provider that does not pin sessions: Stalled, naming it.
        let mut other = spec;
        other["provider"] = json!("kubernetes");
        other["analysis"] = json!({ "interval": "3s", "threshold": 2, "iterations": 2,
            "sessionAffinity": { "cookieName": "canary-cookie" } });
        canaries.patch(APP, &ssa(), &Patch::Apply(canary(ns, other))).await.unwrap();
        stalled(env, ns, "InvalidRouting", |m| m.contains("sessionAffinity") && m.contains("provider kubernetes"))
            .await;
    }
    eprintln!("[{ns}] passed in {:.1?}", t0.elapsed());
}

fn ssa() -> PatchParams {
    PatchParams::apply("e2e-test").force()
}

async fn namespace(env: &SharedEnv, name: &str) {
    Api::<Namespace>::all(env.client.clone())
        .create(&PostParams::default(), &serde_json::from_value(json!({ "metadata": { "name": name } })).unwrap())
        .await
        .unwrap();
}

/// Waits for a Stalled condition with `reason` and an Event with that reason, whose
/// messages satisfy `names_it`; returns the message.
async fn stalled(env: &SharedEnv, ns: &str, reason: &str, names_it: impl Fn(&str) -> bool) -> String {
    let canaries: Api<Canary> = Api::namespaced(env.client.clone(), ns);
    let message = eventually(&format!("{ns}: Stalled {reason}"), Duration::from_secs(30), async || {
        let canary = canaries.get(APP).await.ok()?;
        let status = canary.status?;
        status
            .conditions
            .iter()
            .find(|c| c.type_ == "Stalled" && c.is_true() && c.reason == reason)
            .map(|c| c.message.clone())
    })
    .await
    .unwrap();
    assert!(names_it(&message), "{ns}: the Stalled message does not name the missing piece: {message}");
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(env.client.clone(), ns);
    eventually(&format!("{ns}: an Event {reason}"), Duration::from_secs(10), async || {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| e.reason.as_deref() == Some(reason) && e.message.as_deref().is_some_and(&names_it))
            .then_some(())
    })
    .await
    .unwrap();
    message
}

/// No Service: nothing petrel would route through was created.
async fn no_traffic_touched(env: &SharedEnv, ns: &str) {
    let services = Api::<Service>::namespaced(env.client.clone(), ns).list(&ListParams::default()).await.unwrap();
    let names: Vec<_> = services.items.iter().map(|s| s.metadata.name.clone()).collect();
    assert!(names.is_empty(), "{ns}: petrel created Services: {names:?}");
}

fn canary(ns: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({ "apiVersion": "petrel.dev/v1alpha1", "kind": "Canary", "metadata": { "name": APP, "namespace": ns }, "spec": spec })
}

fn deployment(ns: &str) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": APP, "namespace": ns },
        "spec": { "replicas": 1, "selector": { "matchLabels": { "app": APP } },
            "template": { "metadata": { "labels": { "app": APP } }, "spec": { "containers": [{ "name": "podinfo", "image": "podinfo:1" }] } } },
    })
}

/// A new namespace `ns` holding the Deployment [`APP`] (unless `target` is false) and a
/// Canary of `spec`: the setup of each bad-input case.
async fn bad_canary(env: &SharedEnv, ns: &str, target: bool, spec: serde_json::Value) {
    namespace(env, ns).await;
    if target {
        let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(env.client.clone(), ns);
        deployments.patch(APP, &ssa(), &Patch::Apply(deployment(ns))).await.unwrap();
    }
    let canaries: Api<Canary> = Api::namespaced(env.client.clone(), ns);
    canaries.patch(APP, &ssa(), &Patch::Apply(canary(ns, spec))).await.unwrap();
}

async fn bad_input_is_stalled_and_touches_no_traffic(env: &SharedEnv) {
    let t0 = Instant::now();
    let client = env.client.clone();
    let deployments: fn(&SharedEnv, &str) -> Api<k8s_openapi::api::apps::v1::Deployment> =
        |env, ns| Api::namespaced(env.client.clone(), ns);

    // A Knative target that does not exist.
    let spec = json!({
        "provider": "knative",
        "targetRef": { "apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": APP },
        "service": { "port": 9898 },
    });
    bad_canary(env, "bad-knative-target", false, spec).await;
    stalled(env, "bad-knative-target", "TargetNotFound", |m| m.contains("Knative Service bad-knative-target/podinfo"))
        .await;

    // A routeRef naming no ApisixRoute.
    let spec = json!({
        "provider": "apisix",
        "routeRef": { "name": "missing" },
        "targetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": APP },
        "service": { "port": 9898 },
    });
    bad_canary(env, "bad-route-ref", true, spec).await;
    stalled(env, "bad-route-ref", "RouteTargetNotFound", |m| m.contains("ApisixRoute bad-route-ref/missing")).await;
    no_traffic_touched(env, "bad-route-ref").await;

    // Istio route options on a provider whose router does not write them (Flagger's nginx
    // router ignores them): refused, not dropped.
    let ns = "bad-route-options";
    let spec = json!({
        "provider": "nginx",
        "ingressRef": { "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "name": APP },
        "targetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": APP },
        "service": { "port": 9898, "retries": { "attempts": 3 }, "hosts": ["app.example.com"] },
    });
    bad_canary(env, ns, true, spec).await;
    stalled(env, ns, "InvalidRouting", |m| {
        m.contains("spec.service.retries, spec.service.hosts are not written by provider nginx's router")
    })
    .await;
    no_traffic_touched(env, ns).await;

    // A provider whose CRDs are not installed: Kuma's, removed now that its cases are done.
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    crds.delete("meshhttproutes.kuma.io", &DeleteParams::default()).await.unwrap();
    eventually("the MeshHTTPRoute CRD to be gone", Duration::from_secs(30), async || {
        crds.get_opt("meshhttproutes.kuma.io").await.ok()?.is_none().then_some(())
    })
    .await
    .unwrap();
    // petrel trusts a discovery answer that a kind is served for a few seconds.
    tokio::time::sleep(petrel::routers::SERVED_KINDS_TTL).await;
    let spec = json!({
        "provider": "kuma",
        "targetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": APP },
        "service": { "port": 9898 },
    });
    bad_canary(env, "bad-no-crds", true, spec).await;
    stalled(env, "bad-no-crds", "ProviderKindsNotServed", |m| m.contains("MeshHTTPRoute (kuma.io/v1alpha1)")).await;
    no_traffic_touched(env, "bad-no-crds").await;
    let primary = deployments(env, "bad-no-crds").get_opt(&format!("{APP}-primary")).await.unwrap();
    assert!(primary.is_none(), "a primary was created for a Canary whose provider is not installed");
    // Istio delegation without a root VirtualService delegating to the Canary's.
    let ns = "bad-delegation";
    let spec = json!({
        "provider": "istio",
        "targetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": APP },
        "service": { "port": 9898, "delegation": true, "hosts": ["app.example.com"], "gateways": ["public"] },
    });
    bad_canary(env, ns, true, spec).await;
    stalled(env, ns, "RouteTargetNotFound", |m| m.contains(&format!("no VirtualService delegates to {ns}/{APP}")))
        .await;
    no_traffic_touched(env, ns).await;
    let virtual_services = || {
        Api::<kube::api::DynamicObject>::namespaced_with(
            client.clone(),
            ns,
            &petrel::routers::istio::virtual_service_resource(),
        )
    };
    assert!(virtual_services().get_opt(APP).await.unwrap().is_none(), "a VirtualService was written without a root");
    // The root, in the gateway's namespace, delegating to it: petrel writes a delegate
    // VirtualService (no hosts, no gateways) at its next look.
    namespace(env, "gateways").await;
    let root = json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": { "name": "root", "namespace": "gateways" },
        "spec": { "hosts": ["app.example.com"], "gateways": ["public"],
            "http": [{ "match": [{ "uri": { "prefix": "/" } }], "delegate": { "name": APP, "namespace": ns } }] },
    });
    Api::<kube::api::DynamicObject>::namespaced_with(
        client.clone(),
        "gateways",
        &petrel::routers::istio::virtual_service_resource(),
    )
    .patch("root", &ssa(), &Patch::Apply(root))
    .await
    .unwrap();
    let delegate = eventually("the delegate VirtualService", Duration::from_secs(90), async || {
        virtual_services().get_opt(APP).await.ok()?
    })
    .await
    .unwrap();
    let spec = &delegate.data["spec"];
    assert!(spec.get("hosts").is_none() && spec.get("gateways").is_none(), "not a delegate: {spec}");
    assert_eq!(spec.pointer("/http/0/route/0/weight"), Some(&json!(100)), "{spec}");
    eprintln!("[providers] bad input checked in {:.1?}", t0.elapsed());
}

async fn retired_providers_are_refused_with_a_reason(env: &SharedEnv) {
    let canaries: Api<Canary> = Api::namespaced(env.client.clone(), "default");
    for provider in ["appmesh", "osm"] {
        let manifest = canary(
            "default",
            json!({
                "provider": provider,
                "targetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": APP },
                "service": { "port": 9898 },
            }),
        );
        let err =
            canaries.create(&PostParams::default(), &serde_json::from_value(manifest).unwrap()).await.unwrap_err();
        assert!(err.to_string().contains(RETIRED_PROVIDER_MESSAGE), "{provider}: {err}");
    }
    // A Knative target needs provider knative, and the other way round.
    let mismatched = canary(
        "default",
        json!({
            "provider": "istio",
            "targetRef": { "apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": APP },
            "service": { "port": 9898 },
        }),
    );
    let err = canaries.create(&PostParams::default(), &serde_json::from_value(mismatched).unwrap()).await.unwrap_err();
    assert!(err.to_string().contains("provider knative and targetRef kind Service"), "{err}");
}

/// A KEDA ScaledObject as `autoscalerRef` (Flagger's handling): the primary gets its own,
/// pointed at it with the queries rewritten; the target's is paused while the target is
/// scaled to zero and resumed while a release is analysed.
async fn a_keda_scaled_object_follows_the_release(env: &SharedEnv) {
    use petrel::api::canary::Phase;
    let t0 = Instant::now();
    let ns = "keda";
    namespace(env, ns).await;
    let resource = petrel::workloads::keda::scaled_object_resource();
    let scaled_objects: Api<kube::api::DynamicObject> = Api::namespaced_with(env.client.clone(), ns, &resource);
    let query = |deployment: &str| format!("sum(rate(http_requests_total{{deployment=\"{deployment}\"}}[1m]))");
    let scaled_object = json!({
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
        "metadata": { "name": "podinfo-scaler", "namespace": ns },
        "spec": {
            "scaleTargetRef": { "name": APP }, "minReplicaCount": 1, "maxReplicaCount": 3,
            "triggers": [{ "type": "prometheus", "name": "rps", "metadata": {
                "serverAddress": "http://prometheus:9090", "threshold": "10", "query": query(APP) } }],
        },
    });
    scaled_objects.patch("podinfo-scaler", &ssa(), &Patch::Apply(scaled_object)).await.unwrap();
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(env.client.clone(), ns);
    deployments.patch(APP, &ssa(), &Patch::Apply(deployment(ns))).await.unwrap();
    let canaries: Api<Canary> = Api::namespaced(env.client.clone(), ns);
    let manifest = canary(
        ns,
        json!({
            "provider": "kubernetes",
            "targetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": APP },
            "autoscalerRef": { "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "name": "podinfo-scaler",
                "primaryScalerReplicas": { "minReplicas": 2 } },
            "service": { "port": 9898 },
            "analysis": { "interval": "2s", "threshold": 2, "iterations": 3 },
        }),
    );
    canaries.patch(APP, &ssa(), &Patch::Apply(manifest)).await.unwrap();
    let phase = async |wanted: Phase| {
        let reached = eventually(&format!("{ns}: the Canary {wanted:?}"), Duration::from_secs(90), async || {
            (canaries.get(APP).await.ok()?.status?.phase == wanted).then_some(())
        })
        .await;
        if let Err(e) = reached {
            panic!("{e:#}\n{}", env.operator.log_text());
        }
    };
    let paused = async || {
        let target = scaled_objects.get("podinfo-scaler").await.unwrap();
        target.metadata.annotations.unwrap_or_default().get("autoscaling.keda.sh/paused-replicas").cloned()
    };
    phase(Phase::Initialized).await;
    let primary = scaled_objects.get("podinfo-scaler-primary").await.unwrap();
    assert_eq!(primary.data["spec"]["scaleTargetRef"]["name"], format!("{APP}-primary"));
    assert_eq!(primary.data["spec"]["minReplicaCount"], 2, "primaryScalerReplicas");
    assert_eq!(primary.data["spec"]["triggers"][0]["metadata"]["query"], query(&format!("{APP}-primary")));
    assert_eq!(paused().await.as_deref(), Some("0"), "the target's ScaledObject is paused while the target is at zero");

    // A release: the target is scaled up (its ScaledObject resumed), analysed, promoted,
    // and scaled to zero again (paused again).
    let new_image =
        json!({ "spec": { "template": { "spec": { "containers": [{ "name": "podinfo", "image": "podinfo:2" }] } } } });
    deployments.patch(APP, &PatchParams::default(), &Patch::Strategic(new_image)).await.unwrap();
    phase(Phase::Progressing).await;
    eventually(&format!("{ns}: the target's ScaledObject resumed"), Duration::from_secs(30), async || {
        paused().await.is_none().then_some(())
    })
    .await
    .unwrap();
    phase(Phase::Succeeded).await;
    eventually(&format!("{ns}: the target's ScaledObject paused again"), Duration::from_secs(30), async || {
        (paused().await.as_deref() == Some("0")).then_some(())
    })
    .await
    .unwrap();
    eprintln!("[providers] KEDA ScaledObject checked in {:.1?}", t0.elapsed());
}
