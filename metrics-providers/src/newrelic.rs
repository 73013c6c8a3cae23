//! New Relic: NRQL, over NerdGraph or the Insights query API.
//!
//! The Secret decides which API, with Flagger's key names:
//! - `newrelic_account_id` and `newrelic_api_key` (a user API key): NerdGraph,
//!   New Relic's current API, `POST https://api.newrelic.com/graphql` with an
//!   `API-Key` header (`address` is the GraphQL endpoint, e.g.
//!   `https://api.eu.newrelic.com/graphql` for the EU region);
//! - `newrelic_account_id` and `newrelic_query_key`: the Insights query API
//!   that Flagger's documentation describes (New Relic calls it "no longer the
//!   preferred way"), `GET {address}/v1/accounts/{id}/query?nrql=...` with an
//!   `X-Query-Key` header, `address` default `https://insights-api.newrelic.com`.
//!
//! As in Flagger, the query gets `SINCE <interval in seconds> seconds ago`
//! appended, so a template must not end in its own `SINCE`.
//!
//! The value: NRQL returns one object per result row, named after the
//! function (`{"count": 12}`, `{"result": 0.5}` for arithmetic,
//! `{"percentile.duration": {"99": 0.2}}`). petrel needs exactly one row
//! holding exactly one number; a `FACET` query (several rows) or several
//! selected values are refused rather than one picked.

use reqwest::Method;
use reqwest::header::{ACCEPT, HeaderValue};
use serde_json::{Value, json};

use crate::http::{HttpClient, HttpResponse, address_or, endpoint, parse_address, secret_header};
use crate::provider::{MetricProvider, ProviderConfig, ProviderKind, QueryError, quote_body, quote_query};

/// NerdGraph's US endpoint.
pub const NERDGRAPH_ADDRESS: &str = "https://api.newrelic.com/graphql";
/// The Insights query API's US host, Flagger's default.
pub const INSIGHTS_ADDRESS: &str = "https://insights-api.newrelic.com";
/// Secret key of the account id.
pub const ACCOUNT_ID: &str = "newrelic_account_id";
/// Secret key of a user API key (NerdGraph).
pub const API_KEY: &str = "newrelic_api_key";
/// Secret key of an Insights query key.
pub const QUERY_KEY: &str = "newrelic_query_key";

/// The NerdGraph request: the account and the NRQL are variables, so
/// nothing from the template is spliced into GraphQL.
const NERDGRAPH_QUERY: &str =
    "query($accountId: Int!, $nrql: Nrql!) { actor { account(id: $accountId) { nrql(query: $nrql) { results } } } }";

#[derive(Debug, Clone)]
enum Api {
    NerdGraph { url: reqwest::Url, api_key: HeaderValue },
    Insights { url: reqwest::Url, query_key: HeaderValue },
}

/// A New Relic NRQL client.
#[derive(Clone)]
pub struct NewRelicProvider {
    http: HttpClient,
    api: Api,
    account_id: u64,
    since_seconds: u64,
}

impl NewRelicProvider {
    /// Builds a client from `config`; see the [module docs](self) for the
    /// Secret keys.
    pub fn new(config: &ProviderConfig) -> Result<Self, QueryError> {
        let secret = config.required_secret()?;
        let account_id = secret.required(ProviderKind::NewRelic, ACCOUNT_ID)?.parse::<u64>().map_err(|_| {
            QueryError::InvalidConfig(format!("the Secret's {ACCOUNT_ID} is not a number (New Relic account ids are)"))
        })?;
        let api = if secret.contains(API_KEY) {
            let api_key = secret.required(ProviderKind::NewRelic, API_KEY)?;
            Api::NerdGraph {
                url: parse_address(address_or(config, NERDGRAPH_ADDRESS), false)?,
                api_key: secret_header(&api_key, "the Secret's newrelic_api_key")?,
            }
        } else if secret.contains(QUERY_KEY) {
            let query_key = secret.required(ProviderKind::NewRelic, QUERY_KEY)?;
            let base = parse_address(address_or(config, INSIGHTS_ADDRESS), false)?;
            Api::Insights {
                url: endpoint(&base, &format!("/v1/accounts/{account_id}/query")),
                query_key: secret_header(&query_key, "the Secret's newrelic_query_key")?,
            }
        } else {
            return Err(QueryError::InvalidConfig(format!(
                "the Secret has neither key {API_KEY:?} (NerdGraph) nor key {QUERY_KEY:?} (Insights query API); the newrelic provider needs one"
            )));
        };
        Ok(Self { http: HttpClient::new(config)?, api, account_id, since_seconds: config.interval.as_secs().max(1) })
    }

