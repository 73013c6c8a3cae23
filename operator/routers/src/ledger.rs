//! What the routers last wrote, so that a reconcile writes only what changed.
//!
//! A server-side apply with unchanged content still costs the API server a request, and
//! every Canary's reconcile used to apply its three Services and its route at every
//! tick. The ledger keeps, per object, a digest of the manifest petrel last applied and
//! the resourceVersion the API server answered with. An apply is skipped when the
//! manifest is the same and the object is still at that version (someone else's edit or
//! a deletion moves or removes it, and the next reconcile restores petrel's fields).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use sha2::Digest as _;

/// What is known of an object's current version when deciding whether to write it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// Read now (from a GET or a watch cache): `None` when it does not exist.
    Version(Option<String>),
    /// Not read: the ledger trusts its last write.
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Written {
    digest: [u8; 32],
    resource_version: Option<String>,
    /// `namespace/name` of the Canary the manifest names as its owner, if any: when that
    /// Canary is gone, so is the reason to remember the write.
    owner: Option<String>,
}

/// `namespace/name` of the Canary among a manifest's `ownerReferences`.
fn canary_owner(manifest: &Value) -> Option<String> {
    let metadata = manifest.get("metadata")?;
    let namespace = metadata.get("namespace")?.as_str()?;
    let owners = metadata.get("ownerReferences")?.as_array()?;
    let canary = owners.iter().find(|owner| owner.get("kind").and_then(Value::as_str) == Some("Canary"))?;
    Some(format!("{namespace}/{}", canary.get("name")?.as_str()?))
}

/// The last write of each object, keyed by `kind/namespace/name`. Cheap to clone;
/// clones share it. Lives as long as the process: after a restart every object is
/// written once again.
#[derive(Clone, Debug, Default)]
pub struct WriteLedger {
    written: Arc<Mutex<HashMap<String, Written>>>,
}

fn digest(manifest: &Value) -> [u8; 32] {
    // serde_json's maps are ordered, so equal manifests serialise to equal bytes.
    sha2::Sha256::digest(manifest.to_string().as_bytes()).into()
}

/// The ledger key of an object.
pub fn ledger_key(kind: &str, namespace: &str, name: &str) -> String {
    format!("{kind}/{namespace}/{name}")
}

impl WriteLedger {
    /// Whether applying `manifest` would change nothing petrel wrote: it is what was last
    /// applied, and the object is still at the version that apply returned.
    fn unchanged(&self, key: &str, manifest: &Value, observed: &Observed) -> bool {
        let written = self.lock();
        let Some(last) = written.get(key) else { return false };
        let same_version = match observed {
            Observed::Unknown => true,
            Observed::Version(current) => current.is_some() && *current == last.resource_version,
        };
        same_version && last.digest == digest(manifest)
    }

    /// Applies `manifest` with `write` unless [`unchanged`](Self::unchanged) says petrel
    /// already wrote exactly this at the version `observed`. A successful write is
    /// recorded with the resourceVersion it returns; a failed one forgets the object, so
    /// the next reconcile writes it again. `write` is not polled when the write is skipped.
    /// A manifest that could not be serialised (`Null`) is always written.
    pub async fn apply<E>(
        &self,
        key: String,
        manifest: &Value,
        observed: &Observed,
        write: impl Future<Output = Result<Option<String>, E>>,
    ) -> Result<(), E> {
        if !manifest.is_null() && self.unchanged(&key, manifest, observed) {
            return Ok(());
        }
        match write.await {
            Ok(resource_version) => {
                self.record(key, manifest, resource_version);
                Ok(())
            }
            Err(error) => {
                self.forget(&key);
                Err(error)
            }
        }
    }

    /// Records a successful apply and the resourceVersion it returned.
    fn record(&self, key: String, manifest: &Value, resource_version: Option<String>) {
        self.lock().insert(key, Written { digest: digest(manifest), resource_version, owner: canary_owner(manifest) });
    }

