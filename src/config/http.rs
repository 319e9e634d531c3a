//! The `[http]` (public listener) and `[admin]` (operator listener) sections, and the
//! warnings `config check` prints about settings that are legal but unwise.
//!
//! The public listener serves what strangers reach — unsubscribe links, the report form,
//! `/healthz` — so every limit that protects it from a hostile client is here, each with a
//! named default. The operator listener (admin API, `/metrics`) shares the timeouts and
//! connection caps and has its own body size cap. This module only reads and checks
//! values; it must never bind a socket or serve anything (`crate::http` does).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::reader::{Problem, Section};
use super::units::{ByteSize, HumanDuration};
use super::{Config, addr, positive};

pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8025";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8026";
/// Connections open at once on one HTTP listener; more are refused.
pub const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 1000;
/// Connections open at once from one client (an IPv4 address or an IPv6 /64).
pub const DEFAULT_HTTP_MAX_CONNECTIONS_PER_IP: usize = 20;
/// Time to send a request's head (request line and header fields), counted from the
/// connection's start or, on a kept-alive connection, from the end of the previous answer.
pub const DEFAULT_HTTP_HEADER_TIMEOUT: HumanDuration = HumanDuration::secs(10);
/// Time to send a request's body, counted from the end of its head.
pub const DEFAULT_HTTP_BODY_TIMEOUT: HumanDuration = HumanDuration::secs(10);
/// Silence allowed in both directions while no request is being answered (a kept-alive
/// connection waiting, a client that stops reading its answer).
pub const DEFAULT_HTTP_IDLE_TIMEOUT: HumanDuration = HumanDuration::secs(5);
/// Largest request head; larger gets `431`.
pub const DEFAULT_HTTP_MAX_HEADER_SIZE: ByteSize = ByteSize(16 << 10);
/// Largest request body on the public listener (its forms are a few dozen octets);
/// larger gets `413`.
pub const DEFAULT_HTTP_MAX_BODY_SIZE: ByteSize = ByteSize(64 << 10);
/// Largest request body on the operator listener (a batch of addresses for the lists).
pub const DEFAULT_ADMIN_MAX_BODY_SIZE: ByteSize = ByteSize::mib(1);

/// Largest file uploaded to the account API (about 20 million addresses).
pub const DEFAULT_MAX_UPLOAD_SIZE: ByteSize = ByteSize::mib(512);
/// Time to upload one file.
pub const DEFAULT_UPLOAD_TIMEOUT: HumanDuration = HumanDuration::secs(1800);
/// Upload jobs one account may have running or queued.
pub const DEFAULT_MAX_UPLOAD_JOBS: usize = 2;

/// The account API (`/account/…` on the public listener; see `crate::http::account`).
#[derive(Debug, Clone, Copy)]
pub struct AccountApiConfig {
    pub enabled: bool,
    pub max_upload_size: u64,
    /// Time for a whole upload.
    pub upload_timeout: Duration,
    /// Silence allowed between two parts of an upload (`[http] body_timeout`).
    pub chunk_timeout: Duration,
    pub max_jobs: usize,
}

pub(super) fn read_account_api(s: &mut Section<'_>, http: &HttpConfig) -> AccountApiConfig {
    let max_jobs = s.get_or("max_jobs", DEFAULT_MAX_UPLOAD_JOBS);
    let timeout = s.get_or("upload_timeout", DEFAULT_UPLOAD_TIMEOUT).get();
    AccountApiConfig {
        enabled: s.get_or("enabled", true),
        max_upload_size: read_size(
            s,
            "max_upload_size",
            DEFAULT_MAX_UPLOAD_SIZE,
            1 << 10,
            16 << 30,
        ) as u64,
        upload_timeout: positive(s, "upload_timeout", timeout),
        chunk_timeout: http.limits.body_timeout,
        max_jobs: positive(s, "max_jobs", max_jobs),
    }
}

