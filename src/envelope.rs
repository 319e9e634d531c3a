//! The shared vocabulary of every stage: what the relay knows about a message apart from
//! its content ([`Envelope`], [`Recipient`]), its queue id ([`QueueId`]), the stream it
//! belongs to ([`Stream`]) and the wall clock ([`now_ms`]).
//!
//! This module sits on the floor of the crate: it uses only [`crate::smtp`]'s parameter
//! types, so the session, the spool, delivery and the rewrite stage can all speak of a
//! message without reaching into each other.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::smtp::params::{BodyType, Notify, Ret};

/// The wall clock as the spool, the journals and the logs record it: Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A message's queue id. Operators see it as 16 upper-case hex digits (`Display`,
/// [`QueueId::parse`]); the spool hands them out as `unix_ms << 20 | sequence`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct QueueId(pub u64);

impl QueueId {
    /// Exactly 16 hex digits, either case.
    pub fn parse(s: &str) -> Option<QueueId> {
        (s.len() == 16)
            .then(|| u64::from_str_radix(s, 16).ok())
            .flatten()
            .map(QueueId)
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for QueueId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

impl std::fmt::Debug for QueueId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// What kind of mail a message is: marketing needs recorded consent for one of the
/// account's lists; transactional (service and security notices) does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Stream {
    Marketing,
    Transactional,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Marketing => "marketing",
            Stream::Transactional => "transactional",
        }
    }

    /// The value of an `X-Optin-Stream` header or a policy key (case-insensitive).
    pub fn parse(s: &str) -> Option<Stream> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("marketing") {
            Some(Stream::Marketing)
        } else if s.eq_ignore_ascii_case("transactional") {
            Some(Stream::Transactional)
        } else {
            None
        }
    }
}

impl std::fmt::Display for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything about a message except its content.
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    pub id: QueueId,
    /// Unix time in milliseconds.
    pub received_at: u64,
    pub account: String,
    /// `None` is the null reverse path `<>` (bounces).
    pub sender: Option<String>,
    /// RFC 3461 ENVID, decoded.
    pub envid: Option<String>,
    pub ret: Option<Ret>,
    pub body_type: BodyType,
    pub smtputf8: bool,
    /// The content has octets above 127 (whatever BODY said).
    pub eight_bit_content: bool,
    /// A DSN this relay generated: never answered with another DSN.
    pub generated_dsn: bool,
    /// Marketing or transactional (from `X-Optin-Stream` or the account's default).
    pub stream: Stream,
    /// The account's list a marketing message goes to (`X-Optin-List` or the default).
    pub list: Option<String>,
    /// `X-Optin-Campaign`, when given.
    pub campaign: Option<String>,
    pub recipients: Vec<Recipient>,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Recipient {
    pub address: String,
    /// `None`: the client gave no NOTIFY.
    pub notify: Option<Notify>,
    /// RFC 3461 ORCPT as `type;address`.
    pub orcpt: Option<String>,
    /// Already finished when this record was written (set on relocated copies).
    pub done: bool,
}

impl Envelope {
    /// A 7-bit transactional message of `account` from `sender` to `recipients`, with no
    /// DSN options, list or campaign; the other fields are set where they differ.
    pub fn transactional(
        id: QueueId,
        received_at: u64,
        account: &str,
        sender: Option<String>,
        recipients: impl IntoIterator<Item = Recipient>,
    ) -> Envelope {
        Envelope {
            id,
            received_at,
            account: account.to_string(),
            sender,
            envid: None,
            ret: None,
            body_type: BodyType::SevenBit,
            smtputf8: false,
            eight_bit_content: false,
            generated_dsn: false,
            stream: Stream::Transactional,
            list: None,
            campaign: None,
            recipients: recipients.into_iter().collect(),
        }
    }

    /// A notice the relay writes itself (a DSN, a campaign report) to `to`: never
    /// answered with another DSN; 8-bit and SMTPUTF8 as its content and address need.
    pub fn relay_notice(
        id: QueueId,
        received_at: u64,
        account: &str,
        to: String,
        content: &[u8],
    ) -> Envelope {
        let mut e = Envelope::transactional(id, received_at, account, None, [Recipient::new(to)]);
        e.generated_dsn = true;
        e.eight_bit_content = !content.is_ascii();
        e.smtputf8 = !e.recipients[0].address.is_ascii();
        e
    }
}

impl Recipient {
    /// A recipient with no DSN options.
    pub fn new(address: impl Into<String>) -> Recipient {
        Recipient {
            address: address.into(),
            notify: None,
            orcpt: None,
            done: false,
        }
    }

    pub fn notify_or_default(&self) -> Notify {
        self.notify.unwrap_or(Notify::DEFAULT)
    }
}

// Recipients are personal data: Debug shows the domain only.
impl std::fmt::Debug for Recipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let domain = self.address.rsplit_once('@').map_or("", |(_, d)| d);
        write!(f, "Recipient(…@{domain}, done: {})", self.done)
    }
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope")
            .field("id", &self.id)
            .field("account", &self.account)
            .field("recipients", &self.recipients)
            .finish_non_exhaustive()
    }
}

/// How one delivery attempt for one recipient was settled by the scheduler.
#[derive(Debug, Clone, Copy)]
pub enum Settled<'a> {
    /// The next hop took it; `reply` is its answer.
    Delivered { reply: &'a str },
    /// It will be tried again.
    Deferred { reason: &'a str },
    /// Given up: refused for good, or expired after `max_age` (status 4.4.7). `hard`: the
    /// address itself was refused for good (it becomes a `bounce` suppression at once).
    Bounced {
        status: crate::smtp::reply::Status,
        diagnostic: &'a str,
        hard: bool,
        /// The bounce category, and the rule that gave it.
        category: crate::bounce::Category,
        rule: &'a str,
    },
}

/// One recipient's settled attempt: what the delivery log, the account counts, account
/// health, a campaign's canary and the account's webhook each learn of a delivery result,
/// through [`OutcomeSink`].
#[derive(Debug, Clone, Copy)]
pub struct RecipientOutcome<'a> {
    pub id: QueueId,
    pub envelope: &'a Envelope,
    /// The recipient's index in the envelope.
    pub rcpt: usize,
    pub settled: Settled<'a>,
    /// The site (its MX hosts) or `smarthost`.
    pub site: &'a str,
    /// The server that answered (or `-`).
    pub remote: &'a str,
    pub attempts: u16,
    /// Since the message was accepted.
    pub delay_ms: u64,
    /// The campaign whose canary counts this recipient (`None` when it has none, once
    /// released, and for recipients held back).
    pub canary: Option<&'a str>,
}

impl RecipientOutcome<'_> {
    pub fn address(&self) -> &str {
        &self.envelope.recipients[self.rcpt].address
    }

    /// Given up because the message grew too old (4.4.7), not refused.
    pub fn expired(&self) -> bool {
        matches!(self.settled, Settled::Bounced { status, .. } if status == crate::smtp::reply::Status::new(4, 4, 7))
    }
}

/// What receives every settled recipient, one call each, in the scheduler's task: it must
/// not block (a sink with blocking work hands it to the blocking pool).
pub trait OutcomeSink: Send + Sync {
    fn settled(&self, outcome: &RecipientOutcome<'_>);
}
