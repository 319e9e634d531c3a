//! What bounces do: the category of every refusal ([`crate::bounce`]) turned into its
//! action, for refusals in the relay's own transactions (told as delivery outcomes) and for
//! bounces mailed back later to the return path (`crate::rewrite::return_path`).
//!
//! - **Suppress at once** (`invalid_recipient`, `bad_domain`, `inactive`) a permanent
//!   failure: a refusal in the relay's own transaction is a global `bounce` suppression
//!   (the address does not exist, for anyone); a bounce mailed back is suppressed for its
//!   account only, since anyone holding the message could have mailed it.
//! - **Suppress after a streak** (`mailbox_full`): once an address bounced full
//!   `[bounce_streak] mailbox_full_count` times within `mailbox_full_days`. The streaks
//!   are kept by the address's keyed fingerprint (no address), in memory and appended to
//!   `state/bounce-streaks.bin` (16 octets a bounce, compacted at start), so a restart
//!   keeps them.
//! - **Count only** (blocks, authentication failures, rate limits, content, routing):
//!   `optin_bounces_total{category,via}`, the delivery log, the account's webhook — never a
//!   suppression.
//!
//! Mail to a return path (`<prefix>+<token>@<domain>`) is taken from anyone, like mail to
//! the feedback address: that address form only, `[bounces] max_size`, `max_per_ip` an
//! hour, a MIME budget, never relayed. It is acted on only when its token is genuine: the
//! token, not the bounce's text, says which message, recipient, account, list and campaign
//! it is about. A tokenless or forged one, and one that is no bounce, is kept aside in
//! `bounces/kept-aside/` (mode 0600, at most [`MAX_KEPT_ASIDE`] files and
//! [`MAX_KEPT_ASIDE_BYTES`]) and counted, never acted on. Auto-replies and delay notices
//! are counted and dropped; a feedback report is handed to the complaint path; a bounce
//! seen before (the same token) changes nothing more. Every bounce acted on is a line in
//! `events/bounces.jsonl` (mode 0600: it carries the address), counts for its campaign's
//! canary, and — when it names the address dead — for the account's health.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use bytes::Bytes;

use crate::bounce::parse::{self, Kind as BounceKind};
use crate::bounce::{Action, Category, Verdict};
use crate::consent::{Change, Kind, Lists, ListsError, Op, Origin, Reason, Scope};
use crate::policy::Policy;
use crate::privacy::AddressTagger;
use crate::privacy::events::EventLog;
use crate::rewrite::return_path::ReturnPaths;
use crate::rewrite::token::ReturnPath;
use crate::smtp::reply::Status;

use super::complaints::{self, Complaints};
use super::intake::{HourlyCap, KeptAside};

/// At most this many unusable messages are kept aside; later ones are logged and dropped.
pub const MAX_KEPT_ASIDE: usize = 10_000;
/// … and at most this many octets of them in all.
pub const MAX_KEPT_ASIDE_BYTES: u64 = 64 << 20;
/// Addresses whose full-mailbox streak is followed at most.
const MAX_STREAKS: usize = 1_000_000;
/// Tokens remembered to tell a repeated bounce (the oldest forgotten first).
const MAX_SEEN: usize = 100_000;

/// Why mail to a return path was kept aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    #[error("no genuine return-path token")]
    Unverified,
    #[error("not a bounce, an auto-reply or a feedback report")]
    NotABounce,
}

/// A bounce acted on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acted {
    pub category: Category,
    pub rule: String,
    pub status: Option<Status>,
    /// The address is now suppressed (it was not before).
    pub suppressed: bool,
}

/// What became of one message to a return path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Acted(Acted),
    /// A delay notice: the remote server keeps trying.
    Delayed,
    AutoReply,
    /// A bounce whose token was seen before.
    Repeated,
    Complaint(complaints::Outcome),
    KeptAside {
        file: Option<PathBuf>,
        why: Unusable,
    },
    /// Too many MIME parts or too deep a nesting: refused.
    TooComplex,
}

