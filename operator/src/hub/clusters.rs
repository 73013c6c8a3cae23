//! The hub's member probes and the `Cluster` status they produce.
//!
//! Every [`PROBE_INTERVAL`] the hub reads each Cluster's kubeconfig Secret, asks the
//! member's API server for its version and whether it serves petrel's Canary API, and
//! writes the Cluster status (server-side apply, field manager `petrel-hub`) when
//! something other than the contact time changed or the recorded contact is
//! [`CONTACT_REFRESH`] old — so a healthy fleet costs one write a minute per Cluster.
//! The probes also keep the member watches' caches honest (see [`super::watches`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::warn;

use k8s_openapi::api::core::v1::Namespace;

use super::controller::{HUB_FIELD_MANAGER, HubContext, MEMBER_READ_TIMEOUT};
use super::decisions::CONTACT_REFRESH;
use super::watches::ProbeResult;
use crate::api::cluster::{
    CONDITION_IDENTITY_VERIFIED, CONDITION_REACHABLE, CONDITION_READY, ClusterIdentityStatus, ClusterStatus,
    REPIN_ANNOTATION,
};
use crate::api::cluster_identity::{CLUSTER_IDENTITY_NAME, ClusterIdentitySpec, TrafficRate};
use crate::api::common::Condition;
use crate::api::{Cluster, ClusterIdentity};
use crate::fleet::identity::{
    ExpectedIdentity, IdentityVerdict, MAX_IDENTITY_LABELS, ObservedIdentity, pin_after_probe, stated_labels,
    verify_identity,
};

/// How often each member is probed.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(15);

/// The API group version of petrel's member-side resources.
const CANARY_API: &str = "petrel.dev/v1alpha1";

/// The status a Cluster should have after a probe. A member that does not answer keeps
/// its last contact time and server version. Pure.
pub fn cluster_status(
    previous: Option<&ClusterStatus>,
    generation: Option<i64>,
    probe: &ProbeResult,
    now: DateTime<Utc>,
) -> ClusterStatus {
    let previous_conditions = previous.map_or(&[][..], |p| &p.conditions);
    let condition = |type_: &str, value: bool, reason: &str, message: String| Condition {
        observed_generation: generation,
        ..Condition::after(previous_conditions, type_, Condition::status_of(value), reason, message, now)
    };
    let kept_contact = previous.and_then(|p| p.last_contact_time);
    let kept_version = previous.and_then(|p| p.server_version.clone());
    let (reachable, ready, last_contact_time, server_version) = match probe {
        ProbeResult::Reached { server_version, canary_api, .. } => (
            condition(CONDITION_REACHABLE, true, "Contacted", format!("the API server answered ({server_version})")),
            if *canary_api {
                condition(CONDITION_READY, true, "CanaryAPIServed", "the member serves petrel's Canary API".into())
            } else {
                condition(
                    CONDITION_READY,
                    false,
                    "CanaryAPIMissing",
                    format!(
                        "the member does not serve {CANARY_API} canaries: install petrel's CRDs there and run petrel in member mode"
                    ),
                )
            },
            Some(now),
            Some(server_version.clone()),
        ),
        ProbeResult::Unreachable(why) => (
            condition(CONDITION_REACHABLE, false, "Unreachable", why.clone()),
            condition(CONDITION_READY, false, "Unreachable", "the hub cannot reach the member".into()),
            kept_contact,
            kept_version,
        ),
        ProbeResult::NoClient { reason, message } => (
            condition(CONDITION_REACHABLE, false, reason, message.clone()),
            condition(CONDITION_READY, false, reason, message.clone()),
            kept_contact,
            kept_version,
        ),
    };
    ClusterStatus {
        conditions: vec![ready, reachable],
        last_contact_time,
        server_version,
        observed_generation: generation,
        identity: None,
        traffic: None,
    }
}

/// Whether `next` is worth a write over `previous`: something other than the contact
/// time changed, or the recorded contact is [`CONTACT_REFRESH`] old. Pure.
pub fn cluster_status_worth_writing(previous: Option<&ClusterStatus>, next: &ClusterStatus) -> bool {
    let Some(previous) = previous else { return true };
    let without_contact = |s: &ClusterStatus| ClusterStatus { last_contact_time: None, ..s.clone() };
    if without_contact(previous) != without_contact(next) {
        return true;
    }
    match (previous.last_contact_time, next.last_contact_time) {
        (Some(recorded), Some(seen)) => seen - recorded >= CONTACT_REFRESH,
        (None, Some(_)) => true,
        _ => false,
    }
}

