//! MTA-STS (RFC 8461) end to end over real sockets: a relay started as `serve` starts it
//! resolves MX and `_mta-sts` TXT records from a fake DNS server, fetches each domain's
//! policy over HTTPS from a server whose certificate a private test CA signed (trusted
//! through `[delivery] tls_roots`), and delivers into fake MX servers with certificates of
//! that CA, self-signed ones, or no STARTTLS at all.
//!
//! Everything listens on loopback: each test has its own addresses among 127.0.0.10–30
//! (its MX hosts on one port, its policy hosts on another), its own zone and its own relay,
//! so the tests run in parallel without seeing each other.

use std::time::Duration;

use crate::support::{
    self, FakeDns, FakeMx, LOOPBACK_POLICY, MxOptions, PolicyServer, TestCa, poll, start_relay,
};
use optin_relay::spool::{RcptEvent, RecoveredMessage, Spool};

/// What the tests send.
const MESSAGE: &str = "Subject: MTA-STS\r\n\r\nonly over verified TLS, if the domain says so\r\n";

/// The most a delivery (or a deferral) may take.
const WAIT: Duration = Duration::from_secs(10);

/// How long a deferred message is watched for a second try (there must be none: the first
/// retry is an hour away) or a delivery.
const SETTLE: Duration = Duration::from_secs(1);

/// What an MX offers.
enum MxTls {
    /// No STARTTLS.
    Plain,
    /// STARTTLS with a self-signed certificate (for "mx.test": no CA, not its name).
    SelfSigned,
    /// STARTTLS with a certificate the test CA signed for the MX host's name.
    Valid,
    /// STARTTLS with a certificate the test CA signed for another name.
    ValidFor(&'static str),
}

/// A policy file.
fn policy(mode: &str, mx: &[&str]) -> String {
    let mut text = format!("version: STSv1\r\nmode: {mode}\r\n");
    for pattern in mx {
        text.push_str(&format!("mx: {pattern}\r\n"));
    }
    text + "max_age: 86400\r\n"
}

/// One test's network, built up before the relay starts: the CA, the two ports, the zone.
struct World {
    ca: TestCa,
    mx_port: u16,
    sts_port: u16,
    zone: String,
}

impl World {
    fn new() -> World {
        World {
            ca: TestCa::new(),
            mx_port: support::free_port(),
            sts_port: support::free_port(),
            zone: String::new(),
        }
    }

    /// An MX host `host` at `ip`, preference `pref` for `domain`.
    async fn mx(&mut self, domain: &str, pref: u16, host: &str, ip: &str, tls: MxTls) -> FakeMx {
        let tls_config = match tls {
            MxTls::Plain | MxTls::SelfSigned => None,
            MxTls::Valid => Some(self.ca.leaf(host)),
            MxTls::ValidFor(name) => Some(self.ca.leaf(name)),
        };
        let mx = FakeMx::new(MxOptions {
            tls: !matches!(tls, MxTls::Plain),
            tls_config,
            ..MxOptions::default()
        });
        mx.listen_at(&format!("{ip}:{}", self.mx_port)).await;
        self.zone += &format!("{domain}. MX {pref} {host}.\n{host}. A {ip}\n");
        mx
    }

    /// Publishes `text` as `domain`'s MTA-STS policy: the TXT record, and the policy host
    /// `mta-sts.{domain}` at `ip` with a certificate the test CA signed for it.
    async fn policy(&mut self, domain: &str, ip: &str, text: String) -> PolicyServer {
        let host = format!("mta-sts.{domain}");
        let addr = format!("{ip}:{}", self.sts_port);
        let server = support::serve_policy(&addr, self.ca.leaf(&host), text).await;
        self.zone += &format!("_mta-sts.{domain}. TXT v=STSv1; id=20260101T000000\n");
        self.zone += &format!("{host}. A {ip}\n");
        server
    }

    /// Starts the DNS server and a relay that trusts the test CA.
    async fn start(self) -> Running {
        let dns = FakeDns::start(&self.zone).await;
        let dir = tempfile::tempdir().unwrap();
        let roots = dir.path().join("test-ca.pem");
        self.ca.write_pem(&roots);
        let delivery = format!(
            "[delivery]\ndns = \"{}\"\nmx_port = {}\nmta_sts_port = {}\ntls_roots = \"{}\"\n\
             retry_initial = \"1h\"\n",
            dns.addr,
            self.mx_port,
            self.sts_port,
            roots.display()
        );
        let relay = start_relay(dir.path(), &delivery, LOOPBACK_POLICY).await;
        Running {
            relay,
            dir,
            _dns: dns,
        }
    }
}

struct Running {
    relay: optin_relay::server::Relay,
    dir: tempfile::TempDir,
    _dns: FakeDns,
}

impl Running {
    /// Submits one message to `to`; the relay must take it.
    async fn send(&self, to: &str) {
        support::send_ok(self.relay.smtp_addrs[0], "app@shop.example", &[to], MESSAGE).await;
    }

