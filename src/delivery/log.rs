//! The delivery log: one JSON object per line for every recipient event — `accepted`,
//! `suppressed` (withheld by the consent and suppression policy), `delivered`, `deferred`,
//! `bounced`, `expired` — with the queue id, account, site, route, reply, attempts and time
//! since acceptance. The recipient appears only as its keyed tag (`h:<hash>@domain`, see
//! [`crate::privacy`]): the log holds no plain address.
//!
//! Lines are handed to a writer thread through a channel, so neither sessions nor the
//! scheduler wait for the disk; the thread flushes at least once a second. The log is for
//! operators and accounts' reporting, not for durability: a crash may lose its last
//! second.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use crate::privacy::AddressTagger;

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
    pub id: Option<u64>,
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
}

/// A handle to the delivery log; cheap to clone. A disabled log drops everything.
#[derive(Clone)]
pub struct DeliveryLog {
    tx: Option<mpsc::Sender<String>>,
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

    /// Opens (appends to) `path`, mode 0600, and starts its writer thread.
    pub fn open(path: &Path, tagger: AddressTagger) -> std::io::Result<DeliveryLog> {
        let file = crate::privacy::open_private_log(path)?;
        let (tx, rx) = mpsc::channel::<String>();
        let name = PathBuf::from(path);
        std::thread::Builder::new()
            .name("delivery-log".into())
            .spawn(move || writer(file, rx, name))?;
        Ok(DeliveryLog {
            tx: Some(tx),
            tagger,
        })
    }

    /// Logs one event about `address`.
    pub fn event(&self, kind: Kind, address: &str, d: &Details<'_>) {
        let Some(tx) = &self.tx else { return };
        let mut line = serde_json::json!({
            "time_ms": crate::spool::now_ms(),
            "event": kind.as_str(),
            "account": d.account,
            "rcpt": self.tagger.tag(address),
        });
        let obj = line.as_object_mut().expect("an object");
        if let Some(id) = d.id {
            obj.insert("id".into(), crate::spool::format_id(id).into());
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
        let _ = tx.send(line.to_string());
    }
}

fn writer(file: std::fs::File, rx: mpsc::Receiver<String>, path: PathBuf) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, file);
    let mut failed = false;
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => {
                let written = out
                    .write_all(line.as_bytes())
                    .and_then(|()| out.write_all(b"\n"));
                if let Err(e) = written
                    && !failed
                {
                    failed = true;
                    tracing::error!(path = %path.display(), error = %e, "cannot write the delivery log");
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = out.flush();
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = out.flush();
                return;
            }
        }
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
                id: Some(0xabc),
                account: "shop",
                route: Some("mx.example.com"),
                site: Some("mx.example.com,mx2.example.com"),
                reply: Some("250 2.0.0 ok"),
                attempts: Some(1),
                delay_ms: Some(12),
            },
        );
        drop(log);
        let mut text = String::new();
        for _ in 0..100 {
            text = std::fs::read_to_string(&path).unwrap_or_default();
            if !text.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
