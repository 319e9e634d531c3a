//! End to end over real sockets: a real, independent client (lettre) or a hand-written one
//! submits to the relay started as `serve` starts it; the relay resolves MX records from a
//! fake DNS server and delivers into an in-process fake MX scripted by recipient.

use std::time::Duration;

use crate::support::{
    self, FakeDns, FakeMx, LOOPBACK_POLICY, MxOptions, Running, session, start_relay,
};
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use mail_parser::{MessageParser, MimeHeaders};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const WAIT: Duration = Duration::from_secs(20);

/// DNS for the tests: example.net and shop.example have the fake MX; nomx.example has only
/// an A record (implicit MX); null.example publishes a null MX; broken.example fails.
fn zone() -> &'static str {
    "example.net. MX 10 mx.example.net.
     example.net. MX 20 mx2.example.net.
     mx.example.net. A 127.0.0.1
     mx2.example.net. A 127.0.0.1
     shop.example. MX 10 mx.example.net.
     nomx.example. A 127.0.0.1
     null.example. MX 0 .
     broken.example. SERVFAIL"
}

async fn mx_setup(options: MxOptions) -> (FakeMx, String, tempfile::TempDir) {
    let mx = FakeMx::new(options);
    let mx_addr = mx.listen().await;
    let dns = FakeDns::start(zone()).await;
    let dir = tempfile::tempdir().unwrap();
    let delivery = format!(
        "[delivery]\ndns = \"{}\"\nmx_port = {}\nconnection_idle_timeout = \"1s\"\nretry_initial = \"1h\"\n",
        dns.addr,
        mx_addr.port()
    );
    (mx, delivery, dir)
}

/// A fake MX, and a relay that sends everything to it as its smart host.
async fn relay_to_mx(
    options: MxOptions,
    extra: &str,
    policy: &str,
) -> (FakeMx, optin_relay::server::Relay, tempfile::TempDir) {
    let run = Running::start(options, extra, policy).await;
    (run.mx, run.relay, run.dir)
}

fn lettre_plain(port: u16) -> AsyncSmtpTransport<Tokio1Executor> {
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .timeout(Some(Duration::from_secs(10)))
        .build()
}

fn message(from: &str, to: &[&str], subject: &str) -> Message {
    let mut b = Message::builder()
        .from(from.parse::<Mailbox>().unwrap())
        .subject(subject);
    for t in to {
        b = b.to(t.parse::<Mailbox>().unwrap());
    }
    b.body(format!(
        "Hello from the {subject} test.\n.leading dot line\n"
    ))
    .unwrap()
}

#[tokio::test]
async fn lettre_through_the_relay_to_the_mx() {
    let (mx, delivery, dir) = mx_setup(MxOptions::default()).await;
    let relay = start_relay(dir.path(), &delivery, LOOPBACK_POLICY).await;
    let client = lettre_plain(relay.smtp_addrs[0].port());
    let response = client
        .send(message(
            "App <app@shop.example>",
            &["a@example.net", "b@Example.NET", "c@nomx.example"],
            "mx",
        ))
        .await
        .unwrap();
    assert_eq!(response.code().to_string(), "250");
    let got = mx.wait_for(3, WAIT).await;
    // One transaction per recipient, each from its own return path, which names it.
    let mut rcpts: Vec<Vec<String>> = got.iter().map(|d| d.rcpt_to.clone()).collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        vec![
            vec!["a@example.net".to_string()],
            vec!["b@Example.NET".to_string()],
            vec!["c@nomx.example".to_string()]
        ]
    );
    let mut senders: Vec<&str> = got.iter().map(|d| d.mail_from.as_str()).collect();
    senders.dedup();
    assert_eq!(senders.len(), 3, "{senders:?}");
    for s in &senders {
        assert!(
            s.starts_with("bounces+") && s.ends_with("@relay.test"),
            "{s}"
        );
        assert!(!s.contains("example"), "the address is sealed: {s}");
    }
    let d = &got[0];
    let text = d.text();
    assert!(text.starts_with("Received: from "), "{text}");
    assert!(text.contains("by relay.test (optin-relay) with ESMTP id "));
    assert!(
        text.contains("\r\n.leading dot line\r\n"),
        "dot-stuffing round trip: {text}"
    );
    let parsed = MessageParser::default().parse(&d.data).unwrap();
    assert_eq!(parsed.subject(), Some("mx"));
    relay.shutdown().await;
}

