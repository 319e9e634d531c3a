//! Every negative reply the relay's SMTP server can give, in one place.
//!
//! Parsers, the session and the spool report what went wrong as a [`Refusal`]; this module
//! alone decides which code, enhanced status code and text the client sees. Texts never carry
//! personal data beyond what the client itself just sent.

use super::address::AddressError;
use super::params::ParamError;
use super::reply::{Reply, Status};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    // ---- command syntax -------------------------------------------------------------
    #[error("command not recognized")]
    Unrecognized,
    #[error("command not implemented")]
    NotImplemented,
    #[error("syntax: {0}")]
    Syntax(&'static str),
    #[error("command line too long")]
    LineTooLong,
    #[error("bare CR or LF in command")]
    BareLineEnding,
    #[error("command is not valid UTF-8")]
    NotUtf8,
    #[error("bad sender address: {0}")]
    BadSender(AddressError),
    #[error("bad recipient address: {0}")]
    BadRecipient(AddressError),
    #[error("{0}")]
    Param(ParamError),
    #[error("address needs SMTPUTF8")]
    NeedsSmtpUtf8,

    // ---- command sequence -----------------------------------------------------------
    #[error("bad sequence: {0}")]
    BadSequence(&'static str),

    // ---- who may send -----------------------------------------------------------------
    #[error("authentication required")]
    AuthRequired,
    #[error("relay access denied")]
    RelayDenied,
    /// The client's account was removed (by a policy reload) during the transaction: the
    /// same reply as [`Refusal::RelayDenied`], counted apart.
    #[error("relay access denied")]
    AccountGone,
    #[error("authentication mechanism not supported")]
    AuthMechanism,
    #[error("encryption required for authentication")]
    AuthNeedsTls,
    #[error("authentication failed")]
    AuthFailed,
    #[error("authentication exchange cancelled")]
    AuthCancelled,
    #[error("malformed authentication data")]
    AuthMalformed,
    #[error("too many failed authentication attempts")]
    AuthLockedOut,
    #[error("no password verification slot free")]
    AuthBusy,

    // ---- limits -------------------------------------------------------------------------
    #[error("too many recipients")]
    TooManyRecipients,
    #[error("message exceeds the size limit of {0} octets")]
    TooBig(u64),
    #[error("message contains a bare CR or LF")]
    DataBareLineEnding,
    #[error("message contains a line longer than {0} octets")]
    DataLineTooLong(usize),
    #[error("message contains a NUL octet")]
    DataNul,
    #[error("message has {0} Received headers: probable mail loop")]
    MailLoop(usize),
    #[error("too many errors")]
    TooManyErrors,
    #[error("idle timeout")]
    IdleTimeout,
    #[error("session time limit reached")]
    SessionTimeout,
    #[error("too many connections")]
    TooManyConnections,
    #[error("too many connections from this address")]
    TooManyConnectionsFromIp,

    // ---- the relay itself ----------------------------------------------------------
    #[error("shutting down")]
    ShuttingDown,
    #[error("cannot store the message now")]
    SpoolUnavailable,
    /// The relay-wide budget for content being received (`[smtp] max_data_memory`) is spent.
    #[error("no memory for the message now")]
    DataMemory,
    #[error("TLS not available")]
    TlsUnavailable,

    /// The sending account is frozen (the reason, as the operator or rule gave it).
    #[error("account frozen")]
    AccountFrozen(String),
    /// The campaign (`X-Optin-Campaign`) was declined after its canary (id, reason).
    #[error("campaign declined")]
    CampaignDeclined(String, String),

    // ---- consent and suppression ------------------------------------------------------
    /// The recipient (as the client spelled it) may not receive this mail.
    #[error("recipient withheld: {1:?}")]
    RecipientWithheld(String, Withheld),
    /// Every recipient was withheld at the end of DATA; the first one and how many others.
    #[error("all recipients withheld")]
    AllWithheld(String, Withheld, usize),
    #[error("stream not allowed for this account")]
    StreamNotAllowed(&'static str),
    #[error("bad X-Optin-Stream")]
    BadStream,
    #[error("unknown list")]
    UnknownList(String),
    #[error("marketing mail without a list")]
    NoList,
    #[error("bad X-Optin-Campaign")]
    BadCampaign,

    // ---- sender identity -----------------------------------------------------------------
    /// The From (or envelope sender) domain is not one of the account's.
    #[error("{0} domain not the account's")]
    SenderNotAccount(&'static str, String),
    #[error("no From header")]
    NoFrom,
    #[error("unknown unsubscribe address")]
    UnknownUnsubscribe,
    /// Too many reports from one client address this hour.
    #[error("too many feedback reports")]
    ReportRate,
    /// A report with too many MIME parts or too deep a nesting to read.
    #[error("feedback report too complex")]
    ReportTooComplex,
    /// Marketing mail that cannot carry the mandatory footer (signed, encrypted, no text).
    #[error("footer impossible: {0}")]
    FooterImpossible(String),
    #[error("the relay operator's contact details in customer text")]
    OperatorContact,
    /// The message matched a prohibited content category of the policy (its name).
    #[error("prohibited content: {0}")]
    ProhibitedContent(String),
}

/// Why the consent and suppression policy withholds mail from a recipient. The texts say
/// no more than the sender knows or needs: which of its own actions or its recipient's
/// choices stops the mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Withheld {
    UnsubscribedList,
    UnsubscribedAll,
    Bounced,
    Complained,
    Blocked,
    NoConsent,
    /// Consent older than the list's `consent_max_age` (no confirmation or engagement
    /// since).
    ConsentExpired,
}

impl Withheld {
    pub fn text(self) -> &'static str {
        match self {
            Withheld::UnsubscribedList => "has unsubscribed from this list",
            Withheld::UnsubscribedAll => "has unsubscribed from all mail of this sender",
            Withheld::Bounced => "is suppressed after a hard bounce",
            Withheld::Complained => "is suppressed after a spam complaint",
            Withheld::Blocked => "may not receive mail through this relay",
            Withheld::NoConsent => "has no consent recorded for this list",
            Withheld::ConsentExpired => {
                "has a consent older than this list allows; ask again (re-permission)"
            }
        }
    }

    /// For metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Withheld::UnsubscribedList => "unsubscribed_list",
            Withheld::UnsubscribedAll => "unsubscribed_all",
            Withheld::Bounced => "bounced",
            Withheld::Complained => "complaint",
            Withheld::Blocked => "blocked",
            Withheld::NoConsent => "consent_missing",
            Withheld::ConsentExpired => "consent_expired",
        }
    }
}

