//! Hot reload of the policy file: on SIGHUP, on an admin request, and when the file changes.
//!
//! The running policy is an `ArcSwap<Policy>` that sessions and delivery read on every use,
//! so swapping in a new one never drops a session: a transaction under way simply sees the
//! new policy at its next step. [`PolicyReloader::reload`] loads and validates the whole file
//! first and swaps only a policy that is valid in full; a bad file is refused with every
//! problem, and the running policy stays. Each successful load gets the next *generation*
//! number (the policy loaded at start is generation 1), which logs, metrics and
//! [`ReloadStatus`] report.
//!
//! [`PolicyReloader::watch`] polls the file instead of using inotify, so it behaves the same
//! on every filesystem (network mounts, bind mounts into containers, editors that replace
//! the file by renaming a new one over it). A change is acted on only once the content is
//! seen unchanged on two polls in a row, so a file caught half-written, or missing for a
//! moment while an editor replaces it, is not loaded; and each distinct bad content is
//! reported once, not at every poll. This module must never swap in a policy that failed
//! validation, and never touches the main config file, which is read at start only.
//!
//! A policy that parses is still refused when it would stop the relay from working
//! ([`account_problems`]): one with no account at all (every client would get `554 5.7.1
//! Relay access denied`), or one that drops every account with mail in the queue (that mail
//! would have no account left). `serve` refuses to start on a policy with no account for
//! the same reason. The queue is asked through [`QueuedAccounts`] (the scheduler's own
//! summary, read only) by [`PolicyReloader::reload_now`], which every trigger of a running
//! relay uses.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::envelope::now_ms;
use crate::policy::Policy;

/// The refusal when the relay runs on the embedded policy (no `[policy] path`).
pub const NO_POLICY_FILE: &str = "no policy file: the embedded policy cannot be reloaded";

/// The accounts that have mail in the queue, as the running relay knows them.
pub trait QueuedAccounts: Send + Sync {
    /// Their names; `None` when the queue cannot be asked (shutting down).
    fn accounts_with_mail(&self) -> BoxFuture<'_, Option<Vec<String>>>;
}

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

impl QueuedAccounts for crate::delivery::Delivery {
    fn accounts_with_mail(&self) -> BoxFuture<'_, Option<Vec<String>>> {
        Box::pin(async move {
            let summary = tokio::time::timeout(QUEUE_ASK_LIMIT, self.summary())
                .await
                .ok()?
                .ok()?;
            Some(
                summary
                    .by_account
                    .into_iter()
                    .filter(|a| a.messages > 0)
                    .map(|a| a.account)
                    .collect(),
            )
        })
    }
}

/// How long a reload waits for the scheduler's answer about the queue.
const QUEUE_ASK_LIMIT: Duration = Duration::from_secs(10);

/// Why `policy` must not be put in force: it has no account, or it drops every account of
/// `queued` (the accounts with mail in the queue; `None`: unknown, not checked). Empty when
/// it may.
pub fn account_problems(policy: &Policy, queued: Option<&[String]>) -> Vec<String> {
    if policy.accounts().is_empty() {
        return vec![
            "the policy has no account: every client would be refused (554 5.7.1 relay access \
             denied); an empty or truncated file is not a policy"
                .to_string(),
        ];
    }
    let Some(queued) = queued.filter(|q| !q.is_empty()) else {
        return Vec::new();
    };
    let dropped: Vec<&str> = queued
        .iter()
        .filter(|a| policy.account(a).is_none())
        .map(String::as_str)
        .collect();
    if dropped.len() == queued.len() {
        return vec![format!(
            "the policy drops every account that has mail in the queue ({}): keep at least \
             one of them, or let their mail drain (or delete it) first",
            dropped.join(", ")
        )];
    }
    if !dropped.is_empty() {
        tracing::warn!(accounts = %dropped.join(", "), "the new policy drops accounts that have mail in the queue");
    }
    Vec::new()
}

/// What asked for a reload (for logs and [`ReloadStatus`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The watcher saw the file's content change.
    File,
    /// SIGHUP.
    Signal,
    /// The admin API.
    Admin,
}

