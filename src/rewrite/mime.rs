//! Transfer encodings and charsets for the message rewrite stages: quoted-printable and
//! base64 in both directions, and the charsets a footer is written in (UTF-8, US-ASCII,
//! ISO-8859-1, windows-1252), with a fallback to UTF-8 for the rest.
//!
//! Decoders never fail or panic: malformed quoted-printable escapes are kept as they are,
//! octets outside the base64 alphabet are skipped (as mail-parser skips them). Encoders
//! keep lines within RFC 2045's 76 characters, CRLF-separated.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use memchr::memchr_iter;

/// RFC 5322 line limit, CRLF excluded.
pub(super) const MAX_LINE: usize = 998;
/// RFC 2045 limit for quoted-printable and base64 lines; 57 octets make one base64 line.
pub(super) const ENCODED_LINE: usize = 76;

/// Line-by-line base64 decoding; padding inside a line is tolerated as mail-parser does.
const B64_LINES: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// How the footer can be written in a part's charset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Charset {
    Utf8,
    /// US-ASCII, or no charset (the RFC 2045 default).
    Ascii,
    Latin1,
    Windows1252,
    /// Any other charset in which ASCII bytes stand for themselves.
    AsciiCompatible,
    /// UTF-16/32/7 and ISO-2022: inserted ASCII bytes would not read as ASCII.
    Stateful,
}

impl Charset {
    pub(super) fn of(label: Option<&str>) -> Charset {
        let Some(label) = label.map(|label| label.trim().to_ascii_lowercase()) else {
            return Charset::Ascii;
        };
        match label.as_str() {
            "utf-8" | "utf8" => Charset::Utf8,
            "us-ascii" | "ascii" | "ansi_x3.4-1968" | "iso646-us" | "" => Charset::Ascii,
            "iso-8859-1" | "iso8859-1" | "iso_8859-1" | "iso_8859-1:1987" | "latin1"
            | "latin-1" | "l1" | "cp819" | "ibm819" | "iso-ir-100" => Charset::Latin1,
            "windows-1252" | "cp1252" | "x-cp1252" => Charset::Windows1252,
            label
                if [
                    "utf-16", "utf-32", "utf-7", "ucs-", "unicode", "iso-2022", "hz-gb",
                ]
                .iter()
                .any(|prefix| label.starts_with(prefix)) =>
            {
                Charset::Stateful
            }
            _ => Charset::AsciiCompatible,
        }
    }

    /// The footer in this charset, or `None` when it cannot be represented.
    pub(super) fn encode(self, footer: &str) -> Option<Cow<'_, [u8]>> {
        match self {
            Charset::Utf8 => Some(Cow::Borrowed(footer.as_bytes())),
            Charset::Stateful => None,
            _ if footer.is_ascii() => Some(Cow::Borrowed(footer.as_bytes())),
            Charset::Latin1 => footer
                .chars()
                .map(|c| u8::try_from(c).ok())
                .collect::<Option<Vec<u8>>>()
                .map(Cow::Owned),
            Charset::Windows1252 => footer
                .chars()
                .map(cp1252_byte)
                .collect::<Option<Vec<u8>>>()
                .map(Cow::Owned),
            Charset::Ascii | Charset::AsciiCompatible => None,
        }
    }

    /// A decoded body in UTF-8, for a part relabelled to UTF-8. `parsed` is mail-parser's
    /// decoding, used for the charsets this module does not decode itself.
    pub(super) fn to_utf8<'b>(self, body: &'b [u8], parsed: &'b str) -> Cow<'b, [u8]> {
        match self {
            Charset::Utf8 | Charset::Ascii if std::str::from_utf8(body).is_ok() => {
                Cow::Borrowed(body)
            }
            // Undeclared 8-bit text is windows-1252 far more often than anything else.
            Charset::Ascii | Charset::Windows1252 => Cow::Owned(
                body.iter()
                    .map(|&b| cp1252_char(b))
                    .collect::<String>()
                    .into(),
            ),
            Charset::Latin1 => Cow::Owned(
                body.iter()
                    .map(|&b| char::from(b))
                    .collect::<String>()
                    .into(),
            ),
            _ => Cow::Borrowed(parsed.as_bytes()),
        }
    }
}

