//! Tests of the lists engine: recording, following other processes, compaction order, refused snapshots, swaps under concurrent lookups.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::compile::Batch;
use super::*;

fn change(op: Op, fp: u64, tags: u8) -> Change {
    Change {
        op,
        fp,
        tags,
        origin: Origin::Operator,
        time_ms: 0,
    }
}

fn consent_fp(l: &Lists, addr: &str) -> u64 {
    l.secret().fingerprint(
        Kind::Consent,
        Scope::List("shop", "news"),
        &key::normalise(addr).unwrap(),
    )
}

#[test]
fn recorded_changes_are_in_force_at_once_and_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let lists = Lists::open(dir.path(), 24).unwrap();
    let fp = consent_fp(&lists, "a@example.com");
    assert_eq!(lists.get(fp), 0);
    lists.record(&[change(Op::Add, fp, CONSENT)]).unwrap();
    assert_eq!(lists.get(fp), CONSENT);
    let s = lists.standing("shop", Some("news"), "a@example.com");
    assert!(s.consent);
    assert_eq!(
        s,
        Standing {
            consent: true,
            ..Standing::default()
        }
    );
    drop(lists);
    let lists = Lists::open(dir.path(), 24).unwrap();
    assert_eq!(lists.get(fp), CONSENT);
    // Revoked.
    lists.record(&[change(Op::Remove, fp, CONSENT)]).unwrap();
    assert_eq!(lists.get(fp), 0);
}

#[test]
fn another_process_changes_are_followed_by_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Lists::open(dir.path(), 24).unwrap();
    let cli = Lists::open(dir.path(), 24).unwrap();
    let supp = relay
        .secret()
        .fingerprint(Kind::Suppression, Scope::Global, "x@example.com");
    cli.record(&[change(Op::Add, supp, Reason::Bounce.bit())])
        .unwrap();
    assert_eq!(relay.get(supp), 0, "not yet seen");
    assert!(!relay.refresh().unwrap());
    assert_eq!(relay.get(supp), Reason::Bounce.bit());
    // A compile in the other process is swapped in at the next refresh.
    let fp = consent_fp(&cli, "a@example.com");
    cli.compile(vec![Batch {
        fps: vec![fp],
        tags: CONSENT,
    }])
    .unwrap();
    assert!(relay.refresh().unwrap());
    assert_eq!(relay.get(fp), CONSENT);
    assert_eq!(relay.get(supp), Reason::Bounce.bit());
    assert_eq!(relay.stats().delta_entries, 0, "the journal was folded");
    assert_eq!(journal::list(dir.path()).unwrap().len(), 1);
}

#[test]
fn compile_folds_journal_in_order_and_imports_last() {
    let dir = tempfile::tempdir().unwrap();
    let lists = Lists::open(dir.path(), 24).unwrap();
    let (a, b, c) = (
        consent_fp(&lists, "a@example.com"),
        consent_fp(&lists, "b@example.com"),
        consent_fp(&lists, "c@example.com"),
    );
    lists
        .compile(vec![Batch {
            fps: vec![a, b],
            tags: CONSENT,
        }])
        .unwrap();
    lists
        .record(&[
            change(Op::Remove, a, CONSENT),
            change(Op::Add, c, CONSENT),
            change(Op::Remove, c, CONSENT),
            change(Op::Remove, b, CONSENT),
        ])
        .unwrap();
    assert_eq!((lists.get(a), lists.get(b), lists.get(c)), (0, 0, 0));
    // b is imported again after its revocation: the import is newer and wins.
    let report = lists
        .compile(vec![Batch {
            fps: vec![b, b],
            tags: CONSENT,
        }])
        .unwrap();
    assert_eq!(report.entries, 1);
    assert_eq!(report.journal_changes, 4);
    assert_eq!(report.imported_new, 1);
    assert_eq!((lists.get(a), lists.get(b), lists.get(c)), (0, CONSENT, 0));
    let reopened = Lists::open(dir.path(), 24).unwrap();
    assert_eq!(reopened.get(b), CONSENT);
    assert_eq!(reopened.snapshot().unwrap().len(), 1);
}

#[test]
fn a_damaged_snapshot_is_refused_and_the_old_one_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let lists = Lists::open(dir.path(), 24).unwrap();
    let fps: Vec<u64> = (1..=1000).collect();
    lists
        .compile(vec![Batch {
            fps: fps.clone(),
            tags: CONSENT,
        }])
        .unwrap();
    let path = lists.snapshot_path();
    let good = std::fs::read(&path).unwrap();
    for (bad, want) in [
        (good[..good.len() - 8].to_vec(), "truncated"),
        (
            b"garbage that is not a snapshot at all".to_vec(),
            "not an optin-relay",
        ),
        (
            {
                let mut b = good.clone();
                let n = b.len();
                b[n - 500] ^= 0xff;
                b
            },
            "corrupt snapshot body",
        ),
    ] {
        // Replaced the way an operator would copy a file in: a new file, renamed.
        let tmp = dir.path().join("incoming");
        std::fs::write(&tmp, &bad).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let err = lists.refresh().unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
        assert!(fps.iter().all(|&f| lists.get(f) == CONSENT));
        // Refused once: later refreshes go on following the journal quietly.
        assert!(!lists.refresh().unwrap());
        // Opening from scratch refuses it too.
        assert!(Lists::open(dir.path(), 24).is_err());
    }
}

#[test]
fn lookups_go_on_while_snapshots_are_swapped() {
    let dir = tempfile::tempdir().unwrap();
    let lists = Arc::new(Lists::open(dir.path(), 24).unwrap());
    let members: Vec<u64> = (0..20_000u64)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect();
    lists
        .compile(vec![Batch {
            fps: members.clone(),
            tags: CONSENT,
        }])
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let lookups = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..2)
        .map(|t| {
            let (lists, stop, members, lookups) = (
                lists.clone(),
                stop.clone(),
                members.clone(),
                lookups.clone(),
            );
            std::thread::spawn(move || {
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let fp = members[i % members.len()];
                    assert_eq!(lists.get(fp), CONSENT, "a member vanished during a swap");
                    assert_eq!(lists.get(fp ^ (1 << 40)), 0);
                    i += 7;
                    lookups.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for round in 0..10u64 {
        lists
            .compile(vec![Batch {
                fps: vec![round * 2 + 1],
                tags: Reason::Manual.bit(),
            }])
            .unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    assert!(lookups.load(Ordering::Relaxed) > 1000);
    assert_eq!(lists.snapshot().unwrap().len(), members.len() as u64 + 10);
}
