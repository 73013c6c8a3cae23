//! The corpus of Flagger-style manifests (`e2e/corpus/flagger/`) against a real API server
//! with petrel's CRDs: each object is applied with `kubectl apply --dry-run=server
//! --validate=strict`, as a user migrating from Flagger would apply it.
//!
//! - `accepted.yaml` sets every field docs/flagger.md lists as `acted on` (checked here
//!   against the doc) and every object must be accepted;
//! - each object of `refused.yaml` names the rows (or the message) it must be refused with,
//!   every `refused` row is covered, and the API server's answer must carry that message.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, Result, bail, ensure};
use petrel_e2e::fleet::{Fleet, FleetOptions};
use petrel_e2e::scenario::{kubectl, workspace_root};
use serde::Deserialize;
use serde_json::Value;

fn read(relative: &str) -> Result<String> {
    let path = workspace_root().join(relative);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// `field -> (status, note)` of docs/flagger.md's "Field status" table (the same table
/// operator/tests/flagger_doc.rs checks against the CRDs).
fn doc_rows() -> Result<BTreeMap<String, (String, String)>> {
    let doc = read("docs/flagger.md")?;
    let section = doc.split("## Field status").nth(1).context("docs/flagger.md has no Field status section")?;
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut rows = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        let [field, status, note] = cells[..] else { bail!("a row needs three cells: {line}") };
        rows.insert(field.trim_matches('`').to_string(), (status.to_string(), note.trim_matches('"').to_string()));
    }
    Ok(rows)
}

/// Every Flagger field path an object sets, spelt as in docs/flagger-fields.txt: a key is a
/// field where Flagger has that field, else a map key (`*`) where Flagger has a map there.
fn set_paths(kind: &str, value: &Value, prefix: &str, known: &BTreeSet<String>, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let field = format!("{prefix}.{key}");
                let path = if known.contains(&format!("{kind} {field}")) { field } else { format!("{prefix}.*") };
                out.insert(format!("{kind} {path}"));
                set_paths(kind, child, &path, known, out);
            }
        }
        Value::Array(items) => {
            let path = format!("{prefix}[]");
            for item in items {
                out.insert(format!("{kind} {path}"));
                set_paths(kind, item, &path, known, out);
            }
        }
        _ => {}
    }
}

