//! Tests of DKIM signing: both key types verified with mail-auth, tampering detected, h= contents, key-file errors.

use super::*;
use proptest::prelude::*;
use rustls_pki_types::SubjectPublicKeyInfoDer;

const DOMAIN: &str = "news.example.com";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/dkim")
        .join(name)
}

fn rsa_key() -> DkimKey {
    DkimKey::from_pem_file(DOMAIN, "rsa2026", &fixture("rsa2048-pkcs1.pem")).unwrap()
}

fn ed25519_key() -> DkimKey {
    DkimKey::from_pem_file(DOMAIN, "ed2026", &fixture("ed25519-pkcs8.pem")).unwrap()
}

fn keys() -> [DkimKey; 2] {
    [rsa_key(), ed25519_key()]
}

/// A bulk message as the relay delivers it, after per-recipient rewriting.
fn message() -> Vec<u8> {
    concat!(
        "From: Example News <news@news.example.com>\r\n",
        "To: ann@example.net\r\n",
        "Subject: Our spring offers\r\n",
        "Date: Sat, 21 Nov 2026 12:00:00 +0000\r\n",
        "Message-ID: <offer-1@news.example.com>\r\n",
        "MIME-Version: 1.0\r\n",
        "Content-Type: text/plain; charset=utf-8\r\n",
        "Content-Transfer-Encoding: 8bit\r\n",
        "List-Unsubscribe: <https://news.example.com/u/AbC123>\r\n",
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
        "List-Id: Spring offers <offers.news.example.com>\r\n",
        "Feedback-ID: spring:offers:news\r\n",
        "\r\n",
        "Hello Ann,\r\n",
        "\r\n",
        "everything is 20% off this week.\r\n",
    )
    .as_bytes()
    .to_vec()
}

fn signed(key: &DkimKey, message: &[u8]) -> Vec<u8> {
    let mut out = key.sign(message).unwrap().into_bytes();
    out.extend_from_slice(message);
    out
}

fn verify(key: &DkimKey, message: &[u8]) -> Result<(), String> {
    verify_with_record(message, key.domain(), key.selector(), &key.dns_record())
}

/// `message` with the first `from` replaced by `to`.
fn replaced(message: &[u8], from: &str, to: &str) -> Vec<u8> {
    let text = std::str::from_utf8(message).unwrap();
    assert!(text.contains(from), "{from:?} not in the message");
    text.replacen(from, to, 1).into_bytes()
}

/// The value of tag `name` in a signature header, unfolded and without whitespace.
fn tag(header: &str, name: &str) -> Option<String> {
    let value = header.split_once(':').unwrap().1;
    value.split(';').find_map(|part| {
        let (tag, value) = part.split_once('=')?;
        (tag.trim() == name).then(|| value.split_whitespace().collect())
    })
}

/// The `h=` entries, lower case.
fn signed_names(header: &str) -> Vec<String> {
    tag(header, "h")
        .unwrap()
        .split(':')
        .map(str::to_ascii_lowercase)
        .collect()
}

fn count(names: &[String], name: &str) -> usize {
    names
        .iter()
        .filter(|n| n.eq_ignore_ascii_case(name))
        .count()
}

#[test]
fn both_algorithms_sign_and_verify() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (key, a) in keys().iter().zip(["rsa-sha256", "ed25519-sha256"]) {
        let header = key.sign(&message()).unwrap();
        verify(key, &signed(key, &message())).unwrap();

        assert!(header.starts_with("DKIM-Signature: v=1; "), "{header}");
        assert!(header.ends_with(";\r\n"), "{header}");
        for line in header.trim_end().split("\r\n").skip(1) {
            assert!(line.starts_with('\t') && line.len() <= 78, "{line:?}");
        }
        assert!(!header.replace("\r\n", "").contains('\n'));
        assert_eq!(tag(&header, "a").as_deref(), Some(a));
        assert_eq!(tag(&header, "c").as_deref(), Some("relaxed/relaxed"));
        assert_eq!(tag(&header, "d").as_deref(), Some(DOMAIN));
        assert_eq!(tag(&header, "s").as_deref(), Some(key.selector()));
        let t: u64 = tag(&header, "t").unwrap().parse().unwrap();
        assert!(t.abs_diff(now) < 300, "t={t}, now={now}");
        for absent in ["l", "x", "i"] {
            assert_eq!(tag(&header, absent), None, "{absent}= in {header}");
        }
    }
}

