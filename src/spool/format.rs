//! The spool's on-disk format, pure encode/decode with no file I/O.
//!
//! A *segment* (`{id:016x}.msg`) is an append-only file: a 16-octet file header, then message
//! records back to back. A record is a 32-octet header (magic, lengths, three CRC32C
//! checksums: header, envelope, body), the encoded [`Envelope`], then the message body.
//! The header checksum makes the lengths trustworthy, so a reader can skip a body without
//! reading it (recovery reads envelopes only) and can find the next record after a damaged
//! envelope; after a damaged header it searches for the next magic.
//!
//! Damage that recovery found and copied to quarantine is covered in place by a *skip
//! marker* (32 octets: magic `ORSK`, the length of the stretch it covers, a CRC32C), so the
//! segment reads cleanly afterwards without being copied anywhere (see `recover.rs`).
//!
//! Beside each segment, `{id:016x}.rcpt` holds fixed-size 32-octet [`RcptRecord`]s: what
//! happened to each recipient since the message was stored. Everything is little-endian.

use crate::envelope::Stream;
use crate::envelope::{Envelope, QueueId, Recipient};
use crate::smtp::params::{BodyType, Notify, Ret};

pub const SEGMENT_MAGIC: &[u8; 8] = b"ORSPOOL\0";
pub const SEGMENT_VERSION: u32 = 1;
pub const SEGMENT_HEADER_LEN: usize = 16;

pub const RECORD_MAGIC: &[u8; 4] = b"ORM1";
pub const RECORD_HEADER_LEN: usize = 32;
pub const SKIP_MAGIC: &[u8; 4] = b"ORSK";
/// A skip marker is as long as a record header; it covers at least itself.
pub const SKIP_LEN: usize = 32;
/// Version 2 added stream, list and campaign; version 1 envelopes (transactional, no list)
/// are still read.
const ENVELOPE_VERSION: u8 = 2;

pub const RCPT_RECORD_LEN: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("not a spool segment (bad magic)")]
    BadMagic,
    #[error("unsupported segment version {0}")]
    BadVersion(u32),
    #[error("record header checksum mismatch")]
    HeaderChecksum,
    #[error("envelope checksum mismatch")]
    EnvelopeChecksum,
    #[error("body checksum mismatch")]
    BodyChecksum,
    #[error("record truncated: needs {needed} octets, {available} present")]
    Truncated { needed: u64, available: u64 },
    #[error("envelope malformed: {0}")]
    Envelope(&'static str),
}

pub fn segment_header() -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    let crc = crc32c::crc32c(&h[..12]);
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    h
}

pub fn check_segment_header(data: &[u8]) -> Result<(), FormatError> {
    if data.len() < SEGMENT_HEADER_LEN || &data[..8] != SEGMENT_MAGIC {
        return Err(FormatError::BadMagic);
    }
    let version = u32::from_le_bytes(data[8..12].try_into().unwrap());
    let crc = u32::from_le_bytes(data[12..16].try_into().unwrap());
    if crc != crc32c::crc32c(&data[..12]) {
        return Err(FormatError::BadMagic);
    }
    if version != SEGMENT_VERSION {
        return Err(FormatError::BadVersion(version));
    }
    Ok(())
}

/// Whether `data` (shorter than a segment header) is the start of one: a segment whose
/// creation was cut short (a full disk, a crash) before its header was written whole.
pub fn is_header_prefix(data: &[u8]) -> bool {
    data.len() < SEGMENT_HEADER_LEN && segment_header().starts_with(data)
}

/// A skip marker covering `len` octets (itself included) of quarantined damage.
pub fn skip_marker(len: u64) -> [u8; SKIP_LEN] {
    debug_assert!(len >= SKIP_LEN as u64);
    let mut m = [0u8; SKIP_LEN];
    m[..4].copy_from_slice(SKIP_MAGIC);
    m[8..16].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c(&m[..28]);
    m[28..32].copy_from_slice(&crc.to_le_bytes());
    m
}

/// The length a sound skip marker at the start of `data` covers.
pub fn decode_skip_marker(data: &[u8]) -> Option<u64> {
    if data.len() < SKIP_LEN || &data[..4] != SKIP_MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(data[28..32].try_into().unwrap());
    if crc != crc32c::crc32c(&data[..28]) {
        return None;
    }
    let len = u64::from_le_bytes(data[8..16].try_into().unwrap());
    (len >= SKIP_LEN as u64).then_some(len)
}

