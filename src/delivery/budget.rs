//! How much message content delivery holds in memory at once.
//!
//! A message's content is read from the spool when a worker is about to send it (a
//! connection ready), not when the message becomes due, so a backlog of a million messages
//! coming due at once costs its queue state, not its content. Each read takes a share of
//! this budget first — the record's length plus room for its rewritten copies and the
//! dot-stuffed copy on its way to the socket — and gives it back when the attempt is over;
//! a worker waits for room when the budget is spent.
//! Content handed over by a session (a fresh message, already in memory) is kept for its
//! first attempt only while at least half the budget stays free for the workers' reads, so
//! mail queued behind a slow destination can never starve the others of room.
//!
//! This module only counts; it never reads, sends or drops anything.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Per-recipient rewrites (unsubscribe links, footer) are made for a few recipients at a
/// time: their copies together stay within this (or one copy when larger).
pub const REWRITE_BATCH_BYTES: u64 = 1 << 20;

/// What a rewritten copy may add to the content (headers, footer, signatures), for the
/// budget's estimate.
const REWRITE_GROWTH: u64 = 8 << 10;

/// Counted in KiB, so that budgets of many GiB fit a semaphore's `u32` acquisitions.
const UNIT: u64 = 1024;

#[derive(Clone)]
pub(super) struct ContentBudget {
    permits: Arc<Semaphore>,
    /// The whole budget, in units.
    total: u32,
}

/// A share of the budget; given back when dropped.
#[derive(Debug)]
pub(super) struct Share {
    _permit: OwnedSemaphorePermit,
}

impl ContentBudget {
    pub fn new(bytes: u64) -> ContentBudget {
        let total = (bytes / UNIT).clamp(1, u64::from(u32::MAX >> 3)) as u32;
        ContentBudget {
            permits: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// The units a record of `len` octets costs with rewritten copies for `rcpts`
    /// recipients (made [`batch`] at a time) and the copy being sent; never more than the
    /// whole budget, so a message larger than it still goes, alone.
    fn units(&self, len: u64, rcpts: usize) -> u32 {
        let copies = (batch(len, rcpts) as u64 + 1) * (len + REWRITE_GROWTH);
        (len + copies)
            .div_ceil(UNIT)
            .clamp(1, u64::from(self.total)) as u32
    }

    /// Waits until the content of a record of `len` octets (sent to `rcpts` recipients)
    /// fits, and takes its share.
    pub async fn take(&self, len: u64, rcpts: usize) -> Share {
        let permit = self
            .permits
            .clone()
            .acquire_many_owned(self.units(len, rcpts))
            .await
            .expect("the budget's semaphore is never closed");
        Share { _permit: permit }
    }

    /// A share for content already in memory, only while at least half the budget would
    /// stay free (see the module doc); `None`: drop the copy, the worker reads it later.
    pub fn take_spare(&self, len: u64, rcpts: usize) -> Option<Share> {
        let units = self.units(len, rcpts);
        let free = self.permits.available_permits() as u64;
        if free.saturating_sub(u64::from(units)) < u64::from(self.total / 2) {
            return None;
        }
        let permit = self.permits.clone().try_acquire_many_owned(units).ok()?;
        Some(Share { _permit: permit })
    }

    /// Units free now (tests).
    #[cfg(test)]
    fn free(&self) -> usize {
        self.permits.available_permits()
    }
}

/// How many recipients' rewritten copies of a `len`-octet message are made at once: their
/// copies within [`REWRITE_BATCH_BYTES`], at least one.
pub(super) fn batch(len: u64, rcpts: usize) -> usize {
    let each = len + REWRITE_GROWTH;
    ((REWRITE_BATCH_BYTES / each).max(1) as usize).min(rcpts.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shares_wait_for_room_and_come_back() {
        let budget = ContentBudget::new(1 << 20); // 1024 units
        let a = budget.take(200 << 10, 1).await; // 200 KiB + two 208 KiB copies
        assert_eq!(budget.free(), 1024 - 616);
        let b = budget.take(100 << 10, 1).await;
        assert_eq!(budget.free(), 1024 - 616 - 316);
        // the next one does not fit: it waits until a share comes back
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.take(50 << 10, 1).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(a);
        let c = waiting.await.unwrap();
        drop((b, c));
        assert_eq!(budget.free(), 1024);
    }

    #[tokio::test]
    async fn a_message_larger_than_the_budget_goes_alone() {
        let budget = ContentBudget::new(1 << 20);
        let big = budget.take(5 << 20, 1).await;
        assert_eq!(budget.free(), 0);
        drop(big);
        assert_eq!(budget.free(), 1024);
    }

    #[test]
    fn kept_copies_leave_half_the_budget_to_the_workers() {
        let budget = ContentBudget::new(1 << 20);
        let mut kept = Vec::new();
        while let Some(s) = budget.take_spare(10 << 10, 1) {
            kept.push(s);
        }
        // each costs 46 units: 11 fit before less than half would stay free
        assert_eq!(kept.len(), 11);
        assert!(budget.free() >= 512);
    }

    #[test]
    fn rewrites_are_batched_within_a_mebibyte() {
        assert_eq!(batch(2 << 10, 1000), 102);
        assert_eq!(batch(2 << 10, 5), 5);
        assert_eq!(batch(100 << 10, 1000), 9);
        assert_eq!(batch(5 << 20, 1000), 1);
        assert_eq!(batch(5 << 20, 0), 1);
    }
}
