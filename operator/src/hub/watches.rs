//! The hub's view of its members between reconciles: a watch on each member Canary a
//! Rollout releases, and the last liveness probe of each member.
//!
//! A watch is keyed by (cluster, Canary namespace, Canary name) and filtered by a field
//! selector on the name: the hub caches exactly the objects its decisions read, a
//! Canary event always concerns a Rollout, and hub credentials scoped to the app's
//! namespace (get/list/watch on `canaries` there) are enough. With one Rollout per app
//! this is one watch per member. A change names the member it concerns, and wakes only
//! the Rollouts that select that member ([`rollouts_selecting`]).
//!
//! The reconcile reads a Canary from here only while the cache is fresh (synced, no
//! error since, and the member heard from within [`CONTACT_FRESHNESS`]); otherwise it
//! GETs the Canary as before. A watch that fails marks the member unreachable until
//! the member answers again — never a silent pass on stale data.
//!
//! Reconciles say which watches they need ([`MemberWatches::want`]); the manager task
//! ([`MemberWatches::manage`]) starts, restarts (new kubeconfig) and stops watches to
//! match. Without the manager (unit tests) no watch runs and every read is a GET.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use futures::StreamExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::Notify;
use tracing::{debug, info};

use crate::api::{Canary, Cluster, Rollout};
use crate::fleet::identity::ObservedIdentity;

/// How long after the last sign of life (a watch event, a successful probe) a cache
/// still counts as the member's current state.
pub const CONTACT_FRESHNESS: TimeDelta = TimeDelta::seconds(45);

/// Server-side timeout of one watch request: the watcher re-watches after it, and gives
/// up on a silent connection a few seconds later.
pub const WATCH_TIMEOUT_SECS: u32 = 60;

/// How often the manager compares the watches running with the ones wanted, even when
/// nothing asked it to.
pub const MANAGE_INTERVAL: Duration = Duration::from_secs(30);

/// One watched member Canary.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WatchKey {
    pub cluster: String,
    pub namespace: String,
    pub name: String,
}

/// What one watch has seen.
#[derive(Clone, Debug, Default)]
pub struct CanaryCache {
    /// The initial list completed: `canary` is the member's state, not a guess.
    pub synced: bool,
    /// The Canary; `None` when the member has none of that name.
    pub canary: Option<Arc<Canary>>,
    /// Objects of a relist in progress, swapped in when it completes.
    relisting: Option<Option<Arc<Canary>>>,
    /// When the watch last delivered something (the member was there).
    pub last_event: Option<DateTime<Utc>>,
    /// The last watch error and since when the watch fails; cleared by the next event.
    pub error: Option<(String, DateTime<Utc>)>,
}

impl CanaryCache {
    /// Applies one watcher event for the Canary `name`. Returns whether the Rollouts
    /// should look again (the Canary changed or the cache became usable).
    pub fn apply(&mut self, event: watcher::Event<Canary>, name: &str, now: DateTime<Utc>) -> bool {
        // The field selector already filters by name; a fake or old server might not.
        let ours = |canary: &Canary| canary.name_any() == name;
        match event {
            watcher::Event::Init => {
                self.relisting = Some(None);
                return false;
            }
            watcher::Event::InitApply(canary) => {
                if ours(&canary) {
                    self.relisting = Some(Some(Arc::new(canary)));
                }
                return false;
            }
            watcher::Event::InitDone => {
                self.canary = self.relisting.take().flatten();
                self.synced = true;
            }
            watcher::Event::Apply(canary) if ours(&canary) => self.canary = Some(Arc::new(canary)),
            watcher::Event::Delete(canary) if ours(&canary) => self.canary = None,
            watcher::Event::Apply(_) | watcher::Event::Delete(_) => return false,
        }
        self.last_event = Some(now);
        self.error = None;
        true
    }

    /// Records a watch error. Returns whether it is news (the cache was fine before).
    /// The failure keeps the time it began, so a member that answers probes while its
    /// watch keeps failing (say, watch forbidden but get allowed) is read directly
    /// rather than flapping between unreachable and reached.
    pub fn fail(&mut self, error: String, now: DateTime<Utc>) -> bool {
        let since = self.error.as_ref().map_or(now, |(_, since)| *since);
        let news = self.error.is_none();
        self.error = Some((error, since));
        news
    }

