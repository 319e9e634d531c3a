//! Erasure without a plain copy left behind. Once the admin API has dropped an address's
//! queued recipients and recorded its erasure suppression (which must stay: it is what
//! keeps the address from being mailed again, and it is a keyed fingerprint, not the
//! address), [`erase`] takes the address out of everything else the relay keeps on disk:
//!
//! - event logs (`events/*.jsonl`): every line whose `address` is it, or that holds it
//!   anywhere, goes (an atomic rewrite that loses no concurrent append, see
//!   [`super::jsonl`]);
//! - complaint reports and mail to return paths kept aside (`complaints/malformed/*`,
//!   `bounces/kept-aside/*`) that hold it, plainly or in a
//!   decoded MIME part, are deleted;
//! - webhook outbox files (`state/webhooks/*.json` and `state/webhooks/failed/*.json`)
//!   whose `address` is it, or that hold it anywhere, are deleted;
//! - the spool: records still on disk and quarantined bytes are overwritten in place with a
//!   same-length placeholder ([`crate::spool::Spool::scrub`]); other recipients of the same
//!   message are still delivered, with the address blanked in their copy too.
//!
//! Not reached, by design: the delivery log (keyed tags only, never the address), the lists
//! (keyed fingerprints), the relay's memory (queued entries of the address were dropped),
//! and copies already handed to other servers.
//!
//! The address is found by [`Needle`]: its spellings (normalised; with the domain as
//! Unicode too; with `@` URL-encoded as `%40`) matched case-insensitively (ASCII) between
//! address boundaries, so `jane@example.com` is found in `<Jane@Example.COM>` and in
//! `mailto:jane@example.com`, but not inside `mary.jane@example.com` or
//! `jane@example.com.au`. Nothing here logs or reports the address: problems name files.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use crate::consent::key::{NormaliseError, normalise};
use crate::spool::{Redactor, Spool};

use super::retention::list_files;

/// Separators between the local part and the domain that a spelling may use: plain, and
/// URL-encoded (links with the address in a query parameter).
const SEPARATORS: [&[u8]; 2] = [b"@", b"%40"];

/// The address being erased, and how to find it in octets (see the module doc).
pub struct Needle {
    /// The normalised address.
    address: String,
    /// Local part and domain of each spelling, lower-case.
    spellings: Vec<(Vec<u8>, Vec<u8>)>,
}

// The address is personal data: Debug shows its domain only.
impl std::fmt::Debug for Needle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let domain = self.address.rsplit_once('@').map_or("", |(_, d)| d);
        write!(f, "Needle(…@{domain})")
    }
}

impl Needle {
    /// The needle for `address` (normalised first; refused when it is not an address).
    pub fn new(address: &str) -> Result<Needle, NormaliseError> {
        let address = normalise(address)?;
        let (local, domain) = address.rsplit_once('@').ok_or(NormaliseError::Empty)?;
        let mut spellings = vec![(local.as_bytes().to_vec(), domain.as_bytes().to_vec())];
        let (unicode, result) = idna::domain_to_unicode(domain);
        if result.is_ok() && unicode != domain {
            spellings.push((
                local.as_bytes().to_vec(),
                unicode.to_lowercase().into_bytes(),
            ));
        }
        Ok(Needle {
            address: address.clone(),
            spellings,
        })
    }

    /// The normalised address.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Whether `candidate` is this address (in any spelling that normalises to it).
    pub fn is_address(&self, candidate: &str) -> bool {
        let candidate = candidate.trim();
        candidate.eq_ignore_ascii_case(&self.address)
            || normalise(candidate).is_ok_and(|n| n == self.address)
    }

    /// Whether the address occurs in `hay`.
    pub fn occurs_in(&self, hay: &[u8]) -> bool {
        !self.find(hay, true).is_empty()
    }

    /// Where the address occurs in `hay` (all of them, or the first when `first`).
    fn find(&self, hay: &[u8], first: bool) -> Vec<Range<usize>> {
        let mut found = Vec::new();
        for sep in SEPARATORS {
            for at in memchr::memmem::find_iter(hay, sep) {
                if let Some(range) = self.match_at(hay, at, sep.len()) {
                    found.push(range);
                    if first {
                        return found;
                    }
                }
            }
        }
        found
    }

