//! The recipient's page for a sender, through a running relay and a fake MX: the lists the
//! person is on with their checkboxes, the sender's display name, logo and colour (never
//! its description) under a policy that allows exactly them, saving choices, "I
//! unsubscribed by mistake" needing a fresh confirmation, and the consent record marked
//! withdrawn by an unsubscribe.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;

use crate::support::{
    Account, Admin, MxOptions, Running, SIGNED_UP, confirm_path_of, policy, token_of,
};

const TOKEN: &str = "test-token-0123456789";
const WAIT: Duration = Duration::from_secs(10);

fn accounts() -> String {
    let news = Account::news()
        .description("internal: tenant 42")
        .set("display_name", "\"Example News\"")
        .set("logo_url", "\"https://cdn.news.example/logo.png\"")
        .set("brand_colour", "\"#112233\"")
        .list_with(
            "weekly",
            &[("name", "The Weekly"), ("consent_statement", SIGNED_UP)],
        )
        .list_with(
            "daily",
            &[("name", "The Daily"), ("consent_statement", SIGNED_UP)],
        )
        .list_with(
            "monthly",
            &[("name", "The Monthly"), ("consent_statement", SIGNED_UP)],
        )
        .set("default_list", "\"weekly\"");
    policy(&[news], "")
}

struct Setup {
    run: Running,
    admin: Admin,
    web: SocketAddr,
}

impl Setup {
    async fn start() -> Setup {
        let config = format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
             [unsubscribe]\npublic_url = \"https://relay.example\"\n"
        );
        let run = Running::start(MxOptions::default(), &config, &accounts()).await;
        let admin = Admin::new(run.relay.admin_addr.unwrap(), TOKEN);
        let web = run.relay.http_addr.unwrap();
        Setup { run, admin, web }
    }

    async fn request(&self, method: &str, path: &str, body: &str) -> crate::support::http::Answer {
        crate::support::request(self.web, method, path, body).await
    }

    async fn send(&self, list: &str) -> String {
        let body = format!(
            "From: <news@news.example>\r\nSubject: hi\r\nX-Optin-List: {list}\r\n\r\nHello"
        );
        self.run
            .send("news@news.example", &["reader@example.net"], &body)
            .await
    }
}

/// The confirmation link of the confirmation message among the first `n` delivered (in
/// whatever order delivery finished them).
async fn confirmation(s: &Setup, n: usize) -> String {
    let delivered = s.run.mx.wait_for(n, WAIT).await;
    let found = delivered
        .iter()
        .find(|d| d.text().contains("Please confirm your subscription"))
        .expect("a confirmation message");
    assert_eq!(found.rcpt_to, ["reader@example.net"]);
    confirm_path_of(&found.data)
}

