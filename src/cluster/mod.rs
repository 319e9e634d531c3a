//! Cluster mode: what several relays behind one load balancer share through Redis (or
//! Valkey), so that they behave as one sender — per-site paces and connection caps
//! ([`throttle`]), the adaptive shaping a site's replies set, and the table of nodes with
//! their heartbeats ([`nodes`]). The spool, the queue and the delivery engine stay each
//! node's own.
//!
//! Every call to Redis has a deadline (`[cluster] timeout`). When one fails, the node marks
//! Redis unreachable, logs it once and counts it, and from then on makes no call at all
//! (nothing waits on a dead server): its callers fall back to their local limits divided
//! by the number of nodes last seen alive ([`Cluster::share`]). The heartbeat keeps asking
//! — the next server of `[cluster] redis` in turn — and the node rejoins as soon as one
//! answers.
//!
//! Nodes tell each other what changed over one pub/sub channel (`PREFIX bus`):
//! a connection lease freed (its waiters wake at once, not on a timer) and a site's shaping.

pub mod nodes;
mod scripts;
pub mod stream;
pub mod throttle;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use redis::aio::ConnectionManager;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use crate::config::cluster::ClusterConfig;

pub use nodes::{NodeInfo, NodeReport, Status};
pub use throttle::Lease;

/// What one node tells the others over the bus (besides the leases it frees).
#[derive(Debug, Clone, PartialEq)]
pub enum Announcement {
    /// A site's replies changed its pace: the share of its rate in force, and how long it
    /// is suspended from now.
    Shaped {
        site: String,
        factor: f64,
        suspended_for: Duration,
        node: String,
    },
    /// An account was frozen (by `by`: `admin`, `health`, `content`) for `reason`.
    Frozen {
        account: String,
        reason: String,
        by: String,
        node: String,
    },
    /// An account was unfrozen.
    Unfrozen {
        account: String,
        by: String,
        node: String,
    },
    /// A campaign (`ACCOUNT/ID`) had its verdict; the verdict itself is read from Redis.
    Verdict { campaign: String, node: String },
}

impl Announcement {
    fn encode(&self) -> String {
        match self {
            Announcement::Shaped {
                site,
                factor,
                suspended_for,
                node,
            } => format!(
                "shaped\t{node}\t{factor}\t{}\t{site}",
                suspended_for.as_millis()
            ),
            Announcement::Frozen {
                account,
                reason,
                by,
                node,
            } => format!(
                "frozen\t{node}\t{}\t{}\t{}",
                one_field(account),
                one_field(by),
                one_field(reason)
            ),
            Announcement::Unfrozen { account, by, node } => {
                format!(
                    "unfrozen\t{node}\t{}\t{}",
                    one_field(account),
                    one_field(by)
                )
            }
            Announcement::Verdict { campaign, node } => {
                format!("verdict\t{node}\t{}", one_field(campaign))
            }
        }
    }

    /// The node that made it.
    pub fn node(&self) -> &str {
        match self {
            Announcement::Shaped { node, .. }
            | Announcement::Frozen { node, .. }
            | Announcement::Unfrozen { node, .. }
            | Announcement::Verdict { node, .. } => node,
        }
    }

    fn decode(text: &str) -> Option<Announcement> {
        let mut parts = text.splitn(5, '\t');
        match parts.next()? {
            "shaped" => {
                let node = parts.next()?.to_string();
                let factor: f64 = parts.next()?.parse().ok()?;
                let ms: u64 = parts.next()?.parse().ok()?;
                let site = parts.next()?.to_string();
                (factor.is_finite() && (0.0..=1.0).contains(&factor)).then_some(
                    Announcement::Shaped {
                        site,
                        factor,
                        suspended_for: Duration::from_millis(ms.min(86_400_000)),
                        node,
                    },
                )
            }
            "frozen" => {
                let node = parts.next()?.to_string();
                let account = parts.next()?.to_string();
                let by = parts.next()?.to_string();
                let reason = parts.next()?.to_string();
                Some(Announcement::Frozen {
                    account,
                    reason,
                    by,
                    node,
                })
            }
            "unfrozen" => {
                let node = parts.next()?.to_string();
                let account = parts.next()?.to_string();
                let by = parts.next()?.to_string();
                Some(Announcement::Unfrozen { account, by, node })
            }
            "verdict" => {
                let node = parts.next()?.to_string();
                let campaign = parts.next()?.to_string();
                Some(Announcement::Verdict { campaign, node })
            }
            _ => None,
        }
    }
}

