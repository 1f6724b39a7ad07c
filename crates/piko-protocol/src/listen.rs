//! Listening sockets sized for bursts of connections.
//!
//! `tokio::net::TcpListener::bind` asks for an accept queue of 128, the standard library's
//! default. A proxy port taking a burst of new connections overflows that: the kernel then answers
//! with SYN cookies and some clients get their connection reset. Go asks for the system maximum
//! (`net.core.somaxconn`, 4096 on current kernels), and so do we: the kernel caps the request.

use std::io;

use tokio::net::{TcpListener, TcpSocket};

/// Requested accept queue length; the kernel caps it at `net.core.somaxconn`.
const BACKLOG: u32 = 65_535;

/// Binds `addr` (`host:port`; the first address it resolves to that can be bound, IPv4 first)
/// with the largest accept queue the system allows.
///
/// # Errors
/// The address does not resolve, or no resolved address can be bound.
pub async fn bind_listener(addr: &str) -> io::Result<TcpListener> {
    let mut last_error = None;
    let mut resolved: Vec<_> = tokio::net::lookup_host(addr).await?.collect();
    // IPv4 first, as Go listens: `localhost` resolves to `::1` first on many systems, and most
    // clients reach `localhost` on 127.0.0.1.
    resolved.sort_by_key(|addr| addr.is_ipv6());
    for resolved in resolved {
        let socket = if resolved.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(resolved).and_then(|()| socket.listen(BACKLOG)) {
            Ok(listener) => return Ok(listener),
            Err(err) => last_error = Some(err),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            "address resolved to nothing",
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_resolved_names_and_reports_bad_ones() {
        let listener = bind_listener("localhost:0").await.unwrap();
        assert!(listener.local_addr().unwrap().ip().is_loopback());
        assert!(bind_listener("no-such-host.invalid:80").await.is_err());
        let taken = listener.local_addr().unwrap().to_string();
        let err = bind_listener(&taken).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }
}
