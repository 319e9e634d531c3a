//! The admin API on the consent and suppression lists: check an address, suppress or lift
//! (one address, or a batch of them), grant or revoke consent (a grant keeps an
//! operator's proof record in the consent ledger, naming the admin API or the CLI). Every change goes through
//! the relay's own lists (journal fsynced, then in force) before the answer, so it applies
//! to the next message — what `optin-relay suppress …` and `lists grant|revoke` use when a
//! relay is running. Account and list names are checked against the policy in force; it
//! never writes anything when one address of a batch is bad.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use clap::ValueEnum;
use serde::Deserialize;
use serde_json::json;

use super::{Admin, ApiError, ApiResult, bad, body, internal, not_found, ok, query};
use crate::consent::{self, Kind, Op, Origin, Reason, Scope};
use crate::envelope::Stream;
use crate::governance::ledger::{How, Proof};
pub use crate::http::api::MAX_BATCH;
use crate::http::api::addresses;
pub(super) use crate::http::api::normalised;
use crate::policy::Policy;

#[derive(Deserialize, Default)]
pub(super) struct ScopeQuery {
    account: Option<String>,
    list: Option<String>,
    reason: Option<String>,
    stream: Option<String>,
}

/// The scope named (none: global); the account and list must exist.
fn scope_of<'q>(policy: &Policy, q: &'q ScopeQuery) -> Result<Scope<'q>, ApiError> {
    match (&q.account, &q.list) {
        (None, None) => Ok(Scope::Global),
        (None, Some(_)) => Err(bad("a list needs its account")),
        (Some(a), list) => {
            let acc = policy
                .account(a)
                .ok_or_else(|| not_found(format!("no account {a:?} in the policy")))?;
            match list {
                None => Ok(Scope::Account(a)),
                Some(l) if acc.list(l).is_some() => Ok(Scope::List(a, l)),
                Some(l) => Err(not_found(format!("account {a:?} has no list {l:?}"))),
            }
        }
    }
}

fn reason_of(text: Option<&str>) -> Result<Option<Reason>, ApiError> {
    text.map(|r| {
        Reason::from_str(r, true).map_err(|_| {
            bad(format!(
                "{r:?} is not a reason (unsubscribe, bounce, complaint, manual, erasure)"
            ))
        })
    })
    .transpose()
}

/// Records one change for each address, off the async threads (the journal is fsynced).
pub(super) async fn record(
    a: &Admin,
    kind: Kind,
    scope: Scope<'_>,
    op: Op,
    tags: u8,
    addresses: Vec<String>,
) -> Result<(), ApiError> {
    let lists = a.lists.clone();
    let secret = lists.secret();
    let time_ms = crate::envelope::now_ms();
    let changes: Vec<consent::Change> = addresses
        .iter()
        .map(|address| consent::Change {
            op,
            fp: secret.fingerprint(kind, scope, address),
            tags,
            origin: Origin::Operator,
            time_ms,
            stamp: 0,
            remote: false,
        })
        .collect();
    tokio::task::spawn_blocking(move || lists.record(&changes))
        .await
        .map_err(|_| internal("the lists task failed"))?
        .map_err(|e| internal(e.to_string()))
}

fn reasons(tags: u8) -> Vec<&'static str> {
    Reason::from_tags(tags).map(Reason::as_str).collect()
}

/// The last bounce that suppressed `address` (from `events/bounces.jsonl`), when its
/// standing has a bounce: what it was, when, and where from.
async fn bounce_cause(a: &Admin, address: &str, tags: u8) -> serde_json::Value {
    if tags & Reason::Bounce.bit() == 0 {
        return serde_json::Value::Null;
    }
    let path = a.events.join("bounces.jsonl");
    let address = address.to_string();
    tokio::task::spawn_blocking(move || last_bounce(&path, &address))
        .await
        .ok()
        .flatten()
        .unwrap_or(serde_json::Value::Null)
}