    async fn run(&self, nrql: &str) -> Result<HttpResponse, QueryError> {
        let request = match &self.api {
            Api::NerdGraph { url, api_key } => self
                .http
                .request(Method::POST, url)
                .header("API-Key", api_key.clone())
                .json(&json!({"query": NERDGRAPH_QUERY, "variables": {"accountId": self.account_id, "nrql": nrql}})),
            Api::Insights { url, query_key } => self
                .http
                .request(Method::GET, url)
                .header("X-Query-Key", query_key.clone())
                .header(ACCEPT, "application/json")
                .query(&[("nrql", nrql)]),
        };
        self.http.send(request).await
    }
}

impl MetricProvider for NewRelicProvider {
    async fn query(&self, query: &str) -> Result<f64, QueryError> {
        let nrql = format!("{} SINCE {} seconds ago", query.trim(), self.since_seconds);
        let response = self.run(&nrql).await?;
        let value = match self.api {
            Api::NerdGraph { .. } => parse_nerdgraph(&response, query),
            Api::Insights { .. } => parse_insights(&response, query),
        };
        tracing::debug!(query, status = response.status, ?value, "newrelic query");
        value
    }
}

/// The messages of a GraphQL `errors` array, if the body has one.
fn graphql_errors(body: &str) -> Option<String> {
    let parsed: Value = serde_json::from_str(body).ok()?;
    let errors = parsed.get("errors")?.as_array()?;
    let messages: Vec<&str> = errors.iter().filter_map(|e| e.get("message").and_then(Value::as_str)).collect();
    (!errors.is_empty()).then(|| if messages.is_empty() { "unknown error".to_string() } else { messages.join("; ") })
}

/// The error a New Relic error body holds: Insights `{"error": "..."}`,
/// NerdGraph `{"errors": [{"message": "..."}]}`.
fn error_detail(body: &str) -> Option<String> {
    let parsed: Value = serde_json::from_str(body).ok()?;
    if let Some(error) = parsed.get("error").and_then(Value::as_str) {
        return Some(error.to_string());
    }
    graphql_errors(body)
}

fn parse_json(response: &HttpResponse) -> Result<Value, QueryError> {
    if !response.is_success() {
        return Err(response.status_error(error_detail(&response.body)));
    }
    serde_json::from_str(&response.body)
        .map_err(|e| QueryError::BadResponse(format!("not New Relic JSON ({e}): {}", quote_body(&response.body))))
}

/// Decodes an Insights query API answer.
pub(crate) fn parse_insights(response: &HttpResponse, query: &str) -> Result<f64, QueryError> {
    let parsed = parse_json(response)?;
    if let Some(error) = parsed.get("error").and_then(Value::as_str) {
        return Err(QueryError::QueryFailed {
            error_type: "nrql".into(),
            message: error.into(),
            query: quote_query(query),
        });
    }
    let results = parsed
        .get("results")
        .ok_or_else(|| QueryError::BadResponse(format!("no \"results\" in {}", quote_body(&response.body))))?;
    single_value(results, query)
}

/// Decodes a NerdGraph answer (`data.actor.account.nrql.results`).
pub(crate) fn parse_nerdgraph(response: &HttpResponse, query: &str) -> Result<f64, QueryError> {
    let parsed = parse_json(response)?;
    if let Some(errors) = graphql_errors(&response.body) {
        return Err(QueryError::QueryFailed { error_type: "nrql".into(), message: errors, query: quote_query(query) });
    }
    let results = parsed.pointer("/data/actor/account/nrql/results").ok_or_else(|| {
        QueryError::BadResponse(format!("no data.actor.account.nrql.results in {}", quote_body(&response.body)))
    })?;
    single_value(results, query)
}

