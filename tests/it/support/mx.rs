//! An in-process fake MX scripted by recipient, over TCP or in-memory pipes.
//!
//! It is written independently of the relay's own protocol code (its own line reader and
//! dot-unstuffing), so a bug in the relay's client cannot hide behind the same bug in the
//! server that checks it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One transaction the fake MX accepted.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub mail_from: String,
    /// The MAIL FROM parameters as sent (after the path).
    pub mail_params: String,
    pub rcpt_to: Vec<String>,
    pub rcpt_params: Vec<String>,
    pub data: Vec<u8>,
    pub tls: bool,
}

impl Delivered {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }

    /// The machine-readable part of a delivery status notification (its third MIME part:
    /// `message/delivery-status`).
    pub fn dsn_status(&self) -> String {
        let parsed = mail_parser::MessageParser::default()
            .parse(&self.data)
            .expect("a message");
        String::from_utf8_lossy(parsed.parts[2].contents()).into_owned()
    }
}

#[derive(Clone)]
pub struct MxOptions {
    /// Offer STARTTLS (with a self-signed certificate for "mx.test" unless `tls_config`).
    pub tls: bool,
    /// With `tls`: the TLS configuration STARTTLS uses instead of the self-signed
    /// certificate (e.g. one from [`TestCa::leaf`]).
    pub tls_config: Option<Arc<rustls::ServerConfig>>,
    pub dsn: bool,
    pub smtputf8: bool,
    /// `flaky…@` recipients get 451 this many times before 250.
    pub flaky_failures: u32,
    /// Greet with `421 4.3.2` and hang up (a server too busy to talk).
    pub busy: bool,
    /// With `tls`: TLS from the first byte (port 465 style) instead of STARTTLS.
    pub implicit_tls: bool,
    /// With `tls`: what happens after `220` to STARTTLS.
    pub break_tls: TlsBreak,
    /// A submission service: `AUTH <mechanisms>` offered once TLS is up, a login with
    /// these credentials needed before MAIL (`530 5.7.0` without, `535 5.7.8` for a wrong
    /// one).
    pub auth: Option<MxAuth>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsBreak {
    /// A proper handshake.
    No,
    /// Plain-text garbage instead of a ServerHello, then the connection closes.
    Garbage,
    /// Nothing at all: the handshake never ends.
    Hang,
}

#[derive(Clone, Debug)]
pub struct MxAuth {
    pub mechanisms: &'static str,
    pub username: String,
    pub password: String,
}

/// One AUTH exchange the fake MX saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Login {
    pub mechanism: String,
    pub username: String,
    pub accepted: bool,
    pub tls: bool,
}

impl Default for MxOptions {
    fn default() -> Self {
        MxOptions {
            tls: false,
            tls_config: None,
            dsn: true,
            smtputf8: true,
            flaky_failures: 2,
            busy: false,
            implicit_tls: false,
            break_tls: TlsBreak::No,
            auth: None,
        }
    }
}

/// Scripted by the recipient's local part:
/// `tempfail…` → 451 at RCPT, `ratelimited…` → 451 4.7.0 [TSS04] at RCPT, `throttled…` → 421 4.7.28 at RCPT and the connection closed, `permfail…` → 550 5.1.1 at RCPT, `fullbox…` → 552 5.2.2 at RCPT, `hostile…` → a 550 with control characters in its text, `flaky…` → 451 for the
/// first `flaky_failures` tries of that address, `datafail…` → 554 after DATA, `slow…` →
/// accepted 400 ms after the data, anything
/// else accepted.
#[derive(Clone)]
pub struct FakeMx {
    inner: Arc<MxInner>,
}

