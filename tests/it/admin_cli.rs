//! The command-line verbs that ask a running relay through its admin API: `queue
//! summary|retry|bounce|delete`, `queue list|show --live`, `account …`, `suppress check`,
//! `erase`, `policy status|reload`; their text and `--json` output, and their exit codes
//! (1: the API said no; 2: no relay to ask, or bad usage).
//!
//! The relay runs in-process with its operator listener on a free loopback port; the
//! `optin-relay` binary runs as a separate process with a config naming that relay's real
//! address and token.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::support::{
    self, Account, Client, FakeMx, MxOptions, Running, SUBSCRIBED, eventually, mail_reply,
};

const TOKEN: &str = "admin-cli-test-token-0123456789";

/// `shop` (all of loopback) sends transactional mail by default, and marketing to `news`.
fn policy() -> String {
    let shop = Account::shop().domains(&["shop.example", "x.example"]);
    support::policy(&[shop.list("news", SUBSCRIBED)], "")
}

struct Setup {
    mx: FakeMx,
    relay: optin_relay::server::Relay,
    /// The binary's config: the relay's spool, HTTP address, token and policy.
    config: PathBuf,
    policy: PathBuf,
    dir: tempfile::TempDir,
}

impl Setup {
    fn smtp(&self) -> SocketAddr {
        self.relay.smtp_addrs[0]
    }

    fn http(&self) -> SocketAddr {
        self.relay.admin_addr.expect("the operator listener is on")
    }

    /// Runs the binary with this setup's config.
    async fn cli(&self, args: &[&str]) -> Out {
        cli(&self.config, args).await
    }

    /// Writes another config for the binary: this relay's spool and policy, `http` (its
    /// operator listener) and `token` as given.
    fn config_with(&self, name: &str, http: &str, token: &str) -> PathBuf {
        write_config(self.dir.path(), name, http, token)
    }
}

/// A relay delivering to a fake MX through a smart host, retrying after an hour (so a
/// `tempfail…` recipient stays queued), with the admin token [`TOKEN`].
async fn setup() -> Setup {
    setup_following("50ms").await
}

/// As [`setup`], the relay following other processes' changes to its lists every
/// `refresh`.
async fn setup_following(refresh: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, self::policy()).unwrap();
    let extra = format!(
        "retry_initial = \"1h\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\
         [lists]\nrefresh_interval = \"{refresh}\"\n\
         [policy]\npath = \"{}\"\nwatch_interval = \"0s\"\n",
        policy.display()
    );
    let run = Running::start_in(dir, MxOptions::default(), &extra, &self::policy()).await;
    let http = run
        .relay
        .admin_addr
        .expect("the operator listener is on")
        .to_string();
    let config = write_config(run.dir.path(), "cli.toml", &http, TOKEN);
    Setup {
        mx: run.mx,
        relay: run.relay,
        config,
        policy,
        dir: run.dir,
    }
}

fn write_config(dir: &Path, name: &str, http: &str, token: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "[spool]\npath = \"{}\"\n[http]\nlisten = \"\"\n[admin]\nlisten = \"{http}\"\n\
             token = \"{token}\"\n\
             [policy]\npath = \"{}\"\n",
            dir.join("spool").display(),
            dir.join("policy.toml").display()
        ),
    )
    .unwrap();
    path
}

#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "{self:#?}");
        &self.stdout
    }

    fn json(&self) -> Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("{e}: {self:#?}"))
    }
}

