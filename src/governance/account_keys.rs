//! Account API keys: what an account's own systems present to the `/account/…` routes of
//! the public listener (`Authorization: Bearer ork_<id>_<secret>`).
//!
//! A key belongs to one account and opens only that account's lists, records and events.
//! It is made by the operator (`optin-relay account key create`, `POST
//! /admin/accounts/{name}/keys`) and shown once: the relay keeps only its id, a label, the
//! BLAKE3 hash of its secret part (256 random bits, so a plain hash is enough) and when it
//! was made and revoked, in `state/account-keys.json` (0600). A presented key is found by
//! its id and its hash compared in constant time; a revoked key stays in the file (so its
//! id is never reused and the listing shows when it went) and opens nothing.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

/// Most keys one account may hold (revoked ones included).
pub const MAX_KEYS_PER_ACCOUNT: usize = 100;
/// Longest label.
pub const MAX_LABEL: usize = 100;
/// Longest presented key looked at.
const MAX_PRESENTED: usize = 200;

/// One key, as stored and listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// 12 hexadecimal digits; public (it names the key in logs and records).
    pub id: String,
    pub account: String,
    #[serde(default)]
    pub label: String,
    /// BLAKE3 of the secret part, hexadecimal.
    hash: String,
    pub created_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<u64>,
}

impl KeyInfo {
    /// A key of `account` with id `id` and no secret (it authenticates nothing).
    #[cfg(test)]
    pub(crate) fn for_tests(id: &str, account: &str) -> KeyInfo {
        KeyInfo {
            id: id.into(),
            account: account.into(),
            label: String::new(),
            hash: String::new(),
            created_ms: 0,
            revoked_ms: None,
        }
    }

    /// What the APIs show of a key.
    pub fn public(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "account": self.account,
            "label": self.label,
            "created_ms": self.created_ms,
            "revoked_ms": self.revoked_ms,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {why}")]
    File { path: PathBuf, why: String },
    #[error("account {0:?} has {MAX_KEYS_PER_ACCOUNT} keys already: revoked keys count too")]
    TooMany(String),
    #[error("a label has at most {MAX_LABEL} characters and no control characters")]
    BadLabel,
}

/// The key store.
pub struct AccountKeys {
    path: PathBuf,
    keys: RwLock<Vec<KeyInfo>>,
}

impl std::fmt::Debug for AccountKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountKeys")
            .field("path", &self.path)
            .finish()
    }
}

fn hash_of(secret: &str) -> blake3::Hash {
    blake3::hash(secret.as_bytes())
}

