//! When a watch event last woke each Canary, so that the time it then waits for its
//! reconcile is measured (`petrel_reconcile_wait_seconds`).
//!
//! A release of 1,000 Canaries at once took seconds to detect (docs/benchmarks.md), and
//! the API server's audit log cannot tell where those seconds go: the watch's delivery,
//! the controller's queue, or the wait for a worker thread. This measures the last two:
//! from the event's arrival in petrel (the mapper that names the Canaries it concerns) to
//! the first poll of the reconcile task.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::runtime::reflector::ObjectRef;

use crate::api::Canary;

/// The first wake of each Canary not yet served by a reconcile, keyed by `namespace/name`.
/// Cheap to clone; clones share it. Holds at most one entry per Canary woken.
#[derive(Clone, Debug, Default)]
pub struct WakeTimes {
    woken: Arc<Mutex<HashMap<String, Instant>>>,
}

fn key_of(canary: &ObjectRef<Canary>) -> String {
    format!("{}/{}", canary.namespace.as_deref().unwrap_or_default(), canary.name)
}

impl WakeTimes {
    /// Notes that `canaries` were woken now and passes them on (for a mapper). A Canary
    /// already waiting keeps its first wake: the wait is measured from the oldest event
    /// its reconcile serves.
    pub fn woke(&self, canaries: Vec<ObjectRef<Canary>>) -> Vec<ObjectRef<Canary>> {
        self.woke_at(&canaries, Instant::now());
        canaries
    }

    fn woke_at(&self, canaries: &[ObjectRef<Canary>], now: Instant) {
        let mut woken = self.lock();
        for canary in canaries {
            woken.entry(key_of(canary)).or_insert(now);
        }
    }

    /// How long `canary` waited since its first wake not yet served, and forgets that wake;
    /// `None` for a reconcile no watch event asked for (a requeue, a retry).
    pub fn served(&self, canary: &ObjectRef<Canary>) -> Option<Duration> {
        self.served_at(canary, Instant::now())
    }

    fn served_at(&self, canary: &ObjectRef<Canary>, now: Instant) -> Option<Duration> {
        self.lock().remove(&key_of(canary)).map(|woken| now.saturating_duration_since(woken))
    }

    /// Forgets the wakes of Canaries not in `live` (`namespace/name`): a mapper may name
    /// one that does not exist (an owner reference), which is then never reconciled.
    pub fn retain(&self, live: &HashSet<String>) {
        self.lock().retain(|key, _| live.contains(key));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        // A panic while holding the lock leaves a consistent map (every change is one call).
        self.woken.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canary(name: &str) -> ObjectRef<Canary> {
        ObjectRef::new(name).within("apps")
    }

    #[test]
    fn a_reconcile_is_timed_from_the_first_wake_it_serves() {
        let wakes = WakeTimes::default();
        let start = Instant::now();
        assert_eq!(wakes.served_at(&canary("a"), start), None, "a requeue: no wake to serve");
        wakes.woke_at(&[canary("a"), canary("b")], start);
        // A second event before the reconcile starts does not move the first wake.
        wakes.woke_at(&[canary("a")], start + Duration::from_millis(300));
        assert_eq!(wakes.served_at(&canary("a"), start + Duration::from_secs(2)), Some(Duration::from_secs(2)));
        assert_eq!(wakes.served_at(&canary("a"), start + Duration::from_secs(3)), None, "served once");
        // A wake after the reconcile started is the next reconcile's.
        wakes.woke_at(&[canary("a")], start + Duration::from_secs(4));
        assert_eq!(
            wakes.served_at(&canary("a"), start + Duration::from_millis(4_500)),
            Some(Duration::from_millis(500))
        );
        assert_eq!(wakes.served_at(&canary("b"), start + Duration::from_secs(1)), Some(Duration::from_secs(1)));
    }

    #[test]
    fn wakes_of_canaries_gone_are_forgotten() {
        let wakes = WakeTimes::default();
        assert_eq!(wakes.woke(vec![canary("a"), canary("ghost")]).len(), 2, "the mapper's answer is passed on");
        wakes.retain(&HashSet::from(["apps/a".to_string()]));
        assert!(wakes.served(&canary("ghost")).is_none());
        assert!(wakes.served(&canary("a")).is_some());
    }
}
