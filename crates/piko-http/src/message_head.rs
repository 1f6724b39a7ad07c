//! HTTP/1.1 message heads parsed from a byte buffer and written back out: what a proxy that
//! relays bodies as bytes needs, instead of an HTTP connection object per exchange.

use bytes::BytesMut;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Most header fields a head may carry (hyper's default).
pub const MAX_HEADERS: usize = 100;

/// A head that cannot be relayed.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// Larger than the limit the reader was given.
    #[error("message head over {0} bytes")]
    TooLarge(usize),
    /// Not an HTTP/1.x head, or a name, value or target HTTP's types refuse.
    #[error("malformed message head")]
    Malformed,
    /// The connection ended before the head did (`true` when some of it had arrived).
    #[error("connection closed before the message head was complete")]
    Closed(bool),
    /// Reading failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Parses a head at the start of a buffer: the head and its length, or `None` while it is
/// incomplete.
pub type HeadParser<T> = fn(&[u8]) -> Result<Option<(T, usize)>, HeadError>;

/// A request head, and its length in bytes.
pub fn parse_request(buf: &[u8]) -> Result<Option<(http::Request<()>, usize)>, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut fields);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(HeadError::Malformed),
    };
    let method = parsed
        .method
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .ok_or(HeadError::Malformed)?;
    let uri = parsed
        .path
        .and_then(|p| p.parse::<Uri>().ok())
        .ok_or(HeadError::Malformed)?;
    let mut request = http::Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version(parsed.version);
    *request.headers_mut() = header_map(parsed.headers)?;
    Ok(Some((request, len)))
}

/// A response head, and its length in bytes.
pub fn parse_response(buf: &[u8]) -> Result<Option<(http::Response<()>, usize)>, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut fields);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(HeadError::Malformed),
    };
    let status = parsed
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or(HeadError::Malformed)?;
    let mut response = http::Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version(parsed.version);
    *response.headers_mut() = header_map(parsed.headers)?;
    Ok(Some((response, len)))
}

/// Reads from `io` into `buf` until `parse` finds a whole head at its start, which is returned
/// with its length; `buf` keeps every byte read (the head's included).
///
/// # Errors
/// A head over `max_len` bytes, a malformed one, the connection closing first (`Closed(false)`
/// when it closed between messages), or a read failure.
pub async fn read_head<R, T>(
    io: &mut R,
    buf: &mut BytesMut,
    max_len: usize,
    parse: HeadParser<T>,
) -> Result<(T, usize), HeadError>
where
    R: AsyncRead + Unpin,
{
    // Parsed only once the bytes hold a blank line, searched from where the last search ended:
    // a head trickling in a byte at a time costs linear time, not quadratic.
    let mut searched: usize = 0;
    loop {
        let blank_line = has_blank_line(&buf[searched.saturating_sub(2)..]);
        searched = buf.len();
        if blank_line && let Some(parsed) = parse(buf)? {
            if parsed.1 > max_len {
                return Err(HeadError::TooLarge(max_len));
            }
            return Ok(parsed);
        }
        if buf.len() >= max_len {
            return Err(HeadError::TooLarge(max_len));
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(8 * 1024);
        }
        if io.read_buf(buf).await? == 0 {
            return Err(HeadError::Closed(!buf.is_empty()));
        }
    }
}

/// Whether `bytes` hold the end of a head: a line feed, then an empty line.
fn has_blank_line(bytes: &[u8]) -> bool {
    bytes
        .windows(2)
        .enumerate()
        .any(|(i, w)| w == b"\n\n" || (w == b"\n\r" && bytes.get(i + 2) == Some(&b'\n')))
}

/// Appends an HTTP/1.1 request head for `target` (origin form) to `out`.
pub fn write_request_head(out: &mut Vec<u8>, method: &Method, target: &str, headers: &HeaderMap) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    write_fields(out, headers);
}

/// Appends an HTTP/1.1 response head to `out`.
pub fn write_response_head(out: &mut Vec<u8>, status: StatusCode, headers: &HeaderMap) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    write_fields(out, headers);
}

