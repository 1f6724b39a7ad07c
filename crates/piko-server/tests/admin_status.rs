//! The admin port's status routes (spec §9.2) in Piko's JSON shapes, and `?forward=`.

mod common;

use common::{get, start_node, wait_upstreams};
use serde_json::{Value, json};

async fn get_json(node: &common::Node, path: &str) -> (u16, String, Value) {
    let (head, body) = get(node.admin, path, "admin").await;
    let status: u16 = head[9..12].parse().unwrap();
    let value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("{path}: not JSON: {body}"))
    };
    (status, head.to_ascii_lowercase(), value)
}

#[tokio::test]
async fn status_routes_describe_the_node_and_its_upstreams() {
    let node = start_node().await;
    let (status, head, endpoints) = get_json(&node, "/status/upstream/endpoints").await;
    assert_eq!((status, endpoints), (200, json!({})));
    assert!(
        head.contains("content-type: application/json; charset=utf-8"),
        "{head}"
    );
    let (_, _, record) = get_json(&node, "/status/cluster/nodes/local").await;
    assert_eq!(
        record["endpoints"],
        Value::Null,
        "Piko writes null when empty"
    );

    let upstream = piko::Upstream::new(format!("http://{}", node.upstream));
    let _a1 = upstream.listen("alpha").await.unwrap();
    let _a2 = upstream.listen("alpha").await.unwrap();
    let _b = upstream.listen("beta").await.unwrap();
    wait_upstreams(&node, "alpha", 2).await;
    wait_upstreams(&node, "beta", 1).await;

    let (_, _, endpoints) = get_json(&node, "/status/upstream/endpoints").await;
    assert_eq!(endpoints, json!({"alpha": 2, "beta": 1}));

    let proxy_addr = node.proxy.to_string();
    let admin_addr = node.admin.to_string();
    let (status, _, nodes) = get_json(&node, "/status/cluster/nodes").await;
    assert_eq!(status, 200);
    assert_eq!(
        nodes,
        json!([{"id": node.id, "status": "active", "proxy_addr": proxy_addr,
                "admin_addr": admin_addr, "endpoints": 2, "upstreams": 3}])
    );
    let expected_record = json!({"id": node.id, "status": "active", "proxy_addr": proxy_addr,
        "admin_addr": admin_addr, "endpoints": {"alpha": 2, "beta": 1}});
    for path in [
        "/status/cluster/nodes/local".to_owned(),
        format!("/status/cluster/nodes/{}", node.id),
    ] {
        let (status, _, record) = get_json(&node, &path).await;
        assert_eq!((status, record), (200, expected_record.clone()), "{path}");
    }
    let (status, _, body) = get_json(&node, "/status/cluster/nodes/nobody").await;
    assert_eq!((status, body), (404, Value::Null));

    let (status, _, gossip) = get_json(&node, "/status/gossip/nodes").await;
    assert_eq!(status, 200);
    let gossip = &gossip.as_array().unwrap()[..];
    assert_eq!(gossip.len(), 1);
    assert_eq!(gossip[0]["id"], node.id.as_str());
    assert_eq!(gossip[0]["expiry"], "0001-01-01T00:00:00Z");
    assert_eq!(gossip[0]["left"], false);
    // The node's own gossip state: what it publishes, once its publisher caught up.
    let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    let expected = [
        pair("admin_addr", &admin_addr),
        pair("endpoint:/alpha", "2"),
        pair("endpoint:/beta", "1"),
        pair("proxy_addr", &proxy_addr),
    ];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let state = loop {
        let (status, _, state) =
            get_json(&node, &format!("/status/gossip/nodes/{}", node.id)).await;
        assert_eq!(status, 200);
        let mut entries: Vec<(String, String)> = state["Entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["deleted"] == false)
            .map(|e| {
                (
                    e["key"].as_str().unwrap().to_owned(),
                    e["value"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        entries.sort();
        if entries == expected {
            break state;
        }
        assert!(tokio::time::Instant::now() < deadline, "{state}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let versions: Vec<u64> = state["Entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert!(versions.is_sorted(), "entries by version: {state}");
    assert_eq!(state["version"], *versions.last().unwrap(), "{state}");
    let (status, _, _) = get_json(&node, "/status/gossip/nodes/nobody").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn forward_to_this_node_answers_and_to_an_unknown_node_is_404() {
    let node = start_node().await;
    let (status, _, body) = get_json(
        &node,
        &format!("/status/upstream/endpoints?forward={}", node.id),
    )
    .await;
    assert_eq!((status, body), (200, json!({})));
    let (status, _, _) = get_json(&node, "/health?forward=").await;
    assert_eq!(status, 200, "an empty forward is no forward");
    for path in [
        "/status/upstream/endpoints?forward=ghost",
        "/health?x=1&forward=ghost",
    ] {
        let (status, _, body) = get_json(&node, path).await;
        assert_eq!((status, body), (404, Value::Null), "{path}");
    }
}