struct MxInner {
    options: MxOptions,
    delivered: Mutex<Vec<Delivered>>,
    changed: tokio::sync::Notify,
    tries: Mutex<HashMap<String, u32>>,
    connections: AtomicUsize,
    rcpt_attempts: AtomicUsize,
    mail_attempts: AtomicUsize,
    plain_mail_attempts: AtomicUsize,
    starttls_attempts: AtomicUsize,
    logins: Mutex<Vec<Login>>,
    /// The server name each TLS client asked for (SNI).
    sni: Mutex<Vec<Option<String>>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl FakeMx {
    pub fn new(options: MxOptions) -> FakeMx {
        let tls = options.tls.then(|| {
            let cfg = options.tls_config.clone().unwrap_or_else(|| {
                optin_relay::tls::server_config(&Default::default(), "mx.test").unwrap()
            });
            tokio_rustls::TlsAcceptor::from(cfg)
        });
        FakeMx {
            inner: Arc::new(MxInner {
                options,
                delivered: Mutex::new(Vec::new()),
                changed: tokio::sync::Notify::new(),
                tries: Mutex::new(HashMap::new()),
                connections: AtomicUsize::new(0),
                rcpt_attempts: AtomicUsize::new(0),
                mail_attempts: AtomicUsize::new(0),
                plain_mail_attempts: AtomicUsize::new(0),
                starttls_attempts: AtomicUsize::new(0),
                logins: Mutex::new(Vec::new()),
                sni: Mutex::new(Vec::new()),
                tls,
            }),
        }
    }

    /// Listens on 127.0.0.1:0 and serves every connection.
    pub async fn listen(&self) -> SocketAddr {
        self.listen_at("127.0.0.1:0").await
    }

    /// Listens on `addr` (another loopback address, a given port) and serves every
    /// connection.
    pub async fn listen_at(&self, addr: &str) -> SocketAddr {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mx = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                mx.serve(stream);
            }
        });
        addr
    }

    /// Serves one connection (TCP or in-memory).
    pub fn serve<S: Stream + 'static>(&self, stream: S) {
        let mx = self.clone();
        mx.inner.connections.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let _ = mx.session(Box::new(stream)).await;
        });
    }

    pub fn delivered(&self) -> Vec<Delivered> {
        self.inner.delivered.lock().unwrap().clone()
    }

    pub fn connections(&self) -> usize {
        self.inner.connections.load(Ordering::SeqCst)
    }

    pub fn rcpt_attempts(&self) -> usize {
        self.inner.rcpt_attempts.load(Ordering::SeqCst)
    }

    /// MAIL FROM commands received (transactions begun, whether or not they completed).
    pub fn mail_attempts(&self) -> usize {
        self.inner.mail_attempts.load(Ordering::SeqCst)
    }

    /// STARTTLS commands received (whether or not the handshake then succeeded).
    pub fn starttls_attempts(&self) -> usize {
        self.inner.starttls_attempts.load(Ordering::SeqCst)
    }

    /// MAIL FROM commands received on connections without TLS.
    pub fn plain_mail_attempts(&self) -> usize {
        self.inner.plain_mail_attempts.load(Ordering::SeqCst)
    }

    /// Every AUTH exchange, in order.
    pub fn logins(&self) -> Vec<Login> {
        self.inner.logins.lock().unwrap().clone()
    }

    /// The SNI server name of every completed TLS handshake, in order.
    pub fn sni(&self) -> Vec<Option<String>> {
        self.inner.sni.lock().unwrap().clone()
    }

    async fn accept_tls(&self, plain: Box<dyn Stream>) -> std::io::Result<Box<dyn Stream>> {
        let acceptor = self.inner.tls.as_ref().expect("TLS configured");
        let secured = acceptor.accept(plain).await?;
        let name = secured.get_ref().1.server_name().map(str::to_string);
        self.inner.sni.lock().unwrap().push(name);
        Ok(Box::new(secured))
    }

    /// Answers AUTH (PLAIN with or without an initial response, LOGIN) by RFC 4954.
    async fn auth(
        &self,
        io: &mut BufReader<Box<dyn Stream>>,
        command: &str,
        tls: bool,
    ) -> std::io::Result<(String, bool)> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let Some(want) = self.inner.options.auth.clone() else {
            return Ok(("502 5.5.1 no AUTH here\r\n".into(), false));
        };
        let mut words = command.split_ascii_whitespace().skip(1);
        let mechanism = words.next().unwrap_or("").to_ascii_uppercase();
        let initial = words.next().map(str::to_string);
        let ask = async |io: &mut BufReader<Box<dyn Stream>>, prompt: &str| {
            io.get_mut()
                .write_all(format!("334 {prompt}\r\n").as_bytes())
                .await?;
            let mut line = String::new();
            io.read_line(&mut line).await?;
            let decoded = b64.decode(line.trim_end()).unwrap_or_default();
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&decoded).into_owned())
        };
        let (username, password) = match mechanism.as_str() {
            "PLAIN" if want.mechanisms.contains("PLAIN") => {
                let response = match initial {
                    Some(r) => {
                        String::from_utf8_lossy(&b64.decode(r).unwrap_or_default()).into_owned()
                    }
                    None => ask(io, "").await?,
                };
                let mut parts = response.split('\0').skip(1);
                (
                    parts.next().unwrap_or("").to_string(),
                    parts.next().unwrap_or("").to_string(),
                )
            }
            "LOGIN" if want.mechanisms.contains("LOGIN") => {
                let username = ask(io, "VXNlcm5hbWU6").await?;
                (username, ask(io, "UGFzc3dvcmQ6").await?)
            }
            _ => return Ok(("504 5.5.4 mechanism not offered\r\n".into(), false)),
        };
        let accepted = username == want.username && password == want.password;
        self.inner.logins.lock().unwrap().push(Login {
            mechanism,
            username,
            accepted,
            tls,
        });
        Ok(if accepted {
            ("235 2.7.0 authenticated\r\n".into(), true)
        } else {
            (
                "535 5.7.8 authentication credentials invalid\r\n".into(),
                false,
            )
        })
    }

    /// Waits until at least `n` transactions arrived.
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Delivered> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.inner.changed.notified();
            let got = self.delivered();
            if got.len() >= n {
                return got;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "fake MX: expected {n} messages, got {}: {:#?}",
                    got.len(),
                    got.iter()
                        .map(|d| (&d.mail_from, &d.rcpt_to))
                        .collect::<Vec<_>>()
                );
            }
        }
    }

    async fn session(&self, stream: Box<dyn Stream>) -> std::io::Result<()> {
        let mut tls = false;
        let stream = if self.inner.options.implicit_tls {
            tls = true;
            self.accept_tls(stream).await?
        } else {
            stream
        };
        let mut io = BufReader::new(stream);
        let mut authenticated = false;
        if self.inner.options.busy {
            io.get_mut()
                .write_all(b"421 4.3.2 mx.test too busy, try another\r\n")
                .await?;
            return Ok(());
        }
        io.get_mut()
            .write_all(b"220 mx.test ESMTP fake\r\n")
            .await?;
        let mut from: Option<(String, String)> = None;
        let mut rcpts: Vec<(String, String)> = Vec::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            if io.read_until(b'\n', &mut line).await? == 0 {
                return Ok(());
            }
            assert!(line.ends_with(b"\r\n"), "relay sent a bare LF: {line:?}");
            let text = String::from_utf8_lossy(&line[..line.len() - 2]).into_owned();
            let upper = text.to_ascii_uppercase();
            let reply: String = if upper.starts_with("EHLO") {
                let mut caps = vec![
                    "250-mx.test",
                    "250-PIPELINING",
                    "250-8BITMIME",
                    "250-SIZE 50000000",
                ];
                if self.inner.options.dsn {
                    caps.push("250-DSN");
                }
                if self.inner.options.smtputf8 {
                    caps.push("250-SMTPUTF8");
                }
                if self.inner.tls.is_some() && !tls {
                    caps.push("250-STARTTLS");
                }
                let auth_line;
                if let Some(auth) = self.inner.options.auth.as_ref().filter(|_| tls) {
                    auth_line = format!("250-AUTH {}", auth.mechanisms);
                    caps.push(&auth_line);
                }
                caps.push("250 ENHANCEDSTATUSCODES");
                caps.join("\r\n") + "\r\n"
            } else if upper.starts_with("HELO") {
                "250 mx.test\r\n".into()
            } else if upper == "STARTTLS" {
                self.inner.starttls_attempts.fetch_add(1, Ordering::SeqCst);
                if self.inner.tls.is_none() {
                    io.get_mut().write_all(b"502 5.5.1 no TLS\r\n").await?;
                    continue;
                }
                io.get_mut().write_all(b"220 2.0.0 go ahead\r\n").await?;
                match self.inner.options.break_tls {
                    TlsBreak::No => {}
                    TlsBreak::Garbage => {
                        io.get_mut()
                            .write_all(b"this is no TLS server hello\r\n")
                            .await?;
                        return Ok(());
                    }
                    TlsBreak::Hang => std::future::pending::<()>().await,
                }
                let plain = io.into_inner();
                io = BufReader::new(self.accept_tls(plain).await?);
                tls = true;
                from = None;
                rcpts.clear();
                continue;
            } else if upper.starts_with("AUTH ") {
                let (reply, ok) = self.auth(&mut io, &text, tls).await?;
                authenticated |= ok;
                reply
            } else if self.inner.options.auth.is_some()
                && !authenticated
                && upper.starts_with("MAIL FROM:")
            {
                self.inner.mail_attempts.fetch_add(1, Ordering::SeqCst);
                if !tls {
                    self.inner
                        .plain_mail_attempts
                        .fetch_add(1, Ordering::SeqCst);
                }
                "530 5.7.0 authentication required\r\n".into()
            } else if let Some(rest) = upper.strip_prefix("MAIL FROM:") {
                self.inner.mail_attempts.fetch_add(1, Ordering::SeqCst);
                if !tls {
                    self.inner
                        .plain_mail_attempts
                        .fetch_add(1, Ordering::SeqCst);
                }
                let rest = &text[text.len() - rest.len()..];
                let (path, params) = split_path(rest);
                from = Some((path, params));
                rcpts.clear();
                "250 2.1.0 ok\r\n".into()
            } else if let Some(rest) = upper.strip_prefix("RCPT TO:") {
                self.inner.rcpt_attempts.fetch_add(1, Ordering::SeqCst);
                let rest = &text[text.len() - rest.len()..];
                let (path, params) = split_path(rest);
                let local = path.split('@').next().unwrap_or("").to_ascii_lowercase();
                if from.is_none() {
                    "503 5.5.1 need MAIL\r\n".into()
                } else if local.starts_with("ratelimited") {
                    "451 4.7.0 Rate limited [TSS04], try again later\r\n".into()
                } else if local.starts_with("throttled") {
                    // Gmail's way: 421 and the connection closed.
                    io.get_mut()
                        .write_all(b"421 4.7.28 Unusual rate of mail from your IP address, rate limited; try again later\r\n")
                        .await?;
                    return Ok(());
                } else if local.starts_with("tempfail") {
                    "451 4.2.1 mailbox busy, try later\r\n".into()
                } else if local.starts_with("permfail") {
                    format!("550 5.1.1 <{path}>: no such user\r\n")
                } else if local.starts_with("fullbox") {
                    "552 5.2.2 Mailbox full\r\n".into()
                } else if local.starts_with("hostile") {
                    // A next hop trying to forge log lines and paint the operator's terminal.
                    "550-5.1.1 gone\x1b[2J\r2026-12-05T00:00:00Z  INFO forged\r\n550 5.1.1 x\x07\r\n"
                        .into()
                } else if local.starts_with("flaky") && {
                    let mut tries = self.inner.tries.lock().unwrap();
                    let n = tries.entry(path.clone()).or_insert(0);
                    *n += 1;
                    *n <= self.inner.options.flaky_failures
                } {
                    "451 4.4.1 flaky, try later\r\n".into()
                } else {
                    rcpts.push((path, params));
                    "250 2.1.5 ok\r\n".into()
                }
            } else if upper == "DATA" {
                if rcpts.is_empty() {
                    io.get_mut()
                        .write_all(b"554 5.5.1 no valid recipients\r\n")
                        .await?;
                    continue;
                }
                io.get_mut().write_all(b"354 go ahead\r\n").await?;
                let data = read_data(&mut io).await?;
                // `slow…` recipients: a server that takes its time to accept.
                if rcpts
                    .iter()
                    .any(|(r, _)| r.to_ascii_lowercase().starts_with("slow"))
                {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                }
                let (mail_from, mail_params) = from.take().unwrap_or_default();
                let rcpts_now = std::mem::take(&mut rcpts);
                if rcpts_now
                    .iter()
                    .any(|(r, _)| r.to_ascii_lowercase().starts_with("datafail"))
                {
                    "554 5.6.0 content rejected\r\n".into()
                } else {
                    self.inner.delivered.lock().unwrap().push(Delivered {
                        mail_from,
                        mail_params,
                        rcpt_to: rcpts_now.iter().map(|(r, _)| r.clone()).collect(),
                        rcpt_params: rcpts_now.into_iter().map(|(_, p)| p).collect(),
                        data,
                        tls,
                    });
                    self.inner.changed.notify_waiters();
                    "250 2.0.0 queued\r\n".into()
                }
            } else if upper == "RSET" {
                from = None;
                rcpts.clear();
                "250 2.0.0 ok\r\n".into()
            } else if upper == "NOOP" {
                "250 2.0.0 ok\r\n".into()
            } else if upper == "QUIT" {
                io.get_mut().write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(());
            } else {
                "500 5.5.1 unknown\r\n".into()
            };
            io.get_mut().write_all(reply.as_bytes()).await?;
        }
    }
}

