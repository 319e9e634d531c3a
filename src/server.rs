//! The running relay: wires spool, delivery, TLS, listeners and HTTP together, and takes
//! them down in order.
//!
//! [`Relay::start`] is what `optin-relay serve` runs and what the end-to-end tests start on
//! port 0. Only this module owns `TcpListener`s and accepted `TcpStream`s; sessions see a
//! generic stream. Connection limits (overall and per client IP) are enforced at accept,
//! before any SMTP is spoken, with a 421 that says why.
//!
//! Shutdown drains: listeners stop accepting, idle sessions get `421 4.3.2`, sessions in
//! the middle of a transaction may finish it within `shutdown_grace`, then delivery stops
//! and the spool's journals are synced. Mail accepted but not delivered stays in the spool.

mod cluster;
mod gauges;
mod open;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::consent::Lists;
use crate::delivery::transport::{NetTransport, Transport};
use crate::delivery::{self, Delivery};
use crate::policy::Policy;
use crate::policy::password::Passwords;
use crate::reload::PolicyReloader;
use crate::session::{self, End, Peer, SessionContext};
use crate::smtp::Refusal;
use crate::spool::Spool;
use open::{Governance, State};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("delivery: {0}")]
    Delivery(String),
    #[error("unsubscribe keys: {0}")]
    Keys(String),
    /// The relay's own state files (frozen accounts, admin token).
    #[error("{0}")]
    State(String),
    #[error("lists: {0}")]
    Lists(#[from] crate::consent::ListsError),
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    #[error("{path}: {source}")]
    LogKey {
        path: String,
        source: std::io::Error,
    },
}

/// A started relay.
pub struct Relay {
    /// Bound addresses of the plain (STARTTLS) listeners, in config order.
    pub smtp_addrs: Vec<SocketAddr>,
    /// Bound addresses of the implicit-TLS listeners.
    pub smtp_tls_addrs: Vec<SocketAddr>,
    /// The public HTTP listener (unsubscribe links, report form).
    pub http_addr: Option<SocketAddr>,
    /// The operator listener (admin API, `/metrics`).
    pub admin_addr: Option<SocketAddr>,
    pub policy: Arc<ArcSwap<Policy>>,
    /// Reloads `policy` from its file: SIGHUP, the admin API, and the file watcher.
    pub reloader: Arc<PolicyReloader>,
    pub spool: Spool,
    pub delivery: Delivery,
    pub lists: Arc<Lists>,
    /// Frozen accounts.
    pub freezes: Arc<crate::governance::freeze::Freezes>,
    /// Account health and automatic freezes.
    pub governor: Arc<crate::governance::Governor>,
    /// Delivery results per account since start (for governance).
    pub account_counts: Arc<crate::governance::counts::AccountCounts>,
    /// The accounts' signed webhooks (their outbox and sender).
    pub webhooks: Arc<crate::governance::webhook::Webhooks>,
    /// Delivers the webhook outbox; stops with delivery.
    webhook_worker: tokio::task::JoinHandle<()>,
    engagement_flusher: tokio::task::JoinHandle<()>,
    stop_accepting: CancellationToken,
    sessions: TaskTracker,
    stop_delivery: CancellationToken,
    scheduler: tokio::task::JoinHandle<()>,
    /// The policy file watcher (none without a file or with `watch_interval = "0s"`).
    watcher: Option<tokio::task::JoinHandle<()>>,
    stop_watching: CancellationToken,
    grace: std::time::Duration,
}

impl Relay {
    /// Starts with delivery over the network (smart host or MX lookup), or into the
    /// capture folder in capture mode.
    pub async fn start(config: Config, policy: Policy) -> Result<Relay, StartError> {
        if config.delivery.mode == crate::config::DeliveryMode::Capture {
            let d = &config.delivery;
            let store = crate::delivery::capture::Store::open(&d.capture_dir, d.capture_keep)
                .map_err(|e| StartError::State(format!("{}: {e}", d.capture_dir.display())))?;
            tracing::warn!(
                folder = %d.capture_dir.display(),
                "capture mode: no mail leaves this machine; see /capture/ on the operator listener"
            );
            // One folder: the transport writes it, the operator listener's pages read it.
            let store = Arc::new(store);
            let transport = crate::delivery::capture::CaptureTransport::new(store.clone());
            return Relay::start_inner(config, policy, Arc::new(transport), Some(store)).await;
        }
        let transport = NetTransport::new(&config.delivery).map_err(StartError::Delivery)?;
        Relay::start_inner(config, policy, Arc::new(transport), None).await
    }

