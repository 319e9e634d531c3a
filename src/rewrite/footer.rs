//! The consent footer: a short consent statement with a visible unsubscribe link, added at
//! delivery time, per recipient, to the body a reader sees.
//!
//! Which parts get it: a message without MIME structure, or a `text/plain` / `text/html`
//! message, is one body. In `multipart/mixed`, `multipart/related` and any other multipart
//! but `alternative` the body is found in the first part, by the same rules. In
//! `multipart/alternative` each alternative's body gets it (a reader's program shows one
//! alternative); a nested `multipart/alternative` counts its alternatives with the outer
//! one's. The footer goes into at most [`MAX_FOOTERS`] bodies: with more alternatives the
//! last plain one, the last HTML one (what a program that shows the last alternative it can
//! display will show, RFC 2046 §5.1.4) and those nearest the end get it. Plain text gets
//! the text footer on lines of its own after a blank line; HTML gets the HTML footer right
//! before its last `</body>`, or at its end.
//!
//! A message without such a body — only attachments, an image, a text in a transfer
//! encoding that cannot be edited (`6bit` and other unknown ones are opaque data, RFC 2045
//! §6.4) — is wrapped: it becomes the second part of a new `multipart/mixed` whose first
//! part is the text footer (`text/plain`, UTF-8, quoted-printable), so the statement and
//! link are always there. Its `Content-*` fields move into the wrapped part, every other
//! field stays at the top.
//!
//! Attachments, non-text parts, `text/*` other than plain and HTML, `message/rfc822` and
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
//! around the changed parts verbatim (at the offsets `entity.rs` finds) instead of
//! rebuilding the message; it is both faster and the only way to keep every other byte —
//! headers, attachments, forwarded messages — exactly as the sender wrote them. The
//! structure is read once per message ([`Plan`]); each recipient then costs a splice.
//!
//! Bounded work: reading the structure is linear in the message, the walk goes at most
//! [`MAX_DEPTH`] multiparts deep, and the output grows by at most [`MAX_FOOTERS`] footers
//! (plus the re-encoding of the parts that get one, or the wrapper).
//!
//! It must never panic, whatever the input: a message it cannot read is refused with
//! [`FooterError::Malformed`] rather than returned without its footer.

use std::borrow::Cow;

use super::entity::{Cte, Entity, SplitError, split};
use super::headers::Field;
use super::mime::{Charset, b64_decode, qp_decode, qp_undecodable};

mod splice;
mod wrap;

#[cfg(test)]
use splice::{before, charset_value, footer_lines, insertion_point, last_body_close};
use splice::{crlf_lines, rewrite_part};

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
    /// structure that cannot be read without guessing (unterminated multipart, no
    /// header/body separator, nesting too deep …), with a short reason
    #[error("malformed MIME: {0}")]
    Malformed(String),
}

/// Checks at submission whether the message can carry the footer (same rules as
/// [`add_footer`], no output). Cheap: the structure is read, no body is re-encoded.
pub fn check(message: &[u8]) -> Result<(), FooterError> {
    Plan::new(message).map(|_| ())
}

/// Returns the message with the footer added to its body (or bodies, or as a part).
pub fn add_footer(message: &[u8], footer: &Footer<'_>) -> Result<Vec<u8>, FooterError> {
    Plan::new(message)?.apply(message, footer)
}

/// Multiparts nested deeper on the way to the body are refused rather than walked: real
/// mail stays far below, and the walk recurses.
pub const MAX_DEPTH: usize = 32;
/// The most bodies that get the footer in one message (see the module doc for which).
pub const MAX_FOOTERS: usize = 8;

/// Where a message's footers go. Reading the structure is most of the cost; a plan made
/// once per message puts each recipient's own footer in with a splice.
#[derive(Debug, Clone)]
pub struct Plan {
    parts: Vec<PartPlan>,
    /// Set when no part can take the footer: the message is wrapped instead.
    wrap: Option<wrap::Wrap>,
}

/// One body part that gets the footer, with everything its rewrite needs.
#[derive(Debug, Clone)]
struct PartPlan {
    html: bool,
    cte: Cte,
    /// The body's octets in the message.
    start: usize,
    end: usize,
    charset: Charset,
    /// The body decoded to text, for the charsets only mail-parser's decoders know.
    parsed: String,
    content_type: Option<HeaderSpan>,
    transfer_encoding: Option<HeaderSpan>,
    /// The part is the message itself and it has no MIME-Version field.
    needs_mime_version: bool,
    header_end: Option<usize>,
}

