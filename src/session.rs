//! One SMTP server session: the command state machine, generic over any
//! `AsyncRead + AsyncWrite` stream, so tests drive it over in-memory pipes and the listener
//! over TCP or TLS.
//!
//! The session enforces the protocol (command order, limits, STARTTLS and AUTH rules) and
//! who may send; it hands a finished message to the spool, answers 250 only once the spool
//! says the message is on disk, then passes it to delivery through [`Intake`]. STARTTLS
//! returns the stream to the caller, which wraps it in TLS and resumes the session with a
//! fresh state, discarding anything the client pipelined behind the command. All negative
//! replies come from [`Refusal`]; this file never writes reply codes of its own for errors.

mod auth;
mod bounce;
mod checks;
mod complaint;
mod conn;
mod consent;
pub mod guard;
mod identity;
pub mod memory;
mod message;
mod unsubscribe;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::SmtpConfig;
use crate::delivery::Intake;
use crate::envelope::{Envelope, Recipient};
use crate::policy::Policy;
use crate::policy::password::Passwords;
use crate::smtp::data::{BdatReceiver, ContentReport, DataReceiver, DataStatus};
use crate::smtp::ehlo::{Offer, ehlo_reply};
use crate::smtp::line::{Line, LineReader};
use crate::smtp::params::{BodyType, MailParams, RcptParams};
use crate::smtp::{Address, Command, Refusal, Reply, Status, parse_command};
use crate::spool::Spool;
use crate::tls::TlsInfo;
use conn::{Conn, Interrupt};
use message::finish_message;

/// The account name of the relay's own mail: a stranger's message to the postmaster. It
/// cannot be a policy account's name (those are `a-z`, `0-9`, `-`, `_`).
pub const RELAY_ACCOUNT: &str = "(relay)";

/// What every session shares.
pub struct SessionContext {
    pub smtp: SmtpConfig,
    pub policy: Arc<ArcSwap<Policy>>,
    /// Consent and suppression data.
    pub lists: Arc<crate::consent::Lists>,
    /// The consent ledger, which says since when a consent is fresh (lists with
    /// `consent_max_age`); `None`: consent does not age.
    pub ledger: Option<Arc<crate::governance::ledger::Ledger>>,
    /// The relay's own mail domain (bounces, unsubscribe addresses).
    pub own_domain: String,
    /// Records mail to the unsubscribe addresses; `None`: they are not taken.
    pub unsubscribes: Option<Arc<crate::governance::unsubscribe::Unsubscribes>>,
    /// Takes ARF reports mailed to the feedback address; `None`: it is not taken.
    pub complaints: Option<Arc<crate::governance::complaints::Complaints>>,
    /// Takes bounces mailed to the return paths; `None`: they are not taken.
    pub bounces: Option<Arc<crate::governance::bounces::Bounces>>,
    /// The delivery log (accepted and suppressed recipients).
    pub log: Option<crate::privacy::delivery_log::DeliveryLog>,
    /// Frozen accounts, whose submissions are refused; `None`: none are.
    pub freezes: Option<Arc<crate::governance::freeze::Freezes>>,
    /// Campaigns, whose mail is refused once declined; `None`: not checked.
    pub campaigns: Option<Arc<crate::governance::campaign::Campaigns>>,
    /// Verifies AUTH passwords within bounded memory and CPU.
    pub passwords: Arc<Passwords>,
    /// Failed AUTHs per client address and username, across sessions.
    pub auth_guard: Arc<guard::AuthGuard>,
    pub spool: Spool,
    pub intake: Arc<dyn Intake>,
    /// Size limits of mail from clients no account knows, to the relay's own addresses.
    pub own_limits: OwnLimits,
    /// A TLS acceptor exists, so STARTTLS can be offered.
    pub tls_available: bool,
    /// What the content of all transactions being received may hold (`max_data_memory`).
    pub data_memory: Arc<memory::DataMemory>,
    pub shutdown: CancellationToken,
}

