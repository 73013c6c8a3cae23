//! Splunk Observability Cloud (SignalFx): SignalFlow, executed over HTTP
//! (`POST /v2/signalflow/execute`, answered with a Server-Sent Events
//! stream).
//!
//! Configured as Flagger configures it: `address` (required) is the realm's
//! API host, `https://api.<realm>.signalfx.com` (or its stream host
//! `https://stream.<realm>.signalfx.com`; `wss://` is read as `https://`), and
//! the Secret key `sf_token_key` is sent as `X-SF-Token`. The program runs
//! over the 10 metric intervals before now with `immediate=true`, so the
//! stream ends once the window is computed.
//!
//! Flagger uses SignalFlow's WebSocket transport; petrel uses the HTTP one
//! (the same computation and messages, one request per query), so every
//! answer passes through the same bounded HTTP client as the other backends.
//! The value is the last data point of the one time series the program
//! publishes; several time series are refused, as in Flagger.

use std::time::Duration;

use reqwest::Method;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use serde_json::Value;

use crate::http::{HttpClient, HttpResponse, endpoint, parse_address, required_address, secret_header, unix_now};
use crate::provider::{MetricProvider, ProviderConfig, ProviderKind, QueryError, quote_body, quote_query};

/// Secret key of the organization access token.
pub const TOKEN: &str = "sf_token_key";
/// How many metric intervals the program's window spans, as in Flagger.
const WINDOW_INTERVALS: u32 = 10;

/// A SignalFlow client.
#[derive(Debug, Clone)]
pub struct SplunkProvider {
    http: HttpClient,
    execute_url: reqwest::Url,
    token: HeaderValue,
    window: Duration,
}

impl SplunkProvider {
    /// Builds a client from `config`; the Secret must hold `sf_token_key`.
    pub fn new(config: &ProviderConfig) -> Result<Self, QueryError> {
        let token = config.required_secret()?.required(ProviderKind::Splunk, TOKEN)?;
        let (stream, _api) = realm_hosts(required_address(config)?)?;
        Ok(Self {
            http: HttpClient::new(config)?,
            execute_url: endpoint(&stream, "/v2/signalflow/execute"),
            token: secret_header(&token, "the Secret's sf_token_key")?,
            window: config.interval.saturating_mul(WINDOW_INTERVALS),
        })
    }
}

/// The stream and API base URLs of a realm, from either one (as Flagger
/// derives them: `api.` and `stream.` swap, `ws(s)` reads as `http(s)`).
pub(crate) fn realm_hosts(address: &str) -> Result<(reqwest::Url, reqwest::Url), QueryError> {
    let address = address.trim();
    let http_address = match address.split_once("://") {
        Some(("wss", rest)) => format!("https://{rest}"),
        Some(("ws", rest)) => format!("http://{rest}"),
        _ => address.to_string(),
    };
    let url = parse_address(&http_address, false)?;
    let host = url.host_str().unwrap_or_default().to_string();
    let with_host = |prefix: &str| -> Result<reqwest::Url, QueryError> {
        let mut swapped = url.clone();
        let rest = host.strip_prefix("api.").or_else(|| host.strip_prefix("stream."));
        if let Some(rest) = rest {
            swapped
                .set_host(Some(&format!("{prefix}.{rest}")))
                .map_err(|e| QueryError::InvalidConfig(format!("address {address:?}: {e}")))?;
        }
        Ok(swapped)
    };
    Ok((with_host("stream")?, with_host("api")?))
}

impl MetricProvider for SplunkProvider {
    async fn query(&self, query: &str) -> Result<f64, QueryError> {
        let stop = unix_now()?.as_millis();
        let start = stop.saturating_sub(self.window.as_millis()).to_string();
        let stop = stop.to_string();
        let request = self
            .http
            .request(Method::POST, &self.execute_url)
            .header("X-SF-Token", self.token.clone())
            .header(CONTENT_TYPE, "text/plain")
            .header(ACCEPT, "text/event-stream")
            .query(&[("start", start.as_str()), ("stop", stop.as_str()), ("immediate", "true")])
            .body(query.to_string());
        let response = self.http.send(request).await?;
        let value = parse_response(&response, query);
        tracing::debug!(query, status = response.status, ?value, "signalflow query");
        value
    }
}

/// Splunk's error body: `{"message": "...", "errorType": "..."}`.
fn error_detail(body: &str) -> Option<String> {
    let parsed: Value = serde_json::from_str(body).ok()?;
    let message = parsed.get("message")?.as_str()?;
    Some(match parsed.get("errorType").and_then(Value::as_str) {
        Some(kind) => format!("{kind}: {message}"),
        None => message.to_string(),
    })
}

/// The events of a Server-Sent Events body: `(event, data)` pairs, data
/// lines joined with newlines.
fn events(body: &str) -> Vec<(String, String)> {
    let mut events = Vec::new();
    let (mut event, mut data): (Option<String>, Vec<&str>) = (None, Vec::new());
    for line in body.lines().chain(std::iter::once("")) {
        if line.is_empty() {
            if event.is_some() || !data.is_empty() {
                events.push((event.take().unwrap_or_else(|| "message".into()), data.join("\n")));
                data.clear();
            }
        } else if let Some(value) = line.strip_prefix("event:") {
            event = Some(value.trim().to_string());
        } else if let Some(value) = line.strip_prefix("data:") {
            data.push(value.strip_prefix(' ').unwrap_or(value));
        }
    }
    events
}

