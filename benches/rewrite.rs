//! Consent footer throughput: the byte splice (`add_footer`) against a naive rewrite that
//! parses the message with mail-parser and rebuilds all of it with mail-builder, on
//! messages generated here (a 2 KiB plain text, a 10 KiB and a 50 KiB
//! multipart/alternative in quoted-printable, a 1 MiB message with a base64 attachment).
//! `plan-only` is the structure read `add_footer` starts with (`footer::Plan::new`: header
//! sections, multipart delimiters, the chosen bodies' charsets), so the difference is what
//! the splice itself costs; `mail-parser` is mail-parser's full parse of the same message
//! (what the splice used before it read the structure itself), for comparison.
//! `footer/alternative-100k-parts` is a hostile 4 MB `multipart/alternative` of 100 000
//! one-line parts: linear work, 8 footers.
//!
//! `rewrite/per-recipient` is what the relay does for each recipient of a marketing
//! message once the message is parsed (once, for all its recipients): seal the token,
//! render the statement, splice the footer, rewrite the header section — everything but
//! the signature. `dkim/*` is the signature of a 10 KiB message with each kind of key.

use std::borrow::Cow;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mail_builder::MessageBuilder;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::MimePart;
use mail_parser::{HeaderName, Message, MessageParser, MimeHeaders, PartType};
use optin_relay::rewrite::footer::{Footer, Plan, add_footer};

const FOOTER: Footer<'static> = Footer {
    text: "Vous recevez ce message car vous êtes inscrit à la lettre de Shop.\n\
           Désabonnement : https://u.example/u/5f3c9a0e7b1d4e2f",
    html: "<p style=\"font-size:12px;color:#666\">Vous recevez ce message car vous êtes \
           inscrit à la lettre de Shop. \
           <a href=\"https://u.example/u/5f3c9a0e7b1d4e2f\">Désabonnement</a></p>",
};

const HEADERS: &str = "Return-Path: <bounces+8f2a@shop.example>\r\n\
    From: Shop <news@shop.example>\r\n\
    To: Ann Example <ann@example.net>\r\n\
    Subject: Spring sale: 20% off everything until Sunday\r\n\
    Date: Tue, 4 Mar 2025 10:00:00 +0100\r\n\
    Message-ID: <20250304100000.8f2a@shop.example>\r\n\
    List-Unsubscribe: <https://u.example/u/5f3c9a0e7b1d4e2f>\r\n\
    List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\
    MIME-Version: 1.0\r\n";

const PROSE: &str = "Our spring sale starts today: everything in the garden and kitchen \
    ranges is 20% off until Sunday, and delivery is free from 30 € — café sets, linen \
    shirts and straw hats included. ";

/// Quoted-printable in lines of at most 76 characters, as a sending platform writes it.
fn quoted_printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 11 / 10);
    for line in text.split("\r\n") {
        let mut column = 0;
        for &byte in line.as_bytes() {
            let literal = byte.is_ascii_graphic() && byte != b'=' || byte == b' ';
            let piece = if literal {
                (byte as char).to_string()
            } else {
                format!("={byte:02X}")
            };
            if column + piece.len() > 75 {
                out.push_str("=\r\n");
                column = 0;
            }
            column += piece.len();
            out.push_str(&piece);
        }
        out.push_str("\r\n");
    }
    out.truncate(out.len() - 2);
    out
}

fn base64_lines(bytes: &[u8]) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    let lines: Vec<&str> = encoded
        .as_bytes()
        .chunks(76)
        .map(|l| std::str::from_utf8(l).unwrap_or(""))
        .collect();
    lines.join("\r\n")
}

fn paragraphs(size: usize, wrap: impl Fn(usize, &str) -> String) -> String {
    let mut out = String::new();
    let mut n = 0;
    while out.len() < size {
        out.push_str(&wrap(n, PROSE));
        n += 1;
    }
    out
}

fn plain_text(size: usize) -> Vec<u8> {
    let body = paragraphs(size, |_, p| format!("{p}\r\n\r\n"));
    format!("{HEADERS}Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{body}").into_bytes()
}

fn alternative(size: usize, boundary: &str) -> String {
    let text = paragraphs(size / 4, |_, p| format!("{p}\r\n\r\n"));
    let html = paragraphs(size * 3 / 4, |n, p| {
        format!(
            "<tr><td style=\"padding:8px;font-family:Arial\"><a href=\"https://shop.example/p/{n}\">{p}</a></td></tr>\r\n"
        )
    });
    format!(
        "Content-Type: multipart/alternative; boundary=\"{boundary}\"\r\n\r\n\
         --{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n{}\r\n\
         --{boundary}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n{}\r\n\
         --{boundary}--\r\n",
        quoted_printable(&text),
        quoted_printable(&format!(
            "<html><body><table>\r\n{html}</table></body></html>\r\n"
        )),
    )
}

fn alternative_message(size: usize) -> Vec<u8> {
    format!("{HEADERS}{}", alternative(size, "alt-5f3c9a0e")).into_bytes()
}