/// How large mail from a client no account knows may be: it can only be a feedback report
/// or an unsubscribe request, and neither needs the size an account's mail may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnLimits {
    /// `[complaints] max_report_size`: a transaction with the feedback address.
    pub report: u64,
    /// `[unsubscribe] max_mail_size`: a transaction with only unsubscribe addresses.
    pub unsubscribe: u64,
    /// `[bounces] max_size`: a transaction with a return path.
    pub bounce: u64,
}

/// The listener's hold on one connection: told when the client becomes trusted (it
/// authenticated), so that it no longer counts against the lower connection limit for
/// strangers.
pub trait ConnectionSlot: Send + Sync + std::fmt::Debug {
    fn trusted(&self);
}

/// What survives across STARTTLS: the connection facts, never the protocol state.
#[derive(Debug, Clone)]
pub struct Peer {
    pub remote: SocketAddr,
    pub tls: Option<TlsInfo>,
    pub started: Instant,
    /// The 220 greeting has been sent (it is not repeated after STARTTLS).
    pub greeted: bool,
    /// The listener's connection slot, when it keeps one.
    pub slot: Option<Arc<dyn ConnectionSlot>>,
}

impl Peer {
    pub fn new(remote: SocketAddr) -> Peer {
        Peer {
            remote,
            tls: None,
            started: Instant::now(),
            greeted: false,
            slot: None,
        }
    }
}

/// How a session run ended.
pub enum End<S> {
    /// The conversation is over (QUIT, peer gone, limit reached).
    Closed,
    /// The client asked for STARTTLS and got 220: wrap the stream and call [`run`] again.
    StartTls(S, Peer),
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("connection with {peer}: {source}")]
    Io {
        peer: SocketAddr,
        source: std::io::Error,
    },
}

struct Transaction {
    /// `None`: a client no account knows, who may only write to unsubscribe addresses
    /// and the feedback address.
    account: Option<String>,
    /// Valid unsubscribe tokens among the recipients (recorded at the end of DATA).
    unsubscribes: Vec<crate::rewrite::token::Unsubscribe>,
    /// The feedback address is a recipient (the report is handled at the end of DATA).
    complaint: bool,
    /// Tokens of the return paths among the recipients (the bounce is handled at the end
    /// of DATA).
    bounce_tokens: Vec<String>,
    /// A client no account knows wrote to the postmaster (RFC 5321 §4.5.1).
    postmaster: bool,
    sender: Option<Address>,
    params: MailParams,
    rcpts: Vec<(Address, RcptParams)>,
    /// Content received so far by BDAT.
    bdat: Option<Chunks>,
}

/// A BDAT transaction's content so far, and its share of the content memory.
struct Chunks {
    rx: BdatReceiver,
    body: Vec<u8>,
    held: memory::Held,
    /// The memory budget was spent: the rest is read and dropped, then refused.
    starved: bool,
}

struct State {
    peer: Peer,
    /// EHLO/HELO name, and whether it was EHLO.
    helo: Option<(String, bool)>,
    /// Account and username after a successful AUTH.
    authenticated: Option<(String, String)>,
    txn: Option<Transaction>,
    errors: u32,
}

enum Flow {
    Continue,
    Close,
    StartTls,
}