    /// Starts with a given delivery transport (tests use in-memory ones).
    pub async fn start_with_transport(
        config: Config,
        policy: Policy,
        transport: Arc<dyn Transport>,
    ) -> Result<Relay, StartError> {
        Relay::start_inner(config, policy, transport, None).await
    }

    /// `capture`: capture mode's folder, listed by the operator listener.
    async fn start_inner(
        config: Config,
        policy: Policy,
        transport: Arc<dyn Transport>,
        capture: Option<Arc<crate::delivery::capture::Store>>,
    ) -> Result<Relay, StartError> {
        let metrics = crate::metrics::install();
        crate::metrics::policy_started();
        // First, so the reloader notes the file's content before a slow spool recovery and
        // an edit made meanwhile is picked up.
        let policy = Arc::new(ArcSwap::from_pointee(policy));
        let reloader = Arc::new(PolicyReloader::new(
            config.policy.path.clone(),
            policy.clone(),
        ));
        let mut state = State::open(&config)?;
        let gov = Governance::wire(&config, &state, &policy)?;
        let stop_delivery = CancellationToken::new();
        let cluster = cluster::join(&config, &state, &reloader, stop_delivery.clone())?;
        let mut settings = delivery_settings(&config, &state, &gov, &policy);
        settings.cluster = cluster.clone();
        let (delivery, scheduler) = delivery::start(
            settings,
            state.spool.clone(),
            transport,
            state.tagger.clone(),
            std::mem::take(&mut state.recovered),
            stop_delivery.clone(),
        );
        if let Some(cluster) = &cluster {
            cluster::share(
                cluster,
                &state,
                &gov,
                &policy,
                &delivery,
                stop_delivery.clone(),
            );
        }
        let webhook_worker = gov.webhooks.spawn_worker(stop_delivery.clone());
        let engagement_flusher = gov.engagements.spawn_flusher(stop_delivery.clone());
        gov.uploads.spawn_worker(stop_delivery.clone());
        // Reloads check the new policy against the accounts with queued mail.
        reloader.set_queue(Arc::new(delivery.clone()));
        let stop_accepting = CancellationToken::new();
        let ctx = session_context(&config, &state, &gov, &policy, &delivery, &stop_accepting);
        spawn_burst_trim(ctx.data_memory.clone(), stop_accepting.clone());
        let sessions = TaskTracker::new();
        let (smtp_addrs, smtp_tls_addrs) =
            listen_smtp(&config, ctx, sessions.clone(), stop_accepting.clone())?;
        crate::consent::follow::spawn(
            state.lists.clone(),
            config.lists.refresh_interval,
            config.lists.compact_after,
            stop_accepting.clone(),
        );
        // Personal data past its time goes now and every hour (`[privacy]`).
        crate::privacy::retention::spawn(
            crate::privacy::retention::Retention::new(&config),
            stop_accepting.clone(),
        );
        crate::governance::consents::spawn_retention(
            gov.consents.ledger.clone(),
            config.privacy.consent_record_days,
            stop_accepting.clone(),
        );
        gauges::spawn(&config, gov.governor.clone(), stop_accepting.clone());
        for warning in config.warnings() {
            tracing::warn!("config: {warning}");
        }
        let mut services = http_services(
            &config, &state, &gov, &policy, &reloader, &delivery, metrics,
        )?;
        services.capture = capture;
        if let Some(admin) = &mut services.admin {
            admin.cluster = cluster.clone();
        }
        let http = crate::http::start(&config, services, stop_accepting.clone()).await?;
        let stop_watching = CancellationToken::new();
        let watcher = (config.policy.path.is_some() && !config.policy.watch_interval.is_zero())
            .then(|| {
                reloader
                    .clone()
                    .watch(config.policy.watch_interval, stop_watching.clone())
            });
        Ok(Relay {
            smtp_addrs,
            smtp_tls_addrs,
            http_addr: http.public,
            admin_addr: http.admin,
            policy,
            reloader,
            spool: state.spool,
            delivery,
            lists: state.lists,
            freezes: state.freezes,
            governor: gov.governor,
            account_counts: gov.counts,
            webhooks: gov.webhooks,
            webhook_worker,
            engagement_flusher,
            stop_accepting,
            sessions,
            stop_delivery,
            scheduler,
            watcher,
            stop_watching,
            grace: config.smtp.shutdown_grace,
        })
    }

