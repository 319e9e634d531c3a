//! The delivery log: one JSON object per line for every recipient event — `accepted`,
//! `suppressed` (withheld by the consent and suppression policy), `delivered`, `deferred`,
//! `bounced`, `expired` — with the queue id, account, site, route, reply, attempts and time
//! since acceptance. The recipient appears only as its keyed tag (`h:<hash>@domain`, see
//! [`crate::privacy`]): the log holds no plain address.
//!
//! The log is written per UTC day: the configured path `log/delivery.jsonl` names the
//! files `log/delivery-YYYY-MM-DD.jsonl` (mode 0600), each line going to the file of its
//! event's date, so that [`crate::privacy::retention`] can delete whole days once they are
//! older than `[privacy] delivery_log_days`.
//!
//! Lines are handed to a writer thread through a channel, so neither sessions nor the
//! scheduler wait for the disk; the thread flushes at least once a second and whenever it
//! moves to another day's file. The log is for operators and accounts' reporting, not for
//! durability: a crash may lose its last second.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use crate::envelope::QueueId;
use crate::privacy::AddressTagger;
use crate::privacy::retention::{DAY_MS, day_file};

/// One recipient event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Accepted,
    Suppressed,
    Delivered,
    Deferred,
    Bounced,
    Expired,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Accepted => "accepted",
            Kind::Suppressed => "suppressed",
            Kind::Delivered => "delivered",
            Kind::Deferred => "deferred",
            Kind::Bounced => "bounced",
            Kind::Expired => "expired",
        }
    }
}

/// What one line says besides the event and the recipient.
#[derive(Debug, Default, Clone)]
pub struct Details<'a> {
    pub id: Option<QueueId>,
    pub account: &'a str,
    /// The server that answered (or `-`).
    pub route: Option<&'a str>,
    /// The site (its MX hosts) or `smarthost`.
    pub site: Option<&'a str>,
    /// The server's reply or the reason.
    pub reply: Option<&'a str>,
    pub attempts: Option<u16>,
    /// Milliseconds since the message was accepted.
    pub delay_ms: Option<u64>,
    /// A bounce's category (`bounced`, `expired`).
    pub category: Option<&'a str>,
    /// How a bounce was learnt: `sync` (in the relay's own transaction) or `async`
    /// (mailed back to the return path).
    pub via: Option<&'a str>,
    /// The message's `Message-ID` (on `accepted` lines), so that it can be looked up.
    pub message_id: Option<&'a str>,
}

/// One line for the writer: the UTC day it belongs to and its text.
type Line = (u64, String);

/// A handle to the delivery log; cheap to clone. A disabled log drops everything.
#[derive(Clone)]
pub struct DeliveryLog {
    tx: Option<mpsc::Sender<Line>>,
    tagger: AddressTagger,
}

impl std::fmt::Debug for DeliveryLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryLog")
            .field("enabled", &self.tx.is_some())
            .finish()
    }
}

impl DeliveryLog {
    /// A log that writes nothing (tests, and `[delivery] log = ""`).
    pub fn disabled(tagger: AddressTagger) -> DeliveryLog {
        DeliveryLog { tx: None, tagger }
    }

    /// Opens (appends to) today's file of the log configured as `path`, mode 0600, so a
    /// log that cannot be written fails at start, and starts its writer thread.
    pub fn open(path: &Path, tagger: AddressTagger) -> std::io::Result<DeliveryLog> {
        let today = crate::envelope::now_ms() / DAY_MS;
        let file = crate::files::append(&day_file(path, today))?;
        let (tx, rx) = mpsc::channel::<Line>();
        let current = DayFile {
            day: today,
            out: std::io::BufWriter::with_capacity(64 * 1024, file),
        };
        let log = PathBuf::from(path);
        std::thread::Builder::new()
            .name("delivery-log".into())
            .spawn(move || writer(Some(current), rx, log))?;
        Ok(DeliveryLog {
            tx: Some(tx),
            tagger,
        })
    }

