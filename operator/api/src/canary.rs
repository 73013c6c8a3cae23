//! The `Canary` resource: progressive delivery of one Deployment in one cluster.
//!
//! Field names and meanings follow Flagger's `flagger.app/v1beta1` Canary wherever the
//! concept is the same, so that a Flagger manifest is accepted with only its
//! `apiVersion` changed. Fields petrel accepts but does not act on are documented as such.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use kube_derive::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    Condition, CustomMetadata, DNS_1035_LABEL, IntOrString, ObjectRef, duration_bounds_rule, duration_format_rule,
    http_url_rule, is_false,
};
use super::route_options::{
    CorsPolicy, HttpMatchRequest, HttpRetry, HttpRewrite, MirrorFilter, RouteHeaders, TrafficPolicy,
};

/// Spec of a Canary: which Deployment to release, how traffic reaches it, and how each
/// release is analysed.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "petrel.dev",
    version = "v1alpha1",
    kind = "Canary",
    namespaced,
    cel,
    doc = "Progressive delivery of one Deployment in one cluster: traffic shifted step by step while live metrics pass, rolled back when they fail.",
    status = "CanaryStatus",
    shortname = "cnry",
    category = "petrel",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Weight","type":"integer","jsonPath":".status.canaryWeight"}"#,
    printcolumn = r#"{"name":"FailedChecks","type":"integer","jsonPath":".status.failedChecks"}"#,
    printcolumn = r#"{"name":"Release","type":"string","jsonPath":".status.release","priority":1}"#,
    printcolumn = r#"{"name":"LastTransition","type":"date","jsonPath":".status.lastTransitionTime"}"#,
    validation = kube_core::Rule::new("size(self.metadata.name) <= 63").message("metadata.name of a Canary must be at most 63 characters: petrel writes it into the label petrel.dev/canary of every object it creates")
)]
#[x_kube(validation = kube_core::Rule::new("!has(self.provider) || self.provider != 'nginx' || has(self.ingressRef)").message("provider nginx needs spec.ingressRef: the Ingress petrel clones for the canary"))]
#[x_kube(validation = service_names_rule())]
#[x_kube(validation = kube_core::Rule::new("(has(self.provider) && (self.provider == 'gatewayapi' || self.provider.startsWith('gatewayapi:'))) || (!has(self.service.mirror) && (!has(self.service.rewrite) || !has(self.service.rewrite.type)))").message(GATEWAY_ONLY_OPTIONS_MESSAGE))]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube_core::Rule::new("self.targetRef.kind != 'DaemonSet' || !has(self.analysis) || (!has(self.analysis.stepWeight) && !has(self.analysis.maxWeight) && !has(self.analysis.stepWeights))").message("a DaemonSet target runs one canary pod per node beside the primary's, so petrel does not shift its traffic by weight: remove analysis.stepWeight, maxWeight and stepWeights and set analysis.iterations (blue/green)"))]
#[x_kube(validation = kube_core::Rule::new("(has(self.provider) && self.provider == 'knative') == (self.targetRef.kind == 'Service')").message("provider knative and targetRef kind Service (a Knative Service) go together: set both, or neither"))]
#[x_kube(validation = reference_kind_rule("ingressRef", "Ingress", "networking.k8s.io/v1"))]
#[x_kube(validation = reference_kind_rule("routeRef", "ApisixRoute", "apisix.apache.org/v2"))]
#[x_kube(validation = reference_kind_rule("upstreamRef", "Upstream", "gloo.solo.io/v1"))]
pub struct CanarySpec {
    /// Traffic provider: how weights reach requests. One of gatewayapi (also
    /// `gatewayapi:v1`, `gatewayapi:v1beta1`), istio, linkerd, smi (`smi:v1alpha1..3`),
    /// nginx, traefik, contour, kubernetes, apisix, gloo, skipper, kuma, knative. Defaults
    /// to the operator's `--provider` flag. appmesh and osm are refused (retired upstream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "provider_schema")]
    pub provider: Option<String>,

    /// Prometheus address for the builtin metrics; overrides the operator's `--metrics-server`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_server: Option<String>,

    /// The Deployment being released. Its pod template is the canary; petrel keeps a
    /// `<name>-primary` clone that serves stable traffic.
    pub target_ref: TargetRef,

    /// The target's HorizontalPodAutoscaler; petrel mirrors it as `<name>-primary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler_ref: Option<AutoscalerRef>,

    /// The Ingress that NGINX canary annotations are applied to (provider `nginx`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_ref: Option<ObjectRef>,

    /// The ApisixRoute petrel clones into a weighted `<route>-<service>-canary` (provider `apisix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_ref: Option<ObjectRef>,

    /// A Gloo Upstream whose settings (TLS, circuit breakers, load balancing...) the
    /// generated primary and canary Upstreams copy (provider `gloo`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_ref: Option<ObjectRef>,

    /// The Services petrel generates and the routing around them.
    pub service: CanaryService,

