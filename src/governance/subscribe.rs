//! Subscriptions people ask for themselves: a list's form (`POST /s/ACCOUNT/LIST`) and the
//! preference page's "I unsubscribed by mistake". With `subscribe = "double"` the relay
//! writes a confirmation message (the list's subject and text, a signed link that expires
//! after `[subscribe] confirm_ttl`) that the HTTP layer queues as the relay's own
//! transactional mail; the consent is recorded only when the link's page is confirmed
//! with its button, with the proof of both steps. With `subscribe = "single"` the form
//! records the consent at once (it never lifts an unsubscribe: anyone can fill in a form).
//!
//! A form is reachable by anyone, so it is bounded three ways: posts per client address
//! per hour (`max_per_ip`), confirmation messages per address per day (`max_per_address`,
//! kept by keyed fingerprint, never the address) and in all per hour (`max_per_hour`).
//! Whatever happens to an address — sent, already subscribed, suppressed, over its limit —
//! the form's answer is the same, so it tells a stranger nothing about anyone.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address;
use mail_builder::headers::date::Date;
use mail_builder::headers::raw::Raw;

use super::consents::{ConsentError, Consents};
use super::freeze::Freezes;
use super::intake::HourlyCap;
use super::ledger::{How, Proof};
use crate::config::SubscribeConfig;
use crate::consent::{Change, FpMap, Kind, Op, Origin, Reason, Scope};
use crate::envelope::{Envelope, QueueId};
use crate::policy::streams::OptIn;
use crate::policy::{Account, MailingList};
use crate::rewrite::token::{Confirm, TokenKeys};

/// The re-permission message: one question to people whose consent aged.
pub const REPERMISSION_SUBJECT: &str = "Do you want to keep receiving {list}?";
pub const REPERMISSION_TEXT: &str = "You have been receiving {list} from {account} for a while. \
We only write to people who still want our mail.\n\nTo keep receiving it, open this link \
and press the button on the page:\n\n{confirm}\n\nIf you do nothing, we will stop sending it \
to you. This is the only time we ask.";

/// Addresses whose confirmation counts are remembered at most.
const MAX_REMEMBERED: usize = 100_000;
const DAY_MS: u64 = 86_400_000;

/// What a form post led to (the HTTP answer is the same for all but `Subscribed`).
#[derive(Debug)]
pub enum Asked {
    /// A confirmation message to queue: its envelope (id 0) and content.
    Confirmation(Box<Envelope>, Vec<u8>),
    /// Single opt-in: recorded.
    Subscribed,
    /// Nothing sent (already subscribed, suppressed, or over the address's limit).
    Quiet(&'static str),
}

#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("there is no such list")]
    NoList,
    #[error("this list takes no subscriptions here")]
    Closed,
    #[error("{0}")]
    BadAddress(String),
    #[error("too many requests from your address; try again later")]
    TooMany,
    #[error("subscriptions are paused just now; try again later")]
    Paused,
    #[error("your request could not be saved just now; try again in a minute")]
    Unavailable,
}

/// Why a confirmation link does not work.
#[derive(Debug, PartialEq, Eq)]
pub enum BadLink {
    /// Altered, forged, or sealed with a key no longer kept.
    Invalid,
    Expired,
}

pub struct Subscriptions {
    pub consents: Arc<Consents>,
    pub keys: Arc<TokenKeys>,
    pub freezes: Arc<Freezes>,
    /// Links are `<public_url>/s/confirm/TOKEN`.
    pub public_url: String,
    pub hostname: String,
    pub config: SubscribeConfig,
    per_ip: HourlyCap,
    per_hour: Mutex<(Option<Instant>, u32)>,
    per_address: Mutex<FpMap<VecDeque<u64>>>,
}

impl std::fmt::Debug for Subscriptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriptions").finish_non_exhaustive()
    }
}

impl Subscriptions {
    pub fn new(
        consents: Arc<Consents>,
        keys: Arc<TokenKeys>,
        freezes: Arc<Freezes>,
        public_url: String,
        hostname: String,
        config: SubscribeConfig,
    ) -> Subscriptions {
        Subscriptions {
            consents,
            keys,
            freezes,
            public_url,
            hostname,
            per_ip: HourlyCap::new(config.max_per_ip),
            config,
            per_hour: Mutex::new((None, 0)),
            per_address: Mutex::default(),
        }
    }

