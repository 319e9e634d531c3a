//! What a campaign's canary did ([`Figures`]), and the named counts the cluster keeps them
//! in (see [`super::shared`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What the canary did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Figures {
    /// Canary recipients handed to delivery.
    pub admitted: u64,
    /// Canary recipients finished (delivered or bounced).
    pub finished: u64,
    pub delivered: u64,
    pub hard_bounced: u64,
    pub complaints: u64,
    pub unsubscribes: u64,
    /// Addresses found dead (a permanent `invalid_recipient`, `bad_domain` or `inactive`
    /// bounce, in the relay's own transaction or mailed back later).
    #[serde(default)]
    pub inactive: u64,
    /// Bounces by category, in the relay's own transactions and mailed back.
    #[serde(default)]
    pub bounces: BTreeMap<String, u64>,
    /// Recipients who opened (the pixel), clicked (a tracked link), either.
    #[serde(default)]
    pub opened: u64,
    #[serde(default)]
    pub clicked: u64,
    #[serde(default)]
    pub engaged: u64,
}

impl Figures {
    /// The figures as named counts (bounces as `bounce:CATEGORY`), the form the cluster
    /// keeps them in; zero counts are left out.
    pub fn fields(&self) -> Vec<(String, u64)> {
        let plain = [
            ("admitted", self.admitted),
            ("finished", self.finished),
            ("delivered", self.delivered),
            ("hard_bounced", self.hard_bounced),
            ("complaints", self.complaints),
            ("unsubscribes", self.unsubscribes),
            ("inactive", self.inactive),
            ("opened", self.opened),
            ("clicked", self.clicked),
            ("engaged", self.engaged),
        ];
        plain
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .chain(
                self.bounces
                    .iter()
                    .map(|(k, v)| (format!("bounce:{k}"), *v)),
            )
            .filter(|(_, v)| *v > 0)
            .collect()
    }

    /// Figures from named counts (see [`Self::fields`]); unknown names are ignored.
    pub fn from_fields<'a>(fields: impl IntoIterator<Item = (&'a str, u64)>) -> Figures {
        let mut f = Figures::default();
        for (name, v) in fields {
            match name {
                "admitted" => f.admitted = v,
                "finished" => f.finished = v,
                "delivered" => f.delivered = v,
                "hard_bounced" => f.hard_bounced = v,
                "complaints" => f.complaints = v,
                "unsubscribes" => f.unsubscribes = v,
                "inactive" => f.inactive = v,
                "opened" => f.opened = v,
                "clicked" => f.clicked = v,
                "engaged" => f.engaged = v,
                _ => {
                    if let Some(category) = name.strip_prefix("bounce:") {
                        f.bounces.insert(category.to_string(), v);
                    }
                }
            }
        }
        f
    }

    /// What `self` counts beyond `base`, count by count (never below zero).
    pub fn beyond(&self, base: &Figures) -> Figures {
        let base: BTreeMap<String, u64> = base.fields().into_iter().collect();
        let fields: Vec<(String, u64)> = self
            .fields()
            .into_iter()
            .map(|(k, v)| {
                let b = base.get(&k).copied().unwrap_or(0);
                (k, v.saturating_sub(b))
            })
            .collect();
        Figures::from_fields(fields.iter().map(|(k, v)| (k.as_str(), *v)))
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Figures) {
        let mut mine: BTreeMap<String, u64> = self.fields().into_iter().collect();
        for (k, v) in other.fields() {
            *mine.entry(k).or_default() += v;
        }
        *self = Figures::from_fields(mine.iter().map(|(k, v)| (k.as_str(), *v)));
    }

    pub(super) fn is_zero(&self) -> bool {
        self.fields().is_empty()
    }
}
