//! The relay's two HTTP listeners.
//!
//! - The **public** one (`[http] listen`) serves what recipients reach from anywhere: the
//!   unsubscribe endpoints ([`unsubscribe`]) and the recipient's page for a sender
//!   ([`preferences`]), the spam report form ([`complaint`]), the
//!   open pixel and click redirect of tracked mail ([`engagement`]) and `GET /healthz`;
//!   the subscription forms and confirmation links ([`subscribe`]); and what the
//!   accounts' own systems call with their keys ([`account`]). With `[http]
//!   certificate` and `private_key` it speaks only HTTPS.
//!   Every answer carries the page headers ([`layers::page_headers`]). It never serves
//!   `/metrics` or the admin API, wherever it is bound.
//! - The **operator** one (`[admin] listen`, loopback by default) serves the admin API
//!   ([`admin`]), Prometheus metrics at `GET /metrics` and `GET /healthz`.
//!
//! Both meet the limits of [`listener`] (connections, time, header size) and of
//! [`layers::bound_body`] (body size and time). This module wires routes to listeners; it
//! must never hold relay state of its own.

pub mod account;
pub mod admin;
pub mod api;
pub mod capture;
pub mod complaint;
pub mod engagement;
pub mod layers;
pub mod listener;
pub mod page;
pub mod preferences;
pub mod subscribe;
pub mod unsubscribe;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, HttpLimits};
use crate::tls::TlsConfig;
use layers::{BodyBound, PageHeaders};
use listener::Listener;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {addr} (HTTP {listener}): {source}")]
    Listen {
        addr: SocketAddr,
        listener: &'static str,
        source: std::io::Error,
    },
    #[error("[http] certificate: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// What the listeners serve.
pub struct Services {
    pub metrics: PrometheusHandle,
    pub unsubscribes: Arc<crate::governance::unsubscribe::Unsubscribes>,
    pub complaints: Option<Arc<crate::governance::complaints::Complaints>>,
    /// Opens and clicks of tracked mail (`/o/`, `/c/`); `None`: not served.
    pub engagements: Option<Arc<crate::governance::engagement::Engagements>>,
    /// The admin API; `None` when the operator listener is off.
    pub admin: Option<admin::Admin>,
    /// The accounts' own API on the public listener; `None`: not served.
    pub account: Option<account::AccountApi>,
    /// Subscription forms and confirmation links; `None`: not served.
    pub subscribe: Option<subscribe::Subscribe>,
    /// Capture mode's folder, listed on the operator listener; `None`: not capturing.
    pub capture: Option<Arc<crate::delivery::capture::Store>>,
}

/// Where the listeners are bound (`None`: off).
pub struct Bound {
    pub public: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

/// Binds both listeners (those the config has) and serves until `stop` is cancelled.
pub async fn start(
    config: &Config,
    services: Services,
    stop: CancellationToken,
) -> Result<Bound, HttpError> {
    let mut bound = Bound {
        public: None,
        admin: None,
    };
    if let Some(addr) = config.http.listen {
        let tls = config.http.tls().then(|| https(config)).transpose()?;
        let app = public_router(
            services.unsubscribes.clone(),
            services.complaints.clone(),
            services.engagements.clone(),
            services.account.clone(),
            services.subscribe.clone(),
            config.http.limits,
            tls.is_some(),
        );
        let listener = Listener {
            name: "public",
            limits: config.http.limits,
            tls,
        };
        bound.public = Some(listen(addr, app, listener, &stop).await?);
    }
    if let (Some(addr), Some(api)) = (config.admin.listen, services.admin) {
        let limits = HttpLimits {
            max_body_size: config.admin.max_body_size,
            ..config.http.limits
        };
        let capture = services
            .capture
            .map(|store| capture::router(store, api.token.clone()));
        let app = admin_router(services.metrics, api, limits);
        let app = match capture {
            Some(pages) => app.merge(pages),
            None => app,
        };
        let listener = Listener {
            name: "admin",
            limits,
            tls: None,
        };
        bound.admin = Some(listen(addr, app, listener, &stop).await?);
    }
    Ok(bound)
}

async fn listen(
    addr: SocketAddr,
    app: Router,
    listener: Listener,
    stop: &CancellationToken,
) -> Result<SocketAddr, HttpError> {
    let name = listener.name;
    listener::serve(addr, app, listener, stop.clone())
        .await
        .map_err(|source| HttpError::Listen {
            addr,
            listener: name,
            source,
        })
}

/// The public listener's TLS: the `[http]` certificate, HTTP/1.1 by ALPN.
fn https(config: &Config) -> Result<TlsAcceptor, HttpError> {
    let files = TlsConfig {
        certificate: config.http.certificate.clone(),
        private_key: config.http.private_key.clone(),
    };
    let mut tls = (*crate::tls::server_config(&files, &config.smtp.hostname)?).clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(tls)))
}

