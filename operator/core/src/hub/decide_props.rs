//! Properties of [`decide_rollout`] and [`record`] over arbitrary fleets: what members
//! answered (or not), their Canaries and annotations, their identities, the previous
//! status, and what the writes gave.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use kube_core::ResourceExt;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::decisions::{
    MemberRead, MemberReading, Proceed, RolledBack, RolloutDecision, RolloutInput, SAFETY_REQUEUE, WriteOutcomes,
    decide_rollout, record,
};
use super::input::InputProblem;
use crate::fleet::identity::IdentityVerdict;
use crate::fleet::{APPROVED_REVISION_ANNOTATION, CanaryObservation, FLEET_ROLLOUT_ANNOTATION, RolloutPlan};
use petrel_api::canary::Phase;
use petrel_api::rollout::WavePhase;
use petrel_api::{Canary, Cluster, Rollout};

const NEW: &str = "podinfo:6.1.0";
const OLD: &str = "podinfo:6.0.0";
const KEY: &str = "fleet/podinfo";

fn at(minute: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 3, 0, 0).unwrap() + TimeDelta::minutes(minute)
}

fn time(minute: i64) -> Value {
    json!(at(minute).to_rfc3339())
}

fn release() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![3 => Just(Some(NEW)), 2 => Just(Some(OLD)), 1 => Just(None)]
}

fn revision() -> impl Strategy<Value = Option<&'static str>> {
    prop::option::weighted(0.9, prop::sample::select(vec!["r0", "r1", "r2"]))
}

/// A previous status, possibly about another release, possibly inconsistent.
fn previous(members: usize) -> impl Strategy<Value = Option<Value>> {
    let member = (
        prop::sample::select(vec!["Pending", "Approved", "Progressing", "Succeeded", "Failed", "Unreachable"]),
        prop::option::of(0..30i64),
        prop::option::of(0..30i64),
        prop::option::of(prop::sample::select(vec!["Waiting", "Progressing", "Succeeded", "Failed"])),
        prop::option::weighted(0.2, 0..30i64),
    );
    prop::option::weighted(
        0.7,
        (
            release(),
            prop::sample::select(vec!["Progressing", "Soaking", "WaitingApproval", "Paused", "Succeeded", "Failed"]),
            prop::option::of(0..20i64),
            prop::option::of(prop::sample::select(vec!["Progressing", "Succeeded", "Failed"])),
            prop::collection::vec(member, members),
        )
            .prop_map(|(release, phase, opened, canary_wave, members)| {
                let members: Vec<Value> = members
                    .into_iter()
                    .enumerate()
                    .map(|(i, (state, approved, contact, phase, withdrawn))| {
                        let mut m = json!({
                            "cluster": format!("m{i}"), "state": state, "release": release, "revision": "r1", "phase": phase
                        });
                        if let Some(a) = approved {
                            m["approvedAt"] = time(a);
                        }
                        if let Some(c) = contact {
                            m["lastContact"] = time(c);
                        }
                        if let Some(w) = withdrawn {
                            m["approvalWithdrawnAt"] = time(w);
                        }
                        m
                    })
                    .collect();
                let mut waves = vec![];
                if let Some(opened) = opened {
                    waves.push(json!({"name": "canary", "phase": canary_wave.unwrap_or("Progressing"), "openedAt": time(opened)}));
                }
                Some(json!({"release": release, "phase": phase, "waves": waves, "members": members}))
            }),
    )
    .prop_map(Option::flatten)
}

fn rollout(members: usize) -> impl Strategy<Value = Rollout> {
    (1..3i32, 0..2i32, any::<bool>(), prop::bool::weighted(0.1), previous(members)).prop_map(
        |(concurrency, failures, rollback_all, paused, previous)| {
            let mut rollout: Rollout = serde_json::from_value(json!({
                "apiVersion": "petrel.dev/v1alpha1", "kind": "Rollout",
                "metadata": {"name": "podinfo", "namespace": "fleet", "generation": 2},
                "spec": {
                    "canaryRef": {"namespace": "test", "name": "podinfo"},
                    "waves": [
                        {"name": "canary", "clusterSelector": {"matchLabels": {"role": "canary"}},
                         "maxConcurrency": concurrency, "maxFailures": failures},
                        {"name": "rest", "maxConcurrency": concurrency, "maxFailures": failures}
                    ],
                    "onFailure": if rollback_all { "RollbackAll" } else { "Halt" },
                    "paused": paused
                }
            }))
            .unwrap();
            rollout.status = previous.map(|s| serde_json::from_value(s).unwrap());
            rollout
        },
    )
}

