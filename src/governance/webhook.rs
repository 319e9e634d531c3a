//! Signed webhooks: unsubscribes, complaints, bounces and — when asked — every delivery
//! result, open and click told to the sending account's own systems (`[accounts.NAME.
//! webhook]` in the policy), so it can update its records, in the relay's own JSON (one
//! event per POST, or `{"events": […]}` batches of up to `max_batch`), or in the formats
//! listmonk and SES consumers already read ([`format`]).
//!
//! [`Webhooks::send`] never blocks and never fails its caller. Each event first becomes a
//! file `state/webhooks/<time>-<random>.json` in the spool directory (mode 0600, fsynced,
//! renamed into place), holding the exact JSON body that will be POSTed; the file is the
//! outbox entry and is deleted once the account's endpoint answered 2xx. A worker task
//! delivers due events oldest first, one POST at a time per account (a failing endpoint
//! holds that account's later events back and nobody else's), and retries a failure (non-2xx,
//! connection error, no answer within [`ATTEMPT_TIMEOUT`]) after `[webhooks]
//! retry_initial`, doubling up to [`RETRY_MAX`], each delay shortened by up to a fifth at
//! random. An event still undelivered [`GIVE_UP_AFTER`] after it happened is given up:
//! logged, and its file moved to `state/webhooks/failed/`. At start the worker picks up
//! every file a previous run left: delivery is at least once, and receivers dedupe on
//! `X-Optin-Id`. Retry counts live in memory only, so a restart retries at once.
//!
//! Every request is signed: `X-Optin-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
//! "<t>.<body>" keyed with the account's secret>` (see [`signature`]). The URL and the
//! secret are read from the policy in force at each attempt, so an edited webhook applies
//! to events already queued; an account whose webhook is gone (or no longer takes that kind
//! of event) has its queued events dropped, with a log line.
//!
//! The events carry the recipient's address — it is the point of them — so this module
//! must never log one: log lines name the account, the event id and its kind only.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use ring::hmac;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use crate::config::WEBHOOK_RETRY_MAX as RETRY_MAX;
use crate::policy::Policy;
use crate::policy::webhook::Kind;
use crate::policy::webhook::Target;
use http::post;

/// An event not delivered this long after it happened is given up.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(3 * 86_400);
/// One attempt (resolving, connecting, TLS, request, response head) may take this long.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Deliveries in flight at once, over all accounts.
const MAX_IN_FLIGHT: usize = 16;
/// The outbox, inside the spool directory.
const OUTBOX: &str = "state/webhooks";

/// One event for an account's webhook.
#[derive(Clone)]
pub struct WebhookEvent {
    pub kind: Kind,
    /// The recipient the event is about (personal data: never logged).
    pub address: String,
    /// The list, when the event concerns one.
    pub list: Option<String>,
    /// When it happened, Unix milliseconds.
    pub time_ms: u64,
    /// Kind-specific facts (a bounce's `status` and `diagnostic`, say).
    pub detail: serde_json::Value,
}

impl WebhookEvent {
    /// An event that happens now.
    pub fn now(
        kind: Kind,
        address: &str,
        list: Option<&str>,
        detail: serde_json::Value,
    ) -> WebhookEvent {
        WebhookEvent {
            kind,
            address: address.to_string(),
            list: list.map(str::to_string),
            time_ms: crate::envelope::now_ms(),
            detail,
        }
    }
}

impl std::fmt::Debug for WebhookEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No address: a Debug print must not leak one into a log.
        f.debug_struct("WebhookEvent")
            .field("kind", &self.kind)
            .field("list", &self.list)
            .field("time_ms", &self.time_ms)
            .finish_non_exhaustive()
    }
}

