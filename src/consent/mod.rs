//! The consent and suppression engine: may this account send this list to this address?
//!
//! One set holds every entry, keyed by fingerprint ([`key`]): consents for account+list,
//! suppressions (with their reasons as tag bits) globally, per account or per list. The set
//! is an immutable memory-mapped [`snapshot`] plus the live changes of the [`journal`]
//! since, replayed into an in-memory delta. [`Lists`] serves lookups from both, applies a
//! change at once when it is recorded (the journal write is fsynced first), follows changes
//! other processes append (`optin-relay suppress …`) with [`Lists::refresh`], and folds the
//! journal into a new snapshot with [`Lists::compile`], which is swapped in with `ArcSwap`
//! while lookups go on. A snapshot that fails to open or verify is refused with a clear
//! error and the one in service stays.
//!
//! Files in the lists directory: `secret` (0600), `snapshot`, `journal.NNNNNNNNNN`,
//! `journal.lock`, `compile.lock`. Nothing in them is a plain address.

pub mod compile;
pub mod follow;
pub mod import;
pub mod journal;
pub mod key;
pub mod snapshot;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use arc_swap::ArcSwap;

pub use journal::{Change, Op, Origin};
pub use key::{Kind, NormaliseError, Scope, Secret};
use snapshot::{Snapshot, SnapshotError};

/// Tag bit of a consent entry.
pub const CONSENT: u8 = 1;

/// Why an address is suppressed (one tag bit each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Reason {
    /// The recipient unsubscribed (from a list, or from everything an account sends).
    Unsubscribe,
    /// A hard bounce: the mailbox does not exist or is disabled.
    Bounce,
    /// The recipient reported the mail as spam.
    Complaint,
    /// An operator blocked the address.
    Manual,
    /// The person asked for their data to be erased.
    Erasure,
}

impl Reason {
    pub const ALL: [Reason; 5] = [
        Reason::Erasure,
        Reason::Manual,
        Reason::Complaint,
        Reason::Bounce,
        Reason::Unsubscribe,
    ];

    pub fn bit(self) -> u8 {
        match self {
            Reason::Unsubscribe => 2,
            Reason::Bounce => 4,
            Reason::Complaint => 8,
            Reason::Manual => 16,
            Reason::Erasure => 32,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unsubscribe => "unsubscribe",
            Reason::Bounce => "bounce",
            Reason::Complaint => "complaint",
            Reason::Manual => "manual",
            Reason::Erasure => "erasure",
        }
    }

    /// The reasons whose bits are set in `tags`, most serious first.
    pub fn from_tags(tags: u8) -> impl Iterator<Item = Reason> {
        Reason::ALL.into_iter().filter(move |r| tags & r.bit() != 0)
    }

    /// Everything but an unsubscribe also stops transactional mail.
    pub fn stops_transactional(self) -> bool {
        self != Reason::Unsubscribe
    }
}

/// The bits of every suppression reason.
pub const ALL_REASONS: u8 = 2 | 4 | 8 | 16 | 32;

#[derive(Debug, thiserror::Error)]
pub enum ListsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ListsError + '_ {
    move |source| ListsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// fsyncs a directory, so a file created or renamed in it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Fingerprints are uniform already: hashing them again would only cost time.
#[derive(Default)]
pub struct FpHasher(u64);

impl Hasher for FpHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub type FpMap<V> = HashMap<u64, V, BuildHasherDefault<FpHasher>>;

/// What lookups see: a snapshot and the journal changes since, as absolute tag values.
struct View {
    snapshot: Option<Snapshot>,
    /// Journals up to this number are in the snapshot.
    folded: u64,
    delta: RwLock<FpMap<u8>>,
    /// The snapshot file this view was built from (to notice a new one).
    file: Option<FileId>,
}

