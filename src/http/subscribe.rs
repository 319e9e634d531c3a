//! The subscription endpoints of the public listener: `POST /s/ACCOUNT/LIST` (the action
//! of a plain HTML form on the sender's site: `email`, an optional `redirect` to one of
//! the list's `thank_you_urls`, and a `website` field left empty by people and filled by
//! bots), and the confirmation link `GET /s/confirm/TOKEN` — a page whose button (`POST`
//! to the same address) records the consent; a GET alone never does, so a mail scanner
//! following links subscribes nobody. [`crate::governance::subscribe`] decides; this
//! module queues the confirmation message as the relay's own transactional mail.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::listener::Client;
use super::page::{html, names};
use crate::delivery::Intake;
use crate::governance::subscribe::{Asked, BadLink, Refused, Subscriptions};
use crate::rewrite::statement::escape;
use crate::spool::Spool;

/// What the endpoints need.
#[derive(Clone)]
pub struct Subscribe {
    pub subscriptions: Arc<Subscriptions>,
    pub spool: Spool,
    pub intake: Arc<dyn Intake>,
}

pub fn router(state: Option<Subscribe>) -> Router {
    let Some(state) = state else {
        return Router::new();
    };
    Router::new()
        .route("/s/{account}/{list}", post(form))
        .route("/s/confirm/{token}", get(page).post(confirm))
        .with_state(state)
}

/// The first value of `name` in a form body.
pub(super) fn field(body: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The request's user agent, at most 200 octets (for a proof record).
pub(super) fn agent(headers: &HeaderMap) -> String {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|v| crate::rewrite::token::truncate(v, 200).to_string())
        .unwrap_or_default()
}

fn check_inbox(redirect: Option<&str>) -> Response {
    if let Some(to) = redirect {
        return see_other(to);
    }
    html(
        StatusCode::OK,
        "Please check your inbox",
        "<p>If this address can receive our mail, a message with a confirmation link is on \
         its way. Open the link and press the button to confirm; until then nothing is \
         sent to you.</p>",
    )
}

fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}

async fn form(
    State(st): State<Subscribe>,
    UrlPath((account, list)): UrlPath<(String, String)>,
    Extension(Client(client)): Extension<Client>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let address = field(&body, "email").or_else(|| field(&body, "address"));
    // Only a URL the list allows, exactly: the form is no open redirect.
    let redirect = field(&body, "redirect").filter(|r| {
        st.subscriptions
            .consents
            .policy
            .load()
            .account(&account)
            .and_then(|a| a.list(&list))
            .is_some_and(|l| l.thank_you_urls.contains(r))
    });
    if field(&body, "website").is_some_and(|w| !w.is_empty()) {
        crate::metrics::subscription("honeypot");
        return check_inbox(redirect.as_deref());
    }
    let Some(address) = address.filter(|a| !a.trim().is_empty()) else {
        crate::metrics::subscription("refused");
        return html(
            StatusCode::BAD_REQUEST,
            "Nothing was changed",
            "<p>Please give an e-mail address.</p>",
        );
    };
    let (a, l) = (account.clone(), list.clone());
    match ask(&st, a, l, address, client, agent(&headers), true).await {
        Ok(Outcome::Sent) => check_inbox(redirect.as_deref()),
        Ok(Outcome::Subscribed) => {
            crate::metrics::subscription("subscribed");
            match redirect {
                Some(to) => see_other(&to),
                None => html(
                    StatusCode::OK,
                    "You are subscribed",
                    "<p>Thank you. Every message will say how to unsubscribe.</p>",
                ),
            }
        }
        Ok(Outcome::Quiet(why)) => {
            tracing::info!(account = %account, list = %list, why, "subscription: nothing sent");
            crate::metrics::subscription("quiet");
            check_inbox(redirect.as_deref())
        }
        Err(e) => {
            crate::metrics::subscription("refused");
            refused(e)
        }
    }
}

fn refused(e: Refused) -> Response {
    let status = match e {
        Refused::NoList | Refused::Closed => StatusCode::NOT_FOUND,
        Refused::BadAddress(_) => StatusCode::BAD_REQUEST,
        Refused::TooMany => StatusCode::TOO_MANY_REQUESTS,
        Refused::Paused | Refused::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    };
    html(
        status,
        "Nothing was changed",
        &format!("<p>{}</p>", escape(&e.to_string())),
    )
}

