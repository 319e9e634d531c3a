//! Tests of the bounce classifier: status codes alone, words before generic codes,
//! temporary failures, the policy's own rules, status patterns, names and actions.

use super::*;

fn ev(code: Option<u16>, status: Option<&str>, text: &'static str) -> Evidence<'static> {
    Evidence {
        code,
        status: status.and_then(Status::parse),
        text,
        domain: "example.net",
    }
}

fn category(code: Option<u16>, status: Option<&str>, text: &'static str) -> Category {
    Classifier::default()
        .classify(&ev(code, status, text))
        .category
}

#[test]
fn status_codes_alone() {
    use Category::*;
    for (status, want) in [
        ("5.1.1", InvalidRecipient),
        ("5.1.6", InvalidRecipient),
        ("5.1.2", BadDomain),
        ("5.1.10", BadDomain),
        ("5.2.1", Inactive),
        ("5.2.2", MailboxFull),
        ("4.2.2", MailboxFull),
        ("5.3.4", MessageTooLarge),
        ("5.6.1", ContentRejected),
        ("5.7.1", SpamBlock),
        ("5.7.26", AuthFailure),
        ("5.4.6", Routing),
        ("4.4.1", Routing),
        ("4.4.7", Transient),
        ("4.7.1", Transient),
        ("5.5.2", Other),
    ] {
        assert_eq!(category(None, Some(status), "x"), want, "{status}");
    }
    assert_eq!(category(Some(552), None, "x"), MailboxFull);
    assert_eq!(category(Some(451), None, "x"), Transient);
    assert_eq!(category(Some(550), None, "x"), Other);
    assert_eq!(category(None, None, "x"), Other);
}

#[test]
fn words_decide_before_generic_codes() {
    use Category::*;
    assert_eq!(
        category(Some(554), Some("5.7.1"), "Message rejected: virus found"),
        ContentRejected
    );
    assert_eq!(
        category(
            Some(550),
            Some("5.4.1"),
            "Recipient address rejected: Access denied. AS(201806281)"
        ),
        InvalidRecipient
    );
    assert_eq!(
        category(Some(421), Some("4.7.0"), "Too many messages, rate limited"),
        RateLimited
    );
    assert_eq!(
        category(Some(550), Some("5.7.1"), "blocked using zen.spamhaus.org"),
        SpamBlock
    );
    assert_eq!(
        category(
            Some(550),
            None,
            "Requested action not taken: mailbox unavailable"
        ),
        InvalidRecipient
    );
    assert_eq!(
        category(
            Some(550),
            Some("5.7.26"),
            "Unauthenticated email from x is not accepted due to domain's DMARC policy"
        ),
        AuthFailure
    );
}

#[test]
fn a_temporary_failure_never_names_the_address_dead() {
    let v = Classifier::default().classify(&ev(Some(450), Some("4.1.1"), "user unknown"));
    assert_eq!(v.category, Category::Transient);
    assert!(v.rule.ends_with("(temporary)"), "{}", v.rule);
    let v = Classifier::default().classify(&ev(
        Some(450),
        None,
        "Host or domain name not found, try again",
    ));
    assert_eq!(v.category, Category::Routing);
}

#[test]
fn own_rules_come_first_and_name_themselves() {
    let own = Rule {
        name: "acme: their block text".into(),
        category: Category::RateLimited,
        status: StatusPattern::parse("5.7.*"),
        codes: vec![554],
        text: vec!["slow down please".into()],
        domains: vec![".acme.example".into()],
    };
    let c = Classifier::with_rules(vec![own]);
    let mut e = ev(Some(554), Some("5.7.1"), "Spam. Slow down please");
    e.domain = "mx.acme.example";
    assert_eq!(
        c.classify(&e),
        Verdict::new(Category::RateLimited, "acme: their block text")
    );
    // Every condition must hold: another domain, another code.
    e.domain = "acme.example.org";
    assert_eq!(c.classify(&e).category, Category::SpamBlock);
    let e = ev(Some(550), Some("5.7.1"), "slow down please");
    assert_eq!(c.classify(&e).category, Category::SpamBlock);
}

#[test]
fn status_patterns() {
    let p = StatusPattern::parse("5.7.*").unwrap();
    assert!(p.matches(Status::new(5, 7, 26)));
    assert!(!p.matches(Status::new(4, 7, 1)));
    assert_eq!(p.to_string(), "5.7.*");
    assert!(
        StatusPattern::parse("*.2.2")
            .unwrap()
            .matches(Status::new(4, 2, 2))
    );
    for bad in ["", "5", "5.1", "6.1.1", "5.1.1.1", "5.x.1", "5.1000.1"] {
        assert!(StatusPattern::parse(bad).is_none(), "{bad}");
    }
}

#[test]
fn names_round_trip_and_actions() {
    for c in Category::ALL {
        assert_eq!(Category::parse(c.as_str()), Some(c));
    }
    assert_eq!(Category::InvalidRecipient.action(), Action::Suppress);
    assert_eq!(Category::MailboxFull.action(), Action::Streak);
    for c in [
        Category::SpamBlock,
        Category::AuthFailure,
        Category::RateLimited,
        Category::Routing,
    ] {
        assert_eq!(c.action(), Action::Count, "{c}");
        assert_ne!(c.fault(), Fault::Recipient, "{c}");
    }
}

#[test]
fn long_text_is_cut_on_a_character_boundary() {
    let text: &'static str = Box::leak("é".repeat(MAX_TEXT).into_boxed_str());
    let v = Classifier::default().classify(&ev(Some(550), Some("5.1.1"), text));
    assert_eq!(v.category, Category::InvalidRecipient);
}
