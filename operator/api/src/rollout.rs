//! The `Rollout` resource: one release of one app ordered across a fleet.
//!
//! A Rollout lives on the hub. Every member cluster runs the same Canary
//! (`canaryRef`); the hub approves the release cluster by cluster, wave by wave:
//! canary cluster(s) first, then waves selected by Cluster labels, each with a
//! concurrency limit, a failure budget, a soak time and an optional manual gate.
//! The decisions themselves are pure functions in `petrel_core::fleet`; this module is
//! only the API.
//!
//! Names are petrel's own (there is no Flagger equivalent); where a concept exists in
//! Open Cluster Management or Argo CD the meaning matches (`maxConcurrency`,
//! `maxFailures`, `progressDeadline`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use kube_derive::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::canary::Phase;
use super::common::{Condition, DURATION_PATTERN, IntOrString, duration_bounds_rule, duration_format_rule, is_false};

/// Condition type: the current release is moving (or waiting for a gate) across the fleet.
pub const CONDITION_PROGRESSING: &str = "Progressing";
/// Condition type: every wave succeeded and soaked for the current release.
pub const CONDITION_COMPLETE: &str = "Complete";
/// Condition type: a wave's failure budget was breached; later waves will not open.
pub const CONDITION_DEGRADED: &str = "Degraded";

/// Spec of a Rollout: which Canary to release, on which Clusters, in which waves.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "petrel.dev",
    version = "v1alpha1",
    kind = "Rollout",
    namespaced,
    cel,
    doc = "Orders one release of one app across a fleet of Clusters: canary cluster first, then waves by label, each with a concurrency limit, a failure budget, a soak time and an optional manual approval.",
    status = "RolloutStatus",
    shortname = "fro",
    category = "petrel",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Wave","type":"string","jsonPath":".status.currentWave"}"#,
    printcolumn = r#"{"name":"Succeeded","type":"integer","jsonPath":".status.summary.succeeded"}"#,
    printcolumn = r#"{"name":"Total","type":"integer","jsonPath":".status.summary.total"}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","jsonPath":".status.summary.failed"}"#,
    printcolumn = r#"{"name":"Release","type":"string","jsonPath":".status.release","priority":1}"#,
    printcolumn = r#"{"name":"Paused","type":"boolean","jsonPath":".spec.paused","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = kube_core::Rule::new("self.waves.all(w, self.waves.exists_one(x, x.name == w.name))").message("waves[].name must be unique within a Rollout"))]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// The Canary, by namespace and name, that every member cluster runs for this app.
    pub canary_ref: CanaryRef,

    /// Which Clusters take part. An empty selector selects every Cluster.
    #[serde(default)]
    pub clusters: ClusterSelector,

    /// Waves in order. A Cluster belongs to the first wave whose selector matches it;
    /// a Cluster no wave selects is reported as unassigned and never released to.
    #[schemars(length(min = 1, max = 50))]
    pub waves: Vec<Wave>,

    /// What happens when a wave breaches its failure budget. Default `Halt`.
    #[serde(default)]
    pub on_failure: FailurePolicy,

    /// Approve nothing and open no wave until unset. Members already released keep going.
    #[serde(default, skip_serializing_if = "is_false")]
    pub paused: bool,
}

/// The Canary released in every member cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CanaryRef {
    #[x_kube(validation = kube_core::Rule::new("self != ''").message("canaryRef.namespace must name the Canary's namespace in the members"))]
    pub namespace: String,
    #[x_kube(validation = kube_core::Rule::new("self != ''").message("canaryRef.name must name the Canary"))]
    pub name: String,
}

/// A label selector over Clusters, with Kubernetes' semantics: every `matchLabels`
/// entry and every `matchExpressions` requirement must hold. Empty selects everything.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "match_labels_schema")]
    pub match_labels: BTreeMap<String, String>,
    // Bounded so the API server can bound the cost of the CEL rules below it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub match_expressions: Vec<LabelRequirement>,
}

impl ClusterSelector {
    /// True when the labels satisfy every requirement of this selector.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(key, value)| labels.get(key) == Some(value))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

/// One requirement of a label selector.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube_core::Rule::new("(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)").message("matchExpressions: In and NotIn need values; Exists and DoesNotExist take none"))]
pub struct LabelRequirement {
    #[schemars(length(min = 1, max = 317))]
    pub key: String,
    pub operator: LabelOperator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 63)))]
    pub values: Vec<String>,
}

