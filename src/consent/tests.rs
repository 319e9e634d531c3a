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
        stamp: 0,
        remote: false,
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

/// Issue 12, item 12: deleting the snapshot file under a running relay turned every
/// suppression off at the next start (and could at the next swap). Once a directory has
/// had a snapshot, its absence is an error: the last good one keeps serving, the journal is
/// still followed, opening and compiling refuse, and only an explicit rebuild starts anew.
#[test]
fn a_deleted_snapshot_is_an_error_and_the_last_good_one_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Lists::open(dir.path(), 24).unwrap();
    let fps: Vec<u64> = (1..=100).collect();
    relay
        .compile(vec![Batch {
            fps: fps.clone(),
            tags: Reason::Manual.bit(),
        }])
        .unwrap();
    std::fs::remove_file(relay.snapshot_path()).unwrap();

    let err = relay.refresh().unwrap_err().to_string();
    assert!(err.contains("is missing"), "{err}");
    assert!(fps.iter().all(|&f| relay.get(f) == Reason::Manual.bit()));
    assert!(relay.snapshot_problem().is_some());
    // Reported once; changes other processes record are still followed.
    let cli = Lists::open_mode(dir.path(), 24, false, Mode::JournalOnly).unwrap();
    assert!(cli.snapshot_problem().is_some());
    cli.record(&[change(Op::Add, 9999, Reason::Bounce.bit())])
        .unwrap();
    assert!(!relay.refresh().unwrap());
    assert_eq!(relay.get(9999), Reason::Bounce.bit());
    assert!(fps.iter().all(|&f| relay.get(f) == Reason::Manual.bit()));
    // What `serve` and `lists compile` do: refuse, naming the way out.
    let err = Lists::open(dir.path(), 24).unwrap_err().to_string();
    assert!(
        err.contains("is missing") && err.contains("--rebuild"),
        "{err}"
    );
    let err = relay.compile(Vec::new()).unwrap_err().to_string();
    assert!(err.contains("is missing"), "{err}");
    assert!(
        !relay.snapshot_path().exists(),
        "no empty snapshot was written"
    );

    // An explicit rebuild starts a new snapshot from the journal alone.
    let rebuild = Lists::open_mode(dir.path(), 24, false, Mode::Rebuild).unwrap();
    rebuild.compile(Vec::new()).unwrap();
    let reopened = Lists::open(dir.path(), 24).unwrap();
    assert_eq!(reopened.get(9999), Reason::Bounce.bit());
    assert_eq!(
        reopened.get(1),
        0,
        "what the lost snapshot held is gone, as asked"
    );
    assert!(relay.refresh().unwrap());
    assert!(relay.snapshot_problem().is_none());
}

#[test]
fn an_older_snapshot_is_refused_and_an_emptied_one_too() {
    let dir = tempfile::tempdir().unwrap();
    let lists = Lists::open(dir.path(), 24).unwrap();
    lists
        .compile(vec![Batch {
            fps: vec![1, 2, 3],
            tags: CONSENT,
        }])
        .unwrap();
    let old = std::fs::read(lists.snapshot_path()).unwrap();
    lists
        .record(&[change(Op::Remove, 2, CONSENT), change(Op::Add, 4, CONSENT)])
        .unwrap();
    lists.compile(Vec::new()).unwrap();
    for (content, want) in [
        (old, "the journal between is gone"),
        (Vec::new(), "bad magic"),
    ] {
        // Copied in the way an operator restores a backup.
        let tmp = dir.path().join("incoming");
        std::fs::write(&tmp, &content).unwrap();
        std::fs::rename(&tmp, lists.snapshot_path()).unwrap();
        let err = lists.refresh().unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
        assert_eq!(
            [1, 2, 3, 4].map(|f| lists.get(f)),
            [CONSENT, 0, CONSENT, CONSENT]
        );
        let err = Lists::open(dir.path(), 24).unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
    }
}

