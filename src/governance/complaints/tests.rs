//! Tests of complaint intake: ARF parsing, every reason a report is unusable, tokens,
//! tying a report to an account, recording once, and reports kept aside.

use super::*;

use crate::rewrite::token::Unsubscribe;

const POLICY: &str = r#"
[accounts.news]
networks = ["127.0.0.1/32"]
streams = ["marketing", "transactional"]
default_stream = "marketing"
from_domains = ["news.example"]
[accounts.news.lists.weekly]
consent_statement = "You subscribed to {list}."
[accounts.shop]
networks = ["127.0.0.2/32"]
from_domains = ["shop.example", "shared.example"]
[accounts.other]
networks = ["127.0.0.3/32"]
from_domains = ["shared.example"]
"#;

/// An ARF report around `original` (CRLF text), whose part has `original_type`.
fn arf(feedback: &str, original_type: &str, original: &str) -> Vec<u8> {
    format!(
        "From: <fbl@isp.example>\r\nTo: <fbl@relay.test>\r\nSubject: FW: report\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=feedback-report;\r\n\tboundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain\r\n\r\nThis is an abuse report.\r\n\
         --b1\r\nContent-Type: message/feedback-report\r\n\r\n{feedback}\r\n\
         --b1\r\nContent-Type: {original_type}\r\n\r\n{original}\r\n--b1--\r\n"
    )
    .into_bytes()
}

const FEEDBACK: &str = "Feedback-Type: abuse\r\nUser-Agent: SomeISP-FBL/1.0\r\nVersion: 1\r\n\
     Original-Rcpt-To: <Reader@Example.NET>\r\nArrival-Date: Thu, 8 Mar 2005 14:00:00 EDT";

fn original(token: &str) -> String {
    format!(
        "DKIM-Signature: v=1; a=rsa-sha256; d=news.example; s=sel;\r\n\th=from; bh=x; b=y\r\n\
         From: News <hello@news.example>\r\nTo: <reader@example.net>\r\n\
         List-Unsubscribe: <https://unsub.example/u/{token}>,\r\n <mailto:unsubscribe+{token}@relay.test>\r\n\
         Subject: This week\r\n\r\nHello.\r\n"
    )
}

struct Setup {
    complaints: Complaints,
    keys: Arc<TokenKeys>,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let keys = Arc::new(TokenKeys::from_keys(&[(1, [9; 32])]));
    let complaints = Complaints::new(
        Address::parse("fbl@relay.test").unwrap(),
        dir.path(),
        Arc::new(Lists::open(&dir.path().join("lists"), 24).unwrap()),
        keys.clone(),
        Arc::new(ArcSwap::from_pointee(
            Policy::from_toml("p", POLICY).unwrap(),
        )),
        Arc::new(AccountCounts::default()),
        AddressTagger::new([3; 32]),
    );
    Setup {
        complaints,
        keys,
        _dir: dir,
    }
}

fn token(keys: &TokenKeys, address: &str) -> String {
    keys.seal(&Unsubscribe {
        account: "news".into(),
        list: "weekly".into(),
        address: address.into(),
    })
}

fn suppressed(c: &Complaints, scope: Scope<'_>, address: &str) -> bool {
    let fp = c
        .lists
        .secret()
        .fingerprint(Kind::Suppression, scope, address);
    c.lists.get(fp) & Reason::Complaint.bit() != 0
}

#[test]
fn a_full_report_is_parsed() {
    let r = parse(&arf(FEEDBACK, "message/rfc822", &original("AbC-_1"))).unwrap();
    assert_eq!(r.feedback_type, "abuse");
    assert_eq!(r.user_agent.as_deref(), Some("SomeISP-FBL/1.0"));
    assert_eq!(r.tokens, vec!["AbC-_1".to_string()]);
    assert_eq!(r.original_rcpt.as_deref(), Some("reader@example.net"));
    assert_eq!(r.sender_domains, vec!["news.example".to_string()]);
    // The header section alone (text/rfc822-headers) gives the same.
    let headers = original("AbC-_1");
    let headers = &headers[..headers.find("\r\n\r\n").unwrap() + 2];
    let h = parse(&arf(FEEDBACK, "text/rfc822-headers", headers)).unwrap();
    assert_eq!(h, r);
}

