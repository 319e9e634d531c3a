//! Cluster mode for account health and freezes: one health window per account, summed
//! across the nodes in Redis, and a freeze decided once and held by every node.
//!
//! - **Health.** While Redis answers, a node adds what it counts (deliveries, hard
//!   bounces, complaints, unsubscribes) to a pending tally instead of judging its own
//!   share; every second it adds the tally to the account's window in Redis
//!   (`PREFIX health:ACCOUNT`: a hash of per-slot counts, the slots and the window's
//!   length those of `[health]`, the clock Redis's) and judges the sum, so complaints that
//!   came in through three nodes freeze the account as if one node had seen them all.
//!   While Redis is away, each node judges what it saw itself (and keeps its tally for
//!   when Redis is back).
//! - **Freezes.** A freeze made on any node (by health, content or an admin) is written to
//!   Redis and announced ([`super::freeze::Freezes::share`]); the others hold it too, and
//!   an unfreeze the same way (its held mail released on every node). Every few seconds
//!   each node compares its frozen accounts with Redis, so a node that was away (or missed
//!   an announcement) catches up, and a freeze it made while Redis was away is shared.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Governor;
use super::freeze::{Frozen, Origin};
use super::health::{Signal, Window};
use crate::cluster::{Announcement, Cluster};

/// How often a node adds its tally to the shared windows.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How often a node compares its frozen accounts with the cluster's.
const SYNC_EVERY: Duration = Duration::from_secs(5);

/// What the node does when an account is unfrozen elsewhere (release its held mail).
pub type OnUnfrozen = Arc<dyn Fn(&str) + Send + Sync>;

/// Adds a tally to the account's window and returns the window's sums (delivered, hard
/// bounces, complaints, unsubscribes). KEYS[1] the account's window; ARGV: the slot's
/// length in ms, the slots in a window, then the four counts to add.
static WINDOW: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local len = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local slot = math.floor(now / len)
local names = {'d', 'b', 'c', 'u'}
for i, f in ipairs(names) do
  local v = tonumber(ARGV[2 + i])
  if v > 0 then redis.call('HINCRBY', KEYS[1], string.format('%d:%s', slot, f), v) end
end
local sum = {0, 0, 0, 0}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local s, f = string.match(all[i], '^(%d+):(%a)$')
  s = tonumber(s)
  if s == nil or s + n <= slot then
    redis.call('HDEL', KEYS[1], all[i])
  else
    for j, name in ipairs(names) do
      if f == name then sum[j] = sum[j] + tonumber(all[i + 1]) end
    end
  end
end
redis.call('PEXPIRE', KEYS[1], len * n * 2)
return sum
",
    )
});

/// The node's part of the shared health windows: its tally since the last flush.
pub struct SharedHealth {
    cluster: Arc<Cluster>,
    tally: Mutex<HashMap<String, Window>>,
}

impl SharedHealth {
    /// Whether the shared windows judge now (Redis answers); else the node judges alone.
    pub fn judges(&self) -> bool {
        self.cluster.is_up()
    }

    /// Counts a signal toward the account's shared window (at the next flush).
    pub fn add(&self, account: &str, signal: Signal) {
        let mut tally = self.tally.lock().expect("tally lock");
        match tally.get_mut(account) {
            Some(w) => w.count(signal),
            None => {
                let mut w = Window::default();
                w.count(signal);
                tally.insert(account.to_string(), w);
            }
        }
    }

    fn take(&self) -> HashMap<String, Window> {
        std::mem::take(&mut *self.tally.lock().expect("tally lock"))
    }

    /// A tally Redis did not take goes back (added to what came meanwhile).
    fn put_back(&self, account: String, w: Window) {
        let mut tally = self.tally.lock().expect("tally lock");
        tally.entry(account).or_default().add(&w);
    }
}