/// Subscription forms (`POST /s/ACCOUNT/LIST`, see `crate::http::subscribe`): what keeps
/// a form from being used to mail-bomb someone or to burn the sender's reputation.
#[derive(Debug, Clone, Copy)]
pub struct SubscribeConfig {
    /// Form posts taken from one client address (IPv6: its /64) per hour.
    pub max_per_ip: u32,
    /// Confirmation messages sent to one address per day.
    pub max_per_address: u32,
    /// Confirmation messages sent in all per hour.
    pub max_per_hour: u32,
    /// How long a confirmation link works.
    pub confirm_ttl: Duration,
}

pub const DEFAULT_SUBSCRIBE_MAX_PER_IP: u32 = 10;
pub const DEFAULT_SUBSCRIBE_MAX_PER_ADDRESS: u32 = 3;
pub const DEFAULT_SUBSCRIBE_MAX_PER_HOUR: u32 = 1000;
pub const DEFAULT_CONFIRM_TTL: HumanDuration = HumanDuration::secs(72 * 3600);

pub(super) fn read_subscribe(s: &mut Section<'_>) -> SubscribeConfig {
    let per_ip = s.get_or("max_per_ip", DEFAULT_SUBSCRIBE_MAX_PER_IP);
    let per_address = s.get_or("max_per_address", DEFAULT_SUBSCRIBE_MAX_PER_ADDRESS);
    let per_hour = s.get_or("max_per_hour", DEFAULT_SUBSCRIBE_MAX_PER_HOUR);
    let ttl = s.get_or("confirm_ttl", DEFAULT_CONFIRM_TTL).get();
    SubscribeConfig {
        max_per_ip: positive(s, "max_per_ip", per_ip),
        max_per_address: positive(s, "max_per_address", per_address),
        max_per_hour: positive(s, "max_per_hour", per_hour),
        confirm_ttl: positive(s, "confirm_ttl", ttl),
    }
}

/// Limits of one HTTP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    pub max_connections: usize,
    /// Per IPv4 address, or per IPv6 /64 (one subscriber's usual share).
    pub max_connections_per_ip: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_size: usize,
    pub max_body_size: usize,
}

/// The public listener: unsubscribe links, the report form, `/healthz`.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// `None` when `listen = ""` turns it off.
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain; with `private_key` the listener speaks only HTTPS.
    pub certificate: Option<PathBuf>,
    pub private_key: Option<PathBuf>,
    pub limits: HttpLimits,
}

impl HttpConfig {
    /// Whether the public listener speaks HTTPS itself.
    pub fn tls(&self) -> bool {
        self.certificate.is_some() && self.private_key.is_some()
    }
}

/// The operator listener (admin API and `/metrics`) and the admin API's bearer token:
/// given here, or kept in a file (created with a random token on first start, mode 0600)
/// that the CLI on the same machine reads.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// `None` when `listen = ""` turns it off.
    pub listen: Option<SocketAddr>,
    pub token: Option<String>,
    pub token_file: PathBuf,
    pub max_body_size: usize,
}

/// `listen`: an address, or `""` for off.
fn read_listen(s: &mut Section<'_>, default: &str) -> Option<SocketAddr> {
    match s.get::<String>("listen") {
        None => {
            s.default_is("listen", &default);
            Some(addr(default))
        }
        Some(v) if v.is_empty() => None,
        Some(v) => match v.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                s.problem("listen", format!("{v:?} is not an ip:port address"));
                None
            }
        },
    }
}

fn read_size(s: &mut Section<'_>, key: &str, default: ByteSize, min: u64, max: u64) -> usize {
    let v = s.get_or(key, default).get();
    if !(min..=max).contains(&v) {
        s.problem(
            key,
            format!("must be between {} and {}", ByteSize(min), ByteSize(max)),
        );
    }
    usize::try_from(v).unwrap_or(usize::MAX)
}