fn with_attachment(size: usize) -> Vec<u8> {
    let pdf: Vec<u8> = (0..size * 3 / 4).map(|i| (i * 7919 % 251) as u8).collect();
    format!(
        "{HEADERS}Content-Type: multipart/mixed; boundary=\"mix-5f3c9a0e\"\r\n\r\n\
         --mix-5f3c9a0e\r\n{}\r\n\
         --mix-5f3c9a0e\r\nContent-Type: application/pdf; name=\"catalogue.pdf\"\r\n\
         Content-Disposition: attachment; filename=\"catalogue.pdf\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}\r\n\
         --mix-5f3c9a0e--\r\n",
        alternative(8 * 1024, "alt-5f3c9a0e"),
        base64_lines(&pdf),
    )
    .into_bytes()
}

/// A message of about `size` octets, headers and encoding included.
fn sized(size: usize, build: fn(usize) -> Vec<u8>) -> Vec<u8> {
    let first = build(size).len().max(1);
    build(size * size / first)
}

/// The naive rewrite: parse, then rebuild the whole message with the footer added to
/// the text and HTML bodies.
fn naive(raw: &[u8], footer: &Footer<'_>) -> Vec<u8> {
    let Some(message) = MessageParser::default().parse(raw) else {
        return Vec::new();
    };
    let mut builder = MessageBuilder::new();
    for header in message.headers() {
        if header.name.is_mime_header() {
            continue;
        }
        let value = raw
            .get(header.offset_start as usize..header.offset_end as usize)
            .unwrap_or_default();
        let value = String::from_utf8_lossy(value).trim().to_string();
        builder = builder.header(header.name.as_str().to_string(), Raw::new(value));
    }
    builder
        .body(rebuild(&message, 0, footer))
        .write_to_vec()
        .unwrap_or_default()
}

fn rebuild<'x>(message: &'x Message<'x>, id: u32, footer: &Footer<'_>) -> MimePart<'x> {
    let Some(part) = message.parts.get(id as usize) else {
        return MimePart::new("text/plain", "");
    };
    let content_type = part.content_type().map_or("text/plain".to_string(), |ct| {
        format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or("octet-stream"))
    });
    let is_body = message.text_body.contains(&id) || message.html_body.contains(&id);
    match &part.body {
        PartType::Multipart(children) => MimePart::new(
            content_type,
            children
                .iter()
                .map(|&child| rebuild(message, child, footer))
                .collect::<Vec<_>>(),
        ),
        PartType::Text(text) if is_body => {
            MimePart::new(content_type, format!("{text}\r\n\r\n{}\r\n", footer.text))
        }
        PartType::Html(html) if is_body => {
            let at = html
                .to_ascii_lowercase()
                .rfind("</body>")
                .unwrap_or(html.len());
            MimePart::new(
                content_type,
                format!("{}{}\r\n{}", &html[..at], footer.html, &html[at..]),
            )
        }
        PartType::Text(text) | PartType::Html(text) => {
            MimePart::new(content_type, Cow::Borrowed(text.as_ref()))
        }
        PartType::Binary(bytes) | PartType::InlineBinary(bytes) => {
            let name = part.attachment_name().unwrap_or("attachment").to_string();
            MimePart::new(content_type, bytes.as_ref()).attachment(name)
        }
        PartType::Message(_) => {
            let body = message
                .raw_message
                .get(part.offset_body as usize..part.offset_end as usize);
            MimePart::new(content_type, body.unwrap_or_default())
        }
    }
}

fn bench_rewrite(c: &mut Criterion) {
    let inputs = [
        ("plain-2KiB", sized(2 * 1024, plain_text)),
        ("alternative-10KiB", sized(10 * 1024, alternative_message)),
        ("alternative-50KiB", sized(50 * 1024, alternative_message)),
        ("attachment-1MiB", sized(1024 * 1024, with_attachment)),
    ];
    let mime_only = MessageParser::new()
        .header_content_type(HeaderName::ContentType)
        .header_content_type(HeaderName::ContentDisposition)
        .header_raw(HeaderName::ContentTransferEncoding)
        .default_header_ignore();
    let hostile = many_alternatives(100_000);
    for (name, input) in &inputs {
        assert!(
            add_footer(input, &FOOTER).is_ok(),
            "{name}: the splice refuses its input"
        );
        assert!(
            !naive(input, &FOOTER).is_empty(),
            "{name}: the rebuild fails"
        );
        let mut group = c.benchmark_group(format!("footer/{name}"));
        eprintln!("{name}: {} octets", input.len());
        group.throughput(Throughput::Bytes(input.len() as u64));
        group.bench_function("splice", |b| {
            b.iter(|| add_footer(black_box(input), &FOOTER))
        });
        group.bench_function("naive-rebuild", |b| {
            b.iter(|| naive(black_box(input), &FOOTER))
        });
        group.bench_function("plan-only", |b| {
            b.iter(|| Plan::new(black_box(input)).map(|p| p.bodies()))
        });
        group.bench_function("mail-parser", |b| {
            b.iter(|| mime_only.parse(black_box(input)).map(|m| m.parts.len()))
        });
        group.finish();
    }
    let mut group = c.benchmark_group("footer/alternative-100k-parts");
    eprintln!("alternative-100k-parts: {} octets", hostile.len());
    group.throughput(Throughput::Bytes(hostile.len() as u64));
    group.sample_size(10);
    group.bench_function("splice", |b| {
        b.iter(|| add_footer(black_box(&hostile), &FOOTER).map(|out| out.len()))
    });
    group.finish();
}

