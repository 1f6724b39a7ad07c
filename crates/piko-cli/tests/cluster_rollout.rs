//! A cluster of real `piko server` processes behind haproxy (Debian's), as it runs in
//! production: agents (real `piko agent` processes) and clients reach the nodes only through the
//! balancer, which checks each node's `/ready`. The nodes are restarted one after the other while
//! a client sends a steady stream of requests: not one may fail.

mod common;

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use common::{PATIENCE, Process, TempFile};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Requests per second the client sends during the rollout.
const RATE: u64 = 200;

/// The endpoints served: `alpha` by two agents, `beta` by one.
const ENDPOINTS: [&str; 2] = ["alpha", "beta"];

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// A free loopback port, released for a process that binds it and is restarted on it.
fn reserve_port() -> u16 {
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tcp.local_addr().unwrap().port();
    // The gossip port is UDP on the same number: make sure it is free too.
    let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
    if udp.is_err() {
        return reserve_port();
    }
    port
}

/// The ports of one node, kept across its restarts (the balancer's configuration names them).
#[derive(Clone, Copy, Debug)]
struct NodePorts {
    proxy: u16,
    upstream: u16,
    admin: u16,
    gossip: u16,
}

/// A node's ports, held while it is down so that nothing else running takes them. Bound, not
/// listening: connections to them are refused, as to a node that is down.
#[allow(dead_code, reason = "held, never read")]
struct HeldPorts(Vec<tokio::net::TcpSocket>, std::net::UdpSocket);

impl NodePorts {
    /// Binds the ports of a node that is down (until the result is dropped).
    fn hold(&self) -> HeldPorts {
        let tcp = |port: u16| {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_reuseaddr(true).unwrap();
            socket.bind(([127, 0, 0, 1], port).into()).unwrap();
            socket
        };
        HeldPorts(
            vec![tcp(self.proxy), tcp(self.upstream), tcp(self.admin)],
            std::net::UdpSocket::bind(("127.0.0.1", self.gossip)).unwrap(),
        )
    }

    fn reserve() -> Self {
        Self {
            proxy: reserve_port(),
            upstream: reserve_port(),
            admin: reserve_port(),
            gossip: reserve_port(),
        }
    }
}

/// Starts node `index` of `all`, joining the others.
fn start_node(all: &[NodePorts], index: usize) -> Process {
    let others: Vec<usize> = (0..all.len()).filter(|i| *i != index).collect();
    start_node_with(all, index, &others, &[])
}

/// Starts node `index` of `all`, joining the nodes at `join`, with `extra` flags.
fn start_node_with(all: &[NodePorts], index: usize, join: &[usize], extra: &[&str]) -> Process {
    let own = all[index];
    let addr = |port: u16| format!("127.0.0.1:{port}");
    let join: Vec<String> = join.iter().map(|i| addr(all[*i].gossip)).collect();
    let (proxy, upstream, admin, gossip) = (
        addr(own.proxy),
        addr(own.upstream),
        addr(own.admin),
        addr(own.gossip),
    );
    let mut args = vec![
        "server",
        "--proxy.bind-addr",
        &proxy,
        "--upstream.bind-addr",
        &upstream,
        "--admin.bind-addr",
        &admin,
        "--cluster.gossip.bind-addr",
        &gossip,
        "--cluster.node-id-prefix",
        "rollout-",
        // Longer than the balancer takes to see `/ready` fail (two checks 100 ms apart).
        "--shutdown-delay",
        "1s",
        "--grace-period",
        "20s",
    ];
    for seed in &join {
        args.extend(["--cluster.join", seed]);
    }
    args.extend_from_slice(extra);
    Process::start(&args)
}

/// haproxy in front of the nodes' proxy, upstream and admin ports.
struct Balancer {
    _process: tokio::process::Child,
    _config: TempFile,
    proxy: SocketAddr,
    upstream: SocketAddr,
}

