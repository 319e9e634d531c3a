//! TLS and logins on the way out (issue 12 item 17): a smart host that is a provider's
//! submission service (verified TLS by STARTTLS or from the first byte, its own name for
//! SNI, AUTH PLAIN or LOGIN with a password from the config or a file), `[destinations]
//! tls = "verify"` for MX hosts, and no plain-text fallback when TLS is demanded and the
//! handshake breaks — the mail waits and is retried.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::{
    self, FakeDns, FakeMx, LOOPBACK_POLICY, Login, MxAuth, MxOptions, TestCa, TlsBreak, eventually,
    poll,
};
use optin_relay::spool::{RcptEvent, Spool};

/// What the tests send.
const MESSAGE: &str = "Subject: over TLS\r\n\r\nfor the provider\r\n";
const WAIT: Duration = Duration::from_secs(15);
const PROVIDER: &str = "smtp.provider.test";

fn provider_auth(mechanisms: &'static str) -> Option<MxAuth> {
    Some(MxAuth {
        mechanisms,
        username: "relay@shop.test".into(),
        password: "correct horse".into(),
    })
}

/// The `[delivery.smarthost]` table for the provider at `addr`: TLS verified against the
/// test CA (`{ca}`, filled in by [`Relay::start`]) for the provider's name, logging in as
/// relay@shop.test; `extra` adds lines (the password, implicit TLS).
fn smarthost(addr: SocketAddr, extra: &str) -> String {
    format!(
        "[delivery.smarthost]\naddress = \"{addr}\"\ntls = \"verify\"\n\
         server_name = \"{PROVIDER}\"\nca_file = \"{{ca}}\"\n\
         username = \"relay@shop.test\"\n{extra}"
    )
}

struct Relay {
    relay: optin_relay::server::Relay,
    dir: tempfile::TempDir,
}

impl Relay {
    /// A relay with `delivery` (its `[delivery]` section, `{ca}` standing for the test
    /// CA's certificate file) and `policy`.
    async fn start(ca: &TestCa, delivery: &str, policy: &str) -> Relay {
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        ca.write_pem(&ca_file);
        let delivery = delivery.replace("{ca}", &ca_file.display().to_string());
        let relay = support::start_relay(dir.path(), &delivery, policy).await;
        Relay { relay, dir }
    }

    async fn send(&self, to: &str) {
        support::send_ok(self.relay.smtp_addrs[0], "app@shop.example", &[to], MESSAGE).await;
    }

    /// Waits until the one queued message was tried and deferred (never bounced).
    async fn wait_deferred(&self) {
        let event = poll(WAIT, "the message tried", async || {
            self.relay.spool.flush().await.unwrap();
            let queued = Spool::inspect(&self.dir.path().join("spool")).unwrap();
            assert_eq!(queued.len(), 1, "the message left the queue");
            queued[0].events[0]
        })
        .await;
        assert!(
            matches!(event, RcptEvent::Deferred { .. }),
            "deferred, not bounced: {event:?}"
        );
    }
}

async fn provider(ca: &TestCa, cert_name: &str, options: MxOptions) -> (FakeMx, SocketAddr) {
    let mx = FakeMx::new(MxOptions {
        tls: true,
        tls_config: Some(ca.leaf(cert_name)),
        ..options
    });
    let addr = mx.listen().await;
    (mx, addr)
}

/// STARTTLS verified against the given CA for the provider's name (not the address it
/// was dialled at), sent in SNI; then AUTH PLAIN; then the mail.
#[tokio::test]
async fn a_smarthost_gets_verified_starttls_and_auth_plain() {
    let ca = TestCa::new();
    let (mx, addr) = provider(
        &ca,
        PROVIDER,
        MxOptions {
            auth: provider_auth("PLAIN LOGIN"),
            ..MxOptions::default()
        },
    )
    .await;
    let relay = Relay::start(
        &ca,
        &smarthost(addr, "password = \"correct horse\"\n"),
        LOOPBACK_POLICY,
    )
    .await;
    relay.send("someone@example.net").await;
    let got = mx.wait_for(1, WAIT).await;
    assert!(got[0].tls);
    assert_eq!(got[0].rcpt_to, ["someone@example.net"]);
    assert_eq!(
        mx.logins(),
        [Login {
            mechanism: "PLAIN".into(),
            username: "relay@shop.test".into(),
            accepted: true,
            tls: true,
        }]
    );
    assert_eq!(mx.sni(), [Some(PROVIDER.to_string())]);
    relay.relay.shutdown().await;
}

