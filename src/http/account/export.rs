//! What an account may take home: its consent records (`GET /account/export/consent`, JSON
//! lines, streamed from the ledger, every record with its proof and wording), the
//! suppressions its recipients caused (`GET /account/export/suppressions`: unsubscribes,
//! complaints and bounces of its mail from the event logs, those still in force), and its
//! events (`GET /account/events/{kind}`). Only the caller's account is read; the event
//! logs hold what `[privacy] event_log_days` keeps.

use std::io::BufRead;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use super::AccountApi;
use crate::consent::Reason;
use crate::governance::account_keys::KeyInfo;
use crate::http::api::{ApiError, ApiResult, bad, ok, query};

/// Lines handed from the reading thread to the answer at a time.
const CHUNK: usize = 256;

/// A JSON-lines answer fed by `produce` on a blocking thread; it stops when the client
/// goes away.
fn stream_lines(produce: impl FnOnce(&dyn Fn(Vec<u8>) -> bool) + Send + 'static) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    tokio::task::spawn_blocking(move || {
        let send = |chunk: Vec<u8>| tx.blocking_send(chunk).is_ok();
        produce(&send);
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::io::Error>(chunk), rx))
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Collects lines and sends them [`CHUNK`] at a time; false when the client left.
struct Chunker<'a> {
    buf: Vec<u8>,
    lines: usize,
    send: &'a dyn Fn(Vec<u8>) -> bool,
}

impl Chunker<'_> {
    fn push(&mut self, v: &impl serde::Serialize) -> bool {
        serde_json::to_writer(&mut self.buf, v).expect("serialisable");
        self.buf.push(b'\n');
        self.lines += 1;
        if self.lines >= CHUNK {
            return self.flush();
        }
        true
    }

    fn flush(&mut self) -> bool {
        self.lines = 0;
        self.buf.is_empty() || (self.send)(std::mem::take(&mut self.buf))
    }
}

pub(super) async fn consent(
    State(api): State<AccountApi>,
    Extension(key): Extension<KeyInfo>,
) -> Response {
    let ledger = api.consents.ledger.clone();
    stream_lines(move |send| {
        let mut out = Chunker {
            buf: Vec::new(),
            lines: 0,
            send,
        };
        match ledger.export(&key.account, |r| out.push(&r)) {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!(account = %key.account, records = n, "consent export: records that no key opens were left out")
            }
            Err(e) => tracing::error!(error = %e, "consent export failed"),
        }
        out.flush();
    })
}

/// The event logs an account may read.
const KINDS: [&str; 5] = [
    "unsubscribes",
    "complaints",
    "bounces",
    "campaigns",
    "freezes",
];

/// Calls `each` with every event of `account` in `events/<kind>.jsonl`, oldest first,
/// until it returns false.
fn read_events(
    dir: &std::path::Path,
    kind: &str,
    account: &str,
    mut each: impl FnMut(Value) -> bool,
) -> std::io::Result<()> {
    let file = match std::fs::File::open(dir.join(format!("{kind}.jsonl"))) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for line in std::io::BufReader::new(file).lines() {
        let Ok(v) = serde_json::from_str::<Value>(&line?) else {
            continue;
        };
        if v["account"].as_str() == Some(account) && !each(v) {
            break;
        }
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EventsQuery {
    since_ms: Option<u64>,
    limit: Option<usize>,
}

/// `GET /account/events/{kind}`: the account's events of one log, oldest first, from
/// `since_ms` on, at most `limit` (default 1000, at most 10000).
pub(super) async fn events(
    State(api): State<AccountApi>,
    Extension(key): Extension<KeyInfo>,
    Path(kind): Path<String>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> ApiResult {
    let q = query(q)?;
    if !KINDS.contains(&kind.as_str()) {
        return Err(bad(format!("{kind:?} is not one of {}", KINDS.join(", "))));
    }
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let since = q.since_ms.unwrap_or(0);
    let dir = api.events.clone();
    let account = key.account.clone();
    let found = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        read_events(&dir, &kind, &account, |v| {
            if v["time_ms"].as_u64().unwrap_or(0) >= since {
                out.push(v);
            }
            out.len() < limit
        })
        .map(|()| out)
    })
    .await
    .map_err(|_| crate::http::api::internal("the events task failed"))?
    .map_err(|e| crate::http::api::internal(format!("reading the events: {e}")))?;
    let more = found.len() == limit;
    ok(serde_json::json!({"events": found, "more": more}))
}

/// `GET /account/export/suppressions`: per address and scope, the unsubscribe, complaint
/// or bounce of the account's mail still in force (JSON lines).
pub(super) async fn suppressions(
    State(api): State<AccountApi>,
    Extension(key): Extension<KeyInfo>,
) -> Result<Response, ApiError> {
    let lists = api.consents.lists.clone();
    let dir = api.events.clone();
    Ok(stream_lines(move |send| {
        let mut out = Chunker {
            buf: Vec::new(),
            lines: 0,
            send,
        };
        let mut seen = std::collections::HashSet::new();
        for (kind, reason) in [
            ("unsubscribes", Reason::Unsubscribe),
            ("complaints", Reason::Complaint),
            ("bounces", Reason::Bounce),
        ] {
            let read = read_events(&dir, kind, &key.account, |v| {
                let Some(address) = v["address"].as_str() else {
                    return true;
                };
                let list = v["list"].as_str().filter(|l| !l.is_empty());
                let whole = v["scope"].as_str() != Some("list") || list.is_none();
                let st = lists.standing(&key.account, list, address);
                let tags = if whole {
                    st.account | st.global
                } else {
                    st.list
                };
                if tags & reason.bit() == 0
                    || !seen.insert((address.to_string(), whole, list.map(str::to_string)))
                {
                    return true;
                }
                out.push(&serde_json::json!({
                    "address": address,
                    "reason": reason.as_str(),
                    "scope": if whole { "account" } else { "list" },
                    "list": list,
                    "time_ms": v["time_ms"],
                }))
            });
            if let Err(e) = read {
                tracing::error!(error = %e, "suppression export: reading {kind}");
            }
        }
        out.flush();
    }))
}
