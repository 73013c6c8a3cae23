//! Traffic routers: the objects that decide which pods a request reaches.
//!
//! Every router has the verbs of Flagger's that petrel calls (`reconcile`, `set_routes`,
//! `finalize`; Flagger's `get_routes` has no caller here). Each provider lives in its own
//! file whose heart is a pure builder (`build_*`: Canary + weights -> manifest) and its
//! inverse (`weights_of`: manifest -> weights); the I/O around them is a server-side
//! apply, a get or a delete.
//!
//! Every router's `reconcile` also ensures the three Services (`<svc>`, `<svc>-primary`,
//! `<svc>-canary`, see [`services`]), so the reconciler needs exactly one router call.
//! Routers read through [`cache`]: the runtime's watch caches, trusted only while their
//! watch keeps them.

pub mod affinity;
pub mod apisix;
pub mod cache;
pub mod contour;
pub mod gatewayapi;
pub mod gloo;
pub mod istio;
pub mod knative;
pub mod kubernetes;
pub mod kuma;
pub mod ledger;
pub mod linkerd;
pub mod nginx;
pub use petrel_core::router_options as options;
pub mod services;
pub mod skipper;
pub mod smi;
pub mod traefik;

#[cfg(test)]
mod io_tests;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::collections::BTreeMap;
use std::marker::PhantomData;

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use serde_json::Value;

use crate::cache::WatchCache;
use petrel_api::Canary;
use petrel_api::PRIMARY_SUFFIX;
use petrel_core::Provider;

pub use ledger::{Observed, WriteLedger, ledger_key};
pub use petrel_api::{FIELD_MANAGER, MANAGED_BY_LABEL};

pub use petrel_api::common::GITOPS_ANNOTATIONS;

/// How traffic is split between the primary and the canary.
///
/// The fields are private so that a `Weights` that does not add up to 100 cannot exist:
/// the only way in is [`Weights::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Weights {
    primary: u8,
    canary: u8,
    mirror: bool,
}

impl Weights {
    /// Weights in percent; `primary + canary` must be exactly 100. `mirror` also copies
    /// the primary's traffic to the canary (responses of the copy are discarded).
    pub fn new(primary: u8, canary: u8, mirror: bool) -> Result<Self, RouterError> {
        if u16::from(primary) + u16::from(canary) != 100 {
            return Err(RouterError::InvalidWeights { primary, canary });
        }
        Ok(Weights { primary, canary, mirror })
    }

    /// All traffic to the primary, no mirroring: the state outside a release.
    pub const fn primary_only() -> Self {
        Weights { primary: 100, canary: 0, mirror: false }
    }

    /// All traffic to the canary, no mirroring.
    pub const fn canary_only() -> Self {
        Weights { primary: 0, canary: 100, mirror: false }
    }

    pub const fn primary(self) -> u8 {
        self.primary
    }

    pub const fn canary(self) -> u8 {
        self.canary
    }

    pub const fn mirror(self) -> bool {
        self.mirror
    }
}

impl std::fmt::Display for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "primary {}% / canary {}%", self.primary, self.canary)?;
        if self.mirror {
            f.write_str(" (mirrored)")?;
        }
        Ok(())
    }
}

/// What can go wrong while building or writing routes.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("traffic weights must add up to 100, got primary {primary} + canary {canary}")]
    InvalidWeights { primary: u8, canary: u8 },

    #[error("provider {provider} cannot {what}")]
    Unsupported { provider: &'static str, what: String },

    #[error("Canary {canary}: {reason}")]
    InvalidCanary { canary: String, reason: String },

    #[error("{kind} {namespace}/{name} is not what petrel expects: {reason}")]
    Malformed { kind: String, namespace: String, name: String, reason: String },

    #[error("{kind} {namespace}/{name} does not exist: {reason}")]
    NotFound { kind: String, namespace: String, name: String, reason: String },

    #[error("failed to {verb} {kind} {namespace}/{name}: {source}")]
    Api {
        verb: &'static str,
        kind: String,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },

    #[error("failed to convert {kind} {name} to or from JSON: {source}")]
    Json {
        kind: String,
        name: String,
        #[source]
        source: serde_json::Error,
    },
}

/// One traffic router, chosen at run time from the Canary's provider.
pub trait TrafficRouter: Send + Sync {
    /// Creates or updates the Services and route objects (idempotent). A new route starts
    /// at 100% primary; an existing one keeps the weights it has.
    fn reconcile<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<(), RouterError>>;

    /// Writes these weights to the route objects.
    fn set_routes<'a>(&'a self, canary: &'a Canary, weights: Weights) -> BoxFuture<'a, Result<(), RouterError>>;

