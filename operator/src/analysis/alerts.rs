//! Alerts: telling people about a Canary through chat or a webhook.
//!
//! A Canary subscribes to [`AlertProvider`]s in `analysis.alerts[]`, each with a severity
//! filter ([`severity_selected`]). Payloads are pure functions, each in the shape its
//! receiver documents:
//! - `slack` and `rocket`: a Slack incoming-webhook message with one attachment;
//! - `discord`: the same Slack message, sent to Discord's Slack-compatible endpoint
//!   `<address>/slack`;
//! - `msteams`: a message with an Adaptive Card (Teams Workflows webhooks);
//! - `gchat`: a Google Chat text message;
//! - `webhook`: a flat JSON object (see [`webhook_payload`]).
//!
//! Sending never decides anything about the release: every failure (a missing
//! AlertProvider or Secret, a receiver that is down) comes back as an [`AlertError`]
//! for the caller to record as an Event.
//!
//! A receiver's address is a credential (a Slack or Teams webhook URL holds its key in
//! the path), so messages name it by its origin only ([`RedactedUrl::origin`]), and
//! the values of the provider's Secret are scrubbed from a body a receiver answers.
//! Alerts go through the operator's [`EgressClient`]: its egress policy applies to the
//! receiver and to the provider's `proxy`, and at most 1 MiB of an answer is read.

use std::time::Duration;

use metrics_providers::outbound::{EgressClient, OutboundError, RedactedUrl, parse_url, scrub, secret_fragments};
use serde_json::{Value, json};

use super::{AlertSource, SecretData, SourceError, excerpt};
use crate::api::Canary;
use crate::api::alert_provider::AlertProviderSpec;
use crate::api::canary::{AlertSeverity, CanaryAlert, Phase};

/// How long a receiver gets to answer.
pub const ALERT_TIMEOUT: Duration = Duration::from_secs(10);
/// Where a Slack message goes when the Secret has a `token` but no address is set:
/// Slack's Web API, which takes the same message with a bot token.
pub const SLACK_API_URL: &str = "https://slack.com/api/chat.postMessage";
const DEFAULT_CHANNEL: &str = "general";
const DEFAULT_USERNAME: &str = "petrel";
const MAX_QUOTED_BODY: usize = 200;

/// One notification about one Canary.
#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    /// The operator's `--cluster-name`, so a fleet's alerts say where they come from.
    pub cluster: String,
    pub namespace: String,
    pub name: String,
    pub phase: Phase,
    pub message: String,
    pub severity: AlertSeverity,
}

/// Whether a subscription at `subscribed` receives an alert of `severity`: `info`
/// receives everything, `warn` warnings and errors, `error` only errors.
pub fn severity_selected(subscribed: AlertSeverity, severity: AlertSeverity) -> bool {
    severity_rank(severity) >= severity_rank(subscribed)
}

fn severity_rank(severity: AlertSeverity) -> u8 {
    match severity {
        AlertSeverity::Info => 0,
        AlertSeverity::Warn => 1,
        AlertSeverity::Error => 2,
    }
}

fn severity_name(severity: AlertSeverity) -> &'static str {
    match severity {
        AlertSeverity::Info => "info",
        AlertSeverity::Warn => "warn",
        AlertSeverity::Error => "error",
    }
}

/// Why an alert was not delivered. `Display` is meant for an Event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AlertError {
    #[error("alert {alert}: cannot use AlertProvider: {source}")]
    Provider { alert: String, source: Box<SourceError> },
    #[error("alert {alert}: cannot read the Secret of AlertProvider {provider}: {source}")]
    Secret { alert: String, provider: String, source: Box<SourceError> },
    #[error("alert {alert}: AlertProvider {provider} has no address (spec.address or the Secret's \"address\")")]
    NoAddress { alert: String, provider: String },
    #[error("alert {alert}: AlertProvider {provider} is invalid: {reason}")]
    Invalid { alert: String, provider: String, reason: String },
    #[error("alert {alert}: AlertProvider {provider}: {url} answered HTTP {status}: {body}")]
    Status { alert: String, provider: String, url: RedactedUrl, status: u16, body: String },
    #[error("alert {alert}: AlertProvider {provider}: cannot reach {url}: {reason}")]
    Transport { alert: String, provider: String, url: RedactedUrl, reason: String },
}

