//! Staged campaign release through a running relay: the canary goes, the rest is held;
//! after the evaluation window a clean canary releases the campaign and a bouncing one
//! declines it (held mail removed, a report to the sender, later mail refused); an admin
//! declares sizes, releases and declines by hand.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    self, Account, Admin, MxOptions, Running, SIGNED_UP, eventually, grant, grant_all, raw_send,
    send_ok,
};

const TOKEN: &str = "campaign-token-0123456789";

/// `shop` sends marketing to `deals`; campaigns are judged after `window`, on a canary of
/// 3 (or 10 % of a declared size).
fn policy(window: &str) -> String {
    let campaigns = format!("[campaigns]\nevaluation_window = \"{window}\"\ncanary_count = 3\n");
    support::policy(&[Account::shop().list("deals", SIGNED_UP)], &campaigns)
}

/// After the smart host: a retry an hour later, the admin API.
fn config() -> String {
    format!("retry_initial = \"1h\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n")
}

type Setup = Running;

async fn setup(window: &str) -> Setup {
    Running::start(MxOptions::default(), &config(), &policy(window)).await
}

/// Stops the relay and starts it again on the same spool (and the same fake MX).
async fn restart(s: Setup, window: &str) -> Setup {
    s.restart(&config(), &policy(window)).await
}

/// A request to the admin API: the status and the body as JSON.
async fn api(s: &Setup, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let admin = Admin::new(s.relay.admin_addr.unwrap(), TOKEN);
    admin.call(method, path, body).await
}

/// Waits until the queue is empty.
async fn queue_empty(s: &Setup) {
    wait_until("queue empty", async || {
        api(s, "GET", "/admin/queue", None).await.1["messages"] == 0
    })
    .await;
}

/// Sends one marketing message of `campaign` to `to` (consent granted first).
async fn send(s: &Setup, campaign: &str, to: &str) -> String {
    grant(&s.relay, "shop", "deals", to);
    raw_send(
        s.relay.smtp_addrs[0],
        "news@shop.example",
        &[to],
        &format!(
            "From: <news@shop.example>\r\nSubject: spring sale\r\nX-Optin-Stream: marketing\r\n\
             X-Optin-List: deals\r\nX-Optin-Campaign: {campaign}\r\n\r\nBuy now."
        ),
    )
    .await
}

/// Messages delivered to the campaign's recipients (not reports or DSNs to the sender).
fn to_recipients(s: &Setup) -> usize {
    s.mx.delivered()
        .iter()
        .filter(|d| d.rcpt_to.iter().all(|r| r != "news@shop.example"))
        .count()
}

async fn wait_until(what: &str, check: impl AsyncFnMut() -> bool) {
    // Generous: a debug build delivering a thousand rewritten transactions takes a while.
    eventually(Duration::from_secs(60), what, check).await;
}

