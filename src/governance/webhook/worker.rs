//! The webhook outbox's delivery task: each account's backlog of stored events, the
//! earliest due account's oldest events next (a batch up to its webhook's `max_batch`),
//! at most [`MAX_IN_FLIGHT`] attempts at once, backoff per account, and events given up
//! after [`GIVE_UP_AFTER`].

use super::*;

/// One account's queued events and its retry state.
struct Backlog {
    /// By id: oldest first.
    events: BTreeMap<String, Queued>,
    /// Failed attempts in a row.
    failures: u32,
    due: Instant,
    /// An attempt is under way.
    busy: bool,
}

/// The delivery task: the earliest due account's oldest event next.
pub(super) struct Worker {
    hooks: Arc<Webhooks>,
    inbox: mpsc::UnboundedReceiver<Queued>,
    accounts: BTreeMap<String, Backlog>,
    in_flight: JoinSet<Attempted>,
    /// Which account each attempt is about.
    attempts: HashMap<tokio::task::Id, String>,
}

impl Worker {
    pub(super) fn new(hooks: Arc<Webhooks>, inbox: mpsc::UnboundedReceiver<Queued>) -> Worker {
        Worker {
            hooks,
            inbox,
            accounts: BTreeMap::new(),
            in_flight: JoinSet::new(),
            attempts: HashMap::new(),
        }
    }

    pub(super) async fn run(mut self, stop: CancellationToken) {
        let dir = self.hooks.dir.clone();
        match tokio::task::spawn_blocking(move || pick_up(&dir)).await {
            Ok(found) => {
                if !found.is_empty() {
                    tracing::info!(
                        events = found.len(),
                        "webhook events picked up from the outbox"
                    );
                }
                found.into_iter().for_each(|q| self.add(q));
            }
            Err(e) => tracing::error!(error = %e, "could not read the webhook outbox"),
        }
        loop {
            self.dispatch();
            let next = self.next_due();
            tokio::select! {
                () = stop.cancelled() => break,
                Some(q) = self.inbox.recv() => self.add(q),
                Some(done) = self.in_flight.join_next_with_id() => self.finish(done),
                () = sleep_until_opt(next) => {}
            }
        }
        // Dropping the JoinSet abandons attempts under way; their files stay.
    }

    fn add(&mut self, q: Queued) {
        let backlog = self
            .accounts
            .entry(q.account.clone())
            .or_insert_with(|| Backlog {
                events: BTreeMap::new(),
                failures: 0,
                due: Instant::now(),
                busy: false,
            });
        backlog.events.entry(q.id.clone()).or_insert(q);
    }

    /// When the earliest idle account with events is due.
    fn next_due(&self) -> Option<Instant> {
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            return None; // a finished attempt wakes the loop
        }
        self.accounts
            .values()
            .filter(|b| !b.busy && !b.events.is_empty())
            .map(|b| b.due)
            .min()
    }

    /// Starts an attempt for every due idle account (the longest waiting first, so no
    /// account starves behind others when [`MAX_IN_FLIGHT`] is reached), each with its
    /// oldest events (as many as its webhook's `max_batch`).
    fn dispatch(&mut self) {
        let now = Instant::now();
        let mut ready: Vec<(Instant, String)> = self
            .accounts
            .iter()
            .filter(|(_, b)| !b.busy && b.due <= now && !b.events.is_empty())
            .map(|(account, b)| (b.due, account.clone()))
            .collect();
        ready.sort();
        let room = MAX_IN_FLIGHT.saturating_sub(self.in_flight.len());
        for (_, account) in ready.into_iter().take(room) {
            let Some(backlog) = self.accounts.get_mut(&account) else {
                continue;
            };
            let n = self.hooks.max_batch(&account);
            let batch: Vec<Queued> = backlog.events.values().take(n).cloned().collect();
            if batch.is_empty() {
                continue;
            }
            backlog.busy = true;
            let hooks = self.hooks.clone();
            let handle = self
                .in_flight
                .spawn(async move { hooks.attempt(&batch).await });
            self.attempts.insert(handle.id(), account);
        }
        // Keep an idle account only while it has events or is backing off.
        self.accounts
            .retain(|_, b| b.busy || !b.events.is_empty() || b.due > now);
    }

    /// Applies an attempt's outcome.
    fn finish(&mut self, done: Result<(tokio::task::Id, Attempted), tokio::task::JoinError>) {
        let (task, attempted) = match done {
            Ok((task, attempted)) => (task, attempted),
            Err(e) => (
                e.id(),
                Attempted::failed(format!("the attempt failed: {e}")),
            ),
        };
        let Some(account) = self.attempts.remove(&task) else {
            return;
        };
        let Some(backlog) = self.accounts.get_mut(&account) else {
            return;
        };
        backlog.busy = false;
        for (id, done) in attempted.done {
            let kind = backlog.events.remove(&id).map_or("", |q| q.kind.as_str());
            match done {
                Done::Delivered(status) => tracing::info!(
                    account,
                    id,
                    event = kind,
                    status = status.as_u16(),
                    "webhook delivered"
                ),
                Done::Dropped(why) => tracing::info!(
                    account,
                    id,
                    event = kind,
                    reason = why,
                    "webhook event dropped"
                ),
            }
        }
        let Some(reason) = attempted.failed else {
            backlog.failures = 0;
            backlog.due = Instant::now();
            return;
        };
        backlog.failures = backlog.failures.saturating_add(1);
        let delay = backoff(self.hooks.retry_initial, backlog.failures);
        backlog.due = Instant::now() + delay;
        let first = backlog.events.keys().next().cloned().unwrap_or_default();
        tracing::warn!(account, id = first, failures = backlog.failures, retry_in = ?delay, reason = %reason, "webhook delivery failed");
        let now_ms = crate::envelope::now_ms();
        let old: Vec<String> = backlog
            .events
            .values()
            .filter(|q| expired(q.time_ms, now_ms))
            .map(|q| q.id.clone())
            .collect();
        for id in old {
            backlog.events.remove(&id);
            tracing::warn!(account, id, after = ?GIVE_UP_AFTER, "webhook event given up; moved to failed/");
            let dir = self.hooks.dir.clone();
            tokio::task::spawn_blocking(move || set_aside(&dir, &id));
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
