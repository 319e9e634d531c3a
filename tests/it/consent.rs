//! Consent and suppression enforced by the running relay: over real sockets, from lists
//! changed in-process, by the `optin-relay` binary beside it, and across a `kill -9`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use optin_relay::consent::{Kind, Reason, Scope};

use crate::support::{
    self, Account, Client, FakeMx, MxOptions, Running, bin, free_port, grant, record, settle,
    wait_listening,
};

const WAIT: Duration = Duration::from_secs(20);

/// `news` (127.0.0.2) may send marketing only, to its one list: its verdicts are known at
/// RCPT. `shop` (the rest of loopback) sends both streams and has two lists: marketing is
/// decided at the end of DATA from the X-Optin-* headers.
fn policy() -> String {
    let shop = Account::shop()
        .domains(&["sender.example"])
        .list_with(
            "deals",
            &[
                ("name", "Deals"),
                (
                    "consent_statement",
                    "You get {list} because you signed up at {source}.",
                ),
            ],
        )
        .list("tips", "You get {list} because you asked for it.");
    support::policy(&[shop, Account::newsletter()], "")
}

struct Setup {
    mx: FakeMx,
    relay: optin_relay::server::Relay,
    /// A config for the binary, naming the relay's spool and policy.
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// A relay delivering to a fake MX, following changes to its lists every 50 ms.
async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let policy_file = dir.path().join("policy.toml");
    std::fs::write(&policy_file, policy()).unwrap();
    let delivery = format!(
        "[lists]\nrefresh_interval = \"50ms\"\n[policy]\npath = \"{}\"\n",
        policy_file.display()
    );
    let run = Running::start_in(dir, MxOptions::default(), &delivery, &policy()).await;
    let config = run.dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "[smtp]\nlisten = \"127.0.0.1:0\"\nhostname = \"relay.test\"\n[spool]\npath = \"{}\"\n\
             [http]\nlisten = \"\"\n[admin]\nlisten = \"\"\n{}",
            run.spool().display(),
            support::relay::smarthost(run.mx_addr, &delivery)
        ),
    )
    .unwrap();
    Setup {
        mx: run.mx,
        relay: run.relay,
        config,
        _dir: run.dir,
    }
}

/// A relay delivering to a fake MX over one connection at a time, with `policy`.
async fn one_connection(policy: &str) -> Running {
    let delivery = "max_connections_per_destination = 1\n";
    Running::start(MxOptions::default(), delivery, policy).await
}

/// MAIL from `from`, RCPT to each of `to`, DATA with `headers` and a body: the RCPT
/// replies and the reply to the end of the data.
async fn send(c: &mut Client, from: &str, to: &[&str], headers: &str) -> (Vec<String>, String) {
    let message = format!("From: <{from}>\r\nSubject: hello\r\n{headers}\r\nHello there.");
    c.transaction(from, to, &message).await
}

/// The reply to RCPT for `to`, asked again (MAIL, RCPT, RSET) until it is a refusal or
/// 2 s have passed.
async fn refused_soon(c: &mut Client, from: &str, to: &str) -> String {
    let rcpt = async || c.rcpt(from, to).await;
    settle(Duration::from_secs(2), rcpt, |r| r.starts_with("550")).await
}

#[tokio::test]
async fn marketing_account_refuses_at_rcpt_and_delivers_to_consented_recipients() {
    let s = setup().await;
    let lists = &s.relay.lists;
    let weekly = Scope::List("news", "weekly");
    grant(&s.relay, "news", "weekly", "yes@example.net");
    grant(&s.relay, "news", "weekly", "gone@example.net");
    record(
        lists,
        Kind::Suppression,
        weekly,
        "gone@example.net",
        Reason::Unsubscribe.bit(),
    );
    let mut c = Client::hello(s.relay.smtp_addrs[0], "127.0.0.2").await;
    let (rcpt, end) = send(
        &mut c,
        "news@sender.example",
        &["Yes@Example.NET", "gone@example.net", "never@example.net"],
        "",
    )
    .await;
    assert!(rcpt[0].starts_with("250"), "{rcpt:?}");
    assert_eq!(
        rcpt[1],
        "550 5.7.1 <gone@example.net> has unsubscribed from this list"
    );
    assert_eq!(
        rcpt[2],
        "550 5.7.1 <never@example.net> has no consent recorded for this list"
    );
    assert!(end.starts_with("250"), "{end}");
    let got = s.mx.wait_for(1, WAIT).await;
    assert_eq!(got[0].rcpt_to, ["Yes@Example.NET"]);
    s.relay.shutdown().await;
}

