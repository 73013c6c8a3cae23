//! Per-cluster PKI generated with rcgen: a CA, the apiserver serving cert,
//! an admin client cert (group `system:masters`) and the service-account
//! signing key, plus the admin kubeconfig.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use kube::config::{AuthInfo, Cluster, Context, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

/// Files of one cluster's PKI (all PEM).
#[derive(Debug, Clone)]
pub struct PkiFiles {
    pub ca_cert: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    /// Service-account token signing key (ECDSA P-256, PKCS#8).
    pub sa_key: PathBuf,
    /// Its public key (PKIX), for `--service-account-key-file`.
    pub sa_pub: PathBuf,
    /// PEM contents, for the kubeconfig.
    pub ca_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
}

fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

/// Generates a fresh PKI for `cluster` into `dir` (created if needed).
pub fn generate(cluster: &str, dir: &Path, service_ip: IpAddr) -> Result<PkiFiles> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name.push(DnType::CommonName, format!("petrel-e2e-{cluster}-ca"));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca = Issuer::new(ca_params, ca_key);

    // Serving cert: what rustls (kube-rs) and Go clients verify.
    let mut serving = CertificateParams::new(vec![
        "localhost".to_string(),
        "kubernetes".to_string(),
        "kubernetes.default".to_string(),
        "kubernetes.default.svc".to_string(),
        "kubernetes.default.svc.cluster.local".to_string(),
    ])?;
    serving.subject_alt_names.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    serving.subject_alt_names.push(SanType::IpAddress(service_ip));
    serving.distinguished_name.push(DnType::CommonName, "kube-apiserver");
    serving.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_key = KeyPair::generate()?;
    let serving_cert = serving.signed_by(&serving_key, &ca)?;

    // Admin: x509 client-cert authn; O=system:masters is cluster-admin.
    let mut admin = CertificateParams::new(Vec::<String>::new())?;
    admin.distinguished_name.push(DnType::CommonName, "petrel-e2e-admin");
    admin.distinguished_name.push(DnType::OrganizationName, "system:masters");
    admin.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin_key = KeyPair::generate()?;
    let admin_cert = admin.signed_by(&admin_key, &ca)?;

    let sa_key = KeyPair::generate()?;

    let files = PkiFiles {
        ca_cert: dir.join("ca.crt"),
        serving_cert: dir.join("apiserver.crt"),
        serving_key: dir.join("apiserver.key"),
        admin_cert: dir.join("admin.crt"),
        admin_key: dir.join("admin.key"),
        sa_key: dir.join("sa.key"),
        sa_pub: dir.join("sa.pub"),
        ca_pem: ca_cert.pem(),
        admin_cert_pem: admin_cert.pem(),
        admin_key_pem: admin_key.serialize_pem(),
    };
    write_private(&files.ca_cert, &files.ca_pem)?;
    write_private(&files.serving_cert, &serving_cert.pem())?;
    write_private(&files.serving_key, &serving_key.serialize_pem())?;
    write_private(&files.admin_cert, &files.admin_cert_pem)?;
    write_private(&files.admin_key, &files.admin_key_pem)?;
    write_private(&files.sa_key, &sa_key.serialize_pem())?;
    write_private(&files.sa_pub, &sa_key.public_key_pem())?;
    Ok(files)
}

/// Admin kubeconfig YAML with embedded CA, client cert and key.
pub fn admin_kubeconfig(cluster: &str, server: &str, pki: &PkiFiles) -> Result<String> {
    let user = format!("{cluster}-admin");
    let kubeconfig = Kubeconfig {
        api_version: Some("v1".into()),
        kind: Some("Config".into()),
        clusters: vec![NamedCluster {
            name: cluster.into(),
            cluster: Some(Cluster {
                server: Some(server.into()),
                certificate_authority_data: Some(STANDARD.encode(&pki.ca_pem)),
                ..Cluster::default()
            }),
            ..NamedCluster::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: user.clone(),
            auth_info: Some(AuthInfo {
                client_certificate_data: Some(STANDARD.encode(&pki.admin_cert_pem)),
                client_key_data: Some(STANDARD.encode(&pki.admin_key_pem).into()),
                ..AuthInfo::default()
            }),
            ..NamedAuthInfo::default()
        }],
        contexts: vec![NamedContext {
            name: cluster.into(),
            context: Some(Context {
                cluster: cluster.into(),
                user: Some(user),
                namespace: Some("default".into()),
                ..Context::default()
            }),
            ..NamedContext::default()
        }],
        current_context: Some(cluster.into()),
        ..Kubeconfig::default()
    };
    serde_yaml::to_string(&kubeconfig).context("writing the admin kubeconfig as YAML")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_admin_kubeconfig_reads_back_with_its_certificates() {
        let dir = std::env::temp_dir().join(format!("petrel-e2e-pki-{}", std::process::id()));
        let pki = generate("eu-1", &dir, IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1))).unwrap();
        let text = admin_kubeconfig("eu-1", "https://127.0.0.1:6443", &pki).unwrap();
        let _ = std::fs::remove_dir_all(&dir);

        let parsed = Kubeconfig::from_yaml(&text).unwrap();
        assert_eq!(parsed.current_context.as_deref(), Some("eu-1"));
        let cluster = parsed.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
        let decoded = |data: &str| String::from_utf8(STANDARD.decode(data).unwrap()).unwrap();
        assert_eq!(decoded(cluster.certificate_authority_data.as_deref().unwrap()), pki.ca_pem);
        let user = parsed.auth_infos[0].auth_info.as_ref().unwrap();
        assert_eq!(decoded(user.client_certificate_data.as_deref().unwrap()), pki.admin_cert_pem);
        let context = parsed.contexts[0].context.as_ref().unwrap();
        assert_eq!((context.user.as_deref(), context.namespace.as_deref()), (Some("eu-1-admin"), Some("default")));

        // kube builds a client configuration from it: server, CA and client identity.
        let config =
            kube::Config::from_custom_kubeconfig(parsed, &kube::config::KubeConfigOptions::default()).await.unwrap();
        assert_eq!(config.cluster_url.to_string(), "https://127.0.0.1:6443/");
        assert_eq!(config.root_cert.map(|certs| certs.len()), Some(1));
        assert!(config.auth_info.client_key_data.is_some());
    }
}
