//! `piko agent`.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use piko_agent::{AgentMetrics, ClientTls, HttpConfig, Target, TcpConfig, tcp_addr};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{
    access_log_config,
    common_flags::{ConfigFlags, ConnectTlsFlags, LogFlags},
    config_file, duration, signal,
};

/// Subsystem of the agent's access-log records.
const AGENT_ACCESS_LOG: &str = "proxy.http.access";

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Start every listener of the config file's `listeners:`.
    Start(Shared),
    /// Forward an endpoint's HTTP traffic to a local service: `piko agent http <endpoint> <addr>`.
    Http(HttpArgs),
    /// Forward an endpoint's TCP connections to a local port: `piko agent tcp <endpoint> <addr>`.
    Tcp(TcpArgs),
}

/// Flags every agent command shares. A flag given overrides the config file, which overrides
/// the default.
#[derive(Debug, clap::Args)]
pub(crate) struct Shared {
    #[command(flatten)]
    config: ConfigFlags,
    /// The server's upstream-port URL [default: http://localhost:8001].
    #[arg(long = "connect.url")]
    url: Option<String>,
    /// Token sent as `Authorization: Bearer <token>`.
    #[arg(long = "connect.token")]
    token: Option<String>,
    /// File holding the token, read at every connect; the agent connects again with the file's
    /// token before the current one expires (instead of --connect.token) [default: ""].
    #[arg(long = "connect.token-file")]
    token_file: Option<String>,
    /// Tenant sent as `x-piko-tenant-id`: the server checks the token with the tenant's keys,
    /// and the endpoints are the tenant's [default: ""].
    #[arg(long = "connect.tenant-id")]
    tenant_id: Option<String>,
    /// Deadline for each listener's first connection, retries included [default: 30s].
    #[arg(long = "connect.timeout", value_parser = duration::parse)]
    timeout: Option<Duration>,
    #[command(flatten)]
    tls: ConnectTlsFlags,
    /// Serve the agent's metrics on `--server.bind-addr`.
    #[arg(long = "server.enabled", num_args = 0..=1, default_missing_value = "true")]
    server_enabled: Option<bool>,
    /// Address of the metrics server [default: :5000].
    #[arg(long = "server.bind-addr")]
    server_bind_addr: Option<String>,
    /// Outbound proxy to reach the server through: `http://[user:password@]host:port` (HTTP
    /// CONNECT) or `socks5://[user:password@]host:port`.
    #[arg(long = "connect.proxy-url")]
    proxy_url: Option<String>,
    #[command(flatten)]
    log: LogFlags,
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
    http_client: HttpClientFlags,
    #[command(flatten)]
    shared: Shared,
}

/// `--http-client.*`: the connection pool towards the local service.
#[derive(Debug, clap::Args)]
struct HttpClientFlags {
    /// TCP keep-alive period of connections to the local service [default: 30s].
    #[arg(long = "http-client.keep-alive-timeout", value_parser = duration::parse)]
    keep_alive_timeout: Option<Duration>,
    /// How long an idle pooled connection is kept [default: 90s].
    #[arg(long = "http-client.idle-conn-timeout", value_parser = duration::parse)]
    idle_conn_timeout: Option<Duration>,
    /// Most idle pooled connections; 0 or less is no limit [default: 100].
    #[arg(long = "http-client.max-idle-conns", allow_negative_numbers = true)]
    max_idle_conns: Option<i64>,
    /// Accepted with no effect: the agent never adds `Accept-Encoding`, so the client gets
    /// what it asked for either way.
    #[arg(long = "http-client.disable-compression", num_args = 0..=1, default_missing_value = "true")]
    disable_compression: Option<bool>,
}

