//! The delivery-time rewrite end to end: what a marketing message looks like when it
//! reaches the MX — unsubscribe headers, DKIM signatures that verify (RSA and Ed25519,
//! with mail-auth's verifier against the published records), and one transaction per
//! recipient.

use std::time::Duration;

use optin_relay::dkim::{DkimKey, verify_with_record};

use crate::support::{self, Account, Client, MxOptions, Running, SUBSCRIBED};

const WAIT: Duration = Duration::from_secs(20);

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/dkim/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// `news` sends marketing to `weekly`, signed with an RSA and an Ed25519 key.
fn policy() -> String {
    let news = Account::news()
        .networks(&["127.0.0.0/8"])
        .list_with(
            "weekly",
            &[("name", "The Weekly"), ("consent_statement", SUBSCRIBED)],
        )
        .dkim("news.example", "rsa2026", &fixture("rsa2048-pkcs1.pem"))
        .dkim("news.example", "ed2026", &fixture("ed25519-pkcs8.pem"));
    support::policy(&[news], "")
}

/// A relay delivering to a fake MX, with `policy`.
async fn start(policy: &str) -> Running {
    Running::start(MxOptions::default(), "", policy).await
}

fn record(file: &str, selector: &str) -> String {
    DkimKey::from_pem_file("news.example", selector, file.as_ref())
        .unwrap()
        .dns_record()
}

#[tokio::test]
async fn marketing_mail_arrives_signed_with_per_recipient_unsubscribe_headers() {
    let (mx, relay, _dir) = start(&policy()).await.into_parts();
    for to in ["a@example.net", "b@example.net"] {
        support::grant(&relay, "news", "weekly", to);
    }
    support::send_ok(
        relay.smtp_addrs[0],
        "bounce@news.example",
        &["a@example.net", "b@example.net"],
        "From: News <hello@news.example>\r\nTo: a@example.net, b@example.net\r\nSubject: Issue 42\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\nMessage-ID: <42@news.example>\r\n\r\nHello, this is the news.\r\n",
    ).await;
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

/// Sends `message` as it is (dot-stuffed) from the trusted network; the reply to the end
/// of DATA.
async fn submit(relay: std::net::SocketAddr, from: &str, to: &str, message: &[u8]) -> String {
    let mut c = Client::connect(relay).await;
    for cmd in [
        "EHLO test".to_string(),
        format!("MAIL FROM:<{from}> BODY=8BITMIME"),
        format!("RCPT TO:<{to}>"),
        "DATA".to_string(),
    ] {
        let r = c.say(&cmd).await;
        assert!(r.starts_with('2') || r.starts_with('3'), "{cmd}: {r}");
    }
    let mut wire = Vec::new();
    for line in message.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            wire.push(b'.');
        }
        wire.extend_from_slice(line);
    }
    if !wire.ends_with(b"\r\n") {
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b".\r\n");
    c.try_write(&wire).await.unwrap();
    c.reply().await
}

#[tokio::test]
async fn every_mime_shape_gets_the_footer_in_each_text_body_and_stays_signed() {
    let shop = Account::new("shop")
        .description("Example Shop")
        .networks(&["127.0.0.0/8"])
        .streams(&["marketing"])
        .domains(&["shop.example"])
        .list_with(
            "picks",
            &[
                ("name", "Weekly picks"),
                ("consent_source", "shop.example/signup"),
                (
                    "consent_statement",
                    "Vous recevez {list} — inscrit sur {source}.",
                ),
            ],
        )
        .dkim("shop.example", "ed", &fixture("ed25519-pkcs8.pem"));
    let (mx, relay, _dir) = start(&support::policy(&[shop], "")).await.into_parts();
    let to = "ann@example.net";
    support::grant(&relay, "shop", "picks", to);
    let record =
        DkimKey::from_pem_file("shop.example", "ed", fixture("ed25519-pkcs8.pem").as_ref())
            .unwrap()
            .dns_record();
    let mime_dir = format!("{}/tests/fixtures/mime", env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<String> = std::fs::read_dir(&mime_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".eml"))
        .collect();
    names.sort();
    assert!(names.len() >= 15);
    let mut delivered = 0;
    for name in &names {
        let original = std::fs::read(format!("{mime_dir}/{name}")).unwrap();
        let reply = submit(relay.smtp_addrs[0], "bounce@shop.example", to, &original).await;
        let refused = ["signed", "smime", "pgp"].iter().any(|k| name.contains(k));
        if refused {
            assert!(
                reply.starts_with("550 5.7.1 Marketing mail: "),
                "{name}: {reply}"
            );
            continue;
        }
        assert!(reply.starts_with("250"), "{name}: {reply}");
        delivered += 1;
        let got = mx.wait_for(delivered, WAIT).await;
        let out = &got[delivered - 1].data;
        check_delivered(name, &original, out, &record);
    }
    assert!(delivered >= 15, "{delivered}");

    // A 100 000-part alternative (4 MB): the footer goes into MAX_FOOTERS alternatives,
    // not into every one (it once went out at 13 MB).
    let mut big = String::from(
        "From: Shop <news@shop.example>\r\nTo: ann@example.net\r\nSubject: Many\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/alternative; boundary=\"alt\"\r\n\r\n",
    );
    for i in 0..100_000 {
        let kind = if i % 2 == 0 { "plain" } else { "html" };
        big.push_str(&format!(
            "--alt\r\nContent-Type: text/{kind}\r\n\r\nalt {i}\r\n"
        ));
    }
    big.push_str("--alt--\r\n");
    let reply = submit(
        relay.smtp_addrs[0],
        "bounce@shop.example",
        to,
        big.as_bytes(),
    )
    .await;
    assert!(reply.starts_with("250"), "{reply}");
    let got = mx.wait_for(delivered + 1, WAIT).await;
    let out = &got[delivered].data;
    verify_with_record(out, "shop.example", "ed", &record).unwrap();
    let parsed = mail_parser::MessageParser::new().parse(out).unwrap();
    let with_footer: Vec<&str> = parsed
        .parts
        .iter()
        .filter_map(|p| p.text_contents())
        .filter(|t| t.contains(STATEMENT))
        .collect();
    assert_eq!(with_footer.len(), optin_relay::rewrite::footer::MAX_FOOTERS);
    assert!(with_footer.iter().all(|t| t.contains("alt 999")));
    assert!(
        out.len() < big.len() + 8 * 1024,
        "{} -> {}",
        big.len(),
        out.len()
    );
    relay.shutdown().await;
}

