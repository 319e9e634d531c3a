//! DKIM signing of outgoing mail (RFC 6376), with RSA-SHA256 or Ed25519-SHA256 (RFC 8463).
//!
//! A [`DkimKey`] is loaded once — from a PEM file, for one signing domain (`d=`) and
//! selector (`s=`) — and then signs any number of messages from any number of tasks
//! (`&self`, `Send + Sync`). Signing runs at delivery time, per recipient, after every other
//! rewrite: anything changed after [`DkimKey::sign`] breaks the signature. This module
//! never touches the network, the spool or the message itself; it returns the header field
//! to put in front of the message.
//!
//! **What is signed.** The body, in full (no `l=`), and the header fields of
//! [`SIGNED_HEADERS`] that the message has: each occurrence is listed in `h=`, then the name
//! once more. The extra entry ("over-signing", RFC 6376 §5.4.2) matches no field, so it
//! adds nothing to the hash, but a verifier that finds a copy added later — a second
//! `From`, `Subject` or `List-Unsubscribe` put on top — hashes it and fails. Every field in
//! the list may occur at most once (RFC 5322 §3.6, RFC 2369, RFC 8058), so this costs a
//! legitimate message nothing. Fields the message lacks are not listed at all; `From`
//! must be present (RFC 6376 §5.4), or signing fails with [`DkimError::NoFrom`].
//!
//! **How.** `c=relaxed/relaxed` canonicalisation, so refolding and whitespace changes by
//! relays on the way do not break the signature; SHA-256; `t=` is the signing time; no
//! `x=` expiry, no `i=` (it defaults to `@` + `d=`). The work is done by `mail-auth`'s
//! signer on its `ring` backend. The message must be CRLF-terminated lines, headers then
//! body, as it will be sent (before SMTP dot-stuffing).
//!
//! **Keys.** PEM only; the algorithm is detected:
//! - RSA, at least 2048 bits (ring signs with at most 4096), as PKCS#1
//!   (`BEGIN RSA PRIVATE KEY`, `openssl genrsa -traditional -out k.pem 2048`) or PKCS#8
//!   (`BEGIN PRIVATE KEY`, `openssl genpkey -algorithm rsa -pkeyopt rsa_keygen_bits:2048`);
//! - Ed25519 as PKCS#8 (`BEGIN PRIVATE KEY`, `openssl genpkey -algorithm ed25519`, or
//!   [`DkimKey::generate_ed25519_pem`]); both v1 (OpenSSL) and v2 (ring) encodings.
//!
//! Encrypted keys, EC keys, certificates and OpenSSH keys are refused with an error that
//! says which of these it found.
//!
//! **Publishing.** [`DkimKey::dns_record`] gives the TXT record to publish at
//! `<selector>._domainkey.<domain>`: `v=DKIM1; k=rsa; p=<SubjectPublicKeyInfo, base64>` or
//! `v=DKIM1; k=ed25519; p=<the 32-octet key, base64>`. An RSA-2048 record is about 410
//! characters, more than one DNS character-string (255) holds: in a zone file write it as
//! several quoted strings in parentheses, which verifiers join without spaces; most DNS
//! hosting panels split it themselves. Many receivers do not yet verify Ed25519 (they
//! treat such a signature as absent), so a domain that uses Ed25519 should also sign with
//! RSA under a second selector: prepend both headers.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use mail_auth::common::crypto::{
    Algorithm as SigningAlgorithm, DkimKey as SigningKeyPair, Ed25519Key, RsaKey, Sha256,
    SigningKey,
};
use mail_auth::common::headers::{HeaderWriter, Writable};
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::dkim::{Canonicalization, DkimSigner};
use mail_auth::hickory_resolver::config::{ResolverConfig, ResolverOpts};
use mail_auth::{
    AuthenticatedMessage, DkimResult, DnsError, MessageAuthenticator, Parameters, ResolverCache,
    Txt,
};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::{self, PemObject};

/// Header fields signed when present: `h=` lists each one the message has (every
/// occurrence, plus one over-signing entry; see the module documentation). `From` must be
/// present.
pub const SIGNED_HEADERS: &[&str] = &[
    "From",
    "Sender",
    "Reply-To",
    "To",
    "Cc",
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
    "In-Reply-To",
    "References",
];

