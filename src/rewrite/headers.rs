//! The header section of a message as octet ranges, and the header rewrite of delivery:
//! the sender's `X-Optin-*`, `List-Unsubscribe`, `List-Unsubscribe-Post`, `List-Id` and
//! `Feedback-ID` fields go, ours come in front, and `Date` and `Message-ID` are added when
//! missing. The body and every other field stay byte for byte.

use std::borrow::Cow;
use std::ops::Range;

/// One header field: its name and the whole field with continuation lines and CRLF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: Range<usize>,
    pub whole: Range<usize>,
}

/// The fields of the header section of `content` (CRLF lines), and where the header
/// section ends (the offset of the empty line, or the end).
pub fn fields(content: &[u8]) -> (Vec<Field>, usize) {
    let mut out = Vec::new();
    let mut pos = 0;
    let line_end = |from: usize| {
        memchr::memmem::find(&content[from..], b"\r\n").map_or(content.len(), |i| from + i + 2)
    };
    while pos < content.len() && !content[pos..].starts_with(b"\r\n") {
        let start = pos;
        let mut end = line_end(pos);
        while end < content.len() && matches!(content[end], b' ' | b'\t') {
            end = line_end(end);
        }
        let name_end = memchr::memchr(b':', &content[start..end]).map_or(start, |i| start + i);
        out.push(Field {
            name: start..name_end,
            whole: start..end,
        });
        pos = end;
    }
    (out, pos)
}

/// The unfolded, trimmed value of a field.
pub fn value(content: &[u8], f: &Field) -> String {
    let raw = &content[(f.name.end + 1).min(f.whole.end)..f.whole.end];
    String::from_utf8_lossy(raw)
        .split("\r\n")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn is(content: &[u8], f: &Field, name: &str) -> bool {
    content[f.name.clone()].eq_ignore_ascii_case(name.as_bytes())
}

/// Fields the sender may not set on mail the relay stamps.
const REPLACED: [&str; 4] = [
    "list-unsubscribe",
    "list-unsubscribe-post",
    "list-id",
    "feedback-id",
];

/// Returns `content` with `X-Optin-*` removed, the [`REPLACED`] fields removed when
/// `replace_list_fields`, `added` (complete fields, each ending in CRLF) in front, and
/// `Date` / `Message-ID` added when missing. A message that needs none of it is returned
/// as it is, uncopied.
pub fn rewrite<'a>(
    content: &'a [u8],
    added: &[String],
    replace_list_fields: bool,
    message_id_domain: &str,
) -> Cow<'a, [u8]> {
    let (fields, _) = fields(content);
    let dropped = |f: &Field| {
        let name = &content[f.name.clone()];
        (name.len() > 8 && name[..8].eq_ignore_ascii_case(b"x-optin-"))
            || (replace_list_fields
                && REPLACED
                    .iter()
                    .any(|r| name.eq_ignore_ascii_case(r.as_bytes())))
    };
    let (mut has_date, mut has_id, mut drops) = (false, false, false);
    for f in &fields {
        has_date |= is(content, f, "date");
        has_id |= is(content, f, "message-id");
        drops |= dropped(f);
    }
    if added.is_empty() && has_date && has_id && !drops {
        return Cow::Borrowed(content);
    }
    // New fields go below the trace fields at the top (Received, Return-Path), which
    // stay first as RFC 5321 §4.4 wants.
    let trace_end = fields
        .iter()
        .take_while(|f| is(content, f, "received") || is(content, f, "return-path"))
        .last()
        .map_or(0, |f| f.whole.end);
    let mut out = Vec::with_capacity(content.len() + 512);
    out.extend_from_slice(&content[..trace_end]);
    for a in added {
        out.extend_from_slice(a.as_bytes());
    }
    if !has_date {
        let date = mail_builder::headers::date::Date::new(crate::envelope::now_ms() as i64 / 1000);
        out.extend_from_slice(format!("Date: {}\r\n", date.to_rfc822()).as_bytes());
    }
    if !has_id {
        out.extend_from_slice(
            format!(
                "Message-ID: <{:032x}@{message_id_domain}>\r\n",
                rand::random::<u128>()
            )
            .as_bytes(),
        );
    }
    let mut copied = trace_end;
    for f in fields.iter().filter(|f| f.whole.start >= trace_end) {
        if dropped(f) {
            out.extend_from_slice(&content[copied..f.whole.start]);
            copied = f.whole.end;
        }
    }
    out.extend_from_slice(&content[copied..]);
    Cow::Owned(out)
}

