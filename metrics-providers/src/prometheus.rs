//! Prometheus HTTP API client: instant queries (`/api/v1/query`), one value
//! per analysis tick (statistical comparison records those too).
//!
//! Works with anything that serves the Prometheus query API (Prometheus,
//! Thanos, Cortex, Mimir, VictoriaMetrics). Decoding an answer is a pure
//! function, [`parse_response`]; the client around it only does I/O.
//! [`parse_answer`] decodes a whole answer, every series of it, for tools
//! that read Prometheus themselves (petrel's end-to-end tests).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::http::{HttpClient, parse_address};
use crate::provider::{MetricProvider, ProviderConfig, QueryError, quote_body, quote_query};

/// A Prometheus HTTP API client.
#[derive(Debug, Clone)]
pub struct PrometheusProvider {
    http: HttpClient,
    /// `{address}/api/v1/`, where the endpoints live.
    api_url: reqwest::Url,
}

impl PrometheusProvider {
    /// Builds a client from `config` (its `kind` is not checked here; see
    /// [`build_provider`](crate::provider::build_provider)).
    pub fn new(config: &ProviderConfig) -> Result<Self, QueryError> {
        Ok(Self { http: HttpClient::new(config)?, api_url: api_url(&config.address)? })
    }

    /// The URL instant queries are sent to.
    pub fn query_url(&self) -> reqwest::Url {
        self.endpoint("query")
    }

    fn endpoint(&self, name: &str) -> reqwest::Url {
        let mut url = self.api_url.clone();
        url.set_path(&format!("{}{name}", self.api_url.path()));
        url
    }

    async fn get(&self, endpoint: &str, params: &[(&str, &str)]) -> Result<(u16, String), QueryError> {
        self.http.get(&self.endpoint(endpoint), params).await
    }
}

impl MetricProvider for PrometheusProvider {
    async fn query(&self, query: &str) -> Result<f64, QueryError> {
        let (status, body) = self.get("query", &[("query", query)]).await?;
        let value = parse_response(status, &body, query);
        tracing::debug!(query, status, ?value, "prometheus query");
        value
    }
}

/// `{address}/api/v1/`, keeping any path prefix of `address`.
fn api_url(address: &str) -> Result<reqwest::Url, QueryError> {
    let mut url = parse_address(address, false)?;
    let path = format!("{}/api/v1/", url.path().trim_end_matches('/'));
    url.set_path(&path);
    Ok(url)
}

/// The envelope of every Prometheus API answer.
#[derive(Debug, Deserialize)]
struct ApiResponse {
    status: String,
    data: Option<QueryData>,
    #[serde(rename = "errorType")]
    error_type: Option<String>,
    error: Option<String>,
}

/// A query result, tagged by `resultType`.
#[derive(Debug, Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum QueryData {
    Vector(Vec<VectorSample>),
    Scalar(Sample),
    Matrix(Vec<MatrixSeries>),
    String(serde_json::Value),
}

#[derive(Debug, Deserialize)]
struct VectorSample {
    /// The series' labels (read by [`parse_answer`] only).
    #[serde(default)]
    metric: serde_json::Value,
    /// `[unix_time, "value"]`; absent for native histogram samples, which
    /// carry `histogram` instead.
    value: Option<Sample>,
}

#[derive(Debug, Deserialize)]
struct MatrixSeries {
    /// The series' labels.
    #[serde(default)]
    metric: serde_json::Value,
    /// `[[unix_time, "value"], ...]`; absent for native histogram series.
    values: Option<Vec<Sample>>,
}

/// `[unix_time, "value"]`: Prometheus sends values as strings so that
/// NaN and ±Inf survive JSON. Only [`parse_answer`] reads the time:
/// instant queries are evaluated "now".
#[derive(Debug, Deserialize)]
struct Sample(serde_json::Value, String);

impl Sample {
    /// `(unix seconds, value)`, NaN and ±Inf kept.
    fn point(&self) -> Result<(f64, f64), QueryError> {
        let time = self.0.as_f64().ok_or_else(|| {
            QueryError::BadResponse(format!("sample time {} is not a number", quote_body(&self.0.to_string())))
        })?;
        Ok((time, parse_sample_value(&self.1)?))
    }
}

