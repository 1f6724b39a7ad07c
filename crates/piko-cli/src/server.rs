//! `piko server`.

use std::time::Duration;

use anyhow::Context as _;
use piko_server::{Config, Server};

use crate::{duration, logging, signal};

/// Flags of `piko server` (Piko's names and defaults).
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Address the proxy port listens on (`host:port`; an empty host is every interface).
    #[arg(long = "proxy.bind-addr", default_value = ":8000")]
    proxy_bind_addr: String,
    /// How long to wait for an upstream's response headers (0 disables).
    #[arg(long = "proxy.timeout", default_value = "30s", value_parser = duration::parse)]
    proxy_timeout: Duration,
    /// Address the upstream port listens on.
    #[arg(long = "upstream.bind-addr", default_value = ":8001")]
    upstream_bind_addr: String,
    /// Address the admin port listens on.
    #[arg(long = "admin.bind-addr", default_value = ":8002")]
    admin_bind_addr: String,
    /// Longest a graceful shutdown may take.
    #[arg(long = "grace-period", default_value = "1m", value_parser = duration::parse)]
    grace_period: Duration,
    /// Minimum level logged: debug, info, warn or error.
    #[arg(long = "log.level", default_value = "info")]
    log_level: String,
}

/// A 7-character node ID from Piko's alphabet.
fn node_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz1234567890";
    (0..7)
        .map(|_| ALPHABET[rand_index(ALPHABET.len())] as char)
        .collect()
}

fn rand_index(len: usize) -> usize {
    // The standard library's randomly seeded hasher is enough for a name.
    use std::hash::{BuildHasher, RandomState};
    (RandomState::new().hash_one(std::time::SystemTime::now()) % len as u64) as usize
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    if args.grace_period.is_zero() {
        anyhow::bail!("config: missing grace period");
    }
    logging::init(&args.log_level).map_err(|err| anyhow::anyhow!("config: log: {err}"))?;
    tracing::info!(subsystem = "server", node_id = %node_id(), version = crate::VERSION, "starting piko server");
    raise_open_file_limit();
    let config = Config {
        proxy_bind_addr: args.proxy_bind_addr,
        upstream_bind_addr: args.upstream_bind_addr,
        admin_bind_addr: args.admin_bind_addr,
        proxy: piko_server::proxy::Config {
            timeout: (!args.proxy_timeout.is_zero()).then_some(args.proxy_timeout),
        },
        grace_period: args.grace_period,
        ..Config::default()
    };
    let server = Server::bind(config).await.context("bind")?;
    server
        .run(async {
            let signal = signal::shutdown().await;
            tracing::info!(signal, "received shutdown signal");
        })
        .await;
    Ok(())
}

/// Each upstream and each proxied connection holds a descriptor: take the hard limit.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(subsystem = "server", limit, "open file limit"),
        Err(err) => {
            tracing::warn!(subsystem = "server", error = %err, "failed to raise open file limit")
        }
    }
}