    /// The messages in the spool, everything journaled so far included.
    async fn queued(&self) -> Vec<RecoveredMessage> {
        self.relay.spool.flush().await.unwrap();
        Spool::inspect(&self.dir.path().join("spool")).unwrap()
    }

    /// Waits until the one queued message's recipient was tried once and deferred, then
    /// watches for [`SETTLE`] more: nothing else may happen to it meanwhile.
    async fn wait_deferred(&self) {
        let what = "the relay trying the message";
        let queued = poll(WAIT, what, async || {
            let queued = self.queued().await;
            assert_eq!(queued.len(), 1, "the message left the queue");
            queued[0]
                .events
                .iter()
                .all(|e| e.is_some())
                .then_some(queued)
        })
        .await;
        assert!(
            matches!(
                queued[0].events[..],
                [Some(RcptEvent::Deferred { attempts: 1, .. })]
            ),
            "deferred, not bounced: {:?}",
            queued[0].events
        );
        tokio::time::sleep(SETTLE).await;
        let queued = self.queued().await;
        assert_eq!(queued.len(), 1, "the message left the queue");
        assert!(
            matches!(
                queued[0].events[..],
                [Some(RcptEvent::Deferred { attempts: 1, .. })]
            ),
            "tried again at once: {:?}",
            queued[0].events
        );
    }

