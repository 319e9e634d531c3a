//! The consent footer: a short consent statement with a visible unsubscribe link, added at
//! delivery time, per recipient, to every body a reader sees.
//!
//! Which parts get it: a message without MIME structure, or a `text/plain` / `text/html`
//! message, is one body. In `multipart/alternative` every plain and HTML alternative gets
//! it; in `multipart/mixed`, `multipart/related` and any other multipart only the first
//! part does (or, when that part is itself a multipart, the body found inside it by the
//! same rules). Plain text gets the text footer on lines of its own after a blank line;
//! HTML gets the HTML footer right before its last `</body>`, or at its end. Attachments,
//! non-text parts, `text/*` other than plain and HTML, `message/rfc822` and
//! `message/global` parts (never entered) and the parts after the body keep every byte.
//! Signed and encrypted messages are refused: a footer would break the signature or could
//! not be read, and the footer is mandatory.
//!
//! Charsets and encodings: each part keeps its charset and transfer encoding. The footer
//! is encoded into the part's charset (UTF-8, US-ASCII, ISO-8859-1, windows-1252; ASCII
//! into any other ASCII-compatible charset); when it does not fit, the part is transcoded
//! to UTF-8 and only the `charset` parameter of its `Content-Type` changes. A `7bit` part
//! that stops being ASCII, or a part that would get a line over 998 octets, switches to
//! quoted-printable. Quoted-printable bodies take the footer spliced into their encoded
//! form (the original lines stay as they are); base64 bodies and transcoded parts are
//! decoded and re-encoded in 76-character lines.
//!
//! Why splicing: the rewrite runs once per recipient, so it copies the original bytes
//! around the changed parts verbatim (at the offsets mail-parser reports) instead of
//! rebuilding the message; it is both faster and the only way to keep every other byte —
//! headers, attachments, forwarded messages — exactly as the sender wrote them. Nearly all
//! of the time goes to mail-parser's parse, which decodes every part; the splice adds a few
//! percent (`benches/rewrite.rs`).
//!
//! It must never panic, whatever the input: a message it cannot read is refused with
//! [`FooterError::Malformed`] rather than returned without its footer.

use std::borrow::Cow;
use std::sync::LazyLock;

use mail_parser::{
    ContentType, Encoding, Header, HeaderName, HeaderValue, Message, MessageParser, MessagePart,
    PartType,
};
use memchr::{memmem, memrchr};

use super::mime::{
    Charset, MAX_LINE, b64_decode, b64_encode, longest_line, qp_decode, qp_encode, qp_encode_into,
};

/// The footer in both forms. `text` is plain text (UTF-8, lines separated by "\n" or
/// "\r\n"); `html` is an HTML fragment, already escaped, inserted as is.
#[derive(Debug, Clone, Copy)]
pub struct Footer<'a> {
    pub text: &'a str,
    pub html: &'a str,
}

/// Why a message cannot take the footer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FooterError {
    /// multipart/signed, or application/pkcs7-mime / x-pkcs7-mime with smime-type
    /// signed-data, or an inline PGP signed body ("-----BEGIN PGP SIGNED MESSAGE-----")
    #[error("the message is signed; it cannot take the mandatory footer")]
    Signed,
    /// multipart/encrypted, application/pkcs7-mime enveloped-data, application/pgp-encrypted,
    /// inline "-----BEGIN PGP MESSAGE-----"
    #[error("the message is encrypted; it cannot take the mandatory footer")]
    Encrypted,
    /// no text/plain or text/html body part that a reader would see (e.g. only attachments)
    #[error("the message has no text body for the footer")]
    NoTextBody,
    /// structure mail-parser cannot make sense of (unterminated multipart, no header/body
    /// separator …), with a short reason
    #[error("malformed MIME: {0}")]
    Malformed(String),
}

/// Checks at submission whether the message can carry the footer (same rules as
/// [`add_footer`], no output). Cheap: one parse, no body is re-encoded.
pub fn check(message: &[u8]) -> Result<(), FooterError> {
    let parsed = parse(message)?;
    targets(message, &parsed).map(|_| ())
}

