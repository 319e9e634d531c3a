//! Start-up recovery: read every segment and recipient journal, rebuild what is still to be
//! delivered, and put damaged bytes aside.
//!
//! Reading never trusts the files: a segment with a damaged header, a record whose header
//! or envelope checksum fails, or a torn tail left by a crash mid-write is copied to
//! `quarantine/` with a log line, and reading resumes at the next sound record, so every
//! record whose own checksums verify is recovered. A record whose header alone is damaged
//! is recovered too when its envelope and body checksums verify with the lengths it states.
//!
//! Damage is repaired in place, never by copying the segment: once its bytes are safely in
//! quarantine (written and synced), a damaged segment header is rewritten, a damaged record
//! header that could be salvaged is rewritten, a damaged stretch is covered by a skip
//! marker (and zeroed), and a torn tail is cut off. None of this needs free space (a torn
//! tail even gives some back), so a spool on a full disk recovers; damage that could not be
//! put aside (the disk is full) is left as it is, reported again at the next start, and a
//! segment holding it is never deleted. A segment file whose creation was cut short
//! (empty, or part of a header) held nothing and is removed. Nothing accepted is dropped
//! without a log line naming it; a crash never stops the relay from starting.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::format::{self, RcptEvent, RcptRecord, RecordHeader};
use super::writer::{Writer, rcpt_path, segment_path};
use super::{Location, SpoolError};
use crate::envelope::{Envelope, QueueId};

/// A stored message and the last known state of each recipient.
#[derive(Debug, Clone)]
pub struct RecoveredMessage {
    pub envelope: Envelope,
    pub loc: Location,
    /// Per recipient: the last journaled event (`None`: never attempted).
    pub events: Vec<Option<RcptEvent>>,
}

impl RecoveredMessage {
    /// Recipients still to deliver.
    pub fn pending(&self) -> impl Iterator<Item = usize> + '_ {
        self.events.iter().enumerate().filter_map(|(i, e)| {
            (!RcptEvent::finished(&self.envelope.recipients[i], *e)).then_some(i)
        })
    }

    pub fn is_finished(&self) -> bool {
        self.pending().next().is_none()
    }
}

/// What start-up found, for the log and for the delivery engine.
#[derive(Debug, Default)]
pub struct RecoveryReport {
    pub messages: Vec<RecoveredMessage>,
    /// Highest message id seen (new ids are allocated above it).
    pub max_id: u64,
    pub segments: usize,
    pub quarantined: usize,
    /// Damaged segments repaired in place.
    pub repaired: usize,
    pub deleted_segments: usize,
}

pub(super) struct SegmentScan {
    id: u64,
    messages: Vec<RecoveredMessage>,
    /// Damage found, in file order.
    damage: Vec<Damage>,
    /// A creation cut short: the file holds nothing (removed at repair).
    stillborn: bool,
    /// The file could not be read: left as it is.
    unreadable: bool,
}

/// One damaged piece of a segment and how it is repaired once it is in quarantine.
struct Damage {
    offset: u64,
    len: u64,
    fix: Fix,
    /// Its bytes are in quarantine, written and synced: it may be repaired.
    saved: bool,
}

enum Fix {
    /// The segment header: written anew.
    SegmentHeader,
    /// A record header whose record verifies by its own envelope and body checksums.
    RecordHeader(RecordHeader),
    /// Damage between records: covered by a skip marker.
    Stretch,
    /// A record cut short at the end (or damage up to the end): cut off.
    Tail,
}

pub(super) struct Scan {
    pub(super) segments: Vec<SegmentScan>,
    pub(super) next_segment: u64,
    queue_dir: PathBuf,
    quarantine: Quarantine,
}

/// Where damaged bytes go (nowhere when only inspecting), and how many pieces went.
struct Quarantine {
    dir: Option<PathBuf>,
    count: usize,
}

