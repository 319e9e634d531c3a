//! Mail to the feedback address (`[complaints] address`), where mailbox providers' feedback
//! loops send ARF reports: taken from anyone without AUTH, for that one address only —
//! every other recipient still needs an identified account, so this is no open relay. A
//! client no account knows meets its own limits here: reports per client address and hour
//! (at RCPT) and `[complaints] max_report_size` (at `SIZE=` and during DATA). The report
//! is handled at the end of DATA by [`crate::governance::complaints`] (a complaint
//! suppression, the message kept aside when it is no usable report, or a refusal when it
//! is too complex to read); it is never queued or relayed.

use bytes::Bytes;

use crate::governance::complaints::Outcome;
use crate::smtp::{Address, Refusal};

use super::SessionContext;

/// Whether `to` is the feedback address of a relay that takes complaints.
pub(super) fn is_feedback(ctx: &SessionContext, to: &Address) -> bool {
    ctx.complaints
        .as_ref()
        .is_some_and(|c| c.is_feedback_address(to))
}

/// Handles a finished report, durably, before the reply. A report that cannot be used is
/// still accepted (kept aside); one too complex to read is refused; only when nothing could
/// be stored is it refused for now, so that the provider sends it again.
pub(super) async fn receive(ctx: &SessionContext, body: Bytes) -> Result<(), Refusal> {
    let Some(complaints) = ctx.complaints.clone() else {
        return Ok(());
    };
    match complaints.receive(body).await {
        Ok(Outcome::TooComplex) => Err(Refusal::ReportTooComplex),
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::error!(error = %e, "could not store a feedback report");
            Err(Refusal::SpoolUnavailable)
        }
    }
}
