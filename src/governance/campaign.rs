//! Staged campaign release. Marketing mail carrying `X-Optin-Campaign` forms a campaign
//! (per account). Its first recipients — the canary: a share of the declared size, or a
//! configured count when none was declared, never more than the cap — are delivered; the
//! rest are held in the spool. When the evaluation window has passed, the canary's hard
//! bounce, complaint and unsubscribe rates are compared with the policy's thresholds: the
//! campaign is released (held mail goes) or declined (held mail is removed, the account
//! gets a report mail, and the figures are kept). An admin can release or decline at any
//! time; recipients that arrive after the verdict follow it.
//!
//! The registry lives in `state/campaigns.json` beside the spool (written atomically on
//! every verdict and at most once a second otherwise, so a crash can forget up to a
//! second of canary counts) and every verdict is an event in `events/campaigns.jsonl`.
//! Admission counts recipients, in arrival order and within a message in recipient order:
//! a message that crosses the end of the canary sends its first recipients and holds the
//! others. So after a restart the oldest pending recipients of a campaign still in its
//! canary are the canary ones.
//!
//! Unsubscribes and complaints carry the list, not the campaign: one for a list counts
//! toward every campaign of that account and list still in its canary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use crate::bounce::Category;
use crate::cluster::Cluster;
use crate::envelope::QueueId;
use crate::policy::rules::CampaignRules;
use crate::privacy::events::EventLog;
pub use figures::Figures;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// The canary is out; the rest is held.
    Canary,
    Released,
    Declined,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Campaign {
    pub account: String,
    pub id: String,
    pub list: Option<String>,
    /// Declared through the admin API.
    pub declared_size: Option<u64>,
    pub canary_size: u64,
    pub stage: Stage,
    pub started_ms: u64,
    /// When the canary is judged (unix ms).
    pub evaluate_at_ms: u64,
    pub decided_ms: Option<u64>,
    /// `policy` or `admin`.
    pub decided_by: Option<String>,
    pub reason: Option<String>,
    pub canary: Figures,
    /// Recipients held (waiting for the verdict) or removed by a decline.
    pub held: u64,
    /// Where the decline report goes: the envelope sender of the campaign's first message.
    pub report_to: Option<String>,
    /// Cluster mode: the canary's figures summed over every node, as last read from Redis
    /// (what the verdict is given on); `canary` is this node's own part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Figures>,
    /// Cluster mode: how much of `canary` this node has added to the cluster's sums.
    #[serde(default, skip_serializing_if = "Figures::is_zero")]
    pub shared: Figures,
}

impl Campaign {
    /// A campaign just seen (or declared): in its canary, with the undeclared canary size,
    /// judged a window from now.
    fn new(account: &str, id: &str, rules: &CampaignRules, now_ms: u64) -> Campaign {
        Campaign {
            account: account.to_string(),
            id: id.to_string(),
            list: None,
            declared_size: None,
            canary_size: rules.count.min(rules.max),
            stage: Stage::Canary,
            started_ms: now_ms,
            evaluate_at_ms: now_ms + rules.window.as_millis() as u64,
            decided_ms: None,
            decided_by: None,
            reason: None,
            canary: Figures::default(),
            held: 0,
            report_to: None,
            cluster: None,
            shared: Figures::default(),
        }
    }

    /// The figures the verdict is given on: the cluster's sums in cluster mode, else this
    /// node's.
    pub fn figures(&self) -> &Figures {
        self.cluster.as_ref().unwrap_or(&self.canary)
    }

    fn rate(&self, n: u64) -> f64 {
        let finished = self.figures().finished;
        if finished == 0 {
            0.0
        } else {
            n as f64 / finished as f64
        }
    }

