//! Unsubscribe tokens: who unsubscribes from what, sealed so that nobody can read or forge
//! them.
//!
//! A token names an account, one of its lists and the (normalised) recipient address. It
//! is sealed with ChaCha20-Poly1305 (ring) under a key from the key file, and written as
//! URL-safe base64 without padding: `key id ‖ nonce ‖ ciphertext ‖ tag`. It carries no
//! readable personal data; a token that was altered, forged, or sealed with a key no
//! longer in the file is refused.
//!
//! The key file holds one key per line, `<id> <base64 of 32 octets>`; the last line seals
//! new tokens, every line opens them. [`TokenKeys::rotate`] appends a new key: tokens in mail
//! already sent keep working until their key's line is deleted. The file is created on first
//! use with mode 0600.

use std::io::Write;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::envelope::QueueId;

const TAG_LEN: usize = 16;
const VERSION: u8 = 1;
const RETURN_PATH_VERSION: u8 = 2;
/// Bound into a return-path token's associated data.
const RETURN_PATH_PURPOSE: &[u8] = b"return-path";
const ENGAGEMENT_VERSION: u8 = 3;
/// Bound into an engagement token's associated data.
const ENGAGEMENT_PURPOSE: &[u8] = b"engagement";
const CONFIRM_VERSION: u8 = 4;
/// Bound into a confirmation token's associated data.
const CONFIRM_PURPOSE: &[u8] = b"confirm";
/// Longest user agent a confirmation token carries.
pub const MAX_CONFIRM_AGENT: usize = 200;
/// Longest link target an engagement token carries (longer links stay as they are).
pub const MAX_TRACKED_URL: usize = 2000;
/// Longest engagement token accepted.
pub const MAX_ENGAGEMENT_TOKEN: usize = 4096;

/// RFC 4648 base32 in lower case without padding, decoding lower case only (callers fold).
static BASE32_LOWER: std::sync::LazyLock<data_encoding::Encoding> =
    std::sync::LazyLock::new(|| {
        let mut spec = data_encoding::Specification::new();
        spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
        spec.encoding().expect("a valid base32 alphabet")
    });
/// Longest token accepted (an address of 254 octets with long names fits well within).
pub const MAX_TOKEN_LEN: usize = 1024;

/// What a return-path token says: which message, recipient, account, list and campaign a
/// bounce mailed back to `<prefix>+<token>@<domain>` is about. `list` and `campaign` are
/// empty when the message had none.
#[derive(Clone, PartialEq, Eq)]
pub struct ReturnPath {
    pub id: QueueId,
    pub account: String,
    pub list: String,
    pub campaign: String,
    /// The recipient as the message was sent to it.
    pub address: String,
}

// The address is personal data: Debug shows its domain only.
impl std::fmt::Debug for ReturnPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let domain = self.address.rsplit_once('@').map_or("", |(_, d)| d);
        f.debug_struct("ReturnPath")
            .field("id", &self.id)
            .field("account", &self.account)
            .field("list", &self.list)
            .field("campaign", &self.campaign)
            .field("domain", &domain)
            .finish()
    }
}

/// What an engagement token (`/c/TOKEN`, `/o/TOKEN`) says: who opened which message, or
/// followed which of its links. `url` is the link's target (empty for an open): the click
/// redirect can only lead where the message's own link led.
#[derive(Clone, PartialEq, Eq)]
pub struct Engagement {
    pub click: bool,
    pub id: QueueId,
    pub account: String,
    pub list: String,
    pub campaign: String,
    pub url: String,
    pub address: String,
}

// The address is personal data: Debug shows its domain only.
impl std::fmt::Debug for Engagement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let domain = self.address.rsplit_once('@').map_or("", |(_, d)| d);
        f.debug_struct("Engagement")
            .field("click", &self.click)
            .field("id", &self.id)
            .field("account", &self.account)
            .field("list", &self.list)
            .field("campaign", &self.campaign)
            .field("url", &self.url)
            .field("domain", &domain)
            .finish()
    }
}

/// What a confirmation token (`/s/confirm/TOKEN`) says: who asked to join which list,
/// when, from where — the proof the consent record keeps once the link is followed.
#[derive(Clone, PartialEq, Eq)]
pub struct Confirm {
    pub account: String,
    pub list: String,
    /// When the confirmation was asked for (its link expires from then).
    pub asked_ms: u64,
    /// The form's client address and user agent (empty when unknown).
    pub ip: String,
    pub user_agent: String,
    /// A re-permission: the person confirms a consent that aged.
    pub reconfirm: bool,
    pub address: String,
}

