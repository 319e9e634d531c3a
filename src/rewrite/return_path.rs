//! The relay's own return path (VERP): each message goes out with the envelope sender
//! `<prefix>+<token>@<domain>`, the token sealed ([`TokenKeys::seal_return_path`]) to name
//! the queue id, the recipient, the account, the list and the campaign. A bounce mailed
//! back to it days later says exactly what it is about, and nobody can make one up.
//!
//! The domain is the account's `bounce_domain` (a subdomain it points at the relay, so
//! SPF and DMARC align with its From domain), else `[bounces] domain`. The client's own
//! envelope sender stays in the spooled envelope for the relay's notices (DSNs, campaign
//! reports). A message with the null sender (a bounce, a DSN the relay wrote) keeps it:
//! notices never get a return path. A path longer than RFC 5321's 256 octets, or a local
//! part longer than the 200 the relay takes back (a very long address or campaign name),
//! is not made: the message keeps its sender.

use std::sync::Arc;

use crate::envelope::Envelope;
use crate::rewrite::token::{ReturnPath, TokenError, TokenKeys};
use crate::smtp::Address;

/// RFC 5321 §4.5.3.1.3: a path (address and brackets) is at most 256 octets.
const MAX_PATH: usize = 256;
/// The longest local part the relay itself takes at RCPT (`optin-smtp`'s limit): a
/// return path it would refuse when mailed back is never made.
const MAX_LOCAL: usize = 200;

/// Makes and recognises return paths.
#[derive(Debug, Clone)]
pub struct ReturnPaths {
    pub keys: Arc<TokenKeys>,
    /// The local part before `+`, lower case.
    pub prefix: String,
    /// The domain when the account names none, lower case.
    pub domain: String,
}

impl ReturnPaths {
    /// The envelope sender for recipient `rcpt` of `env`, the account's `bounce_domain`
    /// given; `None` keeps the message's own sender.
    pub fn sender_for(
        &self,
        env: &Envelope,
        rcpt: usize,
        bounce_domain: Option<&str>,
    ) -> Option<String> {
        if env.sender.is_none() || env.generated_dsn {
            return None;
        }
        let token = self.keys.seal_return_path(&ReturnPath {
            id: env.id,
            account: env.account.clone(),
            list: env.list.clone().unwrap_or_default(),
            campaign: env.campaign.clone().unwrap_or_default(),
            address: env.recipients.get(rcpt)?.address.clone(),
        });
        let domain = bounce_domain.unwrap_or(&self.domain);
        let path = format!("{}+{token}@{domain}", self.prefix);
        if path.len() + 2 > MAX_PATH || self.prefix.len() + 1 + token.len() > MAX_LOCAL {
            crate::metrics::return_path_too_long();
            return None;
        }
        Some(path)
    }

