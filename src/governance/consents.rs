//! Granting and withdrawing consent with its proof: every path that gives or takes consent
//! outside the operator's imports (the account API, its uploads, subscription forms,
//! confirmations, the preference page) comes through here, so the proof in the
//! [`super::ledger`] and the decision in the consent lists never disagree.
//!
//! A grant writes the proof first, then the consent (fsynced, in force before the call
//! returns): a crash between leaves a proof of a consent not yet in force, which the retry
//! completes, never a consent without its proof. A withdrawal removes the consent first,
//! then marks the proof withdrawn.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::ledger::{Ledger, LedgerError, Proof};
use crate::consent::{CONSENT, Change, Kind, Lists, ListsError, Op, Origin, Scope};
use crate::policy::Policy;

#[derive(Debug, thiserror::Error)]
pub enum ConsentError {
    #[error("no account {0:?} in the policy")]
    NoAccount(String),
    #[error("account {0:?} has no list {1:?}")]
    NoList(String, String),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Lists(#[from] ListsError),
}

/// What grants and withdrawals need. Cheap to share.
pub struct Consents {
    pub lists: Arc<Lists>,
    pub ledger: Arc<Ledger>,
    pub policy: Arc<ArcSwap<Policy>>,
}

impl Consents {
    /// Records consent of each proof's address to `list` of `account` (blocking: call off
    /// the async threads). Addresses must be normalised.
    pub fn grant(
        &self,
        account: &str,
        list: &str,
        proofs: Vec<Proof>,
        origin: Origin,
    ) -> Result<(), ConsentError> {
        if proofs.is_empty() {
            return Ok(());
        }
        let policy = self.policy.load();
        let acc = policy
            .account(account)
            .ok_or_else(|| ConsentError::NoAccount(account.to_string()))?;
        let l = acc
            .list(list)
            .ok_or_else(|| ConsentError::NoList(account.to_string(), list.to_string()))?;
        let time_ms = crate::envelope::now_ms();
        let addresses = proofs.iter().map(|p| p.address.as_str());
        let changes = self.changes(account, list, Op::Add, origin, time_ms, addresses);
        let how = proofs[0].how.as_str();
        let n = proofs.len() as u64;
        self.ledger.grant(account, l, proofs, time_ms)?;
        self.lists.record(&changes)?;
        crate::metrics::consent_changes("grant", how, n);
        Ok(())
    }

    /// Withdraws consent of `addresses` (normalised) to `list`; `how` names the path
    /// ("api", "upload", "preference page", …) in the proof.
    pub fn withdraw(
        &self,
        account: &str,
        list: &str,
        addresses: &[String],
        how: &'static str,
        origin: Origin,
    ) -> Result<u64, ConsentError> {
        let time_ms = crate::envelope::now_ms();
        let each = addresses.iter().map(String::as_str);
        let changes = self.changes(account, list, Op::Remove, origin, time_ms, each);
        self.lists.record(&changes)?;
        crate::metrics::consent_changes("withdraw", how, addresses.len() as u64);
        Ok(self
            .ledger
            .withdraw(account, list, addresses, how, time_ms)?)
    }

    fn changes<'a>(
        &self,
        account: &str,
        list: &str,
        op: Op,
        origin: Origin,
        time_ms: u64,
        addresses: impl Iterator<Item = &'a str>,
    ) -> Vec<Change> {
        let secret = self.lists.secret();
        addresses
            .map(|a| Change {
                op,
                fp: secret.fingerprint(Kind::Consent, Scope::List(account, list), a),
                tags: CONSENT,
                origin,
                time_ms,
                stamp: 0,
                remote: false,
            })
            .collect()
    }
}

/// Drops withdrawn consents' records older than `days` now and every hour, until `stop`.
pub fn spawn_retention(
    ledger: Arc<Ledger>,
    days: u32,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let cutoff = crate::envelope::now_ms().saturating_sub(u64::from(days) * 86_400_000);
            let l = ledger.clone();
            match tokio::task::spawn_blocking(move || l.drop_withdrawn_before(cutoff)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::info!(
                    records = n,
                    days,
                    "withdrawn consent records past retention dropped"
                ),
                Ok(Err(e)) => tracing::error!(error = %e, "consent ledger retention failed"),
                Err(_) => tracing::error!("consent ledger retention task failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
                _ = stop.cancelled() => return,
            }
        }
    })
}
