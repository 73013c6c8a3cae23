//! Go-style durations as Canaries and webhooks spell them (`interval`, `timeout`):
//! `parse_duration` never panics, and what it accepts reads back the same when written
//! in nanoseconds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use petrel::core::strategy::parse_duration;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(duration) = parse_duration(text) {
        assert!(duration.as_nanos() <= i64::MAX as u128, "{text:?} parsed beyond Go's range: {duration:?}");
        let nanos = format!("{}ns", duration.as_nanos());
        assert_eq!(parse_duration(&nanos), Ok(duration), "{text:?} -> {nanos}");
    }
});
