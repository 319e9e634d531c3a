//! Proof of consent: the ledger that says, for every consent granted to an account's list,
//! when it was given, how (a form, a confirmed double opt-in, an uploaded file, an API key,
//! the operator), the wording the person was shown (the list's `consent_source` and
//! `consent_statement` at that time, kept once per version), and for forms the client's IP
//! address and user agent — and, once withdrawn, when and how.
//!
//! The ledger is a redb database (`state/consent-ledger.redb`, 0600, crash-safe
//! transactions). Nothing in it is a plain address: records are keyed by the lists'
//! keyed fingerprints, and the personal part of a record (the address, IP, user agent) is
//! sealed with ChaCha20-Poly1305 under its own key file (`state/consent-ledger.key`),
//! so the account's export and the APIs can show it and a copy of the file alone shows
//! nothing. An erasure removes every record of the address; withdrawn records are dropped
//! `[privacy] consent_record_days` after their withdrawal; records in force are kept while
//! the consent lasts.
//!
//! The ledger is proof, not the decision: whether mail may go is the consent lists'
//! ([`crate::consent::Lists`]); [`super::consents`] writes both.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::consent::{Kind, Scope, Secret};
use crate::rewrite::token::TokenKeys;

/// (account, list, consent fingerprint) → (granted ms, withdrawn ms (0: in force), how it
/// was withdrawn, sealed [`Proof`]).
type RecordKey<'a> = (&'a str, &'a str, u64);
type RecordValue<'a> = (u64, u64, &'a str, &'a [u8]);
const RECORDS: TableDefinition<RecordKey, RecordValue> = TableDefinition::new("records");
/// (person fingerprint, account, list) → (): every record of one address, for erasure.
const PEOPLE: TableDefinition<(u64, &str, &str), ()> = TableDefinition::new("people");
/// Wording version → (account, list, source, statement, first used ms).
type WordingValue<'a> = (&'a str, &'a str, &'a str, &'a str, u64);
const WORDINGS: TableDefinition<&str, WordingValue> = TableDefinition::new("wordings");
/// (account, list, consent fingerprint) → (fresh since ms: the grant, the last confirmation
/// or engagement; re-permission asked ms, 0: never): how consent ages.
const AGING: TableDefinition<RecordKey, (u64, u64)> = TableDefinition::new("aging");
/// (account, list) → (records in force, withdrawn records kept).
const COUNTS: TableDefinition<(&str, &str), (u64, u64)> = TableDefinition::new("counts");

/// Bound into the sealed part of every record.
const PURPOSE: &[u8] = b"consent-record";

/// How a consent was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum How {
    /// A subscription form of a list that allows single opt-in.
    Form,
    /// The link of a confirmation message, clicked and confirmed.
    DoubleOptIn,
    /// A file uploaded to the account API (`detail`: its name).
    Upload,
    /// The account API (`detail`: the key id).
    Api,
    /// The operator: the admin API or the command line (`detail` says which).
    Operator,
    /// The answer to a re-permission message: the person asked to stay.
    Reconfirmed,
}

impl How {
    pub fn as_str(self) -> &'static str {
        match self {
            How::Form => "form",
            How::DoubleOptIn => "double_opt_in",
            How::Upload => "upload",
            How::Api => "api",
            How::Operator => "operator",
            How::Reconfirmed => "reconfirmed",
        }
    }
}

/// The sealed part of a record: what identifies the person and the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// The normalised address.
    pub address: String,
    pub how: How,
    /// The file name, the key id, "admin API" or "cli"; empty when nothing more is known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// For forms and confirmations: the client's IP address and user agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// For a double opt-in: when the confirmation message was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asked_ms: Option<u64>,
}

impl Proof {
    pub fn new(address: String, how: How, detail: impl Into<String>) -> Proof {
        Proof {
            address,
            how,
            detail: detail.into(),
            ip: None,
            user_agent: None,
            asked_ms: None,
        }
    }
}

/// The wording a person was shown: a list's source and statement as they were.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wording {
    /// A short hash of account, list, source and statement.
    pub version: String,
    pub source: String,
    pub statement: String,
    pub first_used_ms: u64,
}

impl Wording {
    /// The version id of a list's wording as it is now.
    pub fn version_of(account: &str, list: &crate::policy::MailingList) -> String {
        let mut h = blake3::Hasher::new();
        for part in [
            account,
            &list.id,
            &list.consent_source,
            &list.consent_statement,
        ] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.finalize().to_hex()[..16].to_string()
    }
}

