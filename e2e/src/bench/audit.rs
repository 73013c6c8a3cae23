//! The operators' requests, from the API server's audit log (`FleetOptions::audit_log`),
//! attributed by user agent: petrel's start with `petrel/` (builds before it named itself
//! send none), Flagger's with `flagger/` (client-go's default, from its binary name).

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};

use super::workload::OperatorKind;
use crate::fleet::{AuditRecord, parse_audit_log};

/// Whether a request with this user agent was made by an operator of `kind`. Pure.
pub fn made_by(kind: OperatorKind, user_agent: &str) -> bool {
    match kind {
        OperatorKind::Petrel => user_agent.starts_with("petrel/") || user_agent.is_empty(),
        OperatorKind::Flagger => user_agent.starts_with("flagger/"),
    }
}

/// Counts of `verb resource` among `records`, most frequent first.
pub fn tally(records: &[AuditRecord]) -> Vec<(String, usize)> {
    crate::fleet::tally(records)
}

/// Reads an audit log as it grows, keeping only what was written since the last
/// [`AuditTail::skip_to_end`] (a round's requests, not the whole run's).
pub struct AuditTail {
    path: PathBuf,
    offset: u64,
    /// The bytes after the last complete line.
    partial: String,
    records: Vec<AuditRecord>,
}

impl AuditTail {
    pub fn new(path: PathBuf) -> AuditTail {
        AuditTail { path, offset: 0, partial: String::new(), records: Vec::new() }
    }

    /// Forgets everything read so far and starts reading at the end of the log.
    pub fn skip_to_end(&mut self) -> Result<()> {
        self.offset = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        self.partial.clear();
        self.records.clear();
        Ok(())
    }

    fn read_new(&mut self) -> Result<()> {
        let mut file = match std::fs::File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("opening the audit log {}", self.path.display())),
        };
        file.seek(SeekFrom::Start(self.offset))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).with_context(|| format!("reading the audit log {}", self.path.display()))?;
        self.offset += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        let complete = self.partial.rfind('\n').map_or(0, |i| i + 1);
        let lines: String = self.partial.drain(..complete).collect();
        self.records.extend(parse_audit_log(&lines));
        Ok(())
    }

    /// The requests of `kind`'s operator answered in `[from, to)`.
    pub async fn requests(
        &mut self,
        kind: OperatorKind,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<AuditRecord>> {
        let answered = self.answered(from, to).await?;
        Ok(answered.into_iter().filter(|r| made_by(kind, &r.user_agent)).collect())
    }

    /// Every client's requests answered in `[from, to)`.
    pub async fn answered(&mut self, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Vec<AuditRecord>> {
        // The API server writes a request's line when it completes: give the last ones a moment.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        self.read_new()?;
        Ok(self.records.iter().filter(|r| r.is_request() && r.at >= from && r.at < to).cloned().collect())
    }
}

/// Which of the operator's requests [`first_after_patches`] looks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reaction {
    /// A successful write of the app's Deployment, its scale included: the canary's
    /// scale-up (petrel makes it once the status that starts the run is written, Flagger
    /// before).
    TargetWrite,
    /// A successful write of the Canary's status: the operator saying it saw the release.
    StatusWrite,
}

impl Reaction {
    fn matches(self, r: &AuditRecord) -> bool {
        let succeeded = r.code.is_some_and(|code| (200..300).contains(&code));
        let write = matches!(r.verb.as_str(), "create" | "patch" | "update");
        succeeded
            && write
            && match self {
                Reaction::TargetWrite => r.resource == "deployments",
                Reaction::StatusWrite => r.resource == "canaries" && r.subresource == "status",
            }
    }
}

