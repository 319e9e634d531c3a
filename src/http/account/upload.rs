//! `POST /account/consent/upload`: a file of addresses (CSV or JSON lines) streamed to
//! disk under `[account_api] max_upload_size` and `upload_timeout` (and the listener's
//! `body_timeout` between two chunks), then applied by a job
//! ([`crate::governance::uploads`]) whose progress `GET /account/jobs/{id}` shows. The
//! body is never held in memory; a refused or broken upload leaves nothing behind.

use tokio::io::AsyncWriteExt;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde::Deserialize;

use super::{AccountApi, account_of, list_of};
use crate::governance::account_keys::KeyInfo;
use crate::governance::uploads::{Action, Format, Job, Uploads};
use crate::http::api::{ApiError, ApiResult, bad, internal, not_found, ok, query};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UploadQuery {
    list: Option<String>,
    action: Option<Action>,
    format: Option<Format>,
    name: Option<String>,
}

/// The format asked for, else the one the content type names (CSV unless JSON lines).
fn format_of(asked: Option<Format>, headers: &HeaderMap) -> Format {
    asked.unwrap_or_else(|| {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if ct.contains("ndjson") || ct.contains("jsonl") || ct.contains("json-seq") {
            Format::Jsonl
        } else {
            Format::Csv
        }
    })
}

pub(super) async fn upload(
    State(api): State<AccountApi>,
    Extension(key): Extension<KeyInfo>,
    q: Result<Query<UploadQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match accept(api, key, q, headers, body).await {
        Ok(job) => (StatusCode::ACCEPTED, axum::Json(job)).into_response(),
        Err(e) => {
            // The body may be half read: the connection is not reused.
            let mut r = e.into_response();
            r.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            r
        }
    }
}

async fn accept(
    api: AccountApi,
    key: KeyInfo,
    q: Result<Query<UploadQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Job, ApiError> {
    let q = query(q)?;
    let acc = account_of(&api, &key)?;
    let list = list_of(&acc, q.list.as_deref())?;
    let name = q.name.unwrap_or_else(|| "upload".into());
    if name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(bad("name: at most 200 characters, no control characters"));
    }
    let max = api.config.max_upload_size;
    let too_big = || {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("an upload has at most {max} octets; send the file in parts"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_big());
    }
    if api.uploads.pending(&acc.name) >= api.config.max_jobs {
        return Err(ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "your account has {} upload jobs running or queued; wait for one to finish",
                api.config.max_jobs
            ),
        ));
    }
    let id = Uploads::new_id();
    let path = api.uploads.data_path(&id);
    let received = receive(&api, body, &path).await;
    let bytes = match received {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(match e {
                Receive::TooBig => too_big(),
                Receive::Slow => ApiError(
                    StatusCode::REQUEST_TIMEOUT,
                    "the upload did not arrive in time".into(),
                ),
                Receive::Broken(why) => bad(format!("the upload could not be read: {why}")),
                Receive::Disk(why) => {
                    tracing::error!(error = %why, "account upload: cannot store the file");
                    internal("the upload could not be stored; nothing was changed")
                }
            });
        }
    };
    let job = Job::queued(
        id,
        &key,
        &list,
        q.action.unwrap_or(Action::Grant),
        format_of(q.format, &headers),
        name,
        bytes,
    );
    let uploads = api.uploads.clone();
    tokio::task::spawn_blocking(move || uploads.submit(job))
        .await
        .map_err(|_| internal("the upload task failed"))?
        .map_err(|e| {
            let _ = std::fs::remove_file(&path);
            tracing::error!(error = %e, "account upload: cannot queue the job");
            internal("the upload could not be stored; nothing was changed")
        })
}

enum Receive {
    TooBig,
    Slow,
    Broken(String),
    Disk(std::io::Error),
}

/// Streams the body into `path` (0600, fsynced), returning its size.
async fn receive(api: &AccountApi, mut body: Body, path: &std::path::Path) -> Result<u64, Receive> {
    let max = api.config.max_upload_size;
    let gap = api.config.chunk_timeout;
    let deadline = tokio::time::Instant::now() + api.config.upload_timeout;
    // Created 0600; written through tokio's file, so a slow disk never holds an async
    // thread.
    let file = crate::files::create_new(path).map_err(Receive::Disk)?;
    let mut out = tokio::io::BufWriter::with_capacity(256 << 10, tokio::fs::File::from_std(file));
    let mut total = 0u64;
    loop {
        let wait = gap.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        let frame = match tokio::time::timeout(wait, body.frame()).await {
            Err(_) => {
                crate::metrics::http_timeout("public", "body");
                return Err(Receive::Slow);
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(Receive::Broken(e.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len() as u64;
        if total > max {
            return Err(Receive::TooBig);
        }
        // The fsync comes once, at the end.
        out.write_all(&data).await.map_err(Receive::Disk)?;
    }
    out.flush().await.map_err(Receive::Disk)?;
    out.into_inner().sync_all().await.map_err(Receive::Disk)?;
    Ok(total)
}

pub(super) async fn jobs(
    State(api): State<AccountApi>,
    Extension(key): Extension<KeyInfo>,
) -> ApiResult {
    ok(serde_json::json!({"jobs": api.uploads.list(&key.account)}))
}

pub(super) async fn job(
    State(api): State<AccountApi>,
    Extension(key): Extension<KeyInfo>,
    Path(id): Path<String>,
) -> ApiResult {
    api.uploads
        .get(&key.account, &id)
        .map(|j| axum::Json(serde_json::to_value(j).expect("serialisable")))
        .ok_or_else(|| not_found(format!("your account has no upload job {id:?}")))
}