/// Asks a member for its version, whether it serves the Canary API, who it is and the
/// request rate it measured (see [`with_traffic`]). `kubeconfig` is the fingerprint of
/// the kubeconfig the client was built from.
async fn probe_member(client: &Client, kubeconfig: &str) -> (ProbeResult, Option<TrafficRate>) {
    let version = match tokio::time::timeout(MEMBER_READ_TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(info)) => info.git_version,
        Ok(Err(e)) => return (ProbeResult::Unreachable(format!("reading the API server version: {e}")), None),
        Err(_) => {
            let why = format!("the API server did not answer within {}s", MEMBER_READ_TIMEOUT.as_secs());
            return (ProbeResult::Unreachable(why), None);
        }
    };
    let canary_api = match tokio::time::timeout(MEMBER_READ_TIMEOUT, client.list_api_group_resources(CANARY_API)).await
    {
        Ok(Ok(resources)) => resources.resources.iter().any(|r| r.name == "canaries"),
        // The version answered a moment ago: a failure here is the API missing, or a
        // blip the next probe corrects.
        Ok(Err(_)) | Err(_) => false,
    };
    let (identity, traffic) = observe_identity(client, kubeconfig).await;
    (ProbeResult::Reached { server_version: version, canary_api, identity }, traffic)
}

/// Reads who the member is: its kube-system Namespace's UID and its `ClusterIdentity`.
async fn observe_identity(client: &Client, kubeconfig: &str) -> (ObservedIdentity, Option<TrafficRate>) {
    let late = || format!("no answer within {}s", MEMBER_READ_TIMEOUT.as_secs());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let kube_system_uid = match tokio::time::timeout(MEMBER_READ_TIMEOUT, namespaces.get("kube-system")).await {
        Ok(Ok(namespace)) => namespace.metadata.uid.ok_or_else(|| "the kube-system Namespace has no UID".to_string()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(late()),
    };
    let identities: Api<ClusterIdentity> = Api::all(client.clone());
    let mut traffic = None;
    let stated = match tokio::time::timeout(MEMBER_READ_TIMEOUT, identities.get_opt(CLUSTER_IDENTITY_NAME)).await {
        Ok(Ok(found)) => Ok(found.map(|identity| {
            traffic = identity.status.and_then(|s| s.traffic).map(sanitized_rate);
            sanitized(identity.spec)
        })),
        // A member without the ClusterIdentity API (an older petrel) publishes none.
        Ok(Err(kube::Error::Api(e))) if e.code == 404 => Ok(None),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(late()),
    };
    (ObservedIdentity { kubeconfig: kubeconfig.to_string(), kube_system_uid, stated }, traffic)
}

/// A member's measured rate as the hub records it: an error message cut to the length
/// the Cluster's schema allows.
fn sanitized_rate(mut rate: TrafficRate) -> TrafficRate {
    rate.error = rate.error.map(|e| e.chars().take(1024).collect());
    rate
}

/// Adds the request rate a member measured to its Cluster status: the one the probe
/// just read when it reached the member (none when the member publishes none), else the
/// one recorded before — its `measuredAt` makes it go stale on its own. Pure.
pub fn with_traffic(
    status: &mut ClusterStatus,
    previous: Option<&ClusterStatus>,
    probe: &ProbeResult,
    read: Option<TrafficRate>,
) {
    status.traffic = match probe {
        ProbeResult::Reached { .. } => read,
        _ => previous.and_then(|p| p.traffic.clone()),
    };
}

/// What a member states, with anything that is not a label treated as the member's
/// own ConfigMap would be: a problem, not a value the hub copies around.
fn sanitized(mut stated: ClusterIdentitySpec) -> ClusterIdentitySpec {
    let (labels, problems) = stated_labels(&stated.labels);
    stated.labels = labels;
    stated.problems.extend(problems);
    stated.problems.truncate(MAX_IDENTITY_LABELS);
    stated.cluster_name = stated.cluster_name.chars().take(253).collect();
    stated.kube_system_uid = stated.kube_system_uid.chars().take(64).collect();
    stated
}

/// Adds the member's identity to a Cluster status after a probe: the pinned UID (the
/// first seen, or one `kubectl petrel repin` asked for), what the member stated, and
/// the `IdentityVerified` condition. A probe that did not reach the member keeps what
/// was known. Returns the verdict. Pure.
pub fn with_identity(
    status: &mut ClusterStatus,
    previous: Option<&ClusterStatus>,
    cluster: &Cluster,
    observed: Option<&ObservedIdentity>,
    now: DateTime<Utc>,
) -> IdentityVerdict {
    let before = previous.and_then(|p| p.identity.clone()).unwrap_or_default();
    let name = cluster.name_any();
    let Some(observed) = observed else {
        status.identity = previous.and_then(|p| p.identity.clone());
        if let Some(kept) = previous.and_then(|p| p.conditions.iter().find(|c| c.type_ == CONDITION_IDENTITY_VERIFIED))
        {
            status.conditions.push(kept.clone());
        }
        return IdentityVerdict::Unverified("the hub did not reach the member".into());
    };
    let observed_uid = observed.kube_system_uid.as_ref().ok().cloned();
    let repin = cluster.annotations().get(REPIN_ANNOTATION).map(String::as_str);
    let pinned = pin_after_probe(before.pinned_uid.as_deref(), observed_uid.as_deref(), repin).map(str::to_string);
    let pinned_at = if pinned == before.pinned_uid { before.pinned_at } else { Some(now) };
    let (stated_name, stated_labels) = match &observed.stated {
        Ok(Some(stated)) => (Some(stated.cluster_name.clone()), stated.labels.clone()),
        Ok(None) => (None, Default::default()),
        Err(_) => (before.stated_name.clone(), before.stated_labels.clone()),
    };
    let verdict = verify_identity(
        ExpectedIdentity {
            cluster: &name,
            labels: cluster.labels(),
            pinned_uid: pinned.as_deref(),
            kubeconfig: &observed.kubeconfig,
        },
        Some(observed),
    );
    status.identity =
        Some(ClusterIdentityStatus { pinned_uid: pinned, pinned_at, observed_uid, stated_name, stated_labels });
    let (value, reason) = match &verdict {
        IdentityVerdict::Verified => ("True", "Verified"),
        IdentityVerdict::Mismatch(_) => ("False", "IdentityMismatch"),
        IdentityVerdict::Unverified(_) => ("False", "IdentityUnverified"),
    };
    let last_transition_time = previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == CONDITION_IDENTITY_VERIFIED && c.status == value))
        .map_or(now, |c| c.last_transition_time);
    status.conditions.push(Condition {
        type_: CONDITION_IDENTITY_VERIFIED.to_string(),
        status: value.to_string(),
        reason: reason.to_string(),
        message: verdict.describe(),
        last_transition_time,
        observed_generation: status.observed_generation,
    });
    verdict
}

