//! Helpers for tests that need a real Redis (`OPTIN_TEST_REDIS`, set by
//! `tests/interop/cluster.sh`): node configs with a key prefix of their own per test, and
//! started nodes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{Cluster, NodeReport};
use crate::config::cluster::ClusterConfig;

pub fn redis_url() -> String {
    std::env::var("OPTIN_TEST_REDIS")
        .expect("OPTIN_TEST_REDIS=redis://… names the Redis to test against (cluster.sh)")
}

/// A key prefix of its own for each test, so tests share one Redis in parallel.
pub fn prefix(test: &str) -> String {
    format!("optin-test:{test}:{}:", std::process::id())
}

pub fn config(url: &str, node: &str, prefix: &str) -> ClusterConfig {
    ClusterConfig {
        redis: vec![url.to_string()],
        username: None,
        password: None,
        ca_file: None,
        node_id: node.to_string(),
        key_prefix: prefix.to_string(),
        timeout: Duration::from_millis(500),
        heartbeat: Duration::from_millis(100),
        lease_ttl: Duration::from_millis(600),
        feed_max_entries: 10_000,
        feed_replicas: 0,
        snapshot_dir: None,
    }
}

pub fn report(digest: &str) -> Arc<dyn Fn() -> NodeReport + Send + Sync> {
    let digest = digest.to_string();
    Arc::new(move || NodeReport {
        version: "test".into(),
        policy_generation: 1,
        policy_digest: digest.clone(),
    })
}

/// A started node (heartbeat and bus), up once its first heartbeat reached Redis.
pub async fn node(id: &str, prefix: &str, stop: &CancellationToken) -> Arc<Cluster> {
    node_with(config(&redis_url(), id, prefix), stop).await
}

/// [`node`] with a config of the caller's (from [`config`], changed).
pub async fn node_with(config: ClusterConfig, stop: &CancellationToken) -> Arc<Cluster> {
    let id = config.node_id.clone();
    let c = Cluster::new(config).unwrap();
    c.start(report("p1"), stop.clone());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !c.is_up() {
        assert!(Instant::now() < deadline, "{id} never reached Redis");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The bus subscription is made right after the first beat.
    tokio::time::sleep(Duration::from_millis(100)).await;
    c
}

/// Waits (polling every 20 ms) until `done`, failing the test after `secs` seconds.
pub async fn until(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{what}: not within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
