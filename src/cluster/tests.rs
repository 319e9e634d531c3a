//! Cluster tests. Those marked `#[ignore]` need a real Redis: `tests/interop/cluster.sh`
//! starts a private `redis-server` and runs them with `OPTIN_TEST_REDIS` set
//! (`cargo test -- --ignored cluster::`); without the variable they fail rather than pass.
//! The others run everywhere.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::testing::*;
use super::*;

#[test]
fn announcements_round_trip_and_refuse_nonsense() {
    let a = Announcement::Shaped {
        site: "mx1.example.net,mx2.example.net (tls required)".into(),
        factor: 0.25,
        suspended_for: Duration::from_millis(1500),
        node: "relay-a".into(),
    };
    assert_eq!(Announcement::decode(&a.encode()), Some(a));
    let f = Announcement::Frozen {
        account: "shop".into(),
        reason: "complaints 0.5%\tof\n200".into(),
        by: "health".into(),
        node: "relay-b".into(),
    };
    let Some(Announcement::Frozen { reason, .. }) = Announcement::decode(&f.encode()) else {
        panic!("a freeze reads back");
    };
    assert_eq!(reason, "complaints 0.5% of 200");
    let u = Announcement::Unfrozen {
        account: "shop".into(),
        by: "admin".into(),
        node: "relay-c".into(),
    };
    assert_eq!(Announcement::decode(&u.encode()), Some(u));
    let v = Announcement::Verdict {
        campaign: "shop/spring sale".into(),
        node: "relay-a".into(),
    };
    assert_eq!(Announcement::decode(&v.encode()), Some(v));
    for bad in [
        "",
        "shaped",
        "shaped\ta\t2.0\t0\tsite",
        "shaped\ta\tNaN\t0\tsite",
        "shaped\ta\t0.5\t-1\tsite",
        "other\tthing",
        "verdict\ta",
    ] {
        assert_eq!(Announcement::decode(bad), None, "{bad:?}");
    }
}

/// Redis unreachable: the node starts, makes no call that waits, and divides its limits by
/// the one node it knows.
#[tokio::test]
async fn unreachable_redis_falls_back_at_once() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = Cluster::new(config(
        &format!("redis://127.0.0.1:{port}/0"),
        "alone",
        "x:",
    ))
    .unwrap();
    let stop = CancellationToken::new();
    c.start(report("p"), stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!c.is_up());
    assert_eq!(c.share(), Some(1));
    let started = Instant::now();
    assert_eq!(
        c.pace("messages", "smarthost", Duration::from_millis(10))
            .await,
        None
    );
    assert!(c.lease("smarthost", 1).await.is_none());
    assert!(started.elapsed() < Duration::from_millis(50));
    let status = c.status().await;
    assert!(!status.redis_up && status.nodes.is_empty() && status.redis_time_ms.is_none());
    stop.cancel();
}

#[tokio::test]
#[ignore = "needs a Redis: tests/interop/cluster.sh"]
async fn gcra_spaces_the_slots_of_all_nodes() {
    let stop = CancellationToken::new();
    let p = prefix("gcra");
    let nodes = [
        node("a", &p, &stop).await,
        node("b", &p, &stop).await,
        node("c", &p, &stop).await,
    ];
    let interval = Duration::from_millis(50);
    let mut tasks = Vec::new();
    for n in &nodes {
        for _ in 0..10 {
            let n = n.clone();
            tasks.push(tokio::spawn(async move {
                n.pace("messages", "site", interval)
                    .await
                    .expect("Redis answers")
            }));
        }
    }
    let mut waits = Vec::new();
    for t in tasks {
        waits.push(t.await.unwrap());
    }
    waits.sort();
    // Thirty slots booked within a few ms: the i-th waits about i intervals.
    for (i, w) in waits.iter().enumerate() {
        let expected = interval * i as u32;
        let slack = Duration::from_millis(40);
        assert!(
            *w + slack >= expected && *w <= expected + slack,
            "slot {i}: waits {w:?}, expected about {expected:?} ({waits:?})"
        );
    }
    // Script cache emptied (a Redis restart): the scripts are loaded again.
    let mut conn = nodes[0].link.load().conn.clone();
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    assert!(nodes[1].pace("messages", "other", interval).await.is_some());
    stop.cancel();
}

