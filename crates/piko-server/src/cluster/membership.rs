//! Cluster membership on chitchat (scuttlebutt anti-entropy with a phi-accrual failure
//! detector, the model of Piko's own gossip). Each node publishes, under its own keys, where
//! other nodes reach it (`proxy_addr`, `admin_addr`) and how many upstreams it holds per
//! endpoint (`endpoint:<tenant>/<id>`, the tenant empty when there is none); everything else
//! is read from what the others publish.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState, ProtocolVersion,
    spawn_chitchat, transport::UdpTransport,
};
use tokio_util::task::AbortOnDropHandle;

use super::{
    forward_auth::{FORWARD_KEY, ForwardAuth, MEMBER_PROOF},
    join::{Resolver, Seed, join_loop},
    sealed_transport::SealedUdpTransport,
};
use crate::status::{GossipEntry, GossipNode, GossipNodeState};

const PROXY_ADDR: &str = "proxy_addr";
const ADMIN_ADDR: &str = "admin_addr";
const ENDPOINT_PREFIX: &str = "endpoint:";
/// Published when a node leaves gracefully, so that peers stop routing to it at once.
const LEFT: &str = "left";

/// Settings of the membership layer.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// `cluster.join`: addresses or DNS names of nodes to join.
    pub join: Vec<String>,
    /// How often the join entries are resolved and gossiped to again.
    pub join_interval: Duration,
    /// How often the node gossips (`cluster.gossip.interval`).
    pub gossip_interval: Duration,
    /// Phi above which a silent node is unreachable (chitchat's and Cassandra's 8).
    pub phi_threshold: f64,
    /// How long an unreachable node stays listed before it is forgotten (Piko: 1 minute).
    pub dead_node_grace_period: Duration,
    /// How long a starting node waits to hear from the cluster it joins before it gives up
    /// (`cluster.join_timeout`); it is not ready meanwhile.
    pub join_timeout: Duration,
    /// Whether giving up ends the process (`cluster.abort_if_join_fails`) rather than serving
    /// alone.
    pub abort_if_join_fails: bool,
    /// The secret nodes seal their gossip and authenticate relayed requests with
    /// (`cluster.secret`); none: gossip is open, as in Piko, and each node publishes a random
    /// key of its own for relayed requests.
    pub secret: Option<String>,
    /// Carries the gossip; none: UDP on the gossip port, sealed when there is a secret. (Tests
    /// pass chitchat's in-process `ChannelTransport`, whose links they cut to make partitions.)
    pub transport: Option<GossipTransport>,
}

/// A gossip transport other than UDP.
#[derive(Clone)]
pub struct GossipTransport(pub Arc<dyn chitchat::transport::Transport>);

impl std::fmt::Debug for GossipTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GossipTransport")
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            join: Vec::new(),
            join_interval: Duration::from_secs(10),
            gossip_interval: Duration::from_millis(100),
            phi_threshold: 8.0,
            dead_node_grace_period: Duration::from_secs(60),
            join_timeout: Duration::from_secs(60),
            abort_if_join_fails: true,
            secret: None,
            transport: None,
        }
    }
}

/// A node's status as Piko names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeStatus {
    /// Gossiping.
    Active,
    /// Silent for longer than the failure detector accepts.
    Unreachable,
    /// Announced that it is leaving.
    Left,
}

impl NodeStatus {
    /// Piko's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Unreachable => "unreachable",
            Self::Left => "left",
        }
    }
}

/// A node as the cluster sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Node ID.
    pub id: String,
    /// Active, unreachable or left.
    pub status: NodeStatus,
    /// Where its proxy port is reached.
    pub proxy_addr: String,
    /// Where its admin port is reached.
    pub admin_addr: String,
    /// Upstreams it holds per endpoint.
    pub endpoints: BTreeMap<String, usize>,
    /// Its random forwarding key (hex), when it has no shared secret.
    pub forward_key: Option<String>,
    /// Its proof that it knows the shared secret, when it has one.
    pub member_proof: Option<String>,
}

impl Node {
    /// Upstreams it holds across its endpoints. The counts are what the node published:
    /// summed without overflow whatever it says.
    pub fn upstream_total(&self) -> usize {
        self.endpoints
            .values()
            .fold(0usize, |sum, n| sum.saturating_add(*n))
    }
}

/// This node's place in the cluster.
pub struct Membership {
    handle: Arc<ChitchatHandle>,
    own: ChitchatId,
    /// Whether the join entries, last resolved, name no other node (or there are none).
    alone: tokio::sync::watch::Receiver<bool>,
    _join: AbortOnDropHandle<()>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("own", &self.own)
            .finish()
    }
}

