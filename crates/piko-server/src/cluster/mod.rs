//! The cluster: which nodes exist, where they are, and which endpoints each one serves.
//!
//! - `membership`: chitchat gossip, this node's published keys, and the nodes it hears of.
//! - `join`: `cluster.join` entries, resolved again every interval.

mod join;
mod membership;

pub use join::{Resolver, SystemResolver};
pub use membership::{ClusterConfig, Membership, Node, NodeStatus};
