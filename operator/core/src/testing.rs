//! Test fixtures shared with the runtime's tests (feature `testing`).

use petrel_api::canary::{CanaryAnalysis, CanaryService, GatewayRef, TargetRef};
use petrel_api::{Canary, CanarySpec};

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
