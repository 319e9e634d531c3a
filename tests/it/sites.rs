//! Sites (MX rollup) and connection throttles (count and rate) with paused time: the
//! delivery engine runs over in-memory streams into one fake MX, behind a transport whose MX table the test
//! writes, which counts lookups and the connections open at once per site.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use optin_relay::delivery::outcome::ResolveFailure;
use optin_relay::delivery::transport::{
    BoxFuture, BoxStream, MxHosts, RouteKey, Target, Transport,
};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

use crate::support::engine::{self, Engine};
use crate::support::{self, FakeMx, MxOptions};

/// Counts the connections open at once to one site, and the most ever seen.
#[derive(Default)]
struct Gauge {
    open: AtomicUsize,
    most: AtomicUsize,
    opened: AtomicUsize,
}

/// A stream that keeps its site's gauge up to date.
struct Counted {
    inner: DuplexStream,
    gauge: Arc<Gauge>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.gauge.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// MX hosts by domain from the test; every host is the one fake MX.
struct Zone {
    mx: FakeMx,
    table: HashMap<String, Vec<(u16, String)>>,
    ttl: Duration,
    lookups: Mutex<HashMap<String, usize>>,
    /// Per site (its first MX host).
    gauges: Mutex<HashMap<String, Arc<Gauge>>>,
}

impl Zone {
    fn lookups(&self, domain: &str) -> usize {
        self.lookups
            .lock()
            .unwrap()
            .get(domain)
            .copied()
            .unwrap_or(0)
    }

    fn gauge(&self, host: &str) -> Arc<Gauge> {
        self.gauges
            .lock()
            .unwrap()
            .entry(host.to_string())
            .or_default()
            .clone()
    }
}

impl Transport for Zone {
    fn mx<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<MxHosts, ResolveFailure>> {
        Box::pin(async move {
            *self
                .lookups
                .lock()
                .unwrap()
                .entry(domain.to_string())
                .or_default() += 1;
            // a lookup takes a while, so concurrent messages find it under way
            tokio::time::sleep(Duration::from_millis(50)).await;
            match self.table.get(domain) {
                Some(hosts) if hosts.is_empty() => Err(ResolveFailure::NullMx),
                Some(hosts) => Ok(MxHosts {
                    hosts: hosts.clone(),
                    ttl: self.ttl,
                }),
                None => Err(ResolveFailure::NoSuchDomain),
            }
        })
    }

    fn resolve<'a>(
        &'a self,
        route: &'a RouteKey,
    ) -> BoxFuture<'a, Result<Vec<Target>, ResolveFailure>> {
        Box::pin(async move {
            let RouteKey::Site(site) = route else {
                panic!("routes are sites here");
            };
            Ok(vec![Target {
                host: site.mx[0].1.clone(),
                addr: "127.0.0.1:25".parse().unwrap(),
            }])
        })
    }

    fn connect<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, std::io::Result<BoxStream>> {
        Box::pin(async move {
            let gauge = self.gauge(&target.host);
            let open = gauge.open.fetch_add(1, Ordering::SeqCst) + 1;
            gauge.most.fetch_max(open, Ordering::SeqCst);
            gauge.opened.fetch_add(1, Ordering::SeqCst);
            let (ours, theirs) = tokio::io::duplex(1 << 16);
            self.mx.serve(theirs);
            Ok(Box::new(Counted { inner: ours, gauge }) as BoxStream)
        })
    }

    fn routes_by_domain(&self) -> bool {
        true
    }
}

/// The delivery engine over the test's MX table.
struct Setup {
    zone: Arc<Zone>,
    engine: Engine,
}

fn hosts(list: &[(u16, &str)]) -> Vec<(u16, String)> {
    list.iter().map(|(p, h)| (*p, h.to_string())).collect()
}

