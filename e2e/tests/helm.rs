//! The Helm chart `charts/petrel`: `helm lint`, `helm template` checked object by object,
//! the values schema refusing bad values, and `helm install` into a real control plane,
//! after which the CRDs are served, the ServiceAccounts can do what petrel's code calls and
//! nothing more (SubjectAccessReviews, as `kubectl auth can-i --as` asks), and the real `petrel` binary, started with the
//! chart's arguments and the member ServiceAccount's token, initializes a Canary, and
//! `petrel --mode hub` with the hub release's token reports it in a Rollout.
//!
//! helm comes from `e2e/scripts/build-binaries.sh helm` (pinned in e2e/versions.env).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use petrel::api::canary::Phase;
use petrel::api::{Canary, Cluster, ClusterIdentity, Rollout};
use petrel_e2e::chart::{self, ChartCluster};
use petrel_e2e::fleet::{Fleet, FleetOptions, ensure_binaries, ensure_helm, spawn_tied_to_process};
use petrel_e2e::image::{Container, Launcher};
use petrel_e2e::scenario::{
    APP, CONFIG_MAP, CanaryOptions, IMAGE_V0, IMAGE_V1, NAMESPACE as APP_NAMESPACE, eventually, petrel_binary,
    podinfo_deployment, workspace_root,
};
use petrel_e2e::simulator::Provider;
use serde_json::{Value, json};

const RELEASE_NAMESPACE: &str = "petrel-system";
const HUB_NAMESPACE: &str = "petrel-hub";

fn chart_dir() -> PathBuf {
    chart::chart_dir()
}

fn helm() -> PathBuf {
    static HELM: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    HELM.get_or_init(|| ensure_helm().map_err(|e| format!("{e:#}"))).clone().expect("helm binary")
}

fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {} {args:?}: {e}", program.display()))
}

fn stdout_of(program: &Path, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{} {args:?} failed ({}):\n{}",
        program.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every object of a multi-document YAML stream (empty documents left out).
fn parse_documents(yaml: &str) -> Vec<Value> {
    chart::parse_documents(yaml).expect("helm rendered invalid YAML")
}

/// `helm template petrel charts/petrel -n petrel-system <args>`, parsed.
fn template(args: &[&str]) -> Vec<Value> {
    let chart = chart_dir();
    let mut all = vec!["template", "petrel", chart.to_str().expect("utf-8 path"), "-n", RELEASE_NAMESPACE];
    all.extend_from_slice(args);
    parse_documents(&stdout_of(&helm(), &all))
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} among {:?}", kinds(docs)))
}

fn kinds(docs: &[Value]) -> Vec<String> {
    docs.iter()
        .map(|d| format!("{}/{}", d["kind"].as_str().unwrap_or("?"), d["metadata"]["name"].as_str().unwrap_or("?")))
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_string)).collect()
}

/// (apiGroup, resource) → verbs, over every rule of a Role or ClusterRole.
fn grants(role: &Value) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for rule in role["rules"].as_array().expect("rules") {
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                out.entry((group.clone(), resource)).or_default().extend(strings(&rule["verbs"]));
            }
        }
    }
    out
}