/// Runs a session until it ends or the client starts TLS.
pub async fn run<S>(ctx: &SessionContext, stream: S, peer: Peer) -> Result<End<S>, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let remote = peer.remote;
    let io_err = |source| SessionError::Io {
        peer: remote,
        source,
    };
    let deadline = peer.started + ctx.smtp.session_timeout;
    let mut conn = Conn::new(
        stream,
        ctx.smtp.idle_timeout,
        deadline,
        ctx.shutdown.clone(),
    );
    let mut state = State {
        peer,
        helo: None,
        authenticated: None,
        txn: None,
        errors: 0,
    };
    if !state.peer.greeted {
        state.peer.greeted = true;
        conn.reply(&Reply::plain(
            220,
            format!("{} ESMTP optin-relay ready", ctx.smtp.hostname),
        ));
    }
    let mut lines = LineReader::new(ctx.smtp.max_command_line);
    loop {
        let (used, line) = lines.next(&conn.input);
        let outcome = match line {
            None => {
                conn.input.advance(used);
                match conn.fill(true).await {
                    Ok(()) => continue,
                    Err(i) => return finish_interrupted(&mut conn, i).await.map_err(io_err),
                }
            }
            Some(Line::TooLong) => Err(Refusal::LineTooLong),
            Some(Line::BadEnding) => Err(Refusal::BareLineEnding),
            Some(Line::Command(bytes)) => {
                crate::metrics::smtp_command(bytes);
                let extended = state.helo.as_ref().is_none_or(|(_, ehlo)| *ehlo);
                parse_command(bytes, extended)
            }
        };
        conn.input.advance(used);
        let flow = match outcome {
            Ok(cmd) => match handle(ctx, &mut conn, &mut state, cmd).await {
                Ok(flow) => flow,
                Err(Interrupt::Eof) => return Ok(End::Closed),
                Err(i) => return finish_interrupted(&mut conn, i).await.map_err(io_err),
            },
            Err(refusal) => refuse(ctx, &mut conn, &mut state, refusal),
        };
        match flow {
            Flow::Continue => {}
            Flow::Close => {
                conn.flush().await.map_err(io_err)?;
                return Ok(End::Closed);
            }
            Flow::StartTls => {
                conn.flush().await.map_err(io_err)?;
                // RFC 3207 §4.2: anything the client sent after STARTTLS is discarded.
                return Ok(End::StartTls(conn.into_stream(), state.peer));
            }
        }
    }
}

/// Ends a session whose wait for input was cut short, sending the 421 when a limit or the
/// shutdown ended it.
async fn finish_interrupted<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    interrupt: Interrupt,
) -> Result<End<S>, std::io::Error> {
    match interrupt {
        Interrupt::Eof => Ok(End::Closed),
        Interrupt::Io(e) => Err(e),
        Interrupt::Stop(refusal) => {
            // Best effort: the peer may be gone already.
            let _ = conn.close_with(&refusal.reply()).await;
            Ok(End::Closed)
        }
    }
}

/// Answers a refusal, counting client errors; too many close the session.
fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &SessionContext,
    conn: &mut Conn<S>,
    state: &mut State,
    refusal: Refusal,
) -> Flow {
    conn.reply(&refusal.reply());
    if refusal.closes_session() {
        return Flow::Close;
    }
    if refusal.counts_as_error() {
        state.errors += 1;
        if state.errors >= ctx.smtp.max_errors {
            conn.reply(&Refusal::TooManyErrors.reply());
            return Flow::Close;
        }
    }
    Flow::Continue
}

async fn handle<S>(
    ctx: &SessionContext,
    conn: &mut Conn<S>,
    state: &mut State,
    cmd: Command,
) -> Result<Flow, Interrupt>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let result: Result<Flow, Refusal> = match cmd {
        Command::Ehlo(name) => {
            state.txn = None;
            let offer = Offer {
                hostname: &ctx.smtp.hostname,
                max_size: ctx.smtp.max_message_size,
                starttls: ctx.tls_available && state.peer.tls.is_none(),
                auth: state.peer.tls.is_some() && ctx.policy.load().has_users(),
            };
            conn.reply(&ehlo_reply(&offer, &name));
            state.helo = Some((name, true));
            Ok(Flow::Continue)
        }
        Command::Helo(name) => {
            state.txn = None;
            conn.reply(&Reply::plain(250, ctx.smtp.hostname.clone()));
            state.helo = Some((name, false));
            Ok(Flow::Continue)
        }
        Command::Mail { from, params } => mail(ctx, conn, state, from, params),
        Command::Rcpt { to, params } => rcpt(ctx, conn, state, to, params),
        Command::Data => return data(ctx, conn, state).await,
        Command::Bdat { size, last } => return bdat(ctx, conn, state, size, last).await,
        Command::Rset => {
            state.txn = None;
            conn.reply(&Reply::new(250, Status::new(2, 0, 0), "OK"));
            Ok(Flow::Continue)
        }
        Command::Noop => {
            conn.reply(&Reply::new(250, Status::new(2, 0, 0), "OK"));
            Ok(Flow::Continue)
        }
        Command::Quit => {
            conn.reply(&Reply::new(
                221,
                Status::new(2, 0, 0),
                format!("{} closing connection", ctx.smtp.hostname),
            ));
            Ok(Flow::Close)
        }
        Command::Vrfy => {
            conn.reply(&Reply::new(
                252,
                Status::new(2, 5, 0),
                "Cannot VRFY user, but will accept message and attempt delivery",
            ));
            Ok(Flow::Continue)
        }
        Command::Expn => Err(Refusal::NotImplemented),
        Command::Help => {
            conn.reply(&Reply::new(
                214,
                Status::new(2, 0, 0),
                "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH",
            ));
            Ok(Flow::Continue)
        }
        Command::StartTls => {
            if state.peer.tls.is_some() {
                Err(Refusal::BadSequence("TLS already active"))
            } else if !ctx.tls_available {
                Err(Refusal::TlsUnavailable)
            } else if state.txn.is_some() {
                Err(Refusal::BadSequence(
                    "STARTTLS not allowed during a mail transaction",
                ))
            } else {
                conn.reply(&Reply::new(220, Status::new(2, 0, 0), "Ready to start TLS"));
                Ok(Flow::StartTls)
            }
        }
        Command::Auth { mechanism, initial } => match auth::precheck(ctx, state) {
            Err(r) => Err(r),
            Ok(()) => return auth::exchange(ctx, conn, state, mechanism, initial).await,
        },
    };
    Ok(match result {
        Ok(flow) => flow,
        Err(refusal) => refuse(ctx, conn, state, refusal),
    })
}