/// An SMTP reply's code, enhanced status and text.
type ReplyParts = (u16, (u8, u16, u16), String);

impl Refusal {
    pub fn reply(&self) -> Reply {
        use Refusal::*;
        let (code, status, text) = match self {
            Unrecognized | NotImplemented | Syntax(..) | LineTooLong | BareLineEnding | NotUtf8
            | BadSender(..) | BadRecipient(..) | Param(..) | NeedsSmtpUtf8 | BadSequence(..) => {
                self.command_reply()
            }
            AuthRequired | RelayDenied | AccountGone | AuthMechanism | AuthNeedsTls
            | AuthFailed | AuthCancelled | AuthMalformed | AuthLockedOut | AuthBusy => {
                self.access_reply()
            }
            TooManyRecipients
            | TooBig(..)
            | DataBareLineEnding
            | DataLineTooLong(..)
            | DataNul
            | MailLoop(..)
            | TooManyErrors
            | IdleTimeout
            | SessionTimeout
            | TooManyConnections
            | TooManyConnectionsFromIp
            | ShuttingDown
            | SpoolUnavailable
            | DataMemory
            | TlsUnavailable => self.limits_reply(),
            AccountFrozen(..)
            | CampaignDeclined(..)
            | RecipientWithheld(..)
            | AllWithheld(..)
            | StreamNotAllowed(..)
            | BadStream
            | UnknownList(..)
            | SenderNotAccount(..)
            | NoFrom
            | OperatorContact
            | ProhibitedContent(..)
            | FooterImpossible(..)
            | UnknownUnsubscribe
            | ReportRate
            | ReportTooComplex
            | BadCampaign
            | NoList => self.policy_reply(),
        };
        Reply::new(code, Status::new(status.0, status.1, status.2), text)
    }

