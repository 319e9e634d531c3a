//! Reading ARF feedback reports (RFC 5965): the pure part of taking a complaint. Input is
//! whatever a stranger mailed to the feedback address, so it is read only after
//! [`within_mime_budget`] said its MIME structure is small enough to parse, and nothing
//! here trusts what it finds: tokens are returned unchecked, addresses normalised.

use mail_parser::{MessageParser, MimeHeaders};

use super::{MAX_FEEDBACK_TYPE, Malformed, Report};
use crate::bounce::parse::is_type;
use crate::rewrite::token::MAX_TOKEN_LEN;
use crate::smtp::address::canonical_domain;

/// The most MIME part boundaries (lines starting with `--`) a report may have: an ARF
/// report has four; forwarded copies add a few.
pub const MAX_BOUNDARY_LINES: usize = 256;
/// The most `multipart` Content-Type fields, which bounds the nesting depth.
pub const MAX_MULTIPARTS: usize = 16;

/// Whether `raw` is within the part and nesting budget, judged by a linear scan of its
/// lines before any MIME parser sees it (mail-parser itself has no limit on parts: one
/// part per ~7 octets of boundary lines is possible).
pub fn within_mime_budget(raw: &[u8]) -> bool {
    let mut boundaries = 0;
    let mut multiparts = 0;
    // Inside a Content-Type field (its folded continuation lines belong to it), and
    // whether that field was counted already.
    let (mut in_type, mut counted) = (false, false);
    for line in raw.split(|&b| b == b'\n') {
        let continuation = line.first().is_some_and(|&b| b == b' ' || b == b'\t');
        if line.starts_with(b"--") {
            in_type = false;
            boundaries += 1;
            if boundaries > MAX_BOUNDARY_LINES {
                return false;
            }
            continue;
        }
        if continuation && in_type {
            // `Content-Type:\r\n multipart/mixed` is one field: look at the folded rest.
        } else if line.len() >= 13 && line[..13].eq_ignore_ascii_case(b"content-type:") {
            (in_type, counted) = (true, false);
        } else {
            in_type = false;
            continue;
        }
        if !counted && memchr::memmem::find(&line.to_ascii_lowercase(), b"multipart").is_some() {
            counted = true;
            multiparts += 1;
            if multiparts > MAX_MULTIPARTS {
                return false;
            }
        }
    }
    true
}

/// Whether a (lower-case) `Feedback-Type` is a complaint (`Some(true)`), a report that
/// is none (`Some(false)`), or one this relay does not know (`None`).
pub fn is_complaint(feedback_type: &str) -> Option<bool> {
    match feedback_type {
        "abuse" | "fraud" | "virus" | "other" => Some(true),
        "not-spam" | "auth-failure" => Some(false),
        _ => None,
    }
}

/// Reads an ARF report (RFC 5965): a `multipart/report; report-type=feedback-report`
/// with a `message/feedback-report` part and, usually, the reported message or its
/// header section (`message/rfc822`, `text/rfc822-headers`, or their `global` forms).
pub fn parse(raw: &[u8]) -> Result<Report, Malformed> {
    let message = MessageParser::new()
        .parse(raw)
        .ok_or(Malformed::Unparsable)?;
    let ct = message.content_type().ok_or(Malformed::NotReport)?;
    if !ct.ctype().eq_ignore_ascii_case("multipart")
        || !ct
            .subtype()
            .is_some_and(|s| s.eq_ignore_ascii_case("report"))
    {
        return Err(Malformed::NotReport);
    }
    let report_type = ct
        .attributes()
        .unwrap_or_default()
        .iter()
        .find(|a| a.name.eq_ignore_ascii_case("report-type"))
        .map(|a| a.value.trim());
    if !report_type.is_some_and(|t| t.eq_ignore_ascii_case("feedback-report")) {
        return Err(Malformed::NotFeedbackReport);
    }
    // Part 0 is the root; the report's parts follow, at any depth of this message (a
    // message/rfc822 part's own parts live inside it).
    let parts = message.parts.get(1..).unwrap_or_default();
    let feedback = parts
        .iter()
        .position(|p| is_type(p, "message", &["feedback-report"]))
        .ok_or(Malformed::NoFeedbackPart)?;
    let fields = report_fields(&String::from_utf8_lossy(parts[feedback].contents()));
    let field = |name: &'static str| {
        fields
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v)
    };
    let feedback_type = field("feedback-type")
        .next()
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty())
        .ok_or(Malformed::NoFeedbackType)?;
    if feedback_type.len() > MAX_FEEDBACK_TYPE || is_complaint(&feedback_type).is_none() {
        return Err(Malformed::UnknownFeedbackType);
    }
    let original_rcpt = field("original-rcpt-to").find_map(|v| rcpt_address(v));
    let user_agent = field("user-agent")
        .next()
        .map(|v| v.chars().take(100).collect());
    // RFC 5965 puts the original third; a report that puts it elsewhere still counts.
    let (tokens, sender_domains) = parts
        .iter()
        .find(|p| {
            is_type(
                p,
                "message",
                &["rfc822", "global", "rfc822-headers", "global-headers"],
            ) || is_type(p, "text", &["rfc822-headers"])
        })
        .map(|p| original_facts(p.contents()))
        .unwrap_or_default();
    Ok(Report {
        feedback_type,
        user_agent,
        tokens,
        original_rcpt,
        sender_domains,
    })
}

