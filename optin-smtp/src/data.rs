//! Message content reception for DATA (dot-stuffed, ends at `CRLF.CRLF`) and BDAT (raw
//! chunks), with the checks that keep the spool clean.
//!
//! Both receivers are fed whatever bytes arrived, copy the content into the caller's buffer
//! and never buffer more than the size limit: past it they keep reading (so the client gets
//! a reply at the end, not a hang) but store nothing. Only `<CR><LF>.<CR><LF>` ends DATA:
//! a `.` line counts as the end only when the line before it ended in CRLF (or it is the
//! first line), so `<LF>.<CR><LF>`, `<CR>.<CR><LF>` and `<LF>.<LF>` are content. That is
//! what defeats SMTP smuggling: whatever follows such a false end is read as content up to
//! the true end, never as commands. Any bare CR or LF, a NUL octet, or a line over the
//! limit marks the message as refused. The spool therefore only ever holds CRLF text
//! without NULs, with lines of at most 998 octets, which is what the delivery side must
//! emit.

use memchr::{memchr, memchr2_iter};

/// What a finished reception found about the content.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContentReport {
    /// Octets of content (after dot-unstuffing), including any not stored.
    pub size: u64,
    /// A CR not followed by LF, or an LF not preceded by CR.
    pub bare_line_ending: bool,
    /// A line longer than the limit (not counting CRLF).
    pub line_too_long: bool,
    /// Any octet above 127.
    pub eight_bit: bool,
    /// A NUL octet (RFC 5322 text excludes it; many receivers truncate at it).
    pub nul: bool,
}

impl ContentReport {
    pub fn exceeds(&self, max_size: u64) -> bool {
        self.size > max_size
    }
}

/// Streaming line checks shared by DATA and BDAT: bare CR/LF, line length, 8-bit octets.
#[derive(Debug)]
struct LineCheck {
    max_line: usize,
    line_len: usize,
    cr_pending: bool,
    report: ContentReport,
}

impl LineCheck {
    fn new(max_line: usize) -> LineCheck {
        LineCheck {
            max_line,
            line_len: 0,
            cr_pending: false,
            report: ContentReport::default(),
        }
    }

    fn scan(&mut self, bytes: &[u8]) {
        self.octets(bytes);
        let mut last = 0;
        for i in memchr2_iter(b'\r', b'\n', bytes) {
            self.plain(i - last);
            if bytes[i] == b'\r' {
                if self.cr_pending {
                    self.report.bare_line_ending = true;
                }
                self.cr_pending = true;
            } else {
                if !self.cr_pending {
                    self.report.bare_line_ending = true;
                }
                self.cr_pending = false;
                self.line_len = 0;
            }
            last = i + 1;
        }
        self.plain(bytes.len() - last);
    }

    /// The checks that look at octets, not lines: 8-bit and NUL.
    fn octets(&mut self, bytes: &[u8]) {
        if !self.report.eight_bit && !bytes.is_ascii() {
            self.report.eight_bit = true;
        }
        if !self.report.nul && memchr(0, bytes).is_some() {
            self.report.nul = true;
        }
    }

