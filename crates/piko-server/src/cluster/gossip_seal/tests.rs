use super::*;

const NOW: u64 = 1_800_000_000_000;

fn from() -> SocketAddr {
    "10.0.0.1:8003".parse().unwrap()
}

fn whole(key: &GossipKey, message: &[u8], now_ms: u64) -> Option<Vec<u8>> {
    let mut reassembly = Reassembly::default();
    let mut out = None;
    for datagram in seal(key, message, 7, NOW) {
        let opened = open(key, &datagram, now_ms).ok()?;
        out = reassembly
            .add(from(), opened, Instant::now())
            .map(Cow::into_owned);
    }
    out
}

#[test]
fn a_sealed_message_opens_with_the_same_secret_only() {
    let key = GossipKey::from_secret("s3cret");
    let datagrams = seal(&key, b"chitchat syn", 1, NOW);
    assert_eq!(datagrams.len(), 1);
    assert_eq!(datagrams[0].len(), b"chitchat syn".len() + OVERHEAD);
    assert_eq!(whole(&key, b"chitchat syn", NOW).unwrap(), b"chitchat syn");
    let other = GossipKey::from_secret("other");
    assert_eq!(open(&other, &datagrams[0], NOW), Err(Refusal::NotSealed));
    // The relayed-request key is the secret itself: the gossip key is not.
    let raw = GossipKey(hmac::Key::new(hmac::HMAC_SHA256, b"s3cret"));
    assert_eq!(open(&raw, &datagrams[0], NOW), Err(Refusal::NotSealed));
}

#[test]
fn any_changed_byte_breaks_the_seal() {
    let key = GossipKey::from_secret("s3cret");
    let datagram = seal(&key, b"delta: endpoint:/api = 1", 1, NOW).remove(0);
    for at in 0..datagram.len() {
        let mut forged = datagram.clone();
        forged[at] ^= 0x01;
        assert_eq!(
            open(&key, &forged, NOW),
            Err(Refusal::NotSealed),
            "byte {at}"
        );
    }
    // Cut short, or nothing but a trailer's worth of bytes.
    assert_eq!(
        open(&key, &datagram[..datagram.len() - 1], NOW),
        Err(Refusal::NotSealed)
    );
    for len in 0..OVERHEAD {
        assert_eq!(open(&key, &vec![0; len], NOW), Err(Refusal::NotSealed));
    }
}

#[test]
fn old_or_future_seals_are_refused() {
    let key = GossipKey::from_secret("s3cret");
    let datagram = seal(&key, b"heartbeat", 1, NOW).remove(0);
    let skew = duration_ms(MAX_SKEW);
    assert!(open(&key, &datagram, NOW + skew).is_ok());
    assert!(open(&key, &datagram, NOW - skew).is_ok());
    assert_eq!(open(&key, &datagram, NOW + skew + 1), Err(Refusal::Stale));
    assert_eq!(open(&key, &datagram, NOW - skew - 1), Err(Refusal::Stale));
}

#[test]
fn a_full_size_message_travels_in_two_fragments() {
    let key = GossipKey::from_secret("s3cret");
    let message: Vec<u8> = (0..MAX_DATAGRAM).map(|at| (at % 251) as u8).collect();
    let datagrams = seal(&key, &message, 9, NOW);
    assert_eq!(datagrams.len(), 2);
    assert!(datagrams.iter().all(|d| d.len() <= MAX_DATAGRAM));
    assert_eq!(whole(&key, &message, NOW).unwrap(), message);
    // Out of order, and with a duplicate: the same message once.
    let mut reassembly = Reassembly::default();
    let now = Instant::now();
    let second = open(&key, &datagrams[1], NOW).unwrap();
    assert!(reassembly.add(from(), second, now).is_none());
    let second = open(&key, &datagrams[1], NOW).unwrap();
    assert!(reassembly.add(from(), second, now).is_none());
    let first = open(&key, &datagrams[0], NOW).unwrap();
    assert_eq!(reassembly.add(from(), first, now).unwrap(), &message[..]);
    assert!(reassembly.pending.is_empty());
}

#[test]
fn fragments_from_another_sender_or_too_late_do_not_complete_a_message() {
    let key = GossipKey::from_secret("s3cret");
    let message = vec![3u8; MAX_DATAGRAM];
    let datagrams = seal(&key, &message, 9, NOW);
    let mut reassembly = Reassembly::default();
    let start = Instant::now();
    let first = open(&key, &datagrams[0], NOW).unwrap();
    assert!(reassembly.add(from(), first, start).is_none());
    let elsewhere: SocketAddr = "10.0.0.2:8003".parse().unwrap();
    let second = open(&key, &datagrams[1], NOW).unwrap();
    assert!(reassembly.add(elsewhere, second, start).is_none());
    let second = open(&key, &datagrams[1], NOW).unwrap();
    assert!(
        reassembly
            .add(
                from(),
                second,
                start + FRAGMENT_WAIT + Duration::from_secs(1)
            )
            .is_none()
    );
}

#[test]
fn waiting_messages_are_bounded() {
    let key = GossipKey::from_secret("s3cret");
    let message = vec![5u8; MAX_DATAGRAM];
    let mut reassembly = Reassembly::default();
    let now = Instant::now();
    for id in 0..(MAX_PENDING as u32 * 2) {
        let datagrams = seal(&key, &message, id, NOW);
        let first = open(&key, &datagrams[0], NOW).unwrap();
        assert!(reassembly.add(from(), first, now).is_none());
    }
    assert_eq!(reassembly.pending.len(), MAX_PENDING);
}

#[test]
fn nonsense_fragment_numbers_are_refused() {
    let key = GossipKey::from_secret("s3cret");
    for fragment in [0x00, 0x11, 0x21] {
        let mut datagram = MAGIC.to_vec();
        datagram.push(VERSION);
        datagram.extend_from_slice(&1u32.to_be_bytes());
        datagram.push(fragment);
        datagram.extend_from_slice(&NOW.to_be_bytes());
        datagram.push(b'x');
        let tag = hmac::sign(&key.0, &datagram);
        datagram.extend_from_slice(tag.as_ref());
        assert_eq!(open(&key, &datagram, NOW), Err(Refusal::BadFragment));
    }
}

#[test]
fn a_datagram_is_accepted_once() {
    let key = GossipKey::from_secret("s3cret");
    let mut guard = ReplayGuard::default();
    let start = Instant::now();
    let first = seal(&key, b"syn", 1, NOW).remove(0);
    let second = seal(&key, b"syn", 2, NOW).remove(0);
    let opened = open(&key, &first, NOW).unwrap();
    assert!(guard.first_time(&opened, start));
    assert!(!guard.first_time(&opened, start + Duration::from_secs(1)));
    // The same message again, sealed anew: another datagram.
    assert!(guard.first_time(&open(&key, &second, NOW).unwrap(), start));
    // Forgotten only once its seal time is long out of the window.
    let later = start + REPLAY_MEMORY + Duration::from_secs(1);
    assert!(guard.first_time(&opened, later));
    assert_eq!(guard.order.len(), 1, "the old entries went");
}
