//! What the scheduler does with a worker's report: classify each recipient's attempt,
//! journal it, schedule the retry or give up, count it (per account, per site, account
//! health, a campaign's canary), and send the DSNs of the round ([`Followup`]), with the
//! helpers for hard-bounce suppressions and backoff.

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::outcome::{self, Attempt, Disposition, classify};
use super::queue::{Hot, NO_CAMPAIGN, Notice, Notices, Progress, Residence};
use super::route::JobReport;
use super::{Event, Queued, Scheduler, Settings};
use crate::dsn;
use crate::envelope::{Envelope, QueueId, RecipientOutcome, Settled};
use crate::privacy::AddressTagger;
use crate::smtp::reply::Status;
use crate::smtp::text::Escaped;
use crate::spool::{Location, RcptEvent, Spool};

/// What the recipients of one worker's report share while they are settled.
struct Round<'a> {
    report: &'a JobReport,
    env: &'a Envelope,
    loc: Location,
    now: u64,
    /// Since the message was accepted.
    age: Duration,
    /// Past `max_age`: a deferral now gives up.
    expired: bool,
    /// The campaign (its key) whose canary counts the recipients not held back.
    canary: Option<String>,
    id_text: String,
}

impl Round<'_> {
    fn remote(&self) -> &str {
        self.report.remote.as_deref().unwrap_or("-")
    }

    /// A line for the round's DSN about recipient `i`.
    fn notice(&self, i: usize, status: Status, diagnostic: String) -> Notice {
        Notice {
            rcpt: i,
            status,
            diagnostic: Some(diagnostic),
            remote: self.report.remote.clone(),
        }
    }

    /// `text` with the recipient's address replaced by its tag, escaped for a log line.
    fn scrubbed(&self, tagger: &AddressTagger, text: &str, i: usize) -> String {
        Escaped(&tagger.scrub(text, &self.env.recipients[i].address)).to_string()
    }
}

impl Scheduler {
    /// Applies a worker's report.
    pub(super) fn complete(&mut self, report: JobReport) {
        let now = self.clock.now_ms();
        let Some(entry) = self.entries.get_mut(&report.id) else {
            return;
        };
        if let Some(error) = report.unreadable {
            // Nothing was tried: the recipients wait again, and the failed read decides.
            for (i, _) in &report.results {
                entry.rcpts[*i as usize].set(Progress::Waiting { due: now });
            }
            self.unreadable(report.id, error);
            self.settle(report.id, now);
            return;
        }
        let Some(env) = report.env.clone().or_else(|| entry.env().cloned()) else {
            return; // every report but an unreadable one carries the envelope
        };
        if !matches!(entry.residence, Residence::Hot(_)) {
            // Results are collected (DSN lines) until no recipient is in flight.
            entry.residence = Residence::Hot(Box::new(Hot {
                env: env.clone(),
                notices: Notices::default(),
            }));
        }
        let age = Duration::from_millis(now.saturating_sub(env.received_at));
        let round = Round {
            report: &report,
            env: &env,
            loc: entry.loc,
            now,
            age,
            expired: age >= self.settings.config.max_age,
            // Held recipients are not the canary's; once released, outcomes no longer
            // count (see `Campaigns::outcome`).
            canary: (entry.campaign != NO_CAMPAIGN && self.settings.feedback.campaigns.is_some())
                .then(|| self.names.name(entry.campaign).to_string()),
            id_text: report.id.to_string(),
        };
        let mut next_due = None;
        for (i, attempt) in &report.results {
            if let Some(due) = self.settle_recipient(&round, *i as usize, attempt) {
                next_due = Some(next_due.map_or(due, |d: u64| d.min(due)));
            }
        }
        if let Some(due) = next_due {
            self.timers.push(Reverse((due, report.id)));
        }
        self.settle(report.id, now);
    }

