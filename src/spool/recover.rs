//! Start-up recovery: read every segment and recipient journal, rebuild what is still to be
//! delivered, and put damaged bytes aside.
//!
//! Reading never trusts the files: a segment with a foreign header, a record whose checksum
//! fails, or a torn tail left by a crash mid-write is copied to `quarantine/` with a log
//! line, and reading resumes at the next good record. A segment that had damage is not
//! written around: its live messages are copied into a fresh segment and the old file is
//! deleted, so the same damage is never reported twice. Nothing accepted is dropped without
//! a log line naming it; a crash never stops the relay from starting.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::format::{self, RcptEvent, RcptRecord, RecordHeader};
use super::writer::{Writer, rcpt_path, segment_path};
use super::{Envelope, Location, SpoolError};

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
        self.events
            .iter()
            .enumerate()
            .filter_map(|(i, e)| (!self.envelope.recipients[i].is_done(*e)).then_some(i))
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
    pub relocated: usize,
    pub deleted_segments: usize,
}

pub(super) struct SegmentScan {
    id: u64,
    map: Option<Mmap>,
    messages: Vec<RecoveredMessage>,
    damaged: bool,
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
    fn put(&mut self, segment: u64, offset: u64, bytes: &[u8], why: &str) {
        self.count += 1;
        let Some(dir) = &self.dir else {
            return;
        };
        let path = dir.join(format!("{segment:016x}-{offset:016x}.bad"));
        match std::fs::write(&path, bytes) {
            Ok(()) => tracing::error!(
                segment = format!("{segment:016x}"),
                offset,
                octets = bytes.len(),
                reason = why,
                saved_as = %path.display(),
                "damaged spool data quarantined"
            ),
            Err(e) => tracing::error!(
                segment = format!("{segment:016x}"),
                offset,
                reason = why,
                error = %e,
                "damaged spool data found and could not be copied to quarantine"
            ),
        }
    }
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
            map: None,
            messages: Vec::new(),
            damaged: false,
        };
        let map = match File::open(&path).and_then(|f| {
            if f.metadata()?.len() == 0 {
                return Ok(None);
            }
            // SAFETY: segments are only ever appended to, never truncated, so the mapped
            // range stays valid while the map lives. The one in-place rewrite (an erasure,
            // `scrub.rs`) keeps every length and runs in the relay that holds the spool
            // lock, never during its own recovery; an `inspect` beside it may read a record
            // mid-rewrite, which fails a checksum like any damage.
            unsafe { Mmap::map(&f) }.map(Some)
        }) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot read spool segment; left in place");
                return seg;
            }
        };
        let data: &[u8] = map.as_deref().unwrap_or(&[]);
        if let Err(e) = format::check_segment_header(data) {
            self.quarantine
                .put(id, 0, data, &format!("segment header: {e}"));
            seg.damaged = true;
            seg.map = map;
            return seg;
        }
        let mut pos = format::SEGMENT_HEADER_LEN;
        while pos < data.len() {
            let rest = &data[pos..];
            let decoded = RecordHeader::decode(rest);
            // A record that does not fit in what is left is the tail of a write cut short.
            let partial = match &decoded {
                Ok(h) => h.total_len() > rest.len() as u64,
                Err(_) => rest.len() < format::RECORD_HEADER_LEN,
            };
            if partial {
                self.quarantine.put(
                    id,
                    pos as u64,
                    rest,
                    "partial record at the end (a write cut short; never acknowledged)",
                );
                seg.damaged = true;
                break;
            }
            let header = match decoded {
                Ok(h) => h,
                Err(e) => {
                    let next = next_record(data, pos + 1).unwrap_or(data.len());
                    self.quarantine
                        .put(id, pos as u64, &data[pos..next], &e.to_string());
                    seg.damaged = true;
                    pos = next;
                    continue;
                }
            };
            let total = header.total_len();
            let record = &rest[..total as usize];
            let env_bytes = &record[format::RECORD_HEADER_LEN
                ..format::RECORD_HEADER_LEN + header.envelope_len as usize];
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
                            segment: id,
                            offset: pos as u64,
                            len: total,
                        },
                        events: vec![None; n],
                    });
                }
                Err(e) => {
                    self.quarantine.put(id, pos as u64, record, &e.to_string());
                    seg.damaged = true;
                }
            }
            pos += total as usize;
        }
        self.apply_journal(&mut seg);
        seg.map = map;
        seg
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
        let mut newest: HashMap<u64, u64> = HashMap::new();
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

/// Offset of the next position at or after `from` that holds a valid record header.
fn next_record(data: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while let Some(i) = memchr::memmem::find(&data[at..], format::RECORD_MAGIC) {
        let pos = at + i;
        if RecordHeader::decode(&data[pos..]).is_ok() {
            return Some(pos);
        }
        at = pos + 1;
    }
    None
}

/// Finishes recovery with the writer: deletes finished segments, moves live messages out of
/// damaged ones, and registers the rest.
pub(super) fn repair(scan: Scan, writer: &mut Writer) -> Result<RecoveryReport, SpoolError> {
    let mut report = RecoveryReport {
        segments: scan.segments.len(),
        ..RecoveryReport::default()
    };
    let mut quarantine = scan.quarantine;
    for seg in scan.segments {
        for m in &seg.messages {
            report.max_id = report.max_id.max(m.envelope.id);
        }
        let live: Vec<RecoveredMessage> = seg
            .messages
            .into_iter()
            .filter(|m| !m.is_finished())
            .collect();
        if live.is_empty() {
            writer.delete_segment(seg.id);
            report.deleted_segments += 1;
            continue;
        }
        if !seg.damaged {
            writer.adopt(seg.id, live.len() as u64);
            report.messages.extend(live);
            continue;
        }
        // Copy the live messages of a damaged segment into a fresh one.
        let data: &[u8] = seg.map.as_deref().unwrap_or(&[]);
        let mut moved = Vec::new();
        for mut m in live {
            let record = &data[m.loc.offset as usize..(m.loc.offset + m.loc.len) as usize];
            let body = match format::record_body(record) {
                Ok(range) => &record[range],
                Err(e) => {
                    tracing::error!(id = %super::format_id(m.envelope.id), error = %e, "message content damaged; quarantined");
                    quarantine.put(seg.id, m.loc.offset, record, &e.to_string());
                    continue;
                }
            };
            for (i, r) in m.envelope.recipients.iter_mut().enumerate() {
                r.done = r.done || m.events[i].is_some_and(|e| e.is_final());
            }
            writer
                .ensure_active()
                .map_err(|e| SpoolError::Write(std::sync::Arc::new(e)))?;
            let head = format::encode_record_head(&m.envelope, body);
            m.loc = writer.append(&head, body);
            moved.push(m);
        }
        writer.commit().map_err(SpoolError::Write)?;
        report.relocated += moved.len();
        report.messages.extend(moved);
        writer.delete_segment(seg.id);
        report.deleted_segments += 1;
    }
    report.quarantined = quarantine.count;
    Ok(report)
}