/// Smallest RSA modulus accepted: RFC 8301 §3.2 requires 1024 and recommends 2048, and
/// large receivers treat 1024-bit signatures as weak.
const RSA_MIN_BITS: usize = 2048;
/// Largest RSA modulus ring will sign with.
const RSA_MAX_BITS: usize = 4096;
/// Longest DNS name (RFC 1035 §2.3.4, without the root dot).
const MAX_DNS_NAME: usize = 253;
const MAX_DNS_LABEL: usize = 63;

/// OID 1.2.840.113549.1.1.1, rsaEncryption.
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// OID 1.2.840.113549.1.1.10, RSASSA-PSS (a key restricted to PSS; DKIM needs PKCS#1 v1.5).
const OID_RSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
/// OID 1.3.101.112, Ed25519.
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];
/// OID 1.3.101.113, Ed448.
const OID_ED448: &[u8] = &[0x2b, 0x65, 0x71];
/// OID 1.2.840.10045.2.1, id-ecPublicKey.
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];

const DER_INTEGER: u8 = 0x02;
const DER_BIT_STRING: u8 = 0x03;
const DER_OCTET_STRING: u8 = 0x04;
const DER_NULL: u8 = 0x05;
const DER_OID: u8 = 0x06;
const DER_SEQUENCE: u8 = 0x30;

/// A DKIM signing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// `rsa-sha256`: RSASSA-PKCS1-v1_5 with SHA-256, 2048 to 4096 bits.
    Rsa,
    /// `ed25519-sha256` (RFC 8463).
    Ed25519,
}

impl Algorithm {
    /// The `k=` tag value of the DNS record.
    fn key_type(self) -> &'static str {
        match self {
            Algorithm::Rsa => "rsa",
            Algorithm::Ed25519 => "ed25519",
        }
    }
}

