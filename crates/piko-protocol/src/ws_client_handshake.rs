//! The client side of a WebSocket handshake (RFC 6455 §4.1) on an open connection: the request,
//! the server's answer parsed with `httparse`, and the bytes read past the `101` kept for the
//! byte stream, since a server may send frames right behind its answer.

use std::fmt;

use http::{HeaderMap, StatusCode, Uri, header};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};

use crate::WsByteStream;

/// Largest response head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest error body read (to report a JSON `error` field).
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Most response headers parsed.
const MAX_HEADERS: usize = 64;

/// Why a handshake failed.
#[derive(Debug)]
pub enum HandshakeError {
    /// The connection failed.
    Io(std::io::Error),
    /// The server answered with another HTTP version than 1.1.
    NotHttp11,
    /// The server answered with `status` instead of `101`; `body` is at most 64 KiB of its body.
    Refused {
        /// The answer's status.
        status: StatusCode,
        /// The answer's headers.
        headers: HeaderMap,
        /// The start of the answer's body.
        body: Vec<u8>,
    },
    /// The answer is not a valid WebSocket handshake.
    Invalid(&'static str),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(err) => write!(f, "{err}"),
            Self::NotHttp11 => f.write_str("the server did not answer with HTTP/1.1"),
            Self::Refused { status, .. } => write!(f, "websocket handshake refused: {status}"),
            Self::Invalid(why) => write!(f, "invalid websocket handshake: {why}"),
        }
    }
}

impl std::error::Error for HandshakeError {}

impl From<std::io::Error> for HandshakeError {
    fn from(err: std::io::Error) -> Self {
        Self::Io(err)
    }
}

/// Opens a WebSocket to `uri` over `io`, sending `extra` headers too; the byte stream and the
/// headers of the server's `101`.
///
/// # Errors
/// The connection failed, or the server refused or answered something else than a handshake.
pub async fn client_handshake<S>(
    mut io: S,
    uri: &Uri,
    extra: &HeaderMap,
) -> Result<(WsByteStream<S>, HeaderMap), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let key = generate_key();
    let host = uri
        .authority()
        .ok_or(HandshakeError::Invalid("the URL has no host"))?;
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
    )
    .into_bytes();
    for (name, value) in extra {
        request.extend_from_slice(name.as_str().as_bytes());
        request.extend_from_slice(b": ");
        request.extend_from_slice(value.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    io.write_all(&request).await?;
    io.flush().await?;

    let mut buf = Vec::with_capacity(1024);
    let (status, headers, head_len) = loop {
        let mut chunk = [0; 1024];
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(HandshakeError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(parsed) = parse_head(&buf)? {
            break parsed;
        }
        if buf.len() > MAX_HEAD {
            return Err(HandshakeError::Invalid("response head over 16 KiB"));
        }
    };
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let body = read_error_body(&mut io, &headers, buf.split_off(head_len)).await;
        return Err(HandshakeError::Refused {
            status,
            headers,
            body,
        });
    }
    let has = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has(header::UPGRADE, "websocket") || !has(header::CONNECTION, "upgrade") {
        return Err(HandshakeError::Invalid("101 without the websocket upgrade"));
    }
    let accept = derive_accept_key(key.as_bytes());
    if headers
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .map(|v| v.as_bytes())
        != Some(accept.as_bytes())
    {
        return Err(HandshakeError::Invalid("wrong Sec-WebSocket-Accept"));
    }
    Ok((WsByteStream::client(io, &buf[head_len..]), headers))
}

/// The status, headers and length of the response head at the start of `buf`, once complete.
fn parse_head(buf: &[u8]) -> Result<Option<(StatusCode, HeaderMap, usize)>, HandshakeError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut slots);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::Version) => return Err(HandshakeError::NotHttp11),
        Err(_) => return Err(HandshakeError::Invalid("malformed response")),
    };
    if response.version != Some(1) {
        return Err(HandshakeError::NotHttp11);
    }
    let status = response
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or(HandshakeError::Invalid("malformed status"))?;
    let mut headers = HeaderMap::with_capacity(response.headers.len());
    for h in response.headers.iter() {
        let name = header::HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| HandshakeError::Invalid("malformed header name"))?;
        let value = http::HeaderValue::from_bytes(h.value)
            .map_err(|_| HandshakeError::Invalid("malformed header value"))?;
        headers.append(name, value);
    }
    Ok(Some((status, headers, head_len)))
}

/// The body of a refusal with a `Content-Length` of at most 64 KiB, best effort (empty if it
/// cannot be read).
async fn read_error_body<S: AsyncRead + Unpin>(
    io: &mut S,
    headers: &HeaderMap,
    mut body: Vec<u8>,
) -> Vec<u8> {
    let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|len| *len <= MAX_ERROR_BODY)
    else {
        return Vec::new();
    };
    if body.len() < len {
        let have = body.len();
        body.resize(len, 0);
        if io.read_exact(&mut body[have..]).await.is_err() {
            return Vec::new();
        }
    }
    body.truncate(len);
    body
}
