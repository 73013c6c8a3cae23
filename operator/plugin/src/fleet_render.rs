//! `kubectl petrel get rollout`: a fleet Rollout as a tree (its waves, each with its
//! members), a list of Rollouts as a table. Pure functions of the objects and the time.

use chrono::{DateTime, TimeDelta, Utc};
use kube::ResourceExt;

use super::render::{age, aligned, column_widths};
use petrel_api::Rollout;
use petrel_api::common::Condition;
use petrel_api::rollout::{
    Approval, MemberState, MemberStatus, RolloutPhase, RolloutStatus, RolloutSummary, Wave, WavePhase, WaveStatus,
};
use petrel_core::strategy::parse_duration;

/// Width of the labels in the tree view (as for Canaries).
const LABEL_WIDTH: usize = 17;
/// Space between the columns of the tree rows.
const GAP: &str = "  ";

/// One Rollout as a tree: where the release stands, then every wave of the spec in order
/// with its members, then the members no wave selects, then the conditions.
pub fn render_rollout(rollout: &Rollout, now: DateTime<Utc>) -> String {
    let status = rollout.status.clone().unwrap_or_default();
    let spec = &rollout.spec;
    let name = rollout.name_any();
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        out.push_str(&format!("{:<LABEL_WIDTH$}{value}\n", format!("{label}:")));
    };

    line("Name", name.clone());
    line("Namespace", rollout.namespace().unwrap_or_default());
    line("Canary", format!("{}/{} in every member", spec.canary_ref.namespace, spec.canary_ref.name));
    line(
        "Phase",
        match status.phase {
            Some(phase) => format!("{} {}", rollout_icon(phase), phase_name(phase)),
            None => "○ not reconciled by the hub yet".to_string(),
        },
    );
    if spec.paused {
        line("Paused", "yes (spec.paused: true): no member is approved and no wave opens".into());
    }
    line("Release", status.release.clone().unwrap_or_else(|| "-".into()));
    line("Current wave", status.current_wave.clone().unwrap_or_else(|| "-".into()));
    if !status.summary.waves_done.is_empty() {
        line("Waves done", status.summary.waves_done.clone());
    }
    line("Members", summary_text(&status.summary));
    if status.phase == Some(RolloutPhase::WaitingApproval)
        && let Some(wave) = &status.current_wave
    {
        line(
            "Next step",
            format!("kubectl petrel approve {name} {wave} -n {}", rollout.namespace().unwrap_or_default()),
        );
    }
    if let (Some(observed), Some(generation)) = (status.observed_generation, rollout.metadata.generation)
        && observed < generation
    {
        line(
            "Observed",
            format!("generation {observed} of {generation}: the hub has not acted on the latest spec yet"),
        );
    }

    out.push('\n');
    out.push_str(&render_waves(&spec.waves, &status, now));
    out.push('\n');
    out.push_str(&render_conditions(&status.conditions, now));
    out
}

