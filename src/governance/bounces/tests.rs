//! Tests of what bounces do: the full-mailbox streak over its window (with an explicit
//! clock), repeats, the kept-aside cap, and the blocking intake on messages built here.

use super::*;

use crate::envelope::{Envelope, QueueId, Recipient};
use crate::rewrite::token::TokenKeys;

const DAY: u64 = 86_400_000;

struct Setup {
    bounces: Bounces,
    _dir: tempfile::TempDir,
}

fn setup(policy: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let lists = Arc::new(Lists::open(&dir.path().join("lists"), 24).unwrap());
    let policy = Policy::from_toml("test", policy).unwrap();
    let mut bounces = Bounces::new(
        dir.path(),
        lists,
        Arc::new(ArcSwap::from_pointee(policy)),
        AddressTagger::new([1; 32]),
        100,
    );
    bounces.paths = Some(ReturnPaths {
        keys: Arc::new(TokenKeys::from_keys(&[(1, [7; 32])])),
        prefix: "bounces".into(),
        domain: "relay.test".into(),
    });
    Setup { bounces, _dir: dir }
}

/// The return path of a message of `shop` to `to`.
fn path(b: &Bounces, to: &str) -> String {
    let env = Envelope::transactional(
        QueueId(42),
        0,
        "shop",
        Some("app@shop.example".into()),
        [Recipient::new(to)],
    );
    b.paths.as_ref().unwrap().sender_for(&env, 0, None).unwrap()
}

fn token(path: &str) -> String {
    path.split_once('+')
        .unwrap()
        .1
        .split('@')
        .next()
        .unwrap()
        .to_string()
}

fn dsn(status: &str, text: &str) -> Vec<u8> {
    format!(
        "From: MAILER-DAEMON@mx.example\r\nSubject: failure\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n\
         --b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n\r\n\
         Final-Recipient: rfc822; x@example.net\r\nAction: failed\r\nStatus: {status}\r\n\
         Diagnostic-Code: smtp; {text}\r\n\r\n--b--\r\n"
    )
    .into_bytes()
}

fn outcome(b: &Bounces, raw: &[u8], tokens: &[String]) -> Outcome {
    match b.examine(raw, tokens).unwrap() {
        Examined::Done(o) => o,
        Examined::Complaint => panic!("a complaint"),
    }
}

#[test]
fn a_full_mailbox_is_suppressed_after_its_streak_within_the_window() {
    let s = setup("[bounce_streak]\nmailbox_full_count = 3\nmailbox_full_days = 7\n");
    let b = &s.bounces;
    let t0 = 1_000 * DAY;
    // Two within the week, then a gap of more than a week: the streak starts over.
    assert!(!b.streak_at("a@example.net", t0));
    assert!(!b.streak_at("a@example.net", t0 + DAY));
    assert!(!b.streak_at("a@example.net", t0 + 9 * DAY));
    assert!(!b.streak_at("a@example.net", t0 + 10 * DAY));
    // The third within seven days completes it; then it starts from nothing again.
    assert!(b.streak_at("a@example.net", t0 + 12 * DAY));
    assert!(!b.streak_at("a@example.net", t0 + 12 * DAY + 1));
    // Another address has its own streak.
    assert!(!b.streak_at("b@example.net", t0 + 12 * DAY));
}

#[test]
fn only_a_genuine_token_is_acted_on_and_only_once() {
    let s = setup("");
    let b = &s.bounces;
    let p = path(b, "x@example.net");
    let raw = dsn("5.1.1", "550 5.1.1 user unknown");
    // No token, a token of another key: kept aside, nothing suppressed.
    for tokens in [vec![], vec!["abcdefgh".to_string()]] {
        match outcome(b, &raw, &tokens) {
            Outcome::KeptAside { why, file } => {
                assert_eq!(why, Unusable::Unverified);
                assert!(file.is_some());
            }
            other => panic!("{other:?}"),
        }
    }
    let fp =
        b.lists
            .secret()
            .fingerprint(Kind::Suppression, Scope::Account("shop"), "x@example.net");
    assert_eq!(b.lists.get(fp), 0);
    match outcome(b, &raw, &[token(&p)]) {
        Outcome::Acted(a) => {
            assert_eq!(a.category, Category::InvalidRecipient);
            assert!(a.suppressed);
        }
        other => panic!("{other:?}"),
    }
    assert_ne!(b.lists.get(fp) & Reason::Bounce.bit(), 0);
    // Never global: anyone holding the message could have mailed it.
    let global = b
        .lists
        .secret()
        .fingerprint(Kind::Suppression, Scope::Global, "x@example.net");
    assert_eq!(b.lists.get(global), 0);
    // The same token again (in either case) is a repeat.
    assert_eq!(
        outcome(b, &raw, &[token(&p).to_ascii_uppercase()]),
        Outcome::Repeated
    );
}

#[test]
fn a_temporary_or_foreign_failure_suppresses_nothing() {
    let s = setup("");
    let b = &s.bounces;
    for (status, text) in [
        ("4.1.1", "450 4.1.1 user unknown, try again"),
        ("5.7.1", "554 5.7.1 rejected as spam"),
        ("5.7.26", "550 5.7.26 DMARC policy"),
    ] {
        let p = path(b, "y@example.net");
        match outcome(b, &dsn(status, text), &[token(&p)]) {
            Outcome::Acted(a) => assert!(!a.suppressed, "{status}: {a:?}"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn kept_aside_mail_is_capped() {
    let s = setup("");
    let b = s.bounces.with_aside_cap(2, 1 << 20);
    for i in 0..4 {
        match outcome(&b, b"Subject: hello\r\n\r\nnot a bounce", &[]) {
            Outcome::KeptAside { file, .. } => assert_eq!(file.is_some(), i < 2, "{i}"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(std::fs::read_dir(b.aside_dir()).unwrap().count(), 2);
}

#[test]
fn a_hostile_mime_tree_is_refused_before_it_is_parsed() {
    let s = setup("");
    let mut raw = b"Content-Type: multipart/mixed; boundary=x\r\n\r\n".to_vec();
    for _ in 0..5000 {
        raw.extend_from_slice(b"--x\r\n\r\n");
    }
    assert_eq!(outcome(&s.bounces, &raw, &[]), Outcome::TooComplex);
}

#[test]
fn streaks_survive_a_restart_and_end_when_complete() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("state/bounce-streaks.bin");
    let lists = Arc::new(Lists::open(&dir.path().join("lists"), 24).unwrap());
    let policy = Arc::new(ArcSwap::from_pointee(
        Policy::from_toml("test", "[bounce_streak]\nmailbox_full_count = 3\n").unwrap(),
    ));
    let open = || {
        Bounces::new(
            dir.path(),
            lists.clone(),
            policy.clone(),
            AddressTagger::new([1; 32]),
            100,
        )
        .with_streak_file(&file)
    };
    let now = crate::envelope::now_ms();
    let b = open();
    assert!(!b.streak_at("full@example.net", now - 2 * DAY));
    assert!(!b.streak_at("full@example.net", now - DAY));
    b.flush_streaks();
    drop(b);
    // Restarted: the third bounce completes the streak begun before.
    let b = open();
    assert!(b.streak_at("full@example.net", now));
    b.flush_streaks();
    drop(b);
    // Completed streaks start over, also after another restart; the file holds no address.
    let b = open();
    assert!(!b.streak_at("full@example.net", now + 1));
    assert!(
        !std::fs::read(&file)
            .unwrap()
            .windows(4)
            .any(|w| w == b"full")
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
