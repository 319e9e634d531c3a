//! Where a node of a cluster stands in the feed, in files beside its journals: `feed.sent`
//! (the journal and offset up to which its own changes are in the stream), `feed.seen`
//! (the last stream entry whose changes are in its journal) and `feed.snapshot` (the hash
//! of the last snapshot it published or took, see [`super::published`]). Written
//! atomically; read by the feed ([`super::feed`]), by compaction (journals not yet sent
//! are kept) and when a snapshot made elsewhere is taken.

use std::path::{Path, PathBuf};

/// Where the sender is: the journal and the offset in it up to which changes are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub journal: u64,
    pub offset: u64,
}

pub fn sent_path(dir: &Path) -> PathBuf {
    dir.join("feed.sent")
}

pub fn seen_path(dir: &Path) -> PathBuf {
    dir.join("feed.seen")
}

pub fn snapshot_marker_path(dir: &Path) -> PathBuf {
    dir.join("feed.snapshot")
}

/// The first journal the feed of a relay using `dir` has not sent whole (`u64::MAX`: no
/// feed): compaction by any process — `lists compile` beside a running relay too — keeps
/// it and every later one.
pub fn unsent_floor(dir: &Path) -> u64 {
    match read_sent(dir) {
        Ok(Some(sent)) => sent.journal,
        Ok(None) => u64::MAX,
        // Unreadable: keep everything rather than lose what was not sent.
        Err(_) => 0,
    }
}

pub fn read_sent(dir: &Path) -> std::io::Result<Option<Sent>> {
    let text = match std::fs::read_to_string(sent_path(dir)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut parts = text.split_whitespace().map(str::parse::<u64>);
    match (parts.next(), parts.next()) {
        (Some(Ok(journal)), Some(Ok(offset))) => Ok(Some(Sent { journal, offset })),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not \"JOURNAL OFFSET\": {text:?}"),
        )),
    }
}

pub fn write_sent(dir: &Path, sent: Sent) -> std::io::Result<()> {
    let text = format!("{} {}\n", sent.journal, sent.offset);
    crate::files::write_atomically(&sent_path(dir), text.as_bytes())
}

/// The stream position in `feed.seen`; `None`: the node never read the feed.
pub fn read_seen(dir: &Path) -> Option<String> {
    std::fs::read_to_string(seen_path(dir))
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

pub fn write_seen(dir: &Path, id: &str) -> std::io::Result<()> {
    crate::files::write_atomically(&seen_path(dir), format!("{id}\n").as_bytes())
}

/// The hash of the last snapshot published or taken here, if any.
pub fn read_snapshot_marker(dir: &Path) -> Option<String> {
    std::fs::read_to_string(snapshot_marker_path(dir))
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

pub fn write_snapshot_marker(dir: &Path, hash: &str) -> std::io::Result<()> {
    crate::files::write_atomically(&snapshot_marker_path(dir), format!("{hash}\n").as_bytes())
}

/// Whether stream id `a` is before `b` (`ms-seq`).
pub fn stream_id_less(a: &str, b: &str) -> bool {
    let parse = |s: &str| {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        (
            ms.parse::<u64>().unwrap_or(0),
            seq.parse::<u64>().unwrap_or(0),
        )
    };
    parse(a) < parse(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_compare_as_numbers() {
        assert!(stream_id_less("9-5", "10-0"));
        assert!(stream_id_less("10-0", "10-1"));
        assert!(!stream_id_less("10-1", "10-1"));
    }

    #[test]
    fn positions_read_back_and_refuse_nonsense() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_sent(dir.path()).unwrap(), None);
        write_sent(
            dir.path(),
            Sent {
                journal: 3,
                offset: 96,
            },
        )
        .unwrap();
        assert_eq!(
            read_sent(dir.path()).unwrap(),
            Some(Sent {
                journal: 3,
                offset: 96
            })
        );
        std::fs::write(sent_path(dir.path()), "x").unwrap();
        assert!(read_sent(dir.path()).is_err());
        assert_eq!(unsent_floor(dir.path()), 0, "unreadable: keep everything");
        assert_eq!(read_seen(dir.path()), None);
        write_seen(dir.path(), "17-3").unwrap();
        assert_eq!(read_seen(dir.path()).as_deref(), Some("17-3"));
        write_snapshot_marker(dir.path(), "abc").unwrap();
        assert_eq!(read_snapshot_marker(dir.path()).as_deref(), Some("abc"));
    }
}
