//! `piko server status ...` (spec §1.4): reads a node's admin status routes and prints them,
//! as YAML by default (Piko's output), or as JSON or a table.

use std::time::Duration;

use anyhow::Context as _;
use http::Uri;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use piko_server::status::{GossipNode, GossipNodeState, NodeRecord, NodeSummary};
use serde::de::DeserializeOwned;

use crate::status_output::{Format, Output};

/// What Go's `url.QueryEscape` leaves as is.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Piko's status client gives a request this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// `piko server status`'s flags, valid on every status command.
#[derive(Debug, clap::Args)]
#[command(arg_required_else_help = true)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
    /// Base URL of the node's admin port.
    #[arg(
        long = "server.url",
        global = true,
        default_value = "http://localhost:8002"
    )]
    server_url: String,
    /// Have the contacted node answer for this node (by ID).
    #[arg(long = "forward", global = true)]
    forward: Option<String>,
    /// Output format.
    #[arg(long = "output", global = true, value_enum, default_value = "yaml")]
    output: Format,
    /// Token sent as a bearer token, for an admin port with `admin.auth`.
    #[arg(long = "server.token", global = true, conflicts_with = "token_file")]
    token: Option<String>,
    /// File holding the token (read at the request).
    #[arg(long = "server.token-file", global = true, id = "token_file")]
    token_file: Option<std::path::PathBuf>,
    /// CA bundle (PEM file) verifying an `https` admin port, instead of the system's roots.
    #[arg(long = "server.tls.root-cas", global = true)]
    tls_root_cas: Option<std::path::PathBuf>,
    /// Client certificate (PEM file), for an admin port with `admin.tls.client_cas`.
    #[arg(long = "server.tls.cert", global = true)]
    tls_cert: Option<std::path::PathBuf>,
    /// Private key (PEM file) of the client certificate.
    #[arg(long = "server.tls.key", global = true)]
    tls_key: Option<std::path::PathBuf>,
    /// Accept any certificate from the admin port.
    #[arg(
        long = "server.tls.insecure-skip-verify",
        global = true,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    tls_insecure_skip_verify: Option<bool>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Upstreams connected to the node.
    #[command(subcommand)]
    Upstream(UpstreamCommand),
    /// The node's view of the cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// The node's gossip state.
    #[command(subcommand)]
    Gossip(GossipCommand),
}

#[derive(Debug, clap::Subcommand)]
enum UpstreamCommand {
    /// Endpoints with the number of upstreams connected to the node for each.
    Endpoints,
}

#[derive(Debug, clap::Subcommand)]
enum ClusterCommand {
    /// Every node the node knows, sorted by ID.
    Nodes {
        /// Only nodes in this status (active, unreachable or left).
        #[arg(long = "status")]
        status: Option<String>,
    },
    /// One node, with its upstreams per endpoint (`local` is the contacted node).
    Node {
        /// Node ID.
        id: String,
    },
}

#[derive(Debug, clap::Subcommand)]
enum GossipCommand {
    /// Every node's gossip metadata, sorted by ID.
    Nodes,
    /// One node's gossip state with its entries.
    Node {
        /// Node ID.
        id: String,
    },
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    if args.server_url.is_empty() {
        anyhow::bail!("config: server: missing url");
    }
    let base: Uri = args
        .server_url
        .parse()
        .map_err(|err| anyhow::anyhow!("config: server: invalid url: {err}"))?;
    let token = match (args.token, &args.token_file) {
        (Some(token), _) => Some(token),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|err| {
                    anyhow::anyhow!("config: server: token file: {}: {err}", path.display())
                })?
                .trim()
                .to_owned(),
        ),
        (None, None) => None,
    };
    let tls = piko::ClientTls {
        root_cas: args.tls_root_cas,
        cert: args.tls_cert,
        key: args.tls_key,
        insecure_skip_verify: args.tls_insecure_skip_verify.unwrap_or(false),
    }
    .config_or_system()
    .map_err(|err| anyhow::anyhow!("config: server: tls: {err}"))?;
    let client = StatusClient {
        base,
        forward: args.forward,
        token,
        tls,
    };
    let output = match args.command {
        Command::Upstream(UpstreamCommand::Endpoints) => Output::Endpoints(
            client
                .get("/status/upstream/endpoints")
                .await
                .context("failed to get endpoints")?,
        ),
        Command::Cluster(ClusterCommand::Nodes { status }) => {
            let mut nodes: Vec<NodeSummary> = client
                .get("/status/cluster/nodes")
                .await
                .context("failed to get nodes")?;
            nodes.retain(|node| status.as_ref().is_none_or(|s| node.status == *s));
            nodes.sort_by(|a, b| a.id.cmp(&b.id));
            Output::ClusterNodes(nodes)
        }
        Command::Cluster(ClusterCommand::Node { id }) => {
            let node: NodeRecord = client
                .get(&format!("/status/cluster/nodes/{}", path_segment(&id)))
                .await
                .context("failed to get node")?;
            Output::ClusterNode(node)
        }
        Command::Gossip(GossipCommand::Nodes) => {
            let mut nodes: Vec<GossipNode> = client
                .get("/status/gossip/nodes")
                .await
                .context("failed to get nodes")?;
            nodes.sort_by(|a, b| a.id.cmp(&b.id));
            Output::GossipNodes(nodes)
        }
        Command::Gossip(GossipCommand::Node { id }) => {
            let node: GossipNodeState = client
                .get(&format!("/status/gossip/nodes/{}", path_segment(&id)))
                .await
                .context("failed to get node")?;
            Output::GossipNode(node)
        }
    };
    crate::stdout::write(output.render(args.output)?.as_bytes())
        .map_err(|err| anyhow::anyhow!("write output: {err}"))
}

