//! The member's published identity: one cluster-scoped `ClusterIdentity` that says who
//! this cluster is, for the fleet hub to verify before it approves a release here.
//!
//! It is made from `--cluster-name`, the labels of an identity ConfigMap the platform
//! team owns, and the UID of the kube-system Namespace; it is written again whenever
//! the ConfigMap changes (and only when the identity differs from the one published).

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use tracing::{info, warn};

use chrono::{DateTime, Utc};
use metrics_providers::provider::{MetricProvider, ProviderConfig, ProviderKind, QueryError, describe_failure};
use metrics_providers::{EgressPolicy, PrometheusProvider};

use crate::api::ClusterIdentity;
use crate::api::cluster_identity::{CLUSTER_IDENTITY_NAME, ClusterIdentitySpec, TrafficRate};
use crate::fleet::identity::stated_labels;
use crate::shutdown::Shutdown;

/// Where the platform team keeps this cluster's identity labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentitySource {
    pub cluster_name: String,
    pub config_map_namespace: String,
    pub config_map_name: String,
}

/// Wait before trying again after a failed read or write.
const RETRY: Duration = Duration::from_secs(10);

/// The identity to publish. Pure.
pub fn identity_spec(
    source: &IdentitySource,
    config_map: Option<&ConfigMap>,
    kube_system_uid: &str,
) -> ClusterIdentitySpec {
    let data: BTreeMap<String, String> = config_map.and_then(|cm| cm.data.clone()).unwrap_or_default();
    let (labels, mut problems) = stated_labels(&data);
    if config_map.is_some_and(|cm| cm.binary_data.as_ref().is_some_and(|b| !b.is_empty())) {
        problems.push("binaryData is not read: identity labels are text".to_string());
    }
    ClusterIdentitySpec {
        cluster_name: source.cluster_name.clone(),
        labels,
        kube_system_uid: kube_system_uid.to_string(),
        problems,
        petrel_version: Some(env!("CARGO_PKG_VERSION").to_string()),
    }
}

/// Publishes the identity now and after every change of the ConfigMap, until `shutdown`.
pub async fn publish(client: Client, source: IdentitySource, shutdown: Shutdown) {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &source.config_map_namespace);
    let by_name = watcher::Config::default().fields(&format!("metadata.name={}", source.config_map_name));
    let mut changes = std::pin::pin!(watcher(config_maps, by_name).default_backoff().applied_objects());
    let mut published: Option<ClusterIdentitySpec> = None;
    // The ConfigMap as last seen; None until the first event, or when there is none.
    let mut current: Option<ConfigMap> = None;
    loop {
        match publish_once(&client, &source, current.as_ref(), &published).await {
            Ok(spec) => published = Some(spec),
            Err(e) => warn!(error = %e, "could not publish this cluster's identity; retrying"),
        }
        let retry = published.is_none();
        tokio::select! {
            () = shutdown.requested() => return,
            () = tokio::time::sleep(RETRY), if retry => {}
            event = changes.next() => match event {
                Some(Ok(config_map)) => current = Some(config_map),
                Some(Err(e)) => warn!(error = %e, "watching the identity ConfigMap"),
                None => return,
            },
        }
    }
}

async fn publish_once(
    client: &Client,
    source: &IdentitySource,
    config_map: Option<&ConfigMap>,
    published: &Option<ClusterIdentitySpec>,
) -> Result<ClusterIdentitySpec, kube::Error> {
    let kube_system = Api::<Namespace>::all(client.clone()).get("kube-system").await?;
    let uid = kube_system.metadata.uid.unwrap_or_default();
    let spec = identity_spec(source, config_map, &uid);
    if published.as_ref() == Some(&spec) {
        return Ok(spec);
    }
    let body = serde_json::json!({
        "apiVersion": ClusterIdentity::api_version(&()),
        "kind": ClusterIdentity::kind(&()),
        "metadata": {"name": CLUSTER_IDENTITY_NAME},
        "spec": spec,
    });
    Api::<ClusterIdentity>::all(client.clone())
        .patch(CLUSTER_IDENTITY_NAME, &PatchParams::apply(crate::FIELD_MANAGER).force(), &Patch::Apply(&body))
        .await?;
    info!(cluster = %spec.cluster_name, labels = ?spec.labels, problems = ?spec.problems, "published this cluster's identity");
    Ok(spec)
}

