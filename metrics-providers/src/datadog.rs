//! Datadog: the metrics query API (`GET /api/v1/query`).
//!
//! Configured as Flagger configures it:
//! - `address`: the site's API host, default `https://api.datadoghq.com`
//!   (e.g. `https://api.datadoghq.eu` for the EU site);
//! - Secret keys `datadog_api_key` and `datadog_application_key`, sent as the
//!   `DD-API-KEY` and `DD-APPLICATION-KEY` headers;
//! - the window is the 10 metric intervals before now, and the value is the
//!   first (oldest) point of the series: the newest point is usually an
//!   incomplete bucket.
//!
//! Unlike Flagger, a query that returns several series is refused (Flagger
//! takes the first), as for Prometheus: the query must aggregate.

use std::time::Duration;

use reqwest::Method;
use reqwest::header::HeaderValue;
use serde::Deserialize;

use crate::http::{HttpClient, HttpResponse, address_or, endpoint, parse_address, secret_header, unix_now};
use crate::provider::{MetricProvider, ProviderConfig, ProviderKind, QueryError, quote_body, quote_query};

/// Datadog's US1 site, Flagger's default.
pub const DEFAULT_ADDRESS: &str = "https://api.datadoghq.com";
/// Secret key of the API key.
pub const API_KEY: &str = "datadog_api_key";
/// Secret key of the application key.
pub const APPLICATION_KEY: &str = "datadog_application_key";
/// How many metric intervals the query window spans, as in Flagger.
const WINDOW_INTERVALS: u32 = 10;

/// A Datadog metrics query API client.
#[derive(Debug, Clone)]
pub struct DatadogProvider {
    http: HttpClient,
    query_url: reqwest::Url,
    api_key: HeaderValue,
    application_key: HeaderValue,
    window: Duration,
}

impl DatadogProvider {
    /// Builds a client from `config`; the Secret must hold both keys.
    pub fn new(config: &ProviderConfig) -> Result<Self, QueryError> {
        let secret = config.required_secret()?;
        let api_key = secret.required(ProviderKind::Datadog, API_KEY)?;
        let application_key = secret.required(ProviderKind::Datadog, APPLICATION_KEY)?;
        let base = parse_address(address_or(config, DEFAULT_ADDRESS), false)?;
        Ok(Self {
            http: HttpClient::new(config)?,
            query_url: endpoint(&base, "/api/v1/query"),
            api_key: secret_header(&api_key, "the Secret's datadog_api_key")?,
            application_key: secret_header(&application_key, "the Secret's datadog_application_key")?,
            window: config.interval.saturating_mul(WINDOW_INTERVALS),
        })
    }

    fn request(&self, url: &reqwest::Url) -> reqwest::RequestBuilder {
        self.http
            .request(Method::GET, url)
            .header("DD-API-KEY", self.api_key.clone())
            .header("DD-APPLICATION-KEY", self.application_key.clone())
    }
}

impl MetricProvider for DatadogProvider {
    async fn query(&self, query: &str) -> Result<f64, QueryError> {
        let to = unix_now()?.as_secs();
        let from = to.saturating_sub(self.window.as_secs()).to_string();
        let to = to.to_string();
        let request = self.request(&self.query_url).query(&[("query", query), ("from", &from), ("to", &to)]);
        let response = self.http.send(request).await?;
        let value = parse_response(&response, query);
        tracing::debug!(query, status = response.status, ?value, "datadog query");
        value
    }
}

#[derive(Debug, Deserialize)]
struct QueryResponse {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    series: Vec<Series>,
}

#[derive(Debug, Deserialize)]
struct Series {
    /// `[[milliseconds, value or null], ...]`, oldest first.
    #[serde(default)]
    pointlist: Vec<(f64, Option<f64>)>,
}

/// The error Datadog's body holds: `{"errors": ["..."]}` or `{"error": "..."}`.
fn error_detail(body: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Errors {
        #[serde(default)]
        errors: Vec<String>,
        #[serde(default)]
        error: Option<String>,
    }
    let parsed: Errors = serde_json::from_str(body).ok()?;
    let mut all = parsed.errors;
    all.extend(parsed.error);
    (!all.is_empty()).then(|| all.join("; "))
}

/// Decodes one `/api/v1/query` answer into the single number it must hold.
pub(crate) fn parse_response(response: &HttpResponse, query: &str) -> Result<f64, QueryError> {
    if !response.is_success() {
        return Err(response.status_error(error_detail(&response.body)));
    }
    let parsed: QueryResponse = serde_json::from_str(&response.body).map_err(|e| {
        QueryError::BadResponse(format!("not Datadog query JSON ({e}): {}", quote_body(&response.body)))
    })?;
    if parsed.status.as_deref() == Some("error") {
        return Err(QueryError::QueryFailed {
            error_type: "error".into(),
            message: parsed.error.unwrap_or_default(),
            query: quote_query(query),
        });
    }
    let series = match <[Series; 1]>::try_from(parsed.series) {
        Ok([series]) => series,
        Err(series) if series.is_empty() => return Err(QueryError::NoData { query: quote_query(query) }),
        Err(series) => return Err(QueryError::MultipleSeries { count: series.len(), query: quote_query(query) }),
    };
    series
        .pointlist
        .iter()
        .find_map(|(_, value)| *value)
        .ok_or_else(|| QueryError::NoData { query: quote_query(query) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> HttpResponse {
        HttpResponse { status: 200, retry_after: None, body: body.into() }
    }

    #[test]
    fn the_oldest_non_null_point_of_the_one_series_is_the_value() {
        let body = r#"{"status":"ok","res_type":"time_series","series":[{"metric":"x","pointlist":[[1700000000000.0,null],[1700000060000.0,2.5],[1700000120000.0,9.0]]}]}"#;
        assert_eq!(parse_response(&ok(body), "q"), Ok(2.5));
    }

    #[test]
    fn empty_two_series_and_all_null_points() {
        assert_eq!(
            parse_response(&ok(r#"{"status":"ok","series":[]}"#), "q"),
            Err(QueryError::NoData { query: "q".into() })
        );
        let two = r#"{"status":"ok","series":[{"pointlist":[[1,1]]},{"pointlist":[[1,2]]}]}"#;
        assert_eq!(parse_response(&ok(two), "q"), Err(QueryError::MultipleSeries { count: 2, query: "q".into() }));
        let nulls = r#"{"status":"ok","series":[{"pointlist":[[1,null]]}]}"#;
        assert_eq!(parse_response(&ok(nulls), "q"), Err(QueryError::NoData { query: "q".into() }));
    }

    #[test]
    fn error_bodies_are_quoted() {
        let response = HttpResponse { status: 403, retry_after: None, body: r#"{"errors":["Forbidden"]}"#.into() };
        assert_eq!(parse_response(&response, "q"), Err(QueryError::Http { status: 403, body: "Forbidden".into() }));
        let error =
            r#"{"status":"error","error":"Error parsing query: unable to parse avg:: Rule 'scope_expr' didn't match"}"#;
        assert!(
            matches!(parse_response(&ok(error), "q"), Err(QueryError::QueryFailed { message, .. }) if message.contains("Rule"))
        );
    }
}
