//! Serving HTTP on a [`Listener`] with a hyper service, in a few lines.

use std::{error::Error as StdError, future::Future};

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;
use tokio_util::task::TaskTracker;

use crate::{Error, Listener};

/// Serves HTTP/1.1 (with upgrades, so WebSockets work) on every connection of `listener` with
/// `service`, until `shutdown` resolves or the listener fails for good.
///
/// On shutdown the server is told to send nothing new (GoAway), requests in flight finish, and
/// the session is flushed and closed: bound the call with a timeout for a grace period.
///
/// ```no_run
/// # async fn example() -> Result<(), piko::Error> {
/// use std::convert::Infallible;
///
/// use http_body_util::Full;
/// use hyper::{Request, Response, body::{Bytes, Incoming}, service::service_fn};
///
/// let listener = piko::Upstream::new("http://localhost:8001").listen("hello").await?;
/// let hello = service_fn(|_: Request<Incoming>| async {
///     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("hello\n"))))
/// });
/// piko::serve_http(listener, hello, tokio::signal::ctrl_c()).await?;
/// # Ok(()) }
/// ```
///
/// # Errors
/// The listener failed for good (a reconnect refused with a non-retryable status).
pub async fn serve_http<S, B, F>(
    mut listener: Listener,
    service: S,
    shutdown: F,
) -> Result<(), Error>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
    F: Future + Send,
{
    let connections = TaskTracker::new();
    let stopping = tokio_util::sync::CancellationToken::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let result = loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(stream) => stream,
                Err(Error::Closed) => break Ok(()),
                Err(err) => break Err(err),
            },
        };
        let (service, stopping) = (service.clone(), stopping.clone());
        connections.spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = stopping.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    };
    listener.close();
    stopping.cancel();
    connections.close();
    connections.wait().await;
    listener.finish().await;
    result
}
