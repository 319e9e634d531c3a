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
contact_address = "hello@news.example"
postal_address = "1 Main St, Springfield"
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

/// Takes a report as the relay does; a tokenless complaint is finished as if `reporter`
/// (the domain whose DKIM signature verified) had signed it.
fn take(c: &Complaints, raw: &[u8], reporter: Option<&str>) -> Outcome {
    match c.examine(raw).unwrap() {
        Examined::Done(outcome) => outcome,
        Examined::NeedsReporter(report) => {
            c.finish(raw, report, reporter.map(str::to_string)).unwrap()
        }
    }
}

/// Takes tokenless reports signed by `fbl.isp.example` (the DNS is never asked here:
/// [`take`] plays the signature check).
fn with_reporters(c: Complaints) -> Complaints {
    let resolver = crate::dns::resolver(Some("127.0.0.1:9".parse().unwrap())).unwrap();
    c.with_reporters(reporter::Reporters::new(
        vec!["fbl.isp.example".into()],
        resolver,
    ))
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
    let Outcome::Recorded(r) = take(c, &raw, None) else {
        panic!("not recorded")
    };
    assert_eq!(r.complaint.account, "news");
    assert_eq!(r.complaint.list.as_deref(), Some("weekly"));
    assert_eq!(r.complaint.via, Via::Arf);
    assert!(r.new);
    assert!(suppressed(c, Scope::Account("news"), "reader@example.net"));
    assert!(!suppressed(c, Scope::Global, "reader@example.net"));
    assert_eq!(c.counts.get("news").complaints, 1);
    let journal = c.lists.stats().delta_entries;
    // The same report again (anyone who has the message can replay it): nothing written,
    // nothing counted twice.
    let Outcome::Recorded(again) = take(c, &raw, None) else {
        panic!("not recorded")
    };
    assert!(!again.new);
    assert_eq!(c.counts.get("news").complaints, 1);
    assert_eq!(c.lists.stats().delta_entries, journal);
    let events = std::fs::read_to_string(s._dir.path().join("events/complaints.jsonl")).unwrap();
    assert_eq!(events.lines().count(), 1);
    let first: serde_json::Value = serde_json::from_str(events.lines().next().unwrap()).unwrap();
    assert_eq!(first["address"], "reader@example.net");
    assert_eq!(first["feedback_type"], "abuse");
    assert_eq!(first["scope"], "account");
}

#[test]
fn a_tokenless_report_counts_only_when_an_allowed_reporter_signed_it() {
    // A forged token is ignored; what remains is a stranger's word.
    let raw = arf(FEEDBACK, "message/rfc822", &original("forgedtoken"));
    let s = setup();
    assert!(matches!(
        take(&s.complaints, &raw, None),
        Outcome::KeptAside {
            why: Malformed::Unverified,
            ..
        }
    ));
    assert!(!suppressed(
        &s.complaints,
        Scope::Account("news"),
        "reader@example.net"
    ));
    assert_eq!(s.complaints.counts.get("news").complaints, 0);

    let s = setup();
    let c = with_reporters(s.complaints);
    // not signed by an allowed reporter: kept aside, nothing counted
    assert!(matches!(
        take(&c, &raw, None),
        Outcome::KeptAside {
            why: Malformed::Unverified,
            ..
        }
    ));
    assert!(!suppressed(
        &c,
        Scope::Account("news"),
        "reader@example.net"
    ));
    // signed: Original-Rcpt-To and the From/DKIM domain decide
    let Outcome::Recorded(r) = take(&c, &raw, Some("fbl.isp.example")) else {
        panic!("not recorded")
    };
    assert_eq!(r.complaint.account, "news");
    assert_eq!(r.complaint.list, None);
    assert!(suppressed(&c, Scope::Account("news"), "reader@example.net"));
    // No account fits: kept aside, never a global complaint.
    let raw = arf(
        "Feedback-Type: fraud\r\nOriginal-Rcpt-To: someone@example.org",
        "text/rfc822-headers",
        "From: <x@unknown.example>\r\nSubject: x\r\n",
    );
    assert!(matches!(
        take(&c, &raw, Some("fbl.isp.example")),
        Outcome::KeptAside {
            why: Malformed::NoAccount,
            ..
        }
    ));
    assert!(!suppressed(&c, Scope::Global, "someone@example.org"));
}

