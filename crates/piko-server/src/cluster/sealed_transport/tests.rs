use chitchat::{ChitchatMessage, ProtocolVersion};

use super::*;

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// The one message that can be built outside chitchat.
fn message() -> ChitchatEnvelope {
    ChitchatEnvelope {
        version: ProtocolVersion::V1,
        message: ChitchatMessage::BadCluster,
    }
}

async fn recv(socket: &mut Box<dyn Socket>) -> RecvOutcome {
    tokio::time::timeout(Duration::from_secs(10), socket.recv())
        .await
        .expect("a message within 10 s")
        .unwrap()
}

#[tokio::test]
async fn peers_sharing_the_secret_hear_each_other_both_ways() {
    let transport = SealedUdpTransport::new("s3cret");
    let mut a = transport.open(loopback()).await.unwrap();
    let mut b = transport.open(loopback()).await.unwrap();
    let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    a.send(b_addr, message()).await.unwrap();
    let heard = recv(&mut b).await;
    assert_eq!(heard.from_addr, a_addr, "the peer, not its relay");
    assert_eq!(heard.envelope, message());
    // The reply goes to the address chitchat was given.
    b.send(heard.from_addr, message()).await.unwrap();
    assert_eq!(recv(&mut a).await.from_addr, b_addr);
}

#[tokio::test]
async fn unsealed_or_foreign_datagrams_are_never_heard() {
    let mut node = SealedUdpTransport::new("s3cret")
        .open(loopback())
        .await
        .unwrap();
    let node_addr = node.local_addr().unwrap();
    // Chitchat as Piko runs it: no seal.
    let mut open = chitchat::transport::UdpTransport
        .open(loopback())
        .await
        .unwrap();
    open.send(node_addr, message()).await.unwrap();
    // Another cluster's secret.
    let mut foreign = SealedUdpTransport::new("other")
        .open(loopback())
        .await
        .unwrap();
    foreign.send(node_addr, message()).await.unwrap();
    // Garbage.
    let raw = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
    raw.send_to(&[0u8; 100], node_addr).await.unwrap();
    // Datagrams between two sockets on loopback arrive in order: the first message heard is the
    // member's, sent last.
    let mut member = SealedUdpTransport::new("s3cret")
        .open(loopback())
        .await
        .unwrap();
    member.send(node_addr, message()).await.unwrap();
    assert_eq!(
        recv(&mut node).await.from_addr,
        member.local_addr().unwrap()
    );
}

#[tokio::test]
async fn chitchat_without_the_secret_cannot_read_sealed_gossip() {
    let mut open = chitchat::transport::UdpTransport
        .open(loopback())
        .await
        .unwrap();
    let open_addr = open.local_addr().unwrap();
    let mut sealed = SealedUdpTransport::new("s3cret")
        .open(loopback())
        .await
        .unwrap();
    sealed.send(open_addr, message()).await.unwrap();
    let mut plain = chitchat::transport::UdpTransport
        .open(loopback())
        .await
        .unwrap();
    plain.send(open_addr, message()).await.unwrap();
    assert_eq!(recv(&mut open).await.from_addr, plain.local_addr().unwrap());
}

#[tokio::test]
async fn a_captured_datagram_is_heard_once_whoever_sends_it_again() {
    let transport = SealedUdpTransport::new("s3cret");
    let mut node = transport.open(loopback()).await.unwrap();
    let node_addr = node.local_addr().unwrap();
    let mut member = transport.open(loopback()).await.unwrap();
    // An eavesdropper's capture: what the member sent, as it went on the wire.
    let eavesdropper = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
    member
        .send(eavesdropper.local_addr().unwrap(), message())
        .await
        .unwrap();
    let mut captured = vec![0; MAX_DATAGRAM];
    let (len, _) = eavesdropper.recv_from(&mut captured).await.unwrap();
    captured.truncate(len);
    let replayer = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
    for _ in 0..2 {
        replayer.send_to(&captured, node_addr).await.unwrap();
    }
    member.send(node_addr, message()).await.unwrap();
    assert_eq!(
        recv(&mut node).await.from_addr,
        replayer.local_addr().unwrap()
    );
    // The second copy was dropped: next comes the member's new message.
    assert_eq!(
        recv(&mut node).await.from_addr,
        member.local_addr().unwrap()
    );
}
