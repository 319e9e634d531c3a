//! The consent ledger: records kept sealed, counted, withdrawn, erased and aged out.

use super::*;
use crate::policy::MailingList;

fn list(id: &str, statement: &str) -> MailingList {
    MailingList {
        id: id.into(),
        name: id.into(),
        consent_statement: statement.into(),
        consent_source: "the signup form at shop.example".into(),
        ..MailingList::default()
    }
}

fn ledger(dir: &Path) -> Ledger {
    let secret = Secret::load_or_create(&dir.join("secret")).unwrap();
    Ledger::open(&dir.join("state"), secret).unwrap()
}

fn grant(l: &Ledger, list: &MailingList, address: &str, how: How, t: u64) {
    let mut proof = Proof::new(address.into(), how, "k1");
    proof.ip = Some("192.0.2.7".into());
    l.grant("shop", list, vec![proof], t).unwrap();
}

#[test]
fn a_record_says_when_how_and_what_was_shown_and_holds_no_plain_address() {
    let dir = tempfile::tempdir().unwrap();
    let news = list("news", "You subscribed to {list}.");
    {
        let l = ledger(dir.path());
        grant(&l, &news, "ann@example.org", How::Form, 1000);
        let r = l.get("shop", "news", "ann@example.org").unwrap().unwrap();
        assert_eq!(r.granted_ms, 1000);
        assert_eq!(r.proof.how, How::Form);
        assert_eq!(r.proof.ip.as_deref(), Some("192.0.2.7"));
        let w = r.wording.unwrap();
        assert_eq!(w.statement, "You subscribed to {list}.");
        assert_eq!(w.source, "the signup form at shop.example");
        assert!(l.get("shop", "news", "bob@example.org").unwrap().is_none());
        assert!(l.get("other", "news", "ann@example.org").unwrap().is_none());
    }
    // Survives a restart; the file never holds the address.
    let l = ledger(dir.path());
    assert!(l.get("shop", "news", "ann@example.org").unwrap().is_some());
    let raw = std::fs::read(dir.path().join("state/consent-ledger.redb")).unwrap();
    assert!(memchr::memmem::find(&raw, b"ann@example.org").is_none());
    assert!(memchr::memmem::find(&raw, b"192.0.2.7").is_none());
    assert!(crate::files::check_private(&dir.path().join("state/consent-ledger.redb")).is_ok());
    assert!(crate::files::check_private(&dir.path().join("state/consent-ledger.key")).is_ok());
}

#[test]
fn a_new_wording_is_a_new_version_and_old_records_keep_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let l = ledger(dir.path());
    grant(
        &l,
        &list("news", "Old words."),
        "ann@example.org",
        How::Api,
        1,
    );
    grant(
        &l,
        &list("news", "New words."),
        "bob@example.org",
        How::Api,
        2,
    );
    let ann = l.get("shop", "news", "ann@example.org").unwrap().unwrap();
    let bob = l.get("shop", "news", "bob@example.org").unwrap().unwrap();
    assert_eq!(ann.wording.as_ref().unwrap().statement, "Old words.");
    assert_eq!(bob.wording.as_ref().unwrap().statement, "New words.");
    assert_ne!(ann.wording.unwrap().version, bob.wording.unwrap().version);
}

#[test]
fn counts_follow_grants_withdrawals_and_erasure() {
    let dir = tempfile::tempdir().unwrap();
    let l = ledger(dir.path());
    let news = list("news", "s");
    let deals = list("deals", "s");
    for a in ["a@x.org", "b@x.org", "c@x.org"] {
        grant(&l, &news, a, How::Upload, 1);
    }
    grant(&l, &news, "a@x.org", How::Api, 2); // again: still one record
    grant(&l, &deals, "a@x.org", How::Api, 2);
    let count = |list: &str| {
        l.counts("shop")
            .unwrap()
            .into_iter()
            .find(|c| c.list == list)
            .map(|c| (c.in_force, c.withdrawn))
    };
    assert_eq!(count("news"), Some((3, 0)));
    assert_eq!(count("deals"), Some((1, 0)));
    let gone = ["b@x.org".to_string(), "nobody@x.org".to_string()];
    assert_eq!(l.withdraw("shop", "news", &gone, "api", 5).unwrap(), 1);
    assert_eq!(count("news"), Some((2, 1)));
    let b = l.get("shop", "news", "b@x.org").unwrap().unwrap();
    assert_eq!(
        (b.withdrawn_ms, b.withdrawn_how.as_deref()),
        (Some(5), Some("api"))
    );
    // Withdrawing again changes nothing; granting again puts it back in force.
    let again = ["b@x.org".to_string()];
    assert_eq!(l.withdraw("shop", "news", &again, "api", 6).unwrap(), 0);
    grant(&l, &news, "b@x.org", How::DoubleOptIn, 7);
    assert_eq!(count("news"), Some((3, 0)));
    // Erasure: every record of the address, in every list.
    assert_eq!(l.erase("a@x.org").unwrap(), 2);
    assert!(l.get("shop", "news", "a@x.org").unwrap().is_none());
    assert!(l.get("shop", "deals", "a@x.org").unwrap().is_none());
    assert_eq!(count("news"), Some((2, 0)));
    assert_eq!(count("deals"), Some((0, 0)));
    assert_eq!(l.erase("a@x.org").unwrap(), 0);
    // Export: every record of the account, and only of it.
    let mut seen = Vec::new();
    l.export("shop", |r| {
        seen.push(r.proof.address);
        true
    })
    .unwrap();
    seen.sort();
    assert_eq!(seen, ["b@x.org", "c@x.org"]);
    let mut none = 0;
    l.export("shopx", |_| {
        none += 1;
        true
    })
    .unwrap();
    assert_eq!(none, 0);
}

