//! One reconcile of one Canary: read, decide (pure), act, write the status once, notify.
//!
//! The order matters when the API server or the cache lags (issue 11, defect 6):
//! - the Canary decided from is at least as new as petrel's own last status write
//!   ([`super::freshness`]), and the status write carries its resourceVersion: a 409
//!   means someone (or petrel, from a stale read) moved it on, and the reconcile is
//!   retried from a fresh read without notifying anyone;
//! - the actions that change the world (routes, scaling, promotion) run *before* the
//!   status write: each is idempotent and the status records that it was done, so a
//!   crash or a refused write between them is repaired by doing it again;
//! - Events, alerts and webhooks that tell people run only *after* a successful write:
//!   a retried reconcile decides from the new status and does not tell them twice.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::{Api, ResourceExt};
use tracing::{debug, instrument, warn};

use super::freshness::WriteOutcome;
use super::{Context, Error, claims, lifecycle, provider_of};
use crate::analysis::alerts::{Alert, send_alerts};
use crate::analysis::metrics::{MetricDeps, apply_comparisons, invalid_metric_provider, run_metrics};
use crate::analysis::webhooks::{HookContext, HookEvent, HookFailure, run_gate_hooks, run_hooks};
use crate::analysis::{KubeSource, MetricSource};
use crate::api::canary::{
    APPROVED_REVISION_ANNOTATION, AlertSeverity, CanaryStatus, FLEET_ROLLOUT_ANNOTATION, HookType,
};
use crate::api::common::set_condition;
use crate::api::{Canary, MetricTemplate};
use crate::core::strategy::{comparison_shortfall, interval_of};
use crate::core::{self, Action, FleetGate, GateResults, Observation, Plan, Provider};
use crate::routers::{
    RouterError, TrafficRouter, Weights, affinity, options, router_with, unserved_kinds, unserved_message,
};
use crate::workloads::target::TargetKind;
use crate::workloads::{self, TargetSnapshot, WorkloadError};

/// How long a Stalled Canary waits before petrel looks again (watches usually wake it sooner).
const STALLED_RECHECK: Duration = Duration::from_secs(30);
/// Per-query timeout of metric checks.
const METRIC_QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How soon a reconcile whose status write met a newer Canary (409) runs again.
const CONFLICT_RETRY: Duration = Duration::from_millis(200);

/// Reconciles one Canary, read fresh when the cache lags behind petrel's own last write.
/// What the Canary asks for and cannot be done until a person changes something
/// ([`Error::Refused`]) is reported as `Stalled` with an Event, once, and looked at again
/// later; only transient failures are retried soon.
#[instrument(skip_all, fields(canary = %cached.name_any(), namespace = cached.namespace().unwrap_or_default()))]
pub async fn reconcile(cached: Arc<Canary>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    // With --shards N, another replica holds this Canary's shard: nothing is read or
    // written here. Should this replica take the shard over, every Canary is queued again.
    if !ctx.shards.owns(cached.metadata.namespace.as_deref().unwrap_or_default(), &cached.name_any()) {
        debug!("another replica's shard: not reconciling");
        return Ok(Requeue::await_change());
    }
    let _timer = ctx.metrics.time_reconcile(crate::telemetry::CANARY_CONTROLLER);
    let Some(canary) = ctx.caches.status_versions.current(&ctx.client, &cached).await? else {
        debug!("deleted meanwhile: nothing to do");
        return Ok(Requeue::await_change());
    };
    match reconcile_canary(&canary, &ctx).await {
        Err(Error::Refused { reason, message }) => {
            let status = canary.status.clone().unwrap_or_default();
            stall(&ctx, &canary, status, reason, &message).await
        }
        outcome => outcome,
    }
}

