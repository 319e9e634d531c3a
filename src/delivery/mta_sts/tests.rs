//! Tests of MTA-STS: policy and TXT parsing, MX patterns, fetches against a local HTTPS
//! server with a test CA, and discovery and caching against an in-test DNS server.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};

use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

use super::*;

const RFC_EXAMPLE: &str = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\n\
                           mx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n";

// ---- policy text -------------------------------------------------------------------------

#[test]
fn parses_the_rfc_example() {
    let p = Policy::parse("20160831085700Z", RFC_EXAMPLE).unwrap();
    assert_eq!(p.id, "20160831085700Z");
    assert_eq!(p.mode, Mode::Enforce);
    assert_eq!(
        p.mx,
        ["mail.example.com", "*.example.net", "backupmx.example.com"]
    );
    assert_eq!(p.max_age, Duration::from_secs(604800));
}

#[test]
fn parses_lf_lines_and_ignores_unknown_keys() {
    let text = "version: STSv1\nmode: testing\nfuture_key: whatever\nmx:MX.Example.COM.\n\
                max_age:86400\n\n";
    let p = Policy::parse("1", text).unwrap();
    assert_eq!(p.mode, Mode::Testing);
    assert_eq!(p.mx, ["mx.example.com"]);
    assert_eq!(p.max_age, Duration::from_secs(86400));
    assert_eq!(p, Policy::parse("1", &text.replace('\n', "\r\n")).unwrap());
}

#[test]
fn refuses_missing_or_bad_fields() {
    let cases = [
        ("mode: enforce\nmx: a.test\nmax_age: 1\n", "no version"),
        (
            "version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n",
            "version",
        ),
        ("version: STSv1\nmx: a.test\nmax_age: 1\n", "no mode"),
        ("version: STSv1\nmode: enforce\nmx: a.test\n", "no max_age"),
        (
            "version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n",
            "unknown policy mode",
        ),
        (
            "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -1\n",
            "max_age",
        ),
        (
            "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 12345678901\n",
            "max_age",
        ),
        (
            "version: STSv1\nmode: enforce\nmx: a..test\nmax_age: 1\n",
            "invalid mx",
        ),
        (
            "version: STSv1\nmode: enforce\nmx: a.*.test\nmax_age: 1\n",
            "invalid mx",
        ),
        ("version: STSv1\nmode: enforce\nmax_age: 1\n", "no mx"),
        ("version: STSv1\nmode: testing\nmax_age: 1\n", "no mx"),
        ("<html>not a policy</html>", "colon"),
    ];
    for (text, expected) in cases {
        let err = Policy::parse("1", text).unwrap_err();
        assert!(err.contains(expected), "{text:?}: {err}");
    }
}

#[test]
fn caps_max_age_and_allows_none_without_mx() {
    let p = Policy::parse("1", "version: STSv1\nmode: none\nmax_age: 9999999999\n").unwrap();
    assert_eq!(p.mode, Mode::None);
    assert!(p.mx.is_empty());
    assert_eq!(p.max_age, Duration::from_secs(31_557_600));
}

#[test]
fn first_occurrence_of_a_field_wins() {
    let text = "version: STSv1\nmode: testing\nmode: enforce\nmx: a.test\nmax_age: 5\nmax_age: 9\n";
    let p = Policy::parse("1", text).unwrap();
    assert_eq!((p.mode, p.max_age), (Mode::Testing, Duration::from_secs(5)));
}

#[test]
fn matches_mx_hosts() {
    let p = Policy::parse("1", RFC_EXAMPLE).unwrap();
    assert!(p.mx_matches("mail.example.com"));
    assert!(p.mx_matches("MAIL.Example.Com"));
    assert!(p.mx_matches("mail.example.com."));
    assert!(p.mx_matches("backupmx.example.com"));
    assert!(!p.mx_matches("example.com"));
    assert!(!p.mx_matches("xmail.example.com"));
    assert!(!p.mx_matches("mail.example.com.evil.test"));
    // The wildcard stands for exactly one left-most label.
    assert!(p.mx_matches("mx1.example.net"));
    assert!(p.mx_matches("MX1.EXAMPLE.NET."));
    assert!(!p.mx_matches("example.net"));
    assert!(!p.mx_matches(".example.net"));
    assert!(!p.mx_matches("a.b.example.net"));
    assert!(!p.mx_matches(""));
}

