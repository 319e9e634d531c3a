//! Sender identity at the end of DATA: the header From domain(s), and the envelope
//! sender's domain, must belong to the account (`from_domains`, subdomains included). The
//! envelope sender may also be the relay's own domain (its bounce and unsubscribe domain)
//! or null. An account without `from_domains` is not checked.

use crate::policy::Account;
use crate::policy::identity::domain_allowed;
use crate::smtp::address::canonical_domain;
use crate::smtp::{Address, Refusal};

pub(super) fn check(
    account: &Account,
    own_domain: &str,
    sender: Option<&Address>,
    content: &[u8],
) -> Result<(), Refusal> {
    if account.from_domains.is_empty() {
        return Ok(());
    }
    let allowed = |domain: &str| {
        canonical_domain(domain).is_some_and(|d| domain_allowed(&account.from_domains, &d))
    };
    if let Some(s) = sender
        && !allowed(s.domain())
        && !s.domain().eq_ignore_ascii_case(own_domain)
    {
        return Err(Refusal::SenderNotAccount(
            "envelope sender",
            s.domain().to_string(),
        ));
    }
    let header_end = memchr::memmem::find(content, b"\r\n\r\n").map_or(content.len(), |i| i + 4);
    let headers = mail_parser::MessageParser::new().parse_headers(&content[..header_end]);
    let from: Vec<String> = headers
        .as_ref()
        .and_then(|m| m.from())
        .map(|list| {
            list.iter()
                .filter_map(|a| a.address().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if from.is_empty() {
        return Err(Refusal::NoFrom);
    }
    for f in from {
        let domain = f.rsplit_once('@').map_or("", |(_, d)| d);
        if !allowed(domain) {
            return Err(Refusal::SenderNotAccount("From", domain.to_string()));
        }
    }
    Ok(())
}

/// The relay operator's own contact details (`operator_contacts` in the policy) may not
/// appear in what a customer's message says: Subject, and every text and HTML body,
/// decoded. Returns the first one found.
pub(super) fn check_operator_contacts(contacts: &[String], content: &[u8]) -> Result<(), Refusal> {
    if contacts.is_empty() {
        return Ok(());
    }
    let Some(message) = mail_parser::MessageParser::new().parse(content) else {
        return Ok(());
    };
    let mut texts: Vec<String> = Vec::new();
    if let Some(subject) = message.subject() {
        texts.push(subject.to_lowercase());
    }
    for i in 0..message.text_body_count() + message.html_body_count() {
        let body = if i < message.text_body_count() {
            message.body_text(i)
        } else {
            message.body_html(i - message.text_body_count())
        };
        if let Some(b) = body {
            texts.push(b.to_lowercase());
        }
    }
    for c in contacts {
        if texts.iter().any(|t| t.contains(c.as_str())) {
            return Err(Refusal::OperatorContact);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_and_envelope_sender_must_be_the_accounts() {
        let policy = crate::policy::Policy::from_toml(
            "t",
            "[accounts.shop]\nfrom_domains = [\"shop.example\"]\n[accounts.open]\n",
        )
        .unwrap();
        let shop = policy.account("shop").unwrap();
        let sender = |s: &str| Address::parse(s).unwrap();
        let msg = |from: &str| format!("From: {from}\r\nSubject: x\r\n\r\nbody\r\n").into_bytes();
        let ok = check(
            shop,
            "relay.test",
            Some(&sender("b@news.shop.example")),
            &msg("Shop <hi@shop.example>"),
        );
        assert_eq!(ok, Ok(()));
        assert_eq!(
            check(shop, "relay.test", None, &msg("hi@SHOP.example")),
            Ok(())
        );
        assert_eq!(
            check(
                shop,
                "relay.test",
                Some(&sender("bounce@relay.test")),
                &msg("hi@shop.example")
            ),
            Ok(())
        );
        assert_eq!(
            check(
                shop,
                "relay.test",
                None,
                &msg("a@shop.example, b@other.example")
            ),
            Err(Refusal::SenderNotAccount("From", "other.example".into()))
        );
        assert_eq!(
            check(
                shop,
                "relay.test",
                Some(&sender("x@evil.example")),
                &msg("hi@shop.example")
            ),
            Err(Refusal::SenderNotAccount(
                "envelope sender",
                "evil.example".into()
            ))
        );
        assert_eq!(
            check(shop, "relay.test", None, b"Subject: no from\r\n\r\nx\r\n"),
            Err(Refusal::NoFrom)
        );
        let open = policy.account("open").unwrap();
        assert_eq!(
            check(open, "relay.test", None, b"Subject: x\r\n\r\n"),
            Ok(())
        );
    }

    #[test]
    fn operator_contacts_may_not_appear_in_customer_text() {
        let contacts = vec![
            "abuse@relay.example".to_string(),
            "relay.example".to_string(),
        ];
        let clean = b"Subject: hi\r\n\r\nHello\r\n";
        assert_eq!(check_operator_contacts(&contacts, clean), Ok(()));
        for bad in [
            &b"Subject: write to ABUSE@relay.example\r\n\r\nHello\r\n"[..],
            b"Subject: hi\r\nContent-Type: text/html\r\n\r\n<a href=\"https://relay.example/x\">x</a>\r\n",
            b"Subject: hi\r\nContent-Transfer-Encoding: base64\r\n\r\ndmlzaXQgcmVsYXkuZXhhbXBsZQ==\r\n",
        ] {
            assert_eq!(
                check_operator_contacts(&contacts, bad),
                Err(Refusal::OperatorContact),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            check_operator_contacts(&[], b"Subject: relay.example\r\n\r\n"),
            Ok(())
        );
    }
}
