//! A response body that counts the bytes written and reports them when it is dropped (written in
//! full, or abandoned by the client): what request metrics observe as the response size.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};

use crate::body::{Body, BoxError};

/// `body`, reporting to `on_drop` the data bytes polled from it (`None` when there were none).
pub struct CountedBody<F: FnOnce(Option<u64>)> {
    body: Body,
    written: Option<u64>,
    on_drop: Option<F>,
}

impl<F: FnOnce(Option<u64>)> CountedBody<F> {
    /// Wraps `body`.
    pub fn new(body: Body, on_drop: F) -> Self {
        Self {
            body,
            written: None,
            on_drop: Some(on_drop),
        }
    }
}

impl<F: FnOnce(Option<u64>)> std::fmt::Debug for CountedBody<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountedBody")
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl<F: FnOnce(Option<u64>) + Unpin> hyper::body::Body for CountedBody<F> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = std::task::ready!(Pin::new(&mut self.body).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
        {
            *self.written.get_or_insert(0) += data.len() as u64;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<F: FnOnce(Option<u64>)> Drop for CountedBody<F> {
    fn drop(&mut self) {
        if let Some(on_drop) = self.on_drop.take() {
            on_drop(self.written);
        }
    }
}
