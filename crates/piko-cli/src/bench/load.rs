//! The load: concurrent clients, each sending its share of the requests one after another on a
//! keep-alive connection, checking every echo and timing every success.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, StatusCode, Uri, body::Bytes};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use piko_protocol::wire::ENDPOINT_HEADER;
use tokio::task::JoinSet;

use super::{Settings, latency::Histogram};

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Where the requests go and what they carry.
#[derive(Debug)]
pub(super) struct Target {
    url: Uri,
    /// Endpoints a request may pick.
    endpoints: u64,
    /// Endpoints that have an upstream (fewer upstreams than endpoints leave some without).
    served: u64,
    size: usize,
    timeout: Duration,
    connector: HttpsConnector<HttpConnector>,
}

/// What some requests came to.
#[derive(Debug, Default)]
pub(super) struct Outcome {
    pub(super) succeeded: u64,
    pub(super) failed: u64,
    /// Of the successes only: a failure's latency says nothing about the server (a refused
    /// connection fails in microseconds).
    pub(super) latency: Histogram,
    pub(super) elapsed: Duration,
}

impl Outcome {
    fn merge(&mut self, other: &Self) {
        self.succeeded += other.succeeded;
        self.failed += other.failed;
        self.latency.merge(&other.latency);
    }
}

/// Why a request failed.
enum Failure {
    Request(String),
    Timeout,
    Status(StatusCode),
    Read(String),
    Mismatch,
}

impl Target {
    pub(super) fn new(settings: &Settings) -> anyhow::Result<Arc<Self>> {
        // Go's default transport: the system's roots, HTTP/2 when TLS offers it.
        let tls = piko::ClientTls::default()
            .config_or_system()
            .context("tls")?;
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Ok(Arc::new(Self {
            url: settings.proxy_url.clone(),
            endpoints: settings.endpoints,
            served: settings.endpoints.min(settings.upstreams),
            size: settings.size,
            timeout: settings.timeout,
            connector,
        }))
    }

    /// A client with its own connection pool, so each benchmark client keeps its own
    /// connection as Piko's do.
    fn client(&self) -> HttpClient {
        Client::builder(TokioExecutor::new()).build(self.connector.clone())
    }

    /// Waits, for the timeout at most, until every endpoint with an upstream is routed. The
    /// server adds an upstream to its routing table only after answering its handshake (and a
    /// cluster's other nodes learn of it later still), so the first requests could otherwise
    /// get 502s that say nothing about the server's performance. Anything but a 200 or a 502
    /// ends the wait: a proxy that cannot be reached is the run's to report.
    pub(super) async fn wait_until_routable(&self) {
        let http = self.client();
        let deadline = tokio::time::Instant::now() + self.timeout;
        for endpoint in 0..self.served {
            let endpoint = format!("endpoint-{endpoint}");
            loop {
                let probe = exchange(&http, &self.url, &endpoint, Bytes::new());
                match tokio::time::timeout_at(deadline, probe).await {
                    Ok(Ok(())) => break,
                    Ok(Err(Failure::Status(StatusCode::BAD_GATEWAY)))
                        if tokio::time::Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    _ => {
                        tracing::warn!(subsystem = "bench", endpoint_id = %endpoint, "endpoint not routable; starting anyway");
                        return;
                    }
                }
            }
        }
    }
}

/// Sends `requests` split evenly over `clients` (the remainder over the first ones), all at
/// once, and waits for the last.
pub(super) async fn run(
    target: &Arc<Target>,
    requests: u64,
    clients: u64,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..clients {
        let share = requests / clients + u64::from(i < requests % clients);
        tasks.spawn(client(Arc::clone(target), share));
    }
    let mut total = Outcome::default();
    while let Some(done) = tasks.join_next().await {
        total.merge(&done.context("benchmark client failed")?);
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

async fn client(target: Arc<Target>, requests: u64) -> Outcome {
    tracing::debug!(subsystem = "bench", requests, "starting client");
    let http = target.client();
    let mut outcome = Outcome::default();
    for _ in 0..requests {
        let endpoint = format!("endpoint-{}", rand::random_range(0..target.endpoints));
        let mut body = vec![0; target.size];
        rand::fill(&mut body[..]);
        let started = Instant::now();
        let exchanged = exchange(&http, &target.url, &endpoint, Bytes::from(body));
        let result = tokio::time::timeout(target.timeout, exchanged)
            .await
            .unwrap_or(Err(Failure::Timeout));
        match result {
            Ok(()) => {
                outcome.succeeded += 1;
                outcome.latency.record(started.elapsed());
            }
            Err(failure) => {
                outcome.failed += 1;
                log(&failure, &endpoint, target.timeout);
            }
        }
    }
    outcome
}

/// One request, and the check that its response echoes its body.
async fn exchange(
    http: &HttpClient,
    url: &Uri,
    endpoint: &str,
    body: Bytes,
) -> Result<(), Failure> {
    let request = Request::get(url.clone())
        .header(ENDPOINT_HEADER, endpoint)
        .body(Full::new(body.clone()))
        .map_err(|err| Failure::Request(err.to_string()))?;
    let response = http
        .request(request)
        .await
        // The error's sources say what failed (`client error (Connect)` alone does not).
        .map_err(|err| Failure::Request(format!("{:#}", anyhow::Error::from(err))))?;
    if response.status() != StatusCode::OK {
        return Err(Failure::Status(response.status()));
    }
    let echoed = response
        .into_body()
        .collect()
        .await
        .map_err(|err| Failure::Read(err.to_string()))?
        .to_bytes();
    if echoed != body {
        return Err(Failure::Mismatch);
    }
    Ok(())
}

/// Logs a failure with Piko's messages.
fn log(failure: &Failure, endpoint: &str, timeout: Duration) {
    match failure {
        Failure::Request(err) => {
            tracing::warn!(subsystem = "bench", endpoint_id = endpoint, error = %err, "request");
        }
        Failure::Timeout => {
            tracing::warn!(subsystem = "bench", endpoint_id = endpoint, error = %format!("no response within {timeout:?}"), "request");
        }
        Failure::Status(status) => {
            tracing::warn!(
                subsystem = "bench",
                endpoint_id = endpoint,
                status = status.as_u16(),
                "bad status"
            );
        }
        Failure::Read(err) => {
            tracing::warn!(subsystem = "bench", endpoint_id = endpoint, error = %err, "read");
        }
        Failure::Mismatch => {
            tracing::error!(
                subsystem = "bench",
                endpoint_id = endpoint,
                "unexpected response body"
            );
        }
    }
}
