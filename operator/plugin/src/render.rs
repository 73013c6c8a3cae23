//! `kubectl petrel get`: a Canary as a tree, a list of Canaries as a table. Pure functions
//! of the objects and the time, so the output is tested as text.

use chrono::{DateTime, Utc};
use kube::ResourceExt;

use petrel_api::Canary;
use petrel_api::canary::{CanaryStatus, MetricOutcome, Phase};
use petrel_api::verbs::{Verb, verb_requests};
use petrel_core::strategy::threshold_of;

use petrel_api::canary::APPROVED_REVISION_ANNOTATION;
use petrel_api::canary::FLEET_ROLLOUT_ANNOTATION;

/// Width of the labels in the tree view.
const LABEL_WIDTH: usize = 17;

/// One Canary as a tree: where it stands, the last analysis, its conditions.
pub fn render_canary(canary: &Canary, now: DateTime<Utc>) -> String {
    let status = canary.status.clone().unwrap_or_default();
    let spec = &canary.spec;
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        out.push_str(&format!("{:<LABEL_WIDTH$}{value}\n", format!("{label}:")));
    };

    line("Name", canary.name_any());
    line("Namespace", canary.namespace().unwrap_or_default());
    line("Phase", format!("{} {}", phase_icon(status.phase), status.phase));
    if spec.suspend {
        line("Paused", "yes (spec.suspend: true): petrel leaves this Canary as it is".into());
    }
    line("Target", format!("{}/{}", spec.target_ref.kind, spec.target_ref.name));
    line("Provider", spec.provider.clone().unwrap_or_else(|| "(operator default)".into()));
    let canary_weight = status.canary_weight.clamp(0, 100);
    line("Weight", format!("canary {canary_weight}% · primary {}%", 100 - canary_weight));
    line("Failed checks", format!("{}/{}", status.failed_checks, threshold_of(spec)));
    if let Some(iterations) = spec.analysis.as_ref().and_then(|a| a.iterations).filter(|n| *n > 0) {
        line("Iterations", format!("{}/{iterations}", status.iterations));
    }
    line("Revision", with_primary(status.last_applied_spec.as_deref(), status.last_promoted_spec.as_deref()));
    line("Release", with_primary(status.release.as_deref(), status.promoted_release.as_deref()));
    if let Some(at) = status.last_transition_time {
        line("Last transition", format!("{} ({} ago)", at.format("%Y-%m-%dT%H:%M:%SZ"), age(at, now)));
    }
    let annotations = canary.annotations();
    if let Some(rollout) = annotations.get(FLEET_ROLLOUT_ANNOTATION) {
        let approved = annotations.get(APPROVED_REVISION_ANNOTATION).map(String::as_str).unwrap_or("none");
        line("Fleet", format!("rollout {rollout}, approved revision {approved}"));
    }
    // Only requests the controller may still act on: for the revision under way, in a
    // phase where the verb applies. Older ones stay on the object but mean nothing.
    for request in verb_requests(annotations) {
        let current = status.last_applied_spec.as_deref().is_some_and(|r| request.is_for(r));
        let applies = match request.verb {
            Verb::Abort | Verb::Promote => {
                matches!(status.phase, Phase::Waiting | Phase::Progressing | Phase::WaitingPromotion)
            }
            Verb::Retry => status.phase == Phase::Failed,
        };
        if current && applies {
            line("Requested", format!("{} of revision {} ({})", request.verb, request.revision, request.value));
        }
    }

    out.push('\n');
    out.push_str(&render_analysis(&status, now));
    out.push('\n');
    out.push_str(&render_conditions(&status, now));
    out
}

fn render_analysis(status: &CanaryStatus, now: DateTime<Utc>) -> String {
    let mut out = match status.last_analysis_time {
        Some(at) => format!("Analysis (last tick {}, {} ago)\n", at.format("%Y-%m-%dT%H:%M:%SZ"), age(at, now)),
        None => "Analysis\n".to_string(),
    };
    if status.analysis_results.is_empty() {
        out.push_str("└── no results yet\n");
        return out;
    }
    let rows: Vec<Vec<String>> = status
        .analysis_results
        .iter()
        .map(|r| {
            let mut value = r.value.map(format_value).unwrap_or_else(|| "no value".into());
            if let Some(primary) = r.primary_value {
                value.push_str(&format!(" (primary {})", format_value(primary)));
            }
            let mark = match r.outcome {
                MetricOutcome::Passed => "✔",
                MetricOutcome::Failed => "✖",
                MetricOutcome::Pending => "…",
            };
            vec![mark.to_string(), r.name.clone(), value, r.message.clone()]
        })
        .collect();
    push_tree(&mut out, &rows);
    out
}

