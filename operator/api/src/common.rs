//! Types shared by several petrel resources.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
pub use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube_derive::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

/// A reference to an object by API version, kind and name, in the Canary's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Labels and annotations added to a generated object.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CustomMetadata {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Keys of labels and annotations on the generated Services that petrel leaves alone
/// (`service.unmanagedMetadata`, as proposed for Flagger in fluxcd/flagger#1823), so
/// another controller can own them: petrel never writes them (not even when
/// `service.apex`, `primary` or `canary` lists them) and never removes them when another
/// field manager set them. petrel's own keys cannot be handed over. (A key petrel itself
/// wrote before it was declared unmanaged, and that nobody else wrote since, is dropped by
/// server-side apply on petrel's next write, since petrel was its only owner.)
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UnmanagedMetadata {
    /// Label keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 317)))]
    #[x_kube(validation = kube_core::Rule::new(format!("self.all(k, k != '{}')", crate::MANAGED_BY_LABEL)).message(kube_core::Message::Message(format!("service.unmanagedMetadata.labels cannot hold {}: petrel finds the objects it generates by it", crate::MANAGED_BY_LABEL))))]
    pub labels: Vec<String>,
    /// Annotation keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 317)))]
    #[x_kube(validation = kube_core::Rule::new(format!("self.all(k, !(k in {}))", petrel_annotation_keys())).message("service.unmanagedMetadata.annotations cannot hold kustomize.toolkit.fluxcd.io/reconcile or helm.toolkit.fluxcd.io/driftDetection: petrel sets them so GitOps tools leave its objects alone"))]
    pub annotations: Vec<String>,
}

impl UnmanagedMetadata {
    /// `custom` without the keys petrel must leave alone.
    pub fn strip(&self, custom: &CustomMetadata) -> CustomMetadata {
        let keep = |keys: &[String], map: &BTreeMap<String, String>| {
            map.iter().filter(|(k, _)| !keys.contains(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        CustomMetadata {
            labels: keep(&self.labels, &custom.labels),
            annotations: keep(&self.annotations, &custom.annotations),
        }
    }
}

/// Annotations that keep Flux from pruning or reverting objects petrel owns, should a
/// copy of them also live in Git (Flagger sets the same ones).
pub const GITOPS_ANNOTATIONS: [(&str, &str); 2] =
    [("kustomize.toolkit.fluxcd.io/reconcile", "disabled"), ("helm.toolkit.fluxcd.io/driftDetection", "disabled")];

/// The annotation keys petrel writes on every generated object, as a CEL list.
fn petrel_annotation_keys() -> String {
    let keys: Vec<String> = GITOPS_ANNOTATIONS.iter().map(|(k, _)| format!("'{k}'")).collect();
    format!("[{}]", keys.join(", "))
}

/// A reference to a Secret in the same namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    pub name: String,
}

/// A status condition, shaped like `metav1.Condition` so `kubectl wait --for=condition=...` works.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    #[serde(default)]
    pub message: String,
    pub last_transition_time: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Condition {
    /// The condition of `type_` after `previous` (`status` is `True`, `False` or
    /// `Unknown`): its transition time is the previous one while the status stays, `now`
    /// when it changes. Pure.
    pub fn after(
        previous: &[Condition],
        type_: &str,
        status: &str,
        reason: &str,
        message: String,
        now: DateTime<Utc>,
    ) -> Condition {
        let last_transition_time =
            previous.iter().find(|c| c.type_ == type_ && c.status == status).map_or(now, |c| c.last_transition_time);
        Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message,
            last_transition_time,
            observed_generation: None,
        }
    }

    /// `True` or `False`.
    pub fn status_of(value: bool) -> &'static str {
        if value { "True" } else { "False" }
    }
}

