//! `piko server`.

use std::time::Duration;

use anyhow::Context as _;
use piko_server::{Config, Server};

use crate::{
    access_log_config,
    cluster_flags::ClusterFlags,
    common_flags::{ConfigFlags, LogFlags},
    config_file, duration,
    security_flags::{AdminSecurityFlags, ProxySecurityFlags, UpstreamSecurityFlags},
    server_status, signal,
};

/// Flags of `piko server`: Piko's names; a flag given overrides the config file, which overrides
/// the default.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: ConfigFlags,
    /// Address the proxy port listens on (`host:port`; an empty host is every interface)
    /// [default: :8000].
    #[arg(long = "proxy.bind-addr")]
    proxy_bind_addr: Option<String>,
    /// Proxy address published to other nodes; empty derives it from the bound one
    /// [default: ""].
    #[arg(long = "proxy.advertise-addr")]
    proxy_advertise_addr: Option<String>,
    /// How long to wait for an upstream's response headers; 0 disables [default: 30s].
    #[arg(long = "proxy.timeout", value_parser = duration::parse)]
    proxy_timeout: Option<Duration>,
    /// How long a client may take to send a request's headers; 0 disables [default: 10s].
    #[arg(long = "proxy.http.read-header-timeout", value_parser = duration::parse)]
    read_header_timeout: Option<Duration>,
    /// How long a client may pause while sending a request body (an idle limit, not a deadline
    /// as in Piko); 0 disables [default: 10s].
    #[arg(long = "proxy.http.read-timeout", value_parser = duration::parse)]
    read_timeout: Option<Duration>,
    /// How long a client may refuse response bytes (an idle limit, not a deadline as in Piko:
    /// long downloads and event streams pass); 0 disables [default: 10s].
    #[arg(long = "proxy.http.write-timeout", value_parser = duration::parse)]
    write_timeout: Option<Duration>,
    /// How long a WebSocket or TCP tunnel's client may refuse bytes before it is cut (longer
    /// than the write timeout: a tunnel's client may pause); 0 disables [default: 5m].
    #[arg(long = "proxy.http.tunnel-write-timeout", value_parser = duration::parse)]
    tunnel_write_timeout: Option<Duration>,
    /// How long a keep-alive connection may wait for its next request; 0 disables
    /// [default: 5m].
    #[arg(long = "proxy.http.idle-timeout", value_parser = duration::parse)]
    idle_timeout: Option<Duration>,
    /// Largest request head accepted, in bytes (larger ones get 431) [default: 1048576].
    #[arg(long = "proxy.http.max-header-bytes")]
    max_header_bytes: Option<u64>,
    /// Most client connections open at once, tunnels included (more are closed when
    /// accepted); 0 is no limit [default: 0].
    #[arg(long = "proxy.http.max-connections")]
    proxy_max_connections: Option<u64>,
    /// Most requests, tunnels included, in flight to one endpoint through this node (more get a
    /// retryable 503); 0 is no limit [default: 0].
    #[arg(
        long = "proxy.max-requests-per-endpoint",
        allow_negative_numbers = true
    )]
    max_requests_per_endpoint: Option<i64>,
    /// Level of the access log's records (5xx responses are at least warn) [default: info].
    #[arg(long = "proxy.access-log.level")]
    access_log_level: Option<String>,
    /// No access log.
    #[arg(long = "proxy.access-log.disable", num_args = 0..=1, default_missing_value = "true")]
    access_log_disable: Option<bool>,
    /// Request headers to log (all others are not); comma-separated, repeatable.
    #[arg(
        long = "proxy.access-log.request-headers.allow-list",
        value_delimiter = ','
    )]
    request_allow: Vec<String>,
    /// Request headers not to log; comma-separated, repeatable.
    #[arg(
        long = "proxy.access-log.request-headers.block-list",
        value_delimiter = ','
    )]
    request_block: Vec<String>,
    /// Response headers to log (all others are not); comma-separated, repeatable.
    #[arg(
        long = "proxy.access-log.response-headers.allow-list",
        value_delimiter = ','
    )]
    response_allow: Vec<String>,
    /// Response headers not to log; comma-separated, repeatable.
    #[arg(
        long = "proxy.access-log.response-headers.block-list",
        value_delimiter = ','
    )]
    response_block: Vec<String>,
    /// Address the upstream port listens on [default: :8001].
    #[arg(long = "upstream.bind-addr")]
    upstream_bind_addr: Option<String>,
    /// Upstream address to publish (computed and unused, as in Piko) [default: ""].
    #[arg(long = "upstream.advertise-addr")]
    upstream_advertise_addr: Option<String>,
    /// Shed upstreams when this node holds more than (1 + threshold) times the cluster's
    /// average; 0 disables [default: 0].
    #[arg(long = "upstream.rebalance.threshold", allow_negative_numbers = true)]
    rebalance_threshold: Option<f64>,
    /// Fraction of the node's upstreams shed per second while unbalanced [default: 0.005].
    #[arg(long = "upstream.rebalance.shed-rate", allow_negative_numbers = true)]
    rebalance_shed_rate: Option<f64>,
    /// Fewest upstreams a node must hold before it sheds any [default: 50].
    #[arg(long = "upstream.rebalance.min-conns")]
    rebalance_min_conns: Option<u64>,
    /// Most connections open at once on the upstream port, upstream sessions included; 0 is no
    /// limit [default: 0].
    #[arg(long = "upstream.max-connections")]
    upstream_max_connections: Option<u64>,
    /// Most upstreams one endpoint may have on this node (more get a retryable 429); 0 is no
    /// limit [default: 0].
    #[arg(long = "upstream.max-upstreams-per-endpoint")]
    max_upstreams_per_endpoint: Option<u64>,
    /// Address the admin port listens on [default: :8002].
    #[arg(long = "admin.bind-addr")]
    admin_bind_addr: Option<String>,
    /// Admin address published to other nodes; empty derives it from the bound one
    /// [default: ""].
    #[arg(long = "admin.advertise-addr")]
    admin_advertise_addr: Option<String>,
    /// Longest a graceful shutdown may take [default: 1m].
    #[arg(long = "grace-period", value_parser = duration::parse)]
    grace_period: Option<Duration>,
    /// How long to keep serving, not ready, after SIGTERM, before refusing connections (for
    /// load balancers' health checks to notice) [default: 0s].
    #[arg(long = "shutdown-delay", value_parser = duration::parse)]
    shutdown_delay: Option<Duration>,
    #[command(flatten)]
    log: LogFlags,
    #[command(flatten)]
    cluster: ClusterFlags,
    #[command(flatten)]
    proxy_security: ProxySecurityFlags,
    #[command(flatten)]
    upstream_security: UpstreamSecurityFlags,
    #[command(flatten)]
    admin_security: AdminSecurityFlags,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Inspect a running server node through its admin port.
    Status(server_status::Args),
}

