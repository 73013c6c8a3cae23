//! Whether the demo's story happened, free of I/O: from the hub's Rollout
//! status and what the demo saw of each member's own Canary, the checks the
//! summary prints and the exit code depends on.
//!
//! The hub's status is checked against the members' own reports on purpose:
//! a hub that wrote a tidy status while members released out of order must
//! not pass.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use petrel::api::canary::{CanaryStatus, Phase};
use petrel::api::rollout::{MemberState, RolloutPhase, RolloutStatus, WavePhase, WaveStatus};

/// Timestamps written by different processes (a member's petrel, the hub)
/// may be rounded to the second when serialized; comparisons across them
/// allow this much.
pub const CLOCK_SLACK: Duration = Duration::from_secs(1);

/// One member's Canary as the demo saw it at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberSample {
    /// When the demo read it.
    pub seen: DateTime<Utc>,
    /// When the member says the phase began (`status.lastTransitionTime`).
    pub since: Option<DateTime<Utc>>,
    pub phase: Phase,
    /// `status.release`: what the Canary is releasing (or last released).
    pub release: Option<String>,
    /// `status.waitingRelease`: what waits at the hub's gate.
    pub waiting_release: Option<String>,
    /// `status.promotedRelease`: what the primary serves.
    pub primary: Option<String>,
}

impl MemberSample {
    pub fn new(seen: DateTime<Utc>, status: &CanaryStatus) -> MemberSample {
        MemberSample {
            seen,
            since: status.last_transition_time,
            phase: status.phase,
            release: status.release.clone(),
            waiting_release: status.waiting_release.clone(),
            primary: status.promoted_release.clone(),
        }
    }

    /// When the phase began: the member's own word, else when the demo saw it.
    pub fn started(&self) -> DateTime<Utc> {
        self.since.unwrap_or(self.seen)
    }

    fn same_state(&self, other: &MemberSample) -> bool {
        (self.phase, &self.release, &self.waiting_release, &self.primary)
            == (other.phase, &other.release, &other.waiting_release, &other.primary)
    }
}

/// Phases in which a Canary sends traffic to (or promotes) its release.
pub fn releasing(phase: Phase) -> bool {
    matches!(phase, Phase::Progressing | Phase::WaitingPromotion | Phase::Promoting | Phase::Finalising)
}

/// Whether a release identity (the target's images) carries `tag`:
/// `ghcr.io/x/podinfo:6.7.1` is release `6.7.1`, `…:6.7.10` is not.
pub fn is_release(release: Option<&str>, tag: &str) -> bool {
    release.is_some_and(|r| r.split([',', ' ', ';']).any(|image| super::plan::split_image(image.trim()).1 == Some(tag)))
}

/// Every member's Canary over one release, one sample per change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timeline {
    pub members: BTreeMap<String, Vec<MemberSample>>,
}

impl Timeline {
    /// Keeps `sample` when the member's state changed since its last one.
    pub fn record(&mut self, member: &str, sample: MemberSample) {
        let samples = self.members.entry(member.to_owned()).or_default();
        if samples.last().is_none_or(|last| !last.same_state(&sample)) {
            samples.push(sample);
        }
    }

    /// When `member` began releasing `tag`, if it ever did.
    pub fn first_releasing(&self, member: &str, tag: &str) -> Option<DateTime<Utc>> {
        self.samples(member)
            .iter()
            .find(|s| releasing(s.phase) && is_release(s.release.as_deref(), tag))
            .map(MemberSample::started)
    }

    /// Whether `member` was seen waiting at the hub's gate with `tag`.
    pub fn waited(&self, member: &str, tag: &str) -> bool {
        self.samples(member).iter().any(|s| s.phase == Phase::Waiting && is_release(s.waiting_release.as_deref(), tag))
    }

    pub fn last(&self, member: &str) -> Option<&MemberSample> {
        self.samples(member).last()
    }

    fn samples(&self, member: &str) -> &[MemberSample] {
        self.members.get(member).map_or(&[], Vec::as_slice)
    }
}