/// `t=<t>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`: the `X-Optin-Signature` value.
pub fn signature(secret: &[u8], t: u64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(t.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let mut out = format!("t={t},v1=");
    for b in ctx.sign().as_ref() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The delay before the next attempt after `failures` failed ones in a row, without
/// jitter: `initial` doubling, at most [`RETRY_MAX`].
pub fn backoff_base(initial: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    initial.saturating_mul(1 << doublings).min(RETRY_MAX)
}

/// [`backoff_base`] shortened by up to a fifth at random, so that accounts whose endpoints
/// failed together do not come back together (and never later than the cap).
pub fn backoff(initial: Duration, failures: u32) -> Duration {
    backoff_base(initial, failures).mul_f64(rand::random_range(0.8..=1.0))
}

/// Whether an event that happened at `time_ms` is past [`GIVE_UP_AFTER`] at `now_ms`.
pub fn expired(time_ms: u64, now_ms: u64) -> bool {
    now_ms.saturating_sub(time_ms) >= GIVE_UP_AFTER.as_millis() as u64
}

/// The webhook outbox and its sender.
pub struct Webhooks {
    /// `state/webhooks` in the spool directory.
    dir: PathBuf,
    /// Read at every send and every attempt: webhooks follow policy reloads.
    policy: Arc<ArcSwap<Policy>>,
    retry_initial: Duration,
    /// Verifies https endpoints against the Mozilla roots.
    tls: Arc<ClientConfig>,
    /// Stored events for the worker.
    wake: mpsc::UnboundedSender<Queued>,
    /// The worker's end, taken when it starts.
    inbox: Mutex<Option<mpsc::UnboundedReceiver<Queued>>>,
    /// The last id's time (µs): ids, and so file names, sort in the order of sends.
    last_us: AtomicU64,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// An event stored in the outbox, as the worker knows it (no address in memory).
#[derive(Debug, Clone)]
struct Queued {
    /// The event id, also the file's stem.
    id: String,
    account: String,
    kind: Kind,
    time_ms: u64,
}

/// What the stored file holds besides the address, read back at start.
#[derive(serde::Deserialize)]
struct StoredHead {
    account: String,
    event: String,
    time_ms: u64,
}

/// The POSTed body, stored as is.
#[derive(serde::Serialize)]
struct Payload<'a> {
    id: &'a str,
    account: &'a str,
    event: &'static str,
    address: &'a str,
    list: Option<&'a str>,
    time_ms: u64,
    detail: &'a serde_json::Value,
}

/// What became of one event in an attempt.
#[derive(Debug)]
enum Done {
    /// A 2xx answer: the file is gone.
    Delivered(StatusCode),
    /// Not to be sent (any more): the file is gone.
    Dropped(&'static str),
}

/// How one attempt (one POST of a batch of an account's events) ended: the events done
/// with, and, when the POST failed, why (the rest is retried).
#[derive(Debug, Default)]
struct Attempted {
    done: Vec<(String, Done)>,
    failed: Option<String>,
}

impl Attempted {
    fn failed(why: String) -> Attempted {
        Attempted {
            done: Vec::new(),
            failed: Some(why),
        }
    }
}

impl Webhooks {
    /// The outbox in `spool_dir`, retrying after `retry_initial` first. Nothing is sent
    /// until [`Webhooks::spawn_worker`].
    pub fn new(
        spool_dir: &Path,
        policy: Arc<ArcSwap<Policy>>,
        retry_initial: Duration,
    ) -> Result<Webhooks, crate::tls::TlsError> {
        let (wake, inbox) = mpsc::unbounded_channel();
        Ok(Webhooks {
            dir: spool_dir.join(OUTBOX),
            policy,
            retry_initial,
            tls: crate::tls::verifying_client_config(None)?,
            wake,
            inbox: Mutex::new(Some(inbox)),
            last_us: AtomicU64::new(0),
        })
    }

    /// Queues `event` for `account`'s webhook, when the account has one that takes this
    /// kind. Never blocks (the file is written on the blocking pool) and never fails: a
    /// file that cannot be written is logged.
    pub fn send(&self, account: &str, event: WebhookEvent) {
        let Some(job) = self.prepare(account, &event) else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(move || job.store());
            }
            Err(_) => job.store(),
        }
    }

    /// [`Webhooks::send`] for callers already on a blocking thread: returns once the
    /// event is on disk, so a crash right after cannot lose it.
    pub fn send_blocking(&self, account: &str, event: WebhookEvent) {
        if let Some(job) = self.prepare(account, &event) {
            job.store();
        }
    }

    /// The file to write for an event, if the account's webhook wants it.
    fn prepare(&self, account: &str, event: &WebhookEvent) -> Option<Store> {
        let policy = self.policy.load();
        let hook = policy.account(account)?.webhook.as_ref()?;
        if !hook.wants(event.kind) {
            return None;
        }
        let id = self.next_id();
        let body = serde_json::to_vec(&Payload {
            id: &id,
            account,
            event: event.kind.as_str(),
            address: &event.address,
            list: event.list.as_deref(),
            time_ms: event.time_ms,
            detail: &event.detail,
        })
        .ok()?;
        Some(Store {
            dir: self.dir.clone(),
            wake: self.wake.clone(),
            body,
            queued: Queued {
                id,
                account: account.to_string(),
                kind: event.kind,
                time_ms: event.time_ms,
            },
        })
    }

    /// `<µs since 1970, 16 digits>-<16 hex random>`: unique, and in the order of sends.
    fn next_id(&self) -> String {
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let prev = self
            .last_us
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                Some(now_us.max(last + 1))
            })
            .unwrap_or(now_us);
        let us = now_us.max(prev + 1);
        format!("{us:016}-{:016x}", rand::random::<u64>())
    }

    /// Starts the worker: it picks up what a previous run left, then delivers until
    /// `stop` (an attempt under way is abandoned; its event stays for the next start).
    /// Call once; a second call returns a task that does nothing.
    pub fn spawn_worker(self: &Arc<Self>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let inbox = self.inbox.lock().ok().and_then(|mut i| i.take());
        let hooks = self.clone();
        tokio::spawn(async move {
            match inbox {
                Some(inbox) => Worker::new(hooks, inbox).run(stop).await,
                None => tracing::error!("the webhook worker was started twice"),
            }
        })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Whether `account`'s webhook takes `kind` events now (cheap: ask before building an
    /// event on a hot path).
    pub fn wants(&self, account: &str, kind: Kind) -> bool {
        let policy = self.policy.load();
        policy
            .account(account)
            .and_then(|a| a.webhook.as_ref())
            .is_some_and(|h| h.wants(kind))
    }

    /// Events per POST for `account` now.
    fn max_batch(&self, account: &str) -> usize {
        let policy = self.policy.load();
        policy
            .account(account)
            .and_then(|a| a.webhook.as_ref())
            .map_or(1, |h| h.max_batch)
    }

    /// One delivery attempt of stored events of one account (oldest first), with the
    /// policy in force now: one POST in the webhook's format.
    async fn attempt(&self, batch: &[Queued]) -> Attempted {
        let Some(first) = batch.first() else {
            return Attempted::default();
        };
        let hook = {
            let policy = self.policy.load();
            policy
                .account(&first.account)
                .and_then(|a| a.webhook.clone())
        };
        let mut out = Attempted::default();
        let Some(hook) = hook else {
            for q in batch {
                let done = self.drop_event(q, "the account has no webhook now").await;
                out.done.push((q.id.clone(), done));
            }
            return out;
        };
        let mut bodies: Vec<(&Queued, Vec<u8>)> = Vec::with_capacity(batch.len());
        for q in batch {
            if !hook.wants(q.kind) {
                let why = "the account's webhook no longer takes this event";
                out.done.push((q.id.clone(), self.drop_event(q, why).await));
                continue;
            }
            let path = self.path(&q.id);
            match tokio::fs::read(&path).await {
                Ok(b) => bodies.push((q, b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    out.done
                        .push((q.id.clone(), Done::Dropped("its file is gone")));
                }
                Err(e) => {
                    out.failed = Some(format!("cannot read {}: {e}", path.display()));
                    return out;
                }
            }
        }
        let body = match bodies.as_slice() {
            [] => return out,
            [(q, stored)] => match format::render(hook.format, stored) {
                Ok(b) => b,
                Err(why) => {
                    tracing::warn!(account = %q.account, id = %q.id, error = %why, "webhook event cannot be sent in its format");
                    let done = self.drop_event(q, "it cannot be sent in the format").await;
                    out.done.push((q.id.clone(), done));
                    return out;
                }
            },
            // Only the relay's own format batches: `{"events": [...]}` of the stored events.
            many => {
                let mut b = b"{\"events\":[".to_vec();
                for (i, (_, stored)) in many.iter().enumerate() {
                    if i > 0 {
                        b.push(b',');
                    }
                    b.extend_from_slice(stored);
                }
                b.extend_from_slice(b"]}");
                b
            }
        };
        let t = crate::envelope::now_ms() / 1000;
        let (lead, _) = bodies[0];
        let event = match bodies.len() {
            1 => lead.kind.as_str().to_string(),
            _ => "batch".to_string(),
        };
        let mut headers = vec![
            ("x-optin-event", event),
            ("x-optin-id", lead.id.clone()),
            ("x-optin-count", bodies.len().to_string()),
            (
                "x-optin-signature",
                signature(hook.secret.as_bytes(), t, &body),
            ),
        ];
        if let Some((user, password)) = &hook.basic_auth {
            use base64::Engine;
            let credentials =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            headers.push(("authorization", format!("Basic {credentials}")));
        }
        let result = tokio::time::timeout(
            ATTEMPT_TIMEOUT,
            post(&hook.url, self.tls.clone(), &headers, body),
        )
        .await;
        match result {
            Ok(Ok(status)) if status.is_success() => {
                for (q, _) in &bodies {
                    if let Err(e) = tokio::fs::remove_file(self.path(&q.id)).await {
                        // Delivered again at the next start: at least once.
                        tracing::error!(account = %q.account, id = %q.id, error = %e, "could not remove a delivered webhook event");
                    }
                    out.done.push((q.id.clone(), Done::Delivered(status)));
                }
            }
            Ok(Ok(status)) => out.failed = Some(format!("answered {status}")),
            Ok(Err(e)) => out.failed = Some(e),
            Err(_) => out.failed = Some(format!("no answer within {ATTEMPT_TIMEOUT:?}")),
        }
        out
    }

    /// Removes an event that is not to be sent.
    async fn drop_event(&self, q: &Queued, why: &'static str) -> Done {
        match tokio::fs::remove_file(self.path(&q.id)).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::error!(account = %q.account, id = %q.id, error = %e, "could not remove a dropped webhook event")
            }
        }
        Done::Dropped(why)
    }
}