/// The Event a Cluster gets when its identity verdict or pin changes, if any. Pure.
pub fn identity_event(previous: Option<&ClusterStatus>, next: &ClusterStatus) -> Option<(&'static str, String, bool)> {
    let condition = |s: Option<&ClusterStatus>| {
        s.and_then(|s| s.conditions.iter().find(|c| c.type_ == CONDITION_IDENTITY_VERIFIED)).cloned()
    };
    let pinned = |s: Option<&ClusterStatus>| s.and_then(|s| s.identity.as_ref()).and_then(|i| i.pinned_uid.clone());
    let (before, after) = (condition(previous), condition(Some(next)));
    let (pinned_before, pinned_after) = (pinned(previous), pinned(Some(next)));
    if pinned_before != pinned_after
        && let Some(uid) = &pinned_after
    {
        let message = match &pinned_before {
            None => format!("pinned the member's kube-system UID {uid} on first contact"),
            Some(old) => format!("re-pinned the member's kube-system UID from {old} to {uid} on request"),
        };
        return Some(("IdentityPinned", message, false));
    }
    let after = after?;
    if before.as_ref().is_some_and(|b| b.reason == after.reason && b.message == after.message) {
        return None;
    }
    match after.reason.as_str() {
        "IdentityMismatch" => Some(("IdentityMismatch", after.message, true)),
        "IdentityUnverified" => Some(("IdentityUnverified", after.message, true)),
        _ if before.is_some() => Some(("IdentityVerified", after.message, false)),
        _ => None,
    }
}