#[test]
fn pkcs1_and_pkcs8_of_one_key_publish_the_same_record() {
    let pkcs1 = rsa_key();
    let pkcs8 = DkimKey::from_pem_file(DOMAIN, "rsa2026", &fixture("rsa2048-pkcs8.pem")).unwrap();
    assert_eq!(pkcs8.algorithm(), Algorithm::Rsa);
    assert_eq!(pkcs1.dns_record(), pkcs8.dns_record());
    verify(&pkcs1, &signed(&pkcs8, &message())).unwrap();
}

#[test]
fn dns_records_carry_what_openssl_publishes() {
    let spki = |name| SubjectPublicKeyInfoDer::from_pem_file(fixture(name)).unwrap();

    let rsa = rsa_key();
    assert_eq!(rsa.algorithm(), Algorithm::Rsa);
    let expected = STANDARD.encode(spki("rsa2048-public.pem").as_ref());
    assert_eq!(rsa.dns_record(), format!("v=DKIM1; k=rsa; p={expected}"));

    let ed = ed25519_key();
    assert_eq!(ed.algorithm(), Algorithm::Ed25519);
    let openssl_spki = spki("ed25519-public.pem");
    let raw = &openssl_spki.as_ref()[openssl_spki.as_ref().len() - 32..];
    assert_eq!(
        ed.dns_record(),
        format!("v=DKIM1; k=ed25519; p={}", STANDARD.encode(raw))
    );
}

#[test]
fn altered_messages_fail() {
    for key in keys() {
        let good = signed(&key, &message());
        verify(&key, &good).unwrap();
        let alterations = [
            replaced(&good, "20% off", "30% off"),
            replaced(&good, "Hello Ann,\r\n", "Hello Ann!\r\n"),
            replaced(&good, "Our spring offers", "Our spring offer"),
            replaced(&good, "/u/AbC123", "/u/AbC124"),
            replaced(
                &good,
                "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
                "",
            ),
            replaced(&good, "ann@example.net", "bob@example.net"),
            replaced(&good, "Feedback-ID: spring:", "Feedback-ID: summer:"),
        ];
        for altered in alterations {
            let outcome = verify(&key, &altered);
            assert!(
                outcome.is_err(),
                "{:?} verified:\n{}",
                key.algorithm(),
                String::from_utf8_lossy(&altered)
            );
        }
    }
}

#[test]
fn copies_of_signed_fields_added_later_fail() {
    for key in keys() {
        let good = signed(&key, &message());
        for added in [
            "From: Your Bank <alerts@bank.example>\r\n",
            "Subject: Urgent: confirm your password\r\n",
            "List-Unsubscribe: <mailto:harvest@evil.example>\r\n",
        ] {
            // On top, where relays add fields, and just above the body.
            let on_top = [added.as_bytes(), &good].concat();
            assert!(verify(&key, &on_top).is_err(), "{added}");
            let at_bottom = replaced(&good, "\r\n\r\nHello", &format!("\r\n{added}\r\nHello"));
            assert!(verify(&key, &at_bottom).is_err(), "{added}");
        }
    }
}

#[test]
fn trace_fields_added_on_the_way_do_not_break_the_signature() {
    for key in keys() {
        let good = signed(&key, &message());
        let received = concat!(
            "Received: from relay.example.org by mx.example.net\r\n",
            "\twith ESMTPS; Sat, 21 Nov 2026 12:00:01 +0000\r\n",
            "Authentication-Results: mx.example.net; dkim=pass\r\n",
        );
        verify(&key, &[received.as_bytes(), &good].concat()).unwrap();
        // Fields the message did not have are not in h= (by design, see the module
        // documentation), so adding one does not fail verification.
        verify(
            &key,
            &[b"Cc: someone@example.org\r\n".as_slice(), &good].concat(),
        )
        .unwrap();
    }
}