/// One series of an answer: its labels and its `(unix seconds, value)`
/// points, oldest first (one for a sample of an instant vector).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The labels (`__name__` included when the query keeps it).
    pub labels: BTreeMap<String, String>,
    /// The points; NaN and ±Inf are kept.
    pub points: Vec<(f64, f64)>,
}

/// Everything an answer holds, by `resultType`.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// An instant vector (`/api/v1/query`): one point per series.
    Vector(Vec<Series>),
    /// A scalar: `(unix seconds, value)`.
    Scalar((f64, f64)),
    /// A range vector (`/api/v1/query_range`, or a range selector).
    Matrix(Vec<Series>),
}

/// Checks the envelope of an answer and returns its `data`: Prometheus
/// `status: "error"` bodies, non-2xx statuses and non-API bodies become
/// errors.
fn parse_envelope(http_status: u16, body: &str, query: &str) -> Result<QueryData, QueryError> {
    let parsed: Result<ApiResponse, _> = serde_json::from_str(body);
    let response = match parsed {
        // Prometheus answers errors with 4xx/5xx *and* a JSON error body; the
        // body says more than the status, so it wins.
        Ok(r) if r.status == "error" => {
            return Err(QueryError::QueryFailed {
                error_type: r.error_type.unwrap_or_else(|| "unknown".into()),
                message: r.error.unwrap_or_default(),
                query: quote_query(query),
            });
        }
        _ if !(200..300).contains(&http_status) => {
            return Err(QueryError::Http { status: http_status, body: quote_body(body) });
        }
        Ok(r) => r,
        Err(e) => {
            return Err(QueryError::BadResponse(format!("not Prometheus API JSON ({e}): {}", quote_body(body))));
        }
    };
    if response.status != "success" {
        return Err(QueryError::BadResponse(format!(
            "status {:?}, expected \"success\" or \"error\"",
            response.status
        )));
    }
    response.data.ok_or_else(|| QueryError::BadResponse("success without \"data\"".into()))
}

/// Exactly one item, or the error a person needs to fix the query.
fn single<T>(items: Vec<T>, query: &str) -> Result<T, QueryError> {
    match <[T; 1]>::try_from(items) {
        Ok([item]) => Ok(item),
        Err(items) if items.is_empty() => Err(QueryError::NoData { query: quote_query(query) }),
        Err(items) => Err(QueryError::MultipleSeries { count: items.len(), query: quote_query(query) }),
    }
}

fn native_histogram(query: &str) -> QueryError {
    QueryError::BadResponse(format!(
        "the series is a native histogram, not a number; use histogram_quantile or similar: {}",
        quote_query(query)
    ))
}

fn string_result(value: &serde_json::Value, query: &str) -> QueryError {
    QueryError::BadResponse(format!(
        "the query returns a string ({}), not a number: {}",
        quote_body(&value.to_string()),
        quote_query(query)
    ))
}

/// Decodes one `/api/v1/query` answer into the single number it must hold:
/// a scalar, or a vector of exactly one sample that is a finite number.
///
/// `query` is used only for error messages.
pub fn parse_response(http_status: u16, body: &str, query: &str) -> Result<f64, QueryError> {
    let sample = match parse_envelope(http_status, body, query)? {
        QueryData::Scalar(sample) => sample,
        QueryData::Vector(samples) => single(samples, query)?.value.ok_or_else(|| native_histogram(query))?,
        QueryData::Matrix(series) => {
            return Err(QueryError::BadResponse(format!(
                "the query returns a range vector ({} series); petrel needs a single value, e.g. wrap it in rate(...) and sum(...): {}",
                series.len(),
                quote_query(query)
            )));
        }
        QueryData::String(value) => return Err(string_result(&value, query)),
    };
    let value = parse_sample_value(&sample.1)?;
    if value.is_finite() {
        Ok(value)
    } else {
        Err(QueryError::NotANumber { value: sample.1, query: quote_query(query) })
    }
}

