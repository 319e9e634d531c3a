//! Client-side encoding: message content for DATA, with the guarantees the relay makes to
//! the next hop.
//!
//! [`dot_stuff`] never emits a bare CR or LF or a line over 998 octets: content that would
//! need one is refused with an [`OutputError`] (delivery then fails that message
//! permanently) instead of being sent malformed or silently altered.

use memchr::memchr;

/// RFC 5322 §2.1.1: at most 998 octets per line, not counting CRLF.
pub const MAX_LINE: usize = 998;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OutputError {
    #[error("message contains a bare CR or LF")]
    BareLineEnding,
    #[error("message contains a line longer than 998 octets")]
    LineTooLong,
}

/// Appends `body` to `out` as DATA content: dot-stuffed, CRLF-terminated, followed by the
/// `.` line.
pub fn dot_stuff(body: &[u8], out: &mut Vec<u8>) -> Result<(), OutputError> {
    out.reserve(body.len() + body.len() / 64 + 5);
    let mut pos = 0;
    while pos < body.len() {
        let rest = &body[pos..];
        let (line, next) = match memchr(b'\n', rest) {
            Some(i) => (&rest[..=i], pos + i + 1),
            None => (rest, body.len()),
        };
        let content = match line.strip_suffix(b"\r\n") {
            Some(c) => c,
            None if line.ends_with(b"\n") => return Err(OutputError::BareLineEnding),
            None => line, // final line without CRLF: terminated below
        };
        if memchr(b'\r', content).is_some() {
            return Err(OutputError::BareLineEnding);
        }
        if content.len() > MAX_LINE {
            return Err(OutputError::LineTooLong);
        }
        if content.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(content);
        out.extend_from_slice(b"\r\n");
        pos = next;
    }
    out.extend_from_slice(b".\r\n");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuff(body: &[u8]) -> Result<Vec<u8>, OutputError> {
        let mut out = Vec::new();
        dot_stuff(body, &mut out).map(|_| out)
    }

    #[test]
    fn stuffs_leading_dots() {
        assert_eq!(
            stuff(b"a\r\n.b\r\n.\r\n").unwrap(),
            b"a\r\n..b\r\n..\r\n.\r\n"
        );
        assert_eq!(stuff(b"").unwrap(), b".\r\n");
        assert_eq!(stuff(b"no newline").unwrap(), b"no newline\r\n.\r\n");
    }

    #[test]
    fn refuses_what_it_must_not_emit() {
        assert_eq!(stuff(b"a\nb\r\n"), Err(OutputError::BareLineEnding));
        assert_eq!(stuff(b"a\rb\r\n"), Err(OutputError::BareLineEnding));
        assert_eq!(stuff(b"a\r"), Err(OutputError::BareLineEnding));
        let long = [vec![b'x'; 999], b"\r\n".to_vec()].concat();
        assert_eq!(stuff(&long), Err(OutputError::LineTooLong));
        let ok = [vec![b'x'; 998], b"\r\n".to_vec()].concat();
        assert!(stuff(&ok).is_ok());
    }
}