/// One record, opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Record {
    pub account: String,
    pub list: String,
    pub granted_ms: u64,
    /// When and how the consent was withdrawn; `None`: in force.
    pub withdrawn_ms: Option<u64>,
    pub withdrawn_how: Option<String>,
    #[serde(flatten)]
    pub proof: Proof,
    pub wording: Option<Wording>,
}

/// Per-list figures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ListCount {
    pub list: String,
    pub in_force: u64,
    pub withdrawn: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("consent ledger {path}: {why}")]
    Open { path: String, why: String },
    #[error("consent ledger: {0}")]
    Store(String),
}

fn store(e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Store(e.to_string())
}

pub struct Ledger {
    db: Database,
    keys: TokenKeys,
    secret: Secret,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").finish_non_exhaustive()
    }
}

/// How much memory the database may use for its page cache.
const CACHE_BYTES: usize = 16 << 20;

impl Ledger {
    /// Opens (creating) the ledger in `dir`, fingerprinting with the lists' `secret`.
    pub fn open(dir: &Path, secret: Secret) -> Result<Ledger, LedgerError> {
        let fail = |path: &Path, why: String| LedgerError::Open {
            path: path.display().to_string(),
            why,
        };
        crate::files::private_dir(dir).map_err(|e| fail(dir, e.to_string()))?;
        let key_path = dir.join("consent-ledger.key");
        let keys =
            TokenKeys::load_or_create(&key_path).map_err(|e| fail(&key_path, e.to_string()))?;
        let path = dir.join("consent-ledger.redb");
        if !path.exists() {
            // Created 0600 before redb opens it.
            crate::files::write_new(&path, b"").map_err(|e| fail(&path, e.to_string()))?;
        }
        crate::files::check_private(&path).map_err(|e| fail(&path, e))?;
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| fail(&path, e.to_string()))?;
        let txn = db.begin_write().map_err(|e| fail(&path, e.to_string()))?;
        {
            // Every table exists from the start, so readers never meet a missing one.
            txn.open_table(RECORDS).map_err(store)?;
            txn.open_table(PEOPLE).map_err(store)?;
            txn.open_table(WORDINGS).map_err(store)?;
            txn.open_table(COUNTS).map_err(store)?;
            txn.open_table(AGING).map_err(store)?;
        }
        txn.commit().map_err(|e| fail(&path, e.to_string()))?;
        Ok(Ledger { db, keys, secret })
    }

    fn consent_fp(&self, account: &str, list: &str, address: &str) -> u64 {
        self.secret
            .fingerprint(Kind::Consent, Scope::List(account, list), address)
    }

    fn person_fp(&self, address: &str) -> u64 {
        self.secret
            .fingerprint(Kind::Suppression, Scope::Global, address)
    }

    /// Records consents to `list` of `account` (one transaction, durable on return). A
    /// new grant replaces an older record of the same address and list.
    pub fn grant(
        &self,
        account: &str,
        list: &crate::policy::MailingList,
        proofs: Vec<Proof>,
        time_ms: u64,
    ) -> Result<(), LedgerError> {
        let version = Wording::version_of(account, list);
        let txn = self.db.begin_write().map_err(store)?;
        {
            let mut wordings = txn.open_table(WORDINGS).map_err(store)?;
            if wordings.get(version.as_str()).map_err(store)?.is_none() {
                wordings
                    .insert(
                        version.as_str(),
                        (
                            account,
                            list.id.as_str(),
                            list.consent_source.as_str(),
                            list.consent_statement.as_str(),
                            time_ms,
                        ),
                    )
                    .map_err(store)?;
            }
            let mut records = txn.open_table(RECORDS).map_err(store)?;
            let mut people = txn.open_table(PEOPLE).map_err(store)?;
            let mut counts = txn.open_table(COUNTS).map_err(store)?;
            let mut aging = txn.open_table(AGING).map_err(store)?;
            let (mut in_force, mut withdrawn) = counts
                .get((account, list.id.as_str()))
                .map_err(store)?
                .map_or((0, 0), |g| g.value());
            for proof in proofs {
                let fp = self.consent_fp(account, &list.id, &proof.address);
                let key = (account, list.id.as_str(), fp);
                match records.get(key).map_err(store)?.map(|g| g.value().1) {
                    None => in_force += 1,
                    Some(0) => {}
                    Some(_) => {
                        in_force += 1;
                        withdrawn = withdrawn.saturating_sub(1);
                    }
                }
                let sealed = self.seal(&proof, &version);
                records
                    .insert(key, (time_ms, 0, "", sealed.as_slice()))
                    .map_err(store)?;
                aging.insert(key, (time_ms, 0)).map_err(store)?;
                people
                    .insert(
                        (self.person_fp(&proof.address), account, list.id.as_str()),
                        (),
                    )
                    .map_err(store)?;
            }
            counts
                .insert((account, list.id.as_str()), (in_force, withdrawn))
                .map_err(store)?;
        }
        txn.commit().map_err(store)
    }

    /// Marks the records of `addresses` on `list` withdrawn (`how`: "api", "unsubscribe",
    /// …); addresses without a record are skipped. Returns how many changed.
    pub fn withdraw(
        &self,
        account: &str,
        list: &str,
        addresses: &[String],
        how: &str,
        time_ms: u64,
    ) -> Result<u64, LedgerError> {
        let txn = self.db.begin_write().map_err(store)?;
        let mut changed = 0;
        {
            let mut records = txn.open_table(RECORDS).map_err(store)?;
            for address in addresses {
                let key = (account, list, self.consent_fp(account, list, address));
                let current = records.get(key).map_err(store)?.map(|g| {
                    let (granted, withdrawn, _, sealed) = g.value();
                    (granted, withdrawn, sealed.to_vec())
                });
                if let Some((granted, 0, sealed)) = current {
                    records
                        .insert(key, (granted, time_ms, how, sealed.as_slice()))
                        .map_err(store)?;
                    changed += 1;
                }
            }
            if changed > 0 {
                let mut counts = txn.open_table(COUNTS).map_err(store)?;
                let (in_force, withdrawn) = counts
                    .get((account, list))
                    .map_err(store)?
                    .map_or((0, 0), |g| g.value());
                counts
                    .insert(
                        (account, list),
                        (in_force.saturating_sub(changed), withdrawn + changed),
                    )
                    .map_err(store)?;
            }
        }
        txn.commit().map_err(store)?;
        Ok(changed)
    }

    /// The record of `address` on `list`, if there is one.
    pub fn get(
        &self,
        account: &str,
        list: &str,
        address: &str,
    ) -> Result<Option<Record>, LedgerError> {
        let txn = self.db.begin_read().map_err(store)?;
        let records = txn.open_table(RECORDS).map_err(store)?;
        let wordings = txn.open_table(WORDINGS).map_err(store)?;
        let key = (account, list, self.consent_fp(account, list, address));
        let Some(found) = records.get(key).map_err(store)? else {
            return Ok(None);
        };
        let (granted, withdrawn, how, sealed) = found.value();
        Ok(self.open_record(account, list, granted, withdrawn, how, sealed, &wordings))
    }

    /// Every record of `account`, in key order, until `each` returns false. Records whose
    /// sealed part does not open (a key file replaced) are skipped and counted.
    pub fn export(
        &self,
        account: &str,
        mut each: impl FnMut(Record) -> bool,
    ) -> Result<u64, LedgerError> {
        let txn = self.db.begin_read().map_err(store)?;
        let records = txn.open_table(RECORDS).map_err(store)?;
        let wordings = txn.open_table(WORDINGS).map_err(store)?;
        let mut unreadable = 0;
        for item in records.range((account, "", 0u64)..).map_err(store)? {
            let (k, v) = item.map_err(store)?;
            let (acc, list, _) = k.value();
            if acc != account {
                break;
            }
            let (granted, withdrawn, how, sealed) = v.value();
            match self.open_record(acc, list, granted, withdrawn, how, sealed, &wordings) {
                Some(r) => {
                    if !each(r) {
                        break;
                    }
                }
                None => unreadable += 1,
            }
        }
        Ok(unreadable)
    }

    #[allow(clippy::too_many_arguments)]
    fn open_record(
        &self,
        account: &str,
        list: &str,
        granted_ms: u64,
        withdrawn_ms: u64,
        how: &str,
        sealed: &[u8],
        wordings: &impl ReadableTable<
            &'static str,
            (&'static str, &'static str, &'static str, &'static str, u64),
        >,
    ) -> Option<Record> {
        let (version, proof) = self.unseal(sealed)?;
        let version = version.as_str();
        let wording = wordings.get(version).ok().flatten().map(|g| {
            let (_, _, source, statement, first) = g.value();
            Wording {
                version: version.to_string(),
                source: source.to_string(),
                statement: statement.to_string(),
                first_used_ms: first,
            }
        });
        Some(Record {
            account: account.to_string(),
            list: list.to_string(),
            granted_ms,
            withdrawn_ms: (withdrawn_ms != 0).then_some(withdrawn_ms),
            withdrawn_how: (withdrawn_ms != 0).then(|| how.to_string()),
            proof,
            wording,
        })
    }

    /// The wording version and the proof a record's sealed part holds.
    fn unseal(&self, sealed: &[u8]) -> Option<(String, Proof)> {
        let plain = self.keys.open_bytes(PURPOSE, sealed).ok()?;
        let (version, json) = plain.split_at_checked(16)?;
        Some((
            String::from_utf8(version.to_vec()).ok()?,
            serde_json::from_slice(json).ok()?,
        ))
    }

    fn seal(&self, proof: &Proof, version: &str) -> Vec<u8> {
        let mut plain = version.as_bytes().to_vec();
        plain.extend_from_slice(&serde_json::to_vec(proof).expect("serialisable"));
        self.keys.seal_bytes(PURPOSE, plain)
    }

    /// Records in force and withdrawn, per list of `account`.
    pub fn counts(&self, account: &str) -> Result<Vec<ListCount>, LedgerError> {
        let txn = self.db.begin_read().map_err(store)?;
        let counts = txn.open_table(COUNTS).map_err(store)?;
        let mut out = Vec::new();
        for item in counts.range((account, "")..).map_err(store)? {
            let (k, v) = item.map_err(store)?;
            let (acc, list) = k.value();
            if acc != account {
                break;
            }
            let (in_force, withdrawn) = v.value();
            out.push(ListCount {
                list: list.to_string(),
                in_force,
                withdrawn,
            });
        }
        Ok(out)
    }

    /// Removes every record of `address` (an erasure); returns how many.
    pub fn erase(&self, address: &str) -> Result<u64, LedgerError> {
        let who = self.person_fp(address);
        let txn = self.db.begin_write().map_err(store)?;
        let mut removed = 0;
        {
            let mut people = txn.open_table(PEOPLE).map_err(store)?;
            let mut records = txn.open_table(RECORDS).map_err(store)?;
            let mut counts = txn.open_table(COUNTS).map_err(store)?;
            let mut aging = txn.open_table(AGING).map_err(store)?;
            let mut scopes: Vec<(String, String)> = Vec::new();
            for item in people.range((who, "", "")..).map_err(store)? {
                let (k, _) = item.map_err(store)?;
                let (w, account, list) = k.value();
                if w != who {
                    break;
                }
                scopes.push((account.to_string(), list.to_string()));
            }
            for (account, list) in &scopes {
                people
                    .remove((who, account.as_str(), list.as_str()))
                    .map_err(store)?;
                let key = (
                    account.as_str(),
                    list.as_str(),
                    self.consent_fp(account, list, address),
                );
                aging.remove(key).map_err(store)?;
                let gone = records.remove(key).map_err(store)?.map(|g| g.value().1);
                if let Some(withdrawn) = gone {
                    removed += 1;
                    let (f, w) = counts
                        .get((account.as_str(), list.as_str()))
                        .map_err(store)?
                        .map_or((0, 0), |g| g.value());
                    let after = if withdrawn == 0 {
                        (f.saturating_sub(1), w)
                    } else {
                        (f, w.saturating_sub(1))
                    };
                    counts
                        .insert((account.as_str(), list.as_str()), after)
                        .map_err(store)?;
                }
            }
        }
        txn.commit().map_err(store)?;
        Ok(removed)
    }

    /// Since when the consent of `address` to `list` is fresh (its grant, last
    /// confirmation or engagement); `None`: no record in force.
    pub fn fresh_since(
        &self,
        account: &str,
        list: &str,
        address: &str,
    ) -> Result<Option<u64>, LedgerError> {
        let txn = self.db.begin_read().map_err(store)?;
        let aging = txn.open_table(AGING).map_err(store)?;
        let key = (account, list, self.consent_fp(account, list, address));
        Ok(aging.get(key).map_err(store)?.map(|g| g.value().0))
    }

    /// An engagement (an open, a click) keeps the consent of `address` to `list` fresh.
    pub fn touch(
        &self,
        account: &str,
        list: &str,
        address: &str,
        time_ms: u64,
    ) -> Result<(), LedgerError> {
        let key = (account, list, self.consent_fp(account, list, address));
        let txn = self.db.begin_write().map_err(store)?;
        {
            let mut aging = txn.open_table(AGING).map_err(store)?;
            let current = aging.get(key).map_err(store)?.map(|g| g.value());
            if let Some((fresh, asked)) = current
                && fresh < time_ms
            {
                aging.insert(key, (time_ms, asked)).map_err(store)?;
            }
        }
        txn.commit().map_err(store)
    }

    /// Up to `limit` addresses of `list` whose consent is in force, fresh only before
    /// `cutoff_ms`, and not yet asked to stay since; each is marked asked (at `now_ms`)
    /// in the same transaction, so each is asked once.
    pub fn take_expired(
        &self,
        account: &str,
        list: &str,
        cutoff_ms: u64,
        now_ms: u64,
        limit: usize,
    ) -> Result<(Vec<String>, u64), LedgerError> {
        let txn = self.db.begin_write().map_err(store)?;
        let mut taken = Vec::new();
        let mut more = 0u64;
        {
            let records = txn.open_table(RECORDS).map_err(store)?;
            let mut aging = txn.open_table(AGING).map_err(store)?;
            let mut due: Vec<(u64, u64, String)> = Vec::new();
            for item in aging.range((account, list, 0u64)..).map_err(store)? {
                let (k, v) = item.map_err(store)?;
                let (acc, l, fp) = k.value();
                if acc != account || l != list {
                    break;
                }
                let (fresh, asked) = v.value();
                if fresh >= cutoff_ms || asked >= fresh {
                    continue;
                }
                let Some(found) = records.get((acc, l, fp)).map_err(store)? else {
                    continue;
                };
                let (_, withdrawn, _, sealed) = found.value();
                if withdrawn != 0 {
                    continue;
                }
                if due.len() >= limit {
                    more += 1;
                    continue;
                }
                let address = self.unseal(sealed).map(|(_, p)| p.address);
                if let Some(a) = address {
                    due.push((fp, fresh, a));
                }
            }
            for (fp, fresh, address) in due {
                aging
                    .insert((account, list, fp), (fresh, now_ms.max(fresh)))
                    .map_err(store)?;
                taken.push(address);
            }
        }
        txn.commit().map_err(store)?;
        Ok((taken, more))
    }

    /// Drops records withdrawn before `cutoff_ms` (retention); returns how many.
    pub fn drop_withdrawn_before(&self, cutoff_ms: u64) -> Result<u64, LedgerError> {
        let txn = self.db.begin_write().map_err(store)?;
        let mut dropped: Vec<(String, String, u64, Option<String>)> = Vec::new();
        {
            let records = txn.open_table(RECORDS).map_err(store)?;
            for item in records.iter().map_err(store)? {
                let (k, v) = item.map_err(store)?;
                let (account, list, fp) = k.value();
                let (_, withdrawn, _, sealed) = v.value();
                if withdrawn != 0 && withdrawn < cutoff_ms {
                    // The person's index entry goes too (its key needs the address).
                    let address = self.unseal(sealed).map(|(_, p)| p.address);
                    dropped.push((account.to_string(), list.to_string(), fp, address));
                }
            }
        }
        if !dropped.is_empty() {
            let mut records = txn.open_table(RECORDS).map_err(store)?;
            let mut people = txn.open_table(PEOPLE).map_err(store)?;
            let mut counts = txn.open_table(COUNTS).map_err(store)?;
            let mut aging = txn.open_table(AGING).map_err(store)?;
            for (account, list, fp, address) in &dropped {
                let key = (account.as_str(), list.as_str(), *fp);
                records.remove(key).map_err(store)?;
                aging.remove(key).map_err(store)?;
                if let Some(a) = address {
                    people
                        .remove((self.person_fp(a), account.as_str(), list.as_str()))
                        .map_err(store)?;
                }
                let (f, w) = counts
                    .get((account.as_str(), list.as_str()))
                    .map_err(store)?
                    .map_or((0, 0), |g| g.value());
                counts
                    .insert((account.as_str(), list.as_str()), (f, w.saturating_sub(1)))
                    .map_err(store)?;
            }
        }
        txn.commit().map_err(store)?;
        Ok(dropped.len() as u64)
    }
}

#[cfg(test)]
mod tests;