fn mail<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &SessionContext,
    conn: &mut Conn<S>,
    state: &mut State,
    from: Option<Address>,
    params: MailParams,
) -> Result<Flow, Refusal> {
    if state.helo.is_none() {
        return Err(Refusal::BadSequence("send EHLO or HELO first"));
    }
    if state.txn.is_some() {
        return Err(Refusal::BadSequence("nested MAIL command"));
    }
    // Anyone may write to the postmaster and the relay's unsubscribe and feedback
    // addresses; RCPT refuses the rest.
    let account = identify(ctx, state).ok();
    if let (Some(name), Some(freezes)) = (&account, &ctx.freezes)
        && let Some(frozen) = freezes.get(name)
    {
        let refusal = Refusal::AccountFrozen(frozen.reason);
        crate::metrics::message_refused(&refusal);
        crate::metrics::policy_verdict_reason("frozen");
        return Err(refusal);
    }
    let most = if account.is_some() {
        ctx.smtp.max_message_size
    } else {
        ctx.own_limits
            .report
            .max(ctx.own_limits.unsubscribe)
            .max(ctx.own_limits.bounce)
    };
    if let Some(size) = params.size
        && size > most
    {
        let refusal = Refusal::TooBig(most);
        if account.is_none() {
            crate::metrics::untrusted_refused(&refusal);
        }
        return Err(refusal);
    }
    if from.as_ref().is_some_and(|a| !a.is_ascii()) && !params.smtputf8 {
        return Err(Refusal::NeedsSmtpUtf8);
    }
    state.txn = Some(Transaction {
        account,
        unsubscribes: Vec::new(),
        complaint: false,
        bounce_tokens: Vec::new(),
        postmaster: false,
        sender: from,
        params,
        rcpts: Vec::new(),
        bdat: None,
    });
    conn.reply(&Reply::new(250, Status::new(2, 1, 0), "Sender OK"));
    Ok(Flow::Continue)
}

/// The account this client sends as: its AUTH identity, else its network. Never anyone.
fn identify(ctx: &SessionContext, state: &State) -> Result<String, Refusal> {
    if let Some((account, _)) = &state.authenticated {
        return Ok(account.clone());
    }
    let policy = ctx.policy.load();
    if let Some(account) = policy.identify_by_ip(state.peer.remote.ip()) {
        return Ok(account.name.clone());
    }
    // A client that could authenticate here is told to; anyone else is simply denied.
    let can_auth = policy.has_users() && (state.peer.tls.is_some() || ctx.tls_available);
    Err(if can_auth {
        Refusal::AuthRequired
    } else {
        Refusal::RelayDenied
    })
}

