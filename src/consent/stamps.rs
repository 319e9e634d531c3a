//! The stamps of the changes a snapshot folded, kept beside it (`snapshot.stamps`) so the
//! cluster's changes that arrive after a compaction are still ordered against them.
//!
//! A snapshot holds each fingerprint's tags, not when each tag bit last changed. Without
//! the stamps, a change from another node that arrives after the compaction but was made
//! before it could not be ordered against what the snapshot holds, and was kept only where
//! it suppresses: a grant made on one node while another compacted was lost. So every
//! compaction also writes the stamps of the changes it folded (with those the previous
//! snapshot's file kept) that are newer than a **horizon**: a day before the compaction,
//! raised so that at most [`MAX_RECORDS`] fingerprints are kept. Every change folded into
//! the snapshot with a stamp above the horizon has its stamp here; so a change stamped above
//! the horizon whose fingerprint and bit have no stamp here is newer than what the snapshot
//! holds for them, and one at or below the horizon is what cannot be ordered.
//!
//! A node that takes a snapshot made elsewhere takes its stamps file with it
//! ([`super::published`]). The file names the snapshot it belongs to (its creation time
//! and entries); a missing, damaged or foreign one is read as no stamps with the
//! snapshot's creation as the horizon — the rule before this file existed, which loses no
//! suppression.
//!
//! Layout, little-endian: a 64-octet header (magic `OPTINSTM`, version 1, 4 reserved
//! octets, the snapshot's creation (Unix ms) and entries, the horizon, the record count,
//! zeros), the records sorted by fingerprint (the u64 fingerprint, an octet with a bit
//! set for each tag bit that has a stamp, and those stamps as u64 in bit order: 17 octets
//! for one), and the CRC32C of everything before.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::snapshot::Snapshot;
use super::{FpMap, TAG_BITS, hlc, invalid_data as invalid};

const MAGIC: &[u8; 8] = b"OPTINSTM";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 64;
/// The longest record: a fingerprint, its mask and a stamp for every tag bit.
const MAX_RECORD: usize = 8 + 1 + 8 * TAG_BITS;
/// Stamps are kept this long after the change (then they are below the horizon).
pub const KEEP_MS: u64 = 24 * 3600 * 1000;
/// At most this many fingerprints' stamps are kept (17 MB of file when each has one).
pub const MAX_RECORDS: usize = 1_000_000;

/// The snapshot a stamps file belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    pub created_ms: u64,
    pub entries: u64,
}

impl Binding {
    pub fn of(s: &Snapshot) -> Binding {
        Binding {
            created_ms: s.created_ms(),
            entries: s.len(),
        }
    }
}

/// What orders changes against a snapshot: the stamps of the tag bits it folded above the
/// horizon.
#[derive(Debug, Default)]
pub struct Folded {
    pub horizon: u64,
    pub stamps: FpMap<[u64; TAG_BITS]>,
}

impl Folded {
    /// No stamps known: every change up to the snapshot's creation is folded away.
    pub fn none_for(s: &Snapshot) -> Folded {
        Folded {
            horizon: hlc::Hlc::floor_of(s.created_ms()),
            stamps: FpMap::default(),
        }
    }

    /// Adds the stamps of changes folded since (the later of two stamps of a bit wins).
    pub fn add(&mut self, fp: u64, tags: u8, stamp: u64) {
        let s = self.stamps.entry(fp).or_default();
        for bit in super::bits(tags) {
            s[bit] = s[bit].max(stamp);
        }
    }

    /// Raises the horizon to at least `horizon`, and further if more than `max`
    /// fingerprints would keep stamps; forgets every stamp at or below it.
    pub fn trim(&mut self, horizon: u64, max: usize) {
        self.horizon = self.horizon.max(horizon);
        let newest = |s: &[u64; TAG_BITS]| s.iter().copied().max().unwrap_or(0);
        let above = self
            .stamps
            .values()
            .filter(|s| newest(s) > self.horizon)
            .count();
        if above > max {
            let mut all: Vec<u64> = self.stamps.values().map(newest).collect();
            let cut = all.len() - max - 1;
            let (_, nth, _) = all.select_nth_unstable(cut);
            self.horizon = self.horizon.max(*nth);
        }
        let horizon = self.horizon;
        self.stamps.retain(|_, s| {
            for b in s.iter_mut() {
                if *b <= horizon {
                    *b = 0;
                }
            }
            newest(s) != 0
        });
    }
}

/// The stamps file beside the snapshot at `snapshot`.
pub fn path_of(snapshot: &Path) -> PathBuf {
    let mut name = snapshot.as_os_str().to_owned();
    name.push(".stamps");
    PathBuf::from(name)
}

/// Writes `folded` for the snapshot `binding` names (temporary file, fsync, rename).
pub fn write(path: &Path, binding: Binding, folded: &Folded) -> std::io::Result<()> {
    let mut records: Vec<(&u64, &[u64; TAG_BITS])> = folded.stamps.iter().collect();
    records.sort_unstable_by_key(|(fp, _)| **fp);
    let mut bytes = Vec::with_capacity(HEADER_LEN + records.len() * 17 + 4);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&[0u8; 4]);
    for n in [
        binding.created_ms,
        binding.entries,
        folded.horizon,
        records.len() as u64,
    ] {
        bytes.extend_from_slice(&n.to_le_bytes());
    }
    bytes.resize(HEADER_LEN, 0);
    for (fp, stamps) in records {
        bytes.extend_from_slice(&fp.to_le_bytes());
        let mask = (0..TAG_BITS).fold(0u8, |m, b| m | (u8::from(stamps[b] != 0) << b));
        bytes.push(mask);
        for s in stamps.iter().filter(|&&s| s != 0) {
            bytes.extend_from_slice(&s.to_le_bytes());
        }
    }
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    let mut atomic = crate::files::AtomicFile::create(path)?;
    atomic.file().write_all(&bytes)?;
    atomic.commit()
}

