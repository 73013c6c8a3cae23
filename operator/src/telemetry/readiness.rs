//! Readiness of the controller: ready once its caches have synced, and only while they
//! are being kept.
//!
//! A cache is kept by a watch. When the API server goes away, restarts or compacts past
//! the watch's resourceVersion, the watch fails or re-lists; until it is back, every
//! decision made from the cache may be stale. [`WatchHealth`] follows each watch's
//! events ([`WatchHealth::observe`]) and says whether all caches are kept; `/readyz`
//! answers not ready when one has been failing or re-listing for longer than
//! [`WATCH_GRACE`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use tracing::{debug, info, warn};

use super::Metrics;
use crate::api::Canary;

/// How often series of deleted Canaries are swept away. Deletion does not trigger a
/// reconcile (petrel keeps no finalizer), so a sweep is how they leave.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// How often the cache's readiness is checked until it syncs.
const READY_POLL: Duration = Duration::from_millis(250);
/// How long a watch may fail or re-list before the caches count as not kept: a watch
/// that reconnects or re-lists at once (the API server closed it, or compacted past
/// it) is normal and must not flap readiness.
pub const WATCH_GRACE: Duration = Duration::from_secs(5);
/// A watch that reported errors and then none for this long has reconnected: a failing
/// watch retries (and fails again) well within it, see `controller::watches`. A watch
/// that resumes from its resourceVersion reports nothing when it succeeds, so silence is
/// the only sign of that recovery.
pub const WATCH_QUIET: Duration = Duration::from_secs(15);

/// The state of one watch, as its events showed it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchState {
    /// The first full list reached the cache.
    pub synced: bool,
    /// Since when the watch has been failing or re-listing (`None`: it is fine).
    pub trouble_since: Option<Instant>,
    /// A re-list is under way (started, not done).
    pub relisting: bool,
    /// The last error, and when it came.
    pub last_error: Option<(Instant, String)>,
}

impl WatchState {
    /// Folds one event of the watch stream into the state.
    pub fn observe<K>(&mut self, event: &Result<watcher::Event<K>, watcher::Error>, now: Instant) {
        match event {
            Ok(watcher::Event::Init) => {
                self.relisting = true;
                self.trouble_since.get_or_insert(now);
            }
            Ok(watcher::Event::InitApply(_)) => {}
            Ok(watcher::Event::InitDone) => {
                self.synced = true;
                self.relisting = false;
                self.trouble_since = None;
            }
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
                // Events stream again: the watch is back.
                self.trouble_since = None;
            }
            Err(error) => {
                // After a quiet recovery (see WATCH_QUIET) a new error starts new trouble.
                let recovered_quietly = !self.relisting
                    && self
                        .last_error
                        .as_ref()
                        .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= WATCH_QUIET);
                if recovered_quietly {
                    self.trouble_since = None;
                }
                self.trouble_since.get_or_insert(now);
                self.last_error = Some((now, error.to_string()));
            }
        }
    }

    /// Why this cache is not kept at `now`, or `None` when it is.
    pub fn problem(&self, now: Instant) -> Option<String> {
        if !self.synced {
            return Some("has not synced yet".to_string());
        }
        let since = self.trouble_since?;
        let for_long = now.saturating_duration_since(since) >= WATCH_GRACE;
        let error = self.last_error.as_ref().filter(|(at, _)| *at >= since);
        let quiet = error.is_none_or(|(at, _)| now.saturating_duration_since(*at) >= WATCH_QUIET);
        if !for_long || (quiet && !self.relisting) {
            return None;
        }
        let elapsed = now.saturating_duration_since(since).as_secs();
        Some(match (self.relisting, error) {
            (true, _) => format!("has been re-listing for {elapsed}s"),
            (false, Some((_, message))) => format!("has been failing for {elapsed}s: {message}"),
            (false, None) => format!("has been failing for {elapsed}s"),
        })
    }
}

/// The caches routers and the controller read are trusted only while their watch
/// keeps them.
impl crate::cache::KeepsCache for WatchHealth {
    fn keeps(&self, watch: &'static str) -> bool {
        WatchHealth::keeps(self, watch)
    }
}

