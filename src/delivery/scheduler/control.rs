//! The operator's hold on the queue (admin API and CLI): a summary by site and account,
//! message inspection, retry now, return (bounce) or delete a message, drop the mail queued
//! to an erased address, and release an unfrozen account's held mail.
//!
//! Commands reach the scheduler through its event channel and are answered on a oneshot,
//! so they see the queue exactly as delivery does, with no lock. An action on a message
//! whose envelope is not in memory (a cold message, see [`super::queue`]) is remembered and
//! applied once the envelope has been read back, before anything else happens to it.

use std::collections::HashMap;

use serde::Serialize;
use tokio::sync::oneshot;

use super::outcome::{Attempt, LocalRefusal};
use super::queue::Progress;
use super::route::JobReport;
use super::{Delivery, Event, Residence, Scheduler};
use crate::envelope::QueueId;
use crate::governance::campaign::{Campaign, Stage};
use crate::spool::{self, RcptEvent};

pub use super::operator::{Bulk, Filter, Shape, ShapeRow};

/// What the operator does to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Every waiting recipient is tried now.
    Retry,
    /// Every waiting recipient fails with a DSN to the sender.
    Bounce,
    /// Every waiting recipient is dropped, without a DSN.
    Delete,
    /// The waiting recipients with this address are dropped, without a DSN.
    Erase(String),
    /// Delivery leaves the message alone until it is released (kept across restarts).
    Hold,
    /// A held message goes again.
    Release,
}

pub(in crate::delivery) enum Command {
    Summary(oneshot::Sender<QueueSummary>),
    List {
        account: Option<String>,
        limit: usize,
        /// Only messages after this one (the cursor of the previous page).
        after: Option<QueueId>,
        reply: oneshot::Sender<Page>,
    },
    Bulk {
        filter: Filter,
        what: Bulk,
        reply: oneshot::Sender<usize>,
    },
    Shape(oneshot::Sender<Shape>),
    Show {
        id: QueueId,
        reply: oneshot::Sender<Option<MessageState>>,
    },
    Act {
        id: QueueId,
        action: Action,
        reply: oneshot::Sender<Result<usize, ControlError>>,
    },
    Erase {
        address: String,
        reply: oneshot::Sender<usize>,
    },
    /// An account was unfrozen: its held mail goes.
    Release {
        account: String,
    },
    /// A campaign had its verdict (by an admin): its held mail goes or is removed.
    Verdict {
        key: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("no message {0} in the queue")]
    NoSuchMessage(String),
    #[error("message {0} is held by an operator: queue release it first")]
    Held(String),
    #[error("the relay is shutting down")]
    Stopped,
}

#[derive(Debug, Clone, Serialize)]
pub struct QueueSummary {
    pub messages: usize,
    /// Recipients not yet delivered or bounced.
    pub recipients: usize,
    /// Recipients held: their account is frozen, or they wait for a campaign's verdict.
    pub held: usize,
    /// The busiest sites first; the rest summed as `other`.
    pub by_site: Vec<SiteQueue>,
    pub by_account: Vec<AccountQueue>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SiteQueue {
    /// The site's MX hosts, `smarthost`, or `unresolved` (domains not looked up yet).
    pub site: String,
    pub recipients: usize,
    /// Age of the oldest message with a recipient here, in seconds.
    pub oldest_s: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AccountQueue {
    pub account: String,
    pub messages: usize,
    pub recipients: usize,
    pub held: usize,
}

/// A page of the queue list: its messages, how many match in all, and the cursor of the
/// next page (`None`: this is the last).
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    pub messages: Vec<MessageState>,
    pub total: usize,
    pub next_after: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MessageState {
    /// The queue id (16 hex digits).
    pub id: String,
    pub account: String,
    pub marketing: bool,
    pub age_s: u64,
    /// Some recipient is held: the account is frozen, or the campaign's canary is out.
    pub held: bool,
    /// Why it is held: `operator` (`queue hold`), `account_frozen`, or `campaign_canary`
    /// (its recipients beyond the canary wait for the verdict); `None`: not held.
    pub hold: Option<&'static str>,
    /// The campaign it belongs to, if any.
    pub campaign: Option<String>,
    pub recipients: Vec<RcptState>,
    #[serde(skip)]
    pub loc: spool::Location,
}

#[derive(Debug, Clone, Serialize)]
pub struct RcptState {
    pub index: usize,
    pub domain: String,
    /// `waiting`, `in_flight` or `done`.
    pub status: &'static str,
    /// Seconds until the next attempt (0: due), for waiting recipients.
    pub next_attempt_in_s: Option<u64>,
    pub attempts: u16,
    /// Held: the account is frozen, or it waits for its campaign's verdict.
    pub held: bool,
}

pub use super::sites::NAMED_SITES;

impl Delivery {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, ControlError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Event::Control(make(tx)))
            .map_err(|_| ControlError::Stopped)?;
        rx.await.map_err(|_| ControlError::Stopped)
    }

