//! Which Canaries claim an object, kept from the Canary watch (issue 15).
//!
//! The claims check ([`super::claims::conflict`]) compares a Canary with the others that
//! claim any of the same objects. Handing it every Canary of the namespace made a
//! release of N Canaries cost N² comparisons: a quarter of petrel's CPU at N = 300
//! (docs/benchmarks.md). This index maps each claim (and each target name, for the
//! Deployment watch's mapper) to the Canaries holding it, so a reconcile looks up only
//! the Canaries it could conflict with, then decides with the same pure function.
//!
//! The index is a superset, never a judge: it may name a Canary that no longer claims
//! the object (a hash collision, a spec edited since), and the callers re-read each
//! Canary from the cache and decide on what it claims there. It must never miss a
//! holder, so it is updated from the watch events before the cache is; a re-list is
//! gathered apart and replaces the index when it is complete, as the cache does.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use super::claims;
use crate::api::Canary;

/// A claim (or a target name) within a namespace, hashed: what the index is keyed by.
type Key = u64;

fn key(namespace: Option<&str>, what: &str) -> Key {
    let mut hasher = DefaultHasher::new();
    (namespace, what).hash(&mut hasher);
    hasher.finish()
}

/// The key of the Canaries whose `targetRef` names `name` (any kind).
fn target_key(namespace: Option<&str>, name: &str) -> Key {
    key(namespace, &format!("target {name}"))
}