fn container(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

fn args_of(deployment: &Value) -> Vec<String> {
    strings(&container(deployment)["args"])
}

/// The checks every rendering's Deployment passes: hardened, probed on the metrics port.
fn assert_hardened_and_probed(deployment: &Value) {
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{pod:#}");
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault", "{pod:#}");
    let c = container(deployment);
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{sc:#}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{sc:#}");
    assert_eq!(sc["privileged"], false, "{sc:#}");
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"], "{sc:#}");
    assert!(c["resources"]["requests"]["cpu"].is_string() && c["resources"]["limits"]["memory"].is_string(), "{c:#}");

    // The probes hit /livez and /readyz on the named port petrel's --metrics-addr listens on.
    let port = c["ports"].as_array().expect("ports").iter().find(|p| p["name"] == "metrics").expect("a metrics port");
    let metrics_addr = args_of(deployment)
        .into_iter()
        .find_map(|a| a.strip_prefix("--metrics-addr=").map(str::to_string))
        .expect("--metrics-addr");
    assert_eq!(metrics_addr, format!("0.0.0.0:{}", port["containerPort"]), "container port and --metrics-addr differ");
    for (probe, path) in [("livenessProbe", "/livez"), ("readinessProbe", "/readyz")] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{probe}: {:#}", c[probe]);
        assert_eq!(c[probe]["httpGet"]["port"], "metrics", "{probe}: {:#}", c[probe]);
    }
    // The Lease identity and namespace come from the Downward API.
    let env: BTreeMap<String, Value> = c["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| (e["name"].as_str().unwrap_or("").to_string(), e.clone()))
        .collect();
    assert_eq!(env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
    assert_eq!(env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.namespace");
    // After SIGTERM petrel gives its controllers --shutdown-grace-seconds, then releases its
    // Lease (at most 2 s): the kubelet must not SIGKILL it before that.
    let grace: u64 = args_of(deployment)
        .into_iter()
        .find_map(|a| a.strip_prefix("--shutdown-grace-seconds=").and_then(|g| g.parse().ok()))
        .expect("--shutdown-grace-seconds");
    let termination = pod["terminationGracePeriodSeconds"].as_u64().expect("terminationGracePeriodSeconds");
    assert!(grace + 2 < termination, "shutdown grace {grace}s + 2s release must fit in {termination}s");
}

fn dashboard_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart_dir().join("dashboards"))
        .map(|dir| dir.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "json")).collect())
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn the_chart_crds_are_the_generated_ones() {
    let root = workspace_root();
    let listing = |dir: &Path| -> BTreeMap<String, String> {
        std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&p).unwrap()))
            .collect()
    };
    let generated = listing(&root.join("crds"));
    let in_chart = listing(&chart_dir().join("crds"));
    assert!(generated.len() >= 5, "crds/ holds {:?}", generated.keys());
    assert_eq!(
        in_chart.keys().collect::<Vec<_>>(),
        generated.keys().collect::<Vec<_>>(),
        "charts/petrel/crds/ must hold exactly the files of crds/; refresh with: cp crds/*.yaml charts/petrel/crds/"
    );
    for (name, text) in &generated {
        assert!(
            in_chart[name] == *text,
            "charts/petrel/crds/{name} differs from crds/{name}; refresh with: cp crds/*.yaml charts/petrel/crds/"
        );
    }
}

#[test]
fn helm_lint_passes_in_both_modes() {
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    for mode in ["mode=member", "mode=hub"] {
        let out =
            stdout_of(&helm(), &["lint", "--strict", chart, "--set", mode, "--set", "serviceMonitor.enabled=true"]);
        assert!(out.contains("0 chart(s) failed"), "{out}");
    }
}

#[test]
fn the_member_rendering_is_hardened_and_least_privilege() {
    let docs = template(&[]);
    let deployment = find(&docs, "Deployment", "petrel");
    assert_hardened_and_probed(deployment);
    let args = args_of(deployment);
    for expected in [
        "--mode=member",
        "--leader-elect",
        "--leader-election-namespace=petrel-system",
        "--leader-election-lease-name=petrel-member",
        "--log-json",
    ] {
        assert!(args.iter().any(|a| a == expected), "{expected} missing from {args:?}");
    }
    assert_eq!(deployment["spec"]["template"]["spec"]["serviceAccountName"], "petrel");

    // Member RBAC: a ClusterRole, nothing of the hub's.
    let role = find(&docs, "ClusterRole", "petrel-member");
    let granted = grants(role);
    let key = |g: &str, r: &str| (g.to_string(), r.to_string());
    assert_eq!(granted[&key("petrel.dev", "canaries/status")], BTreeSet::from(["patch".to_string()]));
    assert!(!granted.contains_key(&key("petrel.dev", "rollouts")), "{granted:?}");
    assert_eq!(granted[&key("", "namespaces")], BTreeSet::from(["get".to_string()]), "namespaces are only read");
    for ((group, resource), verbs) in &granted {
        for forbidden in ["*", "update", "deletecollection", "escalate", "bind", "impersonate"] {
            assert!(!verbs.contains(forbidden), "{group}/{resource} grants {forbidden}");
        }
        assert!(!["pods", "nodes", "*"].contains(&resource.as_str()), "grants {resource}");
    }
    // Every route kind a router writes (routers::third_party_resources()) is granted.
    for resource in petrel::routers::third_party_resources() {
        let verbs = granted.get(&key(&resource.group, &resource.plural)).cloned().unwrap_or_default();
        // `list` (metadata only): a deleted Canary releases the route objects it owns.
        for verb in ["get", "list", "create", "patch", "delete"] {
            assert!(verbs.contains(verb), "{verb} {}.{} not granted", resource.plural, resource.group);
        }
    }
    // The keptn metric provider reads KeptnMetrics, and only reads them.
    assert_eq!(granted[&key("metrics.keptn.sh", "keptnmetrics")], BTreeSet::from(["get".to_string()]));
    let binding = find(&docs, "ClusterRoleBinding", "petrel-member");
    assert_eq!(binding["roleRef"]["name"], "petrel-member");
    assert_eq!(
        binding["subjects"][0],
        json!({"kind": "ServiceAccount", "name": "petrel", "namespace": "petrel-system"})
    );

    // The Lease: a Role in the release namespace, get/patch only on its own name.
    let lease_role = find(&docs, "Role", "petrel-leader-election");
    assert_eq!(lease_role["metadata"]["namespace"], RELEASE_NAMESPACE);
    let named = lease_role["rules"].as_array().unwrap().iter().find(|r| r["verbs"] == json!(["get", "patch"])).unwrap();
    assert_eq!(named["resourceNames"], json!(["petrel-member"]));

    // No ServiceMonitor unless asked; the dashboards ConfigMap for the Grafana sidecar.
    assert!(!docs.iter().any(|d| d["kind"] == "ServiceMonitor"), "{:?}", kinds(&docs));
    let files = dashboard_files();
    if files.is_empty() {
        assert!(!docs.iter().any(|d| d["kind"] == "ConfigMap"), "a dashboards ConfigMap without dashboards");
    } else {
        let cm = find(&docs, "ConfigMap", "petrel-dashboards");
        assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1", "{:#}", cm["metadata"]);
        for file in files {
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&file).unwrap();
            let in_cm = cm["data"][&name].as_str().unwrap_or_else(|| panic!("{name} not in the ConfigMap"));
            assert_eq!(in_cm.trim_end(), text.trim_end(), "{name} changed on its way into the ConfigMap");
            serde_json::from_str::<Value>(in_cm).unwrap_or_else(|e| panic!("{name} in the ConfigMap is not JSON: {e}"));
        }
    }
}

#[test]
fn a_watch_namespace_turns_the_member_role_namespaced() {
    let docs = template(&["--set", "member.watchNamespace=apps"]);
    // The one ClusterRole left is the cluster's identity: a cluster-scoped
    // ClusterIdentity and the kube-system Namespace's UID, by name, nothing else.
    let cluster_roles: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "ClusterRole").collect();
    assert_eq!(cluster_roles.len(), 1, "{:?}", kinds(&docs));
    let identity = find(&docs, "ClusterRole", "petrel-member-identity");
    for rule in identity["rules"].as_array().unwrap() {
        let names = strings(&rule["resourceNames"]);
        let verbs = strings(&rule["verbs"]);
        assert!(
            names == ["petrel"] || names == ["kube-system"] || verbs == ["create"],
            "identity rule beyond its one object: {rule}"
        );
    }
    assert_eq!(find(&docs, "Role", "petrel-member")["metadata"]["namespace"], "apps");
    let granted = grants(find(&docs, "Role", "petrel-member"));
    assert!(!granted.contains_key(&(String::new(), "namespaces".to_string())), "a Role cannot grant namespaces");
    assert_eq!(find(&docs, "RoleBinding", "petrel-member")["roleRef"]["kind"], "Role");
    assert!(args_of(find(&docs, "Deployment", "petrel")).contains(&"--namespace=apps".to_string()));
}

#[test]
fn the_traffic_rate_query_becomes_one_flag_and_the_member_may_write_only_its_identitys_status() {
    let plain = args_of(find(&template(&[]), "Deployment", "petrel")).join(" ");
    assert!(!plain.contains("--traffic-rate-query"), "not measured by default: {plain}");
    let query = r#"sum(rate(http_requests_total{job="shop", path!~"/healthz: .*"}[2m]))"#;
    let docs = template(&["--set-string", &format!("member.trafficRateQuery={}", query.replace(',', "\\,"))]);
    let args = args_of(find(&docs, "Deployment", "petrel"));
    assert!(args.contains(&format!("--traffic-rate-query={query}")), "{args:?}");
    let identity = find(&docs, "ClusterRole", "petrel-member-identity");
    let status_rules: Vec<&Value> = identity["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| strings(&r["resources"]) == ["clusteridentities/status"])
        .collect();
    assert_eq!(status_rules.len(), 1, "{identity}");
    assert_eq!(
        (strings(&status_rules[0]["resourceNames"]), strings(&status_rules[0]["verbs"])),
        (vec!["petrel".to_string()], vec!["patch".to_string()])
    );
}

#[test]
fn the_egress_values_become_flags() {
    let strict = args_of(find(&template(&[]), "Deployment", "petrel")).join(" ");
    assert!(!strict.contains("--egress-allow"), "the default is the strict policy: {strict}");
    let docs = template(&[
        "--set",
        "member.egress.allowLoopback=true",
        "--set",
        "member.egress.allowCidrs={169.254.10.0/24,fd00:ec2::254}",
    ]);
    let args = args_of(find(&docs, "Deployment", "petrel"));
    for flag in ["--egress-allow-loopback", "--egress-allow-cidr=169.254.10.0/24", "--egress-allow-cidr=fd00:ec2::254"]
    {
        assert!(args.contains(&flag.to_string()), "{flag} not in {args:?}");
    }
}

#[test]
fn the_hub_rendering_reads_secrets_only_where_kubeconfigs_live() {
    let docs = template(&["--set", "mode=hub", "--set", "serviceMonitor.enabled=true"]);
    let deployment = find(&docs, "Deployment", "petrel");
    assert_hardened_and_probed(deployment);
    let args = args_of(deployment);
    assert!(
        args.contains(&"--mode=hub".to_string()) && args.contains(&"--leader-election-lease-name=petrel-hub".into())
    );
    assert!(!args.iter().any(|a| a.starts_with("--provider")), "member flags on the hub: {args:?}");

    assert!(!docs.iter().any(|d| d["metadata"]["name"] == "petrel-member"), "{:?}", kinds(&docs));
    let granted = grants(find(&docs, "ClusterRole", "petrel-hub"));
    assert!(
        !granted.keys().any(|(group, resource)| group.is_empty() && resource == "secrets"),
        "cluster-wide secrets: {granted:?}"
    );
    assert!(granted.contains_key(&("petrel.dev".to_string(), "rollouts/status".to_string())), "{granted:?}");
    let kubeconfigs = find(&docs, "Role", "petrel-hub-kubeconfigs");
    assert_eq!(kubeconfigs["metadata"]["namespace"], RELEASE_NAMESPACE);
    assert_eq!(kubeconfigs["rules"], json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]));

    // The ServiceMonitor scrapes the metrics Service, which selects the Deployment's pods.
    let monitor = find(&docs, "ServiceMonitor", "petrel");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    let service = find(&docs, "Service", "petrel-metrics");
    let selects =
        |selector: &Value, labels: &Value| selector.as_object().expect("selector").iter().all(|(k, v)| labels[k] == *v);
    assert!(selects(&monitor["spec"]["selector"]["matchLabels"], &service["metadata"]["labels"]));
    assert!(selects(&service["spec"]["selector"], &deployment["spec"]["template"]["metadata"]["labels"]));
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "metrics");

    let elsewhere = template(&["--set", "mode=hub", "--set", "hub.kubeconfigSecretNamespaces={fleet-a,fleet-b}"]);
    let namespaces: BTreeSet<&str> = elsewhere
        .iter()
        .filter(|d| d["kind"] == "Role" && d["metadata"]["name"] == "petrel-hub-kubeconfigs")
        .filter_map(|d| d["metadata"]["namespace"].as_str())
        .collect();
    assert_eq!(namespaces, BTreeSet::from(["fleet-a", "fleet-b"]));
}

