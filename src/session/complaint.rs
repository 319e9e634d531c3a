//! Mail to the feedback address (`[complaints] address`), where mailbox providers' feedback
//! loops send ARF reports: taken from anyone without AUTH, for that one address only —
//! every other recipient still needs an identified account, so this is no open relay. The
//! report is handled at the end of DATA by [`crate::governance::complaints`] (a complaint
//! suppression, or the message kept aside when it is no usable report); it is never
//! queued or relayed.

use crate::smtp::{Address, Refusal};

use super::SessionContext;

/// Whether `to` is the feedback address of a relay that takes complaints.
pub(super) fn is_feedback(ctx: &SessionContext, to: &Address) -> bool {
    ctx.complaints
        .as_ref()
        .is_some_and(|c| c.is_feedback_address(to))
}

/// Handles a finished report, durably, before the reply. A report that cannot be used is
/// still accepted (kept aside); only when nothing could be stored is it refused, for now,
/// so that the provider sends it again.
pub(super) async fn receive(ctx: &SessionContext, body: Vec<u8>) -> Result<(), Refusal> {
    let Some(complaints) = ctx.complaints.clone() else {
        return Ok(());
    };
    match tokio::task::spawn_blocking(move || complaints.receive(&body)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "could not store a feedback report");
            Err(Refusal::SpoolUnavailable)
        }
        Err(e) => {
            tracing::error!(error = %e, "handling a feedback report failed");
            Err(Refusal::SpoolUnavailable)
        }
    }
}