/// A wave as the Rollout's spec declares it (what the checks need of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaveSpec {
    pub name: String,
    pub soak: Duration,
}

/// One claim about the story, true or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub what: String,
    pub passed: bool,
    /// What was seen, for the summary.
    pub detail: String,
}

impl Check {
    fn new(what: impl Into<String>, passed: bool, detail: impl Into<String>) -> Check {
        Check { what: what.into(), passed, detail: detail.into() }
    }
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "never".to_owned(), |t| t.format("%H:%M:%S%.3f").to_string())
}

fn plus(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

fn minus(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::zero())
}

fn wave_status<'a>(status: &'a RolloutStatus, name: &str) -> Option<&'a WaveStatus> {
    status.waves.iter().find(|w| w.name == name)
}

fn members_of<'a>(status: &'a RolloutStatus, wave: &str) -> Vec<&'a str> {
    status.members.iter().filter(|m| m.wave.as_deref() == Some(wave)).map(|m| m.cluster.as_str()).collect()
}

fn rollout_line(status: &RolloutStatus) -> String {
    format!(
        "Rollout {} for {}",
        status.phase.map_or_else(|| "without phase".to_owned(), |p| format!("{p:?}")),
        status.release.as_deref().unwrap_or("no release")
    )
}

/// The checks of a healthy release `tag`: the hub rolled it out wave by
/// wave, each wave opening only after the previous one succeeded and
/// soaked, and every member's own Canary agrees.
pub fn healthy_checks(tag: &str, waves: &[WaveSpec], status: &RolloutStatus, timeline: &Timeline) -> Vec<Check> {
    let mut checks = vec![Check::new(
        format!("the hub rolled {tag} out to the whole fleet (Rollout Succeeded)"),
        is_release(status.release.as_deref(), tag) && status.phase == Some(RolloutPhase::Succeeded),
        rollout_line(status),
    )];
    // The end of the soak of the last non-empty wave before the current one.
    let mut opens_after: Option<(String, DateTime<Utc>)> = None;
    for wave in waves {
        let members = members_of(status, &wave.name);
        if members.is_empty() {
            continue;
        }
        let Some(ws) = wave_status(status, &wave.name) else {
            checks.push(Check::new(format!("wave {} in the Rollout status", wave.name), false, "missing"));
            continue;
        };
        let mut detail = format!("{:?}, opened {}, succeeded {}", ws.phase, time(ws.opened_at), time(ws.succeeded_at));
        let mut passed = ws.phase == WavePhase::Succeeded;
        if let Some((previous, soaked)) = &opens_after {
            passed &= ws.opened_at.is_some_and(|opened| opened >= *soaked);
            detail.push_str(&format!("; {previous} soaked at {}", time(Some(*soaked))));
        }
        let what = match &opens_after {
            Some((previous, _)) => format!("wave {} opened only after {previous} succeeded and soaked", wave.name),
            None => format!("wave {} ({}) went first", wave.name, members.join(", ")),
        };
        checks.push(Check::new(what, passed, detail));
        for member in &members {
            let hub_view = status.members.iter().find(|m| m.cluster == *member);
            let approved = hub_view.and_then(|m| m.approved_at);
            let started = timeline.first_releasing(member, tag);
            let primary = timeline.last(member).and_then(|s| s.primary.clone());
            let mut passed = hub_view.is_some_and(|m| m.state == MemberState::Succeeded)
                && approved.is_some()
                && is_release(primary.as_deref(), tag);
            let mut detail = format!(
                "approved {}, started releasing {}, primary {}",
                time(approved),
                time(started),
                primary.as_deref().unwrap_or("-")
            );
            let what = if let Some((previous, soaked)) = &opens_after {
                // Approval and start come from different processes: the member may
                // report its start rounded down to the second.
                passed &= approved.is_some_and(|a| a >= *soaked)
                    && started.is_some_and(|s| s >= minus(*soaked, CLOCK_SLACK))
                    && timeline.waited(member, tag);
                if !timeline.waited(member, tag) {
                    detail.push_str("; never seen Waiting for the hub");
                }
                format!("{member} waited for the hub, released after {previous} soaked, promoted {tag}")
            } else {
                format!("{member} promoted {tag}")
            };
            if started.is_none() {
                passed = false;
            }
            checks.push(Check::new(what, passed, detail));
        }
        let soaked = ws.succeeded_at.map(|s| plus(s, wave.soak));
        opens_after = soaked.map(|s| (wave.name.clone(), s)).or(opens_after);
    }
    checks
}

