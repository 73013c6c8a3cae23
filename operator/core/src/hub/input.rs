//! Bad input on the hub, said once as a `Valid` condition and as Warning Events, and
//! the Events of member and wave transitions. Pure.
//!
//! None of these problems approves anything: overlapping waves are resolved by the
//! first wave (per the design) and only reported; unassigned members, members without
//! a usable kubeconfig and members without the Canary are never approved; a Canary
//! that exists in no member, or two Clusters that reach the same member, block the
//! Rollout.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::decisions::HubEvent;
use crate::fleet::RolloutPlan;
use petrel_api::common::Condition;
use petrel_api::rollout::{ClusterSelector, MemberState, RolloutPhase, RolloutStatus, WavePhase};

/// Condition type: the spec and the fleet it selects are sound (reason names the first
/// problem, the message lists them all).
pub const CONDITION_VALID: &str = "Valid";

/// Reasons of a `Valid=False` condition and of the matching Warning Events.
pub const INVALID_SPEC: &str = "InvalidSpec";
pub const CANARY_NOT_FOUND: &str = "CanaryNotFound";
pub const CANARY_MISSING: &str = "CanaryMissing";
pub const WAVES_OVERLAP: &str = "WavesOverlap";
pub const CLUSTERS_UNASSIGNED: &str = "ClustersUnassigned";
pub const CLUSTERS_SHARE_IDENTITY: &str = "ClustersShareIdentity";
pub const INVALID_TRAFFIC_SHARE: &str = "InvalidTrafficShare";

/// One problem with what the hub was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputProblem {
    pub reason: &'static str,
    pub message: String,
}

impl InputProblem {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self { reason, message: message.into() }
    }
}

fn is_catch_all(selector: &ClusterSelector) -> bool {
    selector.match_labels.is_empty() && selector.match_expressions.is_empty()
}

/// Members that more than one wave selects. A catch-all wave (empty selector) after
/// the member's first wave is the documented "everything else" and does not count.
pub fn overlap_problem<'a>(
    plan: &RolloutPlan,
    clusters: impl IntoIterator<Item = (&'a str, &'a BTreeMap<String, String>)>,
) -> Option<InputProblem> {
    let mut overlaps: Vec<String> = clusters
        .into_iter()
        .filter(|(_, labels)| plan.clusters.matches(labels))
        .filter_map(|(name, labels)| {
            let matching: Vec<&str> = plan
                .waves
                .iter()
                .enumerate()
                .filter(|(_, w)| w.selector.matches(labels))
                .filter(|(i, w)| {
                    !is_catch_all(&w.selector) || plan.waves[..*i].iter().all(|e| !e.selector.matches(labels))
                })
                .map(|(_, w)| w.name.as_str())
                .collect();
            (matching.len() > 1).then(|| format!("{name} (waves {}: goes to {})", matching.join(", "), matching[0]))
        })
        .collect();
    overlaps.sort();
    (!overlaps.is_empty()).then(|| {
        InputProblem::new(
            WAVES_OVERLAP,
            format!("cluster(s) selected by more than one wave go to the first: {}", overlaps.join(", ")),
        )
    })
}

/// Members the Rollout selects that no wave selects.
pub fn unassigned_problem(unassigned: &[String]) -> Option<InputProblem> {
    (!unassigned.is_empty()).then(|| {
        let mut names = unassigned.to_vec();
        names.sort();
        InputProblem::new(
            CLUSTERS_UNASSIGNED,
            format!(
                "{} cluster(s) selected by the Rollout fall in no wave and will not get the release: {}",
                names.len(),
                names.join(", ")
            ),
        )
    })
}

/// Where the members' Canary is missing. `missing`: reached members without it;
/// `present`: how many reached members have it.
pub fn canary_problem(canary: &str, missing: &[String], present: usize) -> Option<InputProblem> {
    if missing.is_empty() {
        return None;
    }
    let mut names = missing.to_vec();
    names.sort();
    Some(if present == 0 {
        InputProblem::new(
            CANARY_NOT_FOUND,
            format!(
                "Canary {canary} exists in none of the {} cluster(s) that answered ({}): nothing can be approved",
                names.len(),
                names.join(", ")
            ),
        )
    } else {
        InputProblem::new(
            CANARY_MISSING,
            format!("Canary {canary} does not exist on cluster(s) {}: they cannot take the release", names.join(", ")),
        )
    })
}

