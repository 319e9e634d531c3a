//! Delivery throttles from the policy: `[throttles."*"]` for every destination and
//! `[throttles."DOMAIN"]` for one (the domain's own values win, key by key).
//!
//! - `message_rate = "600/min"`: messages (SMTP transactions) per second, minute or hour,
//!   spaced evenly (GCRA without burst): over-limit mail waits, it is never refused.
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
    pub connections: Option<usize>,
    pub messages_per_connection: Option<usize>,
}

impl Throttle {
    /// `self` with the unset keys taken from `fallback`.
    pub fn or(self, fallback: Throttle) -> Throttle {
        Throttle {
            message_rate: self.message_rate.or(fallback.message_rate),
            connections: self.connections.or(fallback.connections),
            messages_per_connection: self
                .messages_per_connection
                .or(fallback.messages_per_connection),
        }
    }
}

pub fn read_throttle(s: &mut Section<'_>) -> Throttle {
    let message_rate = s
        .get::<String>("message_rate")
        .and_then(|r| match Rate::parse(&r) {
            Ok(rate) => Some(rate),
            Err(e) => {
                s.problem("message_rate", e);
                None
            }
        });
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
