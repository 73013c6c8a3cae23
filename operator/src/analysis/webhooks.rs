//! Calling a Canary's webhooks.
//!
//! Every webhook is an HTTP `POST` of a JSON payload, Flagger-compatible so Flagger's
//! load tester and gate servers work unchanged:
//!
//! ```json
//! {
//!   "name": "podinfo",
//!   "namespace": "test",
//!   "phase": "Progressing",
//!   "checksum": "<revision being released>",
//!   "type": "rollout",
//!   "metadata": { "<key>": "<value from the webhook's metadata>" }
//! }
//! ```
//!
//! `event` webhooks also carry, in `metadata`, `eventMessage` (the Event's message),
//! `eventType` (`Normal` or `Warning`) and `timestamp` (milliseconds since the Unix
//! epoch, as a string, like every metadata value).
//!
//! An attempt succeeds on any 2xx answer. Each attempt has the webhook's `timeout`
//! (default 10 s). A failed attempt is retried `retries` times after a short backoff,
//! but only when retrying can help: connection errors, timeouts, 5xx and 429. Any other
//! answer (a 403 from a closed gate, say) is final at once.
//!
//! Webhooks go through the operator's [`EgressClient`]: a URL whose address the egress
//! policy refuses (loopback, link-local, cloud metadata) is a failed call, never sent; an
//! answer whose body is over 1 MiB is a failed call, its body read no further (both
//! final). Messages show the URL without userinfo and with query values redacted
//! ([`RedactedUrl::path`]).

use std::time::Duration;

use metrics_providers::outbound::{EgressClient, OutboundError, RedactedUrl, parse_url, scrub, url_credentials};
use serde_json::{Map, Value, json};

use super::excerpt;
use crate::api::Canary;
use crate::api::canary::{CanaryWebhook, HookType, Phase};
use crate::core::strategy::parse_duration;

/// Per-attempt timeout when a webhook sets none (Flagger's default).
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// Wait before the first retry; doubled for each further retry, up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Longest part of a response body quoted in an error message.
const MAX_QUOTED_BODY: usize = 200;

/// What the payload says about the release at the time of the call.
#[derive(Clone, Debug, PartialEq)]
pub struct HookContext {
    pub phase: Phase,
    /// The revision being released (`status.lastAppliedSpec`, or the target's current one).
    pub checksum: String,
    /// Set for `event` webhooks: the Event being forwarded.
    pub event: Option<HookEvent>,
}

/// A Kubernetes Event forwarded to `event` webhooks.
#[derive(Clone, Debug, PartialEq)]
pub struct HookEvent {
    pub message: String,
    /// `Normal` or `Warning`.
    pub event_type: String,
    /// When the Event was recorded, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

/// The JSON body sent to `webhook` (see the [module docs](self) for its shape).
pub fn payload(canary_name: &str, namespace: &str, webhook: &CanaryWebhook, ctx: &HookContext) -> Value {
    let mut metadata: Map<String, Value> =
        webhook.metadata.iter().map(|(key, value)| (key.clone(), Value::String(value.clone()))).collect();
    if webhook.type_ == HookType::Event
        && let Some(event) = &ctx.event
    {
        // Set after the user's metadata: these keys describe the event and must be true.
        metadata.insert("eventMessage".into(), Value::String(event.message.clone()));
        metadata.insert("eventType".into(), Value::String(event.event_type.clone()));
        metadata.insert("timestamp".into(), Value::String(event.timestamp_ms.to_string()));
    }
    json!({
        "name": canary_name,
        "namespace": namespace,
        "phase": ctx.phase.as_str(),
        "checksum": ctx.checksum,
        "type": webhook.type_.as_str(),
        "metadata": metadata,
    })
}

/// Why one webhook call failed. `Display` names the webhook and is meant for an Event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook {name}: the url {reason}")]
    InvalidUrl { name: String, reason: String },
    #[error("webhook {name} ({url}): invalid timeout: {reason}")]
    InvalidTimeout { name: String, url: RedactedUrl, reason: String },
    #[error("webhook {name} ({url}) answered HTTP {status} after {attempts} attempt(s): {body}")]
    Status { name: String, url: RedactedUrl, status: u16, attempts: u32, body: String },
    #[error("webhook {name} ({url}) did not answer within {timeout:?} after {attempts} attempt(s)")]
    Timeout { name: String, url: RedactedUrl, timeout: Duration, attempts: u32 },
    #[error("webhook {name} ({url}) could not be called after {attempts} attempt(s): {reason}")]
    Transport { name: String, url: RedactedUrl, attempts: u32, reason: String },
    /// Refused by the egress policy, or an answer over the body cap: final.
    #[error("webhook {name} ({url}) failed: {reason}")]
    Refused { name: String, url: RedactedUrl, reason: String },
}

