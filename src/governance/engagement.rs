//! Engagement: opens and clicks of tracked mail (`track_opens`, `track_clicks` on a list;
//! see `crate::rewrite::track`), recorded when the public listener serves `/o/TOKEN` or
//! `/c/TOKEN`. Only a genuine engagement token counts: it names the message, recipient,
//! account, list and campaign, and a click's target.
//!
//! Figures are counts, per list and per campaign (`state/engagement.json`): opens and
//! clicks, unique openers and clickers, and `engaged` recipients (who opened or clicked at
//! all). "Unique" is decided by a keyed hash of (list or campaign, kind, the recipient's
//! [`AddressTagger`] tag): no address is stored, and the hashes are kept with their day in
//! `state/engagement-seen.bin` (24 octets each, appended, at most [`MAX_SEEN`]) and dropped
//! after `[privacy] event_log_days` like the event logs; figures not touched for as long
//! are dropped too. A campaign still in its canary counts its unique openers, clickers and
//! engaged recipients toward its verdict; the account's webhook hears of each open and
//! click when it asks for `opened` or `clicked`.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::privacy::AddressTagger;
use crate::rewrite::token::{Engagement, TokenError, TokenKeys};

/// Unique (scope, kind, recipient) hashes remembered at most; past it, an engagement still
/// counts but may count as unique again.
pub const MAX_SEEN: usize = 2_000_000;
const DAY_MS: u64 = 86_400_000;

/// The figures of a list or a campaign.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub opens: u64,
    pub clicks: u64,
    pub unique_opens: u64,
    pub unique_clicks: u64,
    /// Recipients who opened or clicked.
    pub engaged: u64,
    pub last_ms: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Figures {
    /// By `account/list`.
    lists: BTreeMap<String, Counts>,
    /// By `account/campaign`.
    campaigns: BTreeMap<String, Counts>,
}

/// What one recorded engagement was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub engagement: Engagement,
    /// The first of its kind from this recipient for the campaign (or list).
    pub unique: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum EngagementError {
    #[error("{path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
}

/// Unique hashes: hash → day (Unix ms / day), and those still to be appended to the file.
type Seen = (HashMap<[u8; 16], u32>, Vec<([u8; 16], u32)>);

pub struct Engagements {
    keys: Arc<TokenKeys>,
    tagger: AddressTagger,
    /// The key of the unique hashes (derived from the tagger's).
    dedup_key: [u8; 32],
    retention_days: u32,
    figures_path: PathBuf,
    seen_path: PathBuf,
    figures: Mutex<Figures>,
    seen: Mutex<Seen>,
    dirty: AtomicBool,
    /// Campaign canaries and webhooks.
    pub feedback: super::Feedback,
    /// The consent ledger: a recipient's first engagement with a list (in the
    /// retention window) keeps their consent to it fresh (`consent_max_age`).
    pub ledger: Option<Arc<super::ledger::Ledger>>,
}

impl std::fmt::Debug for Engagements {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engagements")
            .field("figures", &self.figures_path)
            .finish_non_exhaustive()
    }
}

