//! The fleet hub (`petrel --mode hub`): orders a release across member clusters.
//!
//! The decisions live in [`crate::fleet`] and [`decisions`]; [`members`] builds clients
//! for the members from their kubeconfig Secrets; [`controller`] is the I/O shell that
//! reads the members, writes approvals and the Rollout status.

pub mod controller;
pub mod decisions;
pub mod members;

pub use controller::{HUB_FIELD_MANAGER, HubContext, HubError, reconcile, run};
pub use members::{MemberClientError, MemberClients};

#[cfg(test)]
mod reconcile_tests;