/// A value as one field of an announcement: tabs and line breaks become spaces.
fn one_field(s: &str) -> String {
    s.replace(['\t', '\n', '\r'], " ")
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.config.node_id)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

/// The connection to one Redis server of `[cluster] redis`.
struct Link {
    index: usize,
    conn: ConnectionManager,
}

/// This node's handle on the cluster; shared as `Arc`.
pub struct Cluster {
    config: ClusterConfig,
    clients: Vec<redis::Client>,
    link: ArcSwap<Link>,
    up: AtomicBool,
    /// Nodes alive at the last heartbeat that reached Redis (this one included).
    live_nodes: AtomicUsize,
    /// Waiters for a site's connection lease, by lease key.
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
    /// Leases held: id → (key, member).
    held: Mutex<HashMap<u64, (String, String)>>,
    next_lease: AtomicU64,
    announcements: broadcast::Sender<Announcement>,
    started_ms: u64,
}

impl Cluster {
    /// A handle for `config`. Connects lazily: a Redis that is down now does not stop the
    /// node from starting (it runs on its share of the limits until Redis answers).
    pub fn new(config: ClusterConfig) -> Result<Arc<Cluster>, String> {
        let ca = match &config.ca_file {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| format!("[cluster] ca_file {}: {e}", path.display()))?,
            ),
            None => None,
        };
        let mut clients = Vec::new();
        for url in &config.redis {
            clients.push(client_for(url, &config, ca.as_deref())?);
        }
        let conn = manager(&clients[0], &config, Duration::ZERO)?;
        let (announcements, _) = broadcast::channel(1024);
        Ok(Arc::new(Cluster {
            clients,
            link: ArcSwap::from_pointee(Link { index: 0, conn }),
            up: AtomicBool::new(false),
            live_nodes: AtomicUsize::new(1),
            waiters: Mutex::default(),
            held: Mutex::default(),
            next_lease: AtomicU64::new(1),
            announcements,
            started_ms: now_ms(),
            config,
        }))
    }

    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Whether the last call to Redis succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// `None` while Redis answers (the shared limits hold); else the number of nodes last
    /// seen alive, by which the node divides its local limits.
    pub fn share(&self) -> Option<usize> {
        (!self.is_up()).then(|| self.live_nodes.load(Ordering::Relaxed).max(1))
    }

    /// The announcements of the other nodes (and this one's own, which callers skip by
    /// node id).
    pub fn announcements(&self) -> broadcast::Receiver<Announcement> {
        self.announcements.subscribe()
    }

    /// Tells every node (best effort: a node away misses it).
    pub async fn announce(&self, announcement: Announcement) {
        let channel = self.key("bus");
        let text = announcement.encode();
        self.call("announce", |mut c| async move {
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(text)
                .query_async::<i64>(&mut c)
                .await
        })
        .await;
    }

    /// A key of this cluster: the prefix, then `name`.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.config.key_prefix)
    }

    /// Runs one Redis call with the deadline, when Redis is up; `None` when it is not or
    /// the call fails (then it is marked down, logged and counted).
    pub(crate) async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if !self.is_up() {
            return None;
        }
        self.call_anyway(op, f).await.ok()
    }

    /// A connection of its own to the Redis in use, for a command that blocks (a feed
    /// read): commands on the shared one would wait behind it. Its answers may take
    /// `block` on top of the deadline.
    pub fn separate_connection(&self, block: Duration) -> Result<ConnectionManager, String> {
        let index = self.link.load().index;
        manager(&self.clients[index], &self.config, block)
    }

    /// For a task that reads with blocking commands on a connection of its own (the feed,
    /// the erasures): waits while Redis is marked unreachable (dropping the connection),
    /// and returns the connection, made anew when there is none. `None`: `stop` came.
    pub async fn reading_connection<'a>(
        &self,
        conn: &'a mut Option<ConnectionManager>,
        block: Duration,
        stop: &CancellationToken,
    ) -> Option<&'a mut ConnectionManager> {
        loop {
            if stop.is_cancelled() {
                return None;
            }
            if self.is_up() && conn.is_none() {
                match self.separate_connection(block) {
                    Ok(c) => *conn = Some(c),
                    Err(e) => tracing::warn!(error = %e, "cluster: no reading connection"),
                }
            }
            if self.is_up() && conn.is_some() {
                return conn.as_mut();
            }
            if !self.is_up() {
                *conn = None;
            }
            tokio::select! {
                () = stop.cancelled() => return None,
                () = tokio::time::sleep(self.config.heartbeat) => {}
            }
        }
    }

    /// A Redis call failed outside [`Cluster::call`] (on a separate connection): counted,
    /// and Redis marked unreachable until the heartbeat finds it again.
    pub fn failed(&self, op: &'static str, why: &str) {
        crate::metrics::cluster_error(op);
        self.mark_down(op, why);
    }

    /// [`Cluster::call`] even when Redis is marked down (the heartbeat's probe).
    async fn call_anyway<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, String>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.link.load().conn.clone();
        let start = Instant::now();
        let result = match tokio::time::timeout(self.config.timeout, f(conn)).await {
            Ok(Ok(v)) => {
                crate::metrics::cluster_call(start.elapsed());
                return Ok(v);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", self.config.timeout),
        };
        crate::metrics::cluster_error(op);
        self.mark_down(op, &result);
        Err(result)
    }

    fn mark_down(&self, op: &str, why: &str) {
        if self.up.swap(false, Ordering::Relaxed) {
            let share = self.live_nodes.load(Ordering::Relaxed).max(1);
            tracing::warn!(
                op,
                error = why,
                nodes = share,
                "Redis unreachable: running on local limits divided by the nodes last seen"
            );
            crate::metrics::cluster_fallback();
            crate::metrics::cluster_up(false);
            // Waiters for leases take the local limits now.
            for w in self.waiters.lock().expect("waiters lock").values() {
                w.notify_waiters();
            }
        }
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            let link = self.link.load();
            tracing::info!(
                server = %self.clients[link.index].get_connection_info().addr(),
                "Redis reachable: the cluster's shared limits hold again"
            );
            crate::metrics::cluster_up(true);
        }
    }

    /// Starts the heartbeat (which also renews leases and finds Redis again) and the bus
    /// listener; both stop with `shutdown`. `report` says what this node is at each beat.
    pub fn start(
        self: &Arc<Self>,
        report: Arc<dyn Fn() -> NodeReport + Send + Sync>,
        shutdown: CancellationToken,
    ) {
        crate::metrics::cluster_started();
        let this = self.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(this.config.heartbeat);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => this.beat(&report()).await,
                }
            }
            this.leave().await;
        });
        let this = self.clone();
        tokio::spawn(async move { this.listen(shutdown).await });
    }

    /// One heartbeat: announce this node, count the live ones, renew the leases held. When
    /// Redis does not answer, the next server of the list is tried at the next beat.
    async fn beat(&self, report: &NodeReport) {
        match self.heartbeat(report).await {
            Ok(live) => {
                self.live_nodes.store(live.max(1), Ordering::Relaxed);
                crate::metrics::cluster_nodes(live);
                self.mark_up();
                self.renew().await;
            }
            Err(_) if self.clients.len() > 1 => {
                let index = (self.link.load().index + 1) % self.clients.len();
                match manager(&self.clients[index], &self.config, Duration::ZERO) {
                    Ok(conn) => self.link.store(Arc::new(Link { index, conn })),
                    Err(e) => tracing::warn!(error = %e, "cannot use the next Redis server"),
                }
            }
            Err(_) => {}
        }
    }

    /// Listens on the bus, reconnecting while the node runs.
    async fn listen(self: Arc<Self>, shutdown: CancellationToken) {
        use futures_util::StreamExt;
        let channel = self.key("bus");
        loop {
            let index = self.link.load().index;
            let connected = tokio::time::timeout(self.config.timeout * 4, async {
                let mut ps = self.clients[index].get_async_pubsub().await?;
                ps.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(ps)
            })
            .await;
            match connected {
                Ok(Ok(ps)) => {
                    let mut messages = ps.into_on_message();
                    loop {
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            msg = messages.next() => match msg {
                                Some(msg) => self.heard(&msg.get_payload::<String>().unwrap_or_default()),
                                None => break,
                            },
                        }
                    }
                    // The connection dropped: waiters must not sleep on a release they
                    // may have missed.
                    for w in self.waiters.lock().expect("waiters lock").values() {
                        w.notify_waiters();
                    }
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "cluster bus: cannot subscribe"),
                Err(_) => tracing::debug!("cluster bus: no answer"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.config.heartbeat) => {}
            }
        }
    }

    /// One message from the bus.
    fn heard(&self, text: &str) {
        if let Some(key) = text.strip_prefix("freed\t") {
            if let Some(w) = self.waiters.lock().expect("waiters lock").get(key) {
                w.notify_waiters();
            }
            return;
        }
        match Announcement::decode(text) {
            Some(a) => {
                let _ = self.announcements.send(a);
            }
            None => tracing::debug!(len = text.len(), "cluster bus: a message not understood"),
        }
    }
}