/// The fixed part of a message record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub envelope_len: u32,
    pub body_len: u64,
    pub envelope_crc: u32,
    pub body_crc: u32,
}

impl RecordHeader {
    pub fn total_len(&self) -> u64 {
        RECORD_HEADER_LEN as u64 + u64::from(self.envelope_len) + self.body_len
    }

    pub fn encode(&self) -> [u8; RECORD_HEADER_LEN] {
        let mut h = [0u8; RECORD_HEADER_LEN];
        h[..4].copy_from_slice(RECORD_MAGIC);
        h[4..8].copy_from_slice(&self.envelope_len.to_le_bytes());
        h[8..16].copy_from_slice(&self.body_len.to_le_bytes());
        h[16..20].copy_from_slice(&self.envelope_crc.to_le_bytes());
        h[20..24].copy_from_slice(&self.body_crc.to_le_bytes());
        // 24..28 reserved (zero)
        let crc = crc32c::crc32c(&h[..28]);
        h[28..32].copy_from_slice(&crc.to_le_bytes());
        h
    }

    pub fn decode(h: &[u8]) -> Result<RecordHeader, FormatError> {
        if h.len() < RECORD_HEADER_LEN || &h[..4] != RECORD_MAGIC {
            return Err(FormatError::HeaderChecksum);
        }
        let crc = u32::from_le_bytes(h[28..32].try_into().unwrap());
        if crc != crc32c::crc32c(&h[..28]) {
            return Err(FormatError::HeaderChecksum);
        }
        Ok(RecordHeader {
            envelope_len: u32::from_le_bytes(h[4..8].try_into().unwrap()),
            body_len: u64::from_le_bytes(h[8..16].try_into().unwrap()),
            envelope_crc: u32::from_le_bytes(h[16..20].try_into().unwrap()),
            body_crc: u32::from_le_bytes(h[20..24].try_into().unwrap()),
        })
    }
}

/// Encodes a record's header and envelope (the body follows them on disk unchanged).
pub fn encode_record_head(envelope: &Envelope, body: &[u8]) -> Vec<u8> {
    let env = encode_envelope(envelope);
    let header = RecordHeader {
        envelope_len: env.len() as u32,
        body_len: body.len() as u64,
        envelope_crc: crc32c::crc32c(&env),
        body_crc: crc32c::crc32c(body),
    };
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN + env.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(&env);
    out
}

/// The header of a whole record read back from disk, checked and with the record long
/// enough for the lengths it states.
fn checked_header(record: &[u8]) -> Result<RecordHeader, FormatError> {
    let header = RecordHeader::decode(record)?;
    let needed = header.total_len();
    if (record.len() as u64) < needed {
        return Err(FormatError::Truncated {
            needed,
            available: record.len() as u64,
        });
    }
    Ok(header)
}

/// Checks a whole record's header and body checksums and returns where its body is, without
/// decoding the envelope (the delivery path already has it in memory).
pub fn record_body(record: &[u8]) -> Result<std::ops::Range<usize>, FormatError> {
    let header = checked_header(record)?;
    let start = RECORD_HEADER_LEN + header.envelope_len as usize;
    let range = start..start + header.body_len as usize;
    if crc32c::crc32c(&record[range.clone()]) != header.body_crc {
        return Err(FormatError::BodyChecksum);
    }
    Ok(range)
}

/// Splits a whole record into envelope and body, checking every checksum.
pub fn decode_record(record: &[u8]) -> Result<(Envelope, &[u8]), FormatError> {
    let header = checked_header(record)?;
    let env_bytes = &record[RECORD_HEADER_LEN..RECORD_HEADER_LEN + header.envelope_len as usize];
    if crc32c::crc32c(env_bytes) != header.envelope_crc {
        return Err(FormatError::EnvelopeChecksum);
    }
    let body = record_body(record)?;
    Ok((decode_envelope(env_bytes)?, &record[body]))
}

