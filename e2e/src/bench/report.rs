//! The figures of a benchmark round and the side-by-side table (Markdown). Pure.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use super::stats::ratio;
use super::workload::{OperatorKind, Variant};

/// What one operator did with one workload (a round).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoundFigures {
    /// e.g. `petrel`, `petrel (main)`, `Flagger v1.41.0`.
    pub operator: String,
    pub n: usize,
    /// From creating the Canaries until every one is Initialized.
    pub init: Option<Duration>,
    pub init_requests: usize,
    /// Peak resident memory of the operator from its start to the end of the
    /// initialization (`VmHWM` then).
    pub init_peak_rss_bytes: u64,
    /// Operator requests per minute while every Canary is idle.
    pub idle_requests_per_minute: f64,
    /// Operator CPU while idle, in percent of one core.
    pub idle_cpu_percent: f64,
    pub idle_calls: Vec<(String, usize)>,
    /// Resident memory of the operator at the end of the idle window (`VmRSS`).
    pub idle_rss_bytes: u64,
    /// The two parts of it that matter: anonymous memory (the heap: caches and the rest,
    /// `RssAnon`) and file-backed pages (the binary's code, `RssFile`), so a smaller binary
    /// and a smaller heap can be told apart.
    pub idle_rss_anon_bytes: u64,
    pub idle_rss_file_bytes: u64,
    /// From each Deployment's image change to its Canary leaving the idle phase.
    pub detection_p50: Option<Duration>,
    pub detection_p99: Option<Duration>,
    /// petrel only: from a watch event reaching petrel to the start of the reconcile it
    /// woke, over the release (`petrel_reconcile_wait_seconds`; a bucket's upper bound).
    pub release_wait_p50: Option<f64>,
    pub release_wait_p99: Option<f64>,
    /// From each image change to the operator's first status write of its Canary, both as
    /// the API server completed them (the audit log): detection without the delay of the
    /// benchmark's own watch.
    pub api_detection_p50: Option<Duration>,
    pub api_detection_p99: Option<Duration>,
    /// From each image change to the operator's first write of the app's Deployment (the
    /// audit log): the canary's scale-up.
    pub scale_up_p50: Option<Duration>,
    pub scale_up_p99: Option<Duration>,
    /// The most of the operator's requests (watches left out) the API server held at once
    /// during the release (the audit log).
    pub release_most_in_flight: usize,
    /// petrel only: reconciles of Canaries during the release (woken and requeued alike;
    /// `petrel_reconcile_duration_seconds`).
    pub release_reconciles: Option<f64>,
    /// How many Canaries left idle (of n).
    pub detected: usize,
    /// From the first image change until every Canary is Succeeded.
    pub all_succeeded: Option<Duration>,
    pub succeeded: usize,
    /// During the release (first image change to all Succeeded, or the timeout).
    pub release_requests: usize,
    pub release_apiserver_cpu: Duration,
    pub release_operator_cpu: Duration,
    pub release_peak_rss_bytes: u64,
    pub release_calls: Vec<(String, usize)>,
    /// Peak resident memory of the operator over the whole round (`VmHWM`).
    pub peak_rss_bytes: u64,
    /// Machine load (1-minute average) at the start and the end of the round.
    pub load: (f64, f64),
}

/// One row of the comparison: a label, a value per operator, and whether lower is better.
struct Row {
    label: &'static str,
    value: fn(&RoundFigures) -> Option<f64>,
    show: fn(f64) -> String,
}

fn secs(v: f64) -> String {
    if v < 10.0 { format!("{v:.2} s") } else { format!("{v:.1} s") }
}

