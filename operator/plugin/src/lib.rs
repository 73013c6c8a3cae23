//! The `kubectl petrel` plugin's logic: rendering Canaries and fleet Rollouts, planning
//! verbs, approvals and wave plans, as pure functions; [`cli`] is the program, which only
//! reads, patches and prints.

pub mod approve;
pub mod cli;
pub mod fleet_inventory;
pub mod fleet_plan;
pub mod fleet_render;
pub mod import;
pub mod render;
pub mod repin;
pub mod verbs;

pub use approve::{ApprovalPatch, PLUGIN_FIELD_MANAGER, plan_approval};
pub use fleet_inventory::render_fleet;
pub use fleet_plan::render_plan;
pub use fleet_render::{render_rollout, render_rollout_table};
pub use render::{render_canary, render_table};
pub use repin::{RepinPlan, plan_repin};
pub use verbs::{Command, Refusal, VerbPatch, plan_command, plan_rollout_command};