async fn reconcile_canary(canary: &Canary, ctx: &Arc<Context>) -> Result<Requeue, Error> {
    let namespace = canary.namespace().ok_or(Error::MissingNamespace)?;
    let status = canary.status.clone().unwrap_or_default();
    if let Some(requeue) = Box::pin(lifecycle::finalizer_step(ctx, canary)).await? {
        return Ok(requeue);
    }
    if canary.spec.suspend {
        debug!("suspended: not reconciling");
        return Ok(Requeue::await_change());
    }

    // Bad input: a visible Stalled condition and an Event; traffic is not touched.
    let provider = match provider_of(canary, &ctx.settings) {
        Ok(provider) => provider,
        Err(e) => return stall(ctx, canary, status, "UnknownProvider", &e.to_string()).await,
    };
    // The provider's kinds must be served (its CRDs installed) before anything is read or written.
    let router = router_with(provider, ctx.client.clone(), ctx.caches.router_memory());
    let unserved = unserved_kinds(&ctx.client, &ctx.caches.served_kinds, &router.required_kinds(canary))
        .await
        .map_err(|e| Error::Router { context: "discovering the provider's kinds".into(), message: e.to_string() })?;
    if !unserved.is_empty() {
        return stall(ctx, canary, status, "ProviderKindsNotServed", &unserved_message(provider, &unserved)).await;
    }
    let snapshot =
        match Box::pin(workloads::read_target(&ctx.client, &ctx.caches.deployments, &ctx.caches.configs, canary)).await
        {
            Ok(snapshot) => snapshot,
            Err(e) if e.is_stalled() => return stall(ctx, canary, status, stall_reason(&e), &e.to_string()).await,
            Err(e) => return Err(workload_error("reading the target", e)),
        };
    if let Some(refusal) =
        refusal_by_claims(ctx, canary, snapshot.target_deployment(), snapshot.primary_deployment()).await?
    {
        return stall(ctx, canary, status, refusal.reason, &refusal.message).await;
    }
    if let Some(target) = snapshot.target_deployment() {
        if let Some(message) = target_scaled_to_zero(canary, &status, target, snapshot.primary_deployment()) {
            return stall(ctx, canary, status, "TargetScaledToZero", &message).await;
        }
        if let Err(message) = check_service_port(canary, target) {
            return stall(ctx, canary, status, "ServicePortNotFound", &message).await;
        }
    }
    if let Some(message) = daemon_set_weights(canary, provider) {
        return stall(ctx, canary, status, "WeightsNotSupported", &message).await;
    }
    if let Some(message) = options::routing_refusal(canary, provider) {
        return stall(ctx, canary, status, "InvalidRouting", &message).await;
    }
    if let TargetKind::DaemonSet(daemon_set) = &snapshot.kind
        && let Err(message) = check_service_port_of(
            canary,
            "DaemonSet",
            daemon_set.target.spec.as_ref().and_then(|s| s.template.spec.as_ref()),
        )
    {
        return stall(ctx, canary, status, "ServicePortNotFound", &message).await;
    }
    if let Err(e) = interval_of(&canary.spec) {
        return stall(ctx, canary, status, "InvalidInterval", &e.to_string()).await;
    }
    if let Some(message) = comparison_shortfall(&canary.spec, provider) {
        return stall(ctx, canary, status, "TooFewTicksForComparison", &message).await;
    }
    let source = KubeSource::cached(ctx.client.clone(), ctx.caches.sources.clone());
    if let Some(message) = Box::pin(missing_metric_template(&source, canary, &namespace)).await {
        return stall(ctx, canary, status, "MetricTemplateNotFound", &message).await;
    }
    if let Some(message) = Box::pin(invalid_metric_provider(&metric_deps(ctx, &source), canary)).await {
        return stall(ctx, canary, status, "MetricProviderInvalid", &message).await;
    }

    // Generated objects: primary (created once, rebuilt from the promoted template if
    // deleted), its HPA, Services and routes (the previous provider's removed first).
    if let TargetKind::Deployment(workload) = &snapshot.kind
        && let Some(stalled) = Box::pin(lifecycle::restore_primary(ctx, canary, workload, &status)).await?
    {
        return stall(ctx, canary, status, stalled.reason, &stalled.message).await;
    }
    Box::pin(workloads::target::initialize(
        &ctx.client,
        &ctx.caches.deployments,
        &ctx.caches.configs,
        canary,
        &snapshot,
        lifecycle::revision_of_the_primary(&status),
    ))
    .await
    .map_err(|e| workload_error("creating the primary", e))?;
    Box::pin(lifecycle::retire_previous_router(ctx, canary, &status, provider)).await?;
    router.reconcile(canary).await.map_err(|e| router_error("creating the Services and routes", e))?;

    // Observe, run what the core asks for, decide.
    let now = Utc::now();
    let fleet = fleet_gate(canary, &snapshot.revision);
    let requests = core::requests::pending_requests(canary.annotations(), &status);
    let plan = core::plan(&canary.spec, &status, provider, &snapshot.revision, &fleet, now);
    let analysis_started = std::time::Instant::now();
    let mut gates = Box::pin(run_plan(ctx, &source, canary, provider, &plan, &status, &snapshot)).await;
    let analysis_time = plan.run_metrics.then(|| analysis_started.elapsed());
    if let Some(results) = gates.metrics.as_mut() {
        let metrics = canary.spec.analysis.as_ref().map(|a| a.metrics.as_slice()).unwrap_or_default();
        apply_comparisons(metrics, results, &status.comparison_samples);
    }
    let promoting_revision = status.last_applied_spec.clone().unwrap_or_else(|| snapshot.revision.clone());
    let observation = Observation {
        now,
        target_revision: snapshot.revision.clone(),
        target_release: snapshot.release.clone(),
        canary: snapshot.canary_health(canary, now),
        canary_scaled_down: snapshot.canary_scaled_down(),
        primary: snapshot.primary_health(canary, now),
        primary_updated: snapshot.primary_runs(&promoting_revision),
        primary_template: snapshot.primary_template(),
        fleet,
        gates,
        requests,
    };
    let decision = core::decide(&canary.spec, &status, provider, &observation);

    let (mut changes, mut after_status, mut notices) = (Vec::new(), Vec::new(), Vec::new());
    for action in decision.actions {
        match stage_of(&action) {
            Stage::BeforeStatus => changes.push(action),
            Stage::AfterStatus => after_status.push(action),
            Stage::Notice => notices.push(action),
        }
    }
    let cookies = Box::pin(apply_changes(ctx, canary, &snapshot, router.as_ref(), &changes)).await?;

    let mut next = decision.status;
    if let Some(cookies) = cookies {
        cookies.write_into(&mut next);
    }
    next.tracked_configs = snapshot.tracked_checksums();
    next.observed_generation = canary.metadata.generation;
    next.routed_by = Some(lifecycle::provider_name(canary, ctx));
    set_condition(&mut next.conditions, "Stalled", "False", "Reconciled", "", now);
    if let WriteOutcome::Conflict = Box::pin(write_status(ctx, canary, &status, next.clone())).await? {
        return Ok(Requeue::requeue(CONFLICT_RETRY));
    }
    // A failure here is returned once people are told of the written status: the next
    // reconcile finds the canary still scaled down and scales it up again.
    let late_changes = Box::pin(apply_changes(ctx, canary, &snapshot, router.as_ref(), &after_status)).await;
    Box::pin(notify(ctx, &source, canary, &snapshot, &notices, &next)).await;
    ctx.metrics.observe_canary(canary, &status, &next, provider, analysis_time);
    late_changes?;
    if decision.idle {
        // Nothing is due until the Canary, its target or its configs change, and those
        // are watched: no tick, no API call.
        return Ok(Requeue::await_change());
    }
    Ok(Requeue::requeue(decision.requeue_after))
}

/// When a reconcile applies an action, in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Changes to the world, before the status write: a failing one stops the reconcile
    /// with the status as it was, so the next one decides again from it.
    BeforeStatus,
    /// The scale-up that starts a run, once its status is written (see
    /// `Action::ScaleCanaryUp`).
    AfterStatus,
    /// What only tells people (Events, alerts, `event` and post-rollout webhooks): after
    /// a successful status write, so it happens once.
    Notice,
}

fn stage_of(action: &Action) -> Stage {
    match action {
        Action::Event { .. } | Action::FireHooks(_) => Stage::Notice,
        Action::ScaleCanaryUp { after_status: true } => Stage::AfterStatus,
        Action::SetRoutes { .. }
        | Action::ScaleCanaryUp { after_status: false }
        | Action::ScaleCanaryToZero
        | Action::PromoteCanaryToPrimary => Stage::BeforeStatus,
    }
}

