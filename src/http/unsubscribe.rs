//! The unsubscribe endpoints: `POST /u/TOKEN` (RFC 8058 one-click, and the buttons of the
//! recipient's page), routed here with the page's own (`GET /u/TOKEN`, the recipient's
//! page for that sender, and its forms: [`super::preferences`]). The pages' frame is
//! [`super::page`].
//!
//! A genuine token becomes an unsubscribe for its list — or, with `scope=account`, for
//! everything the account sends as marketing — recorded by
//! [`crate::governance::unsubscribe`] before the answer, so the next message to that
//! address is refused. Repeating it is harmless. A bad token gets a 400 page; nothing here
//! shows an error's internals.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};

use super::page::{bad_token, branded, html, names, try_again};
use super::preferences::{self, Pages};
use crate::governance::unsubscribe::Via;
use crate::rewrite::statement::escape;

pub fn router(pages: Pages) -> Router {
    Router::new()
        .route("/u/{token}", get(preferences::page).post(unsubscribe))
        .route("/u/{token}/preferences", post(preferences::save))
        .route("/u/{token}/resubscribe", post(preferences::resubscribe))
        .with_state(pages)
}

async fn unsubscribe(
    State(st): State<Pages>,
    UrlPath(token): UrlPath<String>,
    body: Bytes,
) -> Response {
    let Ok(u) = st.unsubscribes.keys.open(&token) else {
        return bad_token();
    };
    // RFC 8058: the body is `List-Unsubscribe=One-Click`, form-urlencoded or multipart.
    if memchr::memmem::find(&body, b"One-Click").is_none() {
        return html(
            StatusCode::BAD_REQUEST,
            "Nothing was changed",
            "<p>This request did not ask to unsubscribe.</p>",
        );
    }
    let whole_account = memchr::memmem::find(&body, b"scope=account").is_some();
    let recorder = st.unsubscribes.clone();
    let done = u.clone();
    let recorded =
        tokio::task::spawn_blocking(move || recorder.record(&done, whole_account, Via::Http)).await;
    if !matches!(recorded, Ok(Ok(()))) {
        return try_again();
    }
    let policy = st.unsubscribes.policy.load();
    let (list, sender) = names(&policy, &u.account, &u.list);
    let what = if whole_account {
        format!("all marketing mail of {}", escape(&sender))
    } else {
        escape(&list)
    };
    let brand = policy.account(&u.account).map(|a| &a.sender);
    branded(
        StatusCode::OK,
        "You are unsubscribed",
        &format!(
            "<p>You will not receive {what} any more.</p>\n{}",
            preferences::mistake_button(&st, &token, &u)
        ),
        brand,
    )
}
