//! Snapshots made on one node and taken by another: what carries over, what is refused;
//! and (against a real Redis, `tests/interop/cluster.sh`) three nodes compacting once.

use super::*;
use crate::consent::{CONSENT, Kind, Op, Origin, Reason, Scope};

fn lists_pair() -> (tempfile::TempDir, tempfile::TempDir, Lists, Lists) {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Lists::open(da.path(), 24).unwrap();
    std::fs::copy(da.path().join("secret"), db.path().join("secret")).unwrap();
    let b = Lists::open(db.path(), 24).unwrap();
    (da, db, a, b)
}

fn change(l: &Lists, kind: Kind, scope: Scope<'_>, op: Op, tags: u8, address: &str) {
    l.record_addresses(
        kind,
        scope,
        op,
        tags,
        Origin::Operator,
        &[address.to_string()],
    )
    .unwrap();
}

fn unsubscribed(l: &Lists, address: &str) -> bool {
    l.standing("shop", None, address).account & Reason::Unsubscribe.bit() != 0
}

fn consents(l: &Lists, address: &str) -> bool {
    l.standing("shop", Some("news"), address).consent
}

/// Node b takes node a's snapshot: a's entries are in force on b; b's own changes not
/// sent yet are carried over (ordered against a's stamps: a grant older than the snapshot
/// is carried when nothing in it touched that address); b's journals before are gone, its feed
/// positions move to the snapshot's and to the carried changes; changes recorded after
/// go on as usual. A file whose hash or secret is wrong is refused and changes nothing.
#[test]
fn a_snapshot_made_elsewhere_replaces_the_journals_and_carries_unsent_changes() {
    let (_da, db, a, b) = lists_pair();
    let unsub = Reason::Unsubscribe.bit();
    // b: an old grant and an old unsubscribe, sent; then not sent (after feed.sent).
    grant(&b, "sent@example.net");
    let sent_to = journal::list(db.path()).unwrap().last().copied().unwrap();
    let len = std::fs::metadata(journal::path_of(db.path(), sent_to))
        .unwrap()
        .len();
    positions::write_sent(
        db.path(),
        Sent {
            journal: sent_to,
            offset: len,
        },
    )
    .unwrap();
    grant(&b, "old-grant@example.net");
    change(
        &b,
        Kind::Suppression,
        Scope::Account("shop"),
        Op::Add,
        unsub,
        "old-unsub@example.net",
    );
    std::thread::sleep(std::time::Duration::from_millis(5));
    // a: its own entries, compacted and published.
    change(
        &a,
        Kind::Suppression,
        Scope::Account("shop"),
        Op::Add,
        unsub,
        "from-a@example.net",
    );
    grant(&a, "grant-a@example.net");
    a.compile(Vec::new()).unwrap();
    let shared = tempfile::tempdir().unwrap();
    let p = a.publish_to(shared.path(), None).unwrap();
    let file = shared.path().join(format!("{}.snapshot", p.hash));
    assert!(file.exists());
    let stamps_hash = p.stamps.clone().expect("a's stamps published");
    assert!(shared.path().join(format!("{stamps_hash}.stamps")).exists());
    std::thread::sleep(std::time::Duration::from_millis(5));
    change(
        &b,
        Kind::Suppression,
        Scope::Account("shop"),
        Op::Add,
        unsub,
        "new-unsub@example.net",
    );
    // Refused: a damaged copy, a file whose hash is not the one recorded, damaged stamps,
    // stamps of another snapshot, a name that is not a hash.
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let bad_hash = blake3::hash(&bytes).to_hex().to_string();
    std::fs::write(shared.path().join(format!("{bad_hash}.snapshot")), &bytes).unwrap();
    let record = |hash: &str, stamps: Option<String>| Published {
        hash: hash.to_string(),
        stamps,
        stream: "7-0".into(),
        ..p.clone()
    };
    let refusals = [
        (record(&bad_hash, None), "damaged body"),
        (record(&"0".repeat(64), None), "hash differs"),
        (record("../secret", None), "not a hash"),
    ];
    std::fs::copy(
        &file,
        shared.path().join(format!("{}.snapshot", "0".repeat(64))),
    )
    .unwrap();
    let mut stamps_bytes =
        std::fs::read(shared.path().join(format!("{stamps_hash}.stamps"))).unwrap();
    stamps_bytes[20] ^= 1;
    let bad_stamps = blake3::hash(&stamps_bytes).to_hex().to_string();
    std::fs::write(
        shared.path().join(format!("{bad_stamps}.stamps")),
        &stamps_bytes,
    )
    .unwrap();
    for (r, why) in refusals.iter().chain(&[
        (record(&p.hash, Some(bad_stamps)), "damaged stamps"),
        (record(&p.hash, Some("f".repeat(64))), "stamps missing"),
    ]) {
        assert!(b.adopt(shared.path(), r).is_err(), "{why}");
    }
    assert!(!unsubscribed(&b, "from-a@example.net"));
    assert_eq!(positions::read_seen(db.path()), None, "nothing moved");
    assert!(!db.path().join("snapshot.adopt").exists());
    assert!(!db.path().join("snapshot.stamps.adopt").exists());
    // Taken.
    let sent = b
        .adopt(shared.path(), &record(&p.hash, p.stamps.clone()))
        .unwrap();
    assert!(
        unsubscribed(&b, "from-a@example.net"),
        "a's snapshot in force"
    );
    assert!(consents(&b, "grant-a@example.net"));
    assert!(
        unsubscribed(&b, "old-unsub@example.net"),
        "carried: it suppresses"
    );
    assert!(
        unsubscribed(&b, "new-unsub@example.net"),
        "carried: newer than the snapshot"
    );
    assert!(
        consents(&b, "old-grant@example.net"),
        "carried: older than the snapshot, but nothing in it touched that address"
    );
    assert!(
        !consents(&b, "sent@example.net"),
        "sent before: the snapshot decides"
    );
    assert_eq!(positions::read_seen(db.path()).as_deref(), Some("7-0"));
    assert_eq!(positions::read_sent(db.path()).unwrap(), Some(sent));
    assert_eq!(
        positions::read_snapshot_marker(db.path()).as_deref(),
        Some(p.hash.as_str())
    );
    let journals = journal::list(db.path()).unwrap();
    assert!(journals.iter().all(|&n| n >= sent.journal), "{journals:?}");
    let carried = journal::read_from(db.path(), sent.journal, 0)
        .unwrap()
        .changes;
    assert_eq!(
        carried.len(),
        3,
        "the grant and the two suppressions, to be sent"
    );
    assert!(carried.iter().all(|c| !c.remote));
    // b goes on: a change after, and a reopening sees the same.
    change(
        &b,
        Kind::Suppression,
        Scope::Account("shop"),
        Op::Add,
        unsub,
        "later@example.net",
    );
    drop(b);
    let b = Lists::open(db.path(), 24).unwrap();
    for addr in [
        "from-a@example.net",
        "old-unsub@example.net",
        "later@example.net",
    ] {
        assert!(unsubscribed(&b, addr), "{addr} after a restart");
    }
    assert!(consents(&b, "old-grant@example.net"));
    // Another secret: refused.
    let other = tempfile::tempdir().unwrap();
    let c = Lists::open(other.path(), 24).unwrap();
    assert!(c.adopt(shared.path(), &p).is_err(), "another secret");
}

