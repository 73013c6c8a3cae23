//! A real Prometheus server (Debian's `prometheus` package) for e2e tests,
//! scraping the traffic simulator every second.
//!
//! The process is started by the test itself (no Debian service), on a free
//! loopback port, with its TSDB under the test's work dir. It is killed when
//! the [`Prometheus`] is dropped, and `PR_SET_PDEATHSIG` kills it if the
//! test process dies without unwinding. [`Prometheus::stop`] and
//! [`Prometheus::start_again`] let a scenario take it away mid-release and
//! bring it back on the same URL with the same data.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use metrics_providers::QueryError;
use metrics_providers::prometheus::{Answer, parse_answer};

use crate::wait::poll;

/// Environment variable naming the `prometheus` binary to use instead of
/// the one on `PATH`.
pub const PROMETHEUS_BIN_ENV: &str = "PETREL_PROMETHEUS_BIN";

/// How long Prometheus may take to report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a graceful stop may take before the process is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Why Prometheus could not be run or queried.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    /// No binary, and it could not be installed.
    #[error(
        "the prometheus binary was not found on PATH (or in ${PROMETHEUS_BIN_ENV}); install Debian's package as root: `apt-get update && apt-get install -y prometheus` (the package does not start a service here; the tests start their own server){reason}"
    )]
    NotInstalled {
        /// Why it was not installed automatically, with a leading `: `.
        reason: String,
    },
    /// A file or process operation failed.
    #[error("{action}: {source}")]
    Io {
        /// What was being done.
        action: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The process exited before it became ready.
    #[error("prometheus exited with {status} before it was ready; log {log}:\n{tail}")]
    Exited {
        /// Exit status.
        status: ExitStatus,
        /// Log file.
        log: PathBuf,
        /// Last lines of the log.
        tail: String,
    },
    /// The process did not become ready in time.
    #[error("prometheus at {url} was not ready after {timeout:?}; log {log}:\n{tail}")]
    NotReady {
        /// Its URL.
        url: String,
        /// How long we waited.
        timeout: Duration,
        /// Log file.
        log: PathBuf,
        /// Last lines of the log.
        tail: String,
    },
    /// An HTTP request to Prometheus failed.
    #[error("{action}: {source}")]
    Http {
        /// What was being done.
        action: String,
        /// The error.
        #[source]
        source: reqwest::Error,
    },
    /// Prometheus answered a query with an error or an unusable result.
    #[error("query {query:?}: {message}")]
    Query {
        /// The PromQL.
        query: String,
        /// What went wrong.
        message: String,
    },
    /// Not running (after [`Prometheus::stop`] or [`Prometheus::kill`]).
    #[error("prometheus is not running")]
    NotRunning,
    /// A wait for a query's value ran out of time.
    #[error("timed out after {timeout:?} waiting for {query:?} to {what}; last value {last:?}")]
    Timeout {
        /// The PromQL.
        query: String,
        /// What the value had to do.
        what: String,
        /// How long we waited.
        timeout: Duration,
        /// The last value seen.
        last: Option<f64>,
    },
}

fn io_err(action: impl Into<String>) -> impl FnOnce(io::Error) -> PrometheusError {
    let action = action.into();
    move |source| PrometheusError::Io { action, source }
}

/// A Prometheus server process.
pub struct Prometheus {
    binary: PathBuf,
    dir: PathBuf,
    port: u16,
    targets: Vec<SocketAddr>,
    child: Option<Child>,
    http: reqwest::Client,
}

