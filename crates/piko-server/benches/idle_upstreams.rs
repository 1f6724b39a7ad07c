//! Memory a server node holds per idle upstream: the full path (HTTP connection, WebSocket
//! upgrade, multiplexer session, routing table entry). The upstreams are SDK listeners in a child
//! process (this binary again), so only the server's memory is counted. Prints
//! `RESULT idle-upstream <KiB> KiB`.
//!
//! ```text
//! cargo bench -p piko-server --bench idle_upstreams -- [--upstreams N]
//! ```
#![allow(missing_docs)]

use std::{process::Stdio, time::Duration};

use piko_server::{Config, Server};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    statm
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 4096
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().unwrap())
}

/// Child: `count` listeners on distinct endpoints, held until stdin closes.
async fn listeners(url: String, count: usize) {
    let upstream = piko::Upstream::new(url);
    let mut held = Vec::new();
    for i in 0..count {
        held.push(upstream.listen(&format!("endpoint-{i}")).await.unwrap());
    }
    println!("connected");
    let _ = tokio::io::stdin().read(&mut [0u8; 1]).await;
}

async fn measure(count: usize) {
    let config = Config {
        proxy_bind_addr: "127.0.0.1:0".into(),
        upstream_bind_addr: "127.0.0.1:0".into(),
        admin_bind_addr: "127.0.0.1:0".into(),
        gossip_bind_addr: "127.0.0.1:0".into(),
        ..Config::default()
    };
    let server = Server::bind(config).await.unwrap();
    let url = format!("http://{}", server.upstream_addr());
    let upstreams = server.upstreams();
    tokio::spawn(server.run(std::future::pending()));
    // Warm up the runtime and allocator with one upstream before the baseline.
    let warm = piko::Upstream::new(url.clone())
        .listen("warm-up")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_bytes();
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--child", &url, &count.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(
        lines.next_line().await.unwrap().as_deref(),
        Some("connected")
    );
    assert_eq!(upstreams.endpoints().len(), count + 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_bytes();
    println!(
        "RESULT idle-upstream {:.1} KiB",
        (after - before) as f64 / count as f64 / 1024.0
    );
    drop(child.stdin.take());
    let _ = child.wait().await;
    drop(warm);
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        runtime.block_on(listeners(args[i + 1].clone(), args[i + 2].parse().unwrap()));
        return;
    }
    runtime.block_on(measure(arg("--upstreams", 1000)));
}