/// Decodes one Prometheus API answer whole: every series with its labels
/// and points, where [`parse_response`] needs one number. The envelope is
/// checked as there (errors, HTTP status, non-API bodies); a string result
/// or a native histogram is an error.
///
/// `query` is used only for error messages.
pub fn parse_answer(http_status: u16, body: &str, query: &str) -> Result<Answer, QueryError> {
    fn labels(metric: &serde_json::Value) -> BTreeMap<String, String> {
        metric
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect())
            .unwrap_or_default()
    }
    Ok(match parse_envelope(http_status, body, query)? {
        QueryData::Vector(samples) => Answer::Vector(
            samples
                .iter()
                .map(|s| {
                    let point = s.value.as_ref().ok_or_else(|| native_histogram(query))?.point()?;
                    Ok(Series { labels: labels(&s.metric), points: vec![point] })
                })
                .collect::<Result<_, QueryError>>()?,
        ),
        QueryData::Scalar(sample) => Answer::Scalar(sample.point()?),
        QueryData::Matrix(series) => Answer::Matrix(
            series
                .iter()
                .map(|s| {
                    let values = s.values.as_ref().ok_or_else(|| native_histogram(query))?;
                    let points = values.iter().map(Sample::point).collect::<Result<_, _>>()?;
                    Ok(Series { labels: labels(&s.metric), points })
                })
                .collect::<Result<_, QueryError>>()?,
        ),
        QueryData::String(value) => return Err(string_result(&value, query)),
    })
}