/// windows-1252 0x80..=0x9F; the five unassigned octets map to the C1 controls.
const CP1252_HIGH: [char; 32] = [
    '\u{20AC}', '\u{81}', '\u{201A}', '\u{192}', '\u{201E}', '\u{2026}', '\u{2020}', '\u{2021}',
    '\u{2C6}', '\u{2030}', '\u{160}', '\u{2039}', '\u{152}', '\u{8D}', '\u{17D}', '\u{8F}',
    '\u{90}', '\u{2018}', '\u{2019}', '\u{201C}', '\u{201D}', '\u{2022}', '\u{2013}', '\u{2014}',
    '\u{2DC}', '\u{2122}', '\u{161}', '\u{203A}', '\u{153}', '\u{9D}', '\u{17E}', '\u{178}',
];

fn cp1252_char(b: u8) -> char {
    match b {
        0x80..=0x9F => CP1252_HIGH[usize::from(b - 0x80)],
        _ => char::from(b),
    }
}

fn cp1252_byte(c: char) -> Option<u8> {
    match u8::try_from(c) {
        Ok(b) if !(0x80..=0x9F).contains(&b) => Some(b),
        _ => (0x80..=0x9F)
            .zip(CP1252_HIGH)
            .find_map(|(b, high)| (high == c).then_some(b)),
    }
}

/// The longest line, line break excluded.
pub(super) fn longest_line(bytes: &[u8]) -> usize {
    let (mut longest, mut start) = (0, 0);
    for nl in memchr_iter(b'\n', bytes) {
        let cr = usize::from(nl > start && bytes[nl - 1] == b'\r');
        longest = longest.max(nl - start - cr);
        start = nl + 1;
    }
    longest.max(bytes.len() - start)
}

