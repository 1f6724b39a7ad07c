//! `piko server`'s `--cluster.*` flags and `cluster:` keys (spec §1.3.1): the node's identity
//! and how it joins others, validated as Piko validates them (spec §1.3.2).

use std::time::Duration;

use crate::{config_file, duration};

/// `--cluster.*`.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Cluster")]
pub(crate) struct ClusterFlags {
    /// The node's ID; empty generates a new random one at every start [default: ""].
    #[arg(long = "cluster.node-id")]
    node_id: Option<String>,
    /// Prefix of generated node IDs (such as the pod name, `piko-0-`) [default: ""].
    #[arg(long = "cluster.node-id-prefix")]
    node_id_prefix: Option<String>,
    /// Gossip addresses or DNS names of nodes to join; comma-separated, repeatable.
    #[arg(long = "cluster.join", value_delimiter = ',')]
    join: Vec<String>,
    /// How long to keep trying to join the cluster [default: 1m].
    #[arg(long = "cluster.join-timeout", value_parser = duration::parse)]
    join_timeout: Option<Duration>,
    /// Exit when the node cannot join the cluster (else it runs alone) [default: true].
    #[arg(long = "cluster.abort-if-join-fails", num_args = 0..=1, default_missing_value = "true")]
    abort_if_join_fails: Option<bool>,
    /// Address the gossip port listens on (TCP and UDP) [default: :8003].
    #[arg(long = "cluster.gossip.bind-addr")]
    gossip_bind_addr: Option<String>,
    /// Gossip address published to other nodes; empty derives it from the bound one
    /// [default: ""].
    #[arg(long = "cluster.gossip.advertise-addr")]
    gossip_advertise_addr: Option<String>,
    /// How often the node gossips [default: 100ms].
    #[arg(long = "cluster.gossip.interval", value_parser = duration::parse)]
    gossip_interval: Option<Duration>,
    /// Largest gossip datagram, in bytes [default: 1400].
    #[arg(long = "cluster.gossip.max-packet-size")]
    gossip_max_packet_size: Option<u64>,
    /// Secret shared by the nodes: seals their gossip and authenticates the requests they relay
    /// to each other; empty: gossip is open and each node publishes a random key of its own
    /// over it [default: ""].
    #[arg(long = "cluster.secret")]
    secret: Option<String>,
}

/// The cluster settings in effect.
#[derive(Debug)]
pub(crate) struct Cluster {
    pub(crate) node_id: String,
    pub(crate) join: Vec<String>,
    pub(crate) gossip_bind_addr: String,
    pub(crate) gossip_advertise_addr: Option<String>,
    pub(crate) gossip_interval: Duration,
    pub(crate) join_timeout: Duration,
    pub(crate) secret: Option<String>,
    pub(crate) abort_if_join_fails: bool,
}

impl ClusterFlags {
    /// Flags over the file's `cluster:` over Piko's defaults; errors read
    /// `config: cluster: ...`.
    pub(crate) fn resolve(self, file: config_file::Cluster) -> anyhow::Result<Cluster> {
        let fail = |reason: &str| anyhow::anyhow!("config: cluster: {reason}");
        let join_timeout = self
            .join_timeout
            .or(file.join_timeout.map(|d| d.0))
            .unwrap_or(Duration::from_secs(60));
        if join_timeout.is_zero() {
            return Err(fail("missing join timeout"));
        }
        let gossip_bind_addr = self
            .gossip_bind_addr
            .or(file.gossip.bind_addr)
            .unwrap_or_else(|| ":8003".into());
        if gossip_bind_addr.is_empty() {
            return Err(fail("gossip: missing bind addr"));
        }
        let interval = self
            .gossip_interval
            .or(file.gossip.interval.map(|d| d.0))
            .unwrap_or(Duration::from_millis(100));
        if interval.is_zero() {
            return Err(fail("gossip: missing interval"));
        }
        let max_packet_size = self
            .gossip_max_packet_size
            .or(file.gossip.max_packet_size)
            .unwrap_or(1400);
        if max_packet_size == 0 {
            return Err(fail("gossip: missing max packet size"));
        }
        let node_id = self
            .node_id
            .or(file.node_id)
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| {
                let prefix = self.node_id_prefix.or(file.node_id_prefix);
                piko_server::generate_node_id(prefix.as_deref().unwrap_or(""))
            });
        let join = if self.join.is_empty() {
            file.join.unwrap_or_default()
        } else {
            self.join
        };
        Ok(Cluster {
            node_id,
            join,
            gossip_bind_addr,
            gossip_advertise_addr: self
                .gossip_advertise_addr
                .or(file.gossip.advertise_addr)
                .filter(|addr| !addr.is_empty()),
            gossip_interval: interval,
            join_timeout,
            secret: self
                .secret
                .or(file.secret)
                .filter(|secret| !secret.is_empty()),
            abort_if_join_fails: self
                .abort_if_join_fails
                .or(file.abort_if_join_fails)
                .unwrap_or(true),
        })
    }
}