fn count(v: f64) -> String {
    let n = v.round() as u64;
    // Thousands separated by commas, as the docs write numbers.
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn per_minute(v: f64) -> String {
    if v < 100.0 { format!("{v:.1}") } else { count(v) }
}

fn percent(v: f64) -> String {
    format!("{v:.1}%")
}

fn mib(v: f64) -> String {
    format!("{:.1} MiB", v / (1024.0 * 1024.0))
}

fn per_canary(v: f64) -> String {
    format!("{v:.1}")
}

fn d(v: Option<Duration>) -> Option<f64> {
    v.map(|d| d.as_secs_f64())
}

const ROWS: &[Row] = &[
    Row { label: "initialize all N", value: |f| d(f.init), show: secs },
    Row { label: "requests to initialize", value: |f| Some(f.init_requests as f64), show: count },
    Row { label: "initialize: operator peak RSS (VmHWM)", value: |f| Some(f.init_peak_rss_bytes as f64), show: mib },
    Row { label: "idle: requests per minute", value: |f| Some(f.idle_requests_per_minute), show: per_minute },
    Row { label: "idle: operator CPU (of one core)", value: |f| Some(f.idle_cpu_percent), show: percent },
    Row { label: "idle: operator RSS (end of the window)", value: |f| Some(f.idle_rss_bytes as f64), show: mib },
    Row { label: "idle: of it anonymous (heap, RssAnon)", value: |f| Some(f.idle_rss_anon_bytes as f64), show: mib },
    Row { label: "idle: of it file-backed (code, RssFile)", value: |f| Some(f.idle_rss_file_bytes as f64), show: mib },
    Row { label: "release: detection p50", value: |f| d(f.detection_p50), show: secs },
    Row { label: "release: detection p99", value: |f| d(f.detection_p99), show: secs },
    Row {
        label: "release: canary scale-up after the image change p50 (audit log)",
        value: |f| d(f.scale_up_p50),
        show: secs,
    },
    Row {
        label: "release: canary scale-up after the image change p99 (audit log)",
        value: |f| d(f.scale_up_p99),
        show: secs,
    },
    Row {
        label: "release: detection at the API server p50 (audit log)",
        value: |f| d(f.api_detection_p50),
        show: secs,
    },
    Row {
        label: "release: detection at the API server p99 (audit log)",
        value: |f| d(f.api_detection_p99),
        show: secs,
    },
    Row { label: "release: reconcile wait p50 (≤, petrel's histogram)", value: |f| f.release_wait_p50, show: secs },
    Row { label: "release: reconcile wait p99 (≤, petrel's histogram)", value: |f| f.release_wait_p99, show: secs },
    Row { label: "release: reconciles (petrel's histogram)", value: |f| f.release_reconciles, show: count },
    Row { label: "release: all Succeeded", value: |f| d(f.all_succeeded), show: secs },
    Row { label: "release: API requests", value: |f| Some(f.release_requests as f64), show: count },
    Row {
        label: "release: most requests in flight at the API server (audit log)",
        value: |f| Some(f.release_most_in_flight as f64),
        show: count,
    },
    Row {
        label: "release: API requests per Canary",
        value: |f| (f.n > 0).then(|| f.release_requests as f64 / f.n as f64),
        show: per_canary,
    },
    Row { label: "release: apiserver CPU", value: |f| Some(f.release_apiserver_cpu.as_secs_f64()), show: secs },
    Row { label: "release: operator CPU", value: |f| Some(f.release_operator_cpu.as_secs_f64()), show: secs },
    Row { label: "release: operator peak RSS", value: |f| Some(f.release_peak_rss_bytes as f64), show: mib },
    Row { label: "operator peak RSS, whole round (VmHWM)", value: |f| Some(f.peak_rss_bytes as f64), show: mib },
];

/// The side-by-side table of one workload: a column per operator, and a ratio column for
/// each operator other than the `baseline` (Flagger) against it.
pub fn comparison_table(rounds: &[&RoundFigures], baseline: &str) -> String {
    let mut out = String::new();
    let others: Vec<&&RoundFigures> = rounds.iter().filter(|r| r.operator != baseline).collect();
    let base = rounds.iter().find(|r| r.operator == baseline);
    let _ = write!(out, "| |");
    for r in rounds {
        let _ = write!(out, " {} |", r.operator);
    }
    for r in &others {
        if base.is_some() {
            let _ = write!(out, " {} / {baseline} |", r.operator);
        }
    }
    out.push('\n');
    let columns = rounds.len() + if base.is_some() { others.len() } else { 0 };
    let _ = writeln!(out, "|---|{}", "---:|".repeat(columns));
    for row in ROWS {
        let _ = write!(out, "| {} |", row.label);
        for r in rounds {
            let cell = (row.value)(r).map_or_else(|| "—".to_string(), row.show);
            let _ = write!(out, " {cell} |");
        }
        if let Some(base) = base {
            for r in &others {
                let cell = match ((row.value)(r), (row.value)(base)) {
                    (Some(a), Some(b)) => ratio(a, b).map_or_else(|| "—".to_string(), |x| format!("{x:.2}")),
                    _ => "—".to_string(),
                };
                let _ = write!(out, " {cell} |");
            }
        }
        out.push('\n');
    }
    let _ = write!(out, "| Canaries detected / Succeeded |");
    for r in rounds {
        let _ = write!(out, " {}/{} · {}/{} |", r.detected, r.n, r.succeeded, r.n);
    }
    for _ in 0..(columns - rounds.len()) {
        let _ = write!(out, " |");
    }
    out.push('\n');
    let _ = write!(out, "| machine load (1 min) start → end |");
    for r in rounds {
        let _ = write!(out, " {:.1} → {:.1} |", r.load.0, r.load.1);
    }
    for _ in 0..(columns - rounds.len()) {
        let _ = write!(out, " |");
    }
    out.push('\n');
    out
}

/// Requests by verb and resource during a phase, per operator, most frequent first
/// (the union of the calls, `top` rows).
pub fn calls_table(rounds: &[&RoundFigures], calls: fn(&RoundFigures) -> &[(String, usize)], top: usize) -> String {
    let mut totals: BTreeMap<&str, usize> = BTreeMap::new();
    for r in rounds {
        for (call, n) in calls(r) {
            *totals.entry(call.as_str()).or_default() += n;
        }
    }
    let mut order: Vec<(&str, usize)> = totals.into_iter().collect();
    order.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let mut out = String::new();
    let _ = write!(out, "| verb resource |");
    for r in rounds {
        let _ = write!(out, " {} |", r.operator);
    }
    out.push('\n');
    let _ = writeln!(out, "|---|{}", "---:|".repeat(rounds.len()));
    for (call, _) in order.iter().take(top) {
        let _ = write!(out, "| {call} |");
        for r in rounds {
            let n = calls(r).iter().find(|(c, _)| c == call).map_or(0, |(_, n)| *n);
            let _ = write!(out, " {} |", count(n as f64));
        }
        out.push('\n');
    }
    if order.len() > top {
        let _ = writeln!(out, "| … {} more kinds of request | |", order.len() - top);
    }
    out
}

/// The figures of a whole run, grouped by (variant, N) in the order they were measured.
pub fn group(rounds: &[(Variant, RoundFigures)]) -> Vec<((Variant, usize), Vec<&RoundFigures>)> {
    let mut groups: Vec<((Variant, usize), Vec<&RoundFigures>)> = Vec::new();
    for (variant, figures) in rounds {
        let key = (*variant, figures.n);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, members)) => members.push(figures),
            None => groups.push((key, vec![figures])),
        }
    }
    groups
}