/// Scans the bounce log (kept `[privacy] event_log_days`) for the address's last
/// suppressing bounce.
fn last_bounce(path: &std::path::Path, address: &str) -> Option<serde_json::Value> {
    use std::io::BufRead;
    let file = std::fs::File::open(path).ok()?;
    let needle = serde_json::to_string(address).ok()?;
    let mut last = None;
    for line in std::io::BufReader::new(file).lines() {
        let Ok(line) = line else { break };
        if !line.contains(&needle) {
            continue;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if v["address"] == address && v["suppressed"] == true {
            last = Some(v);
        }
    }
    let mut v = last?;
    let age_ms = crate::envelope::now_ms().saturating_sub(v["time_ms"].as_u64().unwrap_or(0));
    let age = std::time::Duration::from_secs(age_ms / 1000);
    v["age"] = json!(humantime::format_duration(age).to_string());
    if v["site"].is_null() {
        v["site"] = json!("a bounce mailed back");
    }
    Some(v)
}

pub(super) async fn suppression_check(
    State(a): State<Admin>,
    Path(address): Path<String>,
    q: Result<Query<ScopeQuery>, QueryRejection>,
) -> ApiResult {
    let q = query(q)?;
    let address = normalised(&address)?;
    let policy = a.policy.load();
    let Some(name) = &q.account else {
        if q.list.is_some() || q.stream.is_some() {
            return Err(bad("a list or stream needs its account"));
        }
        let st = a.lists.standing("", None, &address);
        let cause = bounce_cause(&a, &address, st.global).await;
        return ok(json!({
            "address": address,
            "suppressed": {"global": reasons(st.global)},
            "bounce_cause": cause,
        }));
    };
    let acc = policy
        .account(name)
        .ok_or_else(|| not_found(format!("no account {name:?} in the policy")))?;
    let list = match &q.list {
        Some(l) if acc.list(l).is_none() => {
            return Err(not_found(format!("account {name:?} has no list {l:?}")));
        }
        Some(l) => Some(l.clone()),
        None => acc.default_list.clone(),
    };
    let stream = match q.stream.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => acc.default_stream,
        Some("marketing") => Stream::Marketing,
        Some("transactional") => Stream::Transactional,
        Some(_) => {
            return Err(bad(format!(
                "{:?} is not marketing or transactional",
                q.stream.unwrap_or_default()
            )));
        }
    };
    let st = a.lists.standing(name, list.as_deref(), &address);
    let verdict = match crate::policy::verdict::explain(acc, stream, list.as_deref(), &st, &address)
    {
        Ok(()) => "allowed".to_string(),
        Err(why) => format!("refused: {why}"),
    };
    ok(json!({
        "address": address,
        "account": name,
        "list": list,
        "stream": stream.to_string(),
        "consent": st.consent,
        "suppressed": {
            "global": reasons(st.global),
            "account": reasons(st.account),
            "list": reasons(st.list),
        },
        "verdict": verdict,
        "bounce_cause": bounce_cause(&a, &address, st.global | st.account | st.list).await,
    }))
}

/// The body of every change: one `address` or a batch of `addresses`, and the scope.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ChangeBody {
    address: Option<String>,
    addresses: Option<Vec<String>>,
    account: Option<String>,
    list: Option<String>,
    reason: Option<String>,
}

impl ChangeBody {
    /// Every address normalised, or a 400 naming each one that is not an address.
    fn addresses(&self) -> Result<Vec<String>, ApiError> {
        addresses(self.address.as_ref(), self.addresses.as_deref())
    }

    fn scope(&self) -> ScopeQuery {
        ScopeQuery {
            account: self.account.clone(),
            list: self.list.clone(),
            ..Default::default()
        }
    }
}

/// What a change did: the single address (when one was given), how many, where.
fn changed(b: &ChangeBody, addresses: &[String], fields: serde_json::Value) -> ApiResult {
    let mut v = json!({ "count": addresses.len() });
    if b.address.is_some() {
        v["address"] = json!(addresses[0]);
    }
    for (k, value) in fields.as_object().expect("an object") {
        v[k] = value.clone();
    }
    Ok(axum::Json(v))
}

/// `POST /admin/suppressions`: suppress (reason `manual` unless given).
pub(super) async fn suppression_add(State(a): State<Admin>, raw: Bytes) -> ApiResult {
    let b: ChangeBody = body(&raw)?;
    let addresses = b.addresses()?;
    let reason = reason_of(b.reason.as_deref())?.unwrap_or(Reason::Manual);
    let q = b.scope();
    let policy = a.policy.load();
    let scope = scope_of(&policy, &q)?;
    let tags = reason.bit();
    record(
        &a,
        Kind::Suppression,
        scope,
        Op::Add,
        tags,
        addresses.clone(),
    )
    .await?;
    changed(
        &b,
        &addresses,
        json!({"scope": scope.to_string(), "reason": reason.as_str(), "result": "suppressed"}),
    )
}