    /// Removes the routing petrel added, leaving traffic on the primary. Services stay:
    /// removing the apex Service would cut traffic; they go with the Canary by owner reference.
    fn finalize<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<(), RouterError>>;

    /// The third-party kinds this router reads or writes for this Canary. The reconciler
    /// checks that the cluster serves them ([`unserved_kinds`]) before touching anything,
    /// so a provider whose CRDs are not installed is a Stalled Canary, not a retry loop.
    fn required_kinds(&self, _canary: &Canary) -> Vec<ApiResource> {
        Vec::new()
    }
}

/// The router for a provider, writing only what differs from what `memory` says it
/// last wrote (every write goes out with an empty memory). The provider was parsed with
/// [`Provider::parse`], so an unknown name never gets this far.
pub fn router_with(provider: Provider, client: Client, memory: RouterMemory) -> Box<dyn TrafficRouter> {
    match provider {
        Provider::GatewayApi => Box::new(MeshRouter::<gatewayapi::GatewayApi>::new(client, memory)),
        Provider::Istio => Box::new(MeshRouter::<istio::Istio>::new(client, memory)),
        Provider::Linkerd => Box::new(linkerd::LinkerdRouter::new(client, memory)),
        Provider::Smi => Box::new(MeshRouter::<smi::Smi>::new(client, memory)),
        Provider::Traefik => Box::new(MeshRouter::<traefik::Traefik>::new(client, memory)),
        Provider::Contour => Box::new(MeshRouter::<contour::Contour>::new(client, memory)),
        Provider::Kuma => Box::new(MeshRouter::<kuma::Kuma>::new(client, memory)),
        Provider::Nginx => Box::new(nginx::NginxRouter::new(client, memory)),
        Provider::Kubernetes => Box::new(kubernetes::KubernetesRouter::new(client, memory)),
        Provider::Apisix => Box::new(apisix::ApisixRouter::new(client, memory)),
        Provider::Gloo => Box::new(gloo::GlooRouter::new(client, memory)),
        Provider::Skipper => Box::new(skipper::SkipperRouter::new(client, memory)),
        Provider::Knative => Box::new(knative::KnativeRouter::new(client, memory)),
    }
}

/// What routers keep between reconciles: the [`WriteLedger`] of their writes, so that an
/// unchanged object is not written again, and (when the controller watches them) the
/// caches they read from: petrel's Services, whose resourceVersions also show an edit or
/// deletion by someone else, and the Deployments whose pods the Services select. Cheap to
/// clone; clones share it.
#[derive(Clone, Default)]
pub struct RouterMemory {
    pub ledger: WriteLedger,
    pub services: WatchCache<Service>,
    pub deployments: WatchCache<Deployment>,
}

impl RouterMemory {
    /// What is known now of a Service's version.
    pub(crate) fn observed_service(&self, namespace: &str, name: &str) -> Observed {
        match self.services.store() {
            None => Observed::Unknown,
            Some(store) => Observed::Version(
                store
                    .get(&ObjectRef::new(name).within(namespace))
                    .and_then(|service| service.metadata.resource_version.clone()),
            ),
        }
    }
}

/// Whether this Canary's routing can send requests by header or cookie (A/B testing):
/// [`Provider::supports_matching`], except that Linkerd can through Gateway API only.
pub fn supports_matching(provider: Provider, canary: &Canary) -> bool {
    match provider {
        Provider::Linkerd => linkerd::uses_gateway_api(canary),
        other => other.supports_matching(),
    }
}

/// How long a discovery answer that a group version serves its kinds is trusted (so a
/// CRD removed while petrel runs is noticed within this time). An answer that a kind is
/// missing is never kept: installing a provider's CRDs takes effect at the next reconcile.
pub const SERVED_KINDS_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// The resources each group version was last seen to serve, so that reconciles ask
/// discovery at most once per [`SERVED_KINDS_TTL`] per group version, whatever the number
/// of Canaries. Cheap to clone; clones share it.
#[derive(Clone, Debug, Default)]
pub struct ServedKinds {
    seen: std::sync::Arc<std::sync::Mutex<SeenPlurals>>,
}

/// Per group version: when discovery answered, and the plurals it served.
type SeenPlurals = BTreeMap<String, (std::time::Instant, Vec<String>)>;

impl ServedKinds {
    fn lock(&self) -> std::sync::MutexGuard<'_, SeenPlurals> {
        // Every change is one insert: a panic while holding the lock leaves a consistent map.
        self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn fresh(&self, api_version: &str) -> Option<Vec<String>> {
        let seen = self.lock();
        let (at, plurals) = seen.get(api_version)?;
        (at.elapsed() < SERVED_KINDS_TTL).then(|| plurals.clone())
    }
}