fn canary() -> impl Strategy<Value = Canary> {
    (
        prop::sample::select(Phase::ALL.to_vec()),
        release(),
        revision(),
        revision(),
        prop::option::of(0..30i64),
        prop::option::of(prop::sample::select(vec![KEY, "elsewhere/podinfo"])),
        revision(),
    )
        .prop_map(|(phase, release, applied, promoted, transition, marker, approved)| {
            let mut annotations = serde_json::Map::new();
            if let Some(marker) = marker {
                annotations.insert(FLEET_ROLLOUT_ANNOTATION.into(), json!(marker));
            }
            if let Some(approved) = approved {
                annotations.insert(APPROVED_REVISION_ANNOTATION.into(), json!(approved));
            }
            annotations.insert("team".into(), json!("payments"));
            let mut status =
                json!({"phase": phase, "release": release, "lastAppliedSpec": applied, "lastPromotedSpec": promoted});
            if let Some(t) = transition {
                status["lastTransitionTime"] = time(t);
            }
            serde_json::from_value(json!({
                "apiVersion": "petrel.dev/v1alpha1", "kind": "Canary",
                "metadata": {"name": "podinfo", "namespace": "test", "annotations": annotations},
                "spec": {"targetRef": {"kind": "Deployment", "name": "podinfo"}, "service": {"port": 9898}},
                "status": status
            }))
            .unwrap()
        })
}

fn read() -> impl Strategy<Value = MemberRead> {
    prop_oneof![
        8 => canary().prop_map(|c| MemberRead::Reached(Some(Box::new(c)))),
        1 => Just(MemberRead::Reached(None)),
        2 => Just(MemberRead::Unreachable("no answer".into())),
    ]
}

fn identity() -> impl Strategy<Value = IdentityVerdict> {
    prop_oneof![
        6 => Just(IdentityVerdict::Verified),
        1 => Just(IdentityVerdict::Mismatch(vec!["region: the member says \"us-east\"".into()])),
        1 => Just(IdentityVerdict::Unverified("no probe yet".into())),
    ]
}

fn member(index: usize) -> impl Strategy<Value = MemberReading> {
    (
        prop::sample::select(vec!["canary", "prod"]),
        read(),
        prop::option::weighted(0.3, 0..30i64),
        identity(),
        prop::bool::weighted(0.03),
        prop::bool::weighted(0.05),
    )
        .prop_map(move |(role, read, contact, identity, shared_uid, broken_kubeconfig)| {
            let name = format!("m{index}");
            let cluster: Cluster = serde_json::from_value(json!({
                "apiVersion": "petrel.dev/v1alpha1", "kind": "Cluster",
                "metadata": {"name": name, "labels": {"role": role}},
                "spec": {"kubeconfigSecretRef": {"name": name, "namespace": "petrel-system"}}
            }))
            .unwrap();
            let (read, client_problem) = if broken_kubeconfig {
                let problem = InputProblem::new("KubeconfigInvalid", format!("cluster {name}: no server"));
                (MemberRead::Unreachable("no client".into()), Some(problem))
            } else {
                (read, None)
            };
            let contact = contact.filter(|_| matches!(read, MemberRead::Reached(Some(_)))).map(at);
            let observed_uid = Some(if shared_uid { "uid-shared".to_string() } else { format!("uid-{name}") });
            MemberReading { cluster, read, contact, client_problem, identity, observed_uid }
        })
}

