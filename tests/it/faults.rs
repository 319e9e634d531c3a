//! Storage faults (issue 12, items 10-13): a damaged spool, a damaged or deleted lists
//! snapshot, an emptied policy. The delivery side runs in-process with paused time; the
//! rest against the real binary, restarted over the damaged files. The disk-full half of
//! item 10 needs a small filesystem and lives in `tests/interop/faults.sh`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use optin_relay::envelope::Envelope;
use optin_relay::spool::{Location, Spool};

use crate::support::engine::{Engine, settings, spool_config};
use crate::support::{self, FakeMx, InMemoryMx, MxOptions, eventually, settle};

fn envelope(spool: &Spool, sender: Option<&str>, rcpt: &str) -> Envelope {
    support::envelope::transactional(spool.next_id(), "acct", sender, [rcpt.to_string()])
}

/// Flips one bit near the end of a stored message's content.
fn damage_body(spool_dir: &Path, loc: Location) {
    let path = spool_dir.join(format!("queue/{:016x}.msg", loc.segment));
    let mut data = std::fs::read(&path).unwrap();
    data[(loc.offset + loc.len - 4) as usize] ^= 0x20;
    std::fs::write(&path, &data).unwrap();
}

/// Item 11: a message whose content no longer verifies when delivery reads it back (here:
/// for its first retry) is returned to its sender once, with a DSN built from the envelope,
/// and never tried again; a null sender's is dropped without a DSN. Before, each was read
/// again every `retry_max`, forever, with an ERROR each time.
#[tokio::test(start_paused = true)]
async fn a_message_damaged_in_the_spool_is_returned_once_not_retried_forever() {
    let mx = FakeMx::new(MxOptions::default());
    let delivery = "retry_initial = \"5m\"\nretry_max = \"1h\"\nmax_age = \"5d\"\n";
    let transport = Arc::new(InMemoryMx(mx.clone()));
    let engine = Engine::start(tempfile::tempdir().unwrap(), settings(delivery), transport);
    let (spool, dir) = (&engine.spool, &engine.dir);
    let body = Bytes::from_static(b"Subject: damaged later\r\n\r\nbody of the message\r\n");
    let mut locs = Vec::new();
    for (sender, rcpt) in [
        (Some("app@shop.example"), "tempfail1@x.example"),
        (None, "tempfail2@x.example"),
    ] {
        let env = envelope(spool, sender, rcpt);
        locs.push(engine.submit(env, body.clone()).await);
    }
    // Both first attempts are deferred (451); the messages wait for their retry.
    eventually(Duration::from_secs(60), "both first attempts", async || {
        mx.rcpt_attempts() == 2
    })
    .await;
    spool.flush().await.unwrap();
    for loc in &locs {
        damage_body(dir.path(), *loc);
    }

    let got = mx.wait_for(1, Duration::from_secs(2 * 3600)).await;
    assert_eq!(got[0].mail_from, "", "a DSN comes from the null sender");
    assert_eq!(got[0].rcpt_to, ["app@shop.example"]);
    let status = got[0].dsn_status();
    support::assert_has(
        &status,
        &[
            "Final-Recipient: rfc822; tempfail1@x.example",
            "Action: failed",
            "Status: 5.3.0",
            "damaged",
        ],
    );
    let returned = String::from_utf8_lossy(&got[0].data).into_owned();
    assert!(
        !returned.contains("body of the message") && !returned.contains("damaged later"),
        "no damaged content is quoted:\n{returned}"
    );
    // Days later: nothing was tried again, no DSN for the null sender, nothing queued.
    tokio::time::sleep(Duration::from_secs(6 * 86400)).await;
    assert_eq!(mx.delivered().len(), 1);
    assert_eq!(
        mx.rcpt_attempts(),
        3,
        "two first attempts and the DSN, nothing more"
    );
    spool.flush().await.unwrap();
    assert!(Spool::inspect(dir.path()).unwrap().is_empty());
    let quarantined = std::fs::read_dir(dir.path().join("quarantine"))
        .unwrap()
        .count();
    assert_eq!(
        quarantined, 2,
        "each damaged record is kept for the operator"
    );
    engine.stop().await;
}

