//! The addresses a node tells others to reach it at (spec §2.1): the configured one, else the
//! bound one, with an unspecified host (`:8000`, `0.0.0.0`, `::`) replaced by the address other
//! machines can reach this one at.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

/// The address to advertise for a port bound at `bound`, `configured` winning when set.
pub(crate) fn advertise_addr(configured: Option<&str>, bound: SocketAddr) -> String {
    if let Some(addr) = configured.filter(|addr| !addr.is_empty()) {
        return addr.to_owned();
    }
    if !bound.ip().is_unspecified() {
        return bound.to_string();
    }
    let ip = routable_ip().unwrap_or_else(|| {
        // Piko panics here; a node that is alone works fine on loopback, and a cluster member
        // must set its advertise addresses anyway when it has no routable address.
        tracing::warn!(
            subsystem = "server",
            "no routable address found; advertising loopback (set the advertise addresses)"
        );
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    });
    SocketAddr::new(ip, bound.port()).to_string()
}

/// The source address of this machine's default route: the one peers on its network can reach.
/// (Piko asks for the first private address with a default route; on a host with one network
/// interface they are the same.)
fn routable_ip() -> Option<IpAddr> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    // Connecting a UDP socket only picks a route and a source address; nothing is sent. The
    // destination is a documentation address (TEST-NET-3), so no real host is implied.
    socket.connect((Ipv4Addr::new(203, 0, 113, 1), 9)).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_address_wins_verbatim() {
        let bound: SocketAddr = "0.0.0.0:8000".parse().unwrap();
        assert_eq!(
            advertise_addr(Some("piko-0.piko:8000"), bound),
            "piko-0.piko:8000"
        );
    }

    #[test]
    fn specific_bound_address_is_advertised_as_is() {
        let bound: SocketAddr = "127.0.0.1:41234".parse().unwrap();
        assert_eq!(advertise_addr(None, bound), "127.0.0.1:41234");
        assert_eq!(advertise_addr(Some(""), bound), "127.0.0.1:41234");
    }

    #[test]
    fn unspecified_host_becomes_a_reachable_address_with_the_bound_port() {
        for bound in ["0.0.0.0:41235", "[::]:41235"] {
            let advertised: SocketAddr = advertise_addr(None, bound.parse().unwrap())
                .parse()
                .unwrap();
            assert!(!advertised.ip().is_unspecified(), "{advertised}");
            assert_eq!(advertised.port(), 41235);
        }
    }
}