/// A Rollout, the members it selects as read now, and the time now.
fn fleet() -> impl Strategy<Value = (Rollout, Vec<MemberReading>, DateTime<Utc>)> {
    (0..7usize).prop_flat_map(|n| {
        let members: Vec<_> = (0..n).map(member).collect();
        (rollout(n), members, 20..40i64).prop_map(|(rollout, members, now)| (rollout, members, at(now)))
    })
}

fn input(rollout: &Rollout, members: Vec<MemberReading>, now: DateTime<Utc>) -> RolloutInput<'_> {
    RolloutInput { rollout, plan: RolloutPlan::from_spec(&rollout.spec), members, now }
}

/// Outcomes for the writes `planned` asks for: each write or rollback fails where
/// `failures` says so.
fn outcomes(planned: &Proceed, failures: &[bool]) -> WriteOutcomes {
    let mut fails = failures.iter().copied().cycle();
    let mut outcomes = WriteOutcomes::default();
    for write in &planned.annotations {
        let result = if fails.next().unwrap_or(false) { Err(format!("refused {}", write.cluster)) } else { Ok(()) };
        outcomes.annotations.insert(write.cluster.clone(), result);
    }
    for name in &planned.rollbacks {
        let result = if fails.next().unwrap_or(false) {
            Err(format!("no stored template on {name}"))
        } else {
            Ok(RolledBack { release: OLD.into(), done: Some(format!("rolled {name} back")) })
        };
        outcomes.rollbacks.insert(name.clone(), result);
    }
    outcomes
}