impl Engagements {
    /// Opens the figures and the unique hashes in `spool/state` (dropping what is past
    /// `retention_days`).
    pub fn open(
        spool: &Path,
        keys: Arc<TokenKeys>,
        tagger: AddressTagger,
        retention_days: u32,
    ) -> Result<Engagements, EngagementError> {
        let state = spool.join("state");
        let figures_path = state.join("engagement.json");
        let seen_path = state.join("engagement-seen.bin");
        let file_error = |path: &Path| {
            let path = path.display().to_string();
            move |source| EngagementError::File { path, source }
        };
        let today = (crate::envelope::now_ms() / DAY_MS) as u32;
        let oldest = today.saturating_sub(retention_days);
        let mut figures: Figures = match std::fs::read(&figures_path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::error!(path = %figures_path.display(), error = %e, "unreadable engagement figures: starting from none");
                Figures::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Figures::default(),
            Err(e) => return Err(file_error(&figures_path)(e)),
        };
        let oldest_ms = u64::from(oldest) * DAY_MS;
        figures.lists.retain(|_, c| c.last_ms >= oldest_ms);
        figures.campaigns.retain(|_, c| c.last_ms >= oldest_ms);
        let mut seen = HashMap::new();
        let mut on_disk = 0;
        match std::fs::read(&seen_path) {
            // A torn last record (a crash while appending) is ignored.
            Ok(b) => {
                on_disk = b.len();
                for r in b.chunks_exact(20) {
                    let hash: [u8; 16] = r[..16].try_into().expect("16");
                    let day = u32::from_le_bytes(r[16..].try_into().expect("4"));
                    if day >= oldest && seen.len() < MAX_SEEN {
                        seen.insert(hash, day);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(file_error(&seen_path)(e)),
        }
        // Compacted at start when something was dropped (aged out, repeated, torn): only
        // what is kept.
        crate::files::private_dir(&state).map_err(file_error(&state))?;
        if on_disk != seen.len() * 20 {
            let mut compact = Vec::with_capacity(seen.len() * 20);
            for (hash, day) in &seen {
                compact.extend_from_slice(hash);
                compact.extend_from_slice(&day.to_le_bytes());
            }
            crate::files::write_atomically(&seen_path, &compact).map_err(file_error(&seen_path))?;
        }
        Ok(Engagements {
            keys,
            dedup_key: tagger.key_for("engagement"),
            tagger,
            retention_days,
            figures_path,
            seen_path,
            figures: Mutex::new(figures),
            seen: Mutex::new((seen, Vec::new())),
            dirty: AtomicBool::new(false),
            feedback: Default::default(),
            ledger: None,
        })
    }

    /// What `token` says, without counting it (a `HEAD` from a link scanner).
    pub fn peek(&self, token: &str, click: bool) -> Result<Engagement, TokenError> {
        let e = self.keys.open_engagement(token)?;
        if e.click != click {
            return Err(TokenError::Forged);
        }
        Ok(e)
    }

    /// Records the engagement `token` names (`click` for `/c/`, else `/o/`); the token's
    /// facts (for a click: where to send the reader), or why it counts nothing.
    pub fn record(&self, token: &str, click: bool) -> Result<Recorded, TokenError> {
        let e = self.keys.open_engagement(token)?;
        if e.click != click {
            return Err(TokenError::Forged);
        }
        let now = crate::envelope::now_ms();
        let tag = self.tagger.tag(&e.address);
        let kind = if click { "click" } else { "open" };
        let list_key = format!("{}/{}", e.account, e.list);
        let campaign_key =
            (!e.campaign.is_empty()).then(|| super::campaign::key(&e.account, &e.campaign));
        // (first of its kind, first at all) for the recipient, per list and per campaign.
        let (unique_in_list, unique_in_campaign) = {
            let mut figures = self.figures.lock().expect("engagement lock");
            let in_list = self.count(&mut figures.lists, &list_key, "list", kind, &tag, now);
            let in_campaign = campaign_key
                .as_ref()
                .map(|key| self.count(&mut figures.campaigns, key, "campaign", kind, &tag, now));
            (in_list, in_campaign)
        };
        self.dirty.store(true, Ordering::Relaxed);
        crate::metrics::engagement(kind);
        if unique_in_list.1 {
            self.refresh_consent(&e, now);
        }
        if let (Some(campaigns), Some(key), Some((first_of_kind, first_at_all))) =
            (&self.feedback.campaigns, &campaign_key, unique_in_campaign)
        {
            campaigns.engaged(key, click, first_of_kind, first_at_all);
        }
        if let Some(webhooks) = &self.feedback.webhooks {
            use crate::policy::webhook::Kind;
            let kind = if click { Kind::Clicked } else { Kind::Opened };
            if webhooks.wants(&e.account, kind) {
                let mut detail = serde_json::json!({
                    "queue_id": e.id.to_string(),
                    "campaign": (!e.campaign.is_empty()).then_some(&e.campaign),
                });
                if click {
                    detail["url"] = serde_json::json!(e.url);
                }
                webhooks.send(
                    &e.account,
                    super::webhook::WebhookEvent::now(kind, &e.address, Some(&e.list), detail),
                );
            }
        }
        let unique = unique_in_campaign.map_or(unique_in_list.0, |(k, _)| k);
        Ok(Recorded {
            engagement: e,
            unique,
        })
    }

    /// Marks the recipient's consent to the list fresh, off the async threads (a ledger
    /// write is fsynced).
    fn refresh_consent(&self, e: &Engagement, now: u64) {
        let Some(ledger) = self.ledger.clone() else {
            return;
        };
        if e.list.is_empty() {
            return;
        }
        let (account, list, address) = (e.account.clone(), e.list.clone(), e.address.clone());
        let touch = move || {
            if let Err(err) = ledger.touch(&account, &list, &address, now) {
                tracing::error!(error = %err, "could not refresh a consent after an engagement");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(touch);
            }
            Err(_) => touch(),
        }
    }

    /// Counts one engagement (`kind`: open or click) of the recipient tagged `tag` in the
    /// figures of `key` (a list or a campaign, `what` tells which); whether it is the
    /// recipient's first of that kind there, and its first at all.
    fn count(
        &self,
        figures: &mut BTreeMap<String, Counts>,
        key: &str,
        what: &str,
        kind: &str,
        tag: &str,
        now: u64,
    ) -> (bool, bool) {
        let first_of_kind = self.first(&[what, key, kind, tag], now);
        let first_at_all = self.first(&[what, key, "any", tag], now);
        let counts = figures.entry(key.to_string()).or_default();
        if kind == "click" {
            counts.clicks += 1;
            counts.unique_clicks += u64::from(first_of_kind);
        } else {
            counts.opens += 1;
            counts.unique_opens += u64::from(first_of_kind);
        }
        counts.engaged += u64::from(first_at_all);
        counts.last_ms = now;
        (first_of_kind, first_at_all)
    }

    /// Whether the keyed hash of `parts` is new (remembers it).
    fn first(&self, parts: &[&str], now: u64) -> bool {
        let mut h = blake3::Hasher::new_keyed(&self.dedup_key);
        for p in parts {
            h.update(&(p.len() as u32).to_le_bytes());
            h.update(p.as_bytes());
        }
        let hash: [u8; 16] = h.finalize().as_bytes()[..16].try_into().expect("16");
        let day = (now / DAY_MS) as u32;
        let mut seen = self.seen.lock().expect("seen lock");
        let (map, pending) = &mut *seen;
        if map.contains_key(&hash) {
            return false;
        }
        if map.len() < MAX_SEEN {
            map.insert(hash, day);
            pending.push((hash, day));
        }
        true
    }

    /// The figures of `account`'s list `list`.
    pub fn list(&self, account: &str, list: &str) -> Counts {
        let figures = self.figures.lock().expect("engagement lock");
        figures
            .lists
            .get(&format!("{account}/{list}"))
            .copied()
            .unwrap_or_default()
    }

    /// The figures of `account`'s campaign `id`.
    pub fn campaign(&self, account: &str, id: &str) -> Counts {
        let figures = self.figures.lock().expect("engagement lock");
        figures
            .campaigns
            .get(&super::campaign::key(account, id))
            .copied()
            .unwrap_or_default()
    }

    /// Writes what changed (blocking): the figures, and the new unique hashes appended.
    pub fn flush(&self) {
        let pending = std::mem::take(&mut self.seen.lock().expect("seen lock").1);
        if !pending.is_empty() {
            let mut bytes = Vec::with_capacity(pending.len() * 20);
            for (hash, day) in &pending {
                bytes.extend_from_slice(hash);
                bytes.extend_from_slice(&day.to_le_bytes());
            }
            let written =
                crate::files::append(&self.seen_path).and_then(|mut f| f.write_all(&bytes));
            if let Err(e) = written {
                tracing::error!(path = %self.seen_path.display(), error = %e, "cannot append engagement hashes");
            }
        }
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return;
        }
        let oldest_ms =
            crate::envelope::now_ms().saturating_sub(u64::from(self.retention_days) * DAY_MS);
        let snapshot = {
            let mut figures = self.figures.lock().expect("engagement lock");
            figures.lists.retain(|_, c| c.last_ms >= oldest_ms);
            figures.campaigns.retain(|_, c| c.last_ms >= oldest_ms);
            serde_json::to_vec_pretty(&*figures).expect("serialisable")
        };
        if let Err(e) = crate::files::write_atomically(&self.figures_path, &snapshot) {
            tracing::error!(path = %self.figures_path.display(), error = %e, "cannot write the engagement figures");
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Flushes once a second on the blocking pool until `stop`, and once more then.
    pub fn spawn_flusher(
        self: &Arc<Self>,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let stopped = tokio::select! {
                    () = stop.cancelled() => true,
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => false,
                };
                let t = this.clone();
                let _ = tokio::task::spawn_blocking(move || t.flush()).await;
                if stopped {
                    break;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::QueueId;

    fn token(keys: &TokenKeys, click: bool, address: &str) -> String {
        keys.seal_engagement(&Engagement {
            click,
            id: QueueId(1),
            account: "shop".into(),
            list: "weekly".into(),
            campaign: "spring".into(),
            url: if click {
                "https://shop.example/".into()
            } else {
                String::new()
            },
            address: address.into(),
        })
    }

    #[test]
    fn counts_with_unique_recipients_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Arc::new(TokenKeys::from_keys(&[(1, [3; 32])]));
        let tagger = AddressTagger::new([4; 32]);
        let e = Engagements::open(dir.path(), keys.clone(), tagger.clone(), 30).unwrap();
        let open_a = token(&keys, false, "a@example.net");
        assert!(e.record(&open_a, false).unwrap().unique);
        assert!(!e.record(&open_a, false).unwrap().unique);
        e.record(&token(&keys, true, "a@example.net"), true)
            .unwrap();
        e.record(&token(&keys, false, "b@example.net"), false)
            .unwrap();
        // A click token is no open, and the other way round; garbage counts nothing.
        assert!(e.record(&open_a, true).is_err());
        assert!(e.record("garbage", false).is_err());
        let c = e.campaign("shop", "spring");
        assert_eq!(
            (
                c.opens,
                c.clicks,
                c.unique_opens,
                c.unique_clicks,
                c.engaged
            ),
            (3, 1, 2, 1, 2)
        );
        assert_eq!(e.list("shop", "weekly").engaged, 2);
        e.flush();
        drop(e);
        let again = Engagements::open(dir.path(), keys.clone(), tagger, 30).unwrap();
        assert_eq!(again.campaign("shop", "spring").engaged, 2);
        // a@ opened before the restart: not unique now either.
        assert!(!again.record(&open_a, false).unwrap().unique);
        assert_eq!(again.campaign("shop", "spring").unique_opens, 2);
        let raw = std::fs::read_to_string(dir.path().join("state/engagement.json")).unwrap();
        assert!(
            !raw.contains("example.net"),
            "no address in the figures: {raw}"
        );
    }
}
