//! Engagement tracking through a running relay: a list that tracks gets its links pointed
//! at the click redirect and an open pixel, per recipient, under the footer; the redirect
//! leads only where the message's link led; opens and clicks count for the campaign's
//! canary, and a campaign whose canary nobody engages with is declined.

use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpStream;

use crate::support::{
    self, Account, Admin, MxOptions, Running, SUBSCRIBED, eventually, grant, http_on, metric,
    send_ok,
};

const TOKEN: &str = "tracking-admin-token-0123456789";
const WAIT: Duration = Duration::from_secs(20);

/// `news` sends `weekly` (tracked) and `plain` (not); campaigns (canary of 2) are judged
/// after `window` and need half the canary engaged.
async fn setup(window: &str) -> Running {
    let news = Account::news()
        .tracked_list("weekly", SUBSCRIBED)
        .list("plain", SUBSCRIBED);
    let policy = support::policy(
        &[news],
        &format!(
            "[campaigns]\nevaluation_window = \"{window}\"\ncanary_count = 2\n\
             min_engagement_rate = 0.5\n"
        ),
    );
    let config = format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         token = \"{TOKEN}\"\n[unsubscribe]\npublic_url = \"https://t.relay.example\"\n\
         mail_domain = \"relay.test\"\n"
    );
    Running::start(MxOptions::default(), &config, &policy).await
}

fn message(list: &str, campaign: &str, to: &str) -> String {
    format!(
        "From: News <hello@news.example>\r\nTo: <{to}>\r\nSubject: Sale\r\n\
         X-Optin-List: {list}\r\nX-Optin-Campaign: {campaign}\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/alternative; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         Our sale: https://shop.example/sale?a=1&b=2 (ends Sunday).\r\n\
         --b\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
         <html><body><p><a href=3D\"https://shop.example/sale?a=3D1&amp;b=3D2\">Sale</a> =\r\n\
         <a href=3D\"mailto:help@news.example\">Help</a></p></body></html>\r\n\
         --b--\r\n"
    )
}

/// The decoded text of a delivered copy.
fn decoded(raw: &[u8]) -> String {
    let m = mail_parser::MessageParser::default().parse(raw).unwrap();
    let text = m.body_text(0).unwrap().into_owned();
    let html = m.body_html(0).unwrap().into_owned();
    format!("{text}\n{html}")
}

/// The path of every `https://t.relay.example/{kind}/TOKEN` in `text`.
fn paths(text: &str, kind: &str) -> Vec<String> {
    let prefix = format!("https://t.relay.example/{kind}/");
    text.split(&prefix)
        .skip(1)
        .map(|rest| {
            let token: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            format!("/{kind}/{token}")
        })
        .collect()
}

async fn get(s: &Running, method: &str, path: &str) -> support::http::Answer {
    let stream = TcpStream::connect(s.relay.http_addr.unwrap())
        .await
        .unwrap();
    http_on(stream, method, path, "").await
}

async fn campaign(s: &Running, id: &str) -> Value {
    Admin::new(s.relay.admin_addr.unwrap(), TOKEN)
        .call("GET", &format!("/admin/campaigns/news/{id}"), None)
        .await
        .1
}