impl AlertError {
    /// The Canary's alert (its `analysis.alerts[].name`) that failed.
    pub fn alert(&self) -> &str {
        match self {
            Self::Provider { alert, .. }
            | Self::Secret { alert, .. }
            | Self::NoAddress { alert, .. }
            | Self::Invalid { alert, .. }
            | Self::Status { alert, .. }
            | Self::Transport { alert, .. } => alert,
        }
    }

    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Provider { .. } => "provider",
            Self::Secret { .. } => "secret",
            Self::NoAddress { .. } => "no_address",
            Self::Invalid { .. } => "invalid",
            Self::Status { .. } => "status",
            Self::Transport { .. } => "transport",
        }
    }
}

/// A ready-to-send alert: where, what, and the bearer token if any. `Debug` shows
/// neither the URL's secret parts nor the token.
#[derive(Clone, PartialEq)]
pub struct AlertRequest {
    pub url: reqwest::Url,
    pub body: Value,
    pub token: Option<String>,
    /// What to scrub from the receiver's answers: the values of the provider's Secret,
    /// the token, and the parts of the URL that carry its key.
    pub secrets: Vec<String>,
}

impl std::fmt::Debug for AlertRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertRequest")
            .field("url", &RedactedUrl::origin(&self.url))
            .field("body", &self.body)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

fn title(alert: &Alert) -> String {
    format!("{}.{}", alert.name, alert.namespace)
}

/// A Slack message (also Rocket.Chat and Discord's Slack endpoint).
pub fn slack_payload(channel: &str, username: &str, alert: &Alert) -> Value {
    let color = match alert.severity {
        AlertSeverity::Info => "good",
        AlertSeverity::Warn => "warning",
        AlertSeverity::Error => "danger",
    };
    json!({
        "channel": channel,
        "username": username,
        "text": format!("{}: {}", title(alert), alert.message),
        "attachments": [{
            "color": color,
            "author_name": title(alert),
            "fallback": alert.message,
            "text": alert.message,
            "mrkdwn_in": ["text"],
            "fields": [
                { "title": "Cluster", "value": alert.cluster, "short": true },
                { "title": "Phase", "value": alert.phase.as_str(), "short": true },
                { "title": "Severity", "value": severity_name(alert.severity), "short": true },
            ],
        }],
    })
}

/// A Microsoft Teams message carrying an Adaptive Card, as Teams Workflows webhooks take.
pub fn msteams_payload(alert: &Alert) -> Value {
    let color = match alert.severity {
        AlertSeverity::Info => "Good",
        AlertSeverity::Warn => "Warning",
        AlertSeverity::Error => "Attention",
    };
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": [
                    { "type": "TextBlock", "text": title(alert), "weight": "Bolder", "size": "Medium", "color": color },
                    { "type": "TextBlock", "text": alert.message, "wrap": true },
                    { "type": "FactSet", "facts": [
                        { "title": "Cluster", "value": alert.cluster },
                        { "title": "Phase", "value": alert.phase.as_str() },
                        { "title": "Severity", "value": severity_name(alert.severity) },
                    ]},
                ],
            },
        }],
    })
}

/// A Google Chat text message.
pub fn gchat_payload(alert: &Alert) -> Value {
    json!({
        "text": format!(
            "*{}* ({}, cluster {}, {}): {}",
            title(alert),
            alert.phase.as_str(),
            alert.cluster,
            severity_name(alert.severity),
            alert.message
        ),
    })
}

/// The generic webhook body:
/// `{"cluster", "namespace", "name", "phase", "severity", "message"}`.
pub fn webhook_payload(alert: &Alert) -> Value {
    json!({
        "cluster": alert.cluster,
        "namespace": alert.namespace,
        "name": alert.name,
        "phase": alert.phase.as_str(),
        "severity": severity_name(alert.severity),
        "message": alert.message,
    })
}

