//! Leader election over a `coordination.k8s.io/v1` Lease, so a Deployment can run two
//! petrel replicas while only one of them reconciles.
//!
//! The Lease bookkeeping (acquire, renew before expiry, take over an expired lock, clear
//! the holder) is `kube-lease-manager`'s; this module decides what petrel does around it:
//! wait as a standby until leading, run the controller while leading, stop the process
//! when the lease is lost, as controller-runtime operators do, so a replica that may have
//! been partitioned away never keeps writing next to the new leader, and on a shutdown
//! release the Lease only after the controllers stopped, retrying for a bounded time and
//! saying so when it cannot.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseParams};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::shard::{self, HeldShards};
use crate::shutdown::Shutdown;
use crate::telemetry::Metrics;

/// Where the Lease lives and how long a holder keeps it without renewing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderElection {
    pub namespace: String,
    pub lease_name: String,
    /// This replica's name in the Lease's `holderIdentity`.
    pub identity: String,
    /// Seconds a lease stays valid without renewal: how long a standby waits after the
    /// leader died before taking over.
    pub lease_duration_seconds: u64,
    /// Seconds before expiry at which the holder renews.
    pub renew_before_seconds: u64,
}

/// Why leader election could not run or stopped.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error(
        "--leader-election-renew-before ({renew_before}s) must be greater than zero and smaller than --leader-election-lease-duration ({duration}s)"
    )]
    InvalidTiming { duration: u64, renew_before: u64 },
    #[error("preparing Lease {namespace}/{name}: {source}")]
    Lease {
        namespace: String,
        name: String,
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },
    #[error("lost the leadership of Lease {namespace}/{name}; stopping so that only the new leader writes")]
    Lost { namespace: String, name: String },
    #[error("the leader election task of Lease {namespace}/{name} ended unexpectedly")]
    TaskEnded { namespace: String, name: String },
    #[error("stopped while waiting for the leadership of Lease {namespace}/{name}")]
    StoppedBeforeLeading { namespace: String, name: String },
    #[error(
        "could not release Lease {namespace}/{name} after {attempts} attempts ({reason}); a standby takes over once it expires"
    )]
    Release { namespace: String, name: String, attempts: u32, reason: String },
}

impl LeaderElection {
    /// Checks the timing before the lease manager sees it (its constructor panics on
    /// values it cannot use). Pure.
    pub fn validate(&self) -> Result<(), LeaderError> {
        let (duration, renew_before) = (self.lease_duration_seconds, self.renew_before_seconds);
        if renew_before == 0 || renew_before >= duration {
            return Err(LeaderError::InvalidTiming { duration, renew_before });
        }
        Ok(())
    }

    fn lost(&self) -> LeaderError {
        LeaderError::Lost { namespace: self.namespace.clone(), name: self.lease_name.clone() }
    }

    fn task_ended(&self) -> LeaderError {
        LeaderError::TaskEnded { namespace: self.namespace.clone(), name: self.lease_name.clone() }
    }

    fn stopped_before_leading(&self) -> LeaderError {
        LeaderError::StoppedBeforeLeading { namespace: self.namespace.clone(), name: self.lease_name.clone() }
    }
}

/// The Lease holder name of this replica: the Pod name when running in a Pod (the
/// Downward API sets `POD_NAME`), else host name and process id, unique on a machine. Pure.
pub fn identity(pod_name: Option<&str>, host_name: Option<&str>, pid: u32) -> String {
    match pod_name.filter(|name| !name.is_empty()) {
        Some(pod) => pod.to_string(),
        None => format!("{}-{pid}", host_name.filter(|h| !h.is_empty()).unwrap_or("petrel")),
    }
}

/// The default Lease name of a mode, so a hub and a member in the same namespace do not
/// take each other's lock. Pure.
pub fn default_lease_name(mode: &str) -> String {
    format!("petrel-{mode}")
}

