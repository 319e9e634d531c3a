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
//! failed TLS handshake is retried once in plain text when TLS is opportunistic (it must
//! never make mail undeliverable), and never when the destination demands TLS (`required`,
//! `verify`, MTA-STS `enforce`, a smart host that takes a login): then the mail waits.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;

use super::budget::{ContentBudget, Share};
use super::client::TlsStart;
use super::client::{Connection, OpenError, Timeouts};
use super::outcome::{Attempt, LocalRefusal, Stage};
use super::transport::{RouteKey, TlsDemand, Transport};
use super::{Event, Settings};
use crate::config::TlsLevel;
use crate::envelope::{Envelope, QueueId, Recipient};
use crate::rewrite::RewriteError;
use crate::spool::{Location, Spool};
use pace::Shaping;

mod pace;

/// Some recipients of one message, all on this route. A queued job is small: the worker
/// reads the envelope and content when it is about to send (see `budget.rs`).
pub(super) struct Job {
    pub id: QueueId,
    pub loc: Location,
    pub rcpts: Indexes,
    /// The account ([`super::queue::Names`] id), for round robin between accounts.
    pub account: u32,
    /// Transactional mail and the relay's reports: the priority lane.
    pub urgent: bool,
    /// Envelope and content already in memory (a fresh message, within the budget).
    pub loaded: Option<Box<Loaded>>,
}

/// A job's recipients (their indexes in the envelope): the common single one inline, so a
/// queued job makes no allocation of its own — a backlog of a million due messages is a
/// million queued jobs.
pub(super) enum Indexes {
    One(u32),
    Many(Box<[u32]>),
}

impl From<Vec<u32>> for Indexes {
    fn from(mut all: Vec<u32>) -> Indexes {
        match all.len() {
            1 => Indexes::One(all.pop().expect("one")),
            _ => Indexes::Many(all.into_boxed_slice()),
        }
    }
}

impl std::ops::Deref for Indexes {
    type Target = [u32];
    fn deref(&self) -> &[u32] {
        match self {
            Indexes::One(i) => std::slice::from_ref(i),
            Indexes::Many(all) => all,
        }
    }
}

/// A message's envelope and content in memory, with the budget share they hold.
#[derive(Clone)]
pub(super) struct Loaded {
    pub env: Arc<Envelope>,
    pub body: Bytes,
    pub share: Arc<Share>,
}

/// The content each group of a job's recipients gets: one group per recipient when each
/// gets its own (marketing), else one for all.
fn prepare(
    r: &crate::rewrite::Rewriter,
    env: &Envelope,
    job_rcpts: &[u32],
    body: &Bytes,
) -> Vec<(Vec<u32>, Result<Bytes, RewriteError>)> {
    if r.per_recipient(env) {
        let rcpts: Vec<&Recipient> = job_rcpts
            .iter()
            .map(|&i| &env.recipients[i as usize])
            .collect();
        job_rcpts
            .iter()
            .zip(r.prepare_each(env, &rcpts, body))
            .map(|(&i, content)| (vec![i], content.map(Bytes::from)))
            .collect()
    } else {
        vec![(job_rcpts.to_vec(), r.prepare(env, None, body))]
    }
}

/// What a worker tells the scheduler after a job.
pub(super) struct JobReport {
    pub id: QueueId,
    /// The envelope as read for the attempt (`None` when it could not be read).
    pub env: Option<Arc<Envelope>>,
    /// The message could not be read from the spool: nothing was tried (`results` names
    /// the job's recipients), see `unreadable.rs`.
    pub unreadable: Option<crate::spool::SpoolError>,
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
    /// TLS that takes any certificate (opportunistic STARTTLS, `tls = "required"`); `None`
    /// when `[delivery] starttls = "disabled"` and no smart host wants TLS from the start.
    pub tls: Option<TlsConnector>,
    /// TLS that verifies the server's certificate for its name (`tls = "verify"`, MTA-STS
    /// `enforce`, a smart host's `ca_file`).
    pub verified_tls: Option<TlsConnector>,
    pub events: mpsc::UnboundedSender<Event>,
    /// Content in memory at once (`[delivery] max_content_in_flight`).
    pub content: ContentBudget,
}