#[derive(Debug, thiserror::Error)]
pub enum BounceError {
    #[error("recording the bounce: {0}")]
    Lists(#[from] ListsError),
    #[error("keeping a bounce aside: {0}")]
    KeepAside(std::io::Error),
    #[error("the complaint path: {0}")]
    Complaint(#[from] complaints::ComplaintError),
    #[error("handling the bounce failed: {0}")]
    Task(String),
}

/// The first, blocking look at a message ([`Bounces::examine`]).
enum Examined {
    Done(Outcome),
    /// A feedback report: the complaint path takes it.
    Complaint,
}

/// Full-mailbox bounces per address (fingerprint → times, oldest first), and the records
/// still to be appended to the streak file (`(fingerprint, time)`; time 0: the streak was
/// completed and starts over).
#[derive(Debug, Default)]
struct Streaks {
    by_address: HashMap<u64, VecDeque<u64>>,
    pending: Vec<(u64, u64)>,
}

/// The longest streak window the policy allows (`mailbox_full_days` ≤ 365).
const MAX_STREAK_WINDOW_MS: u64 = 365 * 86_400_000;

impl Streaks {
    /// The streaks a file of `(fingerprint, time)` records holds (16 octets each; a torn
    /// last record is ignored), without what is older than any window.
    fn read(raw: &[u8], now: u64) -> Streaks {
        let mut s = Streaks::default();
        let since = now.saturating_sub(MAX_STREAK_WINDOW_MS);
        for r in raw.chunks_exact(16) {
            let fp = u64::from_le_bytes(r[..8].try_into().expect("8"));
            let time = u64::from_le_bytes(r[8..].try_into().expect("8"));
            if time == 0 {
                s.by_address.remove(&fp);
            } else if time >= since && s.by_address.len() < MAX_STREAKS {
                s.by_address.entry(fp).or_default().push_back(time);
            }
        }
        s
    }

    fn encode(records: impl Iterator<Item = (u64, u64)>) -> Vec<u8> {
        let mut out = Vec::new();
        for (fp, time) in records {
            out.extend_from_slice(&fp.to_le_bytes());
            out.extend_from_slice(&time.to_le_bytes());
        }
        out
    }
}

/// Appends the pending streak records to `path` (blocking; no fsync: a crash may forget
/// the last bounces of a streak, never invent one).
fn flush_streaks(streaks: &Mutex<Streaks>, path: &std::path::Path) {
    let pending = std::mem::take(&mut streaks.lock().expect("streak lock").pending);
    if pending.is_empty() {
        return;
    }
    let bytes = Streaks::encode(pending.into_iter());
    let written = crate::files::append(path).and_then(|mut f| {
        use std::io::Write;
        f.write_all(&bytes)
    });
    if let Err(e) = written {
        tracing::error!(path = %path.display(), error = %e, "cannot append to the streak file");
    }
}

/// Tokens of bounces acted on, to tell a repeated one.
#[derive(Debug, Default)]
struct Seen {
    set: HashSet<[u8; 16]>,
    order: VecDeque<[u8; 16]>,
}

pub struct Bounces {
    pub lists: Arc<Lists>,
    pub policy: Arc<ArcSwap<Policy>>,
    pub tagger: AddressTagger,
    /// `events/bounces.jsonl` in the spool directory.
    pub events: std::sync::Arc<EventLog>,
    /// The campaign canaries, account health and webhooks that bounces feed.
    pub feedback: super::Feedback,
    /// Recognises and opens return paths; `None`: none are taken (`[bounces] return_path
    /// = false`).
    pub paths: Option<ReturnPaths>,
    /// Where a feedback report mailed to a return path goes.
    pub complaints: Option<Arc<Complaints>>,
    /// The delivery log: a bounce mailed back is a `bounced` line (`via: async`).
    pub log: Option<crate::privacy::delivery_log::DeliveryLog>,
    /// Per-account counts: a bounce mailed back counts by category.
    pub counts: Option<Arc<super::counts::AccountCounts>>,
    rate: HourlyCap,
    aside: KeptAside,
    streaks: Arc<Mutex<Streaks>>,
    /// `state/bounce-streaks.bin`: the streaks across restarts; `None`: in memory only.
    streak_file: Option<PathBuf>,
    seen: Mutex<Seen>,
}

impl std::fmt::Debug for Bounces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bounces")
            .field("aside", &self.aside.dir)
            .finish_non_exhaustive()
    }
}

