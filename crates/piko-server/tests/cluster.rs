//! Nodes in one process, gossiping over loopback UDP: they find each other from `cluster.join`,
//! learn where each other's upstreams are, see a crashed node become unreachable and then
//! forget it for good, and see a node that shuts down leave.

mod common;

use std::time::Duration;

use common::{Node, start_node_from, wait_upstreams};
use piko_server::{
    Config,
    cluster::{ClusterConfig, NodeStatus},
};

fn config(join: Vec<String>) -> Config {
    Config {
        cluster: ClusterConfig {
            join,
            join_interval: Duration::from_millis(200),
            gossip_interval: Duration::from_millis(50),
            dead_node_grace_period: Duration::from_secs(2),
            ..ClusterConfig::default()
        },
        ..Config::default()
    }
}

/// Waits (bounded) until `node`'s view of the cluster satisfies `check`.
async fn until(node: &Node, what: &str, check: impl Fn(&[piko_server::cluster::Node]) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let nodes = node.membership.nodes().await;
        if check(&nodes) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: never; {nodes:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn status_of(nodes: &[piko_server::cluster::Node], id: &str) -> Option<NodeStatus> {
    nodes.iter().find(|n| n.id == id).map(|n| n.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_share_endpoints_and_forget_the_dead() {
    let a = start_node_from(config(Vec::new())).await;
    let b = start_node_from(config(vec![a.gossip.clone()])).await;
    // C knows only B, and learns of A through it.
    let c = start_node_from(config(vec![b.gossip.clone()])).await;
    for node in [&a, &b, &c] {
        until(node, "three active nodes", |nodes| {
            nodes.len() == 3 && nodes.iter().all(|n| n.status == NodeStatus::Active)
        })
        .await;
    }

    let _upstream = piko::Upstream::new(format!("http://{}", c.upstream))
        .listen("e")
        .await
        .unwrap();
    wait_upstreams(&c, "e", 1).await;
    until(&a, "C's endpoint", |nodes| {
        nodes
            .iter()
            .any(|n| n.id == c.id && n.endpoints.get("e") == Some(&1))
    })
    .await;
    let seen = a.membership.nodes().await;
    let c_seen = seen.iter().find(|n| n.id == c.id).unwrap();
    assert_eq!(c_seen.proxy_addr, c.proxy.to_string());
    assert_eq!(c_seen.admin_addr, c.admin.to_string());

    // C crashes: silent, no goodbye.
    c.membership.shutdown();
    c.task.abort();
    until(&a, "C unreachable", |nodes| {
        status_of(nodes, &c.id) == Some(NodeStatus::Unreachable)
    })
    .await;
    for node in [&a, &b] {
        until(node, "C forgotten", |nodes| {
            status_of(nodes, &c.id).is_none()
        })
        .await;
    }
    // ...for good: neither brings it back to the other as a ghost.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for node in [&a, &b] {
        assert_eq!(status_of(&node.membership.nodes().await, &c.id), None);
    }

    // B shuts down gracefully: A sees it leave.
    let Node { stop, task, .. } = b;
    stop.unwrap().send(()).unwrap();
    until(&a, "B left", |nodes| {
        status_of(nodes, &b.id) == Some(NodeStatus::Left)
    })
    .await;
    task.await.unwrap().unwrap();
}

/// A resolver whose answer the test changes.
#[derive(Debug, Default)]
struct FakeResolver(std::sync::Mutex<Vec<std::net::SocketAddr>>);

#[async_trait::async_trait]
impl piko_server::cluster::Resolver for FakeResolver {
    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<std::net::SocketAddr>> {
        assert_eq!((host, port), ("piko.example.internal", 7946));
        Ok(self.0.lock().unwrap().clone())
    }
}

/// A node whose join name resolves to nothing at first (the first pod of a StatefulSet) joins
/// as soon as the name resolves: names are resolved again, not once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_resolves_later_still_joins() {
    let a = start_node_from(config(Vec::new())).await;
    let resolver = std::sync::Arc::new(FakeResolver::default());
    let b = start_node_from(Config {
        resolver: resolver.clone(),
        ..config(vec!["piko.example.internal:7946".into()])
    })
    .await;
    // Several resolutions find nothing: B runs alone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(b.membership.nodes().await.len(), 1);
    *resolver.0.lock().unwrap() = vec![a.gossip.parse().unwrap()];
    for node in [&a, &b] {
        until(node, "both nodes", |nodes| {
            nodes.len() == 2 && nodes.iter().all(|n| n.status == NodeStatus::Active)
        })
        .await;
    }
}

/// An upstream on `node` for `endpoint` that answers `<name>: <request body>`.
async fn serve(node: &Node, endpoint: &str, name: &'static str) -> tokio::task::JoinHandle<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut listener = piko::Upstream::new(format!("http://{}", node.upstream))
        .listen(endpoint)
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok(mut stream) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                let head_end = loop {
                    let n = stream.read(&mut buf).await.unwrap();
                    assert!(n > 0, "request cut short");
                    request.extend_from_slice(&buf[..n]);
                    if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                        break at + 4;
                    }
                };
                let head = String::from_utf8_lossy(&request[..head_end]).to_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |v| v.trim().parse().unwrap());
                while request.len() < head_end + length {
                    let n = stream.read(&mut buf).await.unwrap();
                    request.extend_from_slice(&buf[..n]);
                }
                let body = format!("{name}: {}", String::from_utf8_lossy(&request[head_end..]));
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(response.as_bytes()).await.unwrap();
                // A FIN, not the reset a dropped stream sends.
                stream.shutdown().await.unwrap();
            });
        }
    })
}