impl LabelRequirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            LabelOperator::In => value.is_some_and(|v| self.values.contains(v)),
            // Kubernetes semantics: a missing label satisfies NotIn.
            LabelOperator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            LabelOperator::Exists => value.is_some(),
            LabelOperator::DoesNotExist => value.is_none(),
        }
    }
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// One wave of a Rollout.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube_core::Rule::new("!has(self.maxConcurrency) || string(self.maxConcurrency).matches('^([1-9][0-9]*|([1-9][0-9]?|100)%)$')").message("maxConcurrency must be a count of at least 1 or a percentage from 1% to 100%"))]
#[x_kube(validation = kube_core::Rule::new("!has(self.maxFailures) || string(self.maxFailures).matches('^([0-9]+|([0-9]|[1-9][0-9]|100)%)$')").message("maxFailures must be a count of at least 0 or a percentage from 0% to 100%"))]
pub struct Wave {
    /// Name of the wave, unique within the Rollout (for example `canary`, `eu`, `rest`).
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,

    /// Which Clusters fall in this wave (among those the Rollout selects and no earlier
    /// wave took). Empty selects all remaining Clusters, which suits a last `rest` wave.
    #[serde(default)]
    pub cluster_selector: ClusterSelector,

    /// Most members of this wave released at the same time: a count (`2`) or a share of
    /// the wave (`25%`, rounded down, at least 1). Default `100%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "count_or_percent_schema")]
    pub max_concurrency: Option<IntOrString>,

    /// Failure budget of this wave: failed or timed-out members tolerated before the
    /// wave fails (a count, or a share of the wave rounded down). Default `0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "count_or_percent_schema")]
    pub max_failures: Option<IntOrString>,

    /// Bake time after the wave succeeded before the next wave opens, as a duration
    /// such as `30m` or `1h`, at most a week (168h). Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = soak_format_rule())]
    #[x_kube(validation = kube_core::Rule::new(format!("self == '0' || self == '' || !self.matches('{DURATION_PATTERN}') || duration(self) <= duration('168h')")).message("waves[].soak must be at most 168h"))]
    pub soak: Option<String>,

    /// `Automatic` (default) or `Manual`: a manual wave opens only after
    /// `kubectl petrel approve` sets its `approvedAt` in the status.
    #[serde(default)]
    pub approval: Approval,

    /// How long a member of this wave may take to report the release (or stay
    /// unreachable) before it counts as failed, from 1s to 168h. Default `30m`; never
    /// unbounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = duration_format_rule("waves[].progressDeadline"))]
    #[x_kube(validation = duration_bounds_rule("waves[].progressDeadline", "1s", "168h"))]
    pub progress_deadline: Option<String>,
}

/// A soak is a duration, or `0` for none.
fn soak_format_rule() -> kube_core::Rule {
    kube_core::Rule::new(format!("self == '0' || (self != '' && self.matches('{DURATION_PATTERN}'))")).message(
        kube_core::Message::Message(
            "waves[].soak must be 0 or a duration such as 30m, 1h or 1h30m (numbers with the units h, m, s and ms, in that order)"
                .into(),
        ),
    )
}

/// Schema of label matches: bounded, like Kubernetes label keys and values.
fn match_labels_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 32,
        "additionalProperties": { "type": "string", "maxLength": 63 }
    })
}

/// Schema of an `int-or-string` count or percentage (`3` or `25%`).
fn count_or_percent_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "x-kubernetes-int-or-string": true,
        "maxLength": 8,
        "description": "A count (3) or a percentage of the wave's members (25%)."
    })
}

/// Who opens a wave.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Approval {
    /// The wave opens as soon as every earlier wave succeeded and soaked.
    #[default]
    Automatic,
    /// The wave also waits for a person (or automation) to approve it.
    Manual,
}

/// What a breached failure budget does.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Later waves never open. Members that failed already rolled themselves back;
    /// members that promoted keep the release.
    #[default]
    Halt,
    /// Also roll back every member that promoted this release in this or earlier waves.
    RollbackAll,
}