    /// Cluster mode while Redis is away: how many more recipients this node may admit to
    /// the canary on its own — its share (of `nodes`) of what the cluster had left at the
    /// last reading, less what it admitted alone since.
    fn share_left(&self, nodes: usize) -> u64 {
        let seen = self.cluster.as_ref().map_or(0, |f| f.admitted);
        let left = self.canary_size.saturating_sub(seen);
        let share = left.div_ceil(nodes.max(1) as u64);
        let alone = self.canary.admitted.saturating_sub(self.shared.admitted);
        share.saturating_sub(alone)
    }

    /// Whether the campaign's list tracks opens or clicks under `policy` (then a minimum
    /// engagement rate applies to its canary).
    pub fn tracked(&self, policy: &crate::policy::Policy) -> bool {
        self.list.as_deref().is_some_and(|list| {
            policy
                .account(&self.account)
                .and_then(|a| a.list(list))
                .is_some_and(|l| l.tracks())
        })
    }

    /// The verdict the policy gives the canary's figures: `None` releases, `Some(why)`
    /// declines. `tracked`: its list tracks opens or clicks, so that a minimum engagement
    /// rate (engaged recipients per delivered one) applies.
    pub fn judge(&self, rules: &CampaignRules, tracked: bool) -> Option<String> {
        self.judge_rates(rules).or_else(|| {
            let min = rules.min_engagement_rate.filter(|_| tracked)?;
            let f = self.figures();
            let delivered = f.delivered;
            let rate = if delivered == 0 {
                0.0
            } else {
                f.engaged as f64 / delivered as f64
            };
            (rate < min).then(|| {
                format!(
                    "canary engagement rate {:.2}% under the {:.2}% required ({} of {delivered} \
                     delivered opened or clicked)",
                    rate * 100.0,
                    min * 100.0,
                    f.engaged
                )
            })
        })
    }

    fn judge_rates(&self, rules: &CampaignRules) -> Option<String> {
        let f = self.figures();
        let checks = [
            ("hard bounce", f.hard_bounced, rules.max_hard_bounce_rate),
            ("complaint", f.complaints, rules.max_complaint_rate),
            ("unsubscribe", f.unsubscribes, rules.max_unsubscribe_rate),
        ];
        let inactive = rules
            .max_inactive_rate
            .map(|max| ("inactive address", f.inactive, max));
        checks
            .iter()
            .chain(inactive.as_ref())
            .find_map(|(what, n, max)| {
                let rate = self.rate(*n);
                (rate > *max).then(|| {
                    format!(
                        "canary {what} rate {:.2}% over the {:.2}% allowed ({n} of {})",
                        rate * 100.0,
                        max * 100.0,
                        f.finished
                    )
                })
            })
    }
}

/// What happens to the recipients of a new message of a campaign. The canary counts
/// recipients, not messages: a message that crosses the canary's end sends the canary's
/// remaining share of its recipients (the first ones) and holds the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Every recipient goes (released, or all within the canary).
    Send,
    /// The first `send` recipients go (the end of the canary); the others are held.
    Partial {
        send: u64,
    },
    /// Every recipient is held until the verdict.
    Hold,
    /// Cluster mode: every recipient is held until Redis says how many of them the canary
    /// (of `size` unless a node set it) takes (see [`shared::ask`]).
    Ask {
        size: u64,
    },
    Declined(String),
}

impl Admission {
    /// How many of `n` recipients go now (the first ones); the rest are held. `None`:
    /// declined, nothing goes.
    pub fn sending(&self, n: u64) -> Option<u64> {
        match self {
            Admission::Send => Some(n),
            Admission::Partial { send } => Some((*send).min(n)),
            Admission::Hold | Admission::Ask { .. } => Some(0),
            Admission::Declined(_) => None,
        }
    }