#[tokio::test]
async fn lettre_with_starttls_and_auth() {
    let hash = optin_relay::policy::password::hash_password("s3cret");
    // No loopback network: this client is only an account after AUTH.
    let policy = format!(
        "[accounts.shop]\n[[accounts.shop.users]]\nusername = \"shop\"\npassword_hash = \"{hash}\"\n"
    );
    let (mx, relay, _dir) = relay_to_mx(MxOptions::default(), "", &policy).await;
    let port = relay.smtp_addrs[0].port();

    // without AUTH: refused
    let err = lettre_plain(port)
        .send(message("app@shop.example", &["a@example.net"], "noauth"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Authentication required"), "{err}");

    let tls = TlsParameters::builder("relay.test".into())
        .dangerous_accept_invalid_certs(true)
        .build_rustls()
        .unwrap();
    let client = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .tls(Tls::Required(tls.clone()))
        .credentials(Credentials::new("shop".into(), "s3cret".into()))
        .authentication(vec![Mechanism::Plain])
        .build();
    client
        .send(message("app@shop.example", &["a@example.net"], "auth"))
        .await
        .unwrap();
    let got = mx.wait_for(1, WAIT).await;
    assert!(
        got[0].text().contains("with ESMTPSA id"),
        "{}",
        got[0].text()
    );

    let login = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .tls(Tls::Required(tls.clone()))
        .credentials(Credentials::new("shop".into(), "s3cret".into()))
        .authentication(vec![Mechanism::Login])
        .build();
    login
        .send(message("app@shop.example", &["b@example.net"], "login"))
        .await
        .unwrap();

    let wrong = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .tls(Tls::Required(tls))
        .credentials(Credentials::new("shop".into(), "wrong".into()))
        .authentication(vec![Mechanism::Plain])
        .build();
    let err = wrong
        .send(message("app@shop.example", &["a@example.net"], "wrong"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("535"), "{err}");
    mx.wait_for(2, WAIT).await;
    relay.shutdown().await;
}

#[tokio::test]
async fn failures_come_back_as_a_dsn() {
    let (mx, delivery, dir) = mx_setup(MxOptions::default()).await;
    let relay = start_relay(dir.path(), &delivery, LOOPBACK_POLICY).await;
    let replies = session(
        relay.smtp_addrs[0],
        &[
            "EHLO c",
            "MAIL FROM:<app@shop.example> RET=HDRS ENVID=run-42",
            "RCPT TO:<permfail@example.net> ORCPT=rfc822;PermFail@example.net",
            "RCPT TO:<ok@example.net>",
            "RCPT TO:<someone@nowhere.invalid>",
            "RCPT TO:<x@null.example>",
            "DATA",
            "Subject: will partly bounce\r\nMessage-ID: <m1@shop.example>\r\n\r\nsecret body\r\n.",
            "QUIT",
        ],
    )
    .await;
    assert!(
        replies[8].starts_with("250 2.0.0 OK queued as"),
        "{replies:?}"
    );
    let got = mx.wait_for(2, WAIT).await;
    let ok = got
        .iter()
        .find(|d| d.rcpt_to == ["ok@example.net"])
        .expect("ok@ delivered");
    assert!(ok.mail_params.starts_with("SIZE="), "{}", ok.mail_params);
    let dsn = got
        .iter()
        .find(|d| d.mail_from.is_empty())
        .expect("a DSN from <>");
    assert_eq!(dsn.rcpt_to, ["app@shop.example"]);
    let parsed = MessageParser::default().parse(&dsn.data).unwrap();
    assert_eq!(
        parsed.subject(),
        Some("Undelivered Mail Returned to Sender")
    );
    assert_eq!(parsed.content_type().unwrap().subtype(), Some("report"));
    let status = String::from_utf8_lossy(parsed.parts[2].contents()).into_owned();
    support::assert_has(
        &status,
        &[
            "Original-Envelope-Id: run-42",
            "Original-Recipient: rfc822;PermFail@example.net",
            "Final-Recipient: rfc822; permfail@example.net",
            "Status: 5.1.1",
            "Remote-MTA: dns; mx.example.net",
            "Final-Recipient: rfc822; someone@nowhere.invalid",
            "Status: 5.1.2",
            "Final-Recipient: rfc822; x@null.example",
            "Status: 5.1.10",
        ],
    );
    assert!(!status.contains("ok@example.net"));
    // RET=HDRS: the headers come back, the body does not
    let returned = String::from_utf8_lossy(parsed.parts[3].contents()).into_owned();
    assert!(returned.contains("Subject: will partly bounce"));
    assert!(!dsn.text().contains("secret body"));
    // all finished: nothing left in the queue
    relay.shutdown().await;
    let left = optin_relay::spool::Spool::inspect(&dir.path().join("spool")).unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn temporary_dns_failures_are_deferred_not_bounced() {
    let (mx, delivery, dir) = mx_setup(MxOptions::default()).await;
    let relay = start_relay(dir.path(), &delivery, LOOPBACK_POLICY).await;
    support::send_ok(
        relay.smtp_addrs[0],
        "app@shop.example",
        &["a@broken.example", "tempfail@example.net"],
        "Subject: t\r\n\r\nx",
    )
    .await;
    // give delivery time to try
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        mx.delivered().is_empty(),
        "no DSN and no delivery: {:?}",
        mx.delivered()
    );
    relay.shutdown().await;
    let left = optin_relay::spool::Spool::inspect(&dir.path().join("spool")).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].pending().count(), 2);
    assert!(
        left[0].events.iter().all(|e| matches!(
            e,
            Some(optin_relay::spool::RcptEvent::Deferred { attempts: 1, .. })
        )),
        "{:?}",
        left[0].events
    );
}

#[tokio::test]
async fn dsn_parameters_and_starttls_to_the_next_hop() {
    let (mx, relay, _dir) = relay_to_mx(
        MxOptions {
            tls: true,
            ..MxOptions::default()
        },
        "",
        LOOPBACK_POLICY,
    )
    .await;
    let replies = session(
        relay.smtp_addrs[0],
        &[
            "EHLO c",
            "MAIL FROM:<app@shop.example> RET=FULL ENVID=a+2Bb BODY=8BITMIME",
            "RCPT TO:<r@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;R@example.net",
            "DATA",
            "Subject: params\r\n\r\nbody\r\n.",
            "QUIT",
        ],
    )
    .await;
    assert!(replies[5].starts_with("250 2.0.0 OK queued"), "{replies:?}");
    let got = mx.wait_for(1, WAIT).await;
    assert!(got[0].tls, "delivered over STARTTLS");
    assert!(
        got[0].mail_params.contains("RET=FULL"),
        "{}",
        got[0].mail_params
    );
    assert!(
        got[0].mail_params.contains("ENVID=a+2Bb"),
        "{}",
        got[0].mail_params
    );
    assert!(
        got[0].mail_params.contains("BODY=8BITMIME"),
        "{}",
        got[0].mail_params
    );
    assert_eq!(
        got[0].rcpt_params[0],
        "NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;R@example.net"
    );
    // the next hop speaks DSN, so it (not we) reports success: no "relayed" DSN
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(mx.delivered().len(), 1);
    relay.shutdown().await;
}

#[tokio::test]
async fn success_notice_when_the_next_hop_has_no_dsn() {
    let (mx, relay, _dir) = relay_to_mx(
        MxOptions {
            dsn: false,
            ..MxOptions::default()
        },
        "",
        LOOPBACK_POLICY,
    )
    .await;
    session(
        relay.smtp_addrs[0],
        &[
            "EHLO c",
            "MAIL FROM:<app@shop.example>",
            "RCPT TO:<r@example.net> NOTIFY=SUCCESS",
            "DATA",
            "Subject: s\r\n\r\nbody\r\n.",
            "QUIT",
        ],
    )
    .await;
    let got = mx.wait_for(2, WAIT).await;
    assert!(got[0].mail_params.find("RET=").is_none());
    let dsn = got.iter().find(|d| d.mail_from.is_empty()).unwrap();
    let status = dsn.dsn_status();
    assert!(status.contains("Action: relayed"), "{status}");
    relay.shutdown().await;
}

/// `GET path`: the body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    support::http(addr, "GET", path, "").await.1
}

