//! The cluster's feed of consent and suppression changes: every node's changes reach every
//! other node, so an unsubscribe clicked on one stops the next message on all.
//!
//! - **Sending.** The journal is the outbox: every change is fsynced there first (as
//!   alone), then appended to the Redis stream `PREFIX feed` — one entry per change: the
//!   node's id and the 32-octet journal record, whose stamp ([`super::hlc`]) orders it.
//!   What Redis acknowledged is remembered in `feed.sent` (journal number and offset) only
//!   after the acknowledgement (with `feed_replicas`, after `WAITAOF`/`WAIT` say that many
//!   replicas hold it), so a node killed or a Redis lost in between sends again; compaction
//!   keeps every journal not yet sent ([`Lists::set_journal_floor`]).
//! - **Receiving.** Each node reads the stream from its own position (`feed.seen`, kept
//!   after the changes are in its journal) on a connection of its own, blocked until
//!   something comes, and puts the other nodes' changes in force with
//!   [`Lists::accept_remote`] — last writer wins per address and reason by stamp, so a
//!   change read twice, or after a later one, changes nothing. Received changes are marked
//!   in the journal and never sent on.
//!
//! Nothing in the feed is an address: fingerprints only, keyed with the lists secret that
//! every node of a cluster must share (a node whose secret differs refuses the feed).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::journal::{self, Change, RECORD_LEN};
use super::positions::{self, Sent};
use super::published::Snapshots;
use super::{Lists, hlc};
use crate::cluster::{Cluster, stream};

/// How often the journal is looked at for changes to send.
const SEND_EVERY: Duration = Duration::from_millis(50);
/// How long a feed read waits for news before asking again.
const READ_BLOCK: Duration = Duration::from_millis(1000);
/// Changes per stream command.
const BATCH: usize = 500;