    /// Logs one event about `address`.
    pub fn event(&self, kind: Kind, address: &str, d: &Details<'_>) {
        let Some(tx) = &self.tx else { return };
        let time_ms = crate::envelope::now_ms();
        let mut line = serde_json::json!({
            "time_ms": time_ms,
            "event": kind.as_str(),
            "account": d.account,
            "rcpt": self.tagger.tag(address),
        });
        let obj = line.as_object_mut().expect("an object");
        if let Some(id) = d.id {
            obj.insert("id".into(), id.to_string().into());
        }
        if let Some(site) = d.site {
            obj.insert("site".into(), site.into());
        }
        if let Some(r) = d.route {
            obj.insert("route".into(), r.into());
        }
        if let Some(r) = d.reply {
            obj.insert("reply".into(), self.tagger.scrub(r, address).into());
        }
        if let Some(a) = d.attempts {
            obj.insert("attempts".into(), a.into());
        }
        if let Some(ms) = d.delay_ms {
            obj.insert("delay_ms".into(), ms.into());
        }
        if let Some(c) = d.category {
            obj.insert("category".into(), c.into());
        }
        if let Some(v) = d.via {
            obj.insert("via".into(), v.into());
        }
        if let Some(m) = d.message_id {
            obj.insert("message_id".into(), self.tagger.scrub(m, address).into());
        }
        let _ = tx.send((time_ms / DAY_MS, line.to_string()));
    }
}

/// What a history lookup looks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Id(QueueId),
    /// A `Message-ID` without its angle brackets.
    MessageId(String),
}

impl Lookup {
    /// A queue id (16 hex digits), else a `Message-ID` (`<…>` or bare).
    pub fn parse(s: &str) -> Option<Lookup> {
        let s = s.trim();
        if let Some(id) = QueueId::parse(s) {
            return Some(Lookup::Id(id));
        }
        let bare = s
            .strip_prefix('<')
            .and_then(|x| x.strip_suffix('>'))
            .unwrap_or(s);
        let ok = !bare.is_empty()
            && bare.len() <= 998
            && !bare.contains(|c: char| c.is_whitespace() || c.is_control() || c == '"');
        ok.then(|| Lookup::MessageId(bare.to_string()))
    }
}

/// Most lines a history returns.
pub const MAX_HISTORY_LINES: usize = 10_000;

/// The delivery log's lines about one message (by queue id, or by the `Message-ID` its
/// `accepted` lines name: every message that carried it), oldest first, from the day files
/// of the last `days` days of the log configured as `path` (blocking: it reads them).
pub fn history(path: &Path, days: u32, wanted: &Lookup) -> std::io::Result<Vec<serde_json::Value>> {
    use std::io::BufRead;
    let today = crate::envelope::now_ms() / DAY_MS;
    let mut ids: Vec<String> = match wanted {
        Lookup::Id(id) => vec![id.to_string()],
        Lookup::MessageId(_) => Vec::new(),
    };
    let mut out = Vec::new();
    for day in today.saturating_sub(u64::from(days))..=today {
        let file = match std::fs::File::open(day_file(path, day)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for line in std::io::BufReader::new(file).lines() {
            let line = line?;
            let names_message_id = match wanted {
                Lookup::MessageId(m) => {
                    line.contains("\"message_id\"") && line.contains(m.as_str())
                }
                Lookup::Id(_) => false,
            };
            if !names_message_id && !ids.iter().any(|id| line.contains(id.as_str())) {
                continue;
            }
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let id = v["id"].as_str().unwrap_or_default().to_string();
            if let Lookup::MessageId(m) = wanted
                && v["message_id"].as_str() == Some(m.as_str())
                && !ids.contains(&id)
            {
                ids.push(id.clone());
            }
            if ids.contains(&id) {
                out.push(v);
                if out.len() >= MAX_HISTORY_LINES {
                    return Ok(out);
                }
            }
        }
    }
    Ok(out)
}

/// The day file being appended to.
struct DayFile {
    day: u64,
    out: std::io::BufWriter<std::fs::File>,
}

/// The writer thread: appends each line to its day's file, switching files when the day
/// changes, and flushes at least once a second. A failure is logged once until a write
/// succeeds again.
fn writer(mut current: Option<DayFile>, rx: mpsc::Receiver<Line>, log: PathBuf) {
    let mut failed = false;
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok((day, line)) => {
                let written = day_writer(&mut current, &log, day).and_then(|out| {
                    out.write_all(line.as_bytes())
                        .and_then(|()| out.write_all(b"\n"))
                });
                match written {
                    Ok(()) => failed = false,
                    Err(e) if !failed => {
                        failed = true;
                        let path = day_file(&log, day);
                        tracing::error!(path = %path.display(), error = %e, "cannot write the delivery log");
                    }
                    Err(_) => {}
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Some(c) = &mut current {
                    let _ = c.out.flush();
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if let Some(c) = &mut current {
                    let _ = c.out.flush();
                }
                return;
            }
        }
    }
}

/// The writer of `day`'s file, opening it (and flushing the previous one) when the day
/// differs from the current file's.
fn day_writer<'a>(
    current: &'a mut Option<DayFile>,
    log: &Path,
    day: u64,
) -> std::io::Result<&'a mut std::io::BufWriter<std::fs::File>> {
    if current.as_ref().is_none_or(|c| c.day != day) {
        if let Some(mut previous) = current.take() {
            previous.out.flush()?;
        }
        let file = crate::files::append(&day_file(log, day))?;
        *current = Some(DayFile {
            day,
            out: std::io::BufWriter::with_capacity(64 * 1024, file),
        });
    }
    match current {
        Some(c) => Ok(&mut c.out),
        None => Err(std::io::Error::other("no day file")),
    }
}

