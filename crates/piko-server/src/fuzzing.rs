//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`); not part of the API.
//!
//! [`ProxyHarness`] puts the proxy port's request handler behind a real HTTP/1.1 connection over
//! an in-memory pipe, with an in-memory upstream whose agent checks every request it is relayed;
//! [`head_routing`] runs the routing rules on a request head alone.
//!
//! (The gossip seal's fuzz target compiles `cluster/gossip_seal.rs` itself: the module is
//! private to `cluster`, and a second copy here would be the same file loaded twice.)

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Method, Request, Response, header};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use piko_protocol::wire::{FORWARD_HEADER, TCP_PATH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::task::TaskTracker;

use crate::{
    auth::{self, AuthConfig, PIKO_AUTHORIZATION, Tenants, Verifier},
    cluster::{ForwardAuth, RemoteEndpoints, SIGNATURE_HEADER},
    endpoint_load::EndpointLoad,
    forward::Forwarder,
    metrics::Metrics,
    proxy::{self, Handler},
    tcp_route::{self, Route},
    upstreams::Upstreams,
};

// ---- the proxy port -----------------------------------------------------------------------------

/// The endpoint the harness's upstream serves.
pub const ENDPOINT: &str = "e";
/// The tenant configured on the harness (its endpoint `e` is routed as `t/e`).
pub const TENANT: &str = "t";
/// The proxy port's HMAC key when [`ProxySetup::auth`] is on.
pub const PROXY_SECRET: &str = "fuzz-proxy-secret";
/// The tenant's HMAC key.
pub const TENANT_SECRET: &str = "fuzz-tenant-secret";

/// Largest response read back from the proxy: more is a bug for the harness's small replies.
const MAX_RESPONSE: usize = 1 << 20;

/// Which proxy configuration a request meets.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProxySetup {
    /// Tokens required (HMAC, [`PROXY_SECRET`]).
    pub auth: bool,
    /// One request in flight per endpoint.
    pub endpoint_limit: bool,
}

/// Proxy handlers, one per [`ProxySetup`], sharing a routing table.
#[derive(Debug)]
pub struct ProxyHarness {
    runtime: tokio::runtime::Runtime,
    handlers: [Arc<Handler>; 4],
    upstreams: Arc<Upstreams>,
}

impl Default for ProxyHarness {
    fn default() -> Self {
        Self::new()
    }
}

impl ProxyHarness {
    /// Builds the handlers (and a current-thread runtime to run them on).
    ///
    /// # Panics
    /// The runtime or a key cannot be made.
    pub fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
        let hmac_verifier = |secret: &str| {
            let config = AuthConfig {
                hmac_secret_key: Some(secret.to_owned()),
                ..AuthConfig::default()
            };
            Arc::new(
                Verifier::new(&config)
                    .expect("an HMAC key")
                    .expect("auth on"),
            )
        };
        let tenants = Arc::new(
            Tenants::new(vec![(TENANT.to_owned(), hmac_verifier(TENANT_SECRET))])
                .expect("a valid tenant"),
        );
        let upstreams = Arc::new(Upstreams::default());
        let metrics = Arc::new(Metrics::new());
        let handler = |setup: ProxySetup| {
            // The forwarder builds a TLS client: inside the runtime, as the server does.
            let _entered = runtime.enter();
            Arc::new(Handler {
                config: proxy::Config {
                    // An upstream that never answers costs the fuzzer this much per input.
                    timeout: Some(Duration::from_secs(2)),
                    auth: setup.auth.then(|| hmac_verifier(PROXY_SECRET)),
                    tenants: tenants.clone(),
                    max_requests_per_endpoint: setup.endpoint_limit.then_some(1),
                    ..proxy::Config::default()
                },
                upstreams: upstreams.clone(),
                metrics: metrics.clone(),
                exchanges: TaskTracker::new(),
                remotes: Arc::new(RemoteEndpoints::default()),
                forwarder: Forwarder::new(None),
                auth: Arc::new(
                    ForwardAuth::new("fuzz-node", Some("fuzz-cluster")).expect("a static key"),
                ),
                endpoint_load: setup.endpoint_limit.then(|| EndpointLoad::new(1)),
            })
        };
        let handlers = [(false, false), (false, true), (true, false), (true, true)].map(
            |(auth, endpoint_limit)| {
                handler(ProxySetup {
                    auth,
                    endpoint_limit,
                })
            },
        );
        Self {
            runtime,
            handlers,
            upstreams,
        }
    }

    /// Sends `request` (raw bytes, as a client writes them; its write side is then closed) to the
    /// proxy port and returns what the client read back. An upstream serves `e` and `t/e`; its
    /// agent panics if a relayed request breaks the proxy's rewriting rules.
    ///
    /// # Panics
    /// The exchange does not finish in 10 s, the response is larger than 1 MiB, or a relayed
    /// request is wrong.
    pub fn exchange(&self, setup: ProxySetup, request: &[u8]) -> Vec<u8> {
        let handler =
            self.handlers[usize::from(setup.auth) * 2 + usize::from(setup.endpoint_limit)].clone();
        self.runtime.block_on(async {
            let (server_io, agent_io) = tokio::io::duplex(256 * 1024);
            let session = piko_mux::Session::server(server_io, piko_mux::Config::default());
            let agent = piko_mux::Session::client(agent_io, piko_mux::Config::default());
            let agent_task = tokio::spawn(serve_agent(agent.clone()));
            let registrations = [
                ENDPOINT.to_owned(),
                auth::routed_name(Some(TENANT), ENDPOINT),
            ]
            .map(|name| {
                let id = self.upstreams.add(&name, session.clone());
                (name, id)
            });

            let (mut client, proxy_io) = tokio::io::duplex(64 * 1024);
            let peer: SocketAddr = "198.51.100.7:40000".parse().expect("an address");
            let connection = tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler.handle(request, peer).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(proxy_io), service)
                    .with_upgrades()
                    .await;
            });
            let exchange = async {
                // The proxy may answer (and close) before it has read everything.
                let _ = client.write_all(request).await;
                let _ = client.shutdown().await;
                let mut response = Vec::new();
                let _ = (&mut client)
                    .take(MAX_RESPONSE as u64 + 1)
                    .read_to_end(&mut response)
                    .await;
                response
            };
            let response = tokio::time::timeout(Duration::from_secs(10), exchange)
                .await
                .expect("the exchange finishes");
            assert!(response.len() <= MAX_RESPONSE, "the response never ends");
            drop(client);
            let _ = connection.await;

            for (name, id) in registrations {
                self.upstreams.remove(&name, id);
            }
            session.close();
            agent.close();
            let _ = agent_task.await;
            response
        })
    }
}