    /// How a release is analysed and how traffic moves.
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "canaryAnalysis")]
    pub analysis: Option<CanaryAnalysis>,

    /// Seconds a canary may stay not ready before the release is rolled back. Default 600,
    /// at most 86400 (a day).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub progress_deadline_seconds: Option<i32>,

    /// Promote a new revision without running analysis.
    #[serde(default, skip_serializing_if = "is_false")]
    pub skip_analysis: bool,

    /// On deletion, hand the app back to the target (Flagger's revert): scale it to the
    /// primary's replicas, wait until it is ready, point the routes and the apex Service at
    /// it, then let the generated objects go. Only a target running the promoted version
    /// gets traffic back; otherwise, and when this is false, the primary keeps serving,
    /// released from the Canary with its Services and routes.
    #[serde(default, skip_serializing_if = "is_false")]
    pub revert_on_deletion: bool,

    /// Stop reconciling this Canary (no traffic changes, no analysis) until unset.
    #[serde(default, skip_serializing_if = "is_false")]
    pub suspend: bool,
}

/// Annotation a fleet hub sets on a member Canary: the Canary waits for the hub's approval
/// of each new revision (value: `<namespace>/<name>` of the Rollout).
pub const FLEET_ROLLOUT_ANNOTATION: &str = "petrel.dev/rollout";

/// Annotation the fleet hub sets to approve exactly one revision of a member Canary.
pub const APPROVED_REVISION_ANNOTATION: &str = "petrel.dev/approved-revision";

/// Every `provider` string petrel accepts. Anything else is rejected by the API server.
pub const PROVIDERS: &[&str] = &[
    "gatewayapi",
    "gatewayapi:v1",
    "gatewayapi:v1beta1",
    "istio",
    "linkerd",
    "smi",
    "smi:v1alpha1",
    "smi:v1alpha2",
    "smi:v1alpha3",
    "nginx",
    "traefik",
    "contour",
    "kubernetes",
    "apisix",
    "gloo",
    "skipper",
    "kuma",
    "knative",
];

/// Flagger providers whose projects are retired upstream (AWS App Mesh, Open Service Mesh).
/// The schema lets them through its enum so that the rule below can say why they are
/// refused, rather than a bare "unsupported value".
pub const RETIRED_PROVIDERS: &[&str] = &["appmesh", "appmesh:v1beta2", "osm"];

/// The refusal of a retired provider, as the API server words it.
pub const RETIRED_PROVIDER_MESSAGE: &str = "provider appmesh (AWS App Mesh) and osm (Open Service Mesh) are retired upstream and petrel does not support them: move the workload to another mesh first (for example linkerd, istio or gatewayapi) and name that provider";

/// Without `service.name` the Services are named after the target, so the target's name
/// must then make valid Service names too (`<name>-primary` is the longest).
fn service_names_rule() -> kube_core::Rule {
    kube_core::Rule::new(format!(
        "has(self.service.name) || (size(self.targetRef.name) <= 55 && self.targetRef.name.matches('{DNS_1035_LABEL}'))"
    ))
    .message(kube_core::Message::Message(
        "without service.name the Services are named after targetRef.name, which must then be a DNS-1035 label of at most 55 characters (lowercase letters, digits and '-', starting with a letter); set service.name".into(),
    ))
}

/// `ingressRef`, `routeRef` and `upstreamRef` name one kind each, which petrel reads through
/// one API version: a reference that says otherwise is refused rather than read as if it
/// did not.
fn reference_kind_rule(field: &str, kind: &str, api_version: &str) -> kube_core::Rule {
    kube_core::Rule::new(format!(
        "!has(self.{field}) || ((!has(self.{field}.kind) || self.{field}.kind == '{kind}') && (!has(self.{field}.apiVersion) || self.{field}.apiVersion == '{api_version}'))"
    ))
    .message(kube_core::Message::Message(format!(
        "{field} must name {} {kind} (kind {kind}, apiVersion {api_version}): petrel reads it through {api_version} and supports no other kind there",
        if kind.starts_with(['A', 'E', 'I', 'O', 'U']) { "an" } else { "a" }
    )))
}

/// The refusal of `analysis.sessionAffinity` beside `analysis.match`, as the API server words it.
pub const SESSION_AFFINITY_AB_MESSAGE: &str = "analysis.sessionAffinity pins sessions during a weighted canary release and cannot be combined with analysis.match (A/B testing already pins requests by header or cookie): remove one of them";
/// The refusal of a `sessionAffinity` whose two cookies have one name.
pub const SESSION_AFFINITY_NAMES_MESSAGE: &str = "analysis.sessionAffinity.primaryCookieName must differ from cookieName (default flagger-cookie): one cookie cannot pin a session to both the primary and the canary";
/// A cookie name: an RFC 6265 token.
const COOKIE_NAME_PATTERN: &str = r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$";
/// The refusal of the Gateway API-only `service.mirror` and `service.rewrite.type`.
pub const GATEWAY_ONLY_OPTIONS_MESSAGE: &str = "service.mirror and service.rewrite.type are Gateway API route options that petrel writes with provider gatewayapi only (Flagger's other routers ignore them): set spec.provider to gatewayapi, or remove them (analysis.mirror mirrors traffic to the canary during blue/green)";