    /// The spelling around the separator at `at` (`sep` octets long), if any.
    fn match_at(&self, hay: &[u8], at: usize, sep: usize) -> Option<Range<usize>> {
        self.spellings.iter().find_map(|(local, domain)| {
            let start = at.checked_sub(local.len())?;
            let end = at + sep + domain.len();
            let fits = end <= hay.len()
                && hay[start..at].eq_ignore_ascii_case(local)
                && hay[at + sep..end].eq_ignore_ascii_case(domain);
            (fits && starts_address(hay, start) && ends_address(hay, end)).then_some(start..end)
        })
    }
}

impl Redactor for Needle {
    fn redact(&self, bytes: &mut [u8]) -> usize {
        let found = self.find(bytes, false);
        for range in &found {
            crate::spool::blank(&mut bytes[range.clone()]);
        }
        found.len()
    }

    fn is_address(&self, address: &str) -> bool {
        Needle::is_address(self, address)
    }
}

/// An address may start at `start`: the octet before it cannot continue a local part.
fn starts_address(hay: &[u8], start: usize) -> bool {
    let continues = |b: u8| b.is_ascii_alphanumeric() || b >= 0x80 || b"._+-".contains(&b);
    start == 0 || !continues(hay[start - 1])
}

/// An address may end at `end`: what follows cannot continue its domain (`.` only ends it
/// when no label follows, as at the end of a sentence).
fn ends_address(hay: &[u8], end: usize) -> bool {
    let continues = |b: u8| b.is_ascii_alphanumeric() || b >= 0x80 || b == b'-' || b == b'_';
    match hay.get(end) {
        None => true,
        Some(b'.') => !hay.get(end + 1).is_some_and(|&b| continues(b)),
        Some(&b) => !continues(b),
    }
}

/// What an erasure took out of the files the relay keeps (the `scrubbed` object of the
/// admin API's answer).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Erasure {
    /// Spool records rewritten without the address (with new checksums).
    pub spool_records: usize,
    /// Damaged spool records or stretches overwritten (still damaged, for recovery).
    pub damaged_spool_records: usize,
    /// Files of the spool's `quarantine/` overwritten.
    pub quarantine_files: usize,
    /// Event log lines removed.
    pub event_lines: usize,
    /// Kept-aside complaint reports deleted.
    pub complaint_reports: usize,
    /// Mail to a return path kept aside (`bounces/kept-aside/*`) deleted.
    pub bounce_mail: usize,
    /// Webhook outbox files deleted.
    pub webhook_files: usize,
    /// What could not be handled, by file (no address in them); empty when complete.
    #[serde(skip)]
    pub problems: Vec<String>,
}

impl Erasure {
    fn problem(&mut self, path: &Path, why: impl std::fmt::Display) {
        self.problems.push(format!("{}: {why}", path.display()));
    }
}

/// Takes `address` out of the event logs, kept-aside reports, webhook outbox and spool of
/// the relay whose spool is `spool`; see the module doc. Refused only for something that
/// is not an address; what could not be done is in [`Erasure::problems`] (repeating the
/// erasure is harmless).
pub async fn erase(spool: &Spool, address: &str) -> Result<Erasure, NormaliseError> {
    let needle = Arc::new(Needle::new(address)?);
    let root = spool.root().to_path_buf();
    let files = {
        let needle = needle.clone();
        tokio::task::spawn_blocking(move || erase_files(&root, &needle)).await
    };
    let mut out = files.unwrap_or_else(|_| Erasure {
        problems: vec!["the file erasure task failed".into()],
        ..Erasure::default()
    });
    match spool.scrub(needle).await {
        Ok(s) => {
            out.spool_records = s.records;
            out.damaged_spool_records = s.damaged;
            out.quarantine_files = s.quarantine_files;
            out.problems.extend(s.problems);
        }
        Err(e) => out.problems.push(format!("spool: {e}")),
    }
    Ok(out)
}

/// The file part of [`erase`] (everything but the spool's records), under the spool
/// directory `root`.
pub fn erase_files(root: &Path, needle: &Needle) -> Erasure {
    let mut out = Erasure::default();
    for (path, name) in listed(&root.join("events"), &mut out) {
        if name.ends_with(".jsonl") {
            match super::jsonl::rewrite(&path, |line| !line_names(line, needle)) {
                Ok(n) => out.event_lines += n,
                Err(e) => out.problem(&path, e),
            }
        }
    }
    for (path, _) in listed(&root.join("complaints/malformed"), &mut out) {
        if delete_if(&path, |raw| report_holds(raw, needle), &mut out) {
            out.complaint_reports += 1;
        }
    }
    for (path, _) in listed(&root.join("bounces/kept-aside"), &mut out) {
        if delete_if(&path, |raw| report_holds(raw, needle), &mut out) {
            out.bounce_mail += 1;
        }
    }
    let outbox = root.join("state/webhooks");
    for dir in [outbox.clone(), outbox.join("failed")] {
        for (path, name) in listed(&dir, &mut out) {
            if name.ends_with(".json")
                && delete_if(&path, |raw| webhook_names(raw, needle), &mut out)
            {
                out.webhook_files += 1;
            }
        }
    }
    out
}

