//! The queue through the admin API: the summary, the list (a page at a time, with the
//! total and the next page's cursor), the age by site (`qshape`), one message (its state,
//! addresses, and each recipient's last reply from the delivery log), what happened to a
//! message (the delivery log), and the operator's actions: retry, bounce, delete, hold,
//! release, one message at a time or in bulk (all, an account's, a site's).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Admin, ApiError, ApiResult, bad, internal, known_account, not_found, ok, parse_id, query,
};
use crate::delivery::control::{Action, Bulk, Filter};

pub(super) async fn queue_summary(State(a): State<Admin>) -> ApiResult {
    ok(a.delivery.summary().await?)
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    account: Option<String>,
    limit: Option<usize>,
    /// The cursor: the last id of the previous page.
    after: Option<String>,
}

pub(super) async fn queue_list(
    State(a): State<Admin>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult {
    let q = query(q)?;
    if let Some(name) = &q.account {
        known_account(&a, name)?;
    }
    let limit = q.limit.unwrap_or(100).min(10_000);
    let after = q.after.as_deref().map(parse_id).transpose()?;
    ok(a.delivery.list(q.account, limit, after).await?)
}

pub(super) async fn queue_shape(State(a): State<Admin>) -> ApiResult {
    ok(a.delivery.shape().await?)
}

pub(super) async fn message_hold(State(a): State<Admin>, Path(id): Path<String>) -> ApiResult {
    act(&a, &id, Action::Hold, "held").await
}

pub(super) async fn message_release(State(a): State<Admin>, Path(id): Path<String>) -> ApiResult {
    act(&a, &id, Action::Release, "released").await
}

/// The messages a bulk action takes: an account's, a site's (or both), or all of them
/// when `all` says so (never by omission).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct BulkBody {
    account: Option<String>,
    site: Option<String>,
    #[serde(default)]
    all: bool,
}

async fn bulk(a: &Admin, raw: &axum::body::Bytes, what: Bulk, done: &str) -> ApiResult {
    let b: BulkBody = if raw.is_empty() {
        BulkBody::default()
    } else {
        super::body(raw)?
    };
    if b.account.is_none() && b.site.is_none() && !b.all {
        return Err(bad("name an account or a site, or say all: true"));
    }
    if b.all && (b.account.is_some() || b.site.is_some()) {
        return Err(bad("all: true goes alone"));
    }
    if let Some(name) = &b.account {
        known_account(a, name)?;
    }
    let filter = Filter {
        account: b.account.clone(),
        site: b.site.clone(),
    };
    let n = a.delivery.bulk(filter, what).await?;
    ok(json!({"messages": n, "result": done, "account": b.account, "site": b.site}))
}

pub(super) async fn queue_retry(State(a): State<Admin>, raw: axum::body::Bytes) -> ApiResult {
    bulk(&a, &raw, Bulk::Retry, "retrying").await
}

pub(super) async fn queue_hold(State(a): State<Admin>, raw: axum::body::Bytes) -> ApiResult {
    bulk(&a, &raw, Bulk::Hold, "held").await
}

pub(super) async fn queue_release(State(a): State<Admin>, raw: axum::body::Bytes) -> ApiResult {
    bulk(&a, &raw, Bulk::Release, "released").await
}

pub(super) async fn message_show(State(a): State<Admin>, Path(id): Path<String>) -> ApiResult {
    let n = parse_id(&id)?;
    let state = a
        .delivery
        .show(n)
        .await?
        .ok_or_else(|| not_found(format!("no message {id} in the queue")))?;
    let (envelope, content) = a
        .spool
        .read_message(state.loc)
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut v = serde_json::to_value(&state).expect("serialisable");
    let obj = v.as_object_mut().expect("an object");
    obj.insert("sender".into(), json!(envelope.sender.unwrap_or_default()));
    obj.insert("size".into(), json!(content.len()));
    obj.insert("stream".into(), json!(envelope.stream.to_string()));
    obj.insert("list".into(), json!(envelope.list));
    obj.insert("campaign".into(), json!(envelope.campaign));
    let last = last_replies(&a, n).await;
    if let Some(rcpts) = obj.get_mut("recipients").and_then(Value::as_array_mut) {
        for (r, e) in rcpts.iter_mut().zip(&envelope.recipients) {
            r["address"] = json!(e.address);
            if let Some(line) = last.get(&a.tagger.tag(&e.address)) {
                r["last_event"] = line["event"].clone();
                r["last_reply"] = line["reply"].clone();
                r["last_time_ms"] = line["time_ms"].clone();
            }
        }
    }
    Ok(axum::Json(v))
}

