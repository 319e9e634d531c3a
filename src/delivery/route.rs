//! One route's (smart host's or site's) job queue, its delivery workers and its pool of
//! idle connections, its pace (throttles) and its adaptive-shaping state.
//!
//! Workers are started on demand, up to `max_connections_per_destination` per route. A
//! worker takes jobs until the queue is empty, then parks its connection in the route's
//! idle pool and stops; the next worker takes a parked connection before it dials, so
//! connections are reused both under load and under a trickle of mail. A parked connection
//! is closed (QUIT) after `connection_idle_timeout`, and any connection after
//! `max_messages_per_connection` transactions. Connections in use plus parked ones never
//! exceed the route's limit. Resolving and connecting try each MX in preference order; a
//! failed TLS handshake is retried once in plain text (opportunistic TLS must never make
//! mail undeliverable).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;

use super::client::{Connection, OpenError, Timeouts};
use super::outcome::{Attempt, LocalRefusal, Stage};
use super::transport::{RouteKey, TlsDemand, Transport};
use super::{Event, Settings};
use crate::spool::{Envelope, Location, Recipient, Spool};

/// Some recipients of one message, all on this route.
pub(super) struct Job {
    pub id: u64,
    pub env: Arc<Envelope>,
    pub loc: Location,
    /// The content when still in memory (first attempt); otherwise read from the spool.
    pub body: Option<Bytes>,
    pub rcpts: Vec<u32>,
}

/// The content each group of a job's recipients gets: one group per recipient when each
/// gets its own (marketing), else one for all.
fn prepare(
    r: &crate::rewrite::Rewriter,
    env: &Envelope,
    job_rcpts: &[u32],
    body: &Bytes,
) -> Vec<(Vec<u32>, Result<Bytes, String>)> {
    if r.per_recipient(env) {
        let rcpts: Vec<&Recipient> = job_rcpts
            .iter()
            .map(|&i| &env.recipients[i as usize])
            .collect();
        job_rcpts
            .iter()
            .zip(r.prepare_each(env, &rcpts, body))
            .map(|(&i, content)| (vec![i], content.map(Bytes::from).map_err(|e| e.to_string())))
            .collect()
    } else {
        vec![(
            job_rcpts.to_vec(),
            r.prepare(env, None, body).map_err(|e| e.to_string()),
        )]
    }
}

/// What a worker tells the scheduler after a job.
pub(super) struct JobReport {
    pub id: u64,
    pub results: Vec<(u32, Attempt)>,
    /// The server that answered, for DSNs.
    pub remote: Option<String>,
    /// The next hop took the DSN parameters (so it, not we, reports success).
    pub next_hop_dsn: bool,
    /// The route's name (the site's MX hosts, or `smarthost`), for the delivery log.
    pub site: String,
}

pub(super) struct Workers {
    pub settings: Arc<Settings>,
    pub transport: Arc<dyn Transport>,
    pub spool: Spool,
    pub tls: Option<TlsConnector>,
    /// STARTTLS that verifies the server's certificate (MTA-STS `enforce`).
    pub verified_tls: Option<TlsConnector>,
    pub events: mpsc::UnboundedSender<Event>,
}

/// Marketing jobs, one queue per account, served round robin: a large campaign of one
/// account does not hold up the others.
#[derive(Default)]
struct FairQueue {
    accounts: VecDeque<(String, VecDeque<Job>)>,
}

impl FairQueue {
    fn push(&mut self, job: Job) {
        match self
            .accounts
            .iter_mut()
            .find(|(a, _)| *a == job.env.account)
        {
            Some((_, q)) => q.push_back(job),
            None => {
                let account = job.env.account.clone();
                self.accounts.push_back((account, VecDeque::from([job])));
            }
        }
    }

    fn pop(&mut self) -> Option<Job> {
        let (account, mut q) = self.accounts.pop_front()?;
        let job = q.pop_front();
        if !q.is_empty() {
            self.accounts.push_back((account, q));
        }
        job
    }

    fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }

    fn drain(&mut self) -> impl Iterator<Item = Job> + '_ {
        self.accounts.drain(..).flat_map(|(_, q)| q)
    }
}