fn rcpt<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &SessionContext,
    conn: &mut Conn<S>,
    state: &mut State,
    to: Option<Address>,
    params: RcptParams,
) -> Result<Flow, Refusal> {
    // RFC 5321 §4.5.1: mail to the postmaster is always accepted, from anyone: `<postmaster>`
    // and `postmaster@` the relay's own names go to the configured postmaster.
    let is_postmaster = to.as_ref().is_none_or(|a| is_own_postmaster(ctx, a));
    let to = if is_postmaster {
        ctx.smtp.postmaster.clone()
    } else {
        to.expect("checked above")
    };
    let Some(txn) = state.txn.as_mut() else {
        return Err(Refusal::BadSequence("need MAIL before RCPT"));
    };
    if txn.bdat.is_some() {
        return Err(Refusal::BadSequence("RCPT not allowed after BDAT"));
    }
    if txn.rcpts.len() + txn.unsubscribes.len() >= ctx.smtp.max_recipients {
        return Err(Refusal::TooManyRecipients);
    }
    if !to.is_ascii() && !txn.params.smtputf8 {
        return Err(Refusal::NeedsSmtpUtf8);
    }
    if let Some(checked) = unsubscribe::check(ctx, &to) {
        let u = checked?;
        if txn.account.is_none() && !txn.complaint {
            declared_size_within(txn, ctx.own_limits.unsubscribe)?;
        }
        if !txn.unsubscribes.contains(&u) {
            txn.unsubscribes.push(u);
        }
        conn.reply(&Reply::new(250, Status::new(2, 1, 5), "Recipient OK"));
        return Ok(Flow::Continue);
    }
    if complaint::is_feedback(ctx, &to) {
        if txn.account.is_none() && !txn.complaint {
            admit_stranger_report(ctx, txn, state.peer.remote.ip())?;
        }
        let txn = state.txn.as_mut().expect("checked above");
        txn.complaint = true;
        conn.reply(&Reply::new(250, Status::new(2, 1, 5), "Recipient OK"));
        return Ok(Flow::Continue);
    }
    if let Some(token) = bounce::token_of(ctx, &to) {
        if txn.account.is_none() && !txn.complaint && txn.bounce_tokens.is_empty() {
            let client = state.peer.remote.ip();
            admit_stranger(txn, ctx.own_limits.bounce, || bounce::admit(ctx, client))?;
        }
        let txn = state.txn.as_mut().expect("checked above");
        if !txn.bounce_tokens.contains(&token) {
            txn.bounce_tokens.push(token);
        }
        conn.reply(&Reply::new(250, Status::new(2, 1, 5), "Recipient OK"));
        return Ok(Flow::Continue);
    }
    if is_postmaster && txn.account.is_none() {
        // The postmaster's mailbox is no channel for floods: it shares the report cap.
        admit_stranger_report(ctx, txn, state.peer.remote.ip())?;
        let txn = state.txn.as_mut().expect("checked above");
        txn.postmaster = true;
        if !txn.rcpts.iter().any(|(a, _)| *a == to) {
            txn.rcpts.push((to, params));
        }
        conn.reply(&Reply::new(250, Status::new(2, 1, 5), "Recipient OK"));
        return Ok(Flow::Continue);
    }
    let Some(account_name) = &txn.account else {
        let state = &*state;
        return Err(identify(ctx, state).err().unwrap_or(Refusal::RelayDenied));
    };
    if !is_postmaster {
        let policy = ctx.policy.load();
        if let Some(account) = policy.account(account_name) {
            consent::check_rcpt(ctx, account, &to)?;
        }
    }
    if !txn.rcpts.iter().any(|(a, _)| *a == to) {
        txn.rcpts.push((to, params));
    }
    conn.reply(&Reply::new(250, Status::new(2, 1, 5), "Recipient OK"));
    Ok(Flow::Continue)
}

/// A stranger's report (or mail to the postmaster): within the report size it declared,
/// and within its address's hourly report cap.
fn admit_stranger_report(
    ctx: &SessionContext,
    txn: &Transaction,
    client: std::net::IpAddr,
) -> Result<(), Refusal> {
    admit_stranger(txn, ctx.own_limits.report, || {
        ctx.complaints
            .as_ref()
            .is_none_or(|c| c.admit_report(client))
    })
}

