//! Tests of staged campaign release: the canary and the held rest, shares and caps,
//! declared sizes, the verdicts and their persistence, what counts toward a canary.

use super::*;

fn rules() -> CampaignRules {
    CampaignRules {
        count: 3,
        ..CampaignRules::default()
    }
}

#[test]
fn the_canary_goes_and_the_rest_waits() {
    let dir = tempfile::tempdir().unwrap();
    let c = Campaigns::open(dir.path()).unwrap();
    let r = rules();
    let got: Vec<Admission> = (0..5)
        .map(|_| c.admit("shop", "spring", Some("deals"), Some("s@x"), 1, &r, 0))
        .collect();
    assert_eq!(
        got[..3],
        [Admission::Send, Admission::Send, Admission::Send]
    );
    assert_eq!(got[3..], [Admission::Hold, Admission::Hold]);
    assert_eq!(c.get("shop/spring").unwrap().held, 2);
}

#[test]
fn a_message_crossing_the_canary_sends_only_its_share() {
    let dir = tempfile::tempdir().unwrap();
    let c = Campaigns::open(dir.path()).unwrap();
    let r = rules(); // canary of 3
    assert_eq!(
        c.admit("shop", "big", None, None, 2, &r, 0),
        Admission::Send
    );
    assert_eq!(
        c.admit("shop", "big", None, None, 10, &r, 0),
        Admission::Partial { send: 1 }
    );
    assert_eq!(
        c.admit("shop", "big", None, None, 4, &r, 0),
        Admission::Hold
    );
    let got = c.get("shop/big").unwrap();
    assert_eq!((got.canary.admitted, got.held), (3, 13));
    assert_eq!(Admission::Partial { send: 1 }.sending(10), Some(1));
    assert_eq!(Admission::Hold.sending(10), Some(0));
    assert_eq!(Admission::Declined("x".into()).sending(10), None);
    // after a restart, one canary recipient finished: the other two pending go again
    c.outcome("shop/big", true, None);
    let mut budget = BTreeMap::new();
    assert_eq!(
        c.readmit("shop/big", 1, &mut budget),
        Admission::Send,
        "the first message's second recipient"
    );
    assert_eq!(
        c.readmit("shop/big", 10, &mut budget),
        Admission::Partial { send: 1 }
    );
    assert_eq!(c.readmit("shop/big", 4, &mut budget), Admission::Hold);
}

#[test]
fn a_declared_size_sets_the_canary_share_with_a_cap() {
    let dir = tempfile::tempdir().unwrap();
    let c = Campaigns::open(dir.path()).unwrap();
    let r = CampaignRules::default();
    assert_eq!(
        c.declare("shop", "a", 2000, &r, 0).unwrap().canary_size,
        200
    );
    assert_eq!(
        c.declare("shop", "b", 50_000, &r, 0).unwrap().canary_size,
        1000
    );
    assert_eq!(c.declare("shop", "c", 3, &r, 0).unwrap().canary_size, 1);
}

#[test]
fn a_campaign_declared_before_its_mail_learns_its_list_and_sender() {
    let dir = tempfile::tempdir().unwrap();
    let c = Campaigns::open(dir.path()).unwrap();
    let r = CampaignRules::default();
    c.declare("shop", "early", 100, &r, 0).unwrap();
    c.admit(
        "shop",
        "early",
        Some("deals"),
        Some("s@shop.example"),
        1,
        &r,
        0,
    );
    let got = c.get("shop/early").unwrap();
    assert_eq!(got.list.as_deref(), Some("deals"));
    assert_eq!(got.report_to.as_deref(), Some("s@shop.example"));
    assert_eq!(got.canary_size, 10);
    c.unsubscribed("shop", "deals");
    assert_eq!(c.get("shop/early").unwrap().canary.unsubscribes, 1);
}

