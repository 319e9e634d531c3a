//! What the policy says about bounces: its own `[[bounce_rules]]`, tried before the shipped
//! ones (`crate::bounce::rules`), and `[bounce_streak]`, how many full-mailbox bounces
//! within how many days suppress an address. `crate::governance::bounces` applies them.

use std::time::Duration;

use crate::bounce::{Category, Classifier, Rule, StatusPattern};
use crate::config::reader::{OneOrMany, Section};

/// Longest phrase a rule may have, and most phrases, domains and rules.
const MAX_PHRASE: usize = 200;
const MAX_ITEMS: usize = 100;
const MAX_RULES: usize = 500;

/// `[bounce_streak]`: a full mailbox is suppressed after `count` final bounces within
/// `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streak {
    pub count: u32,
    pub window: Duration,
}

impl Default for Streak {
    fn default() -> Streak {
        Streak {
            count: 3,
            window: Duration::from_secs(14 * 86_400),
        }
    }
}

pub(super) fn read_streak(s: &mut Section<'_>) -> Streak {
    let d = Streak::default();
    let count = s.get_or("mailbox_full_count", i64::from(d.count));
    if !(1..=100).contains(&count) {
        s.problem("mailbox_full_count", "must be between 1 and 100");
    }
    let days = s.get_or("mailbox_full_days", (d.window.as_secs() / 86_400) as i64);
    if !(1..=365).contains(&days) {
        s.problem("mailbox_full_days", "must be between 1 and 365");
    }
    Streak {
        count: count.clamp(1, 100) as u32,
        window: Duration::from_secs(days.clamp(1, 365) as u64 * 86_400),
    }
}

/// `[[bounce_rules]]`, in order, ahead of the shipped rules.
pub(super) fn read_rules(sections: Vec<Section<'_>>) -> Classifier {
    let mut own = Vec::new();
    for (i, mut s) in sections.into_iter().enumerate() {
        if i == MAX_RULES {
            s.problem("", format!("at most {MAX_RULES} bounce rules"));
            break;
        }
        if let Some(rule) = read_rule(&mut s, i) {
            own.push(rule);
        }
    }
    Classifier::with_rules(own)
}

fn read_rule(s: &mut Section<'_>, i: usize) -> Option<Rule> {
    let name = s.get_or("name", format!("bounce_rules[{i}]"));
    let category = match s.get::<String>("category") {
        None => {
            s.problem("category", "missing");
            None
        }
        Some(c) => Category::parse(&c).or_else(|| {
            let names: Vec<&str> = Category::ALL.iter().map(|c| c.as_str()).collect();
            s.problem(
                "category",
                format!("{c:?} is not one of {}", names.join(", ")),
            );
            None
        }),
    };
    let status = s.get::<String>("status").and_then(|p| {
        StatusPattern::parse(&p).or_else(|| {
            s.problem(
                "status",
                format!("{p:?} is not a status pattern like \"5.1.1\" or \"5.7.*\""),
            );
            None
        })
    });
    let codes: Vec<u16> = s
        .get::<OneOrMany<i64>>("code")
        .map(OneOrMany::into_vec)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| match u16::try_from(c) {
            Ok(c) if (200..600).contains(&c) => Some(c),
            _ => {
                s.problem("code", format!("{c} is not a reply code"));
                None
            }
        })
        .collect();
    let text = phrases(s, "text", |t| t.to_lowercase());
    let domains = phrases(s, "domains", |d| d.trim().to_ascii_lowercase());
    if status.is_none() && codes.is_empty() && text.is_empty() {
        s.problem("", "a rule needs status, code or text");
    }
    Some(Rule {
        name,
        category: category?,
        status,
        codes,
        text,
        domains,
    })
}

/// A string or a list of them, each non-empty and bounded.
fn phrases(s: &mut Section<'_>, key: &str, norm: impl Fn(&str) -> String) -> Vec<String> {
    let all: Vec<String> = s
        .get::<OneOrMany<String>>(key)
        .map(OneOrMany::into_vec)
        .unwrap_or_default();
    if all.len() > MAX_ITEMS {
        s.problem(key, format!("at most {MAX_ITEMS} entries"));
    }
    all.iter()
        .take(MAX_ITEMS)
        .filter_map(|p| {
            if p.trim().is_empty() || p.len() > MAX_PHRASE {
                s.problem(key, format!("entries must be 1 to {MAX_PHRASE} octets"));
                None
            } else {
                Some(norm(p))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::bounce::{Category, Evidence};
    use crate::policy::Policy;

    #[test]
    fn own_rules_are_read_in_order_ahead_of_the_shipped_ones() {
        let p = Policy::from_toml(
            "t",
            r#"
[[bounce_rules]]
name = "acme says slow down"
category = "rate_limited"
status = "5.7.*"
code = [550, 554]
text = "Slow Down"
domains = [".acme.example"]

[[bounce_rules]]
category = "inactive"
text = ["gone fishing"]

[bounce_streak]
mailbox_full_count = 5
mailbox_full_days = 30
"#,
        )
        .unwrap();
        let c = p.bounce_classifier();
        let v = c.classify(&Evidence {
            code: Some(554),
            status: crate::smtp::reply::Status::parse("5.7.1"),
            text: "please SLOW DOWN, spam",
            domain: "mx.acme.example",
        });
        assert_eq!(
            (v.category, v.rule.as_str()),
            (Category::RateLimited, "acme says slow down")
        );
        let v = c.classify(&Evidence {
            code: Some(550),
            text: "Gone fishing",
            ..Default::default()
        });
        assert_eq!(
            (v.category, v.rule.as_str()),
            (Category::Inactive, "bounce_rules[1]")
        );
        assert_eq!(p.bounce_streak().count, 5);
        assert_eq!(p.bounce_streak().window.as_secs(), 30 * 86_400);
    }

    #[test]
    fn bad_rules_are_every_one_reported() {
        let e = Policy::from_toml(
            "t",
            r#"
[[bounce_rules]]
category = "lost"
status = "9.9.9"
code = 99
text = ""

[[bounce_rules]]
category = "other"

[bounce_streak]
mailbox_full_count = 0
mailbox_full_days = 1000
"#,
        )
        .unwrap_err()
        .to_string();
        for want in [
            "bounce_rules[0].category: \"lost\" is not one of invalid_recipient",
            "bounce_rules[0].status: \"9.9.9\" is not a status pattern",
            "bounce_rules[0].code: 99 is not a reply code",
            "bounce_rules[0].text: entries must be 1 to 200 octets",
            "bounce_rules[1]: a rule needs status, code or text",
            "bounce_streak.mailbox_full_count: must be between 1 and 100",
            "bounce_streak.mailbox_full_days: must be between 1 and 365",
        ] {
            assert!(e.contains(want), "{want}\n{e}");
        }
    }
}
