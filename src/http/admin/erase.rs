//! `POST /admin/erase`: an address erased from this relay — and, in a cluster, from every
//! node. [`Eraser::here`] does one node's part: the erasure suppression (global) first,
//! then the queued mail to the address dropped, its consent records removed, and every
//! plain copy on disk scrubbed ([`crate::privacy::erase`]). The admin API runs it and then
//! tells the other nodes ([`crate::consent::erasures`]), which run it in turn; their
//! listener is wired by the server, with or without an admin listener.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Admin;
use crate::consent::{Kind, Lists, Op, Origin, Reason, Scope};
use crate::delivery::Delivery;
use crate::governance::consents::Consents;
use crate::http::api::{ApiError, ApiResult, bad, body, internal, ok};
use crate::spool::Spool;

/// What erasing an address on this node needs.
#[derive(Clone)]
pub struct Eraser {
    pub delivery: Delivery,
    pub spool: Spool,
    pub lists: Arc<Lists>,
    pub consents: Arc<Consents>,
}

impl Eraser {
    /// Erases the (normalised) `address` on this node; the report of what went.
    pub async fn here(&self, address: &str) -> Result<Value, ApiError> {
        let (lists, one) = (self.lists.clone(), [address.to_string()]);
        tokio::task::spawn_blocking(move || {
            lists.record_addresses(
                Kind::Suppression,
                Scope::Global,
                Op::Add,
                Reason::Erasure.bit(),
                Origin::Operator,
                &one,
            )
        })
        .await
        .map_err(|_| internal("the lists task failed"))?
        .map_err(|e| internal(e.to_string()))?;
        let dropped = self.delivery.erase(address).await?;
        // The proof of its consents goes too.
        let ledger = self.consents.ledger.clone();
        let addr = address.to_string();
        let records = tokio::task::spawn_blocking(move || ledger.erase(&addr))
            .await
            .map_err(|_| internal("the ledger task failed"))?
            .map_err(|e| internal(format!("erasing the consent records: {e}")))?;
        // Then every plain copy on disk: event lines, kept-aside reports, the webhook
        // outbox, and the address's octets in spool records (crate::privacy::erase).
        let scrubbed = crate::privacy::erase::erase(&self.spool, address)
            .await
            .map_err(|e| bad(format!("{e}")))?;
        if !scrubbed.problems.is_empty() {
            tracing::error!(problems = ?scrubbed.problems, "erasure incomplete");
            return Err(internal(format!(
                "erasure incomplete (queued mail dropped and suppression recorded; repeating \
                 the request is harmless): {}",
                scrubbed.problems.join("; ")
            )));
        }
        tracing::info!(
            recipients = dropped,
            spool_records = scrubbed.spool_records,
            event_lines = scrubbed.event_lines,
            complaint_reports = scrubbed.complaint_reports,
            bounce_mail = scrubbed.bounce_mail,
            webhook_files = scrubbed.webhook_files,
            "erasure: queued mail dropped, suppression recorded, plain copies removed"
        );
        Ok(json!({
            "address": address,
            "queued_recipients_dropped": dropped,
            "suppressed": "erasure",
            "consent_records_removed": records,
            "scrubbed": scrubbed,
        }))
    }
}

#[derive(Deserialize)]
struct EraseBody {
    address: String,
}

/// Drops the mail queued to an address and records an `erasure` suppression (global), so
/// nothing more is sent to it and nothing of it stays queued. The suppression comes first:
/// if the queue cannot be reached (shutting down), nothing more is sent and a second
/// request finishes the job. In a cluster the other nodes are told last (`cluster`:
/// `told`); when Redis does not take it the request fails after this node's part (a
/// second request tells them).
pub(super) async fn erase(State(a): State<Admin>, raw: Bytes) -> ApiResult {
    let b: EraseBody = body(&raw)?;
    let address = super::lists::normalised(&b.address)?;
    let eraser = Eraser {
        delivery: a.delivery.clone(),
        spool: a.spool.clone(),
        lists: a.lists.clone(),
        consents: a.consents.clone(),
    };
    let mut report = eraser.here(&address).await?;
    if let Some(cluster) = &a.cluster {
        crate::consent::erasures::announce(cluster, &a.lists, &address)
            .await
            .map_err(|e| {
                internal(format!(
                    "erasure done on this node, but the other nodes were not told ({e}); \
                     repeating the request is harmless"
                ))
            })?;
        report["cluster"] = json!("told");
    }
    ok(report)
}
