//! Personal data through a running relay. An erasure leaves no plain copy of the address
//! anywhere under the spool directory — spool records (envelopes and content, also of a
//! message already delivered whose segment is still live), the unsubscribe event log —
//! while another recipient of the same message stays queued with sound checksums, a copy
//! for someone else is delivered without the address, and a restart recovers the scrubbed
//! spool without quarantining anything. Retention runs when the relay starts, and the
//! delivery log is written per day.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{self, Account, Admin, FakeMx, MxOptions, SIGNED_UP, poll, send_ok};

const TOKEN: &str = "privacy-token-0123456789";
const ADDRESS: &str = "tempfail-erase@example.net";

/// `shop` sends both streams; marketing to its list `deals`.
fn policy() -> String {
    support::policy(&[Account::shop().list("deals", SIGNED_UP)], "")
}

fn config(mx: SocketAddr) -> String {
    format!(
        "[delivery]\nsmarthost = \"{mx}\"\nretry_initial = \"1h\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"
    )
}

/// One request to the admin API: the status and the body (JSON, or a string).
async fn call(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    Admin::new(addr, TOKEN).call(method, path, body).await
}

/// Waits until every queued recipient had its first attempt, and the queue holds `n`
/// messages; returns the message list.
async fn settled(http: SocketAddr, n: usize) -> Vec<Value> {
    let what = format!("the queue settled at {n} messages");
    poll(Duration::from_secs(5), &what, async || {
        let (_, list) = call(http, "GET", "/admin/queue/messages", None).await;
        let list = list["messages"].as_array().cloned().unwrap_or_default();
        let busy = list.iter().any(|m| {
            m["recipients"].as_array().unwrap().iter().any(|r| {
                r["status"] == "in_flight" || (r["status"] == "waiting" && r["attempts"] == 0)
            })
        });
        (list.len() == n && !busy).then_some(list)
    })
    .await
}

/// Every file under `dir` whose octets hold `text`, in any ASCII case.
fn files_holding(dir: &Path, text: &str) -> Vec<PathBuf> {
    let needle = text.to_ascii_lowercase();
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path).is_ok_and(|b| {
                b.to_ascii_lowercase()
                    .windows(needle.len())
                    .any(|w| w == needle.as_bytes())
            }) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// Unsubscribes `address` from `shop`'s list `deals` the way a recipient does: a one-click
/// POST of a token sealed with the relay's own keys.
async fn unsubscribe(http: SocketAddr, spool: &Path, address: &str) {
    let keys =
        optin_relay::rewrite::token::TokenKeys::load_or_create(&spool.join("unsubscribe.keys"))
            .unwrap();
    let token = keys.seal(&optin_relay::rewrite::token::Unsubscribe {
        account: "shop".into(),
        list: "deals".into(),
        address: address.into(),
    });
    let path = format!("/u/{token}");
    let (status, text) = support::http(http, "POST", &path, "List-Unsubscribe=One-Click").await;
    assert_eq!(status, 200, "{text}");
}