/// Each recipient's last line in the delivery log for message `id`, by recipient tag
/// (empty without a log).
async fn last_replies(
    a: &Admin,
    id: crate::envelope::QueueId,
) -> std::collections::HashMap<String, Value> {
    use crate::privacy::delivery_log::{Lookup, history};
    let Some((path, days)) = a.history.clone() else {
        return Default::default();
    };
    let lines = tokio::task::spawn_blocking(move || history(&path, days, &Lookup::Id(id)))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let mut last = std::collections::HashMap::new();
    for line in lines {
        if let Some(tag) = line["rcpt"].as_str() {
            last.insert(tag.to_string(), line);
        }
    }
    last
}

/// What happened to a message, by queue id or `Message-ID`: per recipient (as its tag) the
/// last state, attempts, last reply and bounce category, from the delivery log; and, while
/// it is still queued, its queue state with the addresses.
pub(super) async fn message_history(State(a): State<Admin>, Path(id): Path<String>) -> ApiResult {
    use crate::privacy::delivery_log::{Lookup, history};
    let wanted = Lookup::parse(&id)
        .ok_or_else(|| bad(format!("{id:?} is neither a queue id nor a Message-ID")))?;
    let Some((path, days)) = a.history.clone() else {
        return Err(not_found("the delivery log is off ([delivery] log = \"\")"));
    };
    let lookup = wanted.clone();
    let lines = tokio::task::spawn_blocking(move || history(&path, days, &lookup))
        .await
        .map_err(|e| internal(e.to_string()))?
        .map_err(|e| internal(format!("reading the delivery log: {e}")))?;
    let mut ids: Vec<String> = Vec::new();
    // One summary per (queue id, recipient tag), in order of first appearance.
    let mut rcpts: Vec<Value> = Vec::new();
    let mut at: std::collections::HashMap<(String, String), usize> = Default::default();
    for line in &lines {
        let id = line["id"].as_str().unwrap_or_default().to_string();
        if !ids.contains(&id) {
            ids.push(id.clone());
        }
        let rcpt = line["rcpt"].as_str().unwrap_or_default().to_string();
        let i = *at.entry((id.clone(), rcpt.clone())).or_insert_with(|| {
            rcpts.push(json!({"id": id, "rcpt": rcpt, "account": line["account"], "events": 0}));
            rcpts.len() - 1
        });
        let r = &mut rcpts[i];
        r["events"] = json!(r["events"].as_u64().unwrap_or(0) + 1);
        r["state"] = line["event"].clone();
        r["time_ms"] = line["time_ms"].clone();
        for key in [
            "attempts",
            "reply",
            "category",
            "via",
            "route",
            "message_id",
        ] {
            if !line[key].is_null() {
                r[if key == "reply" { "last_reply" } else { key }] = line[key].clone();
            }
        }
    }
    // Still queued: the messages the log names, or the queue id asked for.
    let mut queue_ids: Vec<crate::envelope::QueueId> = ids
        .iter()
        .filter_map(|i| crate::envelope::QueueId::parse(i))
        .collect();
    if let Lookup::Id(n) = wanted
        && !queue_ids.contains(&n)
    {
        queue_ids.push(n);
    }
    let mut queued = Vec::new();
    for n in queue_ids {
        if let Some(state) = a.delivery.show(n).await? {
            queued.push(serde_json::to_value(&state).expect("serialisable"));
        }
    }
    if lines.is_empty() && queued.is_empty() {
        return Err(not_found(format!(
            "nothing about {id} in the delivery log of the last {} days or the queue",
            a.history.as_ref().map_or(0, |h| h.1)
        )));
    }
    ok(json!({
        "lookup": id,
        "ids": ids,
        "recipients": rcpts,
        "queued": queued,
        "events": lines,
    }))
}

async fn act(a: &Admin, id: &str, action: Action, done: &str) -> ApiResult {
    let n = a.delivery.act(parse_id(id)?, action).await?;
    ok(json!({"id": id, "recipients": n, "result": done}))
}

pub(super) async fn message_retry(State(a): State<Admin>, Path(id): Path<String>) -> ApiResult {
    act(&a, &id, Action::Retry, "retrying").await
}

pub(super) async fn message_bounce(State(a): State<Admin>, Path(id): Path<String>) -> ApiResult {
    act(&a, &id, Action::Bounce, "bounced").await
}

pub(super) async fn message_delete(State(a): State<Admin>, Path(id): Path<String>) -> ApiResult {
    act(&a, &id, Action::Delete, "deleted").await
}
