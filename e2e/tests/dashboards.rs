//! Issue 5: the Grafana dashboards in `charts/petrel/dashboards/` against a real run.
//!
//! The canary dashboard's every PromQL expression (panel targets and variable queries) is
//! run against the real Prometheus of a release scenario (real control plane, real
//! `petrel`, Istio-shaped traffic from the simulator, Prometheus scraping both the
//! simulator and petrel's `/metrics`); an expression that never returns data fails the
//! test. The run has a rolled-back release and a promoted one, so the counters of both
//! outcomes exist. The fleet dashboard needs a hub: here its expressions are only checked
//! to parse (Prometheus answers a bad expression with `bad_data`).
//!
//! `PETREL_DASHBOARD_PNG=docs/images/canary-panels.png cargo test -p petrel-e2e --test
//! dashboards -- --nocapture` also draws the canary-vs-primary panels from the run's range
//! data (`/api/v1/query_range` of the dashboard's own expressions) into that PNG.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, ensure};
use petrel::api::canary::Phase;
use petrel::api::rollout::RolloutPhase;
use petrel_e2e::fleet_scenario::{FleetEnv, HUB_NAMESPACE, ROLLOUT};
use petrel_e2e::prometheus::{Prometheus, PrometheusError, RangeSeries, Sample};
use petrel_e2e::scenario::{
    APP, CanaryOptions, IMAGE_V1, IMAGE_V2, NAMESPACE, TestEnv, eventually, metrics_addr_in_log, workspace_root,
};
use petrel_e2e::simulator::{Provider, VersionBehaviour};
use petrel_e2e::wait::poll;
use serde_json::Value;

const CANARY_DASHBOARD: &str = "petrel-canary.json";
const FLEET_DASHBOARD: &str = "petrel-fleet.json";
const SETUP: Duration = Duration::from_secs(60);
const RELEASE: Duration = Duration::from_secs(90);
/// What Grafana's `$__rate_interval` is for a 1 s scrape interval and a short range.
const RATE_INTERVAL: &str = "10s";

fn dashboards_dir() -> PathBuf {
    workspace_root().join("charts/petrel/dashboards")
}

fn load(file: &str) -> Value {
    let path = dashboards_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// One PromQL target of a panel.
#[derive(Debug, Clone)]
struct Target {
    panel: String,
    ref_id: String,
    expr: String,
    legend: String,
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(panel);
        out.extend(panel["panels"].as_array().into_iter().flatten());
    }
    out
}

fn targets(dashboard: &Value) -> Vec<Target> {
    panels(dashboard)
        .into_iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or_default().to_owned();
            panel["targets"].as_array().into_iter().flatten().filter_map(move |t| {
                Some(Target {
                    panel: title.clone(),
                    ref_id: t["refId"].as_str().unwrap_or_default().to_owned(),
                    expr: t["expr"].as_str()?.to_owned(),
                    legend: t["legendFormat"].as_str().unwrap_or_default().to_owned(),
                })
            })
        })
        .collect()
}

/// A `label_values(selector, label)` variable query.
#[derive(Debug, Clone, PartialEq)]
struct VariableQuery {
    name: String,
    selector: String,
    label: String,
}

fn variables(dashboard: &Value) -> Vec<&Value> {
    dashboard["templating"]["list"].as_array().map(|l| l.iter().collect()).unwrap_or_default()
}

fn variable_queries(dashboard: &Value) -> Vec<VariableQuery> {
    variables(dashboard)
        .into_iter()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let name = v["name"].as_str().unwrap_or_default();
            let query = v["query"].as_str().or_else(|| v["query"]["query"].as_str()).unwrap_or_default();
            parse_label_values(name, query)
                .unwrap_or_else(|| panic!("variable {name}: {query:?} is not label_values(...)"))
        })
        .collect()
}

fn parse_label_values(name: &str, query: &str) -> Option<VariableQuery> {
    let inner = query.trim().strip_prefix("label_values(")?.strip_suffix(')')?;
    let (selector, label) = inner.rsplit_once(',')?;
    Some(VariableQuery { name: name.to_owned(), selector: selector.trim().to_owned(), label: label.trim().to_owned() })
}

/// The PromQL Grafana's `label_values(selector, label)` amounts to.
fn label_values_promql(q: &VariableQuery) -> String {
    format!("count by ({}) ({})", q.label, q.selector)
}

