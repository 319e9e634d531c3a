//! Test support shared by the integration tests: a fake MX scripted by recipient and a
//! fake DNS server answering from zone text (both in-process), a test CA and an HTTPS
//! server for MTA-STS policies, relays started in-process or as the binary, hand-written
//! SMTP and HTTP clients, policy builders, polling with a deadline, the delivery engine
//! on its own, an envelope builder, memory figures, and running a test alone in a process
//! of its own.

pub mod alone;
pub mod dns;
pub mod engine;
pub mod envelope;
pub mod http;
pub mod memory;
pub mod mx;
pub mod policy;
pub mod poll;
pub mod relay;
pub mod smtp;
pub mod tls;

pub use dns::FakeDns;
pub use http::{Admin, http, http_as, http_on, metric, request, sample};
pub use mx::{FakeMx, InMemoryMx, Login, MxAuth, MxOptions, TlsBreak};
pub use policy::{Account, SIGNED_UP, SUBSCRIBED, policy};
pub use poll::{eventually, poll, settle};
pub use relay::{
    LOOPBACK_POLICY, Running, bin, confirm_path_of, events, free_addr, free_port, grant, grant_all,
    journal_records, record, start_relay, token_of, wait_listening,
};
pub use smtp::{Client, mail_reply, raw_send, rcpt_reply, send_ok, session};
pub use tls::{PolicyServer, TestCa, serve_policy};

/// Asserts that `text` holds each of `expected`, naming the first one it does not.
#[track_caller]
pub fn assert_has(text: &str, expected: &[&str]) {
    for e in expected {
        assert!(text.contains(e), "{e} missing from\n{text}");
    }
}