/// Shares `governor`'s health windows and freezes through `cluster`; stops with `stop`.
pub fn spawn(
    governor: Arc<Governor>,
    cluster: Arc<Cluster>,
    on_unfrozen: OnUnfrozen,
    stop: CancellationToken,
) {
    let shared = Arc::new(SharedHealth {
        cluster: cluster.clone(),
        tally: Mutex::default(),
    });
    let _ = governor.shared.set(shared.clone());
    governor.freezes.share(cluster.clone());
    let mut heard = cluster.announcements();
    tokio::spawn(async move {
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sync = tokio::time::interval(SYNC_EVERY);
        sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = flush.tick() => flush_tally(&governor, &shared).await,
                _ = sync.tick() => catch_up(&governor, &cluster, &on_unfrozen).await,
                a = heard.recv() => match a {
                    Ok(a) if a.node() != cluster.node_id() => {
                        heard_of(&governor, a, &on_unfrozen).await;
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        catch_up(&governor, &cluster, &on_unfrozen).await;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
}

/// Adds the tally to the shared windows and judges each account's sum.
async fn flush_tally(governor: &Arc<Governor>, shared: &SharedHealth) {
    let tally = shared.take();
    if tally.is_empty() {
        return;
    }
    let rules = governor.policy.load().health_rules();
    let slot_ms = (rules.window.as_millis() as u64 / super::health::BUCKETS).max(1);
    for (account, w) in tally {
        let key = shared.cluster.key(&format!("health:{account}"));
        let counts = [w.delivered, w.hard_bounces, w.complaints, w.unsubscribes];
        let sums: Option<[u64; 4]> = shared
            .cluster
            .call("health", |mut c| async move {
                let mut inv = WINDOW.prepare_invoke();
                inv.key(key).arg(slot_ms).arg(super::health::BUCKETS);
                for n in counts {
                    inv.arg(n);
                }
                inv.invoke_async(&mut c).await
            })
            .await;
        let Some([delivered, hard_bounces, complaints, unsubscribes]) = sums else {
            shared.put_back(account, w);
            continue;
        };
        let sum = Window {
            delivered,
            hard_bounces,
            complaints,
            unsubscribes,
        };
        let Some(why) = super::health::judge(&sum, &rules) else {
            continue;
        };
        if !rules.freeze {
            tracing::warn!(account, reason = %why, "account health threshold crossed across the cluster (freeze off)");
            continue;
        }
        if !governor.freezes.is_frozen(&account) {
            let (g, why) = (governor.clone(), format!("{why} (across the cluster)"));
            let _ = tokio::task::spawn_blocking(move || g.freeze_for(&account, &why)).await;
        }
    }
}

/// The account's health window summed over the nodes (what is judged), for display;
/// `None` when Redis does not answer.
pub async fn window(
    cluster: &Cluster,
    account: &str,
    rules: &crate::policy::rules::HealthRules,
) -> Option<Window> {
    let key = cluster.key(&format!("health:{account}"));
    let slot_ms = (rules.window.as_millis() as u64 / super::health::BUCKETS).max(1);
    // The window script with nothing to add: it prunes and sums.
    let [delivered, hard_bounces, complaints, unsubscribes]: [u64; 4] = cluster
        .call("health", |mut c| async move {
            WINDOW
                .key(key)
                .arg(slot_ms)
                .arg(super::health::BUCKETS)
                .arg(0)
                .arg(0)
                .arg(0)
                .arg(0)
                .invoke_async(&mut c)
                .await
        })
        .await?;
    Some(Window {
        delivered,
        hard_bounces,
        complaints,
        unsubscribes,
    })
}

/// Another node froze or unfroze an account: held here too.
async fn heard_of(governor: &Arc<Governor>, a: Announcement, on_unfrozen: &OnUnfrozen) {
    let freezes = governor.freezes.clone();
    match a {
        Announcement::Frozen {
            account,
            reason,
            by,
            node,
        } => {
            let by = format!("{by} on {node}");
            let _ = tokio::task::spawn_blocking(move || {
                freezes.freeze_from(&account, &reason, &by, Origin::Cluster)
            })
            .await;
        }
        Announcement::Unfrozen { account, by, node } => {
            let by = format!("{by} on {node}");
            let a = account.clone();
            let changed = tokio::task::spawn_blocking(move || {
                freezes.unfreeze_from(&a, &by, Origin::Cluster)
            })
            .await;
            if let Ok(Ok(true)) = changed {
                on_unfrozen(&account);
            }
        }
        Announcement::Shaped { .. } | Announcement::Verdict { .. } => {}
    }
}

/// Compares this node's frozen accounts with the cluster's: freezes made elsewhere are held
/// here, unfreezes made elsewhere since a freeze here lift it, and freezes made here while
/// Redis was away are shared.
async fn catch_up(governor: &Arc<Governor>, cluster: &Arc<Cluster>, on_unfrozen: &OnUnfrozen) {
    let keys = (cluster.key("frozen"), cluster.key("unfrozen"));
    let read: Option<(HashMap<String, String>, HashMap<String, u64>)> = cluster
        .call("sync", |mut c| async move {
            redis::pipe()
                .hgetall(keys.0)
                .hgetall(keys.1)
                .query_async(&mut c)
                .await
        })
        .await;
    let Some((theirs, unfrozen)) = read else {
        return;
    };
    let freezes = governor.freezes.clone();
    let mine = freezes.all();
    for (account, json) in &theirs {
        if mine.contains_key(account) {
            continue;
        }
        let Ok(f) = serde_json::from_str::<Frozen>(json) else {
            tracing::warn!(account, "cluster: a freeze record not understood");
            continue;
        };
        let (fr, a, by) = (
            freezes.clone(),
            account.clone(),
            format!("{} (cluster)", f.by),
        );
        let _ = tokio::task::spawn_blocking(move || {
            fr.freeze_from(&a, &f.reason, &by, Origin::Cluster)
        })
        .await;
    }
    for (account, f) in mine {
        if theirs.contains_key(&account) {
            continue;
        }
        match unfrozen.get(&account) {
            // Unfrozen elsewhere after it was frozen here.
            Some(&at) if at >= f.since_ms => {
                let (fr, a) = (freezes.clone(), account.clone());
                let changed = tokio::task::spawn_blocking(move || {
                    fr.unfreeze_from(&a, "cluster", Origin::Cluster)
                })
                .await;
                if let Ok(Ok(true)) = changed {
                    on_unfrozen(&account);
                }
            }
            // Frozen here while Redis was away (or the record was lost): shared now.
            _ => freezes.publish_freeze(&account, &f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::testing;
    use crate::governance::freeze::Freezes;
    use crate::governance::health::Signal;
    use crate::policy::Policy;
    use arc_swap::ArcSwap;

    fn governor(dir: &std::path::Path) -> Arc<Governor> {
        let policy = Policy::from_toml(
            "test",
            r#"
[accounts.shop]
networks = ["127.0.0.0/8"]
[health]
window = "1h"
min_volume = 30
max_complaint_rate = 0.05
"#,
        )
        .unwrap();
        Arc::new(Governor {
            health: Default::default(),
            freezes: Arc::new(Freezes::open(dir).unwrap()),
            policy: Arc::new(ArcSwap::from_pointee(policy)),
            shared: Default::default(),
        })
    }

    /// Three nodes each see a third of an account's mail and one complaint: none would
    /// freeze it alone (each has fewer than `min_volume` messages), the sum does, once, and
    /// every node holds the freeze. An unfreeze on one lifts it on all and releases the
    /// held mail there; a node that was away catches up with both.
    #[tokio::test]
    #[ignore = "needs a Redis: tests/interop/cluster.sh"]
    async fn health_is_summed_and_a_freeze_is_held_by_all() {
        let stop = CancellationToken::new();
        let p = testing::prefix("health");
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let released = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut govs = Vec::new();
        let mut nodes = Vec::new();
        for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
            let g = governor(dirs[i].path());
            let node = testing::node(id, &p, &stop).await;
            nodes.push(node.clone());
            let r = released.clone();
            spawn(
                g.clone(),
                node,
                Arc::new(move |a: &str| r.lock().unwrap().push(a.to_string())),
                stop.clone(),
            );
            govs.push(g);
        }
        for g in &govs {
            for _ in 0..11 {
                assert_eq!(g.count("shop", Signal::Delivered), None);
            }
            assert_eq!(g.count("shop", Signal::Complaint), None, "judged alone");
        }
        testing::until("frozen on every node", 5, || {
            govs.iter().all(|g| g.freezes.is_frozen("shop"))
        })
        .await;
        let reasons: Vec<String> = govs
            .iter()
            .map(|g| g.freezes.get("shop").unwrap().reason)
            .collect();
        assert!(reasons[0].contains("across the cluster"), "{reasons:?}");
        // What `account show` prints: the window summed over the nodes.
        let rules = govs[0].policy.load().health_rules();
        let sum = window(&nodes[2], "shop", &rules).await.unwrap();
        assert_eq!((sum.delivered, sum.complaints), (33, 3), "{sum:?}");
        govs[1].freezes.unfreeze("shop", "admin").unwrap();
        testing::until("unfrozen on every node", 5, || {
            govs.iter().all(|g| !g.freezes.is_frozen("shop"))
        })
        .await;
        testing::until("released on the two others", 5, || {
            released.lock().unwrap().len() == 2
        })
        .await;
        // A node that was away: frozen by an admin elsewhere while it was gone.
        let d = tempfile::tempdir().unwrap();
        govs[0].freezes.freeze("shop", "paused", "admin").unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let late = governor(d.path());
        let stop_late = CancellationToken::new();
        spawn(
            late.clone(),
            testing::node("d", &p, &stop_late).await,
            Arc::new(|_: &str| {}),
            stop_late.clone(),
        );
        testing::until("the late node holds the freeze", 5, || {
            late.freezes.is_frozen("shop")
        })
        .await;
        stop.cancel();
        stop_late.cancel();
    }
}