/// Returns the message with the footer added to every body text part.
pub fn add_footer(message: &[u8], footer: &Footer<'_>) -> Result<Vec<u8>, FooterError> {
    Plan::new(message)?.apply(message, footer)
}

/// What parsing a message tells about where its footers go. The parse is most of the
/// cost; a plan made once per message puts each recipient's own footer in with a splice.
#[derive(Debug, Clone)]
pub struct Plan {
    parts: Vec<PartPlan>,
}

/// One body part that gets the footer, with everything its rewrite needs.
#[derive(Debug, Clone)]
struct PartPlan {
    target: Target,
    /// The body's octets in the message.
    start: usize,
    end: usize,
    charset: Charset,
    /// mail-parser's decoded text, for charsets only it knows.
    parsed: String,
    content_type: Option<HeaderSpan>,
    transfer_encoding: Option<HeaderSpan>,
    /// The part is the message itself and it has no MIME-Version field.
    needs_mime_version: bool,
    header_end: Option<usize>,
}

/// Where a header field and its value are.
#[derive(Debug, Clone, Copy)]
struct HeaderSpan {
    field: usize,
    start: usize,
    end: usize,
}

impl HeaderSpan {
    fn of(h: &Header<'_>) -> HeaderSpan {
        HeaderSpan {
            field: h.offset_field as usize,
            start: h.offset_start as usize,
            end: h.offset_end as usize,
        }
    }
}

impl Plan {
    /// Parses `message` and finds its body parts, or why it cannot take the footer.
    pub fn new(message: &[u8]) -> Result<Plan, FooterError> {
        let parsed = parse(message)?;
        let parts = targets(message, &parsed)?
            .into_iter()
            .map(|target| {
                let part = parsed
                    .parts
                    .get(target.id)
                    .ok_or_else(|| malformed("lost part"))?;
                Ok(PartPlan {
                    target,
                    start: part.offset_body as usize,
                    end: part.offset_end as usize,
                    charset: Charset::of(content_type(part).and_then(|ct| ct.attribute("charset"))),
                    parsed: match &part.body {
                        PartType::Text(text) | PartType::Html(text) => text.to_string(),
                        _ => String::new(),
                    },
                    content_type: last_header(part, HeaderName::ContentType).map(HeaderSpan::of),
                    transfer_encoding: last_header(part, HeaderName::ContentTransferEncoding)
                        .map(HeaderSpan::of),
                    needs_mime_version: part.offset_header == 0
                        && last_header(part, HeaderName::MimeVersion).is_none(),
                    header_end: header_end(message, part),
                })
            })
            .collect::<Result<Vec<_>, FooterError>>()?;
        Ok(Plan { parts })
    }

    /// `message` (the one the plan was made from) with `footer` in every body part.
    pub fn apply(&self, message: &[u8], footer: &Footer<'_>) -> Result<Vec<u8>, FooterError> {
        let text = crlf_lines(footer.text);
        let html = crlf_lines(footer.html);
        let mut edits = Vec::new();
        for part in &self.parts {
            let footer = if part.target.html { &html } else { &text };
            rewrite_part(message, part, footer, &mut edits)?;
        }
        splice(message, edits)
    }
}

/// Deeper nesting is refused rather than walked: real mail stays far below, and the walk
/// recurses.
const MAX_DEPTH: usize = 32;
/// Only the MIME fields matter here; leaving the others unparsed saves a third of the parse.
static PARSER: LazyLock<MessageParser> = LazyLock::new(|| {
    MessageParser::new()
        .header_content_type(HeaderName::ContentType)
        .header_content_type(HeaderName::ContentDisposition)
        .header_raw(HeaderName::ContentTransferEncoding)
        .default_header_ignore()
});

fn malformed(reason: impl Into<String>) -> FooterError {
    FooterError::Malformed(reason.into())
}

