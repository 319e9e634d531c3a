//! The admin API: JSON over the operator listener under `/admin/`, every request with
//! `Authorization: Bearer <token>` (`[admin] token`, or the token file the relay writes
//! beside the spool). It steers the running relay: the queue (summary by site and account,
//! inspection, retry, bounce, delete), accounts (status, freeze, unfreeze, API keys),
//! consent records (proof of consent), suppressions
//! and consent ([`lists`]: check, suppress, lift, grant, revoke), erasure of an address,
//! campaigns (list, declare a size, release, decline), and the policy (status, reload).
//!
//! Errors are JSON `{"error": "...", "status": N}` with the HTTP status: 400 bad input, 401
//! no or wrong token, 404 nothing there, 409 a conflict, 413 a body over `[admin]
//! max_body_size`, 503 shutting down. The OpenAPI description (`openapi.json`, served at
//! `GET /admin/openapi.json`) is checked against the routes by a test.

use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::consent::Lists;
use crate::delivery::Delivery;
use crate::delivery::control::ControlError;
use crate::governance::freeze::Freezes;
use crate::policy::Policy;
use crate::reload::{PolicyReloader, Trigger};
use crate::spool::Spool;

pub mod erase;
mod lists;
mod queue;

pub use super::api::refusal;
use super::api::{ApiError, ApiResult, bad, body, internal, not_found, ok, query};

pub use lists::MAX_BATCH;

