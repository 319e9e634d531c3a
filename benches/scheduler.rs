//! Delivery engine throughput without the network: MESSAGES one-recipient messages to
//! DOMAINS domains go through the real scheduler, route queues, workers and SMTP client
//! into an in-process server that accepts everything at once (in-memory pipes, no TLS, no
//! disk sync). What is left is the engine's own work per message: dispatch, a pooled
//! connection's transaction, the outcome, the spool journal.
//!
//!     cargo bench --bench scheduler -- [MESSAGES] [DOMAINS]     (default 50000 1000)

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use optin_relay::config::{Config, SpoolConfig};
use optin_relay::delivery::outcome::ResolveFailure;
use optin_relay::delivery::transport::{BoxFuture, BoxStream, RouteKey, Target, Transport};
use optin_relay::delivery::{self, Settings};
use optin_relay::privacy::AddressTagger;
use optin_relay::session::Intake;
use optin_relay::smtp::params::BodyType;
use optin_relay::spool::{self, Envelope, Recipient, Spool};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Every route leads to the same in-process server that says yes to everything.
struct Accepting {
    delivered: Arc<AtomicUsize>,
}

async fn serve(stream: tokio::io::DuplexStream, delivered: Arc<AtomicUsize>) {
    let mut io = BufReader::new(stream);
    if io.get_mut().write_all(b"220 sink\r\n").await.is_err() {
        return;
    }
    let mut line = Vec::new();
    loop {
        line.clear();
        if io.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with(b"EHLO") {
            b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
        } else if upper.starts_with(b"DATA") {
            if io.get_mut().write_all(b"354 go\r\n").await.is_err() {
                return;
            }
            loop {
                line.clear();
                if io.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                if line == b".\r\n" {
                    break;
                }
            }
            delivered.fetch_add(1, Ordering::Relaxed);
            b"250 ok\r\n"
        } else if upper.starts_with(b"QUIT") {
            let _ = io.get_mut().write_all(b"221 bye\r\n").await;
            return;
        } else {
            b"250 ok\r\n"
        };
        if io.get_mut().write_all(reply).await.is_err() {
            return;
        }
    }
}

impl Transport for Accepting {
    fn resolve<'a>(
        &'a self,
        _: &'a RouteKey,
    ) -> BoxFuture<'a, Result<Vec<Target>, ResolveFailure>> {
        Box::pin(async {
            Ok(vec![Target {
                host: "sink.test".into(),
                addr: "127.0.0.1:25".parse().expect("address"),
            }])
        })
    }

    fn connect<'a>(&'a self, _: &'a Target) -> BoxFuture<'a, std::io::Result<BoxStream>> {
        let delivered = self.delivered.clone();
        Box::pin(async move {
            let (ours, theirs) = tokio::io::duplex(1 << 16);
            tokio::spawn(serve(theirs, delivered));
            Ok(Box::new(ours) as BoxStream)
        })
    }

    fn routes_by_domain(&self) -> bool {
        true
    }
}

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
    let delivered = Arc::new(AtomicUsize::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let (delivery, handle) = delivery::start(
        Settings::new(&config.delivery, &config.smtp.hostname),
        spool.clone(),
        Arc::new(Accepting {
            delivered: delivered.clone(),
        }),
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
        let env = Envelope {
            id: spool.next_id(),
            received_at: spool::now_ms(),
            account: "bench".into(),
            sender: Some("bounce@bench.example".into()),
            envid: None,
            ret: None,
            body_type: BodyType::SevenBit,
            smtputf8: false,
            eight_bit_content: false,
            generated_dsn: false,
            stream: optin_relay::policy::Stream::Transactional,
            list: None,
            campaign: None,
            recipients: vec![Recipient {
                address: format!("reader{m}@domain{}.example", m % domains),
                notify: None,
                orcpt: None,
                done: false,
            }],
        };
        let loc = spool.store(&env, body.clone()).await.expect("store");
        queued.push((env, loc));
    }
    let started = Instant::now();
    for (env, loc) in queued {
        delivery.accepted(env, loc, body.clone());
    }
    while delivered.load(Ordering::Relaxed) < messages {
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
