//! The client side of the admin API: `optin-relay queue summary|retry|bounce|delete`,
//! `queue list|show --live`, `account …`, `suppress check`, `erase` and `policy …` ask the
//! running relay over its operator listener (see `crate::http::admin` and `openapi.json`);
//! `suppress add|remove` and `lists grant|revoke` make their change through it when a
//! relay answers there ([`change_lists`]), so it is in force when the command returns.
//!
//! The relay is the one the config names: its `[admin] listen` (or `--url`) and its admin
//! token (`[admin] token`, else the token file the relay wrote beside the spool). One
//! request per command (a large batch of addresses: one per part), plain HTTP/1.1, each
//! within [`TIMEOUT`]. The answer is printed as text (aligned tables), or as the API's
//! JSON with `--json`.
//!
//! Exit codes: 0 done; 1 the API said no (a 4xx: its `error` on standard error, and every
//! one of its `problems`); 2 the relay cannot be reached or failed (5xx), or bad usage.

use std::path::Path;
use std::pin::pin;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use super::ApiArgs;
use crate::envelope::Stream;
use print::*;
pub(super) use print::{Align, items, num, table, text, when};

/// How long a command waits for the relay: connecting, asking and reading the answer.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// One admin API request, and how to print its answer as text.
pub struct Call {
    method: Method,
    /// The path under `/admin`, its parts percent-encoded, with any query.
    path: String,
    body: Option<Value>,
    print: Box<dyn Fn(&Value)>,
}

impl Call {
    pub(super) fn new(method: Method, path: String, print: impl Fn(&Value) + 'static) -> Call {
        Call {
            method,
            path,
            body: None,
            print: Box::new(print),
        }
    }

    pub(super) fn with_body(mut self, body: Value) -> Call {
        self.body = Some(body);
        self
    }
}

/// Why a command failed.
enum Failure {
    /// Exit 2: the relay cannot be reached, failed, or the command cannot be sent.
    Unreachable(String),
    /// Exit 1: the API refused (4xx) with this status, `error`, `problems` and body.
    Refused {
        status: u16,
        error: String,
        problems: Vec<String>,
        body: Option<Value>,
    },
}

/// Sends `call` to the relay the config (or `--url`) names and prints the answer; returns
/// the exit code (see the module documentation).
pub fn call(config: Option<&Path>, api: &ApiArgs, call: Call) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return unreachable_exit(&format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(ask(config, api, &call)) {
        Ok(answer) => {
            if api.json {
                print_json(&answer);
            } else {
                (call.print)(&answer);
            }
            ExitCode::SUCCESS
        }
        Err(Failure::Unreachable(why)) => unreachable_exit(&why),
        Err(Failure::Refused {
            status,
            error,
            problems,
            body,
        }) => {
            if let (true, Some(body)) = (api.json, &body) {
                print_json(body);
            }
            eprintln!("optin-relay: {error} (HTTP {status})");
            for p in &problems {
                eprintln!("{}", indented(p));
            }
            ExitCode::from(1)
        }
    }
}

fn unreachable_exit(why: &str) -> ExitCode {
    eprintln!("optin-relay: {why}");
    ExitCode::from(2)
}

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("a JSON value prints")
    );
}

/// Finds the relay and its token, then sends the request.
async fn ask(config: Option<&Path>, api: &ApiArgs, call: &Call) -> Result<Value, Failure> {
    let config = super::load_config(config).map_err(Failure::Unreachable)?;
    let target = match &api.url {
        Some(url) => Target::parse(url),
        None => Target::from_config(&config),
    }
    .map_err(Failure::Unreachable)?;
    let token = crate::http::admin::token(&config.admin, false).map_err(Failure::Unreachable)?;
    match tokio::time::timeout(TIMEOUT, send(&target, &token, call)).await {
        Ok(result) => result,
        Err(_) => Err(Failure::Unreachable(format!(
            "the relay's admin API at {} did not answer within {}s",
            target.url,
            TIMEOUT.as_secs()
        ))),
    }
}

