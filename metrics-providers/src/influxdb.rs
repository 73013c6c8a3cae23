//! InfluxDB 2: Flux over the v2 query API (`POST /api/v2/query`).
//!
//! Configured as Flagger configures it: `address` (required), and when the
//! template names a Secret, its keys `token` (sent as
//! `Authorization: Token <token>`) and `org` (the `org` query parameter),
//! both required then. The answer is InfluxDB's annotated CSV.
//!
//! The value is the `_value` of the one row the query returns, which must
//! be a number (`double`, `long` or `unsignedLong`); a query that returns
//! several rows or tables is refused: aggregate it (`|> sum()`,
//! `|> mean()`, `|> last()`, `|> group()`).

use reqwest::Method;
use reqwest::header::{ACCEPT, HeaderValue};
use serde_json::json;

use crate::http::{HttpClient, HttpResponse, endpoint, parse_address, required_address, secret_header};
use crate::provider::{MetricProvider, ProviderConfig, ProviderKind, QueryError, quote_body, quote_query};

/// Secret key of the API token.
pub const TOKEN: &str = "token";
/// Secret key of the organization.
pub const ORG: &str = "org";

/// An InfluxDB 2 Flux query client.
#[derive(Clone)]
pub struct InfluxDbProvider {
    http: HttpClient,
    query_url: reqwest::Url,
    /// `Token <token>` and the organization, when the template names a Secret.
    auth: Option<(HeaderValue, String)>,
}

impl InfluxDbProvider {
    /// Builds a client from `config`.
    pub fn new(config: &ProviderConfig) -> Result<Self, QueryError> {
        let base = parse_address(required_address(config)?, false)?;
        let auth = match &config.secret {
            None => None,
            Some(secret) => {
                let token = secret.required(ProviderKind::InfluxDb, TOKEN)?;
                let org = secret.required(ProviderKind::InfluxDb, ORG)?;
                Some((secret_header(&format!("Token {token}"), "the Secret's token")?, org))
            }
        };
        // The token goes in its own header: the shared bearer credentials
        // (from the same Secret key) would send a second Authorization.
        let mut plain = config.clone();
        plain.credentials = crate::Credentials::None;
        Ok(Self { http: HttpClient::new(&plain)?, query_url: endpoint(&base, "/api/v2/query"), auth })
    }
}

impl MetricProvider for InfluxDbProvider {
    async fn query(&self, query: &str) -> Result<f64, QueryError> {
        let mut request =
            self.http.request(Method::POST, &self.query_url).header(ACCEPT, "application/csv").json(&json!({
                "query": query,
                "type": "flux",
                "dialect": {"header": true, "annotations": ["datatype", "group", "default"], "delimiter": ","},
            }));
        if let Some((token, org)) = &self.auth {
            request = request.header(reqwest::header::AUTHORIZATION, token.clone()).query(&[("org", org)]);
        }
        let response = self.http.send(request).await?;
        let value = parse_response(&response, query);
        tracing::debug!(query, status = response.status, ?value, "influxdb query");
        value
    }
}

/// InfluxDB's error body: `{"code": "invalid", "message": "..."}`.
fn error_detail(body: &str) -> Option<String> {
    let parsed: serde_json::Value = serde_json::from_str(body).ok()?;
    let message = parsed.get("message")?.as_str()?;
    Some(match parsed.get("code").and_then(|c| c.as_str()) {
        Some(code) => format!("{code}: {message}"),
        None => message.to_string(),
    })
}

/// One data row of the answer: its `_value` and that column's datatype.
#[derive(Debug)]
struct Row {
    value: String,
    datatype: Option<String>,
}