/// Runs the binary (as a child process: the relay in this runtime keeps serving).
async fn cli(config: &Path, args: &[&str]) -> Out {
    let out = tokio::process::Command::from(support::bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .await
        .unwrap();
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Submits a message from `app@shop.example` to `to`; returns its queue id.
async fn submit(relay: SocketAddr, to: &str) -> String {
    let reply = support::send_ok(
        relay,
        "app@shop.example",
        &[to],
        "From: <app@shop.example>\r\nSubject: q\r\n\r\nx",
    )
    .await;
    reply.rsplit(' ').next().unwrap().to_string()
}

/// Waits until `done` holds, for up to 10 s.
async fn until(what: &str, done: impl AsyncFnMut() -> bool) {
    eventually(Duration::from_secs(10), what, done).await;
}

#[tokio::test]
async fn queue_verbs_summarise_list_retry_bounce_and_delete() {
    let s = setup().await;
    let id = submit(s.smtp(), "tempfail1@x.example").await;
    until("the first attempt", async || s.mx.rcpt_attempts() >= 1).await;
    // The first attempt is recorded by the scheduler right after the MX answers.
    until("the deferral", async || {
        let v = s.cli(&["queue", "list", "--live", "--json"]).await.json();
        v["messages"][0]["recipients"][0]["attempts"] == 1
    })
    .await;

    let out = s.cli(&["queue", "summary"]).await;
    let text = out.ok();
    assert!(
        text.contains("queued: 1 message(s), 1 recipient(s) to deliver, 0 held"),
        "{text}"
    );
    assert!(
        text.contains("SITE") && text.contains("smarthost") && text.contains("ACCOUNT"),
        "{text}"
    );
    let row = text.lines().find(|l| l.starts_with("shop")).unwrap();
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        ["shop", "1", "1", "0"]
    );
    let v = s.cli(&["queue", "summary", "--json"]).await.json();
    assert_eq!(v["messages"], 1);
    assert_eq!(v["by_account"][0]["account"], "shop");
    assert_eq!(v["by_site"][0]["site"], "smarthost");

    let out = s.cli(&["queue", "list", "--live"]).await;
    let text = out.ok();
    let row = text.lines().find(|l| l.starts_with(&id)).expect(text);
    for cell in ["shop", "transactional", "waiting", "1/1", "x.example"] {
        assert!(row.contains(cell), "{cell}: {text}");
    }
    assert!(text.contains("1 of 1 message(s) shown"), "{text}");
    let out = s
        .cli(&["queue", "list", "--live", "--account", "nobody"])
        .await;
    // a typo in the account is an error, not an empty queue
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(
        out.stderr
            .contains("no account \"nobody\" in the policy (HTTP 404)"),
        "{out:#?}"
    );
    let out = s.cli(&["queue", "list", "--live", "--limit", "1"]).await;
    assert!(out.ok().contains("1 of 1 message(s) shown"), "{out:#?}");
    // the spool says the same without the relay
    let out = s.cli(&["queue", "list", "--account", "shop"]).await;
    assert!(out.ok().contains(&id), "{out:#?}");

    let out = s.cli(&["queue", "show", &id, "--live"]).await;
    let text = out.ok();
    assert!(
        text.contains("sender:    <app@shop.example>")
            && text.contains("<tempfail1@x.example>  waiting, 1 attempt(s), next in"),
        "{text}"
    );
    let v = s
        .cli(&["queue", "show", &id, "--live", "--json"])
        .await
        .json();
    assert_eq!(v["recipients"][0]["address"], "tempfail1@x.example");

    // retry: tried again at once, still refused, still queued
    let out = s.cli(&["queue", "retry", &id]).await;
    assert!(
        out.ok().contains(&format!(
            "message {id}: 1 waiting recipient(s) are tried now"
        )),
        "{out:#?}"
    );
    until("the retry", async || s.mx.rcpt_attempts() >= 2).await;

    // show: each recipient's last reply, from the delivery log (written within a second)
    until("the last reply in queue show", async || {
        let text = s
            .cli(&["queue", "show", &id, "--live"])
            .await
            .ok()
            .to_string();
        text.contains("last: deferred") && text.contains("451")
    })
    .await;
    // cat: the stored message, envelope first (from the spool files)
    let text = s.cli(&["queue", "cat", &id]).await.ok().to_string();
    assert!(
        text.contains("X-Optin-Envelope-To: <tempfail1@x.example>"),
        "{text}"
    );
    assert!(text.contains("Subject:"), "{text}");
    let body = s
        .cli(&["queue", "cat", &id, "--body"])
        .await
        .ok()
        .to_string();
    assert!(
        !body.contains("X-Optin-Envelope") && body.contains("Subject:"),
        "{body}"
    );
    // shape: the queue's age by site
    let text = s.cli(&["queue", "shape"]).await.ok().to_string();
    let total = text.lines().find(|l| l.starts_with("TOTAL")).expect(&text);
    assert!(total.split_whitespace().nth(1) == Some("1"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("smarthost")), "{text}");
    // hold: a retry does not send it; the list says held; release lets it go
    let out = s.cli(&["queue", "hold", &id]).await;
    assert!(out.ok().contains("held until released"), "{out:#?}");
    let before = s.mx.rcpt_attempts();
    let out = s.cli(&["queue", "retry", "--all"]).await;
    assert!(
        out.ok().contains("0 message(s) retrying"),
        "held: not counted {out:#?}"
    );
    let out = s.cli(&["queue", "retry", &id]).await;
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stderr.contains("held by an operator"), "{out:#?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.mx.rcpt_attempts(), before, "a held message is not tried");
    let row = s.cli(&["queue", "list", "--live"]).await.ok().to_string();
    assert!(
        row.lines()
            .any(|l| l.starts_with(&id) && l.contains("held")),
        "{row}"
    );
    let out = s.cli(&["queue", "release", "--account", "shop"]).await;
    assert!(out.ok().contains("1 message(s) released"), "{out:#?}");
    let out = s
        .cli(&["queue", "retry", "--all", "--site", "smarthost"])
        .await;
    assert!(out.ok().contains("1 message(s) retrying"), "{out:#?}");
    until("the retry after release", async || {
        s.mx.rcpt_attempts() > before
    })
    .await;
    let out = s.cli(&["queue", "hold"]).await;
    assert_eq!(
        out.code,
        Some(2),
        "hold needs an id, --account or --all: {out:#?}"
    );

    // bounce: the sender gets a DSN
    let id2 = submit(s.smtp(), "tempfail2@x.example").await;
    until("its first attempt", async || s.mx.rcpt_attempts() >= 3).await;
    // --limit shows fewer, and still counts them all (spool and live alike)
    let out = s.cli(&["queue", "list", "--limit", "1"]).await;
    assert!(
        out.ok().contains("1 of 2 message(s) queued shown"),
        "{out:#?}"
    );
    let out = s.cli(&["queue", "list", "--live", "--limit", "1"]).await;
    assert!(
        out.ok()
            .contains("1 of 2 message(s) shown; the next page: --after"),
        "{out:#?}"
    );
    let v = s.cli(&["queue", "bounce", &id2, "--json"]).await.json();
    assert_eq!(
        (v["id"].as_str(), v["result"].as_str()),
        (Some(&*id2), Some("bounced"))
    );
    let got = s.mx.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].rcpt_to, ["app@shop.example"]);

    // delete: gone, and a second time the API says no
    let out = s.cli(&["queue", "delete", &id]).await;
    assert!(out.ok().contains("dropped, without a DSN"), "{out:#?}");
    until("an empty queue", async || {
        s.cli(&["queue", "list", "--live"])
            .await
            .ok()
            .contains("0 of 0 message(s) shown")
    })
    .await;
    let out = s.cli(&["queue", "retry", &id]).await;
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(
        out.stderr
            .contains(&format!("no message {id} in the queue (HTTP 404)")),
        "{out:#?}"
    );
    let out = s.cli(&["queue", "show", "nonsense", "--live"]).await;
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(
        out.stderr.contains("is not a queue id (HTTP 400)"),
        "{out:#?}"
    );
    s.relay.shutdown().await;
}

