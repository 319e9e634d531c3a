//! Reading a message mailed back to a return path: an RFC 3464 delivery status notification
//! (`multipart/report; report-type=delivery-status`, its `message/delivery-status` or RFC
//! 6533 `message/global-delivery-status` part), a non-standard bounce written as text
//! (qmail, Exim, old Postfix and Sendmail, Exchange, Domino, providers' own), an
//! auto-reply (RFC 3834 `Auto-Submitted`, out-of-office markers), or an ARF feedback
//! report (RFC 5965), which belongs to the complaint path.
//!
//! The input is a stranger's: the caller checks its size and MIME budget before this
//! parses it, and nothing here trusts what it finds. The recipient a bounce names is for
//! display only — the relay acts on the recipient its sealed return-path token names.

use mail_parser::{Message, MessageParser, MessagePart, MimeHeaders, PartType};

use crate::smtp::reply::Status;

/// What kind of message it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An RFC 3464 delivery status notification.
    Dsn,
    /// A bounce in words, without a delivery-status part.
    Text,
    /// An out-of-office or other automatic reply: no bounce.
    AutoReply,
    /// A feedback report (a complaint).
    Arf,
    /// Neither: a person's reply, spam, anything else.
    Unknown,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Dsn => "dsn",
            Kind::Text => "text",
            Kind::AutoReply => "auto_reply",
            Kind::Arf => "arf",
            Kind::Unknown => "unknown",
        }
    }
}

/// The RFC 3464 `Action` of a recipient (a text bounce is `Failed` or, when it says it
/// will keep trying, `Delayed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Failed,
    Delayed,
    Delivered,
    Relayed,
    Expanded,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
            Action::Expanded => "expanded",
        }
    }

    fn parse(v: &str) -> Option<Action> {
        let v = v
            .trim()
            .split(|c: char| c.is_whitespace() || c == '(')
            .next()?;
        [
            Action::Failed,
            Action::Delayed,
            Action::Delivered,
            Action::Relayed,
            Action::Expanded,
        ]
        .into_iter()
        .find(|a| v.eq_ignore_ascii_case(a.as_str()))
    }
}

/// One recipient's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The address the bounce names (`Final-Recipient`, else `Original-Recipient`, else
    /// the first address of a text bounce), domain in lower case.
    pub recipient: Option<String>,
    /// `Original-Recipient` of a DSN, when it differs (forwarded mail).
    pub original: Option<String>,
    pub action: Action,
    pub status: Option<Status>,
    /// The SMTP reply code of the diagnostic.
    pub code: Option<u16>,
    /// The diagnostic (or the text bounce's words), at most [`super::MAX_TEXT`] octets.
    pub text: String,
}

impl Report {
    /// The classifier's view of this report.
    pub fn evidence(&self) -> super::Evidence<'_> {
        super::Evidence {
            code: self.code,
            status: self.status,
            text: &self.text,
            domain: self
                .recipient
                .as_deref()
                .and_then(|a| a.rsplit_once('@'))
                .map_or("", |(_, d)| d),
        }
    }

    /// A permanent failure (5.x.x, 5xx, or no code at all in a failed report).
    pub fn permanent(&self) -> bool {
        match (self.status, self.code) {
            (Some(s), _) => s.class == 5,
            (None, Some(c)) => c >= 500,
            (None, None) => true,
        }
    }
}

/// What a message mailed to a return path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounce {
    pub kind: Kind,
    /// Per recipient, for `Dsn` and `Text`.
    pub reports: Vec<Report>,
    /// The `Message-ID` of the returned original, when it came back.
    pub original_message_id: Option<String>,
}

impl Bounce {
    fn of(kind: Kind) -> Bounce {
        Bounce {
            kind,
            reports: Vec::new(),
            original_message_id: None,
        }
    }

    /// The report about `address` (its final or original recipient, compared without
    /// regard to case), else the first failed one, else the first.
    pub fn report_for(&self, address: Option<&str>) -> Option<&Report> {
        let is =
            |x: &Option<String>, a: &str| x.as_deref().is_some_and(|x| x.eq_ignore_ascii_case(a));
        address
            .and_then(|a| {
                self.reports
                    .iter()
                    .find(|r| is(&r.recipient, a) || is(&r.original, a))
            })
            .or_else(|| self.reports.iter().find(|r| r.action == Action::Failed))
            .or_else(|| self.reports.first())
    }
}

/// Reads a message mailed to a return path.
pub fn parse(raw: &[u8]) -> Bounce {
    let Some(message) = MessageParser::new().parse(raw) else {
        return Bounce::of(Kind::Unknown);
    };
    let mut bounce = match report_type(&message).as_deref() {
        Some("feedback-report") => return Bounce::of(Kind::Arf),
        Some("delivery-status" | "global-delivery-status") => {
            dsn(&message).unwrap_or_else(|| text_bounce(&message))
        }
        _ => text_bounce(&message),
    };
    if bounce.kind == Kind::Unknown && is_auto_reply(&message) {
        bounce.kind = Kind::AutoReply;
    }
    bounce.original_message_id = original_message_id(&message);
    bounce
}

