//! Unit tests of the content rules: reading them from policy TOML (and the problems a bad
//! rule set makes), word boundaries, normalisation, link hosts, decoded bodies.

use super::*;
use crate::policy::Policy;

/// A policy with one loopback account and `content` appended.
fn policy(content: &str) -> Result<Policy, crate::config::reader::Problems> {
    Policy::from_toml(
        "p.toml",
        &format!("[accounts.local]\nnetworks = [\"127.0.0.0/8\"]\n{content}"),
    )
}

fn rules(content: &str) -> Content {
    policy(content)
        .unwrap_or_else(|e| panic!("{e}"))
        .content()
        .clone()
}

/// A plain-text message with `subject` and `body`.
fn message(subject: &str, body: &str) -> Vec<u8> {
    format!("From: a@shop.example\r\nTo: b@example.net\r\nSubject: {subject}\r\n\r\n{body}\r\n")
        .into_bytes()
}

fn category(content: &Content, raw: &[u8]) -> Option<String> {
    content.check(raw).map(|m| m.category)
}

const PHARMA: &str = r#"
[[content.category]]
name = "pharma"
phrases = ["cialis", "no prescription needed", "$$$", "-50% pills"]
"#;

#[test]
fn phrases_match_on_word_boundaries_only() {
    let c = rules(PHARMA);
    let hit = |body: &str| category(&c, &message("Hello", body));
    assert_eq!(hit("Cheap CIALIS here"), Some("pharma".into()));
    assert_eq!(hit("cialis."), Some("pharma".into()));
    assert_eq!(hit("(cialis)"), Some("pharma".into()));
    assert_eq!(hit("Ask our specialist about it"), None);
    assert_eq!(hit("cialisx and xcialis"), None);
    assert_eq!(hit("cialis_"), None);
    // The first candidate fails its boundary; a later one in the same text still counts.
    assert_eq!(hit("specialists sell cialis"), Some("pharma".into()));
    // Phrases that start or end with punctuation need no boundary there.
    assert_eq!(hit("make $$$$ now"), Some("pharma".into()));
    assert_eq!(hit("x-50% pills"), Some("pharma".into()));
}

#[test]
fn text_is_normalised_before_matching() {
    let c = rules(PHARMA);
    let hit = |body: &str| category(&c, &message("Hello", body));
    assert_eq!(hit("No\r\n  Prescription\tneeded!"), Some("pharma".into()));
    assert_eq!(hit("ci\u{00AD}al\u{200B}is"), Some("pharma".into()));
    assert_eq!(hit("no\u{00A0}prescription needed"), Some("pharma".into()));
    assert_eq!(hit("no prescription is needed"), None);
    // A phrase written with odd case and spacing in the policy is normalised too.
    let c = rules("[[content.category]]\nname = \"x\"\nphrases = [\"  Guaranteed   INCOME \"]\n");
    assert_eq!(
        category(&c, &message("guaranteed income!", "")),
        Some("x".into())
    );
}

#[test]
fn subject_and_decoded_bodies_are_searched() {
    let c = rules(PHARMA);
    assert_eq!(
        category(&c, &message("Buy =?UTF-8?B?Q2lhbGlz?= today", "hi")),
        Some("pharma".into())
    );
    let qp = b"Subject: hi\r\nContent-Type: text/plain\r\n\
        Content-Transfer-Encoding: quoted-printable\r\n\r\nci=\r\nalis=20now\r\n";
    assert_eq!(category(&c, qp), Some("pharma".into()));
    let b64 = b"Subject: hi\r\nContent-Type: text/plain\r\n\
        Content-Transfer-Encoding: base64\r\n\r\nQnV5IGNpYWxpcyBub3c=\r\n";
    assert_eq!(category(&c, b64), Some("pharma".into()));
    let html = b"Subject: hi\r\nContent-Type: text/html\r\n\r\n\
        <p>Buy <b>ci</b>alis &amp; more</p><!-- -->\r\n";
    assert_eq!(category(&c, html), Some("pharma".into()));
    // A phrase only inside a tag (an attribute) is not visible text.
    let tag = b"Subject: hi\r\nContent-Type: text/html\r\n\r\n<p class=\"cialis\">x</p>\r\n";
    assert_eq!(category(&c, tag), None);
    let multipart = b"Subject: hi\r\nMIME-Version: 1.0\r\n\
        Content-Type: multipart/alternative; boundary=\"b\"\r\n\r\n\
        --b\r\nContent-Type: text/plain\r\n\r\nclean\r\n\
        --b\r\nContent-Type: text/html\r\n\r\n<p>cialis</p>\r\n--b--\r\n";
    assert_eq!(category(&c, multipart), Some("pharma".into()));
}

