//! How delivery reaches a next hop: find a domain's site, resolve a site to targets,
//! connect to one.
//!
//! A *site* is a set of MX hosts (MX rollup): every domain whose MX records name the same
//! hosts (all the domains Google hosts, say) shares one site, and with it one queue, one
//! connection pool, one set of throttles and one adaptive-shaping state. How mail to the
//! site must be protected (opportunistic STARTTLS, TLS required by the policy, or MTA-STS
//! `enforce`) is part of the site, so a domain that demands more never shares a plain-text
//! connection with one that does not.
//!
//! [`Transport`] is a trait so the delivery engine can be tested over in-memory streams with
//! paused time; [`NetTransport`] is the real one — a smart host from the config, or MX
//! lookup with hickory-resolver (preference order, equal preferences shuffled, the domain's
//! own A/AAAA when it has no MX, RFC 7505 null MX and NXDOMAIN as permanent, anything else
//! as temporary) and MTA-STS ([`super::mta_sts`]). The resolver caches answers for their
//! TTL; the scheduler keeps each domain's site for the MX records' TTL.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;
use rand::seq::SliceRandom;
use tokio::io::{AsyncRead, AsyncWrite};

use super::mta_sts::MtaSts;
use super::outcome::ResolveFailure;
use crate::config::{DeliveryConfig, HostPort, TlsLevel};

/// A connected byte stream to a next hop: TCP, TLS, or an in-memory pipe in tests.
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ByteStream for T {}
pub type BoxStream = Box<dyn ByteStream>;
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a recipient's mail goes: every recipient shares the smart host, otherwise the
/// site of the recipient's domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RouteKey {
    Smarthost,
    Site(Arc<Site>),
}

/// The mail servers some domains share, and how mail to them must be protected.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Site {
    /// (preference, host), lowest preference first; host names are lower case without the
    /// trailing dot, and may be an IP address (for address literals like `[192.0.2.1]`).
    pub mx: Vec<(u16, String)>,
    pub tls: TlsDemand,
}

/// What TLS a site's (or the smart host's) mail needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsDemand {
    /// STARTTLS when offered, any certificate; plain text otherwise.
    Opportunistic,
    /// TLS or nothing (`tls = "required"`); any certificate.
    Required,
    /// TLS with a certificate valid for the server's name, or nothing (`tls = "verify"`,
    /// MTA-STS `enforce`).
    Verified,
}

impl From<TlsLevel> for TlsDemand {
    fn from(level: TlsLevel) -> TlsDemand {
        match level {
            TlsLevel::Opportunistic => TlsDemand::Opportunistic,
            TlsLevel::Required => TlsDemand::Required,
            TlsLevel::Verify => TlsDemand::Verified,
        }
    }
}

impl Site {
    /// A domain's site when it has MX hosts `mx` and needs `tls`.
    pub fn new(mut mx: Vec<(u16, String)>, tls: TlsDemand) -> Site {
        // Sorted by preference then name, so that equal sets make equal sites.
        mx.sort();
        mx.dedup();
        Site { mx, tls }
    }
}

impl std::fmt::Display for RouteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteKey::Smarthost => f.write_str("smarthost"),
            RouteKey::Site(site) => {
                for (i, (_, host)) in site.mx.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    f.write_str(host)?;
                }
                match site.tls {
                    TlsDemand::Opportunistic => Ok(()),
                    TlsDemand::Required => f.write_str(" (tls required)"),
                    TlsDemand::Verified => f.write_str(" (tls verified)"),
                }
            }
        }
    }
}

/// A domain's MX hosts and how long the answer may be kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHosts {
    /// (preference, host) as in [`Site::mx`].
    pub hosts: Vec<(u16, String)>,
    pub ttl: Duration,
}

/// One server to try: its name (for TLS SNI and DSN `Remote-MTA`) and address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub addr: SocketAddr,
}

pub trait Transport: Send + Sync + 'static {
    /// A domain's MX hosts (its own name when it has no MX records). The default treats the
    /// domain as its own, single mail server, kept for an hour (transports in tests).
    fn mx<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<MxHosts, ResolveFailure>> {
        Box::pin(async move {
            Ok(MxHosts {
                hosts: vec![(0, domain.to_string())],
                ttl: Duration::from_secs(3600),
            })
        })
    }

    /// MTA-STS policy discovery; `None`: MTA-STS is not used.
    fn mta_sts(&self) -> Option<&MtaSts> {
        None
    }

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
    /// The smart host's address, and the name it is known by (SNI, its certificate).
    smarthost: Option<(HostPort, String)>,
    resolver: TokioResolver,
    mx_port: u16,
    connect_timeout: Duration,
    mta_sts: Option<MtaSts>,
}

