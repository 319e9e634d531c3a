//! The footer for a message without a body that can take it: the message becomes the
//! second part of a new `multipart/mixed`, after a `text/plain` part with the footer.
//!
//! The top-level `Content-*` fields describe the content, so they move into the wrapped
//! part (in their order, byte for byte); every other field stays at the top, and the new
//! `Content-Type` (with `MIME-Version` when missing) goes where the header section ends.
//! The content itself is copied as it is. The footer part comes first: mail programs show
//! a first `text/plain` part as the message text, while some show a text part after an
//! attachment as one more attachment.
//!
//! The boundary is `=_optin_` and a hash of the message: `=_` can never occur in
//! quoted-printable (so never in the footer part), and the whole string is checked not to
//! occur in the message.

use std::borrow::Cow;
use std::ops::Range;

use memchr::memmem;

use super::super::entity::{Cte, Entity};
use super::super::headers;
use super::super::mime::qp_encode_into;
use super::splice::Edit;
use super::{FooterError, malformed};

#[derive(Debug, Clone)]
pub(super) struct Wrap {
    boundary: String,
    /// The top-level `Content-*` fields, whole.
    moved: Vec<Range<usize>>,
    /// The start of the empty line that ends the header section.
    header_end: usize,
    body_start: usize,
    needs_mime_version: bool,
    /// The wrapper's own transfer encoding, when the content is 8bit or binary (a
    /// multipart may only say 7bit, 8bit or binary, RFC 2045 §6.4).
    outer_cte: Option<&'static str>,
}

impl Wrap {
    pub(super) fn new(raw: &[u8], root: &Entity) -> Result<Wrap, FooterError> {
        let header_end = root
            .header_end
            .ok_or_else(|| malformed("no header/body separator"))?;
        let hash = blake3::hash(raw).to_hex();
        let boundary = format!("=_optin_{}", &hash.as_str()[..24]);
        if memmem::find(raw, boundary.as_bytes()).is_some() {
            return Err(malformed(
                "the message contains the boundary for its footer part",
            ));
        }
        let moved = root
            .fields
            .iter()
            .filter(|f| {
                raw.get(f.name.clone()).is_some_and(|name| {
                    name.len() > 8 && name[..8].eq_ignore_ascii_case(b"content-")
                })
            })
            .map(|f| f.whole.clone())
            .collect();
        let outer_cte = match (root.cte, root.cte_field) {
            (Cte::EightBit, Some(i)) => {
                let value = headers::value(raw, &root.fields[i]).to_ascii_lowercase();
                Some(if value.starts_with("binary") {
                    "binary"
                } else {
                    "8bit"
                })
            }
            _ => None,
        };
        Ok(Wrap {
            boundary,
            moved,
            header_end,
            body_start: root.body.start,
            needs_mime_version: root.field("mime-version", raw).is_none(),
            outer_cte,
        })
    }

    /// The edits that wrap `raw` with `footer` (plain text, CRLF lines) as the first part.
    pub(super) fn edits(&self, raw: &[u8], footer: &str, edits: &mut Vec<Edit>) {
        let b = &self.boundary;
        let mut top = String::new();
        if self.needs_mime_version {
            top.push_str("MIME-Version: 1.0\r\n");
        }
        top.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"{b}\"\r\n"
        ));
        if let Some(cte) = self.outer_cte {
            top.push_str(&format!("Content-Transfer-Encoding: {cte}\r\n"));
        }
        let mut parts = format!(
            "--{b}\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: quoted-printable\r\nContent-Disposition: inline\r\n\r\n"
        )
        .into_bytes();
        qp_encode_into(footer.as_bytes(), &mut parts);
        parts.extend_from_slice(format!("\r\n--{b}\r\n").as_bytes());
        for field in &self.moved {
            parts.extend_from_slice(raw.get(field.clone()).unwrap_or_default());
        }
        parts.extend_from_slice(b"\r\n");
        for field in &self.moved {
            edits.push(Edit {
                start: field.start,
                end: field.end,
                bytes: Cow::Borrowed(b""),
            });
        }
        edits.push(Edit {
            start: self.header_end,
            end: self.header_end,
            bytes: Cow::Owned(top.into_bytes()),
        });
        edits.push(Edit {
            start: self.body_start,
            end: self.body_start,
            bytes: Cow::Owned(parts),
        });
        // The line break before the close delimiter belongs to it (RFC 2046 §5.1.1), so
        // the content keeps its own last line break.
        edits.push(Edit {
            start: raw.len(),
            end: raw.len(),
            bytes: Cow::Owned(format!("\r\n--{b}--\r\n").into_bytes()),
        });
    }
}
