//! The per-recipient rewrite stage, run at delivery time: unsubscribe tokens and headers,
//! the consent footer, and DKIM signing after every other change.
//!
//! [`Rewriter::prepare`] turns spooled content into what goes on the wire: marketing mail
//! (and transactional mail with a list when the account asks) gets its recipient's
//! unsubscribe headers and footer; every message of an account with DKIM keys for its From
//! domain is signed last, with each matching key. A list that opts in to engagement
//! tracking gets its links and open pixel ([`track`]) before the footer.

mod entity;
pub mod footer;
pub mod headers;
mod mime;
pub mod return_path;
pub mod statement;
pub mod token;
pub mod track;

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;

use arc_swap::ArcSwap;

use crate::consent::key::normalise;
use crate::envelope::Stream;
use crate::envelope::{Envelope, Recipient};
use crate::policy::MailingList;
use crate::policy::{Account, Policy};
use token::{TokenKeys, Unsubscribe};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    #[error("account {0:?} is no longer in the policy")]
    NoAccount(String),
    #[error("list {0:?} is no longer a list of the account")]
    NoList(String),
    #[error("the recipient address cannot be normalised")]
    BadRecipient,
    #[error("the consent footer cannot be added: {0}")]
    Footer(#[from] footer::FooterError),
}

/// The unsubscribe links of one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Links {
    pub token: String,
    /// `<public_url>/u/TOKEN`
    pub url: String,
    /// `unsubscribe+TOKEN@<mail_domain>`
    pub mailto: String,
}

/// Prepares spooled content for sending (see the module doc).
#[derive(Debug)]
pub struct Rewriter {
    policy: Arc<ArcSwap<Policy>>,
    keys: Arc<TokenKeys>,
    public_url: String,
    mail_domain: String,
}

impl Rewriter {
    pub fn new(
        policy: Arc<ArcSwap<Policy>>,
        keys: Arc<TokenKeys>,
        config: &crate::config::UnsubscribeConfig,
    ) -> Rewriter {
        Rewriter {
            policy,
            keys,
            public_url: config.public_url.clone(),
            mail_domain: config.mail_domain.clone(),
        }
    }

    /// The links for one recipient of `account`'s `list`.
    pub fn links(&self, account: &str, list: &str, normalised: &str) -> Links {
        let token = self.keys.seal(&Unsubscribe {
            account: account.to_string(),
            list: list.to_string(),
            address: normalised.to_string(),
        });
        Links {
            url: format!("{}/u/{token}", self.public_url),
            mailto: format!("unsubscribe+{token}@{}", self.mail_domain),
            token,
        }
    }

    fn wants_unsubscribe(env: &Envelope, account: &Account) -> bool {
        !env.generated_dsn
            && env.list.is_some()
            && (env.stream == Stream::Marketing || account.transactional_unsubscribe)
    }

    /// Whether each recipient of `env` gets content of its own.
    pub fn per_recipient(&self, env: &Envelope) -> bool {
        let policy = self.policy.load();
        match policy.account(&env.account) {
            Some(account) => Rewriter::wants_unsubscribe(env, account),
            // Marketing of a vanished account fails in prepare, recipient by recipient.
            None => env.stream == Stream::Marketing,
        }
    }

    /// The content to send to `rcpt` (or to every recipient when `None`).
    pub fn prepare(
        &self,
        env: &Envelope,
        rcpt: Option<&Recipient>,
        content: &Bytes,
    ) -> Result<Bytes, RewriteError> {
        match rcpt {
            Some(r) => self
                .prepare_each(env, &[r], content)
                .pop()
                .expect("one result per recipient")
                .map(Bytes::from),
            None => self.prepare_shared(env, content),
        }
    }

    /// The content for each of `rcpts`, each with its own unsubscribe link and footer. The
    /// message is parsed for the footer once; each recipient costs a splice and a signature.
    pub fn prepare_each(
        &self,
        env: &Envelope,
        rcpts: &[&Recipient],
        content: &[u8],
    ) -> Vec<Result<Vec<u8>, RewriteError>> {
        let policy = self.policy.load();
        let account = match policy.account(&env.account) {
            Some(a) if Rewriter::wants_unsubscribe(env, a) => a,
            _ => {
                let shared = self.shared(env, content).map(Cow::into_owned);
                return rcpts.iter().map(|_| shared.clone()).collect();
            }
        };
        let list_id = env
            .list
            .as_deref()
            .expect("wants_unsubscribe checked the list");
        let Some(list) = account.list(list_id) else {
            return rcpts
                .iter()
                .map(|_| Err(RewriteError::NoList(list_id.to_string())))
                .collect();
        };
        let plan = if env.stream == Stream::Marketing {
            match footer::Plan::new(content) {
                Ok(p) => Some(p),
                Err(e) => {
                    return rcpts
                        .iter()
                        .map(|_| Err(RewriteError::Footer(e.clone())))
                        .collect();
                }
            }
        } else {
            None
        };
        rcpts
            .iter()
            .map(|rcpt| {
                let normalised =
                    normalise(&rcpt.address).map_err(|_| RewriteError::BadRecipient)?;
                let links = self.links(&account.name, &list.id, &normalised);
                let with_footer;
                let body = match &plan {
                    Some(plan) => {
                        let r = statement::render(account, list, &links);
                        let footer = footer::Footer {
                            text: &r.text,
                            html: &r.html,
                        };
                        with_footer = match self.tracked(env, list, plan, content, &normalised)? {
                            // Tracking changed the bodies: the footer goes into the new ones.
                            Some(tracked) => {
                                footer::Plan::new(&tracked)?.apply(&tracked, &footer)?
                            }
                            None => plan.apply(content, &footer)?,
                        };
                        &with_footer[..]
                    }
                    None => content,
                };
                let added = self.list_fields(env, account, list, &links);
                let out = headers::rewrite(body, &added, true, &self.mail_domain);
                Ok(sign(account, out).into_owned())
            })
            .collect()
    }

