//! `[smtp]`: the SMTP listeners and every limit a client meets, before and after it is
//! known (trusted network or AUTH) — connections, sizes, lines, errors, time, and the
//! throttles on AUTH guessing.

use std::net::SocketAddr;
use std::time::Duration;

use super::reader::{OneOrMany, Section};
use super::units::{ByteSize, HumanDuration};
use super::{addr, positive, system_hostname};

pub const DEFAULT_SMTP_LISTEN: &str = "127.0.0.1:2525";
pub const DEFAULT_MAX_CONNECTIONS: usize = 1000;
/// Connections at once from one client address (IPv6: its /64) once it is known: a
/// trusted network, or sessions that authenticated.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 200;
/// Connections at once from one client address that is neither on a trusted network nor
/// authenticated (yet): strangers may only write to the relay's own addresses.
pub const DEFAULT_MAX_UNTRUSTED_CONNECTIONS_PER_IP: usize = 20;
pub const DEFAULT_MAX_MESSAGE_SIZE: ByteSize = ByteSize::mib(25);
/// Content of all transactions being received at once (see `crate::session::memory`).
pub const DEFAULT_MAX_DATA_MEMORY: ByteSize = ByteSize::mib(512);
pub const DEFAULT_MAX_RECIPIENTS: usize = 1000;
/// Longest command line, CRLF included. RFC 5321 sets 512 as the floor; AUTH lines and
/// SMTPUTF8 paths with parameters need more.
pub const DEFAULT_MAX_COMMAND_LINE: usize = 2048;
/// Longest message line without its CRLF (RFC 5322 §2.1.1).
pub const DEFAULT_MAX_LINE_LENGTH: usize = 998;
pub const DEFAULT_MAX_ERRORS: u32 = 10;
pub const DEFAULT_IDLE_TIMEOUT: HumanDuration = HumanDuration::secs(300);
pub const DEFAULT_SESSION_TIMEOUT: HumanDuration = HumanDuration::secs(1800);
/// Time a client gets to complete a TLS handshake (STARTTLS or implicit TLS).
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: HumanDuration = HumanDuration::secs(10);
pub const DEFAULT_MAX_RECEIVED_HEADERS: usize = 50;
/// Wait before answering the first failed AUTH of a client address or username; it
/// doubles with each further failure, up to [`DEFAULT_AUTH_FAILURE_DELAY_MAX`].
pub const DEFAULT_AUTH_FAILURE_DELAY: HumanDuration = HumanDuration::secs(1);
pub const DEFAULT_AUTH_FAILURE_DELAY_MAX: HumanDuration = HumanDuration::secs(16);
/// Failed AUTHs from one client address (IPv6: its /64) before it is locked out.
pub const DEFAULT_AUTH_MAX_FAILURES: u32 = 10;
/// Failed AUTHs for one username (from anywhere) before it is locked out.
pub const DEFAULT_AUTH_MAX_FAILURES_PER_USER: u32 = 50;
/// How long failures are remembered, and a lockout lasts, after the last failure.
pub const DEFAULT_AUTH_LOCKOUT: HumanDuration = HumanDuration::secs(15 * 60);
pub const DEFAULT_SHUTDOWN_GRACE: HumanDuration = HumanDuration::secs(30);

#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// Plain listeners (STARTTLS offered when TLS is available).
    pub listen: Vec<SocketAddr>,
    /// Implicit-TLS listeners (the port 465 style).
    pub listen_tls: Vec<SocketAddr>,
    /// Our name in the greeting, EHLO, Received headers and DSNs.
    pub hostname: String,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_untrusted_connections_per_ip: usize,
    pub max_message_size: u64,
    /// Content buffers of all transactions being received at once; strangers share 1/8.
    pub max_data_memory: u64,
    pub max_recipients: usize,
    pub max_command_line: usize,
    pub max_line_length: usize,
    pub max_errors: u32,
    pub idle_timeout: Duration,
    pub session_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub max_received_headers: usize,
    pub auth: AuthLimits,
    pub shutdown_grace: Duration,
    /// Where `RCPT TO:<postmaster>` (no domain) goes.
    pub postmaster: crate::smtp::Address,
}

