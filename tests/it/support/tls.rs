//! TLS with a private CA, and an HTTPS server for MTA-STS policies.

use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// A private certificate authority: server certificates it signs verify against its
/// certificate, which [`TestCa::write_pem`] writes for the relay's `[delivery] tls_roots`.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "optin-relay test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// Writes the CA certificate (PEM) to `path`.
    pub fn write_pem(&self, path: &std::path::Path) {
        std::fs::write(path, &self.pem).unwrap();
    }

    /// A certificate for `name` signed by this CA and its key, both PEM (for a relay's
    /// `certificate` and `private_key`).
    pub fn leaf_pem(&self, name: &str) -> (String, String) {
        let (cert, key) = self.sign(name);
        (cert.pem(), key.serialize_pem())
    }

    /// A new key and a server certificate for `name` signed by this CA.
    fn sign(&self, name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert, key)
    }

    /// A client configuration that trusts this CA only.
    pub fn client(&self) -> Arc<rustls::ClientConfig> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.pem.as_bytes()).unwrap())
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(optin_relay::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }

    /// A server configuration whose certificate, signed by this CA, is valid for `name`.
    pub fn leaf(&self, name: &str) -> Arc<rustls::ServerConfig> {
        use rustls::pki_types::PrivateKeyDer;
        let (cert, key) = self.sign(name);
        let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(optin_relay::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .unwrap();
        Arc::new(config)
    }
}

/// An HTTPS server for MTA-STS policy files (see [`serve_policy`]).
pub struct PolicyServer {
    requests: Arc<Mutex<Vec<String>>>,
}

impl PolicyServer {
    /// Requests received (after a completed TLS handshake).
    pub fn requests(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// The `Host` header of each request, in order.
    pub fn hosts(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// Serves HTTPS on `addr` with `config`: `GET /.well-known/mta-sts.txt` is answered
/// `200 OK`, `text/plain`, with `body`; anything else `404`. One request per connection.
pub async fn serve_policy(
    addr: &str,
    config: Arc<rustls::ServerConfig>,
    body: String,
) -> PolicyServer {
    use tokio::io::AsyncReadExt;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = TcpListener::bind(addr).await.unwrap();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let log = requests.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, body, log) = (acceptor.clone(), body.clone(), log.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    if head.len() > 16384 {
                        return;
                    }
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let host = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("host")
                            .then(|| value.trim().to_string())
                    })
                    .unwrap_or_default();
                log.lock().unwrap().push(host);
                let (status, text) =
                    if head.starts_with("GET /.well-known/mta-sts.txt HTTP/1.1\r\n") {
                        ("200 OK", body.as_str())
                    } else {
                        ("404 Not Found", "not here\n")
                    };
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{text}",
                    text.len()
                );
                let _ = tls.write_all(reply.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    PolicyServer { requests }
}
