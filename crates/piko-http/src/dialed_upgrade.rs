//! The socket under a connection that a hyper client dialed and then upgraded, so that a relay
//! whose other side failed can pass the failure on as a reset rather than a clean close.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

/// What an `HttpsConnector<HttpConnector>` client connects with.
pub type DialedIo = MaybeHttpsStream<TokioIo<TcpStream>>;

/// A dialed connection after its `101`, taken out of hyper: a byte stream like hyper's
/// [`Upgraded`], whose socket can be reached.
#[derive(Debug)]
pub struct DialedUpgrade {
    io: TokioIo<DialedIo>,
    /// Bytes that came with the `101`: the first of the tunnel's, read before any other.
    read_buf: Bytes,
}

impl DialedUpgrade {
    /// Unwraps `upgraded`, or gives it back if it is not a dialed connection.
    ///
    /// # Errors
    /// `upgraded` runs over something else.
    pub fn unwrap(upgraded: Upgraded) -> Result<Self, Upgraded> {
        let parts = upgraded.downcast::<DialedIo>()?;
        Ok(Self {
            io: TokioIo::new(parts.io),
            read_buf: parts.read_buf,
        })
    }

    /// The TCP connection, under TLS if any.
    pub fn tcp(&self) -> &TcpStream {
        match self.io.inner() {
            MaybeHttpsStream::Http(tcp) => tcp.inner(),
            MaybeHttpsStream::Https(tls) => tls.inner().get_ref().0.inner().inner(),
        }
    }
}

impl AsyncRead for DialedUpgrade {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read_buf.is_empty() {
            let n = self.read_buf.len().min(buf.remaining());
            let first = self.read_buf.split_to(n);
            buf.put_slice(&first);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for DialedUpgrade {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
