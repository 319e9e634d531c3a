//! The click and open tracking rewrite (`rewrite::track`) on arbitrary body bytes: the
//! first octet picks HTML or text and what is tracked, the rest is the decoded body.
//!
//! Checks: no panic; every click link it writes opens as a click token whose target is an
//! http(s) URL within `MAX_TRACKED_URL` octets, and at most `MAX_LINKS` of them per body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use optin_relay::envelope::QueueId;
use optin_relay::rewrite::token::{Engagement, MAX_TRACKED_URL, TokenKeys};
use optin_relay::rewrite::track::{MAX_LINKS, Tracking};

const PUBLIC: &str = "https://t.relay.example";

fuzz_target!(|data: &[u8]| {
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let keys = TokenKeys::from_keys(&[(1, [7; 32])]);
    let t = Tracking {
        keys: &keys,
        public_url: PUBLIC,
        base: Engagement {
            click: false,
            id: QueueId(1),
            account: "a".into(),
            list: "l".into(),
            campaign: "c".into(),
            url: String::new(),
            address: "x@example.net".into(),
        },
        clicks: flags & 1 != 0,
        opens: flags & 2 != 0,
    };
    let html = flags & 4 != 0;
    let Some(out) = t.body(html, body) else {
        return;
    };
    let text = String::from_utf8_lossy(&out);
    let prefix = format!("{PUBLIC}/c/");
    let mut links = 0;
    for rest in text.split(prefix.as_str()).skip(1) {
        let token: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        // A body that itself contained the prefix may hold tokens that are no ours.
        let Ok(e) = keys.open_engagement(&token) else {
            continue;
        };
        links += 1;
        assert!(e.click);
        let lower = e.url.to_ascii_lowercase();
        assert!(lower.starts_with("http://") || lower.starts_with("https://"), "{:?}", e.url);
        assert!(e.url.len() <= MAX_TRACKED_URL);
    }
    assert!(links <= MAX_LINKS, "{links}");
});
