//! A generic HTTP JSON metric endpoint, for backends petrel has no client
//! for: put a small adapter in front of them that speaks this contract.
//!
//! # Contract
//!
//! - Request: `GET {address}` with the rendered query appended as the
//!   query parameter `query` (other parameters in `address` are kept), with
//!   the provider's headers, credentials and timeout.
//! - Answer: HTTP 2xx with a JSON body that is one of
//!   - a number, `99.5`, or a string holding one, `"99.5"`;
//!   - an object with a `value` field holding either, `{"value": 99.5}`;
//!   - an array of exactly one of the above.
//!
//!   `null`, `{"value": null}` and `[]` mean no data; an array of more than
//!   one item is refused like several Prometheus series; `"NaN"` and
//!   `"Inf"` are not numbers. Any other status is an HTTP error.
//! - Online check: `GET {address}` (without `query`) answers with any
//!   status below 500.

use serde_json::Value;

use crate::http::{HttpClient, parse_address};
use crate::provider::{MetricProvider, ProviderConfig, QueryError, quote_body, quote_query};

/// A client for the generic HTTP JSON contract described in the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct HttpJsonProvider {
    http: HttpClient,
    url: reqwest::Url,
}

impl HttpJsonProvider {
    /// Builds a client from `config` (its `kind` is not checked here; see
    /// [`build_provider`](crate::provider::build_provider)).
    pub fn new(config: &ProviderConfig) -> Result<Self, QueryError> {
        Ok(Self { http: HttpClient::new(config)?, url: parse_address(&config.address, true)? })
    }
}

impl MetricProvider for HttpJsonProvider {
    async fn query(&self, query: &str) -> Result<f64, QueryError> {
        let (status, body) = self.http.get(&self.url, &[("query", query)]).await?;
        let value = parse_json_response(status, &body, query);
        tracing::debug!(query, status, ?value, "http-json query");
        value
    }
}

/// Decodes an answer under the contract in the [module docs](self).
pub fn parse_json_response(http_status: u16, body: &str, query: &str) -> Result<f64, QueryError> {
    if !(200..300).contains(&http_status) {
        return Err(QueryError::Http { status: http_status, body: quote_body(body) });
    }
    let json: Value = serde_json::from_str(body)
        .map_err(|e| QueryError::BadResponse(format!("not JSON ({e}): {}", quote_body(body))))?;
    let item = match json {
        Value::Array(items) => match <[Value; 1]>::try_from(items) {
            Ok([item]) => item,
            Err(items) if items.is_empty() => Value::Null,
            Err(items) => {
                return Err(QueryError::MultipleSeries { count: items.len(), query: quote_query(query) });
            }
        },
        other => other,
    };
    let scalar = match item {
        Value::Object(mut fields) => fields.remove("value").unwrap_or(Value::Null),
        other => other,
    };
    let (value, raw) = match scalar {
        Value::Null => {
            return Err(QueryError::NoData { query: quote_query(query) });
        }
        // serde_json numbers are always finite; `as_f64` is None only for
        // arbitrary-precision numbers, which this crate does not enable.
        Value::Number(n) => (n.as_f64(), n.to_string()),
        Value::String(s) => (s.trim().parse::<f64>().ok(), s),
        other => {
            return Err(QueryError::BadResponse(format!(
                "expected a number, a numeric string or {{\"value\": ...}}, got {}",
                quote_body(&other.to_string())
            )));
        }
    };
    match value {
        Some(v) if v.is_finite() => Ok(v),
        Some(_) => Err(QueryError::NotANumber { value: raw, query: quote_query(query) }),
        None => Err(QueryError::BadResponse(format!("value {} is not a number", quote_body(&raw)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<f64, QueryError> {
        parse_json_response(200, body, "q")
    }

    #[test]
    fn accepted_shapes() {
        for body in [
            "99.5",
            "\"99.5\"",
            "{\"value\": 99.5}",
            "{\"value\":\"99.5\",\"unit\":\"%\"}",
            "[99.5]",
            "[{\"value\": 99.5}]",
        ] {
            assert_eq!(parse(body), Ok(99.5), "{body}");
        }
    }

    #[test]
    fn no_data_shapes() {
        for body in ["null", "[]", "{\"value\": null}", "{}", "[null]"] {
            assert_eq!(parse(body), Err(QueryError::NoData { query: "q".into() }), "{body}");
        }
    }

    #[test]
    fn refusals() {
        assert_eq!(parse("[1, 2]"), Err(QueryError::MultipleSeries { count: 2, query: "q".into() }));
        assert_eq!(parse("\"NaN\""), Err(QueryError::NotANumber { value: "NaN".into(), query: "q".into() }));
        for body in ["true", "\"abc\"", "{\"value\": [1]}", "<html>"] {
            assert!(matches!(parse(body), Err(QueryError::BadResponse(_))), "{body}");
        }
        assert_eq!(parse_json_response(503, "down", "q"), Err(QueryError::Http { status: 503, body: "down".into() }));
    }
}