/// Every wave of the spec in order (the status may lag behind a spec change: a wave
/// without status is shown Pending), each with its members as branches.
fn render_waves(waves: &[Wave], status: &RolloutStatus, now: DateTime<Utc>) -> String {
    let mut out = String::from("Waves\n");
    if waves.is_empty() {
        out.push_str("└── none in the spec\n");
        return out;
    }
    let release = status.release.as_deref();
    let wave_rows: Vec<Vec<String>> = waves
        .iter()
        .map(|wave| {
            let recorded = status.waves.iter().find(|w| w.name == wave.name);
            let pending = WaveStatus::pending(&wave.name);
            let wave_status = recorded.unwrap_or(&pending);
            let waiting = status.phase == Some(RolloutPhase::WaitingApproval)
                && status.current_wave.as_deref() == Some(wave.name.as_str());
            vec![
                wave_icon(wave_status.phase, waiting).to_string(),
                wave.name.clone(),
                format!("{:?}", wave_status.phase),
                approval_text(wave, wave_status, release, waiting, now),
                format!("{}/{} succeeded, {} failed", wave_status.succeeded, wave_status.members, wave_status.failed),
                timeline(wave, wave_status, now),
            ]
        })
        .collect();
    let wave_widths = column_widths(&wave_rows);

    // Members grouped under their wave; one set of column widths for all of them so the
    // columns line up across waves.
    let in_spec = |m: &MemberStatus| m.wave.as_ref().is_some_and(|w| waves.iter().any(|x| &x.name == w));
    let mut groups: Vec<Vec<&MemberStatus>> = waves
        .iter()
        .map(|wave| status.members.iter().filter(|m| m.wave.as_deref() == Some(wave.name.as_str())).collect())
        .collect();
    let unassigned: Vec<&MemberStatus> = status.members.iter().filter(|m| !in_spec(m)).collect();
    let member_rows: Vec<Vec<String>> =
        groups.iter().flatten().chain(unassigned.iter()).map(|m| member_row(m, now)).collect();
    let member_widths = column_widths(&member_rows);
    let mut member_lines = member_rows.iter().map(|row| aligned(row, &member_widths, GAP));

    let last_wave = waves.len() - 1;
    for (w, members) in groups.iter_mut().enumerate() {
        let last = w == last_wave && unassigned.is_empty();
        out.push_str(if last { "└── " } else { "├── " });
        out.push_str(&aligned(&wave_rows[w], &wave_widths, GAP));
        out.push('\n');
        let trunk = if last { "    " } else { "│   " };
        if members.is_empty() {
            out.push_str(&format!("{trunk}└── no member\n"));
        }
        for (i, _) in members.iter().enumerate() {
            let branch = if i + 1 == members.len() { "└── " } else { "├── " };
            out.push_str(&format!("{trunk}{branch}{}\n", member_lines.next().unwrap_or_default()));
        }
    }
    if !unassigned.is_empty() {
        out.push_str("└── (no wave: never released to)\n");
        for i in 0..unassigned.len() {
            let branch = if i + 1 == unassigned.len() { "└── " } else { "├── " };
            out.push_str(&format!("    {branch}{}\n", member_lines.next().unwrap_or_default()));
        }
    }
    out
}

/// Who opens the wave, and whether that happened for the current release.
fn approval_text(wave: &Wave, status: &WaveStatus, release: Option<&str>, waiting: bool, now: DateTime<Utc>) -> String {
    if wave.approval == Approval::Automatic {
        return "automatic".into();
    }
    match (status.approved_at, status.approved_release.as_deref()) {
        (Some(at), Some(approved)) if Some(approved) == release => format!("manual, approved {} ago", age(at, now)),
        _ if waiting => "manual, WAITING FOR APPROVAL".into(),
        (Some(_), Some(other)) => format!("manual, not approved (last approval was for release {other})"),
        _ => "manual, not approved".into(),
    }
}

/// When the wave opened, succeeded or failed, and its soak.
fn timeline(wave: &Wave, status: &WaveStatus, now: DateTime<Utc>) -> String {
    let mut parts = Vec::new();
    if let Some(at) = status.opened_at {
        parts.push(format!("opened {} ago", age(at, now)));
    }
    if let Some(at) = status.succeeded_at {
        parts.push(format!("succeeded {} ago", age(at, now)));
    }
    if let Some(at) = status.failed_at {
        parts.push(format!("failed {} ago", age(at, now)));
    }
    // The spec was validated by the API server; a soak that does not parse is shown as
    // written rather than hidden.
    let soak = wave.soak.as_deref().filter(|s| *s != "0");
    match (soak, soak.map(parse_duration), status.succeeded_at) {
        (Some(text), Some(Ok(duration)), Some(succeeded)) => {
            let ends = TimeDelta::from_std(duration).ok().map(|d| succeeded + d);
            match ends {
                Some(ends) if ends > now => parts.push(format!("soaking, {} left of {text}", age(now, ends))),
                _ => parts.push(format!("soaked {text}")),
            }
        }
        (Some(text), _, _) => parts.push(format!("soak {text}")),
        (None, _, _) => {}
    }
    parts.join(" · ")
}

fn member_row(member: &MemberStatus, now: DateTime<Utc>) -> Vec<String> {
    vec![
        member_icon(member.state).to_string(),
        member.cluster.clone(),
        format!("{:?}", member.state),
        member.phase.map_or_else(|| "-".to_string(), |p| p.to_string()),
        format!("weight {}", member.weight),
        format!("{} failed checks", member.failed_checks),
        member.release.clone().unwrap_or_else(|| "-".into()),
        member.last_contact.map_or_else(|| "never contacted".to_string(), |t| format!("contact {} ago", age(t, now))),
        member.message.clone(),
    ]
}

