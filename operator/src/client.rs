//! The Kubernetes clients petrel builds: its own (either mode) and the hub's, one per
//! member.
//!
//! kube's client speaks HTTP/1.1 only, so every watch holds a connection of its own and
//! concurrent requests open more, each with its read and write buffers and, over TLS,
//! its session. Every Kubernetes API server speaks HTTP/2 over TLS: this client offers it
//! (ALPN `h2`, then `http/1.1`), so the watches and requests to one API server share one
//! connection. The rest is kube's stack: base URI, retries of server errors,
//! credentials, extra headers (the user agent). Two parts of it are not kept: the
//! per-request debug span, and the read and write timeouts on the socket, which would
//! cut a quiet watch. In their place every answer has a deadline for its start, and a
//! dead connection is noticed by HTTP/2 pings or TCP keepalive.
//!
//! One HTTP/2 connection carries as many requests at once as the server allows streams:
//! kube-apiserver allows 100. A release of 1,000 Canaries opens about 3,000 requests in
//! its first seconds, and on one connection they queued 92 at a time inside petrel
//! (docs/benchmarks.md). So [`build`] can open several connections: the watches keep
//! the first to themselves, and the other requests are dealt over the rest in turn.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use kube::client::ConfigExt as _;
use kube::{Client, Config};
use tower::ServiceBuilder;

/// How often an HTTP/2 connection is pinged, so that a dead one is noticed while every
/// watch on it is quiet (a dead HTTP/1 watch was noticed by its read timeout).
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// TLS sessions kept for resumption per client. A client talks to one API server, so a
/// few are enough; rustls' default of 256 preallocated about 14 KiB per client, 12.5 MiB
/// of the hub's memory at 1,000 members (heaptrack, docs/benchmarks.md).
const TLS_SESSIONS: usize = 8;

/// How many HTTP/2 connections petrel's own client opens to its API server unless
/// `--api-connections` says otherwise: one for the watches, three for the other requests
/// (about 300 at once).
// Evaluated at compile time: 4 is not zero.
pub const DEFAULT_API_CONNECTIONS: NonZeroUsize = NonZeroUsize::new(4).unwrap();

/// A client for `config`, waiting at most `answer_timeout` for the start of each answer
/// (a watch's answer starts at once, then streams without a limit), over `connections`
/// connections: with more than one, the watches have the first to themselves and the
/// other requests are dealt over the rest in turn. The hub's member clients use one each.
///
/// A plain-HTTP server, or one that offers only HTTP/1.1, gets HTTP/1.1 on this client
/// too. A kubeconfig with a `proxy-url` gets kube's own client (HTTP/1.1 through the
/// proxy), with the same answer timeout.
pub fn build(
    config: Config,
    answer_timeout: Option<Duration>,
    connections: NonZeroUsize,
) -> Result<Client, kube::Error> {
    let answer_timeout = answer_timeout.map(tower::timeout::TimeoutLayer::new);
    if config.proxy_url.is_some() {
        let builder = kube::client::ClientBuilder::try_from(config)?;
        return Ok(match answer_timeout {
            Some(timeout) => builder.with_layer(&timeout).build(),
            None => builder.build(),
        });
    }

    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(config.connect_timeout);
    // HTTP/2 writes a request as several frames; without TCP_NODELAY, Nagle's algorithm
    // holds the later ones until the peer's delayed ACK (a release in hub-bench took 5
    // times as long).
    http.set_nodelay(true);
    // An HTTP/1.1 watch has no pings: TCP keepalive notices a peer that vanished.
    http.set_keepalive(Some(KEEP_ALIVE));
    let mut tls = config.rustls_client_config()?;
    tls.resumption =
        rustls::client::Resumption::store(Arc::new(rustls::client::ClientSessionMemoryCache::new(TLS_SESSIONS)));
    let https = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http();
    let https = match &config.tls_server_name {
        Some(name) => {
            // The value is not repeated: a member's kubeconfig is read from a Secret.
            let name = rustls::pki_types::ServerName::try_from(name.clone()).map_err(|_| {
                kube::Error::Service("the kubeconfig's tls-server-name is not a valid server name".into())
            })?;
            https.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
        }
        None => https,
    };
    let https = https.enable_all_versions().wrap_connector(http);
    // Each hyper client keeps its own pool, and so its own HTTP/2 connection.
    let connection = || {
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_keep_alive_interval(Some(KEEP_ALIVE))
            .http2_keep_alive_while_idle(true)
            .timer(hyper_util::rt::TokioTimer::new())
            .build::<_, kube::client::Body>(https.clone())
    };
    let spread = Spread::new(connection(), (1..connections.get()).map(|_| connection()).collect());
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(
            config
                .default_retry
                .then(|| tower::retry::RetryLayer::new(kube::client::retry::RetryPolicy::server_retry())),
        )
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .option_layer(answer_timeout)
        .map_err(tower::BoxError::from)
        .service(spread);
    Ok(Client::new(service, config.default_namespace))
}