/// Runs the hooks and metrics the plan names, in order, and collects their outcomes.
async fn run_plan(
    ctx: &Context,
    source: &KubeSource,
    canary: &Canary,
    provider: Provider,
    plan: &Plan,
    status: &CanaryStatus,
    snapshot: &TargetSnapshot,
) -> GateResults {
    let mut results = GateResults::default();
    let hook_ctx = HookContext {
        phase: status.phase,
        checksum: status.last_applied_spec.clone().unwrap_or_else(|| snapshot.revision.clone()),
        event: None,
    };
    for hook_type in &plan.hooks {
        let outcome = run_gate_hooks(&ctx.http, canary, *hook_type, &hook_ctx).await;
        if let Err(HookFailure { mute_alert: true, .. }) = &outcome {
            results.muted.insert(*hook_type);
        }
        results.hooks.insert(*hook_type, outcome.map_err(|failure| failure.message));
    }
    if plan.run_metrics {
        results.metrics = Some(run_metrics(&metric_deps(ctx, source), canary, provider).await);
    }
    results
}

fn metric_deps(ctx: &Context, source: &KubeSource) -> MetricDeps<KubeSource> {
    MetricDeps {
        source: source.clone(),
        default_metrics_server: Some(ctx.settings.metrics_server.clone()),
        query_timeout: METRIC_QUERY_TIMEOUT,
        egress: ctx.http.policy().clone(),
    }
}

/// Applies the core's actions that change the world, in order, before the status write.
/// A failing action stops the reconcile before the status is written, so the next
/// reconcile decides again from the same status; every action is idempotent for that
/// reason. Returns the session affinity cookies the routes were set with, for the status
/// (`None` when no routes were set).
async fn apply_changes(
    ctx: &Context,
    canary: &Canary,
    snapshot: &TargetSnapshot,
    router: &dyn TrafficRouter,
    actions: &[Action],
) -> Result<Option<affinity::Cookies>, Error> {
    let mut cookies = None;
    for action in actions {
        match action {
            Action::SetRoutes { primary, canary: canary_weight, mirror } => {
                let weights = Weights::new(*primary, *canary_weight, *mirror).map_err(|e| Error::Router {
                    context: "checking the weights the core decided".into(),
                    message: e.to_string(),
                })?;
                // The cookies these routes pin sessions with: kept for the release, a new
                // value chosen here (the only non-determinism) when the release has none.
                let stored = cookies.clone().unwrap_or_else(|| affinity::Cookies::of(canary.status.as_ref()));
                let next = affinity::next_cookies(&canary.spec, &stored, weights.canary(), || cookie_value(canary));
                let mut routed = canary.clone();
                next.clone().write_into(routed.status.get_or_insert_with(CanaryStatus::default));
                router
                    .set_routes(&routed, weights)
                    .await
                    .map_err(|e| router_error(format!("setting routes to {weights}"), e))?;
                cookies = Some(next);
            }
            Action::ScaleCanaryUp { .. } => {
                workloads::target::scale_canary_up(&ctx.client, &ctx.caches.deployments, snapshot)
                    .await
                    .map_err(|e| workload_error("scaling the canary up", e))?;
            }
            Action::ScaleCanaryToZero => {
                workloads::target::scale_canary_to_zero(&ctx.client, &ctx.caches.deployments, snapshot)
                    .await
                    .map_err(|e| workload_error("scaling the canary to zero", e))?;
            }
            Action::PromoteCanaryToPrimary => {
                workloads::target::promote(&ctx.client, &ctx.caches.deployments, &ctx.caches.configs, canary, snapshot)
                    .await
                    .map_err(|e| workload_error("promoting the canary", e))?;
            }
            // Notices: see `notify`.
            Action::FireHooks(_) | Action::Event { .. } => {}
        }
    }
    Ok(cookies)
}

/// A fresh session affinity cookie value: [`affinity::COOKIE_VALUE_LEN`] hex characters
/// from the process's random hash keys, the clock and the Canary's identity. It pins
/// sessions, it guards nothing: anyone the canary served sees it.
fn cookie_value(canary: &Canary) -> String {
    use std::hash::BuildHasher;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let seed = std::collections::hash_map::RandomState::new().hash_one((now, canary.metadata.uid.as_deref()));
    let digest = <sha2::Sha256 as sha2::Digest>::digest(seed.to_le_bytes());
    let mut value = hex::encode(digest);
    value.truncate(affinity::COOKIE_VALUE_LEN);
    value
}

/// Runs the notices of a decision whose status was written: webhooks fired for their
/// effect on others (post-rollout) and Events with their alerts and `event` webhooks.
/// None of them can fail the reconcile: the status is already written.
async fn notify(
    ctx: &Context,
    source: &KubeSource,
    canary: &Canary,
    snapshot: &TargetSnapshot,
    actions: &[Action],
    next: &CanaryStatus,
) {
    for action in actions {
        match action {
            Action::FireHooks(hook_type) => {
                let hook_ctx = HookContext {
                    phase: next.phase,
                    checksum: next.last_applied_spec.clone().unwrap_or_else(|| snapshot.revision.clone()),
                    event: None,
                };
                if let Err(e) = run_hooks(&ctx.http, canary, *hook_type, &hook_ctx).await {
                    ctx.events.publish(canary, "WebhookFailed", &e.to_string(), true);
                }
            }
            Action::Event { reason, message, warning, mute_alert } => {
                let notice = Notice { reason, message, warning: *warning, mute_alert: *mute_alert };
                publish(ctx, source, canary, next, &notice).await;
            }
            Action::SetRoutes { .. }
            | Action::ScaleCanaryUp { .. }
            | Action::ScaleCanaryToZero
            | Action::PromoteCanaryToPrimary => {}
        }
    }
}

/// An Event the core decided on (see [`Action::Event`]).
struct Notice<'a> {
    reason: &'a str,
    message: &'a str,
    warning: bool,
    mute_alert: bool,
}

