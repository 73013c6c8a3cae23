//! Graphite: the render API (`GET /render?target=...&format=json`).
//!
//! As in Flagger, the query is written as render API parameters, not a bare
//! target: `target=summarize(...)`, optionally with `&from=-10min` and the
//! like (runs of whitespace are folded to one space first and trimmed from
//! names and values, so a template may span lines). `format=json` is always set. Basic authentication comes
//! from the Secret's `username` and `password`, which a Secret must hold
//! when the template names one (as in Flagger).
//!
//! The value is the last non-null datapoint of the one series the query
//! returns; unlike Flagger (which takes the last non-null point of any
//! series), several series are refused.

use reqwest::Method;
use serde::Deserialize;

use crate::http::{HttpClient, HttpResponse, endpoint, parse_address, required_address};
use crate::provider::{Credentials, MetricProvider, ProviderConfig, QueryError, quote_body, quote_query};

/// A Graphite render API client.
#[derive(Debug, Clone)]
pub struct GraphiteProvider {
    http: HttpClient,
    render_url: reqwest::Url,
}

impl GraphiteProvider {
    /// Builds a client from `config`. A Secret, if named, must give basic
    /// authentication credentials.
    pub fn new(config: &ProviderConfig) -> Result<Self, QueryError> {
        if config.secret.is_some() && !matches!(config.credentials, Credentials::Basic { .. }) {
            return Err(QueryError::InvalidConfig(
                "the graphite provider takes basic authentication only: the Secret needs keys \"username\" and \"password\"".into(),
            ));
        }
        let base = parse_address(required_address(config)?, false)?;
        Ok(Self { http: HttpClient::new(config)?, render_url: endpoint(&base, "/render") })
    }
}

/// The render parameters of a query: whitespace folded, `format` forced to
/// `json`, and a `target` required (a query without one is refused before
/// any request is made).
pub(crate) fn render_params(query: &str) -> Result<Vec<(String, String)>, QueryError> {
    let folded = query.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut params: Vec<(String, String)> = reqwest::Url::parse(&format!("http://graphite/render?{folded}"))
        .map_err(|e| QueryError::InvalidConfig(format!("the graphite query is not render API parameters ({e})")))?
        .query_pairs()
        .filter(|(name, _)| name != "format")
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect();
    if !params.iter().any(|(name, value)| name == "target" && !value.trim().is_empty()) {
        return Err(QueryError::InvalidConfig(format!(
            "the graphite query must be render API parameters with a target, e.g. target=sumSeries(a.b.*): {}",
            quote_query(query)
        )));
    }
    params.push(("format".into(), "json".into()));
    Ok(params)
}

impl MetricProvider for GraphiteProvider {
    async fn query(&self, query: &str) -> Result<f64, QueryError> {
        let params = render_params(query)?;
        let response = self.http.send(self.http.request(Method::GET, &self.render_url).query(&params)).await?;
        let value = parse_response(&response, query);
        tracing::debug!(query, status = response.status, ?value, "graphite query");
        value
    }
}

#[derive(Debug, Deserialize)]
struct Series {
    #[serde(default)]
    datapoints: Vec<(Datapoint, serde::de::IgnoredAny)>,
}

/// A datapoint value: a number, null, or (some Graphite versions) a string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Datapoint {
    Number(f64),
    Text(String),
    Null(()),
}

/// Decodes one render API answer into the last non-null value of its single
/// series.
pub(crate) fn parse_response(response: &HttpResponse, query: &str) -> Result<f64, QueryError> {
    if !response.is_success() {
        return Err(response.status_error(None));
    }
    let series: Vec<Series> = serde_json::from_str(&response.body).map_err(|e| {
        QueryError::BadResponse(format!("not Graphite render JSON ({e}): {}", quote_body(&response.body)))
    })?;
    let series = match <[Series; 1]>::try_from(series) {
        Ok([series]) => series,
        Err(series) if series.is_empty() => return Err(QueryError::NoData { query: quote_query(query) }),
        Err(series) => return Err(QueryError::MultipleSeries { count: series.len(), query: quote_query(query) }),
    };
    let last = series.datapoints.iter().rev().find_map(|(point, _)| match point {
        Datapoint::Number(value) => Some(Ok(*value)),
        Datapoint::Text(text) => Some(parse_text(text, query)),
        Datapoint::Null(()) => None,
    });
    last.unwrap_or_else(|| Err(QueryError::NoData { query: quote_query(query) }))
}

fn parse_text(text: &str, query: &str) -> Result<f64, QueryError> {
    match text.trim().parse::<f64>() {
        Ok(value) if value.is_finite() => Ok(value),
        Ok(_) => Err(QueryError::NotANumber { value: text.to_owned(), query: quote_query(query) }),
        Err(_) => Err(QueryError::BadResponse(format!("datapoint {} is not a number", quote_body(text)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> HttpResponse {
        HttpResponse { status: 200, retry_after: None, body: body.into() }
    }

    #[test]
    fn the_last_non_null_point_is_the_value() {
        let body = r#"[{"target":"summarize(x)","tags":{"name":"x"},"datapoints":[[1.0,1700000000],[97.5,1700000060],[null,1700000120]]}]"#;
        assert_eq!(parse_response(&ok(body), "q"), Ok(97.5));
        assert_eq!(parse_response(&ok(r#"[{"target":"x","datapoints":[["42",1]]}]"#), "q"), Ok(42.0));
    }

    #[test]
    fn no_series_all_nulls_and_two_series() {
        assert_eq!(parse_response(&ok("[]"), "q"), Err(QueryError::NoData { query: "q".into() }));
        assert_eq!(
            parse_response(&ok(r#"[{"target":"x","datapoints":[[null,1]]}]"#), "q"),
            Err(QueryError::NoData { query: "q".into() })
        );
        let two = r#"[{"target":"a","datapoints":[[1,1]]},{"target":"b","datapoints":[[2,1]]}]"#;
        assert_eq!(parse_response(&ok(two), "q"), Err(QueryError::MultipleSeries { count: 2, query: "q".into() }));
    }

    #[test]
    fn params_fold_whitespace_force_json_and_need_a_target() {
        let params = render_params("target=summarize(\n  a.b.*,\n  '1min', 'avg')&from=-10min&format=raw").unwrap();
        assert_eq!(
            params,
            [
                ("target".to_string(), "summarize( a.b.*, '1min', 'avg')".to_string()),
                ("from".to_string(), "-10min".to_string()),
                ("format".to_string(), "json".to_string())
            ]
        );
        assert!(matches!(render_params("sumSeries(a.b.*)"), Err(QueryError::InvalidConfig(m)) if m.contains("target")));
    }
}
