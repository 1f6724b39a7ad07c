//! The request path to a plain `http` service, without an HTTP connection object per stream: each
//! request head the server sends on a stream is parsed, rewritten as a proxy must, and written to
//! a keep-alive connection to the service; the response head is parsed, rewritten and written
//! back, and its body relayed as bytes with its framing. Requests that need more of HTTP are
//! handed to hyper with the bytes read so far: those with a body (a service may answer while
//! still reading it, so the body must flow while the response does), upgrades, `Expect`,
//! HTTP/1.0 and `CONNECT`.

use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use http::{HeaderValue, Method, StatusCode, Version, header};
use piko_http::{
    access_log::RequestRecord,
    body_framing::{Framing, RelayError, relay_body, request_framing, response_framing},
    error_response::error_response,
    hop_by_hop::{append_forwarded_for, remove as remove_hop_by_hop},
    message_head::{
        HeadError, connection_has, parse_request, parse_response, read_head, write_request_head,
        write_response_head,
    },
    rewound::Rewound,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{HttpConfig, metrics::RequestMeter, service_pool::ServicePool};

/// Largest request or response head relayed (the server refuses larger request heads before
/// they get here).
const MAX_HEAD_BYTES: usize = 1 << 20;

/// One listener's view of a plain service.
pub(crate) struct PlainService<'a> {
    pub(crate) config: &'a HttpConfig,
    pub(crate) endpoint: &'a str,
    pub(crate) pool: &'a ServicePool,
    pub(crate) server_addr: Option<SocketAddr>,
}

/// What to do with the stream after an exchange.
enum Next {
    /// Read the next request.
    Continue,
    /// End the stream cleanly (FIN).
    Close,
    /// Abort the stream (RST): the exchange failed after its response began, or the stream did.
    Reset,
}

