//! The proxy port's TCP route (spec §4.1): `GET /_piko/v1/tcp/{endpoint}` becomes a WebSocket
//! whose bytes are relayed to a new stream on an upstream of the endpoint. `piko forward` and the
//! SDK's `Dialer` use it, since raw TCP has nowhere to name an endpoint.
//!
//! - The stream is opened before the upgrade, so a client learns that the endpoint has no
//!   upstream from a `502` with Piko's JSON error rather than from a closed tunnel; the handshake
//!   is checked before that, so a request that is not a tunnel never reaches an upstream.
//! - A client that asks for half-close (ours do, with
//!   [`HALF_CLOSE_HEADER`](piko_protocol::wire::HALF_CLOSE_HEADER)) gets each direction ended on
//!   its own: a client's FIN reaches the service as a FIN and the reply still comes back. Go
//!   clients get Piko's behaviour: the first direction to end closes both.

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use piko_protocol::{
    WsByteStream,
    wire::{HALF_CLOSE_HEADER, MAX_ENDPOINT_ID_LEN, TCP_PATH},
};
use prometheus_client::metrics::counter::Counter;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

use crate::{
    counted_io::CountedReads,
    json_error::{full, gin_error},
    metrics::{Direction, Outcome, RequestMeter, Route as MeteredRoute},
    proxy::{Handler, no_available_upstreams},
    serve::Body,
    upstream::endpoint_from_path,
    warn_limit::warn_limited,
    websocket_upgrade,
};

/// What the proxy port does with a request, as far as the TCP route is concerned.
pub(crate) enum Route {
    /// A tunnel to this endpoint.
    Tunnel(String),
    /// The route with a trailing slash: redirected without it, as Piko's router does.
    Redirect(String),
    /// Not the TCP route: an HTTP request to proxy.
    Http,
}

/// Routes only `GET` with exactly one segment after the prefix; every other request, other
/// methods included, is proxied as HTTP (spec §3.1).
pub(crate) fn route(method: &Method, path: &str) -> Route {
    if method != Method::GET || !path.starts_with(TCP_PATH) {
        return Route::Http;
    }
    if let Some(endpoint) = endpoint_from_path(path, TCP_PATH) {
        return Route::Tunnel(endpoint);
    }
    match path.strip_suffix('/') {
        Some(trimmed) if endpoint_from_path(trimmed, TCP_PATH).is_some() => {
            Route::Redirect(trimmed.to_owned())
        }
        _ => Route::Http,
    }
}