    /// Settles one recipient's attempt: gives up on an expired deferral, tells every
    /// [`crate::envelope::OutcomeSink`], then journals it and schedules its retry or its
    /// DSN. Returns when it is due again, if it was deferred.
    fn settle_recipient(&mut self, round: &Round<'_>, i: usize, attempt: &Attempt) -> Option<u64> {
        let r = &mut self.entries.get_mut(&round.report.id)?.rcpts[i];
        r.attempts = r.attempts.saturating_add(1);
        let (attempts, held) = (r.attempts, r.held);
        let disposition = match classify(attempt) {
            Disposition::Deferred { reason } if round.expired => {
                tracing::warn!(id = %round.id_text, rcpt = %self.tagger.tag(&round.env.recipients[i].address), attempts, reason = %round.scrubbed(&self.tagger, &reason, i), "expired: giving up");
                crate::metrics::recipient_outcome("expired");
                self.site_labels.outcome(&round.report.site, "expired");
                Disposition::Bounced {
                    status: Status::new(4, 4, 7),
                    diagnostic: format!(
                        "x-optin-relay; delivery time expired after {attempts} attempts; last error: {reason}"
                    ),
                }
            }
            d => d,
        };
        let verdict = match &disposition {
            Disposition::Bounced { .. } => Some(self.verdict(round, i, attempt)),
            _ => None,
        };
        // Suppressed at once: a permanent refusal of the address itself (an expired
        // deferral, 4.4.7, never is).
        let hard = match (&disposition, &verdict) {
            (Disposition::Bounced { status, .. }, Some(v)) => v.category.dead(status.class == 5),
            _ => false,
        };
        let reply = match disposition {
            Disposition::Delivered => reply_text(attempt),
            _ => String::new(),
        };
        let settled = match &disposition {
            Disposition::Delivered => Settled::Delivered { reply: &reply },
            Disposition::Deferred { reason } => Settled::Deferred { reason },
            Disposition::Bounced { status, diagnostic } => {
                let v = verdict.as_ref().expect("a bounce has its verdict");
                Settled::Bounced {
                    status: *status,
                    diagnostic,
                    hard,
                    category: v.category,
                    rule: &v.rule,
                }
            }
        };
        let outcome = RecipientOutcome {
            id: round.report.id,
            envelope: round.env,
            rcpt: i,
            settled,
            site: &round.report.site,
            remote: round.remote(),
            attempts,
            delay_ms: round.age.as_millis() as u64,
            canary: round.canary.as_deref().filter(|_| !held),
        };
        for sink in &self.outcomes {
            sink.settled(&outcome);
        }
        match disposition {
            Disposition::Delivered => {
                self.delivered(round, i, &reply);
                None
            }
            Disposition::Deferred { reason } => Some(self.deferred(round, i, &reason)),
            Disposition::Bounced { status, diagnostic } => {
                let category = verdict.map_or(crate::bounce::Category::Other, |v| v.category);
                self.bounced(round, i, status, diagnostic, category);
                None
            }
        }
    }

    /// The bounce category of recipient `i`'s failed attempt, by the policy's rules.
    fn verdict(&self, round: &Round<'_>, i: usize, attempt: &Attempt) -> crate::bounce::Verdict {
        let domain = super::routing_domain(&round.env.recipients[i].address);
        match &self.settings.policy {
            Some(policy) => {
                outcome::bounce_verdict(attempt, policy.load().bounce_classifier(), &domain)
            }
            None => outcome::bounce_verdict(attempt, &Default::default(), &domain),
        }
    }

    fn delivered(&mut self, round: &Round<'_>, i: usize, reply: &str) {
        let entry = self.entries.get_mut(&round.report.id).expect("settling");
        let r = &mut entry.rcpts[i];
        r.set(Progress::Done);
        self.open_rcpts -= 1;
        self.spool.record(round.loc, i as u32, RcptEvent::Delivered);
        crate::metrics::recipient_outcome("delivered");
        self.site_labels.outcome(&round.report.site, "delivered");
        tracing::info!(id = %round.id_text, rcpt = %self.tagger.tag(&round.env.recipients[i].address), remote = %round.remote(), attempts = r.attempts, reply = %round.scrubbed(&self.tagger, reply, i), "delivered");
        if !round.report.next_hop_dsn && dsn::wanted(&round.env.recipients[i], dsn::Action::Relayed)
        {
            let notice = round.notice(i, Status::new(2, 0, 0), format!("smtp; {reply}"));
            entry.residence.notices().relayed.push(notice);
        }
    }

