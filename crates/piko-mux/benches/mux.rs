//! Multiplexer benchmark, the twin of `interop/cmd/mux-bench` (Go's yamux): both ends of a
//! session in one process over a real loopback TCP connection, optionally with the WebSocket byte
//! stream in between. Prints `RESULT <name> <value> <unit>` lines that `bench/mux.sh` tabulates.
//!
//! ```text
//! cargo bench -p piko-mux --bench mux -- [--transport ws|tcp] [--bench bulk-1,bulk-64,rtt]
//!     [--bytes N] [--duration SECS] [--concurrency N]
//! ```
#![allow(missing_docs)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use piko_mux::{Config, Session};
use piko_protocol::WsByteStream;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

struct Options {
    transport: String,
    benches: Vec<String>,
    bytes: u64,
    duration: Duration,
    concurrency: usize,
    window: u32,
    /// `down`: the server writes (Piko's requests); `up`: the client writes (an agent's
    /// responses, the masked direction on a WebSocket).
    direction: String,
}

fn options() -> Options {
    let mut options = Options {
        transport: "ws".into(),
        benches: vec!["bulk-1".into(), "bulk-64".into(), "rtt".into()],
        bytes: 1 << 30,
        duration: Duration::from_secs(5),
        concurrency: 32,
        window: piko_mux::INITIAL_STREAM_WINDOW,
        direction: "down".into(),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--transport" => options.transport = value,
            "--bench" if !value.is_empty() && !value.starts_with("--") => {
                options.benches = value.split(',').map(str::to_owned).collect();
            }
            "--bytes" => options.bytes = value.parse().expect("--bytes takes a number"),
            "--duration" => {
                options.duration =
                    Duration::from_secs_f64(value.parse().expect("--duration takes seconds"));
            }
            "--direction" => options.direction = value,
            "--window" => options.window = value.parse().expect("--window takes bytes"),
            "--concurrency" => {
                options.concurrency = value.parse().expect("--concurrency takes a number")
            }
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    options
}

/// User + system CPU seconds of this process, from /proc (no unsafe getrusage needed).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("read /proc/self/stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat format")
        .1
        .split_whitespace()
        .collect();
    // Fields 14 and 15 of stat (utime, stime), counted after the command name.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

async fn connected_pair(transport: &str, window: u32) -> (Session, Session) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = tokio::spawn(async move { listener.accept().await.unwrap().0 });
    let client_tcp = TcpStream::connect(addr).await.unwrap();
    let server_tcp = accept.await.unwrap();
    client_tcp.set_nodelay(true).unwrap();
    server_tcp.set_nodelay(true).unwrap();
    let config = Config {
        receive_window: window,
        ..Config::default()
    };
    match transport {
        "tcp" => (
            Session::client(client_tcp, config.clone()),
            Session::server(server_tcp, config),
        ),
        // The framing without the handshake, which costs nothing per byte.
        "ws" => (
            Session::client_transport(WsByteStream::client(client_tcp, &[]), config.clone()),
            Session::server_transport(WsByteStream::server(server_tcp, &[]), config),
        ),
        other => panic!("unknown transport {other}"),
    }
}

async fn bulk(options: &Options, streams: usize) -> (f64, f64) {
    let per_stream = options.bytes / streams as u64;
    let (client, server) = connected_pair(&options.transport, options.window).await;
    let up = match options.direction.as_str() {
        "down" => false,
        "up" => true,
        other => panic!("unknown direction {other}"),
    };
    let cpu = cpu_seconds();
    let started = Instant::now();
    // The server always opens the streams, as Piko's server does.
    let acceptor = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..streams {
            let stream = client.accept().await.unwrap();
            tasks.push(tokio::spawn(async move {
                if up {
                    write_n(stream, per_stream).await
                } else {
                    read_to_end(stream).await
                }
            }));
        }
        let mut got = 0;
        for task in tasks {
            got += task.await.unwrap();
        }
        (got, client)
    });
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let stream = server.open().await.unwrap();
        tasks.push(tokio::spawn(async move {
            if up {
                read_to_end(stream).await
            } else {
                write_n(stream, per_stream).await
            }
        }));
    }
    let mut got = 0;
    for task in tasks {
        got += task.await.unwrap();
    }
    let (other, _client) = acceptor.await.unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    let total = per_stream * streams as u64;
    assert_eq!(got, total);
    assert_eq!(other, total);
    let gib = total as f64 / f64::from(1u32 << 30);
    (total as f64 / f64::from(1u32 << 20) / elapsed, cpu / gib)
}

/// Writes `len` bytes and half-closes; returns `len`.
async fn write_n(mut stream: piko_mux::Stream, len: u64) -> u64 {
    let chunk = vec![0x5au8; 256 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        stream.write_all(&chunk[..n]).await.unwrap();
        left -= n as u64;
    }
    stream.shutdown().await.unwrap();
    len
}

/// Reads to EOF; returns the byte count.
async fn read_to_end(mut stream: piko_mux::Stream) -> u64 {
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    loop {
        let n = stream.read(&mut buf).await.unwrap();
        if n == 0 {
            return got;
        }
        got += n as u64;
    }
}

async fn round_trips(options: &Options) -> (f64, f64) {
    let (concurrency, duration) = (options.concurrency, options.duration);
    let (client, server) = connected_pair(&options.transport, options.window).await;
    tokio::spawn(async move {
        while let Ok(mut stream) = client.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 100];
                stream.read_exact(&mut buf).await.unwrap();
                stream.write_all(&buf).await.unwrap();
                stream.shutdown().await.unwrap();
            });
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let cpu = cpu_seconds();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (server, stop, count) = (server.clone(), stop.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            let request = [7u8; 100];
            let mut reply = Vec::with_capacity(128);
            while !stop.load(Ordering::Relaxed) {
                let mut stream = server.open().await.unwrap();
                stream.write_all(&request).await.unwrap();
                reply.clear();
                stream.read_to_end(&mut reply).await.unwrap();
                assert_eq!(reply.len(), 100);
                stream.shutdown().await.unwrap();
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    let n = count.load(Ordering::Relaxed) as f64;
    (n / elapsed, cpu / n * 1e6)
}

fn main() {
    let options = options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for bench in &options.benches {
            match bench.as_str() {
                "bulk-1" | "bulk-64" => {
                    let streams = if bench == "bulk-1" { 1 } else { 64 };
                    let (rate, cpu) = bulk(&options, streams).await;
                    println!("RESULT {bench} {rate:.1} MiB/s");
                    println!("RESULT {bench}-cpu {cpu:.3} s/GiB");
                }
                "rtt" => {
                    let (rate, cpu) = round_trips(&options).await;
                    println!("RESULT rtt {rate:.0} rt/s");
                    println!("RESULT rtt-cpu {cpu:.2} us/rt");
                }
                other => panic!("unknown bench {other}"),
            }
        }
    });
}