/// Parses the message and refuses the structures whose offsets cannot be trusted.
fn parse(raw: &[u8]) -> Result<Message<'_>, FooterError> {
    let message = PARSER
        .parse(raw)
        .ok_or_else(|| malformed("no header fields"))?;
    let root = message
        .parts
        .first()
        .ok_or_else(|| malformed("no header fields"))?;
    if header_end(raw, root).is_none() {
        return Err(malformed("no header/body separator"));
    }
    for part in &message.parts {
        let Some(ct) = content_type(part) else {
            continue;
        };
        if ct.ctype() != "multipart" || !matches!(part.body, PartType::Multipart(_)) {
            continue;
        }
        let boundary = ct.attribute("boundary").unwrap_or_default();
        let close = [b"--", boundary.as_bytes(), b"--"].concat();
        let range = raw.get(part.offset_body as usize..part.offset_end as usize);
        if range.is_none_or(|range| memmem::rfind(range, &close).is_none()) {
            return Err(malformed(format!(
                "unterminated multipart (boundary {boundary:?})"
            )));
        }
    }
    Ok(message)
}

/// A body part that gets the footer.
#[derive(Debug, Clone, Copy)]
struct Target {
    id: usize,
    html: bool,
    cte: Cte,
}

/// The body parts to change, in message order, or why the message cannot take the footer.
fn targets(raw: &[u8], message: &Message<'_>) -> Result<Vec<Target>, FooterError> {
    let mut found = Vec::with_capacity(2);
    collect(raw, message, 0, 0, &mut found)?;
    if found.is_empty() {
        return Err(FooterError::NoTextBody);
    }
    Ok(found)
}

/// Walks the parts a reader would see as the body, refusing signed or encrypted ones.
fn collect(
    raw: &[u8],
    message: &Message<'_>,
    id: usize,
    depth: usize,
    found: &mut Vec<Target>,
) -> Result<(), FooterError> {
    if depth > MAX_DEPTH {
        return Err(malformed("multiparts nested too deeply"));
    }
    let part = message
        .parts
        .get(id)
        .ok_or_else(|| malformed("dangling part"))?;
    let ct = content_type(part);
    let ctype = ct.map_or("text", ContentType::ctype);
    let subtype = ct
        .map_or(Some("plain"), ContentType::subtype)
        .unwrap_or_default();
    let lower = |name: &str| {
        ct.and_then(|ct| ct.attribute(name))
            .map(str::to_ascii_lowercase)
    };
    match (ctype, subtype) {
        ("multipart", "signed") => Err(FooterError::Signed),
        ("multipart", "encrypted") | ("application", "pgp-encrypted") => {
            Err(FooterError::Encrypted)
        }
        ("application", "pkcs7-mime" | "x-pkcs7-mime") => match lower("smime-type").as_deref() {
            Some("signed-data") => Err(FooterError::Signed),
            None | Some("enveloped-data" | "authenveloped-data") => Err(FooterError::Encrypted),
            Some(_) => Ok(()),
        },
        ("multipart", subtype) => {
            let PartType::Multipart(children) = &part.body else {
                return Err(malformed("multipart without a usable boundary"));
            };
            let take = if subtype == "alternative" {
                children.len()
            } else {
                1
            };
            for &child in children.iter().take(take) {
                let child = child as usize;
                if child <= id {
                    return Err(malformed("part tree out of order"));
                }
                collect(raw, message, child, depth + 1, found)?;
            }
            Ok(())
        }
        ("text", "plain" | "html") if !is_attachment(part) => {
            let (PartType::Text(text) | PartType::Html(text)) = &part.body else {
                return Ok(());
            };
            if part.is_encoding_problem {
                return Err(malformed("undecodable text body"));
            }
            let start = text.trim_start();
            if start.starts_with("-----BEGIN PGP SIGNED MESSAGE-----") {
                return Err(FooterError::Signed);
            }
            if start.starts_with("-----BEGIN PGP MESSAGE-----") {
                return Err(FooterError::Encrypted);
            }
            let body = raw.get(part.offset_body as usize..part.offset_end as usize);
            if body.is_none() || header_end(raw, part).is_none() {
                return Err(malformed("text part offsets out of range"));
            }
            let cte = Cte::of(part)?;
            found.push(Target {
                id,
                html: subtype == "html",
                cte,
            });
            Ok(())
        }
        _ => Ok(()),
    }
}

