//! The MIME structure of a message as octet ranges (RFC 2045, RFC 2046), read for the
//! footer: an entity's header fields, its Content-Type with parameters, its transfer
//! encoding and disposition, and the body parts of a multipart.
//!
//! Why not mail-parser: it decodes every part, looks for a boundary anywhere in a line,
//! scans to the end of the message for each multipart whose boundary never comes (a
//! message of such declarations costs time quadratic in its size), and nests forwarded
//! messages as values whose drop recurses once per level (deep enough, that overflows a
//! thread's stack). Reading only the structure the footer walks keeps the cost linear.
//!
//! What it does: reads header sections and splits multiparts, each with one pass over
//! the octets concerned; it never decodes a body and never recurses — the caller walks the
//! tree, as deep as it allows. Delimiters count only at the start of a line, as RFC 2046
//! §5.1.1 has them; a line that starts with a delimiter and goes on is refused
//! ([`SplitError::BoundaryInPart`]), since mail programs disagree about it.
//!
//! It must never panic, whatever the input.

use std::ops::Range;

use memchr::memmem;

use super::headers::{self, Field};

/// An entity's type and parameters; names lower-cased, values unquoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ContentType {
    pub ctype: String,
    pub subtype: String,
    pub params: Vec<(String, String)>,
}

impl ContentType {
    fn new(ctype: &str, subtype: &str) -> ContentType {
        ContentType {
            ctype: ctype.into(),
            subtype: subtype.into(),
            params: Vec::new(),
        }
    }

    /// The parameter of that (lower-case) name is given more than once: readers differ on
    /// which counts (RFC 2045 has each name once), so the part is ambiguous.
    pub fn repeats(&self, name: &str) -> bool {
        self.params.iter().filter(|(n, _)| n == name).count() > 1
    }

    /// The first parameter of that (lower-case) name.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[cfg(test)]
    pub fn is(&self, ctype: &str, subtype: &str) -> bool {
        self.ctype == ctype && self.subtype == subtype
    }
}

/// A Content-Transfer-Encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cte {
    /// `7bit`, or no field (the RFC 2045 default).
    SevenBit,
    /// `8bit` or `binary`.
    EightBit,
    QuotedPrintable,
    Base64,
    /// Anything else (`6bit`, `x-uuencode` …): opaque data (RFC 2045 §6.4).
    Other,
}

/// One entity: the message itself or a body part.
#[derive(Debug, Clone)]
pub(super) struct Entity {
    pub start: usize,
    /// Header fields, ranges in the whole message.
    pub fields: Vec<Field>,
    /// The start of the empty line that ends the header section (where fields can be
    /// added); `None` when there is none.
    pub header_end: Option<usize>,
    pub body: Range<usize>,
    /// The Content-Type in force: the field's, or the default (RFC 2045 §5.2, RFC 2046
    /// §5.1.5). A field that cannot be read makes the entity `application/octet-stream`:
    /// opaque, never edited.
    pub content_type: ContentType,
    pub content_type_field: Option<usize>,
    pub cte: Cte,
    pub cte_field: Option<usize>,
    pub attachment: bool,
    /// Why the header section is ambiguous (a MIME field twice), if it is.
    pub ambiguous: Option<&'static str>,
}

