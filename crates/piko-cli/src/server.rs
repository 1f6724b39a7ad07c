//! `piko server`.

use std::time::Duration;

use anyhow::Context as _;
use piko_server::{Config, Server};

use crate::{
    access_log_config,
    common_flags::{ConfigFlags, LogFlags},
    config_file, duration, signal,
};

/// Flags of `piko server`: Piko's names; a flag given overrides the config file, which overrides
/// the default.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    config: ConfigFlags,
    /// Address the proxy port listens on (`host:port`; an empty host is every interface)
    /// [default: :8000].
    #[arg(long = "proxy.bind-addr")]
    proxy_bind_addr: Option<String>,
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
    /// How long a keep-alive connection may wait for its next request; 0 disables
    /// [default: 5m].
    #[arg(long = "proxy.http.idle-timeout", value_parser = duration::parse)]
    idle_timeout: Option<Duration>,
    /// Largest request head accepted, in bytes (larger ones get 431) [default: 1048576].
    #[arg(long = "proxy.http.max-header-bytes")]
    max_header_bytes: Option<u64>,
    /// Address the upstream port listens on [default: :8001].
    #[arg(long = "upstream.bind-addr")]
    upstream_bind_addr: Option<String>,
    /// Address the admin port listens on [default: :8002].
    #[arg(long = "admin.bind-addr")]
    admin_bind_addr: Option<String>,
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
    /// Longest a graceful shutdown may take [default: 1m].
    #[arg(long = "grace-period", value_parser = duration::parse)]
    grace_period: Option<Duration>,
    #[command(flatten)]
    log: LogFlags,
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

/// A 7-character node ID from Piko's alphabet.
fn node_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz1234567890";
    // The standard library's randomly seeded hasher is random enough for a name.
    let random = RandomState::new();
    (0..7u8)
        .map(|i| ALPHABET[(random.hash_one(i) % ALPHABET.len() as u64) as usize] as char)
        .collect()
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let signals = signal::Signals::install();
    let file: config_file::ServerFile = args.config.load()?;
    let ignored = file.check().context("config")?;
    let defaults = Config::default();
    let grace_period = args
        .grace_period
        .or(file.grace_period.map(|d| d.0))
        .unwrap_or(defaults.grace_period);
    if grace_period.is_zero() {
        anyhow::bail!("config: missing grace period");
    }
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
    let config = Config {
        proxy_bind_addr: args
            .proxy_bind_addr
            .or(file.proxy.bind_addr)
            .unwrap_or(defaults.proxy_bind_addr),
        upstream_bind_addr: args
            .upstream_bind_addr
            .or(file.upstream.bind_addr)
            .unwrap_or(defaults.upstream_bind_addr),
        admin_bind_addr: args
            .admin_bind_addr
            .or(file.admin.bind_addr)
            .unwrap_or(defaults.admin_bind_addr),
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
        },
        grace_period,
        ..defaults
    };
    for (name, addr) in [
        ("proxy", &config.proxy_bind_addr),
        ("upstream", &config.upstream_bind_addr),
        ("admin", &config.admin_bind_addr),
    ] {
        if addr.is_empty() {
            anyhow::bail!("config: {name}: missing bind addr");
        }
    }
    args.log.init(&file.log)?;
    tracing::info!(subsystem = "server", node_id = %node_id(), version = crate::VERSION, "starting piko server");
    for key in ignored {
        tracing::warn!(
            subsystem = "server",
            key,
            "config key not supported yet; ignored"
        );
    }
    crate::open_files::raise_limit();
    let server = Server::bind(config).await.context("bind")?;
    server.run(shutdown_requested(signals)).await;
    Ok(())
}

/// Resolves at the first SIGINT or SIGTERM; a second one exits at once, without draining.
async fn shutdown_requested(mut signals: signal::Signals) {
    let signal = signals.recv().await;
    tracing::info!(signal, "received shutdown signal");
    tokio::spawn(async move {
        let signal = signals.recv().await;
        tracing::warn!(signal, "received second shutdown signal; exiting now");
        std::process::exit(1);
    });
}
