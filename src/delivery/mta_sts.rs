//! MTA-STS (RFC 8461): whether a recipient domain asks senders to require authenticated
//! TLS to its MX hosts, and which MX host names it vouches for.
//!
//! A domain announces a policy with a TXT record at `_mta-sts.{domain}` carrying an `id`,
//! and serves the policy itself at `https://mta-sts.{domain}/.well-known/mta-sts.txt`
//! behind a certificate valid for that name. [`MtaSts`] looks the record up before each
//! delivery, fetches the policy only when its id differs from the cached one's, and keeps
//! each policy for its `max_age`, so a DNS or HTTPS failure (an attacker stripping the
//! record, say) falls back to the policy last seen rather than to no policy at all.
//!
//! What the caller does with a policy (refuse unlisted MX hosts and unverified TLS in
//! `enforce` mode, report only in `testing` mode) is not decided here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

/// RFC 8461 §3.2: `max_age` is capped at a year (31557600 seconds).
const MAX_AGE_CAP: u64 = 31_557_600;

/// RFC 8461 §3.3: senders may refuse policies larger than 64 KiB.
const MAX_POLICY_BYTES: usize = 64 * 1024;

/// The well-known path of the policy file.
const POLICY_PATH: &str = "/.well-known/mta-sts.txt";

/// What a domain asks of senders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Deliver only over verified TLS to an MX host the policy lists.
    Enforce,
    /// Deliver as usual, but report what enforcing would have refused.
    Testing,
    /// The domain has withdrawn its policy; treat as no policy.
    None,
}

/// One domain's MTA-STS policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The id from the TXT record under which this policy was fetched.
    pub id: String,
    pub mode: Mode,
    /// MX host patterns, lower case without a trailing dot: `mx.example.net` or
    /// `*.example.net`.
    pub mx: Vec<String>,
    /// How long the policy may be cached, capped at a year.
    pub max_age: Duration,
}

impl Policy {
    /// Parses the policy file text (RFC 8461 §3.2: key: value lines, CRLF or LF;
    /// `version: STSv1` required; `mode` required; `max_age` required, capped at 31557600;
    /// at least one `mx` unless mode is none). Unknown keys ignored. Clear error strings.
    pub fn parse(id: &str, text: &str) -> Result<Policy, String> {
        let mut version = None;
        let mut mode = None;
        let mut max_age = None;
        let mut mx = Vec::new();
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                return Err(format!("policy line without a colon: {:?}", clip(line)));
            };
            let (key, value) = (key.trim(), value.trim());
            // Only the first occurrence of a single-valued field counts.
            match key {
                "version" if version.is_none() => version = Some(value),
                "mode" if mode.is_none() => mode = Some(parse_mode(value)?),
                "max_age" if max_age.is_none() => max_age = Some(parse_max_age(value)?),
                "mx" => mx.push(parse_mx_pattern(value)?),
                _ => {}
            }
        }
        match version {
            Some("STSv1") => {}
            Some(other) => return Err(format!("unsupported policy version {:?}", clip(other))),
            None => return Err("policy has no version field".into()),
        }
        let mode = mode.ok_or("policy has no mode field")?;
        let max_age = max_age.ok_or("policy has no max_age field")?;
        if mx.is_empty() && mode != Mode::None {
            return Err("policy lists no mx host".into());
        }
        Ok(Policy {
            id: id.to_string(),
            mode,
            mx,
            max_age,
        })
    }

    /// Whether an MX host name matches one of the policy's `mx` patterns (RFC 8461 §4.1:
    /// exact, case-insensitive, trailing dot ignored; `*.example.net` matches exactly one
    /// extra left-most label, not example.net itself, not a.b.example.net).
    pub fn mx_matches(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        self.mx
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(parent) => host
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
                None => *pattern == host,
            })
    }
}

fn parse_mode(value: &str) -> Result<Mode, String> {
    match value {
        "enforce" => Ok(Mode::Enforce),
        "testing" => Ok(Mode::Testing),
        "none" => Ok(Mode::None),
        other => Err(format!("unknown policy mode {:?}", clip(other))),
    }
}

/// `max_age`: 1 to 10 digits of seconds, capped at [`MAX_AGE_CAP`].
fn parse_max_age(value: &str) -> Result<Duration, String> {
    let digits =
        !value.is_empty() && value.len() <= 10 && value.bytes().all(|b| b.is_ascii_digit());
    let seconds: u64 = if digits { value.parse().ok() } else { None }
        .ok_or_else(|| format!("max_age is not a number of seconds: {:?}", clip(value)))?;
    Ok(Duration::from_secs(seconds.min(MAX_AGE_CAP)))
}

