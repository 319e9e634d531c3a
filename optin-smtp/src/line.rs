//! Command-line framing: finds the next CRLF-terminated command in a byte buffer.
//!
//! "Need more bytes" is an ordinary outcome. Only CRLF ends a line; a bare LF also ends one
//! (so a client that sends LF-only lines gets an answer instead of a hang) but is reported as
//! [`Line::BadEnding`], and so is a CR anywhere else in the line. A line longer than the
//! limit is reported as [`Line::TooLong`] as soon as the limit is passed, without waiting
//! for its end: the session answers and closes, so a client cannot make the relay read an
//! endless line (nor resynchronise on whatever follows it).

#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// A well-formed command line, without its CRLF.
    Command(&'a [u8]),
    /// A line with a bare LF or a stray CR.
    BadEnding,
    /// A line over the limit: the session must close, the rest of it was never read.
    TooLong,
}

#[derive(Debug)]
pub struct LineReader {
    /// Longest command line accepted, counting the CRLF.
    max_len: usize,
}

impl LineReader {
    pub fn new(max_len: usize) -> LineReader {
        LineReader {
            max_len: max_len.max(3),
        }
    }

    /// Looks for the next line in `buf`. Returns how many bytes were used (the caller drops
    /// them from its buffer) and the line, if one is complete or too long already.
    pub fn next<'a>(&mut self, buf: &'a [u8]) -> (usize, Option<Line<'a>>) {
        let window = &buf[..buf.len().min(self.max_len)];
        match memchr::memchr(b'\n', window) {
            Some(i) => {
                let line = &buf[..i];
                let line = match line.strip_suffix(b"\r") {
                    Some(content) if memchr::memchr(b'\r', content).is_none() => {
                        Line::Command(content)
                    }
                    _ => Line::BadEnding,
                };
                (i + 1, Some(line))
            }
            // No end within the limit: too long, whatever follows.
            None if buf.len() >= self.max_len => (buf.len(), Some(Line::TooLong)),
            None => (0, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_lines() {
        let mut r = LineReader::new(100);
        let buf = b"EHLO a\r\nMAIL FROM:<>\r\nRC";
        assert_eq!(r.next(buf), (8, Some(Line::Command(b"EHLO a"))));
        assert_eq!(
            r.next(&buf[8..]),
            (14, Some(Line::Command(b"MAIL FROM:<>")))
        );
        assert_eq!(r.next(&buf[22..]), (0, None));
    }

    #[test]
    fn bare_endings() {
        let mut r = LineReader::new(100);
        assert_eq!(r.next(b"QUIT\n"), (5, Some(Line::BadEnding)));
        assert_eq!(r.next(b"QU\rIT\r\n"), (7, Some(Line::BadEnding)));
    }

    #[test]
    fn long_lines_are_reported_once_the_limit_is_passed() {
        let mut r = LineReader::new(10);
        // not yet at the limit: wait for more
        assert_eq!(r.next(b"012345678"), (0, None));
        // the limit is reached without an end: too long now, not when the CRLF comes
        assert_eq!(r.next(b"0123456789"), (10, Some(Line::TooLong)));
        assert_eq!(r.next(b"0123456789ab"), (12, Some(Line::TooLong)));
        // an over-long line that arrived whole
        assert_eq!(
            r.next(b"0123456789abc\r\nQUIT\r\n"),
            (21, Some(Line::TooLong))
        );
        // exactly at the limit is fine
        assert_eq!(
            r.next(b"12345678\r\n"),
            (10, Some(Line::Command(b"12345678")))
        );
    }
}