    /// Replies to commands that are not well-formed or not in order.
    fn command_reply(&self) -> ReplyParts {
        use Refusal::*;
        match self {
            Unrecognized => (500, (5, 5, 1), "Command not recognized".into()),
            NotImplemented => (502, (5, 5, 1), "Command not implemented".into()),
            Syntax(usage) => (501, (5, 5, 4), format!("Syntax: {usage}")),
            LineTooLong => (500, (5, 5, 2), "Line too long, closing connection".into()),
            BareLineEnding => (
                500,
                (5, 5, 2),
                "Bare CR or LF in command; lines must end with CRLF".into(),
            ),
            NotUtf8 => (500, (5, 5, 2), "Command is not valid UTF-8".into()),
            BadSender(e) => (501, (5, 1, 7), format!("Bad sender address: {e}")),
            BadRecipient(e) => (501, (5, 1, 3), format!("Bad recipient address: {e}")),
            // The name is the client's: shown bounded, like every client value.
            Param(ParamError::Unknown(name)) => (
                555,
                (5, 5, 4),
                format!("Parameter {} is not supported", printable(name)),
            ),
            Param(e) => (501, (5, 5, 4), capitalise(e)),
            NeedsSmtpUtf8 => (
                553,
                (5, 6, 7),
                "Non-ASCII address needs the SMTPUTF8 parameter".into(),
            ),
            BadSequence(what) => (503, (5, 5, 1), format!("Bad sequence of commands: {what}")),
            _ => unreachable!("{} is not a {} refusal", self, "command"),
        }
    }

    /// Replies about who may send: authentication and relaying.
    fn access_reply(&self) -> ReplyParts {
        use Refusal::*;
        match self {
            AuthRequired => (530, (5, 7, 0), "Authentication required".into()),
            RelayDenied | AccountGone => (
                554,
                (5, 7, 1),
                "Relay access denied: this client is not allowed to send through this relay".into(),
            ),
            AuthMechanism => (
                504,
                (5, 5, 4),
                "Unrecognized authentication mechanism".into(),
            ),
            AuthNeedsTls => (
                538,
                (5, 7, 11),
                "Encryption required for requested authentication mechanism".into(),
            ),
            AuthFailed => (535, (5, 7, 8), "Authentication credentials invalid".into()),
            AuthCancelled => (501, (5, 0, 0), "Authentication cancelled".into()),
            AuthMalformed => (501, (5, 5, 2), "Malformed authentication data".into()),
            AuthLockedOut => (
                454,
                (4, 7, 0),
                "Too many failed authentication attempts, try again later".into(),
            ),
            AuthBusy => (
                454,
                (4, 7, 0),
                "Temporary authentication failure, try again later".into(),
            ),
            _ => unreachable!("{} is not a {} refusal", self, "access"),
        }
    }

    /// Replies about the limits of a message or a session, and the relay's own state.
    fn limits_reply(&self) -> ReplyParts {
        use Refusal::*;
        match self {
            TooManyRecipients => (452, (4, 5, 3), "Too many recipients".into()),
            TooBig(limit) => (
                552,
                (5, 3, 4),
                format!("Message exceeds the size limit of {limit} octets"),
            ),
            DataBareLineEnding => (
                550,
                (5, 6, 0),
                "Message refused: bare CR or LF in message data; lines must end with CRLF".into(),
            ),
            DataLineTooLong(max) => (
                550,
                (5, 6, 0),
                format!("Message refused: a line is longer than {max} octets"),
            ),
            DataNul => (
                550,
                (5, 6, 0),
                "Message refused: NUL octet in message data".into(),
            ),
            MailLoop(n) => (
                554,
                (5, 4, 6),
                format!("Message refused: {n} Received headers, probable mail loop"),
            ),
            TooManyErrors => (421, (4, 7, 0), "Too many errors, closing connection".into()),
            IdleTimeout => (421, (4, 4, 2), "Idle timeout, closing connection".into()),
            SessionTimeout => (
                421,
                (4, 4, 2),
                "Session time limit reached, closing connection".into(),
            ),
            TooManyConnections => (
                421,
                (4, 3, 2),
                "Too many connections, try again later".into(),
            ),
            TooManyConnectionsFromIp => (
                421,
                (4, 7, 0),
                "Too many connections from your address, try again later".into(),
            ),
            ShuttingDown => (
                421,
                (4, 3, 2),
                "Service shutting down, try again later".into(),
            ),
            SpoolUnavailable => (
                451,
                (4, 3, 0),
                "Temporary failure storing the message, try again later".into(),
            ),
            DataMemory => (
                452,
                (4, 3, 1),
                "Insufficient system resources to take the message now, try again later".into(),
            ),
            TlsUnavailable => (454, (4, 7, 0), "TLS not available".into()),
            _ => unreachable!("{} is not a {} refusal", self, "limits"),
        }
    }