/// Observed state of a Rollout, written by the hub once per reconcile.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// Identity of the release being rolled out (the Canary's release: its target's images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Where the release stands as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RolloutPhase>,
    /// The wave being worked on (or waited on); unset when every wave is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_wave: Option<String>,
    /// Every wave in order, with when it opened and succeeded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub waves: Vec<WaveStatus>,
    /// Every Cluster the Rollout selects, with the state of its Canary.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["cluster"]))]
    pub members: Vec<MemberStatus>,
    /// Member counts by state.
    #[serde(default)]
    pub summary: RolloutSummary,
    /// `Progressing`, `Complete` and `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The last releases of this Rollout, newest first (at most
    /// [`RELEASE_HISTORY_LIMIT`]): when each wave opened and finished, who approved the
    /// manual ones, and how each release ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub history: Vec<ReleaseRecord>,
    /// What each member runs now, since when, and what it ran before: the fleet's state
    /// across releases (the members' own word, corrected for the rollbacks the hub did).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["cluster"]))]
    pub inventory: Vec<MemberInventory>,
}

/// Most releases a Rollout's `status.history` keeps.
pub const RELEASE_HISTORY_LIMIT: usize = 10;

/// One release of a Rollout, as the hub recorded it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseRecord {
    /// The release identity (the members' Canary release: their target's images).
    pub release: String,
    /// When its first wave opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When it succeeded, failed, or was superseded by a newer release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    pub outcome: ReleaseOutcome,
    /// Every wave, in order: when it opened and finished, and who approved a manual one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waves: Vec<WaveRecord>,
}

/// How a release ended.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// Still moving through the fleet (or waiting for an approval, paused).
    InProgress,
    /// Every wave succeeded and soaked.
    Succeeded,
    /// A wave breached its failure budget; later waves never opened.
    Failed,
    /// A newer release reached the first wave before this one finished.
    Superseded,
}

/// One wave of a recorded release.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WaveRecord {
    pub name: String,
    pub phase: WavePhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opened_at: Option<DateTime<Utc>>,
    /// When it succeeded or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// When a manual wave was approved for this release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_at: Option<DateTime<Utc>>,
    /// Who approved it, as `kubectl petrel approve` learned it from the API server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
}

/// What one member runs, as the hub learned it from the member's Canary.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemberInventory {
    /// Name of the Cluster object.
    pub cluster: String,
    /// The release the member's primary serves now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// Since when: the member's own promotion time when it reported one, otherwise
    /// when the hub first saw it run the release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    /// The release it ran before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_release: Option<String>,
    /// A release the hub rolled this member back from (`onFailure: RollbackAll`): the
    /// member's Canary goes on reporting it promoted, but its primary runs `release`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_from: Option<String>,
}

/// Where a release stands across the fleet.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutPhase {
    /// Members of the current wave are being released.
    Progressing,
    /// The current wave succeeded and bakes before the next opens.
    Soaking,
    /// The next wave needs a manual approval.
    WaitingApproval,
    /// `spec.paused` is set.
    Paused,
    /// Every wave succeeded and soaked.
    Succeeded,
    /// A wave breached its failure budget.
    Failed,
}

impl RolloutPhase {
    pub const ALL: [RolloutPhase; 6] = [
        RolloutPhase::Progressing,
        RolloutPhase::Soaking,
        RolloutPhase::WaitingApproval,
        RolloutPhase::Paused,
        RolloutPhase::Succeeded,
        RolloutPhase::Failed,
    ];
}

/// State of one wave for the current release.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WaveStatus {
    pub name: String,
    #[serde(default)]
    pub phase: WavePhase,
    /// When the wave opened (its first member could be approved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opened_at: Option<DateTime<Utc>>,
    /// When every member finished within the failure budget; the soak runs from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succeeded_at: Option<DateTime<Utc>>,
    /// When the wave breached its failure budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<DateTime<Utc>>,
    /// When a person approved a `Manual` wave (`kubectl petrel approve`). Owned by the
    /// approver's field manager, never by the hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_at: Option<DateTime<Utc>>,
    /// The release the approval was given for; an approval opens the wave only for that
    /// release, so an old approval left in the status never opens a new release's wave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_release: Option<String>,
    /// Who approved it (the user `kubectl petrel approve` ran as, from a
    /// SelfSubjectReview). Owned by the approver's field manager, like `approvedAt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    /// Members in this wave.
    #[serde(default)]
    pub members: i32,
    /// Members that report the release promoted.
    #[serde(default)]
    pub succeeded: i32,
    /// Members that failed or timed out (what the failure budget counts).
    #[serde(default)]
    pub failed: i32,
}

