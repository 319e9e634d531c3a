//! Spam complaints end to end: ARF reports (RFC 5965) built around copies the relay really
//! delivered, mailed to the feedback address by a client no account knows, become
//! `complaint` suppressions for the account (counted, logged, in the metrics) that stop
//! the next message of every stream; unusable reports are kept aside; the feedback
//! address opens no relay; the report form records complaints by token.

use std::net::SocketAddr;
use std::time::Duration;

use optin_relay::consent::Reason;
use optin_relay::server::Relay;

use crate::support::{self, Account, Client, Running, SUBSCRIBED, http, metric, token_of};

const WAIT: Duration = Duration::from_secs(20);

/// `news` (127.0.0.1) sends marketing to two lists and transactional mail; `shop`
/// (127.0.0.2) transactional mail only.
fn policy() -> String {
    let news = Account::news()
        .set("display_name", "\"Example News\"")
        .list_with(
            "weekly",
            &[("name", "The Weekly"), ("consent_statement", SUBSCRIBED)],
        )
        .list("deals", "You asked for {list}.");
    let shop = Account::new("shop")
        .networks(&["127.0.0.2/32"])
        .streams(&["transactional"])
        .domains(&["shop.example"]);
    support::policy(&[news, shop], "")
}

/// A relay delivering to a fake MX, with both HTTP listeners on free ports and
/// `relay.test` as mail domain; `delivery` and `unsubscribe` add keys to those sections,
/// `extra` more sections.
async fn start(delivery: &str, unsubscribe: &str, extra: &str) -> Running {
    let config = format!(
        "{delivery}\n[http]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [unsubscribe]\npublic_url = \"https://unsub.example\"\nmail_domain = \"relay.test\"\n\
         {unsubscribe}\n{extra}"
    );
    Running::start(support::MxOptions::default(), &config, &policy()).await
}

/// Mails `body` to the feedback address from 127.0.0.9, which no account knows; returns
/// the reply to the end of DATA.
async fn report(smtp: SocketAddr, body: &str) -> String {
    let mut c = Client::connect_from(smtp, "127.0.0.9").await;
    c.say("EHLO feedback.isp.example").await;
    c.expect("MAIL FROM:<fbl@isp.example>", "250").await;
    let rcpt = c.say("RCPT TO:<fbl@relay.test>").await;
    assert!(rcpt.starts_with("250"), "{rcpt}");
    c.expect("DATA", "354").await;
    let reply = c.say(&format!("{body}\r\n.")).await;
    c.say("QUIT").await;
    reply
}

/// An ARF report: the human part, the feedback fields, then the original (or its header
/// section) as a part of type `original_type`.
fn arf(feedback: &str, original_type: &str, original: &str) -> String {
    format!(
        "From: <fbl@isp.example>\r\nTo: <fbl@relay.test>\r\nSubject: Abuse report\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=feedback-report;\r\n\tboundary=\"arf-1\"\r\n\r\n\
         --arf-1\r\nContent-Type: text/plain\r\n\r\nA user of ours reported this message.\r\n\
         --arf-1\r\nContent-Type: message/feedback-report\r\n\r\n{feedback}\r\n\
         --arf-1\r\nContent-Type: {original_type}\r\n\r\n{original}\r\n--arf-1--"
    )
}

fn feedback(rcpt: &str) -> String {
    format!(
        "Feedback-Type: abuse\r\nUser-Agent: ISP-FBL/2.1\r\nVersion: 1\r\n\
         Original-Rcpt-To: {rcpt}\r\nArrival-Date: Tue, 5 May 2026 10:00:00 +0000"
    )
}

fn marketing(list: &str, to: &str) -> String {
    format!(
        "From: News <hello@news.example>\r\nTo: <{to}>\r\nSubject: This week\r\nX-Optin-List: {list}\r\n\r\nHello.\r\n"
    )
}

fn transactional(from: &str, to: &str) -> String {
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: Your receipt\r\nX-Optin-Stream: transactional\r\n\r\nThanks.\r\n"
    )
}