/// Replaces `$name`, `${name}` and `${name:format}` with `values`; a variable without a
/// value is an error (the dashboard uses a variable it does not define).
fn substitute(expr: &str, values: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, consumed) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced.find('}').ok_or_else(|| format!("unclosed ${{ in {expr:?}"))?;
            let inside = &braced[..end];
            (inside.split(':').next().unwrap_or_default(), end + 2)
        } else {
            let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
            (&after[..end], end)
        };
        if name.is_empty() {
            return Err(format!("a lone $ in {expr:?}"));
        }
        let value = values.get(name).ok_or_else(|| format!("${name} has no value (used in {expr:?})"))?;
        out.push_str(value);
        rest = &after[consumed..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Grafana's own variables, as a panel showing the last few minutes would get them.
fn grafana_builtins() -> BTreeMap<String, String> {
    [("__rate_interval", RATE_INTERVAL), ("__interval", "2s"), ("__range", "5m")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The values of the fleet dashboard's variables in the fleet scenario.
fn fleet_values() -> BTreeMap<String, String> {
    let mut values = grafana_builtins();
    values.extend(
        [("datasource", "prometheus"), ("namespace", HUB_NAMESPACE), ("rollout", ROLLOUT)]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    values
}

/// The values of the canary dashboard's variables in the scenario.
fn canary_values() -> BTreeMap<String, String> {
    let mut values = grafana_builtins();
    values.extend(
        [("datasource", "prometheus"), ("namespace", NAMESPACE), ("canary", APP), ("target", APP)]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    values
}

/// Some value for every variable of a dashboard (a syntax check needs one).
fn placeholder_values(dashboard: &Value) -> BTreeMap<String, String> {
    let mut values = grafana_builtins();
    for variable in variables(dashboard) {
        let name = variable["name"].as_str().unwrap_or_default().to_owned();
        let value = if variable["type"] == "datasource" { "prometheus" } else { "fleet" };
        values.insert(name, value.to_owned());
    }
    values
}

fn defined_names(dashboard: &Value) -> BTreeSet<String> {
    variables(dashboard).iter().filter_map(|v| v["name"].as_str().map(str::to_owned)).collect()
}

/// Structural problems of one dashboard, as sentences.
fn dashboard_problems(file: &str, dashboard: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut problem = |p: String| problems.push(format!("{file}: {p}"));
    if dashboard["schemaVersion"].as_u64().unwrap_or(0) < 39 {
        problem(format!("schemaVersion {} is older than 39", dashboard["schemaVersion"]));
    }
    for key in ["uid", "title"] {
        if dashboard[key].as_str().is_none_or(str::is_empty) {
            problem(format!("no {key}"));
        }
    }
    let datasource = variables(dashboard).into_iter().find(|v| v["name"] == "datasource");
    if datasource.is_none_or(|v| v["type"] != "datasource" || v["query"] != "prometheus") {
        problem("no `datasource` variable of type datasource selecting prometheus".into());
    }
    let mut names = defined_names(dashboard);
    names.extend(grafana_builtins().into_keys());
    let mut ids = BTreeSet::new();
    let mut cells: BTreeMap<(u64, u64), String> = BTreeMap::new();
    for panel in panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or_default().to_owned();
        if !ids.insert(panel["id"].as_u64().unwrap_or(0)) {
            problem(format!("panel {title:?}: id {} not unique (or missing)", panel["id"]));
        }
        let grid = &panel["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| grid[k].as_u64().unwrap_or(u64::MAX));
        if w == 0 || h == 0 || x.saturating_add(w) > 24 || y == u64::MAX {
            problem(format!("panel {title:?}: gridPos {grid} is not inside the 24 columns"));
            continue;
        }
        for cell in (x..x + w).flat_map(|cx| (y..y + h).map(move |cy| (cx, cy))) {
            if let Some(other) = cells.insert(cell, title.clone()) {
                problem(format!("panel {title:?} overlaps {other:?} at {cell:?}"));
                break;
            }
        }
        if panel["type"] == "row" {
            continue;
        }
        if panel["datasource"]["uid"] != "${datasource}" {
            problem(format!("panel {title:?}: datasource is not ${{datasource}}"));
        }
        let panel_targets = panel["targets"].as_array().cloned().unwrap_or_default();
        if panel_targets.is_empty() {
            problem(format!("panel {title:?}: no targets"));
        }
        for t in panel_targets {
            if t["datasource"]["uid"] != "${datasource}" {
                problem(format!("panel {title:?} target {}: datasource is not ${{datasource}}", t["refId"]));
            }
            let Some(expr) = t["expr"].as_str() else {
                problem(format!("panel {title:?} target {}: no expr", t["refId"]));
                continue;
            };
            let all: BTreeMap<String, String> = names.iter().map(|n| (n.clone(), "x".to_owned())).collect();
            if let Err(e) = substitute(expr, &all) {
                problem(format!("panel {title:?}: {e}"));
            }
        }
    }
    problems
}

#[test]
fn dashboards_are_well_formed_grafana_json() {
    let mut problems = Vec::new();
    let mut uids = BTreeSet::new();
    for file in [CANARY_DASHBOARD, FLEET_DASHBOARD] {
        let dashboard = load(file);
        problems.extend(dashboard_problems(file, &dashboard));
        assert!(uids.insert(dashboard["uid"].to_string()), "{file}: uid shared with another dashboard");
        assert!(!targets(&dashboard).is_empty(), "{file} has no PromQL");
        for q in variable_queries(&dashboard) {
            let all: BTreeMap<String, String> =
                defined_names(&dashboard).into_iter().map(|n| (n.clone(), "x".to_owned())).collect();
            if let Err(e) = substitute(&q.selector, &all) {
                problems.push(format!("{file}: variable {}: {e}", q.name));
            }
        }
    }
    assert!(problems.is_empty(), "dashboard problems:\n{}", problems.join("\n"));
}

#[test]
fn a_broken_dashboard_is_reported() {
    let broken = serde_json::json!({
        "schemaVersion": 16,
        "uid": "x",
        "title": "x",
        "templating": {"list": [{"name": "namespace", "type": "query", "query": "label_values(up, namespace)"}]},
        "panels": [
            {"id": 1, "type": "timeseries", "title": "a", "datasource": {"uid": "prom"},
             "gridPos": {"x": 0, "y": 0, "w": 12, "h": 4},
             "targets": [{"refId": "A", "datasource": {"uid": "${datasource}"}, "expr": "up{ns=\"$nope\"}"}]},
            {"id": 1, "type": "stat", "title": "b", "datasource": {"uid": "${datasource}"},
             "gridPos": {"x": 6, "y": 2, "w": 20, "h": 4}, "targets": []}
        ]
    });
    let problems = dashboard_problems("broken.json", &broken).join("\n");
    for expected in [
        "schemaVersion 16",
        "no `datasource` variable",
        "panel \"a\": datasource is not",
        "$nope has no value",
        "id 1 not unique",
        "not inside the 24 columns",
    ] {
        assert!(problems.contains(expected), "{expected:?} not reported in:\n{problems}");
    }
    let overlapping = serde_json::json!({"panels": [
        {"id": 1, "type": "row", "title": "r", "gridPos": {"x": 0, "y": 0, "w": 24, "h": 1}},
        {"id": 2, "type": "row", "title": "s", "gridPos": {"x": 0, "y": 0, "w": 24, "h": 1}}
    ]});
    assert!(dashboard_problems("o.json", &overlapping).join("\n").contains("overlaps"));
}

#[test]
fn the_canary_dashboard_has_the_panels_the_issue_asks_for() {
    let dashboard = load(CANARY_DASHBOARD);
    let titles: Vec<String> =
        panels(&dashboard).iter().filter_map(|p| p["title"].as_str().map(str::to_lowercase)).collect();
    for wanted in
        ["traffic weight", "success rate: canary vs primary", "p99 latency: canary vs primary", "failed checks"]
    {
        assert!(titles.iter().any(|t| t.contains(wanted)), "no panel {wanted:?} in {titles:?}");
    }
    // Each canary-vs-primary panel compares the two sides.
    for panel in ["Success rate: canary vs primary", "P99 latency: canary vs primary"] {
        let legends: BTreeSet<String> =
            targets(&dashboard).into_iter().filter(|t| t.panel == panel).map(|t| t.legend).collect();
        assert_eq!(legends, BTreeSet::from(["canary".to_owned(), "primary".to_owned()]), "{panel}");
    }
}

#[test]
fn the_fleet_dashboard_has_the_panels_the_issue_asks_for() {
    let dashboard = load(FLEET_DASHBOARD);
    let exprs: Vec<String> = targets(&dashboard).into_iter().map(|t| t.expr).collect();
    for metric in [
        "petrel_rollout_phase",
        "petrel_rollout_wave",
        "petrel_rollout_member",
        "petrel_fleet_member_release",
        "petrel_fleet_member_drift_seconds",
    ] {
        assert!(exprs.iter().any(|e| e.contains(metric)), "no panel queries {metric}");
    }
}

#[test]
fn variables_are_substituted_in_every_grafana_form() {
    let values: BTreeMap<String, String> =
        [("target", "podinfo"), ("__rate_interval", "10s")].map(|(k, v)| (k.to_owned(), v.to_owned())).into();
    assert_eq!(
        substitute(r#"rate(x{w="$target",p="${target}-primary",r="${target:regex}"}[$__rate_interval])"#, &values),
        Ok(r#"rate(x{w="podinfo",p="podinfo-primary",r="podinfo"}[10s])"#.to_owned())
    );
    assert!(substitute("x{a=\"$undefined\"}", &values).unwrap_err().contains("$undefined"));
    assert!(substitute("x{a=\"${target\"}", &values).is_err());
    assert_eq!(
        parse_label_values("ns", "label_values(petrel_canary_status{a=\"b,c\"}, namespace)"),
        Some(VariableQuery {
            name: "ns".into(),
            selector: "petrel_canary_status{a=\"b,c\"}".into(),
            label: "namespace".into()
        })
    );
}

/// One expression the run must see return data, and what it saw so far.
struct Check {
    what: String,
    promql: String,
    /// For a variable query: the label and the value the scenario's selection needs.
    expect_label: Option<(String, String)>,
    seen: bool,
    /// Prometheus refused the expression (it cannot get better by waiting).
    refused: Option<String>,
    last: String,
}

impl Check {
    fn describe(&self) -> String {
        match &self.refused {
            Some(e) => format!("{}: refused: {e}\n    {}", self.what, self.promql),
            None => format!("{}: no data ({})\n    {}", self.what, self.last, self.promql),
        }
    }
}

/// A check per panel target and per variable query of `file`, with `values` substituted.
fn dashboard_checks(file: &str, values: &BTreeMap<String, String>) -> Vec<Check> {
    let dashboard = load(file);
    let mut checks = Vec::new();
    for t in targets(&dashboard) {
        let promql = substitute(&t.expr, values).unwrap_or_else(|e| panic!("{file} panel {:?}: {e}", t.panel));
        checks.push(Check {
            what: format!("{file} panel {:?} {}", t.panel, t.ref_id),
            promql,
            expect_label: None,
            seen: false,
            refused: None,
            last: "not queried".into(),
        });
    }
    for q in variable_queries(&dashboard) {
        let selector = substitute(&q.selector, values).unwrap_or_else(|e| panic!("{file} variable {}: {e}", q.name));
        let promql = label_values_promql(&VariableQuery { selector, ..q.clone() });
        checks.push(Check {
            what: format!("{file} variable ${}", q.name),
            promql,
            expect_label: Some((q.label.clone(), values[&q.name].clone())),
            seen: false,
            refused: None,
            last: "not queried".into(),
        });
    }
    checks
}

/// Checks until every one is satisfied or `timeout` passes.
async fn check_for(prometheus: &Prometheus, checks: &mut [Check], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let _ = poll(deadline, Duration::from_millis(500), async || {
        if checks.iter().all(|c| c.seen || c.refused.is_some()) {
            return Ok::<_, Infallible>(Some(()));
        }
        check_round(prometheus, checks).await;
        Ok(None)
    })
    .await;
}

fn failures(checks: &[Check]) -> Vec<String> {
    checks.iter().filter(|c| !c.seen).map(Check::describe).collect()
}

/// Whether an answer is data a panel would draw: a number (NaN is what a ratio of two
/// zero rates gives, a gap in Grafana), and for a variable the value the scenario selects.
fn has_data(samples: &[Sample], expect_label: Option<&(String, String)>) -> bool {
    let mut numbers = samples.iter().filter(|s| !s.value.is_nan());
    match expect_label {
        None => numbers.next().is_some(),
        Some((label, value)) => numbers.any(|s| s.labels.get(label) == Some(value)),
    }
}

#[test]
fn only_numbers_and_the_selected_variable_value_count_as_data() {
    let sample = |value: f64, labels: &[(&str, &str)]| Sample {
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        value,
    };
    assert!(!has_data(&[], None));
    assert!(!has_data(&[sample(f64::NAN, &[])], None));
    assert!(has_data(&[sample(f64::NAN, &[]), sample(0.0, &[])], None));
    let namespace = ("namespace".to_owned(), "test".to_owned());
    assert!(!has_data(&[sample(1.0, &[("namespace", "other")])], Some(&namespace)));
    assert!(has_data(
        &[sample(1.0, &[("namespace", "other")]), sample(1.0, &[("namespace", "test")])],
        Some(&namespace)
    ));
}

/// Runs every check not yet satisfied once.
async fn check_round(prometheus: &Prometheus, checks: &mut [Check]) {
    for check in checks.iter_mut().filter(|c| !c.seen && c.refused.is_none()) {
        match prometheus.query_series(&check.promql).await {
            Ok(samples) => {
                check.seen = has_data(&samples, check.expect_label.as_ref());
                let numbers = samples.iter().filter(|s| !s.value.is_nan()).count();
                check.last = format!("{} series, {numbers} not NaN", samples.len());
            }
            Err(PrometheusError::Query { message, .. }) => check.refused = Some(message),
            Err(other) => check.last = other.to_string(),
        }
    }
}

/// Runs check rounds until the Canary reaches `phase`.
async fn check_until_phase(env: &TestEnv, checks: &mut [Check], phase: Phase, timeout: Duration) -> Result<()> {
    let reached = poll(Instant::now() + timeout, Duration::from_millis(500), async || {
        check_round(&env.prometheus, checks).await;
        if env.canary_status().await.is_ok_and(|s| s.phase == phase) {
            return Ok(Some(()));
        }
        ensure!(env.operator.is_running(), "the operator exited while waiting for phase {phase}");
        Ok(None)
    })
    .await?;
    ensure!(reached.is_some(), "timed out after {timeout:?} waiting for phase {phase}");
    eprintln!("[dashboards] {phase} at t={:.1?}", env.elapsed());
    Ok(())
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_expression_returns_data_during_a_release() {
    let t0 = Instant::now();
    let mut env = TestEnv::start("dashboards", Provider::Istio).await.unwrap();
    let operator = env.scrape_operator(Duration::from_secs(30)).await.unwrap();
    eprintln!("[dashboards] Prometheus scrapes petrel at {operator}");
    // v1 fails a fifth of its requests (rolled back); v2 is healthy but slower than v0 (20 ms).
    env.simulator.set_version("podinfo:6.0.1", VersionBehaviour::new(0.2, 60.0)).unwrap();
    env.simulator.set_version("podinfo:6.0.2", VersionBehaviour::new(0.0, 45.0)).unwrap();
    env.apply_canary(&CanaryOptions::canary(Provider::Istio)).await.unwrap();
    env.wait_phase(Phase::Initialized, SETUP).await.unwrap();

    let mut checks = dashboard_checks(CANARY_DASHBOARD, &canary_values());
    let run_started = unix_now();
    env.set_image(IMAGE_V1).await.unwrap();
    check_until_phase(&env, &mut checks, Phase::Failed, RELEASE).await.unwrap();
    let rolled_back = unix_now();
    // The healthy release starts at once: its first check must wait until the metric
    // window (10s) no longer holds the rolled-back version's errors, so none fails.
    env.set_image(IMAGE_V2).await.unwrap();
    check_until_phase(&env, &mut checks, Phase::Succeeded, RELEASE).await.unwrap();
    let promoted = unix_now();
    let succeeded = env.canary_status().await.unwrap();
    let events = env.canary_event_counts().await.unwrap_or_default();
    assert_eq!(succeeded.failed_checks, 0, "6.0.2 judged on 6.0.1's requests: {events:?}");
    let held: i32 = events.iter().filter(|(reason, _, _)| reason == "MetricWindowHeld").map(|(_, _, n)| n).sum();
    eprintln!("[dashboards] 6.0.2 held {held} tick(s) while the metric window held 6.0.1's requests");
    // The promotion counter and the last weights reach Prometheus a scrape later.
    check_for(&env.prometheus, &mut checks, Duration::from_secs(20)).await;
    let picture = std::env::var_os("PETREL_DASHBOARD_PNG");
    if picture.is_some() {
        // The picture shows the settled state after the promotion too.
        let settled = promoted + 8.0 - unix_now();
        tokio::time::sleep(Duration::from_secs_f64(settled.max(0.0))).await;
    }
    let run_ended = unix_now();

    let fleet = load(FLEET_DASHBOARD);
    let fleet_values = placeholder_values(&fleet);
    let mut fleet_refused = Vec::new();
    let mut fleet_exprs: Vec<(String, String)> = targets(&fleet)
        .into_iter()
        .map(|t| (format!("{FLEET_DASHBOARD} panel {:?} {}", t.panel, t.ref_id), t.expr))
        .collect();
    fleet_exprs.extend(
        variable_queries(&fleet)
            .into_iter()
            .map(|q| (format!("{FLEET_DASHBOARD} variable ${}", q.name), label_values_promql(&q))),
    );
    for (what, expr) in &fleet_exprs {
        let promql = substitute(expr, &fleet_values).unwrap();
        if let Err(e) = env.prometheus.query_series(&promql).await {
            fleet_refused.push(format!("{what}: {e}"));
        }
    }

    if let Some(png) = picture {
        let path = workspace_root().join(PathBuf::from(png));
        let run = Run {
            started: run_started,
            ended: run_ended,
            events: vec![(rolled_back, "6.0.1 rolled back"), (promoted, "6.0.2 promoted")],
        };
        draw_canary_panels(&env.prometheus, &run, &path).await.unwrap();
        eprintln!("[dashboards] wrote {}", path.display());
    }

    let failing = failures(&checks);
    eprintln!(
        "[dashboards] {} canary expressions returned data, {} fleet expressions parse; {:.1?}",
        checks.len() - failing.len(),
        fleet_exprs.len() - fleet_refused.len(),
        t0.elapsed()
    );
    assert!(failing.is_empty(), "dashboard expressions without data during the run:\n{}", failing.join("\n"));
    assert!(fleet_refused.is_empty(), "fleet dashboard expressions Prometheus refused:\n{}", fleet_refused.join("\n"));
}

/// The fleet dashboard against the hub's own metrics during a fleet release: a hub and
/// three members (`FleetEnv`), a Prometheus of this test's scraping the hub's `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fleet_dashboard_expression_returns_data_during_a_fleet_release() {
    let t0 = Instant::now();
    let env = FleetEnv::start("dashboards").await.unwrap();
    let hub = eventually("the hub to log its metrics address", Duration::from_secs(30), async || {
        metrics_addr_in_log(&env.hub_operator.log_text())
    })
    .await
    .unwrap();
    let prometheus = Prometheus::start(&env.dir.join("hub-metrics"), &[hub]).await.unwrap();
    eprintln!("[dashboards-fleet] Prometheus scrapes the hub at {hub}");
    let mut checks = dashboard_checks(FLEET_DASHBOARD, &fleet_values());

    futures::future::try_join_all(env.members.iter().map(|m| m.set_image(IMAGE_V1))).await.unwrap();
    let succeeded = poll(Instant::now() + RELEASE * 2, Duration::from_millis(500), async || {
        check_round(&prometheus, &mut checks).await;
        let status = env.rollout().await.ok().and_then(|r| r.status);
        let done = status.is_some_and(|s| {
            s.phase == Some(RolloutPhase::Succeeded) && s.release.is_some_and(|r| r.contains("6.0.1"))
        });
        Ok::<_, Infallible>(done.then_some(()))
    })
    .await;
    assert!(succeeded == Ok(Some(())), "the fleet release did not succeed in {:?}", RELEASE * 2);
    eprintln!("[dashboards-fleet] release 6.0.1 succeeded across the fleet at t={:.1?}", t0.elapsed());
    check_for(&prometheus, &mut checks, Duration::from_secs(20)).await;
    let failing = failures(&checks);
    eprintln!(
        "[dashboards-fleet] {} of {} fleet expressions returned data; {:.1?}",
        checks.len() - failing.len(),
        checks.len(),
        t0.elapsed()
    );
    assert!(failing.is_empty(), "fleet dashboard expressions without data during the release:\n{}", failing.join("\n"));

    // "Release per cluster over time" draws, once the release is done, every member on 6.0.1.
    let dashboard = load(FLEET_DASHBOARD);
    let release_panel = targets(&dashboard)
        .into_iter()
        .find(|t| t.panel == "Release per cluster over time")
        .expect("the fleet dashboard has a release-per-cluster panel");
    let promql = substitute(&release_panel.expr, &fleet_values()).unwrap();
    let wanted: BTreeSet<String> = env.members.iter().map(|m| m.name.clone()).collect();
    let mut drawn = BTreeMap::new();
    let _ = poll(Instant::now() + Duration::from_secs(20), Duration::from_millis(500), async || {
        drawn = prometheus
            .query_series(&promql)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|s| Some((s.labels.get("cluster")?.clone(), s.labels.get("release")?.clone())))
            .collect::<BTreeMap<String, String>>();
        let all_drawn = drawn.len() == wanted.len() && drawn.values().all(|r| r.ends_with("podinfo:6.0.1"));
        Ok::<_, Infallible>(all_drawn.then_some(()))
    })
    .await;
    assert_eq!(drawn.keys().cloned().collect::<BTreeSet<_>>(), wanted, "{promql}: {drawn:?}");
    assert!(drawn.values().all(|r| r.ends_with("podinfo:6.0.1")), "{promql}: {drawn:?}");
}

/// The panels of the picture: the dashboard's own titles, expressions and legends.
const PICTURE_PANELS: [&str; 3] =
    ["Traffic weight", "Success rate: canary vs primary", "P99 latency: canary vs primary"];

/// The time span of the picture (unix seconds) and the moments to mark on it.
struct Run {
    started: f64,
    ended: f64,
    events: Vec<(f64, &'static str)>,
}

/// Seconds shown before the first release starts.
const LEAD_IN: f64 = 1.0;

struct PanelData {
    title: String,
    unit: String,
    series: Vec<(String, Vec<(f64, f64)>)>,
}

fn legend(format: &str, labels: &BTreeMap<String, String>) -> String {
    let mut out = format.to_owned();
    for (k, v) in labels {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    out
}

async fn panel_data(prometheus: &Prometheus, start: f64, end: f64) -> Result<Vec<PanelData>> {
    let dashboard = load(CANARY_DASHBOARD);
    let values = canary_values();
    let all_targets = targets(&dashboard);
    let mut out = Vec::new();
    for title in PICTURE_PANELS {
        let panel = panels(&dashboard)
            .into_iter()
            .find(|p| p["title"] == title)
            .with_context(|| format!("no panel {title:?} in {CANARY_DASHBOARD}"))?;
        let unit = panel["fieldConfig"]["defaults"]["unit"].as_str().unwrap_or_default().to_owned();
        let steps = panel["fieldConfig"]["defaults"]["custom"]["lineInterpolation"] == "stepAfter";
        let mut series = Vec::new();
        for t in all_targets.iter().filter(|t| t.panel == title) {
            let promql = substitute(&t.expr, &values).map_err(|e| anyhow!(e))?;
            let answer: Vec<RangeSeries> = prometheus.query_range(&promql, start, end, Duration::from_secs(1)).await?;
            for s in answer {
                let points = if steps { step_after(&s.points) } else { s.points };
                series.push((legend(&t.legend, &s.labels), points));
            }
        }
        ensure!(series.iter().any(|(_, p)| !p.is_empty()), "panel {title:?} has no data to draw");
        out.push(PanelData { title: title.to_owned(), unit, series });
    }
    Ok(out)
}

const FONT_ENV: &str = "PETREL_DASHBOARD_FONT";
const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Draws the panels as Grafana's dark theme would, into a PNG at `path`.
async fn draw_canary_panels(prometheus: &Prometheus, run: &Run, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};

    let data = panel_data(prometheus, run.started - LEAD_IN, run.ended).await?;
    let font_path = std::env::var(FONT_ENV).unwrap_or_else(|_| DEFAULT_FONT.to_owned());
    let font = std::fs::read(&font_path).with_context(|| format!("reading the font {font_path} (set ${FONT_ENV})"))?;
    // plotters keeps registered fonts for the process: leaking one font file is the price.
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(font.into_boxed_slice()))
        .map_err(|_| anyhow!("{font_path} is not a usable TrueType font"))?;

    const WIDTH: u32 = 1400;
    const PANEL_HEIGHT: u32 = 300;
    const HEADER: u32 = 70;
    let height = HEADER + PANEL_HEIGHT * data.len() as u32;
    let background = RGBColor(17, 18, 23);
    let panel_bg = RGBColor(24, 27, 31);
    let text = RGBColor(204, 204, 220);
    let grid = RGBColor(44, 50, 53);
    let colour = |name: &str| match name {
        "canary" => RGBColor(255, 152, 48),
        "primary" => RGBColor(87, 148, 242),
        _ => RGBColor(115, 191, 105),
    };
    let mut pixels = vec![0u8; (WIDTH * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (WIDTH, height)).into_drawing_area();
        root.fill(&background).map_err(|e| anyhow!("{e}"))?;
        let (header, body) = root.split_vertically(HEADER);
        let title = format!(
            "Petrel / Canary, {NAMESPACE}/{APP} in a real e2e run: 6.0.1 (20% errors, 60 ms) rolled back, then 6.0.2 (45 ms) promoted"
        );
        header.draw_text(&title, &("sans-serif", 22).into_font().color(&text), (16, 12)).map_err(|e| anyhow!("{e}"))?;
        let subtitle = format!(
            "The dashboard's own expressions over Prometheus /api/v1/query_range (step 1 s, $__rate_interval = {RATE_INTERVAL}); primary 6.0.0 at 20 ms"
        );
        header
            .draw_text(&subtitle, &("sans-serif", 16).into_font().color(&RGBColor(142, 142, 160)), (16, 42))
            .map_err(|e| anyhow!("{e}"))?;
        let x_max = (run.ended - run.started).max(1.0);
        for (area, panel) in body.split_evenly((data.len(), 1)).iter().zip(&data) {
            let area = area.margin(4, 4, 8, 8);
            area.fill(&panel_bg).map_err(|e| anyhow!("{e}"))?;
            let values: Vec<f64> =
                panel.series.iter().flat_map(|(_, p)| p.iter().map(|(_, v)| *v)).filter(|v| v.is_finite()).collect();
            let (y_min, y_max) = y_range(&panel.unit, &values);
            let mut chart = ChartBuilder::on(&area)
                .caption(
                    format!("{} ({})", panel.title, unit_name(&panel.unit)),
                    ("sans-serif", 20).into_font().color(&text),
                )
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(64)
                .build_cartesian_2d(-LEAD_IN..x_max, y_min..y_max)
                .map_err(|e| anyhow!("{e}"))?;
            chart
                .configure_mesh()
                .bold_line_style(grid)
                .light_line_style(background)
                .axis_style(grid)
                .label_style(("sans-serif", 15).into_font().color(&text))
                .axis_desc_style(("sans-serif", 15).into_font().color(&text))
                .x_desc("seconds since release 6.0.1 started")
                .x_labels(12)
                .y_labels(6)
                .draw()
                .map_err(|e| anyhow!("{e}"))?;
            for (time, label) in &run.events {
                let x = time - run.started;
                let marker = RGBColor(142, 142, 160);
                // A label near the right edge goes left of its line, so it stays inside.
                let (anchor, offset) = if x > x_max * 0.75 { (HPos::Right, -0.3) } else { (HPos::Left, 0.3) };
                let style = ("sans-serif", 14).into_font().color(&marker).pos(Pos::new(anchor, VPos::Top));
                chart
                    .draw_series(DashedLineSeries::new(vec![(x, y_min), (x, y_max)], 6, 4, marker.stroke_width(1)))
                    .map_err(|e| anyhow!("{e}"))?;
                chart
                    .draw_series([Text::new(label.to_string(), (x + offset, y_min + (y_max - y_min) * 0.1), style)])
                    .map_err(|e| anyhow!("{e}"))?;
            }
            for (name, points) in &panel.series {
                let style = colour(name).stroke_width(3);
                for segment in segments(points, run.started) {
                    chart.draw_series(LineSeries::new(segment, style)).map_err(|e| anyhow!("{e}"))?;
                }
            }
            // The legend sits beside the caption, outside the plot, so it hides no line.
            let (panel_width, _) = area.dim_in_pixel();
            let names: BTreeSet<&str> = panel.series.iter().map(|(name, _)| name.as_str()).collect();
            for (i, name) in names.into_iter().rev().enumerate() {
                let right = panel_width as i32 - 20 - 130 * i as i32;
                let c = colour(name);
                area.draw(&PathElement::new(vec![(right - 120, 22), (right - 92, 22)], c.stroke_width(4)))
                    .map_err(|e| anyhow!("{e}"))?;
                area.draw_text(name, &("sans-serif", 17).into_font().color(&text), (right - 84, 12))
                    .map_err(|e| anyhow!("{e}"))?;
            }
        }
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), WIDTH, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.write_header()?.write_image_data(&pixels)?;
    Ok(())
}

fn unit_name(unit: &str) -> &str {
    match unit {
        "percent" => "%",
        "" => "value",
        other => other,
    }
}

/// The y axis: percentages from a little under the lowest value to 100, others from 0.
fn y_range(unit: &str, values: &[f64]) -> (f64, f64) {
    let max = values.iter().copied().fold(0.0, f64::max);
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    if unit == "percent" {
        let low = if min.is_finite() { ((min - 5.0) / 10.0).floor() * 10.0 } else { 0.0 };
        (low.clamp(0.0, 90.0), 102.0)
    } else {
        (0.0, if max > 0.0 { max * 1.25 } else { 1.0 })
    }
}

/// The corners of a line drawn as Grafana's `stepAfter`: each value holds until the next.
fn step_after(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(points.len() * 2);
    for pair in points.windows(2) {
        out.push(pair[0]);
        if pair[1].0 - pair[0].0 <= 1.5 {
            out.push((pair[1].0, pair[0].1));
        }
    }
    out.extend(points.last());
    out
}

/// Runs of points without a gap (Grafana does not join across missing steps), with time
/// relative to `start`; NaN (0/0 when a side has no traffic) is a gap too.
fn segments(points: &[(f64, f64)], start: f64) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut previous: Option<f64> = None;
    for &(time, value) in points {
        if !value.is_finite() {
            previous = None;
            continue;
        }
        let continues = previous.is_some_and(|p| time - p <= 1.5);
        if !continues {
            out.push(Vec::new());
        }
        if let Some(segment) = out.last_mut() {
            segment.push((time - start, value));
        }
        previous = Some(time);
    }
    out
}

#[test]
fn segments_break_at_gaps_and_nan() {
    assert_eq!(
        step_after(&[(1.0, 0.0), (2.0, 20.0), (5.0, 40.0)]),
        vec![(1.0, 0.0), (2.0, 0.0), (2.0, 20.0), (5.0, 40.0)]
    );
    let points = [(10.0, 1.0), (11.0, 2.0), (12.0, f64::NAN), (13.0, 3.0), (17.0, 4.0), (18.0, 5.0)];
    assert_eq!(
        segments(&points, 10.0),
        vec![vec![(0.0, 1.0), (1.0, 2.0)], vec![(3.0, 3.0)], vec![(7.0, 4.0), (8.0, 5.0)]]
    );
}

#[test]
fn legends_take_label_values() {
    let labels = BTreeMap::from([("workload".to_owned(), "canary".to_owned())]);
    assert_eq!(legend("{{workload}}", &labels), "canary");
    assert_eq!(legend("primary", &labels), "primary");
}
