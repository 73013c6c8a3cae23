//! What a Canary claims in its namespace, and who else holds it (issue 11, defect 3).
//!
//! A Canary drives its target Deployment, creates `<target>-primary`, the Services
//! `<svc>`, `<svc>-primary`, `<svc>-canary` (and route objects named after them) and, for
//! NGINX, a clone of its Ingress. Two Canaries that claim any of the same objects would
//! fight over them silently, and a Canary whose target is an object petrel generates (say
//! another Canary's `-primary`) would scale it to zero under that Canary's route. So:
//!
//! - a target petrel manages (owned by a Canary, or carrying petrel's labels) is refused;
//! - of two Canaries with overlapping claims, the one already in place goes on (it owns
//!   the contested primary, or petrel initialised it), else the older one (by
//!   creationTimestamp, then name); the other is refused, naming it. Age alone is not
//!   enough: creation times have a resolution of one second, and a Canary created in the
//!   same second as one that already serves traffic must not stop it because its name
//!   sorts first;
//! - an existing `<target>-primary` that belongs to another live Canary, or that petrel
//!   did not create, is never taken over.
//!
//! A refused Canary is Stalled with an Event before anything is written for it. Every
//! function here is pure; the reconciler hands in what it read.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::Deployment;
use kube::{Resource, ResourceExt};

use crate::api::Canary;
use crate::routers::{CANARY_SUFFIX, ServiceNames};
use crate::workloads::{CANARY_LABEL, MANAGED_BY_LABEL, PRIMARY_SUFFIX, REVISION_ANNOTATION};

/// Stall reason: the target is an object petrel generates.
pub const TARGET_MANAGED: &str = "TargetManagedByPetrel";
/// Stall reason: an older Canary claims the same target, Services or Ingress.
pub const CLAIM_CONFLICT: &str = "ClaimedByAnotherCanary";
/// Stall reason: `<target>-primary` exists and is not this Canary's to take.
pub const PRIMARY_TAKEN: &str = "PrimaryNameTaken";

const DEPLOYMENT: &str = "Deployment";

/// A refusal: the Stalled reason and a message a person can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

/// One object a Canary drives or creates: its kind, and its name as a stem (a name the
/// Canary's spec gives) plus the suffix petrel appends ("" for the stem itself). Claims
/// compare without building either name: the conflict check runs on every reconcile,
/// against the neighbours [`super::claim_index`] names (every Canary of the namespace
/// when a reconcile runs outside the controller), and allocates nothing per neighbour.
#[derive(Clone, Copy, Debug)]
struct Claim<'a> {
    kind: &'static str,
    stem: &'a str,
    suffix: &'static str,
}

impl Claim<'_> {
    fn is_same_object(&self, other: &Claim<'_>) -> bool {
        self.kind == other.kind
            && self.stem.len() + self.suffix.len() == other.stem.len() + other.suffix.len()
            && self.stem.bytes().chain(self.suffix.bytes()).eq(other.stem.bytes().chain(other.suffix.bytes()))
    }

    fn describe(&self) -> String {
        format!("{} {}{}", self.kind, self.stem, self.suffix)
    }
}

/// The objects a Canary claims (see [`claims_of`]), borrowed from its spec.
fn claims(canary: &Canary) -> impl Iterator<Item = Claim<'_>> {
    let target = canary.spec.target_ref.name.as_str();
    let claim = |kind, stem, suffix| Some(Claim { kind, stem, suffix });
    let list = if canary.spec.target_ref.is_knative_service() {
        // Petrel writes only the Knative Service's traffic block: no primary, no Services.
        [claim("Knative Service", target, ""), None, None, None, None, None]
    } else {
        let kind = if canary.spec.target_ref.is_daemon_set() { "DaemonSet" } else { DEPLOYMENT };
        let apex = ServiceNames::apex_of(canary);
        [
            claim(kind, target, ""),
            claim(kind, target, PRIMARY_SUFFIX),
            claim("Service", apex, ""),
            claim("Service", apex, PRIMARY_SUFFIX),
            claim("Service", apex, CANARY_SUFFIX),
            canary.spec.ingress_ref.as_ref().and_then(|ingress| claim("Ingress", &ingress.name, "")),
        ]
    };
    list.into_iter().flatten()
}

