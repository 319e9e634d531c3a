//! What the two JSON APIs (the operator's admin API and the accounts' own API) share: the
//! error reply `{"error": "...", "status": N}` with its HTTP status (a 401 names the Bearer
//! scheme), and reading a JSON body or a query string with a 400 that says what is wrong.

use axum::body::Bytes;
use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The bearer credential of a request (empty when it has none).
pub fn bearer(headers: &axum::http::HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .trim()
}

/// An error reply.
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.1, "status": self.0.as_u16()});
        let mut response = (self.0, axum::Json(body)).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("valid"));
        }
        response
    }
}

/// A refusal in the API's JSON, for the listener's body bounds ([`super::layers`]).
pub fn refusal(status: StatusCode, why: &str) -> Response {
    ApiError(status, why.to_string()).into_response()
}

pub fn bad(why: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, why.into())
}

pub fn internal(why: impl Into<String>) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, why.into())
}

pub fn not_found(why: impl Into<String>) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, why.into())
}

pub type ApiResult = Result<axum::Json<Value>, ApiError>;

pub fn ok(v: impl serde::Serialize) -> ApiResult {
    Ok(axum::Json(serde_json::to_value(v).expect("serialisable")))
}

/// A JSON body, with a 400 naming what is wrong.
pub fn body<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| bad(format!("bad JSON body: {e}")))
}

/// A query string, with a 400 in JSON naming what is wrong.
pub fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| bad(format!("bad query: {}", e.body_text())))
}

/// The most addresses one request may change (the CLI sends larger sets in parts; the
/// account API takes larger sets as an upload).
pub const MAX_BATCH: usize = 10_000;

/// `address` or `addresses` (one of them) normalised, or a 400 naming each one that is
/// not an address (nothing is changed then).
pub fn addresses(
    address: Option<&String>,
    addresses: Option<&[String]>,
) -> Result<Vec<String>, ApiError> {
    let given: Vec<&String> = match (address, addresses) {
        (Some(one), None) => vec![one],
        (None, Some(many)) if !many.is_empty() => many.iter().collect(),
        (None, Some(_)) => return Err(bad("addresses is empty")),
        (None, None) => return Err(bad("give address or addresses")),
        (Some(_), Some(_)) => return Err(bad("give address or addresses, not both")),
    };
    if given.len() > MAX_BATCH {
        return Err(bad(format!(
            "{} addresses: at most {MAX_BATCH} per request",
            given.len()
        )));
    }
    let mut good = Vec::with_capacity(given.len());
    let mut wrong = Vec::new();
    for a in given {
        match crate::consent::key::normalise(a) {
            Ok(n) => good.push(n),
            Err(e) => wrong.push(format!("{a:?}: {e}")),
        }
    }
    match wrong.len() {
        0 => Ok(good),
        1 => Err(bad(wrong.remove(0))),
        n => Err(bad(format!(
            "{n} addresses are not addresses (nothing was changed): {}",
            wrong.join("; ")
        ))),
    }
}

/// One address, normalised as the lists key it, or a 400.
pub fn normalised(address: &str) -> Result<String, ApiError> {
    crate::consent::key::normalise(address).map_err(|e| bad(format!("{address:?}: {e}")))
}
