//! Private, crash-safe files and directories: everything the relay writes that holds
//! messages, addresses or keys (spool segments and their journals, quarantine, state,
//! events, logs, the lists, token keys, the admin token) is created mode 0600 in
//! directories of mode 0700, whatever the process umask, through the functions here; and
//! every state file that must survive a crash whole is written through [`AtomicFile`]
//! (a temporary beside it, fsynced, renamed over it, the directory fsynced) or
//! [`write_new`] (a new file, fsynced with its directory).
//!
//! This module sits on the floor of the crate: it uses nothing else of it.
//!
//! The mode is given to `open(2)`/`mkdir(2)` itself, so a file is never readable by others
//! for a moment between its creation and a `chmod`. A directory the relay uses that exists
//! already with a looser mode is tightened once, when the relay opens it. Nothing here ever
//! loosens a mode, and nothing here tightens a shared sticky directory (`/tmp`): a spool
//! path pointed at one is the operator's choice to make.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of every file the relay creates.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every directory the relay creates.
pub const DIR_MODE: u32 = 0o700;
/// Bits that give group or others any access.
const SHARED: u32 = 0o077;
const STICKY: u32 = 0o1000;

/// Creates `dir` (and missing parents) with mode 0700; when it exists already and group or
/// others may use it, it is tightened to 0700 (unless it is a sticky directory such as
/// `/tmp`, which is shared on purpose, or another user's, which is only warned about).
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            let mode = meta.permissions().mode();
            if mode & SHARED != 0 && mode & STICKY == 0 {
                match std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE)) {
                    Ok(()) => {
                        tracing::info!(dir = %dir.display(), was = format!("{:o}", mode & 0o7777), "directory made private (mode 700)")
                    }
                    // Someone else's directory: said loudly, but not a reason to stop.
                    Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                        tracing::warn!(dir = %dir.display(), mode = format!("{:o}", mode & 0o7777), error = %e, "directory is not private and cannot be made so (not ours): keep it to the relay's user")
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a directory", dir.display()),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir),
        Err(e) => Err(e),
    }
}

/// The directory `path` is in, created private when missing (see [`private_dir`]).
fn parent_dir(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => private_dir(dir),
        _ => Ok(()),
    }
}

/// `OpenOptions` whose `create` makes the file with mode 0600.
pub fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(FILE_MODE);
    o
}

/// Opens `path` for appending, creating it (0600) and its directory (0700) if needed:
/// event logs, the delivery log.
pub fn append(path: &Path) -> std::io::Result<File> {
    parent_dir(path)?;
    options().append(true).create(true).open(path)
}

/// Creates `path` (0600), failing if it exists; its directory must exist.
pub fn create_new(path: &Path) -> std::io::Result<File> {
    options().write(true).create_new(true).open(path)
}

/// Writes `bytes` to `path` so that a crash leaves the old content or the new, never half
/// (see [`AtomicFile`]). The directory is created private when missing.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    parent_dir(path)?;
    let mut f = AtomicFile::create(path)?;
    f.write_all(bytes)?;
    f.commit()
}

/// Creates `path` (0600) with `bytes`, failing if it exists, and fsyncs it and its
/// directory: once this returns the file survives a crash whole. Its directory must exist.
pub fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let result = (|| {
        let mut f = create_new(path)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = result {
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            let _ = std::fs::remove_file(path);
        }
        return Err(e);
    }
    sync_parent(path)
}

/// A replacement for the file at `path`, written to a fresh temporary beside it (0600) and
/// put in place by [`AtomicFile::commit`]: fsynced, renamed over `path`, the directory
/// fsynced. A crash, an error or a drop before the commit leaves the old file as it was
/// and removes the temporary.
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
}

impl AtomicFile {
    /// Starts the replacement; `path`'s directory must exist.
    pub fn create(path: &Path) -> std::io::Result<AtomicFile> {
        let tmp = temp_beside(path);
        let file = create_new(&tmp)?;
        Ok(AtomicFile {
            path: path.to_path_buf(),
            tmp,
            file: Some(file),
        })
    }