#[test]
fn the_reconcile_bound_becomes_one_flag() {
    let bound = |docs: &[Value]| -> Vec<String> {
        args_of(find(docs, "Deployment", "petrel"))
            .into_iter()
            .filter(|a| a.starts_with("--max-concurrent-reconciles"))
            .collect()
    };
    assert_eq!(bound(&template(&[])), ["--max-concurrent-reconciles=0"], "the chart's default");
    assert_eq!(bound(&template(&["--set", "member.maxConcurrentReconciles=32"])), ["--max-concurrent-reconciles=32"]);
    assert!(bound(&template(&["--set", "mode=hub"])).is_empty(), "a member flag on the hub");
}

#[test]
fn the_initialization_bound_becomes_one_flag() {
    let bound = |docs: &[Value]| -> Vec<String> {
        args_of(find(docs, "Deployment", "petrel"))
            .into_iter()
            .filter(|a| a.starts_with("--max-concurrent-initializations"))
            .collect()
    };
    assert_eq!(bound(&template(&[])), ["--max-concurrent-initializations=64"], "the chart's default");
    assert_eq!(
        bound(&template(&["--set", "member.maxConcurrentInitializations=0"])),
        ["--max-concurrent-initializations=0"]
    );
    assert!(bound(&template(&["--set", "mode=hub"])).is_empty(), "a member flag on the hub");
}

#[test]
fn the_api_connections_become_one_flag_in_either_mode() {
    let connections = |docs: &[Value]| -> Vec<String> {
        args_of(find(docs, "Deployment", "petrel")).into_iter().filter(|a| a.starts_with("--api-connections")).collect()
    };
    assert_eq!(connections(&template(&[])), ["--api-connections=4"], "the chart's default");
    assert_eq!(connections(&template(&["--set", "apiConnections=1"])), ["--api-connections=1"]);
    assert_eq!(connections(&template(&["--set", "mode=hub", "--set", "apiConnections=2"])), ["--api-connections=2"]);
}

#[test]
fn member_shards_become_a_statefulset_with_one_lease_per_shard() {
    let lease_names = |docs: &[Value]| -> Vec<String> {
        let role = find(docs, "Role", "petrel-leader-election");
        role["rules"].as_array().expect("rules").iter().flat_map(|r| strings(&r["resourceNames"])).collect()
    };
    let shard_args = |workload: &Value| -> Vec<String> {
        args_of(workload).into_iter().filter(|a| a.starts_with("--shards")).collect()
    };

    // The default: one Deployment, one Lease, no --shards.
    let single = template(&[]);
    assert!(!kinds(&single).iter().any(|k| k.starts_with("StatefulSet/")), "{:?}", kinds(&single));
    assert!(shard_args(find(&single, "Deployment", "petrel")).is_empty());
    assert_eq!(lease_names(&single), ["petrel-member"]);

    let sharded = template(&["--set", "member.shards=3", "--set", "replicas=1"]);
    assert!(!kinds(&sharded).iter().any(|k| k.starts_with("Deployment/")), "{:?}", kinds(&sharded));
    let set = find(&sharded, "StatefulSet", "petrel");
    assert_eq!(set["spec"]["replicas"], 3, "one replica per shard, whatever replicas says");
    assert_eq!(set["spec"]["podManagementPolicy"], "Parallel", "every replica starts at once");
    assert_eq!(set["spec"]["serviceName"], "petrel-metrics");
    assert_hardened_and_probed(set);
    assert_eq!(shard_args(set), ["--shards=3"]);
    // The shard comes from the Pod name's ordinal (POD_NAME, checked above), not a flag.
    assert!(!args_of(set).iter().any(|a| a.starts_with("--shard-index")));
    assert!(args_of(set).contains(&"--leader-elect".to_string()));
    assert_eq!(lease_names(&sharded), ["petrel-member-shard-0", "petrel-member-shard-1", "petrel-member-shard-2"]);

    // The hub has no shards: the member value changes nothing there.
    let hub = template(&["--set", "mode=hub", "--set", "member.shards=3"]);
    assert!(shard_args(find(&hub, "Deployment", "petrel")).is_empty());

    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    for (args, says) in [
        (&["--set", "member.shards=0"][..], "/member/shards"),
        (
            &["--set", "member.shards=3", "--set", "leaderElection.enabled=false"][..],
            "member.shards > 1 needs leaderElection.enabled",
        ),
    ] {
        let mut all = vec!["template", "petrel", chart];
        all.extend_from_slice(args);
        let out = run(&helm(), &all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "helm template {args:?} rendered");
        assert!(stderr.contains(says), "helm template {args:?} failed without naming {says:?}: {stderr}");
    }
}

#[test]
fn the_values_schema_and_the_chart_refuse_bad_values() {
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    // The control: the same command with good values renders.
    assert!(run(&helm(), &["template", "petrel", chart, "--set", "replicas=2", "--set", "mode=hub"]).status.success());
    for (args, says) in [
        (&["--set", "mode=bogus"][..], "/mode"),
        (&["--set-string", "replicas=x"][..], "/replicas"),
        (&["--set", "serviceMonitor.enable=true"][..], "'enable' not allowed"),
        (&["--set", "securityContext.allowPrivilegeEscalation=true"][..], "/securityContext/allowPrivilegeEscalation"),
        (&["--set", "member.provider=linkerd2"][..], "/member/provider"),
        (&["--set", "replicas=2", "--set", "leaderElection.enabled=false"][..], "needs leaderElection.enabled"),
        (&["--set", "leaderElection.renewBeforeSeconds=15"][..], "renewBeforeSeconds must be smaller"),
        (&["--set", "member.egress.allowCidrs={everything}"][..], "/member/egress/allowCidrs/0"),
        (&["--set", "member.maxConcurrentReconciles=-1"][..], "/member/maxConcurrentReconciles"),
        (&["--set", "member.maxConcurrentInitializations=-1"][..], "/member/maxConcurrentInitializations"),
        (&["--set", "apiConnections=0"][..], "/apiConnections"),
    ] {
        let mut all = vec!["template", "petrel", chart];
        all.extend_from_slice(args);
        let out = run(&helm(), &all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "helm template {args:?} rendered");
        assert!(stderr.contains(says), "helm template {args:?} failed without naming {says:?}: {stderr}");
    }
    // Every provider the schema accepts is one petrel knows.
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(chart_dir().join("values.schema.json")).unwrap()).unwrap();
    let providers = strings(&schema["properties"]["member"]["properties"]["provider"]["enum"]);
    assert!(providers.len() >= 8, "{providers:?}");
    for provider in providers {
        assert!(
            petrel::core::provider::Provider::parse(&provider).is_ok(),
            "the schema accepts {provider}, petrel does not"
        );
    }
}

