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

use kube::core::{ObjectMeta, PartialObjectMeta};
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
    /// When the watch keeps some objects by their metadata only ([`WatchCache::partly_kept`]).
    partial: Option<Partial<K>>,
}

/// How to tell an object the watch keeps whole from one it keeps by its metadata only,
/// and the whole ones read from the API server for the latter.
#[derive(Clone)]
struct Partial<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    is_whole: fn(&K) -> bool,
    copies: ReadCopies<K>,
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

impl<K> Kept<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    /// The store, while the watch keeps it.
    fn store_if_kept(&self) -> Option<&Store<K>> {
        self.health.keeps(self.watch).then_some(&self.store)
    }
}

impl<K> Default for WatchCache<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    /// No cache: every read goes to the API server.
    fn default() -> Self {
        WatchCache { kept: None, written: Arc::default(), partial: None }
    }
}

impl<K> WatchCache<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope> + Clone + DeserializeOwned + Debug + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    /// Reads `store` while the watch `watch` (as `health` records it) keeps it.
    pub fn kept_by(store: Store<K>, health: impl KeepsCache + 'static, watch: &'static str) -> Self {
        WatchCache {
            kept: Some(Kept { store, health: Arc::new(health), watch }),
            written: Arc::default(),
            partial: None,
        }
    }

    /// For a watch that keeps some objects by their metadata only (to save memory: those
    /// no reader is expected to ask for), told apart by `is_whole`. Such an object is
    /// read whole from the API server when asked for, and that copy is reused while the
    /// watch shows the object at the version it was read at.
    pub fn partly_kept(self, is_whole: fn(&K) -> bool) -> Self {
        WatchCache { partial: Some(Partial { is_whole, copies: ReadCopies::default() }), ..self }
    }

    /// The store itself, read as the watch left it (for what only needs a version).
    pub fn store(&self) -> Option<&Store<K>> {
        self.kept.as_ref().map(|kept| &kept.store)
    }

    /// The object `namespace/name`: from the cache when it may be trusted, else from the
    /// API server (`None`: it does not exist).
    /// The object is shared with the cache, not copied: a reconcile holds it for as long
    /// as it runs, and 1,000 reconciles at once each held their own copies of the target
    /// and the primary (5 MB at the peak of a release of 1,000, issue 15).
    pub async fn get(&self, client: &Client, namespace: &str, name: &str) -> Result<Option<Arc<K>>, kube::Error> {
        let key = ObjectRef::new(name).within(namespace);
        let cached = self.cached(&key);
        let partly_kept = match (cached, &self.partial) {
            (Some(cached), Some(partial)) if !(partial.is_whole)(&cached) => Some((cached, partial)),
            (Some(cached), _) => return Ok(Some(cached)),
            (None, _) => None,
        };
        if let Some((cached, partial)) = &partly_kept
            && let Some(copy) = partial.copies.at(&key, cached.resource_version().as_deref())
        {
            return Ok(Some(copy));
        }
        // The write stays remembered until the cache itself holds it.
        let read = Api::<K>::namespaced(client.clone(), namespace).get_opt(name).await?.map(Arc::new);
        if let Some((_, partial)) = partly_kept {
            partial.copies.keep(key, read.clone());
        }
        Ok(read)
    }

    /// Forgets the whole copies of objects the watch now keeps whole, at another version,
    /// or not at all (deleted), while it keeps its cache.
    pub fn forget_stale_copies(&self) {
        let (Some(partial), Some(store)) = (&self.partial, self.kept.as_ref().and_then(Kept::store_if_kept)) else {
            return;
        };
        partial.copies.retain(|key, read_at| {
            store.get(key).is_some_and(|cached| {
                !(partial.is_whole)(&cached) && cached.resource_version().as_deref() == Some(read_at)
            })
        });
    }

    /// How many whole copies of partly kept objects are held.
    #[cfg(test)]
    fn copies(&self) -> usize {
        self.partial.as_ref().map_or(0, |partial| partial.copies.len())
    }

    /// The cached object when the watch keeps the cache and it holds petrel's last write.
    fn cached(&self, key: &ObjectRef<K>) -> Option<Arc<K>> {
        let cached = self.kept.as_ref()?.store_if_kept()?.get(key)?;
        if !self.forget_if_reached(key, &cached) {
            return None;
        }
        Some(cached)
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

/// Whole objects read from the API server, each with the resourceVersion it was read at:
/// reused while a watch shows that version ([`ReadsAtVersion`], [`WatchCache::partly_kept`]).
/// Cheap to clone; clones share it.
struct ReadCopies<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    read: Arc<Mutex<ReadAt<K>>>,
}

impl<K> Clone for ReadCopies<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    fn clone(&self) -> Self {
        ReadCopies { read: self.read.clone() }
    }
}

