//! Governance: what the relay decides about accounts and campaigns as a whole, beyond
//! single messages: freezing an account ([`freeze`]: its new submissions are refused and its
//! queued marketing mail is held until an operator unfreezes it), and staged campaign
//! release ([`campaign`]: a canary first, the rest after a verdict on its figures), and
//! spam complaints ([`complaints`]: feedback reports and the report form, turned into
//! suppressions and per-account counts), and account health ([`health`]: rolling rates
//! that freeze an account crossing the policy's thresholds), and signed webhooks
//! ([`webhook`]: unsubscribes, complaints and hard bounces told to the account's systems),
//! and consent given by the accounts themselves ([`account_keys`]: their API keys;
//! [`consents`]: grants and withdrawals with their proof in the [`ledger`]).

pub mod account_keys;
pub mod bounces;
pub mod campaign;
pub mod complaints;
pub mod consents;
pub mod counts;
pub mod engagement;
pub mod freeze;
pub mod health;
pub mod intake;
pub mod ledger;
pub mod shared;
pub mod subscribe;
pub mod unsubscribe;
pub mod uploads;
pub mod webhook;

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::policy::Policy;

/// Writes a state file (`state/*.json`, mode 0600 in a 0700 directory) so a crash leaves
/// the old or the new content, never half of one (see
/// [`crate::files::write_atomically`]).
pub(crate) fn write_state(path: &Path, value: &impl serde::Serialize) -> std::io::Result<()> {
    crate::files::write_atomically(
        path,
        &serde_json::to_vec_pretty(value).expect("serialisable"),
    )
}

/// The governance that delivery results, unsubscribes and complaints feed: a campaign's
/// canary, account health, the accounts' webhooks. Each is `None` where it is not running
/// (a test, a tool); cheap to clone.
#[derive(Clone, Default)]
pub struct Feedback {
    pub campaigns: Option<Arc<campaign::Campaigns>>,
    pub governor: Option<Arc<Governor>>,
    pub webhooks: Option<Arc<webhook::Webhooks>>,
}

impl std::fmt::Debug for Feedback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feedback")
            .field("campaigns", &self.campaigns.is_some())
            .field("governor", &self.governor.is_some())
            .field("webhooks", &self.webhooks.is_some())
            .finish()
    }
}

/// Account health wired to freezes: what the delivery engine, unsubscribes and complaints
/// report goes through here.
pub struct Governor {
    pub health: health::Health,
    pub freezes: Arc<freeze::Freezes>,
    pub policy: Arc<ArcSwap<Policy>>,
    /// In a cluster: the health windows summed across the nodes, which judge while Redis
    /// answers (see [`shared`]); unset alone.
    pub shared: std::sync::OnceLock<Arc<shared::SharedHealth>>,
}

impl std::fmt::Debug for Governor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Governor").finish_non_exhaustive()
    }
}

impl Governor {
    /// Counts a signal for an account; returns why the account must be frozen when it now
    /// crosses a threshold (and the policy freezes on crossings) and is not frozen yet.
    /// Never blocks.
    pub fn count(&self, account: &str, signal: health::Signal) -> Option<String> {
        let rules = self.policy.load().health_rules();
        let local = self
            .health
            .record(account, signal, &rules, crate::envelope::now_ms());
        // In a cluster whose Redis answers, the sum of all nodes judges (at its flush),
        // not this node's share.
        if let Some(shared) = self.shared.get()
            && shared.judges()
        {
            shared.add(account, signal);
            return None;
        }
        let why = local?;
        if !rules.freeze {
            tracing::warn!(account, reason = %why, "account health threshold crossed (freeze off)");
            return None;
        }
        (!self.freezes.is_frozen(account)).then_some(why)
    }

    /// Freezes an account for a crossing [`Governor::count`] reported (blocking: writes the
    /// frozen-accounts file).
    pub fn freeze_for(&self, account: &str, why: &str) {
        Governor::freeze_with(&self.freezes, account, why);
    }

    fn freeze_with(freezes: &freeze::Freezes, account: &str, why: &str) {
        match freezes.freeze(account, why, "health") {
            Ok(true) => crate::metrics::account_frozen("health"),
            Ok(false) => {}
            Err(e) => tracing::error!(account, error = %e, "could not freeze an account"),
        }
    }

    /// [`Governor::count`] and [`Governor::freeze_for`] together (blocking on a crossing).
    pub fn observe(&self, account: &str, signal: health::Signal) {
        if let Some(why) = self.count(account, signal) {
            self.freeze_for(account, &why);
        }
    }
}

/// Deliveries and hard bounces count for the account's health; a crossing freezes it (on
/// the blocking pool: the freeze writes a file).
impl crate::envelope::OutcomeSink for Governor {
    fn settled(&self, o: &crate::envelope::RecipientOutcome<'_>) {
        use crate::envelope::Settled;
        let signal = match o.settled {
            Settled::Delivered { .. } => health::Signal::Delivered,
            // A DSN the relay sent to the account's own sender says nothing of the
            // account's recipients: it never counts toward a freeze.
            Settled::Bounced { hard: true, .. } if !o.envelope.generated_dsn => {
                health::Signal::HardBounce
            }
            _ => return,
        };
        if let Some(why) = self.count(&o.envelope.account, signal) {
            let (freezes, account) = (self.freezes.clone(), o.envelope.account.clone());
            tokio::task::spawn_blocking(move || Governor::freeze_with(&freezes, &account, &why));
        }
    }
}