impl WaveStatus {
    pub fn pending(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            phase: WavePhase::Pending,
            opened_at: None,
            succeeded_at: None,
            failed_at: None,
            approved_at: None,
            approved_release: None,
            approved_by: None,
            members: 0,
            succeeded: 0,
            failed: 0,
        }
    }
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WavePhase {
    /// Not opened: an earlier wave is unfinished, or a manual approval is missing.
    #[default]
    Pending,
    /// Open: members are being approved and released.
    Progressing,
    /// Every member finished within budget; baking for `soak`.
    Soaking,
    /// Finished and soaked.
    Succeeded,
    /// Failure budget breached.
    Failed,
}

/// One member cluster as the hub last saw it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Name of the Cluster object.
    pub cluster: String,
    /// The wave the member falls in; unset when no wave selects it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave: Option<String>,
    /// What the hub concludes about this member for the current release.
    pub state: MemberState,
    /// Phase of the member's Canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default)]
    pub weight: i32,
    #[serde(default)]
    pub failed_checks: i32,
    /// Release the member's Canary reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// Revision the member's Canary is releasing (its own hash; overlays differ per cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// When the hub approved this member for the current release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_at: Option<DateTime<Utc>>,
    /// When the hub withdrew this member's approval for the current release: a wave's
    /// failure budget breached with `onFailure: RollbackAll` withdraws it from every
    /// member approved or progressing (its Canary aborts); this is when the hub removed
    /// it from the member's Canary, or found it removed. Unset for a new release, and
    /// when the member is approved again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_withdrawn_at: Option<DateTime<Utc>>,
    /// When the hub last reached the member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_contact: Option<DateTime<Utc>>,
    /// The highest share of the member's traffic (percent) its Canary sends to a
    /// release before promoting it: the analysis' `maxWeight` (or last `stepWeights`
    /// entry); 100 for A/B testing, blue/green, `skipAnalysis`, and a Canary that names
    /// no provider (the member's default may be blue/green). `kubectl petrel plan`
    /// multiplies it with the member's traffic share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_weight: Option<i32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// The hub's conclusion about one member for the current release.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MemberState {
    /// Not approved yet (its wave is not open, or no concurrency slot is free).
    Pending,
    /// Approved by the hub; the member has not started the release yet.
    Approved,
    /// The member's Canary is analysing or promoting the release.
    Progressing,
    /// The member reports the release promoted.
    Succeeded,
    /// The member's Canary failed the release (and rolled itself back).
    Failed,
    /// The hub cannot reach the member; it counts as failed after the wave's progressDeadline.
    Unreachable,
    /// The member did not finish (or stayed unreachable) within the wave's progressDeadline.
    TimedOut,
    /// The member's Canary reports another release (Git not synced there yet, or newer).
    OtherRelease,
    /// No wave selects this member; it is never released to.
    Unassigned,
    /// The member is not the cluster its `Cluster` object describes (labels, name or
    /// pinned kube-system UID differ): never approved; counts against `maxFailures`.
    IdentityMismatch,
}