/// Whether a `Connection` field of `headers` lists `token`.
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

fn write_fields(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn version(minor: Option<u8>) -> Version {
    match minor {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    }
}

fn header_map(fields: &[httparse::Header<'_>]) -> Result<HeaderMap, HeadError> {
    let mut headers = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name =
            HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| HeadError::Malformed)?;
        let value = HeaderValue::from_bytes(field.value).map_err(|_| HeadError::Malformed)?;
        headers.append(name, value);
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_and_write_back() {
        let raw = b"POST /a?b=c HTTP/1.1\r\nHost: x\r\nAccept: 1\r\nAccept: 2\r\n\r\nbody";
        assert!(parse_request(&raw[..20]).unwrap().is_none());
        let (request, len) = parse_request(raw).unwrap().unwrap();
        assert_eq!(len, raw.len() - 4);
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri(), "/a?b=c");
        assert_eq!(request.headers().get_all("accept").iter().count(), 2);
        let mut out = Vec::new();
        write_request_head(&mut out, request.method(), "/p", request.headers());
        assert_eq!(
            out,
            b"POST /p HTTP/1.1\r\nhost: x\r\naccept: 1\r\naccept: 2\r\n\r\n"
        );

        let (response, len) = parse_response(b"HTTP/1.0 404 Gone\r\nA: b\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(len, 27);
        assert_eq!(response.status(), 404);
        assert_eq!(response.version(), Version::HTTP_10);
        out.clear();
        write_response_head(&mut out, response.status(), response.headers());
        assert_eq!(out, b"HTTP/1.1 404 Not Found\r\na: b\r\n\r\n");
    }

    #[test]
    fn bad_heads_are_refused() {
        for raw in [
            &b"GET / HTTP/2.0\r\n\r\n"[..],
            b"GET /\x01 HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nbad name: x\r\n\r\n",
        ] {
            assert!(
                matches!(parse_request(raw), Err(HeadError::Malformed)),
                "{raw:?}"
            );
        }
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "a: b\r\n".repeat(MAX_HEADERS + 1)
        );
        assert!(matches!(
            parse_request(many.as_bytes()),
            Err(HeadError::Malformed)
        ));
        assert!(matches!(
            parse_response(b"HTTP/1.1 99 X\r\n\r\n"),
            Err(HeadError::Malformed)
        ));
    }

    /// A reader that returns its bytes one at a time.
    struct OneByteAtATime(&'static [u8]);

    impl tokio::io::AsyncRead for OneByteAtATime {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if let Some((first, rest)) = self.0.split_first() {
                buf.put_slice(&[*first]);
                self.0 = rest;
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn reading_a_head_is_bounded() {
        let mut buf = BytesMut::new();
        let mut io = &b"GET / HTTP/1.1\r\nx: yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\r\n"[..];
        let err = read_head(&mut io, &mut buf, 16, parse_request)
            .await
            .unwrap_err();
        assert!(matches!(err, HeadError::TooLarge(16)));
        let mut buf = BytesMut::new();
        let mut io = &b"GET / HT"[..];
        let err = read_head(&mut io, &mut buf, 1024, parse_request)
            .await
            .unwrap_err();
        assert!(matches!(err, HeadError::Closed(true)));
        // A head arriving a byte at a time (each read returns one byte), then the next bytes.
        let raw = b"GET /x HTTP/1.1\r\nhost: h\r\n\r\nNEXT";
        let mut io = OneByteAtATime(raw);
        let mut buf = BytesMut::new();
        let (request, len) = read_head(&mut io, &mut buf, 1024, parse_request)
            .await
            .unwrap();
        assert_eq!((request.uri().path(), len), ("/x", raw.len() - 4));
        let mut buf = BytesMut::new();
        let mut io = &b""[..];
        let err = read_head(&mut io, &mut buf, 1024, parse_request)
            .await
            .unwrap_err();
        assert!(matches!(err, HeadError::Closed(false)));
    }
}
