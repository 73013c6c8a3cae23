//! e2e harness for petrel.
//!
//! [`fleet`] starts a fleet of real Kubernetes control planes (kube-apiserver,
//! kube-controller-manager, kube-scheduler and kwok over one shared etcd) on
//! loopback, built from the upstream Go modules by `e2e/scripts/build-binaries.sh`.

pub mod bench;
pub mod blast;
pub mod chart;
pub mod fleet;
pub mod fleet_scenario;
pub mod image;
pub mod knative;
pub mod prometheus;
pub mod providers;
pub mod scenario;
pub mod simulator;
pub mod wait;
