//! Subscription forms through a running relay and a fake MX: the double opt-in round trip
//! (the form, the confirmation message, a page whose GET changes nothing, the button that
//! records the consent with its proof), the allow-listed redirect, single opt-in, the abuse
//! limits (per client address, per address, the honeypot), forged and expired links, and
//! an unsubscribe lifted by a fresh confirmation.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;

use crate::support::{
    Account, Admin, MxOptions, Running, SIGNED_UP, confirm_path_of, policy, token_of,
};

const TOKEN: &str = "test-token-0123456789";
const WAIT: Duration = Duration::from_secs(10);

fn config(subscribe: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [unsubscribe]\npublic_url = \"https://relay.example\"\n[subscribe]\n{subscribe}"
    )
}

/// shop: `deals` by double opt-in with a thank-you page, `news` by single opt-in,
/// `vip` without a form.
fn accounts() -> String {
    let shop = Account::shop()
        .list_toml(
            "deals",
            &[
                ("name", "\"Shop Deals\""),
                ("consent_statement", &format!("\"{SIGNED_UP}\"")),
                ("subscribe", "\"double\""),
                ("thank_you_urls", "[\"https://shop.example/thanks\"]"),
            ],
        )
        .list_toml(
            "news",
            &[
                ("consent_statement", &format!("\"{SIGNED_UP}\"")),
                ("subscribe", "\"single\""),
            ],
        )
        .list("vip", SIGNED_UP)
        .list_toml(
            "club",
            &[
                ("consent_statement", &format!("\"{SIGNED_UP}\"")),
                ("consent_max_age", "\"2s\""),
            ],
        )
        .set("default_list", "\"deals\"");
    policy(&[shop], "")
}

struct Setup {
    run: Running,
    admin: Admin,
    web: SocketAddr,
}

async fn setup(subscribe: &str) -> Setup {
    let run = Running::start(MxOptions::default(), &config(subscribe), &accounts()).await;
    let admin = Admin::new(run.relay.admin_addr.unwrap(), TOKEN);
    let web = run.relay.http_addr.unwrap();
    Setup { run, admin, web }
}

impl Setup {
    async fn post(&self, path: &str, body: &str) -> crate::support::http::Answer {
        crate::support::request(self.web, "POST", path, body).await
    }

    async fn get(&self, path: &str) -> crate::support::http::Answer {
        crate::support::request(self.web, "GET", path, "").await
    }

    async fn consent(&self, list: &str, address: &str) -> bool {
        let (_, v) = self
            .admin
            .get(&format!(
                "/admin/suppressions/{}?account=shop&list={list}&stream=marketing",
                address.replace('@', "%40")
            ))
            .await;
        v["consent"] == true
    }

    async fn marketing(&self, list: &str, to: &str) -> String {
        let body = format!(
            "From: <news@shop.example>\r\nSubject: hi\r\nX-Optin-Stream: marketing\r\n\
             X-Optin-List: {list}\r\n\r\nHello {to}"
        );
        self.run.send("news@shop.example", &[to], &body).await
    }
}

