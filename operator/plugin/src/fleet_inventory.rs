//! `kubectl petrel fleet [ROLLOUT]`: what every member of the fleet runs, app by app
//! (one app per Rollout), since when, and who drifted from the fleet's last successful
//! release; with a Rollout named, its last releases too (when each wave opened and
//! finished, who approved the manual ones). Pure: it reads the Rollouts' status only
//! (`status.inventory`, `status.history`), which the hub keeps.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use kube::ResourceExt;

use super::render::{age, aligned, column_widths};
use petrel_api::Rollout;
use petrel_api::rollout::{MemberInventory, ReleaseOutcome, ReleaseRecord, RolloutStatus, WavePhase};
use petrel_core::fleet::inventory::{Drift, drift_of, last_successful};

const GAP: &str = "  ";

/// The fleet matrix of `rollouts` (members × apps), the drifted members, and with
/// `detail` (one Rollout named) its release history.
pub fn render_fleet(rollouts: &[Rollout], detail: bool, now: DateTime<Utc>) -> String {
    if rollouts.is_empty() {
        return "No Rollouts found.\n".to_string();
    }
    let statuses: Vec<RolloutStatus> = rollouts.iter().map(|r| r.status.clone().unwrap_or_default()).collect();
    let clusters: BTreeSet<&str> =
        statuses.iter().flat_map(|s| s.inventory.iter().map(|e| e.cluster.as_str())).collect();
    let mut out = format!(
        "Fleet: {} cluster(s) × {} app(s) (one per Rollout); * marks a cluster not running its app's last successful release\n\n",
        clusters.len(),
        rollouts.len()
    );

    let mut header = vec!["CLUSTER".to_string()];
    header.extend(rollouts.iter().map(|r| r.name_any().to_uppercase()));
    let mut rows = vec![header];
    for cluster in &clusters {
        let mut row = vec![cluster.to_string()];
        for status in &statuses {
            row.push(match status.inventory.iter().find(|e| e.cluster == *cluster) {
                Some(entry) => cell(entry, status, now),
                None => "-".to_string(),
            });
        }
        rows.push(row);
    }
    let widths = column_widths(&rows);
    for row in &rows {
        out.push_str(&aligned(row, &widths, GAP));
        out.push('\n');
    }

    for (rollout, status) in rollouts.iter().zip(&statuses) {
        out.push('\n');
        out.push_str(&app_summary(rollout, status, now));
        if detail {
            out.push_str(&history_text(status, now));
        }
    }
    out
}

/// One cell: the release (shortened to image name and tag), how long it has run, and
/// the drift mark.
fn cell(entry: &MemberInventory, status: &RolloutStatus, now: DateTime<Utc>) -> String {
    let Some(release) = entry.release.as_deref() else {
        return "? (not seen yet)".to_string();
    };
    let mut text = short_release(release);
    if let Some(since) = entry.since {
        text.push_str(&format!(" {}", age(since, now)));
    }
    match drift_of(entry, status) {
        Drift::Drifted { since } => {
            text.push_str(" *drifted");
            if let Some(since) = since {
                text.push_str(&format!(" {}", age(since, now)));
            }
        }
        Drift::Ahead => text.push_str(" (releasing)"),
        Drift::InSync | Drift::Unknown => {}
    }
    text
}

