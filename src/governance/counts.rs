//! Per-account delivery counts — delivered, deferred, hard and soft bounced recipients —
//! and spam complaints, kept since start for the governance work (bounce and complaint
//! rates, account freeze). Delivery results are exported as
//! `optin_account_recipients_total{account, result}` (accounts come from the policy, so the
//! label set stays bounded); complaints are counted here by
//! `crate::governance::complaints`, once per recipient newly suppressed.

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub delivered: u64,
    pub deferred: u64,
    pub hard_bounced: u64,
    pub soft_bounced: u64,
    /// Spam complaints tied to the account (ARF reports and the report form).
    pub complaints: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Result {
    Delivered,
    Deferred,
    HardBounced,
    SoftBounced,
}

impl Result {
    fn label(self) -> &'static str {
        match self {
            Result::Delivered => "delivered",
            Result::Deferred => "deferred",
            Result::HardBounced => "hard_bounced",
            Result::SoftBounced => "soft_bounced",
        }
    }
}

#[derive(Debug, Default)]
pub struct AccountCounts {
    inner: Mutex<HashMap<String, Counts>>,
}

impl AccountCounts {
    pub fn add(&self, account: &str, result: Result) {
        {
            let mut map = self.inner.lock().expect("counts lock");
            let c = match map.get_mut(account) {
                Some(c) => c,
                None => map.entry(account.to_string()).or_default(),
            };
            match result {
                Result::Delivered => c.delivered += 1,
                Result::Deferred => c.deferred += 1,
                Result::HardBounced => c.hard_bounced += 1,
                Result::SoftBounced => c.soft_bounced += 1,
            }
        }
        metrics::counter!(
            crate::metrics::ACCOUNT_RECIPIENTS,
            "account" => account.to_string(),
            "result" => result.label()
        )
        .increment(1);
    }

    /// Counts one spam complaint about the account's mail.
    pub fn add_complaint(&self, account: &str) {
        let mut map = self.inner.lock().expect("counts lock");
        match map.get_mut(account) {
            Some(c) => c.complaints += 1,
            None => map.entry(account.to_string()).or_default().complaints += 1,
        }
    }

    /// The counts of one account.
    pub fn get(&self, account: &str) -> Counts {
        self.inner
            .lock()
            .expect("counts lock")
            .get(account)
            .copied()
            .unwrap_or_default()
    }

    /// Every account's counts.
    pub fn all(&self) -> HashMap<String, Counts> {
        self.inner.lock().expect("counts lock").clone()
    }
}

/// Every settled recipient counts for its account.
impl crate::envelope::OutcomeSink for AccountCounts {
    fn settled(&self, o: &crate::envelope::RecipientOutcome<'_>) {
        use crate::envelope::Settled;
        let result = match o.settled {
            Settled::Delivered { .. } => Result::Delivered,
            Settled::Deferred { .. } => Result::Deferred,
            Settled::Bounced { hard: true, .. } => Result::HardBounced,
            Settled::Bounced { .. } => Result::SoftBounced,
        };
        self.add(&o.envelope.account, result);
    }
}
