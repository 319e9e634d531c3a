//! Bounce categories: one classifier for every refusal the relay learns of — a reply in
//! its own SMTP transaction and a bounce mailed back to the return path later — turning the
//! reply code, the enhanced status code (RFC 3463) and the text into a [`Category`] of a
//! fixed taxonomy, and the category into what the relay does ([`Action`]) and whom it
//! counts against ([`Fault`]).
//!
//! [`Classifier::classify`] tries, in order: the policy's `[[bounce_rules]]` (first match),
//! the shipped rules ([`rules::shipped`]: the large mailbox providers' own wording, then
//! common phrases), the enhanced status code ([`by_status`]), and last the reply code
//! ([`by_code`]). The text is what decides first because servers reuse generic codes (a
//! virus refused as `5.7.1`, an unknown Microsoft 365 recipient as `5.4.1`); the verdict
//! names the rule that matched, so an operator can see why.
//!
//! [`parse`] reads a bounce message (RFC 3464 reports, the common non-standard texts,
//! auto-replies and feedback reports told apart); it is pure and trusts nothing it reads.

pub mod parse;
pub mod rules;

use crate::smtp::reply::Status;

/// What a bounce says about the recipient, the message, or the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    /// No such mailbox (`5.1.1`), a bad address (`5.1.3`), moved away (`5.1.6`).
    InvalidRecipient,
    /// The domain does not exist or takes no mail (`5.1.2`, `5.1.10`).
    BadDomain,
    /// The mailbox exists but is disabled, suspended or closed (`5.2.1`).
    Inactive,
    /// Over quota (`x.2.2`, reply 552).
    MailboxFull,
    /// Larger than the receiver takes (`5.3.4`, `5.2.3`).
    MessageTooLarge,
    /// Refused for reputation or as spam: block lists, policy (`5.7.1`, most of `5.7.x`).
    SpamBlock,
    /// SPF, DKIM or DMARC did not pass (`5.7.20`–`5.7.27`).
    AuthFailure,
    /// Too much, too fast: the receiver asks the sender to slow down.
    RateLimited,
    /// The content itself was refused: a virus, an attachment type, `5.6.x`.
    ContentRejected,
    /// The way there failed: routing, loops, network trouble (`x.4.x`).
    Routing,
    /// A temporary failure with nothing more specific (other `4.x.x`, `4.4.7` expired).
    Transient,
    /// Anything else.
    Other,
}

impl Category {
    pub const ALL: [Category; 12] = [
        Category::InvalidRecipient,
        Category::BadDomain,
        Category::Inactive,
        Category::MailboxFull,
        Category::MessageTooLarge,
        Category::SpamBlock,
        Category::AuthFailure,
        Category::RateLimited,
        Category::ContentRejected,
        Category::Routing,
        Category::Transient,
        Category::Other,
    ];

    /// The name in the policy, the delivery log, metrics, webhooks and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::InvalidRecipient => "invalid_recipient",
            Category::BadDomain => "bad_domain",
            Category::Inactive => "inactive",
            Category::MailboxFull => "mailbox_full",
            Category::MessageTooLarge => "message_too_large",
            Category::SpamBlock => "spam_block",
            Category::AuthFailure => "auth_failure",
            Category::RateLimited => "rate_limited",
            Category::ContentRejected => "content_rejected",
            Category::Routing => "routing",
            Category::Transient => "transient",
            Category::Other => "other",
        }
    }

    pub fn parse(name: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// What the relay does about a bounce of this category.
    pub fn action(self) -> Action {
        match self {
            Category::InvalidRecipient | Category::BadDomain | Category::Inactive => {
                Action::Suppress
            }
            Category::MailboxFull => Action::Streak,
            _ => Action::Count,
        }
    }

    /// Whom the bounce counts against.
    pub fn fault(self) -> Fault {
        match self {
            Category::InvalidRecipient
            | Category::BadDomain
            | Category::Inactive
            | Category::MailboxFull => Fault::Recipient,
            Category::MessageTooLarge
            | Category::SpamBlock
            | Category::AuthFailure
            | Category::ContentRejected => Fault::Sender,
            Category::RateLimited | Category::Routing | Category::Transient => Fault::Destination,
            Category::Other => Fault::Unknown,
        }
    }

    /// A failure of this category names the address dead — for good when `permanent`
    /// (class 5, or a failed report without a code): suppressed at once, a hard bounce for
    /// health, an "inactive address" of a campaign's canary.
    pub fn dead(self, permanent: bool) -> bool {
        permanent && self.action() == Action::Suppress
    }
}

