//! MetricTemplate queries: whatever the template and the variables, rendering returns
//! (the fuzzer's `-timeout` catches a render that does not), never panics, and stays
//! within its output bound. The input is the template, then optionally a 0 byte and the
//! value of `variables.v`.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The property lives in src/lib.rs, where a stable test replays the committed seeds.
fuzz_target!(|data: &[u8]| petrel_fuzz::query_template(data));
