//! Server-side command parsing: one complete command line (without its CRLF) in, a typed
//! [`Command`] or the [`Refusal`] to answer with out.
//!
//! Pure and allocation-light: the verb is matched case-insensitively without copying, and
//! only the parts a command keeps (addresses, the EHLO name) are owned.

use super::address::{Address, parse_path};
use super::params::{MailParams, RcptParams, parse_mail_params, parse_rcpt_params};
use super::refusal::Refusal;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMechanism {
    Plain,
    Login,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    Mail {
        from: Option<Address>,
        params: MailParams,
    },
    Rcpt {
        /// `None` is `RCPT TO:<postmaster>` without a domain, which every SMTP server must
        /// accept (RFC 5321 §4.5.1); the session maps it to the configured address.
        to: Option<Address>,
        params: RcptParams,
    },
    Data,
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    StartTls,
    Auth {
        mechanism: AuthMechanism,
        initial: Option<String>,
    },
}

/// Parses one command line. `extended` says whether the client greeted with EHLO (ESMTP
/// parameters allowed) rather than HELO.
pub fn parse_command(line: &[u8], extended: bool) -> Result<Command, Refusal> {
    let line = std::str::from_utf8(line).map_err(|_| Refusal::NotUtf8)?;
    let (verb, args) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    let is = |name: &str| verb.eq_ignore_ascii_case(name);
    let no_args = |cmd: Command, usage: &'static str| {
        if args.trim().is_empty() {
            Ok(cmd)
        } else {
            Err(Refusal::Syntax(usage))
        }
    };
    if is("MAIL") {
        let rest = strip_keyword(args, "FROM:").ok_or(Refusal::Syntax("MAIL FROM:<address>"))?;
        let (from, rest) = parse_path(rest).map_err(Refusal::BadSender)?;
        let params = parse_mail_params(rest, extended).map_err(Refusal::Param)?;
        Ok(Command::Mail { from, params })
    } else if is("RCPT") {
        let rest = strip_keyword(args, "TO:").ok_or(Refusal::Syntax("RCPT TO:<address>"))?;
        if let Some(params) = postmaster(rest) {
            let params = parse_rcpt_params(params, extended).map_err(Refusal::Param)?;
            return Ok(Command::Rcpt { to: None, params });
        }
        let (to, rest) = parse_path(rest).map_err(Refusal::BadRecipient)?;
        let to = to.ok_or(Refusal::BadRecipient(super::address::AddressError::Empty))?;
        let params = parse_rcpt_params(rest, extended).map_err(Refusal::Param)?;
        Ok(Command::Rcpt {
            to: Some(to),
            params,
        })
    } else if is("DATA") {
        no_args(Command::Data, "DATA")
    } else if is("BDAT") {
        parse_bdat(args)
    } else if is("EHLO") || is("HELO") {
        let name = args.trim();
        if name.is_empty() || name.contains(' ') || name.len() > 255 {
            return Err(Refusal::Syntax(if is("EHLO") {
                "EHLO hostname"
            } else {
                "HELO hostname"
            }));
        }
        Ok(if is("EHLO") {
            Command::Ehlo(name.to_string())
        } else {
            Command::Helo(name.to_string())
        })
    } else if is("RSET") {
        no_args(Command::Rset, "RSET")
    } else if is("NOOP") {
        Ok(Command::Noop)
    } else if is("QUIT") {
        no_args(Command::Quit, "QUIT")
    } else if is("VRFY") {
        if args.trim().is_empty() {
            return Err(Refusal::Syntax("VRFY address"));
        }
        Ok(Command::Vrfy)
    } else if is("EXPN") {
        Ok(Command::Expn)
    } else if is("HELP") {
        Ok(Command::Help)
    } else if is("STARTTLS") {
        no_args(Command::StartTls, "STARTTLS")
    } else if is("AUTH") {
        parse_auth(args)
    } else if ["TURN", "ETRN", "ATRN", "SEND", "SOML", "SAML"]
        .iter()
        .any(|v| is(v))
    {
        Err(Refusal::NotImplemented)
    } else {
        Err(Refusal::Unrecognized)
    }
}

/// Strips `FROM:` / `TO:` case-insensitively; tolerates no space between keyword and colon
/// only, as RFC 5321 does.
fn strip_keyword<'a>(args: &'a str, keyword: &str) -> Option<&'a str> {
    let head = args.get(..keyword.len())?;
    head.eq_ignore_ascii_case(keyword)
        .then(|| &args[keyword.len()..])
}

/// `<postmaster>` (any case) at the start of the RCPT argument; returns the parameters.
fn postmaster(rest: &str) -> Option<&str> {
    let rest = rest.trim_start_matches(' ');
    let head = rest.get(..12)?;
    head.eq_ignore_ascii_case("<postmaster>")
        .then(|| &rest[12..])
        .filter(|p| p.is_empty() || p.starts_with(' '))
}

