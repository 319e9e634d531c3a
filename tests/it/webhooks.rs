//! Signed webhooks through a running relay: an unsubscribe and a hard bounce each reach the
//! account's endpoint as one signed JSON POST; a failing endpoint gets the event again
//! after the (shortened) backoff; events wait in the outbox across a restart; an account
//! without a webhook sends nothing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{self, Account, FakeMx, MxOptions, Running, SUBSCRIBED, token_of};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};

const WAIT: Duration = Duration::from_secs(20);
pub(crate) const SECRET: &str = "s3cret-s3cret-s3cret";

/// The account `news`, with a webhook to `hook` when given.
fn policy(hook: Option<SocketAddr>) -> String {
    let mut news = Account::news().list("weekly", SUBSCRIBED);
    if let Some(addr) = hook {
        news = news.table(
            "webhook",
            &format!("url = \"http://{addr}/hooks/optin?src=relay\"\nsecret = \"{SECRET}\""),
        );
    }
    support::policy(&[news], "")
}

/// After the smart host: quick retries, the public listener, quick webhook retries.
const CONFIG: &str = "retry_initial = \"100ms\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
                      [webhooks]\nretry_initial = \"100ms\"\n";

/// A relay delivering to a fake MX, with a webhook to `hook` when given.
async fn start(hook: Option<SocketAddr>) -> Running {
    Running::start(MxOptions::default(), CONFIG, &policy(hook)).await
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub(crate) struct Hit {
    headers: HeaderMap,
    body: Bytes,
    path: String,
    /// What the receiver answered.
    status: u16,
}

impl Hit {
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A webhook endpoint that records every request and answers 500 to the first
/// `fail_first`.
#[derive(Clone, Default)]
pub(crate) struct Receiver {
    fail_first: Arc<AtomicUsize>,
    hits: Arc<Mutex<Vec<Hit>>>,
    changed: Arc<tokio::sync::Notify>,
}

impl Receiver {
    pub(crate) fn new(fail_first: usize) -> Receiver {
        let r = Receiver::default();
        r.fail_first.store(fail_first, Ordering::SeqCst);
        r
    }

    /// Serves on `addr` (port 0: any).
    pub(crate) async fn listen(&self, addr: &str) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let bound = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .fallback(record)
            .with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        bound
    }

    pub(crate) fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Waits for `n` requests answered 2xx; returns all requests.
    pub(crate) async fn wait_delivered(&self, n: usize) -> Vec<Hit> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.changed.notified();
            let hits = self.hits();
            if hits.iter().filter(|h| h.status == 200).count() >= n {
                return hits;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("receiver: expected {n} deliveries, got {hits:#?}");
            }
        }
    }
}

