//! petrel: progressive delivery for Kubernetes fleets.
//!
//! The crate is split into a functional core (pure decisions in [`core`]) and an I/O
//! shell (the controller, routers and workload management) that reads the world, calls
//! the core and applies its actions.

pub mod api;
pub mod controller;
pub mod core;
pub mod analysis;
pub mod routers;
pub mod workloads;