    /// A form post (or a "subscribed by mistake") for `list` of `account` (blocking: a
    /// single opt-in records at once). `reconfirm`: the person answers a re-permission.
    pub fn ask(
        &self,
        account: &str,
        list: &str,
        address: &str,
        client: IpAddr,
        user_agent: &str,
        from_form: bool,
    ) -> Result<Asked, Refused> {
        let policy = self.consents.policy.load();
        let acc = policy.account(account).ok_or(Refused::NoList)?;
        let l = acc.list(list).ok_or(Refused::NoList)?;
        // The preference page may ask for a fresh confirmation of any list the person
        // was on; a form only where the list has one.
        if from_form && l.subscribe == OptIn::Off {
            return Err(Refused::Closed);
        }
        if !self.per_ip.admit(client) {
            return Err(Refused::TooMany);
        }
        let address = crate::consent::key::normalise(address)
            .map_err(|e| Refused::BadAddress(format!("That is not an e-mail address ({e}).")))?;
        if self.freezes.get(account).is_some() {
            return Err(Refused::Paused);
        }
        let st = self.consents.lists.standing(account, Some(list), &address);
        let unsubscribed = (st.list | st.account) & Reason::Unsubscribe.bit() != 0;
        let blocked =
            Reason::from_tags(st.global | st.account | st.list).any(Reason::stops_transactional);
        if blocked {
            return Ok(Asked::Quiet("suppressed"));
        }
        if st.consent && !unsubscribed {
            return Ok(Asked::Quiet("already subscribed"));
        }
        let ip = client.to_string();
        if from_form && l.subscribe == OptIn::Single {
            let mut proof = Proof::new(address, How::Form, "subscription form");
            proof.ip = Some(ip);
            proof.user_agent = Some(crate::rewrite::token::truncate(user_agent, 200).to_string());
            self.consents
                .grant(account, list, vec![proof], Origin::Account)
                .map_err(|e| {
                    tracing::error!(error = %e, "a single opt-in could not be recorded");
                    Refused::Unavailable
                })?;
            return Ok(Asked::Subscribed);
        }
        if !self.admit_address(&address) {
            return Ok(Asked::Quiet("over the address's limit"));
        }
        if !self.admit_hour() {
            return Err(Refused::TooMany);
        }
        let confirm = Confirm {
            account: account.to_string(),
            list: list.to_string(),
            asked_ms: crate::envelope::now_ms(),
            ip,
            user_agent: user_agent.to_string(),
            reconfirm: !from_form && st.consent && !unsubscribed,
            address,
        };
        let (envelope, content) =
            self.confirmation(acc, l, &confirm, &l.confirm_subject, &l.confirm_text);
        Ok(Asked::Confirmation(Box::new(envelope), content))
    }

    /// The re-permission message to `address` (normalised), whose consent to `list` aged:
    /// one question, a link whose button keeps the consent (`How::Reconfirmed`). `None`
    /// when the address may not get the account's mail at all any more.
    pub fn repermission(
        &self,
        account: &str,
        list: &str,
        address: String,
    ) -> Option<(Envelope, Vec<u8>)> {
        let policy = self.consents.policy.load();
        let acc = policy.account(account)?;
        let l = acc.list(list)?;
        let st = self.consents.lists.standing(account, Some(list), &address);
        let unsubscribed = (st.list | st.account | st.global) & Reason::Unsubscribe.bit() != 0;
        let blocked =
            Reason::from_tags(st.global | st.account | st.list).any(Reason::stops_transactional);
        if blocked || unsubscribed || !st.consent {
            return None;
        }
        let confirm = Confirm {
            account: account.to_string(),
            list: list.to_string(),
            asked_ms: crate::envelope::now_ms(),
            ip: String::new(),
            user_agent: String::new(),
            reconfirm: true,
            address,
        };
        Some(self.confirmation(acc, l, &confirm, REPERMISSION_SUBJECT, REPERMISSION_TEXT))
    }

    /// Counts one confirmation to `address` if it is under its daily limit.
    fn admit_address(&self, address: &str) -> bool {
        let fp =
            self.consents
                .lists
                .secret()
                .fingerprint(Kind::Suppression, Scope::Global, address);
        let now = crate::envelope::now_ms();
        let mut seen = self.per_address.lock().expect("per-address lock");
        if seen.len() >= MAX_REMEMBERED && !seen.contains_key(&fp) {
            seen.retain(|_, times| times.back().is_some_and(|&t| now - t < DAY_MS));
            if seen.len() >= MAX_REMEMBERED {
                return false;
            }
        }
        let times = seen.entry(fp).or_default();
        while times
            .front()
            .is_some_and(|&t| now.saturating_sub(t) >= DAY_MS)
        {
            times.pop_front();
        }
        if times.len() >= self.config.max_per_address as usize {
            return false;
        }
        times.push_back(now);
        true
    }

    fn admit_hour(&self) -> bool {
        let mut w = self.per_hour.lock().expect("per-hour lock");
        if w.0.is_none_or(|t| t.elapsed().as_secs() >= 3600) {
            *w = (Some(Instant::now()), 0);
        }
        if w.1 >= self.config.max_per_hour {
            return false;
        }
        w.1 += 1;
        true
    }