/// Sets the condition of `type_` in `conditions`, as [`Condition::after`] them. Pure.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: DateTime<Utc>,
) {
    let next = Condition::after(conditions, type_, status, reason, message.to_string(), now);
    let generation = conditions.iter().find(|c| c.type_ == type_).and_then(|c| c.observed_generation);
    put_condition(conditions, Condition { observed_generation: generation, ..next });
}

/// Replaces the condition of the same type in `conditions`, or adds it. Pure.
pub fn put_condition(conditions: &mut Vec<Condition>, condition: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
        Some(existing) => *existing = condition,
        None => conditions.push(condition),
    }
}

impl Condition {
    pub fn is_true(&self) -> bool {
        self.status == "True"
    }
}

/// A duration as petrel (and Go's `time.ParseDuration`) reads it, in the usual order of
/// units: hours, minutes, seconds, milliseconds, each at most once (`30s`, `1m30s`,
/// `1.5h`, `500ms`). The digit counts are bounded so that the API server's `duration()`
/// never overflows on a value the pattern accepts (the largest, 999999h9999999m
/// 999999999s999999999999ms, is about 6.2e18 ns, below Go's limit of 9.2e18), and a
/// value too large for the field gets the bounds message rather than CEL's "type
/// conversion error". The empty string is refused apart. `[.]` rather than `\.`: the
/// pattern goes into a CEL string, where `\.` is no escape.
pub const DURATION_PATTERN: &str = r"^([0-9]{1,6}([.][0-9]{1,9})?h)?([0-9]{1,7}([.][0-9]{1,9})?m)?([0-9]{1,9}([.][0-9]{1,9})?s)?([0-9]{1,12}([.][0-9]{1,9})?ms)?$";

/// The CEL rule of a duration field's format, said in words (rather than CEL's "type
/// conversion error"). `field` is the path a person reads in the message
/// (`analysis.interval`).
pub fn duration_format_rule(field: &str) -> kube_core::Rule {
    use kube_core::{Message, Rule};
    Rule::new(format!("self != '' && self.matches('{DURATION_PATTERN}')")).message(Message::Message(format!(
        "{field} must be a duration such as 30s, 1m or 1m30s (numbers with the units h, m, s and ms, in that order)"
    )))
}

/// The CEL rule of a duration field's bounds (inclusive, in the same syntax), checked
/// only once [`duration_format_rule`] holds so that a malformed value gets one message.
pub fn duration_bounds_rule(field: &str, min: &str, max: &str) -> kube_core::Rule {
    use kube_core::{Message, Rule};
    Rule::new(format!(
        "self == '' || !self.matches('{DURATION_PATTERN}') || (duration(self) >= duration('{min}') && duration(self) <= duration('{max}'))"
    ))
    .message(Message::Message(format!("{field} must be at least {min} and at most {max}")))
}

/// A DNS-1035 label, what Kubernetes requires of a Service name.
pub const DNS_1035_LABEL: &str = "^[a-z]([-a-z0-9]*[a-z0-9])?$";

/// An absolute `http://` or `https://` URL with a host. Kubernetes' CEL URL library.
pub fn http_url_rule(field: &str) -> kube_core::Rule {
    use kube_core::{Message, Rule};
    Rule::new("self.matches('^https?://') && isURL(self) && url(self).getHostname() != ''")
        .message(Message::Message(format!("{field} must be an absolute http:// or https:// URL")))
}

#[cfg(test)]
mod set_condition_tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let t1 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 1, 0).unwrap();
        let t2 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 2, 0).unwrap();
        let mut c = Vec::new();
        set_condition(&mut c, "Stalled", "True", "TargetNotFound", "a", t0);
        set_condition(&mut c, "Stalled", "True", "TargetNotFound", "b", t1);
        assert_eq!(c[0].last_transition_time, t0);
        assert_eq!(c[0].message, "b");
        set_condition(&mut c, "Stalled", "False", "Reconciled", "", t2);
        assert_eq!(c[0].last_transition_time, t2);
        assert_eq!(c.len(), 1);
    }
}
