//! Snapshots once, for a cluster with `[cluster] snapshot_dir` (a directory every node
//! sees): one node at a time compacts the lists for all, the others take its snapshot.
//!
//! - **Publishing.** When a node's lists hold `[lists] compact_after` changes since their
//!   snapshot, it takes the lock `PREFIX snapshot-lock` (with an expiry, so a node that
//!   dies holding it does not block the others for long), compacts as alone — between two
//!   reads of the feed, so its snapshot holds every change of the stream up to its
//!   position, and its own — copies the snapshot to `SNAPSHOT_DIR/HASH.snapshot` (BLAKE3
//!   of the file; written under a temporary name, fsynced, renamed) and records it in
//!   `PREFIX snapshot` with that stream position. The previous file stays (a node may be
//!   copying it); older ones are removed.
//! - **Taking.** Every few seconds each node reads `PREFIX snapshot`; a snapshot newer
//!   than its own is copied into its lists directory, its hash and then its whole format
//!   verified (the secret must be this node's), and put in service in place of the node's
//!   snapshot and journals ([`Lists::adopt`]): the node's own changes the cluster may not
//!   have yet (not sent) are carried over, and the node reads the feed again from the
//!   snapshot's position — the other nodes' changes and its own that came after it are in
//!   force again by the feed's usual rule (last writer wins by stamp; what the snapshot
//!   cannot order is kept where it suppresses). A node that never read the feed (a new
//!   one) takes the newest snapshot before reading, instead of the whole stream.
//! - **Refusing.** A snapshot whose hash or format does not verify, made with another
//!   secret, or whose stream position is older than what the stream still holds while the
//!   node had read past it (taking it would lose changes), is not taken (logged, counted);
//!   the node goes on with its own.
//!
//! While Redis is away each node compacts its own, as alone.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::positions::{self, Sent};
use super::snapshot::{self, Snapshot};
use super::{Change, Lists, ListsError, hlc, io_error, journal, kept_tags, record_expected};
use crate::cluster::{Cluster, stream};

/// How often a node looks for a newer snapshot, and whether to compact.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// How long the compaction lock lasts if its holder dies.
const LOCK_TTL_MS: u64 = 600_000;

/// Releases the lock if this node still holds it.
static UNLOCK: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
    )
});

/// The cluster's newest snapshot, as `PREFIX snapshot` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// BLAKE3 of the file, hex: its name in the snapshot directory is `HASH.snapshot`.
    pub hash: String,
    /// The feed position whose changes (and every earlier one) it holds.
    pub stream: String,
    pub created_ms: u64,
    pub entries: u64,
    pub bytes: u64,
    pub node: String,
}

/// The feed's receiver's part in sharing snapshots (see the module doc).
pub struct Snapshots {
    dir: PathBuf,
    compact_after: usize,
    /// The hash of the last snapshot published or taken here (or found not newer).
    marker: Option<String>,
    next_check: Option<tokio::time::Instant>,
}

impl Snapshots {
    pub fn new(dir: PathBuf, compact_after: usize, lists: &Lists) -> Snapshots {
        Snapshots {
            dir,
            compact_after,
            marker: positions::read_snapshot_marker(lists.dir()),
            next_check: None,
        }
    }

    /// Between two reads of the feed (at most every [`CHECK_EVERY`]): takes the cluster's
    /// newest snapshot when it is newer than this node's, then compacts for the cluster
    /// when this node's lists have grown enough and no other node is at it. `last_id`: the
    /// feed position of the receiver (moved when a snapshot is taken); `sent`: the
    /// sender's, locked while the journals are replaced.
    pub async fn tick(
        &mut self,
        lists: &Arc<Lists>,
        cluster: &Cluster,
        last_id: &mut Option<String>,
        sent: &Mutex<Sent>,
    ) {
        let now = tokio::time::Instant::now();
        if self.next_check.is_some_and(|t| now < t) {
            return;
        }
        self.next_check = Some(now + CHECK_EVERY);
        let newest = self.newest(cluster).await;
        if let Some(p) = &newest
            && self.marker.as_deref() != Some(p.hash.as_str())
        {
            let ours = lists.stats().snapshot_created_ms.unwrap_or(0);
            if p.created_ms > ours {
                self.take(p, lists, cluster, last_id, sent).await;
            } else {
                self.marker = Some(p.hash.clone());
            }
        }
        let stats = lists.stats();
        if self.compact_after > 0
            && stats.delta_entries >= self.compact_after
            && lists.snapshot_problem().is_none()
        {
            self.publish(lists, cluster, last_id, newest).await;
        }
    }

    async fn newest(&self, cluster: &Cluster) -> Option<Published> {
        let key = cluster.key("snapshot");
        let json: Option<String> = cluster
            .call("snapshot", |mut c| async move {
                redis::cmd("GET").arg(key).query_async(&mut c).await
            })
            .await
            .flatten();
        let json = json?;
        match serde_json::from_str(&json) {
            Ok(p) => Some(p),
            Err(_) => {
                tracing::warn!("cluster: the snapshot record is not understood");
                None
            }
        }
    }

