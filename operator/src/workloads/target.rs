//! The Canary's target, whichever kind it is: a Deployment (petrel keeps a `-primary` clone
//! of it) or a Knative Service (its own revisions are primary and canary).
//!
//! The reconciler reads one [`TargetSnapshot`] and applies the workload actions through the
//! functions here; each kind keeps its own module ([`super::actions`], [`super::knative`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Client;

use super::actions::{self, WorkloadSnapshot};
use super::daemonset::{self, DaemonSetSnapshot};
use super::knative::{self, KnativeSnapshot};
use super::{ConfigReads, DeploymentCache, WorkloadError};
use crate::api::Canary;
use crate::core::WorkloadHealth;

/// What the target is, as read at the start of a reconcile.
#[derive(Clone, Debug, PartialEq)]
pub enum TargetKind {
    /// Boxed: a Deployment snapshot holds whole objects, a Knative one a few names.
    Deployment(Box<WorkloadSnapshot>),
    Knative(KnativeSnapshot),
    /// Boxed like a Deployment's.
    DaemonSet(Box<DaemonSetSnapshot>),
}

/// The target: its revision and release, and its kind's own reading.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetSnapshot {
    /// The revision the state machine releases: a hash of the Deployment's template and
    /// tracked configs, or the name of the Knative Service's latest revision.
    pub revision: String,
    /// The release identity (the images).
    pub release: String,
    pub kind: TargetKind,
}

impl TargetSnapshot {
    fn deployment(snapshot: WorkloadSnapshot) -> Self {
        TargetSnapshot {
            revision: snapshot.revision.clone(),
            release: snapshot.release.clone(),
            kind: TargetKind::Deployment(Box::new(snapshot)),
        }
    }

    fn knative(snapshot: KnativeSnapshot) -> Self {
        TargetSnapshot {
            revision: snapshot.latest_created.clone(),
            release: snapshot.release.clone(),
            kind: TargetKind::Knative(snapshot),
        }
    }

    fn daemon_set(snapshot: DaemonSetSnapshot) -> Self {
        TargetSnapshot {
            revision: snapshot.revision.clone(),
            release: snapshot.release.clone(),
            kind: TargetKind::DaemonSet(Box::new(snapshot)),
        }
    }

    /// The target Deployment, when the target is one.
    pub fn target_deployment(&self) -> Option<&Deployment> {
        match &self.kind {
            TargetKind::Deployment(snapshot) => Some(&snapshot.target),
            TargetKind::Knative(_) | TargetKind::DaemonSet(_) => None,
        }
    }

    /// The `-primary` Deployment, when the target is a Deployment and petrel created it.
    pub fn primary_deployment(&self) -> Option<&Deployment> {
        match &self.kind {
            TargetKind::Deployment(snapshot) => snapshot.primary.as_deref(),
            TargetKind::Knative(_) | TargetKind::DaemonSet(_) => None,
        }
    }

    /// Checksums of the tracked configs (a Knative revision is immutable: none).
    pub fn tracked_checksums(&self) -> BTreeMap<String, String> {
        match &self.kind {
            TargetKind::Deployment(snapshot) => snapshot.tracked_checksums(),
            TargetKind::DaemonSet(snapshot) => snapshot.tracked.checksums(),
            TargetKind::Knative(_) => BTreeMap::new(),
        }
    }

    pub fn canary_health(&self, canary: &Canary, now: DateTime<Utc>) -> WorkloadHealth {
        match &self.kind {
            TargetKind::Deployment(snapshot) => snapshot.canary_health(canary, now),
            TargetKind::Knative(snapshot) => snapshot.canary_health(),
            TargetKind::DaemonSet(snapshot) => snapshot.canary_health(canary, now),
        }
    }

    /// Whether the canary is scaled down (`Observation::canary_scaled_down`): a Deployment
    /// at zero replicas, a DaemonSet on petrel's scale-down node selector. Knative scales
    /// revisions by their traffic itself: never.
    pub fn canary_scaled_down(&self) -> bool {
        match &self.kind {
            TargetKind::Deployment(snapshot) => super::is_at_zero(&snapshot.target),
            TargetKind::DaemonSet(snapshot) => daemonset::is_scaled_down(&snapshot.target),
            TargetKind::Knative(_) => false,
        }
    }

    pub fn primary_health(&self, canary: &Canary, now: DateTime<Utc>) -> WorkloadHealth {
        match &self.kind {
            TargetKind::Deployment(snapshot) => snapshot.primary_health(canary, now),
            TargetKind::Knative(snapshot) => snapshot.primary_health(),
            TargetKind::DaemonSet(snapshot) => snapshot.primary_health(canary, now),
        }
    }

    /// Revision and release of an existing primary's template (a primary adopted from a
    /// deleted Canary of the same name). A Knative primary is a revision the Canary names
    /// itself, never adopted: none.
    pub fn primary_template(&self) -> Option<(String, String)> {
        match &self.kind {
            TargetKind::Deployment(snapshot) => snapshot.primary_template(),
            TargetKind::DaemonSet(snapshot) => snapshot.primary_template(),
            TargetKind::Knative(_) => None,
        }
    }

