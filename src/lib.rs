//! optin-relay: a high-throughput SMTP relay that sends only what recipients agreed to
//! receive.
//!
//! Mail flows through the modules in the order of the pipeline: a client's [`session`]
//! speaks [`smtp`] and checks each recipient against [`consent`] and the [`policy`]; the
//! accepted message is stored durably in the [`spool`]; [`delivery`] takes it from there,
//! has the [`rewrite`] stage add the unsubscribe headers, the consent footer and the DKIM
//! signature per recipient, and sends it on; what comes back (results, bounces,
//! complaints, unsubscribes) feeds [`governance`] (account health, staged campaigns,
//! freezes, webhooks). [`server`] wires it all together and owns the listeners; [`http`]
//! serves the unsubscribe pages and the admin API; [`cli`] is the command line. See
//! `README.md` for the tour.
//!
//! ## Layers
//!
//! Beneath them all is [`smtp`], pure protocol with no I/O: the workspace's own crate
//! `optin-smtp` (in `optin-smtp/`), which cannot use anything of the relay at all.
//!
//! Each module may use the modules of its own layer and of the layers below it, never one
//! above; within a layer, uses must not go round in a loop, and neither may the files of
//! one module. The test in `src/layers.rs` reads every module's `crate::` paths and holds
//! the code to this table.
//!
//! 0. `files`, `dkim`, `dns`, `cpu`, `trim` — private crash-safe files, DKIM keys, and
//!    small process utilities: they use nothing of the crate.
//! 1. `envelope`, `bounce`, `tls`, `metrics`, `config`, `cluster` — the shared vocabulary
//!    of a message (envelope, queue id, stream, clock, bounce categories and the reading of
//!    bounces), TLS set-up, the metric names, the main file, and what several relays share
//!    through Redis.
//! 2. `consent`, `policy` — consent and suppression data; who may send what, and the rules
//!    the policy file declares.
//! 3. `spool`, `dsn` — accepted mail, durably; the relay's delivery status notices and
//!    whom they may go to.
//! 4. `privacy`, `rewrite`, `governance` — logs without addresses, retention and erasure;
//!    the per-recipient rewrite; what results, complaints and unsubscribes do to accounts
//!    and campaigns.
//! 5. `delivery` — the scheduler, routes and outbound SMTP.
//! 6. `session`, `reload`, `http` — the SMTP server side, the live policy reload, the HTTP
//!    listeners.
//! 7. `server` — wires everything and runs it.
//! 8. `cli` — the command line.

pub mod bounce;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod consent;
pub mod cpu;
pub mod delivery;
pub mod dkim;
pub mod dns;
pub mod dsn;
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
pub mod spool;
pub mod tls;
pub mod trim;

/// SMTP as pure protocol: the `optin-smtp` crate of this workspace (`optin-smtp/`).
pub use optin_smtp as smtp;

#[cfg(test)]
mod layers;