#[test]
fn a_directory_from_before_the_record_gets_it_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    let lists = Lists::open(dir.path(), 24).unwrap();
    lists.compile(Vec::new()).unwrap();
    std::fs::remove_file(dir.path().join("snapshot.expected")).unwrap();
    drop(Lists::open(dir.path(), 24).unwrap());
    std::fs::remove_file(lists.snapshot_path()).unwrap();
    assert!(Lists::open(dir.path(), 24).is_err());
}

fn remote(op: Op, fp: u64, tags: u8, stamp: u64) -> Change {
    Change {
        stamp,
        remote: true,
        ..change(op, fp, tags)
    }
}

/// The cluster's changes: last writer wins per fingerprint and tag bit, by stamp; a change
/// read twice or after a later one changes nothing; what cannot be ordered (older than
/// the snapshot) is kept only where it suppresses. It all holds across a reopening (the
/// stamps are in the journal).
#[test]
fn remote_changes_follow_their_stamps() {
    let dir = tempfile::tempdir().unwrap();
    let lists = Lists::open(dir.path(), 24).unwrap();
    let unsub = Reason::Unsubscribe.bit();
    let now = hlc::Hlc::floor_of(crate::envelope::now_ms());
    let (s1, s2, s3) = (now + (1 << 8) + 2, now + (2 << 8) + 2, now + (3 << 8) + 2);
    assert_eq!(
        lists
            .accept_remote(&[remote(Op::Add, 7, unsub, s2)])
            .unwrap(),
        1
    );
    assert_eq!(lists.get(7), unsub);
    // An older lift (made before the unsubscribe, read after it) changes nothing.
    assert_eq!(
        lists
            .accept_remote(&[remote(Op::Remove, 7, unsub, s1)])
            .unwrap(),
        0
    );
    assert_eq!(lists.get(7), unsub);
    // A complaint on the same address, stamped before: another bit, so it counts.
    let complaint = Reason::Complaint.bit();
    assert_eq!(
        lists
            .accept_remote(&[remote(Op::Add, 7, complaint, s1)])
            .unwrap(),
        1
    );
    assert_eq!(lists.get(7), unsub | complaint);
    // The same unsubscribe read again: nothing.
    assert_eq!(
        lists
            .accept_remote(&[remote(Op::Add, 7, unsub, s2)])
            .unwrap(),
        0
    );
    // A later lift wins.
    assert_eq!(
        lists
            .accept_remote(&[remote(Op::Remove, 7, unsub, s3)])
            .unwrap(),
        1
    );
    assert_eq!(lists.get(7), complaint);
    // A local change after all that is stamped after what was seen, and a remote change
    // older than it loses.
    lists.record(&[change(Op::Add, 7, unsub)]).unwrap();
    assert_eq!(
        lists
            .accept_remote(&[remote(Op::Remove, 7, unsub, s3 + 1)])
            .unwrap(),
        0
    );
    assert_eq!(lists.get(7), unsub | complaint);
    drop(lists);
    let lists = Lists::open(dir.path(), 24).unwrap();
    assert_eq!(
        lists
            .accept_remote(&[remote(Op::Remove, 7, unsub, s3)])
            .unwrap(),
        0
    );
    // Folded into a snapshot, the stamps are gone: an old change that suppresses is kept,
    // one that would allow mail is not.
    lists.compile(Vec::new()).unwrap();
    let old = hlc::Hlc::floor_of(1_000) | 9;
    assert_eq!(
        lists
            .accept_remote(&[remote(Op::Remove, 7, unsub, old)])
            .unwrap(),
        0
    );
    assert_eq!(
        lists
            .accept_remote(&[remote(Op::Add, 8, CONSENT, old)])
            .unwrap(),
        0
    );
    assert_eq!(
        lists
            .accept_remote(&[remote(Op::Add, 9, unsub, old)])
            .unwrap(),
        1
    );
    assert_eq!(lists.get(7), unsub | complaint);
    assert_eq!(lists.get(8), 0);
    assert_eq!(lists.get(9), unsub);
    // Received changes are marked so in the journal (the feed never sends them on).
    let read = journal::read_from(dir.path(), 2, 0).unwrap();
    assert!(read.changes.iter().all(|c| c.remote && c.stamp != 0));
}

