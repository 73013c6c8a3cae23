//! How the benchmark binaries print what they measure (shared by `fleet-bench` and
//! `hub-bench`).

use std::time::Duration;

/// A duration in µs below a millisecond, in ms above.
pub fn fmt(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{:.1} µs", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    }
}

/// A field of `/proc/self/status` in KiB (Linux), such as `VmRSS:` or `VmHWM:`.
pub fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}
