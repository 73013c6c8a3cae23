//! The label that tells primary pods from canary pods.

use k8s_openapi::api::apps::v1::Deployment;

use super::{PRIMARY_SUFFIX, WorkloadError};

/// The selector label of a target (shared with the routers, which build the Services
/// on it): canary pods carry `key=value`, primary pods `key=value-primary`.
pub use crate::routers::services::PodSelector;

/// Labels petrel accepts as the pod selector label, in order of preference (Flagger's
/// default `-selector-labels`).
pub const SELECTOR_LABELS: &[&str] = &crate::routers::services::SELECTOR_LABEL_KEYS;

/// The label value of the primary's pods.
pub fn primary_value(selector: &PodSelector) -> String {
    format!("{}{PRIMARY_SUFFIX}", selector.value)
}

/// Finds the target's selector label: the first of [`SELECTOR_LABELS`] present in
/// `spec.selector.matchLabels`.
pub fn pod_selector(target: &Deployment) -> Result<PodSelector, WorkloadError> {
    let match_labels = target.spec.as_ref().and_then(|spec| spec.selector.match_labels.as_ref());
    SELECTOR_LABELS
        .iter()
        .find_map(|key| {
            match_labels
                .and_then(|labels| labels.get(*key))
                .map(|value| PodSelector { key: key.to_string(), value: value.clone() })
        })
        .ok_or_else(|| WorkloadError::NoSelectorLabel {
            deployment: target.metadata.name.clone().unwrap_or_default(),
            candidates: SELECTOR_LABELS,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::test_support::deployment;

    #[test]
    fn picks_app_first() {
        let target = deployment("podinfo", &[("name", "n"), ("app", "podinfo"), ("app.kubernetes.io/name", "k")], "i");
        let selector = pod_selector(&target).unwrap();
        assert_eq!(selector, PodSelector { key: "app".into(), value: "podinfo".into() });
        assert_eq!(primary_value(&selector), "podinfo-primary");
        assert_eq!(selector.primary_labels(), crate::workloads::test_support::labels(&[("app", "podinfo-primary")]));
    }

    #[test]
    fn falls_back_to_name_then_kubernetes_io_name() {
        let target = deployment("podinfo", &[("name", "n"), ("app.kubernetes.io/name", "k")], "i");
        assert_eq!(pod_selector(&target).unwrap().key, "name");
        let target = deployment("podinfo", &[("tier", "web"), ("app.kubernetes.io/name", "k")], "i");
        assert_eq!(
            pod_selector(&target).unwrap(),
            PodSelector { key: "app.kubernetes.io/name".into(), value: "k".into() }
        );
    }

    #[test]
    fn no_selector_label_is_a_clear_error() {
        let target = deployment("podinfo", &[("tier", "web")], "i");
        let error = pod_selector(&target).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("podinfo"), "{message}");
        assert!(message.contains("app.kubernetes.io/name"), "{message}");
        assert!(error.is_stalled());
    }

    #[test]
    fn deployment_without_spec_has_no_selector() {
        let mut target = deployment("podinfo", &[("app", "podinfo")], "i");
        target.spec = None;
        assert!(pod_selector(&target).is_err());
    }
}
