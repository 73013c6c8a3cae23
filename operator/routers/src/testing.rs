//! Test helpers shared by the router tests: a representative Canary and the comparison
//! of built objects with the expected manifests, insta snapshots under `snapshots/`.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::Weights;
use petrel_api::Canary;
use petrel_api::canary::{CanaryAnalysis, HttpMatch, StringMatch};

pub use petrel_core::testing::canary;

/// The same Canary in A/B mode: requests with header `x-canary: insider` or a cookie
/// `canary=always` go to the canary.
pub fn ab_canary() -> Canary {
    let mut canary = canary();
    let analysis = canary.spec.analysis.get_or_insert_with(CanaryAnalysis::default);
    analysis.iterations = Some(10);
    analysis.match_ = Some(vec![
        HttpMatch {
            headers: BTreeMap::from([(
                "x-canary".to_string(),
                StringMatch { exact: Some("insider".into()), ..StringMatch::default() },
            )]),
            ..HttpMatch::default()
        },
        HttpMatch {
            headers: BTreeMap::from([(
                "cookie".to_string(),
                StringMatch { regex: Some("^(.*?;)?(canary=always)(;.*)?$".into()), ..StringMatch::default() },
            )]),
            ..HttpMatch::default()
        },
    ]);
    canary
}

/// The Canary with `analysis.sessionAffinity` (cookie `canary-cookie`, max age 600 and,
/// with `primary`, primary cookie `primary-cookie`) and these cookies in its status.
pub fn sticky_canary(primary: bool, cookies: super::affinity::Cookies) -> Canary {
    let mut canary = canary();
    canary.spec.analysis.get_or_insert_with(CanaryAnalysis::default).session_affinity =
        Some(petrel_api::canary::SessionAffinity {
            cookie_name: Some("canary-cookie".into()),
            primary_cookie_name: primary.then(|| "primary-cookie".into()),
            max_age: Some(600),
        });
    let mut status = petrel_api::CanaryStatus::default();
    cookies.write_into(&mut status);
    canary.status = Some(status);
    canary
}

/// The cookies of a release in progress, as [`sticky_canary`] names them.
pub fn pinned_cookies() -> super::affinity::Cookies {
    super::affinity::Cookies {
        canary: Some("canary-cookie=0123456789abcdef".into()),
        previous: None,
        primary: Some("primary-cookie=fedcba9876543210".into()),
    }
}

/// The cookies after a release: the canary cookie is the previous one.
pub fn expired_cookies() -> super::affinity::Cookies {
    super::affinity::Cookies { previous: Some("canary-cookie=0123456789abcdef".into()), ..Default::default() }
}

pub fn weights(primary: u8, canary: u8, mirror: bool) -> Weights {
    Weights::new(primary, canary, mirror).expect("test weights add up to 100")
}

/// Any valid weights; mirrored only when `mirror_allowed`.
pub fn any_weights(mirror_allowed: bool) -> impl Strategy<Value = Weights> {
    (0u8..=100, any::<bool>()).prop_map(move |(canary, mirror)| weights(100 - canary, canary, mirror && mirror_allowed))
}

/// Compares a built object with its snapshot, `snapshots/<name>.snap` next to this file
/// (YAML, maps sorted). A difference fails the test. To change the expected manifest
/// deliberately: `cargo insta test` (or `cargo test`, which writes `<name>.snap.new` next
/// to the snapshot, never over it), then `cargo insta review`, and review the diff. With
/// `CI` set or `INSTA_UPDATE=no` (as `scripts/test` runs), nothing is written.
pub fn assert_manifest(actual: &impl serde::Serialize, name: &str) {
    let actual = serde_json::to_value(actual).expect("built objects serialise");
    insta::with_settings!({ prepend_module_to_snapshot => false, sort_maps => true, omit_expression => true }, {
        insta::assert_yaml_snapshot!(name, actual);
    });
}

/// What the CRDs the e2e clusters install (`e2e/crds/third-party/`) serve, as (group,
/// version, kind, plural), after checking each file is a sound CRD.
pub fn e2e_third_party_served() -> Vec<(String, String, String, String)> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../e2e/crds/third-party");
    let mut served = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("e2e/crds/third-party exists") {
        let path = entry.expect("readable dir entry").path();
        // kubectl applies the YAML files of the directory; the README and scripts are not CRDs.
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable CRD file");
        let crd: CustomResourceDefinition =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{} is not a CRD: {e}", path.display()));
        let spec = &crd.spec;
        assert_eq!(crd.metadata.name.as_deref(), Some(format!("{}.{}", spec.names.plural, spec.group).as_str()));
        assert_eq!(spec.versions.iter().filter(|v| v.storage).count(), 1, "{}: one storage version", path.display());
        // The API server refuses CRDs in its own protected groups without this annotation.
        if spec.group.ends_with(".k8s.io") || spec.group.ends_with(".kubernetes.io") {
            let approved = crd.metadata.annotations.as_ref().and_then(|a| a.get("api-approved.kubernetes.io"));
            assert!(approved.is_some(), "{} needs api-approved.kubernetes.io", path.display());
        }
        for version in spec.versions.iter().filter(|v| v.served) {
            served.push((spec.group.clone(), version.name.clone(), spec.names.kind.clone(), spec.names.plural.clone()));
        }
    }
    served
}
