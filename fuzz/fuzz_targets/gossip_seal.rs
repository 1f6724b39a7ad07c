//! Arbitrary datagrams through piko-server's sealed gossip receiver: the seal is opened, replays
//! are refused and fragments are joined (`cluster/gossip_seal.rs`), as the sealed socket does.
//!
//! The module is private to piko-server's `cluster`, and loading it a second time inside
//! piko-server is a lint error there, so this target compiles the file itself, verbatim, and
//! checks on start that a datagram it seals by hand is byte for byte the product's.
//!
//! Input: a sequence of steps, each a byte naming it:
//! - 0: `len: u16`, then a raw datagram of `len` bytes (almost never sealed: the seal's edges);
//! - 1: a datagram sealed with the cluster's key, with any header: `id: u8, fragment: u8,
//!   skew: u8, sender: u8, len: u8`, then `len` chunk bytes;
//! - 2: a message of `len: u16 × 4` made-up bytes sealed by the product, its fragments delivered
//!   in the order `order: u8` picks;
//! - 3: `advance: u8`: time passes (both clocks);
//! - 4: the last datagram accepted arrives again.
//!
//! Checks: no panic; a message sealed by the product and delivered whole comes out identical;
//! a datagram accepted once is refused as a replay right after; the heap held by the receiver
//! stays within a bound proportional to what it accepted (fragments are kept, nothing else
//! grows with the input).

#![no_main]

use std::{
    alloc::{GlobalAlloc, Layout, System},
    net::SocketAddr,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use libfuzzer_sys::fuzz_target;

/// piko-server's file, verbatim (its unit tests stay with the original).
#[allow(dead_code, unreachable_pub)]
#[path = "../../crates/piko-server/src/cluster/gossip_seal.rs"]
#[rustfmt::skip] // Its `mod tests;` exists only beside the original.
mod gossip_seal;

/// What `gossip_seal` takes from its sibling module in piko-server's `cluster`.
mod forward_auth {
    /// `cluster::forward_auth::MAX_SKEW`: how far a seal's time may be from the receiver's.
    pub(crate) const MAX_SKEW: std::time::Duration = std::time::Duration::from_secs(300);
}

use aws_lc_rs::hmac;
use gossip_seal::{GossipKey, Reassembly, ReplayGuard, open, seal};

/// The receiving half of a sealed gossip socket, as `SealedSocket::admit` drives it.
struct GossipReceiver {
    key: GossipKey,
    /// The same key, to seal datagrams with any header.
    sealing: hmac::Key,
    replays: ReplayGuard,
    reassembly: Reassembly,
}

impl GossipReceiver {
    fn new(secret: &str) -> Self {
        let root = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
        let derived = hmac::sign(&root, b"piko gossip seal v1");
        let receiver = Self {
            key: GossipKey::from_secret(secret),
            sealing: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
            replays: ReplayGuard::default(),
            reassembly: Reassembly::default(),
        };
        let product = seal(&receiver.key, b"probe", 7, START_MS);
        assert_eq!(
            product,
            [receiver.seal(7, 0x01, START_MS, b"probe")],
            "sealing by hand must match the product's format"
        );
        receiver
    }

    /// A datagram sealed with the cluster's key; `fragment` (`index << 4 | count`) as given,
    /// even when it makes no sense.
    fn seal(&self, message_id: u32, fragment: u8, sealed_at_ms: u64, chunk: &[u8]) -> Vec<u8> {
        let mut datagram = Vec::with_capacity(16 + chunk.len() + 32);
        datagram.extend_from_slice(b"pk");
        datagram.push(1);
        datagram.extend_from_slice(&message_id.to_be_bytes());
        datagram.push(fragment);
        datagram.extend_from_slice(&sealed_at_ms.to_be_bytes());
        datagram.extend_from_slice(chunk);
        let tag = hmac::sign(&self.sealing, &datagram);
        datagram.extend_from_slice(tag.as_ref());
        datagram
    }

    /// The product's own datagrams for `message`.
    fn seal_message(&self, message: &[u8], message_id: u32, now_ms: u64) -> Vec<Vec<u8>> {
        seal(&self.key, message, message_id, now_ms)
    }

    /// Takes `datagram` from `from` at `now` (`now_ms` on the wall clock): the whole message
    /// once its last fragment is in, or why it was refused.
    fn receive(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
        now_ms: u64,
    ) -> Result<Option<Vec<u8>>, String> {
        let opened = open(&self.key, datagram, now_ms).map_err(|refusal| refusal.to_string())?;
        if !self.replays.first_time(&opened, now) {
            return Err("replayed".to_owned());
        }
        Ok(self
            .reassembly
            .add(from, opened, now)
            .map(|message| message.into_owned()))
    }
}

/// Counts the bytes allocated and not yet freed.
struct CountingAllocator;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// The wall clock the steps start at, in ms since the epoch.
const START_MS: u64 = 1_800_000_000_000;
/// The seal's allowed clock skew.
const SKEW_MS: u64 = 300_000;
/// Heap a receiver may hold per accepted datagram besides the chunk it keeps: replay memory,
/// a pending message's slots, table growth.
const PER_DATAGRAM: usize = 1024;
/// Product messages are sealed under IDs of their own, so crafted fragments never join them.
const PRODUCT_IDS: u32 = 1 << 31;

struct Steps<'a>(&'a [u8]);

