//! `piko bench http` end to end, against a real `piko server` process.

mod common;

use std::process::Output;

use common::{PATIENCE, start_server};
use tokio::process::Command;

/// Runs `piko bench http` with `args` to its end, within the test's patience.
async fn bench(args: &[&str]) -> Output {
    let run = Command::new(env!("CARGO_BIN_EXE_piko"))
        .args(["bench", "http"])
        .args(args)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(PATIENCE, run)
        .await
        .expect("benchmark did not finish")
        .expect("run piko bench")
}

/// The value on the line starting with `prefix`.
fn line<'a>(stdout: &'a str, prefix: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|line| line.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_sends_every_request_through_the_server() {
    let (_server, _admin, upstream, proxy) = start_server(&[]).await;
    let output = bench(&[
        "--requests",
        "200",
        "--clients",
        "4",
        "--endpoints",
        "3",
        "--upstreams",
        "3",
        "--size",
        "100",
        "--connect.proxy-url",
        &format!("http://{proxy}"),
        "--connect.upstream-url",
        &format!("http://{upstream}"),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");

    let throughput = line(&stdout, "Throughput: ");
    let throughput: f64 = throughput
        .strip_suffix(" requests/sec")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad throughput line: {throughput}"));
    assert!(throughput > 0.0, "{stdout}");
    assert_eq!(line(&stdout, "Requests: "), "200 succeeded, 0 failed");
    for quantile in ["p50", "p90", "p99", "p99.9", "max"] {
        let latency = line(&stdout, &format!("Latency {quantile}: "));
        let millis: f64 = latency
            .strip_suffix("ms")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("bad latency line: {latency}"));
        assert!(millis > 0.0, "{stdout}");
    }
}

#[tokio::test]
async fn zero_clients_is_a_config_error() {
    let output = bench(&["--clients", "0"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert_eq!(stdout, "config: missing clients\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_proxy_fails_every_request_and_still_reports() {
    let (_server, _admin, upstream, _proxy) = start_server(&[]).await;
    // A port nobody listens on: bound, then released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let output = bench(&[
        "--requests",
        "20",
        "--clients",
        "2",
        "--endpoints",
        "2",
        "--upstreams",
        "2",
        "--connect.proxy-url",
        &format!("http://{closed}"),
        "--connect.upstream-url",
        &format!("http://{upstream}"),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    line(&stdout, "Throughput: ");
    assert_eq!(line(&stdout, "Requests: "), "0 succeeded, 20 failed");
    assert_eq!(line(&stdout, "Latency: "), "no successful requests");
    let failures = stderr
        .lines()
        .filter(|l| l.contains(r#""subsystem":"bench""#) && l.contains(r#""msg":"request""#))
        .count();
    assert_eq!(failures, 20, "{stderr}");
}

#[tokio::test]
async fn a_server_that_cannot_be_reached_ends_the_run() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let output = bench(&[
        "--upstreams",
        "1",
        "--connect.timeout",
        "300ms",
        "--connect.upstream-url",
        &format!("http://{closed}"),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(!stdout.contains("Throughput"), "{stdout}");
    assert!(
        stderr.contains("http upstream: listen: endpoint-0"),
        "{stderr}"
    );
}
