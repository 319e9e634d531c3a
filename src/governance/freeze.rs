//! Frozen accounts: kept in `state/frozen.json` beside the spool (written to a temporary
//! file, fsynced and renamed, so a crash leaves the old or the new set, never half of one),
//! and every freeze and unfreeze appended to `events/freezes.jsonl`.
//!
//! A frozen account's submissions are refused at MAIL with `554 5.7.1 account frozen:
//! <reason>`; its queued marketing mail is held (kept, not sent) until it is unfrozen, when
//! the scheduler releases it. Its transactional mail (password resets, receipts) still goes.
//!
//! In a cluster ([`Freezes::share`]) every freeze and unfreeze made here is also written to
//! Redis — `PREFIX frozen` (account → the freeze; the first one made stays) and `PREFIX
//! unfrozen` (account → when it was unfrozen) — and announced to the other nodes, which
//! hold it too (see `super::shared`, which also catches a node up that was away).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};

use serde::{Deserialize, Serialize};

use crate::privacy::events::EventLog;

/// Why and since when an account is frozen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frozen {
    pub reason: String,
    /// Unix milliseconds.
    pub since_ms: u64,
    /// Who froze it: `admin` (API or CLI) or the rule that did.
    pub by: String,
}

#[derive(Debug, thiserror::Error)]
pub enum FreezeError {
    #[error("frozen accounts file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("a freeze needs a reason")]
    NoReason,
}

#[derive(Debug)]
pub struct Freezes {
    path: PathBuf,
    frozen: RwLock<BTreeMap<String, Frozen>>,
    events: EventLog,
    /// The cluster freezes are shared with, and the runtime its calls run on.
    shared: OnceLock<(Arc<crate::cluster::Cluster>, tokio::runtime::Handle)>,
}

/// Where a freeze or unfreeze comes from: this node (shared with the others when in a
/// cluster) or another node (held here, not sent on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Here,
    Cluster,
}