/// Compaction keeps the journals the feed has not sent yet.
#[test]
fn compaction_keeps_journals_above_the_floor() {
    let dir = tempfile::tempdir().unwrap();
    let lists = Lists::open(dir.path(), 24).unwrap();
    lists.record(&[change(Op::Add, 1, 2)]).unwrap();
    lists.set_journal_floor(1);
    lists.compile(Vec::new()).unwrap();
    assert_eq!(journal::list(dir.path()).unwrap(), [1, 2]);
    assert_eq!(lists.get(1), 2);
    lists.set_journal_floor(2);
    lists.compile(Vec::new()).unwrap();
    assert_eq!(journal::list(dir.path()).unwrap(), [2, 3]);
    assert_eq!(lists.get(1), 2);
    // Another process (`lists compile` beside a running relay) reads the feed's position
    // from its file: journal 3 is not sent whole yet, so it stays.
    std::fs::write(dir.path().join("feed.sent"), "3 0\n").unwrap();
    let other = Lists::open(dir.path(), 24).unwrap();
    other.record(&[change(Op::Add, 5, 2)]).unwrap();
    other.compile(Vec::new()).unwrap();
    assert_eq!(journal::list(dir.path()).unwrap(), [3, 4]);
    assert_eq!(other.get(5), 2);
}

/// A compaction keeps the stamps of what it folded (`snapshot.stamps`): a change made
/// before it and received after is still ordered — a grant nothing else touched is kept,
/// a lift older than the unsubscribe it would undo is not — after a reopening too. With
/// the stamps file damaged or gone, the snapshot's creation is the horizon again (and
/// only what suppresses is kept from before it).
#[test]
fn a_compaction_keeps_the_stamps_that_order_late_changes() {
    let dir = tempfile::tempdir().unwrap();
    let lists = Lists::open(dir.path(), 24).unwrap();
    let unsub = Reason::Unsubscribe.bit();
    let before = hlc::Hlc::floor_of(crate::envelope::now_ms()) | 3;
    std::thread::sleep(std::time::Duration::from_millis(3));
    lists.record(&[change(Op::Add, 7, unsub)]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(3));
    lists.compile(Vec::new()).unwrap();
    let stamps = dir.path().join("snapshot.stamps");
    assert!(stamps.exists());
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&stamps).unwrap().permissions())
            & 0o777,
        0o600
    );
    drop(lists);
    let lists = Lists::open(dir.path(), 24).unwrap();
    let late = [
        remote(Op::Add, 8, CONSENT, before),
        remote(Op::Remove, 7, unsub, before),
    ];
    assert_eq!(lists.accept_remote(&late).unwrap(), 1);
    assert_eq!(lists.get(8), CONSENT, "the grant is kept");
    assert_eq!(lists.get(7), unsub, "the older lift is not");
    // A second compaction keeps the first one's stamps.
    lists.compile(Vec::new()).unwrap();
    assert_eq!(lists.accept_remote(&late).unwrap(), 0, "nothing twice");
    assert_eq!(lists.get(7), unsub);
    // Damaged, then gone: the old rule.
    let mut bytes = std::fs::read(&stamps).unwrap();
    bytes[40] ^= 1;
    std::fs::write(&stamps, &bytes).unwrap();
    drop(lists);
    for (damaged, fp) in [(true, 9), (false, 10)] {
        let lists = Lists::open(dir.path(), 24).unwrap();
        assert_eq!(
            lists
                .accept_remote(&[remote(Op::Add, fp, CONSENT, before)])
                .unwrap(),
            0,
            "damaged: {damaged}"
        );
        assert_eq!(
            lists
                .accept_remote(&[remote(Op::Add, fp, unsub, before)])
                .unwrap(),
            1
        );
        std::fs::remove_file(&stamps).unwrap_or(());
    }
}
