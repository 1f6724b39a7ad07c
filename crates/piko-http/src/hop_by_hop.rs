//! Hop-by-hop headers (RFC 9110 §7.6.1), which a proxy must not forward, upgrade detection, and
//! the `X-Forwarded-For` hop a proxy adds. Shared by the server's proxy port and the agent.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, header};

/// Adds `hop` (the address a request came from) to its `X-Forwarded-For`, as Go's reverse proxy
/// does: `prior, hop`.
pub fn append_forwarded_for(headers: &mut HeaderMap, hop: IpAddr) {
    let hop = hop.to_string();
    let forwarded = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.is_empty() => format!("{prior}, {hop}"),
        _ => hop,
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded) {
        headers.insert("x-forwarded-for", value);
    }
}

/// The protocol a request asks to upgrade to (`Connection: upgrade` plus `Upgrade: <protocol>`).
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<String> {
    let wants = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
        });
    let protocol = headers.get(header::UPGRADE)?.to_str().ok()?;
    wants.then(|| protocol.to_owned())
}

/// Removes the headers that belong to one connection, not to the message: the fixed list plus
/// every header `Connection` names. `TE: trailers` survives, as Go's reverse proxy keeps it, and
/// so does `Trailer` (RFC 9110 does not make it hop-by-hop, and hyper only sends the trailers
/// it declares).
pub fn remove(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    let keep_te_trailers = headers.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    for name in [
        header::CONNECTION,
        HeaderName::from_static("proxy-connection"),
        HeaderName::from_static("keep-alive"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    if keep_te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_fixed_and_named_headers() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-custom"),
            ("x-custom", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers, gzip"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("authorization", "kept"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        remove(&mut headers);
        let mut left: Vec<_> = headers.keys().map(|k| k.as_str().to_owned()).collect();
        left.sort();
        assert_eq!(left, ["authorization", "te"]);
        assert_eq!(headers["te"], "trailers");
    }
}