    /// Drains and stops (see the module doc).
    pub async fn shutdown(self) {
        tracing::info!("shutting down: no new connections; finishing open sessions");
        self.stop_accepting.cancel();
        self.sessions.close();
        if tokio::time::timeout(self.grace, self.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?self.grace, "sessions still open after the grace period; closing them");
        }
        self.stop_watching.cancel();
        if let Some(watcher) = self.watcher {
            let _ = watcher.await;
        }
        self.stop_delivery.cancel();
        let _ = self.scheduler.await;
        let _ = self.webhook_worker.await;
        let _ = self.engagement_flusher.await;
        if let Err(e) = self.spool.flush().await {
            tracing::error!(error = %e, "final spool flush failed");
        }
        tracing::info!("stopped");
    }
}

/// Pending connections the kernel queues per listener: bursts of one-message connections
/// (what most applications do) must not be dropped before we accept them.
const LISTEN_BACKLOG: u32 = 1024;

/// Delivery's settings: `[delivery]`, the lists (hard bounces), the delivery log, the
/// policy (throttles), freezes, the rewrite stage and the governance results feed.
fn delivery_settings(
    config: &Config,
    state: &State,
    gov: &Governance,
    policy: &Arc<ArcSwap<Policy>>,
) -> delivery::Settings {
    let mut settings = delivery::Settings::new(&config.delivery, &config.smtp.hostname);
    settings.lists = Some(state.lists.clone());
    settings.log = state.delivery_log.clone();
    settings.counts = gov.counts.clone();
    settings.policy = Some(policy.clone());
    settings.freezes = Some(state.freezes.clone());
    settings.feedback = gov.feedback.clone();
    settings.bounces = Some(gov.bounces.clone());
    settings.return_paths = gov.bounces.paths.clone();
    settings.holds_file = Some(config.spool.path.join("held.json"));
    settings.rewriter = Some(Arc::new(crate::rewrite::Rewriter::new(
        policy.clone(),
        state.token_keys.clone(),
        &config.unsubscribe,
    )));
    settings
}

/// What the HTTP listeners serve: the public pages, the account API, the admin API.
fn http_services(
    config: &Config,
    state: &State,
    gov: &Governance,
    policy: &Arc<ArcSwap<Policy>>,
    reloader: &Arc<PolicyReloader>,
    delivery: &Delivery,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
) -> Result<crate::http::Services, StartError> {
    let admin = match config.admin.listen {
        Some(_) => Some(crate::http::admin::Admin {
            token: crate::http::admin::token(&config.admin, true)
                .map_err(StartError::State)?
                .into(),
            delivery: delivery.clone(),
            spool: state.spool.clone(),
            lists: state.lists.clone(),
            freezes: state.freezes.clone(),
            campaigns: state.campaigns.clone(),
            policy: policy.clone(),
            reloader: reloader.clone(),
            counts: gov.counts.clone(),
            keys: gov.keys.clone(),
            consents: gov.consents.clone(),
            history: config
                .delivery
                .log
                .clone()
                .map(|p| (p, config.privacy.delivery_log_days)),
            governor: gov.governor.clone(),
            events: config.spool.path.join("events"),
            tagger: state.tagger.clone(),
            cluster: None,
        }),
        None => None,
    };
    let subscribe = crate::http::subscribe::Subscribe {
        subscriptions: gov.subscriptions.clone(),
        spool: state.spool.clone(),
        intake: Arc::new(delivery.clone()),
    };
    Ok(crate::http::Services {
        metrics,
        unsubscribes: gov.unsubscribes.clone(),
        complaints: gov.complaints.clone(),
        engagements: Some(gov.engagements.clone()),
        admin,
        account: config
            .account_api
            .enabled
            .then(|| crate::http::account::AccountApi {
                keys: gov.keys.clone(),
                consents: gov.consents.clone(),
                uploads: gov.uploads.clone(),
                events: config.spool.path.join("events"),
                config: config.account_api,
                subscribe: Some(subscribe.clone()),
            }),
        subscribe: Some(subscribe),
        capture: None,
    })
}

