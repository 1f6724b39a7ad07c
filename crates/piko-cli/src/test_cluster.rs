//! `piko test cluster` (spec §1.8): a whole cluster in one process for manual trials. It runs
//! `nodes` server nodes on loopback ports chosen by the system, gossiping every 10 ms, each new
//! node joining the ones before it, and three load balancers in front of their proxy, upstream
//! and admin ports. On SIGHUP the config file is read again and the node count reconciled: new
//! nodes join, or the oldest ones stop gracefully. SIGINT or SIGTERM stops everything.

use std::{collections::VecDeque, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use serde::Deserialize;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{RwLock, oneshot},
    task::JoinHandle,
};

use crate::{
    common_flags::{ConfigFlags, LogFlags},
    config_file,
};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// A local cluster for manual trials: nodes and load balancers in one process; SIGHUP
    /// reloads the node count from the config file.
    Cluster(ClusterArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct ClusterArgs {
    #[command(flatten)]
    config: ConfigFlags,
    #[command(flatten)]
    flags: Flags,
    #[command(flatten)]
    log: LogFlags,
}

#[derive(Debug, clap::Args)]
struct Flags {
    /// Number of nodes; must not be 0 [default: 3].
    #[arg(long = "nodes")]
    nodes: Option<u64>,
    /// Load balancer in front of the nodes' proxy ports [default: 127.0.0.1:8000].
    #[arg(long = "proxy-addr")]
    proxy_addr: Option<String>,
    /// Load balancer in front of the nodes' upstream ports [default: 127.0.0.1:8001].
    #[arg(long = "upstream-addr")]
    upstream_addr: Option<String>,
    /// Load balancer in front of the nodes' admin ports [default: 127.0.0.1:8002].
    #[arg(long = "admin-addr")]
    admin_addr: Option<String>,
}

/// `piko test cluster`'s file.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct TestClusterFile {
    nodes: Option<u64>,
    log: config_file::Log,
}

/// The node count a file asks for: flag, else file, else 3.
fn node_count(flag: Option<u64>, file: &TestClusterFile) -> anyhow::Result<usize> {
    match flag.or(file.nodes).unwrap_or(3) {
        0 => anyhow::bail!("config: missing nodes"),
        n => usize::try_from(n).context("config: nodes"),
    }
}

/// A node's ports, as the balancers reach them.
#[derive(Clone, Copy, Debug)]
struct NodeAddrs {
    proxy: SocketAddr,
    upstream: SocketAddr,
    admin: SocketAddr,
}

/// A running node.
struct RunningNode {
    id: String,
    gossip: String,
    addrs: NodeAddrs,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

/// The nodes the balancers pick from.
type Pool = Arc<RwLock<Vec<NodeAddrs>>>;

pub(crate) async fn run(command: Command) -> anyhow::Result<()> {
    let mut signals = crate::signal::Signals::install();
    let Command::Cluster(args) = command;
    let file: TestClusterFile = args.config.load()?;
    let mut wanted = node_count(args.flags.nodes, &file)?;
    args.log.check(&file.log)?;
    args.log.init(&file.log)?;
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("SIGHUP handler")?;

    let pool: Pool = Arc::default();
    let flags = args.flags;
    let balancers = [
        (
            "proxy",
            flags.proxy_addr,
            "127.0.0.1:8000",
            pick_proxy as fn(&NodeAddrs) -> SocketAddr,
        ),
        (
            "upstream",
            flags.upstream_addr,
            "127.0.0.1:8001",
            pick_upstream,
        ),
        ("admin", flags.admin_addr, "127.0.0.1:8002", pick_admin),
    ];
    let mut balancer_tasks = Vec::new();
    for (name, addr, default, pick) in balancers {
        let addr = addr.unwrap_or_else(|| default.into());
        let listener = piko_protocol::bind_listener(&addr)
            .await
            .with_context(|| format!("{name} load balancer: {addr}"))?;
        tracing::info!(subsystem = "test", name, addr = %listener.local_addr()?, "starting load balancer");
        balancer_tasks.push(tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
            balance(listener, pool.clone(), pick),
        )));
    }

    let mut nodes: VecDeque<RunningNode> = VecDeque::new();
    loop {
        reconcile(&mut nodes, wanted, &pool).await?;
        tokio::select! {
            _ = hangups.recv() => {
                match args.config.load::<TestClusterFile>().and_then(|file| node_count(None, &file)) {
                    Ok(count) => {
                        tracing::info!(subsystem = "test", nodes = count, "reloaded config");
                        wanted = count;
                    }
                    Err(err) => tracing::warn!(subsystem = "test", error = %format!("{err:#}"), "failed to reload config"),
                }
            }
            signal = signals.recv() => {
                tracing::info!(subsystem = "test", signal, "received shutdown signal");
                break;
            }
        }
    }
    pool.write().await.clear();
    // All at once: one by one, each would wait for its agents to move to the others.
    let mut stopping = tokio::task::JoinSet::new();
    for node in nodes {
        stopping.spawn(stop(node));
    }
    while stopping.join_next().await.is_some() {}
    drop(balancer_tasks);
    Ok(())
}

