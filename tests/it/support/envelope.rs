//! A plain transactional envelope, for the tests, benches and examples that fill a spool
//! directly rather than over SMTP (the examples and benches include this file with
//! `#[path]`).
#![allow(dead_code)] // not every user takes every helper

use optin_relay::smtp::params::BodyType;
use optin_relay::spool::{Envelope, Recipient};

/// A 7-bit transactional message of `account` from `sender` to `recipients`, received now,
/// with no DSN options, list or campaign.
pub fn transactional(
    id: u64,
    account: &str,
    sender: Option<&str>,
    recipients: impl IntoIterator<Item = String>,
) -> Envelope {
    Envelope {
        id,
        received_at: optin_relay::spool::now_ms(),
        account: account.into(),
        sender: sender.map(str::to_string),
        envid: None,
        ret: None,
        body_type: BodyType::SevenBit,
        smtputf8: false,
        eight_bit_content: false,
        generated_dsn: false,
        stream: optin_relay::policy::Stream::Transactional,
        list: None,
        campaign: None,
        recipients: recipients
            .into_iter()
            .map(|address| Recipient {
                address,
                notify: None,
                orcpt: None,
                done: false,
            })
            .collect(),
    }
}
