//! SMTP replies: the type both sides speak, its wire encoding, and the client-side parser.
//!
//! A [`Reply`] is a three-digit code, an optional enhanced status code (RFC 3463) and one or
//! more text lines. The server encodes a whole reply into one buffer so that it always leaves
//! in one write; the client parses replies incrementally, with "need more bytes" as an
//! ordinary outcome. This module never touches a socket.

use std::borrow::Cow;
use std::fmt;

/// An enhanced mail system status code, `class.subject.detail` (RFC 3463).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl Status {
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        Status {
            class,
            subject,
            detail,
        }
    }

    /// Parses `2.1.0`-style text; class must be 2, 4 or 5 and each part at most 3 digits.
    pub fn parse(text: &str) -> Option<Status> {
        let mut parts = text.splitn(3, '.');
        let class: u8 = parse_digits(parts.next()?, 1)?.try_into().ok()?;
        let subject = parse_digits(parts.next()?, 3)?;
        let detail = parse_digits(parts.next()?, 3)?;
        matches!(class, 2 | 4 | 5).then_some(Status {
            class,
            subject,
            detail,
        })
    }
}

fn parse_digits(s: &str, max: usize) -> Option<u16> {
    if s.is_empty() || s.len() > max || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One SMTP reply. `text` may hold several lines separated by `\n`; each becomes its own
/// reply line on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub status: Option<Status>,
    pub text: Cow<'static, str>,
}

/// The three outcomes a reply code can mean to the party that sent the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// 2xx and 3xx: accepted or go ahead.
    Positive,
    /// 4xx: try again later.
    Transient,
    /// 5xx (and anything malformed): do not try again.
    Permanent,
}

impl Reply {
    pub fn new(code: u16, status: Status, text: impl Into<Cow<'static, str>>) -> Reply {
        Reply {
            code,
            status: Some(status),
            text: text.into(),
        }
    }

    /// A reply without an enhanced status code (greetings, or a peer that does not speak
    /// ENHANCEDSTATUSCODES).
    pub fn plain(code: u16, text: impl Into<Cow<'static, str>>) -> Reply {
        Reply {
            code,
            status: None,
            text: text.into(),
        }
    }

    pub fn severity(&self) -> Severity {
        match self.code / 100 {
            2 | 3 => Severity::Positive,
            4 => Severity::Transient,
            _ => Severity::Permanent,
        }
    }

    pub fn is_positive(&self) -> bool {
        self.severity() == Severity::Positive
    }

    /// Appends the wire form (`250-first\r\n250 last\r\n`) to `out`. Text is sanitised so
    /// that a reply can never smuggle a CR, LF or other control byte onto the wire.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let lines: Vec<&str> = if self.text.is_empty() {
            vec![""]
        } else {
            self.text.split('\n').collect()
        };
        let last = lines.len() - 1;
        for (i, line) in lines.iter().enumerate() {
            out.extend_from_slice(self.code.to_string().as_bytes());
            out.push(if i == last { b' ' } else { b'-' });
            if let Some(status) = self.status {
                out.extend_from_slice(status.to_string().as_bytes());
                if !line.is_empty() {
                    out.push(b' ');
                }
            }
            out.extend(
                line.bytes()
                    .map(|b| if b.is_ascii_control() { b' ' } else { b }),
            );
            out.extend_from_slice(b"\r\n");
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.text.len());
        self.write_to(&mut out);
        out
    }

    /// The reply as one line of text, for logs and DSN `Diagnostic-Code` fields.
    pub fn one_line(&self) -> String {
        let text = self.text.replace('\n', " ");
        match self.status {
            Some(status) => format!("{} {} {}", self.code, status, text),
            None => format!("{} {}", self.code, text),
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.one_line())
    }
}

/// Why bytes from a server could not be read as a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("malformed reply line: {0:?}")]
    Malformed(String),
    #[error("reply line longer than {0} octets")]
    TooLong(usize),
    #[error("reply lines disagree on the code ({0} then {1})")]
    CodeMismatch(u16, u16),
    #[error("reply has more than {0} lines")]
    TooManyLines(usize),
}

/// Longest reply line the client accepts; RFC 5321 says 512, real servers send more.
const MAX_REPLY_LINE: usize = 4096;
const MAX_REPLY_LINES: usize = 256;

