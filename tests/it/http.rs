//! The HTTP listeners against hostile and careless clients, through a running relay:
//! half-sent request heads and bodies (slowloris) cut off after their timeouts, an idle
//! kept-alive connection closed, oversized heads and bodies refused, the connection caps
//! (overall and per client) holding while slow clients hold connections; the public
//! listener's page headers, HTTPS with a certificate and nothing else, and the split
//! between the public listener and the operator one (`/metrics`, the admin API).
//!
//! Timeouts are set short in the config (a few hundred ms) and each test allows seconds
//! for the cut: they show that a connection is closed, never how fast anything is.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::{self, LOOPBACK_POLICY, TestCa, eventually, http, http_on};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longer than any timeout these tests configure, with room for a busy machine.
const CUT: Duration = Duration::from_secs(8);

/// A relay with both listeners on free ports; `http` adds keys to `[http]`.
async fn relay(dir: &std::path::Path, http: &str) -> optin_relay::server::Relay {
    support::start_relay(
        dir,
        &format!("[http]\nlisten = \"127.0.0.1:0\"\n{http}\n[admin]\nlisten = \"127.0.0.1:0\"\n"),
        LOOPBACK_POLICY,
    )
    .await
}

/// A connection from `source` (a loopback address) to `to`.
async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// Reads until the relay closes the connection (or resets it); what it sent. Panics when
/// the connection is still open after [`CUT`].
async fn closed(s: &mut TcpStream, what: &str) -> String {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    if tokio::time::timeout(CUT, read).await.is_err() {
        panic!("{what}: the connection is still open after {CUT:?}");
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Sends `bytes`, one every `gap`, for as long as the relay takes them (a dripping
/// client); returns when a write fails or the relay closes, panics after [`CUT`].
async fn drip(s: &mut TcpStream, bytes: &[u8], gap: Duration, what: &str) {
    let go = async {
        for b in bytes.iter().cycle() {
            if s.write_all(&[*b]).await.is_err() {
                return;
            }
            let mut probe = [0u8; 1024];
            match tokio::time::timeout(gap, s.read(&mut probe)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => return, // an answer (408): the relay gave up on us
                Err(_) => {}
            }
        }
    };
    if tokio::time::timeout(CUT, go).await.is_err() {
        panic!("{what}: still taking bytes after {CUT:?}");
    }
}

/// The value of one sample in the operator listener's exposition (0 when absent).
async fn metric(relay: &optin_relay::server::Relay, series: &str) -> f64 {
    support::metric(relay.admin_addr.unwrap(), series).await
}

#[tokio::test]
async fn a_half_sent_request_head_is_cut_off_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(
        dir.path(),
        "header_timeout = \"400ms\"\nidle_timeout = \"30s\"",
    )
    .await;
    let web = relay.http_addr.unwrap();
    let series = "optin_http_timeouts_total{listener=\"public\",stage=\"header\"}";
    let before = metric(&relay, series).await;

    // A request line and part of the head, then nothing.
    let mut s = TcpStream::connect(web).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: relay.test\r\nX-Wait: ")
        .await
        .unwrap();
    closed(&mut s, "a half-sent head").await;

    // A head that never ends, a byte every 100 ms: the idle timeout (30 s) never fires,
    // the header timeout does.
    let mut s = TcpStream::connect(web).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: relay.test\r\n")
        .await
        .unwrap();
    drip(
        &mut s,
        b"X-Slow: a\r\n",
        Duration::from_millis(100),
        "a dripping head",
    )
    .await;

    // Nothing at all after connecting.
    let mut s = TcpStream::connect(web).await.unwrap();
    closed(&mut s, "a silent connection").await;

    assert!(metric(&relay, series).await >= before + 3.0);
    // The listener still serves.
    assert_eq!(http(web, "GET", "/healthz", "").await, (200, "ok\n".into()));
    relay.shutdown().await;
}

#[tokio::test]
async fn a_slow_request_body_is_cut_off_after_the_body_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(
        dir.path(),
        "body_timeout = \"400ms\"\nidle_timeout = \"30s\"",
    )
    .await;
    let web = relay.http_addr.unwrap();
    let series = "optin_http_timeouts_total{listener=\"public\",stage=\"body\"}";
    let before = metric(&relay, series).await;
    let head = "POST /u/sometoken HTTP/1.1\r\nHost: relay.test\r\n\
                Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n";

    // Ten octets of a hundred, then nothing.
    let mut s = TcpStream::connect(web).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(b"List-Unsu").await.unwrap();
    let answer = closed(&mut s, "a half-sent body").await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.to_lowercase().contains("connection: close"),
        "{answer}"
    );

    // A body dripping a byte every 50 ms.
    let mut s = TcpStream::connect(web).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    drip(&mut s, b"x", Duration::from_millis(50), "a dripping body").await;

    assert!(metric(&relay, series).await >= before + 2.0);
    relay.shutdown().await;
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(
        dir.path(),
        "idle_timeout = \"300ms\"\nheader_timeout = \"30s\"",
    )
    .await;
    let mut s = TcpStream::connect(relay.http_addr.unwrap()).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: relay.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 2048];
    let n = s.read(&mut buf).await.unwrap();
    let first = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        first.starts_with("HTTP/1.1 200") && first.ends_with("ok\n"),
        "{first}"
    );
    // Kept alive, then silent: closed after idle_timeout, long before header_timeout.
    let rest = closed(&mut s, "an idle kept-alive connection").await;
    assert_eq!(rest, "");
    relay.shutdown().await;
}

