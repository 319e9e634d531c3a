//! The policy file: who may send through the relay.
//!
//! An account is a sender organisation. A client is identified as an account either by
//! authenticating as one of its users (AUTH, only over TLS) or by connecting from one of its
//! networks. Nobody else may send: the relay is never an open relay. Later issues extend the
//! accounts with lists, streams, throttles and rules; the file is parsed as strictly as the
//! main config, with every problem reported at once.
//!
//! Deciding is pure: [`Policy::identify_by_ip`] and [`Policy::user`] look things up in a
//! policy that was validated when loaded; password checking lives in [`password`].

pub mod bounces;
pub mod content;
pub mod identity;
pub mod password;
pub mod rules;
pub mod sender;
pub mod streams;
pub mod throttle;
pub mod verdict;
pub mod webhook;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;

use crate::config::TlsLevel;
use crate::config::reader::{Collector, Problems, Section};
use crate::envelope::Stream;
pub use streams::MailingList;

/// The policy used when the config names no policy file: clients on loopback are the
/// account `local`, nobody else may send.
pub const EMBEDDED_DEFAULT_POLICY: &str = r#"
[accounts.local]
description = "Clients on this machine (embedded default policy)"
networks = ["127.0.0.0/8", "::1/128"]
streams = ["transactional"]
"#;

#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub description: String,
    pub networks: Vec<IpNet>,
    pub users: Vec<User>,
    /// The streams the account may use, and the one used when a message names none.
    pub streams: Vec<Stream>,
    pub default_stream: Stream,
    pub lists: Vec<MailingList>,
    /// The list used when a message names none.
    pub default_list: Option<String>,
    /// Domains the account sends as (header From, envelope sender); empty: not checked.
    pub from_domains: Vec<String>,
    pub dkim: Vec<identity::DkimConfig>,
    /// Gmail's Feedback-ID sender id; none: no Feedback-ID header.
    pub feedback_id: Option<String>,
    /// Transactional mail gets the unsubscribe headers too.
    pub transactional_unsubscribe: bool,
    /// Where unsubscribes, complaints and hard bounces are told (`[accounts.NAME.webhook]`).
    pub webhook: Option<webhook::Webhook>,
    /// The domain of this account's return path (`<prefix>+<token>@bounce_domain`); `None`:
    /// the relay's own (`[bounces] domain`).
    pub bounce_domain: Option<String>,
    /// Who the account is to its recipients: name, contact and postal address, branding.
    pub sender: sender::Sender,
}

impl Account {
    pub fn allows(&self, stream: Stream) -> bool {
        self.streams.contains(&stream)
    }

    pub fn list(&self, id: &str) -> Option<&MailingList> {
        self.lists.iter().find(|l| l.id == id)
    }

    /// The stream every message of this account uses, when a header cannot change it (the
    /// account may use only one).
    pub fn fixed_stream(&self) -> Option<Stream> {
        (self.streams.len() == 1).then_some(self.streams[0])
    }

    /// The list every marketing message of this account uses, when it has only one.
    pub fn fixed_list(&self) -> Option<&MailingList> {
        (self.lists.len() == 1).then(|| &self.lists[0])
    }
}

#[derive(Debug, Clone)]
pub struct User {
    pub username: String,
    /// An Argon2 PHC string (`$argon2id$v=19$…`), made with `optin-relay hash-password`.
    pub password_hash: String,
}

