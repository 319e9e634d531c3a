//! DATA and BDAT reception, fed in random splits.
//!
//! Checks: only `<CR><LF>.<CR><LF>` (or a `.` line first) ends DATA, wherever the pieces
//! are cut; the result does not depend on the cuts (nor the content, within the size
//! limit); stored content never exceeds the size limit (BDAT may add the CRLF that ends a
//! last line); the report's line checks agree
//! with the stored content; dot-stuffing round-trips for clean content.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use optin_relay::smtp::data::{BdatReceiver, ContentReport, DataReceiver, DataStatus};
use optin_relay::smtp::encode::dot_stuff;

#[derive(Debug, Arbitrary)]
struct Input {
    max_size: u16,
    max_line: u16,
    cuts: Vec<u8>,
    wire: Vec<u8>,
}

/// `wire` in pieces of the lengths `cuts` says (cycled; 0 means one octet).
fn pieces<'a>(wire: &'a [u8], cuts: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut pos = 0;
    let mut n = 0;
    std::iter::from_fn(move || {
        if pos >= wire.len() {
            return None;
        }
        let len = cuts
            .get(n % cuts.len().max(1))
            .map_or(wire.len(), |&c| usize::from(c).max(1));
        n += 1;
        let piece = &wire[pos..(pos + len).min(wire.len())];
        pos += piece.len();
        Some(piece)
    })
}

/// Feeds DATA as the session does (unused octets stay buffered); returns the content, the
/// report and where the data ended.
fn data(
    wire: &[u8],
    cuts: &[u8],
    max_size: u64,
    max_line: usize,
) -> (Vec<u8>, ContentReport, Option<usize>) {
    let mut rx = DataReceiver::new(max_size, max_line);
    let (mut buf, mut out, mut consumed) = (Vec::new(), Vec::new(), 0);
    for piece in pieces(wire, cuts) {
        buf.extend_from_slice(piece);
        let (used, status) = rx.feed(&buf, &mut out);
        assert!(used <= buf.len());
        buf.drain(..used);
        consumed += used;
        if status == DataStatus::Done {
            return (out, rx.report(), Some(consumed));
        }
    }
    (out, rx.report(), None)
}

fn bare_ending(content: &[u8]) -> bool {
    content.iter().enumerate().any(|(i, &c)| {
        (c == b'\r' && content.get(i + 1) != Some(&b'\n'))
            || (c == b'\n' && (i == 0 || content[i - 1] != b'\r'))
    })
}

/// A line (between LFs) with more than `max_line` octets other than CR.
fn too_long(content: &[u8], max_line: usize) -> bool {
    content
        .split(|&b| b == b'\n')
        .any(|line| line.iter().filter(|&&c| c != b'\r').count() > max_line)
}

fuzz_target!(|input: Input| {
    let max_size = u64::from(input.max_size);
    let max_line = usize::from(input.max_line % 1200).max(1);
    let wire = &input.wire;

    // DATA ends at the first <CR><LF>.<CR><LF>, or at a `.` line that comes first.
    let expected_end = if wire.starts_with(b".\r\n") {
        Some(3)
    } else {
        wire.windows(5)
            .position(|w| w == b"\r\n.\r\n")
            .map(|at| at + 5)
    };
    let (out, report, end) = data(wire, &input.cuts, max_size, max_line);
    assert_eq!(end, expected_end);
    let (whole, whole_report, whole_end) = data(wire, &[], max_size, max_line);
    assert_eq!(
        (whole_report, whole_end),
        (report, end),
        "cuts changed the result"
    );
    // Past the limit the message is refused and what was stored is dropped: how much of
    // it was stored depends on the cuts, and does not matter.
    if report.size <= max_size {
        assert_eq!(whole, out, "cuts changed the content");
    }
    assert!(out.len() as u64 <= max_size);
    // An over-long line is counted, not stored: the stored content tells all only without.
    if report.size <= max_size && !report.line_too_long {
        assert_eq!(out.len() as u64, report.size);
        assert_eq!(report.bare_line_ending, bare_ending(&out));
        assert!(!too_long(&out, max_line));
        assert_eq!(report.nul, out.contains(&0));
        assert_eq!(report.eight_bit, !out.is_ascii());
    }

    // BDAT: the chunks as they are; a last line without CRLF gets one.
    let mut rx = BdatReceiver::new(max_size, max_line);
    let mut stored = Vec::new();
    for piece in pieces(wire, &input.cuts) {
        rx.feed(piece, &mut stored);
    }
    let report = rx.finish(&mut stored);
    let mut whole = BdatReceiver::new(max_size, max_line);
    let mut once = Vec::new();
    whole.feed(wire, &mut once);
    assert_eq!(
        whole.finish(&mut once),
        report,
        "chunking changed the report"
    );
    assert_eq!(report.size, wire.len() as u64);
    assert!(stored.len() as u64 <= max_size + 2);
    let mut terminated = wire.clone();
    if !wire.is_empty() && !wire.ends_with(b"\n") && !wire.ends_with(b"\r") {
        terminated.extend_from_slice(b"\r\n");
    }
    assert!(terminated.starts_with(&stored));
    if report.size <= max_size {
        assert_eq!(stored, terminated);
    }
    assert_eq!(report.bare_line_ending, bare_ending(&terminated));
    assert_eq!(report.line_too_long, too_long(wire, max_line));
    assert_eq!(report.nul, wire.contains(&0));
    assert_eq!(report.eight_bit, !wire.is_ascii());

    // Clean content round-trips through dot-stuffing and DATA.
    let mut stuffed = Vec::new();
    if dot_stuff(wire, &mut stuffed).is_ok() {
        let (out, report, end) = data(&stuffed, &input.cuts, u64::MAX, 998);
        assert_eq!(end, Some(stuffed.len()));
        assert_eq!(out, terminated);
        assert!(!report.bare_line_ending && !report.line_too_long);
    }
});