impl PartPlan {
    /// The body decoded to text (lossily where its charset says otherwise).
    fn text(&self, raw: &[u8]) -> String {
        let encoded = raw.get(self.start..self.end).unwrap_or_default();
        let decoded = decode(self.cte, encoded);
        match self.charset {
            // `to_utf8` serves transcoding, which a UTF-8 part never needs.
            Charset::Utf8 => String::from_utf8_lossy(&decoded).into_owned(),
            charset => {
                String::from_utf8_lossy(&charset.to_utf8(&decoded, &self.parsed)).into_owned()
            }
        }
    }
}

/// A body's transfer encoding undone (the identity for 7bit, 8bit and binary).
fn decode(cte: Cte, encoded: &[u8]) -> Cow<'_, [u8]> {
    match cte {
        Cte::QuotedPrintable => Cow::Owned(qp_decode(encoded)),
        Cte::Base64 => Cow::Owned(b64_decode(encoded)),
        _ => Cow::Borrowed(encoded),
    }
}

/// Where a header field and its value are.
#[derive(Debug, Clone, Copy)]
struct HeaderSpan {
    field: usize,
    start: usize,
    end: usize,
}

impl HeaderSpan {
    fn of(f: &Field) -> HeaderSpan {
        HeaderSpan {
            field: f.whole.start,
            start: (f.name.end + 1).min(f.whole.end),
            end: f.whole.end,
        }
    }
}

impl Plan {
    /// Reads `message` and finds where its footers go, or why it cannot take one.
    pub fn new(message: &[u8]) -> Result<Plan, FooterError> {
        let root = Entity::read(message, 0..message.len(), false);
        if root.header_end.is_none() {
            return Err(malformed("no header/body separator"));
        }
        let mut found = Vec::new();
        collect(message, &root, 0, &mut found)?;
        if found.is_empty() {
            return Ok(Plan {
                parts: Vec::new(),
                wrap: Some(wrap::Wrap::new(message, &root)?),
            });
        }
        let parts = select(found)
            .iter()
            .map(|body| part_plan(message, body))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Plan { parts, wrap: None })
    }

    /// How many bodies get the footer (0 when the message is wrapped).
    pub fn bodies(&self) -> usize {
        self.parts.len()
    }

    /// Whether the footer comes as a part of its own, the message wrapped.
    pub fn wraps(&self) -> bool {
        self.wrap.is_some()
    }

    /// `message` (the one the plan was made from) with `footer` in every body part.
    pub fn apply(&self, message: &[u8], footer: &Footer<'_>) -> Result<Vec<u8>, FooterError> {
        let text = crlf_lines(footer.text);
        let mut edits = Vec::new();
        if let Some(wrap) = &self.wrap {
            wrap.edits(message, &text, &mut edits);
        }
        let html = crlf_lines(footer.html);
        for part in &self.parts {
            let footer = if part.html { &html } else { &text };
            rewrite_part(message, part, footer, &mut edits)?;
        }
        splice::splice(message, edits)
    }
}