struct Queue {
    /// The priority lane: transactional mail and DSNs, taken before any marketing.
    urgent: VecDeque<Job>,
    jobs: FairQueue,
    /// Workers running; each holds at most one connection.
    workers: usize,
    /// Connections parked between jobs, newest last, each with a serial number so that its
    /// reaper can find it.
    idle: Vec<(u64, Connection)>,
    parked: u64,
}

pub(super) struct Route {
    key: RouteKey,
    queue: Mutex<Queue>,
    /// GCRA: the earliest time the next message may start (the theoretical arrival time).
    next_send: Mutex<Option<tokio::time::Instant>>,
    /// The same for opening the next connection.
    next_connect: Mutex<Option<tokio::time::Instant>>,
    /// Adaptive shaping: what the destination's replies did to its pace.
    shaping: Mutex<Shaping>,
    /// The recipient domains sent to this route (for the policy's per-domain throttles).
    domains: Mutex<HashSet<String>>,
}

/// The destination's own pace, set by replies that say "too much" (see
/// [`crate::policy::throttle::ShapingRule`]).
struct Shaping {
    /// The share of the configured message rate in force (1.0: all of it).
    factor: f64,
    suspended_until: Option<tokio::time::Instant>,
    /// When the factor last changed (recovery counts from here).
    since: tokio::time::Instant,
}

impl Route {
    pub fn new(key: RouteKey) -> Route {
        Route {
            key,
            domains: Mutex::default(),
            next_send: Mutex::new(None),
            next_connect: Mutex::new(None),
            shaping: Mutex::new(Shaping {
                factor: 1.0,
                suspended_until: None,
                since: tokio::time::Instant::now(),
            }),
            queue: Mutex::new(Queue {
                urgent: VecDeque::new(),
                jobs: FairQueue::default(),
                workers: 0,
                idle: Vec::new(),
                parked: 0,
            }),
        }
    }

    /// Notes that mail for `domain` goes this way.
    pub fn carries(&self, domain: &str) {
        let mut domains = self.domains.lock().expect("domains lock");
        if !domains.contains(domain) {
            domains.insert(domain.to_string());
        }
    }

    /// The policy's throttle for this route: the smart host counts as `*`; a site takes an
    /// `mx:` key matching one of its hosts, else the key of a domain it carries.
    fn throttle(&self, ctx: &Workers) -> crate::policy::throttle::Throttle {
        let Some(policy) = &ctx.settings.policy else {
            return Default::default();
        };
        let policy = policy.load();
        match &self.key {
            RouteKey::Smarthost => policy.throttle("*"),
            RouteKey::Site(site) => {
                let domains = self.domains.lock().expect("domains lock");
                policy.site_throttle(site.mx.iter().map(|(_, h)| h.as_str()), |d| {
                    domains.contains(d)
                })
            }
        }
    }

    /// What TLS this route's mail needs (the smart host: `[destinations."*"]`).
    fn tls_demand(&self, ctx: &Workers) -> TlsDemand {
        match &self.key {
            RouteKey::Site(site) => site.tls,
            RouteKey::Smarthost => {
                let required = ctx
                    .settings
                    .policy
                    .as_ref()
                    .is_some_and(|p| p.load().tls_required("*"));
                if required {
                    TlsDemand::Required
                } else {
                    TlsDemand::Opportunistic
                }
            }
        }
    }

    /// Waits until the message rate allows the next message, and books its slot. Messages
    /// are spaced evenly by the rate's interval (GCRA without burst), so a minute at
    /// "600/min" carries 600 of them.
    /// Returns whether the destination was suspended (a kept connection is stale then).
    async fn pace(&self, ctx: &Workers, rate: Option<crate::policy::throttle::Rate>) -> bool {
        let now = tokio::time::Instant::now();
        let recovery = ctx
            .settings
            .policy
            .as_ref()
            .map(|p| p.load().shaping_recovery())
            .unwrap_or_default();
        let (suspended, factor) = {
            let mut sh = self.shaping.lock().expect("shaping lock");
            if sh.factor < 1.0 && !recovery.every.is_zero() {
                let steps = ((now - sh.since).as_secs_f64() / recovery.every.as_secs_f64()).floor();
                if steps >= 1.0 {
                    sh.factor = (sh.factor + steps * recovery.step).min(1.0);
                    sh.since = now;
                    tracing::info!(route = %self.key, share = sh.factor, "adaptive shaping: rate recovering");
                }
            }
            (sh.suspended_until.filter(|t| *t > now), sh.factor)
        };
        if let Some(until) = suspended {
            crate::metrics::throttle_wait(until - now);
            tokio::time::sleep_until(until).await;
        }
        let Some(rate) = rate else {
            return suspended.is_some();
        };
        wait_for_slot(&self.next_send, rate.interval().div_f64(factor.max(0.01))).await;
        suspended.is_some()
    }