    /// Schedules the retry (and a delay warning once it is due); returns when.
    fn deferred(&mut self, round: &Round<'_>, i: usize, reason: &str) -> u64 {
        let entry = self.entries.get_mut(&round.report.id).expect("settling");
        let r = &mut entry.rcpts[i];
        let delay = backoff(&self.settings, r.attempts);
        let due = round.now + delay.as_millis() as u64;
        r.set(Progress::Waiting { due });
        let warn = !r.delay_notified
            && round.age >= self.settings.config.delay_warning
            && dsn::wanted(&round.env.recipients[i], dsn::Action::Delayed);
        if warn {
            r.delay_notified = true;
            let notice = round.notice(i, Status::new(4, 0, 0), format!("x-optin-relay; {reason}"));
            entry.residence.notices().delayed.push(notice);
        }
        self.spool.record(
            round.loc,
            i as u32,
            RcptEvent::Deferred {
                attempts: r.attempts,
                next_attempt: due,
                delay_notified: r.delay_notified,
            },
        );
        crate::metrics::recipient_outcome("deferred");
        self.site_labels.outcome(&round.report.site, "deferred");
        tracing::info!(id = %round.id_text, rcpt = %self.tagger.tag(&round.env.recipients[i].address), remote = %round.remote(), attempts = r.attempts, retry_in = %humantime::format_duration(Duration::from_secs(delay.as_secs())), reason = %round.scrubbed(&self.tagger, reason, i), "deferred");
        due
    }

    /// Gives up on a recipient: a DSN goes to the sender when one is wanted, and the
    /// recipient is journaled failed once it is stored. (What the bounce's category does
    /// to the address is `crate::governance::bounces`'s, told as an outcome.)
    fn bounced(
        &mut self,
        round: &Round<'_>,
        i: usize,
        status: Status,
        diagnostic: String,
        category: crate::bounce::Category,
    ) {
        let env = round.env;
        let entry = self.entries.get_mut(&round.report.id).expect("settling");
        entry.rcpts[i].set(Progress::Done);
        self.open_rcpts -= 1;
        if status.class == 5 {
            crate::metrics::recipient_outcome("bounced");
            self.site_labels.outcome(&round.report.site, "bounced");
        }
        tracing::info!(id = %round.id_text, rcpt = %self.tagger.tag(&env.recipients[i].address), remote = %round.remote(), status = %status, diagnostic = %round.scrubbed(&self.tagger, &diagnostic, i), category = category.as_str(), "bounced");
        if dsn::wanted(&env.recipients[i], dsn::Action::Failed)
            && env.sender.is_some()
            && !env.generated_dsn
        {
            // Journaled as failed only once its DSN is safely stored.
            let notice = round.notice(i, status, diagnostic);
            entry.residence.notices().failed.push(notice);
        } else {
            self.spool.record(round.loc, i as u32, RcptEvent::Failed);
        }
    }

    /// Once no recipient of the message is in flight: the round's DSNs go out, and the
    /// message leaves the queue (finished) or keeps its state only until its next retry.
    fn settle(&mut self, id: QueueId, now: u64) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        if entry.in_flight() {
            return; // the rest of this round is still out; notices wait for it
        }
        let loc = entry.loc;
        let acted_on = self.actions.contains_key(&id);
        let finished = entry.rcpts.iter().all(|r| r.status() == Progress::Done);
        let (env, notices) = match entry.hot() {
            Some(h) => (Some(h.env.clone()), std::mem::take(&mut h.notices)),
            None => (None, Notices::default()),
        };
        if finished {
            self.entries.remove(&id);
        } else if !acted_on {
            // Every open recipient now waits for a later retry: keep the state only.
            entry.residence = Residence::Cold;
        }
        if let Some(env) = env.filter(|_| !notices.is_empty()) {
            // A DSN obeys the account's rules like its own mail (dsn::may_notify).
            let notify = match &self.settings.policy {
                Some(policy) => {
                    dsn::may_notify(&policy.load(), self.settings.lists.as_deref(), &env)
                }
                None => Ok(()),
            };
            let followup = Followup {
                env,
                loc,
                now,
                notices,
                finished,
                notify,
            };
            let (spool, tx, hostname) = (
                self.spool.clone(),
                self.tx.clone(),
                self.settings.hostname.clone(),
            );
            tokio::spawn(followup.run(spool, tx, hostname));
        } else if finished {
            self.spool.finish(loc);
        }
        if acted_on && !finished {
            // The operator's action waited for this attempt; it applies now.
            self.dispatch(id);
        }
    }
}

