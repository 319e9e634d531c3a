//! Capture mode (`[delivery] mode = "capture"`, `serve --capture`): nothing leaves the
//! machine. Every site is served by an SMTP receiver inside the relay, over an in-memory
//! pipe, that keeps each message in the capture folder, so the whole pipeline — consent,
//! rewrite, footer, DKIM, the delivery engine itself — runs exactly as it would, with no
//! DNS and no outside server. The operator listener lists what was captured
//! (`crate::http::capture`).
//!
//! Each message is two files in the folder (0600, the folder 0700): `ID.eml`, the message
//! as the next hop would have received it, and `ID.json`, its envelope (sender, recipients,
//! when, which site). Only the newest `capture_keep` messages are kept.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::outcome::ResolveFailure;
use super::transport::{BoxFuture, BoxStream, RouteKey, Target, Transport};

/// Longest line the receiver reads (the relay's own lines are at most 998 octets).
const MAX_LINE: usize = 64 * 1024;
/// Largest message kept (the relay refuses larger ones at submission anyway).
const MAX_MESSAGE: usize = 256 << 20;

/// A captured message's envelope.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Captured {
    pub id: String,
    pub time_ms: u64,
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// The site the relay delivered to (the recipients' domain).
    pub site: String,
    pub size: usize,
}

/// The capture folder: where messages are written and read back.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    keep: usize,
    next: AtomicU64,
}

impl Store {
    /// Opens (creates) the folder; keeps at most `keep` messages.
    pub fn open(dir: &Path, keep: usize) -> std::io::Result<Store> {
        crate::files::private_dir(dir)?;
        Ok(Store {
            dir: dir.to_path_buf(),
            keep: keep.max(1),
            next: AtomicU64::new(0),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keeps a message (blocking) and forgets the oldest beyond the limit.
    fn save(
        &self,
        mail_from: &str,
        rcpt_to: Vec<String>,
        site: &str,
        raw: &[u8],
    ) -> std::io::Result<Captured> {
        let time_ms = crate::envelope::now_ms();
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!(
            "{time_ms:013}-{:06}-{:04x}",
            n % 1_000_000,
            std::process::id() & 0xffff
        );
        let c = Captured {
            id: id.clone(),
            time_ms,
            mail_from: mail_from.to_string(),
            rcpt_to,
            site: site.to_string(),
            size: raw.len(),
        };
        write_private(&self.dir.join(format!("{id}.eml")), raw)?;
        let meta = serde_json::to_vec(&c).map_err(std::io::Error::other)?;
        write_private(&self.dir.join(format!("{id}.json")), &meta)?;
        self.prune()?;
        Ok(c)
    }

    fn ids(&self) -> std::io::Result<Vec<String>> {
        let mut ids: Vec<String> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".json").map(str::to_string)
            })
            .filter(|id| valid_id(id))
            .collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        Ok(ids)
    }

    fn prune(&self) -> std::io::Result<()> {
        for id in self.ids()?.into_iter().skip(self.keep) {
            let _ = std::fs::remove_file(self.dir.join(format!("{id}.json")));
            let _ = std::fs::remove_file(self.dir.join(format!("{id}.eml")));
        }
        Ok(())
    }

    /// The newest messages first, at most `limit`.
    pub fn list(&self, limit: usize) -> std::io::Result<Vec<Captured>> {
        let mut out = Vec::new();
        for id in self.ids()?.into_iter().take(limit) {
            if let Some(c) = self.get(&id) {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// A message's envelope, when `id` names one.
    pub fn get(&self, id: &str) -> Option<Captured> {
        if !valid_id(id) {
            return None;
        }
        let meta = std::fs::read(self.dir.join(format!("{id}.json"))).ok()?;
        serde_json::from_slice(&meta).ok()
    }

    /// A message as received, when `id` names one.
    pub fn raw(&self, id: &str) -> Option<Vec<u8>> {
        if !valid_id(id) {
            return None;
        }
        std::fs::read(self.dir.join(format!("{id}.eml"))).ok()
    }
}

/// Ids are digits, `-` and hex: nothing that could name another file.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 40 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = crate::files::create_new(path)?;
    std::io::Write::write_all(&mut f, data)
}

/// The transport of capture mode: every site is the in-process receiver.
pub struct CaptureTransport {
    store: Arc<Store>,
}

impl CaptureTransport {
    pub fn new(store: Arc<Store>) -> CaptureTransport {
        CaptureTransport { store }
    }
}

impl Transport for CaptureTransport {
    fn resolve<'a>(
        &'a self,
        route: &'a RouteKey,
    ) -> BoxFuture<'a, Result<Vec<Target>, ResolveFailure>> {
        Box::pin(async move {
            let host = match route {
                RouteKey::Site(site) => site
                    .mx
                    .first()
                    .map_or_else(|| "capture".to_string(), |(_, h)| h.clone()),
                RouteKey::Smarthost => "capture".to_string(),
            };
            Ok(vec![Target {
                host,
                addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            }])
        })
    }

    fn connect<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, std::io::Result<BoxStream>> {
        Box::pin(async move {
            let (ours, theirs) = tokio::io::duplex(256 * 1024);
            let store = self.store.clone();
            let site = target.host.clone();
            tokio::spawn(async move {
                if let Err(e) = receive(theirs, store, site).await {
                    tracing::debug!(error = %e, "capture session ended");
                }
            });
            Ok(Box::new(ours) as BoxStream)
        })
    }