fn last_header<'p, 'x>(part: &'p MessagePart<'x>, name: HeaderName<'_>) -> Option<&'p Header<'x>> {
    part.headers.iter().rev().find(|header| header.name == name)
}

fn content_type<'p>(part: &'p MessagePart<'_>) -> Option<&'p ContentType<'p>> {
    last_header(part, HeaderName::ContentType).and_then(|h| h.value.as_content_type())
}

fn is_attachment(part: &MessagePart<'_>) -> bool {
    last_header(part, HeaderName::ContentDisposition)
        .and_then(|h| h.value.as_content_type())
        .is_some_and(ContentType::is_attachment)
}

/// A part's Content-Transfer-Encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cte {
    SevenBit,
    EightBit,
    QuotedPrintable,
    Base64,
}

impl Cte {
    /// Follows mail-parser's reading for quoted-printable and base64; anything it does not
    /// decode must be an identity encoding, or the body cannot be edited safely.
    fn of(part: &MessagePart<'_>) -> Result<Cte, FooterError> {
        match part.encoding {
            Encoding::QuotedPrintable => return Ok(Cte::QuotedPrintable),
            Encoding::Base64 => return Ok(Cte::Base64),
            Encoding::None => {}
        }
        let value = match last_header(part, HeaderName::ContentTransferEncoding).map(|h| &h.value) {
            Some(HeaderValue::Text(value)) => value.trim(),
            _ => return Ok(Cte::SevenBit),
        };
        if value.eq_ignore_ascii_case("7bit") {
            Ok(Cte::SevenBit)
        } else if value.eq_ignore_ascii_case("8bit") || value.eq_ignore_ascii_case("binary") {
            Ok(Cte::EightBit)
        } else {
            Err(malformed(format!(
                "unsupported Content-Transfer-Encoding {value:?}"
            )))
        }
    }
}

/// Replaces a byte range of the original message (an insertion when `start == end`).
struct Edit {
    start: usize,
    end: usize,
    bytes: Cow<'static, [u8]>,
}