/// Decodes one `/api/v2/query` answer (annotated CSV) into the `_value` of
/// its single row.
pub(crate) fn parse_response(response: &HttpResponse, query: &str) -> Result<f64, QueryError> {
    if !response.is_success() {
        return Err(response.status_error(error_detail(&response.body)));
    }
    let garbage = |why: String| {
        QueryError::BadResponse(format!("not InfluxDB annotated CSV ({why}): {}", quote_body(&response.body)))
    };
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(response.body.as_bytes());
    let mut datatypes: Option<csv::StringRecord> = None;
    let mut header: Option<csv::StringRecord> = None;
    let mut rows = Vec::new();
    let mut annotated = false;
    for record in reader.records() {
        let record = record.map_err(|e| garbage(e.to_string()))?;
        let first = record.get(0).unwrap_or_default();
        if first.starts_with('#') {
            // An annotation row starts a new table, whose header follows.
            if first == "#datatype" {
                datatypes = Some(record);
            }
            annotated = true;
            header = None;
            continue;
        }
        if !annotated {
            // petrel asks for annotations: a body without them is not an
            // answer of the query API (a proxy's page, say).
            return Err(garbage("no #datatype annotation".into()));
        }
        let Some(columns) = &header else {
            header = Some(record);
            continue;
        };
        let column = |name: &str| columns.iter().position(|c| c == name);
        if let Some(error) = column("error") {
            // InfluxDB reports an error met while streaming as a table with
            // an `error` column.
            return Err(QueryError::QueryFailed {
                error_type: "flux".into(),
                message: record.get(error).unwrap_or_default().to_string(),
                query: quote_query(query),
            });
        }
        let value = column("_value").ok_or_else(|| garbage("no _value column".into()))?;
        rows.push(Row {
            value: record.get(value).unwrap_or_default().to_string(),
            datatype: datatypes.as_ref().and_then(|types| types.get(value)).map(str::to_string),
        });
    }
    let row = match <[Row; 1]>::try_from(rows) {
        Ok([row]) => row,
        Err(rows) if rows.is_empty() => return Err(QueryError::NoData { query: quote_query(query) }),
        Err(rows) => return Err(QueryError::MultipleSeries { count: rows.len(), query: quote_query(query) }),
    };
    if row.value.is_empty() {
        return Err(QueryError::NoData { query: quote_query(query) });
    }
    match row.datatype.as_deref() {
        None | Some("double" | "long" | "unsignedLong") => {}
        Some(other) => {
            return Err(QueryError::BadResponse(format!(
                "_value is a {other} ({}), not a number: {}",
                quote_body(&row.value),
                quote_query(query)
            )));
        }
    }
    match row.value.parse::<f64>() {
        Ok(value) if value.is_finite() => Ok(value),
        Ok(_) => Err(QueryError::NotANumber { value: row.value, query: quote_query(query) }),
        Err(_) => Err(QueryError::BadResponse(format!("_value {} is not a number", quote_body(&row.value)))),
    }
}

/// Prints no field: several hold values read from the Secret.
impl std::fmt::Debug for InfluxDbProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InfluxDbProvider(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> HttpResponse {
        HttpResponse { status: 200, retry_after: None, body: body.into() }
    }

    const ONE_ROW: &str = "#datatype,string,long,dateTime:RFC3339,dateTime:RFC3339,double,string,string\r\n\
        #group,false,false,true,true,false,true,true\r\n\
        #default,_result,,,,,,\r\n\
        ,result,table,_start,_stop,_value,_field,_measurement\r\n\
        ,,0,2024-01-01T00:00:00Z,2024-01-01T01:00:00Z,12.5,count,istio_requests_total\r\n\r\n";

    #[test]
    fn one_row_is_its_value() {
        assert_eq!(parse_response(&ok(ONE_ROW), "q"), Ok(12.5));
    }

    #[test]
    fn empty_several_rows_and_strings() {
        assert_eq!(parse_response(&ok("\r\n"), "q"), Err(QueryError::NoData { query: "q".into() }));
        let two_tables = format!("{ONE_ROW}{}", ONE_ROW.replace(",,0,", ",,1,"));
        assert_eq!(
            parse_response(&ok(&two_tables), "q"),
            Err(QueryError::MultipleSeries { count: 2, query: "q".into() })
        );
        assert!(matches!(
            parse_response(&ok("<html><body>Bad Gateway</body></html>"), "q"),
            Err(QueryError::BadResponse(_))
        ));
        let string = ONE_ROW.replace(",double,", ",string,").replace("12.5", "abc");
        assert!(matches!(parse_response(&ok(&string), "q"), Err(QueryError::BadResponse(m)) if m.contains("string")));
    }

    #[test]
    fn errors_in_the_stream_and_in_json() {
        let stream = "#datatype,string,string\r\n#group,true,true\r\n#default,,\r\n,error,reference\r\n,\"runtime error: division by zero\",\r\n\r\n";
        assert!(
            matches!(parse_response(&ok(stream), "q"), Err(QueryError::QueryFailed { message, .. }) if message.contains("division"))
        );
        let json = HttpResponse {
            status: 400,
            retry_after: None,
            body: r#"{"code":"invalid","message":"compilation failed: error @1:1-1:4: undefined identifier foo"}"#
                .into(),
        };
        assert!(
            matches!(parse_response(&json, "q"), Err(QueryError::Http { status: 400, body }) if body.starts_with("invalid: compilation failed"))
        );
    }
}
