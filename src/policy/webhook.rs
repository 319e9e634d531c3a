//! An account's webhook as the policy declares it (`[accounts.NAME.webhook]`: `url`,
//! `secret`, `events`), the kinds of event it can be sent, and the URL check. The worker
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
    Bounce,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Unsubscribe, Kind::Complaint, Kind::Bounce];

    /// The name in the policy's `events`, the `event` field and `X-Optin-Event`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Unsubscribe => "unsubscribe",
            Kind::Complaint => "complaint",
            Kind::Bounce => "bounce",
        }
    }

    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// An account's webhook, as the policy configures it.
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    /// `https://…`, or `http://` to a loopback host.
    pub url: String,
    /// The HMAC key of the signatures.
    pub secret: String,
    /// The kinds of event sent (default: all).
    pub events: Vec<Kind>,
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
            .finish()
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
    let events = match s.get::<Vec<String>>("events") {
        None => Kind::ALL.to_vec(),
        Some(names) => {
            let mut kinds = Vec::new();
            for name in &names {
                match Kind::parse(name) {
                    Some(k) if !kinds.contains(&k) => kinds.push(k),
                    Some(_) => {}
                    None => s.problem(
                        "events",
                        format!("{name:?} is not unsubscribe, complaint or bounce"),
                    ),
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
    Some(Webhook {
        url: url?,
        secret: secret?,
        events,
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
