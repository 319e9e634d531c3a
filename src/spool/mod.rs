//! The durable spool: accepted messages and their per-recipient delivery state.
//!
//! Layout under `[spool] path`: `queue/` holds append-only segments (`{id}.msg`, message
//! records) and their recipient-state journals (`{id}.rcpt`); `quarantine/` receives damaged
//! bytes found at start-up; `lock` keeps a second relay off the same spool.
//!
//! Durability contract: [`Spool::store`] returns only after the record is on stable storage
//! (`fdatasync`; the directory is synced when a segment is created). One writer does all
//! writes and commits whatever arrived while the previous sync ran as one batch (group
//! commit), so many sessions share each fsync. Recipient-state records are written at once
//! and synced at most once a second and whenever the writer goes idle: a `kill -9` loses nothing the kernel has, and a power
//! loss can only make a finished recipient look pending — delivered again, never dropped.
//! A segment is deleted when its last message is done. Nothing here decides anything about
//! delivery; see [`crate::delivery`].
//!
//! Memory: the spool keeps no message bodies in RAM; [`Spool::read`] fetches one with a
//! single positioned read and checks its CRC. A record that no longer verifies when it is
//! read back is copied to `quarantine/` (once) and reported as [`SpoolError::Damaged`],
//! with its envelope when that part still verifies: it will never read, so the caller must
//! not retry it (delivery returns it to its sender, see `delivery/unreadable.rs`).
//!
//! Files and directories are private (0600 and 0700, see [`crate::files`]): they
//! hold messages and addresses.

pub mod format;
mod recover;
mod scrub;
mod writer;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::config::SpoolConfig;
use crate::envelope::{Envelope, QueueId, now_ms};

type Readers = Arc<Mutex<HashMap<u64, Arc<File>>>>;
pub use format::RcptEvent;
pub use recover::{RecoveredMessage, RecoveryReport};
pub use scrub::{Redactor, ScrubReport, blank};

/// Where a message record lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Location {
    pub segment: u64,
    pub offset: u64,
    /// Whole record length (header, envelope, body).
    pub len: u64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("spool {0} is in use by another optin-relay process")]
    Locked(PathBuf),
    #[error("writing the spool failed: {0}")]
    Write(Arc<std::io::Error>),
    #[error("the spool writer has stopped")]
    Closed,
    #[error("message {id} in segment {segment:016x}: {reason}")]
    Read {
        id: String,
        segment: u64,
        reason: String,
    },
    /// The record no longer verifies, or its segment is gone: it will never read.
    #[error("message at offset {offset} in segment {segment:016x} is damaged: {reason}")]
    Damaged {
        segment: u64,
        offset: u64,
        reason: String,
        /// The envelope, when that part of the record still verifies.
        envelope: Option<Box<Envelope>>,
    },
}

impl SpoolError {
    fn open(path: &Path, e: impl std::fmt::Display) -> SpoolError {
        SpoolError::Open {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    }

    /// Damage that no retry can mend (as opposed to an I/O error that may pass).
    pub fn is_damage(&self) -> bool {
        matches!(self, SpoolError::Damaged { .. })
    }
}

/// Counters of the writer, for metrics and tests.
#[derive(Debug, Default)]
pub struct SpoolStats {
    /// Messages stored.
    pub stored: AtomicU64,
    /// Batches committed (one write + one fdatasync each).
    pub commits: AtomicU64,
    /// Bytes of the queue files: segments and their recipient journals.
    pub bytes: AtomicU64,
    /// Segments on disk.
    pub segments: AtomicU64,
}

impl SpoolStats {
    fn record_commit(&self, took: std::time::Duration) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        crate::metrics::spool_commit(took);
    }

    /// The queue files now take `bytes` in `segments` segments.
    fn record_size(&self, bytes: u64, segments: u64) {
        self.bytes.store(bytes, Ordering::Relaxed);
        self.segments.store(segments, Ordering::Relaxed);
        crate::metrics::spool_size(bytes, segments);
    }
}

/// Handle to the spool; cheap to clone, shared by sessions and delivery.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

struct Inner {
    queue_dir: PathBuf,
    quarantine_dir: PathBuf,
    tx: std::sync::mpsc::Sender<writer::Cmd>,
    /// Last id handed out; ids are `unix_ms << 20 | sequence`, monotonic even if the clock
    /// steps back, and seeded past every id found at recovery.
    last_id: AtomicU64,
    /// Open segment files for reading, shared with the writer, which drops a segment's
    /// handle when it deletes the segment (an open handle would keep its disk space).
    readers: Readers,
    stats: Arc<SpoolStats>,
    writer: Arc<writer::WriterTask>,
    /// Taken shared by every read of a record and exclusively by a scrub rewriting one in
    /// place (`scrub.rs`), so a reader never sees a record half rewritten.
    records: std::sync::RwLock<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel lets the writer finish what is queued; then it syncs.
        let (tx, _) = std::sync::mpsc::channel();
        drop(std::mem::replace(&mut self.tx, tx));
        self.writer.close();
    }
}