/// Parses one complete reply from the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, or the reply and how many bytes it used.
/// Lenient in what it accepts from servers: a bare LF ends a line, and an enhanced status
/// code is recognised only when it matches the reply's class.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
    let mut pos = 0;
    let mut code = None;
    let mut status = None;
    let mut text = String::new();
    for n in 0.. {
        if n >= MAX_REPLY_LINES {
            return Err(ReplyError::TooManyLines(MAX_REPLY_LINES));
        }
        let rest = &buf[pos..];
        let Some(nl) = memchr::memchr(b'\n', rest) else {
            if rest.len() > MAX_REPLY_LINE {
                return Err(ReplyError::TooLong(MAX_REPLY_LINE));
            }
            return Ok(None);
        };
        let mut line = &rest[..nl];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        pos += nl + 1;
        let line = String::from_utf8_lossy(line);
        let malformed = || ReplyError::Malformed(line.chars().take(80).collect());
        if line.len() < 3 {
            return Err(malformed());
        }
        let this_code = parse_digits(&line[..3], 3)
            .filter(|c| (200..600).contains(c))
            .ok_or_else(malformed)?;
        if let Some(c) = code
            && c != this_code
        {
            return Err(ReplyError::CodeMismatch(c, this_code));
        }
        code = Some(this_code);
        let (more, body) = match line.as_bytes().get(3) {
            None => (false, ""),
            Some(b' ') => (false, &line[4..]),
            Some(b'-') => (true, &line[4..]),
            Some(_) => return Err(malformed()),
        };
        let (line_status, body) = split_status(this_code, body);
        if status.is_none() {
            status = line_status;
        }
        if n > 0 {
            text.push('\n');
        }
        text.push_str(body);
        if !more {
            break;
        }
    }
    let code = code.expect("loop ran at least once");
    Ok(Some((
        Reply {
            code,
            status,
            text: Cow::Owned(text),
        },
        pos,
    )))
}

fn split_status(code: u16, body: &str) -> (Option<Status>, &str) {
    let (first, rest) = body.split_once(' ').unwrap_or((body, ""));
    match Status::parse(first) {
        Some(s) if u16::from(s.class) == code / 100 => (Some(s), rest),
        _ => (None, body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_single_and_multi_line() {
        let r = Reply::new(250, Status::new(2, 1, 0), "OK");
        assert_eq!(r.to_bytes(), b"250 2.1.0 OK\r\n");
        let r = Reply::plain(250, "mx.example\nPIPELINING\nSIZE 100");
        assert_eq!(
            r.to_bytes(),
            b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 100\r\n"
        );
    }

    #[test]
    fn control_bytes_cannot_reach_the_wire() {
        let r = Reply::new(550, Status::new(5, 1, 1), "bad\r<x>\t");
        assert_eq!(r.to_bytes(), b"550 5.1.1 bad <x> \r\n");
    }

    #[test]
    fn parses_incrementally() {
        let wire = b"250-mx.example says hi\r\n250-8BITMIME\r\n250 2.0.0 ok\r\nextra";
        for cut in 0..wire.len() - 5 {
            // every prefix that ends before the last line is incomplete
            if cut < wire.len() - 5 {
                assert_eq!(parse_reply(&wire[..cut]).unwrap(), None, "cut {cut}");
            }
        }
        let (reply, used) = parse_reply(wire).unwrap().unwrap();
        assert_eq!(used, wire.len() - 5);
        assert_eq!(reply.code, 250);
        assert_eq!(reply.text, "mx.example says hi\n8BITMIME\nok");
    }

    #[test]
    fn status_only_when_class_matches() {
        let (r, _) = parse_reply(b"550 5.1.1 no such user\r\n").unwrap().unwrap();
        assert_eq!(r.status, Some(Status::new(5, 1, 1)));
        assert_eq!(r.text, "no such user");
        let (r, _) = parse_reply(b"550 2.1.1 odd\r\n").unwrap().unwrap();
        assert_eq!(r.status, None);
        let (r, _) = parse_reply(b"421\r\n").unwrap().unwrap();
        assert_eq!((r.code, r.text.as_ref()), (421, ""));
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_reply(b"hello\r\n").is_err());
        assert!(parse_reply(b"250-a\r\n251 b\r\n").is_err());
        assert!(parse_reply(b"099 x\r\n").is_err());
        assert!(parse_reply(&[b'2'; 5000]).is_err());
    }
}