    pub async fn summary(&self) -> Result<QueueSummary, ControlError> {
        self.ask(Command::Summary).await
    }

    /// Messages in the queue (oldest first), at most `limit` after the cursor `after`, of
    /// one account or all.
    pub async fn list(
        &self,
        account: Option<String>,
        limit: usize,
        after: Option<QueueId>,
    ) -> Result<Page, ControlError> {
        self.ask(|reply| Command::List {
            account,
            limit,
            after,
            reply,
        })
        .await
    }

    /// Retries, holds or releases every message the filter takes; returns how many.
    pub async fn bulk(&self, filter: Filter, what: Bulk) -> Result<usize, ControlError> {
        self.ask(|reply| Command::Bulk {
            filter,
            what,
            reply,
        })
        .await
    }

    /// The queue's age by site.
    pub async fn shape(&self) -> Result<Shape, ControlError> {
        self.ask(Command::Shape).await
    }

    pub async fn show(&self, id: QueueId) -> Result<Option<MessageState>, ControlError> {
        self.ask(|reply| Command::Show { id, reply }).await
    }

    /// Applies an action to a message; returns how many recipients it concerns.
    pub async fn act(&self, id: QueueId, action: Action) -> Result<usize, ControlError> {
        self.ask(|reply| Command::Act { id, action, reply }).await?
    }

    /// Drops every waiting recipient with this address; returns how many were queued.
    pub async fn erase(&self, address: &str) -> Result<usize, ControlError> {
        let address = address.to_string();
        self.ask(|reply| Command::Erase { address, reply }).await
    }

    /// Applies a campaign's verdict (already in the registry) to its held mail.
    pub fn campaign_verdict(&self, key: &str) {
        let _ = self.tx.send(Event::Control(Command::Verdict {
            key: key.to_string(),
        }));
    }

    /// Releases an unfrozen account's held mail.
    pub fn release(&self, account: &str) {
        let _ = self.tx.send(Event::Control(Command::Release {
            account: account.to_string(),
        }));
    }
}

impl Scheduler {
    pub(super) fn control(&mut self, command: Command) {
        match command {
            Command::Summary(reply) => {
                let _ = reply.send(self.summary());
            }
            Command::List {
                account,
                limit,
                after,
                reply,
            } => {
                let account = account.map(|a| self.names.find(&a));
                let mut ids: Vec<QueueId> = self
                    .entries
                    .iter()
                    .filter(|(_, e)| account.is_none_or(|a| a == Some(e.account)))
                    .map(|(id, _)| *id)
                    .collect();
                let total = ids.len();
                ids.retain(|id| after.is_none_or(|a| *id > a));
                ids.sort_unstable(); // ids grow with time: oldest first
                let more = ids.len() > limit;
                ids.truncate(limit);
                let next_after = more.then(|| ids.last().map(ToString::to_string)).flatten();
                let messages = ids.iter().filter_map(|id| self.state(*id)).collect();
                let _ = reply.send(Page {
                    messages,
                    total,
                    next_after,
                });
            }
            Command::Bulk {
                filter,
                what,
                reply,
            } => {
                let _ = reply.send(self.bulk(&filter, what));
            }
            Command::Shape(reply) => {
                let _ = reply.send(self.shape());
            }
            Command::Show { id, reply } => {
                let _ = reply.send(self.state(id));
            }
            Command::Act { id, action, reply } => {
                let _ = reply.send(self.act(id, action));
            }
            Command::Erase { address, reply } => {
                let hash = self.tagger.short(&address);
                let ids: Vec<QueueId> = self
                    .entries
                    .iter()
                    .filter(|(_, e)| {
                        e.rcpts
                            .iter()
                            .any(|r| r.addr_hash == hash && r.status() != Progress::Done)
                    })
                    .map(|(id, _)| *id)
                    .collect();
                let mut candidates = 0;
                for id in ids {
                    if let Ok(n) = self.act(id, Action::Erase(address.clone())) {
                        candidates += n;
                    }
                }
                let _ = reply.send(candidates);
            }
            Command::Verdict { key } => self.campaign_verdict(&key),
            Command::Release { account } => {
                // An operator unfroze it: the window that froze it is not held against it.
                if let Some(governor) = &self.settings.feedback.governor {
                    governor.health.forget(&account);
                }
                let Some(account) = self.names.find(&account) else {
                    return;
                };
                let ids: Vec<QueueId> = self
                    .entries
                    .iter()
                    .filter(|(_, e)| e.account == account)
                    .map(|(id, _)| *id)
                    .collect();
                tracing::info!(messages = ids.len(), "releasing an unfrozen account's mail");
                for id in ids {
                    self.dispatch(id);
                }
            }
        }
    }