impl Entity {
    /// Reads the entity in `raw[range]`. `in_digest`: it is a part of a multipart/digest,
    /// whose default type is message/rfc822.
    pub fn read(raw: &[u8], range: Range<usize>, in_digest: bool) -> Entity {
        let start = range.start.min(raw.len());
        let end = range.end.clamp(start, raw.len());
        let (mut fields, at) = headers::fields(&raw[start..end]);
        for f in &mut fields {
            f.name = f.name.start + start..f.name.end + start;
            f.whole = f.whole.start + start..f.whole.end + start;
        }
        let (header_end, body) = if start + at < end {
            (Some(start + at), (start + at + 2).min(end)..end)
        } else {
            (None, end..end)
        };
        let find = |name: &str| {
            let mut matching = fields
                .iter()
                .enumerate()
                .filter(|(_, f)| headers::is(raw, f, name))
                .map(|(i, _)| i);
            (matching.next(), matching.next().is_some())
        };
        let (content_type_field, two_types) = find("content-type");
        let (cte_field, two_encodings) = find("content-transfer-encoding");
        let (disposition, _) = find("content-disposition");
        let value = |i: usize| {
            let f = &fields[i];
            &raw[(f.name.end + 1).min(f.whole.end)..f.whole.end]
        };
        let content_type = match content_type_field {
            Some(i) => parse_content_type(value(i))
                .unwrap_or_else(|| ContentType::new("application", "octet-stream")),
            None if in_digest => ContentType::new("message", "rfc822"),
            None => ContentType::new("text", "plain"),
        };
        let cte = match cte_field.map(|i| first_token(value(i)).to_ascii_lowercase()) {
            None => Cte::SevenBit,
            Some(t) => match &t[..] {
                b"7bit" => Cte::SevenBit,
                b"8bit" | b"binary" => Cte::EightBit,
                b"quoted-printable" => Cte::QuotedPrintable,
                b"base64" => Cte::Base64,
                _ => Cte::Other,
            },
        };
        let attachment =
            disposition.is_some_and(|i| first_token(value(i)).eq_ignore_ascii_case(b"attachment"));
        let ambiguous = if two_types {
            Some("two Content-Type fields in one part")
        } else if two_encodings {
            Some("two Content-Transfer-Encoding fields in one part")
        } else if header_end.is_some()
            && fields.iter().any(|f| !is_field_name(&raw[f.name.clone()]))
        {
            // Readers differ on such a line (a continuation? junk? the end of the header?),
            // and so on the part's Content-Type.
            Some("a header line that is not a field (no name of printable ASCII and a colon)")
        } else {
            None
        };
        Entity {
            start,
            fields,
            header_end,
            body,
            content_type,
            content_type_field,
            cte,
            cte_field,
            attachment,
            ambiguous,
        }
    }

    pub fn field(&self, name: &str, raw: &[u8]) -> Option<&Field> {
        self.fields.iter().find(|f| headers::is(raw, f, name))
    }
}

/// Why a multipart cannot be split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SplitError {
    /// No close delimiter.
    Unterminated,
    /// A line starts with the delimiter and goes on with something else.
    BoundaryInPart,
}

/// The body parts of a multipart whose body is `raw[body]`: the octets between each
/// delimiter line and the line break before the next delimiter (that line break belongs to
/// the delimiter). The preamble and the epilogue are not parts.
pub(super) fn split(
    raw: &[u8],
    body: Range<usize>,
    boundary: &str,
) -> Result<Vec<Range<usize>>, SplitError> {
    let hay = raw.get(body.clone()).unwrap_or_default();
    let boundary = boundary.as_bytes();
    let mut parts = Vec::new();
    let mut open: Option<usize> = None;
    let line_starts = std::iter::once(0)
        .filter(|_| hay.starts_with(b"--"))
        .chain(memmem::find_iter(hay, b"\n--").map(|at| at + 1));
    for at in line_starts {
        let line_end = memchr::memchr(b'\n', &hay[at..]).map_or(hay.len(), |nl| at + nl);
        let line = &hay[at + 2..line_end];
        let Some(rest) = line.strip_prefix(boundary) else {
            continue;
        };
        let (close, rest) = match rest.strip_prefix(b"--") {
            Some(rest) => (true, rest),
            None => (false, rest),
        };
        // Transport padding (RFC 2046 §5.1.1), and the CR of the line break.
        if !rest.iter().all(|&c| matches!(c, b' ' | b'\t' | b'\r')) {
            return Err(SplitError::BoundaryInPart);
        }
        if let Some(from) = open {
            let mut to = at;
            if to > from && hay[to - 1] == b'\n' {
                to -= 1;
                if to > from && hay[to - 1] == b'\r' {
                    to -= 1;
                }
            }
            parts.push(body.start + from..body.start + to.max(from));
        }
        if close {
            return Ok(parts);
        }
        open = Some((line_end + 1).min(hay.len()));
    }
    Err(SplitError::Unterminated)
}

/// The first token of a field value (its parameters and comments left out), for
/// Content-Transfer-Encoding and Content-Disposition.
fn first_token(value: &[u8]) -> &[u8] {
    let mut lexer = Lexer { s: value, i: 0 };
    lexer.skip_cfws();
    lexer.token()
}

