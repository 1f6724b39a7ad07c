//! The benchmark's upstreams: SDK listeners on the server's upstream port, each answering every
//! request with its body.

use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::{
    Request, Response,
    body::{Bytes, Incoming},
    service::service_fn,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Running echo upstreams. Dropping them stops them without waiting.
#[derive(Debug)]
pub(super) struct EchoUpstreams {
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl EchoUpstreams {
    /// Registers `upstreams` listeners on `endpoint-0` to `endpoint-<endpoints - 1>` in turn, each
    /// given `timeout` to connect, as Piko does; one that cannot connect ends the benchmark.
    pub(super) async fn start(
        url: &str,
        upstreams: u64,
        endpoints: u64,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let running = Self {
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        };
        let upstream = piko::Upstream::new(url);
        for i in 0..upstreams {
            let endpoint = format!("endpoint-{}", i % endpoints);
            let listener = match tokio::time::timeout(timeout, upstream.listen(&endpoint)).await {
                Ok(Ok(listener)) => listener,
                Ok(Err(err)) => anyhow::bail!("http upstream: listen: {endpoint}: {err}"),
                Err(_) => anyhow::bail!(
                    "http upstream: listen: {endpoint}: not connected within {timeout:?}"
                ),
            };
            tracing::debug!(subsystem = "bench", endpoint_id = %endpoint, "starting upstream");
            let stop = running.stop.clone().cancelled_owned();
            running.tasks.spawn(async move {
                if let Err(err) = piko::serve_http(listener, service_fn(echo), stop).await {
                    tracing::error!(subsystem = "bench", endpoint_id = %endpoint, error = %err, "upstream failed");
                }
            });
        }
        Ok(running)
    }

    /// Leaves the server gracefully (so it sees departures, not failures), waiting at most
    /// `grace`.
    pub(super) async fn stop(&self, grace: Duration) {
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(subsystem = "bench", "upstreams did not stop in time");
        }
    }
}

impl Drop for EchoUpstreams {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Answers 200 with the request's body. The body is read whole first, as Piko's handler does, so
/// the response has a `Content-Length`.
async fn echo(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let body = request.into_body().collect().await?.to_bytes();
    Ok(Response::new(Full::new(body)))
}