impl<K> Default for ReadCopies<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    fn default() -> Self {
        ReadCopies { read: Arc::default() }
    }
}

impl<K> ReadCopies<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    /// The copy of `key` read at `version`, if one is held.
    fn at(&self, key: &ObjectRef<K>, version: Option<&str>) -> Option<Arc<K>> {
        let version = version?;
        self.lock().get(key).filter(|(read_at, _)| read_at == version).map(|(_, object)| object.clone())
    }

    /// Holds what was read of `key` (forgets it when it is gone or has no version).
    fn keep(&self, key: ObjectRef<K>, read: Option<Arc<K>>) {
        let mut held = self.lock();
        match read.and_then(|object| Some((object.resource_version()?, object))) {
            Some(versioned) => held.insert(key, versioned),
            None => held.remove(&key),
        };
    }

    /// Keeps the copies for which `keep(key, version read at)` holds.
    fn retain(&self, mut keep: impl FnMut(&ObjectRef<K>, &str) -> bool) {
        self.lock().retain(|key, (read_at, _)| keep(key, read_at));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReadAt<K>> {
        // A panic while holding the lock leaves a consistent map (every change is one call).
        self.read.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Whole objects read from the API server, reused while a metadata-only watch shows them
/// at the resourceVersion they were read at. For what petrel reads whole on every
/// reconcile but must not cache whole for the cluster: the ConfigMaps and Secrets a
/// target's pods use (a Canary whose target uses 200 ConfigMaps made 200 GETs on every
/// reconcile, 8,600 in one release; caching every ConfigMap and Secret of the cluster
/// would hold data petrel never reads). Only objects read are kept, and an object the
/// watch no longer holds is forgotten. Cheap to clone; clones share it.
#[derive(Clone)]
pub struct ReadsAtVersion<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    versions: Option<Kept<PartialObjectMeta<K>>>,
    read: ReadCopies<K>,
}

/// Each object read: the resourceVersion it was read at, and the object.
type ReadAt<K> = HashMap<ObjectRef<K>, (String, Arc<K>)>;

impl<K> Default for ReadsAtVersion<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    /// No watch: every read goes to the API server.
    fn default() -> Self {
        ReadsAtVersion { versions: None, read: ReadCopies::default() }
    }
}

impl<K> ReadsAtVersion<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope> + Clone + DeserializeOwned + Debug + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    /// Compares with the versions in `store` while the watch `watch` keeps it.
    pub fn kept_by(store: Store<PartialObjectMeta<K>>, health: impl KeepsCache + 'static, watch: &'static str) -> Self {
        ReadsAtVersion { versions: Some(Kept { store, health: Arc::new(health), watch }), read: ReadCopies::default() }
    }

    /// The object `namespace/name` (`None`: it does not exist): the copy read before when
    /// the watch shows it unchanged since, else read from the API server. Shared with what
    /// is kept, not copied: a target using 200 ConfigMaps would otherwise copy all their
    /// data on every reconcile.
    pub async fn get(&self, client: &Client, namespace: &str, name: &str) -> Result<Option<Arc<K>>, kube::Error> {
        if let Some(kept) = self.kept(namespace, name) {
            return Ok(Some(kept));
        }
        let read = Api::<K>::namespaced(client.clone(), namespace).get_opt(name).await?.map(Arc::new);
        // Nothing is kept without a watch to compare with.
        if self.versions.is_some() {
            self.read.keep(ObjectRef::new(name).within(namespace), read.clone());
        }
        Ok(read)
    }

    /// The object `namespace/name` as last read, without a request, while the watch shows
    /// it still at that resourceVersion; `None` otherwise (never read, changed since, or
    /// the watch does not keep its cache).
    fn kept(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        let current = self.current_version(namespace, name)?;
        self.read.at(&ObjectRef::new(name).within(namespace), Some(&current))
    }

    /// What the watch shows of `namespace/name`'s version, for the [`WriteLedger`] of
    /// what petrel writes to such objects: `Version(None)` when the watch does not hold it
    /// or does not keep its cache, so that a write is not skipped on a guess.
    ///
    /// [`WriteLedger`]: crate::WriteLedger
    pub fn observed(&self, namespace: &str, name: &str) -> crate::Observed {
        crate::Observed::Version(self.current_version(namespace, name))
    }

    /// The resourceVersion the watch shows, when it keeps its cache and holds the object.
    /// An object it lacks may be new (the watch behind) or gone: it is read, not assumed.
    fn current_version(&self, namespace: &str, name: &str) -> Option<String> {
        let store = self.versions.as_ref()?.store_if_kept()?;
        store.get(&ObjectRef::new(name).within(namespace))?.resource_version()
    }

    /// Forgets the objects the watch no longer holds (deleted), while it keeps its cache.
    pub fn forget_gone(&self) {
        let Some(store) = self.versions.as_ref().and_then(Kept::store_if_kept) else { return };
        self.read.retain(|key, _| {
            let namespace = key.namespace.as_deref().unwrap_or_default();
            store.get(&ObjectRef::new(&key.name).within(namespace)).is_some()
        });
    }

    /// How many objects are kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.read.len()
    }
}