/// An `mx` pattern: a host name, optionally with `*.` in place of its left-most label.
/// Stored in lower case without a trailing dot.
fn parse_mx_pattern(value: &str) -> Result<String, String> {
    let pattern = value
        .strip_suffix('.')
        .unwrap_or(value)
        .to_ascii_lowercase();
    let name = pattern.strip_prefix("*.").unwrap_or(&pattern);
    let valid = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if valid {
        Ok(pattern)
    } else {
        Err(format!("invalid mx pattern {:?}", clip(value)))
    }
}

/// At most 80 characters of untrusted text, for error messages.
fn clip(text: &str) -> &str {
    match text.char_indices().nth(80) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// Parses the `_mta-sts` TXT record (RFC 8461 §3.1): "v=STSv1; id=20160831085700Z;" →
/// Some(id). Fields separated by ';' with optional whitespace; v must be first and equal
/// STSv1; id 1–32 alphanumerics. None for anything else.
pub fn parse_txt(record: &str) -> Option<String> {
    let mut fields = record.split(';').map(|f| f.trim_matches([' ', '\t']));
    if fields.next()? != "v=STSv1" {
        return None;
    }
    let mut id = None;
    for field in fields.filter(|f| !f.is_empty()) {
        let (name, value) = field.split_once('=')?;
        if name.is_empty() || value.is_empty() {
            return None;
        }
        if name == "id" {
            let valid = value.len() <= 32 && value.bytes().all(|b| b.is_ascii_alphanumeric());
            if !valid || id.is_some() {
                return None;
            }
            id = Some(value.to_string());
        }
    }
    id
}

/// Fetches https://mta-sts.{domain}/.well-known/mta-sts.txt from `addr` (already resolved;
/// in production port 443, in tests a local port), verifying the server certificate with
/// `tls` for the name `mta-sts.{domain}` (SNI and Host header). HTTP/1.1 via
/// hyper::client::conn::http1 over tokio-rustls, hyper_util::rt::TokioIo. Status must be
/// 200 (redirects are NOT followed, RFC 8461 §3.3); the media type must be text/plain
/// (parameters like charset allowed); body at most 64 KiB; whole fetch within `timeout`.
/// Returns the parsed policy with the given id.
pub async fn fetch(
    addr: SocketAddr,
    domain: &str,
    id: &str,
    tls: Arc<ClientConfig>,
    timeout: Duration,
) -> Result<Policy, String> {
    let host = format!("mta-sts.{domain}");
    let text = tokio::time::timeout(timeout, fetch_text(addr, &host, tls))
        .await
        .map_err(|_| format!("fetching the policy from {addr} timed out"))??;
    Policy::parse(id, &text)
}

/// The body of the policy file at `host` (served from `addr`), checked as [`fetch`] says.
async fn fetch_text(
    addr: SocketAddr,
    host: &str,
    tls: Arc<ClientConfig>,
) -> Result<String, String> {
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| format!("{host:?} is not a valid host name"))?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let stream = TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {host} at {addr}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP with {host}: {e}"))?;
    let request = Request::get(POLICY_PATH)
        .header(HOST, host)
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("cannot build the policy request: {e}"))?;
    let exchange = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP with {host}: {e}"))?;
        check_response(response).await
    };
    // The connection future does the I/O; it is driven here rather than spawned so that
    // nothing outlives this call (or its timeout).
    let (mut exchange, mut conn) = (pin!(exchange), pin!(conn));
    tokio::select! {
        result = &mut exchange => result,
        done = &mut conn => match done {
            Ok(()) => exchange.await,
            Err(e) => Err(format!("HTTP with {host}: {e}")),
        },
    }
}

/// The body of a policy response: status 200, `text/plain`, at most 64 KiB of UTF-8.
async fn check_response(
    response: hyper::Response<hyper::body::Incoming>,
) -> Result<String, String> {
    if response.status() != StatusCode::OK {
        // Includes redirects, which RFC 8461 §3.3 forbids following.
        return Err(format!("policy request answered {}", response.status()));
    }
    let media_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .unwrap_or("");
    if !media_type.eq_ignore_ascii_case("text/plain") {
        return Err(format!(
            "policy media type is {:?}, not text/plain",
            clip(media_type)
        ));
    }
    let body = Limited::new(response.into_body(), MAX_POLICY_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                format!("policy is larger than {MAX_POLICY_BYTES} bytes")
            } else {
                format!("reading the policy: {e}")
            }
        })?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| "policy is not UTF-8 text".to_string())
}

