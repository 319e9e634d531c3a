//! The admin API calls of `queue …`: the summary, a page of the list, one message, its
//! history, the shape, and the actions on one message or many.

use hyper::Method;
use serde_json::json;

use super::print::{self, print_message, print_messages, print_summary};
use super::{Call, encode, num, query, text};

/// The default `limit` of `GET /admin/queue/messages`.
pub const DEFAULT_LIST_LIMIT: usize = 100;

/// The most `GET /admin/queue/messages` returns, whatever the `limit`.
const MAX_LIST_LIMIT: usize = 10_000;

/// `GET /admin/queue`: totals, then by site, then by account.
pub fn queue_summary() -> Call {
    Call::new(Method::GET, "/queue".into(), print_summary)
}

/// `GET /admin/queue/messages`: oldest first, at most `limit` (and at most what the API
/// gives at once) after the cursor `after`.
pub fn queue_list(account: Option<&str>, limit: usize, after: Option<&str>) -> Call {
    let limit = limit.min(MAX_LIST_LIMIT);
    let limit_text = limit.to_string();
    let path = format!(
        "/queue/messages{}",
        query(&[
            ("account", account),
            ("limit", Some(&limit_text)),
            ("after", after)
        ])
    );
    Call::new(Method::GET, path, print_messages)
}

/// `GET /admin/queue/shape`.
pub fn queue_shape() -> Call {
    Call::new(Method::GET, "/queue/shape".into(), print::print_shape)
}

/// `POST /admin/queue/retry|hold|release` for many messages: an account's, a site's, or
/// all.
pub fn queue_bulk(verb: &'static str, account: Option<&str>, site: Option<&str>) -> Call {
    let body = if account.is_none() && site.is_none() {
        json!({ "all": true })
    } else {
        json!({ "account": account, "site": site })
    };
    Call::new(Method::POST, format!("/queue/{verb}"), move |v| {
        println!("{} message(s) {}", num(&v["messages"]), text(&v["result"]));
    })
    .with_body(body)
}

/// `POST /admin/queue/messages/{id}/hold`.
pub fn queue_hold(id: &str) -> Call {
    action(
        Method::POST,
        id,
        "/hold",
        "open recipient(s) held until released",
    )
}

/// `POST /admin/queue/messages/{id}/release`.
pub fn queue_release(id: &str) -> Call {
    action(Method::POST, id, "/release", "open recipient(s) released")
}

/// `GET /admin/queue/messages/{id}`.
pub fn queue_show(id: &str) -> Call {
    Call::new(
        Method::GET,
        format!("/queue/messages/{}", encode(id)),
        print_message,
    )
}

/// `GET /admin/messages/{id}`: what happened to a message (queue id or Message-ID).
pub fn message_history(id: &str) -> Call {
    Call::new(
        Method::GET,
        format!("/messages/{}", encode(id)),
        print::print_history,
    )
}

/// `POST /admin/queue/messages/{id}/retry`.
pub fn queue_retry(id: &str) -> Call {
    action(
        Method::POST,
        id,
        "/retry",
        "waiting recipient(s) are tried now",
    )
}

/// `POST /admin/queue/messages/{id}/bounce`.
pub fn queue_bounce(id: &str) -> Call {
    action(
        Method::POST,
        id,
        "/bounce",
        "waiting recipient(s) failed; a DSN goes to the sender",
    )
}

/// `DELETE /admin/queue/messages/{id}`.
pub fn queue_delete(id: &str) -> Call {
    action(
        Method::DELETE,
        id,
        "",
        "waiting recipient(s) dropped, without a DSN",
    )
}

fn action(method: Method, id: &str, suffix: &str, what: &'static str) -> Call {
    let path = format!("/queue/messages/{}{suffix}", encode(id));
    Call::new(method, path, move |v| {
        println!(
            "message {}: {} {what}",
            text(&v["id"]),
            num(&v["recipients"])
        );
    })
}
