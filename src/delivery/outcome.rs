//! What happened to a recipient in one delivery attempt, and the single decision that turns
//! it into delivered, deferred or bounced.
//!
//! Every path through the client and the transport ends in an [`Attempt`]; [`classify`] is
//! the one exhaustive `match` that says what it means. Nothing else in the relay decides
//! between "try again" and "give up".

use crate::smtp::reply::{Reply, Severity, Status};

/// Where in the conversation a reply or failure happened (for DSNs and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Resolve,
    Connect,
    Greeting,
    Ehlo,
    StartTls,
    /// The handshake of TLS from the first byte (port 465 style).
    Tls,
    /// Logging in to a smart host.
    Auth,
    Mail,
    Rcpt,
    Data,
    /// The reply to the final `.`.
    Dot,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Resolve => "resolving the destination",
            Stage::Connect => "connecting",
            Stage::Greeting => "the greeting",
            Stage::Ehlo => "EHLO",
            Stage::StartTls => "STARTTLS",
            Stage::Tls => "the TLS handshake",
            Stage::Auth => "AUTH",
            Stage::Mail => "MAIL FROM",
            Stage::Rcpt => "RCPT TO",
            Stage::Data => "DATA",
            Stage::Dot => "end of data",
        }
    }
}

/// Why the relay itself would not send a message to a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalRefusal {
    /// The message needs SMTPUTF8 and the server does not offer it.
    NeedsSmtpUtf8,
    /// 8-bit content and the server does not offer 8BITMIME.
    NeedsEightBitMime,
    /// Larger than the server's announced SIZE.
    TooBigForServer { limit: u64 },
    /// The content cannot be sent without a bare CR/LF or a line over 998 octets.
    MalformedContent,
    /// The content in the spool failed its checksum.
    DamagedInSpool,
    /// The per-recipient rewrite (unsubscribe headers, footer, signature) failed.
    Rewrite(crate::rewrite::RewriteError),
    /// The relay's operator returned the message (admin API or CLI).
    ReturnedByOperator,
}

/// Why a destination could not be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveFailure {
    /// The domain does not exist (NXDOMAIN).
    NoSuchDomain,
    /// RFC 7505 null MX: the domain accepts no mail.
    NullMx,
    /// The domain exists but has no MX, A or AAAA records.
    NoAddresses,
    /// SERVFAIL, timeout, or any other temporary DNS trouble.
    Temporary(String),
}

/// The result of one attempt for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The server answered; `reply` is the answer that decided this recipient.
    Replied {
        stage: Stage,
        reply: Reply,
    },
    /// No usable answer: connection refused or lost, timeout, TLS failure.
    NoAnswer {
        stage: Stage,
        error: String,
    },
    Unroutable(ResolveFailure),
    Refused(LocalRefusal),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    Delivered,
    Deferred {
        /// A short reason for logs and delay DSNs.
        reason: String,
    },
    Bounced {
        status: Status,
        /// What the DSN shows as the diagnostic.
        diagnostic: String,
    },
}