#[tokio::test]
async fn a_clean_canary_releases_the_rest_after_the_window() {
    let s = setup("1s").await;
    for i in 0..10 {
        let r = send(&s, "spring", &format!("reader{i}@example.net")).await;
        assert!(r.starts_with("250"), "{r}");
    }
    wait_until("the canary delivered", async || to_recipients(&s) == 3).await;
    let (_, c) = api(&s, "GET", "/admin/campaigns/shop/spring", None).await;
    assert_eq!(c["stage"], "canary");
    assert_eq!(c["canary_size"], 3);
    assert_eq!(c["held"], 7);
    let (_, q) = api(&s, "GET", "/admin/queue", None).await;
    assert_eq!(q["held"], 7, "{q}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(to_recipients(&s), 3, "held mail went before the verdict");
    // after the window: released by the policy, the rest goes
    wait_until("the rest delivered", async || to_recipients(&s) == 10).await;
    let (_, c) = api(&s, "GET", "/admin/campaigns/shop/spring", None).await;
    assert_eq!(c["stage"], "released");
    assert_eq!(c["decided_by"], "policy");
    assert_eq!(c["canary"]["delivered"], 3);
    // later mail of the campaign follows the verdict: straight out
    let r = send(&s, "spring", "late@example.net").await;
    assert!(r.starts_with("250"), "{r}");
    wait_until("late mail delivered", async || to_recipients(&s) == 11).await;
}

#[tokio::test]
async fn a_bouncing_canary_declines_the_campaign() {
    let s = setup("1s").await;
    for i in 0..3 {
        let r = send(&s, "winter", &format!("permfail-{i}@example.net")).await;
        assert!(r.starts_with("250"), "{r}");
    }
    for i in 0..5 {
        let r = send(&s, "winter", &format!("reader{i}@example.net")).await;
        assert!(r.starts_with("250"), "{r}");
    }
    // the verdict: every canary recipient hard-bounced
    wait_until("declined", async || {
        api(&s, "GET", "/admin/campaigns/shop/winter", None).await.1["stage"] == "declined"
    })
    .await;
    let (_, c) = api(&s, "GET", "/admin/campaigns/shop/winter", None).await;
    assert_eq!(c["canary"]["hard_bounced"], 3);
    assert!(
        c["reason"]
            .as_str()
            .unwrap()
            .contains("hard bounce rate 100.00%"),
        "{c}"
    );
    // the report reaches the sender; the held mail never goes and leaves the queue
    wait_until("the report", async || {
        s.mx.delivered()
            .iter()
            .any(|d| d.text().contains("Campaign \"winter\" declined"))
    })
    .await;
    let report =
        s.mx.delivered()
            .into_iter()
            .find(|d| d.text().contains("Campaign \"winter\" declined"))
            .unwrap();
    assert_eq!(report.rcpt_to, ["news@shop.example"]);
    assert!(
        report.text().contains("5 recipients held"),
        "{}",
        report.text()
    );
    queue_empty(&s).await;
    assert_eq!(to_recipients(&s), 0);
    // new mail of the campaign is refused at the end of DATA
    let r = send(&s, "winter", "reader9@example.net").await;
    assert!(
        r.starts_with("550 5.7.1 campaign winter was declined"),
        "{r}"
    );
    let events =
        std::fs::read_to_string(s.dir.path().join("spool/events/campaigns.jsonl")).unwrap();
    assert!(events.contains("\"declined\""), "{events}");
}

#[tokio::test]
async fn an_admin_declares_releases_and_declines() {
    let s = setup("1h").await;
    // declared size 20: the canary is 10 %, 2 recipients
    let (status, c) = api(
        &s,
        "POST",
        "/admin/campaigns/shop/autumn/declare",
        Some(json!({"size": 20})),
    )
    .await;
    assert_eq!((status, c["canary_size"].clone()), (200, json!(2)));
    for i in 0..5 {
        send(&s, "autumn", &format!("a{i}@example.net")).await;
    }
    wait_until("canary of 2", async || to_recipients(&s) == 2).await;
    let (status, c) = api(&s, "POST", "/admin/campaigns/shop/autumn/release", None).await;
    assert_eq!((status, c["stage"].clone()), (200, json!("released")));
    assert_eq!(c["decided_by"], "admin");
    wait_until("released by hand", async || to_recipients(&s) == 5).await;
    let (status, _) = api(&s, "POST", "/admin/campaigns/shop/autumn/release", None).await;
    assert_eq!(status, 409, "a second verdict");

    // declined by hand: the held one is removed, the sender told
    for i in 0..4 {
        send(&s, "summer", &format!("b{i}@example.net")).await;
    }
    wait_until("canary of 3", async || to_recipients(&s) == 8).await;
    let (status, _) = api(
        &s,
        "POST",
        "/admin/campaigns/shop/summer/decline",
        Some(json!({"reason": " "})),
    )
    .await;
    assert_eq!(status, 400);
    let (status, c) = api(
        &s,
        "POST",
        "/admin/campaigns/shop/summer/decline",
        Some(json!({"reason": "wrong list"})),
    )
    .await;
    assert_eq!((status, c["stage"].clone()), (200, json!("declined")));
    wait_until("report", async || {
        s.mx.delivered()
            .iter()
            .any(|d| d.text().contains("wrong list"))
    })
    .await;
    queue_empty(&s).await;
    assert_eq!(
        to_recipients(&s),
        8,
        "the held message was removed, not sent"
    );

    let (status, all) = api(&s, "GET", "/admin/campaigns", None).await;
    assert_eq!(status, 200);
    assert_eq!(all.as_array().unwrap().len(), 2);
    let (status, _) = api(&s, "GET", "/admin/campaigns/shop/nope", None).await;
    assert_eq!(status, 404);
    let (status, _) = api(
        &s,
        "POST",
        "/admin/campaigns/nobody/x/declare",
        Some(json!({"size": 5})),
    )
    .await;
    assert_eq!(status, 404);
}

/// Issue 12 item 6: one message with as many recipients as the whole campaign must not
/// carry the campaign past its canary. The canary counts recipients: only its share of the
/// message's recipients goes, the rest is held until the verdict.
#[tokio::test]
async fn the_canary_counts_recipients_not_messages() {
    let s = setup("1h").await;
    let (status, _) = api(
        &s,
        "POST",
        "/admin/campaigns/shop/bulk/declare",
        Some(json!({"size": 1000})),
    )
    .await;
    assert_eq!(status, 200);
    let to: Vec<String> = (0..1000)
        .map(|i| format!("reader{i}@example.net"))
        .collect();
    grant_all(&s.relay, "shop", "deals", &to);
    let refs: Vec<&str> = to.iter().map(String::as_str).collect();
    send_ok(
        s.relay.smtp_addrs[0],
        "news@shop.example",
        &refs,
        "From: <news@shop.example>\r\nSubject: all at once\r\nX-Optin-Stream: marketing\r\n\
         X-Optin-List: deals\r\nX-Optin-Campaign: bulk\r\n\r\nBuy now.",
    )
    .await;
    wait_until("the canary delivered", async || to_recipients(&s) >= 100).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(to_recipients(&s), 100, "more than the canary went");
    let (_, c) = api(&s, "GET", "/admin/campaigns/shop/bulk", None).await;
    assert_eq!(c["stage"], "canary");
    assert_eq!(c["canary_size"], 100);
    assert_eq!(c["canary"]["admitted"], 100, "{c}");
    assert_eq!(c["held"], 900, "{c}");
    let (_, q) = api(&s, "GET", "/admin/queue", None).await;
    assert_eq!(q["held"], 900, "{q}");
    let (_, page) = api(&s, "GET", "/admin/queue/messages", None).await;
    let m = &page["messages"];
    assert_eq!(m[0]["held"], true, "{m}");
    assert_eq!(
        m[0]["hold"], "campaign_canary",
        "labelled as waiting for the verdict"
    );
    // released: exactly the held 900 go, nobody twice
    let (status, _) = api(&s, "POST", "/admin/campaigns/shop/bulk/release", None).await;
    assert_eq!(status, 200);
    wait_until("the rest delivered", async || to_recipients(&s) >= 1000).await;
    let mut got: Vec<String> =
        s.mx.delivered()
            .into_iter()
            .flat_map(|d| d.rcpt_to)
            .filter(|r| r != "news@shop.example")
            .collect();
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 1000);
    assert_eq!(to_recipients(&s), 1000);
    queue_empty(&s).await;
}