/// The refusal of App Mesh's `service.meshName` and `service.backends`, as the API server words it.
pub const APP_MESH_FIELDS_MESSAGE: &str = "service.meshName and service.backends are AWS App Mesh settings; App Mesh is retired upstream and petrel does not support it: remove them and use another provider (for example linkerd, istio or gatewayapi)";

fn provider_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let accepted: Vec<&str> = PROVIDERS.iter().chain(RETIRED_PROVIDERS).copied().collect();
    let retired = RETIRED_PROVIDERS.iter().map(|p| format!("'{p}'")).collect::<Vec<_>>().join(", ");
    schemars::json_schema!({
        "type": "string",
        "enum": accepted,
        "description": "Traffic provider: gatewayapi, istio, linkerd, smi, nginx, traefik, contour, kubernetes, apisix, gloo, skipper, kuma or knative (Flagger's versioned spellings such as gatewayapi:v1 are accepted). appmesh and osm are refused: both are retired upstream.",
        "x-kubernetes-validations": [{
            "rule": format!("!(self in [{retired}])"),
            "message": RETIRED_PROVIDER_MESSAGE,
        }]
    })
}

/// The workload being released: a Deployment (`apps/v1`), or a Knative Service
/// (`serving.knative.dev/v1`, provider `knative`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube_core::Rule::new("self.kind != 'Service' || self.apiVersion == 'serving.knative.dev/v1'").message("targetRef kind Service must be a Knative Service: apiVersion serving.knative.dev/v1"))]
pub struct TargetRef {
    #[serde(default = "default_apps_v1")]
    pub api_version: String,
    /// Kind of the target: Deployment, or Service for a Knative Service.
    #[schemars(schema_with = "deployment_kind_schema")]
    pub kind: String,
    /// Name of the Deployment (or Knative Service); at most 245 characters, so that `<name>-primary` is a valid name.
    #[x_kube(validation = kube_core::Rule::new("self != ''").message("targetRef.name must name the Deployment to release"))]
    #[schemars(length(max = 245))]
    pub name: String,
}

/// `targetRef.kind` of a DaemonSet target.
pub const DAEMON_SET_KIND: &str = "DaemonSet";
/// `targetRef.kind` of a Knative Service target.
pub const KNATIVE_SERVICE_KIND: &str = "Service";
/// `targetRef.apiVersion` of a Knative Service target.
pub const KNATIVE_SERVICE_API_VERSION: &str = "serving.knative.dev/v1";

impl TargetRef {
    /// Whether the target is a Knative Service (its revisions are primary and canary).
    pub fn is_knative_service(&self) -> bool {
        self.kind == KNATIVE_SERVICE_KIND && self.api_version == KNATIVE_SERVICE_API_VERSION
    }

    /// Whether the target is a DaemonSet (a `-primary` DaemonSet beside it, no weights).
    pub fn is_daemon_set(&self) -> bool {
        self.kind == DAEMON_SET_KIND
    }
}

fn default_apps_v1() -> String {
    "apps/v1".to_string()
}

fn deployment_kind_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "enum": ["Deployment", "DaemonSet", "Service"],
        "description": "Kind of the target: Deployment, DaemonSet (apps/v1; blue/green iterations, no weights), or Service (a Knative Service, serving.knative.dev/v1, with provider knative)."
    })
}

/// Reference to the target's autoscaler.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// HorizontalPodAutoscaler (autoscaling/v2) or ScaledObject (keda.sh/v1alpha1): the
    /// primary gets a copy pointed at it; a target ScaledObject is paused while the target
    /// is scaled to zero.
    pub kind: String,
    pub name: String,
    /// KEDA: the query of each trigger named here, for the primary's ScaledObject (without
    /// it, queries naming the target are rewritten to name `<target>-primary`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_scaler_queries: Option<BTreeMap<String, String>>,
    /// Overrides for the primary HPA's replica bounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_scaler_replicas: Option<ScalerReplicas>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScalerReplicas {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas: Option<i32>,
}

