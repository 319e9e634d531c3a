//! TLS for both directions, with rustls and the ring provider passed explicitly (so no
//! other provider can be picked up at run time).
//!
//! Inbound: the configured certificate chain and key, or — when none is configured — a
//! self-signed certificate for the relay's hostname made at start and announced in the log.
//! Outbound: opportunistic STARTTLS, where (as in every MTA's opportunistic mode) the
//! server's certificate is not checked against a CA or name, but the handshake signatures
//! still are, so the session is encrypted against passive listeners; and verified TLS
//! (MTA-STS, `tls = "verify"` destinations, a smart host), where the certificate must
//! chain to the Mozilla roots plus configured extra CAs — or, for a smart host with its
//! own `ca_file`, to that CA only — and be valid for the server's name.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate {path}: {message}")]
    Certificate { path: String, message: String },
    #[error("TLS private key {path}: {message}")]
    Key { path: String, message: String },
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// A listener's certificate files (`[tls]`, `[http.tls]`).
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    /// PEM certificate chain; with `private_key`. Neither: a self-signed one is made at start.
    pub certificate: Option<PathBuf>,
    pub private_key: Option<PathBuf>,
}

/// The negotiated TLS parameters, for the Received header and logs.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    pub protocol: String,
    pub cipher: String,
}

/// The inbound TLS configuration: from files, or self-signed for `hostname`.
pub fn server_config(config: &TlsConfig, hostname: &str) -> Result<Arc<ServerConfig>, TlsError> {
    let (chain, key) = match (&config.certificate, &config.private_key) {
        (Some(cert), Some(key)) => (load_chain(cert)?, load_key(key)?),
        _ => {
            let (chain, key) = self_signed(hostname)?;
            tracing::warn!(
                hostname,
                "no TLS certificate configured: using a self-signed certificate made at start \
                 (set [tls] certificate and private_key for one clients can verify)"
            );
            (chain, key)
        }
    };
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    Ok(Arc::new(config))
}

fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |message: String| TlsError::Certificate {
        path: path.display().to_string(),
        message,
    };
    let chain: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(e.to_string()))?;
    if chain.is_empty() {
        return Err(err("no certificate in the file".into()));
    }
    Ok(chain)
}

/// When the first certificate of the chain in `path` expires (Unix seconds), for
/// `config check` and the `optin_tls_certificate_not_after_seconds` gauge.
pub fn not_after(path: &Path) -> Result<i64, TlsError> {
    let chain = load_chain(path)?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&chain[0]).map_err(|e| TlsError::Certificate {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
    Ok(cert.validity().not_after.timestamp())
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Key {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// A fresh self-signed certificate and key for `hostname` (and localhost).
pub fn self_signed(
    hostname: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let mut names = vec![hostname.to_string()];
    if hostname != "localhost" {
        names.push("localhost".into());
    }
    let certified =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Setup(e.to_string()))?;
    let key = PrivateKeyDer::try_from(certified.signing_key.serialize_der())
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    Ok((vec![certified.cert.der().clone()], key))
}

/// Outbound configuration for opportunistic STARTTLS (see the module doc).
pub fn opportunistic_client_config() -> Arc<ClientConfig> {
    let provider = provider();
    let verifier = Arc::new(AnyCertificate(provider.clone()));
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Arc::new(config)
}

/// A client configuration that verifies server certificates against the Mozilla roots
/// (webpki-roots) plus `extra_roots` (PEM file of CA certificates, e.g. a private CA), for
/// MTA-STS policy fetches and MTA-STS-enforced SMTP.
pub fn verifying_client_config(extra_roots: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut store = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = extra_roots {
        add_roots(&mut store, path)?;
    }
    client_config_trusting(store)
}

/// A client configuration that verifies server certificates against the CA certificates
/// in `ca_file` (PEM) only: a smart host under a provider's or an organisation's own CA.
pub fn private_ca_client_config(ca_file: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    add_roots(&mut store, ca_file)?;
    client_config_trusting(store)
}

/// Adds the CA certificates of a PEM file to `store`.
fn add_roots(store: &mut rustls::RootCertStore, path: &Path) -> Result<(), TlsError> {
    for cert in load_chain(path)? {
        store.add(cert).map_err(|e| TlsError::Certificate {
            path: path.display().to_string(),
            message: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(())
}

/// A verifying client configuration that trusts the roots in `store`.
fn client_config_trusting(store: rustls::RootCertStore) -> Result<Arc<ClientConfig>, TlsError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_root_certificates(store)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Accepts any certificate but checks handshake signatures with the provider's algorithms.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The protocol and cipher of an established server-side TLS session.
pub fn describe(conn: &rustls::ServerConnection) -> TlsInfo {
    TlsInfo {
        protocol: conn
            .protocol_version()
            .and_then(|v| v.as_str())
            .unwrap_or("TLS")
            .to_string(),
        cipher: conn
            .negotiated_cipher_suite()
            .and_then(|c| c.suite().as_str())
            .unwrap_or("unknown")
            .to_string(),
    }
}