/// Copies the message with the edits applied; everything between them is copied verbatim.
fn splice(raw: &[u8], mut edits: Vec<Edit>) -> Result<Vec<u8>, FooterError> {
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
fn rewrite_part(
    raw: &[u8],
    part: &PartPlan,
    footer: &str,
    edits: &mut Vec<Edit>,
) -> Result<(), FooterError> {
    let (start, end, target, charset) = (part.start, part.end, part.target, part.charset);
    let body = raw
        .get(start..end)
        .ok_or_else(|| malformed("part offsets out of range"))?;
    let in_charset = charset.encode(footer);
    if let Some(encoded) = &in_charset {
        let spliced = match target.cte {
            Cte::SevenBit | Cte::EightBit => raw_splice(body, target, encoded),
            Cte::QuotedPrintable => qp_splice(body, target.html, encoded),
            Cte::Base64 => None,
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
    let decoded: Cow<'_, [u8]> = match target.cte {
        Cte::SevenBit | Cte::EightBit => Cow::Borrowed(body),
        Cte::QuotedPrintable => Cow::Owned(qp_decode(body)),
        Cte::Base64 => Cow::Owned(b64_decode(body)),
    };
    let parsed = part.parsed.as_str();
    let (content, footer, relabel) = match &in_charset {
        Some(encoded) => (decoded, encoded.as_ref(), false),
        None => (charset.to_utf8(&decoded, parsed), footer.as_bytes(), true),
    };
    let at = insertion_point(&content, target.html);
    let insert = footer_lines(before(&content[..at]), target.html, footer);
    let mut new = Vec::with_capacity(content.len() + insert.len());
    new.extend_from_slice(&content[..at]);
    new.extend_from_slice(&insert);
    new.extend_from_slice(&content[at..]);
    let mut to_qp = false;
    let encoded = match target.cte {
        Cte::SevenBit | Cte::EightBit => {
            to_qp =
                (target.cte == Cte::SevenBit && !new.is_ascii()) || longest_line(&new) > MAX_LINE;
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
    if let Some((from, to)) = charset_value(value) {
        return Edit {
            start: start + from,
            end: start + to,
            bytes: Cow::Borrowed(b"utf-8"),
        };
    }
    let field = end.saturating_sub(header.field);
    let line = memrchr(b'\n', value).map_or(field, |nl| value.len() - nl);
    let bytes: &'static [u8] = if line + 16 > MAX_LINE {
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

/// The span of the `charset` parameter's value (quotes included) in a Content-Type value.
fn charset_value(value: &[u8]) -> Option<(usize, usize)> {
    let skip_ws = |mut i: usize| {
        while value.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        i
    };
    let skip_quoted = |mut i: usize| {
        i += 1;
        while let Some(&c) = value.get(i) {
            i += if c == b'\\' { 2 } else { 1 };
            if c == b'"' {
                break;
            }
        }
        i.min(value.len())
    };
    let mut i = 0;
    while i < value.len() {
        match value[i] {
            b'"' => i = skip_quoted(i),
            b';' => {
                let name_start = skip_ws(i + 1);
                let mut j = name_start;
                while value
                    .get(j)
                    .is_some_and(|&c| !matches!(c, b'=' | b';' | b'"') && !c.is_ascii_whitespace())
                {
                    j += 1;
                }
                let name = &value[name_start..j];
                j = skip_ws(j);
                if value.get(j) == Some(&b'=') && name.eq_ignore_ascii_case(b"charset") {
                    let from = skip_ws(j + 1);
                    let to = if value.get(from) == Some(&b'"') {
                        skip_quoted(from)
                    } else {
                        let mut to = from;
                        while value
                            .get(to)
                            .is_some_and(|&c| c != b';' && !c.is_ascii_whitespace())
                        {
                            to += 1;
                        }
                        to
                    };
                    return Some((from, to));
                }
                i = name_start.max(i + 1);
            }
            _ => i += 1,
        }
    }
    None
}

/// Where header fields can be added to a part: the start of the blank line that ends its
/// header block. `None` when the block does not end with one.
fn header_end(raw: &[u8], part: &MessagePart<'_>) -> Option<usize> {
    let start = part.offset_header as usize;
    let block = raw
        .get(start..part.offset_body as usize)?
        .strip_suffix(b"\n")?;
    let line = memrchr(b'\n', block).map_or(0, |nl| nl + 1);
    block[line..]
        .iter()
        .all(|&c| matches!(c, b' ' | b'\t' | b'\r'))
        .then_some(start + line)
}

/// Where the decoded body ends before the insertion point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Before {
    Nothing,
    Newline,
    Text,
}

fn before(prefix: &[u8]) -> Before {
    match prefix.last() {
        None => Before::Nothing,
        Some(b'\n') => Before::Newline,
        Some(_) => Before::Text,
    }
}

/// The decoded bytes to insert: the footer on lines of its own, separated from plain text
/// by a blank line. Starts with a line break whenever the text before does not end with one.
fn footer_lines(before: Before, html: bool, footer: &[u8]) -> Vec<u8> {
    let lead: &[u8] = match (before, html) {
        (Before::Nothing, _) | (Before::Newline, true) => b"",
        (Before::Newline, false) | (Before::Text, true) => b"\r\n",
        (Before::Text, false) => b"\r\n\r\n",
    };
    [lead, footer, b"\r\n"].concat()
}

/// Plain text takes the footer at its end; HTML right before its last `</body>`, or at
/// its end when there is none.
fn insertion_point(body: &[u8], html: bool) -> usize {
    if html {
        last_body_close(body).unwrap_or(body.len())
    } else {
        body.len()
    }
}

/// The last `</body>` (any case); also valid in a quoted-printable encoding, where `<`
/// is always a literal character.
fn last_body_close(hay: &[u8]) -> Option<usize> {
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
fn raw_splice(body: &[u8], target: Target, footer: &[u8]) -> Option<(usize, Vec<u8>)> {
    let at = insertion_point(body, target.html);
    let insert = footer_lines(before(&body[..at]), target.html, footer);
    let ascii_ok = target.cte != Cte::SevenBit || insert.is_ascii();
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
fn crlf_lines(footer: &str) -> String {
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

#[cfg(test)]
mod tests;