/// Member counts by state.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSummary {
    pub total: i32,
    pub pending: i32,
    pub progressing: i32,
    pub succeeded: i32,
    /// Failed, timed out, or not the cluster its Cluster describes.
    pub failed: i32,
    pub unreachable: i32,
    pub other_release: i32,
    pub unassigned: i32,
    /// Waves finished and soaked out of all waves, for example `2/4`.
    #[serde(default)]
    pub waves_done: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube_core::CustomResourceExt;
    use serde_json::json;

    fn rollout(waves: serde_json::Value) -> Rollout {
        serde_json::from_value(json!({
            "apiVersion": "petrel.dev/v1alpha1",
            "kind": "Rollout",
            "metadata": {"name": "podinfo", "namespace": "fleet"},
            "spec": {
                "canaryRef": {"namespace": "test", "name": "podinfo"},
                "clusters": {"matchLabels": {"env": "prod"}},
                "waves": waves,
            }
        }))
        .unwrap()
    }

    #[test]
    fn a_valid_rollout_passes_the_cel_rules() {
        let r = rollout(json!([
            {"name": "canary", "clusterSelector": {"matchLabels": {"role": "canary"}}, "soak": "30m"},
            {"name": "eu", "clusterSelector": {"matchExpressions": [{"key": "region", "operator": "In", "values": ["eu-west", "eu-central"]}]},
             "maxConcurrency": "25%", "maxFailures": 1, "approval": "Manual"},
            {"name": "rest", "maxConcurrency": 5, "maxFailures": "10%", "progressDeadline": "1h"},
        ]));
        r.validate_cel().unwrap();
        assert_eq!(r.spec.on_failure, FailurePolicy::Halt);
        assert_eq!(r.spec.waves[1].approval, Approval::Manual);
    }

    #[test]
    fn wave_durations_say_what_is_wrong_and_are_bounded() {
        let refused = |wave: serde_json::Value| rollout(json!([wave])).validate_cel().unwrap_err().to_string();
        for (wave, message) in [
            (json!({"name": "a", "soak": "1y"}), "waves[].soak must be 0 or a duration such as 30m"),
            (json!({"name": "a", "soak": "200h"}), "waves[].soak must be at most 168h"),
            (json!({"name": "a", "progressDeadline": "abc"}), "waves[].progressDeadline must be a duration"),
            (json!({"name": "a", "progressDeadline": "100000h"}), "must be at least 1s and at most 168h"),
            (json!({"name": "a", "progressDeadline": "0s"}), "must be at least 1s"),
        ] {
            let error = refused(wave.clone());
            assert!(error.contains(message) && !error.contains("conversion"), "{wave}: {error}");
        }
        rollout(json!([{"name": "a", "soak": "0", "progressDeadline": "1h30m"}])).validate_cel().unwrap();
    }

    #[test]
    fn duplicate_wave_names_are_rejected() {
        let r = rollout(json!([{"name": "eu"}, {"name": "eu"}]));
        let error = r.validate_cel().unwrap_err().to_string();
        assert!(error.contains("must be unique"), "{error}");
    }

    #[test]
    fn a_malformed_max_concurrency_is_rejected() {
        for bad in [json!(0), json!("0%"), json!("150%"), json!("five")] {
            let r = rollout(json!([{"name": "eu", "maxConcurrency": bad}]));
            let error = r.validate_cel().unwrap_err().to_string();
            assert!(error.contains("maxConcurrency"), "{bad}: {error}");
        }
    }

    #[test]
    fn a_negative_failure_budget_is_rejected() {
        let r = rollout(json!([{"name": "eu", "maxFailures": -1}]));
        assert!(r.validate_cel().is_err());
    }

    #[test]
    fn set_operators_need_values() {
        let r = rollout(
            json!([{"name": "eu", "clusterSelector": {"matchExpressions": [{"key": "region", "operator": "In"}]}}]),
        );
        let error = r.validate_cel().unwrap_err().to_string();
        assert!(error.contains("need values"), "{error}");
        let r = rollout(
            json!([{"name": "eu", "clusterSelector": {"matchExpressions": [{"key": "region", "operator": "Exists"}]}}]),
        );
        r.validate_cel().unwrap();
    }

    #[test]
    fn selectors_follow_kubernetes_semantics() {
        let labels: BTreeMap<String, String> =
            [("env", "prod"), ("region", "eu")].into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let requirement = |key: &str, operator, values: &[&str]| LabelRequirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        assert!(ClusterSelector::default().matches(&labels));
        let selector =
            |r: LabelRequirement| ClusterSelector { match_labels: BTreeMap::new(), match_expressions: vec![r] };
        assert!(selector(requirement("region", LabelOperator::In, &["eu", "us"])).matches(&labels));
        assert!(!selector(requirement("region", LabelOperator::NotIn, &["eu"])).matches(&labels));
        assert!(selector(requirement("role", LabelOperator::NotIn, &["canary"])).matches(&labels));
        assert!(!selector(requirement("role", LabelOperator::Exists, &[])).matches(&labels));
        assert!(selector(requirement("role", LabelOperator::DoesNotExist, &[])).matches(&labels));
        let by_label = ClusterSelector {
            match_labels: [("env".to_string(), "staging".to_string())].into(),
            match_expressions: vec![],
        };
        assert!(!by_label.matches(&labels));
    }

    #[test]
    fn status_lists_merge_by_key_so_approvals_survive_hub_writes() {
        let crd = serde_json::to_value(Rollout::crd()).unwrap();
        let status = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
        assert_eq!(status["waves"]["x-kubernetes-list-map-keys"], json!(["name"]));
        assert_eq!(status["members"]["x-kubernetes-list-map-keys"], json!(["cluster"]));
        let max_concurrency = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["waves"]["items"]["properties"]["maxConcurrency"];
        assert_eq!(max_concurrency["x-kubernetes-int-or-string"], json!(true));
    }
}
