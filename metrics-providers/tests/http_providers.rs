//! The HTTP providers against real HTTP servers on 127.0.0.1: Prometheus
//! answers in the JSON shapes its `/api/v1/query` really sends.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_providers::{
    Credentials, EgressPolicy, MetricProvider, Provider, ProviderConfig, ProviderKind, QueryError, build_provider,
};

/// What the fake Prometheus demands of a request.
#[derive(Clone, Copy)]
enum Auth {
    None,
    /// Expected `Authorization` header value.
    Exactly(&'static str),
}

#[derive(Clone)]
struct Fake {
    auth: Auth,
    /// Every `query` parameter received, in order.
    seen: Arc<Mutex<Vec<String>>>,
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn vector(values: &[&str]) -> String {
    let result: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            format!(r#"{{"metric":{{"__name__":"up","instance":"pod-{i}:9090"}},"value":[1763776800.781,"{v}"]}}"#)
        })
        .collect();
    format!(r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#, result.join(","))
}

/// Answers by query text, the way a real Prometheus would for such a query.
async fn api_query(
    State(fake): State<Fake>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Auth::Exactly(expected) = fake.auth {
        let got = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if got != Some(expected) {
            return (StatusCode::UNAUTHORIZED, "Unauthorized\n").into_response();
        }
    }
    let Some(query) = params.get("query").cloned() else {
        return json(
            StatusCode::BAD_REQUEST,
            r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": unknown position: parse error: no expression found in input"}"#.into(),
        );
    };
    fake.seen.lock().unwrap().push(query.clone());
    match query.as_str() {
        "vector(1)" => json(StatusCode::OK, vector(&["1"])),
        "scalar(42)" => json(
            StatusCode::OK,
            r#"{"status":"success","data":{"resultType":"scalar","result":[1763776800.781,"42"]}}"#
                .into(),
        ),
        "empty" => json(StatusCode::OK, vector(&[])),
        "nan" => json(StatusCode::OK, vector(&["NaN"])),
        "two" => json(StatusCode::OK, vector(&["1", "0"])),
        "sum(" => json(
            StatusCode::BAD_REQUEST,
            r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:5: parse error: unclosed left parenthesis"}"#.into(),
        ),
        "boom" => (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response(),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            json(StatusCode::OK, vector(&["1"]))
        }
        "tenant" => match headers.get("x-scope-orgid").map(|v| v.as_bytes()) {
            Some(b"team-a") => json(StatusCode::OK, vector(&["7"])),
            _ => (StatusCode::UNAUTHORIZED, "no org id\n").into_response(),
        },
        // Anything else: a one-sample vector, so query encoding can be
        // checked through `seen`.
        _ => json(StatusCode::OK, vector(&["99.5"])),
    }
}

/// Starts a fake Prometheus under `prefix` and returns its base address.
async fn start(auth: Auth, prefix: &str) -> (String, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let app = Router::new()
        .route(&format!("{prefix}/api/v1/query"), get(api_query))
        .with_state(Fake { auth, seen: seen.clone() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}{prefix}"), seen)
}

fn provider(address: &str) -> Provider {
    build_provider(&local_config(ProviderKind::Prometheus, address)).unwrap()
}

#[tokio::test]
async fn vector_with_one_sample_is_its_value_and_the_query_arrives_intact() {
    let (address, seen) = start(Auth::None, "").await;
    let query = r#"sum(rate(http_requests_total{code!~"5..",path="/a b+c"}[1m])) * 100"#;
    assert_eq!(provider(&address).query(query).await, Ok(99.5));
    assert_eq!(seen.lock().unwrap().as_slice(), [query]);
}

#[tokio::test]
async fn scalar_result_is_its_value() {
    let (address, _) = start(Auth::None, "").await;
    assert_eq!(provider(&address).query("scalar(42)").await, Ok(42.0));
}

#[tokio::test]
async fn empty_vector_is_no_data() {
    let (address, _) = start(Auth::None, "").await;
    assert_eq!(provider(&address).query("empty").await, Err(QueryError::NoData { query: "empty".into() }));
}

#[tokio::test]
async fn nan_sample_is_not_a_number() {
    let (address, _) = start(Auth::None, "").await;
    assert_eq!(
        provider(&address).query("nan").await,
        Err(QueryError::NotANumber { value: "NaN".into(), query: "nan".into() })
    );
}

#[tokio::test]
async fn two_series_are_refused() {
    let (address, _) = start(Auth::None, "").await;
    assert_eq!(
        provider(&address).query("two").await,
        Err(QueryError::MultipleSeries { count: 2, query: "two".into() })
    );
}

#[tokio::test]
async fn status_error_surfaces_error_type_and_message() {
    let (address, _) = start(Auth::None, "").await;
    assert_eq!(
        provider(&address).query("sum(").await,
        Err(QueryError::QueryFailed {
            error_type: "bad_data".into(),
            message: "invalid parameter \"query\": 1:5: parse error: unclosed left parenthesis".into(),
            query: "sum(".into()
        })
    );
}

#[tokio::test]
async fn http_500_is_an_http_error_with_the_body() {
    let (address, _) = start(Auth::None, "").await;
    assert_eq!(
        provider(&address).query("boom").await,
        Err(QueryError::Http { status: 500, body: "internal error".into() })
    );
}

#[tokio::test]
async fn slow_answer_times_out_at_the_configured_timeout() {
    let (address, _) = start(Auth::None, "").await;
    let mut config = local_config(ProviderKind::Prometheus, address);
    config.timeout = Some(Duration::from_millis(300));
    let provider = build_provider(&config).unwrap();
    let started = Instant::now();
    let result = provider.query("slow").await;
    assert_eq!(result, Err(QueryError::Timeout(Duration::from_millis(300))));
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn bearer_token_is_sent_and_checked() {
    let (address, _) = start(Auth::Exactly("Bearer s3cret"), "").await;
    let mut config = local_config(ProviderKind::Prometheus, address);
    assert!(matches!(build_provider(&config).unwrap().query("up").await, Err(QueryError::Http { status: 401, .. })));
    config.credentials = Credentials::Bearer("wrong".into());
    assert!(matches!(build_provider(&config).unwrap().query("up").await, Err(QueryError::Http { status: 401, .. })));
    config.credentials = Credentials::Bearer("s3cret".into());
    assert_eq!(build_provider(&config).unwrap().query("up").await, Ok(99.5));
}

#[tokio::test]
async fn basic_auth_is_sent_and_checked() {
    // base64("alice:hunter2")
    let (address, _) = start(Auth::Exactly("Basic YWxpY2U6aHVudGVyMg=="), "").await;
    let mut config = local_config(ProviderKind::Prometheus, address);
    config.credentials = Credentials::Basic { username: "alice".into(), password: "wrong".into() };
    assert!(matches!(build_provider(&config).unwrap().query("up").await, Err(QueryError::Http { status: 401, .. })));
    config.credentials = Credentials::Basic { username: "alice".into(), password: "hunter2".into() };
    assert_eq!(build_provider(&config).unwrap().query("up").await, Ok(99.5));
}

#[tokio::test]
async fn custom_headers_are_sent() {
    let (address, _) = start(Auth::None, "").await;
    let mut config = local_config(ProviderKind::Prometheus, address);
    assert!(matches!(
        build_provider(&config).unwrap().query("tenant").await,
        Err(QueryError::Http { status: 401, .. })
    ));
    config.headers = BTreeMap::from([("X-Scope-OrgID".to_string(), "team-a".to_string())]);
    assert_eq!(build_provider(&config).unwrap().query("tenant").await, Ok(7.0));
}

#[tokio::test]
async fn address_path_prefix_is_kept() {
    let (address, _) = start(Auth::None, "/prometheus").await;
    assert!(address.ends_with("/prometheus"));
    assert_eq!(provider(&address).query("up").await, Ok(99.5));
    assert_eq!(provider(&format!("{address}/")).query("up").await, Ok(99.5));
}

#[tokio::test]
async fn unreachable_server_is_a_transport_error() {
    // Bind then drop a listener: the port is then (almost surely) closed.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let result = provider(&format!("http://{addr}")).query("up").await;
    match result {
        Err(QueryError::Transport(message)) => {
            assert!(message.contains(&addr.to_string()), "{message}")
        }
        other => panic!("expected a transport error, got {other:?}"),
    }
}

#[tokio::test]
async fn queries_run_on_spawned_tasks() {
    // The operator runs checks concurrently: the futures must be Send.
    let (address, _) = start(Auth::None, "").await;
    let p = provider(&address);
    let handle = tokio::spawn(async move { p.query("up").await });
    assert_eq!(handle.await.unwrap(), Ok(99.5));
}

/// The generic HTTP JSON provider against a real server that checks the
/// query parameter and the bearer token.
#[tokio::test]
async fn http_json_provider_speaks_its_contract() {
    async fn metric(Query(params): Query<HashMap<String, String>>, headers: HeaderMap) -> Response {
        if headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()) != Some(b"Bearer tok") {
            return (StatusCode::UNAUTHORIZED, "no").into_response();
        }
        match (params.get("query").map(String::as_str), params.get("tenant")) {
            (Some("error_rate{app=\"web\"}"), Some(t)) if t == "a" => {
                json(StatusCode::OK, r#"{"value": 0.25, "unit": "%"}"#.into())
            }
            (Some("none"), _) => json(StatusCode::OK, "[]".into()),
            (None, _) => (StatusCode::NOT_FOUND, "say what").into_response(),
            _ => (StatusCode::BAD_REQUEST, "bad query").into_response(),
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, Router::new().route("/metric", get(metric))).await.unwrap() });

    let mut config = local_config(ProviderKind::HttpJson, format!("http://{addr}/metric?tenant=a"));
    config.credentials = Credentials::Bearer("tok".into());
    let p = build_provider(&config).unwrap();
    assert_eq!(p.query("error_rate{app=\"web\"}").await, Ok(0.25));
    assert_eq!(p.query("none").await, Err(QueryError::NoData { query: "none".into() }));
    assert_eq!(p.query("other").await, Err(QueryError::Http { status: 400, body: "bad query".into() }));

    config.credentials = Credentials::None;
    assert!(matches!(build_provider(&config).unwrap().query("none").await, Err(QueryError::Http { status: 401, .. })));
}

/// A config for a backend on 127.0.0.1, which the strict default egress policy refuses.
fn local_config(kind: ProviderKind, address: impl Into<String>) -> ProviderConfig {
    let mut config = ProviderConfig::new(kind, address);
    config.egress = EgressPolicy::strict().allowing_loopback();
    config
}

/// Issue 11, defect 7: a backend answering a 300 MB body. The provider reads at most
/// 1 MiB and fails the query naming the limit; the server sees the client hang up.
#[tokio::test]
async fn a_huge_answer_is_refused_after_the_body_cap() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let _ = stream.read(&mut [0u8; 4096]);
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n");
        let chunk = vec![b' '; 64 * 1024];
        let mut sent = 0usize;
        while sent < 300 * 1024 * 1024 && stream.write_all(&chunk).is_ok() {
            sent += chunk.len();
        }
        sent
    });
    let provider = build_provider(&local_config(ProviderKind::Prometheus, format!("http://{addr}"))).unwrap();
    let error = provider.query("up").await.unwrap_err();
    assert!(matches!(&error, QueryError::BadResponse(m) if m.contains("1048576 bytes (1 MiB)")), "{error:?}");
    drop(provider);
    let sent = tokio::task::spawn_blocking(move || server.join().unwrap()).await.unwrap();
    assert!(sent < 32 * 1024 * 1024, "the server sent {sent} bytes before the client hung up");
}