/// The agent: answers every relayed request with a small `200`, after checking that the proxy
/// rewrote it as Piko does.
async fn serve_agent(session: piko_mux::Session) {
    let connections = TaskTracker::new();
    while let Ok(stream) = session.accept().await {
        connections.spawn(async move {
            let service = service_fn(|request: Request<Incoming>| async move {
                check_relayed(&request);
                // Drained so that the proxy's body relay runs too.
                let _ = request.into_body().collect().await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
    connections.close();
    connections.wait().await;
}

/// What an upstream must never receive (spec §3.5).
fn check_relayed<B>(request: &Request<B>) {
    let headers = request.headers();
    assert_eq!(
        headers.get(FORWARD_HEADER).map(|v| v.as_bytes()),
        Some(&b"true"[..]),
        "a relayed request is marked"
    );
    for name in [
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        PIKO_AUTHORIZATION,
        SIGNATURE_HEADER,
    ] {
        assert!(!headers.contains_key(name), "{name} was relayed");
    }
    let connection: Vec<_> = headers.get_all(header::CONNECTION).iter().collect();
    assert!(
        connection == ["close"] || connection == ["Upgrade"],
        "relayed Connection: {connection:?}"
    );
    assert!(
        headers
            .get_all(header::TE)
            .iter()
            .all(|te| te.as_bytes() == b"trailers"),
        "relayed TE: {:?}",
        headers.get(header::TE)
    );
    let target = request.uri().to_string();
    assert!(
        target.starts_with('/') || target == "*",
        "relayed target {target:?} is not in origin form"
    );
}

/// What the proxy port's routing makes of a request head: the TCP route's decision, the tenant
/// the request names and the name its endpoint is routed by.
#[derive(Debug, PartialEq, Eq)]
pub struct HeadRouting {
    /// `Some(endpoint)` for a tunnel request.
    pub tunnel: Option<String>,
    /// `Some(location)` for the TCP route with a trailing slash.
    pub redirect: Option<String>,
    /// The tenant the request names, if any.
    pub tenant: Option<String>,
}

/// Runs the proxy port's routing rules on `request`'s head.
///
/// # Panics
/// A routed name that does not start with its tenant, or a tunnel or redirect for a request
/// that is not a `GET` on the TCP route.
pub fn head_routing<B>(request: &Request<B>) -> HeadRouting {
    let path = request.uri().path();
    let (tunnel, redirect) = match tcp_route::route(request.method(), path) {
        Route::Tunnel(endpoint) => (Some(endpoint), None),
        Route::Redirect(location) => (None, Some(location)),
        Route::Http => (None, None),
    };
    if tunnel.is_some() || redirect.is_some() {
        assert!(
            request.method() == Method::GET && path.starts_with(TCP_PATH),
            "{} {path} routed as a tunnel",
            request.method()
        );
    }
    if let Some(location) = &redirect {
        assert_eq!(
            format!("{location}/"),
            path,
            "a redirect drops the slash only"
        );
    }
    let tenant = auth::requested_tenant(request.headers()).map(str::to_owned);
    if let (Some(tenant), Some(endpoint)) = (&tenant, &tunnel) {
        let routed = auth::routed_name(Some(tenant), endpoint);
        assert!(
            routed.starts_with(tenant.as_str()) && routed.ends_with(endpoint.as_str()),
            "routed name {routed:?}"
        );
    }
    HeadRouting {
        tunnel,
        redirect,
        tenant,
    }
}