/// The health of every watch that keeps a cache. Cheap to clone; clones share it.
#[derive(Clone, Debug, Default)]
pub struct WatchHealth {
    watches: Arc<Mutex<BTreeMap<&'static str, WatchState>>>,
}

impl WatchHealth {
    /// Registers a watch (not synced yet) so that readiness waits for it.
    pub fn register(&self, name: &'static str) {
        self.lock().entry(name).or_default();
    }

    /// Records one event of the watch `name`.
    pub fn observe<K>(&self, name: &'static str, event: &Result<watcher::Event<K>, watcher::Error>) {
        let now = Instant::now();
        let mut watches = self.lock();
        let state = watches.entry(name).or_default();
        let in_trouble = state.trouble_since.is_some();
        state.observe(event, now);
        match event {
            Err(error) if !in_trouble => {
                warn!(watch = name, %error, "watch failed; its cache may be stale until it recovers")
            }
            Err(error) => debug!(watch = name, %error, "watch still failing"),
            Ok(_) if in_trouble && state.trouble_since.is_none() => info!(watch = name, "watch keeps its cache again"),
            Ok(_) => {}
        }
    }

    /// Whether every registered watch has synced (whatever its health since).
    pub fn synced(&self, name: &'static str) -> bool {
        self.lock().get(name).is_some_and(|s| s.synced)
    }

    /// Whether the watch `name` keeps its cache now: synced, not re-listing, and no
    /// trouble since (a cache read for a decision must be this or not be read at all).
    pub fn keeps(&self, name: &'static str) -> bool {
        self.lock().get(name).is_some_and(|s| s.synced && !s.relisting && s.trouble_since.is_none())
    }

