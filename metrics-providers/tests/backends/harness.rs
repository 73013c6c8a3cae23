//! A fake vendor API on 127.0.0.1: it records every request, checks it
//! against what the vendor documents (a per-backend function), and answers
//! what the test case asks for.
//!
//! [`run_cases`] then drives one backend through the answers every backend
//! must survive: a value, an empty result, several series, the vendor's
//! error body, 401, 429 with `Retry-After`, a 5xx, an answer slower than the
//! timeout, and garbage. Each ends in the expected value or in an error
//! whose message names the backend; none passes by accident, none panics.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use metrics_providers::{MetricProvider, ProviderConfig, ProviderKind, QueryError, build_provider, describe_failure};

/// One request the fake received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    /// The raw query string (for signatures).
    pub raw_query: String,
    /// Query parameters, decoded.
    pub query: BTreeMap<String, String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }

    pub fn body_text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap_or("<binary>")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// What the fake answers.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    pub retry_after: Option<&'static str>,
    pub delay: Duration,
}

impl Answer {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<String>) -> Self {
        Self { status, content_type, body: body.into(), retry_after: None, delay: Duration::ZERO }
    }

    pub fn json(status: u16, body: impl Into<String>) -> Self {
        Self::new(status, "application/json", body)
    }
}

/// Checks one request as the vendor documents it.
pub type Check = Arc<dyn Fn(&Recorded) -> Result<(), String> + Send + Sync>;
/// Answers requests to endpoints other than the query's (token services).
pub type Aux = Arc<dyn Fn(&Recorded) -> Option<Answer> + Send + Sync>;

#[derive(Clone)]
struct Fake {
    check: Check,
    aux: Aux,
    answer: Arc<Mutex<Answer>>,
    requests: Arc<Mutex<Vec<Recorded>>>,
    failures: Arc<Mutex<Vec<String>>>,
}

async fn handle(State(fake): State<Fake>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 4 << 20).await.unwrap_or_default();
    let raw_query = parts.uri.query().unwrap_or_default().to_string();
    let query = url_pairs(&raw_query);
    let recorded = Recorded {
        method: parts.method,
        path: parts.uri.path().to_string(),
        raw_query,
        query,
        headers: parts.headers,
        body,
    };
    fake.requests.lock().unwrap().push(recorded.clone());
    let answer = match (fake.aux)(&recorded) {
        Some(answer) => answer,
        None => {
            if let Err(why) = (fake.check)(&recorded) {
                fake.failures.lock().unwrap().push(format!("{} {}: {why}", recorded.method, recorded.path));
                return (StatusCode::IM_A_TEAPOT, format!("request check failed: {why}")).into_response();
            }
            fake.answer.lock().unwrap().clone()
        }
    };
    tokio::time::sleep(answer.delay).await;
    let mut response = (StatusCode::from_u16(answer.status).unwrap(), answer.body).into_response();
    response.headers_mut().insert("content-type", answer.content_type.parse().unwrap());
    if let Some(after) = answer.retry_after {
        response.headers_mut().insert("retry-after", after.parse().unwrap());
    }
    response
}

fn url_pairs(raw: &str) -> BTreeMap<String, String> {
    reqwest::Url::parse(&format!("http://x/?{raw}")).unwrap().query_pairs().into_owned().collect()
}

/// A running fake vendor.
pub struct Server {
    pub address: String,
    fake: Fake,
}

impl Server {
    pub async fn start(check: Check, aux: Aux, answer: Answer) -> Self {
        let fake = Fake {
            check,
            aux,
            answer: Arc::new(Mutex::new(answer)),
            requests: Arc::default(),
            failures: Arc::default(),
        };
        let app = Router::new().fallback(handle).with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { address, fake }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.fake.requests.lock().unwrap().clone()
    }

    pub fn failures(&self) -> Vec<String> {
        self.fake.failures.lock().unwrap().clone()
    }
}

pub fn no_aux() -> Aux {
    Arc::new(|_| None)
}

