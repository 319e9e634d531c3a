//! Session tests over in-memory streams: the protocol, its limits, who may send, STARTTLS
//! and AUTH, with paused time where timers matter.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;
use crate::config::Config;
use crate::config::SpoolConfig;
use crate::smtp::reply::parse_reply;
use crate::spool::Location;

#[derive(Default)]
struct Collect(Mutex<Vec<(Envelope, Bytes)>>);

impl Intake for Collect {
    fn accepted(&self, envelope: Envelope, _loc: Location, body: Bytes) {
        self.0.lock().unwrap().push((envelope, body));
    }
}

struct Harness {
    ctx: Arc<SessionContext>,
    intake: Arc<Collect>,
    _dir: tempfile::TempDir,
}

const USER_POLICY: &str = r#"
[accounts.local]
networks = ["127.0.0.0/8"]
[accounts.shop]
[[accounts.shop.users]]
username = "shop"
password_hash = "HASH"
"#;

fn harness_with(smtp_toml: &str, policy_toml: &str, tls: bool) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml(
        "t",
        &format!("[smtp]\nhostname = \"relay.test\"\n{smtp_toml}"),
    )
    .unwrap();
    let policy_toml =
        policy_toml.replace("HASH", &crate::policy::password::hash_password("s3cret"));
    let policy = Policy::from_toml("p", &policy_toml).unwrap();
    let (spool, _) = Spool::open(&SpoolConfig {
        path: dir.path().to_path_buf(),
        fsync: false,
        segment_size: 1 << 20,
    })
    .unwrap();
    let intake = Arc::new(Collect::default());
    let auth_guard = Arc::new(guard::AuthGuard::new(config.smtp.auth.clone()));
    let data_memory = crate::session::memory::DataMemory::new(config.smtp.max_data_memory);
    let ctx = Arc::new(SessionContext {
        smtp: config.smtp,
        policy: Arc::new(ArcSwap::from_pointee(policy)),
        lists: Arc::new(crate::consent::Lists::open(&dir.path().join("lists"), 24).unwrap()),
        ledger: None,
        own_domain: "relay.test".into(),
        unsubscribes: None,
        complaints: None,
        bounces: None,
        log: None,
        freezes: None,
        campaigns: None,
        passwords: Arc::new(Passwords::new(2)),
        auth_guard,
        spool,
        intake: intake.clone(),
        own_limits: OwnLimits {
            report: 1 << 20,
            unsubscribe: 64 << 10,
            bounce: 1 << 20,
        },
        tls_available: tls,
        data_memory,
        shutdown: CancellationToken::new(),
    });
    Harness {
        ctx,
        intake,
        _dir: dir,
    }
}

