//! What petrel parses from answers it gets over the network: Prometheus' instant and
//! range query answers, the http-json contract, and the quote of a webhook's answer in
//! an error message. None panics; a webhook's quote is bounded and never holds the
//! credentials of the webhook's URL, whatever the server echoes.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The property lives in src/lib.rs, where a stable test replays the committed seeds.
fuzz_target!(|data: &[u8]| petrel_fuzz::answers(data));