// ---------------------------------------------------------------------------------------
// helm install into a real control plane

struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    fn output(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running kubectl {args:?}: {e}"))
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(out.status.success(), "kubectl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// What `kubectl auth can-i --as=system:serviceaccount:<sa>` asks, as a SubjectAccessReview:
/// the ServiceAccount's user name and the groups its token authenticates with.
/// `resource` is `<resource>[.<group>][/<name>][:<subresource>]`.
async fn can_i(
    client: &kube::Client,
    service_account: &str,
    verb: &str,
    resource: &str,
    namespace: Option<&str>,
) -> Result<bool> {
    let (resource, subresource) = match resource.split_once(':') {
        Some((resource, sub)) => (resource, Some(sub.to_string())),
        None => (resource, None),
    };
    let (resource, name) = match resource.split_once('/') {
        Some((resource, name)) => (resource, Some(name.to_string())),
        None => (resource, None),
    };
    let (resource, group) = match resource {
        "*" => ("*", "*"),
        _ => resource.split_once('.').unwrap_or((resource, "")),
    };
    let sa_namespace = service_account.split(':').next().unwrap_or_default();
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(format!("system:serviceaccount:{service_account}")),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{sa_namespace}"),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                subresource,
                name,
                namespace: namespace.map(str::to_string),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .with_context(|| format!("reviewing {verb} {resource}"))?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// (verb, `<resource>[/<name>][:<subresource>]`, namespace: None = every namespace)
type Check = (&'static str, String, Option<&'static str>);

fn check(verb: &'static str, resource: &str, namespace: Option<&'static str>) -> Check {
    (verb, resource.to_string(), namespace)
}

/// Asks every check (concurrently) and returns the ones whose answer is not `expected`.
async fn wrong_answers(
    client: &kube::Client,
    service_account: &str,
    checks: &[Check],
    expected: bool,
) -> Result<Vec<String>> {
    let answers = futures::future::try_join_all(
        checks.iter().map(|(verb, resource, namespace)| can_i(client, service_account, verb, resource, *namespace)),
    )
    .await?;
    Ok(checks
        .iter()
        .zip(answers)
        .filter(|(_, answer)| *answer != expected)
        .map(|((verb, resource, namespace), _)| {
            format!("{verb} {resource} in {}", namespace.unwrap_or("all namespaces"))
        })
        .collect())
}

fn member_needs() -> Vec<Check> {
    let mut checks = vec![
        check("list", "canaries.petrel.dev", None),
        check("watch", "canaries.petrel.dev", None),
        check("patch", "canaries.petrel.dev:status", Some("apps")),
        // The finalizer petrel.dev/handover, and whether a Canary's namespace is going.
        check("patch", "canaries.petrel.dev", Some("apps")),
        check("get", "namespaces", None),
        check("list", "services", Some("apps")),
        check("get", "metrictemplates.petrel.dev", Some("apps")),
        check("get", "alertproviders.petrel.dev", Some("apps")),
        check("watch", "metrictemplates.petrel.dev", None),
        check("watch", "alertproviders.petrel.dev", None),
        check("watch", "services", None),
        check("watch", "deployments.apps", None),
        check("create", "deployments.apps", Some("apps")),
        check("patch", "deployments.apps", Some("apps")),
        check("list", "controllerrevisions.apps", Some("apps")),
        check("patch", "controllerrevisions.apps", Some("apps")),
        check("delete", "controllerrevisions.apps", Some("apps")),
        check("watch", "configmaps", None),
        check("patch", "configmaps", Some("apps")),
        check("watch", "secrets", None),
        check("create", "secrets", Some("apps")),
        check("create", "services", Some("apps")),
        check("patch", "services", Some("apps")),
        check("patch", "horizontalpodautoscalers.autoscaling", Some("apps")),
        check("patch", "scaledobjects.keda.sh", Some("apps")),
        check("delete", "ingresses.networking.k8s.io", Some("apps")),
        check("create", "events.events.k8s.io", Some("apps")),
        check("patch", "events.events.k8s.io", Some("apps")),
        check("create", "leases.coordination.k8s.io", Some(RELEASE_NAMESPACE)),
        check("get", "leases.coordination.k8s.io/petrel-member", Some(RELEASE_NAMESPACE)),
        check("patch", "leases.coordination.k8s.io/petrel-member", Some(RELEASE_NAMESPACE)),
        check("get", "keptnmetrics.metrics.keptn.sh", Some("apps")),
        // Its ClusterIdentity, from the kube-system UID and the identity ConfigMap.
        check("create", "clusteridentities.petrel.dev", None),
        check("patch", "clusteridentities.petrel.dev/petrel", None),
        check("get", "namespaces/kube-system", None),
        check("watch", "configmaps/petrel-cluster-identity", Some(RELEASE_NAMESPACE)),
    ];
    for resource in petrel::routers::third_party_resources() {
        for verb in ["get", "create", "patch", "delete"] {
            checks.push(check(verb, &format!("{}.{}", resource.plural, resource.group), Some("apps")));
        }
    }
    checks
}

fn member_must_not() -> Vec<Check> {
    vec![
        check("delete", "deployments.apps", Some("apps")),
        check("update", "deployments.apps", Some("apps")),
        check("create", "pods", Some("apps")),
        check("delete", "pods", Some("apps")),
        check("create", "pods:exec", Some("apps")),
        check("delete", "secrets", Some("apps")),
        check("delete", "configmaps", Some("apps")),
        check("delete", "services", Some("apps")),
        check("delete", "canaries.petrel.dev", Some("apps")),
        check("update", "canaries.petrel.dev", Some("apps")),
        check("patch", "metrictemplates.petrel.dev", Some("apps")),
        check("list", "rollouts.petrel.dev", None),
        check("patch", "clusters.petrel.dev:status", None),
        check("delete", "namespaces", None),
        check("get", "nodes", None),
        check("create", "customresourcedefinitions.apiextensions.k8s.io", None),
        check("escalate", "clusterroles.rbac.authorization.k8s.io", None),
        check("bind", "clusterroles.rbac.authorization.k8s.io", None),
        check("create", "clusterrolebindings.rbac.authorization.k8s.io", None),
        check("create", "rolebindings.rbac.authorization.k8s.io", Some("apps")),
        check("impersonate", "serviceaccounts", Some("apps")),
        check("create", "serviceaccounts:token", Some(RELEASE_NAMESPACE)),
        check("create", "leases.coordination.k8s.io", Some("kube-system")),
        check("patch", "leases.coordination.k8s.io/petrel-hub", Some(RELEASE_NAMESPACE)),
        check("delete", "leases.coordination.k8s.io/petrel-member", Some(RELEASE_NAMESPACE)),
        check("patch", "clusteridentities.petrel.dev/another", None),
        check("delete", "clusteridentities.petrel.dev/petrel", None),
        // Namespaces are only read one at a time (kube-system's UID; whether a deleted
        // Canary's namespace is going), never listed or watched.
        check("list", "namespaces", None),
        check("watch", "namespaces", None),
        check("*", "*", None),
    ]
}

fn hub_needs() -> Vec<Check> {
    vec![
        check("watch", "rollouts.petrel.dev", None),
        check("list", "clusters.petrel.dev", None),
        check("watch", "clusters.petrel.dev", None),
        check("patch", "rollouts.petrel.dev:status", Some("apps")),
        check("patch", "clusters.petrel.dev:status", None),
        check("create", "events.events.k8s.io", Some("apps")),
        check("get", "secrets", Some(HUB_NAMESPACE)),
        check("create", "leases.coordination.k8s.io", Some(HUB_NAMESPACE)),
        check("patch", "leases.coordination.k8s.io/petrel-hub-hub", Some(HUB_NAMESPACE)),
    ]
}

fn hub_must_not() -> Vec<Check> {
    vec![
        check("get", "secrets", Some("default")),
        check("get", "secrets", Some(RELEASE_NAMESPACE)),
        check("list", "secrets", Some(HUB_NAMESPACE)),
        check("watch", "secrets", None),
        check("patch", "rollouts.petrel.dev", Some("apps")),
        check("delete", "clusters.petrel.dev", None),
        check("list", "canaries.petrel.dev", None),
        check("get", "deployments.apps", Some("apps")),
        check("create", "pods", Some("apps")),
        check("delete", "namespaces", None),
        check("escalate", "clusterroles.rbac.authorization.k8s.io", None),
        check("bind", "clusterroles.rbac.authorization.k8s.io", None),
        check("impersonate", "users", None),
        check("patch", "leases.coordination.k8s.io/petrel-member", Some(RELEASE_NAMESPACE)),
        check("*", "*", None),
    ]
}

struct Operator {
    child: Child,
    /// petrel from the image: its container.
    container: Option<Container>,
    log: PathBuf,
}

impl Operator {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A pod's termination: SIGTERM (to the container's petrel, or to the host process),
    /// then SIGKILL after `grace`.
    fn terminate(&mut self, grace: Duration) -> Result<()> {
        if let Some(container) = &self.container {
            return container.stop(grace);
        }
        let pid = libc::pid_t::try_from(self.child.id()).context("the child's pid")?;
        // SAFETY: kill(2) on our own child's pid; it is not reaped yet, so the pid is ours.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(container) = &self.container {
            container.remove();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("===== petrel log ({}) =====\n{}", self.log.display(), self.log());
        }
    }
}

impl Operator {
    /// Nothing petrel tried was refused: a refused Event or status write is only logged.
    fn assert_never_refused(&mut self) -> Result<()> {
        let log = self.log();
        ensure!(!log.to_lowercase().contains("forbidden"), "petrel was refused something:\n{log}");
        ensure!(self.child.try_wait()?.is_none(), "petrel exited:\n{log}");
        Ok(())
    }
}

/// What starts the real petrel as an installed release would run it.
struct Release<'a> {
    helm: &'a Path,
    kubectl: &'a Kubectl,
    launcher: Launcher,
    dir: &'a Path,
}