    /// Takes the snapshot `p` made elsewhere (see [`Lists::adopt`]).
    async fn take(
        &mut self,
        p: &Published,
        lists: &Arc<Lists>,
        cluster: &Cluster,
        last_id: &mut Option<String>,
        sent: &Mutex<Sent>,
    ) {
        // Read past its position: the stream must still hold what came after it.
        if let Some(mine) = last_id.as_deref()
            && !stream::id_less(mine, &p.stream)
            && trimmed_before(cluster, &p.stream).await
        {
            crate::metrics::cluster_snapshot("refused");
            tracing::error!(
                snapshot = p.hash,
                position = p.stream,
                "the cluster's snapshot is not taken: the feed no longer holds the changes \
                 after it; this node keeps its own lists"
            );
            self.marker = Some(p.hash.clone());
            return;
        }
        let file = self.dir.join(format!("{}.snapshot", p.hash));
        let mut sent = sent.lock().await;
        let (l, hash, stream) = (lists.clone(), p.hash.clone(), p.stream.clone());
        let adopted = tokio::task::spawn_blocking(move || l.adopt(&file, &hash, &stream)).await;
        match adopted {
            Ok(Ok(now_sent)) => {
                *sent = now_sent;
                lists.set_journal_floor(now_sent.journal);
                *last_id = Some(p.stream.clone());
                self.marker = Some(p.hash.clone());
                crate::metrics::cluster_snapshot("taken");
                tracing::info!(
                    snapshot = p.hash,
                    by = p.node,
                    entries = p.entries,
                    position = p.stream,
                    "the cluster's lists snapshot is in service; reading the feed from its position"
                );
            }
            Ok(Err(e)) => {
                crate::metrics::cluster_snapshot("refused");
                tracing::error!(error = %e, snapshot = p.hash, "the cluster's snapshot is not taken (tried again in a while)");
            }
            Err(_) => tracing::error!("the snapshot task panicked"),
        }
    }

    /// Compacts for the cluster and publishes the snapshot, if no other node holds the
    /// lock. `previous`: the cluster's snapshot before (its file is kept).
    async fn publish(
        &mut self,
        lists: &Arc<Lists>,
        cluster: &Cluster,
        last_id: &Option<String>,
        previous: Option<Published>,
    ) {
        let lock = cluster.key("snapshot-lock");
        let me = cluster.node_id().to_string();
        let (k, v) = (lock.clone(), me.clone());
        let locked: Option<Option<String>> = cluster
            .call("snapshot", |mut c| async move {
                redis::cmd("SET")
                    .arg(k)
                    .arg(v)
                    .arg("NX")
                    .arg("PX")
                    .arg(LOCK_TTL_MS)
                    .query_async(&mut c)
                    .await
            })
            .await;
        if !matches!(locked, Some(Some(_))) {
            return; // another node compacts (or Redis did not answer)
        }
        let (l, dir) = (lists.clone(), self.dir.clone());
        let keep = previous.map(|p| p.hash);
        let made = tokio::task::spawn_blocking(move || {
            l.compile(Vec::new())?;
            l.publish_to(&dir, keep.as_deref())
        })
        .await;
        let record = match made {
            Ok(Ok(mut p)) => {
                p.stream = last_id.clone().unwrap_or_else(|| "0-0".into());
                p.node = me.clone();
                Some(p)
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "the lists were not compacted for the cluster");
                None
            }
            Err(_) => None,
        };
        if let Some(p) = &record
            && let Ok(json) = serde_json::to_string(p)
        {
            let key = cluster.key("snapshot");
            let set: Option<()> = cluster
                .call("snapshot", |mut c| async move {
                    redis::cmd("SET")
                        .arg(key)
                        .arg(json)
                        .query_async(&mut c)
                        .await
                })
                .await;
            if set.is_some() {
                let _ = positions::write_snapshot_marker(lists.dir(), &p.hash);
                self.marker = Some(p.hash.clone());
                crate::metrics::cluster_snapshot("published");
                tracing::info!(
                    snapshot = p.hash,
                    entries = p.entries,
                    position = p.stream,
                    "lists compacted for the cluster; snapshot published"
                );
            }
        }
        cluster
            .call("snapshot", |mut c| async move {
                UNLOCK.key(lock).arg(me).invoke_async::<i64>(&mut c).await
            })
            .await;
    }
}

/// Whether the feed was trimmed past `position` (see [`stream::trimmed_after`]).
async fn trimmed_before(cluster: &Cluster, position: &str) -> bool {
    let (key, position) = (cluster.key("feed"), position.to_string());
    cluster
        .call("snapshot", |mut c| async move {
            Ok(stream::trimmed_after(&mut c, &key, &position).await)
        })
        .await
        .unwrap_or(false)
}

