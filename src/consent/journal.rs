//! The journal of live changes: unsubscribes, bounces, complaints, manual suppressions,
//! erasures, consent granted or revoked between two snapshots.
//!
//! Journals are append-only files `journal.NNNNNNNNNN` of fixed 32-octet records, each
//! with its own CRC32C. A change is acknowledged only after `fdatasync`. Several processes
//! may append (the relay, `optin-relay suppress …`): each holds a shared lock on
//! `journal.lock` while it appends to the highest-numbered journal with `O_APPEND`.
//! Compaction takes the lock exclusively for a moment to start a new journal
//! ([`roll`]); journals up to the rolled number are then closed and can be folded into a
//! snapshot and deleted.
//!
//! Record: CRC32C of octets 4..32 (u32), op (1 add, 2 remove), tags, origin, flags (bit 0:
//! the change came from another node of the cluster), fingerprint (u64), time in Unix ms
//! (u64), stamp (u64: the hybrid logical clock and node of the change, see
//! [`super::hlc`]; 0 in records written before it existed). Little-endian.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub const RECORD_LEN: usize = 32;
const PREFIX: &str = "journal.";
const LOCK: &str = "journal.lock";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Set these tag bits.
    Add,
    /// Clear these tag bits.
    Remove,
}

/// Who made a change (kept for audit; not interpreted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Origin {
    Operator = 1,
    Unsubscribe = 2,
    Delivery = 3,
    Feedback = 4,
    /// The account itself: its API, its forms, its recipients' confirmations.
    Account = 5,
    Other = 255,
}

impl Origin {
    fn from_u8(b: u8) -> Origin {
        match b {
            1 => Origin::Operator,
            2 => Origin::Unsubscribe,
            3 => Origin::Delivery,
            4 => Origin::Feedback,
            5 => Origin::Account,
            _ => Origin::Other,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub op: Op,
    pub fp: u64,
    pub tags: u8,
    pub origin: Origin,
    pub time_ms: u64,
    /// When and where the change was made, in the cluster's order (see [`super::hlc`]);
    /// 0: not stamped yet ([`super::Lists::record`] stamps it).
    pub stamp: u64,
    /// Received from another node through the cluster's feed (never sent on again).
    pub remote: bool,
}

impl Change {
    /// The tags after this change, given the tags before it.
    pub fn apply(&self, current: u8) -> u8 {
        match self.op {
            Op::Add => current | self.tags,
            Op::Remove => current & !self.tags,
        }
    }

    pub fn encode(&self) -> [u8; RECORD_LEN] {
        let mut r = [0u8; RECORD_LEN];
        r[4] = match self.op {
            Op::Add => 1,
            Op::Remove => 2,
        };
        r[5] = self.tags;
        r[6] = self.origin as u8;
        r[7] = u8::from(self.remote);
        r[8..16].copy_from_slice(&self.fp.to_le_bytes());
        r[16..24].copy_from_slice(&self.time_ms.to_le_bytes());
        r[24..32].copy_from_slice(&self.stamp.to_le_bytes());
        let crc = crc32c::crc32c(&r[4..]);
        r[..4].copy_from_slice(&crc.to_le_bytes());
        r
    }

    /// None for a damaged record.
    pub fn decode(r: &[u8]) -> Option<Change> {
        let crc = u32::from_le_bytes(r[..4].try_into().ok()?);
        if r.len() != RECORD_LEN || crc32c::crc32c(&r[4..]) != crc {
            return None;
        }
        let op = match r[4] {
            1 => Op::Add,
            2 => Op::Remove,
            _ => return None,
        };
        Some(Change {
            op,
            tags: r[5],
            origin: Origin::from_u8(r[6]),
            fp: u64::from_le_bytes(r[8..16].try_into().ok()?),
            time_ms: u64::from_le_bytes(r[16..24].try_into().ok()?),
            stamp: u64::from_le_bytes(r[24..32].try_into().ok()?),
            remote: r[7] & 1 != 0,
        })
    }
}

pub fn path_of(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{number:010}"))
}

/// The journals in `dir`, by number.
pub fn list(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = name.strip_prefix(PREFIX)
            && n.len() == 10
            && let Ok(n) = n.parse::<u64>()
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn lock_file(dir: &Path) -> std::io::Result<File> {
    crate::files::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(LOCK))
}

/// Appends `changes` durably (fsync before returning).
pub fn append(dir: &Path, changes: &[Change]) -> std::io::Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let lock = lock_file(dir)?;
    let mut bytes = Vec::with_capacity(changes.len() * RECORD_LEN);
    for c in changes {
        bytes.extend_from_slice(&c.encode());
    }
    loop {
        lock.lock_shared()?;
        let number = list(dir)?.last().copied().unwrap_or(1);
        let path = path_of(dir, number);
        let created = !path.exists();
        let mut file = crate::files::options()
            .append(true)
            .create(true)
            .open(&path)?;
        if file.metadata()?.len() % RECORD_LEN as u64 != 0 {
            // A tail torn by a power loss (never acknowledged): cut it off under the
            // exclusive lock, or our records would be misaligned behind it.
            lock.unlock()?;
            lock.lock()?;
            let len = file.metadata()?.len();
            file.set_len(len - len % RECORD_LEN as u64)?;
            file.sync_all()?;
            lock.unlock()?;
            continue;
        }
        file.write_all(&bytes)?;
        file.sync_data()?;
        if created {
            crate::files::sync_dir(dir)?;
        }
        lock.unlock()?;
        return Ok(());
    }
}

/// Starts a new journal; every journal up to the returned number is closed for appends.
pub fn roll(dir: &Path) -> std::io::Result<u64> {
    let lock = lock_file(dir)?;
    lock.lock()?;
    let closed = list(dir)?.last().copied().unwrap_or(0);
    crate::files::options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path_of(dir, closed + 1))?;
    crate::files::sync_dir(dir)?;
    lock.unlock()?;
    Ok(closed)
}

