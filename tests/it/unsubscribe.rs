//! Unsubscribe links end to end: a marketing message arrives with one-click headers; a
//! one-click POST (RFC 8058) or the page's buttons unsubscribe; the next message to that
//! address is refused.

use std::time::Duration;

use crate::support::{
    self, Account, Client, MxOptions, Running, SUBSCRIBED, http, journal_records, token_of,
};

const WAIT: Duration = Duration::from_secs(20);

/// `news` (127.0.0.1) sends marketing to two lists.
fn policy() -> String {
    let news = Account::news()
        .description("internal: tenant 42")
        .set("display_name", "\"Example News\"")
        .set("feedback_id", support::policy::string("optin"))
        .list_with(
            "weekly",
            &[("name", "The Weekly"), ("consent_statement", SUBSCRIBED)],
        )
        .list("deals", "You asked for {list}.");
    support::policy(&[news], "")
}

/// A relay delivering to a fake MX; `config` follows the smart host.
async fn start(config: &str) -> Running {
    Running::start(MxOptions::default(), config, &policy()).await
}

/// A request for the unsubscribe page of `token` on the public listener `web`.
async fn link(web: std::net::SocketAddr, method: &str, token: &str, body: &str) -> (u16, String) {
    http(web, method, &format!("/u/{token}"), body).await
}

fn consent(relay: &optin_relay::server::Relay, list: &str, addr: &str) {
    support::grant(relay, "news", list, addr);
}

/// Sends `to` a marketing message of `list` from news; the reply to the end of DATA.
async fn send(relay: &optin_relay::server::Relay, list: &str, to: &str) -> String {
    support::raw_send(
        relay.smtp_addrs[0],
        "bounce@news.example",
        &[to],
        &marketing(list, to),
    )
    .await
}

fn marketing(list: &str, to: &str) -> String {
    format!(
        "From: News <hello@news.example>\r\nTo: <{to}>\r\nSubject: This week\r\nX-Optin-List: {list}\r\nList-Unsubscribe: <mailto:sender-own@news.example>\r\n\r\nHello.\r\n"
    )
}