/// Copies `from` to `to` (0600, fsynced); the BLAKE3 of the content, hex.
fn copy_hashing(from: &Path, to: &Path) -> std::io::Result<String> {
    let mut src = std::fs::File::open(from)?;
    let mut dst = crate::files::options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(to)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n])?;
    }
    dst.sync_all()?;
    Ok(hasher.finalize().to_hex().to_string())
}

impl Lists {
    /// Copies the snapshot in service to `shared` as `HASH.snapshot` and removes the older
    /// snapshots there but `keep`'s. The record's stream position and node are the
    /// caller's to fill in.
    pub fn publish_to(&self, shared: &Path, keep: Option<&str>) -> Result<Published, ListsError> {
        std::fs::create_dir_all(shared).map_err(io_error(shared))?;
        let s = self
            .snapshot()
            .ok_or_else(|| io_error(shared)(std::io::Error::other("no snapshot to publish")))?;
        let tmp = shared.join(format!(".{}.tmp", rand::random::<u64>()));
        let hash = copy_hashing(&self.snapshot_path(), &tmp).map_err(io_error(&tmp))?;
        let name = format!("{hash}.snapshot");
        let path = shared.join(&name);
        std::fs::rename(&tmp, &path).map_err(io_error(&path))?;
        crate::files::sync_dir(shared).map_err(io_error(shared))?;
        // Older snapshots go; the previous one stays (a node may be copying it).
        if let Ok(entries) = std::fs::read_dir(shared) {
            for e in entries.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                let old = n.ends_with(".snapshot")
                    && n != name
                    && keep.is_none_or(|k| n != format!("{k}.snapshot"));
                if old {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(Published {
            hash,
            stream: String::new(),
            created_ms: s.created_ms(),
            entries: s.len(),
            bytes: s.file_size(),
            node: String::new(),
        })
    }

    /// Puts the snapshot `file` made on another node (BLAKE3 `hash`, holding the feed up
    /// to `stream`) in service in place of this node's snapshot and journals. Verified
    /// first (hash, format, secret). Under the compile lock: the feed position is moved
    /// back to `stream` first (a crash from there on reads the feed again, which changes
    /// nothing twice); this node's own changes not sent yet are carried over into the
    /// journal after it (those older than it only where they suppress); the snapshot
    /// replaces the one in service, numbered as folding every journal before; the
    /// sender's position moves to the carried changes; the old journals go. Returns the
    /// sender's new position.
    pub fn adopt(&self, file: &Path, hash: &str, stream: &str) -> Result<Sent, ListsError> {
        let dir = self.dir().to_path_buf();
        let tmp = dir.join("snapshot.adopt");
        let got = copy_hashing(file, &tmp).map_err(io_error(file))?;
        if got != hash {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_error(file)(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("its BLAKE3 is {got}, the cluster recorded {hash}"),
            )));
        }
        let horizon = {
            let s = Snapshot::open(&tmp, self.secret().id()).inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })?;
            s.verify().inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })?;
            hlc::Hlc::floor_of(s.created_ms())
        };
        let lock = super::compile::compile_lock(&dir)?;
        positions::write_seen(&dir, stream).map_err(io_error(&dir))?;
        let from = positions::read_sent(&dir)
            .map_err(io_error(&dir))?
            .unwrap_or(Sent {
                journal: 0,
                offset: 0,
            });
        let closed = journal::roll_carrying(&dir, |closed| unsent(&dir, from, closed, horizon))
            .map_err(io_error(&dir))?;
        snapshot::refold(&tmp, closed).map_err(io_error(&tmp))?;
        let path = self.snapshot_path();
        std::fs::rename(&tmp, &path).map_err(io_error(&path))?;
        crate::files::sync_dir(&dir).map_err(io_error(&dir))?;
        record_expected(&dir, closed)?;
        let sent = Sent {
            journal: closed + 1,
            offset: 0,
        };
        positions::write_sent(&dir, sent).map_err(io_error(&dir))?;
        for n in journal::list(&dir).map_err(io_error(&dir))? {
            if n <= closed {
                let p = journal::path_of(&dir, n);
                std::fs::remove_file(&p).map_err(io_error(&p))?;
            }
        }
        positions::write_snapshot_marker(&dir, hash).map_err(io_error(&dir))?;
        drop(lock);
        self.refresh()?;
        Ok(sent)
    }
}

/// This node's changes in the journals from `from` up to `closed` (those not sent yet),
/// each kept for the tag bits the feed's rule keeps against a snapshot of `horizon`.
fn unsent(dir: &Path, from: Sent, closed: u64, horizon: u64) -> std::io::Result<Vec<Change>> {
    let mut out = Vec::new();
    for n in journal::list(dir)?
        .into_iter()
        .filter(|&n| n >= from.journal && n <= closed)
    {
        let offset = if n == from.journal { from.offset } else { 0 };
        for c in journal::read_from(dir, n, offset)?.changes {
            if c.remote {
                continue;
            }
            let tags = kept_tags(&c, None, horizon);
            if tags != 0 {
                out.push(Change { tags, ..c });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
