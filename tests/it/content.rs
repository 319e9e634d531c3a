//! Content rules through a running relay, with the starter categories the example policy
//! ships (`config/policy.toml`, loaded whole): a sample of each category is refused at the
//! end of DATA with `550 5.7.1 prohibited content: <category>` — in the Subject, in plain,
//! quoted-printable and base64 bodies, in HTML, through a link domain — and an ordinary
//! shop newsletter passes and is delivered.

use std::time::Duration;

use crate::support::{self, FakeMx, MxOptions, raw_send, settle};
use base64::Engine;

const WAIT: Duration = Duration::from_secs(20);
const FROM: &str = "app@shop.example";
const TO: &str = "reader@example.net";

/// A relay with the example policy, delivering to a fresh fake MX.
async fn relay() -> (FakeMx, optin_relay::server::Relay, tempfile::TempDir) {
    let mx = FakeMx::new(MxOptions::default());
    let mx_addr = mx.listen().await;
    let dir = tempfile::tempdir().unwrap();
    let policy = std::fs::read_to_string("config/policy.toml").unwrap();
    let extra = format!("[delivery]\nsmarthost = \"{mx_addr}\"\n");
    let relay = support::start_relay(dir.path(), &extra, &policy).await;
    (mx, relay, dir)
}

/// Sends `text` from [`FROM`] to [`TO`]; the reply to the end of DATA.
async fn submit(relay: &optin_relay::server::Relay, text: &str) -> String {
    raw_send(relay.smtp_addrs[0], FROM, &[TO], text).await
}

/// A single-part message: `headers` (Content-Type and the like) after the usual ones.
fn message(subject: &str, headers: &str, body: &str) -> String {
    format!(
        "From: Shop <{FROM}>\r\nTo: <{TO}>\r\nSubject: {subject}\r\n\
         Date: Tue, 4 Mar 2025 10:00:00 +0100\r\nMessage-ID: <c1@shop.example>\r\n\
         MIME-Version: 1.0\r\n{headers}\r\n{body}"
    )
}

