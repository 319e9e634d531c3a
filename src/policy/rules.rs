//! The rules the policy file declares for governance: `[health]` (the rolling window and
//! thresholds that freeze an account) and `[campaigns]` (the canary and the thresholds of
//! staged release). `crate::governance` applies them; they are read and checked here, with
//! the rest of the policy.

use std::time::Duration;

use super::share;
use crate::config::reader::Section;

/// `[health]` in the policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthRules {
    pub window: Duration,
    /// Below this many delivered plus hard-bounced in the window, no rate is judged.
    pub min_volume: u64,
    /// Complaints per delivered message.
    pub max_complaint_rate: f64,
    /// Hard bounces per attempt (delivered plus hard-bounced).
    pub max_hard_bounce_rate: f64,
    /// Unsubscribes per delivered message; `None`: not judged.
    pub max_unsubscribe_rate: Option<f64>,
    /// Freeze the account on a crossing (false: only log and count).
    pub freeze: bool,
    /// A frozen account's queued transactional mail is held too (false: it still goes).
    pub hold_transactional: bool,
}

impl Default for HealthRules {
    fn default() -> HealthRules {
        HealthRules {
            window: Duration::from_secs(24 * 3600),
            min_volume: 500,
            max_complaint_rate: 0.003,
            max_hard_bounce_rate: 0.05,
            max_unsubscribe_rate: None,
            freeze: true,
            hold_transactional: false,
        }
    }
}

/// `[campaigns]` in the policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CampaignRules {
    /// How long the canary is watched before the verdict.
    pub window: Duration,
    /// The canary's share of the declared size.
    pub share: f64,
    /// The canary when no size was declared.
    pub count: u64,
    /// The canary is never larger.
    pub max: u64,
    pub max_hard_bounce_rate: f64,
    pub max_complaint_rate: f64,
    pub max_unsubscribe_rate: f64,
    /// Inactive addresses (dead for good, found in the relay's transactions or by bounces
    /// mailed back) per finished canary recipient; `None`: not judged apart from the hard
    /// bounce rate.
    pub max_inactive_rate: Option<f64>,
    /// Engaged recipients (opened or clicked) per delivered canary recipient, for lists
    /// that track opens or clicks; `None`: not judged.
    pub min_engagement_rate: Option<f64>,
}

impl Default for CampaignRules {
    fn default() -> CampaignRules {
        CampaignRules {
            window: Duration::from_secs(6 * 3600),
            share: 0.10,
            count: 500,
            max: 1000,
            max_hard_bounce_rate: 0.05,
            max_complaint_rate: 0.003,
            max_unsubscribe_rate: 0.02,
            max_inactive_rate: None,
            min_engagement_rate: None,
        }
    }
}

/// `[health]`: the rolling window and thresholds that freeze an account.
pub(super) fn read_health(s: &mut Section<'_>) -> HealthRules {
    let d = HealthRules::default();
    let window = s
        .get::<crate::config::units::HumanDuration>("window")
        .map_or(d.window, |h| h.get());
    if window < std::time::Duration::from_secs(60) {
        s.problem("window", "must be at least a minute");
    }
    let rate = share;
    let max_complaint_rate = rate(s, "max_complaint_rate").unwrap_or(d.max_complaint_rate);
    let max_hard_bounce_rate = rate(s, "max_hard_bounce_rate").unwrap_or(d.max_hard_bounce_rate);
    let max_unsubscribe_rate = rate(s, "max_unsubscribe_rate");
    let min_volume = s.get_or("min_volume", d.min_volume as i64);
    if min_volume < 1 {
        s.problem("min_volume", "must be at least 1");
    }
    let hold_transactional = match s.get::<String>("frozen_transactional").as_deref() {
        None | Some("send") => false,
        Some("hold") => true,
        Some(other) => {
            s.problem(
                "frozen_transactional",
                format!("{other:?} is not send or hold"),
            );
            false
        }
    };
    HealthRules {
        window,
        min_volume: min_volume.max(1) as u64,
        max_complaint_rate,
        max_hard_bounce_rate,
        max_unsubscribe_rate,
        freeze: s.get_or("freeze", d.freeze),
        hold_transactional,
    }
}

/// `[campaigns]`: the canary and the thresholds of staged release.
pub(super) fn read_campaigns(s: &mut Section<'_>) -> CampaignRules {
    let d = CampaignRules::default();
    let window = s
        .get::<crate::config::units::HumanDuration>("evaluation_window")
        .map_or(d.window, |h| h.get());
    let rate = |s: &mut Section<'_>, key: &str, default: f64| share(s, key).unwrap_or(default);
    let share = rate(s, "canary_share", d.share);
    let max_hard_bounce_rate = rate(s, "max_hard_bounce_rate", d.max_hard_bounce_rate);
    let max_complaint_rate = rate(s, "max_complaint_rate", d.max_complaint_rate);
    let max_unsubscribe_rate = rate(s, "max_unsubscribe_rate", d.max_unsubscribe_rate);
    let max_inactive_rate = super::share(s, "max_inactive_rate");
    let min_engagement_rate = super::share(s, "min_engagement_rate");
    let max = s.get_or("canary_max", d.max as i64);
    if !(1..=1000).contains(&max) {
        s.problem("canary_max", "must be between 1 and 1000");
    }
    let count = s.get_or("canary_count", d.count as i64);
    if count < 1 {
        s.problem("canary_count", "must be at least 1");
    }
    CampaignRules {
        window,
        share,
        count: count.max(1) as u64,
        max: max.clamp(1, 1000) as u64,
        max_hard_bounce_rate,
        max_complaint_rate,
        max_unsubscribe_rate,
        max_inactive_rate,
        min_engagement_rate,
    }
}