#[test]
fn relaxed_canonicalisation_tolerates_refolding_and_whitespace() {
    for key in keys() {
        let good = signed(&key, &message());
        let refolded = replaced(
            &good,
            "Subject: Our spring offers",
            "Subject:  Our\r\n\tspring   offers",
        );
        verify(&key, &refolded).unwrap();
        let trailing = replaced(&refolded, "this week.\r\n", "this week.  \r\n\r\n\r\n");
        verify(&key, &trailing).unwrap();
    }
}

#[test]
fn long_folded_headers_and_an_8bit_utf8_body_verify() {
    let message = concat!(
        "From: =?utf-8?q?Caf=C3=A9_Zo=C3=AB?= <news@news.example.com>\r\n",
        "To: \"Jürgen Müller\" <juergen@example.net>\r\n",
        "Subject: =?utf-8?b?R3LDvMOfZSBhdXMgZGVtIENhZsOpIC0gdW5zZXJlIEFuZ2Vib3RlIGRp?=\r\n",
        " =?utf-8?b?ZXNlciBXb2NoZSwgbWl0IHZpZWxlbiBuZXVlbiBLYWZmZWVzb3J0ZW4gdW5k?=\r\n",
        "\t=?utf-8?b?IEt1Y2hlbiDimJU=?=\r\n",
        "Date: Sat, 21 Nov 2026 12:00:00 +0000\r\n",
        "Message-ID: <long-1@news.example.com>\r\n",
        "MIME-Version: 1.0\r\n",
        "Content-Type: text/plain;\r\n",
        "  charset=\"utf-8\";\r\n",
        "  format=flowed\r\n",
        "Content-Transfer-Encoding: 8bit\r\n",
        "List-Unsubscribe: <https://news.example.com/unsubscribe/",
        "eyJhIjoiYWNjb3VudC0xMjM0NTYiLCJsIjoibGlzdC03ODkwMTIiLCJyIjoianVlcmdlbkBleGFtcGxlLm5ldCJ9>,\r\n",
        " <mailto:unsubscribe@news.example.com?subject=unsubscribe%20eyJhIjoiYWNjb3VudC0xMjM0NTYifQ>\r\n",
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
        "\r\n",
        "Grüße aus dem Café — unsere Angebote: ☕ Kaffee, 🍰 Kuchen, 日本茶.\r\n",
        "Zeile mit Leerzeichen am Ende   \r\n",
        "\tund Tabs\t \r\n",
        "\r\n",
        "\r\n",
    )
    .as_bytes();
    for key in keys() {
        let header = key.sign(message).unwrap();
        let names = signed_names(&header);
        assert_eq!(count(&names, "subject"), 2);
        assert_eq!(count(&names, "list-unsubscribe"), 2);
        let good = [header.as_bytes(), message].concat();
        verify(&key, &good).unwrap();
        assert!(verify(&key, &replaced(&good, "Kuchen", "Kuchens")).is_err());
        assert!(verify(&key, &replaced(&good, "IEt1Y2hlbiDimJU", "IEt1Y2hlbiDimJV")).is_err());
    }
}

#[test]
fn h_lists_present_fields_with_one_over_signing_entry_and_absent_ones_never() {
    let header = rsa_key().sign(&message()).unwrap();
    let names = signed_names(&header);
    for present in [
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
        "List-Id",
        "Feedback-ID",
    ] {
        assert_eq!(count(&names, present), 2, "{present} in {names:?}");
    }
    for absent in ["Sender", "Reply-To", "Cc", "In-Reply-To", "References"] {
        assert_eq!(count(&names, absent), 0, "{absent} in {names:?}");
    }
    assert_eq!(names.len(), 24);
}

