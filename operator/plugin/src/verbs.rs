//! The plugin's imperative verbs as pure decisions: given a Canary, either the one patch
//! a verb makes or the reason it is refused.
//!
//! Every verb is a single JSON merge patch on the Canary object, so the README can show
//! each as a plain `kubectl patch` or `kubectl annotate` command and GitOps users can see
//! exactly what changed.

use chrono::{DateTime, Utc};
use kube::ResourceExt;
use serde_json::{Value, json};

use petrel_api::canary::Phase;
use petrel_api::verbs::{Verb, VerbRequest};
use petrel_api::{Canary, Rollout};

use petrel_api::canary::FLEET_ROLLOUT_ANNOTATION;

/// A verb of `kubectl petrel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `spec.suspend: true`.
    Pause,
    /// `spec.suspend: false`.
    Resume,
    /// Annotation `petrel.dev/abort`.
    Abort,
    /// Annotation `petrel.dev/promote`.
    Promote,
    /// Annotation `petrel.dev/retry`.
    Retry,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Abort => "abort",
            Command::Promote => "promote",
            Command::Retry => "retry",
        }
    }

    fn annotation_verb(self) -> Option<Verb> {
        match self {
            Command::Abort => Some(Verb::Abort),
            Command::Promote => Some(Verb::Promote),
            Command::Retry => Some(Verb::Retry),
            Command::Pause | Command::Resume => None,
        }
    }
}

/// What a verb does to one Canary.
#[derive(Clone, Debug, PartialEq)]
pub struct VerbPatch {
    /// JSON merge patch on the Canary (never its status).
    pub patch: Value,
    /// The same change as a plain kubectl command.
    pub kubectl: String,
    /// One line for the person who ran the verb.
    pub summary: String,
}

/// Why a verb does not apply to the Canary as it stands.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// The patch `command` makes on `canary`, or why it makes none. `now` names the request
/// (its request id), so two requests for the same revision differ.
pub fn plan_command(command: Command, canary: &Canary, now: DateTime<Utc>) -> Result<VerbPatch, Refusal> {
    let name = canary.name_any();
    let namespace = canary.namespace().unwrap_or_else(|| "default".to_string());
    let status = canary.status.clone().unwrap_or_default();
    let phase = status.phase;
    let suspended = canary.spec.suspend;

    let Some(verb) = command.annotation_verb() else {
        let suspend = command == Command::Pause;
        if suspend == suspended {
            return Err(Refusal(if suspended {
                format!("{name} is already paused (spec.suspend is true)")
            } else {
                format!("{name} is not paused: nothing to resume")
            }));
        }
        let patch = json!({ "spec": { "suspend": suspend } });
        return Ok(VerbPatch {
            kubectl: format!("kubectl patch canary/{name} -n {namespace} --type merge -p '{patch}'"),
            patch,
            summary: if suspend {
                format!("{name} paused: petrel leaves it (traffic, replicas, status) as it is until resumed")
            } else {
                format!("{name} resumed")
            },
        });
    };

    check_phase(command, &name, phase)?;
    if command == Command::Promote && canary.annotations().contains_key(FLEET_ROLLOUT_ANNOTATION) {
        return Err(Refusal(format!(
            "{name} belongs to fleet Rollout {}: approve the release on the hub instead of promoting one cluster",
            canary.annotations()[FLEET_ROLLOUT_ANNOTATION]
        )));
    }
    let Some(revision) = status.last_applied_spec.as_deref().filter(|r| !r.is_empty()) else {
        return Err(Refusal(format!(
            "{name} is {phase} but has no revision in status.lastAppliedSpec yet: nothing to {}",
            command.as_str()
        )));
    };
    let value = VerbRequest::value_for(revision, &now.format("%Y%m%dT%H%M%SZ").to_string());
    let annotation = verb.annotation();
    let patch = json!({ "metadata": { "annotations": { annotation: value } } });
    let mut summary = match command {
        Command::Abort => format!("requested abort of revision {revision} of {name}: petrel rolls it back"),
        Command::Promote => {
            format!("requested promotion of revision {revision} of {name}: petrel skips the remaining steps")
        }
        _ => format!("requested a retry of revision {revision} of {name}: petrel runs its analysis again"),
    };
    if suspended {
        summary.push_str(&format!(" once it is resumed ({name} is paused)"));
    }
    Ok(VerbPatch {
        kubectl: format!("kubectl annotate canary/{name} -n {namespace} --overwrite {annotation}={value}"),
        patch,
        summary,
    })
}

