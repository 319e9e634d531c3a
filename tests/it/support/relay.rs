//! Starting relays: in-process on free ports, with a fake MX as their smart host, or as
//! the `optin-relay` binary in a process of its own; and what tests read back from a
//! relay's lists, spool directory and delivered mail.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use optin_relay::consent::{CONSENT, Change, Kind, Lists, Op, Origin, Scope};
use optin_relay::server::Relay;

use super::mx::{FakeMx, MxOptions};
use super::smtp::raw_send;

/// A policy with one account, `local`, for all of loopback.
pub const LOOPBACK_POLICY: &str = "[accounts.local]\nnetworks = [\"127.0.0.0/8\"]\n";

/// Starts a relay in-process on 127.0.0.1:0 with `extra` appended to a base config whose
/// spool lives in `dir`. The HTTP listeners (`[http]`, `[admin]`) are off unless `extra`
/// gives their `listen`.
pub async fn start_relay(dir: &Path, extra: &str, policy: &str) -> Relay {
    let text = format!(
        "[smtp]\nlisten = \"127.0.0.1:0\"\nhostname = \"relay.test\"\n[spool]\npath = \"{}\"\n{extra}",
        dir.join("spool").display()
    );
    let config = optin_relay::config::Config::from_toml("test", &without_default_ports(&text))
        .unwrap_or_else(|e| panic!("{e}"));
    let policy =
        optin_relay::policy::Policy::from_toml("policy", policy).unwrap_or_else(|e| panic!("{e}"));
    Relay::start(config, policy).await.unwrap()
}

/// `text` (a main config) with `listen = ""` for each HTTP listener it does not place:
/// never the default ports, since tests run in parallel.
pub fn without_default_ports(text: &str) -> String {
    let mut table: toml::Table = text.parse().unwrap_or_else(|e| panic!("{e}\n{text}"));
    for section in ["http", "admin"] {
        let t = table
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t.as_table_mut()
            .expect("a table")
            .entry("listen")
            .or_insert_with(|| "".into());
    }
    toml::to_string(&table).unwrap()
}

/// A relay in-process whose smart host is a fake MX of its own, and its directory.
pub struct Running {
    pub mx: FakeMx,
    pub mx_addr: SocketAddr,
    pub relay: Relay,
    pub dir: tempfile::TempDir,
}

impl Running {
    /// A fake MX with `options`, and a relay delivering everything to it; `delivery`
    /// follows `[delivery] smarthost = "…"` in the config (more `[delivery]` keys, then
    /// other tables).
    pub async fn start(options: MxOptions, delivery: &str, policy: &str) -> Running {
        Running::start_in(tempfile::tempdir().unwrap(), options, delivery, policy).await
    }

    /// [`Running::start`] with its spool in `dir`.
    pub async fn start_in(
        dir: tempfile::TempDir,
        options: MxOptions,
        delivery: &str,
        policy: &str,
    ) -> Running {
        let mx = FakeMx::new(options);
        let mx_addr = mx.listen().await;
        Running::with(mx, mx_addr, dir, delivery, policy).await
    }

    async fn with(
        mx: FakeMx,
        mx_addr: SocketAddr,
        dir: tempfile::TempDir,
        delivery: &str,
        policy: &str,
    ) -> Running {
        let relay = start_relay(dir.path(), &smarthost(mx_addr, delivery), policy).await;
        Running {
            mx,
            mx_addr,
            relay,
            dir,
        }
    }

    /// Stops the relay and starts another on the same spool and fake MX.
    pub async fn restart(self, delivery: &str, policy: &str) -> Running {
        self.relay.shutdown().await;
        Running::with(self.mx, self.mx_addr, self.dir, delivery, policy).await
    }

    /// The fake MX, the relay and its directory, to use on their own.
    pub fn into_parts(self) -> (FakeMx, Relay, tempfile::TempDir) {
        (self.mx, self.relay, self.dir)
    }

