//! The admin port's status routes (spec §9.2), in Piko's JSON shapes so that Piko's own
//! `piko server status` and operators' scripts read them unchanged. The same types decode them
//! in our `piko server status`.
//!
//! Until the cluster exists the node knows only itself: the cluster routes list the local node
//! and the gossip routes its own state (its published keys, versioned in publication order).

use std::collections::BTreeMap;

use http::{HeaderValue, Response, StatusCode, header};
use serde::{Deserialize, Serialize};

use crate::{json_error::full, serve::Body, upstreams::Upstreams};

/// Piko's zero `time.Time`, meaning "no expiry".
const NO_EXPIRY: &str = "0001-01-01T00:00:00Z";

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
    pub(crate) gossip_addr: String,
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

    /// The keys Piko's nodes publish, in the order they publish them.
    fn gossip_state(&self, upstreams: &Upstreams) -> GossipNodeState {
        let published = [
            ("proxy_addr".to_owned(), self.proxy_addr.clone()),
            ("admin_addr".to_owned(), self.admin_addr.clone()),
        ]
        .into_iter()
        .chain(
            upstreams
                .endpoints()
                .into_iter()
                .map(|(endpoint, count)| (format!("endpoint:{endpoint}"), count.to_string())),
        );
        let entries: Vec<GossipEntry> = published
            .zip(1..)
            .map(|((key, value), version)| GossipEntry {
                key,
                value,
                version,
                internal: false,
                deleted: false,
            })
            .collect();
        GossipNodeState {
            node: GossipNode {
                id: self.id.clone(),
                addr: self.gossip_addr.clone(),
                version: entries.last().map_or(0, |entry| entry.version),
                left: false,
                unreachable: false,
                expiry: NO_EXPIRY.into(),
            },
            entries: Some(entries),
        }
    }
}

/// Answers a `GET` on a status route, or `None` when `path` is not one.
pub(crate) fn route(
    path: &str,
    local: &LocalNode,
    upstreams: &Upstreams,
) -> Option<Response<Body>> {
    let path = path.strip_prefix("/status/")?;
    let response = match path.split('/').collect::<Vec<_>>().as_slice() {
        ["upstream", "endpoints"] => json(
            &upstreams
                .endpoints()
                .into_iter()
                .collect::<BTreeMap<_, _>>(),
        ),
        ["cluster", "nodes"] => json(&[local.summary(upstreams)]),
        ["cluster", "nodes", id] if *id == "local" || *id == local.id => {
            json(&local.record(upstreams))
        }
        ["gossip", "nodes"] => json(&[local.gossip_state(upstreams).node]),
        ["gossip", "nodes", id] if *id == local.id => json(&local.gossip_state(upstreams)),
        ["cluster" | "gossip", "nodes", _] => empty(StatusCode::NOT_FOUND),
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