/// A flag, else the file's value, else the default; zero means none (Piko's "0 disables").
fn pick(
    flag: Option<Duration>,
    file: Option<config_file::GoDuration>,
    default: Option<Duration>,
) -> Option<Duration> {
    flag.or(file.map(|d| d.0))
        .or(default)
        .filter(|t| !t.is_zero())
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(Command::Status(command)) = args.command {
        return server_status::run(command).await;
    }
    let signals = signal::Signals::install();
    let mut file: config_file::ServerFile = args.config.load()?;
    // Piko's validation order (spec §1.3.2): cluster, proxy, upstream, admin, log, grace period
    // (after our refusal of what is not built).
    let cluster = args.cluster.resolve(std::mem::take(&mut file.cluster))?;
    let defaults = Config::default();
    let proxy_bind_addr = bind_addr("proxy", args.proxy_bind_addr, file.proxy.bind_addr, ":8000")?;
    let proxy_timeout = pick(
        args.proxy_timeout,
        file.proxy.timeout,
        defaults.proxy.timeout,
    );
    let access_log = access_log_config::build(
        &file.proxy.access_log,
        access_log_config::Overrides {
            level: args.access_log_level,
            disable: args.access_log_disable,
            request_allow: args.request_allow,
            request_block: args.request_block,
            response_allow: args.response_allow,
            response_block: args.response_block,
        },
        "proxy.access",
        "proxy",
    )?;
    let max_requests_per_endpoint = match args
        .max_requests_per_endpoint
        .or(file.proxy.max_requests_per_endpoint)
    {
        Some(n) if n < 0 => {
            anyhow::bail!("config: proxy: max requests per endpoint cannot be negative")
        }
        n => limit(n.map(i64::unsigned_abs), None),
    };
    let upstream_bind_addr = bind_addr(
        "upstream",
        args.upstream_bind_addr,
        file.upstream.bind_addr,
        ":8001",
    )?;
    let rebalance = &file.upstream.rebalance;
    let rebalance_threshold = args
        .rebalance_threshold
        .or(rebalance.threshold)
        .unwrap_or(0.0);
    let rebalance_shed_rate = args
        .rebalance_shed_rate
        .or(rebalance.shed_rate)
        .unwrap_or(0.005);
    check_rebalance(rebalance_threshold, rebalance_shed_rate)?;
    let rebalance = piko_server::cluster::RebalanceConfig {
        threshold: rebalance_threshold,
        shed_rate: rebalance_shed_rate,
        min_conns: args
            .rebalance_min_conns
            .or(rebalance.min_conns)
            .map_or(50, |n| usize::try_from(n).unwrap_or(usize::MAX)),
        ..piko_server::cluster::RebalanceConfig::default()
    };
    let _ = args
        .upstream_advertise_addr
        .or(file.upstream.advertise_addr);
    let tenants =
        crate::security_flags::tenants(file.upstream.tenants.as_deref().unwrap_or_default())?;
    let admin_bind_addr = bind_addr("admin", args.admin_bind_addr, file.admin.bind_addr, ":8002")?;
    let proxy_tls = args.proxy_security.server_tls(&file.proxy.tls, true)?;
    let proxy_peer_tls = match proxy_tls {
        Some(_) => Some(args.proxy_security.peer_tls(&file.proxy.tls.client)?),
        None => None,
    };
    let upstream_tls = args
        .upstream_security
        .server_tls(&file.upstream.tls, false)?;
    let admin_tls = args.admin_security.server_tls(&file.admin.tls, false)?;
    let admin_peer_tls = match admin_tls {
        Some(_) => Some(args.admin_security.peer_tls(&file.admin.tls.client)?),
        None => None,
    };
    let proxy_auth = args.proxy_security.verifier(&file.proxy.auth)?;
    let upstream_auth = args.upstream_security.verifier(&file.upstream.auth)?;
    let admin_auth = args.admin_security.verifier(&file.admin.auth)?;
    let grace_period = args
        .grace_period
        .or(file.grace_period.map(|d| d.0))
        .unwrap_or(defaults.grace_period);
    let config = Config {
        node_id: cluster.node_id,
        proxy_bind_addr,
        upstream_bind_addr,
        admin_bind_addr,
        proxy_advertise_addr: args
            .proxy_advertise_addr
            .or(file.proxy.advertise_addr)
            .filter(|addr| !addr.is_empty()),
        admin_advertise_addr: args
            .admin_advertise_addr
            .or(file.admin.advertise_addr)
            .filter(|addr| !addr.is_empty()),
        gossip_bind_addr: cluster.gossip_bind_addr,
        gossip_advertise_addr: cluster.gossip_advertise_addr,
        cluster: piko_server::cluster::ClusterConfig {
            join: cluster.join,
            gossip_interval: cluster.gossip_interval,
            join_timeout: cluster.join_timeout,
            abort_if_join_fails: cluster.abort_if_join_fails,
            secret: cluster.secret,
            ..piko_server::cluster::ClusterConfig::default()
        },
        proxy: piko_server::proxy::Config {
            timeout: proxy_timeout,
            access_log,
            read_header_timeout: pick(
                args.read_header_timeout,
                file.proxy.http.read_header_timeout,
                defaults.proxy.read_header_timeout,
            ),
            read_timeout: pick(
                args.read_timeout,
                file.proxy.http.read_timeout,
                defaults.proxy.read_timeout,
            ),
            write_timeout: pick(
                args.write_timeout,
                file.proxy.http.write_timeout,
                defaults.proxy.write_timeout,
            ),
            tunnel_write_timeout: pick(
                args.tunnel_write_timeout,
                file.proxy.http.tunnel_write_timeout,
                defaults.proxy.tunnel_write_timeout,
            ),
            idle_timeout: pick(
                args.idle_timeout,
                file.proxy.http.idle_timeout,
                defaults.proxy.idle_timeout,
            ),
            max_header_bytes: args
                .max_header_bytes
                .or(file.proxy.http.max_header_bytes)
                .map_or(defaults.proxy.max_header_bytes, |n| {
                    usize::try_from(n).unwrap_or(usize::MAX)
                }),
            max_connections: limit(args.proxy_max_connections, file.proxy.http.max_connections),
            max_requests_per_endpoint,
            auth: proxy_auth,
            tenants: tenants.clone(),
        },
        grace_period,
        shutdown_delay: args
            .shutdown_delay
            .or(file.shutdown_delay.map(|d| d.0))
            .unwrap_or(defaults.shutdown_delay),
        upstream: piko_server::upstream::Config {
            rebalance,
            auth: upstream_auth,
            tenants,
            max_connections: limit(args.upstream_max_connections, file.upstream.max_connections),
            max_upstreams_per_endpoint: limit(
                args.max_upstreams_per_endpoint,
                file.upstream.max_upstreams_per_endpoint,
            ),
            ..defaults.upstream.clone()
        },
        admin_auth,
        proxy_tls,
        upstream_tls,
        admin_tls,
        proxy_peer_tls,
        admin_peer_tls,
        ..defaults
    };
    args.log.check(&file.log)?;
    if grace_period.is_zero() {
        anyhow::bail!("config: missing grace period");
    }
    args.log.init(&file.log)?;
    tracing::info!(subsystem = "server", node_id = %config.node_id, version = crate::VERSION, "starting piko server");
    crate::open_files::raise_limit();
    let server = Server::bind(config).await.context("bind")?;
    server.run(shutdown_requested(signals)).await
}