/// RFC 5322 §3.6.8: one or more printable ASCII characters other than the colon.
fn is_field_name(name: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(|&c| (33..=126).contains(&c) && c != b':')
}

/// Reads a Content-Type value (RFC 2045 §5.1, with comments and folding); `None` when it
/// has no `type/subtype`.
fn parse_content_type(value: &[u8]) -> Option<ContentType> {
    parse_content_type_spans(value).map(|(ct, _)| ct)
}

/// Where the value of the first parameter `name` (lower-case) stands in a Content-Type
/// value (quotes included), read as [`Entity::read`] reads it — so that what the rewrite
/// changes is exactly the parameter every later reading finds.
pub(super) fn param_span(value: &[u8], name: &str) -> Option<Range<usize>> {
    let (ct, spans) = parse_content_type_spans(value)?;
    let i = ct.params.iter().position(|(n, _)| n == name)?;
    Some(spans[i].clone())
}

/// [`parse_content_type`], and where each parameter's value is in `value`.
fn parse_content_type_spans(value: &[u8]) -> Option<(ContentType, Vec<Range<usize>>)> {
    let mut spans = Vec::new();
    let mut lexer = Lexer { s: value, i: 0 };
    lexer.skip_cfws();
    let ctype = lexer.token();
    lexer.skip_cfws();
    if ctype.is_empty() || !lexer.eat(b'/') {
        return None;
    }
    lexer.skip_cfws();
    let subtype = lexer.token();
    if subtype.is_empty() {
        return None;
    }
    let lower = |t: &[u8]| String::from_utf8_lossy(t).to_ascii_lowercase();
    let mut ct = ContentType::new(&lower(ctype), &lower(subtype));
    loop {
        lexer.skip_cfws();
        if lexer.done() {
            return Some((ct, spans));
        }
        if !lexer.eat(b';') {
            // Something that is not a parameter: skip to the next one.
            lexer.skip_to_semicolon();
            continue;
        }
        lexer.skip_cfws();
        let name = lower(lexer.token());
        lexer.skip_cfws();
        if name.is_empty() || !lexer.eat(b'=') {
            continue;
        }
        lexer.skip_cfws();
        let from = lexer.i;
        let value = if lexer.peek() == Some(b'"') {
            lexer.quoted()
        } else {
            lexer.token().to_vec()
        };
        spans.push(from..lexer.i.min(lexer.s.len()));
        ct.params
            .push((name, String::from_utf8_lossy(&value).into_owned()));
    }
}

struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Lexer<'a> {
    fn done(&self) -> bool {
        self.i >= self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        let hit = self.peek() == Some(c);
        self.i += usize::from(hit);
        hit
    }

    /// White space, line breaks (folding) and comments, nested ones included.
    fn skip_cfws(&mut self) {
        let mut depth = 0usize;
        while let Some(c) = self.peek() {
            match c {
                b'(' => depth += 1,
                b')' if depth > 0 => depth -= 1,
                // An escape inside a comment takes the next octet, if there is one.
                b'\\' if depth > 0 && self.i + 1 < self.s.len() => self.i += 1,
                b' ' | b'\t' | b'\r' | b'\n' => {}
                _ if depth > 0 => {}
                _ => return,
            }
            self.i += 1;
        }
    }

    /// RFC 2045 token: any octet but controls, space and tspecials (8-bit octets are let
    /// through, as mail programs do).
    fn token(&mut self) -> &'a [u8] {
        let start = self.i;
        while let Some(c) = self.peek() {
            if c <= b' ' || c == 0x7f || b"()<>@,;:\\\"/[]?=".contains(&c) {
                break;
            }
            self.i += 1;
        }
        &self.s[start..self.i]
    }

    /// A quoted string, escapes resolved and folding removed; stops at the end of the
    /// value when the closing quote is missing.
    fn quoted(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.i += 1;
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    if let Some(next) = self.peek() {
                        out.push(next);
                        self.i += 1;
                    }
                }
                b'\r' | b'\n' => {}
                _ => out.push(c),
            }
        }
        out
    }

    fn skip_to_semicolon(&mut self) {
        while let Some(c) = self.peek() {
            if c == b';' {
                return;
            }
            if c == b'"' {
                self.quoted();
            } else {
                self.i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comment_ending_in_a_backslash_ends_the_value() {
        // The last octet an escape inside an unclosed comment: nothing is read past the
        // value (found by fuzz/footer_splice, which panicked on the slice).
        for value in [&b"text/(x\\"[..], b"text/plain; a=(b\\", b"(\\"] {
            if let Some(ct) = parse_content_type(value) {
                assert!(ct.params.iter().all(|(_, v)| v.is_empty()), "{value:?}");
            }
        }
        assert_eq!(
            parse_content_type(b"text/plain (c\\) ; charset=x")
                .and_then(|c| c.param("charset").map(str::to_string)),
            None,
            "the escaped ')' keeps the comment open to the end"
        );
    }

    #[test]
    fn content_type_values_are_read_with_comments_quotes_and_folding() {
        let ct = parse_content_type(
            b" Multipart/Mixed (a comment; with \\) inside);\r\n\tBoundary=\"a b\\\"c\"; charset = utf-8 ;x",
        )
        .unwrap();
        assert_eq!(
            (ct.ctype.as_str(), ct.subtype.as_str()),
            ("multipart", "mixed")
        );
        assert_eq!(ct.param("boundary"), Some("a b\"c"));
        assert_eq!(ct.param("charset"), Some("utf-8"));
        assert_eq!(ct.param("x"), None);
        assert_eq!(parse_content_type(b"text"), None);
        assert_eq!(parse_content_type(b"/plain"), None);
        let ct = parse_content_type(b"text/plain garbage \"q;q\"; charset=\"iso-8859-1").unwrap();
        assert_eq!(ct.param("charset"), Some("iso-8859-1"));
    }

    #[test]
    fn entities_have_defaults_and_flag_doubled_fields() {
        let raw = b"Subject: x\r\nContent-Transfer-Encoding: 6BIT (old)\r\n\r\nbody";
        let e = Entity::read(raw, 0..raw.len(), false);
        assert!(e.content_type.is("text", "plain"));
        assert_eq!(e.cte, Cte::Other);
        assert_eq!(&raw[e.body.clone()], b"body");
        assert_eq!(e.header_end, Some(raw.len() - 6));
        let e = Entity::read(b"\r\nx", 0..3, true);
        assert!(e.content_type.is("message", "rfc822") && e.fields.is_empty());
        assert_eq!(e.body, 2..3);
        let raw = b"Content-Type: text/plain\r\nContent-type: text/html\r\n\r\n";
        assert!(Entity::read(raw, 0..raw.len(), false).ambiguous.is_some());
        let raw = b"Content-Type: nonsense\r\nContent-Disposition: Attachment; x=y\r\n";
        let e = Entity::read(raw, 0..raw.len(), false);
        assert!(e.content_type.is("application", "octet-stream") && e.attachment);
        assert_eq!(e.header_end, None);
    }

    #[test]
    fn multiparts_split_at_delimiter_lines_only() {
        let body = b"preamble\r\n--b\r\nA\r\n--b \t\r\n\r\nB\r\n\r\n--b--\r\nepilogue\r\n--b\r\n";
        let parts = split(body, 0..body.len(), "b").unwrap();
        let texts: Vec<&[u8]> = parts.iter().map(|r| &body[r.clone()]).collect();
        assert_eq!(texts, [&b"A"[..], b"\r\nB\r\n"]);
        // At the very start, a close without line break, an empty part.
        let body = b"--b\r\n--b--";
        let parts = split(body, 0..body.len(), "b").unwrap();
        assert_eq!((parts.len(), parts[0].clone()), (1, 5..5));
        let body = b"--b\r\nx --b--\r\n";
        assert_eq!(
            split(body, 0..body.len(), "b"),
            Err(SplitError::Unterminated)
        );
        let body = b"--b\r\nx\r\n--bb\r\n--b--";
        assert_eq!(
            split(body, 0..body.len(), "b"),
            Err(SplitError::BoundaryInPart)
        );
        assert_eq!(split(b"", 0..0, "b"), Err(SplitError::Unterminated));
    }
}
