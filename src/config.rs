//! The relay's main configuration (`optin-relay.toml`): listeners, limits, TLS, spool,
//! delivery, HTTP and where the policy file is.
//!
//! Parsing is strict: unknown keys, wrong types and impossible values are problems, and every
//! problem in the file is reported at once with its key path (see [`reader`]). Every default
//! is a named constant below (the HTTP listeners' in [`http`]); with no file at all,
//! [`Config::embedded_default`] gives the relay the README's quick start runs (SMTP on
//! 127.0.0.1:2525, the public HTTP listener on 127.0.0.1:8025, the operator listener on
//! 127.0.0.1:8026, spool in `./data`, delivery by MX lookup). Relative paths in a file,
//! and the defaults that are paths, resolve against the file's directory (see
//! [`reader::Collector::for_file`]); those of the embedded default against the working
//! directory.

pub mod cluster;
pub mod http;
pub mod reader;
pub mod smarthost;
mod smtp;
pub mod units;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use http::{
    AccountApiConfig, AdminConfig, DEFAULT_ADMIN_LISTEN, DEFAULT_HTTP_LISTEN, HttpConfig,
    HttpLimits, SubscribeConfig,
};
use reader::{Collector, Problems, Section, Setting};
pub use smarthost::{Credentials, Secret, Smarthost, TlsLevel};
pub use smtp::*;
use units::{ByteSize, HumanDuration};

use crate::tls::TlsConfig;

pub const DEFAULT_SPOOL_PATH: &str = "./data";
pub const DEFAULT_SEGMENT_SIZE: ByteSize = ByteSize::mib(64);
pub const DEFAULT_MX_PORT: u16 = 25;
/// Bloom bits per entry of the lists snapshot: with 512-bit blocks and 13 probes the
/// design false-positive rate is 5.1e-5 (see `consent::snapshot::design_fp_rate`).
pub const DEFAULT_BLOOM_BITS_PER_KEY: u32 = 24;
/// The first retry delay of a webhook when `[webhooks] retry_initial` names none.
pub const DEFAULT_WEBHOOK_RETRY_INITIAL: Duration = Duration::from_secs(30);
/// The longest delay between two attempts of one account's webhook.
pub const WEBHOOK_RETRY_MAX: Duration = Duration::from_secs(3600);
pub const DEFAULT_LISTS_REFRESH: HumanDuration = HumanDuration::millis(250);
pub const DEFAULT_COMPACT_AFTER: usize = 100_000;
pub const DEFAULT_MAX_CONNECTIONS_PER_DESTINATION: usize = 20;
pub const DEFAULT_MAX_MESSAGES_PER_CONNECTION: usize = 1000;
/// Message content delivery holds in memory at once (see `crate::delivery`'s budget).
pub const DEFAULT_MAX_CONTENT_IN_FLIGHT: ByteSize = ByteSize::mib(128);
pub const DEFAULT_CONNECT_TIMEOUT: HumanDuration = HumanDuration::secs(30);
pub const DEFAULT_COMMAND_TIMEOUT: HumanDuration = HumanDuration::secs(300);
pub const DEFAULT_DATA_TIMEOUT: HumanDuration = HumanDuration::secs(600);
pub const DEFAULT_CONNECTION_IDLE_TIMEOUT: HumanDuration = HumanDuration::secs(10);
pub const DEFAULT_RETRY_INITIAL: HumanDuration = HumanDuration::secs(300);
pub const DEFAULT_RETRY_MAX: HumanDuration = HumanDuration::secs(3600);
pub const DEFAULT_MAX_AGE: HumanDuration = HumanDuration::secs(5 * 86400);
pub const DEFAULT_DELAY_WARNING: HumanDuration = HumanDuration::secs(4 * 3600);
/// How often the policy file is checked for changes (see `crate::reload`).
pub const DEFAULT_POLICY_WATCH_INTERVAL: HumanDuration = HumanDuration::secs(2);
/// Days a withdrawn consent's record is kept (three years: the usual time to answer a
/// claim about a message sent while the consent was in force).
pub const DEFAULT_CONSENT_RECORD_DAYS: u32 = 1095;
/// Days the delivery log's day files are kept (see `crate::privacy::retention`).
pub const DEFAULT_DELIVERY_LOG_DAYS: u32 = 30;
/// Days event lines with addresses and kept-aside complaint reports are kept.
pub const DEFAULT_EVENT_LOG_DAYS: u32 = 90;
/// Largest mail a stranger may send to an unsubscribe address (a one-line request).
pub const DEFAULT_MAX_UNSUBSCRIBE_MAIL_SIZE: ByteSize = ByteSize::kib(64);
/// Largest mail a stranger may send to the feedback address (an ARF report with a copy).
pub const DEFAULT_MAX_REPORT_SIZE: ByteSize = ByteSize::mib(1);
/// Feedback reports per client address and hour.
pub const DEFAULT_MAX_REPORTS_PER_IP: u32 = 3600;