/// The kinds of `kinds` the API server does not serve (their CRDs are not installed), by
/// one discovery request per group version not known to serve them (see [`ServedKinds`]).
pub async fn unserved_kinds(
    client: &Client,
    served: &ServedKinds,
    kinds: &[ApiResource],
) -> Result<Vec<ApiResource>, RouterError> {
    let mut unserved = Vec::new();
    let mut asked: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for kind in kinds {
        if let Some(plurals) = served.fresh(&kind.api_version)
            && plurals.contains(&kind.plural)
        {
            continue;
        }
        if !asked.contains_key(&kind.api_version) {
            let plurals: Vec<String> = match client.list_api_group_resources(&kind.api_version).await {
                Ok(list) => list.resources.into_iter().map(|r| r.name).collect(),
                // An API group nobody serves answers a plain-text "404 page not found", not
                // a NotFound Status: the code is what to go by.
                Err(kube::Error::Api(status)) if status.code == 404 => Vec::new(),
                Err(source) => {
                    return Err(RouterError::Api {
                        verb: "discover",
                        kind: kind.kind.clone(),
                        namespace: String::new(),
                        name: kind.api_version.clone(),
                        source: Box::new(source),
                    });
                }
            };
            if !plurals.is_empty() {
                served.lock().insert(kind.api_version.clone(), (std::time::Instant::now(), plurals.clone()));
            }
            asked.insert(kind.api_version.clone(), plurals);
        }
        if !asked[&kind.api_version].contains(&kind.plural) {
            unserved.push(kind.clone());
        }
    }
    Ok(unserved)
}

/// The Stalled message for kinds a provider needs that the cluster does not serve.
pub fn unserved_message(provider: Provider, unserved: &[ApiResource]) -> String {
    let kinds: Vec<String> = unserved.iter().map(|r| format!("{} ({})", r.kind, r.api_version)).collect();
    format!(
        "provider {provider} needs {}, which this cluster does not serve: install the CRDs of {provider} (petrel has touched no traffic)",
        kinds.join(", ")
    )
}

/// Reads a namespaced third-party object as JSON; `None` when it does not exist.
pub(crate) async fn read_dynamic(
    client: &Client,
    namespace: &str,
    resource: &ApiResource,
    name: &str,
) -> Result<Option<Value>, RouterError> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, resource);
    let found = api.get_opt(name).await.map_err(|source| RouterError::Api {
        verb: "read",
        kind: resource.kind.clone(),
        namespace: namespace.to_string(),
        name: name.to_string(),
        source: Box::new(source),
    })?;
    found
        .map(|object| {
            serde_json::to_value(object).map_err(|source| RouterError::Json {
                kind: resource.kind.clone(),
                name: name.to_string(),
                source,
            })
        })
        .transpose()
}

// ---------------------------------------------------------------------------------------
// Names and metadata shared by every builder.

/// The suffix of the canary Service's name (`<apex>-canary`).
pub const CANARY_SUFFIX: &str = "-canary";

/// The three Service names of a Canary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceNames {
    /// `spec.service.name`, or the target's name.
    pub apex: String,
    pub primary: String,
    pub canary: String,
}

impl ServiceNames {
    pub fn of(canary: &Canary) -> Self {
        Self::from_apex(Self::apex_of(canary))
    }

    /// The names around an apex Service's name (as a route object names its apex).
    pub fn from_apex(apex: &str) -> Self {
        ServiceNames {
            primary: format!("{apex}{PRIMARY_SUFFIX}"),
            canary: format!("{apex}{CANARY_SUFFIX}"),
            apex: apex.to_string(),
        }
    }

    /// The apex Service's name: `service.name`, or the target's name when it is unset.
    pub fn apex_of(canary: &Canary) -> &str {
        canary.spec.service.name.as_deref().filter(|name| !name.is_empty()).unwrap_or(&canary.spec.target_ref.name)
    }
}

/// `namespace/name` of a Canary, for error messages.
pub(crate) fn canary_key(canary: &Canary) -> String {
    format!("{}/{}", canary.namespace().unwrap_or_default(), canary.name_any())
}

pub(crate) fn namespace_of(canary: &Canary) -> Result<String, RouterError> {
    canary.namespace().ok_or_else(|| RouterError::InvalidCanary {
        canary: canary.name_any(),
        reason: "has no namespace; Canaries are namespaced".into(),
    })
}

