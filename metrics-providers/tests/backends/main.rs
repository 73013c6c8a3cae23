//! Every metric backend against a fake of its vendor's API on 127.0.0.1.
//!
//! Each fake checks the request the way the vendor documents it (method,
//! path, parameters, headers, authentication, CloudWatch's SigV4 signature
//! recomputed independently) and answers in the vendor's documented shapes;
//! [`harness::run_cases`] drives each backend through value, empty, several
//! series, error body, 401, 429, 5xx, timeout, garbage and a hostile echo.

mod harness;
mod sigv4;

use std::sync::Arc;

use harness::{Answer, Recorded, Vendor, check_window, expect_eq, no_aux, run_cases, secret};
use metrics_providers::{
    CloudWatchProvider, Credentials, EgressPolicy, MetricProvider, ProviderConfig, ProviderKind, QueryError,
    StackdriverProvider, build_provider, describe_failure,
};
use serde_json::{Value, json};

/// A config for a fake on 127.0.0.1: the egress policy refuses loopback addresses
/// unless allowed (outbound.rs).
fn local(kind: ProviderKind, address: impl Into<String>) -> ProviderConfig {
    ProviderConfig { egress: EgressPolicy::strict().allowing_loopback(), ..ProviderConfig::new(kind, address) }
}

fn config(kind: ProviderKind, address: &str, pairs: &[(&str, &str)]) -> ProviderConfig {
    let mut config = local(kind, address);
    config.secret = Some(secret(pairs));
    config
}

// ---- Datadog ----

const DD_API_KEY: &str = "dd-api-SECRET-5f1c2a";
const DD_APP_KEY: &str = "dd-app-SECRET-9b8e7d";

