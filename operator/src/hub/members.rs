//! Clients for the member clusters of a fleet, built from the kubeconfig Secrets the
//! `Cluster` objects name.
//!
//! A client is cached per Cluster together with a fingerprint of the kubeconfig it was
//! built from: a rotated Secret (new credentials, new endpoint) gets a new client at the
//! next reconcile, an unchanged one reuses the connection pool.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::{Api, Client, Config, ResourceExt};

use crate::api::Cluster;
use crate::api::cluster::KubeconfigSecretRef;

/// How long connecting to a member's API server may take: an unreachable member must
/// not hold up the reconcile of the whole fleet.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request to a member may wait for an answer.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a member's kubeconfig Secret, once read, stands without reading it again.
/// Reading it at every reconcile cost one GET on the hub per member per reconcile
/// (1,000 for a 1,000-cluster fleet; docs/benchmarks.md); a rotated Secret is now
/// picked up within this time (the probes, every 15 s, read it when it is due), and at
/// once when the Cluster names another Secret.
pub const KUBECONFIG_REFRESH: Duration = Duration::from_secs(30);

/// Why the hub has no client for a member.
#[derive(Debug, thiserror::Error)]
pub enum MemberClientError {
    #[error("cluster {cluster}: kubeconfig Secret {namespace}/{name} does not exist on the hub")]
    SecretMissing { cluster: String, namespace: String, name: String },
    #[error("cluster {cluster}: cannot read kubeconfig Secret {namespace}/{name}: {source}")]
    SecretUnreadable {
        cluster: String,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("cluster {cluster}: Secret {namespace}/{name} has no key {key:?} (keys: {present})")]
    KeyMissing { cluster: String, namespace: String, name: String, key: String, present: String },
    #[error("cluster {cluster}: key {key:?} of Secret {namespace}/{name} is not UTF-8 text")]
    NotText { cluster: String, namespace: String, name: String, key: String },
    #[error("cluster {cluster}: the kubeconfig is invalid: {source}")]
    InvalidKubeconfig {
        cluster: String,
        #[source]
        source: Box<KubeconfigError>,
    },
    #[error("cluster {cluster}: cannot create a client from the kubeconfig: {source}")]
    Client {
        cluster: String,
        #[source]
        source: Box<kube::Error>,
    },
}

/// The kubeconfig text stored under the Secret's key. Pure.
pub fn kubeconfig_text(
    cluster: &str,
    secret_ref: &KubeconfigSecretRef,
    secret: &Secret,
) -> Result<String, MemberClientError> {
    let data = secret.data.as_ref();
    let Some(bytes) = data.and_then(|d| d.get(&secret_ref.key)) else {
        let keys: Vec<&str> = data.map(|d| d.keys().map(String::as_str).collect()).unwrap_or_default();
        return Err(MemberClientError::KeyMissing {
            cluster: cluster.to_string(),
            namespace: secret_ref.namespace.clone(),
            name: secret_ref.name.clone(),
            key: secret_ref.key.clone(),
            present: if keys.is_empty() { "none".to_string() } else { keys.join(", ") },
        });
    };
    String::from_utf8(bytes.0.clone()).map_err(|_| MemberClientError::NotText {
        cluster: cluster.to_string(),
        namespace: secret_ref.namespace.clone(),
        name: secret_ref.name.clone(),
        key: secret_ref.key.clone(),
    })
}

/// A fingerprint of a kubeconfig: equal text, equal fingerprint. Pure.
pub fn kubeconfig_fingerprint(kubeconfig: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(kubeconfig.as_bytes()))
}

