//! What SREs see of a running petrel: Prometheus metrics and health endpoints.
//!
//! [`Metrics`] is shared through the controller's context and written by reconciles;
//! [`server`] serves it with `/livez` and `/readyz`; [`Readiness`] is ready once the
//! controller's caches have synced and while their watches keep them.

mod metrics;
mod readiness;
pub mod server;

pub use metrics::{CANARY_CONTROLLER, Metrics, ReconcileTimer, api_error_reason, status_code, strategy_label};
pub use readiness::{Readiness, SWEEP_INTERVAL, WATCH_GRACE, WATCH_QUIET, WatchHealth, WatchState, track_canary_store};
pub use server::{OPENMETRICS_CONTENT_TYPE, ServeError, bind, router, serve};

#[cfg(test)]
mod tests;