/// Why a key could not be loaded or a message not signed.
#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    /// The key file could not be read.
    #[error("cannot read DKIM key file {}: {source}", path.display())]
    ReadKey {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The PEM text holds no private key this module can sign with.
    #[error(
        "{origin}: not a DKIM private key we understand ({reason}); accepted: an RSA key of \
         2048 to 4096 bits as PKCS#1 PEM (\"BEGIN RSA PRIVATE KEY\") or PKCS#8 PEM (\"BEGIN \
         PRIVATE KEY\"), or an Ed25519 key as PKCS#8 PEM (\"BEGIN PRIVATE KEY\"), unencrypted"
    )]
    UnsupportedKey {
        /// The file, or `PEM data for <selector>._domainkey.<domain>`.
        origin: String,
        /// What was found instead.
        reason: String,
    },
    /// An RSA key below 2048 bits.
    #[error(
        "{origin}: RSA key of {bits} bits is too small for DKIM; use at least 2048 bits \
         (openssl genrsa -out key.pem 2048) and publish its new DNS record"
    )]
    RsaKeyTooSmall {
        /// The file, or `PEM data for <selector>._domainkey.<domain>`.
        origin: String,
        /// The modulus size.
        bits: usize,
    },
    /// An RSA key above 4096 bits, which ring cannot sign with.
    #[error("{origin}: RSA key of {bits} bits is too large; at most 4096 bits can sign")]
    RsaKeyTooLarge {
        /// The file, or `PEM data for <selector>._domainkey.<domain>`.
        origin: String,
        /// The modulus size.
        bits: usize,
    },
    /// The signing domain is not a DNS name.
    #[error("invalid DKIM signing domain {domain:?}: {reason}")]
    BadDomain {
        /// As given.
        domain: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The selector is not a DNS name.
    #[error("invalid DKIM selector {selector:?}: {reason}")]
    BadSelector {
        /// As given.
        selector: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The message has no `From` header field, which DKIM must sign.
    #[error("cannot DKIM-sign a message without a From header field")]
    NoFrom,
    /// The signer itself failed.
    #[error("DKIM signing for {selector}._domainkey.{domain} failed: {reason}")]
    Sign {
        /// `d=`.
        domain: String,
        /// `s=`.
        selector: String,
        /// mail-auth's or ring's explanation.
        reason: String,
    },
    /// The system random generator failed while making a key.
    #[error("cannot generate an Ed25519 key: {0}")]
    Generate(String),
}

/// A signing key for one domain and selector, loaded once.
pub struct DkimKey {
    /// `d=`, lower case, without a trailing dot.
    domain: String,
    /// `s=`, lower case.
    selector: String,
    algorithm: Algorithm,
    /// The ring key pair behind mail-auth's signer.
    key: SigningKeyPair,
    /// What `p=` publishes: SubjectPublicKeyInfo DER for RSA (what every verifier parses;
    /// ring's bare PKCS#1 form is not), the raw 32 octets for Ed25519 (RFC 8463 §4).
    public_key: Vec<u8>,
}

impl fmt::Debug for DkimKey {
    /// Names the key without printing any of it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DkimKey")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl DkimKey {
    /// Reads a PEM private key: RSA as PKCS#1 ("BEGIN RSA PRIVATE KEY") or PKCS#8 ("BEGIN
    /// PRIVATE KEY"), Ed25519 as PKCS#8. The algorithm is detected.
    pub fn from_pem_file(domain: &str, selector: &str, path: &Path) -> Result<DkimKey, DkimError> {
        let (domain, selector) = (check_domain(domain)?, check_selector(selector, domain)?);
        let pem = std::fs::read(path).map_err(|source| DkimError::ReadKey {
            path: path.to_path_buf(),
            source,
        })?;
        load(domain, selector, &pem, path.display().to_string())
    }

    /// Reads a PEM private key from memory; formats as for [`DkimKey::from_pem_file`].
    pub fn from_pem(domain: &str, selector: &str, pem: &[u8]) -> Result<DkimKey, DkimError> {
        let (domain, selector) = (check_domain(domain)?, check_selector(selector, domain)?);
        let origin = format!("PEM data for {selector}._domainkey.{domain}");
        load(domain, selector, pem, origin)
    }

    /// A new Ed25519 key (PKCS#8 PEM text) — for `optin-relay dkim-keygen` and tests.
    pub fn generate_ed25519_pem() -> Result<String, DkimError> {
        let der =
            Ed25519Key::generate_pkcs8().map_err(|err| DkimError::Generate(err.to_string()))?;
        Ok(pem_encode("PRIVATE KEY", &der))
    }

    /// The signing domain, `d=`.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The selector, `s=`.
    pub fn selector(&self) -> &str {
        &self.selector
    }

    /// Which algorithm the key signs with.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The DNS TXT record to publish at `<selector>._domainkey.<domain>`:
    /// "v=DKIM1; k=rsa|ed25519; p=<base64 public key>".
    pub fn dns_record(&self) -> String {
        format!(
            "v=DKIM1; k={}; p={}",
            self.algorithm.key_type(),
            STANDARD.encode(&self.public_key)
        )
    }

    /// The `DKIM-Signature:` header field (folded, ending in CRLF) to prepend to `message`
    /// (CRLF message, headers + body).
    pub fn sign(&self, message: &[u8]) -> Result<String, DkimError> {
        let headers = headers_to_sign(message)?;
        let signature = DkimSigner::from_key(BorrowedKey(&self.key))
            .domain(self.domain.as_str())
            .selector(self.selector.as_str())
            .headers(headers)
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed)
            .sign(message)
            .map_err(|err| DkimError::Sign {
                domain: self.domain.clone(),
                selector: self.selector.clone(),
                reason: err.to_string(),
            })?;
        Ok(signature.to_header())
    }
}

/// Lets one loaded key serve a signer built per message: mail-auth's signer owns its key,
/// ring key pairs cannot be cloned, and the `h=` list differs from message to message.
struct BorrowedKey<'a>(&'a SigningKeyPair);

impl SigningKey for BorrowedKey<'_> {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input)
    }

    fn algorithm(&self) -> SigningAlgorithm {
        self.0.algorithm()
    }
}

