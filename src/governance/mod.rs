//! Governance: what the relay decides about accounts and campaigns as a whole, beyond
//! single messages: freezing an account ([`freeze`]: its new submissions are refused and its
//! queued marketing mail is held until an operator unfreezes it), and staged campaign
//! release ([`campaign`]: a canary first, the rest after a verdict on its figures).

pub mod campaign;
pub mod freeze;
