//! The AUTH exchange (RFC 4954) for PLAIN and LOGIN, only over TLS.
//!
//! Checking a password runs Argon2 off the async threads. An unknown username is checked
//! against a dummy hash so that timing does not tell which usernames exist, and every
//! failure waits `auth_failure_delay` before answering, which slows guessing without
//! holding more than the one session.

use std::sync::OnceLock;

use tokio::io::{AsyncRead, AsyncWrite};

use super::conn::{Conn, Interrupt};
use super::{Flow, SessionContext, State, refuse};
use crate::policy::password;
use crate::smtp::line::{Line, LineReader};
use crate::smtp::sasl::{self, Credentials};
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
    match check(ctx, &creds).await {
        Some(account) => {
            tracing::info!(
                account = %account,
                username = %creds.username,
                client = %state.peer.remote.ip(),
                "authenticated"
            );
            state.authenticated = Some((account, creds.username));
            conn.reply(&Reply::new(
                235,
                Status::new(2, 7, 0),
                "Authentication successful",
            ));
            Ok(Flow::Continue)
        }
        None => {
            tracing::warn!(
                username = %creds.username,
                client = %state.peer.remote.ip(),
                "authentication failed"
            );
            tokio::time::sleep(ctx.smtp.auth_failure_delay).await;
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

/// The account name when the credentials are right.
async fn check(ctx: &SessionContext, creds: &Credentials) -> Option<String> {
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
    let cache = ctx.passwords.clone();
    let (username, pw) = (creds.username.clone(), creds.password.clone());
    let ok = tokio::task::spawn_blocking(move || cache.verify(&username, &pw, &stored))
        .await
        .unwrap_or(false);
    account.filter(|_| ok)
}