#[test]
fn unusable_reports_say_why() {
    let cases: [(&[u8], Malformed); 7] = [
        (b"", Malformed::Unparsable),
        (
            b"From: a@b.example\r\nSubject: hi\r\n\r\nThis is spam!\r\n",
            Malformed::NotReport,
        ),
        (
            b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n--x\r\n\r\nhi\r\n--x--\r\n",
            Malformed::NotFeedbackReport,
        ),
        (
            b"Content-Type: multipart/report; report-type=feedback-report; boundary=x\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\nhi\r\n--x--\r\n",
            Malformed::NoFeedbackPart,
        ),
        (
            &arf("User-Agent: x\r\nVersion: 1", "message/rfc822", "Subject: x\r\n\r\n"),
            Malformed::NoFeedbackType,
        ),
        (
            &arf("Feedback-Type: sunshine", "message/rfc822", "Subject: x\r\n\r\n"),
            Malformed::UnknownFeedbackType,
        ),
        (
            b"\xff\xfe\x00garbage\r\n\r\n\x00\x01",
            Malformed::NotReport,
        ),
    ];
    for (raw, why) in cases {
        assert_eq!(parse(raw), Err(why), "{}", String::from_utf8_lossy(raw));
    }
    // Truncated in the middle of the feedback part: still no panic, still an answer.
    let full = arf(FEEDBACK, "message/rfc822", &original("t"));
    for cut in (0..full.len()).step_by(7) {
        let _ = parse(&full[..cut]);
    }
}

#[test]
fn tokens_come_from_either_link() {
    assert_eq!(
        tokens_in("<https://u.example/base/u/Tok_1?x=1>, <mailto:UNSUBSCRIBE+Tok_2@relay.test>"),
        vec!["Tok_1".to_string(), "Tok_2".to_string()]
    );
    assert_eq!(
        tokens_in("<mailto:unsubscribe+T o k@relay.test>"),
        vec!["Tok".to_string()]
    );
    for none in [
        "",
        "<mailto:someone@news.example>",
        "<https://news.example/unsubscribe>",
        "<https://x.example/u/bad%20token>",
        "<mailto:unsubscribe+@relay.test>",
        "<https://x.example/u/never-closed",
        "<mailto:é>",
    ] {
        assert!(tokens_in(none).is_empty(), "{none}");
    }
}

#[test]
fn the_account_is_found_by_domain_when_only_one_fits() {
    let policy = Policy::from_toml("p", POLICY).unwrap();
    let d = |s: &[&str]| s.iter().map(|d| d.to_string()).collect::<Vec<_>>();
    assert_eq!(
        account_for(&policy, &d(&["news.example"])).as_deref(),
        Some("news")
    );
    assert_eq!(
        account_for(&policy, &d(&["mail.shop.example"])).as_deref(),
        Some("shop")
    );
    assert_eq!(account_for(&policy, &d(&["shared.example"])), None);
    assert_eq!(account_for(&policy, &d(&["elsewhere.example"])), None);
    assert_eq!(account_for(&policy, &[]), None);
}

#[test]
fn a_report_with_a_token_suppresses_for_the_account_once() {
    let s = setup();
    let c = &s.complaints;
    let t = token(&s.keys, "reader@example.net");
    let raw = arf(FEEDBACK, "message/rfc822", &original(&t));
    let Outcome::Recorded(r) = c.receive(&raw).unwrap() else {
        panic!("not recorded")
    };
    assert_eq!(r.complaint.account.as_deref(), Some("news"));
    assert_eq!(r.complaint.list.as_deref(), Some("weekly"));
    assert_eq!(r.complaint.via, Via::Arf);
    assert!(r.new);
    assert!(suppressed(c, Scope::Account("news"), "reader@example.net"));
    assert!(!suppressed(c, Scope::Global, "reader@example.net"));
    assert_eq!(c.counts.get("news").complaints, 1);
    // The same report again: recorded, not counted twice.
    let Outcome::Recorded(again) = c.receive(&raw).unwrap() else {
        panic!("not recorded")
    };
    assert!(!again.new);
    assert_eq!(c.counts.get("news").complaints, 1);
    let events = std::fs::read_to_string(s._dir.path().join("events/complaints.jsonl")).unwrap();
    assert_eq!(events.lines().count(), 2);
    let first: serde_json::Value = serde_json::from_str(events.lines().next().unwrap()).unwrap();
    assert_eq!(first["address"], "reader@example.net");
    assert_eq!(first["feedback_type"], "abuse");
    assert_eq!(first["scope"], "account");
}

