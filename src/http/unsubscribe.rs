//! The unsubscribe endpoints: `POST /u/TOKEN` (RFC 8058 one-click, and the buttons of the
//! recipient's page) and the pages every public answer is drawn with ([`html`],
//! [`branded`]). `GET /u/TOKEN`, the recipient's page for that sender, is
//! [`super::preferences`]'s.
//!
//! A genuine token becomes an unsubscribe for its list — or, with `scope=account`, for
//! everything the account sends as marketing — recorded by
//! [`crate::governance::unsubscribe`] before the answer, so the next message to that
//! address is refused. Repeating it is harmless. A bad token gets a 400 page; nothing here
//! shows an error's internals.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::preferences::{self, Pages};
use crate::governance::unsubscribe::Via;
use crate::policy::Policy;
use crate::policy::sender::Sender;
use crate::rewrite::statement::escape;
use crate::rewrite::token::Unsubscribe;

pub fn router(pages: Pages) -> Router {
    Router::new()
        .route("/u/{token}", get(preferences::page).post(unsubscribe))
        .route("/u/{token}/preferences", post(preferences::save))
        .route("/u/{token}/resubscribe", post(preferences::resubscribe))
        .with_state(pages)
}

/// The pages' only style sheet, inline; the Content-Security-Policy allows it by its hash
/// ([`super::layers::PageHeaders`]) and nothing else.
pub(super) const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:34rem;\
    margin:3rem auto;padding:0 1rem;line-height:1.5}\
    button{font-size:1rem;padding:.6rem 1rem;margin:.3rem 0;cursor:pointer}";

/// A small, plain page (also the report-spam form's, [`super::complaint`]).
pub(super) fn html(status: StatusCode, title: &str, body: &str) -> Response {
    branded(status, title, body, None)
}

/// A page dressed in a sender's logo and colour (when its policy gives them), with the
/// Content-Security-Policy that allows exactly that logo's origin and that style.
pub(super) fn branded(
    status: StatusCode,
    title: &str,
    body: &str,
    sender: Option<&Sender>,
) -> Response {
    let colour = sender.and_then(|s| s.brand_colour.as_deref());
    let logo = sender.and_then(|s| s.logo_url.as_deref());
    let style = match colour {
        // Checked as #rrggbb by the policy.
        Some(c) => format!(
            "{STYLE}h1{{color:{c}}}button{{background:{c};color:#fff;border:0;border-radius:4px}}\
             fieldset{{border:1px solid {c}}}"
        ),
        None => STYLE.to_string(),
    };
    let header = match (sender, logo) {
        (Some(s), Some(url)) => format!(
            "<header><img src=\"{}\" alt=\"{}\" height=\"48\"></header>\n",
            escape(url),
            escape(&s.display_name)
        ),
        _ => String::new(),
    };
    let page = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"robots\" content=\"noindex\">\n<title>{t}</title>\n\
         <style>{style}</style>\n\
         </head>\n<body>\n{header}<main>\n<h1>{t}</h1>\n{body}\n</main>\n</body>\n</html>\n",
        t = escape(title)
    );
    let mut response = (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        page,
    )
        .into_response();
    if colour.is_some() || logo.is_some() {
        let origin = logo.and_then(origin_of);
        response.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            super::layers::content_policy(&style, origin.as_deref()),
        );
    }
    response
}

/// `https://host[:port]` of an https URL.
fn origin_of(url: &str) -> Option<String> {
    let rest = url.strip_prefix("https://")?;
    let host = rest.split(['/', '?', '#']).next()?;
    (!host.is_empty() && !host.contains(['@', ';', ',', ' '])).then(|| format!("https://{host}"))
}

pub(super) fn bad_token() -> Response {
    html(
        StatusCode::BAD_REQUEST,
        "This unsubscribe link is not valid",
        "<p>The link may have been cut off or changed. Please use the complete link from \
         the message, or reply to the sender.</p>",
    )
}

pub(super) fn try_again() -> Response {
    html(
        StatusCode::SERVICE_UNAVAILABLE,
        "Please try again",
        "<p>Your request could not be saved just now. Please try again in a minute.</p>",
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
    let (list, sender) = names(&policy, &u);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logo_origins() {
        assert_eq!(
            origin_of("https://cdn.shop.example/img/logo.png?v=2").as_deref(),
            Some("https://cdn.shop.example")
        );
        assert_eq!(
            origin_of("https://shop.example:8443").as_deref(),
            Some("https://shop.example:8443")
        );
        assert_eq!(origin_of("http://shop.example/logo.png"), None);
        assert_eq!(origin_of("https://a@b.example/"), None);
    }
}