// The address is personal data: Debug shows its domain only.
impl std::fmt::Debug for Confirm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let domain = self.address.rsplit_once('@').map_or("", |(_, d)| d);
        f.debug_struct("Confirm")
            .field("account", &self.account)
            .field("list", &self.list)
            .field("asked_ms", &self.asked_ms)
            .field("reconfirm", &self.reconfirm)
            .field("domain", &domain)
            .finish_non_exhaustive()
    }
}

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub account: String,
    pub list: String,
    /// The normalised recipient address.
    pub address: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("not a token")]
    Malformed,
    #[error("unknown key")]
    UnknownKey,
    #[error("the token does not authenticate")]
    Forged,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {what}")]
    Bad {
        path: String,
        line: usize,
        what: &'static str,
    },
    #[error("{path}: no keys")]
    Empty { path: String },
}

pub struct TokenKeys {
    /// (id, key); the last one seals.
    keys: Vec<(u8, LessSafeKey)>,
    rng: SystemRandom,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<u8> = self.keys.iter().map(|(id, _)| *id).collect();
        f.debug_struct("TokenKeys").field("ids", &ids).finish()
    }
}

fn aead_key(bytes: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, bytes).expect("32-octet key"))
}

fn random_key(rng: &SystemRandom) -> [u8; 32] {
    let mut k = [0u8; 32];
    rng.fill(&mut k).expect("system randomness");
    k
}

impl TokenKeys {
    /// Keys from `(id, key)` pairs; the last seals. For tests and tools.
    pub fn from_keys(keys: &[(u8, [u8; 32])]) -> TokenKeys {
        TokenKeys {
            keys: keys.iter().map(|(id, k)| (*id, aead_key(k))).collect(),
            rng: SystemRandom::new(),
        }
    }

