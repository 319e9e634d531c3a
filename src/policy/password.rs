//! Password hashes for AUTH users: Argon2id PHC strings, never plain passwords, and the one
//! place that verifies them.
//!
//! Argon2 is slow and memory-hard on purpose (19 MiB and tens of milliseconds at the default
//! cost), which is right against stolen hashes but makes every failed login an attacker's
//! lever on our memory and CPU. So verification is bounded here, whatever the clients do:
//!
//! - at most `concurrency` verifications run at once, each on the blocking pool, never on
//!   the async threads; a login that cannot get a slot within [`SLOT_WAIT`] is answered
//!   "busy" (the session says `454 4.7.0`), so a flood queues nowhere;
//! - each running verification uses one of `concurrency` reusable memory buffers owned by
//!   [`Passwords`], not a fresh allocation per attempt: glibc keeps freed multi-MiB blocks in
//!   the per-thread arena of whichever blocking thread ran them, so unbounded concurrent
//!   verifications used to leave gigabytes of RSS behind;
//! - the policy refuses hashes weaker than Argon2id at the default cost and hashes whose
//!   cost would let one verification take more than [`MAX_M_COST`] KiB.
//!
//! An application that opens a connection and authenticates for every message should not
//! pay Argon2 each time, so a successful check is remembered for a while as a keyed BLAKE3
//! digest of (user, password, stored hash) under a per-process random key: a repeat login
//! costs a hash, and changing the stored hash invalidates the entry. Failures are never
//! cached, so guessing always pays full price (and the session's failure counters in
//! `crate::session` slow and lock out guessers before they get here).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{Output, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

/// How long a successful verification is trusted without running Argon2 again.
const CACHE_TTL: Duration = Duration::from_secs(300);
/// Bound on remembered logins; the cache is cleared when it fills.
const CACHE_MAX: usize = 10_000;
/// How long a login waits for a verification slot before it is answered "busy".
pub const SLOT_WAIT: Duration = Duration::from_secs(2);
/// The weakest accepted cost: Argon2id's default, 19 MiB (in KiB) …
pub const MIN_M_COST: u32 = Params::DEFAULT_M_COST;
/// … times two passes (memory × passes may be spent differently, not less).
pub const MIN_T_COST: u32 = Params::DEFAULT_T_COST;
/// The most memory one verification may take, in KiB (256 MiB).
pub const MAX_M_COST: u32 = 256 * 1024;
/// The most passes and lanes a stored hash may ask for.
pub const MAX_T_COST: u32 = 16;
pub const MAX_P_COST: u32 = 8;

/// Hashes a password as an Argon2id PHC string with a random salt (for `hash-password`).
pub fn hash_password(password: &str) -> String {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).expect("16 bytes is a valid salt");
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("Argon2 with default parameters cannot fail")
        .to_string()
}

/// Checks that a policy value is an Argon2id PHC string at least as strong as the default
/// cost and not so costly that verifying it could exhaust memory (so a plain password or a
/// weak hash pasted into the policy is refused at load, not discovered at the first login).
pub fn check_hash_format(hash: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(hash).map_err(|e| {
        format!("not a PHC password hash ({e}); make one with `optin-relay hash-password`")
    })?;
    if parsed.algorithm.as_str() != "argon2id" {
        return Err(format!(
            "algorithm {:?} is not accepted: use argon2id (`optin-relay hash-password`)",
            parsed.algorithm.as_str()
        ));
    }
    if parsed
        .version
        .is_some_and(|v| v != u32::from(Version::V0x13))
    {
        return Err("only Argon2 version 19 (0x13) is accepted".into());
    }
    let params = Params::try_from(&parsed).map_err(|e| format!("bad Argon2 parameters ({e})"))?;
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err("the hash has no salt or no output".into());
    }
    let (m, t, p) = (params.m_cost(), params.t_cost(), params.p_cost());
    if u64::from(m) * u64::from(t) < u64::from(MIN_M_COST) * u64::from(MIN_T_COST)
        || m < MIN_M_COST / 4
    {
        return Err(format!(
            "Argon2id cost m={m},t={t} is weaker than the default (m={MIN_M_COST},t={MIN_T_COST}); \
             make a new hash with `optin-relay hash-password`"
        ));
    }
    if m > MAX_M_COST || t > MAX_T_COST || p > MAX_P_COST {
        return Err(format!(
            "Argon2id cost m={m},t={t},p={p} is above the limit (m≤{MAX_M_COST}, t≤{MAX_T_COST}, \
             p≤{MAX_P_COST})"
        ));
    }
    Ok(())
}