/// Reads the stamps file at `path` if it belongs to the snapshot `binding` names: `None`
/// when there is none or it belongs to another; an error when it is damaged.
pub fn read(path: &Path, binding: Binding) -> std::io::Result<Option<Folded>> {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let most = (HEADER_LEN + MAX_RECORDS * MAX_RECORD + 4) as u64;
    if len > most || len < (HEADER_LEN + 4) as u64 {
        return Err(invalid("not a stamps file of a possible size"));
    }
    let bytes = std::fs::read(path)?;
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 octets"));
    if &bytes[..8] != MAGIC {
        return Err(invalid("not an optin-relay stamps file (bad magic)"));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 octets"));
    if version != VERSION {
        return Err(invalid("a stamps file version this build does not read"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 octets")) {
        return Err(invalid("the stamps file's checksum does not match"));
    }
    let count = u64_at(40);
    if count > MAX_RECORDS as u64 {
        return Err(invalid("the stamps file holds too many records"));
    }
    let of = Binding {
        created_ms: u64_at(16),
        entries: u64_at(24),
    };
    if of != binding {
        return Ok(None);
    }
    let mut stamps = FpMap::default();
    stamps.reserve(count as usize);
    let mut at = HEADER_LEN;
    let mut take = |n: usize| {
        let part = body.get(at..at + n);
        at += n;
        part.ok_or_else(|| invalid("the stamps file's records end early"))
    };
    let word = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 octets"));
    for _ in 0..count {
        let fp = word(take(8)?);
        let mask = take(1)?[0];
        if mask == 0 || mask >> TAG_BITS != 0 {
            return Err(invalid("a stamps record with no or unknown tag bits"));
        }
        let mut s = [0u64; TAG_BITS];
        for bit in super::bits(mask) {
            s[bit] = word(take(8)?);
        }
        stamps.insert(fp, s);
    }
    if at != body.len() {
        return Err(invalid("the stamps file has octets after its records"));
    }
    Ok(Some(Folded {
        horizon: u64_at(32),
        stamps,
    }))
}

/// The stamps kept for the snapshot `s` (whose file is `path`): those of its stamps file,
/// or none with its creation as the horizon (a damaged file is logged).
pub fn folded_for(s: &Snapshot, path: &Path) -> Folded {
    let stamps = path_of(path);
    match read(&stamps, Binding::of(s)) {
        Ok(Some(f)) => f,
        Ok(None) => Folded::none_for(s),
        Err(e) => {
            tracing::warn!(
                path = %stamps.display(),
                error = %e,
                "the snapshot's stamps are not used; changes older than it are ordered only \
                 where they suppress"
            );
            Folded::none_for(s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding() -> Binding {
        Binding {
            created_ms: 1_000,
            entries: 3,
        }
    }

    #[test]
    fn stamps_round_trip_and_belong_to_one_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.stamps");
        assert!(read(&path, binding()).unwrap().is_none(), "none yet");
        let mut f = Folded {
            horizon: 10,
            ..Folded::default()
        };
        f.add(5, 0b11, 20);
        f.add(5, 0b10, 30);
        f.add(6, 0b100, 40);
        write(&path, binding(), &f).unwrap();
        let back = read(&path, binding()).unwrap().unwrap();
        assert_eq!(back.horizon, 10);
        assert_eq!(back.stamps[&5], [20, 30, 0, 0, 0, 0]);
        assert_eq!(back.stamps[&6], [0, 0, 40, 0, 0, 0]);
        let other = Binding {
            entries: 4,
            ..binding()
        };
        assert!(read(&path, other).unwrap().is_none(), "another snapshot's");
        // Damaged: a flipped octet, a cut file, a length that lies.
        let good = std::fs::read(&path).unwrap();
        for bad in [
            {
                let mut b = good.clone();
                b[70] ^= 1;
                b
            },
            good[..good.len() - 9].to_vec(),
            b"OPTINSTM".to_vec(),
        ] {
            std::fs::write(&path, &bad).unwrap();
            assert!(read(&path, binding()).is_err());
        }
        // Whole checksums over lies: a count too high or too low, a record with no bits.
        let recrc = |mut b: Vec<u8>| {
            let n = b.len() - 4;
            let crc = crc32c::crc32c(&b[..n]);
            b[n..].copy_from_slice(&crc.to_le_bytes());
            b
        };
        for (at, value) in [(40, 3u8), (40, 1), (72, 0)] {
            let mut b = good.clone();
            b[at] = value;
            std::fs::write(&path, recrc(b)).unwrap();
            assert!(read(&path, binding()).is_err(), "octet {at} = {value}");
        }
        std::fs::write(&path, recrc(good.clone())).unwrap();
        assert!(
            read(&path, binding()).unwrap().is_some(),
            "the lies were the problem"
        );
    }

    #[test]
    fn trimming_raises_the_horizon_and_forgets_what_is_below() {
        let mut f = Folded::default();
        for fp in 0..10u64 {
            f.add(fp, 0b1, 100 + fp);
        }
        f.add(3, 0b10, 500);
        f.trim(104, 100);
        assert_eq!(f.horizon, 104);
        assert_eq!(f.stamps.len(), 6, "5..=9 and 3's second bit");
        assert_eq!(f.stamps[&3], [0, 500, 0, 0, 0, 0]);
        f.trim(0, 2);
        assert_eq!(f.horizon, 108, "raised so two are kept");
        let mut kept: Vec<u64> = f.stamps.keys().copied().collect();
        kept.sort_unstable();
        assert_eq!(kept, [3, 9]);
    }
}
