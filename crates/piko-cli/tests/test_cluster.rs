//! `piko test cluster`: nodes and load balancers in one process, the node count reconciled on
//! SIGHUP, everything stopped on SIGTERM.

mod common;

use common::{Process, TempFile};
use tokio::process::Command;

/// A request for endpoint `e` through the proxy balancer, retried (bounded) until it succeeds.
async fn served(proxy: &str) {
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    loop {
        let output = Command::new("curl")
            .args(["-s", "--max-time", "5", "-H", "x-piko-endpoint: e"])
            .arg(format!("http://{proxy}/"))
            .output()
            .await
            .unwrap();
        if output.stdout == b"ok /" {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never served: {:?}",
            String::from_utf8_lossy(&output.stdout)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_follow_the_config_on_sighup() {
    let config = TempFile::new("test-cluster.yaml", "nodes: 2\n");
    let mut cluster = Process::start(&[
        "test",
        "cluster",
        "--config.path",
        config.path(),
        "--proxy-addr",
        "127.0.0.1:0",
        "--upstream-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
    ]);
    let mut balancers = Vec::new();
    for _ in 0..3 {
        let line = cluster.wait_log("starting load balancer").await;
        balancers.push(line["addr"].as_str().unwrap().to_owned());
    }
    let (proxy, upstream) = (balancers[0].clone(), balancers[1].clone());
    for _ in 0..2 {
        cluster.wait_log("node started").await;
    }
    let service = common::ok_service().await.to_string();
    let _agent = common::agent_http("e", &service, &upstream, &[]);
    served(&proxy).await;

    std::fs::write(config.path(), "nodes: 3\n").unwrap();
    cluster.signal("HUP").await;
    cluster.wait_log("node started").await;
    served(&proxy).await;

    // Down to one: the two oldest stop gracefully, and the agent moves to the survivor.
    std::fs::write(config.path(), "nodes: 1\n").unwrap();
    cluster.signal("HUP").await;
    for _ in 0..2 {
        cluster.wait_log("node stopped").await;
    }
    served(&proxy).await;

    // A bad file is refused and changes nothing.
    std::fs::write(config.path(), "nodes: 0\n").unwrap();
    cluster.signal("HUP").await;
    cluster.wait_log("failed to reload config").await;
    served(&proxy).await;

    assert_eq!(cluster.terminate().await, 0);
}