impl Membership {
    /// Starts gossiping as `node_id` on the port `reserved` holds, advertising `gossip_addr`
    /// and publishing the proxy and admin addresses.
    ///
    /// Chitchat binds its socket itself, so the node's port is reserved at bind time (port 0
    /// resolved, the advertised address known) and handed over here: released, then bound again
    /// by chitchat at once.
    ///
    /// # Errors
    /// Chitchat could not start (its port was taken in between, for one).
    pub(crate) async fn start(
        config: &ClusterConfig,
        node_id: &str,
        gossip_addr: SocketAddr,
        reserved: std::net::UdpSocket,
        addresses: (&str, &str),
        auth: &ForwardAuth,
        resolver: Arc<dyn Resolver>,
    ) -> anyhow::Result<Self> {
        let listen_addr = reserved.local_addr()?;
        drop(reserved);
        // A restarted node is a new generation of its ID (Piko gives it a new ID besides).
        let generation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            });
        let own = ChitchatId::new(node_id.to_owned(), generation, gossip_addr);
        let chitchat_config = ChitchatConfig {
            chitchat_id: own.clone(),
            cluster_id: "piko".into(),
            gossip_interval: config.gossip_interval,
            listen_addr,
            // Seeds are ours to resolve and gossip to (`join_loop`), again and again.
            seed_nodes: Vec::new(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: config.phi_threshold,
                // Heartbeats come every gossip round or so; chitchat's 5 s prior would make a
                // new peer's first silence look normal for many rounds.
                initial_interval: config.gossip_interval * 2,
                dead_node_grace_period: config.dead_node_grace_period,
                ..FailureDetectorConfig::default()
            },
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V1,
        };
        let (auth_key, auth_value) = auth.published(addresses.0);
        let initial = vec![
            (PROXY_ADDR.to_owned(), addresses.0.to_owned()),
            (ADMIN_ADDR.to_owned(), addresses.1.to_owned()),
            (auth_key.to_owned(), auth_value),
        ];
        let handle = match &config.transport {
            Some(GossipTransport(transport)) => {
                spawn_chitchat(chitchat_config, initial, transport.as_ref()).await?
            }
            None => match &config.secret {
                Some(secret) => {
                    let transport = SealedUdpTransport::new(secret);
                    spawn_chitchat(chitchat_config, initial, &transport).await?
                }
                None => spawn_chitchat(chitchat_config, initial, &UdpTransport).await?,
            },
        };
        let handle = Arc::new(handle);
        tracing::info!(subsystem = "gossip", node_id, bind_addr = %listen_addr, advertise_addr = %gossip_addr, "starting gossip");
        let seeds: Vec<Seed> = config
            .join
            .iter()
            .map(|entry| Seed::parse(entry, gossip_addr.port()))
            .collect();
        let gossiper = handle.clone();
        let (alone_tx, alone) = tokio::sync::watch::channel(seeds.is_empty());
        let join = tokio::spawn(join_loop(
            seeds,
            resolver,
            config.join_interval,
            gossip_addr,
            move |addr| {
                let _ = gossiper.gossip(addr);
            },
            alone_tx,
        ));
        Ok(Self {
            handle,
            own,
            alone,
            _join: AbortOnDropHandle::new(join),
        })
    }

    /// Publishes this node's upstream count per endpoint: changed counts are set, endpoints no
    /// longer held are deleted.
    pub(crate) async fn publish_endpoints(&self, endpoints: &[(String, usize)]) {
        let wanted: BTreeMap<String, String> = endpoints
            .iter()
            .map(|(name, count)| (endpoint_key(name), count.to_string()))
            .collect();
        self.handle
            .with_chitchat(|chitchat| {
                let state = chitchat.self_node_state();
                let stale: Vec<String> = state
                    .key_values()
                    .filter(|(key, _)| {
                        key.starts_with(ENDPOINT_PREFIX) && !wanted.contains_key(*key)
                    })
                    .map(|(key, _)| key.to_owned())
                    .collect();
                for key in stale {
                    state.delete(&key);
                }
                for (key, value) in &wanted {
                    if state.get(key) != Some(value.as_str()) {
                        state.set(key, value);
                    }
                }
            })
            .await;
    }

    /// Resolves once this node is part of a cluster: it has heard from another node, or its
    /// join entries name no other node (it is the first). A node that routed requests before
    /// would answer 502 for endpoints its peers hold.
    pub async fn joined(&self) {
        let mut alone = self.alone.clone();
        let mut changes = self.changes().await;
        loop {
            let heard = self
                .nodes()
                .await
                .iter()
                .any(|n| n.id != *self.own.node_id && n.status == NodeStatus::Active);
            if *alone.borrow_and_update() || heard {
                return;
            }
            tokio::select! {
                changed = alone.changed() => if changed.is_err() { return std::future::pending().await },
                changed = changes.changed() => if changed.is_err() { return std::future::pending().await },
            }
        }
    }

    /// Tells the cluster this node is leaving, so that its peers stop routing to it.
    pub(crate) async fn leave(&self) {
        self.handle
            .with_chitchat(|chitchat| chitchat.self_node_state().set(LEFT, ""))
            .await;
    }

    /// Stops gossiping, without a word to the peers (after the node announced it is leaving,
    /// or as a crash would).
    pub fn shutdown(&self) {
        let _ = self.handle.initiate_shutdown();
    }

    /// Every node known, this one included, sorted by ID. Nodes that have not published their
    /// addresses yet are left out (nothing could be routed to them).
    pub async fn nodes(&self) -> Vec<Node> {
        self.handle
            .with_chitchat(|chitchat| {
                let live: Vec<ChitchatId> = chitchat.live_nodes().cloned().collect();
                let mut nodes: Vec<Node> = chitchat
                    .node_states()
                    .iter()
                    .filter_map(|(id, state)| {
                        let reachable = *id == self.own || live.contains(id);
                        node(id, state, reachable)
                    })
                    .collect();
                nodes.sort_by(|a, b| a.id.cmp(&b.id));
                nodes
            })
            .await
    }

    /// Every node's gossip state, in Piko's status shape, sorted by ID.
    pub async fn gossip_states(&self) -> Vec<GossipNodeState> {
        self.handle
            .with_chitchat(|chitchat| {
                let live: Vec<ChitchatId> = chitchat.live_nodes().cloned().collect();
                let mut states: Vec<GossipNodeState> = chitchat
                    .node_states()
                    .iter()
                    .map(|(id, state)| {
                        // A node's forwarding key is a secret: never shown.
                        let mut entries: Vec<GossipEntry> = state
                            .key_values_including_deleted()
                            .filter(|(key, _)| *key != FORWARD_KEY)
                            .map(|(key, value)| GossipEntry {
                                key: key.to_owned(),
                                value: value.value.clone(),
                                version: value.version,
                                internal: false,
                                deleted: value.is_deleted(),
                            })
                            .collect();
                        entries.sort_by_key(|entry| entry.version);
                        GossipNodeState {
                            node: GossipNode {
                                id: id.node_id.to_string(),
                                addr: id.gossip_advertise_addr.to_string(),
                                version: state.max_version(),
                                left: state.get(LEFT).is_some(),
                                unreachable: *id != self.own && !live.contains(id),
                                expiry: crate::status::NO_EXPIRY.into(),
                            },
                            entries: (!entries.is_empty()).then_some(entries),
                        }
                    })
                    .collect();
                states.sort_by(|a, b| a.node.id.cmp(&b.node.id));
                states
            })
            .await
    }

    /// Resolves whenever the set of live nodes or one of their states changes.
    pub async fn changes(&self) -> tokio::sync::watch::Receiver<BTreeMap<ChitchatId, NodeState>> {
        self.handle
            .with_chitchat(|chitchat| chitchat.live_nodes_watcher())
            .await
    }
}

