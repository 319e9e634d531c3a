//! Account health through a running relay: hard bounces over the policy's threshold
//! freeze the account by themselves; its next submission is refused, its queued marketing
//! is held (and transactional mail too when the policy says so) until it is unfrozen.

use std::time::Duration;

use optin_relay::delivery::control::Action;

use crate::support::{
    self, Account, FakeMx, MxOptions, Running, SIGNED_UP, eventually, grant, mail_reply, poll,
    raw_send, token_of,
};

/// `shop` sends both streams; over a 20 % hard bounce rate (of at least 4 attempts in an
/// hour) it is frozen, its transactional mail then as `transactional` says.
fn policy(transactional: &str) -> String {
    let health = format!(
        "[health]\nwindow = \"1h\"\nmin_volume = 4\nmax_hard_bounce_rate = 0.2\n\
         frozen_transactional = \"{transactional}\"\n"
    );
    support::policy(&[Account::shop().list("deals", SIGNED_UP)], &health)
}

/// A relay delivering to a fake MX, retrying after an hour.
async fn setup(transactional: &str) -> (FakeMx, optin_relay::server::Relay, tempfile::TempDir) {
    let delivery = "retry_initial = \"1h\"\n";
    let run = Running::start(MxOptions::default(), delivery, &policy(transactional)).await;
    (run.mx, run.relay, run.dir)
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

/// [`send`]; the relay must take the message.
async fn accepted(relay: &optin_relay::server::Relay, to: &str, marketing: bool) {
    assert!(send(relay, to, marketing).await.starts_with("250"));
}

async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    eventually(Duration::from_secs(10), what, async || check()).await;
}

/// The only queued message's id, once its first attempt is over.
async fn queued_id(relay: &optin_relay::server::Relay) -> optin_relay::envelope::QueueId {
    poll(
        Duration::from_secs(10),
        "a message waiting for its retry",
        async || {
            let list = relay.delivery.list(None, 10, None).await.unwrap().messages;
            (list.len() == 1
                && list[0].recipients[0].status == "waiting"
                && list[0].recipients[0].attempts == 1)
                .then(|| optin_relay::envelope::QueueId::parse(&list[0].id).unwrap())
        },
    )
    .await
}

#[tokio::test]
async fn hard_bounces_over_the_threshold_freeze_the_account_until_unfrozen() {
    let (mx, relay, _dir) = setup("send").await;
    // a marketing message that waits for its retry (451 at RCPT)
    accepted(&relay, "tempfail-m@example.net", true).await;
    for i in 0..3 {
        accepted(&relay, &format!("ok{i}@example.net"), false).await;
    }
    wait_until("3 delivered", || mx.delivered().len() == 3).await;
    assert!(
        relay.freezes.get("shop").is_none(),
        "not yet: 3 delivered, 0 bounced"
    );
    // one hard bounce: 1 of 4 attempts, 25 % over 20 %, at the minimum volume
    accepted(&relay, "permfail-0@example.net", false).await;
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
    let reply = mail_reply(relay.smtp_addrs[0], "app@shop.example").await;
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
    accepted(&relay, "permfail-1@example.net", false).await;
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
    accepted(&relay, "tempfail-t@example.net", false).await;
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
    let policy = policy("send").replace(
        "max_hard_bounce_rate = 0.2",
        "max_hard_bounce_rate = 0.2\nmax_complaint_rate = 0.2",
    );
    let http = "[http]\nlisten = \"127.0.0.1:0\"\n";
    let (mx, relay, _dir) = Running::start(MxOptions::default(), http, &policy)
        .await
        .into_parts();
    for i in 0..4 {
        accepted(&relay, &format!("reader{i}@example.net"), true).await;
    }
    wait_until("4 delivered", || mx.delivered().len() == 4).await;
    assert!(relay.freezes.get("shop").is_none());
    // the token of one delivered copy's one-click link
    let token = token_of(&mx.delivered()[0].text());
    let path = format!("/complaint/{token}");
    let (status, answer) =
        support::http(relay.http_addr.unwrap(), "POST", &path, "report=unwanted").await;
    assert_eq!(status, 200, "{answer}");
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