/// `POST /admin/suppressions/remove`: lift a batch (every reason unless given).
pub(super) async fn suppression_lift(State(a): State<Admin>, raw: Bytes) -> ApiResult {
    let b: ChangeBody = body(&raw)?;
    let addresses = b.addresses()?;
    let reason = reason_of(b.reason.as_deref())?;
    let q = b.scope();
    let policy = a.policy.load();
    let scope = scope_of(&policy, &q)?;
    let bits = reason.map_or(consent::ALL_REASONS, Reason::bit);
    record(
        &a,
        Kind::Suppression,
        scope,
        Op::Remove,
        bits,
        addresses.clone(),
    )
    .await?;
    changed(
        &b,
        &addresses,
        json!({
            "scope": scope.to_string(),
            "reason": reason.map_or("all", Reason::as_str),
            "result": "lifted",
        }),
    )
}

/// `DELETE /admin/suppressions/{address}`: lift one.
pub(super) async fn suppression_remove(
    State(a): State<Admin>,
    Path(address): Path<String>,
    q: Result<Query<ScopeQuery>, QueryRejection>,
) -> ApiResult {
    let q = query(q)?;
    let address = normalised(&address)?;
    let reason = reason_of(q.reason.as_deref())?;
    let policy = a.policy.load();
    let scope = scope_of(&policy, &q)?;
    let bits = reason.map_or(consent::ALL_REASONS, Reason::bit);
    record(
        &a,
        Kind::Suppression,
        scope,
        Op::Remove,
        bits,
        vec![address.clone()],
    )
    .await?;
    ok(json!({
        "address": address,
        "scope": scope.to_string(),
        "reason": reason.map_or("all", Reason::as_str),
        "result": "lifted",
    }))
}

/// Grants (`Op::Add`, with an operator's proof record) or revokes consent for a list (the
/// account's default unless named).
async fn consent_change(a: Admin, headers: &HeaderMap, raw: Bytes, op: Op) -> ApiResult {
    let b: ChangeBody = body(&raw)?;
    if b.reason.is_some() {
        return Err(bad("consent has no reason"));
    }
    let addresses = b.addresses()?;
    let policy = a.policy.load();
    let name = b
        .account
        .as_deref()
        .ok_or_else(|| bad("consent needs an account"))?;
    let acc = policy
        .account(name)
        .ok_or_else(|| not_found(format!("no account {name:?} in the policy")))?;
    let list = match b.list.as_deref().or(acc.default_list.as_deref()) {
        Some(l) if acc.list(l).is_some() => l.to_string(),
        Some(l) => return Err(not_found(format!("account {name:?} has no list {l:?}"))),
        None => {
            return Err(bad(format!(
                "account {name:?} has no default list: name one"
            )));
        }
    };
    // The command line says who it is; anything else is the admin API.
    let via = match headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        Some(ua) if ua.starts_with("optin-relay-cli/") => "cli",
        _ => "admin API",
    };
    let consents = a.consents.clone();
    let (account, l, all) = (name.to_string(), list.clone(), addresses.clone());
    tokio::task::spawn_blocking(move || match op {
        Op::Add => {
            let proofs = all
                .into_iter()
                .map(|addr| Proof::new(addr, How::Operator, via))
                .collect();
            consents.grant(&account, &l, proofs, Origin::Operator)
        }
        Op::Remove => consents
            .withdraw(&account, &l, &all, "operator", Origin::Operator)
            .map(|_| ()),
    })
    .await
    .map_err(|_| internal("the consent task failed"))?
    .map_err(|e| internal(e.to_string()))?;
    changed(
        &b,
        &addresses,
        json!({
            "account": name,
            "list": list,
            "result": if op == Op::Add { "granted" } else { "revoked" },
        }),
    )
}

/// `POST /admin/consent/grant`.
pub(super) async fn consent_grant(
    State(a): State<Admin>,
    headers: HeaderMap,
    raw: Bytes,
) -> ApiResult {
    consent_change(a, &headers, raw, Op::Add).await
}

/// `POST /admin/consent/revoke`.
pub(super) async fn consent_revoke(
    State(a): State<Admin>,
    headers: HeaderMap,
    raw: Bytes,
) -> ApiResult {
    consent_change(a, &headers, raw, Op::Remove).await
}
