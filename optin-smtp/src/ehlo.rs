//! EHLO: the capability list the server announces, and the client's reading of a server's.

use super::reply::Reply;

/// What this server offers on one connection at one moment.
#[derive(Debug, Clone)]
pub struct Offer<'a> {
    pub hostname: &'a str,
    pub max_size: u64,
    /// STARTTLS is offered when TLS is configured and not yet active.
    pub starttls: bool,
    /// AUTH is offered only on a TLS-protected connection with accounts that have users.
    pub auth: bool,
}

/// The 250 reply to EHLO.
pub fn ehlo_reply(offer: &Offer<'_>, client_name: &str) -> Reply {
    let mut text = format!("{} greets {}", offer.hostname, client_name);
    for ext in [
        "PIPELINING",
        &format!("SIZE {}", offer.max_size),
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "DSN",
    ] {
        text.push('\n');
        text.push_str(ext);
    }
    if offer.starttls {
        text.push_str("\nSTARTTLS");
    }
    if offer.auth {
        text.push_str("\nAUTH PLAIN LOGIN");
    }
    Reply::plain(250, text)
}

/// The extensions a server announced, as far as the relay's client cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub pipelining: bool,
    /// `Some(0)` means SIZE without a limit.
    pub size: Option<u64>,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub enhanced_status_codes: bool,
    pub chunking: bool,
    pub dsn: bool,
    pub starttls: bool,
}

impl Capabilities {
    /// Reads the lines after the greeting line of a 250 EHLO reply.
    pub fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut caps = Capabilities::default();
        for line in reply.text.lines().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => caps.pipelining = true,
                "SIZE" => caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "8BITMIME" => caps.eight_bit_mime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "ENHANCEDSTATUSCODES" => caps.enhanced_status_codes = true,
                "CHUNKING" => caps.chunking = true,
                "DSN" => caps.dsn = true,
                "STARTTLS" => caps.starttls = true,
                _ => {}
            }
        }
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::parse_reply;

    #[test]
    fn server_offer_roundtrips_through_the_client_parser() {
        let offer = Offer {
            hostname: "relay.example",
            max_size: 1000,
            starttls: true,
            auth: false,
        };
        let wire = ehlo_reply(&offer, "client").to_bytes();
        let (reply, _) = parse_reply(&wire).unwrap().unwrap();
        let caps = Capabilities::from_ehlo(&reply);
        assert_eq!(
            caps,
            Capabilities {
                pipelining: true,
                size: Some(1000),
                eight_bit_mime: true,
                smtputf8: true,
                enhanced_status_codes: true,
                chunking: true,
                dsn: true,
                starttls: true,
            }
        );
        assert!(!String::from_utf8(wire).unwrap().contains("AUTH"));
    }

    #[test]
    fn auth_offered_when_asked() {
        let offer = Offer {
            hostname: "h",
            max_size: 1,
            starttls: false,
            auth: true,
        };
        let text = ehlo_reply(&offer, "c").text;
        assert!(text.ends_with("AUTH PLAIN LOGIN"));
        assert!(!text.contains("STARTTLS"));
    }
}