/// Where and what to send for `alert` through a provider, given its Secret's data.
///
/// The Secret's `address` overrides `spec.address`; its `token` is sent as a bearer
/// token. `subscription` and `provider` only name things in errors.
pub fn alert_request(
    subscription: &str,
    provider: &str,
    spec: &AlertProviderSpec,
    secret: Option<&SecretData>,
    alert: &Alert,
) -> Result<AlertRequest, AlertError> {
    let invalid =
        |reason: String| AlertError::Invalid { alert: subscription.into(), provider: provider.into(), reason };
    let text = |key: &str| -> Result<Option<String>, AlertError> {
        secret
            .and_then(|data| data.get(key))
            .map(|bytes| {
                String::from_utf8(bytes.clone()).map_err(|_| invalid(format!("the Secret's {key:?} is not UTF-8 text")))
            })
            .transpose()
    };
    let token = text("token")?;
    let address = text("address")?.or_else(|| spec.address.clone());
    let channel = spec.channel.as_deref().unwrap_or(DEFAULT_CHANNEL);
    let username = spec.username.as_deref().unwrap_or(DEFAULT_USERNAME);
    let no_address = || AlertError::NoAddress { alert: subscription.into(), provider: provider.into() };

    let (url, body) = match spec.type_.as_str() {
        "slack" => {
            let url = match (address, &token) {
                (Some(address), _) => address,
                (None, Some(_)) => SLACK_API_URL.to_string(),
                (None, None) => return Err(no_address()),
            };
            (url, slack_payload(channel, username, alert))
        }
        "rocket" => (address.ok_or_else(no_address)?, slack_payload(channel, username, alert)),
        "discord" => {
            let address = address.ok_or_else(no_address)?;
            let trimmed = address.trim().trim_end_matches('/');
            let url = if trimmed.ends_with("/slack") { trimmed.to_string() } else { format!("{trimmed}/slack") };
            (url, slack_payload(channel, username, alert))
        }
        "msteams" => (address.ok_or_else(no_address)?, msteams_payload(alert)),
        "gchat" => (address.ok_or_else(no_address)?, gchat_payload(alert)),
        "webhook" => (address.ok_or_else(no_address)?, webhook_payload(alert)),
        other => {
            return Err(invalid(format!(
                "type {other:?} is not supported; supported: slack, msteams, discord, rocket, gchat, webhook"
            )));
        }
    };
    let url = parse_url(&url).map_err(|why| invalid(format!("the address {why}")))?;
    let secrets = secret
        .into_iter()
        .flat_map(|data| data.values())
        .map(|value| String::from_utf8_lossy(value).into_owned())
        .chain([url.to_string()])
        .flat_map(|value| secret_fragments(&value))
        .collect();
    Ok(AlertRequest { url, body, token, secrets })
}

/// Sends `alert` through the AlertProvider of one subscription (the severity filter is
/// the caller's, see [`send_alerts`]). The provider's namespace defaults to the Canary's.
pub async fn send_alert<S: AlertSource>(
    client: &EgressClient,
    source: &S,
    canary_namespace: &str,
    subscription: &CanaryAlert,
    alert: &Alert,
) -> Result<(), AlertError> {
    let namespace = subscription.provider_ref.namespace.as_deref().unwrap_or(canary_namespace);
    let provider_name = format!("{namespace}/{}", subscription.provider_ref.name);
    let provider = source
        .alert_provider(namespace, &subscription.provider_ref.name)
        .await
        .map_err(|source| AlertError::Provider { alert: subscription.name.clone(), source: Box::new(source) })?;
    let secret = match &provider.spec.secret_ref {
        None => None,
        Some(secret_ref) => {
            Some(source.secret(namespace, &secret_ref.name).await.map_err(|source| AlertError::Secret {
                alert: subscription.name.clone(),
                provider: provider_name.clone(),
                source: Box::new(source),
            })?)
        }
    };
    let request = alert_request(&subscription.name, &provider_name, &provider.spec, secret.as_ref(), alert)?;

    let proxied;
    let client = match &provider.spec.proxy {
        None => client,
        Some(proxy) => {
            let invalid = |reason: String| AlertError::Invalid {
                alert: subscription.name.clone(),
                provider: provider_name.clone(),
                reason,
            };
            // The proxy may carry credentials: never quoted.
            let builder = reqwest::Client::builder().user_agent(crate::USER_AGENT);
            proxied = EgressClient::with_proxy(client.policy().clone(), builder, proxy)
                .map_err(|e| invalid(format!("cannot use its proxy: {e}")))?;
            &proxied
        }
    };
    post(client, &subscription.name, &provider_name, &request).await
}