/// How AUTH guessing is slowed and stopped (see `crate::session::guard`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthLimits {
    /// Wait before answering a failed AUTH; doubles per further failure.
    pub failure_delay: Duration,
    pub failure_delay_max: Duration,
    /// Failures of one client address (IPv6: /64) before a lockout.
    pub max_failures: u32,
    /// Failures of one username before a lockout.
    pub max_failures_per_user: u32,
    /// How long failures count, and a lockout lasts, after the last failure.
    pub lockout: Duration,
    /// Password verifications (Argon2, 19 MiB each) running at once.
    pub concurrency: usize,
}

impl Default for AuthLimits {
    fn default() -> Self {
        AuthLimits {
            failure_delay: DEFAULT_AUTH_FAILURE_DELAY.get(),
            failure_delay_max: DEFAULT_AUTH_FAILURE_DELAY_MAX.get(),
            max_failures: DEFAULT_AUTH_MAX_FAILURES,
            max_failures_per_user: DEFAULT_AUTH_MAX_FAILURES_PER_USER,
            lockout: DEFAULT_AUTH_LOCKOUT.get(),
            concurrency: default_auth_concurrency(),
        }
    }
}

/// `listen` or `listen_tls`: one `ip:port` or a list; each wrong one is named.
fn read_addresses(s: &mut Section<'_>, key: &str) -> Option<Vec<SocketAddr>> {
    let given = s.get::<OneOrMany<String>>(key)?.into_vec();
    let mut out = Vec::new();
    let mut wrong = false;
    for v in given {
        match v.parse::<SocketAddr>() {
            Ok(a) => out.push(a),
            Err(_) => {
                wrong = true;
                s.problem(
                    key,
                    format!(
                        "{v:?} is not an ip:port address (like \"127.0.0.1:25\" or \"[::]:25\")"
                    ),
                )
            }
        }
    }
    // Wrong ones are named; the listener list stays as if none were given.
    Some(out).filter(|_| !wrong)
}

