//! Spam complaints: ARF feedback reports (RFC 5965) mailed to the feedback address
//! (`[complaints] address`), and the "report this message" form of the HTTP listener
//! (`crate::http::complaint`), turned into `complaint` suppressions.
//!
//! Anyone may mail the feedback address, so a report is acted on only when it is
//! authenticated, one of two ways:
//!
//! - the unsubscribe token the relay put in the reported message's `List-Unsubscribe` field
//!   (the https or the mailto form): it names the account, the list and the recipient, and
//!   cannot be forged — only someone who has that message can quote it;
//! - without a token (transactional mail, or a provider that strips the field), a valid
//!   DKIM signature by a reporter domain on `[complaints] reporters` (the mailbox
//!   providers' feedback loops sign their reports; [`reporter`]): then the recipient comes
//!   from `Original-Rcpt-To`, and the account from the reported copy's From and DKIM `d=`
//!   domains when exactly one account's `from_domains` covers them.
//!
//! Everything else — a tokenless report from anyone else, or one that names no account —
//! is kept aside and changes nothing: unauthenticated input never freezes an account,
//! counts toward health or canary figures, or creates a global suppression. The
//! suppression is always account-wide (`Scope::Account`: a complaint stops every stream of
//! that account to that address).
//!
//! Recording is durable before the SMTP answer or the HTTP page: the lists journal
//! (fsynced, in force at once), the account's complaint counter
//! ([`AccountCounts::add_complaint`], once per address newly suppressed in that scope),
//! `optin_complaints_received_total{via}`, and a JSON line in `events/complaints.jsonl`
//! beside the spool (mode 0600; it carries the address). Tokens carry the list, not the
//! campaign: a complaint counts for the account's campaigns on that list still in their
//! canary ([`crate::governance::campaign::Campaigns::complained`]).
//!
//! Mail to the feedback address is bounded before it is read: its size
//! (`[complaints] max_report_size`, enforced by the session at `SIZE=` and during DATA),
//! reports per client address and hour (`max_reports_per_ip`, [`Complaints::admit_report`]),
//! and its MIME structure ([`arf::within_mime_budget`], checked before mail-parser sees it;
//! over budget it is refused). A report that cannot be used — not `multipart/report;
//! report-type=feedback-report`, no `message/feedback-report` part, no or an unknown
//! `Feedback-Type`, not authenticated, nothing to tie it to, garbage — is kept aside as
//! `complaints/malformed/<time>-<random>.eml` in the spool directory (mode 0600) for an
//! operator, at most [`MAX_KEPT_ASIDE`] files and [`MAX_KEPT_ASIDE_BYTES`] in all (past
//! that it is logged and dropped), and counted in `optin_complaint_reports_malformed_total`;
//! the SMTP answer is still 250, since the relay took responsibility for it. `not-spam` and
//! `auth-failure` reports are no complaints: they are logged and dropped. Nothing here logs
//! an address: recipients appear as [`AddressTagger`] tags, and what the reporter wrote
//! (its `User-Agent`) is logged escaped.

pub mod arf;
pub mod reporter;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;

pub use arf::{is_complaint, parse, tokens_in};

use crate::consent::{Change, Kind, Lists, ListsError, Op, Origin, Reason, Scope};
use crate::governance::counts::AccountCounts;
use crate::policy::Policy;
use crate::policy::identity::domain_allowed;
use crate::privacy::AddressTagger;
use crate::privacy::events::EventLog;
use crate::rewrite::token::TokenKeys;
use crate::smtp::Address;
use crate::smtp::text::Escaped;

/// At most this many malformed reports are kept aside; later ones are logged and dropped,
/// because the feedback address takes mail from anyone and the disk must not fill with it.
pub const MAX_KEPT_ASIDE: usize = 10_000;
/// … and at most this many octets of them in all.
pub const MAX_KEPT_ASIDE_BYTES: u64 = 64 << 20;
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

/// A complaint about one recipient's mail, ready to be recorded. It always names an
/// account: no complaint is ever global.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Complaint {
    /// The account whose mail was reported.
    pub account: String,
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
    #[error(
        "no genuine unsubscribe token, and no valid DKIM signature of an allow-listed reporter"
    )]
    Unverified,
    #[error("no genuine unsubscribe token and no Original-Rcpt-To to tie it to")]
    Untraceable,
    #[error("no single account's from_domains cover the reported message's sender")]
    NoAccount,
}

/// What became of one message to the feedback address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Recorded(Recorded),
    /// A well-formed report that is no complaint (`not-spam`, `auth-failure`).
    NotAComplaint,
    /// Kept aside in `file`, or dropped (`None`) because [`MAX_KEPT_ASIDE`] files or
    /// [`MAX_KEPT_ASIDE_BYTES`] are there.
    KeptAside {
        file: Option<PathBuf>,
        why: Malformed,
    },
    /// Too many MIME parts or too deep a nesting to be read: refused, not kept.
    TooComplex,
}

