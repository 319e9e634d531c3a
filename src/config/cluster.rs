//! `[cluster]`: several relays that behave as one through a shared Redis (or Valkey) — the
//! server's addresses, how to log in, this node's name and the prefix of every key. Absent,
//! the relay runs alone and nothing of `crate::cluster` is started.
//!
//! This module reads and checks the configuration only; it never connects, and the
//! password never appears in a `Debug` rendering or in `config show`.

use std::path::PathBuf;
use std::time::Duration;

use super::reader::Section;
use super::smarthost::Secret;
use super::units::HumanDuration;

pub const DEFAULT_KEY_PREFIX: &str = "optin-relay:";
/// How long one Redis command may take before the node treats Redis as unreachable.
pub const DEFAULT_REDIS_TIMEOUT: HumanDuration = HumanDuration::millis(500);
/// How often a node announces itself (and checks Redis when it was unreachable).
pub const DEFAULT_HEARTBEAT: HumanDuration = HumanDuration::secs(1);
/// How long a connection lease lives without renewal (a node that died frees its
/// connections after this long).
pub const DEFAULT_LEASE_TTL: HumanDuration = HumanDuration::secs(15);
/// Entries the feed stream keeps (trimmed approximately beyond): about 100 octets each in
/// Redis. A node away for longer than this many changes misses the oldest.
pub const DEFAULT_FEED_MAX_ENTRIES: u64 = 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Redis servers, tried in order: `redis://host:port/db` or `rediss://` for TLS.
    pub redis: Vec<String>,
    /// The ACL user (Redis 6+); `None`: the default user.
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// CA certificates (PEM) that verify a `rediss://` server instead of the Mozilla roots.
    pub ca_file: Option<PathBuf>,
    /// This node's name, unique in the cluster (default: `[smtp] hostname`).
    pub node_id: String,
    /// Every key and channel the relay uses starts with this.
    pub key_prefix: String,
    pub timeout: Duration,
    pub heartbeat: Duration,
    pub lease_ttl: Duration,
    /// See [`DEFAULT_FEED_MAX_ENTRIES`].
    pub feed_max_entries: u64,
    /// Replicas that must hold a feed entry before the node counts it as sent (`WAITAOF`
    /// where the server has it, else `WAIT`); 0: the primary's answer is enough.
    pub feed_replicas: u32,
    /// A directory every node sees (a shared mount): one node at a time compacts the lists
    /// and publishes the snapshot there; the others take it. `None`: each node compacts
    /// its own.
    pub snapshot_dir: Option<PathBuf>,
}

/// Reads `[cluster]`; `None` when the section is absent.
pub(super) fn read(s: &mut Section<'_>, hostname: &str) -> Option<ClusterConfig> {
    if !s.is_present() {
        return None;
    }
    let redis: Vec<String> = s.get("redis").unwrap_or_default();
    if redis.is_empty() {
        s.problem(
            "redis",
            "is required: the Redis servers, like [\"redis://127.0.0.1:6379/0\"]",
        );
    }
    for url in &redis {
        if let Err(e) = check_url(url) {
            s.problem("redis", e);
        }
    }
    let node_id = match s.get::<String>("node_id") {
        Some(id) if valid_node_id(&id) => id,
        Some(id) => {
            s.problem(
                "node_id",
                format!("{id:?} is not a node id (1-64 of letters, digits, '.', '-', '_')"),
            );
            hostname.to_string()
        }
        None => {
            s.default_is("node_id", &hostname);
            hostname.to_string()
        }
    };
    let key_prefix = s.get_or("key_prefix", DEFAULT_KEY_PREFIX.to_string());
    if key_prefix.is_empty() || key_prefix.len() > 64 || key_prefix.contains(char::is_whitespace) {
        s.problem("key_prefix", "must be 1-64 characters without spaces");
    }
    let positive = |s: &mut Section<'_>, key: &str, default: HumanDuration| {
        let d = s.get_or(key, default).get();
        if d.is_zero() {
            s.problem(key, "must be greater than zero");
        }
        d
    };
    let timeout = positive(s, "timeout", DEFAULT_REDIS_TIMEOUT);
    let heartbeat = positive(s, "heartbeat", DEFAULT_HEARTBEAT);
    let lease_ttl = positive(s, "lease_ttl", DEFAULT_LEASE_TTL);
    if lease_ttl < heartbeat * 3 {
        s.problem(
            "lease_ttl",
            "must be at least three heartbeats (leases are renewed on the heartbeat)",
        );
    }
    let feed_max_entries = s.get_or("feed_max_entries", DEFAULT_FEED_MAX_ENTRIES);
    if feed_max_entries < 1000 {
        s.problem("feed_max_entries", "must be at least 1000");
    }
    let feed_replicas = s.get_or("feed_replicas", 0u32);
    let snapshot_dir = s.get_path("snapshot_dir");
    if snapshot_dir
        .as_ref()
        .is_some_and(|d| d.as_os_str().is_empty())
    {
        s.problem(
            "snapshot_dir",
            "must name a directory (a mount every node sees)",
        );
    }
    Some(ClusterConfig {
        snapshot_dir,
        feed_max_entries,
        feed_replicas,
        redis,
        username: s.get("username"),
        password: s.get::<String>("password").map(Secret::new),
        ca_file: s.get_path("ca_file"),
        node_id,
        key_prefix,
        timeout,
        heartbeat,
        lease_ttl,
    })
}

fn valid_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// A Redis URL the relay can use: `redis://` or `rediss://`, and no password in it (it
/// would show in `config show` and in logs: `password` is the key for it).
fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))
        .ok_or_else(|| format!("{url:?} is not a redis:// or rediss:// URL"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return Err(format!(
            "{url:?} carries credentials: give them as [cluster] username and password"
        ));
    }
    if authority.is_empty() {
        return Err(format!("{url:?} names no host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(check_url("redis://127.0.0.1:6379/0").is_ok());
        assert!(check_url("rediss://cache.example:6380").is_ok());
        assert!(check_url("http://x").is_err());
        assert!(check_url("redis://:secret@127.0.0.1").is_err());
        assert!(check_url("redis:///0").is_err());
    }

    #[test]
    fn node_ids() {
        assert!(valid_node_id("relay-a.example_1"));
        assert!(!valid_node_id(""));
        assert!(!valid_node_id("a b"));
        assert!(!valid_node_id(&"x".repeat(65)));
    }
}