    /// `content` with one recipient's engagement tracking (its list's `track_clicks`,
    /// `track_opens`); `None` when the list tracks nothing or nothing changed.
    fn tracked(
        &self,
        env: &Envelope,
        list: &MailingList,
        plan: &footer::Plan,
        content: &[u8],
        normalised: &str,
    ) -> Result<Option<Vec<u8>>, RewriteError> {
        if !list.tracks() {
            return Ok(None);
        }
        let tracking = track::Tracking {
            keys: &self.keys,
            public_url: &self.public_url,
            base: token::Engagement {
                click: false,
                id: env.id,
                account: env.account.clone(),
                list: list.id.clone(),
                campaign: env.campaign.clone().unwrap_or_default(),
                url: String::new(),
                address: normalised.to_string(),
            },
            clicks: list.track_clicks,
            opens: list.track_opens,
        };
        Ok(plan.transform_bodies(content, |html, body| tracking.body(html, body))?)
    }

    /// The content every recipient of `env` gets when nothing in it is personal: Date and
    /// Message-ID when missing, the signature. Content that needs none of it is passed on
    /// without a copy.
    fn prepare_shared(&self, env: &Envelope, content: &Bytes) -> Result<Bytes, RewriteError> {
        Ok(match self.shared(env, content)? {
            Cow::Borrowed(_) => content.clone(),
            Cow::Owned(v) => Bytes::from(v),
        })
    }

    fn shared<'a>(&self, env: &Envelope, content: &'a [u8]) -> Result<Cow<'a, [u8]>, RewriteError> {
        if env.generated_dsn {
            return Ok(Cow::Borrowed(content));
        }
        let policy = self.policy.load();
        let account = policy.account(&env.account);
        if account.is_none() && env.stream == Stream::Marketing {
            return Err(RewriteError::NoAccount(env.account.clone()));
        }
        let out = headers::rewrite(content, &[], false, &self.mail_domain);
        Ok(match account {
            Some(a) => sign(a, out),
            None => out,
        })
    }

    fn list_fields(
        &self,
        env: &Envelope,
        account: &Account,
        list: &MailingList,
        links: &Links,
    ) -> Vec<String> {
        let mut fields = vec![
            format!(
                "List-Unsubscribe: <{}>,\r\n <mailto:{}>\r\n",
                links.url, links.mailto
            ),
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n".to_string(),
            format!(
                "List-Id: {} <{}.{}.{}>\r\n",
                headers::phrase(&list.name),
                list.id,
                account.name,
                self.mail_domain
            ),
        ];
        if let Some(sender) = &account.feedback_id {
            fields.push(format!(
                "Feedback-ID: {}:{}:{}:{sender}\r\n",
                env.campaign.as_deref().unwrap_or("none"),
                list.id,
                account.name
            ));
        }
        fields
    }
}

/// Prepends a DKIM signature for each of the account's keys whose domain is the header
/// From domain or a parent of it (relaxed alignment, as DMARC wants).
fn sign<'a>(account: &Account, message: Cow<'a, [u8]>) -> Cow<'a, [u8]> {
    if account.dkim.is_empty() {
        return message;
    }
    let Some(from) = from_domain(&message) else {
        return message;
    };
    let mut signatures = String::new();
    for k in &account.dkim {
        if !crate::policy::identity::domain_allowed(std::slice::from_ref(&k.domain), &from) {
            continue;
        }
        match k.key.sign(&message) {
            Ok(header) => signatures.push_str(&header),
            Err(e) => {
                tracing::error!(domain = %k.domain, selector = %k.selector, error = %e, "DKIM signing failed")
            }
        }
    }
    if signatures.is_empty() {
        return message;
    }
    let mut out = Vec::with_capacity(signatures.len() + message.len());
    out.extend_from_slice(signatures.as_bytes());
    out.extend_from_slice(&message);
    Cow::Owned(out)
}

/// The (canonical) domain of the first From address.
fn from_domain(message: &[u8]) -> Option<String> {
    let (fields, _) = headers::fields(message);
    let from = fields.iter().find(|f| headers::is(message, f, "from"))?;
    let value = headers::value(message, from);
    let field = format!("From: {value}\r\n\r\n");
    let parsed = mail_parser::MessageParser::new().parse_headers(field.as_bytes())?;
    let address = parsed.from()?.first()?.address()?.to_string();
    crate::smtp::address::canonical_domain(address.rsplit_once('@')?.1)
}
