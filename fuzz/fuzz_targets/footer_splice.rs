//! The consent footer (plan, splice, wrapper) and the header rewrite, on any message the
//! relay could have stored.
//!
//! Input: the first octet picks one of three footers (ASCII, Latin-1, UTF-8 only); the
//! rest becomes a message as the DATA receiver would store it (CRLF line breaks, no NUL,
//! lines of at most 998 octets). Checks: `check` and the plan agree; when the splice
//! succeeds the output is CRLF-clean with lines of at most 998 octets, and reading it
//! again finds the footer in every body it would give one (so a wrapped message is found
//! with its footer part); the header rewrite keeps all of that and adds its fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use optin_relay::rewrite::footer::{Footer, Plan, check, fuzzing};
use optin_relay::rewrite::headers;

const FOOTERS: [Footer<'static>; 3] = [
    Footer {
        text: "You get this because you subscribed.\nUnsubscribe: https://u.example/u/TOKEN",
        html: "<p>You get this because you subscribed. <a href=\"https://u.example/u/TOKEN\">Unsubscribe</a></p>",
    },
    Footer {
        text: "Désabonnement : https://u.example/u/TOKEN",
        html: "<p><a href=\"https://u.example/u/TOKEN\">Désabonnement</a></p>",
    },
    Footer {
        text: "Vous êtes inscrit… — Désabonnement: https://u.example/u/TOKEN",
        html: "<div>Vous êtes inscrit… —\n<a href=\"https://u.example/u/TOKEN\">Désabonnement</a></div>",
    },
];

/// The octets as the DATA receiver stores them: every CR, LF or CRLF a CRLF, no NUL, no
/// line over 998 octets.
fn as_stored(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 16 + 2);
    let mut column = 0;
    let mut i = 0;
    while let Some(&c) = data.get(i) {
        i += 1;
        match c {
            b'\r' | b'\n' => {
                if c == b'\r' && data.get(i) == Some(&b'\n') {
                    i += 1;
                }
                out.extend_from_slice(b"\r\n");
                column = 0;
            }
            0 => {}
            c => {
                if column == 998 {
                    out.extend_from_slice(b"\r\n");
                    column = 0;
                }
                out.push(c);
                column += 1;
            }
        }
    }
    out
}

fn assert_clean(what: &str, message: &[u8]) {
    let mut column = 0;
    for (at, &c) in message.iter().enumerate() {
        match c {
            b'\r' => assert_eq!(message.get(at + 1), Some(&b'\n'), "{what}: bare CR at {at}"),
            b'\n' => {
                assert!(
                    at > 0 && message[at - 1] == b'\r',
                    "{what}: bare LF at {at}"
                );
                column = 0;
            }
            _ => {
                column += 1;
                assert!(column <= 998, "{what}: line over 998 octets at {at}");
            }
        }
    }
}

/// The footer as it reads once inserted: CRLF line breaks, none at the end.
fn crlf(text: &str) -> String {
    text.trim_end_matches(['\r', '\n'])
        .replace("\r\n", "\n")
        .replace('\n', "\r\n")
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let footer = FOOTERS[usize::from(which) % FOOTERS.len()];
    let message = as_stored(rest);
    let plan = Plan::new(&message);
    assert_eq!(
        check(&message),
        plan.as_ref().map(|_| ()).map_err(Clone::clone)
    );
    let Ok(plan) = plan else {
        return;
    };
    let output = plan.apply(&message, &footer).expect("a plan applies");
    assert_clean("footer", &output);
    let bodies = fuzzing::bodies(&output).expect("the output reads again");
    assert!(!bodies.is_empty(), "no body with a footer in the output");
    for (html, text) in &bodies {
        let wanted = crlf(if *html { footer.html } else { footer.text });
        assert!(text.contains(&wanted), "footer missing: {text:?}");
    }
    let added = [
        "List-Unsubscribe: <https://u.example/u/TOKEN>,\r\n <mailto:unsubscribe+TOKEN@u.example>\r\n".to_string(),
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n".to_string(),
    ];
    let rewritten = headers::rewrite(&output, &added, true, "relay.example");
    assert_clean("header rewrite", &rewritten);
    let (fields, _) = headers::fields(&rewritten);
    for name in [
        "list-unsubscribe",
        "list-unsubscribe-post",
        "date",
        "message-id",
    ] {
        assert!(
            fields.iter().any(|f| headers::is(&rewritten, f, name)),
            "{name} missing after the header rewrite"
        );
    }
});