/// Detection as the API server saw it: for each Deployment the benchmark (`bench_agent`)
/// patched, the time from that patch's completion to the completion of the first request
/// of `kind`'s operator, on an object of the same name, that is the `reaction`. Unlike
/// the benchmark's own detection, it leaves out how late the benchmark's watch of the
/// Canaries delivers on a saturated control plane. Pure.
pub fn first_after_patches(
    records: &[AuditRecord],
    kind: OperatorKind,
    bench_agent: &str,
    reaction: Reaction,
) -> Vec<Duration> {
    let mut patched: HashMap<&str, DateTime<Utc>> = HashMap::new();
    for r in records {
        if r.user_agent == bench_agent && r.verb == "patch" && r.resource == "deployments" && r.subresource.is_empty() {
            patched.entry(r.name.as_str()).or_insert(r.at);
        }
    }
    let mut first: HashMap<&str, DateTime<Utc>> = HashMap::new();
    for r in records {
        if !reaction.matches(r) || !made_by(kind, &r.user_agent) {
            continue;
        }
        if let Some(since) = patched.get(r.name.as_str())
            && r.at >= *since
        {
            let at = first.entry(r.name.as_str()).or_insert(r.at);
            *at = (*at).min(r.at);
        }
    }
    first.iter().filter_map(|(name, at)| (*at - patched[name]).to_std().ok()).collect()
}