impl NetTransport {
    pub fn new(config: &DeliveryConfig) -> Result<NetTransport, String> {
        let resolver = crate::dns::resolver(config.dns)?;
        let mta_sts = if config.mta_sts
            && config.smarthost.is_none()
            && config.starttls == crate::config::StartTlsPolicy::Opportunistic
        {
            let tls = crate::tls::verifying_client_config(config.tls_roots.as_deref())
                .map_err(|e| e.to_string())?;
            Some(MtaSts::new(
                resolver.clone(),
                tls,
                config.mta_sts_port,
                Duration::from_secs(10),
            ))
        } else {
            None
        };
        Ok(NetTransport {
            smarthost: config
                .smarthost
                .as_ref()
                .map(|s| (s.address.clone(), s.server_name.clone())),
            mta_sts,
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

    async fn mx_hosts(&self, domain: &str) -> Result<MxHosts, ResolveFailure> {
        if let Some(literal) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
            let ip = literal.strip_prefix("IPv6:").unwrap_or(literal);
            let ip: IpAddr = ip.parse().map_err(|_| ResolveFailure::NoAddresses)?;
            return Ok(MxHosts {
                hosts: vec![(0, ip.to_string())],
                ttl: Duration::from_secs(86400),
            });
        }
        let (mut hosts, ttl): (Vec<(u16, String)>, Duration) =
            match self.resolver.mx_lookup(fqdn(domain)).await {
                Ok(lookup) => {
                    let ttl = lookup
                        .valid_until()
                        .saturating_duration_since(std::time::Instant::now());
                    let hosts = lookup
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
                        .collect();
                    (hosts, ttl)
                }
                Err(e) if e.is_nx_domain() => return Err(ResolveFailure::NoSuchDomain),
                Err(e) if e.is_no_records_found() => (Vec::new(), MIN_SITE_TTL),
                Err(e) => return Err(ResolveFailure::Temporary(e.to_string())),
            };
        if hosts.len() == 1 && hosts[0].1.is_empty() {
            return Err(ResolveFailure::NullMx);
        }
        hosts.retain(|(_, host)| !host.is_empty());
        if hosts.is_empty() {
            // RFC 5321 §5.1: no MX records, so the domain itself is the implicit MX.
            hosts.push((0, domain.to_string()));
        }
        Ok(MxHosts {
            hosts,
            ttl: ttl.clamp(MIN_SITE_TTL, MAX_SITE_TTL),
        })
    }

    async fn resolve_site(&self, site: &Site) -> Result<Vec<Target>, ResolveFailure> {
        // Lowest preference first; equal preferences in random order to spread load.
        let mut hosts: Vec<&(u16, String)> = site.mx.iter().collect();
        hosts.shuffle(&mut rand::rng());
        hosts.sort_by_key(|(pref, _)| *pref);
        let mut targets = Vec::new();
        let mut last_error = ResolveFailure::NoAddresses;
        for (_, host) in hosts {
            match self.addresses(host).await {
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
            // A site whose hosts all fail temporarily is retried; one whose hosts do not
            // exist has no mail server.
            return Err(match last_error {
                ResolveFailure::Temporary(e) => ResolveFailure::Temporary(e),
                _ => ResolveFailure::NoAddresses,
            });
        }
        Ok(targets)
    }
}

/// How long a domain's site is kept at least (very short TTLs would mean a lookup per
/// message) and at most (so MX changes are seen within the hour).
const MIN_SITE_TTL: Duration = Duration::from_secs(60);
const MAX_SITE_TTL: Duration = Duration::from_secs(3600);

/// A fully-qualified query name, so that resolv.conf search domains never apply.
fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

impl Transport for NetTransport {
    fn mx<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<MxHosts, ResolveFailure>> {
        Box::pin(self.mx_hosts(domain))
    }

    fn mta_sts(&self) -> Option<&MtaSts> {
        self.mta_sts.as_ref()
    }

    fn resolve<'a>(
        &'a self,
        route: &'a RouteKey,
    ) -> BoxFuture<'a, Result<Vec<Target>, ResolveFailure>> {
        Box::pin(async move {
            match (route, &self.smarthost) {
                (RouteKey::Smarthost, Some((hp, name))) => {
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
                            host: name.clone(),
                            addr: SocketAddr::new(ip, hp.port),
                        })
                        .collect())
                }
                (RouteKey::Smarthost, None) => {
                    Err(ResolveFailure::Temporary("no smarthost configured".into()))
                }
                (RouteKey::Site(site), _) => self.resolve_site(site).await,
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
