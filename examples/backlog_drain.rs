//! Measures the memory a queue backlog costs while it drains: fills a spool with MESSAGES
//! one-recipient messages of SIZE KiB to DOMAINS domains, every recipient deferred (the
//! next hop was down), starts the whole relay on it with delivery into an in-process sink
//! that accepts everything, lets the backlog come due at once — as when the next hop comes
//! back after an outage — and reports the peak resident set (`VmHWM`) and the drain time.
//!
//!     cargo run --release --example backlog_drain -- [MESSAGES] [SIZE_KIB] [DOMAINS] [--at-start]
//!
//! (defaults: 200000 messages, 2 KiB, 100 domains). By default the backlog comes due
//! seconds after the relay started (its timers fire for every message at once);
//! `--at-start` makes it due when the relay starts instead (a restart after the outage).
//! The spool goes in a temporary directory (MESSAGES × SIZE of disk), deleted at the end.

#[path = "../tests/it/support/envelope.rs"]
mod envelope;
#[path = "../tests/it/support/memory.rs"]
mod memory;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use memory::{HELD, RssSampler, Sink, heap, mib, reset_peak, status_bytes, trim};
use optin_relay::config::{Config, SpoolConfig};
use optin_relay::spool::{RcptEvent, Spool};

#[global_allocator]
static ALLOCATOR: memory::Counting = memory::Counting;

/// Seconds after the backlog was written that it comes due (time to start the relay).
const DUE_AFTER: u64 = 15;

fn body(kib: usize) -> Bytes {
    let mut text = String::from(
        "From: <news@bench.example>\r\nTo: <reader@example.net>\r\nSubject: backlog\r\n\
         Date: Sat, 21 Nov 2026 10:00:00 +0000\r\nMessage-ID: <backlog@bench.example>\r\n\r\n",
    );
    while text.len() + 78 <= kib * 1024 {
        text.push_str(&"x".repeat(76));
        text.push_str("\r\n");
    }
    Bytes::from(text)
}