fn hub_annotations_of(annotations: &BTreeMap<String, String>) -> BTreeMap<&str, &str> {
    [FLEET_ROLLOUT_ANNOTATION, APPROVED_REVISION_ANNOTATION]
        .into_iter()
        .filter_map(|key| Some((key, annotations.get(key)?.as_str())))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// An approval goes only to a verified member that answered, of a wave open now,
    /// for the revision its Canary waits at; never to a member in IdentityMismatch.
    #[test]
    fn approvals_go_only_to_verified_members_of_open_waves((rollout, members, now) in fleet()) {
        let input = input(&rollout, members, now);
        let RolloutDecision::Proceed(planned) = decide_rollout(&input) else { return Ok(()) };
        for write in &planned.annotations {
            let Some(revision) = &write.approval else { continue };
            let member = input.members.iter().find(|m| m.cluster.name_any() == write.cluster).unwrap();
            prop_assert_eq!(&member.identity, &IdentityVerdict::Verified, "{} approved", write.cluster);
            let canary = input.canary_of(&write.cluster).expect("approved members answered with their Canary");
            let observed = CanaryObservation::from_canary(canary);
            prop_assert_eq!(observed.revision.as_ref(), Some(revision));
            prop_assert_eq!(observed.release.as_deref(), Some(planned.release.as_str()));
            let entry = planned.draft.members.iter().find(|m| m.cluster == write.cluster).unwrap();
            let wave = entry.wave.as_deref().expect("an approved member is in a wave");
            let wave = planned.draft.waves.iter().find(|w| w.name == wave).unwrap();
            prop_assert!(wave.opened_at.is_some() && wave.phase == WavePhase::Progressing, "{wave:?}");
            prop_assert!(!rollout.spec.paused, "a paused Rollout approves nothing");
        }
    }

    /// An annotation write is planned only for a member that answered with its Canary,
    /// at most once, and only when it changes the hub's annotations; the other
    /// annotations are never part of it. Once the writes are in place, deciding again
    /// plans none.
    #[test]
    fn annotations_are_written_only_when_they_differ_and_converge((rollout, members, now) in fleet()) {
        let input = input(&rollout, members, now);
        let RolloutDecision::Proceed(planned) = decide_rollout(&input) else { return Ok(()) };
        let clusters: BTreeSet<&str> = planned.annotations.iter().map(|w| w.cluster.as_str()).collect();
        prop_assert_eq!(clusters.len(), planned.annotations.len(), "one write per member");
        for write in &planned.annotations {
            let canary = input.canary_of(&write.cluster).expect("written members answered with their Canary");
            let current = hub_annotations_of(canary.annotations());
            let wanted = hub_annotations_of(&write.annotations);
            prop_assert_ne!(&current, &wanted, "{} gets a write that changes nothing", write.cluster);
            prop_assert_eq!(wanted.len(), write.annotations.len(), "only the hub's annotations are applied");
            prop_assert_eq!(write.annotations.get(FLEET_ROLLOUT_ANNOTATION).map(String::as_str), Some(KEY));
            prop_assert_eq!(write.withdraws, current.contains_key(APPROVED_REVISION_ANNOTATION) && !wanted.contains_key(APPROVED_REVISION_ANNOTATION));
        }

        let mut written = input.members.clone();
        for member in &mut written {
            let name = member.cluster.name_any();
            if let (MemberRead::Reached(Some(canary)), Some(write)) =
                (&mut member.read, planned.annotations.iter().find(|w| w.cluster == name))
            {
                let annotations = canary.annotations_mut();
                annotations.remove(APPROVED_REVISION_ANNOTATION);
                annotations.extend(write.annotations.clone());
            }
        }
        let again = RolloutInput { members: written, ..input };
        if let RolloutDecision::Proceed(next) = decide_rollout(&again) {
            prop_assert_eq!(next.annotations, vec![], "the annotations are in place");
        }
    }

    /// The recorded status lists exactly the selected members (a blocked Rollout keeps
    /// the members it recorded before); the waves and phase are the decision's; every
    /// failed write shows on its member; each outcome is announced as it happened.
    #[test]
    fn the_record_lists_exactly_the_selected_members(
        (rollout, members, now) in fleet(),
        failures in prop::collection::vec(prop::bool::weighted(0.3), 1..8),
    ) {
        let input = input(&rollout, members, now);
        let decision = decide_rollout(&input);
        let planned = match &decision {
            RolloutDecision::Proceed(planned) => (**planned).clone(),
            RolloutDecision::Blocked(blocked) => {
                let recorded = record(&input, decision.clone(), &WriteOutcomes::default());
                let before = rollout.status.as_ref().map(|s| s.members.clone()).unwrap_or_default();
                prop_assert_eq!(&recorded.status.members, &before, "a blocked Rollout keeps what it recorded");
                let reasons: BTreeSet<&str> = blocked.problems.iter().map(|p| p.reason).collect();
                prop_assert!(recorded.events.iter().all(|e| reasons.contains(e.reason)), "{:?}", recorded.events);
                prop_assert_eq!(recorded.requeue, blocked.requeue);
                return Ok(());
            }
        };
        let outcomes = outcomes(&planned, &failures);
        let recorded = record(&input, decision, &outcomes);
        let selected: BTreeSet<String> = input.members.iter().map(|m| m.cluster.name_any()).collect();
        let listed: Vec<String> = recorded.status.members.iter().map(|m| m.cluster.clone()).collect();
        prop_assert_eq!(listed.len(), selected.len(), "{:?}", listed);
        prop_assert_eq!(listed.into_iter().collect::<BTreeSet<_>>(), selected);
        prop_assert_eq!(&recorded.status.waves, &planned.draft.waves);
        prop_assert_eq!(recorded.status.phase, planned.draft.phase);
        prop_assert_eq!(recorded.requeue, planned.requeue);
        prop_assert!(recorded.requeue >= Duration::from_secs(1) && recorded.requeue <= SAFETY_REQUEUE);

        let message = |cluster: &str| recorded.status.members.iter().find(|m| m.cluster == cluster).unwrap().message.clone();
        for (cluster, result) in &outcomes.annotations {
            if let Err(e) = result && !planned.rollbacks.contains(cluster) {
                prop_assert!(message(cluster).contains(e.as_str()), "{}: {}", cluster, message(cluster));
            }
        }
        for (cluster, result) in &outcomes.rollbacks {
            if let Err(e) = result {
                prop_assert!(message(cluster).contains(e.as_str()), "{}: {}", cluster, message(cluster));
            }
        }
        for cluster in &planned.rollbacks_pending {
            prop_assert!(message(cluster).contains("rollback pending"), "{}", message(cluster));
        }
        let count = |reason: &str| recorded.events.iter().filter(|e| e.reason == reason).count();
        // Withdrawals: the approval a write that went through removed from a Canary, and
        // an approval the hub had recorded or decided to withdraw that a Canary no longer
        // carries, are recorded (now, unless the stored status of this release had it
        // already); a recorded withdrawal of another release is not kept; each one newly
        // recorded is announced once.
        let holds_approval = |annotations: &BTreeMap<String, String>| annotations.contains_key(APPROVED_REVISION_ANNOTATION);
        let removed_now: BTreeSet<&str> = planned
            .annotations
            .iter()
            .filter(|w| outcomes.annotations[&w.cluster].is_ok() && !holds_approval(&w.annotations))
            .filter(|w| input.canary_of(&w.cluster).is_some_and(|c| holds_approval(c.annotations())))
            .map(|w| w.cluster.as_str())
            .collect();
        let stored = rollout.status.as_ref().filter(|s| s.release == recorded.status.release);
        let stored_withdrawal = |cluster: &str| {
            stored.and_then(|s| s.members.iter().find(|m| m.cluster == cluster)).and_then(|m| m.approval_withdrawn_at)
        };
        let mut newly = 0;
        for member in &recorded.status.members {
            let Some(withdrawn_at) = member.approval_withdrawn_at else {
                prop_assert!(!removed_now.contains(member.cluster.as_str()), "{}'s withdrawal is not recorded", member.cluster);
                continue;
            };
            if stored_withdrawal(&member.cluster) == Some(withdrawn_at) {
                continue;
            }
            newly += 1;
            prop_assert_eq!(withdrawn_at, now, "{}", member.cluster);
            let gone = input.canary_of(&member.cluster).is_some_and(|c| !holds_approval(c.annotations()));
            prop_assert!(removed_now.contains(member.cluster.as_str()) || gone, "{} withdrawn with its approval in place", member.cluster);
        }
        prop_assert_eq!(count("ApprovalWithdrawn"), newly);
        prop_assert_eq!(count("MemberRolledBack"), outcomes.rollbacks.values().filter(|r| r.is_ok()).count());
        prop_assert_eq!(count("RollbackFailed"), outcomes.rollbacks.values().filter(|r| r.is_err()).count());
        prop_assert_eq!(&recorded.events[..planned.events.len()], &planned.events[..], "the decision's Events come first");
    }
}