#[test]
fn parses_txt_records() {
    let id = |s: &str| Some(s.to_string());
    assert_eq!(
        parse_txt("v=STSv1; id=20160831085700Z;"),
        id("20160831085700Z")
    );
    assert_eq!(parse_txt("v=STSv1;id=abc"), id("abc"));
    assert_eq!(parse_txt("v=STSv1 ;\tid=abc ; "), id("abc"));
    assert_eq!(parse_txt("v=STSv1; ext=x-1; id=abc; other=1;"), id("abc"));
    assert_eq!(
        parse_txt(&format!("v=STSv1; id={};", "a".repeat(32))),
        id(&"a".repeat(32))
    );
    for bad in [
        "",
        "id=abc;",
        "id=abc; v=STSv1;",
        "v=STSv2; id=abc;",
        "v=stsv1; id=abc;",
        "v=STSv1;",
        "v=STSv1; id=;",
        "v=STSv1; id=ab-c;",
        "v=STSv1; id=abc def;",
        &format!("v=STSv1; id={};", "a".repeat(33)),
        "v=STSv1; id=abc; id=def;",
        "v=STSv1; id=abc; junk;",
        "v=spf1 -all",
    ] {
        assert_eq!(parse_txt(bad), None, "{bad:?}");
    }
}

// ---- TLS roots ---------------------------------------------------------------------------

