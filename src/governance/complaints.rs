//! Spam complaints: ARF feedback reports (RFC 5965) mailed to the feedback address
//! (`[complaints] address`), and the "report this message" form of the HTTP listener
//! (`crate::http::complaint`), turned into `complaint` suppressions.
//!
//! A report is tied back to what it complains about through the unsubscribe token the
//! relay put in the reported message's `List-Unsubscribe` field (the https or the mailto
//! form): the token names the account, the list and the recipient, and cannot be forged.
//! Without a genuine token (transactional mail, or a provider that strips the field) the
//! recipient comes from `Original-Rcpt-To`, and the account from the reported copy's From
//! and DKIM `d=` domains when exactly one account's `from_domains` covers them. The
//! suppression is account-wide (`Scope::Account`: a complaint stops every stream of that
//! account to that address), or global when no account can be named. Anyone may mail the
//! feedback address, so a report without a token is taken on trust; README's *Known
//! limits* says what that allows.
//!
//! Recording is durable before the SMTP answer or the HTTP page: the lists journal
//! (fsynced, in force at once), the account's complaint counter
//! ([`AccountCounts::add_complaint`], once per address newly suppressed in that scope),
//! `optin_complaints_received_total{via}`, and a JSON line in `events/complaints.jsonl`
//! beside the spool (mode 0600; it carries the address). Tokens carry the list, not the
//! campaign: a complaint counts for the account's campaigns on that list still in their
//! canary ([`crate::governance::campaign::Campaigns::complained`]).
//!
//! A report that cannot be used — not `multipart/report; report-type=feedback-report`, no
//! `message/feedback-report` part, no or an unknown `Feedback-Type`, nothing to tie it to,
//! garbage — is kept aside as `complaints/malformed/<time>-<random>.eml` in the spool
//! directory (mode 0600) for an operator, and counted in
//! `optin_complaint_reports_malformed_total`; the SMTP answer is still 250, since the relay
//! took responsibility for it. `not-spam` and `auth-failure` reports are no complaints:
//! they are logged and dropped. Nothing here logs an address: recipients appear as
//! [`AddressTagger`] tags.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use mail_parser::{MessageParser, MessagePart, MimeHeaders};

use crate::consent::{Change, Kind, Lists, ListsError, Op, Origin, Reason, Scope};
use crate::delivery::counts::AccountCounts;
use crate::policy::Policy;
use crate::policy::identity::{canonical_domain, domain_allowed};
use crate::privacy::AddressTagger;
use crate::rewrite::token::{MAX_TOKEN_LEN, TokenKeys};
use crate::smtp::Address;
use crate::unsubscribe::EventLog;

/// At most this many malformed reports are kept aside; later ones are logged and dropped,
/// because the feedback address takes mail from anyone and the disk must not fill with it.
pub const MAX_KEPT_ASIDE: usize = 10_000;
/// Longest `Feedback-Type` accepted (the registered ones are short).
const MAX_FEEDBACK_TYPE: usize = 32;

/// How the complaint arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// An ARF report mailed to the feedback address.
    Arf,
    /// The report form of the HTTP listener.
    Form,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Arf => "arf",
            Via::Form => "form",
        }
    }
}

/// A complaint about one recipient's mail, ready to be recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Complaint {
    /// The account whose mail was reported; `None`: unknown, the suppression is global.
    pub account: Option<String>,
    /// The list, when a token named it (informational: the suppression is account-wide).
    pub list: Option<String>,
    /// The normalised recipient address.
    pub address: String,
    /// The report's `Feedback-Type` (`abuse` for the form).
    pub feedback_type: String,
    pub via: Via,
}

/// A complaint once it is durable and in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub complaint: Complaint,
    pub time_ms: u64,
    /// The address had no complaint suppression in this scope before; only then is the
    /// account's counter raised (providers repeat reports, people click twice).
    pub new: bool,
}

