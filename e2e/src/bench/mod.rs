//! `canary-bench`: petrel and Flagger side by side on one local control plane (see
//! `e2e/src/bin/canary-bench.rs` and docs/benchmarks.md). A benchmark, not a test:
//! nothing here runs in CI.

pub mod audit;
pub mod report;
pub mod run;
pub mod stats;
pub mod workload;