impl Bounces {
    /// Bounces with their event log and kept-aside directory in the spool directory
    /// `spool`, taking `max_per_ip` return-path messages per client address and hour.
    pub fn new(
        spool: &std::path::Path,
        lists: Arc<Lists>,
        policy: Arc<ArcSwap<Policy>>,
        tagger: AddressTagger,
        max_per_ip: u32,
    ) -> Bounces {
        Bounces {
            lists,
            policy,
            tagger,
            events: std::sync::Arc::new(EventLog::new(&spool.join("events/bounces.jsonl"))),
            feedback: Default::default(),
            paths: None,
            complaints: None,
            log: None,
            counts: None,
            rate: HourlyCap::new(max_per_ip),
            aside: KeptAside::new(
                &spool.join("bounces/kept-aside"),
                MAX_KEPT_ASIDE,
                MAX_KEPT_ASIDE_BYTES,
            ),
            streaks: Arc::default(),
            streak_file: None,
            seen: Mutex::default(),
        }
    }

    /// Keeps the full-mailbox streaks in `path` across restarts: reads what it holds
    /// (compacted: only what is still within a window), then appends to it.
    pub fn with_streak_file(mut self, path: &std::path::Path) -> Bounces {
        let now = crate::envelope::now_ms();
        let (streaks, on_disk) = match std::fs::read(path) {
            Ok(raw) => (Streaks::read(&raw, now), raw.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Streaks::default(), 0),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot read the streak file: streaks start afresh");
                (Streaks::default(), 0)
            }
        };
        let compact = Streaks::encode(
            streaks
                .by_address
                .iter()
                .flat_map(|(fp, times)| times.iter().map(move |t| (*fp, *t))),
        );
        // Rewritten only when something was dropped (or the file is new: its mode).
        let written = path
            .parent()
            .map_or(Ok(()), crate::files::private_dir)
            .and_then(|()| match on_disk == compact.len() && on_disk > 0 {
                true => Ok(()),
                false => crate::files::write_atomically(path, &compact),
            });
        if let Err(e) = written {
            tracing::error!(path = %path.display(), error = %e, "cannot write the streak file");
        }
        self.streaks = Arc::new(Mutex::new(streaks));
        self.streak_file = Some(path.to_path_buf());
        self
    }

    /// Smaller kept-aside limits (tests).
    pub fn with_aside_cap(mut self, files: usize, bytes: u64) -> Bounces {
        self.aside = KeptAside::new(&self.aside.dir, files, bytes);
        self
    }

    /// The kept-aside directory.
    pub fn aside_dir(&self) -> &std::path::Path {
        &self.aside.dir
    }

    /// The token of `to` when it is one of the relay's return paths (the relay's domain or
    /// an account's `bounce_domain`), genuine or not.
    pub fn token_of<'a>(&self, to: &'a crate::smtp::Address) -> Option<&'a str> {
        let paths = self.paths.as_ref()?;
        let policy = self.policy.load();
        let domains: Vec<&str> = policy
            .accounts()
            .iter()
            .filter_map(|a| a.bounce_domain.as_deref())
            .collect();
        paths.token_of(to, &domains)
    }

    /// Whether one more message to a return path may come from `client` this hour.
    pub fn admit(&self, client: std::net::IpAddr) -> bool {
        self.rate.admit(client)
    }

    /// Takes one message mailed to return paths whose tokens are `tokens`: acts on it,
    /// keeps it aside, or refuses it when it is too complex to read. Errors only when
    /// nothing could be stored. The parsing and file work run on the blocking pool.
    pub async fn receive(
        self: &Arc<Self>,
        raw: Bytes,
        tokens: Vec<String>,
    ) -> Result<Outcome, BounceError> {
        let this = self.clone();
        let first = raw.clone();
        let examined = tokio::task::spawn_blocking(move || this.examine(&first, &tokens))
            .await
            .map_err(|e| BounceError::Task(e.to_string()))??;
        match examined {
            Examined::Done(outcome) => Ok(outcome),
            Examined::Complaint => {
                crate::metrics::bounce_mail("complaint");
                match &self.complaints {
                    Some(c) => Ok(Outcome::Complaint(c.receive(raw).await?)),
                    None => {
                        let this = self.clone();
                        tokio::task::spawn_blocking(move || {
                            this.keep_aside(&raw, Unusable::NotABounce)
                        })
                        .await
                        .map_err(|e| BounceError::Task(e.to_string()))?
                    }
                }
            }
        }
    }

    /// The blocking part of [`Bounces::receive`] (also what `bounce classify` would do
    /// with a running relay's keys).
    fn examine(&self, raw: &[u8], tokens: &[String]) -> Result<Examined, BounceError> {
        if !complaints::arf::within_mime_budget(raw) {
            crate::metrics::bounce_mail("too_complex");
            tracing::warn!(
                size = raw.len(),
                "bounce refused: too many MIME parts or too deep a nesting"
            );
            return Ok(Examined::Done(Outcome::TooComplex));
        }
        let genuine = self.paths.as_ref().and_then(|paths| {
            tokens
                .iter()
                .find_map(|t| paths.open(t).ok().map(|rp| (t.as_str(), rp)))
        });
        // mail-parser has tripped debug assertions on malformed input before: a message
        // that makes it panic is no bounce.
        let bounce =
            std::panic::catch_unwind(|| parse::parse(raw)).unwrap_or_else(|_| parse::parse(b""));
        if bounce.kind == BounceKind::Arf {
            return Ok(Examined::Complaint);
        }
        let Some((token, rp)) = genuine else {
            return self
                .keep_aside(raw, Unusable::Unverified)
                .map(Examined::Done);
        };
        let outcome = match bounce.kind {
            BounceKind::AutoReply => {
                crate::metrics::bounce_mail("auto_reply");
                tracing::info!(account = %rp.account, "auto-reply to a return path ignored");
                Outcome::AutoReply
            }
            BounceKind::Unknown | BounceKind::Arf => {
                return self
                    .keep_aside(raw, Unusable::NotABounce)
                    .map(Examined::Done);
            }
            BounceKind::Dsn | BounceKind::Text => {
                let Some(report) = bounce.report_for(Some(&rp.address)) else {
                    return self
                        .keep_aside(raw, Unusable::NotABounce)
                        .map(Examined::Done);
                };
                if report.action != parse::Action::Failed {
                    crate::metrics::bounce_mail("delayed");
                    tracing::info!(account = %rp.account, action = report.action.as_str(), "delivery notice that is no failure ignored");
                    Outcome::Delayed
                } else if !self.first_time(token) {
                    crate::metrics::bounce_mail("bounce");
                    Outcome::Repeated
                } else {
                    crate::metrics::bounce_mail("bounce");
                    let verdict = self
                        .policy
                        .load()
                        .bounce_classifier()
                        .classify(&report.evidence());
                    Outcome::Acted(self.act_async(&rp, report, verdict)?)
                }
            }
        };
        Ok(Examined::Done(outcome))
    }

    /// Whether the bounce with this token is new (remembers it).
    fn first_time(&self, token: &str) -> bool {
        let key: [u8; 16] = blake3::hash(token.to_ascii_lowercase().as_bytes()).as_bytes()[..16]
            .try_into()
            .expect("16 octets");
        let mut seen = self.seen.lock().expect("seen lock");
        if !seen.set.insert(key) {
            return false;
        }
        seen.order.push_back(key);
        if seen.order.len() > MAX_SEEN
            && let Some(old) = seen.order.pop_front()
        {
            seen.set.remove(&old);
        }
        true
    }

    /// Acts on a genuine failure mailed back (blocking: it may write the journal).
    fn act_async(
        &self,
        rp: &ReturnPath,
        report: &parse::Report,
        verdict: Verdict,
    ) -> Result<Acted, BounceError> {
        let category = verdict.category;
        crate::metrics::bounce(category, "async");
        if let Some(counts) = &self.counts {
            counts.add_bounce(&rp.account, category);
        }
        let permanent = report.permanent();
        let address =
            crate::consent::key::normalise(&rp.address).unwrap_or_else(|_| rp.address.clone());
        let account = rp.account.as_str();
        let dead = category.dead(permanent);
        let suppress = match category.action() {
            Action::Suppress => dead,
            Action::Streak => {
                let complete = self.streak(&address);
                self.flush_streaks();
                complete
            }
            Action::Count => false,
        };
        let suppressed = suppress && self.suppress(Scope::Account(account), &address)?;
        if dead && let Some(governor) = &self.feedback.governor {
            governor.observe(account, super::health::Signal::HardBounce);
        }
        if let Some(campaigns) = &self.feedback.campaigns
            && !rp.campaign.is_empty()
        {
            campaigns.bounced(
                &super::campaign::key(account, &rp.campaign),
                category,
                permanent,
            );
        }
        let time_ms = crate::envelope::now_ms();
        let list = (!rp.list.is_empty()).then(|| rp.list.clone());
        let status = report.status.map(|s| s.to_string());
        let diagnostic: String = report.text.chars().take(1000).collect();
        let event = serde_json::json!({
            "time_ms": time_ms,
            "account": account,
            "list": list,
            "campaign": (!rp.campaign.is_empty()).then_some(&rp.campaign),
            "queue_id": rp.id.to_string(),
            "address": address,
            "category": category.as_str(),
            "rule": verdict.rule,
            "status": status,
            "suppressed": suppressed,
        });
        if let Err(e) = self.events.append(&event) {
            tracing::error!(error = %e, "could not append to the bounce event log");
        }
        if let Some(log) = &self.log {
            log.event(
                crate::privacy::delivery_log::Kind::Bounced,
                &address,
                &crate::privacy::delivery_log::Details {
                    id: Some(rp.id),
                    account,
                    reply: Some(&diagnostic),
                    category: Some(category.as_str()),
                    via: Some("async"),
                    ..Default::default()
                },
            );
        }
        if let Some(webhooks) = &self.feedback.webhooks {
            use crate::governance::webhook::WebhookEvent;
            use crate::policy::webhook::Kind;
            webhooks.send_blocking(
                account,
                WebhookEvent {
                    kind: Kind::Bounce,
                    address: address.clone(),
                    list,
                    time_ms,
                    detail: serde_json::json!({
                        "status": status,
                        "diagnostic": diagnostic,
                        "category": category.as_str(),
                        "rule": verdict.rule,
                        "hard": dead,
                        "via": "async",
                        "queue_id": rp.id.to_string(),
                        "campaign": (!rp.campaign.is_empty()).then_some(&rp.campaign),
                        "suppressed": suppressed,
                    }),
                },
            );
        }
        tracing::info!(
            account,
            id = %rp.id,
            recipient = %self.tagger.tag(&address),
            category = category.as_str(),
            rule = %crate::smtp::text::Escaped(&verdict.rule),
            suppressed,
            "bounce mailed back"
        );
        Ok(Acted {
            category,
            rule: verdict.rule,
            status: report.status,
            suppressed,
        })
    }

    /// Counts a full-mailbox bounce of `address` now; true when its streak is complete.
    pub fn streak(&self, address: &str) -> bool {
        self.streak_at(address, crate::envelope::now_ms())
    }

    /// [`Bounces::streak`] at `now` (Unix ms).
    pub fn streak_at(&self, address: &str, now: u64) -> bool {
        let rules = self.policy.load().bounce_streak();
        let fp = self
            .lists
            .secret()
            .fingerprint(Kind::Suppression, Scope::Global, address);
        let since = now.saturating_sub(rules.window.as_millis() as u64);
        let mut streaks = self.streaks.lock().expect("streak lock");
        if !streaks.by_address.contains_key(&fp) && streaks.by_address.len() >= MAX_STREAKS {
            streaks
                .by_address
                .retain(|_, times| times.back().is_some_and(|t| *t >= since));
            if streaks.by_address.len() >= MAX_STREAKS {
                tracing::warn!("too many full mailboxes followed at once: this one is not");
                return false;
            }
        }
        let times = streaks.by_address.entry(fp).or_default();
        while times.front().is_some_and(|t| *t < since) {
            times.pop_front();
        }
        times.push_back(now.max(1));
        let complete = times.len() >= rules.count as usize;
        if complete {
            streaks.by_address.remove(&fp);
        }
        if self.streak_file.is_some() {
            streaks
                .pending
                .push((fp, if complete { 0 } else { now.max(1) }));
        }
        complete
    }

    /// Writes the streak records not yet in the streak file (blocking).
    pub fn flush_streaks(&self) {
        if let Some(path) = &self.streak_file {
            flush_streaks(&self.streaks, path);
        }
    }

    /// Records a `bounce` suppression of `address` in `scope`, durably and in force at
    /// once (blocking). Returns whether it is new.
    pub fn suppress(&self, scope: Scope<'_>, address: &str) -> Result<bool, ListsError> {
        suppress(&self.lists, scope, address)
    }

    /// Keeps an unusable message for an operator, counts and logs it (no address).
    fn keep_aside(&self, raw: &[u8], why: Unusable) -> Result<Outcome, BounceError> {
        crate::metrics::bounce_mail(match why {
            Unusable::Unverified => "unverified",
            Unusable::NotABounce => "not_a_bounce",
        });
        let file = self.aside.store(raw).map_err(BounceError::KeepAside)?;
        match &file {
            Some(path) => {
                tracing::warn!(why = %why, size = raw.len(), file = %path.display(), "mail to a return path kept aside")
            }
            None => {
                tracing::warn!(why = %why, size = raw.len(), "mail to a return path dropped: the kept-aside directory is full")
            }
        }
        Ok(Outcome::KeptAside { file, why })
    }
}