/// A request with a body to `endpoint` through `node`'s proxy port: (status, head, body).
async fn post(node: &Node, endpoint: &str, body: &str, extra: &str) -> (u16, String, String) {
    let request = format!(
        "POST /x HTTP/1.1\r\nhost: {endpoint}.example.com\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n{body}",
        body.len()
    );
    let (head, body) = common::exchange(node.proxy, &request).await;
    (head[9..12].parse().unwrap(), head.to_lowercase(), body)
}

/// A request reaching a node without the endpoint's upstreams is relayed, in one hop, to the
/// node that has them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_upstreams_on_another_node() {
    let a = start_node_from(config(Vec::new())).await;
    let b = start_node_from(config(vec![a.gossip.clone()])).await;
    let _service = serve(&b, "e", "b").await;
    wait_upstreams(&b, "e", 1).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, head, body) = post(&a, "e", "hello", "").await;
        if status == 200 {
            assert_eq!(body, "b: hello");
            assert!(!head.contains("x-piko-no-upstream"), "{head}");
            break;
        }
        assert_eq!(status, 502, "{head}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "never routed: {head}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, metrics) = common::get(a.admin, "/metrics", "admin").await;
    let forwarded = format!(
        "piko_upstreams_remote_requests_total{{node_id=\"{}\"}} ",
        b.id
    );
    assert!(metrics.contains(&forwarded), "{metrics}");
    assert!(
        metrics.contains(
            "piko_proxy_route_duration_seconds_count{route=\"forwarded\",outcome=\"success\"}"
        ),
        "{metrics}"
    );

    // A relayed request is served from the receiving node's upstreams only, and a node that
    // has none says so in a way the sender can act on. Relayed means signed by a node: a
    // client's own `x-piko-forward`, with or without a made-up signature, changes nothing.
    let a_key = b
        .membership
        .nodes()
        .await
        .into_iter()
        .find(|n| n.id == a.id)
        .and_then(|n| n.forward_key)
        .expect("A publishes its forwarding key");
    let signature = piko_server::cluster::ForwardAuth::new("sender", None)
        .unwrap()
        .peer_key(&piko_server::cluster::PeerAuth {
            id: &a.id,
            proxy_addr: &a.proxy.to_string(),
            forward_key: Some(&a_key),
            member_proof: None,
        })
        .unwrap()
        .sign(&a.id, &http::Method::POST, "/x");
    let signed = format!(
        "x-piko-forward: true\r\nx-piko-forward-signature: {}\r\n",
        signature.to_str().unwrap()
    );
    let (status, head, _) = post(&a, "e", "", &signed).await;
    assert_eq!(status, 502, "{head}");
    assert!(head.contains("x-piko-no-upstream: 1"), "{head}");
    for spoofed in [
        "x-piko-forward: true\r\n",
        "x-piko-forward: true\r\nx-piko-forward-signature: 1.00\r\n",
    ] {
        let (status, head, body) = post(&a, "e", "", spoofed).await;
        assert_eq!((status, body.as_str()), (200, "b: "), "{head}");
    }
    // Admin requests for another node are answered by that node.
    let (head, body) = common::get(
        a.admin,
        &format!("/status/cluster/nodes/local?forward={}", b.id),
        "admin",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let record: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(record["id"], b.id.as_str());
    assert_eq!(record["endpoints"]["e"], 1);
    let (head, _) = common::get(a.admin, "/status/upstream/endpoints?forward=ghost", "admin").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    // An unknown endpoint is a plain 502 for a client.
    let (status, head, body) = post(&a, "nowhere", "", "").await;
    assert_eq!(status, 502);
    assert!(!head.contains("x-piko-no-upstream"), "{head}");
    assert_eq!(body, "{\"error\":\"no available upstreams\"}\n");
}