#[derive(Debug, Clone)]
pub struct Policy {
    accounts: Vec<Account>,
    /// (network, account index), most specific prefix first.
    networks: Vec<(IpNet, usize)>,
    /// username → (account index, user index).
    users: HashMap<String, (usize, usize)>,
    /// The relay operator's own contact addresses and domains (lower case), which customer
    /// messages may not contain.
    operator_contacts: Vec<String>,
    /// Delivery throttles by destination domain (lower case), `mx:` host suffix, or `*`.
    throttles: BTreeMap<String, throttle::Throttle>,
    /// Adaptive shaping: replies that slow down or suspend a destination.
    shaping: Vec<throttle::ShapingRule>,
    recovery: throttle::Recovery,
    /// Staged release of campaigns (`[campaigns]`).
    campaigns: rules::CampaignRules,
    /// Account health thresholds (`[health]`).
    health: rules::HealthRules,
    /// Destinations (domain or `*`) whose mail may only go over TLS.
    /// `[destinations."D"] tls`, by destination key (`*` for every other).
    destination_tls: HashMap<String, TlsLevel>,
    /// Prohibited content categories (`[content]`), compiled once per load.
    content: content::Content,
    /// `[[bounce_rules]]` ahead of the shipped rules.
    bounce_rules: crate::bounce::Classifier,
    /// `[bounce_streak]`.
    bounce_streak: bounces::Streak,
}

impl Policy {
    pub fn embedded_default() -> Policy {
        Policy::from_toml("(embedded default policy)", EMBEDDED_DEFAULT_POLICY)
            .expect("the embedded policy is valid")
    }