/// What became of a request for a subscription, its confirmation message queued.
pub(super) enum Outcome {
    /// A confirmation message is on its way.
    Sent,
    /// Single opt-in: recorded.
    Subscribed,
    /// Nothing sent (already subscribed, suppressed, over the address's limit).
    Quiet(&'static str),
}

/// Asks for a subscription (off the async threads: a single opt-in records at once) and
/// queues the confirmation message it calls for.
pub(super) async fn ask(
    st: &Subscribe,
    account: String,
    list: String,
    address: String,
    client: std::net::IpAddr,
    user_agent: String,
    from_form: bool,
) -> Result<Outcome, Refused> {
    let subs = st.subscriptions.clone();
    let asked = tokio::task::spawn_blocking(move || {
        subs.ask(&account, &list, &address, client, &user_agent, from_form)
    })
    .await
    .map_err(|_| Refused::Unavailable)??;
    match asked {
        Asked::Confirmation(envelope, content) => {
            if !queue(st, *envelope, content).await {
                return Err(Refused::Unavailable);
            }
            crate::metrics::subscription("confirmation_sent");
            Ok(Outcome::Sent)
        }
        Asked::Subscribed => Ok(Outcome::Subscribed),
        Asked::Quiet(why) => Ok(Outcome::Quiet(why)),
    }
}

/// Stores the confirmation message durably and hands it to delivery.
pub(super) async fn queue(
    st: &Subscribe,
    mut envelope: crate::envelope::Envelope,
    content: Vec<u8>,
) -> bool {
    envelope.id = st.spool.next_id();
    let body = Bytes::from(content);
    match st.spool.store(&envelope, body.clone()).await {
        Ok(loc) => {
            tracing::info!(id = %envelope.id, account = %envelope.account, "confirmation message queued");
            st.intake.accepted(envelope, loc, body);
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "could not store a confirmation message");
            false
        }
    }
}

fn bad_link(why: BadLink) -> Response {
    crate::metrics::subscription(match why {
        BadLink::Invalid => "invalid_link",
        BadLink::Expired => "expired_link",
    });
    match why {
        BadLink::Invalid => html(
            StatusCode::BAD_REQUEST,
            "This confirmation link is not valid",
            "<p>The link may have been cut off or changed. Please use the complete link \
             from the message.</p>",
        ),
        BadLink::Expired => html(
            StatusCode::GONE,
            "This confirmation link has expired",
            "<p>Nothing was changed. Please subscribe again to get a new link.</p>",
        ),
    }
}

async fn page(State(st): State<Subscribe>, UrlPath(token): UrlPath<String>) -> Response {
    let c = match st.subscriptions.open(&token) {
        Ok(c) => c,
        Err(why) => return bad_link(why),
    };
    let (list, sender) = names(
        &st.subscriptions.consents.policy.load(),
        &c.account,
        &c.list,
    );
    let action = format!("/s/confirm/{}", escape(&token));
    let ask = if c.reconfirm {
        format!(
            "Keep receiving <strong>{}</strong> from {}?",
            escape(&list),
            escape(&sender)
        )
    } else {
        format!(
            "Subscribe to <strong>{}</strong> from {}?",
            escape(&list),
            escape(&sender)
        )
    };
    html(
        StatusCode::OK,
        "Please confirm",
        &format!(
            "<p>{ask}</p>\n<form method=\"post\" action=\"{action}\">\n\
             <input type=\"hidden\" name=\"confirm\" value=\"yes\">\n\
             <button type=\"submit\">Yes, {what}</button>\n</form>\n\
             <p>If you did not ask for this, close this page: nothing will be sent to you.</p>",
            what = if c.reconfirm {
                "keep me subscribed"
            } else {
                "subscribe me"
            },
        ),
    )
}

async fn confirm(
    State(st): State<Subscribe>,
    UrlPath(token): UrlPath<String>,
    Extension(Client(client)): Extension<Client>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let c = match st.subscriptions.open(&token) {
        Ok(c) => c,
        Err(why) => return bad_link(why),
    };
    if field(&body, "confirm").as_deref() != Some("yes") {
        return html(
            StatusCode::BAD_REQUEST,
            "Nothing was changed",
            "<p>This request did not confirm anything.</p>",
        );
    }
    let subs = st.subscriptions.clone();
    let ua = agent(&headers);
    let done = c.clone();
    let recorded = tokio::task::spawn_blocking(move || subs.confirm(&done, client, &ua)).await;
    if !matches!(recorded, Ok(Ok(()))) {
        return refused(Refused::Unavailable);
    }
    crate::metrics::subscription("confirmed");
    let (list, sender) = names(
        &st.subscriptions.consents.policy.load(),
        &c.account,
        &c.list,
    );
    html(
        StatusCode::OK,
        "You are subscribed",
        &format!(
            "<p>Thank you: you will receive <strong>{}</strong> from {}. Every message says \
             how to unsubscribe.</p>",
            escape(&list),
            escape(&sender)
        ),
    )
}
