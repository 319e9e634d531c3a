//! The list importer's CSV path (`lists import FILE.csv`): BOM and encoding sniffing,
//! delimiter guess, records, address column, on any file content.
//!
//! The input is written to a `.csv` file (in /dev/shm when there is one, removed after
//! each input) and read with
//! `consent::import::read_file`, exactly as the CLI reads it. Checks: no panic; the row
//! count is the number of rows handed over; line numbers start at 1, never go back and
//! stay within the file; addresses come trimmed.
#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use optin_relay::consent::import::{Item, read_file};

static PATH: LazyLock<PathBuf> = LazyLock::new(|| {
    let dir = std::path::Path::new("/dev/shm");
    let dir = if dir.is_dir() {
        dir.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("optin-relay-fuzz-{}.csv", std::process::id()))
});

fuzz_target!(|data: &[u8]| {
    std::fs::write(&*PATH, data).expect("scratch file");
    let mut items = Vec::new();
    let result = read_file(&PATH, &mut |item| items.push(item), &mut |_, _| {});
    // Gone after each input: libFuzzer ends the process without running destructors.
    std::fs::remove_file(&*PATH).expect("scratch file removed");
    let Ok(rows) = result else {
        return;
    };
    assert_eq!(rows, items.len() as u64);
    let lines = data.iter().filter(|&&b| b == b'\n' || b == b'\r').count() as u64 + 1;
    let mut last = 0;
    for item in &items {
        let line = match item {
            Item::Address { line, text } => {
                assert_eq!(text.trim(), text, "address not trimmed");
                *line
            }
            Item::Invalid { line, .. } => *line,
        };
        assert!(
            line >= 1 && line >= last && line <= lines,
            "line {line} after {last}, {lines} lines"
        );
        last = line;
    }
});
