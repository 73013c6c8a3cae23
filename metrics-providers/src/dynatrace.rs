//! Dynatrace: the metrics API v2 (`GET /api/v2/metrics/query`).
//!
//! Configured as Flagger configures it: `address` (required, the
//! environment's URL, e.g. `https://abc12345.live.dynatrace.com`), Secret key
//! `dynatrace_token` sent as `Authorization: Api-Token <token>`; the query is
//! a metric selector, evaluated over the 10 metric intervals before now with
//! `resolution=Inf` (one value for the whole window).
//!
//! The value is the last non-null value of the one series the selector
//! returns; a selector that returns several metrics or dimensions is
//! refused (Flagger takes the last one): aggregate it, e.g. with
//! `:splitBy()`.

use std::time::Duration;

use reqwest::Method;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde::Deserialize;

use crate::http::{HttpClient, HttpResponse, endpoint, parse_address, required_address, secret_header, unix_now};
use crate::provider::{MetricProvider, ProviderConfig, ProviderKind, QueryError, quote_body, quote_query};

/// Secret key of the API token.
pub const TOKEN: &str = "dynatrace_token";
/// How many metric intervals the query window spans, as in Flagger.
const WINDOW_INTERVALS: u32 = 10;

/// A Dynatrace metrics API v2 client.
#[derive(Debug, Clone)]
pub struct DynatraceProvider {
    http: HttpClient,
    query_url: reqwest::Url,
    authorization: HeaderValue,
    window: Duration,
}

impl DynatraceProvider {
    /// Builds a client from `config`; the Secret must hold `dynatrace_token`.
    pub fn new(config: &ProviderConfig) -> Result<Self, QueryError> {
        let token = config.required_secret()?.required(ProviderKind::Dynatrace, TOKEN)?;
        let base = parse_address(required_address(config)?, false)?;
        Ok(Self {
            http: HttpClient::new(config)?,
            query_url: endpoint(&base, "/api/v2/metrics/query"),
            authorization: secret_header(&format!("Api-Token {token}"), "the Secret's dynatrace_token")?,
            window: config.interval.saturating_mul(WINDOW_INTERVALS),
        })
    }
}

impl MetricProvider for DynatraceProvider {
    async fn query(&self, query: &str) -> Result<f64, QueryError> {
        let to = unix_now()?.as_millis();
        let from = to.saturating_sub(self.window.as_millis()).to_string();
        let to = to.to_string();
        let request = self
            .http
            .request(Method::GET, &self.query_url)
            .header(AUTHORIZATION, self.authorization.clone())
            .query(&[("metricSelector", query.trim()), ("resolution", "Inf"), ("from", &from), ("to", &to)]);
        let response = self.http.send(request).await?;
        let value = parse_response(&response, query);
        tracing::debug!(query, status = response.status, ?value, "dynatrace query");
        value
    }
}

#[derive(Debug, Deserialize)]
struct QueryResponse {
    result: Vec<MetricResult>,
}

#[derive(Debug, Deserialize)]
struct MetricResult {
    #[serde(default)]
    data: Vec<MetricSeries>,
}

#[derive(Debug, Deserialize)]
struct MetricSeries {
    #[serde(default)]
    values: Vec<Option<f64>>,
}

/// Dynatrace's error body: `{"error": {"code": 400, "message": "..."}}`.
fn error_detail(body: &str) -> Option<String> {
    let parsed: serde_json::Value = serde_json::from_str(body).ok()?;
    parsed.pointer("/error/message")?.as_str().map(str::to_string)
}

/// Decodes one `/api/v2/metrics/query` answer into the single number it
/// must hold.
pub(crate) fn parse_response(response: &HttpResponse, query: &str) -> Result<f64, QueryError> {
    if !response.is_success() {
        return Err(response.status_error(error_detail(&response.body)));
    }
    let parsed: QueryResponse = serde_json::from_str(&response.body).map_err(|e| {
        QueryError::BadResponse(format!("not Dynatrace metrics JSON ({e}): {}", quote_body(&response.body)))
    })?;
    let metric = match <[MetricResult; 1]>::try_from(parsed.result) {
        Ok([metric]) => metric,
        Err(metrics) if metrics.is_empty() => return Err(QueryError::NoData { query: quote_query(query) }),
        Err(metrics) => return Err(QueryError::MultipleSeries { count: metrics.len(), query: quote_query(query) }),
    };
    let series = match <[MetricSeries; 1]>::try_from(metric.data) {
        Ok([series]) => series,
        Err(series) if series.is_empty() => return Err(QueryError::NoData { query: quote_query(query) }),
        Err(series) => return Err(QueryError::MultipleSeries { count: series.len(), query: quote_query(query) }),
    };
    series.values.iter().rev().find_map(|value| *value).ok_or_else(|| QueryError::NoData { query: quote_query(query) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> HttpResponse {
        HttpResponse { status: 200, retry_after: None, body: body.into() }
    }

    #[test]
    fn one_series_is_its_last_value() {
        let body = r#"{"totalCount":1,"nextPageKey":null,"resolution":"Inf","result":[{"metricId":"builtin:service.response.time:percentile(95)","dataPointCountRatio":0.0001,"dimensionCountRatio":0.01,"data":[{"dimensions":[],"dimensionMap":{},"timestamps":[1700000000000],"values":[1234.5]}]}]}"#;
        assert_eq!(parse_response(&ok(body), "q"), Ok(1234.5));
    }

    #[test]
    fn empty_null_and_several() {
        let none = r#"{"totalCount":0,"result":[{"metricId":"m","data":[]}]}"#;
        assert_eq!(parse_response(&ok(none), "q"), Err(QueryError::NoData { query: "q".into() }));
        let null = r#"{"result":[{"metricId":"m","data":[{"timestamps":[1],"values":[null]}]}]}"#;
        assert_eq!(parse_response(&ok(null), "q"), Err(QueryError::NoData { query: "q".into() }));
        let two = r#"{"result":[{"metricId":"m","data":[{"values":[1]},{"values":[2]}]}]}"#;
        assert_eq!(parse_response(&ok(two), "q"), Err(QueryError::MultipleSeries { count: 2, query: "q".into() }));
    }

    #[test]
    fn error_body_is_quoted() {
        let response = HttpResponse {
            status: 400,
            retry_after: None,
            body: r#"{"error":{"code":400,"message":"The metric selector could not be parsed","constraintViolations":[]}}"#.into(),
        };
        assert_eq!(
            parse_response(&response, "q"),
            Err(QueryError::Http { status: 400, body: "The metric selector could not be parsed".into() })
        );
    }
}
