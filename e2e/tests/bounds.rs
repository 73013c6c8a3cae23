//! Issue 11, defects 1, 2, 7 and 12, against a real control plane, a real Prometheus and
//! the real `petrel` binary: hostile MetricTemplates next to a healthy release, secrets
//! fed through every path that reports a failure, a webhook answering 300 MB, and
//! targets petrel's egress policy refuses.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use petrel::api::Canary;
use petrel::api::canary::Phase;
use petrel_e2e::scenario::{APP, CanaryOptions, IMAGE_V0, IMAGE_V1, NAMESPACE, TestEnv, eventually};
use petrel_e2e::simulator::Provider;
use serde_json::{Value, json};

const SETUP: Duration = Duration::from_secs(60);
const RELEASE: Duration = Duration::from_secs(120);

fn apply_params() -> PatchParams {
    PatchParams::apply("e2e-test").force()
}

/// Applies any namespaced object of the test namespace, server-side.
async fn apply(env: &TestEnv, object: Value) {
    let kind = object["kind"].as_str().unwrap().to_string();
    let name = object["metadata"]["name"].as_str().unwrap().to_string();
    let file = env.dir.join(format!("{kind}-{name}.json"));
    std::fs::write(&file, object.to_string()).unwrap();
    env.kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager",
        "e2e-test",
        "-f",
        file.to_str().unwrap(),
    ])
    .unwrap_or_else(|e| panic!("applying {kind} {name}: {e}"));
}

/// A Deployment like the scenario's app, under another name.
fn deployment(name: &str, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": name}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": image, "ports": [{"containerPort": 9898}]}]}
            }
        }
    })
}

async fn set_image(env: &TestEnv, name: &str, image: &str) {
    Api::<Deployment>::namespaced(env.client.clone(), NAMESPACE)
        .patch(name, &apply_params(), &Patch::Apply(deployment(name, image)))
        .await
        .unwrap_or_else(|e| panic!("setting the image of {name}: {e}"));
}

/// A blue/green Canary (plain Services, no traffic needed) on its own Deployment, with
/// `analysis` merged into a long run: `iterations` and `threshold` high enough that it
/// keeps analysing for the whole test.
fn side_canary(name: &str, analysis: Value) -> Value {
    let mut spec_analysis = json!({"interval": "2s", "threshold": 50, "iterations": 50});
    for (key, value) in analysis.as_object().unwrap() {
        spec_analysis[key] = value.clone();
    }
    json!({
        "apiVersion": "petrel.dev/v1alpha1",
        "kind": "Canary",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "provider": "kubernetes",
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "progressDeadlineSeconds": 600,
            "service": {"port": 9898, "targetPort": 9898},
            "analysis": spec_analysis,
        }
    })
}

/// Creates the Deployment and the Canary, waits for Initialized, then releases v1.
async fn start_side_canary(env: &TestEnv, name: &str, analysis: Value) {
    apply(env, deployment(name, IMAGE_V0)).await;
    apply(env, side_canary(name, analysis)).await;
    wait_phase_of(env, name, "Initialized", SETUP).await;
    set_image(env, name, IMAGE_V1).await;
}

fn metric_template(name: &str, address: &str, query: &str) -> Value {
    json!({
        "apiVersion": "petrel.dev/v1alpha1",
        "kind": "MetricTemplate",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"provider": {"type": "prometheus", "address": address}, "query": query},
    })
}

async fn phase_of(env: &TestEnv, name: &str) -> Option<Phase> {
    let canary: Canary = Api::namespaced(env.client.clone(), NAMESPACE).get(name).await.ok()?;
    canary.status.map(|s| s.phase)
}

async fn wait_phase_of(env: &TestEnv, name: &str, phase: &str, timeout: Duration) {
    eventually(&format!("{name} in phase {phase}"), timeout, async || {
        phase_of(env, name).await.filter(|p| p.as_str() == phase)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.dump()));
}