/// Whether this operator kind's label is the baseline of the ratios.
pub fn is_baseline(kind: OperatorKind) -> bool {
    kind == OperatorKind::Flagger
}

/// What the report says about the run besides the figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunInfo {
    /// The command line, as run.
    pub command: String,
    /// CPU model, cores, memory, kernel.
    pub machine: String,
    /// Date and time (UTC) of the start and the length of the run.
    pub when: String,
    /// Load averages at the start and the end of the run.
    pub load: String,
    /// Each operator: label and where it came from (commit, version).
    pub operators: Vec<(String, String)>,
    /// One line per variant measured: what its Canaries do.
    pub variants: Vec<(Variant, String)>,
    /// Setup notes (control plane, replicas, windows).
    pub setup: Vec<String>,
}

/// The Markdown section of a run: how it was run, then per (variant, N) the side-by-side
/// table and the requests by verb and resource during the release and while idle.
pub fn document(info: &RunInfo, rounds: &[(Variant, RoundFigures)], baseline: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "```sh\n{}\n```\n", info.command);
    let _ = writeln!(out, "- Run: {}", info.when);
    let _ = writeln!(out, "- Machine: {}", info.machine);
    let _ = writeln!(out, "- Load (1, 5, 15 min) at the start and the end: {}", info.load);
    for (label, origin) in &info.operators {
        let _ = writeln!(out, "- `{label}`: {origin}");
    }
    for (variant, description) in &info.variants {
        let _ = writeln!(out, "- Workload `{}`: {description}", variant.name());
    }
    for line in &info.setup {
        let _ = writeln!(out, "- {line}");
    }
    for ((variant, n), members) in group(rounds) {
        let _ = writeln!(out, "\n#### {} · N = {}\n", variant.name(), count(n as f64));
        out.push_str(&comparison_table(&members, baseline));
        let _ = writeln!(out, "\nRequests during the release, by verb and resource:\n");
        out.push_str(&calls_table(&members, |r| &r.release_calls, 12));
        let _ = writeln!(out, "\nRequests in the idle window, by verb and resource:\n");
        out.push_str(&calls_table(&members, |r| &r.idle_calls, 8));
    }
    out
}

/// Marks around the generated part of docs/benchmarks.md.
pub const BEGIN_MARK: &str = "<!-- canary-bench: begin (generated by canary-bench --write) -->";
pub const END_MARK: &str = "<!-- canary-bench: end -->";