fn harness() -> Harness {
    harness_with("", USER_POLICY, false)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A client end of an in-memory connection with a session running on the other end.
struct Client {
    io: DuplexStream,
    buf: Vec<u8>,
    task: tokio::task::JoinHandle<Result<End<DuplexStream>, SessionError>>,
}

impl Client {
    fn connect(h: &Harness, from: &str) -> Client {
        let (client, server) = tokio::io::duplex(1 << 20);
        let ctx = h.ctx.clone();
        let peer = Peer::new(addr(from));
        let task = tokio::spawn(async move { run(&ctx, server, peer).await });
        Client {
            io: client,
            buf: Vec::new(),
            task,
        }
    }

    async fn send(&mut self, text: &str) {
        self.io.write_all(text.as_bytes()).await.unwrap();
    }

    async fn reply(&mut self) -> Reply {
        loop {
            if let Some((reply, used)) = parse_reply(&self.buf).unwrap() {
                self.buf.drain(..used);
                return reply;
            }
            let mut chunk = [0u8; 4096];
            let n = self.io.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed while waiting for a reply");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends a command and returns the reply's one-line form.
    async fn cmd(&mut self, text: &str) -> String {
        self.send(&format!("{text}\r\n")).await;
        self.reply().await.one_line()
    }

    async fn expect_closed(&mut self) {
        let mut chunk = [0u8; 64];
        let n = self.io.read(&mut chunk).await.unwrap_or(0);
        assert_eq!(
            n,
            0,
            "expected close, got {:?}",
            String::from_utf8_lossy(&chunk[..n])
        );
    }
}

async fn greeted(h: &Harness, from: &str) -> Client {
    let mut c = Client::connect(h, from);
    let banner = c.reply().await;
    assert_eq!(banner.code, 220);
    assert!(banner.text.starts_with("relay.test ESMTP"));
    c
}

#[tokio::test]
async fn a_complete_transaction_is_spooled_with_a_received_header() {
    let h = harness();
    let mut c = greeted(&h, "127.0.0.1:5000").await;
    let ehlo = c.cmd("EHLO client.example").await;
    for ext in [
        "PIPELINING",
        "SIZE 26214400",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "DSN",
    ] {
        assert!(ehlo.contains(ext), "{ext} missing from {ehlo}");
    }
    assert!(!ehlo.contains("AUTH"), "no AUTH without TLS: {ehlo}");
    assert!(
        !ehlo.contains("STARTTLS"),
        "no STARTTLS without a certificate: {ehlo}"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<app@shop.example> RET=HDRS ENVID=e1")
            .await,
        "250 2.1.0 Sender OK"
    );
    assert_eq!(
        c.cmd("RCPT TO:<a@x.example> NOTIFY=FAILURE,DELAY ORCPT=rfc822;a@x.example")
            .await,
        "250 2.1.5 Recipient OK"
    );
    assert_eq!(
        c.cmd("RCPT TO:<b@y.example>").await,
        "250 2.1.5 Recipient OK"
    );
    assert_eq!(c.cmd("DATA").await, "354 End data with <CR><LF>.<CR><LF>");
    let done = c.cmd("Subject: hi\r\n\r\n..dotted\r\nbody\r\n.").await;
    assert!(done.starts_with("250 2.0.0 OK queued as "), "{done}");
    assert_eq!(
        c.cmd("QUIT").await,
        "221 2.0.0 relay.test closing connection"
    );
    c.expect_closed().await;

    let got = h.intake.0.lock().unwrap();
    let (env, body) = &got[0];
    assert_eq!(env.account, "local");
    assert_eq!(env.sender.as_deref(), Some("app@shop.example"));
    assert_eq!(env.envid.as_deref(), Some("e1"));
    assert_eq!(env.recipients.len(), 2);
    assert_eq!(
        env.recipients[0].orcpt.as_deref(),
        Some("rfc822;a@x.example")
    );
    assert!(env.recipients[0].notify.unwrap().delay);
    assert!(done.ends_with(&env.id.to_string()));
    let text = std::str::from_utf8(body).unwrap();
    assert!(text.starts_with("Received: from client.example ([127.0.0.1])\r\n\tby relay.test (optin-relay) with ESMTP id "), "{text}");
    assert!(
        text.ends_with("Subject: hi\r\n\r\n.dotted\r\nbody\r\n"),
        "{text}"
    );
    assert!(
        !text.contains("a@x.example"),
        "no recipient in the trace header"
    );
}

#[tokio::test]
async fn pipelined_commands_are_answered_in_order() {
    let h = harness();
    let mut c = greeted(&h, "127.0.0.1:5000").await;
    c.send("EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@x.example>\r\nRCPT TO:<bad>\r\nDATA\r\n")
        .await;
    assert_eq!(c.reply().await.code, 250);
    assert_eq!(c.reply().await.code, 250);
    assert_eq!(c.reply().await.code, 250);
    assert_eq!(
        c.reply().await.one_line(),
        "501 5.1.3 Bad recipient address: the address has no @domain"
    );
    assert_eq!(c.reply().await.code, 354);
    c.send("x\r\n.\r\nQUIT\r\n").await;
    assert_eq!(c.reply().await.code, 250);
    assert_eq!(c.reply().await.code, 221);
    assert_eq!(h.intake.0.lock().unwrap()[0].0.sender, None);
}

#[tokio::test]
async fn command_order_is_enforced() {
    let h = harness();
    let mut c = greeted(&h, "127.0.0.1:5000").await;
    assert_eq!(
        c.cmd("MAIL FROM:<a@b.example>").await,
        "503 5.5.1 Bad sequence of commands: send EHLO or HELO first"
    );
    assert_eq!(c.cmd("HELO c").await, "250 relay.test");
    assert_eq!(
        c.cmd("RCPT TO:<a@b.example>").await,
        "503 5.5.1 Bad sequence of commands: need MAIL before RCPT"
    );
    assert_eq!(
        c.cmd("DATA").await,
        "503 5.5.1 Bad sequence of commands: need MAIL and RCPT first"
    );
    assert!(c.cmd("MAIL FROM:<a@b.example>").await.starts_with("250"));
    assert_eq!(
        c.cmd("MAIL FROM:<a@b.example>").await,
        "503 5.5.1 Bad sequence of commands: nested MAIL command"
    );
    assert_eq!(
        c.cmd("DATA").await,
        "503 5.5.1 Bad sequence of commands: need RCPT first"
    );
    // HELO sessions take no ESMTP parameters
    assert_eq!(c.cmd("RSET").await, "250 2.0.0 OK");
    assert_eq!(
        c.cmd("MAIL FROM:<a@b.example> SIZE=10").await,
        "555 5.5.4 Parameter SIZE is not supported"
    );
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK");
    assert_eq!(
        c.cmd("VRFY someone").await,
        "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"
    );
    assert!(c.cmd("HELP").await.starts_with("214 2.0.0 Commands:"));
    assert_eq!(
        c.cmd("EXPN list").await,
        "502 5.5.1 Command not implemented"
    );
    assert_eq!(c.cmd("WHAT").await, "500 5.5.1 Command not recognized");
}

#[tokio::test]
async fn strangers_cannot_relay() {
    // no users in the policy: a stranger is simply denied
    let h = harness_with("", "[accounts.local]\nnetworks = [\"127.0.0.0/8\"]\n", true);
    let mut c = greeted(&h, "192.0.2.9:5000").await;
    c.cmd("EHLO stranger").await;
    // MAIL is taken (the postmaster is open to anyone); RCPT refuses everyone else.
    assert_eq!(
        c.cmd("MAIL FROM:<a@b.example>").await,
        "250 2.1.0 Sender OK"
    );
    for rcpt in [
        "a@b.example",
        "postmaster@b.example",
        "\"victim@else.example\"@relay.test",
        "victim%else.example@relay.test",
        "@relay.test:victim@else.example",
    ] {
        let reply = c.cmd(&format!("RCPT TO:<{rcpt}>")).await;
        assert!(
            reply
                == "554 5.7.1 Relay access denied: this client is not allowed to send through this relay"
                || reply.starts_with("501"),
            "{rcpt}: {reply}"
        );
    }
    c.cmd("RSET").await;
    // with users and TLS on offer: authenticate first
    let h = harness_with("", USER_POLICY, true);
    let mut c = greeted(&h, "192.0.2.9:5000").await;
    c.cmd("EHLO stranger").await;
    assert_eq!(
        c.cmd("MAIL FROM:<a@b.example>").await,
        "250 2.1.0 Sender OK"
    );
    assert_eq!(
        c.cmd("RCPT TO:<a@b.example>").await,
        "530 5.7.0 Authentication required"
    );
    c.cmd("RSET").await;
    assert_eq!(
        c.cmd("AUTH PLAIN AHNob3AAczNjcmV0").await,
        "538 5.7.11 Encryption required for requested authentication mechanism"
    );
    assert!(h.intake.0.lock().unwrap().is_empty());
}

#[tokio::test]
async fn size_limits() {
    let h = harness_with("max_message_size = \"2KiB\"", USER_POLICY, false);
    let mut c = greeted(&h, "127.0.0.1:5000").await;
    c.cmd("EHLO c").await;
    assert_eq!(
        c.cmd("MAIL FROM:<a@b.example> SIZE=4096").await,
        "552 5.3.4 Message exceeds the size limit of 2048 octets"
    );
    c.cmd("MAIL FROM:<a@b.example>").await;
    c.cmd("RCPT TO:<c@d.example>").await;
    c.cmd("DATA").await;
    let line = "x".repeat(100);
    for _ in 0..50 {
        c.send(&format!("{line}\r\n")).await;
    }
    assert_eq!(
        c.cmd(".").await,
        "552 5.3.4 Message exceeds the size limit of 2048 octets"
    );
    // the session carries on
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK");
    assert!(h.intake.0.lock().unwrap().is_empty());
}

#[tokio::test]
async fn postmaster_without_a_domain_is_accepted() {
    let h = harness_with("postmaster = \"ops@relay.example\"", USER_POLICY, false);
    let mut c = greeted(&h, "127.0.0.1:5000").await;
    c.cmd("EHLO c").await;
    c.cmd("MAIL FROM:<a@b.example>").await;
    assert_eq!(
        c.cmd("RCPT TO:<Postmaster>").await,
        "250 2.1.5 Recipient OK"
    );
    c.cmd("DATA").await;
    assert!(c.cmd("Subject: hi\r\n\r\nx\r\n.").await.starts_with("250"));
    assert_eq!(
        h.intake.0.lock().unwrap()[0].0.recipients[0].address,
        "ops@relay.example"
    );
}

#[tokio::test]
async fn anyone_may_write_to_the_postmaster_and_nobody_else() {
    let h = harness_with(
        "postmaster = \"ops@relay.example\"\nmax_message_size = \"10MiB\"",
        USER_POLICY,
        true,
    );
    let mut c = greeted(&h, "192.0.2.9:5000").await;
    c.cmd("EHLO stranger").await;
    // a stranger's mail to the postmaster is small, like a report
    assert_eq!(
        c.cmd("MAIL FROM:<someone@else.example> SIZE=5000000").await,
        "552 5.3.4 Message exceeds the size limit of 1048576 octets"
    );
    c.cmd("MAIL FROM:<someone@else.example>").await;
    for postmaster in [
        "<postmaster>",
        "<Postmaster@relay.test>",
        "<\"postmaster\"@relay.test>",
        "<\"post\\master\"@relay.test>",
    ] {
        assert_eq!(
            c.cmd(&format!("RCPT TO:{postmaster}")).await,
            "250 2.1.5 Recipient OK"
        );
    }
    assert_eq!(
        c.cmd("RCPT TO:<victim@else.example>").await,
        "530 5.7.0 Authentication required"
    );
    c.cmd("DATA").await;
    assert!(
        c.cmd("Subject: your relay\r\nX-Optin-Stream: marketing\r\n\r\nhello\r\n.")
            .await
            .starts_with("250 2.0.0 OK queued")
    );
    let got = h.intake.0.lock().unwrap();
    assert_eq!(got.len(), 1);
    let (env, _) = &got[0];
    assert_eq!(env.account, RELAY_ACCOUNT);
    assert_eq!(env.stream, crate::envelope::Stream::Transactional);
    let to: Vec<&str> = env.recipients.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(to, ["ops@relay.example"]);
}

#[tokio::test]
async fn recipient_limit() {
    let h = harness_with("max_recipients = 2", USER_POLICY, false);
    let mut c = greeted(&h, "127.0.0.1:5000").await;
    c.cmd("EHLO c").await;
    c.cmd("MAIL FROM:<a@b.example>").await;
    assert!(c.cmd("RCPT TO:<1@d.example>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<2@d.example>").await.starts_with("250"));
    assert_eq!(
        c.cmd("RCPT TO:<3@d.example>").await,
        "452 4.5.3 Too many recipients"
    );
}

#[tokio::test]
async fn smuggling_attempt_is_one_refused_message() {
    let h = harness();
    let mut c = greeted(&h, "127.0.0.1:5000").await;
    c.cmd("EHLO c").await;
    c.cmd("MAIL FROM:<a@b.example>").await;
    c.cmd("RCPT TO:<c@d.example>").await;
    c.cmd("DATA").await;
    // <LF>.<LF> must not end the data: the "smuggled" transaction is content.
    c.send("Subject: x\r\n\r\nhello\n.\nMAIL FROM:<evil@e.example>\r\nRCPT TO:<victim@v.example>\r\nDATA\r\nforged\r\n.\r\n").await;
    assert_eq!(
        c.reply().await.one_line(),
        "550 5.6.0 Message refused: bare CR or LF in message data; lines must end with CRLF"
    );
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK");
    assert!(h.intake.0.lock().unwrap().is_empty());
}

#[tokio::test]
async fn lf_dot_crlf_cannot_smuggle_a_second_message() {
    // The pattern of the published SMTP smuggling attacks: a false end (`<LF>.<CR><LF>`)
    // followed by a whole second transaction. It is all one message, refused for its bare
    // LF; nothing after the false end is taken as a command.
    for false_end in ["\n.\r\n", "\r.\r\n", "\n.\n", "\r\n.\n", "\r\n\0.\r\n"] {
        let h = harness();
        let mut c = greeted(&h, "127.0.0.1:5000").await;
        c.cmd("EHLO c").await;
        c.cmd("MAIL FROM:<a@b.example>").await;
        c.cmd("RCPT TO:<c@d.example>").await;
        c.cmd("DATA").await;
        c.send(&format!(
            "Subject: first\r\n\r\nfirst{false_end}MAIL FROM:<x@evil.example>\r\nRCPT TO:<victim@v.example>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n"
        ))
        .await;
        let reply = c.reply().await.one_line();
        assert!(
            reply.starts_with("550 5.6.0 Message refused"),
            "{false_end:?}: {reply}"
        );
        // The next reply answers our own NOOP: no reply was given to a smuggled command.
        assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK", "{false_end:?}");
        assert!(h.intake.0.lock().unwrap().is_empty(), "{false_end:?}");
    }
}

#[tokio::test]
async fn bdat_cannot_smuggle_a_second_message() {
    let h = harness();
    let mut c = greeted(&h, "127.0.0.1:5000").await;
    c.cmd("EHLO c").await;
    c.cmd("MAIL FROM:<a@b.example>").await;
    c.cmd("RCPT TO:<c@d.example>").await;
    let chunk = "Subject: x\r\n\r\nfirst\n.\r\nMAIL FROM:<x@evil.example>\r\nRCPT TO:<v@v.example>\r\nDATA\r\n";
    c.send(&format!("BDAT {} LAST\r\n{chunk}", chunk.len()))
        .await;
    assert!(c.reply().await.one_line().starts_with("550 5.6.0"));
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK");
    assert!(h.intake.0.lock().unwrap().is_empty());
}

#[tokio::test]
async fn nul_in_content_is_refused() {
    let h = harness();
    let mut c = greeted(&h, "127.0.0.1:5000").await;
    c.cmd("EHLO c").await;
    c.cmd("MAIL FROM:<a@b.example>").await;
    c.cmd("RCPT TO:<c@d.example>").await;
    c.cmd("DATA").await;
    assert_eq!(
        c.cmd("Subject: x\r\n\r\nbefore\0after\r\n.").await,
        "550 5.6.0 Message refused: NUL octet in message data"
    );
    assert!(h.intake.0.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_over_long_command_line_closes_at_the_limit() {
    // No CRLF ever comes: the reply and the close come once the limit is passed.
    let h = harness_with("max_command_line = 1024", USER_POLICY, false);
    let mut c = greeted(&h, "127.0.0.1:5000").await;
    c.send(&format!("NOOP {}", "x".repeat(1100))).await;
    assert_eq!(
        c.reply().await.one_line(),
        "500 5.5.2 Line too long, closing connection"
    );
    c.expect_closed().await;
}

#[tokio::test]
async fn bad_command_lines() {
    let h = harness();
    let mut c = greeted(&h, "127.0.0.1:5000").await;
    c.send("NOOP\n").await;
    assert_eq!(
        c.reply().await.one_line(),
        "500 5.5.2 Bare CR or LF in command; lines must end with CRLF"
    );
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK");
    c.cmd("EHLO c").await;
    c.cmd("MAIL FROM:<a@b.example>").await;
    c.cmd("RCPT TO:<c@d.example>").await;
    c.cmd("DATA").await;
    let long = "y".repeat(1200);
    assert_eq!(
        c.cmd(&format!("{long}\r\n.")).await,
        "550 5.6.0 Message refused: a line is longer than 998 octets"
    );
}

#[tokio::test]
async fn too_many_errors_closes_the_session() {
    let h = harness_with("max_errors = 3", USER_POLICY, false);
    let mut c = greeted(&h, "127.0.0.1:5000").await;
    assert_eq!(c.cmd("BOGUS").await, "500 5.5.1 Command not recognized");
    assert_eq!(c.cmd("BOGUS").await, "500 5.5.1 Command not recognized");
    c.send("BOGUS\r\n").await;
    assert_eq!(c.reply().await.code, 500);
    assert_eq!(
        c.reply().await.one_line(),
        "421 4.7.0 Too many errors, closing connection"
    );
    c.expect_closed().await;
}

#[tokio::test(start_paused = true)]
async fn idle_clients_are_timed_out() {
    let h = harness_with("idle_timeout = \"30s\"", USER_POLICY, false);
    let mut c = greeted(&h, "127.0.0.1:5000").await;
    c.cmd("EHLO c").await;
    let started = tokio::time::Instant::now();
    assert_eq!(
        c.reply().await.one_line(),
        "421 4.4.2 Idle timeout, closing connection"
    );
    assert!(started.elapsed() >= Duration::from_secs(30));
    c.expect_closed().await;
}

#[tokio::test(start_paused = true)]
async fn sessions_have_a_total_time_limit() {
    let h = harness_with(
        "idle_timeout = \"1m\"\nsession_timeout = \"3m\"",
        USER_POLICY,
        false,
    );
    let started = tokio::time::Instant::now();
    let mut c = greeted(&h, "127.0.0.1:5000").await;
    // busy, never idle for a minute, but the session still ends at 3 minutes
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(50)).await;
        assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK");
    }
    assert_eq!(
        c.reply().await.one_line(),
        "421 4.4.2 Session time limit reached, closing connection"
    );
    assert_eq!(started.elapsed().as_secs(), 180);
}

#[tokio::test]
async fn shutdown_closes_idle_sessions_with_421() {
    let h = harness();
    let mut c = greeted(&h, "127.0.0.1:5000").await;
    c.cmd("EHLO c").await;
    h.ctx.shutdown.cancel();
    assert_eq!(
        c.reply().await.one_line(),
        "421 4.3.2 Service shutting down, try again later"
    );
}

#[tokio::test]
async fn bdat_chunks() {
    let h = harness();
    let mut c = greeted(&h, "127.0.0.1:5000").await;
    c.cmd("EHLO c").await;
    // BDAT before a transaction: the chunk is still consumed, then refused
    c.send("BDAT 5\r\nHELLO").await;
    assert_eq!(c.reply().await.code, 503);
    c.cmd("MAIL FROM:<a@b.example>").await;
    c.cmd("RCPT TO:<c@d.example>").await;
    c.send("BDAT 14\r\nSubject: x\r\n\r\n").await;
    assert_eq!(c.reply().await.one_line(), "250 2.0.0 14 octets received");
    c.send("BDAT 9 LAST\r\nno CRLF.\n").await;
    assert!(
        c.reply().await.one_line().starts_with("550 5.6.0"),
        "bare LF refused in BDAT too"
    );
    c.cmd("MAIL FROM:<a@b.example>").await;
    c.cmd("RCPT TO:<c@d.example>").await;
    c.send("BDAT 16\r\nSubject: y\r\n\r\nhi").await;
    c.send("BDAT 0 LAST\r\n").await;
    assert_eq!(c.reply().await.code, 250);
    assert!(
        c.reply()
            .await
            .one_line()
            .starts_with("250 2.0.0 OK queued as")
    );
    let got = h.intake.0.lock().unwrap();
    assert!(
        got[0].1.ends_with(b"Subject: y\r\n\r\nhi\r\n"),
        "final CRLF added"
    );
}

#[tokio::test]
async fn bdat_over_the_size_limit() {
    let h = harness_with("max_message_size = \"1KiB\"", USER_POLICY, false);
    let mut c = greeted(&h, "127.0.0.1:5000").await;
    c.cmd("EHLO c").await;
    c.cmd("MAIL FROM:<a@b.example>").await;
    c.cmd("RCPT TO:<c@d.example>").await;
    let chunk = "z".repeat(600) + "\r\n";
    c.send(&format!("BDAT {}\r\n{chunk}", chunk.len())).await;
    assert_eq!(c.reply().await.code, 250);
    c.send(&format!("BDAT {}\r\n{chunk}", chunk.len())).await;
    assert_eq!(
        c.reply().await.one_line(),
        "552 5.3.4 Message exceeds the size limit of 1024 octets"
    );
    // the transaction is gone; more chunks are read and refused
    c.send(&format!("BDAT {} LAST\r\n{chunk}", chunk.len()))
        .await;
    assert_eq!(c.reply().await.code, 503);
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK");
}

#[tokio::test]
async fn smtputf8_addresses() {
    let h = harness();
    let mut c = greeted(&h, "127.0.0.1:5000").await;
    c.cmd("EHLO c").await;
    c.cmd("MAIL FROM:<a@b.example>").await;
    assert_eq!(
        c.cmd("RCPT TO:<用户@例子.广告>").await,
        "553 5.6.7 Non-ASCII address needs the SMTPUTF8 parameter"
    );
    c.cmd("RSET").await;
    c.cmd("MAIL FROM:<a@b.example> SMTPUTF8 BODY=8BITMIME")
        .await;
    assert!(c.cmd("RCPT TO:<用户@例子.广告>").await.starts_with("250"));
    c.cmd("DATA").await;
    assert!(
        c.cmd("Subject: Grüße\r\n\r\nü\r\n.")
            .await
            .starts_with("250")
    );
    let got = h.intake.0.lock().unwrap();
    assert!(got[0].0.smtputf8 && got[0].0.eight_bit_content);
    assert!(
        std::str::from_utf8(&got[0].1)
            .unwrap()
            .contains("with UTF8SMTP id")
    );
}

#[tokio::test]
async fn mail_loops_are_refused() {
    let h = harness();
    let mut c = greeted(&h, "127.0.0.1:5000").await;
    c.cmd("EHLO c").await;
    c.cmd("MAIL FROM:<a@b.example>").await;
    c.cmd("RCPT TO:<c@d.example>").await;
    c.cmd("DATA").await;
    let hops = "Received: from x by y; Mon, 1 Jan 2024 00:00:00 +0000\r\n".repeat(51);
    assert_eq!(
        c.cmd(&format!("{hops}Subject: loop\r\n\r\nbody\r\n."))
            .await,
        "554 5.4.6 Message refused: 51 Received headers, probable mail loop"
    );
}

// ---- TLS ----------------------------------------------------------------------------

async fn tls_client(
    h: &Harness,
    from: &str,
    pipelined_after_starttls: &str,
) -> (tokio_rustls::client::TlsStream<DuplexStream>, Vec<u8>) {
    let (client, server) = tokio::io::duplex(1 << 20);
    let ctx = h.ctx.clone();
    let acceptor = tokio_rustls::TlsAcceptor::from(
        crate::tls::server_config(&Default::default(), "relay.test").unwrap(),
    );
    let peer = Peer::new(addr(from));
    tokio::spawn(async move {
        match run(&ctx, server, peer).await.unwrap() {
            End::StartTls(stream, mut peer) => {
                let tls = acceptor.accept(stream).await.unwrap();
                peer.tls = Some(crate::tls::describe(tls.get_ref().1));
                run(&ctx, tls, peer).await.unwrap();
            }
            End::Closed => {}
        }
    });
    let mut c = Client {
        io: client,
        buf: Vec::new(),
        task: tokio::spawn(async { Ok(End::Closed) }),
    };
    c.reply().await;
    assert!(c.cmd("EHLO c").await.contains("STARTTLS"));
    c.send(&format!("STARTTLS\r\n{pipelined_after_starttls}"))
        .await;
    assert_eq!(c.reply().await.one_line(), "220 2.0.0 Ready to start TLS");
    let connector = tokio_rustls::TlsConnector::from(crate::tls::opportunistic_client_config());
    let name = rustls::pki_types::ServerName::try_from("relay.test").unwrap();
    let tls = connector.connect(name, c.io).await.unwrap();
    (tls, c.buf)
}

async fn tls_cmd(
    tls: &mut tokio_rustls::client::TlsStream<DuplexStream>,
    buf: &mut Vec<u8>,
    line: &str,
) -> String {
    tls.write_all(format!("{line}\r\n").as_bytes())
        .await
        .unwrap();
    loop {
        if let Some((reply, used)) = parse_reply(buf).unwrap() {
            buf.drain(..used);
            return reply.one_line();
        }
        let mut chunk = [0u8; 4096];
        let n = tls.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn starttls_then_auth_then_send() {
    let h = harness_with("", USER_POLICY, true);
    let (mut tls, mut buf) = tls_client(&h, "192.0.2.9:5000", "").await;
    let ehlo = tls_cmd(&mut tls, &mut buf, "EHLO c").await;
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    // wrong password, then PLAIN with an initial response ("\0shop\0s3cret")
    assert_eq!(
        tls_cmd(&mut tls, &mut buf, "AUTH PLAIN AHNob3AAd3Jvbmc=").await,
        "535 5.7.8 Authentication credentials invalid"
    );
    assert_eq!(
        tls_cmd(&mut tls, &mut buf, "AUTH PLAIN AHNob3AAczNjcmV0").await,
        "235 2.7.0 Authentication successful"
    );
    assert_eq!(
        tls_cmd(&mut tls, &mut buf, "AUTH PLAIN AHNob3AAczNjcmV0").await,
        "503 5.5.1 Bad sequence of commands: already authenticated"
    );
    assert!(
        tls_cmd(&mut tls, &mut buf, "MAIL FROM:<a@shop.example>")
            .await
            .starts_with("250")
    );
    assert!(
        tls_cmd(&mut tls, &mut buf, "RCPT TO:<c@d.example>")
            .await
            .starts_with("250")
    );
    assert!(tls_cmd(&mut tls, &mut buf, "DATA").await.starts_with("354"));
    assert!(
        tls_cmd(&mut tls, &mut buf, "Subject: t\r\n\r\nx\r\n.")
            .await
            .starts_with("250 2.0.0 OK queued")
    );
    let got = h.intake.0.lock().unwrap();
    assert_eq!(got[0].0.account, "shop");
    let text = std::str::from_utf8(&got[0].1).unwrap();
    assert!(text.contains("with ESMTPSA id"), "{text}");
    assert!(text.contains("(using TLSv1_3 with cipher"), "{text}");
}

#[tokio::test]
async fn auth_login_mechanism() {
    let h = harness_with("", USER_POLICY, true);
    let (mut tls, mut buf) = tls_client(&h, "192.0.2.9:5000", "").await;
    tls_cmd(&mut tls, &mut buf, "EHLO c").await;
    assert_eq!(
        tls_cmd(&mut tls, &mut buf, "AUTH LOGIN").await,
        "334 VXNlcm5hbWU6"
    );
    assert_eq!(
        tls_cmd(&mut tls, &mut buf, "c2hvcA==").await,
        "334 UGFzc3dvcmQ6"
    );
    assert_eq!(
        tls_cmd(&mut tls, &mut buf, "czNjcmV0").await,
        "235 2.7.0 Authentication successful"
    );
    // cancelling an exchange
    let h = harness_with("", USER_POLICY, true);
    let (mut tls, mut buf) = tls_client(&h, "192.0.2.9:5000", "").await;
    tls_cmd(&mut tls, &mut buf, "EHLO c").await;
    assert_eq!(tls_cmd(&mut tls, &mut buf, "AUTH PLAIN").await, "334 ");
    assert_eq!(
        tls_cmd(&mut tls, &mut buf, "*").await,
        "501 5.0.0 Authentication cancelled"
    );
}

#[tokio::test]
async fn commands_pipelined_behind_starttls_are_discarded() {
    let h = harness_with("", USER_POLICY, true);
    // A man in the middle could append these in plain text; they must not run in the TLS
    // session. The TLS handshake would fail if the server read them as TLS records, so the
    // handshake succeeding shows they were dropped.
    let (mut tls, mut buf) =
        tls_client(&h, "127.0.0.1:5000", "MAIL FROM:<evil@e.example>\r\n").await;
    // A fresh session state: MAIL needs EHLO again, and no transaction was carried over.
    assert_eq!(
        tls_cmd(&mut tls, &mut buf, "RCPT TO:<c@d.example>").await,
        "503 5.5.1 Bad sequence of commands: need MAIL before RCPT"
    );
}

#[tokio::test]
async fn starttls_without_a_certificate_is_refused() {
    let h = harness();
    let mut c = greeted(&h, "127.0.0.1:5000").await;
    c.cmd("EHLO c").await;
    assert_eq!(c.cmd("STARTTLS").await, "454 4.7.0 TLS not available");
    let _ = &c.task;
}

fn plain(username: &str, password: &str) -> String {
    use base64::Engine;
    let raw = format!("\0{username}\0{password}");
    format!(
        "AUTH PLAIN {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

#[tokio::test]
async fn repeated_auth_failures_lock_the_client_out_across_sessions() {
    let h = harness_with(
        "auth_failure_delay = \"10ms\"\nauth_failure_delay_max = \"40ms\"\nauth_max_failures = 3",
        USER_POLICY,
        true,
    );
    let (mut tls, mut buf) = tls_client(&h, "192.0.2.9:5000", "").await;
    tls_cmd(&mut tls, &mut buf, "EHLO c").await;
    let started = tokio::time::Instant::now();
    for guess in ["a", "b", "c"] {
        assert_eq!(
            tls_cmd(&mut tls, &mut buf, &plain("shop", guess)).await,
            "535 5.7.8 Authentication credentials invalid"
        );
    }
    // the delays grew: 10 + 20 + 40 ms
    assert!(started.elapsed() >= Duration::from_millis(70));
    // now even the right password is not checked, in this session or a new one
    assert_eq!(
        tls_cmd(&mut tls, &mut buf, &plain("shop", "s3cret")).await,
        "454 4.7.0 Too many failed authentication attempts, try again later"
    );
    let (mut tls, mut buf) = tls_client(&h, "192.0.2.9:6000", "").await;
    tls_cmd(&mut tls, &mut buf, "EHLO c").await;
    assert_eq!(
        tls_cmd(&mut tls, &mut buf, &plain("shop", "s3cret")).await,
        "454 4.7.0 Too many failed authentication attempts, try again later"
    );
    // another client is not locked out
    let (mut tls, mut buf) = tls_client(&h, "192.0.2.10:5000", "").await;
    tls_cmd(&mut tls, &mut buf, "EHLO c").await;
    assert_eq!(
        tls_cmd(&mut tls, &mut buf, &plain("shop", "s3cret")).await,
        "235 2.7.0 Authentication successful"
    );
}

#[tokio::test]
async fn a_username_cannot_inject_log_lines() {
    use std::io::Write;
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // The test runtime has one thread: the session's task logs through this subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);
    let h = harness_with("auth_failure_delay = \"1ms\"", USER_POLICY, true);
    let (mut tls, mut buf) = tls_client(&h, "192.0.2.9:5000", "").await;
    tls_cmd(&mut tls, &mut buf, "EHLO c").await;
    let forged = "mallory\n2026-12-05T00:00:00Z  INFO optin_relay::session::auth: authenticated account=shop\r\x1b[2K";
    assert!(
        tls_cmd(&mut tls, &mut buf, &plain(forged, "x"))
            .await
            .starts_with("535")
    );
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("authentication failed"), "{log}");
    assert!(log.contains(r"mallory\n2026-12-05"), "{log}");
    assert!(
        !log.lines().any(|l| l.starts_with("2026-12-05T00:00:00Z")),
        "{log}"
    );
    assert!(!log.contains('\x1b') && !log.contains('\r'), "{log}");
}

/// Waits (bounded) until the relay-wide content budget holds at least `bytes`.
async fn content_held(h: &Harness, bytes: u64) {
    for _ in 0..2000 {
        if h.ctx.data_memory.used() >= bytes {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("content budget holds only {}", h.ctx.data_memory.used());
}

fn lines(n: usize) -> String {
    ("y".repeat(998) + "\r\n").repeat(n)
}

#[tokio::test]
async fn content_in_memory_has_a_relay_wide_budget() {
    let h = harness_with(
        "max_message_size = \"1MiB\"\nmax_data_memory = \"1MiB\"",
        USER_POLICY,
        false,
    );
    let mut first = greeted(&h, "127.0.0.1:5000").await;
    first.cmd("EHLO c").await;
    first.cmd("MAIL FROM:<a@b.example>").await;
    first.cmd("RCPT TO:<c@d.example>").await;
    first.cmd("DATA").await;
    // 900 kB sent, the end not yet: the session holds it.
    first.send(&lines(900)).await;
    content_held(&h, 900_000).await;

    let mut second = greeted(&h, "127.0.0.1:5001").await;
    second.cmd("EHLO c").await;
    second.cmd("MAIL FROM:<a@b.example>").await;
    second.cmd("RCPT TO:<c@d.example>").await;
    second.cmd("DATA").await;
    second.send(&lines(300)).await;
    assert_eq!(
        second.cmd(".").await,
        "452 4.3.1 Insufficient system resources to take the message now, try again later"
    );
    // BDAT meets the same budget; the chunk is read in full, then refused.
    second.cmd("MAIL FROM:<a@b.example>").await;
    second.cmd("RCPT TO:<c@d.example>").await;
    let chunk = lines(300);
    second
        .send(&format!("BDAT {} LAST\r\n{chunk}", chunk.len()))
        .await;
    assert_eq!(second.reply().await.code, 452);
    assert!(h.ctx.data_memory.used() <= 1 << 20);

    // The first message is whole; once it is stored the budget is free again.
    assert!(first.cmd(".").await.starts_with("250 2.0.0 OK queued"));
    assert_eq!(h.ctx.data_memory.used(), 0);
    second.cmd("MAIL FROM:<a@b.example>").await;
    second.cmd("RCPT TO:<c@d.example>").await;
    second.cmd("DATA").await;
    second.send(&lines(300)).await;
    assert!(second.cmd(".").await.starts_with("250 2.0.0 OK queued"));
    second
        .send(&format!(
            "MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nBDAT {} LAST\r\n{chunk}",
            chunk.len()
        ))
        .await;
    for _ in 0..2 {
        assert_eq!(second.reply().await.code, 250);
    }
    assert!(
        second
            .reply()
            .await
            .one_line()
            .starts_with("250 2.0.0 OK queued")
    );
    assert_eq!(h.intake.0.lock().unwrap().len(), 3);
    assert_eq!(h.ctx.data_memory.used(), 0);
}

#[tokio::test]
async fn strangers_share_an_eighth_of_the_content_budget() {
    let h = harness_with(
        "max_data_memory = \"8MiB\"\nmax_message_size = \"4MiB\"",
        USER_POLICY,
        false,
    );
    // A stranger writing to the postmaster (1 MiB at most) holds the strangers' eighth.
    let mut stranger = greeted(&h, "192.0.2.9:5000").await;
    stranger.cmd("EHLO s").await;
    stranger.cmd("MAIL FROM:<s@else.example>").await;
    stranger.cmd("RCPT TO:<postmaster>").await;
    stranger.cmd("DATA").await;
    stranger.send(&lines(900)).await;
    content_held(&h, 900_000).await;

    let mut other = greeted(&h, "198.51.100.7:5000").await;
    other.cmd("EHLO o").await;
    other.cmd("MAIL FROM:<o@else.example>").await;
    other.cmd("RCPT TO:<postmaster>").await;
    other.cmd("DATA").await;
    other.send(&lines(100)).await;
    assert_eq!(other.cmd(".").await.split(' ').next(), Some("452"));

    // A client an account knows still has the rest of the budget.
    let mut known = greeted(&h, "127.0.0.1:5000").await;
    known.cmd("EHLO k").await;
    known.cmd("MAIL FROM:<a@b.example>").await;
    known.cmd("RCPT TO:<c@d.example>").await;
    known.cmd("DATA").await;
    known.send(&lines(3000)).await;
    assert!(known.cmd(".").await.starts_with("250 2.0.0 OK queued"));
    assert!(stranger.cmd(".").await.starts_with("250 2.0.0 OK queued"));
}