/// Writing one event's file (on a blocking thread).
struct Store {
    dir: PathBuf,
    wake: mpsc::UnboundedSender<Queued>,
    body: Vec<u8>,
    queued: Queued,
}

impl Store {
    /// Writes the file durably, then hands the event to the worker.
    fn store(self) {
        let Store {
            dir,
            wake,
            body,
            queued,
        } = self;
        match write_durably(&dir, &queued.id, &body) {
            Ok(()) => {
                tracing::debug!(account = %queued.account, id = %queued.id, event = queued.kind.as_str(), "webhook event queued");
                // No worker (yet, or any more): the file is picked up at the next start.
                let _ = wake.send(queued);
            }
            Err(e) => {
                tracing::error!(account = %queued.account, id = %queued.id, event = queued.kind.as_str(), dir = %dir.display(), error = %e, "could not store a webhook event; it is lost")
            }
        }
    }
}

/// `<dir>/<id>.json`, mode 0600, written atomically (see [`crate::files::AtomicFile`]),
/// so the worker and a restart see a whole file or none.
fn write_durably(dir: &Path, id: &str, body: &[u8]) -> std::io::Result<()> {
    crate::files::private_dir(dir)?;
    crate::files::write_atomically(&dir.join(format!("{id}.json")), body)
}