impl Release<'_> {
    /// Runs `petrel` with the arguments of the release's Deployment (as `helm get manifest`
    /// shows them) and only its ServiceAccount's token, as the pod would run.
    fn run_petrel(&self, release: &str, namespace: &str, service_account: &str, pod_name: &str) -> Result<Operator> {
        let cluster =
            ChartCluster { helm: self.helm, kubectl: &self.kubectl.bin, kubeconfig: &self.kubectl.kubeconfig };
        let args = cluster.petrel_args(release, namespace, service_account, self.dir)?;
        ensure!(args.contains(&"--leader-elect".to_string()), "the chart's arguments lost --leader-elect: {args:?}");
        let log = self.dir.join(format!("{release}-{pod_name}.log"));
        let file = std::fs::File::create(&log)?;
        let env = [("POD_NAME", pod_name), ("POD_NAMESPACE", namespace), ("RUST_LOG", "info,petrel=debug,kube=warn")];
        let (mut command, container) = self.launcher.command(&args, &env);
        command.stdin(Stdio::null()).stdout(file.try_clone()?).stderr(file);
        Ok(Operator { child: spawn_tied_to_process(command)?, container, log })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_serves_the_crds_and_grants_petrel_exactly_what_it_needs() -> Result<()> {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("petrel-e2e-helm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let helm = tokio::task::spawn_blocking(helm).await?;
    let operator_binary = tokio::task::spawn_blocking(petrel_binary).await??;
    let bin_dir = tokio::task::spawn_blocking(ensure_binaries).await??;
    let mut opts = FleetOptions::new(dir.join("fleet"), ["helm"]);
    opts.bin_dir = Some(bin_dir);
    opts.nodes_per_cluster = 1;
    let fleet = Fleet::start(opts).await.context("starting the control plane")?;
    let cluster = fleet.cluster("helm")?;
    let client = cluster.client().await?;
    let kubectl = Kubectl { bin: fleet.binaries().path("kubectl"), kubeconfig: cluster.kubeconfig_path.clone() };
    let kubeconfig = cluster.kubeconfig_path.to_string_lossy().into_owned();
    let chart = chart_dir().to_string_lossy().into_owned();
    eprintln!("[helm] control plane up after {:.1?}", started.elapsed());

    // The route kinds' CRDs, so can-i resolves them as a user's cluster with the meshes would.
    let third_party = workspace_root().join("e2e/crds/third-party").to_string_lossy().into_owned();
    kubectl.ok(&["apply", "--server-side", "-f", &third_party]);
    for ns in ["apps", APP_NAMESPACE] {
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": ns}}))?)
            .await?;
    }

    // Both modes, as a hub cluster that is also a member would run them. --wait: the
    // Deployments become available (kwok runs their pods).
    let install = |release: &str, namespace: &str, extra: &[&str]| {
        let mut args = vec![
            "install",
            release,
            chart.as_str(),
            "--kubeconfig",
            kubeconfig.as_str(),
            "-n",
            namespace,
            "--create-namespace",
            "--wait",
            "--timeout",
            "120s",
            "--set",
            "clusterName=helm-e2e",
        ];
        args.extend_from_slice(extra);
        let t0 = Instant::now();
        let out = stdout_of(&helm, &args);
        eprintln!("[helm] helm install {release} in {:.1?}", t0.elapsed());
        out
    };
    install("petrel", RELEASE_NAMESPACE, &[]);
    install("petrel-hub", HUB_NAMESPACE, &["--set", "mode=hub"]);

    // The CRDs of the chart are served (established, listable).
    let served = kubectl.ok(&["api-resources", "--api-group=petrel.dev", "-o", "name"]);
    for plural in ["canaries", "metrictemplates", "alertproviders", "rollouts", "clusters", "clusteridentities"] {
        let resource = format!("{plural}.petrel.dev");
        assert!(served.lines().any(|l| l == resource), "{resource} not served: {served}");
        kubectl.ok(&["get", &resource, "-A"]);
    }
    let deployment: Deployment = Api::namespaced(client.clone(), RELEASE_NAMESPACE).get("petrel").await?;
    assert_eq!(deployment.status.and_then(|s| s.available_replicas), Some(1), "helm --wait returned early");

    // RBAC: what petrel's code calls, yes; a sample of what it must never do, no. Asked as
    // SubjectAccessReviews (what `kubectl auth can-i --as` sends), concurrently: a kubectl
    // process per question costs a quarter second of CPU each.
    let t0 = Instant::now();
    let member = format!("{RELEASE_NAMESPACE}:petrel");
    let hub = format!("{HUB_NAMESPACE}:petrel-hub");
    let mut wrong = Vec::new();
    for (who, checks, expected, label) in [
        (&member, member_needs(), true, "member cannot"),
        (&member, member_must_not(), false, "member can"),
        (&hub, hub_needs(), true, "hub cannot"),
        (&hub, hub_must_not(), false, "hub can"),
    ] {
        wrong.extend(wrong_answers(&client, who, &checks, expected).await?.into_iter().map(|w| format!("{label} {w}")));
    }
    assert!(wrong.is_empty(), "RBAC answers:\n{}", wrong.join("\n"));
    eprintln!(
        "[helm] {} can-i checks in {:.1?}",
        member_needs().len() + member_must_not().len() + hub_needs().len() + hub_must_not().len(),
        t0.elapsed()
    );

    // The proof RBAC suffices: the real petrel, with the chart's own arguments and only the
    // member ServiceAccount's token, initializes a Canary.
    let release = Release { helm: &helm, kubectl: &kubectl, launcher: Launcher::Binary(operator_binary), dir: &dir };
    let mut operator = release.run_petrel("petrel", RELEASE_NAMESPACE, "petrel", "petrel-e2e")?;

    let ssa = PatchParams::apply("e2e-test").force();
    Api::<ConfigMap>::namespaced(client.clone(), APP_NAMESPACE)
        .patch(
            CONFIG_MAP,
            &ssa,
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CONFIG_MAP}, "data": {"A": "b"}}),
            ),
        )
        .await?;
    Api::<Deployment>::namespaced(client.clone(), APP_NAMESPACE)
        .patch(APP, &ssa, &Patch::Apply(podinfo_deployment(IMAGE_V0)))
        .await?;
    let canaries: Api<Canary> = Api::namespaced(client.clone(), APP_NAMESPACE);
    canaries.patch(APP, &ssa, &Patch::Apply(CanaryOptions::canary(Provider::Kubernetes).manifest())).await?;

    let t0 = Instant::now();
    let initialized = eventually("the Canary to be Initialized", Duration::from_secs(90), async || {
        if let Ok(Some(status)) = operator.child.try_wait() {
            return Some(Err(anyhow::anyhow!("petrel exited ({status})")));
        }
        let phase = canaries.get(APP).await.ok()?.status?.phase;
        (phase == Phase::Initialized).then_some(Ok(()))
    })
    .await
    .and_then(|exited| exited);
    if let Err(e) = initialized {
        bail!("{e:#}; petrel's log:\n{}", operator.log());
    }
    eprintln!("[helm] Canary Initialized {:.1?} after petrel started", t0.elapsed());

    // What initializing wrote, each through a grant of the chart.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), APP_NAMESPACE);
    ensure!(deployments.get_opt(&format!("{APP}-primary")).await?.is_some(), "no primary Deployment");
    let services: Api<Service> = Api::namespaced(client.clone(), APP_NAMESPACE);
    for name in [APP.to_string(), format!("{APP}-primary"), format!("{APP}-canary")] {
        ensure!(services.get_opt(&name).await?.is_some(), "no Service {name}");
    }
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), APP_NAMESPACE);
    ensure!(config_maps.get_opt(&format!("{CONFIG_MAP}-primary")).await?.is_some(), "no primary ConfigMap copy");
    let lease = Api::<Lease>::namespaced(client.clone(), RELEASE_NAMESPACE).get("petrel-member").await?;
    assert_eq!(lease.spec.and_then(|s| s.holder_identity).as_deref(), Some("petrel-e2e"));

    // Who this cluster is, published with the chart's grants only: the platform team's
    // ConfigMap (written after petrel started: it is watched), the kube-system UID.
    Api::<ConfigMap>::namespaced(client.clone(), RELEASE_NAMESPACE)
        .patch(
            "petrel-cluster-identity",
            &ssa,
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "petrel-cluster-identity"}, "data": {"region": "eu-west-1", "env": "staging"}})),
        )
        .await?;
    let identities: Api<ClusterIdentity> = Api::all(client.clone());
    let identity = eventually("the ClusterIdentity with the ConfigMap's labels", Duration::from_secs(30), async || {
        let identity = identities.get_opt("petrel").await.ok()??;
        (identity.spec.labels.get("region").map(String::as_str) == Some("eu-west-1")).then_some(identity)
    })
    .await
    .with_context(|| format!("petrel's log:\n{}", operator.log()))?;
    let kube_system = Api::<Namespace>::all(client.clone()).get("kube-system").await?;
    assert_eq!(identity.spec.cluster_name, "helm-e2e");
    assert_eq!(Some(identity.spec.kube_system_uid.clone()), kube_system.metadata.uid);
    assert_eq!(identity.spec.labels.get("env").map(String::as_str), Some("staging"));
    let events = eventually("an Event about the Canary", Duration::from_secs(30), async || {
        let events = Api::<Event>::namespaced(client.clone(), APP_NAMESPACE).list(&ListParams::default()).await.ok()?;
        let ours: Vec<String> = events
            .items
            .into_iter()
            .filter(|e| e.reporting_controller.as_deref() == Some("petrel"))
            .filter_map(|e| e.reason)
            .collect();
        (!ours.is_empty()).then_some(ours)
    })
    .await?;
    eprintln!("[helm] petrel recorded Events {events:?}");

    operator.assert_never_refused()?;

    // The hub, likewise with the hub release's arguments and token: it reads the member's
    // kubeconfig Secret from its namespace, reaches the member (this same cluster) and
    // writes the Rollout's status.
    let mut hub_operator = release.run_petrel("petrel-hub", HUB_NAMESPACE, "petrel-hub", "petrel-hub-e2e")?;
    Api::<Secret>::namespaced(client.clone(), HUB_NAMESPACE)
        .patch(
            "self",
            &ssa,
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "self"},
                "stringData": {"kubeconfig": std::fs::read_to_string(&cluster.kubeconfig_path)?},
            })),
        )
        .await?;
    Api::<Cluster>::all(client.clone())
        .patch(
            "self",
            &ssa,
            &Patch::Apply(json!({
                "apiVersion": "petrel.dev/v1alpha1", "kind": "Cluster",
                "metadata": {"name": "self", "labels": {"role": "canary"}},
                "spec": {"kubeconfigSecretRef": {"name": "self", "namespace": HUB_NAMESPACE}},
            })),
        )
        .await?;
    let rollouts: Api<Rollout> = Api::namespaced(client.clone(), "apps");
    rollouts
        .patch(
            APP,
            &ssa,
            &Patch::Apply(json!({
                "apiVersion": "petrel.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": APP},
                "spec": {
                    "canaryRef": {"namespace": APP_NAMESPACE, "name": APP},
                    "waves": [{"name": "canary", "clusterSelector": {"matchLabels": {"role": "canary"}}}],
                },
            })),
        )
        .await?;
    let t0 = Instant::now();
    let reached = eventually("the hub to report the member's Canary", Duration::from_secs(60), async || {
        if let Ok(Some(status)) = hub_operator.child.try_wait() {
            return Some(Err(anyhow::anyhow!("petrel --mode hub exited ({status})")));
        }
        let status = rollouts.get(APP).await.ok()?.status?;
        let member = status.members.into_iter().find(|m| m.cluster == "self")?;
        (member.phase == Some(Phase::Initialized)).then_some(Ok(()))
    })
    .await
    .and_then(|exited| exited);
    if let Err(e) = reached {
        bail!("{e:#}; the hub's log:\n{}", hub_operator.log());
    }
    eprintln!("[helm] the hub reported the member's Canary {:.1?} after it started", t0.elapsed());
    let lease = Api::<Lease>::namespaced(client.clone(), HUB_NAMESPACE).get("petrel-hub-hub").await?;
    assert_eq!(lease.spec.and_then(|s| s.holder_identity).as_deref(), Some("petrel-hub-e2e"));
    hub_operator.assert_never_refused()?;
    operator.assert_never_refused()?;
    drop(hub_operator);
    drop(operator);

    eprintln!("[helm] done in {:.1?}", started.elapsed());
    drop(fleet);
    if std::env::var_os("PETREL_E2E_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

#[test]
fn the_default_image_is_the_one_scripts_image_builds() {
    let docs = template(&[]);
    let image = container(find(&docs, "Deployment", "petrel"))["image"].as_str().expect("an image").to_string();
    assert_eq!(image, petrel_e2e::image::image_reference().expect("scripts/image --print-ref"));
}

// ---------------------------------------------------------------------------------------
// helm upgrade from the previous chart version, a Canary in flight

/// The previous release: the git revision in `e2e/previous-release` (petrel has published
/// no release yet, so it is the last revision that landed on main before the current work;
/// after a release, the release's tag). Its chart comes from git history, its binary from
/// `scripts/previous-petrel` (built once per revision and cached).
fn previous_release() -> Result<String> {
    let path = workspace_root().join("e2e/previous-release");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let rev = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#')).unwrap_or_default();
    ensure!(
        rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit()),
        "{} must hold a full git revision, found {rev:?}",
        path.display()
    );
    Ok(rev.to_string())
}

