//! Go-style durations as Canaries and webhooks spell them (`interval`, `timeout`):
//! `parse_duration` never panics, and what it accepts reads back the same when written
//! in nanoseconds.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The property lives in src/lib.rs, where a stable test replays the committed seeds.
fuzz_target!(|data: &[u8]| petrel_fuzz::duration(data));