    /// Takes the answer to a write the hub made on this Canary: until the watch delivers
    /// it, the cache would otherwise show the Canary without the hub's own write. An
    /// answer older than what the cache holds (by resourceVersion) is ignored.
    pub fn wrote(&mut self, canary: Canary) {
        let version = |c: &Canary| c.resource_version().and_then(|v| v.parse::<u64>().ok());
        let newer = match (self.canary.as_deref().and_then(version), version(&canary)) {
            (Some(cached), Some(written)) => written >= cached,
            _ => true,
        };
        if self.synced && newer {
            self.canary = Some(Arc::new(canary));
        }
    }
}

/// What the last liveness probe of a member found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeResult {
    /// The API server answered; whether it serves petrel's Canary API, and who the
    /// member says it is.
    Reached { server_version: String, canary_api: bool, identity: ObservedIdentity },
    /// No answer: why.
    Unreachable(String),
    /// The hub has no client for the member (Secret missing, broken kubeconfig).
    NoClient { reason: &'static str, message: String },
}

/// The last probe of a member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberProbe {
    pub at: DateTime<Utc>,
    pub result: ProbeResult,
    /// When a probe last reached the member.
    pub last_ok: Option<DateTime<Utc>>,
    /// Who the member said it was when a probe last reached it.
    pub identity: Option<ObservedIdentity>,
}

impl MemberProbe {
    pub fn reached(&self) -> bool {
        matches!(self.result, ProbeResult::Reached { .. })
    }
}

/// How the reconcile may read a member's Canary.
#[derive(Clone, Debug)]
pub enum CacheVerdict {
    /// The cache is the member's current state: the Canary (`None`: it has none), and
    /// the last time the member was heard from (not now: a member stopped a moment
    /// ago may not have broken its watch yet).
    Fresh(Option<Arc<Canary>>, DateTime<Utc>),
    /// The watch fails and the member has not answered since: it is unreachable.
    Failed(String),
    /// No usable cache (no watch yet, still listing, quiet for too long, or the member
    /// answered again while the watch catches up): read the Canary directly.
    Stale,
}

impl PartialEq for CacheVerdict {
    /// Canaries compare by name and resourceVersion: the same object as the API
    /// server served it (`Canary` itself has no equality).
    fn eq(&self, other: &Self) -> bool {
        let identity = |c: &Option<Arc<Canary>>| c.as_deref().map(|c| (c.name_any(), c.resource_version()));
        match (self, other) {
            (CacheVerdict::Fresh(a, at), CacheVerdict::Fresh(b, bt)) => identity(a) == identity(b) && at == bt,
            (CacheVerdict::Failed(a), CacheVerdict::Failed(b)) => a == b,
            (CacheVerdict::Stale, CacheVerdict::Stale) => true,
            _ => false,
        }
    }
}

/// Whether a cache can stand for the member's state now. Pure.
pub fn cache_verdict(cache: Option<&CanaryCache>, probe: Option<&MemberProbe>, now: DateTime<Utc>) -> CacheVerdict {
    let Some(cache) = cache else { return CacheVerdict::Stale };
    let probed_ok = probe.and_then(|p| p.last_ok);
    if let Some((error, at)) = &cache.error {
        // A probe that reached the member after the watch began failing says it
        // answers: a direct read decides.
        return if probed_ok.is_some_and(|ok| ok > *at) {
            CacheVerdict::Stale
        } else {
            CacheVerdict::Failed(error.clone())
        };
    }
    if !cache.synced {
        return CacheVerdict::Stale;
    }
    // A probe that failed after the last event: let a direct read decide.
    if let Some(probe) = probe
        && !probe.reached()
        && cache.last_event.is_none_or(|event| probe.at > event)
    {
        return CacheVerdict::Stale;
    }
    let contact = cache.last_event.max(probed_ok);
    match contact {
        Some(contact) if now - contact <= CONTACT_FRESHNESS => CacheVerdict::Fresh(cache.canary.clone(), contact),
        _ => CacheVerdict::Stale,
    }
}

/// Which watches to stop and start so that the running ones (key → kubeconfig
/// fingerprint) match the wanted ones. A watch whose kubeconfig changed is in both.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchPlan {
    pub stop: Vec<WatchKey>,
    pub start: Vec<WatchKey>,
}

/// Plans the watches. Pure.
pub fn plan_watches(wanted: &BTreeMap<WatchKey, String>, running: &BTreeMap<WatchKey, String>) -> WatchPlan {
    let stop = running
        .iter()
        .filter(|(key, fingerprint)| wanted.get(*key) != Some(*fingerprint))
        .map(|(key, _)| key.clone())
        .collect();
    let start = wanted
        .iter()
        .filter(|(key, fingerprint)| running.get(*key) != Some(*fingerprint))
        .map(|(key, _)| key.clone())
        .collect();
    WatchPlan { stop, start }
}

