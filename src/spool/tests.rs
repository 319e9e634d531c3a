//! Spool behaviour: durability round trips, state journals, segment deletion, and what
//! recovery does with damage.

use super::*;
use crate::envelope::{Envelope, QueueId, Recipient};
use crate::smtp::params::Notify;

fn config(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        path: dir.to_path_buf(),
        fsync: true,
        segment_size: 1 << 20,
    }
}

fn envelope(spool: &Spool, rcpts: &[&str]) -> Envelope {
    let sender = Some("from@sender.example".into());
    let rcpts = rcpts.iter().map(|a| Recipient {
        notify: Some(Notify::DEFAULT),
        ..Recipient::new(*a)
    });
    Envelope::transactional(spool.next_id(), now_ms(), "acct", sender, rcpts)
}

fn body(n: usize) -> Bytes {
    Bytes::from(format!("Subject: test {n}\r\n\r\nhello {n}\r\n"))
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("queue"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn quarantine_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("quarantine")).unwrap().count()
}

#[tokio::test]
async fn store_read_and_recover() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, report) = Spool::open(&config(dir.path())).unwrap();
    assert!(report.messages.is_empty());
    let env = envelope(&spool, &["a@x.example", "b@y.example"]);
    let loc = spool.store(&env, body(1)).await.unwrap();
    assert_eq!(spool.read(loc).await.unwrap(), body(1));
    spool.record(loc, 0, RcptEvent::Delivered);
    spool.record(
        loc,
        1,
        RcptEvent::Deferred {
            attempts: 2,
            next_attempt: 12345,
            delay_notified: false,
        },
    );
    spool.flush().await.unwrap();
    drop(spool);

    let (spool, report) = Spool::open(&config(dir.path())).unwrap();
    assert_eq!(report.messages.len(), 1);
    let m = &report.messages[0];
    assert_eq!(m.envelope, env);
    assert_eq!(m.pending().collect::<Vec<_>>(), vec![1]);
    assert_eq!(
        m.events[1],
        Some(RcptEvent::Deferred {
            attempts: 2,
            next_attempt: 12345,
            delay_notified: false
        })
    );
    assert_eq!(spool.read(m.loc).await.unwrap(), body(1));
    assert!(
        spool.next_id() > env.id,
        "ids continue above recovered ones"
    );
}

#[tokio::test]
async fn finished_segments_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let small = SpoolConfig {
        segment_size: 1 << 20,
        ..config(dir.path())
    };
    let (spool, _) = Spool::open(&small).unwrap();
    let mut locs = Vec::new();
    for i in 0..3 {
        let env = envelope(&spool, &["a@x.example"]);
        // big bodies so that every message rotates to a new segment
        let big = Bytes::from(vec![b'x'; (1 << 20) + i]);
        locs.push(spool.store(&env, big).await.unwrap());
    }
    assert_eq!(segment_files(dir.path()).len(), 3);
    for loc in &locs {
        spool.record(*loc, 0, RcptEvent::Delivered);
        spool.finish(*loc);
    }
    spool.flush().await.unwrap();
    // finished segments are gone (the last one too, once it is full and sealed)
    let files = segment_files(dir.path());
    for loc in &locs[..2] {
        assert!(
            !files.contains(&format!("{:016x}.msg", loc.segment)),
            "{files:?}"
        );
        assert!(
            !files.contains(&format!("{:016x}.rcpt", loc.segment)),
            "{files:?}"
        );
    }
    drop(spool);
    let (_, report) = Spool::open(&small).unwrap();
    assert!(report.messages.is_empty());
    assert!(
        segment_files(dir.path()).is_empty(),
        "{:?}",
        segment_files(dir.path())
    );
}

/// The size the writer reports is what the queue directory holds.
fn assert_size_matches_files(spool: &Spool, dir: &Path) {
    let files = segment_files(dir);
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(dir.join("queue").join(f)).unwrap().len())
        .sum();
    let segments = files.iter().filter(|f| f.ends_with(".msg")).count() as u64;
    let stats = spool.stats();
    assert_eq!(stats.bytes.load(Ordering::Relaxed), bytes, "{files:?}");
    assert_eq!(
        stats.segments.load(Ordering::Relaxed),
        segments,
        "{files:?}"
    );
}