/// `doc` with the text between the marks replaced by `section` (the marks are added at
/// the end when missing). Pure.
pub fn replace_section(doc: &str, section: &str) -> String {
    let generated = format!("{BEGIN_MARK}\n{section}{END_MARK}");
    match (doc.find(BEGIN_MARK), doc.find(END_MARK)) {
        (Some(begin), Some(end)) if begin < end => {
            format!("{}{generated}{}", &doc[..begin], &doc[end + END_MARK.len()..])
        }
        _ => format!("{}\n{generated}\n", doc.trim_end_matches('\n').to_string() + "\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(operator: &str, requests: usize, p50_ms: u64) -> RoundFigures {
        RoundFigures {
            operator: operator.into(),
            n: 10,
            init: Some(Duration::from_secs(4)),
            release_requests: requests,
            detection_p50: Some(Duration::from_millis(p50_ms)),
            detected: 10,
            succeeded: 9,
            release_calls: vec![("patch canaries/status".into(), requests / 2), ("get deployments".into(), 3)],
            load: (3.25, 4.5),
            idle_rss_bytes: 48 * 1024 * 1024,
            idle_rss_anon_bytes: 35 * 1024 * 1024,
            idle_rss_file_bytes: 13 * 1024 * 1024,
            ..RoundFigures::default()
        }
    }

    #[test]
    fn the_table_has_a_ratio_column_against_the_baseline() {
        let petrel = round("petrel", 500, 300);
        let flagger = round("Flagger", 1000, 6000);
        let table = comparison_table(&[&petrel, &flagger], "Flagger");
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "| | petrel | Flagger | petrel / Flagger |");
        assert!(table.contains("| release: API requests | 500 | 1,000 | 0.50 |"), "{table}");
        assert!(table.contains("| release: detection p50 | 0.30 s | 6.00 s | 0.05 |"), "{table}");
        assert!(table.contains("| release: detection p99 | — | — | — |"), "{table}");
        assert!(table.contains("| release: API requests per Canary | 50.0 | 100.0 | 0.50 |"), "{table}");
        assert!(table.contains("| 10/10 · 9/10 | 10/10 · 9/10 |"), "{table}");
        assert!(table.contains("| idle: operator RSS (end of the window) | 48.0 MiB | 48.0 MiB | 1.00 |"), "{table}");
        assert!(table.contains("| idle: of it anonymous (heap, RssAnon) | 35.0 MiB | 35.0 MiB | 1.00 |"), "{table}");
        assert!(table.contains("| idle: of it file-backed (code, RssFile) | 13.0 MiB | 13.0 MiB | 1.00 |"), "{table}");
        assert!(table.contains("| 3.2 → 4.5 |"), "{table}");
        // Every line has as many cells as the header.
        let cells = |l: &str| l.matches('|').count();
        assert!(lines.iter().all(|l| cells(l) == cells(lines[0])), "{table}");
    }

    #[test]
    fn without_a_baseline_there_are_no_ratios() {
        let petrel = round("petrel", 500, 300);
        let table = comparison_table(&[&petrel], "Flagger");
        assert!(table.starts_with("| | petrel |\n|---|---:|\n"), "{table}");
    }

    #[test]
    fn calls_are_the_union_most_frequent_first() {
        let petrel = round("petrel", 500, 300);
        let mut flagger = round("Flagger", 1000, 6000);
        flagger.release_calls.push(("list pods".into(), 1));
        let table = calls_table(&[&petrel, &flagger], |r| &r.release_calls, 2);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[2], "| patch canaries/status | 250 | 500 |");
        assert_eq!(lines[3], "| get deployments | 3 | 3 |");
        assert_eq!(lines[4], "| … 1 more kinds of request | |");
    }

    #[test]
    fn the_generated_section_replaces_only_what_is_between_the_marks() {
        let doc = "# Benchmarks\n\nintro\n";
        let once = replace_section(doc, "table 1\n");
        assert!(once.starts_with("# Benchmarks\n\nintro\n\n<!-- canary-bench: begin"), "{once}");
        assert!(once.contains("table 1\n<!-- canary-bench: end -->"), "{once}");
        let with_more = once.clone() + "\n## Later section\n";
        let twice = replace_section(&with_more, "table 2\n");
        assert!(!twice.contains("table 1") && twice.contains("table 2"), "{twice}");
        assert!(twice.starts_with("# Benchmarks\n\nintro\n") && twice.ends_with("\n## Later section\n"), "{twice}");
    }

    #[test]
    fn the_document_groups_rounds_by_workload() {
        let rounds =
            vec![(Variant::Kubernetes, round("petrel", 500, 300)), (Variant::Kubernetes, round("Flagger", 1000, 6000))];
        let info = RunInfo { command: "canary-bench --sizes 10".into(), ..RunInfo::default() };
        let doc = document(&info, &rounds, "Flagger");
        assert!(doc.starts_with("```sh\ncanary-bench --sizes 10\n```\n"), "{doc}");
        assert_eq!(doc.matches("#### kubernetes · N = 10").count(), 1, "{doc}");
        assert!(doc.contains("| | petrel | Flagger | petrel / Flagger |"), "{doc}");
    }

    #[test]
    fn numbers_are_written_as_the_docs_write_them() {
        assert_eq!(count(1234567.0), "1,234,567");
        assert_eq!(count(999.0), "999");
        assert_eq!(secs(0.284), "0.28 s");
        assert_eq!(secs(327.4), "327.4 s");
        assert_eq!(mib(64.0 * 1024.0 * 1024.0), "64.0 MiB");
    }
}