    fn routes_by_domain(&self) -> bool {
        true
    }
}

/// One SMTP session of the in-process receiver: EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT
/// (pipelined or not); each message is saved before its `250`.
async fn receive(
    stream: tokio::io::DuplexStream,
    store: Arc<Store>,
    site: String,
) -> std::io::Result<()> {
    let (read, mut write) = tokio::io::split(stream);
    let mut read = BufReader::new(read);
    write
        .write_all(b"220 capture ESMTP optin-relay capture mode\r\n")
        .await?;
    let (mut from, mut rcpts) = (None::<String>, Vec::<String>::new());
    loop {
        let Some(line) = read_line(&mut read).await? else {
            return Ok(());
        };
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        let verb = text
            .split([' ', ':'])
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-capture\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n",
            "HELO" => b"250 capture\r\n",
            "MAIL" => {
                from = Some(path_of(text));
                rcpts.clear();
                b"250 2.1.0 ok\r\n"
            }
            "RCPT" if from.is_some() => {
                rcpts.push(path_of(text));
                b"250 2.1.5 ok\r\n"
            }
            "DATA" if from.is_some() && !rcpts.is_empty() => {
                write.write_all(b"354 go ahead\r\n").await?;
                let Some(raw) = read_data(&mut read).await? else {
                    write.write_all(b"552 5.3.4 message too big for capture\r\n").await?;
                    return Ok(());
                };
                let (f, r) = (from.take().unwrap_or_default(), std::mem::take(&mut rcpts));
                let (s, site) = (store.clone(), site.clone());
                let saved =
                    tokio::task::spawn_blocking(move || s.save(&f, r, &site, &raw)).await;
                let reply = match saved {
                    Ok(Ok(c)) => format!("250 2.0.0 captured as {}\r\n", c.id),
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "capture: cannot keep a message");
                        "451 4.3.0 capture folder not writable\r\n".to_string()
                    }
                    Err(_) => "451 4.3.0 capture failed\r\n".to_string(),
                };
                write.write_all(reply.as_bytes()).await?;
                continue;
            }
            "RCPT" | "DATA" => b"503 5.5.1 bad sequence of commands\r\n",
            "RSET" => {
                from = None;
                rcpts.clear();
                b"250 2.0.0 ok\r\n"
            }
            "NOOP" => b"250 2.0.0 ok\r\n",
            "QUIT" => {
                write.write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(());
            }
            _ => b"502 5.5.2 not implemented in capture mode\r\n",
        };
        write.write_all(reply).await?;
    }
}

/// The address inside `<…>` of a MAIL or RCPT command.
fn path_of(command: &str) -> String {
    match (command.find('<'), command.find('>')) {
        (Some(a), Some(b)) if a < b => command[a + 1..b].to_string(),
        _ => String::new(),
    }
}

/// One line with its CRLF, at most [`MAX_LINE`]; `None` at the end of the stream.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let n = r.take(MAX_LINE as u64).read_until(b'\n', &mut line).await?;
    Ok((n > 0).then_some(line))
}

/// The message after `354`, dot-unstuffed, up to the `.` line; `None` when too big.
async fn read_data<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut raw = Vec::new();
    let mut too_big = false;
    loop {
        let Some(line) = read_line(r).await? else {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        };
        if line == b".\r\n" || line == b".\n" {
            return Ok((!too_big).then_some(raw));
        }
        let line = line.strip_prefix(b".").unwrap_or(&line);
        if raw.len() + line.len() > MAX_MESSAGE {
            too_big = true;
        } else {
            raw.extend_from_slice(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pipelined_session_is_kept_with_its_envelope() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("capture"), 2).unwrap());
        let t = CaptureTransport::new(store.clone());
        let target = Target {
            host: "example.net".into(),
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        for n in 0..3 {
            let mut s = t.connect(&target).await.unwrap();
            let session = format!(
                "EHLO me\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b{n}@example.net>\r\nDATA\r\n\
                 Subject: {n}\r\n\r\n..dot\r\n.\r\nQUIT\r\n"
            );
            s.write_all(session.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            assert!(out.contains("250 2.0.0 captured as"), "{out}");
            assert!(out.ends_with("221 2.0.0 bye\r\n"), "{out}");
        }
        // Only the newest two are kept, newest first.
        let list = store.list(10).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].rcpt_to, ["b2@example.net"]);
        assert_eq!(list[1].rcpt_to, ["b1@example.net"]);
        assert_eq!(list[0].site, "example.net");
        let raw = store.raw(&list[0].id).unwrap();
        assert_eq!(raw, b"Subject: 2\r\n\r\n.dot\r\n");
        // Files hold addresses: private.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(format!("capture/{}.eml", list[0].id)))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Ids that are not ids name nothing.
        assert!(store.raw("../capture").is_none());
        assert!(store.get("").is_none());
    }

    #[tokio::test]
    async fn commands_out_of_order_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), 10).unwrap());
        let t = CaptureTransport::new(store.clone());
        let target = Target {
            host: "x".into(),
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let mut s = t.connect(&target).await.unwrap();
        s.write_all(b"RCPT TO:<x@y>\r\nDATA\r\nVRFY x\r\nQUIT\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert_eq!(out.matches("503 5.5.1").count(), 2, "{out}");
        assert!(out.contains("502 5.5.2"), "{out}");
        assert!(store.list(10).unwrap().is_empty());
    }
}