/// Unsubscribe endpoints, the report form and `/healthz`, with the page headers; anything
/// else is a 404 page.
pub fn public_router(
    unsubscribes: Arc<crate::governance::unsubscribe::Unsubscribes>,
    complaints: Option<Arc<crate::governance::complaints::Complaints>>,
    engagements: Option<Arc<crate::governance::engagement::Engagements>>,
    account: Option<account::AccountApi>,
    subscribe: Option<subscribe::Subscribe>,
    limits: HttpLimits,
    https: bool,
) -> Router {
    let bound = BodyBound {
        listener: "public",
        max: limits.max_body_size,
        timeout: limits.body_timeout,
        refuse: page_refusal,
    };
    let api_bound = BodyBound {
        max: admin::MAX_BATCH * 300,
        refuse: api::refusal,
        ..bound
    };
    let accounts = account.map_or_else(Router::new, |a| account::router(a, api_bound));
    let pages = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(unsubscribe::router(preferences::Pages {
            unsubscribes,
            subscribe: subscribe.clone(),
        }))
        .merge(complaint::router(complaints))
        .merge(engagement::router(engagements))
        .merge(subscribe::router(subscribe))
        .fallback(|| async {
            page::html(
                StatusCode::NOT_FOUND,
                "Not found",
                "<p>There is nothing at this address.</p>",
            )
        })
        .layer(middleware::from_fn_with_state(bound, layers::bound_body));
    accounts
        .merge(pages)
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(
            PageHeaders::new(page::STYLE, https),
            layers::page_headers,
        ))
}

fn page_refusal(status: StatusCode, why: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Refused");
    page::html(
        status,
        title,
        &format!("<p>{}</p>", crate::rewrite::statement::escape(why)),
    )
}

/// The operator listener's `/healthz`: `ok`, and in a cluster whether this node reaches
/// Redis (a node that does not still serves, on its share of the limits: still 200).
async fn healthz(cluster: Option<Arc<crate::cluster::Cluster>>) -> String {
    let Some(c) = cluster else {
        return "ok\n".to_string();
    };
    match c.share() {
        None => format!("ok\ncluster: node {}, Redis reachable\n", c.node_id()),
        Some(nodes) => format!(
            "ok\ncluster: node {}, Redis unreachable: running on 1/{nodes} of the shared limits\n",
            c.node_id()
        ),
    }
}

/// The admin API, `/metrics` and `/healthz`.
pub fn admin_router(metrics: PrometheusHandle, api: admin::Admin, limits: HttpLimits) -> Router {
    let cluster = api.cluster.clone();
    let bound = BodyBound {
        listener: "admin",
        max: limits.max_body_size,
        timeout: limits.body_timeout,
        refuse: admin::refusal,
    };
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let body = metrics.render();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        body,
                    )
                        .into_response()
                }
            }),
        )
        .route("/healthz", get(move || healthz(cluster.clone())))
        .merge(admin::router(api))
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(bound, layers::bound_body))
        .layer(middleware::from_fn(layers::api_headers))
}