/// The `h=` request for mail-auth: each [`SIGNED_HEADERS`] name the message has, twice.
///
/// mail-auth signs every occurrence of a requested name and then appends each requested
/// entry it could not match, so the second copy becomes the over-signing entry. A name
/// the message lacks is not requested, since mail-auth would list it too.
fn headers_to_sign(message: &[u8]) -> Result<Vec<&'static str>, DkimError> {
    let mut present = [false; SIGNED_HEADERS.len()];
    for name in header_names(message) {
        if let Some(index) = SIGNED_HEADERS
            .iter()
            .position(|signed| name.eq_ignore_ascii_case(signed.as_bytes()))
            && let Some(slot) = present.get_mut(index)
        {
            *slot = true;
        }
    }
    if !present[0] {
        return Err(DkimError::NoFrom);
    }
    let names = SIGNED_HEADERS
        .iter()
        .zip(present)
        .filter_map(|(name, present)| present.then_some(*name));
    Ok(names.clone().chain(names).collect())
}

/// The names of `message`'s header fields, found exactly as mail-auth 0.13's signer finds
/// them (its `HeaderIterator` is private), so that the `h=` request matches what it signs.
///
/// A field runs to the first LF not followed by SP or HTAB; its name to the first colon. A
/// line without a colon ends the header block if it ends in CRLF (the empty line is such a
/// line) and is otherwise yielded whole as a name that matches nothing. A last field
/// without a line end, or a message without a body separator, ends the block too.
fn header_names(message: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    std::iter::from_fn(move || {
        let (name, end) = next_field(message, start)?;
        start = end;
        Some(name)
    })
}

/// The field at `start`: its name and where the next field begins; `None` at the end of
/// the header block.
fn next_field(message: &[u8], start: usize) -> Option<(&[u8], usize)> {
    let mut cursor = start;
    loop {
        let rest = message.get(cursor..)?;
        let offset = rest.iter().position(|&b| b == b':' || b == b'\n')?;
        let at = cursor + offset;
        if rest.get(offset) == Some(&b':') {
            let end = field_end(message, at)?;
            return Some((message.get(start..at)?, end));
        }
        let after_cr = offset > 0 && rest.get(offset - 1) == Some(&b'\r');
        if after_cr || at == start {
            return None;
        }
        match message.get(at + 1) {
            Some(b' ' | b'\t') => cursor = at + 1,
            _ => return Some((message.get(start..=at)?, at + 1)),
        }
    }
}

/// Where the field whose colon is at `colon` ends (just past its last LF).
fn field_end(message: &[u8], colon: usize) -> Option<usize> {
    let mut cursor = colon + 1;
    loop {
        let rest = message.get(cursor..)?;
        let at = cursor + rest.iter().position(|&b| b == b'\n')?;
        match message.get(at + 1) {
            Some(b' ' | b'\t') => cursor = at + 1,
            _ => return Some(at + 1),
        }
    }
}

