//! Reads from the controller's watch caches instead of the API server.
//!
//! A release wakes each Canary a few dozen times (every status change of its target or
//! primary does), and each reconcile read the target, the primary and the Services
//! again: a release of 100 Canaries cost 18,000 API requests, 1.28 times Flagger's
//! (issue 15, docs/benchmarks.md). The watches that wake those reconciles hold the
//! objects anyway, and a reconcile woken by a change finds it in the cache (the
//! reflector stores an event before the controller sees it).
//!
//! Two things keep a cached object from being older than what a decision needs:
//! - a cache is read only while its watch keeps it (synced, no trouble since);
//! - petrel's own writes are remembered: until the watch has delivered an object at
//!   least as new as petrel's last write of it, the read goes to the API server. A
//!   target scaled up a moment ago must not look like the Deployment of zero replicas it
//!   was (which counts as ready).
//!
//! Anything else (no cache, an object the cache does not hold) is read from the API
//! server, as before.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

/// Whether a watch keeps its cache now: synced, and not failing or relisting. The
/// runtime's watch health answers; a cache is read only while it says so.
pub trait KeepsCache: Send + Sync {
    fn keeps(&self, watch: &'static str) -> bool;
}

/// A watch cache of `K` with the API server behind it. Cheap to clone; clones share it.
#[derive(Clone)]
pub struct WatchCache<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    kept: Option<Kept<K>>,
    /// The resourceVersion of petrel's last write of each object, until the cache holds it.
    written: Arc<Mutex<HashMap<ObjectRef<K>, String>>>,
}

#[derive(Clone)]
struct Kept<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store: Store<K>,
    health: Arc<dyn KeepsCache>,
    watch: &'static str,
}

impl<K> Default for WatchCache<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    /// No cache: every read goes to the API server.
    fn default() -> Self {
        WatchCache { kept: None, written: Arc::default() }
    }
}

