//! The Lua scripts the cluster runs in Redis. Each is atomic there, reads the time from
//! Redis itself (`TIME`, to the microsecond) so the nodes' clocks never disagree, and
//! touches only the keys it is given. `redis::Script` sends them by hash and loads them
//! again after a Redis restart empties its script cache.

use std::sync::LazyLock;

/// GCRA without burst: books the next slot `interval` after the last one booked (or now)
/// and returns how many microseconds the caller waits for it.
/// KEYS[1] the theoretical arrival time; ARGV[1] the interval in microseconds.
pub(super) static GCRA: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local nxt = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', nxt), 'PX', math.floor((nxt - now) / 1000) + 1000)
return tat - now
",
    )
});

/// Takes a connection lease: prunes the expired ones, then adds (or renews) `member` when
/// it holds one already or fewer than `cap` are held. Returns 1 when granted, else minus
/// the milliseconds until the first lease held expires (when a waiter must look again even
/// if no release is announced).
/// KEYS[1] the site's leases (a sorted set scored by expiry, in ms); ARGV: member, cap,
/// ttl in ms.
pub(super) static ACQUIRE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ttl * 2)
  return 1
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return -math.max(1, tonumber(first[2]) - now)
",
    )
});

/// Gives a lease back and tells every node (the waiters of that site wake up).
/// KEYS[1] the site's leases; ARGV: member, the channel, the message.
pub(super) static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
",
    )
});

/// Renews the leases a node holds: KEYS are the sites' sets, ARGV[1] the ttl in ms and
/// ARGV[i+1] the member held in KEYS[i]. A lease that expired meanwhile (the node was cut
/// off) is taken again: its connection is still open, so it counts. Returns how many were
/// taken again.
pub(super) static RENEW: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local again = 0
for i, key in ipairs(KEYS) do
  again = again + redis.call('ZADD', key, now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', key, ttl * 2)
end
return again
",
    )
});

/// A node's heartbeat: records it in the node table and returns how many nodes were seen
/// within the live window.
/// KEYS[1] the node set (scored by last seen, ms), KEYS[2] this node's hash; ARGV: id,
/// version, policy digest, policy generation, started (unix ms), live window (ms).
pub(super) static HEARTBEAT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local day = 86400000
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], 'version', ARGV[2], 'policy', ARGV[3], 'generation', ARGV[4],
  'started_ms', ARGV[5], 'seen_ms', string.format('%.0f', now))
redis.call('PEXPIRE', KEYS[2], day)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - day)
return redis.call('ZCOUNT', KEYS[1], now - tonumber(ARGV[6]), '+inf')
",
    )
});