/// Requests dealt over several connections: watches on the first, the others in turn
/// over the rest (or the first too, when it is the only one). Watches are kept apart so
/// that re-opening one never waits for a stream behind a burst of requests.
#[derive(Clone)]
struct Spread<S> {
    watches: S,
    requests: Vec<S>,
    next: Arc<AtomicUsize>,
}

impl<S> Spread<S> {
    fn new(watches: S, requests: Vec<S>) -> Self {
        Spread { watches, requests, next: Arc::new(AtomicUsize::new(0)) }
    }

    fn pick<B>(&mut self, request: &http::Request<B>) -> &mut S {
        if is_watch(request.uri()) || self.requests.is_empty() {
            return &mut self.watches;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % self.requests.len();
        &mut self.requests[turn]
    }
}

/// Whether the request is a watch (`watch=true` or `watch=1` in its query).
fn is_watch(uri: &http::Uri) -> bool {
    uri.query().is_some_and(|query| query.split('&').any(|pair| matches!(pair, "watch=true" | "watch=1")))
}

impl<S, B> tower::Service<http::Request<B>> for Spread<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Which connection a request takes is known only at `call`, so every one must be
        // ready. A hyper client always is: it queues inside its pool.
        let mut all_ready = true;
        for service in std::iter::once(&mut self.watches).chain(self.requests.iter_mut()) {
            match service.poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => all_ready = false,
            }
        }
        if all_ready { Poll::Ready(Ok(())) } else { Poll::Pending }
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        self.pick(&request).call(request)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;
    use tower::{Service as _, ServiceExt as _};

    /// An API server on loopback behind TLS that offers HTTP/2 and HTTP/1.1 (ALPN), as a
    /// Kubernetes API server does: answers a watch with one event and keeps it open, and
    /// any other request with a ConfigMap. Returns its address, the number of TCP
    /// connections accepted and the HTTP version of every request.
    pub(crate) async fn tls_api_server() -> (std::net::SocketAddr, Arc<AtomicUsize>, Arc<Mutex<Vec<http::Version>>>) {
        use futures::StreamExt as _;
        use http_body_util::{Full, StreamBody};
        use hyper::body::{Bytes, Frame};
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use tokio_rustls::rustls;

        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .unwrap();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let versions = Arc::new(Mutex::new(Vec::new()));
        let (accepted, seen) = (connections.clone(), versions.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                accepted.fetch_add(1, Ordering::SeqCst);
                let (acceptor, seen) = (acceptor.clone(), seen.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else { return };
                    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                    let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                        seen.lock().unwrap().push(request.version());
                        let watch = request.uri().query().is_some_and(|q| q.contains("watch=true"));
                        async move {
                            let body: http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible> = if watch {
                                let event = r#"{"type":"ADDED","object":{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a","namespace":"default","resourceVersion":"2"}}}"#;
                                let first = futures::stream::iter([Ok::<_, std::convert::Infallible>(Frame::data(
                                    Bytes::from(format!("{event}\n")),
                                ))]);
                                http_body_util::BodyExt::boxed(StreamBody::new(first.chain(futures::stream::pending())))
                            } else {
                                let object = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a","namespace":"default","resourceVersion":"2"}}"#;
                                http_body_util::BodyExt::boxed(Full::new(Bytes::from(object)))
                            };
                            let mut response = http::Response::new(body);
                            response
                                .headers_mut()
                                .insert("content-type", http::HeaderValue::from_static("application/json"));
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let io = TokioIo::new(stream);
                    let _ = if h2 {
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, service)
                            .await
                    } else {
                        hyper::server::conn::http1::Builder::new().serve_connection(io, service).await
                    };
                });
            }
        });
        (addr, connections, versions)
    }

    #[tokio::test]
    async fn the_watches_take_one_connection_and_requests_are_spread_over_the_others() {
        use futures::StreamExt as _;
        use k8s_openapi::api::core::v1::ConfigMap;
        let (addr, connections, versions) = tls_api_server().await;
        let mut config = Config::new(format!("https://{addr}").parse().unwrap());
        config.accept_invalid_certs = true;
        let client = build(config, Some(Duration::from_secs(5)), NonZeroUsize::new(4).unwrap()).unwrap();
        let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, "default");
        let mut watches = Vec::new();
        for _ in 0..2 {
            let mut events = api.watch(&kube::api::WatchParams::default(), "1").await.unwrap().boxed();
            let first = tokio::time::timeout(Duration::from_secs(5), events.next()).await.unwrap();
            assert!(matches!(first, Some(Ok(kube::api::WatchEvent::Added(_)))), "{first:?}");
            watches.push(events);
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1, "both watches on the first connection");
        // Sent one after another, so each connection is up before the next request.
        for _ in 0..6 {
            api.get("a").await.unwrap();
        }
        assert_eq!(connections.load(Ordering::SeqCst), 4, "the watches' connection and three for requests");
        assert_eq!(*versions.lock().unwrap(), vec![http::Version::HTTP_2; 8]);
    }

    /// A service that answers with its own name.
    #[derive(Clone)]
    struct Named(&'static str);

    impl tower::Service<http::Request<()>> for Named {
        type Response = &'static str;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<&'static str, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            std::future::ready(Ok(self.0))
        }
    }

    async fn send(spread: &mut Spread<Named>, uri: &str) -> &'static str {
        let request = http::Request::get(uri).body(()).unwrap();
        let Ok(name) = spread.ready().await.unwrap().call(request).await;
        name
    }

    #[tokio::test]
    async fn watches_keep_the_first_connection_and_requests_take_the_others_in_turn() {
        let mut spread = Spread::new(Named("watches"), vec![Named("a"), Named("b"), Named("c")]);
        let mut taken = Vec::new();
        for _ in 0..2 {
            taken.push(send(&mut spread, "https://k/api/v1/pods?watch=true&resourceVersion=1").await);
            taken.push(send(&mut spread, "https://k/api/v1/namespaces/n/pods/p").await);
            taken.push(send(&mut spread, "https://k/apis/petrel.dev/v1/canaries?watch=1").await);
            taken.push(send(&mut spread, "https://k/apis/apps/v1/deployments?labelSelector=watch%3Dtrue").await);
        }
        assert_eq!(taken, ["watches", "a", "watches", "b", "watches", "c", "watches", "a"]);
        // A clone (tower's retry clones the service) keeps dealing in the same turn.
        let mut clone = spread.clone();
        assert_eq!(send(&mut clone, "https://k/api/v1/namespaces").await, "b");
    }

    #[tokio::test]
    async fn one_connection_carries_everything() {
        let mut spread = Spread::new(Named("only"), Vec::new());
        assert_eq!(send(&mut spread, "https://k/api/v1/pods?watch=true").await, "only");
        assert_eq!(send(&mut spread, "https://k/api/v1/pods").await, "only");
    }

    #[test]
    fn a_watch_is_told_by_its_query_parameter_alone() {
        let watch = |uri: &str| is_watch(&uri.parse().unwrap());
        assert!(watch("/api/v1/pods?watch=true"));
        assert!(watch("/api/v1/pods?resourceVersion=5&watch=1&timeoutSeconds=290"));
        assert!(!watch("/api/v1/pods?watch=false"));
        assert!(!watch("/api/v1/pods?labelSelector=watch%3Dtrue"));
        assert!(!watch("/api/v1/namespaces/watch/pods/watch"));
        assert!(!watch("/api/v1/pods"));
    }
}
