//! A real network partition: two nodes in separate network namespaces joined by a virtual link,
//! the link cut with `ip link set down` and then healed, with an agent and a service behind the
//! second node and a client (curl) in the first node's namespace. Routing through the first node
//! stops while the link is down and converges again once it is up.
//!
//! Needs root (network namespaces); without it the test says so and passes, unless
//! `PIKO_REQUIRE_NETNS=1`, as in CI.

mod common;

use std::{process::Stdio, time::Duration};

use tokio::process::{Child, Command};

/// Runs `ip` with `args`; whether it succeeded.
fn ip(args: &[&str]) -> bool {
    std::process::Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Two namespaces joined by a veth pair, `10.213.N.1` in the first and `10.213.N.2` in the
/// second; removed when dropped (the veth pair goes with them).
struct Namespaces {
    a: String,
    b: String,
    link_a: String,
    addr_a: String,
    addr_b: String,
}

impl Namespaces {
    /// `None` when namespaces cannot be made here.
    fn create() -> Option<Self> {
        let id = std::process::id();
        let subnet = id % 250;
        let this = Self {
            a: format!("piko-a-{id}"),
            b: format!("piko-b-{id}"),
            link_a: format!("pka{}", id % 100_000),
            addr_a: format!("10.213.{subnet}.1"),
            addr_b: format!("10.213.{subnet}.2"),
        };
        let link_b = format!("pkb{}", id % 100_000);
        if !ip(&["netns", "add", &this.a]) {
            return None;
        }
        let made = ip(&["netns", "add", &this.b])
            && ip(&[
                "link",
                "add",
                &this.link_a,
                "type",
                "veth",
                "peer",
                "name",
                &link_b,
            ])
            && ip(&["link", "set", &this.link_a, "netns", &this.a])
            && ip(&["link", "set", &link_b, "netns", &this.b])
            && ip(&[
                "-n",
                &this.a,
                "addr",
                "add",
                &format!("{}/24", this.addr_a),
                "dev",
                &this.link_a,
            ])
            && ip(&[
                "-n",
                &this.b,
                "addr",
                "add",
                &format!("{}/24", this.addr_b),
                "dev",
                &link_b,
            ])
            && ip(&["-n", &this.a, "link", "set", "lo", "up"])
            && ip(&["-n", &this.b, "link", "set", "lo", "up"])
            && ip(&["-n", &this.a, "link", "set", &this.link_a, "up"])
            && ip(&["-n", &this.b, "link", "set", &link_b, "up"]);
        made.then_some(this)
    }

    /// Takes the first namespace's end of the link down or up.
    fn set_link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        assert!(ip(&["-n", &self.a, "link", "set", &self.link_a, state]));
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        ip(&["netns", "del", &self.a]);
        ip(&["netns", "del", &self.b]);
    }
}

/// `program args` inside namespace `ns`, killed when dropped.
fn spawn_in(ns: &str, program: &str, args: &[&str]) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("ip netns exec")
}