    pub fn load(path: &Path) -> Result<Policy, Problems> {
        let name = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Policy::parse(Collector::for_file(path), &text),
            Err(e) => {
                let c = Collector::new(name);
                c.problem("", format!("cannot read: {e}"));
                Err(c.finish(()).unwrap_err())
            }
        }
    }

    /// Parses policy text; relative paths (DKIM keys) stay relative to the working
    /// directory (a file's resolve against its directory: [`Policy::load`]).
    pub fn from_toml(file: &str, text: &str) -> Result<Policy, Problems> {
        Policy::parse(Collector::new(file), text)
    }

    fn parse(c: Collector, text: &str) -> Result<Policy, Problems> {
        let Some(table) = c.parse(text) else {
            return Err(c.finish(()).unwrap_err());
        };
        let content_rules: content::Content;
        let bounce_policy: (crate::bounce::Classifier, bounces::Streak);
        let (accounts, operator_contacts, throttles, shaping, recovery, destination_tls, campaigns) = {
            let mut root = c.root(&table);
            let accounts = root
                .named_sections("accounts")
                .into_iter()
                .map(|(name, mut section)| read_account(name, &mut section))
                .collect::<Vec<_>>();
            let contacts: Vec<String> = root
                .get::<Vec<String>>("operator_contacts")
                .unwrap_or_default()
                .into_iter()
                .map(|c| c.trim().to_lowercase())
                .collect();
            if contacts.iter().any(|c| c.len() < 4) {
                root.problem(
                    "operator_contacts",
                    "entries must be addresses or domains (4 characters or more)",
                );
            }
            let throttles: BTreeMap<String, throttle::Throttle> = root
                .named_sections("throttles")
                .into_iter()
                .map(|(name, mut section)| {
                    let key = match name.strip_prefix("mx:") {
                        Some(suffix) => format!("mx:{}", destination_key(suffix, &section)),
                        None => destination_key(&name, &section),
                    };
                    (key, throttle::read_throttle(&mut section))
                })
                .collect();
            let shaping: Vec<throttle::ShapingRule> = root
                .array_sections("shaping")
                .into_iter()
                .enumerate()
                .filter_map(|(i, mut section)| throttle::read_shaping(&mut section, i))
                .collect();
            let recovery = {
                let mut r = root.section("shaping_recovery");
                let d = throttle::Recovery::default();
                let step = r.get_or("step", d.step);
                if !(step > 0.0 && step <= 1.0) {
                    r.problem("step", "must be above 0 and at most 1");
                }
                throttle::Recovery {
                    step,
                    every: r
                        .get::<crate::config::units::HumanDuration>("every")
                        .map_or(d.every, |h| h.get()),
                }
            };
            let destination_tls: HashMap<String, TlsLevel> = root
                .named_sections("destinations")
                .into_iter()
                .map(|(name, mut section)| {
                    let key = destination_key(&name, &section);
                    let level = match section.get::<String>("tls").as_deref() {
                        None | Some("opportunistic") => TlsLevel::Opportunistic,
                        Some("required") => TlsLevel::Required,
                        Some("verify") => TlsLevel::Verify,
                        Some(other) => {
                            section.problem(
                                "tls",
                                format!(
                                    "{other:?} is not \"opportunistic\", \"required\" or \"verify\""
                                ),
                            );
                            TlsLevel::Opportunistic
                        }
                    };
                    (key, level)
                })
                .collect();
            let campaigns = (
                rules::read_campaigns(&mut root.section("campaigns")),
                rules::read_health(&mut root.section("health")),
            );
            content_rules = content::read(&mut root);
            bounce_policy = (
                bounces::read_rules(root.array_sections("bounce_rules")),
                bounces::read_streak(&mut root.section("bounce_streak")),
            );
            (
                accounts,
                contacts,
                throttles,
                shaping,
                recovery,
                destination_tls,
                campaigns,
            )
        };
        let mut policy = Policy::index(accounts, &c);
        policy.operator_contacts = operator_contacts;
        policy.throttles = throttles;
        policy.shaping = shaping;
        policy.recovery = recovery;
        policy.destination_tls = destination_tls;
        policy.campaigns = campaigns.0;
        policy.health = campaigns.1;
        policy.content = content_rules;
        (policy.bounce_rules, policy.bounce_streak) = bounce_policy;
        c.finish(policy)
    }

    /// Builds the lookup tables, reporting clashes between accounts.
    fn index(accounts: Vec<Account>, c: &Collector) -> Policy {
        let mut networks = Vec::new();
        let mut users = HashMap::new();
        let mut seen_nets: HashMap<IpNet, &str> = HashMap::new();
        for (ai, account) in accounts.iter().enumerate() {
            for net in &account.networks {
                if let Some(other) = seen_nets.insert(*net, &account.name) {
                    c.problem(
                        format!("accounts.{}.networks", account.name),
                        format!("{net} is already a network of account {other:?}"),
                    );
                }
                networks.push((*net, ai));
            }
            for (ui, user) in account.users.iter().enumerate() {
                if users.insert(user.username.clone(), (ai, ui)).is_some() {
                    c.problem(
                        format!("accounts.{}.users[{ui}].username", account.name),
                        format!("username {:?} is used twice", user.username),
                    );
                }
            }
        }
        networks.sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        Policy {
            accounts,
            networks,
            users,
            operator_contacts: Vec::new(),
            throttles: BTreeMap::new(),
            shaping: Vec::new(),
            recovery: throttle::Recovery::default(),
            destination_tls: HashMap::new(),
            campaigns: Default::default(),
            health: Default::default(),
            content: content::Content::default(),
            bounce_rules: Default::default(),
            bounce_streak: Default::default(),
        }
    }

    pub fn accounts(&self) -> &[Account] {
        &self.accounts
    }

    pub fn account(&self, name: &str) -> Option<&Account> {
        self.accounts.iter().find(|a| a.name == name)
    }

    /// The account whose networks contain `ip` (the most specific network wins).
    pub fn identify_by_ip(&self, ip: IpAddr) -> Option<&Account> {
        let ip = canonical_ip(ip);
        self.networks
            .iter()
            .find(|(net, _)| net.contains(&ip))
            .map(|(_, i)| &self.accounts[*i])
    }

    /// The account and user record for an AUTH username.
    pub fn user(&self, username: &str) -> Option<(&Account, &User)> {
        let (ai, ui) = *self.users.get(username)?;
        let account = &self.accounts[ai];
        Some((account, &account.users[ui]))
    }

    /// The throttle for a destination domain (its own keys, the rest from `*`).
    pub fn throttle(&self, domain: &str) -> throttle::Throttle {
        let all = self.throttles.get("*").copied().unwrap_or_default();
        match self.throttles.get(domain) {
            Some(t) => t.or(all),
            None => all,
        }
    }

    /// The throttle for a site (see [`crate::delivery::transport::Site`]) with MX hosts
    /// `hosts`: the first `mx:SUFFIX` key naming one of the hosts (or a parent domain of
    /// one), else the first (by name) key of a domain the site `carries`, with the rest
    /// from `*`.
    pub fn site_throttle<'a>(
        &self,
        hosts: impl Iterator<Item = &'a str> + Clone,
        carries: impl Fn(&str) -> bool,
    ) -> throttle::Throttle {
        let all = self.throttles.get("*").copied().unwrap_or_default();
        let by_mx = self.throttles.iter().find(|(key, _)| {
            key.strip_prefix("mx:").is_some_and(|suffix| {
                hosts.clone().any(|h| {
                    h == suffix
                        || h.strip_suffix(suffix)
                            .is_some_and(|rest| rest.ends_with('.'))
                })
            })
        });
        let own = by_mx.or_else(|| {
            self.throttles
                .iter()
                .find(|(key, _)| *key != "*" && !key.starts_with("mx:") && carries(key))
        });
        match own {
            Some((_, t)) => t.or(all),
            None => all,
        }
    }

    /// The TLS mail to `domain` must have (`[destinations.D] tls`, else `*`'s):
    /// `required` never goes in plain text, `verify` also needs a certificate valid for
    /// the server's name.
    pub fn destination_tls(&self, domain: &str) -> TlsLevel {
        self.destination_tls
            .get(domain)
            .or_else(|| self.destination_tls.get("*"))
            .copied()
            .unwrap_or(TlsLevel::Opportunistic)
    }

    /// The first shaping rule a reply matches.
    pub fn shaping_rule(&self, code: u16, text: &str) -> Option<&throttle::ShapingRule> {
        self.shaping.iter().find(|r| r.matches(code, text))
    }

    /// The bounce classifier: `[[bounce_rules]]`, then the shipped rules.
    pub fn bounce_classifier(&self) -> &crate::bounce::Classifier {
        &self.bounce_rules
    }

    pub fn bounce_streak(&self) -> bounces::Streak {
        self.bounce_streak
    }

    pub fn campaign_rules(&self) -> rules::CampaignRules {
        self.campaigns
    }

    pub fn health_rules(&self) -> rules::HealthRules {
        self.health
    }

    /// The prohibited content categories, checked on every submitted message.
    pub fn content(&self) -> &content::Content {
        &self.content
    }

    pub fn shaping_recovery(&self) -> throttle::Recovery {
        self.recovery
    }

    pub fn operator_contacts(&self) -> &[String] {
        &self.operator_contacts
    }

    /// Whether any account can authenticate at all (AUTH is only offered if so).
    pub fn has_users(&self) -> bool {
        !self.users.is_empty()
    }
}