/// All verification slots stayed busy for [`SLOT_WAIT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("every password verification slot is busy")]
pub struct Busy;

/// Verifies passwords within the bounds of the module doc.
pub struct Passwords {
    key: [u8; 32],
    entries: Mutex<HashMap<String, (blake3::Hash, Instant)>>,
    slots: Arc<tokio::sync::Semaphore>,
    /// Argon2 working memory, one buffer per slot, reused.
    buffers: Mutex<Vec<Vec<Block>>>,
    concurrency: usize,
}

impl Default for Passwords {
    /// As many slots as the machine has cores.
    fn default() -> Self {
        Passwords::new(crate::config::default_auth_concurrency())
    }
}

impl Passwords {
    pub fn new(concurrency: usize) -> Passwords {
        let concurrency = concurrency.max(1);
        Passwords {
            key: rand::random(),
            entries: Mutex::new(HashMap::new()),
            slots: Arc::new(tokio::sync::Semaphore::new(concurrency)),
            buffers: Mutex::new(Vec::with_capacity(concurrency)),
            concurrency,
        }
    }

    fn digest(&self, username: &str, password: &str, stored: &str) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        for part in [username, password, stored] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.finalize()
    }

    /// True when this exact login succeeded recently (cheap: no Argon2).
    pub fn cached(&self, username: &str, password: &str, stored: &str) -> bool {
        let digest = self.digest(username, password, stored);
        let entries = self.entries.lock().expect("password cache lock");
        // blake3::Hash compares in constant time.
        entries
            .get(username)
            .is_some_and(|(d, expires)| *d == digest && *expires > Instant::now())
    }

    fn remember(&self, username: &str, password: &str, stored: &str) {
        let digest = self.digest(username, password, stored);
        let mut entries = self.entries.lock().expect("password cache lock");
        if entries.len() >= CACHE_MAX {
            entries.clear();
        }
        entries.insert(username.to_string(), (digest, Instant::now() + CACHE_TTL));
    }

    /// Whether `password` matches the stored PHC hash: from the cache, or by Argon2 in one
    /// of the bounded slots off the async threads. `Err(Busy)` when no slot came free in
    /// time.
    pub async fn verify(
        self: &Arc<Self>,
        username: &str,
        password: &str,
        stored: &str,
    ) -> Result<bool, Busy> {
        if self.cached(username, password, stored) {
            return Ok(true);
        }
        let slot = tokio::time::timeout(SLOT_WAIT, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| Busy)?
            .map_err(|_| Busy)?;
        let this = self.clone();
        let (pw, st) = (password.to_string(), stored.to_string());
        let ok = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            this.argon2(&pw, &st)
        })
        .await
        .unwrap_or(false);
        if ok {
            self.remember(username, password, stored);
        }
        Ok(ok)
    }

    /// The same, blocking (for the CLI and tests; it still takes a slot's buffer).
    pub fn verify_blocking(&self, username: &str, password: &str, stored: &str) -> bool {
        if self.cached(username, password, stored) {
            return true;
        }
        let ok = self.argon2(password, stored);
        if ok {
            self.remember(username, password, stored);
        }
        ok
    }

    /// Runs Argon2 with a pooled buffer and compares in constant time.
    fn argon2(&self, password: &str, stored: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(stored) else {
            return false;
        };
        let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
            return false;
        };
        let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else {
            return false;
        };
        let version = match parsed.version.map(Version::try_from) {
            None => Version::default(),
            Some(Ok(v)) => v,
            Some(Err(_)) => return false,
        };
        let Ok(params) = Params::try_from(&parsed) else {
            return false;
        };
        // Hashes loaded through the policy are within these bounds; a stored value that is
        // not (a dummy, a future format) is refused rather than allowed to allocate.
        if params.m_cost() > MAX_M_COST || params.p_cost() > MAX_P_COST {
            return false;
        }
        let mut salt_buf = [0u8; 64];
        let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
            return false;
        };
        let blocks = params.block_count();
        let mut memory = self.take_buffer();
        if memory.len() < blocks {
            memory.resize(blocks, Block::default());
        }
        let mut out = vec![0u8; expected.len()];
        let computed = Argon2::new(algorithm, version, params).hash_password_into_with_memory(
            password.as_bytes(),
            salt,
            &mut out,
            &mut memory[..blocks],
        );
        self.return_buffer(memory);
        computed.is_ok() && Output::new(&out).is_ok_and(|o| o == expected)
    }

    fn take_buffer(&self) -> Vec<Block> {
        self.buffers
            .lock()
            .expect("argon2 buffers")
            .pop()
            .unwrap_or_default()
    }

    fn return_buffer(&self, memory: Vec<Block>) {
        let mut buffers = self.buffers.lock().expect("argon2 buffers");
        // More buffers than slots only when blocking callers ran beside the slots.
        if buffers.len() < self.concurrency {
            buffers.push(memory);
        }
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
        let p = Passwords::new(2);
        assert!(p.verify_blocking("u", "correct horse", &hash));
        // second time from the cache
        assert!(p.cached("u", "correct horse", &hash));
        assert!(!p.verify_blocking("u", "wrong", &hash));
        // a changed stored hash is not served from the cache
        let other = hash_password("new password");
        assert!(!p.verify_blocking("u", "correct horse", &other));
        assert!(p.verify_blocking("u", "new password", &other));
    }

    #[test]
    fn format_checks() {
        assert!(check_hash_format("hunter2").is_err());
        assert!(check_hash_format("$pbkdf2-sha256$i=1000$c2FsdA$aGFzaA").is_err());
        // the same password with weaker parameters or another variant
        let weak = |alg: Algorithm, m: u32, t: u32| {
            let params = Params::new(m, t, 1, None).unwrap();
            Argon2::new(alg, Version::V0x13, params)
                .hash_password(b"pw", &SaltString::encode_b64(b"0123456789abcdef").unwrap())
                .unwrap()
                .to_string()
        };
        let too_little_memory = weak(Algorithm::Argon2id, 4096, 2);
        assert!(
            check_hash_format(&too_little_memory)
                .unwrap_err()
                .contains("weaker than the default"),
        );
        assert!(check_hash_format(&weak(Algorithm::Argon2id, 19456, 1)).is_err());
        assert!(check_hash_format(&weak(Algorithm::Argon2i, 19456, 2)).is_err());
        assert!(check_hash_format(&weak(Algorithm::Argon2d, 19456, 2)).is_err());
        // the same work spent as more memory and one pass is as strong
        check_hash_format(&weak(Algorithm::Argon2id, 2 * 19456, 1)).unwrap();
        check_hash_format(&weak(Algorithm::Argon2id, 19456, 2)).unwrap();
        // a cost that would let one login take a gigabyte is refused
        assert!(
            check_hash_format(
                "$argon2id$v=19$m=1048576,t=2,p=1$MDEyMzQ1Njc4OWFiY2RlZg$aGFzaGhhc2hoYXNoaGFzaA"
            )
            .unwrap_err()
            .contains("above the limit")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verifications_are_bounded_and_reuse_their_memory() {
        let hash = hash_password("right");
        let p = Arc::new(Passwords::new(2));
        let attempts: Vec<_> = (0..12)
            .map(|i| {
                let (p, hash) = (p.clone(), hash.clone());
                tokio::spawn(async move { p.verify(&format!("u{i}"), "wrong", &hash).await })
            })
            .collect();
        for a in attempts {
            // each either ran (and failed) or was told the slots are busy
            assert_ne!(a.await.unwrap(), Ok(true));
        }
        // never more buffers than slots, each the size of one verification
        let buffers = p.buffers.lock().unwrap();
        assert!(buffers.len() <= 2, "{} buffers", buffers.len());
        assert!(buffers.iter().all(|b| b.len() == MIN_M_COST as usize));
    }

    #[tokio::test]
    async fn a_busy_verifier_answers_busy_instead_of_queueing() {
        let hash = hash_password("right");
        let p = Arc::new(Passwords::new(1));
        // hold the only slot
        let held = p.slots.clone().acquire_owned().await.unwrap();
        tokio::time::pause();
        assert_eq!(p.verify("u", "wrong", &hash).await, Err(Busy));
        drop(held);
        tokio::time::resume();
        assert_eq!(p.verify("u", "right", &hash).await, Ok(true));
        // a remembered login needs no slot
        let _held = p.slots.clone().acquire_owned().await.unwrap();
        assert_eq!(p.verify("u", "right", &hash).await, Ok(true));
    }
}
