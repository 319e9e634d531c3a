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
//! Once a directory has had a snapshot, it must always have one: every compile records
//! how far its snapshot folded the journal in `snapshot.expected`, and a snapshot file that
//! is then missing, empty, damaged or older (the journals it would need are gone) is an
//! error, never an empty list. A running relay keeps the last good snapshot serving (and
//! follows the journal) while it reports the problem; opening refuses, so `serve` does not
//! start without its suppressions. Only an explicit rebuild ([`Mode::Rebuild`]: `lists
//! import --rebuild`, `lists compile --rebuild`) starts a new snapshot without the lost one.
//!
//! Files in the lists directory (0600, the directory 0700): `secret`, `snapshot`,
//! `snapshot.stamps` ([`stamps`]), `snapshot.expected`, `journal.NNNNNNNNNN`,
//! `journal.lock`, `compile.lock`, and in a cluster `feed.sent`, `feed.seen` and
//! `feed.snapshot` ([`positions`]), `snapshot.adopt` and `snapshot.stamps.adopt` while a
//! snapshot made elsewhere is taken ([`published`]), and `erasures.seen` ([`erasures`]).
//! Nothing in them is a plain address.

pub mod compile;
pub mod erasures;
pub mod feed;
pub mod follow;
pub mod hlc;
pub mod import;
pub mod journal;
pub mod key;
pub mod positions;
pub mod published;
pub mod snapshot;
pub mod stamps;

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
    #[error(
        "{path} is missing, but this lists directory had a snapshot (folding the journal up to \
         {folded}): every consent and suppression in it would be lost. Restore the file from a \
         backup, or rebuild it on purpose from the source lists with `optin-relay lists import \
         --rebuild …` (`lists compile --rebuild` keeps only the journal)"
    )]
    SnapshotMissing { path: PathBuf, folded: u64 },
    #[error(
        "{path} folds the journal up to {found}, but the last snapshot compiled here folded it \
         up to {expected}: the journal between is gone, so its changes would be lost. Restore \
         the newest snapshot, or rebuild on purpose with `optin-relay lists import --rebuild …`"
    )]
    SnapshotOlder {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
}

/// How [`Lists`] treats a snapshot that this directory had and that is gone (missing,
/// empty, damaged, older than the last one compiled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// An error (the relay, lookups, compiles).
    Strict,
    /// Tolerated, for changes appended to the journal only (`suppress add`, `lists
    /// grant`): recording a change never harms, and compiling still refuses.
    JournalOnly,
    /// Ignored: a compile starts a new snapshot from the journal and the imports alone.
    Rebuild,
}

/// Where the lists directory records that it has a snapshot, and how far it folded.
const EXPECTED: &str = "snapshot.expected";

/// How far the newest snapshot compiled here folded the journal; `None`: this directory
/// never had one (or predates the record).
fn expected_folded(dir: &Path) -> Result<Option<u64>, ListsError> {
    let path = dir.join(EXPECTED);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(
            text.trim()
                .strip_prefix("folded=")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| {
                    // Damaged: a snapshot existed all the same.
                    tracing::warn!(path = %path.display(), "unreadable; taken as a snapshot that folded nothing");
                    0
                }),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(&path)(e)),
    }
}

/// Records that the directory's snapshot folds the journal up to `folded`.
fn record_expected(dir: &Path, folded: u64) -> Result<(), ListsError> {
    let path = dir.join(EXPECTED);
    crate::files::write_atomically(&path, format!("folded={folded}\n").as_bytes())
        .map_err(io_error(&path))
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ListsError + '_ {
    move |source| ListsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A file of the lists that is not what it should be.
fn invalid_data(why: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string())
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
    /// The stamp of the last change of each tag bit of each fingerprint changed since the
    /// horizon (see [`hlc`]; those the snapshot folded come from its [`stamps`] file): what
    /// orders the cluster's changes, last writer wins.
    stamps: RwLock<FpMap<[u64; TAG_BITS]>>,
    /// Changes stamped at or before this may be folded into the snapshot with their
    /// stamps forgotten: what cannot be ordered.
    horizon: u64,
    /// The snapshot file this view was built from (to notice a new one).
    file: Option<FileId>,
}