/// Starts sending and receiving once Redis answers; both stop with `stop`. A node whose
/// lists secret is not the cluster's takes no part (its fingerprints would mean nothing to
/// the others): that is logged as an error, every heartbeat's worth of retries.
/// `compact_after`: the changes since the snapshot that make the cluster compact, when it
/// shares its snapshots (`[cluster] snapshot_dir`, see [`super::published`]).
pub fn spawn(
    lists: Arc<Lists>,
    cluster: Arc<Cluster>,
    compact_after: usize,
    stop: CancellationToken,
) -> Result<(), String> {
    lists.set_clock_node(hlc::node_byte(cluster.node_id()));
    let sent = positions::read_sent(lists.dir())
        .map_err(|e| format!("{}: {e}", positions::sent_path(lists.dir()).display()))?
        .unwrap_or(Sent {
            journal: journal::list(lists.dir())
                .map_err(|e| e.to_string())?
                .first()
                .copied()
                .unwrap_or(1),
            offset: 0,
        });
    lists.set_journal_floor(sent.journal);
    let sent = Arc::new(Mutex::new(sent));
    let snapshots = cluster
        .config()
        .snapshot_dir
        .clone()
        .map(|dir| Snapshots::new(dir, compact_after, &lists));
    if snapshots.is_some() {
        lists.share_compaction(cluster.clone());
    }
    tokio::spawn(async move {
        // The secret is checked against the cluster's before anything is sent or read.
        loop {
            if cluster.is_up() {
                match check_secret(&lists, &cluster).await {
                    Some(Ok(())) => break,
                    Some(Err(why)) => {
                        tracing::error!(
                            "feed: {why}; this node neither sends nor reads the cluster's changes"
                        );
                        return;
                    }
                    None => {}
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        tokio::spawn(send_loop(
            lists.clone(),
            cluster.clone(),
            sent.clone(),
            stop.clone(),
        ));
        receive_loop(lists, cluster, sent, snapshots, stop).await;
    });
    Ok(())
}

/// The cluster records the id of the first secret it sees; every node must have it.
/// `None`: Redis did not answer.
async fn check_secret(lists: &Lists, cluster: &Cluster) -> Option<Result<(), String>> {
    let key = cluster.key("lists-secret");
    let mine = hex(&lists.secret().id().to_le_bytes());
    let mine2 = mine.clone();
    let theirs: Option<String> = cluster
        .call("feed_send", |mut c| async move {
            redis::cmd("SET")
                .arg(&key)
                .arg(&mine2)
                .arg("NX")
                .query_async::<()>(&mut c)
                .await?;
            redis::cmd("GET").arg(&key).query_async(&mut c).await
        })
        .await?;
    Some(match theirs {
        Some(t) if t != mine => Err(format!(
            "the lists secret of this node ({mine}) is not the cluster's ({t}): copy the \
             `secret` file of the lists directory from another node before joining"
        )),
        _ => Ok(()),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Sends what the journal holds beyond `sent`, every [`SEND_EVERY`]. The position is
/// locked while a round sends and records it (taking a snapshot made elsewhere moves it).
async fn send_loop(
    lists: Arc<Lists>,
    cluster: Arc<Cluster>,
    sent: Arc<Mutex<Sent>>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(SEND_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !cluster.is_up() {
            continue;
        }
        let mut sent = sent.lock().await;
        match send_some(&lists, &cluster, *sent).await {
            Ok(next) if next != *sent => {
                let dir = lists.dir().to_path_buf();
                let saved =
                    tokio::task::spawn_blocking(move || positions::write_sent(&dir, next)).await;
                match saved {
                    Ok(Ok(())) => {
                        *sent = next;
                        lists.set_journal_floor(next.journal);
                    }
                    _ => tracing::error!("cannot record the feed's position; sending again"),
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "feed: not sent this time"),
        }
    }
}

/// Sends the local changes after `from`, journal by journal; returns how far it got.
async fn send_some(lists: &Lists, cluster: &Cluster, from: Sent) -> Result<Sent, String> {
    let dir = lists.dir().to_path_buf();
    let numbers = journal::list(&dir).map_err(|e| e.to_string())?;
    let mut at = from;
    for n in numbers.into_iter().filter(|&n| n >= from.journal) {
        let offset = if n == at.journal { at.offset } else { 0 };
        let d = dir.clone();
        let read = tokio::task::spawn_blocking(move || journal::read_from(&d, n, offset))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let local: Vec<&Change> = read.changes.iter().filter(|c| !c.remote).collect();
        for batch in local.chunks(BATCH) {
            append(cluster, batch).await?;
        }
        crate::metrics::cluster_feed(local.len() as u64, 0, 0);
        at = Sent {
            journal: n,
            offset: read.offset,
        };
    }
    Ok(at)
}

/// Appends changes to the stream; `Ok` once Redis (and the replicas asked for) hold them.
async fn append(cluster: &Cluster, changes: &[&Change]) -> Result<(), String> {
    let key = cluster.key("feed");
    let node = cluster.node_id().to_string();
    let max = cluster.config().feed_max_entries;
    let replicas = cluster.config().feed_replicas;
    let timeout_ms = cluster.config().timeout.as_millis() as u64;
    let records: Vec<[u8; RECORD_LEN]> = changes.iter().map(|c| c.encode()).collect();
    let acknowledged = cluster
        .call("feed_send", |mut c| async move {
            let mut pipe = redis::pipe();
            for r in &records {
                pipe.cmd("XADD")
                    .arg(&key)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(max)
                    .arg("*")
                    .arg("n")
                    .arg(&node)
                    .arg("r")
                    .arg(&r[..])
                    .ignore();
            }
            pipe.query_async::<()>(&mut c).await?;
            if replicas == 0 {
                return Ok(true);
            }
            // WAITAOF (Redis 7.2) where there is one, else WAIT.
            let aof: redis::RedisResult<(u32, u32)> = redis::cmd("WAITAOF")
                .arg(0)
                .arg(replicas)
                .arg(timeout_ms / 2)
                .query_async(&mut c)
                .await;
            let copies = match aof {
                Ok((_, r)) => r,
                Err(_) => {
                    redis::cmd("WAIT")
                        .arg(replicas)
                        .arg(timeout_ms / 2)
                        .query_async::<u32>(&mut c)
                        .await?
                }
            };
            Ok(copies >= replicas)
        })
        .await;
    match acknowledged {
        Some(true) => Ok(()),
        Some(false) => Err(format!("fewer than {replicas} replica(s) acknowledged")),
        None => Err("Redis did not take the changes".into()),
    }
}

/// Reads the other nodes' changes and puts them in force, for as long as the node runs;
/// with shared snapshots, also takes the cluster's newest snapshot and compacts for it in
/// turn ([`Snapshots`]), between reads.
async fn receive_loop(
    lists: Arc<Lists>,
    cluster: Arc<Cluster>,
    sent: Arc<Mutex<Sent>>,
    mut snapshots: Option<Snapshots>,
    stop: CancellationToken,
) {
    let mut last_id = positions::read_seen(lists.dir());
    let key = cluster.key("feed");
    let mut conn = None;
    let mut warned_trim = false;
    loop {
        let Some(c) = cluster
            .reading_connection(&mut conn, READ_BLOCK, &stop)
            .await
        else {
            return;
        };
        if let Some(s) = &mut snapshots {
            // A node that never read the feed starts from the newest snapshot.
            s.tick(&lists, &cluster, &mut last_id, &sent).await;
        }
        let position = last_id.clone().unwrap_or_else(|| "0-0".to_string());
        if !warned_trim {
            warned_trim = true;
            warn_if_trimmed(c, &key, &position).await;
        }
        let read = tokio::select! {
            () = stop.cancelled() => return,
            r = read(c, &key, &position) => r,
        };
        let entries = match read {
            Ok(e) => e,
            Err(e) => {
                cluster.failed("feed_read", &e);
                conn = None;
                continue;
            }
        };
        let Some(newest) = entries.last().map(|e| e.id.clone()) else {
            continue;
        };
        // This node's own changes come back too: already in force here they change
        // nothing, and after a snapshot made elsewhere was taken they restore what it
        // did not hold yet.
        let received = entries
            .iter()
            .filter(|e| e.node != cluster.node_id())
            .count() as u64;
        let changes: Vec<Change> = entries.into_iter().filter_map(|e| e.change).collect();
        let l = lists.clone();
        let dir = lists.dir().to_path_buf();
        let id = newest.clone();
        let applied = tokio::task::spawn_blocking(move || {
            let applied = l.accept_remote(&changes)?;
            positions::write_seen(&dir, &id)
                .map_err(|e| super::io_error(&positions::seen_path(&dir))(e))?;
            Ok::<_, super::ListsError>(applied)
        })
        .await;
        match applied {
            Ok(Ok(applied)) => {
                crate::metrics::cluster_feed(0, received, applied as u64);
                last_id = Some(newest);
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "feed: cannot record the other nodes' changes; reading them again");
                tokio::time::sleep(cluster.config().heartbeat).await;
            }
            Err(_) => tracing::error!("feed: the recording task panicked"),
        }
    }
}

/// A stream entry: its id, the node that made it, its change (`None`: not a change).
struct Entry {
    id: String,
    node: String,
    change: Option<Change>,
}

/// The entries after `after` (blocking up to [`READ_BLOCK`] for the first).
async fn read(
    c: &mut redis::aio::ConnectionManager,
    key: &str,
    after: &str,
) -> Result<Vec<Entry>, String> {
    let entries = stream::read(c, key, after, BATCH, READ_BLOCK).await?;
    Ok(entries
        .into_iter()
        .map(|entry| {
            let node: String = entry.get("n").unwrap_or_default();
            let record: Vec<u8> = entry.get("r").unwrap_or_default();
            let change = (record.len() == RECORD_LEN)
                .then(|| Change::decode(&record))
                .flatten();
            if change.is_none() {
                tracing::warn!(id = entry.id, "feed: an entry that is not a change skipped");
            }
            Entry {
                id: entry.id,
                node,
                change,
            }
        })
        .collect())
}

/// Logs when the stream no longer holds the entries after this node's position (it was
/// away for longer than `feed_max_entries` changes).
async fn warn_if_trimmed(c: &mut redis::aio::ConnectionManager, key: &str, after: &str) {
    if stream::trimmed_after(c, key, after).await {
        tracing::error!(
            position = after,
            "feed: changes this node had not read were trimmed from the stream (it was away \
             for longer than feed_max_entries changes); some suppressions of other nodes may \
             be missing here"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::testing;
    use crate::consent::{Kind, Op, Origin, Reason, Scope};

    /// Two nodes, each with its own lists directory (sharing one secret): what one
    /// records is in force on the other within a second, both ways; a node whose secret
    /// differs takes no part; a restarted node reads on from where it was, and what it
    /// recorded while its feed was away is sent when it comes back.
    #[tokio::test]
    #[ignore = "needs a Redis: tests/interop/cluster.sh"]
    async fn changes_reach_the_other_node_within_a_second() {
        let stop = CancellationToken::new();
        let p = testing::prefix("feed");
        let (da, db, dc) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let a = Arc::new(Lists::open(da.path(), 24).unwrap());
        std::fs::copy(da.path().join("secret"), db.path().join("secret")).unwrap();
        let b = Arc::new(Lists::open(db.path(), 24).unwrap());
        let ca = testing::node("a", &p, &stop).await;
        let cb = testing::node("b", &p, &stop).await;
        spawn(a.clone(), ca, 0, stop.clone()).unwrap();
        let stop_b = CancellationToken::new();
        spawn(b.clone(), cb, 0, stop_b.clone()).unwrap();
        let unsubscribe = |l: &Lists, address: &str| {
            l.record_addresses(
                Kind::Suppression,
                Scope::Account("shop"),
                Op::Add,
                Reason::Unsubscribe.bit(),
                Origin::Unsubscribe,
                &[address.to_string()],
            )
            .unwrap();
        };
        let suppressed = |l: &Lists, address: &str| l.standing("shop", None, address).account != 0;
        let within = |l: Arc<Lists>, address: &'static str| async move {
            let start = std::time::Instant::now();
            while !suppressed(&l, address) {
                assert!(
                    start.elapsed() < Duration::from_secs(1),
                    "{address} not in force within 1 s"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            start.elapsed()
        };
        unsubscribe(&a, "one@example.net");
        let took = within(b.clone(), "one@example.net").await;
        eprintln!("a → b in {took:?}");
        unsubscribe(&b, "two@example.net");
        within(a.clone(), "two@example.net").await;
        // b stops; a records meanwhile; b comes back and catches up from its position.
        stop_b.cancel();
        tokio::time::sleep(Duration::from_millis(200)).await;
        unsubscribe(&a, "three@example.net");
        unsubscribe(&b, "four@example.net"); // recorded with b's feed away
        let cb = testing::node("b", &p, &stop).await;
        spawn(b.clone(), cb, 0, stop.clone()).unwrap();
        within(b.clone(), "three@example.net").await;
        within(a.clone(), "four@example.net").await;
        // A node with another secret is refused: nothing reaches it.
        let c = Arc::new(Lists::open(dc.path(), 24).unwrap());
        let cc = testing::node("c", &p, &stop).await;
        spawn(c.clone(), cc, 0, stop.clone()).unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!suppressed(&c, "one@example.net"));
        stop.cancel();
    }
}