    /// Whether the whole message is held because its account is frozen: its marketing
    /// (and its transactional mail when the policy says so), never the relay's reports.
    pub(super) fn frozen_holds(&self, entry: &super::Entry) -> bool {
        let frozen = || {
            self.settings
                .freezes
                .as_ref()
                .is_some_and(|f| f.is_frozen(self.names.name(entry.account)))
        };
        let hold_transactional = || {
            self.settings
                .policy
                .as_ref()
                .is_some_and(|p| p.load().health_rules().hold_transactional)
        };
        if entry.report {
            return false;
        }
        if entry.marketing {
            frozen()
        } else {
            frozen() && hold_transactional()
        }
    }

    /// Whether the message's recipients marked [`super::queue::Rcpt::held`] still wait:
    /// its campaign is in its canary.
    pub(super) fn campaign_waits(&self, entry: &super::Entry) -> bool {
        entry.campaign != super::queue::NO_CAMPAIGN
            && self
                .settings
                .feedback
                .campaigns
                .as_ref()
                .is_some_and(|c| c.stage(self.names.name(entry.campaign)) == Some(Stage::Canary))
            && entry.campaign_holds()
    }

    /// How many of the message's open recipients are held (frozen account, or waiting for
    /// the campaign's verdict).
    pub(super) fn held_recipients(&self, entry: &super::Entry) -> usize {
        let open = entry.rcpts.iter().filter(|r| r.status() != Progress::Done);
        if entry.operator_hold || self.frozen_holds(entry) {
            open.count()
        } else if self.campaign_waits(entry) {
            open.filter(|r| r.held).count()
        } else {
            0
        }
    }

    /// Judges the campaigns whose window has passed (and writes the registry).
    pub(super) fn judge_campaigns(&mut self) {
        let Some(campaigns) = self.settings.feedback.campaigns.clone() else {
            return;
        };
        let rules = self
            .settings
            .policy
            .as_ref()
            .map(|p| p.load().campaign_rules())
            .unwrap_or_default();
        let policy = self.settings.policy.as_ref().map(|p| p.load_full());
        // A minimum engagement rate applies only to a list that tracks opens or clicks.
        let tracked = |c: &crate::governance::campaign::Campaign| {
            policy.as_ref().is_some_and(|p| c.tracked(p))
        };
        for (key, _) in campaigns.judge_due(&rules, self.clock.now_ms(), tracked) {
            self.campaign_verdict(&key);
        }
        campaigns.flush();
    }

    /// A campaign's verdict reaches its held mail: released, it goes now; declined, it is
    /// removed (no DSN: the account gets one report for the whole campaign).
    pub(super) fn campaign_verdict(&mut self, key: &str) {
        let Some(campaigns) = self.settings.feedback.campaigns.clone() else {
            return;
        };
        let Some(campaign) = campaigns.get(key) else {
            return;
        };
        let ids: Vec<QueueId> = match self.names.find(key) {
            Some(name) => self
                .entries
                .iter()
                .filter(|(_, e)| e.campaign == name && e.campaign_holds())
                .map(|(id, _)| *id)
                .collect(),
            None => Vec::new(),
        };
        match campaign.stage {
            Stage::Canary => {}
            Stage::Released => {
                tracing::info!(
                    campaign = key,
                    messages = ids.len(),
                    "campaign released: held mail goes"
                );
                for id in ids {
                    if let Some(e) = self.entries.get_mut(&id) {
                        for r in e.rcpts.iter_mut() {
                            r.held = false;
                        }
                    }
                    self.dispatch(id);
                }
            }
            Stage::Declined => {
                tracing::warn!(
                    campaign = key,
                    messages = ids.len(),
                    "campaign declined: held mail removed"
                );
                for id in ids {
                    self.drop_held(id);
                }
                self.send_report(&campaign);
            }
        }
    }

