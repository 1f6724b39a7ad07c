//! A server node: binds its ports, serves them, and shuts down in order.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    admin,
    advertise::advertise_addr,
    cluster::{
        self, ClusterConfig, ForwardAuth, Membership, RemoteEndpoints, Resolver, SystemResolver,
    },
    connection_deadlines::Deadlines,
    endpoint_load::EndpointLoad,
    forward::Forwarder,
    metrics::Metrics,
    proxy,
    serve::{Limits, Protocols, serve},
    status::LocalNode,
    tls::{PeerTls, ServerTls},
    upstream,
    upstreams::Upstreams,
};

/// Settings of a server node.
#[derive(Clone, Debug)]
pub struct Config {
    /// The node's ID (Piko generates one per start: see [`generate_node_id`]).
    pub node_id: String,
    /// Proxy port address (`host:port`; an empty host means every interface).
    pub proxy_bind_addr: String,
    /// Upstream port address.
    pub upstream_bind_addr: String,
    /// Admin port address.
    pub admin_bind_addr: String,
    /// Where other nodes reach the proxy port; `None` derives it from the bound address.
    pub proxy_advertise_addr: Option<String>,
    /// Where other nodes reach the admin port; `None` derives it.
    pub admin_advertise_addr: Option<String>,
    /// The gossip port's address (UDP).
    pub gossip_bind_addr: String,
    /// Where other nodes reach the gossip port; `None` derives it.
    pub gossip_advertise_addr: Option<String>,
    /// Proxy port settings.
    pub proxy: proxy::Config,
    /// Upstream port settings.
    pub upstream: upstream::Config,
    /// Token verification on the admin port (`admin.auth`).
    pub admin_auth: Option<Arc<crate::auth::Verifier>>,
    /// TLS on the proxy port (load it with `http2` on).
    pub proxy_tls: Option<Arc<ServerTls>>,
    /// TLS on the upstream port.
    pub upstream_tls: Option<Arc<ServerTls>>,
    /// TLS on the admin port.
    pub admin_tls: Option<Arc<ServerTls>>,
    /// How to reach other nodes' proxy ports when they serve TLS (relayed requests); plain
    /// HTTP when `None`.
    pub proxy_peer_tls: Option<PeerTls>,
    /// How to reach other nodes' admin ports when they serve TLS (`?forward=`); plain HTTP when
    /// `None`.
    pub admin_peer_tls: Option<PeerTls>,
    /// How long shutdown may take before what is left is cut.
    pub grace_period: Duration,
    /// How long the node keeps serving, not ready, once told to stop, before it stops accepting
    /// connections: the time a load balancer needs to see `/ready` fail and send traffic
    /// elsewhere. (Not part of the grace period.)
    pub shutdown_delay: Duration,
    /// Gossip and membership settings.
    pub cluster: ClusterConfig,
    /// Resolves `cluster.join` names (replaced in tests).
    pub resolver: Arc<dyn Resolver>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: generate_node_id(""),
            proxy_bind_addr: ":8000".into(),
            upstream_bind_addr: ":8001".into(),
            admin_bind_addr: ":8002".into(),
            proxy_advertise_addr: None,
            admin_advertise_addr: None,
            gossip_bind_addr: ":8003".into(),
            gossip_advertise_addr: None,
            proxy: proxy::Config::default(),
            upstream: upstream::Config::default(),
            admin_auth: None,
            proxy_tls: None,
            upstream_tls: None,
            admin_tls: None,
            proxy_peer_tls: None,
            admin_peer_tls: None,
            grace_period: Duration::from_secs(60),
            shutdown_delay: Duration::ZERO,
            cluster: ClusterConfig::default(),
            resolver: Arc::new(SystemResolver),
        }
    }
}

/// Whether gossip bound to `bound` is open to anyone who reaches it: not on loopback, and not
/// sealed with a shared secret.
fn gossip_is_open(bound: std::net::SocketAddr, secret: Option<&str>) -> bool {
    secret.is_none_or(str::is_empty) && !bound.ip().is_loopback()
}