/// The Services `<name>`, `<name>-primary`, `<name>-canary` and the routing built on them.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube_core::Rule::new("!has(self.meshName) && !has(self.backends)").message(APP_MESH_FIELDS_MESSAGE))]
pub struct CanaryService {
    /// Name of the apex Service; defaults to the target's name. A DNS-1035 label of at
    /// most 55 characters, so that `<name>-primary` is one too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = service_name_rule())]
    pub name: Option<String>,
    /// Port the Services expose.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Name of the Service port. Default `http`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    #[x_kube(validation = kube_core::Rule::new("size(self) <= 15 && self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && self.matches('[a-z]')").message("service.portName must be a port name of at most 15 characters: lowercase letters, digits and '-', with at least one letter"))]
    pub port_name: Option<String>,
    /// Container port (number or name). Defaults to `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<IntOrString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_distribution: Option<String>,
    /// Add every container port of the target's pod template to the generated Services,
    /// as Flagger does: sidecars `istio-proxy` and `envoy` and the main port (`targetPort`,
    /// or `port`) skipped, each named after its container port (`tcp-<container>-<index>`
    /// when unnamed), TCP, same number outside and in. A discovered port whose name or
    /// number the main port already uses is left out (the API server would refuse the
    /// Service).
    #[serde(default, skip_serializing_if = "is_false")]
    pub port_discovery: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub headless: bool,
    /// Request timeout written to the route (for example `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Backend request timeout (Gateway API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_timeout: Option<String>,
    /// Istio gateways the VirtualService binds to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Gateway API parent references of the generated HTTPRoute.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateway_refs: Vec<GatewayRef>,
    /// Host names the route answers for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Istio: write the VirtualService as a delegate (no hosts, no gateways) for a root
    /// VirtualService to delegate to. petrel writes no route until such a root exists.
    #[serde(default, skip_serializing_if = "is_false")]
    pub delegation: bool,
    /// Istio DestinationRule traffic policy, copied to both DestinationRules (Flagger's
    /// closed schema: a misspelt key is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
    /// Istio HTTP match conditions for the whole route (HTTPMatchRequest).
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "match")]
    pub match_: Option<Vec<HttpMatchRequest>>,
    /// Istio HTTPRewrite: `uri` and `authority`; `type` (`ReplacePrefixMatch`, otherwise the
    /// full path is replaced) with provider gatewayapi only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<HttpRewrite>,
    /// Istio retry policy of every HTTP route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<HttpRetry>,
    /// Request and response header operations of every HTTP route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<RouteHeaders>,
    /// Gateway API: requests of every HTTPRoute rule also mirrored to these backends
    /// (provider gatewayapi only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Vec<MirrorFilter>>,
    /// Istio CORS policy of every HTTP route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors_policy: Option<CorsPolicy>,
    /// AWS App Mesh's mesh: refused (App Mesh is retired upstream). Kept in the schema so
    /// that the refusal says why, rather than a bare "unknown field".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_name: Option<String>,
    /// AWS App Mesh's virtual service backends: refused, as `meshName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<String>>,
    /// Extra labels and annotations for the apex Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apex: Option<CustomMetadata>,
    /// Extra labels and annotations for the `-primary` Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<CustomMetadata>,
    /// Extra labels and annotations for the `-canary` Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CustomMetadata>,
    /// Keys of labels and annotations of the generated Services (apex, `-primary`,
    /// `-canary`) that another controller owns (as proposed for Flagger in
    /// fluxcd/flagger#1823): petrel never writes them, not even when `apex`, `primary` or
    /// `canary` lists them, so its server-side apply neither overwrites nor removes what
    /// that controller set. petrel's own keys cannot be listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmanaged_metadata: Option<super::common::UnmanagedMetadata>,
}

fn service_name_rule() -> kube_core::Rule {
    kube_core::Rule::new(format!("size(self) <= 55 && self.matches('{DNS_1035_LABEL}')")).message(
        kube_core::Message::Message(
            "service.name must be a DNS-1035 label of at most 55 characters (lowercase letters, digits and '-', starting with a letter): petrel creates the Services <name>, <name>-primary and <name>-canary".into(),
        ),
    )
}

/// A Gateway API parent reference.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

/// Analysis: the schedule, the traffic steps and the checks of one release.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube_core::Rule::new("!has(self.stepWeight) || !has(self.maxWeight) || self.stepWeight <= self.maxWeight").message("analysis.stepWeight must not be larger than analysis.maxWeight"))]
#[x_kube(validation = kube_core::Rule::new("!has(self.sessionAffinity) || !has(self.match) || size(self.match) == 0").message(SESSION_AFFINITY_AB_MESSAGE))]
#[x_kube(validation = kube_core::Rule::new("!has(self.sessionAffinity) || !has(self.sessionAffinity.primaryCookieName) || self.sessionAffinity.primaryCookieName != (has(self.sessionAffinity.cookieName) ? self.sessionAffinity.cookieName : 'flagger-cookie')").message(SESSION_AFFINITY_NAMES_MESSAGE))]
#[x_kube(validation = kube_core::Rule::new("!has(self.match) || size(self.match) == 0 || (has(self.iterations) && self.iterations > 0)").message("analysis.match (A/B testing) needs analysis.iterations greater than 0"))]
#[x_kube(validation = kube_core::Rule::new("!has(self.maxWeight) || self.maxWeight > 0 || (has(self.iterations) && self.iterations > 0) || (has(self.stepWeights) && size(self.stepWeights) > 0)").message("analysis.maxWeight 0 would promote without the canary ever receiving traffic: set at least 1 (or use stepWeights, or iterations for blue/green and A/B testing)"))]
#[x_kube(validation = kube_core::Rule::new("!has(self.stepWeight) || self.stepWeight > 0 || (has(self.iterations) && self.iterations > 0) || (has(self.stepWeights) && size(self.stepWeights) > 0)").message("analysis.stepWeight 0 never moves traffic to the canary: set at least 1 (or use stepWeights, or iterations for blue/green and A/B testing)"))]
pub struct CanaryAnalysis {
    /// Time between analysis ticks, as a duration such as `30s` or `1m`, from 1s to 24h.
    /// Default `1m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = duration_format_rule("analysis.interval"))]
    #[x_kube(validation = duration_bounds_rule("analysis.interval", "1s", "24h"))]
    pub interval: Option<String>,
    /// Failed checks tolerated before the release is rolled back. Default 1, at most 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub threshold: Option<i32>,
    /// Highest canary weight before promotion (canary strategy). Default 100. 0 is
    /// refused unless `stepWeights` or `iterations` (blue/green, A/B) replace it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub max_weight: Option<i32>,
    /// Weight added at each passing tick (canary strategy). 0 is refused unless
    /// `stepWeights` or `iterations` replace it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub step_weight: Option<i32>,
    /// Explicit weight steps, for example `[1, 5, 20, 50]`, strictly increasing, each from
    /// 1 to 100; used instead of stepWeight/maxWeight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(inner(range(min = 1, max = 100)), length(max = 100))]
    #[x_kube(validation = kube_core::Rule::new("self.isSorted() && self.all(w, self.exists_one(x, x == w))").message("analysis.stepWeights must increase from each step to the next, for example [1, 5, 20, 50]: petrel neither reorders nor skips steps"))]
    pub step_weights: Option<Vec<i32>>,
    /// Weight moved back to the primary at each tick while promoting; all at once when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub step_weight_promotion: Option<i32>,
    /// Number of passing ticks before promotion (A/B with `match`, blue/green without);
    /// at most 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub iterations: Option<i32>,
    /// Mirror traffic to the canary (blue/green; or a mirror-only first step for canary).
    #[serde(default, skip_serializing_if = "is_false")]
    pub mirror: bool,
    /// Percentage of traffic mirrored. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub mirror_weight: Option<i32>,
    /// Percentage of primary pods that must be available. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub primary_ready_threshold: Option<i32>,
    /// Percentage of canary pods that must be available. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub canary_ready_threshold: Option<i32>,
    /// A/B conditions: requests matching any of them go to the canary (at most 16).
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "match")]
    #[schemars(length(max = 16))]
    pub match_: Option<Vec<HttpMatch>>,
    /// Cookie pinning (providers istio and gatewayapi): a user the weighted route sends to
    /// the canary gets a cookie that keeps sending them there for the rest of the release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<SessionAffinity>,
    /// Checks run at every tick (at most 100).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub metrics: Vec<CanaryMetric>,
    /// Gates and notifications called at defined points of a release (at most 50).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub webhooks: Vec<CanaryWebhook>,
    /// Alert providers notified of this Canary's events (at most 50).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub alerts: Vec<CanaryAlert>,
}

