//! Delivery throttles from the policy: `[throttles."*"]` for every destination and
//! `[throttles."DOMAIN"]` for one (the domain's own values win, key by key).
//!
//! - `message_rate = "600/min"`: messages (SMTP transactions) per second, minute or hour,
//!   spaced evenly (GCRA without burst): over-limit mail waits, it is never refused.
//! - `connection_rate = "10/min"`: new connections opened, spaced evenly the same way.
//! - `connections = 5`: concurrent connections (at most `[delivery]
//!   max_connections_per_destination`).
//! - `messages_per_connection = 100`: transactions before a connection is closed.

use std::time::Duration;

use crate::config::reader::Section;

/// A rate: `count` per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl Rate {
    /// `"600/min"`, `"10/s"`, `"5000/hour"`.
    pub fn parse(s: &str) -> Result<Rate, String> {
        let bad = || format!("{s:?} is not a rate like \"600/min\" (per s, min or hour)");
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86400),
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(bad());
        }
        Ok(Rate { count, per })
    }

    /// The spacing between two messages.
    pub fn interval(&self) -> Duration {
        self.per / self.count
    }
}

/// The limits for one destination (`None`: no limit from the policy).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Throttle {
    pub message_rate: Option<Rate>,
    pub connection_rate: Option<Rate>,
    pub connections: Option<usize>,
    pub messages_per_connection: Option<usize>,
}

impl Throttle {
    /// `self` with the unset keys taken from `fallback`.
    pub fn or(self, fallback: Throttle) -> Throttle {
        Throttle {
            message_rate: self.message_rate.or(fallback.message_rate),
            connection_rate: self.connection_rate.or(fallback.connection_rate),
            connections: self.connections.or(fallback.connections),
            messages_per_connection: self
                .messages_per_connection
                .or(fallback.messages_per_connection),
        }
    }
}

pub fn read_throttle(s: &mut Section<'_>) -> Throttle {
    let rate = |s: &mut Section<'_>, key: &str| {
        s.get::<String>(key).and_then(|r| match Rate::parse(&r) {
            Ok(rate) => Some(rate),
            Err(e) => {
                s.problem(key, e);
                None
            }
        })
    };
    let message_rate = rate(s, "message_rate");
    let connection_rate = rate(s, "connection_rate");
    let positive = |s: &mut Section<'_>, key: &str| {
        let v = s.get::<i64>(key)?;
        if v <= 0 {
            s.problem(key, "must be greater than zero");
            return None;
        }
        Some(v as usize)
    };
    Throttle {
        message_rate,
        connection_rate,
        connections: positive(s, "connections"),
        messages_per_connection: positive(s, "messages_per_connection"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(
            Rate::parse("600/min").unwrap().interval(),
            Duration::from_millis(100)
        );
        assert_eq!(
            Rate::parse(" 10 / s ").unwrap().interval(),
            Duration::from_millis(100)
        );
        assert_eq!(
            Rate::parse("3600/hour").unwrap().interval(),
            Duration::from_secs(1)
        );
        for bad in ["600", "0/min", "x/min", "10/week", "-1/s"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }
}

/// What an adaptive-shaping rule does to a destination.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action {
    /// Multiply the destination's message rate by `factor` (0 < factor < 1).
    Slow { factor: f64 },
    /// Send nothing to the destination for this long.
    Suspend { duration: Duration },
}

/// `[[shaping]]`: a reply that says "too much" and what to do about it. After the action,
/// the rate climbs back by `recover_step` (a fraction of the configured rate) every
/// `recover_every` without another match.
#[derive(Debug, Clone, PartialEq)]
pub struct ShapingRule {
    pub name: String,
    /// The reply code the rule applies to (e.g. 421, 451, 452, 550).
    pub code: Option<u16>,
    /// Lower-case text to find in the reply (enhanced code or words, e.g. "tss04").
    pub text: Option<String>,
    pub action: Action,
}

/// How the rate recovers after a slow-down.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recovery {
    pub step: f64,
    pub every: Duration,
}

impl Default for Recovery {
    fn default() -> Recovery {
        Recovery {
            step: 0.1,
            every: Duration::from_secs(300),
        }
    }
}

impl ShapingRule {
    /// Whether a reply (code and one-line text) matches.
    pub fn matches(&self, code: u16, text: &str) -> bool {
        self.code.is_none_or(|c| c == code)
            && self
                .text
                .as_deref()
                .is_none_or(|t| text.to_ascii_lowercase().contains(t))
    }
}

pub fn read_shaping(s: &mut Section<'_>, index: usize) -> Option<ShapingRule> {
    let name = s.get_or("name", format!("rule {index}"));
    let code = s.get::<u16>("code");
    if code.is_some_and(|c| !(400..600).contains(&c)) {
        s.problem("code", "must be a 4xx or 5xx reply code");
    }
    let text = s.get::<String>("text").map(|t| t.to_ascii_lowercase());
    if code.is_none() && text.is_none() {
        s.problem("", "a rule needs a code, a text, or both");
    }
    let action = match s.get::<String>("action").as_deref() {
        Some("slow") => {
            let factor = s.get_or("factor", 0.5f64);
            if !(factor > 0.0 && factor < 1.0) {
                s.problem("factor", "must be between 0 and 1");
            }
            Action::Slow { factor }
        }
        Some("suspend") => {
            let duration = s
                .get::<crate::config::units::HumanDuration>("duration")
                .map(|d| d.get())
                .unwrap_or_else(|| {
                    s.problem("duration", "missing (e.g. \"15m\")");
                    Duration::ZERO
                });
            Action::Suspend { duration }
        }
        Some(other) => {
            s.problem("action", format!("{other:?} is not slow or suspend"));
            return None;
        }
        None => {
            s.problem("action", "missing (slow or suspend)");
            return None;
        }
    };
    Some(ShapingRule {
        name,
        code,
        text,
        action,
    })
}