    /// A declined campaign's held recipients of one message are removed (journaled as
    /// failed, no DSN); its canary recipients are left to finish. Needs no envelope.
    fn drop_held(&mut self, id: QueueId) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        let loc = entry.loc;
        let mut dropped = 0;
        for (i, r) in entry.rcpts.iter_mut().enumerate() {
            if r.held && matches!(r.status(), Progress::Waiting { .. }) {
                r.set(Progress::Done);
                r.held = false;
                self.spool.record(loc, i as u32, RcptEvent::Failed);
                dropped += 1;
            }
        }
        self.open_rcpts -= dropped;
        if entry.rcpts.iter().all(|r| r.status() == Progress::Done) {
            self.entries.remove(&id);
            self.actions.remove(&id);
            self.spool.finish(loc);
        }
    }

    /// Queues the decline report to the campaign's sender.
    fn send_report(&self, campaign: &Campaign) {
        let Some((env, body)) = crate::governance::campaign::report(
            &self.settings.hostname,
            campaign,
            self.spool.next_id(),
            self.clock.now_ms(),
        ) else {
            tracing::warn!(account = %campaign.account, campaign = %campaign.id, "declined campaign has no sender to report to");
            return;
        };
        let (spool, tx) = (self.spool.clone(), self.tx.clone());
        tokio::spawn(async move {
            match spool.store(&env, body.clone()).await {
                Ok(loc) => {
                    let n = env.recipients.len();
                    let _ = tx.send(Event::New(Box::new(super::Queued {
                        env: std::sync::Arc::new(env),
                        loc,
                        body: Some(body),
                        events: vec![None; n],
                    })));
                }
                Err(e) => tracing::error!(error = %e, "could not store a campaign report"),
            }
        });
    }

    fn act(&mut self, id: QueueId, action: Action) -> Result<usize, ControlError> {
        let now = self.clock.now_ms();
        let Some(entry) = self.entries.get_mut(&id) else {
            return Err(ControlError::NoSuchMessage(id.to_string()));
        };
        if let Action::Hold | Action::Release = action {
            let open = entry
                .rcpts
                .iter()
                .filter(|r| r.status() != Progress::Done)
                .count();
            let what = if action == Action::Hold {
                Bulk::Hold
            } else {
                Bulk::Release
            };
            tracing::info!(id = %id, action = ?ActionName(&action), recipients = open, "operator action");
            self.operate(&[id], what);
            return Ok(open);
        }
        if action == Action::Retry && entry.operator_hold {
            return Err(ControlError::Held(id.to_string()));
        }
        let hash = match &action {
            Action::Erase(address) => Some(self.tagger.short(address)),
            _ => None,
        };
        // Waiting recipients, and those in flight (the action waits for their attempt: if
        // it does not finish them, the action does).
        let mut n = 0;
        for r in entry.rcpts.iter_mut() {
            let open = matches!(r.status(), Progress::Waiting { .. } | Progress::InFlight);
            if open && hash.is_none_or(|h| h == r.addr_hash) {
                n += 1;
                if action == Action::Retry && r.status() != Progress::InFlight {
                    r.set(Progress::Waiting { due: now });
                }
            }
        }
        tracing::info!(id = %id, action = ?ActionName(&action), recipients = n, "operator action");
        if action != Action::Retry {
            self.actions.insert(id, action);
        }
        self.dispatch(id);
        Ok(n)
    }

    /// Applies a remembered action to a message now in memory.
    pub(super) fn apply(&mut self, id: QueueId, action: Action) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        // In memory for erase and bounce (see `dispatch`); delete does without.
        let env = entry.env().cloned();
        if env.is_none() && action != Action::Delete {
            return;
        }
        let chosen: Vec<u32> = entry
            .rcpts
            .iter()
            .enumerate()
            .filter(|(i, r)| {
                matches!(r.status(), Progress::Waiting { .. })
                    && match (&action, &env) {
                        (Action::Erase(address), Some(env)) => {
                            env.recipients[*i].address.eq_ignore_ascii_case(address)
                        }
                        (Action::Erase(_), None) => false,
                        _ => true,
                    }
            })
            .map(|(i, _)| i as u32)
            .collect();
        if action == Action::Bounce {
            for &i in &chosen {
                entry.rcpts[i as usize].set(Progress::InFlight);
            }
            let results = chosen
                .iter()
                .map(|&i| (i, Attempt::Refused(LocalRefusal::ReturnedByOperator)))
                .collect();
            self.complete(JobReport {
                id,
                env,
                unreadable: None,
                results,
                remote: None,
                next_hop_dsn: false,
                site: "-".into(),
            });
            return;
        }
        // Delete and erase: journaled as failed, no DSN, nothing more sent.
        let loc = entry.loc;
        for &i in &chosen {
            entry.rcpts[i as usize].set(Progress::Done);
            self.spool.record(loc, i, RcptEvent::Failed);
        }
        self.open_rcpts -= chosen.len();
        let finished = entry.rcpts.iter().all(|r| r.status() == Progress::Done);
        if finished {
            self.entries.remove(&id);
            self.spool.finish(loc);
        } else if !entry.in_flight() {
            entry.residence = Residence::Cold;
            if let Some(due) = entry.next_due(false) {
                self.timers.push(std::cmp::Reverse((due, id)));
            }
        }
    }

    fn state(&self, id: QueueId) -> Option<MessageState> {
        let e = self.entries.get(&id)?;
        let now = self.clock.now_ms();
        let (frozen, campaign_waits) = (
            e.operator_hold || self.frozen_holds(e),
            self.campaign_waits(e),
        );
        let held = self.held_recipients(e) > 0;
        Some(MessageState {
            id: id.to_string(),
            account: self.names.name(e.account).to_string(),
            marketing: e.marketing,
            age_s: (now / 1000).saturating_sub(e.received_s as u64),
            held,
            hold: match () {
                _ if e.operator_hold => Some("operator"),
                _ if frozen => Some("account_frozen"),
                _ if held => Some("campaign_canary"),
                _ => None,
            },
            campaign: (e.campaign != super::queue::NO_CAMPAIGN)
                .then(|| self.names.name(e.campaign).to_string()),
            recipients: e
                .rcpts
                .iter()
                .enumerate()
                .map(|(index, r)| {
                    let open = r.status() != Progress::Done;
                    let held = open && (frozen || (campaign_waits && r.held));
                    let (status, next) = match r.status() {
                        Progress::Waiting { due } => {
                            ("waiting", Some(due.saturating_sub(now) / 1000))
                        }
                        Progress::InFlight => ("in_flight", None),
                        Progress::Done => ("done", None),
                    };
                    RcptState {
                        index,
                        domain: self.names.name(r.domain).to_string(),
                        status,
                        next_attempt_in_s: next,
                        attempts: r.attempts,
                        held,
                    }
                })
                .collect(),
            loc: e.loc,
        })
    }

    /// The queue by site and account (see [`QueueSummary`]).
    pub(super) fn summary(&self) -> QueueSummary {
        let now_s = self.clock.now_ms() / 1000;
        let tnow = tokio::time::Instant::now();
        let mut site_of: HashMap<u32, String> = HashMap::new();
        let mut by_site: HashMap<String, (usize, u64)> = HashMap::new();
        let mut by_account: HashMap<u32, AccountQueue> = HashMap::new();
        let mut held_total = 0;
        for e in self.entries.values() {
            let held = self.held_recipients(e);
            let age = now_s.saturating_sub(e.received_s as u64);
            let acc = by_account.entry(e.account).or_insert_with(|| AccountQueue {
                account: self.names.name(e.account).to_string(),
                messages: 0,
                recipients: 0,
                held: 0,
            });
            acc.messages += 1;
            acc.held += held;
            held_total += held;
            for r in e.rcpts.iter().filter(|r| r.status() != Progress::Done) {
                acc.recipients += 1;
                let site = site_of
                    .entry(r.domain)
                    .or_insert_with(|| self.site_name(r.domain, tnow));
                let slot = by_site.entry(site.clone()).or_default();
                slot.0 += 1;
                slot.1 = slot.1.max(age);
            }
        }
        let mut sites: Vec<SiteQueue> = by_site
            .into_iter()
            .map(|(site, (recipients, oldest_s))| SiteQueue {
                site,
                recipients,
                oldest_s,
            })
            .collect();
        sites.sort_by(|a, b| b.recipients.cmp(&a.recipients).then(a.site.cmp(&b.site)));
        if sites.len() > NAMED_SITES {
            let rest = sites.split_off(NAMED_SITES);
            sites.push(SiteQueue {
                site: "other".into(),
                recipients: rest.iter().map(|s| s.recipients).sum(),
                oldest_s: rest.iter().map(|s| s.oldest_s).max().unwrap_or(0),
            });
        }
        let mut accounts: Vec<AccountQueue> = by_account.into_values().collect();
        accounts.sort_by(|a, b| a.account.cmp(&b.account));
        QueueSummary {
            messages: self.entries.len(),
            recipients: self.open_rcpts,
            held: held_total,
            by_site: sites,
            by_account: accounts,
        }
    }
}

/// An action for the log, without the erased address.
struct ActionName<'a>(&'a Action);

impl std::fmt::Debug for ActionName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Action::Retry => "retry",
            Action::Bounce => "bounce",
            Action::Delete => "delete",
            Action::Erase(_) => "erase",
            Action::Hold => "hold",
            Action::Release => "release",
        })
    }
}
