//! Hot reload of the policy file in a running relay, seen from the outside: the file
//! watcher picks up a good edit and the relay's replies change; a bad file is refused with
//! every problem while the running policy stays; rewriting the policy under steady traffic
//! loses no message and drops no session; the SIGHUP path; the embedded policy.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use optin_relay::reload::Trigger;
use optin_relay::server::Relay;

use crate::support::{self, Client, FakeMx, MxOptions, Running, eventually, start_relay};

/// Only 127.0.0.1 may send.
const NARROW: &str = "[accounts.local]\nnetworks = [\"127.0.0.1/32\"]\n";
/// All of loopback may send (127.0.0.2 too).
const WIDE: &str = "[accounts.local]\nnetworks = [\"127.0.0.0/8\"]\n";
/// Three problems; loaded anyway it would let 127.0.0.2 send.
const BAD: &str = r#"
[accounts.local]
networks = ["127.0.0.0/8", "not-a-network"]
colour = "blue"
[accounts.other]
networks = ["127.0.0.0/8"]
"#;
const BAD_PROBLEMS: [&str; 3] = [
    "accounts.local.colour: unknown key",
    "accounts.local.networks: \"not-a-network\" is not an address or network",
    "accounts.other.networks: 127.0.0.0/8 is already a network of account \"local\"",
];

/// The relay, its fake MX and its policy file.
struct Setup {
    relay: Relay,
    mx: FakeMx,
    policy: PathBuf,
    _dir: tempfile::TempDir,
}

/// A relay delivering to a fake MX, its policy read from a file holding `policy`.
async fn setup(policy: &str, watch_interval: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, policy).unwrap();
    let extra = format!(
        "[policy]\npath = \"{}\"\nwatch_interval = \"{watch_interval}\"\n",
        path.display()
    );
    let run = Running::start_in(dir, MxOptions::default(), &extra, policy).await;
    Setup {
        relay: run.relay,
        mx: run.mx,
        policy: path,
        _dir: run.dir,
    }
}

/// Replaces the policy file as editors do: write a new file, rename it over the old one.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// One whole transaction to `to`; every reply must be the expected one.
async fn send(c: &mut Client, to: &str) {
    c.expect("MAIL FROM:<app@shop.example>", "250").await;
    c.expect(&format!("RCPT TO:<{to}>"), "250").await;
    c.expect("DATA", "354").await;
    c.expect(&format!("Subject: {to}\r\n\r\nhello\r\n."), "250")
        .await;
}

/// The reply to RCPT for a client at `from_ip`, in a fresh session.
async fn rcpt_from(relay: &Relay, from_ip: &str) -> String {
    let mut c = Client::hello(relay.smtp_addrs[0], from_ip).await;
    let reply = c.rcpt("app@shop.example", "someone@example.net").await;
    c.quit().await;
    reply
}

#[tokio::test]
async fn a_good_edit_is_picked_up_by_the_watcher_and_changes_replies() {
    let s = setup(NARROW, "100ms").await;
    assert!(rcpt_from(&s.relay, "127.0.0.1").await.starts_with("250"));
    let denied = rcpt_from(&s.relay, "127.0.0.2").await;
    assert!(denied.starts_with("554 5.7.1"), "{denied}");
    let start = s.relay.reloader.status();
    assert_eq!(start.generation, 1);
    assert_eq!(start.path.as_deref(), s.policy.to_str());
    assert_eq!(start.last_attempt_ms, None);

    // Touched (same content, new file): not a change.
    replace(&s.policy, NARROW);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(s.relay.reloader.status().last_attempt_ms, None);

    // A session open across the reload keeps going, under the new policy from its next MAIL.
    let mut open = Client::hello(s.relay.smtp_addrs[0], "127.0.0.2").await;
    replace(&s.policy, WIDE);
    // Seen on one poll, loaded on the next: about two intervals (200 ms); the limit leaves
    // room for a loaded machine.
    eventually(Duration::from_secs(1), "the edit picked up", async || {
        s.relay.reloader.status().generation == 2
    })
    .await;
    let status = s.relay.reloader.status();
    assert_eq!(status.last_trigger.as_deref(), Some("file"));
    assert_eq!(status.last_error, None);
    assert!(status.loaded_at_ms >= start.loaded_at_ms);
    send(&mut open, "after@example.net").await;
    open.quit().await;
    assert!(rcpt_from(&s.relay, "127.0.0.2").await.starts_with("250"));
    let got = s.mx.wait_for(1, Duration::from_secs(2)).await;
    assert_eq!(got[0].rcpt_to, vec!["after@example.net"]);
    s.relay.shutdown().await;
}

#[tokio::test]
async fn a_bad_file_is_refused_with_every_problem_then_the_fix_is_picked_up() {
    let s = setup(NARROW, "100ms").await;
    replace(&s.policy, BAD);
    eventually(
        Duration::from_secs(1),
        "the bad file reported",
        async || s.relay.reloader.status().last_error.is_some(),
    )
    .await;
    let refused = s.relay.reloader.status();
    assert_eq!(refused.generation, 1, "a refused file is not a generation");
    assert_eq!(refused.last_trigger.as_deref(), Some("file"));
    assert_eq!(
        refused.last_error.as_deref(),
        Some(&BAD_PROBLEMS.map(String::from)[..])
    );
    // The running policy stays: the bad file would have let 127.0.0.2 in.
    assert!(rcpt_from(&s.relay, "127.0.0.1").await.starts_with("250"));
    assert!(
        rcpt_from(&s.relay, "127.0.0.2")
            .await
            .starts_with("554 5.7.1")
    );
    // Reported once, not at every poll.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        s.relay.reloader.status().last_attempt_ms,
        refused.last_attempt_ms
    );

    // Fixed in place (truncate and write, not a rename): picked up, the error cleared.
    std::fs::write(&s.policy, WIDE).unwrap();
    eventually(Duration::from_secs(1), "the fix picked up", async || {
        s.relay.reloader.status().generation == 2
    })
    .await;
    assert_eq!(s.relay.reloader.status().last_error, None);
    assert!(rcpt_from(&s.relay, "127.0.0.2").await.starts_with("250"));
    s.relay.shutdown().await;
}

