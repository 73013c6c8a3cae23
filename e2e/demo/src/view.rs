//! What the demo shows, free of I/O: the hub's Rollout (its waves and every
//! member as the hub sees them), what each member's primary serves, and the
//! latest hub and member Events, rendered as a table redrawn in place
//! (terminal) or as one line per change (CI logs, pipes).

use std::fmt::Write as _;

/// One Kubernetes Event, from the hub (about the Rollout) or a member (about its Canary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventView {
    /// `hub` or the member's name.
    pub source: String,
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

/// One wave of the Rollout as the hub reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WaveRow {
    pub name: String,
    pub phase: String,
    pub members: i32,
    pub succeeded: i32,
    pub failed: i32,
    /// `HH:MM:SS` it opened, if it did.
    pub opened: Option<String>,
    /// Seconds of soak left while the wave soaks.
    pub soak_left: Option<u64>,
    /// The wave's soak as declared (`20s`), if any.
    pub soak: Option<String>,
}

/// One member as the hub reports it, plus what its primary serves (read
/// from the member's Canary).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemberRow {
    pub name: String,
    pub wave: String,
    /// The hub's conclusion (`Pending`, `Approved`, `Progressing`, `Succeeded`, …).
    pub state: String,
    /// The member Canary's phase.
    pub phase: String,
    pub weight: i32,
    pub failed_checks: i32,
    /// The release the member's Canary reports.
    pub release: Option<String>,
    /// What the member's primary serves.
    pub primary: Option<String>,
    /// Seconds since the hub last reached the member.
    pub contact_secs_ago: Option<i64>,
    /// The hub's message about the member, if any.
    pub message: String,
}

/// Everything on screen.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Screen {
    pub title: String,
    /// What the driver is doing now.
    pub stage: String,
    pub elapsed_secs: u64,
    /// `namespace/name` of the Rollout.
    pub rollout: String,
    /// The Rollout's phase, release and current wave in one line; or why it cannot be read.
    pub rollout_line: String,
    pub waves: Vec<WaveRow>,
    pub members: Vec<MemberRow>,
    /// Hub and member Events, newest first.
    pub events: Vec<EventView>,
    /// The driver's narration, oldest first.
    pub log: Vec<String>,
}

/// Events shown.
pub const EVENTS: usize = 10;
/// Narration lines shown.
pub const LOG_LINES: usize = 6;

/// Short form of an image: the tag (or the whole reference without one).
pub fn short_image(image: &str) -> &str {
    let (_, tag) = super::plan::split_image(image);
    tag.unwrap_or(image)
}

fn short(image: Option<&str>) -> &str {
    image.map_or("-", short_image)
}

/// `12s ago`, `3m ago`, `-`.
pub fn ago(secs: Option<i64>) -> String {
    match secs {
        None => "-".into(),
        Some(s) if s < 120 => format!("{}s ago", s.max(0)),
        Some(s) => format!("{}m ago", s / 60),
    }
}

