//! The account API's upload reader (`POST /account/consent/upload`): a file of addresses
//! as CSV or JSON lines, read one bounded line at a time, on any content.
//!
//! Checks, for both formats: no panic; line numbers start at 1, only go up and stay within
//! the file; every address handed over is normalised (normalising it again changes
//! nothing); a refusal's reason stays short whatever the line held.
#![no_main]

use libfuzzer_sys::fuzz_target;
use optin_relay::governance::uploads::{Format, MAX_LINE, read_addresses};

fuzz_target!(|data: &[u8]| {
    let lines = data.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
    for format in [Format::Csv, Format::Jsonl] {
        let mut last = 0;
        let read = read_addresses(data, format, |n, found| {
            assert!(n > last && n <= lines, "line {n} after {last}, {lines} lines");
            last = n;
            match found {
                Ok(a) => {
                    let again = optin_relay::consent::key::normalise(&a);
                    assert_eq!(again.as_deref(), Ok(a.as_str()), "not normalised");
                }
                Err(why) => assert!(why.len() < MAX_LINE + 200, "a refusal too long"),
            }
            Ok(())
        })
        .expect("reading memory cannot fail");
        assert!(read <= lines);
    }
});