/// The fields of a `message/feedback-report` body (header syntax), unfolded, with
/// lower-case names.
fn report_fields(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = out.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            out.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    out
}

/// The normalised address of an `Original-Rcpt-To` value (`addr`, `<addr>`, or with the
/// DSN-style `rfc822;` prefix); `None` when it is none (providers often redact it).
fn rcpt_address(value: &str) -> Option<String> {
    let mut v = value.trim();
    if v.get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case("rfc822;"))
    {
        v = v[7..].trim();
    }
    let v = v.strip_prefix('<').unwrap_or(v);
    let v = v.strip_suffix('>').unwrap_or(v);
    crate::consent::key::normalise(v).ok()
}

/// Tokens and sender domains of the reported message (or its header section).
fn original_facts(original: &[u8]) -> (Vec<String>, Vec<String>) {
    let Some(headers) = MessageParser::new().parse_headers(original) else {
        return Default::default();
    };
    let mut tokens = Vec::new();
    let mut domains = Vec::new();
    let mut add_domain = |d: Option<String>| {
        if let Some(d) = d
            && !domains.contains(&d)
        {
            domains.push(d);
        }
    };
    add_domain(
        headers
            .from()
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .and_then(|a| a.rsplit_once('@'))
            .and_then(|(_, d)| canonical_domain(d)),
    );
    for (name, value) in headers.headers_raw() {
        if name.eq_ignore_ascii_case("list-unsubscribe") {
            for t in tokens_in(value) {
                if !tokens.contains(&t) {
                    tokens.push(t);
                }
            }
        } else if name.eq_ignore_ascii_case("dkim-signature") {
            add_domain(dkim_domain(value));
        }
    }
    (tokens, domains)
}

/// The candidate unsubscribe tokens of a `List-Unsubscribe` value: `<…/u/TOKEN>` and
/// `<mailto:unsubscribe+TOKEN@…>`, unchecked. White space inside the brackets (folding)
/// is ignored, as RFC 2369 asks.
pub fn tokens_in(value: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find('<') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('>') else { break };
        let uri: String = after[..end]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        rest = &after[end + 1..];
        let candidate = if uri
            .get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case("mailto:"))
        {
            let local = uri[7..].split('@').next().unwrap_or_default();
            local
                .get(..12)
                .filter(|p| p.eq_ignore_ascii_case("unsubscribe+"))
                .map(|_| &local[12..])
        } else {
            uri.rfind("/u/")
                .and_then(|i| uri[i + 3..].split(['?', '#', '/']).next())
        };
        if let Some(t) = candidate
            && !t.is_empty()
            && t.len() <= MAX_TOKEN_LEN
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !out.iter().any(|o| o == t)
        {
            out.push(t.to_string());
        }
    }
    out
}

/// The `d=` domain of a DKIM-Signature value, canonical.
fn dkim_domain(value: &str) -> Option<String> {
    value.split(';').find_map(|tag| {
        let tag: String = tag.chars().filter(|c| !c.is_whitespace()).collect();
        tag.strip_prefix("d=").and_then(canonical_domain)
    })
}