/// What a cache keeps of an object's metadata when it keeps little of the object: what
/// names and versions it, and who owns it (kube-runtime maps a change to its owner by the
/// owner references). Labels, annotations and managedFields go.
pub fn identifying_metadata(metadata: ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: metadata.name,
        namespace: metadata.namespace,
        resource_version: metadata.resource_version,
        uid: metadata.uid,
        owner_references: metadata.owner_references,
        deletion_timestamp: metadata.deletion_timestamp,
        ..ObjectMeta::default()
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
        let held = cache.store().unwrap().get(&ObjectRef::new("podinfo").within("apps")).unwrap();
        assert!(Arc::ptr_eq(&read, &held), "the cache's object itself, not a copy of it");
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
        assert_eq!(read.spec.as_ref().unwrap().replicas, Some(3), "not the cached Deployment from before the write");
        assert_eq!(gets.load(Ordering::SeqCst), 1);
        cache.get(&client, "apps", "podinfo").await.unwrap().unwrap();
        assert_eq!(gets.load(Ordering::SeqCst), 2, "the API server again, until the cache holds the write");
        let caught_up = cache_holding(deployment("podinfo", "12", 3), true);
        caught_up.wrote(&deployment("podinfo", "11", 3));
        caught_up.get(&client, "apps", "podinfo").await.unwrap().unwrap();
        caught_up.get(&client, "apps", "podinfo").await.unwrap().unwrap();
        assert_eq!(gets.load(Ordering::SeqCst), 2, "a cache past the write answers");
    }

    /// A Deployment as a partly kept watch holds one it keeps by metadata only.
    fn metadata_only(name: &str, version: &str) -> Deployment {
        Deployment { spec: None, ..deployment(name, version, 0) }
    }

    #[tokio::test]
    async fn an_object_kept_by_its_metadata_is_read_whole_once_per_version() {
        let (client, gets) = api_answering(deployment("podinfo", "10", 3));
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitApply(metadata_only("podinfo", "10")));
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let cache =
            WatchCache::kept_by(store, Synced(true), "deployments").partly_kept(|d: &Deployment| d.spec.is_some());

        let first = cache.get(&client, "apps", "podinfo").await.unwrap().unwrap();
        assert_eq!(first.spec.as_ref().and_then(|spec| spec.replicas), Some(3), "the whole object, not the metadata");
        let again = cache.get(&client, "apps", "podinfo").await.unwrap().unwrap();
        assert!(Arc::ptr_eq(&first, &again), "the copy read at version 10 is reused");
        assert_eq!(gets.load(Ordering::SeqCst), 1);

        // Changed, still kept by metadata: read again (the fake answers version 10, so
        // what it reads is not what the watch shows, and it is read each time).
        writer.apply_watcher_event(&watcher::Event::Apply(metadata_only("podinfo", "11")));
        cache.get(&client, "apps", "podinfo").await.unwrap().unwrap();
        assert_eq!(gets.load(Ordering::SeqCst), 2);
        cache.forget_stale_copies();
        assert_eq!(cache.copies(), 0, "a copy at a version the watch no longer shows goes");

        // Kept whole now: the cache answers, and the copy is no longer held.
        writer.apply_watcher_event(&watcher::Event::Apply(metadata_only("podinfo", "12")));
        cache.get(&client, "apps", "podinfo").await.unwrap().unwrap();
        assert_eq!((gets.load(Ordering::SeqCst), cache.copies()), (3, 1));
        writer.apply_watcher_event(&watcher::Event::Apply(deployment("podinfo", "13", 5)));
        let whole = cache.get(&client, "apps", "podinfo").await.unwrap().unwrap();
        assert_eq!(whole.spec.as_ref().and_then(|spec| spec.replicas), Some(5));
        assert_eq!(gets.load(Ordering::SeqCst), 3);
        cache.forget_stale_copies();
        assert_eq!(cache.copies(), 0);

        // Without `partly_kept`, a cache takes what it holds as the whole object.
        let plain = cache_holding(metadata_only("podinfo", "10"), true);
        assert!(plain.get(&client, "apps", "podinfo").await.unwrap().unwrap().spec.is_none());
        assert_eq!(gets.load(Ordering::SeqCst), 3);
    }

    fn meta_of(deployment: &Deployment) -> PartialObjectMeta<Deployment> {
        PartialObjectMeta { metadata: deployment.metadata.clone(), ..Default::default() }
    }

    /// Reads compared with a metadata watch that holds `shown`, synced (or not).
    fn reads_comparing_with(
        shown: &[Deployment],
        synced: bool,
    ) -> (ReadsAtVersion<Deployment>, reflector::store::Writer<PartialObjectMeta<Deployment>>) {
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        for deployment in shown {
            writer.apply_watcher_event(&watcher::Event::InitApply(meta_of(deployment)));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        (ReadsAtVersion::kept_by(store, Synced(synced), "deployments"), writer)
    }

    #[tokio::test]
    async fn an_object_read_once_is_read_again_only_when_the_watch_shows_a_new_version() {
        let (client, gets) = api_answering(deployment("podinfo", "10", 1));
        let (reads, mut writer) = reads_comparing_with(&[deployment("podinfo", "10", 1)], true);
        let first = reads.get(&client, "apps", "podinfo").await.unwrap().unwrap();
        for _ in 0..2 {
            let read = reads.get(&client, "apps", "podinfo").await.unwrap().unwrap();
            assert_eq!(read.resource_version().as_deref(), Some("10"));
            assert!(Arc::ptr_eq(&read, &first), "the object kept, shared rather than copied");
        }
        assert_eq!(gets.load(Ordering::SeqCst), 1, "one GET, then the object kept");
        // The object changed: the watch shows version 11, so it is read again.
        writer.apply_watcher_event(&watcher::Event::Apply(meta_of(&deployment("podinfo", "11", 1))));
        reads.get(&client, "apps", "podinfo").await.unwrap().unwrap();
        assert_eq!(gets.load(Ordering::SeqCst), 2);
        // The API server answered version 10 (this fake's only answer), not 11: kept at
        // 10, so the next read asks again until what it reads is what the watch shows.
        reads.get(&client, "apps", "podinfo").await.unwrap().unwrap();
        assert_eq!(gets.load(Ordering::SeqCst), 3);
        assert_eq!(reads.len(), 1);
        // Deleted: forgotten.
        writer.apply_watcher_event(&watcher::Event::Delete(meta_of(&deployment("podinfo", "11", 1))));
        reads.forget_gone();
        assert_eq!(reads.len(), 0);
    }

    /// What a write ledger is told of an object's version: the watch's, and `None` (write,
    /// do not skip) whenever the watch cannot vouch for it.
    #[test]
    fn observed_is_the_watched_version_only_while_the_watch_keeps_its_cache() {
        use crate::Observed;
        let (reads, mut writer) = reads_comparing_with(&[deployment("podinfo", "10", 1)], true);
        assert_eq!(reads.observed("apps", "podinfo"), Observed::Version(Some("10".into())));
        writer.apply_watcher_event(&watcher::Event::Apply(meta_of(&deployment("podinfo", "11", 2))));
        assert_eq!(reads.observed("apps", "podinfo"), Observed::Version(Some("11".into())));
        assert_eq!(reads.observed("apps", "other"), Observed::Version(None), "not in the watch");
        let (unsynced, _writer) = reads_comparing_with(&[deployment("podinfo", "10", 1)], false);
        assert_eq!(unsynced.observed("apps", "podinfo"), Observed::Version(None), "the watch does not keep it");
        let unwatched = ReadsAtVersion::<Deployment>::default();
        assert_eq!(unwatched.observed("apps", "podinfo"), Observed::Version(None), "no watch");
    }

    #[tokio::test]
    async fn without_a_kept_watch_or_a_version_every_read_goes_to_the_api_server() {
        let (client, gets) = api_answering(deployment("podinfo", "10", 1));
        let (unsynced, _writer) = reads_comparing_with(&[deployment("podinfo", "10", 1)], false);
        unsynced.get(&client, "apps", "podinfo").await.unwrap().unwrap();
        unsynced.get(&client, "apps", "podinfo").await.unwrap().unwrap();
        assert_eq!(gets.load(Ordering::SeqCst), 2, "an unsynced watch shows no version");
        // The watch does not hold it (new, the watch behind): read, not assumed missing.
        let (lacking, _writer) = reads_comparing_with(&[], true);
        lacking.get(&client, "apps", "podinfo").await.unwrap().unwrap();
        lacking.get(&client, "apps", "podinfo").await.unwrap().unwrap();
        assert_eq!(gets.load(Ordering::SeqCst), 4);
        let none = ReadsAtVersion::<Deployment>::default();
        none.get(&client, "apps", "podinfo").await.unwrap().unwrap();
        assert_eq!(gets.load(Ordering::SeqCst), 5);
        assert_eq!(none.len(), 0, "nothing kept without a watch to compare with");
    }
}