async fn setup(policy: &str, table: &[(&str, Vec<(u16, String)>)], ttl: Duration) -> Setup {
    let delivery = "retry_initial = \"1h\"\nconnection_idle_timeout = \"30s\"\n";
    let zone = Arc::new(Zone {
        mx: FakeMx::new(MxOptions::default()),
        table: table
            .iter()
            .map(|(d, h)| (d.to_string(), h.clone()))
            .collect(),
        ttl,
        lookups: Mutex::default(),
        gauges: Mutex::default(),
    });
    let settings = engine::with_policy(delivery, policy);
    let engine = Engine::start(tempfile::tempdir().unwrap(), settings, zone.clone());
    Setup { zone, engine }
}

impl Setup {
    async fn submit(&self, rcpts: &[&str]) {
        let env = support::envelope::transactional(
            self.engine.spool.next_id(),
            "acct",
            Some("app@shop.example"),
            rcpts.iter().map(|a| a.to_string()),
        );
        let body =
            Bytes::from_static(b"Subject: sites\r\nMessage-ID: <s@shop.example>\r\n\r\nbody\r\n");
        self.engine.submit(env, body).await;
    }

    async fn stop(self) {
        self.engine.stop().await;
    }
}

/// Two domains whose MX records name the same hosts (in a different order) are one site:
/// one recipient of each in a message go in one transaction, and the site's connection
/// limit (an `mx:` throttle) holds for both domains together. A third domain, hosted
/// elsewhere, has its own site and its own limit.
#[tokio::test(start_paused = true)]
async fn domains_with_the_same_mx_hosts_share_one_site() {
    let shared = hosts(&[(10, "mx1.shared.test"), (20, "mx2.shared.test")]);
    let reversed = hosts(&[(20, "mx2.shared.test"), (10, "mx1.shared.test")]);
    let s = setup(
        "[throttles.\"*\"]\nconnections = 10\n[throttles.\"mx:shared.test\"]\nconnections = 2\n",
        &[
            ("a.example", shared),
            ("b.example", reversed),
            ("c.example", hosts(&[(10, "mx.other.test")])),
        ],
        Duration::from_secs(300),
    )
    .await;
    // The first mail to each domain finds its site...
    s.submit(&["first@a.example"]).await;
    s.submit(&["first@b.example"]).await;
    s.zone.mx.wait_for(2, Duration::from_secs(10)).await;
    // ...after which a message to both is one transaction.
    s.submit(&["one@a.example", "two@b.example"]).await;
    let got = s.zone.mx.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(
        got[2].rcpt_to,
        ["one@a.example", "two@b.example"],
        "one transaction for both domains of the site"
    );
    // Slow deliveries to both domains and to the third: the shared site never has more
    // than 2 connections, the other site uses more.
    for i in 0..12 {
        s.submit(&[&format!("slow{i}@a.example")]).await;
        s.submit(&[&format!("slow{i}@b.example")]).await;
        s.submit(&[&format!("slow{i}@c.example")]).await;
    }
    let all = s.zone.mx.wait_for(39, Duration::from_secs(60)).await;
    assert_eq!(all.len(), 39);
    let shared = s.zone.gauge("mx1.shared.test");
    let other = s.zone.gauge("mx.other.test");
    assert_eq!(shared.most.load(Ordering::SeqCst), 2, "shared site's limit");
    assert!(
        other.most.load(Ordering::SeqCst) > 2,
        "the other site is not held by the shared site's limit"
    );
    assert!(
        s.zone
            .gauges
            .lock()
            .unwrap()
            .get("mx2.shared.test")
            .is_none()
    );
    s.stop().await;
}