/// The alert a notice sends to the Canary's subscriptions: none when it has none, or when
/// the webhook the notice is about has `muteAlert` (Flagger still records the Event).
fn alert_of(cluster: &str, canary: &Canary, next: &CanaryStatus, notice: &Notice<'_>) -> Option<Alert> {
    let has_alerts = canary.spec.analysis.as_ref().is_some_and(|a| !a.alerts.is_empty());
    (has_alerts && !notice.mute_alert).then(|| Alert {
        cluster: cluster.to_string(),
        namespace: canary.namespace().unwrap_or_default(),
        name: canary.name_any(),
        phase: next.phase,
        message: notice.message.to_string(),
        severity: if notice.warning { AlertSeverity::Error } else { AlertSeverity::Info },
    })
}

/// Records an Event and forwards it to `event` webhooks and alert subscriptions. Neither
/// forwarding can fail the reconcile.
async fn publish(ctx: &Context, source: &KubeSource, canary: &Canary, next: &CanaryStatus, notice: &Notice<'_>) {
    let Notice { reason, message, warning, .. } = *notice;
    ctx.events.publish(canary, reason, message, warning);
    let has_event_hooks =
        canary.spec.analysis.as_ref().is_some_and(|a| a.webhooks.iter().any(|w| w.type_ == HookType::Event));
    if has_event_hooks {
        let hook_ctx = HookContext {
            phase: next.phase,
            checksum: next.last_applied_spec.clone().unwrap_or_default(),
            event: Some(HookEvent {
                message: message.to_string(),
                event_type: if warning { "Warning" } else { "Normal" }.to_string(),
                timestamp_ms: Utc::now().timestamp_millis(),
            }),
        };
        if let Err(e) = run_hooks(&ctx.http, canary, HookType::Event, &hook_ctx).await {
            warn!(error = %e, "event webhook failed");
        }
    }
    if let Some(alert) = alert_of(&ctx.settings.cluster_name, canary, next, notice) {
        for e in send_alerts(&ctx.http, source, canary, &alert).await {
            ctx.metrics.record_alert_failure(canary, e.alert(), e.kind());
            ctx.events.publish(canary, "AlertFailed", &e.to_string(), true);
        }
    }
}

/// Marks the Canary Stalled with a reason a person can act on, records an Event when the
/// reason is new, and leaves traffic alone.
///
/// Boxed, like every callee of a reconcile whose state is more than a few KiB: an `async
/// fn` reserves room for the largest future it awaits, and a release of 1,000 Canaries
/// keeps 1,000 reconciles in flight at once, each of which held room for the largest
/// callee (the deletion path's 34 KiB; a stall's 5 KiB, awaited at many places). Boxed,
/// a reconcile holds only the state of the call it is waiting on
/// (`a_reconcile_in_flight_is_small`).
fn stall<'a>(
    ctx: &'a Context,
    canary: &'a Canary,
    status: CanaryStatus,
    reason: &'a str,
    message: &'a str,
) -> BoxFuture<'a, Result<Requeue, Error>> {
    Box::pin(async move {
        let already = status
            .conditions
            .iter()
            .any(|c| c.type_ == "Stalled" && c.is_true() && c.reason == reason && c.message == message);
        let mut next = status.clone();
        set_condition(&mut next.conditions, "Stalled", "True", reason, message, Utc::now());
        next.observed_generation = canary.metadata.generation;
        if let WriteOutcome::Conflict = write_status(ctx, canary, &status, next).await? {
            return Ok(Requeue::requeue(CONFLICT_RETRY));
        }
        if !already {
            ctx.events.publish(canary, reason, message, true);
        }
        Ok(Requeue::requeue(STALLED_RECHECK))
    })
}

fn stall_reason(e: &WorkloadError) -> &'static str {
    match e {
        WorkloadError::TargetNotFound { .. }
        | WorkloadError::KnativeServiceNotFound { .. }
        | WorkloadError::DaemonSetNotFound { .. } => "TargetNotFound",
        WorkloadError::InvalidDaemonSet { .. } => "TargetInvalid",
        WorkloadError::DaemonSetAutoscaler { .. } => "AutoscalerNotSupported",
        WorkloadError::NoPromotedTemplate { .. } => "PrimaryNotRestorable",
        WorkloadError::KnativeAutoscaler { .. } => "AutoscalerNotSupported",
        WorkloadError::NoSelectorLabel { .. } => "TargetSelectorInvalid",
        WorkloadError::MissingConfig { .. } => "ConfigNotFound",
        WorkloadError::AutoscalerNotFound { .. } => "AutoscalerNotFound",
        WorkloadError::UnsupportedAutoscaler { .. } => "AutoscalerNotSupported",
        _ => "InvalidWorkload",
    }
}

/// A failed workload operation: the Canary's fault when it needs a person's change (a
/// missing config, or an object the API server refused to accept), else transient.
pub(super) fn workload_error(context: &str, e: WorkloadError) -> Error {
    let refused = match &e {
        WorkloadError::Kube { source, .. } => refused_by_api_server(source).then_some("InvalidGeneratedObject"),
        e if e.is_stalled() => Some(stall_reason(e)),
        _ => None,
    };
    match refused {
        Some(reason) => Error::Refused { reason, message: format!("{context}: {e}") },
        None => Error::Workload { context: context.to_string(), message: e.to_string() },
    }
}

/// A failed router operation, classified like [`workload_error`]. A route kind the API
/// server does not serve (its CRDs are not installed) is the cluster's configuration,
/// not a transient failure.
pub(super) fn router_error(context: impl Into<String>, e: RouterError) -> Error {
    let context = context.into();
    let refused = match &e {
        RouterError::InvalidCanary { .. } => Some("InvalidRouting"),
        RouterError::Unsupported { .. } => Some("ProviderUnsupported"),
        RouterError::NotFound { .. } => Some("RouteTargetNotFound"),
        RouterError::Malformed { .. } => Some("RouteObjectMalformed"),
        RouterError::Api { source, .. } if refused_by_api_server(source) => Some("InvalidGeneratedObject"),
        RouterError::Api { source, .. } if matches!(source.as_ref(), kube::Error::Api(status) if status.code == 404) => {
            Some("RouteKindNotServed")
        }
        RouterError::InvalidWeights { .. } | RouterError::Api { .. } | RouterError::Json { .. } => None,
    };
    match refused {
        Some(reason) => Error::Refused { reason, message: format!("{context}: {e}") },
        None => Error::Router { context, message: e.to_string() },
    }
}