fn base64_lines(text: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(text);
    encoded
        .as_bytes()
        .chunks(76)
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// One sample per starter category, each in a different form.
fn samples() -> Vec<(&'static str, String)> {
    let plain = "Content-Type: text/plain; charset=utf-8\r\n";
    let qp = "Content-Type: text/plain; charset=utf-8\r\n\
              Content-Transfer-Encoding: quoted-printable\r\n";
    vec![
        // In the Subject only.
        (
            "dating",
            message(
                "Hot singles in your area!",
                plain,
                "Click to see who is online.\r\n",
            ),
        ),
        // Quoted-printable: a soft line break inside the word, a non-breaking space.
        (
            "prescription-drugs",
            message(
                "Your order",
                qp,
                "Generic ci=\r\nalis, and no=C2=A0prescription needed.\r\n",
            ),
        ),
        // Base64, matched by a pattern.
        (
            "get-rich-quick",
            message(
                "An opportunity",
                "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n",
                &(base64_lines("Start today and earn $500 a day from your kitchen table.")
                    + "\r\n"),
            ),
        ),
        // HTML, the phrase split by tags and a line break.
        (
            "stock-tips",
            message(
                "Market letter",
                "Content-Type: text/html; charset=utf-8\r\n",
                "<html><body><p>This <b>penny</b>\r\n<i>stock</i> is our pick.</p></body></html>\r\n",
            ),
        ),
        // An RFC 2047 encoded Subject.
        (
            "mlm",
            message(
                "=?UTF-8?Q?Join_my_downline_=E2=80=93_limited_spots?=",
                plain,
                "Details inside.\r\n",
            ),
        ),
        // multipart/alternative: a clean plain part, the HTML part (base64) matches.
        (
            "affiliate-schemes",
            message(
                "Passive income",
                "Content-Type: multipart/alternative; boundary=\"b1\"\r\n",
                &format!(
                    "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee the HTML.\r\n\
                     --b1\r\nContent-Type: text/html; charset=utf-8\r\n\
                     Content-Transfer-Encoding: base64\r\n\r\n{}\r\n--b1--\r\n",
                    base64_lines("<p>Set up <em>autopilot commissions</em> tonight.</p>")
                ),
            ),
        ),
        // A phrase wrapped over two lines of plain text.
        (
            "debt-collection",
            message(
                "Notice",
                plain,
                "This communication is an attempt\r\nto collect a debt.\r\n",
            ),
        ),
        // Latin-1 quoted-printable, matched by a pattern.
        (
            "supplements",
            message(
                "Summer body",
                "Content-Type: text/plain; charset=iso-8859-1\r\n\
                 Content-Transfer-Encoding: quoted-printable\r\n",
                "Caf=E9 special: lose 30 pounds in 30 days!\r\n",
            ),
        ),
        // Only a link: the text is clean, the href's host is under a link domain.
        (
            "broker-lists",
            message(
                "Grow your audience",
                "Content-Type: text/html; charset=utf-8\r\n",
                "<p>Reach more people: <a href=\"https://offers.list-broker.example/q4\">\
                 see our catalogue</a>.</p>\r\n",
            ),
        ),
        (
            "pirated-goods",
            message(
                "Deals",
                plain,
                "Swiss REPLICA WATCHES and cracked software, shipped worldwide.\r\n",
            ),
        ),
    ]
}

/// What an ordinary shop sends: a sale, a discount, free shipping, a back-in-stock alert,
/// refer-a-friend credit, a specialist, links to its own site.
fn newsletter() -> String {
    let text = "Our spring sale starts today: 20% off everything with the discount code \
        SPRING20, and free shipping on orders over $50.\r\n\
        Back in stock alert: the linen shirt you liked is back. Stock up before Sunday!\r\n\
        Refer a friend and you both earn $10 credit.\r\n\
        Questions? Ask our skincare specialist at https://shop.example/help\r\n";
    let html = "<html><body><h1>Spring sale</h1><p>20% off everything with code \
        <b>SPRING20</b> &ndash; free shipping over $50.</p>\
        <p><a href=\"https://shop.example/sale?utm_source=newsletter\">Shop now</a></p>\
        <p>Back in stock: the linen shirt.</p></body></html>";
    message(
        "Spring sale: 20% off and free shipping",
        "Content-Type: multipart/alternative; boundary=\"nl\"\r\n",
        &format!(
            "--nl\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n\
             --nl\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n--nl--\r\n"
        ),
    )
}

#[tokio::test]
async fn every_starter_category_is_refused_with_its_name() {
    let (mx, relay, _dir) = relay().await;
    let categories = optin_relay::policy::Policy::load("config/policy.toml".as_ref())
        .unwrap()
        .content()
        .categories()
        .to_vec();
    let samples = samples();
    let sampled: Vec<&str> = samples.iter().map(|(c, _)| *c).collect();
    assert_eq!(sampled, categories, "one sample per shipped category");
    let mut wrong = Vec::new();
    for (category, text) in &samples {
        let reply = submit(&relay, text).await;
        let expected = format!("550 5.7.1 prohibited content: {category}");
        if reply != expected {
            wrong.push(format!("{category}: got {reply:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Nothing refused reached the MX; the clean message after them does.
    let reply = submit(&relay, &newsletter()).await;
    assert!(reply.starts_with("250 "), "{reply}");
    let got = mx.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert!(got[0].text().contains("Spring sale"));
}

#[tokio::test]
async fn a_policy_without_content_rules_refuses_nothing_for_content() {
    let mx = FakeMx::new(MxOptions::default());
    let mx_addr = mx.listen().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("[delivery]\nsmarthost = \"{mx_addr}\"\n");
    let relay = support::start_relay(dir.path(), &extra, support::LOOPBACK_POLICY).await;
    let (_, text) = &samples()[1];
    let reply = submit(&relay, text).await;
    assert!(reply.starts_with("250 "), "{reply}");
    mx.wait_for(1, WAIT).await;
}

/// Sentences of ordinary mail that look a little like the starter sets: none may match.
#[test]
fn ordinary_mail_passes_the_starter_sets() {
    let policy = optin_relay::policy::Policy::load("config/policy.toml".as_ref()).unwrap();
    let content = policy.content();
    let innocent = [
        "Back in stock alert: the linen shirt is available again",
        "Stock up on summer essentials before prices go up",
        "Ask our specialist, or join our email list for weekly tips",
        "We will never sell your email address. Subscribe to our mailing list",
        "Earn 2x points and get $10 cash back every month",
        "Refer a friend: you both earn $20 credit",
        "Your order is ready for collection at our Leeds store",
        "Your invoice is past due: please pay by Friday",
        "Sugar-free candy, now 30% off — free shipping, no strings attached",
        "Work from home essentials: ergonomic chairs and desks on sale",
        "Our new autumn collection: designer coats at outlet prices",
        "Shares in our co-op rose 3% this year; the dividend is paid in May",
        "A faithful replica of the original 1960 lamp, made in Denmark",
        "Keyboard shortcuts for the new editor: see https://docs.shop.example/keys",
        "The Via Grande branch is open on Sundays",
        "Vitamin D3 drops for winter, available without a prescription",
        "Save $100 a month on your energy bill with a smart thermostat",
        "Meet the team behind our singles collection of vinyl records",
    ];
    for text in innocent {
        let raw = format!("Subject: {text}\r\nContent-Type: text/plain\r\n\r\n{text}\r\n");
        assert_eq!(content.check(raw.as_bytes()), None, "{text}");
    }
}

/// `[content] freeze_account = true`: a prohibited message also freezes its account, so
/// its next submission is refused at MAIL.
#[tokio::test]
async fn a_match_freezes_the_account_when_the_policy_says_so() {
    let mx = FakeMx::new(MxOptions::default());
    let mx_addr = mx.listen().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("[delivery]\nsmarthost = \"{mx_addr}\"\n");
    let policy = format!(
        "{}\n[content]\nfreeze_account = true\n[[content.category]]\nname = \"pirated-goods\"\n\
         phrases = [\"cracked software\"]\n",
        support::LOOPBACK_POLICY
    );
    let relay = support::start_relay(dir.path(), &extra, &policy).await;
    let reply = submit(&relay, &message("Deals", "", "Get cracked software here.")).await;
    assert!(
        reply.starts_with("550 5.7.1 prohibited content: pirated-goods"),
        "{reply}"
    );
    let frozen = async || relay.freezes.get("local");
    let frozen = settle(Duration::from_secs(2), frozen, Option::is_some).await;
    let frozen = frozen.expect("frozen");
    assert_eq!(frozen.by, "content");
    assert_eq!(frozen.reason, "prohibited content: pirated-goods");
    let reply = submit(&relay, &message("Hi", "", "Hello")).await;
    assert!(!reply.starts_with("250"), "{reply}");
}
