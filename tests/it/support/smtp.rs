//! A hand-written SMTP client that shows every reply as the relay sent it, used where a
//! client library would hide the wire; and the one-message sessions built on it.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

/// One SMTP session.
pub struct Client {
    io: BufReader<TcpStream>,
    /// The relay's greeting.
    pub greeting: String,
}

impl Client {
    /// Connects to `relay` and reads its greeting.
    pub async fn connect(relay: SocketAddr) -> Client {
        Client::try_connect(relay).await.unwrap()
    }

    /// [`Client::connect`] for a session that may fail (the relay is being killed).
    pub async fn try_connect(relay: SocketAddr) -> io::Result<Client> {
        Client::start(TcpStream::connect(relay).await?).await
    }

    /// Connects from `from_ip`, a loopback address (the policy tells accounts apart by
    /// it), and reads the greeting.
    pub async fn connect_from(relay: SocketAddr, from_ip: &str) -> Client {
        let socket = TcpSocket::new_v4().unwrap();
        socket
            .bind(format!("{from_ip}:0").parse().unwrap())
            .unwrap();
        Client::start(socket.connect(relay).await.unwrap())
            .await
            .unwrap()
    }

    /// Connects from `from_ip` and says EHLO; the greeting and the EHLO must be accepted.
    pub async fn hello(relay: SocketAddr, from_ip: &str) -> Client {
        let mut c = Client::connect_from(relay, from_ip).await;
        assert!(c.greeting.starts_with("220"), "{}", c.greeting);
        c.expect("EHLO client.test", "250").await;
        c
    }

    async fn start(stream: TcpStream) -> io::Result<Client> {
        let mut c = Client {
            io: BufReader::new(stream),
            greeting: String::new(),
        };
        c.greeting = c.try_reply().await?;
        Ok(c)
    }

    /// The next reply, all its lines, without the final line break; an error when the
    /// relay closes the connection first.
    pub async fn try_reply(&mut self) -> io::Result<String> {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if self.io.read_line(&mut line).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the relay closed the connection after {all:?}"),
                ));
            }
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(all.trim_end().to_string());
            }
        }
    }

    /// The next reply; the relay must not close the connection first.
    pub async fn reply(&mut self) -> String {
        self.try_reply().await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Sends `bytes` as they are.
    pub async fn try_write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.get_mut().write_all(bytes).await
    }

    /// Sends `line` (a command, or a whole message ending in its "." line) and returns the
    /// reply.
    pub async fn try_say(&mut self, line: &str) -> io::Result<String> {
        self.try_write(format!("{line}\r\n").as_bytes()).await?;
        self.try_reply().await
    }

    /// [`Client::try_say`]; the relay must answer.
    pub async fn say(&mut self, line: &str) -> String {
        self.try_write(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        self.reply().await
    }

    /// Sends `line`; the reply must start with `code`.
    pub async fn expect(&mut self, line: &str, code: &str) -> String {
        let reply = self.say(line).await;
        assert!(reply.starts_with(code), "{line} -> {reply}");
        reply
    }

    /// MAIL (it must be accepted), RCPT, then RSET: the reply to RCPT.
    pub async fn rcpt(&mut self, mail: &str, to: &str) -> String {
        self.expect(&format!("MAIL FROM:<{mail}>"), "250").await;
        let reply = self.say(&format!("RCPT TO:<{to}>")).await;
        self.expect("RSET", "250").await;
        reply
    }

    /// MAIL (it must be accepted), one RCPT for each of `to`, and — when a recipient was
    /// accepted — DATA with `message`: the RCPT replies and the reply to the end of the
    /// data (empty when every recipient was refused; the transaction is then reset).
    pub async fn transaction(
        &mut self,
        mail: &str,
        to: &[&str],
        message: &str,
    ) -> (Vec<String>, String) {
        self.expect(&format!("MAIL FROM:<{mail}>"), "250").await;
        let mut rcpt = Vec::new();
        for t in to {
            rcpt.push(self.say(&format!("RCPT TO:<{t}>")).await);
        }
        if !rcpt.iter().any(|r| r.starts_with("250")) {
            self.say("RSET").await;
            return (rcpt, String::new());
        }
        self.expect("DATA", "354").await;
        let end = self.say(&format!("{message}\r\n.")).await;
        (rcpt, end)
    }

    /// QUIT, and waits until the relay has closed the connection.
    pub async fn quit(mut self) {
        self.expect("QUIT", "221").await;
        let mut rest = Vec::new();
        let _ = self.io.read_to_end(&mut rest).await;
    }
}

/// Sends one message over a plain connection and returns the reply to the end of DATA (or
/// whatever came last: a refused message gets its refusals, and the relay may hang up).
pub async fn raw_send(addr: SocketAddr, from: &str, to: &[&str], body: &str) -> String {
    let mut c = Client::connect(addr).await;
    let mut lines = vec!["EHLO test".to_string(), format!("MAIL FROM:<{from}>")];
    lines.extend(to.iter().map(|r| format!("RCPT TO:<{r}>")));
    lines.extend(["DATA".to_string(), format!("{body}\r\n.")]);
    lines.push("QUIT".to_string());
    let mut replies = Vec::new();
    for line in &lines {
        c.try_write(format!("{line}\r\n").as_bytes()).await.unwrap();
        replies.push(c.try_reply().await.unwrap_or_default());
    }
    replies.swap_remove(replies.len() - 2)
}

/// [`raw_send`]; the relay must take the message (250).
pub async fn send_ok(addr: SocketAddr, from: &str, to: &[&str], body: &str) -> String {
    let reply = raw_send(addr, from, to, body).await;
    assert!(reply.starts_with("250"), "{reply}");
    reply
}

/// A session of `lines` (commands, or whole messages ending in their "." line): the
/// greeting and every reply.
pub async fn session(addr: SocketAddr, lines: &[&str]) -> Vec<String> {
    let mut c = Client::connect(addr).await;
    let mut replies = vec![c.greeting.clone()];
    for line in lines {
        replies.push(c.say(line).await);
    }
    replies
}

/// The reply to `MAIL FROM:<from>` in a fresh session.
pub async fn mail_reply(relay: SocketAddr, from: &str) -> String {
    let mut c = Client::connect(relay).await;
    c.say("EHLO client.test").await;
    let reply = c.say(&format!("MAIL FROM:<{from}>")).await;
    c.say("QUIT").await;
    reply
}

/// The reply to `RCPT TO:<to>` after `MAIL FROM:<from>` in a fresh session.
pub async fn rcpt_reply(relay: SocketAddr, from: &str, to: &str) -> String {
    let mut c = Client::connect(relay).await;
    c.say("EHLO client.test").await;
    c.say(&format!("MAIL FROM:<{from}>")).await;
    let reply = c.say(&format!("RCPT TO:<{to}>")).await;
    let _ = c.try_say("QUIT").await;
    reply
}