#[test]
fn every_signed_header_is_covered_when_present() {
    let mut message = String::new();
    for name in SIGNED_HEADERS {
        message.push_str(&format!("{name}: value of {name}\r\n"));
    }
    message.push_str("X-Mailer: not signed\r\n\r\nbody\r\n");
    for key in keys() {
        let header = key.sign(message.as_bytes()).unwrap();
        let names = signed_names(&header);
        for name in SIGNED_HEADERS {
            assert_eq!(count(&names, name), 2, "{name} in {names:?}");
            let good = [header.as_bytes(), message.as_bytes()].concat();
            verify(&key, &good).unwrap();
            let altered = replaced(&good, &format!("value of {name}\r\n"), "other\r\n");
            assert!(verify(&key, &altered).is_err(), "{name} altered");
        }
        assert_eq!(count(&names, "x-mailer"), 0);
    }
}

#[test]
fn field_names_match_in_any_case_and_duplicates_are_all_signed() {
    let message = concat!(
        "FROM: news@news.example.com\r\n",
        "list-unsubscribe: <https://news.example.com/u/1>\r\n",
        "Received: first\r\n",
        "To: a@example.net\r\n",
        "To: b@example.net\r\n",
        "\r\n",
        "body\r\n",
    )
    .as_bytes();
    let key = ed25519_key();
    let header = key.sign(message).unwrap();
    let names = signed_names(&header);
    assert_eq!(count(&names, "from"), 2);
    assert_eq!(count(&names, "list-unsubscribe"), 2);
    assert_eq!(count(&names, "to"), 3);
    let good = [header.as_bytes(), message].concat();
    verify(&key, &good).unwrap();
    assert!(verify(&key, &replaced(&good, "/u/1", "/u/2")).is_err());
    assert!(verify(&key, &replaced(&good, "a@example.net", "c@example.net")).is_err());
}

#[test]
fn a_message_without_from_is_refused() {
    let message = b"To: a@example.net\r\nSubject: hi\r\n\r\nbody\r\n";
    for key in keys() {
        assert!(matches!(key.sign(message), Err(DkimError::NoFrom)));
    }
    // A From in the body is not a From header field.
    let message = b"To: a@example.net\r\n\r\nFrom: b@example.net\r\n";
    assert!(matches!(rsa_key().sign(message), Err(DkimError::NoFrom)));
}

#[test]
fn bad_key_files_are_refused_with_the_documented_errors() {
    let accepted = [
        "BEGIN RSA PRIVATE KEY",
        "BEGIN PRIVATE KEY",
        "2048",
        "Ed25519",
    ];
    let unsupported = |pem: &[u8]| match DkimKey::from_pem(DOMAIN, "s1", pem) {
        Err(err @ DkimError::UnsupportedKey { .. }) => {
            let text = err.to_string();
            for word in accepted {
                assert!(text.contains(word), "{word:?} not in {text:?}");
            }
            assert!(text.contains("s1._domainkey.news.example.com"), "{text}");
            text
        }
        other => panic!("expected UnsupportedKey, got {other:?}"),
    };

    let garbage = unsupported(b"this is not a key \x00\xff at all");
    assert!(garbage.contains("no PEM"), "{garbage}");

    let certificate = unsupported(&std::fs::read(fixture("certificate.pem")).unwrap());
    assert!(
        certificate.contains("\"CERTIFICATE\" but no private key"),
        "{certificate}"
    );

    let public = unsupported(&std::fs::read(fixture("rsa2048-public.pem")).unwrap());
    assert!(public.contains("\"PUBLIC KEY\""), "{public}");

    let ec = unsupported(&std::fs::read(fixture("ec-p256-pkcs8.pem")).unwrap());
    assert!(ec.contains("EC (ECDSA)"), "{ec}");

    let encrypted =
        b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMAA=\n-----END ENCRYPTED PRIVATE KEY-----\n";
    assert!(unsupported(encrypted).contains("encrypted"));

    let openssh = b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjE=\n-----END OPENSSH PRIVATE KEY-----\n";
    assert!(unsupported(openssh).contains("ssh-keygen"));

    // A damaged body: the PEM frame is fine, the DER inside is not.
    let pem = std::fs::read_to_string(fixture("rsa2048-pkcs1.pem")).unwrap();
    let lines: Vec<&str> = pem.lines().collect();
    let truncated = [&lines[..5], &lines[lines.len() - 1..]].concat().join("\n");
    unsupported(truncated.as_bytes());

    let small = fixture("rsa1024-pkcs1.pem");
    match DkimKey::from_pem_file(DOMAIN, "s1", &small) {
        Err(err @ DkimError::RsaKeyTooSmall { bits: 1024, .. }) => {
            let text = err.to_string();
            assert!(
                text.contains("1024 bits") && text.contains("at least 2048"),
                "{text}"
            );
            assert!(text.contains(&small.display().to_string()), "{text}");
        }
        other => panic!("expected RsaKeyTooSmall, got {other:?}"),
    }

    let missing = fixture("no-such-key.pem");
    match DkimKey::from_pem_file(DOMAIN, "s1", &missing) {
        Err(err @ DkimError::ReadKey { .. }) => {
            assert!(err.to_string().contains("no-such-key.pem"), "{err}");
        }
        other => panic!("expected ReadKey, got {other:?}"),
    }
}

