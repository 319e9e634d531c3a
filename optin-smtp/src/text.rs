//! Text a peer sent, made safe to write into a log line: control characters (CR, LF, ESC,
//! NUL …) are shown escaped (`\n`, `\u{1b}`) so a client cannot forge log lines or drive a
//! terminal, and the value is cut at a length so it cannot flood the log.

use std::fmt;

/// Characters of a peer's value shown at most; longer values end in `…`.
pub const MAX_SHOWN: usize = 200;

/// Displays a peer-supplied string escaped and bounded (see the module doc).
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.0.chars().enumerate() {
            if i == MAX_SHOWN {
                return f.write_str("…");
            }
            if c.is_control() || c == '\\' {
                write!(f, "{}", c.escape_default())?;
            } else {
                fmt::Write::write_char(f, c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_make_a_new_log_line() {
        let forged = "bob\n2026-12-05T00:00:00Z  INFO authenticated account=admin\r\x1b[31m\\";
        let shown = Escaped(forged).to_string();
        assert!(!shown.contains('\n') && !shown.contains('\r') && !shown.contains('\x1b'));
        assert_eq!(
            shown,
            "bob\\n2026-12-05T00:00:00Z  INFO authenticated account=admin\\r\\u{1b}[31m\\\\"
        );
        assert_eq!(Escaped("Grüße").to_string(), "Grüße");
        let long = "x".repeat(500);
        assert_eq!(Escaped(&long).to_string().chars().count(), MAX_SHOWN + 1);
    }
}