fn grant(l: &Lists, address: &str) {
    let news = Scope::List("shop", "news");
    change(l, Kind::Consent, news, Op::Add, CONSENT, address);
}

fn withdraw(l: &Lists, address: &str) {
    let news = Scope::List("shop", "news");
    change(l, Kind::Consent, news, Op::Remove, CONSENT, address);
}

/// As if the feed had acknowledged every change of `l`'s journals.
fn all_sent(l: &Lists) {
    let sent = Sent {
        journal: u64::MAX,
        offset: 0,
    };
    positions::write_sent(l.dir(), sent).unwrap();
}

/// The changes in `l`'s journals, as the feed would bring them back.
fn journal_changes(l: &Lists) -> Vec<Change> {
    let mut out = Vec::new();
    for n in journal::list(l.dir()).unwrap() {
        out.extend(journal::read_from(l.dir(), n, 0).unwrap().changes);
    }
    out
}

/// A grant made on b before a compacted, which reached the feed after a's position: a's
/// snapshot lacks it, yet it is in force on a when a reads it, and on b when b takes a's
/// snapshot and reads the feed again from its position — ordered by the stamps the
/// snapshot kept, so a grant that a withdrawal on a came after stays withdrawn. Without
/// the stamps file (a snapshot from before it) the old rule holds: only a suppression
/// older than the snapshot is kept.
#[test]
fn a_grant_the_snapshot_missed_is_not_lost_by_taking_it() {
    let (_da, _db, a, b) = lists_pair();
    grant(&b, "granted@example.net");
    grant(&b, "withdrawn@example.net");
    let from_b = journal_changes(&b);
    std::thread::sleep(std::time::Duration::from_millis(3));
    // a withdraws the second grant after it was made (a saw it through the feed first).
    a.accept_remote(&from_b[1..]).unwrap();
    withdraw(&a, "withdrawn@example.net");
    std::thread::sleep(std::time::Duration::from_millis(3));
    a.compile(Vec::new()).unwrap();
    let shared = tempfile::tempdir().unwrap();
    let p = Published {
        stream: "5-0".into(),
        ..a.publish_to(shared.path(), None).unwrap()
    };
    // b's grants are sent: the feed brings them to a after its compaction...
    all_sent(&b);
    assert_eq!(
        a.accept_remote(&from_b).unwrap(),
        1,
        "the grant, not the older one"
    );
    assert!(consents(&a, "granted@example.net"));
    assert!(!consents(&a, "withdrawn@example.net"));
    // ...and to b again after it takes a's snapshot.
    b.adopt(shared.path(), &p).unwrap();
    assert!(!consents(&b, "granted@example.net"), "not in a's snapshot");
    assert_eq!(b.accept_remote(&from_b).unwrap(), 1);
    assert!(consents(&b, "granted@example.net"), "the grant is not lost");
    assert!(
        !consents(&b, "withdrawn@example.net"),
        "the withdrawal came after"
    );
    // A record without stamps (a node from before them): the snapshot's creation is the
    // horizon, and the grant older than it is what cannot be ordered.
    let (_dc, _dd, c, d) = lists_pair();
    grant(&d, "granted@example.net");
    let from_d = journal_changes(&d);
    d.compile(Vec::new()).unwrap();
    assert!(d.dir().join("snapshot.stamps").exists());
    std::thread::sleep(std::time::Duration::from_millis(3));
    grant(&c, "other@example.net");
    c.compile(Vec::new()).unwrap();
    let other = tempfile::tempdir().unwrap();
    let old = Published {
        stamps: None,
        stream: "5-0".into(),
        ..c.publish_to(other.path(), None).unwrap()
    };
    all_sent(&d);
    d.adopt(other.path(), &old).unwrap();
    assert!(!d.dir().join("snapshot.stamps").exists());
    assert_eq!(d.accept_remote(&from_d).unwrap(), 0);
    assert!(!consents(&d, "granted@example.net"));
}