/// Clusters whose kubeconfigs reach one and the same cluster (its kube-system UID):
/// waves would count it twice and release to it under two names. Blocks the Rollout.
pub fn shared_identity_problem<'a>(observed: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<InputProblem> {
    let groups = crate::fleet::identity::shared_uids(observed);
    (!groups.is_empty()).then(|| {
        let described: Vec<String> =
            groups.iter().map(|(uid, names)| format!("{} (kube-system UID {uid})", names.join(" and "))).collect();
        InputProblem::new(
            CLUSTERS_SHARE_IDENTITY,
            format!(
                "Cluster objects reach the same member cluster: {}; fix their kubeconfig Secrets, nothing is approved until then",
                described.join("; ")
            ),
        )
    })
}

/// Clusters whose traffic share label cannot be read (see [`crate::fleet::traffic`]):
/// their share counts as unknown (never guessed), so `kubectl petrel plan` cannot tell
/// the blast radius of a wave they are in. Approvals go on: the share only informs.
pub fn traffic_share_problem<'a>(
    clusters: impl IntoIterator<Item = (&'a str, &'a BTreeMap<String, String>)>,
) -> Option<InputProblem> {
    let mut unreadable: Vec<String> = clusters
        .into_iter()
        .filter_map(|(name, labels)| {
            Some(format!("cluster {name}: {}", crate::fleet::traffic::traffic_share(labels)?.err()?))
        })
        .collect();
    unreadable.sort();
    (!unreadable.is_empty()).then(|| {
        InputProblem::new(
            INVALID_TRAFFIC_SHARE,
            format!("traffic shares that cannot be read count as unknown: {}", unreadable.join("; ")),
        )
    })
}

/// How much a problem matters, for the condition's reason: what blocks first.
fn severity(reason: &str) -> u8 {
    match reason {
        INVALID_SPEC => 0,
        CLUSTERS_SHARE_IDENTITY | CANARY_NOT_FOUND => 1,
        "KubeconfigSecretMissing" | "KubeconfigSecretUnreadable" | "KubeconfigInvalid" => 2,
        CANARY_MISSING => 3,
        WAVES_OVERLAP => 4,
        CLUSTERS_UNASSIGNED => 5,
        INVALID_TRAFFIC_SHARE => 6,
        _ => 7,
    }
}

/// Sorts problems by severity (stable: equal ones keep their order).
pub fn sort_problems(problems: &mut [InputProblem]) {
    problems.sort_by_key(|p| severity(p.reason));
}