/// Every settled recipient is a line: `delivered`, `deferred`, `bounced` or `expired`.
impl crate::envelope::OutcomeSink for DeliveryLog {
    fn settled(&self, o: &crate::envelope::RecipientOutcome<'_>) {
        use crate::envelope::Settled;
        let (kind, reply, category) = match o.settled {
            Settled::Delivered { reply } => (Kind::Delivered, reply, None),
            Settled::Deferred { reason } => (Kind::Deferred, reason, None),
            Settled::Bounced {
                diagnostic,
                category,
                ..
            } if o.expired() => (Kind::Expired, diagnostic, Some(category.as_str())),
            Settled::Bounced {
                diagnostic,
                category,
                ..
            } => (Kind::Bounced, diagnostic, Some(category.as_str())),
        };
        self.event(
            kind,
            o.address(),
            &Details {
                id: Some(o.id),
                account: &o.envelope.account,
                route: Some(o.remote),
                site: Some(o.site),
                reply: Some(reply),
                attempts: Some(o.attempts),
                delay_ms: Some(o.delay_ms),
                category,
                via: category.map(|_| "sync"),
                message_id: None,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_tags_not_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log/delivery.jsonl");
        let log = DeliveryLog::open(&path, AddressTagger::new([3; 32])).unwrap();
        log.event(
            Kind::Delivered,
            "Jane.Doe@Example.com",
            &Details {
                id: Some(QueueId(0xabc)),
                account: "shop",
                route: Some("mx.example.com"),
                site: Some("mx.example.com,mx2.example.com"),
                reply: Some("250 2.0.0 ok"),
                attempts: Some(1),
                delay_ms: Some(12),
                ..Default::default()
            },
        );
        drop(log);
        let mut text = String::new();
        let mut file = PathBuf::new();
        for _ in 0..100 {
            // (today's file: the event and the check straddle midnight at most once)
            for day in [0, 1].map(|back| crate::envelope::now_ms() / DAY_MS - back) {
                file = day_file(&path, day);
                text = std::fs::read_to_string(&file).unwrap_or_default();
                if !text.is_empty() {
                    break;
                }
            }
            if !text.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!path.exists(), "no undated file any more");
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["event"], "delivered");
        assert_eq!(v["id"], "0000000000000ABC");
        assert_eq!(v["site"], "mx.example.com,mx2.example.com");
        assert_eq!(v["delay_ms"], 12);
        assert!(v["rcpt"].as_str().unwrap().ends_with("@example.com"));
        assert!(!text.to_lowercase().contains("jane"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn each_line_goes_to_the_file_of_its_day() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log/delivery.jsonl");
        let (tx, rx) = mpsc::channel();
        // 2026-11-20, then 2026-11-21, and a late line of the 20th
        for (day, line) in [(20_777, "a"), (20_778, "b"), (20_778, "c"), (20_777, "d")] {
            tx.send((day, line.to_string())).unwrap();
        }
        drop(tx);
        writer(None, rx, log.clone());
        let read = |name: &str| std::fs::read_to_string(dir.path().join("log").join(name)).unwrap();
        assert_eq!(read("delivery-2026-11-20.jsonl"), "a\nd\n");
        assert_eq!(read("delivery-2026-11-21.jsonl"), "b\nc\n");
        assert!(!log.exists());
    }
}
