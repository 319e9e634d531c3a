//! The consent and suppression verdict for one recipient of one message: pure, from what
//! the lists say about the address.
//!
//! - Bounce, complaint, manual block and erasure stop every stream, in any scope that
//!   applies (global, the account, the list).
//! - An unsubscribe stops marketing only: from the list, or account-wide (or globally).
//! - Marketing also needs consent for the account and list.

use crate::consent::{Reason, Standing};
use crate::smtp::refusal::Withheld;

use crate::envelope::Stream;

/// What `lists check` and the admin API's suppression check tell an operator: `Ok` when
/// `account` may send `stream` mail (to `list`, the one it would use) to an address with
/// this standing, else why not, as they print it (with the reply the relay would give).
pub fn explain(
    account: &super::Account,
    stream: Stream,
    list: Option<&str>,
    standing: &Standing,
    address: &str,
) -> Result<(), String> {
    if !account.allows(stream) {
        return Err(format!(
            "account {} may not send {stream} mail",
            account.name
        ));
    }
    if stream == Stream::Marketing && list.is_none() {
        return Err("marketing mail needs a list".into());
    }
    decide(stream, standing).map_err(|why| format!("550 5.7.1 <{address}> {}", why.text()))
}

/// `Ok` when the recipient may get this stream's mail, else why not (the most serious
/// reason first).
pub fn decide(stream: Stream, standing: &Standing) -> Result<(), Withheld> {
    let all = standing.global | standing.account | standing.list;
    for reason in Reason::from_tags(all) {
        match reason {
            Reason::Erasure | Reason::Manual => return Err(Withheld::Blocked),
            Reason::Complaint => return Err(Withheld::Complained),
            Reason::Bounce => return Err(Withheld::Bounced),
            Reason::Unsubscribe => {}
        }
    }
    if stream == Stream::Transactional {
        return Ok(());
    }
    let unsub = Reason::Unsubscribe.bit();
    if standing.list & unsub != 0 {
        return Err(Withheld::UnsubscribedList);
    }
    if (standing.account | standing.global) & unsub != 0 {
        return Err(Withheld::UnsubscribedAll);
    }
    if !standing.consent {
        return Err(Withheld::NoConsent);
    }
    Ok(())
}

/// What can be decided before the content (and its `X-Optin-*` headers) is seen: a
/// refusal that holds whatever stream and list the message turns out to use. `stream` and
/// `list_fixed` say what the account's policy pins down.
pub fn decide_early(
    stream: Option<Stream>,
    list_fixed: bool,
    standing: &Standing,
) -> Result<(), Withheld> {
    // Reasons that stop every stream hold in any case.
    decide(Stream::Transactional, standing)?;
    match stream {
        Some(Stream::Marketing) => {
            let unsub = Reason::Unsubscribe.bit();
            if (standing.account | standing.global) & unsub != 0 {
                return Err(Withheld::UnsubscribedAll);
            }
            if list_fixed {
                decide(Stream::Marketing, standing)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(consent: bool, global: u8, account: u8, list: u8) -> Standing {
        Standing {
            consent,
            global,
            account,
            list,
        }
    }

    #[test]
    fn rules() {
        let u = Reason::Unsubscribe.bit();
        let b = Reason::Bounce.bit();
        let c = Reason::Complaint.bit();
        let e = Reason::Erasure.bit();
        let m = Reason::Manual.bit();
        use Stream::*;
        assert_eq!(decide(Marketing, &st(true, 0, 0, 0)), Ok(()));
        assert_eq!(
            decide(Marketing, &st(false, 0, 0, 0)),
            Err(Withheld::NoConsent)
        );
        assert_eq!(decide(Transactional, &st(false, 0, 0, 0)), Ok(()));
        assert_eq!(
            decide(Marketing, &st(true, 0, 0, u)),
            Err(Withheld::UnsubscribedList)
        );
        assert_eq!(
            decide(Marketing, &st(true, 0, u, 0)),
            Err(Withheld::UnsubscribedAll)
        );
        assert_eq!(
            decide(Marketing, &st(true, u, 0, 0)),
            Err(Withheld::UnsubscribedAll)
        );
        assert_eq!(decide(Transactional, &st(false, u, u, u)), Ok(()));
        assert_eq!(
            decide(Transactional, &st(true, b, 0, 0)),
            Err(Withheld::Bounced)
        );
        assert_eq!(
            decide(Transactional, &st(true, 0, c, 0)),
            Err(Withheld::Complained)
        );
        assert_eq!(
            decide(Transactional, &st(true, 0, 0, m)),
            Err(Withheld::Blocked)
        );
        assert_eq!(
            decide(Marketing, &st(true, e | u, 0, 0)),
            Err(Withheld::Blocked)
        );
        assert_eq!(
            decide(Marketing, &st(true, b, 0, c)),
            Err(Withheld::Complained)
        );
    }

    #[test]
    fn early_decisions_never_refuse_what_a_header_could_allow() {
        let u = Reason::Unsubscribe.bit();
        use Stream::*;
        // Unknown stream: only the reasons that stop everything.
        assert_eq!(decide_early(None, true, &st(false, 0, u, u)), Ok(()));
        assert_eq!(
            decide_early(None, false, &st(false, Reason::Bounce.bit(), 0, 0)),
            Err(Withheld::Bounced)
        );
        // Marketing, list not fixed: account-wide unsubscribe holds, list matters not.
        assert_eq!(
            decide_early(Some(Marketing), false, &st(false, 0, 0, u)),
            Ok(())
        );
        assert_eq!(
            decide_early(Some(Marketing), false, &st(true, 0, u, 0)),
            Err(Withheld::UnsubscribedAll)
        );
        // Marketing with one list: the full verdict.
        assert_eq!(
            decide_early(Some(Marketing), true, &st(false, 0, 0, 0)),
            Err(Withheld::NoConsent)
        );
        assert_eq!(
            decide_early(Some(Transactional), true, &st(false, 0, u, u)),
            Ok(())
        );
    }
}
