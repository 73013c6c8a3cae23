//! Properties of the wave decision over arbitrary plans, members and clocks, and over
//! multi-step simulations that feed each decision back with members progressing,
//! failing and dropping off the network at random.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use proptest::prelude::*;

use super::decision::{CanaryObservation, MemberObservation, WaveDecision, decide_waves, occupies_slot};
use super::decision_tests::{RELEASE, at};
use super::identity::IdentityVerdict;
use super::plan::{Membership, RolloutPlan, Share, WavePlan, assign_waves};
use super::status::{build_status, history_for_release};
use petrel_api::canary::Phase;
use petrel_api::rollout::{
    Approval, ClusterSelector, FailurePolicy, LabelOperator, LabelRequirement, MemberState, RolloutPhase, WavePhase,
    WaveStatus,
};

const OLD_RELEASE: &str = "podinfo:6.4.0";

fn labels(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

fn selector() -> impl Strategy<Value = ClusterSelector> {
    prop_oneof![
        Just(ClusterSelector::default()),
        (0..4u8).prop_map(|t| ClusterSelector {
            match_labels: labels(&[("tier", t.to_string())]),
            match_expressions: vec![],
        }),
        proptest::sample::subsequence(vec!["a", "b", "c"], 1..=3).prop_map(|zones| ClusterSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![LabelRequirement {
                key: "zone".into(),
                operator: LabelOperator::In,
                values: zones.into_iter().map(String::from).collect(),
            }],
        }),
        (0..4u8).prop_map(|t| ClusterSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![LabelRequirement {
                key: "tier".into(),
                operator: LabelOperator::NotIn,
                values: vec![t.to_string()],
            }],
        }),
    ]
}

fn share(min: u32, max_percent: u32) -> impl Strategy<Value = Share> {
    prop_oneof![(min..4u32).prop_map(Share::Count), (min..=max_percent).prop_map(Share::Percent),]
}

fn wave_plan() -> impl Strategy<Value = WavePlan> {
    (
        selector(),
        share(1, 100),
        share(0, 60),
        0..90i64,
        prop_oneof![4 => Just(Approval::Automatic), 1 => Just(Approval::Manual)],
        1..60i64,
    )
        .prop_map(|(selector, max_concurrency, max_failures, soak, approval, deadline)| WavePlan {
            name: String::new(),
            selector,
            max_concurrency,
            max_failures,
            soak: TimeDelta::minutes(soak),
            approval,
            progress_deadline: TimeDelta::minutes(deadline),
        })
}

fn rollout_plan() -> impl Strategy<Value = RolloutPlan> {
    (
        prop::collection::vec(wave_plan(), 1..=4),
        prop_oneof![3 => Just(ClusterSelector::default()), 1 => selector()],
        prop_oneof![Just(FailurePolicy::Halt), Just(FailurePolicy::RollbackAll)],
        prop::bool::weighted(0.2),
    )
        .prop_map(|(mut waves, clusters, on_failure, paused)| {
            for (i, wave) in waves.iter_mut().enumerate() {
                wave.name = format!("w{i}");
            }
            RolloutPlan { clusters, waves, on_failure, paused }
        })
}

fn member_labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    (prop::option::weighted(0.8, 0..4u8), prop::option::weighted(0.9, 0..3u8)).prop_map(|(tier, zone)| {
        let mut out = BTreeMap::new();
        if let Some(t) = tier {
            out.insert("tier".to_string(), t.to_string());
        }
        if let Some(z) = zone {
            out.insert("zone".to_string(), ["a", "b", "c"][z as usize].to_string());
        }
        out
    })
}

fn optional_text(choices: &'static [&'static str]) -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop::sample::select(choices).prop_map(String::from))
}

