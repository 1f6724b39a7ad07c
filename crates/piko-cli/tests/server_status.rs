//! `piko server status ...` against a real `piko server` process (spec §1.4).

mod common;

use std::time::Duration;

use common::{PATIENCE, start_server};
use tokio::process::Command;

async fn status(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_piko"))
        .args(["server", "status"])
        .args(args)
        .output()
        .await
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_commands_print_yaml_json_and_tables() {
    let (mut server, admin, upstream, proxy) = start_server(&["--cluster.node-id", "node-a"]).await;
    let url = format!("http://{admin}");
    let url = ["--server.url", url.as_str()];

    let (code, out) = status(&[&["upstream", "endpoints"][..], &url].concat()).await;
    assert_eq!((code, out.as_str()), (Some(0), "{}\n"));

    let _listener = piko::Upstream::new(format!("http://{upstream}"))
        .listen("my-endpoint")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (_, out) = status(&[&["upstream", "endpoints"][..], &url].concat()).await;
        if out == "my-endpoint: 1\n" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never registered: {out}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (code, out) = status(&[&["cluster", "nodes"][..], &url].concat()).await;
    assert_eq!(code, Some(0));
    assert_eq!(
        out,
        format!(
            "nodes:\n- id: node-a\n  status: active\n  proxy_addr: {proxy}\n  admin_addr: {admin}\n  endpoints: 1\n  upstreams: 1\n"
        )
    );
    let (_, out) = status(&[&["cluster", "nodes", "--status", "left"][..], &url].concat()).await;
    assert_eq!(out, "nodes: []\n");

    let (code, out) =
        status(&[&["cluster", "node", "local", "--output", "json"][..], &url].concat()).await;
    assert_eq!(code, Some(0));
    let node: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(node["id"], "node-a");
    assert_eq!(node["endpoints"]["my-endpoint"], 1);

    let (code, out) = status(&[&["gossip", "node", "node-a"][..], &url].concat()).await;
    assert_eq!(code, Some(0));
    assert!(out.contains("entries:\n- key: proxy_addr\n"), "{out}");

    let (code, out) = status(&[&["gossip", "nodes", "--output", "table"][..], &url].concat()).await;
    assert_eq!(code, Some(0));
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ID      ADDR"), "{out}");
    assert!(lines[1].starts_with("node-a  "), "{out}");

    // `--forward` to this node answers; to a node the cluster does not know, 404.
    let forward = [&["upstream", "endpoints", "--forward", "node-a"][..], &url].concat();
    assert_eq!(status(&forward).await, (Some(0), "my-endpoint: 1\n".into()));
    let forward = [&["upstream", "endpoints", "--forward", "node-b"][..], &url].concat();
    assert_eq!(
        status(&forward).await,
        (
            Some(1),
            "failed to get endpoints: request: bad status: 404\n".into()
        )
    );
    let (code, out) = status(&[&["cluster", "node", "ghost"][..], &url].concat()).await;
    assert_eq!(
        (code, out.as_str()),
        (Some(1), "failed to get node: request: bad status: 404\n")
    );
    assert_eq!(server.terminate().await, 0);

    // The node is gone: a clear error, not a hang.
    let (code, out) = status(&[&["upstream", "endpoints"][..], &url].concat()).await;
    assert_eq!(code, Some(1));
    assert!(
        out.starts_with("failed to get endpoints: request: "),
        "{out}"
    );
    let (code, out) = status(&["upstream", "endpoints", "--server.url", ""]).await;
    assert_eq!(
        (code, out.as_str()),
        (Some(1), "config: server: missing url\n")
    );
}
