//! The SMTP client side of delivery: one connection to a next hop, reused for several
//! transactions.
//!
//! [`Connection::open`] reads the greeting (after a TLS handshake first when the next hop
//! wants TLS from the first byte), says EHLO (HELO if refused), upgrades with STARTTLS
//! when offered and allowed, and logs in (AUTH PLAIN, else LOGIN) when it has credentials
//! for the next hop — only ever over TLS: on a plain connection it sends nothing of them. [`Connection::send`] runs one transaction, pipelined
//! when the server offers PIPELINING, and reports an [`Attempt`] per recipient: the reply
//! that decided it, or why there was none. It passes DSN parameters on when the server
//! speaks DSN, and refuses (rather than mangles) what the server cannot take: SMTPUTF8
//! mail to a server without SMTPUTF8, 8-bit content without 8BITMIME, a message over the
//! server's SIZE. Content goes out through [`crate::smtp::encode::dot_stuff`], which never
//! emits a bare CR or LF or a line over 998 octets.

use std::time::Duration;

use bytes::BytesMut;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

use super::outcome::{Attempt, LocalRefusal, Stage};
use super::transport::{BoxStream, Target};
use crate::config::Credentials;
use crate::envelope::{Envelope, Recipient};
use crate::smtp::ehlo::Capabilities;
use crate::smtp::encode::dot_stuff;
use crate::smtp::params::{BodyType, Ret, xtext_encode};
use crate::smtp::reply::{Reply, parse_reply};

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub command: Duration,
    pub data: Duration,
}

