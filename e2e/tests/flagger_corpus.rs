//! The corpus of Flagger-style manifests (`e2e/corpus/flagger/`) against a real API server
//! with petrel's CRDs: each object is applied with `kubectl apply --dry-run=server
//! --validate=strict`, as a user migrating from Flagger would apply it.
//!
//! - `accepted.yaml` sets every field docs/flagger.md lists as `acted on` (checked here
//!   against the doc) and every object must be accepted;
//! - each object of `refused.yaml` names the rows (or the message) it must be refused with,
//!   every `refused` row is covered, and the API server's answer must carry that message.
//!
//! And `kubectl petrel import` against live Flagger objects (Flagger's CRDs from
//! `e2e/crds/flagger/`): the dry run prints petrel's objects and the report and writes
//! nothing; the import writes them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, Result, bail, ensure};
use petrel_e2e::fleet::{Fleet, FleetOptions};
use petrel_e2e::scenario::{kubectl, workspace_root};
use serde::Deserialize;
use serde_json::Value;

/// One control plane with the CRDs of the given directories (relative to the workspace).
struct ControlPlane {
    // Kept for its lifetime: dropping it stops the control plane.
    _fleet: Fleet,
    dir: PathBuf,
    kubectl: PathBuf,
    kubeconfig: PathBuf,
}