/// A stranger's transaction with one of the relay's own addresses: within the size it
/// declared (`limit`), then within its address's hourly cap (`admit` counts it).
fn admit_stranger(
    txn: &Transaction,
    limit: u64,
    admit: impl FnOnce() -> bool,
) -> Result<(), Refusal> {
    declared_size_within(txn, limit)?;
    if !admit() {
        crate::metrics::untrusted_refused(&Refusal::ReportRate);
        return Err(Refusal::ReportRate);
    }
    Ok(())
}

/// A stranger's transaction that declared (`SIZE=`) more than `limit` is refused now.
fn declared_size_within(txn: &Transaction, limit: u64) -> Result<(), Refusal> {
    match txn.params.size {
        Some(size) if size > limit => {
            let refusal = Refusal::TooBig(limit);
            crate::metrics::untrusted_refused(&refusal);
            Err(refusal)
        }
        _ => Ok(()),
    }
}

/// The largest message this transaction may carry: an account's mail may be
/// `max_message_size`; a stranger's only a report or an unsubscribe request.
fn size_limit(ctx: &SessionContext, txn: &Transaction) -> u64 {
    match (&txn.account, txn.complaint || txn.postmaster) {
        (Some(_), _) => ctx.smtp.max_message_size,
        (None, true) if txn.bounce_tokens.is_empty() => ctx.own_limits.report,
        (None, true) => ctx.own_limits.report.max(ctx.own_limits.bounce),
        (None, false) if !txn.bounce_tokens.is_empty() => ctx.own_limits.bounce,
        (None, false) => ctx.own_limits.unsubscribe,
    }
}

/// `postmaster@` one of the relay's own names (its host name or mail domain).
fn is_own_postmaster(ctx: &SessionContext, to: &Address) -> bool {
    // `"postmaster"` quoted is the same mailbox (RFC 5321 §2.4); quoted pairs unescaped.
    let local = to.local_part();
    let unquoted = match local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
        Some(inner) => inner.replace('\\', ""),
        None => local.to_string(),
    };
    unquoted.eq_ignore_ascii_case("postmaster")
        && (to.domain().eq_ignore_ascii_case(&ctx.smtp.hostname)
            || to.domain().eq_ignore_ascii_case(&ctx.own_domain))
}

fn ready_for_content(state: &State) -> Result<(), Refusal> {
    match &state.txn {
        None => Err(Refusal::BadSequence("need MAIL and RCPT first")),
        Some(t)
            if t.rcpts.is_empty()
                && t.unsubscribes.is_empty()
                && !t.complaint
                && t.bounce_tokens.is_empty() =>
        {
            Err(Refusal::BadSequence("need RCPT first"))
        }
        Some(_) => Ok(()),
    }
}

async fn data<S>(
    ctx: &SessionContext,
    conn: &mut Conn<S>,
    state: &mut State,
) -> Result<Flow, Interrupt>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let ready = ready_for_content(state).and_then(|()| {
        if state.txn.as_ref().is_some_and(|t| t.bdat.is_some()) {
            Err(Refusal::BadSequence("DATA not allowed after BDAT"))
        } else {
            Ok(())
        }
    });
    if let Err(refusal) = ready {
        return Ok(refuse(ctx, conn, state, refusal));
    }
    conn.reply(&Reply::plain(354, "End data with <CR><LF>.<CR><LF>"));
    let txn = state.txn.as_ref().expect("ready_for_content checked");
    let max = size_limit(ctx, txn);
    let mut held = ctx.data_memory.hold(txn.account.is_none(), max);
    let mut rx = DataReceiver::new(max, ctx.smtp.max_line_length);
    // A declared SIZE guides the first buffer, but does not reserve memory by itself.
    let expected = txn
        .params
        .size
        .unwrap_or(16 * 1024)
        .min(max)
        .min(FIRST_BUFFER);
    let mut body = Vec::new();
    let mut starved = !held.make_room(&mut body, expected as usize + 1024);
    loop {
        if !starved && !held.make_room(&mut body, conn.input.len()) {
            starved = true;
        }
        let (used, status) = rx.feed(&conn.input, &mut body);
        conn.input.advance(used);
        if starved {
            body.clear();
        }
        if status == DataStatus::Done {
            break;
        }
        conn.fill(false).await?;
    }
    let report = rx.report();
    if starved && !report.exceeds(max) {
        return Ok(refuse_for_memory(ctx, conn, state));
    }
    let flow = finish_message(ctx, conn, state, report, body).await;
    drop(held);
    Ok(flow)
}

