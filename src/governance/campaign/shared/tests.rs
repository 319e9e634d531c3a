//! One canary across three nodes against a real Redis (`tests/interop/cluster.sh` runs
//! these with `OPTIN_TEST_REDIS`): admission counted once, figures summed, one verdict
//! applied by every node, an admin's verdict racing another, a late node.

use std::sync::Mutex;

use super::*;
use crate::cluster::testing;
use crate::governance::campaign::{Admission, key};

fn policy(window: &str) -> Arc<ArcSwap<Policy>> {
    let p = Policy::from_toml(
        "test",
        &format!(
            r#"
[accounts.shop]
networks = ["127.0.0.0/8"]
[campaigns]
evaluation_window = "{window}"
canary_count = 5
max_complaint_rate = 0.5
"#
        ),
    )
    .unwrap();
    Arc::new(ArcSwap::from_pointee(p))
}

struct Node {
    campaigns: Arc<Campaigns>,
    cluster: Arc<Cluster>,
    _dir: tempfile::TempDir,
}

async fn node(id: &str, prefix: &str, stop: &CancellationToken) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let campaigns = Arc::new(Campaigns::open(dir.path()).unwrap());
    let cluster = testing::node(id, prefix, stop).await;
    campaigns.share(cluster.clone());
    Node {
        campaigns,
        cluster,
        _dir: dir,
    }
}

/// What the scheduler does with a new message of `n` recipients: admit, ask, apply.
async fn submit(node: &Node, campaign: &str, n: u64, policy: &ArcSwap<Policy>) -> u64 {
    let rules = policy.load().campaign_rules();
    let a = node
        .campaigns
        .admit("shop", campaign, Some("news"), None, n, &rules, 0);
    let Admission::Ask { size } = a else {
        panic!("a canary in cluster mode asks Redis, got {a:?}");
    };
    let k = key("shop", campaign);
    match ask(&node.cluster, &k, n, size).await {
        Some(Answer::Send(send)) => node.campaigns.admitted(&k, Some(send), n, 1),
        other => panic!("{other:?}"),
    }
}

/// Eleven recipients in messages spread over three nodes, a canary of five: exactly five
/// go (a message crossing the end sends its first ones); the figures are summed; when the
/// window has passed one node gives the verdict and all three apply it (same time, same
/// node named), each releasing its held mail once.
#[tokio::test]
#[ignore = "needs a Redis: tests/interop/cluster.sh"]
async fn one_canary_and_one_verdict_across_nodes() {
    let stop = CancellationToken::new();
    let p = testing::prefix("canary");
    let policy = policy("2s");
    let mut nodes = Vec::new();
    for id in ["a", "b", "c"] {
        nodes.push(node(id, &p, &stop).await);
    }
    let mut sent = 0;
    for n in &nodes {
        sent += submit(n, "spring", 1, &policy).await;
    }
    assert_eq!(
        submit(&nodes[2], "spring", 3, &policy).await,
        2,
        "a message crossing the end sends the canary's last two"
    );
    sent += 2;
    for n in &nodes {
        sent += submit(n, "spring", 1, &policy).await;
    }
    assert_eq!(sent, 5, "the canary across the cluster");
    // Each node's canary recipients finish; one complaint on b.
    let k = key("shop", "spring");
    for n in &nodes {
        let mine = n.campaigns.get(&k).unwrap().canary.admitted;
        for _ in 0..mine {
            n.campaigns.outcome(&k, true, None);
        }
    }
    nodes[1].campaigns.complained("shop", "news");
    let verdicts = Arc::new(Mutex::new(Vec::<String>::new()));
    for n in &nodes {
        let v = verdicts.clone();
        let id = n.cluster.node_id().to_string();
        spawn(
            n.campaigns.clone(),
            n.cluster.clone(),
            policy.clone(),
            Arc::new(move |key: &str| v.lock().unwrap().push(format!("{id} {key}"))),
            stop.clone(),
        );
    }
    testing::until("the verdict on every node", 8, || {
        nodes
            .iter()
            .all(|n| n.campaigns.stage(&k) == Some(Stage::Released))
    })
    .await;
    let decided: Vec<Campaign> = nodes.iter().map(|n| n.campaigns.get(&k).unwrap()).collect();
    for c in &decided {
        assert_eq!(c.decided_ms, decided[0].decided_ms, "one verdict");
        assert_eq!(c.decided_by, decided[0].decided_by);
        assert!(c.decided_by.as_deref().unwrap().starts_with("policy on "));
        let sums = c.cluster.as_ref().expect("the cluster's figures");
        assert_eq!((sums.admitted, sums.finished, sums.complaints), (5, 5, 1));
    }
    // Each node releases its held mail once (just after its registry has the verdict).
    testing::until("the held mail released on every node", 8, || {
        verdicts.lock().unwrap().len() == 3
    })
    .await;
    // A node that first hears of the campaign after its verdict follows it.
    let late = node("d", &p, &stop).await;
    let rules = policy.load().campaign_rules();
    let Admission::Ask { size } = late
        .campaigns
        .admit("shop", "spring", None, None, 3, &rules, 0)
    else {
        panic!("asks");
    };
    let Some(Answer::Decided(v)) = ask(&late.cluster, &k, 3, size).await else {
        panic!("the verdict is in Redis");
    };
    assert!(v.released);
    assert!(apply(&late.campaigns, &k, &v));
    assert_eq!(late.campaigns.stage(&k), Some(Stage::Released));
    stop.cancel();
}

/// Two admins decide the same campaign on two nodes: the first verdict is the cluster's,
/// the second is told it came too late, and every node ends with the first.
#[tokio::test]
#[ignore = "needs a Redis: tests/interop/cluster.sh"]
async fn an_admin_verdict_is_given_once() {
    let stop = CancellationToken::new();
    let p = testing::prefix("canary-admin");
    let policy = policy("1h");
    let mut nodes = Vec::new();
    for id in ["a", "b", "c"] {
        nodes.push(node(id, &p, &stop).await);
    }
    for n in &nodes {
        submit(n, "fall", 1, &policy).await;
        spawn(
            n.campaigns.clone(),
            n.cluster.clone(),
            policy.clone(),
            Arc::new(|_: &str| {}),
            stop.clone(),
        );
    }
    let k = key("shop", "fall");
    let declined = decide(
        &nodes[1].cluster,
        &nodes[1].campaigns,
        &k,
        Some("wrong list".into()),
        "admin",
    )
    .await
    .unwrap();
    assert_eq!(declined.stage, Stage::Declined);
    let late = decide(&nodes[2].cluster, &nodes[2].campaigns, &k, None, "admin").await;
    assert!(matches!(late, Err(CampaignError::Decided(_))), "{late:?}");
    testing::until("declined on every node", 8, || {
        nodes
            .iter()
            .all(|n| n.campaigns.stage(&k) == Some(Stage::Declined))
    })
    .await;
    for n in &nodes {
        let c = n.campaigns.get(&k).unwrap();
        assert_eq!(c.reason.as_deref(), Some("wrong list"));
        assert_eq!(c.decided_by.as_deref(), Some("admin on b"));
    }
    stop.cancel();
}