const STATEMENT: &str = "Vous recevez Weekly picks — inscrit sur shop.example/signup.";

/// What a MIME fixture must look like at the MX: signed, lines within limits, the same
/// parts of the same types, and the statement with the recipient's link exactly once in
/// each body a reader sees — or, for a message without such a body, in a first
/// `text/plain` part of a `multipart/mixed` around the original.
fn check_delivered(name: &str, original: &[u8], out: &[u8], record: &str) {
    use mail_parser::{MessageParser, MimeHeaders};
    verify_with_record(out, "shop.example", "ed", record).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(
        out.split(|&b| b == b'\n').all(|l| l.len() <= 999),
        "{name}: a line over 998 octets"
    );
    let before = MessageParser::new().parse(original).unwrap();
    let after = MessageParser::new().parse(out).unwrap();
    let wrapped = ["attachment-only", "image-only", "6bit-only"]
        .iter()
        .any(|k| name.contains(k));
    // A part without Content-Type is text/plain (and may gain one: charset, encoding).
    let kind = |p: &mail_parser::MessagePart| {
        p.content_type()
            .map_or(("text".to_string(), Some("plain".to_string())), |c| {
                (
                    c.ctype().to_ascii_lowercase(),
                    c.subtype().map(str::to_ascii_lowercase),
                )
            })
    };
    let skip = if wrapped { 2 } else { 0 };
    assert_eq!(
        before.parts.len() + skip,
        after.parts.len(),
        "{name}: structure changed"
    );
    for (a, b) in before.parts.iter().zip(&after.parts[skip..]) {
        assert_eq!(kind(a), kind(b), "{name}");
        if wrapped {
            assert_eq!(a.contents(), b.contents(), "{name}: content changed");
        }
    }
    // Every body part a reader sees (text and HTML, as they are, not converted), but the
    // opaque ones (a transfer encoding nobody can decode).
    let ids: Vec<usize> = if wrapped {
        assert_eq!(
            kind(&after.parts[0]),
            ("multipart".into(), Some("mixed".into()))
        );
        vec![1]
    } else {
        let mut ids: Vec<usize> = after
            .text_body
            .iter()
            .chain(&after.html_body)
            .map(|&i| i as usize)
            .filter(|&i| {
                after.parts[i]
                    .content_transfer_encoding()
                    .is_none_or(|cte| {
                        ["7bit", "8bit", "binary", "quoted-printable", "base64"]
                            .contains(&cte.to_ascii_lowercase().as_str())
                    })
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    };
    let bodies: Vec<String> = ids
        .iter()
        .filter_map(|&i| after.parts[i].text_contents().map(str::to_string))
        .collect();
    assert!(!bodies.is_empty(), "{name}");
    for b in &bodies {
        assert_eq!(
            b.matches(STATEMENT).count(),
            1,
            "{name}: footer not exactly once in {b}"
        );
    }
    // The footer's link is the recipient's List-Unsubscribe link.
    let text = String::from_utf8_lossy(out).replace("\r\n ", " ");
    let s = text.find("List-Unsubscribe: <").unwrap() + "List-Unsubscribe: <".len();
    let url = &text[s..s + text[s..].find('>').unwrap()];
    assert!(
        bodies.iter().all(|b| b.contains(url)),
        "{name}: footer without the link"
    );
}
