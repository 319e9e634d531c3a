//! The spool's single writer: appends message records with group commit, journals
//! recipient state, and deletes finished segments.
//!
//! Each loop takes everything queued (up to a bound) as one batch: all new records are
//! appended to the active segment with one `write`, then one `fdatasync` makes the whole
//! batch durable and every waiting session gets its answer. Segments rotate between batches
//! once they pass the configured size. After a failed write or sync the segment is sealed
//! and never written again (retrying fsync on the same file can report success for data
//! the kernel already dropped); the batch's stores fail with a temporary error.
//!
//! The writer runs as a blocking task started on demand ([`WriterTask`]): the first command
//! starts it, and after `LINGER` without work it syncs the recipient journals and stops.
//! Under load it never stops. Running on tokio's blocking pool (rather than a thread of its
//! own) also tells a test runtime with paused time that I/O is in progress, so virtual time
//! does not jump ahead while a write is pending.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::format::{self, RcptRecord};
use super::{Location, Readers, SpoolError, SpoolStats};

/// Most commands taken into one batch.
const MAX_BATCH: usize = 4096;
/// Recipient-state journals are synced at most this often while busy, and whenever the
/// writer goes idle (see the module doc of `spool`).
const RCPT_SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// How long the writer waits for more work before it stops until the next command.
const LINGER: Duration = Duration::from_millis(20);

pub(super) enum Cmd {
    Store {
        head: Vec<u8>,
        body: Bytes,
        done: oneshot::Sender<Result<Location, SpoolError>>,
    },
    Record {
        segment: u64,
        record: RcptRecord,
    },
    Finish {
        segment: u64,
    },
    Flush {
        done: oneshot::Sender<()>,
    },
    /// Asks where committed data ends (answered after the batch it came in is written):
    /// what an in-place scrub may touch (see `scrub.rs`).
    Committed {
        done: oneshot::Sender<Committed>,
    },
}

/// Where the committed (written, and synced when `fsync` is on) part of the queue ends at
/// one moment. Segments below `next_segment` other than the active one are sealed: never
/// written again. Records are only ever appended, so everything below these bounds stays
/// where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Committed {
    /// The segment being appended to and its committed length.
    pub(super) active: Option<(u64, u64)>,
    /// Segments with this id or above did not exist yet.
    pub(super) next_segment: u64,
}

/// The writer and its command queue, run on demand on tokio's blocking pool.
pub(super) struct WriterTask {
    state: Mutex<Option<(Writer, Receiver<Cmd>)>>,
    running: AtomicBool,
}

impl WriterTask {
    pub(super) fn new(writer: Writer, rx: Receiver<Cmd>) -> Arc<WriterTask> {
        Arc::new(WriterTask {
            state: Mutex::new(Some((writer, rx))),
            running: AtomicBool::new(false),
        })
    }

    /// Makes sure the writer is running; called after each command is queued.
    pub(super) fn kick(self: &Arc<Self>) {
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let task = self.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(move || task.run());
            }
            Err(_) => {
                std::thread::spawn(move || task.run());
            }
        }
    }

    fn run(&self) {
        let mut state = self.state.lock().expect("writer lock");
        let Some((writer, rx)) = state.as_mut() else {
            self.running.store(false, Ordering::Release);
            return; // closed
        };
        let mut first = None;
        loop {
            writer.run_burst(rx, first.take());
            self.running.store(false, Ordering::Release);
            // A command queued just before `running` was cleared started no runner: take it.
            match rx.try_recv() {
                Ok(cmd) => {
                    self.running.store(true, Ordering::Release);
                    first = Some(cmd);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => {
                    writer.sync_rcpt_files();
                    return;
                }
            }
        }
    }

    /// Writes whatever is still queued and syncs; called when the spool is dropped, after
    /// every sender is gone.
    pub(super) fn close(&self) {
        let mut state = self.state.lock().expect("writer lock");
        if let Some((mut writer, rx)) = state.take() {
            writer.run_burst(&rx, None);
            writer.sync_rcpt_files();
        }
    }
}

pub(super) fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.msg"))
}

pub(super) fn rcpt_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.rcpt"))
}

struct Active {
    id: u64,
    file: File,
    /// Octets written so far, including the file header.
    size: u64,
}

pub(super) struct Writer {
    dir: PathBuf,
    fsync: bool,
    segment_size: u64,
    next_segment: u64,
    active: Option<Active>,
    /// Messages not yet finished, per segment.
    live: HashMap<u64, u64>,
    rcpt_files: HashMap<u64, File>,
    rcpt_unsynced: HashSet<u64>,
    last_rcpt_sync: Instant,
    readers: Readers,
    stats: Arc<SpoolStats>,
    /// Bytes on disk per segment (its `.msg` and `.rcpt`), and their sum, for the metrics.
    disk: HashMap<u64, u64>,
    disk_total: u64,
    /// Held for the writer's lifetime: the spool's exclusive lock.
    _lock: File,
    buf: Vec<u8>,
}