impl AccountKeys {
    /// Reads the store (none yet: empty). A damaged file is an error: starting without
    /// keys would lock every account out silently.
    pub fn open(path: &Path) -> Result<AccountKeys, KeyError> {
        let fail = |why: String| KeyError::File {
            path: path.to_path_buf(),
            why,
        };
        let keys = match std::fs::read(path) {
            Ok(bytes) => {
                crate::files::check_private(path).map_err(fail)?;
                serde_json::from_slice(&bytes).map_err(|e| fail(e.to_string()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(fail(e.to_string())),
        };
        Ok(AccountKeys {
            path: path.to_path_buf(),
            keys: RwLock::new(keys),
        })
    }

    fn save(&self, keys: &[KeyInfo]) -> Result<(), KeyError> {
        if let Some(dir) = self.path.parent() {
            crate::files::private_dir(dir).map_err(|e| KeyError::File {
                path: dir.to_path_buf(),
                why: e.to_string(),
            })?;
        }
        super::write_state(&self.path, &keys).map_err(|e| KeyError::File {
            path: self.path.clone(),
            why: e.to_string(),
        })
    }

    /// Makes a key for `account` (blocking: the file is written before it returns).
    /// Returns it with the whole key, which is shown once and never again.
    pub fn create(&self, account: &str, label: &str) -> Result<(KeyInfo, String), KeyError> {
        if label.chars().count() > MAX_LABEL || label.chars().any(char::is_control) {
            return Err(KeyError::BadLabel);
        }
        let mut keys = self.keys.write().expect("keys lock");
        if keys.iter().filter(|k| k.account == account).count() >= MAX_KEYS_PER_ACCOUNT {
            return Err(KeyError::TooMany(account.to_string()));
        }
        let mut rng = rand::rng();
        let id = loop {
            let raw: [u8; 6] = rand::Rng::random(&mut rng);
            let id = data_encoding::HEXLOWER.encode(&raw);
            if !keys.iter().any(|k| k.id == id) {
                break id;
            }
        };
        let raw: [u8; 32] = rand::Rng::random(&mut rng);
        let secret = URL_SAFE_NO_PAD.encode(raw);
        let info = KeyInfo {
            id: id.clone(),
            account: account.to_string(),
            label: label.to_string(),
            hash: hash_of(&secret).to_hex().to_string(),
            created_ms: crate::envelope::now_ms(),
            revoked_ms: None,
        };
        let mut next = keys.clone();
        next.push(info.clone());
        self.save(&next)?;
        *keys = next;
        Ok((info, format!("ork_{id}_{secret}")))
    }

    /// The keys of `account`, revoked ones included, oldest first.
    pub fn list(&self, account: &str) -> Vec<KeyInfo> {
        let keys = self.keys.read().expect("keys lock");
        keys.iter()
            .filter(|k| k.account == account)
            .cloned()
            .collect()
    }

    /// Revokes key `id` of `account`: `Ok(None)` when it has no such key, else the key
    /// (revoked now, or when it was).
    pub fn revoke(&self, account: &str, id: &str) -> Result<Option<KeyInfo>, KeyError> {
        let mut keys = self.keys.write().expect("keys lock");
        let Some(at) = keys.iter().position(|k| k.account == account && k.id == id) else {
            return Ok(None);
        };
        if keys[at].revoked_ms.is_some() {
            return Ok(Some(keys[at].clone()));
        }
        let mut next = keys.clone();
        next[at].revoked_ms = Some(crate::envelope::now_ms());
        self.save(&next)?;
        *keys = next;
        Ok(Some(keys[at].clone()))
    }

    /// The key a request presents, if it is one of ours and not revoked.
    pub fn authenticate(&self, presented: &str) -> Option<KeyInfo> {
        if presented.len() > MAX_PRESENTED {
            return None;
        }
        let (id, secret) = presented.strip_prefix("ork_")?.split_once('_')?;
        let keys = self.keys.read().expect("keys lock");
        let key = keys.iter().find(|k| k.id == id)?;
        // blake3::Hash compares in constant time.
        let stored = blake3::Hash::from_hex(&key.hash).ok()?;
        (hash_of(secret) == stored && key.revoked_ms.is_none()).then(|| key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_shown_once_scoped_and_revocable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/account-keys.json");
        let store = AccountKeys::open(&path).unwrap();
        let (info, key) = store.create("shop", "backend").unwrap();
        assert!(key.starts_with(&format!("ork_{}_", info.id)));
        assert_eq!(store.authenticate(&key).unwrap().account, "shop");
        // Nothing of the secret is in the file.
        let file = std::fs::read_to_string(&path).unwrap();
        // The secret is all after `ork_ID_` (URL-safe base64 has `_` of its own: the part
        // after the last one can be a character or two, found in the file by chance).
        let secret = key.strip_prefix(&format!("ork_{}_", info.id)).unwrap();
        assert!(secret.len() >= 40, "{secret}");
        assert!(!file.contains(secret));
        assert!(crate::files::check_private(&path).is_ok());
        // A changed secret, a made-up id, other shapes: nothing.
        let mut wrong = key.clone();
        wrong.pop();
        wrong.push(if key.ends_with('A') { 'B' } else { 'A' });
        for bad in [
            wrong.as_str(),
            "ork_000000000000_x",
            "",
            "ork_",
            "Bearer",
            &"x".repeat(500),
        ] {
            assert!(store.authenticate(bad).is_none(), "{bad}");
        }
        // It survives a restart; a revoked key opens nothing, then or after.
        let again = AccountKeys::open(&path).unwrap();
        assert!(again.authenticate(&key).is_some());
        assert!(again.revoke("other", &info.id).unwrap().is_none());
        assert!(
            again
                .revoke("shop", &info.id)
                .unwrap()
                .unwrap()
                .revoked_ms
                .is_some()
        );
        assert!(again.authenticate(&key).is_none());
        assert!(
            AccountKeys::open(&path)
                .unwrap()
                .authenticate(&key)
                .is_none()
        );
        assert_eq!(again.list("shop").len(), 1);
        assert!(again.list("other").is_empty());
        assert!(matches!(
            store.create("shop", "a\nb"),
            Err(KeyError::BadLabel)
        ));
    }

    #[test]
    fn a_damaged_store_is_an_error_not_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("account-keys.json");
        crate::files::write_new(&path, b"[{\"id\":").unwrap();
        assert!(AccountKeys::open(&path).is_err());
    }
}
