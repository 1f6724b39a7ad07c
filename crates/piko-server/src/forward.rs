//! Relaying a request to another node that holds its endpoint's upstreams (spec §6.6): one hop,
//! to that node's proxy port, over pooled keep-alive connections (Piko dials a new connection per
//! request). The receiving node sees `x-piko-forward` and serves the request from its own
//! upstreams only, so a request never travels further.

use std::time::Duration;

use http::{HeaderValue, Request, Response, Uri, header};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

use crate::{
    serve::{Body, BoxError},
    tls::PeerTls,
};

/// Marks the reply of a node that was forwarded a request but holds no upstream for it any more
/// (its routing table moved on before the gossip did), so that the sender may try another node.
pub(crate) const NO_UPSTREAM_HEADER: &str = "x-piko-no-upstream";

/// How long connecting to another node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Idle connections to other nodes are kept this long.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// The client side of node-to-node forwarding.
#[derive(Debug)]
pub(crate) struct Forwarder {
    client: Client<HttpsConnector<HttpConnector>, Body>,
    /// `https` when the nodes' ports serve TLS.
    scheme: &'static str,
}

impl Forwarder {
    /// A forwarder to plain ports, or to TLS ones with `tls`.
    pub(crate) fn new(tls: Option<&PeerTls>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        // TLS is layered on top for `https` URLs.
        connector.enforce_http(false);
        // A node that crashed a moment ago is still listed: fail fast rather than wait out
        // the proxy timeout (or forever, with none).
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_keepalive(Some(Duration::from_secs(15)));
        // `https_or_http` needs rustls settings even when every URL is `http`.
        let config = tls.map_or_else(unused_tls_config, |tls| (*tls.config).clone());
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http();
        let builder = match tls.and_then(|tls| tls.server_name.clone()) {
            Some(name) => {
                builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
            }
            None => builder,
        }
        .enable_http1();
        // The connect timeout bounds TCP only: the TLS handshake is bounded by the caller's
        // request timeout.
        Self {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(POOL_IDLE)
                .build(builder.wrap_connector(connector)),
            scheme: if tls.is_some() { "https" } else { "http" },
        }
    }

    /// Sends `request` (already rewritten for an upstream) to the proxy port at `proxy_addr`.
    pub(crate) async fn send(
        &self,
        proxy_addr: &str,
        mut request: Request<Body>,
    ) -> Result<Response<Incoming>, SendError> {
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        *request.uri_mut() = format!("{}://{proxy_addr}{path}", self.scheme)
            .parse::<Uri>()
            .map_err(|err| SendError::Other(err.into()))?;
        // The rewrite asked for `Connection: close` (one request per upstream stream); between
        // nodes the connection is worth keeping. (An upgrade keeps its `Connection: Upgrade`.)
        if request
            .headers()
            .get(header::CONNECTION)
            .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"close"))
        {
            request.headers_mut().remove(header::CONNECTION);
        }
        self.client.request(request).await.map_err(|err| {
            if err.is_connect() {
                SendError::Connect(err.into())
            } else if closed_unanswered(&err) {
                SendError::Unanswered(err.into())
            } else {
                SendError::Other(err.into())
            }
        })
    }
}

/// Client settings for a forwarder that never speaks TLS.
fn unused_tls_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("the default provider supports the default versions")
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth()
}

/// Why a relayed request got no response.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The node could not be reached: nothing was sent, so the request may go elsewhere (the
    /// node stopped, or crashed and is not known as such yet).
    Connect(BoxError),
    /// The connection closed before a response began (a node stopping as a kept-alive
    /// connection was reused): the request may or may not have been served.
    Unanswered(BoxError),
    /// Anything else.
    Other(BoxError),
}

/// Whether `err` says the connection ended before any response to the request.
fn closed_unanswered(err: &hyper_util::client::legacy::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(hyper) = cause.downcast_ref::<hyper::Error>() {
            return hyper.is_incomplete_message() || hyper.is_canceled();
        }
        source = cause.source();
    }
    false
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let err = match self {
            Self::Connect(err) => {
                f.write_str("connect: ")?;
                err
            }
            Self::Unanswered(err) | Self::Other(err) => err,
        };
        // hyper's client errors say what failed, their causes why (a refused certificate...).
        write!(f, "{err}")?;
        let mut source = err.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// The largest request body kept for a retry on another node (read in full before the request
/// goes out).
pub(crate) const REPLAYABLE_BODY_LIMIT: u64 = 64 * 1024;

/// A request with `parts` and `body` (a retry's copy, or the first attempt's).
pub(crate) fn copy_with_body(parts: &http::request::Parts, body: bytes::Bytes) -> Request<Body> {
    let mut request = Request::new(
        http_body_util::Full::new(body)
            .map_err(|never| match never {})
            .boxed(),
    );
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    request
}

/// Whether a forwarded request's reply says the node had no upstream for it.
pub(crate) fn had_no_upstream<B>(response: &Response<B>) -> bool {
    response.headers().contains_key(NO_UPSTREAM_HEADER)
}

/// Marks a reply as [`NO_UPSTREAM_HEADER`] says.
pub(crate) fn mark_no_upstream<B>(response: &mut Response<B>) {
    response
        .headers_mut()
        .insert(NO_UPSTREAM_HEADER, HeaderValue::from_static("1"));
}

/// The reply's body, in the proxy's body type.
pub(crate) fn boxed(response: Response<Incoming>) -> Response<Body> {
    response.map(|body| body.map_err(Into::into).boxed())
}