#[tokio::test]
async fn account_freeze_refuses_submissions_until_unfrozen() {
    let s = setup().await;
    let out = s.cli(&["account", "list"]).await;
    let text = out.ok();
    assert!(text.starts_with("ACCOUNT"), "{text}");
    let row = text.lines().find(|l| l.starts_with("shop")).expect(text);
    assert!(row.ends_with("  no"), "{text}");

    let reason = "complaints over 0.3%";
    let out = s
        .cli(&["account", "freeze", "shop", "--reason", reason])
        .await;
    assert!(
        out.ok().contains(&format!("account shop frozen: {reason}")),
        "{out:#?}"
    );
    assert_eq!(
        mail_reply(s.smtp(), "app@shop.example").await,
        format!("554 5.7.1 account frozen: {reason}")
    );
    let out = s.cli(&["account", "show", "shop"]).await;
    let text = out.ok();
    assert!(
        text.contains("frozen:   since ") && text.contains(&format!("by admin: {reason}")),
        "{text}"
    );
    let v = s.cli(&["account", "show", "shop", "--json"]).await.json();
    assert_eq!(v["frozen"]["reason"], reason);
    let v = s.cli(&["account", "list", "--json"]).await.json();
    assert_eq!(v[0]["frozen"]["by"], "admin");
    // a second freeze keeps the first reason, and says so
    let out = s
        .cli(&["account", "freeze", "shop", "--reason", "another"])
        .await;
    assert!(
        out.ok().contains("was already frozen") && out.stdout.contains(reason),
        "{out:#?}"
    );

    let out = s.cli(&["account", "unfreeze", "shop"]).await;
    assert!(
        out.ok()
            .contains("account shop unfrozen; its held mail is released"),
        "{out:#?}"
    );
    assert!(
        mail_reply(s.smtp(), "app@shop.example")
            .await
            .starts_with("250")
    );
    submit(s.smtp(), "ok@x.example").await;
    let out = s.cli(&["account", "unfreeze", "shop"]).await;
    assert!(out.ok().contains("was not frozen"), "{out:#?}");

    let out = s.cli(&["account", "show", "nobody"]).await;
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(
        out.stderr
            .contains("no account \"nobody\" in the policy (HTTP 404)"),
        "{out:#?}"
    );
    let out = s
        .cli(&["account", "freeze", "shop", "--reason", "  "])
        .await;
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stderr.contains("a freeze needs a reason"), "{out:#?}");
    s.relay.shutdown().await;
}

