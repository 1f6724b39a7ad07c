//! An HTTP listener: every connection the server opens carries HTTP/1.1, which is proxied to the
//! local service through a keep-alive pool (spec §11.2). For a plain `http` service requests
//! without a body take the path in [`plain_exchange`](crate::plain_exchange); hyper serves the
//! rest (requests with a body, upgrades, `Expect`, HTTP/1.0, `https` targets).

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::BytesMut;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use piko_http::dialed_upgrade::DialedUpgrade;
use piko_http::error_after_flush::ErrorAfterFlush;
use piko_http::rewound::Rewound;
use piko_http::{
    access_log::{self, RequestRecord},
    body::{Body, full},
    error_response::error_response,
    hop_by_hop::{append_forwarded_for, remove as remove_hop_by_hop, upgrade_protocol},
};
use tokio_util::{
    sync::CancellationToken,
    task::{AbortOnDropHandle, TaskTracker},
};

use crate::{
    AgentMetrics, metrics::RequestMeter, plain_exchange::PlainService, service_pool::ServicePool,
    target::Target,
};

/// Settings of one HTTP listener.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// The local service.
    pub target: Target,
    /// Bounds each request (connect, send, response headers); `Upgrade: websocket` requests are
    /// exempt, as in Piko.
    pub timeout: Duration,
    /// How long idle connections to the local service are kept.
    pub idle_conn_timeout: Duration,
    /// Idle connections kept per host.
    pub max_idle_conns: usize,
    /// TCP keep-alive period of connections to the local service.
    pub keep_alive_timeout: Duration,
    /// TLS towards an `https` target; `None` trusts the system's roots.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The listener's access log (subsystem `proxy.http.access`).
    pub access_log: access_log::Config,
    /// Where the listener's requests are counted, if the agent exposes metrics.
    pub metrics: Option<Arc<AgentMetrics>>,
}

impl HttpConfig {
    /// Defaults of `piko agent http`: 10 s timeout, 90 s idle, 100 idle connections, 30 s TCP
    /// keep-alive.
    pub fn new(target: Target) -> Self {
        Self {
            target,
            timeout: Duration::from_secs(10),
            idle_conn_timeout: Duration::from_secs(90),
            max_idle_conns: 100,
            keep_alive_timeout: Duration::from_secs(30),
            tls: None,
            access_log: access_log::Config {
                subsystem: "proxy.http.access",
                ..Default::default()
            },
            metrics: None,
        }
    }
}

struct Proxy {
    config: HttpConfig,
    endpoint: String,
    /// Keep-alive connections of the request path without hyper, for a plain `http` target.
    plain: Option<ServicePool>,
    client: Client<HttpsConnector<HttpConnector>, Incoming>,
    upgrade_client: Client<HttpsConnector<HttpConnector>, Incoming>,
    tunnels: TaskTracker,
}