// ---- the HTTP client -------------------------------------------------------------------

/// Where the admin API is: `http://HOST[:PORT][/PREFIX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// As given, without a trailing slash (for messages).
    url: String,
    /// The host to connect to (no brackets around an IPv6 address).
    host: String,
    port: u16,
    /// The authority as written, for the `Host` header.
    authority: String,
    /// A path before `/admin` (a proxy's), empty or starting with `/`.
    prefix: String,
}

impl Target {
    /// The relay's `[admin] listen`; an unspecified address (0.0.0.0, ::) means loopback.
    fn from_config(config: &crate::config::Config) -> Result<Target, String> {
        let mut addr = config.admin.listen.ok_or(
            "the operator listener is off in this config ([admin] listen = \"\"), so the \
             admin API is not reachable; give --url to reach a relay elsewhere",
        )?;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        Target::parse(&format!("http://{addr}"))
    }

    /// Parses an `http://` URL (no user info; the port defaults to 80).
    fn parse(url: &str) -> Result<Target, String> {
        let bad = |why: &str| format!("--url {url:?}: {why}");
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("https://") {
            return Err(bad(
                "https is not supported: the admin API is plain HTTP on the relay's \
                 operator listener (use an SSH tunnel or a local proxy for a relay \
                 elsewhere)",
            ));
        }
        if !lower.starts_with("http://") {
            return Err(bad("not an http:// URL, e.g. http://127.0.0.1:8026"));
        }
        let rest = &url["http://".len()..];
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.contains('@') {
            return Err(bad(
                "user info is not supported; the token comes from the config",
            ));
        }
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
                (host, after.strip_prefix(':'))
            }
            None => match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None => 80,
            Some(p) => p.parse().map_err(|_| bad(&format!("bad port {p:?}")))?,
        };
        let path = path.trim_end_matches('/');
        Ok(Target {
            url: url.trim_end_matches('/').to_string(),
            host: host.to_string(),
            port,
            authority: authority.to_string(),
            prefix: if path.is_empty() {
                String::new()
            } else {
                format!("/{path}")
            },
        })
    }
}

/// One request on a fresh connection; the answer's JSON for a 2xx.
async fn send(target: &Target, token: &str, call: &Call) -> Result<Value, Failure> {
    let url = &target.url;
    let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| {
            Failure::Unreachable(format!(
                "cannot reach the relay's admin API at {url}: {} — is `optin-relay serve` \
                 running with this config?",
                io_text(&e)
            ))
        })?;
    let broke = |e: hyper::Error| {
        Failure::Unreachable(format!("the relay's admin API at {url} broke off: {e}"))
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(broke)?;
    let request = build(target, token, call).map_err(Failure::Unreachable)?;
    let exchange = async {
        let response = sender.send_request(request).await.map_err(broke)?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(broke)?;
        Ok((status, body.to_bytes()))
    };
    // The connection future does the I/O; driven here so nothing outlives the command.
    let (mut exchange, mut conn) = (pin!(exchange), pin!(conn));
    let (status, body) = tokio::select! {
        result = &mut exchange => result?,
        done = &mut conn => match done {
            Ok(()) => exchange.await?,
            Err(e) => return Err(broke(e)),
        },
    };
    answer(url, status, &body)
}

/// The request for `call`, with the token and, for a body, its JSON.
/// How the command line names itself to the admin API (consent records say "cli").
pub const CLI_AGENT: &str = concat!("optin-relay-cli/", env!("CARGO_PKG_VERSION"));

fn build(target: &Target, token: &str, call: &Call) -> Result<Request<Full<Bytes>>, String> {
    let mut request = Request::builder()
        .method(call.method.clone())
        .uri(format!("{}/admin{}", target.prefix, call.path))
        .header(HOST, &target.authority)
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .header(USER_AGENT, CLI_AGENT);
    let body = match &call.body {
        Some(v) => {
            request = request.header(CONTENT_TYPE, "application/json");
            Bytes::from(v.to_string())
        }
        None => Bytes::new(),
    };
    request
        .body(Full::new(body))
        .map_err(|e| format!("cannot build the request: {e}"))
}