    /// Replies of the sending policy: frozen accounts, declined campaigns, consent and
    /// suppression, the sender's identity, the relay's own addresses.
    fn policy_reply(&self) -> ReplyParts {
        use Refusal::*;
        match self {
            AccountFrozen(reason) => (554, (5, 7, 1), format!("account frozen: {reason}")),
            CampaignDeclined(id, reason) => (
                550,
                (5, 7, 1),
                format!("campaign {id} was declined: {reason}"),
            ),
            RecipientWithheld(rcpt, why) => (550, (5, 7, 1), format!("<{rcpt}> {}", why.text())),
            AllWithheld(rcpt, why, 0) => (
                550,
                (5, 7, 1),
                format!(
                    "No recipient may receive this message: <{rcpt}> {}",
                    why.text()
                ),
            ),
            AllWithheld(rcpt, why, others) => (
                550,
                (5, 7, 1),
                format!(
                    "No recipient may receive this message: <{rcpt}> {} (and {others} more)",
                    why.text()
                ),
            ),
            StreamNotAllowed(stream) => (
                550,
                (5, 7, 1),
                format!("This account may not send {stream} mail"),
            ),
            BadStream => (
                554,
                (5, 6, 0),
                "X-Optin-Stream must be marketing or transactional".into(),
            ),
            UnknownList(list) => (
                550,
                (5, 7, 1),
                format!("Unknown list {:?} for this account", printable(list)),
            ),
            SenderNotAccount(which, domain) => (
                550,
                (5, 7, 1),
                format!(
                    "The {which} domain {} is not one of this account's domains",
                    printable(domain)
                ),
            ),
            NoFrom => (550, (5, 6, 0), "The message has no From header".into()),
            OperatorContact => (
                550,
                (5, 7, 1),
                "The message names the relay operator's own contact details; use your own".into(),
            ),
            ProhibitedContent(category) => (
                550,
                (5, 7, 1),
                format!("prohibited content: {}", printable(category)),
            ),
            FooterImpossible(why) => (
                550,
                (5, 7, 1),
                format!("Marketing mail: {}", printable_long(why)),
            ),
            UnknownUnsubscribe => (
                550,
                (5, 1, 1),
                "Unknown unsubscribe address: use the complete link from the message".into(),
            ),
            ReportRate => (
                450,
                (4, 7, 1),
                "Too many reports from your address, try again later".into(),
            ),
            ReportTooComplex => (
                550,
                (5, 6, 0),
                "Report refused: too many MIME parts or too deep a nesting".into(),
            ),
            BadCampaign => (
                554,
                (5, 6, 0),
                "X-Optin-Campaign must be 1 to 128 visible ASCII characters".into(),
            ),
            NoList => (
                550,
                (5, 7, 1),
                "Marketing mail needs a list: name one with X-Optin-List".into(),
            ),

            _ => unreachable!("{} is not a {} refusal", self, "policy"),
        }
    }

