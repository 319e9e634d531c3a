//! Bounces: the corpus in `tests/bounces/` read and classified as `expected.toml` says,
//! `bounce classify` on saved messages, and bounces mailed back to the return path of
//! the running relay.

use std::path::{Path, PathBuf};

use optin_relay::bounce::{Classifier, explain};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bounces")
}

#[derive(serde::Deserialize)]
struct Expected {
    case: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    file: String,
    kind: String,
    action: Option<String>,
    recipient: Option<String>,
    status: Option<String>,
    category: Option<String>,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(corpus().join("expected.toml")).unwrap();
    toml::from_str::<Expected>(&text).unwrap().case
}

#[test]
fn the_corpus_reads_and_classifies_as_expected() {
    let cases = cases();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let classifier = Classifier::default();
    let mut wrong = Vec::new();
    for case in &cases {
        let raw = std::fs::read(corpus().join(&case.file)).unwrap();
        let e = explain(&raw, &classifier, None);
        let got = (
            e.bounce.kind.as_str().to_string(),
            e.report.as_ref().map(|r| r.action.as_str().to_string()),
            e.report
                .as_ref()
                .and_then(|r| r.recipient.clone())
                .map(|r| r.to_lowercase()),
            e.report
                .as_ref()
                .and_then(|r| r.status)
                .map(|s| s.to_string()),
            e.verdict.as_ref().map(|v| v.category.as_str().to_string()),
        );
        let want = (
            case.kind.clone(),
            case.action.clone(),
            case.recipient.clone().map(|r| r.to_lowercase()),
            case.status.clone(),
            case.category.clone(),
        );
        if got != want {
            wrong.push(format!(
                "{}:\n   got {got:?}\n  want {want:?}\n  rule {:?}",
                case.file,
                e.verdict.map(|v| v.rule)
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {}:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}

use std::net::SocketAddr;
use std::time::Duration;

use optin_relay::consent::Reason;
use serde_json::Value;

use crate::support::{
    self, Account, Admin, Client, MxOptions, Running, SIGNED_UP, bin, eventually, grant, metric,
    send_ok,
};

const TOKEN: &str = "bounce-admin-token-0123456789";
const WAIT: Duration = Duration::from_secs(20);

/// `shop` sends marketing to `deals` with its return path at `bounce.shop.example`; a full
/// mailbox is suppressed after 2 bounces; campaigns (canary of 4) are judged after
/// `window`, and declined over 40 % inactive addresses.
fn policy(window: &str) -> String {
    policy_with_canary(window, 4)
}

fn policy_with_canary(window: &str, canary: u32) -> String {
    // Only 127.0.0.1 is the account: bounces come from 127.0.0.9, a stranger.
    let shop = Account::shop()
        .networks(&["127.0.0.1/32"])
        .list("deals", SIGNED_UP)
        .set("bounce_domain", "\"bounce.shop.example\"");
    support::policy(
        &[shop],
        &format!(
            "[bounce_streak]\nmailbox_full_count = 2\n\
             [campaigns]\nevaluation_window = \"{window}\"\ncanary_count = {canary}\n\
             max_inactive_rate = 0.4\n"
        ),
    )
}

async fn setup(window: &str) -> Running {
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\
         [unsubscribe]\nmail_domain = \"relay.test\"\n"
    );
    Running::start(MxOptions::default(), &config, &policy(window)).await
}

fn marketing(campaign: &str, to: &str) -> String {
    format!(
        "From: <news@shop.example>\r\nTo: <{to}>\r\nSubject: spring sale\r\n\
         X-Optin-Stream: marketing\r\nX-Optin-List: deals\r\nX-Optin-Campaign: {campaign}\r\n\
         Message-ID: <{campaign}.{local}@shop.example>\r\n\r\nBuy now.",
        local = to.split('@').next().unwrap()
    )
}

/// Sends marketing of `campaign` to each of `to` (consent granted first) and returns the
/// return path each was delivered from, in that order.
async fn deliver(s: &Running, campaign: &str, to: &[&str]) -> Vec<String> {
    let before = s.mx.delivered().len();
    for t in to {
        grant(&s.relay, "shop", "deals", t);
        send_ok(s.smtp(), "news@shop.example", &[t], &marketing(campaign, t)).await;
    }
    let got = s.mx.wait_for(before + to.len(), WAIT).await;
    to.iter()
        .map(|t| {
            got[before..]
                .iter()
                .find(|d| d.rcpt_to == [t.to_string()])
                .unwrap_or_else(|| panic!("{t} delivered"))
                .mail_from
                .clone()
        })
        .collect()
}

/// An RFC 3464 report about `rcpt` with `status` and `diagnostic`, to `to`.
fn dsn(to: &str, rcpt: &str, action: &str, status: &str, diagnostic: &str) -> String {
    format!(
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\r\nTo: <{to}>\r\n\
         Subject: Undelivered Mail Returned to Sender\r\nAuto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n\
         --b1\r\nContent-Type: message/delivery-status\r\n\r\n\
         Reporting-MTA: dns; mx.example.net\r\n\r\n\
         Final-Recipient: rfc822; {rcpt}\r\nAction: {action}\r\nStatus: {status}\r\n\
         Diagnostic-Code: smtp; {diagnostic}\r\n\r\n\
         --b1\r\nContent-Type: text/rfc822-headers\r\n\r\n\
         From: <news@shop.example>\r\nSubject: spring sale\r\n\r\n--b1--"
    )
}

/// Mails `body` to `to` from 127.0.0.9, which no account knows: the reply to the end of
/// DATA.
async fn mail_back(smtp: SocketAddr, to: &str, body: &str) -> String {
    let mut c = Client::connect_from(smtp, "127.0.0.9").await;
    c.say("EHLO mx.example.net").await;
    c.expect("MAIL FROM:<>", "250").await;
    let rcpt = c.say(&format!("RCPT TO:<{to}>")).await;
    assert!(rcpt.starts_with("250"), "{rcpt}");
    c.expect("DATA", "354").await;
    let reply = c.say(&format!("{body}\r\n.")).await;
    c.say("QUIT").await;
    reply
}

/// Mails back a report that `rcpt` is an unknown user to the return path `path`.
async fn unknown_user(s: &Running, path: &str, rcpt: &str) -> String {
    let report = dsn(path, rcpt, "failed", "5.1.1", "550 5.1.1 User unknown");
    mail_back(s.smtp(), path, &report).await
}

/// The suppression reasons of `address` in `shop`'s scope and globally.
fn suppressed(s: &Running, address: &str) -> (bool, bool) {
    let st = s.relay.lists.standing("shop", None, address);
    let bit = Reason::Bounce.bit();
    (st.account & bit != 0, st.global & bit != 0)
}

async fn campaign(s: &Running, id: &str) -> Value {
    Admin::new(s.relay.admin_addr.unwrap(), TOKEN)
        .call("GET", &format!("/admin/campaigns/shop/{id}"), None)
        .await
        .1
}

#[tokio::test]
async fn bounces_mailed_back_later_act_by_category() {
    let s = setup("1h").await;
    let to = [
        "gone@example.net",
        "full@example.net",
        "blocked@example.net",
        "away@example.net",
    ];
    let paths = deliver(&s, "spring", &to).await;
    for p in &paths {
        assert!(
            p.starts_with("bounces+") && p.ends_with("@bounce.shop.example"),
            "{p}"
        );
    }
    let admin = s.relay.admin_addr.unwrap();
    // An unknown user: suppressed for the account at once (not globally: anyone holding
    // the message could have mailed this).
    let r = mail_back(
        s.smtp(),
        &paths[0],
        &dsn(
            &paths[0],
            to[0],
            "failed",
            "5.1.1",
            "550 5.1.1 <gone@example.net>: User unknown",
        ),
    )
    .await;
    assert_eq!(r, "250 2.0.0 OK bounce received");
    assert_eq!(suppressed(&s, to[0]), (true, false));
    // A full mailbox: suppressed on its second bounce only.
    let full = dsn(
        &paths[1],
        to[1],
        "failed",
        "5.2.2",
        "552 5.2.2 Mailbox full",
    );
    mail_back(s.smtp(), &paths[1], &full).await;
    assert_eq!(suppressed(&s, to[1]), (false, false));
    // The same bounce again is a repeat: it counts nothing more.
    mail_back(s.smtp(), &paths[1], &full).await;
    assert_eq!(suppressed(&s, to[1]), (false, false));
    // A block is the sender's problem: counted, never a suppression.
    mail_back(
        s.smtp(),
        &paths[2],
        &dsn(
            &paths[2],
            to[2],
            "failed",
            "5.7.1",
            "554 5.7.1 blocked using zen.spamhaus.org",
        ),
    )
    .await;
    assert_eq!(suppressed(&s, to[2]), (false, false));
    // A delay notice and an out-of-office reply change nothing.
    mail_back(
        s.smtp(),
        &paths[3],
        &dsn(&paths[3], to[3], "delayed", "4.4.1", "connection timed out"),
    )
    .await;
    mail_back(
        s.smtp(),
        &paths[3],
        "From: <away@example.net>\r\nSubject: Out of Office\r\nAuto-Submitted: auto-replied\r\n\r\nBack Monday.",
    )
    .await;
    assert_eq!(suppressed(&s, to[3]), (false, false));

    // The next message of the account to the unknown user is refused at RCPT.
    let mut c = Client::hello(s.smtp(), "127.0.0.1").await;
    c.expect("MAIL FROM:<news@shop.example>", "250").await;
    let r = c.say("RCPT TO:<gone@example.net>").await;
    assert!(r.starts_with("550"), "{r}");
    c.say("QUIT").await;

    let events = support::events(s.dir.path(), "bounces");
    let categories: Vec<&str> = events
        .iter()
        .map(|e| e["category"].as_str().unwrap())
        .collect();
    assert_eq!(
        categories,
        ["invalid_recipient", "mailbox_full", "spam_block"]
    );
    assert_eq!(events[0]["address"], "gone@example.net");
    assert_eq!(events[0]["campaign"], "spring");
    assert_eq!(events[0]["suppressed"], true);
    for (series, want) in [
        (
            "optin_bounces_total{category=\"invalid_recipient\",via=\"async\"}",
            1.0,
        ),
        (
            "optin_bounces_total{category=\"spam_block\",via=\"async\"}",
            1.0,
        ),
        ("optin_bounce_mail_total{outcome=\"delayed\"}", 1.0),
        ("optin_bounce_mail_total{outcome=\"auto_reply\"}", 1.0),
    ] {
        assert!(metric(admin, series).await >= want, "{series}");
    }
    // The canary counts the bounces by category, the unknown user as inactive.
    let c = campaign(&s, "spring").await;
    assert_eq!(c["canary"]["inactive"], 1, "{c}");
    assert_eq!(c["canary"]["bounces"]["mailbox_full"], 1, "{c}");
    assert_eq!(c["canary"]["bounces"]["spam_block"], 1, "{c}");

    // The account's counts: every bounce by category (blocks count against it here).
    let (_, account) = Admin::new(admin, TOKEN)
        .call("GET", "/admin/accounts/shop", None)
        .await;
    assert_eq!(account["results"]["bounces"]["spam_block"], 1, "{account}");
    assert_eq!(
        account["results"]["bounces"]["invalid_recipient"], 1,
        "{account}"
    );
    // The second full-mailbox bounce (another message) completes the streak.
    let again = deliver(&s, "autumn", &[to[1]]).await;
    mail_back(
        s.smtp(),
        &again[0],
        &dsn(
            &again[0],
            to[1],
            "failed",
            "5.2.2",
            "552 5.2.2 Mailbox full",
        ),
    )
    .await;
    assert_eq!(suppressed(&s, to[1]), (true, false));
    s.relay.shutdown().await;
}

#[tokio::test]
async fn forged_and_tokenless_bounces_change_nothing() {
    let s = setup("1h").await;
    let paths = deliver(&s, "spring", &["victim@example.net"]).await;
    let admin = s.relay.admin_addr.unwrap();
    let before = metric(admin, "optin_bounce_mail_total{outcome=\"unverified\"}").await;
    // A token with one character changed, and a made-up one, at both domains.
    let genuine = &paths[0];
    let at = genuine.find('@').unwrap();
    let mut forged = genuine.clone().into_bytes();
    forged[at - 5] = if forged[at - 5] == b'a' { b'b' } else { b'a' };
    let forged = String::from_utf8(forged).unwrap();
    for to in [
        forged.as_str(),
        "bounces+aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa@relay.test",
    ] {
        let r = mail_back(
            s.smtp(),
            to,
            &dsn(
                to,
                "victim@example.net",
                "failed",
                "5.1.1",
                "550 5.1.1 User unknown",
            ),
        )
        .await;
        assert_eq!(r, "250 2.0.0 OK bounce received");
    }
    assert_eq!(suppressed(&s, "victim@example.net"), (false, false));
    assert!(support::events(s.dir.path(), "bounces").is_empty());
    let after = metric(admin, "optin_bounce_mail_total{outcome=\"unverified\"}").await;
    assert_eq!(after - before, 2.0);
    let aside: Vec<_> = std::fs::read_dir(s.spool().join("bounces/kept-aside"))
        .unwrap()
        .collect();
    assert_eq!(aside.len(), 2);
    // Nothing else of the form is taken: another local part is still no open relay.
    let mut c = Client::connect_from(s.smtp(), "127.0.0.9").await;
    c.say("EHLO mx.example.net").await;
    c.expect("MAIL FROM:<>", "250").await;
    let r = c.say("RCPT TO:<someone+abc@relay.test>").await;
    assert!(r.starts_with("5"), "{r}");
    // A stranger's bounce over [bounces] max_size is refused before any data.
    c.expect("RSET", "250").await;
    let r = c.say("MAIL FROM:<> SIZE=50000000").await;
    assert!(r.starts_with("552"), "{r}");
    c.say("QUIT").await;
    s.relay.shutdown().await;
}

#[tokio::test]
async fn a_campaign_is_declined_on_its_inactive_rate() {
    let s = setup("3s").await;
    let to = [
        "a@example.net",
        "b@example.net",
        "c@example.net",
        "d@example.net",
    ];
    let paths = deliver(&s, "winter", &to).await;
    // Two of four canary recipients turn out not to exist, a day later as far as the
    // relay can tell: their bounces come by mail.
    for i in 0..2 {
        mail_back(
            s.smtp(),
            &paths[i],
            &dsn(
                &paths[i],
                to[i],
                "failed",
                "5.1.1",
                "550 5.1.1 no such user",
            ),
        )
        .await;
    }
    eventually(WAIT, "declined", async || {
        campaign(&s, "winter").await["stage"] == "declined"
    })
    .await;
    let c = campaign(&s, "winter").await;
    assert_eq!(c["canary"]["delivered"], 4);
    assert_eq!(c["canary"]["hard_bounced"], 0);
    assert_eq!(c["canary"]["inactive"], 2);
    let reason = c["reason"].as_str().unwrap();
    assert!(reason.contains("inactive address rate 50.00%"), "{reason}");
    s.relay.shutdown().await;
}

#[tokio::test]
async fn bounce_classify_prints_what_the_relay_makes_of_a_saved_message() {
    let s = setup("1h").await;
    let paths = deliver(&s, "spring", &["gone@example.net"]).await;
    let file = s.dir.path().join("saved.eml");
    std::fs::write(
        &file,
        dsn(
            &paths[0],
            "gone@example.net",
            "failed",
            "5.1.1",
            "550 5.1.1 User unknown",
        ),
    )
    .unwrap();
    // The relay's own config: its key file tells a genuine token.
    let config = s.dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[spool]\npath = \"{}\"\n[unsubscribe]\nmail_domain = \"relay.test\"\n",
            s.spool().display()
        ),
    )
    .unwrap();
    let out = bin()
        .args([
            "--config",
            config.to_str().unwrap(),
            "bounce",
            "classify",
            "--json",
        ])
        .arg(&file)
        .arg(corpus().join("49-exchange-automatic-reply.eml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["kind"], "dsn");
    assert_eq!(v[0]["category"], "invalid_recipient");
    assert_eq!(v[0]["does"], "suppress");
    assert_eq!(v[0]["token"]["genuine"], true);
    assert_eq!(v[0]["token"]["campaign"], "spring");
    assert_eq!(v[0]["token"]["recipient"], "gone@example.net");
    assert_eq!(v[1]["kind"], "auto_reply");
    assert_eq!(v[1]["does"], "ignore");
    // Text for people; a missing file fails the command but not the others.
    let out = bin()
        .args(["bounce", "classify"])
        .arg(corpus().join("22-qmail-no-mailbox.eml"))
        .arg(s.dir.path().join("missing.eml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("category: invalid_recipient (hard)"),
        "{text}"
    );
    assert!(text.contains("error: "), "{text}");
    s.relay.shutdown().await;
}

#[tokio::test]
async fn refusals_in_the_relays_own_transactions_act_by_category_too() {
    let s = setup("1h").await;
    let admin = s.relay.admin_addr.unwrap();
    // A full mailbox twice (the streak of 2): then a global suppression, as a refusal
    // the relay heard itself is about the address, for everyone.
    for (i, campaign) in ["one", "two"].iter().enumerate() {
        grant(&s.relay, "shop", "deals", "fullbox-x@example.net");
        send_ok(
            s.smtp(),
            "news@shop.example",
            &["fullbox-x@example.net"],
            &marketing(campaign, "fullbox-x@example.net"),
        )
        .await;
        let series = "optin_bounces_total{category=\"mailbox_full\",via=\"sync\"}";
        eventually(WAIT, "the bounce counted", async || {
            metric(admin, series).await >= (i + 1) as f64
        })
        .await;
    }
    eventually(WAIT, "the streak suppressed", async || {
        suppressed(&s, "fullbox-x@example.net").1
    })
    .await;
    // An unknown user at RCPT: suppressed for everyone at once.
    grant(&s.relay, "shop", "deals", "permfail-y@example.net");
    send_ok(
        s.smtp(),
        "news@shop.example",
        &["permfail-y@example.net"],
        &marketing("three", "permfail-y@example.net"),
    )
    .await;
    eventually(WAIT, "the unknown user suppressed", async || {
        suppressed(&s, "permfail-y@example.net").1
    })
    .await;
    assert!(
        metric(
            admin,
            "optin_bounces_total{category=\"invalid_recipient\",via=\"sync\"}"
        )
        .await
            >= 1.0
    );
    s.relay.shutdown().await;
}

#[tokio::test]
async fn a_feedback_report_mailed_to_a_return_path_is_a_complaint() {
    let s = setup("1h").await;
    let paths = deliver(&s, "spring", &["reader@example.net"]).await;
    let copy = s.mx.delivered().last().unwrap().text();
    let headers = &copy[..copy.find("\r\n\r\n").unwrap() + 2];
    let report = format!(
        "From: <fbl@isp.example>\r\nTo: <{to}>\r\nSubject: Abuse report\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=feedback-report; boundary=\"arf\"\r\n\r\n\
         --arf\r\nContent-Type: text/plain\r\n\r\nSpam.\r\n\
         --arf\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\n\
         User-Agent: ISP/1\r\nVersion: 1\r\n\r\n\
         --arf\r\nContent-Type: text/rfc822-headers\r\n\r\n{headers}\r\n--arf--",
        to = paths[0]
    );
    let r = mail_back(s.smtp(), &paths[0], &report).await;
    assert_eq!(r, "250 2.0.0 OK bounce received");
    let st = s.relay.lists.standing("shop", None, "reader@example.net");
    assert_ne!(st.account & Reason::Complaint.bit(), 0);
    assert_eq!(support::events(s.dir.path(), "complaints").len(), 1);
    s.relay.shutdown().await;
}

#[tokio::test]
async fn strangers_mail_to_return_paths_is_capped_per_hour() {
    let s = Running::start(
        MxOptions::default(),
        "[unsubscribe]\nmail_domain = \"relay.test\"\n[bounces]\nmax_per_ip = 2\n",
        &policy("1h"),
    )
    .await;
    let paths = deliver(&s, "spring", &["a@example.net"]).await;
    for _ in 0..2 {
        let body = dsn(
            &paths[0],
            "a@example.net",
            "failed",
            "5.7.1",
            "554 5.7.1 spam",
        );
        mail_back(s.smtp(), &paths[0], &body).await;
    }
    let mut c = Client::connect_from(s.smtp(), "127.0.0.9").await;
    c.say("EHLO mx.example.net").await;
    c.expect("MAIL FROM:<>", "250").await;
    let r = c.say(&format!("RCPT TO:<{}>", paths[0])).await;
    assert!(r.starts_with("450 4.7.1"), "{r}");
    s.relay.shutdown().await;
}

#[tokio::test]
async fn what_happened_to_a_message_by_queue_id_or_message_id() {
    let s = setup("1h").await;
    let paths = deliver(&s, "spring", &["gone@example.net"]).await;
    unknown_user(&s, &paths[0], "gone@example.net").await;
    let admin = Admin::new(s.relay.admin_addr.unwrap(), TOKEN);
    // The delivery log is flushed within a second.
    let mut v = Value::Null;
    eventually(WAIT, "the bounce in the history", async || {
        let (status, got) = admin
            .call(
                "GET",
                "/admin/messages/%3Cspring.gone%40shop.example%3E",
                None,
            )
            .await;
        v = got;
        status == 200 && v["recipients"][0]["state"] == "bounced"
    })
    .await;
    let r = &v["recipients"][0];
    assert_eq!(r["category"], "invalid_recipient");
    assert_eq!(r["via"], "async");
    assert!(r["rcpt"].as_str().unwrap().ends_with("@example.net"));
    assert!(
        !v.to_string().contains("gone@example.net"),
        "no plain address: {v}"
    );
    let states: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["accepted", "delivered", "bounced"]);
    // The same by queue id, and `queue show` prints it.
    let id = v["ids"][0].as_str().unwrap().to_string();
    let (status, by_id) = admin
        .call("GET", &format!("/admin/messages/{id}"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(by_id["recipients"], v["recipients"]);
    let (status, _) = admin
        .call("GET", "/admin/messages/%3Cnobody%40x%3E", None)
        .await;
    assert_eq!(status, 404);
    let config = s.dir.path().join("cli.toml");
    std::fs::write(
        &config,
        format!(
            "[spool]\npath = \"{}\"\n[admin]\nlisten = \"{}\"\ntoken = \"{TOKEN}\"\n",
            s.spool().display(),
            s.relay.admin_addr.unwrap()
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        bin()
            .args(["--config", config.to_str().unwrap(), "queue", "show"])
            .arg("<spring.gone@shop.example>")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("  bounced, ") && text.contains("invalid_recipient (async)"),
        "{text}"
    );
    s.relay.shutdown().await;
}

#[tokio::test]
async fn an_async_bounce_of_every_category_suppresses_only_a_dead_address() {
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\
         [unsubscribe]\nmail_domain = \"relay.test\"\n"
    );
    let s = Running::start(MxOptions::default(), &config, &policy_with_canary("1h", 20)).await;
    // (recipient, status, diagnostic, category, suppressed for the account)
    let cases = [
        (
            "c1@example.net",
            "5.1.1",
            "550 5.1.1 user unknown",
            "invalid_recipient",
            true,
        ),
        (
            "c2@example.net",
            "5.1.2",
            "550 5.1.2 Host or domain name not found",
            "bad_domain",
            true,
        ),
        (
            "c3@example.net",
            "5.2.1",
            "550 5.2.1 account disabled",
            "inactive",
            true,
        ),
        (
            "c4@example.net",
            "5.2.2",
            "552 5.2.2 over quota",
            "mailbox_full",
            false,
        ),
        (
            "c5@example.net",
            "5.3.4",
            "552 5.3.4 message too big",
            "message_too_large",
            false,
        ),
        (
            "c6@example.net",
            "5.7.1",
            "554 5.7.1 listed at spamhaus",
            "spam_block",
            false,
        ),
        (
            "c7@example.net",
            "5.7.26",
            "550 5.7.26 DMARC policy",
            "auth_failure",
            false,
        ),
        (
            "c8@example.net",
            "4.7.0",
            "421 4.7.0 rate limited, try later",
            "rate_limited",
            false,
        ),
        (
            "c9@example.net",
            "5.6.0",
            "554 5.6.0 virus found",
            "content_rejected",
            false,
        ),
        (
            "c10@example.net",
            "5.4.6",
            "554 5.4.6 mail loop detected",
            "routing",
            false,
        ),
        (
            "c11@example.net",
            "4.4.7",
            "delivery time expired",
            "transient",
            false,
        ),
        ("c12@example.net", "5.0.0", "550 5.0.0 no", "other", false),
    ];
    let to: Vec<&str> = cases.iter().map(|c| c.0).collect();
    let paths = deliver(&s, "every", &to).await;
    for ((rcpt, status, diagnostic, _, _), path) in cases.iter().zip(&paths) {
        let r = mail_back(
            s.smtp(),
            path,
            &dsn(path, rcpt, "failed", status, diagnostic),
        )
        .await;
        assert_eq!(r, "250 2.0.0 OK bounce received", "{rcpt}");
    }
    let events = support::events(s.dir.path(), "bounces");
    for (rcpt, _, _, category, dead) in cases {
        let e = events
            .iter()
            .find(|e| e["address"] == rcpt)
            .unwrap_or_else(|| panic!("no event for {rcpt}"));
        assert_eq!(e["category"], category, "{rcpt}: {e}");
        assert_eq!(suppressed(&s, rcpt), (dead, false), "{rcpt} ({category})");
        assert_eq!(e["suppressed"], dead, "{rcpt}");
    }
    let c = campaign(&s, "every").await;
    assert_eq!(c["canary"]["inactive"], 3, "{c}");
    s.relay.shutdown().await;
}

#[tokio::test]
async fn a_bounce_mailed_back_reaches_the_accounts_webhook() {
    use crate::webhooks::{Receiver, SECRET, signature_verifies};
    let receiver = Receiver::new(0);
    let hook = receiver.listen("127.0.0.1:0").await;
    let shop = Account::shop()
        .networks(&["127.0.0.1/32"])
        .list("deals", SIGNED_UP)
        .table(
            "webhook",
            &format!("url = \"http://{hook}/hook\"\nsecret = \"{SECRET}\"\nformat = \"ses\""),
        );
    let config = "[unsubscribe]\nmail_domain = \"relay.test\"\n";
    let s = Running::start(MxOptions::default(), config, &support::policy(&[shop], "")).await;
    let paths = deliver(&s, "spring", &["gone@example.net"]).await;
    unknown_user(&s, &paths[0], "gone@example.net").await;
    let hits = receiver.wait_delivered(1).await;
    let h = &hits[0];
    assert!(signature_verifies(h, SECRET));
    let sns = h.json();
    let m: Value = serde_json::from_str(sns["Message"].as_str().unwrap()).unwrap();
    assert_eq!(m["notificationType"], "Bounce");
    assert_eq!(m["bounce"]["bounceType"], "Permanent");
    assert_eq!(m["bounce"]["bounceSubType"], "NoEmail");
    assert_eq!(
        m["bounce"]["bouncedRecipients"][0]["emailAddress"],
        "gone@example.net"
    );
    assert_eq!(m["mail"]["tags"]["optin-campaign"][0], "spring");
    s.relay.shutdown().await;
}
