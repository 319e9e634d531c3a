//! Account health through a running relay: hard bounces over the policy's threshold
//! freeze the account by themselves; its next submission is refused, its queued marketing
//! is held (and transactional mail too when the policy says so) until it is unfrozen.

use crate::support;

use std::time::Duration;

use crate::support::{FakeMx, MxOptions, grant, raw_send};
use optin_relay::delivery::control::Action;

fn policy(transactional: &str) -> String {
    format!(
        r#"
[accounts.shop]
from_domains = ["shop.example"]
networks = ["127.0.0.0/8"]
streams = ["marketing", "transactional"]
default_stream = "transactional"
[accounts.shop.lists.deals]
consent_statement = "You get {{list}} because you signed up."

[health]
window = "1h"
min_volume = 4
max_hard_bounce_rate = 0.2
frozen_transactional = "{transactional}"
"#
    )
}

async fn setup(transactional: &str) -> (FakeMx, optin_relay::server::Relay, tempfile::TempDir) {
    let mx = FakeMx::new(MxOptions::default());
    let mx_addr = mx.listen().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("[delivery]\nsmarthost = \"{mx_addr}\"\nretry_initial = \"1h\"\n");
    let relay = support::start_relay(dir.path(), &extra, &policy(transactional)).await;
    (mx, relay, dir)
}

async fn send(relay: &optin_relay::server::Relay, to: &str, marketing: bool) -> String {
    let headers = if marketing {
        grant(relay, "shop", "deals", to);
        "X-Optin-Stream: marketing\r\nX-Optin-List: deals\r\n"
    } else {
        ""
    };
    raw_send(
        relay.smtp_addrs[0],
        "app@shop.example",
        &[to],
        &format!("From: <app@shop.example>\r\nSubject: hi\r\n{headers}\r\nHello."),
    )
    .await
}

async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..400 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out: {what}");
}

