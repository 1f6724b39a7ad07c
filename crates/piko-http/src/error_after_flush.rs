//! A relayed body whose failure reaches the connection writing it only after that connection has
//! had a chance to flush.
//!
//! hyper's HTTP/1 server buffers a response head and the body bytes it is given, and writes the
//! buffer out when the body has nothing more for now. A body error aborts the connection at once,
//! so the head and the last bytes before the error, still in the buffer, are never written: a
//! service that answers and then resets its connection would look to the client like a server
//! that closed without a word. Reporting the error one poll late (the body wakes itself and
//! answers `Pending` first) lets hyper flush what came before it; then the failure cuts the
//! body, as it must.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use hyper::body::{Body, Frame, SizeHint};

/// Wraps a body; see the module documentation.
#[derive(Debug)]
pub struct ErrorAfterFlush<B: Body> {
    inner: B,
    failed: Option<B::Error>,
}

impl<B: Body> ErrorAfterFlush<B> {
    /// Wraps `inner`.
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            failed: None,
        }
    }
}

impl<B: Body + Unpin> Body for ErrorAfterFlush<B>
where
    B::Error: Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        if let Some(err) = self.failed.take() {
            return Poll::Ready(Some(Err(err)));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Err(err))) => {
                self.failed = Some(err);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// One chunk, then a failure.
    struct ChunkThenError(Option<Bytes>);

    impl Body for ChunkThenError {
        type Data = Bytes;
        type Error = &'static str;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, &'static str>>> {
            Poll::Ready(Some(match self.0.take() {
                Some(chunk) => Ok(Frame::data(chunk)),
                None => Err("reset"),
            }))
        }
    }

    #[test]
    fn the_error_comes_after_a_pending_poll_and_is_not_lost() {
        let mut body = ErrorAfterFlush::new(ChunkThenError(Some(Bytes::from_static(b"last"))));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut cx) else {
            panic!("the chunk first");
        };
        assert_eq!(frame.into_data().unwrap(), "last");
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        assert!(!body.is_end_stream());
        assert!(matches!(
            Pin::new(&mut body).poll_frame(&mut cx),
            Poll::Ready(Some(Err("reset")))
        ));
    }
}
