//! `piko agent`.

use std::time::Duration;

use anyhow::Context as _;
use piko_agent::{HttpConfig, Target};
use tokio_util::sync::CancellationToken;

use crate::{duration, logging, signal};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Forward an endpoint's HTTP traffic to a local service: `piko agent http <endpoint> <addr>`.
    Http(HttpArgs),
}

/// Flags every agent command shares (Piko's `connect.*`, `log.*`, `grace-period`).
#[derive(Debug, clap::Args)]
pub(crate) struct Connect {
    /// The server's upstream-port URL.
    #[arg(long = "connect.url", default_value = "http://localhost:8001")]
    url: String,
    /// Token sent as `Authorization: Bearer <token>`.
    #[arg(long = "connect.token")]
    token: Option<String>,
    /// Deadline for each listener's first connection, retries included.
    #[arg(long = "connect.timeout", default_value = "30s", value_parser = duration::parse)]
    timeout: Duration,
    /// Minimum level logged: debug, info, warn or error.
    #[arg(long = "log.level", default_value = "info")]
    log_level: String,
    /// Longest a graceful shutdown may take.
    #[arg(long = "grace-period", default_value = "1m", value_parser = duration::parse)]
    grace_period: Duration,
}

#[derive(Debug, clap::Args)]
pub(crate) struct HttpArgs {
    /// The endpoint to serve.
    endpoint: String,
    /// The local service: a port (`3000`), `host:port`, or a URL (`http://host:port/prefix`).
    addr: String,
    /// Per-request timeout, and the timeout to connect to the local service.
    #[arg(long = "timeout", default_value = "10s", value_parser = duration::parse)]
    request_timeout: Duration,
    #[command(flatten)]
    connect: Connect,
}

pub(crate) async fn run(command: Command) -> anyhow::Result<()> {
    let Command::Http(args) = command;
    let connect = &args.connect;
    if connect.timeout.is_zero() {
        anyhow::bail!("config: connect: missing timeout");
    }
    if connect.grace_period.is_zero() {
        anyhow::bail!("config: missing grace period");
    }
    let target = Target::parse(&args.addr)
        .with_context(|| format!("config: listener: {}", args.endpoint))?;
    if target.is_https() {
        anyhow::bail!(
            "config: listener: {}: https targets: not supported yet",
            args.endpoint
        );
    }
    logging::init(&connect.log_level).map_err(|err| anyhow::anyhow!("config: log: {err}"))?;
    tracing::info!(version = crate::VERSION, "starting piko agent");

    let mut upstream = piko::Upstream::new(&connect.url);
    if let Some(token) = &connect.token {
        upstream = upstream.token(token);
    }
    let listener = tokio::time::timeout(connect.timeout, upstream.listen(&args.endpoint))
        .await
        .map_err(|_| anyhow::anyhow!("listen: {}: connect: timed out", args.endpoint))?
        .with_context(|| format!("listen: {}", args.endpoint))?;

    let config = HttpConfig {
        timeout: args.request_timeout,
        ..HttpConfig::new(target)
    };
    let stop = CancellationToken::new();
    let serving = tokio::spawn(piko_agent::serve_http(listener, config, stop.clone()));
    tokio::pin!(serving);
    tokio::select! {
        result = &mut serving => return result.context("listener task")?.context("serve"),
        signal = signal::shutdown() => tracing::info!(signal, "received shutdown signal"),
    }
    stop.cancel();
    match tokio::time::timeout(connect.grace_period, serving).await {
        Ok(result) => result.context("listener task")?.context("serve"),
        Err(_) => {
            tracing::warn!("grace period expired; exiting with requests in flight");
            Ok(())
        }
    }
}
