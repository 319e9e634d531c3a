//! What [`super::Relay::start_with_transport`] opens before anything listens: the durable
//! state (the spool and its recovery, the log key, the lists, frozen accounts, campaigns,
//! unsubscribe keys, the delivery log) and the governance wired to it (account health,
//! webhooks, unsubscribes, complaints), in the order a restart needs them.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::StartError;
use crate::config::Config;
use crate::consent::Lists;
use crate::governance::campaign::Campaigns;
use crate::governance::complaints::Complaints;
use crate::governance::counts::AccountCounts;
use crate::governance::freeze::Freezes;
use crate::governance::unsubscribe::Unsubscribes;
use crate::governance::webhook::Webhooks;
use crate::governance::{Feedback, Governor};
use crate::policy::Policy;
use crate::privacy::AddressTagger;
use crate::privacy::delivery_log::DeliveryLog;
use crate::rewrite::token::TokenKeys;
use crate::spool::{RecoveredMessage, Spool};

/// The relay's durable state, opened and recovered.
pub(super) struct State {
    pub spool: Spool,
    /// What recovery found still to deliver (handed to delivery once).
    pub recovered: Vec<RecoveredMessage>,
    pub tagger: AddressTagger,
    pub lists: Arc<Lists>,
    pub freezes: Arc<Freezes>,
    pub campaigns: Arc<Campaigns>,
    pub token_keys: Arc<TokenKeys>,
    pub delivery_log: Option<DeliveryLog>,
}

impl State {
    pub fn open(config: &Config) -> Result<State, StartError> {
        let (spool, report) = Spool::open(&config.spool)?;
        tracing::info!(
            path = %config.spool.path.display(),
            messages = report.messages.len(),
            segments = report.segments,
            quarantined = report.quarantined,
            repaired = report.repaired,
            "spool recovered"
        );
        let key_path = config.spool.path.join("log.key");
        let tagger =
            AddressTagger::load_or_create(&key_path).map_err(|source| StartError::LogKey {
                path: key_path.display().to_string(),
                source,
            })?;
        let lists = Arc::new(Lists::open_with(
            &config.lists.path,
            config.lists.bloom_bits_per_key,
            config.lists.load_into_memory,
        )?);
        let stats = lists.stats();
        tracing::info!(
            path = %config.lists.path.display(),
            entries = stats.snapshot_entries,
            journal_changes = stats.delta_entries,
            "lists opened"
        );
        stats.publish();
        let freezes = Arc::new(
            Freezes::open(&config.spool.path).map_err(|e| StartError::State(e.to_string()))?,
        );
        let campaigns = Arc::new(
            Campaigns::open(&config.spool.path).map_err(|e| StartError::State(e.to_string()))?,
        );
        let token_keys = Arc::new(
            TokenKeys::load_or_create(&config.unsubscribe.keys)
                .map_err(|e| StartError::Keys(e.to_string()))?,
        );
        let delivery_log = match &config.delivery.log {
            Some(path) => Some(DeliveryLog::open(path, tagger.clone()).map_err(|source| {
                StartError::LogKey {
                    path: path.display().to_string(),
                    source,
                }
            })?),
            None => None,
        };
        Ok(State {
            spool,
            recovered: report.messages,
            tagger,
            lists,
            freezes,
            campaigns,
            token_keys,
            delivery_log,
        })
    }
}

/// Account health, webhooks, and what records unsubscribes and complaints.
pub(super) struct Governance {
    pub governor: Arc<Governor>,
    pub webhooks: Arc<Webhooks>,
    pub feedback: Feedback,
    pub counts: Arc<AccountCounts>,
    pub unsubscribes: Arc<Unsubscribes>,
    /// `None` when `[complaints] enabled = false`.
    pub complaints: Option<Arc<Complaints>>,
    /// What bounces do, and the return-path intake.
    pub bounces: Arc<crate::governance::bounces::Bounces>,
    /// Opens and clicks of tracked mail.
    pub engagements: Arc<crate::governance::engagement::Engagements>,
    /// Consent given and withdrawn by the accounts' paths, with its proof.
    pub consents: Arc<crate::governance::consents::Consents>,
    /// The accounts' API keys.
    pub keys: Arc<crate::governance::account_keys::AccountKeys>,
    /// Uploaded files of addresses, applied by a worker.
    pub uploads: Arc<crate::governance::uploads::Uploads>,
    /// Subscription forms and their confirmations.
    pub subscriptions: Arc<crate::governance::subscribe::Subscriptions>,
}