/// Item 11, at start: a message recovered from the spool whose content no longer verifies
/// is returned when its first attempt reads it, once.
#[tokio::test(start_paused = true)]
async fn a_message_damaged_before_a_restart_is_returned_once() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(&spool_config(dir.path())).unwrap();
    let env = envelope(&spool, Some("app@shop.example"), "reader@x.example");
    let body = Bytes::from_static(b"Subject: stored\r\n\r\nbody of the message\r\n");
    let loc = spool.store(&env, body).await.unwrap();
    spool.flush().await.unwrap();
    drop(spool);
    damage_body(dir.path(), loc);

    let mx = FakeMx::new(MxOptions::default());
    let engine = Engine::start(dir, settings(""), Arc::new(InMemoryMx(mx.clone())));
    assert_eq!(engine.recovered, 1, "recovery reads envelopes only");
    let got = mx.wait_for(1, Duration::from_secs(600)).await;
    assert_eq!(
        (got[0].mail_from.as_str(), got[0].rcpt_to.as_slice()),
        ("", &["app@shop.example".to_string()][..])
    );
    let status = got[0].dsn_status();
    assert!(status.contains("Status: 5.3.0"), "{status}");
    tokio::time::sleep(Duration::from_secs(6 * 86400)).await;
    assert_eq!(mx.delivered().len(), 1);
    assert_eq!(
        mx.rcpt_attempts(),
        1,
        "the damaged message itself never went out"
    );
    engine.spool.flush().await.unwrap();
    assert!(Spool::inspect(engine.dir.path()).unwrap().is_empty());
    engine.stop().await;
}

// ---- against the real binary --------------------------------------------------------------

const TOKEN: &str = "faults-admin-token-0123456789";
const LOOPBACK: &str = "[accounts.local]\nnetworks = [\"127.0.0.0/8\"]\n";

/// A relay run as its own process: its directory, config and addresses.
struct Binary {
    dir: std::path::PathBuf,
    config: std::path::PathBuf,
    smtp: std::net::SocketAddr,
    /// The operator listener: admin API and metrics.
    admin: std::net::SocketAddr,
}

impl Binary {
    /// Writes a config delivering to `smarthost`, with the policy file `policy.toml` holding
    /// `policy`; `token`: the admin token in the config (else the relay makes a token file).
    fn new(dir: &Path, smarthost: std::net::SocketAddr, policy: &str, token: bool) -> Binary {
        let smtp = support::free_addr();
        let admin_addr = support::free_addr();
        std::fs::write(dir.join("policy.toml"), policy).unwrap();
        let token = if token {
            format!("token = \"{TOKEN}\"\n")
        } else {
            String::new()
        };
        let config = dir.join("relay.toml");
        std::fs::write(
            &config,
            format!(
                "[smtp]\nlisten = \"{smtp}\"\nhostname = \"relay.test\"\n\
                 [spool]\npath = \"{spool}\"\n\
                 [delivery]\nsmarthost = \"{smarthost}\"\nretry_initial = \"1s\"\n\
                 retry_max = \"2s\"\nconnection_idle_timeout = \"1s\"\n\
                 [http]\nlisten = \"\"\n[admin]\nlisten = \"{admin_addr}\"\n{token}\
                 [policy]\npath = \"{policy}\"\nwatch_interval = \"100ms\"\n\
                 [lists]\nrefresh_interval = \"100ms\"\n",
                spool = dir.join("spool").display(),
                policy = dir.join("policy.toml").display(),
            ),
        )
        .unwrap();
        Binary {
            dir: dir.to_path_buf(),
            config,
            smtp,
            admin: admin_addr,
        }
    }

    fn spool(&self) -> std::path::PathBuf {
        self.dir.join("spool")
    }