#[tokio::test]
async fn metrics_and_health_on_the_operator_listener() {
    let (mx, relay, _dir) = relay_to_mx(
        MxOptions::default(),
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
        LOOPBACK_POLICY,
    )
    .await;
    let http = relay.admin_addr.unwrap();
    assert!(http_get(http, "/healthz").await.ends_with("ok\n"));
    support::raw_send(
        relay.smtp_addrs[0],
        "a@shop.example",
        &["b@example.net"],
        "Subject: m\r\n\r\nx",
    )
    .await;
    mx.wait_for(1, WAIT).await;
    let metrics = http_get(http, "/metrics").await;
    assert!(
        metrics.contains("# HELP optin_messages_accepted_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("optin_delivery_recipients_total{result=\"delivered\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("optin_spool_commit_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("b@example.net"),
        "no addresses in metrics"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn connections_per_client_are_limited() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[smtp]\nlisten = \"127.0.0.1:0\"\nhostname = \"relay.test\"\nmax_connections_per_ip = 2\n[http]\nlisten = \"\"\n[admin]\nlisten = \"\"\n[spool]\npath = \"{}\"\n[delivery]\nsmarthost = \"127.0.0.1:9\"\n",
        dir.path().display()
    );
    let config = optin_relay::config::Config::from_toml("t", &text).unwrap();
    let relay =
        optin_relay::server::Relay::start(config, optin_relay::policy::Policy::embedded_default())
            .await
            .unwrap();
    let addr = relay.smtp_addrs[0];
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut s = BufReader::new(tokio::net::TcpStream::connect(addr).await.unwrap());
        let mut l = String::new();
        s.read_line(&mut l).await.unwrap();
        assert!(l.starts_with("220"), "{l}");
        open.push(s);
    }
    let mut third = BufReader::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let mut l = String::new();
    third.read_line(&mut l).await.unwrap();
    assert_eq!(
        l,
        "421 4.7.0 Too many connections from your address, try again later\r\n"
    );
    drop(open);
    relay.shutdown().await;
}

#[tokio::test]
async fn implicit_tls_listener() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[smtp]\nlisten = []\nlisten_tls = \"127.0.0.1:0\"\nhostname = \"relay.test\"\n[http]\nlisten = \"\"\n[admin]\nlisten = \"\"\n[spool]\npath = \"{}\"\n",
        dir.path().join("s2").display()
    );
    let config = optin_relay::config::Config::from_toml("t", &text).unwrap();
    let relay =
        optin_relay::server::Relay::start(config, optin_relay::policy::Policy::embedded_default())
            .await
            .unwrap();
    let tcp = tokio::net::TcpStream::connect(relay.smtp_tls_addrs[0])
        .await
        .unwrap();
    let connector =
        tokio_rustls::TlsConnector::from(optin_relay::tls::opportunistic_client_config());
    let tls = connector
        .connect(
            rustls::pki_types::ServerName::try_from("relay.test").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let mut io = BufReader::new(tls);
    let mut l = String::new();
    io.read_line(&mut l).await.unwrap();
    assert!(l.starts_with("220 relay.test ESMTP"), "{l}");
    io.get_mut().write_all(b"EHLO c\r\n").await.unwrap();
    let mut ehlo = String::new();
    loop {
        let mut l = String::new();
        io.read_line(&mut l).await.unwrap();
        ehlo.push_str(&l);
        if l.as_bytes()[3] == b' ' {
            break;
        }
    }
    assert!(!ehlo.contains("STARTTLS"), "already encrypted: {ehlo}");
    relay.shutdown().await;
}

