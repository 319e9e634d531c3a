//! Snapshots once, for a cluster with `[cluster] snapshot_dir` (a directory every node
//! sees): one node at a time compacts the lists for all, the others take its snapshot.
//!
//! - **Publishing.** When a node's lists hold `[lists] compact_after` changes since their
//!   snapshot, it takes the lock `PREFIX snapshot-lock` (with an expiry, so a node that
//!   dies holding it does not block the others for long), compacts as alone — between two
//!   reads of the feed, so its snapshot holds every change of the stream up to its
//!   position, and its own — copies the snapshot to `SNAPSHOT_DIR/HASH.snapshot` (BLAKE3
//!   of the file; written under a temporary name, fsynced, renamed) and its stamps file
//!   ([`super::stamps`]: what orders the changes it folded) to `SNAPSHOT_DIR/HASH.stamps`,
//!   and records both in `PREFIX snapshot` with that stream position. The previous files
//!   stay (a node may be copying them); older ones are removed.
//! - **Taking.** Every few seconds each node reads `PREFIX snapshot`; a snapshot newer
//!   than its own is copied into its lists directory, its hash and then its whole format
//!   verified (the secret must be this node's), and put in service in place of the node's
//!   snapshot and journals ([`Lists::adopt`]): the node's own changes the cluster may not
//!   have yet (not sent) are carried over, and the node reads the feed again from the
//!   snapshot's position — the other nodes' changes and its own that came after it are in
//!   force again by the feed's usual rule: last writer wins by stamp, against the stamps
//!   the snapshot kept too, so a change made before the snapshot that it did not hold
//!   (one that reached the feed after its position) is not lost; what the kept stamps
//!   cannot order (older than a day) is kept where it suppresses. A node that never read
//!   the feed (a new one) takes the newest snapshot before reading, instead of the whole
//!   stream.
//! - **Refusing.** A snapshot whose hash or format does not verify, made with another
//!   secret, whose stamps file does not verify or belongs to another snapshot, or whose
//!   stream position is older than what the stream still holds while the node had read
//!   past it (taking it would lose changes), is not taken (logged, counted); the node goes
//!   on with its own.
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
use super::{
    Change, Lists, ListsError, invalid_data as invalid, io_error, journal, kept_tags,
    record_expected, stamps,
};
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
    /// BLAKE3 of its stamps file (see [`super::stamps`]), named `HASH.stamps` there; absent
    /// from a node that did not write one (the snapshot's creation is then the horizon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stamps: Option<String>,
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
        let mut sent = sent.lock().await;
        let (l, dir, record) = (lists.clone(), self.dir.clone(), p.clone());
        let adopted = tokio::task::spawn_blocking(move || l.adopt(&dir, &record)).await;
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
        let made = tokio::task::spawn_blocking(move || {
            l.compile(Vec::new())?;
            l.publish_to(&dir, previous.as_ref())
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
    /// Copies the snapshot in service and its stamps file to `shared` as `HASH.snapshot`
    /// and `HASH.stamps` and removes the older files there but `keep`'s. The record's
    /// stream position and node are the caller's to fill in.
    pub fn publish_to(
        &self,
        shared: &Path,
        keep: Option<&Published>,
    ) -> Result<Published, ListsError> {
        std::fs::create_dir_all(shared).map_err(io_error(shared))?;
        let s = self
            .snapshot()
            .ok_or_else(|| io_error(shared)(std::io::Error::other("no snapshot to publish")))?;
        let hash = copy_in(&self.snapshot_path(), shared, "snapshot", |_| true)?
            .ok_or_else(|| io_error(shared)(std::io::Error::other("no snapshot to publish")))?;
        // Only stamps of this snapshot (a compilation may have replaced the file since).
        let binding = stamps::Binding::of(&s);
        let stamps_hash = copy_in(
            &stamps::path_of(&self.snapshot_path()),
            shared,
            "stamps",
            |copy| matches!(stamps::read(copy, binding), Ok(Some(_))),
        )?;
        crate::files::sync_dir(shared).map_err(io_error(shared))?;
        // Older files go; the previous snapshot's stay (a node may be copying them).
        let mut wanted = vec![format!("{hash}.snapshot")];
        wanted.extend(stamps_hash.iter().map(|h| format!("{h}.stamps")));
        if let Some(k) = keep {
            wanted.push(format!("{}.snapshot", k.hash));
            wanted.extend(k.stamps.iter().map(|h| format!("{h}.stamps")));
        }
        if let Ok(entries) = std::fs::read_dir(shared) {
            for e in entries.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                let ours = n.ends_with(".snapshot") || n.ends_with(".stamps");
                if ours && !wanted.contains(&n) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(Published {
            hash,
            stamps: stamps_hash,
            stream: String::new(),
            created_ms: s.created_ms(),
            entries: s.len(),
            bytes: s.file_size(),
            node: String::new(),
        })
    }

    /// Puts the snapshot `p` names (in the directory `shared`, made on another node,
    /// holding the feed up to `p.stream`) in service in place of this node's snapshot and
    /// journals. Verified first (hashes, format, secret, its stamps file's snapshot).
    /// Under the compile lock: the feed position is moved back to `p.stream` first (a
    /// crash from there on reads the feed again, which changes nothing twice); this node's
    /// own changes not sent yet are carried over into the journal after it (ordered
    /// against its stamps: what they cannot order only where it suppresses); the snapshot
    /// and its stamps replace those in service, numbered as folding every journal before;
    /// the sender's position moves to the carried changes; the old journals go. Returns the
    /// sender's new position.
    pub fn adopt(&self, shared: &Path, p: &Published) -> Result<Sent, ListsError> {
        let dir = self.dir().to_path_buf();
        let tmp = dir.join("snapshot.adopt");
        let stamps_tmp = dir.join("snapshot.stamps.adopt");
        let taken = self.fetch(shared, p, &tmp, &stamps_tmp);
        let (binding, kept) = taken.inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
            let _ = std::fs::remove_file(&stamps_tmp);
        })?;
        let stream = p.stream.as_str();
        let lock = super::compile::compile_lock(&dir)?;
        positions::write_seen(&dir, stream).map_err(io_error(&dir))?;
        let from = positions::read_sent(&dir)
            .map_err(io_error(&dir))?
            .unwrap_or(Sent {
                journal: 0,
                offset: 0,
            });
        let closed = journal::roll_carrying(&dir, |closed| unsent(&dir, from, closed, &kept))
            .map_err(io_error(&dir))?;
        snapshot::refold(&tmp, closed).map_err(io_error(&tmp))?;
        let path = self.snapshot_path();
        // The stamps first: the snapshot in service always finds its own.
        let stamps_path = stamps::path_of(&path);
        if p.stamps.is_some() {
            std::fs::rename(&stamps_tmp, &stamps_path).map_err(io_error(&stamps_path))?;
        } else if let Err(e) = std::fs::remove_file(&stamps_path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(io_error(&stamps_path)(e));
        }
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
        positions::write_snapshot_marker(&dir, &p.hash).map_err(io_error(&dir))?;
        drop(lock);
        self.refresh_knowing(Some((binding, kept)))?;
        Ok(sent)
    }

    /// Copies the snapshot `p` names from `shared` to `tmp` and its stamps file to
    /// `stamps_tmp`, checks both hashes, the snapshot's format and secret, and that the
    /// stamps are the snapshot's; returns the stamps and the snapshot they belong to.
    fn fetch(
        &self,
        shared: &Path,
        p: &Published,
        tmp: &Path,
        stamps_tmp: &Path,
    ) -> Result<(stamps::Binding, stamps::Folded), ListsError> {
        copy_checked(shared, &p.hash, "snapshot", tmp)?;
        let s = Snapshot::open(tmp, self.secret().id())?;
        s.verify()?;
        let binding = stamps::Binding::of(&s);
        let Some(hash) = &p.stamps else {
            return Ok((binding, stamps::Folded::none_for(&s)));
        };
        let file = copy_checked(shared, hash, "stamps", stamps_tmp)?;
        match stamps::read(stamps_tmp, binding) {
            Ok(Some(f)) => Ok((binding, f)),
            Ok(None) => Err(io_error(&file)(invalid(
                "the stamps file belongs to another snapshot",
            ))),
            Err(e) => Err(io_error(&file)(e)),
        }
    }
}