/// The names of the objects a Canary drives or creates, by kind.
pub fn claims_of(canary: &Canary) -> BTreeSet<String> {
    claims(canary).map(|claim| claim.describe()).collect()
}

fn name_of(canary: &Canary) -> &str {
    canary.metadata.name.as_deref().unwrap_or_default()
}

/// The order in which Canaries hold their claims, most senior (smallest) first: the
/// fields compare in their order, `false` before `true`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Seniority<'a> {
    /// Not the owner of a Deployment both Canaries claim (from its owner reference: the
    /// Canary that created the contested primary, even before its status says so, or
    /// after its spec was edited onto another's target).
    not_owner: bool,
    /// Not initialised by petrel (its status records no revision its primary runs).
    not_initialised: bool,
    /// No creationTimestamp (not read from the API server): after those with one.
    not_created: bool,
    created: Option<k8s_openapi::jiff::Timestamp>,
    /// Last: creation times have a resolution of one second.
    name: &'a str,
}

fn seniority(canary: &Canary, owns_shared: bool) -> Seniority<'_> {
    let created = canary.metadata.creation_timestamp.as_ref().map(|t| t.0);
    Seniority {
        not_owner: !owns_shared,
        not_initialised: canary.status.as_ref().is_none_or(|status| status.last_promoted_spec.is_none()),
        not_created: created.is_none(),
        created,
        name: name_of(canary),
    }
}

/// Why `elder` goes before `younger`: the first field of [`Seniority`] that differs.
fn precedence(elder: &Seniority<'_>, younger: &Seniority<'_>) -> &'static str {
    if elder.not_owner != younger.not_owner {
        "already in place: it owns a Deployment both claim"
    } else if elder.not_initialised != younger.not_initialised {
        "already in place"
    } else if (elder.not_created, elder.created) != (younger.not_created, younger.created) {
        "older"
    } else {
        "created in the same second, first by name"
    }
}

fn key(canary: &Canary) -> String {
    format!("{}/{}", canary.metadata.namespace.as_deref().unwrap_or_default(), name_of(canary))
}