    /// The token of `to` when it has the return-path form: `<prefix>+<token>@<domain>`,
    /// `domain` being the relay's or one of `account_domains`. Says nothing of whether the
    /// token is genuine.
    pub fn token_of<'a>(&self, to: &'a Address, account_domains: &[&str]) -> Option<&'a str> {
        let domain = to.domain();
        if !domain.eq_ignore_ascii_case(&self.domain)
            && !account_domains
                .iter()
                .any(|d| domain.eq_ignore_ascii_case(d))
        {
            return None;
        }
        let local = to.local_part();
        let (prefix, token) = local.split_once('+')?;
        (prefix.eq_ignore_ascii_case(&self.prefix) && !token.is_empty()).then_some(token)
    }

    /// What a return-path token names.
    pub fn open(&self, token: &str) -> Result<ReturnPath, TokenError> {
        self.keys.open_return_path(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{QueueId, Recipient};

    fn paths() -> ReturnPaths {
        ReturnPaths {
            keys: Arc::new(TokenKeys::from_keys(&[(3, [9; 32])])),
            prefix: "bounces".into(),
            domain: "relay.example".into(),
        }
    }

    fn env() -> Envelope {
        let mut e = Envelope::transactional(
            QueueId(0x1234_5678_9abc_def0),
            0,
            "shop",
            Some("news@shop.example".into()),
            [
                Recipient::new("jane.doe@example.net"),
                Recipient::new("joe@example.org"),
            ],
        );
        e.list = Some("weekly".into());
        e.campaign = Some("spring".into());
        e
    }

    #[test]
    fn each_recipient_gets_a_sealed_path_that_names_it() {
        let p = paths();
        let e = env();
        let a = p.sender_for(&e, 0, None).unwrap();
        let b = p.sender_for(&e, 1, Some("bounce.shop.example")).unwrap();
        assert!(
            a.starts_with("bounces+") && a.ends_with("@relay.example"),
            "{a}"
        );
        assert!(b.ends_with("@bounce.shop.example"), "{b}");
        assert!(!a.contains("jane") && !a.contains("shop"), "{a}");
        assert!(a.len() < 200, "{} octets", a.len());
        let to = Address::parse(
            &a.to_ascii_uppercase()
                .replace("@RELAY.EXAMPLE", "@relay.example"),
        )
        .unwrap();
        let token = p.token_of(&to, &[]).unwrap();
        let r = p.open(token).unwrap();
        assert_eq!(r.id, e.id);
        assert_eq!(
            (r.account.as_str(), r.list.as_str(), r.campaign.as_str()),
            ("shop", "weekly", "spring")
        );
        assert_eq!(r.address, "jane.doe@example.net");
        let to = Address::parse(&b).unwrap();
        assert!(p.token_of(&to, &[]).is_none(), "not the relay's domain");
        let token = p.token_of(&to, &["bounce.shop.example"]).unwrap();
        assert_eq!(p.open(token).unwrap().address, "joe@example.org");
    }

    #[test]
    fn notices_keep_the_null_sender_and_long_paths_are_not_made() {
        let p = paths();
        let mut e = env();
        e.sender = None;
        assert_eq!(p.sender_for(&e, 0, None), None);
        let mut e = env();
        e.generated_dsn = true;
        assert_eq!(p.sender_for(&e, 0, None), None);
        let mut e = env();
        e.recipients[0].address = format!("{}@example.net", "x".repeat(40));
        e.campaign = Some("c".repeat(30));
        assert_eq!(p.sender_for(&e, 0, None), None, "local part over 200");
        // A typical one fits, and the relay takes it back.
        let fits = p.sender_for(&env(), 0, None).unwrap();
        assert!(crate::smtp::Address::parse(&fits).is_ok(), "{fits}");
    }

    #[test]
    fn forged_and_foreign_tokens_are_refused() {
        let p = paths();
        let path = p.sender_for(&env(), 0, None).unwrap();
        let to = Address::parse(&path).unwrap();
        let token = p.token_of(&to, &[]).unwrap();
        let mut flipped = token.to_string().into_bytes();
        let i = flipped.len() / 2;
        flipped[i] = if flipped[i] == b'a' { b'b' } else { b'a' };
        assert!(p.open(std::str::from_utf8(&flipped).unwrap()).is_err());
        // An unsubscribe token is no return-path token, even under the same key.
        let unsub = p.keys.seal(&crate::rewrite::token::Unsubscribe {
            account: "shop".into(),
            list: "weekly".into(),
            address: "jane.doe@example.net".into(),
        });
        assert!(p.open(&unsub).is_err());
        for junk in ["", "x", "!!", &"a".repeat(3000)] {
            assert!(p.open(junk).is_err(), "{junk:?}");
        }
        let other = Address::parse("someone+abc@relay.example").unwrap();
        assert!(p.token_of(&other, &[]).is_none());
        let bare = Address::parse("bounces@relay.example").unwrap();
        assert!(p.token_of(&bare, &[]).is_none());
    }
}
