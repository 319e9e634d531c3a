//! DATA reception and transmission throughput (octets per second): the relay's streaming
//! receiver (span copies, dot-unstuffing, bare CR/LF and line-length checks) and its
//! dot-stuffing encoder, against naive line-at-a-time versions that allocate per line.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use optin_relay::smtp::data::{BdatReceiver, DataReceiver, DataStatus};
use optin_relay::smtp::encode::dot_stuff;

/// A message of about `size` octets: headers, then 76-column body lines, some starting
/// with a dot.
fn message(size: usize) -> Vec<u8> {
    let mut m = b"From: Shop <news@shop.example>\r\nTo: someone@example.net\r\nSubject: This week's offers\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n".to_vec();
    let mut i = 0;
    while m.len() < size {
        if i % 40 == 0 {
            m.extend_from_slice(
                b".a line that starts with a dot and must be stuffed on the wire..........\r\n",
            );
        } else {
            m.extend_from_slice(
                b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod t\r\n",
            );
        }
        i += 1;
    }
    m
}

/// The naive receiver: split into owned lines, check and unstuff each, join.
fn naive_receive(wire: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in wire.split(|&b| b == b'\n') {
        let line = line.to_vec();
        let line = line.strip_suffix(b"\r").map(<[u8]>::to_vec).unwrap_or(line);
        if line == b"." {
            break;
        }
        let content = if line.first() == Some(&b'.') {
            line[1..].to_vec()
        } else {
            line
        };
        assert!(!content.contains(&b'\r'));
        out.extend_from_slice(&content);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Feeds the wire form in 64 KiB reads, as the session does.
fn receive(wire: &[u8]) -> Vec<u8> {
    let mut rx = DataReceiver::new(64 << 20, 998);
    let mut out = Vec::with_capacity(wire.len());
    let mut buf: Vec<u8> = Vec::with_capacity(128 << 10);
    for chunk in wire.chunks(64 << 10) {
        buf.extend_from_slice(chunk);
        let (used, status) = rx.feed(&buf, &mut out);
        buf.drain(..used);
        if status == DataStatus::Done {
            break;
        }
    }
    out
}

fn data(c: &mut Criterion) {
    let mut g = c.benchmark_group("data_receive");
    for size in [2 << 10, 100 << 10, 4 << 20] {
        let msg = message(size);
        let mut wire = Vec::new();
        dot_stuff(&msg, &mut wire).unwrap();
        assert_eq!(receive(&wire), msg);
        assert_eq!(naive_receive(&wire), msg);
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_with_input(BenchmarkId::new("optin_relay", size), &wire, |b, w| {
            b.iter(|| black_box(receive(black_box(w))))
        });
        g.bench_with_input(BenchmarkId::new("naive_baseline", size), &wire, |b, w| {
            b.iter(|| black_box(naive_receive(black_box(w))))
        });
        g.bench_with_input(BenchmarkId::new("bdat", size), &msg, |b, m| {
            b.iter(|| {
                let mut rx = BdatReceiver::new(64 << 20, 998);
                let mut out = Vec::with_capacity(m.len());
                for chunk in m.chunks(64 << 10) {
                    rx.feed(chunk, &mut out);
                }
                black_box(rx.finish(&mut out))
            })
        });
    }
    g.finish();
}

fn naive_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let line = line.to_vec();
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(&line);
        out.push(b'\n');
    }
    out.extend_from_slice(b".\r\n");
    out
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("data_send");
    for size in [2 << 10, 100 << 10] {
        let msg = message(size);
        g.throughput(Throughput::Bytes(msg.len() as u64));
        g.bench_with_input(BenchmarkId::new("dot_stuff", size), &msg, |b, m| {
            b.iter(|| {
                let mut out = Vec::new();
                dot_stuff(black_box(m), &mut out).unwrap();
                black_box(out)
            })
        });
        g.bench_with_input(BenchmarkId::new("naive_baseline", size), &msg, |b, m| {
            b.iter(|| black_box(naive_stuff(black_box(m))))
        });
    }
    g.finish();
}

criterion_group!(benches, data, encode);
criterion_main!(benches);