    /// Forgets an object (its write failed, or it was deleted): the next apply goes out.
    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }

    /// Forgets the writes of objects owned by Canaries that are gone (`live` holds the
    /// `namespace/name` of those that are not). Writes of objects no Canary owns (the
    /// traffic block petrel applies to a user's Knative Service) stay.
    pub fn retain_owned_by(&self, live: &HashSet<String>) {
        self.lock().retain(|_, written| written.owner.as_ref().is_none_or(|owner| live.contains(owner)));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Written>> {
        // A panic while holding the lock leaves a consistent map (every change is one call).
        self.written.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unchanged_only_for_the_same_manifest_at_the_version_written() {
        let ledger = WriteLedger::default();
        let key = ledger_key("Service", "test", "podinfo");
        let manifest = json!({"spec": {"selector": {"app": "podinfo-primary"}}});
        let at = |version: &str| Observed::Version(Some(version.to_string()));
        assert!(!ledger.unchanged(&key, &manifest, &Observed::Unknown), "never written");
        ledger.record(key.clone(), &manifest, Some("41".into()));
        assert!(ledger.unchanged(&key, &manifest, &at("41")));
        assert!(ledger.unchanged(&key, &manifest, &Observed::Unknown));
        assert!(!ledger.unchanged(&key, &manifest, &at("42")), "edited by someone else");
        assert!(!ledger.unchanged(&key, &manifest, &Observed::Version(None)), "deleted");
        let other = json!({"spec": {"selector": {"app": "podinfo"}}});
        assert!(!ledger.unchanged(&key, &other, &at("41")), "petrel wants something else");
        ledger.forget(&key);
        assert!(!ledger.unchanged(&key, &manifest, &at("41")));
    }

    #[tokio::test]
    async fn apply_writes_only_what_changed_and_forgets_a_failed_write() {
        let ledger = WriteLedger::default();
        let key = ledger_key("Service", "test", "podinfo");
        let manifest = json!({"spec": {"selector": {"app": "podinfo-primary"}}});
        let writes = std::cell::Cell::new(0);
        let write = |result: Result<Option<String>, &'static str>| {
            let writes = &writes;
            async move {
                writes.set(writes.get() + 1);
                result
            }
        };
        let at = |version: &str| Observed::Version(Some(version.to_string()));
        ledger.apply(key.clone(), &manifest, &at("1"), write(Ok(Some("5".into())))).await.unwrap();
        assert_eq!(writes.get(), 1, "never written: written");
        ledger.apply(key.clone(), &manifest, &at("5"), write(Ok(Some("6".into())))).await.unwrap();
        assert_eq!(writes.get(), 1, "unchanged at the version written: the write is not even started");
        let failed = ledger.apply(key.clone(), &manifest, &at("9"), write(Err("conflict"))).await;
        assert_eq!((failed, writes.get()), (Err("conflict"), 2), "edited by someone else: written, and it failed");
        ledger.apply(key.clone(), &manifest, &Observed::Unknown, write(Ok(Some("10".into())))).await.unwrap();
        assert_eq!(writes.get(), 3, "a failed write is forgotten: the next one goes out");
        ledger.apply(key.clone(), &Value::Null, &at("10"), write(Ok(Some("11".into())))).await.unwrap();
        assert_eq!(writes.get(), 4, "a manifest that could not be serialised is always written");
    }

    #[test]
    fn writes_of_a_deleted_canarys_objects_are_forgotten() {
        let ledger = WriteLedger::default();
        let owned = |name: &str, canary: &str| {
            json!({"metadata": {"name": name, "namespace": "test", "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "Deployment", "name": "other"},
                {"apiVersion": "petrel.dev/v1alpha1", "kind": "Canary", "name": canary},
            ]}})
        };
        let (kept, gone) = (owned("podinfo-canary", "podinfo"), owned("backend-canary", "backend"));
        let unowned = json!({"metadata": {"name": "podinfo", "namespace": "test"}, "spec": {"traffic": []}});
        let key = |name: &str| ledger_key("Service", "test", name);
        ledger.record(key("podinfo-canary"), &kept, Some("1".into()));
        ledger.record(key("backend-canary"), &gone, Some("2".into()));
        ledger.record(key("podinfo"), &unowned, Some("3".into()));
        ledger.retain_owned_by(&HashSet::from(["test/podinfo".to_string()]));
        assert!(ledger.unchanged(&key("podinfo-canary"), &kept, &Observed::Unknown), "its Canary lives");
        assert!(!ledger.unchanged(&key("backend-canary"), &gone, &Observed::Unknown), "its Canary is gone");
        assert!(ledger.unchanged(&key("podinfo"), &unowned, &Observed::Unknown), "no Canary owns it");
    }
}