/// The client configuration for a member, with the hub's short timeouts. The read and
/// write timeouts reach the socket only through kube's own client (a kubeconfig with a
/// `proxy-url`, see [`crate::client::build`]); otherwise a member's requests are bounded
/// by the answer timeout [`member_client`] is given.
pub async fn member_config(cluster: &str, kubeconfig: &str) -> Result<Config, MemberClientError> {
    let invalid =
        |source| MemberClientError::InvalidKubeconfig { cluster: cluster.to_string(), source: Box::new(source) };
    let parsed = Kubeconfig::from_yaml(kubeconfig).map_err(invalid)?;
    let mut config = Config::from_custom_kubeconfig(parsed, &KubeConfigOptions::default()).await.map_err(invalid)?;
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(READ_TIMEOUT);
    config.write_timeout = Some(READ_TIMEOUT);
    crate::identify(&mut config);
    Ok(config)
}

impl MemberClientError {
    /// The reason a condition or Event gives for this error: a missing Secret, one the
    /// hub may not read, or a Secret whose content is no usable kubeconfig.
    pub fn reason(&self) -> &'static str {
        match self {
            MemberClientError::SecretMissing { .. } => "KubeconfigSecretMissing",
            MemberClientError::SecretUnreadable { .. } => "KubeconfigSecretUnreadable",
            MemberClientError::KeyMissing { .. }
            | MemberClientError::NotText { .. }
            | MemberClientError::InvalidKubeconfig { .. }
            | MemberClientError::Client { .. } => "KubeconfigInvalid",
        }
    }
}

/// The client for one member, built from one kubeconfig, for requests and watches
/// alike: one connection pool and one TLS configuration per member (two clients per
/// member cost the hub about 80 KiB each at 1,000 members; docs/benchmarks.md).
#[derive(Clone)]
pub struct MemberConnection {
    /// Every request waits at most [`READ_TIMEOUT`] for its answer to start; a watch's
    /// answer starts at once and then streams without a read timeout (a quiet watch is
    /// not a dead one: the watcher has its own idle timeout, and the hub probes each
    /// member separately).
    pub client: Client,
    /// [`kubeconfig_fingerprint`] of the kubeconfig it was built from.
    pub fingerprint: String,
}

/// The client configuration for a member's watches: the request configuration without
/// its read timeout.
pub async fn member_watch_config(cluster: &str, kubeconfig: &str) -> Result<Config, MemberClientError> {
    let mut config = member_config(cluster, kubeconfig).await?;
    config.read_timeout = None;
    Ok(config)
}

/// The one client of a member: the watch configuration (no read timeout on the
/// connection) with `answer_timeout` on the start of every answer, over
/// [`crate::client::build`]: one HTTP/2 connection per member where it speaks HTTP/2
/// over TLS, as every Kubernetes API server does, instead of one HTTP/1 connection (and
/// its buffers) per watch and request, which is what the hub's memory grows with at
/// 1,000 members (docs/benchmarks.md).
pub async fn member_client(
    cluster: &str,
    kubeconfig: &str,
    answer_timeout: Duration,
) -> Result<Client, MemberClientError> {
    let config = member_watch_config(cluster, kubeconfig).await?;
    crate::client::build(config, Some(answer_timeout), std::num::NonZeroUsize::MIN)
        .map_err(|source| MemberClientError::Client { cluster: cluster.to_string(), source: Box::new(source) })
}

/// A connection cached for a Cluster, with where and when its kubeconfig was read.
struct Cached {
    connection: MemberConnection,
    secret_ref: KubeconfigSecretRef,
    /// When the Secret was last read and found unchanged; `None`: read it next time.
    read_at: Option<Instant>,
}

/// Member clients, cached per Cluster name with the fingerprint of their kubeconfig.
pub struct MemberClients {
    hub: Client,
    cache: Mutex<HashMap<String, Cached>>,
    refresh: Duration,
}

impl MemberClients {
    pub fn new(hub: Client) -> Self {
        Self { hub, cache: Mutex::new(HashMap::new()), refresh: KUBECONFIG_REFRESH }
    }

    /// Member clients whose Secrets are read again after `refresh` (tests).
    #[cfg(test)]
    pub(crate) fn with_refresh(hub: Client, refresh: Duration) -> Self {
        Self { refresh, ..Self::new(hub) }
    }