/// Any Canary status at all, including stale and contradictory ones.
fn canary_observation() -> impl Strategy<Value = CanaryObservation> {
    (
        prop::sample::select(Phase::ALL.to_vec()),
        prop_oneof![Just(Some(RELEASE.to_string())), Just(Some(OLD_RELEASE.to_string())), Just(None)],
        optional_text(&["r1", "r2"]),
        optional_text(&["r0", "r1", "r2"]),
        optional_text(&["r0", "r1", "r2"]),
        0..5i32,
        0..=100i32,
    )
        .prop_map(|(phase, release, revision, promoted_revision, approved_revision, failed_checks, weight)| {
            CanaryObservation {
                phase,
                release,
                revision,
                promoted_revision,
                approved_revision,
                failed_checks,
                weight,
                last_transition: None,
                promoted_release: None,
                max_weight: None,
            }
        })
}

fn identity() -> impl Strategy<Value = IdentityVerdict> {
    prop_oneof![
        8 => Just(IdentityVerdict::Verified),
        1 => Just(IdentityVerdict::Mismatch(vec!["region: the member says \"us-east\"".into()])),
        1 => Just(IdentityVerdict::Unverified("no probe yet".into())),
    ]
}

fn members() -> impl Strategy<Value = Vec<MemberObservation>> {
    prop::collection::vec(
        (
            member_labels(),
            prop::bool::weighted(0.8),
            prop::option::of(0..300i64),
            prop::option::weighted(0.3, 0..300i64),
            prop::option::weighted(0.9, canary_observation()),
            identity(),
        ),
        0..24,
    )
    .prop_map(|raw| {
        raw.into_iter()
            .enumerate()
            .map(|(i, (labels, reachable, contact, approved, canary, identity))| MemberObservation {
                cluster: format!("m{i:02}"),
                labels,
                reachable,
                last_contact: contact.map(at),
                approved_at: approved.map(at),
                canary,
                identity,
            })
            .collect()
    })
}

/// A wave history that may be inconsistent (as if written by an older hub).
fn history(waves: usize) -> impl Strategy<Value = Vec<WaveStatus>> {
    prop::collection::vec(
        (
            prop::sample::select(vec![
                WavePhase::Pending,
                WavePhase::Progressing,
                WavePhase::Soaking,
                WavePhase::Succeeded,
                WavePhase::Failed,
            ]),
            prop::option::of(0..300i64),
            prop::option::of(0..300i64),
            prop::option::weighted(0.1, 0..300i64),
            prop::option::weighted(0.3, (0..300i64, prop::bool::ANY)),
        ),
        waves,
    )
    .prop_map(|raw| {
        raw.into_iter()
            .enumerate()
            .map(|(i, (phase, opened, succeeded, failed, approval))| WaveStatus {
                phase,
                opened_at: opened.map(at),
                succeeded_at: succeeded.map(at),
                failed_at: failed.map(at),
                approved_at: approval.map(|(t, _)| at(t)),
                approved_release: approval.map(|(_, this)| if this { RELEASE } else { OLD_RELEASE }.to_string()),
                ..WaveStatus::pending(format!("w{i}"))
            })
            .collect()
    })
}

fn scenario() -> impl Strategy<Value = (RolloutPlan, Vec<WaveStatus>, Vec<MemberObservation>, DateTime<Utc>)> {
    rollout_plan().prop_flat_map(|plan| {
        let waves = plan.waves.len();
        (Just(plan), history(waves), members(), (0..400i64).prop_map(at))
    })
}

fn in_wave(d: &WaveDecision, wave: usize) -> impl Iterator<Item = &super::decision::MemberVerdict> {
    d.members.iter().filter(move |v| v.wave == Some(wave))
}

