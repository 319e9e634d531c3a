//! Policy files for the tests, built an account at a time rather than written out as TOML
//! in each test: the two accounts most tests use ([`Account::shop`], [`Account::news`])
//! and the keys and lists that vary.

use std::fmt;

/// The consent statement of most tests' lists.
pub const SIGNED_UP: &str = "You get {list} because you signed up.";
/// The consent statement of a newsletter.
pub const SUBSCRIBED: &str = "You subscribed to {list}.";

/// One `[accounts.NAME]` table with its lists and sub-tables; its `Display` is the TOML.
#[derive(Clone)]
pub struct Account {
    name: String,
    keys: Vec<(String, String)>,
    lists: Vec<(String, Vec<(String, String)>)>,
    tables: String,
}

impl Account {
    pub fn new(name: &str) -> Account {
        Account {
            name: name.to_string(),
            keys: Vec::new(),
            lists: Vec::new(),
            tables: String::new(),
        }
    }

    /// `shop`: mail from shop.example by all of loopback, marketing and transactional,
    /// transactional unless the message says otherwise.
    pub fn shop() -> Account {
        Account::new("shop")
            .domains(&["shop.example"])
            .networks(&["127.0.0.0/8"])
            .streams(&["marketing", "transactional"])
            .default_stream("transactional")
    }

    /// `news`: mail from news.example by 127.0.0.1, marketing and transactional, marketing
    /// unless the message says otherwise.
    pub fn news() -> Account {
        Account::new("news")
            .networks(&["127.0.0.1/32"])
            .streams(&["marketing", "transactional"])
            .default_stream("marketing")
            .domains(&["news.example"])
    }

    /// `news` at 127.0.0.2: marketing only, from sender.example, to its one list `weekly`
    /// (decided at RCPT, as nothing in the message can change it).
    pub fn newsletter() -> Account {
        Account::new("news")
            .domains(&["sender.example"])
            .networks(&["127.0.0.2/32"])
            .streams(&["marketing"])
            .list("weekly", SUBSCRIBED)
    }

    /// Sets `key` to `value` (TOML as it is written), in place of any earlier value.
    pub fn set(mut self, key: &str, value: impl fmt::Display) -> Account {
        self.keys.retain(|(k, _)| k != key);
        self.keys.push((key.to_string(), value.to_string()));
        self
    }

    pub fn networks(self, networks: &[&str]) -> Account {
        self.set("networks", array(networks))
    }

    /// `from_domains`: the domains its mail may come from.
    pub fn domains(self, domains: &[&str]) -> Account {
        self.set("from_domains", array(domains))
    }

    /// The streams it may use; one that may send marketing also gets the contact and postal
    /// address the policy requires of it (unless set already).
    pub fn streams(mut self, streams: &[&str]) -> Account {
        if streams.contains(&"marketing") {
            for (key, value) in [
                (
                    "contact_address",
                    format!("\"hello@{}.example\"", self.name),
                ),
                ("postal_address", "\"1 Main St, Springfield\"".to_string()),
            ] {
                if !self.keys.iter().any(|(k, _)| k == key) {
                    self.keys.push((key.to_string(), value));
                }
            }
        }
        self.set("streams", array(streams))
    }

    pub fn default_stream(self, stream: &str) -> Account {
        self.set("default_stream", string(stream))
    }

    pub fn description(self, text: &str) -> Account {
        self.set("description", string(text))
    }

    /// A list `name` with its consent statement.
    pub fn list(self, name: &str, statement: &str) -> Account {
        self.list_with(name, &[("consent_statement", statement)])
    }

    /// A list `name` that tracks opens and clicks (`track_opens`, `track_clicks`).
    pub fn tracked_list(mut self, name: &str, statement: &str) -> Account {
        self.lists.push((
            name.to_string(),
            vec![
                ("consent_statement".to_string(), string(statement)),
                ("track_clicks".to_string(), "true".to_string()),
                ("track_opens".to_string(), "true".to_string()),
            ],
        ));
        self
    }

    /// A list `name` with these keys (string values).
    pub fn list_with(mut self, name: &str, keys: &[(&str, &str)]) -> Account {
        let keys = keys
            .iter()
            .map(|(k, v)| (k.to_string(), string(v)))
            .collect();
        self.lists.push((name.to_string(), keys));
        self
    }

    /// A list `name` with these keys, their values written as TOML (arrays, numbers).
    pub fn list_toml(mut self, name: &str, keys: &[(&str, &str)]) -> Account {
        let keys = keys
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.lists.push((name.to_string(), keys));
        self
    }

    /// A DKIM key: `domain`'s `selector`, its private key in the file `key`.
    pub fn dkim(self, domain: &str, selector: &str, key: &str) -> Account {
        let keys = format!(
            "domain = {}\nselector = {}\nprivate_key = {}",
            string(domain),
            string(selector),
            string(key)
        );
        self.table("[dkim]", &keys)
    }

    /// A sub-table (`webhook`) or an array of tables (`[dkim]`), its keys as TOML text.
    pub fn table(mut self, name: &str, body: &str) -> Account {
        let header = match name.strip_prefix('[') {
            Some(array) => format!("[[accounts.{}.{}]]", self.name, array.trim_end_matches(']')),
            None => format!("[accounts.{}.{name}]", self.name),
        };
        self.tables += &format!("{header}\n{body}\n");
        self
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "[accounts.{}]", self.name)?;
        for (key, value) in &self.keys {
            writeln!(f, "{key} = {value}")?;
        }
        for (list, keys) in &self.lists {
            writeln!(f, "[accounts.{}.lists.{list}]", self.name)?;
            for (key, value) in keys {
                writeln!(f, "{key} = {value}")?;
            }
        }
        f.write_str(&self.tables)
    }
}

/// A policy of `accounts`, then `rest` (other tables, as TOML text).
pub fn policy(accounts: &[Account], rest: &str) -> String {
    let mut text: String = accounts.iter().map(Account::to_string).collect();
    text.push_str(rest);
    text
}

/// A TOML basic string.
pub fn string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A TOML array of strings.
pub fn array(items: &[&str]) -> String {
    let items: Vec<String> = items.iter().map(|i| string(i)).collect();
    format!("[{}]", items.join(", "))
}
