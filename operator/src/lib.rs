//! petrel: progressive delivery for Kubernetes fleets.
//!
//! The crate is split into a functional core (pure decisions in [`core`]) and an I/O
//! shell (the controller, routers and workload management) that reads the world, calls
//! the core and applies its actions.

/// Field manager of every write petrel makes (server-side apply and status).
pub const FIELD_MANAGER: &str = "petrel";

/// `User-Agent` of petrel's requests to webhooks, alert receivers and metric backends.
pub const USER_AGENT: &str = concat!("petrel/", env!("CARGO_PKG_VERSION"));

/// Standard label on every object petrel generates.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

pub mod analysis;
pub mod api;
pub mod controller;
pub mod core;
pub mod fleet;
pub mod hub;
pub mod leader;
pub mod plugin;
pub mod routers;
pub mod shutdown;
pub mod telemetry;
pub mod workloads;
