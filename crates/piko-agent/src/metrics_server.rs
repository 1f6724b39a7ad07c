//! The agent's metrics server (`server.enabled`): `GET /metrics`, nothing else (spec §10.3).

use std::{convert::Infallible, sync::Arc};

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use piko_http::{
    body::{Body, full},
    prometheus_text,
};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::AgentMetrics;

/// Serves `metrics` on `listener` until `stop` is cancelled; scrapes in progress finish.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<AgentMetrics>,
    stop: CancellationToken,
) {
    let connections = TaskTracker::new();
    loop {
        let tcp = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(err) => {
                    tracing::warn!(subsystem = "server", error = %err, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (metrics, stop) = (metrics.clone(), stop.clone());
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let response = answer(&metrics, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
}

fn answer(metrics: &AgentMetrics, request: &Request<Incoming>) -> Response<Body> {
    if request.method() != Method::GET || request.uri().path() != "/metrics" {
        let mut response = Response::new(full("404 page not found\n"));
        *response.status_mut() = StatusCode::NOT_FOUND;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return response;
    }
    prometheus_text::scrape_response(metrics.render())
}
