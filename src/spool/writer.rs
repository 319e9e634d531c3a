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
//! A full disk is a temporary state, never a stuck one: a failed write is cut off the
//! segment again (so it leaves no torn record and gives its space back), a segment whose
//! creation failed is removed (so the next attempt can create it once space returns), and
//! recipient-state records that could not be written are kept and written with the next
//! ones.
//!
//! The writer runs as a blocking task started on demand ([`WriterTask`]): the first command
//! starts it, and after `LINGER` without work it syncs the recipient journals and stops.
//! Under load it never stops. Running on tokio's blocking pool (rather than a thread of its
//! own) also tells a test runtime with paused time that I/O is in progress, so virtual time
//! does not jump ahead while a write is pending.

use std::collections::{HashMap, HashSet};
use std::fs::File;
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
/// Recipient-state records kept in memory while they cannot be written (a full disk); past
/// this, the oldest are dropped (their recipients would only be tried again after a restart).
const MAX_PENDING_RCPT: usize = 16 << 20;
/// Segment ids tried when files with the next ids exist already (left by something else).
const MAX_ID_SKIPS: u64 = 64;

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

/// An open recipient-state journal and how much of it is whole records.
struct RcptFile {
    file: File,
    len: u64,
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
    rcpt_files: HashMap<u64, RcptFile>,
    rcpt_unsynced: HashSet<u64>,
    /// Recipient-state records not written yet because writing failed, per segment.
    rcpt_pending: HashMap<u64, Vec<u8>>,
    rcpt_pending_bytes: usize,
    /// Writing recipient state is failing (logged once per episode).
    rcpt_failing: bool,
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
            rcpt_pending: HashMap::new(),
            rcpt_pending_bytes: 0,
            rcpt_failing: false,
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
                // Cut the batch off again: no torn record is left behind, and whatever of
                // it reached the disk gives its space back.
                let cut = active.file.set_len(active.size);
                tracing::error!(segment = active.id, error = %e, cut_off = cut.is_ok(), "spool write failed; sealing the segment");
                self.buf.clear();
                self.seal_active();
                Err(Arc::new(e))
            }
        }
    }

    /// Makes sure there is a segment to append to, creating the next one if needed. A
    /// creation that fails half-way removes its file again, so the next attempt (once the
    /// disk has room) is not stopped by it.
    pub(super) fn ensure_active(&mut self) -> std::io::Result<()> {
        if self.active.is_some() {
            return Ok(());
        }
        let mut skips = 0;
        let (id, file) = loop {
            let id = self.next_segment;
            let path = segment_path(&self.dir, id);
            match self.create_segment(&path) {
                Ok(file) => break (id, file),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && skips < MAX_ID_SKIPS => {
                    // Not ours (we number past every segment found at start, and remove
                    // our own failed ones): leave it for recovery and take the next id.
                    tracing::warn!(path = %path.display(), "a spool segment file exists already; using the next number");
                    self.next_segment += 1;
                    skips += 1;
                }
                Err(e) => return Err(e),
            }
        };
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

    /// Creates a segment file with its header (0600), synced with its directory when
    /// `fsync` is on; removes the file again if anything after its creation fails.
    fn create_segment(&self, path: &Path) -> std::io::Result<File> {
        let mut file = crate::files::options()
            .create_new(true)
            .append(true)
            .open(path)?;
        let written = file.write_all(&format::segment_header()).and_then(|()| {
            if self.fsync {
                file.sync_all()?;
                crate::files::sync_dir(&self.dir)?;
            }
            Ok(())
        });
        if let Err(e) = written {
            drop(file);
            if let Err(rm) = std::fs::remove_file(path) {
                tracing::error!(path = %path.display(), error = %rm, "cannot remove a spool segment whose creation failed");
            }
            return Err(e);
        }
        Ok(file)
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
        if let Some(pending) = self.rcpt_pending.remove(&segment) {
            self.rcpt_pending_bytes -= pending.len();
        }
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

    /// Appends recipient-state records to a segment's journal. What cannot be written (a
    /// full disk) is kept, in order, and written before the next records of that segment.
    fn write_records(&mut self, segment: u64, bytes: &[u8]) {
        if !self.live.contains_key(&segment) {
            return; // already finished and deleted
        }
        let mut data = match self.rcpt_pending.remove(&segment) {
            Some(pending) => {
                self.rcpt_pending_bytes -= pending.len();
                pending
            }
            None => Vec::new(),
        };
        data.extend_from_slice(bytes);
        match self.append_rcpt(segment, &data) {
            Ok(()) => {
                if self.rcpt_failing && self.rcpt_pending.is_empty() {
                    self.rcpt_failing = false;
                    tracing::info!("recipient-state journals are written again");
                }
                self.rcpt_unsynced.insert(segment);
                self.grow(segment, data.len() as u64);
            }
            Err(e) => {
                if !self.rcpt_failing {
                    self.rcpt_failing = true;
                    tracing::error!(segment, error = %e, "cannot write recipient state; kept in memory and written once the disk allows");
                }
                self.keep_pending(segment, data);
            }
        }
    }

    /// Keeps unwritten recipient-state records, within [`MAX_PENDING_RCPT`].
    fn keep_pending(&mut self, segment: u64, mut data: Vec<u8>) {
        let room = MAX_PENDING_RCPT.saturating_sub(self.rcpt_pending_bytes);
        if data.len() > room {
            let drop = (data.len() - room).next_multiple_of(format::RCPT_RECORD_LEN);
            let drop = drop.min(data.len());
            tracing::error!(
                segment,
                records = drop / format::RCPT_RECORD_LEN,
                "recipient state dropped (the disk is still full); those recipients are tried again after a restart"
            );
            data.drain(..drop);
        }
        if !data.is_empty() {
            self.rcpt_pending_bytes += data.len();
            self.rcpt_pending.insert(segment, data);
        }
    }

    /// Writes `data` at the end of the segment's journal, or nothing: a write that fails
    /// half-way is cut off again, so the records after it stay aligned.
    fn append_rcpt(&mut self, segment: u64, data: &[u8]) -> std::io::Result<()> {
        let journal = match self.rcpt_files.entry(segment) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let file = crate::files::options()
                    .create(true)
                    .append(true)
                    .open(rcpt_path(&self.dir, segment))?;
                let len = file.metadata()?.len();
                // A torn record a crash left at the end would misalign every later one.
                let whole = len - len % format::RCPT_RECORD_LEN as u64;
                if whole != len {
                    file.set_len(whole)?;
                }
                e.insert(RcptFile { file, len: whole })
            }
        };
        match journal.file.write_all(data) {
            Ok(()) => {
                journal.len += data.len() as u64;
                Ok(())
            }
            Err(e) => {
                let _ = journal.file.set_len(journal.len);
                Err(e)
            }
        }
    }

    /// Tries again to write recipient state kept after a failure.
    fn retry_pending(&mut self) {
        let segments: Vec<u64> = self.rcpt_pending.keys().copied().collect();
        for segment in segments {
            self.write_records(segment, &[]);
        }
    }

    fn sync_rcpt_files(&mut self) {
        self.last_rcpt_sync = Instant::now();
        if !self.rcpt_pending.is_empty() {
            self.retry_pending();
        }
        if !self.fsync {
            self.rcpt_unsynced.clear();
            return;
        }
        for segment in self.rcpt_unsynced.drain() {
            if let Some(f) = self.rcpt_files.get(&segment)
                && let Err(e) = f.file.sync_data()
            {
                tracing::warn!(segment, error = %e, "cannot sync recipient journal");
            }
        }
    }
}
