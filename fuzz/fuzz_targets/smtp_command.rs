//! The command parser behind its line framing, on whatever a client sends.
//!
//! Input: the first octet picks the line limit (16 to 524 octets) and HELO or EHLO mode;
//! the rest is the byte stream. Checks: the framing consumes only what it reports, only
//! CRLF ends a command and a line over the limit is caught within the limit; the parser
//! never panics; every refusal's reply is well-formed SMTP (CRLF lines of at most 512
//! octets with no other CR or LF, read back with the same code).
#![no_main]

use libfuzzer_sys::fuzz_target;
use optin_relay::smtp::line::{Line, LineReader};
use optin_relay::smtp::parse_command;
use optin_relay::smtp::reply::parse_reply;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    let extended = mode & 1 == 1;
    let max_len = 16 + usize::from(mode >> 1) * 4;
    let mut reader = LineReader::new(max_len);
    let mut pos = 0;
    while pos < stream.len() {
        let buf = &stream[pos..];
        let window = &buf[..buf.len().min(max_len)];
        let (used, line) = reader.next(buf);
        assert!(used <= buf.len());
        match line {
            None => {
                assert_eq!(used, 0);
                assert!(!window.contains(&b'\n') && buf.len() < max_len);
                break;
            }
            Some(Line::Command(command)) => {
                assert_eq!(&buf[command.len()..used], b"\r\n");
                assert!(!command.contains(&b'\r') && !command.contains(&b'\n'));
                check(command, extended);
            }
            Some(Line::BadEnding) => {
                assert!(used > 0 && buf[used - 1] == b'\n' && used <= max_len);
            }
            Some(Line::TooLong) => {
                // The session answers and closes: nothing after it is read.
                assert!(!window.contains(&b'\n') && buf.len() >= max_len);
                break;
            }
        }
        pos += used;
    }
    // The parser alone, on the whole input as one line.
    check(stream, extended);
});

fn check(line: &[u8], extended: bool) {
    match parse_command(line, extended) {
        Ok(command) => {
            let _ = format!("{command:?}");
        }
        Err(refusal) => {
            let reply = refusal.reply();
            let wire = reply.to_bytes();
            for l in wire.split_inclusive(|&b| b == b'\n') {
                assert!(l.ends_with(b"\r\n"), "{wire:?}");
                assert!(l.len() <= 512, "reply line over 512 octets: {wire:?}");
                let text = &l[..l.len() - 2];
                assert!(!text.contains(&b'\r') && !text.contains(&b'\n'), "{wire:?}");
            }
            let (back, used) = parse_reply(&wire)
                .expect("our reply parses")
                .expect("our reply is complete");
            assert_eq!((back.code, used), (reply.code, wire.len()));
        }
    }
}
