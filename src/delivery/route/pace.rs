//! A route's pace: its message and connection rates (booked in the cluster's shared
//! schedule when there is one), its cap of workers, and the adaptive shaping a site's
//! replies set — here or, announced, on another node.

use std::sync::Mutex;

use super::{Route, Workers};
use crate::delivery::outcome::Attempt;

/// The destination's own pace, set by replies that say "too much" (see
/// [`crate::policy::throttle::ShapingRule`]).
pub(super) struct Shaping {
    /// The share of the configured message rate in force (1.0: all of it).
    pub(super) factor: f64,
    pub(super) suspended_until: Option<tokio::time::Instant>,
    /// When the factor last changed (recovery counts from here).
    pub(super) since: tokio::time::Instant,
}

impl Route {
    /// Waits out a suspension of the destination, and brings the share of its rate
    /// (adaptive shaping) up to date. Returns whether it was suspended (a kept connection
    /// is stale then) and the share in force.
    pub(super) async fn wait_out_suspension(&self, ctx: &Workers) -> (bool, f64) {
        let now = tokio::time::Instant::now();
        let recovery = ctx
            .settings
            .policy
            .as_ref()
            .map(|p| p.load().shaping_recovery())
            .unwrap_or_default();
        let (suspended, factor) = {
            let mut sh = self.shaping.lock().expect("shaping lock");
            if sh.factor < 1.0 && !recovery.every.is_zero() {
                let steps = ((now - sh.since).as_secs_f64() / recovery.every.as_secs_f64()).floor();
                if steps >= 1.0 {
                    sh.factor = (sh.factor + steps * recovery.step).min(1.0);
                    sh.since = now;
                    tracing::info!(route = %self.key, share = sh.factor, "adaptive shaping: rate recovering");
                }
            }
            (sh.suspended_until.filter(|t| *t > now), sh.factor)
        };
        if let Some(until) = suspended {
            crate::metrics::throttle_wait(until - now);
            tokio::time::sleep_until(until).await;
        }
        (suspended.is_some(), factor)
    }

    /// Waits until the message rate (its `factor` share) allows the next message, and
    /// books its slot. Messages are spaced evenly by the rate's interval (GCRA without
    /// burst), so a minute at "600/min" carries 600 of them.
    pub(super) async fn pace_messages(
        &self,
        ctx: &Workers,
        rate: Option<crate::policy::throttle::Rate>,
        factor: f64,
    ) {
        if let Some(rate) = rate {
            let interval = rate.interval().div_f64(factor.max(0.01));
            self.book(ctx, "messages", &self.next_send, interval).await;
        }
    }

    /// Waits until the connection rate allows opening another connection.
    pub(super) async fn pace_connections(
        &self,
        ctx: &Workers,
        rate: Option<crate::policy::throttle::Rate>,
    ) {
        if let Some(rate) = rate {
            self.book(ctx, "connections", &self.next_connect, rate.interval())
                .await;
        }
    }

    /// Books the next slot of the route's `schedule` and waits for it: in the cluster's
    /// shared schedule when there is one (all nodes together keep the rate), else here —
    /// with the interval multiplied by the nodes last seen while the cluster's Redis is
    /// away, so that they still keep the rate between them.
    pub(super) async fn book(
        &self,
        ctx: &Workers,
        schedule: &str,
        slot: &Mutex<Option<tokio::time::Instant>>,
        interval: std::time::Duration,
    ) {
        let Some(cluster) = &ctx.settings.cluster else {
            return wait_for_slot(slot, interval).await;
        };
        match cluster.pace(schedule, &self.name, interval).await {
            Some(wait) => {
                if !wait.is_zero() {
                    crate::metrics::throttle_wait(wait);
                    tokio::time::sleep(wait).await;
                }
            }
            None => {
                let nodes = cluster.share().unwrap_or(1) as u32;
                wait_for_slot(slot, interval * nodes).await;
            }
        }
    }

    /// The most workers (each with at most one connection) the route may have: the
    /// policy's `connections` within `[delivery] max_connections_per_destination`; in a
    /// cluster whose Redis is away, this node's share of the policy's cap.
    pub(super) fn worker_cap(&self, ctx: &Workers) -> usize {
        let max = ctx.settings.config.max_connections_per_destination;
        let Some(cap) = self.throttle(ctx).connections else {
            return max;
        };
        let share = ctx.settings.cluster.as_ref().and_then(|c| c.share());
        let cap = match share {
            Some(nodes) => cap.div_ceil(nodes),
            None => cap,
        };
        cap.min(max)
    }

    /// Another node's reply from this site changed its pace: take the same share and
    /// suspension (the nodes converge on one state instead of each cutting in turn).
    pub fn shaped_elsewhere(&self, node: &str, factor: f64, suspended_for: std::time::Duration) {
        let now = tokio::time::Instant::now();
        let mut sh = self.shaping.lock().expect("shaping lock");
        sh.factor = factor.clamp(0.01, 1.0);
        if !suspended_for.is_zero() {
            let until = now + suspended_for;
            sh.suspended_until = Some(sh.suspended_until.map_or(until, |t| t.max(until)));
        }
        sh.since = now;
        tracing::info!(route = %self.key, node, share = sh.factor, suspended = ?suspended_for, "adaptive shaping: set by another node");
    }

    /// Applies the policy's shaping rule matched by a server's reply, if any.
    pub(super) fn shape(&self, ctx: &Workers, attempt: &Attempt) {
        let (Some(policy), Attempt::Replied { reply, .. }) = (&ctx.settings.policy, attempt) else {
            return;
        };
        if reply.is_positive() {
            return;
        }
        let policy = policy.load();
        let Some(rule) = policy.shaping_rule(reply.code, &reply.one_line()) else {
            return;
        };
        let now = tokio::time::Instant::now();
        let mut sh = self.shaping.lock().expect("shaping lock");
        match rule.action {
            crate::policy::throttle::Action::Slow { factor } => {
                sh.factor = (sh.factor * factor).max(0.01);
                tracing::warn!(route = %self.key, rule = %rule.name, share = sh.factor, reply = %reply.code, "adaptive shaping: rate cut");
                crate::metrics::shaping_action("slow");
            }
            crate::policy::throttle::Action::Suspend { duration } => {
                sh.suspended_until = Some(now + duration);
                tracing::warn!(route = %self.key, rule = %rule.name, suspended = ?duration, reply = %reply.code, "adaptive shaping: destination suspended");
                crate::metrics::shaping_action("suspend");
            }
        }
        sh.since = now;
        if let Some(cluster) = &ctx.settings.cluster {
            let announcement = crate::cluster::Announcement::Shaped {
                site: self.name.clone(),
                factor: sh.factor,
                suspended_for: sh.suspended_until.map_or(Default::default(), |t| t - now),
                node: cluster.node_id().to_string(),
            };
            let cluster = cluster.clone();
            tokio::spawn(async move { cluster.announce(announcement).await });
        }
    }
}

/// GCRA without burst: books the next slot `interval` after the last one (or now) and
/// waits for it, so a minute at "600/min" carries 600 of them.
async fn wait_for_slot(slot: &Mutex<Option<tokio::time::Instant>>, interval: std::time::Duration) {
    let now = tokio::time::Instant::now();
    let start = {
        let mut next = slot.lock().expect("pace lock");
        let start = next.map_or(now, |t| t.max(now));
        *next = Some(start + interval);
        start
    };
    if start > now {
        crate::metrics::throttle_wait(start - now);
        tokio::time::sleep_until(start).await;
    }
}
