//! The scheduler: one task that owns the queue — every message not yet finished and the
//! state of each of its recipients ([`queue`]) — and decides what happens next. It waits
//! for each recipient domain's site ([`sites`]), hands jobs (one message, the recipients on
//! one route) to the route's workers, settles each worker's report ([`complete`]: journal,
//! retry or give up, DSNs, and one [`crate::envelope::RecipientOutcome`] per recipient to
//! every [`crate::envelope::OutcomeSink`]), carries out the operator's commands
//! ([`control`]) and returns unreadable messages ([`unreadable`]).

mod canary;
mod complete;
pub mod control;
mod operator;
mod queue;
mod sites;
mod unreadable;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::outcome::{self, Attempt};
use super::route::{self, Job, JobReport, Route, Workers};
use super::transport::{self, RouteKey};
use super::{Delivery, Event, Queued, Settings, mta_sts};
use crate::envelope::{Envelope, OutcomeSink, QueueId};
use crate::privacy::AddressTagger;
use crate::spool::{self, RcptEvent, Spool};
use queue::{Clock, Entry, Hot, NO_CAMPAIGN, Names, Notices, Progress, Rcpt, Rcpts, Residence};

pub(super) struct Scheduler {
    settings: Arc<Settings>,
    spool: Spool,
    workers: Arc<Workers>,
    tagger: AddressTagger,
    by_domain: bool,
    clock: Clock,
    entries: HashMap<QueueId, Entry>,
    /// (due, message id); stale entries are skipped when popped.
    timers: BinaryHeap<Reverse<(u64, QueueId)>>,
    routes: HashMap<RouteKey, Arc<Route>>,
    /// Each recipient domain's site.
    sites: sites::Sites,
    /// Account names and recipient domains by number (see [`queue::Names`]).
    names: Names,
    /// What the operator asked for messages not yet in memory (applied when they are).
    actions: HashMap<QueueId, control::Action>,
    /// Recovery: how many pending recipients of each campaign in its canary are still
    /// canary ones (see [`crate::governance::campaign::Campaigns::readmit`]).
    readmit_budget: std::collections::BTreeMap<String, u64>,
    /// The sites named in metrics labels (the busiest at the last count).
    site_labels: SiteLabels,
    /// Messages an operator holds (see [`operator`]).
    holds: operator::Holds,
    /// Everything told of each settled recipient (see [`outcome_sinks`]).
    outcomes: Vec<Arc<dyn OutcomeSink>>,
    tx: mpsc::UnboundedSender<Event>,
    /// Jobs handed to routes and not yet reported back.
    in_flight: usize,
    /// Recipients not yet delivered or bounced (kept as a count: the queue can be huge).
    open_rcpts: usize,
    /// Shutting down: nothing new is dispatched.
    draining: bool,
}

/// What learns of every settled recipient, in this order: the delivery log, account
/// health, the campaigns' canaries, the per-account counts, the accounts' webhooks.
fn outcome_sinks(settings: &Settings) -> Vec<Arc<dyn OutcomeSink>> {
    let mut sinks: Vec<Arc<dyn OutcomeSink>> = Vec::new();
    if let Some(log) = &settings.log {
        sinks.push(Arc::new(log.clone()));
    }
    let f = &settings.feedback;
    if let Some(governor) = &f.governor {
        sinks.push(governor.clone());
    }
    if let Some(campaigns) = &f.campaigns {
        sinks.push(campaigns.clone());
    }
    sinks.push(settings.counts.clone());
    if let Some(bounces) = &settings.bounces {
        sinks.push(bounces.clone());
    }
    if let Some(webhooks) = &f.webhooks {
        sinks.push(webhooks.clone());
    }
    sinks
}

/// The lower-case A-label domain mail to `address` is routed by.
fn routing_domain(address: &str) -> String {
    let domain = address.rsplit_once('@').map_or(address, |(_, d)| d);
    crate::smtp::address::routing_domain(domain)
}

