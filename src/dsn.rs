//! Delivery status notifications (RFC 3464), built with mail-builder.
//!
//! A DSN goes to the envelope sender of the original message, from the null sender, and is
//! never sent about a message that itself had a null sender or was a DSN (no loops). It
//! honours the client's DSN parameters: `NOTIFY` decides whether a recipient is reported at
//! all, `ORCPT` becomes `Original-Recipient`, `ENVID` becomes `Original-Envelope-Id`, and
//! `RET` chooses between returning the full message and only its header section. Without
//! `RET` only the headers are returned: the relay keeps as little of people's mail as it
//! can. Messages received with SMTPUTF8 get the RFC 6533 `message/global-*` types.
//!
//! A DSN is mail the relay writes to an address the account gave, so it obeys the same
//! rules as the account's own mail ([`may_notify`]): it goes only to an envelope sender in
//! the account's `from_domains` (an account that may send marketing always has them), and
//! never to an address suppressed after a bounce or complaint or blocked or erased. A
//! notice about recipients the consent policy withheld returns the header section only,
//! whatever `RET` asked: the content was refused for them and must not reach anyone else
//! through the notice.

use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::date::Date;
use mail_builder::mime::{BodyPart, MimePart};

use crate::envelope::{Envelope, QueueId, Recipient};
use crate::smtp::params::{BodyType, Ret};
use crate::smtp::reply::Status;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Failed,
    Delayed,
    /// Delivered to a next hop that does not speak DSN: we cannot promise more.
    Relayed,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Relayed => "relayed",
        }
    }

    pub fn metric_label(self) -> &'static str {
        self.as_str()
    }
}

/// One recipient's line in a DSN.
#[derive(Debug, Clone)]
pub struct Report<'a> {
    pub recipient: &'a Recipient,
    pub action: Action,
    pub status: Status,
    /// `smtp; 550 5.1.1 …` or `x-optin-relay; …`.
    pub diagnostic: Option<String>,
    pub remote_mta: Option<String>,
    /// Unix seconds of the last attempt.
    pub last_attempt: Option<u64>,
}

/// How much of the original a DSN returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Returned {
    /// As the sender asked with `RET` (headers only when it did not ask).
    AsAsked,
    /// The header section only, whatever `RET` said.
    HeadersOnly,
}

/// Why a DSN is not sent to a message's envelope sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoNotice {
    #[error("the account no longer exists")]
    NoAccount,
    #[error("the envelope sender is not in the account's from_domains")]
    ForeignSender,
    #[error("the envelope sender {0}")]
    Suppressed(&'static str),
}

/// Whether a DSN about `original` may go to its envelope sender (see the module doc); a
/// null sender or a DSN never gets one, which [`build`] decides.
pub fn may_notify(
    policy: &crate::policy::Policy,
    lists: Option<&crate::consent::Lists>,
    original: &Envelope,
) -> Result<(), NoNotice> {
    let Some(sender) = original.sender.as_deref() else {
        return Ok(());
    };
    let account = policy
        .account(&original.account)
        .ok_or(NoNotice::NoAccount)?;
    let domain = sender
        .rsplit_once('@')
        .and_then(|(_, d)| crate::smtp::address::canonical_domain(d));
    if !account.from_domains.is_empty()
        && !domain
            .is_some_and(|d| crate::policy::identity::domain_allowed(&account.from_domains, &d))
    {
        return Err(NoNotice::ForeignSender);
    }
    if let (Some(lists), Ok(normalised)) = (lists, crate::consent::key::normalise(sender)) {
        let standing = lists.standing(&account.name, None, &normalised);
        crate::policy::verdict::decide(crate::envelope::Stream::Transactional, &standing)
            .map_err(|why| NoNotice::Suppressed(why.text()))?;
    }
    Ok(())
}

