//! Who an account may say it is: its `from_domains` (the header From domain, and the
//! envelope sender's, must be one of them or a subdomain), the DKIM keys that sign for
//! them, and the Feedback-ID sender id.

use std::path::PathBuf;

use crate::config::reader::Section;

/// A DKIM key of an account, loaded when the policy is.
#[derive(Debug, Clone)]
pub struct DkimConfig {
    /// The signing domain (`d=`): one of the account's from_domains or a parent of one.
    pub domain: String,
    pub selector: String,
    /// PEM private key: RSA (2048 bits or more) or Ed25519.
    pub private_key: PathBuf,
    pub key: std::sync::Arc<crate::dkim::DkimKey>,
}

/// The identity keys of one account section.
pub struct Identity {
    pub from_domains: Vec<String>,
    pub dkim: Vec<DkimConfig>,
    pub feedback_id: Option<String>,
    pub transactional_unsubscribe: bool,
}

use crate::smtp::address::canonical_domain;

/// Whether `domain` (canonical) is one of `allowed` or a subdomain of one.
pub fn domain_allowed(allowed: &[String], domain: &str) -> bool {
    allowed.iter().any(|a| {
        domain == a
            || (domain.len() > a.len()
                && domain.ends_with(a.as_str())
                && domain.as_bytes()[domain.len() - a.len() - 1] == b'.')
    })
}

pub fn read_identity(s: &mut Section<'_>) -> Identity {
    let from_domains: Vec<String> = s
        .get::<Vec<String>>("from_domains")
        .unwrap_or_default()
        .into_iter()
        .filter_map(|d| {
            let c = canonical_domain(&d);
            if c.is_none() {
                s.problem("from_domains", format!("{d:?} is not a domain"));
            }
            c
        })
        .collect();
    let dkim = s
        .array_sections("dkim")
        .into_iter()
        .filter_map(|mut k| {
            let domain = k.get::<String>("domain");
            let selector = k.get::<String>("selector");
            let private_key = k.get_path("private_key");
            let domain = match domain.as_deref().map(canonical_domain) {
                Some(Some(d)) => Some(d),
                Some(None) => {
                    k.problem("domain", "not a domain");
                    None
                }
                None => {
                    k.problem("domain", "missing");
                    None
                }
            };
            if let Some(d) = &domain
                && !from_domains
                    .iter()
                    .any(|f| domain_allowed(std::slice::from_ref(d), f))
            {
                k.problem(
                    "domain",
                    format!("{d} signs none of the account's from_domains"),
                );
            }
            let selector = match selector {
                Some(sel)
                    if !sel.is_empty()
                        && sel.split('.').all(|l| {
                            !l.is_empty()
                                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        }) =>
                {
                    Some(sel)
                }
                Some(sel) => {
                    k.problem("selector", format!("{sel:?} is not a DKIM selector"));
                    None
                }
                None => {
                    k.problem("selector", "missing");
                    None
                }
            };
            if private_key.is_none() {
                k.problem("private_key", "missing");
            }
            let (domain, selector, private_key) = (domain?, selector?, private_key?);
            match crate::dkim::DkimKey::from_pem_file(&domain, &selector, &private_key) {
                Ok(key) => Some(DkimConfig {
                    domain,
                    selector,
                    private_key,
                    key: std::sync::Arc::new(key),
                }),
                Err(e) => {
                    k.problem("private_key", e.to_string());
                    None
                }
            }
        })
        .collect();
    let feedback_id = s.get::<String>("feedback_id");
    if let Some(f) = &feedback_id
        && (f.is_empty()
            || f.len() > 64
            || !f
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'))
    {
        s.problem("feedback_id", "use 1-64 of a-z, A-Z, 0-9, '-', '_' and '.'");
    }
    Identity {
        from_domains,
        dkim,
        feedback_id,
        transactional_unsubscribe: s.get_or("transactional_unsubscribe", false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_and_subdomains() {
        let allowed = vec!["example.com".to_string()];
        assert!(domain_allowed(&allowed, "example.com"));
        assert!(domain_allowed(&allowed, "news.example.com"));
        assert!(!domain_allowed(&allowed, "badexample.com"));
        assert!(!domain_allowed(&allowed, "example.com.evil"));
        assert_eq!(
            canonical_domain("Bücher.Example.").as_deref(),
            Some("xn--bcher-kva.example")
        );
        assert_eq!(canonical_domain("not a domain"), None);
    }
}