impl View {
    fn get(&self, fp: u64) -> u8 {
        if let Some(&t) = self.delta.read().expect("delta lock").get(&fp) {
            return t;
        }
        self.snapshot.as_ref().map_or(0, |s| s.get(fp))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    len: u64,
}

fn file_id(path: &Path) -> std::io::Result<Option<FileId>> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(FileId {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// How far the journals have been read into the current view.
struct Tail {
    journal: u64,
    offset: u64,
    /// A snapshot file that was refused, so it is reported once, not at every refresh.
    refused: Option<FileId>,
}

/// What a lookup found for one address, in the scopes that matter to one message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Standing {
    /// Consent for the account+list asked about (false when no list was given).
    pub consent: bool,
    /// Suppression reasons (tag bits) globally, for the account, and for the list.
    pub global: u8,
    pub account: u8,
    pub list: u8,
}

/// Statistics for `lists status`, metrics and logs.
#[derive(Debug, Clone, Default)]
pub struct ListsStats {
    pub snapshot_entries: u64,
    pub snapshot_bytes: u64,
    pub snapshot_created_ms: Option<u64>,
    pub delta_entries: usize,
    pub folded: u64,
}

pub struct Lists {
    dir: PathBuf,
    secret: Secret,
    bits_per_key: u32,
    /// Snapshots are copied into (huge-page) memory before they serve.
    in_memory: bool,
    view: ArcSwap<View>,
    tail: Mutex<Tail>,
}

impl std::fmt::Debug for Lists {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lists").field("dir", &self.dir).finish()
    }
}

impl Lists {
    /// Opens (creating if needed) the lists directory: the secret, the snapshot (checked
    /// in full) and the journals since. A damaged snapshot is an error here: with nothing
    /// in service yet there is nothing safe to fall back to.
    pub fn open(dir: &Path, bits_per_key: u32) -> Result<Lists, ListsError> {
        Lists::open_with(dir, bits_per_key, false)
    }