#[derive(Debug, Clone)]
pub struct Config {
    pub smtp: SmtpConfig,
    pub tls: TlsConfig,
    pub spool: SpoolConfig,
    pub delivery: DeliveryConfig,
    pub http: HttpConfig,
    pub admin: AdminConfig,
    pub policy: PolicyConfig,
    pub lists: ListsConfig,
    pub unsubscribe: UnsubscribeConfig,
    pub complaints: ComplaintsConfig,
    pub bounces: BouncesConfig,
    pub webhooks: WebhooksConfig,
    pub privacy: PrivacyConfig,
    pub log: LogConfig,
    pub account_api: http::AccountApiConfig,
    pub subscribe: http::SubscribeConfig,
    /// `[cluster]`: the Redis that several relays share; `None`: this relay runs alone.
    pub cluster: Option<cluster::ClusterConfig>,
}

/// How long what holds personal data is kept (see `crate::privacy::retention`).
#[derive(Debug, Clone)]
pub struct PrivacyConfig {
    /// Days of the delivery log (recipients as keyed tags) kept, by day file.
    pub delivery_log_days: u32,
    /// Days of event lines that carry addresses (`events/*.jsonl`) and of complaint
    /// reports kept aside.
    pub event_log_days: u32,
    /// Days a withdrawn consent's record (its proof) is kept after the withdrawal; records
    /// of consents in force are kept while they last.
    pub consent_record_days: u32,
}

/// The accounts' signed webhooks (see `crate::governance::webhook`; each account's URL and
/// secret are in the policy).
#[derive(Debug, Clone)]
pub struct WebhooksConfig {
    /// The first retry delay after a failed delivery; it doubles up to an hour.
    pub retry_initial: Duration,
}

/// Where recipients unsubscribe, and the keys of the tokens in the links.
#[derive(Debug, Clone)]
pub struct UnsubscribeConfig {
    /// The HTTP listener as recipients reach it (usually through a TLS proxy), without a
    /// trailing slash: links are `<public_url>/u/TOKEN`.
    pub public_url: String,
    /// The domain of `mailto:unsubscribe+TOKEN@<mail_domain>`; the relay accepts mail to
    /// such addresses without AUTH.
    pub mail_domain: String,
    /// The token key file (created on first use, mode 0600).
    pub keys: PathBuf,
    /// Largest mail to an unsubscribe address from a client no account knows.
    pub max_mail_size: u64,
}

/// Where mailbox providers send spam complaints (ARF reports, RFC 5965); see
/// `crate::governance::complaints`.
#[derive(Debug, Clone)]
pub struct ComplaintsConfig {
    /// Take reports at `address` (from anyone, without AUTH) and serve the report form.
    pub enabled: bool,
    /// The feedback address registered with the providers' feedback loops.
    pub address: crate::smtp::Address,
    /// Take only reports whose copy carries a genuine unsubscribe token, even from the
    /// allow-listed reporters; others are kept aside.
    pub require_token: bool,
    /// Domains whose valid DKIM signature makes a tokenless report count (canonical).
    pub reporters: Vec<String>,
    /// Largest mail to the feedback address from a client no account knows.
    pub max_report_size: u64,
    /// Reports taken per client address (IPv6: /64) per hour; more get `450 4.7.1`.
    pub max_reports_per_ip: u32,
}