/// A member Canary of the sequences below: at [`NEW`], revision `rev-<index>`.
fn member_canary(index: usize, phase: Phase, promoted: bool, annotations: &BTreeMap<String, String>) -> Canary {
    let revision = format!("rev-{index}");
    let mut status = json!({
        "phase": phase, "release": NEW, "lastAppliedSpec": revision,
        "lastPromotedSpec": if promoted { revision.clone() } else { "rev-old".to_string() },
        "lastTransitionTime": time(1),
    });
    if promoted {
        status["promotedRelease"] = json!(NEW);
    }
    serde_json::from_value(json!({
        "apiVersion": "petrel.dev/v1alpha1", "kind": "Canary",
        "metadata": {"name": "podinfo", "namespace": "test", "annotations": annotations},
        "spec": {"targetRef": {"kind": "Deployment", "name": "podinfo"}, "service": {"port": 9898}},
        "status": status
    }))
    .unwrap()
}

/// One member cluster as a sequence of reconciles goes: what its Canary carries.
#[derive(Clone, Debug)]
struct Member {
    role: &'static str,
    phase: Phase,
    promoted: bool,
    annotations: BTreeMap<String, String>,
    reachable: bool,
    rolled_back: bool,
    /// A write of the hub removed the approval its Canary carried, and none gave it back.
    withdrawn: bool,
}

/// What happens before one reconcile, and how its writes go.
#[derive(Clone, Debug)]
struct Step {
    /// Per member: 0 nothing, 1 its Canary moves on (if approved), 2 it fails instead,
    /// 3 its reachability flips, 4 it answers again.
    moves: Vec<u8>,
    member_write_fails: bool,
    status_write_refused: bool,
}

