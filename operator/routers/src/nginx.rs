//! Provider `nginx`: a clone of the user's Ingress (`spec.ingressRef`) named
//! `<ingress>-canary`, sending to `<svc>-canary` and marked with NGINX's canary
//! annotations. The user's Ingress is only read, never modified.
//!
//! Weights: `canary-weight`. A/B: `canary-by-header` (with `-value` or `-pattern`) and
//! `canary-by-cookie`; NGINX sends a matching request to the canary or not at all, so an
//! A/B release is either all matching traffic on the canary (0/100) or none (100/0).

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, ResourceExt};

use super::{
    FIELD_MANAGER, RouterError, ServiceNames, TrafficRouter, Weights, ab_matches, canary_key, generated_metadata,
    namespace_of, regex_escape, services, unsupported,
};
use petrel_api::Canary;
use petrel_api::canary::StringMatch;

const PROVIDER: &str = "nginx";
const PREFIX: &str = "nginx.ingress.kubernetes.io";

fn annotation(name: &str) -> String {
    format!("{PREFIX}/{name}")
}

/// Metadata prefixes by which GitOps tools recognise *their* objects. Copied to the clone,
/// they would make Argo CD or Flux adopt an object that is not in Git and prune it.
const GITOPS_TRACKING_PREFIXES: [&str; 4] =
    ["argocd.argoproj.io/", "kustomize.toolkit.fluxcd.io/", "helm.toolkit.fluxcd.io/", "meta.helm.sh/"];

pub(crate) fn gitops_tracking(key: &str) -> bool {
    GITOPS_TRACKING_PREFIXES.iter().any(|prefix| key.starts_with(prefix))
}

/// Labels of the user's Ingress copied to the clone: all but GitOps tracking labels
/// (`app.kubernetes.io/instance` is Argo CD's default tracking label).
pub(crate) fn copied_label(key: &str) -> bool {
    key != "app.kubernetes.io/instance" && !gitops_tracking(key)
}

/// Annotations of the user's Ingress copied to the clone: all but NGINX's canary settings
/// (petrel writes those), kubectl's record of the user's last apply and GitOps tracking.
fn copied_annotation(key: &str) -> bool {
    key != "kubectl.kubernetes.io/last-applied-configuration"
        && !key.starts_with(&annotation("canary"))
        && !gitops_tracking(key)
}

/// The NGINX A/B annotations for the Canary's `analysis.match`.
fn match_annotations(canary: &Canary) -> Result<BTreeMap<String, String>, RouterError> {
    let mut out = BTreeMap::new();
    for m in ab_matches(canary) {
        if !m.query_params.is_empty() || m.uri.is_some() || m.method.is_some() || m.source_labels.is_some() {
            return Err(unsupported(PROVIDER, "match on anything but one header and one cookie"));
        }
        for (name, value) in &m.headers {
            if name.eq_ignore_ascii_case("cookie") {
                // NGINX routes by a cookie *name* whose value is `always`; Flagger spells
                // that as `cookie: {exact: <name>}`.
                let StringMatch { exact: Some(cookie), prefix: None, suffix: None, regex: None } = value else {
                    return Err(unsupported(PROVIDER, "match a cookie except as `cookie: {exact: <cookie name>}`"));
                };
                if out.insert(annotation("canary-by-cookie"), cookie.clone()).is_some() {
                    return Err(unsupported(PROVIDER, "route by more than one cookie"));
                }
                continue;
            }
            if out.insert(annotation("canary-by-header"), name.clone()).is_some() {
                return Err(unsupported(PROVIDER, "route by more than one header"));
            }
            let (key, wanted) = match value {
                StringMatch { exact: Some(exact), prefix: None, suffix: None, regex: None } => {
                    ("canary-by-header-value", exact.clone())
                }
                StringMatch { regex: Some(regex), exact: None, prefix: None, suffix: None } => {
                    ("canary-by-header-pattern", regex.clone())
                }
                StringMatch { prefix: Some(prefix), exact: None, suffix: None, regex: None } => {
                    ("canary-by-header-pattern", format!("^{}.*", regex_escape(prefix)))
                }
                StringMatch { suffix: Some(suffix), exact: None, prefix: None, regex: None } => {
                    ("canary-by-header-pattern", format!(".*{}$", regex_escape(suffix)))
                }
                _ => {
                    return Err(RouterError::InvalidCanary {
                        canary: canary_key(canary),
                        reason: format!(
                            "analysis.match header {name:?} must set exactly one of exact, prefix, suffix or regex"
                        ),
                    });
                }
            };
            out.insert(annotation(key), wanted);
        }
    }
    Ok(out)
}

