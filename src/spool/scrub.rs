//! Erasing an address from the spool in place ([`Spool::scrub`]): every record still on
//! disk is searched, each occurrence is overwritten with a placeholder of the same length,
//! the record's checksums are recomputed, and the record is written back where it was.
//!
//! The spool is live while this runs, and the scrub must never write where the writer may
//! still write, never let a reader see half a rewritten record, and never turn damage into
//! a record that looks sound:
//!
//! - The writer is asked, through its queue and after everything sent before it is
//!   written and synced, where committed data ends: the committed length of the segment it
//!   appends to, and which segments exist. Only whole records below that bound are touched;
//!   records are only ever appended, so the writer never writes there again, and appends
//!   beyond it go on meanwhile. The scrub itself runs on the blocking pool rather than on
//!   the writer: the writer holds its lock for whole bursts of work, and a scrub of a large
//!   spool there would hold up every submission's `250`.
//! - Each record is read, changed and written back (one `pwrite`) under the exclusive side
//!   of the spool's record lock, which every read of a message takes shared: a delivery
//!   never reads a record half rewritten (it would take the checksum failure for damage),
//!   and two scrubs never interleave on one record.
//! - An envelope or content whose checksum verifies gets a new checksum; a damaged one (left
//!   for recovery to find) has the address overwritten too, but keeps its old checksum, so
//!   the damage is still found. Damaged stretches between records are overwritten as they
//!   are.
//!
//! Lengths never change, so every `Location` stays valid. Each changed segment is synced
//! before the scrub returns.
//!
//! The envelope is decoded and changed field by field: a sender or recipient entry is
//! overwritten only when it *is* the address, so other recipients stay deliverable, and an
//! overwritten recipient is marked done, so its placeholder is never delivered to. Content
//! is overwritten wherever the [`Redactor`] finds the address, also in the copies going to
//! other recipients; copies in an encoded form (base64, quoted-printable split by a soft
//! line break) are not found.
//!
//! `quarantine/` holds damaged bytes put aside at start-up; its files are overwritten in
//! place the same way.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::format::{self, RECORD_HEADER_LEN, RecordHeader, SEGMENT_HEADER_LEN};
use super::writer::{self, Committed, segment_path};
use super::{Inner, Spool, SpoolError};

/// Finds the address being erased; see `crate::privacy::erase::Needle`.
pub trait Redactor: Send + Sync {
    /// Overwrites every occurrence of the address in `bytes` with a placeholder of the same
    /// length (ASCII, see [`blank`], so UTF-8 text stays UTF-8); returns how many.
    fn redact(&self, bytes: &mut [u8]) -> usize;
    /// Whether `address` (an envelope's sender or recipient) is the address being erased.
    fn is_address(&self, address: &str) -> bool;
}

/// The placeholder: every octet but `@` and `.` becomes `x`, so `jane@example.com` reads
/// `xxxx@xxxxxxx.xxx` and keeps its length (and still looks like an address).
pub fn blank(bytes: &mut [u8]) {
    for b in bytes.iter_mut().filter(|b| !matches!(**b, b'@' | b'.')) {
        *b = b'x';
    }
}

/// What a scrub changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScrubReport {
    /// Sound records rewritten with new checksums.
    pub records: usize,
    /// Damaged records and stretches overwritten (their checksums left failing).
    pub damaged: usize,
    /// Files of `quarantine/` overwritten.
    pub quarantine_files: usize,
    /// What could not be scrubbed, by file (no address in them).
    pub problems: Vec<String>,
}

impl ScrubReport {
    fn problem(&mut self, path: &Path, why: impl std::fmt::Display) {
        self.problems.push(format!("{}: {why}", path.display()));
    }
}

impl Spool {
    /// The spool directory (`[spool] path`).
    pub fn root(&self) -> &Path {
        self.inner
            .queue_dir
            .parent()
            .unwrap_or(&self.inner.queue_dir)
    }

    /// Overwrites whatever `redactor` finds in every record on disk and in `quarantine/`,
    /// while the spool is in use; see the module doc. Errors only when the writer has
    /// stopped or the queue directory cannot be listed; a file that cannot be scrubbed is
    /// a problem in the report.
    pub async fn scrub(&self, redactor: Arc<dyn Redactor>) -> Result<ScrubReport, SpoolError> {
        // Everything sent before is written and synced: the stores, and the journal records
        // of recipients just dropped (a placeholder recipient is never pending again).
        self.flush().await?;
        let (done, wait) = tokio::sync::oneshot::channel();
        self.inner.send(writer::Cmd::Committed { done })?;
        let committed = wait.await.map_err(|_| SpoolError::Closed)?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || scrub_blocking(&inner, committed, redactor.as_ref()))
            .await
            .map_err(|_| SpoolError::Closed)?
    }
}