fn parse_bdat(args: &str) -> Result<Command, Refusal> {
    const USAGE: &str = "BDAT size [LAST]";
    let mut words = args.split(' ').filter(|w| !w.is_empty());
    let size = words
        .next()
        .filter(|w| w.len() <= 20 && w.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|w| w.parse::<u64>().ok())
        .ok_or(Refusal::Syntax(USAGE))?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(Refusal::Syntax(USAGE)),
    };
    if words.next().is_some() {
        return Err(Refusal::Syntax(USAGE));
    }
    Ok(Command::Bdat { size, last })
}

fn parse_auth(args: &str) -> Result<Command, Refusal> {
    let mut words = args.split(' ').filter(|w| !w.is_empty());
    let mechanism = match words.next() {
        None => return Err(Refusal::Syntax("AUTH mechanism [initial-response]")),
        Some(m) if m.eq_ignore_ascii_case("PLAIN") => AuthMechanism::Plain,
        Some(m) if m.eq_ignore_ascii_case("LOGIN") => AuthMechanism::Login,
        Some(_) => return Err(Refusal::AuthMechanism),
    };
    let initial = words.next().map(str::to_string);
    if words.next().is_some() {
        return Err(Refusal::Syntax("AUTH mechanism [initial-response]"));
    }
    Ok(Command::Auth { mechanism, initial })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::BodyType;

    fn parse(s: &str) -> Result<Command, Refusal> {
        parse_command(s.as_bytes(), true)
    }

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(parse("quit"), Ok(Command::Quit));
        assert_eq!(parse("Data"), Ok(Command::Data));
        assert_eq!(
            parse("ehlo client.example"),
            Ok(Command::Ehlo("client.example".into()))
        );
        assert_eq!(parse("NOOP anything"), Ok(Command::Noop));
        assert_eq!(parse("StartTLS"), Ok(Command::StartTls));
    }

    #[test]
    fn mail_and_rcpt() {
        match parse("MAIL FROM:<a@b.example> BODY=8BITMIME").unwrap() {
            Command::Mail { from, params } => {
                assert_eq!(from.unwrap().as_str(), "a@b.example");
                assert_eq!(params.body, Some(BodyType::EightBitMime));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse("mail from: <>"),
            Ok(Command::Mail { from: None, .. })
        ));
        assert!(matches!(
            parse("RCPT TO:<c@d.example> NOTIFY=NEVER"),
            Ok(Command::Rcpt { .. })
        ));
        assert_eq!(
            parse("RCPT TO:<>"),
            Err(Refusal::BadRecipient(crate::address::AddressError::Empty))
        );
        assert_eq!(
            parse("MAIL <a@b.example>"),
            Err(Refusal::Syntax("MAIL FROM:<address>"))
        );
        assert!(matches!(
            parse("MAIL FROM:a@b.example"),
            Err(Refusal::BadSender(_))
        ));
        assert!(matches!(
            parse_command(b"MAIL FROM:<a@b.example> SIZE=1", false),
            Err(Refusal::Param(_))
        ));
    }

    #[test]
    fn bdat() {
        assert_eq!(
            parse("BDAT 100"),
            Ok(Command::Bdat {
                size: 100,
                last: false
            })
        );
        assert_eq!(
            parse("BDAT 0 LAST"),
            Ok(Command::Bdat {
                size: 0,
                last: true
            })
        );
        assert!(parse("BDAT").is_err());
        assert!(parse("BDAT -1").is_err());
        assert!(parse("BDAT 1 FIRST").is_err());
        assert!(parse("BDAT 99999999999999999999999").is_err());
    }

    #[test]
    fn auth() {
        assert_eq!(
            parse("AUTH PLAIN AGEAYg=="),
            Ok(Command::Auth {
                mechanism: AuthMechanism::Plain,
                initial: Some("AGEAYg==".into())
            })
        );
        assert_eq!(
            parse("auth login"),
            Ok(Command::Auth {
                mechanism: AuthMechanism::Login,
                initial: None
            })
        );
        assert_eq!(parse("AUTH CRAM-MD5"), Err(Refusal::AuthMechanism));
    }

    #[test]
    fn unknown_and_unsupported() {
        assert_eq!(parse("FOO"), Err(Refusal::Unrecognized));
        assert_eq!(parse(""), Err(Refusal::Unrecognized));
        assert_eq!(parse("ETRN x"), Err(Refusal::NotImplemented));
        assert_eq!(
            parse_command(b"MAIL FROM:<\xff@b>", true),
            Err(Refusal::NotUtf8)
        );
        assert_eq!(parse("DATA now"), Err(Refusal::Syntax("DATA")));
        assert_eq!(parse("EHLO"), Err(Refusal::Syntax("EHLO hostname")));
    }
}