/// `1/2 ok` plus failures and the soak: what a wave row says after its phase.
pub fn wave_progress(w: &WaveRow) -> String {
    let mut text = format!("{}/{} ok", w.succeeded, w.members);
    if w.failed > 0 {
        let _ = write!(text, ", {} failed", w.failed);
    }
    match (w.soak_left, &w.soak) {
        (Some(left), _) => {
            let _ = write!(text, ", soak {left}s left");
        }
        (None, Some(soak)) => {
            let _ = write!(text, ", soak {soak}");
        }
        (None, None) => {}
    }
    text
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
/// fewer Events, then fewer narration lines, until it fits (a frame taller
/// than the terminal would scroll and break the redraw).
pub fn render_fitting(screen: &Screen, width: usize, height: usize) -> Vec<String> {
    for events in [EVENTS, 6, 3, 0] {
        for log in [LOG_LINES, 3, 1] {
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
    render_with(screen, width, EVENTS, LOG_LINES)
}

fn render_with(screen: &Screen, width: usize, events: usize, log_lines: usize) -> Vec<String> {
    let width = width.max(40);
    let mut lines = Vec::new();
    let (mins, secs) = (screen.elapsed_secs / 60, screen.elapsed_secs % 60);
    lines.push(format!("{}   [{mins:02}:{secs:02}]", screen.title));
    lines.push(format!("» {}", screen.stage));
    lines.push(String::new());
    lines.push(format!("hub Rollout {}: {}", screen.rollout, screen.rollout_line));
    let wave_w = screen.waves.iter().map(|w| w.name.len()).max().unwrap_or(4).max(4);
    lines.push(format!("  {}  {}  {}  PROGRESS", pad("WAVE", wave_w), pad("PHASE", 11), pad("OPENED", 8)));
    for w in &screen.waves {
        lines.push(format!(
            "  {}  {}  {}  {}",
            pad(&w.name, wave_w),
            pad(&w.phase, 11),
            pad(w.opened.as_deref().unwrap_or("-"), 8),
            wave_progress(w)
        ));
    }
    lines.push(String::new());
    let name_w = screen.members.iter().map(|m| m.name.len()).max().unwrap_or(6).max(6);
    let member_wave_w = screen.members.iter().map(|m| m.wave.len()).max().unwrap_or(4).max(4);
    lines.push(format!(
        "  {}  {}  {}  {}  {}  {}  {}  {}  CONTACT",
        pad("MEMBER", name_w),
        pad("WAVE", member_wave_w),
        pad("STATE", 12),
        pad("CANARY", 16),
        pad("WEIGHT", 6),
        pad("FAILED", 6),
        pad("RELEASE", 8),
        pad("PRIMARY", 8),
    ));
    for m in &screen.members {
        let mut row = format!(
            "  {}  {}  {}  {}  {}  {}  {}  {}  {}",
            pad(&m.name, name_w),
            pad(&m.wave, member_wave_w),
            pad(&m.state, 12),
            pad(&m.phase, 16),
            pad(&format!("{}%", m.weight), 6),
            pad(&m.failed_checks.to_string(), 6),
            pad(short(m.release.as_deref()), 8),
            pad(short(m.primary.as_deref()), 8),
            ago(m.contact_secs_ago)
        );
        if !m.message.is_empty() {
            let _ = write!(row, "  {}", m.message);
        }
        lines.push(row);
    }
    if events > 0 {
        lines.push(String::new());
        lines.push("recent events (hub and members):".into());
        if screen.events.is_empty() {
            lines.push("  (none yet)".into());
        }
        let source_w = screen.events.iter().take(events).map(|e| e.source.len()).max().unwrap_or(3);
        for e in screen.events.iter().take(events) {
            lines.push(format!("  {}", event_text(e, source_w)));
        }
    }
    if log_lines > 0 {
        lines.push(String::new());
        lines.push("demo driver:".into());
        let skip = screen.log.len().saturating_sub(log_lines);
        lines.extend(screen.log.iter().skip(skip).map(|l| format!("  {l}")));
    }
    lines.into_iter().map(|l| truncate(&l, width)).collect()
}

fn event_text(e: &EventView, source_w: usize) -> String {
    let count = if e.count > 1 { format!(" (x{})", e.count) } else { String::new() };
    format!(
        "{} {} {} {}{count}: {}",
        e.time,
        pad(&e.source, source_w),
        if e.warning { "Warning" } else { "Normal " },
        e.reason,
        e.message
    )
}

/// One wave's line, as printed when it changes.
pub fn wave_line(w: &WaveRow) -> String {
    format!("wave {}: {} ({})", w.name, w.phase, wave_progress(w))
}

/// One member's line, as printed when it changes. Contact time is left
/// out: it changes every second and is not news.
pub fn member_line(m: &MemberRow) -> String {
    let mut line = format!(
        "{} [{}]: {} (Canary {}, weight {}%, failed checks {}, release {}, primary {})",
        m.name,
        m.wave,
        m.state,
        m.phase,
        m.weight,
        m.failed_checks,
        short(m.release.as_deref()),
        short(m.primary.as_deref())
    );
    if !m.message.is_empty() {
        let _ = write!(line, ": {}", m.message);
    }
    line
}

/// Lines describing what changed from `before` to `after` (for output that
/// is not a terminal): the stage, the Rollout line, wave and member lines
/// that changed, and Events not seen before (oldest first). Narration is
/// printed by the driver as it happens, not here.
pub fn changes(before: &Screen, after: &Screen) -> Vec<String> {
    let mut out = Vec::new();
    if before.stage != after.stage {
        out.push(format!("» {}", after.stage));
    }
    if before.rollout_line != after.rollout_line {
        out.push(format!("hub Rollout {}: {}", after.rollout, after.rollout_line));
    }
    for w in &after.waves {
        let old = before.waves.iter().find(|o| o.name == w.name);
        // A soak counting down is redrawn on a terminal; a log gets its start and end.
        let strip = |w: &WaveRow| wave_line(&WaveRow { soak_left: w.soak_left.map(|_| 0), ..w.clone() });
        if old.map(strip) != Some(strip(w)) {
            out.push(wave_line(w));
        }
    }
    for m in &after.members {
        let old = before.members.iter().find(|o| o.name == m.name);
        if old.map(member_line) != Some(member_line(m)) {
            out.push(member_line(m));
        }
    }
    for e in after.events.iter().rev().filter(|e| !before.events.contains(e)) {
        // An Event that only fell off the window of recent ones is not new.
        if before.events.last().is_some_and(|oldest| e.at < oldest.at) {
            continue;
        }
        out.push(format!("event {}", event_text(e, 0)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, wave: &str, state: &str, phase: &str) -> MemberRow {
        MemberRow {
            name: name.into(),
            wave: wave.into(),
            state: state.into(),
            phase: phase.into(),
            weight: 20,
            failed_checks: 1,
            release: Some("ghcr.io/stefanprodan/podinfo:6.7.2".into()),
            primary: Some("ghcr.io/stefanprodan/podinfo:6.7.1".into()),
            contact_secs_ago: Some(1),
            message: String::new(),
        }
    }

    fn event(at: i64, source: &str, reason: &str) -> EventView {
        EventView {
            source: source.into(),
            at,
            time: format!("05:00:{at:02}"),
            warning: reason == "WaveFailed",
            reason: reason.into(),
            message: format!("{reason} message"),
            count: 1,
        }
    }

    fn screen() -> Screen {
        Screen {
            title: "petrel demo".into(),
            stage: "bad release".into(),
            elapsed_secs: 75,
            rollout: "petrel-system/podinfo".into(),
            rollout_line: "Progressing, release 6.7.2, wave canary".into(),
            waves: vec![
                WaveRow {
                    name: "canary".into(),
                    phase: "Soaking".into(),
                    members: 1,
                    succeeded: 1,
                    failed: 0,
                    opened: Some("05:00:01".into()),
                    soak_left: Some(12),
                    soak: Some("20s".into()),
                },
                WaveRow { name: "production".into(), phase: "Pending".into(), members: 2, ..WaveRow::default() },
            ],
            members: vec![
                member("staging-eu-west-1", "canary", "Progressing", "Progressing"),
                member("production-eu-west-1", "production", "Pending", "Waiting"),
            ],
            events: vec![event(3, "staging-eu-west-1", "CheckFailed"), event(2, "hub", "MemberApproved")],
            log: vec![],
        }
    }

    #[test]
    fn the_table_shows_waves_members_and_events() {
        let lines = render(&screen(), 200);
        let text = lines.join("\n");
        assert!(text.contains("[01:15]"), "{text}");
        assert!(text.contains("hub Rollout petrel-system/podinfo: Progressing, release 6.7.2, wave canary"), "{text}");
        let canary = lines.iter().find(|l| l.trim_start().starts_with("canary ")).unwrap();
        for part in ["Soaking", "05:00:01", "1/1 ok, soak 12s left"] {
            assert!(canary.contains(part), "{part} missing in {canary}");
        }
        let production = lines.iter().find(|l| l.trim_start().starts_with("production ")).unwrap();
        assert!(production.contains("Pending") && production.contains("0/2 ok"), "{production}");
        let row = lines.iter().find(|l| l.trim_start().starts_with("staging-eu-west-1 ")).unwrap();
        for part in ["canary", "Progressing", "20%", "6.7.2", "6.7.1", "1s ago"] {
            assert!(row.contains(part), "{part} missing in {row}");
        }
        let hub_event = lines.iter().position(|l| l.contains("MemberApproved")).unwrap();
        let member_event = lines.iter().position(|l| l.contains("CheckFailed")).unwrap();
        assert!(member_event < hub_event, "newest first: {text}");
        assert!(
            lines[member_event].ends_with("05:00:03 staging-eu-west-1 Normal  CheckFailed: CheckFailed message"),
            "{text}"
        );
    }

    #[test]
    fn lines_never_exceed_the_terminal_width() {
        let lines = render(&screen(), 50);
        assert!(lines.iter().all(|l| l.chars().count() <= 50), "{lines:#?}");
        assert!(lines.iter().any(|l| l.ends_with('…')));
    }

    #[test]
    fn a_short_terminal_gets_fewer_events_and_log_lines_but_keeps_the_tables() {
        let mut s = screen();
        s.events = (0..20).map(|i| event(60 - i, "hub", "MemberApproved")).collect();
        s.log = (0..20).map(|i| format!("step {i}")).collect();
        let full = render(&s, 200);
        let fitted = render_fitting(&s, 200, 20);
        assert!(fitted.len() <= 20, "{fitted:#?}");
        assert_eq!(fitted[..11], full[..11], "title, stage, waves and members stay");
        assert_eq!(fitted.last().map(String::as_str), Some("  step 19"), "the newest narration stays");
        assert_eq!(render_fitting(&s, 200, 100), full);
        assert_eq!(render_fitting(&s, 200, 3).len(), 3);
    }

    #[test]
    fn contact_and_images_read_short() {
        assert_eq!(ago(None), "-");
        assert_eq!(ago(Some(5)), "5s ago");
        assert_eq!(ago(Some(-1)), "0s ago");
        assert_eq!(ago(Some(600)), "10m ago");
        assert_eq!(short(Some("ghcr.io/stefanprodan/podinfo:6.7.1")), "6.7.1");
        assert_eq!(short(None), "-");
    }

    #[test]
    fn changes_report_what_changed_and_new_events_only() {
        let before = screen();
        assert!(changes(&before, &before).is_empty());
        let mut after = before.clone();
        // A soak counting down and a contact time ticking are not news.
        after.waves[0].soak_left = Some(11);
        after.members[0].contact_secs_ago = Some(2);
        assert!(changes(&before, &after).is_empty(), "{:#?}", changes(&before, &after));
        after.members[1].state = "Approved".into();
        after.events.insert(0, event(4, "hub", "MemberApproved"));
        let lines = changes(&before, &after);
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert!(lines[0].starts_with("production-eu-west-1 [production]: Approved (Canary Waiting"), "{lines:#?}");
        assert!(lines[1].starts_with("event 05:00:04 hub Normal  MemberApproved"), "{lines:#?}");
        after.waves[0].phase = "Succeeded".into();
        after.waves[0].soak_left = None;
        after.stage = "done".into();
        let lines = changes(&before, &after);
        assert_eq!(lines[0], "» done");
        assert_eq!(lines[1], "wave canary: Succeeded (1/1 ok, soak 20s)");
        // The first screen prints everything.
        assert_eq!(changes(&Screen::default(), &before).len(), 1 + 1 + 2 + 2 + 2);
    }
}