/// The previous release's `petrel` binary (`scripts/previous-petrel`).
fn previous_petrel() -> Result<PathBuf> {
    let script = workspace_root().join("scripts/previous-petrel");
    let out = Command::new(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    ensure!(out.status.success(), "{} failed ({})", script.display(), out.status);
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    ensure!(path.is_file(), "{} printed {}, which is not a file", script.display(), path.display());
    Ok(path)
}

/// The `openAPIV3Schema` of every version of the CRD `name` in `charts/petrel/crds/`.
fn chart_crd_schemas(name: &str) -> Result<Value> {
    for entry in std::fs::read_dir(chart_dir().join("crds"))? {
        let path = entry?.path();
        for doc in chart::parse_documents(&std::fs::read_to_string(&path)?)? {
            if doc["kind"] == "CustomResourceDefinition" && doc["metadata"]["name"] == name {
                return Ok(crd_schemas(&doc));
            }
        }
    }
    bail!("no CRD {name} in the chart")
}

/// The name and schema of every version of `crd`, with every number as a float: the API
/// server answers `100` where the YAML file says `100.0`, which is the same schema.
fn crd_schemas(crd: &Value) -> Value {
    fn numbers_as_floats(value: &Value) -> Value {
        match value {
            Value::Number(n) => n.as_f64().map_or(Value::Null, |f| json!(f)),
            Value::Array(items) => Value::Array(items.iter().map(numbers_as_floats).collect()),
            Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), numbers_as_floats(v))).collect()),
            other => other.clone(),
        }
    }
    let versions = crd["spec"]["versions"].as_array().cloned().unwrap_or_default();
    numbers_as_floats(&Value::Array(
        versions.iter().map(|v| json!({"name": v["name"], "schema": v["schema"]})).collect(),
    ))
}