/// Whether the sender asked (or by default wants) to hear about this action.
pub fn wanted(recipient: &Recipient, action: Action) -> bool {
    let notify = recipient.notify_or_default();
    match action {
        Action::Failed => notify.failure,
        Action::Delayed => notify.delay,
        Action::Relayed => notify.success,
    }
}

/// Builds the DSN for `reports` about `original`, or `None` when none may be sent. Returns
/// the DSN's envelope (without id and time, which the caller assigns) and its content.
pub fn build(
    hostname: &str,
    original: &Envelope,
    content: &[u8],
    reports: &[Report<'_>],
    returned: Returned,
) -> Option<(Envelope, Vec<u8>)> {
    let sender = original.sender.as_ref()?;
    if original.generated_dsn || reports.is_empty() {
        return None;
    }
    let utf8 = original.smtputf8;
    let action = reports[0].action;
    let subject = match action {
        Action::Failed => "Undelivered Mail Returned to Sender",
        Action::Delayed => "Delayed Mail (still being retried)",
        Action::Relayed => "Successful Mail Delivery Report",
    };
    let human = human_text(hostname, original, reports);
    let status = status_fields(hostname, original, reports);
    let header_end = memchr::memmem::find(content, b"\r\n\r\n")
        .map(|i| i + 2)
        .unwrap_or(content.len());
    let full = original.ret == Some(Ret::Full) && returned == Returned::AsAsked;
    let (returned_type, returned): (&str, &[u8]) = match (full, utf8) {
        (true, false) => ("message/rfc822", content),
        (true, true) => ("message/global", content),
        (false, false) => ("text/rfc822-headers", &content[..header_end]),
        (false, true) => ("message/global-headers", &content[..header_end]),
    };
    let human_7bit = human.is_ascii();
    let eight_bit = !returned.is_ascii() || !human_7bit;
    let report_type = if utf8 {
        "message/global-delivery-status"
    } else {
        "message/delivery-status"
    };
    let parts = vec![
        MimePart::new(
            ContentType::new("text/plain").attribute("charset", "utf-8"),
            BodyPart::Text(human.into()),
        )
        .transfer_encoding(if human_7bit { "7bit" } else { "8bit" }),
        MimePart::new(
            ContentType::new(report_type),
            BodyPart::Binary(status.into_bytes().into()),
        )
        .transfer_encoding(if utf8 { "8bit" } else { "7bit" }),
        MimePart::new(
            ContentType::new(returned_type),
            BodyPart::Binary(returned.into()),
        )
        .transfer_encoding(if returned.is_ascii() { "7bit" } else { "8bit" }),
    ];
    let body = MimePart::new(
        ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
        BodyPart::Multipart(parts),
    );
    let message = MessageBuilder::new()
        .from(Address::new_address(
            Some("Mail Delivery System"),
            format!("MAILER-DAEMON@{hostname}"),
        ))
        .to(Address::new_address(None::<&str>, sender.clone()))
        .subject(subject)
        .date(Date::now())
        .message_id(format!(
            "dsn.{}.{}@{hostname}",
            original.id,
            rand::random::<u32>()
        ))
        .header(
            "Auto-Submitted",
            mail_builder::headers::raw::Raw::new("auto-replied"),
        )
        .body(body)
        .write_to_vec()
        .ok()?;
    let mut envelope =
        Envelope::relay_notice(QueueId(0), 0, &original.account, sender.clone(), &message);
    if eight_bit || utf8 {
        envelope.body_type = BodyType::EightBitMime;
    }
    // SMTPUTF8 only where the original had it (relay_notice looked at the address alone).
    envelope.smtputf8 &= utf8;
    Some((envelope, message))
}

fn human_text(hostname: &str, original: &Envelope, reports: &[Report<'_>]) -> String {
    let mut t = String::new();
    match reports[0].action {
        Action::Failed => t.push_str(&format!(
            "This is the mail system at {hostname}.\r\n\r\nYour message could not be \
             delivered to one or more recipients. It has been given up on; the details are \
             below.\r\n\r\n"
        )),
        Action::Delayed => t.push_str(&format!(
            "This is the mail system at {hostname}.\r\n\r\nYour message has not been \
             delivered yet to one or more recipients. Delivery is still being tried; you do \
             not need to send it again.\r\n\r\n"
        )),
        Action::Relayed => t.push_str(&format!(
            "This is the mail system at {hostname}.\r\n\r\nYour message was passed on to \
             the recipients' mail systems, which do not report delivery further.\r\n\r\n"
        )),
    }
    for r in reports {
        t.push_str(&format!("<{}>: ", r.recipient.address));
        match &r.diagnostic {
            Some(d) => t.push_str(d.split_once("; ").map_or(d.as_str(), |(_, text)| text)),
            None => t.push_str(r.action.as_str()),
        }
        t.push_str("\r\n");
    }
    t.push_str(&format!("\r\nQueue id: {}\r\n", original.id));
    wrap_long_lines(&t)
}

/// Keeps the human-readable part within 76-column lines where it can (long words stay).
fn wrap_long_lines(text: &str) -> String {
    text.split("\r\n")
        .map(|line| fold_words(line, 0, 76))
        .collect::<Vec<_>>()
        .join("\r\n")
}

fn status_fields(hostname: &str, original: &Envelope, reports: &[Report<'_>]) -> String {
    let mut s = format!("Reporting-MTA: dns; {hostname}\r\n");
    if let Some(envid) = &original.envid {
        s.push_str(&format!("Original-Envelope-Id: {}\r\n", clean(envid)));
    }
    s.push_str(&format!(
        "Arrival-Date: {}\r\n",
        Date::new((original.received_at / 1000) as i64).to_rfc822()
    ));
    let addr_type = if original.smtputf8 { "utf-8" } else { "rfc822" };
    for r in reports {
        s.push_str("\r\n");
        if let Some(orcpt) = &r.recipient.orcpt {
            s.push_str(&format!("Original-Recipient: {}\r\n", clean(orcpt)));
        }
        s.push_str(&format!(
            "Final-Recipient: {addr_type}; {}\r\n",
            r.recipient.address
        ));
        s.push_str(&format!("Action: {}\r\n", r.action.as_str()));
        s.push_str(&format!("Status: {}\r\n", r.status));
        if let Some(mta) = &r.remote_mta {
            s.push_str(&format!("Remote-MTA: dns; {}\r\n", clean(mta)));
        }
        if let Some(d) = &r.diagnostic {
            s.push_str(&format!(
                "Diagnostic-Code: {}\r\n",
                fold_words(&clean(d), "Diagnostic-Code: ".len(), 78)
            ));
        }
        if let Some(t) = r.last_attempt {
            s.push_str(&format!(
                "Last-Attempt-Date: {}\r\n",
                Date::new(t as i64).to_rfc822()
            ));
        }
    }
    s
}

/// No control characters in a header field value.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Breaks `text` at spaces into lines of at most `width` columns (a word longer than that
/// stays whole), continuing with a space as header folding needs; `start` is the column the
/// text begins at.
fn fold_words(text: &str, start: usize, width: usize) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let mut col = start;
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 {
            if col + 1 + word.len() > width && col > 1 {
                out.push_str("\r\n ");
                col = 1;
            } else {
                out.push(' ');
                col += 1;
            }
        }
        out.push_str(word);
        col += word.len();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::params::Notify;
    use mail_parser::{MessageParser, MimeHeaders};

    fn original(ret: Option<Ret>) -> Envelope {
        let rcpt = Recipient {
            notify: Some(Notify::DEFAULT),
            orcpt: Some("rfc822;Gone@X.example".into()),
            ..Recipient::new("gone@x.example")
        };
        let sender = Some("app@shop.example".into());
        let mut env =
            Envelope::transactional(QueueId(0xABCDEF), 1_700_000_000_000, "a", sender, [rcpt]);
        env.envid = Some("campaign-7".into());
        env.ret = ret;
        env
    }

    const CONTENT: &[u8] = b"Subject: offer\r\nFrom: app@shop.example\r\n\r\nsecret body text\r\n";

    fn failed(env: &Envelope) -> Report<'_> {
        Report {
            recipient: &env.recipients[0],
            action: Action::Failed,
            status: Status::new(5, 1, 1),
            diagnostic: Some("smtp; 550 5.1.1 <gone@x.example>: no such user".into()),
            remote_mta: Some("mx.x.example".into()),
            last_attempt: Some(1_700_000_100),
        }
    }

    #[test]
    fn failure_report_parses_back() {
        let env = original(None);
        let (dsn_env, bytes) = build(
            "relay.test",
            &env,
            CONTENT,
            &[failed(&env)],
            Returned::AsAsked,
        )
        .unwrap();
        assert_eq!(dsn_env.sender, None);
        assert!(dsn_env.generated_dsn);
        assert_eq!(dsn_env.recipients[0].address, "app@shop.example");
        let msg = MessageParser::default().parse(&bytes).unwrap();
        assert_eq!(msg.subject(), Some("Undelivered Mail Returned to Sender"));
        let ct = msg.content_type().unwrap();
        assert_eq!(ct.ctype(), "multipart");
        assert_eq!(ct.subtype(), Some("report"));
        assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
        let status = std::str::from_utf8(msg.parts[2].contents()).unwrap();
        for field in [
            "Reporting-MTA: dns; relay.test",
            "Original-Envelope-Id: campaign-7",
            "Original-Recipient: rfc822;Gone@X.example",
            "Final-Recipient: rfc822; gone@x.example",
            "Action: failed",
            "Status: 5.1.1",
            "Remote-MTA: dns; mx.x.example",
            "Diagnostic-Code: smtp; 550 5.1.1 <gone@x.example>: no such user",
        ] {
            assert!(status.contains(field), "{field} missing:\n{status}");
        }
        let returned = msg.parts[3].contents();
        assert!(returned.starts_with(b"Subject: offer"));
        assert!(
            !bytes.windows(16).any(|w| w == b"secret body text"),
            "headers only by default"
        );
        assert!(bytes.split(|&b| b == b'\n').all(|l| l.len() <= 999));
    }

    #[test]
    fn ret_full_returns_the_message() {
        let env = original(Some(Ret::Full));
        let (_, bytes) = build(
            "relay.test",
            &env,
            CONTENT,
            &[failed(&env)],
            Returned::AsAsked,
        )
        .unwrap();
        let msg = MessageParser::default().parse(&bytes).unwrap();
        let part = &msg.parts[3];
        assert_eq!(part.content_type().unwrap().ctype(), "message");
        assert!(bytes.windows(16).any(|w| w == b"secret body text"));
        // a notice about withheld recipients never carries the content
        let (_, bytes) = build(
            "relay.test",
            &env,
            CONTENT,
            &[failed(&env)],
            Returned::HeadersOnly,
        )
        .unwrap();
        assert!(!bytes.windows(16).any(|w| w == b"secret body text"));
        assert!(bytes.windows(14).any(|w| w == b"Subject: offer"));
    }

    #[test]
    fn only_the_accounts_own_unsuppressed_senders_are_notified() {
        let policy = crate::policy::Policy::from_toml(
            "p",
            r#"
            [accounts.a]
            from_domains = ["shop.example"]
            [accounts.open]
            "#,
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let lists = crate::consent::Lists::open(dir.path(), 24).unwrap();
        let mut env = original(Some(Ret::Full));
        assert_eq!(may_notify(&policy, Some(&lists), &env), Ok(()));
        env.sender = Some("victim@elsewhere.example".into());
        assert_eq!(
            may_notify(&policy, Some(&lists), &env),
            Err(NoNotice::ForeignSender)
        );
        env.sender = Some("app@mail.shop.example".into());
        assert_eq!(may_notify(&policy, Some(&lists), &env), Ok(()));
        // suppressed like any recipient: a global complaint, an erasure
        for reason in [
            crate::consent::Reason::Complaint,
            crate::consent::Reason::Erasure,
        ] {
            let address = format!("{}@shop.example", reason.as_str());
            lists
                .record_addresses(
                    crate::consent::Kind::Suppression,
                    crate::consent::Scope::Global,
                    crate::consent::Op::Add,
                    reason.bit(),
                    crate::consent::Origin::Operator,
                    std::slice::from_ref(&address),
                )
                .unwrap();
            env.sender = Some(address);
            assert!(matches!(
                may_notify(&policy, Some(&lists), &env),
                Err(NoNotice::Suppressed(_))
            ));
        }
        env.account = "gone".into();
        assert_eq!(
            may_notify(&policy, Some(&lists), &env),
            Err(NoNotice::NoAccount)
        );
        // an account without from_domains (transactional only): any sender, if unsuppressed
        env.account = "open".into();
        env.sender = Some("anyone@anywhere.example".into());
        assert_eq!(may_notify(&policy, Some(&lists), &env), Ok(()));
    }

    /// mail-parser 0.11.9 hits a debug_assert! on some malformed nested message/rfc822
    /// input; the dev profile turns its debug assertions off (Cargo.toml). A DSN returning
    /// such a message in full must build, and parse back without a panic.
    #[test]
    fn malformed_nested_messages_do_not_panic() {
        let nested: &[&[u8]] = &[
            b"Subject: outer\r\nContent-Type: message/rfc822\r\n\r\nContent-Type: message/rfc822\r\n\r\nContent-Type: multipart/mixed; boundary=\"x\"\r\n\r\n--x\r\nContent-Type: message/rfc822\r\n\r\n--x",
            b"Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\nContent-Type: message/rfc822\r\n\r\nContent-Type: multipart/alternative; boundary=a\r\n\r\n--a--\r\n--a\r\n",
            b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!!\r\nContent-Type: message/rfc822\r\n",
            b"Content-Type: multipart/mixed; boundary=\"\"\r\n\r\n--\r\nContent-Type: message/rfc822\r\n\r\n\r\n--\r\n",
        ];
        let env = original(Some(Ret::Full));
        for content in nested {
            let _ = MessageParser::default().parse(content);
            let (_, bytes) = build(
                "relay.test",
                &env,
                content,
                &[failed(&env)],
                Returned::AsAsked,
            )
            .unwrap();
            let parsed = MessageParser::default().parse(&bytes).unwrap();
            assert_eq!(
                parsed.subject(),
                Some("Undelivered Mail Returned to Sender")
            );
        }
    }

    #[test]
    fn never_for_null_senders_or_dsns() {
        let mut env = original(None);
        env.sender = None;
        assert!(
            build(
                "h",
                &env,
                CONTENT,
                &[failed(&original(None))],
                Returned::AsAsked
            )
            .is_none()
        );
        let mut env = original(None);
        env.generated_dsn = true;
        assert!(
            build(
                "h",
                &env,
                CONTENT,
                &[failed(&original(None))],
                Returned::AsAsked
            )
            .is_none()
        );
    }

    #[test]
    fn notify_decides() {
        let mut r = original(None).recipients[0].clone();
        r.notify = Some(Notify::NEVER);
        assert!(!wanted(&r, Action::Failed));
        r.notify = None;
        assert!(wanted(&r, Action::Failed));
        assert!(!wanted(&r, Action::Delayed));
        r.notify = Some(Notify {
            success: true,
            failure: false,
            delay: true,
        });
        assert!(wanted(&r, Action::Relayed) && wanted(&r, Action::Delayed));
    }
}
