//! Who sent a feedback report, when it carries no unsubscribe token: a mailbox provider's
//! feedback loop signs its reports with DKIM, so a report whose valid DKIM signature is by
//! a domain on the operator's allow-list (`[complaints] reporters`) comes from that
//! provider. Anything else is a stranger's word and is never acted on.
//!
//! The check is bounded: only signatures by allow-listed domains are looked at (at most
//! [`MAX_SIGNATURES`] of them, so a report with a thousand `DKIM-Signature` fields costs
//! no more than one with three), each DNS lookup and the whole check have a time limit, and
//! a signature with a body length limit (`l=`) is not trusted, because content could be
//! added after the signed part.

use std::time::Duration;

use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator};

/// Signatures by allow-listed domains verified at most per report.
pub const MAX_SIGNATURES: usize = 3;
/// The whole check, DNS included.
pub const CHECK_TIME: Duration = Duration::from_secs(10);

/// Verifies reporters' DKIM signatures against an allow-list.
pub struct Reporters {
    /// Canonical (lower case, IDNA) domains; a signature by one of them or a subdomain.
    allowed: Vec<String>,
    authenticator: MessageAuthenticator,
}

impl std::fmt::Debug for Reporters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporters")
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}

impl Reporters {
    pub fn new(allowed: Vec<String>, resolver: hickory_resolver::TokioResolver) -> Reporters {
        Reporters {
            allowed,
            authenticator: MessageAuthenticator(resolver),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.allowed.is_empty()
    }

    /// The allow-listed domain whose valid DKIM signature `raw` carries, if any.
    pub async fn verified(&self, raw: &[u8]) -> Option<String> {
        if self.allowed.is_empty() {
            return None;
        }
        let mut message = AuthenticatedMessage::parse(raw)?;
        message.dkim_headers.retain(|h| {
            h.header.l == 0
                && crate::smtp::address::canonical_domain(&h.header.d)
                    .is_some_and(|d| self.allows(&d))
        });
        message.dkim_headers.truncate(MAX_SIGNATURES);
        if message.dkim_headers.is_empty() {
            return None;
        }
        // Malformed signatures are reported as errors; they prove nothing either way.
        message.errors.clear();
        let check = self.authenticator.verify_dkim(&message);
        let outputs = tokio::time::timeout(CHECK_TIME, check).await.ok()?;
        outputs
            .iter()
            .filter(|o| matches!(o.result(), DkimResult::Pass))
            .find_map(|o| {
                let d = crate::smtp::address::canonical_domain(&o.signature()?.d)?;
                self.allows(&d).then_some(d)
            })
    }

    fn allows(&self, domain: &str) -> bool {
        crate::policy::identity::domain_allowed(&self.allowed, domain)
    }
}