impl Trigger {
    /// The name used in logs and in the status JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::File => "file",
            Trigger::Signal => "signal",
            Trigger::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The reloader's state as the admin API shows it (`GET /admin/policy`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadStatus {
    /// The policy file; `None`: the embedded policy.
    pub path: Option<String>,
    /// The generation of the policy in force (1: the one loaded at start).
    pub generation: u64,
    /// When the policy in force was loaded (unix ms).
    pub loaded_at_ms: u64,
    /// When a reload was last attempted, successful or not (unix ms).
    pub last_attempt_ms: Option<u64>,
    /// What asked for that attempt (`file`, `signal`, `admin`).
    pub last_trigger: Option<String>,
    /// Every problem of the last attempt, when it was refused; `None` once a later reload
    /// succeeds.
    pub last_error: Option<Vec<String>>,
    /// The BLAKE3 hash of the policy file in force (its first 16 hex digits; `embedded`
    /// without a file): equal on two nodes means the same policy.
    pub digest: String,
}

/// What the policy file held when it was looked at: the hash of its content, or why it
/// could not be read. Equal values mean "nothing to do".
#[derive(Debug, Clone, PartialEq, Eq)]
enum Content {
    Hash(blake3::Hash),
    /// Missing (in the middle of a rename-replace, say) or unreadable: the error text.
    Unreadable(String),
}

/// Reloads the policy file and keeps the record of it; shared as `Arc` between the watcher,
/// the signal handler and the admin API.
pub struct PolicyReloader {
    path: Option<PathBuf>,
    policy: Arc<ArcSwap<Policy>>,
    /// The queue, once delivery runs (see [`PolicyReloader::set_queue`]).
    queue: std::sync::OnceLock<Arc<dyn QueuedAccounts>>,
    /// Held for a whole reload, so two triggers at once (a SIGHUP while the watcher fires)
    /// load and swap one after the other and generations follow the order of the swaps.
    state: Mutex<State>,
}

struct State {
    generation: u64,
    loaded_at_ms: u64,
    last_attempt_ms: Option<u64>,
    last_trigger: Option<Trigger>,
    last_error: Option<Vec<String>>,
    /// The content the last reload (or the start) acted on; the watcher reloads only when
    /// the file holds something else, so a SIGHUP right after an edit does not make the
    /// watcher load the same content again, and a bad file is reported once.
    acted_on: Option<Content>,
    /// See [`ReloadStatus::digest`].
    digest: String,
}

impl PolicyReloader {
    /// A reloader for the policy in `policy`, which the caller has just loaded from `path`
    /// (generation 1). Reads the file once, to know which content is in force.
    pub fn new(path: Option<PathBuf>, policy: Arc<ArcSwap<Policy>>) -> PolicyReloader {
        let acted_on = path.as_deref().map(|p| observe(p, &mut None));
        let digest = digest_of(acted_on.as_ref());
        PolicyReloader {
            path,
            policy,
            queue: std::sync::OnceLock::new(),
            state: Mutex::new(State {
                generation: 1,
                loaded_at_ms: now_ms(),
                last_attempt_ms: None,
                last_trigger: None,
                last_error: None,
                acted_on,
                digest,
            }),
        }
    }

    /// Where reloads ask which accounts have queued mail (the running relay's delivery).
    pub fn set_queue(&self, queue: Arc<dyn QueuedAccounts>) {
        let _ = self.queue.set(queue);
    }