    /// Stops the relay and checks the message is still in the spool, to be retried.
    async fn stop_with_message_kept(self) {
        self.relay.shutdown().await;
        let left = Spool::inspect(&self.dir.path().join("spool")).unwrap();
        assert_eq!(left.len(), 1, "the message stays queued");
        assert_eq!(left[0].pending().count(), 1, "{:?}", left[0].events);
    }
}

/// `enforce`, and the MX's certificate is valid for its name: delivered, over TLS.
#[tokio::test]
async fn enforce_delivers_over_verified_tls() {
    let mut w = World::new();
    let mx = w
        .mx("good.test", 10, "mx.good.test", "127.0.0.10", MxTls::Valid)
        .await;
    let sts = w
        .policy(
            "good.test",
            "127.0.0.11",
            policy("enforce", &["mx.good.test"]),
        )
        .await;
    let r = w.start().await;
    r.send("someone@good.test").await;
    let got = mx.wait_for(1, WAIT).await;
    assert_eq!(got[0].rcpt_to, ["someone@good.test"]);
    assert!(got[0].tls, "delivered without TLS");
    assert_eq!(mx.connections(), 1);
    assert_eq!(sts.hosts(), ["mta-sts.good.test"]);
    r.relay.shutdown().await;
}

/// `enforce`, and the MX's certificate is self-signed: the relay tries STARTTLS, refuses
/// the certificate, does not fall back to plain text, and keeps the message.
#[tokio::test]
async fn enforce_refuses_a_self_signed_certificate() {
    let mut w = World::new();
    let mx = w
        .mx(
            "selfsigned.test",
            10,
            "mx.selfsigned.test",
            "127.0.0.12",
            MxTls::SelfSigned,
        )
        .await;
    let sts = w
        .policy(
            "selfsigned.test",
            "127.0.0.13",
            policy("enforce", &["mx.selfsigned.test"]),
        )
        .await;
    let r = w.start().await;
    r.send("someone@selfsigned.test").await;
    r.wait_deferred().await;
    assert_eq!(sts.requests(), 1, "the policy was fetched");
    assert_eq!(mx.starttls_attempts(), 1, "STARTTLS was tried");
    assert_eq!(mx.connections(), 1, "no second, plain-text connection");
    assert_eq!(mx.mail_attempts(), 0, "no transaction without verified TLS");
    assert!(mx.delivered().is_empty());
    r.stop_with_message_kept().await;
}

/// `enforce`, and the CA-signed certificate is for another name: refused as well.
#[tokio::test]
async fn enforce_refuses_a_certificate_for_another_name() {
    let mut w = World::new();
    let mx = w
        .mx(
            "wrongname.test",
            10,
            "mx.wrongname.test",
            "127.0.0.23",
            MxTls::ValidFor("other.wrongname.test"),
        )
        .await;
    w.policy(
        "wrongname.test",
        "127.0.0.24",
        policy("enforce", &["mx.wrongname.test"]),
    )
    .await;
    let r = w.start().await;
    r.send("someone@wrongname.test").await;
    r.wait_deferred().await;
    assert_eq!(mx.starttls_attempts(), 1, "STARTTLS was tried");
    assert_eq!(mx.connections(), 1, "no second, plain-text connection");
    assert_eq!(mx.mail_attempts(), 0, "no transaction without verified TLS");
    r.stop_with_message_kept().await;
}

/// `enforce`, and the MX offers no STARTTLS: nothing is sent in plain text; kept.
#[tokio::test]
async fn enforce_without_starttls_keeps_the_message() {
    let mut w = World::new();
    let mx = w
        .mx(
            "plain.test",
            10,
            "mx.plain.test",
            "127.0.0.14",
            MxTls::Plain,
        )
        .await;
    let sts = w
        .policy(
            "plain.test",
            "127.0.0.15",
            policy("enforce", &["mx.plain.test"]),
        )
        .await;
    let r = w.start().await;
    r.send("someone@plain.test").await;
    r.wait_deferred().await;
    assert_eq!(sts.requests(), 1, "the policy was fetched");
    assert!(mx.connections() >= 1, "the relay did try");
    assert_eq!(mx.mail_attempts(), 0, "sent in plain text");
    r.stop_with_message_kept().await;
}

/// `enforce`, and no MX host is one the policy lists: the MX is never contacted (though its
/// certificate would verify); kept.
#[tokio::test]
async fn enforce_with_no_listed_mx_keeps_the_message() {
    let mut w = World::new();
    let mx = w
        .mx(
            "unlisted.test",
            10,
            "mx.unlisted.test",
            "127.0.0.16",
            MxTls::Valid,
        )
        .await;
    let sts = w
        .policy(
            "unlisted.test",
            "127.0.0.17",
            policy("enforce", &["mail.unlisted.test", "*.mx.unlisted.test"]),
        )
        .await;
    let r = w.start().await;
    r.send("someone@unlisted.test").await;
    r.wait_deferred().await;
    assert_eq!(sts.requests(), 1, "the policy was fetched");
    assert_eq!(
        mx.connections(),
        0,
        "an MX the policy does not list was contacted"
    );
    r.stop_with_message_kept().await;
}

/// `enforce` with a wildcard: the preferred MX is not covered and is skipped; the next one
/// is, and takes the mail over verified TLS.
#[tokio::test]
async fn enforce_skips_mx_hosts_the_policy_does_not_list() {
    let mut w = World::new();
    let outside = w
        .mx(
            "pick.test",
            10,
            "relay.elsewhere.test",
            "127.0.0.25",
            MxTls::Valid,
        )
        .await;
    let listed = w
        .mx("pick.test", 20, "mx2.pick.test", "127.0.0.26", MxTls::Valid)
        .await;
    w.policy(
        "pick.test",
        "127.0.0.27",
        policy("enforce", &["*.pick.test"]),
    )
    .await;
    let r = w.start().await;
    r.send("someone@pick.test").await;
    let got = listed.wait_for(1, WAIT).await;
    assert!(got[0].tls, "delivered without TLS");
    assert_eq!(
        outside.connections(),
        0,
        "an MX the policy does not list was contacted"
    );
    r.relay.shutdown().await;
}

/// `testing`: the policy is fetched but not enforced; a self-signed certificate is fine
/// (opportunistic TLS), as without MTA-STS.
#[tokio::test]
async fn testing_mode_delivers_opportunistically() {
    let mut w = World::new();
    let mx = w
        .mx(
            "testing.test",
            10,
            "mx.testing.test",
            "127.0.0.18",
            MxTls::SelfSigned,
        )
        .await;
    let sts = w
        .policy(
            "testing.test",
            "127.0.0.19",
            policy("testing", &["mx.testing.test"]),
        )
        .await;
    let r = w.start().await;
    r.send("someone@testing.test").await;
    let got = mx.wait_for(1, WAIT).await;
    assert!(got[0].tls, "opportunistic STARTTLS accepts any certificate");
    assert_eq!(sts.requests(), 1, "the policy was fetched");
    r.relay.shutdown().await;
}

/// The control: no policy, a self-signed certificate, delivered (over TLS).
#[tokio::test]
async fn without_a_policy_a_self_signed_certificate_is_fine() {
    let mut w = World::new();
    let mx = w
        .mx(
            "nopolicy.test",
            10,
            "mx.nopolicy.test",
            "127.0.0.20",
            MxTls::SelfSigned,
        )
        .await;
    let r = w.start().await;
    r.send("someone@nopolicy.test").await;
    let got = mx.wait_for(1, WAIT).await;
    assert_eq!(got[0].rcpt_to, ["someone@nopolicy.test"]);
    assert!(got[0].tls, "opportunistic STARTTLS accepts any certificate");
    r.relay.shutdown().await;
}

/// Several messages to one domain, one after another and then at once: its policy is
/// fetched once.
#[tokio::test]
async fn the_policy_is_fetched_once_for_many_messages() {
    let mut w = World::new();
    let mx = w
        .mx("once.test", 10, "mx.once.test", "127.0.0.21", MxTls::Valid)
        .await;
    let sts = w
        .policy(
            "once.test",
            "127.0.0.22",
            policy("enforce", &["mx.once.test"]),
        )
        .await;
    let r = w.start().await;
    r.send("a@once.test").await;
    mx.wait_for(1, WAIT).await;
    r.send("b@once.test").await;
    mx.wait_for(2, WAIT).await;
    tokio::join!(
        r.send("c@once.test"),
        r.send("d@once.test"),
        r.send("e@once.test")
    );
    let got = mx.wait_for(5, WAIT).await;
    assert!(got.iter().all(|d| d.tls), "delivered without TLS");
    assert_eq!(sts.requests(), 1, "{:?}", sts.hosts());
    r.relay.shutdown().await;
}