/// Every Event of the namespace as `(object, reason, message)`.
async fn all_events(env: &TestEnv) -> Vec<(String, String, String)> {
    let events = Api::<Event>::namespaced(env.client.clone(), NAMESPACE).list(&ListParams::default()).await.unwrap();
    events
        .items
        .into_iter()
        .map(|e| {
            (e.involved_object.name.unwrap_or_default(), e.reason.unwrap_or_default(), e.message.unwrap_or_default())
        })
        .collect()
}

/// Waits for an Event of Canary `name` with `reason` whose message satisfies `check`.
async fn wait_event_of(
    env: &TestEnv,
    name: &str,
    reason: &str,
    timeout: Duration,
    check: impl Fn(&str) -> bool,
) -> String {
    eventually(&format!("a {reason} Event of {name}"), timeout, async || {
        all_events(env).await.into_iter().find(|(o, r, m)| o == name && r == reason && check(m)).map(|(_, _, m)| m)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; events: {:#?}\n{}", futures::executor::block_on(all_events(env)), env.dump()))
}

/// Polls the operator's `/livez` every 250 ms until stopped; returns how many probes
/// failed or took longer than 2 s, and the slowest answer.
fn probe_livez(addr: std::net::SocketAddr) -> (tokio::task::JoinHandle<(usize, usize, Duration)>, Arc<AtomicUsize>) {
    let stop = Arc::new(AtomicUsize::new(0));
    let stopped = stop.clone();
    let probes = tokio::spawn(async move {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
        let (mut probes, mut failed, mut slowest) = (0, 0, Duration::ZERO);
        while stopped.load(Ordering::Relaxed) == 0 {
            let started = Instant::now();
            let ok =
                matches!(client.get(format!("http://{addr}/livez")).send().await, Ok(r) if r.status().is_success());
            slowest = slowest.max(started.elapsed());
            probes += 1;
            if !ok {
                failed += 1;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        (probes, failed, slowest)
    });
    (probes, stop)
}

/// Defect 1: two Canaries whose MetricTemplates would render forever (the issue's
/// template, and the same loops over a long variable without `*`) next to a healthy
/// Canary. The healthy one releases on time, `/livez` answers throughout, and each
/// hostile Canary is refused (Stalled, MetricProviderInvalid) with its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_templates_neither_freeze_the_operator_nor_delay_a_healthy_release() {
    let t0 = Instant::now();
    let env = TestEnv::start("bounds-templates", Provider::GatewayApi).await.unwrap();
    let prometheus = env.prometheus.url();
    let freeze = r#"{% set s = "x" * 10000 %}{% for a in s %}{% for b in s %}{% for c in s %}{% endfor %}{% endfor %}{% endfor %}1"#;
    let loops = "{% for a in variables.s %}{% for b in variables.s %}{% for c in variables.s %}{% endfor %}{% endfor %}{% endfor %}1";
    apply(&env, metric_template("freeze", &prometheus, freeze)).await;
    apply(&env, metric_template("loops", &prometheus, loops)).await;

    env.apply_canary(&CanaryOptions::canary(Provider::GatewayApi)).await.unwrap();
    env.wait_phase(Phase::Initialized, SETUP).await.unwrap();
    let livez = env.operator_metrics_addr(SETUP).await.unwrap();

    let hostile_metric = |template: &str, variables: Value| json!({"metrics": [{"name": "hostile", "templateRef": {"name": template}, "templateVariables": variables, "thresholdRange": {"min": 0}}]});
    // petrel renders a Canary's templates before it initialises it (admission of what
    // cannot work): both are refused there, Stalled with the reason, quickly.
    let hostile = [("freeze", json!({})), ("loops", json!({"s": "x".repeat(10_000)}))];
    for (template, variables) in hostile {
        let name = format!("hostile-{template}");
        apply(&env, deployment(&name, IMAGE_V0)).await;
        apply(&env, side_canary(&name, hostile_metric(template, variables))).await;
    }
    let frozen =
        wait_event_of(&env, "hostile-freeze", "MetricProviderInvalid", SETUP, |m| m.contains("do not allow")).await;
    assert!(frozen.contains("the operator `*`"), "{frozen}");
    let looped = wait_event_of(&env, "hostile-loops", "MetricProviderInvalid", SETUP, |m| m.contains("steps")).await;
    eprintln!("[bounds-templates] hostile templates refused: {frozen:?} / {looped:?}");

    // petrel renders them again (every 30 s and on every change) while the healthy one
    // releases; a change makes sure at least one render falls inside the release.
    let (probes, stop) = probe_livez(livez);
    let released = Instant::now();
    env.set_image(IMAGE_V1).await.unwrap();
    for name in ["hostile-freeze", "hostile-loops"] {
        set_image(&env, name, IMAGE_V1).await;
    }
    env.wait_phase(Phase::Succeeded, RELEASE).await.unwrap();
    let took = released.elapsed();
    stop.store(1, Ordering::Relaxed);
    let (count, failed, slowest) = probes.await.unwrap();
    eprintln!(
        "[bounds-templates] healthy release in {took:.1?}; /livez: {count} probes, {failed} failed, slowest {slowest:?}"
    );
    assert_eq!(failed, 0, "/livez failed {failed} of {count} probes (slowest {slowest:?})");
    assert!(count >= 10, "too few probes: {count}");
    assert_eq!(env.image_of(&format!("{APP}-primary")).await.unwrap(), IMAGE_V1);
    env.assert_weights_sum_to_100();

    // Neither hostile Canary was initialised or released: no primary carries its image.
    for name in ["hostile-freeze", "hostile-loops"] {
        let phase = phase_of(&env, name).await;
        assert!(
            !matches!(phase, Some(Phase::Initialized | Phase::Progressing | Phase::Succeeded)),
            "{name}: {phase:?}"
        );
        assert!(env.image_of(&format!("{name}-primary")).await.is_err(), "{name} has a primary");
    }
    assert!(env.operator.is_running());
    eprintln!("[bounds-templates] passed in {:.1?}", t0.elapsed());
}

/// A receiver on 127.0.0.1 that answers 500 with everything it was sent (path, query,
/// Authorization header, body), as a careless receiver might.
async fn echoing_receiver() -> u16 {
    use axum::http::{HeaderMap, StatusCode, Uri};
    async fn echo(uri: Uri, headers: HeaderMap, body: String) -> (StatusCode, String) {
        let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        (StatusCode::INTERNAL_SERVER_ERROR, format!("rejected {uri} auth={auth} body={body}"))
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(echo)).await.unwrap() });
    port
}

async fn create_secret(env: &TestEnv, name: &str, data: &[(&str, &str)]) {
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "stringData": data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
    }))
    .unwrap();
    Api::<Secret>::namespaced(env.client.clone(), NAMESPACE)
        .patch(name, &apply_params(), &Patch::Apply(secret))
        .await
        .unwrap();
}