    /// The watches whose caches are not kept at `now`, with why.
    pub fn problems(&self, now: Instant) -> Vec<String> {
        self.lock()
            .iter()
            .filter_map(|(name, state)| state.problem(now).map(|p| format!("the {name} watch {p}")))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, WatchState>> {
        // A panic while holding the lock leaves a consistent map (every change is one call).
        self.watches.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Whether the controller is ready to serve: once the first full list of Canaries
/// reached its cache, and while every watch keeps its cache ([`WatchHealth`]). Cheap to
/// clone; every clone sees the same state.
///
/// A standby replica (leader election on, another replica leading) counts as ready: it
/// is ready to take over, and a Deployment's rolling update waits for the new replica to
/// be ready before it stops the old leader, so an unready standby would never get the
/// lease.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
    standby: Arc<AtomicBool>,
    watches: WatchHealth,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Why this replica is not ready, or `None` when it is.
    pub fn not_ready_because(&self) -> Option<String> {
        if self.standby.load(Ordering::Acquire) {
            return None;
        }
        if !self.ready.load(Ordering::Acquire) {
            return Some("the caches have not synced yet".to_string());
        }
        let problems = self.watches.problems(Instant::now());
        (!problems.is_empty()).then(|| format!("caches are not being kept: {}", problems.join("; ")))
    }

    /// The health of the watches behind the caches; the controllers report into it.
    pub fn watches(&self) -> &WatchHealth {
        &self.watches
    }

    /// Whether this replica waits for the leader election lease.
    pub fn is_standby(&self) -> bool {
        self.standby.load(Ordering::Acquire)
    }

    /// Sets whether this replica waits for the lease; once leading, readiness is the
    /// cache's again.
    pub fn set_standby(&self, standby: bool) {
        self.standby.store(standby, Ordering::Release);
    }

    pub fn mark_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }
}

/// Marks `readiness` once `store` has synced, then keeps the metrics free of Canaries that
/// left the store. Runs until aborted (the controller aborts it when it stops), or ends
/// early, not ready, when the store's writer goes away before it ever synced.
pub async fn track_canary_store(store: Store<Canary>, readiness: Readiness, metrics: Arc<Metrics>) {
    // kube-runtime's readiness future keeps a single waker, and the controller waits on
    // the same store: this task may never be woken, so it asks again at a short interval.
    loop {
        match tokio::time::timeout(READY_POLL, store.wait_until_ready()).await {
            Ok(Ok(())) => break,
            Ok(Err(_)) => {
                warn!("the Canary cache stopped before it synced; staying not ready");
                return;
            }
            Err(_still_waiting) => continue,
        }
    }
    readiness.mark_ready();
    info!("Canary cache synced; ready");
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        sweep.tick().await;
        let live: Vec<(String, String)> =
            store.state().iter().map(|c| (c.namespace().unwrap_or_default(), c.name_any())).collect();
        metrics.retain_canaries(live.iter().map(|(ns, name)| (ns.as_str(), name.as_str())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Event = Result<watcher::Event<()>, watcher::Error>;

    fn failed() -> Event {
        Err(watcher::Error::NoResourceVersion)
    }

    fn synced(at: Instant) -> WatchState {
        let mut state = WatchState::default();
        state.observe::<()>(&Ok(watcher::Event::Init), at);
        state.observe::<()>(&Ok(watcher::Event::InitDone), at);
        state
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn not_kept_until_the_first_list_is_done() {
        let t = Instant::now();
        let mut state = WatchState::default();
        assert!(state.problem(t).is_some());
        state.observe::<()>(&Ok(watcher::Event::Init), t);
        assert!(state.problem(t + 10 * S).is_some());
        state.observe::<()>(&Ok(watcher::Event::InitDone), t + 10 * S);
        assert_eq!(state.problem(t + 10 * S), None);
    }

    #[test]
    fn a_failing_watch_is_not_kept_after_the_grace_and_kept_again_once_it_relists() {
        let t = Instant::now();
        let mut state = synced(t);
        state.observe(&failed(), t + S);
        assert_eq!(state.problem(t + S), None, "a single failure within the grace is normal");
        // The API server is down: the watch keeps failing at every retry.
        for i in 2..20 {
            state.observe(&failed(), t + i * S);
        }
        let problem = state.problem(t + 20 * S).expect("failing for 19 s");
        assert!(problem.contains("failing for 19s"), "{problem}");
        // Back: its resourceVersion is too old, it re-lists.
        state.observe::<()>(&Ok(watcher::Event::Init), t + 21 * S);
        assert!(state.problem(t + 21 * S).is_some(), "re-listing is not kept yet");
        state.observe::<()>(&Ok(watcher::Event::InitApply(())), t + 21 * S);
        state.observe::<()>(&Ok(watcher::Event::InitDone), t + 22 * S);
        assert_eq!(state.problem(t + 22 * S), None);
    }

    #[test]
    fn a_slow_relist_is_not_kept() {
        let t = Instant::now();
        let mut state = synced(t);
        state.observe::<()>(&Ok(watcher::Event::Init), t + S);
        assert_eq!(state.problem(t + 2 * S), None);
        let problem = state.problem(t + S + WATCH_GRACE + WATCH_QUIET).expect("re-listing for long");
        assert!(problem.contains("re-listing"), "{problem}");
    }

    #[test]
    fn a_watch_that_resumed_silently_is_kept_after_a_quiet_spell() {
        let t = Instant::now();
        let mut state = synced(t);
        for i in 1..10 {
            state.observe(&failed(), t + i * S);
        }
        assert!(state.problem(t + 10 * S).is_some());
        assert_eq!(state.problem(t + 9 * S + WATCH_QUIET), None, "no error for WATCH_QUIET: it resumed");
        // A later failure is new trouble, with its own grace.
        let later = t + 9 * S + WATCH_QUIET + S;
        state.observe(&failed(), later);
        assert_eq!(state.problem(later + S), None);
        assert!(state.problem(later + WATCH_GRACE).is_some());
        // Events stream again: kept at once.
        state.observe::<()>(&Ok(watcher::Event::Apply(())), later + WATCH_GRACE);
        assert_eq!(state.problem(later + WATCH_GRACE), None);
    }

    #[test]
    fn readiness_names_the_watch_that_fails() {
        let readiness = Readiness::new();
        readiness.watches().register("canaries");
        readiness.mark_ready();
        assert!(readiness.not_ready_because().unwrap().contains("the canaries watch has not synced"));
        readiness.watches().observe::<()>("canaries", &Ok(watcher::Event::Init));
        readiness.watches().observe::<()>("canaries", &Ok(watcher::Event::InitDone));
        assert!(readiness.not_ready_because().is_none());
        readiness.set_standby(true);
        readiness.watches().observe::<()>("canaries", &Ok(watcher::Event::Init));
        assert!(readiness.not_ready_because().is_none(), "a standby is ready whatever its caches");
    }
}