impl std::fmt::Display for Category {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a bounce of a category makes the relay do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Suppress the address at once.
    Suppress,
    /// Suppress once it bounced so `[bounces] mailbox_full_count` times within
    /// `mailbox_full_days`.
    Streak,
    /// Count it only: never a suppression.
    Count,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Suppress => "suppress",
            Action::Streak => "streak",
            Action::Count => "none",
        }
    }
}

/// Whom a bounce counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The address: it may end in a suppression.
    Recipient,
    /// The sending account: its content, authentication or reputation.
    Sender,
    /// The receiving site: it feeds the site's shaping, never a suppression.
    Destination,
    Unknown,
}

impl Fault {
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Recipient => "recipient",
            Fault::Sender => "account",
            Fault::Destination => "destination",
            Fault::Unknown => "unknown",
        }
    }
}

/// What is known of one refusal.
#[derive(Debug, Clone, Copy, Default)]
pub struct Evidence<'a> {
    /// The SMTP reply code (`550`), when there is one.
    pub code: Option<u16>,
    /// The enhanced status code, when there is one.
    pub status: Option<Status>,
    /// The server's text (a diagnostic, a paragraph of a bounce).
    pub text: &'a str,
    /// The recipient's domain (lower case), for provider rules; empty when unknown.
    pub domain: &'a str,
}

/// A status code pattern: `5.1.1`, `5.7.*`, `*.2.2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusPattern {
    pub class: Option<u8>,
    pub subject: Option<u16>,
    pub detail: Option<u16>,
}

impl StatusPattern {
    pub fn parse(text: &str) -> Option<StatusPattern> {
        let mut parts = text.trim().split('.');
        let mut part = |max: u16| -> Option<Option<u16>> {
            match parts.next()? {
                "*" => Some(None),
                p if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                    p.parse::<u16>().ok().filter(|n| *n <= max).map(Some)
                }
                _ => None,
            }
        };
        let class = part(5)?;
        let subject = part(999)?;
        let detail = part(999)?;
        if parts.next().is_some() || class.is_some_and(|c| !matches!(c, 2 | 4 | 5)) {
            return None;
        }
        Some(StatusPattern {
            class: class.map(|c| c as u8),
            subject,
            detail,
        })
    }

    pub fn matches(&self, s: Status) -> bool {
        self.class.is_none_or(|c| c == s.class)
            && self.subject.is_none_or(|x| x == s.subject)
            && self.detail.is_none_or(|x| x == s.detail)
    }
}

impl std::fmt::Display for StatusPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let star = |v: Option<u16>| v.map_or("*".to_string(), |v| v.to_string());
        write!(
            f,
            "{}.{}.{}",
            star(self.class.map(u16::from)),
            star(self.subject),
            star(self.detail)
        )
    }
}

/// One rule: every condition it has must hold; `text` holds when any of its phrases is in
/// the text (compared in lower case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub category: Category,
    pub status: Option<StatusPattern>,
    /// Reply codes, any of them.
    pub codes: Vec<u16>,
    /// Phrases, lower case, any of them.
    pub text: Vec<String>,
    /// Recipient domains (lower case) the rule is for; empty: every domain. A leading
    /// `.` takes subdomains.
    pub domains: Vec<String>,
}

impl Rule {
    fn matches(&self, ev: &Evidence<'_>, lower_text: &str) -> bool {
        if let Some(p) = &self.status
            && !ev.status.is_some_and(|s| p.matches(s))
        {
            return false;
        }
        if !self.codes.is_empty() && !ev.code.is_some_and(|c| self.codes.contains(&c)) {
            return false;
        }
        if !self.text.is_empty() && !self.text.iter().any(|t| lower_text.contains(t.as_str())) {
            return false;
        }
        self.domains.is_empty()
            || self.domains.iter().any(|d| match d.strip_prefix('.') {
                Some(parent) => ev
                    .domain
                    .strip_suffix(parent)
                    .is_some_and(|rest| rest.ends_with('.')),
                None => ev.domain == d,
            })
    }
}

/// A classification: the category and the rule that gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub category: Category,
    /// The rule's name, `status 5.1.1`, or `reply 550`.
    pub rule: String,
}

impl Verdict {
    pub fn new(category: Category, rule: impl Into<String>) -> Verdict {
        Verdict {
            category,
            rule: rule.into(),
        }
    }
}

/// The policy's rules ahead of the shipped ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classifier {
    rules: Vec<Rule>,
}

impl Default for Classifier {
    /// The shipped rules alone.
    fn default() -> Classifier {
        Classifier::with_rules(Vec::new())
    }
}