/// Parses the PEM text into a key for `domain` and `selector` (both already checked).
fn load(
    domain: String,
    selector: String,
    pem: &[u8],
    origin: String,
) -> Result<DkimKey, DkimError> {
    let unsupported = |reason: String| DkimError::UnsupportedKey {
        origin: origin.clone(),
        reason,
    };
    let der =
        PrivateKeyDer::from_pem_slice(pem).map_err(|err| unsupported(pem_problem(pem, &err)))?;
    let (algorithm, key, public_key) = match der {
        PrivateKeyDer::Pkcs1(ref pkcs1) => {
            let bits = rsa_private_modulus_bits(pkcs1.secret_pkcs1_der())
                .ok_or_else(|| unsupported("the RSA PRIVATE KEY block is not valid DER".into()))?;
            let rsa = load_rsa(der, bits, &origin)?;
            (Algorithm::Rsa, SigningKeyPair::Rsa(rsa.0), rsa.1)
        }
        PrivateKeyDer::Pkcs8(ref pkcs8) => {
            let (oid, private_key) = pkcs8_algorithm(pkcs8.secret_pkcs8_der())
                .ok_or_else(|| unsupported("the PRIVATE KEY block is not valid PKCS#8".into()))?;
            match oid {
                OID_RSA_ENCRYPTION => {
                    let bits = rsa_private_modulus_bits(private_key).ok_or_else(|| {
                        unsupported("the RSA key inside the PKCS#8 block is not valid DER".into())
                    })?;
                    let rsa = load_rsa(der, bits, &origin)?;
                    (Algorithm::Rsa, SigningKeyPair::Rsa(rsa.0), rsa.1)
                }
                OID_ED25519 => {
                    // OpenSSL writes PKCS#8 v1 (no public key); ring's checked parser wants v2.
                    let ed = Ed25519Key::from_pkcs8_maybe_unchecked_der(pkcs8.secret_pkcs8_der())
                        .map_err(|err| unsupported(format!("Ed25519 key rejected: {err}")))?;
                    let public_key = ed.public_key();
                    (Algorithm::Ed25519, SigningKeyPair::Ed25519(ed), public_key)
                }
                OID_EC_PUBLIC_KEY => return Err(unsupported("found an EC (ECDSA) key".into())),
                OID_ED448 => return Err(unsupported("found an Ed448 key".into())),
                OID_RSA_PSS => {
                    return Err(unsupported(
                        "found an RSA-PSS key; DKIM needs a plain rsaEncryption key".into(),
                    ));
                }
                _ => {
                    return Err(unsupported(
                        "found a PKCS#8 key of an unknown algorithm".into(),
                    ));
                }
            }
        }
        PrivateKeyDer::Sec1(_) => return Err(unsupported("found an EC (ECDSA) key".into())),
        _ => return Err(unsupported("found a private key of an unknown kind".into())),
    };
    Ok(DkimKey {
        domain,
        selector,
        algorithm,
        key,
        public_key,
    })
}

/// Loads an RSA key of `bits` bits (PKCS#1 or PKCS#8); returns it with its SPKI public key.
fn load_rsa(
    der: PrivateKeyDer<'_>,
    bits: usize,
    origin: &str,
) -> Result<(RsaKey<Sha256>, Vec<u8>), DkimError> {
    // Checked here, not left to ring, whose refusal does not say how big the key was.
    if bits < RSA_MIN_BITS {
        return Err(DkimError::RsaKeyTooSmall {
            origin: origin.to_owned(),
            bits,
        });
    }
    if bits > RSA_MAX_BITS {
        return Err(DkimError::RsaKeyTooLarge {
            origin: origin.to_owned(),
            bits,
        });
    }
    let rsa = RsaKey::<Sha256>::from_key_der(der).map_err(|err| DkimError::UnsupportedKey {
        origin: origin.to_owned(),
        reason: format!("RSA key rejected: {err}"),
    })?;
    let public_key = rsa_spki(&rsa.public_key());
    Ok((rsa, public_key))
}

/// Says what the PEM text holds instead of a usable private key.
fn pem_problem(pem: &[u8], err: &pem::Error) -> String {
    if !matches!(err, pem::Error::NoItemsFound) {
        return format!("malformed PEM: {err}");
    }
    let labels: Vec<String> = pem
        .split(|&byte| byte == b'\n')
        .filter_map(|line| {
            let line = line.trim_ascii();
            let label = line.strip_prefix(b"-----BEGIN ")?.strip_suffix(b"-----")?;
            Some(String::from_utf8_lossy(label).into_owned())
        })
        .collect();
    if labels.is_empty() {
        return "no PEM \"-----BEGIN ...-----\" block found".into();
    }
    if labels.iter().any(|label| label == "ENCRYPTED PRIVATE KEY") {
        return "the key is encrypted; decrypt it with \
                `openssl pkey -in KEY -out PLAIN.pem` and protect the file instead"
            .into();
    }
    if labels.iter().any(|label| label == "OPENSSH PRIVATE KEY") {
        return "found an OpenSSH key; convert it with `ssh-keygen -p -m PKCS8 -f KEY`".into();
    }
    let found: Vec<String> = labels.iter().map(|label| format!("\"{label}\"")).collect();
    format!("found {} but no private key", found.join(", "))
}

/// Checks and normalises a signing domain: ASCII DNS labels of letters, digits and hyphens.
fn check_domain(domain: &str) -> Result<String, DkimError> {
    let bad = |reason| DkimError::BadDomain {
        domain: domain.to_owned(),
        reason,
    };
    let name = domain.strip_suffix('.').unwrap_or(domain);
    if !name.is_ascii() {
        return Err(bad(
            "not ASCII; give the A-label (punycode, xn--...) form of an internationalised domain",
        ));
    }
    check_dns_name(name).map_err(bad)?;
    Ok(name.to_ascii_lowercase())
}

