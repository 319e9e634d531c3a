//! The frame every page of the public listener is drawn in: the one inline style sheet,
//! a plain page ([`html`]) or one dressed in a sender's logo and colour ([`branded`], with
//! the Content-Security-Policy that allows exactly those), and the pieces the
//! recipients' pages share (the names they know a list and sender by, the answers for a
//! bad link and a failed save).

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::policy::Policy;
use crate::policy::sender::Sender;
use crate::rewrite::statement::escape;

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

/// The list's and the sender's names for a page about `list` of `account`: the names
/// recipients know them by (the list's `name`, the account's `display_name`, never the
/// operator's description), else the ids.
pub(super) fn names(policy: &Policy, account: &str, list: &str) -> (String, String) {
    let acc = policy.account(account);
    let list_name = acc
        .and_then(|a| a.list(list))
        .map_or_else(|| list.to_string(), |l| l.name.clone());
    let sender = acc.map_or_else(|| account.to_string(), |a| a.sender.display_name.clone());
    (list_name, sender)
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