#[tokio::test]
async fn streams_lists_and_partial_refusals_at_the_end_of_data() {
    let s = setup().await;
    let lists = &s.relay.lists;
    grant(&s.relay, "shop", "deals", "fan@example.net");
    grant(&s.relay, "shop", "deals", "left@example.net");
    record(
        lists,
        Kind::Suppression,
        Scope::Account("shop"),
        "left@example.net",
        Reason::Unsubscribe.bit(),
    );
    record(
        lists,
        Kind::Suppression,
        Scope::Global,
        "dead@example.net",
        Reason::Bounce.bit(),
    );
    let mut c = Client::hello(s.relay.smtp_addrs[0], "127.0.0.1").await;

    // Transactional (the account's default): an unsubscribe does not stop it, a hard
    // bounce does, and right at RCPT (nothing in the message could change that).
    let (rcpt, end) = send(
        &mut c,
        "shop@sender.example",
        &["left@example.net", "dead@example.net"],
        "",
    )
    .await;
    assert!(rcpt[0].starts_with("250"), "{rcpt:?}");
    assert_eq!(
        rcpt[1],
        "550 5.7.1 <dead@example.net> is suppressed after a hard bounce"
    );
    assert!(end.starts_with("250"), "{end}");
    let got = s.mx.wait_for(1, WAIT).await;
    assert_eq!(got[0].rcpt_to, ["left@example.net"]);

    // Marketing to the deals list: one consented, one unsubscribed, one never asked. The
    // message is accepted for the consented one; the sender gets a DSN about the others.
    let (rcpt, end) = send(
        &mut c,
        "shop@sender.example",
        &[
            "fan@example.net",
            "left@example.net",
            "stranger@example.net",
        ],
        "X-Optin-Stream: marketing\r\nX-Optin-List: deals\r\nX-Optin-Campaign: spring-1\r\n",
    )
    .await;
    assert!(rcpt.iter().all(|r| r.starts_with("250")), "{rcpt:?}");
    assert!(end.starts_with("250"), "{end}");
    let got = s.mx.wait_for(3, WAIT).await;
    let to_fan = got
        .iter()
        .find(|d| d.rcpt_to == ["fan@example.net"])
        .expect("delivered to the consented recipient");
    assert!(
        !to_fan.text().to_ascii_lowercase().contains("x-optin"),
        "{}",
        to_fan.text()
    );
    let dsn = got
        .iter()
        .find(|d| d.rcpt_to == ["shop@sender.example"])
        .expect("a DSN to the sender");
    assert_eq!(dsn.mail_from, "");
    // Unfolded, so long lines can be matched.
    let text = dsn.text().replace("\r\n ", " ");
    assert!(
        text.contains("Final-Recipient: rfc822; left@example.net"),
        "{text}"
    );
    assert!(
        text.contains("has unsubscribed from all mail of this sender"),
        "{text}"
    );
    assert!(
        text.contains("Final-Recipient: rfc822; stranger@example.net"),
        "{text}"
    );
    assert!(
        text.contains("has no consent recorded for this list"),
        "{text}"
    );
    assert!(!text.contains("rfc822; fan@example.net"), "{text}");

    // Everyone refused: a 550 for the message.
    let (_, end) = send(
        &mut c,
        "shop@sender.example",
        &["left@example.net", "stranger@example.net"],
        "X-Optin-Stream: marketing\r\nX-Optin-List: deals\r\n",
    )
    .await;
    assert_eq!(
        end,
        "550 5.7.1 No recipient may receive this message: <left@example.net> has unsubscribed from all mail of this sender (and 1 more)"
    );
    // Bad headers.
    let (_, end) = send(
        &mut c,
        "shop@sender.example",
        &["fan@example.net"],
        "X-Optin-List: nope\r\n",
    )
    .await;
    assert_eq!(end, "550 5.7.1 Unknown list \"nope\" for this account");
    let (_, end) = send(
        &mut c,
        "shop@sender.example",
        &["fan@example.net"],
        "X-Optin-Stream: marketing\r\n",
    )
    .await;
    assert!(
        end.starts_with("550 5.7.1 Marketing mail needs a list"),
        "{end}"
    );
    s.relay.shutdown().await;
}