/// The patch `command` makes on a fleet `rollout` (`kubectl petrel pause rollout/NAME`),
/// or why it makes none. Only pause and resume apply to a Rollout (`spec.paused`); the
/// others act on one member's Canary, and the refusal says what to run instead.
pub fn plan_rollout_command(command: Command, rollout: &Rollout) -> Result<VerbPatch, Refusal> {
    let name = rollout.name_any();
    let namespace = rollout.namespace().unwrap_or_else(|| "default".to_string());
    let paused = rollout.spec.paused;
    let pause = match command {
        Command::Pause => true,
        Command::Resume => false,
        Command::Promote => {
            return Err(Refusal(format!(
                "a fleet Rollout is not promoted as a whole: the hub releases wave by wave; approve a Manual wave with `kubectl petrel approve {name} <wave> -n {namespace}`"
            )));
        }
        Command::Abort => {
            return Err(Refusal(format!(
                "a fleet Rollout is not aborted as a whole: `kubectl petrel pause rollout/{name} -n {namespace}` stops the hub from releasing to more members; `kubectl petrel abort` on a member cluster's Canary rolls that member back"
            )));
        }
        Command::Retry => {
            return Err(Refusal(format!(
                "a fleet Rollout has no retry: a wave that breached its failure budget stays failed for release {}; a new release starts from the first wave",
                rollout.status.as_ref().and_then(|s| s.release.as_deref()).unwrap_or("-")
            )));
        }
    };
    if pause == paused {
        return Err(Refusal(if paused {
            format!("Rollout {name} is already paused (spec.paused is true)")
        } else {
            format!("Rollout {name} is not paused: nothing to resume")
        }));
    }
    let patch = json!({ "spec": { "paused": pause } });
    Ok(VerbPatch {
        kubectl: format!("kubectl patch rollouts.petrel.dev/{name} -n {namespace} --type merge -p '{patch}'"),
        patch,
        summary: if pause {
            format!(
                "Rollout {name} paused: the hub approves no more members and opens no wave until resumed; members already released go on"
            )
        } else {
            format!("Rollout {name} resumed")
        },
    })
}