/// Copies `shared/HASH.EXT` to `to`, checking its BLAKE3 is `hash`; returns its path.
fn copy_checked(shared: &Path, hash: &str, ext: &str, to: &Path) -> Result<PathBuf, ListsError> {
    let file = shared.join(format!("{hash}.{ext}"));
    // The name comes from Redis: a hash, never a path.
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(io_error(&file)(invalid(
            "the cluster's record names no hash",
        )));
    }
    let got = copy_hashing(&file, to).map_err(io_error(&file))?;
    if got != hash {
        return Err(io_error(&file)(invalid(&format!(
            "its BLAKE3 is {got}, the cluster recorded {hash}"
        ))));
    }
    Ok(file)
}

/// Copies `from` into `shared` as `HASH.EXT` (HASH its BLAKE3; under a temporary name
/// until whole and accepted by `accept`, which sees the copy); its hash, or `None` when
/// there is no such file or `accept` refused it.
fn copy_in(
    from: &Path,
    shared: &Path,
    ext: &str,
    accept: impl FnOnce(&Path) -> bool,
) -> Result<Option<String>, ListsError> {
    let tmp = shared.join(format!(".{}.tmp", rand::random::<u64>()));
    let hash = match copy_hashing(from, &tmp) {
        Ok(h) if accept(&tmp) => h,
        Ok(_) => {
            let _ = std::fs::remove_file(&tmp);
            return Ok(None);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_error(&tmp)(e));
        }
    };
    let path = shared.join(format!("{hash}.{ext}"));
    std::fs::rename(&tmp, &path).map_err(io_error(&path))?;
    Ok(Some(hash))
}

/// This node's changes in the journals from `from` up to `closed` (those not sent yet),
/// each kept for the tag bits the feed's rule keeps against the stamps `kept`.
fn unsent(
    dir: &Path,
    from: Sent,
    closed: u64,
    kept: &stamps::Folded,
) -> std::io::Result<Vec<Change>> {
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
            let tags = kept_tags(&c, kept.stamps.get(&c.fp), kept.horizon);
            if tags != 0 {
                out.push(Change { tags, ..c });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