    /// `optin-relay --config CONFIG ARGS…` under a umask that takes nothing away (`000`),
    /// so every private mode must come from the relay itself.
    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new("/bin/sh");
        c.arg("-c")
            .arg("umask 000 && exec \"$0\" \"$@\"")
            .arg(env!("CARGO_BIN_EXE_optin-relay"))
            .arg("--config")
            .arg(&self.config)
            .args(args);
        c
    }

    /// Runs a command to its end; its exit status and what it printed.
    fn run(&self, args: &[&str]) -> (bool, String) {
        let out = self.command(args).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// `serve`, once it listens.
    async fn serve(&self) -> std::process::Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("relay.log"))
            .unwrap();
        let mut child = self
            .command(&["serve"])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        for _ in 0..500 {
            if tokio::net::TcpStream::connect(self.smtp).await.is_ok() {
                return child;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the relay exited ({status}):\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the relay does not listen:\n{}", self.log());
    }

    /// `serve` when it must refuse to start: its exit status is a failure, and its output.
    async fn refused(&self) -> String {
        let mut child = self
            .command(&["serve"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        for _ in 0..500 {
            if child.try_wait().unwrap().is_some() {
                let out = child.wait_with_output().unwrap();
                assert!(!out.status.success());
                return String::from_utf8_lossy(&out.stderr).into_owned();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        panic!("the relay started although it should have refused");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("relay.log")).unwrap_or_default()
    }

    async fn api(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        support::http_as(self.admin, Some(TOKEN), method, path, body).await
    }
}

/// SIGTERM, then waits for the exit (the relay drains and exits 0).
async fn terminate(mut child: std::process::Child) {
    unsafe extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    // SAFETY: signals a child process this test started and has not reaped.
    unsafe { kill(child.id() as i32, 15) };
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
}

/// The reply to `RCPT TO:<to>` after `MAIL FROM:<app@shop.example>`.
async fn rcpt_reply(addr: std::net::SocketAddr, to: &str) -> String {
    support::rcpt_reply(addr, "app@shop.example", to).await
}

/// Item 11 against the binary: a flipped bit in a segment's header cost every message in
/// the segment (it was quarantined whole). Every record verifies on its own, so all of
/// them are delivered after the restart.
#[tokio::test]
async fn a_corrupted_segment_header_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    // First nobody answers at the next hop, so the mail stays queued.
    let closed = support::free_addr();
    let relay = Binary::new(dir.path(), closed, LOOPBACK, true);
    let child = relay.serve().await;
    let mut sent = Vec::new();
    for i in 0..25 {
        let to = format!("reader{i}@x.example");
        support::send_ok(
            relay.smtp,
            "app@shop.example",
            &[&to],
            &format!("Subject: {i}\r\n\r\nmessage {i}"),
        )
        .await;
        sent.push(to);
    }
    terminate(child).await;
    let queue = relay.spool().join("queue");
    let segment = std::fs::read_dir(&queue)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "msg"))
        .unwrap();
    let mut data = std::fs::read(&segment).unwrap();
    data[2] ^= 0x08; // in the magic
    std::fs::write(&segment, &data).unwrap();

    let mx = FakeMx::new(MxOptions::default());
    let mx_addr = mx.listen().await;
    let relay = Binary::new(dir.path(), mx_addr, LOOPBACK, true);
    let child = relay.serve().await;
    let got = mx.wait_for(sent.len(), Duration::from_secs(30)).await;
    let mut delivered: Vec<String> = got.into_iter().flat_map(|d| d.rcpt_to).collect();
    delivered.sort();
    delivered.dedup();
    sent.sort();
    assert_eq!(delivered, sent, "log:\n{}", relay.log());
    assert!(relay.log().contains("damaged spool data quarantined"));
    terminate(child).await;
    // Only the 16 damaged octets were put aside, and `queue list` says so.
    let (ok, out) = relay.run(&["queue", "list"]);
    assert!(
        ok && out.contains("1 damaged piece(s) of spool data kept in"),
        "{out}"
    );
}

