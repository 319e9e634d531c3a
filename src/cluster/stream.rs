//! Reading the cluster's Redis streams (the consent feed, the erasures): blocking reads
//! from a position, the newest entry, whether the stream was trimmed past a position, and
//! how stream ids (`ms-seq`) compare.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};

/// Up to `count` entries after `after`, waiting up to `block` for the first.
pub async fn read(
    c: &mut ConnectionManager,
    key: &str,
    after: &str,
    count: usize,
    block: Duration,
) -> Result<Vec<StreamId>, String> {
    let reply: Option<StreamReadReply> = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(count)
        .arg("BLOCK")
        .arg(block.as_millis() as u64)
        .arg("STREAMS")
        .arg(key)
        .arg(after)
        .query_async(c)
        .await
        .map_err(|e| e.to_string())?;
    Ok(reply
        .map(|r| r.keys)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|s| s.ids)
        .collect())
}

/// The id of the oldest (`oldest`) or newest entry, if any.
async fn end(c: &mut ConnectionManager, key: &str, oldest: bool) -> Option<String> {
    let (cmd, from, to) = if oldest {
        ("XRANGE", "-", "+")
    } else {
        ("XREVRANGE", "+", "-")
    };
    let r: StreamRangeReply = redis::cmd(cmd)
        .arg(key)
        .arg(from)
        .arg(to)
        .arg("COUNT")
        .arg(1)
        .query_async(c)
        .await
        .ok()?;
    r.ids.first().map(|e| e.id.clone())
}

/// The newest entry's id, if any.
pub async fn latest(c: &mut ConnectionManager, key: &str) -> Option<String> {
    end(c, key, false).await
}

/// Whether the stream was trimmed past `after` (its oldest entry is later): entries after
/// it may be lost. The entry at `after` is kept until the stream is trimmed past it; the
/// start (`0-0`) is never trimmed past.
pub async fn trimmed_after(c: &mut ConnectionManager, key: &str, after: &str) -> bool {
    if after == "0-0" {
        return false;
    }
    end(c, key, true)
        .await
        .is_some_and(|oldest| id_less(after, &oldest))
}

/// Whether stream id `a` is before `b` (`ms-seq`, compared as numbers).
pub fn id_less(a: &str, b: &str) -> bool {
    let parse = |s: &str| {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        (
            ms.parse::<u64>().unwrap_or(0),
            seq.parse::<u64>().unwrap_or(0),
        )
    };
    parse(a) < parse(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_compare_as_numbers() {
        assert!(id_less("9-5", "10-0"));
        assert!(id_less("10-0", "10-1"));
        assert!(!id_less("10-1", "10-1"));
    }
}