fn scrub_blocking(
    inner: &Inner,
    committed: Committed,
    r: &dyn Redactor,
) -> Result<ScrubReport, SpoolError> {
    let mut report = ScrubReport::default();
    for id in segment_ids(&inner.queue_dir)? {
        if id >= committed.next_segment {
            continue; // created after the bound was taken: new mail only
        }
        let bound = committed
            .active
            .filter(|&(active, _)| active == id)
            .map(|(_, size)| size);
        let path = segment_path(&inner.queue_dir, id);
        match scrub_segment(inner, &path, bound, r, &mut report) {
            Ok(()) => {}
            // Finished and deleted meanwhile: nothing left to scrub.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => report.problem(&path, e),
        }
    }
    scrub_quarantine(
        &inner.queue_dir.with_file_name("quarantine"),
        r,
        &mut report,
    );
    Ok(report)
}

/// The ids of the segments in the queue directory, in order.
fn segment_ids(queue_dir: &Path) -> Result<Vec<u64>, SpoolError> {
    let entries = std::fs::read_dir(queue_dir).map_err(|e| SpoolError::open(queue_dir, e))?;
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| SpoolError::open(queue_dir, e))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".msg")) else {
            continue;
        };
        if stem.len() == 16
            && let Ok(id) = u64::from_str_radix(stem, 16)
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Scrubs one segment up to `bound` (its committed length when the writer appends to it;
/// `None`: sealed, its whole length).
fn scrub_segment(
    inner: &Inner,
    path: &Path,
    bound: Option<u64>,
    r: &dyn Redactor,
    report: &mut ScrubReport,
) -> std::io::Result<()> {
    // Not opened for appending: a positioned write to an O_APPEND file lands at its end.
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let end = match bound {
        Some(b) => b,
        None => file.metadata()?.len(),
    };
    let mut changed = false;
    let mut pos = SEGMENT_HEADER_LEN as u64;
    if end < pos {
        return Ok(());
    }
    let mut head = [0u8; SEGMENT_HEADER_LEN];
    file.read_exact_at(&mut head, 0)?;
    if format::check_segment_header(&head).is_err() {
        pos = 0; // not a segment recovery can read: all of it is damage
    }
    while pos < end {
        let _writing = inner.records.write().unwrap_or_else(|e| e.into_inner());
        let header = if end - pos >= RECORD_HEADER_LEN as u64 {
            let mut h = [0u8; RECORD_HEADER_LEN];
            file.read_exact_at(&mut h, pos)?;
            RecordHeader::decode(&h)
                .ok()
                .filter(|h| h.total_len() <= end - pos)
        } else {
            None
        };
        let Some(header) = header else {
            // Damage, or a record cut short at the end (never acknowledged): overwritten as
            // it is, up to the next sound record header (where recovery resumes too).
            let mut rest = vec![0u8; (end - pos) as usize];
            file.read_exact_at(&mut rest, pos)?;
            let stretch = next_record(&rest, 1).unwrap_or(rest.len());
            if r.redact(&mut rest[..stretch]) > 0 {
                file.write_all_at(&rest[..stretch], pos)?;
                report.damaged += 1;
                changed = true;
            }
            pos += stretch as u64;
            continue;
        };
        let mut record = vec![0u8; header.total_len() as usize];
        file.read_exact_at(&mut record, pos)?;
        match scrub_record(&mut record, header, r) {
            Outcome::Unchanged => {}
            Outcome::Rewritten { sound } => {
                file.write_all_at(&record, pos)?;
                if sound {
                    report.records += 1;
                } else {
                    report.damaged += 1;
                }
                changed = true;
            }
            Outcome::Refused(why) => report.problem(path, format!("record at {pos}: {why}")),
        }
        pos += header.total_len();
    }
    if changed {
        file.sync_data()?;
    }
    Ok(())
}

/// What became of one record.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The address is not in it.
    Unchanged,
    /// Changed in the buffer, to be written back; `sound`: every checksum verifies.
    Rewritten { sound: bool },
    /// It holds the address but could not be changed safely (not written back).
    Refused(String),
}

/// Overwrites the address in one whole record (`header` decoded from its start), with new
/// checksums for the parts that were sound.
fn scrub_record(record: &mut [u8], header: RecordHeader, r: &dyn Redactor) -> Outcome {
    let env_end = RECORD_HEADER_LEN + header.envelope_len as usize;
    let env_sound = crc32c::crc32c(&record[RECORD_HEADER_LEN..env_end]) == header.envelope_crc;
    let body_sound = crc32c::crc32c(&record[env_end..]) == header.body_crc;
    let env_changed = if env_sound {
        match scrub_envelope(&mut record[RECORD_HEADER_LEN..env_end], r) {
            Ok(changed) => changed,
            Err(why) => return Outcome::Refused(why),
        }
    } else {
        r.redact(&mut record[RECORD_HEADER_LEN..env_end]) > 0
    };
    let body_changed = r.redact(&mut record[env_end..]) > 0;
    if !env_changed && !body_changed {
        return Outcome::Unchanged;
    }
    let header = RecordHeader {
        envelope_crc: if env_sound {
            crc32c::crc32c(&record[RECORD_HEADER_LEN..env_end])
        } else {
            header.envelope_crc
        },
        body_crc: if body_sound {
            crc32c::crc32c(&record[env_end..])
        } else {
            header.body_crc
        },
        ..header
    };
    record[..RECORD_HEADER_LEN].copy_from_slice(&header.encode());
    let sound = env_sound && body_sound;
    if sound && let Err(e) = format::decode_record(record) {
        return Outcome::Refused(format!("the rewritten record does not read back: {e}"));
    }
    Outcome::Rewritten { sound }
}

