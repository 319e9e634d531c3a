//! Event logs (`events/*.jsonl` in the spool directory) as files that the relay appends to
//! while retention and erasure rewrite them: the protocol that lets a rewrite replace a file
//! without losing a line appended meanwhile, and without a plain copy left behind.
//!
//! Appenders keep their file open ([`append_line`]). A rewrite ([`rewrite`]) takes an
//! exclusive `flock` on the current file, reads it, writes the kept lines to a new file
//! beside it (mode 0600, synced) and renames that over the original, then lets go. An
//! append takes a shared lock on its open file and, holding it, checks that the path still
//! names that file; if a rewrite replaced it, the appender reopens the path and tries again.
//! So every line lands either before a rewrite read the file (and is judged by it) or in
//! the new file, never in a replaced one. The replaced file is unlinked by the rename: no
//! copy of a removed line stays under its name.
//!
//! Lines are taken as octets: a line that is not UTF-8 or not JSON is handed to the
//! caller's filter like any other; an unterminated last line (a crash mid-append) is kept
//! as it is when the filter keeps it.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

/// How often an append or a rewrite follows a replaced file before giving up (a rewrite
/// replaces a file once; more means something else keeps replacing it).
const MAX_REOPENS: usize = 16;

/// Appends `line` (which should end in `\n`) to the log at `path`, through the file kept
/// open in `slot` (opened, mode 0600, when empty, and reopened when a rewrite replaced it).
pub fn append_line(slot: &mut Option<File>, path: &Path, line: &[u8]) -> std::io::Result<()> {
    for _ in 0..MAX_REOPENS {
        let mut file = match slot.take() {
            Some(f) => f,
            None => crate::files::append(path)?,
        };
        file.lock_shared()?;
        let written = match names_file(path, &file) {
            Ok(true) => Some(file.write_all(line)),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        };
        let _ = file.unlock();
        if let Some(result) = written {
            *slot = Some(file);
            return result;
        }
        // Replaced by a rewrite: the next round opens the path again.
    }
    Err(std::io::Error::other(format!(
        "{}: replaced again and again while appending",
        path.display()
    )))
}

/// Rewrites the log at `path` without the lines `keep` refuses (given without their `\n`);
/// returns how many went. A file that does not exist has nothing to remove; a file from
/// which nothing goes is left untouched.
pub fn rewrite(path: &Path, mut keep: impl FnMut(&[u8]) -> bool) -> std::io::Result<usize> {
    for _ in 0..MAX_REOPENS {
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        file.lock()?;
        // Another rewrite may have replaced the file while this one waited for the lock.
        if !names_file(path, &file)? {
            continue;
        }
        let mut text = Vec::new();
        file.read_to_end(&mut text)?;
        let (kept, removed) = filter(&text, &mut keep);
        if removed > 0 {
            crate::files::write_atomically(path, &kept)?;
        }
        // Unlocked when `file` closes: appenders waiting on it then find the new file.
        return Ok(removed);
    }
    Err(std::io::Error::other(format!(
        "{}: replaced again and again while rewriting",
        path.display()
    )))
}

/// The lines of `text` that `keep` accepts, each with its `\n` as it was, and how many
/// it refused.
fn filter(text: &[u8], keep: &mut impl FnMut(&[u8]) -> bool) -> (Vec<u8>, usize) {
    let mut kept = Vec::with_capacity(text.len());
    let mut removed = 0;
    for line in text.split_inclusive(|&b| b == b'\n') {
        let bare = line.strip_suffix(b"\n").unwrap_or(line);
        if bare.is_empty() || keep(bare) {
            kept.extend_from_slice(line);
        } else {
            removed += 1;
        }
    }
    (kept, removed)
}

/// Whether `path` currently names the open `file` (false when it names nothing).
fn names_file(path: &Path, file: &File) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let open = file.metadata()?;
    match std::fs::metadata(path) {
        Ok(named) => Ok(named.dev() == open.dev() && named.ino() == open.ino()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_removes_refused_lines_and_keeps_the_rest_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.jsonl");
        std::fs::write(&path, b"{\"a\":1}\nnot json\n{\"a\":2}\n\n{\"a\":3}").unwrap();
        let removed = rewrite(&path, |l| l != b"{\"a\":2}").unwrap();
        assert_eq!(removed, 1);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"{\"a\":1}\nnot json\n\n{\"a\":3}"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // nothing to remove: the file is not touched; no file: nothing to do
        let before = std::fs::metadata(&path).unwrap().modified().unwrap();
        assert_eq!(rewrite(&path, |_| true).unwrap(), 0);
        assert_eq!(
            std::fs::metadata(&path).unwrap().modified().unwrap(),
            before
        );
        assert_eq!(
            rewrite(&dir.path().join("none.jsonl"), |_| false).unwrap(),
            0
        );
        // no temporary file is left behind
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn an_appender_follows_a_rewritten_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events/e.jsonl");
        let mut slot = None;
        append_line(&mut slot, &path, b"old\n").unwrap();
        append_line(&mut slot, &path, b"keep\n").unwrap();
        assert_eq!(rewrite(&path, |l| l != b"old").unwrap(), 1);
        // the handle in `slot` names the replaced file; the append must land in the new one
        append_line(&mut slot, &path, b"new\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"keep\nnew\n");
    }

    #[test]
    fn appends_racing_rewrites_are_never_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.jsonl");
        let writer = {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut slot = None;
                for i in 0..2000 {
                    append_line(&mut slot, &path, format!("{i}\n").as_bytes()).unwrap();
                }
            })
        };
        let mut removed = 0;
        while !writer.is_finished() {
            // remove the lines divisible by 7, as a sweep would remove old ones
            removed += rewrite(&path, |l| {
                std::str::from_utf8(l).unwrap().parse::<u32>().unwrap() % 7 != 0
            })
            .unwrap();
        }
        writer.join().unwrap();
        removed += rewrite(&path, |l| {
            std::str::from_utf8(l).unwrap().parse::<u32>().unwrap() % 7 != 0
        })
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let got: Vec<u32> = text.lines().map(|l| l.parse().unwrap()).collect();
        let want: Vec<u32> = (0..2000).filter(|i| i % 7 != 0).collect();
        assert_eq!(got, want);
        assert_eq!(removed, 2000 - want.len());
    }
}
