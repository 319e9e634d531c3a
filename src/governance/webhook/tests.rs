//! Tests of the webhooks: signatures, backoff and expiry, the policy keys, and the durable
//! outbox (file modes, pick-up after a restart, half-written and unreadable files).

use super::*;
use crate::policy::webhook::Format;

const POLICY: &str = r#"
[accounts.news]
networks = ["127.0.0.1/32"]
[accounts.news.webhook]
url = "https://hooks.news.example/optin?x=1"
secret = "0123456789abcdef-secret"
[accounts.shop]
networks = ["127.0.0.2/32"]
[accounts.shop.webhook]
url = "http://127.0.0.1:8080/hook"
secret = "0123456789abcdef"
events = ["bounce", "complaint"]
[accounts.quiet]
networks = ["127.0.0.3/32"]
"#;

fn policy(text: &str) -> Arc<ArcSwap<Policy>> {
    Arc::new(ArcSwap::from_pointee(
        Policy::from_toml("p", text).unwrap_or_else(|e| panic!("{e}")),
    ))
}

#[test]
fn signature_is_hmac_sha256_of_time_dot_body() {
    // Expected value from Python: hmac.new(secret, b"1700000000." + body, sha256).
    assert_eq!(
        signature(b"0123456789abcdef-secret", 1_700_000_000, br#"{"id":"x"}"#),
        "t=1700000000,v1=e83bb0935e7b1db314f673eb7e104265702860cb3dd80ea6e7a2f7cdc1cacd56"
    );
}

#[test]
fn backoff_doubles_from_the_first_step_up_to_an_hour() {
    let initial = Duration::from_secs(30);
    let bases: Vec<u64> = (1..=10)
        .map(|n| backoff_base(initial, n).as_secs())
        .collect();
    assert_eq!(
        bases,
        vec![30, 60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]
    );
    assert_eq!(backoff_base(initial, u32::MAX), RETRY_MAX);
    assert_eq!(
        backoff_base(Duration::from_millis(100), 2),
        Duration::from_millis(200)
    );
    for n in 1..=12 {
        let base = backoff_base(initial, n);
        for _ in 0..50 {
            let d = backoff(initial, n);
            assert!(
                d <= base && d >= base.mul_f64(0.8),
                "{n}: {d:?} vs {base:?}"
            );
        }
    }
}

#[test]
fn events_are_given_up_after_three_days() {
    let day = 86_400_000;
    assert!(!expired(10 * day, 10 * day));
    assert!(!expired(10 * day, 13 * day - 1));
    assert!(expired(10 * day, 13 * day));
    assert!(!expired(10 * day, 0), "a clock set back gives nothing up");
}

#[test]
fn policy_reads_webhooks() {
    let p = policy(POLICY);
    let p = p.load();
    let news = p.account("news").unwrap().webhook.clone().unwrap();
    assert_eq!(news.url, "https://hooks.news.example/optin?x=1");
    assert_eq!(news.events, Kind::DEFAULT.to_vec());
    assert_eq!((news.format, news.max_batch), (Format::Optin, 1));
    let shop = p.account("shop").unwrap().webhook.clone().unwrap();
    assert!(shop.wants(Kind::Bounce) && !shop.wants(Kind::Unsubscribe));
    assert!(p.account("quiet").unwrap().webhook.is_none());
    assert!(
        !format!("{shop:?}").contains("0123456789abcdef"),
        "secret in Debug"
    );
}

#[test]
fn policy_reports_bad_webhooks() {
    let err = Policy::from_toml(
        "p.toml",
        r#"
        [accounts.a.webhook]
        url = "http://hooks.example/x"
        secret = "short"
        events = ["bounce", "open"]
        colour = 1
        [accounts.b.webhook]
        url = "ftp://hooks.example/"
        secret = "0123456789abcdef"
        events = []
        [accounts.c.webhook]
        url = "https://user:pw@hooks.example/"
        [accounts.d.webhook]
        secret = "0123456789abcdef"
        [accounts.e.webhook]
        url = "https://hooks.example/"
        secret = "0123456789abcdef"
        format = "json"
        [accounts.f.webhook]
        url = "https://hooks.example/"
        secret = "0123456789abcdef"
        format = "listmonk"
        events = ["bounce", "delivered"]
        [accounts.g.webhook]
        url = "https://hooks.example/"
        secret = "0123456789abcdef"
        format = "ses"
        max_batch = 10
        [accounts.h.webhook]
        url = "https://hooks.example/"
        secret = "0123456789abcdef"
        max_batch = 5000
        username = "api"
        "#,
    )
    .unwrap_err()
    .to_string();
    for needle in [
        "accounts.e.webhook.format: \"json\" is not",
        "accounts.f.webhook.events: the listmonk format cannot carry \"delivered\" events",
        "accounts.f.webhook.username: the listmonk format needs username and password",
        "accounts.g.webhook.max_batch: the ses format takes one event per POST",
        "accounts.h.webhook.max_batch: must be between 1 and 1000",
        "accounts.h.webhook.username: username (without ':') and password go together",
        "accounts.a.webhook.url: \"http://hooks.example/x\": http:// is allowed only for a loopback host",
        "accounts.a.webhook.secret: must be at least 16 characters",
        "accounts.a.webhook.events: \"open\" is not",
        "accounts.a.webhook.colour: unknown key",
        "accounts.b.webhook.url: \"ftp://hooks.example/\": must start with https://",
        "accounts.b.webhook.events: names no event",
        "accounts.c.webhook.url: \"https://user:pw@hooks.example/\": must not carry",
        "accounts.c.webhook.secret: missing",
        "accounts.d.webhook.url: missing",
    ] {
        assert!(err.contains(needle), "{needle} missing from\n{err}");
    }
    assert!(!err.contains("short\""), "the secret is not echoed: {err}");
}

#[test]
fn outbox_files_are_private_whole_and_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let hooks = Webhooks::new(
        dir.path(),
        policy(POLICY),
        crate::config::DEFAULT_WEBHOOK_RETRY_INITIAL,
    )
    .unwrap();
    let event = |kind| WebhookEvent {
        kind,
        address: "reader@example.net".into(),
        list: Some("weekly".into()),
        time_ms: 1234,
        detail: serde_json::json!({"via": "http"}),
    };
    hooks.send_blocking("news", event(Kind::Unsubscribe));
    hooks.send_blocking("news", event(Kind::Bounce));
    hooks.send_blocking("shop", event(Kind::Unsubscribe)); // not in its events
    hooks.send_blocking("quiet", event(Kind::Bounce)); // no webhook
    hooks.send_blocking("nobody", event(Kind::Bounce)); // no such account
    let outbox = dir.path().join(OUTBOX);
    std::fs::write(outbox.join("0000000000000001-00.json.tmp"), b"{half").unwrap();
    std::fs::write(outbox.join("0000000000000002-00.json"), b"garbage").unwrap();

    let mut found = pick_up(&outbox);
    found.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[0].kind, Kind::Unsubscribe);
    assert_eq!(found[1].kind, Kind::Bounce);
    assert!(found[0].id < found[1].id, "ids sort in the order of sends");
    assert!(
        found
            .iter()
            .all(|q| q.account == "news" && q.time_ms == 1234)
    );
    assert!(!outbox.join("0000000000000001-00.json.tmp").exists());
    assert!(outbox.join("failed/0000000000000002-00.json").exists());

    let path = outbox.join(format!("{}.json", found[0].id));
    let body: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "id": found[0].id,
            "account": "news",
            "event": "unsubscribe",
            "address": "reader@example.net",
            "list": "weekly",
            "time_ms": 1234,
            "detail": {"via": "http"},
        })
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn event_debug_has_no_address() {
    let e = WebhookEvent::now(
        Kind::Bounce,
        "reader@example.net",
        None,
        serde_json::json!({}),
    );
    assert!(!format!("{e:?}").contains("reader"));
}
