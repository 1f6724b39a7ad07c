//! How an HTTP/1.1 message's body is delimited (RFC 9112 §6), and relaying one body as bytes
//! with its framing kept: a proxy learns where the body ends without decoding or re-encoding it.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest chunk-size line (size and extensions) accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Most bytes of trailer fields accepted after the last chunk.
const MAX_TRAILERS: usize = 64 * 1024;
/// What a read asks for while relaying a body.
const READ_SIZE: usize = 64 * 1024;

/// Where a message's body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`, ending with its last chunk and trailers.
    Chunked,
    /// Until the connection closes (a response with no length).
    UntilClose,
}

/// The message's framing is contradictory or unreadable.
#[derive(Debug, thiserror::Error)]
#[error("invalid message framing")]
pub struct InvalidFraming;

/// A request's framing: a `Transfer-Encoding` must end with `chunked` and come without
/// `Content-Length` (either would let two parties disagree on where the body ends).
///
/// # Errors
/// The rules above, or a `Content-Length` that is not one number.
pub fn request_framing(headers: &HeaderMap) -> Result<Framing, InvalidFraming> {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        if !ends_chunked(headers) || headers.contains_key(header::CONTENT_LENGTH) {
            return Err(InvalidFraming);
        }
        return Ok(Framing::Chunked);
    }
    Ok(match content_length(headers)? {
        None | Some(0) => Framing::Empty,
        Some(length) => Framing::Length(length),
    })
}

/// A response's framing, given the request's method: none for `HEAD`, 1xx, 204 and 304; else
/// chunked, a length, or until the connection closes.
///
/// # Errors
/// A `Content-Length` that is not one number.
pub fn response_framing(
    method: &Method,
    status: StatusCode,
    headers: &HeaderMap,
) -> Result<Framing, InvalidFraming> {
    if method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return Ok(if ends_chunked(headers) {
            Framing::Chunked
        } else {
            Framing::UntilClose
        });
    }
    Ok(match content_length(headers)? {
        None => Framing::UntilClose,
        Some(0) => Framing::Empty,
        Some(length) => Framing::Length(length),
    })
}

fn ends_chunked(headers: &HeaderMap) -> bool {
    let last = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next());
    last.is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"))
}

/// The `Content-Length`, when present: every field and list element must be the same number.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, InvalidFraming> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let value = value.to_str().map_err(|_| InvalidFraming)?;
        for element in value.split(',') {
            let element = element.trim();
            if element.is_empty() || !element.bytes().all(|b| b.is_ascii_digit()) {
                return Err(InvalidFraming);
            }
            let parsed: u64 = element.parse().map_err(|_| InvalidFraming)?;
            if length.is_some_and(|known| known != parsed) {
                return Err(InvalidFraming);
            }
            length = Some(parsed);
        }
    }
    Ok(length)
}

/// A body that could not be relayed whole.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The source failed or ended before the body did.
    #[error("reading the body: {0}")]
    Read(io::Error),
    /// The destination failed.
    #[error("writing the body: {0}")]
    Write(io::Error),
    /// A chunked body broke its framing.
    #[error("malformed chunked body")]
    Malformed,
}

