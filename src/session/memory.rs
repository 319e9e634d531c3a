//! A relay-wide cap on the message content held in memory while it is received.
//!
//! Every connection may send up to its size limit, so without a cap the content of
//! unfinished DATA and BDAT transactions could reach `max_connections × max_message_size`
//! (25 GiB with the defaults) — a stranger opening connections and trickling content would
//! need no password to get there. Each transaction reserves the buffer it receives into
//! from one [`DataMemory`] *before* the buffer grows (`[smtp] max_data_memory`); clients no
//! account knows (mail to the relay's own addresses) share an eighth of it. A transaction
//! that finds the budget spent keeps reading to the end of its content, holding none of
//! it, and is answered `452 4.3.1` (try later); what it had reserved goes back at once.
//! Reservations are returned when the transaction's content has been stored or refused.
//! After a burst (a peak of at least [`BURST`] that has fallen to a quarter) the server
//! hands what it freed back to the system ([`DataMemory::burst_over`], `crate::trim`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Reservations grow by at least this much, so a transaction does not reserve per packet.
const STEP: u64 = 64 * 1024;

/// A peak of reservations this large, once it has fallen to a quarter, is worth giving
/// back to the system.
pub const BURST: u64 = 32 * 1024 * 1024;

/// What the content buffers of all transactions may hold at once.
#[derive(Debug)]
pub struct DataMemory {
    max: u64,
    stranger_max: u64,
    used: AtomicU64,
    stranger_used: AtomicU64,
    /// The most reserved at once since [`DataMemory::burst_over`] last said yes.
    peak: AtomicU64,
}

impl DataMemory {
    /// `max` octets for everyone; clients no account knows share `max / 8`.
    pub fn new(max: u64) -> Arc<DataMemory> {
        Arc::new(DataMemory {
            max,
            stranger_max: max / 8,
            used: AtomicU64::new(0),
            stranger_used: AtomicU64::new(0),
            peak: AtomicU64::new(0),
        })
    }

    /// `true` once per burst: when the reservations have reached [`BURST`] and fallen to a
    /// quarter of their peak since the last `true`. The caller then gives the freed memory
    /// back to the system.
    pub fn burst_over(&self) -> bool {
        let used = self.used();
        let peak = self.peak.load(Ordering::Relaxed);
        if peak >= BURST && used <= peak / 4 {
            self.peak.store(used, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// Octets reserved now (everyone's).
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Starts an empty reservation for a buffer that never holds more than `ceiling`
    /// octets (the transaction's size limit: the receivers store nothing past it);
    /// `stranger`: the transaction has no account.
    pub fn hold(self: &Arc<Self>, stranger: bool, ceiling: u64) -> Held {
        Held {
            pool: Arc::clone(self),
            stranger,
            ceiling,
            bytes: 0,
        }
    }

    fn take(counter: &AtomicU64, max: u64, bytes: u64) -> bool {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&n| n <= max)
            })
            .is_ok()
    }

    fn give(&self, stranger: bool, bytes: u64) {
        if bytes == 0 {
            return;
        }
        self.used.fetch_sub(bytes, Ordering::AcqRel);
        if stranger {
            self.stranger_used.fetch_sub(bytes, Ordering::AcqRel);
        }
    }
}

/// One transaction's share of [`DataMemory`]; returned when dropped.
#[derive(Debug)]
pub struct Held {
    pool: Arc<DataMemory>,
    stranger: bool,
    ceiling: u64,
    bytes: u64,
}

impl Held {
    /// Makes room in `buf` for `more` octets beyond its length, reserving what the buffer
    /// grows by first. `false`: the budget is spent; the buffer is emptied and freed and
    /// the whole reservation returned (the transaction then stores nothing more).
    pub fn make_room(&mut self, buf: &mut Vec<u8>, more: usize) -> bool {
        let need = (buf.len() as u64 + more as u64).min(self.ceiling);
        if need <= buf.capacity() as u64 && need <= self.bytes {
            return true;
        }
        // Grow geometrically like Vec would, but by the reservation, not after the fact.
        let grown = self.bytes.saturating_mul(2).max(STEP).min(self.ceiling);
        let want = need.max(grown);
        if self.grow_to(want) || self.grow_to(need) {
            buf.reserve_exact((self.bytes as usize).saturating_sub(buf.len()));
            true
        } else {
            *buf = Vec::new();
            self.release();
            false
        }
    }