/// The OpenAPI 3 description of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// What the admin API works on.
#[derive(Clone)]
pub struct Admin {
    pub token: Arc<str>,
    pub delivery: Delivery,
    pub spool: Spool,
    pub lists: Arc<Lists>,
    pub freezes: Arc<Freezes>,
    pub campaigns: Arc<crate::governance::campaign::Campaigns>,
    pub policy: Arc<ArcSwap<Policy>>,
    pub reloader: Arc<PolicyReloader>,
    pub counts: Arc<crate::governance::counts::AccountCounts>,
    /// The accounts' API keys (`/admin/accounts/{name}/keys`).
    pub keys: Arc<crate::governance::account_keys::AccountKeys>,
    /// Grants with their proof; the consent ledger an erasure clears.
    pub consents: Arc<crate::governance::consents::Consents>,
    /// The delivery log (`[delivery] log`) and how many days of it are kept
    /// (`[privacy] delivery_log_days`), for message histories; `None`: no log.
    pub history: Option<(std::path::PathBuf, u32)>,
    /// Account health (how close each account is to its freeze thresholds).
    pub governor: Arc<crate::governance::Governor>,
    /// The relay's event logs (`events/` beside the spool): the cause of a bounce
    /// suppression.
    pub events: std::path::PathBuf,
    /// The delivery log's recipient tags, to find a queued recipient's last reply there.
    pub tagger: crate::privacy::AddressTagger,
    /// The cluster this node belongs to (`GET /admin/cluster`); `None`: alone.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// The token from the config, else from the token file; `create` makes the file (a random
/// token, mode 0600) when it does not exist (the relay does; the CLI only reads).
pub fn token(config: &crate::config::AdminConfig, create: bool) -> Result<String, String> {
    if let Some(t) = &config.token {
        return Ok(t.clone());
    }
    let path = &config.token_file;
    match std::fs::read_to_string(path) {
        Ok(t) if t.trim().len() >= 16 => {
            // A token others can read is no secret: refused, with the fix in the message.
            crate::files::check_private(path).map_err(|e| format!("admin token file {e}"))?;
            return Ok(t.trim().to_string());
        }
        Ok(_) => return Err(format!("admin token file {}: too short", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {}
        Err(e) => {
            return Err(format!(
                "admin token file {}: {e} (is the relay running with this config?)",
                path.display()
            ));
        }
    }
    let mut raw = [0u8; 24];
    rand::Rng::fill(&mut rand::rng(), &mut raw);
    let token = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, raw);
    if let Some(dir) = path.parent() {
        crate::files::private_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut f = crate::files::create_new(path)
        .map_err(|e| format!("admin token file {}: {e}", path.display()))?;
    std::io::Write::write_all(&mut f, format!("{token}\n").as_bytes())
        .map_err(|e| format!("admin token file {}: {e}", path.display()))?;
    tracing::info!(path = %path.display(), "admin API token created");
    Ok(token)
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> ApiError {
        match e {
            ControlError::NoSuchMessage(_) => not_found(e.to_string()),
            ControlError::Held(_) => ApiError(StatusCode::CONFLICT, e.to_string()),
            ControlError::Stopped => ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }
}

pub fn router(admin: Admin) -> Router {
    let api = Router::new()
        .route("/openapi.json", get(openapi))
        .route("/queue", get(queue::queue_summary))
        .route("/queue/shape", get(queue::queue_shape))
        .route("/queue/retry", post(queue::queue_retry))
        .route("/queue/hold", post(queue::queue_hold))
        .route("/queue/release", post(queue::queue_release))
        .route("/queue/messages", get(queue::queue_list))
        .route(
            "/queue/messages/{id}",
            get(queue::message_show).delete(queue::message_delete),
        )
        .route("/queue/messages/{id}/retry", post(queue::message_retry))
        .route("/queue/messages/{id}/hold", post(queue::message_hold))
        .route("/queue/messages/{id}/release", post(queue::message_release))
        .route("/messages/{id}", get(queue::message_history))
        .route("/queue/messages/{id}/bounce", post(queue::message_bounce))
        .route("/accounts", get(accounts_list))
        .route("/accounts/{name}", get(account_show))
        .route("/accounts/{name}/freeze", post(account_freeze))
        .route("/accounts/{name}/unfreeze", post(account_unfreeze))
        .route("/accounts/{name}/keys", get(keys_list).post(key_create))
        .route(
            "/accounts/{name}/keys/{id}",
            axum::routing::delete(key_revoke),
        )
        .route("/consent/{account}/{list}/{address}", get(consent_record))
        .route(
            "/suppressions/{address}",
            get(lists::suppression_check).delete(lists::suppression_remove),
        )
        .route("/suppressions", post(lists::suppression_add))
        .route("/suppressions/remove", post(lists::suppression_lift))
        .route("/consent/grant", post(lists::consent_grant))
        .route("/consent/revoke", post(lists::consent_revoke))
        .route("/erase", post(erase::erase))
        .route("/campaigns", get(campaigns_list))
        .route("/campaigns/{account}/{id}", get(campaign_show))
        .route("/campaigns/{account}/{id}/declare", post(campaign_declare))
        .route("/campaigns/{account}/{id}/release", post(campaign_release))
        .route("/campaigns/{account}/{id}/decline", post(campaign_decline))
        .route("/policy", get(policy_status))
        .route("/cluster", get(cluster_status))
        .route("/policy/reload", post(policy_reload))
        .fallback(|| async { not_found("no such admin endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError(
                StatusCode::METHOD_NOT_ALLOWED,
                "this endpoint does not take that method".into(),
            )
        })
        .layer(middleware::from_fn_with_state(admin.clone(), authorise))
        .with_state(admin);
    Router::new().nest("/admin", api)
}

/// Every admin request needs the bearer token (compared in constant time).
async fn authorise(
    State(admin): State<Admin>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let given = super::api::bearer(&headers);
    // blake3::Hash compares in constant time; hashing first hides the length too.
    let same = blake3::hash(given.as_bytes()) == blake3::hash(admin.token.as_bytes());
    if !same {
        return ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token".into(),
        )
        .into_response();
    }
    next.run(request).await
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

fn parse_id(id: &str) -> Result<crate::envelope::QueueId, ApiError> {
    crate::envelope::QueueId::parse(id).ok_or_else(|| bad(format!("{id:?} is not a queue id")))
}

// ---- accounts ------------------------------------------------------------------------

async fn account_json(
    a: &Admin,
    name: &str,
    queued: Option<&crate::delivery::control::AccountQueue>,
) -> Value {
    json!({
        "account": name,
        "frozen": a.freezes.get(name),
        "health": health_json(a, name).await,
        "results": a.counts.get(name),
        "queued": {
            "messages": queued.map_or(0, |q| q.messages),
            "recipients": queued.map_or(0, |q| q.recipients),
            "held": queued.map_or(0, |q| q.held),
        },
    })
}

/// The account's window and how close each rate is to its freeze threshold: in cluster
/// mode the window summed over the nodes (what freezes), else — or while Redis does not
/// answer — this node's (`scope`).
async fn health_json(a: &Admin, name: &str) -> Value {
    use crate::governance::health;
    let governor = &a.governor;
    let rules = governor.policy.load().health_rules();
    let shared = match &a.cluster {
        Some(cluster) => crate::governance::shared::window(cluster, name, &rules).await,
        None => None,
    };
    let scope = if shared.is_some() { "cluster" } else { "node" };
    let w = shared.unwrap_or_else(|| {
        governor
            .health
            .window(name, &rules, crate::envelope::now_ms())
    });
    let thresholds: serde_json::Map<String, Value> = health::closeness(&w, &rules)
        .into_iter()
        .map(|c| {
            let v = json!({"ratio": c.ratio, "max_rate": c.max_rate});
            (c.threshold.to_string(), v)
        })
        .collect();
    json!({
        "scope": scope,
        "window_secs": rules.window.as_secs(),
        "counts": w,
        "volume": w.delivered + w.hard_bounces,
        "min_volume": rules.min_volume,
        "freeze": rules.freeze,
        "thresholds": thresholds,
    })
}

async fn accounts_list(State(a): State<Admin>) -> ApiResult {
    let summary = a.delivery.summary().await?;
    let policy = a.policy.load();
    // The policy's accounts, and any frozen one the policy no longer has.
    let mut names: Vec<String> = policy.accounts().iter().map(|a| a.name.clone()).collect();
    names.extend(a.freezes.all().into_keys());
    names.sort();
    names.dedup();
    let mut all: Vec<Value> = Vec::with_capacity(names.len());
    for name in &names {
        let q = summary.by_account.iter().find(|q| &q.account == name);
        all.push(account_json(&a, name, q).await);
    }
    ok(all)
}

async fn account_show(State(a): State<Admin>, Path(name): Path<String>) -> ApiResult {
    known_account(&a, &name)?;
    let summary = a.delivery.summary().await?;
    let q = summary.by_account.iter().find(|q| q.account == name);
    Ok(axum::Json(account_json(&a, &name, q).await))
}

fn known_account(a: &Admin, name: &str) -> Result<(), ApiError> {
    if a.policy.load().account(name).is_none() && a.freezes.get(name).is_none() {
        return Err(not_found(format!("no account {name:?} in the policy")));
    }
    Ok(())
}

#[derive(Deserialize)]
struct FreezeBody {
    reason: String,
}

async fn account_freeze(State(a): State<Admin>, Path(name): Path<String>, raw: Bytes) -> ApiResult {
    known_account(&a, &name)?;
    let b: FreezeBody = body(&raw)?;
    let freezes = a.freezes.clone();
    let who = name.clone();
    let changed = tokio::task::spawn_blocking(move || freezes.freeze(&who, &b.reason, "admin"))
        .await
        .map_err(|_| internal("the freeze task failed"))?
        .map_err(|e| match e {
            crate::governance::freeze::FreezeError::NoReason => bad(e.to_string()),
            other => internal(other.to_string()),
        })?;
    if changed {
        crate::metrics::account_frozen("admin");
    }
    ok(json!({"account": name, "frozen": a.freezes.get(&name), "changed": changed}))
}

async fn account_unfreeze(State(a): State<Admin>, Path(name): Path<String>) -> ApiResult {
    known_account(&a, &name)?;
    let freezes = a.freezes.clone();
    let who = name.clone();
    let changed = tokio::task::spawn_blocking(move || freezes.unfreeze(&who, "admin"))
        .await
        .map_err(|_| internal("the unfreeze task failed"))?
        .map_err(|e| internal(e.to_string()))?;
    if changed {
        a.delivery.release(&name);
    }
    ok(json!({"account": name, "frozen": null, "changed": changed}))
}

// ---- account keys and consent records ------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct KeyBody {
    #[serde(default)]
    label: String,
}

/// Makes a key for the account's own API; the answer holds it whole, once.
async fn key_create(State(a): State<Admin>, Path(name): Path<String>, raw: Bytes) -> ApiResult {
    if a.policy.load().account(&name).is_none() {
        return Err(not_found(format!("no account {name:?} in the policy")));
    }
    let b: KeyBody = if raw.is_empty() {
        KeyBody::default()
    } else {
        body(&raw)?
    };
    let keys = a.keys.clone();
    let (info, key) = tokio::task::spawn_blocking(move || keys.create(&name, &b.label))
        .await
        .map_err(|_| internal("the key task failed"))?
        .map_err(|e| match e {
            crate::governance::account_keys::KeyError::File { .. } => internal(e.to_string()),
            other => ApiError(StatusCode::CONFLICT, other.to_string()),
        })?;
    tracing::info!(account = %info.account, key = %info.id, "account API key created");
    let mut v = info.public();
    v["key"] = json!(key);
    ok(v)
}

async fn keys_list(State(a): State<Admin>, Path(name): Path<String>) -> ApiResult {
    known_account(&a, &name)?;
    let keys: Vec<Value> = a.keys.list(&name).iter().map(|k| k.public()).collect();
    ok(json!({"account": name, "keys": keys}))
}

async fn key_revoke(State(a): State<Admin>, Path((name, id)): Path<(String, String)>) -> ApiResult {
    let keys = a.keys.clone();
    let (n, i) = (name.clone(), id.clone());
    let revoked = tokio::task::spawn_blocking(move || keys.revoke(&n, &i))
        .await
        .map_err(|_| internal("the key task failed"))?
        .map_err(|e| internal(e.to_string()))?
        .ok_or_else(|| not_found(format!("account {name:?} has no key {id:?}")))?;
    tracing::info!(account = %name, key = %id, "account API key revoked");
    ok(revoked.public())
}

/// The consent record (proof) of an address on a list.
async fn consent_record(
    State(a): State<Admin>,
    Path((account, list, address)): Path<(String, String, String)>,
) -> ApiResult {
    let address = lists::normalised(&address)?;
    let ledger = a.consents.ledger.clone();
    let (acc, l, addr) = (account.clone(), list.clone(), address.clone());
    let record = tokio::task::spawn_blocking(move || ledger.get(&acc, &l, &addr))
        .await
        .map_err(|_| internal("the ledger task failed"))?
        .map_err(|e| internal(e.to_string()))?
        .ok_or_else(|| {
            not_found(format!(
                "no consent record of {address} on {account}/{list}"
            ))
        })?;
    ok(record)
}

// ---- campaigns -----------------------------------------------------------------------

async fn campaigns_list(State(a): State<Admin>) -> ApiResult {
    ok(a.campaigns.list())
}

fn campaign_of(
    a: &Admin,
    account: &str,
    id: &str,
) -> Result<crate::governance::campaign::Campaign, ApiError> {
    a.campaigns
        .get(&crate::governance::campaign::key(account, id))
        .ok_or_else(|| not_found(format!("no campaign {id:?} of account {account:?}")))
}

async fn campaign_show(
    State(a): State<Admin>,
    Path((account, id)): Path<(String, String)>,
) -> ApiResult {
    ok(campaign_of(&a, &account, &id)?)
}

#[derive(Deserialize)]
struct DeclareBody {
    size: u64,
}

/// Declares a campaign's size (before its mail, or during its canary): the canary becomes
/// the policy's share of it.
async fn campaign_declare(
    State(a): State<Admin>,
    Path((account, id)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult {
    known_account(&a, &account)?;
    let b: DeclareBody = body(&raw)?;
    if b.size == 0 {
        return Err(bad("size must be at least 1"));
    }
    let rules = a.policy.load().campaign_rules();
    let campaigns = a.campaigns.clone();
    let c = tokio::task::spawn_blocking(move || {
        campaigns.declare(&account, &id, b.size, &rules, crate::envelope::now_ms())
    })
    .await
    .map_err(|_| internal("the declare task failed"))?
    .map_err(campaign_error)?;
    if let Some(cluster) = a.campaigns.cluster() {
        let key = crate::governance::campaign::key(&c.account, &c.id);
        crate::governance::campaign::shared::declare(cluster, &key, c.canary_size).await;
    }
    ok(c)
}

fn campaign_error(e: crate::governance::campaign::CampaignError) -> ApiError {
    use crate::governance::campaign::CampaignError as E;
    match e {
        E::NoSuchCampaign(_) => not_found(e.to_string()),
        E::Decided(_) => ApiError(StatusCode::CONFLICT, e.to_string()),
        E::File { .. } => internal(e.to_string()),
    }
}

async fn verdict(a: &Admin, account: &str, id: &str, why: Option<String>) -> ApiResult {
    campaign_of(a, account, id)?;
    let key = crate::governance::campaign::key(account, id);
    let campaigns = a.campaigns.clone();
    let c = if let Some(cluster) = campaigns.cluster() {
        // One verdict for the cluster: whoever gave one first wins.
        let decided =
            crate::governance::campaign::shared::decide(cluster, &campaigns, &key, why, "admin")
                .await;
        a.delivery.campaign_verdict(&key);
        decided.map_err(campaign_error)?
    } else {
        let k = key.clone();
        let c = tokio::task::spawn_blocking(move || {
            campaigns.decide(&k, why, "admin", crate::envelope::now_ms())
        })
        .await
        .map_err(|_| internal("the verdict task failed"))?
        .map_err(campaign_error)?;
        a.delivery.campaign_verdict(&key);
        c
    };
    ok(c)
}

async fn campaign_release(
    State(a): State<Admin>,
    Path((account, id)): Path<(String, String)>,
) -> ApiResult {
    verdict(&a, &account, &id, None).await
}

#[derive(Deserialize)]
struct DeclineBody {
    reason: String,
}

async fn campaign_decline(
    State(a): State<Admin>,
    Path((account, id)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult {
    let b: DeclineBody = body(&raw)?;
    let reason = b.reason.trim();
    if reason.is_empty() {
        return Err(bad("a decline needs a reason"));
    }
    verdict(
        &a,
        &account,
        &id,
        Some(format!("declined by the relay operator: {reason}")),
    )
    .await
}

// ---- policy --------------------------------------------------------------------------

async fn policy_status(State(a): State<Admin>) -> ApiResult {
    ok(a.reloader.status())
}

/// The nodes of the cluster as Redis holds them, with this node's view of Redis.
async fn cluster_status(State(a): State<Admin>) -> ApiResult {
    let Some(cluster) = &a.cluster else {
        return Err(super::api::not_found(
            "this relay runs alone: the config has no [cluster] section",
        ));
    };
    ok(cluster.status().await)
}

async fn policy_reload(State(a): State<Admin>) -> Response {
    // Checked against the queue; the file is read off the async threads.
    let result = a.reloader.reload_now(Trigger::Admin).await;
    match result {
        Ok(generation) => {
            axum::Json(json!({"result": "reloaded", "generation": generation})).into_response()
        }
        Err(problems) => (
            StatusCode::CONFLICT,
            axum::Json(json!({
                "error": "policy refused; the running policy stays",
                "status": 409,
                "problems": problems,
            })),
        )
            .into_response(),
    }
}
