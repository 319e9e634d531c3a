//! The account API: JSON on the public listener under `/account/…`, for an account's own
//! systems, every request with `Authorization: Bearer <account key>`
//! ([`crate::governance::account_keys`]). A key opens its own account only: its lists and
//! their per-list counts, an address's standing and consent records, grants and
//! withdrawals of consent (one address, a batch, or an uploaded file: [`upload`]), its own
//! suppressions, its exports and events ([`export`]). Nothing of another account, and no
//! operator action (freezes, the queue, the policy, lifting a suppression the account did
//! not make), is reachable with it.
//!
//! Every change goes through [`crate::governance::consents`] or the lists before the
//! answer, so it is in force for the next message when the call returns (uploads: when
//! their job says `done`). Errors are the admin API's JSON (`{"error", "status"}`): 400
//! bad input, 401 no, unknown or revoked key, 404 nothing there, 413 too large, 429 too
//! many jobs. The routes are described with the admin API's in `openapi.json`.

mod export;
mod upload;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::api::{ApiError, ApiResult, addresses, bad, body, internal, normalised, not_found, ok};
use super::layers::BodyBound;
use crate::config::AccountApiConfig;
use crate::consent::{Kind, Op, Origin, Reason, Scope};
use crate::governance::account_keys::{AccountKeys, KeyInfo};
use crate::governance::consents::{ConsentError, Consents};
use crate::governance::ledger::{How, Proof};
use crate::governance::uploads::Uploads;
use crate::policy::Account;

/// What the account API works on.
#[derive(Clone)]
pub struct AccountApi {
    pub keys: Arc<AccountKeys>,
    pub consents: Arc<Consents>,
    pub uploads: Arc<Uploads>,
    /// The event logs (`events/` beside the spool).
    pub events: std::path::PathBuf,
    pub config: AccountApiConfig,
    /// Queues re-permission messages; `None`: not offered.
    pub subscribe: Option<super::subscribe::Subscribe>,
}

pub fn router(api: AccountApi, json: BodyBound) -> Router {
    let bounded = Router::new()
        .route("/account", get(account_show))
        .route("/account/lists", get(lists))
        .route("/account/lists/{list}/repermission", post(repermission))
        .route("/account/addresses/{address}", get(address_show))
        .route("/account/consent/grant", post(grant))
        .route("/account/consent/withdraw", post(withdraw))
        .route("/account/suppressions", post(suppress))
        .route("/account/suppressions/remove", post(lift))
        .route("/account/jobs", get(upload::jobs))
        .route("/account/jobs/{id}", get(upload::job))
        .route("/account/export/consent", get(export::consent))
        .route("/account/export/suppressions", get(export::suppressions))
        .route("/account/events/{kind}", get(export::events))
        .layer(middleware::from_fn_with_state(
            json,
            super::layers::bound_body,
        ));
    // The upload reads its own body, streamed to a file under its own limits.
    Router::new()
        .route("/account/consent/upload", post(upload::upload))
        .merge(bounded)
        .layer(middleware::from_fn_with_state(api.clone(), authorise))
        .with_state(api)
}

/// Every request needs a key of an account the policy still has; the key rides along.
async fn authorise(
    State(api): State<AccountApi>,
    headers: HeaderMap,
    mut request: Request,
    next: Next,
) -> Response {
    let key = api
        .keys
        .authenticate(super::api::bearer(&headers))
        .filter(|k| api.consents.policy.load().account(&k.account).is_some());
    let Some(key) = key else {
        crate::metrics::account_api_refused();
        return ApiError(
            StatusCode::UNAUTHORIZED,
            "missing, unknown or revoked account key".into(),
        )
        .into_response();
    };
    request.extensions_mut().insert(key);
    next.run(request).await
}

/// The caller's account in the policy in force.
fn account_of(api: &AccountApi, key: &KeyInfo) -> Result<Account, ApiError> {
    api.consents
        .policy
        .load()
        .account(&key.account)
        .cloned()
        .ok_or_else(|| not_found(format!("account {:?} left the policy", key.account)))
}

/// The list named, else the account's default.
fn list_of(acc: &Account, named: Option<&str>) -> Result<String, ApiError> {
    match named.or(acc.default_list.as_deref()) {
        Some(l) if acc.list(l).is_some() => Ok(l.to_string()),
        Some(l) => Err(not_found(format!("your account has no list {l:?}"))),
        None => Err(bad("your account has no default list: name one")),
    }
}

fn consent_error(e: ConsentError) -> ApiError {
    match e {
        ConsentError::NoAccount(_) | ConsentError::NoList(..) => not_found(e.to_string()),
        other => {
            tracing::error!(error = %other, "account API: a consent change failed");
            internal("the change could not be recorded; nothing is in force yet: try again")
        }
    }
}

fn reasons(tags: u8) -> Vec<&'static str> {
    Reason::from_tags(tags).map(Reason::as_str).collect()
}