impl Governance {
    pub fn wire(
        config: &Config,
        state: &State,
        policy: &Arc<ArcSwap<Policy>>,
    ) -> Result<Governance, StartError> {
        let governor = Arc::new(Governor {
            health: Default::default(),
            freezes: state.freezes.clone(),
            policy: policy.clone(),
            shared: Default::default(),
        });
        let webhooks = Arc::new(Webhooks::new(
            &config.spool.path,
            policy.clone(),
            config.webhooks.retry_initial,
        )?);
        let feedback = Feedback {
            campaigns: Some(state.campaigns.clone()),
            governor: Some(governor.clone()),
            webhooks: Some(webhooks.clone()),
        };
        let counts = Arc::new(AccountCounts::default());
        let state_dir = config.spool.path.join("state");
        let ledger =
            crate::governance::ledger::Ledger::open(&state_dir, state.lists.secret().clone())
                .map_err(|e| StartError::State(e.to_string()))?;
        let consents = Arc::new(crate::governance::consents::Consents {
            lists: state.lists.clone(),
            ledger: Arc::new(ledger),
            policy: policy.clone(),
        });
        let unsubscribes = Arc::new(Unsubscribes {
            ledger: Some(consents.ledger.clone()),
            lists: state.lists.clone(),
            keys: state.token_keys.clone(),
            policy: policy.clone(),
            events: Arc::new(crate::privacy::events::EventLog::new(
                &config.spool.path.join("events/unsubscribes.jsonl"),
            )),
            feedback: feedback.clone(),
        });
        let complaints = match config.complaints.enabled {
            true => Some(complaints(config, state, policy, &feedback, &counts)?),
            false => None,
        };
        let mut bounces = crate::governance::bounces::Bounces::new(
            &config.spool.path,
            state.lists.clone(),
            policy.clone(),
            state.tagger.clone(),
            config.bounces.max_per_ip,
        )
        .with_streak_file(&config.spool.path.join("state/bounce-streaks.bin"));
        bounces.feedback = feedback.clone();
        bounces.complaints = complaints.clone();
        bounces.paths = return_paths(config, state);
        bounces.log = state.delivery_log.clone();
        bounces.counts = Some(counts.clone());
        let mut engagements = crate::governance::engagement::Engagements::open(
            &config.spool.path,
            state.token_keys.clone(),
            state.tagger.clone(),
            config.privacy.event_log_days,
        )
        .map_err(|e| StartError::State(e.to_string()))?;
        engagements.feedback = feedback.clone();
        engagements.ledger = Some(consents.ledger.clone());
        let keys = crate::governance::account_keys::AccountKeys::open(
            &state_dir.join("account-keys.json"),
        )
        .map_err(|e| StartError::State(e.to_string()))?;
        let uploads =
            crate::governance::uploads::Uploads::open(&state_dir.join("uploads"), consents.clone())
                .map_err(|e| {
                    StartError::State(format!("{}: {e}", state_dir.join("uploads").display()))
                })?;
        let subscriptions = Arc::new(crate::governance::subscribe::Subscriptions::new(
            consents.clone(),
            state.token_keys.clone(),
            state.freezes.clone(),
            config.unsubscribe.public_url.clone(),
            config.smtp.hostname.clone(),
            config.subscribe,
        ));
        Ok(Governance {
            subscriptions,
            consents,
            keys: Arc::new(keys),
            uploads: Arc::new(uploads),
            governor,
            webhooks,
            feedback,
            counts,
            unsubscribes,
            complaints,
            bounces: Arc::new(bounces),
            engagements: Arc::new(engagements),
        })
    }
}

/// The relay's own return path, when `[bounces] return_path` is on.
pub(super) fn return_paths(
    config: &Config,
    state: &State,
) -> Option<crate::rewrite::return_path::ReturnPaths> {
    config
        .bounces
        .return_path
        .then(|| crate::rewrite::return_path::ReturnPaths {
            keys: state.token_keys.clone(),
            prefix: config.bounces.prefix.clone(),
            domain: config.bounces.domain.clone(),
        })
}

/// The complaint intake: feedback reports to `[complaints] address` and the report form.
fn complaints(
    config: &Config,
    state: &State,
    policy: &Arc<ArcSwap<Policy>>,
    feedback: &Feedback,
    counts: &Arc<AccountCounts>,
) -> Result<Arc<Complaints>, StartError> {
    let mut c = Complaints::new(
        config.complaints.address.clone(),
        &config.spool.path,
        state.lists.clone(),
        state.token_keys.clone(),
        policy.clone(),
        counts.clone(),
        state.tagger.clone(),
    )
    .with_feedback(feedback.clone())
    .requiring_token(config.complaints.require_token)
    .with_limits(crate::governance::complaints::Limits {
        max_reports_per_ip: config.complaints.max_reports_per_ip,
    });
    // Tokenless reports count only when DKIM-signed by an allow-listed reporter, whose keys
    // are looked up through the relay's resolver.
    if !config.complaints.reporters.is_empty() {
        c = c.with_reporters(crate::governance::complaints::reporter::Reporters::new(
            config.complaints.reporters.clone(),
            crate::dns::resolver(config.delivery.dns).map_err(StartError::Delivery)?,
        ));
    }
    Ok(Arc::new(c))
}
