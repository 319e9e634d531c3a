//! A minimal HTTP/1.1 client for the relay's HTTP listeners: form posts for the public
//! pages, JSON with a bearer token for the admin API, and samples of `GET /metrics`.

use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::mx::Stream;

const FORM: &str = "application/x-www-form-urlencoded";
const JSON: &str = "application/json";

/// An HTTP answer: status, header section (as sent, and parsed with lower-cased names)
/// and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    /// Every value of header `name`.
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as JSON, or as a JSON string when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| Value::String(self.body.clone()))
    }
}

/// One request with a form body to `addr`: status and body.
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let answer = request(addr, method, path, body).await;
    (answer.status, answer.body)
}

/// [`http`] with the admin API's bearer token (a body starting with `{` goes as JSON).
pub async fn http_as(
    addr: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    let kind = if token.is_some() && body.starts_with('{') {
        JSON
    } else {
        FORM
    };
    let stream = TcpStream::connect(addr).await.unwrap();
    let answer = request_on(stream, token, kind, method, path, body).await;
    (answer.status, answer.body)
}

/// One request with a form body to `addr`; the whole answer (status, headers, body).
pub async fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> Answer {
    http_on(TcpStream::connect(addr).await.unwrap(), method, path, body).await
}

/// One request with a form body over any stream (TLS too); the whole answer.
pub async fn http_on<S: Stream>(s: S, method: &str, path: &str, body: &str) -> Answer {
    request_on(s, None, FORM, method, path, body).await
}

/// One request (`Connection: close`) over `s`; the whole answer.
async fn request_on<S: Stream>(
    mut s: S,
    token: Option<&str>,
    kind: &str,
    method: &str,
    path: &str,
    body: &str,
) -> Answer {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: relay.test\r\nConnection: close\r\n{auth}Content-Type: {kind}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    // A TLS peer may close without close_notify after the answer: keep what arrived.
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut s, &mut resp).await;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        head: head.to_string(),
        headers,
        body: body.to_string(),
    }
}

/// The admin API of a running relay: JSON requests with its bearer token.
pub struct Admin {
    pub addr: SocketAddr,
    pub token: String,
}

impl Admin {
    pub fn new(addr: SocketAddr, token: &str) -> Admin {
        Admin {
            addr,
            token: token.to_string(),
        }
    }

    /// One request with `token` (none: without one) and a JSON `body`; the whole answer.
    pub async fn call_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Answer {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let stream = TcpStream::connect(self.addr).await.unwrap();
        request_on(stream, token, JSON, method, path, &body).await
    }

    /// One request with this API's token: the status and the body as JSON.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let answer = self.call_as(Some(&self.token), method, path, body).await;
        (answer.status, answer.json())
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call("POST", path, Some(body)).await
    }

    /// A request with this API's token and a body of content type `kind`; the whole answer.
    pub async fn send_raw(&self, method: &str, path: &str, kind: &str, body: &str) -> Answer {
        let stream = TcpStream::connect(self.addr).await.unwrap();
        request_on(stream, Some(&self.token), kind, method, path, body).await
    }
}

/// The value of `series` (a name with its labels, as rendered) in an exposition.
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The value of `series` in `GET /metrics` on the operator listener at `admin` (0 when
/// absent).
pub async fn metric(admin: SocketAddr, series: &str) -> f64 {
    let (_, text) = http(admin, "GET", "/metrics", "").await;
    sample(&text, series).unwrap_or(0.0)
}
