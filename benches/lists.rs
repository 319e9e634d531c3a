//! Consent and suppression lookups at scale, against a `HashSet<u64>` baseline.
//!
//! For each size (default 1 M, 10 M and 100 M entries; `OPTIN_BENCH_SIZES=1000000,…` to
//! choose) a snapshot of random fingerprints is written to a temporary directory and
//! mapped — once loaded into memory as the relay serves it (`snapshot_*`), once straight
//! from the file map (`file_map_*`) — and the same fingerprints go into a `HashSet<u64>`. Measured: a lookup that hits
//! and one that misses (random keys, so the caches do not help either side), the time to
//! open the snapshot, and — printed, not timed — the false-positive rate of the bloom layer
//! next to its design rate. `compile` measures the import path end to end: reading a text
//! file of addresses, normalising, hashing and writing the snapshot; `compact` folds
//! 100 k journal changes (and their stamps) into a snapshot.
//!
//! Run with `cargo bench --bench lists` (100 M needs ~4 GiB of RAM and ~1.3 GB of disk).

use std::collections::HashSet;
use std::hint::black_box;
use std::io::Write;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use optin_relay::config::DEFAULT_BLOOM_BITS_PER_KEY as DEFAULT_BITS_PER_KEY;
use optin_relay::consent::compile::Batch;
use optin_relay::consent::snapshot::{self, Snapshot};
use optin_relay::consent::{CONSENT, Kind, Lists, Op, Origin, Scope, import, key};

const SECRET_ID: u64 = 0x0b5e55ed;
const SAMPLE: usize = 1 << 20;

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn sizes() -> Vec<usize> {
    std::env::var("OPTIN_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000_000, 10_000_000, 100_000_000])
}

fn label(n: usize) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else {
        n.to_string()
    }
}

fn lookups(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(std::env::var("OPTIN_BENCH_DIR").unwrap_or("/var/tmp".into()))
        .expect("temp dir");
    for n in sizes() {
        let mut state = n as u64;
        let mut fps: Vec<u64> = (0..n).map(|_| splitmix(&mut state)).collect();
        // Random members to look up, in random order.
        let members: Vec<u64> = (0..SAMPLE)
            .map(|_| fps[(splitmix(&mut state) % n as u64) as usize])
            .collect();
        let set: HashSet<u64> = fps.iter().copied().collect();
        let misses: Vec<u64> = (0..SAMPLE)
            .map(|_| splitmix(&mut state))
            .filter(|k| !set.contains(k))
            .collect();
        fps.sort_unstable();
        fps.dedup();
        let tags = vec![CONSENT; fps.len()];
        let path = dir.path().join(format!("snapshot-{n}"));
        let started = std::time::Instant::now();
        snapshot::write(&path, SECRET_ID, 0, DEFAULT_BITS_PER_KEY, 1, &fps, &tags).unwrap();
        let write_time = started.elapsed();
        drop(fps);
        drop(tags);
        let snap = Snapshot::open(&path, SECRET_ID).unwrap();
        let started = std::time::Instant::now();
        snap.verify().unwrap();
        let verify_time = started.elapsed();
        let file_snap = snap.clone();
        // As the relay puts a snapshot into service (`[lists] load_into_memory`).
        let started = std::time::Instant::now();
        let snap = snap.load_into_memory();
        let load_time = started.elapsed();

        // The bloom layer's false-positive rate, measured on 10 M non-members.
        let mut probes = 0u64;
        let mut positives = 0u64;
        let mut st = 0xfeed_u64 ^ n as u64;
        while probes < 10_000_000 {
            let k = splitmix(&mut st);
            if set.contains(&k) {
                continue;
            }
            probes += 1;
            positives += u64::from(snap.maybe_contains(k));
        }
        eprintln!(
            "lists/{}: snapshot {} MB (written in {write_time:.2?}, verified in {verify_time:.2?}, loaded into memory in {load_time:.2?}); \
             bloom {:.1} bits/entry, {} probes: false positives {:.2e} measured, {:.2e} design",
            label(n),
            snap.file_size() / 1_000_000,
            snap.bits_per_key(),
            snap.probes(),
            positives as f64 / probes as f64,
            snapshot::design_fp_rate(DEFAULT_BITS_PER_KEY, snap.probes()),
        );

        let mut g = c.benchmark_group("lists");
        g.throughput(Throughput::Elements(1));
        g.measurement_time(Duration::from_secs(5));
        let id = |what: &str| BenchmarkId::new(what, label(n));
        g.bench_function(id("snapshot_hit"), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & (SAMPLE - 1);
                black_box(snap.get(black_box(members[i])))
            })
        });
        g.bench_function(id("file_map_hit"), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & (SAMPLE - 1);
                black_box(file_snap.get(black_box(members[i])))
            })
        });
        g.bench_function(id("file_map_miss"), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % misses.len();
                black_box(file_snap.get(black_box(misses[i])))
            })
        });
        g.bench_function(id("hashset_hit"), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & (SAMPLE - 1);
                black_box(set.contains(&black_box(members[i])))
            })
        });
        g.bench_function(id("snapshot_miss"), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % misses.len();
                black_box(snap.get(black_box(misses[i])))
            })
        });
        g.bench_function(id("hashset_miss"), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % misses.len();
                black_box(set.contains(&black_box(misses[i])))
            })
        });
        g.bench_function(id("snapshot_open"), |b| {
            b.iter(|| black_box(Snapshot::open(&path, SECRET_ID).unwrap()))
        });
        g.finish();
        drop(set);
        drop(snap);
        drop(file_snap);
        std::fs::remove_file(&path).unwrap();
    }
}