fn datadog() -> Vendor {
    let query = "sum:istio.mesh.request.count{destination_workload:podinfo,!response_code:404}.as_count()";
    let series = |values: &str| {
        format!(
            r#"{{"unit":null,"query_index":0,"aggr":"sum","metric":"istio.mesh.request.count","tag_set":[],"expression":"{query}","scope":"destination_workload:podinfo","interval":60,"length":3,"start":1700000000000,"end":1700000599000,"pointlist":{values},"display_name":"istio.mesh.request.count","attributes":{{}}}}"#
        )
    };
    let answer = |series: &[String]| {
        Answer::json(
            200,
            format!(
                r#"{{"status":"ok","res_type":"time_series","resp_version":1,"query":"{query}","from_date":1700000000000,"to_date":1700000600000,"series":[{}],"values":[],"times":[],"message":"","group_by":[]}}"#,
                series.join(",")
            ),
        )
    };
    let points = "[[1700000000000.0,null],[1700000060000.0,12.0],[1700000120000.0,13.5]]";
    Vendor {
        kind: ProviderKind::Datadog,
        config: Arc::new(|address| {
            config(
                ProviderKind::Datadog,
                address,
                &[("datadog_api_key", DD_API_KEY), ("datadog_application_key", DD_APP_KEY)],
            )
        }),
        check: Arc::new(move |r: &Recorded| {
            expect_eq("method", r.method.as_str(), "GET")?;
            expect_eq("path", r.path.as_str(), "/api/v1/query")?;
            expect_eq("query", r.param("query"), Some(query))?;
            check_window(r, "from", "to", 1, 600)?;
            expect_eq("DD-API-KEY", r.header("dd-api-key"), Some(DD_API_KEY))?;
            expect_eq("DD-APPLICATION-KEY", r.header("dd-application-key"), Some(DD_APP_KEY))
        }),
        aux: no_aux(),
        query,
        value: (answer(&[series(points)]), 12.0),
        empty: answer(&[]),
        several: answer(&[series(points), series(points)]),
        error: (
            Answer::json(
                400,
                r#"{"errors":["Error parsing query: unable to parse sum:istio.mesh.request.count{: Rule 'scope_expr' didn't match"]}"#,
            ),
            "Error parsing query",
        ),
        unauthorized: Answer::json(401, r#"{"errors":["Unauthorized"]}"#),
        secrets: vec![DD_API_KEY, DD_APP_KEY],
    }
}

#[tokio::test]
async fn datadog_speaks_the_metrics_query_api() {
    run_cases(&datadog()).await;
}

// ---- New Relic ----

const NR_ACCOUNT: &str = "1234567";
const NR_API_KEY: &str = "NRAK-SECRET0123456789ABCDEF";
const NR_QUERY_KEY: &str = "NRIQ-SECRET-QUERYKEY-42";
const NRQL: &str =
    "SELECT percentage(count(*), WHERE httpResponseCode >= 500) FROM Transaction WHERE appName = 'podinfo'";

fn nerdgraph_results(rows: &str) -> Answer {
    Answer::json(200, format!(r#"{{"data":{{"actor":{{"account":{{"nrql":{{"results":{rows}}}}}}}}}}}"#))
}

fn newrelic_nerdgraph() -> Vendor {
    Vendor {
        kind: ProviderKind::NewRelic,
        config: Arc::new(|address| {
            config(
                ProviderKind::NewRelic,
                &format!("{address}/graphql"),
                &[("newrelic_account_id", NR_ACCOUNT), ("newrelic_api_key", NR_API_KEY)],
            )
        }),
        check: Arc::new(|r: &Recorded| {
            expect_eq("method", r.method.as_str(), "POST")?;
            expect_eq("path", r.path.as_str(), "/graphql")?;
            expect_eq("API-Key", r.header("api-key"), Some(NR_API_KEY))?;
            expect_eq("content type", r.header("content-type"), Some("application/json"))?;
            let body = r.json();
            let graphql = body["query"].as_str().unwrap_or_default();
            if !graphql.contains("account(id: $accountId)") || !graphql.contains("nrql(query: $nrql)") {
                return Err(format!("GraphQL {graphql:?} does not run the NRQL variable"));
            }
            expect_eq("accountId", &body["variables"]["accountId"], &json!(1234567))?;
            expect_eq("nrql", body["variables"]["nrql"].as_str(), Some(&*format!("{NRQL} SINCE 60 seconds ago")))
        }),
        aux: no_aux(),
        query: NRQL,
        value: (nerdgraph_results(r#"[{"percentage":0.75}]"#), 0.75),
        empty: nerdgraph_results("[]"),
        several: nerdgraph_results(r#"[{"facet":"a","count":1},{"facet":"b","count":2}]"#),
        error: (
            Answer::json(
                200,
                r#"{"data":{"actor":{"account":{"nrql":null}}},"errors":[{"locations":[{"column":29,"line":1}],"message":"NRQL Syntax Error: Error at line 1 position 8, unexpected 'percentag'","path":["actor","account","nrql"]}]}"#,
            ),
            "NRQL Syntax Error",
        ),
        unauthorized: Answer::json(401, r#"{"errors":[{"message":"Invalid API key"}]}"#),
        secrets: vec![NR_API_KEY, NR_ACCOUNT],
    }
}

fn insights_results(rows: &str) -> Answer {
    Answer::json(
        200,
        format!(
            r#"{{"results":{rows},"performanceStats":{{"inspectedCount":1244054,"omittedCount":0,"matchCount":431023,"wallClockTime":101}},"metadata":{{"eventTypes":["Transaction"],"eventType":"Transaction","openEnded":true,"rawSince":"60 SECONDS AGO","rawUntil":"NOW"}}}}"#
        ),
    )
}

fn newrelic_insights() -> Vendor {
    Vendor {
        kind: ProviderKind::NewRelic,
        config: Arc::new(|address| {
            config(
                ProviderKind::NewRelic,
                address,
                &[("newrelic_account_id", NR_ACCOUNT), ("newrelic_query_key", NR_QUERY_KEY)],
            )
        }),
        check: Arc::new(|r: &Recorded| {
            expect_eq("method", r.method.as_str(), "GET")?;
            expect_eq("path", r.path.as_str(), "/v1/accounts/1234567/query")?;
            expect_eq("X-Query-Key", r.header("x-query-key"), Some(NR_QUERY_KEY))?;
            expect_eq("Accept", r.header("accept"), Some("application/json"))?;
            expect_eq("nrql", r.param("nrql"), Some(&*format!("{NRQL} SINCE 60 seconds ago")))
        }),
        aux: no_aux(),
        query: NRQL,
        value: (insights_results(r#"[{"percentage":1.25}]"#), 1.25),
        empty: insights_results("[]"),
        several: insights_results(r#"[{"count":1},{"count":2}]"#),
        error: (Answer::json(400, r#"{"error":"NRQL Syntax Error: Error at line 1 position 8"}"#), "NRQL Syntax Error"),
        unauthorized: Answer::json(401, r#"{"error":"Invalid query key"}"#),
        secrets: vec![NR_QUERY_KEY, NR_ACCOUNT],
    }
}

#[tokio::test]
async fn newrelic_speaks_nerdgraph() {
    run_cases(&newrelic_nerdgraph()).await;
}

#[tokio::test]
async fn newrelic_speaks_the_insights_query_api() {
    run_cases(&newrelic_insights()).await;
}

// ---- Graphite ----

const GRAPHITE_USER: &str = "graphite-reader";
const GRAPHITE_PASSWORD: &str = "SECRET-hunter2-graphite";

fn graphite_series(targets: &[&str]) -> Answer {
    let series: Vec<String> = targets
        .iter()
        .map(|t| format!(r#"{{"target":"{t}","tags":{{"name":"{t}"}},"datapoints":[[98.5,1700000000],[99.25,1700000060],[null,1700000120]]}}"#))
        .collect();
    Answer::json(200, format!("[{}]", series.join(",")))
}

fn graphite() -> Vendor {
    let query = "target=summarize(\n  asPercent(sumSeries(stats.podinfo.*.success.count), sumSeries(stats.podinfo.*.count)),\n  '1min', 'avg')\n&from=-10min";
    Vendor {
        kind: ProviderKind::Graphite,
        config: Arc::new(|address| {
            let mut config = config(
                ProviderKind::Graphite,
                address,
                &[("username", GRAPHITE_USER), ("password", GRAPHITE_PASSWORD)],
            );
            config.credentials =
                Credentials::Basic { username: GRAPHITE_USER.into(), password: GRAPHITE_PASSWORD.into() };
            config
        }),
        check: Arc::new(|r: &Recorded| {
            use base64::Engine;
            expect_eq("method", r.method.as_str(), "GET")?;
            expect_eq("path", r.path.as_str(), "/render")?;
            expect_eq(
                "target",
                r.param("target"),
                Some(
                    "summarize( asPercent(sumSeries(stats.podinfo.*.success.count), sumSeries(stats.podinfo.*.count)), '1min', 'avg')",
                ),
            )?;
            expect_eq("from", r.param("from"), Some("-10min"))?;
            expect_eq("format", r.param("format"), Some("json"))?;
            let basic =
                base64::engine::general_purpose::STANDARD.encode(format!("{GRAPHITE_USER}:{GRAPHITE_PASSWORD}"));
            expect_eq("Authorization", r.header("authorization"), Some(&*format!("Basic {basic}")))
        }),
        aux: no_aux(),
        query,
        value: (graphite_series(&["summarize(asPercent)"]), 99.25),
        empty: Answer::json(200, "[]"),
        several: graphite_series(&["a", "b"]),
        error: (Answer::new(400, "text/plain", "Invalid target: unknown function 'asPercnt'"), "unknown function"),
        unauthorized: Answer::new(401, "text/html", "<h1>401 Unauthorized</h1>"),
        secrets: vec![GRAPHITE_PASSWORD],
    }
}

#[tokio::test]
async fn graphite_speaks_the_render_api() {
    run_cases(&graphite()).await;
}

// ---- InfluxDB ----

const INFLUX_TOKEN: &str = "influx-SECRET-token-xyz==";

fn influx_csv(rows: &[&str]) -> Answer {
    let mut body = String::new();
    for row in rows {
        body.push_str("#datatype,string,long,dateTime:RFC3339,dateTime:RFC3339,double,string,string\r\n#group,false,false,true,true,false,true,true\r\n#default,_result,,,,,,\r\n,result,table,_start,_stop,_value,_field,_measurement\r\n");
        body.push_str(row);
        body.push_str("\r\n\r\n");
    }
    Answer::new(200, "text/csv; charset=utf-8", body)
}

fn influxdb() -> Vendor {
    let query = "from(bucket: \"default\")\n  |> range(start: -1m)\n  |> filter(fn: (r) => r[\"destination_workload\"] == \"podinfo\")\n  |> count()\n  |> group()\n  |> sum()";
    let row = |table: u32, value: &str| {
        format!(",,{table},2024-01-01T00:00:00Z,2024-01-01T00:01:00Z,{value},count,istio_requests_total")
    };
    Vendor {
        kind: ProviderKind::InfluxDb,
        config: Arc::new(|address| {
            config(ProviderKind::InfluxDb, address, &[("token", INFLUX_TOKEN), ("org", "podinfo-org")])
        }),
        check: Arc::new(move |r: &Recorded| {
            expect_eq("method", r.method.as_str(), "POST")?;
            expect_eq("path", r.path.as_str(), "/api/v2/query")?;
            expect_eq("org", r.param("org"), Some("podinfo-org"))?;
            expect_eq("Authorization", r.header("authorization"), Some(&*format!("Token {INFLUX_TOKEN}")))?;
            expect_eq("Content-Type", r.header("content-type"), Some("application/json"))?;
            expect_eq("Accept", r.header("accept"), Some("application/csv"))?;
            let body = r.json();
            expect_eq("query", body["query"].as_str(), Some(query))?;
            expect_eq("type", body["type"].as_str(), Some("flux"))?;
            expect_eq("annotations", &body["dialect"]["annotations"], &json!(["datatype", "group", "default"]))
        }),
        aux: no_aux(),
        query,
        value: (influx_csv(&[&row(0, "417")]), 417.0),
        empty: Answer::new(200, "text/csv; charset=utf-8", "\r\n"),
        several: influx_csv(&[&row(0, "1"), &row(1, "2")]),
        error: (
            Answer::json(
                400,
                r#"{"code":"invalid","message":"compilation failed: error @1:1-1:5: undefined identifier frm"}"#,
            ),
            "compilation failed",
        ),
        unauthorized: Answer::json(401, r#"{"code":"unauthorized","message":"unauthorized access"}"#),
        secrets: vec![INFLUX_TOKEN],
    }
}

#[tokio::test]
async fn influxdb_speaks_the_v2_query_api() {
    run_cases(&influxdb()).await;
}

// ---- Dynatrace ----

const DT_TOKEN: &str = "dt0c01.SECRET.ABCDEFGHIJKLMNOP";

fn dynatrace_result(data: &str) -> Answer {
    Answer::json(
        200,
        format!(
            r#"{{"totalCount":1,"nextPageKey":null,"resolution":"Inf","result":[{{"metricId":"builtin:service.response.time:percentile(95)","dataPointCountRatio":1.0E-4,"dimensionCountRatio":0.01,"data":{data}}}]}}"#
        ),
    )
}

fn dynatrace() -> Vendor {
    let query = "builtin:service.response.time:filter(eq(dt.entity.service,SERVICE-ABCDEFG0123456789)):percentile(95)";
    let series = r#"{"dimensions":[],"dimensionMap":{},"timestamps":[1700000600000],"values":[183205.5]}"#;
    Vendor {
        kind: ProviderKind::Dynatrace,
        config: Arc::new(|address| config(ProviderKind::Dynatrace, address, &[("dynatrace_token", DT_TOKEN)])),
        check: Arc::new(move |r: &Recorded| {
            expect_eq("method", r.method.as_str(), "GET")?;
            expect_eq("path", r.path.as_str(), "/api/v2/metrics/query")?;
            expect_eq("Authorization", r.header("authorization"), Some(&*format!("Api-Token {DT_TOKEN}")))?;
            expect_eq("metricSelector", r.param("metricSelector"), Some(query))?;
            expect_eq("resolution", r.param("resolution"), Some("Inf"))?;
            check_window(r, "from", "to", 1000, 600)
        }),
        aux: no_aux(),
        query,
        value: (dynatrace_result(&format!("[{series}]")), 183205.5),
        empty: dynatrace_result("[]"),
        several: dynatrace_result(&format!("[{series},{series}]")),
        error: (
            Answer::json(
                400,
                r#"{"error":{"code":400,"message":"Cannot parse metric selector: Unknown transformation 'percentil'.","constraintViolations":[]}}"#,
            ),
            "Unknown transformation",
        ),
        unauthorized: Answer::json(401, r#"{"error":{"code":401,"message":"Missing authorization parameter."}}"#),
        secrets: vec![DT_TOKEN],
    }
}

#[tokio::test]
async fn dynatrace_speaks_the_metrics_v2_api() {
    run_cases(&dynatrace()).await;
}

// ---- Splunk Observability (SignalFlow) ----

const SF_TOKEN: &str = "sf-SECRET-org-token-0042";

fn signalflow(points: &[(&str, f64)]) -> Answer {
    let mut body = String::from(
        "event: control-message\ndata: {\"type\":\"control-message\",\"event\":\"STREAM_START\",\"timestampMs\":1700000000000}\n\n\
         event: control-message\ndata: {\"type\":\"control-message\",\"event\":\"JOB_START\",\"handle\":\"Dyz8NbSAQAA\",\"timestampMs\":1700000000010}\n\n",
    );
    for (i, (ts_id, value)) in points.iter().enumerate() {
        body.push_str(&format!(
            "event: metadata\ndata: {{\"type\":\"metadata\",\"tsId\":\"{ts_id}\",\"properties\":{{\"sf_metric\":\"requests.latency\"}}}}\n\n\
             event: data\ndata: {{\"type\":\"data\",\"data\":[{{\"tsId\":\"{ts_id}\",\"value\":{value}}}],\"logicalTimestampMs\":{}}}\n\n",
            1_700_000_060_000u64 + 60_000 * i as u64
        ));
    }
    body.push_str("event: control-message\ndata: {\"type\":\"control-message\",\"event\":\"END_OF_CHANNEL\",\"timestampMs\":1700000600000}\n\n");
    Answer::new(200, "text/event-stream", body)
}

fn splunk() -> Vendor {
    let query = "data('requests.latency', filter=filter('app', 'podinfo')).percentile(99).publish()";
    Vendor {
        kind: ProviderKind::Splunk,
        config: Arc::new(|address| config(ProviderKind::Splunk, address, &[("sf_token_key", SF_TOKEN)])),
        check: Arc::new(move |r: &Recorded| {
            expect_eq("method", r.method.as_str(), "POST")?;
            expect_eq("path", r.path.as_str(), "/v2/signalflow/execute")?;
            expect_eq("X-SF-Token", r.header("x-sf-token"), Some(SF_TOKEN))?;
            expect_eq("Content-Type", r.header("content-type"), Some("text/plain"))?;
            expect_eq("program", r.body_text(), query)?;
            expect_eq("immediate", r.param("immediate"), Some("true"))?;
            check_window(r, "start", "stop", 1000, 600)
        }),
        aux: no_aux(),
        query,
        value: (signalflow(&[("AAAAAKw5o_o", 118.0), ("AAAAAKw5o_o", 121.5)]), 121.5),
        empty: signalflow(&[]),
        several: signalflow(&[("AAAAAKw5o_o", 1.0), ("AAAAAMxQ9Ek", 2.0)]),
        error: (
            Answer::new(
                200,
                "text/event-stream",
                "event: error\ndata: {\"type\":\"error\",\"error\":400,\"errors\":[{\"code\":\"ANALYTICS_PROGRAM_NAME_ERROR\",\"context\":{\"column\":1,\"line\":1,\"programText\":\"dta\"}}]}\n\n",
            ),
            "ANALYTICS_PROGRAM_NAME_ERROR",
        ),
        unauthorized: Answer::json(401, r#"{"code":401,"message":"Unauthorized"}"#),
        secrets: vec![SF_TOKEN],
    }
}

#[tokio::test]
async fn splunk_speaks_signalflow_over_http() {
    run_cases(&splunk()).await;
}

// ---- Amazon CloudWatch ----

const AWS_KEY_ID: &str = "AKIASECRETEXAMPLE7Q";
const AWS_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/SECRETbPxRfiCYEXAMPLEKEY";
const AWS_SESSION: &str = "FwoGZXIvYXdzSECRETsession/token+value==";

/// The MetricDataQuery list of Flagger's documentation.
const CLOUDWATCH_QUERY: &str = r#"[
    {"Id": "e1", "Expression": "m1 / m2", "Label": "ErrorRate"},
    {"Id": "m1", "MetricStat": {"Metric": {"Namespace": "MyKubernetesCluster", "MetricName": "ErrorCount",
        "Dimensions": [{"Name": "appName", "Value": "podinfo.test"}]}, "Period": 60, "Stat": "Sum", "Unit": "Count"}, "ReturnData": false},
    {"Id": "m2", "MetricStat": {"Metric": {"Namespace": "MyKubernetesCluster", "MetricName": "RequestCount",
        "Dimensions": [{"Name": "appName", "Value": "podinfo.test"}]}, "Period": 60, "Stat": "Sum", "Unit": "Count"}, "ReturnData": false}
]"#;

fn metric_data(results: &[&str]) -> Answer {
    let results: Vec<String> = results
        .iter()
        .map(|values| {
            format!(r#"{{"Id":"e1","Label":"ErrorRate","Timestamps":[1700000540,1700000480],"Values":{values},"StatusCode":"Complete"}}"#)
        })
        .collect();
    Answer::json(200, format!(r#"{{"MetricDataResults":[{}],"Messages":[]}}"#, results.join(",")))
}

/// Checks a GetMetricData request as CloudWatch's API reference documents
/// it, its SigV4 signature recomputed by [`sigv4::verify`].
fn check_get_metric_data(r: &Recorded, secret_key: &str, session: Option<&str>) -> Result<(), String> {
    expect_eq("method", r.method.as_str(), "POST")?;
    expect_eq("path", r.path.as_str(), "/")?;
    expect_eq("X-Amz-Target", r.header("x-amz-target"), Some("GraniteServiceVersion20100801.GetMetricData"))?;
    expect_eq("Content-Type", r.header("content-type"), Some("application/json"))?;
    expect_eq("Accept", r.header("accept"), Some("application/json"))?;
    expect_eq("Content-Encoding", r.header("content-encoding"), Some("amz-1.0"))?;
    expect_eq("X-Amz-Security-Token", r.header("x-amz-security-token"), session)?;
    sigv4::verify(r, secret_key, "us-east-1", "monitoring")?;
    let body = r.json();
    let expected: Value = serde_json::from_str(CLOUDWATCH_QUERY).unwrap();
    expect_eq("MetricDataQueries", &body["MetricDataQueries"], &expected)?;
    let (start, end) = (body["StartTime"].as_u64(), body["EndTime"].as_u64());
    match (start, end) {
        (Some(start), Some(end)) if end - start == 600 && end.abs_diff(harness::now_secs()) < 30 => Ok(()),
        _ => Err(format!("StartTime {start:?} / EndTime {end:?} are not the 10 intervals before now")),
    }
}

fn cloudwatch() -> Vendor {
    Vendor {
        kind: ProviderKind::CloudWatch,
        config: Arc::new(|address| {
            let mut config = config(
                ProviderKind::CloudWatch,
                address,
                &[
                    ("aws_access_key_id", AWS_KEY_ID),
                    ("aws_secret_access_key", AWS_SECRET),
                    ("aws_session_token", AWS_SESSION),
                ],
            );
            config.region = Some("us-east-1".into());
            config
        }),
        check: Arc::new(|r: &Recorded| check_get_metric_data(r, AWS_SECRET, Some(AWS_SESSION))),
        aux: no_aux(),
        query: CLOUDWATCH_QUERY,
        value: (metric_data(&["[0.02,0.5]"]), 0.02),
        empty: metric_data(&["[]"]),
        several: metric_data(&["[1]", "[2]"]),
        error: (
            Answer::json(
                400,
                r#"{"__type":"com.amazonaws.cloudwatch#InvalidParameterValueException","message":"The value m1 / m3 for parameter MetricDataQueries.member.1.Expression is not valid."}"#,
            ),
            "InvalidParameterValueException: The value m1 / m3",
        ),
        unauthorized: Answer::json(
            401,
            r#"{"__type":"com.amazon.coral.service#UnrecognizedClientException","message":"The security token included in the request is invalid."}"#,
        ),
        secrets: vec![AWS_KEY_ID, AWS_SECRET, AWS_SESSION],
    }
}

#[tokio::test]
async fn cloudwatch_speaks_get_metric_data_with_sigv4() {
    run_cases(&cloudwatch()).await;
}

#[test]
fn the_sigv4_checker_reproduces_the_aws_test_suite() {
    sigv4::self_test();
}

/// A temporary file holding `text`, removed on drop.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("petrel-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        Self(path)
    }

    fn path(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test]
async fn cloudwatch_assumes_the_irsa_role_and_signs_with_its_credentials() {
    const ROLE_SECRET: &str = "role-SECRET-access-key-from-sts";
    const ROLE_SESSION: &str = "role-session-token+/=";
    let token = TempFile::new("irsa-token", "eyJhbGciOiJSUzI1NiJ9.projected-token.sig\n");
    let sts: harness::Aux = Arc::new(|r: &Recorded| {
        if r.path != "/sts" {
            return None;
        }
        let form: std::collections::BTreeMap<String, String> =
            reqwest::Url::parse(&format!("http://x/?{}", r.body_text())).unwrap().query_pairs().into_owned().collect();
        let expected = [
            ("Action", "AssumeRoleWithWebIdentity"),
            ("RoleArn", "arn:aws:iam::123456789012:role/petrel"),
            ("RoleSessionName", "petrel"),
            ("Version", "2011-06-15"),
            ("WebIdentityToken", "eyJhbGciOiJSUzI1NiJ9.projected-token.sig"),
        ];
        let ok = r.method == "POST" && expected.iter().all(|(k, v)| form.get(*k).map(String::as_str) == Some(*v));
        Some(if ok {
            Answer::new(
                200,
                "text/xml",
                format!(
                    "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><AssumeRoleWithWebIdentityResult><Credentials><SessionToken>{}</SessionToken><SecretAccessKey>{ROLE_SECRET}</SecretAccessKey><Expiration>2030-01-01T00:00:00Z</Expiration><AccessKeyId>ASIAROLEEXAMPLE</AccessKeyId></Credentials><SubjectFromWebIdentityToken>system:serviceaccount:petrel:petrel</SubjectFromWebIdentityToken></AssumeRoleWithWebIdentityResult><ResponseMetadata><RequestId>ad4156e9-bce1-11e2-82e6-6b6efEXAMPLE</RequestId></ResponseMetadata></AssumeRoleWithWebIdentityResponse>",
                    ROLE_SESSION.replace('/', "&#x2F;")
                ),
            )
        } else {
            Answer::new(
                400,
                "text/xml",
                format!(
                    "<ErrorResponse><Error><Type>Sender</Type><Code>ValidationError</Code><Message>bad form {form:?}</Message></Error></ErrorResponse>"
                ),
            )
        })
    });
    let check: harness::Check = Arc::new(|r: &Recorded| check_get_metric_data(r, ROLE_SECRET, Some(ROLE_SESSION)));
    let server = harness::Server::start(check, sts, metric_data(&["[0.25]"])).await;
    let mut config = local(ProviderKind::CloudWatch, server.address.clone());
    config.region = Some("us-east-1".into());
    let env = |name: &str| match name {
        "AWS_WEB_IDENTITY_TOKEN_FILE" => Some(token.path()),
        "AWS_ROLE_ARN" => Some("arn:aws:iam::123456789012:role/petrel".into()),
        "AWS_ENDPOINT_URL_STS" => Some(format!("{}/sts", server.address)),
        _ => None,
    };
    let provider = CloudWatchProvider::with_environment(&config, env).unwrap();
    assert_eq!(provider.query(CLOUDWATCH_QUERY).await, Ok(0.25), "{:?}", server.failures());
    assert_eq!(provider.query(CLOUDWATCH_QUERY).await, Ok(0.25), "{:?}", server.failures());
    let sts_calls = server.requests().iter().filter(|r| r.path == "/sts").count();
    assert_eq!(sts_calls, 1, "role credentials are reused");
    assert!(server.failures().is_empty(), "{:?}", server.failures());
}

#[tokio::test]
async fn cloudwatch_takes_pod_identity_credentials_with_the_token_file() {
    let token = TempFile::new("pod-identity-token", "pod-identity-SECRET-token\n");
    let aux: harness::Aux = Arc::new(|r: &Recorded| {
        (r.path == "/v1/credentials").then(|| {
            if r.header("authorization") == Some("pod-identity-SECRET-token") {
                Answer::json(200, r#"{"AccessKeyId":"ASIAPODEXAMPLE","SecretAccessKey":"pod-SECRET-key","Token":"pod-session","AccountId":"123456789012","Expiration":"2030-01-01T00:00:00Z"}"#)
            } else {
                Answer::json(401, r#"{"Message":"invalid token"}"#)
            }
        })
    });
    let check: harness::Check =
        Arc::new(|r: &Recorded| check_get_metric_data(r, "pod-SECRET-key", Some("pod-session")));
    let server = harness::Server::start(check, aux, metric_data(&["[3]"])).await;
    let mut config = local(ProviderKind::CloudWatch, server.address.clone());
    config.region = Some("us-east-1".into());
    let env = |name: &str| match name {
        "AWS_CONTAINER_CREDENTIALS_FULL_URI" => Some(format!("{}/v1/credentials", server.address)),
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE" => Some(token.path()),
        _ => None,
    };
    let provider = CloudWatchProvider::with_environment(&config, env).unwrap();
    assert_eq!(provider.query(CLOUDWATCH_QUERY).await, Ok(3.0), "{:?}", server.failures());
}

#[test]
fn cloudwatch_refuses_what_it_can_see_before_a_query() {
    let mut config = local(ProviderKind::CloudWatch, "");
    let no_env = |_: &str| None;
    let error = |config: &ProviderConfig| CloudWatchProvider::with_environment(config, no_env).unwrap_err().to_string();
    assert!(error(&config).contains("spec.provider.region"));
    config.region = Some("mars-north-1".into());
    assert!(error(&config).contains("unknown AWS region \"mars-north-1\""));
    config.region = Some("eu-west-1".into());
    assert!(error(&config).contains("no AWS credentials"));
    config.secret = Some(secret(&[("aws_access_key_id", "AKIA-only")]));
    let missing = error(&config);
    assert!(missing.contains("aws_secret_access_key") && !missing.contains("AKIA-only"), "{missing}");
    config.secret = Some(secret(&[("aws_access_key_id", "AKIA"), ("aws_secret_access_key", "x")]));
    config.address = "not a url".into();
    // The address is never quoted: it may come from a Secret.
    let invalid = error(&config);
    assert!(invalid.contains("the address") && !invalid.contains("not a url"), "{invalid}");
}

// ---- Google Cloud Monitoring ----

const GCP_PRIVATE_KEY: &str = include_str!("../fixtures/test-only-rsa-key.pem");
const GCP_PUBLIC_KEY: &str = include_str!("../fixtures/test-only-rsa-key.pub.pem");
const GCP_ACCESS_TOKEN: &str = "ya29.SECRET-access-token-from-the-fake";

fn service_account_key(token_uri: &str) -> String {
    json!({
        "type": "service_account",
        "project_id": "podinfo-project",
        "private_key_id": "0123456789abcdef",
        "private_key": GCP_PRIVATE_KEY,
        "client_email": "petrel@podinfo-project.iam.gserviceaccount.com",
        "client_id": "100000000000000000000",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    })
    .to_string()
}

/// The OAuth token endpoint: verifies the JWT the key signed (RS256, with
/// the key pair's public half) and its claims.
fn google_token_endpoint() -> harness::Aux {
    Arc::new(|r: &Recorded| {
        if r.path != "/token" {
            return None;
        }
        let form: std::collections::BTreeMap<String, String> =
            reqwest::Url::parse(&format!("http://x/?{}", r.body_text())).unwrap().query_pairs().into_owned().collect();
        let verified = (|| -> Result<(), String> {
            expect_eq("method", r.method.as_str(), "POST")?;
            expect_eq("content type", r.header("content-type"), Some("application/x-www-form-urlencoded"))?;
            expect_eq(
                "grant_type",
                form.get("grant_type").map(String::as_str),
                Some("urn:ietf:params:oauth:grant-type:jwt-bearer"),
            )?;
            let assertion = form.get("assertion").ok_or("no assertion")?;
            let key = jsonwebtoken::DecodingKey::from_rsa_pem(GCP_PUBLIC_KEY.as_bytes()).unwrap();
            let host = r.header("host").unwrap_or_default();
            let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
            validation.set_audience(&[format!("http://{host}/token")]);
            validation.set_issuer(&["petrel@podinfo-project.iam.gserviceaccount.com"]);
            let token = jsonwebtoken::decode::<Value>(assertion, &key, &validation).map_err(|e| format!("JWT: {e}"))?;
            expect_eq("kid", token.header.kid.as_deref(), Some("0123456789abcdef"))?;
            expect_eq("scope", token.claims["scope"].as_str(), Some("https://www.googleapis.com/auth/monitoring.read"))
        })();
        Some(match verified {
            Ok(()) => Answer::json(
                200,
                format!(r#"{{"access_token":"{GCP_ACCESS_TOKEN}","expires_in":3599,"token_type":"Bearer"}}"#),
            ),
            Err(why) => Answer::json(400, format!(r#"{{"error":"invalid_grant","error_description":"{why}"}}"#)),
        })
    })
}

fn time_series(series: &[&str]) -> Answer {
    let data: Vec<String> = series
        .iter()
        .map(|values| {
            format!(
                r#"{{"labelValues":[{{"stringValue":"podinfo"}}],"pointData":[{{"values":{values},"timeInterval":{{"startTime":"2024-01-01T00:09:00Z","endTime":"2024-01-01T00:10:00Z"}}}},{{"values":[{{"doubleValue":1}}],"timeInterval":{{"startTime":"2024-01-01T00:08:00Z","endTime":"2024-01-01T00:09:00Z"}}}}]}}"#
            )
        })
        .collect();
    Answer::json(
        200,
        format!(
            r#"{{"timeSeriesDescriptor":{{"labelDescriptors":[{{"key":"metric.destination_service_name"}}],"pointDescriptors":[{{"key":"value_response_latencies_percentile","valueType":"DOUBLE","metricKind":"GAUGE","unit":"ms"}}]}},"timeSeriesData":[{}]}}"#,
            data.join(",")
        ),
    )
}

fn stackdriver() -> Vendor {
    let query = "fetch k8s_container\n| metric 'istio.io/service/server/response_latencies'\n| filter (metric.destination_service_name == 'podinfo-canary')\n| align delta(1m)\n| every 1m\n| group_by [], [value_response_latencies_percentile: percentile(value.response_latencies, 99)]";
    Vendor {
        kind: ProviderKind::Stackdriver,
        config: Arc::new(|address| {
            let key = service_account_key(&format!("{address}/token"));
            config(ProviderKind::Stackdriver, address, &[("project", "podinfo-project"), ("serviceAccountKey", &key)])
        }),
        check: Arc::new(move |r: &Recorded| {
            expect_eq("method", r.method.as_str(), "POST")?;
            expect_eq("path", r.path.as_str(), "/v3/projects/podinfo-project/timeSeries:query")?;
            expect_eq("Authorization", r.header("authorization"), Some(&*format!("Bearer {GCP_ACCESS_TOKEN}")))?;
            expect_eq("body", r.json(), json!({"query": query}))
        }),
        aux: google_token_endpoint(),
        query,
        value: (time_series(&[r#"[{"doubleValue":87.5}]"#]), 87.5),
        empty: Answer::json(200, r#"{"timeSeriesDescriptor":{"pointDescriptors":[{"key":"v","valueType":"DOUBLE"}]}}"#),
        several: time_series(&[r#"[{"doubleValue":1}]"#, r#"[{"doubleValue":2}]"#]),
        error: (
            Answer::json(
                400,
                r#"{"error":{"code":400,"message":"Line 1, column 7: Table 'k8s_containr' not found.","status":"INVALID_ARGUMENT"}}"#,
            ),
            "INVALID_ARGUMENT: Line 1, column 7",
        ),
        unauthorized: Answer::json(
            401,
            r#"{"error":{"code":401,"message":"Request had invalid authentication credentials.","status":"UNAUTHENTICATED"}}"#,
        ),
        secrets: vec![GCP_ACCESS_TOKEN, "MIIEv"],
    }
}

#[tokio::test]
async fn stackdriver_speaks_time_series_query_with_a_service_account_token() {
    run_cases(&stackdriver()).await;
}

#[tokio::test]
async fn stackdriver_takes_the_workload_identity_token_from_the_metadata_server() {
    let aux: harness::Aux = Arc::new(|r: &Recorded| {
        (r.path == "/computeMetadata/v1/instance/service-accounts/default/token").then(|| {
            if r.header("metadata-flavor") == Some("Google") {
                Answer::json(
                    200,
                    format!(r#"{{"access_token":"{GCP_ACCESS_TOKEN}","expires_in":3599,"token_type":"Bearer"}}"#),
                )
            } else {
                Answer::new(403, "text/plain", "Missing Metadata-Flavor:Google header.")
            }
        })
    });
    let check: harness::Check = Arc::new(|r: &Recorded| {
        expect_eq("Authorization", r.header("authorization"), Some(&*format!("Bearer {GCP_ACCESS_TOKEN}")))
    });
    let server = harness::Server::start(check, aux, time_series(&[r#"[{"int64Value":"12"}]"#])).await;
    let config = config(ProviderKind::Stackdriver, &server.address, &[("project", "podinfo-project")]);
    let host = server.address.trim_start_matches("http://").to_string();
    let provider =
        StackdriverProvider::with_environment(&config, |name| (name == "GCE_METADATA_HOST").then(|| host.clone()))
            .unwrap();
    assert_eq!(provider.query("fetch x").await, Ok(12.0), "{:?}", server.failures());
}

#[tokio::test]
async fn stackdriver_token_refusals_are_failed_checks_naming_the_oauth_error() {
    let aux: harness::Aux = Arc::new(|r: &Recorded| {
        (r.path == "/token")
            .then(|| Answer::json(400, r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#))
    });
    let server =
        harness::Server::start(Arc::new(|_: &Recorded| Ok(())), aux, time_series(&[r#"[{"doubleValue":1}]"#])).await;
    let provider = build_provider(&(stackdriver().config)(&server.address)).unwrap();
    let error = provider.query("fetch x").await.unwrap_err();
    let message = describe_failure(ProviderKind::Stackdriver, &error);
    assert!(message.contains("invalid_grant: Invalid JWT Signature."), "{message}");
    assert_eq!(server.requests().len(), 1, "no query without a token");
}

// ---- configuration seen before any query ----

/// Every backend names the Secret key it misses, the bad address, the
/// unknown region: never a value of the Secret.
#[test]
fn missing_keys_bad_addresses_and_regions_are_refused_before_a_query() {
    let cases: Vec<(ProviderConfig, &str)> = vec![
        (config(ProviderKind::Datadog, "", &[("datadog_api_key", "SECRET-VALUE-1")]), "\"datadog_application_key\""),
        (local(ProviderKind::Datadog, ""), "needs a Secret"),
        (config(ProviderKind::NewRelic, "", &[("newrelic_query_key", "SECRET-VALUE-1")]), "\"newrelic_account_id\""),
        (config(ProviderKind::NewRelic, "", &[("newrelic_account_id", "SECRET-VALUE-1")]), "not a number"),
        (config(ProviderKind::NewRelic, "", &[("newrelic_account_id", "1234")]), "\"newrelic_query_key\""),
        (config(ProviderKind::Graphite, "http://graphite", &[("username", "SECRET-VALUE-1")]), "\"password\""),
        (local(ProviderKind::Graphite, "graphite:8080"), "address"),
        (local(ProviderKind::Graphite, ""), "needs an address"),
        (config(ProviderKind::InfluxDb, "http://influx:8086", &[("token", "SECRET-VALUE-1")]), "\"org\""),
        (
            config(ProviderKind::Dynatrace, "https://abc.live.dynatrace.com", &[("token", "SECRET-VALUE-1")]),
            "\"dynatrace_token\"",
        ),
        (config(ProviderKind::Dynatrace, "", &[("dynatrace_token", "SECRET-VALUE-1")]), "needs an address"),
        (
            config(ProviderKind::Splunk, "https://api.us1.signalfx.com", &[("token", "SECRET-VALUE-1")]),
            "\"sf_token_key\"",
        ),
        (config(ProviderKind::Stackdriver, "", &[("serviceAccountKey", "SECRET-VALUE-1")]), "\"project\""),
        (
            config(ProviderKind::Stackdriver, "", &[("project", "p"), ("serviceAccountKey", "{\"SECRET-VALUE-1\": 1")]),
            "not a service account JSON key",
        ),
        (
            config(
                ProviderKind::Stackdriver,
                "",
                &[("project", "p"), ("serviceAccountKey", r#"{"client_email":"a@b","private_key":"SECRET-VALUE-1"}"#)],
            ),
            "not an RSA key",
        ),
        (
            config(
                ProviderKind::Datadog,
                "ftp://SECRET-VALUE-1",
                &[("datadog_api_key", "a"), ("datadog_application_key", "b")],
            ),
            "address",
        ),
    ];
    for (mut config, expected) in cases {
        if config.kind == ProviderKind::Datadog && config.address.starts_with("ftp") {
            // An address from the Secret: its value is scrubbed too.
            config.secret = Some(secret(&[
                ("datadog_api_key", "a1b2"),
                ("datadog_application_key", "c3d4"),
                ("address", "ftp://SECRET-VALUE-1"),
            ]));
        }
        let error = build_provider(&config).expect_err(expected);
        let message = describe_failure(config.kind, &error);
        assert!(matches!(error, QueryError::InvalidConfig(_)), "{message}");
        assert!(message.contains(expected), "{message:?} should name {expected:?}");
        assert!(!message.contains("SECRET-VALUE-1"), "{message:?} shows a Secret value");
    }
}

#[tokio::test]
async fn a_query_the_backend_refuses_never_reaches_it() {
    let server = harness::Server::start(Arc::new(|_: &Recorded| Ok(())), no_aux(), Answer::json(200, "{}")).await;
    let graphite = build_provider(&local(ProviderKind::Graphite, server.address.clone())).unwrap();
    let error = graphite.query("sumSeries(a.b.*)").await.unwrap_err();
    assert!(error.to_string().contains("target"), "{error}");
    let cloudwatch = build_provider(&(cloudwatch().config)(&server.address)).unwrap();
    let error = cloudwatch.query("SELECT AVG(CPUUtilization) FROM SCHEMA(\"AWS/EC2\")").await.unwrap_err();
    assert!(error.to_string().contains("JSON list of MetricDataQuery"), "{error}");
    assert!(server.requests().is_empty());
}