    /// Waits until the connection rate allows opening another connection.
    async fn pace_connections(&self, rate: Option<crate::policy::throttle::Rate>) {
        if let Some(rate) = rate {
            wait_for_slot(&self.next_connect, rate.interval()).await;
        }
    }

    /// Applies the policy's shaping rule matched by a server's reply, if any.
    fn shape(&self, ctx: &Workers, attempt: &Attempt) {
        let (Some(policy), Attempt::Replied { reply, .. }) = (&ctx.settings.policy, attempt) else {
            return;
        };
        if reply.is_positive() {
            return;
        }
        let policy = policy.load();
        let Some(rule) = policy.shaping_rule(reply.code, &reply.one_line()) else {
            return;
        };
        let now = tokio::time::Instant::now();
        let mut sh = self.shaping.lock().expect("shaping lock");
        match rule.action {
            crate::policy::throttle::Action::Slow { factor } => {
                sh.factor = (sh.factor * factor).max(0.01);
                tracing::warn!(route = %self.key, rule = %rule.name, share = sh.factor, reply = %reply.code, "adaptive shaping: rate cut");
                crate::metrics::shaping_action("slow");
            }
            crate::policy::throttle::Action::Suspend { duration } => {
                sh.suspended_until = Some(now + duration);
                tracing::warn!(route = %self.key, rule = %rule.name, suspended = ?duration, reply = %reply.code, "adaptive shaping: destination suspended");
                crate::metrics::shaping_action("suspend");
            }
        }
        sh.since = now;
    }

    /// Nothing queued, nothing alive (a worker or a parked connection), and no pace or
    /// shaping state that forgetting would undo: the route can be dropped.
    pub fn is_unused(&self) -> bool {
        let now = tokio::time::Instant::now();
        let q = self.queue.lock().expect("route lock");
        let at_rest = {
            let sh = self.shaping.lock().expect("shaping lock");
            sh.factor >= 1.0 && sh.suspended_until.is_none_or(|t| t <= now)
        };
        let paced = [&self.next_send, &self.next_connect]
            .iter()
            .any(|slot| slot.lock().expect("pace lock").is_some_and(|t| t > now));
        q.jobs.is_empty()
            && q.urgent.is_empty()
            && q.workers == 0
            && q.idle.is_empty()
            && at_rest
            && !paced
    }

    /// Removes and returns the jobs no worker has started (at shutdown).
    pub fn take_queued(&self) -> Vec<Job> {
        let mut q = self.queue.lock().expect("route lock");
        let mut all: Vec<Job> = q.urgent.drain(..).collect();
        all.extend(q.jobs.drain());
        all
    }

    /// Queues a job and starts a worker if the route may have another; otherwise a running
    /// worker takes the job when it finishes its current one.
    pub fn push(self: &Arc<Self>, job: Job, ctx: &Arc<Workers>) {
        let start = {
            let mut q = self.queue.lock().expect("route lock");
            // A large campaign must never hold up a password reset or a bounce report.
            if job.env.stream == crate::policy::Stream::Transactional || job.env.generated_dsn {
                q.urgent.push_back(job);
            } else {
                q.jobs.push(job);
            }
            let cap = self
                .throttle(ctx)
                .connections
                .map_or(ctx.settings.config.max_connections_per_destination, |c| {
                    c.min(ctx.settings.config.max_connections_per_destination)
                });
            if q.workers < cap {
                q.workers += 1;
                true
            } else {
                false
            }
        };
        if start {
            tokio::spawn(worker(self.clone(), ctx.clone()));
        }
    }