/// Flagger's `analysis.sessionAffinity`: while the canary has weight, responses from the
/// canary set the cookie `cookieName`, and requests carrying it go to the canary; with
/// `primaryCookieName`, responses from the primary set that cookie (for one analysis
/// interval), and requests carrying it stay on the primary. After the release the canary
/// cookie is expired (`Max-Age=-1`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SessionAffinity {
    /// Name of the cookie that pins a session to the canary (an RFC 6265 token, at most
    /// 64 characters). Default `flagger-cookie`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = COOKIE_NAME_PATTERN))]
    pub cookie_name: Option<String>,
    /// Name of the cookie that keeps a session on the primary for one analysis interval
    /// (an RFC 6265 token, at most 64 characters). Unset: no primary cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = COOKIE_NAME_PATTERN))]
    pub primary_cookie_name: Option<String>,
    /// Seconds until the canary cookie expires (`Max-Age`), from 1 to 34560000 (400
    /// days). Default 86400 (a day).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 34_560_000))]
    pub max_age: Option<i64>,
}

/// One A/B condition (Istio's HTTPMatchRequest shape; headers, cookies through the
/// `cookie` header, query parameters, URI and method).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpMatch {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16))]
    pub headers: BTreeMap<String, StringMatch>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16))]
    pub query_params: BTreeMap<String, StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_labels: Option<BTreeMap<String, String>>,
}

/// A string condition: exactly one of exact, prefix, suffix or regex.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube_core::Rule::new("[has(self.exact), has(self.prefix), has(self.suffix), has(self.regex)].exists_one(set, set)").message("a match condition must set exactly one of exact, prefix, suffix or regex"))]
pub struct StringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// A check run at every analysis tick.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube_core::Rule::new("self.name in ['request-success-rate', 'request-duration'] || has(self.templateRef) || has(self.query)").message("a metric needs templateRef (or an inline query) unless it is the builtin request-success-rate or request-duration"))]
pub struct CanaryMetric {
    /// `request-success-rate`, `request-duration`, or any name with a templateRef.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Range window used in the query (`{{ interval }}`), a duration from 1s to 24h;
    /// defaults to the analysis interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = duration_format_rule("metrics[].interval"))]
    #[x_kube(validation = duration_bounds_rule("metrics[].interval", "1s", "24h"))]
    pub interval: Option<String>,
    /// Deprecated Flagger field: the maximum accepted value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Accepted range of the value, bounds inclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_range: Option<ThresholdRangeSpec>,
    /// Deprecated Flagger field: an inline Prometheus query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The MetricTemplate that holds the query and its provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_ref: Option<TemplateRef>,
    /// Values for `{{ variables.<key> }}` in the template's query.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub template_variables: BTreeMap<String, String>,
    /// petrel extension: also judge the canary against the primary statistically
    /// (Mann-Whitney U over the values collected during the run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comparison: Option<MetricComparison>,
}

