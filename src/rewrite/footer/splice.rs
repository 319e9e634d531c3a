//! The footer put into one body part, as edits of the original message: spliced into the
//! body as it is when its encoding allows (7bit, 8bit and binary as they are,
//! quoted-printable in its encoded form), else the part decoded, extended and re-encoded;
//! the part's header fields changed only as far as the new body needs (charset relabelled
//! to UTF-8, transfer encoding switched to quoted-printable).
//!
//! It must never panic, whatever the input: what it cannot place is a
//! [`FooterError::Malformed`].

use std::borrow::Cow;

use memchr::memrchr;

use super::super::entity::{Cte, param_span};
use super::super::mime::{
    MAX_LINE, b64_decode, b64_encode, longest_line, qp_decode, qp_encode, qp_encode_into,
};
use super::{FooterError, HeaderSpan, PartPlan, malformed};

/// Replaces a byte range of the original message (an insertion when `start == end`).
pub(super) struct Edit {
    pub start: usize,
    pub end: usize,
    pub bytes: Cow<'static, [u8]>,
}

/// Copies the message with the edits applied; everything between them is copied verbatim.
pub(super) fn splice(raw: &[u8], mut edits: Vec<Edit>) -> Result<Vec<u8>, FooterError> {
    edits.sort_by_key(|edit| (edit.start, edit.end));
    let added: usize = edits.iter().map(|edit| edit.bytes.len()).sum();
    let mut out = Vec::with_capacity(raw.len() + added);
    let mut cursor = 0;
    for edit in &edits {
        let kept = raw
            .get(cursor..edit.start)
            .ok_or_else(|| malformed("overlapping parts"))?;
        out.extend_from_slice(kept);
        out.extend_from_slice(&edit.bytes);
        cursor = edit.end;
    }
    out.extend_from_slice(raw.get(cursor..).unwrap_or_default());
    Ok(out)
}

/// Adds the footer to one body part, as edits of the original message.
pub(super) fn rewrite_part(
    raw: &[u8],
    part: &PartPlan,
    footer: &str,
    edits: &mut Vec<Edit>,
) -> Result<(), FooterError> {
    let (start, end, html, cte, charset) =
        (part.start, part.end, part.html, part.cte, part.charset);
    let body = raw
        .get(start..end)
        .ok_or_else(|| malformed("part offsets out of range"))?;
    let in_charset = charset.encode(footer);
    if let Some(encoded) = &in_charset {
        let spliced = match cte {
            Cte::SevenBit | Cte::EightBit => raw_splice(body, html, cte, encoded),
            Cte::QuotedPrintable => qp_splice(body, html, encoded),
            Cte::Base64 | Cte::Other => None,
        };
        if let Some((at, bytes)) = spliced {
            edits.push(Edit {
                start: start + at,
                end: start + at,
                bytes: bytes.into(),
            });
            return Ok(());
        }
    }
    // The slow path: decode, insert, re-encode the whole part.
    let decoded: Cow<'_, [u8]> = match cte {
        Cte::SevenBit | Cte::EightBit | Cte::Other => Cow::Borrowed(body),
        Cte::QuotedPrintable => Cow::Owned(qp_decode(body)),
        Cte::Base64 => Cow::Owned(b64_decode(body)),
    };
    let parsed = part.parsed.as_str();
    let (content, footer, relabel) = match &in_charset {
        Some(encoded) => (decoded, encoded.as_ref(), false),
        None => (charset.to_utf8(&decoded, parsed), footer.as_bytes(), true),
    };
    let at = insertion_point(&content, html);
    let insert = footer_lines(before(&content[..at]), html, footer);
    let mut new = Vec::with_capacity(content.len() + insert.len());
    new.extend_from_slice(&content[..at]);
    new.extend_from_slice(&insert);
    new.extend_from_slice(&content[at..]);
    let mut to_qp = false;
    let encoded = match cte {
        Cte::SevenBit | Cte::EightBit | Cte::Other => {
            to_qp = !identity_safe(&new, cte);
            if to_qp { qp_encode(&new) } else { new }
        }
        Cte::QuotedPrintable => qp_encode(&new),
        Cte::Base64 => b64_encode(&new, body.ends_with(b"\n")),
    };
    edits.push(Edit {
        start,
        end,
        bytes: encoded.into(),
    });
    header_edits(raw, part, relabel, to_qp, edits)
}