/// Writes the backlog; every recipient is deferred until `due(now)` once the messages are
/// written. Returns that time.
async fn fill(
    config: &SpoolConfig,
    messages: usize,
    kib: usize,
    domains: usize,
    due: impl Fn(u64) -> u64,
) -> u64 {
    let (spool, _) = Spool::open(config).expect("spool");
    let body = body(kib);
    let mut pending = tokio::task::JoinSet::new();
    let mut locs = Vec::with_capacity(messages);
    for m in 0..messages {
        let env = envelope::transactional(
            spool.next_id(),
            "bench",
            Some("bounces@bench.example"),
            [format!("reader{m}@domain{}.example", m % domains)],
        );
        let (spool, body) = (spool.clone(), body.clone());
        pending.spawn(async move { spool.store(&env, body).await.expect("store") });
        if pending.len() >= 256
            && let Some(loc) = pending.join_next().await
        {
            locs.push(loc.expect("stored"));
        }
    }
    while let Some(loc) = pending.join_next().await {
        locs.push(loc.expect("stored"));
    }
    let due = due(optin_relay::envelope::now_ms());
    for loc in locs {
        spool.record(
            loc,
            0,
            RcptEvent::Deferred {
                attempts: 3,
                next_attempt: due,
                delay_notified: false,
            },
        );
    }
    spool.flush().await.expect("flush");
    due
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let at_start = args.iter().any(|a| a == "--at-start");
    let numbers: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let messages = numbers.first().copied().unwrap_or(200_000);
    let kib = numbers.get(1).copied().unwrap_or(2);
    let domains = numbers.get(2).copied().unwrap_or(100);
    let dir = tempfile::tempdir().expect("temp dir");
    let spool_dir = dir.path().join("spool");
    let spool_config = SpoolConfig {
        path: spool_dir.clone(),
        fsync: false,
        segment_size: 64 << 20,
    };
    let started = Instant::now();
    // Recovery reads every record: about 2 µs per KiB on this machine.
    let due = |now: u64| {
        if at_start {
            0
        } else {
            now + 1000 * DUE_AFTER + (messages * kib) as u64 / 500
        }
    };
    let due = fill(&spool_config, messages, kib, domains, due).await;
    println!(
        "backlog: {messages} messages x {kib} KiB to {domains} domains written in {:.1?}",
        started.elapsed()
    );
    trim();
    let base_rss = status_bytes("VmRSS");
    let base_heap = HELD.load(std::sync::atomic::Ordering::Relaxed);
    reset_peak();
    let sampler = RssSampler::start();
    let text = format!(
        "[smtp]\nlisten = \"127.0.0.1:0\"\nhostname = \"relay.bench\"\n\
         [spool]\npath = \"{}\"\nfsync = false\n[http]\nlisten = \"\"\n\
         [delivery]\nlog = \"\"\n",
        spool_dir.display()
    );
    let config = Config::from_toml("bench", &text).expect("config");
    let policy = optin_relay::policy::Policy::from_toml(
        "policy",
        "[accounts.bench]\nnetworks = [\"127.0.0.0/8\"]\n",
    )
    .expect("policy");
    let sink = Arc::new(Sink::new());
    let opened = Instant::now();
    let relay = optin_relay::server::Relay::start_with_transport(config, policy, sink.clone())
        .await
        .expect("relay");
    let recovery_peak = status_bytes("VmHWM");
    let (anon, file) = sampler.take();
    println!(
        "relay started (spool recovered) in {:.2?}; resident {:.0} MiB, peak so far {:.0} MiB \
         (sampled: {:.0} MiB anonymous, {:.0} MiB mapped files)",
        opened.elapsed(),
        mib(status_bytes("VmRSS")),
        mib(recovery_peak),
        mib(anon),
        mib(file),
    );
    if !at_start {
        let wait = Duration::from_millis(due.saturating_sub(optin_relay::envelope::now_ms()));
        if wait.is_zero() {
            println!("warning: the backlog came due before the relay had started");
        }
        tokio::time::sleep(wait).await;
        // the peak from here on is the drain's
        trim();
        reset_peak();
        sampler.take();
    }
    let drain_start = Instant::now();
    let mut heap_peak = 0;
    let mut last = (0, Instant::now());
    while sink.count() < messages {
        tokio::time::sleep(Duration::from_millis(20)).await;
        heap_peak = heap_peak.max(HELD.load(std::sync::atomic::Ordering::Relaxed));
        let n = sink.count();
        if n != last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(60) {
            panic!("stalled at {n} of {messages} delivered");
        }
    }
    let drained = drain_start.elapsed();
    let peak = status_bytes("VmHWM");
    let (anon, file) = sampler.take();
    let info = heap();
    println!(
        "drained {messages} messages in {drained:.2?} ({:.0}/s)\n\
         peak resident set while draining {:.0} MiB (sampled: {:.0} MiB anonymous, {:.0} MiB \
         mapped files; before the relay started: {:.0} MiB; recovery's peak: {:.0} MiB)\n\
         peak live heap while draining {:.0} MiB above the baseline (sampled every 20 ms)\n\
         now: resident {:.0} MiB, glibc heap in use {:.0} MiB, free in arenas {:.0} MiB",
        messages as f64 / drained.as_secs_f64(),
        mib(peak),
        mib(anon),
        mib(file),
        mib(base_rss),
        mib(recovery_peak),
        mib(heap_peak.saturating_sub(base_heap) as u64),
        mib(status_bytes("VmRSS")),
        mib(info.uordblks as u64),
        mib(info.fordblks as u64),
    );
    // The scheduler shrinks its tables and hands freed memory back every 10 s.
    tokio::time::sleep(Duration::from_secs(12)).await;
    println!("12 s later: resident {:.0} MiB", mib(status_bytes("VmRSS")));
    relay.shutdown().await;
}