/// Every key a Canary is found by: its claims and its target's name.
fn keys_of(canary: &Canary) -> Vec<Key> {
    let namespace = canary.metadata.namespace.as_deref();
    let mut keys: Vec<Key> = claims::claims_of(canary).iter().map(|claim| key(namespace, claim)).collect();
    keys.push(target_key(namespace, &canary.spec.target_ref.name));
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// A Canary's name and namespace, without the resourceVersion and uid that
/// `ObjectRef::from_obj` keeps (equality ignores them; memory does not).
fn reference_of(canary: &Canary) -> ObjectRef<Canary> {
    let reference = ObjectRef::new(canary.metadata.name.as_deref().unwrap_or_default());
    match canary.metadata.namespace.as_deref() {
        Some(namespace) => reference.within(namespace),
        None => reference,
    }
}

#[derive(Debug, Default)]
struct Entries {
    holders: HashMap<Key, Vec<Arc<ObjectRef<Canary>>>>,
    keys: HashMap<Arc<ObjectRef<Canary>>, Vec<Key>>,
}

impl Entries {
    fn insert(&mut self, canary: &Canary) {
        let reference = Arc::new(reference_of(canary));
        let keys = keys_of(canary);
        if self.keys.get(&reference) == Some(&keys) {
            return;
        }
        self.remove(&reference);
        for key in &keys {
            self.holders.entry(*key).or_default().push(reference.clone());
        }
        self.keys.insert(reference, keys);
    }

    fn remove(&mut self, reference: &ObjectRef<Canary>) {
        let Some(keys) = self.keys.remove(reference) else { return };
        for key in keys {
            if let Some(holders) = self.holders.get_mut(&key) {
                holders.retain(|holder| holder.as_ref() != reference);
                if holders.is_empty() {
                    self.holders.remove(&key);
                }
            }
        }
    }

    fn holding(&self, key: Key) -> impl Iterator<Item = &ObjectRef<Canary>> {
        self.holders.get(&key).into_iter().flatten().map(AsRef::as_ref)
    }
}

/// The index, fed by [`ClaimIndex::apply`] with every event of the Canary watch.
#[derive(Debug, Default)]
pub struct ClaimIndex {
    live: Entries,
    /// A re-list in progress: the Canaries listed so far, in place at its end.
    relisting: Option<Entries>,
}

impl ClaimIndex {
    /// Follows one event of the Canary watch (before the cache does).
    pub fn apply(&mut self, event: &watcher::Event<Canary>) {
        match event {
            watcher::Event::Apply(canary) => self.live.insert(canary),
            watcher::Event::Delete(canary) => self.live.remove(&reference_of(canary)),
            watcher::Event::Init => self.relisting = Some(Entries::default()),
            watcher::Event::InitApply(canary) => self.relisting.get_or_insert_with(Entries::default).insert(canary),
            watcher::Event::InitDone => {
                if let Some(listed) = self.relisting.take() {
                    self.live = listed;
                }
            }
        }
    }

    /// The Canaries that may claim something `canary` claims (`canary` itself among
    /// them, and perhaps some that no longer do), sorted and without repeats. The owners
    /// of the Deployments it reads are added by the caller, which has read them.
    pub fn claim_neighbours(&self, canary: &Canary) -> Vec<ObjectRef<Canary>> {
        let mut found: Vec<ObjectRef<Canary>> =
            keys_of(canary).into_iter().flat_map(|key| self.live.holding(key)).cloned().collect();
        found.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        found.dedup();
        found
    }

    /// The Canaries whose `targetRef` may name `name` in `namespace`.
    pub fn targeting(&self, namespace: Option<&str>, name: &str) -> Vec<ObjectRef<Canary>> {
        self.live.holding(target_key(namespace, name)).cloned().collect()
    }

    /// Whether a Canary's `targetRef` may name `name` in `namespace`, counting a re-list
    /// in progress: for a decision that must not miss one (see
    /// [`super::CanaryCache::keep_unread_by_metadata`]).
    pub fn may_target(&self, namespace: Option<&str>, name: &str) -> bool {
        let key = target_key(namespace, name);
        self.live.holding(key).next().is_some()
            || self.relisting.as_ref().is_some_and(|listed| listed.holding(key).next().is_some())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.live.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::ResourceExt;
    use proptest::prelude::*;

    fn canary(namespace: &str, name: &str, target: &str, service: Option<&str>) -> Canary {
        created_at(namespace, name, target, service, 0)
    }

    fn created_at(namespace: &str, name: &str, target: &str, service: Option<&str>, second: i64) -> Canary {
        let mut canary: Canary = serde_json::from_value(serde_json::json!({
            "apiVersion": "petrel.dev/v1alpha1",
            "kind": "Canary",
            "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}")},
            "spec": {
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
                "service": {"port": 80},
            }
        }))
        .expect("a valid Canary");
        canary.spec.service.name = service.map(str::to_string);
        let created = k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + second).expect("a valid time");
        canary.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(created));
        canary
    }

    fn names(refs: &[ObjectRef<Canary>]) -> Vec<String> {
        refs.iter().map(|r| r.name.clone()).collect()
    }

    #[test]
    fn finds_the_canaries_that_share_a_claim_and_forgets_those_edited_away_or_deleted() {
        let mut index = ClaimIndex::default();
        let a = canary("apps", "a", "podinfo", None);
        let b = canary("apps", "b", "podinfo", None);
        let c = canary("apps", "c", "other", Some("podinfo"));
        let elsewhere = canary("team", "a", "podinfo", None);
        for canary in [&a, &b, &c, &elsewhere] {
            index.apply(&watcher::Event::Apply(canary.clone()));
        }
        assert_eq!(names(&index.claim_neighbours(&a)), ["a", "b", "c"], "c claims the Service podinfo");
        assert_eq!(names(&index.targeting(Some("apps"), "podinfo")), ["a", "b"]);

        let mut b_moved = b.clone();
        b_moved.spec.target_ref.name = "unrelated".into();
        b_moved.spec.service.name = Some("unrelated".into());
        index.apply(&watcher::Event::Apply(b_moved));
        index.apply(&watcher::Event::Delete(c.clone()));
        assert_eq!(names(&index.claim_neighbours(&a)), ["a"]);
        assert_eq!(index.len(), 3);
    }

    #[test]
    fn a_relist_replaces_the_index_when_complete_and_not_before() {
        let mut index = ClaimIndex::default();
        let a = canary("apps", "a", "podinfo", None);
        let gone = canary("apps", "gone", "podinfo", None);
        index.apply(&watcher::Event::Apply(a.clone()));
        index.apply(&watcher::Event::Apply(gone.clone()));
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitApply(a.clone()));
        // Until the list is complete the cache still holds both: so does the index.
        assert_eq!(names(&index.claim_neighbours(&a)), ["a", "gone"]);
        index.apply(&watcher::Event::InitDone);
        assert_eq!(names(&index.claim_neighbours(&a)), ["a"], "deleted while the watch was down");
    }

    fn a_canary() -> impl Strategy<Value = Canary> {
        let stem = || prop::sample::select(vec!["p", "q", "p-primary", "q-canary"]);
        (
            prop::sample::select(vec!["c1", "c2", "c3", "c4", "c5"]),
            prop::sample::select(vec!["apps", "team"]),
            stem(),
            prop::option::of(stem()),
            0..3i64,
        )
            .prop_map(|(name, namespace, target, service, second)| created_at(namespace, name, target, service, second))
    }

    #[derive(Clone, Debug)]
    enum Step {
        Apply(Canary),
        Delete(Canary),
        Relist(Vec<Canary>),
    }

    fn a_step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => a_canary().prop_map(Step::Apply),
            2 => a_canary().prop_map(Step::Delete),
            1 => prop::collection::vec(a_canary(), 0..6).prop_map(Step::Relist),
        ]
    }

    proptest! {
        /// After any sequence of watch events, the index names every Canary of the cache
        /// that shares a claim or a target with a given one: so the claims check over
        /// the index's neighbours decides exactly as it does over the whole cache.
        #[test]
        fn never_misses_a_canary_that_shares_a_claim(steps in prop::collection::vec(a_step(), 0..24), me in a_canary()) {
            let mut index = ClaimIndex::default();
            let mut cache: HashMap<(String, String), Canary> = HashMap::new();
            let id = |c: &Canary| (c.namespace().unwrap_or_default(), c.name_any());
            for step in steps {
                match step {
                    Step::Apply(c) => {
                        index.apply(&watcher::Event::Apply(c.clone()));
                        cache.insert(id(&c), c);
                    }
                    Step::Delete(c) => {
                        index.apply(&watcher::Event::Delete(c.clone()));
                        cache.remove(&id(&c));
                    }
                    Step::Relist(listed) => {
                        index.apply(&watcher::Event::Init);
                        cache.clear();
                        for c in listed {
                            index.apply(&watcher::Event::InitApply(c.clone()));
                            cache.insert(id(&c), c);
                        }
                        index.apply(&watcher::Event::InitDone);
                    }
                }
            }
            prop_assert_eq!(index.len(), cache.len(), "the index forgets what the cache forgot");
            let found = index.claim_neighbours(&me);
            let neighbours: Vec<&Canary> =
                found.iter().filter_map(|r| cache.get(&(r.namespace.clone().unwrap_or_default(), r.name.clone()))).collect();
            let everyone: Vec<&Canary> = cache.values().collect();
            prop_assert_eq!(
                claims::conflict(&me, neighbours.iter().copied(), &[]),
                claims::conflict(&me, everyone.iter().copied(), &[])
            );
            for other in cache.values() {
                let shares = other.metadata.namespace == me.metadata.namespace
                    && !claims::claims_of(other).is_disjoint(&claims::claims_of(&me));
                if shares {
                    prop_assert!(found.iter().any(|r| r.name == other.name_any()), "{} missed", other.name_any());
                }
            }
            for (namespace, target) in [("apps", "p"), ("team", "q-canary")] {
                let targeting = index.targeting(Some(namespace), target);
                for other in cache.values().filter(|c| c.namespace().as_deref() == Some(namespace) && c.spec.target_ref.name == target) {
                    prop_assert!(targeting.iter().any(|r| r.name == other.name_any()));
                }
            }
        }
    }
}