/// A next hop's reply text reaches the log escaped: control characters in it cannot start
/// a forged log line or drive the operator's terminal.
#[tokio::test]
async fn a_hostile_next_hop_cannot_forge_log_lines() {
    let dir = tempfile::tempdir().unwrap();
    let mx = FakeMx::new(MxOptions::default());
    let relay = Binary::new(dir.path(), mx.listen().await, LOOPBACK, true);
    let child = relay.serve().await;
    support::send_ok(
        relay.smtp,
        "",
        &["hostile@far.example"],
        "Subject: x\r\n\r\nx\r\n",
    )
    .await;
    let log = async || relay.log();
    let log = settle(Duration::from_secs(10), log, |l| l.contains("bounced")).await;
    terminate(child).await;
    let line = log
        .lines()
        .find(|l| l.contains("bounced"))
        .unwrap_or_else(|| panic!("no bounce logged:\n{log}"));
    assert!(line.contains("gone\\u{1b}[2J\\r2026-12-05"), "{line}");
    assert!(!log.contains('\x1b') && !log.contains('\x07') && !log.contains('\r'));
    assert!(!log.lines().any(|l| l.starts_with("2026-12-05T00:00:00Z")));
}

/// Item 12 against the binary: the lists snapshot deleted under the running relay, then a
/// restart. Suppressions stay in force while it runs, and it refuses to start without them.
#[tokio::test]
async fn a_deleted_lists_snapshot_keeps_suppressions_and_stops_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mx = FakeMx::new(MxOptions::default());
    let relay = Binary::new(dir.path(), mx.listen().await, LOOPBACK, true);
    let blocked = dir.path().join("blocked.txt");
    std::fs::write(&blocked, "blocked@x.example\n").unwrap();
    let blocked_arg = blocked.to_str().unwrap();
    let (ok, out) = relay.run(&["lists", "import", "--kind", "suppression", blocked_arg]);
    assert!(ok, "{out}");
    let child = relay.serve().await;
    assert!(
        rcpt_reply(relay.smtp, "blocked@x.example")
            .await
            .starts_with("550")
    );

    std::fs::remove_file(relay.spool().join("lists/snapshot")).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let reply = rcpt_reply(relay.smtp, "blocked@x.example").await;
    assert!(reply.starts_with("550"), "suppression lost: {reply}");
    assert!(
        rcpt_reply(relay.smtp, "other@x.example")
            .await
            .starts_with("250")
    );
    let (_, metrics) = support::http(relay.admin, "GET", "/metrics", "").await;
    assert_eq!(
        support::sample(&metrics, "optin_lists_snapshot_refused"),
        Some(1.0)
    );
    assert!(relay.log().contains("is missing"), "{}", relay.log());
    terminate(child).await;

    let refusal = relay.refused().await;
    assert!(
        refusal.contains("lists/snapshot is missing") && refusal.contains("--rebuild"),
        "{refusal}"
    );
    // Compiling would have dropped every entry: refused too, until a rebuild on purpose.
    let (ok, out) = relay.run(&["lists", "compile"]);
    assert!(!ok && out.contains("is missing"), "{out}");
    let (ok, out) = relay.run(&[
        "lists",
        "import",
        "--rebuild",
        "--kind",
        "suppression",
        blocked_arg,
    ]);
    assert!(ok, "{out}");
    let child = relay.serve().await;
    assert!(
        rcpt_reply(relay.smtp, "blocked@x.example")
            .await
            .starts_with("550")
    );
    terminate(child).await;
}

/// Item 13 against the binary: an emptied policy file was loaded live and every client got
/// `554 5.7.1`. It is refused like any bad policy, as is one that drops every account with
/// queued mail, and `serve` does not start on it.
#[tokio::test]
async fn an_emptied_policy_is_refused_live_and_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mx = FakeMx::new(MxOptions::default());
    let relay = Binary::new(dir.path(), mx.listen().await, LOOPBACK, true);
    let child = relay.serve().await;
    // Mail of the account stays queued (the next hop defers it).
    support::send_ok(
        relay.smtp,
        "app@shop.example",
        &["tempfail@x.example"],
        "Subject: q\r\n\r\nq",
    )
    .await;

    std::fs::write(dir.path().join("policy.toml"), "").unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let reply = rcpt_reply(relay.smtp, "reader@x.example").await;
    assert!(
        reply.starts_with("250"),
        "the empty policy was put in force: {reply}"
    );
    let (_, status) = relay.api("GET", "/admin/policy", "").await;
    assert!(status.contains("no account"), "{status}");
    let (_, metrics) = support::http(relay.admin, "GET", "/metrics", "").await;
    assert_eq!(
        support::sample(&metrics, "optin_policy_reloads_total{result=\"refused\"}"),
        Some(1.0)
    );

    // A policy without the account that has queued mail.
    std::fs::write(
        dir.path().join("policy.toml"),
        "[accounts.shop]\nnetworks = [\"192.0.2.0/24\"]\n",
    )
    .unwrap();
    let (code, body) = relay.api("POST", "/admin/policy/reload", "").await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains("drops every account that has mail in the queue (local)"),
        "{body}"
    );
    assert!(
        rcpt_reply(relay.smtp, "reader@x.example")
            .await
            .starts_with("250")
    );
    terminate(child).await;

    std::fs::write(dir.path().join("policy.toml"), "").unwrap();
    let refusal = relay.refused().await;
    assert!(refusal.contains("no account"), "{refusal}");
}