/// Checks and normalises a selector; `domain` is the raw domain, to bound the full name.
fn check_selector(selector: &str, domain: &str) -> Result<String, DkimError> {
    let bad = |reason| DkimError::BadSelector {
        selector: selector.to_owned(),
        reason,
    };
    check_dns_name(selector).map_err(bad)?;
    if selector.len() + "._domainkey.".len() + domain.trim_end_matches('.').len() > MAX_DNS_NAME {
        return Err(bad(
            "<selector>._domainkey.<domain> is longer than 253 characters",
        ));
    }
    Ok(selector.to_ascii_lowercase())
}

/// RFC 1035 host-name syntax (which RFC 6376 §3.1 asks of `s=` and `d=`); also keeps `;`
/// and spaces out of the signature's tag list.
fn check_dns_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > MAX_DNS_NAME {
        return Err("longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("has an empty label (two dots in a row, or a leading dot)");
        }
        if label.len() > MAX_DNS_LABEL {
            return Err("has a label longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err("only letters, digits, hyphens and dots are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label starts or ends with a hyphen");
        }
    }
    Ok(())
}

/// One DER element of `input`: its tag, contents and what follows it.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let (digits, rest) = rest.split_at_checked(count)?;
        let len = digits
            .iter()
            .fold(0usize, |len, &digit| (len << 8) | usize::from(digit));
        (len, rest)
    };
    let (contents, rest) = rest.split_at_checked(len)?;
    Some((tag, contents, rest))
}

/// The next DER element of `input`, which must carry `tag`: its contents and the rest.
fn der_expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (found, contents, rest) = der_element(input)?;
    (found == tag).then_some((contents, rest))
}

/// The modulus size of a PKCS#1 RSAPrivateKey: SEQUENCE { version, modulus, ... }.
fn rsa_private_modulus_bits(der: &[u8]) -> Option<usize> {
    let (key, _) = der_expect(der, DER_SEQUENCE)?;
    let (_version, rest) = der_expect(key, DER_INTEGER)?;
    let (modulus, _) = der_expect(rest, DER_INTEGER)?;
    let first_nonzero = modulus.iter().position(|&b| b != 0)?;
    let significant = modulus.get(first_nonzero..)?;
    let top = significant.first()?;
    Some(significant.len() * 8 - top.leading_zeros() as usize)
}

/// The algorithm OID and inner private key of a PKCS#8 PrivateKeyInfo:
/// SEQUENCE { version, SEQUENCE { OID, parameters }, OCTET STRING key, ... }.
fn pkcs8_algorithm(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let (info, _) = der_expect(der, DER_SEQUENCE)?;
    let (_version, rest) = der_expect(info, DER_INTEGER)?;
    let (algorithm, rest) = der_expect(rest, DER_SEQUENCE)?;
    let (oid, _parameters) = der_expect(algorithm, DER_OID)?;
    let (private_key, _) = der_expect(rest, DER_OCTET_STRING)?;
    Some((oid, private_key))
}

/// Appends a DER element with `tag` and `contents` to `out`.
fn der_push(out: &mut Vec<u8>, tag: u8, contents: &[u8]) {
    out.push(tag);
    let len = contents.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let digits = len.to_be_bytes();
        let skip = digits.iter().take_while(|&&b| b == 0).count();
        let digits = digits.get(skip..).unwrap_or_default();
        out.push(0x80 | digits.len() as u8);
        out.extend_from_slice(digits);
    }
    out.extend_from_slice(contents);
}