#[tokio::test]
async fn oversized_heads_and_bodies_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(
        dir.path(),
        "max_body_size = \"1KiB\"\nmax_header_size = \"2KiB\"",
    )
    .await;
    let web = relay.http_addr.unwrap();

    // Declared too big: refused before a byte of it is read.
    let mut s = TcpStream::connect(web).await.unwrap();
    s.write_all(
        b"POST /u/sometoken HTTP/1.1\r\nHost: relay.test\r\nContent-Length: 5000000\r\n\r\n",
    )
    .await
    .unwrap();
    let answer = closed(&mut s, "a declared large body").await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // Chunked, no length announced: refused once it passes the limit.
    let mut s = TcpStream::connect(web).await.unwrap();
    s.write_all(
        b"POST /u/sometoken HTTP/1.1\r\nHost: relay.test\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await
    .unwrap();
    let chunk = format!("400\r\n{}\r\n", "x".repeat(0x400));
    let answer = tokio::time::timeout(CUT, async {
        for _ in 0..4 {
            if s.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
        }
        closed(&mut s, "a chunked large body").await
    })
    .await
    .expect("answered");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // A head over max_header_size.
    let mut s = TcpStream::connect(web).await.unwrap();
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: relay.test\r\nX-Big: {}\r\n\r\n",
        "y".repeat(4096)
    );
    let _ = s.write_all(big.as_bytes()).await;
    let answer = closed(&mut s, "a large head").await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // A body within the limit is read and handed on (a bad token: the 400 page).
    let (status, body) = http(web, "POST", "/u/sometoken", &"z".repeat(1000)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not valid"), "{body}");
    relay.shutdown().await;
}

/// Slowloris against the running relay: clients that hold half-sent requests fill their
/// share of the connections, get nothing more, and are cut off after the header timeout;
/// the caps hold the whole time and others are served once the slow ones are gone.
#[tokio::test]
async fn slowloris_is_cut_off_and_the_connection_caps_hold() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(
        dir.path(),
        "max_connections = 3\nmax_connections_per_ip = 2\nheader_timeout = \"3s\"",
    )
    .await;
    let web = relay.http_addr.unwrap();
    let refused = |reason: &str| {
        format!("optin_http_connections_refused_total{{listener=\"public\",reason=\"{reason}\"}}")
    };
    let (per_ip_before, total_before) = (
        metric(&relay, &refused("per_ip")).await,
        metric(&relay, &refused("total")).await,
    );
    let half = b"GET /healthz HTTP/1.1\r\nHost: relay.test\r\nX-Slow: ";

    // Two half-sent requests from 127.0.0.2: its share.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = connect_from("127.0.0.2", web).await;
        s.write_all(half).await.unwrap();
        held.push(s);
    }
    // A third from the same client is refused at once.
    let mut s = connect_from("127.0.0.2", web).await;
    let answer = closed(&mut s, "a connection over the per-client cap").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    // Another client holds the last connection; a fourth client is over the total.
    let mut s = connect_from("127.0.0.3", web).await;
    s.write_all(half).await.unwrap();
    held.push(s);
    let mut s = connect_from("127.0.0.4", web).await;
    let answer = closed(&mut s, "a connection over the total cap").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(metric(&relay, &refused("per_ip")).await > per_ip_before);
    assert!(metric(&relay, &refused("total")).await > total_before);

    // The slow ones are cut off by the header timeout...
    for s in &mut held {
        closed(s, "a held half-sent request").await;
    }
    // ...and the listener serves again, also the client that was refused.
    // (The relay may not have noticed the last close yet.)
    let ok = async |source: &str| {
        eventually(
            Duration::from_secs(5),
            &format!("{source} served"),
            async || {
                let answer = http_on(connect_from(source, web).await, "GET", "/healthz", "").await;
                answer.status == 200
            },
        )
        .await
    };
    ok("127.0.0.2").await;
    ok("127.0.0.4").await;
    relay.shutdown().await;
}