/// The envelope of a whole record whose header and envelope verify, whatever its body:
/// what a message whose content was damaged can still be returned to its sender with.
pub fn salvage_envelope(record: &[u8]) -> Option<Envelope> {
    let header = checked_header(record).ok()?;
    let env_bytes = &record[RECORD_HEADER_LEN..RECORD_HEADER_LEN + header.envelope_len as usize];
    if crc32c::crc32c(env_bytes) != header.envelope_crc {
        return None;
    }
    decode_envelope(env_bytes).ok()
}

// ---- envelope ---------------------------------------------------------------------------

const FLAG_SMTPUTF8: u8 = 1;
const FLAG_8BITMIME: u8 = 2;
const FLAG_EIGHT_BIT_CONTENT: u8 = 4;
const FLAG_GENERATED_DSN: u8 = 8;

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).expect("envelope strings are bounded by SMTP limits");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

pub fn encode_envelope(e: &Envelope) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + e.recipients.len() * 40);
    out.push(ENVELOPE_VERSION);
    out.extend_from_slice(&e.id.get().to_le_bytes());
    out.extend_from_slice(&e.received_at.to_le_bytes());
    let mut flags = 0;
    if e.smtputf8 {
        flags |= FLAG_SMTPUTF8;
    }
    if e.body_type == BodyType::EightBitMime {
        flags |= FLAG_8BITMIME;
    }
    if e.eight_bit_content {
        flags |= FLAG_EIGHT_BIT_CONTENT;
    }
    if e.generated_dsn {
        flags |= FLAG_GENERATED_DSN;
    }
    out.push(flags);
    out.push(match e.ret {
        None => 0,
        Some(Ret::Full) => 1,
        Some(Ret::Headers) => 2,
    });
    put_str(&mut out, &e.account);
    put_str(&mut out, e.sender.as_deref().unwrap_or(""));
    put_str(&mut out, e.envid.as_deref().unwrap_or(""));
    out.push(match e.stream {
        Stream::Transactional => 0,
        Stream::Marketing => 1,
    });
    put_str(&mut out, e.list.as_deref().unwrap_or(""));
    put_str(&mut out, e.campaign.as_deref().unwrap_or(""));
    out.extend_from_slice(&(e.recipients.len() as u32).to_le_bytes());
    for r in &e.recipients {
        put_str(&mut out, &r.address);
        // bit 7: NOTIFY was given explicitly; bits 0-2: Notify::bits
        out.push(r.notify.map_or(0, |n| 0x80 | n.bits()));
        put_str(&mut out, r.orcpt.as_deref().unwrap_or(""));
        out.push(u8::from(r.done));
    }
    out
}

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or(FormatError::Envelope("truncated"))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn string(&mut self) -> Result<String, FormatError> {
        let len = u16::from_le_bytes(self.take(2)?.try_into().unwrap()) as usize;
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| FormatError::Envelope("not UTF-8"))
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

pub fn decode_envelope(data: &[u8]) -> Result<Envelope, FormatError> {
    let mut c = Cursor { data, pos: 0 };
    let version = c.u8()?;
    if version != 1 && version != ENVELOPE_VERSION {
        return Err(FormatError::Envelope("unknown envelope version"));
    }
    let id = c.u64()?;
    let received_at = c.u64()?;
    let flags = c.u8()?;
    let ret = match c.u8()? {
        0 => None,
        1 => Some(Ret::Full),
        2 => Some(Ret::Headers),
        _ => return Err(FormatError::Envelope("bad RET")),
    };
    let account = c.string()?;
    let sender = non_empty(c.string()?);
    let envid = non_empty(c.string()?);
    let (stream, list, campaign) = if version >= 2 {
        let stream = match c.u8()? {
            0 => Stream::Transactional,
            1 => Stream::Marketing,
            _ => return Err(FormatError::Envelope("bad stream")),
        };
        (stream, non_empty(c.string()?), non_empty(c.string()?))
    } else {
        (Stream::Transactional, None, None)
    };
    let n = c.u32()? as usize;
    if n == 0 || n > 1_000_000 {
        return Err(FormatError::Envelope("bad recipient count"));
    }
    let mut recipients = Vec::with_capacity(n);
    for _ in 0..n {
        let address = c.string()?;
        let notify_byte = c.u8()?;
        let orcpt = non_empty(c.string()?);
        let done = c.u8()? != 0;
        recipients.push(Recipient {
            address,
            notify: (notify_byte & 0x80 != 0).then(|| Notify::from_bits(notify_byte & 7)),
            orcpt,
            done,
        });
    }
    if c.pos != data.len() {
        return Err(FormatError::Envelope("trailing octets"));
    }
    Ok(Envelope {
        id: QueueId(id),
        received_at,
        account,
        sender,
        envid,
        ret,
        body_type: if flags & FLAG_8BITMIME != 0 {
            BodyType::EightBitMime
        } else {
            BodyType::SevenBit
        },
        smtputf8: flags & FLAG_SMTPUTF8 != 0,
        eight_bit_content: flags & FLAG_EIGHT_BIT_CONTENT != 0,
        generated_dsn: flags & FLAG_GENERATED_DSN != 0,
        stream,
        list,
        campaign,
        recipients,
    })
}