/// A node ID as Piko makes them: `prefix` followed by 7 random characters of `[a-z0-9]`, new on
/// every start (so a restarted node is a new node to the cluster).
pub fn generate_node_id(prefix: &str) -> String {
    use std::hash::{BuildHasher, RandomState};
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz1234567890";
    // The standard library's randomly seeded hasher is random enough for a name.
    let random = RandomState::new();
    let suffix: String = (0..7u8)
        .map(|i| ALPHABET[(random.hash_one(i) % ALPHABET.len() as u64) as usize] as char)
        .collect();
    format!("{prefix}{suffix}")
}

/// Go's `:8000` means every interface; Rust's resolver wants a host.
fn listen_addr(addr: &str) -> String {
    match addr.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => addr.to_owned(),
    }
}

async fn bind(name: &str, addr: &str) -> io::Result<TcpListener> {
    piko_protocol::bind_listener(&listen_addr(addr))
        .await
        .map_err(|err| io::Error::new(err.kind(), format!("{name} listen: {addr}: {err}")))
}

/// A bound server node, not serving yet.
#[derive(Debug)]
pub struct Server {
    config: Config,
    proxy: TcpListener,
    upstream: TcpListener,
    admin: TcpListener,
    upstreams: Arc<Upstreams>,
    metrics: Arc<Metrics>,
    local: LocalNode,
    membership: Arc<Membership>,
    auth: Arc<ForwardAuth>,
    remotes: Arc<RemoteEndpoints>,
    gossip_addr: String,
}

