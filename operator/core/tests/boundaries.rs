//! The crate boundaries DESIGN.md asks for, checked on the dependency graph Cargo
//! resolves: the pure core and the API types reach no Kubernetes client, async runtime
//! or HTTP client, not even through another crate.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// Crates that do I/O: a client of the API server, a runtime, an HTTP stack.
const FORBIDDEN: [&str; 6] = ["kube", "kube-client", "kube-runtime", "tokio", "reqwest", "hyper"];

/// The names of every package `root` depends on through normal (not dev or build)
/// dependencies, transitively.
fn normal_dependencies(metadata: &Value, root: &str) -> BTreeSet<String> {
    let name_of: BTreeMap<&str, &str> = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| (p["id"].as_str().expect("id"), p["name"].as_str().expect("name")))
        .collect();
    let nodes: BTreeMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .expect("resolve.nodes")
        .iter()
        .map(|n| (n["id"].as_str().expect("id"), n))
        .collect();
    let start = name_of.iter().find(|(_, name)| **name == root).map(|(id, _)| *id).expect("the package");
    let mut seen = BTreeSet::new();
    let mut stack = vec![start];
    while let Some(id) = stack.pop() {
        for dep in nodes[id]["deps"].as_array().expect("deps") {
            let normal = dep["dep_kinds"].as_array().expect("dep_kinds").iter().any(|k| k["kind"].is_null());
            let dep_id = dep["pkg"].as_str().expect("pkg");
            if normal && seen.insert(name_of[dep_id].to_string()) {
                stack.push(dep_id);
            }
        }
    }
    seen
}

/// The platform this is built on (`rustc -vV`'s `host:`).
fn host_triple() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let output = Command::new(rustc).arg("-vV").output().expect("rustc -vV runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.lines().find_map(|l| l.strip_prefix("host: ")).expect("rustc -vV names its host").trim().to_string()
}

#[test]
fn the_core_and_the_api_types_depend_on_no_client_runtime_or_http_stack() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // The graph for this platform: offline, cargo has the sources of only the packages a
    // build here downloaded, and without --filter-platform it wants every platform's
    // (on a fresh machine `android_system_properties` was missing). No crate of FORBIDDEN
    // is a platform-specific dependency, so the check loses nothing.
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline", "--filter-platform", &host_triple()])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(output.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&output.stderr));
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("cargo metadata's JSON");
    for package in ["petrel-core", "petrel-api"] {
        let deps = normal_dependencies(&metadata, package);
        let breaches: Vec<&str> = FORBIDDEN.iter().copied().filter(|f| deps.contains(*f)).collect();
        assert!(breaches.is_empty(), "{package} depends on {breaches:?}");
        assert!(deps.contains("kube-core"), "{package}: the graph was not read ({deps:?})");
    }
    // The runtime does reach them: the walk finds what is there.
    assert!(normal_dependencies(&metadata, "petrel").contains("tokio"));
}
