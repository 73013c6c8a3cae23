//! Brings up 4 real control planes, runs a Deployment in each, checks the
//! pods become Ready, tears down and checks no child process survives.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use petrel_e2e::fleet::{Component, Fleet, FleetOptions};
use petrel_e2e::wait::poll;

fn deployment(name: &str) -> Deployment {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "example.invalid/podinfo:6.0.0"}]}
            }
        }
    }))
    .unwrap()
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn alive(pid: u32) -> bool {
    // A reaped child has no /proc entry; a zombie would show state Z.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Pids whose parent is this process.
fn our_children() -> Vec<u32> {
    let me = std::process::id();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(me) {
            out.push(pid);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_clusters_run_deployments_and_stop_cleanly() {
    let dir = std::env::temp_dir().join(format!("petrel-fleet-smoke-{}", std::process::id()));
    let names = ["hub", "member-1", "member-2", "member-3"];

    let bin_dir = tokio::task::spawn_blocking(petrel_e2e::fleet::ensure_binaries)
        .await
        .unwrap()
        .expect("building the control-plane binaries");
    let mut opts = FleetOptions::new(&dir, names);
    opts.bin_dir = Some(bin_dir);
    let t0 = Instant::now();
    let fleet = Fleet::start(opts).await.expect("fleet start");
    let startup = t0.elapsed();
    eprintln!(
        "fleet of {} clusters ready in {startup:.1?}, children RSS {} MiB",
        names.len(),
        fleet.rss_bytes() / (1024 * 1024)
    );
    assert!(startup < Duration::from_secs(120), "startup took {startup:?}");

    for c in fleet.clusters() {
        let client = c.client().await.unwrap();
        Api::<Deployment>::namespaced(client, "default")
            .create(&PostParams::default(), &deployment("smoke"))
            .await
            .unwrap_or_else(|e| panic!("{}: create deployment: {e}", c.name));
    }

    let mut ready: BTreeMap<String, usize> = BTreeMap::new();
    let all_ready = poll(Instant::now() + Duration::from_secs(90), Duration::from_millis(500), async || {
        for c in fleet.clusters() {
            let pods: Api<Pod> = Api::namespaced(c.client().await.unwrap(), "default");
            let list = pods
                .list(&ListParams::default().labels("app=smoke"))
                .await
                .unwrap_or_else(|e| panic!("{}: list pods: {e}", c.name));
            let n = list
                .items
                .iter()
                .filter(|p| pod_ready(p) && p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
                .count();
            ready.insert(c.name.clone(), n);
        }
        Ok::<_, Infallible>(ready.values().all(|&n| n >= 2).then_some(()))
    })
    .await;
    assert!(all_ready == Ok(Some(())), "pods not Ready in every cluster: {ready:?} (logs under {})", dir.display());
    eprintln!("2/2 pods Ready in every cluster after {:.1?}", t0.elapsed() - startup);

    // Stop one member on its own, as scenarios will.
    let m3: Vec<u32> = fleet.cluster("member-3").unwrap().pids();
    assert_eq!(m3.len(), 4, "member-3 should run 4 components");
    fleet.stop_cluster("member-3").unwrap();
    assert!(m3.iter().all(|&p| !alive(p)), "member-3 processes survived stop_cluster");

    // ... and come back with its objects (etcd keeps them).
    fleet.start_cluster("member-3", Duration::from_secs(60)).await.expect("restart member-3");
    let m3 = fleet.cluster("member-3").unwrap();
    let deps: Api<Deployment> = Api::namespaced(m3.client().await.unwrap(), "default");
    assert!(deps.get_opt("smoke").await.unwrap().is_some(), "member-3 lost its Deployment");
    // SIGKILL one component and restart it.
    let kwok = m3.pid(Component::Kwok).unwrap_or_else(|| {
        let log = std::fs::read_to_string(m3.log_path(Component::Kwok)).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        panic!(
            "member-3's kwok is not running after the restart; its log ends:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    });
    fleet.kill_component("member-3", Component::Kwok, libc::SIGKILL).unwrap();
    assert!(!alive(kwok) && !m3.is_running(Component::Kwok));
    fleet.restart_component("member-3", Component::Kwok).unwrap();
    assert!(m3.is_running(Component::Kwok));

    let pids = fleet.pids();
    assert_eq!(pids.len(), 1 + 4 * 4, "etcd + 4 components in 4 clusters");
    let t_stop = Instant::now();
    fleet.shutdown().await.unwrap();
    eprintln!("fleet stopped in {:.1?}", t_stop.elapsed());

    let survivors: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
    assert!(survivors.is_empty(), "processes survived teardown: {survivors:?}");
    let children = our_children();
    assert!(children.is_empty(), "child processes left: {children:?}");

    let _ = std::fs::remove_dir_all(&dir);
}