/// How often the member measures its request rate: the hub reads it as stale after
/// [`crate::fleet::traffic::RATE_STALE_AFTER`].
pub const RATE_INTERVAL: Duration = Duration::from_secs(60);

/// What the member publishes after evaluating its `--traffic-rate-query` at `now`: the
/// requests per second, or why there is no number (never a guessed one). Pure.
pub fn traffic_rate(answer: Result<f64, QueryError>, now: DateTime<Utc>) -> TrafficRate {
    let measured = |requests_per_second, error| TrafficRate { requests_per_second, measured_at: Some(now), error };
    match answer {
        Ok(rps) if rps.is_finite() && rps >= 0.0 => measured(Some(rps), None),
        Ok(value) => measured(None, Some(format!("the query answered {value}, not a number of requests per second"))),
        Err(e) => measured(None, Some(describe_failure(ProviderKind::Prometheus, &e))),
    }
}

/// A measured rate within this fraction of the one last published is not written again.
pub const RATE_CHANGE_WORTH_WRITING: f64 = 0.02;

/// A rate unchanged this long is written again all the same, so that the hub, which reads a
/// rate as stale after [`crate::fleet::traffic::RATE_STALE_AFTER`], sees this member alive.
pub const RATE_REFRESH_AFTER: chrono::TimeDelta = chrono::TimeDelta::seconds(150);

/// Whether `next` is worth a status write after `last` (the rate last written): a new
/// error or none, a rate that moved by more than [`RATE_CHANGE_WORTH_WRITING`], or a
/// published rate about to go stale. An idle fleet then costs one write per member every
/// [`RATE_REFRESH_AFTER`], not one per measurement. Pure.
pub fn worth_publishing(last: Option<&TrafficRate>, next: &TrafficRate) -> bool {
    let Some(last) = last else { return true };
    let moved = match (last.requests_per_second, next.requests_per_second) {
        (Some(before), Some(now)) => {
            let scale = before.abs().max(now.abs());
            scale > 0.0 && (now - before).abs() > RATE_CHANGE_WORTH_WRITING * scale
        }
        (None, None) => false,
        _ => true,
    };
    let aging = match (last.measured_at, next.measured_at) {
        (Some(before), Some(now)) => now - before >= RATE_REFRESH_AFTER,
        _ => true,
    };
    moved || aging || last.error != next.error
}