/// A message split by the end of the canary keeps the split across a restart (its first
/// recipients are the canary's, the rest held again), and a decline removes only the held
/// ones while the canary's recipients stay queued for their retry.
#[tokio::test]
async fn a_split_message_is_readmitted_after_a_restart_and_declined_in_part() {
    let s = setup("1h").await;
    let to: Vec<String> = (0..5).map(|i| format!("tempfail{i}@example.net")).collect();
    grant_all(&s.relay, "shop", "deals", &to);
    let refs: Vec<&str> = to.iter().map(String::as_str).collect();
    send_ok(
        s.relay.smtp_addrs[0],
        "news@shop.example",
        &refs,
        "From: <news@shop.example>\r\nSubject: split\r\nX-Optin-Stream: marketing\r\n\
         X-Optin-List: deals\r\nX-Optin-Campaign: split\r\n\r\nBuy now.",
    )
    .await;
    // the canary (3) is tried and deferred; two recipients are held
    wait_until("the canary tried", async || s.mx.rcpt_attempts() >= 3).await;
    wait_until("the canary deferred", async || {
        let (_, page) = api(&s, "GET", "/admin/queue/messages", None).await;
        let m = &page["messages"];
        m[0]["recipients"]
            .as_array()
            .is_some_and(|r| r.iter().filter(|r| r["attempts"] == 1).count() == 3)
    })
    .await;
    let (_, page) = api(&s, "GET", "/admin/queue/messages", None).await;
    let m = &page["messages"];
    let held: Vec<bool> = m[0]["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["held"].as_bool().unwrap())
        .collect();
    assert_eq!(held, [false, false, false, true, true], "{m}");
    let (_, c) = api(&s, "GET", "/admin/campaigns/shop/split", None).await;
    assert_eq!(
        (c["canary"]["admitted"].clone(), c["held"].clone()),
        (json!(3), json!(2))
    );
    let s = restart(s, "1h").await;
    let (_, q) = api(&s, "GET", "/admin/queue", None).await;
    assert_eq!(
        (q["recipients"].clone(), q["held"].clone()),
        (json!(5), json!(2)),
        "{q}"
    );
    let (_, page) = api(&s, "GET", "/admin/queue/messages", None).await;
    let m = &page["messages"];
    let held: Vec<bool> = m[0]["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["held"].as_bool().unwrap())
        .collect();
    assert_eq!(held, [false, false, false, true, true], "{m}");
    // declined: the held two go, the canary's three wait for their retry
    let (status, _) = api(
        &s,
        "POST",
        "/admin/campaigns/shop/split/decline",
        Some(json!({"reason": "test"})),
    )
    .await;
    assert_eq!(status, 200);
    // The decline also queues a report to the sender (stored off the scheduler, so it may
    // be counted in the queue before or after the held two leave): wait for it to be
    // delivered, then only the canary's message is left.
    wait_until("the report delivered", async || {
        s.mx.delivered()
            .iter()
            .any(|d| d.rcpt_to == ["news@shop.example"])
    })
    .await;
    wait_until("held removed", async || {
        api(&s, "GET", "/admin/queue", None).await.1["recipients"] == 3
    })
    .await;
    let (_, q) = api(&s, "GET", "/admin/queue", None).await;
    assert_eq!(
        (q["messages"].clone(), q["held"].clone()),
        (json!(1), json!(0)),
        "{q}"
    );
    assert_eq!(
        s.mx.rcpt_attempts(),
        4,
        "the canary's three and the report: nothing held was tried"
    );
}
