//! The hybrid logical clock that orders consent and suppression changes across the nodes
//! of a cluster: a stamp is the wall clock in ms (44 bits), a counter (12 bits) that
//! keeps stamps of one millisecond apart and ahead of every stamp this node has seen, and
//! the node's own byte (8 bits), so two nodes never make the same stamp and stamps compare
//! as plain integers: (time, counter, node). A node that sees a later stamp from another
//! moves its clock past it, so a change made after seeing another is stamped after it,
//! whatever the wall clocks say.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

const NODE_BITS: u32 = 8;
const COUNTER_BITS: u32 = 12;
const TIME_SHIFT: u32 = NODE_BITS + COUNTER_BITS;

#[derive(Debug, Default)]
pub struct Hlc {
    /// The last stamp made or seen, without its node byte.
    last: AtomicU64,
    node: AtomicU8,
}

impl Hlc {
    /// Sets this node's byte (a hash of its cluster id; 0 alone).
    pub fn set_node(&self, node: u8) {
        self.node.store(node, Ordering::Relaxed);
    }

    /// A new stamp, later than every stamp made or seen here.
    pub fn stamp(&self) -> u64 {
        self.stamp_at(crate::envelope::now_ms())
    }

    fn stamp_at(&self, now_ms: u64) -> u64 {
        let wall = now_ms << TIME_SHIFT;
        let step = 1 << NODE_BITS;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = wall.max(last + step);
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next | u64::from(self.node.load(Ordering::Relaxed)),
                Err(seen) => last = seen,
            }
        }
    }

    /// Another node's stamp was seen: later stamps made here come after it.
    pub fn observe(&self, stamp: u64) {
        self.last
            .fetch_max(stamp & !((1 << NODE_BITS) - 1), Ordering::Relaxed);
    }

    /// The earliest stamp of `ms` (for comparing stamps with a wall-clock time).
    pub fn floor_of(ms: u64) -> u64 {
        ms << TIME_SHIFT
    }
}

/// A node id's byte in its stamps.
pub fn node_byte(id: &str) -> u8 {
    let h = blake3::hash(id.as_bytes());
    // 0 is left to nodes alone.
    h.as_bytes()[0].max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_grow_and_pass_what_was_seen() {
        let c = Hlc::default();
        c.set_node(7);
        let a = c.stamp_at(1000);
        let b = c.stamp_at(1000);
        let d = c.stamp_at(999); // the wall clock went back
        assert!(a < b && b < d, "{a} {b} {d}");
        assert_eq!(a & 0xff, 7);
        // A stamp from a node whose clock is a minute ahead.
        let remote = Hlc::floor_of(61_000) | 3;
        c.observe(remote);
        let e = c.stamp_at(1001);
        assert!(e > remote, "{e} > {remote}");
        assert_eq!(Hlc::floor_of(1000) >> TIME_SHIFT, 1000);
    }

    #[test]
    fn node_bytes_are_never_zero() {
        for id in ["a", "b", "relay-1.example", ""] {
            assert_ne!(node_byte(id), 0);
        }
    }
}