/// Whether `content` can go out as it is in a 7bit or 8bit part: CRLF line breaks only, no
/// NUL, lines within 998 octets, and ASCII for 7bit. Transcoded text may break any of it
/// (UTF-7 `+AAo-` is a bare line feed).
fn identity_safe(content: &[u8], cte: Cte) -> bool {
    let bare = content.iter().enumerate().any(|(i, &c)| match c {
        b'\r' => content.get(i + 1) != Some(&b'\n'),
        b'\n' => i == 0 || content[i - 1] != b'\r',
        _ => false,
    });
    !bare
        && !content.contains(&0)
        && longest_line(content) <= MAX_LINE
        && (cte != Cte::SevenBit || content.is_ascii())
}

/// The changes a part's header block needs: charset relabelled to UTF-8, transfer
/// encoding switched to quoted-printable.
fn header_edits(
    raw: &[u8],
    part: &PartPlan,
    relabel: bool,
    to_qp: bool,
    edits: &mut Vec<Edit>,
) -> Result<(), FooterError> {
    let mut added = Vec::new();
    if relabel {
        match part.content_type {
            Some(header) => edits.push(charset_edit(raw, header)),
            None => added.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\r\n"),
        }
    }
    if to_qp {
        match part.transfer_encoding {
            Some(header) => {
                let (start, end) = value_span(raw, header);
                edits.push(Edit {
                    start,
                    end,
                    bytes: Cow::Borrowed(b" quoted-printable"),
                });
            }
            None => added.extend_from_slice(b"Content-Transfer-Encoding: quoted-printable\r\n"),
        }
    }
    if !added.is_empty() {
        // Only the top-level part can lack MIME-Version; adding MIME fields requires it.
        if part.needs_mime_version {
            added.splice(0..0, *b"MIME-Version: 1.0\r\n");
        }
        let at = part
            .header_end
            .ok_or_else(|| malformed("no header/body separator"))?;
        edits.push(Edit {
            start: at,
            end: at,
            bytes: added.into(),
        });
    }
    Ok(())
}

/// The value of a header field, without its final line break.
fn value_span(raw: &[u8], header: HeaderSpan) -> (usize, usize) {
    let start = header.start.min(raw.len());
    let mut end = header.end.min(raw.len()).max(start);
    while end > start && matches!(raw[end - 1], b'\r' | b'\n') {
        end -= 1;
    }
    (start, end)
}

/// Sets `charset=utf-8` in a Content-Type field, replacing the parameter's value or
/// appending the parameter.
fn charset_edit(raw: &[u8], header: HeaderSpan) -> Edit {
    let (start, end) = value_span(raw, header);
    let value = raw.get(start..end).unwrap_or_default();
    // Where a position of the value stands in its line (the field name counts).
    let column = |at: usize| match memrchr(b'\n', &value[..at]) {
        Some(nl) => at - nl - 1,
        None => start + at - header.field.min(start),
    };
    if let Some((from, to)) = charset_value(value) {
        let rest = value[to..]
            .iter()
            .position(|&c| matches!(c, b'\r' | b'\n'))
            .unwrap_or(value.len() - to);
        if column(from) + 5 + rest <= MAX_LINE {
            return Edit {
                start: start + from,
                end: start + to,
                bytes: Cow::Borrowed(b"utf-8"),
            };
        }
        // A longer value would push its line past the limit: the whole parameter moves to
        // a folded line of its own (parsers do not all take a fold inside a parameter).
        let semi = memrchr(b';', &value[..from]).unwrap_or(from);
        return Edit {
            start: start + semi,
            end: start + to,
            bytes: Cow::Borrowed(b";\r\n charset=utf-8"),
        };
    }
    let line = column(value.len());
    let bytes: &'static [u8] = if line + 1 > MAX_LINE {
        // Not even the `;` fits on the last line: fold before it.
        b"\r\n ; charset=utf-8"
    } else if line + 16 > MAX_LINE {
        b";\r\n charset=utf-8"
    } else {
        b"; charset=utf-8"
    };
    Edit {
        start: end,
        end,
        bytes: Cow::Borrowed(bytes),
    }
}

/// The span of the `charset` parameter's value (quotes included) in a Content-Type value,
/// as the MIME reader finds it (comments, quotes and folding understood alike).
pub(super) fn charset_value(value: &[u8]) -> Option<(usize, usize)> {
    param_span(value, "charset").map(|r| (r.start, r.end))
}

/// Where the decoded body ends before the insertion point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Before {
    Nothing,
    Newline,
    Text,
}

pub(super) fn before(prefix: &[u8]) -> Before {
    match prefix.last() {
        None => Before::Nothing,
        Some(b'\n') => Before::Newline,
        Some(_) => Before::Text,
    }
}