#[tokio::test]
async fn a_withheld_notice_returns_headers_only_and_never_reaches_a_suppressed_sender() {
    let s = setup().await;
    let lists = &s.relay.lists;
    grant(&s.relay, "shop", "deals", "fan@example.net");
    record(
        lists,
        Kind::Suppression,
        Scope::Global,
        "complained@sender.example",
        Reason::Complaint.bit(),
    );
    let mut c = Client::hello(s.relay.smtp_addrs[0], "127.0.0.1").await;
    // Marketing with RET=FULL to a consented and a never-asked recipient, from a sender
    // that complained, then from one that did not.
    for sender in ["complained@sender.example", "shop@sender.example"] {
        c.expect(&format!("MAIL FROM:<{sender}> RET=FULL"), "250")
            .await;
        c.expect("RCPT TO:<fan@example.net>", "250").await;
        c.expect("RCPT TO:<stranger@example.net>", "250").await;
        c.expect("DATA", "354").await;
        let end = c
            .say(&format!(
                "From: <{sender}>\r\nSubject: spring offer\r\nX-Optin-Stream: marketing\r\n\
                 X-Optin-List: deals\r\n\r\nSECRET OFFER BODY\r\n."
            ))
            .await;
        assert!(end.starts_with("250"), "{end}");
    }
    // The fan gets both messages; only the sender in good standing hears of the stranger.
    let got = s.mx.wait_for(3, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got_now = s.mx.delivered();
    assert_eq!(
        got_now.len(),
        3,
        "{:?}",
        got_now.iter().map(|d| &d.rcpt_to).collect::<Vec<_>>()
    );
    assert!(
        !got.iter()
            .any(|d| d.rcpt_to.iter().any(|r| r.starts_with("complained@"))),
        "no notice to a suppressed sender"
    );
    let dsn = got
        .iter()
        .find(|d| d.rcpt_to == ["shop@sender.example"])
        .expect("a DSN to the sender in good standing");
    let text = dsn.text();
    assert!(
        text.contains("Final-Recipient: rfc822; stranger@example.net"),
        "{text}"
    );
    assert!(text.contains("Subject: spring offer"), "{text}");
    assert!(
        !text.contains("SECRET OFFER BODY"),
        "a withheld notice carries the header section only, whatever RET said: {text}"
    );
    s.relay.shutdown().await;
}

#[tokio::test]
async fn a_suppression_from_the_command_line_is_in_force_in_the_running_relay() {
    let s = setup().await;
    grant(&s.relay, "news", "weekly", "reader@example.net");
    let mut c = Client::hello(s.relay.smtp_addrs[0], "127.0.0.2").await;
    c.expect("MAIL FROM:<news@sender.example>", "250").await;
    c.expect("RCPT TO:<reader@example.net>", "250").await;
    c.say("RSET").await;

    let config = s.config.to_str().unwrap();
    let add = ["suppress", "add", "Reader@EXAMPLE.net", "--account", "news"];
    run_ok(config, &[&add[..], &["--reason", "complaint"]].concat());
    // The relay follows the journal every 50 ms.
    let refused = refused_soon(&mut c, "news@sender.example", "reader@example.net").await;
    assert_eq!(
        refused,
        "550 5.7.1 <reader@example.net> is suppressed after a spam complaint"
    );
    // Lifted again.
    run_ok(
        config,
        &[
            "suppress",
            "remove",
            "reader@example.net",
            "--account",
            "news",
        ],
    );
    s.relay.lists.refresh().unwrap();
    c.expect("MAIL FROM:<news@sender.example>", "250").await;
    c.expect("RCPT TO:<reader@example.net>", "250").await;
    s.relay.shutdown().await;
}

/// Runs `optin-relay --config CONFIG ARGS…`, which must succeed.
fn run_ok(config: &str, args: &[&str]) {
    let out = bin()
        .args(["--config", config])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write_config(dir: &Path, port: u16, mx: SocketAddr) -> std::path::PathBuf {
    std::fs::write(dir.join("policy.toml"), policy()).unwrap();
    let config = dir.join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "[smtp]\nlisten = \"127.0.0.1:{port}\"\nhostname = \"relay.test\"\n[spool]\npath = \"{}\"\n[http]\nlisten = \"\"\n[admin]\nlisten = \"\"\n[delivery]\nsmarthost = \"{mx}\"\n[lists]\nrefresh_interval = \"20ms\"\n[policy]\npath = \"{}\"\n",
            dir.join("spool").display(),
            dir.join("policy.toml").display()
        ),
    )
    .unwrap();
    config
}