/// Inclusive bounds on a metric value.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube_core::Rule::new("!has(self.min) || !has(self.max) || self.min <= self.max").message("thresholdRange.min must not be larger than thresholdRange.max"))]
pub struct ThresholdRangeSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// Canary-versus-primary statistical comparison of one metric.
///
/// At every analysis tick the metric is read for the canary and for the primary, and the
/// pair is kept in `status.comparisonSamples`. Until each side has `minSamples` values
/// the comparison is *pending*: not a failed check, but the run is never promoted (nor
/// all traffic moved to the canary) while it is. Then it is judged over all the run's
/// values with a Mann-Whitney U test at `alpha`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MetricComparison {
    /// Which change is bad: `increase` (latency, errors), `decrease` (success rate) or `either`.
    pub direction: ComparisonDirection,
    /// Values needed from each side before the comparison is judged. Default 5, at most
    /// 100 (the values a run keeps). A Canary whose steps give fewer analysis ticks is
    /// reported Stalled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2, max = 100))]
    pub min_samples: Option<i32>,
    /// Significance level of the test. Default 0.05.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0001, max = 0.5))]
    pub alpha: Option<f64>,
    /// What a comparison still pending at the run's last step does: `Hold` (default) or
    /// `Fail` (see [`InsufficientSamples`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_insufficient_samples: Option<InsufficientSamples>,
}

/// Values a comparison needs from each side when `minSamples` is unset.
pub const DEFAULT_MIN_SAMPLES: usize = 5;
/// Values a run keeps per side and comparison metric (so the status stays small); also
/// the largest `minSamples` the API accepts.
pub const MAX_COMPARISON_SAMPLES: usize = 100;

impl MetricComparison {
    /// `minSamples`, or its default; never below 2 (a test needs two values a side).
    pub fn min_samples(&self) -> usize {
        self.min_samples
            .map_or(DEFAULT_MIN_SAMPLES, |n| usize::try_from(n).unwrap_or(0))
            .clamp(2, MAX_COMPARISON_SAMPLES)
    }

    /// `onInsufficientSamples`, or its default `Hold`.
    pub fn on_insufficient_samples(&self) -> InsufficientSamples {
        self.on_insufficient_samples.unwrap_or_default()
    }
}

/// What happens when the run reaches its last step with this comparison still pending
/// (values were lost, for example ticks without data): `Hold` (default) keeps the last
/// step and its ticks until the comparison is judged, and fails the run once
/// `progressDeadlineSeconds` have passed since the hold began; `Fail` fails the run at
/// once. Never a pass.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InsufficientSamples {
    /// Keep the last step, and its ticks, until the comparison is judged; fail the run
    /// when `progressDeadlineSeconds` pass first.
    #[default]
    Hold,
    /// Fail the run at once.
    Fail,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum ComparisonDirection {
    #[default]
    Increase,
    Decrease,
    Either,
}

/// Reference to a MetricTemplate or AlertProvider, by default in the Canary's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TemplateRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// When a webhook is called. An empty `type` is `rollout`, as in Flagger.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum HookType {
    /// Gate before a new revision is scaled up; a failure keeps the Canary in Waiting.
    ConfirmRollout,
    /// Before the first traffic shift; a failure counts as a failed check.
    PreRollout,
    /// At every analysis tick before the metrics; a failure counts as a failed check.
    #[default]
    #[serde(alias = "")]
    Rollout,
    /// Before every weight increase; a failure holds the weight.
    ConfirmTrafficIncrease,
    /// Gate before promotion; a failure keeps the Canary in WaitingPromotion.
    ConfirmPromotion,
    /// After promotion or rollback; failures are only reported.
    PostRollout,
    /// While progressing or waiting, a 2xx answer rolls the release back.
    Rollback,
    /// Called for every Kubernetes Event petrel records for this Canary.
    Event,
}

impl HookType {
    /// The name Flagger and the CRD use for the hook type (`confirm-rollout`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            HookType::ConfirmRollout => "confirm-rollout",
            HookType::PreRollout => "pre-rollout",
            HookType::Rollout => "rollout",
            HookType::ConfirmTrafficIncrease => "confirm-traffic-increase",
            HookType::ConfirmPromotion => "confirm-promotion",
            HookType::PostRollout => "post-rollout",
            HookType::Rollback => "rollback",
            HookType::Event => "event",
        }
    }
}

/// An HTTP webhook (POST with a JSON payload, 2xx = success).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CanaryWebhook {
    pub name: String,
    /// Defaults to `rollout` (also when empty).
    #[serde(default, rename = "type")]
    #[schemars(schema_with = "hook_type_schema")]
    pub type_: HookType,
    /// An absolute http:// or https:// URL.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = http_url_rule("webhooks[].url"))]
    pub url: String,
    /// Per-attempt timeout, a duration from 1ms to 10m such as `10s` or `1m30s`. Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = duration_format_rule("webhooks[].timeout"))]
    #[x_kube(validation = duration_bounds_rule("webhooks[].timeout", "1ms", "10m"))]
    pub timeout: Option<String>,
    /// Extra attempts after a failed one. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10))]
    pub retries: Option<i32>,
    #[serde(default, skip_serializing_if = "is_false", rename = "disableTLS")]
    pub disable_tls: bool,
    /// A confirm-rollout, confirm-traffic-increase or confirm-promotion webhook that holds
    /// the release sends no alert about it (the Event is still recorded), as in Flagger.
    #[serde(default, skip_serializing_if = "is_false")]
    pub mute_alert: bool,
    /// Sent to the webhook as `metadata`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

