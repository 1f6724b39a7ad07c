//! Gossip over UDP with every datagram sealed ([`gossip_seal`](super::gossip_seal)), the
//! transport of a cluster with a secret.
//!
//! Chitchat encodes its messages only inside its own UDP socket, so the seal is put on beside
//! it: chitchat's socket is bound to loopback and talks to one local relay socket per peer. A
//! message chitchat sends to a peer's relay is read back, sealed and sent to the peer from the
//! gossip port; a datagram from the peer whose seal checks is handed to chitchat from that
//! peer's relay, and the relay's address is mapped back to the peer's in what chitchat receives.
//! Gossip is tens of small datagrams a second: the extra loopback hop costs nothing that
//! matters.

use std::{
    collections::HashMap,
    io,
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use chitchat::{
    ChitchatEnvelope,
    transport::{RecvOutcome, SendOutcome, Socket, Transport},
};

use super::gossip_seal::{
    GossipKey, MAX_DATAGRAM, Reassembly, Refusal, ReplayGuard, open, seal, unix_ms,
};

/// How long a message chitchat sent to a relay may take to be read back (it is already there:
/// loopback delivers at once).
const READ_BACK_LIMIT: Duration = Duration::from_secs(1);

/// Relays at once; the least recently used gives way (chitchat then sees that peer at a new
/// address, which it only replies to).
const MAX_RELAYS: usize = 1024;

/// A relay unused for this long is closed when the next one opens: a node long gone.
const RELAY_IDLE: Duration = Duration::from_secs(600);

/// At most one warning per interval while datagrams are refused.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Opens sealed gossip sockets.
pub(crate) struct SealedUdpTransport {
    key: Arc<GossipKey>,
}

impl SealedUdpTransport {
    /// Seals with the key derived from the cluster's `secret`.
    pub(crate) fn new(secret: &str) -> Self {
        Self {
            key: Arc::new(GossipKey::from_secret(secret)),
        }
    }
}

#[async_trait::async_trait]
impl Transport for SealedUdpTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let public = tokio::net::UdpSocket::bind(listen_addr)
            .await
            .with_context(|| format!("failed to bind to {listen_addr}/UDP for gossip"))?;
        let chitchat =
            chitchat::transport::UdpSocket::open(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
                .await?;
        let chitchat_addr = chitchat.local_addr()?;
        Ok(Box::new(SealedSocket {
            key: self.key.clone(),
            public,
            chitchat,
            chitchat_addr,
            relays: Relays::default(),
            reassembly: Reassembly::default(),
            replays: ReplayGuard::default(),
            next_message_id: rand::random(),
            buf: vec![0; MAX_DATAGRAM + 1].into_boxed_slice(),
            refusals: RefusalLog::default(),
        }))
    }
}

struct SealedSocket {
    key: Arc<GossipKey>,
    /// The gossip port, where peers' sealed datagrams arrive and ours leave.
    public: tokio::net::UdpSocket,
    /// Chitchat's own socket, on loopback: it encodes and decodes the messages.
    chitchat: chitchat::transport::UdpSocket,
    chitchat_addr: SocketAddr,
    relays: Relays,
    reassembly: Reassembly,
    replays: ReplayGuard,
    next_message_id: u32,
    buf: Box<[u8]>,
    refusals: RefusalLog,
}

enum Arrival {
    /// A message chitchat decoded (handed over by a relay, or by a stranger on loopback).
    Decoded(RecvOutcome),
    /// A datagram on the gossip port.
    Datagram(io::Result<(usize, SocketAddr)>),
}

#[async_trait::async_trait]
impl Socket for SealedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.public
            .local_addr()
            .context("failed to get UDP socket address")
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let relay = self
            .relays
            .for_peer(to)
            .context("failed to open a gossip relay socket")?;
        // Whatever the relay holds now is stale (a read back that timed out, or a stranger's):
        // read straight from the socket (tokio may not know yet that it is readable), one byte
        // of each datagram, which drops the rest.
        let mut byte = [std::mem::MaybeUninit::uninit()];
        while socket2::SockRef::from(&relay.socket)
            .recv_from(&mut byte)
            .is_ok()
        {}
        self.chitchat.send(relay.addr, envelope).await?;
        let chitchat_addr = self.chitchat_addr;
        let buf = &mut self.buf;
        let len = tokio::time::timeout(READ_BACK_LIMIT, async {
            loop {
                let (len, from) = relay.socket.recv_from(buf).await?;
                if from == chitchat_addr {
                    return io::Result::Ok(len);
                }
            }
        })
        .await
        .context("gossip message not read back from its relay")?
        .context("failed to read a gossip message back from its relay")?;
        let message_id = self.next_message_id;
        self.next_message_id = message_id.wrapping_add(1);
        let mut num_bytes_sent = 0;
        for datagram in seal(&self.key, &self.buf[..len], message_id, unix_ms()) {
            num_bytes_sent += self
                .public
                .send_to(&datagram, to)
                .await
                .context("failed to send chitchat message to peer")?;
        }
        Ok(SendOutcome { num_bytes_sent })
    }

    /// Cancellable: chitchat drops it whenever it is time to gossip. Each wait is, and what
    /// arrived is dealt with before the next wait.
    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let arrival = tokio::select! {
                decoded = self.chitchat.recv() => Arrival::Decoded(decoded?),
                datagram = self.public.recv_from(&mut self.buf) => Arrival::Datagram(datagram),
            };
            match arrival {
                Arrival::Decoded(mut outcome) => {
                    if let Some(peer) = self.relays.peer_of(outcome.from_addr) {
                        outcome.from_addr = peer;
                        return Ok(outcome);
                    }
                }
                Arrival::Datagram(Ok((len, from))) => self.admit(len, from),
                Arrival::Datagram(Err(error)) if is_transient(&error) => {}
                Arrival::Datagram(Err(error)) => {
                    return Err(error).context("fatal UDP recv error");
                }
            }
        }
    }
}