/// The files of `dir` (none when it does not exist; a problem when it cannot be read).
fn listed(dir: &Path, out: &mut Erasure) -> Vec<(std::path::PathBuf, String)> {
    list_files(dir).unwrap_or_else(|e| {
        out.problem(dir, e);
        Vec::new()
    })
}

/// Deletes `path` when `holds` says its content has the address; returns whether it did.
fn delete_if(path: &Path, holds: impl FnOnce(&[u8]) -> bool, out: &mut Erasure) -> bool {
    let raw = match std::fs::read(path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return false,
        Err(e) => {
            out.problem(path, e);
            return false;
        }
    };
    if !holds(&raw) {
        return false;
    }
    match std::fs::remove_file(path) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            out.problem(path, e);
            false
        }
    }
}

/// An event line about the address: its `address` field is it, or it occurs anywhere.
fn line_names(line: &[u8], needle: &Needle) -> bool {
    needle.occurs_in(line)
        || serde_json::from_slice::<serde_json::Value>(line)
            .ok()
            .and_then(|v| {
                v.get("address")
                    .and_then(|a| a.as_str())
                    .map(|a| needle.is_address(a))
            })
            .unwrap_or(false)
}

/// A webhook outbox file about the address: an `address` field anywhere in it is it, or
/// the address occurs anywhere.
fn webhook_names(raw: &[u8], needle: &Needle) -> bool {
    fn any_address(v: &serde_json::Value, needle: &Needle) -> bool {
        match v {
            serde_json::Value::Object(map) => map.iter().any(|(k, v)| {
                (k == "address" && v.as_str().is_some_and(|a| needle.is_address(a)))
                    || any_address(v, needle)
            }),
            serde_json::Value::Array(items) => items.iter().any(|v| any_address(v, needle)),
            _ => false,
        }
    }
    needle.occurs_in(raw)
        || serde_json::from_slice::<serde_json::Value>(raw).is_ok_and(|v| any_address(&v, needle))
}