/// The outbox files a previous run left (blocking). Half-written temporary files are
/// removed (their send never returned); unreadable files go to `failed/`.
fn pick_up(dir: &Path) -> Vec<Queued> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %e, "cannot read the webhook outbox");
            return Vec::new();
        }
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        // Half-written by a crash (today's temporaries, and an older version's `.json.tmp`).
        if crate::files::is_temp_name(name) || name.ends_with(".json.tmp") {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        let Some(id) = name.strip_suffix(".json") else {
            continue;
        };
        let head = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<StoredHead>(&b).map_err(|e| e.to_string()))
            .and_then(|h| match Kind::parse(&h.event) {
                Some(kind) => Ok((h, kind)),
                None => Err(format!("unknown event {:?}", h.event)),
            });
        match head {
            Ok((h, kind)) => found.push(Queued {
                id: id.to_string(),
                account: h.account,
                kind,
                time_ms: h.time_ms,
            }),
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "unreadable webhook event set aside");
                set_aside(dir, id);
            }
        }
    }
    found
}

/// Moves `<dir>/<id>.json` to `<dir>/failed/` (blocking).
fn set_aside(dir: &Path, id: &str) {
    let failed = dir.join("failed");
    let name = format!("{id}.json");
    let result = crate::files::private_dir(&failed)
        .and_then(|()| std::fs::rename(dir.join(&name), failed.join(&name)));
    if let Err(e) = result {
        tracing::error!(id, error = %e, "could not move a webhook event to failed/");
    }
}

