//! One HTTP listener and the limits every client of it must meet: connections at once
//! (overall, and per client: an IPv4 address or an IPv6 /64), the TLS handshake and the
//! request head within `header_timeout`, the head within `max_header_size`, and no
//! silence longer than `idle_timeout` while no request is being answered (a kept-alive
//! connection, a client that stops reading its answer). The body's size and time are
//! bounded one layer up ([`super::layers`]), where the request is known.
//!
//! It serves HTTP/1.1 with hyper's own connection (`http1::Builder` with a timer: the
//! server `axum::serve` builds has no timer, so its header timeout is off), over plain TCP
//! or, with a certificate, only over TLS (rustls). It knows nothing of routes and never
//! buffers more than the limits allow; a connection over a cap is refused at once (plain
//! HTTP: a `503`; TLS: closed, before any handshake work).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::HttpLimits;

/// Pending connections the kernel queues for us.
const BACKLOG: u32 = 1024;

/// What is said to a connection over a cap (plain HTTP only), and how long we try.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
    Content-Length: 37\r\nRetry-After: 10\r\nConnection: close\r\n\r\n\
    Too many connections; try again soon\n";
const REFUSAL_TIME: Duration = Duration::from_secs(1);

/// One listener's settings.
/// The address of the client a request came from (in the request's extensions).
#[derive(Debug, Clone, Copy)]
pub struct Client(pub std::net::IpAddr);

#[derive(Clone)]
pub struct Listener {
    /// `public` or `admin`: the `listener` label of the HTTP metrics.
    pub name: &'static str,
    pub limits: HttpLimits,
    /// Speak only HTTPS.
    pub tls: Option<TlsAcceptor>,
}

/// Binds `addr` and serves `app` until `stop` is cancelled; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    app: Router,
    listener: Listener,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // A restart right after a crash must not fail on connections in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let tcp = socket.listen(BACKLOG)?;
    let local = tcp.local_addr()?;
    tracing::info!(addr = %local, listener = listener.name, tls = listener.tls.is_some(), "HTTP listening");
    tokio::spawn(accept(tcp, app, listener, stop));
    Ok(local)
}