    /// Whether the primary runs `revision` and finished rolling it out.
    pub fn primary_runs(&self, revision: &str) -> bool {
        match &self.kind {
            TargetKind::Deployment(snapshot) => snapshot.primary_runs(revision),
            TargetKind::Knative(snapshot) => snapshot.primary_runs(revision),
            TargetKind::DaemonSet(snapshot) => snapshot.primary_runs(revision),
        }
    }
}

/// Reads the target the Canary names. Errors that need a person's fix report
/// [`WorkloadError::is_stalled`].
pub async fn read_target(
    client: &Client,
    deployments: &DeploymentCache,
    configs: &ConfigReads,
    canary: &Canary,
) -> Result<TargetSnapshot, WorkloadError> {
    if canary.spec.target_ref.is_daemon_set() {
        if let Some(autoscaler) = &canary.spec.autoscaler_ref {
            return Err(WorkloadError::DaemonSetAutoscaler { name: autoscaler.name.clone() });
        }
        return daemonset::read_daemon_sets(client, configs, canary).await.map(TargetSnapshot::daemon_set);
    }
    if !canary.spec.target_ref.is_knative_service() {
        return actions::read_workloads(client, deployments, configs, canary).await.map(TargetSnapshot::deployment);
    }
    if let Some(autoscaler) = &canary.spec.autoscaler_ref {
        return Err(WorkloadError::KnativeAutoscaler { name: autoscaler.name.clone() });
    }
    knative::read_knative(client, canary).await.map(TargetSnapshot::knative)
}

/// Initialisation: the Deployment's primary clone (and HPA), the DaemonSet's primary
/// clone, or the Knative primary revision. `promoted_revision` is what a missing
/// DaemonSet primary may be recreated from (see [`daemonset::initialize`]).
pub async fn initialize(
    client: &Client,
    deployments: &DeploymentCache,
    configs: &ConfigReads,
    canary: &Canary,
    target: &TargetSnapshot,
    promoted_revision: Option<&str>,
) -> Result<(), WorkloadError> {
    match &target.kind {
        TargetKind::DaemonSet(snapshot) => {
            daemonset::initialize(client, configs, canary, snapshot, promoted_revision).await
        }
        TargetKind::Deployment(snapshot) => {
            actions::initialize_primary(client, deployments, configs, canary, snapshot).await.map(|_| ())
        }
        TargetKind::Knative(snapshot) => knative::initialize(client, snapshot).await,
    }
}

/// `Action::ScaleCanaryUp` (Knative scales revisions by their traffic: nothing to do).
pub async fn scale_canary_up(
    client: &Client,
    deployments: &DeploymentCache,
    target: &TargetSnapshot,
) -> Result<(), WorkloadError> {
    match &target.kind {
        TargetKind::Deployment(snapshot) => actions::scale_canary_up(client, deployments, snapshot).await.map(|_| ()),
        TargetKind::DaemonSet(snapshot) => scale_daemon_set(client, snapshot, false).await,
        TargetKind::Knative(_) => Ok(()),
    }
}

/// `Action::ScaleCanaryToZero` (Knative scales revisions without traffic to zero itself).
pub async fn scale_canary_to_zero(
    client: &Client,
    deployments: &DeploymentCache,
    target: &TargetSnapshot,
) -> Result<(), WorkloadError> {
    match &target.kind {
        TargetKind::Deployment(snapshot) => actions::scale_canary_to_zero(client, deployments, snapshot).await,
        TargetKind::DaemonSet(snapshot) => scale_daemon_set(client, snapshot, true).await,
        TargetKind::Knative(_) => Ok(()),
    }
}

/// `Action::PromoteCanaryToPrimary`: the template copied into the primary, or the analysed
/// Knative revision recorded as the primary.
pub async fn promote(
    client: &Client,
    deployments: &DeploymentCache,
    configs: &ConfigReads,
    canary: &Canary,
    target: &TargetSnapshot,
) -> Result<(), WorkloadError> {
    match &target.kind {
        TargetKind::Deployment(snapshot) => {
            actions::promote_canary_to_primary(client, deployments, configs, canary, snapshot).await.map(|_| ())
        }
        TargetKind::Knative(snapshot) => knative::promote(client, snapshot).await,
        TargetKind::DaemonSet(snapshot) => daemonset::promote(client, configs, canary, snapshot).await,
    }
}

/// Scales the target DaemonSet down or up, unless it is so already.
async fn scale_daemon_set(client: &Client, snapshot: &DaemonSetSnapshot, down: bool) -> Result<(), WorkloadError> {
    if daemonset::is_scaled_down(&snapshot.target) == down {
        return Ok(());
    }
    let namespace = snapshot.target.metadata.namespace.clone().unwrap_or_default();
    let name = snapshot.target.metadata.name.clone().unwrap_or_default();
    daemonset::scale(client, &namespace, &name, down).await
}
