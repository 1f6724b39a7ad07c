//! Handing a stopping node's upstreams over to the rest of the cluster before it stops routing
//! to them: agents told to move (GoAway) connect again through the load balancer, and the node
//! waits until the cluster sees them on other nodes.

use super::{
    membership::{Membership, NodeStatus},
    routing::RemoteEndpoints,
};
use crate::upstreams::Upstreams;

/// Resolves once `endpoint` has more upstreams in the cluster (here and on active nodes) than
/// `before`: the replacement of a connection asked to go has arrived somewhere.
pub(crate) async fn replaced(
    upstreams: &Upstreams,
    remotes: &RemoteEndpoints,
    endpoint: &str,
    before: usize,
) {
    let mut rebuilt = remotes.subscribe();
    let mut local = upstreams.subscribe();
    while upstreams
        .count(endpoint)
        .saturating_add(remotes.total(endpoint))
        <= before
    {
        tokio::select! {
            changed = rebuilt.changed() => if changed.is_err() { return },
            changed = local.changed() => if changed.is_err() { return },
        }
    }
}

/// Resolves once every endpoint this node holds has, on other active nodes, as many upstreams
/// as it has here plus as many as it had there before: its agents are connected elsewhere too.
/// At once when no other node is active (there is nowhere to move to). Upstreams that end
/// meanwhile are no longer waited for; the caller bounds the wait (an agent that ignores
/// GoAway, as Piko v0.9.0's does, never moves).
pub(crate) async fn handed_over(
    upstreams: &Upstreams,
    remotes: &RemoteEndpoints,
    membership: &Membership,
    own_id: &str,
) {
    let elsewhere = membership
        .nodes()
        .await
        .iter()
        .any(|node| node.id != own_id && node.status == NodeStatus::Active);
    if !elsewhere {
        return;
    }
    let before: Vec<(String, usize)> = upstreams
        .endpoints()
        .into_iter()
        .map(|(endpoint, _)| {
            let remote = remotes.total(&endpoint);
            (endpoint, remote)
        })
        .collect();
    let mut rebuilt = remotes.subscribe();
    let mut local = upstreams.subscribe();
    loop {
        let moved = before.iter().all(|(endpoint, remote_before)| {
            remotes.total(endpoint) >= remote_before.saturating_add(upstreams.count(endpoint))
        });
        if moved {
            return;
        }
        tokio::select! {
            changed = rebuilt.changed() => if changed.is_err() { return },
            changed = local.changed() => if changed.is_err() { return },
        }
    }
}