impl Prometheus {
    /// Starts Prometheus scraping `scrape_targets` every second, with its
    /// config, TSDB and log under `work_dir/prometheus`, and waits until it
    /// is ready. Installs Debian's package first if it is missing and we
    /// are root. Give each instance its own `work_dir` (e.g. one per
    /// cluster of a fleet).
    pub async fn start(work_dir: &Path, scrape_targets: &[SocketAddr]) -> Result<Prometheus, PrometheusError> {
        let binary = ensure_installed().await?;
        let dir = work_dir.join("prometheus");
        std::fs::create_dir_all(dir.join("data")).map_err(io_err(format!("creating {}", dir.display())))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|source| PrometheusError::Http { action: "building an HTTP client".into(), source })?;
        // A free port can be taken between our probe and Prometheus' bind;
        // try a few.
        let mut last_error = None;
        for _ in 0..3 {
            let mut prometheus = Prometheus {
                binary: binary.clone(),
                dir: dir.clone(),
                port: free_port()?,
                targets: scrape_targets.to_vec(),
                child: None,
                http: http.clone(),
            };
            prometheus.write_config()?;
            match prometheus.launch().await {
                Ok(()) => return Ok(prometheus),
                Err(e @ PrometheusError::Exited { .. }) => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or(PrometheusError::NotRunning))
    }

    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port it listens on (kept across [`Prometheus::start_again`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Directory holding its config, TSDB and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is alive.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// Stops it gracefully (SIGTERM, killed after 10 s).
    pub async fn stop(&mut self) -> Result<(), PrometheusError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // SAFETY: kill(2) on our own child's pid, which cannot have been
        // reused: the child is not reaped until we wait on it below.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        // Exited in time, or not (or its state unreadable): then killed.
        let exited = poll(Instant::now() + STOP_GRACE, Duration::from_millis(50), async || child.try_wait()).await;
        if !matches!(exited, Ok(Some(_))) {
            kill_and_reap(&mut child);
        }
        Ok(())
    }

    /// Kills it at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }

    /// Starts it again after [`Prometheus::stop`] or [`Prometheus::kill`],
    /// on the same port with the same data; a no-op while running.
    pub async fn start_again(&mut self) -> Result<(), PrometheusError> {
        if self.is_running() {
            return Ok(());
        }
        self.launch().await
    }

    /// Replaces the scrape targets and reloads the configuration.
    pub async fn set_scrape_targets(&mut self, targets: &[SocketAddr]) -> Result<(), PrometheusError> {
        self.targets = targets.to_vec();
        self.write_config()?;
        if !self.is_running() {
            return Ok(());
        }
        let url = format!("{}/-/reload", self.url());
        let response = self
            .http
            .post(&url)
            .send()
            .await
            .map_err(|source| PrometheusError::Http { action: format!("POST {url}"), source })?;
        if !response.status().is_success() {
            return Err(PrometheusError::Query {
                query: "/-/reload".into(),
                message: format!("reload answered {}", response.status()),
            });
        }
        Ok(())
    }

    /// Evaluates `promql` now. The result must be a single number:
    /// `Ok(None)` when there is no data (an empty vector, or NaN as a
    /// ratio of two zero rates gives); more than one series is an error.
    pub async fn query(&self, promql: &str) -> Result<Option<f64>, PrometheusError> {
        let (status, body) = self.api_get("query", &[("query", promql.to_owned())]).await?;
        parse_query_result(status, &body, promql)
            .map_err(|message| PrometheusError::Query { query: promql.to_owned(), message })
    }

    /// Polls `promql` until its value satisfies `accept`, and returns it.
    pub async fn wait_for_query(
        &self,
        promql: &str,
        what: &str,
        timeout: Duration,
        accept: impl Fn(f64) -> bool,
    ) -> Result<f64, PrometheusError> {
        let mut last = None;
        let accepted = poll(Instant::now() + timeout, Duration::from_millis(250), async || {
            match self.query(promql).await {
                Ok(Some(v)) if accept(v) => return Ok(Some(v)),
                Ok(v) => last = v,
                Err(PrometheusError::Http { .. }) => {}
                Err(e) => return Err(e),
            }
            Ok(None)
        })
        .await?;
        accepted.ok_or_else(|| PrometheusError::Timeout {
            query: promql.to_owned(),
            what: what.to_owned(),
            timeout,
            last,
        })
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("prometheus.log")
    }

    fn write_config(&self) -> Result<(), PrometheusError> {
        let path = self.dir.join("prometheus.yml");
        std::fs::write(&path, config_yaml(&self.targets)).map_err(io_err(format!("writing {}", path.display())))
    }

    async fn launch(&mut self) -> Result<(), PrometheusError> {
        let log_path = self.log_path();
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_err(format!("opening {}", log_path.display())))?;
        let log_err = log.try_clone().map_err(io_err("duplicating the log file handle"))?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg(format!("--config.file={}", self.dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", self.dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            .arg("--web.enable-lifecycle")
            .arg("--storage.tsdb.retention.time=1d")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Its own process group: a terminal's Ctrl-C reaches the test,
            // which then tears it down.
            .process_group(0);
        let child =
            crate::fleet::spawn_tied_to_process(cmd).map_err(io_err(format!("starting {}", self.binary.display())))?;
        self.child = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<(), PrometheusError> {
        let url = format!("{}/-/ready", self.url());
        let ready = poll(Instant::now() + READY_TIMEOUT, Duration::from_millis(100), async || {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(PrometheusError::Exited { status, log: self.log_path(), tail: log_tail(&self.log_path()) });
            }
            let answer = self.http.get(&url).send().await;
            Ok(answer.is_ok_and(|response| response.status().is_success()).then_some(()))
        })
        .await?;
        if ready.is_none() {
            self.kill();
            return Err(PrometheusError::NotReady {
                url: self.url(),
                timeout: READY_TIMEOUT,
                log: self.log_path(),
                tail: log_tail(&self.log_path()),
            });
        }
        Ok(())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.kill();
    }
}

fn kill_and_reap(child: &mut Child) {
    // Errors mean it already exited; wait reaps it either way.
    let _ = child.kill();
    let _ = child.wait();
}

/// The configuration: every target scraped each second.
pub fn config_yaml(targets: &[SocketAddr]) -> String {
    let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: traffic-sim\n    static_configs:\n      - targets: [{}]\n",
        targets.join(", ")
    )
}

/// The single number of an instant query's answer (decoded by petrel's own
/// Prometheus client, `metrics-providers`).
fn parse_query_result(status: u16, body: &str, query: &str) -> Result<Option<f64>, String> {
    match parse_samples(status, body, query)?.as_slice() {
        [] => Ok(None),
        [one] => Ok((!one.value.is_nan()).then_some(one.value)),
        many => Err(format!(
            "{} series, expected one (aggregate with sum(...)): {}",
            many.len(),
            many.iter().map(|s| serde_json::to_string(&s.labels).unwrap_or_default()).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// The last lines of a log file, for error messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn free_port() -> Result<u16, PrometheusError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io_err("finding a free port"))?;
    listener.local_addr().map(|a| a.port()).map_err(io_err("finding a free port"))
}

/// Where `prometheus` is: `$PETREL_PROMETHEUS_BIN`, else on `PATH`.
pub fn find_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(PROMETHEUS_BIN_ENV) {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("prometheus"))
        .find(|candidate| candidate.is_file())
}

/// Finds the binary, installing Debian's package when it is missing and we
/// are root; tests of one process install it once.
pub async fn ensure_installed() -> Result<PathBuf, PrometheusError> {
    static INSTALL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one_at_a_time = INSTALL.lock().await;
    if let Some(binary) = find_binary() {
        return Ok(binary);
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(PrometheusError::NotInstalled {
            reason: ": not running as root, so not installing it automatically".into(),
        });
    }
    if !apt_lists_present() {
        apt_get(&["update"]).await?;
    }
    apt_get(&["install", "-y", "--no-install-recommends", "prometheus"]).await?;
    find_binary().ok_or_else(|| PrometheusError::NotInstalled {
        reason: ": apt-get installed the package but no prometheus binary is on PATH".into(),
    })
}

fn apt_lists_present() -> bool {
    std::fs::read_dir("/var/lib/apt/lists").is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|e| e.file_name().to_string_lossy().contains("_Packages"))
    })
}