#[tokio::test]
async fn one_click_unsubscribe_stops_the_next_message() {
    let (mx, relay, dir) = start("[http]\nlisten = \"127.0.0.1:0\"\n[unsubscribe]\npublic_url = \"https://unsub.example\"\nmail_domain = \"relay.test\"\n").await.into_parts();
    let web = relay.http_addr.unwrap();
    consent(&relay, "weekly", "reader@example.net");
    consent(&relay, "deals", "reader@example.net");

    let reply = send(&relay, "weekly", "reader@example.net").await;
    assert!(reply.starts_with("250"), "{reply}");
    let got = mx.wait_for(1, WAIT).await;
    let text = got[0].text();
    let unfolded = text.replace("\r\n ", " ");
    let token = token_of(&text);
    assert!(
        unfolded.contains(&format!(
            "List-Unsubscribe: <https://unsub.example/u/{token}>, <mailto:unsubscribe+{token}@relay.test>\r\n"
        )),
        "{text}"
    );
    assert!(text.contains("\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"));
    assert!(text.contains("\r\nList-Id: \"The Weekly\" <weekly.news.relay.test>\r\n"));
    assert!(text.contains("\r\nFeedback-ID: none:weekly:news:optin\r\n"));
    assert!(text.contains("\r\nMessage-ID: <") && text.contains("\r\nDate: "));
    assert!(
        !text.contains("sender-own@") && !text.contains("X-Optin"),
        "{text}"
    );
    assert!(
        !text.contains("reader@example.net>,"),
        "the address is not in the link"
    );

    // The page shows the list and two buttons; a bad token gets a 400 page.
    let (status, page) = link(web, "GET", &token, "").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("The Weekly") && page.contains("Example News"),
        "{page}"
    );
    assert!(
        !page.contains("tenant 42"),
        "the description is the operator's: {page}"
    );
    assert!(page.contains("name=\"scope\" value=\"account\""));
    let mut forged = token.clone().into_bytes();
    forged[10] = if forged[10] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    for (m, p) in [
        ("GET", &forged),
        ("POST", &forged),
        ("GET", &"x".to_string()),
    ] {
        let (status, body) = link(web, m, p, "List-Unsubscribe=One-Click").await;
        assert_eq!(status, 400, "{m} {p}");
        assert!(body.contains("not valid") && !body.to_lowercase().contains("panic"));
    }

    // RFC 8058 one-click, twice (harmless).
    for _ in 0..2 {
        let (status, body) = link(web, "POST", &token, "List-Unsubscribe=One-Click").await;
        assert_eq!(status, 200, "{body}");
    }
    // The next message to that list is refused; another list still works.
    let reply = send(&relay, "weekly", "reader@example.net").await;
    assert!(
        reply.contains("550 5.7.1") && reply.contains("has unsubscribed from this list"),
        "{reply}"
    );
    let reply = send(&relay, "deals", "reader@example.net").await;
    assert!(reply.starts_with("250"), "{reply}");
    let got = mx.wait_for(2, WAIT).await;
    let deals_token = token_of(&got[1].text());

    // The page's second button: everything this sender sends as marketing.
    let (status, _) = link(
        web,
        "POST",
        &deals_token,
        "List-Unsubscribe=One-Click&scope=account",
    )
    .await;
    assert_eq!(status, 200);
    let reply = send(&relay, "deals", "reader@example.net").await;
    assert!(
        reply.contains("unsubscribed from all mail of this sender"),
        "{reply}"
    );

    // The account's event log has both, with the address; the second click of the same
    // link changed nothing and is not logged again.
    let events =
        std::fs::read_to_string(dir.path().join("spool/events/unsubscribes.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = events
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{events}");
    assert_eq!(lines[0]["address"], "reader@example.net");
    assert_eq!(lines[0]["list"], "weekly");
    assert_eq!(lines[1]["scope"], "account");
    relay.shutdown().await;
}

#[tokio::test]
async fn sender_identity_is_checked_and_transactional_mail_has_no_unsubscribe_headers() {
    let (mx, relay, _dir) = start("").await.into_parts();
    let smtp = relay.smtp_addrs[0];
    let reply = support::raw_send(
        smtp,
        "bounce@news.example",
        &["x@example.net"],
        "From: <hello@elsewhere.example>\r\nX-Optin-Stream: transactional\r\nSubject: x\r\n\r\nx\r\n",
    )
    .await;
    assert_eq!(
        reply,
        "550 5.7.1 The From domain elsewhere.example is not one of this account's domains"
    );
    let reply = support::raw_send(
        smtp,
        "bounce@other.example",
        &["x@example.net"],
        "From: <hello@news.example>\r\nX-Optin-Stream: transactional\r\nSubject: x\r\n\r\nx\r\n",
    )
    .await;
    assert!(
        reply.contains("envelope sender domain other.example"),
        "{reply}"
    );
    support::send_ok(
        smtp,
        "bounce@mail.news.example",
        &["x@example.net"],
        "From: <hello@news.example>\r\nX-Optin-Stream: transactional\r\nList-Unsubscribe: <mailto:own@news.example>\r\nSubject: x\r\n\r\nx\r\n",
    ).await;
    let got = mx.wait_for(1, WAIT).await;
    let text = got[0].text();
    assert!(
        text.contains("List-Unsubscribe: <mailto:own@news.example>"),
        "{text}"
    );
    assert!(
        !text.contains("List-Unsubscribe-Post") && !text.contains("List-Id"),
        "{text}"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn mail_to_the_unsubscribe_address_unsubscribes_and_relays_nothing_else() {
    let (mx, relay, dir) = start("[unsubscribe]\nmail_domain = \"relay.test\"\n")
        .await
        .into_parts();
    let smtp = relay.smtp_addrs[0];
    consent(&relay, "weekly", "reader@example.net");
    let reply = send(&relay, "weekly", "reader@example.net").await;
    assert!(reply.starts_with("250"), "{reply}");
    let text = mx.wait_for(1, WAIT).await[0].text().replace("\r\n ", " ");
    let start = text.find("<mailto:").unwrap() + "<mailto:".len();
    let mailto = &text[start..start + text[start..].find('>').unwrap()];
    assert!(mailto.starts_with("unsubscribe+") && mailto.ends_with("@relay.test"));

    // A client at 127.0.0.9, which no account knows.
    let mut c = Client::connect_from(smtp, "127.0.0.9").await;
    c.say("EHLO mailbox-provider.example").await;
    c.expect("MAIL FROM:<reader@example.net>", "250").await;
    // Nothing but the unsubscribe addresses: no open relay.
    c.expect("RCPT TO:<victim@example.org>", "554 5.7.1").await;
    c.expect("RCPT TO:<unsubscribe+forged@relay.test>", "550 5.1.1")
        .await;
    c.expect(&format!("RCPT TO:<{mailto}>"), "250").await;
    // A stranger's unsubscribe mail is small (64 KiB by default): more is refused, and
    // records nothing.
    c.expect("DATA", "354").await;
    let big = "0123456789012345678901234567890123456789\r\n".repeat(2000);
    assert_eq!(
        c.say(&format!("Subject: unsubscribe\r\n\r\n{big}.")).await,
        "552 5.3.4 Message exceeds the size limit of 65536 octets"
    );
    assert!(
        !dir.path().join("spool/events/unsubscribes.jsonl").exists(),
        "nothing recorded"
    );
    assert!(
        c.say("MAIL FROM:<reader@example.net> SIZE=100000")
            .await
            .starts_with("250"),
        "a report may still be that large"
    );
    assert_eq!(
        c.say(&format!("RCPT TO:<{mailto}>")).await,
        "552 5.3.4 Message exceeds the size limit of 65536 octets"
    );
    c.say("RSET").await;
    c.say("MAIL FROM:<reader@example.net>").await;
    c.say(&format!("RCPT TO:<{mailto}>")).await;
    c.expect("DATA", "354").await;
    assert_eq!(
        c.say("Subject: unsubscribe\r\n\r\nplease\r\n.").await,
        "250 2.0.0 OK unsubscribe recorded"
    );
    let reply = send(&relay, "weekly", "reader@example.net").await;
    assert!(reply.contains("has unsubscribed from this list"), "{reply}");
    // Nothing was relayed or queued for the stranger.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(mx.delivered().len(), 1);
    let events =
        std::fs::read_to_string(dir.path().join("spool/events/unsubscribes.jsonl")).unwrap();
    assert!(events.contains("\"via\":\"mail\""), "{events}");
    relay.shutdown().await;
}

/// A mailbox provider retrying its one-click POST, or a reader clicking twice: the second
/// and later POSTs for an address already unsubscribed write nothing — no journal record,
/// no event line — and still answer 200.
#[tokio::test]
async fn a_repeated_one_click_writes_nothing() {
    let (mx, relay, dir) = start(
        "[http]\nlisten = \"127.0.0.1:0\"\n\
             [unsubscribe]\nmail_domain = \"relay.test\"\n",
    )
    .await
    .into_parts();
    consent(&relay, "weekly", "twice@example.net");
    let reply = send(&relay, "weekly", "twice@example.net").await;
    assert!(reply.starts_with("250"), "{reply}");
    let token = token_of(&mx.wait_for(1, WAIT).await[0].text());
    let web = relay.http_addr.unwrap();
    let events = || {
        std::fs::read_to_string(dir.path().join("spool/events/unsubscribes.jsonl"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    let click = async || {
        let (status, body) = link(web, "POST", &token, "List-Unsubscribe=One-Click").await;
        assert_eq!(status, 200, "{body}");
    };

    let records = journal_records(dir.path());
    click().await;
    assert_eq!(
        journal_records(dir.path()),
        records + 1,
        "the first is recorded"
    );
    assert_eq!(events(), 1);
    for _ in 0..3 {
        click().await;
    }
    assert_eq!(
        journal_records(dir.path()),
        records + 1,
        "repeats write no journal record"
    );
    // Metrics, webhooks and the account's health are told on the same path as the event
    // line (after the journal write), so none of them hears of a repeat either; the
    // counter itself is shared with the other tests of this binary, which run at once.
    assert_eq!(events(), 1);
    // The account-wide button is another change, recorded once too.
    for _ in 0..2 {
        let (status, _) = link(
            web,
            "POST",
            &token,
            "List-Unsubscribe=One-Click&scope=account",
        )
        .await;
        assert_eq!(status, 200);
    }
    assert_eq!(journal_records(dir.path()), records + 2);
    assert_eq!(events(), 2);
    relay.shutdown().await;
}
