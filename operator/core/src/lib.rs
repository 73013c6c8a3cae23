//! The functional core: every decision petrel makes is a pure function here: the
//! Canary state machine and its strategies, the fleet's wave decisions and the hub's
//! per-reconcile rules.
//!
//! Nothing in this crate performs I/O or reads a clock: time comes in as `now`. Cargo
//! keeps it so: the crate depends on the API types and `kube-core`, never on a
//! Kubernetes client, tokio or an HTTP client.

pub mod fleet;
pub mod hub;
pub mod machine;
pub mod provider;
pub mod requests;
pub mod router_options;
pub mod strategy;
pub mod transitions;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(test)]
mod comparison_props;
#[cfg(test)]
mod comparison_tests;
#[cfg(test)]
mod machine_props;
#[cfg(test)]
mod machine_tests;
#[cfg(test)]
mod request_tests;

pub use machine::{Action, Decision, FleetGate, GateResults, Observation, Plan, WorkloadHealth, decide, plan};
pub use provider::Provider;
pub use strategy::Strategy;
