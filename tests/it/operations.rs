//! What an operator meets in the first hour and the first year: capture mode and its
//! private pages, a bounce suppression that names its cause (and the relay's own notices
//! never suppressing a client's address), operator holds that survive a restart, account
//! health in `account show`, and the gauges the alert rules need.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use crate::support::{
    Account, Admin, MxOptions, Running, SUBSCRIBED, grant, http, http_as, policy, poll, send_ok,
    start_relay,
};

const TOKEN: &str = "operations-token-0123456789";

fn shop_policy() -> String {
    let shop = Account::shop().domains(&["shop.example"]);
    policy(&[shop.list("news", SUBSCRIBED)], "")
}

fn operator(extra: &str) -> String {
    format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n{extra}")
}

/// Polls `path` on the operator listener until `ok` holds for its (status, body).
async fn page_until(admin: SocketAddr, path: &str, ok: impl Fn(u16, &str) -> bool) -> String {
    poll(Duration::from_secs(5), path, async || {
        let (status, body) = http(admin, "GET", path, "").await;
        ok(status, &body).then_some(body)
    })
    .await
}

#[tokio::test]
async fn capture_mode_keeps_mail_in_a_folder_and_lists_it() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(
        dir.path(),
        &format!("[delivery]\nmode = \"capture\"\n{}", operator("")),
        &shop_policy(),
    )
    .await;
    let admin = relay.admin_addr.unwrap();
    grant(&relay, "shop", "news", "ada@example.net");
    let smtp = relay.smtp_addrs[0];
    send_ok(
        smtp,
        "news@shop.example",
        &["ada@example.net"],
        "From: <news@shop.example>\r\nSubject: Spring news\r\nX-Optin-Stream: marketing\r\n\
         Content-Type: text/html\r\n\r\n<p>Spring <script>alert(1)</script></p>",
    )
    .await;
    // Delivered through the whole pipeline into the folder, with no DNS and no server.
    let list = page_until(admin, "/capture/messages.json", |s, b| {
        s == 200 && b.contains("ada@example.net")
    })
    .await;
    let list: Value = serde_json::from_str(&list).unwrap();
    let id = list[0]["id"].as_str().unwrap().to_string();
    assert_eq!(list[0]["site"], "example.net");
    let (status, raw) = http(admin, "GET", "/capture/latest/raw", "").await;
    assert_eq!(status, 200);
    assert!(raw.contains("List-Unsubscribe: <"), "{raw}");
    assert!(raw.contains("You subscribed to news."), "{raw}");
    assert!(!raw.contains("X-Optin-Stream"), "{raw}");
    let (status, page) = http(admin, "GET", &format!("/capture/{id}"), "").await;
    assert_eq!(status, 200);
    assert!(page.contains("<title>Spring news</title>"), "{page}");
    assert!(page.contains("List-Unsubscribe"), "{page}");
    let (_, index) = http(admin, "GET", "/capture/", "").await;
    assert!(index.contains(&format!("/capture/{id}")), "{index}");
    // The HTML part is its own document under a sandbox: no script runs, nothing loads.
    let answer = crate::support::Admin::new(admin, TOKEN)
        .send_raw("GET", &format!("/capture/{id}/html"), "text/plain", "")
        .await;
    assert_eq!(answer.status, 200);
    let csp = answer.header("content-security-policy").join(" ");
    assert!(
        csp.starts_with("sandbox;") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    // The files hold addresses: 0600.
    use std::os::unix::fs::PermissionsExt;
    let eml = dir.path().join(format!("spool/capture/{id}.eml"));
    let mode = std::fs::metadata(&eml).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // A name that is no id finds nothing, whatever it tries.
    for bad in [
        "..%2F..%2Fetc%2Fpasswd",
        "nope",
        "1796505081533-000000-445a",
    ] {
        let (status, _) = http(admin, "GET", &format!("/capture/{bad}/raw"), "").await;
        assert_eq!(status, 404, "{bad}");
    }
    relay.shutdown().await;
}

