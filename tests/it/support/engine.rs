//! The delivery engine alone, without the SMTP side: a spool in a temporary directory, a
//! transport the test chooses (a fake MX over in-memory pipes, so paused time runs days of
//! retries in milliseconds), and messages handed to it as the SMTP side would.

use std::sync::Arc;

use bytes::Bytes;
use optin_relay::config::{Config, SpoolConfig};
use optin_relay::delivery::Intake;
use optin_relay::delivery::transport::Transport;
use optin_relay::delivery::{self, Delivery, Settings};
use optin_relay::envelope::Envelope;
use optin_relay::privacy::AddressTagger;
use optin_relay::spool::{Location, Spool};
use tokio_util::sync::CancellationToken;

/// Delivery settings from `delivery` (keys of `[delivery]`), for host `relay.test`.
pub fn settings(delivery: &str) -> Settings {
    let config = Config::from_toml(
        "t",
        &format!("[smtp]\nhostname = \"relay.test\"\n[delivery]\n{delivery}"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    Settings::new(&config.delivery, &config.smtp.hostname)
}

/// [`settings`] under `policy` (its throttles and shaping rules).
pub fn with_policy(delivery: &str, policy: &str) -> Settings {
    let mut settings = settings(delivery);
    let policy =
        optin_relay::policy::Policy::from_toml("p", policy).unwrap_or_else(|e| panic!("{e}"));
    settings.policy = Some(Arc::new(arc_swap::ArcSwap::from_pointee(policy)));
    settings
}

/// The spool in `dir` as the tests keep it: no fsync, 1 MiB segments.
pub fn spool_config(dir: &std::path::Path) -> SpoolConfig {
    SpoolConfig {
        path: dir.to_path_buf(),
        fsync: false,
        segment_size: 1 << 20,
    }
}

/// A running delivery engine and its spool.
pub struct Engine {
    pub spool: Spool,
    pub delivery: Delivery,
    pub stop: CancellationToken,
    pub scheduler: tokio::task::JoinHandle<()>,
    pub dir: tempfile::TempDir,
    /// How many messages the spool held when it was opened.
    pub recovered: usize,
}

impl Engine {
    /// Opens the spool in `dir` (taking up what it holds) and starts delivery over
    /// `transport`.
    pub fn start(
        dir: tempfile::TempDir,
        settings: Settings,
        transport: Arc<dyn Transport>,
    ) -> Engine {
        let (spool, report) = Spool::open(&spool_config(dir.path())).unwrap();
        let recovered = report.messages.len();
        let stop = CancellationToken::new();
        let (delivery, scheduler) = delivery::start(
            settings,
            spool.clone(),
            transport,
            AddressTagger::new([1; 32]),
            report.messages,
            stop.clone(),
        );
        Engine {
            spool,
            delivery,
            stop,
            scheduler,
            dir,
            recovered,
        }
    }

    /// Stores `envelope` with `body` and hands it to delivery, as the SMTP side does
    /// after its 250.
    pub async fn submit(&self, envelope: Envelope, body: Bytes) -> Location {
        let loc = self.spool.store(&envelope, body.clone()).await.unwrap();
        self.delivery.accepted(envelope, loc, body);
        loc
    }

    /// Messages in the spool files, once everything sent to the writer is written.
    pub async fn queued(&self) -> usize {
        self.spool.flush().await.unwrap();
        Spool::inspect(self.dir.path()).unwrap().len()
    }

    /// Stops delivery, writes out the spool and returns its directory.
    pub async fn stop(self) -> tempfile::TempDir {
        self.stop.cancel();
        self.scheduler.await.unwrap();
        self.spool.flush().await.unwrap();
        drop(self.spool);
        self.dir
    }
}