/// How long a stopping leader keeps trying to release its Lease before it gives up and
/// exits with an error (the Lease then expires on its own after its duration).
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between two release attempts.
const RELEASE_RETRY: Duration = Duration::from_millis(200);
/// Pause after a failed renewal or acquisition attempt before the next one.
const LEASE_ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// Waits until this replica holds the Lease, then runs `work` while it does.
///
/// Returns `work`'s result when it ends first (after a shutdown request), once the Lease
/// is released, so a standby takes over at once; returns [`LeaderError::Lost`] when the
/// Lease is lost, dropping `work` mid-flight (every reconcile keeps its progress in the
/// status, so the next leader continues where this one stopped). A shutdown requested
/// while still waiting returns [`LeaderError::StoppedBeforeLeading`] without running
/// `work`. A release that fails for [`RELEASE_TIMEOUT`] is [`LeaderError::Release`].
pub async fn run_while_leading<W, T>(
    client: Client,
    election: &LeaderElection,
    shutdown: &Shutdown,
    work: W,
) -> Result<T, LeaderError>
where
    W: Future<Output = T>,
{
    election.validate()?;
    let manager = Arc::new(lease_manager(client, election).await?);
    // The renewal loop runs beside `work`; stopping it before the release means no
    // renewal can race the release and take the Lease back.
    let stop_renewing = CancellationToken::new();
    let (leading_tx, mut leading) = tokio::sync::watch::channel(false);
    let renewals = tokio::spawn(keep_lease(manager.clone(), leading_tx, stop_renewing.clone(), election.clone()));

    info!(lease = %election.lease_name, namespace = %election.namespace, identity = %election.identity, "waiting for leadership");
    let became_leader = async {
        while !*leading.borrow_and_update() {
            if leading.changed().await.is_err() {
                return false;
            }
        }
        true
    };
    let outcome = tokio::select! {
        leader = became_leader => if leader { None } else { Some(Err(election.task_ended())) },
        () = shutdown.requested() => Some(Err(election.stopped_before_leading())),
    };
    let outcome = match outcome {
        Some(early) => early,
        None => {
            info!(lease = %election.lease_name, identity = %election.identity, "leading");
            let lost = async {
                loop {
                    if leading.changed().await.is_err() || !*leading.borrow_and_update() {
                        return;
                    }
                }
            };
            tokio::select! {
                result = work => Ok(result),
                () = lost => Err(election.lost()),
            }
        }
    };

    stop_renewing.cancel();
    if let Err(e) = renewals.await {
        warn!(lease = %election.lease_name, error = %e, "the lease renewal task failed");
    }
    // A replica that lost the Lease has nothing to release (and must not touch the new
    // leader's Lease; release() only clears a Lease this identity holds).
    if matches!(outcome, Err(LeaderError::Lost { .. })) {
        return outcome;
    }
    info!(lease = %election.lease_name, "releasing the lease");
    release(&manager, election).await?;
    outcome
}

/// The lease manager of `election.lease_name`; `election` must be valid
/// ([`LeaderElection::validate`]).
async fn lease_manager(client: Client, election: &LeaderElection) -> Result<LeaseManager, LeaderError> {
    let lease_error = |source| LeaderError::Lease {
        namespace: election.namespace.clone(),
        name: election.lease_name.clone(),
        source,
    };
    // validate() proved 0 < renew_before < duration, the only way LeaseParams::new panics.
    let params = LeaseParams::new(&election.identity, election.lease_duration_seconds, election.renew_before_seconds)
        .with_field_manager(format!("petrel-leader-{}", election.identity));
    LeaseManagerBuilder::new(client, &election.lease_name)
        .with_namespace(&election.namespace)
        .with_parameters(params)
        .build()
        .await
        .map_err(lease_error)
}

/// How a replica of `--shards N` takes part: the number of shards, the one it prefers
/// (`--shard-index` or its StatefulSet ordinal) and the set the reconciles read.
#[derive(Debug, Clone)]
pub struct Sharding {
    pub preferred: Option<u32>,
    pub held: HeldShards,
}

/// One shard this replica campaigns for: its Lease's manager and renewal loop.
struct ShardCampaign {
    election: LeaderElection,
    manager: Arc<LeaseManager>,
    /// Stops this campaign's renewal loop (a child of the process-wide stop).
    stop: CancellationToken,
    renewals: tokio::task::JoinHandle<()>,
    follower: tokio::task::JoinHandle<()>,
}

