//! Which site each recipient domain's mail goes to (MX rollup, see [`super::transport`]),
//! kept for the MX records' TTL, and the recipients waiting while a domain is looked up.
//!
//! The scheduler asks [`Sites::route`] for each domain it dispatches to. A domain seen
//! before (and not expired) answers at once; otherwise its recipients [wait](Sites::wait) here while one
//! lookup ([`resolve`]) runs in the background — however many messages arrive for the
//! domain meanwhile — and its result releases them all to their site's queue, or fails them
//! all (a null MX or a domain that does not exist bounces, a DNS failure defers).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::outcome::ResolveFailure;
use super::route::{Indexes, Loaded, Workers};
use super::transport::{RouteKey, Site, TlsDemand};
use crate::envelope::QueueId;

/// The busiest sites named in the summary, `queue shape` and metrics labels; the rest are
/// `other`.
pub const NAMED_SITES: usize = 20;

/// Recipients of one message waiting for their domain's site.
pub(super) struct Waiting {
    pub id: QueueId,
    pub rcpts: Indexes,
    /// A fresh message's envelope and content, kept for its first attempt.
    pub loaded: Option<Box<Loaded>>,
}

enum Known {
    Ready {
        route: RouteKey,
        until: Instant,
    },
    /// A lookup is under way; these wait for it.
    Resolving(Vec<Waiting>),
}

#[derive(Default)]
pub(super) struct Sites {
    known: HashMap<String, Known>,
}

impl Sites {
    /// The domain's route, if known and not expired.
    pub fn route(&self, domain: &str, now: Instant) -> Option<RouteKey> {
        match self.known.get(domain) {
            Some(Known::Ready { route, until }) if *until > now => Some(route.clone()),
            _ => None,
        }
    }

    /// Keeps `waiting` until the domain's lookup ends; returns whether the caller must
    /// start that lookup (none is under way).
    pub fn wait(&mut self, domain: &str, waiting: Waiting) -> bool {
        if let Some(Known::Resolving(list)) = self.known.get_mut(domain) {
            list.push(waiting);
            return false;
        }
        self.known
            .insert(domain.to_string(), Known::Resolving(vec![waiting]));
        true
    }

    /// A lookup ended: remembers the site (failures are not kept: the next message asks
    /// again, and the resolver has its own negative cache) and returns who waited for it.
    pub fn resolved(
        &mut self,
        domain: &str,
        result: &Result<(RouteKey, Duration), ResolveFailure>,
        now: Instant,
    ) -> Vec<Waiting> {
        let waiting = match result {
            Ok((route, ttl)) => self.known.insert(
                domain.to_string(),
                Known::Ready {
                    route: route.clone(),
                    until: now + *ttl,
                },
            ),
            Err(_) => self.known.remove(domain),
        };
        match waiting {
            Some(Known::Resolving(list)) => list,
            _ => Vec::new(),
        }
    }

    /// Everyone still waiting (at shutdown).
    pub fn take_waiting(&mut self) -> Vec<Waiting> {
        let mut all = Vec::new();
        self.known.retain(|_, k| match k {
            Known::Resolving(list) => {
                all.append(list);
                false
            }
            Known::Ready { .. } => true,
        });
        all
    }

    /// Forgets expired sites, so the map holds only domains mail went to recently.
    pub fn expire(&mut self, now: Instant) {
        self.known
            .retain(|_, k| !matches!(k, Known::Ready { until, .. } if *until <= now));
    }
}

/// Looks a domain up: its MX hosts, then what TLS its mail needs — the policy's
/// `[destinations.D] tls` (`verify`: a certificate valid for the MX host's name), and an
/// MTA-STS policy in `enforce` mode, which also limits the site to the MX hosts the policy
/// names. Returns the site and how long it may be kept.
pub(super) async fn resolve(
    ctx: &Workers,
    domain: &str,
) -> Result<(RouteKey, Duration), ResolveFailure> {
    let mx = ctx.transport.mx(domain).await?;
    let mut hosts = mx.hosts;
    let mut tls = ctx
        .settings
        .policy
        .as_ref()
        .map_or(TlsDemand::Opportunistic, |p| {
            p.load().destination_tls(domain).into()
        });
    if let Some(sts) = ctx.transport.mta_sts()
        && let Some(policy) = sts.policy(domain).await
    {
        match policy.mode {
            super::mta_sts::Mode::Enforce => {
                hosts.retain(|(_, host)| policy.mx_matches(host));
                if hosts.is_empty() {
                    tracing::warn!(
                        domain,
                        "MTA-STS: no MX host is one the domain's policy lists"
                    );
                    return Err(ResolveFailure::Temporary(
                        "MTA-STS policy: no MX host matches the policy's mx patterns".into(),
                    ));
                }
                tls = TlsDemand::Verified;
            }
            super::mta_sts::Mode::Testing => {
                tracing::debug!(domain, "MTA-STS policy in testing mode: not enforced");
            }
            super::mta_sts::Mode::None => {}
        }
    }
    Ok((RouteKey::Site(Arc::new(Site::new(hosts, tls))), mx.ttl))
}