fn hook_type_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "enum": ["confirm-rollout", "pre-rollout", "rollout", "confirm-traffic-increase", "confirm-promotion", "post-rollout", "rollback", "event", ""],
        "description": "When the webhook is called; empty means rollout, as in Flagger."
    })
}

/// An alert subscription.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CanaryAlert {
    pub name: String,
    /// `info` (also when empty, as in Flagger) receives everything, `warn` warnings and
    /// errors, `error` only errors.
    #[serde(default)]
    #[schemars(schema_with = "alert_severity_schema")]
    pub severity: AlertSeverity,
    pub provider_ref: TemplateRef,
}

fn alert_severity_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "enum": ["info", "warn", "error", ""],
        "description": "info (also when empty), warn or error."
    })
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub enum AlertSeverity {
    #[default]
    #[serde(alias = "")]
    Info,
    Warn,
    Error,
}

/// Phases of a Canary, Flagger's names.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Phase {
    #[default]
    Initializing,
    Initialized,
    Waiting,
    Progressing,
    WaitingPromotion,
    Promoting,
    Finalising,
    Succeeded,
    Failed,
}

impl Phase {
    pub const ALL: [Phase; 9] = [
        Phase::Initializing,
        Phase::Initialized,
        Phase::Waiting,
        Phase::Progressing,
        Phase::WaitingPromotion,
        Phase::Promoting,
        Phase::Finalising,
        Phase::Succeeded,
        Phase::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Initializing => "Initializing",
            Phase::Initialized => "Initialized",
            Phase::Waiting => "Waiting",
            Phase::Progressing => "Progressing",
            Phase::WaitingPromotion => "WaitingPromotion",
            Phase::Promoting => "Promoting",
            Phase::Finalising => "Finalising",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }

    /// True while a release is under way (analysis or promotion).
    pub fn is_active(self) -> bool {
        matches!(self, Phase::Progressing | Phase::WaitingPromotion | Phase::Promoting | Phase::Finalising)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Observed state of a Canary. Everything petrel needs to continue a release after a
/// restart lives here.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStatus {
    #[serde(default)]
    pub phase: Phase,
    /// Failed checks in the current run; reset when a new revision starts.
    #[serde(default)]
    pub failed_checks: i32,
    /// Weight of the canary as last written to the router.
    #[serde(default)]
    pub canary_weight: i32,
    /// Passing ticks so far (A/B and blue/green).
    #[serde(default)]
    pub iterations: i32,
    /// Revision (hash of the target's pod template and tracked configs) being released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_spec: Option<String>,
    /// Revision the primary runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_promoted_spec: Option<String>,
    /// Checksums of the ConfigMaps and Secrets the target uses (`configmap/<name>`, `secret/<name>`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tracked_configs: BTreeMap<String, String>,
    /// Release identity: the target's container images, so per-cluster overlays do not split a release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// Release identity of the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_release: Option<String>,
    /// The revision a fleet Rollout approved (mirrors the approval annotation once seen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_approved_revision: Option<String>,
    /// In phase `Waiting`: the revision waiting at the gate (never started, so not in
    /// `lastAppliedSpec`). A fleet hub approves exactly this revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_revision: Option<String>,
    /// In phase `Waiting`: the release identity of [`Self::waiting_revision`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_release: Option<String>,
    /// Verb requests (`petrel.dev/abort|promote|retry`) already handled: annotation key →
    /// the value last handled, so a request left on the object is acted on (or ignored) once.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub handled_requests: BTreeMap<String, String>,
    /// When the current phase began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<DateTime<Utc>>,
    /// When the last analysis tick ran; the next is due one interval later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_analysis_time: Option<DateTime<Utc>>,
    /// Results of the last analysis tick.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub analysis_results: Vec<MetricResult>,
    /// Values collected during the run for metrics with a comparison (bounded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub comparison_samples: Vec<ComparisonSamples>,
    /// When the run began holding at its last step because a comparison was still
    /// pending (`onInsufficientSamples: Hold`); it fails `progressDeadlineSeconds` later
    /// unless every comparison is judged first. Cleared when the run ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comparison_pending_since: Option<DateTime<Utc>>,
    /// When the canary workload last served a revision other than the one under
    /// analysis: the end of the previous run (promotion, rollback, withdrawal), or the
    /// target changing mid-run. The canary's metrics hold that revision's requests until
    /// one metric window later, so no check of the run is judged before then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_revision_traffic_until: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `analysis.sessionAffinity`: the canary cookie of the release in progress, as
    /// `<name>=<value>` (chosen once per release, so routes are not rewritten).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity_cookie: Option<String>,
    /// The canary cookie of the last release, expired by the routes after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_session_affinity_cookie: Option<String>,
    /// The primary cookie (`primaryCookieName`) of the release in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_session_affinity_cookie: Option<String>,
    /// The provider whose router last wrote this Canary's routes; when `spec.provider`
    /// changes, that router's routes are removed before the new provider's are written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routed_by: Option<String>,
    /// Ready, Promoted, Progressing and Stalled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One metric's result at one analysis tick.
///
/// Written with both `outcome` and the `passed` of earlier versions (true only when the
/// outcome is `Passed`), so an older petrel (a hub or member upgraded later) still reads
/// it, and a status written by one reads as `Passed` or `Failed`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(from = "MetricResultFields", into = "MetricResultFields")]
pub struct MetricResult {
    pub name: String,
    pub value: Option<f64>,
    pub primary_value: Option<f64>,
    pub outcome: MetricOutcome,
    pub message: String,
}

/// [`MetricResult`] as stored in the status.
#[derive(JsonSchema, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "MetricResult", description = "One metric's result at one analysis tick.")]
struct MetricResultFields {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    primary_value: Option<f64>,
    /// Passed, Failed (a failed check) or Pending (a comparison still collecting values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    outcome: Option<MetricOutcome>,
    /// Whether `outcome` is Passed; kept for readers of earlier versions.
    #[serde(default)]
    passed: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    message: String,
}

impl From<MetricResultFields> for MetricResult {
    fn from(fields: MetricResultFields) -> Self {
        MetricResult {
            name: fields.name,
            value: fields.value,
            primary_value: fields.primary_value,
            outcome: fields.outcome.unwrap_or(MetricOutcome::from_passed(fields.passed)),
            message: fields.message,
        }
    }
}

impl From<MetricResult> for MetricResultFields {
    fn from(result: MetricResult) -> Self {
        MetricResultFields {
            passed: result.passed(),
            name: result.name,
            value: result.value,
            primary_value: result.primary_value,
            outcome: Some(result.outcome),
            message: result.message,
        }
    }
}

impl JsonSchema for MetricResult {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        MetricResultFields::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        MetricResultFields::json_schema(generator)
    }
}

impl MetricResult {
    pub fn passed(&self) -> bool {
        self.outcome == MetricOutcome::Passed
    }