impl ShardCampaign {
    /// Stops renewing, then (with `release`) releases the Lease, once no renewal can
    /// take it back.
    async fn stop(self, release_lease: bool) -> Result<(), LeaderError> {
        self.stop.cancel();
        if let Err(e) = self.renewals.await {
            warn!(lease = %self.election.lease_name, error = %e, "the lease renewal task failed");
        }
        self.follower.abort();
        if !release_lease {
            return Ok(());
        }
        info!(lease = %self.election.lease_name, "releasing the lease");
        release(&self.manager, &self.election).await
    }
}

/// Runs `work` (the controllers) from the start, while campaigning for shard Leases
/// beside it: one Lease per shard, `<lease-name>-shard-<i>`, each kept by the same
/// renewal loop as the single leader's ([`keep_lease`]). What is held goes to
/// `sharding.held` (which the reconciles ask before they touch a Canary) and to the
/// `petrel_shard_held` metric; a lost shard is dropped from the set, not a reason to stop.
///
/// Which shards to campaign for is [`shard::shards_to_campaign`]'s decision, taken at
/// every look (once per renew period) from a GET of the Leases this replica does not
/// campaign for yet. Once `work` ends, the renewals stop and every Lease this replica
/// campaigned for is released (a release of a Lease held by another is a no-op), so the
/// others take its shards at once; a release that fails is [`LeaderError::Release`].
pub async fn run_sharded<W, T>(
    client: Client,
    election: &LeaderElection,
    sharding: &Sharding,
    metrics: Arc<Metrics>,
    work: W,
) -> Result<T, LeaderError>
where
    W: Future<Output = T>,
{
    election.validate()?;
    let shards = sharding.held.shards();
    for index in 0..shards {
        metrics.observe_shard(index, false);
    }
    info!(shards, preferred = ?sharding.preferred, identity = %election.identity, "campaigning for shards");
    let stop = CancellationToken::new();
    let campaigns = tokio::spawn(campaign(client, election.clone(), sharding.clone(), metrics.clone(), stop.clone()));
    let result = work.await;
    stop.cancel();
    let campaigns = match campaigns.await {
        Ok(campaigns) => campaigns,
        Err(e) => {
            warn!(error = %e, "the shard campaign task failed");
            Vec::new()
        }
    };
    let mut first_error = None;
    for campaign in campaigns {
        // Every Lease campaigned for: a release of one held by another changes nothing.
        if let Err(e) = campaign.stop(true).await {
            first_error.get_or_insert(e);
        }
    }
    for index in sharding.held.held() {
        sharding.held.set(index, false);
        metrics.observe_shard(index, false);
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(result),
    }
}

