//! The properties the fuzz targets check, one function each, taking the fuzzer's bytes.
//! The targets in fuzz_targets/ call them under libFuzzer (nightly, `./scripts/fuzz`);
//! `operator/tests/fuzz_seeds.rs` includes this file and replays every committed seed
//! (fuzz/seeds/<target>/) through them on stable, in every `cargo test`.
//!
//! A function returns quietly for input it does not apply to and panics when a property
//! fails, which is how libFuzzer (and a test) sees a failure.

use std::collections::BTreeMap;

use metrics_providers::http_json::parse_json_response;
use metrics_providers::prometheus::{parse_answer, parse_response};
use metrics_providers::template::MAX_QUERY_BYTES;
use metrics_providers::{QueryLanguage, QueryVars, render_query};
use petrel::core::strategy::parse_duration;

/// Go-style durations as Canaries and webhooks spell them (`interval`, `timeout`):
/// `parse_duration` never panics, and what it accepts reads back the same when written
/// in nanoseconds.
pub fn duration(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(duration) = parse_duration(text) {
        assert!(duration.as_nanos() <= i64::MAX as u128, "{text:?} parsed beyond Go's range: {duration:?}");
        let nanos = format!("{}ns", duration.as_nanos());
        assert_eq!(parse_duration(&nanos), Ok(duration), "{text:?} -> {nanos}");
    }
}

/// MetricTemplate queries: whatever the template and the variables, rendering returns
/// (the fuzzer's `-timeout` catches a render that does not), never panics, and stays
/// within its output bound; a variable inside a PromQL string never ends the string.
/// The input is the template, then optionally a 0 byte and the value of `variables.v`.
pub fn query_template(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (template, value) = text.split_once('\0').unwrap_or((text, "inbound"));
    let vars = QueryVars {
        name: "podinfo".into(),
        namespace: "test".into(),
        target: "podinfo".into(),
        service: "podinfo".into(),
        interval: "1m".into(),
        variables: BTreeMap::from([("v".to_string(), value.to_string())]),
        ..QueryVars::default()
    };
    for language in [QueryLanguage::PromQl, QueryLanguage::Verbatim] {
        if let Ok(query) = render_query(template, &vars, language) {
            assert!(query.len() <= MAX_QUERY_BYTES, "{} bytes rendered", query.len());
        }
    }
    let quoted = render_query("up{a=\"{{ variables.v }}\"}", &vars, QueryLanguage::PromQl);
    let query = quoted.expect("any value renders inside a string");
    let body = &query["up{a=\"".len()..query.len() - "\"}".len()];
    let mut escaped = false;
    for c in body.chars() {
        assert!(escaped || c != '"', "an unescaped quote in {query:?}");
        assert!(c != '\n', "a raw line break in {query:?}");
        escaped = !escaped && c == '\\';
    }
    assert!(!escaped, "a dangling backslash in {query:?}");
}

/// The credentials of the webhook URL [`answers`] quotes answers for.
const CREDENTIALS: [&str; 3] = ["gate-user1", "gate-pw-2", "tok3n-4"];

/// What petrel parses from answers it gets over the network: Prometheus' answers (the
/// single number an analysis needs, and whole answers as the e2e tests read them), the
/// http-json contract, and the quote of a webhook's answer in
/// an error message. None panics; a webhook's quote is bounded and never holds the
/// credentials of the webhook's URL, whatever the server echoes. The first byte picks
/// the HTTP status, the rest is the body.
pub fn answers(data: &[u8]) {
    let Some((&status, body)) = data.split_first() else { return };
    let status = 100 + u16::from(status) * 2;
    let body = String::from_utf8_lossy(body);
    let _ = parse_response(status, &body, "sum(up)");
    let _ = parse_answer(status, &body, "sum(up)");
    let _ = parse_json_response(status, &body, "sum(up)");

    let url = reqwest::Url::parse("http://gate-user1:gate-pw-2@gate.example:8080/approve?token=tok3n-4")
        .expect("a constant, valid URL");
    // The server echoes the request around the body it was given.
    let echoed = format!("{body} {url} {body}");
    let quoted = petrel::analysis::webhooks::quote_answer(&echoed, &url);
    assert!(quoted.chars().count() <= 201, "{} characters quoted", quoted.chars().count());
    for credential in CREDENTIALS {
        assert!(!quoted.contains(credential), "{credential} in {quoted:?}");
    }
}