/// The JSON of a 2xx; a refusal for a 4xx; the relay failed for anything else.
fn answer(url: &str, status: StatusCode, body: &[u8]) -> Result<Value, Failure> {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    if status.is_success() {
        return json.ok_or_else(|| {
            Failure::Unreachable(format!(
                "the relay at {url} answered {status} without JSON: is this optin-relay's \
                 HTTP listener?"
            ))
        });
    }
    let error = json
        .as_ref()
        .and_then(|v| v["error"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body).trim().to_string();
            if text.is_empty() {
                status.canonical_reason().unwrap_or("error").to_string()
            } else {
                text
            }
        });
    if !status.is_client_error() {
        return Err(Failure::Unreachable(format!(
            "the relay's admin API at {url} failed: {error} (HTTP {})",
            status.as_u16()
        )));
    }
    let problems = json
        .as_ref()
        .and_then(|v| v["problems"].as_array())
        .map(|a| a.iter().map(text).collect())
        .unwrap_or_default();
    Err(Failure::Refused {
        status: status.as_u16(),
        error,
        problems,
        body: json,
    })
}

/// An I/O error as an operator reads it ("connection refused", not "os error 111").
fn io_text(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::TimedOut => "timed out".into(),
        _ => e.to_string(),
    }
}

/// Percent-encodes a path segment or query value: everything but unreserved characters
/// (RFC 3986 §2.3), so `@`, `+`, `/` and spaces arrive as given.
pub(super) fn encode(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    for b in part.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `?k=v&…` of the pairs with a value (empty when none has one).
fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={}", encode(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

// ---- changes to the lists through a running relay ----------------------------------------

/// What became of a change to the lists offered to the running relay.
pub enum Relayed {
    /// No relay answers (nothing listens at the operator listener, or the config turns it
    /// off): nothing was sent. Says why, for the command's message.
    Absent(String),
    /// The relay made the change for every address.
    Done,
    /// The relay refused or failed (already said on standard error): the exit code.
    Failed(ExitCode),
}

/// Sends `fields` plus the `addresses` to `POST /admin{path}` of the relay the config
/// names, in parts that fit its `[admin] max_body_size`. Nothing is sent when no relay
/// answers; when one part fails, standard error says how many addresses were changed.
pub fn change_lists(
    config: &crate::config::Config,
    path: &str,
    fields: &Value,
    addresses: &[String],
) -> Relayed {
    let target = match Target::from_config(config) {
        Ok(t) => t,
        Err(_) => return Relayed::Absent("the config turns the operator listener off".into()),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            return Relayed::Failed(unreachable_exit(&format!("cannot start the runtime: {e}")));
        }
    };
    runtime.block_on(async {
        let probe = tokio::net::TcpStream::connect((target.host.as_str(), target.port));
        match tokio::time::timeout(TIMEOUT, probe).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Relayed::Absent(format!("no relay answers at {}", target.url));
            }
            Ok(Err(e)) => {
                return Relayed::Failed(unreachable_exit(&format!(
                    "cannot reach the relay's admin API at {}: {}; nothing was changed",
                    target.url,
                    io_text(&e)
                )));
            }
            Err(_) => {
                return Relayed::Failed(unreachable_exit(&format!(
                    "the relay's admin API at {} did not answer within {}s; nothing was \
                     changed",
                    target.url,
                    TIMEOUT.as_secs()
                )));
            }
        }
        let token = match crate::http::admin::token(&config.admin, false) {
            Ok(t) => t,
            Err(why) => return Relayed::Failed(unreachable_exit(&why)),
        };
        let mut done = 0;
        for part in parts(addresses, config.admin.max_body_size / 2) {
            let mut body = fields.clone();
            body["addresses"] = json!(part);
            let call = Call::new(Method::POST, path.to_string(), |_| {}).with_body(body);
            let sent = tokio::time::timeout(TIMEOUT, send(&target, &token, &call)).await;
            let failure = match sent {
                Ok(Ok(_)) => {
                    done += part.len();
                    continue;
                }
                Ok(Err(f)) => f,
                Err(_) => Failure::Unreachable(format!(
                    "the relay's admin API at {} did not answer within {}s",
                    target.url,
                    TIMEOUT.as_secs()
                )),
            };
            if done > 0 {
                eprintln!(
                    "optin-relay: {done} of {} address(es) were changed before this",
                    addresses.len()
                );
            }
            return Relayed::Failed(match failure {
                Failure::Unreachable(why) => unreachable_exit(&why),
                Failure::Refused {
                    status,
                    error,
                    problems,
                    ..
                } => {
                    eprintln!("optin-relay: {error} (HTTP {status})");
                    for p in &problems {
                        eprintln!("{}", indented(p));
                    }
                    ExitCode::from(1)
                }
            });
        }
        Relayed::Done
    })
}