fn render_conditions(status: &CanaryStatus, now: DateTime<Utc>) -> String {
    let mut out = String::from("Conditions\n");
    if status.conditions.is_empty() {
        out.push_str("└── none yet\n");
        return out;
    }
    let rows: Vec<Vec<String>> = status
        .conditions
        .iter()
        .map(|c| {
            vec![
                c.type_.clone(),
                c.status.clone(),
                c.reason.clone(),
                format!("{} ago", age(c.last_transition_time, now)),
                c.message.clone(),
            ]
        })
        .collect();
    push_tree(&mut out, &rows);
    out
}

/// Appends rows as tree branches with aligned columns; empty trailing cells are dropped.
pub(super) fn push_tree(out: &mut String, rows: &[Vec<String>]) {
    let widths = column_widths(rows);
    for (i, row) in rows.iter().enumerate() {
        let branch = if i + 1 == rows.len() { "└── " } else { "├── " };
        out.push_str(branch);
        out.push_str(&aligned(row, &widths, " "));
        out.push('\n');
    }
}

/// Canaries as a table, one row each; with the namespace column for `-A`.
pub fn render_table(canaries: &[Canary], all_namespaces: bool, now: DateTime<Utc>) -> String {
    if canaries.is_empty() {
        return "No Canaries found.\n".to_string();
    }
    let mut header = vec!["NAME", "PHASE", "WEIGHT", "FAILED", "ITERATIONS", "RELEASE", "AGE OF PHASE"];
    if all_namespaces {
        header.insert(0, "NAMESPACE");
    }
    let mut rows = vec![header.into_iter().map(String::from).collect::<Vec<_>>()];
    for canary in canaries {
        let status = canary.status.clone().unwrap_or_default();
        let mut phase = status.phase.to_string();
        if canary.spec.suspend {
            phase.push_str(" (paused)");
        }
        let iterations = match canary.spec.analysis.as_ref().and_then(|a| a.iterations).filter(|n| *n > 0) {
            Some(total) => format!("{}/{total}", status.iterations),
            None => "-".into(),
        };
        let mut row = vec![
            canary.name_any(),
            phase,
            status.canary_weight.to_string(),
            format!("{}/{}", status.failed_checks, threshold_of(&canary.spec)),
            iterations,
            status.release.clone().unwrap_or_else(|| "-".into()),
            status.last_transition_time.map(|t| age(t, now)).unwrap_or_else(|| "-".into()),
        ];
        if all_namespaces {
            row.insert(0, canary.namespace().unwrap_or_default());
        }
        rows.push(row);
    }
    let widths = column_widths(&rows);
    rows.iter().map(|row| aligned(row, &widths, "   ") + "\n").collect()
}

pub(super) fn column_widths(rows: &[Vec<String>]) -> Vec<usize> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|cell| cell.chars().count()).max().unwrap_or(0))
        .collect()
}

pub(super) fn aligned(row: &[String], widths: &[usize], gap: &str) -> String {
    let last = row.iter().rposition(|cell| !cell.is_empty()).map_or(0, |i| i + 1);
    row[..last]
        .iter()
        .enumerate()
        .map(|(i, cell)| {
            if i + 1 == last {
                cell.clone()
            } else {
                let pad = widths[i].saturating_sub(cell.chars().count());
                format!("{cell}{}", " ".repeat(pad))
            }
        })
        .collect::<Vec<_>>()
        .join(gap)
}

fn phase_icon(phase: Phase) -> &'static str {
    match phase {
        Phase::Succeeded => "✔",
        Phase::Failed => "✖",
        Phase::Waiting | Phase::WaitingPromotion => "॥",
        Phase::Initializing | Phase::Initialized => "○",
        Phase::Progressing | Phase::Promoting | Phase::Finalising => "◌",
    }
}