impl ControlPlane {
    async fn start(name: &str, crd_dirs: &[&str]) -> Result<ControlPlane> {
        let dir = std::env::temp_dir().join(format!("petrel-e2e-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let bin_dir = tokio::task::spawn_blocking(petrel_e2e::fleet::ensure_binaries).await??;
        let mut opts = FleetOptions::new(dir.join("fleet"), [name]);
        opts.bin_dir = Some(bin_dir);
        opts.nodes_per_cluster = 1;
        let fleet = Fleet::start(opts).await.context("starting the control plane")?;
        let cluster = fleet.cluster(name)?;
        let kubectl_bin = fleet.binaries().path("kubectl");
        let kubeconfig = cluster.kubeconfig_path.clone();
        for crds in crd_dirs {
            let crds = workspace_root().join(crds).to_string_lossy().into_owned();
            kubectl(&kubectl_bin, &kubeconfig, &["apply", "--server-side", "-f", &crds])?;
        }
        kubectl(&kubectl_bin, &kubeconfig, &["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"])?;
        Ok(ControlPlane { _fleet: fleet, dir, kubectl: kubectl_bin, kubeconfig })
    }

    fn kubectl(&self, args: &[&str]) -> Result<String> {
        kubectl(&self.kubectl, &self.kubeconfig, args)
    }
}

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
    let plane = ControlPlane::start("flagger-corpus", &["crds"]).await?;
    let (dir, kubectl_bin, kubeconfig) = (&plane.dir, &plane.kubectl, &plane.kubeconfig);
    eprintln!("[flagger-corpus] control plane and CRDs ready after {:.1?}", started.elapsed());
    let objects: PathBuf = dir.join("objects");
    std::fs::create_dir_all(&objects)?;

    let mut failures = Vec::new();
    for object in &accepted {
        if let Err(refusal) = dry_run(kubectl_bin, kubeconfig, &objects, object)? {
            failures.push(format!("{} was refused: {refusal}", name_of(object)));
        }
    }
    for (object, messages) in &expected {
        match dry_run(kubectl_bin, kubeconfig, &objects, object)? {
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

/// The Flagger objects of the import case: namespace `shop` (read) and `other` (not read
/// without `-A`).
const FLAGGER_OBJECTS: &str = r#"
apiVersion: flagger.app/v1beta1
kind: MetricTemplate
metadata:
  name: latency
  namespace: shop
spec:
  provider:
    type: prometheus
    address: http://prometheus.monitoring:9090
    secretRef:
      name: prom-basic-auth
  query: histogram_quantile(0.99, sum(rate(http_request_duration_seconds_bucket[{{ interval }}])) by (le))
---
apiVersion: flagger.app/v1beta1
kind: AlertProvider
metadata:
  name: on-call
  namespace: shop
spec:
  type: slack
  channel: on-call
  secretRef:
    name: slack-url
---
apiVersion: flagger.app/v1beta1
kind: Canary
metadata:
  name: podinfo
  namespace: shop
  labels:
    team: web
spec:
  provider: istio
  targetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: podinfo
  service:
    port: 9898
    meshName: global
    retries:
      attempts: 3
  analysis:
    interval: 1m
    threshold: 5
    stepWeight: 10
    maxWeight: 50
    metrics:
      - name: latency
        templateRef:
          name: latency
        thresholdRange:
          max: 500
    alerts:
      - name: on-call
        providerRef:
          name: on-call
---
apiVersion: flagger.app/v1beta1
kind: Canary
metadata:
  name: legacy
  namespace: shop
spec:
  provider: appmesh
  targetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: legacy
  service:
    port: 80
---
apiVersion: flagger.app/v1beta1
kind: Canary
metadata:
  name: elsewhere
  namespace: other
spec:
  provider: linkerd
  targetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: elsewhere
  service:
    port: 80
"#;

fn run_plugin(plane: &ControlPlane, binary: &std::path::Path, args: &[&str]) -> Result<(bool, String, String)> {
    let out = std::process::Command::new(binary)
        .args(args)
        .arg("--kubeconfig")
        .arg(&plane.kubeconfig)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running kubectl-petrel {args:?}"))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_reads_live_flagger_objects_and_writes_petrel_ones() -> Result<()> {
    let started = Instant::now();
    let binary = tokio::task::spawn_blocking(petrel_e2e::scenario::plugin_binary).await??;
    let plane = ControlPlane::start("flagger-import", &["crds", "e2e/crds/flagger"]).await?;
    plane.kubectl(&["create", "namespace", "shop"])?;
    plane.kubectl(&["create", "namespace", "other"])?;
    let file = plane.dir.join("flagger-objects.yaml");
    std::fs::write(&file, FLAGGER_OBJECTS)?;
    plane.kubectl(&["apply", "--server-side", "-f", &file.to_string_lossy()])?;
    eprintln!("[flagger-import] control plane, CRDs and Flagger objects ready after {:.1?}", started.elapsed());

    // The dry run prints, reports and writes nothing.
    let (ok, stdout, report) = run_plugin(&plane, &binary, &["import", "-n", "shop", "--dry-run"])?;
    ensure!(ok, "import --dry-run failed:\n{stdout}\n{report}");
    let printed: Vec<Value> = serde_yaml::Deserializer::from_str(&stdout)
        .map(Value::deserialize)
        .collect::<std::result::Result<Vec<_>, _>>()
        .context("the dry run prints YAML")?
        .into_iter()
        .filter(|v| !v.is_null())
        .collect();
    let printed_names: Vec<String> = printed.iter().map(name_of).collect();
    ensure!(
        printed_names == ["MetricTemplate/latency", "AlertProvider/on-call", "Canary/podinfo"],
        "printed {printed_names:?}\n{report}"
    );
    ensure!(printed.iter().all(|o| o["apiVersion"] == "petrel.dev/v1alpha1"), "{stdout}");
    let canary = &printed[2];
    ensure!(canary["spec"]["service"].get("meshName").is_none(), "meshName kept: {stdout}");
    ensure!(canary["spec"]["service"]["retries"]["attempts"] == 3, "{stdout}");
    ensure!(canary["metadata"]["labels"]["team"] == "web", "{stdout}");
    for expected in [
        "4 Flagger object(s) read, 3 petrel object(s) printed",
        "Canary shop/podinfo: dropped spec.service.meshName: service.meshName and service.backends are AWS App Mesh settings",
        "Canary shop/legacy: not imported: provider appmesh",
        "MetricTemplate shop/latency: reads Secret prom-basic-auth",
        "AlertProvider shop/on-call: reads Secret slack-url",
        "Canary shop/podinfo: hand-over:",
    ] {
        ensure!(report.contains(expected), "{expected:?} not in the report:\n{report}");
    }
    ensure!(!report.contains("elsewhere"), "another namespace was read:\n{report}");
    let none = plane.kubectl(&[
        "get",
        "canaries.petrel.dev,metrictemplates.petrel.dev,alertproviders.petrel.dev",
        "-A",
        "-o",
        "name",
    ])?;
    ensure!(none.trim().is_empty(), "the dry run wrote {none}");

    // Every namespace: the other one's Canary too.
    let (ok, _, all) = run_plugin(&plane, &binary, &["import", "-A", "--dry-run"])?;
    ensure!(ok && all.contains("5 Flagger object(s) read, 4 petrel object(s) printed"), "{all}");

    // The import writes them; the API server accepts each.
    let (ok, stdout, report) = run_plugin(&plane, &binary, &["import", "-n", "shop"])?;
    ensure!(ok, "import failed:\n{stdout}\n{report}");
    let written = plane.kubectl(&[
        "get",
        "canaries.petrel.dev,metrictemplates.petrel.dev,alertproviders.petrel.dev",
        "-n",
        "shop",
        "-o",
        "name",
    ])?;
    let mut written: Vec<&str> = written.lines().collect();
    written.sort_unstable();
    ensure!(
        written
            == ["alertprovider.petrel.dev/on-call", "canary.petrel.dev/podinfo", "metrictemplate.petrel.dev/latency"],
        "written: {written:?}\n{report}"
    );
    let port = plane.kubectl(&[
        "get",
        "canaries.petrel.dev",
        "podinfo",
        "-n",
        "shop",
        "-o",
        "jsonpath={.spec.service.port} {.spec.analysis.metrics[0].templateRef.name}",
    ])?;
    ensure!(port == "9898 latency", "the written Canary: {port}");
    eprintln!("[flagger-import] done in {:.1?}", started.elapsed());
    Ok(())
}
