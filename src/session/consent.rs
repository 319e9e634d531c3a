//! Consent and suppression enforcement in a session.
//!
//! At RCPT the relay refuses a recipient right away when the verdict cannot depend on the
//! message: reasons that stop every stream, and — when the account's policy pins the
//! stream (and the list) — the full verdict. Everything else is decided at the end of DATA,
//! once the `X-Optin-Stream`, `X-Optin-List` and `X-Optin-Campaign` headers are known:
//! those headers are read, checked against the account and removed from the content (the
//! envelope keeps what they said). The decisions themselves are in
//! [`crate::policy::verdict`].

use bytes::Bytes;

use crate::consent::key::normalise;
use crate::dsn;
use crate::envelope::Envelope;
use crate::envelope::Stream;
use crate::policy::Account;
use crate::policy::verdict::{decide, decide_early};
use crate::rewrite::headers;
use crate::smtp::Status;
use crate::smtp::refusal::Withheld;
use crate::smtp::{Address, Refusal};

use super::SessionContext;

/// The RCPT-time check.
pub(super) fn check_rcpt(
    ctx: &SessionContext,
    account: &Account,
    to: &Address,
) -> Result<(), Refusal> {
    // An address the lists cannot hold has no entries: nothing to refuse it for yet (a
    // marketing message to it is refused at the end of DATA for want of consent).
    let Ok(normalised) = normalise(to.as_str()) else {
        return Ok(());
    };
    let list = account.fixed_list();
    let standing = ctx
        .lists
        .standing(&account.name, list.map(|l| l.id.as_str()), &normalised);
    let early = decide_early(account.fixed_stream(), list.is_some(), &standing).and_then(|()| {
        let pinned = account.fixed_stream() == Some(Stream::Marketing);
        match list {
            Some(l) if pinned && aged(ctx, &account.name, &l.id, &normalised) => {
                Err(Withheld::ConsentExpired)
            }
            _ => Ok(()),
        }
    });
    early.map_err(|why| {
        crate::metrics::recipient_withheld(why.label(), "rcpt");
        crate::metrics::policy_verdict(Some(why));
        log_suppressed(ctx, &account.name, to.as_str(), why);
        Refusal::RecipientWithheld(to.to_string(), why)
    })
}

/// Whether the consent of `normalised` to `list` is older than the list's
/// `consent_max_age` (since its grant, last confirmation or engagement). A consent the
/// ledger has no record of (imported by the operator) does not age.
fn aged(ctx: &SessionContext, account: &str, list: &str, normalised: &str) -> bool {
    let Some(ledger) = &ctx.ledger else {
        return false;
    };
    let policy = ctx.policy.load();
    let Some(max) = policy
        .account(account)
        .and_then(|a| a.list(list))
        .and_then(|l| l.consent_max_age)
    else {
        return false;
    };
    match ledger.fresh_since(account, list, normalised) {
        Ok(Some(fresh)) => {
            u128::from(crate::envelope::now_ms().saturating_sub(fresh)) > max.as_millis()
        }
        Ok(None) => false,
        Err(e) => {
            tracing::error!(error = %e, "consent ledger unreadable; consent taken as fresh");
            false
        }
    }
}

fn log_suppressed(ctx: &SessionContext, account: &str, address: &str, why: Withheld) {
    if let Some(log) = &ctx.log {
        log.event(
            crate::privacy::delivery_log::Kind::Suppressed,
            address,
            &crate::privacy::delivery_log::Details {
                account,
                reply: Some(why.label()),
                ..Default::default()
            },
        );
    }
}

/// What the message's `X-Optin-*` headers (or the account's defaults) say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Class {
    pub stream: Stream,
    pub list: Option<String>,
    pub campaign: Option<String>,
}

/// The `X-Optin-*` fields of a message and where they are.
#[derive(Debug, Default)]
struct OptinFields {
    stream: Option<String>,
    list: Option<String>,
    campaign: Option<String>,
    /// Octet ranges of every `X-Optin-*` field (with continuation lines).
    ranges: Vec<std::ops::Range<usize>>,
}

/// Reads the header section of `content` (CRLF lines) for `X-Optin-*` fields. The first
/// of each is used; all are removed.
fn scan_headers(content: &[u8]) -> OptinFields {
    let mut out = OptinFields::default();
    let (fields, _) = headers::fields(content);
    for f in fields {
        let name = &content[f.name.clone()];
        if name.len() <= 8 || !name[..8].eq_ignore_ascii_case(b"x-optin-") {
            continue;
        }
        let slot = match name[8..].to_ascii_lowercase().as_slice() {
            b"stream" => Some(&mut out.stream),
            b"list" => Some(&mut out.list),
            b"campaign" => Some(&mut out.campaign),
            _ => None,
        };
        if let Some(slot) = slot
            && slot.is_none()
        {
            *slot = Some(headers::value(content, &f));
        }
        out.ranges.push(f.whole);
    }
    out
}