#[tokio::test]
async fn size_stats_follow_segments_and_journals() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(&config(dir.path())).unwrap();
    let mut locs = Vec::new();
    for i in 0..3 {
        let env = envelope(&spool, &["a@x.example", "b@x.example"]);
        // Each fills a segment, so the next goes to a new one.
        let big = Bytes::from(vec![b'x'; (1 << 20) + i]);
        locs.push(spool.store(&env, big).await.unwrap());
    }
    spool.record(locs[0], 0, RcptEvent::Delivered);
    spool.record(locs[2], 1, RcptEvent::Delivered);
    spool.flush().await.unwrap();
    assert_eq!(spool.stats().segments.load(Ordering::Relaxed), 3);
    assert_size_matches_files(&spool, dir.path());

    spool.finish(locs[0]);
    spool.flush().await.unwrap();
    assert_eq!(spool.stats().segments.load(Ordering::Relaxed), 2);
    assert_size_matches_files(&spool, dir.path());

    // Recovery adopts what is left, with its journals.
    drop(spool);
    let (spool, report) = Spool::open(&config(dir.path())).unwrap();
    assert_eq!(report.messages.len(), 2);
    assert_size_matches_files(&spool, dir.path());
}

#[tokio::test]
async fn concurrent_stores_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(&config(dir.path())).unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let spool = spool.clone();
            tokio::spawn(async move {
                let env = envelope(&spool, &["a@x.example"]);
                spool.store(&env, body(i)).await.unwrap()
            })
        })
        .collect();
    let mut locs = Vec::new();
    for t in tasks {
        locs.push(t.await.unwrap());
    }
    let stats = spool.stats();
    let commits = stats.commits.load(Ordering::Relaxed);
    assert_eq!(stats.stored.load(Ordering::Relaxed), 200);
    assert!(
        commits < 200,
        "group commit: {commits} commits for 200 messages"
    );
    for (i, loc) in locs.iter().enumerate() {
        assert_eq!(spool.read(*loc).await.unwrap(), body(i));
    }
}

#[tokio::test]
async fn ids_are_unique_and_increasing() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(&config(dir.path())).unwrap();
    let ids: Vec<QueueId> = (0..10_000).map(|_| spool.next_id()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(QueueId::parse(&ids[0].to_string()), Some(ids[0]));
}

#[tokio::test]
async fn a_second_relay_cannot_open_the_same_spool() {
    let dir = tempfile::tempdir().unwrap();
    let (_spool, _) = Spool::open(&config(dir.path())).unwrap();
    assert!(matches!(
        Spool::open(&config(dir.path())),
        Err(SpoolError::Locked(_))
    ));
}

async fn two_messages(dir: &Path) -> (Envelope, Envelope, Location, Location) {
    let (spool, _) = Spool::open(&config(dir)).unwrap();
    let e1 = envelope(&spool, &["a@x.example"]);
    let e2 = envelope(&spool, &["b@x.example"]);
    let l1 = spool.store(&e1, body(1)).await.unwrap();
    let l2 = spool.store(&e2, body(2)).await.unwrap();
    (e1, e2, l1, l2)
}

fn segment_path_of(dir: &Path, loc: Location) -> PathBuf {
    dir.join("queue").join(format!("{:016x}.msg", loc.segment))
}

#[tokio::test]
async fn torn_tail_is_quarantined_and_the_rest_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let (e1, e2, l1, _) = two_messages(dir.path()).await;
    // a crash in the middle of appending a third record
    let mut torn = format::encode_record_head(&e1, b"partial body that never got written");
    torn.truncate(40);
    let path = segment_path_of(dir.path(), l1);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut f, &torn).unwrap();
    drop(f);

    let (spool, report) = Spool::open(&config(dir.path())).unwrap();
    let ids: Vec<QueueId> = report.messages.iter().map(|m| m.envelope.id).collect();
    assert_eq!(ids, vec![e1.id, e2.id]);
    assert_eq!(report.quarantined, 1);
    assert_eq!(quarantine_files(dir.path()), 1);
    // Repaired in place, without a copy (a full disk has no room for one): the messages
    // stay where they are and the torn tail is cut off.
    assert_eq!(report.repaired, 1);
    let good_end = report
        .messages
        .iter()
        .map(|m| m.loc.offset + m.loc.len)
        .max();
    assert_eq!(Some(std::fs::metadata(&path).unwrap().len()), good_end);
    assert_eq!(
        segment_files(dir.path()),
        vec![format!("{:016x}.msg", l1.segment)]
    );
    for m in &report.messages {
        assert_eq!(m.loc.segment, l1.segment);
        assert!(spool.read(m.loc).await.is_ok());
    }
    drop(spool);
    // and the damage is not reported a second time
    let (_, report) = Spool::open(&config(dir.path())).unwrap();
    assert_eq!(report.messages.len(), 2);
    assert_eq!(report.quarantined, 0);
}

/// Stores `n` one-recipient messages in one segment; returns their ids and locations.
async fn many_messages(dir: &Path, n: usize) -> Vec<(QueueId, Location)> {
    let (spool, _) = Spool::open(&config(dir)).unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let env = envelope(&spool, &["a@x.example"]);
        out.push((env.id, spool.store(&env, body(i)).await.unwrap()));
    }
    out
}