/// How a connection gets its TLS.
#[derive(Clone, Copy)]
pub enum TlsStart<'a> {
    /// Never (`[delivery] starttls = "disabled"`).
    Never,
    /// STARTTLS when the server offers it.
    StartTls(&'a TlsConnector),
    /// A TLS handshake before anything else (port 465 style).
    Implicit(&'a TlsConnector),
}

/// Why opening a connection failed: the attempt to report, and whether a retry without
/// STARTTLS is worth it (the TLS handshake itself failed).
#[derive(Debug)]
pub struct OpenError {
    pub attempt: Attempt,
    pub tls_failed: bool,
}

pub struct Connection {
    stream: BoxStream,
    buf: BytesMut,
    pub caps: Capabilities,
    /// The server's name as we know it (MX host or smart host), for DSNs and logs.
    pub host: String,
    pub tls: bool,
    /// The AUTH mechanisms the server announced that the client speaks.
    auth: AuthMechanisms,
    timeouts: Timeouts,
    /// Transactions completed on this connection.
    pub transactions: usize,
    /// Its place in the site's cluster-wide connection cap, given back when the
    /// connection is dropped (`None` alone).
    pub lease: Option<crate::cluster::Lease>,
}

#[derive(Debug, Clone, Copy, Default)]
struct AuthMechanisms {
    plain: bool,
    login: bool,
}

impl AuthMechanisms {
    /// From an EHLO reply's `AUTH …` (or the old `AUTH=…`) line.
    fn from_ehlo(reply: &Reply) -> AuthMechanisms {
        let mut found = AuthMechanisms::default();
        for line in reply.text.lines().skip(1) {
            let upper = line.to_ascii_uppercase();
            let Some(rest) = upper
                .strip_prefix("AUTH ")
                .or_else(|| upper.strip_prefix("AUTH="))
            else {
                continue;
            };
            for mechanism in rest.split_ascii_whitespace() {
                match mechanism {
                    "PLAIN" => found.plain = true,
                    "LOGIN" => found.login = true,
                    _ => {}
                }
            }
        }
        found
    }
}

/// The result of one transaction.
pub struct Sent {
    /// Per recipient index of the envelope.
    pub results: Vec<(u32, Attempt)>,
    /// The connection can carry another transaction.
    pub reusable: bool,
}

fn no_answer(stage: Stage, error: impl std::fmt::Display) -> Attempt {
    Attempt::NoAnswer {
        stage,
        error: error.to_string(),
    }
}

impl Connection {
    /// Greets the server, negotiates TLS as `tls` says, and logs in with `auth` (only
    /// over TLS).
    pub async fn open(
        stream: BoxStream,
        target: &Target,
        helo: &str,
        tls: TlsStart<'_>,
        auth: Option<&Credentials>,
        timeouts: Timeouts,
    ) -> Result<Connection, OpenError> {
        let fail = |attempt| OpenError {
            attempt,
            tls_failed: false,
        };
        let mut conn = Connection {
            stream,
            buf: BytesMut::with_capacity(4096),
            caps: Capabilities::default(),
            host: target.host.clone(),
            tls: false,
            auth: AuthMechanisms::default(),
            timeouts,
            transactions: 0,
            lease: None,
        };
        if let TlsStart::Implicit(connector) = tls {
            let name = server_name(&target.host, target.addr.ip());
            conn.stream =
                handshake(connector, name, conn.stream, timeouts.command, Stage::Tls).await?;
            conn.tls = true;
        }
        let greeting = conn.read_reply(Stage::Greeting).await.map_err(fail)?;
        if greeting.code != 220 {
            conn.quit().await;
            return Err(fail(Attempt::Replied {
                stage: Stage::Greeting,
                reply: greeting,
            }));
        }
        conn.hello(helo).await.map_err(fail)?;
        if let TlsStart::StartTls(connector) = tls
            && conn.caps.starttls
        {
            let reply = conn
                .command("STARTTLS\r\n", Stage::StartTls)
                .await
                .map_err(fail)?;
            if reply.code == 220 {
                let name = server_name(&target.host, target.addr.ip());
                conn.stream = handshake(
                    connector,
                    name,
                    conn.stream,
                    timeouts.command,
                    Stage::StartTls,
                )
                .await?;
                conn.buf.clear();
                conn.tls = true;
                conn.hello(helo).await.map_err(fail)?;
            }
            // Any other answer: carry on in plain text (opportunistic).
        }
        if let Some(credentials) = auth {
            if !conn.tls {
                // Never a password in plain text, whatever the server offers.
                conn.quit().await;
                return Err(fail(no_answer(
                    Stage::Auth,
                    "credentials are only sent over TLS, and this connection has none",
                )));
            }
            conn.login(credentials).await.map_err(fail)?;
        }
        Ok(conn)
    }

    /// AUTH PLAIN (with its initial response), else AUTH LOGIN (RFC 4954). The password
    /// goes out only here, base64-encoded on the wire, and is never logged.
    async fn login(&mut self, credentials: &Credentials) -> Result<(), Attempt> {
        use base64::Engine;
        let b64 = |v: &str| base64::engine::general_purpose::STANDARD.encode(v);
        let (user, password) = (&credentials.username, credentials.password.expose());
        let reply = if self.auth.plain {
            let response = b64(&format!("\0{user}\0{password}"));
            self.command(&format!("AUTH PLAIN {response}\r\n"), Stage::Auth)
                .await?
        } else if self.auth.login {
            let mut reply = self.command("AUTH LOGIN\r\n", Stage::Auth).await?;
            for answer in [user.as_str(), password] {
                if reply.code != 334 {
                    break;
                }
                reply = self
                    .command(&format!("{}\r\n", b64(answer)), Stage::Auth)
                    .await?;
            }
            reply
        } else {
            self.quit().await;
            return Err(no_answer(
                Stage::Auth,
                "the server offers neither AUTH PLAIN nor AUTH LOGIN",
            ));
        };
        if reply.code == 235 {
            return Ok(());
        }
        self.quit().await;
        Err(Attempt::Replied {
            stage: Stage::Auth,
            reply,
        })
    }

    async fn hello(&mut self, helo: &str) -> Result<(), Attempt> {
        let reply = self
            .command(&format!("EHLO {helo}\r\n"), Stage::Ehlo)
            .await?;
        if reply.is_positive() {
            self.caps = Capabilities::from_ehlo(&reply);
            self.auth = AuthMechanisms::from_ehlo(&reply);
            return Ok(());
        }
        let reply = self
            .command(&format!("HELO {helo}\r\n"), Stage::Ehlo)
            .await?;
        if reply.is_positive() {
            self.caps = Capabilities::default();
            self.auth = AuthMechanisms::default();
            return Ok(());
        }
        self.quit().await;
        Err(Attempt::Replied {
            stage: Stage::Ehlo,
            reply,
        })
    }

    async fn write(&mut self, bytes: &[u8], stage: Stage) -> Result<(), Attempt> {
        let t = if matches!(stage, Stage::Dot) {
            self.timeouts.data
        } else {
            self.timeouts.command
        };
        match tokio::time::timeout(t, async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        })
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(no_answer(stage, e)),
            Err(_) => Err(no_answer(stage, "timed out sending")),
        }
    }

    async fn read_reply(&mut self, stage: Stage) -> Result<Reply, Attempt> {
        let t = if matches!(stage, Stage::Dot) {
            self.timeouts.data
        } else {
            self.timeouts.command
        };
        let deadline = tokio::time::Instant::now() + t;
        loop {
            match parse_reply(&self.buf) {
                Ok(Some((reply, used))) => {
                    let _ = self.buf.split_to(used);
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(e) => return Err(no_answer(stage, format!("unreadable reply: {e}"))),
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) => return Err(no_answer(stage, "connection closed by the server")),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(no_answer(stage, e)),
                Err(_) => return Err(no_answer(stage, "timed out waiting for a reply")),
            }
        }
    }

    async fn command(&mut self, line: &str, stage: Stage) -> Result<Reply, Attempt> {
        self.write(line.as_bytes(), stage).await?;
        self.read_reply(stage).await
    }

    /// What this server cannot take of this message, if anything.
    fn refusal(
        &self,
        env: &Envelope,
        sender: Option<&str>,
        rcpts: &[(u32, &Recipient)],
        body: &[u8],
    ) -> Option<LocalRefusal> {
        if needs_smtputf8(env, sender, rcpts) && !self.caps.smtputf8 {
            return Some(LocalRefusal::NeedsSmtpUtf8);
        }
        if env.eight_bit_content && !self.caps.eight_bit_mime {
            return Some(LocalRefusal::NeedsEightBitMime);
        }
        if let Some(limit) = self.caps.size
            && limit > 0
            && body.len() as u64 > limit
        {
            return Some(LocalRefusal::TooBigForServer { limit });
        }
        None
    }

    fn mail_command(
        &self,
        env: &Envelope,
        sender: Option<&str>,
        rcpts: &[(u32, &Recipient)],
        size: usize,
    ) -> String {
        let mut cmd = format!("MAIL FROM:<{}>", sender.unwrap_or(""));
        if self.caps.size.is_some() {
            cmd.push_str(&format!(" SIZE={size}"));
        }
        if self.caps.eight_bit_mime
            && (env.eight_bit_content || env.body_type == BodyType::EightBitMime)
        {
            cmd.push_str(" BODY=8BITMIME");
        }
        if needs_smtputf8(env, sender, rcpts) {
            cmd.push_str(" SMTPUTF8");
        }
        if self.caps.dsn {
            match env.ret {
                Some(Ret::Full) => cmd.push_str(" RET=FULL"),
                Some(Ret::Headers) => cmd.push_str(" RET=HDRS"),
                None => {}
            }
            if let Some(envid) = &env.envid {
                cmd.push_str(" ENVID=");
                cmd.push_str(&xtext_encode(envid));
            }
        }
        cmd.push_str("\r\n");
        cmd
    }

    fn rcpt_command(&self, rcpt: &Recipient) -> String {
        let mut cmd = format!("RCPT TO:<{}>", rcpt.address);
        if self.caps.dsn {
            if let Some(notify) = rcpt.notify {
                cmd.push_str(" NOTIFY=");
                cmd.push_str(&notify.to_param());
            }
            if let Some((ty, addr)) = rcpt.orcpt.as_deref().and_then(|o| o.split_once(';')) {
                cmd.push_str(&format!(" ORCPT={ty};{}", xtext_encode(addr)));
            }
        }
        cmd.push_str("\r\n");
        cmd
    }

    /// Runs one transaction for `rcpts` (index in the envelope, recipient).
    /// One transaction: `sender` is the reverse path of `MAIL FROM` (the message's own, or
    /// its return path; `None`: `<>`).
    pub async fn send(
        &mut self,
        env: &Envelope,
        sender: Option<&str>,
        rcpts: &[(u32, &Recipient)],
        body: &[u8],
    ) -> Sent {
        if let Some(refusal) = self.refusal(env, sender, rcpts, body) {
            return Sent {
                results: rcpts
                    .iter()
                    .map(|(i, _)| (*i, Attempt::Refused(refusal.clone())))
                    .collect(),
                reusable: true,
            };
        }
        let mut wire = Vec::new();
        if dot_stuff(body, &mut wire).is_err() {
            return Sent {
                results: rcpts
                    .iter()
                    .map(|(i, _)| (*i, Attempt::Refused(LocalRefusal::MalformedContent)))
                    .collect(),
                reusable: true,
            };
        }
        let mut results: Vec<(u32, Option<Attempt>)> =
            rcpts.iter().map(|(i, _)| (*i, None)).collect();
        let outcome = self
            .transaction(env, sender, rcpts, &wire, &mut results)
            .await;
        let reusable = match &outcome {
            Ok(()) => true,
            Err(attempt) => {
                for (_, slot) in results.iter_mut().filter(|(_, s)| s.is_none()) {
                    *slot = Some(attempt.clone());
                }
                // A reply (such as 421) means the server is still talking but closing;
                // no reply means the connection is gone. Neither is reused.
                false
            }
        };
        self.transactions += 1;
        let reusable = reusable
            && !results.iter().any(
                |(_, a)| matches!(a, Some(Attempt::Replied { reply, .. }) if reply.code == 421),
            );
        Sent {
            results: results
                .into_iter()
                .map(|(i, a)| (i, a.expect("every recipient gets a result")))
                .collect(),
            reusable,
        }
    }

    /// The transaction proper. Fills `results` as replies come; an `Err` is what happened
    /// to every recipient still without a result, and leaves the connection unusable.
    async fn transaction(
        &mut self,
        env: &Envelope,
        sender: Option<&str>,
        rcpts: &[(u32, &Recipient)],
        wire: &[u8],
        results: &mut [(u32, Option<Attempt>)],
    ) -> Result<(), Attempt> {
        let mail = self.mail_command(env, sender, rcpts, wire.len());
        let rcpt_cmds: Vec<String> = rcpts.iter().map(|(_, r)| self.rcpt_command(r)).collect();
        let pipelining = self.caps.pipelining;
        let mail_reply;
        let mut accepted = Vec::new();
        if pipelining {
            let mut batch = mail.into_bytes();
            for c in &rcpt_cmds {
                batch.extend_from_slice(c.as_bytes());
            }
            batch.extend_from_slice(b"DATA\r\n");
            self.write(&batch, Stage::Mail).await?;
            mail_reply = self.read_reply(Stage::Mail).await?;
            for (k, _) in rcpts.iter().enumerate() {
                let reply = self.read_reply(Stage::Rcpt).await?;
                if !mail_reply.is_positive() {
                    results[k].1 = Some(Attempt::Replied {
                        stage: Stage::Mail,
                        reply: mail_reply.clone(),
                    });
                } else if reply.is_positive() {
                    accepted.push(k);
                } else {
                    results[k].1 = Some(Attempt::Replied {
                        stage: Stage::Rcpt,
                        reply,
                    });
                }
            }
        } else {
            mail_reply = self.command(&mail, Stage::Mail).await?;
            if !mail_reply.is_positive() {
                for r in results.iter_mut() {
                    r.1 = Some(Attempt::Replied {
                        stage: Stage::Mail,
                        reply: mail_reply.clone(),
                    });
                }
                return self.reset().await;
            }
            for (k, c) in rcpt_cmds.iter().enumerate() {
                let reply = self.command(c, Stage::Rcpt).await?;
                if reply.is_positive() {
                    accepted.push(k);
                } else {
                    results[k].1 = Some(Attempt::Replied {
                        stage: Stage::Rcpt,
                        reply,
                    });
                }
            }
            if accepted.is_empty() {
                return self.reset().await;
            }
            self.write(b"DATA\r\n", Stage::Data).await?;
        }
        let data_reply = self.read_reply(Stage::Data).await?;
        if data_reply.code != 354 {
            for &k in &accepted {
                results[k].1 = Some(Attempt::Replied {
                    stage: Stage::Data,
                    reply: data_reply.clone(),
                });
            }
            if data_reply.code == 421 {
                return Ok(());
            }
            return self.reset().await;
        }
        if accepted.is_empty() {
            // RFC 2920 §3.1: a server that says 354 with no valid recipient gets an empty
            // message, which it will refuse.
            self.write(b".\r\n", Stage::Dot).await?;
            self.read_reply(Stage::Dot).await?;
            return self.reset().await;
        }
        self.write(wire, Stage::Dot).await?;
        let final_reply = self.read_reply(Stage::Dot).await?;
        for &k in &accepted {
            results[k].1 = Some(Attempt::Replied {
                stage: Stage::Dot,
                reply: final_reply.clone(),
            });
        }
        Ok(())
    }

    /// RSET after a failed transaction, so the connection can carry the next one.
    async fn reset(&mut self) -> Result<(), Attempt> {
        let reply = self.command("RSET\r\n", Stage::Mail).await?;
        if reply.is_positive() {
            Ok(())
        } else {
            Err(Attempt::Replied {
                stage: Stage::Mail,
                reply,
            })
        }
    }

    /// Says goodbye politely; errors do not matter any more.
    pub async fn quit(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = self.stream.write_all(b"QUIT\r\n").await;
            let _ = self.stream.flush().await;
            let _ = self.read_reply(Stage::Mail).await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }
}

