//! The start-up check: before its controllers start, petrel asks the API server once for
//! the objects its mode lists first. A server it cannot reach, credentials it refuses, RBAC
//! that does not allow the list, or CRDs that are not installed end petrel at once with one
//! line that names the cause, instead of a not-ready pod retrying in silence.

use kube::Client;
use kube::api::{Api, ListParams};
use metrics_providers::outbound::error_chain;

use crate::api::{Canary, Cluster, Rollout};

/// Why petrel cannot start; `Display` is the one line it exits with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PreflightError {
    #[error("cannot reach the API server at {server}: {cause}")]
    Unreachable { server: String, cause: String },
    #[error(
        "the API server at {server} refused petrel's credentials (401 Unauthorized: {message}); check the kubeconfig or the ServiceAccount token"
    )]
    Unauthenticated { server: String, message: String },
    #[error(
        "the API server at {server} does not allow petrel to list {resource}{scope} (403 Forbidden: {message}); the chart's RBAC grants it: check the ServiceAccount and its role binding"
    )]
    Forbidden { server: String, resource: String, scope: String, message: String },
    #[error("the API server at {server} does not serve {resource} (404): install petrel's CRDs (charts/petrel/crds/)")]
    NotInstalled { server: String, resource: String },
    #[error("the API server at {server} answered listing {resource}{scope} with {code}: {message}")]
    Other { server: String, resource: String, scope: String, code: u16, message: String },
}

/// What one mode lists first: (plural.group, namespace or None for all namespaces).
pub fn first_lists(hub: bool, namespace: Option<&str>) -> Vec<(&'static str, Option<String>)> {
    if hub {
        vec![("rollouts.petrel.dev", None), ("clusters.petrel.dev", None)]
    } else {
        vec![("canaries.petrel.dev", namespace.map(str::to_string))]
    }
}

/// The one line for `error`, the answer to listing `resource` (in `namespace`) on `server`.
pub fn classify(error: &kube::Error, server: &str, resource: &str, namespace: Option<&str>) -> PreflightError {
    let server = server.to_string();
    let resource = resource.to_string();
    let scope = namespace.map_or_else(|| " in all namespaces".to_string(), |ns| format!(" in namespace {ns}"));
    match error {
        kube::Error::Api(status) => {
            let (code, message) = (&status.code, one_line(&status.message));
            match code {
                401 => PreflightError::Unauthenticated { server, message },
                403 => PreflightError::Forbidden { server, resource, scope, message },
                404 => PreflightError::NotInstalled { server, resource },
                code => PreflightError::Other { server, resource, scope, code: *code, message },
            }
        }
        other => PreflightError::Unreachable { server, cause: one_line(&error_chain(other)) },
    }
}

/// Whitespace runs (newlines included) collapsed: the cause stays on one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Lists one object of each resource [`first_lists`] names on `server` (the URL `client`
/// talks to, for the message); the first refusal is the error.
pub async fn check(client: &Client, server: &str, hub: bool, namespace: Option<&str>) -> Result<(), PreflightError> {
    let one = ListParams::default().limit(1);
    for (resource, ns) in first_lists(hub, namespace) {
        let answer = match resource {
            "rollouts.petrel.dev" => Api::<Rollout>::all(client.clone()).list_metadata(&one).await.map(drop),
            "clusters.petrel.dev" => Api::<Cluster>::all(client.clone()).list_metadata(&one).await.map(drop),
            _ => match &ns {
                Some(ns) => Api::<Canary>::namespaced(client.clone(), ns).list_metadata(&one).await.map(drop),
                None => Api::<Canary>::all(client.clone()).list_metadata(&one).await.map(drop),
            },
        };
        if let Err(error) = answer {
            return Err(classify(&error, server, resource, ns.as_deref()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(kube::core::Status::failure(message, "").with_code(code).boxed())
    }

    const SERVER: &str = "https://127.0.0.1:6443";

    #[test]
    fn each_refusal_names_its_cause_on_one_line() {
        let cases = [
            (401, "Unauthorized", "refused petrel's credentials (401 Unauthorized: Unauthorized)"),
            (
                403,
                "canaries.petrel.dev is forbidden:\n User \"system:serviceaccount:default:default\" cannot list",
                "does not allow petrel to list canaries.petrel.dev in all namespaces (403 Forbidden: canaries.petrel.dev is forbidden: User",
            ),
            (404, "the server could not find the requested resource", "does not serve canaries.petrel.dev (404)"),
            (500, "etcd timed out", "answered listing canaries.petrel.dev in all namespaces with 500: etcd timed out"),
        ];
        for (code, message, says) in cases {
            let line = classify(&api_error(code, message), SERVER, "canaries.petrel.dev", None).to_string();
            assert!(line.contains(says), "{code}: {line}");
            assert!(line.contains(SERVER), "{code}: {line}");
            assert!(!line.contains('\n'), "{code}: {line}");
        }
    }

    #[test]
    fn a_watched_namespace_is_named() {
        let line = classify(&api_error(403, "no"), SERVER, "canaries.petrel.dev", Some("apps")).to_string();
        assert!(line.contains("list canaries.petrel.dev in namespace apps"), "{line}");
    }

    #[test]
    fn each_mode_lists_what_it_watches() {
        assert_eq!(first_lists(false, None), vec![("canaries.petrel.dev", None)]);
        assert_eq!(first_lists(false, Some("apps")), vec![("canaries.petrel.dev", Some("apps".to_string()))]);
        assert_eq!(first_lists(true, Some("apps")), vec![("rollouts.petrel.dev", None), ("clusters.petrel.dev", None)]);
    }
}