    /// `send` of `n` recipients go now.
    fn of(send: u64, n: u64) -> Admission {
        if send >= n {
            Admission::Send
        } else if send == 0 {
            Admission::Hold
        } else {
            Admission::Partial { send }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    #[error("campaigns file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("no campaign {0:?}")]
    NoSuchCampaign(String),
    #[error("campaign {0:?} has had its verdict already")]
    Decided(String),
}

#[derive(Debug)]
pub struct Campaigns {
    path: PathBuf,
    all: Mutex<BTreeMap<String, Campaign>>,
    dirty: AtomicBool,
    events: EventLog,
    /// Cluster mode: the cluster the canaries are counted across (see [`shared`]).
    cluster: OnceLock<Arc<Cluster>>,
    /// Cluster mode: verdicts given here while Redis was away, to be shared.
    unshared: Mutex<std::collections::BTreeSet<String>>,
}

/// The registry key of a campaign.
pub fn key(account: &str, id: &str) -> String {
    format!("{account}/{id}")
}

impl Campaigns {
    pub fn open(spool_dir: &Path) -> Result<Campaigns, CampaignError> {
        let path = spool_dir.join("state/campaigns.json");
        let all = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| CampaignError::File {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(CampaignError::File {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                });
            }
        };
        Ok(Campaigns {
            events: EventLog::new(&spool_dir.join("events/campaigns.jsonl")),
            path,
            all: Mutex::new(all),
            dirty: AtomicBool::new(false),
            cluster: OnceLock::new(),
            unshared: Mutex::default(),
        })
    }

    /// Counts the canaries across `cluster` from now on (before any mail is admitted).
    pub fn share(&self, cluster: Arc<Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    /// The cluster the canaries are counted across, if any.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    /// Cluster mode: a verdict given here while Redis was away (shared when it answers).
    fn unshared_verdict(&self, key: &str) {
        self.unshared
            .lock()
            .expect("unshared lock")
            .insert(key.to_string());
    }

    fn take_unshared_verdicts(&self) -> Vec<String> {
        std::mem::take(&mut *self.unshared.lock().expect("unshared lock"))
            .into_iter()
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Campaign>> {
        self.all.lock().expect("campaigns lock")
    }

    pub fn get(&self, key: &str) -> Option<Campaign> {
        self.lock().get(key).cloned()
    }

    pub fn list(&self) -> Vec<Campaign> {
        self.lock().values().cloned().collect()
    }

    pub fn stage(&self, key: &str) -> Option<Stage> {
        self.lock().get(key).map(|c| c.stage)
    }

    /// Decides a new message with `n` recipients: how many of them are part of the canary
    /// (the rest is held), or refused after a decline. The first message starts the
    /// campaign.
    #[allow(clippy::too_many_arguments)]
    pub fn admit(
        &self,
        account: &str,
        id: &str,
        list: Option<&str>,
        sender: Option<&str>,
        n: u64,
        rules: &CampaignRules,
        now_ms: u64,
    ) -> Admission {
        let mut all = self.lock();
        let c = all.entry(key(account, id)).or_insert_with(|| {
            tracing::info!(account, campaign = id, "campaign started: canary first");
            Campaign::new(account, id, rules, now_ms)
        });
        // A campaign declared before its first message learns its list and sender here.
        if c.list.is_none() {
            c.list = list.map(str::to_string);
        }
        if c.report_to.is_none() {
            c.report_to = sender.map(str::to_string);
        }
        self.dirty.store(true, Ordering::Relaxed);
        match c.stage {
            Stage::Released => Admission::Send,
            Stage::Declined => {
                Admission::Declined(c.reason.clone().unwrap_or_else(|| "declined".into()))
            }
            Stage::Canary => {
                let room = match self.cluster.get().map(|cl| cl.share()) {
                    // Redis decides how many go (shared::ask); all wait meanwhile.
                    Some(None) => {
                        c.held += n;
                        return Admission::Ask {
                            size: c.canary_size,
                        };
                    }
                    // Redis is away: this node's share of what the cluster had left.
                    Some(Some(nodes)) => c.share_left(nodes),
                    None => c.canary_size.saturating_sub(c.canary.admitted),
                };
                let send = room.min(n);
                c.canary.admitted += send;
                c.held += n - send;
                Admission::of(send, n)
            }
        }
    }

    /// The answer to an [`Admission::Ask`] of a campaign in its canary: `send` of the
    /// held recipients go (Redis counted them already), or, `send` none (Redis did not
    /// answer), this node's share while it is away. Returns how many go.
    pub fn admitted(&self, key: &str, send: Option<u64>, n: u64, nodes: usize) -> u64 {
        let mut all = self.lock();
        let Some(c) = all.get_mut(key).filter(|c| c.stage == Stage::Canary) else {
            return 0;
        };
        let send = match send {
            Some(send) => {
                c.shared.admitted += send;
                send.min(n)
            }
            None => c.share_left(nodes).min(n),
        };
        c.canary.admitted += send;
        c.held = c.held.saturating_sub(send);
        self.dirty.store(true, Ordering::Relaxed);
        send
    }

    /// Cluster mode: `added` of this node's figures went into the cluster's sums, which
    /// now read `sums` with a canary of `size`.
    pub fn synced(&self, key: &str, added: &Figures, sums: Figures, size: u64) {
        if let Some(c) = self.lock().get_mut(key) {
            c.shared.add(added);
            c.cluster = Some(sums);
            if size > 0 {
                c.canary_size = size;
            }
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// A message recovered from the spool with `n` pending recipients: canary recipients
    /// still pending are re-admitted in arrival order, a message's first recipients first
    /// (see the module doc); the rest is held again.
    pub fn readmit(&self, key: &str, n: u64, budget: &mut BTreeMap<String, u64>) -> Admission {
        let all = self.lock();
        let Some(c) = all.get(key) else {
            return Admission::Send; // unknown (registry lost): nothing to hold it for
        };
        match c.stage {
            Stage::Released => Admission::Send,
            Stage::Declined => {
                Admission::Declined(c.reason.clone().unwrap_or_else(|| "declined".into()))
            }
            Stage::Canary => {
                let left = budget
                    .entry(key.to_string())
                    .or_insert_with(|| c.canary.admitted.saturating_sub(c.canary.finished));
                let send = (*left).min(n);
                *left -= send;
                Admission::of(send, n)
            }
        }
    }

    /// Declares a campaign's size (admin API): the canary becomes the policy's share of it
    /// (at least one, at most the cap). A campaign not seen yet is created waiting for mail.
    pub fn declare(
        &self,
        account: &str,
        id: &str,
        size: u64,
        rules: &CampaignRules,
        now_ms: u64,
    ) -> Result<Campaign, CampaignError> {
        let mut all = self.lock();
        let c = all
            .entry(key(account, id))
            .or_insert_with(|| Campaign::new(account, id, rules, now_ms));
        if c.stage != Stage::Canary {
            return Err(CampaignError::Decided(key(account, id)));
        }
        c.declared_size = Some(size);
        c.canary_size = ((size as f64 * rules.share).ceil() as u64).clamp(1, rules.max);
        let c = c.clone();
        drop(all);
        self.save()?;
        Ok(c)
    }

    /// A canary recipient finished (outcomes after the verdict are not the canary's):
    /// delivered, or bounced in the relay's own transaction (`bounce`: its category, and
    /// whether the address itself was refused for good).
    pub fn outcome(&self, key: &str, delivered: bool, bounce: Option<(Category, bool)>) {
        if let Some(c) = self.lock().get_mut(key)
            && c.stage == Stage::Canary
        {
            c.canary.finished += 1;
            if delivered {
                c.canary.delivered += 1;
            }
            if let Some((category, hard)) = bounce {
                if hard {
                    c.canary.hard_bounced += 1;
                    c.canary.inactive += 1;
                }
                *c.canary
                    .bounces
                    .entry(category.as_str().to_string())
                    .or_default() += 1;
            }
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// A bounce mailed back for a canary recipient already delivered: counted by category,
    /// and as an inactive address when it names the address dead for good.
    pub fn bounced(&self, key: &str, category: Category, permanent: bool) {
        if let Some(c) = self.lock().get_mut(key)
            && c.stage == Stage::Canary
        {
            *c.canary
                .bounces
                .entry(category.as_str().to_string())
                .or_default() += 1;
            if category.dead(permanent) {
                c.canary.inactive += 1;
            }
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// An open or a click of a canary recipient (`first_of_kind`: its first open, or first
    /// click; `first_at_all`: its first of either).
    pub fn engaged(&self, key: &str, click: bool, first_of_kind: bool, first_at_all: bool) {
        if let Some(c) = self.lock().get_mut(key)
            && c.stage == Stage::Canary
        {
            let n = u64::from(first_of_kind);
            if click {
                c.canary.clicked += n;
            } else {
                c.canary.opened += n;
            }
            c.canary.engaged += u64::from(first_at_all);
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// An unsubscribe from a list: counted for the account's campaigns on that list still
    /// in their canary.
    pub fn unsubscribed(&self, account: &str, list: &str) {
        for c in self.lock().values_mut() {
            if c.stage == Stage::Canary && c.account == account && c.list.as_deref() == Some(list) {
                c.canary.unsubscribes += 1;
                self.dirty.store(true, Ordering::Relaxed);
            }
        }
    }

    /// A spam complaint about mail of an account's list: counted, like an unsubscribe, for
    /// the account's campaigns on that list still in their canary (reports carry the list's
    /// token, not the campaign).
    pub fn complained(&self, account: &str, list: &str) {
        for c in self.lock().values_mut() {
            if c.stage == Stage::Canary && c.account == account && c.list.as_deref() == Some(list) {
                c.canary.complaints += 1;
                self.dirty.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Campaigns whose window has passed and whose canary has results: judged now by the
    /// policy. Returns the verdicts given (key, declined reason or none).
    /// In cluster mode nothing is judged here: the cluster gives one verdict
    /// ([`shared`]).
    pub fn judge_due(
        &self,
        rules: &CampaignRules,
        now_ms: u64,
        tracked: impl Fn(&Campaign) -> bool,
    ) -> Vec<(String, Option<String>)> {
        if self.cluster.get().is_some() {
            return Vec::new();
        }
        let due: Vec<(String, Option<String>)> = self
            .lock()
            .iter()
            .filter(|(_, c)| {
                c.stage == Stage::Canary && c.evaluate_at_ms <= now_ms && c.canary.finished > 0
            })
            .map(|(k, c)| (k.clone(), c.judge(rules, tracked(c))))
            .collect();
        for (k, why) in &due {
            let _ = self.decide(k, why.clone(), "policy", now_ms);
        }
        due
    }

    /// Gives a campaign its verdict: released (`why` none) or declined.
    pub fn decide(
        &self,
        key: &str,
        why: Option<String>,
        by: &str,
        now_ms: u64,
    ) -> Result<Campaign, CampaignError> {
        let mut all = self.lock();
        let c = all
            .get_mut(key)
            .ok_or_else(|| CampaignError::NoSuchCampaign(key.to_string()))?;
        if c.stage != Stage::Canary {
            return Err(CampaignError::Decided(key.to_string()));
        }
        c.stage = if why.is_some() {
            Stage::Declined
        } else {
            Stage::Released
        };
        c.reason = why;
        c.decided_ms = Some(now_ms);
        c.decided_by = Some(by.to_string());
        let c = c.clone();
        drop(all);
        crate::metrics::campaign_verdict(if c.stage == Stage::Declined {
            "declined"
        } else {
            "released"
        });
        match c.stage {
            Stage::Declined => {
                tracing::warn!(account = %c.account, campaign = %c.id, reason = ?c.reason, by, "campaign declined")
            }
            _ => tracing::info!(account = %c.account, campaign = %c.id, by, "campaign released"),
        }
        let event = serde_json::json!({
            "time_ms": now_ms,
            "event": if c.stage == Stage::Declined { "declined" } else { "released" },
            "account": c.account,
            "campaign": c.id,
            "by": by,
            "reason": c.reason,
            "canary": c.figures(),
            "held": c.held,
        });
        if let Err(e) = self.events.append(&event) {
            tracing::error!(error = %e, "cannot write the campaign event log");
        }
        self.save()?;
        Ok(c)
    }

    /// Writes the registry if anything changed since the last write.
    pub fn flush(&self) {
        if self.dirty.swap(false, Ordering::Relaxed)
            && let Err(e) = self.save()
        {
            tracing::error!(error = %e, "cannot write the campaigns file");
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    fn save(&self) -> Result<(), CampaignError> {
        let all = self.lock().clone();
        super::write_state(&self.path, &all).map_err(|e| CampaignError::File {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        })
    }
}

/// The report a declined campaign's account gets: a plain-text message from the relay to
/// the envelope sender of the campaign's first message, with the reason and the figures.
/// `None` when there is no one to send it to.
pub fn report(
    hostname: &str,
    c: &Campaign,
    id: QueueId,
    now_ms: u64,
) -> Option<(crate::envelope::Envelope, bytes::Bytes)> {
    use mail_builder::MessageBuilder;
    use mail_builder::headers::address::Address;
    let to = c.report_to.clone().filter(|a| !a.is_empty())?;
    let text = format!(
        "This is the mail system at {hostname}.\r\n\r\n\
         Your campaign \"{id}\" (account {account}) was declined after its first \
         recipients:\r\n{reason}.\r\n\r\n\
         Canary: {admitted} recipients sent, {finished} finished, {delivered} delivered, \
         {hard} hard bounces, {inactive} inactive addresses, {complaints} complaints, \
         {unsubscribes} unsubscribes.\r\n\
         The {held} recipients held for the rest of the campaign were removed; nothing more \
         of it will be sent. Review the list and the content before sending again under a \
         new campaign name.\r\n",
        id = c.id,
        account = c.account,
        reason = c.reason.as_deref().unwrap_or("declined"),
        admitted = c.figures().admitted,
        finished = c.figures().finished,
        delivered = c.figures().delivered,
        hard = c.figures().hard_bounced,
        inactive = c.figures().inactive,
        complaints = c.figures().complaints,
        unsubscribes = c.figures().unsubscribes,
        held = c.held,
    );
    let message = MessageBuilder::new()
        .from(Address::new_address(
            Some("Mail Delivery System"),
            format!("MAILER-DAEMON@{hostname}"),
        ))
        .to(Address::new_address(None::<&str>, to.clone()))
        .subject(format!("Campaign \"{}\" declined", c.id))
        .date(mail_builder::headers::date::Date::new(
            (now_ms / 1000) as i64,
        ))
        .message_id(format!(
            "campaign.{}.{}@{hostname}",
            id,
            rand::random::<u32>()
        ))
        .header(
            "Auto-Submitted",
            mail_builder::headers::raw::Raw::new("auto-generated"),
        )
        .text_body(text)
        .write_to_vec()
        .ok()?;
    let envelope = crate::envelope::Envelope::relay_notice(id, now_ms, &c.account, to, &message);
    Some((envelope, bytes::Bytes::from(message)))
}

/// A canary recipient's end counts for its campaign's verdict.
impl crate::envelope::OutcomeSink for Campaigns {
    fn settled(&self, o: &crate::envelope::RecipientOutcome<'_>) {
        use crate::envelope::Settled;
        let Some(key) = o.canary else { return };
        match o.settled {
            Settled::Delivered { .. } => self.outcome(key, true, None),
            Settled::Bounced { hard, category, .. } => {
                self.outcome(key, false, Some((category, hard)))
            }
            Settled::Deferred { .. } => {}
        }
    }
}

mod figures;
pub mod shared;
#[cfg(test)]
mod tests;