    /// Reads the key file, creating it with one fresh key (mode 0600) if it is missing.
    pub fn load_or_create(path: &Path) -> Result<TokenKeys, KeyFileError> {
        let p = || path.display().to_string();
        let io = |source| KeyFileError::Io { path: p(), source };
        if !path.exists() {
            let rng = SystemRandom::new();
            let line = format!("1 {}\n", URL_SAFE_NO_PAD.encode(random_key(&rng)));
            match crate::files::write_new(path, line.as_bytes()) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(e)),
            }
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let mut keys: Vec<(u8, LessSafeKey)> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |what| KeyFileError::Bad {
                path: p(),
                line: n + 1,
                what,
            };
            let (id, key) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| bad("expected `<id> <base64 key>`"))?;
            let id: u8 = id.parse().map_err(|_| bad("the id must be 0-255"))?;
            let key: [u8; 32] = URL_SAFE_NO_PAD
                .decode(key.trim())
                .ok()
                .and_then(|k| k.try_into().ok())
                .ok_or_else(|| bad("the key must be 32 octets in URL-safe base64"))?;
            if keys.iter().any(|(other, _)| *other == id) {
                return Err(bad("this id is used twice"));
            }
            keys.push((id, aead_key(&key)));
        }
        if keys.is_empty() {
            return Err(KeyFileError::Empty { path: p() });
        }
        Ok(TokenKeys {
            keys,
            rng: SystemRandom::new(),
        })
    }

    /// Appends a new key, which seals from now on; returns its id.
    pub fn rotate(path: &Path) -> Result<u8, KeyFileError> {
        let current = TokenKeys::load_or_create(path)?;
        let used: Vec<u8> = current.keys.iter().map(|(id, _)| *id).collect();
        let last = *used.last().expect("not empty");
        let id = (1..=255u16)
            .map(|d| last.wrapping_add(d as u8))
            .find(|id| !used.contains(id))
            .ok_or(KeyFileError::Bad {
                path: path.display().to_string(),
                line: used.len(),
                what: "all 256 key ids are in use: delete old keys first",
            })?;
        let line = format!(
            "{id} {}\n",
            URL_SAFE_NO_PAD.encode(random_key(&current.rng))
        );
        let io = |source| KeyFileError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(io)?;
        f.write_all(line.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        Ok(id)
    }

    /// Seals `plain` under the sealing key, bound to `purpose`: `key id ‖ nonce ‖
    /// ciphertext ‖ tag`.
    pub fn seal_bytes(&self, purpose: &[u8], mut plain: Vec<u8>) -> Vec<u8> {
        let (id, key) = self.keys.last().expect("at least one key");
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).expect("system randomness");
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(*id, purpose)),
            &mut plain,
        )
        .expect("sealing cannot fail for these sizes");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + plain.len());
        out.push(*id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&plain);
        out
    }

    /// Opens what [`TokenKeys::seal_bytes`] sealed for `purpose`.
    pub fn open_bytes(&self, purpose: &[u8], raw: &[u8]) -> Result<Vec<u8>, TokenError> {
        if raw.len() < 1 + NONCE_LEN + TAG_LEN + 3 {
            return Err(TokenError::Malformed);
        }
        let id = raw[0];
        let key = self
            .keys
            .iter()
            .find(|(k, _)| *k == id)
            .map(|(_, key)| key)
            .ok_or(TokenError::UnknownKey)?;
        let nonce: [u8; NONCE_LEN] = raw[1..1 + NONCE_LEN].try_into().expect("length checked");
        let mut sealed = raw[1 + NONCE_LEN..].to_vec();
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(id, purpose)),
                &mut sealed,
            )
            .map_err(|_| TokenError::Forged)?;
        Ok(plain.to_vec())
    }

    /// The URL-safe token for `u`.
    pub fn seal(&self, u: &Unsubscribe) -> String {
        let mut plain = Vec::with_capacity(3 + u.account.len() + u.list.len() + u.address.len());
        plain.push(VERSION);
        for field in [&u.account, &u.list] {
            push_field(&mut plain, field);
        }
        plain.extend_from_slice(u.address.as_bytes());
        URL_SAFE_NO_PAD.encode(self.seal_bytes(b"", plain))
    }

    /// What `token` says, if it is genuine.
    pub fn open(&self, token: &str) -> Result<Unsubscribe, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| TokenError::Malformed)?;
        let plain = self.open_bytes(b"", &raw)?;
        decode_plain(&plain).ok_or(TokenError::Malformed)
    }

    /// The return-path token for `r`: lower-case base32 (RFC 4648, no padding), so that
    /// an MTA that folds the case of an envelope address does not break it.
    pub fn seal_return_path(&self, r: &ReturnPath) -> String {
        let mut plain = Vec::with_capacity(
            12 + r.account.len() + r.list.len() + r.campaign.len() + r.address.len(),
        );
        plain.push(RETURN_PATH_VERSION);
        plain.extend_from_slice(&r.id.get().to_be_bytes());
        for field in [&r.account, &r.list, &r.campaign] {
            push_field(&mut plain, field);
        }
        plain.extend_from_slice(r.address.as_bytes());
        BASE32_LOWER.encode(&self.seal_bytes(RETURN_PATH_PURPOSE, plain))
    }

    /// What a return-path token says, if it is genuine (either case).
    pub fn open_return_path(&self, token: &str) -> Result<ReturnPath, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let raw = BASE32_LOWER
            .decode(token.to_ascii_lowercase().as_bytes())
            .map_err(|_| TokenError::Malformed)?;
        let plain = self.open_bytes(RETURN_PATH_PURPOSE, &raw)?;
        decode_return_path(&plain).ok_or(TokenError::Malformed)
    }
}

impl TokenKeys {
    /// The URL-safe engagement token for `e`.
    pub fn seal_engagement(&self, e: &Engagement) -> String {
        let mut plain = Vec::with_capacity(
            16 + e.account.len() + e.list.len() + e.campaign.len() + e.url.len() + e.address.len(),
        );
        plain.push(ENGAGEMENT_VERSION);
        plain.push(u8::from(e.click));
        plain.extend_from_slice(&e.id.get().to_be_bytes());
        for field in [&e.account, &e.list, &e.campaign] {
            push_field(&mut plain, field);
        }
        let url = &e.url.as_bytes()[..e.url.len().min(MAX_TRACKED_URL)];
        plain.extend_from_slice(&(url.len() as u16).to_be_bytes());
        plain.extend_from_slice(url);
        plain.extend_from_slice(e.address.as_bytes());
        URL_SAFE_NO_PAD.encode(self.seal_bytes(ENGAGEMENT_PURPOSE, plain))
    }

    /// What an engagement token says, if it is genuine.
    pub fn open_engagement(&self, token: &str) -> Result<Engagement, TokenError> {
        if token.len() > MAX_ENGAGEMENT_TOKEN {
            return Err(TokenError::Malformed);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| TokenError::Malformed)?;
        let plain = self.open_bytes(ENGAGEMENT_PURPOSE, &raw)?;
        decode_engagement(&plain).ok_or(TokenError::Malformed)
    }
}