/// Quoted-printable decoding (RFC 2045 6.7): soft line breaks joined, trailing white space
/// dropped, malformed escapes kept as they are.
pub(super) fn qp_decode(encoded: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded.len());
    let mut lines = encoded.split(|&c| c == b'\n').peekable();
    while let Some(line) = lines.next() {
        let hard_break = lines.peek().is_some();
        let line = line.trim_ascii_end();
        let (line, soft) = match line.strip_suffix(b"=") {
            Some(line) => (line, true),
            None => (line, false),
        };
        let mut i = 0;
        while let Some(eq) = memchr::memchr(b'=', &line[i..]) {
            out.extend_from_slice(&line[i..i + eq]);
            i += eq;
            let hex = |at: usize| line.get(at).and_then(|&c| char::from(c).to_digit(16));
            match hex(i + 1)
                .zip(hex(i + 2))
                .and_then(|(hi, lo)| u8::try_from(hi << 4 | lo).ok())
            {
                Some(byte) => {
                    out.push(byte);
                    i += 3;
                }
                None => {
                    out.push(b'=');
                    i += 1;
                }
            }
        }
        out.extend_from_slice(&line[i..]);
        if hard_break && !soft {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

/// Whether mail-parser (which reads the message at the receiving end of our tests and in
/// many programs) fails on this quoted-printable body: an `=` while an escape is still
/// open, as in `==` or `=A=`. Mirrors its state machine, line breaks included.
pub(super) fn qp_undecodable(encoded: &[u8]) -> bool {
    #[derive(PartialEq)]
    enum State {
        Text,
        Eq,
        Hex1,
    }
    let mut state = State::Text;
    for &c in encoded {
        state = match (c, state) {
            (b'=', State::Text) => State::Eq,
            (b'=', _) => return true,
            (b'\n', State::Eq) => State::Text,
            (b'\n' | b'\r', state) => state,
            (c, State::Eq) if c.is_ascii_hexdigit() => State::Hex1,
            (c, State::Eq) if c.is_ascii_whitespace() => State::Eq,
            _ => State::Text,
        };
    }
    false
}

pub(super) fn qp_encode(decoded: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(decoded.len() * 11 / 10 + 16);
    qp_encode_into(decoded, &mut out);
    out
}

/// Quoted-printable encoding in lines of at most 76 characters; CRLF pairs stay hard line
/// breaks, lone CR or LF are escaped. A `-` that would start a line is escaped too: line
/// breaks land elsewhere than in the original, and a line starting with `--` could be read
/// as a multipart delimiter (RFC 2046 §5.1.1) — encoded lines never start with one.
pub(super) fn qp_encode_into(decoded: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut column = 0;
    let mut i = 0;
    while let Some(&c) = decoded.get(i) {
        let next = decoded.get(i + 1).copied();
        if c == b'\r' && next == Some(b'\n') {
            out.extend_from_slice(b"\r\n");
            column = 0;
            i += 2;
            continue;
        }
        let line_end = next.is_none() || next == Some(b'\r') && decoded.get(i + 2) == Some(&b'\n');
        let mut literal = match c {
            b' ' | b'\t' => !line_end,
            b'=' => false,
            33..=126 => true,
            _ => false,
        };
        let width = |literal: bool| if literal { 1 } else { 3 };
        if column + width(literal) > ENCODED_LINE - 1 {
            out.extend_from_slice(b"=\r\n");
            column = 0;
        }
        if column == 0 && c == b'-' {
            literal = false;
        }
        let width = width(literal);
        if literal {
            out.push(c);
        } else {
            out.extend_from_slice(&[b'=', HEX[usize::from(c >> 4)], HEX[usize::from(c & 15)]]);
        }
        column += width;
        i += 1;
    }
}

/// Base64 decoding that skips white space and anything outside the alphabet, as
/// mail-parser does; whole lines go through the fast decoder.
pub(super) fn b64_decode(encoded: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded.len() / 4 * 3);
    let mut lines = encoded
        .split(|&c| c == b'\n')
        .map(<[u8]>::trim_ascii)
        .filter(|l| !l.is_empty())
        .peekable();
    while let Some(line) = lines.next() {
        let last = lines.peek().is_none();
        if (!last && line.len() % 4 != 0) || B64_LINES.decode_vec(line, &mut out).is_err() {
            return b64_decode_slow(encoded, out.capacity());
        }
    }
    out
}

fn b64_decode_slow(encoded: &[u8], capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity);
    let (mut acc, mut n) = (0u32, 0u8);
    for &c in encoded {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => 64,
            _ => continue,
        };
        if value < 64 {
            acc = acc << 6 | u32::from(value);
            n += 1;
        }
        if n == 4 || (value == 64 && n > 0) {
            let bytes = (acc << (6 * (4 - u32::from(n)))).to_be_bytes();
            out.extend_from_slice(&bytes[1..usize::from(n)]);
            (acc, n) = (0, 0);
        }
    }
    if n > 1 {
        let bytes = (acc << (6 * (4 - u32::from(n)))).to_be_bytes();
        out.extend_from_slice(&bytes[1..usize::from(n)]);
    }
    out
}

