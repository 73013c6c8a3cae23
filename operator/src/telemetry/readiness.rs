//! Readiness of the controller: ready once its Canary cache has synced.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::reflector::Store;
use tracing::{info, warn};

use super::Metrics;
use crate::api::Canary;

/// How often series of deleted Canaries are swept away. Deletion does not trigger a
/// reconcile (petrel keeps no finalizer), so a sweep is how they leave.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// How often the cache's readiness is checked until it syncs.
const READY_POLL: Duration = Duration::from_millis(250);

/// Whether the controller is ready to serve: set once, after the first full list of
/// Canaries reached its cache. Cheap to clone; every clone sees the same flag.
///
/// A standby replica (leader election on, another replica leading) counts as ready: it
/// is ready to take over, and a Deployment's rolling update waits for the new replica to
/// be ready before it stops the old leader, so an unready standby would never get the
/// lease.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
    standby: Arc<AtomicBool>,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) || self.standby.load(Ordering::Acquire)
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
