//! The ARF report reader, on whatever a stranger mails to the feedback address, behind
//! the MIME budget the relay checks first (as `Complaints::examine` does).
//!
//! Checks: no panic; what it returns is within its stated bounds (tokens at most
//! `MAX_TOKEN_LEN`, a lower-case feedback type, normalised domains).
#![no_main]

use libfuzzer_sys::fuzz_target;
use optin_relay::governance::complaints::arf::within_mime_budget;
use optin_relay::governance::complaints::parse;
use optin_relay::rewrite::token::MAX_TOKEN_LEN;

fuzz_target!(|data: &[u8]| {
    if !within_mime_budget(data) {
        return;
    }
    let Ok(report) = parse(data) else {
        return;
    };
    assert!(!report.feedback_type.is_empty());
    assert_eq!(
        report.feedback_type,
        report.feedback_type.to_ascii_lowercase()
    );
    assert!(
        report
            .tokens
            .iter()
            .all(|t| !t.is_empty() && t.len() <= MAX_TOKEN_LEN)
    );
    for domain in &report.sender_domains {
        assert!(
            !domain.is_empty() && *domain == domain.to_ascii_lowercase(),
            "{domain:?}"
        );
    }
    if let Some(rcpt) = &report.original_rcpt {
        assert!(rcpt.contains('@'), "{rcpt:?}");
    }
});
