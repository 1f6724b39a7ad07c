//! Our sessions against Piko's own Go yamux and WebSocket code (`interop/cmd/mux-peer`), in both
//! roles: a Go server driving scenarios against our client, and our server driving the same
//! scenarios against a Go client. The per-stream command protocol is in `interop/README.md`.
//!
//! Needs `go`. Without it the tests print why and pass, unless `PIKO_REQUIRE_INTEROP=1`.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use piko_mux::{Config, Error, Session, Stream};
use piko_protocol::{WsByteStream, client_handshake};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    process::{Child, Command},
};

const SCENARIO_TIMEOUT: Duration = Duration::from_secs(120);

fn pattern(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len).map(|i| (i % 251) as u8).collect()
}

/// Builds the Go peer once per test binary; `None` (after printing why) when Go is unavailable
/// and interop is optional.
fn mux_peer() -> Option<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../interop");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mux-peer");
        let status = std::process::Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg("./cmd/mux-peer")
            .current_dir(&root)
            .env("GOFLAGS", "-mod=readonly")
            .env("GOTOOLCHAIN", "local")
            .status();
        match status {
            Ok(status) if status.success() => Ok(out),
            Ok(status) => Err(format!("go build of interop/cmd/mux-peer failed: {status}")),
            Err(err) => Err(format!("cannot run go: {err}")),
        }
    });
    match built {
        Ok(path) => Some(path.clone()),
        Err(why) if std::env::var("PIKO_REQUIRE_INTEROP").is_ok_and(|v| v == "1") => {
            panic!("interop required (PIKO_REQUIRE_INTEROP=1) but unavailable: {why}")
        }
        Err(why) => {
            eprintln!("skipping Go interop test: {why}");
            None
        }
    }
}

fn config() -> Config {
    Config {
        keep_alive_interval: Some(Duration::from_millis(500)),
        keep_alive_timeout: Duration::from_secs(1),
        ..Config::default()
    }
}

fn spawn_peer(binary: &Path, args: &[&str]) -> Child {
    Command::new(binary)
        .args(args)
        .args(["-keepalive", "500ms", "-keepalive-timeout", "1s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start mux-peer")
}

// ---- our responder (Go drives) ----------------------------------------------------------------

type Tally = Arc<Mutex<Vec<String>>>;

async fn read_command(stream: &mut Stream) -> std::io::Result<String> {
    let mut line = Vec::new();
    loop {
        let byte = stream.read_u8().await?;
        if byte == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(byte);
    }
}

async fn echo(stream: Stream) -> std::io::Result<()> {
    let (mut rd, mut wr) = tokio::io::split(stream);
    tokio::io::copy(&mut rd, &mut wr).await?;
    wr.shutdown().await
}

/// Reads to EOF checking the pattern; the byte count.
async fn read_pattern(rd: &mut (impl AsyncRead + Unpin)) -> Result<usize, String> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        let n = rd.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(total);
        }
        if buf[..n] != pattern(total, n)[..] {
            return Err(format!("pattern mismatch after {total} bytes"));
        }
        total += n;
    }
}

