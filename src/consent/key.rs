//! Keys of the consent and suppression sets: normalised addresses under a keyed hash.
//!
//! An entry is never stored as an address. It is the 64-bit fingerprint
//! `keyed_hash(secret, kind ‖ scope ‖ normalised address)`: the first eight octets
//! (little-endian) of keyed BLAKE3, whose output is fixed by its specification — unlike
//! `std::hash::Hash`, which Rust does not promise to keep stable, and which would make the
//! on-disk sets unreadable after a compiler upgrade. Without the secret (32 random octets in
//! a file of its own, mode 0600, created on first use) a fingerprint cannot be tested
//! against a guessed address.
//!
//! Normalisation makes the spellings of one mailbox meet: surrounding white space is
//! trimmed, the domain is IDNA-encoded (UTS #46) and lower-cased, the local part is
//! lower-cased. Anything that is not a valid mailbox is refused.

use std::io::Write;
use std::path::Path;

use crate::smtp::Address;

/// Identifies the hash construction in snapshot headers (1 = keyed BLAKE3, first 8 octets
/// little-endian).
pub const HASH_ID: u32 = 1;

/// What an entry says: a consent, or a suppression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Consent,
    Suppression,
}

/// Whom an entry concerns: everyone sending through the relay, one account, or one list of
/// one account. Account and list names are `[a-z0-9_-]` (the policy checks), so the
/// encoding below is unambiguous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope<'a> {
    Global,
    Account(&'a str),
    List(&'a str, &'a str),
}

impl std::fmt::Display for Scope<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Global => f.write_str("global"),
            Scope::Account(a) => write!(f, "account {a}"),
            Scope::List(a, l) => write!(f, "list {a}/{l}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NormaliseError {
    #[error("empty")]
    Empty,
    #[error("not a valid address: {0}")]
    Syntax(#[from] crate::smtp::address::AddressError),
    #[error("the domain cannot be IDNA-encoded")]
    Idna,
}

/// The canonical spelling of a mailbox: trimmed, lower-case local part, lower-case
/// IDNA-encoded domain.
pub fn normalise(address: &str) -> Result<String, NormaliseError> {
    let text = address.trim();
    if text.is_empty() {
        return Err(NormaliseError::Empty);
    }
    let parsed = Address::parse(text)?;
    let local = parsed.local_part();
    let domain = parsed.domain();
    let domain = if domain.starts_with('[') {
        domain.to_ascii_lowercase()
    } else {
        // IDNA mapping can turn a Unicode domain into one that is no domain at all (a
        // combining mark may map to a space): the encoded form is checked as a domain.
        crate::smtp::address::canonical_domain(domain).ok_or(NormaliseError::Idna)?
    };
    let mut out = local.to_lowercase();
    out.push('@');
    out.push_str(&domain);
    Ok(out)
}

/// The secret that keys every fingerprint.
#[derive(Clone)]
pub struct Secret {
    key: [u8; 32],
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<32 octets>)")
    }
}

impl Secret {
    pub fn new(key: [u8; 32]) -> Secret {
        Secret { key }
    }

