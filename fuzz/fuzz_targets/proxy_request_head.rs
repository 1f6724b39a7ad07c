//! Arbitrary bytes as an HTTP/1.1 request to the proxy port.
//!
//! Input: one options byte (bit 0: the port requires tokens; bit 1: one request in flight per
//! endpoint), then what the client sends.
//!
//! 1. The head is parsed with `httparse` into an `http::Request`, and run through the routing
//!    rules (the TCP route, the tenant header and its routed name), the hop-by-hop removal the
//!    proxy and the agent share, and the agent's choice of URL on its local service.
//! 2. The bytes go to the proxy port's real handler over an in-memory HTTP/1.1 connection; an
//!    in-memory upstream serves `e` (and tenant `t`'s `e`), and its agent checks each request it
//!    is relayed: marked as relayed, no hop-by-hop headers, no Piko token, no node signature,
//!    `Connection: close` (or `Upgrade`), an origin-form target.
//!
//! Checks: no panic; after hop-by-hop removal none of those headers is left, nor any header the
//! `Connection` header named; the agent's URL is always on its own service, whatever the path;
//! the proxy answers every request within 10 s with an HTTP/1.x response.

#![no_main]

use std::sync::OnceLock;

use http::{HeaderMap, HeaderName, HeaderValue, Request, header};
use libfuzzer_sys::fuzz_target;
use piko_agent::Target;
use piko_server::fuzzing::{ProxyHarness, ProxySetup, head_routing};

fn harness() -> &'static ProxyHarness {
    static HARNESS: OnceLock<ProxyHarness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        // Every level enabled, nothing printed: the access log and warnings render their
        // records, as in production.
        let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry());
        ProxyHarness::new()
    })
}

fn agent_target() -> &'static Target {
    static TARGET: OnceLock<Target> = OnceLock::new();
    TARGET.get_or_init(|| Target::parse("http://localhost:3000/base?fixed=1").expect("a URL"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&options, request)) = data.split_first() else {
        return;
    };
    if let Some(head) = parse_head(request) {
        check_head(&head);
    }
    let setup = ProxySetup {
        auth: options & 0x1 != 0,
        endpoint_limit: options & 0x2 != 0,
    };
    let response = harness().exchange(setup, request);
    assert!(
        response.is_empty()
            || response.starts_with(b"HTTP/1.1 ")
            || response.starts_with(b"HTTP/1.0 "),
        "not an HTTP/1.x response: {:?}",
        String::from_utf8_lossy(&response[..response.len().min(64)])
    );
});

/// The request head, when `bytes` start with a complete one that `http` can represent.
fn parse_head(bytes: &[u8]) -> Option<Request<()>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    if !parsed.parse(bytes).ok()?.is_complete() {
        return None;
    }
    let mut builder = Request::builder()
        .method(parsed.method?)
        .uri(parsed.path?)
        .version(match parsed.version? {
            0 => http::Version::HTTP_10,
            _ => http::Version::HTTP_11,
        });
    for field in parsed.headers.iter() {
        builder = builder.header(
            HeaderName::from_bytes(field.name.as_bytes()).ok()?,
            HeaderValue::from_bytes(field.value).ok()?,
        );
    }
    builder.body(()).ok()
}

fn check_head(request: &Request<()>) {
    let _ = head_routing(request);

    let mut headers = request.headers().clone();
    let named: Vec<HeaderName> = connection_names(request.headers());
    let _ = piko_http::hop_by_hop::upgrade_protocol(&headers);
    piko_http::hop_by_hop::remove(&mut headers);
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ]
    .iter()
    .chain(&named)
    {
        assert!(
            !headers.contains_key(name),
            "{name} survived hop-by-hop removal"
        );
    }
    assert!(
        headers
            .get_all(header::TE)
            .iter()
            .all(|te| te.as_bytes() == b"trailers"),
        "TE other than trailers survived"
    );

    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let url = agent_target().url_for(path);
    assert_eq!(
        url.authority().map(|a| a.as_str()),
        Some("localhost:3000"),
        "the path {path:?} moved the agent to {url}"
    );
    assert!(
        url.path().starts_with("/base"),
        "the path {path:?} left the target's prefix: {url}"
    );
}

/// The header names a `Connection` header lists.
fn connection_names(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}