// ---- recipient state records ------------------------------------------------------------

/// What happened to one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcptEvent {
    /// Accepted by the next hop.
    Delivered,
    /// Permanently failed (bounced, expired, or removed by an operator).
    Failed,
    /// Temporarily failed; try again at `next_attempt` (unix ms).
    Deferred {
        attempts: u16,
        next_attempt: u64,
        delay_notified: bool,
    },
}

impl RcptEvent {
    /// Whether a recipient is finished: marked done when its record was written, or
    /// journaled as delivered or failed since (`last` is its last journaled event).
    pub fn finished(r: &Recipient, last: Option<RcptEvent>) -> bool {
        r.done || last.is_some_and(|e| e.is_final())
    }

    pub fn is_final(&self) -> bool {
        !matches!(self, RcptEvent::Deferred { .. })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RcptRecord {
    /// Offset of the message's record in its segment.
    pub offset: u64,
    pub rcpt: u32,
    pub event: RcptEvent,
}

impl RcptRecord {
    pub fn encode(&self) -> [u8; RCPT_RECORD_LEN] {
        let mut r = [0u8; RCPT_RECORD_LEN];
        r[..8].copy_from_slice(&self.offset.to_le_bytes());
        r[8..12].copy_from_slice(&self.rcpt.to_le_bytes());
        let (kind, flags, attempts, next) = match self.event {
            RcptEvent::Delivered => (1u8, 0u8, 0u16, 0u64),
            RcptEvent::Failed => (2, 0, 0, 0),
            RcptEvent::Deferred {
                attempts,
                next_attempt,
                delay_notified,
            } => (3, u8::from(delay_notified), attempts, next_attempt),
        };
        r[12] = kind;
        r[13] = flags;
        r[14..16].copy_from_slice(&attempts.to_le_bytes());
        r[16..24].copy_from_slice(&next.to_le_bytes());
        // 24..28 reserved
        let crc = crc32c::crc32c(&r[..28]);
        r[28..32].copy_from_slice(&crc.to_le_bytes());
        r
    }

    /// `None` for a damaged record (a torn write at the end of the file after a crash).
    pub fn decode(r: &[u8]) -> Option<RcptRecord> {
        if r.len() < RCPT_RECORD_LEN {
            return None;
        }
        let crc = u32::from_le_bytes(r[28..32].try_into().unwrap());
        if crc != crc32c::crc32c(&r[..28]) {
            return None;
        }
        let event = match r[12] {
            1 => RcptEvent::Delivered,
            2 => RcptEvent::Failed,
            3 => RcptEvent::Deferred {
                attempts: u16::from_le_bytes(r[14..16].try_into().unwrap()),
                next_attempt: u64::from_le_bytes(r[16..24].try_into().unwrap()),
                delay_notified: r[13] & 1 != 0,
            },
            _ => return None,
        };
        Some(RcptRecord {
            offset: u64::from_le_bytes(r[..8].try_into().unwrap()),
            rcpt: u32::from_le_bytes(r[8..12].try_into().unwrap()),
            event,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Envelope {
        Envelope {
            id: QueueId(0x1234_5678_9abc),
            received_at: 1_700_000_000_000,
            account: "shop".into(),
            sender: Some("bounce@shop.example".into()),
            envid: Some("env-1".into()),
            ret: Some(Ret::Headers),
            body_type: BodyType::EightBitMime,
            smtputf8: true,
            eight_bit_content: true,
            generated_dsn: false,
            stream: Stream::Marketing,
            list: Some("news".into()),
            campaign: Some("spring-sale".into()),
            recipients: vec![
                Recipient {
                    address: "a@x.example".into(),
                    notify: Some(Notify {
                        success: true,
                        failure: true,
                        delay: false,
                    }),
                    orcpt: Some("rfc822;a@x.example".into()),
                    done: false,
                },
                Recipient {
                    address: "ü@y.example".into(),
                    notify: None,
                    orcpt: None,
                    done: true,
                },
            ],
        }
    }

    #[test]
    fn version_1_envelopes_are_still_read() {
        let mut env = sample();
        env.stream = Stream::Transactional;
        env.list = None;
        env.campaign = None;
        let v2 = encode_envelope(&env);
        // Version 1 had no stream octet and no list and campaign strings after ENVID.
        let tail = 1 + 2 + 2;
        let at = 1 + 8 + 8 + 1 + 1 + (2 + 4) + (2 + 19) + (2 + 5);
        assert_eq!(&v2[at..at + tail], &[0, 0, 0, 0, 0]);
        let mut v1 = [&v2[..at], &v2[at + tail..]].concat();
        v1[0] = 1;
        assert_eq!(decode_envelope(&v1).unwrap(), env);
    }

    #[test]
    fn record_roundtrip() {
        let env = sample();
        let body = b"Subject: hi\r\n\r\nhello\r\n";
        let mut rec = encode_record_head(&env, body);
        rec.extend_from_slice(body);
        let (back, b) = decode_record(&rec).unwrap();
        assert_eq!(back, env);
        assert_eq!(b, body);
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let env = sample();
        let body = b"body\r\n";
        let mut rec = encode_record_head(&env, body);
        rec.extend_from_slice(body);
        for i in 0..rec.len() {
            for bit in 0..8 {
                let mut bad = rec.clone();
                bad[i] ^= 1 << bit;
                // reserved header octets are covered by the header checksum too
                assert!(
                    decode_record(&bad).is_err(),
                    "flip at {i}.{bit} not detected"
                );
            }
        }
        assert!(matches!(
            decode_record(&rec[..rec.len() - 1]),
            Err(FormatError::Truncated { .. })
        ));
    }

    #[test]
    fn skip_markers_and_header_prefixes() {
        let m = skip_marker(4096);
        assert_eq!(decode_skip_marker(&m), Some(4096));
        for i in 0..SKIP_LEN {
            let mut bad = m;
            bad[i] ^= 0x10;
            assert_eq!(decode_skip_marker(&bad), None, "flip at {i}");
        }
        assert_eq!(decode_skip_marker(&skip_marker(32)[..31]), None);
        let h = segment_header();
        assert!(is_header_prefix(&[]) && is_header_prefix(&h[..7]));
        assert!(!is_header_prefix(&h) && !is_header_prefix(b"ORSPOOX"));
    }

    #[test]
    fn a_damaged_body_leaves_the_envelope_readable() {
        let env = sample();
        let body = b"Subject: hi\r\n\r\nhello\r\n";
        let mut rec = encode_record_head(&env, body);
        rec.extend_from_slice(body);
        let n = rec.len();
        rec[n - 3] ^= 1;
        assert_eq!(decode_record(&rec).err(), Some(FormatError::BodyChecksum));
        assert_eq!(salvage_envelope(&rec), Some(env));
        rec[RECORD_HEADER_LEN + 3] ^= 1;
        assert_eq!(salvage_envelope(&rec), None);
    }

    #[test]
    fn segment_header_checks() {
        let h = segment_header();
        check_segment_header(&h).unwrap();
        let mut bad = h;
        bad[3] = b'X';
        assert_eq!(check_segment_header(&bad), Err(FormatError::BadMagic));
        assert_eq!(check_segment_header(b"short"), Err(FormatError::BadMagic));
    }

    #[test]
    fn rcpt_records() {
        let r = RcptRecord {
            offset: 16,
            rcpt: 3,
            event: RcptEvent::Deferred {
                attempts: 4,
                next_attempt: 99,
                delay_notified: true,
            },
        };
        let enc = r.encode();
        assert_eq!(RcptRecord::decode(&enc), Some(r));
        let mut bad = enc;
        bad[0] ^= 1;
        assert_eq!(RcptRecord::decode(&bad), None);
        assert_eq!(RcptRecord::decode(&enc[..10]), None);
    }
}