#[tokio::test]
async fn shutdown_lets_a_transaction_finish_and_closes_idle_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(
        dir.path(),
        "[delivery]\nsmarthost = \"127.0.0.1:9\"\n",
        LOOPBACK_POLICY,
    )
    .await;
    let addr = relay.smtp_addrs[0];
    let read = async |io: &mut BufReader<tokio::net::TcpStream>| {
        let mut l = String::new();
        loop {
            l.clear();
            io.read_line(&mut l).await.unwrap();
            if l.as_bytes().get(3) != Some(&b'-') {
                return l;
            }
        }
    };
    let mut idle = BufReader::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    read(&mut idle).await;
    let mut busy = BufReader::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    read(&mut busy).await;
    busy.get_mut().write_all(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nSubject: x\r\n\r\nhalf").await.unwrap();
    for _ in 0..4 {
        read(&mut busy).await;
    }
    let stopping = tokio::spawn(relay.shutdown());
    assert_eq!(
        read(&mut idle).await,
        "421 4.3.2 Service shutting down, try again later\r\n"
    );
    busy.get_mut()
        .write_all(b" of a body\r\n.\r\n")
        .await
        .unwrap();
    assert!(read(&mut busy).await.starts_with("250 2.0.0 OK queued as"));
    assert_eq!(
        read(&mut busy).await,
        "421 4.3.2 Service shutting down, try again later\r\n"
    );
    tokio::time::timeout(WAIT, stopping).await.unwrap().unwrap();
    let left = optin_relay::spool::Spool::inspect(&dir.path().join("spool")).unwrap();
    assert_eq!(left.len(), 1, "the accepted message stays queued");
}

