//! The Rollout status the hub writes, built from a decision. Pure.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use super::decision::{MemberObservation, WaveDecision};
use super::plan::{ClusterName, RolloutPlan};
use petrel_api::common::Condition;
use petrel_api::rollout::{
    CONDITION_COMPLETE, CONDITION_DEGRADED, CONDITION_PROGRESSING, MemberState, MemberStatus, RolloutPhase,
    RolloutStatus, RolloutSummary, WavePhase, WaveStatus,
};

/// What the status recorded about `release`: the wave history and when each member
/// was approved. Empty when the status is about another release, so a new release
/// starts from scratch (no wave open, nothing approved).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReleaseHistory {
    pub waves: Vec<WaveStatus>,
    pub approvals: BTreeMap<ClusterName, DateTime<Utc>>,
}

/// Reads the history of `release` from the last written status.
pub fn history_for_release(status: Option<&RolloutStatus>, release: &str) -> ReleaseHistory {
    let Some(status) = status.filter(|s| s.release.as_deref() == Some(release)) else {
        return ReleaseHistory::default();
    };
    ReleaseHistory {
        waves: status.waves.clone(),
        approvals: status.members.iter().filter_map(|m| Some((m.cluster.clone(), m.approved_at?))).collect(),
    }
}

/// The status to write after `decision`: waves, one entry per member (ordered by wave,
/// then name), summary and conditions. `previous_conditions` keeps transition times
/// of conditions whose status did not change.
pub fn build_status(
    plan: &RolloutPlan,
    release: &str,
    generation: Option<i64>,
    members: &[MemberObservation],
    decision: &WaveDecision,
    previous_conditions: &[Condition],
    now: DateTime<Utc>,
) -> RolloutStatus {
    let approved_now: BTreeSet<&str> = decision.approve.iter().map(|a| a.cluster.as_str()).collect();
    let mut summary = RolloutSummary { total: 0, ..RolloutSummary::default() };
    let mut entries: Vec<(Option<usize>, MemberStatus)> = decision
        .members
        .iter()
        .map(|verdict| {
            let member = &members[verdict.index];
            tally(&mut summary, verdict.state);
            let canary = member.canary.as_ref();
            let approved_at =
                member.approved_at.or_else(|| approved_now.contains(member.cluster.as_str()).then_some(now));
            let status = MemberStatus {
                cluster: member.cluster.clone(),
                wave: verdict.wave.map(|w| plan.waves[w].name.clone()),
                state: verdict.state,
                phase: canary.map(|c| c.phase),
                weight: canary.map_or(0, |c| c.weight),
                failed_checks: canary.map_or(0, |c| c.failed_checks),
                release: canary.and_then(|c| c.release.clone()),
                revision: canary.and_then(|c| c.revision.clone()),
                approved_at,
                // The hub's to fill: whether a withdrawal happened is known only from
                // the member's Canary and the writes (`hub::decisions::with_withdrawals`).
                approval_withdrawn_at: None,
                last_contact: member.last_contact,
                max_weight: canary.and_then(|c| c.max_weight),
                message: verdict.message.clone(),
            };
            (verdict.wave, status)
        })
        .collect();
    // Unassigned members (no wave) go last.
    entries.sort_by(|(wa, a), (wb, b)| {
        wa.unwrap_or(usize::MAX).cmp(&wb.unwrap_or(usize::MAX)).then_with(|| a.cluster.cmp(&b.cluster))
    });
    let done = decision.waves.iter().filter(|w| w.phase == WavePhase::Succeeded).count();
    summary.waves_done = format!("{done}/{}", decision.waves.len());

    let current_wave = decision.current_wave.map(|w| plan.waves[w].name.clone());
    RolloutStatus {
        release: Some(release.to_string()),
        observed_generation: generation,
        phase: Some(decision.phase),
        current_wave: current_wave.clone(),
        waves: decision.waves.clone(),
        members: entries.into_iter().map(|(_, m)| m).collect(),
        conditions: conditions(decision, current_wave.as_deref(), &summary, previous_conditions, now),
        summary,
        // Filled by `inventory::with_inventory`, which needs the previous status.
        history: Vec::new(),
        inventory: Vec::new(),
    }
}

fn tally(summary: &mut RolloutSummary, state: MemberState) {
    summary.total += 1;
    let bucket = match state {
        MemberState::Pending => &mut summary.pending,
        MemberState::Approved | MemberState::Progressing => &mut summary.progressing,
        MemberState::Succeeded => &mut summary.succeeded,
        MemberState::Failed | MemberState::TimedOut | MemberState::IdentityMismatch => &mut summary.failed,
        MemberState::Unreachable => &mut summary.unreachable,
        MemberState::OtherRelease => &mut summary.other_release,
        MemberState::Unassigned => &mut summary.unassigned,
    };
    *bucket += 1;
}

fn conditions(
    decision: &WaveDecision,
    current_wave: Option<&str>,
    summary: &RolloutSummary,
    previous: &[Condition],
    now: DateTime<Utc>,
) -> Vec<Condition> {
    let wave = current_wave.unwrap_or("-");
    let unassigned = if summary.unassigned > 0 {
        format!("; {} cluster(s) fall in no wave: {}", summary.unassigned, decision.unassigned.join(", "))
    } else {
        String::new()
    };
    let (progressing, reason, message) = match decision.phase {
        RolloutPhase::Progressing => (
            true,
            "WaveProgressing",
            format!("wave {wave}: {} of {} clusters succeeded", summary.succeeded, summary.total),
        ),
        RolloutPhase::Soaking => (true, "WaveSoaking", format!("wave {wave} succeeded and is soaking")),
        RolloutPhase::WaitingApproval => {
            (true, "WaitingApproval", format!("wave {wave} waits for approval (kubectl petrel approve)"))
        }
        RolloutPhase::Paused => (false, "Paused", "spec.paused is set: nothing is approved".to_string()),
        RolloutPhase::Succeeded => (false, "Complete", "every wave succeeded and soaked".to_string()),
        RolloutPhase::Failed => (false, "FailureBudgetBreached", format!("wave {wave} breached its failure budget")),
    };
    let degraded_message = match &decision.budget_breached {
        Some(name) => {
            let failed = decision.waves.iter().find(|w| &w.name == name).map_or(0, |w| w.failed);
            format!(
                "wave {name}: {failed} cluster(s) failed or timed out ({} to roll back, {} to withdraw)",
                decision.rollback.len(),
                decision.withdraw.len()
            )
        }
        None => String::new(),
    };
    vec![
        condition(previous, CONDITION_PROGRESSING, progressing, reason, format!("{message}{unassigned}"), now),
        condition(
            previous,
            CONDITION_COMPLETE,
            decision.phase == RolloutPhase::Succeeded,
            if decision.phase == RolloutPhase::Succeeded { "AllWavesSucceeded" } else { "InProgress" },
            String::new(),
            now,
        ),
        condition(
            previous,
            CONDITION_DEGRADED,
            decision.budget_breached.is_some(),
            if decision.budget_breached.is_some() { "FailureBudgetBreached" } else { "WithinBudget" },
            degraded_message,
            now,
        ),
    ]
}

/// A condition whose transition time moves only when its status changes.
fn condition(
    previous: &[Condition],
    type_: &str,
    value: bool,
    reason: &str,
    message: String,
    now: DateTime<Utc>,
) -> Condition {
    Condition::after(previous, type_, Condition::status_of(value), reason, message, now)
}