/// Port 465 style: TLS from the first byte, a server that only speaks AUTH LOGIN, the
/// password from a file of its own.
#[tokio::test]
async fn a_smarthost_gets_implicit_tls_and_auth_login_with_a_password_file() {
    use std::os::unix::fs::PermissionsExt;
    let ca = TestCa::new();
    let (mx, addr) = provider(
        &ca,
        PROVIDER,
        MxOptions {
            implicit_tls: true,
            auth: provider_auth("LOGIN"),
            ..MxOptions::default()
        },
    )
    .await;
    let secrets = tempfile::tempdir().unwrap();
    let password_file = secrets.path().join("smarthost.password");
    std::fs::write(&password_file, "correct horse\n").unwrap();
    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let relay = Relay::start(
        &ca,
        &smarthost(
            addr,
            &format!(
                "implicit_tls = true\npassword_file = \"{}\"\n",
                password_file.display()
            ),
        ),
        LOOPBACK_POLICY,
    )
    .await;
    relay.send("someone@example.net").await;
    let got = mx.wait_for(1, WAIT).await;
    assert!(got[0].tls);
    assert_eq!(mx.logins().len(), 1);
    assert_eq!(mx.logins()[0].mechanism, "LOGIN");
    assert!(mx.logins()[0].accepted);
    assert_eq!(mx.starttls_attempts(), 0, "TLS was there from the start");
    relay.relay.shutdown().await;
}

/// A certificate valid for another name: no credentials and no mail go; the mail waits.
#[tokio::test]
async fn a_smarthost_certificate_for_another_name_keeps_the_mail_and_the_password() {
    let ca = TestCa::new();
    let (mx, addr) = provider(
        &ca,
        "impostor.test",
        MxOptions {
            auth: provider_auth("PLAIN"),
            ..MxOptions::default()
        },
    )
    .await;
    let relay = Relay::start(
        &ca,
        &format!(
            "[delivery]\nretry_initial = \"1h\"\n{}",
            smarthost(addr, "password = \"correct horse\"\n")
        ),
        LOOPBACK_POLICY,
    )
    .await;
    relay.send("someone@example.net").await;
    relay.wait_deferred().await;
    assert_eq!(mx.starttls_attempts(), 1);
    assert!(
        mx.logins().is_empty(),
        "credentials went to an unverified server"
    );
    assert_eq!(mx.mail_attempts(), 0);
    relay.relay.shutdown().await;
}

/// The provider refuses the login: the mail waits for the operator to fix the password;
/// nothing bounces (a refused login says nothing about the recipient).
#[tokio::test]
async fn a_refused_login_defers_and_bounces_nothing() {
    let ca = TestCa::new();
    let (mx, addr) = provider(
        &ca,
        PROVIDER,
        MxOptions {
            auth: provider_auth("PLAIN"),
            ..MxOptions::default()
        },
    )
    .await;
    let relay = Relay::start(
        &ca,
        &format!(
            "[delivery]\nretry_initial = \"1h\"\n{}",
            smarthost(addr, "password = \"wrong\"\n")
        ),
        LOOPBACK_POLICY,
    )
    .await;
    relay.send("someone@example.net").await;
    relay.wait_deferred().await;
    assert_eq!(mx.logins().len(), 1);
    assert!(!mx.logins()[0].accepted);
    assert_eq!(mx.mail_attempts(), 0);
    assert!(mx.delivered().is_empty(), "no DSN either");
    relay.relay.shutdown().await;
}