fn with_primary(canary: Option<&str>, primary: Option<&str>) -> String {
    match (canary, primary) {
        (None, None) => "-".into(),
        (Some(c), Some(p)) if c == p => format!("{c} (primary runs it)"),
        (Some(c), Some(p)) => format!("{c} (primary {p})"),
        (Some(c), None) => c.to_string(),
        (None, Some(p)) => format!("- (primary {p})"),
    }
}

/// A metric value with at most three decimals and no trailing zeros.
fn format_value(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let text = format!("{v:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" { "0".into() } else { text.to_string() }
}

/// Age like kubectl prints it: `45s`, `2m30s`, `15m`, `3h20m`, `12h`, `4d`.
pub fn age(since: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let s = (now - since).num_seconds().max(0);
    match s {
        0..60 => format!("{s}s"),
        60..600 => format!("{}m{}s", s / 60, s % 60),
        600..3600 => format!("{}m", s / 60),
        3600..36000 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        36000..172800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use petrel_api::canary::MetricResult;
    use petrel_api::common::Condition;
    use serde_json::json;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, h, m, s).unwrap()
    }

    fn podinfo() -> Canary {
        let mut canary: Canary = serde_json::from_value(json!({
            "apiVersion": "petrel.dev/v1alpha1",
            "kind": "Canary",
            "metadata": { "name": "podinfo", "namespace": "test" },
            "spec": {
                "provider": "istio",
                "targetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo" },
                "service": { "port": 9898 },
                "analysis": { "interval": "30s", "threshold": 5, "stepWeight": 10, "maxWeight": 50 }
            }
        }))
        .unwrap();
        canary.status = Some(CanaryStatus {
            phase: Phase::Progressing,
            failed_checks: 1,
            canary_weight: 30,
            last_applied_spec: Some("6f7d9c".into()),
            last_promoted_spec: Some("1a2b3c".into()),
            release: Some("podinfo:6.0.1".into()),
            promoted_release: Some("podinfo:6.0.0".into()),
            last_transition_time: Some(at(2, 28, 0)),
            last_analysis_time: Some(at(2, 29, 30)),
            analysis_results: vec![
                MetricResult {
                    name: "request-success-rate".into(),
                    value: Some(99.8),
                    outcome: MetricOutcome::Passed,
                    ..Default::default()
                },
                MetricResult {
                    name: "request-duration".into(),
                    value: Some(612.0),
                    primary_value: Some(480.25),
                    outcome: MetricOutcome::Failed,
                    message: "above max 500".into(),
                },
                MetricResult {
                    name: "latency-vs-primary".into(),
                    value: Some(41.0),
                    primary_value: Some(20.5),
                    outcome: MetricOutcome::Pending,
                    message: "pending: 3 canary and 3 primary values, 5 needed each".into(),
                },
            ],
            conditions: vec![
                Condition {
                    type_: "Progressing".into(),
                    status: "True".into(),
                    reason: "Analysing".into(),
                    message: "weight 30".into(),
                    last_transition_time: at(2, 28, 0),
                    observed_generation: None,
                },
                Condition {
                    type_: "Stalled".into(),
                    status: "False".into(),
                    reason: "Reconciled".into(),
                    message: String::new(),
                    last_transition_time: at(1, 0, 0),
                    observed_generation: None,
                },
            ],
            ..Default::default()
        });
        canary
    }

    #[test]
    fn a_progressing_canary_renders_as_a_tree() {
        let expected = "\
Name:            podinfo
Namespace:       test
Phase:           ◌ Progressing
Target:          Deployment/podinfo
Provider:        istio
Weight:          canary 30% · primary 70%
Failed checks:   1/5
Revision:        6f7d9c (primary 1a2b3c)
Release:         podinfo:6.0.1 (primary podinfo:6.0.0)
Last transition: 2026-11-22T02:28:00Z (2m0s ago)

Analysis (last tick 2026-11-22T02:29:30Z, 30s ago)
├── ✔ request-success-rate 99.8
├── ✖ request-duration     612 (primary 480.25) above max 500
└── … latency-vs-primary   41 (primary 20.5)    pending: 3 canary and 3 primary values, 5 needed each

Conditions
├── Progressing True  Analysing  2m0s ago  weight 30
└── Stalled     False Reconciled 1h30m ago
";
        assert_eq!(render_canary(&podinfo(), at(2, 30, 0)), expected);
    }

    #[test]
    fn a_new_canary_renders_without_status() {
        let mut canary = podinfo();
        canary.status = None;
        canary.spec.suspend = true;
        canary.spec.provider = None;
        let text = render_canary(&canary, at(2, 30, 0));
        assert!(text.contains("Phase:           ○ Initializing\n"), "{text}");
        assert!(text.contains("Paused:          yes"), "{text}");
        assert!(text.contains("Provider:        (operator default)\n"), "{text}");
        assert!(text.contains("Revision:        -\n"), "{text}");
        assert!(text.contains("Analysis\n└── no results yet\n"), "{text}");
        assert!(text.contains("Conditions\n└── none yet\n"), "{text}");
        assert!(!text.contains("Last transition"), "{text}");
    }

    #[test]
    fn fleet_membership_iterations_and_requests_are_shown() {
        let mut canary = podinfo();
        canary.spec.analysis.as_mut().unwrap().iterations = Some(10);
        canary.status.as_mut().unwrap().iterations = 3;
        let annotations = canary.annotations_mut();
        annotations.insert(FLEET_ROLLOUT_ANNOTATION.into(), "hub/podinfo".into());
        annotations.insert(petrel_api::verbs::ABORT_ANNOTATION.into(), "6f7d9c@20261122T023000Z".into());
        annotations.insert(petrel_api::verbs::RETRY_ANNOTATION.into(), "6f7d9c@20261122T022000Z".into());
        let text = render_canary(&canary, at(2, 30, 0));
        assert!(text.contains("Iterations:      3/10\n"), "{text}");
        assert!(text.contains("Fleet:           rollout hub/podinfo, approved revision none\n"), "{text}");
        assert!(text.contains("Requested:       abort of revision 6f7d9c (6f7d9c@20261122T023000Z)\n"), "{text}");
        // A retry means nothing while the revision is Progressing.
        assert!(!text.contains("retry"), "{text}");

        // Once the revision is done, or another one is under way, old requests are not shown.
        let status = canary.status.as_mut().unwrap();
        status.last_applied_spec = Some("0a0b0c".into());
        assert!(!render_canary(&canary, at(2, 30, 0)).contains("Requested"));
    }

    #[test]
    fn canaries_render_as_a_table() {
        let mut other = podinfo();
        other.metadata.name = Some("backend".into());
        other.metadata.namespace = Some("prod".into());
        other.spec.suspend = true;
        other.status = Some(CanaryStatus { phase: Phase::Succeeded, ..Default::default() });
        let expected = "\
NAMESPACE   NAME      PHASE                WEIGHT   FAILED   ITERATIONS   RELEASE         AGE OF PHASE
test        podinfo   Progressing          30       1/5      -            podinfo:6.0.1   2m0s
prod        backend   Succeeded (paused)   0        0/5      -            -               -
";
        assert_eq!(render_table(&[podinfo(), other], true, at(2, 30, 0)), expected);
        let without_namespace = render_table(&[podinfo()], false, at(2, 30, 0));
        assert!(without_namespace.starts_with("NAME      PHASE"), "{without_namespace}");
        assert_eq!(render_table(&[], false, at(2, 30, 0)), "No Canaries found.\n");
    }

    #[test]
    fn ages_read_like_kubectl() {
        let now = at(12, 0, 0);
        assert_eq!(age(at(11, 59, 15), now), "45s");
        assert_eq!(age(at(11, 57, 30), now), "2m30s");
        assert_eq!(age(at(11, 45, 0), now), "15m");
        assert_eq!(age(at(8, 40, 0), now), "3h20m");
        assert_eq!(age(at(0, 0, 0), now), "12h");
        assert_eq!(age(now + chrono::Duration::seconds(5), now), "0s");
        assert_eq!(age(now - chrono::Duration::days(4), now), "4d");
    }

    #[test]
    fn values_drop_trailing_zeros() {
        assert_eq!(format_value(612.0), "612");
        assert_eq!(format_value(99.8), "99.8");
        assert_eq!(format_value(0.12345), "0.123");
        assert_eq!(format_value(-0.0001), "0");
    }
}
