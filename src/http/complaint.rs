//! The "report this message as unwanted" form: `GET /complaint/TOKEN` shows it and
//! `POST /complaint/TOKEN` (with `report=unwanted`, what its button sends) records a spam
//! complaint for the token's account and address through
//! [`crate::governance::complaints`], before the confirmation page. The token is the
//! unsubscribe token of the message's links, so nobody can complain in someone else's
//! name. A bad token gets a 404 page; nothing here shows an error's internals.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::governance::complaints::{Complaint, Complaints, Via};
use crate::policy::Policy;
use crate::rewrite::statement::escape;
use crate::rewrite::token::Unsubscribe;

/// The form's routes; none when complaints are not taken.
pub fn router(complaints: Option<Arc<Complaints>>) -> Router {
    let Some(state) = complaints else {
        return Router::new();
    };
    Router::new()
        .route("/complaint/{token}", get(page).post(report))
        .with_state(state)
}

/// A small page in the style of the unsubscribe pages.
fn html(status: StatusCode, title: &str, body: &str) -> Response {
    let page = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"robots\" content=\"noindex\">\n<title>{t}</title>\n\
         <style>body{{font-family:system-ui,sans-serif;max-width:34rem;margin:3rem auto;padding:0 1rem;line-height:1.5}}\
         button{{font-size:1rem;padding:.6rem 1rem;margin:.3rem 0;cursor:pointer}}</style>\n\
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
        StatusCode::NOT_FOUND,
        "This report link is not valid",
        "<p>The link may have been cut off or changed. Please use the complete link from \
         the message.</p>",
    )
}

/// The list's and the sender's names for the page.
fn names(policy: &Policy, u: &Unsubscribe) -> (String, String) {
    let account = policy.account(&u.account);
    let list = account
        .and_then(|a| a.list(&u.list))
        .map_or_else(|| u.list.clone(), |l| l.name.clone());
    let sender = account
        .map(|a| a.description.clone())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| u.account.clone());
    (list, sender)
}

async fn page(State(st): State<Arc<Complaints>>, UrlPath(token): UrlPath<String>) -> Response {
    let Ok(u) = st.keys.open(&token) else {
        return bad_token();
    };
    let (list, sender) = names(&st.policy.load(), &u);
    let token = escape(&token);
    html(
        StatusCode::OK,
        "Report this message as unwanted",
        &format!(
            "<p>You received <strong>{list}</strong> from {sender}. If you never asked for \
             it, report it: {sender} will not be able to send you mail through this service \
             again, and the report counts against them.</p>\n\
             <form method=\"post\" action=\"/complaint/{token}\">\n\
             <input type=\"hidden\" name=\"report\" value=\"unwanted\">\n\
             <button type=\"submit\">Report as unwanted</button>\n</form>\n\
             <p>Only want to stop getting {list}? <a href=\"/u/{token}\">Unsubscribe \
             instead</a>.</p>",
            list = escape(&list),
            sender = escape(&sender),
        ),
    )
}

async fn report(
    State(st): State<Arc<Complaints>>,
    UrlPath(token): UrlPath<String>,
    body: Bytes,
) -> Response {
    let Ok(u) = st.keys.open(&token) else {
        return bad_token();
    };
    // Only the form's button reports; a bare POST (a link checker) changes nothing.
    if memchr::memmem::find(&body, b"report=unwanted").is_none() {
        return html(
            StatusCode::BAD_REQUEST,
            "Nothing was changed",
            "<p>This request did not ask to report the message.</p>",
        );
    }
    let (list, sender) = names(&st.policy.load(), &u);
    let complaint = Complaint {
        account: Some(u.account),
        list: Some(u.list),
        address: u.address,
        feedback_type: "abuse".into(),
        via: Via::Form,
    };
    let recorder = st.clone();
    let recorded = tokio::task::spawn_blocking(move || recorder.record(complaint)).await;
    if !matches!(recorded, Ok(Ok(_))) {
        return html(
            StatusCode::SERVICE_UNAVAILABLE,
            "Please try again",
            "<p>Your report could not be saved just now. Please try again in a minute.</p>",
        );
    }
    html(
        StatusCode::OK,
        "Thank you for your report",
        &format!(
            "<p>Your report about {list} was recorded. {sender} will not send you mail \
             through this service any more.</p>",
            list = escape(&list),
            sender = escape(&sender),
        ),
    )
}