/// Probes one member and writes its Cluster status when worth it.
async fn probe_and_report(ctx: &HubContext, cluster: &Cluster) {
    let name = cluster.name_any();
    let (result, traffic) = match ctx.members.connect(cluster).await {
        Ok(connection) => probe_member(&connection.client, &connection.fingerprint).await,
        Err(e) => (ProbeResult::NoClient { reason: e.reason(), message: e.to_string() }, None),
    };
    let now = Utc::now();
    ctx.watches.record_probe(&name, result.clone(), now);
    ctx.metrics.observe_cluster(&name, matches!(result, ProbeResult::Reached { .. }));
    let previous = cluster.status.as_ref();
    let mut status = cluster_status(previous, cluster.metadata.generation, &result, now);
    let observed = match &result {
        ProbeResult::Reached { identity, .. } => Some(identity),
        _ => None,
    };
    with_identity(&mut status, previous, cluster, observed, now);
    with_traffic(&mut status, previous, &result, traffic);
    if !cluster_status_worth_writing(previous, &status) {
        return;
    }
    let event = identity_event(previous, &status);
    // Dynamic: the answer is not needed, and a typed one would have to parse the spec.
    let api: Api<DynamicObject> = Api::all_with(ctx.client.clone(), &ApiResource::erase::<Cluster>(&()));
    // Decided from the Cluster as listed: a Cluster changed since is probed again next time.
    let body = serde_json::json!({
        "apiVersion": Cluster::api_version(&()),
        "kind": Cluster::kind(&()),
        "metadata": {"name": name, "resourceVersion": cluster.resource_version()},
        "status": status,
    });
    if let Err(e) = api.patch_status(&name, &PatchParams::apply(HUB_FIELD_MANAGER).force(), &Patch::Apply(&body)).await
    {
        ctx.metrics.record_api_error(super::controller::ROLLOUT_CONTROLLER, &e);
        warn!(cluster = %name, error = %e, "could not write the Cluster status");
        return;
    }
    // Said once, after the status that records it was written.
    if let Some((reason, message, warning)) = event {
        super::controller::publish_on(ctx, &cluster.object_ref(&()), reason, &message, warning).await;
    }
}

/// Probes every Cluster once.
pub async fn probe_all(ctx: &HubContext) {
    let clusters: Api<Cluster> = Api::all(ctx.client.clone());
    let clusters = match clusters.list(&Default::default()).await {
        Ok(list) => list.items,
        Err(e) => {
            warn!(error = %e, "could not list Clusters to probe them");
            return;
        }
    };
    let names: BTreeSet<String> = clusters.iter().map(|c| c.name_any()).collect();
    ctx.watches.retain_probes(&names);
    ctx.members.retain(&names);
    ctx.metrics.retain_clusters(names.iter().map(String::as_str));
    futures::future::join_all(clusters.iter().map(|c| probe_and_report(ctx, c))).await;
}