    /// The next job (with a parked connection if the worker has none), or `None` when the
    /// queue is empty — then the worker is counted out and its connection parked, under the
    /// same lock, so a concurrent push starts a new worker that finds the connection.
    fn next(self: &Arc<Self>, conn: &mut Option<Connection>, ctx: &Workers) -> Option<Job> {
        let mut q = self.queue.lock().expect("route lock");
        if let Some(job) = q.urgent.pop_front().or_else(|| q.jobs.pop()) {
            if conn.is_none() {
                *conn = q.idle.pop().map(|(_, c)| c);
            }
            return Some(job);
        }
        q.workers -= 1;
        if let Some(c) = conn.take() {
            q.parked += 1;
            let serial = q.parked;
            q.idle.push((serial, c));
            let (route, wait) = (self.clone(), ctx.settings.config.connection_idle_timeout);
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let expired = {
                    let mut q = route.queue.lock().expect("route lock");
                    let at = q.idle.iter().position(|(s, _)| *s == serial);
                    at.map(|i| q.idle.remove(i).1)
                };
                if let Some(mut c) = expired {
                    c.quit().await;
                }
            });
        }
        None
    }
}

/// GCRA without burst: books the next slot `interval` after the last one (or now) and
/// waits for it, so a minute at "600/min" carries 600 of them.
async fn wait_for_slot(slot: &Mutex<Option<tokio::time::Instant>>, interval: std::time::Duration) {
    let now = tokio::time::Instant::now();
    let start = {
        let mut next = slot.lock().expect("pace lock");
        let start = next.map_or(now, |t| t.max(now));
        *next = Some(start + interval);
        start
    };
    if start > now {
        crate::metrics::throttle_wait(start - now);
        tokio::time::sleep_until(start).await;
    }
}

async fn worker(route: Arc<Route>, ctx: Arc<Workers>) {
    let mut conn: Option<Connection> = None;
    while let Some(job) = route.next(&mut conn, &ctx) {
        let report = deliver(&route, &ctx, &mut conn, job).await;
        if ctx.events.send(Event::Done(report)).is_err() {
            return; // the scheduler has stopped
        }
    }
}