/// The relay's own return path (VERP) and the bounces mailed back to it; see
/// `crate::governance::bounces`.
#[derive(Debug, Clone)]
pub struct BouncesConfig {
    /// Send each message with its own return path `<prefix>+<token>@<domain>` and take the
    /// bounces mailed to it (false: the client's envelope sender is kept, as by any relay).
    pub return_path: bool,
    /// The local part before `+`.
    pub prefix: String,
    /// The return path's domain when the account names no `bounce_domain` (lower case).
    pub domain: String,
    /// Largest mail to a return path from a client no account knows.
    pub max_size: u64,
    /// Bounces taken per client address (IPv6: /64) per hour; more get `450 4.7.1`.
    pub max_per_ip: u32,
}

/// The consent and suppression data (see `crate::consent`).
#[derive(Debug, Clone)]
pub struct ListsConfig {
    /// Directory of the secret, the snapshot and the journals (default: `lists` in the
    /// spool directory).
    pub path: PathBuf,
    /// How often the relay looks for changes made by other processes (`optin-relay
    /// suppress …`, a new snapshot copied in).
    pub refresh_interval: Duration,
    /// Bloom filter size of new snapshots.
    pub bloom_bits_per_key: u32,
    /// The relay folds the journal into a new snapshot once this many addresses changed
    /// since the last one (0: only `optin-relay lists compile` does).
    pub compact_after: usize,
    /// Copy each snapshot into memory (huge pages) before it serves: faster lookups at
    /// large sizes for RAM equal to the snapshot's size.
    pub load_into_memory: bool,
}

#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub path: PathBuf,
    /// Only for throwaway test setups: without fsync an accepted message can be lost.
    pub fsync: bool,
    pub segment_size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StartTlsPolicy {
    /// Use STARTTLS when offered, without certificate checks; fall back to plain text when
    /// the handshake fails.
    Opportunistic,
    /// Never use STARTTLS.
    Disabled,
}

/// `host:port`, where host is a name, an IPv4 address or a bracketed IPv6 address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl std::str::FromStr for HostPort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not host:port");
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || port == 0 {
            return Err(bad());
        }
        if host.parse::<std::net::IpAddr>().is_err() {
            crate::smtp::address::check_domain(host).map_err(|_| bad())?;
        }
        Ok(HostPort {
            host: host.to_string(),
            port,
        })
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// What delivery does with mail (`[delivery] mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryMode {
    /// To the next hop: the smart host, or the recipients' MX hosts.
    Deliver,
    /// Into the capture folder, for development (see `crate::delivery::capture`).
    Capture,
}

/// Messages the capture folder keeps (the oldest go first).
pub const DEFAULT_CAPTURE_KEEP: usize = 1000;

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub mode: DeliveryMode,
    /// The capture folder (default: `capture` in the spool directory).
    pub capture_dir: PathBuf,
    pub capture_keep: usize,
    /// Send everything here instead of looking up MX records (see [`smarthost`]).
    pub smarthost: Option<Smarthost>,
    /// Nameserver for MX lookups (default: the system's resolv.conf).
    pub dns: Option<SocketAddr>,
    pub mx_port: u16,
    pub helo_name: String,
    pub starttls: StartTlsPolicy,
    /// Look up and enforce MTA-STS policies (RFC 8461).
    pub mta_sts: bool,
    /// Port of the MTA-STS policy hosts (443 on the Internet; other values for tests).
    pub mta_sts_port: u16,
    /// Extra CA certificates (PEM) trusted wherever certificates are verified (MTA-STS,
    /// `tls = "verify"` destinations, a smart host without its own `ca_file`), besides the
    /// Mozilla roots.
    pub tls_roots: Option<PathBuf>,
    pub max_connections_per_destination: usize,
    pub max_messages_per_connection: usize,
    /// Octets of message content (and its rewritten copies) in memory at once for
    /// sending; workers wait for room beyond it.
    pub max_content_in_flight: u64,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub connection_idle_timeout: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub max_age: Duration,
    pub delay_warning: Duration,
    /// The delivery log (JSON lines); `None`: off.
    pub log: Option<PathBuf>,
}

#[derive(Debug, Clone, Default)]
pub struct PolicyConfig {
    /// `None`: the embedded default policy (loopback clients are the account `local`).
    pub path: Option<PathBuf>,
    /// How often the running relay looks for a changed policy file; zero: never (SIGHUP
    /// still reloads it).
    pub watch_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A tracing filter such as `info` or `optin_relay=debug`; `RUST_LOG` overrides it.
    pub level: String,
    pub format: LogFormat,
}

