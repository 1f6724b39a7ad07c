//! Nodes in one process, gossiping over loopback UDP: they find each other from `cluster.join`,
//! learn where each other's upstreams are, see a crashed node become unreachable and then
//! forget it for good, and see a node that shuts down leave.

mod common;

use std::time::Duration;

use common::{Node, start_node_from, wait_upstreams};
use piko_server::{
    Config,
    cluster::{ClusterConfig, NodeStatus},
};

fn config(join: Vec<String>) -> Config {
    Config {
        cluster: ClusterConfig {
            join,
            join_interval: Duration::from_millis(200),
            gossip_interval: Duration::from_millis(20),
            dead_node_grace_period: Duration::from_secs(2),
            ..ClusterConfig::default()
        },
        ..Config::default()
    }
}

/// Waits (bounded) until `node`'s view of the cluster satisfies `check`.
async fn until(node: &Node, what: &str, check: impl Fn(&[piko_server::cluster::Node]) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let nodes = node.membership.nodes().await;
        if check(&nodes) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: never; {nodes:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn status_of(nodes: &[piko_server::cluster::Node], id: &str) -> Option<NodeStatus> {
    nodes.iter().find(|n| n.id == id).map(|n| n.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_share_endpoints_and_forget_the_dead() {
    let a = start_node_from(config(Vec::new())).await;
    let b = start_node_from(config(vec![a.gossip.clone()])).await;
    // C knows only B, and learns of A through it.
    let c = start_node_from(config(vec![b.gossip.clone()])).await;
    for node in [&a, &b, &c] {
        until(node, "three active nodes", |nodes| {
            nodes.len() == 3 && nodes.iter().all(|n| n.status == NodeStatus::Active)
        })
        .await;
    }

    let _upstream = piko::Upstream::new(format!("http://{}", c.upstream))
        .listen("e")
        .await
        .unwrap();
    wait_upstreams(&c, "e", 1).await;
    until(&a, "C's endpoint", |nodes| {
        nodes
            .iter()
            .any(|n| n.id == c.id && n.endpoints.get("e") == Some(&1))
    })
    .await;
    let seen = a.membership.nodes().await;
    let c_seen = seen.iter().find(|n| n.id == c.id).unwrap();
    assert_eq!(c_seen.proxy_addr, c.proxy.to_string());
    assert_eq!(c_seen.admin_addr, c.admin.to_string());

    // C crashes: silent, no goodbye.
    c.membership.shutdown();
    c.task.abort();
    until(&a, "C unreachable", |nodes| {
        status_of(nodes, &c.id) == Some(NodeStatus::Unreachable)
    })
    .await;
    until(&a, "C forgotten", |nodes| status_of(nodes, &c.id).is_none()).await;
    // ...for good: B's gossip does not bring it back as a ghost.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for node in [&a, &b] {
        assert_eq!(status_of(&node.membership.nodes().await, &c.id), None);
    }

    // B shuts down gracefully: A sees it leave.
    let Node { stop, task, .. } = b;
    stop.unwrap().send(()).unwrap();
    until(&a, "B left", |nodes| {
        status_of(nodes, &b.id) == Some(NodeStatus::Left)
    })
    .await;
    task.await.unwrap();
}
