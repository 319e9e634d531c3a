//! Measures the RAM a queued recipient costs: fills a spool with MESSAGES messages of
//! RCPTS recipients each, all deferred for a day, starts the real delivery scheduler on the
//! recovered spool and reports how much the process grew, per recipient and per message.
//!
//!     cargo run --release --example queue_memory -- [MESSAGES] [RCPTS]
//!
//! (defaults: 200000 messages, 5 recipients). Nothing is delivered: every recipient waits
//! for its retry time, which is the steady state of a large deferred queue.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use optin_relay::config::{Config, SpoolConfig};
use optin_relay::delivery::outcome::ResolveFailure;
use optin_relay::delivery::transport::{BoxFuture, BoxStream, RouteKey, Target, Transport};
use optin_relay::delivery::{self, Settings};
use optin_relay::privacy::AddressTagger;
use optin_relay::smtp::params::BodyType;
use optin_relay::spool::{self, Envelope, RcptEvent, Recipient, Spool};

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

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
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
        let later = spool::now_ms() + 86_400_000;
        for m in 0..messages {
            let env = Envelope {
                id: spool.next_id(),
                received_at: spool::now_ms(),
                account: "newsletter".into(),
                sender: Some("bounces+campaign-42@news.shop.example".into()),
                envid: None,
                ret: None,
                body_type: BodyType::SevenBit,
                smtputf8: false,
                eight_bit_content: false,
                generated_dsn: false,
                stream: optin_relay::policy::Stream::Transactional,
                list: None,
                campaign: None,
                recipients: (0..rcpts)
                    .map(|r| Recipient {
                        address: format!(
                            "subscriber.{m}.{r}@domain{}.example",
                            (m * rcpts + r) % 10_000
                        ),
                        notify: None,
                        orcpt: None,
                        done: false,
                    })
                    .collect(),
            };
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
    let before = rss_bytes();
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
    // let the scheduler take in every recovered message
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_bytes();
    let grown = after.saturating_sub(before) as f64;
    let total = (recovered * rcpts) as f64;
    println!(
        "{recovered} messages x {rcpts} recipients recovered in {:.2?}; process grew {:.1} MiB: {:.0} bytes per queued recipient, {:.0} bytes per message",
        recovery,
        grown / (1 << 20) as f64,
        grown / total,
        grown / recovered as f64
    );
    stop.cancel();
    handle.await.unwrap();
}
