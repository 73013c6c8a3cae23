//! The fleet hub (`petrel --mode hub`): orders a release across member clusters.
//!
//! The decisions live in the core crate: [`crate::fleet`], [`decisions`] (one reconcile's decision and
//! record: [`decisions::decide_rollout`], [`decisions::record`]) and [`input`] (bad input,
//! transition Events); [`members`] builds clients for the members from their kubeconfig
//! Secrets; [`watches`] keeps one watch per member Canary and wakes the reconciles;
//! [`clusters`] probes the members and writes the Cluster statuses; [`controller`] is
//! the I/O shell that reads the members, writes approvals and the Rollout status.

pub mod clusters;
pub mod controller;
pub use petrel_core::hub::{decisions, input};
pub mod members;
pub mod watches;

pub use controller::{CLUSTERS_WATCH, HUB_FIELD_MANAGER, HubContext, HubError, ROLLOUT_CONTROLLER, reconcile, run};
pub use members::{MemberClientError, MemberClients, MemberConnection};
pub use watches::MemberWatches;

#[cfg(test)]
mod reconcile_tests;
