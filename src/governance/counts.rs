//! Per-account delivery counts — delivered, deferred, hard and soft bounced recipients —
//! and spam complaints, kept since start for the governance work (bounce and complaint
//! rates, account freeze). Delivery results are exported as
//! `optin_account_recipients_total{account, result}` (accounts come from the policy, so the
//! label set stays bounded); complaints are counted here by
//! `crate::governance::complaints`, once per recipient newly suppressed; bounces by
//! category (in the relay's own transactions, and mailed back: `crate::governance::
//! bounces`).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::bounce::Category;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub delivered: u64,
    pub deferred: u64,
    pub hard_bounced: u64,
    pub soft_bounced: u64,
    /// Spam complaints tied to the account (ARF reports and the report form).
    pub complaints: u64,
    /// Every bounce by category: given up in the relay's own transactions, and mailed
    /// back to the return path (blocks, authentication failures and rate limits count
    /// against the account here, never as suppressions).
    pub bounces: ByCategory,
}

/// A count per bounce category; serialised as `{"category": n}` for those above zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ByCategory([u64; 12]);

impl ByCategory {
    pub fn get(&self, c: Category) -> u64 {
        self.0[Category::ALL
            .iter()
            .position(|x| *x == c)
            .expect("a category")]
    }

    fn add(&mut self, c: Category) {
        self.0[Category::ALL
            .iter()
            .position(|x| *x == c)
            .expect("a category")] += 1;
    }
}

impl serde::Serialize for ByCategory {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(None)?;
        for (c, n) in Category::ALL.iter().zip(self.0) {
            if n > 0 {
                map.serialize_entry(c.as_str(), &n)?;
            }
        }
        map.end()
    }
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

    /// Counts one bounce of the account's mail by its category.
    pub fn add_bounce(&self, account: &str, category: Category) {
        let mut map = self.inner.lock().expect("counts lock");
        match map.get_mut(account) {
            Some(c) => c.bounces.add(category),
            None => map
                .entry(account.to_string())
                .or_default()
                .bounces
                .add(category),
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
        if let Settled::Bounced { category, .. } = o.settled {
            self.add_bounce(&o.envelope.account, category);
        }
    }
}
