//! The fleet hub's pure rules: one reconcile's decision and record
//! ([`decisions::decide_rollout`], [`decisions::record`]) and the hub's bad input and
//! transition Events ([`input`]). The runtime's hub controller reads the members, calls
//! these and applies what they return.

pub mod decisions;
pub mod input;

#[cfg(test)]
mod decide_props;