    /// The refusal's name in metrics and logs: the `reason` label of
    /// `optin_messages_refused_total` (a message refused at MAIL or at the end of DATA) and
    /// of `optin_untrusted_refusals_total` (a stranger's mail to the relay's own addresses).
    pub fn label(&self) -> &'static str {
        use Refusal::*;
        match self {
            Unrecognized => "unrecognized",
            NotImplemented => "not_implemented",
            Syntax(_) => "syntax",
            LineTooLong => "line_too_long_command",
            BareLineEnding => "bare_line_ending_command",
            NotUtf8 => "not_utf8",
            BadSender(_) => "bad_sender",
            BadRecipient(_) => "bad_recipient",
            Param(_) => "bad_parameter",
            NeedsSmtpUtf8 => "needs_smtputf8",
            BadSequence(_) => "bad_sequence",
            AuthRequired => "auth_required",
            RelayDenied => "relay_denied",
            AccountGone => "account_gone",
            AuthMechanism => "auth_mechanism",
            AuthNeedsTls => "auth_needs_tls",
            AuthFailed => "auth_failed",
            AuthCancelled => "auth_cancelled",
            AuthMalformed => "auth_malformed",
            AuthLockedOut => "auth_locked_out",
            AuthBusy => "auth_busy",
            TooManyRecipients => "too_many_recipients",
            TooBig(_) => "too_big",
            DataBareLineEnding => "bare_line_ending",
            DataLineTooLong(_) => "line_too_long",
            DataNul => "nul",
            MailLoop(_) => "mail_loop",
            TooManyErrors => "too_many_errors",
            IdleTimeout => "idle_timeout",
            SessionTimeout => "session_timeout",
            TooManyConnections => "too_many_connections",
            TooManyConnectionsFromIp => "too_many_connections_from_ip",
            ShuttingDown => "shutting_down",
            SpoolUnavailable => "spool_error",
            DataMemory => "memory",
            TlsUnavailable => "tls_unavailable",
            AccountFrozen(_) => "account_frozen",
            CampaignDeclined(..) => "campaign_declined",
            RecipientWithheld(..) => "recipient_withheld",
            AllWithheld(..) => "withheld",
            // The X-Optin-* fields that say what the message is.
            StreamNotAllowed(_) | BadStream | UnknownList(_) | NoList | BadCampaign => {
                "optin_header"
            }
            SenderNotAccount(..) | NoFrom => "sender_identity",
            UnknownUnsubscribe => "unknown_unsubscribe",
            ReportRate => "report_rate",
            ReportTooComplex => "mime_budget",
            FooterImpossible(_) => "footer_impossible",
            OperatorContact => "operator_contact",
            ProhibitedContent(_) => "prohibited_content",
        }
    }

    /// Does this refusal end the session (the server closes after sending it)? Every 421,
    /// and a command line over the limit: the rest of it was never read, so nothing after
    /// it can be trusted to be a command.
    pub fn closes_session(&self) -> bool {
        matches!(self, Refusal::LineTooLong) || self.reply().code == 421
    }

    /// Counts toward the per-session error limit: client mistakes, not policy answers or
    /// the relay's own trouble.
    pub fn counts_as_error(&self) -> bool {
        use Refusal::*;
        matches!(
            self,
            Unrecognized
                | NotImplemented
                | Syntax(_)
                | LineTooLong
                | BareLineEnding
                | NotUtf8
                | BadSender(_)
                | BadRecipient(_)
                | Param(_)
                | NeedsSmtpUtf8
                | BadSequence(_)
                | AuthRequired
                | RelayDenied
                | AuthMechanism
                | AuthNeedsTls
                | AuthFailed
                | AuthCancelled
                | AuthMalformed
                | AuthLockedOut
        )
    }
}

/// At most 200 printable characters of a relay-made explanation, for a reply.
fn printable_long(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(200).collect()
}

/// At most 64 printable characters of a client-supplied value, for a reply.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}

fn capitalise(e: &impl std::fmt::Display) -> String {
    let s = e.to_string();
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_parameter_is_named_within_the_reply_line_limit() {
        // found by fuzz/smtp_command: a 2 000-octet parameter name made a 2 KiB reply line
        let name = format!("R\u{81}{}", "L ".repeat(1000));
        let reply = Refusal::Param(ParamError::Unknown(name)).reply();
        let line = reply.one_line();
        assert!(line.len() + 2 <= 512, "{} octets", line.len());
        assert!(line.starts_with("555 5.5.4 Parameter RL L L"), "{line}");
    }

    #[test]
    fn every_refusal_is_negative_with_matching_class() {
        let all = [
            Refusal::Unrecognized,
            Refusal::Syntax("X"),
            Refusal::BadSequence("x"),
            Refusal::AuthRequired,
            Refusal::RelayDenied,
            Refusal::TooManyRecipients,
            Refusal::TooBig(10),
            Refusal::IdleTimeout,
            Refusal::SpoolUnavailable,
            Refusal::Param(ParamError::Unknown("X".into())),
        ];
        for r in all {
            let reply = r.reply();
            assert!(reply.code >= 400, "{r:?}");
            let status = reply.status.unwrap();
            assert_eq!(u16::from(status.class), reply.code / 100, "{r:?}");
        }
    }

    #[test]
    fn known_codes() {
        assert_eq!(
            Refusal::TooManyRecipients.reply().to_bytes(),
            b"452 4.5.3 Too many recipients\r\n"
        );
        assert_eq!(
            Refusal::TooBig(5).reply().one_line(),
            "552 5.3.4 Message exceeds the size limit of 5 octets"
        );
        assert_eq!(
            Refusal::AuthRequired.reply().one_line(),
            "530 5.7.0 Authentication required"
        );
        assert_eq!(
            Refusal::ProhibitedContent("stock-tips".into())
                .reply()
                .one_line(),
            "550 5.7.1 prohibited content: stock-tips"
        );
        assert!(Refusal::IdleTimeout.closes_session());
        assert!(!Refusal::TooBig(1).closes_session());
    }
}