#[tokio::test]
async fn suppress_check_gives_verdicts_and_erase_drops_queued_mail() {
    let s = setup().await;
    let check = async |args: &[&str]| {
        let mut all = vec!["suppress", "check"];
        all.extend_from_slice(args);
        s.cli(&all).await
    };
    let out = check(&["ok@x.example", "--account", "shop"]).await;
    let text = out.ok();
    assert!(
        text.contains("sending as:  account shop, list news, stream transactional")
            && text.contains("verdict:     allowed"),
        "{text}"
    );
    let out = check(&["ok@x.example", "--account", "shop", "--stream", "marketing"]).await;
    let text = out.ok();
    assert!(
        text.contains("consent:     no (shop/news)") && text.contains("verdict:     refused"),
        "{text}"
    );

    // `suppress add` goes through the relay: in force at once
    let out = s.cli(&["suppress", "add", "blocked@x.example"]).await;
    out.ok();
    let out = check(&["blocked@x.example"]).await;
    assert!(out.ok().contains("suppressed:  global: manual"), "{out:#?}");
    let out = check(&["blocked@x.example", "--account", "shop"]).await;
    assert!(out.ok().contains("verdict:     refused"), "{out:#?}");
    // '+' and '@' arrive as typed; the relay normalises
    let v = check(&["Tom+News@X.Example", "--json"]).await.json();
    assert_eq!(v["address"], "tom+news@x.example");
    assert_eq!(v["suppressed"]["global"], serde_json::json!([]));
    let out = check(&["not an address"]).await;
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stderr.contains("(HTTP 400)"), "{out:#?}");
    let out = check(&["ok@x.example", "--account", "shop", "--list", "nope"]).await;
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stderr.contains("has no list \"nope\""), "{out:#?}");

    // erase: the queued recipient is dropped and an erasure suppression recorded
    submit(s.smtp(), "tempfail-erase@x.example").await;
    until("the first attempt", async || s.mx.rcpt_attempts() >= 1).await;
    let out = s.cli(&["erase", "Tempfail-Erase@x.example"]).await;
    assert!(
        out.ok().contains(
            "erased tempfail-erase@x.example: 1 queued recipient(s) dropped; an erasure \
             suppression (global) is recorded"
        ),
        "{out:#?}"
    );
    until("an empty queue", async || {
        s.cli(&["queue", "summary", "--json"]).await.json()["messages"] == 0
    })
    .await;
    let out = check(&["tempfail-erase@x.example"]).await;
    assert!(out.ok().contains("global: erasure"), "{out:#?}");
    let v = s.cli(&["erase", "nobody@x.example", "--json"]).await.json();
    assert_eq!(v["queued_recipients_dropped"], 0);
    s.relay.shutdown().await;
}