fn split_path(rest: &str) -> (String, String) {
    let rest = rest.trim_start();
    let end = rest.find('>').unwrap_or(rest.len());
    let path = rest.trim_start_matches('<')[..end.saturating_sub(1)].to_string();
    let params = rest.get(end + 1..).unwrap_or("").trim().to_string();
    (path, params)
}

/// Reads DATA content up to the lone "." line, undoing dot-stuffing; checks every line is
/// CRLF-terminated and at most 998 octets.
async fn read_data(io: &mut BufReader<Box<dyn Stream>>) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if io.read_until(b'\n', &mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        assert!(
            line.ends_with(b"\r\n"),
            "bare LF in DATA: {:?}",
            String::from_utf8_lossy(&line)
        );
        assert!(line.len() <= 1000, "line over 998 octets in DATA");
        assert!(!line[..line.len() - 2].contains(&b'\r'), "bare CR in DATA");
        if line == b".\r\n" {
            return Ok(data);
        }
        let content = if line.starts_with(b".") {
            &line[1..]
        } else {
            &line[..]
        };
        data.extend_from_slice(content);
    }
}

// ---- delivery over in-memory pipes -------------------------------------------------------

/// A delivery transport whose every route leads to `FakeMx` over an in-memory pipe (no
/// sockets, so tests with paused time run days of retries in milliseconds).
pub struct InMemoryMx(pub FakeMx);

impl optin_relay::delivery::transport::Transport for InMemoryMx {
    fn resolve<'a>(
        &'a self,
        _: &'a optin_relay::delivery::transport::RouteKey,
    ) -> optin_relay::delivery::transport::BoxFuture<
        'a,
        Result<
            Vec<optin_relay::delivery::transport::Target>,
            optin_relay::delivery::outcome::ResolveFailure,
        >,
    > {
        Box::pin(async {
            Ok(vec![optin_relay::delivery::transport::Target {
                host: "mx.test".into(),
                addr: "127.0.0.1:25".parse().unwrap(),
            }])
        })
    }

    fn connect<'a>(
        &'a self,
        _: &'a optin_relay::delivery::transport::Target,
    ) -> optin_relay::delivery::transport::BoxFuture<
        'a,
        std::io::Result<optin_relay::delivery::transport::BoxStream>,
    > {
        Box::pin(async {
            let (ours, theirs) = tokio::io::duplex(1 << 16);
            self.0.serve(theirs);
            Ok(Box::new(ours) as optin_relay::delivery::transport::BoxStream)
        })
    }

    fn routes_by_domain(&self) -> bool {
        false
    }
}