/// The header section of a delivered message, with its final CRLF.
fn header_section(text: &str) -> &str {
    &text[..text.find("\r\n\r\n").unwrap() + 2]
}

/// A request for the report form of `token` on the public listener `web`.
async fn form(web: SocketAddr, method: &str, token: &str, body: &str) -> (u16, String) {
    http(web, method, &format!("/complaint/{token}"), body).await
}

/// Whether `address` has a complaint suppression in `account`'s scope (or globally).
fn complained(relay: &Relay, account: &str, address: &str) -> (bool, bool) {
    let s = relay.lists.standing(account, None, address);
    let bit = Reason::Complaint.bit();
    (s.account & bit != 0, s.global & bit != 0)
}

/// The lines of the complaints event log.
fn events(dir: &std::path::Path) -> Vec<serde_json::Value> {
    support::events(dir, "complaints")
}

fn kept_aside(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    match std::fs::read_dir(dir.join("spool/complaints/malformed")) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test]
async fn a_report_of_a_delivered_message_stops_every_stream_of_that_account() {
    let (mx, relay, dir) = start("", "", "").await.into_parts();
    let smtp = relay.smtp_addrs[0];
    support::grant(&relay, "news", "weekly", "reader@example.net");
    support::grant(&relay, "news", "deals", "reader@example.net");
    support::grant(&relay, "news", "deals", "other@example.net");
    let arf_before = metric(
        relay.admin_addr.unwrap(),
        "optin_complaints_received_total{via=\"arf\"}",
    )
    .await;

    support::send_ok(
        smtp,
        "bounce@news.example",
        &["reader@example.net"],
        &marketing("weekly", "reader@example.net"),
    )
    .await;
    let delivered = mx.wait_for(1, WAIT).await[0].text();
    assert!(delivered.contains("List-Unsubscribe: "), "{delivered}");

    // The provider's report, with the delivered copy attached as message/rfc822.
    let reply = report(
        smtp,
        &arf(
            &feedback("reader@example.net"),
            "message/rfc822",
            &delivered,
        ),
    )
    .await;
    assert_eq!(reply, "250 2.0.0 OK feedback report received");
    assert_eq!(
        complained(&relay, "news", "reader@example.net"),
        (true, false)
    );
    assert_eq!(relay.account_counts.get("news").complaints, 1);
    let lines = events(dir.path());
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["address"], "reader@example.net");
    assert_eq!(lines[0]["account"], "news");
    assert_eq!(lines[0]["list"], "weekly");
    assert_eq!(lines[0]["scope"], "account");
    assert_eq!(lines[0]["via"], "arf");
    assert_eq!(lines[0]["feedback_type"], "abuse");
    assert!(lines[0]["time_ms"].as_u64().unwrap() > 0);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("spool/events/complaints.jsonl"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let arf_after = metric(
        relay.admin_addr.unwrap(),
        "optin_complaints_received_total{via=\"arf\"}",
    )
    .await;
    assert!(arf_after >= arf_before + 1.0, "{arf_before} → {arf_after}");
    assert!(kept_aside(dir.path()).is_empty());

    // Marketing from any list, and transactional mail, are refused at RCPT now.
    let mut c = Client::connect_from(smtp, "127.0.0.1").await;
    c.say("EHLO app.news.example").await;
    for body in [
        marketing("deals", "reader@example.net"),
        transactional("hello@news.example", "reader@example.net"),
    ] {
        c.expect("MAIL FROM:<bounce@news.example>", "250").await;
        assert_eq!(
            c.say("RCPT TO:<reader@example.net>").await,
            "550 5.7.1 <reader@example.net> is suppressed after a spam complaint"
        );
        // The same message still reaches someone else.
        c.expect("RCPT TO:<other@example.net>", "250").await;
        c.expect("DATA", "354").await;
        let reply = c.say(&format!("{body}.")).await;
        assert!(reply.starts_with("250"), "{reply}");
    }
    c.say("QUIT").await;
    let got = mx.wait_for(3, WAIT).await;
    assert!(
        got[1..].iter().all(|d| d.rcpt_to == ["other@example.net"]),
        "{got:#?}"
    );
    // The complaint is the news account's: another account may still write.
    let mut shop = Client::connect_from(smtp, "127.0.0.2").await;
    shop.say("EHLO shop").await;
    shop.say("MAIL FROM:<orders@shop.example>").await;
    shop.expect("RCPT TO:<reader@example.net>", "250").await;
    shop.say("QUIT").await;
    relay.shutdown().await;
}