    fn grow_to(&mut self, total: u64) -> bool {
        if total <= self.bytes {
            return true;
        }
        let extra = total - self.bytes;
        let pool = &*self.pool;
        if !DataMemory::take(&pool.used, pool.max, extra) {
            return false;
        }
        if self.stranger && !DataMemory::take(&pool.stranger_used, pool.stranger_max, extra) {
            pool.used.fetch_sub(extra, Ordering::AcqRel);
            return false;
        }
        self.bytes = total;
        pool.peak
            .fetch_max(pool.used.load(Ordering::Relaxed), Ordering::Relaxed);
        true
    }

    fn release(&mut self) {
        self.pool.give(self.stranger, self.bytes);
        self.bytes = 0;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_cover_the_buffer_before_it_grows_and_come_back() {
        let pool = DataMemory::new(1024 * 1024);
        let mut held = pool.hold(false, u64::MAX);
        let mut buf = Vec::new();
        for _ in 0..100 {
            assert!(held.make_room(&mut buf, 4000));
            let cap = buf.capacity();
            buf.extend_from_slice(&[b'x'; 4000]);
            assert_eq!(
                buf.capacity(),
                cap,
                "the buffer never grows past its reservation"
            );
            assert!(buf.capacity() as u64 <= pool.used());
        }
        assert!(pool.used() <= 1024 * 1024);
        drop(held);
        assert_eq!(pool.used(), 0);
    }

    #[test]
    fn a_spent_budget_empties_the_buffer_and_returns_everything() {
        let pool = DataMemory::new(256 * 1024);
        let mut first = pool.hold(false, u64::MAX);
        let mut a = Vec::new();
        assert!(first.make_room(&mut a, 200 * 1024));
        let mut second = pool.hold(false, u64::MAX);
        let mut b = Vec::new();
        assert!(second.make_room(&mut b, 10));
        b.extend_from_slice(b"0123456789");
        assert!(!second.make_room(&mut b, 100 * 1024), "over the budget");
        assert!(b.is_empty() && b.capacity() == 0);
        assert_eq!(pool.used(), first.bytes);
        drop(first);
        assert_eq!(pool.used(), 0);
        // Once the first is done, the same transaction size fits again.
        let mut third = pool.hold(false, u64::MAX);
        assert!(third.make_room(&mut b, 200 * 1024));
    }

    #[test]
    fn a_buffer_is_never_reserved_past_its_ceiling() {
        let pool = DataMemory::new(64 * 1024 * 1024);
        let mut held = pool.hold(true, 1_000_000);
        let mut buf = Vec::new();
        while buf.len() < 1_000_000 {
            assert!(held.make_room(&mut buf, 65536));
            let n = (1_000_000 - buf.len()).min(65536);
            buf.extend_from_slice(&vec![b'x'; n]);
        }
        assert!(
            held.make_room(&mut buf, 65536),
            "past the ceiling nothing is stored"
        );
        assert_eq!(pool.used(), 1_000_000);
    }

    #[test]
    fn strangers_share_an_eighth() {
        let pool = DataMemory::new(8 * 1024 * 1024);
        let mut stranger = pool.hold(true, u64::MAX);
        let mut buf = Vec::new();
        assert!(stranger.make_room(&mut buf, 1024 * 1024));
        let mut other = pool.hold(true, u64::MAX);
        let mut buf2 = Vec::new();
        assert!(
            !other.make_room(&mut buf2, 64 * 1024),
            "the strangers' eighth is spent"
        );
        // An account's transaction still has the rest.
        let mut account = pool.hold(false, u64::MAX);
        assert!(account.make_room(&mut buf2, 6 * 1024 * 1024));
        drop(stranger);
        assert!(other.make_room(&mut Vec::new(), 64 * 1024));
    }

    #[test]
    fn a_burst_is_over_once_it_falls_to_a_quarter_of_its_peak() {
        let pool = DataMemory::new(1024 * 1024 * 1024);
        let mut held: Vec<_> = (0..8).map(|_| pool.hold(false, u64::MAX)).collect();
        let mut bufs = vec![Vec::new(); 8];
        for (h, b) in held.iter_mut().zip(bufs.iter_mut()) {
            assert!(h.make_room(b, (BURST / 8) as usize));
        }
        assert!(!pool.burst_over(), "still at its peak");
        held.truncate(3);
        assert!(!pool.burst_over(), "3/8 of the peak is still held");
        held.truncate(2);
        assert!(pool.burst_over(), "down to a quarter");
        assert!(!pool.burst_over(), "once per burst");
        held.clear();
        assert!(
            !pool.burst_over(),
            "a quarter of the last peak is no new burst"
        );
        // Small transactions never make a burst.
        let mut small = pool.hold(false, u64::MAX);
        assert!(small.make_room(&mut Vec::new(), 1024 * 1024));
        drop(small);
        assert!(!pool.burst_over());
    }
}