/// Records in the relay's lists journals.
fn journal_records(s: &Setup) -> u64 {
    support::journal_records(s.dir.path())
}

/// Sends a message from `shop` to `to` (marketing or transactional); the reply that
/// decided it: to RCPT when refused there, else to the end of the data.
async fn send_reply(s: &Setup, to: &str, marketing: bool) -> String {
    let stream = if marketing {
        "marketing"
    } else {
        "transactional"
    };
    let mut c = Client::connect(s.smtp()).await;
    c.say("EHLO client.test").await;
    c.say("MAIL FROM:<app@shop.example>").await;
    let rcpt = c.say(&format!("RCPT TO:<{to}>")).await;
    if !rcpt.starts_with("250") {
        return rcpt;
    }
    c.say("DATA").await;
    c.say(&format!(
        "From: <app@shop.example>\r\nX-Optin-Stream: {stream}\r\nSubject: q\r\n\r\nx\r\n."
    ))
    .await
}

/// With a relay running, `suppress add|remove` and `lists grant|revoke` change its lists
/// through the admin API: in force when the command returns (the relay here follows the
/// journal only once an hour), written once (by the relay, never also by the command).
/// With no relay answering they write the journal and say so.
#[tokio::test]
async fn list_changes_go_through_the_running_relay_and_are_in_force_at_once() {
    let s = setup_following("1h").await;
    let records = journal_records(&s);
    let out = s
        .cli(&["suppress", "add", "Gone@X.example", "other@x.example"])
        .await;
    assert!(
        out.ok().contains(
            "suppressed 2 address(es) (manual, global) through the running relay; in force now"
        ),
        "{out:#?}"
    );
    // No sleep: the very next submission is refused.
    let reply = send_reply(&s, "gone@x.example", false).await;
    assert!(reply.contains("may not receive mail"), "{reply}");
    assert_eq!(journal_records(&s), records + 2, "one record per address");

    let out = s.cli(&["suppress", "remove", "gone@x.example"]).await;
    assert!(out.ok().contains("in force now"), "{out:#?}");
    let reply = send_reply(&s, "gone@x.example", false).await;
    assert!(reply.starts_with("250"), "{reply}");

    // Consent: marketing to the list needs it, from the moment it is granted.
    let reply = send_reply(&s, "fan@x.example", true).await;
    assert!(reply.contains("no consent recorded"), "{reply}");
    let out = s
        .cli(&["lists", "grant", "fan@x.example", "--account", "shop"])
        .await;
    assert!(
        out.ok().contains(
            "consent recorded for 1 address(es) on shop/news through the running relay; in \
             force now"
        ),
        "{out:#?}"
    );
    let reply = send_reply(&s, "fan@x.example", true).await;
    assert!(reply.starts_with("250"), "{reply}");
    let out = s
        .cli(&["lists", "revoke", "fan@x.example", "--account", "shop"])
        .await;
    assert!(out.ok().contains("consent revoked"), "{out:#?}");
    let reply = send_reply(&s, "fan@x.example", true).await;
    assert!(reply.contains("no consent recorded"), "{reply}");
    let records = journal_records(&s);

    // The relay says no (a wrong token): exit 1, and nothing written by the command.
    let wrong = s.config_with("wrong.toml", &s.http().to_string(), "not-the-token-at-all");
    let out = cli(&wrong, &["suppress", "add", "x@x.example"]).await;
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stderr.contains("(HTTP 401)"), "{out:#?}");
    assert_eq!(journal_records(&s), records);

    // No relay answers: the journal, and the message says when a relay has it.
    let port = support::free_port();
    let stopped = s.config_with("stopped.toml", &format!("127.0.0.1:{port}"), TOKEN);
    let out = cli(&stopped, &["suppress", "add", "late@x.example"]).await;
    assert!(
        out.ok().contains(&format!(
            "suppressed 1 address(es) (manual, global) written to the lists journal (no \
             relay answers at http://127.0.0.1:{port}); a relay has it within"
        )),
        "{out:#?}"
    );
    assert!(!out.stdout.contains("in force now"), "{out:#?}");
    assert_eq!(journal_records(&s), records + 1);
    let off = s.config_with("off.toml", "", TOKEN);
    let out = cli(
        &off,
        &["lists", "grant", "late@x.example", "--account", "shop"],
    )
    .await;
    assert!(
        out.ok()
            .contains("(the config turns the operator listener off)"),
        "{out:#?}"
    );
    assert_eq!(journal_records(&s), records + 2);
    s.relay.shutdown().await;
}