fn step(members: usize) -> impl Strategy<Value = Step> {
    (prop::collection::vec(0..4u8, members), prop::bool::weighted(0.15), prop::bool::weighted(0.4)).prop_map(
        |(moves, member_write_fails, status_write_refused)| Step { moves, member_write_fails, status_write_refused },
    )
}

fn sequence() -> impl Strategy<Value = (Vec<Member>, bool, i32, Vec<Step>)> {
    (1..4usize).prop_flat_map(|n| {
        (
            prop::collection::vec(prop::sample::select(vec!["canary", "prod"]), n),
            any::<bool>(),
            0..2i32,
            prop::collection::vec(step(n), 1..14),
        )
            .prop_map(|(roles, rollback_all, failures, steps)| {
                let members = roles
                    .into_iter()
                    .map(|role| Member {
                        role,
                        phase: Phase::Waiting,
                        promoted: false,
                        annotations: BTreeMap::new(),
                        reachable: true,
                        rolled_back: false,
                        withdrawn: false,
                    })
                    .collect();
                (members, rollback_all, failures, steps)
            })
    })
}

/// The transitions between two stored statuses that each deserve one Event, as
/// `(reason, subject)`: said here independently of the hub's code.
fn transitions(
    old: Option<&petrel_api::rollout::RolloutStatus>,
    new: &petrel_api::rollout::RolloutStatus,
) -> Vec<(&'static str, String)> {
    use petrel_api::rollout::{MemberState, RolloutPhase};
    let mut out = Vec::new();
    if new.release.is_some() && old.and_then(|o| o.release.as_ref()) != new.release.as_ref() {
        out.push(("ReleaseStarted", new.release.clone().unwrap_or_default()));
    }
    let same = old.filter(|o| o.release == new.release);
    for wave in &new.waves {
        let before = same.and_then(|o| o.waves.iter().find(|w| w.name == wave.name));
        if wave.opened_at.is_some() && before.is_none_or(|w| w.opened_at.is_none()) {
            out.push(("WaveOpened", wave.name.clone()));
        }
        if wave.phase == WavePhase::Failed && before.is_none_or(|w| w.phase != WavePhase::Failed) {
            out.push(("WaveFailed", wave.name.clone()));
        }
        if wave.phase == WavePhase::Succeeded && before.is_none_or(|w| w.phase != WavePhase::Succeeded) {
            out.push(("WaveSucceeded", wave.name.clone()));
        }
    }
    for member in &new.members {
        let before = same.and_then(|o| o.members.iter().find(|m| m.cluster == member.cluster));
        if member.approved_at.is_some() && before.is_none_or(|m| m.approved_at.is_none()) {
            out.push(("MemberApproved", member.cluster.clone()));
        }
        if member.approval_withdrawn_at.is_some() && before.is_none_or(|m| m.approval_withdrawn_at.is_none()) {
            out.push(("ApprovalWithdrawn", member.cluster.clone()));
        }
        let reason = match member.state {
            MemberState::Succeeded => "MemberSucceeded",
            MemberState::Failed => "MemberFailed",
            MemberState::TimedOut => "MemberTimedOut",
            MemberState::Unreachable => "MemberUnreachable",
            _ => continue,
        };
        if before.is_none_or(|m| m.state != member.state) {
            out.push((reason, member.cluster.clone()));
        }
    }
    if new.phase == Some(RolloutPhase::Succeeded) && same.and_then(|o| o.phase) != Some(RolloutPhase::Succeeded) {
        out.push(("RolloutSucceeded", String::new()));
    }
    for entry in &new.inventory {
        let before = old.and_then(|o| o.inventory.iter().find(|e| e.cluster == entry.cluster));
        if entry.rolled_back_from.is_some()
            && before.and_then(|b| b.rolled_back_from.as_ref()) != entry.rolled_back_from.as_ref()
        {
            out.push(("MemberRolledBack", entry.cluster.clone()));
        }
    }
    out
}

