//! Health of a Deployment (canary or primary), from its spec and status alone.
//!
//! The clock is an argument: the same Deployment and `now` always give the same answer.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::REVISION_ANNOTATION;
use super::revision::revision;
use crate::core::WorkloadHealth;

/// Reason Kubernetes puts on the `Progressing` condition when a rollout is stuck.
const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
/// Reason of a `Progressing` condition whose rollout is complete.
const NEW_REPLICA_SET_AVAILABLE: &str = "NewReplicaSetAvailable";

/// Converts a Kubernetes time (a `jiff` timestamp) to chrono, which petrel's status uses.
fn to_chrono(time: &Time) -> Option<DateTime<Utc>> {
    timestamp_to_chrono(&time.0)
}

/// Converts the `jiff` timestamp of a `Time` or `MicroTime` to chrono.
pub(crate) fn timestamp_to_chrono(time: &k8s_openapi::jiff::Timestamp) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(time.subsec_nanosecond()).ok()?;
    DateTime::from_timestamp(time.as_second(), nanos)
}

fn condition<'a>(deployment: &'a Deployment, type_: &str) -> Option<&'a DeploymentCondition> {
    deployment.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == type_)
}

fn name(deployment: &Deployment) -> &str {
    deployment.metadata.name.as_deref().unwrap_or("<unnamed>")
}

/// Why the Deployment is not ready yet, or `None` when it is.
fn readiness_gap(deployment: &Deployment, ready_threshold_percent: i32) -> Option<String> {
    let name = name(deployment);
    let status = deployment.status.clone().unwrap_or_default();
    let generation = deployment.metadata.generation.unwrap_or(0);
    let observed = status.observed_generation.unwrap_or(0);
    if observed < generation {
        return Some(format!(
            "Deployment {name}: generation {generation} not yet observed by the controller (observed {observed})"
        ));
    }
    // The API server defaults an absent replicas field to 1.
    let desired = deployment.spec.as_ref().and_then(|spec| spec.replicas).unwrap_or(1);
    if desired <= 0 {
        return None;
    }
    let updated = status.updated_replicas.unwrap_or(0);
    if updated < desired {
        return Some(format!("Deployment {name}: {updated} of {desired} replicas updated"));
    }
    let threshold = i64::from(ready_threshold_percent.clamp(0, 100));
    // Ceiling of desired × threshold / 100, and never 0: a Deployment that should run
    // pods is not ready with none available.
    let required = ((i64::from(desired) * threshold + 99) / 100).max(1);
    let available = status.available_replicas.unwrap_or(0);
    if i64::from(available) < required {
        return Some(format!(
            "Deployment {name}: {available} of {desired} replicas available, {required} required ({threshold}%)"
        ));
    }
    None
}

/// Since when the Deployment has been failing to become ready, per its conditions:
/// `Available=False` since its transition, or an unfinished rollout since its last progress.
fn not_ready_since(deployment: &Deployment) -> Option<DateTime<Utc>> {
    let time_of = |first: &Option<Time>, second: &Option<Time>| first.as_ref().or(second.as_ref()).and_then(to_chrono);
    if let Some(available) = condition(deployment, "Available")
        && available.status == "False"
    {
        return time_of(&available.last_transition_time, &available.last_update_time);
    }
    let progressing = condition(deployment, "Progressing")?;
    if progressing.reason.as_deref() == Some(NEW_REPLICA_SET_AVAILABLE) {
        return None;
    }
    time_of(&progressing.last_update_time, &progressing.last_transition_time)
}

/// Health of a Deployment: `Ready` when its rollout is observed, every replica runs the
/// current template and at least `ready_threshold_percent` of them (rounded up, at least
/// one) are available; `DeadlineExceeded` when Kubernetes says the rollout is stuck or it
/// has been not ready for longer than `progress_deadline`; `NotReady` otherwise.
pub fn deployment_health(
    deployment: &Deployment,
    ready_threshold_percent: i32,
    progress_deadline: Duration,
    now: DateTime<Utc>,
) -> WorkloadHealth {
    if let Some(progressing) = condition(deployment, "Progressing")
        && progressing.reason.as_deref() == Some(PROGRESS_DEADLINE_EXCEEDED)
    {
        return WorkloadHealth::DeadlineExceeded {
            reason: format!(
                "Deployment {} exceeded its progress deadline: {}",
                name(deployment),
                progressing.message.as_deref().unwrap_or("no message")
            ),
        };
    }
    let Some(gap) = readiness_gap(deployment, ready_threshold_percent) else {
        return WorkloadHealth::Ready;
    };
    let observed = deployment.status.as_ref().and_then(|s| s.observed_generation).unwrap_or(0);
    // Conditions of a generation the controller has not seen yet describe the old spec.
    let conditions_current = observed >= deployment.metadata.generation.unwrap_or(0);
    let deadline = TimeDelta::from_std(progress_deadline).unwrap_or(TimeDelta::MAX);
    match not_ready_since(deployment) {
        Some(since) if conditions_current && now.signed_duration_since(since) > deadline => {
            WorkloadHealth::DeadlineExceeded {
                reason: format!("{gap}, not ready for more than {}s", progress_deadline.as_secs()),
            }
        }
        _ => WorkloadHealth::NotReady { reason: gap },
    }
}