#[tokio::test]
async fn policy_status_and_reload_report_every_problem() {
    let s = setup().await;
    let out = s.cli(&["policy", "status"]).await;
    let text = out.ok();
    assert!(
        text.contains(&format!("policy file:  {}", s.policy.display()))
            && text.contains("generation:   1")
            && text.contains("last reload:  none since the start"),
        "{text}"
    );

    std::fs::write(
        &s.policy,
        "[accounts.shop]\nnetworks = [\"not-a-net\"]\nstreams = [\"carrier-pigeon\"]\n",
    )
    .unwrap();
    let out = s.cli(&["policy", "reload"]).await;
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(
        out.stderr
            .contains("policy refused; the running policy stays (HTTP 409)"),
        "{out:#?}"
    );
    assert!(
        out.stderr.contains("accounts.shop.networks")
            && out.stderr.contains("accounts.shop.streams"),
        "every problem: {out:#?}"
    );
    let out = s.cli(&["policy", "reload", "--json"]).await;
    assert_eq!(out.code, Some(1), "{out:#?}");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["status"], 409);
    assert!(v["problems"].as_array().unwrap().len() >= 2, "{v}");
    let out = s.cli(&["policy", "status"]).await;
    let text = out.ok();
    assert!(
        text.contains("generation:   1")
            && text.contains("by admin: refused (")
            && text.contains("accounts.shop.networks"),
        "{text}"
    );

    std::fs::write(&s.policy, policy()).unwrap();
    let out = s.cli(&["policy", "reload"]).await;
    assert!(
        out.ok().contains("policy reloaded: generation 2"),
        "{out:#?}"
    );
    let v = s.cli(&["policy", "status", "--json"]).await.json();
    assert_eq!(v["generation"], 2);
    assert_eq!(v["last_error"], Value::Null);
    assert_eq!(v["last_trigger"], "admin");
    s.relay.shutdown().await;
}

#[tokio::test]
async fn failures_have_their_exit_codes_and_say_why() {
    let s = setup().await;
    let http = s.http().to_string();

    // a wrong token: the API says no
    let wrong = s.config_with("wrong.toml", &http, "not-the-token-at-all");
    let out = cli(&wrong, &["queue", "summary"]).await;
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(
        out.stderr
            .contains("optin-relay: missing or wrong bearer token (HTTP 401)"),
        "{out:#?}"
    );

    // nothing listening there: cannot reach the relay
    let port = support::free_port();
    let stopped = s.config_with("stopped.toml", &format!("127.0.0.1:{port}"), TOKEN);
    let out = cli(&stopped, &["account", "list"]).await;
    assert_eq!(out.code, Some(2), "{out:#?}");
    assert!(
        out.stderr.contains(&format!(
            "cannot reach the relay's admin API at http://127.0.0.1:{port}: connection \
             refused — is `optin-relay serve` running with this config?"
        )),
        "{out:#?}"
    );
    // --url points elsewhere; the token still comes from the config
    let url = format!("http://{http}/");
    let out = cli(&stopped, &["policy", "status", "--url", &url]).await;
    assert!(out.ok().contains("generation:"), "{out:#?}");
    let out = cli(&stopped, &["queue", "list", "--live", "--url", &url]).await;
    assert!(out.ok().contains("0 of 0 message(s) shown"), "{out:#?}");
    let out = cli(&stopped, &["policy", "status", "--url", "https://x:1"]).await;
    assert_eq!(out.code, Some(2), "{out:#?}");
    assert!(out.stderr.contains("https is not supported"), "{out:#?}");

    // the operator listener off in the config
    let off = s.config_with("off.toml", "", TOKEN);
    let out = cli(&off, &["queue", "summary"]).await;
    assert_eq!(out.code, Some(2), "{out:#?}");
    assert!(
        out.stderr.contains("the operator listener is off"),
        "{out:#?}"
    );

    // bad usage
    for args in [
        &["queue", "show", "0000000000000001", "--json"][..],
        &["queue", "list", "--url", "http://127.0.0.1:1"],
        &["account", "freeze", "shop"],
        &["suppress", "check", "a@x.example", "--list", "news"],
    ] {
        let out = s.cli(args).await;
        assert_eq!(out.code, Some(2), "{args:?}: {out:#?}");
    }
    s.relay.shutdown().await;
}

