//! What a Canary claims in its namespace, and who else holds it (issue 11, defect 3).
//!
//! A Canary drives its target Deployment, creates `<target>-primary`, the Services
//! `<svc>`, `<svc>-primary`, `<svc>-canary` (and route objects named after them) and, for
//! NGINX, a clone of its Ingress. Two Canaries that claim any of the same objects would
//! fight over them silently, and a Canary whose target is an object petrel generates (say
//! another Canary's `-primary`) would scale it to zero under that Canary's route. So:
//!
//! - a target petrel manages (owned by a Canary, or carrying petrel's labels) is refused;
//! - of two Canaries with overlapping claims, the older one (by creationTimestamp, then
//!   name) goes on and the younger one is refused, naming the older;
//! - an existing `<target>-primary` that belongs to another live Canary, or that petrel
//!   did not create, is never taken over.
//!
//! A refused Canary is Stalled with an Event before anything is written for it. Every
//! function here is pure; the reconciler hands in what it read.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::Deployment;
use kube::{Resource, ResourceExt};

use crate::api::Canary;
use crate::routers::ServiceNames;
use crate::workloads::{CANARY_LABEL, MANAGED_BY_LABEL, REVISION_ANNOTATION, primary_name};

/// Stall reason: the target is an object petrel generates.
pub const TARGET_MANAGED: &str = "TargetManagedByPetrel";
/// Stall reason: an older Canary claims the same target, Services or Ingress.
pub const CLAIM_CONFLICT: &str = "ClaimedByAnotherCanary";
/// Stall reason: `<target>-primary` exists and is not this Canary's to take.
pub const PRIMARY_TAKEN: &str = "PrimaryNameTaken";

/// A refusal: the Stalled reason and a message a person can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

/// The names of the objects a Canary drives or creates, by kind.
pub fn claims_of(canary: &Canary) -> BTreeSet<String> {
    let target = &canary.spec.target_ref.name;
    if canary.spec.target_ref.is_knative_service() {
        // Petrel writes only the Knative Service's traffic block: no primary, no Services.
        return BTreeSet::from([format!("Knative Service {target}")]);
    }
    let services = ServiceNames::of(canary);
    let kind = if canary.spec.target_ref.is_daemon_set() { "DaemonSet" } else { "Deployment" };
    let mut claims = BTreeSet::from([
        format!("{kind} {target}"),
        format!("{kind} {}", primary_name(target)),
        format!("Service {}", services.apex),
        format!("Service {}", services.primary),
        format!("Service {}", services.canary),
    ]);
    if let Some(ingress) = &canary.spec.ingress_ref {
        claims.insert(format!("Ingress {}", ingress.name));
    }
    claims
}

/// The order in which Canaries got their claims: older first, by creationTimestamp, then
/// name (creation times have a resolution of one second).
fn seniority(canary: &Canary) -> (Option<k8s_openapi::jiff::Timestamp>, String) {
    (canary.creation_timestamp().map(|t| t.0), canary.name_any())
}

/// Whether `a` holds its claims before `b`. A Canary without a creation time (not read
/// from the API server) comes last.
fn is_older(a: &Canary, b: &Canary) -> bool {
    match (seniority(a), seniority(b)) {
        ((Some(ta), na), (Some(tb), nb)) => (ta, na) < (tb, nb),
        ((Some(_), _), (None, _)) => true,
        ((None, _), (Some(_), _)) => false,
        ((None, na), (None, nb)) => na < nb,
    }
}

fn key(canary: &Canary) -> String {
    format!("{}/{}", canary.namespace().unwrap_or_default(), canary.name_any())
}

/// The oldest Canary of the same namespace that claims something `canary` claims and is
/// older than it, as a refusal; `None` when `canary` holds all its claims. `neighbours`
/// may include `canary` itself (it is skipped).
pub fn conflict<'a>(canary: &Canary, neighbours: impl IntoIterator<Item = &'a Canary>) -> Option<Refusal> {
    let mine = claims_of(canary);
    let elder = neighbours
        .into_iter()
        .filter(|other| other.namespace() == canary.namespace() && other.name_any() != canary.name_any())
        .filter(|other| is_older(other, canary))
        .filter_map(|other| {
            let shared: Vec<String> = claims_of(other).intersection(&mine).cloned().collect();
            (!shared.is_empty()).then_some((other, shared))
        })
        .min_by(|(a, _), (b, _)| seniority(a).cmp(&seniority(b)))?;
    let (other, shared) = elder;
    Some(Refusal {
        reason: CLAIM_CONFLICT,
        message: format!(
            "Canary {} (older) already claims {}; petrel releases each Deployment, and owns each generated Service and Ingress, for one Canary only: delete this Canary or point it at another target and service.name",
            key(other),
            shared.join(", ")
        ),
    })
}

/// The Canary that owns a Deployment through an owner reference, as `(name, uid)`.
fn canary_owner(deployment: &Deployment) -> Option<(String, String)> {
    deployment
        .owner_references()
        .iter()
        .find(|owner| owner.kind == Canary::kind(&()) && owner.api_version == Canary::api_version(&()))
        .map(|owner| (owner.name.clone(), owner.uid.clone()))
}