/// The sites the metrics call by name (the `site` label); the rest are `other`, so the
/// label's values stay bounded. A site is named while it has queued mail among the busiest
/// ([`sites::NAMED_SITES`]) or has had outcomes since the last refresh, up to
/// [`MAX_NAMED_SITES`] at once: a queue that drains between two refreshes (a smart host
/// taking everything at once) is still counted under its own name.
#[derive(Default)]
struct SiteLabels {
    named: std::collections::HashSet<String>,
    /// Named sites with outcomes since the last refresh.
    used: std::collections::HashSet<String>,
}

/// Most sites named at once.
const MAX_NAMED_SITES: usize = 2 * sites::NAMED_SITES;

impl SiteLabels {
    /// Counts a recipient outcome under the site's name, or `other`.
    fn outcome(&mut self, site: &str, result: &'static str) {
        let named = self.named.contains(site)
            || (self.named.len() < MAX_NAMED_SITES && self.named.insert(site.to_string()));
        let label = if named {
            if !self.used.contains(site) {
                self.used.insert(site.to_string());
            }
            site
        } else {
            "other"
        };
        crate::metrics::site_outcome(label, result);
    }
}

/// How often the queue by site is computed for metrics.
const SITE_METRICS_EVERY: Duration = Duration::from_secs(10);

/// How long shutdown waits for delivery transactions under way.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

impl Scheduler {
    pub(super) fn new(
        settings: Arc<Settings>,
        spool: Spool,
        workers: Arc<Workers>,
        tagger: AddressTagger,
        by_domain: bool,
        tx: mpsc::UnboundedSender<Event>,
    ) -> Scheduler {
        let holds = operator::Holds::load(settings.holds_file.clone());
        let outcomes = outcome_sinks(&settings);
        Scheduler {
            settings,
            spool,
            workers,
            tagger,
            by_domain,
            clock: Clock::new(),
            entries: HashMap::new(),
            timers: BinaryHeap::new(),
            routes: HashMap::new(),
            sites: sites::Sites::default(),
            names: Names::default(),
            actions: HashMap::new(),
            site_labels: SiteLabels::default(),
            holds,
            readmit_budget: Default::default(),
            outcomes,
            tx,
            in_flight: 0,
            open_rcpts: 0,
            draining: false,
        }
    }