/// Whether the phase allows the verb; the refusal says what the person can do instead.
fn check_phase(command: Command, name: &str, phase: Phase) -> Result<(), Refusal> {
    let under_analysis = matches!(phase, Phase::Waiting | Phase::Progressing | Phase::WaitingPromotion);
    let verb = command.as_str();
    let refusal = match (command, phase) {
        (Command::Abort | Command::Promote, _) if under_analysis => return Ok(()),
        (Command::Retry, Phase::Failed) => return Ok(()),
        (Command::Abort | Command::Promote, Phase::Promoting | Phase::Finalising) => {
            format!("{name} is {phase}: the release passed its analysis and is being promoted; nothing to {verb}")
        }
        (Command::Promote, Phase::Failed) => format!(
            "{name} is Failed: a rolled-back revision gets no traffic again; run `kubectl petrel retry {name}` to analyse it again"
        ),
        (Command::Abort, Phase::Failed) => {
            format!("{name} is Failed: the release is already rolled back; nothing to abort")
        }
        (Command::Retry, _) => format!("{name} is {phase}: nothing to retry (only a Failed release can be retried)"),
        (_, Phase::Initializing | Phase::Initialized) => {
            format!("{name} is {phase}: no release is under way; nothing to {verb}")
        }
        _ => format!("{name} is {phase}: nothing to {verb}"),
    };
    Err(Refusal(refusal))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use petrel_api::canary::CanaryStatus;

    fn canary(phase: Phase, suspend: bool) -> Canary {
        let mut canary: Canary = serde_json::from_value(json!({
            "apiVersion": "petrel.dev/v1alpha1",
            "kind": "Canary",
            "metadata": { "name": "podinfo", "namespace": "test" },
            "spec": {
                "targetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo" },
                "service": { "port": 9898 },
                "suspend": suspend
            }
        }))
        .unwrap();
        canary.status = Some(CanaryStatus { phase, last_applied_spec: Some("6f7d9c".into()), ..Default::default() });
        canary
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 2, 30, 0).unwrap()
    }

    #[test]
    fn abort_annotates_the_revision_under_analysis() {
        let planned = plan_command(Command::Abort, &canary(Phase::Progressing, false), now()).unwrap();
        assert_eq!(
            planned.patch,
            json!({"metadata": {"annotations": {"petrel.dev/abort": "6f7d9c@20261122T023000Z"}}})
        );
        assert_eq!(
            planned.kubectl,
            "kubectl annotate canary/podinfo -n test --overwrite petrel.dev/abort=6f7d9c@20261122T023000Z"
        );
    }

    #[test]
    fn promote_and_retry_use_their_own_annotations() {
        let promote = plan_command(Command::Promote, &canary(Phase::WaitingPromotion, false), now()).unwrap();
        assert_eq!(promote.patch["metadata"]["annotations"]["petrel.dev/promote"], "6f7d9c@20261122T023000Z");
        let retry = plan_command(Command::Retry, &canary(Phase::Failed, false), now()).unwrap();
        assert_eq!(retry.patch["metadata"]["annotations"]["petrel.dev/retry"], "6f7d9c@20261122T023000Z");
    }

    #[test]
    fn pause_and_resume_patch_spec_suspend() {
        let pause = plan_command(Command::Pause, &canary(Phase::Progressing, false), now()).unwrap();
        assert_eq!(pause.patch, json!({"spec": {"suspend": true}}));
        assert_eq!(
            pause.kubectl,
            r#"kubectl patch canary/podinfo -n test --type merge -p '{"spec":{"suspend":true}}'"#
        );
        let resume = plan_command(Command::Resume, &canary(Phase::Progressing, true), now()).unwrap();
        assert_eq!(resume.patch, json!({"spec": {"suspend": false}}));
    }

    #[test]
    fn verbs_in_the_wrong_phase_are_refused_with_the_reason() {
        let refused = |command, phase, suspend| plan_command(command, &canary(phase, suspend), now()).unwrap_err().0;
        assert_eq!(refused(Command::Abort, Phase::Succeeded, false), "podinfo is Succeeded: nothing to abort");
        assert_eq!(
            refused(Command::Abort, Phase::Failed, false),
            "podinfo is Failed: the release is already rolled back; nothing to abort"
        );
        assert_eq!(
            refused(Command::Retry, Phase::Progressing, false),
            "podinfo is Progressing: nothing to retry (only a Failed release can be retried)"
        );
        assert!(refused(Command::Promote, Phase::Failed, false).contains("kubectl petrel retry podinfo"));
        assert!(refused(Command::Promote, Phase::Finalising, false).contains("being promoted"));
        assert_eq!(
            refused(Command::Abort, Phase::Initialized, false),
            "podinfo is Initialized: no release is under way; nothing to abort"
        );
        assert_eq!(
            refused(Command::Pause, Phase::Progressing, true),
            "podinfo is already paused (spec.suspend is true)"
        );
        assert_eq!(refused(Command::Resume, Phase::Progressing, false), "podinfo is not paused: nothing to resume");
    }

    #[test]
    fn every_phase_allows_exactly_the_documented_verbs() {
        for phase in Phase::ALL {
            let allowed = |command| plan_command(command, &canary(phase, false), now()).is_ok();
            let under_analysis = matches!(phase, Phase::Waiting | Phase::Progressing | Phase::WaitingPromotion);
            assert_eq!(allowed(Command::Abort), under_analysis, "abort in {phase}");
            assert_eq!(allowed(Command::Promote), under_analysis, "promote in {phase}");
            assert_eq!(allowed(Command::Retry), phase == Phase::Failed, "retry in {phase}");
            assert!(allowed(Command::Pause), "pause in {phase}");
        }
    }

    #[test]
    fn promote_is_refused_for_a_fleet_member() {
        let mut member = canary(Phase::Waiting, false);
        member.annotations_mut().insert(FLEET_ROLLOUT_ANNOTATION.into(), "hub/podinfo".into());
        let refusal = plan_command(Command::Promote, &member, now()).unwrap_err().0;
        assert!(refusal.contains("fleet Rollout hub/podinfo"), "{refusal}");
        assert!(plan_command(Command::Abort, &member, now()).is_ok());
    }

    #[test]
    fn a_request_needs_a_revision() {
        let mut fresh = canary(Phase::Progressing, false);
        fresh.status.as_mut().unwrap().last_applied_spec = None;
        assert!(plan_command(Command::Abort, &fresh, now()).unwrap_err().0.contains("no revision"));
    }

    fn rollout(paused: bool) -> Rollout {
        serde_json::from_value(json!({
            "apiVersion": "petrel.dev/v1alpha1",
            "kind": "Rollout",
            "metadata": { "name": "podinfo", "namespace": "fleet" },
            "spec": { "canaryRef": { "namespace": "test", "name": "podinfo" }, "waves": [{ "name": "all" }], "paused": paused }
        }))
        .unwrap()
    }

    #[test]
    fn a_rollout_is_paused_and_resumed_through_spec_paused() {
        let pause = plan_rollout_command(Command::Pause, &rollout(false)).unwrap();
        assert_eq!(pause.patch, json!({"spec": {"paused": true}}));
        assert_eq!(
            pause.kubectl,
            r#"kubectl patch rollouts.petrel.dev/podinfo -n fleet --type merge -p '{"spec":{"paused":true}}'"#
        );
        let resume = plan_rollout_command(Command::Resume, &rollout(true)).unwrap();
        assert_eq!(resume.patch, json!({"spec": {"paused": false}}));
        assert_eq!(
            plan_rollout_command(Command::Pause, &rollout(true)).unwrap_err().0,
            "Rollout podinfo is already paused (spec.paused is true)"
        );
        assert_eq!(
            plan_rollout_command(Command::Resume, &rollout(false)).unwrap_err().0,
            "Rollout podinfo is not paused: nothing to resume"
        );
    }

    #[test]
    fn the_canary_verbs_on_a_rollout_say_what_to_run_instead() {
        let refused = |command| plan_rollout_command(command, &rollout(false)).unwrap_err().0;
        assert!(refused(Command::Promote).contains("kubectl petrel approve podinfo <wave> -n fleet"));
        assert!(refused(Command::Abort).contains("kubectl petrel pause rollout/podinfo -n fleet"));
        assert!(refused(Command::Retry).starts_with("a fleet Rollout has no retry"));
    }

    #[test]
    fn a_request_on_a_paused_canary_says_when_it_applies() {
        let planned = plan_command(Command::Abort, &canary(Phase::Progressing, true), now()).unwrap();
        assert!(planned.summary.ends_with("once it is resumed (podinfo is paused)"), "{}", planned.summary);
    }
}