/// What every SMTP session shares.
fn session_context(
    config: &Config,
    state: &State,
    gov: &Governance,
    policy: &Arc<ArcSwap<Policy>>,
    delivery: &Delivery,
    stop_accepting: &CancellationToken,
) -> Arc<SessionContext> {
    Arc::new(SessionContext {
        smtp: config.smtp.clone(),
        policy: policy.clone(),
        lists: state.lists.clone(),
        ledger: Some(gov.consents.ledger.clone()),
        own_domain: config.unsubscribe.mail_domain.clone(),
        unsubscribes: Some(gov.unsubscribes.clone()),
        complaints: gov.complaints.clone(),
        bounces: gov.bounces.paths.as_ref().map(|_| gov.bounces.clone()),
        log: state.delivery_log.clone(),
        freezes: Some(state.freezes.clone()),
        campaigns: Some(state.campaigns.clone()),
        passwords: Arc::new(Passwords::new(config.smtp.auth.concurrency)),
        auth_guard: Arc::new(session::guard::AuthGuard::new(config.smtp.auth.clone())),
        spool: state.spool.clone(),
        intake: Arc::new(delivery.clone()),
        own_limits: session::OwnLimits {
            report: config.complaints.max_report_size,
            unsubscribe: config.unsubscribe.max_mail_size,
            bounce: config.bounces.max_size,
        },
        tls_available: true,
        data_memory: session::memory::DataMemory::new(config.smtp.max_data_memory),
        shutdown: stop_accepting.clone(),
    })
}

/// Binds the SMTP listeners (`listen`, then `listen_tls`) and starts accepting on each;
/// returns their addresses.
fn listen_smtp(
    config: &Config,
    ctx: Arc<SessionContext>,
    sessions: TaskTracker,
    stop_accepting: CancellationToken,
) -> Result<(Vec<SocketAddr>, Vec<SocketAddr>), StartError> {
    let acceptor = TlsAcceptor::from(crate::tls::server_config(
        &config.tls,
        &config.smtp.hostname,
    )?);
    let limiter = Arc::new(Limiter::new(
        config.smtp.max_connections,
        config.smtp.max_connections_per_ip,
        config.smtp.max_untrusted_connections_per_ip,
    ));
    let plain = bind_all(&config.smtp.listen)?;
    let implicit = bind_all(&config.smtp.listen_tls)?;
    let smtp_addrs = plain.iter().map(|(_, a)| *a).collect();
    let smtp_tls_addrs = implicit.iter().map(|(_, a)| *a).collect();
    for (listener, addr, implicit_tls) in plain
        .into_iter()
        .map(|(l, a)| (l, a, false))
        .chain(implicit.into_iter().map(|(l, a)| (l, a, true)))
    {
        tracing::info!(%addr, implicit_tls, "SMTP listening");
        let accept = Acceptor {
            ctx: ctx.clone(),
            tls: acceptor.clone(),
            limiter: limiter.clone(),
            sessions: sessions.clone(),
            implicit_tls,
        };
        tokio::spawn(accept.run(listener, stop_accepting.clone()));
    }
    Ok((smtp_addrs, smtp_tls_addrs))
}

/// Binds every address (port 0 picks a free port), keeping the bound addresses.
fn bind_all(addrs: &[SocketAddr]) -> Result<Vec<(TcpListener, SocketAddr)>, StartError> {
    addrs
        .iter()
        .map(|addr| {
            let err = |source| StartError::Listen {
                addr: *addr,
                source,
            };
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            }
            .map_err(err)?;
            // Restarting right after a crash must not fail on connections in TIME_WAIT.
            socket.set_reuseaddr(true).map_err(err)?;
            socket.bind(*addr).map_err(err)?;
            let listener = socket.listen(LISTEN_BACKLOG).map_err(err)?;
            let local = listener.local_addr().map_err(err)?;
            Ok((listener, local))
        })
        .collect()
}

struct Acceptor {
    ctx: Arc<SessionContext>,
    tls: TlsAcceptor,
    limiter: Arc<Limiter>,
    sessions: TaskTracker,
    implicit_tls: bool,
}