/// The first path where `a` and `b` differ, for a readable failure.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => x.keys().chain(y.keys()).find_map(|k| {
            first_difference(x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null), &format!("{path}.{k}"))
        }),
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).enumerate().find_map(|(i, (p, q))| first_difference(p, q, &format!("{path}[{i}]")))
        }
        _ if a == b => None,
        _ => Some(format!("{path}: served {a}, chart {b}")),
    }
}

/// `charts/petrel` at `rev`, extracted from git history into `dir`.
fn chart_at(rev: &str, dir: &Path) -> Result<PathBuf> {
    let root = workspace_root();
    let archive = Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["archive", "--format=tar", rev, "charts/petrel"])
        .stdin(Stdio::null())
        .output()
        .context("running git archive")?;
    ensure!(
        archive.status.success(),
        "git archive {rev} charts/petrel failed (this test needs the git history: a clone, and in CI \
         actions/checkout with fetch-depth: 0): {}",
        String::from_utf8_lossy(&archive.stderr)
    );
    std::fs::create_dir_all(dir)?;
    let mut tar = Command::new("tar").arg("-x").arg("-C").arg(dir).stdin(Stdio::piped()).spawn()?;
    std::io::Write::write_all(tar.stdin.as_mut().context("tar's stdin")?, &archive.stdout)?;
    ensure!(tar.wait()?.success(), "extracting the previous chart");
    Ok(dir.join("charts/petrel"))
}

