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

use std::sync::Arc;
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

/// A client for `config`, waiting at most `answer_timeout` for the start of each answer
/// (a watch's answer starts at once, then streams without a limit).
///
/// A plain-HTTP server, or one that offers only HTTP/1.1, gets HTTP/1.1 on this client
/// too. A kubeconfig with a `proxy-url` gets kube's own client (HTTP/1.1 through the
/// proxy), with the same answer timeout.
pub fn build(config: Config, answer_timeout: Option<Duration>) -> Result<Client, kube::Error> {
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
    let hyper_client: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_keep_alive_interval(Some(KEEP_ALIVE))
            .http2_keep_alive_while_idle(true)
            .timer(hyper_util::rt::TokioTimer::new())
            .build(https);
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
        .service(hyper_client);
    Ok(Client::new(service, config.default_namespace))
}