/// Item 16 against the binary: under a umask that takes nothing away, every file the relay
/// and its CLI create is 0600 and every directory 0700 — spool segments and journals,
/// quarantine, state, events, the delivery log, lists, keys, the admin token — and a loose
/// segment from an older version is tightened. An admin token file others can read is
/// refused at start.
#[tokio::test]
async fn files_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mx = FakeMx::new(MxOptions::default());
    let relay = Binary::new(dir.path(), mx.listen().await, LOOPBACK, false);
    let list = dir.path().join("consent.txt");
    std::fs::write(&list, "reader@x.example\n").unwrap();
    let (ok, out) = relay.run(&[
        "lists",
        "import",
        "--kind",
        "suppression",
        list.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let (ok, out) = relay.run(&["suppress", "add", "other@x.example"]);
    assert!(ok, "{out}");
    // A segment an older version left, world-readable and with a torn tail (quarantine).
    let queue = relay.spool().join("queue");
    std::fs::create_dir_all(&queue).unwrap();
    let old = queue.join(format!("{:016x}.msg", 7));
    let mut bytes = optin_relay::spool::format::segment_header().to_vec();
    bytes.extend_from_slice(b"ORM1 a torn record");
    std::fs::write(&old, &bytes).unwrap();
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();

    let child = relay.serve().await;
    support::send_ok(
        relay.smtp,
        "app@shop.example",
        &["tempfail@x.example"],
        "Subject: p\r\n\r\np",
    )
    .await;
    let token = std::fs::read_to_string(relay.spool().join("admin.token")).unwrap();
    let (code, body) = support::http_as(
        relay.admin,
        Some(token.trim()),
        "POST",
        "/admin/accounts/local/freeze",
        "{\"reason\": \"mode test\"}",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    // The deferral is journaled and logged.
    settle(
        Duration::from_secs(5),
        async || mx.rcpt_attempts(),
        |n| *n > 0,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    terminate(child).await;

    let mut seen = Vec::new();
    let mut loose = Vec::new();
    let mut stack = vec![relay.spool()];
    while let Some(d) = stack.pop() {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        if mode != 0o700 {
            loose.push(format!("{} {mode:o}", d.display()));
        }
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            if mode != 0o600 {
                loose.push(format!("{} {mode:o}", p.display()));
            }
            seen.push(p.strip_prefix(relay.spool()).unwrap().display().to_string());
        }
    }
    seen.sort();
    assert!(loose.is_empty(), "not private: {loose:?}");
    for wanted in [
        "admin.token",
        "log.key",
        "unsubscribe.keys",
        "state/frozen.json",
        "events/freezes.jsonl",
        "lists/secret",
        "lists/snapshot",
        "lists/snapshot.expected",
        "lock",
    ] {
        assert!(seen.iter().any(|s| s == wanted), "{wanted} not in {seen:?}");
    }
    for prefix in ["queue/", "quarantine/", "log/delivery-", "lists/journal."] {
        assert!(
            seen.iter().any(|s| s.starts_with(prefix)),
            "no {prefix}* in {seen:?}"
        );
    }

    let token = relay.spool().join("admin.token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o640)).unwrap();
    let refusal = relay.refused().await;
    assert!(
        refusal.contains("admin token file") && refusal.contains("mode 640"),
        "{refusal}"
    );
}