impl Server {
    /// Binds the proxy, upstream and admin ports. Port 0 picks a free port; the bound addresses
    /// are available before [`Server::run`].
    ///
    /// # Errors
    /// A port cannot be bound (the message names the port and address).
    pub async fn bind(config: Config) -> io::Result<Self> {
        let proxy = bind("proxy", &config.proxy_bind_addr).await?;
        let upstream = bind("upstream", &config.upstream_bind_addr).await?;
        let admin = bind("admin", &config.admin_bind_addr).await?;
        let gossip =
            std::net::UdpSocket::bind(listen_addr(&config.gossip_bind_addr)).map_err(|err| {
                io::Error::new(
                    err.kind(),
                    format!("gossip listen: {}: {err}", config.gossip_bind_addr),
                )
            })?;
        if gossip_is_open(gossip.local_addr()?, config.cluster.secret.as_deref()) {
            tracing::warn!(
                subsystem = "cluster",
                addr = %gossip.local_addr()?,
                "gossip listens beyond loopback without cluster.secret: anyone who reaches it can announce a node and receive relayed requests; set cluster.secret (--cluster.secret) on every node"
            );
        }
        let gossip_addr = advertise_addr(
            config.gossip_advertise_addr.as_deref(),
            gossip.local_addr()?,
        );
        let local = LocalNode {
            id: config.node_id.clone(),
            proxy_addr: advertise_addr(config.proxy_advertise_addr.as_deref(), proxy.local_addr()?),
            admin_addr: advertise_addr(config.admin_advertise_addr.as_deref(), admin.local_addr()?),
        };
        let gossip_advertised = gossip_addr.parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("gossip advertise addr: {gossip_addr}: not an ip:port"),
            )
        })?;
        let auth = ForwardAuth::new(&config.node_id, config.cluster.secret.as_deref())
            .map_err(io::Error::other)?;
        let membership = Membership::start(
            &config.cluster,
            &config.node_id,
            gossip_advertised,
            gossip,
            (&local.proxy_addr, &local.admin_addr),
            &auth,
            config.resolver.clone(),
        )
        .await
        .map_err(|err| io::Error::other(format!("gossip: {err:#}")))?;
        Ok(Self {
            proxy,
            upstream,
            admin,
            upstreams: Arc::default(),
            metrics: Arc::default(),
            local,
            membership: Arc::new(membership),
            auth: Arc::new(auth),
            remotes: Arc::default(),
            gossip_addr,
            config,
        })
    }

    /// The node's ID.
    pub fn node_id(&self) -> &str {
        &self.local.id
    }

    /// The proxy address this node publishes to others.
    pub fn proxy_advertise_addr(&self) -> &str {
        &self.local.proxy_addr
    }

    /// The admin address this node publishes to others.
    pub fn admin_advertise_addr(&self) -> &str {
        &self.local.admin_addr
    }

    /// The bound proxy port.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The bound upstream port.
    pub fn upstream_addr(&self) -> SocketAddr {
        self.upstream
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The bound admin port.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The gossip address this node publishes to others.
    pub fn gossip_advertise_addr(&self) -> &str {
        &self.gossip_addr
    }

    /// The node's view of the cluster.
    pub fn membership(&self) -> Arc<Membership> {
        self.membership.clone()
    }

    /// The node's routing table.
    pub fn upstreams(&self) -> Arc<Upstreams> {
        self.upstreams.clone()
    }

    /// Where the other nodes' upstreams are, as this node routes to them.
    pub fn remotes(&self) -> Arc<RemoteEndpoints> {
        self.remotes.clone()
    }

    /// Serves until `shutdown` resolves, then shuts down in order, bounded by the grace period
    /// (see [`Server::run`]'s steps in `docs/cluster.md`): not ready, agents told to move; once
    /// they have moved, the node leaves the cluster; then no new connections, in-flight requests
    /// and tunnels finish, upstreams close once their streams are done; admin last.
    ///
    /// The node is ready once it has joined its cluster (see [`Membership::joined`]).
    ///
    /// # Errors
    /// No node was heard from within `cluster.join_timeout` and `cluster.abort_if_join_fails`
    /// is set (the node shuts down first).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let ready = Arc::new(AtomicBool::new(false));
        let (admin_stop, admin_tasks) = (CancellationToken::new(), TaskTracker::new());
        let (upstream_stop, upstream_tasks) = (CancellationToken::new(), TaskTracker::new());
        let upstream_leaving = CancellationToken::new();
        let upstream_drain = CancellationToken::new();
        let upstream_hard_stop = CancellationToken::new();
        let (proxy_stop, proxy_tasks) = (CancellationToken::new(), TaskTracker::new());
        let sessions = TaskTracker::new();
        let exchanges = TaskTracker::new();

        let admin = Arc::new(admin::Handler {
            ready: ready.clone(),
            metrics: self.metrics.clone(),
            upstreams: self.upstreams.clone(),
            local: self.local.clone(),
            membership: self.membership.clone(),
            forwarder: Forwarder::new(self.config.admin_peer_tls.as_ref()),
            auth: self.config.admin_auth.clone(),
        });
        // Renewed certificates are picked up while the node runs.
        let _tls_watchers: Vec<_> = [
            &self.config.proxy_tls,
            &self.config.upstream_tls,
            &self.config.admin_tls,
        ]
        .into_iter()
        .flatten()
        .map(|tls| tokio_util::task::AbortOnDropHandle::new(tokio::spawn(tls.clone().watch())))
        .collect();
        tracing::info!(subsystem = "admin", addr = %self.admin_addr(), "starting admin server");
        let admin_server = serve(
            self.admin,
            self.config.admin_tls.clone(),
            Protocols::Http1,
            Limits::default(),
            move |request, _| {
                let admin = admin.clone();
                async move { admin.handle(&request).await }
            },
            admin_stop.clone(),
            admin_tasks.clone(),
        );
        let admin_server = tokio::spawn(admin_server);

        let remotes = self.remotes.clone();
        let upstream = Arc::new(upstream::Handler {
            config: self.config.upstream.clone(),
            upstreams: self.upstreams.clone(),
            remotes: remotes.clone(),
            metrics: self.metrics.clone(),
            sessions: sessions.clone(),
            leaving: upstream_leaving.clone(),
            drain: upstream_drain.clone(),
            hard_stop: upstream_hard_stop.clone(),
            registrations: self
                .config
                .upstream
                .max_upstreams_per_endpoint
                .map(EndpointLoad::new),
        });
        tracing::info!(subsystem = "upstream", addr = %self.upstream.local_addr().expect("bound"), "starting upstream server");
        let upstream_server = tokio::spawn(serve(
            self.upstream,
            self.config.upstream_tls.clone(),
            Protocols::Http1,
            Limits {
                max_connections: self.config.upstream.max_connections,
                ..Limits::default()
            },
            move |request, peer| upstream.clone().handle(request, peer),
            upstream_stop.clone(),
            upstream_tasks.clone(),
        ));

        let routing = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(cluster::follow(
            remotes.clone(),
            self.membership.clone(),
            self.local.id.clone(),
            self.auth.clone(),
            self.metrics.clone(),
        )));
        let proxy = Arc::new(proxy::Handler {
            config: self.config.proxy.clone(),
            upstreams: self.upstreams.clone(),
            metrics: self.metrics.clone(),
            exchanges: exchanges.clone(),
            remotes: remotes.clone(),
            forwarder: Forwarder::new(self.config.proxy_peer_tls.as_ref()),
            auth: self.auth.clone(),
            endpoint_load: self
                .config
                .proxy
                .max_requests_per_endpoint
                .map(EndpointLoad::new),
        });
        tracing::info!(subsystem = "proxy", addr = %self.proxy.local_addr().expect("bound"), "starting proxy server");
        let proxy_server = tokio::spawn(serve(
            self.proxy,
            self.config.proxy_tls.clone(),
            Protocols::Http1And2,
            Limits {
                deadlines: Deadlines {
                    header_read: self.config.proxy.read_header_timeout,
                    idle: self.config.proxy.idle_timeout,
                    write_stall: self.config.proxy.write_timeout,
                },
                max_header_bytes: self.config.proxy.max_header_bytes,
                max_connections: self.config.proxy.max_connections,
            },
            move |request, peer| proxy.clone().handle(request, peer),
            proxy_stop.clone(),
            proxy_tasks.clone(),
        ));

        let publisher = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(publish_endpoints(
            self.upstreams.clone(),
            self.membership.clone(),
        )));
        let rebalance = &self.config.upstream.rebalance;
        let rebalancer = (rebalance.threshold > 0.0).then(|| {
            tokio_util::task::AbortOnDropHandle::new(tokio::spawn(cluster::rebalance_loop(
                rebalance.clone(),
                self.upstreams.clone(),
                self.membership.clone(),
                self.local.id.clone(),
            )))
        });

        let mut shutdown = std::pin::pin!(shutdown);
        let join_failure = tokio::select! {
            joined = tokio::time::timeout(self.config.cluster.join_timeout, self.membership.joined()) => match joined {
                Ok(()) => {
                    // The routing table follows the gossip a round later: build it now, so that
                    // the first requests find the endpoints the peers hold.
                    remotes.refresh(&self.membership, &self.local.id, &self.auth).await;
                    ready.store(true, Ordering::Release);
                    shutdown.as_mut().await;
                    None
                }
                Err(_) => {
                    let failure = anyhow::anyhow!(
                        "cluster join: no node answered within {:?}",
                        self.config.cluster.join_timeout
                    );
                    tracing::warn!(subsystem = "server", error = %failure, "failed to join cluster");
                    if self.config.cluster.abort_if_join_fails {
                        Some(failure)
                    } else {
                        // Serving alone; the join loop goes on, so the cluster forms later.
                        ready.store(true, Ordering::Release);
                        shutdown.as_mut().await;
                        None
                    }
                }
            },
            () = &mut shutdown => None,
        };

        tracing::info!(subsystem = "server", "starting shutdown");
        ready.store(false, Ordering::Release);
        drop(rebalancer);
        // New upstreams are refused with a retryable 503 from here on, and connected agents are
        // told to connect again (through the balancer, to another node) while their sessions
        // here keep serving.
        upstream_leaving.cancel();
        let handover = tokio::time::timeout(
            HANDOVER_LIMIT.min(self.config.grace_period),
            cluster::handed_over(&self.upstreams, &remotes, &self.membership, &self.local.id),
        );
        // Connections keep being accepted and served meanwhile: a balancer that has not seen
        // `/ready` fail yet still sends some, and they must not be refused.
        let (_, handed_over) =
            tokio::join!(tokio::time::sleep(self.config.shutdown_delay), handover);
        if handed_over.is_err() {
            tracing::warn!(
                subsystem = "server",
                "upstreams did not all reconnect to other nodes in time; leaving anyway"
            );
        }
        // Peers stop relaying requests here before the proxy port closes (until then this node
        // still serves them from the sessions of the agents that moved); gossip goes on until
        // the end.
        self.membership.leave().await;
        // A node alone has no one to tell.
        let has_peers = self
            .membership
            .nodes()
            .await
            .iter()
            .any(|node| node.id != self.local.id && node.status == cluster::NodeStatus::Active);
        if has_peers {
            tokio::time::sleep(self.config.cluster.gossip_interval * LEAVE_SPREAD_ROUNDS).await;
        }
        let graceful = async {
            proxy_stop.cancel();
            upstream_stop.cancel();
            let _ = tokio::join!(proxy_server, upstream_server);
            proxy_tasks.close();
            proxy_tasks.wait().await;
            exchanges.close();
            exchanges.wait().await;
            tracing::info!(subsystem = "server", "shutdown proxy server");
            // Only now that no request can still pick an upstream: each session finishes its
            // streams and closes.
            upstream_drain.cancel();
            upstream_tasks.close();
            upstream_tasks.wait().await;
            sessions.close();
            sessions.wait().await;
            tracing::info!(subsystem = "server", "shutdown upstream server");
        };
        if tokio::time::timeout(self.config.grace_period, graceful)
            .await
            .is_err()
        {
            tracing::warn!(
                subsystem = "server",
                "grace period expired; closing what is left"
            );
            upstream_hard_stop.cancel();
            for session in self.upstreams.drain() {
                session.close();
            }
            // Sessions close at once now; their tasks only log and exit.
            sessions.close();
            let _ = tokio::time::timeout(Duration::from_secs(1), sessions.wait()).await;
        }
        drop(publisher);
        drop(routing);
        // Chitchat has no leave message: the peers learn it at their next exchanges with us,
        // which the drain above usually gave them; a few more rounds for a quick one.
        if has_peers {
            tokio::time::sleep(self.config.cluster.gossip_interval * 3).await;
        }
        tracing::info!(subsystem = "server", "left cluster");
        self.membership.shutdown();
        admin_stop.cancel();
        let _ = admin_server.await;
        tracing::info!(subsystem = "server", "shutdown admin server");
        tracing::info!(subsystem = "server", "shutdown complete");
        join_failure.map_or(Ok(()), Err)
    }
}