impl Plan {
    /// `message` (the one the plan was made from) with each body part that would take the
    /// footer passed, decoded, through `edit(html, body)` and re-encoded in its own
    /// transfer encoding; `None` when `edit` changed nothing. A 7bit, 8bit or binary part
    /// whose new body would have a line over 998 octets (or, for 7bit, stop being ASCII)
    /// keeps its old body. The engagement tracking's links and pixel go in this way
    /// ([`super::track`]).
    pub(super) fn transform_bodies(
        &self,
        message: &[u8],
        mut edit: impl FnMut(bool, &[u8]) -> Option<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>, FooterError> {
        use super::mime::{MAX_LINE, b64_encode, longest_line, qp_encode};
        let mut edits = Vec::new();
        for part in &self.parts {
            let encoded = message
                .get(part.start..part.end)
                .ok_or_else(|| malformed("part offsets out of range"))?;
            let Some(new) = edit(part.html, &decode(part.cte, encoded)) else {
                continue;
            };
            let bytes = match part.cte {
                Cte::QuotedPrintable => qp_encode(&new),
                Cte::Base64 => b64_encode(&new, encoded.ends_with(b"\n")),
                cte => {
                    if longest_line(&new) > MAX_LINE || (cte == Cte::SevenBit && !new.is_ascii()) {
                        continue;
                    }
                    new
                }
            };
            edits.push(splice::Edit {
                start: part.start,
                end: part.end,
                bytes: Cow::Owned(bytes),
            });
        }
        if edits.is_empty() {
            return Ok(None);
        }
        splice::splice(message, edits).map(Some)
    }
}

fn malformed(reason: impl Into<String>) -> FooterError {
    FooterError::Malformed(reason.into())
}

/// A body that can take the footer: where its entity is (read again if chosen, so that a
/// message of many parts holds only this much per part).
struct Body {
    entity: std::ops::Range<usize>,
    html: bool,
}

/// Walks the parts a reader would see as the body, refusing signed or encrypted ones;
/// appends the bodies found, in message order.
fn collect(
    raw: &[u8],
    entity: &Entity,
    depth: usize,
    found: &mut Vec<Body>,
) -> Result<(), FooterError> {
    if let Some(why) = entity.ambiguous {
        return Err(malformed(why));
    }
    let ct = &entity.content_type;
    match (ct.ctype.as_str(), ct.subtype.as_str()) {
        ("multipart", "signed") => Err(FooterError::Signed),
        ("multipart", "encrypted") | ("application", "pgp-encrypted") => {
            Err(FooterError::Encrypted)
        }
        ("application", "pkcs7-mime" | "x-pkcs7-mime") => {
            match ct
                .param("smime-type")
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                Some("signed-data") => Err(FooterError::Signed),
                None | Some("enveloped-data" | "authenveloped-data") => Err(FooterError::Encrypted),
                Some(_) => Ok(()),
            }
        }
        ("multipart", subtype) => {
            if depth >= MAX_DEPTH {
                return Err(malformed("multiparts nested too deeply"));
            }
            if ct.repeats("boundary") {
                return Err(malformed("a multipart with two boundary parameters"));
            }
            let boundary = ct.param("boundary").unwrap_or_default();
            if boundary.is_empty() {
                return Err(malformed("multipart without a usable boundary"));
            }
            let children = split(raw, entity.body.clone(), boundary).map_err(|e| match e {
                SplitError::Unterminated => {
                    malformed(format!("unterminated multipart (boundary {boundary:?})"))
                }
                SplitError::BoundaryInPart => malformed(format!(
                    "a line in a part starts with its boundary {boundary:?}"
                )),
            })?;
            let take = if subtype == "alternative" {
                children.len()
            } else {
                1
            };
            for child in children.into_iter().take(take) {
                let child = Entity::read(raw, child, subtype == "digest");
                collect(raw, &child, depth + 1, found)?;
            }
            Ok(())
        }
        ("text", subtype @ ("plain" | "html")) if !entity.attachment => {
            if entity.cte != Cte::Other {
                found.push(Body {
                    entity: entity.start..entity.body.end,
                    html: subtype == "html",
                });
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The bodies that get the footer: all of them up to [`MAX_FOOTERS`]; beyond, the last
/// plain and the last HTML one, then those nearest the end. Message order is kept.
fn select(found: Vec<Body>) -> Vec<Body> {
    if found.len() <= MAX_FOOTERS {
        return found;
    }
    let mut keep = vec![false; found.len()];
    let last_plain = found.iter().rposition(|b| !b.html);
    let last_html = found.iter().rposition(|b| b.html);
    for i in [last_plain, last_html].into_iter().flatten() {
        keep[i] = true;
    }
    let mut kept = keep.iter().filter(|&&k| k).count();
    for k in keep.iter_mut().rev() {
        if kept == MAX_FOOTERS {
            break;
        }
        if !*k {
            *k = true;
            kept += 1;
        }
    }
    found
        .into_iter()
        .zip(keep)
        .filter_map(|(body, keep)| keep.then_some(body))
        .collect()
}

/// Octets decoded from the start of a body to look for an inline PGP armour line.
const ARMOUR_PROBE: usize = 512;

/// Everything the rewrite of one body needs, and the refusals only its text can tell.
fn part_plan(raw: &[u8], body: &Body) -> Result<PartPlan, FooterError> {
    // A text body is never a part of a digest (whose default is message/rfc822).
    let e = &Entity::read(raw, body.entity.clone(), false);
    let header_end = e
        .header_end
        .ok_or_else(|| malformed("a text part without header/body separator"))?;
    let encoded = raw
        .get(e.body.clone())
        .ok_or_else(|| malformed("part offsets out of range"))?;
    if e.cte == Cte::QuotedPrintable && qp_undecodable(encoded) {
        return Err(malformed("undecodable text body"));
    }
    if e.content_type.repeats("charset") {
        // Readers differ on which one counts: the footer could be unreadable in some.
        return Err(malformed("a text part with two charset parameters"));
    }
    let label = e.content_type.param("charset");
    let charset = Charset::of(label);
    let head = decode(e.cte, &encoded[..encoded.len().min(ARMOUR_PROBE)]);
    if (head.starts_with(&[0xFF, 0xFE]) || head.starts_with(&[0xFE, 0xFF]))
        && !label.is_some_and(|l| l.trim().to_ascii_lowercase().starts_with("utf-16"))
    {
        // Decoders built on encoding_rs (mail-parser's for the East Asian charsets among
        // them) let a byte-order mark overrule the label: the footer would be read as
        // UTF-16 by some readers and as the declared charset by others.
        return Err(malformed(
            "a text part that starts with a UTF-16 byte-order mark but is not labelled UTF-16",
        ));
    }
    // Only the charsets this module does not decode itself need the whole text.
    let parsed = match charset {
        Charset::AsciiCompatible | Charset::Stateful => {
            let decoder = label
                .and_then(|l| mail_parser::decoders::charsets::map::charset_decoder(l.as_bytes()));
            if charset == Charset::Stateful && (decoder.is_none() || label.is_some_and(unreadable))
            {
                // The footer never fits such a part, and converting it to UTF-8 through a
                // reading that loses its text would change what the sender wrote.
                return Err(malformed(format!(
                    "a text part in a charset the relay cannot read ({})",
                    crate::smtp::text::Escaped(label.unwrap_or_default())
                )));
            }
            let decoded = decode(e.cte, encoded);
            match decoder {
                Some(decoder) => decoder(&decoded),
                None => String::from_utf8_lossy(&decoded).into_owned(),
            }
        }
        _ => String::new(),
    };
    let start: Cow<'_, str> = if parsed.is_empty() {
        String::from_utf8_lossy(&head)
    } else {
        Cow::Borrowed(&parsed)
    };
    // Only ASCII white space may come before an armour line: a no-break space is text (and
    // must stay text once the part is converted to UTF-8 for its footer).
    let start = start.trim_start_matches(|c: char| c.is_ascii_whitespace());
    if start.starts_with("-----BEGIN PGP SIGNED MESSAGE-----") {
        return Err(FooterError::Signed);
    }
    if start.starts_with("-----BEGIN PGP MESSAGE-----") {
        return Err(FooterError::Encrypted);
    }
    Ok(PartPlan {
        html: body.html,
        cte: e.cte,
        start: e.body.start,
        end: e.body.end,
        charset,
        parsed,
        content_type: e.content_type_field.map(|i| HeaderSpan::of(&e.fields[i])),
        transfer_encoding: e.cte_field.map(|i| HeaderSpan::of(&e.fields[i])),
        needs_mime_version: e.start == 0 && e.field("mime-version", raw).is_none(),
        header_end: Some(header_end),
    })
}

/// Labels mail-parser knows but decodes to a single U+FFFD (the WHATWG "replacement"
/// encoding: ISO-2022-KR, ISO-2022-CN, HZ), compared as mail-parser compares them.
fn unreadable(label: &str) -> bool {
    let label = label.trim().to_ascii_lowercase().replace('-', "_");
    [
        "csiso2022kr",
        "hz_gb_2312",
        "iso_2022_cn",
        "iso_2022_cn_ext",
        "iso_2022_kr",
        "replacement",
    ]
    .contains(&label.as_str())
}

/// For the fuzz targets and tests: what a reader finds where the footer goes.
#[doc(hidden)]
pub mod fuzzing {
    use super::{FooterError, Plan};

    /// Each body [`Plan::new`] would give the footer — `(html, decoded text)` in message
    /// order — or an empty list when it would wrap the message. Run on a rewritten
    /// message, every text must hold its footer.
    pub fn bodies(message: &[u8]) -> Result<Vec<(bool, String)>, FooterError> {
        let plan = Plan::new(message)?;
        Ok(plan
            .parts
            .iter()
            .map(|part| (part.html, part.text(message)))
            .collect())
    }
}

#[cfg(test)]
mod tests;
