//! The `kubectl petrel` plugin's logic: rendering Canaries and planning verbs, as pure
//! functions. The binary (`src/bin/kubectl-petrel.rs`) only reads, patches and prints.

pub mod render;
pub mod verbs;

pub use render::{render_canary, render_table};
pub use verbs::{Command, Refusal, VerbPatch, plan_command};
