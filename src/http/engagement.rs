//! Engagement tracking on the public listener: `GET /c/TOKEN` records a click and
//! redirects (302) to the link the message carried — the sealed token names it, so this is
//! no open redirect: a token that was altered or made up gets a 404 page and goes nowhere —
//! and `GET /o/TOKEN` records an open and answers a 1×1 transparent GIF. No cookies; a
//! `HEAD` (link scanners) answers the same without counting. Recording goes through
//! [`crate::governance::engagement`].

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::page::html;
use crate::governance::engagement::Engagements;

/// A 1×1 transparent GIF.
const PIXEL: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// The tracking routes; none when tracking is not served.
pub fn router(engagements: Option<Arc<Engagements>>) -> Router {
    let Some(state) = engagements else {
        return Router::new();
    };
    Router::new()
        .route("/c/{token}", get(click))
        .route("/o/{token}", get(open))
        .with_state(state)
}

fn not_valid() -> Response {
    html(
        StatusCode::NOT_FOUND,
        "This link is not valid",
        "<p>The link may have been cut off or changed. Please use the complete link from \
         the message.</p>",
    )
}

/// Opens a token without counting (a `HEAD`), or records it.
fn recorded(
    st: &Engagements,
    method: &Method,
    token: &str,
    click: bool,
) -> Option<crate::rewrite::token::Engagement> {
    let kind = if click { "click" } else { "open" };
    let result = if method == Method::HEAD {
        st.peek(token, click)
    } else {
        st.record(token, click).map(|r| r.engagement)
    };
    match result {
        Ok(e) => Some(e),
        Err(_) => {
            crate::metrics::tracking_refused(kind);
            None
        }
    }
}

async fn click(
    State(st): State<Arc<Engagements>>,
    method: Method,
    UrlPath(token): UrlPath<String>,
) -> Response {
    let Some(e) = recorded(&st, &method, &token, true) else {
        return not_valid();
    };
    // The target was a link of the message; still, only an http(s) URL a header can carry.
    let lower = e.url.get(..8).unwrap_or(&e.url).to_ascii_lowercase();
    let location = (lower.starts_with("http://") || lower.starts_with("https://"))
        .then(|| header::HeaderValue::from_str(&e.url).ok())
        .flatten();
    match location {
        Some(to) => (
            StatusCode::FOUND,
            [
                (header::LOCATION, to),
                (
                    header::CACHE_CONTROL,
                    header::HeaderValue::from_static("no-store"),
                ),
            ],
        )
            .into_response(),
        None => not_valid(),
    }
}

async fn open(
    State(st): State<Arc<Engagements>>,
    method: Method,
    UrlPath(token): UrlPath<String>,
) -> Response {
    if recorded(&st, &method, &token, false).is_none() {
        return not_valid();
    }
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "image/gif"),
            (header::CACHE_CONTROL, "no-store, private"),
        ],
        PIXEL,
    )
        .into_response()
}