/// Defect 2: distinctive secret values in every place a failure is reported from: an
/// AlertProvider Secret's Slack URL and token (a receiver that echoes them, and one that
/// is down), MetricTemplate Secrets with an address holding a password, a token and
/// basic auth, and Canary webhook URLs with userinfo and tokens in the query (a
/// post-rollout hook that is down, an event hook that echoes). The release
/// fails and is rolled back; no Event, no status, no operator log line and no metric
/// holds any of the values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_events_status_logs_or_metrics() {
    let t0 = Instant::now();
    let env = TestEnv::start("bounds-secrets", Provider::GatewayApi).await.unwrap();
    let echo = echoing_receiver().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let secrets = [
        "TSECRETw3e4",
        "BSECRETr5t6",
        "slackKeyQ1w2E3r4",
        "xoxb-alert-token-7Y6t5R",
        "teams-user-Zx9",
        "teams-pw-M9n8B7",
        "teamsKeyZ1x2C3",
        "prom-user-Hg7",
        "prom-pw-K8j7H6",
        "promPathP0o9I8",
        "prom-token-L5k4J3",
        "basic-user-U1i2",
        "basic-pw-Y2t3R4",
        "hook-user-Df4",
        "hook-pw-A1s2D3",
        "hook-token-F4g5H6",
        "hook-key-J7k8L9",
        "evt-sig-Q2w3E4",
    ];
    create_secret(
        &env,
        "slack",
        &[
            ("address", &format!("http://127.0.0.1:{echo}/services/TSECRETw3e4/BSECRETr5t6/slackKeyQ1w2E3r4")),
            ("token", "xoxb-alert-token-7Y6t5R"),
        ],
    )
    .await;
    create_secret(
        &env,
        "teams",
        &[("address", &format!("http://teams-user-Zx9:teams-pw-M9n8B7@127.0.0.1:{closed}/webhook/teamsKeyZ1x2C3"))],
    )
    .await;
    create_secret(
        &env,
        "prom-token",
        &[
            ("address", &format!("http://prom-user-Hg7:prom-pw-K8j7H6@127.0.0.1:{closed}/promPathP0o9I8")),
            ("token", "prom-token-L5k4J3"),
        ],
    )
    .await;
    create_secret(
        &env,
        "prom-basic",
        &[
            ("address", &format!("http://127.0.0.1:{echo}/promPathP0o9I8")),
            ("username", "basic-user-U1i2"),
            ("password", "basic-pw-Y2t3R4"),
        ],
    )
    .await;
    for (name, type_, secret) in [("slack", "slack", "slack"), ("teams", "msteams", "teams")] {
        apply(
            &env,
            json!({
                "apiVersion": "petrel.dev/v1alpha1",
                "kind": "AlertProvider",
                "metadata": {"name": name, "namespace": NAMESPACE},
                "spec": {"type": type_, "channel": "releases", "secretRef": {"name": secret}},
            }),
        )
        .await;
    }
    for (name, secret) in [("token-auth", "prom-token"), ("basic-auth", "prom-basic")] {
        apply(
            &env,
            json!({
                "apiVersion": "petrel.dev/v1alpha1",
                "kind": "MetricTemplate",
                "metadata": {"name": name, "namespace": NAMESPACE},
                "spec": {"provider": {"type": "prometheus", "secretRef": {"name": secret}}, "query": "sum(up)"},
            }),
        )
        .await;
    }

    let mut canary = CanaryOptions::canary(Provider::GatewayApi).manifest();
    canary["spec"]["analysis"]["metrics"] = json!([
        {"name": "token-auth", "templateRef": {"name": "token-auth"}, "thresholdRange": {"min": 0}},
        {"name": "basic-auth", "templateRef": {"name": "basic-auth"}, "thresholdRange": {"min": 0}},
    ]);
    canary["spec"]["analysis"]["webhooks"] = json!([
        {"name": "cleanup", "type": "post-rollout",
         "url": format!("http://hook-user-Df4:hook-pw-A1s2D3@127.0.0.1:{closed}/hook?token=hook-token-F4g5H6&api_key=hook-key-J7k8L9")},
        {"name": "events", "type": "event", "url": format!("http://127.0.0.1:{echo}/events?sig=evt-sig-Q2w3E4")},
    ]);
    canary["spec"]["analysis"]["alerts"] = json!([
        {"name": "chat", "severity": "info", "providerRef": {"name": "slack"}},
        {"name": "teams", "severity": "info", "providerRef": {"name": "teams"}},
    ]);
    env.canaries().patch(APP, &apply_params(), &Patch::Apply(canary)).await.unwrap();
    env.wait_phase(Phase::Initialized, SETUP).await.unwrap();
    env.set_image(IMAGE_V1).await.unwrap();
    env.wait_phase(Phase::Failed, RELEASE).await.unwrap();
    let metrics_addr = env.operator_metrics_addr(SETUP).await.unwrap();
    // The post-rollout hook and the alerts about the rollback come after it is recorded.
    env.wait_event("WebhookFailed", SETUP, |m| m.contains("cleanup")).await.unwrap();
    env.wait_event("AlertFailed", SETUP, |m| m.contains("Rolling back")).await.unwrap();

    let events = all_events(&env).await;
    let reasons: Vec<&str> = events.iter().map(|(_, r, _)| r.as_str()).collect();
    for reason in ["CheckFailed", "RolledBack", "AlertFailed", "WebhookFailed"] {
        assert!(reasons.contains(&reason), "no {reason} Event: {events:#?}");
    }
    let checks: Vec<&String> = events.iter().filter(|(_, r, _)| r == "CheckFailed").map(|(_, _, m)| m).collect();
    assert!(
        checks.iter().any(|m| m.contains("cannot reach")),
        "the metric with the Secret address failed: {checks:#?}"
    );
    assert!(checks.iter().any(|m| m.contains("HTTP 500")), "the basic-auth metric got the echo: {checks:#?}");
    let alerts: Vec<&String> = events.iter().filter(|(_, r, _)| r == "AlertFailed").map(|(_, _, m)| m).collect();
    assert!(alerts.iter().any(|m| m.contains("HTTP 500") && m.contains("<redacted>")), "{alerts:#?}");
    let log = env.operator.log_text();
    assert!(log.contains("event webhook failed"), "the event webhook's failure is logged");
    let status = serde_json::to_string(&env.canary_status().await.unwrap()).unwrap();
    let metrics = reqwest::get(format!("http://{metrics_addr}/metrics")).await.unwrap().text().await.unwrap();

    let events_text = format!("{events:?}");
    for secret in secrets {
        assert!(!events_text.contains(secret), "{secret} in an Event: {events:#?}");
        assert!(!status.contains(secret), "{secret} in the status: {status}");
        assert!(!metrics.contains(secret), "{secret} in /metrics");
        let line = log.lines().find(|line| line.contains(secret));
        assert!(line.is_none(), "{secret} in the operator log: {line:?}");
    }
    eprintln!("[bounds-secrets] {} Events, none holds a secret; passed in {:.1?}", events.len(), t0.elapsed());
}

