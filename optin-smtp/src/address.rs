//! Mailbox and path syntax (RFC 5321 §4.1.2, extended to UTF-8 by RFC 6531).
//!
//! Parses the `<local@domain>` paths of MAIL and RCPT into an [`Address`] that keeps the
//! sender's spelling (local parts are case-sensitive on the wire) and knows where its domain
//! starts. Strict: a path that is not in angle brackets, a local part over 64 octets, a domain
//! that is not a hostname or address literal, or a control character is refused with a
//! reason the session turns into a reply. Source routes (`<@a,@b:user@c>`) are accepted and
//! dropped, as RFC 5321 requires.

use std::fmt;

/// A syntactically valid mailbox, `local-part@domain`, as the client spelled it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Address {
    text: Box<str>,
    at: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("the path must be enclosed in <>")]
    MissingBrackets,
    #[error("the address is empty")]
    Empty,
    #[error("the address has no @domain")]
    NoDomain,
    #[error("the local part is longer than 200 octets")]
    LocalTooLong,
    #[error("the domain is longer than 255 octets")]
    DomainTooLong,
    #[error("the path is longer than 256 octets")]
    PathTooLong,
    #[error("the local part is not valid")]
    BadLocalPart,
    #[error("the domain is not valid")]
    BadDomain,
    #[error("the address literal is not valid")]
    BadLiteral,
    #[error("the source route is not valid")]
    BadRoute,
}

/// RFC 5321 §4.5.3.1.1 names 64 octets but asks implementations to accept more where they
/// can (§4.5.3.1): the relay's own `unsubscribe+TOKEN@` addresses need about 100.
const MAX_LOCAL: usize = 200;
const MAX_DOMAIN: usize = 255;
const MAX_PATH: usize = 256;