#[tokio::test]
async fn pages_carry_the_security_headers_and_no_cookie() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), "").await;
    let web = relay.http_addr.unwrap();
    for (method, path, status) in [
        ("GET", "/u/not-a-token", 400),
        ("POST", "/u/not-a-token", 400),
        ("GET", "/complaint/not-a-token", 404),
        ("GET", "/nothing/here", 404),
        ("GET", "/healthz", 200),
    ] {
        let a = crate::support::request(web, method, path, "List-Unsubscribe=One-Click").await;
        assert_eq!(a.status, status, "{method} {path}: {a:?}");
        let csp = a.header("content-security-policy");
        assert_eq!(csp.len(), 1, "{method} {path}: {a:?}");
        for part in [
            "default-src 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
        ] {
            assert!(csp[0].contains(part), "{part}: {csp:?}");
        }
        assert_eq!(a.header("x-frame-options"), ["DENY"], "{a:?}");
        assert_eq!(a.header("referrer-policy"), ["no-referrer"], "{a:?}");
        assert_eq!(a.header("x-content-type-options"), ["nosniff"], "{a:?}");
        assert_eq!(a.header("cache-control"), ["no-store"], "{a:?}");
        assert!(a.header("set-cookie").is_empty(), "{a:?}");
        // Plain HTTP here: no HSTS.
        assert!(a.header("strict-transport-security").is_empty(), "{a:?}");
        if a.body.contains("<style>") {
            // The page's one style sheet is the one the policy allows by its hash.
            let style = a.body.split("<style>").nth(1).unwrap();
            let style = &style[..style.find("</style>").unwrap()];
            let digest = ring::digest::digest(&ring::digest::SHA256, style.as_bytes());
            let hash = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, digest);
            assert!(
                csp[0].contains(&format!("style-src 'sha256-{hash}'")),
                "{csp:?}"
            );
            assert!(!a.body.contains("<script"), "{}", a.body);
        }
    }
    relay.shutdown().await;
}

#[tokio::test]
async fn metrics_and_the_admin_api_are_only_on_the_operator_listener() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), "").await;
    let (web, ops) = (relay.http_addr.unwrap(), relay.admin_addr.unwrap());
    assert_ne!(web, ops);
    for path in ["/metrics", "/admin/queue", "/admin/openapi.json"] {
        let (status, body) = http(web, "GET", path, "").await;
        assert_eq!(status, 404, "{path} on the public listener: {body}");
        assert!(!body.contains("optin_"), "{body}");
    }
    let a = crate::support::request(ops, "GET", "/metrics", "").await;
    assert_eq!(a.status, 200);
    assert!(
        a.body.contains("# HELP optin_http_timeouts_total"),
        "{}",
        a.body
    );
    assert_eq!(a.header("x-content-type-options"), ["nosniff"]);
    let (status, _) = http(ops, "GET", "/admin/queue", "").await;
    assert_eq!(status, 401, "the admin API still wants its token");
    let (status, _) = http(ops, "GET", "/u/not-a-token", "").await;
    assert_eq!(status, 404, "no unsubscribe pages on the operator listener");
    relay.shutdown().await;
}

#[tokio::test]
async fn with_a_certificate_the_public_listener_speaks_only_https() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (cert, key) = ca.leaf_pem("unsub.relay.test");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let relay = relay(
        dir.path(),
        &format!(
            "certificate = \"{}\"\nprivate_key = \"{}\"\nheader_timeout = \"2s\"",
            cert_path.display(),
            key_path.display()
        ),
    )
    .await;
    let web = relay.http_addr.unwrap();
    let mut client = (*ca.client()).clone();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
    let name = rustls::pki_types::ServerName::try_from("unsub.relay.test").unwrap();
    let https = async |method: &str, path: &str| {
        let tcp = TcpStream::connect(web).await.unwrap();
        let tls = connector.connect(name.clone(), tcp).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        http_on(tls, method, path, "List-Unsubscribe=One-Click").await
    };
    let a = https("GET", "/healthz").await;
    assert_eq!((a.status, a.body.as_str()), (200, "ok\n"));
    assert_eq!(
        a.header("strict-transport-security"),
        ["max-age=31536000"],
        "{a:?}"
    );
    let a = https("POST", "/u/not-a-token").await;
    assert_eq!(a.status, 400);
    assert_eq!(a.header("x-frame-options"), ["DENY"]);

    // Plain HTTP to the same port gets no HTTP answer.
    let mut s = TcpStream::connect(web).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: relay.test\r\n\r\n")
        .await
        .unwrap();
    let answer = closed(&mut s, "plain HTTP to the HTTPS listener").await;
    assert!(!answer.contains("HTTP/1.1"), "{answer:?}");

    // A client that never completes its handshake is cut off too.
    let series = "optin_http_timeouts_total{listener=\"public\",stage=\"tls\"}";
    let before = metric(&relay, series).await;
    let mut s = TcpStream::connect(web).await.unwrap();
    closed(&mut s, "a silent TLS client").await;
    assert!(metric(&relay, series).await > before);
    relay.shutdown().await;
}