/// Serves, on 127.0.0.1, an HTTP 200 whose body streams up to 300 MB, one connection at a
/// time; returns the port and the bytes sent per connection.
fn huge_body_server() -> (u16, Arc<std::sync::Mutex<Vec<usize>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = sent.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let record = record.clone();
            std::thread::spawn(move || {
                let _ = stream.read(&mut [0u8; 16 * 1024]);
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n");
                let chunk = vec![b'x'; 64 * 1024];
                let mut bytes = 0usize;
                while bytes < 300 * 1024 * 1024 && stream.write_all(&chunk).is_ok() {
                    bytes += chunk.len();
                }
                record.lock().unwrap().push(bytes);
            });
        }
    });
    (port, sent)
}

/// Defects 7 and 12, one Canary each, side by side:
/// - `huge-body`: its pre-rollout webhook answers 300 MB; the check fails naming the 1 MiB
///   cap and petrel's memory stays flat;
/// - `gate`: its confirm-rollout gate is on 127.0.0.2 (loopback, outside the harness's
///   allow list), where a server would open it; petrel never calls it and the revision waits;
/// - `metadata`: its MetricTemplate points at 169.254.169.254; the check fails, refused;
/// - `inject`: a templateVariable tries to rewrite the PromQL query into `vector(100)`,
///   which would pass the check; escaped, the query finds no data and the check fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_input_is_bounded_and_restricted_targets_are_refused() {
    let t0 = Instant::now();
    let env = TestEnv::start("bounds-network", Provider::Kubernetes).await.unwrap();
    let prometheus = env.prometheus.url();
    let (huge, sent) = huge_body_server();
    let gate_calls = Arc::new(AtomicUsize::new(0));
    let gate = {
        let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.expect("127.0.0.2 is loopback on Linux");
        let port = listener.local_addr().unwrap().port();
        let calls = gate_calls.clone();
        let open = axum::Router::new().fallback(move || {
            calls.fetch_add(1, Ordering::Relaxed);
            async { "open" }
        });
        tokio::spawn(async move { axum::serve(listener, open).await.unwrap() });
        port
    };
    apply(&env, metric_template("metadata", "http://169.254.169.254/latest/meta-data", "sum(up)")).await;
    apply(&env, metric_template("inject", &prometheus, r#"sum(up{job="{{ variables.job }}"})"#)).await;

    let baseline = env.operator.rss_bytes();
    start_side_canary(
        &env,
        "huge-body",
        json!({"webhooks": [{"name": "load-test", "type": "pre-rollout", "url": format!("http://127.0.0.1:{huge}/"), "timeout": "30s"}]}),
    )
    .await;
    start_side_canary(
        &env,
        "gate",
        json!({"webhooks": [{"name": "approval", "type": "confirm-rollout", "url": format!("http://127.0.0.2:{gate}/approve")}]}),
    )
    .await;
    start_side_canary(
        &env,
        "metadata",
        json!({"metrics": [{"name": "metadata", "templateRef": {"name": "metadata"}, "thresholdRange": {"min": 0}}]}),
    )
    .await;
    start_side_canary(
        &env,
        "inject",
        json!({"iterations": 3, "threshold": 2, "metrics": [{
            "name": "inject", "templateRef": {"name": "inject"}, "thresholdRange": {"min": 99},
            "templateVariables": {"job": r#"x"} or vector(100) or up{job=""#},
        }]}),
    )
    .await;

    // Memory is sampled while the huge answers are read.
    let peak = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (peak, pid) = (peak.clone(), env.operator.pid().unwrap());
        tokio::spawn(async move {
            loop {
                peak.fetch_max(petrel_e2e::fleet::rss_bytes(pid) as usize, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let too_large =
        wait_event_of(&env, "huge-body", "CheckFailed", SETUP, |m| m.contains("limit of 1048576 bytes")).await;
    assert!(too_large.contains("load-test"), "{too_large}");
    let waiting = wait_event_of(&env, "gate", "WaitingForApproval", SETUP, |m| m.contains("egress policy")).await;
    assert!(waiting.contains("127.0.0.2"), "{waiting}");
    let refused = wait_event_of(&env, "metadata", "CheckFailed", SETUP, |m| m.contains("egress policy")).await;
    assert!(refused.contains("169.254.169.254") && refused.contains("link-local"), "{refused}");
    let injected = wait_event_of(&env, "inject", "CheckFailed", SETUP, |m| m.contains("no data")).await;
    assert!(injected.contains(r#"job="x\"} or vector(100)"#), "the value stays inside its string: {injected}");
    wait_phase_of(&env, "inject", "Failed", RELEASE).await;
    // More huge answers while the others finish.
    wait_event_of(&env, "huge-body", "CheckFailed", SETUP, |m| m.contains("failed checks 3/")).await;
    sampler.abort();

    let peak = peak.load(Ordering::Relaxed) as u64;
    let sent = sent.lock().unwrap().clone();
    eprintln!(
        "[bounds-network] petrel RSS {} MiB before, peak {} MiB; huge answers: {} connections, MiB sent each: {:?}",
        baseline / (1024 * 1024),
        peak / (1024 * 1024),
        sent.len(),
        sent.iter().map(|b| b / (1024 * 1024)).collect::<Vec<_>>()
    );
    assert!(sent.len() >= 3, "the webhook was called on several ticks: {sent:?}");
    assert!(sent.iter().all(|&b| b < 64 * 1024 * 1024), "petrel read on past the cap: {sent:?}");
    assert!(peak < baseline + 150 * 1024 * 1024, "petrel grew from {baseline} to {peak} bytes");
    assert_eq!(gate_calls.load(Ordering::Relaxed), 0, "the gate on 127.0.0.2 was called");
    assert_eq!(phase_of(&env, "gate").await, Some(Phase::Waiting));
    assert_ne!(phase_of(&env, "inject").await, Some(Phase::Succeeded));
    assert!(env.operator.is_running());
    eprintln!("[bounds-network] passed in {:.1?}", t0.elapsed());
}