/// `addresses` in parts of at most [`crate::http::admin::MAX_BATCH`] and about `bytes`
/// octets of JSON each.
fn parts(addresses: &[String], bytes: usize) -> Vec<&[String]> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, a) in addresses.iter().enumerate() {
        let cost = a.len() + 4; // quotes, comma, a little escaping
        if i > start && (size + cost > bytes || i - start >= crate::http::admin::MAX_BATCH) {
            out.push(&addresses[start..i]);
            (start, size) = (i, 0);
        }
        size += cost;
    }
    if start < addresses.len() {
        out.push(&addresses[start..]);
    }
    out
}

// ---- the calls -------------------------------------------------------------------------

/// `GET /admin/accounts`.
pub fn account_list() -> Call {
    Call::new(Method::GET, "/accounts".into(), print_accounts)
}

/// `GET /admin/accounts/{name}`.
pub fn account_show(name: &str) -> Call {
    Call::new(
        Method::GET,
        format!("/accounts/{}", encode(name)),
        print_account,
    )
}

/// `POST /admin/accounts/{name}/freeze` with the reason.
pub fn account_freeze(name: &str, reason: &str) -> Call {
    Call::new(
        Method::POST,
        format!("/accounts/{}/freeze", encode(name)),
        |v| {
            let account = text(&v["account"]);
            if v["changed"].as_bool() == Some(true) {
                println!(
                    "account {account} frozen: {}; its submissions are refused (554 5.7.1) \
                     and its queued marketing mail is held",
                    text(&v["frozen"]["reason"])
                );
            } else {
                println!(
                    "account {account} was already frozen ({}); left as it was",
                    frozen_text(&v["frozen"])
                );
            }
        },
    )
    .with_body(json!({ "reason": reason }))
}

/// `POST /admin/accounts/{name}/unfreeze`.
pub fn account_unfreeze(name: &str) -> Call {
    Call::new(
        Method::POST,
        format!("/accounts/{}/unfreeze", encode(name)),
        |v| {
            let account = text(&v["account"]);
            if v["changed"].as_bool() == Some(true) {
                println!("account {account} unfrozen; its held mail is released");
            } else {
                println!("account {account} was not frozen");
            }
        },
    )
}

/// `GET /admin/suppressions/{address}`: the standing of an address (for an account).
pub fn suppression_check(
    address: &str,
    account: Option<&str>,
    list: Option<&str>,
    stream: Option<Stream>,
) -> Call {
    let path = format!(
        "/suppressions/{}{}",
        encode(address),
        query(&[
            ("account", account),
            ("list", list),
            ("stream", stream.map(Stream::as_str)),
        ])
    );
    Call::new(Method::GET, path, print_standing)
}

/// `POST /admin/erase`.
pub fn erase(address: &str) -> Call {
    Call::new(Method::POST, "/erase".into(), |v| {
        println!(
            "erased {}: {} queued recipient(s) dropped; an erasure suppression (global) is \
             recorded",
            text(&v["address"]),
            num(&v["queued_recipients_dropped"])
        );
        if v["cluster"] == "told" {
            println!("the other nodes of the cluster were told: each erases it from its own spool and logs");
        }
    })
    .with_body(json!({ "address": address }))
}