/// What an ARF report says, as far as tying it back goes: the pure result of [`parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `Feedback-Type`, lower case: `abuse`, `fraud`, `virus`, `other`, `not-spam`,
    /// `auth-failure`.
    pub feedback_type: String,
    /// `User-Agent`: the reporting system, for logs.
    pub user_agent: Option<String>,
    /// Unsubscribe tokens found in the reported copy's `List-Unsubscribe` fields, not yet
    /// checked.
    pub tokens: Vec<String>,
    /// The first `Original-Rcpt-To` that is a valid address, normalised.
    pub original_rcpt: Option<String>,
    /// The reported copy's From domain and DKIM `d=` domains (canonical, no repeats).
    pub sender_domains: Vec<String>,
}

/// Why mail to the feedback address is not a usable report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("not a parsable message")]
    Unparsable,
    #[error("not multipart/report")]
    NotReport,
    #[error("a multipart/report whose report-type is not feedback-report")]
    NotFeedbackReport,
    #[error("no message/feedback-report part")]
    NoFeedbackPart,
    #[error("the feedback report has no Feedback-Type")]
    NoFeedbackType,
    #[error("the Feedback-Type is not one this relay knows")]
    UnknownFeedbackType,
    #[error("neither a genuine unsubscribe token nor an Original-Rcpt-To to tie it to")]
    Untraceable,
}