/// The client itself never sends credentials without TLS: not when TLS is off, not when
/// the server offers no STARTTLS (whatever the configuration said).
#[tokio::test]
async fn the_client_never_logs_in_without_tls() {
    use optin_relay::delivery::client::{Connection, Timeouts, TlsStart};
    use optin_relay::delivery::outcome::{Attempt, Stage};
    let credentials = optin_relay::config::Credentials {
        username: "relay@shop.test".into(),
        password: optin_relay::config::Secret::new("correct horse"),
    };
    let connector =
        tokio_rustls::TlsConnector::from(optin_relay::tls::opportunistic_client_config());
    let target = optin_relay::delivery::transport::Target {
        host: PROVIDER.into(),
        addr: "127.0.0.1:25".parse().unwrap(),
    };
    let timeouts = Timeouts {
        command: Duration::from_secs(5),
        data: Duration::from_secs(5),
    };
    for start in [TlsStart::Never, TlsStart::StartTls(&connector)] {
        // a server that offers AUTH without TLS (and no STARTTLS at all)
        let mx = FakeMx::new(MxOptions {
            auth: provider_auth("PLAIN LOGIN"),
            ..MxOptions::default()
        });
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        mx.serve(theirs);
        let opened = Connection::open(
            Box::new(ours),
            &target,
            "relay.test",
            start,
            Some(&credentials),
            timeouts,
        )
        .await;
        let err = opened.err().expect("no connection without TLS");
        assert!(
            matches!(
                &err.attempt,
                Attempt::NoAnswer {
                    stage: Stage::Auth,
                    ..
                }
            ),
            "{:?}",
            err.attempt
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(mx.logins().is_empty());
    }
}

/// Under `tls = "required"` or `"verify"`, a server that offers STARTTLS and then breaks
/// the handshake (garbage instead of TLS, or silence) never gets the mail in plain text:
/// it waits and is retried. Opportunistic TLS, for contrast, falls back to plain text.
#[tokio::test]
async fn a_broken_handshake_never_falls_back_to_plain_text() {
    for (level, broken) in [
        ("required", TlsBreak::Garbage),
        ("verify", TlsBreak::Garbage),
        ("required", TlsBreak::Hang),
        ("verify", TlsBreak::Hang),
    ] {
        let ca = TestCa::new();
        let (mx, addr) = provider(
            &ca,
            PROVIDER,
            MxOptions {
                break_tls: broken,
                ..MxOptions::default()
            },
        )
        .await;
        let relay = Relay::start(
            &ca,
            &format!(
                "[delivery]\nsmarthost = \"{addr}\"\ntls_roots = \"{{ca}}\"\n\
                 retry_initial = \"1s\"\ncommand_timeout = \"1s\"\n"
            ),
            &format!("{LOOPBACK_POLICY}[destinations.\"*\"]\ntls = \"{level}\"\n"),
        )
        .await;
        relay.send("someone@example.net").await;
        relay.wait_deferred().await;
        let what = format!("tls = {level}, {broken:?}: retried");
        eventually(WAIT, &what, async || mx.starttls_attempts() >= 2).await;
        assert_eq!(
            mx.mail_attempts(),
            0,
            "tls = {level}, {broken:?}: MAIL was sent"
        );
        assert!(mx.delivered().is_empty());
        relay.relay.shutdown().await;
    }
    // the contrast: opportunistic TLS hands the mail over in plain text
    let ca = TestCa::new();
    let (mx, addr) = provider(
        &ca,
        PROVIDER,
        MxOptions {
            break_tls: TlsBreak::Garbage,
            ..MxOptions::default()
        },
    )
    .await;
    let relay = Relay::start(
        &ca,
        &format!("[delivery]\nsmarthost = \"{addr}\"\n"),
        LOOPBACK_POLICY,
    )
    .await;
    relay.send("someone@example.net").await;
    let got = mx.wait_for(1, WAIT).await;
    assert!(!got[0].tls);
    assert_eq!(mx.plain_mail_attempts(), 1);
    relay.relay.shutdown().await;
}

/// `[destinations."D"] tls = "verify"`: STARTTLS with a certificate valid for the MX
/// host's name; a certificate for another name keeps the mail waiting.
#[tokio::test]
async fn verify_destinations_need_a_certificate_for_the_mx_host() {
    for (cert_name, delivered) in [("mx.verify.test", true), ("other.test", false)] {
        let ca = TestCa::new();
        let (mx, addr) = provider(&ca, cert_name, MxOptions::default()).await;
        let dns = FakeDns::start(
            "verify.test. MX 10 mx.verify.test.\nmx.verify.test. A 127.0.0.1\n\
             plain.test. MX 10 mx.verify.test.\n",
        )
        .await;
        let relay = Relay::start(
            &ca,
            &format!(
                "[delivery]\ndns = \"{}\"\nmx_port = {}\ntls_roots = \"{{ca}}\"\n\
                 retry_initial = \"1h\"\n",
                dns.addr,
                addr.port()
            ),
            &format!("{LOOPBACK_POLICY}[destinations.\"verify.test\"]\ntls = \"verify\"\n"),
        )
        .await;
        relay.send("someone@verify.test").await;
        if delivered {
            let got = mx.wait_for(1, WAIT).await;
            assert!(got[0].tls);
            assert_eq!(mx.sni(), [Some("mx.verify.test".to_string())]);
        } else {
            relay.wait_deferred().await;
            assert_eq!(mx.mail_attempts(), 0, "sent over an unverified connection");
            // the same server, for a domain that asks nothing: opportunistic TLS goes
            relay.send("someone@plain.test").await;
            let got = mx.wait_for(1, WAIT).await;
            assert_eq!(got[0].rcpt_to, ["someone@plain.test"]);
        }
        relay.relay.shutdown().await;
    }
}
