//! Pinned versions (`e2e/versions.env`) and the control-plane binaries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Directory of the `petrel-e2e` crate (`e2e/`).
pub fn e2e_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Versions pinned in `e2e/versions.env`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versions {
    /// e.g. `v1.36.4`
    pub kubernetes: String,
    /// e.g. `v3.6.16`
    pub etcd: String,
    /// e.g. `v0.8.0`
    pub kwok: String,
    /// e.g. `v4.3.1` (the chart tests' helm)
    pub helm: String,
}

impl Versions {
    /// Reads `e2e/versions.env`.
    pub fn load() -> Result<Self> {
        let path = e2e_dir().join("versions.env");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Parses `KEY=value` lines (comments and blank lines ignored).
    pub fn parse(text: &str) -> Result<Self> {
        let vars: BTreeMap<&str, &str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
            .collect();
        let get = |k: &str| vars.get(k).map(|v| v.to_string()).with_context(|| format!("{k} missing"));
        Ok(Self {
            kubernetes: get("KUBERNETES_VERSION")?,
            etcd: get("ETCD_VERSION")?,
            kwok: get("KWOK_VERSION")?,
            helm: get("HELM_VERSION")?,
        })
    }
}

/// Where the control-plane binaries are. `kube-apiserver`,
/// `kube-controller-manager`, `kube-scheduler`, `kubectl` and `kwok` are
/// symlinks to one multi-call `k8s` binary; `etcd` is its own binary;
/// `kwok-stages.yaml` holds kwok's default Stages (what kwokctl would inject).
#[derive(Debug, Clone)]
pub struct Binaries {
    pub dir: PathBuf,
}

impl Binaries {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    pub fn path(&self, tool: &str) -> PathBuf {
        self.dir.join(tool)
    }
    fn check(&self) -> Result<()> {
        for t in [
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kubectl",
            "kwok",
            "etcd",
            "kwok-stages.yaml",
        ] {
            let p = self.path(t);
            if !p.is_file() {
                bail!("control-plane binary {} is missing", p.display());
            }
        }
        Ok(())
    }
}

/// Makes sure the control-plane binaries exist and returns their directory.
///
/// Runs `e2e/scripts/build-binaries.sh controlplane`, which is a no-op
/// (milliseconds) when `${PETREL_CACHE_DIR:-~/.cache/petrel}/bin/<versions>/` is
/// complete and otherwise builds everything from the Go module proxy (minutes;
/// its progress goes to this process's stderr). If `PETREL_BIN_DIR` is set, that
/// directory is used as is and nothing is built.
///
/// Blocking: from async code call it through `tokio::task::spawn_blocking`
/// (which [`crate::fleet::Fleet::start`] does).
pub fn ensure_binaries() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PETREL_BIN_DIR") {
        let bins = Binaries::new(dir);
        bins.check().context("PETREL_BIN_DIR")?;
        return Ok(bins.dir);
    }
    let bins = Binaries::new(run_build_script("controlplane")?);
    bins.check()?;
    Ok(bins.dir)
}

/// Makes sure `helm` (the version pinned as `HELM_VERSION`) exists and returns its path.
///
/// Runs `e2e/scripts/build-binaries.sh helm`: a no-op when
/// `${PETREL_CACHE_DIR:-~/.cache/petrel}/bin/helm-<version>/helm` is complete, else a
/// build from the Go module proxy (about 3 minutes cold on 2 cores). `PETREL_HELM`
/// points at a helm binary instead (nothing is built). Blocking, like [`ensure_binaries`].
pub fn ensure_helm() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("PETREL_HELM") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("PETREL_HELM: {} is not a file", path.display());
        }
        return Ok(path);
    }
    let helm = run_build_script("helm")?.join("helm");
    if !helm.is_file() {
        bail!("{} is missing after build-binaries.sh helm", helm.display());
    }
    Ok(helm)
}

/// Runs `e2e/scripts/build-binaries.sh <what>` and returns the directory it prints last.
fn run_build_script(what: &str) -> Result<PathBuf> {
    let script = e2e_dir().join("scripts/build-binaries.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(what)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {} {what}", script.display()))?;
    if !out.status.success() {
        bail!("{} {what} failed ({}); its output is above on stderr", script.display(), out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .with_context(|| format!("{} {what} printed no bin dir", script.display()))?;
    Ok(Path::new(dir).to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_committed_versions_env() {
        let v = Versions::load().unwrap();
        assert!(v.kubernetes.starts_with("v1.36."), "{v:?}");
        assert!(v.etcd.starts_with("v3.6."), "{v:?}");
        assert!(v.kwok.starts_with("v0.8."), "{v:?}");
        assert!(v.helm.starts_with("v4."), "{v:?}");
    }
}
