//! What a release is made of agrees with itself: the crate version and the chart's version
//! and appVersion are one version (the image tag is `v<version>`: e2e/tests/helm.rs checks
//! the chart's default image against `scripts/image`); the krew manifest the
//! release workflow writes points at exactly the kubectl-petrel archives it uploads, for
//! every platform its build matrix builds. No cluster needed.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

use petrel_e2e::scenario::workspace_root;
use serde_json::Value;

fn yaml_file(path: &str) -> Value {
    let path = workspace_root().join(path);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// The workspace's version (`[workspace.package]`), which petrel inherits.
fn crate_version() -> String {
    petrel::version::VERSION.to_string()
}

#[test]
fn the_chart_follows_the_crate_version() {
    let chart = yaml_file("charts/petrel/Chart.yaml");
    let version = crate_version();
    assert_eq!(chart["version"].as_str(), Some(version.as_str()), "charts/petrel/Chart.yaml version != crate version");
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(version.as_str()),
        "charts/petrel/Chart.yaml appVersion != crate version"
    );
}

#[test]
fn the_changelog_keeps_an_unreleased_section() {
    let text = std::fs::read_to_string(workspace_root().join("CHANGELOG.md")).expect("CHANGELOG.md");
    assert!(text.contains("Keep a Changelog"), "CHANGELOG.md says which form it keeps");
    assert!(text.lines().any(|l| l == "## [Unreleased]"), "CHANGELOG.md has no ## [Unreleased] section");
}

/// (os, arch) of every `binaries` matrix entry of the release workflow.
fn release_platforms(workflow: &Value) -> BTreeSet<(String, String)> {
    let include = workflow["jobs"]["binaries"]["strategy"]["matrix"]["include"].as_array().expect("a build matrix");
    include
        .iter()
        .map(|entry| {
            let field = |k: &str| entry[k].as_str().unwrap_or_else(|| panic!("matrix entry without {k}: {entry}"));
            (field("os").to_string(), field("arch").to_string())
        })
        .collect()
}

fn sha256_hex(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).stdin(Stdio::null()).output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

#[test]
fn the_krew_manifest_points_at_the_release_archives() {
    let workflow = yaml_file(".github/workflows/release.yml");
    let platforms = release_platforms(&workflow);
    let expected: BTreeSet<(String, String)> =
        [("linux", "amd64"), ("linux", "arm64"), ("darwin", "amd64"), ("darwin", "arm64")]
            .iter()
            .map(|(o, a)| (o.to_string(), a.to_string()))
            .collect();
    assert_eq!(platforms, expected, "the release builds kubectl-petrel for linux and macOS on amd64 and arm64");

    // Package a stand-in binary per platform with the script the workflow runs.
    let root = workspace_root();
    let script = root.join("scripts/release-plugin");
    let dir = std::env::temp_dir().join(format!("petrel-release-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dist = dir.join("dist");
    std::fs::create_dir_all(&dist).unwrap();
    let version = crate_version();
    for (os, arch) in &platforms {
        let binary = dir.join(format!("kubectl-petrel-{os}-{arch}"));
        std::fs::write(&binary, format!("#!/bin/sh\necho {os} {arch}\n")).unwrap();
        let out = Command::new("bash")
            .arg(&script)
            .args(["package", &version, os, arch])
            .arg(&binary)
            .arg(&dist)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "package {os}/{arch}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // What the release job uploads: the archives and their checksums.
    let uploaded: BTreeSet<String> =
        std::fs::read_dir(&dist).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    let release_step = workflow["jobs"]["release"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["run"].as_str())
        .find(|run| run.contains("gh release create"))
        .expect("a gh release create step")
        .to_string();
    assert!(release_step.contains("dist/kubectl-petrel_*"), "the release uploads the archives: {release_step}");
    for name in &uploaded {
        assert!(name.starts_with("kubectl-petrel_"), "{name} would not be uploaded by dist/kubectl-petrel_*");
    }

    let out =
        Command::new("bash").arg(&script).args(["krew", &version]).arg(&dist).stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "krew: {}", String::from_utf8_lossy(&out.stderr));
    let manifest: Value = serde_yaml::from_slice(&out.stdout).expect("the krew manifest is YAML");
    assert_eq!(manifest["apiVersion"], "krew.googlecontainertools.github.com/v1alpha2");
    assert_eq!(manifest["kind"], "Plugin");
    assert_eq!(manifest["metadata"]["name"], "petrel", "krew installs it as kubectl petrel");
    assert_eq!(manifest["spec"]["version"].as_str(), Some(format!("v{version}").as_str()));
    let prefix = format!("https://github.com/petrel-dev/petrel/releases/download/v{version}/");
    let mut seen = BTreeSet::new();
    for platform in manifest["spec"]["platforms"].as_array().expect("platforms") {
        let labels = &platform["selector"]["matchLabels"];
        let key = (labels["os"].as_str().unwrap().to_string(), labels["arch"].as_str().unwrap().to_string());
        let uri = platform["uri"].as_str().expect("uri");
        let file = uri.strip_prefix(&prefix).unwrap_or_else(|| panic!("{uri} is not on the release v{version}"));
        assert!(uploaded.contains(file), "{uri} names {file}, which the release does not upload ({uploaded:?})");
        assert!(uploaded.contains(&format!("{file}.sha256")), "no checksum file for {file}");
        assert_eq!(platform["sha256"].as_str(), Some(sha256_hex(&dist.join(file)).as_str()), "sha256 of {file}");
        let checksum = std::fs::read_to_string(dist.join(format!("{file}.sha256"))).unwrap();
        assert_eq!(checksum.trim(), format!("{}  {file}", sha256_hex(&dist.join(file))));
        assert_eq!(platform["bin"], "kubectl-petrel");
        // The archive holds what `files` copies.
        let listing = Command::new("tar").arg("-tzf").arg(dist.join(file)).output().unwrap();
        let listing = String::from_utf8_lossy(&listing.stdout);
        for from in platform["files"].as_array().unwrap().iter().filter_map(|f| f["from"].as_str()) {
            assert!(listing.lines().any(|l| l == from), "{file} holds no {from}: {listing}");
        }
        assert!(seen.insert(key.clone()), "two platforms for {key:?}");
    }
    assert_eq!(seen, platforms, "the manifest has one platform per built archive");
    let _ = std::fs::remove_dir_all(&dir);
}
