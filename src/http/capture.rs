//! The captured mail of capture mode (`crate::delivery::capture`), on the operator
//! listener: `GET /capture/` lists it, `/capture/{id}` shows one message (envelope,
//! headers, text part, links to the rest), `/capture/{id}/html` its HTML part (sandboxed:
//! no script, no remote content), `/capture/{id}/raw` the message as received, and
//! `/capture/messages.json` the list for scripts; `latest` stands for the newest message's
//! id (`/capture/latest/raw`).
//!
//! The messages hold addresses and content: the pages answer clients on loopback, or
//! anyone with the admin token (`Authorization: Bearer …`); others get `403`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use mail_parser::MessageParser;

use super::listener::Client;
use super::page::html;
use crate::delivery::capture::{Captured, Store};
use crate::rewrite::statement::escape;

/// Messages the list shows.
const LIST_LIMIT: usize = 200;

#[derive(Clone)]
struct Pages {
    store: Arc<Store>,
    token: Arc<str>,
}

/// The capture pages for `store`, open to loopback and to the admin `token`.
pub fn router(store: Arc<Store>, token: Arc<str>) -> Router {
    let pages = Pages { store, token };
    Router::new()
        .route("/capture", get(list))
        .route("/capture/", get(list))
        .route("/capture/messages.json", get(list_json))
        .route("/capture/{id}", get(show))
        .route("/capture/{id}/html", get(html_part))
        .route("/capture/{id}/raw", get(raw))
        .layer(middleware::from_fn_with_state(pages.clone(), allowed))
        .with_state(pages)
}

/// Loopback clients, or the admin token.
async fn allowed(State(p): State<Pages>, request: Request, next: Next) -> Response {
    let loopback = request
        .extensions()
        .get::<Client>()
        .is_some_and(|c| c.0.is_loopback());
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        // Compared as hashes (constant time), as the admin API does.
        .is_some_and(|t| blake3::hash(t.as_bytes()) == blake3::hash(p.token.as_bytes()));
    if loopback || token {
        next.run(request).await
    } else {
        html(
            StatusCode::FORBIDDEN,
            "Captured mail is private",
            "<p>Open this page from the relay's own machine, or give the admin token.</p>",
        )
    }
}

async fn listed(p: &Pages) -> Result<Vec<Captured>, Response> {
    let store = p.store.clone();
    tokio::task::spawn_blocking(move || store.list(LIST_LIMIT))
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| {
            html(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The capture folder cannot be read",
                "<p>See the relay's log.</p>",
            )
        })
}

async fn list(State(p): State<Pages>) -> Response {
    let all = match listed(&p).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let mut body = format!(
        "<p>Capture mode: mail is kept in <code>{}</code> instead of being delivered \
         (the newest {LIST_LIMIT} here; <a href=\"/capture/messages.json\">JSON</a>).</p>",
        escape(&p.store.dir().display().to_string())
    );
    if all.is_empty() {
        body.push_str("<p>Nothing captured yet.</p>");
    } else {
        body.push_str("<table><tr><th>When</th><th>From</th><th>To</th><th>Subject</th></tr>");
        for c in &all {
            let subject = p
                .store
                .raw(&c.id)
                .and_then(|raw| {
                    MessageParser::default()
                        .parse_headers(&raw[..])
                        .and_then(|m| m.subject().map(str::to_string))
                })
                .unwrap_or_default();
            body.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td><a href=\"/capture/{}\">{}</a></td></tr>",
                when(c.time_ms),
                escape(&c.mail_from),
                escape(&c.rcpt_to.join(", ")),
                c.id,
                escape(if subject.is_empty() {
                    "(no subject)"
                } else {
                    &subject
                })
            ));
        }
        body.push_str("</table>");
    }
    html(StatusCode::OK, "Captured mail", &body)
}

async fn list_json(State(p): State<Pages>) -> Response {
    match listed(&p).await {
        Ok(all) => axum::Json(all).into_response(),
        Err(r) => r,
    }
}

fn when(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn not_found() -> Response {
    html(
        StatusCode::NOT_FOUND,
        "No such message",
        "<p>It may have been pushed out by newer mail. <a href=\"/capture/\">All mail</a></p>",
    )
}

/// `latest` names the newest message (for scripts and quick looks).
fn resolve(p: &Pages, id: String) -> String {
    if id == "latest" {
        p.store
            .list(1)
            .ok()
            .and_then(|l| l.into_iter().next())
            .map_or(id, |c| c.id)
    } else {
        id
    }
}

async fn show(State(p): State<Pages>, Path(id): Path<String>) -> Response {
    let id = resolve(&p, id);
    let (Some(c), Some(raw)) = (p.store.get(&id), p.store.raw(&id)) else {
        return not_found();
    };
    let Some(m) = MessageParser::default().parse(&raw[..]) else {
        return not_found();
    };
    let mut body = format!(
        "<p><a href=\"/capture/\">All mail</a> · <a href=\"/capture/{id}/raw\">Raw</a>{}</p>\
         <table><tr><th>Envelope from</th><td>{}</td></tr><tr><th>Envelope to</th><td>{}</td></tr>\
         <tr><th>Captured</th><td>{} ({} octets, site {})</td></tr></table><h2>Headers</h2><table>",
        if m.body_html(0).is_some() {
            format!(" · <a href=\"/capture/{id}/html\">HTML part</a>")
        } else {
            String::new()
        },
        escape(&c.mail_from),
        escape(&c.rcpt_to.join(", ")),
        when(c.time_ms),
        c.size,
        escape(&c.site),
    );
    for h in m.headers() {
        let value =
            String::from_utf8_lossy(&raw[h.offset_start() as usize..h.offset_end() as usize]);
        body.push_str(&format!(
            "<tr><th>{}</th><td><code>{}</code></td></tr>",
            escape(h.name()),
            escape(value.trim())
        ));
    }
    body.push_str("</table>");
    if let Some(text) = m.body_text(0) {
        body.push_str(&format!("<h2>Text</h2><pre>{}</pre>", escape(&text)));
    }
    let title = m.subject().unwrap_or("(no subject)").to_string();
    html(StatusCode::OK, &title, &body)
}

/// The HTML part, as its own sandboxed document: scripts, forms, plugins and every
/// remote load are off, so viewing it neither runs anything nor tells a tracker.
async fn html_part(State(p): State<Pages>, Path(id): Path<String>) -> Response {
    let id = resolve(&p, id);
    let Some(raw) = p.store.raw(&id) else {
        return not_found();
    };
    let Some(part) = MessageParser::default()
        .parse(&raw[..])
        .and_then(|m| m.body_html(0).map(|h| h.into_owned()))
    else {
        return not_found();
    };
    let mut r = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], part).into_response();
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'",
        ),
    );
    r
}

async fn raw(State(p): State<Pages>, Path(id): Path<String>) -> Response {
    let id = resolve(&p, id);
    match p.store.raw(&id) {
        Some(raw) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], raw).into_response(),
        None => not_found(),
    }
}