/// The invariants every single decision keeps, whatever it was given.
fn check_decision(
    plan: &RolloutPlan,
    history: &[WaveStatus],
    members: &[MemberObservation],
    now: DateTime<Utc>,
    d: &WaveDecision,
) -> Result<(), TestCaseError> {
    // Paused approves nothing and opens no wave.
    if plan.paused {
        prop_assert!(d.approve.is_empty(), "paused but approved {:?}", d.approve);
        for (i, wave) in d.waves.iter().enumerate() {
            let before = history.iter().find(|h| h.name == wave.name).and_then(|h| h.opened_at);
            prop_assert_eq!(wave.opened_at, before, "paused but wave {} opened", i);
        }
    }
    // A breached budget approves nothing more.
    if d.budget_breached.is_some() {
        prop_assert!(d.approve.is_empty(), "budget breached but approved {:?}", d.approve);
        prop_assert_eq!(d.phase, RolloutPhase::Failed);
    }
    // A wave opening now requires every earlier wave succeeded and soaked.
    for (i, wave) in d.waves.iter().enumerate() {
        let before = history.iter().find(|h| h.name == wave.name).and_then(|h| h.opened_at);
        if before.is_none() && wave.opened_at.is_some() {
            for (j, earlier) in d.waves[..i].iter().enumerate() {
                prop_assert_eq!(earlier.phase, WavePhase::Succeeded, "wave {} opened while wave {} is not done", i, j);
                let soaked = earlier.succeeded_at.map(|s| s + plan.waves[j].soak);
                prop_assert!(soaked.is_some_and(|s| s <= now), "wave {} opened before wave {} soaked", i, j);
            }
            if plan.waves[i].approval == Approval::Manual {
                prop_assert!(wave.approved_at.is_some() && wave.approved_release.as_deref() == Some(RELEASE));
            }
        }
    }
    // Approvals go to members of the current, open wave only, at this release.
    let verdict_of = |cluster: &str| d.members.iter().find(|v| members[v.index].cluster == cluster);
    for approval in &d.approve {
        let verdict = verdict_of(&approval.cluster);
        prop_assert!(verdict.is_some(), "approved {} which has no verdict", approval.cluster);
        let verdict = verdict.unwrap();
        prop_assert_eq!(verdict.wave, d.current_wave);
        let wave = verdict.wave.unwrap();
        prop_assert_eq!(d.waves[wave].phase, WavePhase::Progressing);
        for earlier in &d.waves[..wave] {
            prop_assert_eq!(earlier.phase, WavePhase::Succeeded);
        }
        let member = &members[verdict.index];
        let canary = member.canary.as_ref().unwrap();
        prop_assert!(member.reachable);
        // Never approved on a guess: only a member whose identity was verified.
        prop_assert!(member.identity.is_verified(), "approved {} with {:?}", member.cluster, member.identity);
        prop_assert_eq!(canary.release.as_deref(), Some(RELEASE));
        prop_assert_eq!(canary.revision.as_deref(), Some(approval.revision.as_str()));
    }
    // Never more than maxConcurrency in flight in a wave (new approvals only fill free slots).
    if let Some(w) = d.current_wave {
        let limit = plan.waves[w].max_concurrency.concurrency_of(in_wave(d, w).count());
        let occupied = in_wave(d, w).filter(|v| occupies_slot(v, &members[v.index], RELEASE)).count();
        let fresh = d
            .approve
            .iter()
            .filter(|a| verdict_of(&a.cluster).is_some_and(|v| v.state == MemberState::Pending))
            .count();
        prop_assert!(
            fresh <= limit.saturating_sub(occupied),
            "{} new approvals with {} of {} slots taken",
            fresh,
            occupied,
            limit
        );
    }
    // Done only when the member reports this release promoted; stale status never counts.
    for v in &d.members {
        let reports = members[v.index].canary.as_ref().is_some_and(|c| {
            c.release.as_deref() == Some(RELEASE)
                && matches!(c.phase, Phase::Succeeded | Phase::Initialized)
                && c.revision.is_some()
                && c.promoted_revision == c.revision
        });
        if v.state == MemberState::Succeeded {
            prop_assert!(reports, "{} counted done on {:?}", members[v.index].cluster, members[v.index].canary);
        }
        if v.state != MemberState::Unassigned {
            prop_assert_eq!(v.state == MemberState::Succeeded, reports);
        }
        // A member that is not who its Cluster says is shown so, unless it already
        // reported this release promoted or failed before (those facts stand).
        let reported_failure = members[v.index]
            .canary
            .as_ref()
            .is_some_and(|c| c.release.as_deref() == Some(RELEASE) && c.phase == Phase::Failed);
        if matches!(members[v.index].identity, IdentityVerdict::Mismatch(_))
            && v.state != MemberState::Unassigned
            && !reports
            && !reported_failure
        {
            prop_assert_eq!(v.state, MemberState::IdentityMismatch);
        }
        if v.state == MemberState::IdentityMismatch {
            prop_assert!(matches!(members[v.index].identity, IdentityVerdict::Mismatch(_)));
        }
    }
    // Every selected member is in exactly one wave (the first that selects it) or unassigned.
    let memberships = assign_waves(plan, members.iter().map(|m| &m.labels));
    let mut seen = vec![0; members.len()];
    for v in &d.members {
        seen[v.index] += 1;
    }
    for (i, membership) in memberships.iter().enumerate() {
        let verdict = d.members.iter().find(|v| v.index == i);
        match membership {
            Membership::Excluded => prop_assert_eq!(seen[i], 0),
            Membership::Unassigned => {
                prop_assert_eq!(seen[i], 1);
                prop_assert_eq!(verdict.map(|v| v.state), Some(MemberState::Unassigned));
                prop_assert!(d.unassigned.contains(&members[i].cluster));
                prop_assert!(plan.waves.iter().all(|w| !w.selector.matches(&members[i].labels)));
            }
            Membership::Wave(w) => {
                prop_assert_eq!(seen[i], 1);
                prop_assert_eq!(verdict.and_then(|v| v.wave), Some(*w));
                prop_assert!(plan.waves[..*w].iter().all(|e| !e.selector.matches(&members[i].labels)));
                prop_assert!(plan.waves[*w].selector.matches(&members[i].labels));
            }
        }
    }
    // RollbackAll lists promoted members only when a budget is breached.
    if d.budget_breached.is_none() || plan.on_failure == FailurePolicy::Halt {
        prop_assert!(d.rollback.is_empty() && d.withdraw.is_empty());
    }
    for cluster in &d.rollback {
        prop_assert_eq!(verdict_of(cluster).map(|v| v.state), Some(MemberState::Succeeded));
    }
    Ok(())
}