/// The API server refused a write because of what was written (400 Bad Request, 422
/// Invalid): retrying the same object cannot help.
fn refused_by_api_server(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 400 || status.code == 422)
}

/// Checks against the other Canaries of the namespace that claim the same objects, and the
/// objects petrel would take over (see [`claims`]): `Some` refusal when this Canary must
/// not touch anything. The owners of the Deployments read are looked up too: a primary
/// held by a live Canary edited onto another target is still that Canary's.
pub(super) async fn refusal_by_claims(
    ctx: &Context,
    canary: &Canary,
    target: Option<&Deployment>,
    primary: Option<&Deployment>,
) -> Result<Option<claims::Refusal>, Error> {
    if let Some(target) = target
        && let Some(refusal) = claims::managed_target(canary, target)
    {
        return Ok(Some(refusal));
    }
    let read: Vec<&Deployment> = target.into_iter().chain(primary).collect();
    let owners: Vec<String> =
        read.iter().filter_map(|deployment| claims::canary_owner(deployment)).map(|(name, _)| name).collect();
    let neighbours = ctx.canaries.neighbours(&ctx.client, canary, &owners).await?;
    if let Some(refusal) = claims::conflict(canary, neighbours.iter().map(Arc::as_ref), &read) {
        return Ok(Some(refusal));
    }
    let Some(primary) = primary else { return Ok(None) };
    let is_live = |uid: &str| neighbours.iter().any(|c| c.metadata.uid.as_deref() == Some(uid));
    Ok(claims::taken_primary(canary, primary, is_live))
}

/// A target a person scaled to zero before petrel ever initialised it: the primary would
/// be made up with replicas nobody asked for and releases analysed on them. Once
/// initialised, a target at zero is petrel's own doing (it scales the canary down between
/// releases), and an autoscaler decides the replicas itself. So is a target at zero
/// next to a primary this Canary adopts (left by a deleted Canary of the same name, which
/// scaled the target down): the primary has its replicas.
pub(crate) fn target_scaled_to_zero(
    canary: &Canary,
    status: &CanaryStatus,
    target: &Deployment,
    primary: Option<&Deployment>,
) -> Option<String> {
    let adopts_a_primary = primary.is_some_and(|primary| workloads::primary::is_this_canarys(canary, primary));
    let never_initialised = status.last_promoted_spec.is_none() && !adopts_a_primary;
    (never_initialised && canary.spec.autoscaler_ref.is_none() && workloads::is_at_zero(target)).then(|| {
        format!(
            "Deployment {} has spec.replicas 0: there would be no pods to serve or analyse; scale it up (or set spec.autoscalerRef) and petrel creates the primary with that many replicas",
            canary.spec.target_ref.name
        )
    })
}

/// The Service's target port must exist on the target's containers: a named port by name,
/// a number as a declared container port (a number no container declares still works in
/// Kubernetes, so only names are checked strictly).
pub(crate) fn check_service_port(canary: &Canary, target: &Deployment) -> Result<(), String> {
    check_service_port_of(canary, "Deployment", target.spec.as_ref().and_then(|s| s.template.spec.as_ref()))
}

/// [`check_service_port`] of any workload kind, by its pod spec.
pub(crate) fn check_service_port_of(
    canary: &Canary,
    kind: &str,
    pod: Option<&k8s_openapi::api::core::v1::PodSpec>,
) -> Result<(), String> {
    let service = &canary.spec.service;
    let Some(IntOrString::String(port_name)) = &service.target_port else {
        return Ok(());
    };
    let declared = pod
        .map(|pod| {
            pod.containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .any(|p| p.name.as_deref() == Some(port_name.as_str()))
        })
        .unwrap_or(false);
    if declared {
        Ok(())
    } else {
        Err(format!(
            "spec.service.targetPort {port_name:?} is not a port name of any container of {kind} {}",
            canary.spec.target_ref.name
        ))
    }
}

/// A DaemonSet target whose analysis would shift traffic by weight (no `iterations`, a
/// provider that can split): refused, as its weights are at admission. Only the default
/// provider (the operator's flag) is not known there, hence this check.
pub(crate) fn daemon_set_weights(canary: &Canary, provider: Provider) -> Option<String> {
    let weighted =
        matches!(core::strategy::strategy_of(&canary.spec, provider), core::strategy::Strategy::Canary { .. });
    (canary.spec.target_ref.is_daemon_set() && weighted).then(|| {
        format!(
            "DaemonSet {} would be released by traffic weights with provider {provider}: a DaemonSet runs one canary pod per node beside the primary's, so petrel does not shift its traffic by weight; set analysis.iterations (blue/green)",
            canary.spec.target_ref.name
        )
    })
}

/// The first metric whose MetricTemplate does not exist, as a message.
async fn missing_metric_template(source: &impl MetricSource, canary: &Canary, namespace: &str) -> Option<String> {
    let metrics = canary.spec.analysis.as_ref().map(|a| a.metrics.as_slice()).unwrap_or_default();
    for metric in metrics {
        let Some(template) = &metric.template_ref else { continue };
        let template_namespace = template.namespace.as_deref().unwrap_or(namespace);
        let found: Result<MetricTemplate, _> = source.metric_template(template_namespace, &template.name).await;
        if let Err(e) = found {
            return Some(format!("metric {}: {e}", metric.name));
        }
    }
    None
}

/// How the fleet hub gates this Canary, from the annotations only the hub writes.
pub(crate) fn fleet_gate(canary: &Canary, revision: &str) -> FleetGate {
    let annotations = canary.annotations();
    if !annotations.contains_key(FLEET_ROLLOUT_ANNOTATION) {
        return FleetGate::NotInFleet;
    }
    match annotations.get(APPROVED_REVISION_ANNOTATION) {
        Some(approved) if approved == revision => FleetGate::Approved { revision: approved.clone() },
        approved => FleetGate::Pending { approved: approved.cloned() },
    }
}