/// Looks at the shard Leases once per renew period, tends the campaigns it runs
/// ([`shard::stewardship`]: ask for its preferred shard back, hand back another's, drop a
/// lost race) and starts the campaigns [`shard::shards_to_campaign`] decides on, until
/// `stop`; returns every campaign it still runs.
async fn campaign(
    client: Client,
    election: LeaderElection,
    sharding: Sharding,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> Vec<ShardCampaign> {
    let shards = sharding.held.shards();
    // Without a preference, replicas start their campaign at different shards (by their
    // identity), so that they do not all try shard 0 first.
    let start = sharding.preferred.or_else(|| {
        // The remainder is < shards, a u32.
        u32::try_from(shard::fnv1a(election.identity.as_bytes()) % u64::from(shards)).ok()
    });
    let order = shard::campaign_order(start, shards);
    let grace = Duration::from_secs(election.lease_duration_seconds);
    let look = Duration::from_secs(election.renew_before_seconds.max(1));
    let leases: Api<Lease> = Api::namespaced(client.clone(), &election.namespace);
    let mut campaigns: BTreeMap<u32, ShardCampaign> = BTreeMap::new();
    let mut free_since: BTreeMap<u32, tokio::time::Instant> = BTreeMap::new();
    // Shards this replica handed back, left to the replica that asked for one lease
    // duration (a replica without a preferred shard would otherwise take it again).
    let mut handed_back: BTreeMap<u32, tokio::time::Instant> = BTreeMap::new();
    loop {
        let now = chrono::Utc::now();
        let LeasesLook { mut seen, asked, requested } =
            look_at_leases(&leases, &order, &election, &mut free_since, grace, look).await;
        let running: Vec<u32> = campaigns.keys().copied().collect();
        for index in running {
            let Some(state) = seen.get(&index).copied() else { continue };
            let holds = sharding.held.holds(index);
            match shard::stewardship(index, sharding.preferred, holds, state, asked.contains(&index)) {
                shard::Stewardship::Keep => {}
                shard::Stewardship::Ask if requested.contains(&index) => {}
                shard::Stewardship::Ask => {
                    let name = shard::lease_name(&election.lease_name, index);
                    let request = serde_json::json!({"metadata": {"annotations": {
                        shard::WANTED_BY_ANNOTATION: election.identity,
                        shard::WANTED_AT_ANNOTATION: now.to_rfc3339(),
                    }}});
                    if let Err(e) = leases.patch(&name, &PatchParams::default(), &Patch::Merge(&request)).await {
                        warn!(lease = %name, error = %e, "could not ask for this replica's shard back");
                    }
                }
                shard::Stewardship::HandBack | shard::Stewardship::Drop => {
                    let Some(campaign) = campaigns.remove(&index) else { continue };
                    let hand_back = holds;
                    if hand_back {
                        // No reconcile of its Canaries from here on, then the Lease goes.
                        sharding.held.set(index, false);
                        metrics.observe_shard(index, false);
                        handed_back.insert(index, tokio::time::Instant::now());
                        info!(lease = %campaign.election.lease_name, shard = index, "handing the shard back to the replica that prefers it");
                    }
                    if let Err(e) = campaign.stop(hand_back).await {
                        warn!(shard = index, error = %e, "could not hand the shard back; its Lease expires on its own");
                    }
                }
            }
        }

        handed_back.retain(|_, at| at.elapsed() < grace);
        seen.retain(|index, _| !handed_back.contains_key(index));
        let campaigning: BTreeSet<u32> = campaigns.keys().copied().collect();
        for index in shard::shards_to_campaign(&order, sharding.preferred, &campaigning, &seen, grace) {
            let shard_election =
                LeaderElection { lease_name: shard::lease_name(&election.lease_name, index), ..election.clone() };
            match start_campaign(&client, shard_election, index, &sharding.held, &metrics, &stop).await {
                Ok(campaign) => {
                    campaigns.insert(index, campaign);
                }
                Err(e) => warn!(shard = index, error = %e, "could not campaign for a shard; trying again later"),
            }
        }
        tokio::select! {
            () = stop.cancelled() => return campaigns.into_values().collect(),
            () = tokio::time::sleep(look) => {}
        }
    }
}

/// What one look at the shard Leases found.
struct LeasesLook {
    /// Each Lease read, classified ([`shard::lease_seen`]); a Lease that could not be
    /// read is left out (looked at again next time).
    seen: BTreeMap<u32, shard::LeaseSeen>,
    /// Shards whose Lease carries another replica's fresh request for it.
    asked: BTreeSet<u32>,
    /// Shards whose Lease carries this replica's own request, recent enough to be left
    /// as it is ([`shard::request_is_current`]).
    requested: BTreeSet<u32>,
}

/// Reads every shard's Lease, in `order`, and classifies what it says; `free_since`
/// remembers since when each Lease has been without a holder.
async fn look_at_leases(
    leases: &Api<Lease>,
    order: &[u32],
    election: &LeaderElection,
    free_since: &mut BTreeMap<u32, tokio::time::Instant>,
    grace: Duration,
    look: Duration,
) -> LeasesLook {
    let mut found = LeasesLook { seen: BTreeMap::new(), asked: BTreeSet::new(), requested: BTreeSet::new() };
    let now = chrono::Utc::now();
    for &index in order {
        let name = shard::lease_name(&election.lease_name, index);
        let lease = match leases.get_opt(&name).await {
            Ok(lease) => lease,
            Err(e) => {
                warn!(lease = %name, error = %e, "could not read a shard's Lease; looking again later");
                continue;
            }
        };
        let annotations = lease.as_ref().and_then(|l| l.metadata.annotations.as_ref());
        let wanted = annotations.and_then(|a| {
            let by = a.get(shard::WANTED_BY_ANNOTATION)?;
            let at = chrono::DateTime::parse_from_rfc3339(a.get(shard::WANTED_AT_ANNOTATION)?).ok()?;
            Some((by.as_str(), at.with_timezone(&chrono::Utc)))
        });
        if shard::asked_by_another(wanted, &election.identity, now, grace) {
            found.asked.insert(index);
        }
        if shard::request_is_current(wanted, &election.identity, now, grace, look) {
            found.requested.insert(index);
        }
        let spec = lease.as_ref().and_then(|l| l.spec.clone()).unwrap_or_default();
        let holder = spec.holder_identity.filter(|h| !h.is_empty());
        let instant = tokio::time::Instant::now();
        let free_for = if holder.is_none() {
            instant.duration_since(*free_since.entry(index).or_insert(instant))
        } else {
            free_since.remove(&index);
            Duration::ZERO
        };
        let state = shard::lease_seen(
            holder.as_deref(),
            spec.renew_time.and_then(|t| crate::workloads::health::timestamp_to_chrono(&t.0)),
            spec.lease_duration_seconds,
            &election.identity,
            now,
            free_for,
        );
        found.seen.insert(index, state);
    }
    found
}

/// Starts keeping shard `index`'s Lease ([`keep_lease`]) and following what it says
/// into `held` and the metric.
async fn start_campaign(
    client: &Client,
    election: LeaderElection,
    index: u32,
    held: &HeldShards,
    metrics: &Arc<Metrics>,
    stop: &CancellationToken,
) -> Result<ShardCampaign, LeaderError> {
    let manager = Arc::new(lease_manager(client.clone(), &election).await?);
    let (leading_tx, mut leading) = tokio::sync::watch::channel(false);
    info!(lease = %election.lease_name, shard = index, "campaigning for a shard");
    let stop = stop.child_token();
    let renewals = tokio::spawn(keep_lease(manager.clone(), leading_tx, stop.clone(), election.clone()));
    let (held, metrics, lease) = (held.clone(), metrics.clone(), election.lease_name.clone());
    let follower = tokio::spawn(async move {
        while leading.changed().await.is_ok() {
            let holds = *leading.borrow_and_update();
            if held.set(index, holds) {
                if holds {
                    info!(%lease, shard = index, "holding a shard");
                } else {
                    warn!(%lease, shard = index, "lost a shard; its Canaries are left to its new holder");
                }
            }
            metrics.observe_shard(index, holds);
        }
    });
    Ok(ShardCampaign { election, manager, stop, renewals, follower })
}

/// Acquires and renews the Lease until `stop`, publishing whether this replica leads.
async fn keep_lease(
    manager: Arc<LeaseManager>,
    leading: tokio::sync::watch::Sender<bool>,
    stop: CancellationToken,
    election: LeaderElection,
) {
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            changed = manager.changed() => match changed {
                Ok(is_leader) => {
                    if leading.send(is_leader).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    warn!(lease = %election.lease_name, error = %e, "leader election request failed; retrying");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(LEASE_ERROR_BACKOFF) => {}
                    }
                }
            },
        }
    }
}

