//! The admin API through a running relay: every endpoint with its token check, bad input
//! and the happy path; freezes refusing submissions and holding queued marketing until
//! unfrozen; erasure dropping queued mail; and the OpenAPI description kept in step with
//! the routes.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    Account, Admin, MxOptions, Running, SIGNED_UP, eventually, grant, mail_reply, policy, poll,
    settle,
};

const TOKEN: &str = "test-token-0123456789";

/// `shop` sends both streams; marketing to its list `deals`.
fn shop_policy() -> String {
    let shop = Account::shop().domains(&["shop.example", "b.example"]);
    policy(&[shop.list("deals", SIGNED_UP)], "")
}

/// A relay delivering to a fake MX (retrying after an hour), and its admin API.
struct Setup {
    run: Running,
    api: Admin,
}

impl Setup {
    fn mx(&self) -> &crate::support::FakeMx {
        &self.run.mx
    }

    fn smtp(&self) -> SocketAddr {
        self.run.smtp()
    }

    async fn send(&self, from: &str, to: &[&str], body: &str) -> String {
        self.run.send(from, to, body).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.api.get(path).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.api.post(path, body).await
    }

    /// A request with the token and no body.
    async fn call(&self, method: &str, path: &str) -> (u16, Value) {
        self.api.call(method, path, None).await
    }
}

async fn setup(mx_options: MxOptions) -> Setup {
    let run = Running::start(
        mx_options,
        &format!(
            "retry_initial = \"1h\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"
        ),
        &shop_policy(),
    )
    .await;
    let api = Admin::new(run.relay.admin_addr.unwrap(), TOKEN);
    Setup { run, api }
}

/// Waits until the queue summary says `n` messages.
async fn queued(s: &Setup, n: u64) -> Value {
    poll(
        Duration::from_secs(4),
        &format!("the queue holding {n} messages"),
        async || {
            let (_, v) = s.get("/admin/queue").await;
            (v["messages"] == n).then_some(v)
        },
    )
    .await
}

/// Waits until no recipient is in flight (every queued one has had its attempt).
async fn settled(s: &Setup) {
    eventually(
        Duration::from_secs(4),
        "recipients still in flight",
        async || {
            let (_, list) = s.get("/admin/queue/messages").await;
            !list["messages"].as_array().unwrap().iter().any(|m| {
                m["recipients"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r["status"] == "in_flight" || r["attempts"] == 0)
            })
        },
    )
    .await;
}

#[tokio::test]
async fn every_request_needs_the_token() {
    let s = setup(MxOptions::default()).await;
    let answer = s.api.call_as(None, "GET", "/admin/queue", None).await;
    let (status, head, v) = (answer.status, &answer.head, answer.json());
    assert_eq!(status, 401);
    assert!(
        head.to_lowercase().contains("www-authenticate: bearer"),
        "{head}"
    );
    assert_eq!(v["status"], 401);
    assert!(v["error"].as_str().unwrap().contains("token"));
    let wrong = Some("wrong-token-0123456789");
    let status = s
        .api
        .call_as(wrong, "GET", "/admin/queue", None)
        .await
        .status;
    assert_eq!(status, 401);
    let body = Some(json!({"address": "a@b.example"}));
    let status = s
        .api
        .call_as(None, "POST", "/admin/erase", body)
        .await
        .status;
    assert_eq!(status, 401, "no action without the token");
    // unknown endpoints: 404 in JSON, but only with the token
    let status = s.api.call_as(None, "GET", "/admin/nope", None).await.status;
    assert_eq!(status, 401);
    let (status, v) = s.get("/admin/nope").await;
    assert_eq!((status, v["status"].clone()), (404, json!(404)));
    // a wrong method and a bad query are JSON errors too
    let (status, v) = s.call("PUT", "/admin/queue").await;
    assert_eq!((status, v["status"].clone()), (405, json!(405)));
    let (status, v) = s.get("/admin/queue/messages?limit=abc").await;
    assert_eq!((status, v["status"].clone()), (400, json!(400)));
    assert!(v["error"].as_str().unwrap().starts_with("bad query"), "{v}");
    let (status, _) = s.get("/admin/queue/messages?account=nobody").await;
    assert_eq!(status, 404);
    let (status, _) = s.get("/admin/suppressions/a%40b.example?list=deals").await;
    assert_eq!(status, 400, "a list without its account");
    // the public endpoints stay public
    let status = s.api.call_as(None, "GET", "/healthz", None).await.status;
    assert_eq!(status, 200);
}