impl PlainService<'_> {
    /// Serves `stream`'s requests until it ends; returns it, with what was read of its current
    /// request, when that request needs hyper.
    pub(crate) async fn serve(&self, mut stream: piko::Stream) -> Option<Rewound<piko::Stream>> {
        let mut request_buf = BytesMut::with_capacity(8 * 1024);
        let mut response_buf = BytesMut::new();
        let mut out = Vec::new();
        loop {
            let read =
                read_head(&mut stream, &mut request_buf, MAX_HEAD_BYTES, parse_request).await;
            let (request, head_len) = match read {
                Ok(parsed) => parsed,
                Err(HeadError::Closed(false)) => {
                    let _ = stream.shutdown().await;
                    return None;
                }
                Err(HeadError::Closed(true) | HeadError::Io(_)) => return None,
                Err(err @ (HeadError::TooLarge(_) | HeadError::Malformed)) => {
                    tracing::debug!(subsystem = "proxy.http", error = %err, "bad request head");
                    let status = match err {
                        HeadError::TooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        _ => StatusCode::BAD_REQUEST,
                    };
                    refuse(&mut stream, status).await;
                    let _ = stream.shutdown().await;
                    return None;
                }
            };
            if needs_hyper(&request) {
                return Some(Rewound::new(request_buf, stream));
            }
            request_buf.advance(head_len);
            let next = self
                .exchange_watching(
                    request,
                    &stream,
                    &mut request_buf,
                    &mut response_buf,
                    &mut out,
                )
                .await;
            match next {
                Next::Continue => {}
                Next::Close => {
                    let _ = stream.shutdown().await;
                    return None;
                }
                // Dropped before shutdown: reset, after what was written.
                Next::Reset => return None,
            }
        }
    }

    /// Serves one request while reading its stream: a reset (the client went away, the server
    /// gave up) abandons the exchange, and its connection to the service, at once, as hyper's
    /// server does; bytes of a next request are kept for it.
    async fn exchange_watching(
        &self,
        request: http::Request<()>,
        stream: &piko::Stream,
        request_buf: &mut BytesMut,
        response_buf: &mut BytesMut,
        out: &mut Vec<u8>,
    ) -> Next {
        let mut reader = stream;
        let watch = async {
            loop {
                if request_buf.len() >= MAX_HEAD_BYTES {
                    // Enough of the next request is waiting: read no more until its turn.
                    std::future::pending::<()>().await;
                }
                match reader.read_buf(request_buf).await {
                    Ok(0) => {
                        // No more requests; this one is still answered.
                        std::future::pending::<()>().await;
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        };
        tokio::select! {
            biased;
            next = self.exchange(request, stream, response_buf, out) => next,
            () = watch => Next::Reset,
        }
    }

    async fn exchange(
        &self,
        request: http::Request<()>,
        stream: &piko::Stream,
        response_buf: &mut BytesMut,
        out: &mut Vec<u8>,
    ) -> Next {
        let mut stream = stream;
        let config = self.config;
        let record = RequestRecord::start(&config.access_log, &request);
        let meter = config
            .metrics
            .as_ref()
            .map(|metrics| RequestMeter::start(metrics.clone(), self.endpoint, &request));
        let close_after = connection_has(request.headers(), "close");
        let (mut parts, ()) = request.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let target = config.target.origin_form(path);
        let headers = &mut parts.headers;
        remove_hop_by_hop(headers);
        // The service sees `client, server`, as on hyper's path.
        if let Some(server) = self.server_addr {
            append_forwarded_for(headers, server.ip());
        }
        if !headers.contains_key(header::HOST)
            && let Some(authority) = config.target.authority()
        {
            headers.insert(header::HOST, authority);
        }
        // Sent again on a new connection only if repeating it is harmless, as Go's transport
        // decides: a safe method, or an idempotency key.
        let replayable = matches!(
            parts.method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
        ) || headers.contains_key("idempotency-key")
            || headers.contains_key("x-idempotency-key");
        let mut head = Vec::with_capacity(256);
        write_request_head(&mut head, &parts.method, &target, headers);
        let method = parts.method;

        let sent =
            tokio::time::timeout(config.timeout, self.send(&head, replayable, response_buf)).await;
        let answered = match sent {
            Ok(Ok((tcp, response))) => {
                let (parts, ()) = response.into_parts();
                match response_framing(&method, parts.status, &parts.headers) {
                    Ok(framing) => Ok((tcp, parts, framing)),
                    Err(_) => Err((
                        "invalid response framing".to_owned(),
                        StatusCode::BAD_GATEWAY,
                        "upstream unreachable",
                    )),
                }
            }
            Ok(Err(error)) => Err((error, StatusCode::BAD_GATEWAY, "upstream unreachable")),
            Err(_) => Err((
                "timeout".to_owned(),
                StatusCode::GATEWAY_TIMEOUT,
                "upstream timeout",
            )),
        };
        let (mut tcp, mut parts, framing) = match answered {
            Ok(answer) => answer,
            Err((error, status, message)) => {
                tracing::warn!(subsystem = "proxy.http", error = %error, "proxy request");
                return respond_error(config, &mut stream, out, (record, meter), status, message)
                    .await;
            }
        };
        let reusable = framing != Framing::UntilClose
            && parts.version == Version::HTTP_11
            && !connection_has(&parts.headers, "close");
        remove_hop_by_hop(&mut parts.headers);
        // Logged as the hyper path logs it: without the framing it re-creates.
        let record =
            record.and_then(|r| r.respond(&config.access_log, parts.status, &parts.headers));
        let meter = meter.map(|m| m.respond(parts.status));
        // The framing headers say what is relayed, whatever the hop-by-hop removal took (a
        // `Connection` header may name `Content-Length`) or left (a length beside a transfer
        // coding).
        let headers = &mut parts.headers;
        match framing {
            Framing::Length(length) => {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
            }
            Framing::Chunked => {
                headers.remove(header::CONTENT_LENGTH);
                headers.insert(
                    header::TRANSFER_ENCODING,
                    HeaderValue::from_static("chunked"),
                );
            }
            Framing::UntilClose => {
                headers.remove(header::CONTENT_LENGTH);
            }
            Framing::Empty => {}
        }
        out.clear();
        write_response_head(out, parts.status, headers);
        let relayed = relay_body(framing, response_buf, out, &mut tcp, &mut stream).await;
        drop(record);
        match relayed {
            Ok(written) => {
                if let Some(meter) = meter {
                    meter.done((written > 0).then_some(written));
                }
                if reusable && response_buf.is_empty() {
                    self.pool.put(tcp);
                }
                if framing == Framing::UntilClose || close_after {
                    Next::Close
                } else {
                    Next::Continue
                }
            }
            Err(err) => {
                if let Some(meter) = meter {
                    meter.done(None);
                }
                if !matches!(err, RelayError::Write(_)) {
                    // What the service sent before failing reaches the server first: the reset
                    // follows the bytes already queued on the stream.
                    tracing::debug!(subsystem = "proxy.http", error = %err, "response body failed");
                }
                Next::Reset
            }
        }
    }

    /// Sends a request head on a pooled or new connection and reads the service's response
    /// head, skipping informational ones. A pooled connection the service had closed is replaced
    /// once: when writing to it failed (nothing was delivered), or, for a `replayable` request,
    /// when it closed without an answer.
    async fn send(
        &self,
        head: &[u8],
        replayable: bool,
        response_buf: &mut BytesMut,
    ) -> Result<(TcpStream, http::Response<()>), String> {
        let mut may_retry = true;
        loop {
            let (mut tcp, reused) = match self.pool.take() {
                Some(tcp) => (tcp, true),
                None => (
                    self.pool.connect().await.map_err(|err| err.to_string())?,
                    false,
                ),
            };
            let retry = std::mem::take(&mut may_retry) && reused;
            match tcp.write_all(head).await {
                Ok(()) => {}
                Err(_) if retry => continue,
                Err(err) => return Err(err.to_string()),
            }
            response_buf.clear();
            loop {
                match read_head(&mut tcp, response_buf, MAX_HEAD_BYTES, parse_response).await {
                    Ok((response, len)) => {
                        response_buf.advance(len);
                        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                            return Err("101 without an upgrade".into());
                        }
                        // hyper's client drops 1xx responses; so does this path.
                        if response.status().is_informational() {
                            continue;
                        }
                        return Ok((tcp, response));
                    }
                    Err(HeadError::Closed(false) | HeadError::Io(_)) if retry && replayable => {
                        break;
                    }
                    Err(err) => return Err(err.to_string()),
                }
            }
        }
    }
}

/// Whether a request needs hyper's server: a body (or framing this path would have to judge),
/// upgrades, `Expect: 100-continue` (the client waits for an interim response), anything but
/// HTTP/1.1, `CONNECT`.
fn needs_hyper(request: &http::Request<()>) -> bool {
    let headers = request.headers();
    !matches!(request_framing(headers), Ok(Framing::Empty))
        || request.version() != Version::HTTP_11
        || request.method() == Method::CONNECT
        || headers.contains_key(header::UPGRADE)
        || headers.contains_key(header::EXPECT)
        || connection_has(headers, "upgrade")
}

/// Answers a head that cannot be served, as hyper's server would (the stream ends next).
async fn refuse(stream: &mut piko::Stream, status: StatusCode) {
    let mut out = Vec::with_capacity(128);
    let mut headers = http::HeaderMap::new();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    write_response_head(&mut out, status, &headers);
    let _ = stream.write_all(&out).await;
}

/// Answers with Piko's JSON error, records the request, and ends the stream (the request's body
/// may not have been read).
async fn respond_error(
    config: &HttpConfig,
    stream: &mut &piko::Stream,
    out: &mut Vec<u8>,
    (record, meter): (Option<RequestRecord>, Option<RequestMeter>),
    status: StatusCode,
    message: &str,
) -> Next {
    let (parts, body) = error_response(status, message).into_parts();
    let record = record.and_then(|r| r.respond(&config.access_log, status, &parts.headers));
    let mut headers = parts.headers;
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    out.clear();
    write_response_head(out, status, &headers);
    out.extend_from_slice(&body);
    let written = stream.write_all(out).await.is_ok();
    if let Some(meter) = meter {
        meter.respond(status).done(Some(body.len() as u64));
    }
    drop(record);
    if written { Next::Close } else { Next::Reset }
}