/// The owner reference that makes the Canary's deletion remove what petrel generated.
pub(crate) fn owner_reference(canary: &Canary) -> Result<OwnerReference, RouterError> {
    let uid = canary.metadata.uid.clone().ok_or_else(|| RouterError::InvalidCanary {
        canary: canary_key(canary),
        reason: "has no uid yet, so generated objects cannot point back to it".into(),
    })?;
    Ok(OwnerReference {
        api_version: Canary::api_version(&()).into_owned(),
        kind: Canary::kind(&()).into_owned(),
        name: canary.name_any(),
        uid,
        controller: Some(true),
        block_owner_deletion: None,
    })
}

/// Metadata of a generated object: namespace, owner, petrel's label and the GitOps
/// annotations, plus any extra labels and annotations (which never override petrel's).
pub(crate) fn generated_metadata(
    canary: &Canary,
    name: &str,
    extra_labels: &BTreeMap<String, String>,
    extra_annotations: &BTreeMap<String, String>,
) -> Result<ObjectMeta, RouterError> {
    let mut labels = extra_labels.clone();
    labels.insert(MANAGED_BY_LABEL.into(), FIELD_MANAGER.into());
    let mut annotations = extra_annotations.clone();
    for (key, value) in GITOPS_ANNOTATIONS {
        annotations.insert(key.into(), value.into());
    }
    Ok(ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(namespace_of(canary)?),
        labels: Some(labels),
        annotations: Some(annotations),
        owner_references: Some(vec![owner_reference(canary)?]),
        ..ObjectMeta::default()
    })
}

/// A third-party object as JSON: `apiVersion`, `kind`, generated metadata and `spec`.
pub(crate) fn manifest(resource: &ApiResource, canary: &Canary, name: &str, spec: Value) -> Result<Value, RouterError> {
    let metadata = generated_metadata(canary, name, &BTreeMap::new(), &BTreeMap::new())?;
    let metadata = serde_json::to_value(metadata).map_err(|source| RouterError::Json {
        kind: resource.kind.clone(),
        name: name.to_string(),
        source,
    })?;
    Ok(serde_json::json!({
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": metadata,
        "spec": spec,
    }))
}

/// The service port every route points at.
pub(crate) fn service_port(canary: &Canary) -> i32 {
    canary.spec.service.port
}

/// Reads a weight field that must be an integer between 0 and 100.
pub(crate) fn weight_field(
    value: Option<&Value>,
    malformed: impl Fn(String) -> RouterError,
) -> Result<u8, RouterError> {
    let value = value.ok_or_else(|| malformed("a backend has no weight".into()))?;
    value
        .as_u64()
        .and_then(|w| u8::try_from(w).ok())
        .filter(|w| *w <= 100)
        .ok_or_else(|| malformed(format!("weight {value} is not an integer between 0 and 100")))
}

/// The `metadata.name` and `metadata.namespace` of a JSON manifest, for messages.
fn name_of(obj: &Value) -> (String, String) {
    let field = |key: &str| obj.pointer(&format!("/metadata/{key}")).and_then(Value::as_str).unwrap_or("").to_string();
    (field("namespace"), field("name"))
}

/// An error about an object that does not hold what its builder writes.
pub(crate) fn malformed(kind: &str, obj: &Value, reason: impl Into<String>) -> RouterError {
    let (namespace, name) = name_of(obj);
    RouterError::Malformed { kind: kind.to_string(), namespace, name, reason: reason.into() }
}

// ---------------------------------------------------------------------------------------
// Routers whose whole state is third-party objects written by server-side apply.

/// One object a mesh router writes.
pub(crate) struct RouteObject {
    pub resource: ApiResource,
    pub manifest: Value,
}

/// The pure half of a router that writes third-party objects.
pub(crate) trait MeshRoutes: Send + Sync + 'static {
    /// Every object this router writes, built for these weights.
    fn build(canary: &Canary, weights: Weights) -> Result<Vec<RouteObject>, RouterError>;

    /// The object that holds the weights, and its name.
    fn weighted_object(canary: &Canary) -> (ApiResource, String);

    /// Every object `build` writes, by resource and name (for `finalize`). Most
    /// providers write only the weighted object.
    fn all_objects(canary: &Canary) -> Vec<(ApiResource, String)> {
        vec![Self::weighted_object(canary)]
    }

    /// Reads weights from the weighted object.
    fn weights_of(obj: &Value) -> Result<Weights, RouterError>;

    /// An object of someone else's that must refer to this Canary's routes before petrel
    /// writes any (Istio delegation: a root VirtualService delegating to the Canary's).
    fn required_referrer(_canary: &Canary) -> Option<RequiredReferrer> {
        None
    }
}

