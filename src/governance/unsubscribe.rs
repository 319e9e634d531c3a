//! Unsubscribes from every channel — the one-click POST and the page of the HTTP listener,
//! and mail to `unsubscribe+TOKEN@<mail_domain>` — recorded the same way: an `unsubscribe`
//! suppression for the token's list (or the whole account) written to the lists journal
//! (fsynced, in force at once), a metric, and an event for the account's own systems in
//! `events/unsubscribes.jsonl` beside the spool (mode 0600; it carries the address), and
//! the account's signed webhook when it has one (`crate::governance::webhook`).

use crate::privacy::events::EventLog;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::consent::{Change, Kind, Lists, ListsError, Op, Origin, Reason, Scope};
use crate::policy::Policy;
use crate::rewrite::token::{TokenKeys, Unsubscribe};

/// How the unsubscribe arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Http,
    Mail,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Via::Http => "http",
            Via::Mail => "mail",
        }
    }
}

/// What recording unsubscribes needs.
pub struct Unsubscribes {
    pub lists: Arc<Lists>,
    pub keys: Arc<TokenKeys>,
    pub policy: Arc<ArcSwap<Policy>>,
    pub events: Arc<EventLog>,
    /// The consent ledger, whose records of the lists left are marked withdrawn.
    pub ledger: Option<Arc<super::ledger::Ledger>>,
    /// Campaigns in their canary count the unsubscribes from their list, account health
    /// counts them, and the account's webhook is told.
    pub feedback: super::Feedback,
}

impl Unsubscribes {
    /// Marks the consent records of the lists left withdrawn ("unsubscribe"); the
    /// suppression is what stops the mail, so a failure here is only logged.
    fn withdraw_records(
        &self,
        ledger: &super::ledger::Ledger,
        u: &Unsubscribe,
        whole_account: bool,
        time_ms: u64,
    ) {
        let lists: Vec<String> = if whole_account {
            let policy = self.policy.load();
            policy
                .account(&u.account)
                .map(|a| a.lists.iter().map(|l| l.id.clone()).collect())
                .unwrap_or_default()
        } else {
            vec![u.list.clone()]
        };
        let one = [u.address.clone()];
        for list in lists {
            if let Err(e) = ledger.withdraw(&u.account, &list, &one, "unsubscribe", time_ms) {
                tracing::error!(error = %e, "could not mark a consent record withdrawn");
            }
        }
    }

    /// Records one unsubscribe durably and in force at once (blocking: call from a
    /// blocking context). A repeat (the same link clicked again, a provider retrying its
    /// one-click POST) writes nothing: no journal record, metric, event or webhook.
    pub fn record(&self, u: &Unsubscribe, whole_account: bool, via: Via) -> Result<(), ListsError> {
        // Check and record as one step, so two copies of one click arriving together
        // cannot both count as new. Unsubscribes are rare: one at a time costs nothing.
        static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
        let _turn = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = self.lists.standing(&u.account, Some(&u.list), &u.address);
        let bit = Reason::Unsubscribe.bit();
        let repeat = if whole_account {
            before.account & bit != 0
        } else {
            before.list & bit != 0
        };
        let scope = if whole_account { "account" } else { "list" };
        if repeat {
            tracing::info!(account = %u.account, list = %u.list, scope, via = via.as_str(), "unsubscribed again (already in force; nothing written)");
            return Ok(());
        }
        let secret = self.lists.secret();
        let fp = if whole_account {
            secret.fingerprint(Kind::Suppression, Scope::Account(&u.account), &u.address)
        } else {
            secret.fingerprint(
                Kind::Suppression,
                Scope::List(&u.account, &u.list),
                &u.address,
            )
        };
        let change = Change {
            op: Op::Add,
            fp,
            tags: Reason::Unsubscribe.bit(),
            origin: Origin::Unsubscribe,
            time_ms: crate::envelope::now_ms(),
            stamp: 0,
            remote: false,
        };
        if let Err(e) = self.lists.record(&[change]) {
            tracing::error!(account = %u.account, error = %e, "could not record an unsubscribe");
            return Err(e);
        }
        crate::metrics::unsubscribe_received(scope, via.as_str());
        if let Some(ledger) = &self.ledger {
            self.withdraw_records(ledger, u, whole_account, change.time_ms);
        }
        if let Some(campaigns) = &self.feedback.campaigns {
            campaigns.unsubscribed(&u.account, &u.list);
        }
        if let Some(governor) = &self.feedback.governor {
            governor.observe(&u.account, crate::governance::health::Signal::Unsubscribe);
        }
        let event = serde_json::json!({
            "time_ms": change.time_ms,
            "account": u.account,
            "list": u.list,
            "scope": scope,
            "address": u.address,
            "via": via.as_str(),
        });
        if let Err(e) = self.events.append(&event) {
            tracing::error!(error = %e, "could not append to the unsubscribe event log");
        }
        if let Some(webhooks) = &self.feedback.webhooks {
            // On disk before the caller answers (this runs on a blocking thread).
            webhooks.send_blocking(
                &u.account,
                crate::governance::webhook::WebhookEvent {
                    kind: crate::policy::webhook::Kind::Unsubscribe,
                    address: u.address.clone(),
                    list: Some(u.list.clone()),
                    time_ms: change.time_ms,
                    detail: serde_json::json!({"scope": scope, "via": via.as_str()}),
                },
            );
        }
        tracing::info!(account = %u.account, list = %u.list, scope, via = via.as_str(), "unsubscribed");
        Ok(())
    }
}
