//! Delivery: from the spool to the next hop.
//!
//! One scheduler task owns the queue — every message not yet finished and the state of each
//! of its recipients — and hands out jobs (one message, the recipients on one route) to the
//! route's workers ([`route`]). Workers report an [`outcome::Attempt`] per recipient; the
//! scheduler classifies it ([`outcome::classify`]), journals the result in the spool,
//! retries with exponential backoff and jitter, gives up at `max_age`, and sends DSNs
//! ([`dsn`]). A message leaves the spool when its last recipient is done.
//!
//! Time: due times are unix milliseconds from a clock anchored on tokio's `Instant`, so
//! tests with paused time drive retries and expiry exactly as days of real time would.

mod budget;
pub mod capture;
pub mod client;
pub mod mta_sts;
pub mod outcome;
mod route;
mod scheduler;
pub mod transport;

pub use scheduler::control;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use crate::config::{DeliveryConfig, StartTlsPolicy};
use crate::envelope::{Envelope, QueueId};
use crate::privacy::AddressTagger;
use crate::spool::{self, Location, RcptEvent, RecoveredMessage, Spool};
use route::{JobReport, Workers};
use scheduler::Scheduler;
use transport::{RouteKey, Transport};

/// Delivery settings: `[delivery]` and the relay's hostname (for DSNs).
#[derive(Debug, Clone)]
pub struct Settings {
    pub hostname: String,
    pub config: DeliveryConfig,
    /// The per-recipient rewrite stage; `None` sends the spooled content as it is.
    pub rewriter: Option<Arc<crate::rewrite::Rewriter>>,
    /// The relay's own return path (`[bounces] return_path`); `None`: messages keep their
    /// envelope sender.
    pub return_paths: Option<crate::rewrite::return_path::ReturnPaths>,
    /// What bounces do: suppressions, full-mailbox streaks, counts by category; `None`:
    /// nothing beyond the DSN.
    pub bounces: Option<Arc<crate::governance::bounces::Bounces>>,
    /// The consent data, for whom DSNs may go to.
    pub lists: Option<Arc<crate::consent::Lists>>,
    /// The delivery log; `None`: no log.
    pub log: Option<crate::privacy::delivery_log::DeliveryLog>,
    /// Per-account results, for governance.
    pub counts: Arc<crate::governance::counts::AccountCounts>,
    /// The policy, for its throttles; `None`: no throttles.
    pub policy: Option<Arc<arc_swap::ArcSwap<crate::policy::Policy>>>,
    /// Frozen accounts, whose marketing mail is held; `None`: nothing is held.
    pub freezes: Option<Arc<crate::governance::freeze::Freezes>>,
    /// Staged campaign release (the canary's results count), account health (deliveries
    /// and hard bounces count), the accounts' webhooks (told of hard bounces).
    pub feedback: crate::governance::Feedback,
    /// Where operator holds are kept (`held.json` in the spool); `None`: in memory only.
    pub holds_file: Option<std::path::PathBuf>,
    /// The cluster the paces, connection caps and shaping are shared with; `None`: this
    /// relay paces alone.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl Settings {
    pub fn new(config: &DeliveryConfig, hostname: &str) -> Settings {
        Settings {
            hostname: hostname.to_string(),
            config: config.clone(),
            rewriter: None,
            return_paths: None,
            bounces: None,
            lists: None,
            log: None,
            counts: Arc::default(),
            policy: None,
            freezes: None,
            feedback: Default::default(),
            holds_file: None,
            cluster: None,
        }
    }
}

enum Event {
    New(Box<Queued>),
    Done(JobReport),
    /// A cold message's envelope, read back from the spool for an operator's action.
    Loaded {
        id: QueueId,
        result: Result<Envelope, spool::SpoolError>,
    },
    /// The operator's commands (admin API, CLI).
    Control(control::Command),
    /// Another node of the cluster shaped a site's pace.
    Shaped(crate::cluster::Announcement),
    /// Cluster mode: how many of a new message's recipients (all held meanwhile) its
    /// campaign's canary takes; `None` when Redis did not answer.
    Admitted {
        id: QueueId,
        campaign: String,
        answer: Option<crate::governance::campaign::shared::Answer>,
    },
    /// A domain's site lookup ended.
    Resolved {
        domain: String,
        result: Result<(RouteKey, Duration), outcome::ResolveFailure>,
    },
}

struct Queued {
    env: Arc<Envelope>,
    loc: Location,
    /// A fresh message's content (kept for its first attempt when the budget allows);
    /// `None` for a message recovered from the spool.
    body: Option<Bytes>,
    events: Vec<Option<RcptEvent>>,
}

