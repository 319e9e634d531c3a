//! The account API on the public listener, through a running relay: every route with a
//! key of the right account, of another account, a revoked key and none; the OpenAPI
//! description kept in step with the routes; consent granted and withdrawn over HTTP in
//! force for the next message, with its proof; files of addresses applied by jobs; the
//! account's own suppressions; a consent record that survives a restart and goes with an
//! erasure.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Account, Admin, MxOptions, Running, SIGNED_UP, policy, poll};

const TOKEN: &str = "test-token-0123456789";

fn config() -> String {
    format!(
        "retry_initial = \"1h\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\nbody_timeout = \"1s\"\n[account_api]\nmax_jobs = 1\nmax_upload_size = \"2MiB\"\n"
    )
}

/// `shop` (lists deals, news) and `other` (its own list deals) on another network.
fn accounts() -> String {
    let shop = Account::shop()
        .list("deals", SIGNED_UP)
        .list("news", SIGNED_UP)
        .set("default_list", "\"deals\"");
    let other = Account::new("other")
        .networks(&["192.0.2.0/24"])
        .domains(&["other.example"])
        .streams(&["marketing"])
        .list("deals", SIGNED_UP);
    policy(&[shop, other], "")
}

struct Setup {
    run: Running,
    admin: Admin,
}

impl Setup {
    async fn start() -> Setup {
        Setup::on(Running::start(MxOptions::default(), &config(), &accounts()).await)
    }

    fn on(run: Running) -> Setup {
        let admin = Admin::new(run.relay.admin_addr.unwrap(), TOKEN);
        Setup { run, admin }
    }

    /// A fresh key of `account`, through the admin API.
    async fn key(&self, account: &str) -> (String, String) {
        let (status, v) = self
            .admin
            .post(
                &format!("/admin/accounts/{account}/keys"),
                json!({"label": "test"}),
            )
            .await;
        assert_eq!(status, 200, "{v}");
        (
            v["id"].as_str().unwrap().into(),
            v["key"].as_str().unwrap().into(),
        )
    }

    /// The account API with `key`.
    fn api(&self, key: &str) -> Admin {
        Admin::new(self.run.relay.http_addr.unwrap(), key)
    }

    async fn marketing(&self, to: &str) -> String {
        let body = format!(
            "From: <news@shop.example>\r\nSubject: deals\r\nX-Optin-Stream: marketing\r\n\
             X-Optin-List: deals\r\n\r\nBuy {to}"
        );
        self.run.send("news@shop.example", &[to], &body).await
    }
}