/// The longest text looked at (a bounce's paragraph, a reply): more is cut.
pub const MAX_TEXT: usize = 8 * 1024;

impl Classifier {
    /// `own` (the policy's `[[bounce_rules]]`, in order) first, then the shipped rules.
    pub fn with_rules(mut own: Vec<Rule>) -> Classifier {
        own.extend(rules::shipped());
        Classifier { rules: own }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The category of a refusal. A temporary one (4.x.x, 4xx) never names the address
    /// dead: what would be a suppressing category becomes `routing` (a domain not found
    /// for now) or `transient`.
    pub fn classify(&self, ev: &Evidence<'_>) -> Verdict {
        let mut v = self.classify_words(ev);
        let temporary = match (ev.status, ev.code) {
            (Some(s), _) => s.class == 4,
            (None, Some(c)) => (400..500).contains(&c),
            (None, None) => false,
        };
        if temporary && v.category.action() == Action::Suppress {
            v.category = match v.category {
                Category::BadDomain => Category::Routing,
                _ => Category::Transient,
            };
            v.rule.push_str(" (temporary)");
        }
        v
    }

    fn classify_words(&self, ev: &Evidence<'_>) -> Verdict {
        let cut = ev.text.floor_char_boundary(MAX_TEXT);
        let lower = ev.text[..cut].to_lowercase();
        if let Some(rule) = self.rules.iter().find(|r| r.matches(ev, &lower)) {
            return Verdict::new(rule.category, rule.name.clone());
        }
        if let Some(s) = ev.status
            && let Some(c) = by_status(s)
        {
            return Verdict::new(c, format!("status {s}"));
        }
        if let Some(code) = ev.code {
            return Verdict::new(by_code(code), format!("reply {code}"));
        }
        match ev.status {
            Some(s) if s.class == 4 => Verdict::new(Category::Transient, format!("status {s}")),
            Some(s) => Verdict::new(Category::Other, format!("status {s}")),
            None => Verdict::new(Category::Other, "no status"),
        }
    }
}

/// What the relay makes of a saved message mailed to a return path (`bounce classify`):
/// the reading, the report it would act on, its verdict, and whether it would suppress the
/// address at once (a hard bounce) — the token aside.
#[derive(Debug, Clone)]
pub struct Explained {
    pub bounce: parse::Bounce,
    /// The report acted on (`address`'s, else the first failure).
    pub report: Option<parse::Report>,
    /// For a failure: its category and rule.
    pub verdict: Option<Verdict>,
    /// A permanent failure whose category suppresses at once.
    pub hard: bool,
}

/// Reads and classifies `raw` (whose MIME budget the caller checked).
pub fn explain(raw: &[u8], classifier: &Classifier, address: Option<&str>) -> Explained {
    let bounce = parse::parse(raw);
    let report = match bounce.kind {
        parse::Kind::Dsn | parse::Kind::Text => bounce.report_for(address).cloned(),
        _ => None,
    };
    let verdict = report.as_ref().map(|r| classifier.classify(&r.evidence()));
    let hard = match (&report, &verdict) {
        (Some(r), Some(v)) => r.action == parse::Action::Failed && v.category.dead(r.permanent()),
        _ => false,
    };
    Explained {
        bounce,
        report,
        verdict,
        hard,
    }
}

/// The category an enhanced status code implies by itself (RFC 3463 and its registry);
/// `None` for the unspecific ones (`x.0.0`, `x.1.0` …), which leave it to the reply code.
pub fn by_status(s: Status) -> Option<Category> {
    let temporary = s.class == 4;
    Some(match (s.subject, s.detail) {
        (2, 2) => Category::MailboxFull,
        (4, 7) => Category::Transient,
        (4, _) => Category::Routing,
        _ if temporary => Category::Transient,
        (1, 1) | (1, 3) | (1, 6) => Category::InvalidRecipient,
        (1, 2) | (1, 10) => Category::BadDomain,
        (2, 1) => Category::Inactive,
        (2, 3) | (3, 4) => Category::MessageTooLarge,
        (6, _) => Category::ContentRejected,
        (7, 20..=27) => Category::AuthFailure,
        (7, 0) => return None,
        (7, _) => Category::SpamBlock,
        (3, d) if d != 0 => Category::Other,
        (5, d) if d != 0 => Category::Other,
        _ => return None,
    })
}

/// The category a bare reply code implies.
pub fn by_code(code: u16) -> Category {
    match code {
        552 => Category::MailboxFull,
        400..=499 => Category::Transient,
        _ => Category::Other,
    }
}

#[cfg(test)]
mod tests;