fn system_hostname() -> String {
    let name = gethostname::gethostname().to_string_lossy().into_owned();
    if name.is_empty() || crate::smtp::address::check_domain(&name).is_err() {
        "localhost".to_string()
    } else {
        name
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("default addresses are valid")
}

impl Config {
    /// The configuration used when `serve` is given no file.
    pub fn embedded_default() -> Config {
        Config::from_toml("(embedded default)", "").expect("the empty file is a valid config")
    }

    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Config, Problems> {
        Config::load_with_settings(path).map(|(c, _)| c)
    }

    /// [`Config::load`], with every key as read (for `config show`).
    pub fn load_with_settings(path: &Path) -> Result<(Config, Vec<Setting>), Problems> {
        let name = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(Collector::for_file(path), &text),
            Err(e) => Err(Problems {
                file: name,
                list: vec![reader::Problem {
                    path: String::new(),
                    message: format!("cannot read: {e}"),
                }],
            }),
        }
    }

    /// Parses TOML text; `file` names it in problem reports. Relative paths stay relative
    /// to the working directory (a file's are resolved by [`Config::load`]).
    pub fn from_toml(file: &str, text: &str) -> Result<Config, Problems> {
        Config::parse(Collector::new(file), text).map(|(c, _)| c)
    }

    /// The embedded default, with every key as read (for `config show`).
    pub fn embedded_with_settings() -> (Config, Vec<Setting>) {
        Config::parse(Collector::new("(embedded default)"), "")
            .expect("the empty file is a valid config")
    }

    fn parse(c: Collector, text: &str) -> Result<(Config, Vec<Setting>), Problems> {
        let Some(table) = c.parse(text) else {
            return Err(c.finish(()).unwrap_err());
        };
        let config = {
            let mut root = c.root(&table);
            let smtp = smtp::read_smtp(&mut root.section("smtp"));
            let tls = read_tls(&mut root.section("tls"));
            let spool = read_spool(&mut root.section("spool"));
            let delivery =
                read_delivery(&mut root.section("delivery"), &smtp.hostname, &spool.path);
            let http = http::read_http(&mut root.section("http"));
            let admin = http::read_admin(&mut root.section("admin"), &spool.path, http.listen);
            let policy = read_policy(&mut root.section("policy"));
            let lists = read_lists(&mut root.section("lists"), &spool.path);
            let unsubscribe = read_unsubscribe(
                &mut root.section("unsubscribe"),
                &smtp.hostname,
                &http,
                &spool.path,
            );
            let complaints =
                read_complaints(&mut root.section("complaints"), &unsubscribe.mail_domain);
            let bounces = read_bounces(&mut root.section("bounces"), &unsubscribe.mail_domain);
            let webhooks = read_webhooks(&mut root.section("webhooks"));
            let privacy = read_privacy(&mut root.section("privacy"));
            let log = read_log(&mut root.section("log"));
            let account_api = http::read_account_api(&mut root.section("account_api"), &http);
            let subscribe = http::read_subscribe(&mut root.section("subscribe"));
            let cluster = cluster::read(&mut root.section("cluster"), &smtp.hostname);
            Config {
                smtp,
                tls,
                spool,
                delivery,
                http,
                admin,
                policy,
                lists,
                unsubscribe,
                complaints,
                bounces,
                webhooks,
                privacy,
                log,
                account_api,
                subscribe,
                cluster,
            }
        };
        let settings = c.settings();
        c.finish((config, settings))
    }

    /// Every address the relay will listen on, for start-up logs and checks.
    pub fn listen_addresses(&self) -> Vec<SocketAddr> {
        let mut all = self.smtp.listen.clone();
        all.extend(&self.smtp.listen_tls);
        all.extend(self.http.listen);
        all.extend(self.admin.listen);
        all
    }
}

fn positive<T: PartialOrd + Default + Copy>(s: &Section<'_>, key: &str, v: T) -> T {
    if v <= T::default() {
        s.problem(key, "must be greater than zero");
    }
    v
}

