//! Figures of a benchmark round: percentiles, per-process CPU and memory from `/proc`,
//! ratios. Pure except for the `/proc` readers.

use std::time::Duration;

/// The `q`-quantile (0–1) of `values` by the nearest-rank method: the smallest value with
/// at least `q` of the values at or below it. `None` for no values.
pub fn quantile(values: &[Duration], q: f64) -> Option<Duration> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort();
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.saturating_sub(1).min(sorted.len() - 1)])
}

/// `a / b`, or `None` when `b` is zero (a ratio over nothing says nothing).
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b != 0.0 && a.is_finite() && b.is_finite()).then(|| a / b)
}

/// CPU time (user + system) a process has used so far, from `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    cpu_time_of_stat(&stat, clock_ticks_per_second())
}

/// Parses `utime` and `stime` (fields 14 and 15) of a `/proc/<pid>/stat` line. The
/// command name (field 2) may hold spaces and parentheses, so fields are counted after
/// its last `)`.
pub fn cpu_time_of_stat(stat: &str, ticks_per_second: u64) -> Option<Duration> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // after_name starts at field 3 (state): utime is field 14, so index 11.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    if ticks_per_second == 0 {
        return None;
    }
    Some(Duration::from_secs_f64((utime + stime) as f64 / ticks_per_second as f64))
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// A `/proc/<pid>/status` field in bytes, e.g. `VmRSS:` (resident now) or `VmHWM:`
/// (peak resident).
pub fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field_bytes(&status, field)
}

/// Parses a `kB` field of a `/proc/<pid>/status` text into bytes.
pub fn status_field_bytes(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok().map(|kib| kib * 1024))
}

/// The 1-, 5- and 15-minute load averages of the machine (`/proc/loadavg`).
pub fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([fields.next()??, fields.next()??, fields.next()??])
}

/// The cumulative buckets of one Prometheus histogram series in a scrape (text format):
/// `(le, count)` of every `<name>_bucket` line whose labels contain `selector`, in order.
pub fn histogram_buckets(scrape: &str, name: &str, selector: &str) -> Vec<(f64, u64)> {
    let prefix = format!("{name}_bucket{{");
    scrape
        .lines()
        .filter(|line| line.starts_with(&prefix) && line.contains(selector))
        .filter_map(|line| {
            let (labels, count) = line.rsplit_once(' ')?;
            let le = labels.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, count.trim().parse::<f64>().ok()? as u64))
        })
        .collect()
}

/// How many observations a histogram counted between two scrapes (its `+Inf` bucket):
/// `None` when the later scrape has no such histogram.
pub fn histogram_count(before: &[(f64, u64)], after: &[(f64, u64)]) -> Option<f64> {
    let (_, total) = after.iter().find(|(le, _)| le.is_infinite())?;
    let earlier = before.iter().find(|(le, _)| le.is_infinite()).map_or(0, |(_, count)| *count);
    Some(total.saturating_sub(earlier) as f64)
}