/// A watch a Rollout needs: the member's watch client and the kubeconfig it came from.
#[derive(Clone)]
pub struct WantedWatch {
    pub fingerprint: String,
    pub client: Client,
}

struct Running {
    /// Distinguishes this watch from an earlier one on the same key, whose task may
    /// still deliver one last item after it was aborted.
    id: u64,
    fingerprint: String,
    cache: CanaryCache,
    task: tokio::task::AbortHandle,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Default)]
struct State {
    /// Per Rollout (`namespace/name`), the watches its last reconcile needed.
    wanted: BTreeMap<String, BTreeMap<WatchKey, WantedWatch>>,
    running: BTreeMap<WatchKey, Running>,
    probes: BTreeMap<String, MemberProbe>,
    /// Members whose Canary or reachability changed since the reconciles last looked.
    changed: BTreeSet<String>,
    next_id: u64,
}

struct Inner {
    state: Mutex<State>,
    wake_manager: Notify,
    wake_reconciles: Arc<Notify>,
}

/// The member watches and probes, shared by the reconciles, the manager and the
/// Cluster status loop.
#[derive(Clone)]
pub struct MemberWatches {
    inner: Arc<Inner>,
}

impl Default for MemberWatches {
    fn default() -> Self {
        Self::new()
    }
}

