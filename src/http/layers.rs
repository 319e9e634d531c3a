//! Middleware both listeners put around their routes: the request body read in full
//! within `max_body_size` and `body_timeout` before any handler sees it (`413`, `408`,
//! then the connection closes), and the response headers each listener promises — on the
//! public one the page headers (a Content-Security-Policy that allows nothing but the
//! pages' own style and forms, no framing, no referrer: the token is in the path, no
//! sniffing, no caching, never a cookie), on the operator one `nosniff` and no caching.
//!
//! Nothing here decides what a request may do; it only bounds what it may cost.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::{BodyExt, LengthLimitError, Limited};

/// How a listener bounds request bodies, and how it words a refusal (HTML or JSON).
#[derive(Clone, Copy)]
pub struct BodyBound {
    /// The `listener` label of the HTTP metrics.
    pub listener: &'static str,
    pub max: usize,
    pub timeout: Duration,
    pub refuse: fn(StatusCode, &str) -> Response,
}

/// Reads the body in full (at most `max` octets, within `timeout`) and hands the handler
/// the bytes; refuses and closes the connection otherwise.
pub async fn bound_body(State(b): State<BodyBound>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let too_big = || {
        closing((b.refuse)(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("The request body is larger than {} octets.", b.max),
        ))
    };
    if declared.is_some_and(|n| n > b.max as u64) {
        return too_big();
    }
    let bytes = match tokio::time::timeout(b.timeout, Limited::new(body, b.max).collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => return too_big(),
        Ok(Err(_)) => {
            return closing((b.refuse)(
                StatusCode::BAD_REQUEST,
                "The request body could not be read.",
            ));
        }
        Err(_) => {
            crate::metrics::http_timeout(b.listener, "body");
            return closing((b.refuse)(
                StatusCode::REQUEST_TIMEOUT,
                "The request body did not arrive in time.",
            ));
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// A refusal after which the connection is not reused (its body may be half read).
fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The headers of every answer of the public listener.
#[derive(Clone)]
pub struct PageHeaders {
    csp: HeaderValue,
    /// Sent when the listener speaks HTTPS itself.
    hsts: bool,
}

impl PageHeaders {
    /// `style` is the pages' one inline style sheet: allowed by its hash, nothing else.
    pub fn new(style: &str, hsts: bool) -> PageHeaders {
        PageHeaders {
            csp: content_policy(style, None),
            hsts,
        }
    }
}

/// The Content-Security-Policy of a page whose one inline style sheet is `style`, and
/// that may show an image from `image_origin` (an `https://host` origin, checked by the
/// policy file): nothing else loads, no script runs, forms post only to the listener.
/// A page that sets its own (a sender's branded page) keeps it; others get the default.
pub fn content_policy(style: &str, image_origin: Option<&str>) -> HeaderValue {
    let digest = ring::digest::digest(&ring::digest::SHA256, style.as_bytes());
    let hash = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, digest.as_ref());
    let img = image_origin.map_or(String::new(), |o| format!("img-src {o}; "));
    let csp = format!(
        "default-src 'none'; style-src 'sha256-{hash}'; {img}form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'"
    );
    HeaderValue::from_str(&csp).unwrap_or_else(|_| content_policy(style, None))
}

pub async fn page_headers(State(h): State<PageHeaders>, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.remove(header::SET_COOKIE);
    if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        headers.insert(header::CONTENT_SECURITY_POLICY, h.csp.clone());
    }
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if h.hsts {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    response
}

/// The headers of every answer of the operator listener.
pub async fn api_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.remove(header::SET_COOKIE);
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