impl TokenKeys {
    /// The URL-safe confirmation token for `c`.
    pub fn seal_confirm(&self, c: &Confirm) -> String {
        let mut plain = Vec::with_capacity(16 + c.account.len() + c.list.len() + c.address.len());
        plain.push(CONFIRM_VERSION);
        plain.push(u8::from(c.reconfirm));
        plain.extend_from_slice(&c.asked_ms.to_be_bytes());
        let agent = truncate(&c.user_agent, MAX_CONFIRM_AGENT);
        for field in [c.account.as_str(), &c.list, &c.ip, agent] {
            push_field(&mut plain, field);
        }
        plain.extend_from_slice(c.address.as_bytes());
        URL_SAFE_NO_PAD.encode(self.seal_bytes(CONFIRM_PURPOSE, plain))
    }

    /// What a confirmation token says, if it is genuine.
    pub fn open_confirm(&self, token: &str) -> Result<Confirm, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| TokenError::Malformed)?;
        let p = self.open_bytes(CONFIRM_PURPOSE, &raw)?;
        decode_confirm(&p).ok_or(TokenError::Malformed)
    }
}

/// The longest prefix of `s` of at most `max` octets that ends on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn decode_confirm(p: &[u8]) -> Option<Confirm> {
    let (&version, rest) = p.split_first()?;
    if version != CONFIRM_VERSION {
        return None;
    }
    let (&reconfirm, rest) = rest.split_first()?;
    let (asked, mut rest) = rest.split_at_checked(8)?;
    let asked_ms = u64::from_be_bytes(asked.try_into().ok()?);
    let account = take_field(&mut rest)?;
    let list = take_field(&mut rest)?;
    let ip = take_field(&mut rest)?;
    let user_agent = take_field(&mut rest)?;
    Some(Confirm {
        account,
        list,
        asked_ms,
        ip,
        user_agent,
        reconfirm: reconfirm == 1,
        address: String::from_utf8(rest.to_vec()).ok()?,
    })
}

fn decode_engagement(p: &[u8]) -> Option<Engagement> {
    let (&version, rest) = p.split_first()?;
    if version != ENGAGEMENT_VERSION {
        return None;
    }
    let (&click, rest) = rest.split_first()?;
    let (id, mut rest) = rest.split_at_checked(8)?;
    let id = QueueId(u64::from_be_bytes(id.try_into().ok()?));
    let account = take_field(&mut rest)?;
    let list = take_field(&mut rest)?;
    let campaign = take_field(&mut rest)?;
    let (len, rest) = rest.split_at_checked(2)?;
    let len = u16::from_be_bytes(len.try_into().ok()?) as usize;
    let (url, address) = rest.split_at_checked(len)?;
    Some(Engagement {
        click: click == 1,
        id,
        account,
        list,
        campaign,
        url: String::from_utf8(url.to_vec()).ok()?,
        address: String::from_utf8(address.to_vec()).ok()?,
    })
}

/// The associated data: the key id, and what the token is for (empty for unsubscribe
/// tokens, as they always were), so a token of one kind never opens as the other.
fn aad(id: u8, purpose: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(1 + purpose.len());
    a.push(id);
    a.extend_from_slice(purpose);
    a
}

/// A length octet and at most 255 octets of `field`.
fn push_field(plain: &mut Vec<u8>, field: &str) {
    let n = field.len().min(255);
    plain.push(n as u8);
    plain.extend_from_slice(&field.as_bytes()[..n]);
}

/// Length-prefixed fields, in order, from the front of `rest`.
fn take_field(rest: &mut &[u8]) -> Option<String> {
    let (&len, tail) = rest.split_first()?;
    let (field, tail) = tail.split_at_checked(len as usize)?;
    *rest = tail;
    String::from_utf8(field.to_vec()).ok()
}

fn decode_return_path(p: &[u8]) -> Option<ReturnPath> {
    let (&version, rest) = p.split_first()?;
    if version != RETURN_PATH_VERSION {
        return None;
    }
    let (id, mut rest) = rest.split_at_checked(8)?;
    let id = QueueId(u64::from_be_bytes(id.try_into().ok()?));
    let account = take_field(&mut rest)?;
    let list = take_field(&mut rest)?;
    let campaign = take_field(&mut rest)?;
    let address = String::from_utf8(rest.to_vec()).ok()?;
    Some(ReturnPath {
        id,
        account,
        list,
        campaign,
        address,
    })
}