    /// `n` octets that are neither CR nor LF.
    fn plain(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        if self.cr_pending {
            self.report.bare_line_ending = true;
            self.cr_pending = false;
        }
        self.line_len += n;
        if self.line_len > self.max_line {
            self.report.line_too_long = true;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataStatus {
    NeedMore,
    /// The terminating `.` line was consumed.
    Done,
}

/// Receives dot-stuffed DATA content.
#[derive(Debug)]
pub struct DataReceiver {
    check: LineCheck,
    max_size: u64,
    /// Inside a line too long to buffer: skip to its LF.
    skipping: bool,
    /// The line being read began right after a CRLF (or is the first line), so a `.`
    /// line here is the end of the data. After a bare LF it is content.
    after_crlf: bool,
    /// The last octet of an over-long line being skipped was a CR.
    skipped_cr: bool,
}

impl DataReceiver {
    /// `max_line` is the longest line allowed, not counting CRLF (998 by RFC 5322).
    pub fn new(max_size: u64, max_line: usize) -> DataReceiver {
        DataReceiver {
            check: LineCheck::new(max_line),
            max_size,
            skipping: false,
            // DATA itself ended with CRLF: an immediate `.` line is an empty message.
            after_crlf: true,
            skipped_cr: false,
        }
    }

    /// Consumes complete lines from `input`, appending their content to `out`. Returns how
    /// many bytes were used; an incomplete last line is left for the next call.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, DataStatus) {
        let mut pos = 0;
        let mut span = 0; // start of content not yet copied to `out`
        let status = loop {
            if self.skipping {
                match memchr(b'\n', &input[pos..]) {
                    Some(i) => {
                        self.count(&input[pos..pos + i + 1]);
                        // The over-long line ended in CRLF only if a CR came right before
                        // its LF (possibly at the end of the previous piece).
                        self.after_crlf = if i > 0 {
                            input[pos + i - 1] == b'\r'
                        } else {
                            self.skipped_cr
                        };
                        pos += i + 1;
                        span = pos;
                        self.skipping = false;
                        self.skipped_cr = false;
                        self.check.line_len = 0;
                        self.check.cr_pending = false;
                    }
                    None => {
                        if pos < input.len() {
                            self.skipped_cr = input[input.len() - 1] == b'\r';
                        }
                        self.count(&input[pos..]);
                        pos = input.len();
                        span = pos;
                        break DataStatus::NeedMore;
                    }
                }
            }
            let rest = &input[pos..];
            // A line is at most max_line octets plus CRLF, not counting a leading dot
            // doubled for transparency (RFC 5321 §4.5.3.1.6); look no further for its LF.
            let limit = self.check.max_line + usize::from(rest.first() == Some(&b'.'));
            let window = &rest[..rest.len().min(limit + 2)];
            match memchr(b'\n', window) {
                None if rest.len() > limit + 1 => {
                    self.store(&input[span..pos], out);
                    self.check.report.line_too_long = true;
                    self.skipping = true;
                }
                None => {
                    self.store(&input[span..pos], out);
                    span = pos;
                    break DataStatus::NeedMore;
                }
                Some(i) => {
                    let line = &rest[..=i];
                    if self.after_crlf && line == b".\r\n" {
                        self.store(&input[span..pos], out);
                        pos += 3;
                        span = pos;
                        break DataStatus::Done;
                    }
                    // The stuffing dot is not content: the limits count the line without it.
                    self.check.scan(line.strip_prefix(b".").unwrap_or(line));
                    self.after_crlf = line.ends_with(b"\r\n");
                    if line[0] == b'.' {
                        // dot-unstuffing: drop the leading dot of this line
                        self.store(&input[span..pos], out);
                        span = pos + 1;
                    }
                    pos += i + 1;
                }
            }
        };
        debug_assert_eq!(span, pos, "every consumed byte is stored or skipped");
        (pos, status)
    }

    /// Counts (and checks) bytes of an over-long line without storing them.
    fn count(&mut self, bytes: &[u8]) {
        self.check.report.size += bytes.len() as u64;
        self.check.octets(bytes);
    }

    fn store(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        let report = &mut self.check.report;
        report.size += bytes.len() as u64;
        if report.size <= self.max_size {
            out.extend_from_slice(bytes);
        }
    }

    pub fn report(&self) -> ContentReport {
        self.check.report
    }
}

/// Receives BDAT chunks (RFC 3030): raw octets, no dot-stuffing, the sizes say where each
/// chunk ends.
#[derive(Debug)]
pub struct BdatReceiver {
    check: LineCheck,
    max_size: u64,
}

impl BdatReceiver {
    pub fn new(max_size: u64, max_line: usize) -> BdatReceiver {
        BdatReceiver {
            check: LineCheck::new(max_line),
            max_size,
        }
    }

    /// Takes (part of) a chunk; stores it while the message is within the size limit.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        self.check.scan(bytes);
        let report = &mut self.check.report;
        report.size += bytes.len() as u64;
        if report.size <= self.max_size {
            out.extend_from_slice(bytes);
        }
    }

    /// Called after the LAST chunk: a final line without CRLF gets one (RFC 5322 messages end
    /// with a line break), a trailing lone CR is a bare CR.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> ContentReport {
        if self.check.cr_pending {
            self.check.report.bare_line_ending = true;
        } else if self.check.line_len > 0 && self.check.report.size <= self.max_size {
            out.extend_from_slice(b"\r\n");
        }
        self.check.report
    }