async fn respond(mut stream: Stream, session: Session, tally: Tally) {
    let record = |line: String| tally.lock().unwrap().push(line);
    let command = match read_command(&mut stream).await {
        Ok(command) => command,
        Err(err) => return record(format!("error: reading command: {err}")),
    };
    let mut words = command.split_whitespace();
    let result: Result<(), String> = match (words.next(), words.next()) {
        (Some("echo"), None) => echo(stream).await.map_err(|e| e.to_string()),
        (Some("stall"), Some(ms)) => {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
            echo(stream).await.map_err(|e| e.to_string())
        }
        (Some("source"), Some(n)) => {
            async {
                let n: usize = n.parse().map_err(|_| format!("bad length {n}"))?;
                let (mut rd, mut wr) = tokio::io::split(stream);
                let chunk = pattern(0, 251 * 1024);
                let mut sent = 0;
                while sent < n {
                    let take = (n - sent).min(chunk.len());
                    wr.write_all(&chunk[..take])
                        .await
                        .map_err(|e| e.to_string())?;
                    sent += take;
                }
                wr.shutdown().await.map_err(|e| e.to_string())?;
                tokio::io::copy(&mut rd, &mut tokio::io::sink())
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(())
            }
            .await
        }
        (Some("close-first"), None) => {
            async {
                stream
                    .write_all(b"bye\n")
                    .await
                    .map_err(|e| e.to_string())?;
                stream.shutdown().await.map_err(|e| e.to_string())?;
                let got = read_pattern(&mut stream).await?;
                record(format!("info: close-first: got {got} bytes"));
                Ok(())
            }
            .await
        }
        (Some("expect-reset"), None) => {
            let mut sink = Vec::new();
            match stream.read_to_end(&mut sink).await {
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
                other => Err(format!("expect-reset: got {other:?}")),
            }
        }
        (Some("goaway"), None) => {
            async {
                session.go_away();
                stream.write_all(b"ok\n").await.map_err(|e| e.to_string())?;
                stream.shutdown().await.map_err(|e| e.to_string())
            }
            .await
        }
        (Some("report"), None) => {
            async {
                let lines = tally.lock().unwrap().clone();
                for line in lines {
                    stream
                        .write_all(format!("{line}\n").as_bytes())
                        .await
                        .map_err(|e| e.to_string())?;
                }
                stream
                    .write_all(b"end\n")
                    .await
                    .map_err(|e| e.to_string())?;
                stream.shutdown().await.map_err(|e| e.to_string())
            }
            .await
        }
        _ => Err(format!("unknown command {command}")),
    };
    if let Err(err) = result {
        record(format!("error: {command}: {err}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_server_drives_our_client() {
    let Some(binary) = mux_peer() else { return };
    let mut peer = spawn_peer(&binary, &["-mode", "server"]);
    let mut lines = BufReader::new(peer.stdout.take().unwrap()).lines();
    let first = lines
        .next_line()
        .await
        .unwrap()
        .expect("mux-peer printed nothing");
    let addr = first
        .strip_prefix("listening ")
        .expect("listening line")
        .to_owned();

    let tcp = TcpStream::connect(&addr).await.unwrap();
    let url = format!("ws://{addr}/piko/v1/upstream/test");
    let (ws, _) = client_handshake(tcp, &url.parse().unwrap(), &Default::default())
        .await
        .unwrap();
    let session = Session::client_transport(ws, config());

    // The last scenario has the Go server send GoAway(0): we must hear of it at once and stop
    // opening streams, while streams in flight complete.
    let go_away_seen = tokio::spawn({
        let session = session.clone();
        async move {
            session.remote_go_away().await.map_err(|e| e.to_string())?;
            match session.open().await {
                Err(Error::RemoteGoAway) => Ok(()),
                other => Err(format!("open after go away: {other:?}")),
            }
        }
    });
    let tally: Tally = Arc::default();
    let responder = tokio::spawn({
        let (session, tally) = (session.clone(), tally.clone());
        async move {
            let mut handlers = Vec::new();
            while let Ok(stream) = session.accept().await {
                handlers.push(tokio::spawn(respond(
                    stream,
                    session.clone(),
                    tally.clone(),
                )));
            }
            for handler in handlers {
                handler.await.unwrap();
            }
        }
    });

    let mut output = Vec::new();
    let run = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            println!("go: {line}");
            output.push(line);
        }
        peer.wait().await.unwrap()
    };
    let status = tokio::time::timeout(SCENARIO_TIMEOUT * 4, run)
        .await
        .expect("Go driver hung");
    let passed = |name: &str| {
        output
            .iter()
            .any(|l| l == &format!("PASS {name}") || l.starts_with(&format!("SKIP {name}")))
    };
    for scenario in [
        "echo-256",
        "bulk-64m",
        "source-64m",
        "half-close",
        "stall",
        "reset",
        "keepalive",
        "goaway-from-peer",
        "goaway-from-self",
    ] {
        assert!(
            passed(scenario),
            "scenario {scenario} did not pass: {output:?}"
        );
    }
    assert!(
        output
            .iter()
            .any(|l| l.contains("close-first: got 5000 bytes")),
        "{output:?}"
    );
    assert!(status.success(), "mux-peer exited with {status}");
    go_away_seen.await.unwrap().unwrap();
    assert!(matches!(
        session.closed().await,
        piko_mux::SessionEnd::PeerClosed
    ));
    responder.await.unwrap();
    let errors: Vec<_> = tally
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("error"))
        .cloned()
        .collect();
    assert!(errors.is_empty(), "responder errors: {errors:?}");
}

// ---- our driver (Go responds) -----------------------------------------------------------------

async fn open_command(session: &Session, command: &str) -> Stream {
    let mut stream = session.open().await.expect("open");
    stream
        .write_all(format!("{command}\n").as_bytes())
        .await
        .unwrap();
    stream
}

/// Writes `len` pattern bytes (and FIN) while reading the echo concurrently; the echo must match.
async fn echo_check(stream: Stream, len: usize, hold: Option<tokio::sync::oneshot::Receiver<()>>) {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let writer = tokio::spawn(async move {
        let half = len / 2;
        wr.write_all(&pattern(0, half)).await.unwrap();
        if let Some(hold) = hold {
            hold.await.unwrap();
        }
        let mut sent = half;
        while sent < len {
            let take = (len - sent).min(1 << 20);
            wr.write_all(&pattern(sent, take)).await.unwrap();
            sent += take;
        }
        wr.shutdown().await.unwrap();
        wr
    });
    assert_eq!(read_pattern(&mut rd).await.unwrap(), len);
    drop(writer.await.unwrap());
}