impl Freezes {
    /// Opens (or starts) the frozen-accounts file under `spool_dir`.
    pub fn open(spool_dir: &Path) -> Result<Freezes, FreezeError> {
        let path = spool_dir.join("state/frozen.json");
        let err = |reason: String| FreezeError::File {
            path: path.display().to_string(),
            reason,
        };
        let frozen = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(err(e.to_string())),
        };
        Ok(Freezes {
            events: EventLog::new(&spool_dir.join("events/freezes.jsonl")),
            path,
            frozen: RwLock::new(frozen),
            shared: OnceLock::new(),
        })
    }

    /// Shares this node's freezes and unfreezes through `cluster` from now on (calls run on
    /// the current runtime).
    pub fn share(&self, cluster: Arc<crate::cluster::Cluster>) {
        let _ = self
            .shared
            .set((cluster, tokio::runtime::Handle::current()));
    }

    /// Why the account is frozen, if it is.
    pub fn get(&self, account: &str) -> Option<Frozen> {
        self.frozen
            .read()
            .expect("freeze lock")
            .get(account)
            .cloned()
    }

    pub fn is_frozen(&self, account: &str) -> bool {
        self.frozen
            .read()
            .expect("freeze lock")
            .contains_key(account)
    }

    pub fn all(&self) -> BTreeMap<String, Frozen> {
        self.frozen.read().expect("freeze lock").clone()
    }

    /// Freezes an account (a second freeze keeps the first reason). Returns whether it
    /// was not frozen before.
    pub fn freeze(&self, account: &str, reason: &str, by: &str) -> Result<bool, FreezeError> {
        self.freeze_from(account, reason, by, Origin::Here)
    }

    /// [`Freezes::freeze`], saying where the freeze comes from.
    pub fn freeze_from(
        &self,
        account: &str,
        reason: &str,
        by: &str,
        origin: Origin,
    ) -> Result<bool, FreezeError> {
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(FreezeError::NoReason);
        }
        let mut frozen = self.frozen.write().expect("freeze lock");
        if frozen.contains_key(account) {
            return Ok(false);
        }
        let entry = Frozen {
            reason: reason.chars().take(200).collect(),
            since_ms: crate::envelope::now_ms(),
            by: by.to_string(),
        };
        let mut next = frozen.clone();
        next.insert(account.to_string(), entry.clone());
        self.write(&next)?;
        *frozen = next;
        drop(frozen);
        tracing::warn!(account, reason = %entry.reason, by, ?origin, "account frozen");
        self.event("frozen", account, Some(&entry.reason), by);
        if origin == Origin::Here {
            self.publish_freeze(account, &entry);
        }
        Ok(true)
    }

    /// Unfreezes an account; returns whether it was frozen.
    pub fn unfreeze(&self, account: &str, by: &str) -> Result<bool, FreezeError> {
        self.unfreeze_from(account, by, Origin::Here)
    }

    /// [`Freezes::unfreeze`], saying where the unfreeze comes from.
    pub fn unfreeze_from(
        &self,
        account: &str,
        by: &str,
        origin: Origin,
    ) -> Result<bool, FreezeError> {
        let mut frozen = self.frozen.write().expect("freeze lock");
        if !frozen.contains_key(account) {
            return Ok(false);
        }
        let mut next = frozen.clone();
        next.remove(account);
        self.write(&next)?;
        *frozen = next;
        drop(frozen);
        tracing::info!(account, by, ?origin, "account unfrozen");
        self.event("unfrozen", account, None, by);
        if origin == Origin::Here {
            self.publish_unfreeze(account, by);
        }
        Ok(true)
    }

    /// Writes a freeze made here to the cluster and announces it.
    pub(super) fn publish_freeze(&self, account: &str, entry: &Frozen) {
        let Some((cluster, runtime)) = self.shared.get() else {
            return;
        };
        let (cluster, account, entry) = (cluster.clone(), account.to_string(), entry.clone());
        runtime.spawn(async move {
            let (frozen, unfrozen) = (cluster.key("frozen"), cluster.key("unfrozen"));
            let json = serde_json::to_string(&entry).expect("serialisable");
            let a = account.clone();
            cluster
                .call("freeze", |mut c| async move {
                    redis::pipe()
                        .hset_nx(frozen, &a, json)
                        .hdel(unfrozen, &a)
                        .query_async::<()>(&mut c)
                        .await
                })
                .await;
            cluster
                .announce(crate::cluster::Announcement::Frozen {
                    account,
                    reason: entry.reason,
                    by: entry.by,
                    node: cluster.node_id().to_string(),
                })
                .await;
        });
    }

    /// Writes an unfreeze made here to the cluster (with when, so a node that was away
    /// learns of it), clears the account's shared health window, and announces it.
    fn publish_unfreeze(&self, account: &str, by: &str) {
        let Some((cluster, runtime)) = self.shared.get() else {
            return;
        };
        let (cluster, account, by) = (cluster.clone(), account.to_string(), by.to_string());
        runtime.spawn(async move {
            let keys = (
                cluster.key("frozen"),
                cluster.key("unfrozen"),
                cluster.key(&format!("health:{account}")),
            );
            let a = account.clone();
            let now = crate::envelope::now_ms();
            cluster
                .call("freeze", |mut c| async move {
                    redis::pipe()
                        .hdel(keys.0, &a)
                        .hset(keys.1, &a, now)
                        .del(keys.2)
                        .query_async::<()>(&mut c)
                        .await
                })
                .await;
            cluster
                .announce(crate::cluster::Announcement::Unfrozen {
                    account,
                    by,
                    node: cluster.node_id().to_string(),
                })
                .await;
        });
    }

    fn event(&self, kind: &str, account: &str, reason: Option<&str>, by: &str) {
        let event = serde_json::json!({
            "time_ms": crate::envelope::now_ms(),
            "event": kind,
            "account": account,
            "reason": reason,
            "by": by,
        });
        if let Err(e) = self.events.append(&event) {
            tracing::error!(error = %e, "cannot write the freeze event log");
        }
    }

    fn write(&self, frozen: &BTreeMap<String, Frozen>) -> Result<(), FreezeError> {
        super::write_state(&self.path, frozen).map_err(|e| FreezeError::File {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freezes_persist_and_unfreeze() {
        let dir = tempfile::tempdir().unwrap();
        let f = Freezes::open(dir.path()).unwrap();
        assert!(f.freeze("shop", "complaints 0.5%", "admin").unwrap());
        assert!(
            !f.freeze("shop", "again", "admin").unwrap(),
            "first reason kept"
        );
        assert!(matches!(
            f.freeze("news", "  ", "admin"),
            Err(FreezeError::NoReason)
        ));
        let again = Freezes::open(dir.path()).unwrap();
        assert_eq!(again.get("shop").unwrap().reason, "complaints 0.5%");
        assert!(again.unfreeze("shop", "admin").unwrap());
        assert!(!again.unfreeze("shop", "admin").unwrap());
        assert!(!Freezes::open(dir.path()).unwrap().is_frozen("shop"));
        let events = std::fs::read_to_string(dir.path().join("events/freezes.jsonl")).unwrap();
        assert_eq!(events.lines().count(), 2);
    }

    #[test]
    fn a_damaged_file_is_an_error_not_an_empty_set() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        std::fs::write(dir.path().join("state/frozen.json"), b"{not json").unwrap();
        let e = Freezes::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("frozen.json"), "{e}");
    }
}