impl Quarantine {
    /// Puts a damaged piece aside; returns whether it is safely there.
    fn put(&mut self, segment: u64, offset: u64, bytes: &[u8], why: &str) -> bool {
        self.count += 1;
        let Some(dir) = &self.dir else {
            return false;
        };
        match save(dir, segment, offset, bytes) {
            Ok(saved) => {
                tracing::error!(
                    segment = format!("{segment:016x}"),
                    offset,
                    octets = bytes.len(),
                    reason = why,
                    saved_as = %saved.path.display(),
                    "damaged spool data quarantined"
                );
                if saved.new {
                    crate::metrics::spool_quarantined();
                }
                true
            }
            Err(e) => {
                tracing::error!(
                    segment = format!("{segment:016x}"),
                    offset,
                    octets = bytes.len(),
                    reason = why,
                    error = %e,
                    "damaged spool data found and could not be copied to quarantine; left in place"
                );
                false
            }
        }
    }
}

/// Where [`save`] put a piece.
pub(super) struct Saved {
    pub(super) path: PathBuf,
    /// False: the same bytes were there already.
    pub(super) new: bool,
}

/// Copies damaged bytes to `dir` as `{segment}-{offset}.bad` (0600, synced with the
/// directory). A file of that name with other content is never overwritten (a repair cut
/// short by a crash finds its damage again): the copy then gets a `.N` suffix.
pub(super) fn save(dir: &Path, segment: u64, offset: u64, bytes: &[u8]) -> std::io::Result<Saved> {
    let base = format!("{segment:016x}-{offset:016x}");
    for n in 0..100u32 {
        let path = if n == 0 {
            dir.join(format!("{base}.bad"))
        } else {
            dir.join(format!("{base}.{n}.bad"))
        };
        let mut file = match crate::files::create_new(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if std::fs::read(&path).is_ok_and(|old| old == bytes) {
                    return Ok(Saved { path, new: false });
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        let written = file
            .write_all(bytes)
            .and_then(|()| file.sync_all())
            .and_then(|()| crate::files::sync_parent(&path));
        if let Err(e) = written {
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        return Ok(Saved { path, new: true });
    }
    Err(std::io::Error::other(format!(
        "{}: too many quarantined copies of {base}",
        dir.display()
    )))
}

impl Scan {
    pub(super) fn live_messages(self) -> Vec<RecoveredMessage> {
        self.segments
            .into_iter()
            .flat_map(|s| s.messages)
            .filter(|m| !m.is_finished())
            .collect()
    }
}

fn hex_id(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?;
    (stem.len() == 16)
        .then(|| u64::from_str_radix(stem, 16).ok())
        .flatten()
}

/// Reads the queue directory. With `quarantine` set, damaged bytes are copied there and
/// orphaned journals removed; without it (inspection) nothing is changed.
pub(super) fn scan(queue_dir: &Path, quarantine: Option<&Path>) -> Result<Scan, SpoolError> {
    let mut segments = Vec::new();
    let mut journals = Vec::new();
    let entries = std::fs::read_dir(queue_dir).map_err(|e| SpoolError::open(queue_dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| SpoolError::open(queue_dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(id) = hex_id(&name, ".msg") {
            segments.push(id);
        } else if let Some(id) = hex_id(&name, ".rcpt") {
            journals.push(id);
        } else if quarantine.is_some() {
            tracing::warn!(file = %name, "unexpected file in the spool queue directory; left alone");
        }
    }
    segments.sort_unstable();
    let mut scan = Scan {
        segments: Vec::new(),
        next_segment: segments.last().map_or(1, |id| id + 1),
        queue_dir: queue_dir.to_path_buf(),
        quarantine: Quarantine {
            dir: quarantine.map(Path::to_path_buf),
            count: 0,
        },
    };
    if quarantine.is_some() {
        for id in journals
            .iter()
            .filter(|id| segments.binary_search(id).is_err())
        {
            let _ = std::fs::remove_file(rcpt_path(queue_dir, *id));
        }
    }
    for id in segments {
        let seg = scan.read_segment(id);
        scan.segments.push(seg);
    }
    scan.drop_superseded_copies();
    Ok(scan)
}

impl Scan {
    fn read_segment(&mut self, id: u64) -> SegmentScan {
        let path = segment_path(&self.queue_dir, id);
        let mut seg = SegmentScan {
            id,
            messages: Vec::new(),
            damage: Vec::new(),
            stillborn: false,
            unreadable: false,
        };
        let map = match File::open(&path).and_then(|f| {
            if self.quarantine.dir.is_some() {
                // Written by an older version with the umask's mode: messages are private.
                crate::files::tighten(&f)?;
            }
            if f.metadata()?.len() == 0 {
                return Ok(None);
            }
            // SAFETY: segments are only ever appended to by the writer, never truncated
            // while mapped: the in-place repairs below run after this map is dropped, in the
            // relay that holds the spool lock. The one in-place rewrite (an erasure,
            // `scrub.rs`) keeps every length and runs in that relay too, never during its
            // own recovery; an `inspect` beside it may read a record mid-rewrite, which
            // fails a checksum like any damage.
            unsafe { Mmap::map(&f) }.map(Some)
        }) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot read spool segment; left in place");
                seg.unreadable = true;
                return seg;
            }
        };
        let data: &[u8] = map.as_deref().unwrap_or(&[]);
        if format::is_header_prefix(data) {
            seg.stillborn = true;
            return seg;
        }
        let mut pos = format::SEGMENT_HEADER_LEN;
        if let Err(e) = format::check_segment_header(data) {
            // The records after it have checksums of their own: keep reading them.
            let first = next_sound(data, 0).unwrap_or(data.len());
            let end = first.max(format::SEGMENT_HEADER_LEN).min(data.len());
            self.damaged(
                &mut seg,
                data,
                0,
                end,
                Fix::SegmentHeader,
                &format!("segment header: {e}"),
            );
            pos = end;
        }
        while pos < data.len() {
            pos = self.read_record(&mut seg, data, pos);
        }
        drop(map);
        self.apply_journal(&mut seg);
        seg
    }

    /// Reads what starts at `pos` (a record, a skip marker, or damage); returns where the
    /// next thing starts.
    fn read_record(&mut self, seg: &mut SegmentScan, data: &[u8], pos: usize) -> usize {
        let rest = &data[pos..];
        if let Some(len) = format::decode_skip_marker(rest)
            && len <= rest.len() as u64
        {
            return pos + len as usize; // damage quarantined at an earlier start
        }
        let header = match RecordHeader::decode(rest) {
            Ok(h) if h.total_len() <= rest.len() as u64 => h,
            Ok(_) => {
                self.damaged(
                    seg,
                    data,
                    pos,
                    data.len(),
                    Fix::Tail,
                    "partial record at the end (a write cut short; never acknowledged)",
                );
                return data.len();
            }
            Err(_) if rest.len() < format::RECORD_HEADER_LEN => {
                self.damaged(
                    seg,
                    data,
                    pos,
                    data.len(),
                    Fix::Tail,
                    "partial record at the end (a write cut short; never acknowledged)",
                );
                return data.len();
            }
            Err(e) => {
                let next = next_sound(data, pos + 1).unwrap_or(data.len());
                if let Some(h) = salvage_header(&data[pos..next]) {
                    // Only the header is damaged: the record verifies by its own checksums.
                    let end = pos + format::RECORD_HEADER_LEN;
                    self.damaged(seg, data, pos, end, Fix::RecordHeader(h), &e.to_string());
                    self.found(seg, data, pos, h);
                    // Whatever follows is read as usual (it may be damaged too).
                    return pos + h.total_len() as usize;
                }
                let fix = if next == data.len() {
                    Fix::Tail
                } else {
                    Fix::Stretch
                };
                self.damaged(seg, data, pos, next, fix, &e.to_string());
                return next;
            }
        };
        self.found(seg, data, pos, header);
        pos + header.total_len() as usize
    }

    /// A record with a sound header at `pos`: its message, or damage when its envelope does
    /// not verify.
    fn found(&mut self, seg: &mut SegmentScan, data: &[u8], pos: usize, header: RecordHeader) {
        let total = header.total_len();
        let record = &data[pos..pos + total as usize];
        let env_bytes = &record
            [format::RECORD_HEADER_LEN..format::RECORD_HEADER_LEN + header.envelope_len as usize];
        let envelope = if crc32c::crc32c(env_bytes) != header.envelope_crc {
            Err(format::FormatError::EnvelopeChecksum)
        } else {
            format::decode_envelope(env_bytes)
        };
        match envelope {
            Ok(envelope) => {
                let n = envelope.recipients.len();
                seg.messages.push(RecoveredMessage {
                    envelope,
                    loc: Location {
                        segment: seg.id,
                        offset: pos as u64,
                        len: total,
                    },
                    events: vec![None; n],
                });
            }
            Err(e) => {
                let end = pos + total as usize;
                let fix = if end == data.len() {
                    Fix::Tail
                } else {
                    Fix::Stretch
                };
                self.damaged(seg, data, pos, end, fix, &e.to_string());
            }
        }
    }

    /// Quarantines `data[start..end]` and notes how to repair it.
    fn damaged(
        &mut self,
        seg: &mut SegmentScan,
        data: &[u8],
        start: usize,
        end: usize,
        fix: Fix,
        why: &str,
    ) {
        let saved = self
            .quarantine
            .put(seg.id, start as u64, &data[start..end], why);
        seg.damage.push(Damage {
            offset: start as u64,
            len: (end - start) as u64,
            fix,
            saved,
        });
    }

    fn apply_journal(&mut self, seg: &mut SegmentScan) {
        let path = rcpt_path(&self.queue_dir, seg.id);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot read recipient journal; recipients will be retried");
                return;
            }
        };
        let by_offset: HashMap<u64, usize> = seg
            .messages
            .iter()
            .enumerate()
            .map(|(i, m)| (m.loc.offset, i))
            .collect();
        let mut bad = 0;
        for chunk in bytes.chunks(format::RCPT_RECORD_LEN) {
            let Some(RcptRecord {
                offset,
                rcpt,
                event,
            }) = RcptRecord::decode(chunk)
            else {
                bad += 1;
                continue;
            };
            if let Some(&i) = by_offset.get(&offset)
                && let Some(slot) = seg.messages[i].events.get_mut(rcpt as usize)
            {
                // A final event is never undone by a later deferral record.
                if !slot.is_some_and(|e| e.is_final()) {
                    *slot = Some(event);
                }
            }
        }
        if bad > 0 {
            // A torn last record after a crash is expected; it only means a recipient's
            // latest state is retried.
            tracing::warn!(
                segment = format!("{:016x}", seg.id),
                records = bad,
                "unreadable recipient-journal records ignored"
            );
        }
    }

    /// A message relocated out of a damaged segment exists twice if the relay stopped before
    /// the old segment was deleted; the newer copy is the one that counts.
    fn drop_superseded_copies(&mut self) {
        let mut newest: HashMap<QueueId, u64> = HashMap::new();
        for seg in &self.segments {
            for m in &seg.messages {
                newest.insert(m.envelope.id, seg.id);
            }
        }
        for seg in &mut self.segments {
            let id = seg.id;
            seg.messages
                .retain(|m| newest.get(&m.envelope.id) == Some(&id));
        }
    }
}

/// Offset of the next position at or after `from` that holds a sound record header or skip
/// marker.
fn next_sound(data: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while at < data.len() {
        let pos = at + memchr::memchr(b'O', &data[at..])?;
        let rest = &data[pos..];
        if rest.starts_with(format::RECORD_MAGIC) && RecordHeader::decode(rest).is_ok()
            || rest.starts_with(format::SKIP_MAGIC) && format::decode_skip_marker(rest).is_some()
        {
            return Some(pos);
        }
        at = pos + 1;
    }
    None
}

/// The header of the record at the start of `span` (which reaches up to the next sound
/// record, or the end) when its own header checksum fails but its envelope and body verify
/// with the checksums it states: a flipped bit in the magic, the reserved octets or the
/// header checksum, or in one of the two lengths (then inferred from where the next record
/// starts).
fn salvage_header(span: &[u8]) -> Option<RecordHeader> {
    if span.len() < format::RECORD_HEADER_LEN {
        return None;
    }
    let envelope_len = u32::from_le_bytes(span[4..8].try_into().ok()?);
    let body_len = u64::from_le_bytes(span[8..16].try_into().ok()?);
    let stated = RecordHeader {
        envelope_len,
        body_len,
        envelope_crc: u32::from_le_bytes(span[16..20].try_into().ok()?),
        body_crc: u32::from_le_bytes(span[20..24].try_into().ok()?),
    };
    let room = (span.len() - format::RECORD_HEADER_LEN) as u64;
    let mut candidates = vec![stated];
    if let Some(body_len) = room.checked_sub(u64::from(envelope_len)) {
        candidates.push(RecordHeader { body_len, ..stated });
    }
    if let Some(env) = room
        .checked_sub(body_len)
        .and_then(|e| u32::try_from(e).ok())
    {
        candidates.push(RecordHeader {
            envelope_len: env,
            ..stated
        });
    }
    candidates.into_iter().find(|h| {
        let Ok(total) = usize::try_from(h.total_len()) else {
            return false;
        };
        if total > span.len() {
            return false;
        }
        let env_end = format::RECORD_HEADER_LEN + h.envelope_len as usize;
        let env = &span[format::RECORD_HEADER_LEN..env_end];
        crc32c::crc32c(env) == h.envelope_crc
            && crc32c::crc32c(&span[env_end..total]) == h.body_crc
            && format::decode_envelope(env).is_ok()
    })
}

/// Finishes recovery with the writer: removes finished and stillborn segments, repairs
/// damaged ones in place, and registers the rest.
pub(super) fn repair(scan: Scan, writer: &mut Writer) -> Result<RecoveryReport, SpoolError> {
    let mut report = RecoveryReport {
        segments: scan.segments.len(),
        ..RecoveryReport::default()
    };
    for seg in scan.segments {
        if seg.unreadable {
            continue;
        }
        if seg.stillborn {
            tracing::warn!(
                segment = format!("{:016x}", seg.id),
                "spool segment whose creation was cut short (it held nothing); removed"
            );
            writer.delete_segment(seg.id);
            continue;
        }
        for m in &seg.messages {
            report.max_id = report.max_id.max(m.envelope.id.get());
        }
        let all_saved = seg.damage.iter().all(|d| d.saved);
        let live: Vec<RecoveredMessage> = seg
            .messages
            .into_iter()
            .filter(|m| !m.is_finished())
            .collect();
        if live.is_empty() {
            if all_saved {
                writer.delete_segment(seg.id);
                report.deleted_segments += 1;
            }
            continue;
        }
        if !seg.damage.is_empty() {
            let path = segment_path(&scan.queue_dir, seg.id);
            match repair_in_place(&path, &seg.damage) {
                Ok(()) if all_saved => report.repaired += 1,
                Ok(()) => {}
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot repair a damaged spool segment in place; its damage is reported again at the next start");
                }
            }
        }
        if let Err(e) = std::fs::File::open(rcpt_path(&scan.queue_dir, seg.id))
            .and_then(|f| crate::files::tighten(&f))
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(segment = seg.id, error = %e, "cannot make a recipient journal private");
        }
        writer.adopt(seg.id, live.len() as u64);
        report.messages.extend(live);
    }
    report.quarantined = scan.quarantine.count;
    Ok(report)
}