/// Every operation in the OpenAPI description is routed and refuses a request without the
/// token, and every route in the source is described: the description cannot drift from
/// the API.
#[tokio::test]
async fn the_openapi_description_matches_the_routes() {
    let s = setup(MxOptions::default()).await;
    let (status, doc) = s.get("/admin/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().unwrap();
    let mut described = Vec::new();
    // The account API's paths (`/account/…`, on the public listener) are
    // account_api.rs's to check.
    for (path, ops) in paths.iter().filter(|(p, _)| p.starts_with("/admin/")) {
        for method in ops.as_object().unwrap().keys() {
            described.push((method.to_uppercase(), path.clone()));
            let concrete = path
                .replace("{id}", "00000000000000FF")
                .replace("{name}", "shop")
                .replace("{address}", "someone%40example.net");
            let body = (method == "post").then(|| json!({}));
            let method = method.to_uppercase();
            let answer = s.api.call_as(None, &method, &concrete, body.clone()).await;
            assert_eq!(answer.status, 401, "{method} {path} without the token");
            let (status, v) = s.api.call(&method, &concrete, body).await;
            assert_ne!(status, 405, "{method} {path} is not routed");
            assert_ne!(
                v["error"], "no such admin endpoint",
                "{method} {path} is not routed"
            );
        }
    }
    // The routes in the source, as the router is built.
    let source = include_str!("../../src/http/admin.rs");
    let mut routed = Vec::new();
    let start = source.find("pub fn router").unwrap();
    let router = &source[start..start + source[start..].find("\n}\n").unwrap()];
    for piece in router.split(".route(").skip(1) {
        let path = piece.split('"').nth(1).unwrap();
        let handlers = &piece[..piece.find("))").unwrap_or(piece.len())];
        for (name, method) in [("get(", "GET"), ("post(", "POST"), ("delete(", "DELETE")] {
            if handlers.contains(name) {
                routed.push((method.to_string(), format!("/admin{path}")));
            }
        }
    }
    described.sort();
    routed.sort();
    assert_eq!(described, routed, "the OpenAPI paths and the router differ");
}

#[tokio::test]
async fn the_queue_can_be_inspected_retried_bounced_and_deleted() {
    let s = setup(MxOptions::default()).await;
    // 451 at RCPT: the messages stay queued (retry in an hour)
    for n in 0..3 {
        let r = s
            .send(
                "app@shop.example",
                &[&format!("tempfail-{n}@example.net")],
                "From: <app@shop.example>\r\nSubject: queued\r\n\r\nhello",
            )
            .await;
        assert!(r.starts_with("250"), "{r}");
    }
    queued(&s, 3).await;
    settled(&s).await;
    let (_, summary) = s.get("/admin/queue").await;
    assert_eq!(summary["recipients"], 3);
    assert_eq!(summary["by_account"][0]["account"], "shop");
    assert_eq!(summary["by_account"][0]["messages"], 3);
    assert_eq!(summary["by_site"][0]["site"], "smarthost");
    assert_eq!(summary["by_site"][0]["recipients"], 3);

    let (status, page) = s.get("/admin/queue/messages?account=shop&limit=2").await;
    assert_eq!(status, 200);
    let list = page["messages"].as_array().unwrap().clone();
    assert_eq!(list.len(), 2, "limit");
    // The count is of every matching message, not of the page; the cursor gives the rest.
    assert_eq!(page["total"], 3);
    let next = page["next_after"].as_str().unwrap();
    assert_eq!(next, list[1]["id"].as_str().unwrap());
    let (_, rest) = s
        .get(&format!(
            "/admin/queue/messages?account=shop&limit=2&after={next}"
        ))
        .await;
    assert_eq!(rest["messages"].as_array().unwrap().len(), 1);
    assert_eq!(rest["next_after"], Value::Null);
    assert!(rest["messages"][0]["id"].as_str().unwrap() > next);
    let id = list[0]["id"].as_str().unwrap().to_string();
    assert_eq!(list[0]["recipients"][0]["status"], "waiting");
    assert_eq!(list[0]["recipients"][0]["attempts"], 1);
    assert!(
        list[0]["recipients"][0].get("address").is_none(),
        "no addresses in lists"
    );

    let (status, detail) = s.get(&format!("/admin/queue/messages/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(detail["sender"], "app@shop.example");
    assert_eq!(detail["recipients"][0]["address"], "tempfail-0@example.net");
    assert!(detail["size"].as_u64().unwrap() > 10);

    // bad and unknown ids
    let (status, v) = s.get("/admin/queue/messages/not-an-id").await;
    assert_eq!((status, v["status"].clone()), (400, json!(400)));
    let (status, _) = s.get("/admin/queue/messages/00000000000000FF").await;
    assert_eq!(status, 404);
    let (status, _) = s
        .call("POST", "/admin/queue/messages/00000000000000FF/retry")
        .await;
    assert_eq!(status, 404);

    // retry now: tried again at once (still 451), attempts go up
    let (status, v) = s
        .call("POST", &format!("/admin/queue/messages/{id}/retry"))
        .await;
    assert_eq!((status, v["recipients"].clone()), (200, json!(1)));
    let attempts = async || {
        let (_, d) = s.get(&format!("/admin/queue/messages/{id}")).await;
        d["recipients"][0]["attempts"].as_u64().unwrap()
    };
    let attempts = settle(Duration::from_secs(4), attempts, |a| *a == 2).await;
    assert_eq!(attempts, 2, "retried");

    // bounce: the sender gets a DSN (through the smart host), the message leaves
    let id2 = list[1]["id"].as_str().unwrap().to_string();
    let (status, v) = s
        .call("POST", &format!("/admin/queue/messages/{id2}/bounce"))
        .await;
    assert_eq!((status, v["result"].clone()), (200, json!("bounced")));
    let got = s.mx().wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].rcpt_to, ["app@shop.example"]);
    let dsn = got[0].text();
    assert!(dsn.contains("operator returned the message"), "{dsn}");
    queued(&s, 2).await;

    // delete: gone without a DSN
    let (status, _) = s
        .call("DELETE", &format!("/admin/queue/messages/{id}"))
        .await;
    assert_eq!(status, 200);
    queued(&s, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.mx().delivered().len(), 1, "no DSN for a deletion");
}

#[tokio::test]
async fn a_frozen_account_is_refused_and_its_marketing_held_until_unfrozen() {
    let s = setup(MxOptions::default()).await;
    let (status, all) = s.get("/admin/accounts").await;
    assert_eq!(status, 200);
    assert_eq!(all[0]["account"], "shop");
    assert_eq!(all[0]["frozen"], Value::Null);

    // Marketing queued for later: the first attempt of a tempfail recipient fails, so the
    // message waits an hour; freeze, then retry it by hand: it is held, not sent.
    grant(&s.run.relay, "shop", "deals", "tempfail-m@example.net");
    grant(&s.run.relay, "shop", "deals", "reader@example.net");
    let marketing = |to: &str| {
        format!(
            "From: <news@shop.example>\r\nSubject: deals\r\nX-Optin-Stream: marketing\r\n\
             X-Optin-List: deals\r\n\r\nBuy {to}"
        )
    };
    let r = s
        .send(
            "news@shop.example",
            &["tempfail-m@example.net"],
            &marketing("m"),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    queued(&s, 1).await;
    settled(&s).await;

    // bad input
    for (path, body, want) in [
        ("/admin/accounts/shop/freeze", json!({}), 400),
        ("/admin/accounts/shop/freeze", json!({"reason": " "}), 400),
        ("/admin/accounts/nobody/freeze", json!({"reason": "x"}), 404),
    ] {
        let (status, v) = s.post(path, body).await;
        assert_eq!(status, want, "{v}");
    }

    let (status, v) = s
        .post(
            "/admin/accounts/shop/freeze",
            json!({"reason": "complaint rate 0.5%"}),
        )
        .await;
    assert_eq!((status, v["changed"].clone()), (200, json!(true)));
    assert_eq!(v["frozen"]["reason"], "complaint rate 0.5%");
    assert_eq!(v["frozen"]["by"], "admin");

    // new submissions refused at MAIL with the reason
    let r = s
        .send(
            "news@shop.example",
            &["reader@example.net"],
            &marketing("r"),
        )
        .await;
    let reply = mail_reply(s.smtp(), "news@shop.example").await;
    assert!(
        reply.contains("554 5.7.1 account frozen: complaint rate 0.5%"),
        "{reply}"
    );
    assert!(!r.starts_with("250"), "{r}");

    // the queued marketing is held: a retry by hand does not send it
    let (_, list) = s.get("/admin/queue/messages").await;
    let list = &list["messages"];
    let id = list[0]["id"].as_str().unwrap().to_string();
    assert_eq!(list[0]["held"], true);
    assert_eq!(list[0]["hold"], "account_frozen");
    let (_, v) = s.get("/admin/queue").await;
    assert_eq!(v["held"], 1);
    let tries = s.mx().rcpt_attempts();
    s.call("POST", &format!("/admin/queue/messages/{id}/retry"))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.mx().rcpt_attempts(), tries, "held mail was tried");

    // unfreeze: submissions go again and the held message is tried at once
    let (status, v) = s.call("POST", "/admin/accounts/shop/unfreeze").await;
    assert_eq!((status, v["changed"].clone()), (200, json!(true)));
    eventually(
        Duration::from_secs(4),
        "released after unfreeze",
        async || s.mx().rcpt_attempts() > tries,
    )
    .await;
    let r = s
        .send(
            "news@shop.example",
            &["reader@example.net"],
            &marketing("r"),
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    let (_, v) = s.get("/admin/accounts/shop").await;
    assert_eq!(v["frozen"], Value::Null);
    let events =
        std::fs::read_to_string(s.run.dir.path().join("spool/events/freezes.jsonl")).unwrap();
    assert_eq!(events.lines().count(), 2, "{events}");
}

#[tokio::test]
async fn suppressions_are_checked_added_and_removed() {
    let s = setup(MxOptions::default()).await;
    let path = "/admin/suppressions/Someone%40Example.net?account=shop&list=deals&stream=marketing";
    let (status, v) = s.get(path).await;
    assert_eq!(status, 200);
    assert_eq!(v["address"], "someone@example.net");
    assert_eq!(v["consent"], false);
    assert!(v["verdict"].as_str().unwrap().starts_with("refused"), "{v}");

    // bad input
    for (body, want) in [
        (json!({"address": "not an address"}), 400),
        (json!({"address": "a@b.example", "reason": "boredom"}), 400),
        (
            json!({"address": "a@b.example", "account": "shop", "list": "nope"}),
            404,
        ),
        (json!(["not", "an object"]), 400),
    ] {
        let (status, _) = s.post("/admin/suppressions", body.clone()).await;
        assert_eq!(status, want, "{body}");
    }

    let (status, v) = s
        .post(
            "/admin/suppressions",
            json!({"address": "someone@example.net", "reason": "complaint"}),
        )
        .await;
    assert_eq!((status, v["scope"].clone()), (200, json!("global")));
    // in force at once: transactional mail to it is refused at RCPT
    let r = s
        .send(
            "app@shop.example",
            &["someone@example.net"],
            "From: <app@shop.example>\r\nSubject: x\r\n\r\nx",
        )
        .await;
    assert!(!r.starts_with("250"), "{r}");
    let (_, v) = s
        .get("/admin/suppressions/someone%40example.net?account=shop&stream=transactional")
        .await;
    assert_eq!(v["suppressed"]["global"], json!(["complaint"]));
    assert!(v["verdict"].as_str().unwrap().starts_with("refused"), "{v}");

    let (status, v) = s
        .call("DELETE", "/admin/suppressions/someone%40example.net")
        .await;
    assert_eq!((status, v["reason"].clone()), (200, json!("all")));
    let (_, v) = s
        .get("/admin/suppressions/someone%40example.net?account=shop&stream=transactional")
        .await;
    assert_eq!(v["verdict"], "allowed");
}

/// Batches of addresses for the CLI: suppressed and lifted together, consent granted and
/// revoked; one bad address in a batch changes nothing; a body over the operator
/// listener's `max_body_size` is refused with 413.
#[tokio::test]
async fn batches_suppress_lift_grant_and_revoke() {
    let s = setup(MxOptions::default()).await;
    let standing = async |address: &str| {
        let path = format!("/admin/suppressions/{address}?account=shop&list=deals");
        s.get(&path).await.1
    };
    let (status, v) = s
        .post(
            "/admin/suppressions",
            json!({"addresses": ["A@x.example", "b@x.example"], "account": "shop"}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["count"].clone(), v["scope"].clone(), v["address"].clone()),
        (json!(2), json!("account shop"), Value::Null)
    );
    assert_eq!(
        standing("a@x.example").await["suppressed"]["account"],
        json!(["manual"])
    );
    let (status, v) = s
        .post(
            "/admin/suppressions/remove",
            json!({"addresses": ["a@x.example", "B@X.example"], "account": "shop"}),
        )
        .await;
    assert_eq!((status, v["result"].clone()), (200, json!("lifted")), "{v}");
    assert_eq!(
        standing("b@x.example").await["suppressed"]["account"],
        json!([])
    );

    // one bad address: 400 naming it, and nothing changed
    let (status, v) = s
        .post(
            "/admin/suppressions",
            json!({"addresses": ["c@x.example", "not an address", "neither"]}),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    let error = v["error"].as_str().unwrap();
    assert!(
        error.contains("2 addresses are not addresses (nothing was changed)")
            && error.contains("\"not an address\"")
            && error.contains("\"neither\""),
        "{error}"
    );
    let (_, v) = s.get("/admin/suppressions/c%40x.example").await;
    assert_eq!(v["suppressed"]["global"], json!([]));
    for body in [
        json!({"addresses": []}),
        json!({"address": "a@x.example", "addresses": ["b@x.example"]}),
        json!({"addresses": ["a@x.example"], "colour": "blue"}),
        json!({"addresses": vec!["a@x.example"; optin_relay::http::admin::MAX_BATCH + 1]}),
    ] {
        let (status, _) = s.post("/admin/suppressions", body.clone()).await;
        assert_eq!(status, 400, "{body}");
    }

    // consent
    let (status, v) = s
        .post(
            "/admin/consent/grant",
            json!({"addresses": ["fan@x.example", "Other@x.example"], "account": "shop"}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["list"].clone(), v["count"].clone(), v["result"].clone()),
        (json!("deals"), json!(2), json!("granted"))
    );
    assert_eq!(standing("other@x.example").await["consent"], true);
    let (status, v) = s
        .post(
            "/admin/consent/revoke",
            json!({"address": "fan@x.example", "account": "shop", "list": "deals"}),
        )
        .await;
    assert_eq!(
        (status, v["address"].clone(), v["result"].clone()),
        (200, json!("fan@x.example"), json!("revoked"))
    );
    assert_eq!(standing("fan@x.example").await["consent"], false);
    for (body, want) in [
        (json!({"address": "a@x.example"}), 400),
        (json!({"address": "a@x.example", "account": "nobody"}), 404),
        (
            json!({"address": "a@x.example", "account": "shop", "list": "nope"}),
            404,
        ),
        (
            json!({"address": "a@x.example", "account": "shop", "reason": "manual"}),
            400,
        ),
    ] {
        let (status, _) = s.post("/admin/consent/grant", body.clone()).await;
        assert_eq!(status, want, "{body}");
    }

    // larger than [admin] max_body_size (1 MiB by default)
    let big: Vec<String> = (0..40_000)
        .map(|i| format!("reader-{i:08}@x.example"))
        .collect();
    let (status, v) = s
        .post("/admin/suppressions", json!({"addresses": big}))
        .await;
    assert_eq!(status, 413, "{v}");
    assert_eq!(v["status"], 413);
}

#[tokio::test]
async fn erasure_drops_queued_mail_and_suppresses_the_address() {
    let s = setup(MxOptions::default()).await;
    let r = s
        .send(
            "app@shop.example",
            &["tempfail-erase@example.net", "tempfail-keep@example.net"],
            "From: <app@shop.example>\r\nSubject: two\r\n\r\nhello",
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    let r = s
        .send(
            "app@shop.example",
            &["Tempfail-Erase@example.net"],
            "From: <app@shop.example>\r\nSubject: one\r\n\r\nhello",
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    let v = queued(&s, 2).await;
    assert_eq!(v["recipients"], 3);
    // (no settling: recipients in flight are dropped when their attempt comes back)

    let (status, _) = s.post("/admin/erase", json!({"address": "nope"})).await;
    assert_eq!(status, 400);
    let (status, v) = s
        .post(
            "/admin/erase",
            json!({"address": "tempfail-erase@example.net"}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["queued_recipients_dropped"], 2);
    // the one-recipient message is gone, the other keeps its other recipient (once the
    // erased recipient's attempt in flight has come back)
    poll(
        Duration::from_secs(4),
        "the queue holding 1 message with 1 recipient",
        async || {
            let (_, v) = s.get("/admin/queue").await;
            (v["messages"] == 1 && v["recipients"] == 1).then_some(())
        },
    )
    .await;
    let (_, list) = s.get("/admin/queue/messages").await;
    let id = list["messages"][0]["id"].as_str().unwrap();
    let (_, detail) = s.get(&format!("/admin/queue/messages/{id}")).await;
    assert_eq!(detail["recipients"][0]["status"], "done");
    assert_eq!(detail["recipients"][1]["status"], "waiting");
    // and nothing more goes to it
    let r = s
        .send(
            "app@shop.example",
            &["tempfail-erase@example.net"],
            "From: <app@shop.example>\r\nSubject: x\r\n\r\nx",
        )
        .await;
    assert!(!r.starts_with("250"), "{r}");
    let (_, v) = s
        .get("/admin/suppressions/tempfail-erase%40example.net")
        .await;
    assert_eq!(v["suppressed"]["global"], json!(["erasure"]));
}

#[tokio::test]
async fn the_policy_status_and_reload() {
    let s = setup(MxOptions::default()).await;
    let (status, v) = s.get("/admin/policy").await;
    assert_eq!(status, 200);
    assert_eq!(v["generation"], 1);
    // the embedded test policy has no file: a reload is refused with the reason
    let (status, v) = s.call("POST", "/admin/policy/reload").await;
    assert_eq!(status, 409);
    assert!(!v["problems"].as_array().unwrap().is_empty(), "{v}");
}