    /// The confirmation message for `c`: from the account's contact address to the
    /// person, the list's subject and text with the link.
    fn confirmation(
        &self,
        acc: &Account,
        l: &MailingList,
        c: &Confirm,
        subject: &str,
        text: &str,
    ) -> (Envelope, Vec<u8>) {
        let link = format!(
            "{}/s/confirm/{}",
            self.public_url,
            self.keys.seal_confirm(c)
        );
        let fill = |t: &str| {
            t.replace("{list}", &l.name)
                .replace("{account}", &acc.sender.display_name)
                .replace("{confirm}", &link)
        };
        let from = acc
            .sender
            .contact_address
            .clone()
            .unwrap_or_else(|| format!("no-reply@{}", self.hostname));
        let text = fill(text).replace("\r\n", "\n").replace('\n', "\r\n");
        let message = MessageBuilder::new()
            .from(Address::new_address(
                Some(acc.sender.display_name.as_str()),
                from,
            ))
            .to(Address::new_address(None::<&str>, c.address.clone()))
            .subject(fill(subject))
            .date(Date::now())
            .message_id(format!(
                "confirm.{:016x}@{}",
                rand::random::<u64>(),
                self.hostname
            ))
            .header("Auto-Submitted", Raw::new("auto-generated"))
            .text_body(text)
            .write_to_vec()
            .expect("writing to memory");
        let mut envelope = Envelope::relay_notice(
            QueueId(0),
            crate::envelope::now_ms(),
            &acc.name,
            c.address.clone(),
            &message,
        );
        if !message.is_ascii() {
            envelope.body_type = crate::smtp::params::BodyType::EightBitMime;
        }
        (envelope, message)
    }

    /// What a confirmation link says, if it is genuine and not expired.
    pub fn open(&self, token: &str) -> Result<Confirm, BadLink> {
        let c = self
            .keys
            .open_confirm(token)
            .map_err(|_| BadLink::Invalid)?;
        let age = crate::envelope::now_ms().saturating_sub(c.asked_ms);
        if u128::from(age) > self.config.confirm_ttl.as_millis() {
            return Err(BadLink::Expired);
        }
        Ok(c)
    }

    /// Records the consent a confirmation link's button confirmed (blocking): the proof
    /// keeps the form's request and the confirming one; an unsubscribe from this list (or
    /// from the whole account, which becomes one from each other list) is lifted, since
    /// the person asked anew. Bounces, complaints and blocks stay.
    pub fn confirm(
        &self,
        c: &Confirm,
        client: IpAddr,
        user_agent: &str,
    ) -> Result<(), ConsentError> {
        let how = if c.reconfirm {
            How::Reconfirmed
        } else {
            How::DoubleOptIn
        };
        let mut proof = Proof::new(
            c.address.clone(),
            how,
            format!(
                "confirmed from {client} ({})",
                crate::rewrite::token::truncate(user_agent, 200)
            ),
        );
        proof.ip = (!c.ip.is_empty()).then(|| c.ip.clone());
        proof.user_agent = (!c.user_agent.is_empty()).then(|| c.user_agent.clone());
        proof.asked_ms = Some(c.asked_ms);
        self.consents
            .grant(&c.account, &c.list, vec![proof], Origin::Account)?;
        self.lift_unsubscribes(c)
    }

    fn lift_unsubscribes(&self, c: &Confirm) -> Result<(), ConsentError> {
        let lists = &self.consents.lists;
        let st = lists.standing(&c.account, Some(&c.list), &c.address);
        let bit = Reason::Unsubscribe.bit();
        let secret = lists.secret();
        let time_ms = crate::envelope::now_ms();
        let change = |op, scope| Change {
            op,
            fp: secret.fingerprint(Kind::Suppression, scope, &c.address),
            tags: bit,
            origin: Origin::Account,
            time_ms,
            stamp: 0,
            remote: false,
        };
        let mut changes = Vec::new();
        if st.list & bit != 0 {
            changes.push(change(Op::Remove, Scope::List(&c.account, &c.list)));
        }
        let policy = self.consents.policy.load();
        if st.account & bit != 0 {
            changes.push(change(Op::Remove, Scope::Account(&c.account)));
            let others = policy
                .account(&c.account)
                .map(|a| {
                    a.lists
                        .iter()
                        .filter(|l| l.id != c.list)
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            for l in others {
                changes.push(change(Op::Add, Scope::List(&c.account, &l.id)));
            }
        }
        if !changes.is_empty() {
            lists.record(&changes)?;
        }
        Ok(())
    }
}
