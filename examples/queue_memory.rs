//! Measures the RAM a queued recipient costs: fills a spool with MESSAGES messages of
//! RCPTS recipients each, all deferred for a day, starts the real delivery scheduler on the
//! recovered spool and reports how much the process grew, per recipient and per message.
//!
//!     cargo run --release --example queue_memory -- [MESSAGES] [RCPTS]
//!
//! (defaults: 200000 messages, 5 recipients). Nothing is delivered: every recipient waits
//! for its retry time, which is the steady state of a large deferred queue.
//!
//! Two figures: the live heap (every allocation still held, counted by a wrapping global
//! allocator) and the resident set's growth after glibc's `malloc_trim` has returned the
//! memory recovery used only for a moment (the envelopes read from the spool).

#[path = "../tests/it/support/envelope.rs"]
mod envelope;
#[path = "../tests/it/support/memory.rs"]
mod memory;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use optin_relay::config::{Config, SpoolConfig};
use optin_relay::delivery::outcome::ResolveFailure;
use optin_relay::delivery::transport::{BoxFuture, BoxStream, RouteKey, Target, Transport};
use optin_relay::delivery::{self, Settings};
use optin_relay::privacy::AddressTagger;
use optin_relay::spool::{RcptEvent, Spool};

#[global_allocator]
static ALLOCATOR: memory::Counting = memory::Counting;

struct Nowhere;

impl Transport for Nowhere {
    fn resolve<'a>(
        &'a self,
        _: &'a RouteKey,
    ) -> BoxFuture<'a, Result<Vec<Target>, ResolveFailure>> {
        Box::pin(async { Err(ResolveFailure::Temporary("not used".into())) })
    }
    fn connect<'a>(&'a self, _: &'a Target) -> BoxFuture<'a, std::io::Result<BoxStream>> {
        Box::pin(async { Err(std::io::ErrorKind::Unsupported.into()) })
    }
    fn routes_by_domain(&self) -> bool {
        true
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let messages: usize = args.next().map_or(200_000, |a| a.parse().unwrap());
    let rcpts: usize = args.next().map_or(5, |a| a.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let config = SpoolConfig {
        path: dir.path().to_path_buf(),
        fsync: false,
        segment_size: 64 << 20,
    };
    let body = Bytes::from(format!("Subject: queued\r\n\r\n{}\r\n", "x".repeat(2000)));
    {
        let (spool, _) = Spool::open(&config).unwrap();
        let later = optin_relay::envelope::now_ms() + 86_400_000;
        for m in 0..messages {
            let env = envelope::transactional(
                spool.next_id(),
                "newsletter",
                Some("bounces+campaign-42@news.shop.example"),
                (0..rcpts).map(|r| {
                    format!(
                        "subscriber.{m}.{r}@domain{}.example",
                        (m * rcpts + r) % 10_000
                    )
                }),
            );
            let loc = spool.store(&env, body.clone()).await.unwrap();
            for r in 0..rcpts {
                spool.record(
                    loc,
                    r as u32,
                    RcptEvent::Deferred {
                        attempts: 1,
                        next_attempt: later,
                        delay_notified: false,
                    },
                );
            }
        }
        spool.flush().await.unwrap();
    }
    memory::trim();
    let before = memory::status_bytes("VmRSS");
    let held_before = memory::held();
    let started = std::time::Instant::now();
    let (spool, report) = Spool::open(&config).unwrap();
    let recovered = report.messages.len();
    let recovery = started.elapsed();
    let settings = {
        let c = Config::from_toml("m", "[smtp]\nhostname = \"relay.test\"").unwrap();
        Settings::new(&c.delivery, &c.smtp.hostname)
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let (_delivery, handle) = delivery::start(
        settings,
        spool,
        Arc::new(Nowhere),
        AddressTagger::new([0; 32]),
        report.messages,
        stop.clone(),
    );
    // start() has taken in every recovered message: the queue is back
    let resumed = started.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held = memory::held().saturating_sub(held_before) as f64;
    memory::trim();
    let after = memory::status_bytes("VmRSS");
    let grown = after.saturating_sub(before) as f64;
    let total = (recovered * rcpts) as f64;
    println!(
        "{recovered} messages x {rcpts} recipients recovered in {recovery:.2?} (queue resumed after {resumed:.2?})\n\
         live heap {:.1} MiB: {:.0} bytes per queued recipient, {:.0} per message\n\
         resident set grew {:.1} MiB: {:.0} bytes per queued recipient, {:.0} per message",
        held / (1 << 20) as f64,
        held / total,
        held / recovered as f64,
        grown / (1 << 20) as f64,
        grown / total,
        grown / recovered as f64
    );
    stop.cancel();
    handle.await.unwrap();
}