impl Writer {
    pub(super) fn new(
        dir: PathBuf,
        fsync: bool,
        segment_size: u64,
        next_segment: u64,
        lock: File,
        readers: Readers,
        stats: Arc<SpoolStats>,
    ) -> Writer {
        Writer {
            dir,
            fsync,
            segment_size,
            next_segment,
            active: None,
            live: HashMap::new(),
            rcpt_files: HashMap::new(),
            rcpt_unsynced: HashSet::new(),
            last_rcpt_sync: Instant::now(),
            readers,
            stats,
            disk: HashMap::new(),
            disk_total: 0,
            _lock: lock,
            buf: Vec::with_capacity(1 << 20),
        }
    }

    /// Registers a segment found at recovery with its number of unfinished messages.
    pub(super) fn adopt(&mut self, segment: u64, live: u64) {
        self.live.insert(segment, live);
        let len = |p: PathBuf| std::fs::metadata(p).map_or(0, |m| m.len());
        let bytes = len(segment_path(&self.dir, segment)) + len(rcpt_path(&self.dir, segment));
        self.grow(segment, bytes);
    }

    /// `bytes` more of `segment` are on disk.
    fn grow(&mut self, segment: u64, bytes: u64) {
        *self.disk.entry(segment).or_insert(0) += bytes;
        self.disk_total += bytes;
        self.stats
            .record_size(self.disk_total, self.disk.len() as u64);
    }