#[test]
fn bad_domains_and_selectors_are_refused() {
    let pem = std::fs::read(fixture("ed25519-pkcs8.pem")).unwrap();
    for domain in [
        "",
        ".",
        "exa mple.com",
        "example..com",
        "-x.example",
        "exämple.com",
        "a;b.com",
    ] {
        assert!(
            matches!(
                DkimKey::from_pem(domain, "s1", &pem),
                Err(DkimError::BadDomain { .. })
            ),
            "{domain:?}"
        );
    }
    let long_label = "a".repeat(64);
    for selector in ["", "s;1", "s=1", "s 1", "s_1", long_label.as_str()] {
        assert!(
            matches!(
                DkimKey::from_pem(DOMAIN, selector, &pem),
                Err(DkimError::BadSelector { .. })
            ),
            "{selector:?}"
        );
    }
    let key = DkimKey::from_pem("News.Example.COM.", "Ed2026.Nov", &pem).unwrap();
    assert_eq!(
        (key.domain(), key.selector()),
        ("news.example.com", "ed2026.nov")
    );
    verify(&key, &signed(&key, &message())).unwrap();
}

#[test]
fn generated_ed25519_keys_load_and_sign() {
    let pem = DkimKey::generate_ed25519_pem().unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
    assert!(pem.ends_with("-----END PRIVATE KEY-----\n"), "{pem}");
    assert!(pem.lines().all(|line| line.len() <= 64));
    let key = DkimKey::from_pem(DOMAIN, "gen", pem.as_bytes()).unwrap();
    assert_eq!(key.algorithm(), Algorithm::Ed25519);
    verify(&key, &signed(&key, &message())).unwrap();

    let other = DkimKey::generate_ed25519_pem().unwrap();
    assert_ne!(pem, other);
    let other = DkimKey::from_pem(DOMAIN, "gen", other.as_bytes()).unwrap();
    assert!(verify(&other, &signed(&key, &message())).is_err());
}

#[test]
fn verify_with_record_checks_key_selector_and_presence() {
    let (rsa, ed) = (rsa_key(), ed25519_key());
    let good = signed(&rsa, &message());
    verify(&rsa, &good).unwrap();
    let wrong_key = verify_with_record(&good, DOMAIN, rsa.selector(), &ed.dns_record());
    assert!(wrong_key.is_err());
    let wrong_selector = verify_with_record(&good, DOMAIN, "other", &rsa.dns_record());
    assert!(wrong_selector.is_err());
    let wrong_domain = verify_with_record(&good, "example.org", rsa.selector(), &rsa.dns_record());
    assert!(wrong_domain.is_err());
    let unsigned = verify(&rsa, &message()).unwrap_err();
    assert!(unsigned.contains("no DKIM-Signature"), "{unsigned}");
    assert!(verify_with_record(&good, DOMAIN, rsa.selector(), "v=DKIM1; p=@@@").is_err());

    // Two signatures (RSA and Ed25519, as the module suggests): each verifies on its own.
    let both = [ed.sign(&good).unwrap().as_bytes(), &good].concat();
    verify(&rsa, &both).unwrap();
    verify(&ed, &both).unwrap();
}