fn documents(relative: &str) -> Result<Vec<Value>> {
    let text = read(relative)?;
    let mut out = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value = Value::deserialize(document).with_context(|| format!("parsing {relative}"))?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

fn name_of(object: &Value) -> String {
    format!("{}/{}", object["kind"].as_str().unwrap_or("?"), object["metadata"]["name"].as_str().unwrap_or("?"))
}

/// Applies one object with server-side dry-run and strict field validation: `Ok` when
/// accepted, the API server's refusal otherwise.
fn dry_run(
    kubectl_bin: &std::path::Path,
    kubeconfig: &std::path::Path,
    dir: &std::path::Path,
    object: &Value,
) -> Result<std::result::Result<(), String>> {
    let file = dir.join(format!("{}.yaml", object["metadata"]["name"].as_str().unwrap_or("object")));
    std::fs::write(&file, serde_yaml::to_string(object)?)?;
    let file = file.to_string_lossy().into_owned();
    Ok(kubectl(kubectl_bin, kubeconfig, &["apply", "--dry-run=server", "--validate=strict", "-f", &file])
        .map(|_| ())
        .map_err(|e| format!("{e:#}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flagger_corpus_is_accepted_or_refused_as_documented() -> Result<()> {
    // What the corpus must cover, from the doc: no control plane needed for that.
    let rows = doc_rows()?;
    let known: BTreeSet<String> = read("docs/flagger-fields.txt")?
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    let accepted = documents("e2e/corpus/flagger/accepted.yaml")?;
    let refused = documents("e2e/corpus/flagger/refused.yaml")?;
    let mut covered = BTreeSet::new();
    for object in &accepted {
        let kind = object["kind"].as_str().context("an object without kind")?;
        set_paths(kind, &object["spec"], "spec", &known, &mut covered);
    }
    let unknown: Vec<_> = covered.iter().filter(|p| !known.contains(*p)).collect();
    ensure!(unknown.is_empty(), "accepted.yaml sets fields Flagger does not have: {unknown:?}");
    let refused_in_accepted: Vec<_> =
        covered.iter().filter(|p| rows.get(*p).is_some_and(|(s, _)| s == "refused")).collect();
    ensure!(refused_in_accepted.is_empty(), "accepted.yaml sets fields documented as refused: {refused_in_accepted:?}");
    let uncovered: Vec<_> =
        rows.iter().filter(|(f, (s, _))| s == "acted on" && !covered.contains(*f)).map(|(f, _)| f).collect();
    ensure!(uncovered.is_empty(), "accepted.yaml does not set these fields documented as acted on: {uncovered:?}");

    // Refused objects: the messages they must be refused with.
    let mut expected: Vec<(Value, Vec<String>)> = Vec::new();
    let mut refused_rows = BTreeSet::new();
    for object in refused {
        let annotations = &object["metadata"]["annotations"];
        let mut messages = Vec::new();
        if let Some(fields) = annotations["corpus.petrel.dev/refuses"].as_str() {
            for field in fields.split(',').map(str::trim) {
                match rows.get(field) {
                    Some((status, note)) if status == "refused" => messages.push(note.clone()),
                    _ => bail!("{} names {field}, which docs/flagger.md does not list as refused", name_of(&object)),
                }
                refused_rows.insert(field.to_string());
            }
        }
        if let Some(message) = annotations["corpus.petrel.dev/message"].as_str() {
            messages.push(message.to_string());
        }
        ensure!(
            !messages.is_empty(),
            "{} says neither which rows nor which message it is refused with",
            name_of(&object)
        );
        expected.push((object, messages));
    }
    let missing: Vec<_> =
        rows.iter().filter(|(f, (s, _))| s == "refused" && !refused_rows.contains(*f)).map(|(f, _)| f).collect();
    ensure!(missing.is_empty(), "refused.yaml has no object for these refused fields: {missing:?}");

    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("petrel-e2e-flagger-corpus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let bin_dir = tokio::task::spawn_blocking(petrel_e2e::fleet::ensure_binaries).await??;
    let mut opts = FleetOptions::new(dir.join("fleet"), ["corpus"]);
    opts.bin_dir = Some(bin_dir);
    opts.nodes_per_cluster = 1;
    let fleet = Fleet::start(opts).await.context("starting the control plane")?;
    let cluster = fleet.cluster("corpus")?;
    let kubectl_bin = fleet.binaries().path("kubectl");
    let kubeconfig = cluster.kubeconfig_path.clone();
    let crds = workspace_root().join("crds").to_string_lossy().into_owned();
    kubectl(&kubectl_bin, &kubeconfig, &["apply", "--server-side", "-f", &crds])?;
    kubectl(&kubectl_bin, &kubeconfig, &["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"])?;
    eprintln!("[flagger-corpus] control plane and CRDs ready after {:.1?}", started.elapsed());
    let objects: PathBuf = dir.join("objects");
    std::fs::create_dir_all(&objects)?;

    let mut failures = Vec::new();
    for object in &accepted {
        if let Err(refusal) = dry_run(&kubectl_bin, &kubeconfig, &objects, object)? {
            failures.push(format!("{} was refused: {refusal}", name_of(object)));
        }
    }
    for (object, messages) in &expected {
        match dry_run(&kubectl_bin, &kubeconfig, &objects, object)? {
            Ok(()) => failures.push(format!("{} was accepted; expected a refusal with {messages:?}", name_of(object))),
            Err(refusal) => {
                for message in messages.iter().filter(|m| !refusal.contains(m.as_str())) {
                    failures.push(format!("{} was refused without \"{message}\": {refusal}", name_of(object)));
                }
            }
        }
    }
    eprintln!(
        "[flagger-corpus] {} accepted and {} refused objects checked ({} fields) in {:.1?}",
        accepted.len(),
        expected.len(),
        covered.len(),
        started.elapsed()
    );
    ensure!(failures.is_empty(), "the corpus does not behave as documented:\n{}", failures.join("\n"));
    Ok(())
}
