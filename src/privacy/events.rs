//! The relay's event logs for the accounts' own systems: one JSON object per line, appended
//! through [`super::jsonl`] so that retention and erasure can rewrite them underneath.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// An event log (`events/*.jsonl` beside the spool: unsubscribes, complaints, freezes,
/// campaign verdicts): one JSON object per line, mode 0600, since events carry addresses.
#[derive(Debug)]
pub struct EventLog {
    path: PathBuf,
    file: Mutex<Option<std::fs::File>>,
}

impl EventLog {
    pub fn new(path: &Path) -> EventLog {
        EventLog {
            path: path.to_path_buf(),
            file: Mutex::new(None),
        }
    }

    /// Appends one event; follows the file when retention or erasure rewrote it (see
    /// `crate::privacy::jsonl`).
    pub fn append(&self, event: &serde_json::Value) -> std::io::Result<()> {
        let mut guard = self.file.lock().expect("event log lock");
        let mut line = event.to_string();
        line.push('\n');
        super::jsonl::append_line(&mut guard, &self.path, line.as_bytes())
    }
}
