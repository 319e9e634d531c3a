//! Password hashes for AUTH users: Argon2id PHC strings, never plain passwords.
//!
//! Argon2 is slow on purpose (tens of milliseconds), which is right against stolen hashes but
//! wrong for an application that opens a connection and authenticates for every message. So
//! a successful check is remembered for a while as a keyed BLAKE3 digest of (user, password,
//! stored hash) under a per-process random key: a repeat login costs a hash, not an Argon2
//! run, and changing the stored hash invalidates the entry. Failures are never cached, so
//! guessing always pays full price. Callers run [`PasswordCache::verify`] off the async
//! threads (`spawn_blocking`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

/// How long a successful verification is trusted without running Argon2 again.
const CACHE_TTL: Duration = Duration::from_secs(300);
/// Bound on remembered logins; the cache is cleared when it fills.
const CACHE_MAX: usize = 10_000;

/// Hashes a password as an Argon2id PHC string with a random salt (for `hash-password`).
pub fn hash_password(password: &str) -> String {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).expect("16 bytes is a valid salt");
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("Argon2 with default parameters cannot fail")
        .to_string()
}

/// Checks that a policy value is an Argon2 PHC string (so a plain password pasted into the
/// policy is refused at load, not discovered at the first login).
pub fn check_hash_format(hash: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(hash).map_err(|e| {
        format!("not a PHC password hash ({e}); make one with `optin-relay hash-password`")
    })?;
    match parsed.algorithm.as_str() {
        "argon2id" | "argon2i" | "argon2d" => Ok(()),
        other => Err(format!(
            "algorithm {other:?} is not supported (use argon2id)"
        )),
    }
}

pub struct PasswordCache {
    key: [u8; 32],
    entries: Mutex<HashMap<String, (blake3::Hash, Instant)>>,
}

impl Default for PasswordCache {
    fn default() -> Self {
        PasswordCache {
            key: rand::random(),
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl PasswordCache {
    fn digest(&self, username: &str, password: &str, stored: &str) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        for part in [username, password, stored] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.finalize()
    }

    /// True when `password` matches the stored PHC hash. Blocking (Argon2 on a miss).
    pub fn verify(&self, username: &str, password: &str, stored: &str) -> bool {
        let digest = self.digest(username, password, stored);
        let now = Instant::now();
        {
            let entries = self.entries.lock().expect("password cache lock");
            // blake3::Hash compares in constant time.
            if let Some((d, expires)) = entries.get(username)
                && *d == digest
                && *expires > now
            {
                return true;
            }
        }
        let ok = PasswordHash::new(stored)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false);
        if ok {
            let mut entries = self.entries.lock().expect("password cache lock");
            if entries.len() >= CACHE_MAX {
                entries.clear();
            }
            entries.insert(username.to_string(), (digest, now + CACHE_TTL));
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let hash = hash_password("correct horse");
        assert!(hash.starts_with("$argon2id$"));
        check_hash_format(&hash).unwrap();
        let cache = PasswordCache::default();
        assert!(cache.verify("u", "correct horse", &hash));
        // second time from the cache
        assert!(cache.verify("u", "correct horse", &hash));
        assert!(!cache.verify("u", "wrong", &hash));
        // a changed stored hash is not served from the cache
        let other = hash_password("new password");
        assert!(!cache.verify("u", "correct horse", &other));
    }

    #[test]
    fn format_checks() {
        assert!(check_hash_format("hunter2").is_err());
        assert!(check_hash_format("$pbkdf2-sha256$i=1000$c2FsdA$aGFzaA").is_err());
    }
}