/// The key of a per-destination table (`[throttles.X]`, `[destinations.X]`): `*` or a
/// lower-case A-label domain, as routes name destinations.
fn destination_key(name: &str, section: &Section<'_>) -> String {
    let key = name.to_ascii_lowercase();
    if key != "*" && crate::smtp::address::canonical_domain(&key).as_deref() != Some(key.as_str()) {
        section.problem("", "use \"*\" or a lower-case (A-label) domain");
    }
    key
}

/// A share (a rate threshold) between 0 and 1, when given.
fn share(s: &mut Section<'_>, key: &str) -> Option<f64> {
    let v = s.get::<f64>(key)?;
    if !(0.0..=1.0).contains(&v) {
        s.problem(key, "must be a share between 0 and 1 (0.003 is 0.3%)");
    }
    Some(v)
}

/// IPv4-mapped IPv6 clients (`::ffff:192.0.2.1`, seen on dual-stack listeners) match IPv4
/// networks.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The widest networks an account may trust without `allow_any_network = true`: a /8 of
/// IPv4 or a /16 of IPv6. `0.0.0.0/0` (or two /1s) would make the relay an open relay for
/// that account's mail.
pub const MIN_V4_PREFIX: u8 = 8;
pub const MIN_V6_PREFIX: u8 = 16;