/// The outcome of one attempt.
enum Attempt {
    Success,
    Status {
        status: u16,
        body: String,
    },
    Timeout,
    Transport(String),
    /// Refused by the egress policy, or an answer over the body cap.
    Refused(String),
}

impl Attempt {
    /// Whether another attempt could answer differently.
    fn is_retryable(&self) -> bool {
        match self {
            Attempt::Success | Attempt::Refused(_) => false,
            Attempt::Status { status, .. } => *status >= 500 || *status == 429,
            Attempt::Timeout | Attempt::Transport(_) => true,
        }
    }
}

/// Backoff before retry number `retry` (0 = the first retry).
fn backoff(retry: u32) -> Duration {
    FIRST_BACKOFF.saturating_mul(1 << retry.min(8)).min(MAX_BACKOFF)
}

/// Calls every webhook of `hook_type` in `canary`, in the order they are declared.
///
/// For every type but [`HookType::Rollback`]: `Ok(())` when each answered 2xx (also when
/// there is none), otherwise `Err` describing the first that did not; later webhooks of
/// the type are not called once one failed, as a failed gate already decides.
///
/// For [`HookType::Rollback`] the meaning of a 2xx is "roll back now", and Flagger rolls
/// back when *any* rollback webhook answers 2xx: `Ok(())` as soon as one does, `Err` when
/// none does (including when the Canary has no rollback webhook), listing why.
pub async fn run_hooks(
    client: &EgressClient,
    canary: &Canary,
    hook_type: HookType,
    ctx: &HookContext,
) -> Result<(), String> {
    run_gate_hooks(client, canary, hook_type, ctx).await.map_err(|failure| failure.message)
}

/// Why the webhooks of one type did not pass, and whether the webhook that said so has
/// `muteAlert` (never for rollback webhooks: their "failure" is the normal answer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookFailure {
    pub message: String,
    pub mute_alert: bool,
}

impl From<String> for HookFailure {
    fn from(message: String) -> Self {
        HookFailure { message, mute_alert: false }
    }
}

/// [`run_hooks`], also telling whether the webhook that failed has `muteAlert`.
pub async fn run_gate_hooks(
    client: &EgressClient,
    canary: &Canary,
    hook_type: HookType,
    ctx: &HookContext,
) -> Result<(), HookFailure> {
    let name = canary.metadata.name.as_deref().unwrap_or_default();
    let namespace = canary.metadata.namespace.as_deref().unwrap_or_default();
    let webhooks: Vec<&CanaryWebhook> = canary
        .spec
        .analysis
        .iter()
        .flat_map(|analysis| &analysis.webhooks)
        .filter(|webhook| webhook.type_ == hook_type)
        .collect();

    // disableTLS needs its own client: certificate checks are a client setting.
    let insecure_client = if webhooks.iter().any(|webhook| webhook.disable_tls) {
        let builder = reqwest::Client::builder().user_agent(crate::USER_AGENT).tls_danger_accept_invalid_certs(true);
        Some(
            EgressClient::new(client.policy().clone(), builder)
                .map_err(|e| HookFailure::from(format!("cannot build the HTTP client for disableTLS webhooks: {e}")))?,
        )
    } else {
        None
    };

    let mut failures = Vec::new();
    for webhook in webhooks {
        let client = match (&insecure_client, webhook.disable_tls) {
            (Some(insecure), true) => insecure,
            _ => client,
        };
        let body = payload(name, namespace, webhook, ctx);
        match call_webhook(client, webhook, &body).await {
            Ok(()) if hook_type == HookType::Rollback => return Ok(()),
            Ok(()) => {}
            Err(error) if hook_type == HookType::Rollback => failures.push(error.to_string()),
            Err(error) => return Err(HookFailure { message: error.to_string(), mute_alert: webhook.mute_alert }),
        }
    }
    if hook_type == HookType::Rollback {
        return Err(HookFailure::from(if failures.is_empty() {
            "no rollback webhook is defined".to_string()
        } else {
            format!("no rollback webhook asked for a rollback: {}", failures.join("; "))
        }));
    }
    Ok(())
}

