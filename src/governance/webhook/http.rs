//! The webhook's HTTP client: one POST over plain TCP (loopback only) or TLS verified
//! against the Mozilla roots, with hyper's HTTP/1 connection driven in place, within
//! [`super::ATTEMPT_TIMEOUT`].

use super::*;

/// POSTs `body` as JSON to `url` with `headers`; the answer's status.
pub(super) async fn post(
    url: &str,
    tls: Arc<ClientConfig>,
    headers: &[(&'static str, String)],
    body: Vec<u8>,
) -> Result<StatusCode, String> {
    let target = Target::parse(url).map_err(|e| format!("{url:?} {e}"))?;
    let addrs = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", target.host))?;
    let mut tcp = None;
    let mut last_error = format!("{} has no address", target.host);
    for addr in addrs {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last_error = format!("cannot connect to {addr}: {e}"),
        }
    }
    let tcp = tcp.ok_or(last_error)?;
    let mut request = Request::post(target.path.as_str())
        .header(HOST, target.authority.as_str())
        .header(CONTENT_TYPE, "application/json")
        .header(
            USER_AGENT,
            concat!("optin-relay/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    if target.https {
        let name = ServerName::try_from(target.host.clone())
            .map_err(|_| format!("{:?} is not a valid TLS server name", target.host))?;
        let stream = TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {}: {e}", target.host))?;
        exchange(stream, request, &target.host).await
    } else {
        exchange(tcp, request, &target.host).await
    }
}

/// Sends one request over `io` and waits for the response head.
async fn exchange<S>(io: S, request: Request<Full<Bytes>>, host: &str) -> Result<StatusCode, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP with {host}: {e}"))?;
    let exchange = async {
        sender
            .send_request(request)
            .await
            .map(|r| r.status())
            .map_err(|e| format!("HTTP with {host}: {e}"))
    };
    // The connection future does the I/O; driven here, so nothing outlives the attempt.
    let (mut exchange, mut conn) = (pin!(exchange), pin!(conn));
    tokio::select! {
        result = &mut exchange => result,
        done = &mut conn => match done {
            Ok(()) => exchange.await,
            Err(e) => Err(format!("HTTP with {host}: {e}")),
        },
    }
}
