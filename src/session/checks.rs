//! The checks an account's message passes at the end of DATA, before any recipient is
//! decided: its `X-Optin-*` headers (read and removed), a declined campaign, whether
//! marketing can carry the footer, sender identity, the operator's contact details, and
//! the policy's content rules. They parse the whole message, so [`run`] does them on a
//! CPU slot off the async threads when the message is large ([`crate::cpu::run_for`]);
//! nothing here does I/O.

use std::sync::Arc;

use crate::envelope::Stream;
use crate::governance::campaign::{Campaigns, Stage, key};
use crate::policy::Policy;
use crate::smtp::{Address, Refusal};

use super::consent::{self, Class};
use super::identity;

/// What the checks need, owned so they can move to a CPU slot.
pub(super) struct Input {
    pub policy: Arc<Policy>,
    pub account: String,
    pub sender: Option<Address>,
    pub own_domain: String,
    pub campaigns: Option<Arc<Campaigns>>,
    pub body: Vec<u8>,
}

/// A refusal (its label is the metric reason it counts under), and a content category
/// whose rule freezes the account (`[content] freeze_account`).
pub(super) struct Refused {
    pub refusal: Refusal,
    pub freeze: Option<String>,
}

impl From<Refusal> for Refused {
    fn from(refusal: Refusal) -> Refused {
        Refused {
            refusal,
            freeze: None,
        }
    }
}

/// Runs the checks (off the async threads for a large message); returns the body (its `X-Optin-*` fields
/// removed) and the message's class, or why it is refused.
pub(super) async fn run(input: Input) -> (Vec<u8>, Result<Class, Refused>) {
    crate::cpu::run_for(input.body.len(), move || {
        let mut input = input;
        let verdict = check(&mut input);
        (input.body, verdict)
    })
    .await
}

fn check(input: &mut Input) -> Result<Class, Refused> {
    let policy = &input.policy;
    let Some(account) = policy.account(&input.account) else {
        // The account was removed by a policy reload during the transaction.
        return Err(Refusal::AccountGone.into());
    };
    let body = &mut input.body;
    let class = consent::classify(account, body)?;
    if class.stream == Stream::Marketing
        && let (Some(campaigns), Some(id)) = (&input.campaigns, &class.campaign)
        && let k = key(&input.account, id)
        && campaigns.stage(&k) == Some(Stage::Declined)
    {
        let why = campaigns
            .get(&k)
            .and_then(|c| c.reason)
            .unwrap_or_else(|| "declined".into());
        return Err(Refusal::CampaignDeclined(id.clone(), why).into());
    }
    if class.stream == Stream::Marketing
        && let Err(e) = crate::rewrite::footer::check(body)
    {
        return Err(Refusal::FooterImpossible(e.to_string()).into());
    }
    identity::check(account, &input.own_domain, input.sender.as_ref(), body)?;
    identity::check_operator_contacts(policy.operator_contacts(), body)?;
    if let Some(found) = policy.content().check(body) {
        tracing::info!(
            account = %input.account,
            category = %found.category,
            rule = %found.rule,
            "message refused: prohibited content"
        );
        crate::metrics::policy_verdict_reason("content");
        return Err(Refused {
            freeze: found.freeze.then(|| found.category.clone()),
            refusal: Refusal::ProhibitedContent(found.category),
        });
    }
    Ok(class)
}
