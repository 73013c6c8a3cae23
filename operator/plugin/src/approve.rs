//! `kubectl petrel approve <rollout> <wave>`: the manual gate of a fleet wave, as a pure
//! decision — either the status entry to apply or the reason there is nothing to approve.
//!
//! What the hub reads (`fleet::decide_waves`): a `Manual` wave opens once
//! `status.waves[name].approvedAt` is set AND `approvedRelease` equals the release being
//! rolled out (`status.release`); an approval for another release counts for nothing.
//!
//! How it is written: server-side apply of just that wave entry on the status
//! subresource, with the plugin's own field manager. `status.waves` is a map-list keyed
//! by `name`, so the entry merges into the hub's; and because the hub's apply
//! (`petrel-hub`) owns `approvedAt` only while it carries it itself, a hub status write
//! that does not carry it (one made from a read before the approval) leaves it in place.
//! A JSON merge patch would be wrong here: it replaces the whole `waves` list, wiping
//! the hub's record of when each wave opened and succeeded.
//!
//! Waves further ahead: `approve` refuses a wave that is not the next to open unless
//! `--ahead` is given. Argo Rollouts' `promote` and Flagger's gates act on the step that
//! is waiting now, and a manual gate exists so a person looks at the earlier waves'
//! results first; approving ahead skips that look, so it has to be asked for. The hub
//! does honour an approval given ahead (for that release only): the wave then opens as
//! soon as every earlier wave succeeded and soaked.

use chrono::{DateTime, Utc};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use super::verbs::Refusal;
use petrel_api::Rollout;
use petrel_api::rollout::{Approval, WavePhase};

/// Field manager of the plugin's writes; `managedFields` then shows who approved.
pub const PLUGIN_FIELD_MANAGER: &str = "kubectl-petrel";

/// The approval to apply on the Rollout's status.
#[derive(Clone, Debug, PartialEq)]
pub struct ApprovalPatch {
    /// Server-side apply body for the status subresource: only the approved wave's
    /// name, `approvedAt` and `approvedRelease`.
    pub apply: Value,
    /// The same write as a plain kubectl command.
    pub kubectl: String,
    /// One line for the person who approved.
    pub summary: String,
}