    /// [`Lists::open`] for a long-running relay: with `in_memory`, each snapshot is copied
    /// into memory backed by huge pages before it serves (see
    /// [`Snapshot::load_into_memory`]); without, lookups read the file map.
    pub fn open_with(dir: &Path, bits_per_key: u32, in_memory: bool) -> Result<Lists, ListsError> {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let secret_path = dir.join("secret");
        let secret = Secret::load_or_create(&secret_path).map_err(io_error(&secret_path))?;
        let lists = Lists {
            dir: dir.to_path_buf(),
            secret,
            bits_per_key,
            in_memory,
            view: ArcSwap::from_pointee(View {
                snapshot: None,
                folded: 0,
                delta: RwLock::new(FpMap::default()),
                file: None,
            }),
            tail: Mutex::new(Tail {
                journal: 0,
                offset: 0,
                refused: None,
            }),
        };
        let path = lists.snapshot_path();
        let file = file_id(&path).map_err(io_error(&path))?;
        let snapshot = lists.prepare(file)?;
        let mut tail = lists.tail.lock().expect("tail lock");
        lists.install(&mut tail, snapshot, file)?;
        drop(tail);
        Ok(lists)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    pub fn bits_per_key(&self) -> u32 {
        self.bits_per_key
    }

    pub fn snapshot_path(&self) -> PathBuf {
        self.dir.join("snapshot")
    }

    /// The tags in force for a fingerprint (0: no entry).
    pub fn get(&self, fp: u64) -> u8 {
        self.view.load().get(fp)
    }

    /// The consent and suppressions of an already normalised address for `account`
    /// (and `list`, when one applies).
    pub fn standing(&self, account: &str, list: Option<&str>, normalised: &str) -> Standing {
        let view = self.view.load();
        let s = &self.secret;
        let supp = |scope| view.get(s.fingerprint(Kind::Suppression, scope, normalised));
        Standing {
            consent: list.is_some_and(|l| {
                view.get(s.fingerprint(Kind::Consent, Scope::List(account, l), normalised))
                    & CONSENT
                    != 0
            }),
            global: supp(Scope::Global) & ALL_REASONS,
            account: supp(Scope::Account(account)) & ALL_REASONS,
            list: list.map_or(0, |l| supp(Scope::List(account, l)) & ALL_REASONS),
        }
    }

    /// Records changes durably (fsync) and puts them in force before returning.
    pub fn record(&self, changes: &[Change]) -> Result<(), ListsError> {
        journal::append(&self.dir, changes).map_err(io_error(&self.dir))?;
        self.refresh().map(|_| ())
    }

    /// The same change (add or remove `tags` of `kind` in `scope`) for each of some
    /// normalised addresses, recorded as [`Lists::record`] does.
    pub fn record_addresses(
        &self,
        kind: Kind,
        scope: Scope<'_>,
        op: Op,
        tags: u8,
        origin: Origin,
        addresses: &[String],
    ) -> Result<(), ListsError> {
        let time_ms = crate::spool::now_ms();
        let changes: Vec<Change> = addresses
            .iter()
            .map(|a| Change {
                op,
                fp: self.secret.fingerprint(kind, scope, a),
                tags,
                origin,
                time_ms,
            })
            .collect();
        self.record(&changes)
    }

    /// Follows what other processes did: a new snapshot is opened, verified and swapped
    /// in; journal records appended since the last call are applied. Returns whether a new
    /// snapshot was put into service. On error the view in service is unchanged.
    pub fn refresh(&self) -> Result<bool, ListsError> {
        let path = self.snapshot_path();
        let current = file_id(&path).map_err(io_error(&path))?;
        let refused = self.tail.lock().expect("tail lock").refused;
        if current != self.view.load().file && current != refused {
            // Verifying and loading a large snapshot takes seconds: done without the lock,
            // so changes are recorded and looked up meanwhile.
            let prepared = self.prepare(current);
            let mut tail = self.tail.lock().expect("tail lock");
            return match prepared {
                Ok(snapshot) => self.install(&mut tail, snapshot, current),
                Err(e) => {
                    tail.refused = current;
                    Err(e)
                }
            };
        }
        let mut tail = self.tail.lock().expect("tail lock");
        self.catch_up(&mut tail)?;
        Ok(false)
    }

    /// Opens, verifies and (when configured) loads the snapshot file.
    fn prepare(&self, file: Option<FileId>) -> Result<Option<Snapshot>, ListsError> {
        if file.is_none() {
            return Ok(None);
        }
        let s = Snapshot::open(&self.snapshot_path(), self.secret.id())?;
        s.verify()?;
        Ok(Some(if self.in_memory {
            s.load_into_memory()
        } else {
            s
        }))
    }

    /// Puts a prepared snapshot into service with every journal after it replayed, unless
    /// the view already serves a newer one. Returns whether it did.
    fn install(
        &self,
        tail: &mut Tail,
        snapshot: Option<Snapshot>,
        file: Option<FileId>,
    ) -> Result<bool, ListsError> {
        let folded = snapshot.as_ref().map_or(0, Snapshot::folded);
        if folded < self.view.load().folded {
            return Ok(false);
        }
        let view = View {
            snapshot,
            folded,
            delta: RwLock::new(FpMap::default()),
            file,
        };
        let mut fresh = Tail {
            journal: folded,
            offset: 0,
            refused: None,
        };
        apply_journals(&self.dir, &view, &mut fresh)?;
        self.view.store(std::sync::Arc::new(view));
        *tail = fresh;
        Ok(true)
    }

    fn catch_up(&self, tail: &mut Tail) -> Result<(), ListsError> {
        let view = self.view.load();
        apply_journals(&self.dir, &view, tail)
    }

    pub fn stats(&self) -> ListsStats {
        let view = self.view.load();
        ListsStats {
            snapshot_entries: view.snapshot.as_ref().map_or(0, Snapshot::len),
            snapshot_bytes: view.snapshot.as_ref().map_or(0, Snapshot::file_size),
            snapshot_created_ms: view.snapshot.as_ref().map(Snapshot::created_ms),
            delta_entries: view.delta.read().expect("delta lock").len(),
            folded: view.folded,
        }
    }

    /// The snapshot in service, if any.
    pub fn snapshot(&self) -> Option<Snapshot> {
        self.view.load().snapshot.clone()
    }
}

/// Applies the journal records `view` has not seen, in order, advancing `tail`.
fn apply_journals(dir: &Path, view: &View, tail: &mut Tail) -> Result<(), ListsError> {
    let numbers = journal::list(dir).map_err(io_error(dir))?;
    let first = tail.journal;
    for n in numbers
        .into_iter()
        .filter(|&n| n > view.folded && n >= first)
    {
        let from = if n == tail.journal { tail.offset } else { 0 };
        let read = journal::read_from(dir, n, from).map_err(io_error(&journal::path_of(dir, n)))?;
        if read.damaged > 0 {
            tracing::error!(
                journal = %journal::path_of(dir, n).display(),
                records = read.damaged,
                "damaged journal records skipped"
            );
        }
        if !read.changes.is_empty() {
            let mut delta = view.delta.write().expect("delta lock");
            for c in &read.changes {
                let current = match delta.get(&c.fp) {
                    Some(&t) => t,
                    None => view.snapshot.as_ref().map_or(0, |s| s.get(c.fp)),
                };
                delta.insert(c.fp, c.apply(current));
            }
        }
        tail.journal = n;
        tail.offset = read.offset;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
