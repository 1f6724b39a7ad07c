//! `piko agent`.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use piko_agent::{ClientTls, HttpConfig, Target};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{access_log_config, config_file, duration, logging, signal};

/// Subsystem of the agent's access-log records.
const AGENT_ACCESS_LOG: &str = "proxy.http.access";

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Start every listener of the config file's `listeners:`.
    Start(Shared),
    /// Forward an endpoint's HTTP traffic to a local service: `piko agent http <endpoint> <addr>`.
    Http(HttpArgs),
}

/// Flags every agent command shares. A flag given overrides the config file, which overrides
/// the default.
#[derive(Debug, clap::Args)]
pub(crate) struct Shared {
    /// YAML config file (Piko's format).
    #[arg(long = "config.path")]
    config_path: Option<PathBuf>,
    /// Expand `$VAR`, `${VAR}` and `${VAR:default}` in the config file.
    #[arg(long = "config.expand-env", num_args = 0..=1, default_missing_value = "true")]
    config_expand_env: Option<bool>,
    /// The server's upstream-port URL [default: http://localhost:8001].
    #[arg(long = "connect.url")]
    url: Option<String>,
    /// Token sent as `Authorization: Bearer <token>`.
    #[arg(long = "connect.token")]
    token: Option<String>,
    /// Deadline for each listener's first connection, retries included [default: 30s].
    #[arg(long = "connect.timeout", value_parser = duration::parse)]
    timeout: Option<Duration>,
    /// Minimum level logged: debug, info, warn or error [default: info].
    #[arg(long = "log.level")]
    log_level: Option<String>,
    /// Subsystems logged at every level whatever `--log.level` says (exact names, such as
    /// `proxy.http`); comma-separated, repeatable.
    #[arg(long = "log.subsystems", value_delimiter = ',')]
    log_subsystems: Vec<String>,
    /// Log line format: Piko's JSON lines, or text for reading in a terminal.
    #[arg(long = "log.format", value_enum, default_value = "json")]
    log_format: logging::Format,
    /// Longest a graceful shutdown may take [default: 1m].
    #[arg(long = "grace-period", value_parser = duration::parse)]
    grace_period: Option<Duration>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct HttpArgs {
    /// The endpoint to serve.
    endpoint: String,
    /// The local service: a port (`3000`), `host:port`, or a URL (`http://host:port/prefix`).
    addr: String,
    /// Per-request timeout, and the timeout to connect to the local service [default: 10s].
    #[arg(long = "timeout", value_parser = duration::parse)]
    request_timeout: Option<Duration>,
    /// Level of the access log's records (5xx responses are at least warn) [default: info].
    #[arg(long = "access-log.level")]
    access_log_level: Option<String>,
    /// No access log.
    #[arg(long = "access-log.disable", num_args = 0..=1, default_missing_value = "true")]
    access_log_disable: Option<bool>,
    /// Request headers to log (all others are not); comma-separated, repeatable.
    #[arg(long = "access-log.request-headers.allow-list", value_delimiter = ',')]
    request_allow: Vec<String>,
    /// Request headers not to log; comma-separated, repeatable.
    #[arg(long = "access-log.request-headers.block-list", value_delimiter = ',')]
    request_block: Vec<String>,
    /// Response headers to log (all others are not); comma-separated, repeatable.
    #[arg(long = "access-log.response-headers.allow-list", value_delimiter = ',')]
    response_allow: Vec<String>,
    /// Response headers not to log; comma-separated, repeatable.
    #[arg(long = "access-log.response-headers.block-list", value_delimiter = ',')]
    response_block: Vec<String>,
    #[command(flatten)]
    shared: Shared,
}

/// One listener to run.
struct ListenerSpec {
    endpoint: String,
    http: HttpConfig,
}

fn listener_from_file(entry: &config_file::Listener) -> anyhow::Result<ListenerSpec> {
    let endpoint = entry.endpoint_id.clone().filter(|e| !e.is_empty());
    let name = endpoint.clone().unwrap_or_default();
    let fail = |reason: &str| anyhow::anyhow!("config: listener: {name}: {reason}");
    let endpoint = endpoint.ok_or_else(|| fail("missing endpoint id"))?;
    let addr = entry
        .addr
        .as_deref()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| fail("missing addr"))?;
    match entry.protocol.as_deref().unwrap_or("http") {
        "http" => {}
        "tcp" => return Err(fail("tcp listeners: not supported yet")),
        _ => return Err(fail("unsupported protocol")),
    }
    // Piko requires a timeout in files (no default there), and so do we.
    let timeout = entry
        .timeout
        .map(|t| t.0)
        .filter(|t| !t.is_zero())
        .ok_or_else(|| fail("missing timeout"))?;
    let target = Target::parse(addr).map_err(|err| fail(&err.to_string()))?;
    let nonempty = |v: &Option<String>| v.clone().filter(|v| !v.is_empty()).map(PathBuf::from);
    let tls = ClientTls {
        root_cas: nonempty(&entry.tls.root_cas),
        cert: nonempty(&entry.tls.cert),
        key: nonempty(&entry.tls.key),
        insecure_skip_verify: entry.tls.insecure_skip_verify.unwrap_or(false),
    };
    let tls = tls
        .client_config()
        .map_err(|err| fail(&format!("tls: {err}")))?;
    let access_log = access_log_config::build(
        &entry.access_log,
        access_log_config::Overrides::default(),
        AGENT_ACCESS_LOG,
        &format!("listener: {endpoint}"),
    )?;
    let mut http = HttpConfig {
        timeout,
        tls,
        access_log,
        ..HttpConfig::new(target)
    };
    if let Some(idle) = entry
        .http_client
        .idle_conn_timeout
        .map(|d| d.0)
        .filter(|d| !d.is_zero())
    {
        http.idle_conn_timeout = idle;
    }
    if let Some(period) = entry
        .http_client
        .keep_alive_timeout
        .map(|d| d.0)
        .filter(|d| !d.is_zero())
    {
        http.keep_alive_timeout = period;
    }
    match entry.http_client.max_idle_conns {
        Some(-1) => http.max_idle_conns = usize::MAX,
        Some(n) if n > 0 => http.max_idle_conns = n as usize,
        _ => {}
    }
    Ok(ListenerSpec { endpoint, http })
}