impl<K> WatchCache<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope> + Clone + DeserializeOwned + Debug + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    /// Reads `store` while the watch `watch` (as `health` records it) keeps it.
    pub fn kept_by(store: Store<K>, health: impl KeepsCache + 'static, watch: &'static str) -> Self {
        WatchCache { kept: Some(Kept { store, health: Arc::new(health), watch }), written: Arc::default() }
    }

    /// The store itself, read as the watch left it (for what only needs a version).
    pub fn store(&self) -> Option<&Store<K>> {
        self.kept.as_ref().map(|kept| &kept.store)
    }

    /// The object `namespace/name`: from the cache when it may be trusted, else from the
    /// API server (`None`: it does not exist).
    pub async fn get(&self, client: &Client, namespace: &str, name: &str) -> Result<Option<K>, kube::Error> {
        let key = ObjectRef::new(name).within(namespace);
        if let Some(cached) = self.cached(&key) {
            return Ok(Some(cached));
        }
        // The write stays remembered until the cache itself holds it.
        Api::<K>::namespaced(client.clone(), namespace).get_opt(name).await
    }

    /// The cached object when the watch keeps the cache and it holds petrel's last write.
    fn cached(&self, key: &ObjectRef<K>) -> Option<K> {
        let kept = self.kept.as_ref()?;
        if !kept.health.keeps(kept.watch) {
            return None;
        }
        let cached = kept.store.get(key)?;
        let cached = cached.as_ref();
        if !self.forget_if_reached(key, cached) {
            return None;
        }
        Some(cached.clone())
    }

    /// Remembers what petrel wrote (the API server's answer to the write), so reads wait
    /// for the cache to hold it.
    pub fn wrote(&self, object: &K) {
        let (Some(namespace), Some(version)) = (object.namespace(), object.resource_version()) else {
            return;
        };
        let key = ObjectRef::new(&object.name_any()).within(&namespace);
        self.lock().insert(key, version);
    }

    /// Whether `object` is at least petrel's last write of it; once it is, the write is
    /// forgotten.
    fn forget_if_reached(&self, key: &ObjectRef<K>, object: &K) -> bool {
        let mut written = self.lock();
        let Some(version) = written.get(key) else {
            return true;
        };
        if !at_least(object.resource_version().as_deref(), version) {
            return false;
        }
        written.remove(key);
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<K>, String>> {
        // A panic while holding the lock leaves a consistent map (every change is one call).
        self.written.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Whether an object at resourceVersion `seen` is at least as new as `written`. Pure.
///
/// Kubernetes documents resourceVersions of one resource as comparable integers (KEP-5504,
/// `resourceversion.CompareResourceVersion`); anything else is compared for equality
/// only, so an unknown format never passes for newer.
pub fn at_least(seen: Option<&str>, written: &str) -> bool {
    let Some(seen) = seen else { return false };
    match (seen.parse::<u128>(), written.parse::<u128>()) {
        (Ok(seen), Ok(written)) => seen >= written,
        _ => seen == written,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;
    use kube::runtime::reflector;
    use kube::runtime::watcher;
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn newer_versions_are_integers_compared_and_anything_else_only_equal() {
        assert!(at_least(Some("120"), "120"));
        assert!(at_least(Some("121"), "120"));
        assert!(!at_least(Some("119"), "120"));
        assert!(at_least(Some("1000"), "999"), "compared as numbers, not as text");
        assert!(!at_least(None, "1"));
        assert!(at_least(Some("abc"), "abc"));
        assert!(!at_least(Some("abd"), "abc"));
        assert!(!at_least(Some("5"), "abc"));
    }

    proptest! {
        #[test]
        fn at_least_is_the_integer_order(seen in 0u64.., written in 0u64..) {
            prop_assert_eq!(at_least(Some(&seen.to_string()), &written.to_string()), seen >= written);
        }
    }

    fn deployment(name: &str, version: &str, replicas: i32) -> Deployment {
        let mut deployment = Deployment::default();
        deployment.metadata.name = Some(name.into());
        deployment.metadata.namespace = Some("apps".into());
        deployment.metadata.resource_version = Some(version.into());
        deployment.spec =
            Some(k8s_openapi::api::apps::v1::DeploymentSpec { replicas: Some(replicas), ..Default::default() });
        deployment
    }

    /// An API server that answers every GET with `answer`, and counts the GETs.
    fn api_answering(answer: Deployment) -> (Client, Arc<AtomicUsize>) {
        use http::{Request, Response};
        use kube::client::Body;
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let gets = Arc::new(AtomicUsize::new(0));
        let counted = gets.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                assert_eq!(request.method(), http::Method::GET);
                counted.fetch_add(1, Ordering::SeqCst);
                let body = serde_json::to_vec(&answer).unwrap();
                send.send_response(Response::builder().body(Body::from(body)).unwrap());
            }
        });
        (Client::new(service, "default"), gets)
    }

    /// A watch health that says every watch is (or is not) kept.
    struct Synced(bool);

    impl KeepsCache for Synced {
        fn keeps(&self, _watch: &'static str) -> bool {
            self.0
        }
    }

    /// A cache holding `cached`, whose watch has synced (or not).
    fn cache_holding(cached: Deployment, synced: bool) -> WatchCache<Deployment> {
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitApply(cached));
        writer.apply_watcher_event(&watcher::Event::InitDone);
        WatchCache::kept_by(store, Synced(synced), "deployments")
    }

    #[tokio::test]
    async fn a_kept_cache_answers_without_a_request() {
        let (client, gets) = api_answering(deployment("podinfo", "10", 1));
        let cache = cache_holding(deployment("podinfo", "10", 1), true);
        let read = cache.get(&client, "apps", "podinfo").await.unwrap().unwrap();
        assert_eq!(read.resource_version().as_deref(), Some("10"));
        assert_eq!(gets.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn an_unsynced_cache_or_an_object_it_lacks_is_read_from_the_api_server() {
        let (client, gets) = api_answering(deployment("podinfo", "10", 1));
        let unsynced = cache_holding(deployment("podinfo", "10", 1), false);
        unsynced.get(&client, "apps", "podinfo").await.unwrap().unwrap();
        assert_eq!(gets.load(Ordering::SeqCst), 1);
        let synced = cache_holding(deployment("other", "10", 1), true);
        synced.get(&client, "apps", "podinfo").await.unwrap().unwrap();
        assert_eq!(gets.load(Ordering::SeqCst), 2);
        WatchCache::<Deployment>::default().get(&client, "apps", "podinfo").await.unwrap().unwrap();
        assert_eq!(gets.load(Ordering::SeqCst), 3);
    }

    /// The defect this guards against: right after petrel scaled the target from 0 to 3,
    /// a cache still at the 0-replica Deployment would say the canary is ready.
    #[tokio::test]
    async fn after_petrels_own_write_the_cache_is_read_only_once_it_holds_the_write() {
        let (client, gets) = api_answering(deployment("podinfo", "11", 3));
        let cache = cache_holding(deployment("podinfo", "10", 0), true);
        cache.wrote(&deployment("podinfo", "11", 3));
        let read = cache.get(&client, "apps", "podinfo").await.unwrap().unwrap();
        assert_eq!(read.spec.unwrap().replicas, Some(3), "not the cached Deployment from before the write");
        assert_eq!(gets.load(Ordering::SeqCst), 1);
        cache.get(&client, "apps", "podinfo").await.unwrap().unwrap();
        assert_eq!(gets.load(Ordering::SeqCst), 2, "the API server again, until the cache holds the write");
        let caught_up = cache_holding(deployment("podinfo", "12", 3), true);
        caught_up.wrote(&deployment("podinfo", "11", 3));
        caught_up.get(&client, "apps", "podinfo").await.unwrap().unwrap();
        caught_up.get(&client, "apps", "podinfo").await.unwrap().unwrap();
        assert_eq!(gets.load(Ordering::SeqCst), 2, "a cache past the write answers");
    }
}
