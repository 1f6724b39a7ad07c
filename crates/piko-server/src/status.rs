//! The admin port's status routes (spec §9.2), in Piko's JSON shapes so that Piko's own
//! `piko server status` and operators' scripts read them unchanged. The same types decode them
//! in our `piko server status`.
//!
//! The local node is described from its own routing table (always current); other nodes from
//! what they gossip.

use std::collections::BTreeMap;

use http::{HeaderValue, Response, StatusCode, header};
use serde::{Deserialize, Serialize};

use crate::{
    cluster::{Membership, Node},
    json_error::full,
    serve::Body,
    upstreams::Upstreams,
};

/// Piko's zero `time.Time`, meaning "no expiry".
pub(crate) const NO_EXPIRY: &str = "0001-01-01T00:00:00Z";

/// A node of the cluster as listed by `GET /status/cluster/nodes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSummary {
    /// Node ID.
    pub id: String,
    /// `active`, `unreachable` or `left`.
    pub status: String,
    /// Where other nodes forward proxied requests.
    pub proxy_addr: String,
    /// Where admin requests are forwarded.
    pub admin_addr: String,
    /// Endpoints with at least one upstream on the node.
    pub endpoints: usize,
    /// Upstreams connected to the node, over every endpoint.
    pub upstreams: usize,
}

/// One node as returned by `GET /status/cluster/nodes/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node ID.
    pub id: String,
    /// `active`, `unreachable` or `left`.
    pub status: String,
    /// Where other nodes forward proxied requests.
    pub proxy_addr: String,
    /// Where admin requests are forwarded.
    pub admin_addr: String,
    /// Upstreams per endpoint; `null` when there are none, as in Piko.
    pub endpoints: Option<BTreeMap<String, usize>>,
}

/// A node's gossip metadata (`GET /status/gossip/nodes`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipNode {
    /// Node ID.
    pub id: String,
    /// Gossip address.
    pub addr: String,
    /// Version of the node's latest entry.
    pub version: u64,
    /// Whether the node announced it left.
    pub left: bool,
    /// Whether this node's failure detector considers it unreachable.
    pub unreachable: bool,
    /// When a left or unreachable node is forgotten (RFC 3339; the zero time when not set).
    pub expiry: String,
}

/// A node's gossip state (`GET /status/gossip/nodes/{id}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipNodeState {
    /// The node's metadata.
    #[serde(flatten)]
    pub node: GossipNode,
    /// Its entries by version. (Capitalised as Piko writes it: its field has no JSON name.)
    #[serde(rename = "Entries")]
    pub entries: Option<Vec<GossipEntry>>,
}

/// One key a node publishes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipEntry {
    /// Key, such as `proxy_addr` or `endpoint:<id>`.
    pub key: String,
    /// Value.
    pub value: String,
    /// Version at which the node wrote it.
    pub version: u64,
    /// Whether the key is the gossip layer's own.
    pub internal: bool,
    /// Whether the entry is a deletion.
    pub deleted: bool,
}

/// Who this node is, as the status routes report it.
#[derive(Clone, Debug)]
pub(crate) struct LocalNode {
    pub(crate) id: String,
    pub(crate) proxy_addr: String,
    pub(crate) admin_addr: String,
}

impl LocalNode {
    fn summary(&self, upstreams: &Upstreams) -> NodeSummary {
        let (endpoints, total) = upstreams.totals();
        NodeSummary {
            id: self.id.clone(),
            status: "active".into(),
            proxy_addr: self.proxy_addr.clone(),
            admin_addr: self.admin_addr.clone(),
            endpoints,
            upstreams: total,
        }
    }

    fn record(&self, upstreams: &Upstreams) -> NodeRecord {
        let endpoints = upstreams.endpoints();
        NodeRecord {
            id: self.id.clone(),
            status: "active".into(),
            proxy_addr: self.proxy_addr.clone(),
            admin_addr: self.admin_addr.clone(),
            endpoints: (!endpoints.is_empty()).then(|| endpoints.into_iter().collect()),
        }
    }
}

/// A remote node's summary.
fn summary(node: &Node) -> NodeSummary {
    NodeSummary {
        id: node.id.clone(),
        status: node.status.as_str().into(),
        proxy_addr: node.proxy_addr.clone(),
        admin_addr: node.admin_addr.clone(),
        endpoints: node.endpoints.len(),
        upstreams: node
            .endpoints
            .values()
            .fold(0usize, |sum, count| sum.saturating_add(*count)),
    }
}

fn record(node: &Node) -> NodeRecord {
    NodeRecord {
        id: node.id.clone(),
        status: node.status.as_str().into(),
        proxy_addr: node.proxy_addr.clone(),
        admin_addr: node.admin_addr.clone(),
        endpoints: (!node.endpoints.is_empty()).then(|| node.endpoints.clone()),
    }
}

/// Answers a `GET` on a status route, or `None` when `path` is not one.
pub(crate) async fn route(
    path: &str,
    local: &LocalNode,
    upstreams: &Upstreams,
    membership: &Membership,
) -> Option<Response<Body>> {
    let path = path.strip_prefix("/status/")?;
    let segments: Vec<&str> = path.split('/').collect();
    let response = match segments.as_slice() {
        ["upstream", "endpoints"] => json(
            &upstreams
                .endpoints()
                .into_iter()
                .collect::<BTreeMap<_, _>>(),
        ),
        ["cluster", "nodes"] => {
            let nodes: Vec<NodeSummary> = membership
                .nodes()
                .await
                .iter()
                .map(|node| {
                    if node.id == local.id {
                        local.summary(upstreams)
                    } else {
                        summary(node)
                    }
                })
                .collect();
            json(&nodes)
        }
        ["cluster", "nodes", id] if *id == "local" || *id == local.id => {
            json(&local.record(upstreams))
        }
        ["cluster", "nodes", id] => {
            match membership.nodes().await.iter().find(|node| node.id == *id) {
                Some(node) => json(&record(node)),
                None => empty(StatusCode::NOT_FOUND),
            }
        }
        ["gossip", "nodes"] => {
            let nodes: Vec<GossipNode> = membership
                .gossip_states()
                .await
                .into_iter()
                .map(|state| state.node)
                .collect();
            json(&nodes)
        }
        ["gossip", "nodes", id] => {
            match membership
                .gossip_states()
                .await
                .into_iter()
                .find(|state| state.node.id == *id)
            {
                Some(state) => json(&state),
                None => empty(StatusCode::NOT_FOUND),
            }
        }
        _ => return None,
    };
    Some(response)
}

/// Gin's `c.JSON`: compact, `application/json; charset=utf-8`.
fn json<T: Serialize + ?Sized>(value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).expect("status types serialize");
    let mut response = Response::new(full(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

/// A status with an empty body, as Piko answers an unknown node.
pub(crate) fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(full(""));
    *response.status_mut() = status;
    response
}
