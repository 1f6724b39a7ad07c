//! Real `piko` processes for the end-to-end tests: started with arguments, their JSON log lines
//! collected, stopped with signals.

#![allow(dead_code, reason = "each test file uses part of it")]

pub(crate) mod pki;

use std::{net::SocketAddr, process::Stdio, time::Duration};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

/// How long a test waits for something that should happen at once.
pub(crate) const PATIENCE: Duration = Duration::from_secs(20);

/// A child `piko` process whose JSON log lines are collected as they come.
pub(crate) struct Process {
    pub(crate) child: Child,
    pub(crate) logs: mpsc::UnboundedReceiver<Value>,
}

impl Process {
    pub(crate) fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    pub(crate) fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_program(env!("CARGO_BIN_EXE_piko").as_ref(), args, env)
    }

    /// Another program logging JSON lines on stderr (Piko's Go binary).
    pub(crate) fn start_program(
        program: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| panic!("start {}: {err}", program.display()));
        let (tx, logs) = mpsc::unbounded_channel();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| panic!("not a JSON log line: {line}"));
                if tx.send(value).is_err() {
                    return;
                }
            }
        });
        Self { child, logs }
    }

    /// The next log line with this message.
    pub(crate) async fn wait_log(&mut self, msg: &str) -> Value {
        tokio::time::timeout(PATIENCE, async {
            loop {
                let line = self
                    .logs
                    .recv()
                    .await
                    .unwrap_or_else(|| panic!("process exited before logging {msg:?}"));
                if line["msg"] == msg {
                    return line;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {msg:?} log line"))
    }

    /// Sends the signal named `name` (`TERM`, `HUP`...).
    pub(crate) async fn signal(&self, name: &str) {
        let pid = self.child.id().unwrap().to_string();
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .await
            .unwrap();
        assert!(status.success());
    }

    pub(crate) async fn terminate(&mut self) -> i32 {
        self.signal("TERM").await;
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("no exit after SIGTERM")
            .unwrap();
        status.code().unwrap_or(-1)
    }
}

/// `piko server` with its ports and gossip on ephemeral loopback ports, and `extra` flags; its
/// addresses are in its first log lines.
pub(crate) fn server_process(extra: &[&str]) -> Process {
    Process::start(&server_args(extra))
}

/// The arguments of `server_process`.
fn server_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "server",
        "--proxy.bind-addr",
        "127.0.0.1:0",
        "--upstream.bind-addr",
        "127.0.0.1:0",
        "--admin.bind-addr",
        "127.0.0.1:0",
        "--cluster.gossip.bind-addr",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    args
}

/// A `piko server` on ephemeral loopback ports, with the addresses it logged: (admin, upstream,
/// proxy).
pub(crate) async fn start_server(extra: &[&str]) -> (Process, String, String, String) {
    server_addrs(server_process(extra)).await
}

/// Piko v0.9.0's Go server (the `piko` binary at `program`), started as `start_server` starts
/// ours: it takes the same flags and logs its addresses the same way.
pub(crate) async fn start_go_server(
    program: &std::path::Path,
) -> (Process, String, String, String) {
    server_addrs(Process::start_program(program, &server_args(&[]), &[])).await
}

/// A server with the addresses it logged as it started, in whatever order (Piko's Go server logs
/// them in another): (admin, upstream, proxy).
async fn server_addrs(mut server: Process) -> (Process, String, String, String) {
    const PORTS: [&str; 3] = [
        "starting admin server",
        "starting upstream server",
        "starting proxy server",
    ];
    let mut addrs: [Option<String>; 3] = Default::default();
    tokio::time::timeout(PATIENCE, async {
        while addrs.iter().any(Option::is_none) {
            let line = server
                .logs
                .recv()
                .await
                .expect("the server exited before logging its addresses");
            if let Some(i) = PORTS.iter().position(|msg| line["msg"] == *msg) {
                addrs[i] = line["addr"].as_str().map(str::to_owned);
            }
        }
    })
    .await
    .expect("the server never logged its addresses");
    let [admin, upstream, proxy] = addrs.map(Option::unwrap);
    (server, admin, upstream, proxy)
}

/// An HS256 token with `claims` (JSON), signed with `secret`.
pub(crate) fn hs256_token(secret: &str, claims: &str) -> String {
    use base64::Engine as _;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let input = format!("{}.{}", b64(br#"{"alg":"HS256"}"#), b64(claims.as_bytes()));
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
    let signature = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64(signature.as_ref()))
}

pub(crate) struct TempFile(std::path::PathBuf);

impl TempFile {
    pub(crate) fn new(name: &str, text: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("piko-cli-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        Self(path)
    }

    pub(crate) fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Peak resident memory of a process, from /proc.
pub(crate) fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// An HTTP/1.1 service answering every request with `ok <path>` (keep-alive).
pub(crate) async fn ok_service() -> SocketAddr {
    let listener = piko_protocol::bind_listener("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt as _;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        let path = head.split_whitespace().nth(1).unwrap_or("?").to_owned();
                        let body = format!("ok {path}");
                        let response = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if tcp.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match tcp.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

/// An echo service: echoes until the client's end, then ends its side (half-close aware). Its
/// accept queue takes a burst of 500 connections.
pub(crate) async fn echo_service() -> SocketAddr {
    let listener = piko_protocol::bind_listener("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut reader, mut writer) = tcp.into_split();
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
                let _ = writer.shutdown().await;
            });
        }
    });
    addr
}

/// `piko agent tcp`, once the server has registered it.
pub(crate) async fn start_agent_tcp(
    server: &mut Process,
    upstream: &str,
    endpoint: &str,
    addr: &str,
) -> Process {
    let url = format!("http://{upstream}");
    let agent = Process::start(&["agent", "tcp", endpoint, addr, "--connect.url", &url]);
    server.wait_log("upstream connected").await;
    agent
}

/// `piko agent http <endpoint> <service>` connecting to the upstream port or balancer at
/// `upstream` (`host:port`), with `extra` flags.
pub(crate) fn agent_http(endpoint: &str, service: &str, upstream: &str, extra: &[&str]) -> Process {
    let url = format!("http://{upstream}");
    let mut args = vec!["agent", "http", endpoint, service, "--connect.url", &url];
    args.extend_from_slice(extra);
    Process::start(&args)
}

/// `piko forward tcp` on an ephemeral loopback port, and that port.
pub(crate) async fn start_forward(proxy: &str, endpoint: &str) -> (Process, SocketAddr) {
    start_forward_to(&format!("http://{proxy}"), endpoint, &[]).await
}

/// `piko forward tcp` to the proxy port at `url`, with `extra` flags, on an ephemeral loopback
/// port, and that port.
pub(crate) async fn start_forward_to(
    url: &str,
    endpoint: &str,
    extra: &[&str],
) -> (Process, SocketAddr) {
    let mut args = vec![
        "forward",
        "tcp",
        "127.0.0.1:0",
        endpoint,
        "--connect.url",
        url,
    ];
    args.extend_from_slice(extra);
    let mut forward = Process::start(&args);
    let line = forward.wait_log("starting tcp forwarder").await;
    let addr = line["addr"].as_str().unwrap().parse().unwrap();
    (forward, addr)
}

/// A WebSocket echo service (Python's `websockets`, Debian's python3-websockets): prints its
/// port, then echoes every message with its type.
const WEBSOCKET_ECHO: &str = r#"
import asyncio, websockets
async def echo(ws, path=None):
    async for message in ws:
        await ws.send(message)
async def main():
    async with websockets.serve(echo, "127.0.0.1", 0) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()
asyncio.run(main())
"#;

/// A WebSocket client (Python's `websockets`) connecting to `argv[1]` with
/// `x-piko-endpoint: argv[2]` (and the CA in `argv[3]` for `wss://`): sends a text and a binary
/// message and prints what comes back.
const WEBSOCKET_CLIENT: &str = r#"
import asyncio, ssl, sys, websockets
async def main():
    context = ssl.create_default_context(cafile=sys.argv[3]) if len(sys.argv) > 3 else None
    headers = {"x-piko-endpoint": sys.argv[2]}
    async with websockets.connect(sys.argv[1], ssl=context, extra_headers=headers) as ws:
        for message in ["hello through piko", b"\x00\x01\x02"]:
            await ws.send(message)
            reply = await ws.recv()
            print(type(reply).__name__, reply)
asyncio.run(main())
"#;

/// The WebSocket echo service, running, and its address.
pub(crate) async fn websocket_echo_service() -> (Child, String) {
    let mut echo = Command::new("/usr/bin/python3")
        .args(["-c", WEBSOCKET_ECHO])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("/usr/bin/python3 (apt-get install python3-websockets)");
    let mut lines = BufReader::new(echo.stdout.take().unwrap()).lines();
    let port = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .expect("the WebSocket service never started")
        .unwrap()
        .expect("the WebSocket service printed its port");
    (echo, format!("127.0.0.1:{port}"))
}

/// Runs the WebSocket client against `url` for `endpoint` (trusting `ca` for `wss://`); its
/// output. The expected stdout is `WEBSOCKET_CLIENT_ECHOED`.
pub(crate) async fn websocket_client(
    url: &str,
    ca: Option<&str>,
    endpoint: &str,
) -> std::process::Output {
    tokio::time::timeout(
        PATIENCE,
        Command::new("/usr/bin/python3")
            .args(["-c", WEBSOCKET_CLIENT, url, endpoint])
            .args(ca)
            .output(),
    )
    .await
    .expect("the WebSocket client hung")
    .unwrap()
}

/// What `websocket_client` prints when every message came back.
pub(crate) const WEBSOCKET_CLIENT_ECHOED: &str =
    "str hello through piko\nbytes b'\\x00\\x01\\x02'\n";