#[test]
fn withdrawn_records_age_out_and_records_in_force_stay() {
    let dir = tempfile::tempdir().unwrap();
    let l = ledger(dir.path());
    let news = list("news", "s");
    for a in ["old@x.org", "kept@x.org", "recent@x.org"] {
        grant(&l, &news, a, How::Api, 1);
    }
    l.withdraw("shop", "news", &["old@x.org".into()], "api", 10)
        .unwrap();
    l.withdraw("shop", "news", &["recent@x.org".into()], "api", 100)
        .unwrap();
    assert_eq!(l.drop_withdrawn_before(50).unwrap(), 1);
    assert!(l.get("shop", "news", "old@x.org").unwrap().is_none());
    assert!(l.get("shop", "news", "kept@x.org").unwrap().is_some());
    assert!(l.get("shop", "news", "recent@x.org").unwrap().is_some());
    let c = &l.counts("shop").unwrap()[0];
    assert_eq!((c.in_force, c.withdrawn), (1, 1));
    // The person index went with it: erasing now finds nothing more to remove.
    assert_eq!(l.erase("old@x.org").unwrap(), 0);
}

#[test]
fn consent_ages_from_its_last_confirmation_or_engagement_and_is_asked_once() {
    let dir = tempfile::tempdir().unwrap();
    let l = ledger(dir.path());
    let news = list("news", "s");
    for a in ["old@x.org", "clicked@x.org", "new@x.org", "left@x.org"] {
        grant(&l, &news, a, How::Api, 1_000);
    }
    grant(&l, &news, "new@x.org", How::Reconfirmed, 50_000);
    l.touch("shop", "news", "clicked@x.org", 60_000).unwrap();
    l.touch("shop", "news", "nobody@x.org", 60_000).unwrap();
    l.withdraw("shop", "news", &["left@x.org".into()], "api", 2_000)
        .unwrap();
    assert_eq!(
        l.fresh_since("shop", "news", "old@x.org").unwrap(),
        Some(1_000)
    );
    assert_eq!(
        l.fresh_since("shop", "news", "clicked@x.org").unwrap(),
        Some(60_000)
    );
    assert_eq!(l.fresh_since("shop", "news", "nobody@x.org").unwrap(), None);
    // Fresh before 10 000: only the one neither reconfirmed, clicked nor withdrawn.
    let (due, more) = l.take_expired("shop", "news", 10_000, 70_000, 10).unwrap();
    assert_eq!((due, more), (vec!["old@x.org".to_string()], 0));
    // Asked once: not again, until its consent is fresh and ages once more.
    let (due, _) = l.take_expired("shop", "news", 10_000, 71_000, 10).unwrap();
    assert!(due.is_empty());
    grant(&l, &news, "old@x.org", How::Reconfirmed, 80_000);
    let (due, _) = l.take_expired("shop", "news", 90_000, 95_000, 10).unwrap();
    assert_eq!(due.len(), 3, "{due:?}");
    // A limit leaves the rest for the next call.
    grant(&l, &news, "a@x.org", How::Api, 1);
    grant(&l, &news, "b@x.org", How::Api, 1);
    let (due, more) = l.take_expired("shop", "news", 90_000, 96_000, 1).unwrap();
    assert_eq!((due.len(), more), (1, 1));
}
