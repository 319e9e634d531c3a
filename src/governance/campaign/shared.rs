//! Cluster mode for staged campaign release: one canary across the nodes, one verdict.
//!
//! Each campaign has a hash in Redis, `PREFIX campaign:ACCOUNT/ID`: the canary's size
//! (set by the first node that sees the campaign, or by a declaration), when it started
//! (Redis's clock), the canary's figures summed over the nodes, and the verdict once there
//! is one.
//!
//! - **Admission.** A new message of a campaign in its canary is held whole until Redis
//!   says how many of its recipients the canary still takes ([`ask`]: one script counts
//!   them against the size atomically), so the canary is its share of the campaign however
//!   the mail is spread over the nodes. While Redis is away a node admits its share (of
//!   the nodes last seen) of what the canary had left at the last reading.
//! - **Figures.** Every second a node adds what its canary recipients did since its last
//!   addition to the hash and reads back the sums ([`spawn`]); the sums are what is judged,
//!   what `GET /admin/campaigns` shows as `cluster`, and what a decline report quotes.
//! - **Verdict.** When the window has passed (from the start in Redis) the first node to
//!   judge writes its verdict with `HSETNX`; whoever loses that race applies the winner's.
//!   An admin's release or decline on any node goes the same way ([`decide`]). The verdict
//!   is announced on the bus and each node applies it (held mail released or removed); a
//!   node that missed the announcement finds it at its next reading. While Redis is away
//!   no policy verdict is given (the canary waits); an admin's verdict is applied here and
//!   shared when Redis answers again (if the node is not restarted meanwhile).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{Campaign, CampaignError, Campaigns, Figures, Stage};
use crate::cluster::{Announcement, Cluster};
use crate::policy::Policy;

/// How often a node adds its canary figures to the cluster's and reads the sums.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// How long a campaign's hash stays in Redis after its last change.
const KEEP_MS: u64 = 30 * 86_400_000;

/// What a node does when a verdict reaches it (release or remove the held mail).
pub type OnVerdict = Arc<dyn Fn(&str) + Send + Sync>;

/// How both scripts below open a campaign's hash KEYS[1]: its size ARGV[1] and its start
/// (Redis's clock) unless a node set them, kept ARGV[2] ms from now.
const OPEN: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSETNX', KEYS[1], 'size', ARGV[1])
redis.call('HSETNX', KEYS[1], 'started', now)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
";

/// Admits up to ARGV[3] recipients to the canary of KEYS[1] (opened as [`OPEN`] says).
/// Returns {recipients admitted, ''}, or {0, verdict} when the campaign has had its
/// verdict.
static ADMIT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{OPEN}{}",
        r"
local v = redis.call('HGET', KEYS[1], 'verdict')
if v then return {0, v} end
local size = tonumber(redis.call('HGET', KEYS[1], 'size'))
local admitted = tonumber(redis.call('HGET', KEYS[1], 'admitted') or '0')
local send = math.max(0, math.min(tonumber(ARGV[3]), size - admitted))
if send > 0 then redis.call('HINCRBY', KEYS[1], 'admitted', send) end
return {send, ''}
"
    ))
});

/// Adds a node's figures (ARGV[3..]: name, count, …) to the campaign KEYS[1] (opened as
/// [`OPEN`] says) and returns the whole hash.
static ADD: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{OPEN}{}",
        r"
for i = 3, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], 'n:' .. ARGV[i], ARGV[i + 1])
end
return redis.call('HGETALL', KEYS[1])
"
    ))
});

/// Records ARGV[1] as the verdict of KEYS[1] unless it has one; returns the verdict in
/// force.
static DECIDE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
redis.call('HSETNX', KEYS[1], 'verdict', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('HGET', KEYS[1], 'verdict')
",
    )
});

/// A campaign's verdict as the cluster keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// Released (else declined, for `reason`).
    pub released: bool,
    pub reason: Option<String>,
    /// `policy` or `admin`.
    pub by: String,
    pub node: String,
    /// When it was given (unix ms, the deciding node's clock).
    pub ms: u64,
}

/// Redis's answer to a node admitting a message's recipients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The first this many of them are the canary's.
    Send(u64),
    /// The campaign has had its verdict.
    Decided(Verdict),
}

fn hash_key(cluster: &Cluster, key: &str) -> String {
    cluster.key(&format!("campaign:{key}"))
}

/// Asks Redis how many of `n` recipients the canary of `key` takes (`size`: its size if
/// no node has set it). `None`: Redis did not answer (the node admits its own share).
pub async fn ask(cluster: &Cluster, key: &str, n: u64, size: u64) -> Option<Answer> {
    let k = hash_key(cluster, key);
    let (send, verdict): (u64, String) = cluster
        .call("campaign", |mut c| async move {
            ADMIT
                .key(k)
                .arg(size)
                .arg(KEEP_MS)
                .arg(n)
                .invoke_async(&mut c)
                .await
        })
        .await?;
    if verdict.is_empty() {
        return Some(Answer::Send(send));
    }
    match serde_json::from_str(&verdict) {
        Ok(v) => Some(Answer::Decided(v)),
        Err(_) => {
            tracing::warn!(campaign = key, "cluster: a campaign verdict not understood");
            None
        }
    }
}