#[tokio::test]
async fn a_flipped_bit_in_the_segment_header_loses_no_record() {
    let dir = tempfile::tempdir().unwrap();
    let stored = many_messages(dir.path(), 101).await;
    let path = segment_path_of(dir.path(), stored[0].1);
    let mut data = std::fs::read(&path).unwrap();
    data[9] ^= 0x04; // the version field
    std::fs::write(&path, &data).unwrap();

    let (spool, report) = Spool::open(&config(dir.path())).unwrap();
    let ids: Vec<QueueId> = report.messages.iter().map(|m| m.envelope.id).collect();
    assert_eq!(ids, stored.iter().map(|s| s.0).collect::<Vec<_>>());
    for (m, (i, (_, loc))) in report.messages.iter().zip(stored.iter().enumerate()) {
        assert_eq!(m.loc, *loc);
        assert_eq!(spool.read(m.loc).await.unwrap(), body(i));
    }
    // Only the 16 damaged octets were put aside.
    assert_eq!(report.quarantined, 1);
    let bad = std::fs::read_dir(dir.path().join("quarantine")).unwrap();
    let lens: Vec<u64> = bad.map(|e| e.unwrap().metadata().unwrap().len()).collect();
    assert_eq!(lens, [format::SEGMENT_HEADER_LEN as u64]);
    drop(spool);
    let (_, report) = Spool::open(&config(dir.path())).unwrap();
    assert_eq!((report.messages.len(), report.quarantined), (101, 0));
}

#[tokio::test]
async fn a_record_whose_header_alone_is_damaged_is_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let stored = many_messages(dir.path(), 3).await;
    let path = segment_path_of(dir.path(), stored[0].1);
    let mut data = std::fs::read(&path).unwrap();
    // The first record's header checksum, the second's magic, the third's body length.
    data[stored[0].1.offset as usize + 29] ^= 0x80;
    data[stored[1].1.offset as usize + 1] ^= 0x01;
    data[stored[2].1.offset as usize + 8] ^= 0x10;
    std::fs::write(&path, &data).unwrap();

    let (spool, report) = Spool::open(&config(dir.path())).unwrap();
    let ids: Vec<QueueId> = report.messages.iter().map(|m| m.envelope.id).collect();
    assert_eq!(ids, stored.iter().map(|s| s.0).collect::<Vec<_>>());
    for (i, m) in report.messages.iter().enumerate() {
        assert_eq!(spool.read(m.loc).await.unwrap(), body(i));
    }
    assert_eq!(report.quarantined, 3);
    drop(spool);
    let (_, report) = Spool::open(&config(dir.path())).unwrap();
    assert_eq!((report.messages.len(), report.quarantined), (3, 0));
}

#[tokio::test]
async fn a_leftover_segment_file_does_not_block_new_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(&config(dir.path())).unwrap();
    // What a segment creation that failed half-way (a full disk) leaves behind: the file of
    // the next segment, with no header or part of one.
    let queue = dir.path().join("queue");
    std::fs::write(
        queue.join(format!("{:016x}.msg", 1)),
        &format::segment_header()[..5],
    )
    .unwrap();
    let env = envelope(&spool, &["a@x.example"]);
    let loc = spool
        .store(&env, body(1))
        .await
        .expect("the next segment is used");
    assert_eq!(spool.read(loc).await.unwrap(), body(1));
    let loc2 = spool
        .store(&envelope(&spool, &["b@x.example"]), body(2))
        .await
        .unwrap();
    assert_eq!(loc2.segment, loc.segment);
    drop(spool);
    // At the next start the leftover, which never held a record, is simply removed.
    let (_, report) = Spool::open(&config(dir.path())).unwrap();
    assert_eq!((report.messages.len(), report.quarantined), (2, 0));
    assert!(!queue.join(format!("{:016x}.msg", 1)).exists());
}

#[tokio::test]
async fn recipient_state_that_cannot_be_written_is_kept_and_written_later() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(&config(dir.path())).unwrap();
    let env = envelope(&spool, &["a@x.example", "b@x.example"]);
    let loc = spool.store(&env, body(1)).await.unwrap();
    // Writing the journal fails (here: its name is taken by a directory).
    let journal = dir.path().join(format!("queue/{:016x}.rcpt", loc.segment));
    std::fs::create_dir(&journal).unwrap();
    spool.record(loc, 0, RcptEvent::Delivered);
    spool.flush().await.unwrap();
    std::fs::remove_dir(&journal).unwrap();
    spool.record(loc, 1, RcptEvent::Failed);
    spool.flush().await.unwrap();
    drop(spool);
    let (_, report) = Spool::open(&config(dir.path())).unwrap();
    assert!(report.messages.is_empty(), "both recipients are done");
}