/// An object, owned by someone else, that must refer to the route petrel writes: without
/// it no request would reach that route, so petrel writes nothing and says what is missing.
pub(crate) struct RequiredReferrer {
    /// Where to look for it.
    pub resource: ApiResource,
    /// Whether an object of `resource` refers to the Canary's route.
    pub refers: Box<dyn Fn(&Value) -> bool + Send + Sync>,
    /// The route that must be referred to: kind, namespace, name.
    pub route: (String, String, String),
    /// What is missing, for the Stalled condition and the Event.
    pub missing: String,
}

impl RequiredReferrer {
    /// Lists `resource` in every namespace (in the Canary's only, when petrel may not list
    /// them cluster-wide: a chart installed with `member.watchNamespace`); `NotFound`
    /// naming the missing piece unless one of them refers to the route.
    async fn check(&self, client: &Client) -> Result<(), RouterError> {
        let (kind, namespace, name) = self.route.clone();
        let params = kube::api::ListParams::default();
        let everywhere: Api<DynamicObject> = Api::all_with(client.clone(), &self.resource);
        let list = match everywhere.list(&params).await {
            Err(kube::Error::Api(response)) if response.code == 403 => {
                Api::<DynamicObject>::namespaced_with(client.clone(), &namespace, &self.resource).list(&params).await
            }
            other => other,
        }
        .map_err(|source| RouterError::Api {
            verb: "list",
            kind: self.resource.kind.clone(),
            namespace: namespace.clone(),
            name: String::new(),
            source: Box::new(source),
        })?;
        let found = list.items.iter().filter_map(|object| serde_json::to_value(object).ok()).any(|o| (self.refers)(&o));
        if found { Ok(()) } else { Err(RouterError::NotFound { kind, namespace, name, reason: self.missing.clone() }) }
    }
}

pub(crate) struct MeshRouter<R> {
    client: Client,
    memory: RouterMemory,
    routes: PhantomData<fn() -> R>,
}

impl<R: MeshRoutes> MeshRouter<R> {
    pub(crate) fn new(client: Client, memory: RouterMemory) -> Self {
        MeshRouter { client, memory, routes: PhantomData }
    }

    /// The weights of the weighted object and its resourceVersion (`None`: it does not exist).
    async fn current(&self, canary: &Canary) -> Result<Option<(Weights, Option<String>)>, RouterError> {
        let namespace = namespace_of(canary)?;
        let (resource, name) = R::weighted_object(canary);
        match read_dynamic(&self.client, &namespace, &resource, &name).await? {
            Some(found) => {
                let version = found.pointer("/metadata/resourceVersion").and_then(Value::as_str).map(String::from);
                Ok(Some((R::weights_of(&found)?, version)))
            }
            None => Ok(None),
        }
    }

    /// Applies the route objects for `weights`, skipping those the ledger says are
    /// unchanged. `weighted` is what was just read of the weighted object, if it was.
    async fn apply(&self, canary: &Canary, weights: Weights, weighted: Observed) -> Result<(), RouterError> {
        let namespace = namespace_of(canary)?;
        let (weighted_resource, weighted_name) = R::weighted_object(canary);
        for object in R::build(canary, weights)? {
            let (_, name) = name_of(&object.manifest);
            let observed = if object.resource == weighted_resource && name == weighted_name {
                weighted.clone()
            } else {
                Observed::Unknown
            };
            apply_dynamic(&self.client, &self.memory.ledger, &namespace, &object, &observed).await?;
        }
        Ok(())
    }
}

impl<R: MeshRoutes> TrafficRouter for MeshRouter<R> {
    fn reconcile<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<(), RouterError>> {
        Box::pin(async move {
            if let Some(referrer) = R::required_referrer(canary) {
                referrer.check(&self.client).await?;
            }
            services::ensure_services(&self.client, &self.memory, canary).await?;
            // Reconcile runs on every tick, also mid-release: keep the weights in place.
            let current = self.current(canary).await?;
            let weights = current.as_ref().map_or_else(Weights::primary_only, |(weights, _)| *weights);
            let observed = Observed::Version(current.as_ref().and_then(|(_, version)| version.clone()));
            self.apply(canary, weights, observed).await
        })
    }

    fn set_routes<'a>(&'a self, canary: &'a Canary, weights: Weights) -> BoxFuture<'a, Result<(), RouterError>> {
        Box::pin(self.apply(canary, weights, Observed::Unknown))
    }

    fn finalize<'a>(&'a self, canary: &'a Canary) -> BoxFuture<'a, Result<(), RouterError>> {
        Box::pin(async move {
            let namespace = namespace_of(canary)?;
            for (resource, name) in R::all_objects(canary) {
                self.memory.ledger.forget(&ledger_key(&resource.kind, &namespace, &name));
                delete_dynamic(&self.client, &namespace, &resource, &name).await?;
            }
            Ok(())
        })
    }

