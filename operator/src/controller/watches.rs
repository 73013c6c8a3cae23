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

/// The annotation in which a client-side `kubectl apply` keeps a copy of the whole
/// object it applied.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// For `.modify` on a watch whose objects are cached: what nothing in petrel reads goes,
/// so that 1,000 cached Canaries and their Deployments, and every Secret's metadata, do
/// not hold it (issues 15 and 16; for a Secret the last-applied copy is its data): the
/// managedFields (every write, petrel's status writes included, adds to them) and
/// kubectl's last-applied copy of the object (never copied to a generated object either:
/// `workloads::primary::copyable_metadata`). petrel never writes a cached object back
/// whole, so what is dropped here is only forgotten, never removed from the cluster.
pub fn drop_unread_fields<K: kube::ResourceExt>(object: &mut K) {
    object.managed_fields_mut().clear();
    if let Some(annotations) = object.meta_mut().annotations.as_mut() {
        annotations.remove(LAST_APPLIED_ANNOTATION);
    }
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

    #[test]
    fn cached_objects_keep_what_petrel_reads_and_lose_what_it_never_does() {
        use k8s_openapi::api::apps::v1::Deployment;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
        let mut deployment = Deployment::default();
        deployment.metadata.name = Some("podinfo".into());
        deployment.metadata.annotations = Some(
            [
                (LAST_APPLIED_ANNOTATION.to_string(), "{\"spec\":{}}".to_string()),
                ("team".to_string(), "web".to_string()),
            ]
            .into(),
        );
        deployment.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default()]);
        deployment.spec = Some(Default::default());
        let mut kept = deployment.clone();
        drop_unread_fields(&mut kept);
        assert_eq!(kept.metadata.annotations, Some([("team".to_string(), "web".to_string())].into()));
        assert_eq!(kept.metadata.managed_fields, Some(vec![]));
        assert_eq!((kept.metadata.name, kept.spec), (deployment.metadata.name, deployment.spec));
    }

    /// A Secret applied with `kubectl apply` carries its data in the last-applied
    /// annotation, even in the metadata the Secret watch caches: it must not stay there.
    #[test]
    fn cached_secret_metadata_loses_the_applied_copy_of_the_data() {
        use k8s_openapi::api::core::v1::Secret;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
        use kube::core::PartialObjectMeta;
        let mut secret: PartialObjectMeta<Secret> = serde_json::from_value(serde_json::json!({
            "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
            "metadata": {"name": "api-token", "namespace": "apps", "resourceVersion": "42",
                "annotations": {LAST_APPLIED_ANNOTATION: "{\"data\":{\"token\":\"c2VjcmV0\"}}"}},
        }))
        .unwrap();
        secret.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default()]);
        drop_unread_fields(&mut secret);
        assert_eq!(secret.metadata.annotations, Some(Default::default()));
        assert_eq!(secret.metadata.managed_fields, Some(vec![]));
        assert_eq!(secret.metadata.resource_version.as_deref(), Some("42"), "the version the analysis compares stays");
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