/// `GET /admin/policy`.
pub fn policy_status() -> Call {
    Call::new(Method::GET, "/policy".into(), print_policy)
}

/// `GET /admin/cluster` (a 404 when the relay runs alone).
pub fn cluster_status() -> Call {
    Call::new(Method::GET, "/cluster".into(), print_cluster)
}

/// `POST /admin/policy/reload` (a 409 lists every problem).
pub fn policy_reload() -> Call {
    Call::new(Method::POST, "/policy/reload".into(), |v| {
        println!("policy reloaded: generation {}", num(&v["generation"]));
    })
}

// ---- printing --------------------------------------------------------------------------

mod print;
mod queue;

pub use queue::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_sent_in_parts_that_fit() {
        let addrs: Vec<String> = (0..10).map(|i| format!("a{i}@x.example")).collect();
        // 12 octets each plus 4: two fit in 40 octets.
        let p = parts(&addrs, 40);
        assert_eq!(p.len(), 5);
        assert_eq!(p.concat(), addrs);
        assert_eq!(parts(&addrs, 1 << 20).len(), 1);
        // One address larger than the budget still goes, alone.
        assert_eq!(parts(&addrs[..2], 3).len(), 2);
        let many: Vec<String> = (0..crate::http::admin::MAX_BATCH + 1)
            .map(|i| format!("{i}@x"))
            .collect();
        assert_eq!(parts(&many, usize::MAX).len(), 2);
    }

    #[test]
    fn encode_keeps_only_unreserved_characters() {
        assert_eq!(encode("a.b-c_d~9"), "a.b-c_d~9");
        assert_eq!(encode("Tom+news@x.example"), "Tom%2Bnews%40x.example");
        assert_eq!(encode("a b/é"), "a%20b%2F%C3%A9");
    }

    #[test]
    fn query_skips_absent_values() {
        assert_eq!(query(&[("a", None), ("b", None)]), "");
        assert_eq!(
            query(&[
                ("account", Some("a b")),
                ("list", None),
                ("limit", Some("5"))
            ]),
            "?account=a%20b&limit=5"
        );
    }

    #[test]
    fn urls_parse_with_ports_prefixes_and_ipv6() {
        let t = Target::parse("http://127.0.0.1:8026/").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.prefix.as_str(), t.url.as_str()),
            ("127.0.0.1", 8026, "", "http://127.0.0.1:8026")
        );
        let t = Target::parse("http://[::1]:9000/relay/").unwrap();
        assert_eq!(
            (
                t.host.as_str(),
                t.port,
                t.prefix.as_str(),
                t.authority.as_str()
            ),
            ("::1", 9000, "/relay", "[::1]:9000")
        );
        assert_eq!(Target::parse("http://relay.internal").unwrap().port, 80);
        for bad in [
            "https://x:1",
            "127.0.0.1:8026",
            "http://:8026",
            "http://u@x:1",
            "http://x:port",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_split_into_refusals_and_failures() {
        let body = br#"{"error":"policy refused","status":409,"problems":["a","b"]}"#;
        match answer("u", StatusCode::CONFLICT, body) {
            Err(Failure::Refused {
                status,
                error,
                problems,
                ..
            }) => {
                assert_eq!((status, error.as_str()), (409, "policy refused"));
                assert_eq!(problems, ["a", "b"]);
            }
            _ => panic!("a 409 is a refusal"),
        }
        assert!(matches!(
            answer("u", StatusCode::BAD_REQUEST, b"plain text"),
            Err(Failure::Refused { error, .. }) if error == "plain text"
        ));
        assert!(matches!(
            answer(
                "u",
                StatusCode::SERVICE_UNAVAILABLE,
                br#"{"error":"stopping"}"#
            ),
            Err(Failure::Unreachable(_))
        ));
        assert!(matches!(
            answer("u", StatusCode::OK, b"<html>"),
            Err(Failure::Unreachable(_))
        ));
    }
}