fn read_tls(s: &mut Section<'_>) -> TlsConfig {
    let certificate = s.get_path("certificate");
    let private_key = s.get_path("private_key");
    if certificate.is_some() != private_key.is_some() {
        s.problem("certificate", "certificate and private_key go together");
    }
    TlsConfig {
        certificate,
        private_key,
    }
}

fn read_spool(s: &mut Section<'_>) -> SpoolConfig {
    let segment_size = s.get_or("segment_size", DEFAULT_SEGMENT_SIZE).get();
    if segment_size < 1 << 20 {
        s.problem("segment_size", "must be at least 1MiB");
    }
    SpoolConfig {
        path: s.get_path_or("path", DEFAULT_SPOOL_PATH),
        fsync: s.get_or("fsync", true),
        segment_size,
    }
}

fn read_lists(s: &mut Section<'_>, spool: &Path) -> ListsConfig {
    let bloom_bits_per_key = s.get_or("bloom_bits_per_key", DEFAULT_BLOOM_BITS_PER_KEY);
    if !(8..=64).contains(&bloom_bits_per_key) {
        s.problem("bloom_bits_per_key", "must be between 8 and 64");
    }
    let refresh_interval = s.get_or("refresh_interval", DEFAULT_LISTS_REFRESH).get();
    if refresh_interval.is_zero() {
        s.problem("refresh_interval", "must be greater than zero");
    }
    ListsConfig {
        path: s.get_path_or("path", spool.join("lists")),
        refresh_interval,
        bloom_bits_per_key,
        compact_after: s.get_or("compact_after", DEFAULT_COMPACT_AFTER),
        load_into_memory: s.get_or("load_into_memory", true),
    }
}

fn read_delivery(s: &mut Section<'_>, hostname: &str, spool: &Path) -> DeliveryConfig {
    let smarthost = smarthost::read(s);
    let helo_name = match s.get::<String>("helo_name") {
        Some(h) if crate::smtp::address::check_domain(&h).is_ok() => h,
        Some(h) => {
            s.problem("helo_name", format!("{h:?} is not a valid host name"));
            hostname.to_string()
        }
        None => {
            s.default_is("helo_name", &hostname);
            hostname.to_string()
        }
    };
    let retry_initial = s.get_or("retry_initial", DEFAULT_RETRY_INITIAL).get();
    let retry_max = s.get_or("retry_max", DEFAULT_RETRY_MAX).get();
    if retry_initial > retry_max {
        s.problem("retry_initial", "must not be longer than retry_max");
    }
    let mx_port = s.get_or("mx_port", DEFAULT_MX_PORT);
    let max_conns = s.get_or(
        "max_connections_per_destination",
        DEFAULT_MAX_CONNECTIONS_PER_DESTINATION,
    );
    let max_msgs = s.get_or(
        "max_messages_per_connection",
        DEFAULT_MAX_MESSAGES_PER_CONNECTION,
    );
    let max_age = s.get_or("max_age", DEFAULT_MAX_AGE).get();
    let max_content_in_flight = s
        .get_or("max_content_in_flight", DEFAULT_MAX_CONTENT_IN_FLIGHT)
        .get();
    if max_content_in_flight < 1 << 20 {
        s.problem("max_content_in_flight", "must be at least 1MiB");
    }
    let starttls = s.get_or("starttls", StartTlsPolicy::Opportunistic);
    if starttls == StartTlsPolicy::Disabled
        && smarthost
            .as_ref()
            .is_some_and(|h| h.tls != TlsLevel::Opportunistic && !h.implicit_tls)
    {
        s.problem(
            "starttls",
            "is \"disabled\", but the smart host's tls needs STARTTLS",
        );
    }
    let capture_keep = s.get_or("capture_keep", DEFAULT_CAPTURE_KEEP);
    DeliveryConfig {
        mode: s.get_or("mode", DeliveryMode::Deliver),
        capture_dir: s.get_path_or("capture_dir", spool.join("capture")),
        capture_keep: positive(s, "capture_keep", capture_keep),
        smarthost,
        dns: s.get::<SocketAddr>("dns"),
        mx_port: positive(s, "mx_port", mx_port),
        helo_name,
        starttls,
        mta_sts: s.get_or("mta_sts", true),
        mta_sts_port: {
            let port = s.get_or("mta_sts_port", 443u16);
            positive(s, "mta_sts_port", port)
        },
        tls_roots: match s.get_path("tls_roots") {
            Some(p) if p.as_os_str().is_empty() => None,
            Some(path) => {
                if let Err(e) = crate::tls::verifying_client_config(Some(&path)) {
                    s.problem("tls_roots", e.to_string());
                }
                Some(path)
            }
            None => None,
        },
        max_connections_per_destination: positive(s, "max_connections_per_destination", max_conns),
        max_messages_per_connection: positive(s, "max_messages_per_connection", max_msgs),
        max_content_in_flight,
        connect_timeout: s.get_or("connect_timeout", DEFAULT_CONNECT_TIMEOUT).get(),
        command_timeout: s.get_or("command_timeout", DEFAULT_COMMAND_TIMEOUT).get(),
        data_timeout: s.get_or("data_timeout", DEFAULT_DATA_TIMEOUT).get(),
        connection_idle_timeout: s
            .get_or("connection_idle_timeout", DEFAULT_CONNECTION_IDLE_TIMEOUT)
            .get(),
        retry_initial: positive(s, "retry_initial", retry_initial),
        retry_max,
        max_age: positive(s, "max_age", max_age),
        delay_warning: s.get_or("delay_warning", DEFAULT_DELAY_WARNING).get(),
        log: match s.get_path("log") {
            Some(p) if p.as_os_str().is_empty() => None,
            Some(p) => Some(p),
            None => {
                let p = spool.join("log/delivery.jsonl");
                s.default_is("log", &p.display().to_string());
                Some(p)
            }
        },
    }
}