pub(super) fn read_http(s: &mut Section<'_>) -> HttpConfig {
    let listen = read_listen(s, DEFAULT_HTTP_LISTEN);
    let certificate = s.get_path("certificate");
    let private_key = s.get_path("private_key");
    match (&certificate, &private_key) {
        (Some(cert), Some(key)) => {
            // Checked now so `config check` reports a bad file instead of the start.
            let files = crate::tls::TlsConfig {
                certificate: Some(cert.clone()),
                private_key: Some(key.clone()),
            };
            if let Err(e) = crate::tls::server_config(&files, "localhost") {
                s.problem("certificate", e.to_string());
            }
        }
        (None, None) => {}
        _ => s.problem("certificate", "certificate and private_key go together"),
    }
    let max_connections = s.get_or("max_connections", DEFAULT_HTTP_MAX_CONNECTIONS);
    let per_ip = s.get_or(
        "max_connections_per_ip",
        DEFAULT_HTTP_MAX_CONNECTIONS_PER_IP,
    );
    let header_timeout = s
        .get_or("header_timeout", DEFAULT_HTTP_HEADER_TIMEOUT)
        .get();
    let body_timeout = s.get_or("body_timeout", DEFAULT_HTTP_BODY_TIMEOUT).get();
    let idle_timeout = s.get_or("idle_timeout", DEFAULT_HTTP_IDLE_TIMEOUT).get();
    let limits = HttpLimits {
        max_connections: positive(s, "max_connections", max_connections),
        max_connections_per_ip: positive(s, "max_connections_per_ip", per_ip),
        header_timeout: positive(s, "header_timeout", header_timeout),
        body_timeout: positive(s, "body_timeout", body_timeout),
        idle_timeout: positive(s, "idle_timeout", idle_timeout),
        max_header_size: read_size(
            s,
            "max_header_size",
            DEFAULT_HTTP_MAX_HEADER_SIZE,
            1 << 10,
            1 << 20,
        ),
        max_body_size: read_size(
            s,
            "max_body_size",
            DEFAULT_HTTP_MAX_BODY_SIZE,
            1 << 10,
            64 << 20,
        ),
    };
    HttpConfig {
        listen,
        certificate,
        private_key,
        limits,
    }
}

pub(super) fn read_admin(
    s: &mut Section<'_>,
    spool: &std::path::Path,
    public: Option<SocketAddr>,
) -> AdminConfig {
    let listen = read_listen(s, DEFAULT_ADMIN_LISTEN);
    if let (Some(a), Some(p)) = (listen, public)
        && a == p
        && a.port() != 0
    {
        s.problem(
            "listen",
            "must differ from http.listen: the admin API and /metrics are never served on \
             the public listener",
        );
    }
    let token = match s.get::<String>("token") {
        Some(t) if t.is_empty() => None,
        Some(t) if t.len() < 16 => {
            s.problem(
                "token",
                "must be at least 16 characters (or empty: use token_file)",
            );
            None
        }
        Some(t) => Some(t),
        None => None,
    };
    AdminConfig {
        listen,
        token,
        token_file: s.get_path_or("token_file", spool.join("admin.token")),
        max_body_size: read_size(
            s,
            "max_body_size",
            DEFAULT_ADMIN_MAX_BODY_SIZE,
            1 << 10,
            64 << 20,
        ),
    }
}

/// Whether mail and people beyond this machine can reach `ip`.
fn beyond_loopback(ip: IpAddr) -> bool {
    !ip.is_loopback()
}

/// The host of an `http(s)://HOST[:PORT][/…]` URL, without brackets.
fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    }
}

/// A host no recipient elsewhere can reach.
fn local_host(host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    host == "localhost"
        || host.ends_with(".localhost")
        || host
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
}