#[tokio::test]
async fn a_header_only_report_is_tied_back_by_its_token() {
    let (mx, relay, dir) = start("", "", "").await.into_parts();
    let smtp = relay.smtp_addrs[0];
    support::grant(&relay, "news", "weekly", "second@example.net");

    // Marketing, reported with its header section only (text/rfc822-headers) and the
    // recipient redacted: the token alone ties it back.
    support::send_ok(
        smtp,
        "bounce@news.example",
        &["second@example.net"],
        &marketing("weekly", "second@example.net"),
    )
    .await;
    let delivered = mx.wait_for(1, WAIT).await[0].text();
    let reply = report(
        smtp,
        &arf(
            "Feedback-Type: abuse\r\nUser-Agent: ISP-FBL/2.1\r\nVersion: 1\r\nOriginal-Rcpt-To: redacted",
            "text/rfc822-headers",
            header_section(&delivered),
        ),
    )
    .await;
    assert_eq!(reply, "250 2.0.0 OK feedback report received");
    assert_eq!(
        complained(&relay, "news", "second@example.net"),
        (true, false)
    );
    assert_eq!(relay.account_counts.get("news").complaints, 1);
    assert!(kept_aside(dir.path()).is_empty());
    relay.shutdown().await;
}

/// The DKIM key of the feedback loop `fbl.isp.example` (selector `fbl`), and its record.
fn reporter_key(domain: &str) -> (optin_relay::dkim::DkimKey, String) {
    let pem = format!(
        "{}/tests/fixtures/dkim/ed25519-pkcs8.pem",
        env!("CARGO_MANIFEST_DIR")
    );
    let key = optin_relay::dkim::DkimKey::from_pem_file(domain, "fbl", pem.as_ref()).unwrap();
    let record = format!("fbl._domainkey.{domain}. TXT {}", key.dns_record());
    (key, record)
}

/// `report` with the reporter's DKIM-Signature on top.
fn signed(key: &optin_relay::dkim::DkimKey, report: &str) -> String {
    let signature = key.sign(report.as_bytes()).unwrap();
    format!(
        "{}{report}",
        signature.trim_end_matches("\r\n").to_string() + "\r\n"
    )
}

