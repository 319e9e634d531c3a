//! Compaction: folding the journal (and imported lists) into a new snapshot.
//!
//! Under `compile.lock` (one compiler at a time, in any process): start a new journal so
//! appends go on elsewhere, read the snapshot on disk and the closed journals after it,
//! apply the journal changes in order and then the imported batches, merge everything in
//! one sorted pass, write the new snapshot (temp file, fsync, rename) and delete the folded
//! journals. Running relays notice the new file at their next refresh and swap it in.
//!
//! A directory that had a snapshot never compiles without it (its entries would be gone):
//! a missing or older snapshot is an error unless the lists were opened to rebuild
//! ([`super::Mode::Rebuild`]), which starts from the journal and the imports alone.

use std::path::Path;
use std::time::{Duration, Instant};

use super::snapshot::{self, Snapshot};
use super::{FpMap, Lists, ListsError, Mode, hlc, io_error, journal, stamps};

/// Imported entries: fingerprints that get `tags` added.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub fps: Vec<u64>,
    pub tags: u8,
}

#[derive(Debug, Clone)]
pub struct CompileReport {
    pub entries: u64,
    pub bytes: u64,
    /// Journal records folded in.
    pub journal_changes: u64,
    /// Imported fingerprints that were not in force before.
    pub imported_new: u64,
    pub elapsed: Duration,
}

impl Lists {
    /// Folds every journal and `batches` into a new snapshot and puts it in service here.
    pub fn compile(&self, mut batches: Vec<Batch>) -> Result<CompileReport, ListsError> {
        let started = Instant::now();
        let dir = self.dir();
        let lock = compile_lock(dir)?;

        let path = self.snapshot_path();
        let rebuild = self.mode() == Mode::Rebuild;
        let base = self.base_snapshot(&path, rebuild)?;
        let mut kept = base
            .as_ref()
            .map_or_else(stamps::Folded::default, |s| stamps::folded_for(s, &path));
        let closed = journal::roll(dir).map_err(io_error(dir))?;
        let (changed, journal_changes, folded) =
            changes_since(dir, base.as_ref(), closed, &mut kept)?;
        let (fps, tags, imported_new) = merge(base.as_ref(), &changed, &mut batches);
        drop(batches);
        // The stamps first: a snapshot in service always finds its own (see [`stamps`]).
        let created_ms = crate::envelope::now_ms();
        kept.trim(
            hlc::Hlc::floor_of(created_ms.saturating_sub(stamps::KEEP_MS)),
            stamps::MAX_RECORDS,
        );
        let binding = stamps::Binding {
            created_ms,
            entries: fps.len() as u64,
        };
        let stamps_path = stamps::path_of(&path);
        stamps::write(&stamps_path, binding, &kept).map_err(io_error(&stamps_path))?;
        let written = snapshot::write(
            &path,
            self.secret().id(),
            closed,
            self.bits_per_key(),
            created_ms,
            &fps,
            &tags,
        )?;
        drop(base);
        // Before the journals go: from now on this directory has a snapshot folding them.
        super::record_expected(dir, closed)?;
        let floor = self
            .journal_floor
            .load(std::sync::atomic::Ordering::Relaxed)
            .min(super::positions::unsent_floor(dir));
        for n in folded.into_iter().filter(|&n| n < floor) {
            let p = journal::path_of(dir, n);
            if let Err(e) = std::fs::remove_file(&p)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(io_error(&p)(e));
            }
        }
        drop(lock);
        self.refresh_knowing(Some((binding, kept)))?;
        Ok(CompileReport {
            entries: written.entries,
            bytes: written.bytes,
            journal_changes,
            imported_new,
            elapsed: started.elapsed(),
        })
    }

    /// The snapshot the compilation starts from: none when rebuilding (or there is none
    /// yet), else the one on disk, verified and no older than the journals say it must be.
    fn base_snapshot(&self, path: &Path, rebuild: bool) -> Result<Option<Snapshot>, ListsError> {
        let expected = super::expected_folded(self.dir())?;
        if rebuild {
            if path.exists() || expected.is_some() {
                tracing::warn!(path = %path.display(), "rebuilding the lists snapshot from the journal and the imports alone");
            }
            Ok(None)
        } else if path.exists() {
            let s = Snapshot::open(path, self.secret().id())?;
            s.verify()?;
            if let Some(expected) = expected
                && s.folded() < expected
            {
                return Err(ListsError::SnapshotOlder {
                    path: path.to_path_buf(),
                    found: s.folded(),
                    expected,
                });
            }
            Ok(Some(s))
        } else if let Some(folded) = expected {
            Err(ListsError::SnapshotMissing {
                path: path.to_path_buf(),
                folded,
            })
        } else {
            Ok(None)
        }
    }
}