    pub fn report(&self) -> ContentReport {
        self.check.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn receive_in_pieces(
        wire: &[u8],
        piece: usize,
        max_size: u64,
    ) -> (Vec<u8>, ContentReport, usize) {
        let mut rx = DataReceiver::new(max_size, 998);
        let mut out = Vec::new();
        let mut buf: Vec<u8> = Vec::new();
        let mut fed = 0;
        for chunk in wire.chunks(piece.max(1)) {
            buf.extend_from_slice(chunk);
            let (used, status) = rx.feed(&buf, &mut out);
            buf.drain(..used);
            fed += chunk.len();
            if status == DataStatus::Done {
                return (out, rx.report(), fed - buf.len());
            }
        }
        panic!("no end of data in {:?}", String::from_utf8_lossy(wire));
    }

    #[test]
    fn unstuffs_and_ends_at_crlf_dot_crlf() {
        let wire = b"Subject: x\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n";
        let (out, report, used) = receive_in_pieces(wire, 4096, 1000);
        assert_eq!(out, b"Subject: x\r\n\r\n.leading dot\r\n");
        assert_eq!(used, wire.len() - 6);
        assert_eq!(report.size, out.len() as u64);
        assert!(!report.bare_line_ending && !report.line_too_long && !report.eight_bit);
    }

    #[test]
    fn lf_dot_lf_does_not_end_data() {
        // The smuggling pattern: <LF>.<LF> and <CR>.<LF> are content, flagged as bare.
        let wire = b"a\r\n.\nMAIL FROM:<evil@x>\r\n\r.\r\nb\r\n.\r\n";
        let (out, report, _) = receive_in_pieces(wire, 3, 1000);
        assert!(report.bare_line_ending);
        assert!(out.ends_with(b"b\r\n"));
    }

    #[test]
    fn bare_cr_inside_a_line() {
        let (_, report, _) = receive_in_pieces(b"a\rb\r\n.\r\n", 100, 1000);
        assert!(report.bare_line_ending);
    }

    #[test]
    fn long_lines_are_flagged_and_not_buffered() {
        let mut wire = vec![b'x'; 5000];
        wire.extend_from_slice(b"\r\nok\r\n.\r\n");
        let (out, report, _) = receive_in_pieces(&wire, 700, 100_000);
        assert!(report.line_too_long);
        assert_eq!(out, b"ok\r\n");
        assert_eq!(report.size, 5006);
        let mut exact = vec![b'y'; 998];
        exact.extend_from_slice(b"\r\n.\r\n");
        let (_, report, _) = receive_in_pieces(&exact, 7, 100_000);
        assert!(!report.line_too_long);
    }

    #[test]
    fn the_stuffing_dot_does_not_count_toward_the_line_limit() {
        // RFC 5321 §4.5.3.1.6: 1000 octets with CRLF, "not counting the leading dot
        // duplicated for transparency": a 998-octet line that starts with a dot is 999 on
        // the wire, and whole.
        let line = [b".".to_vec(), vec![b'z'; 997]].concat();
        let mut wire = Vec::new();
        crate::encode::dot_stuff(&[line.clone(), b"\r\n".to_vec()].concat(), &mut wire).unwrap();
        assert_eq!(wire.len(), 999 + 2 + 3);
        for piece in [7, 500, 100_000] {
            let (out, report, _) = receive_in_pieces(&wire, piece, 100_000);
            assert!(!report.line_too_long, "pieces of {piece}");
            assert_eq!(out, [line.clone(), b"\r\n".to_vec()].concat());
        }
        // One octet more is too long, stuffed or not.
        let long = [b"..".to_vec(), vec![b'z'; 998], b"\r\n.\r\n".to_vec()].concat();
        let (_, report, _) = receive_in_pieces(&long, 100_000, 100_000);
        assert!(report.line_too_long);
    }

    #[test]
    fn size_limit_keeps_memory_bounded() {
        let mut wire = Vec::new();
        for _ in 0..1000 {
            wire.extend_from_slice(b"0123456789012345678901234567890123456789\r\n");
        }
        wire.extend_from_slice(b".\r\n");
        let (out, report, _) = receive_in_pieces(&wire, 1500, 10_000);
        assert!(report.exceeds(10_000));
        assert!(out.len() <= 10_000);
        assert_eq!(report.size, 42_000);
    }

    #[test]
    fn eight_bit_detected() {
        let (_, report, _) = receive_in_pieces("Grüße\r\n.\r\n".as_bytes(), 2, 1000);
        assert!(report.eight_bit);
    }

    #[test]
    fn bdat_chunks_across_line_boundaries() {
        let mut rx = BdatReceiver::new(1000, 998);
        let mut out = Vec::new();
        rx.feed(b"Subject: a\r", &mut out);
        rx.feed(b"\n\r\nbody", &mut out);
        let report = rx.finish(&mut out);
        assert_eq!(out, b"Subject: a\r\n\r\nbody\r\n");
        assert!(!report.bare_line_ending);

        let mut rx = BdatReceiver::new(1000, 998);
        rx.feed(b"a\nb\r\n", &mut Vec::new());
        assert!(rx.finish(&mut Vec::new()).bare_line_ending);
        let mut rx = BdatReceiver::new(1000, 998);
        rx.feed(b"a\r", &mut Vec::new());
        assert!(rx.finish(&mut Vec::new()).bare_line_ending);
    }

    /// Where DATA must end for `wire`: just after the first `<CR><LF>.<CR><LF>`, counting
    /// the CRLF that ended the DATA command. Returns (content length, octets used).
    fn true_end(wire: &[u8]) -> Option<(usize, usize)> {
        let mut with_command = b"\r\n".to_vec();
        with_command.extend_from_slice(wire);
        memchr::memmem::find(&with_command, b"\r\n.\r\n").map(|i| (i, i + 3))
    }

    /// A CR not followed by LF or an LF not preceded by CR.
    fn has_bare_ending(content: &[u8]) -> bool {
        content.iter().enumerate().any(|(i, &b)| {
            (b == b'\r' && content.get(i + 1) != Some(&b'\n'))
                || (b == b'\n' && (i == 0 || content[i - 1] != b'\r'))
        })
    }

    #[test]
    fn only_crlf_dot_crlf_ends_data() {
        // Every combination of CR, LF, CRLF and NUL before and after the dot: only a dot
        // line between two CRLFs ends the data; everything else is content.
        let around: [&[u8]; 6] = [b"\r", b"\n", b"\r\n", b"\0", b"\r\0", b""];
        for before in around {
            for after in around {
                let mut wire = b"first".to_vec();
                wire.extend_from_slice(before);
                wire.push(b'.');
                wire.extend_from_slice(after);
                wire.extend_from_slice(b"MAIL FROM:<x@evil.example>\r\nRCPT TO:<v@victim.example>\r\nDATA\r\nsmuggled\r\n.\r\nQUIT\r\n");
                let ends_early = before == b"\r\n" && after == b"\r\n";
                for piece in [1, 2, 3, 7, 4096] {
                    let (out, report, used) = receive_in_pieces(&wire, piece, 10_000);
                    let (content_len, want_used) = true_end(&wire).unwrap();
                    assert_eq!(
                        used, want_used,
                        "{before:?} . {after:?} in pieces of {piece}"
                    );
                    assert_eq!(used == 10, ends_early, "{before:?} . {after:?}");
                    if !ends_early {
                        // The rest, up to the true end, is the message: never commands.
                        assert!(out.ends_with(b"smuggled\r\n"), "{before:?} . {after:?}");
                    }
                    // Content with a bare CR or LF or a NUL is refused; a dot-stuffed or a
                    // plain line with a dot in it is ordinary content.
                    let content = &wire[..content_len];
                    let bad = has_bare_ending(content) || content.contains(&0);
                    assert_eq!(
                        report.bare_line_ending || report.nul,
                        bad,
                        "{before:?} . {after:?}"
                    );
                    assert_eq!(
                        bad,
                        !(before == b"\r\n" || before.is_empty())
                            || !(after == b"\r\n" || after.is_empty())
                    );
                    assert!(out.len() <= content_len);
                }
            }
        }
    }

    #[test]
    fn nul_octets_are_reported() {
        let (_, report, _) = receive_in_pieces(b"a\0b\r\n.\r\n", 2, 1000);
        assert!(report.nul);
        let (_, report, _) = receive_in_pieces(b"ab\r\n.\r\n", 2, 1000);
        assert!(!report.nul);
        let mut long = vec![b'x'; 2000];
        long[1500] = 0;
        long.extend_from_slice(b"\r\n.\r\n");
        let (_, report, _) = receive_in_pieces(&long, 100, 100_000);
        assert!(report.nul && report.line_too_long);
        let mut rx = BdatReceiver::new(1000, 998);
        rx.feed(b"a\0\r\n", &mut Vec::new());
        assert!(rx.finish(&mut Vec::new()).nul);
    }

    #[test]
    fn a_false_end_inside_an_over_long_line_is_content() {
        // The CR before the skipped line's LF arrives in an earlier piece than the LF.
        let mut wire = vec![b'x'; 40];
        wire.extend_from_slice(b"\n.\r\nstill content\r\n.\r\n");
        for piece in 1..45 {
            let mut rx = DataReceiver::new(1000, 16);
            let mut out = Vec::new();
            let mut buf = Vec::new();
            let mut used_total = 0;
            for chunk in wire.chunks(piece) {
                buf.extend_from_slice(chunk);
                let (used, status) = rx.feed(&buf, &mut out);
                buf.drain(..used);
                used_total += used;
                if status == DataStatus::Done {
                    break;
                }
            }
            assert_eq!(used_total, wire.len(), "pieces of {piece}");
            assert!(rx.report().line_too_long && out.ends_with(b"still content\r\n"));
        }
    }

    #[test]
    fn bdat_chunks_are_content_whatever_they_hold() {
        // BDAT has no terminator: a chunk holding a false end and commands is content, and
        // its bare line endings refuse the message.
        let mut rx = BdatReceiver::new(10_000, 998);
        let mut out = Vec::new();
        rx.feed(b"first\n.\r\nMAIL FROM:<x@evil.example>\r\n.\r\n", &mut out);
        let report = rx.finish(&mut out);
        assert!(report.bare_line_ending);
        assert_eq!(out, b"first\n.\r\nMAIL FROM:<x@evil.example>\r\n.\r\n");
    }

    fn wire_token() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"\r".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\0".to_vec()),
            Just(b".".to_vec()),
            Just(b"..".to_vec()),
            Just(b"x".to_vec()),
            Just(b"MAIL FROM:<a@b.example>".to_vec()),
            Just(vec![b'y'; 20]),
        ]
    }

    proptest! {
        // Whatever mix of CR, LF, CRLF, NUL and dots arrives, however it is cut: DATA ends
        // exactly after the first <CR><LF>.<CR><LF>, never earlier, never later, and any
        // bare CR or LF or NUL before it refuses the message.
        #[test]
        fn data_ends_only_at_the_true_end(
            tokens in proptest::collection::vec(wire_token(), 0..60),
            piece in 1usize..64,
        ) {
            let mut wire: Vec<u8> = tokens.concat();
            wire.extend_from_slice(b"\r\n.\r\nNOOP\r\n");
            let (content_len, want_used) = true_end(&wire).unwrap();
            let mut rx = DataReceiver::new(1 << 20, 16);
            let mut out = Vec::new();
            let mut buf = Vec::new();
            let mut used_total = 0;
            let mut done = false;
            for chunk in wire.chunks(piece) {
                buf.extend_from_slice(chunk);
                let (used, status) = rx.feed(&buf, &mut out);
                buf.drain(..used);
                used_total += used;
                if status == DataStatus::Done {
                    done = true;
                    break;
                }
            }
            prop_assert!(done);
            prop_assert_eq!(used_total, want_used);
            let content = &wire[..content_len];
            let report = rx.report();
            prop_assert_eq!(report.size as usize >= out.len(), true);
            if has_bare_ending(content) {
                prop_assert!(report.bare_line_ending || report.line_too_long);
            }
            if !has_bare_ending(content) {
                prop_assert!(!report.bare_line_ending);
            }
            prop_assert_eq!(report.nul, content.contains(&0));
        }

        // BDAT: every octet of every chunk is content; the checks see the same things.
        #[test]
        fn bdat_takes_every_octet(
            tokens in proptest::collection::vec(wire_token(), 0..60),
            piece in 1usize..64,
        ) {
            let wire: Vec<u8> = tokens.concat();
            let mut rx = BdatReceiver::new(1 << 20, 998);
            let mut out = Vec::new();
            for chunk in wire.chunks(piece) {
                rx.feed(chunk, &mut out);
            }
            let report = rx.finish(&mut out);
            prop_assert_eq!(&out[..wire.len()], &wire[..]);
            prop_assert_eq!(report.nul, wire.contains(&0));
            prop_assert_eq!(report.bare_line_ending, has_bare_ending(&wire));
        }
    }

    proptest! {
        // Dot-stuffing then receiving returns the original CRLF text, however it is cut.
        #[test]
        fn roundtrip(lines in proptest::collection::vec("[ -~]{0,80}", 0..40), piece in 1usize..200) {
            let mut text = Vec::new();
            for l in &lines {
                text.extend_from_slice(l.as_bytes());
                text.extend_from_slice(b"\r\n");
            }
            let mut wire = Vec::new();
            crate::encode::dot_stuff(&text, &mut wire).unwrap();
            let (out, report, _) = receive_in_pieces(&wire, piece, 1 << 20);
            prop_assert_eq!(out, text);
            prop_assert!(!report.bare_line_ending && !report.line_too_long);
        }
    }
}