impl MemberWatches {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                wake_manager: Notify::new(),
                wake_reconciles: Arc::new(Notify::new()),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.inner)
    }

    /// The members (cluster names, coalesced) whose watched Canary or reachability
    /// changed: the trigger of the reconciles of the Rollouts that select them.
    pub fn member_changes(&self) -> impl futures::Stream<Item = BTreeSet<String>> + Send + 'static {
        futures::stream::unfold(self.inner.clone(), |inner| async move {
            loop {
                let changed = std::mem::take(&mut lock(&inner).changed);
                if !changed.is_empty() {
                    return Some((changed, inner));
                }
                inner.wake_reconciles.notified().await;
            }
        })
    }

    /// Wakes the reconciles of the Rollouts that select the member `cluster`.
    pub fn member_changed(&self, cluster: &str) {
        member_changed(&self.inner, cluster);
    }

    /// How the reconcile may read the Canary `key` names, watched with a client from
    /// the kubeconfig `fingerprint` (a watch from another kubeconfig does not count).
    pub fn read(&self, key: &WatchKey, fingerprint: &str, now: DateTime<Utc>) -> CacheVerdict {
        let state = self.lock();
        let cache = state.running.get(key).filter(|r| r.fingerprint == fingerprint).map(|r| &r.cache);
        cache_verdict(cache, state.probes.get(&key.cluster), now)
    }

    /// Puts the answer to a write the hub made on a member Canary into the cache.
    pub fn wrote(&self, key: &WatchKey, canary: Canary) {
        if let Some(running) = self.lock().running.get_mut(key) {
            running.cache.wrote(canary);
        }
    }

    /// Records the watches `rollout`'s reconcile needs (replacing what it needed
    /// before) and wakes the manager when that changes anything.
    pub fn want(&self, rollout: &str, watches: BTreeMap<WatchKey, WantedWatch>) {
        let mut state = self.lock();
        let changed = state.wanted.get(rollout).is_none_or(|before| {
            before.len() != watches.len()
                || before.iter().zip(&watches).any(|((ka, a), (kb, b))| ka != kb || a.fingerprint != b.fingerprint)
        });
        state.wanted.insert(rollout.to_string(), watches);
        drop(state);
        if changed {
            self.inner.wake_manager.notify_one();
        }
    }

    /// Forgets the needs of Rollouts that no longer exist.
    pub fn retain_rollouts(&self, live: &BTreeSet<String>) {
        let mut state = self.lock();
        let before = state.wanted.len();
        state.wanted.retain(|rollout, _| live.contains(rollout));
        if state.wanted.len() != before {
            drop(state);
            self.inner.wake_manager.notify_one();
        }
    }

    /// Records a member's probe; wakes the reconciles when its reachability changed.
    pub fn record_probe(&self, cluster: &str, result: ProbeResult, now: DateTime<Utc>) {
        let mut state = self.lock();
        let previous = state.probes.get(cluster);
        let reached = matches!(result, ProbeResult::Reached { .. });
        let identity = match &result {
            ProbeResult::Reached { identity, .. } => Some(identity.clone()),
            _ => previous.and_then(|p| p.identity.clone()),
        };
        // A member that came back, dropped off or changed who it says it is.
        let changed = previous.is_none_or(|p| p.reached() != reached || p.identity != identity);
        let last_ok = if reached { Some(now) } else { previous.and_then(|p| p.last_ok) };
        state.probes.insert(cluster.to_string(), MemberProbe { at: now, result, last_ok, identity });
        drop(state);
        if changed {
            self.member_changed(cluster);
        }
    }

    /// The last probe of a member.
    pub fn probe(&self, cluster: &str) -> Option<MemberProbe> {
        self.lock().probes.get(cluster).cloned()
    }

    /// Forgets the probes of Clusters that no longer exist.
    pub fn retain_probes(&self, clusters: &BTreeSet<String>) {
        self.lock().probes.retain(|name, _| clusters.contains(name));
    }

    /// Puts a synced cache holding `canary` under `key`, as if a watch from the
    /// kubeconfig `fingerprint` had listed it, so tests need no watch-capable server.
    #[cfg(test)]
    pub(crate) fn insert_cache_for_test(
        &self,
        key: WatchKey,
        fingerprint: &str,
        canary: Option<Canary>,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) {
        let mut state = self.lock();
        state.next_id += 1;
        let cache = CanaryCache {
            synced: true,
            canary: canary.map(Arc::new),
            relisting: None,
            last_event: Some(now),
            error: error.map(|e| (e.to_string(), now)),
        };
        let task = tokio::spawn(std::future::pending::<()>()).abort_handle();
        let id = state.next_id;
        state.running.insert(key, Running { id, fingerprint: fingerprint.to_string(), cache, task });
    }

    /// The keys of the watches some Rollout wants now.
    pub fn wanted(&self) -> BTreeSet<WatchKey> {
        self.lock().wanted.values().flat_map(|watches| watches.keys().cloned()).collect()
    }

    /// The keys of the watches running now (for tests and logs).
    pub fn running(&self) -> Vec<WatchKey> {
        self.lock().running.keys().cloned().collect()
    }

    /// Starts and stops watches to match what the reconciles want.
    pub fn apply_plan(&self) {
        let mut state = self.lock();
        // Several Rollouts may want one watch; they agree on the fingerprint except
        // for the moment a Secret rotates, and the next reconciles settle it.
        let mut wanted: BTreeMap<WatchKey, WantedWatch> = BTreeMap::new();
        for watches in state.wanted.values() {
            for (key, watch) in watches {
                wanted.insert(key.clone(), watch.clone());
            }
        }
        let fingerprints = |map: &mut dyn Iterator<Item = (&WatchKey, &String)>| -> BTreeMap<WatchKey, String> {
            map.map(|(k, f)| (k.clone(), f.clone())).collect()
        };
        let plan = plan_watches(
            &fingerprints(&mut wanted.iter().map(|(k, w)| (k, &w.fingerprint))),
            &fingerprints(&mut state.running.iter().map(|(k, r)| (k, &r.fingerprint))),
        );
        for key in plan.stop {
            info!(cluster = %key.cluster, canary = %format!("{}/{}", key.namespace, key.name), "stopping member watch");
            state.running.remove(&key);
        }
        for key in plan.start {
            let Some(watch) = wanted.get(&key) else { continue };
            state.next_id += 1;
            let id = state.next_id;
            info!(cluster = %key.cluster, canary = %format!("{}/{}", key.namespace, key.name), "starting member watch");
            let task = tokio::spawn(watch_canary(self.inner.clone(), key.clone(), id, watch.client.clone()));
            state.running.insert(
                key,
                Running {
                    id,
                    fingerprint: watch.fingerprint.clone(),
                    cache: CanaryCache::default(),
                    task: task.abort_handle(),
                },
            );
        }
    }

    /// Stops every watch and forgets every need (the hub stops leading).
    pub fn stop_all(&self) {
        let mut state = self.lock();
        state.wanted.clear();
        // Dropping a `Running` aborts its task.
        state.running.clear();
    }

    /// Keeps the watches matching the reconciles' needs until the process stops.
    pub async fn manage(self) {
        loop {
            self.apply_plan();
            tokio::select! {
                () = self.inner.wake_manager.notified() => {}
                () = tokio::time::sleep(MANAGE_INTERVAL) => {}
            }
        }
    }
}

