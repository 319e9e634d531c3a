//! Cluster mode's wiring (`[cluster]`): joining (the heartbeat, the consent feed, the
//! canaries counted across the nodes) before delivery starts, and, once it runs, what the
//! other nodes' decisions do here — a freeze or unfreeze, a campaign's verdict, an
//! erasure made elsewhere.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use super::StartError;
use super::open::{Governance, State};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::delivery::Delivery;
use crate::policy::Policy;
use crate::reload::PolicyReloader;

/// With `[cluster]`: this node's handle on the shared Redis, its heartbeat started (it
/// stops, and the node leaves the table, with delivery). Redis being down does not stop
/// the start: the node runs on its share of the limits until Redis answers.
pub(super) fn join(
    config: &Config,
    state: &State,
    reloader: &Arc<PolicyReloader>,
    stop: CancellationToken,
) -> Result<Option<Arc<Cluster>>, StartError> {
    let Some(cluster_config) = &config.cluster else {
        return Ok(None);
    };
    let cluster = Cluster::new(cluster_config.clone()).map_err(StartError::State)?;
    let reloader = reloader.clone();
    cluster.start(
        Arc::new(move || {
            let status = reloader.status();
            crate::cluster::NodeReport {
                version: env!("CARGO_PKG_VERSION").to_string(),
                policy_generation: status.generation,
                policy_digest: status.digest,
            }
        }),
        stop.clone(),
    );
    tracing::info!(
        node = cluster.node_id(),
        redis = ?cluster_config.redis,
        "cluster mode: paces, connection caps and shaping are shared through Redis"
    );
    crate::consent::feed::spawn(
        state.lists.clone(),
        cluster.clone(),
        config.lists.compact_after,
        stop,
    )
    .map_err(StartError::State)?;
    // Before any mail is admitted: canaries are counted across the cluster.
    state.campaigns.share(cluster.clone());
    Ok(Some(cluster))
}

/// Once delivery runs: health windows and freezes shared (an unfreeze elsewhere releases
/// the account's held mail here too), one canary and one verdict per campaign (a verdict
/// from elsewhere moves the held mail here), and erasures made on other nodes carried out
/// here.
pub(super) fn share(
    cluster: &Arc<Cluster>,
    state: &State,
    gov: &Governance,
    policy: &Arc<ArcSwap<Policy>>,
    delivery: &Delivery,
    stop: CancellationToken,
) {
    let d = delivery.clone();
    crate::governance::shared::spawn(
        gov.governor.clone(),
        cluster.clone(),
        Arc::new(move |account: &str| d.release(account)),
        stop.clone(),
    );
    let d = delivery.clone();
    crate::governance::campaign::shared::spawn(
        state.campaigns.clone(),
        cluster.clone(),
        policy.clone(),
        Arc::new(move |key: &str| d.campaign_verdict(key)),
        stop.clone(),
    );
    let eraser = crate::http::admin::erase::Eraser {
        delivery: delivery.clone(),
        spool: state.spool.clone(),
        lists: state.lists.clone(),
        consents: gov.consents.clone(),
    };
    crate::consent::erasures::spawn(
        state.lists.clone(),
        cluster.clone(),
        Arc::new(move |address: String| {
            let eraser = eraser.clone();
            Box::pin(async move { eraser.here(&address).await.map(|_| ()).map_err(|e| e.1) })
        }),
        stop,
    );
}