/// `[destinations."*"] tls = "required"`: no plain-text fallback, mail waits for a server
/// that speaks TLS.
#[tokio::test]
async fn tls_required_by_policy_never_falls_back_to_plain_text() {
    let policy = format!("{LOOPBACK_POLICY}[destinations.\"*\"]\ntls = \"required\"\n");
    let (mx, relay, _dir) = relay_to_mx(MxOptions::default(), "", &policy).await;
    support::send_ok(
        relay.smtp_addrs[0],
        "app@shop.example",
        &["a@example.net"],
        "Subject: secret\r\n\r\nonly over TLS\r\n",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(mx.delivered().is_empty(), "sent in plain text");
    assert!(mx.connections() >= 1, "the relay did try");
    relay.shutdown().await;

    let (mx, relay, _dir) = relay_to_mx(
        MxOptions {
            tls: true,
            ..MxOptions::default()
        },
        "",
        &policy,
    )
    .await;
    support::send_ok(
        relay.smtp_addrs[0],
        "app@shop.example",
        &["a@example.net"],
        "Subject: secret\r\n\r\nonly over TLS\r\n",
    )
    .await;
    let got = mx.wait_for(1, WAIT).await;
    assert!(got[0].tls, "delivered without TLS");
    relay.shutdown().await;
}

/// MX fallback in preference order: the first MX refuses connections, the second is too
/// busy to greet, the third takes the mail. Three fake servers on 127.0.0.2-4, one port.
#[tokio::test]
async fn delivery_falls_back_through_the_mx_list() {
    let good = FakeMx::new(MxOptions::default());
    let port = good.listen_at("127.0.0.4:0").await.port();
    let busy = FakeMx::new(MxOptions {
        busy: true,
        ..MxOptions::default()
    });
    busy.listen_at(&format!("127.0.0.3:{port}")).await;
    let dns = FakeDns::start(
        "multi.example. MX 10 mx1.multi.example.
         multi.example. MX 20 mx2.multi.example.
         multi.example. MX 30 mx3.multi.example.
         mx1.multi.example. A 127.0.0.2
         mx2.multi.example. A 127.0.0.3
         mx3.multi.example. A 127.0.0.4",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(
        dir.path(),
        &format!(
            "[delivery]\ndns = \"{}\"\nmx_port = {port}\nretry_initial = \"1h\"\n",
            dns.addr
        ),
        LOOPBACK_POLICY,
    )
    .await;
    support::send_ok(
        relay.smtp_addrs[0],
        "app@shop.example",
        &["someone@multi.example"],
        "Subject: fallback\r\n\r\nhello\r\n",
    )
    .await;
    let got = good.wait_for(1, WAIT).await;
    assert_eq!(got[0].rcpt_to, ["someone@multi.example"]);
    assert_eq!(busy.connections(), 1, "the busy MX was tried first");
    assert!(busy.delivered().is_empty());
    relay.shutdown().await;
}
