//! Mail to the relay's return paths (`<prefix>+<token>@<domain>`), where receiving servers
//! send the bounces of mail they first accepted: taken from anyone without AUTH, for that
//! address form only. A client no account knows meets its own limits here: messages per
//! client address and hour (`[bounces] max_per_ip`, at RCPT) and `[bounces] max_size` (at
//! `SIZE=` and during DATA). The message is handled at the end of DATA by
//! [`crate::governance::bounces`]; it is never queued or relayed.

use bytes::Bytes;

use crate::governance::bounces::Outcome;
use crate::smtp::{Address, Refusal};

use super::SessionContext;

/// The token of `to` when it is one of the relay's return paths (genuine or not).
pub(super) fn token_of(ctx: &SessionContext, to: &Address) -> Option<String> {
    ctx.bounces.as_ref()?.token_of(to).map(str::to_string)
}

/// Whether one more message to a return path may come from `client` this hour.
pub(super) fn admit(ctx: &SessionContext, client: std::net::IpAddr) -> bool {
    ctx.bounces.as_ref().is_none_or(|b| b.admit(client))
}

/// Handles a finished message to return paths, durably, before the reply. One that
/// cannot be used is still accepted (kept aside); one too complex to read is refused; only
/// when nothing could be stored is it refused for now, so that the sender tries again.
pub(super) async fn receive(
    ctx: &SessionContext,
    body: Bytes,
    tokens: Vec<String>,
) -> Result<(), Refusal> {
    let Some(bounces) = ctx.bounces.clone() else {
        return Ok(());
    };
    match bounces.receive(body, tokens).await {
        Ok(Outcome::TooComplex) => Err(Refusal::ReportTooComplex),
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::error!(error = %e, "could not store a bounce");
            Err(Refusal::SpoolUnavailable)
        }
    }
}
