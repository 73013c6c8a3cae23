//! A Rollout manifest goes through the fleet core end to end: parsed into a plan, a
//! decision made for a small fleet, and the status built from it is one the generated
//! CRD schema accepts (so the hub's status write cannot be rejected for its shape).

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use kube::CustomResourceExt;
use petrel::api::canary::Phase;
use petrel::api::rollout::{MemberState, RolloutPhase};
use petrel::api::{Rollout, RolloutStatus};
use petrel::fleet::identity::IdentityVerdict;
use petrel::fleet::{
    CanaryObservation, MemberObservation, RolloutPlan, build_status, decide_waves, history_for_release, validate_plan,
};
use serde_json::{Value, json};

const RELEASE: &str = "ghcr.io/stefanprodan/podinfo:6.5.0";

fn rollout() -> Rollout {
    let manifest = r#"
apiVersion: petrel.dev/v1alpha1
kind: Rollout
metadata:
  name: podinfo
  namespace: fleet
  generation: 2
spec:
  canaryRef: {namespace: test, name: podinfo}
  clusters:
    matchLabels: {env: prod}
  onFailure: RollbackAll
  waves:
    - name: canary
      clusterSelector: {matchLabels: {role: canary}}
      soak: 10m
    - name: eu
      clusterSelector:
        matchExpressions:
          - {key: region, operator: In, values: [eu-west, eu-central]}
      maxConcurrency: 50%
      maxFailures: 1
      approval: Manual
    - name: rest
      maxConcurrency: 2
      progressDeadline: 1h
"#;
    let rollout: Rollout = serde_yaml::from_str(manifest).unwrap();
    rollout.validate_cel().unwrap();
    rollout
}

fn at(minutes: i64) -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH + TimeDelta::days(20_000) + TimeDelta::minutes(minutes)
}

fn member(name: &str, labels: &[(&str, &str)]) -> MemberObservation {
    MemberObservation {
        cluster: name.into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        reachable: true,
        last_contact: Some(at(0)),
        approved_at: None,
        canary: Some(CanaryObservation {
            phase: Phase::Waiting,
            release: Some(RELEASE.into()),
            revision: Some(format!("{name}-r2")),
            promoted_revision: Some(format!("{name}-r1")),
            ..CanaryObservation::default()
        }),
        identity: IdentityVerdict::Verified,
    }
}

fn status_schema() -> Value {
    let crd = serde_json::to_value(Rollout::crd()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"].clone()
}

fn assert_schema_accepts(status: &RolloutStatus) {
    let schema = status_schema();
    let value = serde_json::to_value(status).unwrap();
    let validator = jsonschema::options().build(&schema).expect("the status schema is a valid JSON schema");
    let errors: Vec<String> = validator.iter_errors(&value).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "the CRD rejects the status the hub builds: {errors:#?}\n{value:#}");
}

#[test]
fn a_rollout_manifest_drives_decisions_and_a_status_the_crd_accepts() {
    let rollout = rollout();
    let plan = RolloutPlan::from_spec(&rollout.spec).unwrap();
    let mut members = vec![
        member("canary-1", &[("env", "prod"), ("role", "canary"), ("region", "eu-west")]),
        member("eu-west-1", &[("env", "prod"), ("region", "eu-west")]),
        member("eu-central-1", &[("env", "prod"), ("region", "eu-central")]),
        member("us-east-1", &[("env", "prod"), ("region", "us-east")]),
        member("staging-1", &[("env", "staging"), ("region", "eu-west")]),
    ];
    members[3].reachable = false;

    // `kubectl petrel plan`: which cluster falls in which wave.
    let report = validate_plan(&plan, members.iter().map(|m| (m.cluster.as_str(), &m.labels)));
    assert!(report.warnings().is_empty(), "{:?}", report.warnings());
    assert_eq!(report.members_per_wave[1].1, ["eu-central-1", "eu-west-1"]);

    let decision = decide_waves(&plan, RELEASE, &[], &members, at(0));
    assert_eq!(decision.approve.len(), 1);
    assert_eq!(decision.approve[0].cluster, "canary-1");
    let status = build_status(&plan, RELEASE, rollout.metadata.generation, &members, &decision, &[], at(0));
    assert_schema_accepts(&status);
    assert_eq!(status.members.len(), 4, "staging-1 is not selected by the Rollout");
    assert_eq!(status.observed_generation, Some(2));

    // The canary cluster promotes; after the soak the manual eu wave waits for a person.
    let history = history_for_release(Some(&status), RELEASE);
    members[0].approved_at = history.approvals.get("canary-1").copied();
    let canary = members[0].canary.as_mut().unwrap();
    canary.phase = Phase::Succeeded;
    canary.promoted_revision = canary.revision.clone();
    let decision = decide_waves(&plan, RELEASE, &history.waves, &members, at(5));
    assert_eq!(decision.phase, RolloutPhase::Soaking, "the soak runs from when the hub saw the wave succeed");
    let status = build_status(&plan, RELEASE, Some(2), &members, &decision, &status.conditions, at(5));
    assert_schema_accepts(&status);
    let decision = decide_waves(&plan, RELEASE, &status.waves, &members, at(15));
    assert_eq!(decision.phase, RolloutPhase::WaitingApproval);
    let status = build_status(&plan, RELEASE, Some(2), &members, &decision, &status.conditions, at(15));
    assert_schema_accepts(&status);
    assert_eq!(status.current_wave.as_deref(), Some("eu"));

    // A person approves the eu wave for this release; half of it is approved at once.
    let mut waves = status.waves.clone();
    waves[1].approved_at = Some(at(16));
    waves[1].approved_release = Some(RELEASE.into());
    let decision = decide_waves(&plan, RELEASE, &waves, &members, at(16));
    let approved: Vec<&str> = decision.approve.iter().map(|a| a.cluster.as_str()).collect();
    assert_eq!(approved, ["eu-central-1"]);
    let status = build_status(&plan, RELEASE, Some(2), &members, &decision, &status.conditions, at(16));
    assert_schema_accepts(&status);
    let us = status.members.iter().find(|m| m.cluster == "us-east-1").unwrap();
    assert_eq!(us.state, MemberState::Unreachable);

    // The status round-trips through JSON as the API server stores it.
    let stored: RolloutStatus = serde_json::from_value(json!(serde_json::to_value(&status).unwrap())).unwrap();
    assert_eq!(stored, status);
}