    /// A client for the member `cluster` describes, from its kubeconfig Secret.
    pub async fn client_for(&self, cluster: &Cluster) -> Result<Client, MemberClientError> {
        self.connect(cluster).await.map(|connection| connection.client)
    }

    /// The clients for the member `cluster` describes, from its kubeconfig Secret. The
    /// Secret is read again once [`KUBECONFIG_REFRESH`] passed since the last read (or
    /// the Cluster names another Secret), so a rotated Secret is picked up; the clients
    /// are rebuilt only when the kubeconfig changed. Failures are never cached.
    pub async fn connect(&self, cluster: &Cluster) -> Result<MemberConnection, MemberClientError> {
        let name = cluster.name_any();
        let secret_ref = &cluster.spec.kubeconfig_secret_ref;
        if let Some(connection) = self.recently_read(&name, secret_ref) {
            return Ok(connection);
        }
        let secrets: Api<Secret> = Api::namespaced(self.hub.clone(), &secret_ref.namespace);
        let secret = secrets
            .get_opt(&secret_ref.name)
            .await
            .map_err(|source| MemberClientError::SecretUnreadable {
                cluster: name.clone(),
                namespace: secret_ref.namespace.clone(),
                name: secret_ref.name.clone(),
                source: Box::new(source),
            })?
            .ok_or_else(|| MemberClientError::SecretMissing {
                cluster: name.clone(),
                namespace: secret_ref.namespace.clone(),
                name: secret_ref.name.clone(),
            })?;
        let text = kubeconfig_text(&name, secret_ref, &secret)?;
        let fingerprint = kubeconfig_fingerprint(&text);
        if let Some(connection) = self.still_current(&name, secret_ref, &fingerprint) {
            return Ok(connection);
        }
        let client = member_client(&name, &text, READ_TIMEOUT).await?;
        let connection = MemberConnection { client, fingerprint };
        let cached =
            Cached { connection: connection.clone(), secret_ref: secret_ref.clone(), read_at: Some(Instant::now()) };
        self.lock().insert(name, cached);
        Ok(connection)
    }

    /// Puts a client in the cache as if built from `kubeconfig`, so tests can reach a
    /// fake member without a real API server. The Secret counts as unread: the next
    /// connect reads it (and records which Secret it was).
    #[cfg(test)]
    pub(crate) fn insert_for_test(&self, cluster: &str, kubeconfig: &str, client: Client) {
        let connection = MemberConnection { client, fingerprint: kubeconfig_fingerprint(kubeconfig) };
        let secret_ref =
            KubeconfigSecretRef { name: cluster.into(), namespace: String::new(), key: "kubeconfig".into() };
        self.lock().insert(cluster.to_string(), Cached { connection, secret_ref, read_at: None });
    }

    /// The cached connection when its Secret was read within the refresh time.
    fn recently_read(&self, cluster: &str, secret_ref: &KubeconfigSecretRef) -> Option<MemberConnection> {
        self.lock()
            .get(cluster)
            .filter(|c| &c.secret_ref == secret_ref)
            .filter(|c| c.read_at.is_some_and(|at| at.elapsed() < self.refresh))
            .map(|c| c.connection.clone())
    }

    /// The cached connection when the Secret just read holds the kubeconfig it was
    /// built from; records the read.
    fn still_current(
        &self,
        cluster: &str,
        secret_ref: &KubeconfigSecretRef,
        fingerprint: &str,
    ) -> Option<MemberConnection> {
        let mut cache = self.lock();
        let cached = cache.get_mut(cluster).filter(|c| c.connection.fingerprint == fingerprint)?;
        cached.secret_ref = secret_ref.clone();
        cached.read_at = Some(Instant::now());
        Some(cached.connection.clone())
    }