fn pick_proxy(node: &NodeAddrs) -> SocketAddr {
    node.proxy
}

fn pick_upstream(node: &NodeAddrs) -> SocketAddr {
    node.upstream
}

fn pick_admin(node: &NodeAddrs) -> SocketAddr {
    node.admin
}

/// Adds nodes, each joining the ones before it, or stops the oldest, until `wanted` run.
async fn reconcile(
    nodes: &mut VecDeque<RunningNode>,
    wanted: usize,
    pool: &Pool,
) -> anyhow::Result<()> {
    while nodes.len() < wanted {
        let join = nodes.iter().map(|node| node.gossip.clone()).collect();
        let node = start(join).await?;
        pool.write().await.push(node.addrs);
        nodes.push_back(node);
    }
    while nodes.len() > wanted {
        let Some(oldest) = nodes.pop_front() else {
            break;
        };
        pool.write()
            .await
            .retain(|addrs| addrs.proxy != oldest.addrs.proxy);
        stop(oldest).await;
    }
    Ok(())
}

async fn start(join: Vec<String>) -> anyhow::Result<RunningNode> {
    let config = piko_server::Config {
        proxy_bind_addr: "127.0.0.1:0".into(),
        upstream_bind_addr: "127.0.0.1:0".into(),
        admin_bind_addr: "127.0.0.1:0".into(),
        gossip_bind_addr: "127.0.0.1:0".into(),
        cluster: piko_server::cluster::ClusterConfig {
            join,
            gossip_interval: Duration::from_millis(10),
            ..piko_server::cluster::ClusterConfig::default()
        },
        ..piko_server::Config::default()
    };
    let server = piko_server::Server::bind(config)
        .await
        .context("bind node")?;
    let addrs = NodeAddrs {
        proxy: server.proxy_addr(),
        upstream: server.upstream_addr(),
        admin: server.admin_addr(),
    };
    let id = server.node_id().to_owned();
    let gossip = server.gossip_advertise_addr().to_owned();
    tracing::info!(
        subsystem = "test",
        node_id = %id,
        proxy_addr = %addrs.proxy,
        upstream_addr = %addrs.upstream,
        admin_addr = %addrs.admin,
        gossip_addr = %gossip,
        "node started"
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    Ok(RunningNode {
        id,
        gossip,
        addrs,
        stop,
        task,
    })
}

/// Stops a node gracefully and waits for it.
async fn stop(node: RunningNode) {
    let _ = node.stop.send(());
    match node.task.await {
        Ok(Ok(())) => tracing::info!(subsystem = "test", node_id = %node.id, "node stopped"),
        Ok(Err(err)) => {
            tracing::warn!(subsystem = "test", node_id = %node.id, error = %format!("{err:#}"), "node failed")
        }
        Err(err) => {
            tracing::warn!(subsystem = "test", node_id = %node.id, error = %err, "node failed")
        }
    }
}

/// Relays each connection to a random node's port, byte for byte (HTTP, WebSockets and TCP
/// tunnels alike).
async fn balance(listener: TcpListener, pool: Pool, pick: fn(&NodeAddrs) -> SocketAddr) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            // Out of file descriptors, most likely: give connections in flight time to end.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let target = {
            let nodes = pool.read().await;
            (!nodes.is_empty()).then(|| pick(&nodes[rand::random_range(0..nodes.len())]))
        };
        let Some(target) = target else {
            continue;
        };
        tokio::spawn(async move {
            let Ok(mut node) = TcpStream::connect(target).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = node.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut node).await;
        });
    }
}
