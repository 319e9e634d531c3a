//! The delivery-time rewrite end to end: what a marketing message looks like when it
//! reaches the MX — unsubscribe headers, DKIM signatures that verify (RSA and Ed25519,
//! with mail-auth's verifier against the published records), and one transaction per
//! recipient.

mod common;

use std::time::Duration;

use common::{FakeMx, MxOptions};
use optin_relay::consent::{CONSENT, Change, Kind, Op, Origin, Scope};
use optin_relay::rewrite::dkim::{DkimKey, verify_with_record};

const WAIT: Duration = Duration::from_secs(20);

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/dkim/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn policy() -> String {
    format!(
        r#"
[accounts.news]
networks = ["127.0.0.0/8"]
streams = ["marketing", "transactional"]
default_stream = "marketing"
from_domains = ["news.example"]
[accounts.news.lists.weekly]
name = "The Weekly"
consent_statement = "You subscribed to {{list}}."
[[accounts.news.dkim]]
domain = "news.example"
selector = "rsa2026"
private_key = "{}"
[[accounts.news.dkim]]
domain = "news.example"
selector = "ed2026"
private_key = "{}"
"#,
        fixture("rsa2048-pkcs1.pem"),
        fixture("ed25519-pkcs8.pem")
    )
}

fn record(file: &str, selector: &str) -> String {
    DkimKey::from_pem_file("news.example", selector, file.as_ref())
        .unwrap()
        .dns_record()
}

#[tokio::test]
async fn marketing_mail_arrives_signed_with_per_recipient_unsubscribe_headers() {
    let mx = FakeMx::new(MxOptions::default());
    let mx_addr = mx.listen().await;
    let dir = tempfile::tempdir().unwrap();
    let relay = common::start_relay(
        dir.path(),
        &format!("[delivery]\nsmarthost = \"{mx_addr}\"\n"),
        &policy(),
    )
    .await;
    for to in ["a@example.net", "b@example.net"] {
        let l = &relay.lists;
        l.record(&[Change {
            op: Op::Add,
            fp: l
                .secret()
                .fingerprint(Kind::Consent, Scope::List("news", "weekly"), to),
            tags: CONSENT,
            origin: Origin::Operator,
            time_ms: 0,
        }])
        .unwrap();
    }
    let reply = common::raw_send(
        relay.smtp_addrs[0],
        "bounce@news.example",
        &["a@example.net", "b@example.net"],
        "From: News <hello@news.example>\r\nTo: a@example.net, b@example.net\r\nSubject: Issue 42\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\nMessage-ID: <42@news.example>\r\n\r\nHello, this is the news.\r\n",
    )
    .await;
    assert!(reply.starts_with("250"), "{reply}");
    let got = mx.wait_for(2, WAIT).await;
    // One transaction per recipient, each with its own link.
    let mut rcpts: Vec<&str> = got.iter().map(|d| d.rcpt_to[0].as_str()).collect();
    rcpts.sort();
    assert_eq!(rcpts, ["a@example.net", "b@example.net"]);
    assert!(got.iter().all(|d| d.rcpt_to.len() == 1));
    let texts: Vec<String> = got.iter().map(|d| d.text()).collect();
    let link = |t: &str| {
        let u = t.replace("\r\n ", " ");
        let s = u.find("List-Unsubscribe: <").unwrap();
        u[s..s + u[s..].find('>').unwrap()].to_string()
    };
    assert_ne!(link(&texts[0]), link(&texts[1]));

    let rsa = record(&fixture("rsa2048-pkcs1.pem"), "rsa2026");
    let ed = record(&fixture("ed25519-pkcs8.pem"), "ed2026");
    for d in &got {
        let text = d.text();
        assert!(text.starts_with("DKIM-Signature: "), "{text}");
        assert_eq!(text.matches("DKIM-Signature: ").count(), 2);
        let h: String = text.replace("\r\n\t", "").replace("\r\n ", "");
        assert!(h.contains("List-Unsubscribe") && h.contains("List-Unsubscribe-Post"));
        verify_with_record(&d.data, "news.example", "rsa2026", &rsa).unwrap();
        verify_with_record(&d.data, "news.example", "ed2026", &ed).unwrap();
        // Any change after signing breaks it.
        let tampered = text.replace("Issue 42", "Issue 43");
        assert!(verify_with_record(tampered.as_bytes(), "news.example", "ed2026", &ed).is_err());
    }
    relay.shutdown().await;
}

#[test]
fn a_bad_dkim_key_is_a_policy_problem() {
    let text = policy().replace(&fixture("ed25519-pkcs8.pem"), &fixture("rsa1024-pkcs1.pem"));
    let err = optin_relay::policy::Policy::from_toml("p.toml", &text)
        .unwrap_err()
        .to_string();
    assert!(err.contains("accounts.news.dkim[1].private_key"), "{err}");
    let text = policy().replace(
        "domain = \"news.example\"\nselector = \"ed2026\"",
        "domain = \"other.example\"\nselector = \"ed2026\"",
    );
    let err = optin_relay::policy::Policy::from_toml("p.toml", &text)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("signs none of the account's from_domains"),
        "{err}"
    );
}
