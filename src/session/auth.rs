//! The AUTH exchange (RFC 4954) for PLAIN and LOGIN, only over TLS.
//!
//! Before a password is checked, the failure counters shared by all sessions
//! ([`super::guard`]) may refuse it outright (`454 4.7.0`, no Argon2 run) when the client
//! address or the username has failed too often. Checking runs Argon2 in one of a bounded
//! number of slots off the async threads ([`crate::policy::password`]); when every slot
//! stays busy the answer is `454 4.7.0` too. An unknown username is checked against a dummy
//! hash so that timing does not tell which usernames exist, and every failure waits a delay
//! that grows with the failures of that client and username before answering, which slows
//! guessing without holding more than the one session. Usernames reach the log escaped
//! ([`crate::smtp::text::Escaped`]).

use std::sync::OnceLock;

use tokio::io::{AsyncRead, AsyncWrite};

use super::conn::{Conn, Interrupt};
use super::{Flow, SessionContext, State, refuse};
use crate::policy::password::{self, Busy};
use crate::smtp::line::{Line, LineReader};
use crate::smtp::sasl::{self, Credentials};
use crate::smtp::text::Escaped;
use crate::smtp::{AuthMechanism, Refusal, Reply, Status};

/// Whether AUTH may start now.
pub(super) fn precheck(ctx: &SessionContext, state: &State) -> Result<(), Refusal> {
    if !matches!(state.helo, Some((_, true))) {
        return Err(Refusal::BadSequence("send EHLO first"));
    }
    if state.authenticated.is_some() {
        return Err(Refusal::BadSequence("already authenticated"));
    }
    if state.txn.is_some() {
        return Err(Refusal::BadSequence(
            "AUTH not allowed during a mail transaction",
        ));
    }
    if state.peer.tls.is_none() {
        return Err(Refusal::AuthNeedsTls);
    }
    if !ctx.policy.load().has_users() {
        return Err(Refusal::NotImplemented);
    }
    Ok(())
}

pub(super) async fn exchange<S>(
    ctx: &SessionContext,
    conn: &mut Conn<S>,
    state: &mut State,
    mechanism: AuthMechanism,
    initial: Option<String>,
) -> Result<Flow, Interrupt>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let creds = match read_credentials(ctx, conn, mechanism, initial).await? {
        Ok(c) => c,
        Err(refusal) => return Ok(refuse(ctx, conn, state, refusal)),
    };
    let client = state.peer.remote.ip();
    let username = Escaped(&creds.username);
    if let Err(locked) = ctx.auth_guard.admit(client, &creds.username) {
        crate::metrics::auth_attempt("locked");
        tracing::warn!(%username, %client, by = ?locked, "authentication refused: too many failures");
        // A short pause, so that a locked-out client cannot spin on instant answers.
        tokio::time::sleep(ctx.smtp.auth.failure_delay).await;
        return Ok(refuse(ctx, conn, state, Refusal::AuthLockedOut));
    }
    match check(ctx, &creds).await {
        Err(Busy) => {
            crate::metrics::auth_attempt("busy");
            tracing::warn!(%username, %client, "authentication deferred: every verification slot busy");
            Ok(refuse(ctx, conn, state, Refusal::AuthBusy))
        }
        Ok(Some(account)) => {
            crate::metrics::auth_attempt("ok");
            ctx.auth_guard.succeeded(&creds.username);
            tracing::info!(account = %account, %username, %client, "authenticated");
            state.authenticated = Some((account, creds.username));
            if let Some(slot) = &state.peer.slot {
                slot.trusted();
            }
            conn.reply(&Reply::new(
                235,
                Status::new(2, 7, 0),
                "Authentication successful",
            ));
            Ok(Flow::Continue)
        }
        Ok(None) => {
            crate::metrics::auth_attempt("failed");
            let delay = ctx.auth_guard.failed(client, &creds.username);
            tracing::warn!(%username, %client, delay = ?delay, "authentication failed");
            tokio::time::sleep(delay).await;
            Ok(refuse(ctx, conn, state, Refusal::AuthFailed))
        }
    }
}

/// Runs the mechanism's challenge/response steps. The outer `Result` is for I/O
/// interruptions, the inner one for refusals to answer.
async fn read_credentials<S>(
    ctx: &SessionContext,
    conn: &mut Conn<S>,
    mechanism: AuthMechanism,
    initial: Option<String>,
) -> Result<Result<Credentials, Refusal>, Interrupt>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    match mechanism {
        AuthMechanism::Plain => {
            let response = match initial {
                Some(r) => r,
                None => match prompt(ctx, conn, "").await? {
                    Ok(r) => r,
                    Err(refusal) => return Ok(Err(refusal)),
                },
            };
            Ok(sasl::decode_response(&response).and_then(|raw| sasl::decode_plain(&raw)))
        }
        AuthMechanism::Login => {
            let username = match initial {
                Some(r) => r,
                None => match prompt(ctx, conn, sasl::LOGIN_USERNAME_PROMPT).await? {
                    Ok(r) => r,
                    Err(refusal) => return Ok(Err(refusal)),
                },
            };
            let username =
                match sasl::decode_response(&username).and_then(|u| sasl::decode_login_step(&u)) {
                    Ok(u) => u,
                    Err(refusal) => return Ok(Err(refusal)),
                };
            let password = match prompt(ctx, conn, sasl::LOGIN_PASSWORD_PROMPT).await? {
                Ok(p) => p,
                Err(refusal) => return Ok(Err(refusal)),
            };
            Ok(sasl::decode_response(&password)
                .and_then(|p| sasl::decode_login_step(&p))
                .map(|password| Credentials { username, password }))
        }
    }
}

/// Sends a `334` challenge and reads the client's one-line response.
async fn prompt<S>(
    ctx: &SessionContext,
    conn: &mut Conn<S>,
    challenge: &'static str,
) -> Result<Result<String, Refusal>, Interrupt>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    conn.reply(&Reply::plain(334, challenge));
    let mut lines = LineReader::new(ctx.smtp.max_command_line);
    loop {
        let (used, line) = lines.next(&conn.input);
        let result = match line {
            None => None,
            Some(Line::Command(bytes)) => Some(
                std::str::from_utf8(bytes)
                    .map(str::to_string)
                    .map_err(|_| Refusal::AuthMalformed),
            ),
            Some(Line::TooLong) => Some(Err(Refusal::LineTooLong)),
            Some(Line::BadEnding) => Some(Err(Refusal::BareLineEnding)),
        };
        bytes::Buf::advance(&mut conn.input, used);
        match result {
            Some(r) => return Ok(r),
            None => conn.fill(true).await?,
        }
    }
}

/// The account name when the credentials are right; `Err(Busy)` when no verification
/// slot came free in time.
async fn check(ctx: &SessionContext, creds: &Credentials) -> Result<Option<String>, Busy> {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let policy = ctx.policy.load_full();
    let (account, stored) = match policy.user(&creds.username) {
        Some((account, user)) => (Some(account.name.clone()), user.password_hash.clone()),
        None => (
            None,
            DUMMY
                .get_or_init(|| password::hash_password("no such user"))
                .clone(),
        ),
    };
    let ok = ctx
        .passwords
        .verify(&creds.username, &creds.password, &stored)
        .await?;
    Ok(account.filter(|_| ok))
}