    /// Processes commands until none came for `LINGER` (returns false) or every sender is
    /// gone and the queue is empty (returns true).
    fn run_burst(&mut self, rx: &Receiver<Cmd>, mut first: Option<Cmd>) -> bool {
        let mut batch = Vec::with_capacity(64);
        loop {
            let cmd = match first.take() {
                Some(cmd) => cmd,
                None => match rx.recv_timeout(LINGER) {
                    Ok(cmd) => cmd,
                    Err(RecvTimeoutError::Timeout) => return false,
                    Err(RecvTimeoutError::Disconnected) => return true,
                },
            };
            batch.push(cmd);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(cmd) => batch.push(cmd),
                    Err(_) => break,
                }
            }
            self.process(&mut batch);
            if self.last_rcpt_sync.elapsed() >= RCPT_SYNC_INTERVAL {
                self.sync_rcpt_files();
            }
        }
    }

    fn process(&mut self, batch: &mut Vec<Cmd>) {
        if self
            .active
            .as_ref()
            .is_some_and(|a| a.size >= self.segment_size)
        {
            self.seal_active();
        }
        let mut acks = Vec::new();
        let mut flushes = Vec::new();
        let mut committed = Vec::new();
        let mut records: HashMap<u64, Vec<u8>> = HashMap::new();
        let mut finished = Vec::new();
        let mut open_error = None;
        for cmd in batch.drain(..) {
            match cmd {
                Cmd::Store { head, body, done } => {
                    if open_error.is_none()
                        && let Err(e) = self.ensure_active()
                    {
                        tracing::error!(error = %e, "cannot create a spool segment");
                        open_error = Some(Arc::new(e));
                    }
                    if let Some(e) = &open_error {
                        let _ = done.send(Err(SpoolError::Write(e.clone())));
                        continue;
                    }
                    let loc = self.append(&head, &body);
                    acks.push((done, loc));
                    self.stats
                        .stored
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Cmd::Record { segment, record } => {
                    records
                        .entry(segment)
                        .or_default()
                        .extend_from_slice(&record.encode());
                }
                Cmd::Finish { segment } => finished.push(segment),
                Cmd::Flush { done } => flushes.push(done),
                Cmd::Committed { done } => committed.push(done),
            }
        }
        if !acks.is_empty() {
            let result = self.commit();
            if result.is_err() {
                for (_, loc) in &acks {
                    self.release(loc.segment);
                }
            }
            for (done, loc) in acks {
                let _ = done.send(match &result {
                    Ok(()) => Ok(loc),
                    Err(e) => Err(SpoolError::Write(e.clone())),
                });
            }
        }
        for done in committed {
            let _ = done.send(Committed {
                active: self.active.as_ref().map(|a| (a.id, a.size)),
                next_segment: self.next_segment,
            });
        }
        for (segment, bytes) in records {
            self.write_records(segment, &bytes);
        }
        for segment in finished {
            self.release(segment);
        }
        if !flushes.is_empty() {
            self.sync_rcpt_files();
            if let Some(a) = &self.active
                && let Err(e) = a.file.sync_data()
            {
                tracing::error!(error = %e, "spool sync failed");
            }
            for done in flushes {
                let _ = done.send(());
            }
        }
    }

    /// Appends a record to the batch buffer of the active segment.
    pub(super) fn append(&mut self, head: &[u8], body: &[u8]) -> Location {
        let active = self.active.as_ref().expect("ensure_active ran");
        let loc = Location {
            segment: active.id,
            offset: active.size + self.buf.len() as u64,
            len: (head.len() + body.len()) as u64,
        };
        self.buf.extend_from_slice(head);
        self.buf.extend_from_slice(body);
        *self.live.entry(active.id).or_insert(0) += 1;
        loc
    }

    /// Writes and syncs the batch buffer. On failure the segment is sealed.
    pub(super) fn commit(&mut self) -> Result<(), Arc<std::io::Error>> {
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        let started = Instant::now();
        let result = active.file.write_all(&self.buf).and_then(|()| {
            if self.fsync {
                active.file.sync_data()
            } else {
                Ok(())
            }
        });
        match result {
            Ok(()) => {
                let (segment, written) = (active.id, self.buf.len() as u64);
                active.size += written;
                self.buf.clear();
                self.stats.record_commit(started.elapsed());
                self.grow(segment, written);
                Ok(())
            }
            Err(e) => {
                tracing::error!(segment = active.id, error = %e, "spool write failed; sealing the segment");
                self.buf.clear();
                self.seal_active();
                Err(Arc::new(e))
            }
        }
    }

    pub(super) fn ensure_active(&mut self) -> std::io::Result<()> {
        if self.active.is_some() {
            return Ok(());
        }
        let id = self.next_segment;
        let path = segment_path(&self.dir, id);
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        file.write_all(&format::segment_header())?;
        if self.fsync {
            file.sync_all()?;
            File::open(&self.dir)?.sync_all()?;
        }
        self.next_segment += 1;
        self.live.entry(id).or_insert(0);
        self.active = Some(Active {
            id,
            file,
            size: format::SEGMENT_HEADER_LEN as u64,
        });
        self.grow(id, format::SEGMENT_HEADER_LEN as u64);
        Ok(())
    }

    /// Stops appending to the active segment; deletes it if nothing in it is live.
    fn seal_active(&mut self) {
        if let Some(active) = self.active.take()
            && self.live.get(&active.id).copied().unwrap_or(0) == 0
        {
            self.delete_segment(active.id);
        }
    }

    /// One message of `segment` is finished (or its store failed).
    fn release(&mut self, segment: u64) {
        let Some(n) = self.live.get_mut(&segment) else {
            return;
        };
        *n = n.saturating_sub(1);
        let is_active = self.active.as_ref().is_some_and(|a| a.id == segment);
        if *n == 0 && !is_active {
            self.delete_segment(segment);
        }
    }

    pub(super) fn delete_segment(&mut self, segment: u64) {
        self.live.remove(&segment);
        if let Some(bytes) = self.disk.remove(&segment) {
            self.disk_total -= bytes;
            self.stats
                .record_size(self.disk_total, self.disk.len() as u64);
        }
        self.rcpt_files.remove(&segment);
        self.rcpt_unsynced.remove(&segment);
        self.readers
            .lock()
            .expect("reader cache lock")
            .remove(&segment);
        // The .msg goes first: a leftover .rcpt without its segment is removed at recovery.
        for path in [
            segment_path(&self.dir, segment),
            rcpt_path(&self.dir, segment),
        ] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot delete finished spool file")
                }
            }
        }
    }

    fn write_records(&mut self, segment: u64, bytes: &[u8]) {
        if !self.live.contains_key(&segment) {
            return; // already finished and deleted
        }
        let file = match self.rcpt_files.entry(segment) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                match OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(rcpt_path(&self.dir, segment))
                {
                    Ok(f) => e.insert(f),
                    Err(err) => {
                        tracing::error!(segment, error = %err, "cannot open recipient journal");
                        return;
                    }
                }
            }
        };
        if let Err(e) = file.write_all(bytes) {
            tracing::error!(segment, error = %e, "cannot write recipient journal");
            return;
        }
        self.rcpt_unsynced.insert(segment);
        self.grow(segment, bytes.len() as u64);
    }

    fn sync_rcpt_files(&mut self) {
        self.last_rcpt_sync = Instant::now();
        if !self.fsync {
            self.rcpt_unsynced.clear();
            return;
        }
        for segment in self.rcpt_unsynced.drain() {
            if let Some(f) = self.rcpt_files.get(&segment)
                && let Err(e) = f.sync_data()
            {
                tracing::warn!(segment, error = %e, "cannot sync recipient journal");
            }
        }
    }
}