#[tokio::test]
async fn a_tokenless_report_counts_only_when_an_allowed_reporter_signed_it() {
    let (isp, isp_record) = reporter_key("fbl.isp.example");
    let (stranger, stranger_record) = reporter_key("forger.example");
    let dns = support::FakeDns::start(&format!("{isp_record}\n{stranger_record}\n")).await;
    let (mx, relay, dir) = start(
        &format!("dns = \"{}\"", dns.addr),
        "",
        "[complaints]\nreporters = [\"fbl.isp.example\"]\n",
    )
    .await
    .into_parts();
    let smtp = relay.smtp_addrs[0];

    // Transactional mail carries no token.
    support::send_ok(
        smtp,
        "bounce@news.example",
        &["buyer@example.org"],
        &transactional("hello@news.example", "buyer@example.org"),
    )
    .await;
    let receipt = mx.wait_for(1, WAIT).await[0].text();
    assert!(!receipt.contains("List-Unsubscribe"), "{receipt}");
    let complaint = arf(
        &feedback("<Buyer@Example.ORG>"),
        "text/rfc822-headers",
        header_section(&receipt),
    );

    // Anyone can write that report: unsigned, or signed by a domain nobody allowed, it is
    // kept aside and changes nothing — however often it comes.
    for forged in [
        complaint.clone(),
        complaint.clone(),
        signed(&stranger, &complaint),
    ] {
        assert_eq!(
            report(smtp, &forged).await,
            "250 2.0.0 OK feedback report received"
        );
    }
    assert_eq!(
        complained(&relay, "news", "buyer@example.org"),
        (false, false)
    );
    assert_eq!(relay.account_counts.get("news").complaints, 0);
    assert_eq!(kept_aside(dir.path()).len(), 3);
    assert!(events(dir.path()).is_empty());

    // Signed by the allow-listed feedback loop: Original-Rcpt-To names the recipient and
    // the From domain the account.
    assert_eq!(
        report(smtp, &signed(&isp, &complaint)).await,
        "250 2.0.0 OK feedback report received"
    );
    assert_eq!(
        complained(&relay, "news", "buyer@example.org"),
        (true, false)
    );
    assert_eq!(relay.account_counts.get("news").complaints, 1);

    // Even a genuine reporter's report about a sender no account has suppresses nothing,
    // and never globally.
    let unknown = arf(
        &feedback("stranger@example.com"),
        "text/rfc822-headers",
        "From: <x@unknown.example>\r\nSubject: hi\r\n",
    );
    assert_eq!(
        report(smtp, &signed(&isp, &unknown)).await,
        "250 2.0.0 OK feedback report received"
    );
    assert_eq!(
        complained(&relay, "news", "stranger@example.com"),
        (false, false)
    );
    let lines = events(dir.path());
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["scope"], "account");
    assert_eq!(lines[0]["list"], serde_json::Value::Null);
    assert_eq!(kept_aside(dir.path()).len(), 4);
    relay.shutdown().await;
}

