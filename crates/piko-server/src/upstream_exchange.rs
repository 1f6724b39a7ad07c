//! A request without a body sent to an upstream over its own stream, without an HTTP client
//! connection: the head goes out in one write, the response head is parsed, and the response body
//! is decoded from the stream as the client reads it. Requests with a body keep hyper's client,
//! which sends the body while the response may already be arriving; upgrades keep it too.

use std::{
    pin::Pin,
    task::{Context, Poll, Waker},
};

use bytes::{Bytes, BytesMut};
use hyper::body::{Frame, SizeHint};
use piko_http::{
    body_framing::{ChunkedDecoder, Decoded, Framing, response_framing},
    message_head::{HeadError, parse_response, read_head, write_request_head},
};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::serve::BoxError;

/// Largest response head accepted from an upstream (hyper's client allows about 400 KiB).
const MAX_RESPONSE_HEAD: usize = 1 << 20;
/// What a read of the response body asks for.
const READ_SIZE: usize = 64 * 1024;

/// Sends `request`'s head on `stream` and reads the upstream's response head; informational
/// responses are skipped, as hyper's client does.
///
/// # Errors
/// The stream failed or ended first, or the head was malformed, too large, a `101` nobody asked
/// for, or framed contradictorily.
pub(crate) async fn exchange(
    mut stream: piko_mux::Stream,
    request: &http::request::Parts,
) -> Result<http::Response<UpstreamBody>, HeadError> {
    let mut head = Vec::with_capacity(512);
    let target = request.uri.path_and_query().map_or("/", |p| p.as_str());
    write_request_head(&mut head, &request.method, target, &request.headers);
    stream.write_all(&head).await?;
    let mut buf = BytesMut::with_capacity(8 * 1024);
    loop {
        let (response, len) =
            read_head(&mut stream, &mut buf, MAX_RESPONSE_HEAD, parse_response).await?;
        let _ = buf.split_to(len);
        let status = response.status();
        if status == http::StatusCode::SWITCHING_PROTOCOLS {
            return Err(HeadError::Malformed);
        }
        if status.is_informational() {
            continue;
        }
        let framing = response_framing(&request.method, status, response.headers())
            .map_err(|_| HeadError::Malformed)?;
        let (parts, ()) = response.into_parts();
        let left = match framing {
            Framing::Length(length) => length,
            _ => 0,
        };
        let body = UpstreamBody {
            stream: Some(stream),
            buf,
            framing,
            left,
            chunks: ChunkedDecoder::default(),
            ended: framing == Framing::Empty,
        };
        return Ok(http::Response::from_parts(parts, body));
    }
}

/// A response body read from its stream. Finished, the stream is closed cleanly (FIN); dropped
/// before its end (the client went away), the stream is reset so the upstream stops too.
pub(crate) struct UpstreamBody {
    stream: Option<piko_mux::Stream>,
    buf: BytesMut,
    framing: Framing,
    /// Bytes left of a `Content-Length` body.
    left: u64,
    chunks: ChunkedDecoder,
    ended: bool,
}

impl UpstreamBody {
    /// The next part of the body already in the buffer.
    fn decode(&mut self) -> Result<Decoded, BoxError> {
        if self.ended {
            return Ok(Decoded::End);
        }
        let decoded = match self.framing {
            Framing::Empty => Decoded::End,
            Framing::Length(_) if !self.buf.is_empty() => {
                let take = self.left.min(self.buf.len() as u64);
                self.left -= take;
                Decoded::Data(self.buf.split_to(take as usize).freeze())
            }
            Framing::UntilClose if !self.buf.is_empty() => Decoded::Data(self.buf.split().freeze()),
            Framing::Length(_) | Framing::UntilClose => Decoded::NeedMore,
            Framing::Chunked => self.chunks.decode(&mut self.buf)?,
        };
        // A length body ends with its last byte: `ended` is set then, not on a poll after it.
        if matches!(decoded, Decoded::End)
            || (matches!(self.framing, Framing::Length(_)) && self.left == 0)
        {
            self.ended = true;
        }
        Ok(decoded)
    }

    /// Closes the stream cleanly once the body is whole.
    fn finish(&mut self) {
        if let Some(mut stream) = self.stream.take() {
            // The mux's shutdown completes at once: it queues a FIN.
            let _ = Pin::new(&mut stream).poll_shutdown(&mut Context::from_waker(Waker::noop()));
        }
    }
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match this.decode() {
                Err(err) => return Poll::Ready(Some(Err(err))),
                Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Decoded::Trailers(trailers)) => {
                    // Trailers end a chunked body: hyper drops it without polling again.
                    this.ended = true;
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Ok(Decoded::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
            }
            let Some(stream) = this.stream.as_mut() else {
                return Poll::Ready(None);
            };
            if this.buf.capacity() - this.buf.len() < 4 * 1024 {
                this.buf.reserve(READ_SIZE);
            }
            match std::task::ready!(tokio_util::io::poll_read_buf(
                Pin::new(stream),
                cx,
                &mut this.buf
            )) {
                Ok(0) if this.framing == Framing::UntilClose => {
                    this.ended = true;
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
                    return Poll::Ready(Some(Err(eof.into())));
                }
                Ok(_) => {}
                Err(err) => return Poll::Ready(Some(Err(err.into()))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Empty => SizeHint::with_exact(0),
            Framing::Length(_) => SizeHint::with_exact(self.left),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body hyper knows to be empty is never polled: it is whole all the same.
        if self.ended {
            self.finish();
        }
    }
}