async fn apt_get(args: &[&str]) -> Result<(), PrometheusError> {
    tracing::info!(?args, "installing prometheus with apt-get");
    let output = tokio::process::Command::new("apt-get")
        // Wait for another apt run (another test process) instead of failing.
        .args(["-o", "DPkg::Lock::Timeout=300"])
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(io_err("running apt-get"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(PrometheusError::NotInstalled {
        reason: format!(
            ": `apt-get {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn config_scrapes_every_second() {
        let yaml = config_yaml(&["127.0.0.1:9100".parse().unwrap(), "127.0.0.1:9101".parse().unwrap()]);
        let parsed: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(parsed["global"]["scrape_interval"], "1s");
        let targets = &parsed["scrape_configs"][0]["static_configs"][0]["targets"];
        assert_eq!(targets[0], "127.0.0.1:9100");
        assert_eq!(targets[1], "127.0.0.1:9101");
    }

    /// The single number of an answer with this body.
    fn instant(body: &serde_json::Value) -> Result<Option<f64>, String> {
        parse_query_result(200, &body.to_string(), "q")
    }

    #[test]
    fn query_results() {
        let vector = |result: serde_json::Value| json!({"status": "success", "data": {"resultType": "vector", "result": result}});
        assert_eq!(instant(&vector(json!([{"metric": {}, "value": [1.0, "80.5"]}]))), Ok(Some(80.5)));
        assert_eq!(instant(&vector(json!([]))), Ok(None));
        assert_eq!(instant(&vector(json!([{"metric": {}, "value": [1.0, "NaN"]}]))), Ok(None));
        let two = instant(&vector(json!([
            {"metric": {"a": "1"}, "value": [1.0, "1"]},
            {"metric": {"a": "2"}, "value": [1.0, "2"]}
        ])))
        .unwrap_err();
        assert!(two.contains("2 series"), "{two}");
        assert_eq!(
            instant(&json!({"status": "success", "data": {"resultType": "scalar", "result": [1.0, "3"]}})),
            Ok(Some(3.0))
        );
        let err = instant(&json!({"status": "error", "errorType": "bad_data", "error": "parse error"})).unwrap_err();
        assert_eq!(err, "bad_data: parse error");
    }
}

/// One series of an instant query's answer: its labels and value (NaN kept).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Labels of the series (`__name__` included when the query keeps it).
    pub labels: std::collections::BTreeMap<String, String>,
    /// The value at the query's time.
    pub value: f64,
}

/// One series of a range query's answer: its labels and `(unix seconds, value)` points.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeSeries {
    /// Labels of the series.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Points in time order.
    pub points: Vec<(f64, f64)>,
}

impl Prometheus {
    /// Evaluates `promql` now and returns every series of the answer (a scalar is one
    /// series without labels). A parse error is an `Err`, so callers can tell a broken
    /// expression from one without data.
    pub async fn query_series(&self, promql: &str) -> Result<Vec<Sample>, PrometheusError> {
        let (status, body) = self.api_get("query", &[("query", promql.to_owned())]).await?;
        parse_samples(status, &body, promql)
            .map_err(|message| PrometheusError::Query { query: promql.to_owned(), message })
    }

    /// Evaluates `promql` at every `step` from `start` to `end` (unix seconds), as a
    /// Grafana panel does (`/api/v1/query_range`).
    pub async fn query_range(
        &self,
        promql: &str,
        start: f64,
        end: f64,
        step: Duration,
    ) -> Result<Vec<RangeSeries>, PrometheusError> {
        let params = [
            ("query", promql.to_owned()),
            ("start", format!("{start:.3}")),
            ("end", format!("{end:.3}")),
            ("step", format!("{}", step.as_secs_f64())),
        ];
        let (status, body) = self.api_get("query_range", &params).await?;
        parse_matrix(status, &body, promql)
            .map_err(|message| PrometheusError::Query { query: promql.to_owned(), message })
    }

    /// The HTTP status and body of a GET of `/api/v1/{endpoint}`.
    async fn api_get(&self, endpoint: &str, params: &[(&str, String)]) -> Result<(u16, String), PrometheusError> {
        let url = format!("{}/api/v1/{endpoint}", self.url());
        let response = self
            .http
            .get(&url)
            .query(params)
            .send()
            .await
            .map_err(|source| PrometheusError::Http { action: format!("querying {url}"), source })?;
        let status = response.status().as_u16();
        let body = response
            .text()
            .await
            .map_err(|source| PrometheusError::Http { action: format!("reading the answer of {url}"), source })?;
        Ok((status, body))
    }
}

/// What Prometheus said went wrong: its own `errorType: error` when it answered one.
fn message(error: QueryError) -> String {
    match error {
        QueryError::QueryFailed { error_type, message, .. } => format!("{error_type}: {message}"),
        other => other.to_string(),
    }
}

/// Every series of an instant query's answer (a scalar is one series without labels).
fn parse_samples(status: u16, body: &str, query: &str) -> Result<Vec<Sample>, String> {
    match parse_answer(status, body, query).map_err(message)? {
        Answer::Vector(series) => Ok(series
            .into_iter()
            .map(|s| Sample { value: s.points.first().map_or(f64::NAN, |(_, value)| *value), labels: s.labels })
            .collect()),
        Answer::Scalar((_, value)) => Ok(vec![Sample { labels: Default::default(), value }]),
        Answer::Matrix(_) => Err("result type \"matrix\", expected a vector or scalar".into()),
    }
}

/// Every series of a range query's answer.
fn parse_matrix(status: u16, body: &str, query: &str) -> Result<Vec<RangeSeries>, String> {
    match parse_answer(status, body, query).map_err(message)? {
        Answer::Matrix(series) => {
            Ok(series.into_iter().map(|s| RangeSeries { labels: s.labels, points: s.points }).collect())
        }
        Answer::Vector(_) => Err("result type \"vector\", expected a matrix".into()),
        Answer::Scalar(_) => Err("result type \"scalar\", expected a matrix".into()),
    }
}

#[cfg(test)]
mod series_tests {
    use super::*;
    use serde_json::{Value, json};

    /// A successful answer holding `data`.
    fn answer(data: &Value) -> String {
        json!({"status": "success", "data": data}).to_string()
    }

    fn samples_of(data: &Value) -> Result<Vec<Sample>, String> {
        parse_samples(200, &answer(data), "q")
    }

    fn matrix_of(data: &Value) -> Result<Vec<RangeSeries>, String> {
        parse_matrix(200, &answer(data), "q")
    }

    #[test]
    fn samples_keep_every_series_and_nan() {
        let data = json!({"resultType": "vector", "result": [
            {"metric": {"phase": "Progressing"}, "value": [1.0, "1"]},
            {"metric": {"phase": "Failed"}, "value": [1.0, "NaN"]}
        ]});
        let samples = samples_of(&data).unwrap();
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].labels["phase"], "Progressing");
        assert_eq!(samples[0].value, 1.0);
        assert!(samples[1].value.is_nan());
        assert_eq!(samples_of(&json!({"resultType": "vector", "result": []})).unwrap(), vec![]);
    }

    #[test]
    fn matrices_keep_points_in_order() {
        let data = json!({"resultType": "matrix", "result": [
            {"metric": {"workload": "canary"}, "values": [[10.0, "0"], [11.5, "20"]]}
        ]});
        let series = matrix_of(&data).unwrap();
        assert_eq!(series[0].labels["workload"], "canary");
        assert_eq!(series[0].points, vec![(10.0, 0.0), (11.5, 20.0)]);
        assert!(matrix_of(&json!({"resultType": "vector", "result": []})).is_err());
    }

    #[test]
    fn errors_carry_prometheus_message() {
        let body = json!({"status": "error", "errorType": "bad_data", "error": "parse error at char 5"});
        let err = parse_samples(400, &body.to_string(), "q").unwrap_err();
        assert_eq!(err, "bad_data: parse error at char 5");
    }
}
