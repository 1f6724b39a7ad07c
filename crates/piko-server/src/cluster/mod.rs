//! The cluster: which nodes exist, where they are, and which endpoints each one serves.
//!
//! - `membership`: chitchat gossip, this node's published keys, and the nodes it hears of.
//! - `join`: `cluster.join` entries, resolved again every interval.
//! - `routing`: which other nodes hold an endpoint, for the proxy's lookups.
//! - `gossip_seal`, `sealed_transport`: gossip datagrams sealed with the cluster's secret.
//! - `forward_auth`: signing and checking requests relayed between nodes.
//! - `handover`: a stopping node's upstreams moving to the other nodes.
//! - `rebalance`: a node with too many upstreams asking some to move.

mod forward_auth;
mod gossip_seal;
mod handover;
mod join;
mod membership;
mod rebalance;
mod routing;
mod sealed_transport;

pub use forward_auth::{ForwardAuth, PeerAuth, PeerKey, SIGNATURE_HEADER};
pub(crate) use handover::{handed_over, replaced};
pub use join::{Resolver, SystemResolver};
pub use membership::{ClusterConfig, GossipTransport, Membership, Node, NodeStatus};
pub use rebalance::RebalanceConfig;
pub(crate) use rebalance::rebalance_loop;
pub(crate) use routing::follow;
pub use routing::{RemoteEndpoints, RemoteNode};