/// A kept-aside report that holds the address: in its octets, or in a MIME part once
/// decoded (base64, quoted-printable), nested messages included.
fn report_holds(raw: &[u8], needle: &Needle) -> bool {
    fn in_parts(message: &mail_parser::Message<'_>, needle: &Needle, depth: usize) -> bool {
        message.parts.iter().any(|part| {
            needle.occurs_in(part.contents())
                || (depth < 8
                    && part
                        .message()
                        .is_some_and(|m| in_parts(m, needle, depth + 1)))
        })
    }
    if needle.occurs_in(raw) {
        return true;
    }
    // mail-parser 0.11.9 has tripped debug assertions on malformed input: a report that
    // cannot be parsed is judged by its octets alone.
    std::panic::catch_unwind(|| {
        mail_parser::MessageParser::default()
            .parse(raw)
            .is_some_and(|m| in_parts(&m, needle, 0))
    })
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needle(a: &str) -> Needle {
        Needle::new(a).unwrap()
    }

    fn redacted(n: &Needle, text: &str) -> (String, usize) {
        let mut b = text.as_bytes().to_vec();
        let count = n.redact(&mut b);
        (String::from_utf8(b).unwrap(), count)
    }

    #[test]
    fn finds_the_address_between_boundaries_in_any_ascii_case() {
        let n = needle("Jane@Example.COM");
        assert_eq!(n.address(), "jane@example.com");
        let (text, count) = redacted(
            &n,
            "To: <JANE@example.com>, mary.jane@example.com, jane@example.com.au\r\n\
             mailto:jane@example.com. x=jane%40example.com&y jane@example.community",
        );
        assert_eq!(count, 3);
        assert_eq!(
            text,
            "To: <xxxx@xxxxxxx.xxx>, mary.jane@example.com, jane@example.com.au\r\n\
             mailto:xxxx@xxxxxxx.xxx. x=xxxxxxxxxxxxxx.xxx&y jane@example.community"
        );
        assert!(!n.occurs_in(b"bigjane@example.com"));
        assert!(!n.occurs_in(b"jane-doe@example.com"));
        assert!(n.occurs_in(b"'jane@example.com'"));
        assert!(n.occurs_in(b"jane@example.com"));
        assert!(n.is_address(" JANE@EXAMPLE.com "));
        assert!(!n.is_address("jane@example.org"));
        assert!(Needle::new("not an address").is_err());
        assert_eq!(format!("{n:?}"), "Needle(…@example.com)");
    }

    #[test]
    fn international_domains_are_found_in_both_forms_and_stay_utf8() {
        let n = needle("ana@bücher.example");
        assert_eq!(n.address(), "ana@xn--bcher-kva.example");
        let (text, count) = redacted(&n, "ana@bücher.example and ana@XN--BCHER-KVA.example");
        assert_eq!(count, 2);
        assert_eq!(text, "xxx@xxxxxxx.xxxxxxx and xxx@xxxxxxxxxxxxx.xxxxxxx");
        assert!(n.is_address("Ana@Bücher.example"));
    }

    #[test]
    fn files_lose_the_address_and_keep_everything_else() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in [
            "events",
            "complaints/malformed",
            "bounces/kept-aside",
            "state/webhooks/failed",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(
            root.join("events/unsubscribes.jsonl"),
            "{\"time_ms\":1,\"address\":\"gone@example.net\"}\n\
             {\"time_ms\":2,\"address\":\"stay@example.net\"}\n\
             {\"time_ms\":3,\"address\":\"GONE@example.net\"}\n",
        )
        .unwrap();
        std::fs::write(
            root.join("events/complaints.jsonl"),
            "{\"time_ms\":1,\"note\":\"about gone@example.net\"}\n",
        )
        .unwrap();
        std::fs::write(root.join("events/freezes.jsonl"), "{\"time_ms\":1}\n").unwrap();
        // a report that names the address only inside a base64 part
        let b64 = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            "Original-Rcpt-To: gone@example.net\r\n",
        );
        std::fs::write(
            root.join("complaints/malformed/1-a.eml"),
            format!(
                "From: fbl@isp.example\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
                 --b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n\
                 {b64}\r\n--b--\r\n"
            ),
        )
        .unwrap();
        std::fs::write(
            root.join("complaints/malformed/2-b.eml"),
            "From: x\r\n\r\nstay@example.net",
        )
        .unwrap();
        std::fs::write(
            root.join("bounces/kept-aside/1-c.eml"),
            "From: MAILER-DAEMON@x\r\n\r\n<Gone@example.net>: user unknown\r\n",
        )
        .unwrap();
        std::fs::write(
            root.join("state/webhooks/1.json"),
            "{\"event\":\"complaint\",\"payload\":{\"address\":\"Gone@Example.net\"}}",
        )
        .unwrap();
        std::fs::write(
            root.join("state/webhooks/failed/2.json"),
            "{\"address\":\"gone@example.net\"}",
        )
        .unwrap();
        std::fs::write(
            root.join("state/webhooks/3.json"),
            "{\"address\":\"stay@example.net\"}",
        )
        .unwrap();

        let out = erase_files(root, &needle("gone@example.net"));
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        assert_eq!(
            (
                out.event_lines,
                out.complaint_reports,
                out.bounce_mail,
                out.webhook_files
            ),
            (3, 1, 1, 2)
        );
        assert!(!root.join("bounces/kept-aside/1-c.eml").exists());
        let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
        assert_eq!(
            read("events/unsubscribes.jsonl"),
            "{\"time_ms\":2,\"address\":\"stay@example.net\"}\n"
        );
        assert_eq!(read("events/complaints.jsonl"), "");
        assert_eq!(read("events/freezes.jsonl"), "{\"time_ms\":1}\n");
        assert!(!root.join("complaints/malformed/1-a.eml").exists());
        assert!(root.join("complaints/malformed/2-b.eml").exists());
        assert!(!root.join("state/webhooks/1.json").exists());
        assert!(!root.join("state/webhooks/failed/2.json").exists());
        assert!(root.join("state/webhooks/3.json").exists());
        // nothing there at all is no problem either
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            erase_files(empty.path(), &needle("gone@example.net")),
            Erasure::default()
        );
    }
}