fn carries_petrel_marks(deployment: &Deployment) -> bool {
    let labels = deployment.labels();
    let template_annotations =
        deployment.spec.as_ref().and_then(|spec| spec.template.metadata.as_ref()).and_then(|m| m.annotations.as_ref());
    labels.get(MANAGED_BY_LABEL).is_some_and(|v| v == crate::FIELD_MANAGER)
        || labels.contains_key(CANARY_LABEL)
        || template_annotations.is_some_and(|a| a.contains_key(REVISION_ANNOTATION))
}

/// A target that petrel generates (another Canary's primary, say) is never released:
/// scaling it to zero would take that Canary's traffic down.
pub fn managed_target(canary: &Canary, target: &Deployment) -> Option<Refusal> {
    let name = target.name_any();
    let by = match canary_owner(target) {
        Some((owner, _)) => format!("it belongs to Canary {}/{owner}", canary.namespace().unwrap_or_default()),
        None if carries_petrel_marks(target) => match target.labels().get(CANARY_LABEL) {
            Some(owner) => format!("it carries petrel's labels (petrel.dev/canary={owner})"),
            None => "it carries petrel's labels".to_string(),
        },
        None => return None,
    };
    Some(Refusal {
        reason: TARGET_MANAGED,
        message: format!(
            "Deployment {name} is generated by petrel ({by}); a Canary releases the Deployment a person owns, never one petrel generates: point targetRef at that Canary's own target instead"
        ),
    })
}