#[tokio::test]
async fn double_opt_in_records_consent_only_when_the_button_is_pressed() {
    let s = setup("").await;
    let a = s
        .post(
            "/s/shop/deals",
            "email=Ann%40Example.NET&redirect=https%3A%2F%2Fshop.example%2Fthanks",
        )
        .await;
    assert_eq!(a.status, 303, "{}", a.body);
    assert_eq!(a.header("location"), ["https://shop.example/thanks"]);
    let mail = &s.run.mx.wait_for(1, WAIT).await[0];
    let text = mail.text();
    assert_eq!(mail.rcpt_to, ["ann@example.net"]);
    assert!(
        text.contains("Please confirm your subscription to Shop Deals"),
        "{text}"
    );
    assert!(text.contains("hello@shop.example"), "{text}");
    let link = confirm_path_of(&mail.data);

    // Not before the button: the message, the page's GET, a POST without `confirm`.
    assert!(!s.consent("deals", "ann@example.net").await);
    let page = s.get(&link).await;
    assert_eq!(page.status, 200);
    assert!(
        page.body
            .contains("Subscribe to <strong>Shop Deals</strong> from shop"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("<button type=\"submit\">"),
        "{}",
        page.body
    );
    assert_eq!(s.post(&link, "").await.status, 400);
    assert!(!s.consent("deals", "ann@example.net").await);
    assert!(
        !s.marketing("deals", "ann@example.net")
            .await
            .starts_with("250")
    );

    let done = s.post(&link, "confirm=yes").await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(s.consent("deals", "ann@example.net").await);
    assert!(
        s.marketing("deals", "ann@example.net")
            .await
            .starts_with("250")
    );
    // The proof: both requests, the wording.
    let (status, record) = s
        .admin
        .get("/admin/consent/shop/deals/ann%40example.net")
        .await;
    assert_eq!(status, 200);
    assert_eq!(record["how"], "double_opt_in", "{record}");
    assert_eq!(record["ip"], "127.0.0.1");
    assert!(record["asked_ms"].as_u64().unwrap() <= record["granted_ms"].as_u64().unwrap());
    assert!(
        record["detail"]
            .as_str()
            .unwrap()
            .starts_with("confirmed from 127.0.0.1")
    );
    assert_eq!(record["wording"]["statement"], SIGNED_UP);

    // A changed token, a made-up one: refused, nothing recorded.
    let mut bad = link.clone();
    bad.insert(bad.len() - 3, 'A');
    assert_eq!(s.get(&bad).await.status, 400);
    assert_eq!(s.post("/s/confirm/AAAA", "confirm=yes").await.status, 400);
    // A redirect not on the list's allow-list is not followed.
    let a = s
        .post(
            "/s/shop/deals",
            "email=x%40example.net&redirect=https%3A%2F%2Fevil.example%2F",
        )
        .await;
    assert_eq!(a.status, 200);
    assert!(a.header("location").is_empty());
    // No form on a list without one; an unknown list; no address.
    assert_eq!(
        s.post("/s/shop/vip", "email=y%40example.net").await.status,
        404
    );
    assert_eq!(
        s.post("/s/shop/nope", "email=y%40example.net").await.status,
        404
    );
    assert_eq!(s.post("/s/shop/deals", "email=").await.status, 400);
    assert_eq!(
        s.post("/s/shop/deals", "email=not-an-address").await.status,
        400
    );
}

#[tokio::test]
async fn the_form_cannot_be_used_to_mail_bomb_anyone() {
    let s = setup("max_per_address = 2\nmax_per_ip = 7\n").await;
    // The same address three times: two confirmations, the same answer each time.
    for _ in 0..3 {
        let a = s.post("/s/shop/deals", "email=bob%40example.net").await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert!(a.body.contains("Please check your inbox"));
    }
    // A bot filling the hidden field gets the same page, and nobody any mail.
    let a = s
        .post(
            "/s/shop/deals",
            "email=carol%40example.net&website=http%3A%2F%2Fspam",
        )
        .await;
    assert!(a.body.contains("Please check your inbox"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivered = s.run.mx.wait_for(2, WAIT).await;
    assert_eq!(delivered.len(), 2);
    assert!(delivered.iter().all(|d| d.rcpt_to == ["bob@example.net"]));
    // An address already subscribed gets nothing either (and the page is the same).
    crate::support::grant(&s.run.relay, "shop", "deals", "dan@example.net");
    assert!(
        s.post("/s/shop/deals", "email=dan%40example.net")
            .await
            .body
            .contains("check your inbox")
    );
    // The client address's hourly cap: 7 posts, then 429.
    for i in 0..3 {
        let a = s
            .post("/s/shop/deals", &format!("email=e{i}%40example.net"))
            .await;
        assert_eq!(a.status, 200, "post {i}: {}", a.body);
    }
    let a = s.post("/s/shop/deals", "email=f%40example.net").await;
    assert_eq!(a.status, 429, "{}", a.body);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.run.mx.delivered().len(), 5, "bob twice, e0..e2");
}

#[tokio::test]
async fn single_opt_in_records_at_once_and_never_lifts_an_unsubscribe() {
    let s = setup("").await;
    let a = s.post("/s/shop/news", "email=gus%40example.net").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains("You are subscribed"));
    assert!(s.consent("news", "gus@example.net").await);
    let (_, record) = s
        .admin
        .get("/admin/consent/shop/news/gus%40example.net")
        .await;
    assert_eq!(
        (record["how"].clone(), record["ip"].clone()),
        (json!("form"), json!("127.0.0.1"))
    );
    assert!(
        s.marketing("news", "gus@example.net")
            .await
            .starts_with("250")
    );
    // Unsubscribed, a stranger's form post cannot put the address back.
    let token = token_of(&s.run.mx.wait_for(1, WAIT).await[0].text());
    let (status, _) = crate::support::http(
        s.web,
        "POST",
        &format!("/u/{token}"),
        "List-Unsubscribe=One-Click",
    )
    .await;
    assert_eq!(status, 200);
    s.post("/s/shop/news", "email=gus%40example.net").await;
    assert!(
        !s.marketing("news", "gus@example.net")
            .await
            .starts_with("250")
    );
}

#[tokio::test]
async fn a_fresh_confirmation_lifts_an_unsubscribe_and_an_old_link_expires() {
    let s = setup("confirm_ttl = \"2s\"\n").await;
    s.post("/s/shop/deals", "email=hal%40example.net").await;
    let link = confirm_path_of(&s.run.mx.wait_for(1, WAIT).await[0].data);
    assert_eq!(s.post(&link, "confirm=yes").await.status, 200);
    assert!(
        s.marketing("deals", "hal@example.net")
            .await
            .starts_with("250")
    );
    let token = token_of(&s.run.mx.wait_for(2, WAIT).await[1].text());
    // Unsubscribed from everything the account sends.
    let (status, _) = crate::support::http(
        s.web,
        "POST",
        &format!("/u/{token}"),
        "List-Unsubscribe=One-Click&scope=account",
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        !s.marketing("deals", "hal@example.net")
            .await
            .starts_with("250")
    );
    crate::support::grant(&s.run.relay, "shop", "news", "hal@example.net");
    // "By mistake": the form again, a new confirmation, the button.
    s.post("/s/shop/deals", "email=hal%40example.net").await;
    let link = confirm_path_of(&s.run.mx.wait_for(3, WAIT).await[2].data);
    assert_eq!(s.post(&link, "confirm=yes").await.status, 200);
    assert!(
        s.marketing("deals", "hal@example.net")
            .await
            .starts_with("250")
    );
    // Only that list came back: the unsubscribe from the account's other lists stays.
    assert!(
        !s.marketing("news", "hal@example.net")
            .await
            .starts_with("250")
    );
    // A link older than confirm_ttl no longer works.
    s.post("/s/shop/deals", "email=ivy%40example.net").await;
    let delivered = s.run.mx.wait_for(5, WAIT).await;
    let ivy = delivered
        .iter()
        .find(|d| d.rcpt_to == ["ivy@example.net"])
        .unwrap();
    let link = confirm_path_of(&ivy.data);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(s.get(&link).await.status, 410);
    assert_eq!(s.post(&link, "confirm=yes").await.status, 410);
    assert!(!s.consent("deals", "ivy@example.net").await);
}

#[tokio::test]
async fn aged_consent_stops_marketing_until_the_person_asks_to_stay() {
    let s = setup("").await;
    let (status, v) = s
        .admin
        .post(
            "/admin/consent/grant",
            json!({"address": "jo@example.net", "account": "shop", "list": "club"}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    // Consent imported by the operator straight into the journal has no record: it does
    // not age.
    crate::support::grant(&s.run.relay, "shop", "club", "kim@example.net");
    assert!(
        s.marketing("club", "jo@example.net")
            .await
            .starts_with("250")
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let refused = s.marketing("club", "jo@example.net").await;
    assert!(
        refused.contains("consent older than this list allows"),
        "{refused}"
    );
    assert!(
        s.marketing("club", "kim@example.net")
            .await
            .starts_with("250")
    );

    // The account asks those whose consent aged, once.
    let (_, key) = s.admin.post("/admin/accounts/shop/keys", json!({})).await;
    let api = Admin::new(s.web, key["key"].as_str().unwrap());
    let (status, v) = api
        .post("/account/lists/club/repermission", json!({}))
        .await;
    assert_eq!((status, v["asked"].clone()), (200, json!(1)), "{v}");
    let (_, v) = api
        .post("/account/lists/club/repermission", json!({}))
        .await;
    assert_eq!(v["asked"], 0, "asked once: {v}");
    let (status, _) = api
        .post("/account/lists/deals/repermission", json!({}))
        .await;
    assert_eq!(status, 409, "a list without consent_max_age");
    let delivered = s.run.mx.wait_for(3, WAIT).await;
    let question = delivered
        .iter()
        .find(|d| d.text().contains("Do you want to keep receiving club?"))
        .expect("a re-permission message");
    assert_eq!(question.rcpt_to, ["jo@example.net"]);
    let link = confirm_path_of(&question.data);
    let page = s.get(&link).await;
    assert!(
        page.body.contains("Keep receiving <strong>club</strong>"),
        "{}",
        page.body
    );
    assert_eq!(s.post(&link, "confirm=yes").await.status, 200);
    assert!(
        s.marketing("club", "jo@example.net")
            .await
            .starts_with("250")
    );
    let (_, record) = s
        .admin
        .get("/admin/consent/shop/club/jo%40example.net")
        .await;
    assert_eq!(record["how"], "reconfirmed", "{record}");
}