/// Probes the members every [`PROBE_INTERVAL`] until the process stops.
pub async fn run_probes(ctx: Arc<HubContext>) {
    loop {
        probe_all(&ctx).await;
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeDelta, TimeZone};

    fn at(second: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 4, 0, 0).unwrap() + TimeDelta::seconds(second)
    }

    fn reached(canary_api: bool) -> ProbeResult {
        ProbeResult::Reached { server_version: "v1.36.0".into(), canary_api, identity: observed("u1", "eu-1", &[]) }
    }

    fn observed(uid: &str, name: &str, labels: &[(&str, &str)]) -> ObservedIdentity {
        ObservedIdentity {
            kubeconfig: "k1".into(),
            kube_system_uid: Ok(uid.into()),
            stated: Ok(Some(ClusterIdentitySpec {
                cluster_name: name.into(),
                labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                kube_system_uid: uid.into(),
                ..Default::default()
            })),
        }
    }

    fn condition<'a>(status: &'a ClusterStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn a_reached_member_with_the_canary_api_is_ready() {
        let s = cluster_status(None, Some(2), &reached(true), at(0));
        assert_eq!((s.last_contact_time, s.server_version.as_deref()), (Some(at(0)), Some("v1.36.0")));
        assert_eq!(s.observed_generation, Some(2));
        assert!(s.is_reachable());
        let ready = condition(&s, CONDITION_READY);
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("True", "CanaryAPIServed"));
    }

    #[test]
    fn a_member_without_the_canary_api_is_reachable_but_not_ready() {
        let s = cluster_status(None, None, &reached(false), at(0));
        assert!(s.is_reachable());
        let ready = condition(&s, CONDITION_READY);
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "CanaryAPIMissing"));
        assert!(ready.message.contains("member mode"), "{}", ready.message);
    }

    #[test]
    fn an_unreachable_member_keeps_its_last_contact_and_version() {
        let before = cluster_status(None, None, &reached(true), at(0));
        let s = cluster_status(Some(&before), None, &ProbeResult::Unreachable("connection refused".into()), at(30));
        assert!(!s.is_reachable());
        assert_eq!((s.last_contact_time, s.server_version.as_deref()), (Some(at(0)), Some("v1.36.0")));
        let reachable = condition(&s, CONDITION_REACHABLE);
        assert_eq!((reachable.reason.as_str(), reachable.message.as_str()), ("Unreachable", "connection refused"));
        assert_eq!(reachable.last_transition_time, at(30));
    }

    #[test]
    fn a_missing_secret_is_named_in_both_conditions() {
        let probe = ProbeResult::NoClient {
            reason: "KubeconfigSecretMissing",
            message: "cluster eu-1: kubeconfig Secret petrel-system/eu-1 does not exist on the hub".into(),
        };
        let s = cluster_status(None, None, &probe, at(0));
        for type_ in [CONDITION_READY, CONDITION_REACHABLE] {
            let c = condition(&s, type_);
            assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "KubeconfigSecretMissing"));
            assert!(c.message.contains("petrel-system/eu-1"), "{}", c.message);
        }
        assert_eq!(s.last_contact_time, None);
    }

    #[test]
    fn transition_times_move_only_when_a_condition_flips() {
        let first = cluster_status(None, None, &reached(true), at(0));
        let again = cluster_status(Some(&first), None, &reached(true), at(15));
        assert_eq!(condition(&again, CONDITION_REACHABLE).last_transition_time, at(0));
    }

    #[test]
    fn the_measured_rate_is_the_one_last_read_and_kept_while_the_member_is_unreachable() {
        let rate = |rps: f64| TrafficRate { requests_per_second: Some(rps), measured_at: Some(at(0)), error: None };
        let mut first = cluster_status(None, None, &reached(true), at(0));
        with_traffic(&mut first, None, &reached(true), Some(rate(12.5)));
        assert_eq!(first.traffic, Some(rate(12.5)));
        let lost = ProbeResult::Unreachable("refused".into());
        let mut later = cluster_status(Some(&first), None, &lost, at(30));
        with_traffic(&mut later, Some(&first), &lost, None);
        assert_eq!(later.traffic, Some(rate(12.5)), "kept: its measuredAt makes it stale");
        let mut gone = cluster_status(Some(&first), None, &reached(true), at(60));
        with_traffic(&mut gone, Some(&first), &reached(true), None);
        assert_eq!(gone.traffic, None, "the member publishes none any more");
        assert_eq!(
            sanitized_rate(TrafficRate { error: Some("x".repeat(5000)), ..rate(1.0) }).error.unwrap().len(),
            1024
        );
    }

    #[test]
    fn only_changes_or_a_minute_old_contact_are_written() {
        let first = cluster_status(None, None, &reached(true), at(0));
        assert!(cluster_status_worth_writing(None, &first));
        let fifteen = cluster_status(Some(&first), None, &reached(true), at(15));
        assert!(!cluster_status_worth_writing(Some(&first), &fifteen), "only the contact time moved");
        let minute = cluster_status(Some(&first), None, &reached(true), at(60));
        assert!(cluster_status_worth_writing(Some(&first), &minute));
        let lost = cluster_status(Some(&first), None, &ProbeResult::Unreachable("refused".into()), at(15));
        assert!(cluster_status_worth_writing(Some(&first), &lost));
        let still_lost = cluster_status(Some(&lost), None, &ProbeResult::Unreachable("refused".into()), at(120));
        assert!(!cluster_status_worth_writing(Some(&lost), &still_lost), "nothing new while it stays lost");
        let upgraded = cluster_status(
            Some(&first),
            None,
            &ProbeResult::Reached {
                server_version: "v1.37.0".into(),
                canary_api: true,
                identity: observed("u1", "eu-1", &[]),
            },
            at(15),
        );
        assert!(cluster_status_worth_writing(Some(&first), &upgraded));
    }
}