pub(crate) fn redirect(location: &str) -> Response<Body> {
    let mut response = Response::new(full(format!(
        "<a href=\"{location}\">Moved Permanently</a>.\n\n"
    )));
    *response.status_mut() = StatusCode::MOVED_PERMANENTLY;
    if let Ok(location) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// Opens a stream to an upstream of `endpoint`, upgrades the client and relays between them.
pub(crate) async fn tunnel(
    handler: &Handler,
    request: Request<Incoming>,
    peer: std::net::SocketAddr,
    endpoint: &str,
    meter: &mut Option<RequestMeter>,
) -> Response<Body> {
    if let Some(meter) = meter.as_mut() {
        meter.set_route(MeteredRoute::Tcp);
    }
    if endpoint.len() > MAX_ENDPOINT_ID_LEN {
        return gin_error(StatusCode::BAD_REQUEST, "endpoint id too long");
    }
    if let Err(refusal) = crate::proxy::permitted(&request, endpoint) {
        return refusal.response();
    }
    if let Some(response) = handler.refused_over_endpoint_limit(endpoint, meter) {
        return response;
    }
    // Piko's order of answers: no upstream (502) before a bad handshake (400), so a client
    // learns the first; but the handshake is checked before a stream is opened, so a request
    // that is not a tunnel never reaches an upstream.
    // Another node holds the endpoint: the tunnel is relayed there, handshake and all.
    if let Some(node) = handler.remote_for(&request, endpoint) {
        return handler.forward(request, peer, endpoint, node, meter).await;
    }
    if handler.upstreams.count(endpoint) == 0 {
        warn_limited!(subsystem = "proxy.tcp", endpoint_id = %endpoint, "no available upstreams");
        return no_available_upstreams();
    }
    let accept_key = match websocket_upgrade::check(request.headers()) {
        Ok(key) => key,
        Err(status) => return websocket_upgrade::rejection(status),
    };
    let deadline = handler
        .config
        .timeout
        .map(|limit| tokio::time::Instant::now() + limit);
    let stream = match handler.open_stream(endpoint, deadline).await {
        Ok(stream) => stream,
        Err(response) => return response,
    };
    let half_close = request.headers().contains_key(HALF_CLOSE_HEADER);
    let upgrade = hyper::upgrade::on(request);
    let meter = meter.take();
    let tunnel_write_timeout = handler.config.tunnel_write_timeout;
    let proxy = &handler.metrics.proxy;
    let bytes = (
        proxy.bytes(MeteredRoute::Tcp, Direction::In).clone(),
        proxy.bytes(MeteredRoute::Tcp, Direction::Out).clone(),
    );
    handler.exchanges.spawn(async move {
        let upgraded = upgrade.await;
        let outcome = match &upgraded {
            Ok(_) => Outcome::Success,
            // The client went before its side of the upgrade completed.
            Err(_) => Outcome::ClientError,
        };
        if let Ok(upgraded) = upgraded {
            match websocket_upgrade::into_client_io(upgraded, tunnel_write_timeout) {
                Ok((tcp, read_buf)) => {
                    let ws = WsByteStream::server(tcp, &read_buf);
                    relay(ws, stream, half_close, bytes, |io| Some(io.tcp())).await;
                }
                Err(upgraded) => {
                    let ws = WsByteStream::server(TokioIo::new(upgraded), &[]);
                    // Not a socket of ours: dropped, it closes as its transport closes.
                    relay(ws, stream, half_close, bytes, |_| None).await;
                }
            }
        }
        if let Some(meter) = meter {
            meter.finish_tunnel(outcome);
        }
    });
    let mut response = websocket_upgrade::switching_protocols(&accept_key);
    if half_close {
        response
            .headers_mut()
            .insert(HALF_CLOSE_HEADER, HeaderValue::from_static("1"));
    }
    response
}

/// Copies bytes both ways until the tunnel is over, counting them (`in`, `out`). The client's
/// socket is then closed without a close frame, as Piko's peers do (spec §4.2). A failure on
/// either side aborts both: the upstream's stream is reset and the client's connection (its
/// socket from `client_tcp`) too, once the bytes read before the failure (a service that writes
/// its reply and resets) have been delivered.
async fn relay<S>(
    ws: WsByteStream<S>,
    stream: piko_mux::Stream,
    half_close: bool,
    (bytes_in, bytes_out): (Counter, Counter),
    client_tcp: fn(&S) -> Option<&TcpStream>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut client = CountedReads {
        inner: if half_close { ws.half_closing() } else { ws },
        read: bytes_in,
    };
    let mut upstream = CountedReads {
        inner: stream,
        read: bytes_out,
    };
    let result = if half_close {
        piko_protocol::relay(&mut client, &mut upstream)
            .await
            .map(drop)
    } else {
        piko_protocol::relay::relay_until_first_end(&mut client, &mut upstream).await
    };
    match result {
        // The upstream gets a FIN rather than a reset, so it may still flush what it was
        // writing.
        Ok(()) => {
            let _ = upstream.inner.shutdown().await;
        }
        Err(err) => {
            tracing::debug!(subsystem = "proxy.tcp", error = %err, "tunnel ended with an error");
            upstream.inner.reset();
            if let Some(tcp) = client_tcp(client.inner.get_ref()) {
                piko_protocol::reset_after_delivery(tcp).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_with_one_segment_is_a_tunnel() {
        let get = Method::GET;
        assert!(matches!(route(&get, "/_piko/v1/tcp/db"), Route::Tunnel(e) if e == "db"));
        assert!(matches!(route(&get, "/_piko/v1/tcp/a%2Fb"), Route::Tunnel(e) if e == "a/b"));
        assert!(
            matches!(route(&get, "/_piko/v1/tcp/db/"), Route::Redirect(l) if l == "/_piko/v1/tcp/db")
        );
        for path in [
            "/_piko/v1/tcp/",
            "/_piko/v1/tcp/a/b",
            "/_piko/v1/other",
            "/db",
        ] {
            assert!(matches!(route(&get, path), Route::Http), "{path}");
        }
        assert!(matches!(
            route(&Method::POST, "/_piko/v1/tcp/db"),
            Route::Http
        ));
    }
}