    /// The temporary file, to write (and seek) in.
    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("open until commit")
    }

    /// fsyncs the new content, renames it over the old and fsyncs the directory.
    pub fn commit(mut self) -> std::io::Result<()> {
        let file = self.file.take().expect("open until commit");
        file.sync_all()?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path)?;
        self.tmp = PathBuf::new();
        sync_parent(&self.path)
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file().flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Whether `name` is one of the temporaries [`temp_beside`] makes (left by a crash).
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

/// A fresh temporary name beside `path` (same directory, so a rename is atomic).
pub fn temp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.{:016x}.tmp", rand::random::<u64>()))
}

/// fsyncs a directory, so a file created or renamed in it survives a crash.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// fsyncs the directory `path` is in, so a file created or renamed there survives a crash.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
        _ => sync_dir(Path::new(".")),
    }
}

/// Tightens an open file that group or others may read to 0600 (files an older version
/// created with the umask's mode); returns whether it changed anything.
pub fn tighten(file: &File) -> std::io::Result<bool> {
    let mode = file.metadata()?.permissions().mode();
    if mode & SHARED == 0 {
        return Ok(false);
    }
    file.set_permissions(std::fs::Permissions::from_mode(mode & 0o700))?;
    Ok(true)
}

/// Refuses a secret file that group or others may read or write: its content would not be
/// a secret. The message names the file, its mode and the fix.
pub fn check_private(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & SHARED != 0 {
        return Err(format!(
            "{} is mode {mode:03o}: group or others may read it; it must be readable by \
             the relay's user only (chmod 600 {})",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn created_private_and_loose_directories_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        private_dir(&deep).unwrap();
        assert_eq!(mode(&deep), 0o700);
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        let loose = dir.path().join("loose");
        std::fs::create_dir(&loose).unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&loose).unwrap();
        assert_eq!(mode(&loose), 0o700);
        // A shared sticky directory is left as it is.
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        private_dir(&shared).unwrap();
        assert_eq!(mode(&shared), 0o1777);
        // A file where a directory should be is an error, not a chmod.
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        assert!(private_dir(&dir.path().join("file")).is_err());
    }

    #[test]
    fn files_are_0600_and_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/x.json");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("state")), 0o700);
        // Only the file itself is left: no temporary beside it.
        assert_eq!(
            std::fs::read_dir(dir.path().join("state")).unwrap().count(),
            1
        );
        let log = dir.path().join("events/e.jsonl");
        append(&log).unwrap().write_all(b"{}\n").unwrap();
        assert_eq!(mode(&log), 0o600);
        let f = create_new(&dir.path().join("n")).unwrap();
        assert_eq!(mode(&dir.path().join("n")), 0o600);
        assert!(create_new(&dir.path().join("n")).is_err());
        drop(f);
    }

    #[test]
    fn an_unfinished_replacement_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        write_atomically(&path, b"old").unwrap();
        let mut f = AtomicFile::create(&path).unwrap();
        f.write_all(b"half").unwrap();
        drop(f);
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        write_new(&dir.path().join("new"), b"x").unwrap();
        let e = write_new(&dir.path().join("new"), b"y").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(dir.path().join("new")).unwrap(), b"x");
        assert!(is_temp_name(
            temp_beside(&path).file_name().unwrap().to_str().unwrap()
        ));
    }

    #[test]
    fn loose_files_are_tightened_and_refused_as_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, b"secret").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = check_private(&path).unwrap_err();
        assert!(
            err.contains("mode 644") && err.contains("chmod 600"),
            "{err}"
        );
        assert!(tighten(&File::open(&path).unwrap()).unwrap());
        assert_eq!(mode(&path), 0o600);
        assert!(!tighten(&File::open(&path).unwrap()).unwrap());
        check_private(&path).unwrap();
    }
}
