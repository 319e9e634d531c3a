//! Governance: what the relay decides about accounts as a whole, beyond single messages.
//! Today that is freezing an account ([`freeze`]): its new submissions are refused and its
//! queued marketing mail is held until an operator unfreezes it.

pub mod freeze;