/// Key of an endpoint's upstream count.
/// The key of a routed endpoint name: a tenant's (`acme/api`) is its tenant and ID already.
fn endpoint_key(name: &str) -> String {
    if name.contains(crate::auth::TENANT_SEPARATOR) {
        format!("{ENDPOINT_PREFIX}{name}")
    } else {
        format!("{ENDPOINT_PREFIX}/{name}")
    }
}

fn node(id: &ChitchatId, state: &NodeState, reachable: bool) -> Option<Node> {
    let status = if state.get(LEFT).is_some() {
        NodeStatus::Left
    } else if reachable {
        NodeStatus::Active
    } else {
        NodeStatus::Unreachable
    };
    let endpoints = state
        .key_values()
        .filter_map(|(key, value)| {
            let (tenant, endpoint) = key.strip_prefix(ENDPOINT_PREFIX)?.split_once('/')?;
            let name = if tenant.is_empty() {
                endpoint.to_owned()
            } else {
                format!("{tenant}/{endpoint}")
            };
            Some((name, value.parse().ok()?))
        })
        .collect();
    Some(Node {
        id: id.node_id.to_string(),
        status,
        proxy_addr: state.get(PROXY_ADDR)?.to_owned(),
        admin_addr: state.get(ADMIN_ADDR)?.to_owned(),
        endpoints,
        forward_key: state.get(FORWARD_KEY).map(str::to_owned),
        member_proof: state.get(MEMBER_PROOF).map(str::to_owned),
    })
}
