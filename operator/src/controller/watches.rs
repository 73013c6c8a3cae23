//! The watches behind the controller's caches, each recovering on its own.
//!
//! kube's `Controller` puts one backoff around all its trigger streams together: an
//! error of any watch (a Secret watch whose resourceVersion expired, an API server that
//! answers 429 while its cache re-initialises) stops polling every watch, the Canaries'
//! included, for up to the backoff's 30 s, again at each error. After an API server
//! restart that kept the Canary cache stale for minutes while reconciles, scheduled
//! apart from the watches, went on deciding from it (issue 11, defect 6). So each watch
//! here has its own short backoff, reports its health to `/readyz`, and passes only
//! objects on to the controller: an error never reaches the shared backoff.

use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::runtime::utils::Backoff;
use kube::runtime::{WatchStreamExt, watcher};

use crate::telemetry::WatchHealth;

/// First wait after a watch error.
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// Longest wait between two attempts of a failing watch: short, so a watch is back soon
/// after its API server (readiness counts on a failing watch failing again within
/// [`crate::telemetry::WATCH_QUIET`]), and one request per watch every few seconds is
/// nothing for an API server that answers.
const LAST_RETRY: Duration = Duration::from_secs(5);

/// Exponential backoff from [`FIRST_RETRY`] to [`LAST_RETRY`], reset by any event.
#[derive(Clone, Debug)]
pub struct RetryBackoff {
    next: Duration,
}

impl Default for RetryBackoff {
    fn default() -> Self {
        RetryBackoff { next: FIRST_RETRY }
    }
}

impl Iterator for RetryBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let wait = self.next;
        self.next = (self.next * 2).min(LAST_RETRY);
        Some(wait)
    }
}

impl Backoff for RetryBackoff {
    fn reset(&mut self) {
        self.next = FIRST_RETRY;
    }
}

/// A watch stream with its own backoff whose every event is recorded in `health` under
/// `name` (registered now, so readiness waits for its first list).
pub fn kept<K, S>(name: &'static str, events: S, health: &WatchHealth) -> impl Stream<Item = S::Item> + Send + use<K, S>
where
    K: Send,
    S: Stream<Item = watcher::Result<watcher::Event<K>>> + Send,
{
    health.register(name);
    let health = health.clone();
    events
        .inspect(move |event| health.observe(name, event))
        // An expired resourceVersion is no failure of the API server: the watcher has
        // already dropped it and re-lists on the next poll, which must not wait.
        .filter(|event| std::future::ready(!is_expired(event)))
        .backoff(RetryBackoff::default())
}

/// Whether the watch said its resourceVersion is too old (410 Gone).
fn is_expired<K>(event: &watcher::Result<watcher::Event<K>>) -> bool {
    matches!(event, Err(watcher::Error::WatchError(status)) if status.code == 410)
}

/// For `.modify` on a watch whose objects are cached: their managedFields go, since
/// nothing in petrel reads them and every write (petrel's status writes included) adds
/// to them.
pub fn drop_managed_fields<K: kube::ResourceExt>(object: &mut K) {
    object.managed_fields_mut().clear();
}

/// Only the objects of a stream: its errors were recorded (and logged) by [`kept`], and
/// one passed on would stop every other watch of the controller (see module docs).
pub fn objects_only<K: Send>(
    objects: impl Stream<Item = watcher::Result<K>> + Send,
) -> impl Stream<Item = watcher::Result<K>> + Send {
    objects.filter(|object| std::future::ready(object.is_ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_up_to_a_few_seconds_and_reset() {
        let mut backoff = RetryBackoff::default();
        let waits: Vec<u64> = backoff.by_ref().take(6).map(|d| d.as_millis() as u64).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 5000, 5000]);
        backoff.reset();
        assert_eq!(backoff.next(), Some(FIRST_RETRY));
    }

    #[tokio::test]
    async fn errors_are_recorded_and_never_passed_on() {
        let health = WatchHealth::default();
        let events = futures::stream::iter(vec![
            Ok(watcher::Event::Init),
            Ok(watcher::Event::InitApply(1)),
            Ok(watcher::Event::InitDone),
            Err(watcher::Error::NoResourceVersion),
            Ok(watcher::Event::Apply(2)),
        ]);
        let kept_events = kept("numbers", events, &health);
        let objects: Vec<i32> = objects_only(kept_events.applied_objects()).map(|o| o.unwrap()).collect().await;
        assert_eq!(objects, [1, 2]);
        assert!(health.synced("numbers"));
        assert!(health.problems(std::time::Instant::now()).is_empty(), "the Apply after the error shows it recovered");
    }
}