impl Balancer {
    fn start(nodes: &[NodePorts]) -> Self {
        let (proxy, upstream) = (reserve_port(), reserve_port());
        let servers = |pick: fn(&NodePorts) -> u16| {
            nodes
                .iter()
                .enumerate()
                .map(|(i, ports)| {
                    format!(
                        "  server n{i} 127.0.0.1:{} check port {}\n",
                        pick(ports),
                        ports.admin
                    )
                })
                .collect::<String>()
        };
        // Production settings: a node that is not ready gets no new request; a connection
        // refused or dropped before a response is retried on another node; WebSockets (the
        // agents' connections) are tunnels with their own timeout.
        let config = format!(
            "global\n  maxconn 4096\n\
             defaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n  timeout tunnel 1h\n  retries 3\n  option redispatch 1\n  retry-on conn-failure empty-response response-timeout\n  option http-server-close\n\
             frontend proxy\n  bind 127.0.0.1:{proxy}\n  default_backend proxy_nodes\n\
             frontend upstream\n  bind 127.0.0.1:{upstream}\n  default_backend upstream_nodes\n\
             backend proxy_nodes\n  balance roundrobin\n  option httpchk GET /ready\n  default-server inter 100ms fall 2 rise 2\n{}\
             backend upstream_nodes\n  balance roundrobin\n  option httpchk GET /ready\n  default-server inter 100ms fall 2 rise 2\n{}",
            servers(|p| p.proxy),
            servers(|p| p.upstream),
        );
        let config = TempFile::new("haproxy.cfg", &config);
        let process = tokio::process::Command::new("haproxy")
            .args(["-db", "-f", config.path()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("haproxy is required for the cluster tests (apt-get install haproxy)");
        Self {
            _process: process,
            _config: config,
            proxy: ([127, 0, 0, 1], proxy).into(),
            upstream: ([127, 0, 0, 1], upstream).into(),
        }
    }
}

/// GET `url`; the status and body, or the transport error.
async fn get(
    client: &HttpClient,
    url: &str,
    endpoint: Option<&str>,
) -> Result<(u16, String), String> {
    let mut request = http::Request::get(url);
    if let Some(endpoint) = endpoint {
        request = request.header("x-piko-endpoint", endpoint);
    }
    let response = client
        .request(request.body(Empty::new()).unwrap())
        .await
        .map_err(|err| format!("{err:?}"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|err| format!("body: {err:?}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The cluster as node `admin` sees it: active nodes and upstreams on them.
async fn cluster_view(client: &HttpClient, admin: u16) -> Option<(usize, u64)> {
    let url = format!("http://127.0.0.1:{admin}/status/cluster/nodes");
    let (status, body) = get(client, &url, None).await.ok()?;
    if status != 200 {
        return None;
    }
    let nodes: Vec<Value> = serde_json::from_str(&body).ok()?;
    let active: Vec<&Value> = nodes.iter().filter(|n| n["status"] == "active").collect();
    let upstreams = active
        .iter()
        .map(|n| n["upstreams"].as_u64().unwrap_or(0))
        .sum();
    Some((active.len(), upstreams))
}

/// Polls (bounded) until every node is ready, sees every node active holding `upstreams`
/// upstreams in all, and routes every endpoint. On failure, says what each node last showed.
async fn await_settled(client: &HttpClient, all: &[NodePorts], upstreams: u64) {
    let deadline = tokio::time::Instant::now() + PATIENCE * 2;
    loop {
        let mut settled = true;
        let mut seen = Vec::new();
        for ports in all {
            let ready = get(
                client,
                &format!("http://127.0.0.1:{}/ready", ports.admin),
                None,
            )
            .await
            .is_ok_and(|(status, _)| status == 200);
            let view = cluster_view(client, ports.admin).await;
            let mut routes = Vec::new();
            // And its routing table has caught up with what it sees.
            for endpoint in ENDPOINTS {
                let url = format!("http://127.0.0.1:{}/settle", ports.proxy);
                routes.push(
                    get(client, &url, Some(endpoint))
                        .await
                        .map(|(status, _)| status),
                );
            }
            settled &= ready
                && view == Some((all.len(), upstreams))
                && routes.iter().all(|route| *route == Ok(200));
            seen.push(format!(
                "admin {}: ready {ready}, view {view:?}, routes {routes:?}",
                ports.admin
            ));
        }
        if settled {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cluster did not settle:\n{}",
            seen.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls (bounded) until the balancer has every node in rotation: a round of successes for
/// every endpoint, as many as there are nodes (round robin), in a row.
async fn await_balancer(client: &HttpClient, balancer: SocketAddr, nodes: usize) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut in_a_row = 0;
    while in_a_row < nodes * ENDPOINTS.len() {
        let endpoint = ENDPOINTS[in_a_row % ENDPOINTS.len()];
        let url = format!("http://{balancer}/warm-up");
        match get(client, &url, Some(endpoint)).await {
            Ok((200, _)) => in_a_row += 1,
            outcome => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "balancer: {outcome:?}"
                );
                in_a_row = 0;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    ok: AtomicU64,
    failures: Mutex<Vec<String>>,
}

/// Sends [`RATE`] requests a second through the balancer, alternating endpoints, until `stop`.
async fn load(
    client: HttpClient,
    proxy: SocketAddr,
    endpoints: &'static [&'static str],
    tally: Arc<Tally>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let requests = tokio_util::task::TaskTracker::new();
    let started = tokio::time::Instant::now();
    let mut n = 0usize;
    while !stop.is_cancelled() {
        tick.tick().await;
        let endpoint = endpoints[n % endpoints.len()];
        n += 1;
        let (client, tally) = (client.clone(), tally.clone());
        let url = format!("http://{proxy}/r{n}");
        requests.spawn(async move {
            tally.sent.fetch_add(1, Ordering::Relaxed);
            let expected = format!("ok /r{n}");
            match get(&client, &url, Some(endpoint)).await {
                Ok((200, body)) if body == expected => {
                    tally.ok.fetch_add(1, Ordering::Relaxed);
                }
                outcome => tally.failures.lock().unwrap().push(format!(
                    "{:?} after start: {endpoint} {url}: {outcome:?}",
                    started.elapsed()
                )),
            }
        });
    }
    requests.close();
    requests.wait().await;
}

/// Three nodes, each joining the others, started and listening, and haproxy in front of them.
async fn three_nodes_behind_haproxy() -> (Vec<NodePorts>, Vec<Process>, Balancer) {
    let ports: Vec<NodePorts> = (0..3).map(|_| NodePorts::reserve()).collect();
    let mut nodes: Vec<Process> = (0..ports.len()).map(|i| start_node(&ports, i)).collect();
    for node in &mut nodes {
        node.wait_log("starting proxy server").await;
    }
    let balancer = Balancer::start(&ports);
    (ports, nodes, balancer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_fails_no_request() {
    let (ports, mut nodes, balancer) = three_nodes_behind_haproxy().await;
    let client = http_client();

    // Three agents: one endpoint with two, one with a single agent (it has nowhere to be
    // served from while it moves but its old session).
    let service = common::ok_service().await.to_string();
    let _agents: Vec<Process> = ["alpha", "alpha", "beta"]
        .iter()
        .map(|endpoint| common::agent_http(endpoint, &service, &balancer.upstream.to_string(), &[]))
        .collect();
    await_settled(&client, &ports, 3).await;
    // The balancer checks the nodes itself: they come into rotation a few checks after ready.
    await_balancer(&client, balancer.proxy, ports.len()).await;

    let tally = Arc::new(Tally::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let load = tokio::spawn(load(
        client.clone(),
        balancer.proxy,
        &ENDPOINTS,
        tally.clone(),
        stop.clone(),
    ));
    // Traffic flows before the first restart.
    tokio::time::timeout(PATIENCE, async {
        while tally.ok.load(Ordering::Relaxed) < RATE / 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("no traffic through the cluster");

    for (index, node) in nodes.iter_mut().enumerate() {
        let code = node.terminate().await;
        assert_eq!(code, 0, "node {index} exit code");
        *node = start_node(&ports, index);
        await_settled(&client, &ports, 3).await;
        eprintln!(
            "node {index} restarted: {} requests sent so far, {} failed",
            tally.sent.load(Ordering::Relaxed),
            tally.failures.lock().unwrap().len()
        );
    }
    // The last node's replacement takes traffic too.
    let before = tally.ok.load(Ordering::Relaxed);
    tokio::time::timeout(PATIENCE, async {
        while tally.ok.load(Ordering::Relaxed) < before + RATE / 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("traffic stopped after the rollout");
    stop.cancel();
    load.await.unwrap();

    let failures = tally.failures.lock().unwrap();
    let (sent, ok) = (
        tally.sent.load(Ordering::Relaxed),
        tally.ok.load(Ordering::Relaxed),
    );
    eprintln!(
        "rolling restart of 3 nodes at {RATE} req/s: {sent} requests, {ok} succeeded, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(ok, sent);
}

/// Waits (bounded) until every node routes TCP tunnels to `endpoint`: its TCP route answers a
/// plain GET with the handshake's refusal rather than `502 no available upstreams` (the routing
/// table follows the gossip `await_settled` looks at a moment later).
async fn await_tcp_route(client: &HttpClient, all: &[NodePorts], endpoint: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    for ports in all {
        let url = format!("http://127.0.0.1:{}/_piko/v1/tcp/{endpoint}", ports.proxy);
        loop {
            let outcome = get(client, &url, None).await;
            if outcome
                .as_ref()
                .is_ok_and(|(status, _)| *status != 502 && *status != 503)
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {} never routed {endpoint}: {outcome:?}",
                ports.proxy
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Echoes `payload` through a TCP tunnel opened by `piko forward` (`forward`) at `local`; on
/// failure, says what `piko forward` logged.
async fn echo_through(forward: &mut Process, local: SocketAddr, payload: &[u8]) {
    let echo = async {
        let mut tcp = tokio::net::TcpStream::connect(local).await?;
        tcp.write_all(payload).await?;
        let mut echoed = vec![0u8; payload.len()];
        tcp.read_exact(&mut echoed).await?;
        Ok::<_, std::io::Error>(echoed)
    };
    match tokio::time::timeout(PATIENCE, echo).await {
        Ok(Ok(echoed)) => assert_eq!(echoed, payload),
        outcome => {
            let mut logged = Vec::new();
            while let Ok(line) = forward.logs.try_recv() {
                logged.push(line.to_string());
            }
            panic!(
                "no echo: {outcome:?}; piko forward logged:\n{}",
                logged.join("\n")
            );
        }
    }
}

/// A node crashes (SIGKILL): its agents reconnect through the balancer to the others, which
/// stop routing to it, and every endpoint serves again; TCP tunnels cross nodes as HTTP does.
/// A node started later learns every endpoint before it is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_node_is_routed_around_and_a_late_joiner_learns_everything() {
    let (ports, mut nodes, balancer) = three_nodes_behind_haproxy().await;
    let client = http_client();
    let service = common::ok_service().await.to_string();
    let echo = common::echo_service().await.to_string();
    let upstream_url = format!("http://{}", balancer.upstream);
    let mut agents: Vec<Process> = ["alpha", "alpha", "beta"]
        .iter()
        .map(|endpoint| common::agent_http(endpoint, &service, &balancer.upstream.to_string(), &[]))
        .collect();
    agents.push(Process::start(&[
        "agent",
        "tcp",
        "gamma",
        &echo,
        "--connect.url",
        &upstream_url,
    ]));
    await_settled(&client, &ports, 4).await;
    await_tcp_route(&client, &ports, "gamma").await;
    await_balancer(&client, balancer.proxy, ports.len()).await;
    let (mut forward, tunnel) = common::start_forward(&balancer.proxy.to_string(), "gamma").await;
    // Several tunnels: the balancer spreads them over the nodes, most not the gamma agent's.
    for n in 0..6u8 {
        echo_through(&mut forward, tunnel, &[n; 1000]).await;
    }

    let crashed = std::time::Instant::now();
    nodes[0].child.start_kill().unwrap();
    nodes[0].child.wait().await.unwrap();
    let held = ports[0].hold();
    await_settled(&client, &ports[1..], 4).await;
    await_tcp_route(&client, &ports[1..], "gamma").await;
    eprintln!(
        "a crashed node was routed around in {:?}",
        crashed.elapsed()
    );
    for n in 0..6u8 {
        echo_through(&mut forward, tunnel, &[n; 1000]).await;
    }
    for endpoint in ENDPOINTS {
        let url = format!("http://{}/after-crash", balancer.proxy);
        let outcome = get(&client, &url, Some(endpoint)).await;
        assert_eq!(outcome, Ok((200, "ok /after-crash".into())), "{endpoint}");
    }

    // A new node in the crashed one's place: ready only once it knows where every endpoint is.
    drop(held);
    nodes[0] = start_node(&ports, 0);
    await_settled(&client, &ports, 4).await;
}

/// A node that hears from none of the nodes it was told to join gives up after
/// `cluster.join_timeout` and exits 1, naming the cause (the default `abort_if_join_fails`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_join_exits_1() {
    let silent = reserve_port().to_string();
    let seed = format!("127.0.0.1:{silent}");
    let (mut node, admin, _, _) =
        common::start_server(&["--cluster.join", &seed, "--cluster.join-timeout", "1s"]).await;
    let client = http_client();
    let ready = get(&client, &format!("http://{admin}/ready"), None).await;
    assert_eq!(
        ready.map(|(status, _)| status),
        Ok(503),
        "not ready while joining"
    );
    let failed = node.wait_log("failed to run server").await;
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .starts_with("cluster join:"),
        "{failed}"
    );
    let status = tokio::time::timeout(PATIENCE, node.child.wait())
        .await
        .expect("no exit")
        .unwrap();
    assert_eq!(status.code(), Some(1));
}

/// Upstreams on each node, as `node`'s admin port sees the cluster (active nodes only).
async fn upstreams_by_node(client: &HttpClient, admin: u16) -> Vec<u64> {
    let url = format!("http://127.0.0.1:{admin}/status/cluster/nodes");
    let Ok((200, body)) = get(client, &url, None).await else {
        return Vec::new();
    };
    let nodes: Vec<Value> = serde_json::from_str(&body).unwrap();
    nodes
        .iter()
        .filter(|n| n["status"] == "active")
        .map(|n| n["upstreams"].as_u64().unwrap_or(0))
        .collect()
}

/// Agents that all connected to the one node up at the time spread over the nodes that join
/// later: the crowded node asks some to reconnect (GoAway), the balancer sends them elsewhere,
/// and none is lost on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalancing_spreads_the_agents_of_a_crowded_node() {
    let ports: Vec<NodePorts> = (0..3).map(|_| NodePorts::reserve()).collect();
    // Nodes 1 and 2 start seconds later: nothing else running may take their ports meanwhile.
    let held: Vec<HeldPorts> = ports[1..].iter().map(NodePorts::hold).collect();
    let rebalance = [
        "--upstream.rebalance.threshold",
        "0.5",
        "--upstream.rebalance.shed-rate",
        "0.5",
        "--upstream.rebalance.min-conns",
        "1",
    ];
    let mut first = start_node_with(&ports, 0, &[], &rebalance);
    first.wait_log("starting proxy server").await;
    let balancer = Balancer::start(&ports);
    let client = http_client();
    let service = common::ok_service().await.to_string();
    let _agents: Vec<Process> = (0..6)
        .map(|_| common::agent_http("alpha", &service, &balancer.upstream.to_string(), &[]))
        .collect();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while upstreams_by_node(&client, ports[0].admin).await != [6] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "agents never all on node 0"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    drop(held);
    let _later: Vec<Process> = (1..3)
        .map(|i| start_node_with(&ports, i, &[0], &rebalance))
        .collect();
    let started = std::time::Instant::now();
    let deadline = tokio::time::Instant::now() + PATIENCE * 2;
    let spread = loop {
        let counts = upstreams_by_node(&client, ports[0].admin).await;
        // Average 2: no node above 1.5 × 2 = 3, and none lost.
        if counts.len() == 3 && counts.iter().sum::<u64>() == 6 && counts.iter().all(|n| *n <= 3) {
            break counts;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never balanced: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("rebalanced to {spread:?} in {:?}", started.elapsed());
    let shed = first.wait_log("rebalance; shedding connections").await;
    assert_eq!(shed["threshold"], 0.5, "{shed}");
    // The moved agents serve from their new nodes.
    for n in 0..12 {
        let url = format!("http://{}/moved{n}", balancer.proxy);
        let outcome = get(&client, &url, Some("alpha")).await;
        assert_eq!(outcome, Ok((200, format!("ok /moved{n}"))));
    }
}
