//! The end of a message: the framing checks (size, line endings, NUL, loops), the relay's
//! own addresses (unsubscribe, feedback), the account's checks on the content
//! ([`super::checks`], off the async threads), the consent verdict for each recipient, the
//! Received field, storing it durably, the 250, and the hand-over to delivery (with a DSN
//! for recipients the policy withheld).

use super::*;
use crate::envelope::QueueId;

/// Checks received content, stores it durably and answers. The transaction ends either way.
pub(super) async fn finish_message<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &SessionContext,
    conn: &mut Conn<S>,
    state: &mut State,
    report: ContentReport,
    mut body: Vec<u8>,
) -> Flow {
    let txn = state.txn.take().expect("content follows a transaction");
    if let Some(refusal) = framing_refusal(ctx, &txn, &report, &body) {
        if matches!(refusal, Refusal::TooBig(_)) && txn.account.is_none() {
            crate::metrics::untrusted_refused(&refusal);
        }
        crate::metrics::message_refused(&refusal);
        return refuse(ctx, conn, state, refusal);
    }
    let mut txn = txn;
    let taken = match own_mail(ctx, &mut txn, &mut body).await {
        Ok(taken) => taken,
        Err(refusal) => return refuse(ctx, conn, state, refusal),
    };
    if let Some(text) = taken
        && txn.rcpts.is_empty()
    {
        conn.reply(&Reply::new(250, Status::new(2, 0, 0), text));
        return Flow::Continue;
    }
    let (account_name, class) = match message_class(ctx, &txn, &mut body).await {
        Ok(found) => found,
        Err(refusal) => return refuse(ctx, conn, state, refusal),
    };
    let addresses: Vec<&Address> = txn.rcpts.iter().map(|(a, _)| a).collect();
    let mut verdicts = consent::verdicts(ctx, &account_name, &class, &addresses);
    for (v, a) in verdicts.iter_mut().zip(&addresses) {
        if **a == ctx.smtp.postmaster {
            *v = None;
        }
        crate::metrics::policy_verdict(*v);
    }
    if verdicts.iter().all(Option::is_some) {
        let why = verdicts[0].expect("all withheld");
        let refusal = Refusal::AllWithheld(addresses[0].to_string(), why, addresses.len() - 1);
        crate::metrics::message_refused(&refusal);
        return refuse(ctx, conn, state, refusal);
    }
    let id = ctx.spool.next_id();
    let mut content = received_header(ctx, state, &txn, id).into_bytes();
    content.extend_from_slice(&body);
    drop(body);
    let mut envelope = Envelope {
        id,
        received_at: crate::envelope::now_ms(),
        account: account_name,
        sender: txn.sender.map(|a| a.to_string()),
        envid: txn.params.envid,
        ret: txn.params.ret,
        body_type: txn.params.body.unwrap_or(BodyType::SevenBit),
        smtputf8: txn.params.smtputf8,
        eight_bit_content: report.eight_bit,
        generated_dsn: false,
        stream: class.stream,
        list: class.list,
        campaign: class.campaign,
        recipients: txn
            .rcpts
            .into_iter()
            .map(|(address, params)| Recipient {
                address: address.to_string(),
                notify: params.notify,
                orcpt: params
                    .orcpt
                    .map(|o| format!("{};{}", o.addr_type, o.address)),
                done: false,
            })
            .collect(),
    };
    // The withheld recipients leave the envelope; a copy keeps them for the DSN.
    let withheld = consent::split_withheld(&mut envelope, &verdicts);
    let content = Bytes::from(content);
    match ctx.spool.store(&envelope, content.clone()).await {
        Ok(loc) => {
            let id_text = id.to_string();
            tracing::info!(
                id = %id_text,
                account = %envelope.account,
                stream = %envelope.stream,
                recipients = envelope.recipients.len(),
                withheld = withheld.as_ref().map_or(0, |w| w.0.recipients.len()),
                size = content.len(),
                client = %state.peer.remote.ip(),
                "message accepted"
            );
            crate::metrics::message_accepted();
            log_accepted(ctx, &envelope, &content);
            if let Some((original, reasons)) = withheld {
                consent::notify_withheld(ctx, &original, &content, &reasons).await;
            }
            ctx.intake.accepted(envelope, loc, content);
            conn.reply(&Reply::new(
                250,
                Status::new(2, 0, 0),
                format!("OK queued as {id_text}"),
            ));
            Flow::Continue
        }
        Err(e) => {
            tracing::error!(error = %e, "could not store an accepted message");
            crate::metrics::message_refused(&Refusal::SpoolUnavailable);
            refuse(ctx, conn, state, Refusal::SpoolUnavailable)
        }
    }
}