impl Acceptor {
    async fn run(self, listener: TcpListener, stop: CancellationToken) {
        loop {
            let (stream, remote) = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Usually EMFILE: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            // A client on an account's network is trusted from the start; anyone else
            // counts against the lower limit for strangers until it authenticates.
            let trusted = self.ctx.policy.load().identify_by_ip(remote.ip()).is_some();
            match self.limiter.acquire(remote.ip(), trusted) {
                Ok(permit) => {
                    crate::metrics::connection(if self.implicit_tls { "tls" } else { "plain" });
                    let ctx = self.ctx.clone();
                    let tls = self.tls.clone();
                    let implicit = self.implicit_tls;
                    self.sessions.spawn(async move {
                        let mut peer = Peer::new(remote);
                        peer.slot = Some(permit);
                        serve_connection(&ctx, &tls, stream, peer, implicit).await;
                    });
                }
                Err((refusal, reason)) => {
                    crate::metrics::connection_refused(reason);
                    tokio::spawn(refuse_connection(stream, refusal));
                }
            }
        }
    }
}

async fn refuse_connection(mut stream: TcpStream, refusal: Refusal) {
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let _ = stream.write_all(&refusal.reply().to_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

async fn serve_connection(
    ctx: &SessionContext,
    tls: &TlsAcceptor,
    stream: TcpStream,
    peer: Peer,
    implicit_tls: bool,
) {
    let result = if implicit_tls {
        run_over_tls(ctx, tls, stream, peer).await
    } else {
        match session::run(ctx, stream, peer).await {
            Ok(End::StartTls(stream, peer)) => run_over_tls(ctx, tls, stream, peer).await,
            Ok(End::Closed) => Ok(()),
            Err(e) => Err(e),
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "session ended with an error");
    }
}

/// TLS handshake (bounded by its own short timeout: a stalled handshake holds a connection
/// slot and a TLS state), then the session over TLS.
async fn run_over_tls(
    ctx: &SessionContext,
    tls: &TlsAcceptor,
    stream: TcpStream,
    mut peer: Peer,
) -> Result<(), session::SessionError> {
    match tokio::time::timeout(ctx.smtp.tls_handshake_timeout, tls.accept(stream)).await {
        Ok(Ok(s)) => {
            peer.tls = Some(crate::tls::describe(s.get_ref().1));
            session::run(ctx, s, peer).await.map(|_| ())
        }
        Ok(Err(e)) => {
            tracing::debug!(remote = %peer.remote, error = %e, "TLS handshake failed");
            Ok(())
        }
        Err(_) => {
            tracing::debug!(remote = %peer.remote, "TLS handshake timed out");
            Ok(())
        }
    }
}

/// Counts open connections overall and per client address (IPv6: per /64), with a lower
/// limit for clients that are neither on a trusted network nor authenticated.
struct Limiter {
    max_total: usize,
    max_per_ip: usize,
    max_untrusted_per_ip: usize,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    total: usize,
    /// Per client key: (all connections, those not trusted yet).
    per_ip: HashMap<IpAddr, (usize, usize)>,
}

/// One open connection's place in the [`Limiter`]; released on drop.
#[derive(Debug)]
struct Permit {
    limiter: Arc<Limiter>,
    key: IpAddr,
    untrusted: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter").finish_non_exhaustive()
    }
}

impl Limiter {
    fn new(max_total: usize, max_per_ip: usize, max_untrusted_per_ip: usize) -> Limiter {
        Limiter {
            max_total,
            max_per_ip,
            max_untrusted_per_ip,
            open: Mutex::new(Open::default()),
        }
    }

    /// A place for a new connection from `ip`, or the refusal and its metric reason.
    fn acquire(
        self: &Arc<Self>,
        ip: IpAddr,
        trusted: bool,
    ) -> Result<Arc<Permit>, (Refusal, &'static str)> {
        let key = crate::policy::client_key(ip);
        let mut open = self.open.lock().expect("limiter lock");
        if open.total >= self.max_total {
            return Err((Refusal::TooManyConnections, "total"));
        }
        let (all, untrusted) = open.per_ip.entry(key).or_insert((0, 0));
        if *all >= self.max_per_ip {
            return Err((Refusal::TooManyConnectionsFromIp, "per_ip"));
        }
        if !trusted && *untrusted >= self.max_untrusted_per_ip {
            return Err((Refusal::TooManyConnectionsFromIp, "untrusted_per_ip"));
        }
        *all += 1;
        if !trusted {
            *untrusted += 1;
        }
        open.total += 1;
        crate::metrics::sessions_active(1.0);
        Ok(Arc::new(Permit {
            limiter: self.clone(),
            key,
            untrusted: (!trusted).into(),
        }))
    }
}

impl session::ConnectionSlot for Permit {
    fn trusted(&self) {
        use std::sync::atomic::Ordering;
        if self.untrusted.swap(false, Ordering::AcqRel) {
            let mut open = self.limiter.open.lock().expect("limiter lock");
            if let Some((_, untrusted)) = open.per_ip.get_mut(&self.key) {
                *untrusted -= 1;
            }
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock().expect("limiter lock");
        open.total -= 1;
        if let Some((all, untrusted)) = open.per_ip.get_mut(&self.key) {
            *all -= 1;
            if *self.untrusted.get_mut() {
                *untrusted -= 1;
            }
            if *all == 0 {
                open.per_ip.remove(&self.key);
            }
        }
        crate::metrics::sessions_active(-1.0);
    }
}

/// How often the content budget is looked at for a burst that has ended.
const BURST_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Gives back to the system what a burst of content being received freed (a hundred
/// strangers' 1 MiB reports at once), once it is over: glibc would keep it for ever.
fn spawn_burst_trim(memory: Arc<session::memory::DataMemory>, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(BURST_CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut follow_ups = 0;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if memory.burst_over() {
                follow_ups = BURST_FOLLOW_UPS + 1;
            }
            if follow_ups > 0 {
                follow_ups -= 1;
                // It walks the heaps: not on an async thread.
                let _ = tokio::task::spawn_blocking(crate::trim::give_back_memory).await;
            }
        }
    });
}

/// What a burst's last messages were still using (being parsed, stored: a hundred
/// complaint reports take a while on a busy machine) is freed some time after the budget
/// fell: the memory is given back again at each of this many ticks after the first.
const BURST_FOLLOW_UPS: u32 = 5;

#[cfg(test)]
mod tests {
    use super::*;

    use crate::session::ConnectionSlot;

    fn reason<T>(r: Result<T, (Refusal, &'static str)>) -> Option<&'static str> {
        r.err().map(|(_, why)| why)
    }

    #[test]
    fn limits_overall_and_per_ip() {
        let l = Arc::new(Limiter::new(3, 2, 2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let p1 = l.acquire(a, true).unwrap();
        let _p2 = l.acquire(a, true).unwrap();
        assert_eq!(reason(l.acquire(a, true)), Some("per_ip"));
        let _p3 = l.acquire(b, true).unwrap();
        assert_eq!(reason(l.acquire(b, true)), Some("total"));
        drop(p1);
        assert!(l.acquire(a, true).is_ok());
    }

    #[test]
    fn strangers_have_a_lower_limit_until_they_authenticate() {
        let l = Arc::new(Limiter::new(100, 5, 2));
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let s1 = l.acquire(a, false).unwrap();
        let _s2 = l.acquire(a, false).unwrap();
        assert_eq!(reason(l.acquire(a, false)), Some("untrusted_per_ip"));
        // one of them authenticates: its place no longer counts as a stranger's
        s1.trusted();
        let _s3 = l.acquire(a, false).unwrap();
        assert_eq!(reason(l.acquire(a, false)), Some("untrusted_per_ip"));
        // the overall per-address limit still holds for trusted ones
        let _t1 = l.acquire(a, true).unwrap();
        let _t2 = l.acquire(a, true).unwrap();
        assert_eq!(reason(l.acquire(a, true)), Some("per_ip"));
        drop(s1);
        assert!(l.acquire(a, true).is_ok());
    }

    #[test]
    fn an_ipv6_64_is_one_client() {
        let l = Arc::new(Limiter::new(100, 100, 2));
        let _a = l.acquire("2001:db8::1".parse().unwrap(), false).unwrap();
        let _b = l.acquire("2001:db8::2".parse().unwrap(), false).unwrap();
        assert_eq!(
            reason(l.acquire("2001:db8::ffff:3".parse().unwrap(), false)),
            Some("untrusted_per_ip")
        );
        assert!(l.acquire("2001:db8:0:1::1".parse().unwrap(), false).is_ok());
    }
}