#[test]
fn requiring_a_token_keeps_untokened_reports_aside() {
    let s = setup();
    let c = with_reporters(s.complaints).requiring_token(true);
    let raw = arf(FEEDBACK, "message/rfc822", &original("forgedtoken"));
    assert!(matches!(
        take(&c, &raw, Some("fbl.isp.example")),
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
    assert!(matches!(take(&c, &raw, None), Outcome::Recorded(_)));
    assert!(suppressed(&c, Scope::Account("news"), "reader@example.net"));
}

#[test]
fn unusable_reports_are_kept_aside_and_non_complaints_ignored() {
    let s = setup();
    let c = with_reporters(s.complaints);
    let raw = b"Subject: you spammed me\r\n\r\nstop it\r\n";
    let Outcome::KeptAside { file, why } = take(&c, raw, None) else {
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
    // Nothing to tie it to, even from an allowed reporter.
    let raw = arf(
        "Feedback-Type: abuse\r\nOriginal-Rcpt-To: redacted",
        "text/rfc822-headers",
        "Subject: x\r\n",
    );
    assert!(matches!(
        take(&c, &raw, Some("fbl.isp.example")),
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
    assert_eq!(take(&c, &raw, None), Outcome::NotAComplaint);
    assert!(!suppressed(&c, Scope::Account("news"), "fan@example.net"));
    assert_eq!(c.counts.get("news").complaints, 0);
    let kept = std::fs::read_dir(s._dir.path().join("complaints/malformed"))
        .unwrap()
        .count();
    assert_eq!(kept, 2);
}

#[test]
fn what_is_kept_aside_is_capped_in_files_and_bytes() {
    let s = setup();
    let mut c = s.complaints;
    c.aside = crate::governance::intake::KeptAside::new(&c.malformed_dir, 3, 1000);
    let garbage = vec![b'x'; 400];
    let kept = |o: Outcome| matches!(o, Outcome::KeptAside { file: Some(_), .. });
    assert!(kept(take(&c, &garbage, None)));
    assert!(kept(take(&c, &garbage, None)));
    // a third of 400 octets would pass 1000: dropped (still counted and answered)
    assert!(!kept(take(&c, &garbage, None)));
    assert!(kept(take(&c, b"tiny", None)));
    assert!(!kept(take(&c, b"tiny", None)), "three files at most");
    let dir = s._dir.path().join("complaints/malformed");
    assert_eq!(std::fs::read_dir(dir).unwrap().count(), 3);
}

#[test]
fn a_hostile_mime_tree_is_refused_before_parsing() {
    let s = setup();
    let c = &s.complaints;
    // 100 000 empty parts in 1 MB: mail-parser would build every one of them.
    let mut raw =
        b"Content-Type: multipart/report; report-type=feedback-report; boundary=b\r\n\r\n".to_vec();
    for _ in 0..100_000 {
        raw.extend_from_slice(b"--b\r\n\r\n");
    }
    raw.extend_from_slice(b"--b--\r\n");
    assert!(!arf::within_mime_budget(&raw));
    assert_eq!(take(c, &raw, None), Outcome::TooComplex);
    // deep nesting too
    let mut nested = Vec::new();
    for i in 0..40 {
        nested.extend_from_slice(
            format!("Content-Type: multipart/mixed; boundary=n{i}\r\n\r\n--n{i}\r\n").as_bytes(),
        );
    }
    assert_eq!(take(c, &nested, None), Outcome::TooComplex);
    // folding the field does not hide the type (found by tests/interop/attacks.sh)
    let mut folded = Vec::new();
    for i in 0..20 {
        folded.extend_from_slice(
            format!("Content-Type:\r\n multipart/mixed;\r\n\tboundary=f{i}\r\n\r\n--f{i}\r\n")
                .as_bytes(),
        );
    }
    assert!(!arf::within_mime_budget(&folded));
    // a type folded after the word, and parameters mentioning it, count once per field
    let mut one = Vec::new();
    for i in 0..16 {
        one.extend_from_slice(
            format!("Content-Type: multipart/mixed;\r\n boundary=\"multipart-{i}\"\r\n\r\n--multipart-{i}\r\n")
                .as_bytes(),
        );
    }
    assert!(arf::within_mime_budget(&one));
    // a real report is well within it
    assert!(arf::within_mime_budget(&arf(
        FEEDBACK,
        "message/rfc822",
        &original("t")
    )));
    assert!(!s._dir.path().join("complaints/malformed").exists());
}

#[test]
fn reports_per_client_address_are_capped_per_hour() {
    let s = setup();
    let c = s.complaints.with_limits(Limits {
        max_reports_per_ip: 3,
    });
    let a: IpAddr = "198.51.100.7".parse().unwrap();
    assert!((0..3).all(|_| c.admit_report(a)));
    assert!(!c.admit_report(a));
    assert!(c.admit_report("198.51.100.8".parse().unwrap()));
    // an IPv6 /64 is one client
    let v6 = |s: &str| -> IpAddr { s.parse().unwrap() };
    assert!((0..3).all(|i| c.admit_report(v6(&format!("2001:db8::{i}")))));
    assert!(!c.admit_report(v6("2001:db8::ffff")));
}

#[test]
fn the_feedback_address_matches_without_regard_to_case() {
    let s = setup();
    let c = &s.complaints;
    assert!(c.is_feedback_address(&Address::parse("FBL@Relay.Test").unwrap()));
    assert!(!c.is_feedback_address(&Address::parse("fbl@other.test").unwrap()));
    assert!(!c.is_feedback_address(&Address::parse("fbl2@relay.test").unwrap()));
}