/// WebSocket upgrades and TCP tunnels reaching a node without the endpoint's upstreams are
/// relayed to the node that has them, and spliced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_reach_upstreams_on_another_node() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_tungstenite::tungstenite::Message;

    let a = start_node_from(config(Vec::new())).await;
    let b = start_node_from(config(vec![a.gossip.clone()])).await;
    // On B: a TCP echo service for "tcp" and a WebSocket echo service for "ws".
    let mut tcp_listener = piko::Upstream::new(format!("http://{}", b.upstream))
        .listen("tcp")
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok(mut stream) = tcp_listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    stream.write_all(&buf[..n]).await.unwrap();
                    stream.flush().await.unwrap();
                }
            });
        }
    });
    let ws_listener = piko::Upstream::new(format!("http://{}", b.upstream))
        .listen("ws")
        .await
        .unwrap();
    tokio::spawn(common::serve_websocket_echo(ws_listener));
    wait_upstreams(&b, "tcp", 1).await;
    wait_upstreams(&b, "ws", 1).await;

    let dialer = piko::Dialer::new(format!("http://{}", a.proxy));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut tunnel = loop {
        match dialer.dial("tcp").await {
            Ok(tunnel) => break tunnel,
            Err(err) => assert!(
                tokio::time::Instant::now() < deadline,
                "never routed: {err}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tunnel.write_all(b"over two nodes").await.unwrap();
    tunnel.flush().await.unwrap();
    let mut echoed = [0u8; 14];
    tokio::time::timeout(Duration::from_secs(10), tunnel.read_exact(&mut echoed))
        .await
        .expect("no echo")
        .unwrap();
    assert_eq!(&echoed, b"over two nodes");

    // "ws" may reach A's routing table a gossip round after "tcp".
    let (mut client, response) = loop {
        let tcp = tokio::net::TcpStream::connect(a.proxy).await.unwrap();
        match tokio_tungstenite::client_async("ws://ws.example.com/chat", tcp).await {
            Ok(connected) => break connected,
            Err(err) => assert!(
                tokio::time::Instant::now() < deadline,
                "never routed: {err}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(response.status(), 101);
    client.send(Message::text("hello")).await.unwrap();
    assert_eq!(
        client.next().await.unwrap().unwrap(),
        Message::text("hello")
    );
    client.close(None).await.unwrap();
}

/// A client that resets an upgraded connection relayed to another node: the node holding the
/// upstream resets the upstream's stream too, after the bytes that came before, rather than
/// half-closing it (which a service would take for the end of a finished exchange).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_crosses_nodes_as_a_reset() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let a = start_node_from(config(Vec::new())).await;
    let b = start_node_from(config(vec![a.gossip.clone()])).await;
    // On B: a service that accepts any upgrade and reports what came through and how it ended.
    let mut listener = piko::Upstream::new(format!("http://{}", b.upstream))
        .listen("raw")
        .await
        .unwrap();
    let (report, mut reports) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        while let Ok(mut stream) = listener.accept().await {
            let report = report.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                stream
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: raw\r\n\r\n")
                    .await
                    .unwrap();
                stream.flush().await.unwrap();
                let mut received = Vec::new();
                let ended = stream.read_to_end(&mut received).await;
                let _ = report.send((received, ended)).await;
            });
        }
    });
    wait_upstreams(&b, "raw", 1).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut client = loop {
        let mut client = tokio::net::TcpStream::connect(a.proxy).await.unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: raw.example.com\r\nconnection: upgrade\r\nupgrade: raw\r\n\r\n")
            .await
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && client.read_exact(&mut byte).await.is_ok() {
            head.push(byte[0]);
        }
        if head.starts_with(b"HTTP/1.1 101") {
            break client;
        }
        // A's routing table learns of B's upstream a gossip round later.
        assert!(
            tokio::time::Instant::now() < deadline,
            "never routed: {}",
            String::from_utf8_lossy(&head)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    client.write_all(b"partial").await.unwrap();
    piko_protocol::reset_after_delivery(&client).await;
    drop(client);
    let (received, ended) = tokio::time::timeout(Duration::from_secs(20), reports.recv())
        .await
        .expect("the service never saw its stream end")
        .unwrap();
    assert_eq!(received, b"partial");
    let err = ended.expect_err("the stream ended cleanly: a reset was passed on as an end");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
}

/// Whether `node`'s `/ready` says 200.
async fn is_ready(node: &Node) -> bool {
    let (head, _) = common::get(node.admin, "/ready", "admin").await;
    head.starts_with("HTTP/1.1 200")
}

/// Waits (bounded) until `node`'s `/ready` says 200.
async fn await_ready(node: &Node, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !is_ready(node).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ready: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A gossip address nothing answers on.
fn silent_gossip_addr() -> String {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().to_string()
}

/// A node is ready only once it is part of its cluster: routing before that would answer 502
/// for the endpoints its peers hold. One that hears from no node gives up after
/// `cluster.join_timeout`: it exits (`abort_if_join_fails`), or serves alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_ready_once_it_has_joined() {
    let a = start_node_from(config(Vec::new())).await;
    await_ready(&a, "a node with nothing to join").await;

    let seeds = vec![silent_gossip_addr()];
    let aborting = start_node_from(Config {
        cluster: ClusterConfig {
            join_timeout: Duration::from_secs(1),
            ..config(seeds.clone()).cluster
        },
        ..config(seeds.clone())
    })
    .await;
    assert!(!is_ready(&aborting).await, "not ready while joining");
    let ended = tokio::time::timeout(Duration::from_secs(10), aborting.task)
        .await
        .expect("join timeout ignored")
        .unwrap();
    assert!(
        ended.unwrap_err().to_string().contains("cluster join"),
        "the error names the join"
    );

    let alone = start_node_from(Config {
        cluster: ClusterConfig {
            join_timeout: Duration::from_millis(300),
            abort_if_join_fails: false,
            ..config(seeds.clone()).cluster
        },
        ..config(seeds)
    })
    .await;
    await_ready(&alone, "alone after the join timeout").await;

    let b = start_node_from(config(vec![a.gossip.clone()])).await;
    await_ready(&b, "after joining").await;
    assert!(
        b.membership
            .nodes()
            .await
            .iter()
            .any(|n| n.id == a.id && n.status == NodeStatus::Active),
        "ready means it knows its peer"
    );
}

/// A node still listed but no longer listening (it crashed a moment ago) costs a relayed
/// request nothing: nothing was sent, so it goes to another node holding the endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_request_that_cannot_connect_goes_to_another_node() {
    let a = start_node_from(config(Vec::new())).await;
    // B gossips and holds the endpoint, but its proxy address refuses connections.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let b = start_node_from(Config {
        proxy_advertise_addr: Some(closed_addr),
        ..config(vec![a.gossip.clone()])
    })
    .await;
    let c = start_node_from(config(vec![a.gossip.clone()])).await;
    let _on_b = serve(&b, "e", "b").await;
    let _on_c = serve(&c, "e", "c").await;
    for holder in [&b, &c] {
        until(&a, "the endpoint on B and C", |nodes| {
            nodes.iter().any(|n| {
                n.id == holder.id
                    && n.status == NodeStatus::Active
                    && n.endpoints.get("e") == Some(&1)
            })
        })
        .await;
    }
    // A's routing table follows its view of the cluster a moment later.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while a.remotes.total("e") < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "B and C never routable"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..20 {
        let (head, body) = common::get(a.proxy, "/x", "e.example.com").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{body}");
        assert_eq!(body, "c: ");
    }
    // A small body is read first, so it can be sent again.
    for _ in 0..20 {
        let (status, head, body) = post(&a, "e", "data", "").await;
        assert_eq!((status, body.as_str()), (200, "c: data"), "{head}");
    }
}

