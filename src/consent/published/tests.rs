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
/// sent yet are carried over (a grant older than the snapshot is not — it cannot be
/// ordered against it — a suppression is); b's journals before are gone, its feed
/// positions move to the snapshot's and to the carried changes; changes recorded after
/// go on as usual. A file whose hash or secret is wrong is refused and changes nothing.
#[test]
fn a_snapshot_made_elsewhere_replaces_the_journals_and_carries_unsent_changes() {
    let (_da, db, a, b) = lists_pair();
    let unsub = Reason::Unsubscribe.bit();
    let news = Scope::List("shop", "news");
    // b: an old grant and an old unsubscribe, sent; then not sent (after feed.sent).
    change(
        &b,
        Kind::Consent,
        news,
        Op::Add,
        CONSENT,
        "sent@example.net",
    );
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
    change(
        &b,
        Kind::Consent,
        news,
        Op::Add,
        CONSENT,
        "old-grant@example.net",
    );
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
    change(
        &a,
        Kind::Consent,
        news,
        Op::Add,
        CONSENT,
        "grant-a@example.net",
    );
    a.compile(Vec::new()).unwrap();
    let shared = tempfile::tempdir().unwrap();
    let p = a.publish_to(shared.path(), None).unwrap();
    let file = shared.path().join(format!("{}.snapshot", p.hash));
    assert!(file.exists());
    std::thread::sleep(std::time::Duration::from_millis(5));
    change(
        &b,
        Kind::Suppression,
        Scope::Account("shop"),
        Op::Add,
        unsub,
        "new-unsub@example.net",
    );
    // Refused: a damaged copy, then the wrong hash.
    let bad = shared.path().join("bad.snapshot");
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&bad, &bytes).unwrap();
    let bad_hash = blake3::hash(&bytes).to_hex().to_string();
    assert!(b.adopt(&bad, &bad_hash, "9-0").is_err(), "damaged body");
    assert!(b.adopt(&file, &bad_hash, "9-0").is_err(), "hash differs");
    assert!(!unsubscribed(&b, "from-a@example.net"));
    assert_eq!(positions::read_seen(db.path()), None, "nothing moved");
    // Taken.
    let sent = b.adopt(&file, &p.hash, "7-0").unwrap();
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
        !consents(&b, "old-grant@example.net"),
        "an unsent grant older than the snapshot cannot be ordered against it"
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
    assert_eq!(carried.len(), 2, "the two suppressions, to be sent");
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
    // Another secret: refused.
    let other = tempfile::tempdir().unwrap();
    let c = Lists::open(other.path(), 24).unwrap();
    assert!(c.adopt(&file, &p.hash, "7-0").is_err(), "another secret");
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