/// The one number of NRQL `results`: one row with one numeric field
/// (searched one level down, for `percentile` and similar).
fn single_value(results: &Value, query: &str) -> Result<f64, QueryError> {
    let rows = results.as_array().ok_or_else(|| {
        QueryError::BadResponse(format!("\"results\" is not a list: {}", quote_body(&results.to_string())))
    })?;
    let row = match rows.as_slice() {
        [] => return Err(QueryError::NoData { query: quote_query(query) }),
        [row] => row,
        rows => return Err(QueryError::MultipleSeries { count: rows.len(), query: quote_query(query) }),
    };
    let mut numbers = Vec::new();
    let mut nulls = 0;
    let fields = row.as_object().into_iter().flat_map(|fields| fields.values());
    for value in fields.flat_map(|value| match value {
        Value::Object(nested) => nested.values().collect::<Vec<_>>(),
        other => vec![other],
    }) {
        match value {
            Value::Number(n) => numbers.extend(n.as_f64()),
            Value::Null => nulls += 1,
            _ => {}
        }
    }
    match numbers.as_slice() {
        [value] => Ok(*value),
        [] if nulls > 0 => Err(QueryError::NoData { query: quote_query(query) }),
        [] => Err(QueryError::BadResponse(format!("the result holds no number: {}", quote_body(&row.to_string())))),
        several => Err(QueryError::BadResponse(format!(
            "the result holds {} numbers ({}); select exactly one value: {}",
            several.len(),
            quote_body(&row.to_string()),
            quote_query(query)
        ))),
    }
}

/// Prints no field: several hold values read from the Secret.
impl std::fmt::Debug for NewRelicProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewRelicProvider(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> HttpResponse {
        HttpResponse { status: 200, retry_after: None, body: body.into() }
    }

    #[test]
    fn one_row_with_one_number_is_the_value() {
        let insights = r#"{"results":[{"sum":9.1979529E7}],"performanceStats":{"inspectedCount":1244054},"metadata":{"eventTypes":["Log"]}}"#;
        assert_eq!(parse_insights(&ok(insights), "q"), Ok(9.1979529E7));
        let percentile = r#"{"results":[{"percentiles":{"99":0.153}}]}"#;
        assert_eq!(parse_insights(&ok(percentile), "q"), Ok(0.153));
        let graph = r#"{"data":{"actor":{"account":{"nrql":{"results":[{"result":1.5}]}}}}}"#;
        assert_eq!(parse_nerdgraph(&ok(graph), "q"), Ok(1.5));
    }

    #[test]
    fn facets_nulls_and_several_values_are_refused() {
        let facets = r#"{"results":[{"count":1},{"count":2}]}"#;
        assert_eq!(parse_insights(&ok(facets), "q"), Err(QueryError::MultipleSeries { count: 2, query: "q".into() }));
        assert_eq!(
            parse_insights(&ok(r#"{"results":[{"average":null}]}"#), "q"),
            Err(QueryError::NoData { query: "q".into() })
        );
        assert_eq!(parse_insights(&ok(r#"{"results":[]}"#), "q"), Err(QueryError::NoData { query: "q".into() }));
        assert!(
            matches!(parse_insights(&ok(r#"{"results":[{"a":1,"b":2}]}"#), "q"), Err(QueryError::BadResponse(m)) if m.contains("2 numbers"))
        );
    }

    #[test]
    fn errors_are_quoted() {
        let graph = r#"{"data":{"actor":{"account":{"nrql":null}}},"errors":[{"message":"NRQL Syntax Error: Error at line 1 position 7"}]}"#;
        assert!(
            matches!(parse_nerdgraph(&ok(graph), "q"), Err(QueryError::QueryFailed { message, .. }) if message.contains("Syntax"))
        );
        let insights = HttpResponse { status: 400, retry_after: None, body: r#"{"error":"Invalid query"}"#.into() };
        assert_eq!(parse_insights(&insights, "q"), Err(QueryError::Http { status: 400, body: "Invalid query".into() }));
    }
}