/// Relays one body framed by `framing` from `from` to `to`, framing included.
///
/// `buf` holds bytes already read from `from` (the body's first bytes) and keeps those read past
/// the body's end. `out` holds bytes to send before the body (a message head): they go out with
/// the body's first bytes, in one write when the body is small. Returns the body's payload size
/// (chunk framing not counted).
///
/// # Errors
/// Either side failing, `from` ending early, or a broken chunked body.
pub async fn relay_body<R, W>(
    framing: Framing,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    from: &mut R,
    to: &mut W,
) -> Result<u64, RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut payload = 0u64;
    let mut left = match framing {
        Framing::Length(length) => length,
        _ => 0,
    };
    let mut chunks = ChunkScanner::default();
    loop {
        let (take, done) = match framing {
            Framing::Empty => (0, true),
            Framing::Length(_) => {
                let take = left.min(buf.len() as u64);
                left -= take;
                payload += take;
                (take as usize, left == 0)
            }
            Framing::UntilClose => {
                payload += buf.len() as u64;
                (buf.len(), false)
            }
            Framing::Chunked => {
                let take = chunks.scan(buf)?;
                payload = chunks.payload;
                (take, chunks.done())
            }
        };
        if out.is_empty() {
            if take > 0 {
                to.write_all(&buf[..take])
                    .await
                    .map_err(RelayError::Write)?;
            }
        } else {
            // The head goes out with the body's first bytes, and before waiting for more.
            out.extend_from_slice(&buf[..take]);
            to.write_all(out).await.map_err(RelayError::Write)?;
            out.clear();
        }
        buf.advance(take);
        if done {
            return Ok(payload);
        }
        if buf.capacity() - buf.len() < 4 * 1024 {
            buf.reserve(READ_SIZE);
        }
        if from.read_buf(buf).await.map_err(RelayError::Read)? == 0 {
            if framing == Framing::UntilClose {
                return Ok(payload);
            }
            return Err(RelayError::Read(io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

/// Where a chunked body's scan stands.
#[derive(Debug, Default)]
struct ChunkScanner {
    state: ChunkState,
    payload: u64,
    trailer_bytes: usize,
}

#[derive(Debug, Default, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// Expecting trailer lines, then an empty line.
    Trailers,
    Done,
}

impl ChunkScanner {
    fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// How many bytes at the start of `bytes` belong to the body, as far as it can tell: a line
    /// is taken only once it is whole.
    fn scan(&mut self, bytes: &[u8]) -> Result<usize, RelayError> {
        let mut pos = 0;
        loop {
            let rest = &bytes[pos..];
            match self.state {
                ChunkState::Done => return Ok(pos),
                ChunkState::Size => {
                    let Some(line) = whole_line(rest, MAX_CHUNK_LINE)? else {
                        return Ok(pos);
                    };
                    pos += line.len();
                    let size = chunk_size(line)?;
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if rest.is_empty() {
                        return Ok(pos);
                    }
                    let take = left.min(rest.len() as u64);
                    pos += take as usize;
                    self.payload += take;
                    self.state = match left - take {
                        0 => ChunkState::DataEnd,
                        left => ChunkState::Data(left),
                    };
                }
                ChunkState::DataEnd => match rest {
                    [] | [b'\r'] => return Ok(pos),
                    [b'\r', b'\n', ..] => {
                        pos += 2;
                        self.state = ChunkState::Size;
                    }
                    [b'\n', ..] => {
                        pos += 1;
                        self.state = ChunkState::Size;
                    }
                    _ => return Err(RelayError::Malformed),
                },
                ChunkState::Trailers => {
                    let Some(line) = whole_line(rest, MAX_CHUNK_LINE)? else {
                        return Ok(pos);
                    };
                    pos += line.len();
                    self.trailer_bytes += line.len();
                    if self.trailer_bytes > MAX_TRAILERS {
                        return Err(RelayError::Malformed);
                    }
                    if matches!(line, b"\r\n" | b"\n") {
                        self.state = ChunkState::Done;
                    }
                }
            }
        }
    }
}

/// What a chunked body decoded so far yields next.
#[derive(Debug)]
pub enum Decoded {
    /// Payload bytes.
    Data(Bytes),
    /// The trailer fields after the last chunk (only when there are some).
    Trailers(HeaderMap),
    /// The body ended.
    End,
    /// More bytes are needed.
    NeedMore,
}

/// Decodes a chunked body from a buffer the caller fills: payload without its framing, then
/// trailers.
#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    state: ChunkState,
    /// Bytes of whole trailer lines at the start of the buffer, not yet taken.
    trailer_len: usize,
}

impl ChunkedDecoder {
    /// The next part of the body at the start of `buf`, which is advanced past it.
    ///
    /// # Errors
    /// The body breaks chunked framing, or its trailers are over 64 KiB or malformed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, RelayError> {
        loop {
            match self.state {
                ChunkState::Done => return Ok(Decoded::End),
                ChunkState::Size => {
                    let Some(line) = whole_line(buf, MAX_CHUNK_LINE)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let (len, size) = (line.len(), chunk_size(line)?);
                    buf.advance(len);
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = left.min(buf.len() as u64);
                    self.state = match left - take {
                        0 => ChunkState::DataEnd,
                        left => ChunkState::Data(left),
                    };
                    return Ok(Decoded::Data(buf.split_to(take as usize).freeze()));
                }
                ChunkState::DataEnd => match &buf[..] {
                    [] | [b'\r'] => return Ok(Decoded::NeedMore),
                    [b'\r', b'\n', ..] => {
                        buf.advance(2);
                        self.state = ChunkState::Size;
                    }
                    [b'\n', ..] => {
                        buf.advance(1);
                        self.state = ChunkState::Size;
                    }
                    _ => return Err(RelayError::Malformed),
                },
                ChunkState::Trailers => {
                    // Whole lines are counted as they arrive (the relay's limits: a line under
                    // 4 KiB, 64 KiB in all); the fields are parsed once, at the empty line.
                    let Some(line) = whole_line(&buf[self.trailer_len..], MAX_CHUNK_LINE)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let empty = matches!(line, b"\r\n" | b"\n");
                    self.trailer_len += line.len();
                    if self.trailer_len > MAX_TRAILERS {
                        return Err(RelayError::Malformed);
                    }
                    if !empty {
                        continue;
                    }
                    let len = std::mem::take(&mut self.trailer_len);
                    self.state = ChunkState::Done;
                    if len == line.len() {
                        buf.advance(len);
                        return Ok(Decoded::End);
                    }
                    let mut fields = [httparse::EMPTY_HEADER; 64];
                    let Ok(httparse::Status::Complete((parsed, fields))) =
                        httparse::parse_headers(&buf[..len], &mut fields)
                    else {
                        return Err(RelayError::Malformed);
                    };
                    if parsed != len {
                        return Err(RelayError::Malformed);
                    }
                    let mut trailers = HeaderMap::with_capacity(fields.len());
                    for field in fields {
                        let name = HeaderName::from_bytes(field.name.as_bytes())
                            .map_err(|_| RelayError::Malformed)?;
                        let value = HeaderValue::from_bytes(field.value)
                            .map_err(|_| RelayError::Malformed)?;
                        trailers.append(name, value);
                    }
                    buf.advance(len);
                    return Ok(Decoded::Trailers(trailers));
                }
            }
        }
    }
}

/// The line at the start of `bytes`, its line feed included, once whole.
fn whole_line(bytes: &[u8], max: usize) -> Result<Option<&[u8]>, RelayError> {
    match bytes.iter().position(|&b| b == b'\n') {
        Some(end) if end < max => Ok(Some(&bytes[..=end])),
        Some(_) => Err(RelayError::Malformed),
        None if bytes.len() >= max => Err(RelayError::Malformed),
        None => Ok(None),
    }
}

/// The size a chunk-size line gives (hexadecimal, before any extension).
fn chunk_size(line: &[u8]) -> Result<u64, RelayError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
    let digits = digits.trim_ascii();
    if digits.is_empty() || digits.len() > 16 {
        return Err(RelayError::Malformed);
    }
    let mut size = 0u64;
    for &digit in digits {
        let value = (digit as char).to_digit(16).ok_or(RelayError::Malformed)?;
        size = size << 4 | u64::from(value);
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(fields: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in fields {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let req = |f: &[(&'static str, &'static str)]| request_framing(&headers(f)).ok();
        assert_eq!(req(&[]), Some(Framing::Empty));
        assert_eq!(req(&[("content-length", "5")]), Some(Framing::Length(5)));
        assert_eq!(req(&[("content-length", "5, 5")]), Some(Framing::Length(5)));
        assert_eq!(
            req(&[("content-length", "5"), ("content-length", "6")]),
            None
        );
        assert_eq!(req(&[("content-length", "+5")]), None);
        assert_eq!(
            req(&[("transfer-encoding", "gzip, chunked")]),
            Some(Framing::Chunked)
        );
        assert_eq!(req(&[("transfer-encoding", "chunked, gzip")]), None);
        assert_eq!(
            req(&[("transfer-encoding", "chunked"), ("content-length", "5")]),
            None
        );

        let resp = |method: Method, status: u16, f: &[(&'static str, &'static str)]| {
            response_framing(&method, StatusCode::from_u16(status).unwrap(), &headers(f)).ok()
        };
        let length = [("content-length", "5")];
        assert_eq!(resp(Method::HEAD, 200, &length), Some(Framing::Empty));
        assert_eq!(resp(Method::GET, 204, &[]), Some(Framing::Empty));
        assert_eq!(resp(Method::GET, 304, &length), Some(Framing::Empty));
        assert_eq!(resp(Method::GET, 200, &length), Some(Framing::Length(5)));
        assert_eq!(resp(Method::GET, 200, &[]), Some(Framing::UntilClose));
        assert_eq!(
            resp(
                Method::GET,
                200,
                &[("transfer-encoding", "chunked"), ("content-length", "9")]
            ),
            Some(Framing::Chunked)
        );
        assert_eq!(
            resp(Method::GET, 200, &[("transfer-encoding", "gzip")]),
            Some(Framing::UntilClose)
        );
    }

    async fn relay(
        framing: Framing,
        input: &[u8],
        split: usize,
    ) -> (Result<u64, RelayError>, Vec<u8>, Vec<u8>) {
        // The first `split` bytes were read with the head; the rest come from the source.
        let mut buf = BytesMut::from(&input[..split]);
        let mut from = &input[split..];
        let mut to = Vec::new();
        let mut out = b"HEAD|".to_vec();
        let result = relay_body(framing, &mut buf, &mut out, &mut from, &mut to).await;
        let mut left = buf.to_vec();
        left.extend_from_slice(from);
        (result, to, left)
    }

    #[tokio::test]
    async fn bodies_are_relayed_exactly_with_their_framing() {
        let chunked = b"5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nx-trailer: t\r\n\r\nNEXT";
        for split in 0..chunked.len() {
            let (result, to, left) = relay(Framing::Chunked, chunked, split).await;
            assert_eq!(result.unwrap(), 6, "split at {split}");
            assert_eq!(to, [&b"HEAD|"[..], &chunked[..chunked.len() - 4]].concat());
            assert_eq!(left, b"NEXT");
        }
        let (result, to, left) = relay(Framing::Length(5), b"helloNEXT", 2).await;
        assert_eq!(result.unwrap(), 5);
        assert_eq!((to, left), (b"HEAD|hello".to_vec(), b"NEXT".to_vec()));
        let (result, to, _) = relay(Framing::UntilClose, b"all of it", 3).await;
        assert_eq!(result.unwrap(), 9);
        assert_eq!(to, b"HEAD|all of it");
        let (result, to, left) = relay(Framing::Empty, b"NEXT", 4).await;
        assert_eq!(result.unwrap(), 0);
        assert_eq!((to, left), (b"HEAD|".to_vec(), b"NEXT".to_vec()));
    }

    #[test]
    fn chunked_bodies_decode_in_any_split() {
        let chunked = b"5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nx-trailer: t\r\n\r\nNEXT";
        for split in 0..chunked.len() {
            let mut decoder = ChunkedDecoder::default();
            let mut buf = BytesMut::from(&chunked[..split]);
            let (mut data, mut trailers, mut fed) = (Vec::new(), None, split);
            loop {
                match decoder.decode(&mut buf).unwrap() {
                    Decoded::Data(bytes) => data.extend_from_slice(&bytes),
                    Decoded::Trailers(fields) => trailers = Some(fields),
                    Decoded::End => break,
                    Decoded::NeedMore => {
                        buf.extend_from_slice(&chunked[fed..=fed]);
                        fed += 1;
                    }
                }
            }
            assert_eq!(data, b"hello!", "split at {split}");
            assert_eq!(trailers.unwrap()["x-trailer"], "t");
            let mut left = buf.to_vec();
            left.extend_from_slice(&chunked[fed..]);
            assert_eq!(left, b"NEXT", "split at {split}");
        }
        let mut plain_end = BytesMut::from(&b"0\r\n\r\n"[..]);
        let mut decoder = ChunkedDecoder::default();
        assert!(matches!(decoder.decode(&mut plain_end), Ok(Decoded::End)));
        assert!(plain_end.is_empty());
        let mut bad = BytesMut::from(&b"3\r\nabcX"[..]);
        let mut decoder = ChunkedDecoder::default();
        assert!(matches!(decoder.decode(&mut bad), Ok(Decoded::Data(_))));
        assert!(matches!(
            decoder.decode(&mut bad),
            Err(RelayError::Malformed)
        ));
    }

    #[tokio::test]
    async fn broken_bodies_are_errors() {
        let (result, ..) = relay(Framing::Length(10), b"short", 0).await;
        assert!(matches!(result, Err(RelayError::Read(_))));
        let (result, ..) = relay(Framing::Chunked, b"5\r\nhello\r\n", 0).await;
        assert!(matches!(result, Err(RelayError::Read(_))));
        for bad in [
            &b"z\r\n"[..],
            b"5\r\nhelloXX",
            b"11111111111111111\r\n",
            &[b'1'; MAX_CHUNK_LINE + 1],
        ] {
            let (result, ..) = relay(Framing::Chunked, bad, 0).await;
            assert!(matches!(result, Err(RelayError::Malformed)), "{bad:?}");
        }
        let endless_trailers = [&b"0\r\n"[..], &b"x: y\r\n".repeat(MAX_TRAILERS)].concat();
        let (result, ..) = relay(Framing::Chunked, &endless_trailers, 0).await;
        assert!(matches!(result, Err(RelayError::Malformed)));
    }
}
