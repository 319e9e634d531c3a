//! The metrics of cluster mode (`crate::cluster`): whether Redis answers, how long its
//! calls take, what failed, the nodes alive and the waits for connection leases. They are
//! registered when a node starts in cluster mode, so a relay alone exposes none of them.

use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

pub const CLUSTER_REDIS_UP: &str = "optin_cluster_redis_up";
pub const CLUSTER_REDIS_SECONDS: &str = "optin_cluster_redis_seconds";
pub const CLUSTER_REDIS_ERRORS: &str = "optin_cluster_redis_errors_total";
pub const CLUSTER_FALLBACKS: &str = "optin_cluster_fallbacks_total";
pub const CLUSTER_NODES: &str = "optin_cluster_nodes_live";
pub const CLUSTER_LEASE_WAITS: &str = "optin_cluster_lease_waits_total";
pub const CLUSTER_FEED_SENT: &str = "optin_cluster_feed_sent_total";
pub const CLUSTER_FEED_RECEIVED: &str = "optin_cluster_feed_received_total";
pub const CLUSTER_FEED_APPLIED: &str = "optin_cluster_feed_applied_total";
pub const CLUSTER_SNAPSHOTS: &str = "optin_cluster_snapshots_total";

/// What a failed Redis call was for (the `op` label).
pub const CLUSTER_OPS: &[&str] = &[
    "pace",
    "lease",
    "release",
    "renew",
    "heartbeat",
    "leave",
    "status",
    "announce",
    "feed_send",
    "feed_read",
    "health",
    "freeze",
    "sync",
    "campaign",
    "snapshot",
    "erasure",
];

/// Buckets of [`CLUSTER_REDIS_SECONDS`]: a call on the same network takes well under a
/// millisecond; the deadline is `[cluster] timeout`.
pub(super) const CLUSTER_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
];

pub(super) fn describe_cluster() {
    describe_gauge!(
        CLUSTER_REDIS_UP,
        "1 while this node reaches the cluster's Redis, 0 while it runs on its share of the \
         limits."
    );
    describe_histogram!(
        CLUSTER_REDIS_SECONDS,
        "How long the cluster's Redis calls took, in seconds (successful calls)."
    );
    describe_counter!(
        CLUSTER_REDIS_ERRORS,
        "Cluster Redis calls that failed or timed out, by op (pace, lease, release, renew, \
         heartbeat, leave, status, announce, feed_send, feed_read, health, freeze, sync, \
         campaign, snapshot, erasure)."
    );
    describe_counter!(
        CLUSTER_FALLBACKS,
        "Times this node lost Redis and fell back to local limits divided by the nodes last \
         seen."
    );
    describe_gauge!(
        CLUSTER_NODES,
        "Nodes of the cluster seen alive at the last heartbeat (this one included)."
    );
    describe_counter!(
        CLUSTER_FEED_SENT,
        "Consent and suppression changes made on this node and sent to the cluster's feed \
         (acknowledged by Redis)."
    );
    describe_counter!(
        CLUSTER_FEED_RECEIVED,
        "Changes of other nodes read from the cluster's feed."
    );
    describe_counter!(
        CLUSTER_FEED_APPLIED,
        "Changes of other nodes put in force here (the rest were older than what this node \
         had, or already in force)."
    );
    describe_counter!(
        CLUSTER_SNAPSHOTS,
        "Lists snapshots shared through [cluster] snapshot_dir, by what this node did: \
         published (it compacted for the cluster), taken (it put one made elsewhere in \
         service), refused (one it could not take: damaged, another secret, the feed trimmed)."
    );
    describe_counter!(
        CLUSTER_LEASE_WAITS,
        "Connections that waited for a lease because the site's cluster-wide cap was taken."
    );
}

/// This node runs in cluster mode: its series are exposed from now on.
pub fn cluster_started() {
    for op in CLUSTER_OPS {
        counter!(CLUSTER_REDIS_ERRORS, "op" => *op).increment(0);
    }
    counter!(CLUSTER_FALLBACKS).increment(0);
    counter!(CLUSTER_LEASE_WAITS).increment(0);
    for what in ["published", "taken", "refused"] {
        counter!(CLUSTER_SNAPSHOTS, "what" => what).increment(0);
    }
    for name in [
        CLUSTER_FEED_SENT,
        CLUSTER_FEED_RECEIVED,
        CLUSTER_FEED_APPLIED,
    ] {
        counter!(name).increment(0);
    }
    gauge!(CLUSTER_REDIS_UP).increment(0.0);
    gauge!(CLUSTER_NODES).increment(0.0);
    let _ = histogram!(CLUSTER_REDIS_SECONDS);
}

/// A Redis call succeeded after `took`.
pub fn cluster_call(took: Duration) {
    histogram!(CLUSTER_REDIS_SECONDS).record(took.as_secs_f64());
}

/// A Redis call for `op` (one of [`CLUSTER_OPS`]) failed.
pub fn cluster_error(op: &'static str) {
    counter!(CLUSTER_REDIS_ERRORS, "op" => op).increment(1);
}

/// A shared lists snapshot was `published`, `taken` or `refused` by this node.
pub fn cluster_snapshot(what: &'static str) {
    counter!(CLUSTER_SNAPSHOTS, "what" => what).increment(1);
}

pub fn cluster_fallback() {
    counter!(CLUSTER_FALLBACKS).increment(1);
}

pub fn cluster_up(up: bool) {
    gauge!(CLUSTER_REDIS_UP).set(if up { 1.0 } else { 0.0 });
}

pub fn cluster_nodes(live: usize) {
    gauge!(CLUSTER_NODES).set(live as f64);
}

/// The feed: `sent` changes of this node acknowledged, `received` of others read,
/// `applied` of those put in force.
pub fn cluster_feed(sent: u64, received: u64, applied: u64) {
    counter!(CLUSTER_FEED_SENT).increment(sent);
    counter!(CLUSTER_FEED_RECEIVED).increment(received);
    counter!(CLUSTER_FEED_APPLIED).increment(applied);
}

pub fn cluster_lease_wait() {
    counter!(CLUSTER_LEASE_WAITS).increment(1);
}