/// Two good policies that both let the clients send, and differ elsewhere.
const TRAFFIC_A: &str =
    "operator_contacts = [\"abuse@relay.test\"]\n[accounts.local]\nnetworks = [\"127.0.0.0/8\"]\n";
const TRAFFIC_B: &str = "[accounts.local]\ndescription = \"B\"\nnetworks = [\"127.0.0.0/8\"]\n[throttles.\"*\"]\nconnections = 8\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reloads_under_traffic_lose_no_message_and_drop_no_session() {
    const CLIENTS: usize = 4;
    const RELOADS: u64 = 10;
    let s = setup(TRAFFIC_A, "50ms").await;
    let addr = s.relay.smtp_addrs[0];
    let done = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let done = done.clone();
            tokio::spawn(async move {
                // Each client sends until told to stop, five messages per session, so
                // sessions open, run transactions and close across the reloads.
                let mut sent = Vec::new();
                while !done.load(Ordering::SeqCst) {
                    let mut client = Client::hello(addr, "127.0.0.1").await;
                    for _ in 0..5 {
                        let to = format!("c{c}m{}@example.net", sent.len());
                        send(&mut client, &to).await;
                        sent.push(to);
                    }
                    client.quit().await;
                }
                sent
            })
        })
        .collect();

    for i in 0..RELOADS {
        let text = if i % 2 == 0 { TRAFFIC_B } else { TRAFFIC_A };
        // Mostly as an editor replaces a file; every third rewritten in place.
        if i % 3 == 0 {
            std::fs::write(&s.policy, text).unwrap();
        } else {
            replace(&s.policy, text);
        }
        eventually(
            Duration::from_secs(1),
            "a reload under traffic",
            async || s.relay.reloader.status().generation == 2 + i,
        )
        .await;
    }
    done.store(true, Ordering::SeqCst);
    let mut accepted = Vec::new();
    for c in clients {
        accepted.extend(c.await.expect("a client failed: see its panic above"));
    }
    let status = s.relay.reloader.status();
    assert_eq!((status.generation, status.last_error), (1 + RELOADS, None));
    assert!(
        accepted.len() >= 2 * CLIENTS,
        "too little traffic: {}",
        accepted.len()
    );
    let delivered = s.mx.wait_for(accepted.len(), Duration::from_secs(5)).await;
    let mut got: Vec<String> = delivered.into_iter().flat_map(|d| d.rcpt_to).collect();
    got.sort();
    accepted.sort();
    assert_eq!(
        got, accepted,
        "every message answered 250 reaches the MX, once"
    );
    s.relay.shutdown().await;
}

#[tokio::test]
async fn sighup_reloads_and_refuses_like_the_watcher() {
    // watch_interval = "0s": no watcher, only the signal reloads.
    let s = setup(NARROW, "0s").await;
    replace(&s.policy, WIDE);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rcpt_from(&s.relay, "127.0.0.2").await.starts_with("554"));
    assert_eq!(s.relay.reloader.status().last_attempt_ms, None);

    // What `serve` does on SIGHUP.
    assert_eq!(s.relay.reloader.reload(Trigger::Signal), Ok(2));
    assert!(rcpt_from(&s.relay, "127.0.0.2").await.starts_with("250"));
    let status = s.relay.reloader.status();
    assert_eq!(status.last_trigger.as_deref(), Some("signal"));
    assert!(status.last_attempt_ms.is_some());

    replace(&s.policy, BAD);
    assert_eq!(
        s.relay.reloader.reload(Trigger::Signal),
        Err(BAD_PROBLEMS.map(String::from).to_vec())
    );
    assert_eq!(s.relay.reloader.status().generation, 2);
    assert!(rcpt_from(&s.relay, "127.0.0.2").await.starts_with("250"));
    // A status is what GET /admin/policy will serve.
    let json = serde_json::to_value(s.relay.reloader.status()).unwrap();
    assert_eq!(json["generation"], 2);
    assert_eq!(json["last_trigger"], "signal");
    assert_eq!(json["last_error"].as_array().map(Vec::len), Some(3));
    s.relay.shutdown().await;
}

#[tokio::test]
async fn the_embedded_policy_says_it_cannot_be_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path(), "", support::LOOPBACK_POLICY).await;
    let problems = relay.reloader.reload(Trigger::Admin).unwrap_err();
    assert_eq!(
        problems,
        vec!["no policy file: the embedded policy cannot be reloaded"]
    );
    let status = relay.reloader.status();
    assert_eq!((status.path, status.generation), (None, 1));
    assert_eq!(status.last_error, Some(problems));
    assert_eq!(status.last_trigger.as_deref(), Some("admin"));
    relay.shutdown().await;
}

#[test]
fn watch_interval_defaults_to_2s_and_0s_turns_it_off() {
    use optin_relay::config::Config;
    let default = Config::from_toml("t", "").unwrap();
    assert_eq!(default.policy.watch_interval, Duration::from_secs(2));
    let off = Config::from_toml("t", "[policy]\nwatch_interval = \"0s\"\n").unwrap();
    assert!(off.policy.watch_interval.is_zero());
    let bad = Config::from_toml("t", "[policy]\nwatch_interval = 2\n").unwrap_err();
    assert_eq!(bad.list[0].path, "policy.watch_interval");
}
