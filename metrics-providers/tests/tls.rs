//! `insecureSkipVerify` against a real HTTPS server on 127.0.0.1 whose
//! certificate is self-signed (the fixture pair in `tests/fixtures` exists
//! only for this test and protects nothing).

use std::sync::Arc;

use metrics_providers::{EgressPolicy, MetricProvider, ProviderConfig, ProviderKind, QueryError, build_provider};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

const CERT: &[u8] = include_bytes!("fixtures/test-only-cert.pem");
const KEY: &[u8] = include_bytes!("fixtures/test-only-key.pem");

const BODY: &str =
    r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1763776800.781,"1"]}]}}"#;

/// A minimal HTTPS/1.1 server: reads one request head and answers `BODY`.
async fn start_https() -> String {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(CERT).unwrap()],
            PrivateKeyDer::from_pem_slice(KEY).unwrap(),
        )
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A failed handshake (the verifying client) just ends here.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                assert!(head.starts_with(b"GET /api/v1/query?query=vector%281%29 HTTP/1.1\r\n"));
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
                    BODY.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    address
}

#[tokio::test]
async fn self_signed_certificate_is_rejected_unless_insecure_skip_verify() {
    let address = start_https().await;
    let mut config = local_config(ProviderKind::Prometheus, address);

    match build_provider(&config).unwrap().query("vector(1)").await {
        Err(QueryError::Transport(message)) => {
            assert!(message.to_lowercase().contains("certificate"), "{message}")
        }
        other => panic!("expected a certificate error, got {other:?}"),
    }

    config.insecure_skip_verify = true;
    assert_eq!(build_provider(&config).unwrap().query("vector(1)").await, Ok(1.0));
}

/// A config for a backend on 127.0.0.1, which the strict default egress policy refuses.
fn local_config(kind: ProviderKind, address: impl Into<String>) -> ProviderConfig {
    let mut config = ProviderConfig::new(kind, address);
    config.egress = EgressPolicy::strict().allowing_loopback();
    config
}