/// A `bounce` suppression of `address` (normalised) in `scope`; whether it is new.
fn suppress(lists: &Lists, scope: Scope<'_>, address: &str) -> Result<bool, ListsError> {
    let fp = lists
        .secret()
        .fingerprint(Kind::Suppression, scope, address);
    if lists.get(fp) & Reason::Bounce.bit() != 0 {
        return Ok(false);
    }
    lists.record(&[Change {
        op: Op::Add,
        fp,
        tags: Reason::Bounce.bit(),
        origin: Origin::Delivery,
        time_ms: crate::envelope::now_ms(),
        stamp: 0,
        remote: false,
    }])?;
    crate::metrics::bounce_suppressed();
    Ok(true)
}

/// A recipient the relay gave up on: its bounce is counted by category; a permanent
/// refusal of the address itself is a global suppression, a full mailbox counts toward
/// its streak. The journal write runs on the blocking pool: the scheduler never waits.
impl crate::envelope::OutcomeSink for Bounces {
    fn settled(&self, o: &crate::envelope::RecipientOutcome<'_>) {
        let crate::envelope::Settled::Bounced { category, hard, .. } = o.settled else {
            return;
        };
        crate::metrics::bounce(category, "sync");
        let Ok(address) = crate::consent::key::normalise(o.address()) else {
            return;
        };
        // The relay's own notices (DSNs) go to a client's envelope sender, who never asked
        // for anything: their failure says nothing about a recipient of the accounts' mail
        // (and on a first run with no working DNS it would suppress the client's own
        // address).
        if o.envelope.generated_dsn {
            return;
        }
        let streak = category.action() == Action::Streak;
        let suppress_now = hard || (streak && self.streak(&address));
        let persist = streak && self.streak_file.is_some();
        if !(suppress_now || persist) {
            return;
        }
        let (lists, streaks, file) = (
            self.lists.clone(),
            self.streaks.clone(),
            self.streak_file.clone(),
        );
        // Why, for `suppress check`: an operator who finds an address suppressed can tell a
        // real dead mailbox from the relay's own DNS outage or a first-run misconfiguration.
        let crate::envelope::Settled::Bounced {
            status,
            diagnostic,
            rule,
            ..
        } = o.settled
        else {
            return;
        };
        let event = suppress_now.then(|| {
            serde_json::json!({
                "time_ms": crate::envelope::now_ms(),
                "account": o.envelope.account,
                "queue_id": o.id.to_string(),
                "address": address,
                "category": category.as_str(),
                "rule": rule,
                "status": status.to_string(),
                "diagnostic": diagnostic.chars().take(300).collect::<String>(),
                "site": o.site,
                "via": "delivery",
                "suppressed": true,
            })
        });
        let events = self.events.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(path) = file {
                flush_streaks(&streaks, &path);
            }
            if let Some(event) = event {
                if let Err(e) = suppress(&lists, Scope::Global, &address) {
                    tracing::error!(error = %e, "could not record a bounce as a suppression");
                }
                if let Err(e) = events.append(&event) {
                    tracing::error!(error = %e, "could not append to the bounce event log");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests;
