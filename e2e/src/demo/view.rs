//! What the demo shows, free of I/O: a snapshot of every member's Canary
//! and its latest Events, rendered as a table redrawn in place (terminal)
//! or as one line per change (CI logs, pipes).

use std::fmt::Write as _;

/// One analysis result as `status.analysisResults` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultView {
    pub name: String,
    pub value: Option<f64>,
    pub passed: bool,
}

/// One Kubernetes Event about the Canary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventView {
    /// Microseconds since the epoch of its last occurrence (for ordering).
    pub at: i64,
    /// `HH:MM:SS` UTC.
    pub time: String,
    pub warning: bool,
    pub reason: String,
    pub message: String,
    /// Occurrences (an Event series counts repeats).
    pub count: i32,
}

/// One member's Canary as last read.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MemberView {
    pub name: String,
    pub labels: String,
    /// `None` while the Canary does not exist yet or cannot be read.
    pub phase: Option<String>,
    pub weight: i32,
    pub failed_checks: i32,
    pub threshold: i32,
    pub results: Vec<ResultView>,
    /// `status.release`: what is being released.
    pub release: Option<String>,
    /// The image the primary serves.
    pub primary_image: Option<String>,
    /// The newest Events first.
    pub events: Vec<EventView>,
    /// Why the member could not be read, if it could not.
    pub error: Option<String>,
}

/// Everything on screen.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Screen {
    pub title: String,
    /// A standing note under the title (who orders the waves).
    pub note: String,
    /// What the driver is doing now.
    pub stage: String,
    pub elapsed_secs: u64,
    pub members: Vec<MemberView>,
    /// The driver's narration, oldest first.
    pub log: Vec<String>,
}

/// Events shown per member.
pub const EVENTS_PER_MEMBER: usize = 4;
/// Narration lines shown.
pub const LOG_LINES: usize = 8;

/// Short form of an image: the tag (or the whole reference without one).
pub fn short_image(image: &str) -> &str {
    let (_, tag) = super::plan::split_image(image);
    tag.unwrap_or(image)
}