#[tokio::test]
#[ignore = "needs a Redis: tests/interop/cluster.sh"]
async fn leases_cap_connections_across_nodes_and_wake_waiters() {
    let stop = CancellationToken::new();
    let p = prefix("lease");
    let (a, b, c) = (
        node("a", &p, &stop).await,
        node("b", &p, &stop).await,
        node("c", &p, &stop).await,
    );
    let la = a.lease("site", 2).await.expect("first lease");
    let lb = b.lease("site", 2).await.expect("second lease");
    // The third waits; renewals keep the two alive well past their ttl (600 ms).
    let waiting = tokio::spawn({
        let c = c.clone();
        async move {
            let start = Instant::now();
            let lease = c.lease("site", 2).await;
            (lease, start.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !waiting.is_finished(),
        "the cap of 2 held while both leases lived"
    );
    let released = Instant::now();
    drop(la);
    let (lease, _) = waiting.await.unwrap();
    assert!(lease.is_some());
    // Woken by the release's announcement, well before any expiry would have freed it.
    assert!(
        released.elapsed() < Duration::from_millis(300),
        "woke after {:?}",
        released.elapsed()
    );
    assert_eq!(b.leases_held(), 1);
    drop(lb);
    stop.cancel();
}

#[tokio::test]
#[ignore = "needs a Redis: tests/interop/cluster.sh"]
async fn a_dead_nodes_leases_expire() {
    let stop = CancellationToken::new();
    let p = prefix("expire");
    // Not started: no heartbeat renews its lease, as if it had been killed.
    let dead = Cluster::new(config(&redis_url(), "dead", &p)).unwrap();
    dead.beat(&report("p1")()).await;
    assert!(dead.is_up());
    let held = dead.lease("site", 1).await.expect("lease");
    std::mem::forget(held);
    let alive = node("alive", &p, &stop).await;
    let start = Instant::now();
    let lease = alive.lease("site", 1).await;
    assert!(lease.is_some());
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
        "took {took:?} (ttl 600 ms)"
    );
    stop.cancel();
}

#[tokio::test]
#[ignore = "needs a Redis: tests/interop/cluster.sh"]
async fn heartbeats_fill_the_table_and_show_drift() {
    let stop = CancellationToken::new();
    let p = prefix("nodes");
    let a = node("a", &p, &stop).await;
    let _b = node("b", &p, &stop).await;
    let other = Cluster::new(config(&redis_url(), "c", &p)).unwrap();
    let stop_c = CancellationToken::new();
    other.start(report("p2"), stop_c.clone());
    tokio::time::sleep(Duration::from_millis(400)).await;
    let status = a.status().await;
    assert!(status.redis_up);
    assert_eq!(status.live_nodes, 3, "{status:?}");
    let ids: Vec<&str> = status.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    let drift: Vec<&str> = status
        .nodes
        .iter()
        .filter(|n| n.policy_drift)
        .map(|n| n.id.as_str())
        .collect();
    assert_eq!(drift, ["c"]);
    // A clean stop leaves the table at once.
    stop_c.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = a.status().await;
    assert_eq!(status.nodes.len(), 2, "{:?}", status.nodes);
    stop.cancel();
}

#[tokio::test]
#[ignore = "needs a Redis: tests/interop/cluster.sh"]
async fn announcements_reach_the_other_nodes() {
    let stop = CancellationToken::new();
    let p = prefix("bus");
    let a = node("a", &p, &stop).await;
    let b = node("b", &p, &stop).await;
    let mut heard = b.announcements();
    let said = Announcement::Shaped {
        site: "mx.example.net".into(),
        factor: 0.5,
        suspended_for: Duration::ZERO,
        node: "a".into(),
    };
    a.announce(said.clone()).await;
    let got = tokio::time::timeout(Duration::from_secs(2), heard.recv())
        .await
        .expect("heard in time")
        .unwrap();
    assert_eq!(got, said);
    stop.cancel();
}