/// The first, blocking look at a report ([`Complaints::examine`]).
#[derive(Debug)]
pub enum Examined {
    Done(Outcome),
    /// A tokenless complaint: it counts only if an allow-listed reporter signed it.
    NeedsReporter(Report),
}

/// The limits on mail to the feedback address (`[complaints]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Reports accepted per client address (IPv6: /64) per hour.
    pub max_reports_per_ip: u32,
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
    #[error("handling the report failed: {0}")]
    Task(String),
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
    /// Reporters whose DKIM-signed tokenless reports are taken; `None`: none are.
    pub reporters: Option<reporter::Reporters>,
    pub limits: Limits,
    rate: super::intake::HourlyCap,
    /// At most [`MAX_KEPT_ASIDE`] files and [`MAX_KEPT_ASIDE_BYTES`] (smaller in tests).
    aside: super::intake::KeptAside,
    /// A new complaint counts toward the account's complaint rate (health) and its
    /// campaign's canary; the account's webhook hears of every complaint.
    pub feedback: super::Feedback,
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
            feedback: Default::default(),
            require_token: false,
            reporters: None,
            limits: Limits {
                max_reports_per_ip: u32::MAX,
            },
            rate: super::intake::HourlyCap::new(u32::MAX),
            aside: super::intake::KeptAside::new(
                &spool.join("complaints/malformed"),
                MAX_KEPT_ASIDE,
                MAX_KEPT_ASIDE_BYTES,
            ),
        }
    }

    /// Takes tokenless reports DKIM-signed by these reporters.
    pub fn with_reporters(mut self, reporters: reporter::Reporters) -> Complaints {
        self.reporters = (!reporters.is_empty()).then_some(reporters);
        self
    }

    pub fn with_limits(mut self, limits: Limits) -> Complaints {
        self.limits = limits;
        self.rate = super::intake::HourlyCap::new(limits.max_reports_per_ip);
        self
    }

    /// Whether one more report may come from `client` this hour (counts it when yes).
    pub fn admit_report(&self, client: IpAddr) -> bool {
        self.rate.admit(client)
    }

    /// Takes only reports whose copy carries a genuine unsubscribe token.
    pub fn requiring_token(mut self, require: bool) -> Complaints {
        self.require_token = require;
        self
    }

    /// Counts complaints toward account health and campaigns' canaries, and tells the
    /// accounts' webhooks.
    pub fn with_feedback(mut self, feedback: super::Feedback) -> Complaints {
        self.feedback = feedback;
        self
    }

    /// Whether `to` is the feedback address.
    pub fn is_feedback_address(&self, to: &Address) -> bool {
        to.as_str().eq_ignore_ascii_case(self.address.as_str())
    }

    /// Takes one message mailed to the feedback address: records the complaint, keeps the
    /// message aside when it is no usable report, or refuses it when it is too complex to
    /// read. Errors only when neither could be stored. The parsing and file work run on the
    /// blocking pool; the reporter's DKIM check, when one is needed, in between.
    pub async fn receive(self: &Arc<Self>, raw: Bytes) -> Result<Outcome, ComplaintError> {
        let this = self.clone();
        let first = raw.clone();
        let examined = tokio::task::spawn_blocking(move || this.examine(&first))
            .await
            .map_err(|e| ComplaintError::Task(e.to_string()))??;
        let report = match examined {
            Examined::Done(outcome) => return Ok(outcome),
            Examined::NeedsReporter(report) => report,
        };
        let reporter = match &self.reporters {
            Some(reporters) => reporters.verified(&raw).await,
            None => None,
        };
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.finish(&raw, report, reporter))
            .await
            .map_err(|e| ComplaintError::Task(e.to_string()))?
    }

    /// The blocking first part of [`Complaints::receive`]: budget, parse, token.
    pub fn examine(&self, raw: &[u8]) -> Result<Examined, ComplaintError> {
        if !arf::within_mime_budget(raw) {
            crate::metrics::untrusted_refused(&crate::smtp::Refusal::ReportTooComplex);
            tracing::warn!(
                size = raw.len(),
                "feedback report refused: too many MIME parts or too deep a nesting"
            );
            return Ok(Examined::Done(Outcome::TooComplex));
        }
        // mail-parser 0.11.9 has tripped debug assertions on malformed input before: a
        // report that makes it panic is garbage like any other.
        let parsed = std::panic::catch_unwind(|| parse(raw)).unwrap_or(Err(Malformed::Unparsable));
        let report = match parsed {
            Ok(report) => report,
            Err(why) => return self.keep_aside(raw, why).map(Examined::Done),
        };
        if is_complaint(&report.feedback_type) == Some(false) {
            tracing::info!(
                feedback_type = %report.feedback_type,
                user_agent = %Escaped(report.user_agent.as_deref().unwrap_or("")),
                "feedback report that is no complaint ignored"
            );
            return Ok(Examined::Done(Outcome::NotAComplaint));
        }
        if let Some(complaint) = self.tie_by_token(&report) {
            return Ok(Examined::Done(Outcome::Recorded(self.record(complaint)?)));
        }
        if self.require_token || self.reporters.is_none() {
            return self
                .keep_aside(raw, Malformed::Unverified)
                .map(Examined::Done);
        }
        Ok(Examined::NeedsReporter(report))
    }

    /// The blocking last part of [`Complaints::receive`] for a tokenless report:
    /// `reporter` is the allow-listed domain whose DKIM signature verified, if any.
    pub fn finish(
        &self,
        raw: &[u8],
        report: Report,
        reporter: Option<String>,
    ) -> Result<Outcome, ComplaintError> {
        let Some(reporter) = reporter else {
            return self.keep_aside(raw, Malformed::Unverified);
        };
        let Some(address) = report.original_rcpt.clone() else {
            return self.keep_aside(raw, Malformed::Untraceable);
        };
        let Some(account) = account_for(&self.policy.load(), &report.sender_domains) else {
            return self.keep_aside(raw, Malformed::NoAccount);
        };
        tracing::info!(%reporter, "tokenless feedback report signed by an allowed reporter");
        Ok(Outcome::Recorded(self.record(Complaint {
            account,
            list: None,
            address,
            feedback_type: report.feedback_type,
            via: Via::Arf,
        })?))
    }

    /// The complaint a report's first genuine token names.
    pub fn tie_by_token(&self, report: &Report) -> Option<Complaint> {
        let u = report.tokens.iter().find_map(|t| self.keys.open(t).ok())?;
        Some(Complaint {
            account: u.account,
            list: Some(u.list),
            address: u.address,
            feedback_type: report.feedback_type.clone(),
            via: Via::Arf,
        })
    }

    /// Records one complaint durably and in force at once, then counts it and appends
    /// its event (blocking: call from a blocking context). This is the one place every
    /// complaint goes through.
    pub fn record(&self, complaint: Complaint) -> Result<Recorded, ListsError> {
        let account = complaint.account.as_str();
        let scope = Scope::Account(account);
        let fp = self
            .lists
            .secret()
            .fingerprint(Kind::Suppression, scope, &complaint.address);
        let time_ms = crate::envelope::now_ms();
        let new = self.lists.get(fp) & Reason::Complaint.bit() == 0;
        crate::metrics::complaint_received(complaint.via.as_str());
        if !new {
            // Providers repeat reports and people click twice; anyone holding the message
            // can replay its report. Nothing is written for a complaint already in force.
            tracing::info!(
                account,
                recipient = %self.tagger.tag(&complaint.address),
                via = complaint.via.as_str(),
                "repeated complaint: already in force"
            );
            return Ok(Recorded {
                complaint,
                time_ms,
                new,
            });
        }
        let change = Change {
            op: Op::Add,
            fp,
            tags: Reason::Complaint.bit(),
            origin: Origin::Feedback,
            time_ms,
            stamp: 0,
            remote: false,
        };
        if let Err(e) = self.lists.record(&[change]) {
            tracing::error!(account, error = %e, "could not record a complaint");
            return Err(e);
        }
        self.counts.add_complaint(account);
        if let Some(governor) = &self.feedback.governor {
            governor.observe(account, crate::governance::health::Signal::Complaint);
        }
        if let (Some(campaigns), Some(list)) = (&self.feedback.campaigns, &complaint.list) {
            campaigns.complained(account, list);
        }
        let event = serde_json::json!({
            "time_ms": time_ms,
            "account": account,
            "list": complaint.list,
            "scope": "account",
            "address": complaint.address,
            "via": complaint.via.as_str(),
            "feedback_type": complaint.feedback_type,
        });
        if let Err(e) = self.events.append(&event) {
            tracing::error!(error = %e, "could not append to the complaint event log");
        }
        if let Some(webhooks) = &self.feedback.webhooks {
            use crate::governance::webhook::WebhookEvent;
            use crate::policy::webhook::Kind;
            webhooks.send_blocking(
                account,
                WebhookEvent {
                    kind: Kind::Complaint,
                    address: complaint.address.clone(),
                    list: complaint.list.clone(),
                    time_ms,
                    detail: serde_json::json!({
                        "feedback_type": complaint.feedback_type,
                        "via": complaint.via.as_str(),
                        "new": new,
                    }),
                },
            );
        }
        tracing::info!(
            account,
            list = complaint.list.as_deref().unwrap_or(""),
            recipient = %self.tagger.tag(&complaint.address),
            via = complaint.via.as_str(),
            feedback_type = %complaint.feedback_type,
            "complaint recorded"
        );
        Ok(Recorded {
            complaint,
            time_ms,
            new,
        })
    }

    /// Keeps an unusable report for an operator, counts and logs it (no address).
    fn keep_aside(&self, raw: &[u8], why: Malformed) -> Result<Outcome, ComplaintError> {
        crate::metrics::complaint_report_malformed();
        let file = self
            .aside
            .store(raw)
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
                "unusable feedback report dropped: the malformed directory is full"
            ),
        }
        Ok(Outcome::KeptAside { file, why })
    }
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
