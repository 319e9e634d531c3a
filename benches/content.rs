//! Content-rule throughput with the example policy's starter categories
//! (`config/policy.toml`), on a 10 KiB `multipart/alternative` shop newsletter in
//! quoted-printable (with `€` and `é`, as European mail has): `clean` passes every rule
//! (the whole message is searched), `matching` has one prohibited phrase in the last
//! sentence of its HTML part (found last), `matching-pattern` has a sentence only a
//! pattern finds there (so the exact regex confirms a candidate of the set).
//!
//! - `check`: [`Content::check`](optin_relay::policy::content::Content::check), what the
//!   relay runs at the end of DATA: parse, normalise, one automaton and one regex set.
//! - `parse-only`: mail-parser's parse and the HTML-to-text of the bodies, the floor.
//! - `naive`: the same texts searched rule by rule — a lower-cased `contains` per phrase
//!   (no word boundaries, so it does even less) and one compiled regex per pattern.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mail_parser::{MessageParser, PartType};
use optin_relay::policy::Policy;

const HEADERS: &str = "From: Shop <news@shop.example>\r\n\
    To: Ann Example <ann@example.net>\r\n\
    Subject: Spring sale: 20% off everything until Sunday\r\n\
    Date: Tue, 4 Mar 2025 10:00:00 +0100\r\n\
    Message-ID: <20250304100000.8f2a@shop.example>\r\n\
    MIME-Version: 1.0\r\n\
    Content-Type: multipart/alternative; boundary=\"alt\"\r\n";

const PROSE: &str = "Our spring sale starts today: everything in the garden and kitchen \
    ranges is 20% off until Sunday, and delivery is free from 30 € — café sets, linen \
    shirts and straw hats included. Back in stock: the linen shirt; refer a friend and \
    you both earn $10 credit. ";

/// Quoted-printable in lines of at most 76 characters.
fn quoted_printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 11 / 10);
    let mut column = 0;
    for &byte in text.as_bytes() {
        let piece = if byte.is_ascii_graphic() && byte != b'=' || byte == b' ' {
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
    out
}

/// About `size` octets: a quarter plain text, the rest HTML with a link per paragraph;
/// `last` is the final sentence of the HTML.
fn newsletter(size: usize, last: &str) -> Vec<u8> {
    let mut text = String::new();
    while text.len() < size / 5 {
        text.push_str(PROSE);
        text.push_str("\r\n\r\n");
    }
    let mut html = String::from("<html><body><table>\r\n");
    let mut n = 0;
    while html.len() < size * 3 / 5 {
        html.push_str(&format!(
            "<tr><td style=\"padding:8px\"><a href=\"https://shop.example/p/{n}\">{PROSE}</a></td></tr>\r\n"
        ));
        n += 1;
    }
    html.push_str(&format!("<p>{last}</p></table></body></html>\r\n"));
    format!(
        "{HEADERS}\r\n--alt\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: quoted-printable\r\n\r\n{}\r\n\
         --alt\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Transfer-Encoding: quoted-printable\r\n\r\n{}\r\n--alt--\r\n",
        quoted_printable(&text),
        quoted_printable(&html)
    )
    .into_bytes()
}

/// [`newsletter`] scaled to about `size` octets in all (quoted-printable grows it).
fn sized(size: usize, last: &str) -> Vec<u8> {
    let first = newsletter(size, last).len().max(1);
    newsletter(size * size / first, last)
}

/// The decoded texts the check searches: Subject, plain bodies, HTML as text.
fn texts(raw: &[u8]) -> Vec<String> {
    let Some(m) = MessageParser::default().parse(raw) else {
        return Vec::new();
    };
    let mut out: Vec<String> = m.subject().map(str::to_string).into_iter().collect();
    let mut ids: Vec<u32> = m.text_body.iter().chain(&m.html_body).copied().collect();
    ids.sort_unstable();
    ids.dedup();
    for id in ids {
        match m.parts.get(id as usize).map(|p| &p.body) {
            Some(PartType::Text(t)) => out.push(t.to_string()),
            Some(PartType::Html(h)) => out.push(mail_parser::decoders::html::html_to_text(h)),
            _ => {}
        }
    }
    out
}

/// The rules of the example policy, searched one at a time.
struct Naive {
    phrases: Vec<(String, String)>,
    patterns: Vec<(String, regex::Regex)>,
}

impl Naive {
    fn from_policy_file(text: &str) -> Naive {
        let table: toml::Table = text.parse().expect("the example policy is TOML");
        let mut naive = Naive {
            phrases: Vec::new(),
            patterns: Vec::new(),
        };
        let categories = table["content"]["category"].as_array().expect("categories");
        for c in categories {
            let name = c["name"].as_str().unwrap_or_default().to_string();
            let strings = |key: &str| -> Vec<String> {
                c.get(key)
                    .and_then(|v| v.as_array())
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            for p in strings("phrases") {
                naive.phrases.push((name.clone(), p.to_lowercase()));
            }
            for p in strings("patterns") {
                let re = regex::RegexBuilder::new(&p)
                    .case_insensitive(true)
                    .build()
                    .expect("the example patterns compile");
                naive.patterns.push((name.clone(), re));
            }
        }
        naive
    }

    fn check(&self, raw: &[u8]) -> Option<String> {
        for text in texts(raw) {
            let lower = text.to_lowercase();
            for (name, p) in &self.phrases {
                if lower.contains(p.as_str()) {
                    return Some(name.clone());
                }
            }
            for (name, re) in &self.patterns {
                if re.is_match(&lower) {
                    return Some(name.clone());
                }
            }
        }
        None
    }
}

fn bench_content(c: &mut Criterion) {
    let file = std::fs::read_to_string("config/policy.toml").expect("run from the crate root");
    let policy = Policy::from_toml("config/policy.toml", &file).expect("the example is valid");
    let content = policy.content();
    let naive = Naive::from_policy_file(&file);
    let cases = [
        ("clean", sized(10 * 1024, "See you next week!"), None),
        (
            "matching",
            sized(10 * 1024, "Ask about our replica watches."),
            Some("pirated-goods"),
        ),
        (
            "matching-pattern",
            sized(10 * 1024, "Lose 10 kg in 3 weeks with our plan."),
            Some("supplements"),
        ),
    ];
    for (name, raw, expected) in cases {
        assert_eq!(content.check(&raw).map(|m| m.category).as_deref(), expected);
        assert_eq!(naive.check(&raw).as_deref(), expected);
        assert!(raw.len().abs_diff(10 * 1024) < 512, "{} octets", raw.len());
        let mut group = c.benchmark_group(format!("content/{name}-10KiB"));
        group.throughput(Throughput::Bytes(raw.len() as u64));
        group.bench_function("check", |b| b.iter(|| content.check(black_box(&raw))));
        group.bench_function("parse-only", |b| b.iter(|| texts(black_box(&raw))));
        group.bench_function("naive", |b| b.iter(|| naive.check(black_box(&raw))));
        group.finish();
    }
}

criterion_group!(benches, bench_content);
criterion_main!(benches);