/// An `accepted` line in the delivery log for each recipient the message goes to, with
/// the message's `Message-ID` so it can be looked up by it.
fn log_accepted(ctx: &SessionContext, envelope: &Envelope, content: &[u8]) {
    let Some(log) = &ctx.log else { return };
    let message_id = message_id(content);
    for r in &envelope.recipients {
        log.event(
            crate::privacy::delivery_log::Kind::Accepted,
            &r.address,
            &crate::privacy::delivery_log::Details {
                id: Some(envelope.id),
                account: &envelope.account,
                message_id: message_id.as_deref(),
                ..Default::default()
            },
        );
    }
}

/// The `Message-ID` of a message (without its angle brackets), from its header section
/// (the first 64 KiB at most).
pub(super) fn message_id(content: &[u8]) -> Option<String> {
    let head = &content[..content.len().min(64 << 10)];
    let mut lines = head.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return None;
        }
        if line.len() < 11 || !line[..11].eq_ignore_ascii_case(b"message-id:") {
            continue;
        }
        let mut value = String::from_utf8_lossy(&line[11..]).into_owned();
        while let Some(next) =
            lines.next_if(|l| l.first().is_some_and(|b| *b == b' ' || *b == b'\t'))
        {
            value.push_str(&String::from_utf8_lossy(next));
        }
        return match crate::privacy::delivery_log::Lookup::parse(value.trim()) {
            Some(crate::privacy::delivery_log::Lookup::MessageId(m)) => Some(m),
            _ => None,
        };
    }
    None
}

/// Mail to the relay's own addresses in the transaction: unsubscribes are recorded and a
/// feedback report or a bounce is received. Returns the 250 text when something was taken.
async fn own_mail(
    ctx: &SessionContext,
    txn: &mut Transaction,
    body: &mut Vec<u8>,
) -> Result<Option<&'static str>, Refusal> {
    let mut taken = None;
    if !txn.unsubscribes.is_empty() {
        let all = std::mem::take(&mut txn.unsubscribes);
        unsubscribe::record(ctx, all).await?;
        taken = Some("OK unsubscribe recorded");
    }
    if txn.complaint {
        // A report alone (the usual case) hands its content over without a copy.
        let report = if txn.rcpts.is_empty() && txn.bounce_tokens.is_empty() {
            Bytes::from(std::mem::take(body))
        } else {
            Bytes::copy_from_slice(body)
        };
        complaint::receive(ctx, report).await?;
        taken = Some("OK feedback report received");
    }
    if !txn.bounce_tokens.is_empty() {
        let tokens = std::mem::take(&mut txn.bounce_tokens);
        let content = if txn.rcpts.is_empty() {
            Bytes::from(std::mem::take(body))
        } else {
            Bytes::copy_from_slice(body)
        };
        bounce::receive(ctx, content, tokens).await?;
        taken = Some("OK bounce received");
    }
    Ok(taken)
}