/// Journal changes as (fingerprint, absolute value), how many were read, and the journals
/// they came from.
type Changes = (Vec<(u64, u8)>, u64, Vec<u64>);

/// Takes `compile.lock` (one compiler at a time, in any process): held until dropped.
pub(super) fn compile_lock(dir: &Path) -> Result<std::fs::File, ListsError> {
    let lock_path = dir.join("compile.lock");
    let lock = crate::files::options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(io_error(&lock_path))?;
    lock.lock().map_err(io_error(&lock_path))?;
    Ok(lock)
}

/// The journal changes not yet in `base` up to journal `closed`, as absolute values in
/// fingerprint order (their stamps added to `kept`); how many changes were read; the
/// journals that fold into the new snapshot.
fn changes_since(
    dir: &Path,
    base: Option<&Snapshot>,
    closed: u64,
    kept: &mut stamps::Folded,
) -> Result<Changes, ListsError> {
    let base_get = |fp| base.map_or(0, |s| s.get(fp));

    // Journal changes, as absolute values, in journal order.
    let mut changed: FpMap<u8> = FpMap::default();
    let mut journal_changes = 0u64;
    let folded_before = base.map_or(0, Snapshot::folded);
    let numbers = journal::list(dir).map_err(io_error(dir))?;
    let folded: Vec<u64> = numbers.into_iter().filter(|&n| n <= closed).collect();
    for &n in folded.iter().filter(|&&n| n > folded_before) {
        let read = journal::read_from(dir, n, 0).map_err(io_error(&journal::path_of(dir, n)))?;
        if read.damaged > 0 {
            tracing::error!(
                journal = %journal::path_of(dir, n).display(),
                records = read.damaged,
                "damaged journal records skipped while compiling"
            );
        }
        for c in read.changes {
            journal_changes += 1;
            if c.stamp != 0 {
                kept.add(c.fp, c.tags, c.stamp);
            }
            let current = changed
                .get(&c.fp)
                .copied()
                .unwrap_or_else(|| base_get(c.fp));
            changed.insert(c.fp, c.apply(current));
        }
    }
    let mut changed: Vec<(u64, u8)> = changed.into_iter().collect();
    changed.sort_unstable_by_key(|&(fp, _)| fp);
    Ok((changed, journal_changes, folded))
}

/// Merges the base snapshot, the journal changes (which win over it) and the imported
/// batches (whose tags are added) into the new snapshot's sorted fingerprints and tags;
/// also returns how many imported fingerprints were not in force before.
fn merge(
    base: Option<&Snapshot>,
    changed: &[(u64, u8)],
    batches: &mut [Batch],
) -> (Vec<u64>, Vec<u8>, u64) {
    for b in batches.iter_mut() {
        b.fps.sort_unstable();
        b.fps.dedup();
    }

    let capacity = base.map_or(0, |s| s.len() as usize)
        + changed.len()
        + batches.iter().map(|b| b.fps.len()).sum::<usize>();
    let mut fps = Vec::with_capacity(capacity);
    let mut tags = Vec::with_capacity(capacity);
    let mut imported_new = 0u64;
    {
        let mut old = base.iter().flat_map(|s| s.entries()).peekable();
        let mut upd = changed.iter().copied().peekable();
        let mut imports: Vec<_> = batches
            .iter()
            .map(|b| (b.tags, b.fps.iter().copied().peekable()))
            .collect();
        loop {
            let mut next = u64::MAX;
            let mut any = false;
            let heads = old
                .peek()
                .map(|e| e.0)
                .into_iter()
                .chain(upd.peek().map(|e| e.0))
                .chain(imports.iter_mut().filter_map(|(_, it)| it.peek().copied()));
            for h in heads {
                any = true;
                next = next.min(h);
            }
            if !any {
                break;
            }
            let mut value = 0;
            if old.peek().is_some_and(|e| e.0 == next) {
                value = old.next().expect("peeked").1;
            }
            if upd.peek().is_some_and(|e| e.0 == next) {
                value = upd.next().expect("peeked").1;
            }
            let before = value;
            for (t, it) in &mut imports {
                if it.peek() == Some(&next) {
                    it.next();
                    value |= *t;
                }
            }
            if value != before {
                imported_new += 1;
            }
            if value != 0 {
                fps.push(next);
                tags.push(value);
            }
        }
    }
    (fps, tags, imported_new)
}
