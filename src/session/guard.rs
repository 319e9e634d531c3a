//! Failed AUTH, counted across sessions: per client address (IPv6: its /64, see
//! [`crate::policy::client_key`]) and per username, so that guessing slows down with each
//! failure and stops for a while after too many, however many connections the guesser
//! opens.
//!
//! A failure makes the session wait before it answers: `failure_delay`, doubled for each
//! earlier failure of the same client or username still remembered, up to
//! `failure_delay_max`. Once a client has `max_failures` remembered failures (or a username
//! `max_failures_per_user`), every AUTH from it (for it) is answered `454 4.7.0` without
//! checking the password — no Argon2 run — until `lockout` has passed since its last
//! failure. Failures are forgotten `lockout` after the last one; a successful login forgets
//! the username's failures (not the client's: one good account must not launder guesses at
//! the others). A username lockout can be triggered by anyone who knows the name, which is
//! why its threshold is higher than the client's; it blocks Argon2 runs, not the account's
//! other ways in (trusted networks).
//!
//! Memory is bounded: at most [`MAX_TRACKED`] clients and as many usernames are remembered;
//! when full, forgotten entries go first, then the one whose last failure is oldest.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::AuthLimits;

/// Clients (and, separately, usernames) remembered at most.
pub const MAX_TRACKED: usize = 65_536;
/// Longest username kept as a key (longer ones are cut; they are no real user anyway).
const MAX_USERNAME: usize = 256;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Why an AUTH is not even tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locked {
    Client,
    User,
}

#[derive(Debug)]
pub struct AuthGuard {
    limits: AuthLimits,
    clients: Mutex<HashMap<IpAddr, Failures>>,
    users: Mutex<HashMap<String, Failures>>,
}

impl AuthGuard {
    pub fn new(limits: AuthLimits) -> AuthGuard {
        AuthGuard {
            limits,
            clients: Mutex::new(HashMap::new()),
            users: Mutex::new(HashMap::new()),
        }
    }

    /// Whether an AUTH by `client` for `username` may be checked now.
    pub fn admit(&self, client: IpAddr, username: &str) -> Result<(), Locked> {
        let now = Instant::now();
        let lockout = self.limits.lockout;
        if remembered(
            &self.clients,
            &crate::policy::client_key(client),
            now,
            lockout,
        ) >= self.limits.max_failures
        {
            return Err(Locked::Client);
        }
        if remembered(&self.users, &user_key(username), now, lockout)
            >= self.limits.max_failures_per_user
        {
            return Err(Locked::User);
        }
        Ok(())
    }

    /// Records a failed AUTH; returns how long the session waits before answering.
    pub fn failed(&self, client: IpAddr, username: &str) -> Duration {
        let now = Instant::now();
        let lockout = self.limits.lockout;
        let by_client = count(
            &self.clients,
            crate::policy::client_key(client),
            now,
            lockout,
        );
        let by_user = count(&self.users, user_key(username), now, lockout);
        self.delay(by_client.max(by_user))
    }

    /// A successful login: the username's failures are forgotten.
    pub fn succeeded(&self, username: &str) {
        self.users
            .lock()
            .expect("auth guard lock")
            .remove(&user_key(username));
    }

    /// The wait after the `n`th remembered failure.
    fn delay(&self, n: u32) -> Duration {
        let doublings = n.saturating_sub(1).min(20);
        self.limits
            .failure_delay
            .saturating_mul(1 << doublings)
            .min(self.limits.failure_delay_max)
    }
}

fn user_key(username: &str) -> String {
    let mut end = username.len().min(MAX_USERNAME);
    while !username.is_char_boundary(end) {
        end -= 1;
    }
    username[..end].to_string()
}

/// Failures of `key` still remembered at `now`.
fn remembered<K: Hash + Eq>(
    map: &Mutex<HashMap<K, Failures>>,
    key: &K,
    now: Instant,
    lockout: Duration,
) -> u32 {
    let map = map.lock().expect("auth guard lock");
    match map.get(key) {
        Some(f) if now.duration_since(f.last) < lockout => f.count,
        _ => 0,
    }
}

/// Adds a failure of `key`; returns its remembered count.
fn count<K: Hash + Eq + Clone>(
    map: &Mutex<HashMap<K, Failures>>,
    key: K,
    now: Instant,
    lockout: Duration,
) -> u32 {
    let mut map = map.lock().expect("auth guard lock");
    if !map.contains_key(&key) && map.len() >= MAX_TRACKED {
        map.retain(|_, f| now.duration_since(f.last) < lockout);
        if map.len() >= MAX_TRACKED
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, f)| f.last)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
    }
    let f = map.entry(key).or_insert(Failures {
        count: 0,
        last: now,
    });
    if now.duration_since(f.last) >= lockout {
        f.count = 0;
    }
    f.count = f.count.saturating_add(1);
    f.last = now;
    f.count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> AuthLimits {
        AuthLimits {
            failure_delay: Duration::from_secs(1),
            failure_delay_max: Duration::from_secs(8),
            max_failures: 5,
            max_failures_per_user: 7,
            lockout: Duration::from_secs(600),
            concurrency: 1,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn delays_grow_then_the_client_is_locked_out_then_forgiven() {
        let g = AuthGuard::new(limits());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let delays: Vec<u64> = (0..5)
            .map(|i| {
                assert_eq!(g.admit(ip, &format!("user{i}")), Ok(()));
                g.failed(ip, &format!("user{i}")).as_secs()
            })
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 8]);
        // another username changes nothing: the client is locked out
        assert_eq!(g.admit(ip, "someone-else"), Err(Locked::Client));
        // another client is not
        assert_eq!(g.admit("192.0.2.2".parse().unwrap(), "x"), Ok(()));
        tokio::time::advance(Duration::from_secs(599)).await;
        assert_eq!(g.admit(ip, "x"), Err(Locked::Client));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(g.admit(ip, "x"), Ok(()));
        // forgotten: the next failure starts the delays afresh
        assert_eq!(g.failed(ip, "x").as_secs(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_ipv6_client_is_counted_by_its_64() {
        let g = AuthGuard::new(limits());
        for i in 0..5 {
            let ip: IpAddr = format!("2001:db8:0:1::{i}").parse().unwrap();
            g.failed(ip, "u");
        }
        assert_eq!(
            g.admit("2001:db8:0:1:ffff::9".parse().unwrap(), "v"),
            Err(Locked::Client)
        );
        assert_eq!(g.admit("2001:db8:0:2::1".parse().unwrap(), "v"), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_username_guessed_from_many_addresses_is_locked_and_a_login_forgives_it() {
        let g = AuthGuard::new(limits());
        for i in 0..7u8 {
            let ip = IpAddr::from([198, 51, 100, i]);
            assert_eq!(g.admit(ip, "shop"), Ok(()));
            g.failed(ip, "shop");
        }
        assert_eq!(
            g.admit("203.0.113.9".parse().unwrap(), "shop"),
            Err(Locked::User)
        );
        g.succeeded("shop");
        assert_eq!(g.admit("203.0.113.9".parse().unwrap(), "shop"), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn memory_is_bounded() {
        let g = AuthGuard::new(limits());
        for i in 0..(MAX_TRACKED as u32 + 100) {
            g.failed(IpAddr::from(i.to_be_bytes()), &i.to_string());
        }
        assert_eq!(g.clients.lock().unwrap().len(), MAX_TRACKED);
        assert_eq!(g.users.lock().unwrap().len(), MAX_TRACKED);
    }
}