impl Address {
    /// Parses a bare mailbox (`user@example.com`, no brackets).
    pub fn parse(mailbox: &str) -> Result<Address, AddressError> {
        if mailbox.is_empty() {
            return Err(AddressError::Empty);
        }
        if mailbox.len() > MAX_PATH {
            return Err(AddressError::PathTooLong);
        }
        let local_end = local_part_end(mailbox)?;
        let local = &mailbox[..local_end];
        if local.len() > MAX_LOCAL {
            return Err(AddressError::LocalTooLong);
        }
        let Some(domain) = mailbox[local_end..].strip_prefix('@') else {
            return Err(AddressError::NoDomain);
        };
        check_domain_or_literal(domain)?;
        Ok(Address {
            text: mailbox.into(),
            at: local_end as u32,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn local_part(&self) -> &str {
        &self.text[..self.at as usize]
    }

    /// The domain exactly as given (may be a U-label or an address literal).
    pub fn domain(&self) -> &str {
        &self.text[self.at as usize + 1..]
    }

    /// True when the address needs SMTPUTF8 to be transmitted.
    pub fn is_ascii(&self) -> bool {
        self.text.is_ascii()
    }

    /// The domain as a lower-case A-label hostname for DNS, or the literal unchanged.
    pub fn routing_domain(&self) -> String {
        routing_domain(self.domain())
    }
}

/// Lower-cases a domain and IDNA-encodes its U-labels; address literals pass unchanged.
pub fn routing_domain(domain: &str) -> String {
    if domain.starts_with('[') {
        return domain.to_string();
    }
    if domain.is_ascii() {
        return domain.to_ascii_lowercase();
    }
    idna::domain_to_ascii(domain).unwrap_or_else(|_| domain.to_lowercase())
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Address {
    // Addresses are personal data: Debug output shows only the domain, so that a stray
    // `{:?}` in a log line cannot leak a recipient.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address(…@{})", self.domain())
    }
}

/// Parses a path `<…>` at the start of `input` (after `FROM:`/`TO:`), returning the mailbox
/// (`None` for the null path `<>`) and the rest of the line (the ESMTP parameters).
pub fn parse_path(input: &str) -> Result<(Option<Address>, &str), AddressError> {
    let input = input.trim_start_matches(' ');
    let Some(inner) = input.strip_prefix('<') else {
        return Err(AddressError::MissingBrackets);
    };
    let close = find_closing_bracket(inner).ok_or(AddressError::MissingBrackets)?;
    let path = &inner[..close];
    let rest = &inner[close + 1..];
    if !(rest.is_empty() || rest.starts_with(' ')) {
        return Err(AddressError::MissingBrackets);
    }
    if path.is_empty() {
        return Ok((None, rest));
    }
    if path.len() > MAX_PATH {
        return Err(AddressError::PathTooLong);
    }
    let mailbox = strip_source_route(path)?;
    Ok((Some(Address::parse(mailbox)?), rest))
}

/// Finds the `>` that closes the path, skipping any inside a quoted local part.
fn find_closing_bracket(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut in_quotes = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_quotes => i += 1,
            b'"' => in_quotes = !in_quotes,
            b'>' if !in_quotes => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

fn strip_source_route(path: &str) -> Result<&str, AddressError> {
    if !path.starts_with('@') {
        return Ok(path);
    }
    let (route, mailbox) = path.split_once(':').ok_or(AddressError::BadRoute)?;
    for hop in route.split(',') {
        let domain = hop.strip_prefix('@').ok_or(AddressError::BadRoute)?;
        check_domain(domain).map_err(|_| AddressError::BadRoute)?;
    }
    Ok(mailbox)
}

/// Returns the byte index where the local part ends (the `@`), checking its syntax.
fn local_part_end(s: &str) -> Result<usize, AddressError> {
    let bytes = s.as_bytes();
    if bytes.first() == Some(&b'"') {
        let mut i = 1;
        loop {
            match bytes.get(i) {
                None => return Err(AddressError::BadLocalPart),
                Some(b'"') => return Ok(i + 1),
                Some(b'\\') => match bytes.get(i + 1) {
                    Some(c) if (32..=126).contains(c) => i += 2,
                    _ => return Err(AddressError::BadLocalPart),
                },
                Some(&c) if c == 32 || c == 33 || (35..=126).contains(&c) || c >= 0x80 => i += 1,
                Some(_) => return Err(AddressError::BadLocalPart),
            }
        }
    }
    let end = memchr::memrchr(b'@', bytes).ok_or(AddressError::NoDomain)?;
    let local = &bytes[..end];
    if local.is_empty()
        || local.first() == Some(&b'.')
        || local.last() == Some(&b'.')
        || local.windows(2).any(|w| w == b"..")
        || !local.iter().all(|&c| c == b'.' || is_atext(c))
    {
        return Err(AddressError::BadLocalPart);
    }
    Ok(end)
}

fn is_atext(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&c) || c >= 0x80
}

fn check_domain_or_literal(domain: &str) -> Result<(), AddressError> {
    if let Some(literal) = domain.strip_prefix('[') {
        let literal = literal.strip_suffix(']').ok_or(AddressError::BadLiteral)?;
        return check_literal(literal);
    }
    check_domain(domain)
}

fn check_literal(literal: &str) -> Result<(), AddressError> {
    if let Some(v6) = literal.strip_prefix("IPv6:") {
        return v6
            .parse::<std::net::Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| AddressError::BadLiteral);
    }
    literal
        .parse::<std::net::Ipv4Addr>()
        .map(|_| ())
        .map_err(|_| AddressError::BadLiteral)
}

/// A hostname: dot-separated labels of letters, digits and inner hyphens (UTF-8 letters
/// allowed, as U-labels under SMTPUTF8), at most 63 octets per label and 255 in all.
pub fn check_domain(domain: &str) -> Result<(), AddressError> {
    if domain.is_empty() {
        return Err(AddressError::BadDomain);
    }
    if domain.len() > MAX_DOMAIN {
        return Err(AddressError::DomainTooLong);
    }
    for label in domain.split('.') {
        let b = label.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 63
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
            && label.chars().all(|c| {
                c.is_ascii_alphanumeric()
                    || c == '-'
                    || (!c.is_ascii() && !c.is_control() && !c.is_whitespace())
            });
        if !ok {
            return Err(AddressError::BadDomain);
        }
    }
    Ok(())
}

/// Lower-cases and IDNA-encodes a domain; `None` if it is not one. The result is ASCII
/// (IDNA can leave a mark it cannot encode in place, which is then no domain).
pub fn canonical_domain(d: &str) -> Option<String> {
    let ascii = idna::domain_to_ascii(d.trim().trim_end_matches('.')).ok()?;
    (!ascii.is_empty() && ascii.is_ascii() && check_domain(&ascii).is_ok()).then_some(ascii)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(s: &str) -> Result<Option<String>, AddressError> {
        parse_path(s).map(|(a, _)| a.map(|a| a.to_string()))
    }

    #[test]
    fn accepts_ordinary_paths() {
        assert_eq!(path("<a@b.example>").unwrap().unwrap(), "a@b.example");
        assert_eq!(path("<>").unwrap(), None);
        assert_eq!(
            path(" <x.y+tag@EXAMPLE.com>").unwrap().unwrap(),
            "x.y+tag@EXAMPLE.com"
        );
        assert_eq!(
            path("<\"a b@c\"@d.example>").unwrap().unwrap(),
            "\"a b@c\"@d.example"
        );
        assert_eq!(path("<u@[192.0.2.1]>").unwrap().unwrap(), "u@[192.0.2.1]");
        assert_eq!(
            path("<u@[IPv6:2001:db8::1]>").unwrap().unwrap(),
            "u@[IPv6:2001:db8::1]"
        );
        assert_eq!(
            path("<@r1.example,@r2.example:u@d.example>")
                .unwrap()
                .unwrap(),
            "u@d.example"
        );
        assert_eq!(path("<用户@例子.广告>").unwrap().unwrap(), "用户@例子.广告");
    }

    #[test]
    fn returns_the_parameters() {
        let (a, rest) = parse_path("<a@b.example> SIZE=10 BODY=8BITMIME").unwrap();
        assert_eq!(a.unwrap().domain(), "b.example");
        assert_eq!(rest, " SIZE=10 BODY=8BITMIME");
    }

    #[test]
    fn refuses_bad_paths() {
        use AddressError::*;
        assert_eq!(path("a@b.example"), Err(MissingBrackets));
        assert_eq!(path("<a@b.example"), Err(MissingBrackets));
        assert_eq!(path("<a@b.example>x"), Err(MissingBrackets));
        assert_eq!(path("<ab.example>"), Err(NoDomain));
        assert_eq!(path("<a..b@c.example>"), Err(BadLocalPart));
        assert_eq!(path("<.a@c.example>"), Err(BadLocalPart));
        assert_eq!(path("<a b@c.example>"), Err(BadLocalPart));
        assert_eq!(path("<a@-c.example>"), Err(BadDomain));
        assert_eq!(path("<a@c..example>"), Err(BadDomain));
        assert_eq!(path("<a@c_d.example>"), Err(BadDomain));
        assert_eq!(path("<a@[300.1.1.1]>"), Err(BadLiteral));
        assert_eq!(
            path(&format!("<{}@c.example>", "x".repeat(201))),
            Err(LocalTooLong)
        );
        assert_eq!(path("<@bad_route:a@b.example>"), Err(BadRoute));
    }

    #[test]
    fn routing_domain_is_lowercase_a_label() {
        let a = Address::parse("User@Example.COM").unwrap();
        assert_eq!(a.routing_domain(), "example.com");
        assert_eq!(a.local_part(), "User");
        let a = Address::parse("u@bücher.example").unwrap();
        assert_eq!(a.routing_domain(), "xn--bcher-kva.example");
        assert!(!a.is_ascii());
    }

    #[test]
    fn debug_hides_the_local_part() {
        let a = Address::parse("secret.person@example.com").unwrap();
        assert_eq!(format!("{a:?}"), "Address(…@example.com)");
    }
}