/// The `report-type` of a `multipart/report` root, lower case.
fn report_type(message: &Message<'_>) -> Option<String> {
    let ct = message.content_type()?;
    if !ct.ctype().eq_ignore_ascii_case("multipart")
        || !ct
            .subtype()
            .is_some_and(|s| s.eq_ignore_ascii_case("report"))
    {
        return None;
    }
    Some(ct.attribute("report-type")?.trim().to_ascii_lowercase())
}

/// Whether `part` is `ctype/<one of subtypes>` (case-insensitive).
pub fn is_type(part: &MessagePart<'_>, ctype: &str, subtypes: &[&str]) -> bool {
    part.content_type().is_some_and(|ct| {
        ct.ctype().eq_ignore_ascii_case(ctype)
            && ct
                .subtype()
                .is_some_and(|s| subtypes.iter().any(|t| s.eq_ignore_ascii_case(t)))
    })
}

/// An RFC 3464 report; `None` when it has no delivery-status part with a recipient.
fn dsn(message: &Message<'_>) -> Option<Bounce> {
    let part = message.parts.iter().find(|p| {
        is_type(p, "message", &["delivery-status", "global-delivery-status"])
            || is_type(p, "text", &["delivery-status"])
    })?;
    let body = String::from_utf8_lossy(part.contents());
    let words = human_text(message);
    let mut reports = Vec::new();
    // The first group is about the message; each later one about a recipient.
    for group in groups(&body).into_iter().skip(1) {
        let field = |name: &str| {
            group
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        let Some(action) = field("action").and_then(Action::parse) else {
            continue;
        };
        let original = field("original-recipient").and_then(address_of);
        let recipient = field("final-recipient")
            .and_then(address_of)
            .or_else(|| original.clone());
        let original = original.filter(|o| Some(o) != recipient.as_ref());
        let diagnostic = field("diagnostic-code").map(|d| {
            // `smtp; 550 5.1.1 …`: the type is no part of what the server said.
            d.split_once(';').map_or(d, |(_, rest)| rest).trim()
        });
        let said = diagnostic.map(said).unwrap_or_default();
        let field_status = field("status").and_then(|s| Status::parse(s.trim()));
        // A generic status field (`5.0.0`) gives way to the diagnostic's own code.
        let status = match (field_status, said.status) {
            (Some(f), Some(d)) if f.subject == 0 && f.detail == 0 && d.class == f.class => Some(d),
            (Some(f), _) => Some(f),
            (None, d) => d,
        };
        let text = match diagnostic {
            Some(d) if !d.is_empty() => capped(d),
            _ => capped(&words),
        };
        reports.push(Report {
            recipient,
            original,
            action,
            status,
            code: said.code,
            text,
        });
    }
    (!reports.is_empty()).then_some(Bounce {
        kind: Kind::Dsn,
        reports,
        original_message_id: None,
    })
}

/// The groups of a delivery-status body (header syntax, groups split by blank lines):
/// unfolded fields with lower-case names.
fn groups(body: &str) -> Vec<Vec<(String, String)>> {
    let mut out: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for line in body.lines() {
        let group = out.last_mut().expect("never empty");
        if line.trim().is_empty() {
            if !group.is_empty() {
                out.push(Vec::new());
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = group.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            group.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    out.retain(|g| !g.is_empty());
    out
}

/// The address of a `Final-Recipient`-style value (`rfc822; <a@b>`, `a@b`), domain in
/// lower case; `None` when it is no address.
fn address_of(value: &str) -> Option<String> {
    let v = value.split_once(';').map_or(value, |(_, rest)| rest).trim();
    let v = v.strip_prefix('<').unwrap_or(v);
    let v = v.strip_suffix('>').unwrap_or(v).trim();
    // Exchange quotes addresses in its reports: `'jane@example.net'`.
    let v = v
        .strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .unwrap_or(v);
    let (local, domain) = v.rsplit_once('@')?;
    let plausible = !local.is_empty()
        && !domain.is_empty()
        && v.len() <= 254
        && !v.contains(|c: char| c.is_whitespace() || c.is_control() || c == '<' || c == '>');
    plausible.then(|| format!("{local}@{}", domain.to_lowercase()))
}

/// The reply code and enhanced status code in what a server said.
#[derive(Debug, Default, Clone, Copy)]
struct Said {
    code: Option<u16>,
    status: Option<Status>,
}

/// The first reply code (three digits, 4xx or 5xx, standing alone) and the first
/// enhanced status code (class 4 or 5) of `text`.
fn said(text: &str) -> Said {
    let mut out = Said::default();
    let words = text.split(|c: char| {
        c.is_whitespace() || matches!(c, '#' | '(' | ')' | '[' | ']' | ',' | ';' | '<' | '>' | '"')
    });
    for word in words {
        let word = word.trim_end_matches([':', '.']);
        if out.code.is_none() {
            // `550`, `550-…` (continuation) or `554.30` (Yahoo's code and sub-code).
            let digits = word.split(['-', '.']).next().unwrap_or("");
            if digits.len() == 3
                && digits.bytes().all(|b| b.is_ascii_digit())
                && matches!(digits.as_bytes()[0], b'4' | b'5')
                && (word.len() == 3 || !word[3..].contains(|c: char| c.is_ascii_alphabetic()))
                && Status::parse(word).is_none()
            {
                out.code = digits.parse().ok();
            }
        }
        // `452-4.2.2` (a continuation line's code and status run together).
        if out.status.is_none()
            && let Some(s) = word
                .rsplit('-')
                .next()
                .and_then(|w| Status::parse(w.trim_end_matches(['.', ':'])))
            && s.class != 2
        {
            out.status = Some(s);
        }
        if out.code.is_some() && out.status.is_some() {
            break;
        }
    }
    out
}

/// At most [`super::MAX_TEXT`] octets of `text`, white space collapsed.
fn capped(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(super::MAX_TEXT));
    for word in text.split_whitespace() {
        if out.len() + word.len() + 1 > super::MAX_TEXT {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// Lines after which a text bounce quotes the returned message (or its headers), which
/// must not be read as the bounce's own words.
const COPY_MARKERS: &[&str] = &[
    "--- below this line is a copy of the message",
    "------ this is a copy of the message",
    "----- original message -----",
    "-----original message-----",
    "--- the header of the original message",
    "------- returned mail follows",
    "----- unsent message below",
    "original message headers:",
    "original-envelope-id",
    "reporting-mta:",
    "--- original message ---",
];

/// Whether a line starts the quoted copy.
fn is_copy_marker(line: &str) -> bool {
    let l = line.trim().to_ascii_lowercase();
    COPY_MARKERS.iter().any(|m| l.starts_with(m))
        || ["return-path:", "received:", "dkim-signature:"]
            .iter()
            .any(|h| l.starts_with(h))
}

/// The bounce's own words: its text bodies (HTML made text), up to the quoted copy.
fn human_text(message: &Message<'_>) -> String {
    let mut out = String::new();
    for i in 0..message.text_body_count().min(4) {
        let Some(text) = message.body_text(i) else {
            continue;
        };
        for line in text.lines() {
            if is_copy_marker(line) {
                break;
            }
            out.push_str(line);
            out.push('\n');
            if out.len() > 4 * super::MAX_TEXT {
                return out;
            }
        }
    }
    out
}

/// Subjects and senders that say "this is a bounce" (lower case, prefixes or parts).
const BOUNCE_SUBJECTS: &[&str] = &[
    "undeliver",
    "undelivered",
    "delivery status notification",
    "mail delivery failed",
    "delivery failure",
    "returned mail",
    "failure notice",
    "nondeliverable",
    "non-deliverable",
    "non remis",
    "unzustellbar",
    "delivery has failed",
    "mail system error",
    "delivery delayed",
    "delayed mail",
    "warning: could not send",
    "could not send message",
    "delivery notification",
    "message not delivered",
    "mail delivery problem",
    "returned to sender",
    "delivery report",
    "could not be delivered",
    "couldn't be delivered",
    "was not delivered",
    "delivery failed",
];

const BOUNCE_SENDERS: &[&str] = &["mailer-daemon", "postmaster", "mail delivery"];

/// Phrases that say a text bounce will still be retried.
const DELAY_PHRASES: &[&str] = &[
    "delivery delayed",
    "has been delayed",
    "warning message only",
    "you do not need to resend",
    "will retry",
    "will keep trying",
    "still trying",
    "has not yet been delivered",
    "not been delivered yet",
    "delivery attempts will continue",
];

/// A bounce in words: a bounce's sender or subject, and a failure in its text.
fn text_bounce(message: &Message<'_>) -> Bounce {
    let subject = message.subject().unwrap_or("").to_lowercase();
    let from = message
        .from()
        .and_then(|a| a.first())
        .map(|a| format!("{} {}", a.name().unwrap_or(""), a.address().unwrap_or("")).to_lowercase())
        .unwrap_or_default();
    let looks_like = BOUNCE_SUBJECTS.iter().any(|s| subject.contains(s))
        || BOUNCE_SENDERS.iter().any(|s| from.contains(s));
    if !looks_like {
        return Bounce::of(Kind::Unknown);
    }
    let words = human_text(message);
    let lower = words.to_lowercase();
    let said = said(&words);
    let delayed = DELAY_PHRASES.iter().any(|p| lower.contains(p))
        || subject.contains("delay")
        || subject.contains("warning");
    let recipient = first_address(&words, message);
    if said.code.is_none() && said.status.is_none() && recipient.is_none() {
        return Bounce::of(Kind::Unknown);
    }
    Bounce {
        kind: Kind::Text,
        reports: vec![Report {
            recipient,
            original: None,
            action: if delayed {
                Action::Delayed
            } else {
                Action::Failed
            },
            status: said.status,
            code: said.code,
            text: capped(&words),
        }],
        original_message_id: None,
    }
}

/// The first address of a bounce's words that is not the bounce's own sender or
/// recipient (a postmaster, the return path).
fn first_address(words: &str, message: &Message<'_>) -> Option<String> {
    let own: Vec<String> = [message.from(), message.to()]
        .into_iter()
        .flatten()
        .flat_map(|a| a.iter())
        .filter_map(|a| a.address())
        .map(str::to_lowercase)
        .collect();
    words
        .split(|c: char| {
            c.is_whitespace() || matches!(c, '<' | '>' | '(' | ')' | '"' | ',' | ';' | '[' | ']')
        })
        .map(|w| w.trim_end_matches([':', '.']).trim_start_matches("mailto:"))
        .filter(|w| w.contains('@'))
        .filter_map(address_of)
        .find(|a| {
            let lower = a.to_lowercase();
            !own.contains(&lower)
                && !lower.starts_with("postmaster@")
                && !lower.starts_with("mailer-daemon@")
                && lower.rsplit_once('@').is_some_and(|(_, d)| d.contains('.'))
        })
}

/// RFC 3834 and the common out-of-office markers.
fn is_auto_reply(message: &Message<'_>) -> bool {
    let header = |name: &str| message.header_raw(name).map(|v| v.trim().to_lowercase());
    if header("auto-submitted").is_some_and(|v| !v.starts_with("no")) {
        return true;
    }
    if header("x-autoreply").is_some()
        || header("x-autorespond").is_some()
        || header("x-auto-response-suppress").is_some()
        || header("precedence").is_some_and(|v| v == "auto_reply")
    {
        return true;
    }
    let subject = message.subject().unwrap_or("").trim().to_lowercase();
    [
        "out of office",
        "out of the office",
        "automatic reply",
        "auto reply",
        "autoreply",
        "auto-reply",
        "auto:",
        "abwesenheit",
        "vacation",
        "away from",
    ]
    .iter()
    .any(|p| subject.starts_with(p) || subject.contains(p))
}

/// The `Message-ID` of the returned original (a `message/rfc822` part or its headers).
fn original_message_id(message: &Message<'_>) -> Option<String> {
    message.parts.iter().find_map(|p| match &p.body {
        PartType::Message(m) => m.message_id().map(str::to_string),
        _ if is_type(p, "text", &["rfc822-headers"])
            || is_type(p, "message", &["rfc822-headers", "global-headers"]) =>
        {
            MessageParser::new()
                .parse_headers(p.contents())
                .and_then(|h| h.message_id().map(str::to_string))
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_in_what_servers_say() {
        let s = said("smtp; 550 5.1.1 <a@b.example>: Recipient address rejected");
        assert_eq!(s.code, Some(550));
        assert_eq!(s.status, Some(Status::new(5, 1, 1)));
        let s = said("#550 5.1.1 RESOLVER.ADR.RecipNotFound; not found ##");
        assert_eq!((s.code, s.status), (Some(550), Some(Status::new(5, 1, 1))));
        let s = said("554 delivery error: dd This user doesn't have an account (554.30)");
        assert_eq!((s.code, s.status), (Some(554), None));
        let s = said("452-4.2.2 The email account that you tried to reach is over quota.");
        assert_eq!((s.code, s.status), (Some(452), Some(Status::new(4, 2, 2))));
        // Years, ports and sizes are no reply codes.
        assert_eq!(said("on 2026-12-05 port 25 size 10240").code, None);
    }

    #[test]
    fn addresses() {
        assert_eq!(
            address_of("rfc822; <Jane@Example.NET>").as_deref(),
            Some("Jane@example.net")
        );
        assert_eq!(address_of("rfc822;nobody").as_deref(), None);
        assert_eq!(address_of("a b@c").as_deref(), None);
    }

    #[test]
    fn garbage_is_unknown() {
        for raw in [&b""[..], b"\x00\xff\xfe", b"Subject: hi\r\n\r\nhello"] {
            assert_eq!(parse(raw).kind, Kind::Unknown);
        }
    }
}