#[test]
fn without_a_token_the_recipient_and_domains_decide() {
    let s = setup();
    let c = &s.complaints;
    // A forged token is ignored; Original-Rcpt-To and the From/DKIM domain remain.
    let raw = arf(FEEDBACK, "message/rfc822", &original("forgedtoken"));
    let Outcome::Recorded(r) = c.receive(&raw).unwrap() else {
        panic!("not recorded")
    };
    assert_eq!(r.complaint.account.as_deref(), Some("news"));
    assert_eq!(r.complaint.list, None);
    assert!(suppressed(c, Scope::Account("news"), "reader@example.net"));
    // No account fits: a global complaint.
    let raw = arf(
        "Feedback-Type: fraud\r\nOriginal-Rcpt-To: someone@example.org",
        "text/rfc822-headers",
        "From: <x@unknown.example>\r\nSubject: x\r\n",
    );
    let Outcome::Recorded(r) = c.receive(&raw).unwrap() else {
        panic!("not recorded")
    };
    assert_eq!(r.complaint.account, None);
    assert!(suppressed(c, Scope::Global, "someone@example.org"));
}

#[test]
fn requiring_a_token_keeps_untokened_reports_aside() {
    let s = setup();
    let c = s.complaints.requiring_token(true);
    let raw = arf(FEEDBACK, "message/rfc822", &original("forgedtoken"));
    assert!(matches!(
        c.receive(&raw).unwrap(),
        Outcome::KeptAside { .. }
    ));
    assert!(!suppressed(
        &c,
        Scope::Account("news"),
        "reader@example.net"
    ));
    // a genuine token still works
    let t = token(&s.keys, "reader@example.net");
    let raw = arf(FEEDBACK, "message/rfc822", &original(&t));
    assert!(matches!(c.receive(&raw).unwrap(), Outcome::Recorded(_)));
    assert!(suppressed(&c, Scope::Account("news"), "reader@example.net"));
}

#[test]
fn unusable_reports_are_kept_aside_and_non_complaints_ignored() {
    let s = setup();
    let c = &s.complaints;
    let raw = b"Subject: you spammed me\r\n\r\nstop it\r\n";
    let Outcome::KeptAside { file, why } = c.receive(raw).unwrap() else {
        panic!("not kept aside")
    };
    assert_eq!(why, Malformed::NotReport);
    let file = file.unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), raw);
    assert!(file.starts_with(s._dir.path().join("complaints/malformed")));
    assert!(file.extension().is_some_and(|e| e == "eml"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Nothing to tie it to.
    let raw = arf(
        "Feedback-Type: abuse\r\nOriginal-Rcpt-To: redacted",
        "text/rfc822-headers",
        "Subject: x\r\n",
    );
    assert!(matches!(
        c.receive(&raw).unwrap(),
        Outcome::KeptAside {
            why: Malformed::Untraceable,
            ..
        }
    ));
    // A not-spam report changes nothing.
    let t = token(&s.keys, "fan@example.net");
    let raw = arf(
        "Feedback-Type: not-spam\r\nOriginal-Rcpt-To: fan@example.net",
        "message/rfc822",
        &original(&t),
    );
    assert_eq!(c.receive(&raw).unwrap(), Outcome::NotAComplaint);
    assert!(!suppressed(c, Scope::Account("news"), "fan@example.net"));
    assert_eq!(c.counts.get("news").complaints, 0);
    let kept = std::fs::read_dir(s._dir.path().join("complaints/malformed"))
        .unwrap()
        .count();
    assert_eq!(kept, 2);
}

#[test]
fn the_feedback_address_matches_without_regard_to_case() {
    let s = setup();
    let c = &s.complaints;
    assert!(c.is_feedback_address(&Address::parse("FBL@Relay.Test").unwrap()));
    assert!(!c.is_feedback_address(&Address::parse("fbl@other.test").unwrap()));
    assert!(!c.is_feedback_address(&Address::parse("fbl2@relay.test").unwrap()));
}