    fn required_kinds(&self, canary: &Canary) -> Vec<ApiResource> {
        distinct(R::all_objects(canary).into_iter().map(|(resource, _)| resource))
    }
}

/// What a read of an object (as JSON, `None` when absent) says of its version, for the ledger.
pub(crate) fn observed_version(object: Option<&Value>) -> Observed {
    Observed::Version(
        object.and_then(|o| o.pointer("/metadata/resourceVersion")).and_then(Value::as_str).map(String::from),
    )
}

/// The resources of `all`, each once, in order.
pub(crate) fn distinct(all: impl IntoIterator<Item = ApiResource>) -> Vec<ApiResource> {
    let mut out: Vec<ApiResource> = Vec::new();
    for resource in all {
        if !out.contains(&resource) {
            out.push(resource);
        }
    }
    out
}

pub(crate) async fn apply_dynamic(
    client: &Client,
    ledger: &WriteLedger,
    namespace: &str,
    object: &RouteObject,
    observed: &Observed,
) -> Result<(), RouterError> {
    let (_, name) = name_of(&object.manifest);
    let key = ledger_key(&object.resource.kind, namespace, &name);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &object.resource);
    let write = async {
        match api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&object.manifest)).await {
            Ok(applied) => Ok(applied.metadata.resource_version),
            Err(source) => Err(RouterError::Api {
                verb: "apply",
                kind: object.resource.kind.clone(),
                namespace: namespace.to_string(),
                name: name.clone(),
                source: Box::new(source),
            }),
        }
    };
    ledger.apply(key, &object.manifest, observed, write).await
}

pub(crate) async fn delete_dynamic(
    client: &Client,
    namespace: &str,
    resource: &ApiResource,
    name: &str,
) -> Result<(), RouterError> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, resource);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(source) => Err(RouterError::Api {
            verb: "delete",
            kind: resource.kind.clone(),
            namespace: namespace.to_string(),
            name: name.to_string(),
            source: Box::new(source),
        }),
    }
}

/// The ApiResource of a third-party kind, with its plural spelled out (never guessed).
pub fn api_resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&kube::core::GroupVersionKind::gvk(group, version, kind), plural)
}

/// Every third-party resource a router writes (for RBAC rules and for the CRDs test
/// clusters need). Services and Ingresses are built in and not listed.
pub fn third_party_resources() -> Vec<ApiResource> {
    vec![
        api_resource("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes"),
        api_resource("gateway.networking.k8s.io", "v1beta1", "HTTPRoute", "httproutes"),
        istio::virtual_service_resource(),
        istio::destination_rule_resource(),
        smi::traffic_split_resource(),
        traefik::traefik_service_resource(),
        contour::http_proxy_resource(),
        apisix::apisix_route_resource(),
        gloo::route_table_resource(),
        gloo::upstream_resource(),
        kuma::mesh_http_route_resource(),
    ]
}

/// An error for an A/B or mirror request the provider cannot carry out.
pub(crate) fn unsupported(provider: &'static str, what: impl Into<String>) -> RouterError {
    RouterError::Unsupported { provider, what: what.into() }
}

/// Whether the Canary asks for A/B routing (requests matching conditions go to the canary).
pub(crate) fn ab_matches(canary: &Canary) -> &[petrel_api::canary::HttpMatch] {
    canary.spec.analysis.as_ref().and_then(|a| a.match_.as_deref()).unwrap_or(&[])
}

/// Percentage of traffic mirrored when mirroring (default 100).
pub(crate) fn mirror_percent(canary: &Canary) -> i32 {
    canary.spec.analysis.as_ref().and_then(|a| a.mirror_weight).unwrap_or(100)
}