    pub(super) async fn run(
        &mut self,
        mut rx: mpsc::UnboundedReceiver<Event>,
        shutdown: CancellationToken,
    ) {
        let mut site_metrics = tokio::time::interval(SITE_METRICS_EVERY);
        site_metrics.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut campaign_tick = tokio::time::interval(Duration::from_secs(1));
        campaign_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next_timer = self
                .timers
                .peek()
                .map(|Reverse((due, _))| self.clock.instant_at(*due));
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                event = rx.recv() => match event {
                    Some(event) => self.handle(event),
                    None => return,
                },
                () = sleep_until_opt(next_timer) => self.fire_timers(),
                _ = site_metrics.tick() => {
                    self.publish_site_metrics();
                    self.compact();
                }
                _ = campaign_tick.tick(), if self.settings.feedback.campaigns.is_some() => self.judge_campaigns(),
            }
            self.publish_metrics();
        }
        self.drain(&mut rx).await;
        // What the canaries did since the last tick survives a clean stop.
        if let Some(campaigns) = &self.settings.feedback.campaigns {
            campaigns.flush();
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::New(q) => self.add(*q),
            Event::Done(report) => {
                self.in_flight -= 1;
                self.complete(report);
            }
            Event::Resolved { domain, result } => self.resolved(&domain, result),
            Event::Loaded { id, result } => self.loaded(id, result),
            Event::Control(command) => self.control(command),
            Event::Shaped(crate::cluster::Announcement::Shaped {
                site,
                factor,
                suspended_for,
                node,
            }) => {
                // Routes are few and this is rare: compared by name.
                if let Some(route) = self.routes.values().find(|r| r.name() == site) {
                    route.shaped_elsewhere(&node, factor, suspended_for);
                }
            }
            // Only shaping is forwarded here.
            Event::Shaped(_) => {}
            Event::Admitted {
                id,
                campaign,
                answer,
            } => self.admitted(id, &campaign, answer),
        }
    }

    /// A domain's lookup ended: its waiting recipients go to the site's queue, or fail.
    fn resolved(
        &mut self,
        domain: &str,
        result: Result<(RouteKey, Duration), outcome::ResolveFailure>,
    ) {
        let waiting = self
            .sites
            .resolved(domain, &result, tokio::time::Instant::now());
        match result {
            Ok((key, _)) => {
                tracing::debug!(domain, site = %key, "site resolved");
                let domains = [domain.to_string()];
                for w in waiting {
                    self.queue_job(key.clone(), &domains, w);
                }
            }
            Err(failure) => {
                for w in waiting {
                    let results = w
                        .rcpts
                        .iter()
                        .map(|&i| (i, Attempt::Unroutable(failure.clone())))
                        .collect();
                    let mut report = JobReport {
                        id: w.id,
                        env: w.loaded.map(|l| l.env),
                        unreadable: None,
                        results,
                        remote: None,
                        next_hop_dsn: false,
                        site: format!("{domain} (no site)"),
                    };
                    if report.env.is_some() {
                        self.complete(report);
                        continue;
                    }
                    // The outcome needs the envelope (logs, DSNs): read it like a worker
                    // would, and report as one.
                    let Some(loc) = self.entries.get(&w.id).map(|e| e.loc) else {
                        continue;
                    };
                    self.in_flight += 1;
                    let (spool, tx) = (self.spool.clone(), self.tx.clone());
                    tokio::spawn(async move {
                        match spool.read_message(loc).await {
                            Ok((env, _)) => report.env = Some(Arc::new(env)),
                            Err(e) => report.unreadable = Some(e),
                        }
                        let _ = tx.send(Event::Done(report));
                    });
                }
            }
        }
    }

    /// Shutdown: jobs not yet started go back to waiting (they stay pending in the spool),
    /// and transactions under way get `DRAIN_LIMIT` to finish and be journaled, so a
    /// restart does not deliver them twice.
    async fn drain(&mut self, rx: &mut mpsc::UnboundedReceiver<Event>) {
        self.draining = true;
        let now = self.clock.now_ms();
        for route in self.routes.values() {
            for job in route.take_queued() {
                self.in_flight -= 1;
                if let Some(entry) = self.entries.get_mut(&job.id) {
                    for &i in job.rcpts.iter() {
                        entry.rcpts[i as usize].set(Progress::Waiting { due: now });
                    }
                }
            }
        }
        for w in self.sites.take_waiting() {
            if let Some(entry) = self.entries.get_mut(&w.id) {
                for &i in w.rcpts.iter() {
                    entry.rcpts[i as usize].set(Progress::Waiting { due: now });
                }
            }
        }
        let deadline = tokio::time::Instant::now() + DRAIN_LIMIT;
        while self.in_flight > 0 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Event::Done(report))) => {
                    self.in_flight -= 1;
                    self.complete(report);
                }
                // New messages (DSNs) are in the spool already; they wait for the next start.
                Ok(Some(
                    Event::New(_)
                    | Event::Resolved { .. }
                    | Event::Loaded { .. }
                    | Event::Control(_)
                    | Event::Shaped(_)
                    | Event::Admitted { .. },
                )) => {}
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        transactions = self.in_flight,
                        "delivery transactions still running at shutdown; their recipients are retried at the next start"
                    );
                    break;
                }
            }
        }
    }

    /// Gives back what a drained backlog left in the scheduler's tables: a map or heap
    /// never shrinks by itself, and a million due messages make both large.
    fn compact(&mut self) {
        let roomy = |len: usize, capacity: usize| capacity > 4096 && capacity > 4 * len;
        let mut shrunk = false;
        if roomy(self.entries.len(), self.entries.capacity()) {
            self.entries.shrink_to(self.entries.len() * 2);
            shrunk = true;
        }
        if roomy(self.timers.len(), self.timers.capacity()) {
            self.timers.shrink_to(self.timers.len() * 2);
            shrunk = true;
        }
        if shrunk {
            // glibc keeps what the drained backlog freed (the resident set stayed at its peak).
            crate::trim::give_back_memory();
        }
    }

    /// The site a recipient domain is routed to, as `queue summary` names it.
    pub(super) fn site_name(&self, domain: u32, now: tokio::time::Instant) -> String {
        if !self.by_domain {
            return "smarthost".to_string();
        }
        self.sites
            .route(self.names.name(domain), now)
            .map_or_else(|| "unresolved".to_string(), |k| k.to_string())
    }

    fn publish_metrics(&self) {
        crate::metrics::queue_size(self.entries.len(), self.open_rcpts);
    }

    /// The queue by site for metrics: the busiest sites by name, the rest as `other`; a
    /// site that dropped out is set to zero. Outcomes are labelled with the same names.
    fn publish_site_metrics(&mut self) {
        let summary = self.summary();
        let queued: std::collections::HashSet<String> =
            summary.by_site.iter().map(|s| s.site.clone()).collect();
        let labels = &mut self.site_labels;
        for gone in labels.named.difference(&queued) {
            crate::metrics::queue_site(gone, 0, Duration::ZERO);
        }
        for s in &summary.by_site {
            crate::metrics::queue_site(&s.site, s.recipients, Duration::from_secs(s.oldest_s));
        }
        labels.named = queued.union(&labels.used).cloned().collect();
        labels.used.clear();
    }

    pub(super) fn add(&mut self, q: Queued) {
        let now = self.clock.now_ms();
        let names = &mut self.names;
        let tagger = &self.tagger;
        let rcpts: Rcpts = q
            .env
            .recipients
            .iter()
            .zip(&q.events)
            .map(|(r, event)| {
                let mut rcpt = Self::rcpt_state(r, *event, now);
                rcpt.addr_hash = tagger.short(&r.address);
                rcpt.domain = names.id(&routing_domain(&r.address));
                rcpt
            })
            .collect();
        let id = q.env.id;
        let account = self.names.id(&q.env.account);
        let marketing = q.env.stream == crate::envelope::Stream::Marketing && !q.env.generated_dsn;
        let received_s = (q.env.received_at / 1000) as u32;
        let report = q.env.generated_dsn;
        let open = rcpts
            .iter()
            .filter(|r| r.status() != Progress::Done)
            .count();
        let mut rcpts = rcpts;
        let (campaign, ask) = match self.admit(&q, marketing, open as u64) {
            Some((campaign, sending, ask)) => {
                // The canary's share is the first open recipients; the others wait for
                // the campaign's verdict.
                let mut left = sending;
                for r in rcpts.iter_mut().filter(|r| r.status() != Progress::Done) {
                    if left > 0 {
                        left -= 1;
                    } else {
                        r.held = true;
                    }
                }
                (campaign, ask)
            }
            None => {
                // The campaign was declined: its mail is dropped (the account has its report).
                for i in 0..rcpts.len() {
                    self.spool.record(q.loc, i as u32, RcptEvent::Failed);
                }
                self.spool.finish(q.loc);
                return;
            }
        };
        self.open_rcpts += rcpts
            .iter()
            .filter(|r| r.status() != Progress::Done)
            .count();
        // A fresh message's content is in memory already: it serves the first attempt when
        // the budget has room to spare (see budget.rs); otherwise the worker reads it.
        let sending = rcpts
            .iter()
            .filter(|r| !r.held && matches!(r.status(), Progress::Waiting { due } if due <= now))
            .count();
        let loaded = match q.body {
            Some(body) if sending > 0 => {
                self.workers
                    .content
                    .take_spare(q.loc.len, sending)
                    .map(|share| {
                        Box::new(route::Loaded {
                            env: q.env.clone(),
                            body,
                            share: Arc::new(share),
                        })
                    })
            }
            _ => None,
        };
        self.entries.insert(
            id,
            Entry {
                loc: q.loc,
                rcpts,
                residence: Residence::Cold,
                account,
                marketing,
                report,
                received_s,
                campaign,
                operator_hold: self.holds.contains(id),
            },
        );
        if let (Some(size), Some(name)) = (ask, &q.env.campaign) {
            self.ask_cluster(id, &q.env.account, name, open as u64, size);
        }
        self.dispatch_with(id, loaded);
    }

    /// Staged release: the message's campaign and how many of its `open` recipients go
    /// now (the rest wait for the verdict), and in cluster mode the canary's size when
    /// Redis is to say how many go (all wait meanwhile); `None` when the campaign was
    /// declined (the message is dropped).
    fn admit(&mut self, q: &Queued, marketing: bool, open: u64) -> Option<(u32, u64, Option<u64>)> {
        use crate::governance::campaign::{Admission, key};
        let (Some(campaigns), Some(id), true) = (
            &self.settings.feedback.campaigns,
            &q.env.campaign,
            marketing,
        ) else {
            return Some((NO_CAMPAIGN, open, None));
        };
        let k = key(&q.env.account, id);
        let admission = if q.body.is_some() {
            let rules = self
                .settings
                .policy
                .as_ref()
                .map(|p| p.load().campaign_rules())
                .unwrap_or_default();
            campaigns.admit(
                &q.env.account,
                id,
                q.env.list.as_deref(),
                q.env.sender.as_deref(),
                open,
                &rules,
                self.clock.now_ms(),
            )
        } else {
            campaigns.readmit(&k, open, &mut self.readmit_budget)
        };
        let name = self.names.id(&k);
        let ask = match admission {
            Admission::Ask { size } => Some(size),
            _ => None,
        };
        admission.sending(open).map(|sending| (name, sending, ask))
    }

    /// A recipient's state from its last journaled event.
    fn rcpt_state(r: &crate::envelope::Recipient, event: Option<RcptEvent>, now: u64) -> Rcpt {
        match event {
            _ if RcptEvent::finished(r, event) => Rcpt::new(Progress::Done, 0, false),
            Some(RcptEvent::Deferred {
                attempts,
                next_attempt,
                delay_notified,
            }) => Rcpt::new(
                Progress::Waiting { due: next_attempt },
                attempts,
                delay_notified,
            ),
            _ => Rcpt::new(Progress::Waiting { due: now }, 0, false),
        }
    }

    /// A cold message's envelope is back from the spool: the operator's action applies.
    fn loaded(&mut self, id: QueueId, result: Result<Envelope, spool::SpoolError>) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        match result {
            Ok(env) => {
                if !matches!(entry.residence, Residence::Hot(_)) {
                    entry.residence = Residence::Hot(Box::new(Hot {
                        env: Arc::new(env),
                        notices: Notices::default(),
                    }));
                }
                self.dispatch(id);
            }
            // Never retried forever: see `unreadable.rs`.
            Err(e) => self.unreadable(id, e),
        }
    }

    /// Sends every due recipient of a message to its site's queue (looking the site up
    /// first when its domain is new or expired); schedules the rest.
    fn dispatch(&mut self, id: QueueId) {
        self.dispatch_with(id, None);
    }

    /// [`Self::dispatch`], with the message's envelope and content when they are in memory
    /// already (a fresh message).
    fn dispatch_with(&mut self, id: QueueId, loaded: Option<Box<route::Loaded>>) {
        if self.draining {
            return;
        }
        let now = self.clock.now_ms();
        let Some(entry) = self.entries.get(&id) else {
            return;
        };
        let acted_on = self.actions.contains_key(&id);
        // Recipients held for their campaign's verdict are left alone until it comes
        // (control::campaign_verdict dispatches them).
        let skip_held = self.campaign_waits(entry);
        if !acted_on {
            let due_now = entry.rcpts.iter().any(|r| {
                !(skip_held && r.held)
                    && matches!(r.status(), Progress::Waiting { due } if due <= now)
            });
            if !due_now {
                if let Some(due) = entry.next_due(skip_held) {
                    self.timers.push(Reverse((due, id)));
                }
                return;
            }
            if self.frozen_holds(entry) || entry.operator_hold {
                // Kept waiting until the account is unfrozen (control::Command::Release)
                // or the operator releases it (operator::Bulk::Release).
                return;
            }
        }
        let entry = self.entries.get_mut(&id).expect("checked above");
        if acted_on {
            if entry.in_flight() {
                return; // the action waits for the attempt under way (see `complete`)
            }
            // Erase and bounce need the envelope (addresses, the DSN); delete does not.
            let needs_envelope = self.actions.get(&id) != Some(&control::Action::Delete);
            match &entry.residence {
                Residence::Hot(_) => {}
                _ if !needs_envelope => {}
                Residence::Loading => return,
                Residence::Cold => {
                    // Read the envelope back; the action applies when it is here.
                    entry.residence = Residence::Loading;
                    let (spool, tx, loc) = (self.spool.clone(), self.tx.clone(), entry.loc);
                    tokio::spawn(async move {
                        let result = spool.read_message(loc).await.map(|(env, _)| env);
                        let _ = tx.send(Event::Loaded { id, result });
                    });
                    return;
                }
            }
            let action = self.actions.remove(&id).expect("checked above");
            self.apply(id, action);
            return;
        }
        // Recipients by routing domain (one group for everything when a smart host takes it).
        let mut groups: HashMap<String, Vec<u32>> = HashMap::new();
        let mut next_due: Option<u64> = None;
        for (i, r) in entry.rcpts.iter_mut().enumerate() {
            if skip_held && r.held {
                continue;
            }
            match r.status() {
                Progress::Waiting { due } if due <= now => {
                    r.set(Progress::InFlight);
                    // The routing domain, interned when the message was added.
                    let domain = if self.by_domain {
                        self.names.name(r.domain).to_string()
                    } else {
                        String::new()
                    };
                    groups.entry(domain).or_default().push(i as u32);
                }
                Progress::Waiting { due } => next_due = Some(next_due.map_or(due, |d| d.min(due))),
                _ => {}
            }
        }
        if let Some(due) = next_due {
            self.timers.push(Reverse((due, id)));
        }
        let tnow = tokio::time::Instant::now();
        // Domains of one site share a transaction (when the content allows, see route.rs).
        let mut by_site: HashMap<RouteKey, (Vec<String>, Vec<u32>)> = HashMap::new();
        for (domain, rcpts) in groups {
            let known = if self.by_domain {
                self.sites.route(&domain, tnow)
            } else {
                Some(RouteKey::Smarthost)
            };
            if let Some(key) = known {
                let (domains, all) = by_site.entry(key).or_default();
                domains.push(domain);
                all.extend(rcpts);
                continue;
            }
            let waiting = sites::Waiting {
                id,
                rcpts: rcpts.into(),
                loaded: loaded.clone(),
            };
            if self.sites.wait(&domain, waiting) {
                let (workers, tx) = (self.workers.clone(), self.tx.clone());
                tokio::spawn(async move {
                    let result = sites::resolve(&workers, &domain).await;
                    let _ = tx.send(Event::Resolved { domain, result });
                });
            }
        }
        for (key, (domains, mut rcpts)) in by_site {
            rcpts.sort_unstable();
            let waiting = sites::Waiting {
                id,
                rcpts: rcpts.into(),
                loaded: loaded.clone(),
            };
            self.queue_job(key, &domains, waiting);
        }
    }

    /// Hands recipients (already marked in flight) to a route as one job.
    fn queue_job(&mut self, key: RouteKey, domains: &[String], w: sites::Waiting) {
        let Some(entry) = self.entries.get(&w.id) else {
            return;
        };
        let job = Job {
            id: w.id,
            loc: entry.loc,
            rcpts: w.rcpts,
            account: entry.account,
            urgent: !entry.marketing,
            loaded: w.loaded,
        };
        let route = self
            .routes
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Route::new(key)));
        for domain in domains.iter().filter(|d| !d.is_empty()) {
            route.carries(domain);
        }
        self.in_flight += 1;
        route.push(job, &self.workers);
    }

    fn fire_timers(&mut self) {
        let now = self.clock.now_ms();
        let mut due_ids = Vec::new();
        while let Some(Reverse((due, id))) = self.timers.peek().copied() {
            if due > now {
                break;
            }
            self.timers.pop();
            due_ids.push(id);
        }
        due_ids.dedup();
        for id in due_ids {
            self.dispatch(id);
        }
        // Routes with nothing queued and no workers are dropped so the map stays small.
        self.routes.retain(|_, r| !r.is_unused());
        self.sites.expire(tokio::time::Instant::now());
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