impl HttpClientFlags {
    fn apply(&self, http: &mut HttpConfig) {
        if let Some(period) = self.keep_alive_timeout.filter(|d| !d.is_zero()) {
            http.keep_alive_timeout = period;
        }
        if let Some(idle) = self.idle_conn_timeout.filter(|d| !d.is_zero()) {
            http.idle_conn_timeout = idle;
        }
        match self.max_idle_conns {
            // Go's transport: zero is no limit (Piko passes the flag through untranslated).
            Some(n) if n <= 0 => http.max_idle_conns = usize::MAX,
            Some(n) => http.max_idle_conns = usize::try_from(n).unwrap_or(usize::MAX),
            None => {}
        }
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct TcpArgs {
    /// The endpoint to serve.
    endpoint: String,
    /// The local service: a port (`6379`) or `host:port`.
    addr: String,
    /// Timeout to connect to the local service [default: 10s].
    #[arg(long = "timeout", value_parser = duration::parse)]
    dial_timeout: Option<Duration>,
    /// Accepted for Piko's sake: TCP connections are logged at info, or at debug when disabled.
    #[arg(long = "access-log.level")]
    access_log_level: Option<String>,
    /// Log connections at debug rather than info.
    #[arg(long = "access-log.disable", num_args = 0..=1, default_missing_value = "true")]
    access_log_disable: Option<bool>,
    #[command(flatten)]
    shared: Shared,
}

/// One listener to run.
struct ListenerSpec {
    endpoint: String,
    kind: ListenerKind,
}

enum ListenerKind {
    Http(Box<HttpConfig>),
    Tcp(TcpConfig),
}

/// A listener given on the command line, replacing the file's.
enum FromCommand {
    Http {
        endpoint: String,
        addr: String,
        timeout: Option<Duration>,
        access_log: access_log_config::Overrides,
        http_client: HttpClientFlags,
    },
    Tcp {
        endpoint: String,
        addr: String,
        timeout: Option<Duration>,
        access_log_disable: bool,
    },
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
    let tcp = match entry.protocol.as_deref().unwrap_or("http") {
        "http" => false,
        "tcp" => true,
        _ => return Err(fail("unsupported protocol")),
    };
    // Piko requires a timeout in files (no default there), and so do we.
    let timeout = entry
        .timeout
        .map(|t| t.0)
        .filter(|t| !t.is_zero())
        .ok_or_else(|| fail("missing timeout"))?;
    if tcp {
        let addr = tcp_addr(addr).map_err(|err| fail(&err.to_string()))?;
        return Ok(ListenerSpec {
            endpoint,
            kind: ListenerKind::Tcp(TcpConfig {
                addr,
                timeout,
                access_log: !entry.access_log.disable.unwrap_or(false),
            }),
        });
    }
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
    Ok(ListenerSpec {
        endpoint,
        kind: ListenerKind::Http(Box::new(http)),
    })
}

pub(crate) async fn run(command: Command) -> anyhow::Result<()> {
    let mut signals = signal::Signals::install();
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
            http_client,
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
            let listener = FromCommand::Http {
                endpoint,
                addr,
                timeout: request_timeout,
                access_log,
                http_client,
            };
            (shared, Some(listener))
        }
        Command::Tcp(TcpArgs {
            endpoint,
            addr,
            dial_timeout,
            access_log_level: _,
            access_log_disable,
            shared,
        }) => {
            let listener = FromCommand::Tcp {
                endpoint,
                addr,
                timeout: dial_timeout,
                access_log_disable: access_log_disable.unwrap_or(false),
            };
            (shared, Some(listener))
        }
    };
    let file: config_file::AgentFile = shared.config.load()?;
    let tenant = shared
        .tenant_id
        .or(file.connect.tenant_id.clone())
        .filter(|t| !t.is_empty());
    let connect_tls = shared.tls.config(&file.connect.tls)?;
    let proxy_url = shared
        .proxy_url
        .or(file.connect.proxy_url.clone())
        .filter(|p| !p.is_empty());
    let url = shared
        .url
        .or(file.connect.url)
        .unwrap_or_else(|| "http://localhost:8001".into());
    if url.is_empty() {
        anyhow::bail!("config: connect: missing url");
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        anyhow::bail!("config: connect: invalid url: scheme must be http or https");
    }
    let token = shared
        .token
        .or(file.connect.token)
        .filter(|t| !t.is_empty());
    let token_file = shared
        .token_file
        .or(file.connect.token_file)
        .filter(|path| !path.is_empty());
    if token.is_some() && token_file.is_some() {
        anyhow::bail!("config: connect: token and token file are exclusive");
    }
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
    // `agent http` and `agent tcp` replace the file's listeners with their own (validated,
    // unlike Piko's).
    let listeners = match from_command {
        Some(FromCommand::Http {
            endpoint,
            addr,
            timeout,
            access_log,
            http_client,
        }) => {
            let target =
                Target::parse(&addr).with_context(|| format!("config: listener: {endpoint}"))?;
            let timeout = timeout.unwrap_or(Duration::from_secs(10));
            let context = format!("listener: {endpoint}");
            let access_log = access_log_config::build(
                &config_file::AccessLog::default(),
                access_log,
                AGENT_ACCESS_LOG,
                &context,
            )?;
            let mut http = HttpConfig {
                timeout,
                access_log,
                ..HttpConfig::new(target)
            };
            http_client.apply(&mut http);
            vec![ListenerSpec {
                endpoint,
                kind: ListenerKind::Http(Box::new(http)),
            }]
        }
        Some(FromCommand::Tcp {
            endpoint,
            addr,
            timeout,
            access_log_disable,
        }) => {
            let addr = tcp_addr(&addr).with_context(|| format!("config: listener: {endpoint}"))?;
            vec![ListenerSpec {
                endpoint,
                kind: ListenerKind::Tcp(TcpConfig {
                    addr,
                    timeout: timeout.unwrap_or(Duration::from_secs(10)),
                    access_log: !access_log_disable,
                }),
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
    let metrics_enabled = shared
        .server_enabled
        .or(file.server.enabled)
        .unwrap_or(false);
    let metrics_addr = shared
        .server_bind_addr
        .or(file.server.bind_addr.clone())
        .unwrap_or_else(|| ":5000".into());
    if metrics_enabled && metrics_addr.is_empty() {
        anyhow::bail!("config: server: missing bind addr");
    }
    shared.log.init(&file.log)?;
    tracing::info!(version = crate::VERSION, "starting piko agent");
    crate::open_files::raise_limit();

    let metrics = if metrics_enabled {
        let addr = metrics_addr;
        // Go's `:5000` is every interface.
        let bind = match addr.strip_prefix(':') {
            Some(port) => format!("0.0.0.0:{port}"),
            None => addr.clone(),
        };
        let listener = piko_protocol::bind_listener(&bind)
            .await
            .with_context(|| format!("server: listen: {addr}"))?;
        let metrics = Arc::new(AgentMetrics::new());
        tracing::info!(subsystem = "server", addr = %listener.local_addr()?, "starting metrics server");
        tokio::spawn(piko_agent::serve_metrics(
            listener,
            metrics.clone(),
            CancellationToken::new(),
        ));
        Some(metrics)
    } else {
        None
    };
    let listeners: Vec<ListenerSpec> = listeners
        .into_iter()
        .map(|mut spec| {
            if let ListenerKind::Http(config) = &mut spec.kind {
                config.metrics = metrics.clone();
            }
            spec
        })
        .collect();

    let mut upstream = piko::Upstream::new(&url);
    if let Some(token) = &token {
        upstream = upstream.token(token);
    }
    if let Some(path) = &token_file {
        upstream = upstream.token_file(path);
    }
    if let Some(tenant) = tenant {
        upstream = upstream.tenant(tenant);
    }
    if let Some(tls) = connect_tls {
        upstream = upstream.tls(tls);
    }
    if let Some(proxy) = proxy_url {
        upstream = upstream.proxy(proxy);
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
    loop {
        let connected = tokio::select! {
            connected = connecting.join_next() => match connected {
                Some(connected) => connected,
                None => break,
            },
            signal = signals.recv() => {
                // Listeners still connecting are dropped; those already serving drain.
                tracing::info!(signal, "received shutdown signal");
                stop.cancel();
                drain(&mut serving, grace_period).await;
                return Ok(());
            }
        };
        let (listener, spec) = connected.context("listener task")??;
        match spec.kind {
            ListenerKind::Http(config) => {
                serving.spawn(piko_agent::serve_http(listener, *config, stop.clone()))
            }
            ListenerKind::Tcp(config) => {
                serving.spawn(piko_agent::serve_tcp(listener, config, stop.clone()))
            }
        };
    }

    // Run until a signal, or until every listener has stopped (each failure is logged; the
    // agent fails only when none is left).
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
            signal = signals.recv() => {
                tracing::info!(signal, "received shutdown signal");
                stop.cancel();
                drain(&mut serving, grace_period).await;
                return Ok(());
            }
        }
    }
    if failed {
        anyhow::bail!("every listener stopped");
    }
    Ok(())
}

/// Waits for the serving listeners to drain, for at most the grace period.
async fn drain(serving: &mut JoinSet<Result<(), piko::Error>>, grace_period: Duration) {
    let drained = async { while serving.join_next().await.is_some() {} };
    if tokio::time::timeout(grace_period, drained).await.is_err() {
        tracing::warn!("grace period expired; exiting with requests in flight");
    }
}
