//! ESMTP parameters of MAIL and RCPT, and the xtext encoding they use.
//!
//! MAIL: `SIZE` (RFC 1870), `BODY` (RFC 6152), `SMTPUTF8` (RFC 6531), `RET` and `ENVID`
//! (RFC 3461), `AUTH` (RFC 4954, accepted and ignored). RCPT: `NOTIFY` and `ORCPT`
//! (RFC 3461). Keywords are case-insensitive; a duplicate, unknown or malformed parameter is
//! an error naming the parameter, so the session can answer with the right reply.

use std::fmt::Write as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyType {
    SevenBit,
    EightBitMime,
}

/// RFC 3461 `RET`: what a bounce should return of the original message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    Full,
    Headers,
}

/// RFC 3461 `NOTIFY`: when the sender wants a DSN for this recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Notify {
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

impl Notify {
    pub const NEVER: Notify = Notify {
        success: false,
        failure: false,
        delay: false,
    };

    /// What applies when the client gave no NOTIFY: failures only (RFC 3461 §4.1 lets the
    /// MTA choose about delays; we do not send unrequested delay notices).
    pub const DEFAULT: Notify = Notify {
        success: false,
        failure: true,
        delay: false,
    };

    pub fn bits(self) -> u8 {
        u8::from(self.success) | u8::from(self.failure) << 1 | u8::from(self.delay) << 2
    }

    pub fn from_bits(bits: u8) -> Notify {
        Notify {
            success: bits & 1 != 0,
            failure: bits & 2 != 0,
            delay: bits & 4 != 0,
        }
    }

    /// The parameter value as it is sent onward (`NEVER` or a comma list).
    pub fn to_param(self) -> String {
        let mut out = Vec::new();
        if self.success {
            out.push("SUCCESS");
        }
        if self.failure {
            out.push("FAILURE");
        }
        if self.delay {
            out.push("DELAY");
        }
        if out.is_empty() {
            "NEVER".into()
        } else {
            out.join(",")
        }
    }
}