/// The status of `curl` inside `ns` for `url` with `headers` (000 when it could not connect).
async fn curl_status(ns: &str, url: &str, headers: &[&str]) -> String {
    let mut command = Command::new("ip");
    command.args([
        "netns",
        "exec",
        ns,
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-m",
        "2",
    ]);
    command.args(["-w", "%{http_code}"]);
    for header in headers {
        command.args(["-H", header]);
    }
    let output = command.arg(url).output().await.expect("curl");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Polls (bounded by `limit`) until `/metrics` at `url`, read inside `ns`, has `sample`.
async fn await_sample(ns: &str, url: &str, sample: &str, limit: Duration, what: &str) {
    let started = tokio::time::Instant::now();
    loop {
        let output = Command::new("ip")
            .args(["netns", "exec", ns, "curl", "-s", "-m", "2", url])
            .output()
            .await
            .expect("curl");
        if String::from_utf8_lossy(&output.stdout)
            .lines()
            .any(|line| line == sample)
        {
            println!("{what}: {sample} after {:?}", started.elapsed());
            return;
        }
        assert!(
            started.elapsed() < limit,
            "{what}: no {sample} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls (bounded by `limit`) until `curl` inside `ns` gets `status` from `url`.
async fn await_status(
    ns: &str,
    url: &str,
    headers: &[&str],
    status: &str,
    limit: Duration,
    what: &str,
) {
    let started = tokio::time::Instant::now();
    let deadline = started + limit;
    loop {
        let got = curl_status(ns, url, headers).await;
        if got == status {
            println!("{what}: {status} after {:?}", started.elapsed());
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: still {got} after {limit:?}, want {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `piko server` on `ports` (proxy, upstream, admin, gossip), gossiping every 100 ms.
fn server_args(ports: &[String; 4]) -> Vec<&str> {
    vec![
        "server",
        "--proxy.bind-addr",
        &ports[0],
        "--upstream.bind-addr",
        &ports[1],
        "--admin.bind-addr",
        &ports[2],
        "--cluster.gossip.bind-addr",
        &ports[3],
        "--cluster.gossip.interval",
        "100ms",
        "--log.level",
        "warn",
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_converges_after_a_cut_link_heals() {
    let Some(net) = Namespaces::create() else {
        assert!(
            std::env::var("PIKO_REQUIRE_NETNS").as_deref() != Ok("1"),
            "network namespaces cannot be made here (root is needed) and PIKO_REQUIRE_NETNS=1"
        );
        println!("skipped: network namespaces cannot be made here (root is needed)");
        return;
    };
    let piko = env!("CARGO_BIN_EXE_piko");
    // Each namespace has its own ports: fixed numbers cannot collide with anything.
    let ports = |addr: &str| [8000, 8001, 8002, 8003].map(|port| format!("{addr}:{port}"));
    let (ports_a, ports_b) = (ports(&net.addr_a), ports(&net.addr_b));
    let _node_a = spawn_in(&net.a, piko, &server_args(&ports_a));
    let ready_a = format!("http://{}/ready", ports_a[2]);
    await_status(
        &net.a,
        &ready_a,
        &[],
        "200",
        common::PATIENCE,
        "node A ready",
    )
    .await;
    let mut args_b = server_args(&ports_b);
    args_b.extend(["--cluster.join", &ports_a[3]]);
    let _node_b = spawn_in(&net.b, piko, &args_b);
    let _service = spawn_in(
        &net.b,
        "python3",
        &["-m", "http.server", "--bind", &net.addr_b, "9000"],
    );
    let service = format!("{}:9000", net.addr_b);
    let upstream = format!("http://{}", ports_b[1]);
    let _agent = spawn_in(
        &net.b,
        piko,
        &[
            "agent",
            "http",
            "web",
            &service,
            "--connect.url",
            &upstream,
            "--log.level",
            "warn",
        ],
    );

    let via_a = format!("http://{}/", ports_a[0]);
    let endpoint = ["x-piko-endpoint: web"];
    let patience = common::PATIENCE;
    // Through node A, relayed to node B, which holds the agent.
    await_status(&net.a, &via_a, &endpoint, "200", patience, "before the cut").await;

    let metrics_a = format!("http://{}/metrics", ports_a[2]);
    let active = r#"piko_cluster_nodes{status="active"} 2"#;
    await_sample(&net.a, &metrics_a, active, patience, "joined").await;

    net.set_link(false);
    // Node A no longer reaches B: requests fail at once (no route), and the gossip soon marks B
    // unreachable, so A stops routing there: it answers that nobody serves the endpoint.
    await_status(&net.a, &via_a, &endpoint, "502", patience, "link down").await;
    let unreachable = r#"piko_cluster_nodes{status="unreachable"} 1"#;
    await_sample(&net.a, &metrics_a, unreachable, patience, "B unreachable").await;
    // Now it no longer even tries: nobody holds the endpoint as far as A knows.
    let output = Command::new("ip")
        .args(["netns", "exec", &net.a, "curl", "-s", "-m", "2"])
        .args(["-H", endpoint[0], &via_a])
        .output()
        .await
        .expect("curl");
    let body = String::from_utf8_lossy(&output.stdout);
    assert!(body.contains("no available upstreams"), "{body}");

    net.set_link(true);
    let converged = Duration::from_secs(60);
    await_sample(&net.a, &metrics_a, active, converged, "link healed").await;
    await_status(&net.a, &via_a, &endpoint, "200", converged, "link healed").await;
}
