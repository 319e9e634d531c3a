//! Scrubbing a live spool: the address leaves every record and quarantined file, the other
//! recipients and every checksum stay sound, recovery afterwards finds no damage, and
//! stores and reads running meanwhile never fail.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::config::SpoolConfig;
use crate::envelope::{Envelope, Recipient, now_ms};
use crate::privacy::erase::Needle;
use crate::spool::{Redactor, Spool};

const ADDRESS: &str = "erase@x.example";

fn config(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        path: dir.to_path_buf(),
        fsync: true,
        segment_size: 1 << 20,
    }
}

fn envelope(spool: &Spool, sender: &str, rcpts: &[&str]) -> Envelope {
    let rcpts = rcpts.iter().map(|a| Recipient {
        orcpt: Some(format!("rfc822;{a}")),
        ..Recipient::new(*a)
    });
    Envelope::transactional(
        spool.next_id(),
        now_ms(),
        "acct",
        Some(sender.into()),
        rcpts,
    )
}

fn needle() -> Arc<dyn Redactor> {
    Arc::new(Needle::new(ADDRESS).unwrap())
}

/// Every file under `dir` whose octets hold `text`, in any ASCII case.
fn files_holding(dir: &Path, text: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)
                .unwrap()
                .to_ascii_lowercase()
                .windows(text.len())
                .any(|w| w == text.as_bytes())
            {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test]
async fn the_address_leaves_every_record_and_the_rest_stays_deliverable() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(&config(dir.path())).unwrap();
    let both = envelope(&spool, "app@shop.example", &[ADDRESS, "keep@y.example"]);
    let both_body = "To: Erase@X.example, keep@y.example\r\n\r\nHi erase@x.example!\r\n";
    let from_it = envelope(&spool, "ERASE@x.example", &["keep@y.example"]);
    let other = envelope(&spool, "app@shop.example", &["other@z.example"]);
    let other_body = "Subject: x\r\n\r\nnothing about anyone\r\n";
    let l1 = spool.store(&both, Bytes::from(both_body)).await.unwrap();
    let l2 = spool
        .store(&from_it, Bytes::from("hello\r\n"))
        .await
        .unwrap();
    let l3 = spool.store(&other, Bytes::from(other_body)).await.unwrap();

    let report = spool.scrub(needle()).await.unwrap();
    assert_eq!((report.records, report.damaged), (2, 0), "{report:?}");
    assert!(report.problems.is_empty());

    let (env, body) = spool.read_message(l1).await.unwrap();
    assert_eq!(env.recipients[0].address, "xxxxx@x.xxxxxxx");
    assert!(
        env.recipients[0].done,
        "a placeholder is never delivered to"
    );
    assert_eq!(
        env.recipients[0].orcpt.as_deref(),
        Some("rfc822;xxxxx@x.xxxxxxx")
    );
    assert_eq!(
        env.recipients[1], both.recipients[1],
        "the other recipient is untouched"
    );
    assert_eq!(env.sender, both.sender);
    assert_eq!(
        &body[..],
        b"To: xxxxx@x.xxxxxxx, keep@y.example\r\n\r\nHi xxxxx@x.xxxxxxx!\r\n"
    );
    let (env, _) = spool.read_message(l2).await.unwrap();
    assert_eq!(env.sender.as_deref(), Some("xxxxx@x.xxxxxxx"));
    assert_eq!(env.recipients, from_it.recipients);
    assert_eq!(
        spool.read_message(l3).await.unwrap(),
        (other, Bytes::from(other_body))
    );
    assert_eq!(files_holding(dir.path(), ADDRESS), [] as [PathBuf; 0]);

    // a second scrub finds nothing; recovery finds no damage and the same messages
    assert_eq!(spool.scrub(needle()).await.unwrap().records, 0);
    drop(spool);
    let (_spool, recovered) = Spool::open(&config(dir.path())).unwrap();
    assert_eq!(recovered.quarantined, 0);
    assert_eq!(recovered.messages.len(), 3);
    let first = &recovered.messages[0];
    assert_eq!(first.pending().collect::<Vec<_>>(), [1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stores_and_reads_go_on_while_a_scrub_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(&config(dir.path())).unwrap();
    fn body(i: usize) -> Bytes {
        let filler = "y".repeat(6000);
        Bytes::from(format!(
            "Subject: {i}\r\n\r\nto erase@x.example {filler}\r\n"
        ))
    }
    let mut locs = Vec::new();
    for i in 0..300 {
        let env = envelope(&spool, "app@shop.example", &["keep@y.example"]);
        locs.push(spool.store(&env, body(i)).await.unwrap());
    }
    let writer = {
        let spool = spool.clone();
        tokio::spawn(async move {
            let mut more = Vec::new();
            for i in 300..600 {
                let env = envelope(&spool, "app@shop.example", &["keep@y.example"]);
                more.push(spool.store(&env, body(i)).await.unwrap());
            }
            more
        })
    };
    let reader = {
        let (spool, locs) = (spool.clone(), locs.clone());
        tokio::spawn(async move {
            for _ in 0..3 {
                for loc in &locs {
                    spool.read(*loc).await.expect("never a torn record");
                }
            }
        })
    };
    let report = spool.scrub(needle()).await.unwrap();
    assert!(report.records >= 300, "{report:?}");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let more = writer.await.unwrap();
    reader.await.unwrap();
    for loc in &locs {
        let content = spool.read(*loc).await.unwrap();
        assert!(
            !content
                .windows(ADDRESS.len())
                .any(|w| w == ADDRESS.as_bytes())
        );
    }
    for loc in &more {
        spool.read(*loc).await.unwrap();
    }
    drop(spool);
    let (_spool, recovered) = Spool::open(&config(dir.path())).unwrap();
    assert_eq!(recovered.quarantined, 0);
    assert_eq!(recovered.messages.len(), 600);
    assert!(recovered.segments > 1, "the scrub crossed segments");
}

#[tokio::test]
async fn damage_stays_damage_and_quarantined_bytes_are_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(&config(dir.path())).unwrap();
    let env = envelope(&spool, "app@shop.example", &["keep@y.example"]);
    let body = "Subject: x\r\n\r\nhi erase@x.example, bye\r\n";
    let loc = spool.store(&env, Bytes::from(body)).await.unwrap();
    spool.flush().await.unwrap();
    // flip the last octet of the content (not part of the address)
    let segment = dir.path().join(format!("queue/{:016x}.msg", loc.segment));
    let mut bytes = std::fs::read(&segment).unwrap();
    let last = (loc.offset + loc.len - 1) as usize;
    bytes[last] ^= 0x20;
    std::fs::write(&segment, &bytes).unwrap();
    assert!(spool.read(loc).await.is_err());
    std::fs::write(
        dir.path()
            .join("quarantine/0000000000000001-0000000000000010.bad"),
        "garbage <ERASE@x.example> garbage",
    )
    .unwrap();

    let report = spool.scrub(needle()).await.unwrap();
    assert_eq!(
        (report.records, report.damaged, report.quarantine_files),
        (0, 1, 1),
        "{report:?}"
    );
    assert!(
        spool.read(loc).await.is_err(),
        "still damaged: recovery must see it"
    );
    assert_eq!(files_holding(dir.path(), ADDRESS), [] as [PathBuf; 0]);
    assert_eq!(
        std::fs::read_to_string(
            dir.path()
                .join("quarantine/0000000000000001-0000000000000010.bad")
        )
        .unwrap(),
        "garbage <xxxxx@x.xxxxxxx> garbage"
    );
}
