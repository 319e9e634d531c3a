//! Envelopes built in code (a plain transactional one, or any with [`Builder`]), for the
//! tests, benches and examples that fill a spool directly rather than over SMTP (the
//! examples and benches include this file with `#[path]`).
#![allow(dead_code)] // not every user takes every helper

use optin_relay::envelope::{Envelope, QueueId, Recipient, now_ms};
use optin_relay::smtp::params::Notify;

/// A 7-bit transactional message of `account` from `sender` to `recipients`, received now,
/// with no DSN options, list or campaign.
pub fn transactional(
    id: QueueId,
    account: &str,
    sender: Option<&str>,
    recipients: impl IntoIterator<Item = String>,
) -> Envelope {
    let builder = Builder::new(id, account).sender(sender);
    recipients.into_iter().fold(builder, Builder::rcpt).build()
}

/// Builds an envelope: as [`transactional`] until told otherwise.
pub struct Builder(Envelope);

impl Builder {
    /// A message of `account` received now, from the null sender, to nobody yet.
    pub fn new(id: QueueId, account: &str) -> Builder {
        Builder(Envelope::transactional(id, now_ms(), account, None, []))
    }

    pub fn sender(mut self, sender: Option<&str>) -> Builder {
        self.0.sender = sender.map(str::to_string);
        self
    }

    /// The DSN envelope id (`ENVID`).
    pub fn envid(mut self, envid: Option<&str>) -> Builder {
        self.0.envid = envid.map(str::to_string);
        self
    }

    /// One more recipient, with no DSN options.
    pub fn rcpt(self, address: String) -> Builder {
        self.rcpt_notify(address, None)
    }

    /// One more recipient, with its `NOTIFY`.
    pub fn rcpt_notify(mut self, address: String, notify: Option<Notify>) -> Builder {
        self.0.recipients.push(Recipient {
            address,
            notify,
            orcpt: None,
            done: false,
        });
        self
    }

    pub fn build(self) -> Envelope {
        self.0
    }
}