/// Applies the cluster's verdict to this node's registry; whether it changed anything
/// (the caller then releases or removes the held mail).
pub fn apply(campaigns: &Campaigns, key: &str, v: &Verdict) -> bool {
    let why = (!v.released).then(|| v.reason.clone().unwrap_or_else(|| "declined".into()));
    let by = format!("{} on {}", v.by, v.node);
    campaigns.decide(key, why, &by, v.ms).is_ok()
}

/// Writes `v` as the campaign's verdict unless it has one; the verdict in force, `None`
/// when Redis did not answer.
async fn record(cluster: &Cluster, key: &str, v: &Verdict) -> Option<Verdict> {
    let k = hash_key(cluster, key);
    let json = serde_json::to_string(v).ok()?;
    let winner: String = cluster
        .call("campaign", |mut c| async move {
            DECIDE
                .key(k)
                .arg(json)
                .arg(KEEP_MS)
                .invoke_async(&mut c)
                .await
        })
        .await?;
    serde_json::from_str(&winner).ok()
}

/// An admin's release (`why` none) or decline: recorded in Redis unless the campaign has
/// a verdict there already (then that one is applied here and the admin told), applied
/// here and announced. Redis away: applied here, shared when it answers.
pub async fn decide(
    cluster: &Arc<Cluster>,
    campaigns: &Arc<Campaigns>,
    key: &str,
    why: Option<String>,
    by: &str,
) -> Result<Campaign, CampaignError> {
    if campaigns.get(key).is_none() {
        return Err(CampaignError::NoSuchCampaign(key.to_string()));
    }
    let v = Verdict {
        released: why.is_none(),
        reason: why.clone(),
        by: by.to_string(),
        node: cluster.node_id().to_string(),
        ms: crate::envelope::now_ms(),
    };
    let Some(winner) = record(cluster, key, &v).await else {
        let (by, ms) = (by.to_string(), v.ms);
        let c = blocking(campaigns, key, move |cs, k| cs.decide(k, why, &by, ms)).await?;
        campaigns.unshared_verdict(key);
        return Ok(c);
    };
    let (cs, k, w) = (campaigns.clone(), key.to_string(), winner.clone());
    let _ = tokio::task::spawn_blocking(move || apply(&cs, &k, &w)).await;
    if winner != v {
        return Err(CampaignError::Decided(key.to_string()));
    }
    announce(cluster, key).await;
    campaigns
        .get(key)
        .ok_or_else(|| CampaignError::NoSuchCampaign(key.to_string()))
}

/// A declared size: the canary's size in Redis too (unless it has had its verdict).
pub async fn declare(cluster: &Cluster, key: &str, canary_size: u64) {
    let k = hash_key(cluster, key);
    cluster
        .call("campaign", |mut c| async move {
            redis::pipe()
                .hset(&k, "size", canary_size)
                .ignore()
                .pexpire(&k, KEEP_MS as i64)
                .ignore()
                .query_async::<()>(&mut c)
                .await
        })
        .await;
}

async fn blocking<T: Send + 'static>(
    campaigns: &Arc<Campaigns>,
    key: &str,
    f: impl FnOnce(&Campaigns, &str) -> Result<T, CampaignError> + Send + 'static,
) -> Result<T, CampaignError> {
    let (cs, k) = (campaigns.clone(), key.to_string());
    tokio::task::spawn_blocking(move || f(&cs, &k))
        .await
        .map_err(|e| CampaignError::File {
            path: "campaigns".into(),
            reason: e.to_string(),
        })?
}

async fn announce(cluster: &Cluster, key: &str) {
    cluster
        .announce(Announcement::Verdict {
            campaign: key.to_string(),
            node: cluster.node_id().to_string(),
        })
        .await;
}