/// Overwrites the address in a sound envelope's fields; returns whether anything changed.
fn scrub_envelope(bytes: &mut [u8], r: &dyn Redactor) -> Result<bool, String> {
    let Ok(mut env) = format::decode_envelope(bytes) else {
        // Sound by its checksum, yet unreadable: recovery quarantines it. Overwrite as is.
        return Ok(r.redact(bytes) > 0);
    };
    if !scrub_fields(&mut env, r) {
        return Ok(false);
    }
    let encoded = format::encode_envelope(&env);
    if encoded.len() == bytes.len() {
        bytes.copy_from_slice(&encoded);
        return Ok(true);
    }
    // An envelope of an older version encodes differently now: overwrite it in place, and
    // only if it still reads.
    let mut raw = bytes.to_vec();
    if r.redact(&mut raw) == 0 {
        return Err(
            "an envelope of an older version holds the address in a form \
                    that cannot be overwritten in place"
                .into(),
        );
    }
    format::decode_envelope(&raw)
        .map_err(|e| format!("the overwritten envelope does not read back: {e}"))?;
    bytes.copy_from_slice(&raw);
    Ok(true)
}

/// Overwrites the address in an envelope: the sender and recipients that are it whole
/// (such a recipient is marked done), and any occurrence in the other text fields. Other
/// recipients' addresses are never touched.
fn scrub_fields(env: &mut crate::envelope::Envelope, r: &dyn Redactor) -> bool {
    let mut changed = false;
    if let Some(sender) = &mut env.sender {
        changed |= if r.is_address(sender) {
            overwrite(sender, |b| {
                blank(b);
                1
            })
        } else {
            overwrite(sender, |b| r.redact(b))
        };
    }
    for rcpt in &mut env.recipients {
        let erased = r.is_address(&rcpt.address);
        if erased {
            overwrite(&mut rcpt.address, |b| {
                blank(b);
                1
            });
            rcpt.done = true;
            changed = true;
        }
        if let Some(orcpt) = &mut rcpt.orcpt {
            let found = overwrite(orcpt, |b| r.redact(b));
            if erased && !found {
                // `type;address` in an encoding the search does not know: all of the address.
                overwrite(orcpt, |b| {
                    let start = b.iter().position(|&c| c == b';').map_or(0, |i| i + 1);
                    blank(&mut b[start..]);
                    1
                });
            }
            changed |= found || erased;
        }
    }
    changed |= overwrite(&mut env.account, |b| r.redact(b));
    for field in [&mut env.envid, &mut env.list, &mut env.campaign]
        .into_iter()
        .flatten()
    {
        changed |= overwrite(field, |b| r.redact(b));
    }
    changed
}

/// Applies `f` to the octets of `s` (it may only put ASCII over whole characters); returns
/// whether it reported a change.
fn overwrite(s: &mut String, f: impl FnOnce(&mut [u8]) -> usize) -> bool {
    let mut bytes = std::mem::take(s).into_bytes();
    let n = f(&mut bytes);
    *s = String::from_utf8(bytes)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    n > 0
}

/// Offset of the next sound record header in `data` at or after `from`.
fn next_record(data: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while at < data.len() {
        let i = memchr::memmem::find(&data[at..], format::RECORD_MAGIC)?;
        let pos = at + i;
        if RecordHeader::decode(&data[pos..]).is_ok() {
            return Some(pos);
        }
        at = pos + 1;
    }
    None
}

/// Overwrites the address in the files of `quarantine/`, in place.
fn scrub_quarantine(dir: &Path, r: &dyn Redactor, report: &mut ScrubReport) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => return report.problem(dir, e),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let result = (|| -> std::io::Result<bool> {
            let mut bytes = std::fs::read(&path)?;
            if r.redact(&mut bytes) == 0 {
                return Ok(false);
            }
            let file = OpenOptions::new().write(true).open(&path)?;
            file.write_all_at(&bytes, 0)?;
            file.sync_data()?;
            Ok(true)
        })();
        match result {
            Ok(true) => report.quarantine_files += 1,
            Ok(false) => {}
            Err(e) => report.problem(&path, e),
        }
    }
}

#[cfg(test)]
mod tests;