pub(super) fn read_smtp(s: &mut Section<'_>) -> SmtpConfig {
    let listen: Vec<SocketAddr> = read_addresses(s, "listen").unwrap_or_else(|| {
        s.default_is("listen", &[DEFAULT_SMTP_LISTEN]);
        vec![addr(DEFAULT_SMTP_LISTEN)]
    });
    let listen_tls: Vec<SocketAddr> = read_addresses(s, "listen_tls").unwrap_or_default();
    if listen.is_empty() && listen_tls.is_empty() {
        s.problem(
            "listen",
            "at least one listen or listen_tls address is needed",
        );
    }
    let hostname = match s.get::<String>("hostname") {
        Some(h) if crate::smtp::address::check_domain(&h).is_ok() => h,
        Some(h) => {
            s.problem("hostname", format!("{h:?} is not a valid host name"));
            system_hostname()
        }
        None => {
            let h = system_hostname();
            s.default_is("hostname", &h);
            h
        }
    };
    let max_command_line = s.get_or("max_command_line", DEFAULT_MAX_COMMAND_LINE);
    if max_command_line < 512 {
        s.problem(
            "max_command_line",
            "must be at least 512 (RFC 5321 §4.5.3.1.4)",
        );
    }
    let max_line_length = s.get_or("max_line_length", DEFAULT_MAX_LINE_LENGTH);
    if !(78..=998).contains(&max_line_length) {
        s.problem(
            "max_line_length",
            "must be between 78 and 998 (the relay never emits longer lines)",
        );
    }
    let max_message_size = s.get_or("max_message_size", DEFAULT_MAX_MESSAGE_SIZE).get();
    if max_message_size < 1024 {
        s.problem("max_message_size", "must be at least 1KiB");
    }
    let max_data_memory = s.get_or("max_data_memory", DEFAULT_MAX_DATA_MEMORY).get();
    if max_data_memory < max_message_size {
        s.problem(
            "max_data_memory",
            "must be at least max_message_size (one message of the largest size must fit)",
        );
    }
    let default_postmaster = crate::smtp::Address::parse(&format!("postmaster@{hostname}"))
        .expect("a valid hostname makes a valid address");
    let postmaster = match s.get::<String>("postmaster") {
        None => {
            s.default_is("postmaster", &default_postmaster.to_string());
            default_postmaster
        }
        Some(p) => crate::smtp::Address::parse(&p).unwrap_or_else(|e| {
            s.problem("postmaster", format!("{p:?} is not a mailbox: {e}"));
            default_postmaster
        }),
    };
    let max_connections = s.get_or("max_connections", DEFAULT_MAX_CONNECTIONS);
    let max_connections_per_ip = s.get_or("max_connections_per_ip", DEFAULT_MAX_CONNECTIONS_PER_IP);
    let max_untrusted = s.get_or(
        "max_untrusted_connections_per_ip",
        DEFAULT_MAX_UNTRUSTED_CONNECTIONS_PER_IP,
    );
    // A stranger never gets more than anyone.
    let max_untrusted = max_untrusted.min(max_connections_per_ip);
    let max_recipients = s.get_or("max_recipients", DEFAULT_MAX_RECIPIENTS);
    let max_errors = s.get_or("max_errors", DEFAULT_MAX_ERRORS);
    let idle_timeout = s.get_or("idle_timeout", DEFAULT_IDLE_TIMEOUT).get();
    let session_timeout = s.get_or("session_timeout", DEFAULT_SESSION_TIMEOUT).get();
    let tls_handshake_timeout = s
        .get_or("tls_handshake_timeout", DEFAULT_TLS_HANDSHAKE_TIMEOUT)
        .get();
    SmtpConfig {
        listen,
        listen_tls,
        hostname,
        max_connections: positive(s, "max_connections", max_connections),
        max_connections_per_ip: positive(s, "max_connections_per_ip", max_connections_per_ip),
        max_untrusted_connections_per_ip: positive(
            s,
            "max_untrusted_connections_per_ip",
            max_untrusted,
        ),
        max_message_size,
        max_data_memory,
        max_recipients: positive(s, "max_recipients", max_recipients),
        max_command_line,
        max_line_length,
        max_errors: positive(s, "max_errors", max_errors),
        idle_timeout: positive(s, "idle_timeout", idle_timeout),
        session_timeout: positive(s, "session_timeout", session_timeout),
        tls_handshake_timeout: positive(s, "tls_handshake_timeout", tls_handshake_timeout),
        max_received_headers: s.get_or("max_received_headers", DEFAULT_MAX_RECEIVED_HEADERS),
        auth: read_auth_limits(s),
        shutdown_grace: s.get_or("shutdown_grace", DEFAULT_SHUTDOWN_GRACE).get(),
        postmaster,
    }
}

fn read_auth_limits(s: &mut Section<'_>) -> AuthLimits {
    let failure_delay = s
        .get_or("auth_failure_delay", DEFAULT_AUTH_FAILURE_DELAY)
        .get();
    let failure_delay_max = s
        .get_or("auth_failure_delay_max", DEFAULT_AUTH_FAILURE_DELAY_MAX)
        .get();
    if failure_delay_max < failure_delay {
        s.problem(
            "auth_failure_delay_max",
            "must not be below auth_failure_delay",
        );
    }
    let max_failures = s.get_or("auth_max_failures", DEFAULT_AUTH_MAX_FAILURES);
    let max_failures_per_user = s.get_or(
        "auth_max_failures_per_user",
        DEFAULT_AUTH_MAX_FAILURES_PER_USER,
    );
    let lockout = s.get_or("auth_lockout", DEFAULT_AUTH_LOCKOUT).get();
    let concurrency = s.get_or("auth_concurrency", default_auth_concurrency());
    AuthLimits {
        failure_delay,
        failure_delay_max,
        max_failures: positive(s, "auth_max_failures", max_failures),
        max_failures_per_user: positive(s, "auth_max_failures_per_user", max_failures_per_user),
        lockout: positive(s, "auth_lockout", lockout),
        concurrency: positive(s, "auth_concurrency", concurrency),
    }
}

/// The default number of AUTH verification slots (`[smtp] auth_concurrency`): the number
/// of cores.
pub fn default_auth_concurrency() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}