    /// Drops the clients of Clusters that no longer exist.
    pub fn retain(&self, clusters: &std::collections::BTreeSet<String>) {
        self.lock().retain(|name, _| clusters.contains(name));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        // A panic while holding the lock cannot leave the map half-updated (single
        // insert or get), so a poisoned lock is still safe to use.
        self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn secret_ref() -> KubeconfigSecretRef {
        KubeconfigSecretRef { name: "eu-1".into(), namespace: "petrel-system".into(), key: "kubeconfig".into() }
    }

    fn secret(entries: &[(&str, &[u8])]) -> Secret {
        Secret {
            data: Some(entries.iter().map(|(k, v)| (k.to_string(), ByteString(v.to_vec()))).collect()),
            ..Default::default()
        }
    }

    const KUBECONFIG: &str = r#"
apiVersion: v1
kind: Config
clusters:
- name: eu-1
  cluster:
    server: https://127.0.0.1:6443
    insecure-skip-tls-verify: true
users:
- name: hub
  user:
    token: abc
contexts:
- name: eu-1
  context: {cluster: eu-1, user: hub}
current-context: eu-1
"#;

    #[test]
    fn the_kubeconfig_is_read_from_the_named_key() {
        let text = kubeconfig_text("eu-1", &secret_ref(), &secret(&[("kubeconfig", b"apiVersion: v1")])).unwrap();
        assert_eq!(text, "apiVersion: v1");
    }

    #[test]
    fn a_missing_key_names_the_secret_and_the_keys_it_has() {
        let error = kubeconfig_text("eu-1", &secret_ref(), &secret(&[("config", b"x"), ("token", b"y")]))
            .unwrap_err()
            .to_string();
        assert_eq!(error, r#"cluster eu-1: Secret petrel-system/eu-1 has no key "kubeconfig" (keys: config, token)"#);
        let empty = kubeconfig_text("eu-1", &secret_ref(), &Secret::default()).unwrap_err().to_string();
        assert!(empty.ends_with("(keys: none)"), "{empty}");
    }

    #[test]
    fn binary_data_is_not_a_kubeconfig() {
        let error = kubeconfig_text("eu-1", &secret_ref(), &secret(&[("kubeconfig", &[0xff, 0xfe])])).unwrap_err();
        assert!(matches!(error, MemberClientError::NotText { .. }), "{error}");
    }

    #[test]
    fn fingerprints_change_with_the_kubeconfig_only() {
        assert_eq!(kubeconfig_fingerprint(KUBECONFIG), kubeconfig_fingerprint(KUBECONFIG));
        assert_ne!(kubeconfig_fingerprint(KUBECONFIG), kubeconfig_fingerprint(&KUBECONFIG.replace("abc", "abd")));
        assert_eq!(kubeconfig_fingerprint("").len(), 64);
    }

    #[tokio::test]
    async fn a_valid_kubeconfig_gets_the_hub_timeouts() {
        let config = member_config("eu-1", KUBECONFIG).await.unwrap();
        assert_eq!(config.cluster_url.to_string(), "https://127.0.0.1:6443/");
        assert_eq!(config.connect_timeout, Some(CONNECT_TIMEOUT));
        assert_eq!(config.read_timeout, Some(READ_TIMEOUT));
    }

    #[tokio::test]
    async fn watches_get_no_read_timeout() {
        let config = member_watch_config("eu-1", KUBECONFIG).await.unwrap();
        assert_eq!((config.connect_timeout, config.read_timeout), (Some(CONNECT_TIMEOUT), None));
    }

    /// A member on loopback that answers a watch at once and then streams slowly, and
    /// never answers anything else.
    async fn slow_member() -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    let mut request = vec![0u8; 4096];
                    let n = socket.read(&mut request).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&request[..n]).to_string();
                    if !head.contains("watch=true") {
                        // Never answers; keeps the connection open.
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        return;
                    }
                    let _ = socket
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
                        )
                        .await;
                    // The first event comes well after the answer timeout.
                    tokio::time::sleep(Duration::from_millis(600)).await;
                    let event = r#"{"type":"ADDED","object":{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a","namespace":"default","resourceVersion":"2"}}}"#;
                    let chunk = format!("{:x}\r\n{event}\n\r\n", event.len() + 1);
                    let _ = socket.write_all(chunk.as_bytes()).await;
                    tokio::time::sleep(Duration::from_secs(60)).await;
                });
            }
        });
        KUBECONFIG.replace("https://127.0.0.1:6443", &format!("http://{addr}"))
    }

    #[tokio::test]
    async fn one_client_times_out_requests_but_not_a_quiet_watch() {
        use futures::StreamExt;
        use k8s_openapi::api::core::v1::ConfigMap;
        let kubeconfig = slow_member().await;
        let client = member_client("eu-1", &kubeconfig, Duration::from_millis(200)).await.unwrap();
        let api: Api<ConfigMap> = Api::namespaced(client, "default");
        let started = Instant::now();
        let error = api.get("a").await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert!(error.to_string().contains("timed out") || error.to_string().contains("elapsed"), "{error}");
        let mut events = api.watch(&kube::api::WatchParams::default(), "1").await.unwrap().boxed();
        let first = tokio::time::timeout(Duration::from_secs(5), events.next()).await.unwrap();
        let event = first.expect("an event").expect("the watch outlives the answer timeout");
        assert!(matches!(event, kube::api::WatchEvent::Added(_)), "{event:?}");
    }

    /// The API server of `crate::client::tests::tls_api_server`, with its kubeconfig.
    async fn tls_member() -> (String, Arc<AtomicUsize>, Arc<Mutex<Vec<http::Version>>>) {
        let (addr, connections, versions) = crate::client::tests::tls_api_server().await;
        (KUBECONFIG.replace("127.0.0.1:6443", &addr.to_string()), connections, versions)
    }

    #[tokio::test]
    async fn a_tls_member_gets_its_watch_and_requests_on_one_http2_connection() {
        use futures::StreamExt;
        use k8s_openapi::api::core::v1::ConfigMap;
        let (kubeconfig, connections, versions) = tls_member().await;
        let client = member_client("eu-1", &kubeconfig, Duration::from_secs(5)).await.unwrap();
        let api: Api<ConfigMap> = Api::namespaced(client, "default");
        let mut events = api.watch(&kube::api::WatchParams::default(), "1").await.unwrap().boxed();
        let first = tokio::time::timeout(Duration::from_secs(5), events.next()).await.unwrap();
        assert!(matches!(first, Some(Ok(kube::api::WatchEvent::Added(_)))), "{first:?}");
        // While the watch stays open, requests go over the same connection.
        let gets = futures::future::join_all((0..3).map(|_| api.get("a"))).await;
        assert!(gets.iter().all(Result::is_ok), "{gets:?}");
        assert_eq!(connections.load(Ordering::SeqCst), 1, "one connection for the watch and the requests");
        let versions = versions.lock().unwrap().clone();
        assert_eq!(versions, vec![http::Version::HTTP_2; 4]);
    }

    #[test]
    fn errors_name_their_reason() {
        let missing = MemberClientError::SecretMissing {
            cluster: "eu-1".into(),
            namespace: "petrel-system".into(),
            name: "eu-1".into(),
        };
        assert_eq!(missing.reason(), "KubeconfigSecretMissing");
        let not_text = kubeconfig_text("eu-1", &secret_ref(), &secret(&[("kubeconfig", &[0xff])])).unwrap_err();
        assert_eq!(not_text.reason(), "KubeconfigInvalid");
    }

    #[tokio::test]
    async fn a_broken_kubeconfig_is_an_error_for_that_cluster() {
        let error = member_config("eu-1", "clusters: [").await.unwrap_err();
        assert!(matches!(error, MemberClientError::InvalidKubeconfig { .. }), "{error}");
        assert_eq!(error.reason(), "KubeconfigInvalid");
        assert!(error.to_string().starts_with("cluster eu-1: the kubeconfig is invalid"), "{error}");
        // Parses, but names no context to use.
        let error = member_config("eu-1", "apiVersion: v1\nkind: Config\n").await.unwrap_err();
        assert!(error.to_string().starts_with("cluster eu-1:"), "{error}");
    }
}