/// A `multipart/alternative` of `n` one-line plain and HTML parts.
fn many_alternatives(n: usize) -> Vec<u8> {
    let mut m = format!("{HEADERS}Content-Type: multipart/alternative; boundary=\"alt\"\r\n\r\n");
    for i in 0..n {
        let kind = if i % 2 == 0 { "plain" } else { "html" };
        m.push_str(&format!(
            "--alt\r\nContent-Type: text/{kind}\r\n\r\nalt {i}\r\n"
        ));
    }
    m.push_str("--alt--\r\n");
    m.into_bytes()
}

fn bench_per_recipient(c: &mut Criterion) {
    use std::sync::Arc;

    use optin_relay::envelope::Stream;
    use optin_relay::envelope::{Envelope, Recipient};
    use optin_relay::policy::Policy;
    use optin_relay::rewrite::Rewriter;
    use optin_relay::rewrite::token::TokenKeys;
    use optin_relay::smtp::params::BodyType;

    let policy = Policy::from_toml(
        "bench",
        "[accounts.shop]\ndescription = \"Shop\"\nstreams = [\"marketing\"]\n\
         from_domains = [\"shop.example\"]\n\
         contact_address = \"hello@shop.example\"\npostal_address = \"1 Main St, Springfield\"\n\
         [accounts.shop.lists.news]\nname = \"Shop news\"\nconsent_source = \"shop.example\"\n\
         consent_statement = \"Vous recevez {list} car vous êtes inscrit sur {source}. {unsubscribe}\"\n",
    )
    .unwrap();
    let config = optin_relay::config::Config::from_toml(
        "bench",
        "[unsubscribe]\npublic_url = \"https://u.example\"\nmail_domain = \"relay.example\"\n",
    )
    .unwrap();
    let rewriter = Rewriter::new(
        Arc::new(arc_swap::ArcSwap::from_pointee(policy)),
        Arc::new(TokenKeys::from_keys(&[(1, [7; 32])])),
        &config.unsubscribe,
    );
    let recipients: Vec<Recipient> = (0..100)
        .map(|i| Recipient {
            address: format!("reader{i}@example.net"),
            notify: None,
            orcpt: None,
            done: false,
        })
        .collect();
    let rcpts: Vec<&Recipient> = recipients.iter().collect();
    let env = Envelope {
        id: optin_relay::envelope::QueueId(1),
        received_at: 0,
        account: "shop".into(),
        sender: Some("bounce@shop.example".into()),
        envid: None,
        ret: None,
        body_type: BodyType::EightBitMime,
        smtputf8: false,
        eight_bit_content: true,
        generated_dsn: false,
        stream: Stream::Marketing,
        list: Some("news".into()),
        campaign: None,
        recipients: recipients.clone(),
    };
    for (name, input) in [
        ("plain-2KiB", sized(2 * 1024, plain_text)),
        ("alternative-10KiB", sized(10 * 1024, alternative_message)),
        ("alternative-50KiB", sized(50 * 1024, alternative_message)),
    ] {
        assert!(
            rewriter
                .prepare_each(&env, &rcpts, &input)
                .iter()
                .all(Result::is_ok)
        );
        let mut group = c.benchmark_group(format!("rewrite/{name}"));
        group.throughput(Throughput::Elements(rcpts.len() as u64));
        group.bench_function("per-recipient", |b| {
            b.iter(|| rewriter.prepare_each(&env, black_box(&rcpts), black_box(&input)))
        });
        group.finish();
    }
}

fn bench_dkim(c: &mut Criterion) {
    use optin_relay::dkim::DkimKey;
    let input = sized(10 * 1024, alternative_message);
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dkim");
    let mut group = c.benchmark_group("dkim/alternative-10KiB");
    for (name, file) in [
        ("rsa-2048", "rsa2048-pkcs1.pem"),
        ("ed25519", "ed25519-pkcs8.pem"),
    ] {
        let key =
            DkimKey::from_pem_file("shop.example", "s", format!("{dir}/{file}").as_ref()).unwrap();
        group.bench_function(name, |b| b.iter(|| key.sign(black_box(&input)).unwrap()));
    }
    group.finish();
}

criterion_group!(benches, bench_rewrite, bench_per_recipient, bench_dkim);
criterion_main!(benches);