/// Whether the primary runs `revision` (the revision petrel promoted) and its rollout
/// finished: observed, every replica updated, no old replica left, all available.
pub fn primary_runs_revision(primary: &Deployment, revision: &str) -> bool {
    if !primary_template_is_revision(primary, revision) {
        return false;
    }
    let status = primary.status.clone().unwrap_or_default();
    let desired = primary.spec.as_ref().and_then(|spec| spec.replicas).unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    status.observed_generation.unwrap_or(0) >= primary.metadata.generation.unwrap_or(0)
        && updated >= desired
        && status.replicas.unwrap_or(0) <= updated
        && status.available_replicas.unwrap_or(0) >= updated
}

/// Whether the primary's pod template is this stored revision, finished rolling out or not.
pub fn primary_template_is_revision(primary: &Deployment, revision: &str) -> bool {
    primary
        .spec
        .as_ref()
        .and_then(|spec| spec.template.metadata.as_ref())
        .and_then(|meta| meta.annotations.as_ref())
        .and_then(|annotations| annotations.get(REVISION_ANNOTATION))
        .is_some_and(|annotated| annotated == revision)
}

/// Whether the primary runs the target's current template (with these tracked config
/// checksums) and its rollout finished.
pub fn primary_runs_template(
    primary: &Deployment,
    target: &Deployment,
    tracked_configs: &BTreeMap<String, String>,
) -> bool {
    target.spec.as_ref().is_some_and(|spec| primary_runs_revision(primary, &revision(&spec.template, tracked_configs)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::test_support::{deployment, labels};
    use k8s_openapi::api::apps::v1::DeploymentStatus;
    use k8s_openapi::jiff::Timestamp;

    const DEADLINE: Duration = Duration::from_secs(600);

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn k8s_time(seconds_before_now: i64) -> Time {
        Time(Timestamp::from_second(now().timestamp() - seconds_before_now).unwrap())
    }

    fn cond(type_: &str, status: &str, reason: &str, seconds_ago: i64) -> DeploymentCondition {
        DeploymentCondition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(format!("{type_} {reason}")),
            last_transition_time: Some(k8s_time(seconds_ago)),
            last_update_time: Some(k8s_time(seconds_ago)),
        }
    }

    /// A Deployment with `desired` replicas, generation 2, and the given status counts.
    fn dep(
        desired: i32,
        observed: i64,
        updated: i32,
        available: i32,
        conditions: Vec<DeploymentCondition>,
    ) -> Deployment {
        let mut d = deployment("podinfo", &[("app", "podinfo")], "podinfo:1");
        d.metadata.generation = Some(2);
        d.spec.as_mut().unwrap().replicas = Some(desired);
        d.status = Some(DeploymentStatus {
            observed_generation: Some(observed),
            replicas: Some(updated),
            updated_replicas: Some(updated),
            available_replicas: Some(available),
            ready_replicas: Some(available),
            conditions: Some(conditions),
            ..Default::default()
        });
        d
    }

    fn health(d: &Deployment, threshold: i32) -> WorkloadHealth {
        deployment_health(d, threshold, DEADLINE, now())
    }

    fn is_not_ready(h: &WorkloadHealth) -> bool {
        matches!(h, WorkloadHealth::NotReady { .. })
    }

    fn is_deadline(h: &WorkloadHealth) -> bool {
        matches!(h, WorkloadHealth::DeadlineExceeded { .. })
    }

    #[test]
    fn time_conversion_keeps_the_instant() {
        let time = Time(Timestamp::new(1_800_000_000, 500_000_000).unwrap());
        assert_eq!(to_chrono(&time), DateTime::from_timestamp(1_800_000_000, 500_000_000));
    }

    #[test]
    fn fully_available_is_ready() {
        let d = dep(3, 2, 3, 3, vec![cond("Available", "True", "MinimumReplicasAvailable", 100)]);
        assert_eq!(health(&d, 100), WorkloadHealth::Ready);
    }

    #[test]
    fn unobserved_generation_is_not_ready() {
        let d = dep(3, 1, 3, 3, vec![]);
        let h = health(&d, 100);
        assert!(is_not_ready(&h), "{h:?}");
        // Stale conditions of the old generation do not trip the deadline.
        let d = dep(3, 1, 3, 3, vec![cond("Available", "False", "MinimumReplicasUnavailable", 10_000)]);
        assert!(is_not_ready(&health(&d, 100)));
    }

    #[test]
    fn fewer_updated_than_desired_is_not_ready() {
        let d = dep(3, 2, 2, 3, vec![]);
        match health(&d, 100) {
            WorkloadHealth::NotReady { reason } => {
                assert!(reason.contains("2 of 3 replicas updated"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn availability_threshold_rounds_up() {
        // 50% of 3 = 1.5 → 2 required.
        assert!(is_not_ready(&health(&dep(3, 2, 3, 1, vec![]), 50)));
        assert_eq!(health(&dep(3, 2, 3, 2, vec![]), 50), WorkloadHealth::Ready);
        assert!(is_not_ready(&health(&dep(3, 2, 3, 2, vec![]), 100)));
        // A zero threshold still needs one available pod.
        assert!(is_not_ready(&health(&dep(3, 2, 3, 0, vec![]), 0)));
        assert_eq!(health(&dep(3, 2, 3, 1, vec![]), 0), WorkloadHealth::Ready);
    }

    #[test]
    fn scaled_to_zero_is_ready_only_when_zero_is_desired() {
        assert_eq!(health(&dep(0, 2, 0, 0, vec![]), 100), WorkloadHealth::Ready);
        assert!(is_not_ready(&health(&dep(2, 2, 0, 0, vec![]), 100)));
    }

    #[test]
    fn progress_deadline_exceeded_reason_wins() {
        let d = dep(3, 2, 3, 3, vec![cond("Progressing", "False", "ProgressDeadlineExceeded", 5)]);
        let h = health(&d, 100);
        assert!(is_deadline(&h), "{h:?}");
    }

    #[test]
    fn unavailable_for_longer_than_the_deadline_is_exceeded() {
        let recent = dep(3, 2, 3, 0, vec![cond("Available", "False", "MinimumReplicasUnavailable", 599)]);
        assert!(is_not_ready(&health(&recent, 100)));
        let old = dep(3, 2, 3, 0, vec![cond("Available", "False", "MinimumReplicasUnavailable", 601)]);
        assert!(is_deadline(&health(&old, 100)));
    }

    #[test]
    fn stalled_rollout_without_progress_is_exceeded() {
        let available = cond("Available", "True", "MinimumReplicasAvailable", 5000);
        let stuck = dep(3, 2, 1, 3, vec![available.clone(), cond("Progressing", "True", "ReplicaSetUpdated", 700)]);
        assert!(is_deadline(&health(&stuck, 100)));
        let moving = dep(3, 2, 1, 3, vec![available.clone(), cond("Progressing", "True", "ReplicaSetUpdated", 30)]);
        assert!(is_not_ready(&health(&moving, 100)));
        // A complete rollout's old timestamp is no evidence of being stuck.
        let complete = dep(3, 2, 2, 3, vec![available, cond("Progressing", "True", "NewReplicaSetAvailable", 9000)]);
        assert!(is_not_ready(&health(&complete, 100)));
    }

    fn primary(revision_annotation: &str, desired: i32, replicas: i32, updated: i32, available: i32) -> Deployment {
        let mut d = dep(desired, 2, updated, available, vec![]);
        d.status.as_mut().unwrap().replicas = Some(replicas);
        d.spec.as_mut().unwrap().template.metadata.as_mut().unwrap().annotations =
            Some(labels(&[(REVISION_ANNOTATION, revision_annotation)]));
        d
    }

    #[test]
    fn primary_runs_revision_needs_the_annotation_and_a_finished_rollout() {
        assert!(primary_runs_revision(&primary("r1", 3, 3, 3, 3), "r1"));
        assert!(!primary_runs_revision(&primary("r0", 3, 3, 3, 3), "r1"));
        assert!(!primary_runs_revision(&primary("r1", 3, 3, 2, 2), "r1"), "not all updated");
        assert!(!primary_runs_revision(&primary("r1", 3, 4, 3, 3), "r1"), "old pod left");
        assert!(!primary_runs_revision(&primary("r1", 3, 3, 3, 2), "r1"), "not all available");
        let mut unobserved = primary("r1", 3, 3, 3, 3);
        unobserved.metadata.generation = Some(3);
        assert!(!primary_runs_revision(&unobserved, "r1"));
        assert!(!primary_runs_revision(&dep(3, 2, 3, 3, vec![]), "r1"), "no annotation");
    }

    #[test]
    fn primary_runs_template_compares_with_the_targets_revision() {
        let target = deployment("podinfo", &[("app", "podinfo")], "podinfo:2");
        let configs = BTreeMap::from([("configmap/settings".to_string(), "abc".to_string())]);
        let current = revision(&target.spec.as_ref().unwrap().template, &configs);
        assert!(primary_runs_template(&primary(&current, 3, 3, 3, 3), &target, &configs));
        assert!(!primary_runs_template(&primary(&current, 3, 3, 3, 3), &target, &BTreeMap::new()));
    }
}