/// The decoded bytes to insert: the footer on lines of its own, separated from plain text
/// by a blank line. Starts with a line break whenever the text before does not end with one.
pub(super) fn footer_lines(before: Before, html: bool, footer: &[u8]) -> Vec<u8> {
    let lead: &[u8] = match (before, html) {
        (Before::Nothing, _) | (Before::Newline, true) => b"",
        (Before::Newline, false) | (Before::Text, true) => b"\r\n",
        (Before::Text, false) => b"\r\n\r\n",
    };
    [lead, footer, b"\r\n"].concat()
}

/// Plain text takes the footer at its end; HTML right before its last `</body>`, or at
/// its end when there is none.
pub(super) fn insertion_point(body: &[u8], html: bool) -> usize {
    if html {
        last_body_close(body).unwrap_or(body.len())
    } else {
        body.len()
    }
}

/// The last `</body>` (any case); also valid in a quoted-printable encoding, where `<`
/// is always a literal character.
pub(super) fn last_body_close(hay: &[u8]) -> Option<usize> {
    let mut end = hay.len();
    while let Some(at) = memrchr(b'<', &hay[..end]) {
        let tag = hay
            .get(at + 1..at + 6)
            .is_some_and(|tag| tag.eq_ignore_ascii_case(b"/body"));
        if tag
            && hay
                .get(at + 6)
                .is_none_or(|&c| c == b'>' || c.is_ascii_whitespace())
        {
            return Some(at);
        }
        end = at;
    }
    None
}

/// Inserts the footer into a 7bit/8bit/binary body as it is, when that keeps the encoding
/// valid; `None` sends the part to the re-encoding path.
fn raw_splice(body: &[u8], html: bool, cte: Cte, footer: &[u8]) -> Option<(usize, Vec<u8>)> {
    let at = insertion_point(body, html);
    let insert = footer_lines(before(&body[..at]), html, footer);
    let ascii_ok = cte != Cte::SevenBit || insert.is_ascii();
    (ascii_ok && longest_line(&insert) <= MAX_LINE && longest_line(body) <= MAX_LINE)
        .then_some((at, insert))
}

/// Inserts the footer into a quoted-printable body without re-encoding the original
/// lines. `None` when the insertion point cannot be found in the encoded form (a `</body>`
/// split by a soft line break, say).
fn qp_splice(body: &[u8], html: bool, footer: &[u8]) -> Option<(usize, Vec<u8>)> {
    let at = match html.then(|| last_body_close(body)) {
        Some(Some(at)) if last_body_close(&qp_decode(&body[at + 1..])).is_none() => at,
        Some(None) if last_body_close(&qp_decode(body)).is_none() => body.len(),
        None => body.len(),
        Some(_) => return None,
    };
    let prefix = &body[..at];
    let line = &prefix[memrchr(b'\n', prefix).map_or(0, |nl| nl + 1)..];
    let mut out = Vec::with_capacity(footer.len() * 11 / 10 + 16);
    if line.trim_ascii_end().ends_with(b"=") {
        if at != body.len() {
            return None;
        }
        // A soft line break left dangling at the end: complete it.
        out.extend_from_slice(b"\r\n");
    } else if line.ends_with(b" ") || line.ends_with(b"\t") {
        // A hard break would make this white space trailing, and decoders drop that.
        out.extend_from_slice(b"=\r\n");
    }
    qp_encode_into(&footer_lines(qp_before(prefix), html, footer), &mut out);
    Some((at, out))
}

/// How the decoded text ends at the end of a quoted-printable `prefix`: walks back over
/// the lines that decode to nothing (soft line breaks alone).
fn qp_before(prefix: &[u8]) -> Before {
    let mut end = prefix.len();
    while end > 0 {
        let start = memrchr(b'\n', &prefix[..end - 1]).map_or(0, |nl| nl + 1);
        let line = &prefix[start..end];
        // White space is trailing (and dropped) only before a line break.
        let (content, hard) = match line.strip_suffix(b"\n") {
            Some(content) => (content.trim_ascii_end(), true),
            None => (line, false),
        };
        let (content, soft) = match content.trim_ascii_end().strip_suffix(b"=") {
            Some(content) => (content, true),
            None => (content, false),
        };
        if hard && !soft {
            return Before::Newline;
        }
        if !content.is_empty() {
            return Before::Text;
        }
        end = start;
    }
    Before::Nothing
}

/// The footer with CRLF line breaks and no trailing ones.
pub(super) fn crlf_lines(footer: &str) -> String {
    let footer = footer.trim_end_matches(['\r', '\n']);
    let mut out = String::with_capacity(footer.len() + 8);
    let mut lines = footer.split('\n').peekable();
    while let Some(line) = lines.next() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        out.push_str(&line.replace('\r', "\r\n"));
        if lines.peek().is_some() {
            out.push_str("\r\n");
        }
    }
    out
}
