//! The bounce reader and classifier, on whatever a stranger mails to a return path, behind
//! the MIME budget the relay checks first (as `Bounces::examine` does).
//!
//! Checks: no panic; what it returns is within its stated bounds (a report's text at most
//! `MAX_TEXT` octets, recipients with an `@`, a verdict only for a report, a hard bounce
//! only for a permanent failure of a suppressing category).
#![no_main]

use libfuzzer_sys::fuzz_target;
use optin_relay::bounce::parse::{Action, Kind};
use optin_relay::bounce::{Classifier, MAX_TEXT, explain};
use optin_relay::governance::complaints::arf::within_mime_budget;

fuzz_target!(|data: &[u8]| {
    if !within_mime_budget(data) {
        return;
    }
    let e = explain(data, &Classifier::default(), Some("jane@example.net"));
    for r in &e.bounce.reports {
        assert!(r.text.len() <= MAX_TEXT, "{}", r.text.len());
        if let Some(rcpt) = &r.recipient {
            assert!(rcpt.contains('@'), "{rcpt:?}");
        }
    }
    match e.bounce.kind {
        Kind::Dsn | Kind::Text => assert!(!e.bounce.reports.is_empty()),
        _ => assert!(e.report.is_none() && e.verdict.is_none()),
    }
    assert_eq!(e.report.is_some(), e.verdict.is_some());
    if e.hard {
        let r = e.report.as_ref().expect("a report");
        assert_eq!(r.action, Action::Failed);
        assert!(r.permanent());
    }
});