/// Writes the status with server-side apply, once, and only when it changed, on the
/// condition that the Canary is still at the resourceVersion it was decided from.
async fn write_status(
    ctx: &Context,
    canary: &Canary,
    old: &CanaryStatus,
    next: CanaryStatus,
) -> Result<WriteOutcome, Error> {
    if &next == old && canary.status.is_some() {
        return Ok(WriteOutcome::Unchanged);
    }
    let namespace = canary.namespace().ok_or(Error::MissingNamespace)?;
    let api: Api<Canary> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = status_patch(canary, &next);
    let outcome = match api
        .patch_status(&canary.name_any(), &PatchParams::apply(crate::FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
    {
        Ok(written) => WriteOutcome::Written(written.resource_version()),
        Err(e) if matches!(&e, kube::Error::Api(status) if status.code == 409) => {
            debug!(resource_version = ?canary.resource_version(), "the Canary changed since it was read; deciding again");
            // Counted as an API error with reason Conflict (petrel_api_errors_total).
            ctx.metrics.record_api_error(crate::telemetry::CANARY_CONTROLLER, &e);
            WriteOutcome::Conflict
        }
        Err(e) => return Err(Error::kube("writing the Canary status")(e)),
    };
    ctx.caches.status_versions.record(canary, &outcome);
    Ok(outcome)
}

/// The server-side apply body of a status write: the resourceVersion it was decided
/// from makes the API server refuse it (409) if the Canary changed since. Pure.
pub(crate) fn status_patch(canary: &Canary, next: &CanaryStatus) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "petrel.dev/v1alpha1",
        "kind": "Canary",
        "metadata": {"name": canary.name_any(), "resourceVersion": canary.resource_version()},
        "status": next,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canary(extra: serde_json::Value) -> Canary {
        let mut manifest = json!({
            "apiVersion": "petrel.dev/v1alpha1",
            "kind": "Canary",
            "metadata": {"name": "podinfo", "namespace": "test"},
            "spec": {
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "podinfo"},
                "service": {"port": 9898}
            }
        });
        merge(&mut manifest, extra);
        serde_json::from_value(manifest).unwrap()
    }

    /// The bytes one reconcile in flight holds before it allocates anything: the size of
    /// its future, 40,592 bytes in this (unoptimised) test build on 2026-12-05. Unbounded,
    /// a release of 1,000 Canaries held 1,000 of them at once; with
    /// `--max-concurrent-reconciles 32` they are at most about 1.3 MB, so the future is
    /// not boxed smaller, only kept from growing unnoticed (issue 15, docs/benchmarks.md).
    type ApiHandle = tower_test::mock::Handle<http::Request<kube::client::Body>, http::Response<kube::client::Body>>;

    /// A Context whose client talks to a mock API server, and the mock's handle.
    fn context(shards: crate::shard::HeldShards) -> (Arc<Context>, ApiHandle) {
        use http::{Request, Response};
        use kube::client::Body;
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let readiness = crate::telemetry::Readiness::new();
        let ctx = Arc::new(Context {
            events: super::super::EventSink::new(client.clone(), None),
            client,
            http: metrics_providers::EgressClient::new(
                metrics_providers::EgressPolicy::strict(),
                reqwest::Client::builder(),
            )
            .unwrap(),
            settings: super::super::Settings {
                default_provider: "kubernetes".into(),
                metrics_server: "http://prometheus:9090".into(),
                cluster_name: "cluster".into(),
                identity_config_map: ("petrel-system".into(), "petrel-cluster-identity".into()),
                traffic_rate_query: None,
                max_concurrent_reconciles: super::super::DEFAULT_MAX_CONCURRENT_RECONCILES,
            },
            metrics: Arc::default(),
            caches: super::super::Caches::new(readiness.watches()),
            readiness,
            canaries: Default::default(),
            shards,
            initializations: super::super::ReconcileGate::new(super::super::DEFAULT_MAX_CONCURRENT_INITIALIZATIONS),
        });
        (ctx, handle)
    }

    /// Every Canary a release wakes holds one reconcile future while it waits on the API
    /// server, so its size is memory times N: 40,592 bytes in this (unoptimised) build
    /// when every callee's state was inline, 8,520 with the large ones boxed.
    #[tokio::test]
    async fn a_reconcile_in_flight_is_small() {
        let (ctx, _handle) = context(crate::shard::HeldShards::new(1));
        let future = reconcile(Arc::new(canary(json!({}))), ctx);
        let bytes = std::mem::size_of_val(&future);
        println!("reconcile future: {bytes} bytes");
        assert!(bytes <= 12 << 10, "the reconcile future grew to {bytes} bytes");
    }

    /// With --shards N, a Canary of a shard this replica does not hold is left alone:
    /// no request at all (the mock API server never answers, so one would hang), until
    /// the shard is held; then the same reconcile goes to the API server.
    #[tokio::test]
    async fn a_canary_of_a_shard_not_held_is_neither_read_nor_written() {
        let shards = crate::shard::HeldShards::new(3);
        let (ctx, mut handle) = context(shards.clone());
        let podinfo = Arc::new(canary(json!({})));
        let outcome = tokio::time::timeout(Duration::from_secs(5), reconcile(podinfo.clone(), ctx.clone()))
            .await
            .expect("no request was made, so nothing waits for an answer")
            .expect("not an error");
        assert_eq!(outcome, Requeue::await_change());
        assert!(
            tokio::time::timeout(Duration::from_millis(100), handle.next_request()).await.is_err(),
            "no request reached the API server"
        );
        shards.set(crate::shard::shard_of("test", "podinfo", 3), true);
        let held = tokio::spawn(reconcile(podinfo, ctx));
        let request = tokio::time::timeout(Duration::from_secs(5), handle.next_request()).await;
        assert!(request.is_ok_and(|r| r.is_some()), "the shard's holder reads the Canary");
        held.abort();
    }

    /// A reconcile that a watch event asked for records how long it waited for its turn
    /// (`petrel_reconcile_wait_seconds`); one nothing woke (a requeue) records nothing.
    #[tokio::test]
    async fn a_woken_reconcile_records_how_long_it_waited() {
        // No shard held: the reconcile returns without a request.
        let (ctx, _handle) = context(crate::shard::HeldShards::new(3));
        let podinfo = Arc::new(canary(json!({})));
        let waits = |ctx: &Context| {
            ctx.metrics
                .render()
                .lines()
                .find(|line| line.starts_with("petrel_reconcile_wait_seconds_count"))
                .map(str::to_string)
        };
        super::super::reconcile_as_task(podinfo.clone(), ctx.clone()).await.unwrap();
        assert_eq!(waits(&ctx), None, "a requeue");
        ctx.caches.wakes.woke(vec![kube::runtime::reflector::ObjectRef::from_obj(podinfo.as_ref())]);
        super::super::reconcile_as_task(podinfo.clone(), ctx.clone()).await.unwrap();
        assert_eq!(waits(&ctx).as_deref(), Some(r#"petrel_reconcile_wait_seconds_count{controller="canary"} 1"#));
        super::super::reconcile_as_task(podinfo, ctx.clone()).await.unwrap();
        assert_eq!(
            waits(&ctx).as_deref(),
            Some(r#"petrel_reconcile_wait_seconds_count{controller="canary"} 1"#),
            "the wake was served"
        );
    }

    #[test]
    fn a_muted_notice_sends_no_alert_but_others_do() {
        let subscribed = canary(json!({"spec": {"analysis": {
            "alerts": [{"name": "team", "providerRef": {"name": "slack"}}],
        }}}));
        use crate::api::canary::Phase;
        let next = CanaryStatus { phase: Phase::Waiting, ..CanaryStatus::default() };
        let notice = |mute_alert| Notice { reason: "WaitingForApproval", message: "m", warning: false, mute_alert };
        let alert = alert_of("member-1", &subscribed, &next, &notice(false)).expect("an alert");
        assert_eq!((alert.cluster.as_str(), alert.phase, alert.message.as_str()), ("member-1", Phase::Waiting, "m"));
        assert_eq!(alert_of("member-1", &subscribed, &next, &notice(true)), None);
        assert_eq!(alert_of("member-1", &canary(json!({})), &next, &notice(false)), None, "no subscription");
    }

    fn merge(base: &mut serde_json::Value, extra: serde_json::Value) {
        match (base, extra) {
            (serde_json::Value::Object(b), serde_json::Value::Object(e)) => {
                for (k, v) in e {
                    merge(b.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (b, e) => *b = e,
        }
    }

    fn deployment_with_port(name: &str) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "podinfo", "namespace": "test"},
            "spec": {
                "selector": {"matchLabels": {"app": "podinfo"}},
                "template": {"spec": {"containers": [{"name": "app", "image": "podinfo:1", "ports": [{"name": name, "containerPort": 9898}]}]}}
            }
        }))
        .unwrap()
    }

    #[test]
    fn a_daemon_set_is_never_released_by_weights() {
        let ds = |analysis: serde_json::Value| {
            canary(json!({"spec": {"targetRef": {"kind": "DaemonSet", "name": "podinfo-ds"}, "analysis": analysis}}))
        };
        // No iterations with a provider that can split: weighted, refused.
        let message = daemon_set_weights(&ds(json!({"interval": "1m"})), Provider::Istio).expect("refused");
        assert!(message.contains("DaemonSet podinfo-ds") && message.contains("iterations"), "{message}");
        // Iterations (blue/green), or the kubernetes provider (always blue/green): fine.
        assert_eq!(daemon_set_weights(&ds(json!({"iterations": 5})), Provider::Istio), None);
        assert_eq!(daemon_set_weights(&ds(json!({"interval": "1m"})), Provider::Kubernetes), None);
        // A Deployment keeps its weights.
        assert_eq!(daemon_set_weights(&canary(json!({})), Provider::Istio), None);
    }

    #[test]
    fn a_named_target_port_must_exist_on_the_target() {
        let named = canary(json!({"spec": {"service": {"targetPort": "http"}}}));
        assert!(check_service_port(&named, &deployment_with_port("http")).is_ok());
        let err = check_service_port(&named, &deployment_with_port("metrics")).unwrap_err();
        assert!(err.contains("\"http\" is not a port name"), "{err}");
        // Numbers are not checked: Kubernetes routes to undeclared container ports too.
        let numbered = canary(json!({"spec": {"service": {"targetPort": 8080}}}));
        assert!(check_service_port(&numbered, &deployment_with_port("http")).is_ok());
    }

    #[test]
    fn a_status_write_is_conditional_on_the_version_decided_from() {
        let mut read = canary(json!({}));
        read.metadata.resource_version = Some("4711".into());
        let patch = status_patch(&read, &CanaryStatus::default());
        assert_eq!(patch["metadata"], json!({"name": "podinfo", "resourceVersion": "4711"}));
        assert_eq!(patch["kind"], "Canary");
    }

    #[test]
    fn people_are_told_after_the_status_write_and_the_world_changed_before() {
        use crate::api::canary::HookType;
        let event =
            Action::Event { reason: "WeightIncreased", message: String::new(), warning: false, mute_alert: false };
        assert_eq!(stage_of(&event), Stage::Notice);
        assert_eq!(stage_of(&Action::FireHooks(HookType::PostRollout)), Stage::Notice);
        for change in [
            Action::SetRoutes { primary: 90, canary: 10, mirror: false },
            Action::ScaleCanaryUp { after_status: false },
            Action::ScaleCanaryToZero,
            Action::PromoteCanaryToPrimary,
        ] {
            assert_eq!(stage_of(&change), Stage::BeforeStatus, "{change:?}");
        }
        // The run is on record before its canary gets pods.
        assert_eq!(stage_of(&Action::ScaleCanaryUp { after_status: true }), Stage::AfterStatus);
    }

    #[test]
    fn fleet_gate_reads_only_the_hub_annotations() {
        assert_eq!(fleet_gate(&canary(json!({})), "r1"), FleetGate::NotInFleet);
        let member = |approved: Option<&str>| {
            let mut annotations = json!({FLEET_ROLLOUT_ANNOTATION: "hub/podinfo"});
            if let Some(a) = approved {
                annotations[APPROVED_REVISION_ANNOTATION] = json!(a);
            }
            canary(json!({"metadata": {"annotations": annotations}}))
        };
        assert_eq!(fleet_gate(&member(None), "r1"), FleetGate::Pending { approved: None });
        assert_eq!(fleet_gate(&member(Some("r0")), "r1"), FleetGate::Pending { approved: Some("r0".into()) });
        assert_eq!(fleet_gate(&member(Some("r1")), "r1"), FleetGate::Approved { revision: "r1".into() });
    }

    /// A source that knows one MetricTemplate, `istio-system/not-found-percentage`.
    struct OneTemplate;

    impl MetricSource for OneTemplate {
        async fn metric_template(
            &self,
            namespace: &str,
            name: &str,
        ) -> Result<MetricTemplate, crate::analysis::SourceError> {
            if (namespace, name) == ("istio-system", "not-found-percentage") {
                Ok(MetricTemplate::new(name, Default::default()))
            } else {
                Err(crate::analysis::SourceError::NotFound {
                    kind: "MetricTemplate",
                    namespace: namespace.into(),
                    name: name.into(),
                })
            }
        }

        async fn secret(
            &self,
            namespace: &str,
            name: &str,
        ) -> Result<crate::analysis::SecretData, crate::analysis::SourceError> {
            Err(crate::analysis::SourceError::NotFound {
                kind: "Secret",
                namespace: namespace.into(),
                name: name.into(),
            })
        }
    }

    #[tokio::test]
    async fn a_metric_naming_a_missing_template_stalls_the_canary() {
        let metric = |namespace: &str| {
            json!({"spec": {"analysis": {"metrics": [
                {"name": "request-success-rate", "thresholdRange": {"min": 99}},
                {"name": "not-found", "templateRef": {"name": "not-found-percentage", "namespace": namespace}}
            ]}}})
        };
        assert_eq!(missing_metric_template(&OneTemplate, &canary(metric("istio-system")), "test").await, None);
        let message = missing_metric_template(&OneTemplate, &canary(metric("elsewhere")), "test").await;
        let message = message.expect("a missing template is reported");
        assert!(
            message.contains("metric not-found") && message.contains("elsewhere/not-found-percentage"),
            "{message}"
        );
    }
    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure(
                "Deployment.apps \"x\" is invalid: metadata.labels: must be no more than 63 characters",
                "Invalid",
            )
            .with_code(code)
            .boxed(),
        )
    }

    #[test]
    fn what_the_api_server_refuses_stalls_and_what_is_transient_is_retried() {
        let refused = workload_error(
            "creating the primary",
            WorkloadError::kube("creating Deployment t/x-primary", api_error(422)),
        );
        assert!(
            matches!(&refused, Error::Refused { reason: "InvalidGeneratedObject", message } if message.contains("63 characters")),
            "{refused:?}"
        );
        let transient = workload_error("creating the primary", WorkloadError::kube("creating", api_error(503)));
        assert!(matches!(transient, Error::Workload { .. }), "{transient:?}");
        let missing = WorkloadError::MissingConfig {
            kind: "ConfigMap",
            namespace: "t".into(),
            name: "c".into(),
            deployment: "d".into(),
        };
        assert!(matches!(workload_error("promoting", missing), Error::Refused { reason: "ConfigNotFound", .. }));

        let no_ingress =
            RouterError::InvalidCanary { canary: "t/c".into(), reason: "provider nginx needs spec.ingressRef".into() };
        assert!(matches!(
            router_error("creating the routes", no_ingress),
            Error::Refused { reason: "InvalidRouting", .. }
        ));
        let api = |code| RouterError::Api {
            verb: "apply",
            kind: "HTTPRoute".into(),
            namespace: "t".into(),
            name: "c".into(),
            source: Box::new(api_error(code)),
        };
        assert!(matches!(router_error("x", api(422)), Error::Refused { reason: "InvalidGeneratedObject", .. }));
        assert!(matches!(router_error("x", api(404)), Error::Refused { reason: "RouteKindNotServed", .. }));
        assert!(matches!(router_error("x", api(500)), Error::Router { .. }));
        assert!(matches!(
            router_error("x", RouterError::InvalidWeights { primary: 50, canary: 60 }),
            Error::Router { .. }
        ));
    }

    #[test]
    fn a_target_scaled_to_zero_stalls_only_before_petrel_initialised_it() {
        let mut target = deployment_with_port("http");
        target.spec.as_mut().unwrap().replicas = Some(0);
        let fresh = CanaryStatus::default();
        let message = target_scaled_to_zero(&canary(json!({})), &fresh, &target, None).expect("refused");
        assert!(message.contains("spec.replicas 0"), "{message}");
        // petrel scaled it down itself after initialising.
        let initialised = CanaryStatus { last_promoted_spec: Some("r0".into()), ..CanaryStatus::default() };
        assert_eq!(target_scaled_to_zero(&canary(json!({})), &initialised, &target, None), None);
        // A primary left by a deleted Canary of the same name (labelled, owned by no
        // Canary) is adopted: the target was scaled down by that Canary.
        let mut left = deployment_with_port("http");
        left.metadata.name = Some("podinfo-primary".into());
        left.metadata.labels = Some([(crate::workloads::CANARY_LABEL.to_string(), "podinfo".to_string())].into());
        assert_eq!(target_scaled_to_zero(&canary(json!({})), &fresh, &target, Some(&left)), None);
        // Another Canary's primary is no reason to release a target at zero.
        left.metadata.labels = Some([(crate::workloads::CANARY_LABEL.to_string(), "other".to_string())].into());
        assert!(target_scaled_to_zero(&canary(json!({})), &fresh, &target, Some(&left)).is_some());
        // An autoscaler decides the replicas.
        let scaled = canary(
            json!({"spec": {"autoscalerRef": {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "name": "podinfo"}}}),
        );
        assert_eq!(target_scaled_to_zero(&scaled, &fresh, &target, None), None);
        target.spec.as_mut().unwrap().replicas = Some(2);
        assert_eq!(target_scaled_to_zero(&canary(json!({})), &fresh, &target, None), None);
    }
}