/// Asks each server of `config` once (`config check`): its Redis version and the time a
/// `PING` took, or why it did not answer.
pub async fn probe(config: &ClusterConfig) -> Vec<(String, Result<String, String>)> {
    let ca = match &config.ca_file {
        Some(path) => match std::fs::read(path) {
            Ok(ca) => Some(ca),
            Err(e) => {
                let why = format!("ca_file {}: {e}", path.display());
                return config
                    .redis
                    .iter()
                    .map(|u| (u.clone(), Err(why.clone())))
                    .collect();
            }
        },
        None => None,
    };
    let mut out = Vec::new();
    for url in &config.redis {
        let answer = async {
            let client = client_for(url, config, ca.as_deref())?;
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| e.to_string())?;
            let start = Instant::now();
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            let took = start.elapsed();
            let info: String = redis::cmd("INFO")
                .arg("server")
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            let version = info
                .lines()
                .find_map(|l| l.strip_prefix("redis_version:"))
                .unwrap_or("unknown")
                .trim()
                .to_string();
            Ok::<_, String>(format!(
                "answers: Redis {version}, PING in {:.1} ms",
                took.as_secs_f64() * 1000.0
            ))
        };
        let result = match tokio::time::timeout(config.timeout * 4, answer).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", config.timeout * 4)),
        };
        out.push((url.clone(), result));
    }
    out
}

