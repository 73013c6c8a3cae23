//! The functional core: every decision petrel makes is a pure function here.
//!
//! Nothing in this module performs I/O or reads a clock: time comes in as `now`.

pub mod machine;
pub mod provider;
pub mod requests;
pub mod strategy;
pub mod transitions;

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
