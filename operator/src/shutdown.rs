//! One shutdown signal for the whole process, and the bounded stop that follows it.
//!
//! The signal handlers are installed when [`Shutdown::on_signals`] is called, before any
//! controller starts: a SIGTERM that arrives while a controller is still starting (or
//! while a standby waits for the Lease) is never taken by the default action, which would
//! kill the process without releasing its Lease. Every controller stops on the same
//! [`Shutdown`]; [`stop_within`] gives them a grace period to finish the reconciles in
//! flight and then stops waiting, so the Lease release that follows always happens.

use std::future::Future;
use std::time::Duration;

use futures::FutureExt;
use kube::runtime::reflector::Store;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Requested once, observed by every part of the process. Cloning shares it.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    /// A shutdown that only [`Shutdown::request`] triggers (tests, embedding).
    pub fn new() -> Self {
        Self::default()
    }

    /// A shutdown requested by the first SIGTERM or SIGINT. A second signal exits the
    /// process at once with status 130, for a person whose Ctrl-C did not stop it soon
    /// enough. Must be called inside the Tokio runtime.
    pub fn on_signals() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        // Registered here, synchronously: from this line on, SIGTERM no longer kills.
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let shutdown = Self::new();
        let requested = shutdown.clone();
        tokio::spawn(async move {
            let name = tokio::select! {
                _ = terminate.recv() => "SIGTERM",
                _ = interrupt.recv() => "SIGINT",
            };
            info!(signal = name, "shutdown signal received: stopping");
            requested.request();
            tokio::select! {
                _ = terminate.recv() => {},
                _ = interrupt.recv() => {},
            }
            warn!("second shutdown signal received: exiting now");
            std::process::exit(130);
        });
        Ok(shutdown)
    }

    /// Asks every part of the process to stop.
    pub fn request(&self) {
        self.token.cancel();
    }

    /// Completes once a stop is asked for.
    pub fn requested(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        self.token.clone().cancelled_owned()
    }
}

/// Runs `work` until it ends or a shutdown is requested; after the request, waits at most
/// `grace` for it to end (the controllers finish their reconciles in flight) and then
/// drops it. `None` when the grace period ran out.
pub async fn stop_within<F: Future>(work: F, shutdown: &Shutdown, grace: Duration) -> Option<F::Output> {
    let mut work = std::pin::pin!(work);
    tokio::select! {
        // Checked first: work that ends because of the request still reports the stop.
        biased;
        () = shutdown.requested() => {}
        output = &mut work => return Some(output),
    }
    info!(grace_seconds = grace.as_secs_f64(), "waiting for the controllers to stop");
    match tokio::time::timeout(grace, work).await {
        Ok(output) => {
            info!("controllers stopped");
            Some(output)
        }
        Err(_) => {
            warn!(
                grace_seconds = grace.as_secs_f64(),
                "controllers did not stop within the grace period; stopping anyway"
            );
            None
        }
    }
}

/// Runs a kube-runtime Controller (`controller`, reading `store`) until it ends. A stop
/// requested before `store` is ready ends it at once: kube holds the Controller's
/// reconciles until its store is ready, and the stop also ends the watch that would
/// fill the store, so such a Controller would wait for ever and the stop would always
/// take the whole grace period. No reconcile runs before the store is ready, so
/// nothing is cut short. Returns whether the stop came before the store was ready.
pub async fn run_controller<K, F>(controller: F, store: &Store<K>, shutdown: &Shutdown) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
    F: Future<Output = ()>,
{
    let stopped_unsynced = async {
        shutdown.requested().await;
        if store.wait_until_ready().now_or_never().is_none() {
            return;
        }
        // Synced: the Controller finishes its reconciles in flight and ends by itself.
        std::future::pending::<()>().await
    };
    tokio::select! {
        () = controller => false,
        () = stopped_unsynced => {
            info!("stopped before the watch cache synced: no reconcile had started");
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn work_that_ends_on_its_own_is_returned() {
        let shutdown = Shutdown::new();
        assert_eq!(stop_within(async { 7 }, &shutdown, Duration::from_secs(5)).await, Some(7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_lets_work_finish_within_the_grace_period() {
        let shutdown = Shutdown::new();
        let stopping = shutdown.clone();
        let work = async move {
            stopping.requested().await;
            // A reconcile in flight that needs a moment to finish.
            tokio::time::sleep(Duration::from_secs(2)).await;
            "finished"
        };
        shutdown.request();
        assert_eq!(stop_within(work, &shutdown, Duration::from_secs(5)).await, Some("finished"));
    }

    fn cluster() -> crate::api::Cluster {
        crate::api::Cluster::new("a", Default::default())
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_before_the_store_is_ready_ends_the_controller_at_once() {
        let shutdown = Shutdown::new();
        let (store, _writer) = kube::runtime::reflector::store::<crate::api::Cluster>();
        shutdown.request();
        let started = tokio::time::Instant::now();
        // A Controller held until its store is ready, whose watch the stop has ended. The
        // timeout turns a hang (the defect) into a failure.
        let stopped = run_controller(std::future::pending::<()>(), &store, &shutdown);
        assert!(tokio::time::timeout(Duration::from_secs(60), stopped).await.expect("the controller never ended"));
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_after_the_store_is_ready_waits_for_the_controller() {
        let shutdown = Shutdown::new();
        let (store, mut writer) = kube::runtime::reflector::store::<crate::api::Cluster>();
        use kube::runtime::watcher::Event;
        for event in [Event::Init, Event::InitApply(cluster()), Event::InitDone] {
            writer.apply_watcher_event(&event);
        }
        let stopping = shutdown.clone();
        let controller = async move {
            stopping.requested().await;
            // Its reconciles in flight finish.
            tokio::time::sleep(Duration::from_secs(2)).await;
        };
        shutdown.request();
        let started = tokio::time::Instant::now();
        assert!(!run_controller(controller, &store, &shutdown).await);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_outlives_the_grace_period_is_dropped() {
        let shutdown = Shutdown::new();
        let started = tokio::time::Instant::now();
        shutdown.request();
        let outcome = stop_within(std::future::pending::<()>(), &shutdown, Duration::from_secs(3)).await;
        assert_eq!(outcome, None);
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert!(shutdown.token.is_cancelled(), "the stop is still asked for");
    }
}
