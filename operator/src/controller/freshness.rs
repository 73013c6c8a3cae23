//! Deciding from a Canary at least as new as petrel's own last status write.
//!
//! Reconciles get the Canary from the watch cache. After petrel writes a status, the
//! cache holds the older object until the watch delivers the new one, and longer when
//! the watch is broken (issue 11, defect 6: after an API server restart petrel advanced
//! 20 → 30 eleven times from a cached status at 20). Every status write carries the
//! resourceVersion it was decided from, so a decision from a stale object is refused
//! with a 409 Conflict; this module makes that rare, and makes the retry read again: it
//! remembers the resourceVersion each status write returned, and a reconcile whose
//! cached Canary is not at least at that version reads the Canary from the API server
//! first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::{Api, ResourceExt};

use super::Error;
use crate::api::Canary;

/// Why a status write was not made.
#[derive(Debug)]
pub enum WriteOutcome {
    /// Written; the API server answered with this resourceVersion.
    Written(Option<String>),
    /// Nothing changed: nothing was written.
    Unchanged,
    /// The Canary changed since it was read (409): nothing was written.
    Conflict,
}

/// What petrel knows of the newest version of each Canary (by `namespace/name`).
#[derive(Clone, Debug, Default)]
pub struct StatusVersions {
    known: Arc<Mutex<HashMap<String, Known>>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Known {
    /// The Canary is at least at this resourceVersion (petrel wrote or read it).
    AtLeast(String),
    /// A write was refused: whatever the cache holds is older than the API server's.
    Stale,
}

fn key(canary: &Canary) -> String {
    format!("{}/{}", canary.namespace().unwrap_or_default(), canary.name_any())
}

/// Whether a cached object at `cached` may be older than what petrel knows exists. Pure.
fn cache_may_be_stale(known: Option<&Known>, cached: Option<&str>) -> bool {
    match known {
        None => false,
        Some(Known::Stale) => true,
        // A cache that holds a newer Canary than petrel's write (someone wrote after it)
        // is as good as a read: resourceVersions are compared as `cache::at_least` does.
        Some(Known::AtLeast(version)) => !crate::cache::at_least(cached, version),
    }
}

impl StatusVersions {
    /// The Canary to decide from: `cached` when the cache holds at least what petrel last
    /// wrote, else the API server's (`None` when it was deleted meanwhile).
    pub async fn current(&self, client: &kube::Client, cached: &Canary) -> Result<Option<Canary>, Error> {
        let key = key(cached);
        if !cache_may_be_stale(self.lock().get(&key), cached.resource_version().as_deref()) {
            return Ok(Some(cached.clone()));
        }
        let namespace = cached.namespace().ok_or(Error::MissingNamespace)?;
        let api: Api<Canary> = Api::namespaced(client.clone(), &namespace);
        let fresh = api.get_opt(&cached.name_any()).await.map_err(Error::kube("reading the Canary again"))?;
        match &fresh {
            Some(canary) => self.seen(&key, canary.resource_version()),
            None => {
                self.lock().remove(&key);
            }
        }
        Ok(fresh)
    }

    /// Records the outcome of a status write.
    pub fn record(&self, canary: &Canary, outcome: &WriteOutcome) {
        let key = key(canary);
        match outcome {
            WriteOutcome::Written(version) => self.seen(&key, version.clone()),
            WriteOutcome::Unchanged => {}
            WriteOutcome::Conflict => {
                self.lock().insert(key, Known::Stale);
            }
        }
    }

    /// Forgets Canaries that are gone (`live` holds the `namespace/name` of those that are not).
    pub fn retain(&self, live: &std::collections::HashSet<String>) {
        self.lock().retain(|key, _| live.contains(key));
    }

    fn seen(&self, key: &str, version: Option<String>) {
        match version {
            Some(version) => self.lock().insert(key.to_string(), Known::AtLeast(version)),
            None => self.lock().remove(key),
        };
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Known>> {
        // A panic while holding the lock leaves a consistent map (every change is one call).
        self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An API server that answers every GET of the Canary with `version`, and counts them.
    fn api_at(version: &'static str) -> (kube::Client, Arc<AtomicUsize>) {
        use http::{Request, Response};
        use kube::client::Body;
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let gets = Arc::new(AtomicUsize::new(0));
        let counted = gets.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                assert_eq!(request.method(), "GET");
                counted.fetch_add(1, Ordering::SeqCst);
                let body = serde_json::to_vec(&canary(version)).unwrap();
                send.send_response(Response::builder().status(200).body(Body::from(body)).unwrap());
            }
        });
        (kube::Client::new(service, "default"), gets)
    }

    fn canary(version: &str) -> Canary {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "petrel.dev/v1alpha1", "kind": "Canary",
            "metadata": {"name": "podinfo", "namespace": "test", "resourceVersion": version},
            "spec": {"targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"}, "service": {"port": 9898}},
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn reads_again_only_when_the_cache_is_behind_or_a_write_was_refused() {
        let (client, gets) = api_at("12");
        let versions = StatusVersions::default();
        let fresh = versions.current(&client, &canary("10")).await.unwrap().unwrap();
        assert_eq!((fresh.resource_version().as_deref(), gets.load(Ordering::SeqCst)), (Some("10"), 0));

        versions.record(&canary("10"), &WriteOutcome::Written(Some("12".into())));
        let fresh = versions.current(&client, &canary("10")).await.unwrap().unwrap();
        assert_eq!(fresh.resource_version().as_deref(), Some("12"), "the stale cache is not decided from");
        assert_eq!(gets.load(Ordering::SeqCst), 1);
        versions.current(&client, &canary("12")).await.unwrap();
        assert_eq!(gets.load(Ordering::SeqCst), 1, "the cache caught up: no read");

        versions.record(&canary("12"), &WriteOutcome::Conflict);
        versions.current(&client, &canary("12")).await.unwrap();
        assert_eq!(gets.load(Ordering::SeqCst), 2, "after a 409 the Canary is read again");
        versions.current(&client, &canary("12")).await.unwrap();
        assert_eq!(gets.load(Ordering::SeqCst), 2, "and that read is trusted");
    }

    #[test]
    fn the_cache_is_trusted_only_at_the_version_petrel_last_saw() {
        assert!(!cache_may_be_stale(None, Some("10")), "nothing written since start: the cache is all there is");
        let at = |v: &str| Known::AtLeast(v.to_string());
        assert!(!cache_may_be_stale(Some(&at("12")), Some("12")));
        assert!(cache_may_be_stale(Some(&at("12")), Some("10")), "the watch has not delivered petrel's write");
        assert!(!cache_may_be_stale(Some(&at("12")), Some("13")), "someone wrote after petrel: the cache has it");
        assert!(cache_may_be_stale(Some(&at("12")), Some("9")), "compared as numbers, not as text");
        assert!(cache_may_be_stale(Some(&at("a12")), Some("a13")), "an unknown format is trusted only when equal");
        assert!(!cache_may_be_stale(Some(&at("a12")), Some("a12")));
        assert!(cache_may_be_stale(Some(&at("12")), None), "a cached Canary without a version is not trusted");
        assert!(cache_may_be_stale(Some(&Known::Stale), Some("12")), "a refused write: read again");
    }
}
