//! The Prometheus exposition of a running relay: known traffic over real sockets, then
//! exact counts in `GET /metrics`, a HELP line for every metric, and no address in any
//! label.
//!
//! The recorder is global to the process, so the test runs alone in a process of its own
//! ([`crate::alone!`]) and compares the exposition after the traffic with the one before
//! it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use optin_relay::consent::{CONSENT, Kind, Reason, Scope};

use crate::support::{self, Account, Client, MxOptions, Running, SIGNED_UP, record, settle};

const WAIT: Duration = Duration::from_secs(20);

/// `shop` (127.0.0.1) sends both streams, decided at the end of DATA; `news` (127.0.0.2)
/// sends marketing to its one list, decided at RCPT.
fn policy() -> String {
    let shop = Account::shop()
        .domains(&["sender.example"])
        .list("deals", SIGNED_UP);
    support::policy(&[shop, Account::newsletter()], "")
}

/// A session from `from_ip` (a loopback address) that was greeted with 220.
async fn connect(relay: SocketAddr, from_ip: &str) -> Client {
    let c = Client::connect_from(relay, from_ip).await;
    assert!(c.greeting.starts_with("220"));
    c
}

/// `GET path`, which must be answered 200: the body.
async fn http_get(addr: SocketAddr, path: &str) -> String {
    let (status, body) = support::http(addr, "GET", path, "").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Every sample of an exposition, keyed by its series as written (`name{labels}`).
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("a sample line");
            (series.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

/// The series of `name` with exactly `labels` (as rendered: `a="x",b="y"`, any order).
fn value(samples: &HashMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples.iter().find_map(|(series, v)| {
        let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
        let got: Vec<&str> = rest
            .trim_end_matches('}')
            .split(',')
            .filter(|s| !s.is_empty())
            .collect();
        let want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        (n == name && got.len() == want.len() && want.iter().all(|w| got.contains(&w.as_str())))
            .then_some(*v)
    })
}

/// A series by its name and labels, and how much it should have grown.
type Delta<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

/// Checks every counter below went up by exactly the given amount between two expositions.
fn assert_deltas(before: &HashMap<String, f64>, after: &HashMap<String, f64>, expected: &[Delta]) {
    let mut wrong = Vec::new();
    for (name, labels, want) in expected {
        let a = value(after, name, labels);
        let b = value(before, name, labels).unwrap_or(0.0);
        if a.map(|a| a - b) != Some(*want) {
            wrong.push(format!(
                "{name}{labels:?}: before {b}, after {a:?}, expected +{want}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn the_exposition_counts_the_traffic_and_names_no_one() {
    crate::alone!("the_exposition_counts_the_traffic_and_names_no_one");
    let admin = "[admin]\nlisten = \"127.0.0.1:0\"\n";
    let (mx, relay, _dir) = Running::start(MxOptions::default(), admin, &policy())
        .await
        .into_parts();
    let http = relay.admin_addr.expect("the operator listener");
    let smtp = relay.smtp_addrs[0];
    let lists = &relay.lists;
    let weekly = Scope::List("news", "weekly");
    record(lists, Kind::Consent, weekly, "reader@example.net", CONSENT);
    let unsubscribe = Reason::Unsubscribe.bit();
    record(
        lists,
        Kind::Suppression,
        weekly,
        "gone@example.net",
        unsubscribe,
    );
    let deals = Scope::List("shop", "deals");
    record(lists, Kind::Consent, deals, "fan@example.net", CONSENT);

    let first = http_get(http, "/metrics").await;
    // Series with fixed labels are there, at zero, before any traffic.
    for series in [
        "optin_smtp_commands_total{verb=\"STARTTLS\"}",
        "optin_policy_verdicts_total{reason=\"frozen\"}",
        "optin_policy_verdicts_total{reason=\"content\"}",
        "optin_messages_refused_total{reason=\"mail_loop\"}",
        "optin_policy_reloads_total{result=\"refused\"}",
        "optin_unsubscribes_total{scope=\"account\",via=\"http\"}",
    ] {
        assert!(
            first.contains(&format!("{series} 0\n")),
            "{series}\n{first}"
        );
    }
    let before = samples(&first);

    // 1. Transactional mail accepted, one recipient refused for its syntax, an unknown
    //    command, verbs in lower case.
    let mut a = connect(smtp, "127.0.0.1").await;
    a.expect("EHLO client.test", "250").await;
    a.expect("MAIL FROM:<shop@sender.example>", "250").await;
    a.expect("RCPT TO:<b@example.net>", "250").await;
    a.expect("RCPT TO:<not an address>", "501").await;
    a.expect("DATA", "354").await;
    a.expect(
        "From: <shop@sender.example>\r\nSubject: receipt\r\n\r\nThanks.\r\n.",
        "250",
    )
    .await;
    a.expect("XYZZY b@example.net", "500").await;
    a.expect("rset", "250").await;
    a.expect("noop", "250").await;
    a.quit().await;

    // 2. news: marketing decided at RCPT: one consented, one never asked, one unsubscribed.
    let mut b = connect(smtp, "127.0.0.2").await;
    b.expect("EHLO client.test", "250").await;
    b.expect("MAIL FROM:<news@sender.example>", "250").await;
    b.expect("RCPT TO:<reader@example.net>", "250").await;
    b.expect("RCPT TO:<stranger@example.net>", "550").await;
    b.expect("RCPT TO:<gone@example.net>", "550").await;
    b.expect("DATA", "354").await;
    b.expect(
        "From: <news@sender.example>\r\nSubject: weekly\r\n\r\nNews.\r\n.",
        "250",
    )
    .await;
    b.quit().await;

    // 3. shop: marketing decided at the end of DATA (one consented, one not: a DSN to the
    //    sender), then a message refused for a list the account does not have.
    let mut c = connect(smtp, "127.0.0.1").await;
    c.expect("EHLO client.test", "250").await;
    c.expect("MAIL FROM:<shop@sender.example>", "250").await;
    c.expect("RCPT TO:<fan@example.net>", "250").await;
    c.expect("RCPT TO:<stranger@example.net>", "250").await;
    c.expect("DATA", "354").await;
    c.expect(
        "From: <shop@sender.example>\r\nSubject: deals\r\nX-Optin-Stream: marketing\r\n\
         X-Optin-List: deals\r\n\r\nDeals.\r\n.",
        "250",
    )
    .await;
    c.expect("MAIL FROM:<shop@sender.example>", "250").await;
    c.expect("RCPT TO:<fan@example.net>", "250").await;
    c.expect("DATA", "354").await;
    c.expect(
        "From: <shop@sender.example>\r\nSubject: x\r\nX-Optin-List: nope\r\n\r\nX.\r\n.",
        "550",
    )
    .await;
    c.quit().await;

    // Three messages and the DSN reach the MX; wait for their outcomes to be counted too.
    mx.wait_for(4, WAIT).await;
    let exposition = async || {
        let text = http_get(http, "/metrics").await;
        let after = samples(&text);
        (text, after)
    };
    let delivered = |s: &HashMap<String, f64>| {
        value(
            s,
            "optin_delivery_recipients_total",
            &[("result", "delivered")],
        )
        .unwrap_or(0.0)
    };
    let counted = |(_, after): &(String, HashMap<String, f64>)| {
        let active = value(after, "optin_smtp_sessions_active", &[]);
        delivered(after) - delivered(&before) >= 4.0 && active == Some(0.0)
    };
    let (text, after) = settle(WAIT, exposition, counted).await;

    let verb = |v: &'static str| [("verb", v)];
    let reason = |r: &'static str| [("reason", r)];
    let class = |c: &'static str| [("class", c)];
    assert_deltas(
        &before,
        &after,
        &[
            ("optin_smtp_connections_total", &[("kind", "plain")], 3.0),
            ("optin_smtp_connections_total", &[("kind", "tls")], 0.0),
            ("optin_smtp_commands_total", &verb("EHLO"), 3.0),
            ("optin_smtp_commands_total", &verb("HELO"), 0.0),
            ("optin_smtp_commands_total", &verb("MAIL"), 4.0),
            ("optin_smtp_commands_total", &verb("RCPT"), 8.0),
            ("optin_smtp_commands_total", &verb("DATA"), 4.0),
            ("optin_smtp_commands_total", &verb("RSET"), 1.0),
            ("optin_smtp_commands_total", &verb("NOOP"), 1.0),
            ("optin_smtp_commands_total", &verb("QUIT"), 3.0),
            ("optin_smtp_commands_total", &verb("unknown"), 1.0),
            ("optin_smtp_commands_total", &verb("STARTTLS"), 0.0),
            ("optin_smtp_commands_total", &verb("AUTH"), 0.0),
            // 220s, 250s, 221s / 354s / 501, 500, 550 x3.
            ("optin_smtp_replies_total", &class("2xx"), 23.0),
            ("optin_smtp_replies_total", &class("3xx"), 4.0),
            ("optin_smtp_replies_total", &class("4xx"), 0.0),
            ("optin_smtp_replies_total", &class("5xx"), 5.0),
            ("optin_messages_accepted_total", &[], 3.0),
            ("optin_messages_refused_total", &reason("optin_header"), 1.0),
            ("optin_messages_refused_total", &reason("withheld"), 0.0),
            ("optin_policy_verdicts_total", &reason("allowed"), 3.0),
            (
                "optin_policy_verdicts_total",
                &reason("consent_missing"),
                2.0,
            ),
            ("optin_policy_verdicts_total", &reason("unsubscribed"), 1.0),
            ("optin_policy_verdicts_total", &reason("bounced"), 0.0),
            ("optin_policy_verdicts_total", &reason("complaint"), 0.0),
            ("optin_policy_verdicts_total", &reason("blocked"), 0.0),
            ("optin_policy_verdicts_total", &reason("frozen"), 0.0),
            ("optin_policy_verdicts_total", &reason("content"), 0.0),
            (
                "optin_recipients_withheld_total",
                &[("reason", "consent_missing"), ("stage", "rcpt")],
                1.0,
            ),
            (
                "optin_recipients_withheld_total",
                &[("reason", "consent_missing"), ("stage", "data")],
                1.0,
            ),
            (
                "optin_recipients_withheld_total",
                &[("reason", "unsubscribed_list"), ("stage", "rcpt")],
                1.0,
            ),
            ("optin_dsn_generated_total", &[("action", "failed")], 1.0),
            (
                "optin_delivery_recipients_total",
                &[("result", "delivered")],
                4.0,
            ),
            (
                "optin_unsubscribes_total",
                &[("scope", "list"), ("via", "http")],
                0.0,
            ),
        ],
    );
    assert_eq!(value(&after, "optin_smtp_sessions_active", &[]), Some(0.0));
    // Four messages stored (three accepted, one DSN): at least one group commit, timed.
    let commits = |s: &HashMap<String, f64>| value(s, "optin_spool_commit_seconds_count", &[]);
    assert!(
        commits(&after).unwrap() - commits(&before).unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(
        value(&after, "optin_spool_segments", &[]).unwrap() >= 1.0,
        "{text}"
    );
    assert!(
        value(&after, "optin_spool_bytes", &[]).unwrap() > 0.0,
        "{text}"
    );
    assert!(
        value(&after, "optin_lists_snapshot_bytes", &[]).is_some(),
        "{text}"
    );

    // Every metric has a HELP line (and a TYPE line).
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    for family in &families {
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "{family} has no HELP line"
        );
    }
    for series in after.keys() {
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| families.contains(f)))
            .unwrap_or(name);
        assert!(families.contains(&family), "{series} has no TYPE line");
    }
    for name in [
        "optin_smtp_connections_total",
        "optin_smtp_sessions_active",
        "optin_smtp_commands_total",
        "optin_smtp_replies_total",
        "optin_messages_accepted_total",
        "optin_messages_refused_total",
        "optin_policy_verdicts_total",
        "optin_recipients_withheld_total",
        "optin_spool_bytes",
        "optin_spool_segments",
        "optin_spool_commit_seconds",
        "optin_lists_snapshot_entries",
        "optin_lists_snapshot_bytes",
        "optin_unsubscribes_total",
        "optin_throttle_wait_seconds",
        "optin_shaping_actions_total",
        "optin_policy_reloads_total",
        "optin_delivery_recipients_total",
    ] {
        assert!(families.contains(&name), "{name} missing from\n{text}");
    }
    // No addresses, nor anything else a client typed, in a label.
    for series in after.keys() {
        assert!(!series.contains('@'), "an address in a label: {series}");
        assert!(
            !series.contains("XYZZY"),
            "a command's text in a label: {series}"
        );
    }
    relay.shutdown().await;
}
