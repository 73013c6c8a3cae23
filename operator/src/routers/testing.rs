//! Test helpers shared by the router tests: a representative Canary and the comparison
//! of built objects with the expected manifests, insta snapshots under `snapshots/`.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::Weights;
use crate::api::canary::{CanaryAnalysis, CanaryService, GatewayRef, HttpMatch, StringMatch, TargetRef};
use crate::api::{Canary, CanarySpec};

/// A Canary for Deployment `podinfo` in namespace `test`, port 9898, with hosts and
/// gateway references filled in (routers that do not use them must ignore them).
pub fn canary() -> Canary {
    let mut canary = Canary::new(
        "podinfo",
        CanarySpec {
            provider: None,
            target_ref: TargetRef { api_version: "apps/v1".into(), kind: "Deployment".into(), name: "podinfo".into() },
            service: CanaryService {
                port: 9898,
                hosts: vec!["app.example.com".into()],
                gateways: vec!["public-gateway".into()],
                gateway_refs: vec![GatewayRef {
                    name: "public".into(),
                    namespace: Some("gateways".into()),
                    ..GatewayRef::default()
                }],
                ..CanaryService::default()
            },
            analysis: Some(CanaryAnalysis {
                interval: Some("1m".into()),
                threshold: Some(5),
                step_weight: Some(10),
                max_weight: Some(50),
                ..CanaryAnalysis::default()
            }),
            ..CanarySpec::default()
        },
    );
    canary.metadata.namespace = Some("test".into());
    canary.metadata.uid = Some("2f9a6b0e-1c55-4c77-9d1e-6f0f2a8f3b10".into());
    canary
}

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
        Some(crate::api::canary::SessionAffinity {
            cookie_name: Some("canary-cookie".into()),
            primary_cookie_name: primary.then(|| "primary-cookie".into()),
            max_age: Some(600),
        });
    let mut status = crate::api::CanaryStatus::default();
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