/// Decodes one SignalFlow execution stream into the last value of its one
/// time series.
pub(crate) fn parse_response(response: &HttpResponse, query: &str) -> Result<f64, QueryError> {
    if !response.is_success() {
        return Err(response.status_error(error_detail(&response.body)));
    }
    let garbage = |why: String| {
        QueryError::BadResponse(format!("not a SignalFlow stream ({why}): {}", quote_body(&response.body)))
    };
    let mut series: Vec<(String, f64)> = Vec::new();
    let mut ended = false;
    for (event, data) in events(&response.body) {
        let message: Value =
            serde_json::from_str(&data).map_err(|e| garbage(format!("{event} data is not JSON: {e}")))?;
        match event.as_str() {
            "error" => {
                let errors = message.get("errors").map(Value::to_string).unwrap_or_else(|| message.to_string());
                return Err(QueryError::QueryFailed {
                    error_type: "signalflow".into(),
                    message: errors,
                    query: quote_query(query),
                });
            }
            "control-message" => match message.get("event").and_then(Value::as_str) {
                Some("CHANNEL_ABORT") => {
                    let info = message.get("abortInfo").map(Value::to_string).unwrap_or_default();
                    return Err(QueryError::QueryFailed {
                        error_type: "aborted".into(),
                        message: info,
                        query: quote_query(query),
                    });
                }
                Some("END_OF_CHANNEL") => ended = true,
                _ => {}
            },
            "data" => {
                let points = message
                    .get("data")
                    .and_then(Value::as_array)
                    .ok_or_else(|| garbage("data without \"data\"".into()))?;
                for point in points {
                    let ts_id = point.get("tsId").and_then(Value::as_str).unwrap_or_default();
                    if let Some(value) = point.get("value").and_then(Value::as_f64) {
                        series.push((ts_id.to_string(), value));
                    }
                }
            }
            _ => {}
        }
    }
    if !ended && series.is_empty() {
        return Err(garbage("no END_OF_CHANNEL and no data".into()));
    }
    let mut ids: Vec<&str> = series.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    match (ids.len(), series.last()) {
        (0, _) | (_, None) => Err(QueryError::NoData { query: quote_query(query) }),
        (1, Some((_, value))) => Ok(*value),
        (count, _) => Err(QueryError::MultipleSeries { count, query: quote_query(query) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> HttpResponse {
        HttpResponse { status: 200, retry_after: None, body: body.into() }
    }

    const STREAM: &str = "event: control-message\ndata: {\"type\":\"control-message\",\"event\":\"STREAM_START\",\"timestampMs\":1700000000000}\n\n\
        event: control-message\ndata: {\"type\":\"control-message\",\"event\":\"JOB_START\",\"handle\":\"FAKEHANDLE\",\"timestampMs\":1700000000001}\n\n\
        event: metadata\ndata: {\"type\":\"metadata\",\"tsId\":\"AAAAAKw5o_o\",\"properties\":{\"sf_metric\":\"cpu.utilization\"}}\n\n\
        event: data\ndata: {\"type\":\"data\",\"data\":[{\"tsId\":\"AAAAAKw5o_o\",\"value\":41.5}],\"logicalTimestampMs\":1700000060000}\n\n\
        event: data\ndata: {\"type\":\"data\",\"data\":[{\"tsId\":\"AAAAAKw5o_o\",\"value\":42.0}],\"logicalTimestampMs\":1700000120000}\n\n\
        event: control-message\ndata: {\"type\":\"control-message\",\"event\":\"END_OF_CHANNEL\",\"timestampMs\":1700000120002}\n\n";

    #[test]
    fn the_last_point_of_the_one_series_is_the_value() {
        assert_eq!(parse_response(&ok(STREAM), "q"), Ok(42.0));
    }

    #[test]
    fn no_points_two_series_errors_and_garbage() {
        let empty = "event: control-message\ndata: {\"event\":\"END_OF_CHANNEL\",\"timestampMs\":1}\n\n";
        assert_eq!(parse_response(&ok(empty), "q"), Err(QueryError::NoData { query: "q".into() }));
        let two = STREAM.replacen("AAAAAKw5o_o\",\"value\":42.0", "BBBB\",\"value\":42.0", 1);
        assert_eq!(parse_response(&ok(&two), "q"), Err(QueryError::MultipleSeries { count: 2, query: "q".into() }));
        let error = "event: error\ndata: {\"type\":\"error\",\"error\":400,\"errors\":[{\"code\":\"ANALYTICS_PROGRAM_NAME_ERROR\",\"context\":{\"name\":\"dta\"}}]}\n\n";
        assert!(
            matches!(parse_response(&ok(error), "q"), Err(QueryError::QueryFailed { message, .. }) if message.contains("ANALYTICS_PROGRAM_NAME_ERROR"))
        );
        assert!(matches!(parse_response(&ok("<html>"), "q"), Err(QueryError::BadResponse(_))));
    }

    #[test]
    fn realm_hosts_swap_api_and_stream() {
        let (stream, api) = realm_hosts("https://api.us1.signalfx.com").unwrap();
        assert_eq!(
            (stream.as_str(), api.as_str()),
            ("https://stream.us1.signalfx.com/", "https://api.us1.signalfx.com/")
        );
        let (stream, api) = realm_hosts("wss://stream.eu0.signalfx.com").unwrap();
        assert_eq!(
            (stream.as_str(), api.as_str()),
            ("https://stream.eu0.signalfx.com/", "https://api.eu0.signalfx.com/")
        );
        let (stream, api) = realm_hosts("http://127.0.0.1:8080").unwrap();
        assert_eq!(stream, api);
        assert!(realm_hosts("not a url").is_err());
    }
}