/// With `cluster.secret`, gossip is sealed: nodes sharing the secret form a cluster and route to
/// each other, while a node with another secret, or none, is never heard (its datagrams are
/// forgeries to the others), though it gossips all along with a peer of its own kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_nodes_sharing_the_secret_form_a_cluster() {
    let with_secret = |secret: Option<&str>, join: Vec<String>| {
        let mut config = config(join);
        config.cluster.secret = secret.map(str::to_owned);
        config
    };
    let a = start_node_from(with_secret(Some("one"), Vec::new())).await;
    let same = start_node_from(with_secret(Some("one"), vec![a.gossip.clone()])).await;
    let other = start_node_from(with_secret(Some("two"), vec![a.gossip.clone()])).await;
    let other_peer = start_node_from(with_secret(Some("two"), vec![other.gossip.clone()])).await;
    let open = start_node_from(with_secret(None, vec![a.gossip.clone()])).await;
    let open_peer = start_node_from(with_secret(None, vec![open.gossip.clone()])).await;
    let _s = serve(&same, "same", "same").await;
    let _o = serve(&other, "other", "other").await;
    let _p = serve(&open, "open", "open").await;
    until(&a, "the node sharing the secret publishes", |nodes| {
        nodes.iter().any(|n| {
            n.id == same.id && n.status == NodeStatus::Active && n.endpoints.contains_key("same")
        })
    })
    .await;
    // The outsiders gossip fine among their own kind, so they are sending to A too.
    until(&other, "another secret's cluster", |nodes| {
        status_of(nodes, &other_peer.id) == Some(NodeStatus::Active)
    })
    .await;
    until(&open, "an open cluster", |nodes| {
        status_of(nodes, &open_peer.id) == Some(NodeStatus::Active)
    })
    .await;
    // The routing table follows the gossip a moment later.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (head, body) = common::get(a.proxy, "/x", "same.example.com").await;
        if head.starts_with("HTTP/1.1 200") {
            assert_eq!(body, "same: ");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{head}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Many join rounds of theirs later, A has still heard of neither, nor they of A.
    let watch_until = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < watch_until {
        let nodes = a.membership.nodes().await;
        for outsider in [&other, &other_peer, &open, &open_peer] {
            assert_eq!(status_of(&nodes, &outsider.id), None, "{nodes:#?}");
        }
        for outsider in [&other, &open] {
            let nodes = outsider.membership.nodes().await;
            assert_eq!(status_of(&nodes, &a.id), None, "{nodes:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for endpoint in ["other", "open"] {
        let (head, _) = common::get(a.proxy, "/x", &format!("{endpoint}.example.com")).await;
        assert!(head.starts_with("HTTP/1.1 502"), "{endpoint}: {head}");
    }
}

/// A node cut off from the others (its gossip links removed in chitchat's in-process transport)
/// becomes unreachable to them and its endpoints unroutable there; once the partition heals, even
/// after the others forgot it, it is back, active, with its endpoints (its heartbeat is newer
/// than the one they forgot it at, which a crashed node's never is).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_heals_even_after_the_grace_period() {
    use chitchat::transport::ChannelTransport;
    use piko_server::cluster::GossipTransport;
    let network = ChannelTransport::default();
    let on_network = |join: Vec<String>| {
        let mut config = config(join);
        config.cluster.transport = Some(GossipTransport(std::sync::Arc::new(network.clone())));
        config
    };
    let a = start_node_from(on_network(Vec::new())).await;
    let b = start_node_from(on_network(vec![a.gossip.clone()])).await;
    let c = start_node_from(on_network(vec![a.gossip.clone()])).await;
    let _on_c = serve(&c, "e", "c").await;
    until(&a, "C's endpoint", |nodes| {
        nodes.iter().any(|n| {
            n.id == c.id && n.status == NodeStatus::Active && n.endpoints.get("e") == Some(&1)
        })
    })
    .await;
    let routed = async |expected: &str| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (head, _) = common::get(a.proxy, "/x", "e.example.com").await;
            if head.starts_with(expected) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{expected}: {head}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    routed("HTTP/1.1 200").await;

    let addr = |node: &Node| node.gossip.parse::<std::net::SocketAddr>().unwrap();
    for other in [&a, &b] {
        network.remove_link(addr(&c), addr(other)).await;
    }
    until(&a, "C forgotten", |nodes| status_of(nodes, &c.id).is_none()).await;
    routed("HTTP/1.1 502").await;

    for other in [&a, &b] {
        network.add_link(addr(&c), addr(other)).await;
    }
    for node in [&a, &b] {
        until(node, "C back", |nodes| {
            status_of(nodes, &c.id) == Some(NodeStatus::Active)
        })
        .await;
    }
    routed("HTTP/1.1 200").await;
}

/// A resolver that knows no name, as the system's answers for a headless service before its
/// first pod is ready.
#[derive(Debug)]
struct NoSuchName;

#[async_trait::async_trait]
impl piko_server::cluster::Resolver for NoSuchName {
    async fn resolve(&self, host: &str, _: u16) -> std::io::Result<Vec<std::net::SocketAddr>> {
        Err(std::io::Error::other(format!(
            "failed to lookup address information: {host}: Name or service not known"
        )))
    }
}

/// The first pod of a StatefulSet: its join name does not resolve yet, so it starts the cluster
/// (ready at once) rather than wait for one and give up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_name_that_does_not_resolve_makes_the_first_node() {
    let first = start_node_from(Config {
        resolver: std::sync::Arc::new(NoSuchName),
        cluster: ClusterConfig {
            join_timeout: Duration::from_secs(1),
            ..config(vec!["piko-gossip.default.svc".into()]).cluster
        },
        ..Config::default()
    })
    .await;
    await_ready(&first, "the first node").await;
    // And it stays up past the join timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!first.task.is_finished(), "gave up joining");
}