#[tokio::test]
async fn campaign_verbs_declare_list_release_and_decline() {
    let s = setup().await;
    let out = s
        .cli(&["campaign", "declare", "shop", "spring", "--size", "30"])
        .await;
    assert!(
        out.ok()
            .contains("campaign spring of shop: size 30 declared, canary 3"),
        "{out:#?}"
    );
    let out = s.cli(&["campaign", "list"]).await;
    let text = out.ok();
    assert!(text.contains("spring") && text.contains("canary"), "{text}");
    assert!(text.contains("1 campaign(s)"), "{text}");
    let out = s
        .cli(&["campaign", "show", "shop", "spring", "--json"])
        .await;
    assert_eq!(out.json()["canary_size"], 3);
    let out = s.cli(&["campaign", "show", "shop", "spring"]).await;
    assert!(out.ok().contains("declared:     30 recipients"), "{out:#?}");
    let out = s.cli(&["campaign", "release", "shop", "spring"]).await;
    assert!(out.ok().contains("released"), "{out:#?}");
    // a second verdict is refused by the API: exit 1 with its reason
    let out = s
        .cli(&["campaign", "decline", "shop", "spring", "--reason", "late"])
        .await;
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stderr.contains("(HTTP 409)"), "{out:#?}");
    s.cli(&["campaign", "declare", "shop", "autumn", "--size", "10"])
        .await
        .ok();
    let out = s
        .cli(&[
            "campaign",
            "decline",
            "shop",
            "autumn",
            "--reason",
            "wrong list",
        ])
        .await;
    assert!(out.ok().contains("declined"), "{out:#?}");
    let out = s.cli(&["campaign", "show", "shop", "nope"]).await;
    assert_eq!(out.code, Some(1), "{out:#?}");
    s.relay.shutdown().await;
}

#[tokio::test]
async fn every_new_verb_has_help() {
    let config = Path::new("/nonexistent/optin-relay.toml");
    for verb in [
        &["queue", "summary"][..],
        &["queue", "list"],
        &["queue", "show"],
        &["queue", "retry"],
        &["queue", "bounce"],
        &["queue", "delete"],
        &["account"],
        &["account", "list"],
        &["account", "show"],
        &["account", "freeze"],
        &["account", "unfreeze"],
        &["suppress", "check"],
        &["suppress", "add"],
        &["erase"],
        &["policy"],
        &["policy", "status"],
        &["policy", "reload"],
        &["campaign"],
        &["campaign", "list"],
        &["campaign", "show"],
        &["campaign", "declare"],
        &["campaign", "release"],
        &["campaign", "decline"],
    ] {
        let mut args = verb.to_vec();
        args.push("--help");
        let out = cli(config, &args).await;
        let text = out.ok();
        assert!(text.contains("Usage: optin-relay"), "{verb:?}: {text}");
        if verb.len() > 1 && verb[0] != "suppress" || verb == ["erase"] {
            assert!(text.contains("--json"), "{verb:?}: {text}");
        }
    }
}