/// Repairs the damage that is safely in quarantine (see the module doc), then syncs. Writes
/// only where the file has octets already: no free space is needed.
fn repair_in_place(path: &Path, damage: &[Damage]) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    let mut cut = None;
    for d in damage.iter().filter(|d| d.saved) {
        match &d.fix {
            Fix::SegmentHeader => {
                file.write_all_at(&format::segment_header(), 0)?;
                let covered = d.len.saturating_sub(format::SEGMENT_HEADER_LEN as u64);
                cover(&file, format::SEGMENT_HEADER_LEN as u64, covered)?;
            }
            Fix::RecordHeader(h) => file.write_all_at(&h.encode(), d.offset)?,
            Fix::Stretch => cover(&file, d.offset, d.len)?,
            Fix::Tail => cut = Some(d.offset.max(format::SEGMENT_HEADER_LEN as u64)),
        }
    }
    if let Some(at) = cut {
        file.set_len(at)?;
    }
    file.sync_data()
}

/// Covers `len` octets of damage at `offset` with a skip marker and zeroes the rest. The
/// marker goes first: a crash in between leaves a stretch that reads as skipped. A stretch
/// too short for a marker is left (and reported again at the next start).
fn cover(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    if len < format::SKIP_LEN as u64 {
        if len > 0 {
            tracing::warn!(
                offset,
                octets = len,
                "damaged stretch too short to mark; left in place"
            );
        }
        return Ok(());
    }
    file.write_all_at(&format::skip_marker(len), offset)?;
    let zeros = vec![0u8; 1 << 16];
    let mut at = offset + format::SKIP_LEN as u64;
    let end = offset + len;
    while at < end {
        let n = (end - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}