async fn account_show(
    State(api): State<AccountApi>,
    Extension(key): Extension<KeyInfo>,
) -> ApiResult {
    let acc = account_of(&api, &key)?;
    let lists: Vec<Value> = acc
        .lists
        .iter()
        .map(|l| {
            json!({
                "id": l.id,
                "name": l.name,
                "consent_source": l.consent_source,
                "consent_statement": l.consent_statement,
                "wording_version": crate::governance::ledger::Wording::version_of(&acc.name, l),
            })
        })
        .collect();
    ok(json!({
        "account": acc.name,
        "streams": acc.streams.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "default_list": acc.default_list,
        "lists": lists,
        "key": key.public(),
    }))
}

/// Per list: consent records in force and withdrawn (from the ledger).
async fn lists(State(api): State<AccountApi>, Extension(key): Extension<KeyInfo>) -> ApiResult {
    let acc = account_of(&api, &key)?;
    let ledger = api.consents.ledger.clone();
    let name = acc.name.clone();
    let counts = tokio::task::spawn_blocking(move || ledger.counts(&name))
        .await
        .map_err(|_| internal("the ledger task failed"))?
        .map_err(|e| internal(e.to_string()))?;
    let lists: Vec<Value> = acc
        .lists
        .iter()
        .map(|l| {
            let c = counts.iter().find(|c| c.list == l.id);
            json!({
                "list": l.id,
                "name": l.name,
                "consents": c.map_or(0, |c| c.in_force),
                "withdrawn": c.map_or(0, |c| c.withdrawn),
            })
        })
        .collect();
    ok(json!({"account": acc.name, "lists": lists}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RepermissionQuery {
    limit: Option<usize>,
}

/// The most re-permission messages one call queues.
const MAX_REPERMISSIONS: usize = 10_000;

/// `POST /account/lists/{list}/repermission`: one message asking to stay to each address
/// whose consent to the list aged past its `consent_max_age` and who was not asked since
/// (at most `limit` per call; `remaining` says how many wait for the next call).
async fn repermission(
    State(api): State<AccountApi>,
    Extension(key): Extension<KeyInfo>,
    Path(list): Path<String>,
    q: Result<axum::extract::Query<RepermissionQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let q = super::api::query(q)?;
    let acc = account_of(&api, &key)?;
    let l = acc
        .list(&list)
        .ok_or_else(|| not_found(format!("your account has no list {list:?}")))?;
    let Some(max_age) = l.consent_max_age else {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("list {list:?} has no consent_max_age: its consent does not age"),
        ));
    };
    let Some(sub) = api.subscribe.clone() else {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "re-permission messages are not available".into(),
        ));
    };
    let limit = q.limit.unwrap_or(1000).clamp(1, MAX_REPERMISSIONS);
    let now = crate::envelope::now_ms();
    let cutoff = now.saturating_sub(max_age.as_millis() as u64);
    let ledger = api.consents.ledger.clone();
    let (name, l) = (acc.name.clone(), list.clone());
    let (due, remaining) =
        tokio::task::spawn_blocking(move || ledger.take_expired(&name, &l, cutoff, now, limit))
            .await
            .map_err(|_| internal("the ledger task failed"))?
            .map_err(|e| internal(e.to_string()))?;
    let mut asked = 0u64;
    for address in due {
        let Some((envelope, content)) = sub.subscriptions.repermission(&acc.name, &list, address)
        else {
            continue;
        };
        if !super::subscribe::queue(&sub, envelope, content).await {
            return Err(internal(format!(
                "{asked} re-permission messages queued, then the spool refused one; call again"
            )));
        }
        asked += 1;
    }
    tracing::info!(account = %acc.name, list = %list, asked, remaining, "re-permission messages queued");
    ok(json!({"list": list, "asked": asked, "remaining": remaining}))
}

/// An address's standing with the account: per list its consent, suppressions and
/// consent record; the account's own suppressions; whether the relay blocks it for
/// everyone (the reason is another sender's business).
async fn address_show(
    State(api): State<AccountApi>,
    Extension(key): Extension<KeyInfo>,
    Path(address): Path<String>,
) -> ApiResult {
    let acc = account_of(&api, &key)?;
    let address = normalised(&address)?;
    let consents = api.consents.clone();
    let a = address.clone();
    let (overall, per_list) = tokio::task::spawn_blocking(move || {
        let overall = consents.lists.standing(&acc.name, None, &a);
        let per_list = acc
            .lists
            .iter()
            .map(|l| {
                let st = consents.lists.standing(&acc.name, Some(&l.id), &a);
                let record = consents.ledger.get(&acc.name, &l.id, &a)?;
                Ok(json!({
                    "list": l.id,
                    "consent": st.consent,
                    "suppressed": reasons(st.list),
                    "record": record,
                }))
            })
            .collect::<Result<Vec<_>, crate::governance::ledger::LedgerError>>();
        per_list.map(|p| (overall, p))
    })
    .await
    .map_err(|_| internal("the ledger task failed"))?
    .map_err(|e| internal(e.to_string()))?;
    ok(json!({
        "address": address,
        "account": key.account,
        "suppressed": reasons(overall.account),
        "blocked_by_relay": overall.global != 0,
        "lists": per_list,
    }))
}