/// A tiny deterministic generator, so a simulation is a pure function of its seeds.
struct Dice(u64);

impl Dice {
    fn roll(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % 100
    }
}

#[derive(Clone, Debug)]
struct Step {
    minutes: i64,
    seed: u64,
    paused: bool,
    approve_manual: bool,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        (1..25i64, any::<u64>(), prop::bool::weighted(0.1), prop::bool::weighted(0.3)).prop_map(
            |(minutes, seed, paused, approve_manual)| Step { minutes, seed: seed | 1, paused, approve_manual },
        ),
        1..40,
    )
}

fn fleet() -> impl Strategy<Value = Vec<MemberObservation>> {
    prop::collection::vec((member_labels(), prop::bool::weighted(0.85)), 0..20).prop_map(|raw| {
        raw.into_iter()
            .enumerate()
            .map(|(i, (labels, at_release))| MemberObservation {
                cluster: format!("m{i:02}"),
                labels,
                reachable: true,
                last_contact: Some(at(0)),
                approved_at: None,
                canary: Some(CanaryObservation {
                    phase: Phase::Waiting,
                    release: Some(if at_release { RELEASE } else { OLD_RELEASE }.to_string()),
                    revision: Some("r1".into()),
                    promoted_revision: Some("r0".into()),
                    ..CanaryObservation::default()
                }),
                identity: IdentityVerdict::Verified,
            })
            .collect()
    })
}

