//! A queued message that cannot be read back from the spool: what the scheduler does so it
//! is never retried forever.
//!
//! - **Damaged, envelope readable** (the content no longer verifies): the message is
//!   returned. Its waiting recipients fail with `5.3.0` and the usual DSN goes to the
//!   envelope sender, built from the envelope alone (the damaged content is not quoted),
//!   honouring NOTIFY, never for a null sender or a DSN. The spool has copied the record to
//!   `quarantine/`.
//! - **Damaged, no envelope** (the envelope does not verify either, or the segment is gone):
//!   nobody can be told. The waiting recipients are dropped (journaled as failed), with one
//!   ERROR naming the message; the record is in `quarantine/` for the operator.
//! - **An I/O error** (the disk is failing, not the data): the message waits `retry_max`
//!   and is read again, until it is older than `max_age`; then it is dropped as above.
//!
//! Each case is logged once per message and counted in
//! `optin_spool_unreadable_messages_total{outcome}`. Nothing here reads the spool: the
//! scheduler hands over the result of a read that failed (the worker's, before sending, or
//! its own for an operator's action).

use std::cmp::Reverse;
use std::sync::Arc;

use super::Scheduler;
use super::outcome::{Attempt, LocalRefusal};
use super::queue::{Hot, Notices, Progress, Residence};
use super::route::JobReport;
use crate::envelope::QueueId;
use crate::spool::{RcptEvent, SpoolError};

impl Scheduler {
    /// Reading message `id` back from the spool failed with `error`.
    pub(super) fn unreadable(&mut self, id: QueueId, error: SpoolError) {
        let now = self.clock.now_ms();
        let max_age = self.settings.config.max_age.as_millis() as u64;
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        let id_text = id.to_string();
        let too_old = now.saturating_sub(u64::from(entry.received_s) * 1000) >= max_age;
        match error {
            SpoolError::Damaged {
                envelope: Some(env),
                ref reason,
                ..
            } => {
                tracing::error!(id = %id_text, %reason, "queued message damaged in the spool; returned to its sender (the record is in quarantine/)");
                crate::metrics::spool_unreadable("returned");
                let env = Arc::new(*env);
                entry.residence = Residence::Hot(Box::new(Hot {
                    env: env.clone(),
                    notices: Notices::default(),
                }));
                let waiting: Vec<u32> = entry
                    .rcpts
                    .iter_mut()
                    .enumerate()
                    .filter(|(_, r)| matches!(r.status(), Progress::Waiting { .. }))
                    .map(|(i, r)| {
                        r.set(Progress::InFlight);
                        i as u32
                    })
                    .collect();
                let results = waiting
                    .into_iter()
                    .map(|i| (i, Attempt::Refused(LocalRefusal::DamagedInSpool)))
                    .collect();
                self.complete(JobReport {
                    id,
                    env: Some(env),
                    unreadable: None,
                    results,
                    remote: None,
                    next_hop_dsn: false,
                    site: "-".into(),
                });
            }
            error if error.is_damage() || too_old => {
                tracing::error!(id = %id_text, %error, "queued message cannot be read back from the spool and has no envelope to return it with; its recipients are dropped (see quarantine/)");
                crate::metrics::spool_unreadable("dropped");
                let loc = entry.loc;
                let mut dropped = 0;
                for (i, r) in entry.rcpts.iter_mut().enumerate() {
                    if matches!(r.status(), Progress::Waiting { .. }) {
                        r.set(Progress::Done);
                        self.spool.record(loc, i as u32, RcptEvent::Failed);
                        dropped += 1;
                    }
                }
                self.open_rcpts -= dropped;
                if entry.rcpts.iter().all(|r| r.status() == Progress::Done) {
                    self.entries.remove(&id);
                    self.spool.finish(loc);
                } else if !entry.in_flight() {
                    entry.residence = Residence::Cold;
                }
            }
            error => {
                // The disk's doing, not the data's: wait and read again.
                tracing::error!(id = %id_text, %error, "cannot read a queued message back from the spool; retrying later");
                if !entry.in_flight() {
                    entry.residence = Residence::Cold;
                }
                let due = now + self.settings.config.retry_max.as_millis() as u64;
                for r in entry.rcpts.iter_mut() {
                    if matches!(r.status(), Progress::Waiting { .. }) {
                        r.set(Progress::Waiting { due });
                    }
                }
                self.timers.push(Reverse((due, id)));
            }
        }
    }
}