/// Parses a sample value string; Prometheus writes `NaN`, `+Inf`, `-Inf`,
/// which Rust's parser accepts too.
fn parse_sample_value(raw: &str) -> Result<f64, QueryError> {
    raw.parse().map_err(|_| QueryError::BadResponse(format!("sample value {raw:?} is not a number")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::ProviderKind;

    fn vector(values: &[&str]) -> String {
        let result: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, v)| format!(r#"{{"metric":{{"pod":"p{i}"}},"value":[1700000000.123,"{v}"]}}"#))
            .collect();
        format!(r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#, result.join(","))
    }

    #[test]
    fn one_sample_vector_is_its_value() {
        assert_eq!(parse_response(200, &vector(&["99.5"]), "q"), Ok(99.5));
    }

    #[test]
    fn scalar_is_its_value() {
        let body = r#"{"status":"success","data":{"resultType":"scalar","result":[1700000000,"42"]}}"#;
        assert_eq!(parse_response(200, body, "q"), Ok(42.0));
    }

    #[test]
    fn empty_vector_is_no_data_naming_the_query() {
        let err = parse_response(200, &vector(&[]), "sum(rate(x[1m]))").unwrap_err();
        assert_eq!(err, QueryError::NoData { query: "sum(rate(x[1m]))".into() });
        assert!(err.to_string().contains("sum(rate(x[1m]))"));
    }

    #[test]
    fn nan_and_inf_are_not_numbers() {
        for raw in ["NaN", "+Inf", "-Inf"] {
            assert_eq!(
                parse_response(200, &vector(&[raw]), "q"),
                Err(QueryError::NotANumber { value: raw.into(), query: "q".into() })
            );
        }
    }

    #[test]
    fn two_series_are_refused() {
        assert_eq!(
            parse_response(200, &vector(&["1", "2"]), "q"),
            Err(QueryError::MultipleSeries { count: 2, query: "q".into() })
        );
    }

    #[test]
    fn error_status_surfaces_error_type_and_message_even_with_http_400() {
        let body =
            r#"{"status":"error","errorType":"bad_data","error":"1:5: parse error: unexpected right parenthesis ')'"}"#;
        let err = parse_response(400, body, "sum())").unwrap_err();
        assert_eq!(
            err,
            QueryError::QueryFailed {
                error_type: "bad_data".into(),
                message: "1:5: parse error: unexpected right parenthesis ')'".into(),
                query: "sum())".into()
            }
        );
        assert!(err.to_string().contains("bad_data"));
    }

    #[test]
    fn non_json_error_is_http_with_body() {
        assert_eq!(
            parse_response(502, "Bad Gateway\n", "q"),
            Err(QueryError::Http { status: 502, body: "Bad Gateway".into() })
        );
    }

    #[test]
    fn garbage_with_200_is_bad_response() {
        assert!(matches!(
            parse_response(200, "<html>login</html>", "q"),
            Err(QueryError::BadResponse(m)) if m.contains("<html>login</html>")
        ));
        assert!(matches!(
            parse_response(200, &vector(&["abc"]), "q"),
            Err(QueryError::BadResponse(m)) if m.contains("abc")
        ));
    }

    #[test]
    fn matrix_string_and_histograms_are_bad_responses() {
        let matrix =
            r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1,"1"]]}]}}"#;
        let string = r#"{"status":"success","data":{"resultType":"string","result":[1,"x"]}}"#;
        let histogram = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"histogram":[1,{"count":"1","sum":"1"}]}]}}"#;
        for body in [matrix, string, histogram] {
            assert!(matches!(parse_response(200, body, "q"), Err(QueryError::BadResponse(_))), "{body}");
        }
    }

    #[test]
    fn whole_answers_keep_every_series_labels_and_points() {
        let matrix = r#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{"workload":"canary"},"values":[[10,"0"],[11.5,"NaN"]]},
            {"metric":{},"values":[]}]}}"#;
        let Ok(Answer::Matrix(series)) = parse_answer(200, matrix, "q") else { panic!("a matrix") };
        assert_eq!(series.len(), 2);
        assert_eq!(series[0].labels["workload"], "canary");
        assert_eq!(series[0].points[0], (10.0, 0.0));
        assert!(series[0].points[1].1.is_nan());
        assert_eq!(
            parse_answer(200, &vector(&["1", "2"]), "q").map(|a| match a {
                Answer::Vector(samples) =>
                    samples.iter().map(|s| (s.labels["pod"].clone(), s.points.clone())).collect(),
                _ => Vec::new(),
            }),
            Ok(vec![("p0".to_string(), vec![(1700000000.123, 1.0)]), ("p1".to_string(), vec![(1700000000.123, 2.0)])])
        );
        let scalar = r#"{"status":"success","data":{"resultType":"scalar","result":[1700000000,"42"]}}"#;
        assert_eq!(parse_answer(200, scalar, "q"), Ok(Answer::Scalar((1700000000.0, 42.0))));
        assert_eq!(parse_answer(200, &vector(&[]), "q"), Ok(Answer::Vector(Vec::new())));
    }

    #[test]
    fn whole_answers_refuse_what_parse_response_refuses() {
        let error = r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        assert!(matches!(
            parse_answer(400, error, "q"),
            Err(QueryError::QueryFailed { error_type, message, .. }) if error_type == "bad_data" && message == "parse error"
        ));
        let string = r#"{"status":"success","data":{"resultType":"string","result":[1,"x"]}}"#;
        let histogram = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"histogram":[1,{"count":"1","sum":"1"}]}]}}"#;
        let bad_time = r#"{"status":"success","data":{"resultType":"scalar","result":["now","1"]}}"#;
        for body in [string, histogram, bad_time, "<html>login</html>"] {
            assert!(matches!(parse_answer(200, body, "q"), Err(QueryError::BadResponse(_))), "{body}");
        }
    }

    #[test]
    fn query_url_keeps_path_prefix_and_rejects_bad_addresses() {
        let url = |address: &str| {
            PrometheusProvider::new(&ProviderConfig::new(ProviderKind::Prometheus, address))
                .map(|p| p.query_url().to_string())
        };
        assert_eq!(url("http://prom:9090").unwrap(), "http://prom:9090/api/v1/query");
        assert_eq!(url("https://host/prometheus/").unwrap(), "https://host/prometheus/api/v1/query");
        for bad in ["", "prom:9090", "ftp://prom", "http://prom?x=1", "not a url"] {
            assert!(matches!(api_url(bad), Err(QueryError::InvalidConfig(_))), "{bad:?}");
        }
    }

    proptest::proptest! {
        /// Every finite value, written the way Prometheus writes it (Go's
        /// shortest float formatting, which Rust's `{}` also produces up to
        /// exponent style), comes back exactly.
        #[test]
        fn finite_values_round_trip(value in proptest::num::f64::NORMAL | proptest::num::f64::ZERO) {
            let body = vector(&[&value.to_string()]);
            proptest::prop_assert_eq!(parse_response(200, &body, "q"), Ok(value));
            let body = vector(&[&format!("{value:e}")]);
            proptest::prop_assert_eq!(parse_response(200, &body, "q"), Ok(value));
        }
    }
}
