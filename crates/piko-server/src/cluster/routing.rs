//! Which other nodes hold upstreams of an endpoint, kept ready for the proxy's lookups (a read
//! lock and a hash lookup per request; rebuilt from the gossip state whenever it changes).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, PoisonError, RwLock},
};

use tokio::sync::watch;

use crate::metrics::Metrics;

use super::{
    forward_auth::{ForwardAuth, PeerAuth, PeerKey},
    membership::{Membership, Node, NodeStatus},
};

/// A node holding upstreams of an endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteNode {
    /// Node ID.
    pub id: String,
    /// Its proxy port.
    pub proxy_addr: String,
    /// How many upstreams of the endpoint it holds.
    pub upstreams: usize,
    /// What relayed requests to it are signed with.
    pub(crate) key: PeerKey,
}

/// Active remote nodes by the endpoints they hold.
#[derive(Debug)]
pub struct RemoteEndpoints {
    by_endpoint: RwLock<HashMap<String, Vec<RemoteNode>>>,
    /// Bumped on every rebuild.
    version: watch::Sender<u64>,
}

impl Default for RemoteEndpoints {
    fn default() -> Self {
        Self {
            by_endpoint: RwLock::default(),
            version: watch::Sender::new(0),
        }
    }
}

impl RemoteEndpoints {
    /// Upstreams of `endpoint` on active nodes other than this one.
    pub fn total(&self, endpoint: &str) -> usize {
        self.by_endpoint
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(endpoint)
            .map_or(0, |nodes| {
                nodes
                    .iter()
                    .fold(0usize, |sum, node| sum.saturating_add(node.upstreams))
            })
    }

    /// A receiver that changes whenever the table is rebuilt.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// A node holding `endpoint`, chosen in proportion to its upstreams (Piko picks uniformly,
    /// which overloads the node with fewer upstreams), other than `excluded`.
    pub fn pick(&self, endpoint: &str, excluded: Option<&str>) -> Option<RemoteNode> {
        let table = self
            .by_endpoint
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let candidates: Vec<&RemoteNode> = table
            .get(endpoint)?
            .iter()
            .filter(|node| Some(node.id.as_str()) != excluded)
            .collect();
        // Counts come from peers: summed without overflow whatever they publish.
        let total = candidates
            .iter()
            .fold(0usize, |sum, node| sum.saturating_add(node.upstreams));
        if total == 0 {
            return None;
        }
        let mut ticket = rand::random_range(0..total);
        for node in candidates {
            if ticket < node.upstreams {
                return Some(node.clone());
            }
            ticket -= node.upstreams;
        }
        None
    }

    /// Rebuilds the table from the cluster's current state.
    pub(crate) async fn refresh(&self, membership: &Membership, own_id: &str, auth: &ForwardAuth) {
        self.rebuild(membership.nodes().await, own_id, auth);
    }

    /// Rebuilds the table from `nodes`, the cluster's current members.
    fn rebuild(&self, nodes: Vec<Node>, own_id: &str, auth: &ForwardAuth) {
        let mut by_endpoint: HashMap<String, Vec<RemoteNode>> = HashMap::new();
        for node in nodes {
            if node.id == own_id || node.status != NodeStatus::Active {
                continue;
            }
            // A node we cannot sign for would take our requests for a client's.
            let Some(key) = auth.peer_key(&PeerAuth {
                id: &node.id,
                proxy_addr: &node.proxy_addr,
                forward_key: node.forward_key.as_deref(),
                member_proof: node.member_proof.as_deref(),
            }) else {
                continue;
            };
            for (endpoint, upstreams) in node.endpoints {
                if upstreams > 0 {
                    by_endpoint.entry(endpoint).or_default().push(RemoteNode {
                        id: node.id.clone(),
                        proxy_addr: node.proxy_addr.clone(),
                        upstreams,
                        key: key.clone(),
                    });
                }
            }
        }
        *self
            .by_endpoint
            .write()
            .unwrap_or_else(PoisonError::into_inner) = by_endpoint;
        self.version.send_modify(|version| *version += 1);
    }
}

/// Keeps `table` equal to the cluster's state until the membership ends, and `metrics` free of
/// nodes the cluster has forgotten.
pub(crate) async fn follow(
    table: Arc<RemoteEndpoints>,
    membership: Arc<Membership>,
    own_id: String,
    auth: Arc<ForwardAuth>,
    metrics: Arc<Metrics>,
) {
    let mut changes = membership.changes().await;
    loop {
        let nodes = membership.nodes().await;
        let known: HashSet<String> = nodes.iter().map(|node| node.id.clone()).collect();
        table.rebuild(nodes, &own_id, &auth);
        metrics.forget_remote_nodes(|id| known.contains(id));
        if changes.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_follow_upstream_counts_and_skip_the_excluded() {
        let table = RemoteEndpoints::default();
        let node = |id: &str, upstreams| RemoteNode {
            key: PeerKey(Vec::new()),
            id: id.into(),
            proxy_addr: format!("{id}:8000"),
            upstreams,
        };
        table
            .by_endpoint
            .write()
            .unwrap()
            .insert("e".into(), vec![node("a", 1), node("b", 3)]);
        let mut picks = HashMap::new();
        for _ in 0..4000 {
            *picks.entry(table.pick("e", None).unwrap().id).or_insert(0) += 1;
        }
        // 1:3, well within chance.
        assert!((800..1200).contains(&picks["a"]), "{picks:?}");
        assert_eq!(table.pick("e", Some("b")).unwrap().id, "a");
        assert_eq!(table.pick("other", None), None);
    }
}
