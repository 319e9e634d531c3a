//! The integration tests, in one test binary: each module tests one area of the relay
//! through its public API, over real sockets, or by running the `optin-relay` binary;
//! [`support`] holds what they share (fake MX and DNS servers, an SMTP and an HTTP client,
//! a test CA, policy builders, polling).
//!
//! One binary links the relay once instead of once per area. What is global to a process
//! is handled here: the counting allocator is this binary's (a few atomic additions per
//! allocation), and the tests that measure the whole process — its heap, the metrics
//! recorder — run alone in a process of their own ([`support::alone`]).

mod support;

mod account_api;
mod admin;
mod admin_cli;
mod bounces;
mod campaigns;
mod cli;
mod cluster;
mod complaints;
mod consent;
mod content;
mod crash;
mod e2e;
mod faults;
mod governance;
mod http;
mod memory;
mod metrics;
mod mta_sts;
mod operations;
mod outbound_tls;
mod preferences;
mod privacy;
mod reload;
mod retry;
mod rewrite;
mod sites;
mod subscribe;
mod tracking;
mod unsubscribe;
mod webhooks;

#[global_allocator]
static ALLOCATOR: support::memory::Counting = support::memory::Counting;