fn client_for(
    url: &str,
    config: &ClusterConfig,
    ca: Option<&[u8]>,
) -> Result<redis::Client, String> {
    use redis::IntoConnectionInfo;
    let info = url
        .into_connection_info()
        .map_err(|e| format!("[cluster] redis {url:?}: {e}"))?;
    let mut settings = info.redis_settings().clone();
    if let Some(user) = &config.username {
        settings = settings.set_username(user);
    }
    if let Some(password) = &config.password {
        settings = settings.set_password(password.expose());
    }
    let info = info.set_redis_settings(settings);
    let client = match ca {
        Some(ca) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.to_vec()),
            },
        ),
        None => redis::Client::open(info),
    };
    client.map_err(|e| format!("[cluster] redis {url:?}: {e}"))
}

/// A connection to `client` whose answers may take `block` on top of the deadline.
fn manager(
    client: &redis::Client,
    config: &ClusterConfig,
    block: Duration,
) -> Result<ConnectionManager, String> {
    let settings = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.timeout))
        .set_response_timeout(Some(config.timeout + block))
        .set_number_of_retries(1)
        .set_max_delay(config.heartbeat);
    ConnectionManager::new_lazy_with_config(client.clone(), settings)
        .map_err(|e| format!("[cluster] redis: {e}"))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
pub mod testing;
#[cfg(test)]
mod tests;