/// A policy and when it was fetched.
struct Cached {
    policy: Arc<Policy>,
    fetched: Instant,
}

impl Cached {
    fn is_fresh(&self) -> bool {
        self.fetched.elapsed() < self.policy.max_age
    }
}

/// MTA-STS discovery with a policy cache (see the module doc).
///
/// Concurrent callers for the same domain may each fetch its policy when the cache does
/// not answer; the last fetch to finish is the one cached. That costs a duplicate HTTPS
/// request at worst, and keeps the lock out of every await.
pub struct MtaSts {
    resolver: TokioResolver,
    tls: Arc<ClientConfig>,
    /// The HTTPS port: 443, except in tests.
    port: u16,
    /// The limit for each policy fetch.
    timeout: Duration,
    cache: Mutex<HashMap<String, Cached>>,
}

impl MtaSts {
    pub fn new(
        resolver: TokioResolver,
        tls: Arc<ClientConfig>,
        port: u16,
        timeout: Duration,
    ) -> MtaSts {
        MtaSts {
            resolver,
            tls,
            port,
            timeout,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The policy in force for `domain` (lower-case A-label), or None when it publishes
    /// none.
    ///
    /// RFC 8461 §3.3/§5: no valid TXT record → the cached policy while within its
    /// `max_age`, else None. A TXT id equal to a fresh cached policy's id → that policy, with
    /// no fetch (an expired one is fetched again: that is the refresh). Otherwise the
    /// policy is fetched and cached. A DNS error or failed fetch → the fresh cached policy,
    /// else None. Policies with mode none are returned like any other; the caller treats
    /// them as no policy.
    pub async fn policy(&self, domain: &str) -> Option<Arc<Policy>> {
        let id = match self.txt_id(domain).await {
            Ok(Some(id)) => id,
            Ok(None) => return self.cached(domain),
            Err(error) => {
                tracing::warn!(domain, error, "MTA-STS TXT lookup failed");
                return self.cached(domain);
            }
        };
        if let Some(cached) = self.cached(domain).filter(|p| p.id == id) {
            return Some(cached);
        }
        match self.fetch_any(domain, &id).await {
            Ok(policy) => {
                let policy = Arc::new(policy);
                let entry = Cached {
                    policy: policy.clone(),
                    fetched: Instant::now(),
                };
                self.lock().insert(domain.to_string(), entry);
                Some(policy)
            }
            Err(error) => {
                tracing::warn!(domain, error, "MTA-STS policy fetch failed");
                self.cached(domain)
            }
        }
    }

    /// The cached policy for `domain` if still within its `max_age`; an expired one is
    /// dropped.
    fn cached(&self, domain: &str) -> Option<Arc<Policy>> {
        let mut cache = self.lock();
        match cache.get(domain) {
            Some(entry) if entry.is_fresh() => Some(entry.policy.clone()),
            Some(_) => {
                cache.remove(domain);
                None
            }
            None => None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        // The map is never left half-updated, so a panic elsewhere does not spoil it.
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The id of the domain's `_mta-sts` TXT record: None when there is none or not exactly
    /// one that starts `v=STSv1` (RFC 8461 §3.1), Err for a DNS failure.
    async fn txt_id(&self, domain: &str) -> Result<Option<String>, String> {
        let lookup = match self
            .resolver
            .txt_lookup(format!("_mta-sts.{domain}."))
            .await
        {
            Ok(lookup) => lookup,
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let records: Vec<String> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(txt) => Some(txt.txt_data.concat()),
                _ => None,
            })
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .filter(|text| text.starts_with("v=STSv1"))
            .collect();
        match records.as_slice() {
            [record] => Ok(parse_txt(record)),
            _ => Ok(None),
        }
    }

    /// Resolves `mta-sts.{domain}` and fetches the policy from each address in turn until
    /// one serves it.
    async fn fetch_any(&self, domain: &str, id: &str) -> Result<Policy, String> {
        let ips = self
            .resolver
            .lookup_ip(format!("mta-sts.{domain}."))
            .await
            .map_err(|e| format!("resolving mta-sts.{domain}: {e}"))?;
        let mut last_error = format!("mta-sts.{domain} has no address");
        for ip in ips.iter() {
            let addr = SocketAddr::new(ip, self.port);
            match fetch(addr, domain, id, self.tls.clone(), self.timeout).await {
                Ok(policy) => return Ok(policy),
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }
}

#[cfg(test)]
mod tests;