/// The cluster or wave an Event of a status transition is about, as its message names it.
fn subject(event: &super::decisions::HubEvent) -> String {
    let after = |prefix: &str| {
        event
            .message
            .split(prefix)
            .nth(1)
            .and_then(|rest| rest.split([' ', ':']).next())
            .unwrap_or_default()
            .to_string()
    };
    match event.reason {
        "ReleaseStarted" => event.message.split(' ').nth(1).unwrap_or_default().to_string(),
        "WaveOpened" | "WaveFailed" | "WaveSucceeded" => after("wave "),
        "MemberApproved" => after("on cluster "),
        "RolloutSucceeded" => String::new(),
        _ => after("cluster "),
    }
}

const TRANSITION_REASONS: [&str; 12] = [
    "ReleaseStarted",
    "WaveOpened",
    "MemberApproved",
    "ApprovalWithdrawn",
    "WaveFailed",
    "WaveSucceeded",
    "MemberSucceeded",
    "MemberFailed",
    "MemberTimedOut",
    "MemberUnreachable",
    "RolloutSucceeded",
    "MemberRolledBack",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Issue 16: over a sequence of reconciles whose status writes are written or refused
    /// (409) at random, while the members move on and member writes sometimes fail, the
    /// Events published (only after a status write) are exactly one per transition of the
    /// stored status; a refused write publishes nothing and loses nothing. In the end,
    /// every approval a member holds, and every approval the hub removed from a member,
    /// is recorded and was announced once.
    #[test]
    fn every_status_transition_is_announced_exactly_once(
        (mut world, rollback_all, failures, steps) in sequence(),
    ) {
        let mut rollout: Rollout = serde_json::from_value(json!({
            "apiVersion": "petrel.dev/v1alpha1", "kind": "Rollout",
            "metadata": {"name": "podinfo", "namespace": "fleet", "generation": 1},
            "spec": {
                "canaryRef": {"namespace": "test", "name": "podinfo"},
                "waves": [
                    {"name": "canary", "clusterSelector": {"matchLabels": {"role": "canary"}}, "maxFailures": failures},
                    {"name": "rest", "maxConcurrency": 1, "maxFailures": failures}
                ],
                "onFailure": if rollback_all { "RollbackAll" } else { "Halt" }
            }
        }))
        .unwrap();
        // At the end every member answers, and every write goes through.
        let settle = Step { moves: vec![4; world.len()], member_write_fails: false, status_write_refused: false };
        let steps: Vec<Step> = steps.into_iter().chain(std::iter::repeat_n(settle, 3)).collect();
        let mut published: Vec<(&'static str, String)> = Vec::new();
        let mut expected: Vec<(&'static str, String)> = Vec::new();
        for (minute, step) in steps.iter().enumerate() {
            for (member, change) in world.iter_mut().zip(&step.moves) {
                let approved = member.annotations.contains_key(APPROVED_REVISION_ANNOTATION);
                match (change, member.phase) {
                    (1, Phase::Waiting) if approved => member.phase = Phase::Progressing,
                    (1, Phase::Progressing) => {
                        member.phase = Phase::Succeeded;
                        member.promoted = true;
                    }
                    (2, Phase::Progressing) => member.phase = Phase::Failed,
                    (3, _) => member.reachable = !member.reachable,
                    (4, _) => member.reachable = true,
                    _ => {}
                }
            }
            let members: Vec<MemberReading> = world
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let name = format!("m{i}");
                    let cluster: Cluster = serde_json::from_value(json!({
                        "apiVersion": "petrel.dev/v1alpha1", "kind": "Cluster",
                        "metadata": {"name": name, "labels": {"role": m.role}},
                        "spec": {"kubeconfigSecretRef": {"name": name, "namespace": "petrel-system"}}
                    }))
                    .unwrap();
                    let read = if m.reachable {
                        MemberRead::Reached(Some(Box::new(member_canary(i, m.phase, m.promoted, &m.annotations))))
                    } else {
                        MemberRead::Unreachable("no answer".into())
                    };
                    let observed_uid = Some(format!("uid-{name}"));
                    MemberReading { cluster, read, contact: None, client_problem: None, identity: IdentityVerdict::Verified, observed_uid }
                })
                .collect();
            let input = input(&rollout, members, at(20 + minute as i64));
            let decision = decide_rollout(&input);
            let mut outcomes = WriteOutcomes::default();
            if let RolloutDecision::Proceed(planned) = &decision {
                for write in &planned.annotations {
                    let index: usize = write.cluster[1..].parse().unwrap();
                    let result = if step.member_write_fails {
                        Err("refused".to_string())
                    } else {
                        // Server-side apply: the hub's annotations are exactly the applied ones.
                        let member = &mut world[index];
                        let held = member.annotations.remove(APPROVED_REVISION_ANNOTATION).is_some();
                        member.annotations.extend(write.annotations.clone());
                        // Approved again (a breach whose status was refused, not seen by the
                        // next reconcile): the withdrawal is undone before it was recorded.
                        let holds = member.annotations.contains_key(APPROVED_REVISION_ANNOTATION);
                        member.withdrawn = (member.withdrawn || held) && !holds;
                        Ok(())
                    };
                    outcomes.annotations.insert(write.cluster.clone(), result);
                }
                for name in &planned.rollbacks {
                    let index: usize = name[1..].parse().unwrap();
                    let result = if step.member_write_fails {
                        Err(format!("no stored template on {name}"))
                    } else {
                        let done = (!world[index].rolled_back).then(|| format!("rolled {name} back"));
                        world[index].rolled_back = true;
                        Ok(RolledBack { release: OLD.into(), done })
                    };
                    outcomes.rollbacks.insert(name.clone(), result);
                }
            }
            let recorded = record(&input, decision, &outcomes);
            let stored = rollout.status.as_ref();
            // The record's Events are those of the change from the stored status.
            let worth = super::decisions::status_worth_writing(stored, &recorded.status);
            if worth && step.status_write_refused {
                continue; // 409: nothing written, nothing published.
            }
            published.extend(recorded.events.iter().filter(|e| TRANSITION_REASONS.contains(&e.reason)).map(|e| (e.reason, subject(e))));
            if worth {
                expected.extend(transitions(stored, &recorded.status));
                rollout.status = Some(recorded.status);
            } else {
                prop_assert_eq!(transitions(stored, &recorded.status), vec![], "a status not written changes nothing");
            }
        }
        let sorted = |mut v: Vec<(&'static str, String)>| { v.sort(); v };
        prop_assert_eq!(sorted(published.clone()), sorted(expected), "one Event per transition of the stored status");

        // Nothing held by a member goes unrecorded or unannounced.
        let stored = rollout.status.clone().unwrap_or_default();
        for (i, member) in world.iter().enumerate() {
            let name = format!("m{i}");
            if member.annotations.get(APPROVED_REVISION_ANNOTATION) == Some(&format!("rev-{i}")) {
                let entry = stored.members.iter().find(|m| m.cluster == name);
                prop_assert!(entry.is_some_and(|m| m.approved_at.is_some()), "{name}'s approval is not recorded: {stored:?}");
                let announced = published.iter().filter(|(r, s)| *r == "MemberApproved" && *s == name).count();
                prop_assert_eq!(announced, 1, "{}'s approval announced {} times", name, announced);
            }
            // No withdrawal of an approval that was announced is lost, even when the status
            // write that went with it was refused. (An approval delivered and withdrawn
            // while every status write was refused was never recorded: the member's Canary
            // without it looks like one never approved, and neither is announced.)
            let approval_announced = published.iter().any(|(r, s)| *r == "MemberApproved" && *s == name);
            if member.withdrawn && approval_announced {
                let entry = stored.members.iter().find(|m| m.cluster == name);
                prop_assert!(entry.is_some_and(|m| m.approval_withdrawn_at.is_some()), "{name}'s withdrawal is not recorded: {stored:?}");
                let announced = published.iter().filter(|(r, s)| *r == "ApprovalWithdrawn" && *s == name).count();
                prop_assert_eq!(announced, 1, "{}'s withdrawal announced {} times", name, announced);
            }
        }
    }
}