/// Three nodes, one Redis, one shared snapshot directory: the lists grow past
/// `compact_after` on every node; one compacts and publishes, the two others take it
/// (their journals replaced, every change still in force); a new node with an empty lists
/// directory starts from the snapshot, reads only the feed after it, and gets a change
/// made afterwards.
#[tokio::test]
#[ignore = "needs a Redis: tests/interop/cluster.sh"]
async fn one_node_compacts_and_every_node_takes_its_snapshot() {
    use crate::cluster::testing;
    use tokio_util::sync::CancellationToken;
    let stop = CancellationToken::new();
    let p = testing::prefix("snapshots");
    let shared = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let first = Arc::new(Lists::open(dirs[0].path(), 24).unwrap());
    for d in &dirs[1..] {
        std::fs::copy(dirs[0].path().join("secret"), d.path().join("secret")).unwrap();
    }
    let config = |id: &str| {
        let mut c = testing::config(&testing::redis_url(), id, &p);
        c.snapshot_dir = Some(shared.path().to_path_buf());
        c
    };
    let mut nodes = vec![first];
    for d in &dirs[1..3] {
        nodes.push(Arc::new(Lists::open(d.path(), 24).unwrap()));
    }
    for (l, id) in nodes.iter().zip(["a", "b", "c"]) {
        let c = testing::node_with(config(id), &stop).await;
        crate::consent::feed::spawn(l.clone(), c, 20, stop.clone()).unwrap();
    }
    let unsub = Reason::Unsubscribe.bit();
    for i in 0..30 {
        let l = &nodes[i % 3];
        change(
            l,
            Kind::Suppression,
            Scope::Account("shop"),
            Op::Add,
            unsub,
            &format!("u{i}@example.net"),
        );
    }
    let everywhere = |nodes: &[Arc<Lists>], addr: &str| nodes.iter().all(|l| unsubscribed(l, addr));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let published = std::fs::read_dir(shared.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".snapshot"))
            .count();
        let taken = dirs[..3]
            .iter()
            .filter(|d| positions::read_snapshot_marker(d.path()).is_some())
            .count();
        if published == 1 && taken == 3 && nodes.iter().all(|l| l.stats().snapshot_entries >= 30) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "one snapshot taken by all within 20 s: {published} published, {taken} nodes have one"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hashes: Vec<_> = dirs[..3]
        .iter()
        .map(|d| positions::read_snapshot_marker(d.path()))
        .collect();
    assert!(
        hashes.iter().all(|h| *h == hashes[0]),
        "one snapshot: {hashes:?}"
    );
    // The changes after the snapshot's position come back through the feed.
    testing::until("every change in force on every node", 10, || {
        (0..30).all(|i| everywhere(&nodes, &format!("u{i}@example.net")))
    })
    .await;
    // A new node: from the snapshot, then the tail.
    let d = Arc::new(Lists::open(dirs[3].path(), 24).unwrap());
    let cd = testing::node_with(config("d"), &stop).await;
    crate::consent::feed::spawn(d.clone(), cd, 20, stop.clone()).unwrap();
    change(
        &nodes[1],
        Kind::Suppression,
        Scope::Account("shop"),
        Op::Add,
        unsub,
        "after@example.net",
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !(unsubscribed(&d, "after@example.net") && unsubscribed(&d, "u0@example.net")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the new node caught up within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        d.stats().snapshot_entries >= 30,
        "started from the snapshot"
    );
    assert!(
        d.stats().delta_entries < 30,
        "not from the whole stream: {:?}",
        d.stats().delta_entries
    );
    stop.cancel();
}

/// While Redis does not answer a node compacts its own lists again (the follow task asks
/// `compaction_shared` at every tick).
#[tokio::test]
async fn a_node_compacts_alone_while_redis_is_away() {
    let dir = tempfile::tempdir().unwrap();
    let lists = Lists::open(dir.path(), 24).unwrap();
    assert!(!lists.compaction_shared(), "alone");
    let config = crate::cluster::testing::config("redis://127.0.0.1:9/0", "a", "t:");
    let cluster = crate::cluster::Cluster::new(config).unwrap();
    lists.share_compaction(cluster.clone());
    assert!(!cluster.is_up());
    assert!(!lists.compaction_shared(), "Redis away: compacts alone");
}