#[tokio::test]
async fn an_acknowledged_unsubscribe_survives_kill_9() {
    let mx = FakeMx::new(MxOptions::default());
    let mx_addr = mx.listen().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port, mx_addr);
    let cfg = config.to_str().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let start = || {
        bin()
            .args(["--config", cfg, "serve"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    run_ok(
        cfg,
        &["lists", "grant", "u@example.net", "--account", "news"],
    );
    let mut relay = start();
    wait_listening(addr).await;
    let add = ["suppress", "add", "u@example.net", "--account", "news"];
    run_ok(
        cfg,
        &[&add[..], &["--list", "weekly", "--reason", "unsubscribe"]].concat(),
    );
    // Killed the moment the change is acknowledged.
    relay.kill().unwrap();
    relay.wait().unwrap();
    let mut relay = start();
    wait_listening(addr).await;
    let mut c = Client::hello(addr, "127.0.0.2").await;
    c.expect("MAIL FROM:<news@sender.example>", "250").await;
    assert_eq!(
        c.say("RCPT TO:<u@example.net>").await,
        "550 5.7.1 <u@example.net> has unsubscribed from this list"
    );
    relay.kill().unwrap();
    relay.wait().unwrap();
}

#[tokio::test]
async fn a_hard_bounce_suppresses_the_address_for_the_next_submission() {
    let s = setup().await;
    let mut c = Client::hello(s.relay.smtp_addrs[0], "127.0.0.1").await;
    // The fake MX answers 550 5.1.1 for permfail… recipients.
    let (rcpt, end) = send(
        &mut c,
        "shop@sender.example",
        &["permfail-gone@example.net"],
        "",
    )
    .await;
    assert!(
        rcpt[0].starts_with("250") && end.starts_with("250"),
        "{rcpt:?} {end}"
    );
    // The DSN to the sender shows the bounce happened.
    s.mx.wait_for(1, WAIT).await;
    let reply = refused_soon(&mut c, "shop@sender.example", "PermFail-Gone@Example.NET").await;
    assert_eq!(
        reply,
        "550 5.7.1 <PermFail-Gone@Example.NET> is suppressed after a hard bounce"
    );
    // A refusal about the message, not the address, suppresses nothing: datafail… gets
    // 554 after DATA.
    let (_, end) = send(
        &mut c,
        "shop@sender.example",
        &["datafail-x@example.net"],
        "",
    )
    .await;
    assert!(end.starts_with("250"), "{end}");
    s.mx.wait_for(2, WAIT).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.expect("MAIL FROM:<shop@sender.example>", "250").await;
    c.expect("RCPT TO:<datafail-x@example.net>", "250").await;
    // Per-account results for governance: one hard, one soft bounce.
    let counts = s.relay.account_counts.get("shop");
    assert_eq!(
        (counts.hard_bounced, counts.soft_bounced),
        (1, 1),
        "{counts:?}"
    );
    s.relay.shutdown().await;

    // The delivery log tells the story with tags, never the addresses.
    // (written per UTC day: delivery-YYYY-MM-DD.jsonl beside the configured delivery.jsonl)
    let log_dir = s._dir.path().join("spool/log");
    let read_log = async || {
        let mut text = String::new();
        for entry in std::fs::read_dir(&log_dir).unwrap().flatten() {
            if entry.file_name().to_string_lossy().starts_with("delivery-") {
                text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        assert!(
            !text.contains("permfail-gone@"),
            "a plain address in the log"
        );
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect::<Vec<serde_json::Value>>()
    };
    let told = |events: &Vec<serde_json::Value>| {
        events.iter().any(|e| e["event"] == "suppressed") && events.len() >= 5
    };
    let events = settle(Duration::from_secs(3), read_log, told).await;
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    for k in ["accepted", "bounced", "suppressed"] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let bounced = events.iter().find(|e| e["event"] == "bounced").unwrap();
    assert!(bounced["rcpt"].as_str().unwrap().starts_with("h:"));
    assert!(bounced["rcpt"].as_str().unwrap().ends_with("@example.net"));
    assert!(
        bounced["reply"].as_str().unwrap().contains("5.1.1"),
        "{bounced}"
    );
    assert_eq!(bounced["account"], "shop");
    assert!(bounced["id"].as_str().unwrap().len() == 16);
}

#[tokio::test]
async fn transactional_mail_overtakes_a_queued_campaign() {
    let (mx, relay, _dir) = one_connection(&policy()).await.into_parts();
    let campaign: Vec<String> = (0..6).map(|i| format!("fan{i}@example.net")).collect();
    grant(&relay, "shop", "deals", "slow-first@example.net");
    for a in &campaign {
        grant(&relay, "shop", "deals", a);
    }
    let marketing = "X-Optin-Stream: marketing\r\nX-Optin-List: deals\r\n";
    let mut c = Client::hello(relay.smtp_addrs[0], "127.0.0.1").await;
    // The one connection is busy with a slow server while the campaign queues up.
    let (_, end) = send(
        &mut c,
        "shop@sender.example",
        &["slow-first@example.net"],
        marketing,
    )
    .await;
    assert!(end.starts_with("250"), "{end}");
    for a in &campaign {
        let (_, end) = send(&mut c, "shop@sender.example", &[a.as_str()], marketing).await;
        assert!(end.starts_with("250"), "{end}");
    }
    let (_, end) = send(&mut c, "shop@sender.example", &["reset@example.net"], "").await;
    assert!(end.starts_with("250"), "{end}");
    let got = mx.wait_for(8, WAIT).await;
    let order: Vec<&str> = got.iter().map(|d| d.rcpt_to[0].as_str()).collect();
    let reset = order
        .iter()
        .position(|r| *r == "reset@example.net")
        .unwrap();
    let last_fan = order.iter().rposition(|r| r.starts_with("fan")).unwrap();
    assert!(
        reset < last_fan,
        "the transactional message waited behind the campaign: {order:?}"
    );
    assert!(reset <= 2, "{order:?}");
    relay.shutdown().await;
}

/// Marketing of one account does not wait behind another account's large campaign: the
/// route serves accounts round robin.
#[tokio::test]
async fn accounts_take_turns_on_a_busy_destination() {
    let small = Account::new("small")
        .networks(&["127.0.0.3/32"])
        .streams(&["marketing"])
        .domains(&["sender.example"])
        .list("notes", "You asked for {list}.");
    let policy = format!("{}{small}", policy());
    let (mx, relay, _dir) = one_connection(&policy).await.into_parts();
    let campaign: Vec<String> = (0..8).map(|i| format!("reader{i}@example.net")).collect();
    grant(&relay, "news", "weekly", "slow-first@example.net");
    for a in &campaign {
        grant(&relay, "news", "weekly", a);
    }
    grant(&relay, "small", "notes", "friend@example.net");
    // news (127.0.0.2): a slow first message holds the one connection while its campaign
    // queues; then small (127.0.0.3) sends one message.
    let mut big = Client::hello(relay.smtp_addrs[0], "127.0.0.2").await;
    send(
        &mut big,
        "news@sender.example",
        &["slow-first@example.net"],
        "",
    )
    .await;
    for a in &campaign {
        let (_, end) = send(&mut big, "news@sender.example", &[a.as_str()], "").await;
        assert!(end.starts_with("250"), "{end}");
    }
    let mut small = Client::hello(relay.smtp_addrs[0], "127.0.0.3").await;
    let (_, end) = send(
        &mut small,
        "small@sender.example",
        &["friend@example.net"],
        "",
    )
    .await;
    assert!(end.starts_with("250"), "{end}");
    let got = mx.wait_for(10, WAIT).await;
    let order: Vec<&str> = got.iter().map(|d| d.rcpt_to[0].as_str()).collect();
    let friend = order
        .iter()
        .position(|r| *r == "friend@example.net")
        .unwrap();
    assert!(
        friend <= 3,
        "the small account waited behind the campaign: {order:?}"
    );
    relay.shutdown().await;
}