/// Piko's status client: `GET` on the admin port, plain HTTP or HTTPS; with a bearer token when
/// given one.
struct StatusClient {
    base: Uri,
    forward: Option<String>,
    token: Option<String>,
    tls: std::sync::Arc<rustls::ClientConfig>,
}

impl StatusClient {
    async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let uri = self.uri(path)?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*self.tls).clone())
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(connector);
        let exchange = async {
            let mut request = http::Request::get(uri);
            if let Some(token) = &self.token {
                request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let request = request
                .body(Empty::new())
                .map_err(|err| anyhow::anyhow!("request: {err}"))?;
            // With its causes: hyper says what failed, they say why (a refused certificate...).
            let response = client
                .request(request)
                .await
                .map_err(|err| anyhow::Error::new(err).context("request"))?;
            let status = response.status();
            if status != http::StatusCode::OK {
                anyhow::bail!("request: bad status: {}", status.as_u16());
            }
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|err| anyhow::anyhow!("request: read body: {err}"))?
                .to_bytes();
            serde_json::from_slice(&body).map_err(|err| anyhow::anyhow!("decode: {err}"))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow::anyhow!("request: timeout"))?
    }

    /// The base URL's path joined with `path`; the query is replaced by `forward=<id>` when
    /// forwarding, else kept.
    fn uri(&self, path: &str) -> anyhow::Result<Uri> {
        let base_path = self.base.path().trim_end_matches('/');
        let path_and_query = match (&self.forward, self.base.query()) {
            (Some(node), _) => format!(
                "{base_path}{path}?forward={}",
                percent_encoding::utf8_percent_encode(node, QUERY_VALUE)
            ),
            (None, Some(query)) => format!("{base_path}{path}?{query}"),
            (None, None) => format!("{base_path}{path}"),
        };
        let mut parts = self.base.clone().into_parts();
        parts.path_and_query = Some(
            path_and_query
                .parse()
                .map_err(|err| anyhow::anyhow!("request: invalid path: {err}"))?,
        );
        Uri::from_parts(parts).map_err(|err| anyhow::anyhow!("config: server: invalid url: {err}"))
    }
}

/// A node ID as one path segment.
fn path_segment(id: &str) -> percent_encoding::PercentEncode<'_> {
    percent_encoding::utf8_percent_encode(id, QUERY_VALUE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(base: &str, forward: Option<&str>) -> StatusClient {
        StatusClient {
            base: base.parse().unwrap(),
            forward: forward.map(str::to_owned),
            token: None,
            tls: piko::ClientTls::default().config_or_system().unwrap(),
        }
    }

    #[test]
    fn paths_join_the_base_path_and_forward_replaces_the_query() {
        let uri = client("http://localhost:8002", None)
            .uri("/status/upstream/endpoints")
            .unwrap();
        assert_eq!(
            uri.to_string(),
            "http://localhost:8002/status/upstream/endpoints"
        );
        let uri = client("http://admin.example.com/piko/?x=1", Some("piko-0-abc/x"))
            .uri("/status/cluster/nodes")
            .unwrap();
        assert_eq!(
            uri.to_string(),
            "http://admin.example.com/piko/status/cluster/nodes?forward=piko-0-abc%2Fx"
        );
    }
}
