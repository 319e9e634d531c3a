//! Command parsing throughput: the relay's zero-copy parser and line framer against a naive
//! parser that upper-cases and splits into owned strings (how a first attempt often looks).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use optin_relay::smtp::line::{Line, LineReader};
use optin_relay::smtp::parse_command;

/// One submission's commands, as a pipelining client sends them.
const SESSION: &[&str] = &[
    "EHLO app-server-17.shop.example",
    "MAIL FROM:<newsletter-bounces+a1b2c3@shop.example> SIZE=20480 BODY=8BITMIME",
    "RCPT TO:<first.last@example.net> NOTIFY=FAILURE ORCPT=rfc822;first.last@example.net",
    "RCPT TO:<someone.else@example.org>",
    "DATA",
    "RSET",
    "NOOP",
    "QUIT",
];

/// The naive baseline: allocate, upper-case, split, copy.
fn naive_parse(line: &str) -> Option<(String, Vec<String>)> {
    let upper = line.to_uppercase();
    let mut words: Vec<String> = upper.split_whitespace().map(str::to_string).collect();
    if words.is_empty() {
        return None;
    }
    let verb = words.remove(0);
    if verb == "MAIL" || verb == "RCPT" {
        let (_, rest) = line.split_once(':')?;
        let start = rest.find('<')?;
        let end = rest.find('>')?;
        let mut args = vec![rest[start + 1..end].to_string()];
        args.extend(rest[end + 1..].split_whitespace().map(|p| p.to_uppercase()));
        return Some((verb, args));
    }
    Some((verb, words))
}

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("command_parse");
    g.throughput(Throughput::Elements(SESSION.len() as u64));
    g.bench_function("optin_relay", |b| {
        b.iter(|| {
            for line in SESSION {
                black_box(parse_command(black_box(line.as_bytes()), true).ok());
            }
        })
    });
    g.bench_function("naive_baseline", |b| {
        b.iter(|| {
            for line in SESSION {
                black_box(naive_parse(black_box(line)));
            }
        })
    });
    g.finish();
}

fn framing(c: &mut Criterion) {
    let mut wire = Vec::new();
    for _ in 0..100 {
        for line in SESSION {
            wire.extend_from_slice(line.as_bytes());
            wire.extend_from_slice(b"\r\n");
        }
    }
    let mut g = c.benchmark_group("command_framing");
    g.throughput(Throughput::Bytes(wire.len() as u64));
    g.bench_function("line_reader", |b| {
        b.iter(|| {
            let mut r = LineReader::new(2048);
            let mut pos = 0;
            let mut n = 0;
            while pos < wire.len() {
                let (used, line) = r.next(&wire[pos..]);
                pos += used;
                if let Some(Line::Command(l)) = line {
                    n += l.len();
                }
            }
            black_box(n)
        })
    });
    g.bench_function("naive_lines", |b| {
        b.iter(|| {
            let text = String::from_utf8(wire.clone()).unwrap();
            let lines: Vec<String> = text.split("\r\n").map(str::to_string).collect();
            black_box(lines.iter().map(String::len).sum::<usize>())
        })
    });
    g.finish();
}

criterion_group!(benches, parse, framing);
criterion_main!(benches);