/// The one place that decides.
pub fn classify(attempt: &Attempt) -> Disposition {
    match attempt {
        // A server that refuses the session itself says nothing about the recipient: the
        // next attempt may reach another MX or the same one in a better mood. A refused
        // login is the relay's configuration, never the recipient's fault: the mail waits.
        Attempt::Replied {
            stage:
                stage @ (Stage::Greeting | Stage::Ehlo | Stage::StartTls | Stage::Tls | Stage::Auth),
            reply,
        } if !reply.is_positive() => Disposition::Deferred {
            reason: format!("{} during {}", reply.one_line(), stage.as_str()),
        },
        Attempt::Replied { stage, reply } => match reply.severity() {
            Severity::Positive => Disposition::Delivered,
            Severity::Transient => Disposition::Deferred {
                reason: format!("{} during {}", reply.one_line(), stage.as_str()),
            },
            Severity::Permanent => Disposition::Bounced {
                status: reply
                    .status
                    .unwrap_or_else(|| default_status(reply.code, *stage)),
                diagnostic: format!("smtp; {}", reply.one_line()),
            },
        },
        Attempt::NoAnswer { stage, error } => Disposition::Deferred {
            reason: format!("{error} during {}", stage.as_str()),
        },
        Attempt::Unroutable(failure) => match failure {
            ResolveFailure::NoSuchDomain => Disposition::Bounced {
                status: Status::new(5, 1, 2),
                diagnostic: "x-optin-relay; the recipient's domain does not exist".into(),
            },
            ResolveFailure::NullMx => Disposition::Bounced {
                status: Status::new(5, 1, 10),
                diagnostic: "x-optin-relay; the recipient's domain accepts no mail (null MX)"
                    .into(),
            },
            ResolveFailure::NoAddresses => Disposition::Bounced {
                status: Status::new(5, 1, 2),
                diagnostic: "x-optin-relay; the recipient's domain has no mail server".into(),
            },
            ResolveFailure::Temporary(e) => Disposition::Deferred {
                reason: format!("DNS lookup failed: {e}"),
            },
        },
        Attempt::Refused(refusal) => {
            let (status, text) = match refusal {
                LocalRefusal::NeedsSmtpUtf8 => (
                    Status::new(5, 6, 7),
                    "the message needs SMTPUTF8 and the receiving server does not support it"
                        .to_string(),
                ),
                LocalRefusal::NeedsEightBitMime => (
                    Status::new(5, 6, 3),
                    "the message has 8-bit content and the receiving server does not support \
                     8BITMIME"
                        .to_string(),
                ),
                LocalRefusal::TooBigForServer { limit } => (
                    Status::new(5, 3, 4),
                    format!(
                        "the message is larger than the receiving server's limit of {limit} octets"
                    ),
                ),
                LocalRefusal::MalformedContent => (
                    Status::new(5, 6, 0),
                    "the message content cannot be transmitted as SMTP text".to_string(),
                ),
                LocalRefusal::DamagedInSpool => (
                    Status::new(5, 3, 0),
                    "the message was damaged in the relay's storage".to_string(),
                ),
                LocalRefusal::Rewrite(why) => (
                    Status::new(5, 6, 0),
                    format!("the message could not be prepared for sending: {why}"),
                ),
                LocalRefusal::ReturnedByOperator => (
                    Status::new(5, 3, 0),
                    "the relay's operator returned the message undelivered".to_string(),
                ),
            };
            Disposition::Bounced {
                status,
                diagnostic: format!("x-optin-relay; {text}"),
            }
        }
    }
}

/// The bounce category of a failed attempt, by the policy's classifier (see
/// [`crate::bounce`]); `domain` is the recipient's. A refusal of the relay's own sender
/// (at `MAIL FROM`) is never about the recipient, whatever its code says.
pub fn bounce_verdict(
    attempt: &Attempt,
    classifier: &crate::bounce::Classifier,
    domain: &str,
) -> crate::bounce::Verdict {
    use crate::bounce::{Category, Evidence, Fault, Verdict};
    match attempt {
        Attempt::Replied { stage, reply } => {
            let v = classifier.classify(&Evidence {
                code: Some(reply.code),
                status: reply.status,
                text: &reply.text,
                domain,
            });
            if *stage == Stage::Mail && v.category.fault() == Fault::Recipient {
                Verdict::new(
                    Category::Other,
                    format!("refused at MAIL FROM ({})", v.rule),
                )
            } else {
                v
            }
        }
        Attempt::NoAnswer { .. } => Verdict::new(Category::Routing, "no answer"),
        Attempt::Unroutable(failure) => match failure {
            ResolveFailure::NoSuchDomain => {
                Verdict::new(Category::BadDomain, "dns: no such domain")
            }
            ResolveFailure::NullMx => Verdict::new(Category::BadDomain, "dns: null MX"),
            ResolveFailure::NoAddresses => Verdict::new(Category::Routing, "dns: no address"),
            ResolveFailure::Temporary(_) => Verdict::new(Category::Routing, "dns: temporary"),
        },
        Attempt::Refused(refusal) => match refusal {
            LocalRefusal::TooBigForServer { .. } => {
                Verdict::new(Category::MessageTooLarge, "local: over the server's SIZE")
            }
            LocalRefusal::NeedsSmtpUtf8
            | LocalRefusal::NeedsEightBitMime
            | LocalRefusal::MalformedContent => Verdict::new(
                Category::ContentRejected,
                "local: content the server cannot take",
            ),
            LocalRefusal::DamagedInSpool
            | LocalRefusal::Rewrite(_)
            | LocalRefusal::ReturnedByOperator => Verdict::new(Category::Other, "local"),
        },
    }
}