/// A change: one `address` or a batch of `addresses`, and a list (the default if none).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeBody {
    address: Option<String>,
    addresses: Option<Vec<String>>,
    list: Option<String>,
}

fn changed(b: &ChangeBody, addresses: &[String], fields: Value) -> ApiResult {
    let mut v = json!({"count": addresses.len()});
    if b.address.is_some() {
        v["address"] = json!(addresses[0]);
    }
    for (k, value) in fields.as_object().expect("an object") {
        v[k] = value.clone();
    }
    Ok(axum::Json(v))
}

/// Grants (`Op::Add`, with a proof naming the key) or withdraws consent to a list of the
/// caller's account (its default unless named); in force when it returns.
async fn consent_change(api: AccountApi, key: KeyInfo, raw: Bytes, op: Op) -> ApiResult {
    let b: ChangeBody = body(&raw)?;
    let acc = account_of(&api, &key)?;
    let list = list_of(&acc, b.list.as_deref())?;
    let all = addresses(b.address.as_ref(), b.addresses.as_deref())?;
    let consents = api.consents.clone();
    let (name, l, a) = (acc.name.clone(), list.clone(), all.clone());
    tokio::task::spawn_blocking(move || match op {
        Op::Add => {
            let detail = format!("key {}", key.id);
            let proofs = a
                .into_iter()
                .map(|addr| Proof::new(addr, How::Api, detail.clone()))
                .collect();
            consents.grant(&name, &l, proofs, Origin::Account)
        }
        Op::Remove => consents
            .withdraw(&name, &l, &a, "api", Origin::Account)
            .map(|_| ()),
    })
    .await
    .map_err(|_| internal("the consent task failed"))?
    .map_err(consent_error)?;
    let result = if op == Op::Add {
        "granted"
    } else {
        "withdrawn"
    };
    changed(&b, &all, json!({"list": list, "result": result}))
}

async fn grant(
    State(api): State<AccountApi>,
    Extension(key): Extension<KeyInfo>,
    raw: Bytes,
) -> ApiResult {
    consent_change(api, key, raw, Op::Add).await
}

async fn withdraw(
    State(api): State<AccountApi>,
    Extension(key): Extension<KeyInfo>,
    raw: Bytes,
) -> ApiResult {
    consent_change(api, key, raw, Op::Remove).await
}

/// The scope of an account's own suppression: a list of it, else the whole account.
fn own_scope<'a>(acc: &'a Account, list: Option<&'a str>) -> Result<Scope<'a>, ApiError> {
    match list {
        None => Ok(Scope::Account(&acc.name)),
        Some(l) if acc.list(l).is_some() => Ok(Scope::List(&acc.name, l)),
        Some(l) => Err(not_found(format!("your account has no list {l:?}"))),
    }
}

/// Adds (`Op::Add`) or lifts the account's own `manual` suppression.
async fn own_suppression(api: AccountApi, key: KeyInfo, raw: Bytes, op: Op) -> ApiResult {
    let b: ChangeBody = body(&raw)?;
    let acc = account_of(&api, &key)?;
    let scope = own_scope(&acc, b.list.as_deref())?;
    let all = addresses(b.address.as_ref(), b.addresses.as_deref())?;
    let lists = api.consents.lists.clone();
    let (a, scope_text) = (all.clone(), scope.to_string());
    let owned = (acc.name.clone(), b.list.clone());
    tokio::task::spawn_blocking(move || {
        let scope = match &owned.1 {
            Some(l) => Scope::List(&owned.0, l),
            None => Scope::Account(&owned.0),
        };
        let manual = Reason::Manual.bit();
        lists.record_addresses(Kind::Suppression, scope, op, manual, Origin::Account, &a)
    })
    .await
    .map_err(|_| internal("the lists task failed"))?
    .map_err(|e| internal(e.to_string()))?;
    let result = if op == Op::Add {
        "suppressed"
    } else {
        "lifted"
    };
    changed(
        &b,
        &all,
        json!({"scope": scope_text, "reason": "manual", "result": result}),
    )
}

/// `POST /account/suppressions`: the account stops its own mail to the addresses.
async fn suppress(
    State(api): State<AccountApi>,
    Extension(key): Extension<KeyInfo>,
    raw: Bytes,
) -> ApiResult {
    own_suppression(api, key, raw, Op::Add).await
}

/// `POST /account/suppressions/remove`: lifts the account's own (`manual`) suppressions
/// only; an unsubscribe, complaint or bounce stays.
async fn lift(
    State(api): State<AccountApi>,
    Extension(key): Extension<KeyInfo>,
    raw: Bytes,
) -> ApiResult {
    own_suppression(api, key, raw, Op::Remove).await
}
