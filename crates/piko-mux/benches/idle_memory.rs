//! Memory held by idle upstream connections: the server side of N WebSocket + mux sessions, and
//! of M idle streams on one session. The clients run in a child process (this binary again) so
//! only the server side's memory is counted. Prints `RESULT <name> <value> <unit>` lines.
//!
//! ```text
//! cargo bench -p piko-mux --bench idle_memory -- [--sessions N] [--streams M]
//! ```
#![allow(missing_docs)]

use std::{process::Stdio, time::Duration};

use piko_mux::{Config, Session};
use piko_protocol::{WsByteStream, client_handshake};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};

/// Resident set size of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Keep-alive fast enough that every session exchanges pings (touching its buffers) before the
/// measurement, as a long-idle upstream would.
fn config() -> Config {
    Config {
        keep_alive_interval: Some(Duration::from_millis(200)),
        ..Config::default()
    }
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

/// Child mode: open `sessions` client sessions to `addr`, accept streams and hold them, until
/// stdin closes.
async fn clients(addr: String, sessions: usize) {
    let mut held = Vec::new();
    for _ in 0..sessions {
        let tcp = TcpStream::connect(&addr).await.unwrap();
        let url = format!("ws://{addr}/piko/v1/upstream/idle");
        let (ws, _) = client_handshake(tcp, &url.parse().unwrap(), &Default::default())
            .await
            .unwrap();
        let session = Session::client_transport(ws, config());
        let acceptor = session.clone();
        tokio::spawn(async move {
            let mut streams = Vec::new();
            while let Ok(mut stream) = acceptor.accept().await {
                // Answer one byte so the opener knows the stream is established.
                let _ = stream.write_all(b"!").await;
                streams.push(stream);
            }
        });
        held.push(session);
    }
    println!("connected");
    let mut stdin = tokio::io::stdin();
    let _ = stdin.read(&mut [0u8; 1]).await;
}

async fn measure(sessions: usize, streams: usize) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--child", &addr.to_string(), &sessions.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut accepted = Vec::new();
    // Warm the allocator and runtime with one session before the baseline.
    let baseline_sessions = 1;
    let mut before = 0;
    for i in 0..sessions {
        if i == baseline_sessions {
            tokio::time::sleep(Duration::from_millis(500)).await;
            before = rss();
        }
        let (tcp, _) = listener.accept().await.unwrap();
        // The client sends nothing before the 101, so tungstenite keeps nothing unread.
        let tcp = tokio_tungstenite::accept_async(tcp)
            .await
            .unwrap()
            .into_inner();
        accepted.push(Session::server_transport(
            WsByteStream::server(tcp, &[]),
            config(),
        ));
    }
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(
        lines.next_line().await.unwrap().as_deref(),
        Some("connected")
    );
    // Several keep-alive rounds, then idle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss();
    let measured = (sessions - baseline_sessions) as f64;
    println!(
        "RESULT idle-session {:.1} KiB",
        (after - before) as f64 / measured / 1024.0
    );
    assert!(
        accepted.iter().all(|s| !s.is_closed()),
        "a session died while idle"
    );

    let session = &accepted[0];
    let mut opened = Vec::new();
    let before = rss();
    for _ in 0..streams {
        let mut stream = session.open().await.unwrap();
        let mut ack = [0u8; 1];
        stream.read_exact(&mut ack).await.unwrap();
        opened.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss();
    println!(
        "RESULT idle-stream {:.0} B",
        (after - before) as f64 / streams as f64
    );
    drop(child.stdin.take());
    let _ = child.wait().await;
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let (addr, sessions) = (args[i + 1].clone(), args[i + 2].parse().unwrap());
        runtime.block_on(clients(addr, sessions));
        return;
    }
    runtime.block_on(measure(arg("--sessions", 2000), arg("--streams", 10_000)));
}