fn read_policy(s: &mut Section<'_>) -> PolicyConfig {
    PolicyConfig {
        path: s.get_path("path"),
        watch_interval: s
            .get_or("watch_interval", DEFAULT_POLICY_WATCH_INTERVAL)
            .get(),
    }
}

fn read_unsubscribe(
    s: &mut Section<'_>,
    hostname: &str,
    http: &HttpConfig,
    spool: &Path,
) -> UnsubscribeConfig {
    let public_url = match s.get::<String>("public_url") {
        Some(u) => {
            let trimmed = u.trim_end_matches('/').to_string();
            let ok = (trimmed.starts_with("https://") || trimmed.starts_with("http://"))
                && trimmed.len() > "https://".len()
                && !trimmed.contains(['?', '#', ' ', '<', '>', '"']);
            if !ok {
                s.problem(
                    "public_url",
                    format!("{u:?} is not an http(s) URL without query or fragment"),
                );
            }
            trimmed
        }
        None => {
            let url = match http.listen {
                Some(a) if http.tls() => format!("https://{a}"),
                Some(a) => format!("http://{a}"),
                None => format!("https://{hostname}"),
            };
            s.default_is("public_url", &url);
            url
        }
    };
    let mail_domain = s.get::<String>("mail_domain").unwrap_or_else(|| {
        s.default_is("mail_domain", &hostname);
        hostname.to_string()
    });
    if crate::smtp::address::check_domain(&mail_domain).is_err() {
        s.problem("mail_domain", format!("{mail_domain:?} is not a domain"));
    }
    UnsubscribeConfig {
        public_url,
        mail_domain: mail_domain.to_ascii_lowercase(),
        keys: s.get_path_or("keys", spool.join("unsubscribe.keys")),
        max_mail_size: s
            .get_or("max_mail_size", DEFAULT_MAX_UNSUBSCRIBE_MAIL_SIZE)
            .get(),
    }
}

fn read_complaints(s: &mut Section<'_>, mail_domain: &str) -> ComplaintsConfig {
    let default = || {
        crate::smtp::Address::parse(&format!("fbl@{mail_domain}"))
            .or_else(|_| crate::smtp::Address::parse("fbl@localhost"))
            .expect("fbl@localhost is a mailbox")
    };
    let address = match s.get::<String>("address") {
        None => {
            s.default_is("address", &default().to_string());
            default()
        }
        Some(a) => crate::smtp::Address::parse(a.trim()).unwrap_or_else(|e| {
            s.problem("address", format!("{a:?} is not a mailbox: {e}"));
            default()
        }),
    };
    let mut reporters = Vec::new();
    for d in s.get::<Vec<String>>("reporters").unwrap_or_default() {
        match crate::smtp::address::canonical_domain(&d) {
            Some(c) => reporters.push(c),
            None => s.problem("reporters", format!("{d:?} is not a domain")),
        }
    }
    let max_reports_per_ip = s.get_or("max_reports_per_ip", DEFAULT_MAX_REPORTS_PER_IP);
    ComplaintsConfig {
        enabled: s.get_or("enabled", true),
        address,
        require_token: s.get_or("require_token", false),
        reporters,
        max_report_size: s.get_or("max_report_size", DEFAULT_MAX_REPORT_SIZE).get(),
        max_reports_per_ip: positive(s, "max_reports_per_ip", max_reports_per_ip),
    }
}

