//! What the scheduler keeps in memory per queued message, kept small: a large deferred
//! queue (a million messages waiting for their retry) must fit in little RAM, and so must
//! a backlog of a million messages coming due at once.
//!
//! A message is normally *cold*: only its spool location, account, campaign and flags, and
//! each recipient's retry state, domain and address hash are in memory (what dispatching
//! and the admin API need) — about 210 bytes for a one-recipient message, counting the map
//! and the timer. Dispatching needs no more; the worker that sends a job reads envelope
//! and content from the spool when its connection is ready (see `budget.rs`). A message is
//! *hot* — its envelope in memory — only while an attempt's results are being collected
//! (the DSN lines of a message whose recipients went several ways) or an operator's action
//! that needs the envelope (erase, bounce) is applied.

use std::sync::Arc;
use std::time::Duration;

use crate::envelope::Envelope;
use crate::smtp::reply::Status;
use crate::spool::Location;

/// Unix milliseconds that advance with tokio's clock (see the module doc of
/// [`super`]).
pub(super) struct Clock {
    wall: u64,
    start: tokio::time::Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            wall: crate::envelope::now_ms(),
            start: tokio::time::Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.wall + self.start.elapsed().as_millis() as u64
    }

    pub fn instant_at(&self, ms: u64) -> tokio::time::Instant {
        self.start + Duration::from_millis(ms.saturating_sub(self.wall))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Progress {
    Waiting { due: u64 },
    InFlight,
    Done,
}

/// One recipient's delivery state, in 24 bytes.
pub(super) struct Rcpt {
    /// When `state` is waiting: unix milliseconds when it is due.
    due: u64,
    /// 32 bits of the address's keyed hash: finds the candidates for an erasure without
    /// reading every envelope back (a match is confirmed on the envelope).
    pub addr_hash: u32,
    /// The recipient's routing domain ([`Names`] id), for the queue by site.
    pub domain: u32,
    pub attempts: u16,
    pub delay_notified: bool,
    /// Held for its campaign's verdict (not part of the canary); fits in the padding.
    pub held: bool,
    state: u8,
}

const WAITING: u8 = 0;
const IN_FLIGHT: u8 = 1;
const DONE: u8 = 2;

impl Rcpt {
    pub fn new(status: Progress, attempts: u16, delay_notified: bool) -> Rcpt {
        let mut r = Rcpt {
            due: 0,
            addr_hash: 0,
            domain: 0,
            attempts,
            delay_notified,
            held: false,
            state: DONE,
        };
        r.set(status);
        r
    }

    pub fn status(&self) -> Progress {
        match self.state {
            WAITING => Progress::Waiting { due: self.due },
            IN_FLIGHT => Progress::InFlight,
            _ => Progress::Done,
        }
    }

    pub fn set(&mut self, status: Progress) {
        match status {
            Progress::Waiting { due } => {
                self.state = WAITING;
                self.due = due;
            }
            Progress::InFlight => self.state = IN_FLIGHT,
            Progress::Done => self.state = DONE,
        }
    }
}

/// The envelope and what goes with it while a message's results are being collected.
pub(super) struct Hot {
    pub env: Arc<Envelope>,
    /// DSN lines collected until no recipient is in flight, so that a message whose
    /// recipients fail on several routes produces one DSN, not one per route.
    pub notices: Notices,
}

pub(super) enum Residence {
    /// Only the state below is in memory.
    Cold,
    /// The envelope is being read back from the spool.
    Loading,
    Hot(Box<Hot>),
}

impl Residence {
    /// The DSN lines of a message being worked on (which is always hot).
    pub fn notices(&mut self) -> &mut Notices {
        match self {
            Residence::Hot(h) => &mut h.notices,
            _ => unreachable!("a message being worked on is in memory"),
        }
    }
}

/// A message's recipients: the common single recipient inline, so that a queued
/// one-recipient message makes no allocation of its own (a million small allocations would
/// also scatter over the heap and keep it from shrinking).
pub(super) enum Rcpts {
    One(Rcpt),
    Many(Box<[Rcpt]>),
}

impl FromIterator<Rcpt> for Rcpts {
    fn from_iter<I: IntoIterator<Item = Rcpt>>(iter: I) -> Rcpts {
        let mut all: Vec<Rcpt> = iter.into_iter().collect();
        if all.len() == 1 {
            Rcpts::One(all.pop().expect("one"))
        } else {
            Rcpts::Many(all.into_boxed_slice())
        }
    }
}

impl std::ops::Deref for Rcpts {
    type Target = [Rcpt];
    fn deref(&self) -> &[Rcpt] {
        match self {
            Rcpts::One(r) => std::slice::from_ref(r),
            Rcpts::Many(all) => all,
        }
    }
}

impl std::ops::DerefMut for Rcpts {
    fn deref_mut(&mut self) -> &mut [Rcpt] {
        match self {
            Rcpts::One(r) => std::slice::from_mut(r),
            Rcpts::Many(all) => all,
        }
    }
}

pub(super) struct Entry {
    pub loc: Location,
    pub rcpts: Rcpts,
    pub residence: Residence,
    /// The account ([`Names`] id).
    pub account: u32,
    /// Marketing mail (held while its account is frozen).
    pub marketing: bool,
    /// A report this relay made (DSN, campaign report): never held.
    pub report: bool,
    /// Unix seconds when the message was accepted.
    pub received_s: u32,
    /// The campaign ([`Names`] id of its registry key), or [`NO_CAMPAIGN`]. Which of its
    /// recipients wait for the campaign's verdict is [`Rcpt::held`].
    pub campaign: u32,
    /// Held by an operator (`queue hold`) until released.
    pub operator_hold: bool,
}

pub(super) const NO_CAMPAIGN: u32 = u32::MAX;

impl Entry {
    pub fn hot(&mut self) -> Option<&mut Hot> {
        match &mut self.residence {
            Residence::Hot(h) => Some(h),
            _ => None,
        }
    }

    pub fn env(&self) -> Option<&Arc<Envelope>> {
        match &self.residence {
            Residence::Hot(h) => Some(&h.env),
            _ => None,
        }
    }

    /// The earliest time a waiting recipient is due; with `skip_held`, recipients held for
    /// their campaign's verdict do not count (they wait for it, not for a time).
    pub fn next_due(&self, skip_held: bool) -> Option<u64> {
        self.rcpts
            .iter()
            .filter(|r| !(skip_held && r.held))
            .filter_map(|r| match r.status() {
                Progress::Waiting { due } => Some(due),
                _ => None,
            })
            .min()
    }

    /// Whether any open recipient is held for the campaign's verdict.
    pub fn campaign_holds(&self) -> bool {
        self.rcpts
            .iter()
            .any(|r| r.held && r.status() != Progress::Done)
    }

    pub fn in_flight(&self) -> bool {
        self.rcpts.iter().any(|r| r.status() == Progress::InFlight)
    }
}

/// Account names and recipient domains as small numbers, so queued messages need not
/// carry strings. Names are never forgotten (their number is small: accounts, and the
/// domains mail went to).
#[derive(Default)]
pub(super) struct Names {
    names: Vec<Arc<str>>,
    ids: std::collections::HashMap<Arc<str>, u32>,
}

impl Names {
    pub fn id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        let name: Arc<str> = Arc::from(name);
        self.names.push(name.clone());
        self.ids.insert(name, id);
        id
    }

    pub fn find(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }

    pub fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or("", |n| n)
    }
}

/// One recipient's line in a DSN still to be sent.
pub(super) struct Notice {
    pub rcpt: usize,
    pub status: Status,
    pub diagnostic: Option<String>,
    pub remote: Option<String>,
}

#[derive(Default)]
pub(super) struct Notices {
    pub failed: Vec<Notice>,
    pub delayed: Vec<Notice>,
    pub relayed: Vec<Notice>,
}

impl Notices {
    pub fn is_empty(&self) -> bool {
        self.failed.is_empty() && self.delayed.is_empty() && self.relayed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_stay_small() {
        assert_eq!(std::mem::size_of::<Rcpt>(), 24);
        assert!(
            std::mem::size_of::<Entry>() <= 88,
            "{}",
            std::mem::size_of::<Entry>()
        );
    }

    #[test]
    fn recipient_states_round_trip() {
        for p in [
            Progress::Waiting { due: 42 },
            Progress::InFlight,
            Progress::Done,
        ] {
            assert_eq!(Rcpt::new(p, 3, true).status(), p);
        }
    }
}