/// A count limit: flag, else file; 0 or unset is none.
fn limit(flag: Option<u64>, file: Option<u64>) -> Option<usize> {
    flag.or(file)
        .filter(|&n| n > 0)
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// A port's bind address: flag, else file, else default; empty is an error.
fn bind_addr(
    port: &str,
    flag: Option<String>,
    file: Option<String>,
    default: &str,
) -> anyhow::Result<String> {
    let addr = flag.or(file).unwrap_or_else(|| default.into());
    if addr.is_empty() {
        anyhow::bail!("config: {port}: missing bind addr");
    }
    Ok(addr)
}

fn check_rebalance(threshold: f64, shed_rate: f64) -> anyhow::Result<()> {
    let reason = if threshold < 0.0 {
        "threshold cannot be negative"
    } else if shed_rate < 0.0 {
        "shed-rate cannot be negative"
    } else if shed_rate > 1.0 {
        "shed-rate cannot exceed 1"
    } else {
        return Ok(());
    };
    anyhow::bail!("config: upstream: rebalance: {reason}")
}

/// Resolves at the first SIGINT or SIGTERM; a second one exits at once, without draining.
async fn shutdown_requested(mut signals: signal::Signals) {
    let signal = signals.recv().await;
    tracing::info!(signal, "received shutdown signal");
    tokio::spawn(async move {
        let signal = signals.recv().await;
        tracing::warn!(signal, "received second shutdown signal; exiting now");
        crate::log_sink::flush();
        std::process::exit(1);
    });
}
