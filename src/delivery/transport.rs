//! How delivery reaches a next hop: resolve a route to targets, connect to one.
//!
//! [`Transport`] is a trait so the delivery engine can be tested over in-memory streams with
//! paused time; [`NetTransport`] is the real one — a smart host from the config, or MX
//! lookup with hickory-resolver (preference order, equal preferences shuffled, the domain's
//! own A/AAAA when it has no MX, RFC 7505 null MX and NXDOMAIN as permanent, anything else
//! as temporary). The resolver caches answers for their TTL.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use rand::seq::SliceRandom;
use tokio::io::{AsyncRead, AsyncWrite};

use super::outcome::ResolveFailure;
use crate::config::{DeliveryConfig, HostPort};

pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}
pub type BoxStream = Box<dyn Stream>;
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a recipient's mail goes: every recipient shares the smart host, otherwise each
/// recipient domain is its own route.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RouteKey {
    Smarthost,
    /// Lower-case A-label domain, or an address literal like `[192.0.2.1]`.
    Domain(String),
}

impl std::fmt::Display for RouteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteKey::Smarthost => f.write_str("smarthost"),
            RouteKey::Domain(d) => f.write_str(d),
        }
    }
}

/// One server to try: its name (for TLS SNI and DSN `Remote-MTA`) and address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub addr: SocketAddr,
}

pub trait Transport: Send + Sync + 'static {
    /// The servers for a route, most preferred first.
    fn resolve<'a>(
        &'a self,
        route: &'a RouteKey,
    ) -> BoxFuture<'a, Result<Vec<Target>, ResolveFailure>>;

    fn connect<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, std::io::Result<BoxStream>>;

    /// Whether routes are per domain (false: everything goes to one smart host).
    fn routes_by_domain(&self) -> bool;
}

pub struct NetTransport {
    smarthost: Option<HostPort>,
    resolver: TokioResolver,
    mx_port: u16,
    connect_timeout: Duration,
}

impl NetTransport {
    pub fn new(config: &DeliveryConfig) -> Result<NetTransport, String> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = match config.dns {
            Some(server) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = server.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = server.port();
                let ns = NameServerConfig::new(server.ip(), true, vec![udp, tcp]);
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![ns]),
                    provider,
                )
            }
            None => TokioResolver::builder(provider)
                .map_err(|e| format!("cannot read the system's DNS configuration: {e}"))?,
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.timeout = Duration::from_secs(5);
        opts.attempts = 2;
        let resolver = builder
            .build()
            .map_err(|e| format!("cannot build the DNS resolver: {e}"))?;
        Ok(NetTransport {
            smarthost: config.smarthost.clone(),
            resolver,
            mx_port: config.mx_port,
            connect_timeout: config.connect_timeout,
        })
    }

    async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, ResolveFailure> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        match self.resolver.lookup_ip(fqdn(host)).await {
            Ok(found) => Ok(found.iter().collect()),
            Err(e) if e.is_nx_domain() => Err(ResolveFailure::NoSuchDomain),
            Err(e) if e.is_no_records_found() => Err(ResolveFailure::NoAddresses),
            Err(e) => Err(ResolveFailure::Temporary(e.to_string())),
        }
    }

    async fn resolve_domain(&self, domain: &str) -> Result<Vec<Target>, ResolveFailure> {
        if let Some(literal) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
            let ip = literal.strip_prefix("IPv6:").unwrap_or(literal);
            let ip: IpAddr = ip.parse().map_err(|_| ResolveFailure::NoAddresses)?;
            return Ok(vec![Target {
                host: ip.to_string(),
                addr: SocketAddr::new(ip, self.mx_port),
            }]);
        }
        let mut exchanges: Vec<(u16, String)> = match self.resolver.mx_lookup(fqdn(domain)).await {
            Ok(lookup) => lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some((mx.preference, mx.exchange.clone())),
                    _ => None,
                })
                .map(|(pref, name)| {
                    let host = if name.is_root() {
                        String::new()
                    } else {
                        name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
                    };
                    (pref, host)
                })
                .collect(),
            Err(e) if e.is_nx_domain() => return Err(ResolveFailure::NoSuchDomain),
            Err(e) if e.is_no_records_found() => Vec::new(),
            Err(e) => return Err(ResolveFailure::Temporary(e.to_string())),
        };
        if exchanges.len() == 1 && exchanges[0].1.is_empty() {
            return Err(ResolveFailure::NullMx);
        }
        exchanges.retain(|(_, host)| !host.is_empty());
        if exchanges.is_empty() {
            // RFC 5321 §5.1: no MX records, so the domain itself is the implicit MX.
            exchanges.push((0, domain.to_string()));
        }
        // Lowest preference first; equal preferences in random order to spread load.
        exchanges.shuffle(&mut rand::rng());
        exchanges.sort_by_key(|(pref, _)| *pref);
        let mut targets = Vec::new();
        let mut last_error = ResolveFailure::NoAddresses;
        for (_, host) in exchanges {
            match self.addresses(&host).await {
                Ok(ips) => targets.extend(ips.into_iter().map(|ip| Target {
                    host: host.clone(),
                    addr: SocketAddr::new(ip, self.mx_port),
                })),
                Err(e) => {
                    tracing::debug!(mx = %host, error = ?e, "MX host does not resolve");
                    last_error = e;
                }
            }
        }
        if targets.is_empty() {
            // A domain whose MX hosts all fail temporarily is retried; one whose MX hosts do
            // not exist has no mail server.
            return Err(match last_error {
                ResolveFailure::Temporary(e) => ResolveFailure::Temporary(e),
                _ => ResolveFailure::NoAddresses,
            });
        }
        Ok(targets)
    }
}

/// A fully-qualified query name, so that resolv.conf search domains never apply.
fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

impl Transport for NetTransport {
    fn resolve<'a>(
        &'a self,
        route: &'a RouteKey,
    ) -> BoxFuture<'a, Result<Vec<Target>, ResolveFailure>> {
        Box::pin(async move {
            match (route, &self.smarthost) {
                (RouteKey::Smarthost, Some(hp)) => {
                    let ips = self.addresses(&hp.host).await.map_err(|e| match e {
                        // A smart host that does not resolve is a configuration problem,
                        // never the recipient's fault: keep the mail and retry.
                        ResolveFailure::Temporary(t) => ResolveFailure::Temporary(t),
                        other => {
                            ResolveFailure::Temporary(format!("smarthost {}: {other:?}", hp.host))
                        }
                    })?;
                    Ok(ips
                        .into_iter()
                        .map(|ip| Target {
                            host: hp.host.clone(),
                            addr: SocketAddr::new(ip, hp.port),
                        })
                        .collect())
                }
                (RouteKey::Smarthost, None) => {
                    Err(ResolveFailure::Temporary("no smarthost configured".into()))
                }
                (RouteKey::Domain(d), _) => self.resolve_domain(d).await,
            }
        })
    }

    fn connect<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, std::io::Result<BoxStream>> {
        Box::pin(async move {
            let stream = tokio::time::timeout(
                self.connect_timeout,
                tokio::net::TcpStream::connect(target.addr),
            )
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as BoxStream)
        })
    }

    fn routes_by_domain(&self) -> bool {
        self.smarthost.is_none()
    }
}