fn render_conditions(conditions: &[Condition], now: DateTime<Utc>) -> String {
    let mut out = String::from("Conditions\n");
    if conditions.is_empty() {
        out.push_str("└── none yet\n");
        return out;
    }
    let rows: Vec<Vec<String>> = conditions
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
    let widths = column_widths(&rows);
    for (i, row) in rows.iter().enumerate() {
        out.push_str(if i + 1 == rows.len() { "└── " } else { "├── " });
        out.push_str(&aligned(row, &widths, " "));
        out.push('\n');
    }
    out
}

/// Rollouts as a table, one row each; with the namespace column for `-A`.
pub fn render_rollout_table(rollouts: &[Rollout], all_namespaces: bool) -> String {
    if rollouts.is_empty() {
        return "No Rollouts found.\n".to_string();
    }
    let mut header = vec!["NAME", "PHASE", "RELEASE", "WAVE", "WAVES DONE", "SUCCEEDED", "FAILED"];
    if all_namespaces {
        header.insert(0, "NAMESPACE");
    }
    let mut rows = vec![header.into_iter().map(String::from).collect::<Vec<_>>()];
    for rollout in rollouts {
        let status = rollout.status.clone().unwrap_or_default();
        let mut phase = status.phase.map_or_else(|| "-".to_string(), phase_name);
        if rollout.spec.paused && status.phase != Some(RolloutPhase::Paused) {
            phase.push_str(" (paused)");
        }
        let dash = |s: Option<String>| s.unwrap_or_else(|| "-".into());
        let mut row = vec![
            rollout.name_any(),
            phase,
            dash(status.release.clone()),
            dash(status.current_wave.clone()),
            if status.summary.waves_done.is_empty() { "-".into() } else { status.summary.waves_done.clone() },
            format!("{}/{}", status.summary.succeeded, status.summary.total),
            status.summary.failed.to_string(),
        ];
        if all_namespaces {
            row.insert(0, rollout.namespace().unwrap_or_default());
        }
        rows.push(row);
    }
    let widths = column_widths(&rows);
    rows.iter().map(|row| aligned(row, &widths, "   ") + "\n").collect()
}

fn summary_text(summary: &RolloutSummary) -> String {
    let mut text = format!(
        "{} clusters: {} succeeded, {} progressing, {} pending, {} failed",
        summary.total, summary.succeeded, summary.progressing, summary.pending, summary.failed
    );
    for (count, what) in [
        (summary.unreachable, "unreachable"),
        (summary.other_release, "at another release"),
        (summary.unassigned, "in no wave"),
    ] {
        if count > 0 {
            text.push_str(&format!(", {count} {what}"));
        }
    }
    text
}

fn phase_name(phase: RolloutPhase) -> String {
    format!("{phase:?}")
}

fn rollout_icon(phase: RolloutPhase) -> &'static str {
    match phase {
        RolloutPhase::Succeeded => "✔",
        RolloutPhase::Failed => "✖",
        RolloutPhase::WaitingApproval | RolloutPhase::Paused => "॥",
        RolloutPhase::Progressing | RolloutPhase::Soaking => "◌",
    }
}

fn wave_icon(phase: WavePhase, waiting_approval: bool) -> &'static str {
    match phase {
        WavePhase::Succeeded => "✔",
        WavePhase::Failed => "✖",
        WavePhase::Progressing | WavePhase::Soaking => "◌",
        WavePhase::Pending if waiting_approval => "॥",
        WavePhase::Pending => "○",
    }
}

