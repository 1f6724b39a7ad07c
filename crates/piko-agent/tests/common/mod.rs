//! What the agent's tests share: a server and an agent listener in this process.

use std::net::SocketAddr;

use piko_agent::{HttpConfig, serve_http};
use piko_server::{Config, Server};
use tokio_util::sync::CancellationToken;

/// A server on loopback, and an agent HTTP listener for `endpoint` with `config`, registered;
/// the server's proxy address.
pub(crate) async fn tunnel(endpoint: &str, config: HttpConfig) -> SocketAddr {
    let server = Server::bind(Config {
        proxy_bind_addr: "127.0.0.1:0".into(),
        upstream_bind_addr: "127.0.0.1:0".into(),
        admin_bind_addr: "127.0.0.1:0".into(),
        gossip_bind_addr: "127.0.0.1:0".into(),
        ..Config::default()
    })
    .await
    .unwrap();
    let (proxy, upstream) = (server.proxy_addr(), server.upstream_addr());
    let upstreams = server.upstreams();
    tokio::spawn(server.run(std::future::pending()));
    let listener = piko::Upstream::new(format!("http://{upstream}"))
        .listen(endpoint)
        .await
        .unwrap();
    tokio::spawn(serve_http(listener, config, CancellationToken::new()));
    let mut changes = upstreams.subscribe();
    changes
        .wait_for(|_| upstreams.count(endpoint) == 1)
        .await
        .unwrap();
    proxy
}
