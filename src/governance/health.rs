//! Account health: rolling per-account counts of delivered mail, hard bounces, complaints
//! and unsubscribes over the policy's window (`[health] window`, in 60 buckets, so the
//! window slides a sixtieth at a time), and the thresholds that freeze an account that
//! crosses them (defaults: complaints 0.3 % of delivered, hard bounces 5 % of attempts,
//! once the window holds at least `min_volume` messages).
//!
//! Counts live in memory: a restart starts the windows afresh (the freeze itself, once
//! made, is kept in `state/frozen.json`).

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;

use crate::policy::rules::HealthRules;

/// What happened to an account's mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Delivered,
    HardBounce,
    Complaint,
    Unsubscribe,
}

/// Slots in a window (it slides a slot at a time).
pub const BUCKETS: u64 = 60;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Window {
    pub delivered: u64,
    pub hard_bounces: u64,
    pub complaints: u64,
    pub unsubscribes: u64,
}

impl Window {
    /// Counts one signal.
    pub fn count(&mut self, signal: Signal) {
        match signal {
            Signal::Delivered => self.delivered += 1,
            Signal::HardBounce => self.hard_bounces += 1,
            Signal::Complaint => self.complaints += 1,
            Signal::Unsubscribe => self.unsubscribes += 1,
        }
    }

    /// Adds another window's counts.
    pub fn add(&mut self, other: &Window) {
        self.delivered += other.delivered;
        self.hard_bounces += other.hard_bounces;
        self.complaints += other.complaints;
        self.unsubscribes += other.unsubscribes;
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which slot (time / bucket length) the counts are for.
    slot: u64,
    counts: Window,
}

struct Account {
    buckets: [Bucket; BUCKETS as usize],
}

impl Default for Account {
    fn default() -> Account {
        Account {
            buckets: [Bucket::default(); BUCKETS as usize],
        }
    }
}

impl Account {
    fn add(&mut self, slot: u64, signal: Signal) {
        let b = &mut self.buckets[(slot % BUCKETS) as usize];
        if b.slot != slot {
            *b = Bucket {
                slot,
                counts: Window::default(),
            };
        }
        b.counts.count(signal);
    }

    fn window(&self, slot: u64) -> Window {
        let mut w = Window::default();
        for b in self
            .buckets
            .iter()
            .filter(|b| b.slot + BUCKETS > slot && b.slot <= slot)
        {
            w.add(&b.counts);
        }
        w
    }
}

#[derive(Default)]
pub struct Health {
    accounts: Mutex<HashMap<String, Account>>,
}

fn slot(now_ms: u64, rules: &HealthRules) -> u64 {
    let len = (rules.window.as_millis() as u64 / BUCKETS).max(1);
    now_ms / len
}

impl Health {
    /// Counts a signal; returns why the account crosses a threshold now, if it does.
    pub fn record(
        &self,
        account: &str,
        signal: Signal,
        rules: &HealthRules,
        now_ms: u64,
    ) -> Option<String> {
        let slot = slot(now_ms, rules);
        let mut all = self.accounts.lock().expect("health lock");
        // Called for every delivered recipient: no allocation once the account is known.
        if !all.contains_key(account) {
            all.insert(account.to_string(), Account::default());
        }
        let a = all.get_mut(account).expect("inserted above");
        a.add(slot, signal);
        judge(&a.window(slot), rules)
    }

    /// Drops the account's counts: its window starts afresh (after an operator unfreezes
    /// it, so the signals that froze it do not freeze it again at the next one).
    pub fn forget(&self, account: &str) {
        self.accounts.lock().expect("health lock").remove(account);
    }

    /// The accounts with counts (for the gauges).
    pub fn accounts(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .accounts
            .lock()
            .expect("health lock")
            .keys()
            .cloned()
            .collect();
        all.sort();
        all
    }

    /// The account's counts in the current window.
    pub fn window(&self, account: &str, rules: &HealthRules, now_ms: u64) -> Window {
        let slot = slot(now_ms, rules);
        self.accounts
            .lock()
            .expect("health lock")
            .get(account)
            .map(|a| a.window(slot))
            .unwrap_or_default()
    }
}

/// How close a window is to one freeze threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Closeness {
    /// `crate::metrics::HEALTH_THRESHOLDS`: complaints, hard_bounces, unsubscribes.
    pub threshold: &'static str,
    /// The rate over the threshold: 1.0 is where the account freezes.
    pub ratio: f64,
    /// The threshold (a rate).
    pub max_rate: f64,
}

