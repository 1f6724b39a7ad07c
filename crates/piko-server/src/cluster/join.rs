//! Finding the cluster: `cluster.join` entries (addresses or DNS names, such as a Kubernetes
//! headless service) resolved again and again by our own loop, every address gossiped to. A
//! node that started alone (the first pod of a StatefulSet cannot resolve the service until it
//! is ready), or a cluster that started split, joins up at the next resolution.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

/// Resolves a host name to its addresses; replaced in tests.
#[async_trait::async_trait]
pub trait Resolver: Send + Sync + fmt::Debug + 'static {
    /// Every address of `host` with `port`.
    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>>;
}

/// The system's resolver (A and AAAA records).
#[derive(Debug, Default)]
pub struct SystemResolver;

#[async_trait::async_trait]
impl Resolver for SystemResolver {
    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }
}

/// A join entry: an address, or a host to resolve, with the gossip port when it has none.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Seed {
    Addr(SocketAddr),
    Host(String, u16),
}

impl Seed {
    /// `host`, `host:port`, `ip`, `ip:port` or `[ipv6]:port`; `default_port` where none is
    /// given (IPv6 literals without brackets included, unlike Piko).
    pub(crate) fn parse(entry: &str, default_port: u16) -> Self {
        let entry = entry.trim();
        if let Ok(addr) = entry.parse::<SocketAddr>() {
            return Self::Addr(addr);
        }
        if let Ok(ip) = entry.trim_matches(['[', ']']).parse::<IpAddr>() {
            return Self::Addr(SocketAddr::new(ip, default_port));
        }
        match entry.rsplit_once(':') {
            Some((host, port)) => match port.parse() {
                Ok(port) => Self::Host(host.to_owned(), port),
                Err(_) => Self::Host(entry.to_owned(), default_port),
            },
            None => Self::Host(entry.to_owned(), default_port),
        }
    }

    /// The seed's addresses. A name that resolves to nothing is skipped (the first pod of a
    /// StatefulSet finds its headless service empty); a resolution error fails the pass.
    async fn addrs(&self, resolver: &dyn Resolver) -> std::io::Result<Vec<SocketAddr>> {
        match self {
            Self::Addr(addr) => Ok(vec![*addr]),
            Self::Host(host, port) => {
                let addrs = resolver.resolve(host, *port).await.inspect_err(|err| {
                    tracing::warn!(subsystem = "gossip", host, error = %err, "failed to join node");
                })?;
                if addrs.is_empty() {
                    tracing::warn!(
                        subsystem = "gossip",
                        host,
                        "join: domain did not resolve any addresses"
                    );
                }
                Ok(addrs)
            }
        }
    }
}

/// Every `interval`, resolves the seeds and asks chitchat to gossip with each address that is
/// not this node's. After each pass, `alone` says whether the seeds named no other node: then
/// this node starts the cluster rather than waits for one. A name that does not resolve counts
/// as naming none: the system resolver reports a name without addresses (a headless service
/// before its first pod is ready) as an error, and a node that waited for it would never
/// become ready. (Should it have been a passing failure, the next pass joins the cluster.)
pub(crate) async fn join_loop(
    seeds: Vec<Seed>,
    resolver: std::sync::Arc<dyn Resolver>,
    interval: Duration,
    own_addr: SocketAddr,
    gossip: impl Fn(SocketAddr),
    alone: tokio::sync::watch::Sender<bool>,
) {
    loop {
        let mut others = 0usize;
        for seed in &seeds {
            // Failures are logged by `addrs`.
            let addrs = seed.addrs(resolver.as_ref()).await.unwrap_or_default();
            for addr in addrs.into_iter().filter(|addr| *addr != own_addr) {
                others += 1;
                gossip(addr);
            }
        }
        alone.send_if_modified(|was| {
            let now = others == 0;
            std::mem::replace(was, now) != now
        });
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_get_the_gossip_port_when_they_have_none() {
        let addr = |s: &str| Seed::Addr(s.parse().unwrap());
        assert_eq!(Seed::parse("10.0.0.1", 8003), addr("10.0.0.1:8003"));
        assert_eq!(Seed::parse("10.0.0.1:9000", 8003), addr("10.0.0.1:9000"));
        assert_eq!(Seed::parse("::1", 8003), addr("[::1]:8003"));
        assert_eq!(Seed::parse("[::1]:9000", 8003), addr("[::1]:9000"));
        assert_eq!(
            Seed::parse("piko.default.svc", 8003),
            Seed::Host("piko.default.svc".into(), 8003)
        );
        assert_eq!(
            Seed::parse("piko-0.piko:7000", 8003),
            Seed::Host("piko-0.piko".into(), 7000)
        );
    }
}