/// The most requests of `kind`'s operator the API server held at once, watches left out
/// (each holds its stream for as long as it runs): from each request's receipt to its
/// answer's completion. Over HTTP/2 every request shares one connection, whose streams
/// the server limits; a flat ceiling here is that limit. Pure.
pub fn most_in_flight(records: &[AuditRecord], kind: OperatorKind) -> usize {
    let mut changes: Vec<(DateTime<Utc>, i32)> = Vec::new();
    for r in records {
        if r.verb == "watch" || r.stage != "ResponseComplete" || !made_by(kind, &r.user_agent) {
            continue;
        }
        if let Some(received) = r.received {
            changes.push((received, 1));
            changes.push((r.at, -1));
        }
    }
    // At equal times an answer completes before the next request counts.
    changes.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, change) in changes {
        now += change;
        most = most.max(now);
    }
    most.max(0) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_attributed_by_user_agent() {
        assert!(made_by(OperatorKind::Petrel, "petrel/0.1.0"));
        assert!(made_by(OperatorKind::Petrel, ""), "petrel before it set a user agent");
        assert!(!made_by(OperatorKind::Petrel, "canary-bench"));
        assert!(!made_by(OperatorKind::Petrel, "kube-controller-manager/v1.36.4 (linux/amd64) kubernetes/abc"));
        assert!(made_by(OperatorKind::Flagger, "flagger/v0.0.0 (linux/amd64) kubernetes/$Format"));
        assert!(!made_by(OperatorKind::Flagger, ""));
    }

    fn record(agent: &str, verb: &str, resource: &str, name: &str, code: u16, at: &str) -> AuditRecord {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        AuditRecord {
            user_agent: agent.into(),
            verb: verb.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            namespace: "bench-1".into(),
            name: name.into(),
            stage: "ResponseComplete".into(),
            code: Some(code),
            at: format!("2026-01-01T00:00:{at}Z").parse().unwrap(),
            received: None,
        }
    }

    #[test]
    fn requests_in_flight_are_counted_from_receipt_to_answer_without_watches() {
        let petrel = "petrel/0.1.0";
        let request = |verb: &str, agent: &str, from: &str, to: &str| AuditRecord {
            received: Some(format!("2026-01-01T00:00:{from}Z").parse().unwrap()),
            ..record(agent, verb, "deployments", "app-1", 200, to)
        };
        let records = vec![
            request("patch", petrel, "01.0", "03.0"),
            request("get", petrel, "02.0", "04.0"),
            request("patch", petrel, "03.0", "05.0"),
            request("watch", petrel, "00.0", "09.0"),
            request("patch", "canary-bench", "02.5", "02.6"),
            record(petrel, "patch", "deployments", "app-2", 200, "02.0"),
        ];
        assert_eq!(
            most_in_flight(&records, OperatorKind::Petrel),
            2,
            "the third starts as the first ends; a watch, another client's request and a line without its receipt do not count"
        );
        assert_eq!(most_in_flight(&records, OperatorKind::Flagger), 0);
    }

    #[test]
    fn detection_at_the_api_server_is_each_patch_to_the_first_reaction_after_it() {
        let petrel = "petrel/0.1.0";
        let records = vec![
            record(petrel, "patch", "canaries/status", "app-1", 200, "00.5"),
            record("canary-bench", "patch", "deployments", "app-1", 200, "01.0"),
            record("canary-bench", "patch", "deployments", "app-2", 200, "01.5"),
            record(petrel, "patch", "deployments", "app-1", 200, "02.0"),
            record(petrel, "patch", "canaries/status", "app-1", 409, "02.5"),
            record(petrel, "patch", "canaries/status", "app-1", 200, "03.0"),
            record(petrel, "patch", "canaries/status", "app-1", 200, "04.0"),
            record("flagger/v1", "update", "canaries/status", "app-2", 200, "05.0"),
            record(petrel, "patch", "canaries/status", "app-3", 200, "06.0"),
        ];
        let status = |kind| first_after_patches(&records, kind, "canary-bench", Reaction::StatusWrite);
        assert_eq!(
            status(OperatorKind::Petrel),
            vec![Duration::from_secs(2)],
            "app-1 only: a write before the patch, a conflict, a write by another operator and an app never patched do not count"
        );
        assert_eq!(status(OperatorKind::Flagger), vec![Duration::from_millis(3500)]);
        let scale_ups = first_after_patches(&records, OperatorKind::Petrel, "canary-bench", Reaction::TargetWrite);
        assert_eq!(
            scale_ups,
            vec![Duration::from_secs(1)],
            "the scale-up of app-1's Deployment, a status write left out"
        );
        let records = vec![
            record("canary-bench", "patch", "deployments", "app-1", 200, "01.0"),
            record(petrel, "patch", "canaries/status", "app-1", 200, "01.5"),
            record(petrel, "patch", "deployments/scale", "app-1", 200, "02.5"),
        ];
        let scale_ups = first_after_patches(&records, OperatorKind::Petrel, "canary-bench", Reaction::TargetWrite);
        assert_eq!(scale_ups, vec![Duration::from_millis(1500)], "through the scale subresource, after the status");
    }

    #[tokio::test]
    async fn the_tail_reads_only_what_was_written_since_the_skip_and_whole_lines() {
        let dir = std::env::temp_dir().join(format!("canary-bench-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.log");
        let line = |verb: &str, ua: &str, at: &str| {
            format!(
                r#"{{"kind":"Event","stage":"ResponseComplete","verb":"{verb}","userAgent":"{ua}","objectRef":{{"resource":"deployments"}},"responseStatus":{{"code":200}},"stageTimestamp":"{at}"}}"#
            ) + "\n"
        };
        std::fs::write(&path, line("list", "flagger/v0", "2026-01-01T00:00:01Z")).unwrap();
        let mut tail = AuditTail::new(path.clone());
        tail.skip_to_end().unwrap();
        let half = line("get", "flagger/v0", "2026-01-01T00:00:02Z");
        let (first, rest) = half.split_at(40);
        std::fs::write(&path, line("list", "flagger/v0", "2026-01-01T00:00:01Z") + first).unwrap();
        let from: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let to: DateTime<Utc> = "2026-01-01T00:01:00Z".parse().unwrap();
        assert!(tail.requests(OperatorKind::Flagger, from, to).await.unwrap().is_empty(), "a half line waits");
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        std::io::Write::write_all(&mut file, rest.as_bytes()).unwrap();
        let got = tail.requests(OperatorKind::Flagger, from, to).await.unwrap();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].verb, "get");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