/// What became of one message to the feedback address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Recorded(Recorded),
    /// A well-formed report that is no complaint (`not-spam`, `auth-failure`).
    NotAComplaint,
    /// Kept aside in `file`, or dropped (`None`) because [`MAX_KEPT_ASIDE`] are there.
    KeptAside {
        file: Option<PathBuf>,
        why: Malformed,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ComplaintError {
    #[error("recording the complaint: {0}")]
    Lists(#[from] ListsError),
    #[error("keeping a malformed report in {path}: {source}")]
    KeepAside {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What taking complaints needs.
pub struct Complaints {
    /// The feedback address (compared without regard to case).
    pub address: Address,
    pub lists: Arc<Lists>,
    pub keys: Arc<TokenKeys>,
    pub policy: Arc<ArcSwap<Policy>>,
    pub counts: Arc<AccountCounts>,
    pub tagger: AddressTagger,
    /// `events/complaints.jsonl` in the spool directory.
    pub events: EventLog,
    /// `complaints/malformed` in the spool directory.
    pub malformed_dir: PathBuf,
    /// Only reports with a genuine token are taken (`[complaints] require_token`).
    pub require_token: bool,
    /// Account health: a new complaint counts toward the account's complaint rate.
    pub governor: Option<Arc<crate::governance::Governor>>,
    /// The account's webhook hears of every complaint.
    pub webhooks: Option<Arc<crate::governance::webhook::Webhooks>>,
    /// Campaigns in their canary count the complaints about their list.
    pub campaigns: Option<Arc<crate::governance::campaign::Campaigns>>,
}

impl std::fmt::Debug for Complaints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Complaints")
            .field("address", &self.address)
            .field("malformed_dir", &self.malformed_dir)
            .finish()
    }
}

impl Complaints {
    /// Complaints taken at `address`, with their event log and malformed reports in the
    /// spool directory `spool`.
    pub fn new(
        address: Address,
        spool: &Path,
        lists: Arc<Lists>,
        keys: Arc<TokenKeys>,
        policy: Arc<ArcSwap<Policy>>,
        counts: Arc<AccountCounts>,
        tagger: AddressTagger,
    ) -> Complaints {
        Complaints {
            address,
            lists,
            keys,
            policy,
            counts,
            tagger,
            events: EventLog::new(&spool.join("events/complaints.jsonl")),
            malformed_dir: spool.join("complaints/malformed"),
            governor: None,
            webhooks: None,
            campaigns: None,
            require_token: false,
        }
    }

    /// Takes only reports whose copy carries a genuine unsubscribe token.
    pub fn requiring_token(mut self, require: bool) -> Complaints {
        self.require_token = require;
        self
    }

    /// Counts complaints about a list toward its campaigns' canaries.
    pub fn with_campaigns(
        mut self,
        campaigns: Arc<crate::governance::campaign::Campaigns>,
    ) -> Complaints {
        self.campaigns = Some(campaigns);
        self
    }

    /// Sends complaints to the accounts' webhooks.
    pub fn with_webhooks(
        mut self,
        webhooks: Arc<crate::governance::webhook::Webhooks>,
    ) -> Complaints {
        self.webhooks = Some(webhooks);
        self
    }

    /// Counts complaints toward account health (and its automatic freeze).
    pub fn with_governor(mut self, governor: Arc<crate::governance::Governor>) -> Complaints {
        self.governor = Some(governor);
        self
    }

    /// Whether `to` is the feedback address.
    pub fn is_feedback_address(&self, to: &Address) -> bool {
        to.as_str().eq_ignore_ascii_case(self.address.as_str())
    }

    /// Takes one message mailed to the feedback address: records the complaint, or keeps
    /// the message aside when it is no usable report. Errors only when neither could be
    /// stored (blocking: call from a blocking context).
    pub fn receive(&self, raw: &[u8]) -> Result<Outcome, ComplaintError> {
        // mail-parser has tripped assertions on malformed input before (CRATES.md): a
        // report that makes it panic is garbage like any other.
        let parsed = std::panic::catch_unwind(|| parse(raw)).unwrap_or(Err(Malformed::Unparsable));
        let report = match parsed {
            Ok(report) => report,
            Err(why) => return self.keep_aside(raw, why),
        };
        if is_complaint(&report.feedback_type) == Some(false) {
            tracing::info!(
                feedback_type = %report.feedback_type,
                user_agent = report.user_agent.as_deref().unwrap_or(""),
                "feedback report that is no complaint ignored"
            );
            return Ok(Outcome::NotAComplaint);
        }
        let Some(complaint) = self.tie(&report) else {
            return self.keep_aside(raw, Malformed::Untraceable);
        };
        Ok(Outcome::Recorded(self.record(complaint)?))
    }

    /// Whom and what a report is about: its first genuine token; else `Original-Rcpt-To`
    /// with the account its sender domains name (none: a global complaint).
    pub fn tie(&self, report: &Report) -> Option<Complaint> {
        let feedback_type = report.feedback_type.clone();
        if let Some(u) = report.tokens.iter().find_map(|t| self.keys.open(t).ok()) {
            return Some(Complaint {
                account: Some(u.account),
                list: Some(u.list),
                address: u.address,
                feedback_type,
                via: Via::Arf,
            });
        }
        if self.require_token {
            return None;
        }
        let address = report.original_rcpt.clone()?;
        Some(Complaint {
            account: account_for(&self.policy.load(), &report.sender_domains),
            list: None,
            address,
            feedback_type,
            via: Via::Arf,
        })
    }

    /// Records one complaint durably and in force at once, then counts it and appends
    /// its event (blocking: call from a blocking context). This is the one place every
    /// complaint goes through.
    pub fn record(&self, complaint: Complaint) -> Result<Recorded, ListsError> {
        let scope = match &complaint.account {
            Some(account) => Scope::Account(account),
            None => Scope::Global,
        };
        let fp = self
            .lists
            .secret()
            .fingerprint(Kind::Suppression, scope, &complaint.address);
        let new = self.lists.get(fp) & Reason::Complaint.bit() == 0;
        let change = Change {
            op: Op::Add,
            fp,
            tags: Reason::Complaint.bit(),
            origin: Origin::Feedback,
            time_ms: crate::spool::now_ms(),
        };
        if let Err(e) = self.lists.record(&[change]) {
            tracing::error!(account = ?complaint.account, error = %e, "could not record a complaint");
            return Err(e);
        }
        if let (Some(account), true) = (&complaint.account, new) {
            self.counts.add_complaint(account);
            if let Some(governor) = &self.governor {
                governor.observe(account, crate::governance::health::Signal::Complaint);
            }
            if let (Some(campaigns), Some(list)) = (&self.campaigns, &complaint.list) {
                campaigns.complained(account, list);
            }
        }
        crate::metrics::complaint_received(complaint.via.as_str());
        let scope_name = if complaint.account.is_some() {
            "account"
        } else {
            "global"
        };
        let event = serde_json::json!({
            "time_ms": change.time_ms,
            "account": complaint.account,
            "list": complaint.list,
            "scope": scope_name,
            "address": complaint.address,
            "via": complaint.via.as_str(),
            "feedback_type": complaint.feedback_type,
        });
        if let Err(e) = self.events.append(&event) {
            tracing::error!(error = %e, "could not append to the complaint event log");
        }
        if let (Some(webhooks), Some(account)) = (&self.webhooks, &complaint.account) {
            use crate::governance::webhook::{Kind, WebhookEvent};
            webhooks.send_blocking(
                account,
                WebhookEvent {
                    kind: Kind::Complaint,
                    address: complaint.address.clone(),
                    list: complaint.list.clone(),
                    time_ms: change.time_ms,
                    detail: serde_json::json!({
                        "feedback_type": complaint.feedback_type,
                        "via": complaint.via.as_str(),
                        "new": new,
                    }),
                },
            );
        }
        tracing::info!(
            account = complaint.account.as_deref().unwrap_or(""),
            list = complaint.list.as_deref().unwrap_or(""),
            recipient = %self.tagger.tag(&complaint.address),
            scope = scope_name,
            via = complaint.via.as_str(),
            feedback_type = %complaint.feedback_type,
            new,
            "complaint recorded"
        );
        Ok(Recorded {
            complaint,
            time_ms: change.time_ms,
            new,
        })
    }

    /// Keeps an unusable report for an operator, counts and logs it (no address).
    fn keep_aside(&self, raw: &[u8], why: Malformed) -> Result<Outcome, ComplaintError> {
        crate::metrics::complaint_report_malformed();
        let file = self
            .store_aside(raw)
            .map_err(|source| ComplaintError::KeepAside {
                path: self.malformed_dir.clone(),
                source,
            })?;
        match &file {
            Some(path) => tracing::warn!(
                why = %why,
                size = raw.len(),
                file = %path.display(),
                "unusable feedback report kept aside"
            ),
            None => tracing::warn!(
                why = %why,
                size = raw.len(),
                kept = MAX_KEPT_ASIDE,
                "unusable feedback report dropped: the malformed directory is full"
            ),
        }
        Ok(Outcome::KeptAside { file, why })
    }

    /// Writes `raw` to a new file of the malformed directory (0600, fsynced); `None`
    /// when [`MAX_KEPT_ASIDE`] files are there already.
    fn store_aside(&self, raw: &[u8]) -> std::io::Result<Option<PathBuf>> {
        let dir = &self.malformed_dir;
        crate::privacy::files::private_dir(dir)?;
        if std::fs::read_dir(dir)?.take(MAX_KEPT_ASIDE).count() >= MAX_KEPT_ASIDE {
            return Ok(None);
        }
        let path = dir.join(format!(
            "{}-{:016x}.eml",
            crate::spool::now_ms(),
            rand::random::<u64>()
        ));
        let mut f = crate::privacy::files::create_new(&path)?;
        f.write_all(raw)?;
        f.sync_all()?;
        crate::consent::sync_dir(dir)?;
        Ok(Some(path))
    }
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

/// Whether `part` is `ctype/<one of subtypes>`.
fn is_type(part: &MessagePart<'_>, ctype: &str, subtypes: &[&str]) -> bool {
    part.content_type().is_some_and(|ct| {
        ct.ctype().eq_ignore_ascii_case(ctype)
            && ct
                .subtype()
                .is_some_and(|s| subtypes.iter().any(|t| s.eq_ignore_ascii_case(t)))
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

/// The one account whose `from_domains` cover one of `domains`; `None` when none or
/// several do (an ambiguous report is not pinned on anyone).
pub fn account_for(policy: &Policy, domains: &[String]) -> Option<String> {
    let mut found: Option<&str> = None;
    for account in policy.accounts() {
        if account.from_domains.is_empty()
            || !domains
                .iter()
                .any(|d| domain_allowed(&account.from_domains, d))
        {
            continue;
        }
        if found.is_some() {
            return None;
        }
        found = Some(&account.name);
    }
    found.map(str::to_string)
}

#[cfg(test)]
mod tests;
