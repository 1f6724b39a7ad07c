//! The SDK's two TCP halves against a real server node: `Upstream::listen_and_forward` in front
//! of a local service, reached with `Dialer::dial`.

use std::time::Duration;

use piko_server::{Config, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialer_reaches_a_forwarded_local_service() {
    let server = Server::bind(Config {
        proxy_bind_addr: "127.0.0.1:0".into(),
        upstream_bind_addr: "127.0.0.1:0".into(),
        admin_bind_addr: "127.0.0.1:0".into(),
        ..Config::default()
    })
    .await
    .unwrap();
    let (proxy, upstream) = (server.proxy_addr(), server.upstream_addr());
    let upstreams = server.upstreams();
    tokio::spawn(server.run(std::future::pending()));

    // A local service that answers with the upper-cased request, once the request has ended.
    let service = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service_addr = service.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = service.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                tcp.read_to_end(&mut request).await.unwrap();
                tcp.write_all(&request.to_ascii_uppercase()).await.unwrap();
            });
        }
    });

    let forwarder = piko::Upstream::new(format!("http://{upstream}"))
        .listen_and_forward("shout", service_addr.to_string())
        .await
        .unwrap();
    let mut changes = upstreams.subscribe();
    tokio::time::timeout(
        Duration::from_secs(10),
        changes.wait_for(|_| upstreams.count("shout") == 1),
    )
    .await
    .unwrap()
    .unwrap();

    let dialer = piko::Dialer::new(format!("http://{proxy}"));
    let mut conn = dialer.dial("shout").await.unwrap();
    assert_eq!(conn.server_addr(), proxy);
    conn.write_all(b"hello").await.unwrap();
    conn.shutdown().await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply, b"HELLO");

    // Closing stops the registration: the endpoint is gone, and the forwarder ends.
    forwarder.close();
    tokio::time::timeout(Duration::from_secs(10), forwarder.wait())
        .await
        .expect("forwarder never ended")
        .unwrap();
    let err = dialer.dial("shout").await.unwrap_err();
    assert_eq!(err.to_string(), "502: no available upstreams");
}
