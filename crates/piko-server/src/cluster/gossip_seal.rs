//! The seal on gossip datagrams of a cluster with a secret (`cluster.secret`). UDP cannot carry
//! TLS, and chitchat believes whatever reaches its port: without a seal, any host that can send
//! to the gossip port could announce a node of its own, or publish newer values under a real
//! node's name. Each datagram carries an HMAC-SHA256 tag under a key derived from the secret,
//! and the time it was sealed; a node ignores a datagram whose tag does not check, whose time is
//! more than [`MAX_SKEW`] from its own clock, or that it has seen before (a replay, from its
//! sender's address or any other).
//!
//! Chitchat fills a datagram up to UDP's largest payload, leaving no room for the seal, so a
//! message that no longer fits travels in fragments, each sealed, joined again on arrival.
//!
//! A datagram is `"pk" ‖ version 1 (u8) ‖ message ID (u32) ‖ index << 4 | count (u8) ‖ sealed
//! at, in ms since the Unix epoch (u64) ‖ chunk ‖ tag (32 bytes)`, integers big-endian, the tag
//! over all that precedes it. The header comes first so that chitchat itself (a node without
//! the secret) cannot decode a sealed message: its own messages start with another magic number.

use std::{
    borrow::Cow,
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aws_lc_rs::hmac;

use super::forward_auth::MAX_SKEW;

/// UDP's largest payload over IPv4, chitchat's datagram size.
pub(crate) const MAX_DATAGRAM: usize = 65_507;

const MAGIC: [u8; 2] = *b"pk";
const VERSION: u8 = 1;
const HEADER_LEN: usize = MAGIC.len() + 1 + 4 + 1 + 8;
const TAG_LEN: usize = 32;
const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
const MAX_CHUNK: usize = MAX_DATAGRAM - OVERHEAD;
/// The count fits in four bits; chitchat's messages need two at most.
const MAX_FRAGMENTS: usize = 15;

/// How long the first fragments of a message wait for the rest.
const FRAGMENT_WAIT: Duration = Duration::from_secs(5);
/// Messages waiting for fragments at once; the oldest gives way.
const MAX_PENDING: usize = 64;

/// How long a datagram's tag is remembered: a replay must arrive within [`MAX_SKEW`] of its seal
/// time, which was itself within [`MAX_SKEW`] of the first arrival. A second more, because a
/// seal exactly [`MAX_SKEW`] away is still fresh: at exactly twice the skew a replay would be
/// both forgotten and fresh.
const REPLAY_MEMORY: Duration = Duration::from_secs(2 * MAX_SKEW.as_secs() + 1);
/// Tags remembered at most (a few hundred datagrams a second for ten minutes); the oldest give
/// way. Only sealed datagrams are remembered, so only members fill it.
const MAX_REMEMBERED: usize = 1 << 18;

/// The key gossip is sealed with, derived from the cluster's secret so that it differs from the
/// key relayed requests are signed with.
pub(crate) struct GossipKey(hmac::Key);

impl GossipKey {
    pub(crate) fn from_secret(secret: &str) -> Self {
        let root = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
        let derived = hmac::sign(&root, b"piko gossip seal v1");
        Self(hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()))
    }
}

/// Why a datagram was ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Too short to hold a seal, or its tag does not check: unsealed gossip, another secret, or
    /// a forgery.
    NotSealed,
    /// Sealed too long ago, or in the future, for the receiving node's clock.
    Stale,
    /// Sealed, but its fragment numbers make no sense.
    BadFragment,
    /// Seen before.
    Replayed,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NotSealed => "not sealed with this cluster's secret",
            Self::Stale => "sealed more than 5 minutes away from this node's clock",
            Self::BadFragment => "bad fragment numbers",
            Self::Replayed => "a replay of a datagram already received",
        })
    }
}

/// A datagram whose seal checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Opened<'a> {
    message_id: u32,
    index: u8,
    count: u8,
    chunk: &'a [u8],
    tag: &'a [u8],
}

/// The datagrams that carry `message`, sealed at `now_ms`.
pub(crate) fn seal(key: &GossipKey, message: &[u8], message_id: u32, now_ms: u64) -> Vec<Vec<u8>> {
    let chunks: Vec<&[u8]> = if message.is_empty() {
        vec![message]
    } else {
        message.chunks(MAX_CHUNK).collect()
    };
    let count = chunks.len().min(MAX_FRAGMENTS);
    chunks
        .iter()
        .take(count)
        .enumerate()
        .map(|(index, chunk)| {
            let mut datagram = Vec::with_capacity(chunk.len() + OVERHEAD);
            datagram.extend_from_slice(&MAGIC);
            datagram.push(VERSION);
            datagram.extend_from_slice(&message_id.to_be_bytes());
            datagram.push(fragment_byte(index, count));
            datagram.extend_from_slice(&now_ms.to_be_bytes());
            datagram.extend_from_slice(chunk);
            let tag = hmac::sign(&key.0, &datagram);
            datagram.extend_from_slice(tag.as_ref());
            datagram
        })
        .collect()
}

