//! Benchmarks of petrel's fleet decision (`fleet-bench`) and hub (`hub-bench`): binaries
//! that print figures for docs/benchmarks.md. Not part of the product, and not tests.

pub mod figures;