/// One backend, as the harness drives it.
pub struct Vendor {
    pub kind: ProviderKind,
    /// The provider config for a fake at `address`.
    pub config: Arc<dyn Fn(&str) -> ProviderConfig + Send + Sync>,
    pub check: Check,
    pub aux: Aux,
    pub query: &'static str,
    /// An answer holding one value, and that value.
    pub value: (Answer, f64),
    /// An answer with no series.
    pub empty: Answer,
    /// An answer with several series.
    pub several: Answer,
    /// The vendor's error answer for a bad query, and a text its message must show.
    pub error: (Answer, &'static str),
    /// An unauthorized answer in the vendor's shape.
    pub unauthorized: Answer,
    /// Values of the Secret, which no message may show.
    pub secrets: Vec<&'static str>,
}

/// The outcome every backend must produce for one kind of answer.
enum Expect {
    Value(f64),
    Error(fn(&QueryError) -> bool, &'static str),
}

/// Runs `vendor` through every case; panics (failing the test) with the
/// case's name on the first deviation.
pub async fn run_cases(vendor: &Vendor) {
    let slow = Answer { delay: Duration::from_secs(3), ..vendor.value.0.clone() };
    let limited = Answer { retry_after: Some("7"), ..Answer::json(429, r#"{"errors":["Too many requests"]}"#) };
    let cases: Vec<(&str, Answer, Expect)> = vec![
        ("value", vendor.value.0.clone(), Expect::Value(vendor.value.1)),
        ("empty", vendor.empty.clone(), Expect::Error(|e| matches!(e, QueryError::NoData { .. }), "no data")),
        (
            "several series",
            vendor.several.clone(),
            Expect::Error(|e| matches!(e, QueryError::MultipleSeries { .. }), "series"),
        ),
        ("error body", vendor.error.0.clone(), Expect::Error(|_| true, vendor.error.1)),
        (
            "401",
            vendor.unauthorized.clone(),
            Expect::Error(|e| matches!(e, QueryError::Http { status: 401, .. }), "401"),
        ),
        (
            "429",
            limited,
            Expect::Error(
                |e| matches!(e, QueryError::RateLimited { retry_after: Some(after), .. } if after == "7"),
                "retry after 7",
            ),
        ),
        (
            "500",
            Answer::new(500, "text/plain", "upstream connect error\n"),
            Expect::Error(|e| matches!(e, QueryError::Http { status: 500, .. }), "500"),
        ),
        ("slow", slow, Expect::Error(|e| matches!(e, QueryError::Timeout(_)), "did not answer within")),
        (
            "garbage",
            Answer::new(200, "text/html", "<html><body><h1>Welcome to nginx!</h1></body></html>"),
            Expect::Error(|e| matches!(e, QueryError::BadResponse(_)), "unexpected response"),
        ),
    ];
    for (name, answer, expect) in cases {
        let server = Server::start(vendor.check.clone(), vendor.aux.clone(), answer).await;
        let mut config = (vendor.config)(&server.address);
        config.timeout = Some(if name == "slow" { Duration::from_millis(300) } else { Duration::from_secs(5) });
        let provider = build_provider(&config).unwrap_or_else(|e| panic!("{}: {name}: build: {e}", vendor.kind));
        let started = std::time::Instant::now();
        let result = provider.query(vendor.query).await;
        let context = format!("{} case {name:?}: {result:?}", vendor.kind);
        assert!(
            server.failures().is_empty(),
            "{context}: requests broke the vendor's contract: {:?}",
            server.failures()
        );
        assert!(!server.requests().is_empty(), "{context}: no request reached the fake");
        match (expect, &result) {
            (Expect::Value(expected), Ok(value)) => assert_eq!(*value, expected, "{context}"),
            (Expect::Error(matches, text), Err(error)) => {
                assert!(matches(error), "{context}: wrong kind of error");
                let message = describe_failure(vendor.kind, error);
                assert!(message.starts_with(&format!("{} provider: ", vendor.kind)), "{context}: {message}");
                assert!(message.contains(text), "{context}: {message:?} should contain {text:?}");
                for secret in &vendor.secrets {
                    assert!(!message.contains(secret), "{context}: {message:?} shows a secret");
                }
            }
            _ => panic!("{context}: unexpected outcome"),
        }
        if name == "slow" {
            assert!(started.elapsed() < Duration::from_secs(2), "{context}: took {:?}", started.elapsed());
        }
    }
    echo_never_leaks(vendor).await;
}

/// A hostile vendor echoes everything it received (headers, query string,
/// body) in an error: no Secret value may come back in the message.
async fn echo_never_leaks(vendor: &Vendor) {
    let echo: Aux = {
        let aux = vendor.aux.clone();
        Arc::new(move |request: &Recorded| {
            if let Some(answer) = aux(request) {
                return Some(answer);
            }
            let mut text = String::new();
            for (name, value) in &request.headers {
                text.push_str(&format!("{name}={} ", value.to_str().unwrap_or_default()));
            }
            text.push_str(&format!("query={} body={}", request.raw_query, request.body_text()));
            Some(Answer::new(401, "text/plain", text))
        })
    };
    let server = Server::start(vendor.check.clone(), echo, vendor.value.0.clone()).await;
    let provider = build_provider(&(vendor.config)(&server.address)).unwrap();
    let error = provider.query(vendor.query).await.expect_err("the echo is a 401");
    let message = describe_failure(vendor.kind, &error);
    assert!(
        message.contains("<redacted>") || vendor.secrets.is_empty(),
        "{}: the echo should show redactions: {message}",
        vendor.kind
    );
    for secret in &vendor.secrets {
        assert!(!message.contains(secret), "{}: {message:?} shows {secret:?}", vendor.kind);
        assert!(!format!("{error:?}").contains(secret), "{}: Debug of {error:?} shows {secret:?}", vendor.kind);
    }
}

/// Seconds since 1970, now.
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// `from` and `to` parameters (in `unit` per second) spanning `window`
/// seconds and ending now.
pub fn check_window(request: &Recorded, from: &str, to: &str, unit: u64, window: u64) -> Result<(), String> {
    let number = |name: &str| -> Result<u64, String> {
        request.param(name).ok_or(format!("no {name}"))?.parse::<u64>().map_err(|_| format!("{name} is not an integer"))
    };
    let (from, to) = (number(from)?, number(to)?);
    if to - from != window * unit {
        return Err(format!("window {} is not {window} s", (to - from) / unit));
    }
    if (to / unit).abs_diff(now_secs()) > 30 {
        return Err(format!("to {to} is not now"));
    }
    Ok(())
}

/// `Ok` when `actual == expected`, naming `what` otherwise.
pub fn expect_eq<T: PartialEq + std::fmt::Debug>(what: &str, actual: T, expected: T) -> Result<(), String> {
    if actual == expected { Ok(()) } else { Err(format!("{what} is {actual:?}, expected {expected:?}")) }
}

/// A Secret from pairs.
pub fn secret(pairs: &[(&str, &str)]) -> metrics_providers::SecretData {
    pairs.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect::<BTreeMap<_, _>>().into()
}
