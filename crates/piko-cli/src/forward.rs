//! `piko forward`: local TCP ports whose every connection is tunnelled to an endpoint through a
//! server's proxy port (spec §1.6, §4.3).

use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::{
    common_flags::{ConfigFlags, ConnectTlsFlags, LogFlags},
    config_file, duration, signal,
};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Forward every port of the config file's `ports:`.
    Start(Shared),
    /// Forward a local port to an endpoint: `piko forward tcp <addr> <endpoint>`.
    Tcp(TcpArgs),
}

/// Flags every forward command shares. A flag given overrides the config file, which overrides
/// the default.
#[derive(Debug, clap::Args)]
pub(crate) struct Shared {
    #[command(flatten)]
    config: ConfigFlags,
    /// The server's proxy-port URL [default: http://localhost:8000].
    #[arg(long = "connect.url")]
    url: Option<String>,
    /// Token sent as `Authorization: Bearer <token>`.
    #[arg(long = "connect.token")]
    token: Option<String>,
    /// File holding the token, read at every tunnel opened (instead of --connect.token)
    /// [default: ""].
    #[arg(long = "connect.token-file")]
    token_file: Option<String>,
    /// Deadline for opening each tunnel (Piko validates it but waits up to 60 s) [default: 30s].
    #[arg(long = "connect.timeout", value_parser = duration::parse)]
    timeout: Option<Duration>,
    #[command(flatten)]
    tls: ConnectTlsFlags,
    #[command(flatten)]
    log: LogFlags,
}

#[derive(Debug, clap::Args)]
pub(crate) struct TcpArgs {
    /// The local address: a port (`3000`, on loopback only) or `host:port` (`0.0.0.0:3000`).
    addr: String,
    /// The endpoint to reach.
    endpoint: String,
    #[command(flatten)]
    shared: Shared,
}

/// One local port and its endpoint.
struct Port {
    addr: String,
    endpoint: String,
}

/// A port (`localhost:<port>`, loopback only) or `host:port`, as Piko accepts; validated, where
/// Piko silently listens on an ephemeral port for a bad positional one.
fn listen_addr(addr: &str) -> Option<String> {
    if let Ok(port) = addr.parse::<u16>() {
        // Loopback only; IPv4 first, as Go listens (see `bind_listener`).
        return Some(format!("localhost:{port}"));
    }
    let (host, port) = addr.rsplit_once(':')?;
    (!host.is_empty() && port.parse::<u16>().is_ok()).then(|| addr.to_owned())
}

pub(crate) async fn run(command: Command) -> anyhow::Result<()> {
    let mut signals = signal::Signals::install();
    let (shared, from_command) = match command {
        Command::Start(shared) => (shared, None),
        Command::Tcp(TcpArgs {
            addr,
            endpoint,
            shared,
        }) => (shared, Some(Port { addr, endpoint })),
    };
    let file: config_file::ForwardFile = shared.config.load()?;
    let tls = shared.tls.config(&file.connect.tls)?;
    let url = shared
        .url
        .or(file.connect.url)
        .unwrap_or_else(|| "http://localhost:8000".into());
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
        .filter(|t| !t.is_empty());
    if token.is_some() && token_file.is_some() {
        anyhow::bail!("config: connect: token and token file are exclusive");
    }
    let timeout = shared
        .timeout
        .or(file.connect.timeout.map(|d| d.0))
        .unwrap_or(Duration::from_secs(30));
    if timeout.is_zero() {
        anyhow::bail!("config: connect: missing timeout");
    }
    let ports = match from_command {
        Some(port) => vec![port],
        None => file
            .ports
            .iter()
            .flatten()
            .map(|entry| {
                let endpoint = entry.endpoint_id.clone().unwrap_or_default();
                let fail = |reason: &str| anyhow::anyhow!("config: port: {endpoint}: {reason}");
                let addr = entry.addr.clone().filter(|a| !a.is_empty());
                let addr = addr.ok_or_else(|| fail("missing addr"))?;
                if endpoint.is_empty() {
                    return Err(fail("missing endpoint id"));
                }
                Ok(Port {
                    addr,
                    endpoint: endpoint.clone(),
                })
            })
            .collect::<anyhow::Result<_>>()?,
    };
    if ports.is_empty() {
        anyhow::bail!("no ports configured");
    }
    let ports = ports
        .into_iter()
        .map(|port| match listen_addr(&port.addr) {
            Some(addr) => Ok(Port { addr, ..port }),
            None => Err(anyhow::anyhow!(
                "config: port: {}: invalid addr",
                port.endpoint
            )),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    shared.log.init(&file.log)?;
    crate::open_files::raise_limit();

    let mut dialer = piko::Dialer::new(&url);
    if let Some(token) = &token {
        dialer = dialer.token(token);
    }
    if let Some(path) = &token_file {
        dialer = dialer.token_file(path);
    }
    if let Some(tls) = tls {
        dialer = dialer.tls(tls);
    }
    let mut listeners = Vec::new();
    for port in ports {
        let listener = piko_protocol::bind_listener(&port.addr)
            .await
            .with_context(|| format!("listen: {}", port.addr))?;
        let bound = listener.local_addr()?;
        tracing::info!(subsystem = "forwarder", endpoint_id = %port.endpoint, addr = %bound, "starting tcp forwarder");
        listeners.push(tokio::spawn(accept_loop(
            listener,
            port.endpoint,
            dialer.clone(),
            timeout,
        )));
    }
    let signal = signals.recv().await;
    tracing::info!(signal, "received shutdown signal");
    // As Piko: the ports close and the process exits; open tunnels end with it.
    for listener in listeners {
        listener.abort();
    }
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    endpoint: String,
    dialer: piko::Dialer,
    timeout: Duration,
) {
    loop {
        let (mut local, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // EMFILE and friends: back off briefly rather than spin.
                tracing::warn!(subsystem = "forwarder", error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = local.set_nodelay(true);
        piko_protocol::enable_keepalive(&local);
        let (dialer, endpoint) = (dialer.clone(), endpoint.clone());
        tokio::spawn(async move {
            let dialed = tokio::time::timeout(timeout, dialer.dial(&endpoint))
                .await
                .unwrap_or_else(|_| {
                    Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "dial timed out").into())
                });
            let mut tunnel = match dialed {
                Ok(tunnel) => tunnel,
                Err(err) => {
                    tracing::error!(subsystem = "forwarder", endpoint_id = %endpoint, error = %err, "failed to dial endpoint");
                    return;
                }
            };
            if let Err(err) = piko_protocol::relay(&mut local, &mut tunnel).await {
                tracing::debug!(subsystem = "forwarder", endpoint_id = %endpoint, error = %err, "tunnel ended with an error");
                // A reset on either side reaches the other as a reset, never as a clean end,
                // and after the bytes that came before it.
                tokio::join!(piko_protocol::reset_after_delivery(&local), tunnel.abort());
            }
        });
    }
}
