//! The fleet hub's functional core: which member clusters get a release, when.
//!
//! A thin hub controller reads the `Rollout`, the `Cluster`s and each member's Canary,
//! and then calls, in order:
//! 1. [`RolloutPlan::from_spec`] — the spec, parsed once (durations, percentages);
//!    an error here is a visible condition on the Rollout, never a guess.
//! 2. [`decide_waves`] — pure and clock-injected, in the style of Open Cluster
//!    Management's `GetRolloutCluster`: (plan, release, wave history, members, now) →
//!    members to approve, timed out, budget breached, rollbacks, recheck-after.
//! 3. [`build_status`] — the Rollout status to write (one write per reconcile).
//!
//! The controller then writes the approvals (`petrel.dev/approved-revision` on each
//! member Canary), performs rollbacks, writes the status, and requeues after
//! `recheck_after`. Everything the decision needs to continue after a restart lives in
//! the Rollout's status (when each wave opened, succeeded, was approved; when each
//! member was approved).

pub use petrel_api::canary::{APPROVED_REVISION_ANNOTATION, FLEET_ROLLOUT_ANNOTATION};

mod decision;
pub mod identity;
pub mod inventory;
mod plan;
mod status;
pub mod traffic;

#[cfg(test)]
mod decision_tests;
#[cfg(test)]
mod props;

pub use decision::{CanaryObservation, MemberApproval, MemberObservation, MemberVerdict, WaveDecision, decide_waves};
pub use plan::{
    ClusterName, Membership, PlanError, PlanReport, RolloutPlan, Share, WavePlan, assign_waves, validate_plan,
};
pub use status::{ReleaseHistory, build_status, history_for_release};
