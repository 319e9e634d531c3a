//! Delivery engine throughput without the network: MESSAGES one-recipient messages to
//! DOMAINS domains go through the real scheduler, route queues, workers and SMTP client
//! into an in-process server that accepts everything at once (in-memory pipes, no TLS, no
//! disk sync). What is left is the engine's own work per message: dispatch, a pooled
//! connection's transaction, the outcome, the spool journal.
//!
//!     cargo bench --bench scheduler -- [MESSAGES] [DOMAINS]     (default 50000 1000)

#[path = "../tests/it/support/envelope.rs"]
mod envelope;
#[path = "../tests/it/support/memory.rs"]
mod memory;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use optin_relay::config::{Config, SpoolConfig};
use optin_relay::delivery::Intake;
use optin_relay::delivery::{self, Settings};
use optin_relay::privacy::AddressTagger;
use optin_relay::spool::Spool;

#[tokio::main]
async fn main() {
    let numbers: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let messages = numbers.first().copied().unwrap_or(50_000);
    let domains = numbers.get(1).copied().unwrap_or(1000);
    let dir = tempfile::tempdir().expect("temp dir");
    let (spool, _) = Spool::open(&SpoolConfig {
        path: dir.path().to_path_buf(),
        fsync: false,
        segment_size: 64 << 20,
    })
    .expect("spool");
    let config = Config::from_toml(
        "bench",
        "[smtp]\nhostname = \"relay.bench\"\n[delivery]\nmax_connections_per_destination = 4\n",
    )
    .expect("config");
    let sink = Arc::new(memory::Sink::new());
    let stop = tokio_util::sync::CancellationToken::new();
    let (delivery, handle) = delivery::start(
        Settings::new(&config.delivery, &config.smtp.hostname),
        spool.clone(),
        sink.clone(),
        AddressTagger::new([0; 32]),
        Vec::new(),
        stop.clone(),
    );
    let body = Bytes::from(format!(
        "Subject: bench\r\nMessage-ID: <b@bench>\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\n\r\n{}\r\n",
        "x".repeat(2000)
    ));
    // Store first, so the timed part is the engine alone.
    let mut queued = Vec::with_capacity(messages);
    for m in 0..messages {
        let env = envelope::transactional(
            spool.next_id(),
            "bench",
            Some("bounce@bench.example"),
            [format!("reader{m}@domain{}.example", m % domains)],
        );
        let loc = spool.store(&env, body.clone()).await.expect("store");
        queued.push((env, loc));
    }
    let started = Instant::now();
    for (env, loc) in queued {
        delivery.accepted(env, loc, body.clone());
    }
    while sink.count() < messages {
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(started.elapsed() < Duration::from_secs(600), "stalled");
    }
    let took = started.elapsed();
    println!(
        "{messages} messages to {domains} domains delivered in {took:.2?}: {:.0} messages/s through the scheduler, {:.1} µs each",
        messages as f64 / took.as_secs_f64(),
        took.as_secs_f64() * 1e6 / messages as f64
    );
    stop.cancel();
    let _ = handle.await;
}