/// [`roll`], carrying changes over: under the exclusive lock (no append meanwhile),
/// `carry` is given the number of the last journal and returns changes read from the
/// journals up to it; they are written (fsynced) to the next journal, and appends go on in
/// the one after. Returns the last journal closed before the carried one. Adopting a
/// snapshot made elsewhere (see `super::published`): the journals up to the returned number
/// are replaced by it, the carried changes come right after it and before any new one.
pub fn roll_carrying(
    dir: &Path,
    carry: impl FnOnce(u64) -> std::io::Result<Vec<Change>>,
) -> std::io::Result<u64> {
    let lock = lock_file(dir)?;
    lock.lock()?;
    let closed = list(dir)?.last().copied().unwrap_or(0);
    let carried = carry(closed)?;
    let mut file = crate::files::options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path_of(dir, closed + 1))?;
    let bytes: Vec<u8> = carried.iter().flat_map(|c| c.encode()).collect();
    file.write_all(&bytes)?;
    file.sync_all()?;
    crate::files::options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path_of(dir, closed + 2))?;
    crate::files::sync_dir(dir)?;
    lock.unlock()?;
    Ok(closed)
}

/// What [`read_from`] found.
#[derive(Debug, Default)]
pub struct Records {
    pub changes: Vec<Change>,
    /// Where the next read starts (after the last whole record).
    pub offset: u64,
    /// Records that failed their checksum and were skipped.
    pub damaged: u64,
}

/// Reads the whole records of journal `number` from `offset` on. A missing file reads as
/// empty (it was folded and deleted).
pub fn read_from(dir: &Path, number: u64, offset: u64) -> std::io::Result<Records> {
    let mut file = match File::open(path_of(dir, number)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Records {
                offset,
                ..Records::default()
            });
        }
        Err(e) => return Err(e),
    };
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let whole = bytes.len() - bytes.len() % RECORD_LEN;
    let mut out = Records {
        offset: offset + whole as u64,
        ..Records::default()
    };
    for r in bytes[..whole].chunks_exact(RECORD_LEN) {
        match Change::decode(r) {
            Some(c) => out.changes.push(c),
            None => out.damaged += 1,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    fn change(fp: u64) -> Change {
        Change {
            op: Op::Add,
            fp,
            tags: 2,
            origin: Origin::Operator,
            time_ms: 1,
            stamp: 0,
            remote: false,
        }
    }

    #[test]
    fn append_read_roll() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        append(d, &[change(1), change(2)]).unwrap();
        append(d, &[change(3)]).unwrap();
        assert_eq!(list(d).unwrap(), vec![1]);
        let r = read_from(d, 1, 0).unwrap();
        assert_eq!(
            r.changes.iter().map(|c| c.fp).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(r.offset, 96);
        assert_eq!(roll(d).unwrap(), 1);
        append(d, &[change(4)]).unwrap();
        assert_eq!(list(d).unwrap(), vec![1, 2]);
        assert_eq!(read_from(d, 1, 96).unwrap().changes.len(), 0);
        assert_eq!(read_from(d, 2, 0).unwrap().changes[0].fp, 4);
        assert_eq!(read_from(d, 9, 0).unwrap().changes.len(), 0);
    }

    #[test]
    fn torn_tail_and_damaged_records() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        append(d, &[change(1), change(2)]).unwrap();
        // A power loss left half a record behind.
        let mut f = OpenOptions::new().append(true).open(path_of(d, 1)).unwrap();
        f.write_all(&change(9).encode()[..10]).unwrap();
        let r = read_from(d, 1, 0).unwrap();
        assert_eq!(r.changes.len(), 2);
        assert_eq!(r.offset, 64);
        // The next append cuts the torn tail off first.
        append(d, &[change(3)]).unwrap();
        let r = read_from(d, 1, 0).unwrap();
        assert_eq!(
            r.changes.iter().map(|c| c.fp).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        // A flipped bit is skipped and counted, the rest is read.
        let mut bytes = std::fs::read(path_of(d, 1)).unwrap();
        bytes[40] ^= 1;
        std::fs::write(path_of(d, 1), &bytes).unwrap();
        let r = read_from(d, 1, 0).unwrap();
        assert_eq!(r.changes.iter().map(|c| c.fp).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(r.damaged, 1);
    }
}