fn read_bounces(s: &mut Section<'_>, mail_domain: &str) -> BouncesConfig {
    let prefix = s.get_or("prefix", "bounces".to_string());
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*-/=?^_`{|}~".contains(c);
    if prefix.is_empty() || prefix.len() > 32 || !prefix.chars().all(atext) {
        s.problem(
            "prefix",
            format!("{prefix:?}: 1 to 32 of a-z, 0-9 and - _ (no + or .)"),
        );
    }
    let domain = match s.get::<String>("domain") {
        None => {
            s.default_is("domain", &mail_domain);
            mail_domain.to_string()
        }
        Some(d) => crate::smtp::address::canonical_domain(&d)
            .filter(|c| c.is_ascii())
            .unwrap_or_else(|| {
                s.problem(
                    "domain",
                    format!("{d:?} is not a domain (write an international one as xn--)"),
                );
                mail_domain.to_string()
            }),
    };
    let max_per_ip = s.get_or("max_per_ip", DEFAULT_MAX_REPORTS_PER_IP);
    BouncesConfig {
        return_path: s.get_or("return_path", true),
        prefix: prefix.to_ascii_lowercase(),
        domain,
        max_size: s.get_or("max_size", DEFAULT_MAX_REPORT_SIZE).get(),
        max_per_ip: positive(s, "max_per_ip", max_per_ip),
    }
}

fn read_webhooks(s: &mut Section<'_>) -> WebhooksConfig {
    let default = DEFAULT_WEBHOOK_RETRY_INITIAL;
    let retry_initial = s
        .get::<HumanDuration>("retry_initial")
        .map_or(default, |h| h.get());
    if retry_initial.is_zero() || retry_initial > WEBHOOK_RETRY_MAX {
        s.problem("retry_initial", "must be above zero and at most 1h");
    }
    WebhooksConfig { retry_initial }
}

fn read_privacy(s: &mut Section<'_>) -> PrivacyConfig {
    let delivery_log_days = s.get_or("delivery_log_days", DEFAULT_DELIVERY_LOG_DAYS);
    let event_log_days = s.get_or("event_log_days", DEFAULT_EVENT_LOG_DAYS);
    let consent_record_days = s.get_or("consent_record_days", DEFAULT_CONSENT_RECORD_DAYS);
    PrivacyConfig {
        consent_record_days: positive(s, "consent_record_days", consent_record_days),
        delivery_log_days: positive(s, "delivery_log_days", delivery_log_days),
        event_log_days: positive(s, "event_log_days", event_log_days),
    }
}

/// Levels a log filter may name (alone, or after `target=`).
const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

fn read_log(s: &mut Section<'_>) -> LogConfig {
    let level = s.get_or("level", "info".to_string());
    // EnvFilter takes any bare word as a target ("verbose" would silence everything but a
    // target of that name): a bare word must be a level, a target comes with `=level`.
    let wrong = level.split(',').map(str::trim).find(|d| {
        let level = d.rsplit_once('=').map_or(*d, |(_, l)| l);
        !LOG_LEVELS.contains(&level.to_ascii_lowercase().as_str())
    });
    if let Some(d) = wrong {
        s.problem(
            "level",
            format!(
                "{d:?} is not a level: write one of {} (or target=level, e.g. \"info,optin_relay=debug\")",
                LOG_LEVELS.join(", ")
            ),
        );
    } else if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
        s.problem(
            "level",
            format!("{level:?} is not a log filter (try \"info\")"),
        );
    }
    LogConfig {
        level,
        format: s.get_or("format", LogFormat::Text),
    }
}

#[cfg(test)]
mod tests;
