//! Shared paces and connection caps, per site.
//!
//! - A rate is a GCRA without burst kept in Redis: each message (or new connection) books
//!   the next slot of the site's one schedule, whichever node sends it, so three nodes at
//!   "120/min" send 120 a minute between them ([`Cluster::pace`]).
//! - A connection cap is a set of leases — `node:start:serial` members of a sorted set scored by
//!   expiry — taken and pruned in one script, renewed on every heartbeat while the
//!   connection lives and given back when it closes ([`Lease`]). A node waiting for a lease
//!   sleeps until a release is announced on the bus or the first lease held would expire,
//!   never on a fixed poll.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Notify;

use super::{Cluster, scripts};

/// The longest a lease waiter sleeps without news (a release announced while its bus
/// connection was being re-made is not missed for longer).
const LEASE_RECHECK_MAX: Duration = Duration::from_secs(5);

impl Cluster {
    /// Books the next slot of `site`'s `schedule` (its message or connection rate),
    /// `interval` after the last one booked by any node, and returns how long to wait for
    /// it; `None` when Redis cannot say (the caller paces alone, see [`Cluster::share`]).
    pub async fn pace(&self, schedule: &str, site: &str, interval: Duration) -> Option<Duration> {
        let key = format!("{}pace:{schedule}:{site}", self.config.key_prefix);
        let micros = interval.as_micros().clamp(1, i64::MAX as u128) as i64;
        let wait: i64 = self
            .call("pace", |mut c| async move {
                scripts::GCRA
                    .key(key)
                    .arg(micros)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Some(Duration::from_micros(wait.max(0) as u64))
    }

    /// Waits for one of `site`'s `cap` connection leases across the cluster; `None` when
    /// Redis cannot be asked (now or while waiting): the caller keeps to its local share.
    pub async fn lease(self: &Arc<Self>, site: &str, cap: usize) -> Option<Lease> {
        let key = self.key(&format!("leases:{site}"));
        let id = self.next_lease.fetch_add(1, Ordering::Relaxed);
        // The start time tells this run's leases from a previous run's (killed) that
        // may still be waiting out their ttl.
        let member = format!("{}:{}:{id}", self.config.node_id, self.started_ms);
        let ttl = self.config.lease_ttl.as_millis() as i64;
        let notify = self.waiter(&key);
        let mut waited = false;
        loop {
            // Registered before asking, so a release between the answer and the wait is
            // not missed.
            let woken = notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let (k, m) = (key.clone(), member.clone());
            let answer: i64 = self
                .call("lease", |mut c| async move {
                    scripts::ACQUIRE
                        .key(k)
                        .arg(m)
                        .arg(cap)
                        .arg(ttl)
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            if answer > 0 {
                self.held
                    .lock()
                    .expect("leases lock")
                    .insert(id, (key.clone(), member.clone()));
                return Some(Lease {
                    cluster: self.clone(),
                    id,
                });
            }
            if !waited {
                crate::metrics::cluster_lease_wait();
                waited = true;
            }
            let hint = Duration::from_millis(answer.unsigned_abs()).min(LEASE_RECHECK_MAX);
            let _ = tokio::time::timeout(hint, woken).await;
            if !self.is_up() {
                return None;
            }
        }
    }

    fn waiter(&self, key: &str) -> Arc<Notify> {
        let mut waiters = self.waiters.lock().expect("waiters lock");
        if waiters.len() > 10_000 {
            waiters.retain(|_, n| Arc::strong_count(n) > 1);
        }
        waiters.entry(key.to_string()).or_default().clone()
    }

    fn release(self: &Arc<Self>, id: u64) {
        let Some((key, member)) = self.held.lock().expect("leases lock").remove(&id) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // shutting down: the lease expires on its own
        };
        let this = self.clone();
        runtime.spawn(async move {
            let channel = this.key("bus");
            let text = format!("freed\t{key}");
            this.call("release", |mut c| async move {
                scripts::RELEASE
                    .key(key)
                    .arg(member)
                    .arg(channel)
                    .arg(text)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await;
        });
    }

    /// Renews every lease this node holds (on the heartbeat).
    pub(super) async fn renew(&self) {
        let held: Vec<(String, String)> = self
            .held
            .lock()
            .expect("leases lock")
            .values()
            .cloned()
            .collect();
        // One script per batch: a node with hundreds of connections renews in a few calls.
        for batch in held.chunks(200) {
            let ttl = self.config.lease_ttl.as_millis() as i64;
            let batch = batch.to_vec();
            let again: Option<i64> = self
                .call("renew", |mut c| async move {
                    let mut inv = scripts::RENEW.prepare_invoke();
                    inv.arg(ttl);
                    for (key, member) in &batch {
                        inv.key(key).arg(member);
                    }
                    inv.invoke_async(&mut c).await
                })
                .await;
            if let Some(n) = again.filter(|n| *n > 0) {
                tracing::info!(
                    leases = n,
                    "connection leases had expired and were taken again"
                );
            }
        }
    }

    /// Leases this node holds now.
    pub fn leases_held(&self) -> usize {
        self.held.lock().expect("leases lock").len()
    }
}

/// One connection's place in its site's cluster-wide cap; given back when dropped.
pub struct Lease {
    cluster: Arc<Cluster>,
    id: u64,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.cluster.release(self.id);
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lease({})", self.id)
    }
}