/// The senior Canary of the same namespace that claims something `canary` claims, as a
/// refusal; `None` when `canary` holds all its claims. `neighbours` may include `canary`
/// itself (it is skipped). `read` holds the Deployments read for `canary` (its target
/// and its `-primary`, those that exist): of two Canaries that both claim one of them,
/// the one its owner reference names is in place. Both Canaries of a pair read the
/// Deployments they share, so each decides alike whichever of them asks.
pub fn conflict<'a>(
    canary: &Canary,
    neighbours: impl IntoIterator<Item = &'a Canary>,
    read: &[&Deployment],
) -> Option<Refusal> {
    let mine: Vec<Claim<'_>> = claims(canary).collect();
    let owned: Vec<(&Claim<'_>, String)> = read
        .iter()
        .filter_map(|deployment| {
            let (_, owner) = canary_owner(deployment)?;
            let name = deployment.metadata.name.as_deref()?;
            let claim =
                mine.iter().find(|claim| claim.is_same_object(&Claim { kind: DEPLOYMENT, stem: name, suffix: "" }))?;
            Some((claim, owner))
        })
        .collect();
    let shares_a_claim = |other: &Canary| claims(other).any(|theirs| mine.iter().any(|m| m.is_same_object(&theirs)));
    let elder = neighbours
        .into_iter()
        .filter(|other| other.metadata.namespace == canary.metadata.namespace && name_of(other) != name_of(canary))
        .filter_map(|other| {
            let owns_shared = |owner: &Canary| {
                owned.iter().any(|(claim, uid)| {
                    owner.metadata.uid.as_deref() == Some(uid.as_str())
                        && claims(other).any(|theirs| theirs.is_same_object(claim))
                })
            };
            let theirs = seniority(other, owns_shared(other));
            let my_seniority = seniority(canary, owns_shared(canary));
            (theirs < my_seniority && shares_a_claim(other)).then_some((theirs, my_seniority, other))
        })
        .min_by(|(a, ..), (b, ..)| a.cmp(b));
    let (elder_seniority, my_seniority, elder) = elder?;
    let shared: Vec<String> = claims_of(elder).intersection(&claims_of(canary)).cloned().collect();
    Some(Refusal {
        reason: CLAIM_CONFLICT,
        message: format!(
            "Canary {} ({}) already claims {}; petrel releases each Deployment, and owns each generated Service and Ingress, for one Canary only: delete this Canary or point it at another target and service.name",
            key(elder),
            precedence(&elder_seniority, &my_seniority),
            shared.join(", ")
        ),
    })
}

/// The Canary that owns a Deployment through an owner reference, as `(name, uid)`.
pub fn canary_owner(deployment: &Deployment) -> Option<(String, String)> {
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
/// adopted). `is_live` says whether a uid is one of the namespace's Canaries.
pub fn taken_primary(canary: &Canary, primary: &Deployment, is_live: impl Fn(&str) -> bool) -> Option<Refusal> {
    let name = primary.name_any();
    let holder = match canary_owner(primary) {
        Some((_, uid)) if canary.uid().as_deref() == Some(uid.as_str()) => return None,
        Some((owner, uid)) if is_live(&uid) => format!("it belongs to Canary {owner}"),
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
        assert_eq!(conflict(&first, &all, &[]), None, "the older one goes on");
        let refusal = conflict(&second, &all, &[]).expect("the younger one is refused");
        assert_eq!(refusal.reason, CLAIM_CONFLICT);
        assert!(refusal.message.contains("Canary apps/podinfo (older)"), "{}", refusal.message);
        assert!(refusal.message.contains("Deployment podinfo"), "{}", refusal.message);
    }

    #[test]
    fn creation_in_the_same_second_is_decided_by_name_and_the_order_of_the_list_does_not_matter() {
        let b = canary("b", "podinfo", 0);
        let a = canary("a", "podinfo", 0);
        for all in [vec![a.clone(), b.clone()], vec![b.clone(), a.clone()]] {
            assert_eq!(conflict(&a, &all, &[]), None);
            assert!(conflict(&b, &all, &[]).is_some_and(|r| r.message.contains("apps/a")));
        }
    }

    #[test]
    fn a_shared_service_name_or_ingress_is_a_conflict_too() {
        let first = canary("podinfo", "podinfo", 0);
        let mut same_service = canary("api", "api", 1);
        same_service.spec.service.name = Some("podinfo-canary".into());
        let refusal = conflict(&same_service, [&first], &[]).expect("its apex Service is the other's canary Service");
        assert!(refusal.message.contains("Service podinfo-canary"), "{}", refusal.message);

        let mut with_ingress = canary("web", "web", 0);
        with_ingress.spec.ingress_ref =
            Some(crate::api::common::ObjectRef { name: "public".into(), ..Default::default() });
        let mut other_ingress = canary("shop", "shop", 1);
        other_ingress.spec.ingress_ref = with_ingress.spec.ingress_ref.clone();
        assert!(conflict(&other_ingress, [&with_ingress], &[]).is_some_and(|r| r.message.contains("Ingress public")));
        // Different namespaces never conflict.
        let mut elsewhere = canary("podinfo2", "podinfo", 1);
        elsewhere.metadata.namespace = Some("other".into());
        assert_eq!(conflict(&elsewhere, [&first], &[]), None);
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
        let refusal = conflict(&knative("again", 1), [&first], &[]).expect("same Knative Service");
        assert!(refusal.message.contains("Knative Service podinfo"), "{}", refusal.message);
        assert_eq!(conflict(&canary("deployment", "podinfo", 1), [&first], &[]), None);
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
        assert!(conflict(&ds, [&older], &[]).is_some());
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
        assert!(conflict(&owner, [&attacker], &[]).is_some(), "the older attacker also holds the name");

        // Without an owner reference (orphaned), petrel's labels are enough.
        let mut orphan = crate::workloads::test_support::deployment("podinfo-primary", &[("app", "p")], "i");
        orphan.metadata.labels = Some(crate::workloads::test_support::labels(&[(CANARY_LABEL, "podinfo")]));
        assert!(managed_target(&attacker, &orphan).is_some());
        // A user's Deployment is a fine target.
        let users = crate::workloads::test_support::deployment("podinfo", &[("app", "podinfo")], "i");
        assert_eq!(managed_target(&owner, &users), None);
    }

    fn initialised(mut canary: Canary) -> Canary {
        canary.status =
            Some(crate::api::canary::CanaryStatus { last_promoted_spec: Some("rev-1".into()), ..Default::default() });
        canary
    }

    /// The CI failure of stop 27: the hostile suite created `attacker` (target
    /// `podinfo-primary`) in the same second as the healthy `podinfo`, which was already
    /// initialised; `attacker` sorts first, so the healthy Canary was refused mid-release.
    #[test]
    fn a_canary_in_place_is_not_stopped_by_one_created_in_the_same_second_whose_name_sorts_first() {
        let podinfo = canary("podinfo", "podinfo", 0);
        let attacker = canary("attacker", "podinfo-primary", 0);
        let primary = owned_by("podinfo-primary", &podinfo);
        // Initialised: in place by its status, with or without its primary read.
        let initialised = initialised(podinfo.clone());
        assert_eq!(conflict(&initialised, [&attacker], &[]), None);
        assert_eq!(conflict(&initialised, [&attacker], &[&primary]), None);
        // Between creating its primary and writing its status: in place by the owner reference.
        assert_eq!(conflict(&podinfo, [&attacker], &[&primary]), None);
        // The newcomer is the one refused, and the message says why; reading its target
        // (podinfo's primary) it finds podinfo in place even before podinfo's status says so.
        let refusal = conflict(&attacker, [&initialised], &[]).expect("attacker is refused");
        assert!(refusal.message.contains("Canary apps/podinfo (already in place)"), "{}", refusal.message);
        assert!(conflict(&attacker, [&podinfo], &[&primary]).is_some());
        // Neither in place: the same second is decided by name, and said so.
        let refusal = conflict(&podinfo, [&attacker], &[]).expect("by name");
        assert!(refusal.message.contains("(created in the same second, first by name)"), "{}", refusal.message);
    }

    #[test]
    fn two_canaries_on_one_target_agree_on_the_owner_of_its_primary_whichever_asks() {
        let early = canary("a-early", "podinfo", 0);
        let late = canary("z-late", "podinfo", 0);
        // z-late created the primary first (its status not written yet): it goes on and
        // a-early, first by name, is refused; both read the same primary.
        let primary = owned_by("podinfo-primary", &late);
        assert_eq!(conflict(&late, [&early], &[&primary]), None);
        let refusal = conflict(&early, [&late], &[&primary]).expect("a-early is refused");
        assert!(refusal.message.contains("apps/z-late (already in place: it owns"), "{}", refusal.message);
    }

    #[test]
    fn a_canary_edited_onto_another_ones_target_does_not_stop_the_owner_of_its_primary() {
        // Both initialised; the older one's targetRef was edited to the younger one's target.
        let owner = initialised(canary("podinfo", "podinfo", 10));
        let edited = initialised(canary("older", "podinfo", 0));
        let primary = owned_by("podinfo-primary", &owner);
        let target = crate::workloads::test_support::deployment("podinfo", &[("app", "podinfo")], "i");
        let read = [&target, &primary];
        assert_eq!(conflict(&owner, [&edited], &read), None);
        let refusal = conflict(&edited, [&owner], &read).expect("the edited one is refused");
        assert!(refusal.message.contains("apps/podinfo (already in place: it owns"), "{}", refusal.message);
    }

    #[test]
    fn two_canaries_meeting_on_a_service_decide_by_status_and_age_not_by_their_own_primaries() {
        // Each owns its own primary; they share only the Service podinfo-canary.
        let first = canary("podinfo", "podinfo", 0);
        let mut second = canary("api", "api", 1);
        second.spec.service.name = Some("podinfo-canary".into());
        let first_primary = owned_by("podinfo-primary", &first);
        let second_primary = owned_by("api-primary", &second);
        assert_eq!(conflict(&first, [&second], &[&first_primary]), None);
        assert!(conflict(&second, [&first], &[&second_primary]).is_some(), "the younger is refused");
        // The younger one initialised (it was there before the older one's edit): it stays.
        let second = initialised(second);
        assert_eq!(conflict(&second, [&first], &[&second_primary]), None);
        assert!(conflict(&first, [&second], &[&first_primary]).is_some_and(|r| r.message.contains("already in place")));
    }

    #[test]
    fn a_primary_is_taken_over_only_when_it_is_ours_or_left_behind_by_petrel() {
        let me = canary("podinfo", "podinfo", 0);
        let other = canary("other", "podinfo", 0);
        let live: BTreeSet<String> = [me.uid().unwrap(), other.uid().unwrap()].into();
        assert_eq!(taken_primary(&me, &owned_by("podinfo-primary", &me), |uid| live.contains(uid)), None);
        let theirs = taken_primary(&me, &owned_by("podinfo-primary", &other), |uid| live.contains(uid))
            .expect("another live owner");
        assert!(theirs.message.contains("belongs to Canary other"), "{}", theirs.message);
        // Its owner is gone: petrel's leftover is adopted.
        let gone: BTreeSet<String> = [me.uid().unwrap()].into();
        let mut leftover = owned_by("podinfo-primary", &other);
        leftover.metadata.labels =
            Some(crate::workloads::test_support::labels(&[(MANAGED_BY_LABEL, "petrel"), (CANARY_LABEL, "other")]));
        assert_eq!(taken_primary(&me, &leftover, |uid| gone.contains(uid)), None);
        // A Deployment a person made under that name is never touched.
        let users = crate::workloads::test_support::deployment("podinfo-primary", &[("app", "x")], "i");
        let refusal = taken_primary(&me, &users, |uid| live.contains(uid)).expect("not petrel's");
        assert_eq!(refusal.reason, PRIMARY_TAKEN);
        assert!(refusal.message.contains("was not created by petrel"), "{}", refusal.message);
    }

    mod property {
        use super::*;
        use proptest::prelude::*;

        /// Names drawn from a few stems, so that generated names (`-primary`, `-canary`)
        /// collide with given ones as often as given ones collide with each other.
        fn a_name() -> impl Strategy<Value = String> {
            prop::sample::select(vec!["a", "b", "a-primary", "a-canary", "b-primary", "a-primary-canary"])
                .prop_map(str::to_string)
        }

        fn a_canary() -> impl Strategy<Value = Canary> {
            (
                prop::sample::select(vec!["c1", "c2", "c3", "c4"]),
                a_name(),
                prop::option::of(prop_oneof![Just(String::new()), a_name()]),
                prop::option::of(prop::sample::select(vec!["x", "y"])),
                0..3u8,
                prop::option::of(0..3i64),
                prop::sample::select(vec!["apps", "other"]),
            )
                .prop_map(|(name, target, service, ingress, kind, created, namespace)| {
                    let mut c = canary(name, &target, created.unwrap_or_default());
                    if created.is_none() {
                        c.metadata.creation_timestamp = None;
                    }
                    c.metadata.namespace = Some(namespace.into());
                    c.spec.service.name = service;
                    c.spec.ingress_ref =
                        ingress.map(|name| crate::api::common::ObjectRef { name: name.into(), ..Default::default() });
                    match kind {
                        1 => c.spec.target_ref.kind = "DaemonSet".into(),
                        2 => {
                            c.spec.target_ref.api_version = "serving.knative.dev/v1".into();
                            c.spec.target_ref.kind = "Service".into();
                        }
                        _ => {}
                    }
                    c
                })
        }

        fn an_owner() -> impl Strategy<Value = Option<&'static str>> {
            prop::option::of(prop::sample::select(vec!["c1", "c2", "c3", "c4", "gone"]))
        }

        proptest! {
            // Most draws are pairs whose claims do not meet (returned at once): hence the cases.
            #![proptest_config(ProptestConfig::with_cases(2048))]

            /// Of two Canaries of one namespace whose claims meet, exactly one goes on,
            /// whichever reconciles: each reads its target and its `-primary` (a person's
            /// Deployment, one owned by either of them or by a deleted Canary, or absent;
            /// two reading one name read one object), and either may be initialised.
            /// Never both refused (a deadlock), never both going on (a fight).
            #[test]
            fn of_two_canaries_whose_claims_meet_exactly_one_goes_on(
                a in a_canary(),
                b in a_canary(),
                owners in prop::collection::btree_map(a_name(), an_owner(), 0..6),
                a_initialised: bool,
                b_initialised: bool,
            ) {
                let mut b = b;
                b.metadata.namespace = a.metadata.namespace.clone();
                if a.name_any() == b.name_any() || claims_of(&a).is_disjoint(&claims_of(&b)) {
                    return Ok(());
                }
                let a = if a_initialised { initialised(a) } else { a };
                let b = if b_initialised { initialised(b) } else { b };
                let by_uid = |name: &str| canary(name, "x", 0);
                // What the reconciler reads for a Canary: its target and its primary.
                let read = |c: &Canary| -> Vec<Deployment> {
                    let target = &c.spec.target_ref.name;
                    [target.clone(), format!("{target}{PRIMARY_SUFFIX}")]
                        .iter()
                        .filter_map(|name| owners.get(name).map(|owner| (name, owner)))
                        .map(|(name, owner)| match owner {
                            Some(owner) => owned_by(name, &by_uid(owner)),
                            None => crate::workloads::test_support::deployment(name, &[("app", name)], "i"),
                        })
                        .collect()
                };
                let (ra, rb) = (read(&a), read(&b));
                let a_refusal = conflict(&a, [&b], &ra.iter().collect::<Vec<_>>());
                let b_refusal = conflict(&b, [&a], &rb.iter().collect::<Vec<_>>());
                let (a_refused, b_refused) = (a_refusal.is_some(), b_refusal.is_some());
                prop_assert!(a_refused != b_refused, "a: {a_refusal:?}, b: {b_refusal:?}");
                // An initialised Canary is never refused by one that is neither initialised
                // nor the owner of a Deployment they share.
                let owns_one = |c: &Canary| {
                    ra.iter().chain(&rb).any(|d| canary_owner(d).is_some_and(|(_, uid)| c.uid() == Some(uid)))
                };
                let stopped_by_a_newcomer = |me: bool, other: bool, other_owns: bool, refused: bool| me && !other && !other_owns && refused;
                prop_assert!(!stopped_by_a_newcomer(a_initialised, b_initialised, owns_one(&b), a_refused), "{a_refusal:?}");
                prop_assert!(!stopped_by_a_newcomer(b_initialised, a_initialised, owns_one(&a), b_refused), "{b_refusal:?}");
            }
        }

        proptest! {
            /// The borrowed comparison decides exactly as the intersection of the claimed
            /// names (the definition), and names the same elder and the same objects.
            #[test]
            fn conflict_is_the_oldest_neighbour_whose_claimed_names_intersect(
                me in a_canary(),
                neighbours in prop::collection::vec(a_canary(), 0..6),
            ) {
                let mine = claims_of(&me);
                let expected = neighbours
                    .iter()
                    .filter(|o| o.metadata.namespace == me.metadata.namespace && o.name_any() != me.name_any())
                    .filter(|o| seniority(o, false) < seniority(&me, false) && !claims_of(o).is_disjoint(&mine))
                    .min_by(|a, b| seniority(a, false).cmp(&seniority(b, false)));
                let got = conflict(&me, &neighbours, &[]);
                prop_assert_eq!(got.is_some(), expected.is_some());
                if let (Some(got), Some(elder)) = (got, expected) {
                    prop_assert!(got.message.contains(&format!("Canary {} (", key(elder))), "{}", got.message);
                    let shared: Vec<String> = claims_of(elder).intersection(&mine).cloned().collect();
                    prop_assert!(got.message.contains(&shared.join(", ")), "{}", got.message);
                }
            }
        }
    }
}