#[tokio::test]
async fn every_account_route_needs_a_key_of_its_own_account_and_matches_the_openapi_file() {
    let s = Setup::start().await;
    let (_, shop_key) = s.key("shop").await;
    let (_, other_key) = s.key("other").await;
    let (gone_id, gone_key) = s.key("shop").await;
    let (status, v) = s
        .admin
        .call(
            "DELETE",
            &format!("/admin/accounts/shop/keys/{gone_id}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert!(v["revoked_ms"].is_u64(), "{v}");
    // The listing shows both keys of shop and never a key itself.
    let (_, listed) = s.admin.get("/admin/accounts/shop/keys").await;
    assert_eq!(listed["keys"].as_array().unwrap().len(), 2, "{listed}");
    assert!(!listed.to_string().contains(&shop_key[17..]), "{listed}");
    let (status, _) = s.admin.post("/admin/accounts/nobody/keys", json!({})).await;
    assert_eq!(status, 404);

    let (_, doc) = s.admin.get("/admin/openapi.json").await;
    let shop = s.api(&shop_key);
    let mut described = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/account") {
            continue;
        }
        for method in ops.as_object().unwrap().keys() {
            let method = method.to_uppercase();
            described.push((method.clone(), path.clone()));
            let concrete = path
                .replace("{id}", "0000000000000000")
                .replace("{address}", "someone%40example.net")
                .replace("{kind}", "unsubscribes")
                .replace("{list}", "deals");
            let body = (method == "POST").then(|| json!({"address": "someone@example.net"}));
            for key in [None, Some(gone_key.as_str()), Some("ork_000000000000_x")] {
                let answer = shop.call_as(key, &method, &concrete, body.clone()).await;
                assert_eq!(answer.status, 401, "{method} {path} with {key:?}");
                assert_eq!(answer.json()["status"], 401);
            }
            let answer = shop
                .call_as(Some(&shop_key), &method, &concrete, body)
                .await;
            // An unknown job is a 404, a list whose consent does not age a 409.
            assert!(
                ![401, 404, 405].contains(&answer.status) || concrete.contains("/jobs/"),
                "{method} {path}: {} {}",
                answer.status,
                answer.body
            );
        }
    }
    // The routes in the source, as the router is built.
    let source = include_str!("../../src/http/account.rs");
    let start = source.find("pub fn router").unwrap();
    let router = &source[start..start + source[start..].find("\n}\n").unwrap()];
    let mut routed = Vec::new();
    for piece in router.split(".route(").skip(1) {
        let path = piece.split('"').nth(1).unwrap();
        let handlers = &piece[..piece.find("))").unwrap_or(piece.len())];
        for (name, method) in [("get(", "GET"), ("post(", "POST"), ("delete(", "DELETE")] {
            if handlers.contains(name) {
                routed.push((method.to_string(), path.to_string()));
            }
        }
    }
    described.sort();
    routed.sort();
    assert_eq!(described, routed, "the OpenAPI paths and the router differ");

    // Every route with another account's key, on shop's data (a granted address, a job):
    // the answer is about that account only, never shop.
    shop.post(
        "/account/consent/grant",
        json!({"address": "kept@example.net"}),
    )
    .await;
    let upload = shop
        .send_raw(
            "POST",
            "/account/consent/upload",
            "text/csv",
            "z@example.net\n",
        )
        .await;
    let shop_job = upload.json()["id"].as_str().unwrap_or_default().to_string();
    let other = s.api(&other_key);
    for (method, path) in &described {
        let concrete = path
            .replace("{id}", &shop_job)
            .replace("{address}", "kept%40example.net")
            .replace("{kind}", "unsubscribes")
            .replace("{list}", "news");
        let body =
            (method == "POST").then(|| json!({"address": "kept@example.net", "list": "news"}));
        let answer = other
            .call_as(Some(&other_key), method, &concrete, body)
            .await;
        assert_ne!(answer.status, 401, "{method} {path}");
        assert!(
            !answer.body.contains("\"shop\"") && !answer.body.contains("\"consent\":true"),
            "{method} {path} with other's key shows shop: {}",
            answer.body
        );
    }
    let (_, v) = shop.get("/account/addresses/kept%40example.net").await;
    assert_eq!(
        v["lists"][0]["consent"], true,
        "other's calls changed nothing of shop: {v}"
    );

    // Another account's key reaches its own account only: its grant is its own, and
    // nothing of shop is visible or changeable with it.
    let (status, v) = other.get("/account").await;
    assert_eq!((status, v["account"].clone()), (200, json!("other")), "{v}");
    let (status, v) = other
        .post(
            "/account/consent/grant",
            json!({"address": "ann@example.net", "list": "news"}),
        )
        .await;
    assert_eq!(status, 404, "other has no list news: {v}");
    let (status, _) = other
        .post(
            "/account/consent/grant",
            json!({"address": "ann@example.net"}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, v) = shop.get("/account/addresses/ann%40example.net").await;
    assert_eq!(v["lists"][0]["consent"], false, "{v}");
    assert_eq!(v["lists"][0]["record"], Value::Null, "{v}");
    let r = s.marketing("ann@example.net").await;
    assert!(
        !r.starts_with("250"),
        "other's grant opened shop's list: {r}"
    );
    // The admin API takes no account key, the account API no admin token.
    let admin_with_key = Admin::new(s.run.relay.admin_addr.unwrap(), &shop_key);
    assert_eq!(admin_with_key.get("/admin/queue").await.0, 401);
    assert_eq!(s.api(TOKEN).get("/account").await.0, 401);
}

#[tokio::test]
async fn consent_over_the_api_is_in_force_for_the_next_message_and_keeps_its_proof() {
    let s = Setup::start().await;
    let (key_id, key) = s.key("shop").await;
    let api = s.api(&key);
    let r = s.marketing("bob@example.net").await;
    assert!(!r.starts_with("250"), "no consent yet: {r}");
    let (status, v) = api
        .post(
            "/account/consent/grant",
            json!({"address": "Bob@Example.NET"}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["address"].clone(), v["list"].clone()),
        (json!("bob@example.net"), json!("deals"))
    );
    let r = s.marketing("bob@example.net").await;
    assert!(r.starts_with("250"), "{r}");
    // Every marketing message names its sender's contact and postal address.
    let text = s.run.mx.wait_for(1, Duration::from_secs(10)).await[0].text();
    assert!(
        text.contains("Sent by shop, 1 Main St, Springfield - contact: hello@shop.example"),
        "{text}"
    );

    // The proof: how, by which key, and the wording shown.
    let (_, v) = api.get("/account/addresses/bob%40example.net").await;
    let record = &v["lists"][0]["record"];
    assert_eq!(record["how"], "api", "{v}");
    assert_eq!(record["detail"], format!("key {key_id}"));
    assert_eq!(record["wording"]["statement"], SIGNED_UP);
    let (status, admin_view) = s
        .admin
        .get("/admin/consent/shop/deals/bob%40example.net")
        .await;
    assert_eq!((status, admin_view["how"].clone()), (200, json!("api")));
    let (_, lists) = api.get("/account/lists").await;
    assert_eq!(lists["lists"][0]["consents"], 1, "{lists}");

    // A bad batch changes nothing; a good one grants them all.
    let (status, v) = api
        .post(
            "/account/consent/grant",
            json!({"addresses": ["c@example.net", "not an address"]}),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    let (_, v) = api.get("/account/addresses/c%40example.net").await;
    assert_eq!(v["lists"][0]["consent"], false);

    // Withdrawn: the next message is refused; the record says when and how.
    let (status, _) = api
        .post(
            "/account/consent/withdraw",
            json!({"address": "bob@example.net"}),
        )
        .await;
    assert_eq!(status, 200);
    let r = s.marketing("bob@example.net").await;
    assert!(!r.starts_with("250"), "{r}");
    let (_, v) = api.get("/account/addresses/bob%40example.net").await;
    assert_eq!(v["lists"][0]["record"]["withdrawn_how"], "api", "{v}");

    // The export holds the record, with the address, as one JSON line.
    let answer = api
        .send_raw("GET", "/account/export/consent", "text/plain", "")
        .await;
    assert_eq!(answer.status, 200);
    let lines: Vec<Value> = answer
        .body
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{}", answer.body);
    assert_eq!(lines[0]["address"], "bob@example.net");
}

#[tokio::test]
async fn the_account_adds_and_lifts_only_its_own_suppressions() {
    let s = Setup::start().await;
    let (_, key) = s.key("shop").await;
    let api = s.api(&key);
    api.post(
        "/account/consent/grant",
        json!({"address": "dee@example.net"}),
    )
    .await;
    let (status, v) = api
        .post(
            "/account/suppressions",
            json!({"address": "dee@example.net"}),
        )
        .await;
    assert_eq!(
        (status, v["scope"].clone()),
        (200, json!("account shop")),
        "{v}"
    );
    assert!(!s.marketing("dee@example.net").await.starts_with("250"));
    let (_, v) = api.get("/account/addresses/dee%40example.net").await;
    assert_eq!(v["suppressed"], json!(["manual"]), "{v}");
    let (status, _) = api
        .post(
            "/account/suppressions/remove",
            json!({"address": "dee@example.net"}),
        )
        .await;
    assert_eq!(status, 200);
    assert!(s.marketing("dee@example.net").await.starts_with("250"));

    // An operator's suppression (here: a complaint) is not the account's to lift.
    let (status, _) = s
        .admin
        .post(
            "/admin/suppressions",
            json!({"address": "dee@example.net", "account": "shop", "reason": "complaint"}),
        )
        .await;
    assert_eq!(status, 200);
    api.post(
        "/account/suppressions/remove",
        json!({"address": "dee@example.net"}),
    )
    .await;
    let (_, v) = api.get("/account/addresses/dee%40example.net").await;
    assert_eq!(v["suppressed"], json!(["complaint"]), "{v}");
    assert!(!s.marketing("dee@example.net").await.starts_with("250"));
}

/// Waits for upload job `id` to finish; returns it.
async fn finished(api: &Admin, id: &str) -> Value {
    poll(
        Duration::from_secs(30),
        "the upload job finishing",
        async || {
            let (_, job) = api.get(&format!("/account/jobs/{id}")).await;
            (job["state"] == "done" || job["state"] == "failed").then_some(job)
        },
    )
    .await
}

#[tokio::test]
async fn an_uploaded_file_is_applied_by_a_job_with_its_refusals_named() {
    let s = Setup::start().await;
    let (_, key) = s.key("shop").await;
    let api = s.api(&key);
    let mut csv = String::from("Name,Email\n");
    for i in 0..25_000 {
        csv.push_str(&format!("Reader {i},reader{i}@example.net\n"));
    }
    csv.push_str("Broken,not-an-address\n");
    csv.push_str(&"x".repeat(5000));
    csv.push_str("\n\"Quoted, Name\",last@example.net\n");
    let answer = api
        .send_raw(
            "POST",
            "/account/consent/upload?name=fair.csv",
            "text/csv",
            &csv,
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let id = answer.json()["id"].as_str().unwrap().to_string();
    let job = finished(&api, &id).await;
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["changed"], 25_001, "{job}");
    assert_eq!(job["refused"], 2, "{job}");
    let refusals = job["refusals"].to_string();
    assert!(
        refusals.contains("line 25002") && refusals.contains("line 25003"),
        "{job}"
    );
    assert!(
        !refusals.contains("not-an-address"),
        "refusals never echo addresses: {job}"
    );
    assert!(
        s.marketing("reader24999@example.net")
            .await
            .starts_with("250")
    );
    let (_, v) = api.get("/account/addresses/last%40example.net").await;
    let detail = v["lists"][0]["record"]["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(detail.starts_with("fair.csv (job "), "{v}");
    let (_, lists) = api.get("/account/lists").await;
    assert_eq!(lists["lists"][0]["consents"], 25_001, "{lists}");

    // JSON lines withdraw them; another account cannot see the job.
    let lines = "\"reader1@example.net\"\n{\"email\":\"reader2@example.net\"}\n[]\n";
    let answer = api
        .send_raw(
            "POST",
            "/account/consent/upload?action=withdraw",
            "application/x-ndjson",
            lines,
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let id = answer.json()["id"].as_str().unwrap().to_string();
    let job = finished(&api, &id).await;
    assert_eq!(
        (job["changed"].clone(), job["refused"].clone()),
        (json!(2), json!(1)),
        "{job}"
    );
    assert!(!s.marketing("reader2@example.net").await.starts_with("250"));
    let (_, other_key) = s.key("other").await;
    assert_eq!(
        s.api(&other_key)
            .get(&format!("/account/jobs/{id}"))
            .await
            .0,
        404
    );

    // Too large: refused, and nothing stays behind.
    let big = "a@example.net\n".repeat(200_000);
    let answer = api
        .send_raw("POST", "/account/consent/upload", "text/csv", &big)
        .await;
    assert_eq!(answer.status, 413, "{}", answer.body);
    // An upload that stops halfway: 408 once the listener's body_timeout passes, and
    // nothing of it stays.
    let mut stalled = tokio::net::TcpStream::connect(s.run.relay.http_addr.unwrap())
        .await
        .unwrap();
    let head = format!(
        "POST /account/consent/upload HTTP/1.1\r\nHost: relay.test\r\nAuthorization: Bearer \
         {key}\r\nContent-Type: text/csv\r\nContent-Length: 100000\r\n\r\na@example.net\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut stalled, head.as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(&mut stalled, &mut answer),
    )
    .await;
    assert!(read.is_ok(), "the stalled upload was never answered");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let uploads = s.run.spool().join("state/uploads");
    let data: Vec<_> = std::fs::read_dir(&uploads)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "data"))
        .collect();
    assert!(data.is_empty(), "{data:?}");
    for e in std::fs::read_dir(&uploads).unwrap() {
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&e.unwrap().metadata().unwrap().permissions());
        assert_eq!(mode & 0o077, 0);
    }
}

#[tokio::test]
async fn a_consent_record_survives_a_restart_and_goes_with_an_erasure() {
    let s = Setup::start().await;
    let (_, key) = s.key("shop").await;
    let (status, _) = s
        .api(&key)
        .post(
            "/account/consent/grant",
            json!({"address": "eve@example.net", "list": "news"}),
        )
        .await;
    assert_eq!(status, 200);
    // The operator's grant keeps a record too.
    let (status, _) = s
        .admin
        .post(
            "/admin/consent/grant",
            json!({"address": "eve@example.net", "account": "shop", "list": "deals"}),
        )
        .await;
    assert_eq!(status, 200);
    let run = s.run.restart(&config(), &accounts()).await;
    let s = Setup::on(run);
    // The key survives the restart too.
    let (_, v) = s
        .api(&key)
        .get("/account/addresses/eve%40example.net")
        .await;
    assert_eq!(v["lists"][0]["record"]["how"], "operator", "{v}");
    assert_eq!(v["lists"][0]["record"]["detail"], "admin API", "{v}");
    assert_eq!(v["lists"][1]["record"]["how"], "api", "{v}");
    let ledger = s.run.spool().join("state/consent-ledger.redb");
    let raw = std::fs::read(&ledger).unwrap();
    assert!(memchr::memmem::find(&raw, b"eve@example.net").is_none());

    let (status, v) = s
        .admin
        .post("/admin/erase", json!({"address": "eve@example.net"}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["consent_records_removed"], 2, "{v}");
    let (status, _) = s
        .admin
        .get("/admin/consent/shop/news/eve%40example.net")
        .await;
    assert_eq!(status, 404);
    let (_, v) = s
        .api(&key)
        .get("/account/addresses/eve%40example.net")
        .await;
    assert_eq!(v["lists"][1]["record"], Value::Null, "{v}");
    assert_eq!(v["blocked_by_relay"], true, "{v}");
}