/// The `Valid` condition for `problems` (sorted by [`sort_problems`]); its transition
/// time moves only when its status changes.
pub fn valid_condition(
    previous: &[Condition],
    problems: &[InputProblem],
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> Condition {
    let (status, reason, message) = match problems.first() {
        None => ("True", "Valid", String::new()),
        Some(first) => {
            ("False", first.reason, problems.iter().map(|p| p.message.as_str()).collect::<Vec<_>>().join("; "))
        }
    };
    Condition {
        observed_generation: generation,
        ..Condition::after(previous, CONDITION_VALID, status, reason, message, now)
    }
}

/// A Warning Event for each problem the previous `Valid` condition did not report yet,
/// so a problem is announced once, not at every reconcile.
pub fn problem_events(previous: &[Condition], problems: &[InputProblem]) -> Vec<HubEvent> {
    let reported =
        previous.iter().find(|c| c.type_ == CONDITION_VALID && c.status == "False").map_or("", |c| c.message.as_str());
    problems
        .iter()
        .filter(|p| !reported.contains(&p.message))
        .map(|p| HubEvent { reason: p.reason, message: p.message.clone(), warning: true })
        .collect()
}

/// The Event of a release the hub starts rolling out, saying which one it supersedes
/// mid-run; `None` when `release` is the one the previous status already rolls out.
pub fn release_started(previous: Option<&RolloutStatus>, release: &str) -> Option<HubEvent> {
    if previous.and_then(|p| p.release.as_deref()) == Some(release) {
        return None;
    }
    let before = previous.and_then(|p| Some((p.release.as_deref()?, p.phase?, p.current_wave.as_deref())));
    let message = match before {
        Some((old, RolloutPhase::Succeeded | RolloutPhase::Failed, _)) => {
            format!("release {release} started (the previous release {old} had ended)")
        }
        Some((old, _, wave)) => format!(
            "release {release} supersedes {old} mid-run{}: the plan starts again from the first wave",
            wave.map(|w| format!(" (at wave {w})")).unwrap_or_default()
        ),
        None => format!("release {release} started"),
    };
    Some(HubEvent { reason: "ReleaseStarted", message, warning: false })
}

/// Events for what changed between two statuses of the same release: members that
/// failed, timed out, became unreachable or promoted; waves that succeeded; the
/// release done. A status of another release counts as no status.
pub fn transition_events(previous: Option<&RolloutStatus>, next: &RolloutStatus) -> Vec<HubEvent> {
    let previous = previous.filter(|p| p.release == next.release);
    let release = next.release.as_deref().unwrap_or("unknown");
    let mut events = Vec::new();
    for member in &next.members {
        let before = previous.and_then(|p| p.members.iter().find(|m| m.cluster == member.cluster));
        if before.is_some_and(|b| b.state == member.state) {
            continue;
        }
        let cluster = &member.cluster;
        let detail = if member.message.is_empty() { String::new() } else { format!(": {}", member.message) };
        let event = match member.state {
            MemberState::Failed => HubEvent {
                reason: "MemberFailed",
                message: format!(
                    "cluster {cluster} failed release {release} after {} failed check(s) and rolled itself back{detail}",
                    member.failed_checks
                ),
                warning: true,
            },
            MemberState::TimedOut => HubEvent {
                reason: "MemberTimedOut",
                message: format!(
                    "cluster {cluster} did not finish release {release} within its progressDeadline{detail}"
                ),
                warning: true,
            },
            MemberState::Unreachable => HubEvent {
                reason: "MemberUnreachable",
                message: format!(
                    "cluster {cluster} is unreachable (last contact {}){detail}",
                    member.last_contact.map_or_else(|| "never".to_string(), |t| t.to_rfc3339())
                ),
                warning: true,
            },
            MemberState::Succeeded => HubEvent {
                reason: "MemberSucceeded",
                message: format!("cluster {cluster} promoted release {release}"),
                warning: false,
            },
            _ => continue,
        };
        events.push(event);
    }
    for wave in &next.waves {
        let before = previous.and_then(|p| p.waves.iter().find(|w| w.name == wave.name)).map(|w| w.phase);
        if wave.phase == WavePhase::Succeeded && before != Some(WavePhase::Succeeded) {
            events.push(HubEvent {
                reason: "WaveSucceeded",
                message: format!("wave {} succeeded and soaked for release {release}", wave.name),
                warning: false,
            });
        }
    }
    if next.phase == Some(RolloutPhase::Succeeded) && previous.and_then(|p| p.phase) != Some(RolloutPhase::Succeeded) {
        events.push(HubEvent {
            reason: "RolloutSucceeded",
            message: format!("release {release} rolled out to every wave"),
            warning: false,
        });
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use petrel_api::rollout::{MemberStatus, RolloutSpec, WaveStatus};
    use serde_json::json;

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 4, minute, 0).unwrap()
    }

    fn plan(waves: serde_json::Value) -> RolloutPlan {
        let spec: RolloutSpec = serde_json::from_value(json!({
            "canaryRef": {"namespace": "test", "name": "podinfo"},
            "waves": waves,
        }))
        .unwrap();
        RolloutPlan::from_spec(&spec).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn members_of_two_waves_are_named_with_the_wave_that_wins() {
        let plan = plan(json!([
            {"name": "canary", "clusterSelector": {"matchLabels": {"role": "canary"}}},
            {"name": "eu", "clusterSelector": {"matchLabels": {"region": "eu"}}},
            {"name": "rest"},
        ]));
        let canary_eu = labels(&[("role", "canary"), ("region", "eu")]);
        let eu = labels(&[("region", "eu")]);
        let us = labels(&[("region", "us")]);
        let problem = overlap_problem(&plan, [("eu-2", &eu), ("eu-1", &canary_eu), ("us-1", &us)]).unwrap();
        assert_eq!(problem.reason, WAVES_OVERLAP);
        assert_eq!(
            problem.message,
            "cluster(s) selected by more than one wave go to the first: eu-1 (waves canary, eu: goes to canary)"
        );
    }

    #[test]
    fn a_trailing_catch_all_wave_is_no_overlap_but_a_leading_one_is() {
        let catch_all_last = plan(json!([
            {"name": "canary", "clusterSelector": {"matchLabels": {"role": "canary"}}},
            {"name": "rest"},
        ]));
        let canary = labels(&[("role", "canary")]);
        assert_eq!(overlap_problem(&catch_all_last, [("c-1", &canary)]), None);
        let catch_all_first = plan(json!([
            {"name": "all"},
            {"name": "canary", "clusterSelector": {"matchLabels": {"role": "canary"}}},
        ]));
        let problem = overlap_problem(&catch_all_first, [("c-1", &canary)]).unwrap();
        assert!(problem.message.contains("c-1 (waves all, canary: goes to all)"), "{}", problem.message);
    }

    #[test]
    fn unassigned_members_are_listed() {
        assert_eq!(unassigned_problem(&[]), None);
        let problem = unassigned_problem(&["b".into(), "a".into()]).unwrap();
        assert_eq!(problem.reason, CLUSTERS_UNASSIGNED);
        assert!(problem.message.ends_with("will not get the release: a, b"), "{}", problem.message);
    }

    #[test]
    fn a_canary_missing_everywhere_is_not_found_and_missing_somewhere_is_named() {
        assert_eq!(canary_problem("test/podinfo", &[], 3), None);
        let nowhere = canary_problem("test/podinfo", &["b".into(), "a".into()], 0).unwrap();
        assert_eq!(nowhere.reason, CANARY_NOT_FOUND);
        assert!(nowhere.message.contains("none of the 2 cluster(s) that answered (a, b)"), "{}", nowhere.message);
        let somewhere = canary_problem("test/podinfo", &["b".into()], 2).unwrap();
        assert_eq!(somewhere.reason, CANARY_MISSING);
        assert!(somewhere.message.contains("cluster(s) b"), "{}", somewhere.message);
    }

    #[test]
    fn the_valid_condition_names_the_most_serious_problem_and_lists_all() {
        let mut problems = vec![
            InputProblem::new(CLUSTERS_UNASSIGNED, "x left out"),
            InputProblem::new("KubeconfigSecretMissing", "cluster eu-1: Secret missing"),
            InputProblem::new(WAVES_OVERLAP, "y in two waves"),
        ];
        sort_problems(&mut problems);
        let c = valid_condition(&[], &problems, Some(4), at(1));
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "KubeconfigSecretMissing"));
        assert_eq!(c.message, "cluster eu-1: Secret missing; y in two waves; x left out");
        assert_eq!((c.observed_generation, c.last_transition_time), (Some(4), at(1)));
        let later = valid_condition(std::slice::from_ref(&c), &problems[..1], Some(4), at(5));
        assert_eq!(later.last_transition_time, at(1), "still False");
        let fixed = valid_condition(&[later], &[], Some(5), at(6));
        assert_eq!(
            (fixed.status.as_str(), fixed.reason.as_str(), fixed.last_transition_time),
            ("True", "Valid", at(6))
        );
    }

    #[test]
    fn conditions_are_replaced_by_type() {
        let mut conditions = vec![valid_condition(&[], &[], None, at(1))];
        petrel_api::common::put_condition(
            &mut conditions,
            valid_condition(&[], &[InputProblem::new(WAVES_OVERLAP, "y")], None, at(2)),
        );
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].status, "False");
    }

    #[test]
    fn each_problem_is_announced_once() {
        let problems = vec![InputProblem::new(WAVES_OVERLAP, "y in two waves")];
        let events = problem_events(&[], &problems);
        assert_eq!(events, vec![HubEvent { reason: WAVES_OVERLAP, message: "y in two waves".into(), warning: true }]);
        let reported = [valid_condition(&[], &problems, None, at(1))];
        assert_eq!(problem_events(&reported, &problems), vec![]);
        let more = vec![problems[0].clone(), InputProblem::new(CLUSTERS_UNASSIGNED, "x left out")];
        let events = problem_events(&reported, &more);
        assert_eq!(events.iter().map(|e| e.reason).collect::<Vec<_>>(), [CLUSTERS_UNASSIGNED]);
    }

    fn member(cluster: &str, state: MemberState) -> MemberStatus {
        MemberStatus {
            cluster: cluster.into(),
            wave: Some("prod".into()),
            state,
            phase: None,
            weight: 0,
            failed_checks: 2,
            release: Some("r2".into()),
            revision: None,
            approved_at: None,
            approval_withdrawn_at: None,
            last_contact: Some(at(3)),
            max_weight: None,
            message: String::new(),
        }
    }

    fn status(release: &str, phase: RolloutPhase, members: Vec<MemberStatus>, wave: WavePhase) -> RolloutStatus {
        RolloutStatus {
            release: Some(release.into()),
            phase: Some(phase),
            members,
            waves: vec![WaveStatus { phase: wave, ..WaveStatus::pending("prod") }],
            ..RolloutStatus::default()
        }
    }

    #[test]
    fn member_failures_timeouts_and_losses_are_events_once() {
        let before = status(
            "r2",
            RolloutPhase::Progressing,
            vec![
                member("a", MemberState::Progressing),
                member("b", MemberState::Progressing),
                member("c", MemberState::Failed),
            ],
            WavePhase::Progressing,
        );
        let after = status(
            "r2",
            RolloutPhase::Progressing,
            vec![
                member("a", MemberState::Failed),
                member("b", MemberState::Unreachable),
                member("c", MemberState::Failed),
            ],
            WavePhase::Progressing,
        );
        let events = transition_events(Some(&before), &after);
        assert_eq!(events.iter().map(|e| e.reason).collect::<Vec<_>>(), ["MemberFailed", "MemberUnreachable"]);
        assert!(events.iter().all(|e| e.warning));
        assert!(
            events[0].message.contains("cluster a failed release r2 after 2 failed check(s)"),
            "{}",
            events[0].message
        );
        assert!(events[1].message.contains("last contact 2026-11-22T04:03:00"), "{}", events[1].message);
        assert_eq!(transition_events(Some(&after), &after), vec![]);
    }

    #[test]
    fn a_new_release_starts_with_no_known_states() {
        let old = status("r1", RolloutPhase::Failed, vec![member("a", MemberState::TimedOut)], WavePhase::Failed);
        let new =
            status("r2", RolloutPhase::Progressing, vec![member("a", MemberState::TimedOut)], WavePhase::Progressing);
        let events = transition_events(Some(&old), &new);
        assert_eq!(events.iter().map(|e| e.reason).collect::<Vec<_>>(), ["MemberTimedOut"]);
        let started = release_started(Some(&old), "r2").unwrap();
        assert_eq!((started.reason, started.warning), ("ReleaseStarted", false));
        assert_eq!(started.message, "release r2 started (the previous release r1 had ended)");
    }

    #[test]
    fn a_release_superseding_one_in_flight_says_so() {
        let mut old = status("r1", RolloutPhase::Progressing, vec![], WavePhase::Progressing);
        old.current_wave = Some("prod".into());
        let started = release_started(Some(&old), "r2").unwrap();
        assert_eq!(
            started.message,
            "release r2 supersedes r1 mid-run (at wave prod): the plan starts again from the first wave"
        );
        assert_eq!(release_started(Some(&old), "r1"), None, "the same release is no news");
        assert_eq!(release_started(None, "r2").unwrap().message, "release r2 started");
    }

    #[test]
    fn waves_and_the_release_succeeding_are_events() {
        let before = status(
            "r2",
            RolloutPhase::Progressing,
            vec![member("a", MemberState::Progressing)],
            WavePhase::Progressing,
        );
        let after =
            status("r2", RolloutPhase::Succeeded, vec![member("a", MemberState::Succeeded)], WavePhase::Succeeded);
        let events = transition_events(Some(&before), &after);
        assert_eq!(
            events.iter().map(|e| (e.reason, e.warning)).collect::<Vec<_>>(),
            [("MemberSucceeded", false), ("WaveSucceeded", false), ("RolloutSucceeded", false)]
        );
    }
}