/// Counts `campaigns`' canaries across `cluster` and gives their verdicts once; stops with
/// `stop`. Call [`Campaigns::share`] first, before mail is admitted.
pub fn spawn(
    campaigns: Arc<Campaigns>,
    cluster: Arc<Cluster>,
    policy: Arc<ArcSwap<Policy>>,
    on_verdict: OnVerdict,
    stop: CancellationToken,
) {
    let mut heard = cluster.announcements();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SYNC_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let sync = Syncer {
            campaigns,
            cluster,
            policy,
            on_verdict,
        };
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => sync.all().await,
                a = heard.recv() => match a {
                    Ok(Announcement::Verdict { node, .. }) if node != sync.cluster.node_id() => {
                        sync.all().await;
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => sync.all().await,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
}

struct Syncer {
    campaigns: Arc<Campaigns>,
    cluster: Arc<Cluster>,
    policy: Arc<ArcSwap<Policy>>,
    on_verdict: OnVerdict,
}

impl Syncer {
    /// Shares the verdicts made here while Redis was away, then adds every canary's
    /// figures, reads the sums, and applies or gives the verdicts.
    async fn all(&self) {
        if !self.cluster.is_up() {
            return;
        }
        for key in self.campaigns.take_unshared_verdicts() {
            self.share_verdict(&key).await;
        }
        let canaries: Vec<Campaign> = self
            .campaigns
            .list()
            .into_iter()
            .filter(|c| c.stage == Stage::Canary)
            .collect();
        for c in canaries {
            if !self.one(&c).await {
                return; // Redis went away: the rest waits for the next tick
            }
        }
    }

    /// A verdict made here while Redis was away: recorded unless another node gave one
    /// meanwhile (then that one stays the cluster's; this node keeps what it did).
    async fn share_verdict(&self, key: &str) {
        let Some(c) = self.campaigns.get(key) else {
            return;
        };
        let v = Verdict {
            released: c.stage == Stage::Released,
            reason: c.reason.clone(),
            by: c.decided_by.clone().unwrap_or_else(|| "admin".into()),
            node: self.cluster.node_id().to_string(),
            ms: c.decided_ms.unwrap_or_default(),
        };
        match record(&self.cluster, key, &v).await {
            Some(w) if w == v => announce(&self.cluster, key).await,
            Some(w) => tracing::warn!(
                campaign = key,
                here_released = v.released,
                cluster_released = w.released,
                "a verdict given here while Redis was away differs from the cluster's"
            ),
            None => self.campaigns.unshared_verdict(key),
        }
    }

    /// One campaign in its canary; false when Redis did not answer.
    async fn one(&self, c: &Campaign) -> bool {
        let key = super::key(&c.account, &c.id);
        let added = c.canary.beyond(&c.shared);
        let k = hash_key(&self.cluster, &key);
        let mut inv = ADD.prepare_invoke();
        inv.key(k).arg(c.canary_size).arg(KEEP_MS);
        // Admissions through `ask` are in Redis already (and in `shared`).
        for (name, n) in added.fields() {
            inv.arg(name).arg(n);
        }
        let hash: Option<HashMap<String, String>> = self
            .cluster
            .call(
                "campaign",
                |mut c| async move { inv.invoke_async(&mut c).await },
            )
            .await;
        let Some(hash) = hash else {
            return false;
        };
        let (sums, size, started) = read_hash(&hash);
        self.campaigns.synced(&key, &added, sums, size);
        if let Some(v) = hash.get("verdict") {
            match serde_json::from_str::<Verdict>(v) {
                Ok(v) => self.apply(&key, v).await,
                Err(_) => {
                    tracing::warn!(campaign = key, "cluster: a campaign verdict not understood")
                }
            }
            return true;
        }
        let rules = self.policy.load().campaign_rules();
        let now = crate::envelope::now_ms();
        let Some(c) = self.campaigns.get(&key) else {
            return true;
        };
        if started + rules.window.as_millis() as u64 > now || c.figures().finished == 0 {
            return true;
        }
        let why = c.judge(&rules, c.tracked(&self.policy.load()));
        let v = Verdict {
            released: why.is_none(),
            reason: why,
            by: "policy".into(),
            node: self.cluster.node_id().to_string(),
            ms: now,
        };
        let Some(winner) = record(&self.cluster, &key, &v).await else {
            return false;
        };
        let ours = winner == v;
        self.apply(&key, winner).await;
        if ours {
            announce(&self.cluster, &key).await;
        }
        true
    }

    async fn apply(&self, key: &str, v: Verdict) {
        let (cs, k) = (self.campaigns.clone(), key.to_string());
        if let Ok(true) = tokio::task::spawn_blocking(move || apply(&cs, &k, &v)).await {
            (self.on_verdict)(key);
        }
    }
}

/// A campaign's hash: the summed figures (`n:NAME` counts, and `admitted` counted by
/// [`ask`]), the canary's size, when it started.
fn read_hash(hash: &HashMap<String, String>) -> (Figures, u64, u64) {
    let num = |k: &str| hash.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let mut counts: Vec<(&str, u64)> = hash
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("n:")?, v.parse().ok()?)))
        .collect();
    // `admitted` is counted by `ask`, and by nodes that admitted alone while Redis was away.
    let admitted = num("admitted") + num("n:admitted");
    counts.retain(|(k, _)| *k != "admitted");
    counts.push(("admitted", admitted));
    (Figures::from_fields(counts), num("size"), num("started"))
}

#[cfg(test)]
mod tests;