/// The per-recipient cost in the relay: normalise, four keyed hashes, four lookups.
fn standing(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let lists = Lists::open(dir.path(), DEFAULT_BITS_PER_KEY).unwrap();
    let addrs: Vec<String> = (0..100_000)
        .map(|i| format!("user{i}@domain{}.example", i % 997))
        .collect();
    let fps = addrs
        .iter()
        .map(|a| {
            lists
                .secret()
                .fingerprint(Kind::Consent, Scope::List("shop", "news"), a)
        })
        .collect();
    lists.compile(vec![Batch { fps, tags: CONSENT }]).unwrap();
    let mut g = c.benchmark_group("lists");
    g.throughput(Throughput::Elements(1));
    g.bench_function("recipient_verdict", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % addrs.len();
            let n = key::normalise(&addrs[i]).unwrap();
            black_box(lists.standing("shop", Some("news"), &n))
        })
    });
    g.finish();
}

/// Import: a text file of 1 M addresses to a new snapshot.
fn compile(c: &mut Criterion) {
    const N: u64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("addresses.txt");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
    for i in 0..N {
        writeln!(out, "First.Last{i}@Domain{}.Example", i % 5000).unwrap();
    }
    out.flush().unwrap();
    drop(out);
    let mut g = c.benchmark_group("lists");
    g.throughput(Throughput::Elements(N));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.bench_function("compile_1M_addresses", |b| {
        b.iter(|| {
            let lists_dir = tempfile::tempdir_in(dir.path()).unwrap();
            let lists = Lists::open(lists_dir.path(), DEFAULT_BITS_PER_KEY).unwrap();
            let mut fps = Vec::with_capacity(N as usize);
            let scope = Scope::List("shop", "news");
            import::read_file(
                &file,
                &mut |item| {
                    if let import::Item::Address { text, .. } = item
                        && let Ok(n) = key::normalise(&text)
                    {
                        fps.push(lists.secret().fingerprint(Kind::Consent, scope, &n));
                    }
                },
                &mut |_, _| {},
            )
            .unwrap();
            let report = lists.compile(vec![Batch { fps, tags: CONSENT }]).unwrap();
            assert_eq!(report.entries, N);
        })
    });
    g.finish();
}

/// Compaction of the journal: 100 k stamped changes (one `record` call) folded into a new
/// snapshot, with the stamps file written beside it.
fn compact(c: &mut Criterion) {
    const N: u64 = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("lists");
    g.throughput(Throughput::Elements(N));
    g.sample_size(10);
    g.bench_function("compact_100k_journal_changes", |b| {
        b.iter_batched(
            || {
                let lists_dir = tempfile::tempdir_in(dir.path()).unwrap();
                let lists = Lists::open(lists_dir.path(), DEFAULT_BITS_PER_KEY).unwrap();
                let addresses: Vec<String> =
                    (0..N).map(|i| format!("user{i}@example.net")).collect();
                lists
                    .record_addresses(
                        Kind::Consent,
                        Scope::List("shop", "news"),
                        Op::Add,
                        CONSENT,
                        Origin::Operator,
                        &addresses,
                    )
                    .unwrap();
                (lists_dir, lists)
            },
            |(lists_dir, lists)| {
                let report = lists.compile(Vec::new()).unwrap();
                assert_eq!(report.entries, N);
                drop(lists);
                lists_dir
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, standing, compile, compact, lookups);
criterion_main!(benches);
