//! Mail to `unsubscribe+TOKEN@<mail_domain>` (the mailto link of List-Unsubscribe): taken
//! from anyone without AUTH, for that one local domain only — every other recipient still
//! needs an identified account, so this is no open relay. The token is checked at RCPT
//! (a bad one is refused there); the unsubscribe is recorded at the end of DATA, and the
//! message itself is not kept.

use crate::rewrite::token::Unsubscribe;
use crate::smtp::{Address, Refusal};

use super::SessionContext;

const PREFIX: &str = "unsubscribe+";

/// The token of an unsubscribe address of this relay.
pub(super) fn token_of<'a>(to: &'a Address, own_domain: &str) -> Option<&'a str> {
    let local = to.local_part();
    if !to.domain().eq_ignore_ascii_case(own_domain)
        || local.len() <= PREFIX.len()
        || !local[..PREFIX.len()].eq_ignore_ascii_case(PREFIX)
    {
        return None;
    }
    Some(&local[PREFIX.len()..])
}

/// The RCPT check: `None` when `to` is not an unsubscribe address.
pub(super) fn check(ctx: &SessionContext, to: &Address) -> Option<Result<Unsubscribe, Refusal>> {
    let unsubscribes = ctx.unsubscribes.as_ref()?;
    let token = token_of(to, &ctx.own_domain)?;
    Some(
        unsubscribes
            .keys
            .open(token)
            .map_err(|_| Refusal::UnknownUnsubscribe),
    )
}

/// Records the unsubscribes of a finished message (durably, before the reply).
pub(super) async fn record(ctx: &SessionContext, all: Vec<Unsubscribe>) -> Result<(), Refusal> {
    let Some(unsubscribes) = ctx.unsubscribes.clone() else {
        return Ok(());
    };
    let done = tokio::task::spawn_blocking(move || {
        all.iter().try_for_each(|u| {
            unsubscribes
                .record(u, false, crate::governance::unsubscribe::Via::Mail)
                .map(|_| ())
        })
    })
    .await;
    match done {
        Ok(Ok(())) => Ok(()),
        _ => Err(Refusal::SpoolUnavailable),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsubscribe_addresses() {
        let a = Address::parse("Unsubscribe+AbC-_1@Relay.Test").unwrap();
        assert_eq!(token_of(&a, "relay.test"), Some("AbC-_1"));
        for other in [
            "unsubscribe+abc@other.test",
            "unsubscribe@relay.test",
            "unsubscribe+@relay.test",
            "someone@relay.test",
        ] {
            let a = Address::parse(other).unwrap();
            assert_eq!(token_of(&a, "relay.test"), None, "{other}");
        }
    }
}