async fn read_all(stream: &mut Stream) -> Vec<u8> {
    let mut got = Vec::new();
    stream.read_to_end(&mut got).await.unwrap();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_server_drives_go_client() {
    let Some(binary) = mux_peer() else { return };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let url = format!("ws://{addr}/piko/v1/upstream/test");
    let mut peer = spawn_peer(&binary, &["-mode", "client", "-url", &url]);
    let (tcp, _) = listener.accept().await.unwrap();
    // tungstenite's handshake only; the Go client sends nothing before our 101, so nothing is
    // left in tungstenite's buffer.
    let tcp = tokio_tungstenite::accept_async(tcp)
        .await
        .unwrap()
        .into_inner();
    let session = Session::server_transport(WsByteStream::server(tcp, &[]), config());

    let steps = async {
        // echo on 256 concurrent streams
        let mut tasks = Vec::new();
        for _ in 0..256 {
            let stream = open_command(&session, "echo").await;
            tasks.push(tokio::spawn(echo_check(stream, 64 * 1024, None)));
        }
        for task in tasks {
            task.await.unwrap();
        }
        // 64 MiB each way, and 64 MiB from the Go side alone
        echo_check(open_command(&session, "echo").await, 64 << 20, None).await;
        let mut source = open_command(&session, "source 67108864").await;
        source.shutdown().await.unwrap();
        assert_eq!(read_pattern(&mut source).await.unwrap(), 64 << 20);
        // half-close both ways
        let mut stream = open_command(&session, "echo").await;
        stream.write_all(&pattern(0, 1000)).await.unwrap();
        stream.shutdown().await.unwrap();
        assert_eq!(read_all(&mut stream).await, pattern(0, 1000));
        let mut stream = open_command(&session, "close-first").await;
        let mut bye = Vec::new();
        stream.read_to_end(&mut bye).await.unwrap();
        assert_eq!(bye, b"bye\n");
        stream.write_all(&pattern(0, 5000)).await.unwrap();
        stream.shutdown().await.unwrap();
        // stalled reader on the Go side
        echo_check(open_command(&session, "stall 1000").await, 4 << 20, None).await;
        // reset
        // reset, once the responder has read the command: Go drops unread data on RST, and the
        // 1 MiB write cannot finish before the responder consumed all but one window of it.
        let mut stream = open_command(&session, "expect-reset").await;
        stream.write_all(&pattern(0, 1 << 20)).await.unwrap();
        stream.reset();
        // keep-alive: idle while both sides ping every 500 ms with a 1 s timeout
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            !session.is_closed(),
            "session died while idle: {:?}",
            session.end_reason()
        );
        echo_check(open_command(&session, "echo").await, 10, None).await;
        // GoAway(0) from us with streams in flight: they complete.
        let mut in_flight = Vec::new();
        for _ in 0..4 {
            let (release, hold) = tokio::sync::oneshot::channel();
            let stream = open_command(&session, "echo").await;
            in_flight.push((
                release,
                tokio::spawn(echo_check(stream, 256 * 1024, Some(hold))),
            ));
        }
        session.go_away();
        for (release, task) in in_flight {
            release.send(()).unwrap();
            task.await.unwrap();
        }
        // GoAway(0) from the Go side with streams in flight: we hear of it at once, cannot open,
        // and the streams in flight complete.
        let mut in_flight = Vec::new();
        for _ in 0..4 {
            let (release, hold) = tokio::sync::oneshot::channel();
            let stream = open_command(&session, "echo").await;
            in_flight.push((
                release,
                tokio::spawn(echo_check(stream, 256 * 1024, Some(hold))),
            ));
        }
        let mut report = open_command(&session, "report").await;
        report.shutdown().await.unwrap();
        let report = String::from_utf8(read_all(&mut report).await).unwrap();
        let mut stream = open_command(&session, "goaway").await;
        stream.shutdown().await.unwrap();
        assert_eq!(read_all(&mut stream).await, b"ok\n");
        tokio::time::timeout(Duration::from_secs(5), session.remote_go_away())
            .await
            .expect("go away not reported")
            .unwrap();
        assert!(matches!(session.open().await, Err(Error::RemoteGoAway)));
        for (release, task) in in_flight {
            release.send(()).unwrap();
            task.await.unwrap();
        }
        report
    };
    let report = tokio::time::timeout(SCENARIO_TIMEOUT * 4, steps)
        .await
        .expect("scenarios hung");
    println!("go responder report:\n{report}");
    assert!(report.ends_with("end\n"), "{report}");
    assert!(!report.contains("error: "), "{report}");
    assert!(report.contains("close-first: got 5000 bytes"), "{report}");
    session.close();
    let status = tokio::time::timeout(SCENARIO_TIMEOUT, peer.wait())
        .await
        .expect("Go client hung")
        .unwrap();
    assert!(status.success(), "mux-peer exited with {status}");
}