/// A TLS handshake as the client, within `limit`: a server that stops answering in the
/// middle of one must not hold the connection (and its worker) for ever.
async fn handshake(
    connector: &TlsConnector,
    name: ServerName<'static>,
    stream: BoxStream,
    limit: Duration,
    stage: Stage,
) -> Result<BoxStream, OpenError> {
    let failed = |why: String| OpenError {
        attempt: no_answer(stage, why),
        tls_failed: true,
    };
    match tokio::time::timeout(limit, connector.connect(name, stream)).await {
        Ok(Ok(secured)) => Ok(Box::new(secured)),
        Ok(Err(e)) => Err(failed(format!("TLS handshake failed: {e}"))),
        Err(_) => Err(failed("timed out in the TLS handshake".into())),
    }
}

/// SMTPUTF8 is needed when the client asked for it and something actually is UTF-8.
fn needs_smtputf8(env: &Envelope, sender: Option<&str>, rcpts: &[(u32, &Recipient)]) -> bool {
    env.smtputf8
        && (env.eight_bit_content
            || !sender.unwrap_or("").is_ascii()
            || rcpts.iter().any(|(_, r)| !r.address.is_ascii()))
}

fn server_name(host: &str, ip: std::net::IpAddr) -> ServerName<'static> {
    ServerName::try_from(host.to_string()).unwrap_or_else(|_| ServerName::IpAddress(ip.into()))
}