/// The handle sessions give accepted mail to; cheap to clone.
#[derive(Clone)]
pub struct Delivery {
    tx: mpsc::UnboundedSender<Event>,
}

/// Where accepted messages go once they are safely in the spool: the session hands each
/// one over through this (the delivery queue; tests collect them instead).
pub trait Intake: Send + Sync {
    fn accepted(&self, envelope: Envelope, loc: Location, body: Bytes);
}

impl Intake for Delivery {
    fn accepted(&self, envelope: Envelope, loc: Location, body: Bytes) {
        let n = envelope.recipients.len();
        let _ = self.tx.send(Event::New(Box::new(Queued {
            env: Arc::new(envelope),
            loc,
            body: Some(body),
            events: vec![None; n],
        })));
    }
}

/// The TLS client configurations delivery uses: one taking any certificate
/// (opportunistic STARTTLS, `tls = "required"`; also TLS from the first byte to a smart
/// host), and one verifying certificates — against the smart host's own `ca_file`, else
/// the Mozilla roots and `tls_roots`.
fn connectors(config: &DeliveryConfig) -> (Option<TlsConnector>, Option<TlsConnector>) {
    let smarthost = config.smarthost.as_ref();
    // With a smart host there are no MX sites, so this never turns STARTTLS on for them.
    let any = config.starttls == StartTlsPolicy::Opportunistic
        || smarthost.is_some_and(|s| s.implicit_tls);
    let tls = any.then(|| TlsConnector::from(crate::tls::opportunistic_client_config()));
    let verifying = match smarthost.and_then(|s| s.ca_file.as_deref()) {
        Some(ca_file) => crate::tls::private_ca_client_config(ca_file),
        None => crate::tls::verifying_client_config(config.tls_roots.as_deref()),
    };
    let verified_tls = match verifying {
        // `starttls = "disabled"` means no TLS at all, except to a smart host from the start
        // (the config refuses a smart host that would need STARTTLS then).
        _ if config.starttls == StartTlsPolicy::Disabled && smarthost.is_none() => None,
        Ok(config) => Some(TlsConnector::from(config)),
        Err(e) => {
            tracing::error!(error = %e, "cannot build the verifying TLS client; mail that needs verified TLS will wait");
            None
        }
    };
    (tls, verified_tls)
}

/// Hands the other nodes' shaping of a site to the scheduler (which owns the routes).
fn forward_announcements(
    cluster: &crate::cluster::Cluster,
    tx: mpsc::UnboundedSender<Event>,
    shutdown: CancellationToken,
) {
    let mut heard = cluster.announcements();
    let me = cluster.node_id().to_string();
    tokio::spawn(async move {
        loop {
            let a = tokio::select! {
                () = shutdown.cancelled() => return,
                a = heard.recv() => a,
            };
            match a {
                Ok(a @ crate::cluster::Announcement::Shaped { .. }) => {
                    if a.node() != me && tx.send(Event::Shaped(a)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "cluster announcements came faster than taken");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}

/// Starts the scheduler with the messages recovered from the spool. It runs until
/// `shutdown` is cancelled; in-flight attempts are then abandoned (their recipients are
/// still pending in the spool and are retried at the next start).
pub fn start(
    settings: Settings,
    spool: Spool,
    transport: Arc<dyn Transport>,
    tagger: AddressTagger,
    recovered: Vec<RecoveredMessage>,
    shutdown: CancellationToken,
) -> (Delivery, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (tls, verified_tls) = connectors(&settings.config);
    let content = budget::ContentBudget::new(settings.config.max_content_in_flight);
    let settings = Arc::new(settings);
    let by_domain = transport.routes_by_domain();
    let workers = Arc::new(Workers {
        settings: settings.clone(),
        transport,
        spool: spool.clone(),
        tls,
        verified_tls,
        events: tx.clone(),
        content,
    });
    if let Some(cluster) = &settings.cluster {
        forward_announcements(cluster, tx.clone(), shutdown.clone());
    }
    let mut scheduler = Scheduler::new(settings, spool, workers, tagger, by_domain, tx.clone());
    // Taken in here, not through the channel: a queued message keeps no envelope in memory
    // (the worker sending it reads it back), so a large recovered queue costs little.
    for m in recovered {
        scheduler.add(Queued {
            env: Arc::new(m.envelope),
            loc: m.loc,
            body: None,
            events: m.events,
        });
    }
    let handle = tokio::spawn(async move { scheduler.run(rx, shutdown).await });
    (Delivery { tx }, handle)
}