#[test]
fn the_verdict_follows_the_rates_and_persists() {
    let dir = tempfile::tempdir().unwrap();
    let c = Campaigns::open(dir.path()).unwrap();
    let r = rules();
    for _ in 0..3 {
        c.admit("shop", "bad", Some("deals"), None, 1, &r, 0);
        c.admit("shop", "good", Some("deals"), None, 1, &r, 0);
    }
    c.outcome("shop/bad", false, Some((Category::InvalidRecipient, true)));
    c.outcome("shop/bad", true, None);
    c.outcome("shop/good", true, None);
    // not yet due
    assert!(c.judge_due(&r, 1000, |_| false).is_empty());
    let later = r.window.as_millis() as u64 + 1;
    let verdicts = c.judge_due(&r, later, |_| false);
    assert_eq!(verdicts.len(), 2);
    let bad = c.get("shop/bad").unwrap();
    assert_eq!(bad.stage, Stage::Declined);
    assert!(bad.reason.unwrap().contains("hard bounce rate 50.00%"));
    assert_eq!(c.get("shop/good").unwrap().stage, Stage::Released);
    // after the verdict: new mail follows it
    assert!(matches!(
        c.admit("shop", "bad", None, None, 1, &r, later),
        Admission::Declined(_)
    ));
    assert_eq!(
        c.admit("shop", "good", None, None, 1, &r, later),
        Admission::Send
    );
    // kept across a restart, and no second verdict
    let again = Campaigns::open(dir.path()).unwrap();
    assert_eq!(again.stage("shop/bad"), Some(Stage::Declined));
    assert!(again.decide("shop/good", None, "admin", later).is_err());
    let events = std::fs::read_to_string(dir.path().join("events/campaigns.jsonl")).unwrap();
    assert_eq!(events.lines().count(), 2);
}

#[test]
fn unsubscribes_and_complaints_count_for_the_lists_campaigns_in_canary() {
    let dir = tempfile::tempdir().unwrap();
    let c = Campaigns::open(dir.path()).unwrap();
    let r = rules();
    c.admit("shop", "a", Some("deals"), None, 1, &r, 0);
    c.admit("shop", "b", Some("tips"), None, 1, &r, 0);
    c.unsubscribed("shop", "deals");
    assert_eq!(c.get("shop/a").unwrap().canary.unsubscribes, 1);
    assert_eq!(c.get("shop/b").unwrap().canary.unsubscribes, 0);
    c.complained("shop", "tips");
    assert_eq!(c.get("shop/b").unwrap().canary.complaints, 1);
    assert_eq!(c.get("shop/a").unwrap().canary.complaints, 0);
}

#[test]
fn readmission_after_a_restart_keeps_the_canary_size() {
    let dir = tempfile::tempdir().unwrap();
    let c = Campaigns::open(dir.path()).unwrap();
    let r = rules();
    for _ in 0..5 {
        c.admit("shop", "s", None, None, 1, &r, 0);
    }
    c.outcome("shop/s", true, None); // one canary recipient done
    let mut budget = BTreeMap::new();
    let got: Vec<Admission> = (0..4)
        .map(|_| c.readmit("shop/s", 1, &mut budget))
        .collect();
    assert_eq!(
        got,
        [
            Admission::Send,
            Admission::Send,
            Admission::Hold,
            Admission::Hold
        ]
    );
}

#[test]
fn figures_travel_as_named_counts_and_differences() {
    let mut mine = Figures {
        admitted: 4,
        finished: 3,
        delivered: 2,
        hard_bounced: 1,
        ..Figures::default()
    };
    mine.bounces.insert("invalid_recipient".into(), 1);
    let fields = mine.fields();
    assert!(fields.contains(&("bounce:invalid_recipient".to_string(), 1)));
    assert!(
        !fields.iter().any(|(k, _)| k == "complaints"),
        "zeros left out"
    );
    let back = Figures::from_fields(fields.iter().map(|(k, v)| (k.as_str(), *v)));
    assert_eq!(back, mine);
    let shared = Figures {
        admitted: 4,
        finished: 1,
        ..Figures::default()
    };
    let added = mine.beyond(&shared);
    assert_eq!((added.admitted, added.finished, added.delivered), (0, 2, 2));
    let mut total = shared.clone();
    total.add(&added);
    assert_eq!(total, mine);
}

/// Cluster mode with Redis away: a node admits its share of what the canary had left at
/// the last reading, less what it admitted alone since.
#[test]
fn a_node_alone_admits_its_share_of_what_was_left() {
    let mut c = Campaign::new("shop", "x", &rules(), 0);
    c.canary_size = 10;
    c.cluster = Some(Figures {
        admitted: 4,
        ..Figures::default()
    });
    assert_eq!(c.share_left(3), 2, "6 left over 3 nodes");
    c.canary.admitted = 1; // alone since
    assert_eq!(c.share_left(3), 1);
    c.shared.admitted = 1; // …and it reached Redis
    assert_eq!(c.share_left(3), 2);
    c.cluster = None;
    c.shared.admitted = 0;
    assert_eq!(
        c.share_left(1),
        9,
        "never read: the whole canary, less its own"
    );
}