    /// What a running relay does for every trigger: asks the queue which accounts have
    /// mail, then [`PolicyReloader::reload_checked`] on the blocking pool.
    pub async fn reload_now(self: &Arc<Self>, trigger: Trigger) -> Result<u64, Vec<String>> {
        let queued = match self.queue.get() {
            Some(q) => q.accounts_with_mail().await,
            None => None,
        };
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.reload_checked(trigger, queued.as_deref()))
            .await
            .unwrap_or_else(|e| Err(vec![format!("the reload failed: {e}")]))
    }

    /// [`PolicyReloader::reload_checked`] without knowing the queue (only the policy's own
    /// problems, and that it has an account, are checked).
    pub fn reload(&self, trigger: Trigger) -> Result<u64, Vec<String>> {
        self.reload_checked(trigger, None)
    }

    /// Loads and validates the policy file and swaps it in; returns the new generation. On
    /// any problem the running policy stays and every problem is returned, one per entry:
    /// the file's, then [`account_problems`] against `queued` (the accounts with mail in
    /// the queue). Logged and counted either way. Blocks while the file is read and checked
    /// (DKIM keys included): call it from a blocking context where that matters.
    pub fn reload_checked(
        &self,
        trigger: Trigger,
        queued: Option<&[String]>,
    ) -> Result<u64, Vec<String>> {
        let mut state = self.lock();
        state.last_attempt_ms = Some(now_ms());
        state.last_trigger = Some(trigger);
        let Some(path) = &self.path else {
            tracing::warn!(%trigger, "policy reload refused: {NO_POLICY_FILE}");
            return Err(refuse(&mut state, vec![NO_POLICY_FILE.to_string()]));
        };
        // Hashed before loading: if the file changes in between, the watcher sees content
        // other than this and loads again, so the newest content always wins.
        state.acted_on = Some(observe(path, &mut None));
        let loaded = Policy::load(path).map_err(|problems| {
            (
                problems.to_string(),
                problems.list.iter().map(ToString::to_string).collect(),
            )
        });
        let checked = loaded.and_then(|policy| {
            let problems = account_problems(&policy, queued);
            if problems.is_empty() {
                Ok(policy)
            } else {
                let text = format!("{}: {}", path.display(), problems.join("; "));
                Err((text, problems))
            }
        });
        match checked {
            Ok(policy) => {
                self.policy.store(Arc::new(policy));
                state.digest = digest_of(state.acted_on.as_ref());
                state.generation += 1;
                state.loaded_at_ms = now_ms();
                state.last_error = None;
                crate::metrics::policy_reload(true, state.generation);
                tracing::info!(
                    path = %path.display(),
                    generation = state.generation,
                    %trigger,
                    "policy reloaded"
                );
                Ok(state.generation)
            }
            Err((text, list)) => {
                tracing::error!(
                    path = %path.display(),
                    generation = state.generation,
                    %trigger,
                    "policy reload refused; the running policy stays. {text}"
                );
                Err(refuse(&mut state, list))
            }
        }
    }

    /// A snapshot of the reloader's state.
    pub fn status(&self) -> ReloadStatus {
        let state = self.lock();
        ReloadStatus {
            path: self.path.as_ref().map(|p| p.display().to_string()),
            generation: state.generation,
            loaded_at_ms: state.loaded_at_ms,
            last_attempt_ms: state.last_attempt_ms,
            last_trigger: state.last_trigger.map(|t| t.as_str().to_string()),
            last_error: state.last_error.clone(),
            digest: state.digest.clone(),
        }
    }

    /// Polls the policy file every `interval` until `stop`, reloading ([`Trigger::File`])
    /// when its content changed (a file merely touched is not reloaded). Returns at once
    /// without a file or with a zero interval.
    pub fn watch(self: Arc<Self>, interval: Duration, stop: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            let Some(path) = self.path.clone() else {
                return;
            };
            if interval.is_zero() {
                return;
            }
            tracing::info!(path = %path.display(), ?interval, "watching the policy file");
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is immediate; `new` already took the content in force.
            ticks.tick().await;
            let mut watch = Watch::default();
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                let this = self.clone();
                let mut w = std::mem::take(&mut watch);
                // Reading and hashing the file is blocking work.
                match tokio::task::spawn_blocking(move || {
                    let due = this.due(&mut w);
                    (w, due)
                })
                .await
                {
                    Ok((w, due)) => {
                        watch = w;
                        if due {
                            // `reload_now` logs and records the outcome.
                            let _ = self.reload_now(Trigger::File).await;
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "policy watcher poll failed"),
                }
            }
        })
    }

    /// One look at the file: whether to reload, because it holds new content that was
    /// already there at the previous poll (a writer still at work is given one interval to
    /// finish).
    fn due(&self, watch: &mut Watch) -> bool {
        let Some(path) = &self.path else {
            return false;
        };
        let now = observe(path, &mut watch.last_read);
        if self.lock().acted_on.as_ref() == Some(&now) {
            watch.pending = None;
            return false;
        }
        if watch.pending.as_ref() != Some(&now) {
            tracing::debug!(path = %path.display(), "policy file changed; reloading once it settles");
            watch.pending = Some(now);
            return false;
        }
        watch.pending = None;
        true
    }

    /// [`PolicyReloader::due`], then the reload without the queue (tests).
    #[cfg(test)]
    fn poll(&self, watch: &mut Watch) {
        if self.due(watch) {
            let _ = self.reload(Trigger::File);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves the state consistent enough to
        // keep reloading; refusing all later reloads would be worse.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Records a refused reload and counts it; returns the problems.
fn refuse(state: &mut State, problems: Vec<String>) -> Vec<String> {
    state.last_error = Some(problems.clone());
    crate::metrics::policy_reload(false, state.generation);
    problems
}

/// The watcher's own memory between polls.
#[derive(Default)]
struct Watch {
    /// The last read of the file, so an unchanged file is only `stat`ed.
    last_read: Option<LastRead>,
    /// New content seen once; acted on when the next poll sees it again.
    pending: Option<Content>,
}

struct LastRead {
    stamp: Stamp,
    hash: blake3::Hash,
    at: SystemTime,
}

/// What changes when a file is written or replaced: inode (rename-replace), length, and
/// modification and change times (ctime cannot be set back by tools that preserve mtime).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// File timestamps are coarse (a kernel tick; whole seconds on some filesystems): a write in
/// the same tick as our read can leave the stamp unchanged. A stamp is only trusted once
/// the read happened this long after the file's last change.
const STAMP_GRANULARITY: Duration = Duration::from_secs(2);

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// The latest of the file's modification and change times.
    fn changed_at(&self) -> SystemTime {
        let (secs, nanos) = self.mtime.max(self.ctime);
        let since_epoch = Duration::new(
            u64::try_from(secs).unwrap_or(0),
            u32::try_from(nanos).unwrap_or(0),
        );
        SystemTime::UNIX_EPOCH + since_epoch
    }
}

/// Hashes the file's content, reusing `last_read` when the file's stamp shows it did not
/// change since (and was not written around the time of that read).
/// The digest of the content a load acted on (see [`ReloadStatus::digest`]).
fn digest_of(content: Option<&Content>) -> String {
    match content {
        Some(Content::Hash(h)) => h.to_hex()[..16].to_string(),
        Some(Content::Unreadable(_)) => "unreadable".to_string(),
        None => "embedded".to_string(),
    }
}

fn observe(path: &Path, last_read: &mut Option<LastRead>) -> Content {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            *last_read = None;
            return Content::Unreadable(e.to_string());
        }
    };
    let stamp = Stamp::of(&meta);
    if let Some(last) = last_read
        && last.stamp == stamp
        && last.at > stamp.changed_at() + STAMP_GRANULARITY
    {
        return Content::Hash(last.hash);
    }
    let at = SystemTime::now();
    match std::fs::read(path) {
        Ok(bytes) => {
            let hash = blake3::hash(&bytes);
            *last_read = Some(LastRead { stamp, hash, at });
            Content::Hash(hash)
        }
        Err(e) => {
            *last_read = None;
            Content::Unreadable(e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "[accounts.local]\nnetworks = [\"127.0.0.0/8\"]\n";
    const OTHER: &str = "[accounts.local]\nnetworks = [\"127.0.0.1/32\"]\n";
    const BAD: &str = "[accounts.local]\nnetworks = [\"nope\"]\ncolour = 1\n";

    fn reloader(dir: &Path, text: &str) -> (Arc<PolicyReloader>, Arc<ArcSwap<Policy>>) {
        let path = dir.join("policy.toml");
        std::fs::write(&path, text).unwrap();
        let policy = Arc::new(ArcSwap::from_pointee(Policy::load(&path).unwrap()));
        let r = Arc::new(PolicyReloader::new(Some(path), policy.clone()));
        (r, policy)
    }

    fn allows_127_0_0_2(policy: &ArcSwap<Policy>) -> bool {
        policy
            .load()
            .identify_by_ip("127.0.0.2".parse().unwrap())
            .is_some()
    }

    #[test]
    fn shared_across_threads() {
        fn check<T: Send + Sync>() {}
        check::<PolicyReloader>();
    }

    #[test]
    fn touched_is_not_changed_and_a_new_stamp_is_rehashed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        std::fs::write(&path, "a").unwrap();
        let mut last = None;
        let first = observe(&path, &mut last);
        // Same content, new inode and times: same Content.
        std::fs::write(dir.path().join("q"), "a").unwrap();
        std::fs::rename(dir.path().join("q"), &path).unwrap();
        assert_eq!(observe(&path, &mut last), first);
        // Same length, new content, written right after the read: seen.
        std::fs::write(&path, "b").unwrap();
        assert_ne!(observe(&path, &mut last), first);
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(observe(&path, &mut last), Content::Unreadable(_)));
    }

    #[test]
    fn a_change_is_acted_on_once_it_settles_and_bad_content_once() {
        let dir = tempfile::tempdir().unwrap();
        let (r, policy) = reloader(dir.path(), GOOD);
        let path = dir.path().join("policy.toml");
        let mut w = Watch::default();
        r.poll(&mut w);
        assert_eq!(r.status().generation, 1, "unchanged file: no reload");
        std::fs::write(&path, OTHER).unwrap();
        r.poll(&mut w);
        assert_eq!(r.status().generation, 1, "first sighting waits");
        r.poll(&mut w);
        assert_eq!(r.status().generation, 2);
        assert!(!allows_127_0_0_2(&policy));
        // Bad content: refused once, not at every poll.
        std::fs::write(&path, BAD).unwrap();
        r.poll(&mut w);
        r.poll(&mut w);
        let refused = r.status();
        assert_eq!(refused.generation, 2);
        assert_eq!(refused.last_error.as_ref().map(Vec::len), Some(2));
        r.poll(&mut w);
        assert_eq!(r.status().last_attempt_ms, refused.last_attempt_ms);
        // A missing file likewise, then the next good content is taken.
        std::fs::remove_file(&path).unwrap();
        r.poll(&mut w);
        r.poll(&mut w);
        let missing = r.status().last_error.unwrap();
        assert!(missing[0].starts_with("cannot read"), "{missing:?}");
        std::fs::write(&path, GOOD).unwrap();
        r.poll(&mut w);
        r.poll(&mut w);
        let s = r.status();
        assert_eq!((s.generation, s.last_error), (3, None));
        assert_eq!(s.last_trigger.as_deref(), Some("file"));
        assert!(allows_127_0_0_2(&policy));
    }

    #[test]
    fn a_signal_reload_is_not_repeated_by_the_watcher() {
        let dir = tempfile::tempdir().unwrap();
        let (r, _) = reloader(dir.path(), GOOD);
        let mut w = Watch::default();
        std::fs::write(dir.path().join("policy.toml"), OTHER).unwrap();
        assert_eq!(r.reload(Trigger::Signal), Ok(2));
        r.poll(&mut w);
        r.poll(&mut w);
        assert_eq!(r.status().generation, 2);
    }

    #[test]
    fn a_policy_with_no_account_or_without_the_queued_ones_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (r, policy) = reloader(dir.path(), GOOD);
        let path = dir.path().join("policy.toml");
        for empty in ["", "# emptied\n", "operator_contacts = []\n"] {
            std::fs::write(&path, empty).unwrap();
            let problems = r.reload(Trigger::Signal).unwrap_err();
            assert!(problems[0].contains("no account"), "{problems:?}");
            assert!(allows_127_0_0_2(&policy), "the running policy stays");
        }
        const SHOP: &str = "[accounts.shop]\nnetworks = [\"127.0.0.0/8\"]\n";
        std::fs::write(&path, SHOP).unwrap();
        let queued = ["local".to_string()];
        let problems = r.reload_checked(Trigger::Admin, Some(&queued)).unwrap_err();
        assert!(problems[0].contains("drops every account that has mail in the queue (local)"));
        let status = r.status();
        assert_eq!((status.generation, status.last_error), (1, Some(problems)));
        // Keeping one of them is enough; so is an empty queue.
        let queued = ["local".to_string(), "shop".to_string()];
        assert_eq!(r.reload_checked(Trigger::Admin, Some(&queued)), Ok(2));
        std::fs::write(&path, GOOD).unwrap();
        assert_eq!(r.reload_checked(Trigger::Admin, Some(&[])), Ok(3));
    }

    #[test]
    fn the_embedded_policy_cannot_be_reloaded() {
        let policy = Arc::new(ArcSwap::from_pointee(Policy::embedded_default()));
        let r = PolicyReloader::new(None, policy);
        assert_eq!(
            r.reload(Trigger::Admin),
            Err(vec![NO_POLICY_FILE.to_string()])
        );
        let s = r.status();
        assert_eq!((s.path, s.generation), (None, 1));
        assert_eq!(s.last_trigger.as_deref(), Some("admin"));
    }
}