/// The previous release's chart and its own `petrel` binary start a release; the CRDs and
/// the chart are upgraded mid-release and the new pod (this checkout's image) takes the Lease
/// over and finishes the release without a step repeated or skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_upgrade_from_the_previous_chart_keeps_a_canary_in_flight_going() -> Result<()> {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("petrel-e2e-helm-upgrade-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let previous_rev = previous_release()?;
    let previous = chart_at(&previous_rev, &dir.join("previous"))?;
    let previous_binary = tokio::task::spawn_blocking(previous_petrel).await??;
    let helm = tokio::task::spawn_blocking(helm).await?;
    let image = tokio::task::spawn_blocking(petrel_e2e::image::ensure_image).await??;
    let bin_dir = tokio::task::spawn_blocking(ensure_binaries).await??;
    let mut opts = FleetOptions::new(dir.join("fleet"), ["upgrade"]);
    opts.bin_dir = Some(bin_dir);
    opts.nodes_per_cluster = 1;
    let fleet = Fleet::start(opts).await.context("starting the control plane")?;
    let cluster = fleet.cluster("upgrade")?;
    let client = cluster.client().await?;
    let kubectl = Kubectl { bin: fleet.binaries().path("kubectl"), kubeconfig: cluster.kubeconfig_path.clone() };
    let third_party = workspace_root().join("e2e/crds/third-party").to_string_lossy().into_owned();
    kubectl.ok(&["apply", "--server-side", "-f", &third_party]);
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": APP_NAMESPACE}}))?)
        .await?;

    // The previous chart, and petrel running as its pod would.
    let chart = ChartCluster { helm: &helm, kubectl: &kubectl.bin, kubeconfig: &kubectl.kubeconfig };
    let values = [("member.provider", "gatewayapi"), ("clusterName", "upgrade")];
    chart.helm_install("install", "petrel", &previous, RELEASE_NAMESPACE, &values)?;
    let old_release =
        Release { helm: &helm, kubectl: &kubectl, launcher: Launcher::Binary(previous_binary), dir: &dir };
    let mut old = old_release.run_petrel("petrel", RELEASE_NAMESPACE, "petrel", "petrel-old")?;

    // A Canary with steps of 10% every 4 s up to 50% and no metrics: in flight for ~25 s.
    let ssa = PatchParams::apply("e2e-test").force();
    Api::<ConfigMap>::namespaced(client.clone(), APP_NAMESPACE)
        .patch(
            CONFIG_MAP,
            &ssa,
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CONFIG_MAP}, "data": {"A": "b"}}),
            ),
        )
        .await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), APP_NAMESPACE);
    deployments.patch(APP, &ssa, &Patch::Apply(podinfo_deployment(IMAGE_V0))).await?;
    let options = CanaryOptions {
        interval: "4s".into(),
        step_weight: Some(10),
        max_weight: Some(50),
        success_rate_min: None,
        ..CanaryOptions::canary(Provider::GatewayApi)
    };
    let canaries: Api<Canary> = Api::namespaced(client.clone(), APP_NAMESPACE);
    canaries.patch(APP, &ssa, &Patch::Apply(options.manifest())).await?;
    let initialized = eventually("the Canary to be Initialized", Duration::from_secs(90), async || {
        (canaries.get(APP).await.ok()?.status?.phase == Phase::Initialized).then_some(())
    })
    .await;
    if let Err(e) = initialized {
        bail!("{e:#}; petrel's log:\n{}", old.log());
    }
    deployments.patch(APP, &ssa, &Patch::Apply(podinfo_deployment(IMAGE_V1))).await?;
    let in_flight = eventually("the release to be in flight", Duration::from_secs(60), async || {
        let status = canaries.get(APP).await.ok()?.status?;
        (status.phase == Phase::Progressing && status.canary_weight > 0).then_some(status.canary_weight)
    })
    .await;
    let weight_before = match in_flight {
        Ok(weight) => weight,
        Err(e) => bail!("{e:#}; petrel's log:\n{}", old.log()),
    };
    // Every weight from here on is recorded, through the upgrade and the hand-over: the old
    // petrel keeps stepping while the CRDs and the chart are upgraded, which takes longer
    // than a step on a loaded machine. One task polls (each GET is a quorum read, so what
    // it records is in order) and is the only writer.
    let weights_seen = std::sync::Arc::new(std::sync::Mutex::new(vec![weight_before]));
    let recorder = tokio::spawn({
        let (canaries, weights_seen) = (canaries.clone(), weights_seen.clone());
        async move {
            loop {
                if let Some(status) = canaries.get(APP).await.ok().and_then(|c| c.status) {
                    let mut seen = weights_seen.lock().unwrap_or_else(|e| e.into_inner());
                    if seen.last() != Some(&status.canary_weight) {
                        seen.push(status.canary_weight);
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    // The old pod is the previous release's own binary under its own chart's RBAC.
    ensure!(old.child.try_wait()?.is_none(), "the old petrel exited:\n{}", old.log());
    old.assert_never_refused()?;
    eprintln!("[upgrade] Canary Progressing at {weight_before}% after {:.1?}", started.elapsed());

    // The upgrade, as the release notes say: the CRDs first (helm never upgrades a chart's
    // crds/), then the chart. Without the first step the API server would keep the previous
    // schema and drop the fields petrel now writes.
    let served_canary_schemas = || -> Result<Value> {
        Ok(crd_schemas(&serde_json::from_str(&kubectl.ok(&["get", "crd", "canaries.petrel.dev", "-o", "json"]))?))
    };
    let crds = chart_dir().join("crds").to_string_lossy().into_owned();
    kubectl.ok(&["apply", "--server-side", "--force-conflicts", "--field-manager=helm", "-f", &crds]);
    chart.helm_install("upgrade", "petrel", &chart_dir(), RELEASE_NAMESPACE, &values)?;
    let (served, chart_schemas) = (served_canary_schemas()?, chart_crd_schemas("canaries.petrel.dev")?);
    if let Some(difference) = first_difference(&served, &chart_schemas, "versions") {
        bail!("the CRDs were not upgraded: {difference}");
    }
    let manifest = chart::parse_documents(&helm_manifest(&helm, &kubectl, "petrel")?)?;
    let mut rendered_args = vec!["template", "petrel", crds.trim_end_matches("/crds"), "-n", RELEASE_NAMESPACE];
    let sets: Vec<String> = values.iter().map(|(k, v)| format!("{k}={v}")).collect();
    for set in &sets {
        rendered_args.extend(["--set", set.as_str()]);
    }
    let rendered = chart::parse_documents(&chart::run_ok(&helm, &rendered_args)?)?;
    ensure!(
        chart::deployment_args(&manifest, "petrel")? == chart::deployment_args(&rendered, "petrel")?,
        "helm upgrade did not roll out the current chart"
    );

    // The pod is replaced: the new one starts (a standby until the Lease is free), the old
    // one gets SIGTERM and hands the Lease over.
    let release = Release { helm: &helm, kubectl: &kubectl, launcher: Launcher::Image(image.clone()), dir: &dir };
    let new = release.run_petrel("petrel", RELEASE_NAMESPACE, "petrel", "petrel-new")?;
    old.terminate(Duration::from_secs(15))?;
    let t0 = Instant::now();
    let outcome = eventually("the release to complete after the upgrade", Duration::from_secs(120), async || {
        let status = canaries.get(APP).await.ok()?.status?;
        match status.phase {
            Phase::Succeeded => Some(Ok(())),
            Phase::Failed => Some(Err(anyhow::anyhow!("the Canary failed: {:?}", status.conditions))),
            _ => None,
        }
    })
    .await
    .and_then(|r| r);
    if let Err(e) = outcome {
        bail!("{e:#}; old petrel:\n{}\nnew petrel:\n{}", old.log(), new.log());
    }
    let read_weights = || weights_seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    // The promotion's weight 0 may reach the recorder a poll after the phase reached this loop.
    let _ = eventually("the recorder to see the promotion", Duration::from_secs(5), async || {
        (read_weights().last() == Some(&0)).then_some(())
    })
    .await;
    recorder.abort();
    let weights = read_weights();
    eprintln!("[upgrade] Canary Succeeded {:.1?} after the upgrade; weights seen {weights:?}", t0.elapsed());
    // Every step once, in order, across the upgrade and the hand-over (the status is polled
    // every 200 ms from the first step on, and steps are 4 s apart, so none is missed): no
    // step repeated, none skipped.
    let expected: Vec<i32> = (weight_before..=50).step_by(10).chain([0]).collect();
    ensure!(weights == expected, "weights across the upgrade: {weights:?}, expected {expected:?}");
    let primary = deployments.get(&format!("{APP}-primary")).await?;
    let primary_image = primary.spec.and_then(|s| s.template.spec).map(|s| s.containers[0].image.clone());
    assert_eq!(primary_image.flatten().as_deref(), Some(IMAGE_V1), "the new release was not promoted");
    let lease = Api::<Lease>::namespaced(client.clone(), RELEASE_NAMESPACE).get("petrel-member").await?;
    assert_eq!(lease.spec.and_then(|s| s.holder_identity).as_deref(), Some("petrel-new"), "the new pod did not lead");
    let mut new = new;
    new.assert_never_refused()?;
    drop(new);
    drop(old);
    eprintln!("[upgrade] done in {:.1?}", started.elapsed());
    drop(fleet);
    if std::env::var_os("PETREL_E2E_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// `helm get manifest <release>` of the release namespace.
fn helm_manifest(helm: &Path, kubectl: &Kubectl, release: &str) -> Result<String> {
    let kubeconfig = kubectl.kubeconfig.to_string_lossy().into_owned();
    chart::run_ok(helm, &["get", "manifest", release, "--kubeconfig", &kubeconfig, "-n", RELEASE_NAMESPACE])
}