#[test]
fn patterns_are_case_insensitive_and_report_their_category() {
    let c = rules(
        r#"
        [[content.category]]
        name = "first"
        patterns = ['\bpenny\s+stocks?\b']
        [[content.category]]
        name = "second"
        patterns = ['stock']
        "#,
    );
    let m = c
        .check(&message("Alert", "PENNY\r\n  STOCK alert"))
        .unwrap();
    assert_eq!(m.category, "first");
    assert_eq!(m.rule, r#"pattern "\\bpenny\\s+stocks?\\b""#);
    assert_eq!(category(&c, &message("stock", "")), Some("second".into()));
    assert_eq!(category(&c, &message("hello", "")), None);
}

#[test]
fn html_link_hosts_are_extracted() {
    let html = r#"<a href="https://Shop.Example/x?y=1">a</a> <A HREF='//cdn.example:8080/p'>
        <a href=http://user@pills.example/path>c</a> <a href="/relative">
        <a href="mailto:sales@lists.example?subject=x"> <a href = "https&#58;//enc.example/">
        <a href="https://192.0.2.1/"> <a href="javascript:void(0)"> <link href="https://ünï.example/">"#;
    let hosts: Vec<String> = html_link_hosts(html).collect();
    assert_eq!(
        hosts,
        [
            "shop.example",
            "cdn.example",
            "pills.example",
            "lists.example",
            "enc.example",
            idna::domain_to_ascii("ünï.example").unwrap().as_str(),
        ]
    );
}

#[test]
fn text_link_hosts_are_extracted() {
    let mut text = String::new();
    normalise(
        "Go to HTTPS://Pills.Example/buy, or www.cheap.example. \
         Not awww.x.example nor http://localhost/ — but http://a.b.example:80.",
        &mut text,
    );
    let hosts: Vec<String> = text_link_hosts(&text).collect();
    assert_eq!(hosts, ["pills.example", "www.cheap.example", "a.b.example"]);
}

#[test]
fn link_domains_cover_subdomains_only() {
    let c = rules(
        r#"
        [[content.category]]
        name = "broker-lists"
        link_domains = ["leads.example", "Bulk-Mail.EXAMPLE."]
        "#,
    );
    let html = |href: &str| {
        format!("Subject: hi\r\nContent-Type: text/html\r\n\r\n<a href=\"{href}\">offer</a>\r\n")
            .into_bytes()
    };
    assert_eq!(
        category(&c, &html("https://leads.example/buy")),
        Some("broker-lists".into())
    );
    assert_eq!(
        category(&c, &html("https://www.eu.leads.example/")),
        Some("broker-lists".into())
    );
    assert_eq!(
        category(&c, &html("https://bulk-mail.example/")),
        Some("broker-lists".into())
    );
    assert_eq!(category(&c, &html("https://badleads.example/")), None);
    assert_eq!(category(&c, &html("https://leads.example.org/")), None);
    assert_eq!(
        category(&c, &message("hi", "see http://x.leads.example/now")),
        Some("broker-lists".into())
    );
    let m = c.check(&html("https://leads.example/")).unwrap();
    assert_eq!(m.rule, "link domain \"leads.example\"");
    // A domain mentioned in text without a link is no link.
    assert_eq!(category(&c, &message("hi", "leads.example")), None);
}

#[test]
fn first_match_in_subject_then_bodies() {
    let c = rules(
        r#"
        [content]
        freeze_account = true
        [[content.category]]
        name = "a"
        phrases = ["alpha"]
        [[content.category]]
        name = "b"
        phrases = ["beta"]
        "#,
    );
    assert!(c.freeze_account());
    assert_eq!(c.categories(), ["a", "b"]);
    let m = c.check(&message("beta", "alpha")).unwrap();
    assert_eq!(
        m,
        Match {
            category: "b".into(),
            rule: "phrase \"beta\"".into(),
            freeze: true,
        }
    );
}

#[test]
fn no_categories_means_nothing_is_checked() {
    let p = Policy::embedded_default();
    assert!(p.content().is_empty());
    assert!(!p.content().freeze_account());
    assert_eq!(p.content().check(&message("cialis", "cialis")), None);
}

#[test]
fn bad_rule_sets_are_policy_problems_naming_the_category() {
    let err = policy(
        r#"
        [content]
        freeze_account = "yes"
        [[content.category]]
        name = "pharma"
        patterns = ["(unclosed", "ok+", "a*"]
        phrases = ["", "fine"]
        link_domains = ["not a domain", "localhost"]
        [[content.category]]
        name = "empty"
        [[content.category]]
        name = "pharma"
        phrases = ["x"]
        colour = "red"
        [[content.category]]
        name = "Bad Name"
        phrases = ["y"]
        "#,
    )
    .unwrap_err();
    let text = err.to_string();
    for needle in [
        "content.freeze_account:",
        r#"content.category[0].patterns: category "pharma": pattern "(unclosed" is not a valid regex: unclosed group"#,
        r#"content.category[0].patterns: category "pharma": pattern "a*" matches empty text"#,
        r#"content.category[0].phrases: category "pharma": an empty phrase"#,
        r#"content.category[0].link_domains: category "pharma": "not a domain" is not a domain"#,
        r#"content.category[0].link_domains: category "pharma": "localhost" is not a domain"#,
        r#"content.category[1]: category "empty" is empty"#,
        r#"content.category[2].name: category "pharma" is defined twice"#,
        "content.category[2].colour: unknown key",
        r#"content.category[3].name: category "Bad Name": names use"#,
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    assert!(!text.contains("ok+"), "{text}");
}

#[test]
fn unreadable_input_never_panics() {
    let c = rules(PHARMA);
    for raw in [
        &b""[..],
        b"\r\n\r\n",
        b"Subject: =?x?Q?cialis",
        b"Content-Type: multipart/mixed; boundary=\"\"\r\n\r\n--\r\n",
        b"Content-Type: text/html\r\n\r\n<a href=",
        b"Content-Type: text/html\r\n\r\n<a href=\"mailto:@\">",
        b"\xff\xfe cialis",
    ] {
        let _ = c.check(raw);
    }
}

#[test]
fn word_boundaries_are_removed_only_for_the_candidate_set() {
    assert_eq!(
        without_word_boundaries(r"\bpenny\s+stocks?\b"),
        r"penny\s+stocks?"
    );
    assert_eq!(without_word_boundaries(r"\b{start}x\b{end}\Bq\<y\>"), "xqy");
    assert_eq!(without_word_boundaries(r"a\\b[\]b]\.c"), r"a\\b[\]b]\.c");
    assert_eq!(without_word_boundaries(r"[]\b]"), r"[]\b]");
    assert_eq!(
        without_word_boundaries(r"[^]x]\by[[:alpha:]]\b"),
        r"[^]x]y[[:alpha:]]"
    );
}

#[test]
fn pattern_word_boundaries_stay_unicode() {
    let c = rules(
        r#"
        [[content.category]]
        name = "x"
        patterns = ['\bärzte\b', '\bcaf\b']
        "#,
    );
    let hit = |body: &str| category(&c, &message("Hi", body));
    // A non-ASCII letter is a word character: `\b` sits before "ä" after a space ...
    assert_eq!(hit("Die Ärzte sagen: 20 € Rabatt"), Some("x".into()));
    // ... and not between "f" and "é".
    assert_eq!(hit("Le café est ouvert, 5 €"), None);
    assert_eq!(hit("Zahnärzte empfehlen"), None);
}