/// The `q`-quantile of what a histogram counted between two scrapes (`before` and `after`,
/// as [`histogram_buckets`] reads them): the upper bound of the first bucket holding it.
/// `None` when nothing was counted or the buckets differ.
pub fn histogram_quantile(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> Option<f64> {
    let counted = |at: usize| {
        let earlier = before.get(at).filter(|(le, _)| *le == after[at].0).map_or(0, |(_, count)| *count);
        after[at].1.saturating_sub(earlier)
    };
    if !before.is_empty() && before.len() != after.len() {
        return None;
    }
    let total = counted(after.len().checked_sub(1)?);
    if total == 0 {
        return None;
    }
    let wanted = (q.clamp(0.0, 1.0) * total as f64).ceil().max(1.0) as u64;
    (0..after.len()).find(|&at| counted(at) >= wanted).map(|at| after[at].0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let values: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(quantile(&values, 0.5), Some(ms(50)));
        assert_eq!(quantile(&values, 0.99), Some(ms(99)));
        assert_eq!(quantile(&values, 1.0), Some(ms(100)));
        assert_eq!(quantile(&values, 0.0), Some(ms(1)));
        assert_eq!(quantile(&[ms(7), ms(3)], 0.5), Some(ms(3)), "unsorted input");
        assert_eq!(quantile(&[ms(7)], 0.99), Some(ms(7)));
        assert_eq!(quantile(&[], 0.5), None);
        // Ten values: p99 is the largest, p50 the fifth.
        let ten: Vec<Duration> = (1..=10).map(ms).collect();
        assert_eq!(quantile(&ten, 0.99), Some(ms(10)));
        assert_eq!(quantile(&ten, 0.5), Some(ms(5)));
    }

    #[test]
    fn ratio_of_nothing_is_none() {
        assert_eq!(ratio(1.0, 2.0), Some(0.5));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(f64::NAN, 1.0), None);
    }

    #[test]
    fn parses_proc_stat_with_a_tricky_command_name() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
        let stat = "4242 (kube ) api (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 12 0";
        assert_eq!(cpu_time_of_stat(stat, 100), Some(Duration::from_secs(3)));
        assert_eq!(cpu_time_of_stat("garbage", 100), None);
    }

    #[test]
    fn parses_proc_status_fields() {
        let status =
            "Name:\tpetrel\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\nRssAnon:\t   28672 kB\nRssFile:\t   12288 kB\n";
        assert_eq!(status_field_bytes(status, "VmRSS:"), Some(40 * 1024 * 1024));
        assert_eq!(status_field_bytes(status, "VmHWM:"), Some(50 * 1024 * 1024));
        assert_eq!(status_field_bytes(status, "RssAnon:"), Some(28 * 1024 * 1024));
        assert_eq!(status_field_bytes(status, "RssFile:"), Some(12 * 1024 * 1024));
        assert_eq!(status_field_bytes(status, "VmSwap:"), None);
    }

    #[test]
    fn histogram_quantiles_are_bucket_bounds_of_what_was_counted_between_scrapes() {
        let scrape = |counts: [u64; 4]| {
            format!(
                "# TYPE petrel_reconcile_wait_seconds histogram\n\
                 petrel_reconcile_wait_seconds_bucket{{controller=\"canary\",le=\"0.1\"}} {}\n\
                 petrel_reconcile_wait_seconds_bucket{{controller=\"canary\",le=\"1.0\"}} {}\n\
                 petrel_reconcile_wait_seconds_bucket{{controller=\"canary\",le=\"5.0\"}} {}\n\
                 petrel_reconcile_wait_seconds_bucket{{controller=\"canary\",le=\"+Inf\"}} {}\n\
                 petrel_reconcile_wait_seconds_bucket{{controller=\"rollout\",le=\"0.1\"}} 7\n",
                counts[0], counts[1], counts[2], counts[3]
            )
        };
        let read =
            |counts| histogram_buckets(&scrape(counts), "petrel_reconcile_wait_seconds", "controller=\"canary\"");
        let before = read([10, 10, 10, 10]);
        assert_eq!(before.len(), 4, "the other controller's series is not read");
        assert_eq!(before[3], (f64::INFINITY, 10));
        // Between the scrapes: 50 within 0.1 s, 40 more within 1 s, 10 more within 5 s.
        let after = read([60, 100, 110, 110]);
        assert_eq!(histogram_quantile(&before, &after, 0.5), Some(0.1));
        assert_eq!(histogram_quantile(&before, &after, 0.9), Some(1.0));
        assert_eq!(histogram_quantile(&before, &after, 0.99), Some(5.0));
        assert_eq!(histogram_quantile(&[], &after, 0.6), Some(1.0), "no earlier scrape: all of it (66 of 110)");
        assert_eq!(histogram_quantile(&before, &before, 0.5), None, "nothing counted between");
        assert_eq!(histogram_quantile(&before, &[], 0.5), None);
        assert_eq!(histogram_count(&before, &after), Some(100.0));
        assert_eq!(histogram_count(&[], &after), Some(110.0), "no earlier scrape: all of it");
        assert_eq!(histogram_count(&before, &[]), None, "no histogram: no count, not zero");
    }
}