#[tokio::test]
async fn tracked_links_redirect_only_where_they_led_and_count() {
    let s = setup("1h").await;
    let admin = s.relay.admin_addr.unwrap();
    let series = [
        "optin_engagements_total{kind=\"click\"}",
        "optin_engagements_total{kind=\"open\"}",
        "optin_tracking_refused_total{kind=\"click\"}",
    ];
    let mut before = Vec::new();
    for name in series {
        before.push(metric(admin, name).await);
    }
    for to in ["a@example.net", "b@example.net"] {
        grant(&s.relay, "news", "weekly", to);
        send_ok(
            s.smtp(),
            "bounce@news.example",
            &[to],
            &message("weekly", "spring", to),
        )
        .await;
    }
    grant(&s.relay, "news", "plain", "c@example.net");
    send_ok(
        s.smtp(),
        "bounce@news.example",
        &["c@example.net"],
        &message("plain", "other", "c@example.net"),
    )
    .await;
    let got = s.mx.wait_for(3, WAIT).await;
    let copy = |to: &str| {
        let d = got.iter().find(|d| d.rcpt_to == [to.to_string()]).unwrap();
        decoded(&d.data)
    };
    let a = copy("a@example.net");
    // Both bodies' links go through the redirect; mailto and the unsubscribe link do not;
    // the footer is there; the HTML has the pixel.
    let clicks = paths(&a, "c");
    assert_eq!(clicks.len(), 2, "{a}");
    assert!(a.contains("mailto:help@news.example"), "{a}");
    assert!(
        a.contains("https://t.relay.example/u/"),
        "the footer's own link: {a}"
    );
    assert!(!a.contains("https://shop.example/sale"), "{a}");
    let opens = paths(&a, "o");
    assert_eq!(opens.len(), 1, "{a}");
    // Another recipient, another token; an untracked list, untouched links.
    assert_ne!(paths(&copy("b@example.net"), "c")[0], clicks[0]);
    let c = copy("c@example.net");
    assert!(c.contains("https://shop.example/sale?a=1&b=2") && paths(&c, "c").is_empty());

    // The redirect leads where the link led (the HTML's &amp; decoded), without cookies.
    for click in &clicks {
        let r = get(&s, "GET", click).await;
        assert_eq!(r.status, 302, "{}", r.body);
        assert_eq!(r.header("location"), ["https://shop.example/sale?a=1&b=2"]);
        assert!(r.header("set-cookie").is_empty());
    }
    // A HEAD (a link scanner) answers without counting.
    assert_eq!(get(&s, "HEAD", &clicks[0]).await.status, 302);
    // A changed or made-up token goes nowhere.
    let mut tampered = clicks[0].clone().into_bytes();
    let i = tampered.len() - 3;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    for bad in [
        String::from_utf8(tampered).unwrap(),
        "/c/AAAA".to_string(),
        opens[0].replace("/o/", "/c/"),
    ] {
        let r = get(&s, "GET", &bad).await;
        assert_eq!(r.status, 404, "{bad}");
        assert!(r.header("location").is_empty());
    }
    let r = get(&s, "GET", &opens[0]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), ["image/gif"]);
    get(&s, "GET", &opens[0]).await;

    let c = campaign(&s, "spring").await;
    assert_eq!(c["canary"]["opened"], 1, "{c}");
    assert_eq!(c["canary"]["clicked"], 1, "{c}");
    assert_eq!(c["canary"]["engaged"], 1, "{c}");
    for (name, (was, want)) in series.iter().zip(before.iter().zip([2.0, 2.0, 3.0])) {
        assert_eq!(metric(admin, name).await - was, want, "{name}");
    }
    let spool = s.spool();
    s.relay.shutdown().await;
    // The figures are kept without addresses.
    let figures = std::fs::read_to_string(spool.join("state/engagement.json")).unwrap();
    let f: Value = serde_json::from_str(&figures).unwrap();
    assert_eq!(
        f["campaigns"]["news/spring"]["unique_clicks"], 1,
        "{figures}"
    );
    assert_eq!(f["lists"]["news/weekly"]["clicks"], 2, "{figures}");
    assert!(!figures.contains("example.net"));
}

#[tokio::test]
async fn a_canary_nobody_engages_with_is_declined() {
    let s = setup("2s").await;
    for to in ["x@example.net", "y@example.net"] {
        grant(&s.relay, "news", "weekly", to);
        send_ok(
            s.smtp(),
            "bounce@news.example",
            &[to],
            &message("weekly", "quiet", to),
        )
        .await;
    }
    eventually(WAIT, "declined", async || {
        campaign(&s, "quiet").await["stage"] == "declined"
    })
    .await;
    let c = campaign(&s, "quiet").await;
    let reason = c["reason"].as_str().unwrap();
    assert!(
        reason.contains("canary engagement rate 0.00% under the 50.00%"),
        "{reason}"
    );
    s.relay.shutdown().await;
}