    /// The relay's (first) SMTP listener.
    pub fn smtp(&self) -> SocketAddr {
        self.relay.smtp_addrs[0]
    }

    /// The relay's spool directory.
    pub fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// Sends one message to the relay (see [`raw_send`]).
    pub async fn send(&self, from: &str, to: &[&str], body: &str) -> String {
        raw_send(self.smtp(), from, to, body).await
    }
}

/// The start of a config whose smart host is `mx`, then `delivery`.
pub fn smarthost(mx: SocketAddr, delivery: &str) -> String {
    format!("[delivery]\nsmarthost = \"{mx}\"\n{delivery}")
}

/// A port that was free a moment ago (for a relay run as a separate process).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Waits until something accepts connections on `addr`.
pub async fn wait_listening(addr: SocketAddr) {
    super::eventually(
        Duration::from_secs(10),
        &format!("the relay listening on {addr}"),
        async || tokio::net::TcpStream::connect(addr).await.is_ok(),
    )
    .await;
}

/// The `optin-relay` binary, to run as a child process.
pub fn bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_optin-relay"))
}

/// Records a consent for `account`'s `list` in a running relay's lists, in force at once.
pub fn grant(relay: &Relay, account: &str, list: &str, address: &str) {
    let scope = Scope::List(account, list);
    record(&relay.lists, Kind::Consent, scope, address, CONSENT);
}

/// Records consent for many addresses of `account`'s `list` at once (one journal write).
pub fn grant_all(relay: &Relay, account: &str, list: &str, addresses: &[String]) {
    let scope = Scope::List(account, list);
    let changes: Vec<Change> = addresses
        .iter()
        .map(|a| change(&relay.lists, Kind::Consent, scope, a, CONSENT))
        .collect();
    relay.lists.record(&changes).unwrap();
}

/// Adds `tags` for `address` in `scope` to the lists, in force at once.
pub fn record(lists: &Lists, kind: Kind, scope: Scope<'_>, address: &str, tags: u8) {
    lists
        .record(&[change(lists, kind, scope, address, tags)])
        .unwrap();
}

/// An operator's change adding `tags` for `address` in `scope`.
fn change(lists: &Lists, kind: Kind, scope: Scope<'_>, address: &str, tags: u8) -> Change {
    Change {
        op: Op::Add,
        fp: lists.secret().fingerprint(kind, scope, address),
        tags,
        origin: Origin::Operator,
        time_ms: 0,
        stamp: 0,
        remote: false,
    }
}

/// Records in the lists journals of the relay whose spool is in `dir`.
pub fn journal_records(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("spool/lists"))
        .unwrap()
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("journal.") && name != "journal.lock"
        })
        .map(|e| e.metadata().unwrap().len() / 32)
        .sum()
}

/// The lines of the event log `name` (`spool/events/NAME.jsonl` under `dir`); none when
/// there is no log.
pub fn events(dir: &Path, name: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join(format!("spool/events/{name}.jsonl")))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The confirmation link's path (`/s/confirm/TOKEN`) in a delivered message's text body
/// (decoded: long lines travel quoted-printable).
pub fn confirm_path_of(raw: &[u8]) -> String {
    let message = mail_parser::MessageParser::default()
        .parse(raw)
        .expect("a message");
    let text = message.body_text(0).expect("a text body").into_owned();
    let start = text.find("/s/confirm/").expect(&text);
    let end = start
        + text[start..]
            .find(char::is_whitespace)
            .unwrap_or(text.len() - start);
    text[start..end].to_string()
}

/// The token of the https unsubscribe link in a delivered message.
pub fn token_of(text: &str) -> String {
    let unfolded = text.replace("\r\n ", " ");
    let line = unfolded
        .lines()
        .find(|l| l.starts_with("List-Unsubscribe: "))
        .unwrap_or_else(|| panic!("no List-Unsubscribe in {text}"));
    let start = line.find("/u/").unwrap() + 3;
    line[start..line[start..].find('>').unwrap() + start].to_string()
}