/// POSTs `body` to `webhook.url` with the webhook's timeout and retries.
///
/// Public so the reconciler can also call an operator-wide event webhook.
pub async fn call_webhook(client: &EgressClient, webhook: &CanaryWebhook, body: &Value) -> Result<(), WebhookError> {
    let target =
        parse_url(&webhook.url).map_err(|reason| WebhookError::InvalidUrl { name: webhook.name.clone(), reason })?;
    let url = RedactedUrl::path(&target);
    let timeout = match &webhook.timeout {
        None => DEFAULT_WEBHOOK_TIMEOUT,
        Some(text) => match parse_duration(text) {
            Ok(timeout) if !timeout.is_zero() => timeout,
            Ok(_) => {
                return Err(WebhookError::InvalidTimeout {
                    name: webhook.name.clone(),
                    url,
                    reason: "must be more than 0".into(),
                });
            }
            Err(error) => {
                return Err(WebhookError::InvalidTimeout {
                    name: webhook.name.clone(),
                    url,
                    reason: error.to_string(),
                });
            }
        },
    };
    let retries = u32::try_from(webhook.retries.unwrap_or(0)).unwrap_or(0);

    let mut attempts = 0;
    let last = loop {
        attempts += 1;
        let attempt = attempt(client, &target, body, timeout).await;
        if matches!(attempt, Attempt::Success) {
            return Ok(());
        }
        let retry = attempts - 1;
        if retry >= retries || !attempt.is_retryable() {
            break attempt;
        }
        tracing::debug!(webhook = %webhook.name, attempts, "webhook failed, retrying");
        tokio::time::sleep(backoff(retry)).await;
    };
    let name = webhook.name.clone();
    Err(match last {
        Attempt::Status { status, body } => WebhookError::Status { name, url, status, attempts, body },
        Attempt::Timeout => WebhookError::Timeout { name, url, timeout, attempts },
        Attempt::Transport(reason) => WebhookError::Transport { name, url, attempts, reason },
        Attempt::Refused(reason) => WebhookError::Refused { name, url, reason },
        // Success returned from inside the loop; the loop only breaks on a failure.
        Attempt::Success => return Ok(()),
    })
}

/// What an error message quotes of the body a webhook at `url` answered: at most
/// 200 characters, and never the URL's credentials (userinfo, query values), which a
/// server that echoes the request would bring back.
pub fn quote_answer(body: &str, url: &reqwest::Url) -> String {
    excerpt(&scrub(body, url_credentials(url).iter().map(String::as_str)), MAX_QUOTED_BODY)
}

