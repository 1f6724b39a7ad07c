//! A server node on loopback ports for the integration tests.

#![allow(dead_code, reason = "each test file uses part of it")]

use std::{net::SocketAddr, time::Duration};

use piko_server::{Config, Server, Upstreams};

pub(crate) struct Node {
    pub(crate) proxy: SocketAddr,
    pub(crate) upstream: SocketAddr,
    pub(crate) admin: SocketAddr,
    pub(crate) upstreams: std::sync::Arc<Upstreams>,
    pub(crate) stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub(crate) task: tokio::task::JoinHandle<()>,
}

pub(crate) async fn start_node() -> Node {
    start_node_with(piko_server::proxy::Config::default()).await
}

pub(crate) async fn start_node_with(proxy: piko_server::proxy::Config) -> Node {
    let config = Config {
        proxy_bind_addr: "127.0.0.1:0".into(),
        upstream_bind_addr: "127.0.0.1:0".into(),
        admin_bind_addr: "127.0.0.1:0".into(),
        proxy,
        grace_period: Duration::from_secs(10),
        ..Config::default()
    };
    let server = Server::bind(config).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (proxy, upstream, admin) = (
        server.proxy_addr(),
        server.upstream_addr(),
        server.admin_addr(),
    );
    let upstreams = server.upstreams();
    let task = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    Node {
        proxy,
        upstream,
        admin,
        upstreams,
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