/// Tag bits that carry meaning (consent and the five reasons).
const TAG_BITS: usize = 6;

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
    /// The snapshot file (or its absence: `Some(None)`) that was refused, so it is
    /// reported once, not at every refresh, and why.
    refused: Option<(Option<FileId>, String)>,
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

impl ListsStats {
    /// Sets the lists' gauges to these figures.
    pub fn publish(&self) {
        crate::metrics::lists_state(
            self.snapshot_entries,
            self.snapshot_bytes,
            self.delta_entries,
            self.snapshot_created_ms,
        );
    }
}

pub struct Lists {
    dir: PathBuf,
    mode: Mode,
    secret: Secret,
    bits_per_key: u32,
    /// Snapshots are copied into (huge-page) memory before they serve.
    in_memory: bool,
    view: ArcSwap<View>,
    tail: Mutex<Tail>,
    /// Stamps this node's changes (see [`hlc`]).
    clock: hlc::Hlc,
    /// Compaction deletes no journal from this number on: the cluster's feed has not sent
    /// them yet (`u64::MAX`: no feed).
    journal_floor: std::sync::atomic::AtomicU64,
    /// The cluster that compacts for this node while it answers (one node at a time, see
    /// [`published`]): the follow task does not compact on its own meanwhile.
    compaction_shared: std::sync::OnceLock<std::sync::Arc<crate::cluster::Cluster>>,
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
        Lists::open_mode(dir, bits_per_key, in_memory, Mode::Strict)
    }

    /// [`Lists::open_with`] with a choice of how a lost snapshot is treated (see [`Mode`]).
    pub fn open_mode(
        dir: &Path,
        bits_per_key: u32,
        in_memory: bool,
        mode: Mode,
    ) -> Result<Lists, ListsError> {
        crate::files::private_dir(dir).map_err(io_error(dir))?;
        let secret_path = dir.join("secret");
        let secret = Secret::load_or_create(&secret_path).map_err(io_error(&secret_path))?;
        let lists = Lists {
            dir: dir.to_path_buf(),
            mode,
            secret,
            bits_per_key,
            in_memory,
            view: ArcSwap::from_pointee(View {
                snapshot: None,
                folded: 0,
                delta: RwLock::new(FpMap::default()),
                stamps: RwLock::new(FpMap::default()),
                horizon: 0,
                file: None,
            }),
            tail: Mutex::new(Tail {
                journal: 0,
                offset: 0,
                refused: None,
            }),
            clock: hlc::Hlc::default(),
            journal_floor: std::sync::atomic::AtomicU64::new(u64::MAX),
            compaction_shared: std::sync::OnceLock::new(),
        };
        let path = lists.snapshot_path();
        let file = file_id(&path).map_err(io_error(&path))?;
        let (snapshot, problem) = match lists.prepare(file) {
            Ok(s) => (s, None),
            Err(e) if mode != Mode::Strict => {
                tracing::warn!(error = %e, "lists snapshot not used");
                (None, Some(e.to_string()))
            }
            Err(e) => return Err(e),
        };
        if let Some(s) = &snapshot
            && expected_folded(dir)?.is_none()
        {
            // A directory from before the record: it has a snapshot from now on.
            record_expected(dir, s.folded())?;
        }
        let in_service = snapshot.as_ref().and(file);
        let mut tail = lists.tail.lock().expect("tail lock");
        lists.install(&mut tail, snapshot, in_service, None)?;
        tail.refused = problem.map(|why| (file, why));
        drop(tail);
        Ok(lists)
    }

    /// Why the snapshot file is not the one in service (missing, damaged, older), while the
    /// last good one serves; `None` when all is well.
    pub fn snapshot_problem(&self) -> Option<String> {
        let tail = self.tail.lock().expect("tail lock");
        tail.refused.as_ref().map(|(_, why)| why.clone())
    }

    pub fn mode(&self) -> Mode {
        self.mode
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

    /// Records changes durably (fsync) and puts them in force before returning. Changes
    /// without a stamp get one now.
    pub fn record(&self, changes: &[Change]) -> Result<(), ListsError> {
        let stamped: Vec<Change> = changes
            .iter()
            .map(|c| Change {
                stamp: if c.stamp == 0 {
                    self.clock.stamp()
                } else {
                    c.stamp
                },
                ..*c
            })
            .collect();
        self.append_and_refresh(&stamped)
    }

    /// Changes another node made (the cluster's feed), each kept only for the tag bits it
    /// changed last (by stamp; a change already in force is dropped, so the feed can be
    /// replayed): recorded as [`Lists::record`] does. The stamps of changes folded into
    /// the snapshot are kept for a day ([`stamps`]); a change at or below that horizon,
    /// whose rivals' stamps are forgotten, is kept only where it suppresses (adds a
    /// reason, withdraws a consent): a suppression wins what cannot be ordered. Returns
    /// the changes kept.
    pub fn accept_remote(&self, changes: &[Change]) -> Result<usize, ListsError> {
        let view = self.view.load();
        let kept: Vec<Change> = {
            let stamps = view.stamps.read().expect("stamps lock");
            changes
                .iter()
                .filter_map(|c| {
                    self.clock.observe(c.stamp);
                    let tags = kept_tags(c, stamps.get(&c.fp), view.horizon);
                    (tags != 0).then_some(Change {
                        tags,
                        remote: true,
                        ..*c
                    })
                })
                .collect()
        };
        drop(view);
        if !kept.is_empty() {
            self.append_and_refresh(&kept)?;
        }
        Ok(kept.len())
    }

    /// Whether the cluster compacts the lists now (see [`published`]) rather than this
    /// node alone: it shares its snapshots and Redis answers.
    pub fn compaction_shared(&self) -> bool {
        self.compaction_shared.get().is_some_and(|c| c.is_up())
    }

    /// From now on `cluster` compacts for this node while Redis answers.
    pub fn share_compaction(&self, cluster: std::sync::Arc<crate::cluster::Cluster>) {
        let _ = self.compaction_shared.set(cluster);
    }

    /// Journal numbers from `floor` on are kept by compaction (the feed still reads them).
    pub fn set_journal_floor(&self, floor: u64) {
        self.journal_floor
            .store(floor, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sets this node's byte in the stamps of its changes (see [`hlc::node_byte`]).
    pub fn set_clock_node(&self, node: u8) {
        self.clock.set_node(node);
    }

    fn append_and_refresh(&self, changes: &[Change]) -> Result<(), ListsError> {
        journal::append(&self.dir, changes).map_err(io_error(&self.dir))?;
        match self.refresh() {
            Ok(_) => Ok(()),
            // The change is recorded and in force (the journal is followed whatever the
            // snapshot file's state); the refused snapshot is the follow task's to report.
            Err(
                e @ (ListsError::Snapshot(_)
                | ListsError::SnapshotMissing { .. }
                | ListsError::SnapshotOlder { .. }),
            ) => {
                tracing::error!(error = %e, "lists snapshot refused; the one in service stays");
                Ok(())
            }
            Err(e) => Err(e),
        }
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
        let time_ms = crate::envelope::now_ms();
        let changes: Vec<Change> = addresses
            .iter()
            .map(|a| Change {
                op,
                fp: self.secret.fingerprint(kind, scope, a),
                tags,
                origin,
                time_ms,
                stamp: 0,
                remote: false,
            })
            .collect();
        self.record(&changes)
    }

    /// Follows what other processes did: a new snapshot is opened, verified and swapped
    /// in; journal records appended since the last call are applied. Returns whether a new
    /// snapshot was put into service. On error the view in service is unchanged.
    pub fn refresh(&self) -> Result<bool, ListsError> {
        self.refresh_knowing(None)
    }

    /// [`Lists::refresh`] by the caller that has just put a snapshot in place and holds
    /// its stamps (`known`, for the snapshot the binding names): they are not read back
    /// from the file.
    fn refresh_knowing(
        &self,
        known: Option<(stamps::Binding, stamps::Folded)>,
    ) -> Result<bool, ListsError> {
        let path = self.snapshot_path();
        let current = file_id(&path).map_err(io_error(&path))?;
        let in_service = self.view.load().file;
        let reported = {
            let mut tail = self.tail.lock().expect("tail lock");
            if current == in_service && tail.refused.take().is_some() {
                crate::metrics::lists_snapshot_refused(false);
                tracing::info!(path = %path.display(), "the lists snapshot in service is back in place");
            }
            tail.refused.as_ref().map(|(f, _)| *f)
        };
        if current != in_service && reported != Some(current) {
            // Verifying and loading a large snapshot takes seconds: done without the lock,
            // so changes are recorded and looked up meanwhile.
            let prepared = self.prepare(current);
            let mut tail = self.tail.lock().expect("tail lock");
            return match prepared {
                Ok(snapshot) => self.install(&mut tail, snapshot, current, known),
                Err(e) => {
                    crate::metrics::lists_snapshot_refused(true);
                    tail.refused = Some((current, e.to_string()));
                    // The journal is followed all the same: its changes are never dropped.
                    self.catch_up(&mut tail)?;
                    Err(e)
                }
            };
        }
        let mut tail = self.tail.lock().expect("tail lock");
        self.catch_up(&mut tail)?;
        Ok(false)
    }

    /// Opens, verifies and (when configured) loads the snapshot file, and checks it against
    /// the snapshot this directory is known to have (see the module doc). Errors whatever
    /// the [`Mode`]: the callers decide what a problem stops.
    fn prepare(&self, file: Option<FileId>) -> Result<Option<Snapshot>, ListsError> {
        let expected = expected_folded(&self.dir)?;
        let path = self.snapshot_path();
        if file.is_none() {
            return match expected {
                Some(folded) => Err(ListsError::SnapshotMissing { path, folded }),
                None => Ok(None),
            };
        };
        let s = Snapshot::open(&path, self.secret.id())?;
        s.verify()?;
        if let Some(expected) = expected
            && s.folded() < expected
        {
            return Err(ListsError::SnapshotOlder {
                path,
                found: s.folded(),
                expected,
            });
        }
        Ok(Some(if self.in_memory {
            s.load_into_memory()
        } else {
            s
        }))
    }

    /// Puts a prepared snapshot into service with every journal after it replayed, unless
    /// the view already serves a newer one, ordering what comes with its stamps (`known`
    /// when they are its own, else read from its stamps file). Returns whether it did.
    fn install(
        &self,
        tail: &mut Tail,
        snapshot: Option<Snapshot>,
        file: Option<FileId>,
        known: Option<(stamps::Binding, stamps::Folded)>,
    ) -> Result<bool, ListsError> {
        let folded = snapshot.as_ref().map_or(0, Snapshot::folded);
        if folded < self.view.load().folded {
            return Ok(false);
        }
        let kept = match (&snapshot, known) {
            (Some(s), Some((binding, f))) if stamps::Binding::of(s) == binding => f,
            (Some(s), _) => stamps::folded_for(s, &self.snapshot_path()),
            (None, _) => stamps::Folded::default(),
        };
        let view = View {
            snapshot,
            folded,
            delta: RwLock::new(FpMap::default()),
            stamps: RwLock::new(kept.stamps),
            horizon: kept.horizon,
            file,
        };
        let mut fresh = Tail {
            journal: folded,
            offset: 0,
            refused: None,
        };
        if file.is_some() {
            crate::metrics::lists_snapshot_refused(false);
        }
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

/// The tag bits of a change that win against what is known: those it changed after the
/// last change of that bit (`known`: the stamps kept), and, where nothing orders it (no
/// stamp known, and at or below the `horizon` of what is kept), those where it suppresses
/// — adds a reason, withdraws a consent.
fn kept_tags(c: &Change, known: Option<&[u64; TAG_BITS]>, horizon: u64) -> u8 {
    let mut tags = 0u8;
    for bit in bits(c.tags) {
        let last = known.map_or(0, |k| k[bit]);
        let newer = c.stamp > last && (last != 0 || c.stamp > horizon);
        let suppresses = (c.op == Op::Add) != (1 << bit == CONSENT);
        let unordered = last == 0 && c.stamp <= horizon;
        if newer || (unordered && suppresses) {
            tags |= 1 << bit;
        }
    }
    tags
}

/// The indexes of the meaningful tag bits set in `tags`.
fn bits(tags: u8) -> impl Iterator<Item = usize> {
    (0..TAG_BITS).filter(move |b| tags & (1 << b) != 0)
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
            drop(delta);
            let mut stamps = view.stamps.write().expect("stamps lock");
            for c in read.changes.iter().filter(|c| c.stamp != 0) {
                let s = stamps.entry(c.fp).or_default();
                for bit in bits(c.tags) {
                    s[bit] = s[bit].max(c.stamp);
                }
            }
        }
        tail.journal = n;
        tail.offset = read.offset;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