impl SealedSocket {
    /// Hands the `len` bytes from `from` in the buffer to chitchat if their seal checks.
    fn admit(&mut self, len: usize, from: SocketAddr) {
        let opened = match open(&self.key, &self.buf[..len], unix_ms()) {
            Ok(opened) => opened,
            Err(refusal) => {
                self.refusals.note(from, refusal);
                return;
            }
        };
        let now = Instant::now();
        if !self.replays.first_time(&opened, now) {
            self.refusals.note(from, Refusal::Replayed);
            return;
        }
        let Some(message) = self.reassembly.add(from, opened, now) else {
            return;
        };
        match self.relays.for_peer(from) {
            // Sent straight from the non-blocking socket, not through tokio, whose readiness of
            // a relay just opened is not known yet: a full socket loses the datagram, as UDP
            // would, and nothing here waits (this runs in a cancellable receive).
            Ok(relay) => {
                let to = socket2::SockAddr::from(self.chitchat_addr);
                drop(socket2::SockRef::from(&relay.socket).send_to(&message, &to));
            }
            Err(error) => self.refusals.relay_failed(&error),
        }
    }
}

fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::OutOfMemory
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

/// One relay socket per peer, both ways.
#[derive(Default)]
struct Relays {
    by_peer: HashMap<SocketAddr, Relay>,
    peer_by_relay: HashMap<SocketAddr, SocketAddr>,
}

struct Relay {
    socket: tokio::net::UdpSocket,
    addr: SocketAddr,
    used: Instant,
}

impl Relays {
    fn for_peer(&mut self, peer: SocketAddr) -> io::Result<&Relay> {
        if !self.by_peer.contains_key(&peer) {
            self.close_idle();
            if self.by_peer.len() >= MAX_RELAYS {
                self.evict_least_recently_used();
            }
            let socket = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
            socket.set_nonblocking(true)?;
            let socket = tokio::net::UdpSocket::from_std(socket)?;
            let addr = socket.local_addr()?;
            self.peer_by_relay.insert(addr, peer);
            self.by_peer.insert(
                peer,
                Relay {
                    socket,
                    addr,
                    used: Instant::now(),
                },
            );
        }
        let relay = self
            .by_peer
            .get_mut(&peer)
            .expect("inserted above when missing");
        relay.used = Instant::now();
        Ok(relay)
    }

    fn peer_of(&self, relay_addr: SocketAddr) -> Option<SocketAddr> {
        self.peer_by_relay.get(&relay_addr).copied()
    }

    fn close_idle(&mut self) {
        let Self {
            by_peer,
            peer_by_relay,
        } = self;
        by_peer.retain(|_, relay| {
            let keep = relay.used.elapsed() < RELAY_IDLE;
            if !keep {
                peer_by_relay.remove(&relay.addr);
            }
            keep
        });
    }

    fn evict_least_recently_used(&mut self) {
        let oldest = self
            .by_peer
            .iter()
            .min_by_key(|(_, relay)| relay.used)
            .map(|(peer, _)| *peer);
        if let Some(relay) = oldest.and_then(|peer| self.by_peer.remove(&peer)) {
            self.peer_by_relay.remove(&relay.addr);
        }
    }
}

/// Warns of refused datagrams at most once per [`REFUSAL_LOG_INTERVAL`], with how many went
/// unreported in between: a node outside the cluster, or one with another secret, keeps trying.
#[derive(Default)]
struct RefusalLog {
    last: Option<Instant>,
    unreported: u64,
    last_relay_failure: Option<Instant>,
}

impl RefusalLog {
    /// A relay socket could not be opened (out of file descriptors, most likely): the datagram
    /// is lost. Warned of at most once per interval too.
    fn relay_failed(&mut self, error: &io::Error) {
        let now = Instant::now();
        if self
            .last_relay_failure
            .is_some_and(|at| now.duration_since(at) < REFUSAL_LOG_INTERVAL)
        {
            return;
        }
        self.last_relay_failure = Some(now);
        tracing::warn!(subsystem = "gossip", %error, "failed to open a gossip relay socket");
    }

    fn note(&mut self, from: SocketAddr, refusal: Refusal) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|at| now.duration_since(at) < REFUSAL_LOG_INTERVAL)
        {
            self.unreported += 1;
            return;
        }
        self.last = Some(now);
        let also_refused = std::mem::take(&mut self.unreported);
        tracing::warn!(subsystem = "gossip", %from, reason = %refusal, also_refused, "gossip datagram refused");
    }
}

#[cfg(test)]
mod tests;