/// Sends `request`; errors name the alert and the AlertProvider (`namespace/name`), so
/// an Event says which receiver failed although its URL is shown by origin only.
async fn post(
    client: &EgressClient,
    subscription: &str,
    provider: &str,
    request: &AlertRequest,
) -> Result<(), AlertError> {
    let mut builder =
        client.request(reqwest::Method::POST, request.url.clone()).timeout(ALERT_TIMEOUT).json(&request.body);
    if let Some(token) = &request.token {
        builder = builder.bearer_auth(token);
    }
    let url = RedactedUrl::origin(&request.url);
    let answer = client.send(builder).await.map_err(|error| AlertError::Transport {
        alert: subscription.into(),
        provider: provider.into(),
        url: url.clone(),
        reason: match error {
            OutboundError::Timeout => format!("no answer within {ALERT_TIMEOUT:?}"),
            other => other.to_string(),
        },
    })?;
    if answer.is_success() {
        return Ok(());
    }
    // A receiver may echo what it was sent (the token, its own URL) in an error. Scrubbed
    // before the excerpt is cut, so no half of a secret survives the cut.
    let secrets = request.secrets.iter().map(String::as_str).chain(request.token.as_deref());
    let body = excerpt(&scrub(&answer.body, secrets), MAX_QUOTED_BODY);
    Err(AlertError::Status { alert: subscription.into(), provider: provider.into(), url, status: answer.status, body })
}