    pub fn failed(&self) -> bool {
        self.outcome == MetricOutcome::Failed
    }

    pub fn pending(&self) -> bool {
        self.outcome == MetricOutcome::Pending
    }
}

/// Passed, Failed (a failed check; also what a result that says nothing counts as) or
/// Pending (not judged yet: a comparison still collecting values).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MetricOutcome {
    Passed,
    /// A failed check. Also what a result that says nothing counts as: never a pass.
    #[default]
    Failed,
    /// Not judged yet: a comparison with fewer than `minSamples` values a side. Neither
    /// a pass nor a failed check; no run is promoted while one of its metrics is pending.
    Pending,
}

impl MetricOutcome {
    /// Both judgements of one metric together (its threshold and its comparison): a
    /// failure wins, then pending; passed only when both passed.
    pub fn and(self, other: MetricOutcome) -> MetricOutcome {
        match (self, other) {
            (MetricOutcome::Failed, _) | (_, MetricOutcome::Failed) => MetricOutcome::Failed,
            (MetricOutcome::Pending, _) | (_, MetricOutcome::Pending) => MetricOutcome::Pending,
            (MetricOutcome::Passed, MetricOutcome::Passed) => MetricOutcome::Passed,
        }
    }

    pub fn from_passed(passed: bool) -> MetricOutcome {
        if passed { MetricOutcome::Passed } else { MetricOutcome::Failed }
    }
}

/// Values collected for a comparison metric during the current run.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ComparisonSamples {
    pub name: String,
    #[serde(default)]
    pub canary: Vec<f64>,
    #[serde(default)]
    pub primary: Vec<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_results_are_read_and_written_with_both_outcome_and_passed() {
        let read = |json: serde_json::Value| serde_json::from_value::<MetricResult>(json).unwrap().outcome;
        // Written by an earlier petrel: `passed` only.
        assert_eq!(read(serde_json::json!({"name": "m", "passed": true})), MetricOutcome::Passed);
        assert_eq!(read(serde_json::json!({"name": "m", "passed": false})), MetricOutcome::Failed);
        assert_eq!(read(serde_json::json!({"name": "m"})), MetricOutcome::Failed, "nothing said is never a pass");
        // `outcome` wins.
        assert_eq!(
            read(serde_json::json!({"name": "m", "outcome": "Pending", "passed": false})),
            MetricOutcome::Pending
        );

        let pending = MetricResult { name: "m".into(), outcome: MetricOutcome::Pending, ..Default::default() };
        let written = serde_json::to_value(&pending).unwrap();
        assert_eq!(written, serde_json::json!({"name": "m", "outcome": "Pending", "passed": false}));
        let passed = MetricResult { outcome: MetricOutcome::Passed, value: Some(1.5), ..pending };
        let written = serde_json::to_value(&passed).unwrap();
        assert_eq!(written, serde_json::json!({"name": "m", "value": 1.5, "outcome": "Passed", "passed": true}));
        assert_eq!(serde_json::from_value::<MetricResult>(written).unwrap(), passed);
    }
}