pub(crate) async fn run(command: Command) -> anyhow::Result<()> {
    let (shared, from_command) = match command {
        Command::Start(shared) => (shared, None),
        Command::Http(HttpArgs {
            endpoint,
            addr,
            request_timeout,
            access_log_level,
            access_log_disable,
            request_allow,
            request_block,
            response_allow,
            response_block,
            shared,
        }) => {
            let access_log = access_log_config::Overrides {
                level: access_log_level,
                disable: access_log_disable,
                request_allow,
                request_block,
                response_allow,
                response_block,
            };
            (shared, Some((endpoint, addr, request_timeout, access_log)))
        }
    };
    let file: config_file::AgentFile = match &shared.config_path {
        Some(path) => config_file::load(path, shared.config_expand_env.unwrap_or(false))?,
        None => config_file::AgentFile::default(),
    };
    let ignored = file.check().context("config")?;
    let url = shared
        .url
        .or(file.connect.url)
        .unwrap_or_else(|| "http://localhost:8001".into());
    if url.is_empty() {
        anyhow::bail!("config: connect: missing url");
    }
    let token = shared
        .token
        .or(file.connect.token)
        .filter(|t| !t.is_empty());
    let connect_timeout = shared
        .timeout
        .or(file.connect.timeout.map(|d| d.0))
        .unwrap_or(Duration::from_secs(30));
    if connect_timeout.is_zero() {
        anyhow::bail!("config: connect: missing timeout");
    }
    let grace_period = shared
        .grace_period
        .or(file.grace_period.map(|d| d.0))
        .unwrap_or(Duration::from_secs(60));
    if grace_period.is_zero() {
        anyhow::bail!("config: missing grace period");
    }
    // `agent http` replaces the file's listeners with its own (validated, unlike Piko's).
    let listeners = match from_command {
        Some((endpoint, addr, request_timeout, access_log)) => {
            let target =
                Target::parse(&addr).with_context(|| format!("config: listener: {endpoint}"))?;
            let timeout = request_timeout.unwrap_or(Duration::from_secs(10));
            let context = format!("listener: {endpoint}");
            let access_log = access_log_config::build(
                &config_file::AccessLog::default(),
                access_log,
                AGENT_ACCESS_LOG,
                &context,
            )?;
            vec![ListenerSpec {
                endpoint,
                http: HttpConfig {
                    timeout,
                    access_log,
                    ..HttpConfig::new(target)
                },
            }]
        }
        None => file
            .listeners
            .iter()
            .flatten()
            .map(listener_from_file)
            .collect::<anyhow::Result<_>>()?,
    };
    if listeners.is_empty() {
        anyhow::bail!("no listeners configured");
    }
    let log_format = shared.log_format;
    let log_level = shared
        .log_level
        .or(file.log.level)
        .unwrap_or_else(|| "info".into());
    let log_subsystems = logging::subsystems(shared.log_subsystems, file.log.subsystems.clone());
    logging::init(&log_level, log_subsystems, log_format)
        .map_err(|err| anyhow::anyhow!("config: log: {err}"))?;
    tracing::info!(version = crate::VERSION, "starting piko agent");
    for key in ignored {
        tracing::warn!(key, "config key not supported yet; ignored");
    }

    let mut upstream = piko::Upstream::new(&url);
    if let Some(token) = &token {
        upstream = upstream.token(token);
    }
    // Listeners connect concurrently, each within the connect timeout.
    let mut connecting = JoinSet::new();
    for spec in listeners {
        let upstream = upstream.clone();
        connecting.spawn(async move {
            let listened =
                tokio::time::timeout(connect_timeout, upstream.listen(&spec.endpoint)).await;
            match listened {
                Ok(Ok(listener)) => Ok((listener, spec)),
                Ok(Err(err)) => Err(anyhow::anyhow!("listen: {}: {err}", spec.endpoint)),
                Err(_) => Err(anyhow::anyhow!(
                    "listen: {}: connect: timed out",
                    spec.endpoint
                )),
            }
        });
    }
    let stop = CancellationToken::new();
    let mut serving = JoinSet::new();
    while let Some(connected) = connecting.join_next().await {
        let (listener, spec) = connected.context("listener task")??;
        serving.spawn(piko_agent::serve_http(listener, spec.http, stop.clone()));
    }

    // Run until a signal, or until every listener has stopped (each failure is logged; the
    // agent fails only when none is left).
    // Created once: a signal arriving between loop turns is not lost.
    let mut shutdown = std::pin::pin!(signal::shutdown());
    let mut failed = false;
    loop {
        tokio::select! {
            ended = serving.join_next() => match ended {
                None => break,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(err))) => {
                    tracing::error!(error = %err, "listener stopped");
                    failed = true;
                }
                Some(Err(err)) => {
                    tracing::error!(error = %err, "listener task failed");
                    failed = true;
                }
            },
            signal = &mut shutdown => {
                tracing::info!(signal, "received shutdown signal");
                stop.cancel();
                if tokio::time::timeout(grace_period, async { while serving.join_next().await.is_some() {} }).await.is_err() {
                    tracing::warn!("grace period expired; exiting with requests in flight");
                }
                return Ok(());
            }
        }
    }
    if failed {
        anyhow::bail!("every listener stopped");
    }
    Ok(())
}