/// Sends `alert` to every subscription of `canary` whose severity filter selects it,
/// concurrently. Returns the failures (empty when all were delivered).
pub async fn send_alerts<S: AlertSource>(
    client: &EgressClient,
    source: &S,
    canary: &Canary,
    alert: &Alert,
) -> Vec<AlertError> {
    let namespace = canary.metadata.namespace.as_deref().unwrap_or_default();
    let sends = canary
        .spec
        .analysis
        .iter()
        .flat_map(|analysis| &analysis.alerts)
        .filter(|subscription| severity_selected(subscription.severity, alert.severity))
        .map(|subscription| send_alert(client, source, namespace, subscription, alert));
    futures::future::join_all(sends).await.into_iter().filter_map(Result::err).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post as post_route;

    use metrics_providers::EgressPolicy;

    use super::*;
    use crate::api::AlertProvider;
    use crate::api::canary::{CanaryAnalysis, CanarySpec, TemplateRef};
    use crate::api::common::SecretRef;

    /// The operator's client with loopback allowed (the receivers are on 127.0.0.1).
    fn loopback_client() -> EgressClient {
        EgressClient::new(EgressPolicy::strict().allowing_loopback(), reqwest::Client::builder()).unwrap()
    }

    fn alert(severity: AlertSeverity) -> Alert {
        Alert {
            cluster: "eu-1".into(),
            namespace: "test".into(),
            name: "podinfo".into(),
            phase: Phase::Failed,
            message: "Canary failed! Rolled back podinfo.test".into(),
            severity,
        }
    }

    #[test]
    fn severity_filter_follows_flagger() {
        use AlertSeverity::*;
        let selected = |subscribed, severity| severity_selected(subscribed, severity);
        assert!(selected(Info, Info) && selected(Info, Warn) && selected(Info, Error));
        assert!(!selected(Warn, Info) && selected(Warn, Warn) && selected(Warn, Error));
        assert!(!selected(Error, Info) && !selected(Error, Warn) && selected(Error, Error));
    }

    #[test]
    fn slack_payload_has_the_canary_cluster_phase_and_severity() {
        let body = slack_payload("deploys", "petrel", &alert(AlertSeverity::Error));
        assert_eq!(body["channel"], "deploys");
        assert_eq!(body["username"], "petrel");
        let attachment = &body["attachments"][0];
        assert_eq!(attachment["color"], "danger");
        assert_eq!(attachment["author_name"], "podinfo.test");
        assert_eq!(attachment["text"], "Canary failed! Rolled back podinfo.test");
        assert_eq!(
            attachment["fields"],
            json!([
                { "title": "Cluster", "value": "eu-1", "short": true },
                { "title": "Phase", "value": "Failed", "short": true },
                { "title": "Severity", "value": "error", "short": true },
            ])
        );
    }

    #[test]
    fn msteams_payload_is_an_adaptive_card() {
        let body = msteams_payload(&alert(AlertSeverity::Warn));
        assert_eq!(body["type"], "message");
        let card = &body["attachments"][0];
        assert_eq!(card["contentType"], "application/vnd.microsoft.card.adaptive");
        assert_eq!(card["content"]["type"], "AdaptiveCard");
        let blocks = &card["content"]["body"];
        assert_eq!(blocks[0]["text"], "podinfo.test");
        assert_eq!(blocks[0]["color"], "Warning");
        assert_eq!(blocks[1]["text"], "Canary failed! Rolled back podinfo.test");
        assert_eq!(blocks[2]["facts"][0], json!({ "title": "Cluster", "value": "eu-1" }));
        assert_eq!(blocks[2]["facts"][1], json!({ "title": "Phase", "value": "Failed" }));
    }

    #[test]
    fn webhook_and_gchat_payloads() {
        assert_eq!(
            webhook_payload(&alert(AlertSeverity::Info)),
            json!({
                "cluster": "eu-1",
                "namespace": "test",
                "name": "podinfo",
                "phase": "Failed",
                "severity": "info",
                "message": "Canary failed! Rolled back podinfo.test",
            })
        );
        let text = gchat_payload(&alert(AlertSeverity::Info))["text"].as_str().unwrap().to_string();
        assert!(text.contains("podinfo.test") && text.contains("eu-1") && text.contains("Rolled back"), "{text}");
    }

    fn spec(type_: &str, address: Option<&str>) -> AlertProviderSpec {
        AlertProviderSpec { type_: type_.into(), address: address.map(String::from), ..Default::default() }
    }

    fn secret(pairs: &[(&str, &str)]) -> SecretData {
        pairs.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect()
    }

    #[test]
    fn secret_address_overrides_and_discord_uses_its_slack_endpoint() {
        let a = alert(AlertSeverity::Info);
        let request = alert_request(
            "s",
            "p",
            &spec("slack", Some("http://spec")),
            Some(&secret(&[("address", "http://secret"), ("token", "t")])),
            &a,
        )
        .unwrap();
        assert_eq!((request.url.as_str(), request.token.as_deref()), ("http://secret/", Some("t")));
        assert_eq!(request.body["channel"], "general", "default channel");
        assert_eq!(request.body["username"], "petrel", "default username");

        let discord =
            alert_request("s", "p", &spec("discord", Some("https://discord.com/api/webhooks/1/x/")), None, &a).unwrap();
        assert_eq!(discord.url.as_str(), "https://discord.com/api/webhooks/1/x/slack");
        assert_eq!(discord.body, slack_payload("general", "petrel", &a));

        let slack_bot = alert_request("s", "p", &spec("slack", None), Some(&secret(&[("token", "xoxb")])), &a).unwrap();
        assert_eq!(slack_bot.url.as_str(), SLACK_API_URL);
    }

    #[test]
    fn missing_address_and_unknown_type_are_errors() {
        let a = alert(AlertSeverity::Info);
        assert!(matches!(alert_request("s", "p", &spec("msteams", None), None, &a), Err(AlertError::NoAddress { .. })));
        let error = alert_request("s", "ns/p", &spec("pager", Some("http://x")), None, &a).unwrap_err();
        assert!(
            error.to_string().contains("\"pager\" is not supported") && error.to_string().contains("ns/p"),
            "{error}"
        );
    }

    // ---- against a local receiver ----

    /// Per request: the path, the Authorization header and the JSON body.
    type Received = Arc<Mutex<Vec<(String, Option<String>, Value)>>>;

    #[derive(Clone, Default)]
    struct Receiver {
        received: Received,
        status: u16,
    }

    async fn receive(
        State(receiver): State<Receiver>,
        Path(path): Path<String>,
        headers: HeaderMap,
        axum::Json(body): axum::Json<Value>,
    ) -> StatusCode {
        let auth = headers.get("authorization").map(|v| v.to_str().unwrap_or_default().to_string());
        receiver.received.lock().unwrap().push((path, auth, body));
        StatusCode::from_u16(receiver.status).unwrap()
    }

    async fn serve(receiver: Receiver) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let app = Router::new().route("/{*path}", post_route(receive)).with_state(receiver);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{address}")
    }

    #[derive(Default)]
    struct FakeSource {
        providers: BTreeMap<(String, String), AlertProvider>,
        secrets: BTreeMap<(String, String), SecretData>,
    }

    impl AlertSource for FakeSource {
        async fn alert_provider(&self, namespace: &str, name: &str) -> Result<AlertProvider, SourceError> {
            self.providers.get(&(namespace.into(), name.into())).cloned().ok_or(SourceError::NotFound {
                kind: "AlertProvider",
                namespace: namespace.into(),
                name: name.into(),
            })
        }

        async fn secret(&self, namespace: &str, name: &str) -> Result<SecretData, SourceError> {
            self.secrets.get(&(namespace.into(), name.into())).cloned().ok_or(SourceError::NotFound {
                kind: "Secret",
                namespace: namespace.into(),
                name: name.into(),
            })
        }
    }

    fn provider(namespace: &str, name: &str, spec: AlertProviderSpec) -> ((String, String), AlertProvider) {
        let mut provider = AlertProvider::new(name, spec);
        provider.metadata.namespace = Some(namespace.into());
        ((namespace.into(), name.into()), provider)
    }

    fn subscription(name: &str, severity: AlertSeverity, provider: &str) -> CanaryAlert {
        CanaryAlert {
            name: name.into(),
            severity,
            provider_ref: TemplateRef { name: provider.into(), namespace: None },
        }
    }

    fn canary(alerts: Vec<CanaryAlert>) -> Canary {
        let mut canary = Canary::new(
            "podinfo",
            CanarySpec { analysis: Some(CanaryAnalysis { alerts, ..Default::default() }), ..Default::default() },
        );
        canary.metadata.namespace = Some("test".into());
        canary
    }

    #[tokio::test]
    async fn alerts_reach_the_receivers_their_severity_selects() {
        let receiver = Receiver { status: 200, ..Default::default() };
        let url = serve(receiver.clone()).await;
        let source = FakeSource {
            providers: BTreeMap::from([
                provider(
                    "test",
                    "chat",
                    AlertProviderSpec {
                        type_: "slack".into(),
                        channel: Some("deploys".into()),
                        address: Some("http://127.0.0.1:1/unused".into()),
                        secret_ref: Some(SecretRef { name: "chat-secret".into() }),
                        ..Default::default()
                    },
                ),
                provider("test", "hook", spec("webhook", Some(&format!("{url}/generic")))),
                provider("test", "discord", spec("discord", Some(&format!("{url}/discord")))),
            ]),
            secrets: BTreeMap::from([(
                ("test".to_string(), "chat-secret".to_string()),
                secret(&[("address", &format!("{url}/from-secret")), ("token", "tok")]),
            )]),
        };
        let canary = canary(vec![
            subscription("chat", AlertSeverity::Info, "chat"),
            subscription("errors-only", AlertSeverity::Error, "hook"),
            subscription("discord", AlertSeverity::Warn, "discord"),
        ]);

        let failures = send_alerts(&loopback_client(), &source, &canary, &alert(AlertSeverity::Warn)).await;

        assert_eq!(failures, vec![]);
        let mut received = receiver.received.lock().unwrap().clone();
        received.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(received.len(), 2, "the error-only subscription skips a warning: {received:?}");
        assert_eq!(received[0].0, "discord/slack");
        assert_eq!(received[0].2, slack_payload("general", "petrel", &alert(AlertSeverity::Warn)));
        assert_eq!(received[1].0, "from-secret");
        assert_eq!(received[1].1.as_deref(), Some("Bearer tok"));
        assert_eq!(received[1].2, slack_payload("deploys", "petrel", &alert(AlertSeverity::Warn)));

        let failures = send_alerts(&loopback_client(), &source, &canary, &alert(AlertSeverity::Error)).await;
        assert_eq!(failures, vec![]);
        let received = receiver.received.lock().unwrap();
        let generic = received.iter().find(|(path, _, _)| path == "generic").expect("the webhook got the error");
        assert_eq!(generic.2, webhook_payload(&alert(AlertSeverity::Error)));
    }

    #[tokio::test]
    async fn failures_are_returned_not_raised() {
        let receiver = Receiver { status: 500, ..Default::default() };
        let url = serve(receiver.clone()).await;
        let port = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
        let source = FakeSource {
            providers: BTreeMap::from([
                provider("test", "broken", spec("msteams", Some(&format!("{url}/teams")))),
                provider("test", "down", spec("webhook", Some(&format!("http://127.0.0.1:{port}/")))),
                provider(
                    "test",
                    "secretless",
                    AlertProviderSpec {
                        type_: "slack".into(),
                        secret_ref: Some(SecretRef { name: "nope".into() }),
                        ..Default::default()
                    },
                ),
            ]),
            ..Default::default()
        };
        let canary = canary(vec![
            subscription("broken", AlertSeverity::Info, "broken"),
            subscription("down", AlertSeverity::Info, "down"),
            subscription("secretless", AlertSeverity::Info, "secretless"),
            subscription("missing", AlertSeverity::Info, "not-there"),
        ]);

        let failures = send_alerts(&loopback_client(), &source, &canary, &alert(AlertSeverity::Info)).await;

        let messages: Vec<String> = failures.iter().map(ToString::to_string).collect();
        assert_eq!(messages.len(), 4, "{messages:?}");
        assert!(matches!(&failures[0], AlertError::Status { status: 500, .. }), "{messages:?}");
        assert!(matches!(&failures[1], AlertError::Transport { .. }), "{messages:?}");
        assert!(messages[2].contains("Secret test/nope not found"), "{messages:?}");
        assert!(messages[3].contains("AlertProvider test/not-there not found"), "{messages:?}");
        assert_eq!(receiver.received.lock().unwrap()[0].2, msteams_payload(&alert(AlertSeverity::Info)));
    }

    /// Issue 11, defect 2: the Slack URL kept in an AlertProvider's Secret, its token and
    /// a proxy password never appear in an AlertError, whether the receiver is down,
    /// refuses and echoes them, or is refused by the egress policy.
    #[tokio::test]
    async fn secret_addresses_and_tokens_never_appear_in_failures() {
        async fn echo(headers: HeaderMap, body: String) -> (StatusCode, String) {
            let auth = headers.get("authorization").map(|v| v.to_str().unwrap_or_default().to_string());
            (StatusCode::FORBIDDEN, format!("invalid_token {auth:?} for {body}"))
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, Router::new().fallback(echo)).await.unwrap() });
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let slack_path = "/services/T0SECRET1/B0SECRET2/xoxSecretKey0123";
        let with_secret = |name: &str, secret: &str| {
            provider(
                "test",
                name,
                AlertProviderSpec {
                    type_: "slack".into(),
                    secret_ref: Some(SecretRef { name: secret.into() }),
                    ..Default::default()
                },
            )
        };
        let mut proxied = with_secret("proxied", "down");
        proxied.1.spec.proxy = Some("http://proxy-user:proxy-pw-4321@169.254.1.1:3128".into());
        let source = FakeSource {
            providers: BTreeMap::from([
                with_secret("echo", "echo"),
                with_secret("down", "down"),
                with_secret("metadata", "metadata"),
                proxied,
            ]),
            secrets: BTreeMap::from([
                (
                    ("test".to_string(), "echo".to_string()),
                    secret(&[("address", &format!("http://{address}{slack_path}")), ("token", "xoxb-tok-5678")]),
                ),
                (
                    ("test".to_string(), "down".to_string()),
                    secret(&[("address", &format!("http://user:pw-1234@127.0.0.1:{closed}{slack_path}?token=q-9876"))]),
                ),
                (
                    ("test".to_string(), "metadata".to_string()),
                    secret(&[("address", &format!("http://169.254.169.254{slack_path}"))]),
                ),
            ]),
        };
        let canary = canary(vec![
            subscription("echo", AlertSeverity::Info, "echo"),
            subscription("down", AlertSeverity::Info, "down"),
            subscription("metadata", AlertSeverity::Info, "metadata"),
            subscription("proxied", AlertSeverity::Info, "proxied"),
        ]);

        let failures = send_alerts(&loopback_client(), &source, &canary, &alert(AlertSeverity::Info)).await;

        let messages: Vec<String> = failures.iter().map(|f| format!("{f} {f:?}")).collect();
        assert_eq!(messages.len(), 4, "{messages:?}");
        assert!(messages[0].contains("403") && messages[0].contains("<redacted>"), "{messages:?}");
        assert!(messages[1].contains("cannot reach"), "{messages:?}");
        // The URL is shown by origin only, so the message names the AlertProvider.
        assert!(messages[0].contains("AlertProvider test/echo:"), "{messages:?}");
        assert!(messages[1].contains("AlertProvider test/down:"), "{messages:?}");
        assert!(messages[2].contains("egress policy"), "{messages:?}");
        assert!(messages[3].contains("proxy") && messages[3].contains("egress policy"), "{messages:?}");
        for secret in
            ["T0SECRET1", "B0SECRET2", "xoxSecretKey0123", "xoxb-tok-5678", "pw-1234", "q-9876", "proxy-pw-4321"]
        {
            assert!(messages.iter().all(|m| !m.contains(secret)), "{secret} in {messages:?}");
        }
    }
}