/// Clears this replica's hold on the Lease, retrying for [`RELEASE_TIMEOUT`].
async fn release(manager: &LeaseManager, election: &LeaderElection) -> Result<(), LeaderError> {
    let deadline = tokio::time::Instant::now() + RELEASE_TIMEOUT;
    let mut attempt = 1;
    loop {
        let error = match tokio::time::timeout_at(deadline, manager.release()).await {
            Ok(Ok(())) => {
                info!(lease = %election.lease_name, attempt, "released the lease");
                return Ok(());
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {RELEASE_TIMEOUT:?}"),
        };
        if tokio::time::Instant::now() + RELEASE_RETRY >= deadline {
            return Err(LeaderError::Release {
                namespace: election.namespace.clone(),
                name: election.lease_name.clone(),
                attempts: attempt,
                reason: error,
            });
        }
        warn!(lease = %election.lease_name, attempt, error = %error, "could not release the lease; retrying");
        tokio::time::sleep(RELEASE_RETRY).await;
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn election(duration: u64, renew_before: u64) -> LeaderElection {
        LeaderElection {
            namespace: "petrel-system".into(),
            lease_name: "petrel-member".into(),
            identity: "petrel-0".into(),
            lease_duration_seconds: duration,
            renew_before_seconds: renew_before,
        }
    }

    #[test]
    fn timing_that_would_panic_the_lease_manager_is_an_error() {
        assert!(election(15, 5).validate().is_ok());
        for (duration, renew_before) in [(15, 0), (15, 15), (5, 10), (0, 0)] {
            let error = election(duration, renew_before).validate().unwrap_err().to_string();
            assert!(
                error.contains(&format!("({renew_before}s)")) && error.contains(&format!("({duration}s)")),
                "{error}"
            );
        }
    }

    #[test]
    fn identity_prefers_the_pod_name() {
        assert_eq!(identity(Some("petrel-7d9f-abcde"), Some("node-1"), 42), "petrel-7d9f-abcde");
        assert_eq!(identity(None, Some("laptop"), 42), "laptop-42");
        assert_eq!(identity(Some(""), None, 7), "petrel-7");
    }

    /// An API server holding one Lease of `petrel-0` that fails the first
    /// `failing_patches` PATCHes with a 500; returns the client and the PATCH count.
    fn lease_api(failing_patches: usize) -> (Client, Arc<std::sync::atomic::AtomicUsize>) {
        use http::{Method, Request, Response};
        use kube::client::Body;
        use std::sync::atomic::{AtomicUsize, Ordering};

        let patches = Arc::new(AtomicUsize::new(0));
        let seen = patches.clone();
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        tokio::spawn(async move {
            let mut holder = Some("petrel-0");
            while let Some((request, send)) = handle.next_request().await {
                let (code, body) = if request.method() == Method::PATCH {
                    let n = seen.fetch_add(1, Ordering::SeqCst);
                    if n < failing_patches {
                        let status = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                            "message": "etcdserver: request timed out", "reason": "InternalError", "code": 500});
                        (500, status)
                    } else {
                        holder = None;
                        (200, lease_json(holder))
                    }
                } else {
                    (200, lease_json(holder))
                };
                let response = Response::builder()
                    .status(code)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap();
                send.send_response(response);
            }
        });
        (Client::new(service, "petrel-system"), patches)
    }

    fn lease_json(holder: Option<&str>) -> serde_json::Value {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let spec = match holder {
            Some(holder) => serde_json::json!({"holderIdentity": holder, "leaseDurationSeconds": 15,
                "acquireTime": now, "renewTime": now, "leaseTransitions": 1}),
            None => serde_json::json!({"leaseTransitions": 1}),
        };
        serde_json::json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "petrel-member", "namespace": "petrel-system", "resourceVersion": "1"},
            "spec": spec})
    }

    async fn manager(client: Client, election: &LeaderElection) -> LeaseManager {
        LeaseManagerBuilder::new(client, &election.lease_name)
            .with_namespace(&election.namespace)
            .with_parameters(LeaseParams::new(&election.identity, 15, 5))
            .build()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_failed_release_is_retried() {
        let election = election(15, 5);
        let (client, patches) = lease_api(2);
        let manager = manager(client, &election).await;
        release(&manager, &election).await.unwrap();
        assert_eq!(patches.load(std::sync::atomic::Ordering::SeqCst), 3, "two failures, then the release");
    }

    #[tokio::test]
    async fn a_release_that_keeps_failing_is_an_error_within_the_timeout() {
        let election = election(15, 5);
        let (client, patches) = lease_api(usize::MAX);
        let manager = manager(client, &election).await;
        let started = std::time::Instant::now();
        let error = release(&manager, &election).await.unwrap_err().to_string();
        assert!(started.elapsed() < RELEASE_TIMEOUT + Duration::from_secs(1), "{:?}", started.elapsed());
        assert!(patches.load(std::sync::atomic::Ordering::SeqCst) >= 2, "retried");
        assert!(
            error.contains("could not release Lease petrel-system/petrel-member")
                && error.contains("request timed out"),
            "{error}"
        );
    }

    #[test]
    fn hub_and_member_take_different_leases() {
        assert_ne!(default_lease_name("hub"), default_lease_name("member"));
        assert_eq!(default_lease_name("member"), "petrel-member");
    }
}
