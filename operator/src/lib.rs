//! petrel: progressive delivery for Kubernetes fleets.
//!
//! The crate is split into a functional core (pure decisions in [`core`]) and an I/O
//! shell (the controller, routers and workload management) that reads the world, calls
//! the core and applies its actions.

pub use petrel_api::FIELD_MANAGER;

/// The `User-Agent` of petrel's requests: to Kubernetes API servers, so their audit logs
/// (and a person reading them) can tell petrel's requests from other clients', and to
/// webhooks, alert receivers and metric backends.
pub const USER_AGENT: &str = concat!("petrel/", env!("CARGO_PKG_VERSION"));

/// Makes every request of clients built from `config` carry [`USER_AGENT`].
pub fn identify(config: &mut kube::Config) {
    config.headers.push((reqwest::header::USER_AGENT, reqwest::header::HeaderValue::from_static(USER_AGENT)));
}

pub use petrel_api::MANAGED_BY_LABEL;

pub mod analysis;
pub use petrel_api as api;
pub use petrel_routers::cache;
pub mod client;
pub mod controller;
pub mod events;
pub use petrel_core as core;
pub use petrel_core::fleet;
pub mod hub;
pub mod leader;
pub use petrel_plugin as plugin;
pub mod preflight;
pub use petrel_routers as routers;
pub mod shard;
pub mod shutdown;
pub mod telemetry;
pub mod version;
pub mod workloads;