/// The only queued message's id, once its first attempt is over.
async fn queued_id(relay: &optin_relay::server::Relay) -> u64 {
    for _ in 0..400 {
        let list = relay.delivery.list(None, 10).await.unwrap();
        if list.len() == 1
            && list[0].recipients[0].status == "waiting"
            && list[0].recipients[0].attempts == 1
        {
            return optin_relay::spool::parse_id(&list[0].id).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no message waiting for its retry");
}

#[tokio::test]
async fn hard_bounces_over_the_threshold_freeze_the_account_until_unfrozen() {
    let (mx, relay, _dir) = setup("send").await;
    // a marketing message that waits for its retry (451 at RCPT)
    assert!(
        send(&relay, "tempfail-m@example.net", true)
            .await
            .starts_with("250")
    );
    for i in 0..3 {
        assert!(
            send(&relay, &format!("ok{i}@example.net"), false)
                .await
                .starts_with("250")
        );
    }
    wait_until("3 delivered", || mx.delivered().len() == 3).await;
    assert!(
        relay.freezes.get("shop").is_none(),
        "not yet: 3 delivered, 0 bounced"
    );
    // one hard bounce: 1 of 4 attempts, 25 % over 20 %, at the minimum volume
    assert!(
        send(&relay, "permfail-0@example.net", false)
            .await
            .starts_with("250")
    );
    wait_until("frozen", || relay.freezes.get("shop").is_some()).await;
    let frozen = relay.freezes.get("shop").unwrap();
    assert_eq!(frozen.by, "health");
    assert!(
        frozen
            .reason
            .starts_with("hard bounce rate 25.00% over 20.00% (1 of 4 in 1h)"),
        "{}",
        frozen.reason
    );

    // the next submission is refused with the reason
    let r = send(&relay, "ok9@example.net", false).await;
    assert!(!r.starts_with("250"), "{r}");
    let mut c = tokio::net::TcpStream::connect(relay.smtp_addrs[0])
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 1024];
    let _ = c.read(&mut buf).await.unwrap();
    c.write_all(b"EHLO t\r\nMAIL FROM:<app@shop.example>\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    while !reply.contains("554") {
        let n = c.read(&mut buf).await.unwrap();
        assert!(n > 0, "{reply}");
        reply.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(
        reply.contains("554 5.7.1 account frozen: hard bounce rate"),
        "{reply}"
    );

    // the queued marketing is held: retried by hand, it is not tried (the bounce's DSN,
    // which is never held, must be out first, or it counts as a try)
    let id = queued_id(&relay).await;
    wait_until("the bounce's DSN", || {
        mx.delivered()
            .iter()
            .any(|d| d.rcpt_to == ["app@shop.example"])
    })
    .await;
    let tries = mx.rcpt_attempts();
    relay.delivery.act(id, Action::Retry).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(mx.rcpt_attempts(), tries, "held marketing was tried");
    assert!(relay.delivery.show(id).await.unwrap().unwrap().held);

    // unfrozen: held mail goes at once
    assert!(relay.freezes.unfreeze("shop", "admin").unwrap());
    relay.delivery.release("shop");
    wait_until("released", || mx.rcpt_attempts() > tries).await;
    let events = std::fs::read_to_string(_dir.path().join("spool/events/freezes.jsonl")).unwrap();
    assert!(events.contains("\"by\":\"health\""), "{events}");

    // The unfreeze starts the account's health window afresh: one more hard bounce right
    // after it is not judged together with the ones that froze the account.
    assert!(
        send(&relay, "permfail-1@example.net", false)
            .await
            .starts_with("250")
    );
    let dsns = |mx: &FakeMx| {
        mx.delivered()
            .iter()
            .filter(|d| d.rcpt_to == ["app@shop.example"])
            .count()
    };
    wait_until("the second bounce's DSN", || dsns(&mx) == 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await; // a freeze is written off-thread
    assert!(
        relay.freezes.get("shop").is_none(),
        "frozen again by the old window: {:?}",
        relay.freezes.get("shop")
    );
}

#[tokio::test]
async fn the_policy_can_hold_a_frozen_accounts_transactional_mail_too() {
    let (mx, relay, _dir) = setup("hold").await;
    assert!(
        send(&relay, "tempfail-t@example.net", false)
            .await
            .starts_with("250")
    );
    let id = queued_id(&relay).await;
    relay
        .freezes
        .freeze("shop", "manual test", "admin")
        .unwrap();
    relay.delivery.act(id, Action::Retry).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(mx.rcpt_attempts(), 1, "held transactional mail was tried");
    relay.freezes.unfreeze("shop", "admin").unwrap();
    relay.delivery.release("shop");
    wait_until("released", || mx.rcpt_attempts() == 2).await;
}

/// Complaints count against the account's delivered mail: four marketing messages
/// delivered, then one recipient reports theirs through the report-spam form (as an ARF
/// report would): 25 % over the policy's 20 % freezes the account by itself.
#[tokio::test]
async fn a_complaint_through_the_form_freezes_the_account() {
    let mx = FakeMx::new(MxOptions::default());
    let mx_addr = mx.listen().await;
    let dir = tempfile::tempdir().unwrap();
    let extra =
        format!("[delivery]\nsmarthost = \"{mx_addr}\"\n[http]\nlisten = \"127.0.0.1:0\"\n");
    let policy = policy("send").replace(
        "max_hard_bounce_rate = 0.2",
        "max_hard_bounce_rate = 0.2\nmax_complaint_rate = 0.2",
    );
    let relay = support::start_relay(dir.path(), &extra, &policy).await;
    for i in 0..4 {
        assert!(
            send(&relay, &format!("reader{i}@example.net"), true)
                .await
                .starts_with("250")
        );
    }
    wait_until("4 delivered", || mx.delivered().len() == 4).await;
    assert!(relay.freezes.get("shop").is_none());
    // the token of one delivered copy's one-click link
    let text = mx.delivered()[0].text().replace("\r\n ", " ");
    let line = text
        .lines()
        .find(|l| l.starts_with("List-Unsubscribe: "))
        .expect("List-Unsubscribe");
    let start = line.find("/u/").unwrap() + 3;
    let token = &line[start..start + line[start..].find('>').unwrap()];
    let mut c = tokio::net::TcpStream::connect(relay.http_addr.unwrap())
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = "report=unwanted";
    c.write_all(
        format!(
            "POST /complaint/{token} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    wait_until("frozen", || relay.freezes.get("shop").is_some()).await;
    let frozen = relay.freezes.get("shop").unwrap();
    assert_eq!(frozen.by, "health");
    assert!(
        frozen
            .reason
            .starts_with("complaint rate 25.00% over 20.00%"),
        "{}",
        frozen.reason
    );
    assert_eq!(relay.account_counts.get("shop").complaints, 1);
}