async fn attempt(client: &EgressClient, url: &reqwest::Url, body: &Value, timeout: Duration) -> Attempt {
    let request = client.request(reqwest::Method::POST, url.clone()).timeout(timeout).json(body);
    match client.send(request).await {
        Ok(answer) if answer.is_success() => Attempt::Success,
        // The body explains the refusal (a gate server says why).
        Ok(answer) => Attempt::Status { status: answer.status, body: quote_answer(&answer.body, url) },
        Err(OutboundError::Timeout) => Attempt::Timeout,
        Err(error @ (OutboundError::Refused(_) | OutboundError::TooLarge { .. })) => {
            Attempt::Refused(error.to_string())
        }
        Err(error @ (OutboundError::Transport(_) | OutboundError::Invalid(_))) => Attempt::Transport(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::routing::post;

    use metrics_providers::EgressPolicy;

    use super::*;
    use crate::api::canary::{CanaryAnalysis, CanarySpec};

    /// The operator's client with loopback allowed (the receivers are on 127.0.0.1).
    fn loopback_client() -> EgressClient {
        EgressClient::new(EgressPolicy::strict().allowing_loopback(), reqwest::Client::builder()).unwrap()
    }

    fn webhook(name: &str, type_: HookType, url: &str) -> CanaryWebhook {
        CanaryWebhook { name: name.into(), type_, url: url.into(), ..Default::default() }
    }

    fn ctx() -> HookContext {
        HookContext { phase: Phase::Progressing, checksum: "abc123".into(), event: None }
    }

    fn canary(webhooks: Vec<CanaryWebhook>) -> Canary {
        let mut canary = Canary::new(
            "podinfo",
            CanarySpec { analysis: Some(CanaryAnalysis { webhooks, ..Default::default() }), ..Default::default() },
        );
        canary.metadata.namespace = Some("test".into());
        canary
    }

    #[test]
    fn payload_is_flagger_shaped() {
        let mut hook = webhook("load-test", HookType::PreRollout, "http://x");
        hook.metadata = BTreeMap::from([("cmd".to_string(), "hey -z 1m http://podinfo".to_string())]);
        assert_eq!(
            payload("podinfo", "test", &hook, &ctx()),
            json!({
                "name": "podinfo",
                "namespace": "test",
                "phase": "Progressing",
                "checksum": "abc123",
                "type": "pre-rollout",
                "metadata": { "cmd": "hey -z 1m http://podinfo" },
            })
        );
    }

    #[test]
    fn event_payload_carries_the_event_in_metadata() {
        let mut hook = webhook("events", HookType::Event, "http://x");
        hook.metadata =
            BTreeMap::from([("team".to_string(), "a".to_string()), ("eventType".to_string(), "spoofed".to_string())]);
        let mut context = ctx();
        context.event = Some(HookEvent {
            message: "Advance podinfo.test canary weight 10".into(),
            event_type: "Normal".into(),
            timestamp_ms: 1_700_000_000_123,
        });
        let body = payload("podinfo", "test", &hook, &context);
        assert_eq!(body["type"], "event");
        assert_eq!(
            body["metadata"],
            json!({
                "team": "a",
                "eventMessage": "Advance podinfo.test canary weight 10",
                "eventType": "Normal",
                "timestamp": "1700000000123",
            })
        );
    }

    #[test]
    fn event_fields_are_only_added_to_event_webhooks() {
        let mut context = ctx();
        context.event = Some(HookEvent { message: "m".into(), event_type: "Warning".into(), timestamp_ms: 1 });
        let body = payload("podinfo", "test", &webhook("gate", HookType::ConfirmRollout, "http://x"), &context);
        assert_eq!(body["metadata"], json!({}));
    }

    #[test]
    fn every_hook_type_name_matches_its_serde_name() {
        for hook_type in [
            HookType::ConfirmRollout,
            HookType::PreRollout,
            HookType::Rollout,
            HookType::ConfirmTrafficIncrease,
            HookType::ConfirmPromotion,
            HookType::PostRollout,
            HookType::Rollback,
            HookType::Event,
        ] {
            assert_eq!(serde_json::to_value(hook_type).unwrap(), json!(hook_type.as_str()));
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), FIRST_BACKOFF);
        assert_eq!(backoff(1), FIRST_BACKOFF * 2);
        assert_eq!(backoff(30), MAX_BACKOFF);
    }

    /// A local receiver answering `statuses` in turn (the last one repeated), after `delay`.
    #[derive(Clone, Default)]
    struct Receiver {
        bodies: Arc<Mutex<Vec<Value>>>,
        statuses: Arc<Vec<u16>>,
        delay: Duration,
    }

    async fn receive(State(receiver): State<Receiver>, axum::Json(body): axum::Json<Value>) -> (StatusCode, String) {
        let call = {
            let mut bodies = receiver.bodies.lock().unwrap();
            bodies.push(body);
            bodies.len() - 1
        };
        tokio::time::sleep(receiver.delay).await;
        let status = receiver.statuses.get(call).or(receiver.statuses.last()).copied().unwrap_or(200);
        (StatusCode::from_u16(status).unwrap(), format!("answer {call}: status {status}"))
    }

    /// Serves `receiver` on 127.0.0.1 and returns its base URL.
    async fn serve(receiver: Receiver) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let app = Router::new().route("/hook", post(receive)).with_state(receiver);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{address}/hook")
    }

    fn receiver(statuses: &[u16]) -> Receiver {
        Receiver { statuses: Arc::new(statuses.to_vec()), ..Default::default() }
    }

    #[tokio::test]
    async fn the_server_receives_the_payload() {
        let receiver = receiver(&[200]);
        let url = serve(receiver.clone()).await;
        let mut hook = webhook("gate", HookType::ConfirmPromotion, &url);
        hook.metadata = BTreeMap::from([("k".to_string(), "v".to_string())]);
        let canary = canary(vec![hook.clone(), webhook("other", HookType::Rollout, &url)]);

        let result = run_hooks(&loopback_client(), &canary, HookType::ConfirmPromotion, &ctx()).await;

        assert_eq!(result, Ok(()));
        let bodies = receiver.bodies.lock().unwrap();
        assert_eq!(
            *bodies,
            vec![payload("podinfo", "test", &hook, &ctx())],
            "only the confirm-promotion hook is called"
        );
        assert_eq!(bodies[0]["metadata"]["k"], "v");
    }

    #[tokio::test]
    async fn a_failure_says_whether_the_webhook_that_failed_mutes_alerts() {
        let ok = serve(receiver(&[200])).await;
        let refused = serve(receiver(&[403])).await;
        let mut muted = webhook("muted", HookType::ConfirmRollout, &refused);
        muted.mute_alert = true;
        // The first failure decides: a muted webhook after a loud one that failed is not reached.
        let loud_first = canary(vec![webhook("loud", HookType::ConfirmRollout, &refused), muted.clone()]);
        let failure = run_gate_hooks(&loopback_client(), &loud_first, HookType::ConfirmRollout, &ctx()).await;
        assert!(!failure.unwrap_err().mute_alert);
        let muted_first = canary(vec![webhook("passes", HookType::ConfirmRollout, &ok), muted]);
        let failure = run_gate_hooks(&loopback_client(), &muted_first, HookType::ConfirmRollout, &ctx()).await;
        let failure = failure.unwrap_err();
        assert!(failure.mute_alert && failure.message.contains("muted"), "{failure:?}");
    }

    #[tokio::test]
    async fn non_2xx_fails_naming_the_webhook_status_and_body() {
        let receiver = receiver(&[403]);
        let url = serve(receiver.clone()).await;
        let mut hook = webhook("approval-gate", HookType::ConfirmRollout, &url);
        hook.retries = Some(3);
        let canary = canary(vec![hook, webhook("second", HookType::ConfirmRollout, &url)]);

        let error = run_hooks(&loopback_client(), &canary, HookType::ConfirmRollout, &ctx()).await.unwrap_err();

        assert!(error.contains("approval-gate"), "{error}");
        assert!(error.contains("403"), "{error}");
        assert!(error.contains("answer 0: status 403"), "{error}");
        assert_eq!(receiver.bodies.lock().unwrap().len(), 1, "a 403 is final and stops the later hooks");
    }

    #[tokio::test]
    async fn server_errors_are_retried_until_success() {
        let receiver = receiver(&[500, 503, 200]);
        let url = serve(receiver.clone()).await;
        let mut hook = webhook("flaky", HookType::Rollout, &url);
        hook.retries = Some(5);

        let result = run_hooks(&loopback_client(), &canary(vec![hook]), HookType::Rollout, &ctx()).await;

        assert_eq!(result, Ok(()));
        assert_eq!(receiver.bodies.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn retries_are_bounded() {
        let receiver = receiver(&[500]);
        let url = serve(receiver.clone()).await;
        let mut hook = webhook("broken", HookType::Rollout, &url);
        hook.retries = Some(2);

        let error = run_hooks(&loopback_client(), &canary(vec![hook]), HookType::Rollout, &ctx()).await.unwrap_err();

        assert_eq!(receiver.bodies.lock().unwrap().len(), 3, "one attempt plus two retries");
        assert!(error.contains("broken") && error.contains("500") && error.contains("3 attempt"), "{error}");
    }

    #[tokio::test]
    async fn a_slow_webhook_times_out_per_attempt() {
        let receiver = Receiver { delay: Duration::from_secs(5), ..receiver(&[200]) };
        let url = serve(receiver.clone()).await;
        let mut hook = webhook("slow", HookType::PreRollout, &url);
        hook.timeout = Some("200ms".into());
        hook.retries = Some(1);

        let started = std::time::Instant::now();
        let error = run_hooks(&loopback_client(), &canary(vec![hook]), HookType::PreRollout, &ctx()).await.unwrap_err();

        assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
        assert!(error.contains("slow") && error.contains("did not answer within 200ms"), "{error}");
        assert_eq!(receiver.bodies.lock().unwrap().len(), 2, "a timeout is retried");
    }

    #[tokio::test]
    async fn an_unreachable_webhook_is_an_error() {
        // Bind and drop a listener so the port is (very likely) closed.
        let port = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
        let hook = webhook("gone", HookType::ConfirmRollout, &format!("http://127.0.0.1:{port}/"));

        let error =
            run_hooks(&loopback_client(), &canary(vec![hook]), HookType::ConfirmRollout, &ctx()).await.unwrap_err();

        assert!(error.contains("gone") && error.contains("could not be called"), "{error}");
    }

    #[tokio::test]
    async fn an_invalid_timeout_is_an_error_without_a_call() {
        let receiver = receiver(&[200]);
        let url = serve(receiver.clone()).await;
        let mut hook = webhook("typo", HookType::Rollout, &url);
        hook.timeout = Some("10 seconds".into());

        let error = run_hooks(&loopback_client(), &canary(vec![hook]), HookType::Rollout, &ctx()).await.unwrap_err();

        assert!(error.contains("typo") && error.contains("invalid timeout"), "{error}");
        assert!(receiver.bodies.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn no_webhook_of_a_gate_type_passes() {
        let result = run_hooks(&loopback_client(), &canary(vec![]), HookType::ConfirmRollout, &ctx()).await;
        assert_eq!(result, Ok(()));
    }

    #[tokio::test]
    async fn rollback_is_requested_when_any_rollback_webhook_answers_2xx() {
        let closed = receiver(&[403]);
        let open = receiver(&[200]);
        let (closed_url, open_url) = (serve(closed.clone()).await, serve(open.clone()).await);
        let hooks =
            vec![webhook("closed", HookType::Rollback, &closed_url), webhook("open", HookType::Rollback, &open_url)];

        let result = run_hooks(&loopback_client(), &canary(hooks), HookType::Rollback, &ctx()).await;

        assert_eq!(result, Ok(()));
        assert_eq!(closed.bodies.lock().unwrap().len(), 1);
        assert_eq!(open.bodies.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn no_rollback_without_a_2xx_rollback_webhook() {
        let closed = receiver(&[403]);
        let url = serve(closed.clone()).await;
        let client = loopback_client();

        let error =
            run_hooks(&client, &canary(vec![webhook("closed", HookType::Rollback, &url)]), HookType::Rollback, &ctx())
                .await
                .unwrap_err();
        assert!(error.contains("closed") && error.contains("403"), "{error}");

        let none = run_hooks(&client, &canary(vec![]), HookType::Rollback, &ctx()).await;
        assert!(none.is_err(), "no rollback webhook must never mean roll back");
    }

    #[tokio::test]
    async fn disable_tls_webhooks_are_still_called() {
        let receiver = receiver(&[200]);
        let url = serve(receiver.clone()).await;
        let mut hook = webhook("self-signed", HookType::Rollout, &url);
        hook.disable_tls = true;

        let result = run_hooks(&loopback_client(), &canary(vec![hook]), HookType::Rollout, &ctx()).await;

        assert_eq!(result, Ok(()));
        assert_eq!(receiver.bodies.lock().unwrap().len(), 1);
    }

    // ---- issue 11: egress policy, body cap, no credentials in messages ----

    #[tokio::test]
    async fn restricted_targets_fail_the_gate_without_a_call() {
        let receiver = receiver(&[200]);
        let url = serve(receiver.clone()).await;
        let strict = EgressClient::new(EgressPolicy::strict(), reqwest::Client::builder()).unwrap();
        for target in [url.as_str(), "http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/x"] {
            let error = run_hooks(
                &strict,
                &canary(vec![webhook("gate", HookType::ConfirmRollout, target)]),
                HookType::ConfirmRollout,
                &ctx(),
            )
            .await
            .unwrap_err();
            assert!(error.contains("gate") && error.contains("egress policy"), "{target}: {error}");
        }
        assert!(receiver.bodies.lock().unwrap().is_empty(), "the local gate was never called");
    }

    #[tokio::test]
    async fn a_refused_target_is_not_retried() {
        let strict = EgressClient::new(EgressPolicy::strict(), reqwest::Client::builder()).unwrap();
        let mut hook = webhook("gate", HookType::Rollout, "http://169.254.169.254/");
        hook.retries = Some(5);
        let started = std::time::Instant::now();
        let error = run_hooks(&strict, &canary(vec![hook]), HookType::Rollout, &ctx()).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_millis(500), "retried: {:?}", started.elapsed());
        assert!(error.contains("failed: refused"), "{error}");
    }

    #[tokio::test]
    async fn messages_never_show_userinfo_or_query_values() {
        let port = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
        let url = format!("http://gate-user:pw-7a6b5c4d@127.0.0.1:{port}/approve?token=tk-1a2b3c4d&sig=sg-9z8y7x");
        let error = run_hooks(
            &loopback_client(),
            &canary(vec![webhook("gate", HookType::ConfirmRollout, &url)]),
            HookType::ConfirmRollout,
            &ctx(),
        )
        .await
        .unwrap_err();
        for secret in ["gate-user", "pw-7a6b5c4d", "tk-1a2b3c4d", "sg-9z8y7x"] {
            assert!(!error.contains(secret), "{secret} in {error}");
        }
        assert!(error.contains(&format!("127.0.0.1:{port}/approve?token=%3Credacted%3E")), "{error}");
        let invalid = webhook("typo", HookType::Rollout, "http://u:pw-7a6b5c4d@ga te/");
        let error = run_hooks(&loopback_client(), &canary(vec![invalid]), HookType::Rollout, &ctx()).await.unwrap_err();
        assert!(error.contains("typo") && !error.contains("pw-7a6b5c4d"), "{error}");
    }

    /// Issue 11, defect 7: a webhook answering a 300 MB body (here: streaming without
    /// end). The call fails naming the cap, after reading about 1 MiB.
    #[tokio::test]
    async fn a_huge_answer_fails_the_call_after_the_body_cap() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let _ = stream.read(&mut [0u8; 8192]);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\n\r\n");
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0usize;
            while sent < 300 * 1024 * 1024 && stream.write_all(&chunk).is_ok() {
                sent += chunk.len();
            }
            sent
        });
        let mut hook = webhook("load-test", HookType::PreRollout, &format!("http://127.0.0.1:{port}/"));
        hook.retries = Some(3);
        let client = loopback_client();
        let error = run_hooks(&client, &canary(vec![hook]), HookType::PreRollout, &ctx()).await.unwrap_err();
        assert!(error.contains("load-test") && error.contains("over petrel's limit of 1048576 bytes"), "{error}");
        drop(client);
        let sent = tokio::task::spawn_blocking(move || server.join().unwrap()).await.unwrap();
        assert!(sent < 32 * 1024 * 1024, "the server sent {sent} bytes before petrel hung up");
    }
}