#[test]
fn refuses_unusable_extra_roots() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    for path in [
        empty.as_path(),
        garbage.as_path(),
        &dir.path().join("missing.pem"),
    ] {
        let err = crate::tls::verifying_client_config(Some(path)).unwrap_err();
        assert!(
            matches!(err, crate::tls::TlsError::Certificate { .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
    assert!(crate::tls::verifying_client_config(None).is_ok());
}

// ---- HTTPS fetch -------------------------------------------------------------------------

const DOMAIN: &str = "sts.test";
const GOOD_POLICY: &str =
    "version: STSv1\r\nmode: enforce\r\nmx: mx.sts.test\r\nmax_age: 86400\r\n";

/// A private CA, and a client configuration that trusts it (through a PEM file, as in
/// production).
struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    client: Arc<ClientConfig>,
    _dir: tempfile::TempDir,
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "MTA-STS test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, cert.pem()).unwrap();
        TestCa {
            issuer: rcgen::Issuer::new(params, key),
            client: crate::tls::verifying_client_config(Some(&path)).unwrap(),
            _dir: dir,
        }
    }

    /// A server certificate for `name` signed by this CA.
    fn leaf(&self, name: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        (vec![cert.der().clone()], key)
    }
}

fn http_response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

/// An HTTPS server on 127.0.0.1 that answers every request for the policy path with Host
/// `mta-sts.sts.test` with `response` (others get 400), counting requests.
async fn serve(
    cert: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
    response: String,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let config = ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(cert.0, cert.1)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, response, counter) =
                (acceptor.clone(), response.clone(), counter.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let expected = head.starts_with("get /.well-known/mta-sts.txt http/1.1\r\n")
                    && head.contains("\r\nhost: mta-sts.sts.test\r\n");
                let reply = if expected {
                    response
                } else {
                    http_response("400 Bad Request", "text/plain", "unexpected request")
                };
                let _ = tls.write_all(reply.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, requests)
}

async fn fetch_from(ca: &TestCa, addr: SocketAddr) -> Result<Policy, String> {
    fetch(
        addr,
        DOMAIN,
        "id1",
        ca.client.clone(),
        Duration::from_secs(5),
    )
    .await
}

#[tokio::test]
async fn fetches_a_policy() {
    let ca = TestCa::new();
    let ok = http_response("200 OK", "text/plain; charset=utf-8", GOOD_POLICY);
    let (addr, requests) = serve(ca.leaf("mta-sts.sts.test"), ok).await;
    let policy = fetch_from(&ca, addr).await.unwrap();
    assert_eq!(policy.id, "id1");
    assert_eq!(policy.mode, Mode::Enforce);
    assert_eq!(policy.mx, ["mx.sts.test"]);
    assert_eq!(requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn refuses_bad_responses() {
    let ca = TestCa::new();
    let big = format!("{GOOD_POLICY}{}", "x: y\n".repeat(14_000));
    let cases = [
        (http_response("404 Not Found", "text/plain", "no"), "404"),
        (
            "HTTP/1.1 301 Moved Permanently\r\nLocation: https://elsewhere.test/\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
                .to_string(),
            "301",
        ),
        (
            http_response("200 OK", "text/html", GOOD_POLICY),
            "media type",
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
            "media type",
        ),
        (http_response("200 OK", "text/plain", &big), "larger than"),
        (
            http_response("200 OK", "text/plain", "mode: enforce\n"),
            "version",
        ),
    ];
    for (response, expected) in cases {
        let (addr, _) = serve(ca.leaf("mta-sts.sts.test"), response).await;
        let err = fetch_from(&ca, addr).await.unwrap_err();
        assert!(err.contains(expected), "expected {expected:?}: {err}");
    }
}

#[tokio::test]
async fn refuses_a_certificate_for_another_name() {
    let ca = TestCa::new();
    let ok = http_response("200 OK", "text/plain", GOOD_POLICY);
    let (addr, requests) = serve(ca.leaf("mta-sts.other.test"), ok).await;
    let err = fetch_from(&ca, addr).await.unwrap_err();
    assert!(err.contains("TLS") && err.contains("certificate"), "{err}");
    assert_eq!(requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn refuses_a_certificate_from_an_unknown_issuer() {
    let ca = TestCa::new();
    let ok = http_response("200 OK", "text/plain", GOOD_POLICY);
    let self_signed = crate::tls::self_signed("mta-sts.sts.test").unwrap();
    let (addr, requests) = serve(self_signed, ok).await;
    let err = fetch_from(&ca, addr).await.unwrap_err();
    assert!(err.contains("TLS") && err.contains("certificate"), "{err}");
    assert_eq!(requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn times_out_on_a_silent_server() {
    let ca = TestCa::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp); // accepted, never answered
        }
    });
    let started = std::time::Instant::now();
    let timeout = Duration::from_millis(300);
    let err = fetch(addr, DOMAIN, "id1", ca.client.clone(), timeout)
        .await
        .unwrap_err();
    assert!(err.contains("timed out"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(1));
    holder.abort();
}

// ---- discovery and cache -----------------------------------------------------------------

/// A DNS server on 127.0.0.1 whose zone the test changes as it goes: names with their
/// records, and names that answer SERVFAIL. Answers have TTL 0, so the resolver's own cache
/// never hides a change.
#[derive(Clone, Default)]
struct Zone {
    records: Arc<Mutex<HashMap<String, Vec<RData>>>>,
    servfail: Arc<Mutex<HashSet<String>>>,
}

impl Zone {
    fn set(&self, name: &str, records: Vec<RData>) {
        self.records
            .lock()
            .unwrap()
            .insert(name.to_string(), records);
    }

    fn remove(&self, name: &str) {
        self.records.lock().unwrap().remove(name);
    }

    fn set_servfail(&self, name: &str, on: bool) {
        let mut names = self.servfail.lock().unwrap();
        if on {
            names.insert(name.to_string());
        } else {
            names.remove(name);
        }
    }

    /// Starts answering queries; returns a resolver that asks only this server.
    async fn start(&self) -> TokioResolver {
        use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
        use hickory_proto::rr::Record;
        use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
        use hickory_resolver::net::runtime::TokioRuntimeProvider;

        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let zone = self.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut response =
                    Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
                response.metadata.authoritative = true;
                response.metadata.recursion_desired = query.metadata.recursion_desired;
                response.metadata.recursion_available = true;
                if let Some(q) = query.queries.first() {
                    response.add_query(q.clone());
                    let ascii = q.name().to_ascii().to_ascii_lowercase();
                    let name = ascii.trim_end_matches('.');
                    let records = zone.records.lock().unwrap().get(name).cloned();
                    if zone.servfail.lock().unwrap().contains(name) {
                        response.metadata.response_code = ResponseCode::ServFail;
                    } else if let Some(records) = records {
                        for rdata in records
                            .into_iter()
                            .filter(|r| r.record_type() == q.query_type())
                        {
                            response.add_answer(Record::from_rdata(q.name().clone(), 0, rdata));
                        }
                    } else {
                        response.metadata.response_code = ResponseCode::NXDomain;
                    }
                }
                if let Ok(bytes) = response.to_vec() {
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        let mut udp = ConnectionConfig::udp();
        udp.port = addr.port();
        let ns = NameServerConfig::new(addr.ip(), true, vec![udp]);
        let mut builder = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![ns]),
            TokioRuntimeProvider::default(),
        );
        let opts = builder.options_mut();
        opts.timeout = Duration::from_secs(1);
        opts.attempts = 1;
        opts.positive_max_ttl = Some(Duration::ZERO);
        opts.negative_max_ttl = Some(Duration::ZERO);
        builder.build().unwrap()
    }
}

const TXT_NAME: &str = "_mta-sts.sts.test";

fn txt(text: &str) -> RData {
    RData::TXT(hickory_proto::rr::rdata::TXT::new(vec![text.to_string()]))
}

/// A zone for sts.test whose `mta-sts` host is 127.0.0.1, and MTA-STS discovery using it
/// with the policy server at `port`.
async fn discovery(ca: &TestCa, port: u16) -> (Zone, MtaSts) {
    let zone = Zone::default();
    zone.set(
        "mta-sts.sts.test",
        vec![RData::A(hickory_proto::rr::rdata::A(
            std::net::Ipv4Addr::LOCALHOST,
        ))],
    );
    let resolver = zone.start().await;
    let sts = MtaSts::new(resolver, ca.client.clone(), port, Duration::from_secs(5));
    (zone, sts)
}

#[tokio::test]
async fn discovers_caches_and_refreshes_policies() {
    let ca = TestCa::new();
    let ok = http_response("200 OK", "text/plain", GOOD_POLICY);
    let (addr, requests) = serve(ca.leaf("mta-sts.sts.test"), ok).await;
    let (zone, sts) = discovery(&ca, addr.port()).await;
    let fetches = || requests.load(Ordering::SeqCst);

    // No record, nothing cached: no policy, and no fetch.
    assert_eq!(sts.policy(DOMAIN).await, None);
    assert_eq!(fetches(), 0);

    // A record: fetched once, then served from the cache while the id stays.
    zone.set(TXT_NAME, vec![txt("v=STSv1; id=one;")]);
    let first = sts.policy(DOMAIN).await.unwrap();
    assert_eq!((first.id.as_str(), first.mode), ("one", Mode::Enforce));
    assert_eq!(fetches(), 1);
    assert_eq!(sts.policy(DOMAIN).await.unwrap().id, "one");
    assert_eq!(fetches(), 1);

    // A new id: fetched again.
    zone.set(TXT_NAME, vec![txt("v=STSv1; id=two;")]);
    assert_eq!(sts.policy(DOMAIN).await.unwrap().id, "two");
    assert_eq!(fetches(), 2);

    // The record stripped, or DNS failing, or the record invalid: the cached policy holds.
    zone.remove(TXT_NAME);
    assert_eq!(sts.policy(DOMAIN).await.unwrap().id, "two");
    zone.set(
        TXT_NAME,
        vec![txt("v=STSv1; id=two;"), txt("v=STSv1; id=three;")],
    );
    assert_eq!(sts.policy(DOMAIN).await.unwrap().id, "two");
    zone.set_servfail(TXT_NAME, true);
    assert_eq!(sts.policy(DOMAIN).await.unwrap().id, "two");
    assert_eq!(fetches(), 2);

    // A new id whose policy host has gone: the cached policy holds.
    zone.set_servfail(TXT_NAME, false);
    zone.set(TXT_NAME, vec![txt("v=STSv1; id=four;"), txt("other=text")]);
    zone.remove("mta-sts.sts.test");
    assert_eq!(sts.policy(DOMAIN).await.unwrap().id, "two");

    // Other domains are not affected.
    assert_eq!(sts.policy("other.test").await, None);
}

#[tokio::test]
async fn a_failed_fetch_without_a_cache_is_no_policy() {
    let ca = TestCa::new();
    let missing = http_response("404 Not Found", "text/plain", "no");
    let (addr, requests) = serve(ca.leaf("mta-sts.sts.test"), missing).await;
    let (zone, sts) = discovery(&ca, addr.port()).await;
    zone.set(TXT_NAME, vec![txt("v=STSv1; id=one;")]);
    assert_eq!(sts.policy(DOMAIN).await, None);
    assert_eq!(requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn expired_policies_are_dropped_and_refetched() {
    let ca = TestCa::new();
    let policy = "version: STSv1\nmode: none\nmax_age: 0\n";
    let ok = http_response("200 OK", "text/plain", policy);
    let (addr, requests) = serve(ca.leaf("mta-sts.sts.test"), ok).await;
    let (zone, sts) = discovery(&ca, addr.port()).await;
    zone.set(TXT_NAME, vec![txt("v=STSv1; id=one;")]);
    // Mode none is returned like any other policy.
    assert_eq!(sts.policy(DOMAIN).await.unwrap().mode, Mode::None);
    // Same id, but expired at once: fetched again.
    assert_eq!(sts.policy(DOMAIN).await.unwrap().id, "one");
    assert_eq!(requests.load(Ordering::SeqCst), 2);
    // Record gone: the expired policy does not count.
    zone.remove(TXT_NAME);
    assert_eq!(sts.policy(DOMAIN).await, None);
}