/// RFC 3461 `ORCPT`: the recipient as the original sender gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orcpt {
    /// `rfc822` or `utf-8` (RFC 6533).
    pub addr_type: String,
    /// The address, xtext-decoded.
    pub address: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    pub size: Option<u64>,
    pub body: Option<BodyType>,
    pub smtputf8: bool,
    pub ret: Option<Ret>,
    /// Decoded `ENVID`.
    pub envid: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptParams {
    pub notify: Option<Notify>,
    pub orcpt: Option<Orcpt>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("parameter {0} is not supported")]
    Unknown(String),
    #[error("parameter {0} given twice")]
    Duplicate(&'static str),
    #[error("parameter {0} has an invalid value")]
    BadValue(&'static str),
    #[error("parameter {0} is not allowed here")]
    NotAllowed(&'static str),
}

/// Splits `KEY[=VALUE]` words, upper-casing keys.
fn words(input: &str) -> impl Iterator<Item = (String, Option<&str>)> {
    input
        .split(' ')
        .filter(|w| !w.is_empty())
        .map(|w| match w.split_once('=') {
            Some((k, v)) => (k.to_ascii_uppercase(), Some(v)),
            None => (w.to_ascii_uppercase(), None),
        })
}

fn set_once<T>(slot: &mut Option<T>, value: T, name: &'static str) -> Result<(), ParamError> {
    if slot.is_some() {
        return Err(ParamError::Duplicate(name));
    }
    *slot = Some(value);
    Ok(())
}

/// Parses the parameters after `MAIL FROM:<path>`. `extended` is false after HELO, where
/// no parameter is allowed.
pub fn parse_mail_params(input: &str, extended: bool) -> Result<MailParams, ParamError> {
    let mut p = MailParams::default();
    for (key, value) in words(input) {
        if !extended {
            return Err(ParamError::Unknown(key));
        }
        match (key.as_str(), value) {
            ("SIZE", Some(v)) => {
                let n = v
                    .parse::<u64>()
                    .ok()
                    .filter(|_| v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or(ParamError::BadValue("SIZE"))?;
                set_once(&mut p.size, n, "SIZE")?;
            }
            ("BODY", Some(v)) => {
                let body = match v.to_ascii_uppercase().as_str() {
                    "7BIT" => BodyType::SevenBit,
                    "8BITMIME" => BodyType::EightBitMime,
                    _ => return Err(ParamError::BadValue("BODY")),
                };
                set_once(&mut p.body, body, "BODY")?;
            }
            ("SMTPUTF8", None) => {
                if p.smtputf8 {
                    return Err(ParamError::Duplicate("SMTPUTF8"));
                }
                p.smtputf8 = true;
            }
            ("RET", Some(v)) => {
                let ret = match v.to_ascii_uppercase().as_str() {
                    "FULL" => Ret::Full,
                    "HDRS" => Ret::Headers,
                    _ => return Err(ParamError::BadValue("RET")),
                };
                set_once(&mut p.ret, ret, "RET")?;
            }
            ("ENVID", Some(v)) => {
                let id = xtext_decode(v)
                    .filter(|s| !s.is_empty() && s.len() <= 100)
                    .ok_or(ParamError::BadValue("ENVID"))?;
                set_once(&mut p.envid, id, "ENVID")?;
            }
            // RFC 4954 AUTH=<mailbox>: only meaningful between trusted MTAs; we identify the
            // submitter ourselves, so the value is checked for form and otherwise ignored.
            ("AUTH", Some(v)) => {
                xtext_decode(v).ok_or(ParamError::BadValue("AUTH"))?;
            }
            _ => return Err(ParamError::Unknown(key)),
        }
    }
    Ok(p)
}

/// Parses the parameters after `RCPT TO:<path>`.
pub fn parse_rcpt_params(input: &str, extended: bool) -> Result<RcptParams, ParamError> {
    let mut p = RcptParams::default();
    for (key, value) in words(input) {
        if !extended {
            return Err(ParamError::Unknown(key));
        }
        match (key.as_str(), value) {
            ("NOTIFY", Some(v)) => {
                let notify = parse_notify(v).ok_or(ParamError::BadValue("NOTIFY"))?;
                set_once(&mut p.notify, notify, "NOTIFY")?;
            }
            ("ORCPT", Some(v)) => {
                let (ty, addr) = v.split_once(';').ok_or(ParamError::BadValue("ORCPT"))?;
                let address = xtext_decode(addr)
                    .filter(|a| !a.is_empty() && a.len() <= 500)
                    .ok_or(ParamError::BadValue("ORCPT"))?;
                let addr_type = ty.to_ascii_lowercase();
                if addr_type.is_empty()
                    || !addr_type
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                {
                    return Err(ParamError::BadValue("ORCPT"));
                }
                set_once(&mut p.orcpt, Orcpt { addr_type, address }, "ORCPT")?;
            }
            _ => return Err(ParamError::Unknown(key)),
        }
    }
    Ok(p)
}

fn parse_notify(v: &str) -> Option<Notify> {
    let v = v.to_ascii_uppercase();
    if v == "NEVER" {
        return Some(Notify::NEVER);
    }
    let mut n = Notify::NEVER;
    for word in v.split(',') {
        let flag = match word {
            "SUCCESS" => &mut n.success,
            "FAILURE" => &mut n.failure,
            "DELAY" => &mut n.delay,
            _ => return None,
        };
        if *flag {
            return None;
        }
        *flag = true;
    }
    Some(n)
}

/// Decodes RFC 3461 xtext (`+XX` hex escapes for everything outside `!`..`~`, `+` and `=`).
pub fn xtext_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                let hex = s.get(i + 1..i + 3)?;
                if !hex
                    .bytes()
                    .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c))
                {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            c @ 33..=126 if c != b'=' => {
                out.push(c);
                i += 1;
            }
            // RFC 6533 lets utf-8-addr-xtext carry raw UTF-8.
            c if c >= 0x80 => {
                out.push(c);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// Encodes text as xtext for sending `ENVID` or `ORCPT` onward.
pub fn xtext_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            let _ = write!(out, "+{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_params() {
        let p = parse_mail_params(
            " SIZE=1000 body=8bitmime SMTPUTF8 RET=HDRS ENVID=abc+2Bd AUTH=<>",
            true,
        )
        .unwrap();
        assert_eq!(p.size, Some(1000));
        assert_eq!(p.body, Some(BodyType::EightBitMime));
        assert!(p.smtputf8);
        assert_eq!(p.ret, Some(Ret::Headers));
        assert_eq!(p.envid.as_deref(), Some("abc+d"));
    }

    #[test]
    fn mail_param_errors() {
        assert_eq!(
            parse_mail_params("SIZE=x", true),
            Err(ParamError::BadValue("SIZE"))
        );
        assert_eq!(
            parse_mail_params("SIZE=1 SIZE=2", true),
            Err(ParamError::Duplicate("SIZE"))
        );
        assert_eq!(
            parse_mail_params("BODY=BINARYMIME", true),
            Err(ParamError::BadValue("BODY"))
        );
        assert_eq!(
            parse_mail_params("FOO=1", true),
            Err(ParamError::Unknown("FOO".into()))
        );
        assert_eq!(
            parse_mail_params("SIZE=1", false),
            Err(ParamError::Unknown("SIZE".into()))
        );
        assert_eq!(
            parse_mail_params("ENVID=a=b", true),
            Err(ParamError::BadValue("ENVID"))
        );
        assert_eq!(parse_mail_params("", false), Ok(MailParams::default()));
    }

    #[test]
    fn rcpt_params() {
        let p = parse_rcpt_params("NOTIFY=SUCCESS,DELAY ORCPT=rfc822;a+40b.example", true).unwrap();
        assert_eq!(
            p.notify,
            Some(Notify {
                success: true,
                failure: false,
                delay: true
            })
        );
        let o = p.orcpt.unwrap();
        assert_eq!(
            (o.addr_type.as_str(), o.address.as_str()),
            ("rfc822", "a@b.example")
        );
        assert_eq!(
            parse_rcpt_params("NOTIFY=NEVER", true).unwrap().notify,
            Some(Notify::NEVER)
        );
        assert!(parse_rcpt_params("NOTIFY=NEVER,SUCCESS", true).is_err());
        assert!(parse_rcpt_params("NOTIFY=FAILURE,FAILURE", true).is_err());
        assert!(parse_rcpt_params("ORCPT=nosemicolon", true).is_err());
    }

    #[test]
    fn notify_bits_roundtrip() {
        for bits in 0..8 {
            assert_eq!(Notify::from_bits(bits).bits(), bits);
        }
        assert_eq!(Notify::DEFAULT.to_param(), "FAILURE");
        assert_eq!(Notify::NEVER.to_param(), "NEVER");
    }

    #[test]
    fn xtext_roundtrip() {
        for s in ["plain", "a+b=c", "spaces and\ttabs", "ünï"] {
            assert_eq!(xtext_decode(&xtext_encode(s)).as_deref(), Some(s));
        }
        assert_eq!(xtext_decode("+4"), None);
        assert_eq!(xtext_decode("+zz"), None);
    }
}