mod format;
mod http;
mod worker;

use worker::Worker;

/// What delivery settles is told to the account's webhook when it takes that kind: a
/// recipient given up on for good is a `bounce` (with its category, `via: "sync"`), one
/// given up after `max_age` an `expired`, and — for webhooks that ask — every `delivered`
/// and `deferred` attempt. Nothing is built for an account that takes none of it, nor for
/// the relay's own notices.
impl crate::envelope::OutcomeSink for Webhooks {
    fn settled(&self, o: &crate::envelope::RecipientOutcome<'_>) {
        use crate::envelope::Settled;
        let kind = match o.settled {
            Settled::Delivered { .. } => Kind::Delivered,
            Settled::Deferred { .. } => Kind::Deferred,
            Settled::Bounced { .. } if o.expired() => Kind::Expired,
            Settled::Bounced { .. } => Kind::Bounce,
        };
        let account = &o.envelope.account;
        // The relay's own notices (DSNs, campaign reports) are not the account's mail.
        if o.envelope.generated_dsn || !self.wants(account, kind) {
            return;
        }
        let common = serde_json::json!({
            "queue_id": o.id.to_string(),
            "campaign": o.envelope.campaign,
            "sender": o.envelope.sender,
            "site": o.site,
            "remote": o.remote,
            "attempts": o.attempts,
            "delay_ms": o.delay_ms,
        });
        let mut detail = match o.settled {
            Settled::Delivered { reply } => serde_json::json!({ "reply": reply }),
            Settled::Deferred { reason } => serde_json::json!({ "reason": reason }),
            Settled::Bounced {
                status,
                diagnostic,
                hard,
                category,
                rule,
            } => serde_json::json!({
                "status": status.to_string(),
                "diagnostic": diagnostic,
                "category": category.as_str(),
                "rule": rule,
                "hard": hard,
                "via": "sync",
            }),
        };
        if let (Some(d), serde_json::Value::Object(c)) = (detail.as_object_mut(), common) {
            d.extend(c);
        }
        self.send(
            account,
            WebhookEvent::now(kind, o.address(), o.envelope.list.as_deref(), detail),
        );
    }
}

#[cfg(test)]
mod tests;
