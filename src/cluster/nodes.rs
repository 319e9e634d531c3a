//! The table of nodes: each node's heartbeat records its id, version and policy
//! generation (and the digest of that policy, so that nodes running different policies
//! show as drift); `GET /admin/cluster` and `optin-relay cluster status` read it back.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use serde::Serialize;

use super::{Cluster, scripts};

/// A node is alive while its last heartbeat is at most this many heartbeats old.
const LIVE_BEATS: u32 = 3;

/// What a node says of itself at each heartbeat.
#[derive(Debug, Clone, Default)]
pub struct NodeReport {
    pub version: String,
    /// The policy in force: its generation on this node and the digest of its content.
    pub policy_generation: u64,
    pub policy_digest: String,
}

/// One node as the table holds it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct NodeInfo {
    pub id: String,
    pub version: String,
    pub policy_generation: u64,
    pub policy_digest: String,
    pub started_ms: u64,
    pub last_seen_ms: u64,
    /// Seen within the last three heartbeats.
    pub live: bool,
    /// Its policy is not the one most live nodes run.
    pub policy_drift: bool,
}

/// The cluster as one node sees it (`GET /admin/cluster`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Status {
    /// This node's id.
    pub node: String,
    /// Whether this node reaches Redis now.
    pub redis_up: bool,
    /// The Redis server in use (`host:port`).
    pub redis: String,
    /// Redis's clock at the table's reading (unix ms); `None` when Redis did not answer.
    pub redis_time_ms: Option<u64>,
    /// Nodes alive at the last heartbeat (what limits are divided by when Redis is away).
    pub live_nodes: usize,
    /// Connection leases this node holds.
    pub leases_held: usize,
    pub nodes: Vec<NodeInfo>,
}

impl Cluster {
    /// Records this node's heartbeat; returns the live nodes.
    pub(super) async fn heartbeat(&self, report: &NodeReport) -> Result<usize, String> {
        let keys = (
            self.key("nodes"),
            self.key(&format!("node:{}", self.node_id())),
        );
        let args = (
            self.node_id().to_string(),
            report.version.clone(),
            report.policy_digest.clone(),
            report.policy_generation,
            self.started_ms,
            (self.config.heartbeat * LIVE_BEATS).as_millis() as u64,
        );
        self.call_anyway("heartbeat", |mut c| async move {
            scripts::HEARTBEAT
                .key(keys.0)
                .key(keys.1)
                .arg(args.0)
                .arg(args.1)
                .arg(args.2)
                .arg(args.3)
                .arg(args.4)
                .arg(args.5)
                .invoke_async(&mut c)
                .await
        })
        .await
    }

    /// Takes this node out of the table at a clean stop (others stop counting it at once).
    pub(super) async fn leave(&self) {
        let (nodes, node) = (
            self.key("nodes"),
            self.key(&format!("node:{}", self.node_id())),
        );
        let id = self.node_id().to_string();
        self.call("leave", |mut c| async move {
            redis::pipe()
                .zrem(nodes, id)
                .del(node)
                .query_async::<()>(&mut c)
                .await
        })
        .await;
    }

    /// The table of nodes as Redis holds it now (this node's own view of Redis first).
    pub async fn status(&self) -> Status {
        let link = self.link.load();
        let redis = self.clients[link.index]
            .get_connection_info()
            .addr()
            .to_string();
        drop(link);
        let mut status = Status {
            node: self.node_id().to_string(),
            redis_up: self.is_up(),
            redis,
            redis_time_ms: None,
            live_nodes: self.live_nodes.load(Ordering::Relaxed),
            leases_held: self.leases_held(),
            nodes: Vec::new(),
        };
        let nodes_key = self.key("nodes");
        let prefix = self.key("node:");
        let read = self
            .call("status", |mut c| async move {
                let (time, ids): ((u64, u64), Vec<(String, u64)>) = redis::pipe()
                    .cmd("TIME")
                    .zrange_withscores(&nodes_key, 0, -1)
                    .query_async(&mut c)
                    .await?;
                let mut pipe = redis::pipe();
                for (id, _) in &ids {
                    pipe.hgetall(format!("{prefix}{id}"));
                }
                let fields: Vec<HashMap<String, String>> = pipe.query_async(&mut c).await?;
                Ok((time, ids, fields))
            })
            .await;
        let Some(((secs, micros), ids, fields)) = read else {
            return status;
        };
        let now = secs * 1000 + micros / 1000;
        status.redis_time_ms = Some(now);
        let window = (self.config.heartbeat * LIVE_BEATS).as_millis() as u64;
        for ((id, seen), f) in ids.into_iter().zip(fields) {
            let number = |k: &str| f.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
            status.nodes.push(NodeInfo {
                version: f.get("version").cloned().unwrap_or_default(),
                policy_generation: number("generation"),
                policy_digest: f.get("policy").cloned().unwrap_or_default(),
                started_ms: number("started_ms"),
                last_seen_ms: seen,
                live: now.saturating_sub(seen) <= window,
                policy_drift: false,
                id,
            });
        }
        mark_drift(&mut status.nodes);
        status
    }
}

/// Marks the nodes whose policy digest is not the one most live nodes run.
fn mark_drift(nodes: &mut [NodeInfo]) {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for n in nodes.iter().filter(|n| n.live) {
        *counts.entry(n.policy_digest.as_str()).or_default() += 1;
    }
    let Some(common) = counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
        .map(|(d, _)| d.to_string())
    else {
        return;
    };
    for n in nodes.iter_mut() {
        n.policy_drift = n.policy_digest != common;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, digest: &str, live: bool) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            version: "1".into(),
            policy_generation: 1,
            policy_digest: digest.into(),
            started_ms: 0,
            last_seen_ms: 0,
            live,
            policy_drift: false,
        }
    }

    #[test]
    fn drift_is_measured_against_the_live_majority() {
        let mut nodes = vec![
            node("a", "x", true),
            node("b", "x", true),
            node("c", "y", true),
            node("d", "y", false),
            node("e", "y", false),
        ];
        mark_drift(&mut nodes);
        let drift: Vec<&str> = nodes
            .iter()
            .filter(|n| n.policy_drift)
            .map(|n| n.id.as_str())
            .collect();
        assert_eq!(drift, ["c", "d", "e"]);
    }
}
