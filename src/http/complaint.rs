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
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;

use super::page::{html, names};
use crate::governance::complaints::{Complaint, Complaints, Via};
use crate::rewrite::statement::escape;

/// The form's routes; none when complaints are not taken.
pub fn router(complaints: Option<Arc<Complaints>>) -> Router {
    let Some(state) = complaints else {
        return Router::new();
    };
    Router::new()
        .route("/complaint/{token}", get(page).post(report))
        .with_state(state)
}

fn bad_token() -> Response {
    html(
        StatusCode::NOT_FOUND,
        "This report link is not valid",
        "<p>The link may have been cut off or changed. Please use the complete link from \
         the message.</p>",
    )
}

async fn page(State(st): State<Arc<Complaints>>, UrlPath(token): UrlPath<String>) -> Response {
    let Ok(u) = st.keys.open(&token) else {
        return bad_token();
    };
    let (list, sender) = names(&st.policy.load(), &u.account, &u.list);
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
    let (list, sender) = names(&st.policy.load(), &u.account, &u.list);
    let complaint = Complaint {
        account: u.account,
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