/// An enhanced code for servers that send none (RFC 3463 §3: X.0.0 by class, with the
/// subject the stage implies).
fn default_status(code: u16, stage: Stage) -> Status {
    let class = (code / 100) as u8;
    match stage {
        Stage::Rcpt => Status::new(class, 1, 0),
        Stage::Mail => Status::new(class, 1, 0),
        _ => Status::new(class, 0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replied(stage: Stage, code: u16, status: Option<Status>) -> Attempt {
        Attempt::Replied {
            stage,
            reply: Reply {
                code,
                status,
                text: "text".into(),
            },
        }
    }

    #[test]
    fn replies() {
        assert_eq!(
            classify(&replied(Stage::Dot, 250, None)),
            Disposition::Delivered
        );
        assert!(matches!(
            classify(&replied(Stage::Rcpt, 451, None)),
            Disposition::Deferred { .. }
        ));
        match classify(&replied(Stage::Rcpt, 550, Some(Status::new(5, 1, 1)))) {
            Disposition::Bounced { status, diagnostic } => {
                assert_eq!(status, Status::new(5, 1, 1));
                assert_eq!(diagnostic, "smtp; 550 5.1.1 text");
            }
            other => panic!("{other:?}"),
        }
        match classify(&replied(Stage::Rcpt, 550, None)) {
            Disposition::Bounced { status, .. } => assert_eq!(status, Status::new(5, 1, 0)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_refused_session_is_not_a_bounce() {
        assert!(matches!(
            classify(&replied(Stage::Greeting, 554, None)),
            Disposition::Deferred { .. }
        ));
        assert!(matches!(
            classify(&replied(Stage::Ehlo, 550, None)),
            Disposition::Deferred { .. }
        ));
        // a smart host refusing our login: the mail waits for the operator to fix it
        assert!(matches!(
            classify(&replied(Stage::Auth, 535, Some(Status::new(5, 7, 8)))),
            Disposition::Deferred { .. }
        ));
    }

    #[test]
    fn everything_else() {
        let no_answer = Attempt::NoAnswer {
            stage: Stage::Connect,
            error: "connection refused".into(),
        };
        assert!(matches!(classify(&no_answer), Disposition::Deferred { .. }));
        assert!(matches!(
            classify(&Attempt::Unroutable(ResolveFailure::Temporary(
                "SERVFAIL".into()
            ))),
            Disposition::Deferred { .. }
        ));
        for f in [
            ResolveFailure::NoSuchDomain,
            ResolveFailure::NullMx,
            ResolveFailure::NoAddresses,
        ] {
            assert!(matches!(
                classify(&Attempt::Unroutable(f)),
                Disposition::Bounced { .. }
            ));
        }
        match classify(&Attempt::Refused(LocalRefusal::NeedsSmtpUtf8)) {
            Disposition::Bounced { status, .. } => assert_eq!(status, Status::new(5, 6, 7)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn verdicts_are_about_the_address_only_when_the_address_was_refused() {
        use crate::bounce::{Action, Category, Classifier};
        let c = Classifier::default();
        let at = |stage, code, status: Option<Status>, text: &'static str| Attempt::Replied {
            stage,
            reply: Reply {
                code,
                status,
                text: text.into(),
            },
        };
        let category = |a: &Attempt| bounce_verdict(a, &c, "example.net").category;
        assert_eq!(
            category(&at(
                Stage::Rcpt,
                550,
                Some(Status::new(5, 1, 1)),
                "no mailbox"
            )),
            Category::InvalidRecipient
        );
        assert_eq!(
            category(&at(
                Stage::Rcpt,
                550,
                Some(Status::new(5, 2, 1)),
                "disabled"
            )),
            Category::Inactive
        );
        assert_eq!(
            category(&at(Stage::Rcpt, 550, None, "User unknown")),
            Category::InvalidRecipient
        );
        assert_eq!(
            category(&Attempt::Unroutable(ResolveFailure::NullMx)),
            Category::BadDomain
        );
        assert_eq!(
            category(&Attempt::Unroutable(ResolveFailure::NoSuchDomain)),
            Category::BadDomain
        );
        // The message, not the address: spam, size, policy — and a full mailbox waits
        // for its streak.
        for (a, want) in [
            (
                at(Stage::Data, 554, Some(Status::new(5, 7, 1)), "spam"),
                Category::SpamBlock,
            ),
            (
                at(Stage::Rcpt, 552, Some(Status::new(5, 2, 2)), "over quota"),
                Category::MailboxFull,
            ),
            (
                at(Stage::Rcpt, 550, None, "rejected by policy"),
                Category::SpamBlock,
            ),
            (
                at(Stage::Mail, 550, Some(Status::new(5, 1, 1)), "sender"),
                Category::Other,
            ),
            (
                Attempt::Unroutable(ResolveFailure::NoAddresses),
                Category::Routing,
            ),
            (
                Attempt::Refused(LocalRefusal::TooBigForServer { limit: 10 }),
                Category::MessageTooLarge,
            ),
        ] {
            assert_eq!(category(&a), want, "{a:?}");
            assert_ne!(want.action(), Action::Suppress);
        }
    }
}