/// Serves `listener` until `stop` is cancelled, then drains: the server is told to send nothing
/// new (GoAway) and the requests in flight finish (the caller bounds this with its grace period).
///
/// # Errors
/// The listener failed for good (for example the server refused a reconnect with 401).
pub async fn serve_http(
    mut listener: piko::Listener,
    config: HttpConfig,
    stop: CancellationToken,
) -> Result<(), piko::Error> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(config.timeout));
    connector.set_nodelay(true);
    connector.set_keepalive(Some(config.keep_alive_timeout));
    // `https` URLs get TLS; HTTP/2 is offered to them by ALPN, as Go's transport does.
    connector.enforce_http(false);
    let tls_builder = || match &config.tls {
        Some(tls) => HttpsConnectorBuilder::new().with_tls_config((**tls).clone()),
        None => HttpsConnectorBuilder::new().with_platform_verifier(),
    };
    let pooled = |connector: HttpsConnector<HttpConnector>| {
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.idle_conn_timeout)
            .pool_max_idle_per_host(config.max_idle_conns)
            .build(connector)
    };
    let client = pooled(
        tls_builder()
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(connector.clone()),
    );
    // Upgrades exist only in HTTP/1.1: an https target that would negotiate HTTP/2 by ALPN is
    // asked for HTTP/1.1 for them, as Go's transport does.
    let upgrade_client = pooled(
        tls_builder()
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector),
    );
    let plain = config.target.is_plain().then(|| {
        let (host, port) = config.target.host_and_port();
        ServicePool::new(
            host,
            port,
            config.max_idle_conns,
            config.idle_conn_timeout,
            config.keep_alive_timeout,
        )
    });
    let idle_conn_timeout = config.idle_conn_timeout;
    let proxy = Arc::new(Proxy {
        config,
        endpoint: listener.endpoint_id().to_owned(),
        plain,
        client,
        upgrade_client,
        tunnels: TaskTracker::new(),
    });
    // Idle connections are closed within half their idle timeout after it passes; by a task of
    // its own, so that the accept loop is never interrupted.
    let _expire_idle = proxy.plain.is_some().then(|| {
        let proxy = Arc::downgrade(&proxy);
        AbortOnDropHandle::new(tokio::spawn(async move {
            let mut ticks =
                tokio::time::interval((idle_conn_timeout / 2).max(Duration::from_millis(100)));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(proxy) = proxy.upgrade() else {
                    return;
                };
                if let Some(pool) = &proxy.plain {
                    pool.close_expired();
                }
            }
        }))
    });
    let connections = TaskTracker::new();
    tracing::info!(subsystem = "proxy.http", endpoint_id = %listener.endpoint_id(), "starting reverse proxy");
    let result = loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(stream) => stream,
                Err(piko::Error::Closed) => break Ok(()),
                Err(err) => break Err(err),
            },
        };
        let proxy = proxy.clone();
        let server_addr = listener.server_addr();
        connections.spawn(async move {
            let stream = match &proxy.plain {
                Some(pool) => {
                    let plain = PlainService {
                        config: &proxy.config,
                        endpoint: &proxy.endpoint,
                        pool,
                        server_addr,
                    };
                    match plain.serve(stream).await {
                        Some(rest) => rest,
                        None => return,
                    }
                }
                None => Rewound::new(BytesMut::new(), stream),
            };
            let service = hyper::service::service_fn(move |request| {
                let proxy = proxy.clone();
                async move { Ok::<_, Infallible>(proxy.handle(request, server_addr).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(err) = connection.await {
                tracing::debug!(subsystem = "proxy.http", error = %err, "stream ended with an error");
            }
        });
    };
    // Drain: no new streams; in-flight exchanges (and upgraded tunnels) finish.
    listener.close();
    connections.close();
    connections.wait().await;
    proxy.tunnels.close();
    proxy.tunnels.wait().await;
    // The responses are written to the session, not yet to the socket: flush before returning,
    // since the caller may exit the process next.
    listener.finish().await;
    result
}

impl Proxy {
    async fn handle(
        &self,
        request: Request<Incoming>,
        server_addr: Option<SocketAddr>,
    ) -> Response<Body> {
        let record = RequestRecord::start(&self.config.access_log, &request);
        let meter = self
            .config
            .metrics
            .as_ref()
            .map(|metrics| RequestMeter::start(metrics.clone(), &self.endpoint, &request));
        let response = self.forward(request, server_addr).await;
        let response = match meter {
            Some(meter) => meter.finish(response),
            None => response,
        };
        match record {
            Some(record) => record.finish(&self.config.access_log, response),
            None => response,
        }
    }

    async fn forward(
        &self,
        mut request: Request<Incoming>,
        server_addr: Option<SocketAddr>,
    ) -> Response<Body> {
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let upgrade = upgrade_protocol(request.headers());
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
        let timeout = match upgrade.as_deref() {
            Some("websocket") => None,
            _ => Some(self.config.timeout),
        };
        *request.uri_mut() = self.config.target.url_for(&path);
        let headers = request.headers_mut();
        remove_hop_by_hop(headers);
        // The service sees `client, server`: the Piko server (or its load balancer) is the hop
        // the agent received the request from.
        if let Some(server) = server_addr {
            append_forwarded_for(headers, server.ip());
        }
        if let Some(protocol) = upgrade
            .as_deref()
            .and_then(|p| HeaderValue::from_str(p).ok())
        {
            headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            headers.insert(header::UPGRADE, protocol);
        }
        let client = if upgrade.is_some() {
            &self.upgrade_client
        } else {
            &self.client
        };
        let sent = client.request(request);
        let result = match timeout {
            Some(limit) => match tokio::time::timeout(limit, sent).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(subsystem = "proxy.http", error = "timeout", "proxy request");
                    return error(StatusCode::GATEWAY_TIMEOUT, "upstream timeout");
                }
            },
            None => sent.await,
        };
        let mut response = match result {
            Ok(response) => response,
            Err(err) => {
                tracing::warn!(subsystem = "proxy.http", error = %err, "proxy request");
                return error(StatusCode::BAD_GATEWAY, "upstream unreachable");
            }
        };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_upgrade) = client_upgrade {
                let service_upgrade = hyper::upgrade::on(&mut response);
                self.tunnels.spawn(async move {
                    let (Ok(server), Ok(service)) = tokio::join!(client_upgrade, service_upgrade)
                    else {
                        return;
                    };
                    let mut server = TokioIo::new(server);
                    match DialedUpgrade::unwrap(service) {
                        Ok(mut service) => {
                            if piko_protocol::relay(&mut server, &mut service)
                                .await
                                .is_err()
                            {
                                // A failure on either side reaches the other as a reset: the
                                // server's stream is reset when dropped unfinished.
                                drop(server);
                                piko_protocol::reset_after_delivery(service.tcp()).await;
                            }
                        }
                        // Not a connection of ours: it can only be closed.
                        Err(service) => {
                            let _ =
                                piko_protocol::relay(&mut server, &mut TokioIo::new(service)).await;
                        }
                    }
                });
            }
        } else {
            remove_hop_by_hop(response.headers_mut());
        }
        // A service that fails mid-body (a reset): what it sent before reaches the server first.
        response.map(|body| ErrorAfterFlush::new(body).map_err(Into::into).boxed())
    }
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    error_response(status, message).map(full)
}