/// One member moves on by chance: drops off or returns, starts an approved release,
/// promotes or fails it, or picks up the release from Git.
fn evolve(member: &mut MemberObservation, dice: &mut Dice, now: DateTime<Utc>) {
    if dice.roll() < 8 {
        member.reachable = !member.reachable;
    }
    if !member.reachable {
        return;
    }
    member.last_contact = Some(now);
    let Some(c) = member.canary.as_mut() else { return };
    let roll = dice.roll();
    match c.phase {
        Phase::Waiting if c.release.as_deref() != Some(RELEASE) && roll < 20 => {
            c.release = Some(RELEASE.into());
        }
        Phase::Waiting if c.approved_revision.is_some() && c.approved_revision == c.revision && roll < 60 => {
            c.phase = Phase::Progressing;
            c.weight = 10;
        }
        Phase::Progressing => {
            if roll < 25 {
                c.phase = Phase::Succeeded;
                c.promoted_revision = c.revision.clone();
                c.weight = 0;
            } else if roll < 33 {
                c.phase = Phase::Failed;
                c.failed_checks = 2;
                c.weight = 0;
            } else {
                c.weight = (c.weight + 10).min(50);
            }
        }
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_decision_keeps_the_invariants((plan, history, members, now) in scenario()) {
        let d = decide_waves(&plan, RELEASE, &history, &members, now);
        check_decision(&plan, &history, &members, now, &d)?;
        // Pure: the same inputs give the same answer.
        prop_assert_eq!(decide_waves(&plan, RELEASE, &history, &members, now), d);
    }

    #[test]
    fn simulated_rollouts_keep_the_invariants(base in rollout_plan(), mut members in fleet(), steps in steps()) {
        let mut plan = base;
        let mut now = at(0);
        let mut status = None;
        let mut breached: Option<String> = None;
        for step in steps {
            plan.paused = step.paused;
            let history = history_for_release(status.as_ref(), RELEASE);
            let mut waves = history.waves.clone();
            for m in &mut members {
                m.approved_at = history.approvals.get(&m.cluster).copied();
            }
            // A person approves the wave that waits for it.
            if step.approve_manual
                && let Some(w) = waves.iter_mut().find(|w| w.phase == WavePhase::Pending && w.approved_at.is_none())
            {
                w.approved_at = Some(now);
                w.approved_release = Some(RELEASE.into());
            }

            let d = decide_waves(&plan, RELEASE, &waves, &members, now);
            check_decision(&plan, &waves, &members, now, &d)?;

            // Every wave that ever opened did so after every earlier wave succeeded and soaked.
            for (i, wave) in d.waves.iter().enumerate() {
                if let Some(opened) = wave.opened_at {
                    for (j, earlier) in d.waves[..i].iter().enumerate() {
                        let soaked = earlier.succeeded_at.map(|s| s + plan.waves[j].soak);
                        prop_assert!(soaked.is_some_and(|s| s <= opened), "wave {} opened at {} before wave {} soaked", i, opened, j);
                    }
                }
            }
            // A breached budget stays breached and approves nothing, ever after.
            if let Some(wave) = &breached {
                prop_assert_eq!(d.budget_breached.as_ref(), Some(wave));
                prop_assert!(d.approve.is_empty());
            }
            breached = d.budget_breached.clone();

            // Approved-but-unfinished members per wave never exceed maxConcurrency.
            let new_status = build_status(&plan, RELEASE, Some(1), &members, &d, &[], now);
            for (w, wave) in plan.waves.iter().enumerate() {
                let size = in_wave(&d, w).count();
                let unfinished = new_status
                    .members
                    .iter()
                    .filter(|m| m.wave.as_deref() == Some(wave.name.as_str()) && m.approved_at.is_some())
                    .filter(|m| {
                        let approved_now = d.approve.iter().any(|a| a.cluster == m.cluster);
                        approved_now || matches!(m.state, MemberState::Approved | MemberState::Progressing | MemberState::Unreachable)
                    })
                    .count();
                prop_assert!(unfinished <= wave.max_concurrency.concurrency_of(size), "wave {}: {} unfinished approved members", w, unfinished);
            }

            // The hub writes the approvals; members move on by chance.
            for approval in &d.approve {
                if let Some(c) = members
                    .iter_mut()
                    .find(|m| m.cluster == approval.cluster)
                    .and_then(|m| m.canary.as_mut())
                {
                    c.approved_revision = Some(approval.revision.clone());
                }
            }
            let mut dice = Dice(step.seed);
            now += TimeDelta::minutes(step.minutes);
            for m in &mut members {
                evolve(m, &mut dice, now);
            }
            status = Some(new_status);
        }
    }
}