/// Base64 in lines of 76 characters, CRLF-separated; ends with CRLF when the original did.
pub(super) fn b64_encode(decoded: &[u8], trailing_break: bool) -> Vec<u8> {
    let lines = decoded.len().div_ceil(57);
    let mut out = Vec::with_capacity(lines * (ENCODED_LINE + 2));
    for (n, chunk) in decoded.chunks(57).enumerate() {
        if n > 0 {
            out.extend_from_slice(b"\r\n");
        }
        let start = out.len();
        out.resize(start + ENCODED_LINE, 0);
        let written = STANDARD.encode_slice(chunk, &mut out[start..]).unwrap_or(0);
        out.truncate(start + written);
    }
    if trailing_break && !out.is_empty() {
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn quoted_printable_decoding_follows_rfc_2045() {
        let decoded = qp_decode(b"caf=C3=A9 =\r\nau lait  \r\n=3d=XY=\r\n=0D=0A");
        assert_eq!(decoded, "café au lait\r\n==XY\r\n".as_bytes());
    }

    #[test]
    fn quoted_printable_encoding_keeps_short_lines_and_trailing_space() {
        let encoded = qp_encode("é".repeat(60).as_bytes());
        assert!(longest_line(&encoded) <= ENCODED_LINE);
        assert_eq!(qp_encode(b"a \r\nb\t"), b"a=20\r\nb=09");
        assert_eq!(qp_encode(b"x=1\ry\n"), b"x=3D1=0Dy=0A");
        assert_eq!(qp_encode(b"--b\r\n-x--"), b"=2D-b\r\n=2Dx--");
        let wrapped = qp_encode(format!("{}--b", "x".repeat(75)).as_bytes());
        assert_eq!(
            wrapped,
            format!("{}=\r\n=2D-b", "x".repeat(75)).into_bytes()
        );
    }

    #[test]
    fn undecodable_quoted_printable_is_what_mail_parser_refuses() {
        for bad in [&b"a==b"[..], b"=A=", b"= \t=", b"=A\r\n=41"] {
            assert!(qp_undecodable(bad), "{bad:?}");
        }
        for good in [
            &b"caf=C3=A9 =\r\nau lait"[..],
            b"=XY=41",
            b"=\r\n=41",
            b"a=\n=\n",
        ] {
            assert!(!qp_undecodable(good), "{good:?}");
        }
        for body in [&b"a==b"[..], b"=A=", b"=XY=41", b"=\r\n=41"] {
            let message = [
                &b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"[..],
                body,
            ]
            .concat();
            let parsed = mail_parser::MessageParser::default()
                .parse(&message)
                .unwrap();
            assert_eq!(
                parsed.parts[0].is_encoding_problem,
                qp_undecodable(body),
                "{body:?}"
            );
        }
    }

    #[test]
    fn base64_decoding_tolerates_what_mail_parser_tolerates() {
        assert_eq!(b64_decode(b"Y2Fm\r\nw6k=\r\n"), "café".as_bytes());
        assert_eq!(b64_decode(b"Y2F\r\nmw6k\r\n"), "café".as_bytes());
        assert_eq!(b64_decode(b"Y2Fm*w6k"), "café".as_bytes());
        let encoded = b64_encode(&[7; 200], true);
        assert!(encoded.ends_with(b"\r\n") && longest_line(&encoded) == ENCODED_LINE);
        assert_eq!(b64_decode(&encoded), [7; 200]);
    }

    #[test]
    fn footer_fits_the_charsets_it_can() {
        let footer = "inscrit… — Désabonnement";
        assert_eq!(Charset::of(None), Charset::Ascii);
        assert_eq!(Charset::of(Some(" ISO-8859-1 ")), Charset::Latin1);
        assert_eq!(Charset::of(Some("UTF-16LE")), Charset::Stateful);
        assert_eq!(Charset::of(Some("koi8-r")), Charset::AsciiCompatible);
        assert_eq!(
            Charset::Utf8.encode(footer).as_deref(),
            Some(footer.as_bytes())
        );
        assert_eq!(
            Charset::Latin1.encode("Désabonnement").as_deref(),
            Some(&b"D\xE9sabonnement"[..])
        );
        assert_eq!(Charset::Latin1.encode(footer), None);
        assert_eq!(
            Charset::Windows1252.encode(footer).as_deref(),
            Some(&b"inscrit\x85 \x97 D\xE9sabonnement"[..])
        );
        assert_eq!(Charset::Ascii.encode(footer), None);
        assert_eq!(Charset::Stateful.encode("ascii"), None);
        assert_eq!(
            Charset::Windows1252.to_utf8(b"\x93caf\xE9\x94", ""),
            "“café”".as_bytes()
        );
        assert_eq!(
            Charset::Ascii.to_utf8("déjà".as_bytes(), ""),
            "déjà".as_bytes()
        );
        assert_eq!(
            Charset::AsciiCompatible.to_utf8(b"\xE9", "é"),
            "é".as_bytes()
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn codecs_round_trip(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let encoded = qp_encode(&bytes);
            prop_assert!(longest_line(&encoded) <= ENCODED_LINE);
            prop_assert!(!encoded.starts_with(b"-") && memchr::memmem::find(&encoded, b"\n-").is_none());
            prop_assert_eq!(qp_decode(&encoded), bytes.clone());
            prop_assert_eq!(b64_decode(&b64_encode(&bytes, false)), bytes);
        }
    }
}