fn too_wide(net: &IpNet) -> bool {
    match net {
        IpNet::V4(n) => n.prefix_len() < MIN_V4_PREFIX,
        IpNet::V6(n) => n.prefix_len() < MIN_V6_PREFIX,
    }
}

/// The unit every per-client limit counts by: an IPv4 address, or the /64 an IPv6
/// address is in (one host usually holds a whole /64, so counting single IPv6 addresses
/// would let it open limits 2^64 times over). IPv4-mapped addresses count as IPv4.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match canonical_ip(ip) {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

fn read_account(name: String, s: &mut Section<'_>) -> Account {
    if !streams::valid_name(&name) {
        s.problem("", "account names use a-z, 0-9, - and _ only (at most 64)");
    }
    let description = s.get_or("description", String::new());
    let allow_any_network = s.get_or("allow_any_network", false);
    let networks: Vec<IpNet> = s
        .get::<Vec<String>>("networks")
        .unwrap_or_default()
        .into_iter()
        .filter_map(|n| {
            let parsed = n
                .parse::<IpNet>()
                .or_else(|_| n.parse::<IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => Some(net.trunc()),
                Err(_) => {
                    s.problem("networks", format!("{n:?} is not an address or network"));
                    None
                }
            }
        })
        .collect();
    for net in &networks {
        if too_wide(net) && !allow_any_network {
            s.problem(
                "networks",
                format!(
                    "{net} trusts a large part of the Internet (IPv4 wider than /{MIN_V4_PREFIX}, \
                     IPv6 wider than /{MIN_V6_PREFIX}): every host in it could send as this \
                     account; set allow_any_network = true if that is really meant"
                ),
            );
        }
    }
    let users = s
        .array_sections("users")
        .into_iter()
        .filter_map(|mut u| {
            let username = u.get::<String>("username");
            let hash = u.get::<String>("password_hash");
            if username.is_none() {
                u.problem("username", "missing");
            }
            match &hash {
                None => u.problem(
                    "password_hash",
                    "missing (make one with `optin-relay hash-password`)",
                ),
                Some(h) => {
                    if let Err(e) = password::check_hash_format(h) {
                        u.problem("password_hash", e);
                    }
                }
            }
            Some(User {
                username: username.filter(|n| !n.is_empty())?,
                password_hash: hash?,
            })
        })
        .collect();
    let sending = streams::read_sending(s);
    let identity = identity::read_identity(s);
    let sender = sender::read_sender(s, &name, sending.streams.contains(&Stream::Marketing));
    if sending.streams.contains(&Stream::Marketing) && identity.from_domains.is_empty() {
        // Its sender identity is what keeps its bounce notices, which can carry its
        // content, away from people who never agreed to receive it.
        s.problem(
            "from_domains",
            "an account that may send marketing needs from_domains (its own sender domains)",
        );
    }
    // Read only when present: an absent table is no webhook, not a missing url.
    let webhook = s
        .get::<toml::Value>("webhook")
        .and_then(|_| webhook::read(&mut s.section("webhook")));
    let bounce_domain = s.get::<String>("bounce_domain").and_then(|d| {
        let canonical = crate::smtp::address::canonical_domain(&d).filter(|c| c.is_ascii());
        if canonical.is_none() {
            s.problem(
                "bounce_domain",
                format!("{d:?} is not a domain (write an international one in its xn-- form)"),
            );
        }
        canonical
    });
    Account {
        name,
        description,
        networks,
        users,
        streams: sending.streams,
        default_stream: sending.default_stream,
        lists: sending.lists,
        default_list: sending.default_list,
        from_domains: identity.from_domains,
        dkim: identity.dkim,
        feedback_id: identity.feedback_id,
        transactional_unsubscribe: identity.transactional_unsubscribe,
        webhook,
        bounce_domain,
        sender,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_trusts_loopback_only() {
        let p = Policy::embedded_default();
        assert_eq!(
            p.identify_by_ip("127.0.0.1".parse().unwrap()).unwrap().name,
            "local"
        );
        assert_eq!(
            p.identify_by_ip("::1".parse().unwrap()).unwrap().name,
            "local"
        );
        assert_eq!(
            p.identify_by_ip("::ffff:127.0.0.5".parse().unwrap())
                .unwrap()
                .name,
            "local"
        );
        assert!(p.identify_by_ip("192.0.2.1".parse().unwrap()).is_none());
        assert!(!p.has_users());
    }

    #[test]
    fn networks_covering_the_internet_need_allow_any_network() {
        for nets in [
            r#"["0.0.0.0/0"]"#,
            r#"["::/0"]"#,
            r#"["0.0.0.0/1", "128.0.0.0/1"]"#,
            r#"["10.0.0.0/7"]"#,
            r#"["2000::/3"]"#,
        ] {
            let text = format!("[accounts.a]\nnetworks = {nets}\n");
            let err = Policy::from_toml("p", &text).unwrap_err();
            assert!(
                err.list[0].message.contains("allow_any_network"),
                "{nets}: {err:?}"
            );
            let allowed = format!("[accounts.a]\nallow_any_network = true\nnetworks = {nets}\n");
            assert!(Policy::from_toml("p", &allowed).is_ok(), "{nets}");
        }
        assert!(
            Policy::from_toml(
                "p",
                "[accounts.a]\nnetworks = [\"10.0.0.0/8\", \"2001:db8::/32\"]\n"
            )
            .is_ok()
        );
    }

    #[test]
    fn clients_count_by_address_or_ipv6_64() {
        let key = |s: &str| client_key(s.parse().unwrap()).to_string();
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2:ffff:ffff:ffff:ffff"), "2001:db8:1:2::");
        assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
    }

    #[test]
    fn most_specific_network_wins() {
        let p = Policy::from_toml(
            "t",
            r#"
            [accounts.wide]
            networks = ["10.0.0.0/8"]
            [accounts.narrow]
            networks = ["10.1.2.0/24", "192.0.2.7"]
            "#,
        )
        .unwrap();
        assert_eq!(
            p.identify_by_ip("10.1.2.3".parse().unwrap()).unwrap().name,
            "narrow"
        );
        assert_eq!(
            p.identify_by_ip("10.9.9.9".parse().unwrap()).unwrap().name,
            "wide"
        );
        assert_eq!(
            p.identify_by_ip("192.0.2.7".parse().unwrap()).unwrap().name,
            "narrow"
        );
    }

    #[test]
    fn problems_are_collected() {
        let err = Policy::from_toml(
            "p.toml",
            r#"
            [accounts.a]
            networks = ["10.0.0.0/8", "nonsense"]
            colour = 1
            [[accounts.a.users]]
            username = "u"
            password_hash = "plaintext"
            [accounts.b]
            networks = ["10.0.0.0/8"]
            [[accounts.b.users]]
            username = "u"
            password_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$0mZbWXwUq5Tq1YgXbJ8uMbW2E8E6L2y9b0W4wq3xk6I"
            [accounts.Bad]
            "#,
        )
        .unwrap_err();
        let text = err.to_string();
        for needle in [
            "accounts.Bad: account names",
            "accounts.a.colour: unknown key",
            "accounts.a.networks: \"nonsense\"",
            "accounts.a.users[0].password_hash",
            "accounts.b.networks: 10.0.0.0/8 is already",
            "username \"u\" is used twice",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
    }
}