async fn deliver(
    route: &Route,
    ctx: &Workers,
    conn: &mut Option<Connection>,
    mut job: Job,
) -> JobReport {
    let everyone = |attempt: Attempt, rcpts: &[u32]| -> Vec<(u32, Attempt)> {
        rcpts.iter().map(|&i| (i, attempt.clone())).collect()
    };
    let body = match job.body.take() {
        Some(b) => b,
        None => match ctx.spool.read(job.loc).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(id = %crate::spool::format_id(job.id), error = %e, "cannot read message content from the spool");
                return JobReport {
                    id: job.id,
                    results: everyone(Attempt::Refused(LocalRefusal::DamagedInSpool), &job.rcpts),
                    remote: None,
                    next_hop_dsn: false,
                    site: route.key.to_string(),
                };
            }
        },
    };
    // Marketing mail is rewritten for each recipient (its own unsubscribe link), so each
    // recipient is its own transaction; other mail is prepared once for all of them. The
    // rewrite parses the message and DKIM hashes all of it: on a CPU slot, off the async
    // threads (crate::cpu), so a large message never stalls other sessions.
    let groups: Vec<(Vec<u32>, Result<Bytes, String>)> = match ctx.settings.rewriter.clone() {
        Some(r) => {
            let (env, job_rcpts) = (job.env.clone(), job.rcpts.clone());
            crate::cpu::run(move || prepare(&r, &env, &job_rcpts, &body)).await
        }
        None => vec![(job.rcpts.clone(), Ok(body))],
    };
    let key = &route.key;
    let throttle = route.throttle(ctx);
    let per_connection = throttle
        .messages_per_connection
        .map_or(ctx.settings.config.max_messages_per_connection, |m| {
            m.min(ctx.settings.config.max_messages_per_connection)
        });
    let mut results = Vec::with_capacity(job.rcpts.len());
    let mut remote = None;
    let mut next_hop_dsn = false;
    // Once no server can be reached, the other recipients of the job are not tried again.
    let mut unreachable: Option<Attempt> = None;
    for (rcpts, content) in groups {
        if let Some(attempt) = &unreachable {
            results.extend(everyone(attempt.clone(), &rcpts));
            continue;
        }
        let content = match content {
            Ok(c) => c,
            Err(why) => {
                tracing::error!(id = %crate::spool::format_id(job.id), error = %why, "rewrite failed");
                results.extend(everyone(
                    Attempt::Refused(LocalRefusal::Rewrite(why)),
                    &rcpts,
                ));
                continue;
            }
        };
        if route.pace(ctx, throttle.message_rate).await {
            // A connection kept through a suspension has most likely timed out.
            if let Some(mut stale) = conn.take() {
                stale.quit().await;
            }
        }
        if conn.is_none() {
            route.pace_connections(throttle.connection_rate).await;
            match connect(key, ctx, route.tls_demand(ctx)).await {
                Ok(c) => *conn = Some(c),
                Err(attempt) => {
                    crate::metrics::delivery_attempt(false);
                    route.shape(ctx, &attempt);
                    results.extend(everyone(attempt.clone(), &rcpts));
                    unreachable = Some(attempt);
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        let with_rcpt: Vec<(u32, &Recipient)> = rcpts
            .iter()
            .map(|&i| (i, &job.env.recipients[i as usize]))
            .collect();
        let sent = c.send(&job.env, &with_rcpt, &content).await;
        crate::metrics::delivery_attempt(sent.reusable);
        // One transaction shapes the pace once, however many recipients it refused.
        if let Some((_, attempt)) = sent
            .results
            .iter()
            .find(|(_, a)| matches!(a, Attempt::Replied { reply, .. } if !reply.is_positive()))
        {
            route.shape(ctx, attempt);
        }
        results.extend(sent.results);
        remote = Some(c.host.clone());
        next_hop_dsn = c.caps.dsn;
        if !sent.reusable {
            *conn = None;
        } else if c.transactions >= per_connection
            && let Some(mut c) = conn.take()
        {
            c.quit().await;
        }
    }
    JobReport {
        id: job.id,
        results,
        remote,
        next_hop_dsn,
        site: key.to_string(),
    }
}

/// Resolves the route and opens a connection to the first server that greets us properly.
async fn connect(key: &RouteKey, ctx: &Workers, demand: TlsDemand) -> Result<Connection, Attempt> {
    let tls_required = demand != TlsDemand::Opportunistic;
    let connector = match demand {
        TlsDemand::Verified => ctx.verified_tls.as_ref(),
        _ => ctx.tls.as_ref(),
    };
    if tls_required && connector.is_none() {
        return Err(Attempt::NoAnswer {
            stage: Stage::StartTls,
            error: "TLS is required for this destination but [delivery] starttls is disabled"
                .into(),
        });
    }
    let targets = ctx
        .transport
        .resolve(key)
        .await
        .map_err(Attempt::Unroutable)?;
    let timeouts = Timeouts {
        command: ctx.settings.config.command_timeout,
        data: ctx.settings.config.data_timeout,
    };
    let helo = &ctx.settings.config.helo_name;
    let mut last = Attempt::NoAnswer {
        stage: Stage::Connect,
        error: "no server to connect to".into(),
    };
    for target in &targets {
        let stream = match ctx.transport.connect(target).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(route = %key, host = %target.host, addr = %target.addr, error = %e, "connect failed");
                last = Attempt::NoAnswer {
                    stage: Stage::Connect,
                    error: format!("{} [{}]: {e}", target.host, target.addr),
                };
                continue;
            }
        };
        match Connection::open(stream, target, helo, connector, timeouts).await {
            Ok(mut c) if tls_required && !c.tls => {
                c.quit().await;
                tracing::warn!(route = %key, host = %target.host, "TLS required; the server offers no STARTTLS");
                last = Attempt::NoAnswer {
                    stage: Stage::StartTls,
                    error: format!("{}: TLS required, no STARTTLS offered", target.host),
                };
            }
            Ok(c) => return Ok(c),
            Err(OpenError { attempt, .. }) if tls_required => {
                tracing::warn!(route = %key, host = %target.host, "TLS required and the handshake failed");
                last = attempt;
            }
            Err(OpenError {
                attempt,
                tls_failed: true,
            }) => {
                tracing::warn!(route = %key, host = %target.host, "TLS handshake failed; retrying without TLS");
                if let Ok(stream) = ctx.transport.connect(target).await
                    && let Ok(c) = Connection::open(stream, target, helo, None, timeouts).await
                {
                    return Ok(c);
                }
                last = attempt;
            }
            Err(OpenError { attempt, .. }) => last = attempt,
        }
    }
    Err(last)
}
