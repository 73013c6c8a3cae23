//! The Helm chart `charts/petrel` as the tests install it, and petrel run as an installed
//! release's pod would run it: with the arguments of the release's Deployment and only its
//! ServiceAccount's token (no admin credentials, so the chart's RBAC is all it has).
//!
//! helm comes from `e2e/scripts/build-binaries.sh helm` ([`crate::fleet::ensure_helm`]).
//! Blocking: from async code call these through `tokio::task::spawn_blocking`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::scenario::workspace_root;

/// The chart in this checkout.
pub fn chart_dir() -> PathBuf {
    workspace_root().join("charts/petrel")
}

/// Runs `program args` to its end; its stdout, or an error with its stderr.
pub fn run_ok(program: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} {args:?}", program.display()))?;
    ensure!(
        out.status.success(),
        "{} {args:?} failed ({}):\n{}",
        program.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Every object of a multi-document YAML stream (empty documents left out).
pub fn parse_documents(yaml: &str) -> Result<Vec<Value>> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).context("invalid YAML"))
        .filter(|v| v.as_ref().map_or(true, |v| !v.is_null()))
        .collect()
}

/// The arguments of the first container of the Deployment `name` among `docs`.
pub fn deployment_args(docs: &[Value], name: &str) -> Result<Vec<String>> {
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == name)
        .with_context(|| format!("no Deployment {name} in the manifest"))?;
    let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .with_context(|| format!("Deployment {name} has no args"))?;
    Ok(args.iter().filter_map(|a| a.as_str().map(str::to_string)).collect())
}

/// The admin kubeconfig `admin` with its user replaced by a ServiceAccount token, at `out`.
pub fn token_kubeconfig(admin: &Path, token: &str, out: &Path) -> Result<()> {
    let mut config: Value =
        serde_yaml::from_str(&std::fs::read_to_string(admin)?).context("parsing the admin kubeconfig")?;
    let users = config["users"].as_array_mut().context("kubeconfig without users")?;
    ensure!(users.len() == 1, "expected one user in {}", admin.display());
    users[0]["user"] = json!({"token": token});
    std::fs::write(out, serde_yaml::to_string(&config)?).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// One cluster as helm and kubectl reach it (admin credentials: the installer's, never petrel's).
pub struct ChartCluster<'a> {
    pub helm: &'a Path,
    pub kubectl: &'a Path,
    pub kubeconfig: &'a Path,
}

impl ChartCluster<'_> {
    fn kubeconfig_arg(&self) -> String {
        self.kubeconfig.to_string_lossy().into_owned()
    }

    /// `helm <verb> <release> <chart> -n <namespace> --create-namespace --set k=v ...`
    /// (`verb`: install or upgrade).
    pub fn helm_install(
        &self,
        verb: &str,
        release: &str,
        chart: &Path,
        namespace: &str,
        values: &[(&str, &str)],
    ) -> Result<String> {
        let kubeconfig = self.kubeconfig_arg();
        let chart = chart.to_string_lossy().into_owned();
        let sets: Vec<String> = values.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut args = vec![verb, release, chart.as_str(), "--kubeconfig", &kubeconfig, "-n", namespace];
        args.extend(["--create-namespace", "--timeout", "120s"]);
        for set in &sets {
            args.extend(["--set", set.as_str()]);
        }
        run_ok(self.helm, &args).with_context(|| format!("helm {verb} {release}"))
    }

    /// What petrel runs with in release `release`'s pod: the Deployment's arguments (as
    /// `helm get manifest` shows them) with `--metrics-addr` on a free loopback port and
    /// `--kubeconfig` to a kubeconfig holding only `service_account`'s token (written to
    /// `dir/<release>-sa.kubeconfig`).
    pub fn petrel_args(
        &self,
        release: &str,
        namespace: &str,
        service_account: &str,
        dir: &Path,
    ) -> Result<Vec<String>> {
        let kubeconfig = self.kubeconfig_arg();
        let token = run_ok(
            self.kubectl,
            &["--kubeconfig", &kubeconfig, "create", "token", service_account, "-n", namespace, "--duration=2h"],
        )?;
        let token_kubeconfig_path = dir.join(format!("{release}-sa.kubeconfig"));
        token_kubeconfig(self.kubeconfig, token.trim(), &token_kubeconfig_path)?;
        let manifest = run_ok(self.helm, &["get", "manifest", release, "--kubeconfig", &kubeconfig, "-n", namespace])?;
        let mut args: Vec<String> = deployment_args(&parse_documents(&manifest)?, release)?
            .into_iter()
            .filter(|a| !a.starts_with("--metrics-addr="))
            .collect();
        // Side by side with other tests: a free port instead of the pod's 8080; the token
        // kubeconfig instead of the in-cluster one.
        args.extend([
            "--metrics-addr=127.0.0.1:0".to_string(),
            format!("--kubeconfig={}", token_kubeconfig_path.display()),
        ]);
        Ok(args)
    }
}