#[tokio::test]
async fn an_erasure_leaves_no_plain_copy_and_the_others_still_get_their_mail() {
    let mx = FakeMx::new(MxOptions {
        flaky_failures: 1,
        ..MxOptions::default()
    });
    let mx_addr = mx.listen().await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let relay = support::start_relay(dir.path(), &config(mx_addr), &policy()).await;
    let http = relay.admin_addr.unwrap();
    let smtp = relay.smtp_addrs[0];

    // Delivered at once, but its record stays in the segment the queued mail keeps live.
    send_ok(
        smtp,
        "app@shop.example",
        &["accept@example.net"],
        &format!("From: <app@shop.example>\r\nSubject: delivered\r\n\r\nCc'd: {ADDRESS}"),
    )
    .await;
    mx.wait_for(1, Duration::from_secs(10)).await;
    // Queued (451) for the address and someone else.
    send_ok(
        smtp,
        "app@shop.example",
        &[ADDRESS, "tempfail-keep@example.net"],
        "From: <app@shop.example>\r\nSubject: two\r\n\r\nhello",
    )
    .await;
    // For someone else, about the address: in the To: field and the text.
    send_ok(
        smtp,
        "app@shop.example",
        &["flaky-keep@example.net"],
        &format!("From: <app@shop.example>\r\nTo: Tempfail-Erase@Example.net\r\nSubject: about\r\n\r\nWrite to <{ADDRESS}>."),
    ).await;
    settled(http, 2).await;
    unsubscribe(relay.http_addr.unwrap(), &spool, ADDRESS).await;
    let before = files_holding(&spool, ADDRESS);
    let names: Vec<String> = before
        .iter()
        .map(|p| p.strip_prefix(&spool).unwrap().display().to_string())
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("queue/") && n.ends_with(".msg"))
            && names.contains(&"events/unsubscribes.jsonl".to_string()),
        "{names:?}"
    );

    let (status, v) = call(
        http,
        "POST",
        "/admin/erase",
        Some(json!({"address": "Tempfail-Erase@Example.NET"})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["queued_recipients_dropped"], 1, "{v}");
    assert_eq!(v["scrubbed"]["spool_records"], 3, "{v}");
    assert_eq!(v["scrubbed"]["event_lines"], 1, "{v}");
    assert_eq!(v["scrubbed"]["damaged_spool_records"], 0, "{v}");
    assert_eq!(
        files_holding(&spool, ADDRESS),
        [] as [PathBuf; 0],
        "a plain copy is left"
    );

    // The copy for someone else is still delivered, without the address.
    let list = settled(http, 2).await;
    let about = list
        .iter()
        .find(|m| m["recipients"].as_array().unwrap().len() == 1)
        .unwrap();
    let id = about["id"].as_str().unwrap();
    let (status, v) = call(
        http,
        "POST",
        &format!("/admin/queue/messages/{id}/retry"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let got = mx.wait_for(2, Duration::from_secs(10)).await;
    let text = got[1].text();
    assert_eq!(got[1].rcpt_to, ["flaky-keep@example.net"]);
    assert!(
        text.contains("To: xxxxxxxxxxxxxx@xxxxxxx.xxx\r\n"),
        "{text}"
    );
    assert!(
        text.contains("Write to <xxxxxxxxxxxxxx@xxxxxxx.xxx>."),
        "{text}"
    );
    assert!(!text.to_ascii_lowercase().contains(ADDRESS), "{text}");

    // The other recipient of the shared message is still queued, and every record reads
    // back with sound checksums.
    let list = settled(http, 1).await;
    assert_eq!(list[0]["recipients"][1]["status"], "waiting");
    relay.shutdown().await;
    let inspected = optin_relay::spool::Spool::inspect(&spool).unwrap();
    assert_eq!(inspected.len(), 1);
    let m = &inspected[0];
    assert_eq!(
        m.envelope.recipients[0].address,
        "xxxxxxxxxxxxxx@xxxxxxx.xxx"
    );
    assert!(m.envelope.recipients[0].done);
    assert_eq!(
        m.envelope.recipients[1].address,
        "tempfail-keep@example.net"
    );
    assert_eq!(m.pending().collect::<Vec<_>>(), [1]);
    let segment = std::fs::read(spool.join(format!("queue/{:016x}.msg", m.loc.segment))).unwrap();
    let record = &segment[m.loc.offset as usize..(m.loc.offset + m.loc.len) as usize];
    optin_relay::spool::format::decode_record(record).expect("sound checksums");

    // A restart recovers it as it is: nothing quarantined, nothing repaired.
    let (reopened, report) = optin_relay::spool::Spool::open(&optin_relay::config::SpoolConfig {
        path: spool.clone(),
        fsync: true,
        segment_size: 64 << 20,
    })
    .unwrap();
    assert_eq!((report.quarantined, report.repaired), (0, 0), "{report:?}");
    assert_eq!(report.messages.len(), 1);
    drop(reopened);
    let relay = support::start_relay(dir.path(), &config(mx_addr), &policy()).await;
    let list = settled(relay.admin_addr.unwrap(), 1).await;
    assert_eq!(list[0]["recipients"][1]["status"], "waiting");
    assert_eq!(
        std::fs::read_dir(spool.join("quarantine")).unwrap().count(),
        0
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn retention_runs_when_the_relay_starts_and_the_delivery_log_is_daily() {
    use optin_relay::privacy::retention::{DAY_MS, day_file};
    let mx = FakeMx::new(MxOptions::default());
    let mx_addr = mx.listen().await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let log = spool.join("log/delivery.jsonl");
    let now = optin_relay::envelope::now_ms();
    let today = now / DAY_MS;
    // Left by an earlier run: a day file past 30 days, one within, and event lines.
    std::fs::create_dir_all(spool.join("log")).unwrap();
    std::fs::create_dir_all(spool.join("events")).unwrap();
    std::fs::write(day_file(&log, today - 40), "{}\n").unwrap();
    std::fs::write(day_file(&log, today - 3), "{}\n").unwrap();
    std::fs::write(
        spool.join("events/unsubscribes.jsonl"),
        format!(
            "{{\"time_ms\":{},\"address\":\"old@example.net\"}}\n\
             {{\"time_ms\":{},\"address\":\"new@example.net\"}}\n",
            now - 100 * DAY_MS,
            now - DAY_MS
        ),
    )
    .unwrap();
    let relay = support::start_relay(
        dir.path(),
        &format!(
            "{}[privacy]\ndelivery_log_days = 30\nevent_log_days = 90\n",
            config(mx_addr)
        ),
        &policy(),
    )
    .await;
    send_ok(
        relay.smtp_addrs[0],
        "app@shop.example",
        &["someone@example.net"],
        "From: <app@shop.example>\r\nSubject: hi\r\n\r\nhi",
    )
    .await;
    mx.wait_for(1, Duration::from_secs(10)).await;
    let events = poll(
        Duration::from_secs(5),
        "the sweep at start removed the expired data",
        async || {
            let events = std::fs::read_to_string(spool.join("events/unsubscribes.jsonl")).unwrap();
            (!day_file(&log, today - 40).exists() && !events.contains("old@")).then_some(events)
        },
    )
    .await;
    assert!(events.contains("new@"), "{events}");
    assert!(day_file(&log, today - 3).exists());
    relay.shutdown().await;
    // this run's lines are in today's file (or tomorrow's, at midnight); none undated
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let written: String = [today, today + 1]
        .iter()
        .map(|d| std::fs::read_to_string(day_file(&log, *d)).unwrap_or_default())
        .collect();
    assert!(written.contains("\"event\":\"delivered\""), "{written}");
    assert!(!log.exists());
}