#[tokio::test]
async fn the_preference_page_shows_and_saves_the_lists_the_person_is_on() {
    let s = Setup::start().await;
    for list in ["weekly", "daily"] {
        let (status, v) = s
            .admin
            .post(
                "/admin/consent/grant",
                json!({"address": "reader@example.net", "account": "news", "list": list}),
            )
            .await;
        assert_eq!(status, 200, "{v}");
    }
    assert!(s.send("weekly").await.starts_with("250"));
    let token = token_of(&s.run.mx.wait_for(1, WAIT).await[0].text());
    let page_path = format!("/u/{token}");

    let page = s.request("GET", &page_path, "").await;
    assert_eq!(page.status, 200);
    let html = &page.body;
    assert!(
        html.contains("<title>Your subscriptions with Example News</title>"),
        "{html}"
    );
    assert!(html.contains("r***@example.net"), "{html}");
    assert!(
        !html.contains("tenant 42"),
        "the description is the operator's: {html}"
    );
    assert!(html.contains("<img src=\"https://cdn.news.example/logo.png\" alt=\"Example News\""));
    assert!(html.contains("button{background:#112233"), "{html}");
    assert!(html.contains("<legend>Lists of Example News you receive</legend>"));
    assert!(
        html.contains("id=\"list-weekly\" name=\"keep\" value=\"weekly\" checked>"),
        "{html}"
    );
    assert!(
        html.contains("id=\"list-daily\" name=\"keep\" value=\"daily\" checked>"),
        "{html}"
    );
    assert!(html.contains("<label for=\"list-daily\">The Daily</label>"));
    assert!(!html.contains("The Monthly"), "never on it: not shown");
    assert!(
        html.contains("You subscribed on "),
        "the ledger's date: {html}"
    );
    assert!(!html.contains("<script"), "works without script");
    let csp = page.header("content-security-policy").join("");
    assert!(csp.contains("img-src https://cdn.news.example;"), "{csp}");
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("script-src"),
        "{csp}"
    );

    // Uncheck the daily: it is left at once; the weekly goes on.
    let saved = s
        .request("POST", &format!("{page_path}/preferences"), "keep=weekly")
        .await;
    assert_eq!(saved.status, 200, "{}", saved.body);
    assert!(saved.body.contains("You left The Daily."), "{}", saved.body);
    assert!(!s.send("daily").await.starts_with("250"));
    assert!(s.send("weekly").await.starts_with("250"));
    let page = s.request("GET", &page_path, "").await;
    assert!(
        page.body.contains("value=\"daily\">"),
        "unchecked now: {}",
        page.body
    );
    let (_, record) = s
        .admin
        .get("/admin/consent/news/daily/reader%40example.net")
        .await;
    assert_eq!(record["withdrawn_how"], "unsubscribe", "{record}");

    // Check it again: only a confirmation message, then the button, bring it back.
    let saved = s
        .request(
            "POST",
            &format!("{page_path}/preferences"),
            "keep=weekly&keep=daily",
        )
        .await;
    assert!(
        saved
            .body
            .contains("A message to confirm The Daily is on its way"),
        "{}",
        saved.body
    );
    assert!(!s.send("daily").await.starts_with("250"));
    let link = confirmation(&s, 3).await;
    assert_eq!(s.request("POST", &link, "confirm=yes").await.status, 200);
    assert!(s.send("daily").await.starts_with("250"));
}

#[tokio::test]
async fn unsubscribed_by_mistake_needs_a_fresh_confirmation() {
    let s = Setup::start().await;
    crate::support::grant(&s.run.relay, "news", "weekly", "reader@example.net");
    assert!(s.send("weekly").await.starts_with("250"));
    let token = token_of(&s.run.mx.wait_for(1, WAIT).await[0].text());
    let done = s
        .request("POST", &format!("/u/{token}"), "List-Unsubscribe=One-Click")
        .await;
    assert_eq!(done.status, 200);
    assert!(
        done.body
            .contains("I unsubscribed from The Weekly by mistake"),
        "{}",
        done.body
    );
    let page = s.request("GET", &format!("/u/{token}"), "").await;
    assert!(
        page.body
            .contains("You unsubscribed from <strong>The Weekly</strong>"),
        "{}",
        page.body
    );
    // The click alone changes nothing; the confirmation's button does.
    let again = s
        .request("POST", &format!("/u/{token}/resubscribe"), "")
        .await;
    assert_eq!(again.status, 200);
    assert!(
        again.body.contains("Please check your inbox"),
        "{}",
        again.body
    );
    assert!(!s.send("weekly").await.starts_with("250"));
    let link = confirmation(&s, 2).await;
    let page = s.request("GET", &link, "").await;
    assert!(page.body.contains("The Weekly"), "{}", page.body);
    assert_eq!(s.request("POST", &link, "confirm=yes").await.status, 200);
    assert!(s.send("weekly").await.starts_with("250"));
    // A made-up token opens nothing.
    assert_eq!(
        s.request("POST", "/u/AAAA/resubscribe", "").await.status,
        400
    );
    assert_eq!(
        s.request("POST", "/u/AAAA/preferences", "keep=weekly")
            .await
            .status,
        400
    );
}