/// The first content buffer holds at most this much; it grows as content arrives.
const FIRST_BUFFER: u64 = 256 * 1024;

fn refuse_for_memory<S>(ctx: &SessionContext, conn: &mut Conn<S>, state: &mut State) -> Flow
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let txn = state.txn.take();
    if txn.is_some_and(|t| t.account.is_none()) {
        crate::metrics::untrusted_refused(&Refusal::DataMemory);
    }
    crate::metrics::message_refused(&Refusal::DataMemory);
    refuse(ctx, conn, state, Refusal::DataMemory)
}

async fn bdat<S>(
    ctx: &SessionContext,
    conn: &mut Conn<S>,
    state: &mut State,
    size: u64,
    last: bool,
) -> Result<Flow, Interrupt>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let ready = ready_for_content(state);
    let max = state
        .txn
        .as_ref()
        .map_or(ctx.smtp.max_message_size, |t| size_limit(ctx, t));
    let mut remaining = size;
    // RFC 3030: the chunk is read in full even when the command is refused.
    while remaining > 0 {
        if conn.input.is_empty() {
            conn.fill(false).await?;
        }
        let take = (remaining as usize).min(conn.input.len());
        let chunk = &conn.input[..take];
        // When refused, the octets are read and dropped.
        if let (Ok(()), Some(txn)) = (&ready, state.txn.as_mut()) {
            let stranger = stranger(txn);
            let chunks = txn
                .bdat
                .get_or_insert_with(|| Chunks::new(ctx, max, stranger));
            chunks.feed(chunk);
        }
        conn.input.advance(take);
        remaining -= take as u64;
    }
    if let Err(refusal) = ready {
        return Ok(refuse(ctx, conn, state, refusal));
    }
    let txn = state.txn.as_mut().expect("ready_for_content checked");
    let stranger = stranger(txn);
    let chunks = txn
        .bdat
        .get_or_insert_with(|| Chunks::new(ctx, max, stranger));
    if chunks.rx.report().exceeds(max) {
        state.txn = None;
        crate::metrics::message_refused(&Refusal::TooBig(max));
        return Ok(refuse(ctx, conn, state, Refusal::TooBig(max)));
    }
    if chunks.starved {
        return Ok(refuse_for_memory(ctx, conn, state));
    }
    if !last {
        conn.reply(&Reply::new(
            250,
            Status::new(2, 0, 0),
            format!("{size} octets received"),
        ));
        return Ok(Flow::Continue);
    }
    let mut chunks = txn.bdat.take().expect("just inserted");
    if !chunks.held.make_room(&mut chunks.body, 2) {
        return Ok(refuse_for_memory(ctx, conn, state));
    }
    let report = chunks.rx.finish(&mut chunks.body);
    let flow = finish_message(ctx, conn, state, report, chunks.body).await;
    drop(chunks.held);
    Ok(flow)
}

fn stranger(txn: &Transaction) -> bool {
    txn.account.is_none()
}

impl Chunks {
    fn new(ctx: &SessionContext, max: u64, stranger: bool) -> Chunks {
        Chunks {
            rx: BdatReceiver::new(max, ctx.smtp.max_line_length),
            body: Vec::new(),
            // BDAT adds the CRLF of a last line without one.
            held: ctx.data_memory.hold(stranger, max + 2),
            starved: false,
        }
    }

    /// Takes (part of) a chunk, within the memory budget.
    fn feed(&mut self, bytes: &[u8]) {
        if !self.starved && !self.held.make_room(&mut self.body, bytes.len()) {
            self.starved = true;
        }
        self.rx.feed(bytes, &mut self.body);
        if self.starved {
            self.body.clear();
        }
    }
}

#[cfg(test)]
mod tests;