/// How long a stopping node waits for its agents to reconnect elsewhere (bounded by the grace
/// period too). Piko v0.9.0 agents ignore GoAway and are only moved when their session closes.
const HANDOVER_LIMIT: Duration = Duration::from_secs(10);

/// Gossip rounds a leaving node keeps its proxy open for, so that every peer has heard it left
/// before the port closes (in a cluster of a few nodes each round reaches every peer; a request
/// relayed after that finds the port closed and is retried on another node).
const LEAVE_SPREAD_ROUNDS: u32 = 5;

/// Keeps this node's published upstream counts equal to its routing table.
async fn publish_endpoints(upstreams: Arc<Upstreams>, membership: Arc<Membership>) {
    let mut changes = upstreams.subscribe();
    loop {
        membership.publish_endpoints(&upstreams.endpoints()).await;
        if changes.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gossip_is_open_only_beyond_loopback_without_a_secret() {
        let addr = |text: &str| text.parse::<std::net::SocketAddr>().unwrap();
        assert!(gossip_is_open(addr("0.0.0.0:8003"), None));
        assert!(gossip_is_open(addr("10.1.2.3:8003"), Some("")));
        assert!(!gossip_is_open(addr("0.0.0.0:8003"), Some("s3cret")));
        assert!(!gossip_is_open(addr("127.0.0.1:8003"), None));
        assert!(!gossip_is_open(addr("[::1]:8003"), None));
    }
}