impl Spool {
    /// Opens (creating if needed) and recovers the spool: damaged bytes are quarantined,
    /// finished segments removed, and the messages still to deliver returned.
    pub fn open(config: &SpoolConfig) -> Result<(Spool, RecoveryReport), SpoolError> {
        let root = &config.path;
        let queue_dir = root.join("queue");
        let quarantine = root.join("quarantine");
        for dir in [root, &queue_dir, &quarantine] {
            crate::files::private_dir(dir).map_err(|e| SpoolError::open(dir, e))?;
        }
        let lock_path = root.join("lock");
        let lock = crate::files::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| SpoolError::open(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(SpoolError::Locked(root.clone())),
            Err(std::fs::TryLockError::Error(e)) => return Err(SpoolError::open(&lock_path, e)),
        }
        let scan = recover::scan(&queue_dir, Some(&quarantine))?;
        let readers = Readers::default();
        let stats = Arc::new(SpoolStats::default());
        let mut w = writer::Writer::new(
            queue_dir.clone(),
            config.fsync,
            config.segment_size,
            scan.next_segment,
            lock,
            readers.clone(),
            stats.clone(),
        );
        let report = recover::repair(scan, &mut w)?;
        let (tx, rx) = std::sync::mpsc::channel();
        let writer = writer::WriterTask::new(w, rx);
        let spool = Spool {
            inner: Arc::new(Inner {
                queue_dir,
                quarantine_dir: quarantine,
                tx,
                last_id: AtomicU64::new(report.max_id),
                readers,
                stats,
                writer,
                records: std::sync::RwLock::new(()),
            }),
        };
        Ok((spool, report))
    }

    /// Reads a spool without locking or changing it (for `queue list` beside a running relay).
    pub fn inspect(path: &Path) -> Result<Vec<RecoveredMessage>, SpoolError> {
        let queue_dir = path.join("queue");
        if !queue_dir.is_dir() {
            return Err(SpoolError::open(&queue_dir, "no spool here"));
        }
        Ok(recover::scan(&queue_dir, None)?.live_messages())
    }

    /// A message's content read from a spool without locking or changing it (for `queue
    /// cat` beside a running relay); a record that does not verify is an error, and is left
    /// where it is.
    pub fn read_content(path: &Path, loc: Location) -> Result<Bytes, SpoolError> {
        use std::os::unix::fs::FileExt;
        let segment = writer::segment_path(&path.join("queue"), loc.segment);
        let err = |e: std::io::Error| read_error(loc, e.to_string());
        let file = File::open(&segment).map_err(err)?;
        let len = usize::try_from(loc.len).map_err(|_| read_error(loc, "too long".into()))?;
        let mut record = vec![0u8; len];
        file.read_exact_at(&mut record, loc.offset).map_err(err)?;
        let record = Bytes::from(record);
        match format::decode_record(&record) {
            Ok((_, body)) => Ok(record.slice_ref(body)),
            Err(e) => Err(SpoolError::Damaged {
                segment: loc.segment,
                offset: loc.offset,
                reason: e.to_string(),
                envelope: None,
            }),
        }
    }

    /// The damaged pieces kept in a spool's `quarantine/` (for `queue list`).
    pub fn quarantined(path: &Path) -> usize {
        std::fs::read_dir(path.join("quarantine")).map_or(0, |d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".bad"))
            })
            .count()
        })
    }

    pub fn stats(&self) -> &SpoolStats {
        &self.inner.stats
    }

    /// A fresh message id.
    pub fn next_id(&self) -> QueueId {
        let floor = now_ms() << 20;
        let prev = self
            .inner
            .last_id
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                Some(floor.max(last + 1))
            })
            .expect("the closure always returns Some");
        QueueId(floor.max(prev + 1))
    }

    /// Stores a message durably; returns once it is on stable storage.
    pub async fn store(&self, envelope: &Envelope, body: Bytes) -> Result<Location, SpoolError> {
        let head = format::encode_record_head(envelope, &body);
        let (done, wait) = tokio::sync::oneshot::channel();
        self.inner.send(writer::Cmd::Store { head, body, done })?;
        wait.await.map_err(|_| SpoolError::Closed)?
    }

    /// Records what happened to one recipient (not waited for; see the module doc).
    pub fn record(&self, loc: Location, rcpt: u32, event: RcptEvent) {
        let record = format::RcptRecord {
            offset: loc.offset,
            rcpt,
            event,
        };
        let _ = self.inner.send(writer::Cmd::Record {
            segment: loc.segment,
            record,
        });
    }

    /// The message at `loc` is done with; its segment goes when all its messages have.
    pub fn finish(&self, loc: Location) {
        let _ = self.inner.send(writer::Cmd::Finish {
            segment: loc.segment,
        });
    }

    /// Waits until everything sent so far is written and synced (used at shutdown and by
    /// tests that inspect the files).
    pub async fn flush(&self) -> Result<(), SpoolError> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.inner.send(writer::Cmd::Flush { done })?;
        wait.await.map_err(|_| SpoolError::Closed)
    }

    /// Reads a message's content back, checking its checksums.
    pub async fn read(&self, loc: Location) -> Result<Bytes, SpoolError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.read_blocking(loc))
            .await
            .map_err(|_| SpoolError::Closed)?
    }
}