#[tokio::test]
async fn a_damaged_body_is_quarantined_once_and_never_reads() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(&config(dir.path())).unwrap();
    let env = envelope(&spool, &["a@x.example"]);
    let loc = spool.store(&env, body(7)).await.unwrap();
    let path = segment_path_of(dir.path(), loc);
    let mut data = std::fs::read(&path).unwrap();
    data[(loc.offset + loc.len - 3) as usize] ^= 1;
    std::fs::write(&path, &data).unwrap();
    for _ in 0..2 {
        match spool.read_message(loc).await {
            Err(SpoolError::Damaged { envelope, .. }) => {
                assert_eq!(
                    envelope.as_deref(),
                    Some(&env),
                    "the envelope still verifies"
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(spool.read(loc).await.unwrap_err().is_damage());
    }
    assert_eq!(quarantine_files(dir.path()), 1);
}

#[tokio::test]
async fn corrupt_envelope_is_quarantined_and_reading_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (_, e2, l1, _) = two_messages(dir.path()).await;
    let path = segment_path_of(dir.path(), l1);
    let mut data = std::fs::read(&path).unwrap();
    // flip an octet inside the first message's envelope
    data[l1.offset as usize + format::RECORD_HEADER_LEN + 12] ^= 0x55;
    std::fs::write(&path, &data).unwrap();

    let (spool, report) = Spool::open(&config(dir.path())).unwrap();
    let ids: Vec<QueueId> = report.messages.iter().map(|m| m.envelope.id).collect();
    assert_eq!(ids, vec![e2.id]);
    assert_eq!(report.quarantined, 1);
    // The damaged record is covered in place; the next start reads past it quietly.
    assert_eq!(std::fs::metadata(&path).unwrap().len(), data.len() as u64);
    drop(spool);
    let (_, report) = Spool::open(&config(dir.path())).unwrap();
    assert_eq!((report.messages.len(), report.quarantined), (1, 0));
}

#[tokio::test]
async fn corrupt_record_header_is_skipped_to_the_next_record() {
    let dir = tempfile::tempdir().unwrap();
    let (_, e2, l1, _) = two_messages(dir.path()).await;
    let path = segment_path_of(dir.path(), l1);
    let mut data = std::fs::read(&path).unwrap();
    // Both lengths and the envelope's checksum: nothing left to verify the record with.
    data[l1.offset as usize + 6] ^= 0xff;
    data[l1.offset as usize + 10] ^= 0xff;
    data[l1.offset as usize + 17] ^= 0xff;
    std::fs::write(&path, &data).unwrap();
    let (_, report) = Spool::open(&config(dir.path())).unwrap();
    let ids: Vec<QueueId> = report.messages.iter().map(|m| m.envelope.id).collect();
    assert_eq!(ids, vec![e2.id]);
    assert_eq!(report.quarantined, 1);
}

#[tokio::test]
async fn corrupt_body_is_caught_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(&config(dir.path())).unwrap();
    let env = envelope(&spool, &["a@x.example"]);
    let loc = spool.store(&env, body(7)).await.unwrap();
    let path = segment_path_of(dir.path(), loc);
    let mut data = std::fs::read(&path).unwrap();
    let last = (loc.offset + loc.len - 3) as usize;
    data[last] ^= 1;
    std::fs::write(&path, &data).unwrap();
    let err = spool.read(loc).await.unwrap_err();
    assert!(err.to_string().contains("body checksum"), "{err}");
}

#[tokio::test]
async fn foreign_file_is_quarantined_whole() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("queue")).unwrap();
    std::fs::write(
        dir.path().join("queue").join(format!("{:016x}.msg", 5)),
        b"this is not a spool segment at all",
    )
    .unwrap();
    let (spool, report) = Spool::open(&config(dir.path())).unwrap();
    assert!(report.messages.is_empty());
    assert_eq!(report.quarantined, 1);
    // new segments are numbered after the foreign one
    let env = envelope(&spool, &["a@x.example"]);
    let loc = spool.store(&env, body(1)).await.unwrap();
    assert!(loc.segment > 5);
}

#[tokio::test]
async fn inspect_reads_a_live_spool_without_changing_it() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(&config(dir.path())).unwrap();
    let env = envelope(&spool, &["a@x.example", "b@x.example"]);
    let loc = spool.store(&env, body(1)).await.unwrap();
    spool.record(loc, 0, RcptEvent::Failed);
    spool.flush().await.unwrap();
    let seen = Spool::inspect(dir.path()).unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].pending().collect::<Vec<_>>(), vec![1]);
}
