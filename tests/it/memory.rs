//! What the relay holds in memory, measured with the binary's counting allocator (the live
//! heap and its peak); each test measures the whole process, so each runs alone in a
//! process of its own ([`crate::alone!`]).
//!
//! A backlog coming due at once (the next hop is back after an outage) must not bring every
//! queued message's content into memory: content is read when a worker is about to send
//! it, within `[delivery] max_content_in_flight`. And nothing may pile up per message
//! while nobody scrapes `/metrics` (histogram samples did).

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use crate::support::eventually;
use crate::support::memory::{self, Sink};
use bytes::Bytes;
use optin_relay::config::{Config, SpoolConfig};
use optin_relay::delivery::{self, Settings};
use optin_relay::privacy::AddressTagger;
use optin_relay::spool::{RcptEvent, Spool};

const MESSAGES: usize = 160;
const SIZE: usize = 128 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_coming_due_holds_only_the_budget_in_memory() {
    crate::alone!("a_backlog_coming_due_holds_only_the_budget_in_memory");
    let dir = tempfile::tempdir().unwrap();
    let spool_config = SpoolConfig {
        path: dir.path().to_path_buf(),
        fsync: false,
        segment_size: 64 << 20,
    };
    let body = Bytes::from(format!(
        "Subject: backlog\r\n\r\n{}",
        "x".repeat(76).repeat(SIZE / 78) + "\r\n"
    ));
    // 20 MiB of content, every recipient deferred until shortly after delivery starts
    let due = optin_relay::envelope::now_ms() + 1500;
    {
        let (spool, _) = Spool::open(&spool_config).unwrap();
        for m in 0..MESSAGES {
            let env = support::envelope::transactional(
                spool.next_id(),
                "shop",
                Some("s@shop.example"),
                [format!("r{m}@d{}.example", m % 4)],
            );
            let loc = spool.store(&env, body.clone()).await.unwrap();
            spool.record(
                loc,
                0,
                RcptEvent::Deferred {
                    attempts: 1,
                    next_attempt: due,
                    delay_notified: false,
                },
            );
        }
        spool.flush().await.unwrap();
    }
    drop(body);
    let (spool, report) = Spool::open(&spool_config).unwrap();
    assert_eq!(report.messages.len(), MESSAGES);
    let config = Config::from_toml(
        "test",
        "[smtp]\nhostname = \"relay.test\"\n[delivery]\nmax_content_in_flight = \"1MiB\"\n\
         max_connections_per_destination = 4\n",
    )
    .unwrap();
    let sink = Arc::new(Sink::new());
    let stop = tokio_util::sync::CancellationToken::new();
    memory::reset_heap_peak();
    let base = memory::held();
    let (_delivery, handle) = delivery::start(
        Settings::new(&config.delivery, &config.smtp.hostname),
        spool,
        sink.clone(),
        AddressTagger::new([0; 32]),
        report.messages,
        stop.clone(),
    );
    let what = format!("all {MESSAGES} delivered");
    eventually(Duration::from_secs(60), &what, async || {
        sink.count() >= MESSAGES
    })
    .await;
    let peak = memory::heap_peak().saturating_sub(base);
    stop.cancel();
    handle.await.unwrap();
    println!(
        "live heap peak while draining: {:.2} MiB",
        peak as f64 / (1 << 20) as f64
    );
    // The budget (1 MiB: two 128 KiB messages with their copies at a time), the 16
    // connections' pipes and buffers, the queue: a few MiB. Reading the backlog when it
    // came due held all 20 MiB of it.
    assert!(
        peak < 8 << 20,
        "the live heap grew {:.1} MiB while the backlog drained",
        peak as f64 / (1 << 20) as f64
    );
}

/// Histogram samples (one per spool commit, per throttled message…) are kept by the
/// Prometheus recorder until they are folded into their buckets; a relay nobody scrapes
/// must still fold them, or it grows with every message for ever.
#[tokio::test]
async fn histogram_samples_do_not_pile_up_when_nobody_scrapes() {
    crate::alone!("histogram_samples_do_not_pile_up_when_nobody_scrapes");
    optin_relay::metrics::install();
    let base = memory::held();
    for _ in 0..1_000_000 {
        optin_relay::metrics::throttle_wait(Duration::from_millis(3));
    }
    let what = "a million samples holding less than 1 MiB";
    eventually(Duration::from_secs(10), what, async || {
        // A running relay goes on recording; that also lets the recorder's lock-free
        // buckets free the blocks they retired (crossbeam's epochs move on).
        optin_relay::metrics::throttle_wait(Duration::from_millis(3));
        memory::held().saturating_sub(base) < 1 << 20
    })
    .await;
}