/// Issue 11, defect 12: by default a backend on loopback or link-local addresses is
/// refused before any request, with a message saying how to allow it.
#[tokio::test]
async fn restricted_backends_are_refused_by_default() {
    let (address, seen) = start(Auth::None, "").await;
    for address in [address.as_str(), "http://169.254.169.254", "http://[fe80::1]:9090"] {
        let provider = build_provider(&ProviderConfig::new(ProviderKind::Prometheus, address)).unwrap();
        let error = provider.query("up").await.unwrap_err();
        assert!(
            matches!(&error, QueryError::InvalidConfig(m) if m.contains("egress policy") && m.contains("--egress-allow")),
            "{address}: {error:?}"
        );
    }
    assert!(seen.lock().unwrap().is_empty(), "the local backend was never asked");
}

/// Issue 11, defect 2: an address with a password (as a MetricTemplate Secret's
/// `address` may hold) never appears in an error, whatever fails.
#[tokio::test]
async fn errors_never_show_the_address_credentials() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let address = format!("http://alice:pw-9f8e7d6c@127.0.0.1:{closed}/prom/s3cr3t-path");
    let error =
        build_provider(&local_config(ProviderKind::Prometheus, address)).unwrap().query("up").await.unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, QueryError::Transport(_)), "{message}");
    assert!(message.contains(&format!("http://127.0.0.1:{closed}/…")), "{message}");
    for secret in ["alice", "pw-9f8e7d6c", "s3cr3t-path"] {
        assert!(!message.contains(secret), "{secret} in {message}");
    }
    let invalid =
        build_provider(&local_config(ProviderKind::Prometheus, "http://alice:pw-9f8e7d6c@pr om")).unwrap_err();
    assert!(!invalid.to_string().contains("pw-9f8e7d6c"), "{invalid}");
}