/// Escapes a literal for use inside a regular expression (RE2 and ECMAScript agree on these).
pub(crate) fn regex_escape(literal: &str) -> String {
    let mut escaped = String::with_capacity(literal.len());
    for c in literal.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    proptest! {
        #[test]
        fn weights_exist_only_when_they_add_up_to_100(primary in any::<u8>(), canary in any::<u8>(), mirror in any::<bool>()) {
            let made = Weights::new(primary, canary, mirror);
            if u16::from(primary) + u16::from(canary) == 100 {
                let made = made.unwrap();
                prop_assert_eq!((made.primary(), made.canary(), made.mirror()), (primary, canary, mirror));
            } else {
                let is_invalid_weights = matches!(made, Err(RouterError::InvalidWeights { .. }));
                prop_assert!(is_invalid_weights);
            }
        }
    }

    /// Sum of `weight` over the objects at `list` in every element of `groups`.
    fn split_sums(obj: &Value, groups: &str, list: &str) -> Vec<u64> {
        obj.pointer(groups)
            .and_then(Value::as_array)
            .expect("the object has its route list")
            .iter()
            .map(|group| {
                let backends = group.get(list).and_then(Value::as_array).expect("every route has backends");
                backends.iter().map(|b| b["weight"].as_u64().expect("integer weight")).sum()
            })
            .collect()
    }

    proptest! {
        /// DESIGN rule 4: every split petrel writes, in every rule of every router, sums to 100.
        #[test]
        fn every_written_split_sums_to_100(w in testing::any_weights(false), ab in any::<bool>()) {
            let canary = if ab { testing::ab_canary() } else { testing::canary() };
            let mut exact_ab = canary.clone();
            if let Some(m) = exact_ab.spec.analysis.as_mut().and_then(|a| a.match_.as_mut()) {
                m.truncate(1);
            }
            let mut sums = split_sums(&gatewayapi::build_http_route(&canary, w).unwrap(), "/spec/rules", "backendRefs");
            sums.extend(split_sums(&istio::build_virtual_service(&canary, w).unwrap(), "/spec/http", "route"));
            sums.extend(split_sums(&contour::build_http_proxy(&exact_ab, w).unwrap(), "/spec/routes", "services"));
            let kuma = kuma::build_mesh_http_route(&canary, w).unwrap();
            for rule in kuma["spec"]["to"][0]["rules"].as_array().expect("rules") {
                sums.extend(split_sums(&json!([rule["default"]]), "", "backendRefs"));
            }
            let gloo = gloo::build_route_table(&canary, w).unwrap();
            for route in gloo["spec"]["routes"].as_array().expect("routes") {
                sums.extend(split_sums(&json!([route["routeAction"]["multi"]]), "", "destinations"));
            }
            if !ab {
                let split = smi::build_traffic_split(&canary, w).unwrap();
                sums.extend(split_sums(&json!([split["spec"]]), "", "backends"));
                let traefik = traefik::build_traefik_service(&canary, w).unwrap();
                sums.extend(split_sums(&json!([traefik["spec"]["weighted"]]), "", "services"));
            }
            prop_assert!(sums.len() >= 3);
            prop_assert!(sums.iter().all(|s| *s == 100), "{:?}", sums);
        }
    }

    fn build_for(provider: Provider, canary: &Canary, w: Weights) -> Result<Vec<RouteObject>, RouterError> {
        match provider {
            Provider::GatewayApi => gatewayapi::GatewayApi::build(canary, w),
            Provider::Istio => istio::Istio::build(canary, w),
            Provider::Linkerd | Provider::Smi => smi::Smi::build(canary, w),
            Provider::Traefik => traefik::Traefik::build(canary, w),
            Provider::Contour => contour::Contour::build(canary, w),
            Provider::Kuma => kuma::Kuma::build(canary, w),
            _ => unreachable!("not a mesh router"),
        }
    }

    fn all_objects_for(provider: Provider, canary: &Canary) -> (Vec<(ApiResource, String)>, (ApiResource, String)) {
        match provider {
            Provider::GatewayApi => {
                (gatewayapi::GatewayApi::all_objects(canary), gatewayapi::GatewayApi::weighted_object(canary))
            }
            Provider::Istio => (istio::Istio::all_objects(canary), istio::Istio::weighted_object(canary)),
            Provider::Linkerd | Provider::Smi => (smi::Smi::all_objects(canary), smi::Smi::weighted_object(canary)),
            Provider::Traefik => (traefik::Traefik::all_objects(canary), traefik::Traefik::weighted_object(canary)),
            Provider::Contour => (contour::Contour::all_objects(canary), contour::Contour::weighted_object(canary)),
            Provider::Kuma => (kuma::Kuma::all_objects(canary), kuma::Kuma::weighted_object(canary)),
            _ => unreachable!("not a mesh router"),
        }
    }

    const MESH_PROVIDERS: [Provider; 7] = [
        Provider::GatewayApi,
        Provider::Istio,
        Provider::Linkerd,
        Provider::Smi,
        Provider::Traefik,
        Provider::Contour,
        Provider::Kuma,
    ];

    /// `finalize` deletes `all_objects` and `reconcile` reads `weighted_object`: both must
    /// name exactly what `build` writes.
    #[test]
    fn mesh_routers_finalize_and_read_what_they_write() {
        let canary = testing::canary();
        for provider in MESH_PROVIDERS {
            let built: Vec<(ApiResource, String)> = build_for(provider, &canary, Weights::primary_only())
                .unwrap()
                .into_iter()
                .map(|o| {
                    let name = o.manifest["metadata"]["name"].as_str().unwrap().to_string();
                    assert_eq!(o.manifest["apiVersion"], o.resource.api_version.as_str(), "{provider}");
                    assert_eq!(o.manifest["kind"], o.resource.kind.as_str(), "{provider}");
                    (o.resource, name)
                })
                .collect();
            let (mut all, weighted) = all_objects_for(provider, &canary);
            assert!(built.contains(&weighted), "{provider}: {weighted:?} is not written");
            let mut built = built;
            let key = |o: &(ApiResource, String)| (o.0.kind.clone(), o.1.clone());
            built.sort_by_key(key);
            all.sort_by_key(key);
            assert_eq!(built, all, "{provider}");
        }
    }

    /// What a router refuses must agree with what `Provider` advertises (the state machine
    /// plans by the latter).
    #[test]
    fn routers_refuse_exactly_what_the_provider_does_not_support() {
        let mirrored = Weights::new(100, 0, true).unwrap();
        let mut exact_ab = testing::ab_canary();
        exact_ab.spec.analysis.as_mut().unwrap().match_.as_mut().unwrap().truncate(1);
        for provider in MESH_PROVIDERS {
            let mirror = build_for(provider, &testing::canary(), mirrored);
            assert_eq!(mirror.is_ok(), provider.supports_mirroring(), "{provider} mirroring");
            let ab = build_for(provider, &exact_ab, Weights::canary_only());
            assert_eq!(ab.is_ok(), provider.supports_matching(), "{provider} A/B");
        }
        // The routers that are not mesh routers: the same agreement.
        assert_eq!(gloo::build_route_table(&testing::canary(), mirrored).is_ok(), Provider::Gloo.supports_mirroring());
        assert_eq!(
            gloo::build_route_table(&exact_ab, Weights::canary_only()).is_ok(),
            Provider::Gloo.supports_matching()
        );
        let knative = knative::build_traffic(&exact_ab, "a", Some("b"), Weights::canary_only());
        assert_eq!(knative.is_ok(), Provider::Knative.supports_matching());
        let knative = knative::build_traffic(&testing::canary(), "a", Some("b"), mirrored);
        assert_eq!(knative.is_ok(), Provider::Knative.supports_mirroring());
        let selector =
            services::TargetPods::without_ports(services::PodSelector { key: "app".into(), value: "podinfo".into() });
        assert!(kubernetes::build_apex(&testing::canary(), &selector, mirrored).is_err());
        assert!(kubernetes::build_apex(&exact_ab, &selector, Weights::canary_only()).is_err());
        assert!(!Provider::Kubernetes.supports_mirroring() && !Provider::Kubernetes.supports_matching());
    }

    #[test]
    fn weights_that_overflow_a_byte_are_rejected() {
        assert!(Weights::new(200, 156, false).is_err());
        assert!(Weights::new(90, 20, false).is_err());
        assert!(Weights::new(0, 0, false).is_err());
    }

    #[test]
    fn apex_name_defaults_to_the_target() {
        let mut canary = testing::canary();
        canary.spec.service.name = None;
        assert_eq!(ServiceNames::of(&canary).apex, "podinfo");
        canary.spec.service.name = Some("web".into());
        let names = ServiceNames::of(&canary);
        assert_eq!(
            (names.apex.as_str(), names.primary.as_str(), names.canary.as_str()),
            ("web", "web-primary", "web-canary")
        );
    }

    #[test]
    fn regex_escape_quotes_every_metacharacter() {
        assert_eq!(regex_escape("a.b*c(d)"), r"a\.b\*c\(d\)");
        assert_eq!(regex_escape("plain"), "plain");
    }

    #[test]
    fn gateway_api_versions_listed_are_the_ones_built() {
        let mut canary = testing::canary();
        for provider in ["gatewayapi", "gatewayapi:v1beta1"] {
            canary.spec.provider = Some(provider.into());
            let built = gatewayapi::http_route_resource(&canary);
            assert!(third_party_resources().contains(&built), "{provider}: {built:?} not listed");
        }
    }

    /// The e2e clusters install `e2e/crds/third-party/`; every resource a router writes
    /// must be served there, or server-side apply fails with 404.
    #[test]
    fn e2e_crds_serve_every_third_party_resource() {
        let served = testing::e2e_third_party_served();
        for r in third_party_resources().into_iter().chain([knative::service_resource(), knative::revision_resource()])
        {
            let wanted = (r.group.clone(), r.version.clone(), r.kind.clone(), r.plural.clone());
            assert!(served.contains(&wanted), "no CRD in e2e/crds/third-party serves {wanted:?}");
        }
    }

    #[test]
    fn a_canary_without_uid_cannot_own_objects() {
        let mut canary = testing::canary();
        canary.metadata.uid = None;
        assert!(matches!(owner_reference(&canary), Err(RouterError::InvalidCanary { .. })));
    }
}