async fn accept(tcp: TcpListener, app: Router, listener: Listener, stop: CancellationToken) {
    let slots = Arc::new(Slots::new(
        listener.limits.max_connections,
        listener.limits.max_connections_per_ip,
    ));
    loop {
        let (stream, remote) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = tcp.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Usually EMFILE: back off briefly instead of spinning.
                    tracing::warn!(error = %e, listener = listener.name, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let slot = match slots.acquire(remote.ip()) {
            Ok(slot) => slot,
            Err(reason) => {
                crate::metrics::http_connection_refused(listener.name, reason);
                if listener.tls.is_none() {
                    tokio::spawn(refuse(stream));
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (app, listener, stop) = (app.clone(), listener.clone(), stop.clone());
        tokio::spawn(async move {
            let _slot = slot;
            match &listener.tls {
                None => connection(stream, app, &listener, stop, remote).await,
                Some(tls) => {
                    let handshake = tls.accept(stream);
                    match tokio::time::timeout(listener.limits.header_timeout, handshake).await {
                        Ok(Ok(s)) => connection(s, app, &listener, stop, remote).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, error = %e, "HTTPS handshake failed");
                        }
                        Err(_) => crate::metrics::http_timeout(listener.name, "tls"),
                    }
                }
            }
        });
    }
}

async fn refuse(mut stream: TcpStream) {
    let _ = tokio::time::timeout(REFUSAL_TIME, async {
        let _ = stream.write_all(REFUSAL).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Serves one connection until the client is done, too slow, or the listener stops.
async fn connection<S>(
    stream: S,
    app: Router,
    listener: &Listener,
    stop: CancellationToken,
    remote: SocketAddr,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = listener.limits;
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let routes = TowerToHyperService::new(app);
    let answering = activity.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        request.extensions_mut().insert(Client(remote.ip()));
        let busy = Busy::enter(&answering);
        let answer = hyper::service::Service::call(&routes, request);
        async move {
            let response = answer.await;
            drop(busy);
            response
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(limits.max_header_size)
        .max_buf_size(limits.max_header_size.max(8192))
        .keep_alive(true);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        // While a request is being answered the handler may take its time; otherwise the
        // connection must not stay silent longer than idle_timeout.
        let wake = match activity.busy() {
            0 => activity.last() + limits.idle_timeout,
            _ => Instant::now() + limits.idle_timeout,
        };
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    if e.is_timeout() {
                        crate::metrics::http_timeout(listener.name, "header");
                    } else {
                        tracing::debug!(error = %e, listener = listener.name, "HTTP connection ended with an error");
                    }
                }
                return;
            }
            () = stop.cancelled(), if !stopping => {
                // Finishes a request under way, then closes.
                conn.as_mut().graceful_shutdown();
                stopping = true;
            }
            () = tokio::time::sleep_until(wake) => {
                if activity.busy() == 0 && activity.last() + limits.idle_timeout <= Instant::now() {
                    crate::metrics::http_timeout(listener.name, "idle");
                    return;
                }
            }
        }
    }
}

/// When bytes last moved on a connection, and how many requests are being answered.
struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last_ms: AtomicU64,
    busy: AtomicUsize,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    fn busy(&self) -> usize {
        self.busy.load(Ordering::Acquire)
    }
}

/// A request being answered; the idle clock restarts when it is done.
struct Busy(Arc<Activity>);

impl Busy {
    fn enter(activity: &Arc<Activity>) -> Busy {
        activity.busy.fetch_add(1, Ordering::AcqRel);
        Busy(activity.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A stream that notes when bytes move through it.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The client a connection is counted against: an IPv4 address, or the /64 of an IPv6
/// one (a subscriber usually has a whole /64, so counting addresses would not limit).
fn client(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Connections open, overall and per client.
struct Slots {
    max_total: usize,
    max_per_client: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One open connection's place; given back when dropped.
struct Slot {
    slots: Arc<Slots>,
    client: IpAddr,
}

impl Slots {
    fn new(max_total: usize, max_per_client: usize) -> Slots {
        Slots {
            max_total,
            max_per_client,
            open: Mutex::new((0, HashMap::new())),
        }
    }

    /// A place for a connection from `ip`, or why not (`total`, `per_ip`).
    fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, &'static str> {
        let client = client(ip);
        let mut open = self.open.lock().expect("slots lock");
        if open.0 >= self.max_total {
            return Err("total");
        }
        let mine = open.1.entry(client).or_insert(0);
        if *mine >= self.max_per_client {
            return Err("per_ip");
        }
        *mine += 1;
        open.0 += 1;
        Ok(Slot {
            slots: self.clone(),
            client,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().expect("slots lock");
        open.0 -= 1;
        if let Some(n) = open.1.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_limit_overall_and_per_client() {
        let s = Arc::new(Slots::new(3, 2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = s.acquire(a).unwrap();
        let _second = s.acquire(a).unwrap();
        assert_eq!(s.acquire(a).err(), Some("per_ip"));
        let _third = s.acquire(b).unwrap();
        assert_eq!(s.acquire(b).err(), Some("total"));
        drop(first);
        assert!(s.acquire(a).is_ok());
        assert!(s.open.lock().unwrap().1.len() <= 2);
    }

    #[test]
    fn an_ipv6_client_is_its_slash_64() {
        let s = Arc::new(Slots::new(10, 2));
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let other: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let elsewhere: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _a = s.acquire(one).unwrap();
        let _b = s.acquire(other).unwrap();
        assert_eq!(s.acquire(one).err(), Some("per_ip"));
        assert!(s.acquire(elsewhere).is_ok());
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }
}