impl Config {
    /// Settings that are legal but unwise, with their key paths: printed by `config
    /// check` (which still succeeds) and logged at start.
    pub fn warnings(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut warn = |path: &str, message: String| {
            out.push(Problem {
                path: path.into(),
                message,
            })
        };
        let smtp_public = self
            .smtp
            .listen
            .iter()
            .chain(&self.smtp.listen_tls)
            .any(|a| beyond_loopback(a.ip()));
        let url = &self.unsubscribe.public_url;
        if smtp_public {
            if url.to_ascii_lowercase().starts_with("http://") {
                warn(
                    "unsubscribe.public_url",
                    format!(
                        "{url:?} is plain http while SMTP listens beyond loopback: mailbox \
                         providers want an https one-click link (RFC 8058); set [http] \
                         certificate and private_key, or put a TLS proxy in front and give \
                         its https address"
                    ),
                );
            }
            if local_host(url_host(url)) {
                warn(
                    "unsubscribe.public_url",
                    format!(
                        "{url:?} names this machine's loopback (or no address) while SMTP \
                         listens beyond loopback: recipients elsewhere cannot reach the \
                         unsubscribe links"
                    ),
                );
            }
        }
        if smtp_public && self.delivery.mode == super::DeliveryMode::Capture {
            warn(
                "delivery.mode",
                "is \"capture\" while SMTP listens beyond loopback: clients elsewhere are \
                 told their mail was accepted, and none of it is ever delivered"
                    .into(),
            );
        }
        if !self.spool.fsync {
            warn(
                "spool.fsync",
                "is false: a power failure can lose mail the relay has already accepted \
                 with 250 (only for throwaway test setups)"
                    .into(),
            );
        }
        if self.delivery.starttls == super::StartTlsPolicy::Disabled
            && self.delivery.smarthost.is_none()
        {
            warn(
                "delivery.starttls",
                "is \"disabled\": mail to every site crosses the Internet in plain text, \
                 even where the receiver offers STARTTLS"
                    .into(),
            );
        }
        if let Some(a) = self.admin.listen
            && beyond_loopback(a.ip())
        {
            warn(
                "admin.listen",
                format!(
                    "{a} is beyond loopback: the operator listener serves /metrics without \
                     a token, and the admin API's token travels in plain HTTP; keep it on \
                     loopback or behind a proxy that restricts and encrypts it"
                ),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::from_toml("t", text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn defaults_are_named_and_split() {
        let c = Config::embedded_default();
        assert_eq!(c.http.listen, Some(addr(DEFAULT_HTTP_LISTEN)));
        assert_eq!(c.admin.listen, Some(addr(DEFAULT_ADMIN_LISTEN)));
        assert!(!c.http.tls());
        let l = c.http.limits;
        assert_eq!(l.max_connections, DEFAULT_HTTP_MAX_CONNECTIONS);
        assert_eq!(
            l.max_connections_per_ip,
            DEFAULT_HTTP_MAX_CONNECTIONS_PER_IP
        );
        assert_eq!(l.header_timeout, Duration::from_secs(10));
        assert_eq!(l.body_timeout, Duration::from_secs(10));
        assert_eq!(l.idle_timeout, Duration::from_secs(5));
        assert_eq!(l.max_header_size, 16 << 10);
        assert_eq!(l.max_body_size, 64 << 10);
        assert_eq!(c.admin.max_body_size, 1 << 20);
        assert_eq!(c.unsubscribe.public_url, "http://127.0.0.1:8025");
    }

    #[test]
    fn every_limit_is_read_and_checked() {
        let c = config(
            "[http]\nmax_connections = 5\nmax_connections_per_ip = 2\nheader_timeout = \"1s\"\n\
             body_timeout = \"2s\"\nidle_timeout = \"3s\"\nmax_header_size = \"8KiB\"\n\
             max_body_size = \"2KiB\"\n[admin]\nlisten = \"\"\nmax_body_size = \"4MiB\"\n",
        );
        assert_eq!(
            c.http.limits,
            HttpLimits {
                max_connections: 5,
                max_connections_per_ip: 2,
                header_timeout: Duration::from_secs(1),
                body_timeout: Duration::from_secs(2),
                idle_timeout: Duration::from_secs(3),
                max_header_size: 8 << 10,
                max_body_size: 2 << 10,
            }
        );
        assert_eq!(c.admin.listen, None);
        assert_eq!(c.admin.max_body_size, 4 << 20);
        let err = Config::from_toml(
            "t",
            "[http]\nlisten = \"127.0.0.1:9000\"\nmax_connections = 0\nheader_timeout = \"0s\"\n\
             max_header_size = 100\nmax_body_size = \"1GiB\"\nprivate_key = \"k.pem\"\n\
             [admin]\nlisten = \"127.0.0.1:9000\"\n",
        )
        .unwrap_err();
        let paths: Vec<&str> = err.list.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "admin.listen",
                "http.certificate",
                "http.header_timeout",
                "http.max_body_size",
                "http.max_connections",
                "http.max_header_size",
            ],
            "{err}"
        );
    }

    #[test]
    fn a_certificate_that_cannot_be_loaded_is_a_problem() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        std::fs::write(&cert, "not a certificate").unwrap();
        let err = Config::from_toml(
            "t",
            &format!(
                "[http]\ncertificate = \"{0}\"\nprivate_key = \"{0}\"\n",
                cert.display()
            ),
        )
        .unwrap_err();
        assert_eq!(err.list[0].path, "http.certificate", "{err}");
    }

    #[test]
    fn public_url_defaults_to_https_with_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (chain, key) = crate::tls::self_signed("relay.test").unwrap();
        let cert = dir.path().join("c.pem");
        let key_path = dir.path().join("k.pem");
        let pem = |label: &str, der: &[u8]| {
            let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der);
            let lines: Vec<&str> = b64
                .as_bytes()
                .chunks(64)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect();
            format!(
                "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
                lines.join("\n")
            )
        };
        std::fs::write(&cert, pem("CERTIFICATE", &chain[0])).unwrap();
        std::fs::write(&key_path, pem("PRIVATE KEY", key.secret_der())).unwrap();
        let c = config(&format!(
            "[http]\nlisten = \"0.0.0.0:8443\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
            cert.display(),
            key_path.display()
        ));
        assert!(c.http.tls());
        assert_eq!(c.unsubscribe.public_url, "https://0.0.0.0:8443");
    }

    fn warned(c: &Config) -> Vec<String> {
        c.warnings().iter().map(|w| w.path.clone()).collect()
    }

    #[test]
    fn warnings_for_data_loss_capture_and_plain_text() {
        let c = config("[spool]\nfsync = false\n[delivery]\nstarttls = \"disabled\"\n");
        assert_eq!(warned(&c), ["spool.fsync", "delivery.starttls"]);
        // Capture on loopback is what it is for; beyond loopback it swallows mail.
        let c = config("[delivery]\nmode = \"capture\"\n");
        assert!(warned(&c).is_empty());
        let c = config(
            "[smtp]\nlisten = \"0.0.0.0:25\"\n[delivery]\nmode = \"capture\"\n\
             [unsubscribe]\npublic_url = \"https://u.example.com\"\n",
        );
        assert_eq!(warned(&c), ["delivery.mode"]);
    }

    #[test]
    fn warnings_for_links_recipients_cannot_use() {
        // Everything on loopback (the default): nothing to warn about.
        assert!(warned(&Config::embedded_default()).is_empty());
        // SMTP beyond loopback with the default public_url (http, loopback): both.
        let c = config("[smtp]\nlisten = \"0.0.0.0:25\"\n");
        assert_eq!(
            warned(&c),
            ["unsubscribe.public_url", "unsubscribe.public_url"]
        );
        let text: Vec<String> = c.warnings().iter().map(|w| w.to_string()).collect();
        assert!(text[0].contains("plain http"), "{text:?}");
        assert!(text[1].contains("loopback"), "{text:?}");
        // https on a real name: fine; http on a real name: one; https on localhost: one.
        let c = config(
            "[smtp]\nlisten_tls = \"192.0.2.1:465\"\n\
             [unsubscribe]\npublic_url = \"https://u.example.com/x\"\n",
        );
        assert!(warned(&c).is_empty());
        let c = config(
            "[smtp]\nlisten = \"[::]:25\"\n[unsubscribe]\npublic_url = \"http://u.example.com\"\n",
        );
        assert_eq!(c.warnings().len(), 1);
        let c = config(
            "[smtp]\nlisten = \"[::]:25\"\n[unsubscribe]\npublic_url = \"https://[::1]:8443\"\n",
        );
        assert!(c.warnings()[0].message.contains("loopback"));
        // The operator listener beyond loopback.
        let c = config("[admin]\nlisten = \"0.0.0.0:8026\"\n");
        assert_eq!(warned(&c), ["admin.listen"]);
    }

    #[test]
    fn url_hosts() {
        assert_eq!(url_host("https://u.example:8443/x"), "u.example");
        assert_eq!(url_host("http://[::1]:80"), "::1");
        assert_eq!(url_host("http://user@localhost"), "localhost");
        assert!(local_host("LOCALHOST") && local_host("127.0.0.9") && local_host("0.0.0.0"));
        assert!(!local_host("192.0.2.1") && !local_host("u.example"));
    }
}
