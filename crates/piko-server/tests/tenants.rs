//! Tenants on the upstream port (spec §7.1, §14.10 item 5): each verifies its upstreams' tokens
//! with its own keys, and its endpoint names are its own: two tenants serving `api` serve two
//! endpoints, and neither an agent without a tenant nor another tenant can take the other's
//! traffic.

mod common;

use std::sync::Arc;

use common::{Node, hmac_verifier, hs256_token, serve_fixed_response, start_node_from};
use piko_server::{Config, auth::Tenants};
use serde_json::json;

const ACME: &str = "acme-secret";
const GLOBEX: &str = "globex-secret";

async fn node_with_tenants() -> Node {
    let tenants = Arc::new(
        Tenants::new(vec![
            ("acme".into(), hmac_verifier(ACME)),
            ("globex".into(), hmac_verifier(GLOBEX)),
        ])
        .unwrap(),
    );
    let mut config = Config::default();
    config.upstream.tenants = tenants.clone();
    config.proxy.tenants = tenants;
    start_node_from(config).await
}

/// An upstream of `tenant` (none: no tenant header) for `endpoint`, answering `answer`.
async fn serve(
    node: &Node,
    tenant: Option<&str>,
    secret: &str,
    endpoint: &str,
    answer: &'static [u8],
) -> Result<(), piko::Error> {
    let mut upstream = piko::Upstream::new(format!("http://{}", node.upstream))
        .token(hs256_token(secret, &json!({})));
    if let Some(tenant) = tenant {
        upstream = upstream.tenant(tenant);
    }
    let listener = upstream.listen(endpoint).await?;
    tokio::spawn(serve_fixed_response(listener, answer));
    Ok(())
}

/// A GET to endpoint `api` with extra header lines: (status, body).
async fn get(node: &Node, headers: &str) -> (u16, String) {
    let request =
        format!("GET / HTTP/1.1\r\nhost: api.example.com\r\nconnection: close\r\n{headers}\r\n");
    let (head, body) = common::exchange(node.proxy, &request).await;
    (head[9..12].parse().unwrap(), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_verify_their_own_tokens_and_own_their_endpoint_names() {
    let node = node_with_tenants().await;
    const ACME_ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nacme";
    const GLOBEX_ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nglobex";

    // Piko's cases: no tenant header while tenants exist; another tenant's key; an unknown
    // tenant.
    let refused = serve(&node, None, ACME, "api", ACME_ANSWER).await;
    assert!(
        refused.unwrap_err().to_string().contains("unknown tenant"),
        "no tenant header"
    );
    let refused = serve(&node, Some("acme"), GLOBEX, "api", ACME_ANSWER).await;
    assert!(refused.unwrap_err().to_string().contains("invalid token"));
    let refused = serve(&node, Some("initech"), ACME, "api", ACME_ANSWER).await;
    assert!(refused.unwrap_err().to_string().contains("unknown tenant"));
    // A name that could pass for another tenant's endpoint.
    let refused = serve(&node, Some("globex"), GLOBEX, "acme/api", GLOBEX_ANSWER).await;
    assert!(
        refused
            .unwrap_err()
            .to_string()
            .contains("invalid endpoint id")
    );

    serve(&node, Some("acme"), ACME, "api", ACME_ANSWER)
        .await
        .unwrap();
    serve(&node, Some("globex"), GLOBEX, "api", GLOBEX_ANSWER)
        .await
        .unwrap();
    common::wait_upstreams(&node, "acme/api", 1).await;
    common::wait_upstreams(&node, "globex/api", 1).await;

    // Every request reaches its tenant's upstream, never the other's.
    for _ in 0..4 {
        assert_eq!(
            get(&node, "x-piko-tenant-id: acme\r\n").await,
            (200, "acme".into())
        );
        assert_eq!(
            get(&node, "x-piko-tenant-id: globex\r\n").await,
            (200, "globex".into())
        );
    }
    assert_eq!(
        get(&node, "x-piko-endpoint: globex/api\r\n").await,
        (200, "globex".into())
    );
    // Endpoint `api` of no tenant has no upstream.
    assert_eq!(get(&node, "").await.0, 502);
    assert_eq!(
        get(&node, "x-piko-tenant-id: initech\r\n").await,
        (401, r#"{"error":"unknown tenant"}"#.into())
    );
}