/// The checks of a bad release `bad` after `good`: a wave failed it, its
/// members rolled back to `good` on their own, and no later wave opened or
/// released it.
pub fn halted_checks(
    bad: &str,
    good: &str,
    waves: &[WaveSpec],
    status: &RolloutStatus,
    timeline: &Timeline,
) -> Vec<Check> {
    let mut checks = vec![Check::new(
        format!("the hub halted {bad} (Rollout Failed)"),
        is_release(status.release.as_deref(), bad) && status.phase == Some(RolloutPhase::Failed),
        rollout_line(status),
    )];
    let failed =
        waves.iter().position(|w| wave_status(status, &w.name).is_some_and(|ws| ws.phase == WavePhase::Failed));
    let Some(failed) = failed else {
        checks.push(Check::new(format!("a wave failed {bad}"), false, "no wave is Failed in the Rollout status"));
        return checks;
    };
    let failed_wave = &waves[failed].name;
    checks.push(Check::new(
        format!("wave {failed_wave} failed {bad}"),
        failed == 0,
        if failed == 0 { "the first wave, as the story goes".to_owned() } else { "a later wave than the first".into() },
    ));
    for member in members_of(status, failed_wave) {
        let last = timeline.last(member);
        let primary = last.and_then(|s| s.primary.clone());
        let phase = last.map(|s| s.phase);
        checks.push(Check::new(
            format!("{member} failed {bad} and rolled back to {good} on its own"),
            phase == Some(Phase::Failed) && is_release(primary.as_deref(), good),
            format!(
                "Canary {}, primary {}",
                phase.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                primary.as_deref().unwrap_or("-")
            ),
        ));
    }
    for wave in &waves[failed + 1..] {
        let ws = wave_status(status, &wave.name);
        let opened = ws.and_then(|w| w.opened_at);
        checks.push(Check::new(
            format!("wave {} never opened", wave.name),
            opened.is_none(),
            format!(
                "{}, opened {}",
                ws.map_or_else(|| "not in the status".to_owned(), |w| format!("{:?}", w.phase)),
                time(opened)
            ),
        ));
        for member in members_of(status, &wave.name) {
            let approved = status.members.iter().find(|m| m.cluster == member).and_then(|m| m.approved_at);
            let started = timeline.first_releasing(member, bad);
            let primary = timeline.last(member).and_then(|s| s.primary.clone());
            checks.push(Check::new(
                format!("{member} never released {bad}, still serves {good}"),
                approved.is_none() && started.is_none() && is_release(primary.as_deref(), good),
                format!(
                    "approved {}, started releasing {}, primary {}, {}",
                    time(approved),
                    time(started),
                    primary.as_deref().unwrap_or("-"),
                    if timeline.waited(member, bad) { "waiting at the hub's gate" } else { "not seen waiting" }
                ),
            ));
        }
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;
    use petrel::api::rollout::MemberStatus;

    const GOOD: &str = "ghcr.io/stefanprodan/podinfo:6.7.1";
    const BAD: &str = "ghcr.io/stefanprodan/podinfo:6.7.2";
    const OLD: &str = "ghcr.io/stefanprodan/podinfo:6.7.0";

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    fn waves() -> Vec<WaveSpec> {
        vec![
            WaveSpec { name: "canary".into(), soak: Duration::from_secs(5) },
            WaveSpec { name: "production".into(), soak: Duration::ZERO },
        ]
    }

    fn wave(name: &str, phase: WavePhase, opened: Option<i64>, succeeded: Option<i64>) -> WaveStatus {
        WaveStatus {
            phase,
            opened_at: opened.map(at),
            succeeded_at: succeeded.map(at),
            members: 1,
            ..WaveStatus::pending(name)
        }
    }

    fn member(cluster: &str, wave: &str, state: MemberState, approved: Option<i64>) -> MemberStatus {
        MemberStatus {
            cluster: cluster.into(),
            wave: Some(wave.into()),
            state,
            phase: None,
            weight: 0,
            failed_checks: 0,
            release: None,
            revision: None,
            approved_at: approved.map(at),
            approval_withdrawn_at: None,
            last_contact: None,
            max_weight: None,
            message: String::new(),
        }
    }

    fn sample(secs: i64, phase: Phase, release: &str, waiting: Option<&str>, primary: &str) -> MemberSample {
        MemberSample {
            seen: at(secs),
            since: Some(at(secs)),
            phase,
            release: Some(release.into()),
            waiting_release: waiting.map(str::to_owned),
            primary: Some(primary.into()),
        }
    }

    /// Canary wave 0–10s, soak to 15s, production approved at 16s.
    fn healthy(prod_approved: i64, prod_started: i64) -> (RolloutStatus, Timeline) {
        let status = RolloutStatus {
            release: Some(GOOD.into()),
            phase: Some(RolloutPhase::Succeeded),
            waves: vec![
                wave("canary", WavePhase::Succeeded, Some(0), Some(10)),
                wave("production", WavePhase::Succeeded, Some(prod_approved), Some(30)),
            ],
            members: vec![
                member("staging", "canary", MemberState::Succeeded, Some(0)),
                member("prod", "production", MemberState::Succeeded, Some(prod_approved)),
            ],
            ..RolloutStatus::default()
        };
        let mut t = Timeline::default();
        t.record("staging", sample(0, Phase::Waiting, OLD, Some(GOOD), OLD));
        t.record("staging", sample(1, Phase::Progressing, GOOD, None, OLD));
        t.record("staging", sample(10, Phase::Succeeded, GOOD, None, GOOD));
        t.record("prod", sample(0, Phase::Waiting, OLD, Some(GOOD), OLD));
        t.record("prod", sample(prod_started, Phase::Progressing, GOOD, None, OLD));
        t.record("prod", sample(30, Phase::Succeeded, GOOD, None, GOOD));
        (status, t)
    }

    fn failed(checks: &[Check]) -> Vec<&Check> {
        checks.iter().filter(|c| !c.passed).collect()
    }

    #[test]
    fn releases_are_told_apart_by_tag() {
        assert!(is_release(Some(GOOD), "6.7.1"));
        assert!(!is_release(Some("ghcr.io/stefanprodan/podinfo:6.7.10"), "6.7.1"));
        assert!(is_release(Some("busybox:1.36,ghcr.io/stefanprodan/podinfo:6.7.1"), "6.7.1"));
        assert!(!is_release(None, "6.7.1"));
    }

    #[test]
    fn the_timeline_keeps_changes_only() {
        let mut t = Timeline::default();
        t.record("m", sample(0, Phase::Waiting, OLD, Some(GOOD), OLD));
        t.record("m", sample(1, Phase::Waiting, OLD, Some(GOOD), OLD));
        t.record("m", sample(2, Phase::Progressing, GOOD, None, OLD));
        assert_eq!(t.members["m"].len(), 2);
        assert_eq!(t.first_releasing("m", "6.7.1"), Some(at(2)));
        assert!(t.waited("m", "6.7.1"));
        assert!(!t.waited("m", "6.7.2"));
    }

    #[test]
    fn a_healthy_release_in_order_passes() {
        let (status, t) = healthy(16, 17);
        let checks = healthy_checks("6.7.1", &waves(), &status, &t);
        assert!(failed(&checks).is_empty(), "{checks:#?}");
        assert_eq!(checks.len(), 5, "{checks:#?}");
    }

    #[test]
    fn production_approved_during_the_canary_soak_fails() {
        let (status, t) = healthy(12, 17);
        let checks = healthy_checks("6.7.1", &waves(), &status, &t);
        let bad: Vec<&str> = failed(&checks).iter().map(|c| c.what.as_str()).collect();
        assert_eq!(
            bad,
            [
                "wave production opened only after canary succeeded and soaked",
                "prod waited for the hub, released after canary soaked, promoted 6.7.1"
            ]
        );
    }

    #[test]
    fn a_member_releasing_before_the_soak_fails_even_if_the_hub_status_looks_right() {
        let (status, t) = healthy(16, 12);
        let checks = healthy_checks("6.7.1", &waves(), &status, &t);
        assert_eq!(failed(&checks).len(), 1, "{checks:#?}");
        // Within the clock slack a start rounded down to the second still passes.
        let (status, t) = healthy(16, 14);
        assert!(failed(&healthy_checks("6.7.1", &waves(), &status, &t)).is_empty());
    }

    #[test]
    fn an_unfinished_release_fails() {
        let (mut status, t) = healthy(16, 17);
        status.phase = Some(RolloutPhase::Progressing);
        status.waves[1].phase = WavePhase::Progressing;
        let checks = healthy_checks("6.7.1", &waves(), &status, &t);
        assert_eq!(failed(&checks).len(), 2, "{checks:#?}");
        assert!(!failed(&healthy_checks("6.7.9", &waves(), &status, &t)).is_empty());
    }

    fn halted(prod_approved: Option<i64>, prod_releasing: bool) -> (RolloutStatus, Timeline) {
        let status = RolloutStatus {
            release: Some(BAD.into()),
            phase: Some(RolloutPhase::Failed),
            waves: vec![
                wave("canary", WavePhase::Failed, Some(0), None),
                wave("production", WavePhase::Pending, None, None),
            ],
            members: vec![
                member("staging", "canary", MemberState::Failed, Some(0)),
                member("prod", "production", MemberState::Pending, prod_approved),
            ],
            ..RolloutStatus::default()
        };
        let mut t = Timeline::default();
        t.record("staging", sample(1, Phase::Progressing, BAD, None, GOOD));
        t.record("staging", sample(9, Phase::Failed, BAD, None, GOOD));
        t.record("prod", sample(0, Phase::Waiting, GOOD, Some(BAD), GOOD));
        if prod_releasing {
            t.record("prod", sample(12, Phase::Progressing, BAD, None, GOOD));
        }
        (status, t)
    }

    #[test]
    fn a_bad_release_halted_in_the_canary_wave_passes() {
        let (status, t) = halted(None, false);
        let checks = halted_checks("6.7.2", "6.7.1", &waves(), &status, &t);
        assert!(failed(&checks).is_empty(), "{checks:#?}");
        assert_eq!(checks.len(), 5, "{checks:#?}");
    }

    #[test]
    fn a_later_member_approved_or_releasing_the_bad_release_fails() {
        for (approved, releasing) in [(Some(10), false), (None, true)] {
            let (status, t) = halted(approved, releasing);
            let checks = halted_checks("6.7.2", "6.7.1", &waves(), &status, &t);
            let bad: Vec<&str> = failed(&checks).iter().map(|c| c.what.as_str()).collect();
            assert_eq!(bad, ["prod never released 6.7.2, still serves 6.7.1"], "{approved:?} {releasing}");
        }
    }

    #[test]
    fn no_failed_wave_or_no_rollback_fails() {
        let (mut status, t) = halted(None, false);
        status.waves[0].phase = WavePhase::Progressing;
        let checks = halted_checks("6.7.2", "6.7.1", &waves(), &status, &t);
        assert_eq!(failed(&checks).len(), 1);
        let (status, mut t) = halted(None, false);
        t.record("staging", sample(12, Phase::Failed, BAD, None, BAD));
        assert_eq!(failed(&halted_checks("6.7.2", "6.7.1", &waves(), &status, &t)).len(), 1);
    }
}