/// Measures this cluster's request rate every [`RATE_INTERVAL`] with `query` against
/// `metrics_server` (the operator's own Prometheus, like the builtin metrics) and
/// writes it in the ClusterIdentity's status, until `shutdown`.
pub async fn measure_traffic(client: Client, metrics_server: String, query: String, shutdown: Shutdown) {
    let mut config = ProviderConfig::new(ProviderKind::Prometheus, metrics_server);
    // The operator's own --metrics-server, as for the builtin metrics.
    config.egress = EgressPolicy::unrestricted();
    let provider = PrometheusProvider::new(&config);
    let identities: Api<ClusterIdentity> = Api::all(client);
    let mut published: Option<TrafficRate> = None;
    loop {
        let answer = match &provider {
            Ok(provider) => provider.query(&query).await,
            Err(e) => Err(e.clone()),
        };
        let rate = traffic_rate(answer, Utc::now());
        if !worth_publishing(published.as_ref(), &rate) {
            tokio::select! {
                () = shutdown.requested() => return,
                () = tokio::time::sleep(RATE_INTERVAL) => {}
            }
            continue;
        }
        let body = serde_json::json!({
            "apiVersion": ClusterIdentity::api_version(&()),
            "kind": ClusterIdentity::kind(&()),
            "metadata": {"name": CLUSTER_IDENTITY_NAME},
            "status": {"traffic": rate},
        });
        // The identity publisher creates the object; until it has, this waits a retry.
        let wait = match identities
            .patch_status(
                CLUSTER_IDENTITY_NAME,
                &PatchParams::apply(crate::FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
        {
            Ok(_) => {
                info!(requests_per_second = ?rate.requests_per_second, error = ?rate.error, "published this cluster's request rate");
                published = Some(rate);
                RATE_INTERVAL
            }
            Err(e) => {
                warn!(error = %e, "could not publish this cluster's request rate; retrying");
                RETRY
            }
        };
        tokio::select! {
            () = shutdown.requested() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> IdentitySource {
        IdentitySource {
            cluster_name: "prod-eu-1".into(),
            config_map_namespace: "petrel-system".into(),
            config_map_name: "petrel-cluster-identity".into(),
        }
    }

    #[test]
    fn the_identity_states_the_config_maps_labels_and_what_is_wrong_with_it() {
        let config_map: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "petrel-cluster-identity"},
            "data": {"env": "production", "region": "eu-west-1", "not a key": "x"},
            "binaryData": {"blob": "AAEC"}
        }))
        .unwrap();
        let spec = identity_spec(&source(), Some(&config_map), "uid-1");
        assert_eq!((spec.cluster_name.as_str(), spec.kube_system_uid.as_str()), ("prod-eu-1", "uid-1"));
        assert_eq!(
            spec.labels,
            BTreeMap::from([("env".to_string(), "production".to_string()), ("region".into(), "eu-west-1".into())])
        );
        assert_eq!(spec.problems.len(), 2, "{:?}", spec.problems);
    }

    #[test]
    fn a_measured_rate_is_published_and_a_failed_query_is_said_never_guessed() {
        use chrono::TimeZone;
        let now = Utc.with_ymd_and_hms(2026, 12, 5, 12, 0, 0).unwrap();
        let rate = traffic_rate(Ok(123.5), now);
        assert_eq!((rate.requests_per_second, rate.measured_at, rate.error), (Some(123.5), Some(now), None));
        let failed = traffic_rate(Err(QueryError::NoData { query: "sum(rate(x[1m]))".into() }), now);
        assert_eq!((failed.requests_per_second, failed.measured_at), (None, Some(now)));
        assert!(failed.error.as_deref().is_some_and(|e| !e.is_empty()), "{failed:?}");
        for odd in [f64::NAN, -1.0, f64::INFINITY] {
            let rate = traffic_rate(Ok(odd), now);
            assert_eq!(rate.requests_per_second, None, "{odd}");
            assert!(rate.error.unwrap().contains("not a number of requests per second"));
        }
    }

    #[test]
    fn without_a_config_map_the_identity_has_no_labels_and_no_problems() {
        let spec = identity_spec(&source(), None, "uid-1");
        assert!(spec.labels.is_empty() && spec.problems.is_empty());
    }

    #[test]
    fn an_unchanged_rate_is_written_again_only_before_it_would_go_stale() {
        let t0 = Utc::now();
        let at = |seconds: i64| Some(t0 + chrono::TimeDelta::seconds(seconds));
        let rate = |rps: Option<f64>, seconds: i64, error: Option<&str>| TrafficRate {
            requests_per_second: rps,
            measured_at: at(seconds),
            error: error.map(str::to_string),
        };
        let last = rate(Some(100.0), 0, None);
        assert!(worth_publishing(None, &last), "the first measurement");
        assert!(!worth_publishing(Some(&last), &rate(Some(101.9), 60, None)), "within 2%");
        assert!(!worth_publishing(Some(&last), &rate(Some(98.1), 120, None)), "within 2%");
        assert!(worth_publishing(Some(&last), &rate(Some(102.1), 60, None)), "moved by more than 2%");
        assert!(worth_publishing(Some(&last), &rate(Some(100.0), 150, None)), "about to go stale");
        assert!(worth_publishing(Some(&last), &rate(None, 60, Some("timeout"))), "the query fails");
        let failing = rate(None, 0, Some("timeout"));
        assert!(!worth_publishing(Some(&failing), &rate(None, 60, Some("timeout"))), "the same failure");
        assert!(worth_publishing(Some(&failing), &rate(None, 60, Some("refused"))), "another failure");
        assert!(worth_publishing(Some(&failing), &rate(Some(3.0), 60, None)), "it answers again");
        let idle = rate(Some(0.0), 0, None);
        assert!(!worth_publishing(Some(&idle), &rate(Some(0.0), 60, None)), "still no traffic");
        assert!(worth_publishing(Some(&idle), &rate(Some(0.5), 60, None)), "traffic starts");
        // The refresh comes well before the hub reads the rate as stale.
        assert!(
            RATE_REFRESH_AFTER + chrono::TimeDelta::from_std(RATE_INTERVAL).unwrap()
                < crate::fleet::traffic::RATE_STALE_AFTER
        );
    }
}
