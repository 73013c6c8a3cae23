//! Revision and release identity of a pod template.
//!
//! The revision decides whether a new release starts: it changes when the pod template
//! or any tracked ConfigMap/Secret changes. The release identity is what the fleet hub
//! orders: the container images, so per-cluster overlays (replicas, env) do not split
//! one release into many.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Hex characters kept from a SHA-256 digest: 64 bits, collision-free in practice for
/// the revisions of one workload, and short enough for object names.
const SHORT_HASH_LEN: usize = 16;

/// Short hex SHA-256 of some bytes.
pub(crate) fn short_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut hex = hex::encode(digest);
    hex.truncate(SHORT_HASH_LEN);
    hex
}

/// JSON with object keys sorted at every level, so the text (and its hash) does not
/// depend on map ordering, whatever `serde_json` features other crates enable.
pub(crate) fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<&String, &Value> = map.iter().collect();
            out.push('{');
            for (index, (key, item)) in sorted.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                // Serialising a string cannot fail.
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Revision of a target: a short, stable hash of its pod template and the checksums of
/// the ConfigMaps/Secrets it uses (keys `configmap/<name>`, `secret/<name>`).
pub fn revision(template: &PodTemplateSpec, tracked_configs: &BTreeMap<String, String>) -> String {
    // A PodTemplateSpec is plain data (strings, numbers, maps): serialising it to a
    // `Value` cannot fail, and Null would still hash deterministically.
    let template = serde_json::to_value(template).unwrap_or(Value::Null);
    let configs: serde_json::Map<String, Value> =
        tracked_configs.iter().map(|(key, checksum)| (key.clone(), Value::String(checksum.clone()))).collect();
    let document = serde_json::json!({ "template": template, "configs": configs });
    short_hash(canonical_json(&document).as_bytes())
}

/// Release identity of a pod template: its container and init-container images, sorted,
/// without duplicates, joined with `,`.
pub fn release_identity(template: &PodTemplateSpec) -> String {
    let Some(spec) = template.spec.as_ref() else {
        return String::new();
    };
    let images: BTreeSet<&str> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .filter_map(|container| container.image.as_deref())
        .collect();
    images.into_iter().collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::test_support::{container, template};
    use proptest::prelude::*;

    fn configs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn revision_is_short_hex_and_stable() {
        let t = template(&[("app", "podinfo")], vec![container("app", "podinfo:1")]);
        let first = revision(&t, &BTreeMap::new());
        assert_eq!(first.len(), SHORT_HASH_LEN);
        assert!(first.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(first, revision(&t.clone(), &BTreeMap::new()));
    }

    #[test]
    fn config_checksum_changes_the_revision() {
        let t = template(&[("app", "podinfo")], vec![container("app", "podinfo:1")]);
        let before = revision(&t, &configs(&[("configmap/settings", "aaa")]));
        let after = revision(&t, &configs(&[("configmap/settings", "bbb")]));
        assert_ne!(before, after);
        assert_ne!(before, revision(&t, &BTreeMap::new()));
    }

    #[test]
    fn canonical_json_ignores_key_order() {
        let a: Value = serde_json::from_str(r#"{"b":1,"a":{"y":[1,{"q":2,"p":3}],"x":"s"}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":"s","y":[1,{"p":3,"q":2}]},"b":1}"#).unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(canonical_json(&a), r#"{"a":{"x":"s","y":[1,{"p":3,"q":2}]},"b":1}"#);
    }

    #[test]
    fn canonical_json_keeps_array_order() {
        let a: Value = serde_json::from_str(r#"[1,2]"#).unwrap();
        let b: Value = serde_json::from_str(r#"[2,1]"#).unwrap();
        assert_ne!(canonical_json(&a), canonical_json(&b));
    }

    #[test]
    fn release_identity_sorts_and_deduplicates_images() {
        let mut t = template(&[], vec![container("b", "sidecar:2"), container("a", "app:1")]);
        t.spec.as_mut().unwrap().init_containers = Some(vec![container("init", "app:1"), container("migrate", "db:3")]);
        assert_eq!(release_identity(&t), "app:1,db:3,sidecar:2");
        assert_eq!(release_identity(&PodTemplateSpec::default()), "");
    }

    fn arb_template() -> impl Strategy<Value = PodTemplateSpec> {
        (
            prop::collection::btree_map("[a-z]{1,4}", "[a-z0-9]{0,4}", 0..4),
            prop::collection::vec(("[a-z]{1,4}", "[a-z]{1,3}:[0-9]{1,2}"), 1..4),
        )
            .prop_map(|(pod_labels, containers)| {
                let labels: Vec<(String, String)> = pod_labels.into_iter().collect();
                let label_refs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                template(&label_refs, containers.iter().map(|(name, image)| container(name, image)).collect())
            })
    }

    fn arb_configs() -> impl Strategy<Value = BTreeMap<String, String>> {
        prop::collection::btree_map("(configmap|secret)/[a-z]{1,3}", "[0-9a-f]{2}", 0..3)
    }

    proptest! {
        #[test]
        fn revision_changes_iff_template_or_configs_change(
            (t1, c1) in (arb_template(), arb_configs()),
            (other_template, other_configs) in (arb_template(), arb_configs()),
            (reuse_template, reuse_configs) in (any::<bool>(), any::<bool>()),
        ) {
            // Reuse the first input half of the time so that equal inputs are common.
            let t2 = if reuse_template { t1.clone() } else { other_template };
            let c2 = if reuse_configs { c1.clone() } else { other_configs };
            let same_input = t1 == t2 && c1 == c2;
            prop_assert_eq!(revision(&t1, &c1) == revision(&t2, &c2), same_input);
        }

        #[test]
        fn canonical_json_ignores_insertion_order(pairs in prop::collection::btree_map("[a-z]{1,4}", "[a-z]{0,4}", 0..6)) {
            let forward: serde_json::Map<String, Value> =
                pairs.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
            let backward: serde_json::Map<String, Value> =
                pairs.iter().rev().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
            let nested_forward = serde_json::json!({ "outer": Value::Object(forward.clone()), "x": 1 });
            let nested_backward = serde_json::json!({ "x": 1, "outer": Value::Object(backward.clone()) });
            prop_assert_eq!(canonical_json(&Value::Object(forward)), canonical_json(&Value::Object(backward)));
            prop_assert_eq!(canonical_json(&nested_forward), canonical_json(&nested_backward));
        }

        #[test]
        fn release_identity_ignores_container_order(images in prop::collection::vec("[a-z]{1,3}:[0-9]", 1..5)) {
            let forward: Vec<_> = images.iter().enumerate().map(|(i, image)| container(&format!("c{i}"), image)).collect();
            let mut backward = forward.clone();
            backward.reverse();
            let a = template(&[], forward);
            let b = template(&[], backward);
            prop_assert_eq!(release_identity(&a), release_identity(&b));
            let expected: BTreeSet<&str> = images.iter().map(String::as_str).collect();
            prop_assert_eq!(release_identity(&a), expected.into_iter().collect::<Vec<_>>().join(","));
        }
    }
}