/// Marketing jobs, one queue per account, served round robin: a large campaign of one
/// account does not hold up the others.
#[derive(Default)]
struct FairQueue {
    accounts: VecDeque<(u32, VecDeque<Job>)>,
}

impl FairQueue {
    fn push(&mut self, job: Job) {
        match self.accounts.iter_mut().find(|(a, _)| *a == job.account) {
            Some((_, q)) => q.push_back(job),
            None => {
                let account = job.account;
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
    /// The key as the cluster names the site (its MX hosts, or `smarthost`), made once.
    name: String,
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

impl Route {
    pub fn new(key: RouteKey) -> Route {
        Route {
            name: key.to_string(),
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

    /// What TLS this route's mail needs (the smart host: the stricter of its own `tls`
    /// and the policy's `[destinations."*"]`).
    fn tls_demand(&self, ctx: &Workers) -> TlsDemand {
        match &self.key {
            RouteKey::Site(site) => site.tls,
            RouteKey::Smarthost => {
                let configured = ctx
                    .settings
                    .config
                    .smarthost
                    .as_ref()
                    .map_or(TlsLevel::Opportunistic, |s| s.tls);
                let policy = ctx
                    .settings
                    .policy
                    .as_ref()
                    .map_or(TlsLevel::Opportunistic, |p| p.load().destination_tls("*"));
                configured.max(policy).into()
            }
        }
    }

    /// The site's name in the cluster: its MX hosts, or `smarthost`.
    pub fn name(&self) -> &str {
        &self.name
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
            if job.urgent {
                q.urgent.push_back(job);
            } else {
                q.jobs.push(job);
            }
            if q.workers < self.worker_cap(ctx) {
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
        // A cluster that lost its Redis lowers the cap to this node's share: the workers
        // beyond it stop after their job.
        let over = ctx
            .settings
            .cluster
            .as_ref()
            .is_some_and(|c| c.share().is_some())
            && q.workers > self.worker_cap(ctx);
        if !over && let Some(job) = q.urgent.pop_front().or_else(|| q.jobs.pop()) {
            if conn.is_none() {
                *conn = q.idle.pop().map(|(_, c)| c);
            }
            return Some(job);
        }
        q.workers -= 1;
        if q.workers == 0 && q.urgent.capacity() > 1024 {
            // A drained backlog's queue gives its memory back (a VecDeque never shrinks).
            q.urgent = VecDeque::new();
        }
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
    let key = &route.key;
    let throttle = route.throttle(ctx);
    let demand = route.tls_demand(ctx);
    let per_connection = throttle
        .messages_per_connection
        .map_or(ctx.settings.config.max_messages_per_connection, |m| {
            m.min(ctx.settings.config.max_messages_per_connection)
        });
    // The first transaction's slot and a connection come before anything is read: a
    // worker waiting for a slow or dead next hop holds no content.
    let first = ready(route, ctx, conn, &throttle, demand).await;
    let Loaded {
        env,
        body,
        share: _share, // given back when this attempt is over
    } = match load(ctx, &mut job).await {
        Ok(loaded) => loaded,
        Err(e) => {
            return JobReport {
                id: job.id,
                env: None,
                unreadable: Some(e),
                results: everyone(Attempt::Refused(LocalRefusal::DamagedInSpool), &job.rcpts),
                remote: None,
                next_hop_dsn: false,
                site: key.to_string(),
            };
        }
    };
    let mut report = JobReport {
        id: job.id,
        env: Some(env.clone()),
        unreadable: None,
        results: Vec::with_capacity(job.rcpts.len()),
        remote: None,
        next_hop_dsn: false,
        site: key.to_string(),
    };
    if let Err(attempt) = first {
        report.results = everyone(attempt, &job.rcpts);
        return report;
    }
    // Marketing mail is rewritten for each recipient (its own unsubscribe link), so each
    // recipient is its own transaction, their copies made a batch at a time; other mail
    // is prepared once for all of them. The rewrite parses the message and DKIM hashes all
    // of it: on a CPU slot, off the async threads (crate::cpu), so a large message never
    // stalls other sessions.
    let rewriter = ctx.settings.rewriter.clone();
    let per_recipient = rewriter.as_ref().is_some_and(|r| r.per_recipient(&env));
    // With the relay's own return path, each recipient is its own transaction too (its
    // envelope sender names it), even when they share one content.
    let verp = ctx
        .settings
        .return_paths
        .as_ref()
        .filter(|_| env.sender.is_some() && !env.generated_dsn);
    let bounce_domain: Option<String> = verp.and_then(|_| {
        let policy = ctx.settings.policy.as_ref()?.load();
        policy.account(&env.account)?.bounce_domain.clone()
    });
    let batch = if per_recipient {
        super::budget::batch(job.loc.len, job.rcpts.len())
    } else {
        job.rcpts.len().max(1)
    };
    // Once no server can be reached, the other recipients of the job are not tried again.
    let mut unreachable: Option<Attempt> = None;
    // The slot and connection `ready` gave above serve the first transaction.
    let mut slot_used = false;
    for chunk in job.rcpts.chunks(batch) {
        let contents: Vec<(Vec<u32>, Result<Bytes, RewriteError>)> = match rewriter.clone() {
            Some(r) => {
                let (env, chunk, body) = (env.clone(), chunk.to_vec(), body.clone());
                // Marketing copies of one message: chunk.len() rewrites of body.len() each.
                let work = body.len().saturating_mul(chunk.len());
                crate::cpu::run_for(work, move || prepare(&r, &env, &chunk, &body)).await
            }
            None => vec![(chunk.to_vec(), Ok(body.clone()))],
        };
        let contents = match verp {
            Some(_) if !per_recipient => contents
                .into_iter()
                .flat_map(|(rcpts, content)| {
                    rcpts
                        .into_iter()
                        .map(move |i| (vec![i], content.clone()))
                        .collect::<Vec<_>>()
                })
                .collect(),
            _ => contents,
        };
        for (rcpts, content) in contents {
            if let Some(attempt) = &unreachable {
                report.results.extend(everyone(attempt.clone(), &rcpts));
                continue;
            }
            let content = match content {
                Ok(c) => c,
                Err(why) => {
                    tracing::error!(id = %job.id, error = %why, "rewrite failed");
                    report.results.extend(everyone(
                        Attempt::Refused(LocalRefusal::Rewrite(why)),
                        &rcpts,
                    ));
                    continue;
                }
            };
            if slot_used && let Err(attempt) = ready(route, ctx, conn, &throttle, demand).await {
                report.results.extend(everyone(attempt.clone(), &rcpts));
                unreachable = Some(attempt);
                continue;
            }
            slot_used = true;
            let return_path = match (verp, rcpts.as_slice()) {
                (Some(paths), [i]) => paths.sender_for(&env, *i as usize, bounce_domain.as_deref()),
                _ => None,
            };
            let sender = return_path.as_deref().or(env.sender.as_deref());
            transact(
                route,
                ctx,
                conn,
                (&env, sender),
                &rcpts,
                &content,
                per_connection,
                &mut report,
            )
            .await;
        }
    }
    report
}

/// A job's message and content: the fresh message it came with, else read back from the
/// spool once its content fits the budget in flight.
async fn load(ctx: &Workers, job: &mut Job) -> Result<Loaded, crate::spool::SpoolError> {
    if let Some(loaded) = job.loaded.take() {
        return Ok(*loaded);
    }
    let share = ctx.content.take(job.loc.len, job.rcpts.len()).await;
    let (env, body) = ctx.spool.read_message(job.loc).await?;
    Ok(Loaded {
        env: Arc::new(env),
        body,
        share: Arc::new(share),
    })
}

/// One transaction on the open connection for `rcpts` with `content`, from `sender`
/// (the message's own envelope sender or its return path): its results go
/// into the report; a refusal shapes the route's pace; the connection is dropped when it
/// cannot be reused and closed once it carried `per_connection` transactions.
#[allow(clippy::too_many_arguments)]
async fn transact(
    route: &Route,
    ctx: &Workers,
    conn: &mut Option<Connection>,
    (env, sender): (&Envelope, Option<&str>),
    rcpts: &[u32],
    content: &Bytes,
    per_connection: usize,
    report: &mut JobReport,
) {
    let c = conn.as_mut().expect("ready opened a connection");
    let with_rcpt: Vec<(u32, &Recipient)> = rcpts
        .iter()
        .map(|&i| (i, &env.recipients[i as usize]))
        .collect();
    let sent = c.send(env, sender, &with_rcpt, content).await;
    crate::metrics::delivery_attempt(sent.reusable);
    // One transaction shapes the pace once, however many recipients it refused.
    if let Some((_, attempt)) = sent
        .results
        .iter()
        .find(|(_, a)| matches!(a, Attempt::Replied { reply, .. } if !reply.is_positive()))
    {
        route.shape(ctx, attempt);
    }
    report.results.extend(sent.results);
    report.remote = Some(c.host.clone());
    report.next_hop_dsn = c.caps.dsn;
    if !sent.reusable {
        *conn = None;
    } else if c.transactions >= per_connection
        && let Some(mut c) = conn.take()
    {
        c.quit().await;
    }
}

/// Makes sure a connection fit for the route's TLS demand is open (a suspension waited
/// out first), then waits for the route's next message slot; the attempt to report when
/// no connection can be opened. The slot comes last: one booked while a connection was
/// still to be had (a lease to wait for, a connection rate) would go unused.
async fn ready(
    route: &Route,
    ctx: &Workers,
    conn: &mut Option<Connection>,
    throttle: &crate::policy::throttle::Throttle,
    demand: TlsDemand,
) -> Result<(), Attempt> {
    let (suspended, factor) = route.wait_out_suspension(ctx).await;
    if suspended {
        // A connection kept through a suspension has most likely timed out.
        if let Some(mut stale) = conn.take() {
            stale.quit().await;
        }
    }
    // A connection parked while the policy asked less (it changed since) is not reused.
    if demand != TlsDemand::Opportunistic
        && let Some(mut lax) = conn.take_if(|c| !c.tls)
    {
        lax.quit().await;
    }
    if conn.is_none() {
        // A place in the site's cluster-wide connection cap first, held while the
        // connection lives (none alone, or while the cluster's Redis is away: the worker
        // cap holds this node to its share then).
        let lease = match (&ctx.settings.cluster, throttle.connections) {
            (Some(cluster), Some(cap)) => cluster.lease(&route.name, cap).await,
            _ => None,
        };
        route.pace_connections(ctx, throttle.connection_rate).await;
        match connect(&route.key, ctx, demand).await {
            Ok(mut c) => {
                c.lease = lease;
                *conn = Some(c);
            }
            Err(attempt) => {
                crate::metrics::delivery_attempt(false);
                route.shape(ctx, &attempt);
                return Err(attempt);
            }
        }
    }
    route
        .pace_messages(ctx, throttle.message_rate, factor)
        .await;
    Ok(())
}

/// Resolves the route and opens a connection to the first server that greets us properly.
/// Under a TLS demand nothing goes in plain text: a server without STARTTLS or a failed
/// handshake moves on to the next server, never back to plain text.
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
    let smarthost = match key {
        RouteKey::Smarthost => ctx.settings.config.smarthost.as_ref(),
        RouteKey::Site(_) => None,
    };
    let auth = smarthost.and_then(|s| s.auth.as_ref());
    let start = match connector {
        Some(c) if smarthost.is_some_and(|s| s.implicit_tls) => TlsStart::Implicit(c),
        Some(c) => TlsStart::StartTls(c),
        None => TlsStart::Never,
    };
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
        match Connection::open(stream, target, helo, start, auth, timeouts).await {
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
                tracing::warn!(route = %key, host = %target.host, "TLS required and the handshake or login failed; not falling back to plain text");
                last = attempt;
            }
            Err(OpenError {
                attempt,
                tls_failed: true,
            }) => {
                tracing::warn!(route = %key, host = %target.host, "TLS handshake failed; retrying without TLS");
                if let Ok(stream) = ctx.transport.connect(target).await
                    && let Ok(c) =
                        Connection::open(stream, target, helo, TlsStart::Never, auth, timeouts)
                            .await
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