fn decode_plain(p: &[u8]) -> Option<Unsubscribe> {
    let (&version, mut rest) = p.split_first()?;
    if version != VERSION {
        return None;
    }
    let account = take_field(&mut rest)?;
    let list = take_field(&mut rest)?;
    let address = String::from_utf8(rest.to_vec()).ok()?;
    Some(Unsubscribe {
        account,
        list,
        address,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Unsubscribe {
        Unsubscribe {
            account: "shop".into(),
            list: "weekly".into(),
            address: "jane.doe@example.com".into(),
        }
    }

    #[test]
    fn confirmation_tokens_round_trip_and_open_as_nothing_else() {
        let keys = TokenKeys::from_keys(&[(7, [1; 32])]);
        let c = Confirm {
            account: "shop".into(),
            list: "deals".into(),
            asked_ms: 1_700_000_000_000,
            ip: "192.0.2.7".into(),
            user_agent: format!("Mozilla/5.0 {}é", "x".repeat(MAX_CONFIRM_AGENT)),
            reconfirm: true,
            address: "jane@example.com".into(),
        };
        let t = keys.seal_confirm(&c);
        assert!(!t.contains("jane"));
        let opened = keys.open_confirm(&t).unwrap();
        assert_eq!(opened.address, c.address);
        assert_eq!((opened.asked_ms, opened.reconfirm), (c.asked_ms, true));
        assert!(opened.user_agent.len() <= MAX_CONFIRM_AGENT);
        // A confirmation token is no unsubscribe token, and the reverse.
        assert!(keys.open(&t).is_err());
        assert!(keys.open_confirm(&keys.seal(&sample())).is_err());
    }

    #[test]
    fn tokens_round_trip_and_hide_the_address() {
        let keys = TokenKeys::from_keys(&[(7, [1; 32])]);
        let t = keys.seal(&sample());
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert!(t.len() < 120, "{} octets", t.len());
        assert!(!t.contains("jane") && !t.contains("shop"));
        assert_eq!(keys.open(&t), Ok(sample()));
        // Two tokens for the same recipient differ (random nonce).
        assert_ne!(keys.seal(&sample()), t);
    }

    #[test]
    fn altered_forged_and_unknown_key_tokens_are_refused() {
        let keys = TokenKeys::from_keys(&[(7, [1; 32])]);
        let t = keys.seal(&sample());
        let mut raw = URL_SAFE_NO_PAD.decode(&t).unwrap();
        for i in [1, 20, raw.len() - 1] {
            raw[i] ^= 1;
            assert_eq!(
                keys.open(&URL_SAFE_NO_PAD.encode(&raw)),
                Err(TokenError::Forged),
                "flip at {i}"
            );
            raw[i] ^= 1;
        }
        raw[0] = 8;
        assert_eq!(
            keys.open(&URL_SAFE_NO_PAD.encode(&raw)),
            Err(TokenError::UnknownKey)
        );
        let other = TokenKeys::from_keys(&[(7, [2; 32])]);
        assert_eq!(other.open(&t), Err(TokenError::Forged));
        for junk in ["", "abc", "!!!!", &"A".repeat(2000)] {
            assert!(keys.open(junk).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn engagement_tokens_name_their_link_and_no_other() {
        let keys = TokenKeys::from_keys(&[(7, [1; 32])]);
        let e = Engagement {
            click: true,
            id: QueueId(99),
            account: "shop".into(),
            list: "weekly".into(),
            campaign: "spring".into(),
            url: "https://shop.example/sale?a=1&b=2".into(),
            address: "jane.doe@example.com".into(),
        };
        let t = keys.seal_engagement(&e);
        assert!(!t.contains("shop") && !t.contains("jane"));
        assert_eq!(keys.open_engagement(&t), Ok(e.clone()));
        // Neither an unsubscribe nor a return-path token opens as one, nor one altered.
        assert!(keys.open_engagement(&keys.seal(&sample())).is_err());
        let mut raw = URL_SAFE_NO_PAD.decode(&t).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        assert_eq!(
            keys.open_engagement(&URL_SAFE_NO_PAD.encode(&raw)),
            Err(TokenError::Forged)
        );
        assert!(keys.open(&t).is_err());
    }

    #[test]
    fn key_file_creation_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("unsubscribe.keys");
        let first = TokenKeys::load_or_create(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let old = first.seal(&sample());
        assert_eq!(TokenKeys::rotate(&path).unwrap(), 2);
        let rotated = TokenKeys::load_or_create(&path).unwrap();
        // Old tokens still open; new ones use the new key.
        assert_eq!(rotated.open(&old), Ok(sample()));
        let new = rotated.seal(&sample());
        assert_eq!(URL_SAFE_NO_PAD.decode(&new).unwrap()[0], 2);
        assert_eq!(first.open(&new), Err(TokenError::UnknownKey));
        std::fs::write(&path, "1 tooshort\n").unwrap();
        let err = TokenKeys::load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains(":1: the key must be 32 octets"), "{err}");
    }
}