#[expect(
    clippy::cast_possible_truncation,
    reason = "index < count <= MAX_FRAGMENTS (15)"
)]
fn fragment_byte(index: usize, count: usize) -> u8 {
    ((index as u8) << 4) | count as u8
}

/// Checks `datagram`'s seal at `now_ms` (not whether it is a replay: see [`ReplayGuard`]).
pub(crate) fn open<'d>(
    key: &GossipKey,
    datagram: &'d [u8],
    now_ms: u64,
) -> Result<Opened<'d>, Refusal> {
    if datagram.len() < OVERHEAD || datagram[..MAGIC.len()] != MAGIC {
        return Err(Refusal::NotSealed);
    }
    let (signed, tag) = datagram.split_at(datagram.len() - TAG_LEN);
    hmac::verify(&key.0, signed, tag).map_err(|_| Refusal::NotSealed)?;
    let (header, chunk) = signed.split_at(HEADER_LEN);
    let header = &header[MAGIC.len()..];
    if header[0] != VERSION {
        return Err(Refusal::NotSealed);
    }
    let message_id = u32::from_be_bytes(header[1..5].try_into().expect("4 bytes"));
    let fragment = header[5];
    let sealed_at = u64::from_be_bytes(header[6..14].try_into().expect("8 bytes"));
    if sealed_at.abs_diff(now_ms) > duration_ms(MAX_SKEW) {
        return Err(Refusal::Stale);
    }
    let (index, count) = (fragment >> 4, fragment & 0x0f);
    if count == 0 || index >= count {
        return Err(Refusal::BadFragment);
    }
    Ok(Opened {
        message_id,
        index,
        count,
        chunk,
        tag,
    })
}

/// The tags of the datagrams received lately, to refuse a second copy of any.
#[derive(Default)]
pub(crate) struct ReplayGuard {
    seen: std::collections::HashSet<[u8; 16]>,
    order: std::collections::VecDeque<(Instant, [u8; 16])>,
}

impl ReplayGuard {
    /// Whether `opened` arrives for the first time (at `now`); remembers it.
    pub(crate) fn first_time(&mut self, opened: &Opened<'_>, now: Instant) -> bool {
        while let Some((at, tag)) = self.order.front() {
            if now.duration_since(*at) < REPLAY_MEMORY && self.order.len() < MAX_REMEMBERED {
                break;
            }
            self.seen.remove(tag);
            self.order.pop_front();
        }
        // Half the tag is plenty to tell datagrams apart (it was checked in full).
        let tag: [u8; 16] = opened.tag[..16].try_into().expect("tags are 32 bytes");
        if !self.seen.insert(tag) {
            return false;
        }
        self.order.push_back((now, tag));
        true
    }
}

/// Milliseconds since the Unix epoch: the seal's clock.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, duration_ms)
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Fragments waiting for the rest of their message.
#[derive(Default)]
pub(crate) struct Reassembly {
    pending: HashMap<(SocketAddr, u32), Pending>,
}

struct Pending {
    since: Instant,
    parts: Vec<Option<Vec<u8>>>,
}

impl Reassembly {
    /// Takes a fragment from `from`: the whole message once every fragment has arrived.
    pub(crate) fn add<'a>(
        &mut self,
        from: SocketAddr,
        opened: Opened<'a>,
        now: Instant,
    ) -> Option<Cow<'a, [u8]>> {
        if opened.count == 1 {
            return Some(Cow::Borrowed(opened.chunk));
        }
        self.pending
            .retain(|_, pending| now.duration_since(pending.since) < FRAGMENT_WAIT);
        let key = (from, opened.message_id);
        let count = usize::from(opened.count);
        if !self.pending.contains_key(&key) && self.pending.len() >= MAX_PENDING {
            let oldest = self
                .pending
                .iter()
                .min_by_key(|(_, pending)| pending.since)
                .map(|(key, _)| *key);
            if let Some(oldest) = oldest {
                self.pending.remove(&oldest);
            }
        }
        let pending = self.pending.entry(key).or_insert_with(|| Pending {
            since: now,
            parts: vec![None; count],
        });
        if pending.parts.len() != count {
            // A message ID reused with another shape: the sender restarted; start again.
            *pending = Pending {
                since: now,
                parts: vec![None; count],
            };
        }
        pending.parts[usize::from(opened.index)] = Some(opened.chunk.to_vec());
        if pending.parts.iter().any(Option::is_none) {
            return None;
        }
        let pending = self.pending.remove(&key)?;
        Some(Cow::Owned(
            pending.parts.into_iter().flatten().flatten().collect(),
        ))
    }
}

#[cfg(test)]
mod tests;
