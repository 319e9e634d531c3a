//! The unsubscribe endpoints: `POST /u/TOKEN` (RFC 8058 one-click, and the buttons of the
//! page) and `GET /u/TOKEN` (a small page for people who click the link).
//!
//! A genuine token becomes an unsubscribe for its list — or, from the page's second
//! button, for everything the account sends as marketing — recorded by
//! [`crate::governance::unsubscribe`] before the answer, so the next message to that address is
//! refused. Repeating it is harmless. A bad token gets a 400 page; nothing here shows an
//! error's internals.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::governance::unsubscribe::{Unsubscribes, Via};
use crate::policy::Policy;
use crate::rewrite::statement::escape;
use crate::rewrite::token::Unsubscribe;

pub fn router(state: Arc<Unsubscribes>) -> Router {
    Router::new()
        .route("/u/{token}", get(page).post(unsubscribe))
        .with_state(state)
}

/// The pages' only style sheet, inline; the Content-Security-Policy allows it by its hash
/// ([`super::layers::PageHeaders`]) and nothing else.
pub(super) const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:34rem;\
    margin:3rem auto;padding:0 1rem;line-height:1.5}\
    button{font-size:1rem;padding:.6rem 1rem;margin:.3rem 0;cursor:pointer}";

/// A small, plain page (also the report-spam form's, [`super::complaint`]).
pub(super) fn html(status: StatusCode, title: &str, body: &str) -> Response {
    let page = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"robots\" content=\"noindex\">\n<title>{t}</title>\n\
         <style>{STYLE}</style>\n\
         </head>\n<body>\n<main>\n<h1>{t}</h1>\n{body}\n</main>\n</body>\n</html>\n",
        t = escape(title)
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        page,
    )
        .into_response()
}

fn bad_token() -> Response {
    html(
        StatusCode::BAD_REQUEST,
        "This unsubscribe link is not valid",
        "<p>The link may have been cut off or changed. Please use the complete link from \
         the message, or reply to the sender.</p>",
    )
}

/// The list's and the sender's names for a page about a token's message.
pub(super) fn names(policy: &Policy, u: &Unsubscribe) -> (String, String) {
    let account = policy.account(&u.account);
    let list = account
        .and_then(|a| a.list(&u.list))
        .map_or_else(|| u.list.clone(), |l| l.name.clone());
    // The name recipients know the sender by, never the operator's description.
    let sender = account.map_or_else(|| u.account.clone(), |a| a.sender.display_name.clone());
    (list, sender)
}

async fn page(State(st): State<Arc<Unsubscribes>>, UrlPath(token): UrlPath<String>) -> Response {
    let Ok(u) = st.keys.open(&token) else {
        return bad_token();
    };
    let (list, sender) = names(&st.policy.load(), &u);
    let action = format!("/u/{}", escape(&token));
    html(
        StatusCode::OK,
        "Unsubscribe",
        &format!(
            "<p>Stop receiving <strong>{list}</strong> from {sender}?</p>\n\
             <form method=\"post\" action=\"{action}\">\n\
             <input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\n\
             <button type=\"submit\">Unsubscribe from {list}</button>\n</form>\n\
             <form method=\"post\" action=\"{action}\">\n\
             <input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\n\
             <input type=\"hidden\" name=\"scope\" value=\"account\">\n\
             <button type=\"submit\">Unsubscribe from all marketing mail of {sender}</button>\n</form>",
            list = escape(&list),
            sender = escape(&sender),
        ),
    )
}

async fn unsubscribe(
    State(st): State<Arc<Unsubscribes>>,
    UrlPath(token): UrlPath<String>,
    body: Bytes,
) -> Response {
    let Ok(u) = st.keys.open(&token) else {
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
    let recorder = st.clone();
    let done = u.clone();
    let recorded =
        tokio::task::spawn_blocking(move || recorder.record(&done, whole_account, Via::Http)).await;
    if !matches!(recorded, Ok(Ok(()))) {
        return html(
            StatusCode::SERVICE_UNAVAILABLE,
            "Please try again",
            "<p>Your request could not be saved just now. Please try again in a minute.</p>",
        );
    }
    let (list, sender) = names(&st.policy.load(), &u);
    let what = if whole_account {
        format!("all marketing mail of {}", escape(&sender))
    } else {
        escape(&list)
    };
    html(
        StatusCode::OK,
        "You are unsubscribed",
        &format!("<p>You will not receive {what} any more.</p>"),
    )
}