/// The sending account and what the message is (stream, list, campaign) after the
/// account's checks on its content (off the async threads), or why it is refused. A
/// prohibited-content rule that freezes the account does so here.
async fn message_class(
    ctx: &SessionContext,
    txn: &Transaction,
    body: &mut Vec<u8>,
) -> Result<(String, consent::Class), Refusal> {
    match txn.account.clone() {
        Some(account) => {
            let input = checks::Input {
                policy: ctx.policy.load_full(),
                account,
                sender: txn.sender.clone(),
                own_domain: ctx.own_domain.clone(),
                campaigns: ctx.campaigns.clone(),
                body: std::mem::take(body),
            };
            let account = input.account.clone();
            let (checked, verdict) = checks::run(input).await;
            *body = checked;
            match verdict {
                Ok(class) => Ok((account, class)),
                Err(refused) => {
                    if let (Some(category), Some(freezes)) = (refused.freeze, ctx.freezes.clone()) {
                        // `[content] freeze_account`: the account is frozen too (the file
                        // write off the async threads; the refusal does not wait for it).
                        let why = format!("prohibited content: {category}");
                        tokio::task::spawn_blocking(move || {
                            if let Ok(true) = freezes.freeze(&account, &why, "content") {
                                crate::metrics::account_frozen("content");
                            }
                        });
                    }
                    crate::metrics::message_refused(&refused.refusal);
                    Err(refused.refusal)
                }
            }
        }
        // A client no account knows, writing to the postmaster (RCPT let nothing else
        // through): the relay's own mail, transactional, with no account's rules to apply.
        None if txn.postmaster => Ok((RELAY_ACCOUNT.to_string(), consent::Class::relay_own())),
        // Recipients other than the relay's own addresses need an account (RCPT checked).
        None => Err(Refusal::RelayDenied),
    }
}

/// What the framing of the content says against it (size, line endings, NUL, line length,
/// a mail loop), the first thing found; a pure check, counted by the caller.
fn framing_refusal(
    ctx: &SessionContext,
    txn: &Transaction,
    report: &ContentReport,
    body: &[u8],
) -> Option<Refusal> {
    let limit = size_limit(ctx, txn);
    if report.exceeds(limit) {
        Some(Refusal::TooBig(limit))
    } else if report.bare_line_ending {
        Some(Refusal::DataBareLineEnding)
    } else if report.nul {
        Some(Refusal::DataNul)
    } else if report.line_too_long {
        Some(Refusal::DataLineTooLong(ctx.smtp.max_line_length))
    } else {
        let hops = count_received(body);
        (hops > ctx.smtp.max_received_headers).then_some(Refusal::MailLoop(hops))
    }
}

/// Number of `Received:` fields in the header section, for loop detection.
fn count_received(message: &[u8]) -> usize {
    let header_end = memchr::memmem::find(message, b"\r\n\r\n").unwrap_or(message.len());
    let headers = &message[..header_end];
    let mut n = usize::from(headers.len() >= 9 && headers[..9].eq_ignore_ascii_case(b"received:"));
    for i in memchr::memmem::find_iter(headers, b"\r\n") {
        let line = &headers[i + 2..];
        if line.len() >= 9 && line[..9].eq_ignore_ascii_case(b"received:") {
            n += 1;
        }
    }
    n
}

/// RFC 5321 §4.4 trace field, with the RFC 3848 protocol keyword. It names the client's IP
/// and EHLO name (the submitting application, not a recipient) and never a recipient.
fn received_header(ctx: &SessionContext, state: &State, txn: &Transaction, id: QueueId) -> String {
    let (helo, extended) = state
        .helo
        .clone()
        .unwrap_or_else(|| ("unknown".into(), false));
    let mut with = String::from(match (extended, txn.params.smtputf8) {
        (false, _) => "SMTP",
        (true, false) => "ESMTP",
        (true, true) => "UTF8SMTP",
    });
    if extended && state.peer.tls.is_some() {
        with.push('S');
    }
    if extended && state.authenticated.is_some() {
        with.push('A');
    }
    let tls = state
        .peer
        .tls
        .as_ref()
        .map(|t| format!("\r\n\t(using {} with cipher {})", t.protocol, t.cipher))
        .unwrap_or_default();
    let date =
        mail_builder::headers::date::Date::new(crate::envelope::now_ms() as i64 / 1000).to_rfc822();
    let helo: String = helo.chars().filter(|c| !c.is_control()).take(100).collect();
    format!(
        "Received: from {helo} ([{ip}]){tls}\r\n\tby {host} (optin-relay) with {with} id {id};\r\n\t{date}\r\n",
        ip = state.peer.remote.ip(),
        host = ctx.smtp.hostname,
        id = id,
    )
}