/// The window against each threshold the policy sets.
pub fn closeness(w: &Window, rules: &HealthRules) -> Vec<Closeness> {
    let rate = |n: u64, of: u64| n as f64 / of.max(1) as f64;
    let attempts = w.delivered + w.hard_bounces;
    [
        (
            "complaints",
            rate(w.complaints, w.delivered),
            Some(rules.max_complaint_rate),
        ),
        (
            "hard_bounces",
            rate(w.hard_bounces, attempts),
            Some(rules.max_hard_bounce_rate),
        ),
        (
            "unsubscribes",
            rate(w.unsubscribes, w.delivered),
            rules.max_unsubscribe_rate,
        ),
    ]
    .into_iter()
    .filter_map(|(threshold, r, max)| {
        let max_rate = max?;
        Some(Closeness {
            threshold,
            ratio: if max_rate > 0.0 { r / max_rate } else { 0.0 },
            max_rate,
        })
    })
    .collect()
}

/// Why a window crosses the rules, if it does.
pub fn judge(w: &Window, rules: &HealthRules) -> Option<String> {
    let attempts = w.delivered + w.hard_bounces;
    if attempts < rules.min_volume.max(1) {
        return None;
    }
    let pct = |n: u64, of: u64| 100.0 * n as f64 / of.max(1) as f64;
    let hours = rules.window.as_secs_f64() / 3600.0;
    if pct(w.complaints, w.delivered) > rules.max_complaint_rate * 100.0 {
        return Some(format!(
            "complaint rate {:.2}% over {:.2}% ({} of {} delivered in {hours:.0}h)",
            pct(w.complaints, w.delivered),
            rules.max_complaint_rate * 100.0,
            w.complaints,
            w.delivered
        ));
    }
    if pct(w.hard_bounces, attempts) > rules.max_hard_bounce_rate * 100.0 {
        return Some(format!(
            "hard bounce rate {:.2}% over {:.2}% ({} of {attempts} in {hours:.0}h)",
            pct(w.hard_bounces, attempts),
            rules.max_hard_bounce_rate * 100.0,
            w.hard_bounces
        ));
    }
    if let Some(max) = rules.max_unsubscribe_rate
        && pct(w.unsubscribes, w.delivered) > max * 100.0
    {
        return Some(format!(
            "unsubscribe rate {:.2}% over {:.2}% ({} of {} delivered in {hours:.0}h)",
            pct(w.unsubscribes, w.delivered),
            max * 100.0,
            w.unsubscribes,
            w.delivered
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rules() -> HealthRules {
        HealthRules {
            window: Duration::from_secs(3600),
            min_volume: 100,
            ..HealthRules::default()
        }
    }

    #[test]
    fn no_verdict_below_the_minimum_volume() {
        let h = Health::default();
        let r = rules();
        for _ in 0..10 {
            assert_eq!(h.record("shop", Signal::HardBounce, &r, 0), None);
        }
    }

    #[test]
    fn complaints_over_the_threshold_are_named() {
        let h = Health::default();
        let r = rules();
        for _ in 0..1000 {
            assert_eq!(h.record("shop", Signal::Delivered, &r, 1000), None);
        }
        for _ in 0..3 {
            assert_eq!(h.record("shop", Signal::Complaint, &r, 1000), None);
        }
        let why = h.record("shop", Signal::Complaint, &r, 1000).unwrap();
        assert!(why.starts_with("complaint rate 0.40% over 0.30%"), "{why}");
        assert_eq!(h.window("other", &r, 1000), Window::default());
    }

    #[test]
    fn the_window_slides() {
        let h = Health::default();
        let r = rules();
        for _ in 0..200 {
            h.record("shop", Signal::Delivered, &r, 0);
        }
        assert_eq!(h.window("shop", &r, 3_000_000).delivered, 200);
        // a full window later, the old counts are gone
        assert_eq!(h.window("shop", &r, 3_600_000 + 60_000).delivered, 0);
        for _ in 0..20 {
            h.record("shop", Signal::HardBounce, &r, 3_700_000);
        }
        assert_eq!(h.window("shop", &r, 3_700_000).hard_bounces, 20);
    }

    #[test]
    fn hard_bounces_cross_at_five_percent_of_attempts() {
        let r = rules();
        let w = Window {
            delivered: 95,
            hard_bounces: 5,
            ..Window::default()
        };
        assert_eq!(judge(&w, &r), None, "exactly 5 % is allowed");
        let w = Window {
            delivered: 94,
            hard_bounces: 6,
            ..Window::default()
        };
        assert!(judge(&w, &r).unwrap().starts_with("hard bounce rate 6.00%"));
    }
}