fn format_value(v: Option<f64>) -> String {
    match v {
        None => "no data".into(),
        Some(v) if v.fract() == 0.0 && v.abs() < 1e9 => format!("{v:.0}"),
        Some(v) if v.abs() >= 100.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

/// `request-success-rate=80.12 ✗  request-duration=20 ✓`
pub fn results_text(results: &[ResultView]) -> String {
    if results.is_empty() {
        return "-".into();
    }
    results
        .iter()
        .map(|r| format!("{}={} {}", r.name, format_value(r.value), if r.passed { "pass" } else { "FAIL" }))
        .collect::<Vec<_>>()
        .join("  ")
}

/// The release a member is on, as `primary <tag>` and `→ <tag>` when a
/// different release is being rolled out.
pub fn release_text(m: &MemberView) -> String {
    let primary = m.primary_image.as_deref().map(short_image);
    let release = m.release.as_deref().map(short_image);
    match (primary, release) {
        (Some(p), Some(r)) if p != r => format!("{p} → {r}"),
        (Some(p), _) => p.to_owned(),
        (None, Some(r)) => format!("→ {r}"),
        (None, None) => "-".into(),
    }
}

fn phase_text(m: &MemberView) -> &str {
    m.phase.as_deref().unwrap_or(if m.error.is_some() { "unreachable" } else { "-" })
}

fn truncate(line: &str, width: usize) -> String {
    if line.chars().count() <= width {
        return line.to_owned();
    }
    let mut out: String = line.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn pad(text: &str, width: usize) -> String {
    let len = text.chars().count();
    if len >= width { text.to_owned() } else { format!("{text}{}", " ".repeat(width - len)) }
}

/// The screen as lines no wider than `width` and no more than `height`:
/// fewer Events per member, then fewer narration lines, until it fits (a
/// frame taller than the terminal would scroll and break the redraw).
pub fn render_fitting(screen: &Screen, width: usize, height: usize) -> Vec<String> {
    for events in (0..=EVENTS_PER_MEMBER).rev() {
        for log in [LOG_LINES, 4, 2] {
            let lines = render_with(screen, width, events, log);
            if lines.len() <= height {
                return lines;
            }
        }
    }
    let mut lines = render_with(screen, width, 0, 0);
    lines.truncate(height);
    lines
}

/// The full screen as lines no wider than `width`.
pub fn render(screen: &Screen, width: usize) -> Vec<String> {
    render_with(screen, width, EVENTS_PER_MEMBER, LOG_LINES)
}

fn render_with(screen: &Screen, width: usize, events_per_member: usize, log_lines: usize) -> Vec<String> {
    let width = width.max(40);
    let mut lines = Vec::new();
    let mins = screen.elapsed_secs / 60;
    let secs = screen.elapsed_secs % 60;
    lines.push(format!("{}   [{mins:02}:{secs:02}]", screen.title));
    if !screen.note.is_empty() {
        lines.push(screen.note.clone());
    }
    lines.push(format!("» {}", screen.stage));
    lines.push(String::new());
    let name_w = screen.members.iter().map(|m| m.name.len()).max().unwrap_or(6).max(6);
    lines.push(format!(
        "{}  {}  {}  {}  {}  LAST ANALYSIS",
        pad("MEMBER", name_w),
        pad("PHASE", 16),
        pad("WEIGHT", 6),
        pad("FAILED", 6),
        pad("RELEASE", 15)
    ));
    for m in &screen.members {
        lines.push(format!(
            "{}  {}  {}  {}  {}  {}",
            pad(&m.name, name_w),
            pad(phase_text(m), 16),
            pad(&format!("{}%", m.weight), 6),
            pad(&format!("{}/{}", m.failed_checks, m.threshold), 6),
            pad(&release_text(m), 15),
            results_text(&m.results)
        ));
    }
    for m in screen.members.iter().filter(|_| events_per_member > 0) {
        lines.push(String::new());
        lines.push(format!("{} ({}) events:", m.name, m.labels));
        if let Some(e) = &m.error {
            lines.push(format!("  ! {e}"));
        }
        if m.events.is_empty() {
            lines.push("  (none yet)".into());
        }
        for e in m.events.iter().take(events_per_member) {
            let count = if e.count > 1 { format!(" (x{})", e.count) } else { String::new() };
            lines.push(format!(
                "  {} {} {}{count}: {}",
                e.time,
                if e.warning { "Warning" } else { "Normal " },
                e.reason,
                e.message
            ));
        }
    }
    lines.push(String::new());
    lines.push("demo driver:".into());
    let skip = screen.log.len().saturating_sub(log_lines);
    lines.extend(screen.log.iter().skip(skip).map(|l| format!("  {l}")));
    lines.into_iter().map(|l| truncate(&l, width)).collect()
}

/// One member's summary line, as printed when it changes.
pub fn member_line(m: &MemberView) -> String {
    format!(
        "{}: phase={} weight={}% failed={}/{} release={} analysis: {}",
        m.name,
        phase_text(m),
        m.weight,
        m.failed_checks,
        m.threshold,
        release_text(m),
        results_text(&m.results)
    )
}

/// Lines describing what changed from `before` to `after` (for output that
/// is not a terminal): member summaries that changed, Events not seen
/// before (oldest first), and the stage when it changed. Narration is
/// printed by the driver as it happens, not here.
pub fn changes(before: &Screen, after: &Screen) -> Vec<String> {
    let mut out = Vec::new();
    if before.stage != after.stage {
        out.push(format!("» {}", after.stage));
    }
    for m in &after.members {
        let old = before.members.iter().find(|o| o.name == m.name);
        if old.map(member_line) != Some(member_line(m)) {
            out.push(member_line(m));
        }
        let seen = |e: &EventView| old.is_some_and(|o| o.events.contains(e));
        for e in m.events.iter().rev().filter(|e| !seen(e)) {
            let mut line = String::new();
            let _ = write!(
                line,
                "{}: event {} {}: {}",
                m.name,
                if e.warning { "Warning" } else { "Normal" },
                e.reason,
                e.message
            );
            out.push(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member() -> MemberView {
        MemberView {
            name: "staging-eu-west-1".into(),
            labels: "env=staging,region=eu-west-1,role=canary".into(),
            phase: Some("Progressing".into()),
            weight: 20,
            failed_checks: 1,
            threshold: 3,
            results: vec![
                ResultView { name: "request-success-rate".into(), value: Some(80.123), passed: false },
                ResultView { name: "request-duration".into(), value: Some(20.0), passed: true },
            ],
            release: Some("ghcr.io/stefanprodan/podinfo:6.7.2".into()),
            primary_image: Some("ghcr.io/stefanprodan/podinfo:6.7.1".into()),
            events: vec![EventView {
                at: 10,
                time: "02:50:01".into(),
                warning: true,
                reason: "CheckFailed".into(),
                message: "request-success-rate 80.12 < 99".into(),
                count: 2,
            }],
            error: None,
        }
    }

    fn screen(members: Vec<MemberView>) -> Screen {
        Screen {
            title: "petrel demo".into(),
            note: String::new(),
            stage: "bad release".into(),
            elapsed_secs: 75,
            members,
            log: vec![],
        }
    }

    #[test]
    fn the_table_shows_phase_weight_checks_release_results_and_events() {
        let lines = render(&screen(vec![member()]), 200);
        let text = lines.join("\n");
        assert!(text.contains("[01:15]"), "{text}");
        let row = lines.iter().find(|l| l.starts_with("staging-eu-west-1 ")).unwrap();
        for part in [
            "Progressing",
            "20%",
            "1/3",
            "6.7.1 → 6.7.2",
            "request-success-rate=80.12 FAIL",
            "request-duration=20 pass",
        ] {
            assert!(row.contains(part), "{part} missing in {row}");
        }
        assert!(text.contains("02:50:01 Warning CheckFailed (x2): request-success-rate 80.12 < 99"), "{text}");
    }

    #[test]
    fn lines_never_exceed_the_terminal_width() {
        let lines = render(&screen(vec![member()]), 50);
        assert!(lines.iter().all(|l| l.chars().count() <= 50), "{lines:#?}");
        assert!(lines.iter().any(|l| l.ends_with('…')));
    }

    #[test]
    fn a_short_terminal_gets_fewer_events_and_log_lines_but_keeps_the_table() {
        let mut busy = member();
        busy.events = vec![busy.events[0].clone(); 6];
        let mut s = screen(vec![busy.clone(), busy.clone(), busy]);
        s.log = (0..20).map(|i| format!("step {i}")).collect();
        let full = render(&s, 200);
        assert!(full.len() > 30, "{}", full.len());
        let fitted = render_fitting(&s, 200, 25);
        assert!(fitted.len() <= 25, "{fitted:#?}");
        assert_eq!(fitted[..7], full[..7], "title, stage and the table stay");
        assert_eq!(fitted.last().map(String::as_str), Some("  step 19"), "the newest narration stays");
        assert_eq!(render_fitting(&s, 200, 100), full);
        assert_eq!(render_fitting(&s, 200, 3).len(), 3);
    }

    #[test]
    fn release_text_shows_a_rollout_in_progress_only_when_it_differs() {
        let mut m = member();
        assert_eq!(release_text(&m), "6.7.1 → 6.7.2");
        m.release = m.primary_image.clone();
        assert_eq!(release_text(&m), "6.7.1");
        assert_eq!(release_text(&MemberView::default()), "-");
        assert_eq!(results_text(&[ResultView { name: "x".into(), value: None, passed: false }]), "x=no data FAIL");
    }

    #[test]
    fn changes_report_new_summaries_and_new_events_only() {
        let before = screen(vec![member()]);
        assert!(changes(&before, &before).is_empty());
        let mut after = before.clone();
        after.members[0].weight = 30;
        after.members[0].events.insert(
            0,
            EventView {
                at: 11,
                time: "02:50:06".into(),
                warning: false,
                reason: "WeightIncreased".into(),
                message: "30%".into(),
                count: 1,
            },
        );
        let lines = changes(&before, &after);
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert!(lines[0].contains("weight=30%"));
        assert_eq!(lines[1], "staging-eu-west-1: event Normal WeightIncreased: 30%");
        // A member seen for the first time prints its line and all its events.
        assert_eq!(changes(&screen(vec![]), &before).len(), 2);
        after.stage = "done".into();
        assert_eq!(changes(&before, &after)[0], "» done");
    }
}
