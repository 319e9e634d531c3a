//! Where a node of a cluster stands in the feed, in files beside its journals: `feed.sent`
//! (the journal and offset up to which its own changes are in the stream), `feed.seen`
//! (the last stream entry whose changes are in its journal), `feed.snapshot` (the hash
//! of the last snapshot it published or took, see [`super::published`]) and
//! `erasures.seen` (the last erasure of another node carried out, see
//! [`super::erasures`]). Written atomically; read by the feed ([`super::feed`]), by
//! compaction (journals not yet sent are kept), when a snapshot made elsewhere is taken,
//! and by the erasures' reader.

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

pub fn erasures_seen_path(dir: &Path) -> PathBuf {
    dir.join("erasures.seen")
}

/// A one-line position file (`feed.seen`, `feed.snapshot`, `erasures.seen`); `None` when
/// it is missing or empty.
pub fn read_line(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

pub fn write_line(path: &Path, value: &str) -> std::io::Result<()> {
    crate::files::write_atomically(path, format!("{value}\n").as_bytes())
}

/// The stream position in `feed.seen`; `None`: the node never read the feed.
pub fn read_seen(dir: &Path) -> Option<String> {
    read_line(&seen_path(dir))
}

pub fn write_seen(dir: &Path, id: &str) -> std::io::Result<()> {
    write_line(&seen_path(dir), id)
}

/// The hash of the last snapshot published or taken here, if any.
pub fn read_snapshot_marker(dir: &Path) -> Option<String> {
    read_line(&snapshot_marker_path(dir))
}

pub fn write_snapshot_marker(dir: &Path, hash: &str) -> std::io::Result<()> {
    write_line(&snapshot_marker_path(dir), hash)
}

#[cfg(test)]
mod tests {
    use super::*;

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