fn lock(inner: &Inner) -> MutexGuard<'_, State> {
    // Every critical section is a few map operations that cannot panic half-way, so
    // a poisoned lock still guards consistent data.
    inner.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Records that the member `cluster` changed and wakes the trigger.
fn member_changed(inner: &Inner, cluster: &str) {
    lock(inner).changed.insert(cluster.to_string());
    inner.wake_reconciles.notify_one();
}

/// The Rollouts a change of the members `changed` concerns: those whose cluster
/// selector selects one of them, by the labels in the hub's Cluster store. A member
/// the store does not hold (yet) concerns every Rollout, so that a change is never
/// dropped; a Cluster's own change (labels, deletion) reaches every Rollout through
/// the Cluster watch. Pure.
pub fn rollouts_selecting(
    changed: &BTreeSet<String>,
    clusters: &[Arc<Cluster>],
    rollouts: &[Arc<Rollout>],
) -> Vec<ObjectRef<Rollout>> {
    let mut labels = Vec::with_capacity(changed.len());
    for name in changed {
        match clusters.iter().find(|c| c.name_any() == *name) {
            Some(cluster) => labels.push(cluster.labels()),
            None => return rollouts.iter().map(|r| ObjectRef::from_obj(r.as_ref())).collect(),
        }
    }
    rollouts
        .iter()
        .filter(|r| labels.iter().any(|l| r.spec.clusters.matches(l)))
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
}

/// The Rollouts a change of the Cluster object `cluster` (its labels, its kubeconfig
/// reference, its status after a probe, its deletion) concerns: those whose selector
/// selects it now, and those whose status lists it as a member (its labels may have
/// just left their selector). A probe's status write then wakes the Rollouts of that
/// member only, not the whole hub. Pure.
pub fn rollouts_concerning_cluster(cluster: &Cluster, rollouts: &[Arc<Rollout>]) -> Vec<ObjectRef<Rollout>> {
    let name = cluster.name_any();
    rollouts
        .iter()
        .filter(|r| {
            r.spec.clusters.matches(cluster.labels())
                || r.status.as_ref().is_some_and(|s| s.members.iter().any(|m| m.cluster == name))
        })
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
}

