//! MetricTemplate queries: whatever the template and the variables, rendering returns
//! (the fuzzer's `-timeout` catches a render that does not), never panics, and stays
//! within its output bound. The input is the template, then optionally a 0 byte and the
//! value of `variables.v`.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use metrics_providers::template::MAX_QUERY_BYTES;
use metrics_providers::{QueryLanguage, QueryVars, render_query};

fuzz_target!(|data: &[u8]| {
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
    // A value inside a PromQL string never ends the string early.
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
});