/// A domain's site is looked up once for any number of messages arriving together, kept for
/// the MX records' TTL, and looked up again after it.
#[tokio::test(start_paused = true)]
async fn a_domain_is_looked_up_once_per_ttl() {
    let s = setup(
        "",
        &[("d.example", hosts(&[(10, "mx.d.test")]))],
        Duration::from_secs(300),
    )
    .await;
    for i in 0..20 {
        s.submit(&[&format!("r{i}@d.example")]).await;
    }
    s.zone.mx.wait_for(20, Duration::from_secs(10)).await;
    assert_eq!(s.zone.lookups("d.example"), 1, "20 messages, one lookup");
    tokio::time::sleep(Duration::from_secs(200)).await;
    s.submit(&["later@d.example"]).await;
    s.zone.mx.wait_for(21, Duration::from_secs(10)).await;
    assert_eq!(s.zone.lookups("d.example"), 1, "within the TTL");
    tokio::time::sleep(Duration::from_secs(120)).await;
    s.submit(&["after-ttl@d.example"]).await;
    s.zone.mx.wait_for(22, Duration::from_secs(10)).await;
    assert_eq!(
        s.zone.lookups("d.example"),
        2,
        "looked up again after the TTL"
    );
    s.stop().await;
}

/// `connections` caps the connections open at once to a site; over-limit mail waits and
/// all of it goes. Pooling: 30 messages go over far fewer connections.
#[tokio::test(start_paused = true)]
async fn the_connection_throttle_caps_concurrent_connections() {
    let s = setup(
        "[throttles.\"*\"]\nconnections = 3\n",
        &[("e.example", hosts(&[(10, "mx.e.test")]))],
        Duration::from_secs(300),
    )
    .await;
    for i in 0..30 {
        s.submit(&[&format!("slow{i}@e.example")]).await;
    }
    let all = s.zone.mx.wait_for(30, Duration::from_secs(60)).await;
    assert_eq!(all.len(), 30);
    let g = s.zone.gauge("mx.e.test");
    assert_eq!(g.most.load(Ordering::SeqCst), 3);
    assert_eq!(
        g.opened.load(Ordering::SeqCst),
        3,
        "30 messages over 3 reused connections"
    );
    s.stop().await;
}

/// A null MX and a domain that does not exist bounce at once (no retry); the lookup is
/// not kept, so a later message asks again.
#[tokio::test(start_paused = true)]
async fn null_mx_and_unknown_domains_bounce() {
    let s = setup(
        "",
        &[
            ("null.example", Vec::new()),
            ("ok.example", hosts(&[(10, "mx.ok.test")])),
        ],
        Duration::from_secs(300),
    )
    .await;
    s.submit(&["x@null.example", "y@nowhere.example", "z@ok.example"])
        .await;
    // the bounce (a DSN to app@shop.example, whose domain does not resolve here either)
    // and the delivery to ok.example
    let got = s.zone.mx.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].rcpt_to, ["z@ok.example"]);
    s.submit(&["again@null.example"]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(s.zone.lookups("null.example"), 2);
    assert_eq!(s.zone.mx.delivered().len(), 1);
    s.stop().await;
}

/// `connection_rate` spaces new connections evenly: with one message per connection, a
/// minute at "12/min" opens about 12 connections (and so delivers about 12 messages),
/// and the rest follows at the same pace.
#[tokio::test(start_paused = true)]
async fn the_connection_rate_spaces_new_connections() {
    let s = setup(
        "[throttles.\"*\"]\nconnection_rate = \"12/min\"\nmessages_per_connection = 1\n",
        &[("f.example", hosts(&[(10, "mx.f.test")]))],
        Duration::from_secs(3600),
    )
    .await;
    let start = tokio::time::Instant::now();
    for i in 0..20 {
        s.submit(&[&format!("r{i}@f.example")]).await;
    }
    tokio::time::sleep_until(start + Duration::from_secs(60)).await;
    let opened = s.zone.gauge("mx.f.test").opened.load(Ordering::SeqCst);
    assert!(
        (12..=13).contains(&opened),
        "{opened} connections in a minute at 12/min"
    );
    assert_eq!(s.zone.mx.delivered().len(), opened);
    let all = s.zone.mx.wait_for(20, Duration::from_secs(120)).await;
    assert_eq!(all.len(), 20);
    assert!(tokio::time::Instant::now() - start >= Duration::from_secs(95));
    s.stop().await;
}