/// Watches one member Canary into the cache of watch `id` until aborted.
async fn watch_canary(inner: Arc<Inner>, key: WatchKey, id: u64, client: Client) {
    let api: Api<Canary> = Api::namespaced(client, &key.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", key.name)).timeout(WATCH_TIMEOUT_SECS);
    let mut events = watcher(api, config).default_backoff().boxed();
    while let Some(item) = events.next().await {
        let now = Utc::now();
        let wake = {
            let mut state = lock(&inner);
            let Some(running) = state.running.get_mut(&key).filter(|r| r.id == id) else { return };
            match item {
                Ok(event) => running.cache.apply(event, &key.name, now),
                Err(e) => {
                    let error = e.to_string();
                    debug!(cluster = %key.cluster, %error, "member watch error");
                    running.cache.fail(error, now)
                }
            }
        };
        if wake {
            member_changed(&inner, &key.cluster);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn at(second: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 4, 0, 0).unwrap() + TimeDelta::seconds(second)
    }

    fn canary(name: &str, resource_version: &str) -> Canary {
        serde_json::from_value(json!({
            "apiVersion": "petrel.dev/v1alpha1", "kind": "Canary",
            "metadata": {"name": name, "namespace": "test", "resourceVersion": resource_version},
            "spec": {"targetRef": {"kind": "Deployment", "name": name}, "service": {"port": 9898}}
        }))
        .unwrap()
    }

    fn synced(canary_rv: Option<&str>, at_second: i64) -> CanaryCache {
        let mut cache = CanaryCache::default();
        cache.apply(watcher::Event::Init, "podinfo", at(0));
        if let Some(rv) = canary_rv {
            cache.apply(watcher::Event::InitApply(canary("podinfo", rv)), "podinfo", at(0));
        }
        cache.apply(watcher::Event::InitDone, "podinfo", at(at_second));
        cache
    }

    fn version(cache: &CanaryCache) -> Option<String> {
        cache.canary.as_ref().and_then(|c| c.resource_version())
    }

    #[test]
    fn a_cache_is_usable_only_once_the_initial_list_completed() {
        let mut cache = CanaryCache::default();
        assert!(!cache.apply(watcher::Event::Init, "podinfo", at(0)));
        assert!(!cache.apply(watcher::Event::InitApply(canary("podinfo", "5")), "podinfo", at(0)));
        assert!(!cache.synced && cache.canary.is_none(), "a half-done list is not the member's state");
        assert!(cache.apply(watcher::Event::InitDone, "podinfo", at(1)));
        assert!(cache.synced);
        assert_eq!(version(&cache).as_deref(), Some("5"));
        assert_eq!(cache.last_event, Some(at(1)));
    }

    #[test]
    fn changes_and_deletions_replace_the_canary_and_wake_the_reconciles() {
        let mut cache = synced(Some("5"), 1);
        assert!(cache.apply(watcher::Event::Apply(canary("podinfo", "6")), "podinfo", at(2)));
        assert_eq!(version(&cache).as_deref(), Some("6"));
        assert!(!cache.apply(watcher::Event::Apply(canary("other", "7")), "podinfo", at(3)), "not ours");
        assert_eq!(version(&cache).as_deref(), Some("6"));
        assert!(cache.apply(watcher::Event::Delete(canary("podinfo", "8")), "podinfo", at(4)));
        assert!(cache.canary.is_none() && cache.synced);
    }

    #[test]
    fn a_relist_without_the_canary_means_it_is_gone() {
        let mut cache = synced(Some("5"), 1);
        cache.apply(watcher::Event::Init, "podinfo", at(2));
        assert_eq!(version(&cache).as_deref(), Some("5"), "kept until the relist completes");
        cache.apply(watcher::Event::InitDone, "podinfo", at(3));
        assert!(cache.canary.is_none());
    }

    #[test]
    fn an_error_is_news_once_and_cleared_by_the_next_event() {
        let mut cache = synced(Some("5"), 1);
        assert!(cache.fail("connection refused".into(), at(2)));
        assert!(!cache.fail("no route to host".into(), at(3)), "still failing is not news");
        assert_eq!(cache.error, Some(("no route to host".to_string(), at(2))), "failing since the first error");
        cache.apply(watcher::Event::Init, "podinfo", at(4));
        assert!(cache.error.is_some(), "a relist that has not completed proves nothing");
        cache.apply(watcher::Event::InitDone, "podinfo", at(5));
        assert_eq!(cache.error, None);
    }

    #[test]
    fn the_hubs_own_write_replaces_an_older_cached_canary_only() {
        let mut cache = synced(Some("5"), 1);
        cache.wrote(canary("podinfo", "7"));
        assert_eq!(version(&cache).as_deref(), Some("7"));
        cache.wrote(canary("podinfo", "6"));
        assert_eq!(version(&cache).as_deref(), Some("7"), "the watch delivered something newer already");
        let mut listing = CanaryCache::default();
        listing.wrote(canary("podinfo", "9"));
        assert!(listing.canary.is_none(), "an unsynced cache stays unused");
    }

    fn probe(at_second: i64, result: ProbeResult, last_ok: Option<i64>) -> MemberProbe {
        MemberProbe { at: at(at_second), result, last_ok: last_ok.map(at), identity: None }
    }

    fn reached() -> ProbeResult {
        ProbeResult::Reached {
            server_version: "v1.36.0".into(),
            canary_api: true,
            identity: crate::fleet::identity::ObservedIdentity {
                kubeconfig: "k".into(),
                kube_system_uid: Ok("u".into()),
                stated: Ok(None),
            },
        }
    }

    #[test]
    fn a_synced_cache_with_recent_contact_is_fresh() {
        let cache = synced(Some("5"), 10);
        assert!(matches!(cache_verdict(Some(&cache), None, at(20)), CacheVerdict::Fresh(Some(_), t) if t == at(10)));
        let empty = synced(None, 10);
        assert_eq!(
            cache_verdict(Some(&empty), None, at(20)),
            CacheVerdict::Fresh(None, at(10)),
            "the Canary is missing"
        );
        assert_eq!(cache_verdict(None, None, at(20)), CacheVerdict::Stale, "no watch");
        assert_eq!(cache_verdict(Some(&CanaryCache::default()), None, at(20)), CacheVerdict::Stale, "still listing");
    }

    #[test]
    fn a_quiet_watch_stays_fresh_while_probes_reach_the_member() {
        let cache = synced(Some("5"), 10);
        let late = at(10) + CONTACT_FRESHNESS + TimeDelta::seconds(1);
        assert_eq!(cache_verdict(Some(&cache), None, late), CacheVerdict::Stale, "no sign of life for too long");
        let probed = probe(50, reached(), Some(50));
        let verdict = cache_verdict(Some(&cache), Some(&probed), late);
        assert!(
            matches!(verdict, CacheVerdict::Fresh(Some(_), t) if t == at(50)),
            "contact from the probe: {verdict:?}"
        );
    }

    #[test]
    fn a_failed_probe_after_the_last_event_sends_the_reconcile_to_the_member() {
        let cache = synced(Some("5"), 10);
        let failed = probe(15, ProbeResult::Unreachable("timeout".into()), Some(5));
        assert_eq!(cache_verdict(Some(&cache), Some(&failed), at(16)), CacheVerdict::Stale);
        let before = probe(8, ProbeResult::Unreachable("timeout".into()), Some(5));
        assert!(matches!(cache_verdict(Some(&cache), Some(&before), at(16)), CacheVerdict::Fresh(..)));
    }

    #[test]
    fn a_failing_watch_marks_the_member_unreachable_until_it_answers_again() {
        let mut cache = synced(Some("5"), 10);
        cache.fail("connection refused".into(), at(20));
        let verdict = cache_verdict(Some(&cache), Some(&probe(15, reached(), Some(15))), at(21));
        assert_eq!(verdict, CacheVerdict::Failed("connection refused".into()));
        let back = probe(25, reached(), Some(25));
        assert_eq!(cache_verdict(Some(&cache), Some(&back), at(26)), CacheVerdict::Stale, "read it directly");
    }

    fn key(cluster: &str) -> WatchKey {
        WatchKey { cluster: cluster.into(), namespace: "test".into(), name: "podinfo".into() }
    }

    #[test]
    fn watches_follow_clusters_and_their_kubeconfigs() {
        let running: BTreeMap<WatchKey, String> =
            [(key("gone"), "a".to_string()), (key("same"), "b".to_string()), (key("rotated"), "c".to_string())].into();
        let wanted: BTreeMap<WatchKey, String> =
            [(key("same"), "b".to_string()), (key("rotated"), "d".to_string()), (key("new"), "e".to_string())].into();
        let plan = plan_watches(&wanted, &running);
        assert_eq!(plan.stop, vec![key("gone"), key("rotated")]);
        assert_eq!(plan.start, vec![key("new"), key("rotated")]);
        assert_eq!(plan_watches(&wanted, &wanted), WatchPlan::default());
    }

    #[tokio::test]
    async fn the_manager_starts_and_stops_watches_as_rollouts_need_them() {
        let watches = MemberWatches::new();
        let client = Client::new(
            tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>().0,
            "default",
        );
        let wanted = |fingerprint: &str| WantedWatch { fingerprint: fingerprint.into(), client: client.clone() };
        watches.want("fleet/a", [(key("eu-1"), wanted("f1")), (key("eu-2"), wanted("f1"))].into());
        watches.want("fleet/b", [(key("eu-2"), wanted("f1"))].into());
        watches.apply_plan();
        assert_eq!(watches.running(), vec![key("eu-1"), key("eu-2")]);
        assert_eq!(watches.read(&key("eu-1"), "f1", at(0)), CacheVerdict::Stale, "not synced yet");

        // Rollout a is gone: eu-2 is still needed by b.
        watches.retain_rollouts(&["fleet/b".to_string()].into());
        watches.apply_plan();
        assert_eq!(watches.running(), vec![key("eu-2")]);
        // eu-2's Secret rotated: the watch from the old kubeconfig no longer counts.
        watches.want("fleet/b", [(key("eu-2"), wanted("f2"))].into());
        assert_eq!(watches.read(&key("eu-2"), "f2", at(0)), CacheVerdict::Stale);
        watches.apply_plan();
        assert_eq!(watches.running(), vec![key("eu-2")]);
        watches.want("fleet/b", BTreeMap::new());
        watches.apply_plan();
        assert!(watches.running().is_empty());

        watches.want("fleet/a", [(key("eu-1"), wanted("f1"))].into());
        watches.apply_plan();
        watches.stop_all();
        assert!(watches.running().is_empty() && watches.wanted().is_empty());
    }

    #[tokio::test]
    async fn probes_wake_the_reconciles_when_reachability_changes() {
        let watches = MemberWatches::new();
        let mut trigger = Box::pin(watches.member_changes());
        watches.record_probe("eu-1", reached(), at(0));
        let first = tokio::time::timeout(Duration::from_secs(1), trigger.next()).await;
        assert_eq!(first.ok().flatten(), Some(BTreeSet::from(["eu-1".to_string()])), "first probe names its member");
        watches.record_probe("eu-1", reached(), at(15));
        assert!(tokio::time::timeout(Duration::from_millis(100), trigger.next()).await.is_err(), "no change");
        watches.record_probe("eu-1", ProbeResult::Unreachable("refused".into()), at(30));
        assert!(tokio::time::timeout(Duration::from_secs(1), trigger.next()).await.is_ok(), "lost");
        let probe = watches.probe("eu-1").unwrap();
        assert_eq!((probe.at, probe.last_ok), (at(30), Some(at(15))), "the last contact is kept");
    }

    fn labelled_cluster(name: &str, env: &str) -> Arc<Cluster> {
        let mut cluster = Cluster::new(name, crate::api::cluster::ClusterSpec::default());
        cluster.metadata.labels = Some([("env".to_string(), env.to_string())].into());
        Arc::new(cluster)
    }

    fn rollout_selecting(name: &str, env: Option<&str>) -> Arc<Rollout> {
        let mut rollout: Rollout = serde_json::from_value(serde_json::json!({
            "apiVersion": "petrel.dev/v1alpha1", "kind": "Rollout",
            "metadata": {"name": name, "namespace": "fleet"},
            "spec": {"canaryRef": {"namespace": "apps", "name": "web"}, "waves": [{"name": "all"}]},
        }))
        .unwrap();
        if let Some(env) = env {
            rollout.spec.clusters.match_labels = [("env".to_string(), env.to_string())].into();
        }
        Arc::new(rollout)
    }

    fn names(refs: Vec<ObjectRef<Rollout>>) -> Vec<String> {
        refs.into_iter().map(|r| r.name).collect()
    }

    #[test]
    fn a_member_change_reconciles_only_the_rollouts_that_select_it() {
        let clusters = [labelled_cluster("eu-1", "prod"), labelled_cluster("stage-1", "stage")];
        let rollouts = [
            rollout_selecting("prod-app", Some("prod")),
            rollout_selecting("stage-app", Some("stage")),
            rollout_selecting("everywhere", None),
        ];
        let changed = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(names(rollouts_selecting(&changed(&["eu-1"]), &clusters, &rollouts)), ["prod-app", "everywhere"]);
        assert_eq!(
            names(rollouts_selecting(&changed(&["stage-1"]), &clusters, &rollouts)),
            ["stage-app", "everywhere"]
        );
        assert_eq!(
            names(rollouts_selecting(&changed(&["eu-1", "stage-1"]), &clusters, &rollouts)),
            ["prod-app", "stage-app", "everywhere"]
        );
        // A member the Cluster store does not hold yet: every Rollout looks, none is missed.
        assert_eq!(
            names(rollouts_selecting(&changed(&["new-1"]), &clusters, &rollouts)),
            ["prod-app", "stage-app", "everywhere"]
        );
        assert!(rollouts_selecting(&changed(&["eu-1"]), &clusters, &rollouts[1..2]).is_empty());
    }

    #[test]
    fn a_cluster_change_reconciles_the_rollouts_that_select_it_or_list_it() {
        let rollouts = [
            rollout_selecting("prod-app", Some("prod")),
            rollout_selecting("stage-app", Some("stage")),
            rollout_selecting("everywhere", None),
        ];
        let eu = labelled_cluster("eu-1", "prod");
        assert_eq!(names(rollouts_concerning_cluster(&eu, &rollouts)), ["prod-app", "everywhere"]);
        // eu-1 relabelled from prod to stage: prod-app still lists it, and must drop it.
        let mut listed = (*rollouts[0]).clone();
        listed.status = Some(
            serde_json::from_value(serde_json::json!({"members": [{"cluster": "eu-1", "state": "Succeeded"}]}))
                .unwrap(),
        );
        let rollouts = [Arc::new(listed), rollouts[1].clone(), rollouts[2].clone()];
        let relabelled = labelled_cluster("eu-1", "stage");
        assert_eq!(names(rollouts_concerning_cluster(&relabelled, &rollouts)), ["prod-app", "stage-app", "everywhere"]);
        let other = labelled_cluster("us-1", "dev");
        assert_eq!(names(rollouts_concerning_cluster(&other, &rollouts[..2])), Vec::<String>::new());
    }
}