/// A release identity (the target's images, comma-separated) as image names and tags:
/// `ghcr.io/stefanprodan/podinfo:6.7.1` reads `podinfo:6.7.1`.
pub fn short_release(release: &str) -> String {
    release
        .split(',')
        .map(|image| {
            let image = image.trim();
            image.rsplit_once('/').map_or(image, |(_, name)| name).to_string()
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The app's last successful release, what is in flight, and every drifted member.
fn app_summary(rollout: &Rollout, status: &RolloutStatus, now: DateTime<Utc>) -> String {
    let name = rollout.name_any();
    let mut out = format!("{name} (Rollout {}/{name})\n", rollout.namespace().unwrap_or_default());
    let mut line = |label: &str, value: String| out.push_str(&format!("  {label:<24}{value}\n"));
    match last_successful(&status.history) {
        Some(last) => line(
            "last successful release",
            format!(
                "{}{}",
                last.release,
                last.finished_at.map(|t| format!(", succeeded {} ago", age(t, now))).unwrap_or_default()
            ),
        ),
        None => line("last successful release", "none yet: drift cannot be told".into()),
    }
    if let Some(current) = status.history.first().filter(|r| r.outcome != ReleaseOutcome::Succeeded) {
        line("latest release", format!("{} {}", current.release, outcome_text(current, now)));
    }
    let drifted: Vec<String> = status
        .inventory
        .iter()
        .filter_map(|entry| match drift_of(entry, status) {
            Drift::Drifted { since } => Some(format!(
                "{} runs {}{}{}{}",
                entry.cluster,
                entry.release.as_deref().unwrap_or("?"),
                entry.since.map(|t| format!(" (since {} ago)", age(t, now))).unwrap_or_default(),
                since.map(|t| format!(", drifted for {}", age(t, now))).unwrap_or_default(),
                entry
                    .rolled_back_from
                    .as_deref()
                    .map(|r| format!(", rolled back from {r} by the hub"))
                    .unwrap_or_default(),
            )),
            _ => None,
        })
        .collect();
    if drifted.is_empty() {
        if last_successful(&status.history).is_some() {
            line("drifted", "none".into());
        }
    } else {
        for (i, text) in drifted.iter().enumerate() {
            line(if i == 0 { "drifted" } else { "" }, text.clone());
        }
    }
    let before: Vec<String> = status
        .inventory
        .iter()
        .filter_map(|e| Some(format!("{} {}", e.cluster, e.previous_release.as_deref()?)))
        .collect();
    if !before.is_empty() {
        line("ran before", before.join(", "));
    }
    out
}

fn outcome_text(record: &ReleaseRecord, now: DateTime<Utc>) -> String {
    let ago = |t: Option<DateTime<Utc>>| t.map(|t| format!(" {} ago", age(t, now))).unwrap_or_default();
    match record.outcome {
        ReleaseOutcome::InProgress => match record.started_at {
            Some(t) => format!("in progress for {}", age(t, now)),
            None => "in progress".to_string(),
        },
        ReleaseOutcome::Succeeded => format!("succeeded{}", ago(record.finished_at)),
        ReleaseOutcome::Failed => format!("failed{}", ago(record.finished_at)),
        ReleaseOutcome::Superseded => format!("superseded{}", ago(record.finished_at)),
    }
}

/// The Rollout's last releases, newest first, each with its waves.
fn history_text(status: &RolloutStatus, now: DateTime<Utc>) -> String {
    let mut out = String::from("  releases (newest first)\n");
    if status.history.is_empty() {
        out.push_str("  └── none recorded yet\n");
        return out;
    }
    for (i, record) in status.history.iter().enumerate() {
        let last = i + 1 == status.history.len();
        let started = record.started_at.map(|t| format!(", started {} ago", age(t, now))).unwrap_or_default();
        out.push_str(&format!(
            "  {}{}  {}{started}\n",
            if last { "└── " } else { "├── " },
            record.release,
            outcome_text(record, now)
        ));
        let trunk = if last { "      " } else { "  │   " };
        let rows: Vec<Vec<String>> = record
            .waves
            .iter()
            .map(|w| {
                let mut facts = Vec::new();
                match w.opened_at {
                    Some(t) => facts.push(format!("opened {} ago", age(t, now))),
                    None => facts.push("never opened".to_string()),
                }
                if let Some(t) = w.finished_at {
                    let verb = if w.phase == WavePhase::Failed { "failed" } else { "succeeded" };
                    facts.push(format!("{verb} {} ago", age(t, now)));
                }
                if let Some(t) = w.approved_at {
                    facts.push(format!(
                        "approved by {} {} ago",
                        w.approved_by.as_deref().unwrap_or("(unknown user)"),
                        age(t, now)
                    ));
                }
                vec![w.name.clone(), format!("{:?}", w.phase), facts.join(", ")]
            })
            .collect();
        let widths = column_widths(&rows);
        for (j, row) in rows.iter().enumerate() {
            let branch = if j + 1 == rows.len() { "└── " } else { "├── " };
            out.push_str(&format!("{trunk}{branch}{}\n", aligned(row, &widths, GAP)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, h, m, 0).unwrap()
    }

    fn rollout(name: &str, status: serde_json::Value) -> Rollout {
        let mut rollout: Rollout = serde_json::from_value(json!({
            "apiVersion": "petrel.dev/v1alpha1",
            "kind": "Rollout",
            "metadata": { "name": name, "namespace": "petrel-system" },
            "spec": { "canaryRef": { "namespace": "apps", "name": name }, "waves": [{ "name": "all" }] }
        }))
        .unwrap();
        rollout.status = Some(serde_json::from_value(status).unwrap());
        rollout
    }

    /// Released twice; member-b was held back on the first release.
    fn podinfo() -> Rollout {
        rollout(
            "podinfo",
            json!({
                "release": "ghcr.io/stefanprodan/podinfo:6.0.1",
                "phase": "Succeeded",
                "history": [
                    {"release": "ghcr.io/stefanprodan/podinfo:6.0.1", "outcome": "Succeeded",
                     "startedAt": "2026-11-22T10:00:00Z", "finishedAt": "2026-11-22T10:20:00Z",
                     "waves": [
                        {"name": "canary", "phase": "Succeeded", "openedAt": "2026-11-22T10:00:00Z", "finishedAt": "2026-11-22T10:05:00Z"},
                        {"name": "prod", "phase": "Succeeded", "openedAt": "2026-11-22T10:10:00Z", "finishedAt": "2026-11-22T10:20:00Z",
                         "approvedAt": "2026-11-22T10:09:00Z", "approvedBy": "alice@example.com"}
                     ]},
                    {"release": "ghcr.io/stefanprodan/podinfo:6.0.0", "outcome": "Succeeded",
                     "startedAt": "2026-11-22T08:00:00Z", "finishedAt": "2026-11-22T08:30:00Z"}
                ],
                "inventory": [
                    {"cluster": "member-a", "release": "ghcr.io/stefanprodan/podinfo:6.0.1", "since": "2026-11-22T10:15:00Z",
                     "previousRelease": "ghcr.io/stefanprodan/podinfo:6.0.0"},
                    {"cluster": "member-b", "release": "ghcr.io/stefanprodan/podinfo:6.0.0", "since": "2026-11-22T08:25:00Z"},
                    {"cluster": "member-canary", "release": "ghcr.io/stefanprodan/podinfo:6.0.1", "since": "2026-11-22T10:04:00Z"}
                ]
            }),
        )
    }

    #[test]
    fn a_member_held_back_shows_as_drifted_with_its_age() {
        let text = render_fleet(&[podinfo()], true, at(10, 30));
        let expected = "\
Fleet: 3 cluster(s) × 1 app(s) (one per Rollout); * marks a cluster not running its app's last successful release

CLUSTER        PODINFO
member-a       podinfo:6.0.1 15m
member-b       podinfo:6.0.0 2h5m *drifted 10m
member-canary  podinfo:6.0.1 26m

podinfo (Rollout petrel-system/podinfo)
  last successful release ghcr.io/stefanprodan/podinfo:6.0.1, succeeded 10m ago
  drifted                 member-b runs ghcr.io/stefanprodan/podinfo:6.0.0 (since 2h5m ago), drifted for 10m
  ran before              member-a ghcr.io/stefanprodan/podinfo:6.0.0
  releases (newest first)
  ├── ghcr.io/stefanprodan/podinfo:6.0.1  succeeded 10m ago, started 30m ago
  │   ├── canary  Succeeded  opened 30m ago, succeeded 25m ago
  │   └── prod    Succeeded  opened 20m ago, succeeded 10m ago, approved by alice@example.com 21m ago
  └── ghcr.io/stefanprodan/podinfo:6.0.0  succeeded 2h0m ago, started 2h30m ago
";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn several_apps_make_columns_and_a_missing_member_is_a_dash() {
        let frontend = rollout(
            "frontend",
            json!({
                "release": "registry/frontend:2,registry/sidecar:1",
                "phase": "Progressing",
                "history": [{"release": "registry/frontend:2,registry/sidecar:1", "outcome": "InProgress", "startedAt": "2026-11-22T10:25:00Z"}],
                "inventory": [
                    {"cluster": "member-a", "release": "registry/frontend:2,registry/sidecar:1", "since": "2026-11-22T10:28:00Z"},
                    {"cluster": "member-z"}
                ]
            }),
        );
        let text = render_fleet(&[podinfo(), frontend], false, at(10, 30));
        assert!(text.contains("CLUSTER        PODINFO                          FRONTEND\n"), "{text}");
        assert!(
            text.contains("member-a       podinfo:6.0.1 15m                frontend:2,sidecar:1 2m0s (releasing)\n"),
            "{text}"
        );
        assert!(text.contains("member-b       podinfo:6.0.0 2h5m *drifted 10m  -\n"), "{text}");
        assert!(text.contains("member-z       -                                ? (not seen yet)\n"), "{text}");
        assert!(text.contains("  last successful release none yet: drift cannot be told\n"), "{text}");
        assert!(
            text.contains("  latest release          registry/frontend:2,registry/sidecar:1 in progress for 5m0s\n"),
            "{text}"
        );
        assert!(!text.contains("releases (newest first)"), "history only for a named Rollout: {text}");
    }

    #[test]
    fn releases_read_as_image_names_and_tags() {
        assert_eq!(short_release("ghcr.io/stefanprodan/podinfo:6.7.1"), "podinfo:6.7.1");
        assert_eq!(short_release("a/b:1, c:2"), "b:1,c:2");
        assert_eq!(render_fleet(&[], false, at(1, 0)), "No Rollouts found.\n");
    }
}