impl Class {
    /// The relay's own mail (a stranger's message to the postmaster): transactional, no
    /// list, no campaign.
    pub fn relay_own() -> Class {
        Class {
            stream: Stream::Transactional,
            list: None,
            campaign: None,
        }
    }
}

/// Removes the octet `ranges` (sorted, not overlapping) from `content` in one pass: linear
/// however many there are (draining them one by one moved the rest of the message each
/// time, which a message with many such fields turned into minutes of work).
fn remove_ranges(content: &mut Vec<u8>, ranges: &[std::ops::Range<usize>]) {
    if ranges.is_empty() {
        return;
    }
    let mut write = ranges[0].start;
    for (i, range) in ranges.iter().enumerate() {
        let next = ranges.get(i + 1).map_or(content.len(), |r| r.start);
        content.copy_within(range.end..next, write);
        write += next - range.end;
    }
    content.truncate(write);
}

/// Decides the message's stream, list and campaign, checks them against the account, and
/// removes the `X-Optin-*` fields from `content`.
pub(super) fn classify(account: &Account, content: &mut Vec<u8>) -> Result<Class, Refusal> {
    let fields = scan_headers(content);
    remove_ranges(content, &fields.ranges);
    let stream = match &fields.stream {
        Some(v) => Stream::parse(v).ok_or(Refusal::BadStream)?,
        None => account.default_stream,
    };
    if !account.allows(stream) {
        return Err(Refusal::StreamNotAllowed(stream.as_str()));
    }
    let list = match fields.list {
        Some(id) => {
            let id = id.to_ascii_lowercase();
            if account.list(&id).is_none() {
                return Err(Refusal::UnknownList(id));
            }
            Some(id)
        }
        None => account.default_list.clone(),
    };
    if stream == Stream::Marketing && list.is_none() {
        return Err(Refusal::NoList);
    }
    let campaign = match fields.campaign {
        Some(c) if c.is_empty() || c.len() > 128 || !c.bytes().all(|b| b.is_ascii_graphic()) => {
            return Err(Refusal::BadCampaign);
        }
        other => other,
    };
    Ok(Class {
        stream,
        list,
        campaign,
    })
}

/// The verdict for each recipient of a classified message (`None`: may receive it).
pub(super) fn verdicts(
    ctx: &SessionContext,
    account: &str,
    class: &Class,
    recipients: &[&Address],
) -> Vec<Option<Withheld>> {
    recipients
        .iter()
        .map(|to| {
            let Ok(normalised) = normalise(to.as_str()) else {
                // Nothing can be recorded for it, so no consent either.
                return (class.stream == Stream::Marketing).then_some(Withheld::NoConsent);
            };
            let standing = ctx
                .lists
                .standing(account, class.list.as_deref(), &normalised);
            let why = decide(class.stream, &standing).err().or_else(|| {
                let list = class
                    .list
                    .as_deref()
                    .filter(|_| class.stream == Stream::Marketing)?;
                aged(ctx, account, list, &normalised).then_some(Withheld::ConsentExpired)
            });
            if let Some(w) = why {
                crate::metrics::recipient_withheld(w.label(), "data");
                log_suppressed(ctx, account, to.as_str(), w);
            }
            why
        })
        .collect()
}

/// Moves the withheld recipients out of `envelope`. Returns the envelope as it was (for
/// the DSN) and which of its recipients were withheld, why.
pub(super) fn split_withheld(
    envelope: &mut Envelope,
    verdicts: &[Option<Withheld>],
) -> Option<(Envelope, Vec<(usize, Withheld)>)> {
    if verdicts.iter().all(Option::is_none) {
        return None;
    }
    let original = envelope.clone();
    let reasons = verdicts
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.map(|w| (i, w)))
        .collect();
    let mut keep = verdicts.iter().map(Option::is_none);
    envelope
        .recipients
        .retain(|_| keep.next().expect("one verdict per recipient"));
    Some((original, reasons))
}