#[tokio::test]
async fn mail_to_the_relays_own_addresses_has_its_own_small_limits() {
    let Running { relay, dir, .. } = start(
        "",
        "max_mail_size = \"2KiB\"",
        "[complaints]\nmax_report_size = \"8KiB\"\nmax_reports_per_ip = 3\n\
         [bounces]\nmax_size = \"4KiB\"\n",
    )
    .await;
    let smtp = relay.smtp_addrs[0];
    // Declared sizes are refused before any data: at MAIL over the larger of the two, at
    // RCPT over the one that applies.
    let mut c = Client::connect_from(smtp, "127.0.0.9").await;
    c.say("EHLO feedback.isp.example").await;
    assert_eq!(
        c.say("MAIL FROM:<fbl@isp.example> SIZE=25000000").await,
        "552 5.3.4 Message exceeds the size limit of 8192 octets"
    );
    c.expect("MAIL FROM:<fbl@isp.example> SIZE=4000", "250")
        .await;
    c.expect("RCPT TO:<fbl@relay.test>", "250").await;
    c.expect("RSET", "250").await;
    // Undeclared: the data itself is cut off at the limit, nothing is kept.
    c.expect("MAIL FROM:<fbl@isp.example>", "250").await;
    c.expect("RCPT TO:<fbl@relay.test>", "250").await;
    c.expect("DATA", "354").await;
    let big = format!(
        "Subject: x\r\n\r\n{}",
        "0123456789012345678901234567890123456789\r\n".repeat(500)
    );
    assert_eq!(
        c.say(&format!("{big}.")).await,
        "552 5.3.4 Message exceeds the size limit of 8192 octets"
    );
    // A third report in this hour is still taken; the fourth must wait.
    c.expect("MAIL FROM:<fbl@isp.example>", "250").await;
    let reply = c.say("RCPT TO:<fbl@relay.test>").await;
    assert!(reply.starts_with("250"), "{reply}");
    c.expect("RSET", "250").await;
    c.expect("MAIL FROM:<fbl@isp.example>", "250").await;
    assert_eq!(
        c.say("RCPT TO:<fbl@relay.test>").await,
        "450 4.7.1 Too many reports from your address, try again later"
    );
    c.say("QUIT").await;
    assert!(kept_aside(dir.path()).is_empty());
    assert!(
        metric(
            relay.admin_addr.unwrap(),
            "optin_untrusted_refusals_total{reason=\"report_rate\"}"
        )
        .await
            >= 1.0
    );
    assert!(
        metric(
            relay.admin_addr.unwrap(),
            "optin_untrusted_refusals_total{reason=\"too_big\"}"
        )
        .await
            >= 2.0
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn unusable_reports_are_kept_aside_and_change_nothing() {
    let (mx, relay, dir) = start("", "", "").await.into_parts();
    let smtp = relay.smtp_addrs[0];
    let before = metric(
        relay.admin_addr.unwrap(),
        "optin_complaint_reports_malformed_total",
    )
    .await;
    let unusable = [
        // A person writing to the feedback address.
        "From: <angry@example.net>\r\nSubject: STOP\r\n\r\nStop mailing victim@example.net!\r\n".to_string(),
        // A report without its feedback part.
        "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=feedback-report; boundary=\"x\"\r\n\r\n\
         --x\r\nContent-Type: text/plain\r\n\r\nOriginal-Rcpt-To: victim@example.net\r\n--x--\r\n"
            .to_string(),
        // Garbage MIME: a broken header, an unterminated multipart, nonsense base64.
        "Content-Type: multipart/report;;; boundary=\r\nContent-Transfer-Encoding: base64\r\n\r\n\
         --\r\n!!!=== not base64 ===!!!\r\n--\r\n"
            .to_string(),
        // Truncated after the feedback type: nothing to tie it to.
        "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=feedback-report; boundary=\"y\"\r\n\r\n\
         --y\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Ag"
            .to_string(),
    ];
    for body in &unusable {
        let reply = report(smtp, body).await;
        assert_eq!(reply, "250 2.0.0 OK feedback report received", "{body}");
    }
    let kept = kept_aside(dir.path());
    assert_eq!(kept.len(), unusable.len(), "{kept:?}");
    for file in &kept {
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(name.ends_with(".eml") && name.contains('-'), "{name}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
    let mut contents: Vec<String> = kept
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    contents.sort();
    assert!(contents.iter().any(|c| c.contains("Stop mailing victim")));
    // Nothing suppressed, nothing counted, nothing relayed.
    for address in ["victim@example.net", "angry@example.net"] {
        assert_eq!(complained(&relay, "news", address), (false, false));
    }
    assert_eq!(relay.account_counts.get("news").complaints, 0);
    assert!(events(dir.path()).is_empty());
    let after = metric(
        relay.admin_addr.unwrap(),
        "optin_complaint_reports_malformed_total",
    )
    .await;
    assert!(
        after >= before + unusable.len() as f64,
        "{before} → {after}"
    );
    // The relay goes on as before.
    support::send_ok(
        smtp,
        "bounce@news.example",
        &["victim@example.net"],
        &transactional("hello@news.example", "victim@example.net"),
    )
    .await;
    assert_eq!(mx.wait_for(1, WAIT).await.len(), 1);
    relay.shutdown().await;
}

#[tokio::test]
async fn the_feedback_address_opens_no_relay() {
    let (mx, relay, dir) = start("", "", "").await.into_parts();
    let smtp = relay.smtp_addrs[0];
    let mut c = Client::connect_from(smtp, "127.0.0.9").await;
    c.say("EHLO somewhere.example").await;
    c.expect("MAIL FROM:<x@somewhere.example>", "250").await;
    for other in [
        "victim@example.org",
        "abuse@relay.test",
        "fbl2@relay.test",
        "fbl+x@relay.test",
        "fbl@other.test",
        "postmaster@other.test",
    ] {
        let reply = c.say(&format!("RCPT TO:<{other}>")).await;
        assert!(reply.starts_with("554 5.7.1"), "{other}: {reply}");
    }
    c.expect("RCPT TO:<FBL@Relay.Test>", "250").await;
    c.expect("DATA", "354").await;
    let reply = c
        .say("To: <victim@example.org>\r\nSubject: relay me\r\n\r\nhi\r\n.")
        .await;
    assert_eq!(reply, "250 2.0.0 OK feedback report received");
    c.say("QUIT").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(mx.delivered().is_empty(), "nothing is relayed");
    assert_eq!(kept_aside(dir.path()).len(), 1);
    relay.shutdown().await;

    // With complaints turned off, the feedback address is as closed as any other.
    let Running {
        relay, dir: _dir, ..
    } = start("", "", "[complaints]\nenabled = false\n").await;
    let mut c = Client::connect_from(relay.smtp_addrs[0], "127.0.0.9").await;
    c.say("EHLO somewhere.example").await;
    c.say("MAIL FROM:<x@somewhere.example>").await;
    let reply = c.say("RCPT TO:<fbl@relay.test>").await;
    assert!(reply.starts_with("554 5.7.1"), "{reply}");
    let (status, _) = http(relay.http_addr.unwrap(), "GET", "/complaint/x", "").await;
    assert_eq!(status, 404);
    relay.shutdown().await;
}

#[tokio::test]
async fn the_report_form_records_a_complaint_by_token() {
    let (mx, relay, dir) = start("", "", "").await.into_parts();
    let smtp = relay.smtp_addrs[0];
    let web = relay.http_addr.unwrap();
    support::grant(&relay, "news", "weekly", "reader@example.net");
    let form_before = metric(
        relay.admin_addr.unwrap(),
        "optin_complaints_received_total{via=\"form\"}",
    )
    .await;
    support::send_ok(
        smtp,
        "bounce@news.example",
        &["reader@example.net"],
        &marketing("weekly", "reader@example.net"),
    )
    .await;
    let token = token_of(&mx.wait_for(1, WAIT).await[0].text());

    let (status, page) = form(web, "GET", &token, "").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Report this message as unwanted"), "{page}");
    assert!(
        page.contains("The Weekly") && page.contains("Example News"),
        "{page}"
    );
    assert!(
        page.contains(&format!("action=\"/complaint/{token}\"")),
        "{page}"
    );
    assert!(
        page.contains("name=\"report\" value=\"unwanted\""),
        "{page}"
    );
    assert!(
        !page.contains("reader@example.net"),
        "the page names no address"
    );

    // Forged and junk tokens: 404, whatever the method.
    let mut forged = token.clone().into_bytes();
    forged[10] = if forged[10] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    for (method, t) in [
        ("GET", forged.as_str()),
        ("POST", forged.as_str()),
        ("GET", "x"),
    ] {
        let (status, body) = form(web, method, t, "report=unwanted").await;
        assert_eq!(status, 404, "{method} {t}");
        assert!(body.contains("not valid"), "{body}");
    }
    // A POST that is not the form's button changes nothing.
    let (status, _) = form(web, "POST", &token, "").await;
    assert_eq!(status, 400);
    assert_eq!(
        complained(&relay, "news", "reader@example.net"),
        (false, false)
    );

    let (status, body) = form(web, "POST", &token, "report=unwanted").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Thank you"), "{body}");
    assert_eq!(
        complained(&relay, "news", "reader@example.net"),
        (true, false)
    );
    assert_eq!(relay.account_counts.get("news").complaints, 1);
    let lines = events(dir.path());
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["via"], "form");
    assert_eq!(lines[0]["list"], "weekly");
    let form_after = metric(
        relay.admin_addr.unwrap(),
        "optin_complaints_received_total{via=\"form\"}",
    )
    .await;
    assert!(
        form_after >= form_before + 1.0,
        "{form_before} → {form_after}"
    );

    // A second click: harmless, not counted twice.
    let (status, _) = form(web, "POST", &token, "report=unwanted").await;
    assert_eq!(status, 200);
    assert_eq!(relay.account_counts.get("news").complaints, 1);

    let mut c = Client::connect_from(smtp, "127.0.0.1").await;
    c.say("EHLO app.news.example").await;
    c.say("MAIL FROM:<bounce@news.example>").await;
    let reply = c.say("RCPT TO:<reader@example.net>").await;
    assert!(
        reply.contains("is suppressed after a spam complaint"),
        "{reply}"
    );
    c.say("QUIT").await;
    relay.shutdown().await;
}
