//! The relay's background task for the lists: follows changes other processes make, and
//! compacts the journal when it has grown.
//!
//! Every `interval` it refreshes the view (a new snapshot file is verified and swapped in; a
//! refused one — damaged, or missing, empty or older once the directory had one — is logged
//! once, counted, flagged in `optin_lists_snapshot_refused`, and the snapshot in service
//! stays while the journal is still followed), updates the lists metrics, and once
//! `compact_after` addresses changed since the snapshot, folds the journal into a new one
//! (not while the snapshot file is refused: that compile would fail at every tick; not in
//! a cluster that shares its snapshots, see [`super::published`]). The
//! file work runs on the blocking pool; lookups never wait.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Lists;

pub fn spawn(
    lists: Arc<Lists>,
    interval: Duration,
    compact_after: usize,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let l = lists.clone();
            let outcome = tokio::task::spawn_blocking(move || {
                let refreshed = l.refresh();
                let stats = l.stats();
                let refused = l.snapshot_problem().is_some();
                // In a cluster with a shared snapshot directory one node compacts for all
                // (consent::published) while Redis answers.
                let compacted = (compact_after > 0
                    && stats.delta_entries >= compact_after
                    && !refused
                    && !l.compaction_shared())
                .then(|| l.compile(Vec::new()));
                crate::metrics::lists_snapshot_refused(l.snapshot_problem().is_some());
                (refreshed, compacted, l.stats())
            })
            .await;
            let Ok((refreshed, compacted, stats)) = outcome else {
                tracing::error!("the lists refresh task panicked");
                continue;
            };
            match refreshed {
                Ok(true) => tracing::info!(
                    entries = stats.snapshot_entries,
                    journal_changes = stats.delta_entries,
                    "new lists snapshot in service"
                ),
                Ok(false) => {}
                Err(e) => {
                    crate::metrics::lists_error();
                    tracing::error!(error = %e, "lists snapshot refused; the one in service stays");
                }
            }
            match compacted {
                Some(Ok(report)) => {
                    crate::metrics::lists_compacted();
                    tracing::info!(
                        entries = report.entries,
                        journal_changes = report.journal_changes,
                        elapsed = ?report.elapsed,
                        "lists journal compacted"
                    );
                }
                Some(Err(e)) => {
                    crate::metrics::lists_error();
                    tracing::error!(error = %e, "lists compaction failed");
                }
                None => {}
            }
            stats.publish();
        }
    })
}