/// Wraps a PKCS#1 RSAPublicKey in a SubjectPublicKeyInfo, the form DKIM records carry
/// (what `openssl rsa -pubout` writes).
fn rsa_spki(rsa_public_key: &[u8]) -> Vec<u8> {
    let mut algorithm = Vec::with_capacity(16);
    der_push(&mut algorithm, DER_OID, OID_RSA_ENCRYPTION);
    der_push(&mut algorithm, DER_NULL, &[]);
    let mut bits = Vec::with_capacity(rsa_public_key.len() + 1);
    bits.push(0); // no unused bits in the last octet
    bits.extend_from_slice(rsa_public_key);
    let mut fields = Vec::with_capacity(bits.len() + 32);
    der_push(&mut fields, DER_SEQUENCE, &algorithm);
    der_push(&mut fields, DER_BIT_STRING, &bits);
    let mut spki = Vec::with_capacity(fields.len() + 4);
    der_push(&mut spki, DER_SEQUENCE, &fields);
    spki
}

/// PEM text for `der` under `label`, in 64-column lines.
fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    let mut rest = body.as_str();
    while !rest.is_empty() {
        let (line, tail) = rest.split_at(rest.len().min(64));
        pem.push_str(line);
        pem.push('\n');
        rest = tail;
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

/// Verifies the `DKIM-Signature` of `message_with_signature` for `domain` and `selector`
/// against `txt_record` (as [`DkimKey::dns_record`] gives it), through mail-auth's verifier,
/// without DNS. For tests: `Ok` when a signature by that domain and selector passes,
/// otherwise a description of every result. Synchronous, so it serves plain and tokio tests
/// alike: the verifier is async only for its DNS look-ups, and here the one look-up is
/// answered from memory.
#[doc(hidden)]
pub fn verify_with_record(
    message_with_signature: &[u8],
    domain: &str,
    selector: &str,
    txt_record: &str,
) -> Result<(), String> {
    let record = DomainKey::parse(txt_record.as_bytes())
        .map_err(|err| format!("cannot parse the DKIM record {txt_record:?}: {err}"))?;
    let domain = domain.trim_end_matches('.');
    let cache = OneRecord {
        name: format!("{selector}._domainkey.{domain}.")
            .to_ascii_lowercase()
            .into(),
        record: Txt::DomainKey(Arc::new(record)),
    };
    let message = AuthenticatedMessage::parse(message_with_signature)
        .ok_or("mail-auth cannot parse the message")?;
    // No name servers: a look-up that missed the record above would fail, not go out.
    let authenticator = MessageAuthenticator::new(
        ResolverConfig::from_parts(None, Vec::new(), Vec::new()),
        ResolverOpts::default(),
    )
    .map_err(|err| format!("cannot build the verifier: {err}"))?;
    let outputs =
        poll_once(authenticator.verify_dkim(Parameters::new(&message).with_txt_cache(&cache)))
            .ok_or("the verifier waited on DNS although every record was supplied")?;

    let mut seen = Vec::new();
    for output in &outputs {
        let Some(signature) = output.signature() else {
            seen.push(format!("unparsable signature: {}", output.result()));
            continue;
        };
        let ours =
            signature.d.eq_ignore_ascii_case(domain) && signature.s.eq_ignore_ascii_case(selector);
        if ours && *output.result() == DkimResult::Pass {
            return Ok(());
        }
        seen.push(format!(
            "d={} s={}: {}",
            signature.d,
            signature.s,
            output.result()
        ));
    }
    if seen.is_empty() {
        return Err("the message has no DKIM-Signature".into());
    }
    Err(format!(
        "no passing signature for d={domain} s={selector}: {}",
        seen.join("; ")
    ))
}

/// A TXT cache that knows one record and answers every other name with an error, so that
/// verification never reaches for the network.
struct OneRecord {
    name: Box<str>,
    record: Txt,
}

impl ResolverCache<Box<str>, Txt> for OneRecord {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        use std::borrow::Borrow;
        Some(if <Box<str> as Borrow<Q>>::borrow(&self.name) == name {
            self.record.clone()
        } else {
            Txt::Error(mail_auth::Error::Dns(DnsError::Resolver(
                "not among the records supplied to verify_with_record".into(),
            )))
        })
    }

    fn remove<Q>(&self, _name: &Q) -> Option<Txt>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        None
    }

    fn insert(&self, _name: Box<str>, _record: Txt, _valid_until: std::time::Instant) {}
}

/// Polls `future` once; `None` if it is not ready (it would be waiting on I/O).
fn poll_once<F: Future>(future: F) -> Option<F::Output> {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests;