impl<'a> Steps<'a> {
    fn next(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    fn byte(&mut self) -> u8 {
        self.next().unwrap_or(0)
    }

    fn take(&mut self, len: usize) -> &'a [u8] {
        let (taken, rest) = self.0.split_at(len.min(self.0.len()));
        self.0 = rest;
        taken
    }
}

fuzz_target!(|data: &[u8]| {
    let mut receiver = GossipReceiver::new("fuzz-cluster-secret");
    let baseline = LIVE_BYTES.load(Ordering::Relaxed);
    let mut allowed = 64 * 1024;
    let senders: [SocketAddr; 4] = [
        "10.0.0.1:7946".parse().unwrap(),
        "10.0.0.2:7946".parse().unwrap(),
        "[fd00::1]:7946".parse().unwrap(),
        "10.0.0.1:7947".parse().unwrap(),
    ];
    let mut now = Instant::now();
    let mut now_ms = START_MS;
    let mut next_product_id = PRODUCT_IDS;
    let mut last_accepted: Option<(SocketAddr, Vec<u8>)> = None;
    let mut steps = Steps(data);
    while let Some(step) = steps.next() {
        match step % 5 {
            0 => {
                let len = usize::from(u16::from_be_bytes([steps.byte(), steps.byte()]));
                let datagram = steps.take(len).to_vec();
                let from = senders[0];
                if receiver.receive(from, &datagram, now, now_ms).is_ok() {
                    allowed += datagram.len() + PER_DATAGRAM;
                    last_accepted = Some((from, datagram));
                }
            }
            1 => {
                let id = u32::from(steps.byte()) % 16;
                let fragment = steps.byte();
                let sealed_at = match steps.byte() % 6 {
                    0 => now_ms,
                    1 => now_ms + SKEW_MS,
                    2 => now_ms - SKEW_MS,
                    3 => now_ms + SKEW_MS + 1,
                    4 => now_ms - SKEW_MS - 1,
                    _ => u64::MAX,
                };
                let from = senders[usize::from(steps.byte() % 4)];
                let len = usize::from(steps.byte());
                let chunk = steps.take(len);
                let datagram = receiver.seal(id, fragment, sealed_at, chunk);
                if receiver.receive(from, &datagram, now, now_ms).is_ok() {
                    allowed += datagram.len() + PER_DATAGRAM;
                    last_accepted = Some((from, datagram));
                }
            }
            2 => {
                let len = usize::from(u16::from_be_bytes([steps.byte(), steps.byte()])) * 4;
                let order = steps.byte();
                let message: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
                let id = next_product_id;
                next_product_id += 1;
                let mut datagrams = receiver.seal_message(&message, id, now_ms);
                if order & 1 != 0 {
                    datagrams.reverse();
                }
                let from = senders[usize::from(order >> 6)];
                let count = datagrams.len();
                let mut whole = None;
                for (delivered, datagram) in datagrams.into_iter().enumerate() {
                    let opened = receiver
                        .receive(from, &datagram, now, now_ms)
                        .unwrap_or_else(|refusal| panic!("own datagram refused: {refusal}"));
                    allowed += datagram.len() + PER_DATAGRAM;
                    if delivered + 1 < count {
                        assert!(
                            opened.is_none(),
                            "a message complete before its last fragment"
                        );
                    } else {
                        whole = opened;
                    }
                    last_accepted = Some((from, datagram));
                }
                assert_eq!(whole.as_deref(), Some(&message[..]), "the message changed");
            }
            3 => {
                let advance = Duration::from_millis(u64::from(steps.byte()) * 5_000);
                now += advance;
                now_ms += advance.as_millis() as u64;
            }
            _ => {
                if let Some((from, datagram)) = &last_accepted {
                    assert!(
                        receiver.receive(*from, datagram, now, now_ms).is_err(),
                        "a datagram was accepted twice"
                    );
                }
            }
        }
        let held = LIVE_BYTES.load(Ordering::Relaxed).saturating_sub(baseline);
        // What this loop holds itself: the last datagram.
        let own = last_accepted.as_ref().map_or(0, |(_, d)| d.capacity());
        assert!(
            held <= allowed + own,
            "the receiver holds {held} bytes after accepting {allowed} bytes' worth"
        );
    }
});