/// The approval of `wave` on `rollout` now, or why there is none to give. `ahead` allows
/// approving a wave that is not the next to open; `approver` is who approves (the user
/// the API server says the plugin runs as), recorded as `approvedBy`.
pub fn plan_approval(
    rollout: &Rollout,
    wave: &str,
    ahead: bool,
    approver: Option<&str>,
    now: DateTime<Utc>,
) -> Result<ApprovalPatch, Refusal> {
    let name = rollout.name_any();
    let namespace = rollout.namespace().unwrap_or_else(|| "default".to_string());
    let refuse = |why: String| Err(Refusal(why));

    let Some(position) = rollout.spec.waves.iter().position(|w| w.name == wave) else {
        let names: Vec<&str> = rollout.spec.waves.iter().map(|w| w.name.as_str()).collect();
        return refuse(format!("Rollout {namespace}/{name} has no wave {wave:?}; its waves are {}", names.join(", ")));
    };
    if rollout.spec.waves[position].approval != Approval::Manual {
        return refuse(format!(
            "wave {wave} is Automatic: it opens by itself once every earlier wave succeeded and soaked; only Manual waves take an approval"
        ));
    }
    let status = rollout.status.clone().unwrap_or_default();
    let Some(release) = status.release.clone() else {
        return refuse(format!(
            "{name} has no release yet (no member of its first wave reports one to the hub): nothing to approve"
        ));
    };
    let recorded = |wave: &str| status.waves.iter().find(|w| w.name == wave);
    if let Some(w) = recorded(wave) {
        if let (Some(at), Some(approved)) = (w.approved_at, w.approved_release.as_deref())
            && approved == release
        {
            return refuse(format!(
                "wave {wave} is already approved for release {release} (at {})",
                at.format("%Y-%m-%dT%H:%M:%SZ")
            ));
        }
        if let Some(opened) = w.opened_at {
            return refuse(format!(
                "wave {wave} already opened for release {release} at {} ({:?}): nothing to approve",
                opened.format("%Y-%m-%dT%H:%M:%SZ"),
                w.phase
            ));
        }
    }
    // The waves before this one, as the hub last recorded them for this release.
    let earlier: Vec<(&str, WavePhase)> = rollout.spec.waves[..position]
        .iter()
        .map(|w| (w.name.as_str(), recorded(&w.name).map_or(WavePhase::Pending, |s| s.phase)))
        .collect();
    if let Some((failed, _)) = earlier.iter().find(|(_, phase)| *phase == WavePhase::Failed) {
        return refuse(format!(
            "release {release} failed in wave {failed} (failure budget breached): no later wave opens for it; nothing to approve"
        ));
    }
    let blocking = earlier.iter().find(|(_, phase)| *phase != WavePhase::Succeeded);
    if let Some((blocking, phase)) = blocking
        && !ahead
    {
        return refuse(format!(
            "wave {wave} is not the next to open: wave {blocking} is {phase:?} and must succeed and soak first. \
             Approving now would open {wave} for release {release} without a further look once every earlier wave \
             has; add --ahead to approve it in advance"
        ));
    }

    let approved_at = now.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let mut entry = json!({ "name": wave, "approvedAt": approved_at, "approvedRelease": release });
    if let Some(approver) = approver {
        entry["approvedBy"] = json!(approver);
    }
    let apply = json!({
        "apiVersion": Rollout::api_version(&()),
        "kind": Rollout::kind(&()),
        "metadata": { "name": name, "namespace": namespace },
        "status": { "waves": [ entry ] }
    });
    let kubectl = format!(
        "echo '{}' | kubectl apply --server-side --subresource=status --field-manager={PLUGIN_FIELD_MANAGER} --force-conflicts -f -",
        apply.to_string().replace('\'', r"'\''")
    );
    let mut summary = match blocking {
        Some((blocking, _)) => format!(
            "approved wave {wave} of {name} ahead of time for release {release}: it opens once wave {blocking} and every other earlier wave succeeded and soaked"
        ),
        None => format!("approved wave {wave} of {name} for release {release}: the hub opens it now"),
    };
    if rollout.spec.paused {
        summary.push_str(&format!(" (once {name} is resumed: spec.paused is set)"));
    }
    if let Some(approver) = approver {
        summary.push_str(&format!("; recorded as approved by {approver}"));
    }
    Ok(ApprovalPatch { apply, kubectl, summary })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use petrel_api::rollout::{RolloutPhase, RolloutStatus, WaveStatus};

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 2, 30, 0).unwrap()
    }

    fn wave(name: &str, phase: WavePhase) -> WaveStatus {
        let mut status = WaveStatus::pending(name);
        status.phase = phase;
        if phase != WavePhase::Pending {
            status.opened_at = Some(now() - chrono::Duration::minutes(20));
        }
        status
    }

    /// canary (automatic) succeeded; eu (manual) waits; prod (manual) behind it.
    fn rollout() -> Rollout {
        let mut rollout: Rollout = serde_json::from_value(json!({
            "apiVersion": "petrel.dev/v1alpha1",
            "kind": "Rollout",
            "metadata": { "name": "podinfo", "namespace": "fleet" },
            "spec": {
                "canaryRef": { "namespace": "test", "name": "podinfo" },
                "waves": [
                    { "name": "canary", "clusterSelector": { "matchLabels": { "role": "canary" } } },
                    { "name": "eu", "clusterSelector": { "matchLabels": { "region": "eu" } }, "approval": "Manual" },
                    { "name": "prod", "approval": "Manual" }
                ]
            }
        }))
        .unwrap();
        rollout.status = Some(RolloutStatus {
            release: Some("podinfo:6.0.1".into()),
            phase: Some(RolloutPhase::WaitingApproval),
            current_wave: Some("eu".into()),
            waves: vec![
                wave("canary", WavePhase::Succeeded),
                wave("eu", WavePhase::Pending),
                wave("prod", WavePhase::Pending),
            ],
            ..RolloutStatus::default()
        });
        rollout
    }

    fn refusal(rollout: &Rollout, wave: &str, ahead: bool) -> String {
        plan_approval(rollout, wave, ahead, None, now()).unwrap_err().0
    }

    #[test]
    fn the_waiting_wave_gets_exactly_what_the_hub_reads() {
        let planned = plan_approval(&rollout(), "eu", false, None, now()).unwrap();
        assert_eq!(
            planned.apply,
            json!({
                "apiVersion": "petrel.dev/v1alpha1",
                "kind": "Rollout",
                "metadata": { "name": "podinfo", "namespace": "fleet" },
                "status": { "waves": [ {
                    "name": "eu", "approvedAt": "2026-11-22T02:30:00Z", "approvedRelease": "podinfo:6.0.1"
                } ] }
            })
        );
        assert_eq!(
            planned.kubectl,
            r#"echo '{"apiVersion":"petrel.dev/v1alpha1","kind":"Rollout","metadata":{"name":"podinfo","namespace":"fleet"},"status":{"waves":[{"approvedAt":"2026-11-22T02:30:00Z","approvedRelease":"podinfo:6.0.1","name":"eu"}]}}' | kubectl apply --server-side --subresource=status --field-manager=kubectl-petrel --force-conflicts -f -"#
        );
        assert_eq!(planned.summary, "approved wave eu of podinfo for release podinfo:6.0.1: the hub opens it now");

        // The entry, read back as the hub reads it, is an approval of this release.
        let entry: WaveStatus = serde_json::from_value(planned.apply["status"]["waves"][0].clone()).unwrap();
        assert_eq!(entry.approved_at, Some(now()));
        assert_eq!(entry.approved_release.as_deref(), Some("podinfo:6.0.1"));
    }

    #[test]
    fn the_approver_is_recorded_next_to_approved_at() {
        let planned = plan_approval(&rollout(), "eu", false, Some("alice@example.com"), now()).unwrap();
        let entry: WaveStatus = serde_json::from_value(planned.apply["status"]["waves"][0].clone()).unwrap();
        assert_eq!(entry.approved_by.as_deref(), Some("alice@example.com"));
        assert!(planned.kubectl.contains(r#""approvedBy":"alice@example.com""#), "{}", planned.kubectl);
        assert!(planned.summary.ends_with("; recorded as approved by alice@example.com"), "{}", planned.summary);
        let anonymous = plan_approval(&rollout(), "eu", false, None, now()).unwrap();
        assert!(anonymous.apply["status"]["waves"][0].get("approvedBy").is_none());
    }

    #[test]
    fn an_automatic_or_unknown_wave_is_refused() {
        assert_eq!(
            refusal(&rollout(), "canary", false),
            "wave canary is Automatic: it opens by itself once every earlier wave succeeded and soaked; only Manual waves take an approval"
        );
        assert_eq!(
            refusal(&rollout(), "asia", false),
            "Rollout fleet/podinfo has no wave \"asia\"; its waves are canary, eu, prod"
        );
    }

    #[test]
    fn nothing_is_approved_without_a_release() {
        let mut r = rollout();
        r.status = None;
        assert!(refusal(&r, "eu", false).starts_with("podinfo has no release yet"));
    }

    #[test]
    fn an_approval_for_this_release_is_not_given_twice_but_one_for_an_old_release_is_replaced() {
        let mut r = rollout();
        let eu = &mut r.status.as_mut().unwrap().waves[1];
        eu.approved_at = Some(now() - chrono::Duration::hours(1));
        eu.approved_release = Some("podinfo:6.0.1".into());
        assert_eq!(
            refusal(&r, "eu", false),
            "wave eu is already approved for release podinfo:6.0.1 (at 2026-11-22T01:30:00Z)"
        );
        r.status.as_mut().unwrap().waves[1].approved_release = Some("podinfo:6.0.0".into());
        let planned = plan_approval(&r, "eu", false, None, now()).unwrap();
        assert_eq!(planned.apply["status"]["waves"][0]["approvedRelease"], "podinfo:6.0.1");
    }

    #[test]
    fn an_open_wave_needs_no_approval() {
        let mut r = rollout();
        r.status.as_mut().unwrap().waves[1] = wave("eu", WavePhase::Progressing);
        assert!(refusal(&r, "eu", false).starts_with("wave eu already opened for release podinfo:6.0.1 at"));
    }

    #[test]
    fn a_wave_after_a_failed_one_never_opens() {
        let mut r = rollout();
        r.status.as_mut().unwrap().waves[0] = wave("canary", WavePhase::Failed);
        assert_eq!(
            refusal(&r, "eu", true),
            "release podinfo:6.0.1 failed in wave canary (failure budget breached): no later wave opens for it; nothing to approve"
        );
    }

    #[test]
    fn a_wave_further_ahead_needs_ahead() {
        let r = rollout();
        let why = refusal(&r, "prod", false);
        assert!(why.starts_with("wave prod is not the next to open: wave eu is Pending"), "{why}");
        assert!(why.ends_with("add --ahead to approve it in advance"), "{why}");
        let planned = plan_approval(&r, "prod", true, None, now()).unwrap();
        assert_eq!(planned.apply["status"]["waves"][0]["name"], "prod");
        assert!(
            planned.summary.contains("ahead of time") && planned.summary.contains("wave eu"),
            "{}",
            planned.summary
        );

        // A wave whose earlier waves have no status yet is ahead as well.
        let mut fresh = rollout();
        fresh.status.as_mut().unwrap().waves.clear();
        assert!(refusal(&fresh, "eu", false).contains("wave canary is Pending"));
    }

    #[test]
    fn approving_a_paused_rollout_says_when_it_applies() {
        let mut r = rollout();
        r.spec.paused = true;
        let planned = plan_approval(&r, "eu", false, None, now()).unwrap();
        assert!(planned.summary.ends_with("(once podinfo is resumed: spec.paused is set)"), "{}", planned.summary);
    }

    #[test]
    fn quotes_in_the_release_survive_the_shell() {
        let mut r = rollout();
        r.status.as_mut().unwrap().release = Some("it's".into());
        let planned = plan_approval(&r, "eu", false, None, now()).unwrap();
        assert!(planned.kubectl.contains(r#""approvedRelease":"it'\''s""#), "{}", planned.kubectl);
    }
}
