//! What petrel parses from answers it gets over the network: Prometheus' instant and
//! range query answers, the http-json contract, and the quote of a webhook's answer in
//! an error message. None panics; a webhook's quote is bounded and never holds the
//! credentials of the webhook's URL, whatever the server echoes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use metrics_providers::http_json::parse_json_response;
use metrics_providers::prometheus::{parse_range_response, parse_response};

const CREDENTIALS: [&str; 3] = ["gate-user1", "gate-pw-2", "tok3n-4"];

fuzz_target!(|data: &[u8]| {
    let Some((&status, body)) = data.split_first() else { return };
    let status = 100 + u16::from(status) * 2;
    let body = String::from_utf8_lossy(body);
    let _ = parse_response(status, &body, "sum(up)");
    let _ = parse_range_response(status, &body, "sum(up)");
    let _ = parse_json_response(status, &body, "sum(up)");

    let url = reqwest::Url::parse("http://gate-user1:gate-pw-2@gate.example:8080/approve?token=tok3n-4").unwrap();
    // The server echoes the request around the body it was given.
    let echoed = format!("{body} {url} {body}");
    let quoted = petrel::analysis::webhooks::quote_answer(&echoed, &url);
    assert!(quoted.chars().count() <= 201, "{} characters quoted", quoted.chars().count());
    for credential in CREDENTIALS {
        assert!(!quoted.contains(credential), "{credential} in {quoted:?}");
    }
});