async fn record(
    State(r): State<Receiver>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let fail = r
        .fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let status = if fail {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    r.hits.lock().unwrap().push(Hit {
        headers,
        body,
        path: uri.to_string(),
        status: status.as_u16(),
    });
    r.changed.notify_waiters();
    status
}

/// Recomputes the signature of `hit` with `secret`: HMAC-SHA256 over "<t>.<body>".
pub(crate) fn signature_verifies(hit: &Hit, secret: &str) -> bool {
    let header = hit.header("x-optin-signature");
    let Some((t, v1)) = header
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
    else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(&hit.body);
    let expected: String = ring::hmac::sign(&key, &signed)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let fresh = t
        .parse::<u64>()
        .is_ok_and(|t| t.abs_diff(optin_relay::envelope::now_ms() / 1000) < 300);
    expected == v1 && fresh
}

/// A form POST to the relay's HTTP listener: status and body.
async fn http(addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    support::http(addr, "POST", path, body).await
}

fn marketing(to: &str) -> String {
    format!(
        "From: News <hello@news.example>\r\nTo: <{to}>\r\nSubject: This week\r\nX-Optin-List: weekly\r\n\r\nHello.\r\n"
    )
}

/// Sends `reader@example.net` a marketing message and unsubscribes it with the one-click
/// POST of the delivered copy.
async fn unsubscribe_reader(relay: &optin_relay::server::Relay, mx: &FakeMx) {
    support::grant(relay, "news", "weekly", "reader@example.net");
    support::send_ok(
        relay.smtp_addrs[0],
        "bounce@news.example",
        &["reader@example.net"],
        &marketing("reader@example.net"),
    )
    .await;
    let got = mx.wait_for(1, WAIT).await;
    let token = token_of(&got[0].text());
    let (status, body) = http(
        relay.http_addr.unwrap(),
        &format!("/u/{token}"),
        "List-Unsubscribe=One-Click",
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// The event files waiting in the outbox.
fn outbox(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    match std::fs::read_dir(dir.join("spool/state/webhooks")) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test]
async fn an_unsubscribe_posts_one_signed_event() {
    let receiver = Receiver::new(0);
    let hook = receiver.listen("127.0.0.1:0").await;
    let (mx, relay, dir) = start(Some(hook)).await.into_parts();

    unsubscribe_reader(&relay, &mx).await;
    let hits = receiver.wait_delivered(1).await;
    assert_eq!(hits.len(), 1, "{hits:#?}");
    let hit = &hits[0];
    assert_eq!(hit.path, "/hooks/optin?src=relay");
    assert_eq!(hit.header("content-type"), "application/json");
    assert_eq!(hit.header("x-optin-event"), "unsubscribe");
    let body = hit.json();
    assert_eq!(hit.header("x-optin-id"), body["id"].as_str().unwrap());
    assert_eq!(body["account"], "news");
    assert_eq!(body["event"], "unsubscribe");
    assert_eq!(body["address"], "reader@example.net");
    assert_eq!(body["list"], "weekly");
    assert_eq!(body["detail"]["scope"], "list");
    assert_eq!(body["detail"]["via"], "http");
    let now = optin_relay::envelope::now_ms();
    let time_ms = body["time_ms"].as_u64().unwrap();
    assert!(time_ms <= now && now - time_ms < 60_000, "{body}");
    assert!(
        signature_verifies(hit, SECRET),
        "{:?}",
        hit.header("x-optin-signature")
    );
    assert!(!signature_verifies(hit, "another-secret-entirely"));

    // Delivered: the outbox is empty, and nothing else arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(outbox(dir.path()).is_empty());
    assert_eq!(receiver.hits().len(), 1);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_hard_bounce_posts_a_bounce_event() {
    let receiver = Receiver::new(0);
    let hook = receiver.listen("127.0.0.1:0").await;
    let Running {
        relay, dir: _dir, ..
    } = start(Some(hook)).await;

    support::grant(&relay, "news", "weekly", "permfail@example.net");
    support::send_ok(
        relay.smtp_addrs[0],
        "bounce@news.example",
        &["permfail@example.net"],
        &marketing("permfail@example.net"),
    )
    .await;
    let hits = receiver.wait_delivered(1).await;
    assert_eq!(hits.len(), 1, "{hits:#?}");
    let body = hits[0].json();
    assert_eq!(hits[0].header("x-optin-event"), "bounce");
    assert_eq!(body["event"], "bounce");
    assert_eq!(body["account"], "news");
    assert_eq!(body["address"], "permfail@example.net");
    assert_eq!(body["list"], "weekly");
    assert_eq!(body["detail"]["status"], "5.1.1");
    assert!(
        body["detail"]["diagnostic"]
            .as_str()
            .is_some_and(|d| d.contains("550")),
        "{body}"
    );
    assert!(signature_verifies(&hits[0], SECRET));
    relay.shutdown().await;
}

#[tokio::test]
async fn a_failing_receiver_gets_the_event_on_the_third_try() {
    let receiver = Receiver::new(2);
    let hook = receiver.listen("127.0.0.1:0").await;
    let (mx, relay, dir) = start(Some(hook)).await.into_parts();

    unsubscribe_reader(&relay, &mx).await;
    let hits = receiver.wait_delivered(1).await;
    let statuses: Vec<u16> = hits.iter().map(|h| h.status).collect();
    assert_eq!(statuses, vec![500, 500, 200]);
    // The same event each time (receivers dedupe on the id), each signed.
    let ids: Vec<&str> = hits.iter().map(|h| h.header("x-optin-id")).collect();
    assert!(
        ids.iter().all(|id| *id == ids[0] && !id.is_empty()),
        "{ids:?}"
    );
    assert!(hits.iter().all(|h| h.body == hits[0].body));
    assert!(hits.iter().all(|h| signature_verifies(h, SECRET)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(outbox(dir.path()).is_empty());
    assert_eq!(receiver.hits().len(), 3);
    relay.shutdown().await;
}

#[tokio::test]
async fn events_wait_in_the_outbox_across_a_restart() {
    // The receiver's port, with nothing listening yet: every attempt is refused.
    let hook = support::free_addr();
    let Running {
        mx,
        mx_addr,
        relay,
        dir,
    } = start(Some(hook)).await;
    unsubscribe_reader(&relay, &mx).await;
    // The event is on disk before the one-click POST is answered; let a few attempts fail.
    assert_eq!(outbox(dir.path()).len(), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    relay.shutdown().await;
    let files = outbox(dir.path());
    assert_eq!(files.len(), 1, "still waiting after the stop");
    let stored = std::fs::read(&files[0]).unwrap();

    let receiver = Receiver::new(0);
    receiver.listen(&hook.to_string()).await;
    let config = format!("[delivery]\nsmarthost = \"{mx_addr}\"\n{CONFIG}");
    let relay = support::start_relay(dir.path(), &config, &policy(Some(hook))).await;
    let hits = receiver.wait_delivered(1).await;
    assert_eq!(hits.len(), 1, "{hits:#?}");
    assert_eq!(
        hits[0].body.as_ref(),
        stored.as_slice(),
        "the stored body, as is"
    );
    assert_eq!(hits[0].json()["address"], "reader@example.net");
    assert!(signature_verifies(&hits[0], SECRET));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(outbox(dir.path()).is_empty());
    relay.shutdown().await;
}

#[tokio::test]
async fn an_account_without_a_webhook_sends_nothing() {
    let receiver = Receiver::new(0);
    receiver.listen("127.0.0.1:0").await;
    let (mx, relay, dir) = start(None).await.into_parts();

    unsubscribe_reader(&relay, &mx).await;
    support::grant(&relay, "news", "weekly", "permfail@example.net");
    support::send_ok(
        relay.smtp_addrs[0],
        "bounce@news.example",
        &["permfail@example.net"],
        &marketing("permfail@example.net"),
    )
    .await;
    // The bounce's DSN to the sender shows the bounce was handled.
    mx.wait_for(2, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(receiver.hits().is_empty());
    assert!(outbox(dir.path()).is_empty(), "nothing stored either");
    relay.shutdown().await;
}

/// The account `news` with a webhook to `hook` whose table has `keys` besides the URL
/// and secret; mail delivered through a fake MX, no delivery retry within the test.
async fn start_with(hook: SocketAddr, keys: &str, webhook_retry: &str) -> Running {
    let news = Account::news().list("weekly", SUBSCRIBED).table(
        "webhook",
        &format!("url = \"http://{hook}/hook\"\nsecret = \"{SECRET}\"\n{keys}"),
    );
    let config = format!(
        "retry_initial = \"1h\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [webhooks]\nretry_initial = \"{webhook_retry}\"\n"
    );
    Running::start(MxOptions::default(), &config, &support::policy(&[news], "")).await
}

/// Sends marketing of campaign `campaign` to each of `to` (consent granted first).
async fn send_campaign(relay: &optin_relay::server::Relay, campaign: &str, to: &[String]) {
    for t in to {
        support::grant(relay, "news", "weekly", t);
        support::send_ok(
            relay.smtp_addrs[0],
            "bounce@news.example",
            &[t],
            &format!(
                "From: News <hello@news.example>\r\nTo: <{t}>\r\nSubject: Sale\r\n\
                 X-Optin-List: weekly\r\nX-Optin-Campaign: {campaign}\r\n\r\nHello.\r\n"
            ),
        )
        .await;
    }
}

#[tokio::test]
async fn delivery_results_reach_the_account_in_signed_batches() {
    // The first POST fails: what happens meanwhile waits and goes in one batch.
    let receiver = Receiver::new(1);
    let hook = receiver.listen("127.0.0.1:0").await;
    let s = start_with(
        hook,
        "events = [\"delivered\", \"deferred\", \"bounce\", \"expired\"]\nmax_batch = 50",
        "2s",
    )
    .await;
    let mut to: Vec<String> = (0..10).map(|i| format!("reader{i}@example.net")).collect();
    to.push("permfail-x@example.net".into());
    to.push("tempfail-y@example.net".into());
    send_campaign(&s.relay, "spring", &to).await;
    s.mx.wait_for(10, WAIT).await;
    // 10 delivered, 1 bounce, 1 deferred: 12 events, in as few POSTs as the timing allows.
    let deadline = tokio::time::Instant::now() + WAIT;
    let events = loop {
        let hits = receiver.wait_delivered(1).await;
        let events: Vec<serde_json::Value> = hits
            .iter()
            .filter(|h| h.status == 200)
            .flat_map(|h| {
                let body = h.json();
                match body.get("events") {
                    Some(all) => all.as_array().unwrap().clone(),
                    None => vec![body],
                }
            })
            .collect();
        if events.len() >= 12 || tokio::time::Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(events.len(), 12, "{events:#?}");
    let hits = receiver.hits();
    assert!(hits.iter().all(|h| signature_verifies(h, SECRET)));
    let batch = hits
        .iter()
        .find(|h| h.status == 200 && h.header("x-optin-event") == "batch")
        .expect("a batch");
    let n: usize = batch.header("x-optin-count").parse().unwrap();
    assert!(n > 1, "{n}");
    assert_eq!(batch.json()["events"].as_array().unwrap().len(), n);
    let kinds = |k: &str| events.iter().filter(|e| e["event"] == k).count();
    assert_eq!(
        (kinds("delivered"), kinds("bounce"), kinds("deferred")),
        (10, 1, 1)
    );
    let delivered = events.iter().find(|e| e["event"] == "delivered").unwrap();
    assert_eq!(delivered["detail"]["campaign"], "spring");
    assert!(
        delivered["detail"]["reply"]
            .as_str()
            .unwrap()
            .starts_with("250")
    );
    assert_eq!(delivered["detail"]["queue_id"].as_str().unwrap().len(), 16);
    let bounce = events.iter().find(|e| e["event"] == "bounce").unwrap();
    assert_eq!(bounce["detail"]["category"], "invalid_recipient");
    assert_eq!(bounce["detail"]["via"], "sync");
    assert_eq!(bounce["detail"]["hard"], true);
    s.relay.shutdown().await;
}

#[tokio::test]
async fn listmonk_gets_its_bounce_api_with_basic_auth() {
    let receiver = Receiver::new(0);
    let hook = receiver.listen("127.0.0.1:0").await;
    let s = start_with(
        hook,
        "format = \"listmonk\"\nusername = \"optin\"\npassword = \"api-token-1\"",
        "100ms",
    )
    .await;
    let uuid = "5e4f1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b";
    send_campaign(&s.relay, uuid, &["permfail-z@example.net".to_string()]).await;
    let hits = receiver.wait_delivered(1).await;
    let h = &hits[0];
    // base64("optin:api-token-1")
    assert_eq!(h.header("authorization"), "Basic b3B0aW46YXBpLXRva2VuLTE=");
    let v = h.json();
    assert_eq!(v["email"], "permfail-z@example.net");
    assert_eq!(v["campaign_uuid"], uuid);
    assert_eq!(v["type"], "hard");
    assert_eq!(v["source"], "optin-relay");
    assert_eq!(v["meta"]["category"], "invalid_recipient");
    assert!(signature_verifies(h, SECRET));
    s.relay.shutdown().await;
}

#[tokio::test]
async fn ses_consumers_get_sns_notifications() {
    let receiver = Receiver::new(0);
    let hook = receiver.listen("127.0.0.1:0").await;
    let s = start_with(
        hook,
        "format = \"ses\"\nevents = [\"bounce\", \"delivered\"]",
        "100ms",
    )
    .await;
    send_campaign(
        &s.relay,
        "spring",
        &[
            "ok@example.net".to_string(),
            "permfail-q@example.net".to_string(),
        ],
    )
    .await;
    let hits = receiver.wait_delivered(2).await;
    let mut types = Vec::new();
    for h in hits.iter().filter(|h| h.status == 200) {
        let sns = h.json();
        assert_eq!(sns["Type"], "Notification");
        let m: serde_json::Value = serde_json::from_str(sns["Message"].as_str().unwrap()).unwrap();
        types.push(m["notificationType"].as_str().unwrap().to_string());
        assert_eq!(m["mail"]["source"], "bounce@news.example");
        match m["notificationType"].as_str().unwrap() {
            "Bounce" => {
                assert_eq!(m["bounce"]["bounceType"], "Permanent");
                assert_eq!(m["bounce"]["bounceSubType"], "NoEmail");
                assert_eq!(
                    m["bounce"]["bouncedRecipients"][0]["emailAddress"],
                    "permfail-q@example.net"
                );
            }
            "Delivery" => {
                assert_eq!(m["delivery"]["recipients"][0], "ok@example.net");
            }
            other => panic!("{other}"),
        }
    }
    types.sort();
    assert_eq!(types, ["Bounce", "Delivery"]);
    s.relay.shutdown().await;
}

#[tokio::test]
async fn opens_and_clicks_reach_the_webhook_that_asks() {
    let receiver = Receiver::new(0);
    let hook = receiver.listen("127.0.0.1:0").await;
    let news = Account::news().tracked_list("weekly", SUBSCRIBED).table(
        "webhook",
        &format!(
            "url = \"http://{hook}/hook\"\nsecret = \"{SECRET}\"\n\
             events = [\"opened\", \"clicked\"]"
        ),
    );
    let s = Running::start(MxOptions::default(), CONFIG, &support::policy(&[news], "")).await;
    support::grant(&s.relay, "news", "weekly", "reader@example.net");
    support::send_ok(
        s.smtp(),
        "bounce@news.example",
        &["reader@example.net"],
        "From: News <hello@news.example>\r\nTo: <reader@example.net>\r\nSubject: Sale\r\n\
         X-Optin-List: weekly\r\nX-Optin-Campaign: spring\r\n\r\n\
         See https://news.example/a today.\r\n",
    )
    .await;
    // A plain-text body: its link is tracked (there is no pixel).
    let copy = s.mx.wait_for(1, WAIT).await[0].text();
    let http = s.relay.http_addr.unwrap();
    let link = copy
        .split_whitespace()
        .find(|w| w.contains("/c/"))
        .unwrap_or_else(|| panic!("no tracked link: {copy}"));
    let path = &link[link.find("/c/").unwrap()..];
    let (status, _) = support::http(http, "GET", path, "").await;
    assert_eq!(status, 302);
    let hits = receiver.wait_delivered(1).await;
    let v = hits[0].json();
    assert_eq!(v["event"], "clicked");
    assert_eq!(v["address"], "reader@example.net");
    assert_eq!(v["detail"]["url"], "https://news.example/a");
    assert_eq!(v["detail"]["campaign"], "spring");
    assert!(signature_verifies(&hits[0], SECRET));
    s.relay.shutdown().await;
}
