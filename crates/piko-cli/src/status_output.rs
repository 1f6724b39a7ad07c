//! How `piko server status` prints what it read: Piko's YAML, JSON, or an aligned table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use piko_server::status::{GossipEntry, GossipNode, GossipNodeState, NodeRecord, NodeSummary};
use serde::Serialize;

/// `--output`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum Format {
    /// Piko's output.
    Yaml,
    /// Indented JSON, in the admin API's shapes.
    Json,
    /// Aligned columns for reading.
    Table,
}

/// One status command's result.
#[derive(Debug)]
pub(crate) enum Output {
    Endpoints(BTreeMap<String, usize>),
    ClusterNodes(Vec<NodeSummary>),
    ClusterNode(NodeRecord),
    GossipNodes(Vec<GossipNode>),
    GossipNode(GossipNodeState),
}

/// Piko prints node lists under a `nodes:` key.
#[derive(Serialize)]
struct Nodes<'a, T> {
    nodes: &'a [T],
}

/// Piko's YAML names the entries `entries` (its YAML encoder lowercases the untagged field that
/// its JSON encoder writes as `Entries`).
#[derive(Serialize)]
struct GossipNodeYaml<'a> {
    #[serde(flatten)]
    node: &'a GossipNode,
    entries: &'a Option<Vec<GossipEntry>>,
}

impl Output {
    pub(crate) fn render(&self, format: Format) -> anyhow::Result<String> {
        match format {
            Format::Yaml => self.yaml(),
            Format::Json => self.json(),
            Format::Table => Ok(self.table()),
        }
    }

    fn yaml(&self) -> anyhow::Result<String> {
        let text = match self {
            Self::Endpoints(endpoints) => serde_saphyr::to_string(endpoints),
            Self::ClusterNodes(nodes) => serde_saphyr::to_string(&Nodes { nodes }),
            Self::ClusterNode(node) => serde_saphyr::to_string(node),
            Self::GossipNodes(nodes) => serde_saphyr::to_string(&Nodes { nodes }),
            Self::GossipNode(state) => serde_saphyr::to_string(&GossipNodeYaml {
                node: &state.node,
                entries: &state.entries,
            }),
        };
        text.map_err(|err| anyhow::anyhow!("encode yaml: {err}"))
    }

    fn json(&self) -> anyhow::Result<String> {
        let text = match self {
            Self::Endpoints(endpoints) => serde_json::to_string_pretty(endpoints),
            Self::ClusterNodes(nodes) => serde_json::to_string_pretty(nodes),
            Self::ClusterNode(node) => serde_json::to_string_pretty(node),
            Self::GossipNodes(nodes) => serde_json::to_string_pretty(nodes),
            Self::GossipNode(state) => serde_json::to_string_pretty(state),
        };
        Ok(text.map_err(|err| anyhow::anyhow!("encode json: {err}"))? + "\n")
    }

    fn table(&self) -> String {
        match self {
            Self::Endpoints(endpoints) => table(
                &["ENDPOINT", "UPSTREAMS"],
                endpoints
                    .iter()
                    .map(|(id, count)| vec![id.clone(), count.to_string()]),
            ),
            Self::ClusterNodes(nodes) => table(
                &[
                    "ID",
                    "STATUS",
                    "PROXY ADDR",
                    "ADMIN ADDR",
                    "ENDPOINTS",
                    "UPSTREAMS",
                ],
                nodes.iter().map(|node| {
                    vec![
                        node.id.clone(),
                        node.status.clone(),
                        node.proxy_addr.clone(),
                        node.admin_addr.clone(),
                        node.endpoints.to_string(),
                        node.upstreams.to_string(),
                    ]
                }),
            ),
            Self::ClusterNode(node) => {
                let mut text = table(
                    &["ID", "STATUS", "PROXY ADDR", "ADMIN ADDR"],
                    [vec![
                        node.id.clone(),
                        node.status.clone(),
                        node.proxy_addr.clone(),
                        node.admin_addr.clone(),
                    ]],
                );
                text.push('\n');
                text + &table(
                    &["ENDPOINT", "UPSTREAMS"],
                    node.endpoints
                        .iter()
                        .flatten()
                        .map(|(id, count)| vec![id.clone(), count.to_string()]),
                )
            }
            Self::GossipNodes(nodes) => gossip_nodes_table(nodes),
            Self::GossipNode(state) => {
                let mut text = gossip_nodes_table(std::slice::from_ref(&state.node));
                text.push('\n');
                text + &table(
                    &["KEY", "VALUE", "VERSION", "INTERNAL", "DELETED"],
                    state.entries.iter().flatten().map(|entry| {
                        vec![
                            entry.key.clone(),
                            entry.value.clone(),
                            entry.version.to_string(),
                            entry.internal.to_string(),
                            entry.deleted.to_string(),
                        ]
                    }),
                )
            }
        }
    }
}

fn gossip_nodes_table(nodes: &[GossipNode]) -> String {
    table(
        &["ID", "ADDR", "VERSION", "LEFT", "UNREACHABLE", "EXPIRY"],
        nodes.iter().map(|node| {
            vec![
                node.id.clone(),
                node.addr.clone(),
                node.version.to_string(),
                node.left.to_string(),
                node.unreachable.to_string(),
                node.expiry.clone(),
            ]
        }),
    )
}

/// Columns padded to their widest cell, two spaces apart.
fn table(headers: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows.into_iter().collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let header = headers.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ");
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> NodeSummary {
        NodeSummary {
            id: id.into(),
            status: "active".into(),
            proxy_addr: "10.0.0.12:8000".into(),
            admin_addr: "10.0.0.12:8002".into(),
            endpoints: 3,
            upstreams: 5,
        }
    }

    #[test]
    fn yaml_is_piko_s_shape() {
        let output = Output::ClusterNodes(vec![node("piko-0-k3x9a2m")]);
        let yaml = output.render(Format::Yaml).unwrap();
        let parsed: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({"nodes": [{
                "id": "piko-0-k3x9a2m", "status": "active", "proxy_addr": "10.0.0.12:8000",
                "admin_addr": "10.0.0.12:8002", "endpoints": 3, "upstreams": 5
            }]}),
            "{yaml}"
        );
        let endpoints = Output::Endpoints([("my-endpoint".to_owned(), 3)].into());
        assert_eq!(endpoints.render(Format::Yaml).unwrap(), "my-endpoint: 3\n");
    }

    #[test]
    fn tables_align_columns() {
        let output = Output::ClusterNodes(vec![node("a"), node("piko-1")]);
        let text = output.render(Format::Table).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("ID      STATUS  PROXY ADDR"), "{text}");
        assert!(
            lines[1].starts_with("a       active  10.0.0.12:8000"),
            "{text}"
        );
        assert!(lines[2].ends_with("3          5"), "{text}");
    }
}