/// An existing `<target>-primary` is this Canary's when it owns it, or when no live
/// Canary does and petrel created it (a primary left behind by a deleted Canary is
/// adopted). `live_uids` are the uids of the namespace's Canaries.
pub fn taken_primary(canary: &Canary, primary: &Deployment, live_uids: &BTreeSet<String>) -> Option<Refusal> {
    let name = primary.name_any();
    let holder = match canary_owner(primary) {
        Some((_, uid)) if canary.uid().as_deref() == Some(uid.as_str()) => return None,
        Some((owner, uid)) if live_uids.contains(&uid) => format!("it belongs to Canary {owner}"),
        _ if carries_petrel_marks(primary) => return None,
        _ => "it was not created by petrel".to_string(),
    };
    Some(Refusal {
        reason: PRIMARY_TAKEN,
        message: format!(
            "Deployment {name} already exists and {holder}; petrel creates {name} as the primary of Deployment {} and never takes over one it does not own: rename or remove it",
            canary.spec.target_ref.name
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
    use serde_json::json;

    fn canary(name: &str, target: &str, created_secs: i64) -> Canary {
        let mut canary: Canary = serde_json::from_value(json!({
            "apiVersion": "petrel.dev/v1alpha1",
            "kind": "Canary",
            "metadata": {"name": name, "namespace": "apps", "uid": format!("uid-{name}")},
            "spec": {
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
                "service": {"port": 9898}
            }
        }))
        .unwrap();
        let created = k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + created_secs).unwrap();
        canary.metadata.creation_timestamp = Some(Time(created));
        canary
    }

    fn owned_by(name: &str, owner: &Canary) -> Deployment {
        let mut d = crate::workloads::test_support::deployment(name, &[("app", name)], "i");
        d.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "petrel.dev/v1alpha1".into(),
            kind: "Canary".into(),
            name: owner.name_any(),
            uid: owner.uid().unwrap(),
            ..Default::default()
        }]);
        d
    }

    #[test]
    fn the_older_of_two_canaries_on_one_target_wins_and_the_younger_names_it() {
        let first = canary("podinfo", "podinfo", 0);
        let second = canary("another", "podinfo", 5);
        let all = [first.clone(), second.clone()];
        assert_eq!(conflict(&first, &all), None, "the older one goes on");
        let refusal = conflict(&second, &all).expect("the younger one is refused");
        assert_eq!(refusal.reason, CLAIM_CONFLICT);
        assert!(refusal.message.contains("Canary apps/podinfo (older)"), "{}", refusal.message);
        assert!(refusal.message.contains("Deployment podinfo"), "{}", refusal.message);
    }

    #[test]
    fn creation_in_the_same_second_is_decided_by_name_and_the_order_of_the_list_does_not_matter() {
        let b = canary("b", "podinfo", 0);
        let a = canary("a", "podinfo", 0);
        for all in [vec![a.clone(), b.clone()], vec![b.clone(), a.clone()]] {
            assert_eq!(conflict(&a, &all), None);
            assert!(conflict(&b, &all).is_some_and(|r| r.message.contains("apps/a")));
        }
    }

    #[test]
    fn a_shared_service_name_or_ingress_is_a_conflict_too() {
        let first = canary("podinfo", "podinfo", 0);
        let mut same_service = canary("api", "api", 1);
        same_service.spec.service.name = Some("podinfo-canary".into());
        let refusal = conflict(&same_service, [&first]).expect("its apex Service is the other's canary Service");
        assert!(refusal.message.contains("Service podinfo-canary"), "{}", refusal.message);

        let mut with_ingress = canary("web", "web", 0);
        with_ingress.spec.ingress_ref =
            Some(crate::api::common::ObjectRef { name: "public".into(), ..Default::default() });
        let mut other_ingress = canary("shop", "shop", 1);
        other_ingress.spec.ingress_ref = with_ingress.spec.ingress_ref.clone();
        assert!(conflict(&other_ingress, [&with_ingress]).is_some_and(|r| r.message.contains("Ingress public")));
        // Different namespaces never conflict.
        let mut elsewhere = canary("podinfo2", "podinfo", 1);
        elsewhere.metadata.namespace = Some("other".into());
        assert_eq!(conflict(&elsewhere, [&first]), None);
    }

    #[test]
    fn a_knative_service_is_claimed_by_kind_and_claims_no_primary_or_services() {
        let knative = |name: &str, created_secs| {
            let mut c = canary(name, "podinfo", created_secs);
            c.spec.target_ref.api_version = "serving.knative.dev/v1".into();
            c.spec.target_ref.kind = "Service".into();
            c
        };
        let first = knative("podinfo", 0);
        assert_eq!(claims_of(&first), BTreeSet::from(["Knative Service podinfo".to_string()]));
        // Two Canaries on one Knative Service conflict; a Deployment of the same name does not.
        let refusal = conflict(&knative("again", 1), [&first]).expect("same Knative Service");
        assert!(refusal.message.contains("Knative Service podinfo"), "{}", refusal.message);
        assert_eq!(conflict(&canary("deployment", "podinfo", 1), [&first]), None);
    }

    #[test]
    fn a_daemon_set_canary_claims_daemon_sets() {
        let mut ds = canary("ds", "podinfo", 0);
        ds.spec.target_ref.kind = "DaemonSet".into();
        let claims = claims_of(&ds);
        assert!(claims.contains("DaemonSet podinfo") && claims.contains("DaemonSet podinfo-primary"), "{claims:?}");
        assert!(!claims.iter().any(|c| c.starts_with("Deployment")), "{claims:?}");
        // A Deployment Canary of the same name shares the Services, so it conflicts.
        let older = canary("older", "podinfo", -10);
        assert!(conflict(&ds, [&older]).is_some());
    }

    #[test]
    fn targeting_another_canarys_primary_is_refused_whatever_the_age() {
        let owner = canary("podinfo", "podinfo", 10);
        let primary = owned_by("podinfo-primary", &owner);
        let attacker = canary("attacker", "podinfo-primary", 0);
        let refusal = managed_target(&attacker, &primary).expect("a generated Deployment is no target");
        assert_eq!(refusal.reason, TARGET_MANAGED);
        assert!(refusal.message.contains("belongs to Canary apps/podinfo"), "{}", refusal.message);
        // And by claims: the attacker's target is the owner's primary.
        assert!(conflict(&owner, [&attacker]).is_some(), "the older attacker also holds the name");

        // Without an owner reference (orphaned), petrel's labels are enough.
        let mut orphan = crate::workloads::test_support::deployment("podinfo-primary", &[("app", "p")], "i");
        orphan.metadata.labels = Some(crate::workloads::test_support::labels(&[(CANARY_LABEL, "podinfo")]));
        assert!(managed_target(&attacker, &orphan).is_some());
        // A user's Deployment is a fine target.
        let users = crate::workloads::test_support::deployment("podinfo", &[("app", "podinfo")], "i");
        assert_eq!(managed_target(&owner, &users), None);
    }

    #[test]
    fn a_primary_is_taken_over_only_when_it_is_ours_or_left_behind_by_petrel() {
        let me = canary("podinfo", "podinfo", 0);
        let other = canary("other", "podinfo", 0);
        let live: BTreeSet<String> = [me.uid().unwrap(), other.uid().unwrap()].into();
        assert_eq!(taken_primary(&me, &owned_by("podinfo-primary", &me), &live), None);
        let theirs = taken_primary(&me, &owned_by("podinfo-primary", &other), &live).expect("another live owner");
        assert!(theirs.message.contains("belongs to Canary other"), "{}", theirs.message);
        // Its owner is gone: petrel's leftover is adopted.
        let gone: BTreeSet<String> = [me.uid().unwrap()].into();
        let mut leftover = owned_by("podinfo-primary", &other);
        leftover.metadata.labels =
            Some(crate::workloads::test_support::labels(&[(MANAGED_BY_LABEL, "petrel"), (CANARY_LABEL, "other")]));
        assert_eq!(taken_primary(&me, &leftover, &gone), None);
        // A Deployment a person made under that name is never touched.
        let users = crate::workloads::test_support::deployment("podinfo-primary", &[("app", "x")], "i");
        let refusal = taken_primary(&me, &users, &live).expect("not petrel's");
        assert_eq!(refusal.reason, PRIMARY_TAKEN);
        assert!(refusal.message.contains("was not created by petrel"), "{}", refusal.message);
    }
}