/// `"Name" <id>` for List-Id, with an RFC 2047 encoded word for a non-ASCII name.
pub fn phrase(name: &str) -> String {
    if name.is_ascii() {
        let escaped: String = name
            .chars()
            .filter(|c| !c.is_control())
            .flat_map(|c| match c {
                '"' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        format!("\"{escaped}\"")
    } else {
        use base64::Engine;
        format!(
            "=?utf-8?b?{}?=",
            base64::engine::general_purpose::STANDARD.encode(name.as_bytes())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_values() {
        let m = b"Subject: a\r\n b\r\nX-Optin-List: x\r\nTo: t@example.com\r\n\r\nbody\r\n";
        let (f, end) = fields(m);
        assert_eq!(f.len(), 3);
        assert_eq!(&m[end..end + 2], b"\r\n");
        assert_eq!(value(m, &f[0]), "a b");
        assert!(is(m, &f[1], "X-OPTIN-LIST"));
    }

    #[test]
    fn rewrite_replaces_list_fields_and_adds_missing_date_and_id() {
        let m = b"From: a@shop.example\r\nList-Unsubscribe: <mailto:x@y>\r\nX-Optin-List: news\r\nList-Id:\r\n <old.example>\r\nSubject: hi\r\n\r\nList-Id: in the body stays\r\n";
        let out = rewrite(
            m,
            &["List-Id: <news.shop.relay.test>\r\n".into()],
            true,
            "relay.test",
        );
        let text = String::from_utf8(out.into_owned()).unwrap();
        assert!(
            text.starts_with("List-Id: <news.shop.relay.test>\r\nDate: "),
            "{text}"
        );
        assert!(text.contains("\r\nMessage-ID: <") && text.contains("@relay.test>\r\n"));
        assert!(
            !text.contains("mailto:x@y")
                && !text.contains("old.example")
                && !text.contains("X-Optin")
        );
        assert!(
            text.ends_with(
                "From: a@shop.example\r\nSubject: hi\r\n\r\nList-Id: in the body stays\r\n"
            ),
            "{text}"
        );
        // Transactional without unsubscribe headers: the sender's list fields stay.
        let kept = rewrite(m, &[], false, "relay.test");
        assert!(
            String::from_utf8(kept.into_owned())
                .unwrap()
                .contains("List-Unsubscribe: <mailto:x@y>")
        );
        // Trace fields stay on top.
        let traced = rewrite(
            b"Received: from a\r\n\tby b\r\nSubject: x\r\n\r\n",
            &["List-Id: <l>\r\n".into()],
            true,
            "r.test",
        );
        assert!(
            String::from_utf8(traced.into_owned())
                .unwrap()
                .starts_with("Received: from a\r\n\tby b\r\nList-Id: <l>\r\nDate: ")
        );
        // Existing Date and Message-ID are kept, not doubled.
        let m2 = b"Date: Sat, 1 Jan 2000 00:00:00 +0000\r\nMessage-ID: <a@b>\r\n\r\nx";
        assert_eq!(
            rewrite(m2, &[], true, "relay.test").into_owned(),
            m2.to_vec()
        );
    }

    #[test]
    fn phrases() {
        assert_eq!(phrase("Weekly \"News\""), "\"Weekly \\\"News\\\"\"");
        assert_eq!(phrase("Bücher"), "=?utf-8?b?QsO8Y2hlcg==?=");
    }
}
