//! An account's webhook as the policy declares it (`[accounts.NAME.webhook]`: `url`,
//! `secret`, `events`, `format`, `max_batch`, `username`/`password`), the kinds of event
//! it can be sent, the body formats, and the URL check. The worker
//! that signs and posts the events is `crate::governance::webhook`.

use std::net::IpAddr;

use hyper::Uri;

use crate::config::reader::Section;

/// Shortest secret the policy accepts.
pub const MIN_SECRET_LEN: usize = 16;

/// What happened to a recipient, as the account is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Unsubscribe,
    Complaint,
    /// Given up on for good: refused in the relay's own transaction, or mailed back later.
    Bounce,
    /// The next hop took it.
    Delivered,
    /// It will be tried again.
    Deferred,
    /// Given up after `[delivery] max_age` of deferrals.
    Expired,
    /// The open pixel was loaded.
    Opened,
    /// A tracked link was followed.
    Clicked,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Unsubscribe,
        Kind::Complaint,
        Kind::Bounce,
        Kind::Delivered,
        Kind::Deferred,
        Kind::Expired,
        Kind::Opened,
        Kind::Clicked,
    ];

    /// What a webhook without `events` is sent: what its recipients did to their consent,
    /// and the bounces.
    pub const DEFAULT: [Kind; 3] = [Kind::Unsubscribe, Kind::Complaint, Kind::Bounce];

    /// The name in the policy's `events`, the `event` field and `X-Optin-Event`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Unsubscribe => "unsubscribe",
            Kind::Complaint => "complaint",
            Kind::Bounce => "bounce",
            Kind::Delivered => "delivered",
            Kind::Deferred => "deferred",
            Kind::Expired => "expired",
            Kind::Opened => "opened",
            Kind::Clicked => "clicked",
        }
    }

    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// The shape of the POSTed body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The relay's own signed JSON: one event, or `{"events": […]}` with `max_batch` > 1.
    Optin,
    /// listmonk's bounce API (`POST /api/bounces`): bounces and complaints, one per POST,
    /// with HTTP basic auth.
    Listmonk,
    /// Amazon SES notifications as SNS delivers them (`notificationType` `Bounce`,
    /// `Complaint`, `Delivery`), one per POST.
    Ses,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Optin => "optin",
            Format::Listmonk => "listmonk",
            Format::Ses => "ses",
        }
    }

    /// The kinds this format can carry.
    pub fn carries(self, kind: Kind) -> bool {
        match self {
            Format::Optin => true,
            Format::Listmonk => matches!(kind, Kind::Bounce | Kind::Complaint),
            Format::Ses => matches!(kind, Kind::Bounce | Kind::Complaint | Kind::Delivered),
        }
    }
}

/// Most events in one POST.
pub const MAX_BATCH: usize = 1000;

/// An account's webhook, as the policy configures it.
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    /// `https://…`, or `http://` to a loopback host.
    pub url: String,
    /// The HMAC key of the signatures.
    pub secret: String,
    /// The kinds of event sent (default: [`Kind::DEFAULT`], those the format carries).
    pub events: Vec<Kind>,
    pub format: Format,
    /// Events per POST (`optin` only; 1: the event itself is the body).
    pub max_batch: usize,
    /// HTTP basic auth (`username`, `password`), sent when set (listmonk's API user).
    pub basic_auth: Option<(String, String)>,
}

impl Webhook {
    pub fn wants(&self, kind: Kind) -> bool {
        self.events.contains(&kind)
    }
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("events", &self.events)
            .field("format", &self.format)
            .field("max_batch", &self.max_batch)
            .finish_non_exhaustive()
    }
}

