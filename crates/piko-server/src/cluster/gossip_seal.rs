//! The seal on gossip datagrams of a cluster with a secret (`cluster.secret`). UDP cannot carry
//! TLS, and chitchat believes whatever reaches its port: without a seal, any host that can send
//! to the gossip port could announce a node of its own, or publish newer values under a real
//! node's name. Each datagram carries an HMAC-SHA256 tag under a key derived from the secret,
//! and the time it was sealed; a node ignores a datagram whose tag does not check, or whose time
//! is more than [`MAX_SKEW`] from its own clock. Within that window a captured datagram could be
//! replayed, which teaches nothing new: chitchat keeps the highest version of every key and
//! heartbeat.
//!
//! Chitchat fills a datagram up to UDP's largest payload, leaving no room for the seal, so a
//! message that no longer fits travels in fragments, each sealed, joined again on arrival.
//!
//! A datagram is `chunk ‖ message ID (u32) ‖ index << 4 | count (u8) ‖ sealed at, in ms since
//! the Unix epoch (u64) ‖ tag (32 bytes)`, integers big-endian, the tag over all that precedes
//! it.

use std::{
    borrow::Cow,
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aws_lc_rs::hmac;

/// UDP's largest payload over IPv4, chitchat's datagram size.
pub(crate) const MAX_DATAGRAM: usize = 65_507;

const TAG_LEN: usize = 32;
const TRAILER_LEN: usize = 4 + 1 + 8 + TAG_LEN;
const MAX_CHUNK: usize = MAX_DATAGRAM - TRAILER_LEN;
/// The count fits in four bits; chitchat's messages need two at most.
const MAX_FRAGMENTS: usize = 15;

/// How far a datagram's seal time may be from the receiving node's clock (as for relayed
/// requests).
const MAX_SKEW: Duration = Duration::from_secs(300);

/// How long the first fragments of a message wait for the rest.
const FRAGMENT_WAIT: Duration = Duration::from_secs(5);
/// Messages waiting for fragments at once; the oldest gives way.
const MAX_PENDING: usize = 64;

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
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NotSealed => "not sealed with this cluster's secret",
            Self::Stale => "sealed more than 5 minutes away from this node's clock",
            Self::BadFragment => "bad fragment numbers",
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
            let mut datagram = Vec::with_capacity(chunk.len() + TRAILER_LEN);
            datagram.extend_from_slice(chunk);
            datagram.extend_from_slice(&message_id.to_be_bytes());
            datagram.push(fragment_byte(index, count));
            datagram.extend_from_slice(&now_ms.to_be_bytes());
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

/// Checks `datagram`'s seal at `now_ms`.
pub(crate) fn open<'d>(
    key: &GossipKey,
    datagram: &'d [u8],
    now_ms: u64,
) -> Result<Opened<'d>, Refusal> {
    let Some(signed_len) = datagram.len().checked_sub(TAG_LEN) else {
        return Err(Refusal::NotSealed);
    };
    if signed_len < TRAILER_LEN - TAG_LEN {
        return Err(Refusal::NotSealed);
    }
    let (signed, tag) = datagram.split_at(signed_len);
    hmac::verify(&key.0, signed, tag).map_err(|_| Refusal::NotSealed)?;
    let (chunk, trailer) = signed.split_at(signed_len - (TRAILER_LEN - TAG_LEN));
    let message_id = u32::from_be_bytes(trailer[..4].try_into().expect("4 bytes"));
    let fragment = trailer[4];
    let sealed_at = u64::from_be_bytes(trailer[5..].try_into().expect("8 bytes"));
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
    })
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
