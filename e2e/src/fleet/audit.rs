//! The API server's own record of the requests it answered (`FleetOptions::audit_log`),
//! so a test can count what a client cost the API server: by user agent, verb and
//! resource, in a time window. `apiserver_request_total` has no user label, and every
//! client of a test cluster uses the same admin certificate, so the user agent is what
//! tells petrel's requests from the harness's.

use std::path::Path;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::Deserialize;

/// File name of the audit log under `<dir>/<cluster>/logs/`.
pub(crate) const AUDIT_LOG: &str = "audit.log";

/// Every request at level Metadata (no bodies: Secrets stay out of the log), one line
/// per request when its response is complete (and one when a watch starts).
pub(crate) const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
";

/// One audit event, the fields a request count needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub user_agent: String,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, ...
    pub verb: String,
    /// `deployments`, `canaries`, ... (empty for non-resource URLs such as `/readyz`).
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// `ResponseStarted` (watches) or `ResponseComplete`.
    pub stage: String,
    pub code: Option<u16>,
    /// When the request's answer completed (or, for a watch, started): `stageTimestamp`.
    pub at: DateTime<Utc>,
    /// When the API server received the request: `requestReceivedTimestamp`.
    pub received: Option<DateTime<Utc>>,
}

impl AuditRecord {
    /// One answered request: its `ResponseComplete` line. A watch is counted when it
    /// starts (`ResponseStarted`), not again when it ends.
    pub fn is_request(&self) -> bool {
        match self.verb.as_str() {
            "watch" => self.stage == "ResponseStarted",
            _ => self.stage == "ResponseComplete",
        }
    }

    /// `verb resource[/subresource]`, e.g. `patch canaries/status`.
    pub fn call(&self) -> String {
        match self.subresource.as_str() {
            "" => format!("{} {}", self.verb, self.resource),
            sub => format!("{} {}/{sub}", self.verb, self.resource),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEvent {
    #[serde(default)]
    user_agent: String,
    #[serde(default)]
    verb: String,
    #[serde(default)]
    stage: String,
    object_ref: Option<RawObjectRef>,
    response_status: Option<RawStatus>,
    stage_timestamp: DateTime<Utc>,
    request_received_timestamp: Option<DateTime<Utc>>,
}

#[derive(Deserialize, Default)]
struct RawObjectRef {
    #[serde(default)]
    resource: String,
    #[serde(default)]
    subresource: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
struct RawStatus {
    code: Option<u16>,
}

/// Parses an audit log (JSON lines); lines that are not audit events are skipped (a
/// line may be half-written while the API server runs).
pub fn parse_audit_log(text: &str) -> Vec<AuditRecord> {
    text.lines()
        .filter_map(|line| serde_json::from_str::<RawEvent>(line).ok())
        .map(|raw| {
            let object = raw.object_ref.unwrap_or_default();
            AuditRecord {
                user_agent: raw.user_agent,
                verb: raw.verb,
                resource: object.resource,
                subresource: object.subresource,
                namespace: object.namespace,
                name: object.name,
                stage: raw.stage,
                code: raw.response_status.and_then(|s| s.code),
                at: raw.stage_timestamp,
                received: raw.request_received_timestamp,
            }
        })
        .collect()
}

/// Reads and parses an audit log file (an absent file is an empty log: nothing logged yet).
pub fn read_audit_log(path: &Path) -> Result<Vec<AuditRecord>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(parse_audit_log(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading the audit log {}", path.display())),
    }
}

/// The requests of clients whose user agent starts with `user_agent`, answered in
/// `[from, to)`.
pub fn requests_between<'a>(
    records: &'a [AuditRecord],
    user_agent: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<&'a AuditRecord> {
    records
        .iter()
        .filter(|r| r.is_request() && r.user_agent.starts_with(user_agent) && r.at >= from && r.at < to)
        .collect()
}

/// Counts of `verb resource` among `records`, most frequent first.
pub fn tally<'a>(records: impl IntoIterator<Item = &'a AuditRecord>) -> Vec<(String, usize)> {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for record in records {
        *counts.entry(record.call()).or_default() += 1;
    }
    let mut out: Vec<(String, usize)> = counts.into_iter().collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_request_once_and_watches_when_they_start() {
        let log = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","stage":"ResponseComplete","verb":"get","userAgent":"petrel/0.1.0","objectRef":{"resource":"deployments","namespace":"test","name":"podinfo","apiGroup":"apps"},"responseStatus":{"code":200},"stageTimestamp":"2026-01-01T00:00:01.000000Z"}
{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","stage":"ResponseStarted","verb":"watch","userAgent":"petrel/0.1.0","objectRef":{"resource":"canaries"},"responseStatus":{"code":200},"stageTimestamp":"2026-01-01T00:00:02.000000Z"}
{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","stage":"ResponseComplete","verb":"watch","userAgent":"petrel/0.1.0","objectRef":{"resource":"canaries"},"responseStatus":{"code":200},"stageTimestamp":"2026-01-01T00:00:03.000000Z"}
{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","stage":"ResponseComplete","verb":"patch","userAgent":"petrel/0.1.0","objectRef":{"resource":"canaries","subresource":"status"},"responseStatus":{"code":409},"stageTimestamp":"2026-01-01T00:00:04.000000Z"}
{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","stage":"ResponseComplete","verb":"list","userAgent":"kube-controller-manager/v1.36.4","objectRef":{"resource":"pods"},"responseStatus":{"code":200},"stageTimestamp":"2026-01-01T00:00:05.000000Z"}
{"kind":"Event","apiVer"#;
        let records = parse_audit_log(log);
        assert_eq!(records.len(), 5, "the half-written last line is skipped");
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let petrel = requests_between(&records, "petrel/", at("2026-01-01T00:00:00Z"), at("2026-01-01T00:01:00Z"));
        assert_eq!(
            tally(petrel.iter().copied()),
            vec![
                ("get deployments".to_string(), 1),
                ("patch canaries/status".to_string(), 1),
                ("watch canaries".to_string(), 1)
            ]
        );
        assert_eq!(petrel[2].code, Some(409));
        let window = requests_between(&records, "petrel/", at("2026-01-01T00:00:02Z"), at("2026-01-01T00:00:04Z"));
        assert_eq!(window.len(), 1, "the window is half-open and watches count once: {window:?}");
    }
}
