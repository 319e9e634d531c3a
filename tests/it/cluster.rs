//! Cluster mode without a Redis (the tests with one are in `tests/interop/cluster.sh`): a
//! node whose Redis does not answer starts, delivers on its share of the limits, paces
//! alone, and says so on `/healthz` and `GET /admin/cluster`; a relay without `[cluster]`
//! answers `404` there and a plain `ok` on `/healthz`.

use std::time::{Duration, Instant};

use crate::support::{Account, Admin, MxOptions, Running, SUBSCRIBED, http, policy, send_ok};

const TOKEN: &str = "cluster-token-0123456789";

fn operator() -> String {
    format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n")
}

/// A Redis address nothing listens on.
fn dead_redis() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("redis://127.0.0.1:{port}/0")
}

#[tokio::test]
async fn a_node_without_its_redis_delivers_on_its_share_and_says_so() {
    let config = format!(
        "{}[cluster]\nredis = [\"{}\"]\nnode_id = \"lonely\"\ntimeout = \"100ms\"\n\
         heartbeat = \"200ms\"\nlease_ttl = \"1s\"\n",
        operator(),
        dead_redis()
    );
    // A rate of 600/min (one message per 100 ms) and a cap: both kept alone.
    let rules = "[throttles.\"*\"]\nmessage_rate = \"600/min\"\nconnections = 2\n";
    let run = Running::start(
        MxOptions::default(),
        &config,
        &policy(&[Account::shop().list("news", SUBSCRIBED)], rules),
    )
    .await;
    let smtp = run.relay.smtp_addrs[0];
    let started = Instant::now();
    for i in 0..5 {
        send_ok(
            smtp,
            "orders@shop.example",
            &["ada@example.net"],
            &format!("From: <orders@shop.example>\r\nSubject: receipt {i}\r\n\r\nThanks.\r\n"),
        )
        .await;
    }
    let delivered = run.mx.wait_for(5, Duration::from_secs(10)).await;
    assert_eq!(delivered.len(), 5);
    // Paced alone: five messages 100 ms apart take at least 400 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    let admin = run.relay.admin_addr.unwrap();
    let (status, health) = http(admin, "GET", "/healthz", "").await;
    assert_eq!(status, 200);
    assert!(
        health.contains("cluster: node lonely, Redis unreachable: running on 1/1"),
        "{health}"
    );
    let (status, v) = Admin::new(admin, TOKEN)
        .call("GET", "/admin/cluster", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(v["node"], "lonely");
    assert_eq!(v["redis_up"], false);
    assert_eq!(v["live_nodes"], 1);
    assert!(v["redis_time_ms"].is_null());
    assert_eq!(v["nodes"].as_array().map(Vec::len), Some(0));
}

#[tokio::test]
async fn a_relay_alone_has_no_cluster_page() {
    let run = Running::start(
        MxOptions::default(),
        &operator(),
        &policy(&[Account::shop().list("news", SUBSCRIBED)], ""),
    )
    .await;
    let admin = run.relay.admin_addr.unwrap();
    let (status, v) = Admin::new(admin, TOKEN)
        .call("GET", "/admin/cluster", None)
        .await;
    assert_eq!(status, 404, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("runs alone"),
        "{v}"
    );
    let (_, health) = http(admin, "GET", "/healthz", "").await;
    assert_eq!(health, "ok\n");
}