    /// Reads the secret file, creating it (32 random octets, mode 0600) if it does not
    /// exist. Creation is exclusive, so two processes starting at once agree on one secret.
    pub fn load_or_create(path: &Path) -> std::io::Result<Secret> {
        loop {
            match std::fs::read(path) {
                Ok(bytes) => {
                    let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!(
                                "{} is not a 32-octet secret ({} octets)",
                                path.display(),
                                bytes.len()
                            ),
                        )
                    })?;
                    return Ok(Secret { key });
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            let key: [u8; 32] = rand::random();
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            let mut f = crate::files::options()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(&key)?;
            f.sync_all()?;
            drop(f);
            // A hard link fails if another process created the secret meanwhile; then we
            // read theirs on the next pass. A partly written secret is never visible.
            let linked = std::fs::hard_link(&tmp, path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => {
                    if let Some(dir) = path.parent() {
                        crate::files::sync_dir(dir)?;
                    }
                    return Ok(Secret { key });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The key itself, for other keyed hashes of the relay (log tags).
    pub(crate) fn key_bytes(&self) -> &[u8; 32] {
        &self.key
    }

    /// A public identifier of the secret (not the secret), stored in snapshot headers so a
    /// snapshot made with another secret is refused instead of silently matching nothing.
    pub fn id(&self) -> u64 {
        let d = blake3::derive_key("optin-relay 2026 snapshot secret id", &self.key);
        u64::from_le_bytes(d[..8].try_into().expect("8 octets"))
    }

    /// The fingerprint of an already normalised address.
    pub fn fingerprint(&self, kind: Kind, scope: Scope<'_>, normalised: &str) -> u64 {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(match kind {
            Kind::Consent => b"c",
            Kind::Suppression => b"s",
        });
        match scope {
            Scope::Global => {
                h.update(b"g\0");
            }
            Scope::Account(a) => {
                h.update(b"a\0");
                h.update(a.as_bytes());
                h.update(b"\0");
            }
            Scope::List(a, l) => {
                h.update(b"l\0");
                h.update(a.as_bytes());
                h.update(b"\0");
                h.update(l.as_bytes());
                h.update(b"\0");
            }
        }
        h.update(normalised.as_bytes());
        let out = h.finalize();
        u64::from_le_bytes(out.as_bytes()[..8].try_into().expect("8 octets"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalisation_cases() {
        let ok = [
            ("  Jane.Doe@Example.COM \t", "jane.doe@example.com"),
            ("ANNA@Bücher.Example", "anna@xn--bcher-kva.example"),
            ("anna@xn--bcher-kva.example", "anna@xn--bcher-kva.example"),
            ("Ünïcode@example.org", "ünïcode@example.org"),
            ("x@[192.0.2.1]", "x@[192.0.2.1]"),
            ("\"Quoted Name\"@example.net", "\"quoted name\"@example.net"),
        ];
        for (input, want) in ok {
            assert_eq!(normalise(input).as_deref(), Ok(want), "{input:?}");
        }
        for bad in [
            "",
            "   ",
            "not-an-address",
            "a b@example.com",
            "@example.com",
            "a@",
            "a@b@c",
            "a@-bad-.example",
            "<a@example.com>",
            "a@exa mple.com",
            "a\n@example.com",
            "a@example.com.",
            // Found by the upload_lines fuzz target: IDNA maps U+0385 to a space and a
            // combining mark, which is no domain.
            "x@lqy\u{385}ls",
        ] {
            assert!(normalise(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn fingerprints_are_stable_and_separate_kinds_and_scopes() {
        let s = Secret::new([42; 32]);
        let a = "jane@example.com";
        // The on-disk format depends on this value never changing.
        let fp = s.fingerprint(Kind::Consent, Scope::List("shop", "news"), a);
        let mut h = blake3::Hasher::new_keyed(&[42; 32]);
        h.update(b"cl\0shop\0news\0jane@example.com");
        let expect = u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().unwrap());
        assert_eq!(fp, expect);
        let all = [
            s.fingerprint(Kind::Consent, Scope::List("shop", "news"), a),
            s.fingerprint(Kind::Suppression, Scope::List("shop", "news"), a),
            s.fingerprint(Kind::Suppression, Scope::Account("shop"), a),
            s.fingerprint(Kind::Suppression, Scope::Global, a),
            s.fingerprint(Kind::Suppression, Scope::List("sho", "pnews"), a),
            Secret::new([43; 32]).fingerprint(Kind::Suppression, Scope::Global, a),
        ];
        let set: std::collections::HashSet<u64> = all.iter().copied().collect();
        assert_eq!(set.len(), all.len());
        assert_ne!(s.id(), Secret::new([43; 32]).id());
    }

    #[test]
    fn secret_file_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let a = Secret::load_or_create(&path).unwrap();
        let b = Secret::load_or_create(&path).unwrap();
        assert_eq!(a.id(), b.id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, b"short").unwrap();
        let err = Secret::load_or_create(&path).unwrap_err();
        assert!(err.to_string().contains("not a 32-octet secret"), "{err}");
    }

    proptest! {
        #[test]
        fn normalising_is_idempotent_and_case_blind(
            local in "[A-Za-z0-9._%+-]{1,20}",
            label in "[A-Za-z0-9]{1,12}",
            tld in "[A-Za-z]{2,6}",
            pad in "[ \t]{0,3}",
        ) {
            let input = format!("{pad}{local}@{label}.{tld}{pad}");
            if let Ok(n) = normalise(&input) {
                prop_assert_eq!(normalise(&n), Ok(n.clone()));
                prop_assert_eq!(normalise(&input.to_uppercase()), Ok(n.clone()));
                prop_assert_eq!(n.trim(), n.as_str());
            }
        }
    }
}