fn member_icon(state: MemberState) -> &'static str {
    match state {
        MemberState::Succeeded => "✔",
        MemberState::Failed | MemberState::TimedOut | MemberState::IdentityMismatch => "✖",
        MemberState::Approved | MemberState::Progressing => "◌",
        MemberState::Pending => "○",
        MemberState::Unreachable => "⚠",
        MemberState::OtherRelease => "≠",
        MemberState::Unassigned => "-",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use petrel_api::canary::Phase;
    use serde_json::json;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, h, m, s).unwrap()
    }

    fn member(cluster: &str, wave: Option<&str>, state: MemberState, phase: Option<Phase>) -> MemberStatus {
        MemberStatus {
            cluster: cluster.into(),
            wave: wave.map(String::from),
            state,
            phase,
            weight: 0,
            failed_checks: 0,
            release: Some("podinfo:6.0.1".into()),
            revision: Some("6f7d9c".into()),
            approved_at: None,
            approval_withdrawn_at: None,
            last_contact: Some(at(2, 29, 55)),
            max_weight: None,
            message: String::new(),
        }
    }

    /// A Rollout whose canary wave succeeded and soaked, waiting for approval of `eu`.
    fn waiting() -> Rollout {
        let mut rollout: Rollout = serde_json::from_value(json!({
            "apiVersion": "petrel.dev/v1alpha1",
            "kind": "Rollout",
            "metadata": { "name": "podinfo", "namespace": "fleet", "generation": 2 },
            "spec": {
                "canaryRef": { "namespace": "test", "name": "podinfo" },
                "clusters": { "matchLabels": { "env": "prod" } },
                "waves": [
                    { "name": "canary", "clusterSelector": { "matchLabels": { "role": "canary" } }, "soak": "5m" },
                    { "name": "eu", "clusterSelector": { "matchLabels": { "region": "eu" } }, "approval": "Manual" },
                    { "name": "rest", "soak": "10m" }
                ]
            }
        }))
        .unwrap();
        let mut canary_wave = WaveStatus::pending("canary");
        canary_wave.phase = WavePhase::Succeeded;
        canary_wave.opened_at = Some(at(2, 10, 0));
        canary_wave.succeeded_at = Some(at(2, 20, 0));
        canary_wave.members = 1;
        canary_wave.succeeded = 1;
        let mut eu = WaveStatus::pending("eu");
        eu.members = 2;
        let mut canary_1 = member("canary-1", Some("canary"), MemberState::Succeeded, Some(Phase::Succeeded));
        canary_1.approved_at = Some(at(2, 10, 0));
        let mut eu_2 = member("eu-2", Some("eu"), MemberState::Unreachable, Some(Phase::Initialized));
        eu_2.last_contact = Some(at(2, 0, 0));
        eu_2.release = Some("podinfo:6.0.0".into());
        eu_2.message = "unreachable since 2026-11-22T02:00:00+00:00".into();
        let mut asia = member("asia-1", None, MemberState::Unassigned, None);
        asia.release = None;
        asia.last_contact = None;
        asia.message = "no wave selects this cluster; it will not get the release".into();
        rollout.status = Some(RolloutStatus {
            release: Some("podinfo:6.0.1".into()),
            observed_generation: Some(2),
            phase: Some(RolloutPhase::WaitingApproval),
            current_wave: Some("eu".into()),
            waves: vec![canary_wave, eu, WaveStatus::pending("rest")],
            members: vec![canary_1, member("eu-1", Some("eu"), MemberState::Pending, Some(Phase::Waiting)), eu_2, asia],
            summary: RolloutSummary {
                total: 4,
                pending: 1,
                succeeded: 1,
                unreachable: 1,
                unassigned: 1,
                waves_done: "1/3".into(),
                ..RolloutSummary::default()
            },
            conditions: vec![Condition {
                type_: "Progressing".into(),
                status: "True".into(),
                reason: "WaitingApproval".into(),
                message: "wave eu waits for approval (kubectl petrel approve)".into(),
                last_transition_time: at(2, 25, 0),
                observed_generation: None,
            }],
            ..RolloutStatus::default()
        });
        rollout
    }

    #[test]
    fn a_rollout_waiting_for_approval_renders_as_a_tree() {
        let expected = "\
Name:            podinfo
Namespace:       fleet
Canary:          test/podinfo in every member
Phase:           ॥ WaitingApproval
Release:         podinfo:6.0.1
Current wave:    eu
Waves done:      1/3
Members:         4 clusters: 1 succeeded, 0 progressing, 1 pending, 0 failed, 1 unreachable, 1 in no wave
Next step:       kubectl petrel approve podinfo eu -n fleet

Waves
├── ✔  canary  Succeeded  automatic                     1/1 succeeded, 0 failed  opened 20m ago · succeeded 10m ago · soaked 5m
│   └── ✔  canary-1  Succeeded    Succeeded    weight 0  0 failed checks  podinfo:6.0.1  contact 5s ago
├── ॥  eu      Pending    manual, WAITING FOR APPROVAL  0/2 succeeded, 0 failed
│   ├── ○  eu-1      Pending      Waiting      weight 0  0 failed checks  podinfo:6.0.1  contact 5s ago
│   └── ⚠  eu-2      Unreachable  Initialized  weight 0  0 failed checks  podinfo:6.0.0  contact 30m ago  unreachable since 2026-11-22T02:00:00+00:00
├── ○  rest    Pending    automatic                     0/0 succeeded, 0 failed  soak 10m
│   └── no member
└── (no wave: never released to)
    └── -  asia-1    Unassigned   -            weight 0  0 failed checks  -              never contacted  no wave selects this cluster; it will not get the release

Conditions
└── Progressing True WaitingApproval 5m0s ago wave eu waits for approval (kubectl petrel approve)
";
        let text = render_rollout(&waiting(), at(2, 30, 0));
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn approvals_soaks_and_failures_are_told_apart() {
        let mut rollout = waiting();
        let status = rollout.status.as_mut().unwrap();
        status.phase = Some(RolloutPhase::Progressing);
        status.waves[0].succeeded_at = Some(at(2, 28, 0));
        status.waves[1].approved_at = Some(at(2, 27, 0));
        status.waves[1].approved_release = Some("podinfo:6.0.1".into());
        let text = render_rollout(&rollout, at(2, 30, 0));
        assert!(text.contains("succeeded 2m0s ago · soaking, 3m0s left of 5m"), "{text}");
        assert!(text.contains("manual, approved 3m0s ago"), "{text}");
        assert!(!text.contains("WAITING"), "{text}");

        // An approval given for an earlier release does not open this one's wave.
        let status = rollout.status.as_mut().unwrap();
        status.waves[1].approved_release = Some("podinfo:6.0.0".into());
        let text = render_rollout(&rollout, at(2, 30, 0));
        assert!(text.contains("manual, not approved (last approval was for release podinfo:6.0.0)"), "{text}");

        let status = rollout.status.as_mut().unwrap();
        status.phase = Some(RolloutPhase::Failed);
        status.waves[0].phase = WavePhase::Failed;
        status.waves[0].failed_at = Some(at(2, 29, 0));
        let text = render_rollout(&rollout, at(2, 30, 0));
        assert!(text.contains("Phase:           ✖ Failed\n"), "{text}");
        assert!(text.contains("├── ✖  canary  Failed"), "{text}");
        assert!(text.contains("failed 1m0s ago"), "{text}");
    }

    #[test]
    fn a_rollout_the_hub_has_not_seen_renders_from_its_spec() {
        let mut rollout = waiting();
        rollout.status = None;
        rollout.spec.paused = true;
        let text = render_rollout(&rollout, at(2, 30, 0));
        assert!(text.contains("Phase:           ○ not reconciled by the hub yet\n"), "{text}");
        assert!(text.contains("Paused:          yes (spec.paused: true)"), "{text}");
        assert!(text.contains("Release:         -\n"), "{text}");
        assert!(text.contains("├── ○  eu      Pending  manual, not approved"), "{text}");
        assert!(text.contains("└── ○  rest    Pending  automatic"), "{text}");
        assert!(text.contains("    └── no member\n"), "{text}");
        assert!(text.contains("Conditions\n└── none yet\n"), "{text}");
    }

    #[test]
    fn a_lagging_status_is_pointed_out() {
        let mut rollout = waiting();
        rollout.metadata.generation = Some(3);
        let text = render_rollout(&rollout, at(2, 30, 0));
        assert!(text.contains("Observed:        generation 2 of 3: the hub has not acted"), "{text}");
    }

    #[test]
    fn rollouts_render_as_a_table() {
        let mut fresh = waiting();
        fresh.metadata.name = Some("backend".into());
        fresh.metadata.namespace = Some("prod".into());
        fresh.status = None;
        fresh.spec.paused = true;
        let expected = "\
NAMESPACE   NAME      PHASE             RELEASE         WAVE   WAVES DONE   SUCCEEDED   FAILED
fleet       podinfo   WaitingApproval   podinfo:6.0.1   eu     1/3          1/4         0
prod        backend   - (paused)        -               -      -            0/0         0
";
        assert_eq!(render_rollout_table(&[waiting(), fresh], true), expected);
        assert!(render_rollout_table(&[waiting()], false).starts_with("NAME      PHASE"));
        assert_eq!(render_rollout_table(&[], false), "No Rollouts found.\n");
    }
}
