//! A server node on loopback ports for the integration tests.

#![allow(dead_code, reason = "each test file uses part of it")]

use std::{net::SocketAddr, time::Duration};

use piko_server::{Config, Server, Upstreams};

pub(crate) struct Node {
    pub(crate) id: String,
    pub(crate) membership: std::sync::Arc<piko_server::cluster::Membership>,
    pub(crate) gossip: String,
    pub(crate) proxy: SocketAddr,
    pub(crate) upstream: SocketAddr,
    pub(crate) admin: SocketAddr,
    pub(crate) upstreams: std::sync::Arc<Upstreams>,
    pub(crate) remotes: std::sync::Arc<piko_server::cluster::RemoteEndpoints>,
    pub(crate) stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub(crate) task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub(crate) async fn start_node() -> Node {
    start_node_with(piko_server::proxy::Config::default()).await
}

pub(crate) async fn start_node_with(proxy: piko_server::proxy::Config) -> Node {
    start_node_from(Config {
        proxy,
        ..Config::default()
    })
    .await
}

/// A node from `config`, every port on loopback port 0.
pub(crate) async fn start_node_from(config: Config) -> Node {
    let config = Config {
        proxy_bind_addr: "127.0.0.1:0".into(),
        upstream_bind_addr: "127.0.0.1:0".into(),
        admin_bind_addr: "127.0.0.1:0".into(),
        gossip_bind_addr: "127.0.0.1:0".into(),
        grace_period: Duration::from_secs(10),
        ..config
    };
    let server = Server::bind(config).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (proxy, upstream, admin) = (
        server.proxy_addr(),
        server.upstream_addr(),
        server.admin_addr(),
    );
    let upstreams = server.upstreams();
    let remotes = server.remotes();
    let id = server.node_id().to_owned();
    let membership = server.membership();
    let gossip = server.gossip_advertise_addr().to_owned();
    let task = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    Node {
        id,
        membership,
        gossip,
        proxy,
        upstream,
        admin,
        upstreams,
        remotes,
        stop: Some(stop),
        task,
    }
}

/// Waits (bounded) until the node has `count` upstreams for `endpoint`.
pub(crate) async fn wait_upstreams(node: &Node, endpoint: &str, count: usize) {
    let mut changes = node.upstreams.subscribe();
    tokio::time::timeout(
        Duration::from_secs(10),
        changes.wait_for(|_| node.upstreams.count(endpoint) == count),
    )
    .await
    .unwrap_or_else(|_| panic!("{endpoint} never had {count} upstreams"))
    .unwrap();
}

/// A `GET` on a fresh connection: the response head and body.
pub(crate) async fn get(addr: SocketAddr, path: &str, host: &str) -> (String, String) {
    exchange(
        addr,
        &format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"),
    )
    .await
}

/// Sends `request` (which asks for `connection: close`) on a fresh connection: the response
/// head and body.
pub(crate) async fn exchange(addr: SocketAddr, request: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

/// Serves every stream of `listener` as a WebSocket echo server.
pub(crate) async fn serve_websocket_echo(mut listener: piko::Listener) {
    use futures_util::{SinkExt as _, StreamExt as _};
    while let Ok(stream) = listener.accept().await {
        tokio::spawn(async move {
            let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
            while let Some(Ok(message)) = ws.next().await {
                if message.is_close() {
                    break;
                }
                ws.send(message).await.unwrap();
            }
        });
    }
}

/// Answers every stream of `listener` with `response` after one read of its request (for
/// requests that fit in one read).
pub(crate) async fn serve_fixed_response(mut listener: piko::Listener, response: &'static [u8]) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    while let Ok(mut stream) = listener.accept().await {
        tokio::spawn(async move {
            let mut request = vec![0u8; 4096];
            let _ = stream.read(&mut request).await;
            let _ = stream.write_all(response).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// An SDK upstream of `endpoint` on `node` that answers every stream with `response`, once the
/// node has registered it.
pub(crate) async fn fixed_upstream(node: &Node, endpoint: &str, response: &'static [u8]) {
    let listener = piko::Upstream::new(format!("http://{}", node.upstream))
        .listen(endpoint)
        .await
        .unwrap();
    tokio::spawn(serve_fixed_response(listener, response));
    wait_upstreams(node, endpoint, 1).await;
}

/// An SDK upstream of `endpoint` on `node` that takes every stream and never answers, once the
/// node has registered it; each stream it takes is reported on the returned channel.
pub(crate) async fn silent_upstream(
    node: &Node,
    endpoint: &str,
) -> tokio::sync::mpsc::UnboundedReceiver<()> {
    let mut listener = piko::Upstream::new(format!("http://{}", node.upstream))
        .listen(endpoint)
        .await
        .unwrap();
    let (accepted, accepts) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok(stream) = listener.accept().await {
            held.push(stream);
            let _ = accepted.send(());
        }
    });
    wait_upstreams(node, endpoint, 1).await;
    accepts
}

/// An HS256 token with `claims`, signed with `secret`.
pub(crate) fn hs256_token(secret: &str, claims: &serde_json::Value) -> String {
    use base64::Engine as _;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let input = format!(
        "{}.{}",
        b64(br#"{"alg":"HS256","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes())
    );
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
    let signature = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64(signature.as_ref()))
}

/// A verifier of HS256 tokens signed with `secret`.
pub(crate) fn hmac_verifier(secret: &str) -> std::sync::Arc<piko_server::auth::Verifier> {
    let config = piko_server::auth::AuthConfig {
        hmac_secret_key: Some(secret.into()),
        ..piko_server::auth::AuthConfig::default()
    };
    std::sync::Arc::new(piko_server::auth::Verifier::new(&config).unwrap().unwrap())
}