/// DSNs for one round of a message, sent in the background (storing them waits for an
/// fsync). Failed recipients are journaled after their DSN is stored, and the message is
/// finished after that, so a crash in between retries the recipient rather than losing the
/// bounce.
struct Followup {
    env: Arc<Envelope>,
    loc: Location,
    now: u64,
    notices: Notices,
    finished: bool,
    /// Whether the envelope sender may get a DSN at all.
    notify: Result<(), dsn::NoNotice>,
}

impl Followup {
    async fn run(self, spool: Spool, tx: mpsc::UnboundedSender<Event>, hostname: String) {
        if let Err(why) = &self.notify {
            tracing::info!(
                about = %self.env.id,
                account = %self.env.account,
                why = %why,
                "no DSN sent"
            );
            self.finish_round(&spool);
            return;
        }
        let content = match spool.read(self.loc).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "original content unavailable for the DSN; returning none");
                Bytes::new()
            }
        };
        for (action, notices) in [
            (dsn::Action::Failed, &self.notices.failed),
            (dsn::Action::Delayed, &self.notices.delayed),
            (dsn::Action::Relayed, &self.notices.relayed),
        ] {
            if !notices.is_empty() {
                self.send(&spool, &tx, &hostname, &content, action, notices)
                    .await;
            }
        }
        self.finish_round(&spool);
    }

    /// Journals the failed recipients (after their DSN, if any, is stored) and finishes
    /// the message when nothing is left of it.
    fn finish_round(&self, spool: &Spool) {
        for n in &self.notices.failed {
            spool.record(self.loc, n.rcpt as u32, RcptEvent::Failed);
        }
        if self.finished {
            spool.finish(self.loc);
        }
    }

    async fn send(
        &self,
        spool: &Spool,
        tx: &mpsc::UnboundedSender<Event>,
        hostname: &str,
        content: &[u8],
        action: dsn::Action,
        notices: &[Notice],
    ) {
        let reports: Vec<dsn::Report<'_>> = notices
            .iter()
            .map(|n| dsn::Report {
                recipient: &self.env.recipients[n.rcpt],
                action,
                status: n.status,
                diagnostic: n.diagnostic.clone(),
                remote_mta: n.remote.clone(),
                last_attempt: Some(self.now / 1000),
            })
            .collect();
        let Some((mut dsn_env, message)) = dsn::build(
            hostname,
            &self.env,
            content,
            &reports,
            dsn::Returned::AsAsked,
        ) else {
            return;
        };
        dsn_env.id = spool.next_id();
        dsn_env.received_at = self.now;
        let body = Bytes::from(message);
        match spool.store(&dsn_env, body.clone()).await {
            Ok(dsn_loc) => {
                crate::metrics::dsn_generated(action.metric_label());
                tracing::info!(
                    id = %dsn_env.id,
                    about = %self.env.id,
                    action = action.metric_label(),
                    "DSN queued"
                );
                let n = dsn_env.recipients.len();
                let _ = tx.send(Event::New(Box::new(Queued {
                    env: Arc::new(dsn_env),
                    loc: dsn_loc,
                    body: Some(body),
                    events: vec![None; n],
                })));
            }
            Err(e) => {
                tracing::error!(error = %e, about = %self.env.id, "could not store a DSN")
            }
        }
    }
}

/// Exponential backoff from `retry_initial`, capped at `retry_max`, with ±20 % jitter so that
/// a burst of failures does not come back as a burst.
fn backoff(settings: &Settings, attempts: u16) -> Duration {
    let doublings = u32::from(attempts.saturating_sub(1)).min(20);
    let base = settings
        .config
        .retry_initial
        .saturating_mul(1u32 << doublings)
        .min(settings.config.retry_max);
    base.mul_f64(rand::random_range(0.8..1.2))
}

fn reply_text(attempt: &Attempt) -> String {
    match attempt {
        Attempt::Replied { reply, .. } => reply.one_line(),
        other => format!("{other:?}"),
    }
}