impl Spool {
    /// Reads a message's envelope and content back, checking its checksums.
    pub async fn read_message(&self, loc: Location) -> Result<(Envelope, Bytes), SpoolError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.read_message_blocking(loc))
            .await
            .map_err(|_| SpoolError::Closed)?
    }
}

impl Inner {
    fn send(&self, cmd: writer::Cmd) -> Result<(), SpoolError> {
        self.tx.send(cmd).map_err(|_| SpoolError::Closed)?;
        self.writer.kick();
        Ok(())
    }

    fn read_blocking(&self, loc: Location) -> Result<Bytes, SpoolError> {
        let record = self.read_record(loc)?;
        match format::record_body(&record) {
            Ok(body) => Ok(Bytes::from(record).slice(body)),
            Err(e) => Err(self.damaged(loc, &record, &e)),
        }
    }

    fn read_message_blocking(&self, loc: Location) -> Result<(Envelope, Bytes), SpoolError> {
        let record = Bytes::from(self.read_record(loc)?);
        match format::decode_record(&record) {
            Ok((envelope, body)) => {
                let body = record.slice_ref(body);
                Ok((envelope, body))
            }
            Err(e) => Err(self.damaged(loc, &record, &e)),
        }
    }

    /// A record read back that does not verify: copied to quarantine (once: later reads of
    /// it find the copy there), and the error, with the envelope when it still verifies.
    fn damaged(&self, loc: Location, record: &[u8], e: &format::FormatError) -> SpoolError {
        match recover::save(&self.quarantine_dir, loc.segment, loc.offset, record) {
            Ok(saved) if saved.new => {
                crate::metrics::spool_quarantined();
                tracing::error!(
                    segment = format!("{:016x}", loc.segment),
                    offset = loc.offset,
                    octets = record.len(),
                    reason = %e,
                    saved_as = %saved.path.display(),
                    "damaged message read back from the spool; copied to quarantine"
                );
            }
            Ok(_) => {}
            Err(err) => tracing::error!(
                segment = format!("{:016x}", loc.segment),
                offset = loc.offset,
                reason = %e,
                error = %err,
                "damaged message read back from the spool; it could not be copied to quarantine"
            ),
        }
        SpoolError::Damaged {
            segment: loc.segment,
            offset: loc.offset,
            reason: e.to_string(),
            envelope: format::salvage_envelope(record).map(Box::new),
        }
    }

    fn read_record(&self, loc: Location) -> Result<Vec<u8>, SpoolError> {
        use std::os::unix::fs::FileExt;
        let err = |e: std::io::Error| match e.kind() {
            // The segment is gone or shorter than the record: nothing will bring it back.
            std::io::ErrorKind::NotFound | std::io::ErrorKind::UnexpectedEof => {
                SpoolError::Damaged {
                    segment: loc.segment,
                    offset: loc.offset,
                    reason: e.to_string(),
                    envelope: None,
                }
            }
            _ => read_error(loc, e.to_string()),
        };
        let file = {
            let mut readers = self.readers.lock().expect("reader cache lock");
            match readers.get(&loc.segment) {
                Some(f) => f.clone(),
                None => {
                    let path = writer::segment_path(&self.queue_dir, loc.segment);
                    let f = Arc::new(File::open(&path).map_err(err)?);
                    // Keep a handful of segments open; old ones are rarely read again.
                    if readers.len() >= 64 {
                        readers.clear();
                    }
                    readers.insert(loc.segment, f.clone());
                    f
                }
            }
        };
        let mut record = vec![0u8; loc.len as usize];
        let _reading = self.records.read().unwrap_or_else(|e| e.into_inner());
        file.read_exact_at(&mut record, loc.offset).map_err(err)?;
        Ok(record)
    }
}

fn read_error(loc: Location, reason: String) -> SpoolError {
    SpoolError::Read {
        id: format!("at offset {}", loc.offset),
        segment: loc.segment,
        reason,
    }
}

#[cfg(test)]
mod tests;