#[tokio::test]
async fn capture_pages_answer_strangers_only_with_the_token() {
    use optin_relay::delivery::capture::Store;
    use optin_relay::http::listener::Client;
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(Store::open(dir.path(), 10).unwrap());
    // The operator listener beyond loopback: the request comes from another machine.
    let app =
        optin_relay::http::capture::router(store, TOKEN.into()).layer(axum::middleware::from_fn(
            async |mut r: axum::extract::Request, next: axum::middleware::Next| {
                r.extensions_mut()
                    .insert(Client("203.0.113.7".parse().unwrap()));
                next.run(r).await
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (status, body) = http(addr, "GET", "/capture/messages.json", "").await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = http_as(addr, Some("wrong-token-0123456789"), "GET", "/capture/", "").await;
    assert_eq!(status, 403);
    let (status, body) = http_as(addr, Some(TOKEN), "GET", "/capture/messages.json", "").await;
    assert_eq!((status, body.as_str()), (200, "[]"));
}

#[tokio::test]
async fn a_bounce_suppression_names_its_cause_and_a_failed_notice_suppresses_nobody() {
    let run = Running::start(MxOptions::default(), &operator(""), &shop_policy()).await;
    let api = Admin::new(run.relay.admin_addr.unwrap(), TOKEN);
    // The recipient's server refuses it for good; the DSN to the client's own sender is
    // refused as well (a first run with no working mail setup looks like this).
    send_ok(
        run.smtp(),
        "permfail-sender@shop.example",
        &["permfail-ada@example.net"],
        "From: <permfail-sender@shop.example>\r\nSubject: receipt\r\n\r\nthanks",
    )
    .await;
    let v = poll(Duration::from_secs(10), "the bounce's cause", async || {
        let (_, v) = api
            .get("/admin/suppressions/permfail-ada@example.net")
            .await;
        (!v["bounce_cause"].is_null()).then_some(v)
    })
    .await;
    assert_eq!(v["suppressed"]["global"][0], "bounce", "{v}");
    let cause = &v["bounce_cause"];
    assert_eq!(cause["status"], "5.1.1", "{v}");
    assert!(
        cause["diagnostic"]
            .as_str()
            .unwrap()
            .contains("no such user"),
        "{v}"
    );
    assert_eq!(cause["account"], "shop");
    assert_eq!(cause["via"], "delivery");
    // The DSN went and bounced too: its recipient is no suppression.
    poll(Duration::from_secs(10), "the DSN's attempt", async || {
        (run.mx.rcpt_attempts() >= 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, v) = api
        .get("/admin/suppressions/permfail-sender@shop.example")
        .await;
    assert_eq!(v["suppressed"]["global"], serde_json::json!([]), "{v}");
    assert!(v["bounce_cause"].is_null(), "{v}");
    // Nor does it count against the account's health: one hard bounce, the recipient's.
    let (_, account) = api.get("/admin/accounts/shop").await;
    assert_eq!(account["health"]["counts"]["hard_bounces"], 1, "{account}");
    run.relay.shutdown().await;
}

#[tokio::test]
async fn an_operator_hold_outlives_a_restart_until_released() {
    let dir = tempfile::tempdir().unwrap();
    let mx = crate::support::FakeMx::new(MxOptions::default());
    let mx_addr = mx.listen().await;
    let config = format!(
        "[delivery]\nsmarthost = \"{mx_addr}\"\nretry_initial = \"1h\"\n{}",
        operator("")
    );
    let relay = start_relay(dir.path(), &config, &shop_policy()).await;
    let api = Admin::new(relay.admin_addr.unwrap(), TOKEN);
    let reply = send_ok(
        relay.smtp_addrs[0],
        "app@shop.example",
        &["tempfail-1@example.net"],
        "From: <app@shop.example>\r\nSubject: q\r\n\r\nx",
    )
    .await;
    let id = reply.rsplit(' ').next().unwrap().to_string();
    poll(Duration::from_secs(5), "the first attempt", async || {
        (mx.rcpt_attempts() >= 1).then_some(())
    })
    .await;
    let (status, v) = api
        .call("POST", &format!("/admin/queue/messages/{id}/hold"), None)
        .await;
    assert_eq!((status, v["result"].as_str()), (200, Some("held")), "{v}");
    // Bulk actions name what they take: nothing by omission.
    let (status, _) = api
        .post("/admin/queue/release", serde_json::json!({}))
        .await;
    assert_eq!(status, 400);
    relay.shutdown().await;

    let relay = start_relay(dir.path(), &config, &shop_policy()).await;
    let api = Admin::new(relay.admin_addr.unwrap(), TOKEN);
    let (_, page) = api.get("/admin/queue/messages").await;
    assert_eq!(page["messages"][0]["hold"], "operator", "{page}");
    let before = mx.rcpt_attempts();
    let (_, v) = api
        .post("/admin/queue/retry", serde_json::json!({"all": true}))
        .await;
    assert_eq!(v["messages"], 0, "a retry leaves held mail held");
    let (status, _) = api
        .call("POST", &format!("/admin/queue/messages/{id}/retry"), None)
        .await;
    assert_eq!(status, 409);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(mx.rcpt_attempts(), before, "held: not tried");
    let (status, v) = api
        .post(
            "/admin/queue/release",
            serde_json::json!({"account": "shop"}),
        )
        .await;
    assert_eq!((status, v["messages"].clone()), (200, serde_json::json!(1)));
    api.post(
        "/admin/queue/retry",
        serde_json::json!({"site": "smarthost"}),
    )
    .await;
    poll(
        Duration::from_secs(5),
        "the attempt after release",
        async || (mx.rcpt_attempts() > before).then_some(()),
    )
    .await;
    let (_, shape) = api.get("/admin/queue/shape").await;
    assert_eq!(shape["sites"][0]["site"], "TOTAL");
    assert_eq!(shape["sites"][0]["total"], 1);
    assert_eq!(
        shape["sites"][0]["counts"][0], 1,
        "younger than 5 minutes: {shape}"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn account_show_and_metrics_say_how_close_freezing_is() {
    let run = Running::start(MxOptions::default(), &operator(""), &shop_policy()).await;
    let admin = run.relay.admin_addr.unwrap();
    let api = Admin::new(admin, TOKEN);
    send_ok(
        run.smtp(),
        "app@shop.example",
        &["reader@example.net"],
        "From: <app@shop.example>\r\nSubject: q\r\n\r\nx",
    )
    .await;
    let v = poll(Duration::from_secs(5), "the delivery counted", async || {
        let (_, v) = api.get("/admin/accounts/shop").await;
        (v["health"]["counts"]["delivered"] == 1).then_some(v)
    })
    .await;
    let h = &v["health"];
    assert_eq!(h["volume"], 1);
    assert_eq!(h["thresholds"]["complaints"]["ratio"], 0.0, "{v}");
    assert!(
        h["thresholds"]["hard_bounces"]["max_rate"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let (_, metrics) = http(admin, "GET", "/metrics", "").await;
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        metrics.contains(&format!("optin_build_info{{version=\"{version}\"}} 1")),
        "build info"
    );
    let free = crate::support::sample(&metrics, "optin_spool_disk_free_bytes").unwrap();
    let total = crate::support::sample(&metrics, "optin_spool_disk_total_bytes").unwrap();
    assert!(free > 0.0 && free <= total, "{free} {total}");
    assert!(metrics.contains("optin_campaign_verdicts_total{verdict=\"declined\"}"));
    run.relay.shutdown().await;
}
