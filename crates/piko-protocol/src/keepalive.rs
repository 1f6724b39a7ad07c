//! TCP keep-alive on every connection piko accepts or dials, as Go enables it by default: a peer
//! that vanished without a FIN or RST (a NAT mapping dropped, a laptop asleep) is noticed even on
//! a quiet tunnel, and what the connection held is released.

use std::time::Duration;

use tokio::net::TcpStream;

/// Go's default: the first probe after 15 s of silence, then every 15 s.
const PERIOD: Duration = Duration::from_secs(15);

/// Turns keep-alive probes on; a socket that refuses keeps working without them.
pub fn enable_keepalive(tcp: &TcpStream) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(PERIOD)
        .with_interval(PERIOD);
    let _ = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive);
}