/// End-to-end tests call the helper from inside tokio, often with time paused.
#[tokio::test(start_paused = true)]
async fn verify_with_record_works_inside_a_paused_tokio_runtime() {
    let key = ed25519_key();
    verify(&key, &signed(&key, &message())).unwrap();
    let handle = tokio::task::spawn_blocking(move || {
        let key = rsa_key();
        verify(&key, &signed(&key, &message()))
    });
    handle.await.unwrap().unwrap();
}

#[test]
fn one_key_signs_for_many_recipients_from_many_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<DkimKey>();

    for key in keys() {
        let key = &key;
        std::thread::scope(|scope| {
            for thread in 0..4 {
                scope.spawn(move || {
                    for n in 0..5 {
                        let to = format!("To: user{thread}-{n}@example.net\r\n");
                        let message = replaced(&message(), "To: ann@example.net\r\n", &to);
                        verify(key, &signed(key, &message)).unwrap();
                    }
                });
            }
        });
    }
}

#[test]
fn debug_output_names_the_key_without_revealing_it() {
    let shown = format!("{:?}", rsa_key());
    assert!(shown.contains(DOMAIN) && shown.contains("rsa2026") && shown.contains("Rsa"));
    assert!(shown.len() < 120, "{shown}");
}

#[test]
fn spki_encoding_handles_long_and_short_lengths() {
    let mut out = Vec::new();
    der_push(&mut out, DER_OCTET_STRING, &[7; 300]);
    assert_eq!(&out[..4], &[DER_OCTET_STRING, 0x82, 0x01, 0x2c]);
    assert_eq!(
        der_element(&out),
        Some((DER_OCTET_STRING, &[7u8; 300][..], &[][..]))
    );
    assert_eq!(der_element(&[DER_OCTET_STRING, 0x82, 0x01]), None);
    assert_eq!(der_element(&[DER_OCTET_STRING, 0x05, 1, 2]), None);
    assert_eq!(rsa_private_modulus_bits(&[DER_SEQUENCE, 0x00]), None);
}

/// Header blocks with folding, colon-less lines, LF-only lines and missing line ends.
fn header_block() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        "(From|from|TO|Subject|List-Unsubscribe|X-[a-z]{1,8}|Received)",
        "[A-Za-z -]{0,12}",
    ];
    let value = "[ -~\u{e9}\u{65e5}]{0,30}";
    let ending = prop_oneof![
        Just("\r\n"),
        Just("\n"),
        Just("\r\n\t"),
        Just("\r\n "),
        Just("")
    ];
    let field = (line, any::<bool>(), value, ending).prop_map(|(name, colon, value, ending)| {
        format!("{name}{}{value}{ending}", if colon { ":" } else { "" })
    });
    (prop::collection::vec(field, 0..8), any::<bool>()).prop_map(|(fields, separator)| {
        let mut block = fields.concat();
        if separator {
            block.push_str("\r\nbody\r\n");
        }
        block.into_bytes()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Our header scan must find what mail-auth's finds, or `h=` would miss fields.
    #[test]
    fn header_scan_agrees_with_mail_auth(block in header_block()) {
        let ours: Vec<&[u8]> = header_names(&block).collect();
        let theirs: Vec<&[u8]> = AuthenticatedMessage::parse(&block)
            .map(|message| message.headers.iter().map(|(name, _)| *name).collect())
            .unwrap_or_default();
        prop_assert_eq!(ours, theirs);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn arbitrary_subjects_and_bodies_verify(
        subject in "[ -~\u{e0}-\u{ff}\u{4e00}-\u{4e20}]{0,200}",
        body in prop::collection::vec("[ -~\t\u{e0}-\u{ff}\u{1f600}-\u{1f610}]{0,120}", 0..20),
    ) {
        let message = format!(
            "From: news@news.example.com\r\nSubject: {subject}\r\n\r\n{}",
            body.iter().map(|line| format!("{line}\r\n")).collect::<String>()
        );
        let key = ed25519_key();
        let good = signed(&key, message.as_bytes());
        prop_assert!(verify(&key, &good).is_ok(), "{}", message);
    }
}