/// Reads `[accounts.NAME.webhook]` (`url`, `secret`, `events`), reporting a bad URL, a
/// short secret and unknown events as problems of the section.
pub fn read(s: &mut Section<'_>) -> Option<Webhook> {
    let url = match s.get::<String>("url") {
        None => {
            s.problem("url", "missing");
            None
        }
        Some(u) => match Target::parse(&u) {
            Ok(t) if !t.https && !is_loopback(&t.host) => {
                s.problem(
                    "url",
                    format!("{u:?}: http:// is allowed only for a loopback host; use https://"),
                );
                None
            }
            Ok(_) => Some(u),
            Err(e) => {
                s.problem("url", format!("{u:?}: {e}"));
                None
            }
        },
    };
    let secret = match s.get::<String>("secret") {
        None => {
            s.problem("secret", "missing");
            None
        }
        Some(secret) if secret.chars().count() < MIN_SECRET_LEN => {
            s.problem(
                "secret",
                format!("must be at least {MIN_SECRET_LEN} characters"),
            );
            None
        }
        Some(secret) => Some(secret),
    };
    let format = match s.get::<String>("format").as_deref() {
        None | Some("optin") => Format::Optin,
        Some("listmonk") => Format::Listmonk,
        Some("ses") => Format::Ses,
        Some(other) => {
            s.problem(
                "format",
                format!("{other:?} is not \"optin\", \"listmonk\" or \"ses\""),
            );
            Format::Optin
        }
    };
    let events = match s.get::<Vec<String>>("events") {
        None => Kind::DEFAULT
            .into_iter()
            .filter(|k| format.carries(*k))
            .collect(),
        Some(names) => {
            let mut kinds = Vec::new();
            for name in &names {
                match Kind::parse(name) {
                    Some(k) if !format.carries(k) => s.problem(
                        "events",
                        format!(
                            "the {} format cannot carry {name:?} events",
                            format.as_str()
                        ),
                    ),
                    Some(k) if !kinds.contains(&k) => kinds.push(k),
                    Some(_) => {}
                    None => {
                        let all: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
                        s.problem(
                            "events",
                            format!("{name:?} is not one of {}", all.join(", ")),
                        )
                    }
                }
            }
            if names.is_empty() {
                s.problem(
                    "events",
                    "names no event (remove the webhook table to send none)",
                );
            }
            kinds
        }
    };
    let max_batch = s.get_or("max_batch", 1i64);
    if !(1..=MAX_BATCH as i64).contains(&max_batch) {
        s.problem("max_batch", format!("must be between 1 and {MAX_BATCH}"));
    } else if max_batch > 1 && format != Format::Optin {
        s.problem(
            "max_batch",
            format!("the {} format takes one event per POST", format.as_str()),
        );
    }
    let basic_auth = match (s.get::<String>("username"), s.get::<String>("password")) {
        (Some(u), Some(p)) if !u.is_empty() && !u.contains(':') => Some((u, p)),
        (None, None) => None,
        _ => {
            s.problem(
                "username",
                "username (without ':') and password go together",
            );
            None
        }
    };
    if format == Format::Listmonk && basic_auth.is_none() {
        s.problem(
            "username",
            "the listmonk format needs username and password (its API user and token)",
        );
    }
    Some(Webhook {
        url: url?,
        secret: secret?,
        events,
        format,
        max_batch: max_batch.clamp(1, MAX_BATCH as i64) as usize,
        basic_auth,
    })
}

/// Where a webhook URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    /// Without brackets (an IPv6 address is bare).
    pub host: String,
    pub port: u16,
    /// `host[:port]` as written: the Host field.
    pub authority: String,
    /// Path and query, at least `/`.
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        if url.contains(['#', ' ', '\t', '\r', '\n']) {
            return Err("has a fragment or white space".into());
        }
        let uri: Uri = url.parse().map_err(|_| "is not a URL".to_string())?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("must start with https://".into()),
        };
        let authority = uri.authority().ok_or("has no host")?;
        if authority.as_str().contains('@') {
            return Err("must not carry a user name or password".into());
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err("has no host".into());
        }
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        Ok(Target {
            https,
            host: host.to_string(),
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            authority: authority.as_str().to_string(),
            path: if path.is_empty() { "/" } else { path }.to_string(),
        })
    }
}

/// `localhost` or a loopback address: where plain http is allowed (tests).
pub fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("https://hooks.example").unwrap();
        assert_eq!((t.https, t.port, t.path.as_str()), (true, 443, "/"));
        let t = Target::parse("http://[::1]:8080/a/b?c=d").unwrap();
        assert_eq!(t.host, "::1");
        assert_eq!(t.authority, "[::1]:8080");
        assert_eq!((t.port, t.path.as_str()), (8080, "/a/b?c=d"));
        assert!(is_loopback(&t.host) && is_loopback("127.0.0.9") && is_loopback("LocalHost"));
        assert!(!is_loopback("192.0.2.1") && !is_loopback("hooks.example"));
        for bad in [
            "hooks.example/x",
            "https://",
            "https://h/x#frag",
            "mailto:a@b",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