/// Points every backend that sends to the apex Service at the canary Service instead;
/// returns how many were changed.
fn retarget(backend: &mut IngressBackend, names: &ServiceNames) -> usize {
    match backend.service.as_mut() {
        Some(service) if service.name == names.apex => {
            service.name = names.canary.clone();
            1
        }
        _ => 0,
    }
}

/// The name of the clone of `ingress`.
pub fn canary_ingress_name(ingress: &str) -> String {
    format!("{ingress}-canary")
}

/// The canary Ingress for these weights, cloned from the user's Ingress.
pub fn build_canary_ingress(canary: &Canary, ingress: &Ingress, weights: Weights) -> Result<Ingress, RouterError> {
    if weights.mirror() {
        return Err(unsupported(PROVIDER, "mirror traffic"));
    }
    let names = ServiceNames::of(canary);
    let mut spec = ingress.spec.clone().unwrap_or_default();
    let mut retargeted = spec.default_backend.as_mut().map_or(0, |b| retarget(b, &names));
    for rule in spec.rules.iter_mut().flatten() {
        for path in rule.http.iter_mut().flat_map(|http| http.paths.iter_mut()) {
            retargeted += retarget(&mut path.backend, &names);
        }
    }
    if retargeted == 0 {
        return Err(RouterError::Malformed {
            kind: "Ingress".into(),
            namespace: ingress.namespace().unwrap_or_default(),
            name: ingress.name_any(),
            reason: format!("no backend sends to Service {}, so a canary clone could not route anything", names.apex),
        });
    }

    let mut annotations: BTreeMap<String, String> = ingress
        .annotations()
        .iter()
        .filter(|(k, _)| copied_annotation(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    annotations.insert(annotation("canary"), "true".into());
    let matches = match_annotations(canary)?;
    if matches.is_empty() {
        annotations.insert(annotation("canary-weight"), weights.canary().to_string());
    } else {
        // Requests that do not match must stay on the primary, so the weight is always 0.
        annotations.insert(annotation("canary-weight"), "0".into());
        match (weights.primary(), weights.canary()) {
            (0, 100) => annotations.extend(matches),
            (100, 0) => {}
            _ => {
                return Err(unsupported(
                    PROVIDER,
                    format!(
                        "split matching traffic {weights}: NGINX sends a matching request to the canary or not at all"
                    ),
                ));
            }
        }
    }
    let labels: BTreeMap<String, String> =
        ingress.labels().iter().filter(|(k, _)| copied_label(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
    Ok(Ingress {
        metadata: generated_metadata(canary, &canary_ingress_name(&ingress.name_any()), &labels, &annotations)?,
        spec: Some(spec),
        status: None,
    })
}

/// The weights a canary Ingress built by [`build_canary_ingress`] carries.
pub fn weights_of(ingress: &Ingress) -> Result<Weights, RouterError> {
    let bad = |reason: String| RouterError::Malformed {
        kind: "Ingress".into(),
        namespace: ingress.namespace().unwrap_or_default(),
        name: ingress.name_any(),
        reason,
    };
    let annotations = ingress.annotations();
    if annotations.get(&annotation("canary")).map(String::as_str) != Some("true") {
        return Err(bad(format!("it lacks {}: \"true\"", annotation("canary"))));
    }
    if annotations.contains_key(&annotation("canary-by-header"))
        || annotations.contains_key(&annotation("canary-by-cookie"))
    {
        return Ok(Weights::canary_only());
    }
    let weight = annotations
        .get(&annotation("canary-weight"))
        .ok_or_else(|| bad(format!("it lacks {}", annotation("canary-weight"))))?;
    let canary = weight.parse::<u8>().ok().filter(|w| *w <= 100).ok_or_else(|| {
        bad(format!("{} {weight:?} is not an integer between 0 and 100", annotation("canary-weight")))
    })?;
    Weights::new(100 - canary, canary, false)
}
/// The Ingress API of the Canary's namespace. nginx and skipper both clone the user's
/// Ingress; these helpers are their common I/O.
pub(super) fn ingresses(client: &Client, canary: &Canary) -> Result<Api<Ingress>, RouterError> {
    Ok(Api::namespaced(client.clone(), &namespace_of(canary)?))
}

pub(super) async fn read_ingress(client: &Client, canary: &Canary, name: &str) -> Result<Option<Ingress>, RouterError> {
    ingresses(client, canary)?.get_opt(name).await.map_err(|source| RouterError::Api {
        verb: "read",
        kind: "Ingress".into(),
        namespace: canary.namespace().unwrap_or_default(),
        name: name.to_string(),
        source: Box::new(source),
    })
}

/// The user's Ingress named by `spec.ingressRef` (`name`): what the canary Ingress clones.
pub(super) async fn referenced_ingress(client: &Client, canary: &Canary, name: String) -> Result<Ingress, RouterError> {
    read_ingress(client, canary, &name).await?.ok_or_else(|| RouterError::NotFound {
        kind: "Ingress".into(),
        namespace: canary.namespace().unwrap_or_default(),
        name,
        reason: format!("it is the ingressRef of Canary {}", canary_key(canary)),
    })
}

/// Writes a built canary Ingress by server-side apply.
pub(super) async fn apply_ingress(client: &Client, canary: &Canary, built: &Ingress) -> Result<(), RouterError> {
    let name = built.name_any();
    ingresses(client, canary)?
        .patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(built))
        .await
        .map_err(|source| RouterError::Api {
            verb: "apply",
            kind: "Ingress".into(),
            namespace: canary.namespace().unwrap_or_default(),
            name,
            source: Box::new(source),
        })?;
    Ok(())
}

pub struct NginxRouter {
    client: Client,
    memory: super::RouterMemory,
}

impl NginxRouter {
    pub fn new(client: Client, memory: super::RouterMemory) -> Self {
        NginxRouter { client, memory }
    }

    fn ingresses(&self, canary: &Canary) -> Result<Api<Ingress>, RouterError> {
        ingresses(&self.client, canary)
    }

    fn ingress_name(canary: &Canary) -> Result<String, RouterError> {
        canary.spec.ingress_ref.as_ref().map(|r| r.name.clone()).ok_or_else(|| RouterError::InvalidCanary {
            canary: canary_key(canary),
            reason: "provider nginx needs spec.ingressRef, the Ingress to clone".into(),
        })
    }

    async fn read(&self, canary: &Canary, name: &str) -> Result<Option<Ingress>, RouterError> {
        read_ingress(&self.client, canary, name).await
    }

    async fn user_ingress(&self, canary: &Canary) -> Result<Ingress, RouterError> {
        referenced_ingress(&self.client, canary, Self::ingress_name(canary)?).await
    }

    async fn apply(&self, canary: &Canary, weights: Weights) -> Result<(), RouterError> {
        let built = build_canary_ingress(canary, &self.user_ingress(canary).await?, weights)?;
        apply_ingress(&self.client, canary, &built).await
    }
}

impl TrafficRouter for NginxRouter {
    fn reconcile<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<(), RouterError>> {
        Box::pin(async move {
            // A Canary without ingressRef fails before anything is written.
            let clone = canary_ingress_name(&Self::ingress_name(canary)?);
            services::ensure_services(&self.client, &self.memory, canary).await?;
            // Reconcile runs on every tick, also mid-release: keep the weights in place.
            let weights = match self.read(canary, &clone).await? {
                Some(existing) => weights_of(&existing)?,
                None => Weights::primary_only(),
            };
            self.apply(canary, weights).await
        })
    }

    fn set_routes<'a>(&'a self, canary: &'a Canary, weights: Weights) -> BoxFuture<'a, Result<(), RouterError>> {
        Box::pin(self.apply(canary, weights))
    }

    fn finalize<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<(), RouterError>> {
        Box::pin(async move {
            let clone = canary_ingress_name(&Self::ingress_name(canary)?);
            match self.ingresses(canary)?.delete(&clone, &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
                Err(source) => Err(RouterError::Api {
                    verb: "delete",
                    kind: "Ingress".into(),
                    namespace: canary.namespace().unwrap_or_default(),
                    name: clone,
                    source: Box::new(source),
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::networking::v1::{
        HTTPIngressPath, HTTPIngressRuleValue, IngressRule, IngressServiceBackend, IngressSpec, ServiceBackendPort,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use proptest::prelude::*;

    use super::super::testing::{ab_canary, any_weights, assert_manifest, canary, weights};
    use super::*;
    use petrel_api::common::ObjectRef;

    fn backend(service: &str) -> IngressBackend {
        IngressBackend {
            service: Some(IngressServiceBackend {
                name: service.into(),
                port: Some(ServiceBackendPort { number: Some(9898), ..ServiceBackendPort::default() }),
            }),
            ..IngressBackend::default()
        }
    }

    /// The user's Ingress: `/` to the apex Service, `/static` to some other Service.
    fn user_ingress() -> Ingress {
        let path = |path: &str, service: &str| HTTPIngressPath {
            path: Some(path.into()),
            path_type: "Prefix".into(),
            backend: backend(service),
        };
        Ingress {
            metadata: ObjectMeta {
                name: Some("podinfo".into()),
                namespace: Some("test".into()),
                labels: Some(BTreeMap::from([
                    ("app".to_string(), "podinfo".to_string()),
                    ("app.kubernetes.io/instance".to_string(), "podinfo-prod".to_string()),
                    ("kustomize.toolkit.fluxcd.io/name".to_string(), "apps".to_string()),
                ])),
                annotations: Some(BTreeMap::from([
                    ("kubectl.kubernetes.io/last-applied-configuration".to_string(), "{}".to_string()),
                    (
                        "argocd.argoproj.io/tracking-id".to_string(),
                        "apps:networking.k8s.io/Ingress:test/podinfo".to_string(),
                    ),
                    (annotation("proxy-body-size"), "8m".to_string()),
                    (annotation("canary-weight"), "55".to_string()),
                ])),
                resource_version: Some("4711".into()),
                ..ObjectMeta::default()
            },
            spec: Some(IngressSpec {
                ingress_class_name: Some("nginx".into()),
                rules: Some(vec![IngressRule {
                    host: Some("app.example.com".into()),
                    http: Some(HTTPIngressRuleValue { paths: vec![path("/", "podinfo"), path("/static", "assets")] }),
                }]),
                ..IngressSpec::default()
            }),
            status: None,
        }
    }

    fn nginx_canary() -> Canary {
        let mut canary = canary();
        canary.spec.ingress_ref = Some(ObjectRef { name: "podinfo".into(), ..ObjectRef::default() });
        canary
    }

    /// A/B the NGINX way: header `x-canary: insider` or cookie `canary` set to `always`.
    fn nginx_ab_canary() -> Canary {
        let mut canary = ab_canary();
        canary.spec.ingress_ref = Some(ObjectRef { name: "podinfo".into(), ..ObjectRef::default() });
        let matches = canary.spec.analysis.as_mut().unwrap().match_.as_mut().unwrap();
        matches[1]
            .headers
            .insert("cookie".into(), StringMatch { exact: Some("canary".into()), ..StringMatch::default() });
        canary
    }

    #[test]
    fn canary_ingresses_match_their_manifests() {
        let ingress = user_ingress();
        assert_manifest(
            &build_canary_ingress(&nginx_canary(), &ingress, weights(100, 0, false)).unwrap(),
            "nginx_100_0",
        );
        assert_manifest(
            &build_canary_ingress(&nginx_canary(), &ingress, weights(90, 10, false)).unwrap(),
            "nginx_90_10",
        );
        assert_manifest(
            &build_canary_ingress(&nginx_ab_canary(), &ingress, weights(0, 100, false)).unwrap(),
            "nginx_ab",
        );
    }

    #[test]
    fn the_users_ingress_is_left_as_it_was() {
        let ingress = user_ingress();
        let before = ingress.clone();
        build_canary_ingress(&nginx_canary(), &ingress, weights(50, 50, false)).unwrap();
        assert_eq!(ingress, before);
    }

    #[test]
    fn an_ingress_that_does_not_reach_the_apex_is_refused() {
        let mut ingress = user_ingress();
        ingress.spec.as_mut().unwrap().rules.as_mut().unwrap()[0].http.as_mut().unwrap().paths.remove(0);
        let err = build_canary_ingress(&nginx_canary(), &ingress, weights(90, 10, false)).unwrap_err();
        assert!(matches!(err, RouterError::Malformed { .. }), "{err}");
    }

    #[test]
    fn header_patterns_mirroring_and_partial_ab_splits() {
        let ingress = user_ingress();
        let mut canary = nginx_ab_canary();
        canary.spec.analysis.as_mut().unwrap().match_.as_mut().unwrap()[0]
            .headers
            .insert("x-canary".into(), StringMatch { regex: Some("^insider|staff$".into()), ..StringMatch::default() });
        let built = build_canary_ingress(&canary, &ingress, weights(0, 100, false)).unwrap();
        assert_eq!(
            built.annotations().get(&annotation("canary-by-header-pattern")).map(String::as_str),
            Some("^insider|staff$")
        );
        assert!(!built.annotations().contains_key(&annotation("canary-by-header-value")));

        assert!(matches!(
            build_canary_ingress(&canary, &ingress, weights(50, 50, false)),
            Err(RouterError::Unsupported { .. })
        ));
        assert!(matches!(
            build_canary_ingress(&nginx_canary(), &ingress, weights(100, 0, true)),
            Err(RouterError::Unsupported { .. })
        ));
        // Istio's cookie regex has no NGINX equivalent.
        assert!(matches!(
            build_canary_ingress(&ab_canary(), &ingress, weights(0, 100, false)),
            Err(RouterError::Unsupported { .. })
        ));
    }

    proptest! {
        #[test]
        fn weights_round_trip(w in any_weights(false)) {
            let built = build_canary_ingress(&nginx_canary(), &user_ingress(), w).unwrap();
            prop_assert_eq!(weights_of(&built).unwrap(), w);
        }

        #[test]
        fn ab_weights_round_trip(all_on_canary in any::<bool>()) {
            let w = if all_on_canary { Weights::canary_only() } else { Weights::primary_only() };
            let built = build_canary_ingress(&nginx_ab_canary(), &user_ingress(), w).unwrap();
            prop_assert_eq!(weights_of(&built).unwrap(), w);
        }
    }
}