/// Tells the sender which recipients were dropped and why: a DSN with the header section
/// only, stored and queued like any message — unless the sender is null, asked for no
/// failure notices, or may not get one ([`dsn::may_notify`]: not the account's own
/// address, or suppressed).
pub(super) async fn notify_withheld(
    ctx: &SessionContext,
    original: &Envelope,
    content: &[u8],
    withheld: &[(usize, Withheld)],
) {
    let now = crate::envelope::now_ms();
    let reports: Vec<dsn::Report<'_>> = withheld
        .iter()
        .map(|&(i, why)| (&original.recipients[i], why))
        .filter(|(r, _)| dsn::wanted(r, dsn::Action::Failed))
        .map(|(recipient, why)| dsn::Report {
            recipient,
            action: dsn::Action::Failed,
            status: Status::new(5, 7, 1),
            diagnostic: Some(format!(
                "smtp; 550 5.7.1 <{}> {}",
                recipient.address,
                why.text()
            )),
            remote_mta: None,
            last_attempt: Some(now / 1000),
        })
        .collect();
    if let Err(why) = dsn::may_notify(&ctx.policy.load(), Some(&ctx.lists), original) {
        tracing::info!(
            about = %original.id,
            withheld = withheld.len(),
            why = %why,
            "withheld recipients not reported"
        );
        return;
    }
    // Headers only, whatever RET asked: the content was refused for these recipients.
    let built = dsn::build(
        &ctx.smtp.hostname,
        original,
        content,
        &reports,
        dsn::Returned::HeadersOnly,
    );
    let Some((mut env, message)) = built else {
        tracing::info!(
            about = %original.id,
            withheld = withheld.len(),
            "withheld recipients not reported (null sender or NOTIFY without FAILURE)"
        );
        return;
    };
    env.id = ctx.spool.next_id();
    env.received_at = now;
    let message = Bytes::from(message);
    match ctx.spool.store(&env, message.clone()).await {
        Ok(loc) => {
            crate::metrics::dsn_generated(dsn::Action::Failed.metric_label());
            tracing::info!(
                id = %env.id,
                about = %original.id,
                withheld = withheld.len(),
                "DSN for withheld recipients queued"
            );
            ctx.intake.accepted(env, loc, message);
        }
        Err(e) => tracing::error!(
            error = %e,
            about = %original.id,
            "could not store the DSN for withheld recipients"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_removed_in_one_pass() {
        let mut v = b"0123456789".to_vec();
        remove_ranges(&mut v, &[1..3, 5..6, 9..10]);
        assert_eq!(v, b"034678");
        let mut v = b"abc".to_vec();
        let whole = std::slice::from_ref(&(0..3));
        remove_ranges(&mut v, whole);
        assert!(v.is_empty());
        // 200 000 fields in 4 MB: one pass, not 200 000 moves of the rest of the message
        let mut msg = Vec::new();
        for _ in 0..200_000 {
            msg.extend_from_slice(b"X-Optin-List: a\r\n");
        }
        msg.extend_from_slice(b"Subject: x\r\n\r\nbody\r\n");
        let fields = scan_headers(&msg);
        assert_eq!(fields.ranges.len(), 200_000);
        remove_ranges(&mut msg, &fields.ranges);
        assert_eq!(msg, b"Subject: x\r\n\r\nbody\r\n");
    }

    #[test]
    fn optin_fields_are_found_and_removed() {
        let policy = crate::policy::Policy::from_toml(
            "t",
            r#"
            [accounts.shop]
            streams = ["marketing", "transactional"]
            default_stream = "transactional"
            from_domains = ["shop.example"]
            contact_address = "hello@shop.example"
            postal_address = "1 Main St, Springfield"
            [accounts.shop.lists.news]
            consent_statement = "You subscribed to {list}."
            [accounts.shop.lists.deals]
            consent_statement = "You subscribed to {list}."
            "#,
        )
        .unwrap();
        let account = policy.account("shop").unwrap();
        let mut msg = b"Subject: hi\r\nX-Optin-Stream:  Marketing\r\nx-optin-list: deals\r\nX-Optin-Campaign:\r\n spring-2026\r\nX-Optin-List: news\r\nTo: a@b.example\r\n\r\nX-Optin-List: body text stays\r\n".to_vec();
        let class = classify(account, &mut msg).unwrap();
        assert_eq!(
            class,
            Class {
                stream: Stream::Marketing,
                list: Some("deals".into()),
                campaign: Some("spring-2026".into()),
            }
        );
        assert_eq!(
            msg,
            b"Subject: hi\r\nTo: a@b.example\r\n\r\nX-Optin-List: body text stays\r\n"
        );

        let mut plain = b"Subject: hi\r\n\r\nbody\r\n".to_vec();
        let class = classify(account, &mut plain).unwrap();
        assert_eq!(class.stream, Stream::Transactional);
        assert_eq!(class.list, None);
        assert_eq!(plain, b"Subject: hi\r\n\r\nbody\r\n");

        for (header, want) in [
            ("X-Optin-Stream: bulk", Refusal::BadStream),
            ("X-Optin-List: nope", Refusal::UnknownList("nope".into())),
            ("X-Optin-Stream: marketing", Refusal::NoList),
            ("X-Optin-Campaign: two words", Refusal::BadCampaign),
        ] {
            let mut m = format!("{header}\r\nSubject: x\r\n\r\n").into_bytes();
            assert_eq!(classify(account, &mut m), Err(want), "{header}");
        }
    }
}
