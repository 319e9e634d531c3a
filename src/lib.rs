//! optin-relay: a high-throughput SMTP relay that sends only what recipients agreed to
//! receive.
//!
//! The map (see `README.md` for the full tour): [`smtp`] is pure protocol; [`session`] runs
//! one client connection over any stream; [`server`] owns listeners, TLS and limits and wires
//! everything together; [`spool`] keeps accepted mail durably; [`delivery`] sends it on;
//! [`policy`] says who may send; [`config`] reads the main file; [`http`] and [`metrics`]
//! are the operator's window.

pub mod cli;
pub mod config;
pub mod consent;
pub mod cpu;
pub mod delivery;
pub mod dkim;
pub mod dns;
pub mod envelope;
pub mod files;
pub mod governance;
pub mod http;
pub mod metrics;
pub mod policy;
pub mod privacy;
pub mod reload;
pub mod rewrite;
pub mod server;
pub mod session;
pub mod smtp;
pub mod spool;
pub mod tls;
pub mod trim;
